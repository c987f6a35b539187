/* What a level-triggered epoll registration costs over an edge-triggered
 * one in an echo-like loop: the wait before the loop goes to sleep.
 *
 * Usage: repoll N [ROUNDS]   (N TCP connections over loopback, N <= 1000;
 * ROUNDS connection-rounds per run, 200,000 unless given)
 *
 * Each round writes one byte to every connection, waits until every server
 * side was reported readable and reads it (one read each, as an echo
 * server's round trip does), then times one more epoll_wait with a zero
 * timeout: the one an event loop makes before it sleeps. A level-triggered
 * registration that was reported went back on epoll's ready list and is
 * polled again there, found drained and dropped; an edge-triggered one is
 * not. The difference between the two lines is that re-poll. Prints the
 * best of 5 runs of ROUNDS connection-rounds each, in ns per wait. The
 * benchmark runner's `syscalls` benchmark runs it (section 7 of
 * docs/benchmarks.md).
 *
 * Build: gcc -O2 -Wall -Wextra -Werror -o repoll benches/peers/repoll.c
 * Run pinned, as the benchmarks run servers: taskset -c 1 ./repoll 1
 */
#define _GNU_SOURCE
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* A connected loopback TCP pair: fds[0] the client, fds[1] the server side. */
static void tcp_pair(int fds[2])
{
    int l = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t n = sizeof a;
    if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof a) < 0 || listen(l, 1) < 0 ||
        getsockname(l, (struct sockaddr *)&a, &n) < 0) {
        perror("repoll: listen");
        exit(1);
    }
    fds[0] = socket(AF_INET, SOCK_STREAM, 0);
    if (fds[0] < 0 || connect(fds[0], (struct sockaddr *)&a, sizeof a) < 0) {
        perror("repoll: connect");
        exit(1);
    }
    fds[1] = accept(l, NULL, NULL);
    if (fds[1] < 0) {
        perror("repoll: accept");
        exit(1);
    }
    close(l);
}

int main(int argc, char **argv)
{
    int n = argc >= 2 && argc <= 3 ? atoi(argv[1]) : 0;
    long total = argc == 3 ? atol(argv[2]) : 200000;
    if (n < 1 || n > 1000 || total < n) {
        fprintf(stderr, "usage: repoll N [ROUNDS]   (1 <= N <= 1000 connections, ROUNDS >= N)\n");
        return 2;
    }
    const long rounds = total / n;
    for (int edge = 0; edge < 2; edge++) {
        int ep = epoll_create1(0);
        int (*pairs)[2] = calloc((size_t)n, sizeof *pairs);
        if (ep < 0 || !pairs) {
            perror("repoll");
            return 1;
        }
        for (int i = 0; i < n; i++) {
            tcp_pair(pairs[i]);
            struct epoll_event e = {.events = EPOLLIN | (edge ? EPOLLET : 0), .data.u32 = (uint32_t)i};
            if (epoll_ctl(ep, EPOLL_CTL_ADD, pairs[i][1], &e) < 0) {
                perror("repoll: epoll_ctl");
                return 1;
            }
        }
        struct epoll_event ev[1024];
        char byte = 'x', buf[64];
        double best = 1e9;
        for (int run = 0; run < 5; run++) {
            double waited = 0;
            for (long r = 0; r < rounds; r++) {
                for (int i = 0; i < n; i++) {
                    if (write(pairs[i][0], &byte, 1) != 1) {
                        perror("repoll: write");
                        return 1;
                    }
                }
                for (int got = 0; got < n;) {
                    int k = epoll_wait(ep, ev, 1024, -1);
                    for (int j = 0; j < k; j++) {
                        if (read(pairs[ev[j].data.u32][1], buf, sizeof buf) != 1) {
                            perror("repoll: read");
                            return 1;
                        }
                    }
                    got += k > 0 ? k : 0;
                }
                double t = now();
                if (epoll_wait(ep, ev, 1024, 0) != 0) {
                    fprintf(stderr, "repoll: a drained socket was reported\n");
                    return 1;
                }
                waited += now() - t;
            }
            double per = waited / rounds * 1e9;
            if (per < best) best = per;
        }
        printf("%s-triggered, %d connection(s): %.0f ns per wait after the reads\n",
               edge ? "edge" : "level", n, best);
        for (int i = 0; i < n; i++) {
            close(pairs[i][0]);
            close(pairs[i][1]);
        }
        free(pairs);
        close(ep);
    }
    return 0;
}
