/*
 * The sender of python/bench/bench.py: FRAMES NV12 frames of WIDTH x HEIGHT from a pool
 * of IN_FLIGHT memfds (pooled: each fd crosses the socket once), each stamped with
 * CLOCK_MONOTONIC in its first 8 bytes just before it is sent, the next one sent as soon
 * as a memfd comes back. Nothing else is written: the receivers, not the sender, are
 * what is measured. Then EOS.
 *
 * usage: c_sender SOCKET FRAMES WIDTH HEIGHT IN_FLIGHT
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <qsock.h>

static uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

static void die(const char *what, qsock_status status) {
    fprintf(stderr, "c_sender: %s: %s: %s\n", what, qsock_status_name(status), qsock_last_error());
    exit(1);
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: %s SOCKET FRAMES WIDTH HEIGHT IN_FLIGHT\n", argv[0]);
        return 2;
    }
    size_t frames = (size_t)atol(argv[2]);
    uint32_t width = (uint32_t)atoi(argv[3]), height = (uint32_t)atoi(argv[4]);
    size_t pool = (size_t)atoi(argv[5]);
    size_t size = (size_t)width * height * 3 / 2;
    int *fds = calloc(pool, sizeof *fds);
    uint8_t **memory = calloc(pool, sizeof *memory);
    int *free_slot = calloc(pool, sizeof *free_slot);
    for (size_t i = 0; i < pool; i++) {
        fds[i] = memfd_create("qsock-bench", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        if (fds[i] < 0 || ftruncate(fds[i], (off_t)size) != 0) {
            perror("memfd");
            return 1;
        }
        memory[i] = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fds[i], 0);
        memset(memory[i], 128, size);
        free_slot[i] = 1;
    }
    qsock_sender *tx;
    qsock_status status;
    uint64_t give_up = now_ns() + 30000000000ull;
    while ((status = qsock_sender_connect(argv[1], &tx)) != QSOCK_OK) {
        if (now_ns() > give_up)
            die("qsock_sender_connect", status);
        usleep(10000);
    }
    qsock_send_block block = {.size = size, .maxsize = size};
    block.video = (qsock_video_info){.format = 23, .width = width, .height = height, .n_planes = 2};
    block.video.offsets[1] = (uint64_t)width * height;
    block.video.strides[0] = block.video.strides[1] = (int32_t)width;
    qsock_send_buffer buffer = {.kind = QSOCK_KIND_VIDEO, .n_blocks = 1, .blocks = &block,
                                .dts = QSOCK_CLOCK_TIME_NONE, .duration = QSOCK_CLOCK_TIME_NONE, .pooled = true};
    size_t sent = 0;
    qsock_sender_event event;
    while (sent < frames || qsock_sender_in_flight(tx) > 0) {
        size_t slot = pool;
        for (size_t i = 0; i < pool && sent < frames; i++)
            if (free_slot[i]) {
                slot = i;
                break;
            }
        if (slot < pool) {
            block.fd = fds[slot];
            buffer.pts = sent;
            uint64_t stamp = now_ns();
            memcpy(memory[slot], &stamp, sizeof stamp);
            if ((status = qsock_sender_send(tx, &buffer)) != QSOCK_OK)
                die("qsock_sender_send", status);
            free_slot[slot] = 0;
            sent++;
            continue;
        }
        if ((status = qsock_sender_next_event(tx, 30000, &event)) != QSOCK_OK)
            die("qsock_sender_next_event", status);
        for (size_t i = 0; i < event.n_buf_ids; i++)
            for (size_t j = 0; j < pool; j++)
                if (fds[j] == event.buf_ids[i])
                    free_slot[j] = 1;
    }
    qsock_sender_send_eos(tx);
    qsock_sender_close(tx);
    return 0;
}
