/*
 * The C receiver of python/bench/bench.py: receives FRAMES buffers with the C API, maps
 * each block (once per pooled fd, as qsock.Receiver does), reads the CLOCK_MONOTONIC
 * stamp the sender wrote into the first 8 bytes, releases the buffer, and prints one
 * JSON line: buffers, seconds from the first buffer to the last, and latencies in ns.
 *
 * usage: c_receiver SOCKET FRAMES
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include <qsock.h>

#define MAX_FD 4096

static uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

static struct {
    void *address;
    size_t length;
} mapped[MAX_FD];

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s SOCKET FRAMES\n", argv[0]);
        return 2;
    }
    size_t frames = (size_t)atol(argv[2]);
    uint64_t *latency = calloc(frames, sizeof *latency);
    qsock_receiver *rx;
    qsock_status status = qsock_receiver_open(argv[1], &rx);
    if (status != QSOCK_OK) {
        fprintf(stderr, "c_receiver: %s: %s\n", qsock_status_name(status), qsock_last_error());
        return 1;
    }
    uint64_t first = 0, last = 0;
    size_t received = 0;
    uint64_t checksum = 0;
    while (received < frames) {
        qsock_buffer *buf;
        status = qsock_receiver_recv_buffer(rx, 10000, &buf);
        if (status != QSOCK_OK) {
            fprintf(stderr, "c_receiver: %s: %s\n", qsock_status_name(status), qsock_last_error());
            return 1;
        }
        qsock_block block;
        qsock_buffer_get_block(buf, 0, &block);
        if (block.fd < 0 || block.fd >= MAX_FD)
            return 1;
        if (mapped[block.fd].length < block.maxsize) {
            if (mapped[block.fd].address)
                munmap(mapped[block.fd].address, mapped[block.fd].length);
            mapped[block.fd].address = mmap(NULL, block.maxsize, PROT_READ, MAP_SHARED, block.fd, 0);
            mapped[block.fd].length = block.maxsize;
        }
        uint64_t stamp;
        memcpy(&stamp, mapped[block.fd].address, sizeof stamp);
        uint64_t now = now_ns();
        latency[received] = now - stamp;
        checksum += ((const uint8_t *)mapped[block.fd].address)[block.size - 1];
        qsock_receiver_release(buf);
        if (received == 0)
            first = now;
        last = now;
        received++;
    }
    qsock_receiver_close(rx);
    printf("{\"buffers\": %zu, \"seconds\": %.6f, \"checksum\": %llu, \"latency_ns\": [", received,
           (double)(last - first) / 1e9, (unsigned long long)checksum);
    for (size_t i = 0; i < received; i++)
        printf("%s%llu", i ? ", " : "", (unsigned long long)latency[i]);
    printf("]}\n");
    return 0;
}
