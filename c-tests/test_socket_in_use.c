/*
 * A socket path already served, through the C API as a user sees it: a second
 * qsock_receiver_open on the path of a live receiver is refused (QSOCK_BAD_SOCKET_PATH,
 * the error naming the path and the process listening there) and leaves the first
 * receiving; once the first is closed the path is free again; a stale socket file
 * (nobody listening) is replaced.
 *
 * usage: test_socket_in_use <path-to-qsock-replay> <captures-dir>
 */
#define _GNU_SOURCE
#include <errno.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <qsock.h>

extern char **environ;

static int failures;

#define CHECK(cond, ...)                                                                   \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);                \
            fprintf(stderr, __VA_ARGS__);                                                  \
            fprintf(stderr, "\n");                                                         \
            failures++;                                                                    \
        }                                                                                  \
    } while (0)

#define CHECK_STATUS(call, expected)                                                       \
    do {                                                                                   \
        qsock_status got_ = (call);                                                        \
        CHECK(got_ == (expected), "%s returned %s, expected %s (last error: %s)", #call,   \
              qsock_status_name(got_), qsock_status_name(expected), qsock_last_error());   \
    } while (0)

static ino_t inode_of(const char *path) {
    struct stat st;
    return lstat(path, &st) == 0 ? st.st_ino : 0;
}

/* 0 if a sender can connect at `path`, else the errno of connect(). */
static int connects(const char *path) {
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    snprintf(addr.sun_path, sizeof addr.sun_path, "%s", path);
    int result = connect(fd, (struct sockaddr *)&addr, sizeof addr) == 0 ? 0 : errno;
    close(fd);
    return result;
}

/* qsock-replay playing video-nopool.jsonl (5 buffers, then EOS) into `socket_path`. */
static pid_t spawn_replay(const char *replay_bin, const char *captures_dir, const char *socket_path) {
    char capture_path[512];
    snprintf(capture_path, sizeof capture_path, "%s/video-nopool.jsonl", captures_dir);
    char *argv[] = {(char *)replay_bin, (char *)socket_path, capture_path, "--quiet", NULL};
    pid_t pid;
    int err = posix_spawn(&pid, replay_bin, NULL, NULL, argv, environ);
    if (err != 0) {
        fprintf(stderr, "cannot start %s: %s\n", replay_bin, strerror(err));
        exit(2);
    }
    return pid;
}

static int wait_replay(pid_t pid) {
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s <qsock-replay> <captures-dir>\n", argv[0]);
        return 2;
    }
    char dir[64] = "/tmp/qsock-c-in-use-XXXXXX";
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 2;
    }
    char path[96]; /* fits sun_path */
    snprintf(path, sizeof path, "%s/s", dir);

    /* A second receiver on a live one's path is refused; the first's file stays. */
    qsock_receiver *first = NULL;
    CHECK_STATUS(qsock_receiver_open(path, &first), QSOCK_OK);
    ino_t first_file = inode_of(path);
    qsock_receiver *second = NULL;
    CHECK_STATUS(qsock_receiver_open(path, &second), QSOCK_BAD_SOCKET_PATH);
    CHECK(second == NULL, "*receiver_out was changed on failure");
    const char *error = qsock_last_error();
    char my_pid[32];
    snprintf(my_pid, sizeof my_pid, "pid %d,", (int)getpid());
    CHECK(strstr(error, path) != NULL, "the error does not name the path: %s", error);
    CHECK(strstr(error, "listening") != NULL && strstr(error, my_pid) != NULL,
          "the error does not say who listens there (%s): %s", my_pid, error);
    CHECK(inode_of(path) == first_file, "the live receiver's socket file was replaced");
    printf("refused as expected: %s\n", error);

    /* The first still gets a sender and every buffer. */
    pid_t replay = spawn_replay(argv[1], argv[2], path);
    int buffers = 0;
    for (;;) {
        qsock_buffer *buffer = NULL;
        qsock_status status = qsock_receiver_recv_buffer(first, 10000, &buffer);
        if (status != QSOCK_OK) {
            CHECK(status == QSOCK_EOS, "recv: %s (%s)", qsock_status_name(status), qsock_last_error());
            break;
        }
        buffers++;
        qsock_receiver_release(buffer);
    }
    CHECK(buffers == 5, "the first receiver got %d buffers of 5", buffers);
    CHECK(wait_replay(replay) == 0, "the sender did not get every buffer back");

    /* Closed, it frees the path. */
    qsock_receiver_close(first);
    CHECK_STATUS(qsock_receiver_open(path, &second), QSOCK_OK);
    qsock_receiver_close(second);
    CHECK(access(path, F_OK) != 0, "the socket file outlived its receiver");

    /* A stale socket file (its listener closed without unlinking it) is replaced. */
    int fd = socket(AF_UNIX, SOCK_SEQPACKET, 0);
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    snprintf(addr.sun_path, sizeof addr.sun_path, "%s", path);
    CHECK(fd >= 0 && bind(fd, (struct sockaddr *)&addr, sizeof addr) == 0 && listen(fd, 1) == 0, "%s",
          strerror(errno));
    close(fd);
    CHECK(connects(path) == ECONNREFUSED, "a stale socket file refuses connections");
    qsock_receiver *replacing = NULL;
    CHECK_STATUS(qsock_receiver_open(path, &replacing), QSOCK_OK);
    CHECK(connects(path) == 0, "the stale socket file was not replaced by a listening one");
    qsock_receiver_close(replacing);

    rmdir(dir);
    printf("%s\n", failures ? "FAILED" : "passed");
    if (failures)
        fprintf(stderr, "%d checks failed\n", failures);
    return failures ? 1 : 0;
}
