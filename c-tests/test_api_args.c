/*
 * Arguments as a C caller may pass them, right or wrong: every enum argument and field
 * with values outside the enum, counts larger than the arrays they describe (each array
 * ends where an unmapped page begins, so a read past its end faults), negative fds,
 * out-pointers on failing paths, and meta strings and arrays at and past what the wire
 * holds (refused naming the limit, never cut; at the limit, received intact). Nothing
 * may crash, panic (QSOCK_INTERNAL_ERROR, words on stderr) or be cut silently.
 *
 * usage: test_api_args
 */
#include "qsock_test.h"

#include <fcntl.h>
#include <limits.h>

#ifdef DEFAULT_SOCKET_MODE
#error "the header defines DEFAULT_SOCKET_MODE without the QSOCK_ prefix"
#endif

static char socket_dir[64];
static qsock_receiver *rx;
static qsock_sender *tx;
static int frame_fd;

/* `bytes` bytes that end where an unmapped page begins: reading past them faults. */
static void *guarded(size_t bytes) {
    long page = sysconf(_SC_PAGESIZE);
    char *map = mmap(NULL, 2 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (map == MAP_FAILED || mprotect(map + page, page, PROT_NONE) != 0) {
        perror("guard page");
        exit(2);
    }
    return map + page - bytes;
}

/* Whatever the library writes to stderr between the two calls (a panic message would). */
static int saved_stderr = -1;
static char captured_path[128];
static void capture_stderr(void) {
    snprintf(captured_path, sizeof captured_path, "%s/stderr", socket_dir);
    fflush(stderr);
    saved_stderr = dup(2);
    int fd = open(captured_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    dup2(fd, 2);
    close(fd);
}
static long captured_stderr_bytes(void) {
    fflush(stderr);
    dup2(saved_stderr, 2);
    close(saved_stderr);
    FILE *f = fopen(captured_path, "r");
    long size = 0;
    if (f) {
        fseek(f, 0, SEEK_END);
        size = ftell(f);
        fclose(f);
    }
    return size;
}

static qsock_send_block video_block(void) {
    return (qsock_send_block){.fd = frame_fd, .size = FRAME_SIZE, .maxsize = FRAME_SIZE, .video = nv12_64x48()};
}

/* A one-frame video buffer of `block`. */
static qsock_send_buffer video_buffer(const qsock_send_block *block) {
    return (qsock_send_buffer){.kind = QSOCK_KIND_VIDEO, .n_blocks = 1, .blocks = block, .pts = 1,
                               .dts = QSOCK_CLOCK_TIME_NONE, .duration = 1};
}

/* Receives what was just sent; the caller releases it. */
static qsock_buffer *receive(void) {
    qsock_buffer *buf = NULL;
    CHECK_STATUS(qsock_receiver_recv_buffer(rx, 5000, &buf), QSOCK_OK, NULL);
    return buf;
}

/* Takes the return of what was received and released. */
static void take_return(void) {
    qsock_sender_event event;
    CHECK_STATUS(qsock_sender_next_event(tx, 5000, &event), QSOCK_OK, NULL);
}

static char *repeated(char c, size_t n) {
    char *s = malloc(n + 1);
    memset(s, c, n);
    s[n] = '\0';
    return s;
}

static int status_names(void) {
    int before = failures;
    static const char *names[] = {"QSOCK_OK", "QSOCK_TIMEOUT", "QSOCK_EOS", "QSOCK_SENDER_GONE",
                                  "QSOCK_PROTOCOL_ERROR", "QSOCK_INVALID_ARGUMENT", "QSOCK_BAD_SOCKET_PATH",
                                  "QSOCK_IO_ERROR", "QSOCK_INTERNAL_ERROR", "QSOCK_RECEIVER_GONE",
                                  "QSOCK_SENDER_REFUSED", "QSOCK_INTERRUPTED"};
    for (int s = 0; s <= QSOCK_INTERRUPTED; s++)
        CHECK(strcmp(qsock_status_name(s), names[s]) == 0, "status %d is %s", s, qsock_status_name(s));
    int outside[] = {-1, QSOCK_INTERRUPTED + 1, 12, 1000, INT_MIN, INT_MAX};
    for (size_t i = 0; i < sizeof outside / sizeof *outside; i++)
        CHECK(strcmp(qsock_status_name(outside[i]), "QSOCK_UNKNOWN_STATUS") == 0, "status %d is %s", outside[i],
              qsock_status_name(outside[i]));
    printf("%s - qsock_status_name: every status by name, any other int \"QSOCK_UNKNOWN_STATUS\"\n",
           failures > before ? "not ok" : "ok");
    return failures > before;
}

static int kinds_and_counts(void) {
    int before = failures;
    qsock_send_block block = video_block();
    /* A zeroed struct: kind 0. */
    qsock_send_buffer buffer;
    memset(&buffer, 0, sizeof buffer);
    buffer.n_blocks = 1;
    buffer.blocks = &block;
    CHECK_STATUS(qsock_sender_send(tx, &buffer), QSOCK_INVALID_ARGUMENT, "kind 0 is not a qsock_kind");
    int kinds[] = {-1, 4, 1000, INT_MIN, INT_MAX};
    for (size_t i = 0; i < sizeof kinds / sizeof *kinds; i++) {
        buffer.kind = kinds[i];
        CHECK_STATUS(qsock_sender_send(tx, &buffer), QSOCK_INVALID_ARGUMENT, "is not a qsock_kind");
    }
    /* Counts past the one-block array: refused before the array is read. */
    qsock_send_block *one = guarded(sizeof *one);
    *one = video_block();
    buffer = video_buffer(one);
    size_t counts[] = {0, 11, 1000, SIZE_MAX};
    for (size_t i = 0; i < sizeof counts / sizeof *counts; i++) {
        buffer.n_blocks = counts[i];
        CHECK_STATUS(qsock_sender_send(tx, &buffer), QSOCK_INVALID_ARGUMENT, "QSOCK_MAX_BLOCKS");
    }
    /* Text: `size` is checked before the bytes are read. */
    uint8_t *ten = guarded(10);
    memset(ten, 't', 10);
    qsock_send_block text = {.fd = -1, .size = QSOCK_MAX_TEXT + 1, .maxsize = QSOCK_MAX_TEXT + 1, .text = ten};
    qsock_send_buffer text_buffer = {.kind = QSOCK_KIND_TEXT, .n_blocks = 1, .blocks = &text};
    CHECK_STATUS(qsock_sender_send(tx, &text_buffer), QSOCK_INVALID_ARGUMENT, "QSOCK_MAX_TEXT");
    text.size = text.maxsize = UINT64_MAX;
    CHECK_STATUS(qsock_sender_send(tx, &text_buffer), QSOCK_INVALID_ARGUMENT, "QSOCK_MAX_TEXT");
    /* Meta counts past their one-entry arrays. */
    buffer = video_buffer(&block);
    qsock_roi_meta *roi = guarded(sizeof *roi);
    *roi = (qsock_roi_meta){.label = "face"};
    buffer.roi_metas = roi;
    buffer.n_roi_metas = 1000;
    CHECK_STATUS(qsock_sender_send(tx, &buffer), QSOCK_INVALID_ARGUMENT, "roi_metas");
    buffer.n_roi_metas = SIZE_MAX;
    CHECK_STATUS(qsock_sender_send(tx, &buffer), QSOCK_INVALID_ARGUMENT, "roi_metas");
    buffer = video_buffer(&block);
    const char **protection = guarded(sizeof *protection);
    *protection = "Protection, system=(string)x;";
    buffer.protection_metas = protection;
    buffer.n_protection_metas = 300;
    CHECK_STATUS(qsock_sender_send(tx, &buffer), QSOCK_INVALID_ARGUMENT, "protection_metas");
    buffer = video_buffer(&block);
    qsock_class_label *label = guarded(sizeof *label);
    *label = (qsock_class_label){.name = "cat", .confidence = 0.5};
    qsock_class_meta class = {.n_labels = QSOCK_MAX_CLASS_LABELS + 1, .labels = label};
    buffer.class_metas = &class;
    buffer.n_class_metas = 1;
    CHECK_STATUS(qsock_sender_send(tx, &buffer), QSOCK_INVALID_ARGUMENT, "QSOCK_MAX_CLASS_LABELS");
    qsock_class_meta *one_class = guarded(sizeof *one_class);
    *one_class = (qsock_class_meta){.n_labels = 1, .labels = label};
    buffer.class_metas = one_class;
    buffer.n_class_metas = 27;
    CHECK_STATUS(qsock_sender_send(tx, &buffer), QSOCK_INVALID_ARGUMENT, "class_metas");
    buffer = video_buffer(&block);
    qsock_keypoint *keypoint = guarded(sizeof *keypoint);
    *keypoint = (qsock_keypoint){.name = "nose"};
    qsock_link *link = guarded(sizeof *link);
    *link = (qsock_link){0, 0};
    qsock_landmarks_meta landmarks = {.n_keypoints = QSOCK_MAX_KEYPOINTS + 1, .keypoints = keypoint};
    buffer.landmarks_metas = &landmarks;
    buffer.n_landmarks_metas = 1;
    CHECK_STATUS(qsock_sender_send(tx, &buffer), QSOCK_INVALID_ARGUMENT, "QSOCK_MAX_KEYPOINTS");
    landmarks = (qsock_landmarks_meta){.n_keypoints = 1, .keypoints = keypoint, .n_links = QSOCK_MAX_LINKS + 1,
                                       .links = link};
    CHECK_STATUS(qsock_sender_send(tx, &buffer), QSOCK_INVALID_ARGUMENT, "QSOCK_MAX_LINKS");
    CHECK(qsock_sender_in_flight(tx) == 0, "something was sent");
    printf("%s - kind outside the enum (0 from a zeroed struct, -1, 4, INT_MIN, ...) and counts past their arrays "
           "are refused before any array is read\n",
           failures > before ? "not ok" : "ok");
    return failures > before;
}

static int negative_fds(void) {
    int before = failures;
    int fds[] = {-1, -2, INT_MIN, 1000000 /* not open */};
    for (size_t i = 0; i < sizeof fds / sizeof *fds; i++) {
        qsock_send_block block = video_block();
        block.fd = fds[i];
        qsock_send_buffer buffer = video_buffer(&block);
        capture_stderr();
        qsock_status video = qsock_sender_send(tx, &buffer);
        block.tensor = (qsock_tensor_info){.type_ = 2, .n_dimensions = 1, .dimensions = {FRAME_SIZE}};
        buffer.kind = QSOCK_KIND_TENSOR;
        qsock_status tensor = qsock_sender_send(tx, &buffer);
        long noise = captured_stderr_bytes();
        CHECK(video == QSOCK_INVALID_ARGUMENT && tensor == QSOCK_INVALID_ARGUMENT,
              "fd %d: video %s, tensor %s", fds[i], qsock_status_name(video), qsock_status_name(tensor));
        CHECK(noise == 0, "fd %d: %ld bytes on stderr", fds[i], noise);
    }
    printf("%s - a video or tensor block with fd -1, -2, INT_MIN or a closed fd: QSOCK_INVALID_ARGUMENT, "
           "no panic, nothing on stderr\n",
           failures > before ? "not ok" : "ok");
    return failures > before;
}

static int out_pointers(void) {
    int before = failures;
    qsock_buffer *buf = (qsock_buffer *)0x1;
    CHECK_STATUS(qsock_receiver_recv_buffer(NULL, 0, &buf), QSOCK_INVALID_ARGUMENT, "receiver is NULL");
    CHECK(buf == NULL, "recv_buffer(NULL, ...) left *buffer_out at %p", (void *)buf);
    buf = (qsock_buffer *)0x1;
    CHECK_STATUS(qsock_receiver_recv_buffer(rx, 0, &buf), QSOCK_TIMEOUT, NULL);
    CHECK(buf == NULL, "a timeout left *buffer_out at %p", (void *)buf);
    qsock_receiver *r = (qsock_receiver *)0x1;
    CHECK_STATUS(qsock_receiver_open("", &r), QSOCK_BAD_SOCKET_PATH, "the socket path is empty");
    CHECK(strstr(qsock_last_error(), "socket path :") == NULL, "reads oddly: %s", qsock_last_error());
    CHECK(r == (qsock_receiver *)0x1, "a failed open changed *receiver_out");
    qsock_sender_event event = {.type_ = QSOCK_EVENT_DISCONNECT, .n_buf_ids = 7};
    CHECK_STATUS(qsock_sender_next_event(tx, 0, &event), QSOCK_TIMEOUT, NULL);
    CHECK(event.type_ == QSOCK_EVENT_DISCONNECT && event.n_buf_ids == 7, "a timeout changed *event_out");
    qsock_receiver_options options;
    memset(&options, 0xff, sizeof options);
    CHECK_STATUS(qsock_receiver_options_init(&options), QSOCK_OK, NULL);
    CHECK(options.socket_mode == QSOCK_DEFAULT_SOCKET_MODE && options.socket_mode == 0600 &&
              options.allowed_uids == NULL && options.n_allowed_uids == 0,
          "defaults: mode %o", options.socket_mode);
    printf("%s - out-pointers: recv_buffer sets *buffer_out to NULL on every failure (a NULL receiver too); "
           "failed open and next_event leave theirs alone; QSOCK_DEFAULT_SOCKET_MODE\n",
           failures > before ? "not ok" : "ok");
    return failures > before;
}

/* Sends `buffer`, which must be refused naming `limit`. */
#define REFUSED(buffer, limit)                                                             \
    CHECK_STATUS(qsock_sender_send(tx, &(buffer)), QSOCK_INVALID_ARGUMENT, limit)

static int meta_limits(void) {
    int before = failures;
    qsock_send_block block = video_block();
    char *name_max = repeated('n', QSOCK_MAX_NAME), *name_over = repeated('n', QSOCK_MAX_NAME + 1);
    char *structure_max = repeated('s', QSOCK_MAX_STRUCTURE), *structure_over = repeated('s', QSOCK_MAX_STRUCTURE + 1);
    char *protection_max = repeated('p', QSOCK_MAX_PROTECTION);
    char *protection_over = repeated('p', QSOCK_MAX_PROTECTION + 1);

    /* Past each limit: refused, naming it. */
    qsock_send_buffer buffer = video_buffer(&block);
    qsock_roi_meta roi = {.label = name_over, .w = 1, .h = 1};
    buffer.roi_metas = &roi;
    buffer.n_roi_metas = 1;
    REFUSED(buffer, "QSOCK_MAX_NAME");
    roi = (qsock_roi_meta){.label = "face", .det_meta = structure_over};
    REFUSED(buffer, "QSOCK_MAX_STRUCTURE");
    roi = (qsock_roi_meta){.label = "face", .xtraparams = structure_over};
    REFUSED(buffer, "QSOCK_MAX_STRUCTURE");
    buffer = video_buffer(&block);
    qsock_class_label labels[QSOCK_MAX_CLASS_LABELS];
    for (int i = 0; i < QSOCK_MAX_CLASS_LABELS; i++)
        labels[i] = (qsock_class_label){.name = name_max, .confidence = i, .color = i, .xtraparams = structure_max};
    labels[3].name = name_over;
    qsock_class_meta class = {.id = 1, .parent_id = -1, .n_labels = QSOCK_MAX_CLASS_LABELS, .labels = labels};
    buffer.class_metas = &class;
    buffer.n_class_metas = 1;
    REFUSED(buffer, "QSOCK_MAX_NAME");
    labels[3].name = name_max;
    labels[5].xtraparams = structure_over;
    REFUSED(buffer, "QSOCK_MAX_STRUCTURE");
    labels[5].xtraparams = structure_max;
    buffer = video_buffer(&block);
    qsock_keypoint keypoints[QSOCK_MAX_KEYPOINTS];
    qsock_link links[QSOCK_MAX_LINKS];
    for (int i = 0; i < QSOCK_MAX_KEYPOINTS; i++)
        keypoints[i] = (qsock_keypoint){.name = name_max, .confidence = 1, .x = i, .y = i};
    for (int i = 0; i < QSOCK_MAX_LINKS; i++)
        links[i] = (qsock_link){i, (i + 1) % QSOCK_MAX_KEYPOINTS};
    keypoints[63].name = name_over;
    qsock_landmarks_meta landmarks = {.id = 2, .parent_id = -1, .confidence = 0.5, .n_keypoints = QSOCK_MAX_KEYPOINTS,
                                      .keypoints = keypoints, .n_links = QSOCK_MAX_LINKS, .links = links,
                                      .xtraparams = structure_max};
    buffer.landmarks_metas = &landmarks;
    buffer.n_landmarks_metas = 1;
    REFUSED(buffer, "QSOCK_MAX_NAME");
    keypoints[63].name = name_max;
    landmarks.xtraparams = structure_over;
    REFUSED(buffer, "QSOCK_MAX_STRUCTURE");
    landmarks.xtraparams = structure_max;
    buffer = video_buffer(&block);
    const char *protection = protection_over;
    buffer.protection_metas = &protection;
    buffer.n_protection_metas = 1;
    REFUSED(buffer, "QSOCK_MAX_PROTECTION");
    /* A description past QSOCK_MAX_MESSAGE: 26 classification metas and 10 ROIs. */
    buffer = video_buffer(&block);
    qsock_class_meta classes[26];
    for (int i = 0; i < 26; i++)
        classes[i] = (qsock_class_meta){.n_labels = 1, .labels = labels};
    qsock_roi_meta rois[10];
    for (int i = 0; i < 10; i++)
        rois[i] = (qsock_roi_meta){.label = "face"};
    buffer.class_metas = classes;
    buffer.n_class_metas = 26;
    buffer.roi_metas = rois;
    buffer.n_roi_metas = 10;
    REFUSED(buffer, "262144");
    CHECK(qsock_sender_in_flight(tx) == 0, "something was sent");

    /* At each limit: sent, and received whole. */
    buffer = video_buffer(&block);
    roi = (qsock_roi_meta){.label = name_max, .id = 7, .w = 8, .h = 8, .det_meta = structure_max,
                           .xtraparams = structure_max};
    buffer.roi_metas = &roi;
    buffer.n_roi_metas = 1;
    buffer.class_metas = &class;
    buffer.n_class_metas = 1;
    buffer.landmarks_metas = &landmarks;
    buffer.n_landmarks_metas = 1;
    protection = protection_max;
    buffer.protection_metas = &protection;
    buffer.n_protection_metas = 1;
    CHECK_STATUS(qsock_sender_send(tx, &buffer), QSOCK_OK, NULL);
    qsock_buffer *buf = receive();
    if (buf) {
        qsock_roi_meta r;
        CHECK_STATUS(qsock_buffer_get_roi_meta(buf, 0, &r), QSOCK_OK, NULL);
        CHECK(strcmp(r.label, name_max) == 0 && strcmp(r.det_meta, structure_max) == 0 &&
                  strcmp(r.xtraparams, structure_max) == 0,
              "ROI strings cut: label %zu, det_meta %zu bytes", strlen(r.label), strlen(r.det_meta));
        qsock_class_meta c;
        CHECK_STATUS(qsock_buffer_get_class_meta(buf, 0, &c), QSOCK_OK, NULL);
        CHECK(c.n_labels == QSOCK_MAX_CLASS_LABELS && strcmp(c.labels[31].name, name_max) == 0 &&
                  strcmp(c.labels[31].xtraparams, structure_max) == 0 && c.labels[31].color == 31,
              "%zu class labels", c.n_labels);
        qsock_landmarks_meta l;
        CHECK_STATUS(qsock_buffer_get_landmarks_meta(buf, 0, &l), QSOCK_OK, NULL);
        CHECK(l.n_keypoints == QSOCK_MAX_KEYPOINTS && l.n_links == QSOCK_MAX_LINKS &&
                  strcmp(l.keypoints[63].name, name_max) == 0 && l.keypoints[63].x == 63 &&
                  l.links[63].d_kp_idx == 0 && strcmp(l.xtraparams, structure_max) == 0,
              "%zu keypoints, %zu links", l.n_keypoints, l.n_links);
        const char *p;
        CHECK_STATUS(qsock_buffer_get_protection_meta(buf, 0, &p), QSOCK_OK, NULL);
        CHECK(strcmp(p, protection_max) == 0, "protection meta cut to %zu bytes", strlen(p));
        qsock_receiver_release(buf);
        take_return();
    }
    uint8_t text_max[QSOCK_MAX_TEXT];
    memset(text_max, 'x', sizeof text_max);
    qsock_send_block text = {.fd = -1, .size = QSOCK_MAX_TEXT, .maxsize = QSOCK_MAX_TEXT, .text = text_max};
    qsock_send_buffer text_buffer = {.kind = QSOCK_KIND_TEXT, .n_blocks = 1, .blocks = &text};
    CHECK_STATUS(qsock_sender_send(tx, &text_buffer), QSOCK_OK, NULL);
    buf = receive();
    if (buf) {
        const uint8_t *data;
        size_t size;
        CHECK_STATUS(qsock_buffer_get_text(buf, 0, &data, &size), QSOCK_OK, NULL);
        CHECK(size == QSOCK_MAX_TEXT && memcmp(data, text_max, size) == 0, "text of %zu bytes", size);
        qsock_receiver_release(buf);
    }
    free(name_max), free(name_over), free(structure_max), free(structure_over);
    free(protection_max), free(protection_over);
    printf("%s - metas: past QSOCK_MAX_NAME, _STRUCTURE, _PROTECTION, _CLASS_LABELS, _KEYPOINTS, _LINKS or "
           "_MESSAGE refused naming the limit; at the limits received whole\n",
           failures > before ? "not ok" : "ok");
    return failures > before;
}

int main(void) {
    snprintf(socket_dir, sizeof socket_dir, "/tmp/qsock-args-XXXXXX");
    if (!mkdtemp(socket_dir))
        return 2;
    char path[96];
    snprintf(path, sizeof path, "%s/s", socket_dir);
    if (qsock_receiver_open(path, &rx) != QSOCK_OK || qsock_sender_connect(path, &tx) != QSOCK_OK) {
        fprintf(stderr, "setup: %s\n", qsock_last_error());
        return 2;
    }
    frame_fd = memfd_holding(FRAME_SIZE, 0);
    int failed = 0, run = 0;
    failed += status_names(), run++;
    failed += kinds_and_counts(), run++;
    failed += negative_fds(), run++;
    failed += out_pointers(), run++;
    failed += meta_limits(), run++;
    qsock_sender_close(tx);
    qsock_receiver_close(rx);
    close(frame_fd);
    unlink(captured_path);
    rmdir(socket_dir);
    printf("%d passed, %d failed\n", run - failed, failed);
    return failed ? 1 : 0;
}
