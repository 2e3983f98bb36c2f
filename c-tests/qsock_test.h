/*
 * What the C tests of the issue-12 defects share: checks that count failures instead of
 * stopping, a clock, memfds that hold a number, busy loops for CPU load. Only <qsock.h>
 * and libc, as a user's program. Include it first (it defines _GNU_SOURCE).
 */
#ifndef QSOCK_TEST_H
#define QSOCK_TEST_H

#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <qsock.h>

static int failures;

#define CHECK(cond, ...)                                                                   \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            fprintf(stderr, "FAIL %s:%d [%d]: %s: ", __FILE__, __LINE__, getpid(), #cond); \
            fprintf(stderr, __VA_ARGS__);                                                  \
            fprintf(stderr, " (last error: %s)\n", qsock_last_error());                    \
            failures++;                                                                    \
        }                                                                                  \
    } while (0)

/* `call` returns `expected`, and when `words` is not NULL, qsock_last_error() says them. */
#define CHECK_STATUS(call, expected, words)                                                \
    do {                                                                                   \
        qsock_status got_ = (call);                                                        \
        const char *words_ = (words);                                                      \
        CHECK(got_ == (expected) && (!words_ || strstr(qsock_last_error(), words_)),       \
              "%s returned %s, expected %s%s%s", #call, qsock_status_name(got_),           \
              qsock_status_name(expected), words_ ? " saying " : "", words_ ? words_ : ""); \
    } while (0)

static inline double now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static inline void sleep_ms(long ms) {
    struct timespec t = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000};
    while (nanosleep(&t, &t) != 0 && errno == EINTR) {}
}

/* A memfd of `size` bytes whose first 8 hold `value`. */
static inline int memfd_holding(size_t size, uint64_t value) {
    int fd = memfd_create("qsock-test", MFD_CLOEXEC);
    if (fd < 0 || ftruncate(fd, size) != 0 || pwrite(fd, &value, sizeof value, 0) != sizeof value) {
        perror("memfd");
        exit(2);
    }
    return fd;
}

/* The first 8 bytes of the memory behind `fd`; UINT64_MAX if unreadable. */
static inline uint64_t value_in(int fd) {
    uint64_t value;
    return pread(fd, &value, sizeof value, 0) == sizeof value ? value : UINT64_MAX;
}

/* An NV12 64x48 frame's layout: 4608 bytes. */
#define FRAME_SIZE 4608
static inline qsock_video_info nv12_64x48(void) {
    qsock_video_info v = {.format = 23, .width = 64, .height = 48, .n_planes = 2};
    v.offsets[1] = 3072;
    v.strides[0] = v.strides[1] = 64;
    return v;
}

/* Room for many fds: a sender with 1000 buffers in flight holds 1000 memfds, and its
 * receiver caches as many. */
static inline void raise_fd_limit(void) {
    struct rlimit limit;
    if (getrlimit(RLIMIT_NOFILE, &limit) == 0) {
        limit.rlim_cur = limit.rlim_max < 16384 ? limit.rlim_max : 16384;
        setrlimit(RLIMIT_NOFILE, &limit);
    }
}

/* CPU load: `n` processes that spin until stop_load(). */
#define MAX_LOAD 4
static pid_t load_pids[MAX_LOAD];
static inline void start_load(int n) {
    for (int i = 0; i < n && i < MAX_LOAD; i++) {
        load_pids[i] = fork();
        if (load_pids[i] == 0) {
            for (volatile unsigned long spin = 0;; spin++) {}
        }
    }
}
static inline void stop_load(void) {
    for (int i = 0; i < MAX_LOAD; i++) {
        if (load_pids[i] > 0) {
            kill(load_pids[i], SIGKILL);
            while (waitpid(load_pids[i], NULL, 0) < 0 && errno == EINTR) {}
            load_pids[i] = 0;
        }
    }
}

/* A connected sender, retrying while the receiver is not listening yet. */
static inline qsock_sender *connect_retrying(const char *path) {
    qsock_sender *tx = NULL;
    for (int tries = 0; qsock_sender_connect(path, &tx) != QSOCK_OK && tries < 1000; tries++)
        sleep_ms(10);
    return tx;
}

/* A receiver on `dir`/s (dir: a template for mkdtemp) and a sender connected to it, in
 * this process; exits with status 2, saying why, when either cannot be made. */
static inline void open_pair(char *dir, char *path, size_t path_size, qsock_receiver **rx, qsock_sender **tx) {
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        exit(2);
    }
    snprintf(path, path_size, "%s/s", dir);
    if (qsock_receiver_open(path, rx) != QSOCK_OK || qsock_sender_connect(path, tx) != QSOCK_OK) {
        fprintf(stderr, "setup: %s\n", qsock_last_error());
        exit(2);
    }
}

static inline int wait_child(pid_t pid) {
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

#endif
