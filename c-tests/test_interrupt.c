/*
 * Waking a wait for ever: qsock_receiver_recv_buffer(-1) and qsock_sender_next_event(-1)
 * in one thread, qsock_receiver_interrupt / qsock_sender_interrupt from another: the wait
 * returns QSOCK_INTERRUPTED within 100 ms. A signal alone does not end a wait (a timed one
 * still lasts its time); the interrupt called from the signal handler does. An interrupt
 * with nobody waiting ends the next wait at once, once; a buffer or event ready comes
 * before it.
 *
 * usage: test_interrupt
 */
#include "qsock_test.h"

#include <pthread.h>
#include <stdatomic.h>

static qsock_receiver *rx;
static qsock_sender *tx;

/* One wait in a thread of its own: which call, how it ended, and when. */
struct waiter {
    bool sender; /* qsock_sender_next_event, else qsock_receiver_recv_buffer */
    int timeout_ms;
    pthread_t thread;
    atomic_bool done;
    qsock_status status;
    double ended_ms;
};

static void *wait_in_thread(void *arg) {
    struct waiter *w = arg;
    if (w->sender) {
        qsock_sender_event event;
        w->status = qsock_sender_next_event(tx, w->timeout_ms, &event);
    } else {
        qsock_buffer *buf = NULL;
        w->status = qsock_receiver_recv_buffer(rx, w->timeout_ms, &buf);
        qsock_receiver_release(buf);
    }
    w->ended_ms = now_ms();
    atomic_store(&w->done, true);
    return NULL;
}

static void start_waiting(struct waiter *w, bool sender, int timeout_ms) {
    *w = (struct waiter){.sender = sender, .timeout_ms = timeout_ms};
    pthread_create(&w->thread, NULL, wait_in_thread, w);
    sleep_ms(200); /* well inside the wait */
}

static const char *what(const struct waiter *w) {
    return w->sender ? "qsock_sender_next_event" : "qsock_receiver_recv_buffer";
}

/* Interrupts `w`'s wait; it must end with QSOCK_INTERRUPTED within 100 ms. */
static void interrupt_and_check(struct waiter *w) {
    CHECK(!atomic_load(&w->done), "%s ended before the interrupt: %s", what(w), qsock_status_name(w->status));
    double asked = now_ms();
    qsock_status s = w->sender ? qsock_sender_interrupt(tx) : qsock_receiver_interrupt(rx);
    CHECK(s == QSOCK_OK, "interrupt: %s", qsock_status_name(s));
    pthread_join(w->thread, NULL);
    CHECK(w->status == QSOCK_INTERRUPTED, "%s ended with %s", what(w), qsock_status_name(w->status));
    CHECK(w->ended_ms - asked < 100, "%s returned %.1f ms after the interrupt", what(w), w->ended_ms - asked);
}

static int from_another_thread(void) {
    int before = failures;
    struct waiter w;
    for (int sender = 0; sender <= 1; sender++) {
        start_waiting(&w, sender, -1);
        interrupt_and_check(&w);
    }
    printf("%s - recv_buffer(-1) and next_event(-1) interrupted from another thread return QSOCK_INTERRUPTED "
           "within 100 ms\n",
           failures > before ? "not ok" : "ok");
    return failures > before;
}

/* SIGUSR1's handler: interrupts the receiver's (1) or the sender's (2) wait when asked
 * to, else does nothing. */
static atomic_int interrupt_in_handler;
static void on_sigusr1(int signal) {
    (void)signal;
    switch (atomic_load(&interrupt_in_handler)) {
    case 1:
        qsock_receiver_interrupt(rx);
        break;
    case 2:
        qsock_sender_interrupt(tx);
        break;
    }
}

static int signals(void) {
    int before = failures;
    struct sigaction action = {.sa_handler = on_sigusr1}; /* no SA_RESTART */
    sigemptyset(&action.sa_mask);
    sigaction(SIGUSR1, &action, NULL);
    struct waiter w;
    for (int sender = 0; sender <= 1; sender++) {
        /* A signal alone: the wait goes on. */
        atomic_store(&interrupt_in_handler, 0);
        start_waiting(&w, sender, -1);
        pthread_kill(w.thread, SIGUSR1);
        sleep_ms(200);
        CHECK(!atomic_load(&w.done), "%s ended on a signal: %s", what(&w), qsock_status_name(w.status));
        /* The interrupt from the handler ends it. */
        atomic_store(&interrupt_in_handler, sender ? 2 : 1);
        double asked = now_ms();
        pthread_kill(w.thread, SIGUSR1);
        pthread_join(w.thread, NULL);
        CHECK(w.status == QSOCK_INTERRUPTED && w.ended_ms - asked < 100, "%s: %s after %.1f ms", what(&w),
              qsock_status_name(w.status), w.ended_ms - asked);
        /* A timed wait lasts its time, signal or not. */
        atomic_store(&interrupt_in_handler, 0);
        double started = now_ms();
        start_waiting(&w, sender, 600);
        pthread_kill(w.thread, SIGUSR1);
        pthread_join(w.thread, NULL);
        CHECK(w.status == QSOCK_TIMEOUT && w.ended_ms - started >= 590, "%s(600 ms): %s after %.1f ms", what(&w),
              qsock_status_name(w.status), w.ended_ms - started);
    }
    signal(SIGUSR1, SIG_DFL);
    printf("%s - a signal does not end a wait (a timed one lasts its time); the interrupt called in the handler "
           "does\n",
           failures > before ? "not ok" : "ok");
    return failures > before;
}

static int nobody_waiting(void) {
    int before = failures;
    qsock_buffer *buf = NULL;
    qsock_sender_event event;
    /* Several interrupts before a wait: the next wait ends at once, once. */
    CHECK_STATUS(qsock_receiver_interrupt(rx), QSOCK_OK, NULL);
    CHECK_STATUS(qsock_receiver_interrupt(rx), QSOCK_OK, NULL);
    CHECK_STATUS(qsock_receiver_recv_buffer(rx, -1, &buf), QSOCK_INTERRUPTED, "interrupted");
    CHECK_STATUS(qsock_receiver_recv_buffer(rx, 0, &buf), QSOCK_TIMEOUT, NULL);
    CHECK_STATUS(qsock_sender_interrupt(tx), QSOCK_OK, NULL);
    CHECK_STATUS(qsock_sender_interrupt(tx), QSOCK_OK, NULL);
    CHECK_STATUS(qsock_sender_next_event(tx, -1, &event), QSOCK_INTERRUPTED, "interrupted");
    CHECK_STATUS(qsock_sender_next_event(tx, 0, &event), QSOCK_TIMEOUT, NULL);
    /* What is ready comes first. */
    int fd = memfd_holding(FRAME_SIZE, 5);
    qsock_send_block block = {.fd = fd, .size = FRAME_SIZE, .maxsize = FRAME_SIZE, .video = nv12_64x48()};
    qsock_send_buffer buffer = {.kind = QSOCK_KIND_VIDEO, .n_blocks = 1, .blocks = &block,
                                .dts = QSOCK_CLOCK_TIME_NONE};
    CHECK_STATUS(qsock_sender_send(tx, &buffer), QSOCK_OK, NULL);
    CHECK_STATUS(qsock_receiver_interrupt(rx), QSOCK_OK, NULL);
    CHECK_STATUS(qsock_receiver_recv_buffer(rx, -1, &buf), QSOCK_OK, NULL);
    qsock_receiver_release(buf);
    CHECK_STATUS(qsock_receiver_recv_buffer(rx, -1, &buf), QSOCK_INTERRUPTED, NULL);
    sleep_ms(50); /* the return is on its way */
    CHECK_STATUS(qsock_sender_interrupt(tx), QSOCK_OK, NULL);
    CHECK_STATUS(qsock_sender_next_event(tx, -1, &event), QSOCK_OK, NULL);
    CHECK(event.type_ == QSOCK_EVENT_RETURN && event.buf_ids[0] == fd, "the return of %d", fd);
    CHECK_STATUS(qsock_sender_next_event(tx, -1, &event), QSOCK_INTERRUPTED, NULL);
    close(fd);
    CHECK_STATUS(qsock_receiver_interrupt(NULL), QSOCK_INVALID_ARGUMENT, "receiver is NULL");
    CHECK_STATUS(qsock_sender_interrupt(NULL), QSOCK_INVALID_ARGUMENT, "sender is NULL");
    printf("%s - an interrupt with nobody waiting ends the next wait, once; a ready buffer or event comes "
           "first\n",
           failures > before ? "not ok" : "ok");
    return failures > before;
}

int main(void) {
    char dir[] = "/tmp/qsock-interrupt-XXXXXX";
    char path[64];
    open_pair(dir, path, sizeof path, &rx, &tx);
    /* The receiver accepts its sender first, so that each wait below waits for data. */
    qsock_buffer *buf;
    CHECK_STATUS(qsock_receiver_recv_buffer(rx, 0, &buf), QSOCK_TIMEOUT, NULL);
    int failed = 0, run = 0;
    failed += from_another_thread(), run++;
    failed += signals(), run++;
    failed += nobody_waiting(), run++;
    qsock_sender_close(tx);
    qsock_receiver_close(rx);
    rmdir(dir);
    printf("%d passed, %d failed\n", run - failed, failed);
    return failed ? 1 : 0;
}
