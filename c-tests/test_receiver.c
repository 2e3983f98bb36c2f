/*
 * The C receiver API as a user sees it: only <qsock.h>, linked to the built library.
 * A real sender (qsock-replay, another process) plays the deployed sink's captures;
 * this program checks every field against the capture, maps every fd to find the
 * index the sender wrote there, releases every buffer, and the sender's exit status
 * says whether every buffer came back.
 *
 * usage: test_receiver <path-to-qsock-replay> <captures-dir>
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <qsock.h>

extern char **environ;

static const char *replay_bin;
static const char *captures_dir;
static char socket_dir[64];
static int failures;

#define CHECK(cond, ...)                                                                   \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);                \
            fprintf(stderr, __VA_ARGS__);                                                  \
            fprintf(stderr, "\n");                                                         \
            failures++;                                                                    \
        }                                                                                  \
    } while (0)

#define CHECK_STATUS(call, expected)                                                       \
    do {                                                                                   \
        qsock_status got_ = (call);                                                        \
        CHECK(got_ == (expected), "%s returned %s, expected %s (last error: %s)", #call,   \
              qsock_status_name(got_), qsock_status_name(expected), qsock_last_error());   \
    } while (0)

/* Leaves an error in qsock_last_error() that is not `status`'s, so that the check after
 * the next call sees whether that call replaced it. Returns words of the planted error. */
static const char *plant_other_error(qsock_status status) {
    qsock_receiver *rx;
    if (status == QSOCK_INVALID_ARGUMENT) {
        CHECK_STATUS(qsock_receiver_open(socket_dir, &rx), QSOCK_BAD_SOCKET_PATH);
        return "is a directory";
    }
    CHECK_STATUS(qsock_buffer_get_info(NULL, NULL), QSOCK_INVALID_ARGUMENT);
    return "buffer is NULL";
}

/* `call` returns `expected`, and qsock_last_error() says `words` instead of the older,
 * different error planted just before. */
#define CHECK_FRESH_ERROR(call, expected, words)                                           \
    do {                                                                                   \
        const char *planted_ = plant_other_error(expected);                                \
        CHECK_STATUS(call, expected);                                                      \
        const char *last_ = qsock_last_error();                                            \
        CHECK(strstr(last_, (words)) != NULL && strstr(last_, planted_) == NULL,           \
              "after %s: last error \"%s\", expected it to say \"%s\"", #call, last_, (words)); \
    } while (0)

static pid_t spawn_replay(const char *socket_path, const char *capture, const char *extra_flag,
                          const char *extra_value) {
    char capture_path[512];
    snprintf(capture_path, sizeof capture_path, "%s/%s", captures_dir, capture);
    char *argv[] = {(char *)replay_bin, (char *)socket_path, capture_path, "--quiet",
                    (char *)extra_flag, (char *)extra_value, NULL};
    pid_t pid;
    int err = posix_spawn(&pid, replay_bin, NULL, NULL, argv, environ);
    if (err != 0) {
        fprintf(stderr, "cannot start %s: %s\n", replay_bin, strerror(err));
        exit(2);
    }
    return pid;
}

/* The sender's verdict: 0 when every buffer it sent was returned. */
static int wait_replay(pid_t pid) {
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* The index the sender wrote at the start of the block's memory, read through mmap. */
static long long mapped_index(const qsock_block *block) {
    void *map = mmap(NULL, block->maxsize, PROT_READ, MAP_SHARED, block->fd, 0);
    if (map == MAP_FAILED)
        return -1;
    long long index;
    memcpy(&index, map, sizeof index);
    munmap(map, block->maxsize);
    return index;
}

struct expected {
    const char *capture;
    qsock_kind kind;
    int n_buffers;
    int buf_ids[8];
    int indices[8]; /* what the memory holds; -1 for text */
    bool pooled;
};

static const struct expected captures[] = {
    {"video-pool.jsonl", QSOCK_KIND_VIDEO, 8, {7, 8, 9, 11, 7, 8, 9, 11}, {0, 1, 2, 3, 0, 1, 2, 3}, true},
    {"video-nopool.jsonl", QSOCK_KIND_VIDEO, 5, {6, 7, 8, 9, 11}, {0, 1, 2, 3, 4}, false},
    {"video-roi.jsonl", QSOCK_KIND_VIDEO, 3, {6, 7, 8}, {0, 1, 2}, false},
    {"tensor.jsonl", QSOCK_KIND_TENSOR, 4, {6, 7, 8, 9}, {0, 1, 2, 3}, false},
    {"tensor-pool.jsonl", QSOCK_KIND_TENSOR, 6, {7, 8, 9, 11, 7, 8}, {0, 1, 2, 3, 0, 1}, true},
    {"text.jsonl", QSOCK_KIND_TEXT, 4, {-1, -1, -1, -1}, {-1, -1, -1, -1}, false},
};

static void check_video(const qsock_buffer *buf) {
    qsock_video_info v;
    CHECK_STATUS(qsock_buffer_get_video(buf, 0, &v), QSOCK_OK);
    CHECK(v.format == 23 && strcmp(v.format_name, "NV12") == 0, "format %u %s", v.format, v.format_name);
    CHECK(v.width == 64 && v.height == 48, "%ux%u", v.width, v.height);
    CHECK(v.n_planes == 2 && v.offsets[0] == 0 && v.offsets[1] == 3072, "planes %u offsets %llu,%llu",
          v.n_planes, (unsigned long long)v.offsets[0], (unsigned long long)v.offsets[1]);
    CHECK(v.strides[0] == 64 && v.strides[1] == 64 && v.strides[2] == 0, "strides %d,%d", v.strides[0],
          v.strides[1]);
    CHECK(v.flags == 0, "flags %u", v.flags);
    qsock_tensor_info t;
    CHECK_STATUS(qsock_buffer_get_tensor(buf, 0, &t), QSOCK_INVALID_ARGUMENT);
}

static void check_tensor(const qsock_buffer *buf) {
    qsock_tensor_info t;
    CHECK_STATUS(qsock_buffer_get_tensor(buf, 0, &t), QSOCK_OK);
    CHECK(t.type_ == 2 && strcmp(t.type_name, "UINT8") == 0, "type %u %s", t.type_, t.type_name);
    CHECK(t.n_dimensions == 4 && t.dimensions[0] == 1 && t.dimensions[1] == 4 && t.dimensions[2] == 4 &&
              t.dimensions[3] == 3 && t.dimensions[4] == 0,
          "dimensions %u: %u %u %u %u", t.n_dimensions, t.dimensions[0], t.dimensions[1], t.dimensions[2],
          t.dimensions[3]);
}

static void check_roi(const qsock_buffer *buf, int i) {
    qsock_roi_meta roi;
    CHECK_STATUS(qsock_buffer_get_roi_meta(buf, 0, &roi), QSOCK_OK);
    CHECK(strcmp(roi.label, "person") == 0, "label %s", roi.label);
    CHECK(roi.x == 10 && roi.y == 20 && roi.w == 30 && roi.h == 40, "%u,%u %ux%u", roi.x, roi.y, roi.w, roi.h);
    CHECK(roi.id == i && roi.parent_id == -1, "id %d parent %d", roi.id, roi.parent_id);
    CHECK(roi.det_meta && strcmp(roi.det_meta, "ObjectDetection, confidence=(double)87.5, color=(uint)4278190335;") == 0,
          "det_meta %s", roi.det_meta ? roi.det_meta : "(null)");
    CHECK(roi.xtraparams == NULL, "xtraparams %s", roi.xtraparams);
    CHECK_STATUS(qsock_buffer_get_roi_meta(buf, 1, &roi), QSOCK_INVALID_ARGUMENT);
}

static void check_capture(const struct expected *e) {
    char socket_path[128];
    snprintf(socket_path, sizeof socket_path, "%s/%s.sock", socket_dir, e->capture);
    qsock_receiver *rx = NULL;
    CHECK_STATUS(qsock_receiver_open(socket_path, &rx), QSOCK_OK);
    if (!rx)
        return;
    pid_t sender = spawn_replay(socket_path, e->capture, NULL, NULL);
    int received = 0;
    qsock_buffer *buf;
    qsock_status status;
    while ((status = qsock_receiver_recv_buffer(rx, 10000, &buf)) == QSOCK_OK) {
        int i = received++;
        if (i >= e->n_buffers) {
            qsock_receiver_release(buf);
            continue;
        }
        qsock_buffer_info info;
        CHECK_STATUS(qsock_buffer_get_info(buf, &info), QSOCK_OK);
        CHECK(info.kind == e->kind && info.n_blocks == 1, "%s #%d: kind %d, %zu blocks", e->capture, i, info.kind,
              info.n_blocks);
        /* The sender stamped 30 fps: pts = i * 10^9 / 30, rounded down. */
        CHECK(info.pts == (uint64_t)i * 100000000 / 3 && info.duration == 33333333 && info.dts == QSOCK_CLOCK_TIME_NONE,
              "%s #%d: pts %llu", e->capture, i, (unsigned long long)info.pts);
        CHECK(info.use_buffer_pool == e->pooled, "%s #%d: pooled %d", e->capture, i, info.use_buffer_pool);
        qsock_block block;
        CHECK_STATUS(qsock_buffer_get_block(buf, 0, &block), QSOCK_OK);
        CHECK(block.buf_id == e->buf_ids[i], "%s #%d: buf_id %d, expected %d", e->capture, i, block.buf_id,
              e->buf_ids[i]);
        CHECK_STATUS(qsock_buffer_get_block(buf, 1, &block), QSOCK_INVALID_ARGUMENT);
        CHECK_STATUS(qsock_buffer_get_block(buf, 0, &block), QSOCK_OK);
        if (e->kind == QSOCK_KIND_TEXT) {
            const uint8_t *data;
            size_t size;
            char want[24];
            snprintf(want, sizeof want, "frame %d", i);
            CHECK_STATUS(qsock_buffer_get_text(buf, 0, &data, &size), QSOCK_OK);
            CHECK(block.fd == -1 && size == strlen(want) && memcmp(data, want, size) == 0, "text #%d: %.*s", i,
                  (int)size, (const char *)data);
        } else {
            CHECK(block.fd >= 0 && block.size == block.maxsize, "fd %d size %llu", block.fd,
                  (unsigned long long)block.size);
            long long index = mapped_index(&block);
            CHECK(index == e->indices[i], "%s #%d: the memory holds index %lld, expected %d", e->capture, i, index,
                  e->indices[i]);
            if (e->kind == QSOCK_KIND_VIDEO)
                check_video(buf);
            else
                check_tensor(buf);
        }
        if (strcmp(e->capture, "video-roi.jsonl") == 0)
            check_roi(buf, i);
        else
            CHECK(info.n_roi_metas == 0, "unexpected ROI metas");
        qsock_receiver_release(buf); /* the return goes to the sender */
    }
    CHECK(status == QSOCK_EOS, "%s: ended with %s (%s)", e->capture, qsock_status_name(status), qsock_last_error());
    CHECK(received == e->n_buffers, "%s: %d buffers, expected %d", e->capture, received, e->n_buffers);
    CHECK(wait_replay(sender) == 0, "%s: the sender did not get every buffer back", e->capture);
    CHECK_STATUS(qsock_receiver_recv_buffer(rx, 10000, &buf), QSOCK_SENDER_GONE);
    qsock_receiver_stats stats;
    CHECK_STATUS(qsock_receiver_get_stats(rx, &stats), QSOCK_OK);
    CHECK(stats.buffers == (uint64_t)e->n_buffers && stats.protocol_errors == 0 && !stats.connected,
          "stats: %llu buffers, %llu errors", (unsigned long long)stats.buffers,
          (unsigned long long)stats.protocol_errors);
    CHECK(stats.returns_sent == (e->kind == QSOCK_KIND_TEXT ? 0 : (uint64_t)e->n_buffers), "returns %llu",
          (unsigned long long)stats.returns_sent);
    qsock_receiver_close(rx);
    CHECK(access(socket_path, F_OK) != 0, "the socket file is left behind");
    printf("ok - %s: %d buffers, every field and index checked, every buffer returned\n", e->capture, received);
}

static void check_bad_arguments(void) {
    qsock_receiver *rx = (qsock_receiver *)0x1;
    CHECK_STATUS(qsock_receiver_open(NULL, &rx), QSOCK_INVALID_ARGUMENT);
    CHECK(strstr(qsock_last_error(), "socket_path") != NULL, "last error: %s", qsock_last_error());
    CHECK(rx == (qsock_receiver *)0x1, "a failed open must leave *receiver_out alone");
    CHECK_STATUS(qsock_receiver_open("/tmp/x", NULL), QSOCK_INVALID_ARGUMENT);
    qsock_buffer *buf;
    CHECK_STATUS(qsock_receiver_recv_buffer(NULL, 0, &buf), QSOCK_INVALID_ARGUMENT);
    CHECK_STATUS(qsock_buffer_get_info(NULL, NULL), QSOCK_INVALID_ARGUMENT);
    CHECK(qsock_receiver_get_fd(NULL) == -1, "get_fd(NULL)");
    qsock_receiver_release(NULL);
    qsock_receiver_close(NULL);
    CHECK(strcmp(qsock_status_name(QSOCK_SENDER_GONE), "QSOCK_SENDER_GONE") == 0, "status name");

    /* A path taken by a directory or a regular file is refused and left alone. */
    CHECK_STATUS(qsock_receiver_open(socket_dir, &rx), QSOCK_BAD_SOCKET_PATH);
    CHECK(strstr(qsock_last_error(), "directory") != NULL, "last error: %s", qsock_last_error());
    char file[128];
    snprintf(file, sizeof file, "%s/regular", socket_dir);
    FILE *f = fopen(file, "w");
    fputs("keep me", f);
    fclose(f);
    CHECK_STATUS(qsock_receiver_open(file, &rx), QSOCK_BAD_SOCKET_PATH);
    struct stat st;
    CHECK(stat(file, &st) == 0 && S_ISREG(st.st_mode) && st.st_size == 7, "the regular file was touched");
    char long_path[200];
    memset(long_path, 'x', sizeof long_path - 1);
    long_path[0] = '/';
    long_path[sizeof long_path - 1] = '\0';
    CHECK_STATUS(qsock_receiver_open(long_path, &rx), QSOCK_BAD_SOCKET_PATH);
    CHECK_STATUS(qsock_receiver_open("/nonexistent-dir/qsock.sock", &rx), QSOCK_IO_ERROR);
    CHECK(strstr(qsock_last_error(), "/nonexistent-dir/qsock.sock") != NULL, "last error: %s", qsock_last_error());
    printf("ok - bad arguments and bad paths are refused with clear errors\n");
}

static void check_timeout_poll_and_hangup(void) {
    char socket_path[128];
    snprintf(socket_path, sizeof socket_path, "%s/hangup.sock", socket_dir);
    qsock_receiver *rx;
    CHECK_STATUS(qsock_receiver_open(socket_path, &rx), QSOCK_OK);
    qsock_buffer *buf = (qsock_buffer *)0x1;
    CHECK_STATUS(qsock_receiver_recv_buffer(rx, 50, &buf), QSOCK_TIMEOUT);
    CHECK(buf == NULL, "a timeout must set *buffer_out to NULL");
    CHECK_STATUS(qsock_receiver_send_disconnect(rx), QSOCK_SENDER_GONE);

    /* The event-loop fd turns readable when the sender arrives. */
    struct pollfd pfd = {.fd = qsock_receiver_get_fd(rx), .events = POLLIN};
    CHECK(pfd.fd >= 0 && poll(&pfd, 1, 0) == 0, "readable before any sender");
    pid_t sender = spawn_replay(socket_path, "video-pool.jsonl", "--hangup-after", "2");
    CHECK(poll(&pfd, 1, 10000) == 1, "not readable after the sender connected");

    int received = 0;
    qsock_status status;
    while ((status = qsock_receiver_recv_buffer(rx, 10000, &buf)) == QSOCK_OK) {
        received++;
        qsock_receiver_release(buf);
    }
    CHECK(status == QSOCK_SENDER_GONE && received == 2, "%s after %d buffers", qsock_status_name(status), received);
    CHECK(wait_replay(sender) == 0, "replay failed");

    /* The next sender lies once: that message is rejected, the stream goes on. */
    sender = spawn_replay(socket_path, "crafted/video-maxsize-lie.jsonl", NULL, NULL);
    int buffers = 0, errors = 0;
    for (;;) {
        status = qsock_receiver_recv_buffer(rx, 10000, &buf);
        if (status == QSOCK_OK) {
            buffers++;
            qsock_receiver_release(buf);
        } else if (status == QSOCK_PROTOCOL_ERROR) {
            errors++;
            CHECK(strstr(qsock_last_error(), "maxsize 8192") != NULL, "last error: %s", qsock_last_error());
        } else {
            break;
        }
    }
    CHECK(status == QSOCK_EOS && buffers == 4 && errors == 1, "%s, %d buffers, %d errors", qsock_status_name(status),
          buffers, errors);
    CHECK(wait_replay(sender) == 0, "the lying sender must get even the rejected buffer back");
    qsock_receiver_close(rx);
    printf("ok - timeout, poll fd, hang-up, next sender, protocol error and recovery\n");
}

/* Every status but QSOCK_OK replaces qsock_last_error() with words about itself, each
 * provoked here after a different error: the argument and path errors, then TIMEOUT,
 * SENDER_GONE (no sender for DISCONNECT), a lying sender's PROTOCOL_ERROR, its EOS and
 * its hang-up (SENDER_GONE). A buffer (QSOCK_OK) leaves the last error alone. */
static void check_last_error_follows_every_status(void) {
    qsock_receiver *rx = NULL;
    qsock_buffer *buf;
    CHECK_FRESH_ERROR(qsock_receiver_open(NULL, &rx), QSOCK_INVALID_ARGUMENT, "socket_path is NULL");
    CHECK_FRESH_ERROR(qsock_receiver_options_init(NULL), QSOCK_INVALID_ARGUMENT, "options is NULL");
    CHECK_FRESH_ERROR(qsock_receiver_open(socket_dir, &rx), QSOCK_BAD_SOCKET_PATH, "is a directory");
    CHECK_FRESH_ERROR(qsock_receiver_open("/nonexistent-dir/qsock.sock", &rx), QSOCK_IO_ERROR, "/nonexistent-dir");
    char socket_path[128];
    snprintf(socket_path, sizeof socket_path, "%s/statuses.sock", socket_dir);
    CHECK_STATUS(qsock_receiver_open(socket_path, &rx), QSOCK_OK);
    if (!rx)
        return;
    CHECK_FRESH_ERROR(qsock_receiver_recv_buffer(rx, 20, &buf), QSOCK_TIMEOUT, "within 20 ms");
    CHECK_FRESH_ERROR(qsock_receiver_recv_buffer(rx, 20, NULL), QSOCK_INVALID_ARGUMENT, "buffer_out is NULL");
    CHECK_FRESH_ERROR(qsock_receiver_send_disconnect(rx), QSOCK_SENDER_GONE, "DISCONNECT");
    CHECK_FRESH_ERROR(qsock_receiver_get_stats(rx, NULL), QSOCK_INVALID_ARGUMENT, "stats_out is NULL");
    /* A function without a status fails with words all the same. */
    plant_other_error(QSOCK_OK);
    CHECK(qsock_receiver_get_fd(NULL) == -1 && strstr(qsock_last_error(), "receiver is NULL"), "last error: %s",
          qsock_last_error());

    pid_t sender = spawn_replay(socket_path, "crafted/video-maxsize-lie.jsonl", NULL, NULL);
    int buffers = 0, errors = 0;
    qsock_status status;
    const char *last, *planted;
    for (;;) {
        planted = plant_other_error(QSOCK_OK);
        status = qsock_receiver_recv_buffer(rx, 10000, &buf);
        last = qsock_last_error();
        if (status == QSOCK_OK) {
            buffers++;
            CHECK(strstr(last, planted) != NULL, "a buffer replaced the last error with: %s", last);
            qsock_receiver_release(buf);
        } else if (status == QSOCK_PROTOCOL_ERROR) {
            errors++;
            CHECK(strstr(last, "maxsize 8192") && !strstr(last, planted), "last error: %s", last);
        } else {
            break;
        }
    }
    CHECK(status == QSOCK_EOS && buffers == 4 && errors == 1, "%s, %d buffers, %d errors", qsock_status_name(status),
          buffers, errors);
    CHECK(strstr(last, "(EOS)") && strstr(last, socket_path) && !strstr(last, planted), "after EOS, last error: %s",
          last);
    CHECK(wait_replay(sender) == 0, "the lying sender must get every buffer back");
    CHECK_FRESH_ERROR(qsock_receiver_recv_buffer(rx, 10000, &buf), QSOCK_SENDER_GONE, "closed the connection");
    qsock_receiver_close(rx);
    printf("ok - qsock_last_error() follows every status: INVALID_ARGUMENT, BAD_SOCKET_PATH, IO_ERROR, TIMEOUT, "
           "SENDER_GONE, PROTOCOL_ERROR, EOS, and -1 from get_fd\n");
}

/* Socket safety from C: the options' defaults, the socket file's mode, and a sender
 * whose uid is not allowed turned away (QSOCK_SENDER_REFUSED) while the receiver goes on. */
static void check_options(void) {
    qsock_receiver_options options;
    CHECK_STATUS(qsock_receiver_options_init(&options), QSOCK_OK);
    CHECK(options.socket_mode == 0600 && options.n_allowed_uids == 0, "defaults: mode %o, %zu uids",
          options.socket_mode, options.n_allowed_uids);

    char socket_path[128];
    snprintf(socket_path, sizeof socket_path, "%s/options.sock", socket_dir);
    uint32_t not_me = getuid() + 1;
    options.socket_mode = 0640;
    options.allowed_uids = &not_me;
    options.n_allowed_uids = 1;
    qsock_receiver *rx;
    CHECK_STATUS(qsock_receiver_open_with_options(socket_path, &options, &rx), QSOCK_OK);
    struct stat st;
    CHECK(stat(socket_path, &st) == 0 && (st.st_mode & 07777) == 0640, "socket file mode %o", st.st_mode & 07777);

    pid_t sender = spawn_replay(socket_path, "video-nopool.jsonl", NULL, NULL);
    qsock_buffer *buf;
    char expected[64];
    snprintf(expected, sizeof expected, "uid %u", (unsigned)getuid());
    CHECK_FRESH_ERROR(qsock_receiver_recv_buffer(rx, 10000, &buf), QSOCK_SENDER_REFUSED, expected);
    CHECK(wait_replay(sender) != 0, "the refused sender must see its connection closed");
    qsock_receiver_stats stats;
    CHECK_STATUS(qsock_receiver_get_stats(rx, &stats), QSOCK_OK);
    CHECK(stats.senders_refused == 1 && stats.senders_accepted == 0 && stats.peer_pid == -1,
          "refused %llu, accepted %llu, peer pid %lld", (unsigned long long)stats.senders_refused,
          (unsigned long long)stats.senders_accepted, (long long)stats.peer_pid);
    CHECK_STATUS(qsock_receiver_recv_buffer(rx, 20, &buf), QSOCK_TIMEOUT);
    qsock_receiver_close(rx);

    options.socket_mode = 01777;
    CHECK_STATUS(qsock_receiver_open_with_options(socket_path, &options, &rx), QSOCK_BAD_SOCKET_PATH);
    /* NULL options: the defaults; the connected sender's credentials are in the stats. */
    CHECK_STATUS(qsock_receiver_open_with_options(socket_path, NULL, &rx), QSOCK_OK);
    sender = spawn_replay(socket_path, "video-nopool.jsonl", NULL, NULL);
    int received = 0;
    while (qsock_receiver_recv_buffer(rx, 10000, &buf) == QSOCK_OK) {
        if (received++ == 0) {
            CHECK_STATUS(qsock_receiver_get_stats(rx, &stats), QSOCK_OK);
            CHECK(stats.peer_pid == sender && stats.peer_uid == (int64_t)getuid(), "peer pid %lld uid %lld",
                  (long long)stats.peer_pid, (long long)stats.peer_uid);
        }
        qsock_receiver_release(buf);
    }
    CHECK(received == 5 && wait_replay(sender) == 0, "%d buffers", received);
    qsock_receiver_close(rx);
    printf("ok - options: mode 0600 by default, 0640 as asked, a uid not allowed refused, peer credentials\n");
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s <qsock-replay> <captures-dir>\n", argv[0]);
        return 2;
    }
    replay_bin = argv[1];
    captures_dir = argv[2];
    snprintf(socket_dir, sizeof socket_dir, "/tmp/qsock-c-test-XXXXXX");
    if (!mkdtemp(socket_dir)) {
        perror("mkdtemp");
        return 2;
    }
    int sections = 0, failed_sections = 0;
    void (*const plain[])(void) = {check_bad_arguments, check_timeout_poll_and_hangup, check_last_error_follows_every_status,
                                   check_options};
    const size_t n_plain = sizeof plain / sizeof plain[0];
    for (size_t i = 0; i < sizeof captures / sizeof captures[0] + n_plain; i++) {
        int before = failures;
        if (i < n_plain)
            plain[i]();
        else
            check_capture(&captures[i - n_plain]);
        sections++;
        failed_sections += failures > before;
    }
    char regular[128];
    snprintf(regular, sizeof regular, "%s/regular", socket_dir);
    unlink(regular);
    rmdir(socket_dir);
    printf("%d passed, %d failed\n", sections - failed_sections, failed_sections);
    if (failures)
        fprintf(stderr, "%d checks failed\n", failures);
    return failures ? 1 : 0;
}
