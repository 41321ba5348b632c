/*
 * zerocopy-bench: does MSG_ZEROCOPY (QEMU's zero-copy-send) make sending RAM over TCP faster on this machine?
 * Two processes on TCP loopback; the sender moves N MiB from a buffer it touched before the clock starts, in 1 MiB
 * sends, once with plain send() and once with send(MSG_ZEROCOPY), reaping the kernel's completion notices from
 * the socket's error queue; the receiver reads into a touched buffer of its own. Prints the throughput of each
 * way, their ratio, and whether the kernel reported that it copied the "zero-copy" data after all
 * (SO_EE_CODE_ZEROCOPY_COPIED: on loopback it always does, since the receiver's socket may keep the pages).
 * A measurement, not a test; exits non-zero only if the sockets fail.
 *
 * Usage: zerocopy-bench [MIB] [ROUNDS]   (default 1024 MiB, 3 rounds; the best round of each way is printed)
 */
#include <errno.h>
#include <stdbool.h>
#include <time.h>
#include <linux/errqueue.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef SO_ZEROCOPY
#define SO_ZEROCOPY 60
#endif
#ifndef MSG_ZEROCOPY
#define MSG_ZEROCOPY 0x4000000
#endif

#define CHUNK (1u << 20)

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what)
{
    perror(what);
    exit(1);
}

/* Completion notices: returns how many sends they cover; *copied is set if any says the kernel copied. */
static uint64_t reap(int fd, bool *copied, bool block)
{
    uint64_t done = 0;
    for (;;) {
        if (block) {
            struct pollfd p = { .fd = fd, .events = 0 };
            poll(&p, 1, 100);
        }
        char control[128];
        struct msghdr msg = { .msg_control = control, .msg_controllen = sizeof(control) };
        if (recvmsg(fd, &msg, MSG_ERRQUEUE | MSG_DONTWAIT) < 0) {
            if (errno == EAGAIN) {
                return done;
            }
            die("recvmsg(MSG_ERRQUEUE)");
        }
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
            struct sock_extended_err *ee = (struct sock_extended_err *)CMSG_DATA(c);
            if (ee->ee_errno != 0 || ee->ee_origin != SO_EE_ORIGIN_ZEROCOPY) {
                continue;
            }
            done += (uint64_t)(ee->ee_data - ee->ee_info) + 1;
            if (ee->ee_code & SO_EE_CODE_ZEROCOPY_COPIED) {
                *copied = true;
            }
        }
        block = false;
    }
}

/* One round: returns seconds from the first send until the receiver has every byte. */
static double round_trip(uint8_t *buf, size_t total, bool zerocopy, bool *copied)
{
    int l = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t alen = sizeof(a);
    if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(l, 1) < 0 ||
        getsockname(l, (struct sockaddr *)&a, &alen) < 0) {
        die("listen");
    }
    int done_pipe[2];
    if (pipe(done_pipe) < 0) {
        die("pipe");
    }
    pid_t pid = fork();
    if (pid < 0) {
        die("fork");
    }
    if (pid == 0) {
        int c = accept(l, NULL, NULL);
        uint8_t *rbuf = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
        if (c < 0 || rbuf == MAP_FAILED) {
            _exit(1);
        }
        size_t got = 0;
        while (got < total) {
            ssize_t n = read(c, rbuf + got, total - got);
            if (n <= 0) {
                _exit(1);
            }
            got += (size_t)n;
        }
        char ok = 1;
        _exit(write(done_pipe[1], &ok, 1) == 1 ? 0 : 1);
    }
    close(l);
    int s = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    if (s < 0 || connect(s, (struct sockaddr *)&a, sizeof(a)) < 0) {
        die("connect");
    }
    setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (zerocopy && setsockopt(s, SOL_SOCKET, SO_ZEROCOPY, &one, sizeof(one)) < 0) {
        die("SO_ZEROCOPY");
    }
    /* Let the receiver map and touch its buffer before the clock starts. */
    usleep(200 * 1000 + total / 4096);
    double t0 = now_s();
    uint64_t sends = 0, completed = 0;
    for (size_t off = 0; off < total;) {
        size_t len = total - off < CHUNK ? total - off : CHUNK;
        ssize_t n = send(s, buf + off, len, zerocopy ? MSG_ZEROCOPY : 0);
        if (n < 0 && errno == ENOBUFS && zerocopy) {
            /* Too many notices outstanding (optmem): reap some, then go on. */
            completed += reap(s, copied, true);
            continue;
        }
        if (n < 0) {
            die("send");
        }
        off += (size_t)n;
        sends++;
        if (zerocopy) {
            completed += reap(s, copied, false);
        }
    }
    char ok;
    if (read(done_pipe[0], &ok, 1) != 1) {
        die("receiver");
    }
    double dt = now_s() - t0;
    while (zerocopy && completed < sends) {
        uint64_t r = reap(s, copied, true);
        if (r == 0) {
            break;
        }
        completed += r;
    }
    close(s);
    int status;
    waitpid(pid, &status, 0);
    close(done_pipe[0]);
    close(done_pipe[1]);
    return dt;
}

int main(int argc, char **argv)
{
    size_t mib = argc > 1 ? strtoul(argv[1], NULL, 10) : 1024;
    int rounds = argc > 2 ? atoi(argv[2]) : 3;
    if (mib == 0 || rounds < 1) {
        fprintf(stderr, "usage: zerocopy-bench [MIB] [ROUNDS]\n");
        return 2;
    }
    size_t total = mib << 20;
    signal(SIGPIPE, SIG_IGN);
    uint8_t *buf = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (buf == MAP_FAILED) {
        die("mmap");
    }
    for (size_t i = 0; i < total; i += 4096) {
        buf[i] = (uint8_t)i;
    }
    double best[2] = { 1e9, 1e9 };
    bool copied = false;
    for (int r = 0; r < rounds; r++) {
        for (int zc = 0; zc < 2; zc++) {
            double t = round_trip(buf, total, zc, &copied);
            best[zc] = t < best[zc] ? t : best[zc];
        }
    }
    double plain = (double)mib / best[0], zc = (double)mib / best[1];
    printf("tcp-loopback-send       MiB/s %8.0f\n", plain);
    printf("tcp-loopback-zerocopy   MiB/s %8.0f ratio-to-send %5.2f kernel-copied %s\n", zc, zc / plain,
           copied ? "yes" : "no");
    return 0;
}
