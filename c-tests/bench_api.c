/*
 * The C API's benchmark (scripts/bench runs it through benches/qsock): a qsock_receiver
 * in a child process releases every buffer at once; this process sends unpooled NV12
 * 64x48 frames (one memfd each message, as the floor does) keeping IN_FLIGHT
 * outstanding for MILLISECONDS, and prints one JSON line: messages/s and the round trip
 * (send to return) p50/p99 in µs.
 *
 * usage: bench_api_c SOCKET IN_FLIGHT MILLISECONDS
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <qsock.h>

#define FRAME_BYTES (64 * 48 * 3 / 2)

static unsigned long long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (unsigned long long)t.tv_sec * 1000000000ull + (unsigned long long)t.tv_nsec;
}

static void die(const char *what, qsock_status status) {
    fprintf(stderr, "bench_api_c: %s: %s: %s\n", what, qsock_status_name(status), qsock_last_error());
    exit(1);
}

static void receive(const char *path) {
    qsock_receiver *rx;
    qsock_status status = qsock_receiver_open(path, &rx);
    if (status != QSOCK_OK)
        die("qsock_receiver_open", status);
    qsock_buffer *buf;
    while ((status = qsock_receiver_recv_buffer(rx, -1, &buf)) == QSOCK_OK)
        qsock_receiver_release(buf);
    qsock_receiver_close(rx);
    exit(status == QSOCK_SENDER_GONE || status == QSOCK_EOS ? 0 : 1);
}

static int compare(const void *a, const void *b) {
    unsigned long long x = *(const unsigned long long *)a, y = *(const unsigned long long *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s SOCKET IN_FLIGHT MILLISECONDS\n", argv[0]);
        return 2;
    }
    const char *path = argv[1];
    size_t in_flight = (size_t)atoi(argv[2]);
    unsigned long long duration = (unsigned long long)atoll(argv[3]) * 1000000ull;
    pid_t child = fork();
    if (child == 0)
        receive(path);

    qsock_sender *tx;
    qsock_status status;
    while ((status = qsock_sender_connect(path, &tx)) != QSOCK_OK)
        usleep(2000);
    int fd = memfd_create("qsock-bench", MFD_CLOEXEC);
    if (fd < 0 || ftruncate(fd, FRAME_BYTES) != 0) {
        perror("memfd");
        return 1;
    }
    qsock_send_block block = {.fd = fd, .size = FRAME_BYTES, .maxsize = FRAME_BYTES};
    block.video = (qsock_video_info){.format = 23, .width = 64, .height = 48, .n_planes = 2};
    block.video.offsets[1] = 64 * 48;
    block.video.strides[0] = block.video.strides[1] = 64;
    qsock_send_buffer buffer = {.kind = QSOCK_KIND_VIDEO, .n_blocks = 1, .blocks = &block,
                                .pts = 0, .dts = QSOCK_CLOCK_TIME_NONE, .duration = 0, .pooled = false};

    size_t capacity = 1 << 22, n = 0;
    unsigned long long *rtts = malloc(capacity * sizeof *rtts);
    unsigned long long *sent_at = calloc(in_flight, sizeof *sent_at);
    size_t head = 0, outstanding = 0;
    qsock_sender_event event;
    unsigned long long start = now_ns();
    for (;;) {
        int sending = now_ns() - start < duration;
        if (sending && outstanding < in_flight) {
            sent_at[(head + outstanding) % in_flight] = now_ns();
            if ((status = qsock_sender_send(tx, &buffer)) != QSOCK_OK)
                die("qsock_sender_send", status);
            outstanding++;
            continue;
        }
        if (outstanding == 0)
            break;
        if ((status = qsock_sender_next_event(tx, -1, &event)) != QSOCK_OK)
            die("qsock_sender_next_event", status);
        for (size_t i = 0; i < event.n_buf_ids && outstanding > 0; i++) {
            if (n < capacity)
                rtts[n++] = now_ns() - sent_at[head];
            head = (head + 1) % in_flight;
            outstanding--;
        }
    }
    double seconds = (double)(now_ns() - start) / 1e9;
    qsock_sender_close(tx);
    close(fd);
    int child_status;
    waitpid(child, &child_status, 0);
    qsort(rtts, n, sizeof *rtts, compare);
    double p50 = n ? rtts[(size_t)((n - 1) * 0.50 + 0.5)] / 1000.0 : 0;
    double p99 = n ? rtts[(size_t)((n - 1) * 0.99 + 0.5)] / 1000.0 : 0;
    printf("{\"who\":\"ours, C API\",\"in_flight\":%zu,\"messages\":%zu,\"per_second\":%.1f,\"p50_us\":%.2f,\"p99_us\":%.2f}\n",
           in_flight, n, n / seconds, p50, p99);
    free(rtts);
    free(sent_at);
    return WIFEXITED(child_status) && WEXITSTATUS(child_status) == 0 ? 0 : 1;
}
