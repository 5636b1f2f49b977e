/* A NexusKit echo peer for benchmarks: one thread, one epoll loop, non-blocking sockets.
 *
 * Every request frame is answered with the same bytes except Res=1 and Code=200
 * (same Tp, Qid, Fid, Dh and body); a heartbeat (Tp & 1) is answered with Res=1
 * and its Code left as sent. The answer is the request rewritten in place in the
 * connection's input buffer, so a body is never copied unless the socket takes
 * only part of it: the rest then waits in the connection's output buffer and
 * goes out on EPOLLOUT. While more than OUT_HIGH bytes wait, the connection is
 * not read (a client that does not read cannot make the peer grow without end).
 *
 * Frames up to 16 MiB of body (Len <= 20 + 16 MiB) are accepted; a frame with a
 * bad Tag, a Len below 20 or above that limit closes its connection.
 *
 *   epoll_echo [PORT]    (default 0: the OS chooses; prints "listening on 127.0.0.1:PORT")
 *
 * On SIGTERM or SIGINT it prints one line of counters to stderr and exits 0:
 *   stats connections=N frames=N bytes_in=N bytes_out=N partial_writes=N closed_bad=N
 *
 * Built by bench/peers.py (cc -O2) into bench/.build/.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define HEADER 24u                        /* Len prefix + 20-byte header */
#define MAX_BODY (16u * 1024u * 1024u)    /* 16 MiB */
#define MAX_LEN (20u + MAX_BODY)
#define READ_CHUNK (256u * 1024u)
#define OUT_HIGH (4u * 1024u * 1024u)
#define TAG 0x7A5A

typedef struct {
    int fd;
    uint8_t *in;
    size_t in_len, in_cap;
    uint8_t *out;
    size_t out_off, out_len, out_cap; /* pending bytes are out[out_off .. out_len) */
    uint32_t events;
} conn_t;

static volatile sig_atomic_t stop_flag = 0;
static unsigned long long n_conns, n_frames, n_in, n_out, n_partial, n_bad;

static void on_signal(int sig) {
    (void)sig;
    stop_flag = 1;
}

static uint32_t get_u32(const uint8_t *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

static int reserve(uint8_t **buf, size_t *cap, size_t need) {
    if (need <= *cap) return 0;
    size_t cap2 = *cap ? *cap : 65536;
    while (cap2 < need) cap2 *= 2;
    uint8_t *p = realloc(*buf, cap2);
    if (!p) return -1;
    *buf = p;
    *cap = cap2;
    return 0;
}

static void set_events(int ep, conn_t *c, uint32_t events) {
    if (events == c->events) return;
    struct epoll_event ev = {.events = events, .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
    c->events = events;
}

static void close_conn(int ep, conn_t *c) {
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c->in);
    free(c->out);
    free(c);
}

static size_t pending(const conn_t *c) { return c->out_len - c->out_off; }

/* Write what is pending; returns -1 when the connection failed. */
static int flush_out(conn_t *c) {
    while (pending(c)) {
        ssize_t w = send(c->fd, c->out + c->out_off, pending(c), MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
            return -1;
        }
        n_out += (size_t)w;
        c->out_off += (size_t)w;
        if (pending(c)) n_partial++;
    }
    c->out_off = c->out_len = 0;
    return 0;
}

/* Send in[0..n) (answers rewritten in place): straight from the input buffer when nothing is
 * pending, whatever the socket does not take is appended to the output buffer. */
static int send_answers(conn_t *c, size_t n) {
    size_t done = 0;
    if (!pending(c)) {
        while (done < n) {
            ssize_t w = send(c->fd, c->in + done, n - done, MSG_NOSIGNAL);
            if (w < 0) {
                if (errno == EINTR) continue;
                if (errno == EAGAIN || errno == EWOULDBLOCK) break;
                return -1;
            }
            n_out += (size_t)w;
            done += (size_t)w;
            if (done < n) n_partial++;
        }
    }
    if (done < n) {
        if (c->out_off && c->out_off == c->out_len) c->out_off = c->out_len = 0;
        if (reserve(&c->out, &c->out_cap, c->out_len + (n - done)) < 0) return -1;
        memcpy(c->out + c->out_len, c->in + done, n - done);
        c->out_len += n - done;
    }
    return 0;
}

/* Parse complete frames at the start of the input buffer, answer them, keep the rest. */
static int process(conn_t *c) {
    size_t pos = 0;
    while (c->in_len - pos >= HEADER) {
        uint8_t *f = c->in + pos;
        uint32_t len = get_u32(f);
        if (len < 20 || len > MAX_LEN || ((f[4] << 8) | f[5]) != TAG) {
            n_bad++;
            return -1;
        }
        if (c->in_len - pos < 4u + len) {
            /* make room for the whole frame so the next reads complete it */
            if (reserve(&c->in, &c->in_cap, pos + 4u + len + READ_CHUNK) < 0) return -1;
            break;
        }
        f[9] = 1; /* Res: response */
        if (!(f[8] & 1)) {
            f[18] = 0, f[19] = 0, f[20] = 0, f[21] = 200; /* Code 200 */
        }
        pos += 4u + len;
        n_frames++;
    }
    if (pos) {
        if (send_answers(c, pos) < 0) return -1;
        memmove(c->in, c->in + pos, c->in_len - pos);
        c->in_len -= pos;
    }
    return 0;
}

static int on_readable(conn_t *c) {
    if (reserve(&c->in, &c->in_cap, c->in_len + READ_CHUNK) < 0) return -1;
    for (;;) {
        ssize_t r = recv(c->fd, c->in + c->in_len, c->in_cap - c->in_len, 0);
        if (r < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
            return -1;
        }
        if (r == 0) return -1;
        n_in += (size_t)r;
        c->in_len += (size_t)r;
        return process(c);
    }
}

int main(int argc, char **argv) {
    int port = argc > 1 ? atoi(argv[1]) : 0;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal; /* no SA_RESTART: epoll_wait returns EINTR */
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(ls, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(ls, 4096) < 0) {
        perror("epoll_echo: bind/listen");
        return 1;
    }
    socklen_t alen = sizeof addr;
    getsockname(ls, (struct sockaddr *)&addr, &alen);
    printf("listening on 127.0.0.1:%d\n", ntohs(addr.sin_port));
    fflush(stdout);

    int ep = epoll_create1(0);
    struct epoll_event lev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &lev);
    struct epoll_event events[256];
    while (!stop_flag) {
        int n = epoll_wait(ep, events, 256, -1);
        if (n < 0) {
            if (errno == EINTR) continue;
            perror("epoll_echo: epoll_wait");
            return 1;
        }
        for (int i = 0; i < n; i++) {
            conn_t *c = events[i].data.ptr;
            if (!c) {
                for (;;) {
                    int fd = accept4(ls, NULL, NULL, SOCK_NONBLOCK);
                    if (fd < 0) break;
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    conn_t *nc = calloc(1, sizeof *nc);
                    if (!nc) {
                        close(fd);
                        continue;
                    }
                    nc->fd = fd;
                    nc->events = EPOLLIN;
                    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = nc};
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
                    n_conns++;
                }
                continue;
            }
            uint32_t ev = events[i].events;
            int failed = 0;
            if (ev & EPOLLOUT) failed = flush_out(c) < 0;
            if (!failed && (ev & (EPOLLIN | EPOLLHUP | EPOLLERR)) && pending(c) <= OUT_HIGH)
                failed = on_readable(c) < 0;
            if (failed) {
                close_conn(ep, c);
                continue;
            }
            size_t p = pending(c);
            set_events(ep, c, (p ? EPOLLOUT : 0) | (p <= OUT_HIGH ? EPOLLIN : 0));
        }
    }
    fprintf(stderr, "stats connections=%llu frames=%llu bytes_in=%llu bytes_out=%llu partial_writes=%llu closed_bad=%llu\n",
            n_conns, n_frames, n_in, n_out, n_partial, n_bad);
    return 0;
}
