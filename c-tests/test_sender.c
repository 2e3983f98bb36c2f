/*
 * qsock_sender_* paired with qsock_receiver_*, in two processes, using only <qsock.h>.
 * The parent sends 12 frames from a pool of 4 memfds (each holding its index), with a
 * region-of-interest meta, then a text and a tensor buffer, then EOS; it reuses a pool
 * buffer only after its return. The child receives, checks each field and the index in
 * the mapped memory, and releases. Then the error paths of the sender. Then the same
 * pooled frames to qtisocketsrc in a gst-launch-1.0 child process, which writes them to
 * a file: every frame's index is checked there.
 *
 * usage: test_sender PLUGIN_DIR      (the directory holding libgstqtisocket.so)
 */
#include "qsock_test.h" /* first: it defines _GNU_SOURCE */

#include <errno.h>
#include <sys/wait.h>

#define POOL 4
#define ROUNDS 3

/* Leaves an error in qsock_last_error() that is not `status`'s, so that the check after
 * the next call sees whether that call replaced it. Returns words of the planted error. */
static const char *plant_other_error(qsock_status status) {
    if (status == QSOCK_INVALID_ARGUMENT) {
        qsock_sender *tx;
        CHECK(qsock_sender_connect("/nonexistent-dir/s", &tx) == QSOCK_IO_ERROR, "planting an I/O error");
        return "/nonexistent-dir/s";
    }
    CHECK(qsock_sender_send(NULL, NULL) == QSOCK_INVALID_ARGUMENT, "planting an invalid argument");
    return "sender is NULL";
}

/* `call` returns `expected`, and qsock_last_error() says `words` instead of the older,
 * different error planted just before. */
#define CHECK_FRESH_ERROR(call, expected, words)                                           \
    do {                                                                                   \
        const char *planted_ = plant_other_error(expected);                                \
        qsock_status got_ = (call);                                                        \
        const char *last_ = qsock_last_error();                                            \
        CHECK(got_ == (expected) && strstr(last_, (words)) != NULL && strstr(last_, planted_) == NULL, \
              "%s returned %s, expected %s saying \"%s\"", #call, qsock_status_name(got_),         \
              qsock_status_name(expected), (words));                                       \
    } while (0)

/* The child: receives what the parent sends and checks it. */
static int receive(qsock_receiver *rx) {
    int frames = 0;
    qsock_buffer *buf;
    qsock_status status;
    while ((status = qsock_receiver_recv_buffer(rx, 10000, &buf)) == QSOCK_OK) {
        qsock_buffer_info info;
        qsock_buffer_get_info(buf, &info);
        qsock_block block;
        qsock_buffer_get_block(buf, 0, &block);
        if (info.kind == QSOCK_KIND_VIDEO) {
            qsock_video_info v;
            CHECK(qsock_buffer_get_video(buf, 0, &v) == QSOCK_OK && strcmp(v.format_name, "NV12") == 0 &&
                      v.offsets[1] == 3072 && v.n_planes == 2,
                  "video info");
            uint64_t *map = mmap(NULL, block.maxsize, PROT_READ, MAP_SHARED, block.fd, 0);
            CHECK(map != MAP_FAILED && *map == (uint64_t)(frames % POOL), "frame %d holds index %llu", frames,
                  map == MAP_FAILED ? 0ULL : (unsigned long long)*map);
            if (map != MAP_FAILED)
                munmap(map, block.maxsize);
            CHECK(info.pts == (uint64_t)frames * 1000 && info.use_buffer_pool, "pts %llu",
                  (unsigned long long)info.pts);
            qsock_roi_meta roi;
            CHECK(qsock_buffer_get_roi_meta(buf, 0, &roi) == QSOCK_OK && strcmp(roi.label, "face") == 0 &&
                      roi.w == 16 && roi.det_meta && strstr(roi.det_meta, "confidence") && !roi.xtraparams,
                  "roi meta");
            frames++;
        } else if (info.kind == QSOCK_KIND_TEXT) {
            const uint8_t *text;
            size_t size;
            qsock_buffer_get_text(buf, 0, &text, &size);
            CHECK(size == 5 && memcmp(text, "hello", 5) == 0, "text %.*s", (int)size, (const char *)text);
        } else {
            qsock_tensor_info t;
            qsock_buffer_get_tensor(buf, 0, &t);
            CHECK(t.type_ == 10 && strcmp(t.type_name, "FLOAT32") == 0 && t.n_dimensions == 2 && t.dimensions[1] == 3,
                  "tensor");
        }
        qsock_receiver_release(buf);
    }
    CHECK(status == QSOCK_EOS, "ended with %s", qsock_status_name(status));
    CHECK(frames == POOL * ROUNDS, "%d frames", frames);
    qsock_receiver_stats stats;
    qsock_receiver_get_stats(rx, &stats);
    CHECK(stats.fds_received == POOL + 1, "%llu fds received: each pool memfd once, and the tensor's",
          (unsigned long long)stats.fds_received);
    qsock_receiver_close(rx);
    return failures;
}

static void wait_return(qsock_sender *tx, int buf_id) {
    qsock_sender_event event;
    for (;;) {
        qsock_status s = qsock_sender_next_event(tx, 10000, &event);
        CHECK(s == QSOCK_OK && event.type_ == QSOCK_EVENT_RETURN, "waiting for %d: %s", buf_id, qsock_status_name(s));
        if (s != QSOCK_OK || event.type_ != QSOCK_EVENT_RETURN || event.buf_ids[0] == buf_id)
            return;
    }
}

static void send_stream(const char *path) {
    qsock_sender *tx = NULL;
    for (int tries = 0; qsock_sender_connect(path, &tx) != QSOCK_OK && tries < 1000; tries++)
        usleep(10000); /* the receiver may not listen yet: retry every 10 ms */
    CHECK(tx != NULL, "could not connect");
    if (!tx)
        return;
    int pool[POOL];
    for (int i = 0; i < POOL; i++)
        pool[i] = memfd_holding(FRAME_SIZE, i);
    qsock_roi_meta roi = {.label = "face", .id = 1, .parent_id = -1, .x = 4, .y = 4, .w = 16, .h = 16,
                          .det_meta = "ObjectDetection, confidence=(double)0.9;"};
    for (int n = 0; n < POOL * ROUNDS; n++) {
        int fd = pool[n % POOL];
        if (n >= POOL)
            wait_return(tx, pool[n % POOL]); /* a pool buffer goes out again only once back */
        qsock_send_block block = {.fd = fd, .size = FRAME_SIZE, .maxsize = FRAME_SIZE, .video = nv12_64x48()};
        qsock_send_buffer buffer = {.kind = QSOCK_KIND_VIDEO, .n_blocks = 1, .blocks = &block, .pts = n * 1000,
                                    .dts = QSOCK_CLOCK_TIME_NONE, .duration = 1000, .pooled = true,
                                    .n_roi_metas = 1, .roi_metas = &roi};
        CHECK(qsock_sender_send(tx, &buffer) == QSOCK_OK, "frame %d", n);
    }
    for (int i = 0; i < POOL; i++)
        wait_return(tx, pool[(POOL * ROUNDS + i) % POOL]);
    CHECK(qsock_sender_in_flight(tx) == 0, "%zu in flight", qsock_sender_in_flight(tx));

    qsock_send_block text = {.fd = -1, .size = 5, .maxsize = 5, .text = (const uint8_t *)"hello"};
    qsock_send_buffer text_buffer = {.kind = QSOCK_KIND_TEXT, .n_blocks = 1, .blocks = &text};
    CHECK(qsock_sender_send(tx, &text_buffer) == QSOCK_OK, "text");
    CHECK(qsock_sender_in_flight(tx) == 0, "text holds no memory");

    int tensor_fd = memfd_holding(24, 0);
    qsock_send_block tensor = {.fd = tensor_fd, .size = 24, .maxsize = 24,
                               .tensor = {.type_ = 10, .n_dimensions = 2, .dimensions = {2, 3}}};
    qsock_send_buffer tensor_buffer = {.kind = QSOCK_KIND_TENSOR, .n_blocks = 1, .blocks = &tensor};
    CHECK(qsock_sender_send(tx, &tensor_buffer) == QSOCK_OK, "tensor");
    wait_return(tx, tensor_fd);

    /* What a receiver would reject is refused before it is sent. */
    qsock_send_block too_big = {.fd = pool[0], .size = 2 * FRAME_SIZE, .maxsize = 2 * FRAME_SIZE, .video = nv12_64x48()};
    qsock_send_buffer bad = {.kind = QSOCK_KIND_VIDEO, .n_blocks = 1, .blocks = &too_big};
    CHECK_FRESH_ERROR(qsock_sender_send(tx, &bad), QSOCK_INVALID_ARGUMENT, "exceeds");
    uint8_t long_text[1025];
    memset(long_text, 'x', sizeof long_text);
    qsock_send_block too_long = {.fd = -1, .size = sizeof long_text, .maxsize = sizeof long_text, .text = long_text};
    bad = (qsock_send_buffer){.kind = QSOCK_KIND_TEXT, .n_blocks = 1, .blocks = &too_long};
    CHECK_FRESH_ERROR(qsock_sender_send(tx, &bad), QSOCK_INVALID_ARGUMENT, "1024");
    bad = (qsock_send_buffer){.kind = QSOCK_KIND_VIDEO, .n_blocks = 1, .blocks = NULL};
    CHECK_FRESH_ERROR(qsock_sender_send(tx, &bad), QSOCK_INVALID_ARGUMENT, "blocks is NULL");
    qsock_send_block negative_fd = {.fd = -1, .size = FRAME_SIZE, .maxsize = FRAME_SIZE, .video = nv12_64x48()};
    bad = (qsock_send_buffer){.kind = QSOCK_KIND_VIDEO, .n_blocks = 1, .blocks = &negative_fd};
    CHECK_FRESH_ERROR(qsock_sender_send(tx, &bad), QSOCK_INVALID_ARGUMENT, "fd -1 is not an fd");

    /* Every non-OK result of next_event says why, replacing an older error. */
    qsock_sender_event event;
    CHECK_FRESH_ERROR(qsock_sender_next_event(tx, 0, &event), QSOCK_TIMEOUT, "within 0 ms");
    CHECK_FRESH_ERROR(qsock_sender_next_event(tx, 0, NULL), QSOCK_INVALID_ARGUMENT, "event_out is NULL");
    CHECK(qsock_sender_send_eos(tx) == QSOCK_OK, "eos");
    CHECK_FRESH_ERROR(qsock_sender_next_event(tx, 10000, &event), QSOCK_RECEIVER_GONE, "closed the connection");
    CHECK_FRESH_ERROR(qsock_sender_send_eos(tx), QSOCK_IO_ERROR, "EOS");
    qsock_sender_close(tx);
    for (int i = 0; i < POOL; i++)
        close(pool[i]);
    close(tensor_fd);
}

/* Sends 8 frames from the pool of 4 to `gst-launch-1.0 qtisocketsrc ! filesink` and
 * checks the file: frame n holds index n % 4. */
static int to_qtisocketsrc(const char *dir, const char *plugin_dir) {
    int before = failures;
    char path[96], out[96], socket_arg[128], location[128];
    snprintf(path, sizeof path, "%s/gst.sock", dir);
    snprintf(out, sizeof out, "%s/frames.raw", dir);
    snprintf(socket_arg, sizeof socket_arg, "socket=%s", path);
    snprintf(location, sizeof location, "location=%s", out);
    pid_t child = fork();
    if (child == 0) {
        setenv("GST_PLUGIN_PATH", plugin_dir, 1);
        setenv("G_DEBUG", "fatal-criticals", 1);
        execlp("gst-launch-1.0", "gst-launch-1.0", "-q", "-e", "qtisocketsrc", socket_arg, "!",
               "video/x-raw,format=NV12,width=64,height=48", "!", "filesink", "buffer-mode=unbuffered",
               "enable-last-sample=false" /* else the last frame is held: never returned */, location,
               (char *)NULL);
        _exit(127);
    }
    qsock_sender *tx = NULL;
    for (int tries = 0; qsock_sender_connect(path, &tx) != QSOCK_OK && tries < 1000; tries++)
        usleep(10000);
    CHECK(tx != NULL, "could not connect to qtisocketsrc");
    if (tx) {
        int pool[POOL];
        for (int i = 0; i < POOL; i++)
            pool[i] = memfd_holding(FRAME_SIZE, i);
        for (int n = 0; n < 2 * POOL; n++) {
            if (n >= POOL)
                wait_return(tx, pool[n % POOL]);
            qsock_send_block block = {.fd = pool[n % POOL], .size = FRAME_SIZE, .maxsize = FRAME_SIZE,
                                      .video = nv12_64x48()};
            qsock_send_buffer buffer = {.kind = QSOCK_KIND_VIDEO, .n_blocks = 1, .blocks = &block,
                                        .pts = n * 33333333ULL, .dts = QSOCK_CLOCK_TIME_NONE,
                                        .duration = 33333333, .pooled = true};
            CHECK(qsock_sender_send(tx, &buffer) == QSOCK_OK, "frame %d to qtisocketsrc", n);
        }
        for (int i = 0; i < POOL; i++)
            wait_return(tx, pool[i]);
        CHECK(qsock_sender_send_eos(tx) == QSOCK_OK, "eos to qtisocketsrc");
        qsock_sender_close(tx);
        for (int i = 0; i < POOL; i++)
            close(pool[i]);
    }
    int status;
    while (waitpid(child, &status, 0) < 0 && errno == EINTR) {}
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "gst-launch-1.0 exited with %d", status);
    FILE *f = fopen(out, "rb");
    CHECK(f != NULL, "no output file %s", out);
    if (f) {
        uint8_t frame[FRAME_SIZE];
        int n = 0;
        while (fread(frame, 1, FRAME_SIZE, f) == FRAME_SIZE) {
            uint64_t index;
            memcpy(&index, frame, sizeof index);
            CHECK(index == (uint64_t)(n % POOL), "qtisocketsrc frame %d holds index %llu", n,
                  (unsigned long long)index);
            n++;
        }
        CHECK(n == 2 * POOL, "qtisocketsrc wrote %d frames", n);
        fclose(f);
        unlink(out);
    }
    return failures > before;
}

int main(int argc, char **argv) {
    char dir[] = "/tmp/qsock-c-sender-XXXXXX";
    if (!mkdtemp(dir))
        return 2;
    char path[64];
    snprintf(path, sizeof path, "%s/s", dir);

    qsock_sender *tx = (qsock_sender *)0x1;
    CHECK_FRESH_ERROR(qsock_sender_connect(path, &tx), QSOCK_IO_ERROR, path);
    CHECK(tx == (qsock_sender *)0x1, "a failed connect leaves *sender_out alone");
    CHECK_FRESH_ERROR(qsock_sender_connect(NULL, &tx), QSOCK_INVALID_ARGUMENT, "socket_path is NULL");
    CHECK_FRESH_ERROR(qsock_sender_connect(path, NULL), QSOCK_INVALID_ARGUMENT, "sender_out is NULL");
    CHECK_FRESH_ERROR(qsock_sender_send_eos(NULL), QSOCK_INVALID_ARGUMENT, "sender is NULL");
    CHECK(qsock_sender_send(NULL, NULL) == QSOCK_INVALID_ARGUMENT, "NULL sender");
    /* Functions without a status fail with words all the same. */
    plant_other_error(QSOCK_INVALID_ARGUMENT);
    CHECK(qsock_sender_get_fd(NULL) == -1 && strstr(qsock_last_error(), "sender is NULL"), "get_fd(NULL)");
    plant_other_error(QSOCK_INVALID_ARGUMENT);
    CHECK(qsock_sender_in_flight(NULL) == 0 && strstr(qsock_last_error(), "sender is NULL"), "in_flight(NULL)");
    qsock_sender_close(NULL);
    int setup_failures = failures;

    pid_t child = fork();
    if (child == 0) {
        qsock_receiver *rx;
        if (qsock_receiver_open(path, &rx) != QSOCK_OK) {
            fprintf(stderr, "%s\n", qsock_last_error());
            _exit(2);
        }
        _exit(receive(rx) ? 1 : 0);
    }
    send_stream(path);
    int status;
    while (waitpid(child, &status, 0) < 0 && errno == EINTR) {}
    int child_ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
    CHECK(child_ok, "the receiving process failed");
    int pair_failed = failures > setup_failures;
    int gst_failed = 1;
    if (argc > 1)
        gst_failed = to_qtisocketsrc(dir, argv[1]);
    else
        fprintf(stderr, "FAIL: no PLUGIN_DIR argument: cannot run qtisocketsrc\n");
    rmdir(dir);
    int sections_failed = (setup_failures > 0) + pair_failed + gst_failed;
    printf("%s - sender error paths\n%s - sender and receiver in two processes: 12 pooled frames with ROI metas, "
           "text, tensor, EOS\n%s - sender to qtisocketsrc in gst-launch-1.0: 8 pooled frames, EOS\n",
           setup_failures ? "not ok" : "ok", pair_failed ? "not ok" : "ok", gst_failed ? "not ok" : "ok");
    printf("%d passed, %d failed\n", 3 - sections_failed, sections_failed);
    return sections_failed ? 1 : 0;
}
