/*
 * The fan-out (qsock_fanout_*), with real processes: this process sends through a fan-out
 * on a temporary directory; each receiver is a forked child with a qsock_receiver on a
 * socket in it.
 *
 * 1. Opening: a missing directory and a regular file fail naming the path; bad options
 *    are refused; an empty directory drops buffers (QSOCK_DELIVERY_NO_RECEIVER, no
 *    ticket); flushing makes a send return QSOCK_INTERRUPTED, also one that waits for a
 *    receiver (wait_for_receiver), set from another thread; the directory removed while
 *    the fan-out runs shows in its stats.
 * 2. One receiver that never gives anything back: it gets max_in_flight buffers, then
 *    every send is QSOCK_DELIVERY_SKIPPED; killed (SIGKILL), its tickets are released.
 * 3. Three receivers, one of them stuck: the two healthy ones get every frame in order,
 *    the stuck one exactly max_in_flight (its skips counted); killed, every ticket is
 *    released; a new receiver joins and gets every frame from then on; EOS; every ticket
 *    released; a forked child's copy refuses every call but close; an interrupt from a
 *    signal handler ends next_released; after close the process has the fds and threads
 *    it had before open.
 *
 * usage: test_fanout
 */
#include "qsock_test.h"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/time.h>

#define MAX_IN_FLIGHT 4
#define FIRST 200  /* frames while the stuck receiver is there */
#define SECOND 100 /* frames after the new receiver joined */
#define SLOTS 16   /* memfds the sender cycles through */
#define MAX_RECEIVERS 8

static char dir[64];
static qsock_fanout *fan;
static int slot_fd[SLOTS];
static uint64_t slot_ticket[SLOTS]; /* 0: free */
static uint64_t tickets_issued, tickets_released;

static int count_entries(const char *path) {
    DIR *d = opendir(path);
    int n = 0;
    for (struct dirent *e; d && (e = readdir(d));)
        n += e->d_name[0] != '.';
    if (d)
        closedir(d);
    return n;
}

static void socket_path(char *out, size_t size, const char *name) {
    snprintf(out, size, "%s/%s", dir, name);
}

/* A receiver child on `name`: writes the value of every frame it gets into `report`;
 * `stuck` keeps every buffer, else each is released at once. Exits 0 on EOS. */
static pid_t start_receiver(const char *name, bool stuck, int *report_out) {
    int report[2];
    if (pipe(report) != 0)
        exit(2);
    pid_t pid = fork();
    if (pid != 0) {
        close(report[1]);
        *report_out = report[0];
        return pid;
    }
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    close(report[0]);
    failures = 0;
    if (fan) {
        /* Forked with the fan-out open: the copy refuses every call but close. */
        qsock_fanout_sent sent;
        qsock_send_block block = {.fd = slot_fd[0], .size = FRAME_SIZE, .maxsize = FRAME_SIZE,
                                  .video = nv12_64x48()};
        qsock_send_buffer buffer = {.kind = QSOCK_KIND_VIDEO, .n_blocks = 1, .blocks = &block};
        CHECK_STATUS(qsock_fanout_send(fan, &buffer, &sent), QSOCK_INVALID_ARGUMENT, "forked child");
        uint64_t ticket;
        CHECK_STATUS(qsock_fanout_next_released(fan, 0, &ticket), QSOCK_INVALID_ARGUMENT, "forked child");
        CHECK_STATUS(qsock_fanout_interrupt(fan), QSOCK_INVALID_ARGUMENT, "forked child");
        CHECK_STATUS(qsock_fanout_set_flushing(fan, true), QSOCK_INVALID_ARGUMENT, "forked child");
        CHECK_STATUS(qsock_fanout_send_eos(fan, 0, NULL), QSOCK_INVALID_ARGUMENT, "forked child");
        qsock_fanout_stats stats;
        CHECK_STATUS(qsock_fanout_get_stats(fan, &stats, NULL, 0), QSOCK_INVALID_ARGUMENT, "forked child");
        CHECK(qsock_fanout_get_fd(fan) == -1, "get_fd in a forked child");
        qsock_fanout_close(fan);
        fan = NULL;
        if (failures)
            _exit(4);
    }
    char path[128];
    socket_path(path, sizeof path, name);
    qsock_receiver *rx;
    if (qsock_receiver_open(path, &rx) != QSOCK_OK) {
        fprintf(stderr, "receiver %s: %s\n", name, qsock_last_error());
        _exit(2);
    }
    qsock_buffer *kept[SLOTS];
    size_t n_kept = 0;
    int code;
    for (;;) {
        qsock_buffer *buf;
        qsock_status status = qsock_receiver_recv_buffer(rx, 30000, &buf);
        if (status == QSOCK_EOS) {
            code = 0;
            break;
        }
        if (status != QSOCK_OK) {
            fprintf(stderr, "receiver %s: %s: %s\n", name, qsock_status_name(status), qsock_last_error());
            code = 3;
            break;
        }
        qsock_block block;
        qsock_buffer_get_block(buf, 0, &block);
        uint64_t value = value_in(block.fd);
        if (write(report[1], &value, sizeof value) != sizeof value)
            _exit(2);
        if (stuck && n_kept < SLOTS)
            kept[n_kept++] = buf;
        else
            qsock_receiver_release(buf);
    }
    for (size_t i = 0; i < n_kept; i++)
        qsock_receiver_release(kept[i]);
    qsock_receiver_close(rx);
    /* _exit: a child forked with the fan-out open leaves its copy's memory to the exit
     * (qsock_fanout_close in a child frees nothing of the parent's). */
    _exit(code);
}

/* The frame values a receiver reported, up to `max`, waiting up to `ms` for `want`. */
static size_t reported(int fd, uint64_t *values, size_t max, size_t want, int ms) {
    size_t n = 0;
    double deadline = now_ms() + ms;
    while (n < max) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int left = (int)(deadline - now_ms());
        if (n >= want && left > 0)
            left = 0;
        if (left < 0 || poll(&p, 1, left) <= 0)
            break;
        ssize_t got = read(fd, values + n, sizeof *values);
        if (got != sizeof *values)
            break;
        n++;
    }
    return n;
}

/* Takes every released ticket, waiting up to `ms` for the first through the fan-out's fd. */
static void take_released(int ms) {
    struct pollfd p = {.fd = qsock_fanout_get_fd(fan), .events = POLLIN};
    if (poll(&p, 1, ms) <= 0)
        return;
    uint64_t ticket;
    qsock_status status;
    while ((status = qsock_fanout_next_released(fan, 0, &ticket)) == QSOCK_OK) {
        bool known = false;
        for (int i = 0; i < SLOTS; i++) {
            if (slot_ticket[i] == ticket) {
                slot_ticket[i] = 0;
                known = true;
            }
        }
        CHECK(known, "ticket %llu released twice, or never given", (unsigned long long)ticket);
        tickets_released++;
    }
    CHECK(status == QSOCK_TIMEOUT, "next_released: %s", qsock_status_name(status));
}

/* Until every ticket given is released (at most `ms`). */
static void take_all_released(int ms) {
    double deadline = now_ms() + ms;
    while (tickets_released < tickets_issued && now_ms() < deadline)
        take_released(100);
}

static qsock_fanout_stats stats_of(qsock_fanout_receiver_info *receivers) {
    qsock_fanout_stats stats = {0};
    CHECK_STATUS(qsock_fanout_get_stats(fan, &stats, receivers, receivers ? MAX_RECEIVERS : 0), QSOCK_OK, NULL);
    return stats;
}

static const qsock_fanout_receiver_info *find(const qsock_fanout_receiver_info *receivers, size_t n,
                                              const char *name) {
    char path[128];
    socket_path(path, sizeof path, name);
    for (size_t i = 0; i < n && i < MAX_RECEIVERS; i++)
        if (strcmp(receivers[i].socket_path, path) == 0)
            return &receivers[i];
    return NULL;
}

static void wait_receivers(size_t n) {
    double deadline = now_ms() + 10000;
    qsock_fanout_receiver_info receivers[MAX_RECEIVERS];
    while (stats_of(receivers).receivers != n && now_ms() < deadline)
        sleep_ms(5);
    CHECK(stats_of(receivers).receivers == n, "%zu receivers connected; expected %zu", stats_of(receivers).receivers, n);
}

/* Until every receiver but `stuck` holds fewer than MAX_IN_FLIGHT: the next frame goes to each. */
static void wait_room(const char *stuck) {
    char stuck_path[128];
    socket_path(stuck_path, sizeof stuck_path, stuck);
    double deadline = now_ms() + 10000;
    for (;;) {
        qsock_fanout_receiver_info receivers[MAX_RECEIVERS];
        qsock_fanout_stats stats = stats_of(receivers);
        bool room = true;
        for (size_t i = 0; i < stats.receivers && i < MAX_RECEIVERS; i++)
            room &= strcmp(receivers[i].socket_path, stuck_path) == 0 || receivers[i].in_flight < MAX_IN_FLIGHT;
        if (room)
            return;
        if (now_ms() > deadline) {
            CHECK(room, "a healthy receiver kept %d buffers for 10 s", MAX_IN_FLIGHT);
            return;
        }
        sleep_ms(1);
    }
}

static int free_slot(void) {
    double deadline = now_ms() + 10000;
    for (;;) {
        for (int i = 0; i < SLOTS; i++)
            if (slot_ticket[i] == 0)
                return i;
        if (now_ms() > deadline) {
            CHECK(0, "no ticket released for 10 s");
            exit(1);
        }
        take_released(1000);
    }
}

/* Sends frame `n` from a free slot; the delivery and the receivers it went to. */
static qsock_fanout_sent send_frame(uint64_t n) {
    int slot = free_slot();
    CHECK(pwrite(slot_fd[slot], &n, sizeof n, 0) == sizeof n, "pwrite");
    qsock_send_block block = {.fd = slot_fd[slot], .size = FRAME_SIZE, .maxsize = FRAME_SIZE, .video = nv12_64x48()};
    qsock_send_buffer buffer = {.kind = QSOCK_KIND_VIDEO, .n_blocks = 1, .blocks = &block, .pts = n * 1000,
                                .dts = QSOCK_CLOCK_TIME_NONE, .duration = 1000, .pooled = true};
    qsock_fanout_sent sent;
    CHECK_STATUS(qsock_fanout_send(fan, &buffer, &sent), QSOCK_OK, NULL);
    CHECK((sent.ticket != 0) <= (sent.delivery == QSOCK_DELIVERY_SENT), "a ticket for a buffer not sent");
    if (sent.ticket) {
        slot_ticket[slot] = sent.ticket;
        tickets_issued++;
    }
    return sent;
}

static int count_fds(void) {
    return count_entries("/proc/self/fd");
}

static int count_threads(void) {
    return count_entries("/proc/self/task");
}

/* The names of this process's threads, on stderr. */
static void print_threads(void) {
    DIR *d = opendir("/proc/self/task");
    for (struct dirent *e; d && (e = readdir(d));) {
        char path[300], name[64] = "";
        snprintf(path, sizeof path, "/proc/self/task/%s/comm", e->d_name);
        FILE *f = e->d_name[0] != '.' ? fopen(path, "r") : NULL;
        if (f) {
            if (fgets(name, sizeof name, f))
                fprintf(stderr, "thread %s: %s", e->d_name, name);
            fclose(f);
        }
    }
    if (d)
        closedir(d);
}

static void kill_child(pid_t pid) {
    kill(pid, SIGKILL);
    wait_child(pid);
}

static void reset_slots(void) {
    for (int i = 0; i < SLOTS; i++)
        slot_ticket[i] = 0;
    tickets_issued = tickets_released = 0;
}

static void *flush_soon(void *arg) {
    (void)arg;
    sleep_ms(100);
    CHECK_STATUS(qsock_fanout_set_flushing(fan, true), QSOCK_OK, NULL);
    return NULL;
}

static int opening(void) {
    int before = failures;
    char path[128];
    socket_path(path, sizeof path, "missing");
    qsock_fanout *f = (qsock_fanout *)0x1;
    CHECK_STATUS(qsock_fanout_open(path, NULL, &f), QSOCK_IO_ERROR, path);
    CHECK(f == (qsock_fanout *)0x1, "*fanout_out changed on failure");
    socket_path(path, sizeof path, "file");
    close(open(path, O_CREAT | O_WRONLY, 0600));
    CHECK_STATUS(qsock_fanout_open(path, NULL, &f), QSOCK_IO_ERROR, path);
    unlink(path);
    CHECK_STATUS(qsock_fanout_open(NULL, NULL, &f), QSOCK_INVALID_ARGUMENT, "socket_dir");
    CHECK_STATUS(qsock_fanout_open(dir, NULL, NULL), QSOCK_INVALID_ARGUMENT, "fanout_out");
    qsock_fanout_options options = {0};
    CHECK_STATUS(qsock_fanout_open(dir, &options, &f), QSOCK_INVALID_ARGUMENT, "slow_receiver");
    CHECK_STATUS(qsock_fanout_options_init(&options), QSOCK_OK, NULL);
    CHECK(options.max_in_flight == 4 && options.slow_receiver == QSOCK_SLOW_RECEIVER_SKIP &&
              !options.wait_for_receiver,
          "defaults %zu %d %d", options.max_in_flight, options.slow_receiver, options.wait_for_receiver);

    /* An empty directory: dropped, no ticket; flushing: interrupted. */
    CHECK_STATUS(qsock_fanout_open(dir, NULL, &fan), QSOCK_OK, NULL);
    qsock_fanout_sent sent = send_frame(0);
    CHECK(sent.delivery == QSOCK_DELIVERY_NO_RECEIVER && sent.ticket == 0 && sent.receivers == 0,
          "delivery %d, ticket %llu", sent.delivery, (unsigned long long)sent.ticket);
    qsock_fanout_stats stats = stats_of(NULL);
    CHECK(stats.dropped == 1 && stats.buffers_sent == 0 && stats.receivers == 0 && !stats.directory_failed,
          "dropped %llu", (unsigned long long)stats.dropped);
    CHECK_STATUS(qsock_fanout_set_flushing(fan, true), QSOCK_OK, NULL);
    qsock_send_block block = {.fd = slot_fd[0], .size = FRAME_SIZE, .maxsize = FRAME_SIZE, .video = nv12_64x48()};
    qsock_send_buffer buffer = {.kind = QSOCK_KIND_VIDEO, .n_blocks = 1, .blocks = &block};
    sent.delivery = QSOCK_DELIVERY_SENT;
    sent.ticket = 99;
    CHECK_STATUS(qsock_fanout_send(fan, &buffer, &sent), QSOCK_INTERRUPTED, "flushing");
    CHECK(sent.delivery == QSOCK_DELIVERY_NONE && sent.ticket == 0, "*sent_out not reset");
    CHECK_STATUS(qsock_fanout_send(fan, NULL, &sent), QSOCK_INVALID_ARGUMENT, "buffer");
    CHECK_STATUS(qsock_fanout_send(fan, &buffer, NULL), QSOCK_INVALID_ARGUMENT, "sent_out");
    CHECK_STATUS(qsock_fanout_get_stats(fan, &stats, NULL, 3), QSOCK_INVALID_ARGUMENT, "receivers");
    qsock_fanout_close(fan);

    /* wait_for_receiver: a send waits, until another thread sets flushing. */
    qsock_fanout_options_init(&options);
    options.wait_for_receiver = true;
    CHECK_STATUS(qsock_fanout_open(dir, &options, &fan), QSOCK_OK, NULL);
    pthread_t flusher;
    pthread_create(&flusher, NULL, flush_soon, NULL);
    double start = now_ms();
    CHECK_STATUS(qsock_fanout_send(fan, &buffer, &sent), QSOCK_INTERRUPTED, "flushing");
    double waited = now_ms() - start;
    CHECK(waited >= 90 && waited < 2000, "the send waited %.0f ms", waited);
    pthread_join(flusher, NULL);
    CHECK_STATUS(qsock_fanout_set_flushing(fan, false), QSOCK_OK, NULL);
    qsock_fanout_close(fan);

    /* The directory removed while the fan-out runs: said in the stats. */
    char sub[128];
    socket_path(sub, sizeof sub, "sub");
    CHECK(mkdir(sub, 0700) == 0, "mkdir %s", sub);
    CHECK_STATUS(qsock_fanout_open(sub, NULL, &fan), QSOCK_OK, NULL);
    CHECK(!stats_of(NULL).directory_failed, "directory_failed at once");
    CHECK(rmdir(sub) == 0, "rmdir %s", sub);
    double deadline = now_ms() + 5000;
    while (!stats_of(NULL).directory_failed && now_ms() < deadline)
        sleep_ms(5);
    CHECK(stats_of(NULL).directory_failed, "directory_failed after the directory was removed");
    qsock_fanout_close(fan);
    fan = NULL;
    qsock_fanout_close(NULL);
    printf("%s - open: a missing directory and a file named in the error; bad options refused; an empty "
           "directory drops (no ticket); flushing interrupts a send, also one waiting for a receiver; a removed "
           "directory is in the stats\n",
           failures > before ? "not ok" : "ok");
    return failures > before;
}

static int alone_and_stuck(void) {
    int before = failures;
    reset_slots();
    int report;
    pid_t stuck = start_receiver("solo.sock", true, &report);
    CHECK_STATUS(qsock_fanout_open(dir, NULL, &fan), QSOCK_OK, NULL);
    wait_receivers(1);
    for (uint64_t n = 0; n < 10; n++) {
        qsock_fanout_sent sent = send_frame(n);
        qsock_delivery expected = n < MAX_IN_FLIGHT ? QSOCK_DELIVERY_SENT : QSOCK_DELIVERY_SKIPPED;
        CHECK(sent.delivery == expected && sent.receivers == (n < MAX_IN_FLIGHT),
              "frame %llu: delivery %d to %zu receivers; expected %d", (unsigned long long)n, sent.delivery,
              sent.receivers, expected);
    }
    uint64_t values[SLOTS];
    size_t got = reported(report, values, SLOTS, MAX_IN_FLIGHT, 5000);
    CHECK(got == MAX_IN_FLIGHT, "the stuck receiver got %zu frames", got);
    CHECK(tickets_issued == MAX_IN_FLIGHT, "%llu tickets", (unsigned long long)tickets_issued);
    take_released(200);
    CHECK(tickets_released == 0, "%llu tickets released while the receiver holds them",
          (unsigned long long)tickets_released);
    kill_child(stuck);
    take_all_released(5000);
    CHECK(tickets_released == MAX_IN_FLIGHT, "%llu of %d tickets released after SIGKILL",
          (unsigned long long)tickets_released, MAX_IN_FLIGHT);
    qsock_fanout_stats stats = stats_of(NULL);
    CHECK(stats.skipped == 10 - MAX_IN_FLIGHT && stats.in_flight == 0 && stats.buffers_sent == MAX_IN_FLIGHT,
          "skipped %llu, in flight %llu", (unsigned long long)stats.skipped, (unsigned long long)stats.in_flight);
    qsock_fanout_close(fan);
    fan = NULL;
    close(report);
    char path[128];
    socket_path(path, sizeof path, "solo.sock");
    unlink(path);
    printf("%s - one stuck receiver: %d sent, then QSOCK_DELIVERY_SKIPPED; SIGKILL releases its %d tickets\n",
           failures > before ? "not ok" : "ok", MAX_IN_FLIGHT, MAX_IN_FLIGHT);
    return failures > before;
}

static volatile sig_atomic_t alarms;
static void on_alarm(int signal) {
    (void)signal;
    alarms++;
    qsock_fanout_interrupt(fan);
}

/* Every value in [first, first + n) once, in order. */
static void check_frames(const char *who, const uint64_t *values, size_t got, uint64_t first, size_t n) {
    CHECK(got == n, "%s got %zu frames; expected %zu", who, got, n);
    for (size_t i = 0; i < got && i < n; i++) {
        if (values[i] != first + i) {
            CHECK(values[i] == first + i, "%s: frame %zu holds %llu; expected %llu", who, i,
                  (unsigned long long)values[i], (unsigned long long)(first + i));
            break;
        }
    }
}

static int three_receivers(void) {
    int before = failures;
    reset_slots();
    int report_a, report_b, report_c, report_d;
    pid_t a = start_receiver("a.sock", false, &report_a);
    pid_t b = start_receiver("b.sock", false, &report_b);
    pid_t c = start_receiver("c.sock", true, &report_c);
    int fds_before = count_fds(), threads_before = count_threads();

    qsock_fanout_options options;
    qsock_fanout_options_init(&options);
    options.max_in_flight = MAX_IN_FLIGHT;
    options.slow_receiver = QSOCK_SLOW_RECEIVER_SKIP;
    CHECK_STATUS(qsock_fanout_open(dir, &options, &fan), QSOCK_OK, NULL);
    CHECK(qsock_fanout_get_fd(fan) >= 0, "get_fd");
    wait_receivers(3);

    /* Phase 1: every frame to a and b (never at their limit), c stuck after MAX_IN_FLIGHT. */
    for (uint64_t n = 0; n < FIRST; n++) {
        wait_room("c.sock");
        qsock_fanout_sent sent = send_frame(n);
        size_t expected = n < MAX_IN_FLIGHT ? 3 : 2;
        CHECK(sent.delivery == QSOCK_DELIVERY_SENT && sent.receivers == expected,
              "frame %llu: delivery %d to %zu receivers; expected %zu", (unsigned long long)n, sent.delivery,
              sent.receivers, expected);
    }
    /* Until a and b gave everything back, and the tickets only c holds are left. */
    double deadline = now_ms() + 10000;
    qsock_fanout_receiver_info receivers[MAX_RECEIVERS];
    qsock_fanout_stats stats;
    const qsock_fanout_receiver_info *ra, *rb, *rc;
    for (;;) {
        take_released(10);
        stats = stats_of(receivers);
        ra = find(receivers, stats.receivers, "a.sock");
        rb = find(receivers, stats.receivers, "b.sock");
        rc = find(receivers, stats.receivers, "c.sock");
        /* The tickets come a moment after the receivers' figures say so. */
        bool done = ra && rb && ra->in_flight == 0 && rb->in_flight == 0;
        if ((done && tickets_issued - tickets_released == MAX_IN_FLIGHT) || now_ms() > deadline)
            break;
    }
    CHECK(stats.receivers == 3 && ra && rb && rc, "%zu receivers", stats.receivers);
    if (ra && rb && rc) {
        CHECK(ra->buffers_sent == FIRST && rb->buffers_sent == FIRST && ra->skipped == 0 && rb->skipped == 0,
              "a: %llu sent, %llu skipped; b: %llu sent, %llu skipped", (unsigned long long)ra->buffers_sent,
              (unsigned long long)ra->skipped, (unsigned long long)rb->buffers_sent, (unsigned long long)rb->skipped);
        CHECK(ra->returns == FIRST && rb->returns == FIRST && ra->in_flight == 0 && rb->in_flight == 0,
              "a: %llu returns, b: %llu", (unsigned long long)ra->returns, (unsigned long long)rb->returns);
        CHECK(rc->buffers_sent == MAX_IN_FLIGHT && rc->in_flight == MAX_IN_FLIGHT && rc->returns == 0 &&
                  rc->skipped == FIRST - MAX_IN_FLIGHT,
              "c: %llu sent, %llu held, %llu skipped", (unsigned long long)rc->buffers_sent,
              (unsigned long long)rc->in_flight, (unsigned long long)rc->skipped);
        CHECK(rc->pid == c && ra->pid == a && ra->uid == (int64_t)getuid(), "pids %lld %lld",
              (long long)rc->pid, (long long)ra->pid);
        CHECK(rc->connected_since_ns > 0 && rc->fds_sent == MAX_IN_FLIGHT, "c: %llu fds",
              (unsigned long long)rc->fds_sent);
    }
    CHECK(stats.skipped == FIRST - MAX_IN_FLIGHT && stats.buffers_sent == FIRST && stats.dropped == 0 &&
              stats.in_flight == MAX_IN_FLIGHT,
          "skipped %llu, sent %llu, in flight %llu", (unsigned long long)stats.skipped,
          (unsigned long long)stats.buffers_sent, (unsigned long long)stats.in_flight);
    /* Less room than receivers: only what fits is written. */
    qsock_fanout_receiver_info two[2];
    memset(two, 0x5a, sizeof two);
    qsock_fanout_stats small;
    CHECK_STATUS(qsock_fanout_get_stats(fan, &small, two, 1), QSOCK_OK, NULL);
    CHECK(small.receivers == 3 && strstr(two[0].socket_path, ".sock") && two[1].socket_path[0] == 0x5a,
          "capacity 1: %zu receivers", small.receivers);
    CHECK_STATUS(qsock_fanout_get_stats(fan, NULL, NULL, 0), QSOCK_INVALID_ARGUMENT, "stats_out");
    CHECK(tickets_issued - tickets_released == MAX_IN_FLIGHT, "%llu tickets out",
          (unsigned long long)(tickets_issued - tickets_released));
    uint64_t c_values[SLOTS];
    size_t c_got = reported(report_c, c_values, SLOTS, MAX_IN_FLIGHT, 5000);
    check_frames("the stuck receiver", c_values, c_got, 0, MAX_IN_FLIGHT);
    printf("# phase 1: %d frames; a and b %llu each, c %zu (skipped %llu)\n", FIRST,
           ra ? (unsigned long long)ra->buffers_sent : 0, c_got, (unsigned long long)stats.skipped);

    /* The stuck receiver killed: its tickets come back. */
    kill_child(c);
    take_all_released(5000);
    CHECK(tickets_released == tickets_issued, "%llu of %llu tickets released after SIGKILL",
          (unsigned long long)tickets_released, (unsigned long long)tickets_issued);
    wait_receivers(2);

    /* A new receiver joins (forked with the fan-out open: its copy refuses every call). */
    pid_t d = start_receiver("d.sock", false, &report_d);
    wait_receivers(3);
    for (uint64_t n = FIRST; n < FIRST + SECOND; n++) {
        wait_room("none");
        qsock_fanout_sent sent = send_frame(n);
        CHECK(sent.delivery == QSOCK_DELIVERY_SENT && sent.receivers == 3, "frame %llu: delivery %d to %zu",
              (unsigned long long)n, sent.delivery, sent.receivers);
    }
    size_t still_out = 99;
    CHECK_STATUS(qsock_fanout_send_eos(fan, 10000, &still_out), QSOCK_OK, NULL);
    CHECK(still_out == 0, "%zu buffers still out after EOS", still_out);
    take_all_released(5000);
    CHECK(tickets_released == tickets_issued, "%llu of %llu tickets released",
          (unsigned long long)tickets_released, (unsigned long long)tickets_issued);
    uint64_t ticket;
    CHECK_STATUS(qsock_fanout_next_released(fan, 0, &ticket), QSOCK_TIMEOUT, NULL);
    stats = stats_of(NULL);
    CHECK(stats.in_flight == 0 && stats.buffers_sent == FIRST + SECOND && stats.skipped == FIRST - MAX_IN_FLIGHT,
          "in flight %llu, sent %llu", (unsigned long long)stats.in_flight, (unsigned long long)stats.buffers_sent);

    CHECK(wait_child(a) == 0 && wait_child(b) == 0 && wait_child(d) == 0, "a healthy receiver failed");
    static uint64_t values[FIRST + SECOND + 1];
    check_frames("a", values, reported(report_a, values, FIRST + SECOND + 1, FIRST + SECOND + 1, 5000), 0,
                 FIRST + SECOND);
    check_frames("b", values, reported(report_b, values, FIRST + SECOND + 1, FIRST + SECOND + 1, 5000), 0,
                 FIRST + SECOND);
    check_frames("d", values, reported(report_d, values, FIRST + SECOND + 1, SECOND + 1, 5000), FIRST, SECOND);

    /* An interrupt from a signal handler ends a wait for ever; one interrupt, one wait. */
    struct sigaction action = {.sa_handler = on_alarm}; /* no SA_RESTART */
    sigaction(SIGALRM, &action, NULL);
    struct itimerval in_100ms = {.it_value = {.tv_usec = 100000}};
    setitimer(ITIMER_REAL, &in_100ms, NULL);
    double start = now_ms();
    CHECK_STATUS(qsock_fanout_next_released(fan, -1, &ticket), QSOCK_INTERRUPTED, "qsock_fanout_interrupt");
    CHECK(alarms == 1 && now_ms() - start < 2000, "interrupted after %.0f ms", now_ms() - start);
    CHECK_STATUS(qsock_fanout_next_released(fan, 0, &ticket), QSOCK_TIMEOUT, NULL);
    signal(SIGALRM, SIG_DFL);

    qsock_fanout *closing = fan;
    fan = NULL;
    qsock_fanout_close(closing);
    close(report_d); /* opened after the count before */
    /* A joined thread leaves /proc a moment after pthread_join returns (the kernel wakes
     * the joiner before it reaps the thread): wait for that, at most 2 s. */
    double until = now_ms() + 2000;
    while (count_threads() != threads_before && now_ms() < until)
        sleep_ms(1);
    int fds_after = count_fds(), threads_after = count_threads();
    if (threads_after != threads_before)
        print_threads();
    close(report_a);
    close(report_b);
    close(report_c);
    CHECK(fds_after == fds_before && threads_after == threads_before, "fds %d -> %d, threads %d -> %d", fds_before,
          fds_after, threads_before, threads_after);
    printf("# phase 2: %d frames to a, b and the new d; %llu tickets, all released; fds %d -> %d, threads %d -> %d\n",
           SECOND, (unsigned long long)tickets_issued, fds_before, fds_after, threads_before, threads_after);
    printf("%s - three receivers, one stuck: a and b get all %d frames in order, the stuck one %d (skips "
           "counted); SIGKILL releases its tickets; a new receiver gets every frame after it joined; EOS; no "
           "ticket, fd or thread left\n",
           failures > before ? "not ok" : "ok", FIRST + SECOND, MAX_IN_FLIGHT);
    return failures > before;
}

int main(void) {
    snprintf(dir, sizeof dir, "/tmp/qsock-fanout-XXXXXX");
    if (!mkdtemp(dir))
        return 2;
    for (int i = 0; i < SLOTS; i++)
        slot_fd[i] = memfd_holding(FRAME_SIZE, 0);
    int failed = opening();
    failed += alone_and_stuck();
    failed += three_receivers();
    for (int i = 0; i < SLOTS; i++)
        close(slot_fd[i]);
    const char *names[] = {"a.sock", "b.sock", "c.sock", "d.sock"};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        char path[128];
        socket_path(path, sizeof path, names[i]);
        unlink(path);
    }
    CHECK(rmdir(dir) == 0, "rmdir %s: %s", dir, strerror(errno));
    printf("%d passed, %d failed\n", 3 - failed, failed);
    return failed || failures ? 1 : 0;
}
