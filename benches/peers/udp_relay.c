/* A UDP relay in plain C, the floor loopd's udp-broadcast is measured
 * against: every datagram received on 127.0.0.1:PORT is re-sent to
 * TARGET_ADDR:TARGET_PORT. One blocking recvfrom, one sendto, nothing else:
 * no event loop, no rate limits, no protections.
 *
 * Usage: udp_relay PORT TARGET_ADDR TARGET_PORT
 * Prints "udp_relay listening on 127.0.0.1:PORT" once bound. SIGTERM/SIGINT
 * end it. Built by the benchmark runner: gcc -O2 -Wall -Wextra -Werror.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static volatile sig_atomic_t stop;
static void on_signal(int sig) { (void)sig; stop = 1; }

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: udp_relay PORT TARGET_ADDR TARGET_PORT\n");
        return 2;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal; /* no SA_RESTART: recvfrom returns EINTR */
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in addr, target;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((unsigned short)atoi(argv[1]));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    memset(&target, 0, sizeof target);
    target.sin_family = AF_INET;
    target.sin_port = htons((unsigned short)atoi(argv[3]));
    if (inet_pton(AF_INET, argv[2], &target.sin_addr) != 1) {
        fprintf(stderr, "udp_relay: bad target address %s\n", argv[2]);
        return 2;
    }
    if (bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
        perror("udp_relay: bind");
        return 1;
    }
    printf("udp_relay listening on 127.0.0.1:%s\n", argv[1]);
    fflush(stdout);

    static char buf[65536];
    while (!stop) {
        struct sockaddr_in from;
        socklen_t fromlen = sizeof from;
        ssize_t n = recvfrom(fd, buf, sizeof buf, 0, (struct sockaddr *)&from, &fromlen);
        if (n < 0) {
            if (errno == EINTR) continue;
            perror("udp_relay: recvfrom");
            return 1;
        }
        /* A full send buffer drops the datagram, as UDP does. */
        (void)sendto(fd, buf, (size_t)n, 0, (struct sockaddr *)&target, sizeof target);
    }
    return 0;
}
