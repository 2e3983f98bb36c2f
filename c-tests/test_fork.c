/*
 * fork() with a receiver, a sender and a received buffer open: the child's copies are
 * inert. Every call on them but close and release is refused; releasing the inherited
 * buffer and closing the inherited receiver and sender release the child's fds only. The
 * parent then finds its socket file in place, its connection working both ways, no
 * DISCONNECT and no return it did not cause, and its own release returns the buffer,
 * once. Then a child that closes its copies while the parent's thread waits in
 * qsock_receiver_recv_buffer: that wait goes on and gets the next buffer.
 *
 * usage: test_fork
 */
#include "qsock_test.h"

#include <pthread.h>
#include <stdatomic.h>

static qsock_receiver *rx;
static qsock_sender *tx;

static void send_frame(int fd, uint64_t n) {
    uint64_t value = n;
    CHECK(pwrite(fd, &value, sizeof value, 0) == sizeof value, "pwrite");
    qsock_send_block block = {.fd = fd, .size = FRAME_SIZE, .maxsize = FRAME_SIZE, .video = nv12_64x48()};
    qsock_send_buffer buffer = {.kind = QSOCK_KIND_VIDEO, .n_blocks = 1, .blocks = &block, .pts = n,
                                .dts = QSOCK_CLOCK_TIME_NONE, .pooled = true};
    CHECK_STATUS(qsock_sender_send(tx, &buffer), QSOCK_OK, NULL);
}

static qsock_buffer *receive_frame(uint64_t n) {
    qsock_buffer *buf = NULL;
    CHECK_STATUS(qsock_receiver_recv_buffer(rx, 5000, &buf), QSOCK_OK, NULL);
    if (buf) {
        qsock_block block;
        qsock_buffer_get_block(buf, 0, &block);
        CHECK(value_in(block.fd) == n, "frame %llu holds %llu", (unsigned long long)n,
              (unsigned long long)value_in(block.fd));
    }
    return buf;
}

/* The next event is the return of `fd`, and then nothing more within 300 ms. */
static void expect_only_return_of(int fd) {
    qsock_sender_event event = {0};
    CHECK_STATUS(qsock_sender_next_event(tx, 5000, &event), QSOCK_OK, NULL);
    CHECK(event.type_ == QSOCK_EVENT_RETURN && event.n_buf_ids == 1 && event.buf_ids[0] == fd,
          "event %d with %zu ids, first %d; expected the return of %d", event.type_, event.n_buf_ids,
          event.buf_ids[0], fd);
    CHECK_STATUS(qsock_sender_next_event(tx, 300, &event), QSOCK_TIMEOUT, NULL);
}

/* In the child: every call but close and release refused, then both closed. */
static int child_closes_its_copies(qsock_buffer *inherited) {
    qsock_buffer *buf = (qsock_buffer *)0x1;
    CHECK_STATUS(qsock_receiver_recv_buffer(rx, 0, &buf), QSOCK_INVALID_ARGUMENT, "forked child");
    CHECK(buf == NULL, "*buffer_out not NULL");
    CHECK_STATUS(qsock_receiver_send_disconnect(rx), QSOCK_INVALID_ARGUMENT, "forked child");
    CHECK_STATUS(qsock_receiver_interrupt(rx), QSOCK_INVALID_ARGUMENT, "forked child");
    qsock_receiver_stats stats;
    CHECK_STATUS(qsock_receiver_get_stats(rx, &stats), QSOCK_INVALID_ARGUMENT, "forked child");
    CHECK(qsock_receiver_get_fd(rx) == -1, "get_fd in the child");
    qsock_sender_event event;
    CHECK_STATUS(qsock_sender_next_event(tx, 0, &event), QSOCK_INVALID_ARGUMENT, "forked child");
    CHECK_STATUS(qsock_sender_send_eos(tx), QSOCK_INVALID_ARGUMENT, "forked child");
    CHECK_STATUS(qsock_sender_interrupt(tx), QSOCK_INVALID_ARGUMENT, "forked child");
    qsock_receiver_release(inherited);
    qsock_receiver_close(rx);
    qsock_sender_close(tx);
    return failures ? 1 : 0;
}

struct waiting {
    atomic_bool done;
    qsock_status status;
    qsock_buffer *buf;
};

static void *wait_for_buffer(void *arg) {
    struct waiting *w = arg;
    w->status = qsock_receiver_recv_buffer(rx, 10000, &w->buf);
    atomic_store(&w->done, true);
    return NULL;
}

int main(void) {
    char dir[] = "/tmp/qsock-fork-XXXXXX";
    char path[64];
    open_pair(dir, path, sizeof path, &rx, &tx);
    int a = memfd_holding(FRAME_SIZE, 0), b = memfd_holding(FRAME_SIZE, 0);
    int failed = 0;

    /* 1. A child closes its copies of everything, a buffer held meanwhile. */
    int before = failures;
    send_frame(a, 1);
    qsock_buffer *held = receive_frame(1);
    pid_t child = fork();
    if (child == 0)
        _exit(child_closes_its_copies(held));
    CHECK(wait_child(child) == 0, "the child failed");
    CHECK(access(path, F_OK) == 0, "the child's close removed the socket file");
    qsock_sender_event event;
    CHECK_STATUS(qsock_sender_next_event(tx, 300, &event), QSOCK_TIMEOUT, NULL); /* no return, no DISCONNECT */
    qsock_receiver_release(held);
    expect_only_return_of(a);
    send_frame(b, 2);
    qsock_receiver_release(receive_frame(2));
    expect_only_return_of(b);
    qsock_receiver_stats stats;
    CHECK_STATUS(qsock_receiver_get_stats(rx, &stats), QSOCK_OK, NULL);
    CHECK(stats.connected && stats.senders_accepted == 1 && stats.returns_sent == 2,
          "connected %d, %llu senders, %llu returns", stats.connected, (unsigned long long)stats.senders_accepted,
          (unsigned long long)stats.returns_sent);
    printf("%s - a forked child's close and release leave the parent's socket file, connection and buffer "
           "alone; only close and release work in the child\n",
           failures > before ? "not ok" : "ok");
    failed += failures > before;

    /* 2. A child closes its copies while a parent's thread waits for a buffer. */
    before = failures;
    struct waiting w = {0};
    pthread_t thread;
    pthread_create(&thread, NULL, wait_for_buffer, &w);
    sleep_ms(100);
    child = fork();
    if (child == 0) {
        /* The waiting thread's lock is not ours to wait for: close releases fds only. */
        qsock_receiver_close(rx);
        qsock_sender_close(tx);
        _exit(0);
    }
    CHECK(wait_child(child) == 0, "the child failed");
    sleep_ms(100);
    CHECK(!atomic_load(&w.done), "the parent's wait ended when the child closed its copy: %s",
          qsock_status_name(w.status));
    send_frame(a, 3);
    pthread_join(thread, NULL);
    CHECK(w.status == QSOCK_OK, "the parent's wait ended with %s", qsock_status_name(w.status));
    if (w.buf) {
        qsock_block block;
        qsock_buffer_get_block(w.buf, 0, &block);
        CHECK(value_in(block.fd) == 3, "frame 3 holds %llu", (unsigned long long)value_in(block.fd));
        qsock_receiver_release(w.buf);
    }
    expect_only_return_of(a);
    CHECK(access(path, F_OK) == 0, "the socket file is gone");
    printf("%s - a child that closes its copies while a parent's thread waits: the wait goes on and gets the "
           "next buffer\n",
           failures > before ? "not ok" : "ok");
    failed += failures > before;

    CHECK_STATUS(qsock_sender_send_eos(tx), QSOCK_OK, NULL);
    qsock_sender_close(tx);
    qsock_receiver_close(rx);
    CHECK(access(path, F_OK) != 0, "the parent's close left the socket file");
    close(a);
    close(b);
    rmdir(dir);
    printf("%d passed, %d failed\n", 2 - failed, failed);
    return failed ? 1 : 0;
}
