/* Builds against dependency('qsock') from a subproject and uses the library. */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <qsock.h>

int main(void) {
    char path[64];
    snprintf(path, sizeof path, "/tmp/qsock-consumer-%d.sock", (int)getpid());
    qsock_receiver *rx;
    if (qsock_receiver_open(path, &rx) != QSOCK_OK) {
        fprintf(stderr, "open: %s\n", qsock_last_error());
        return 1;
    }
    qsock_buffer *buf;
    qsock_status s = qsock_receiver_recv_buffer(rx, 10, &buf);
    qsock_receiver_close(rx);
    if (s != QSOCK_TIMEOUT || access(path, F_OK) == 0) {
        fprintf(stderr, "expected a timeout and the socket file gone, got %s\n", qsock_status_name(s));
        return 1;
    }
    printf("consumer: qsock from a meson subproject works (%s)\n", qsock_status_name(s));
    return 0;
}
