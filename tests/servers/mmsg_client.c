/* HTTP client using sendmmsg(2)/recvmmsg(2) on TCP, for the syscall-coverage test:
 * sends two pipelined requests as two messages of one sendmmsg, then reads the two
 * responses with recvmmsg. Usage: mmsg_client PORT. Prints OK on success. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1]))};
    inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) { perror("connect"); return 1; }

    char r1[] = "GET /status/201 HTTP/1.1\r\nHost: m\r\nUser-Agent: mmsg\r\n\r\n";
    char r2[] = "GET /status/202 HTTP/1.1\r\nHost: m\r\nUser-Agent: mmsg\r\n\r\n";
    struct iovec iov[2] = {{r1, strlen(r1)}, {r2, strlen(r2)}};
    struct mmsghdr msgs[2];
    memset(msgs, 0, sizeof msgs);
    for (int i = 0; i < 2; i++) { msgs[i].msg_hdr.msg_iov = &iov[i]; msgs[i].msg_hdr.msg_iovlen = 1; }
    if (sendmmsg(fd, msgs, 2, 0) != 2) { perror("sendmmsg"); return 1; }

    /* Read until both responses (each ends with its path) arrived. */
    char buf[2][4096];
    size_t total = 0;
    char all[16384];
    while (total < sizeof all - 1) {
        struct iovec riov[2] = {{buf[0], sizeof buf[0]}, {buf[1], sizeof buf[1]}};
        struct mmsghdr rmsgs[2];
        memset(rmsgs, 0, sizeof rmsgs);
        for (int i = 0; i < 2; i++) { rmsgs[i].msg_hdr.msg_iov = &riov[i]; rmsgs[i].msg_hdr.msg_iovlen = 1; }
        int n = recvmmsg(fd, rmsgs, 1, 0, NULL);
        if (n <= 0 || rmsgs[0].msg_len == 0) break;
        size_t len = rmsgs[0].msg_len;
        if (len > sizeof all - 1 - total) len = sizeof all - 1 - total;
        memcpy(all + total, buf[0], len);
        total += len;
        all[total] = 0;
        if (strstr(all, "/status/201") && strstr(all, "/status/202")) { puts("OK"); return 0; }
    }
    fprintf(stderr, "incomplete responses: %s\n", all);
    return 1;
}
