/*
 * qsock_dump: a receiver that prints every buffer that arrives, a small example of the
 * C API. It waits for a sender on SOCKET, prints each buffer's description and the first
 * 8 bytes of its memory (mapped from the received fd: no copy), hands every buffer back,
 * and exits when the sender has gone after its EOS, or after COUNT buffers.
 *
 * usage: qsock_dump SOCKET [COUNT]
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include <qsock.h>

static void print_memory_start(const qsock_block *block) {
    void *map = mmap(NULL, block->maxsize, PROT_READ, MAP_SHARED, block->fd, 0);
    if (map == MAP_FAILED) {
        printf(" (cannot map fd %d)", block->fd);
        return;
    }
    uint64_t first8 = 0;
    memcpy(&first8, map, block->size < 8 ? block->size : 8);
    printf(" first8=%" PRIu64, first8);
    munmap(map, block->maxsize);
}

static void print_buffer(const qsock_buffer *buf, unsigned n) {
    qsock_buffer_info info;
    qsock_buffer_get_info(buf, &info);
    printf("#%u pts=%.3fs", n, info.pts == QSOCK_CLOCK_TIME_NONE ? -1.0 : info.pts / 1e9);
    for (size_t i = 0; i < info.n_blocks; i++) {
        qsock_block block;
        qsock_buffer_get_block(buf, i, &block);
        if (info.kind == QSOCK_KIND_VIDEO) {
            qsock_video_info v;
            qsock_buffer_get_video(buf, i, &v);
            printf(" video %s %ux%u planes=%u", v.format_name, v.width, v.height, v.n_planes);
        } else if (info.kind == QSOCK_KIND_TENSOR) {
            qsock_tensor_info t;
            qsock_buffer_get_tensor(buf, i, &t);
            printf(" tensor %s <", t.type_name);
            for (uint32_t d = 0; d < t.n_dimensions; d++)
                printf("%s%u", d ? "," : "", t.dimensions[d]);
            printf(">");
        } else {
            const uint8_t *text;
            size_t size;
            qsock_buffer_get_text(buf, i, &text, &size);
            printf(" text \"%.*s\"", (int)size, (const char *)text);
            continue;
        }
        printf(" fd=%d buf_id=%d size=%" PRIu64 "%s", block.fd, block.buf_id, block.size,
               info.use_buffer_pool ? " pooled" : "");
        print_memory_start(&block);
    }
    for (size_t i = 0; i < info.n_roi_metas; i++) {
        qsock_roi_meta roi;
        qsock_buffer_get_roi_meta(buf, i, &roi);
        printf(" roi=%s(%u,%u %ux%u)%s%s", roi.label, roi.x, roi.y, roi.w, roi.h, roi.det_meta ? " " : "",
               roi.det_meta ? roi.det_meta : "");
    }
    printf("\n");
}

int main(int argc, char **argv) {
    if (argc < 2 || argc > 3) {
        fprintf(stderr, "usage: %s SOCKET [COUNT]\n", argv[0]);
        return 2;
    }
    unsigned long limit = argc == 3 ? strtoul(argv[2], NULL, 10) : 0;
    qsock_receiver *rx;
    if (qsock_receiver_open(argv[1], &rx) != QSOCK_OK) {
        fprintf(stderr, "qsock_dump: %s\n", qsock_last_error());
        return 1;
    }
    printf("qsock_dump: waiting for a sender on %s\n", argv[1]);
    fflush(stdout);
    unsigned n = 0;
    int eos = 0, rc = 0;
    while (!limit || n < limit) {
        qsock_buffer *buf;
        qsock_status status = qsock_receiver_recv_buffer(rx, 30000, &buf);
        if (status == QSOCK_OK) {
            print_buffer(buf, n++);
            qsock_receiver_release(buf); /* back to the sender */
        } else if (status == QSOCK_EOS) {
            printf("EOS\n");
            eos = 1;
        } else if (status == QSOCK_SENDER_GONE && eos) {
            break;
        } else if (status == QSOCK_PROTOCOL_ERROR) {
            printf("rejected a message: %s\n", qsock_last_error());
        } else {
            fprintf(stderr, "qsock_dump: %s: %s\n", qsock_status_name(status), qsock_last_error());
            rc = 1;
            break;
        }
    }
    qsock_receiver_stats stats;
    qsock_receiver_get_stats(rx, &stats);
    printf("qsock_dump: %" PRIu64 " buffers, %" PRIu64 " bytes described (moved without a copy), %" PRIu64
           " fds received, %" PRIu64 " returns sent, %" PRIu64 " protocol errors\n",
           stats.buffers, stats.bytes_described, stats.fds_received, stats.returns_sent, stats.protocol_errors);
    qsock_receiver_close(rx);
    return rc;
}
