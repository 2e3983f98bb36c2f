/*
 * Many buffers in flight, under CPU load (two busy loops): a sender that follows the
 * contract (reuses a memfd only after its return) with a pool of 300 or 1000 memfds,
 * reading its events only when the pool is empty (or not at all until the end), and a
 * receiver that releases each buffer as it comes, in two processes and in one thread of
 * one process; and a receiver that holds the whole pool, releases it at once and then
 * calls nothing until the sender has every buffer back. Nothing may deadlock: no
 * QSOCK_SENDER_GONE, no QSOCK_IO_ERROR, no release that blocks, every frame delivered
 * with the number the sender wrote in its memory, every buffer back.
 *
 * usage: test_backpressure
 */
#include "qsock_test.h"

#define MAX_FD 65536
/* A release that waits for the sender takes 2 s; one that does not takes microseconds,
 * or a scheduling delay on a loaded machine. */
#define RELEASE_LIMIT_MS 1000.0

static char socket_dir[64];

/* The sender's pool: memfds, and which are free (back from the receiver). */
struct pool {
    int n;
    int *fds;
    int *free_stack;
    int n_free;
    int index_of_fd[MAX_FD];
};

static struct pool *pool_new(int n) {
    struct pool *p = calloc(1, sizeof *p);
    p->n = n;
    p->fds = calloc(n, sizeof *p->fds);
    p->free_stack = calloc(n, sizeof *p->free_stack);
    for (int i = 0; i < n; i++) {
        p->fds[i] = memfd_holding(FRAME_SIZE, 0);
        if (p->fds[i] >= MAX_FD) {
            fprintf(stderr, "fd %d too large for the test\n", p->fds[i]);
            exit(2);
        }
        p->index_of_fd[p->fds[i]] = i;
        p->free_stack[p->n_free++] = i;
    }
    return p;
}

static void pool_free(struct pool *p) {
    for (int i = 0; i < p->n; i++)
        close(p->fds[i]);
    free(p->fds);
    free(p->free_stack);
    free(p);
}

/* Takes one event; a return makes its memfds free again. Returns the buffers freed, or
 * -1 when the call failed. */
static int take_event(qsock_sender *tx, struct pool *p, int timeout_ms) {
    qsock_sender_event event;
    qsock_status s = qsock_sender_next_event(tx, timeout_ms, &event);
    CHECK(s == QSOCK_OK && event.type_ == QSOCK_EVENT_RETURN, "next_event: %s", qsock_status_name(s));
    if (s != QSOCK_OK || event.type_ != QSOCK_EVENT_RETURN)
        return -1;
    for (size_t i = 0; i < event.n_buf_ids; i++) {
        int fd = event.buf_ids[i];
        CHECK(fd >= 0 && fd < MAX_FD && p->fds[p->index_of_fd[fd]] == fd, "a return of buf_id %d, not ours", fd);
        if (fd >= 0 && fd < MAX_FD)
            p->free_stack[p->n_free++] = p->index_of_fd[fd];
    }
    return (int)event.n_buf_ids;
}

/* Sends frame `n` in a free memfd of the pool (taking events first while none is
 * free, if `read_when_empty`): the memfd holds n, and pts is n. */
static int send_frame(qsock_sender *tx, struct pool *p, int n, double *max_send_ms) {
    while (p->n_free == 0) {
        if (take_event(tx, p, 10000) < 0)
            return -1;
    }
    int fd = p->fds[p->free_stack[--p->n_free]];
    uint64_t value = n;
    if (pwrite(fd, &value, sizeof value, 0) != sizeof value)
        return -1;
    qsock_send_block block = {.fd = fd, .size = FRAME_SIZE, .maxsize = FRAME_SIZE, .video = nv12_64x48()};
    qsock_send_buffer buffer = {.kind = QSOCK_KIND_VIDEO, .n_blocks = 1, .blocks = &block, .pts = n,
                                .dts = QSOCK_CLOCK_TIME_NONE, .duration = 1000, .pooled = true};
    double start = now_ms();
    qsock_status s = qsock_sender_send(tx, &buffer);
    double took = now_ms() - start;
    if (took > *max_send_ms)
        *max_send_ms = took;
    CHECK(s == QSOCK_OK, "sending frame %d: %s", n, qsock_status_name(s));
    return s == QSOCK_OK ? 0 : -1;
}

/* Sends EOS, then takes events until every buffer is back. */
static void finish_sending(qsock_sender *tx, struct pool *p) {
    CHECK_STATUS(qsock_sender_send_eos(tx), QSOCK_OK, NULL);
    /* Not qsock_sender_in_flight(): returns a send read count as back before they are
     * taken here. */
    while (p->n_free < p->n) {
        if (take_event(tx, p, 10000) < 0)
            break;
    }
    CHECK(qsock_sender_in_flight(tx) == 0 && p->n_free == p->n, "%zu still in flight, %d of %d free",
          qsock_sender_in_flight(tx), p->n_free, p->n);
}

/* Receives one frame: the memory holds the number the sender wrote (= pts), the one
 * expected. Releases it unless `held` is given, and times the release. */
static int receive_frame(qsock_receiver *rx, int expected, double *max_release_ms, qsock_buffer **held) {
    qsock_buffer *buf;
    qsock_status s = qsock_receiver_recv_buffer(rx, 10000, &buf);
    CHECK(s == QSOCK_OK, "receiving frame %d: %s", expected, qsock_status_name(s));
    if (s != QSOCK_OK)
        return -1;
    qsock_buffer_info info;
    qsock_block block;
    CHECK_STATUS(qsock_buffer_get_info(buf, &info), QSOCK_OK, NULL);
    CHECK_STATUS(qsock_buffer_get_block(buf, 0, &block), QSOCK_OK, NULL);
    uint64_t value = value_in(block.fd);
    CHECK(info.pts == (uint64_t)expected && value == (uint64_t)expected, "frame %d: pts %llu, memory holds %llu",
          expected, (unsigned long long)info.pts, (unsigned long long)value);
    if (held) {
        *held = buf;
        return 0;
    }
    double start = now_ms();
    qsock_receiver_release(buf);
    double took = now_ms() - start;
    if (took > *max_release_ms)
        *max_release_ms = took;
    return 0;
}

/* The receiving process: every frame, released at once, then EOS. It lives on until
 * the sender has every buffer back (a byte on `all_back`): returns still queued when a
 * process exits are lost with its socket (the sender then sees it gone, which gives it
 * every buffer back as well, but this test wants to see each return arrive). */
static int receive_all(const char *path, int total, int all_back) {
    failures = 0; /* the parent's are not ours */
    qsock_receiver *rx;
    if (qsock_receiver_open(path, &rx) != QSOCK_OK) {
        fprintf(stderr, "%s\n", qsock_last_error());
        return 2;
    }
    double max_release_ms = 0;
    int n = 0;
    while (n < total && receive_frame(rx, n, &max_release_ms, NULL) == 0)
        n++;
    qsock_buffer *buf;
    CHECK_STATUS(qsock_receiver_recv_buffer(rx, 10000, &buf), QSOCK_EOS, NULL);
    CHECK(n == total, "%d of %d frames", n, total);
    CHECK(max_release_ms < RELEASE_LIMIT_MS, "a release took %.1f ms", max_release_ms);
    char byte;
    CHECK(read(all_back, &byte, 1) == 1, "the sender never had every buffer back");
    qsock_receiver_close(rx);
    return failures ? 1 : 0;
}

/* A sender with `pool_size` buffers and a receiver in two processes; `total` frames. */
static int two_processes(int pool_size, int total) {
    int before = failures;
    char path[128];
    snprintf(path, sizeof path, "%s/two-%d-%d.sock", socket_dir, pool_size, total);
    int all_back[2];
    if (pipe(all_back) != 0)
        return 1;
    pid_t child = fork();
    if (child == 0) {
        close(all_back[1]);
        _exit(receive_all(path, total, all_back[0]));
    }
    close(all_back[0]);
    qsock_sender *tx = connect_retrying(path);
    CHECK(tx != NULL, "could not connect");
    double max_send_ms = 0;
    if (tx) {
        struct pool *p = pool_new(pool_size);
        for (int n = 0; n < total; n++) {
            if (send_frame(tx, p, n, &max_send_ms) != 0)
                break;
        }
        finish_sending(tx, p);
        qsock_sender_close(tx);
        pool_free(p);
    }
    CHECK(write(all_back[1], "x", 1) == 1, "telling the receiver");
    close(all_back[1]);
    int code = wait_child(child);
    CHECK(code == 0, "the receiving process failed (%d)", code);
    printf("%s - two processes: pool of %d, %d frames, events read only when the pool is empty "
           "(longest send %.1f ms)\n",
           failures > before ? "not ok" : "ok", pool_size, total, max_send_ms);
    return failures > before;
}

/* The receiver holds the whole pool, releases it at once, then calls nothing until the
 * sender has every buffer back (told through a pipe): the queued returns go out alone. */
static int release_all_then_idle(int pool_size) {
    int before = failures;
    char path[128];
    snprintf(path, sizeof path, "%s/hold-%d.sock", socket_dir, pool_size);
    int all_back[2];
    if (pipe(all_back) != 0)
        return 1;
    pid_t child = fork();
    if (child == 0) {
        failures = 0; /* the parent's are not ours */
        close(all_back[1]);
        qsock_receiver *rx;
        if (qsock_receiver_open(path, &rx) != QSOCK_OK)
            _exit(2);
        qsock_buffer **held = calloc(pool_size, sizeof *held);
        double max_release_ms = 0;
        int n = 0;
        while (n < pool_size && receive_frame(rx, n, NULL, &held[n]) == 0)
            n++;
        for (int i = 0; i < n; i++) {
            double start = now_ms();
            qsock_receiver_release(held[i]);
            double took = now_ms() - start;
            if (took > max_release_ms)
                max_release_ms = took;
        }
        CHECK(max_release_ms < RELEASE_LIMIT_MS, "a release took %.1f ms", max_release_ms);
        char byte;
        CHECK(read(all_back[0], &byte, 1) == 1, "the sender never had every buffer back");
        qsock_buffer *buf;
        CHECK_STATUS(qsock_receiver_recv_buffer(rx, 10000, &buf), QSOCK_EOS, NULL);
        qsock_receiver_close(rx);
        free(held);
        _exit(failures ? 1 : 0);
    }
    close(all_back[0]);
    qsock_sender *tx = connect_retrying(path);
    CHECK(tx != NULL, "could not connect");
    if (tx) {
        struct pool *p = pool_new(pool_size);
        double max_send_ms = 0;
        for (int n = 0; n < pool_size; n++)
            send_frame(tx, p, n, &max_send_ms);
        while (p->n_free < p->n && take_event(tx, p, 10000) >= 0) {}
        CHECK(p->n_free == p->n, "%d of %d back", p->n_free, p->n);
        CHECK(write(all_back[1], "x", 1) == 1, "telling the receiver");
        CHECK_STATUS(qsock_sender_send_eos(tx), QSOCK_OK, NULL);
        qsock_sender_close(tx);
        pool_free(p);
    }
    close(all_back[1]);
    int code = wait_child(child);
    CHECK(code == 0, "the receiving process failed (%d)", code);
    printf("%s - two processes: the receiver holds %d buffers, releases them at once and calls nothing "
           "more until all are back\n",
           failures > before ? "not ok" : "ok", pool_size);
    return failures > before;
}

/* Sender and receiver in one thread of one process: send, receive, release, ...; the
 * sender reads its events only when its pool is empty. */
static int one_thread(int pool_size, int total) {
    int before = failures;
    char path[128];
    snprintf(path, sizeof path, "%s/one-%d-%d.sock", socket_dir, pool_size, total);
    qsock_receiver *rx = NULL;
    qsock_sender *tx = NULL;
    CHECK_STATUS(qsock_receiver_open(path, &rx), QSOCK_OK, NULL);
    if (rx)
        CHECK_STATUS(qsock_sender_connect(path, &tx), QSOCK_OK, NULL);
    if (rx && tx) {
        struct pool *p = pool_new(pool_size);
        double max_send_ms = 0, max_release_ms = 0;
        int n = 0;
        for (; n < total; n++) {
            if (send_frame(tx, p, n, &max_send_ms) != 0 || receive_frame(rx, n, &max_release_ms, NULL) != 0)
                break;
        }
        CHECK(n == total, "%d of %d frames", n, total);
        CHECK_STATUS(qsock_sender_send_eos(tx), QSOCK_OK, NULL);
        qsock_buffer *buf;
        CHECK_STATUS(qsock_receiver_recv_buffer(rx, 10000, &buf), QSOCK_EOS, NULL);
        while (p->n_free < p->n && take_event(tx, p, 10000) >= 0) {}
        CHECK(p->n_free == p->n, "%d of %d back", p->n_free, p->n);
        CHECK(max_release_ms < RELEASE_LIMIT_MS, "a release took %.1f ms", max_release_ms);
        pool_free(p);
    }
    qsock_sender_close(tx);
    qsock_receiver_close(rx);
    printf("%s - one thread: pool of %d, %d frames, send / receive / release in turn\n",
           failures > before ? "not ok" : "ok", pool_size, total);
    return failures > before;
}

int main(void) {
    snprintf(socket_dir, sizeof socket_dir, "/tmp/qsock-backpressure-XXXXXX");
    if (!mkdtemp(socket_dir))
        return 2;
    raise_fd_limit();
    start_load(2);
    int failed = 0, run = 0;
    failed += two_processes(300, 3000), run++;
    failed += two_processes(1000, 1000), run++; /* never reads an event until all are sent */
    failed += two_processes(1000, 3000), run++;
    failed += release_all_then_idle(300), run++;
    failed += one_thread(300, 3000), run++;
    failed += one_thread(1000, 3000), run++;
    stop_load();
    rmdir(socket_dir);
    printf("%d passed, %d failed\n", run - failed, failed);
    return failed ? 1 : 0;
}
