/*
 * sockpeak: the machine's UNIX-stream-socket (or TCP loopback) throughput between two processes, the ceiling
 * against which migrate-bench.py and qemu-bench.py judge a migration. The parent writes 1 MiB chunks taken in
 * turn from a 1 GiB buffer, a forked child reads them into its own 1 GiB buffer; both buffers are touched before
 * the clock starts so that page faults are not measured. It prints one line, "unix-socket-peak-mibps N" (or
 * "tcp-loopback-peak-mibps N" over a TCP connection to 127.0.0.1), and is a measurement, not a test.
 *
 * Usage: sockpeak [TOTAL_GIB [unix|tcp]]   (how much to transfer, default 4; the transport, default unix)
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define CHUNK (1u << 20)
#define BUF_SIZE (1ull << 30)

static void *touched_buffer(void)
{
    void *p = mmap(NULL, BUF_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

    if (p == MAP_FAILED) {
        perror("sockpeak: mmap 1 GiB");
        return NULL;
    }
    /* Non-zero bytes, so that the pages are really allocated rather than mapped to the shared zero page. */
    memset(p, 0x5a, BUF_SIZE);
    return p;
}

static double now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* The child: read everything into its buffer, then report the byte count through its exit status. */
static int reader(int fd, uint64_t total)
{
    uint8_t *buf = touched_buffer();
    uint64_t got = 0, off = 0;
    char ready = 'r';

    if (!buf) {
        return 1;
    }
    /* Tell the writer that our buffer is ready, so that its clock does not include our set-up. */
    if (write(fd, &ready, 1) != 1) {
        perror("sockpeak: reader handshake");
        return 1;
    }
    while (got < total) {
        ssize_t n = read(fd, buf + off, CHUNK);

        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            fprintf(stderr, "sockpeak: reader: %s after %llu bytes\n", n < 0 ? strerror(errno) : "end of stream",
                    (unsigned long long)got);
            return 1;
        }
        got += (uint64_t)n;
        off = (off + (uint64_t)n) % BUF_SIZE;
        if (off > BUF_SIZE - CHUNK) {
            off = 0;
        }
    }
    /* Acknowledge the last byte so that the writer's time covers the whole transfer. */
    if (write(fd, &ready, 1) != 1) {
        perror("sockpeak: reader acknowledgement");
        return 1;
    }
    return 0;
}

static int writer(int fd, uint64_t total, const char *label)
{
    uint8_t *buf = touched_buffer();
    uint64_t sent = 0, off = 0;
    char c;
    double t0, t1;

    if (!buf) {
        return 1;
    }
    if (read(fd, &c, 1) != 1) {
        fprintf(stderr, "sockpeak: the reader did not start\n");
        return 1;
    }
    t0 = now();
    while (sent < total) {
        ssize_t n = write(fd, buf + off, CHUNK);

        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0) {
            perror("sockpeak: write");
            return 1;
        }
        sent += (uint64_t)n;
        off = (off + CHUNK) % BUF_SIZE;
    }
    if (read(fd, &c, 1) != 1) {
        fprintf(stderr, "sockpeak: no acknowledgement from the reader\n");
        return 1;
    }
    t1 = now();
    printf("%s %.0f\n", label, (double)total / (1 << 20) / (t1 - t0));
    return 0;
}

/* A listening TCP socket on 127.0.0.1 with a port the kernel picked (written to *addr), or -1. */
static int tcp_listener(struct sockaddr_in *addr)
{
    socklen_t len = sizeof(*addr);
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    memset(addr, 0, sizeof(*addr));
    addr->sin_family = AF_INET;
    addr->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || bind(fd, (struct sockaddr *)addr, sizeof(*addr)) < 0 || listen(fd, 1) < 0 ||
        getsockname(fd, (struct sockaddr *)addr, &len) < 0) {
        perror("sockpeak: TCP listener on 127.0.0.1");
        if (fd >= 0) {
            close(fd);
        }
        return -1;
    }
    return fd;
}

int main(int argc, char **argv)
{
    int sv[2], status = 0;
    uint64_t total_gib = 4;
    bool tcp = false;
    struct sockaddr_in addr;
    int lfd = -1;
    pid_t pid;
    int rc;

    if (argc > 3 || (argc >= 2 && (total_gib = strtoull(argv[1], NULL, 10)) == 0) ||
        (argc == 3 && strcmp(argv[2], "unix") != 0 && !(tcp = strcmp(argv[2], "tcp") == 0))) {
        fprintf(stderr, "usage: sockpeak [TOTAL_GIB [unix|tcp]]   (a positive number of GiB to transfer, default "
                "4; the transport, default unix)\n");
        return 2;
    }
    if (tcp) {
        /* The connection is made after the fork: the child connects, the parent accepts. */
        lfd = tcp_listener(&addr);
        if (lfd < 0) {
            return 1;
        }
    } else if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0) {
        perror("sockpeak: socketpair");
        return 1;
    }
    pid = fork();
    if (pid < 0) {
        perror("sockpeak: fork");
        return 1;
    }
    if (pid == 0) {
        if (tcp) {
            close(lfd);
            sv[1] = socket(AF_INET, SOCK_STREAM, 0);
            if (sv[1] < 0 || connect(sv[1], (struct sockaddr *)&addr, sizeof(addr)) < 0) {
                perror("sockpeak: connecting to 127.0.0.1");
                _exit(1);
            }
        } else {
            close(sv[0]);
        }
        _exit(reader(sv[1], total_gib << 30));
    }
    if (tcp) {
        sv[0] = accept(lfd, NULL, NULL);
        close(lfd);
        if (sv[0] < 0) {
            perror("sockpeak: accept");
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            return 1;
        }
    } else {
        close(sv[1]);
    }
    rc = writer(sv[0], total_gib << 30, tcp ? "tcp-loopback-peak-mibps" : "unix-socket-peak-mibps");
    if (rc != 0) {
        kill(pid, SIGKILL);
    }
    close(sv[0]);
    if (waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "sockpeak: the reader failed\n");
        return 1;
    }
    return rc;
}
