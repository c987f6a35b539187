/* An edge-triggered epoll echo server in plain C: the floor loopd's echo is
 * measured against.
 *
 * Usage: epoll_echo PORT   (listens on 127.0.0.1:PORT; prints
 * "epoll_echo listening on 127.0.0.1:PORT" once it accepts).
 *
 * One thread, one epoll set, EPOLLIN|EPOLLOUT|EPOLLET registered once per
 * connection (no epoll_ctl per event). Reads land in one shared buffer and
 * are written straight back; only what the kernel did not take is copied
 * into a per-connection buffer, flushed when EPOLLOUT fires. Idle
 * connections hold no buffer. TCP_NODELAY as loopd does. SIGTERM/SIGINT end
 * it. Built by the benchmark runner: gcc -O2 -Wall -Wextra -Werror.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_EVENTS 1024
#define BUF_SIZE (64 * 1024)
/* A peer that does not read gets cut off beyond this much pending output. */
#define MAX_PENDING (1 << 20)

struct conn {
    int fd;
    char *pending; /* bytes the kernel did not take yet */
    size_t len, cap;
};

static char buf[BUF_SIZE];
static volatile sig_atomic_t stop;

static void on_signal(int sig) { (void)sig; stop = 1; }

static void drop_conn(struct conn *c)
{
    close(c->fd); /* also removes it from the epoll set */
    free(c->pending);
    free(c);
}

/* Writes what is pending; returns -1 if the connection must go. */
static int flush(struct conn *c)
{
    size_t off = 0;
    while (off < c->len) {
        ssize_t n = send(c->fd, c->pending + off, c->len - off, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) break;
            return -1;
        }
        off += (size_t)n;
    }
    memmove(c->pending, c->pending + off, c->len - off);
    c->len -= off;
    if (c->len == 0) {
        free(c->pending);
        c->pending = NULL;
        c->cap = 0;
    }
    return 0;
}

/* Echoes data[0..n): straight to the socket unless output is already queued. */
static int echo(struct conn *c, const char *data, size_t n)
{
    size_t off = 0;
    while (c->len == 0 && off < n) {
        ssize_t w = send(c->fd, data + off, n - off, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) break;
            return -1;
        }
        off += (size_t)w;
    }
    if (off == n) return 0;
    size_t rest = n - off;
    if (c->len + rest > MAX_PENDING) return -1;
    if (c->len + rest > c->cap) {
        size_t cap = c->cap ? c->cap : 4096;
        while (cap < c->len + rest) cap *= 2;
        char *p = realloc(c->pending, cap);
        if (!p) return -1;
        c->pending = p;
        c->cap = cap;
    }
    memcpy(c->pending + c->len, data + off, rest);
    c->len += rest;
    return 0;
}

/* Drains the socket (edge-triggered: until EAGAIN). -1: drop it. */
static int readable(struct conn *c)
{
    for (;;) {
        /* Stop reading while over the limit; EPOLLOUT resumes (below). */
        if (c->len >= MAX_PENDING / 2) return 0;
        ssize_t n = recv(c->fd, buf, sizeof buf, 0);
        if (n > 0) {
            if (echo(c, buf, (size_t)n) < 0) return -1;
            continue;
        }
        if (n == 0) return -1;
        if (errno == EINTR) continue;
        if (errno == EAGAIN) return 0;
        return -1;
    }
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: epoll_echo PORT\n");
        return 2;
    }
    int port = atoi(argv[1]);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    /* SIGTERM and SIGINT are blocked except inside epoll_pwait, so one that
     * comes between the `stop` check and the wait ends the wait instead of
     * being noticed only at the next event (under valgrind, which delivers
     * signals late, that window is wide enough to be hit). */
    sigset_t block, waitmask;
    sigemptyset(&block);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGINT);
    sigprocmask(SIG_BLOCK, &block, &waitmask);

    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((unsigned short)port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(lfd, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(lfd, 4096) < 0) {
        perror("epoll_echo: bind/listen");
        return 1;
    }
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    printf("epoll_echo listening on 127.0.0.1:%d\n", port);
    fflush(stdout);

    struct epoll_event events[MAX_EVENTS];
    while (!stop) {
        int n = epoll_pwait(ep, events, MAX_EVENTS, -1, &waitmask);
        if (n < 0) {
            if (errno == EINTR) continue;
            perror("epoll_pwait");
            return 1;
        }
        for (int i = 0; i < n; i++) {
            struct conn *c = events[i].data.ptr;
            if (c == NULL) {
                /* Level-triggered listener: accept a batch, come back later. */
                for (int k = 0; k < 64; k++) {
                    int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                    if (fd < 0) break; /* EAGAIN, or EMFILE: retried on the next event */
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    struct conn *nc = calloc(1, sizeof *nc);
                    if (!nc) {
                        close(fd);
                        continue;
                    }
                    nc->fd = fd;
                    struct epoll_event cev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET,
                                              .data.ptr = nc};
                    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &cev) < 0) {
                        drop_conn(nc);
                    }
                }
                continue;
            }
            uint32_t e = events[i].events;
            if (e & (EPOLLERR | EPOLLHUP)) {
                drop_conn(c);
                continue;
            }
            int had_pending = c->len > 0;
            if ((e & EPOLLOUT) && had_pending && flush(c) < 0) {
                drop_conn(c);
                continue;
            }
            /* Input left unread while output was over the limit is read
             * once a flush made room: no new edge would report it. */
            if ((e & (EPOLLIN | EPOLLRDHUP)) || had_pending) {
                if (readable(c) < 0) {
                    drop_conn(c);
                    continue;
                }
            }
        }
    }
    return 0;
}
