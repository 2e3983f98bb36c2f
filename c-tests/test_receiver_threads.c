/*
 * One receiver, two threads, as the header allows: one thread waits in
 * qsock_receiver_recv_buffer while the other reads qsock_receiver_get_stats and
 * qsock_receiver_get_fd and calls qsock_receiver_send_disconnect. Those calls must not
 * wait for the receiving thread: they return while it is still blocked. Then the same
 * during a stream from a real sender (qsock-replay): the counters another thread reads
 * only grow and end where the receiving thread says. qsock_last_error() is per thread.
 *
 * usage: test_receiver_threads <path-to-qsock-replay> <captures-dir>
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <spawn.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <qsock.h>

extern char **environ;

static int failures;

#define CHECK(cond, ...)                                                                   \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);                \
            fprintf(stderr, __VA_ARGS__);                                                  \
            fprintf(stderr, " (last error: %s)\n", qsock_last_error());                    \
            failures++;                                                                    \
        }                                                                                  \
    } while (0)

static void sleep_ms(long ms) {
    struct timespec t = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000};
    while (nanosleep(&t, &t) != 0 && errno == EINTR) {}
}

/* What the receiving thread does and saw. */
struct receiving {
    qsock_receiver *rx;
    int timeout_ms;
    atomic_bool started;
    atomic_bool done;
    qsock_status last_status;
    int buffers;
    char last_error[256];
};

/* Receives until a status other than QSOCK_OK, releasing every buffer. */
static void *receive(void *arg) {
    struct receiving *r = arg;
    atomic_store(&r->started, true);
    qsock_buffer *buf;
    while ((r->last_status = qsock_receiver_recv_buffer(r->rx, r->timeout_ms, &buf)) == QSOCK_OK) {
        r->buffers++;
        qsock_receiver_release(buf);
    }
    snprintf(r->last_error, sizeof r->last_error, "%s", qsock_last_error());
    atomic_store(&r->done, true);
    return NULL;
}

/* While the other thread waits in recv_buffer (2 s, no sender), this one's calls return
 * at once: each is checked to have returned before the wait ended. */
static void check_calls_beside_a_blocked_recv(const char *socket_path) {
    int before = failures;
    struct receiving r = {.timeout_ms = 2000};
    if (qsock_receiver_open(socket_path, &r.rx) != QSOCK_OK) {
        CHECK(0, "open %s", socket_path);
        return;
    }
    int fd = qsock_receiver_get_fd(r.rx);
    pthread_t thread;
    pthread_create(&thread, NULL, receive, &r);
    while (!atomic_load(&r.started))
        sleep_ms(1);
    sleep_ms(100); /* well inside its 2 s wait by now */

    qsock_receiver_stats stats;
    CHECK(qsock_receiver_get_stats(r.rx, &stats) == QSOCK_OK && stats.buffers == 0 && !stats.connected &&
              stats.peer_pid == -1,
          "stats beside a blocked recv");
    CHECK(!atomic_load(&r.done), "qsock_receiver_get_stats waited for the receiving thread");
    CHECK(qsock_receiver_get_fd(r.rx) == fd, "get_fd beside a blocked recv");
    CHECK(qsock_receiver_send_disconnect(r.rx) == QSOCK_SENDER_GONE && strstr(qsock_last_error(), "DISCONNECT"),
          "send_disconnect beside a blocked recv, no sender connected");
    CHECK(!atomic_load(&r.done), "get_fd or send_disconnect waited for the receiving thread");

    pthread_join(thread, NULL);
    CHECK(r.last_status == QSOCK_TIMEOUT && strstr(r.last_error, "within 2000 ms"), "the receiving thread got %s: %s",
          qsock_status_name(r.last_status), r.last_error);
    /* Each thread has its own last error. */
    CHECK(strstr(qsock_last_error(), "DISCONNECT") != NULL, "this thread's last error changed");
    qsock_receiver_close(r.rx);
    printf("%s - get_stats, get_fd and send_disconnect return while another thread waits in recv_buffer\n",
           failures > before ? "not ok" : "ok");
}

/* A real sender streams 8 buffers; this thread reads the counters all along. */
static void check_stats_during_a_stream(const char *socket_path, const char *replay, const char *captures) {
    int before = failures;
    struct receiving r = {.timeout_ms = 10000};
    if (qsock_receiver_open(socket_path, &r.rx) != QSOCK_OK) {
        CHECK(0, "open %s", socket_path);
        return;
    }
    pthread_t thread;
    pthread_create(&thread, NULL, receive, &r);
    char capture[512];
    snprintf(capture, sizeof capture, "%s/video-pool.jsonl", captures);
    char *argv[] = {(char *)replay, (char *)socket_path, capture, "--quiet", NULL};
    pid_t sender;
    if (posix_spawn(&sender, replay, NULL, NULL, argv, environ) != 0) {
        fprintf(stderr, "cannot start %s\n", replay);
        exit(2);
    }
    uint64_t reads = 0, last_buffers = 0, last_returns = 0;
    while (!atomic_load(&r.done)) {
        qsock_receiver_stats stats;
        CHECK(qsock_receiver_get_stats(r.rx, &stats) == QSOCK_OK, "stats during the stream");
        CHECK(stats.buffers >= last_buffers && stats.returns_sent >= last_returns && stats.buffers <= 8,
              "counters went from %llu buffers, %llu returns to %llu, %llu", (unsigned long long)last_buffers,
              (unsigned long long)last_returns, (unsigned long long)stats.buffers,
              (unsigned long long)stats.returns_sent);
        last_buffers = stats.buffers;
        last_returns = stats.returns_sent;
        reads++;
        sleep_ms(1);
    }
    pthread_join(thread, NULL);
    int status;
    while (waitpid(sender, &status, 0) < 0 && errno == EINTR) {}
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the sender did not get every buffer back");
    CHECK(r.last_status == QSOCK_EOS && r.buffers == 8, "%s after %d buffers", qsock_status_name(r.last_status),
          r.buffers);
    qsock_receiver_stats stats;
    CHECK(qsock_receiver_get_stats(r.rx, &stats) == QSOCK_OK && stats.buffers == 8 && stats.returns_sent == 8,
          "final stats: %llu buffers, %llu returns", (unsigned long long)stats.buffers,
          (unsigned long long)stats.returns_sent);
    qsock_receiver_close(r.rx);
    printf("%s - stats read from another thread during a stream of 8 buffers (%llu reads): they only grow\n",
           failures > before ? "not ok" : "ok", (unsigned long long)reads);
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s <qsock-replay> <captures-dir>\n", argv[0]);
        return 2;
    }
    char dir[] = "/tmp/qsock-c-threads-XXXXXX";
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 2;
    }
    char blocked[64], stream[64];
    snprintf(blocked, sizeof blocked, "%s/blocked.sock", dir);
    snprintf(stream, sizeof stream, "%s/stream.sock", dir);
    check_calls_beside_a_blocked_recv(blocked);
    check_stats_during_a_stream(stream, argv[1], argv[2]);
    rmdir(dir);
    if (failures)
        fprintf(stderr, "%d checks failed\n", failures);
    return failures ? 1 : 0;
}
