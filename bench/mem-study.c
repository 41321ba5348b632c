/*
 * mem-study: what filling a destination's fresh RAM costs on this machine, for each kind of backing and each way
 * ferry can fill it, measured in one run against the limits of the same run (docs/memory.md, "Fresh memory").
 *
 * Backings (each measurement maps a new one of --size MiB and unmaps it after, so every page starts unpopulated):
 *   anon-4k     anonymous private memory with MADV_NOHUGEPAGE (4 KiB pages only)
 *   anon-thp    anonymous private memory, 2 MiB aligned, MADV_HUGEPAGE (transparent huge pages where the
 *               kernel can find them)
 *   memfd       a memfd mapped shared (shmem; huge pages only if shmem_enabled allows, which is printed)
 *   memfd-thp   the same with MADV_HUGEPAGE (takes effect with shmem_enabled=advise or always)
 *   hugetlb     a memfd with MFD_HUGETLB (2 MiB pages), only if the kernel has enough free huge pages reserved
 *               (HugePages_Free; --reserve N as root reserves N MiB for the run and gives them back)
 * Ways to fill it:
 *   touch       memset the whole mapping: a page fault per page (per huge page where there are huge pages)
 *   populate1   MADV_POPULATE_WRITE of the whole mapping from one thread (no data written)
 *   populate2   the same split between two threads
 *   rewrite     memset again after populate1: writing memory that is already populated (the "faulted-in" limit)
 *   recv-place  read() from a UNIX socket straight into the mapping, 1 MiB per read (the kernel copies into RAM
 *               and takes the page faults)
 *   recv-buf    read() into a 256 KiB buffer, then memcpy into the mapping (ferry's receive path with the
 *               record checksum on: the copy into RAM is the one that faults)
 *   recv-bufpop recv-buf, with MADV_POPULATE_WRITE of each 256 KiB of the mapping before the memcpy into it (one
 *               call faults the piece in, instead of a fault per page during the copy)
 *   recv-ahead  recv-place with a second thread populating the mapping ahead of the reader, 2 MiB at a time
 *               (ferry's default destination: the populate thread runs ahead of the data)
 *   recv-uffd   read() into a 256 KiB buffer, then UFFDIO_COPY of it into the mapping, registered with a
 *               userfaultfd for missing pages: the kernel allocates each page and copies into it without
 *               zeroing it first and without a page fault (anonymous backings only)
 *   recv-warm   recv-place into a mapping populated beforehand, untimed (a -mem-prealloc destination)
 * Limits, same run: "socket" reads the same bytes from the socket into one 1 MiB buffer (the transport alone);
 * "rewrite" above is memory bandwidth into populated RAM.
 * The writer for the recv ways is a child process writing --size MiB from a 1 MiB buffer of random bytes.
 *
 * --settle S sleeps S seconds before each measurement. On a guest whose kernel reports free memory to the
 * hypervisor (virtio-balloon free page reporting: free blocks of 2^page_reporting_order pages, after about 2 s),
 * memory freed longer ago than that is no longer backed by the host, and its first touch costs a fault in the
 * host too; --settle 0 measures memory the previous measurement just freed, --settle 3 memory handed back.
 *
 * Each (backing, way) runs --repeat times, in an order that rotates each round; it prints the median GiB/s,
 * the median CPU seconds of this process (user + system, all threads) per GiB, and the ratio of the median to the
 * limit of its kind. It asserts nothing: it is a measurement, run by bench/run.sh --mem-study.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif
#ifndef MFD_HUGETLB
#define MFD_HUGETLB 0x0004U
#endif

#define MIB (1ULL << 20)
#define HUGE (2 * MIB)
#define MAX_RUNS 32

enum { B_ANON4K, B_ANONTHP, B_MEMFD, B_MEMFDTHP, B_HUGETLB, NBACK };
static const char *const back_names[NBACK] = { "anon-4k", "anon-thp", "memfd", "memfd-thp", "hugetlb" };
enum { W_TOUCH, W_POP1, W_POP2, W_REWRITE, W_RECV_PLACE, W_RECV_BUF, W_RECV_BUFPOP, W_RECV_AHEAD, W_RECV_UFFD,
       W_RECV_WARM, W_SOCKET, NWAY };
static const char *const way_names[NWAY] = { "touch",      "populate1",  "populate2",  "rewrite",
                                             "recv-place", "recv-buf",   "recv-bufpop", "recv-ahead",
                                             "recv-uffd",  "recv-warm",  "socket" };

typedef struct Mapping {
    uint8_t *base; /* what was mmapped (for munmap) */
    size_t len;
    uint8_t *p; /* the aligned start, size bytes */
    int fd;
} Mapping;

static size_t size_bytes;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
           (double)ru.ru_stime.tv_usec / 1e6;
}

static void die(const char *what)
{
    fprintf(stderr, "mem-study: %s: %s\n", what, strerror(errno));
    exit(1);
}

/* A fresh mapping of @b, or false (hugetlb without enough free huge pages). */
static bool map_new(int b, Mapping *m)
{
    memset(m, 0, sizeof(*m));
    m->fd = -1;
    if (b == B_ANON4K || b == B_ANONTHP) {
        /* Over-map by one huge page and start at a 2 MiB boundary, as a huge page needs an aligned range. */
        m->len = size_bytes + HUGE;
        m->base = mmap(NULL, m->len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (m->base == MAP_FAILED) {
            die("mmap");
        }
        m->p = (uint8_t *)(((uintptr_t)m->base + HUGE - 1) & ~(uintptr_t)(HUGE - 1));
        if (madvise(m->p, size_bytes, b == B_ANONTHP ? MADV_HUGEPAGE : MADV_NOHUGEPAGE) != 0) {
            die("madvise(HUGEPAGE)");
        }
        return true;
    }
    m->fd = memfd_create("mem-study", MFD_CLOEXEC | (b == B_HUGETLB ? MFD_HUGETLB : 0));
    if (m->fd < 0) {
        if (b == B_HUGETLB) {
            return false;
        }
        die("memfd_create");
    }
    if (ftruncate(m->fd, (off_t)size_bytes) != 0) {
        die("ftruncate");
    }
    m->len = size_bytes;
    m->base = mmap(NULL, m->len, PROT_READ | PROT_WRITE, MAP_SHARED, m->fd, 0);
    if (m->base == MAP_FAILED) {
        if (b == B_HUGETLB) {
            close(m->fd);
            return false;
        }
        die("mmap memfd");
    }
    m->p = m->base;
    if (b == B_MEMFDTHP && madvise(m->p, size_bytes, MADV_HUGEPAGE) != 0) {
        die("madvise(HUGEPAGE) on the memfd");
    }
    return true;
}

/* The writer is forked while the mapping exists: without MADV_DONTFORK the fork would share the mapping's pages
 * copy-on-write, and every later write here would copy a page (QEMU marks its RAM so for the same reason). */
static void dontfork(Mapping *m)
{
    if (madvise(m->base, m->len, MADV_DONTFORK) != 0) {
        die("madvise(DONTFORK)");
    }
}

static void map_free(Mapping *m)
{
    munmap(m->base, m->len);
    if (m->fd >= 0) {
        close(m->fd);
    }
}

static void populate(uint8_t *p, size_t len)
{
    for (size_t off = 0; off < len; off += 64 * MIB) {
        size_t n = len - off < 64 * MIB ? len - off : 64 * MIB;
        if (madvise(p + off, n, MADV_POPULATE_WRITE) != 0) {
            die("MADV_POPULATE_WRITE");
        }
    }
}

typedef struct PopArg {
    uint8_t *p;
    size_t len;
} PopArg;

static void *pop_thread(void *opaque)
{
    PopArg *a = opaque;
    populate(a->p, a->len);
    return NULL;
}

/* The populate thread of recv-ahead: 2 MiB at a time, skipping what the reader has reached. */
typedef struct Ahead {
    uint8_t *p;
    size_t len;
    size_t reader; /* atomic: bytes the reader has received */
} Ahead;

static void *ahead_thread(void *opaque)
{
    Ahead *a = opaque;
    for (size_t off = 0; off < a->len; off += HUGE) {
        size_t r = __atomic_load_n(&a->reader, __ATOMIC_RELAXED);
        if (r > off) {
            off = r & ~(HUGE - 1);
            continue;
        }
        if (madvise(a->p + off, HUGE, MADV_POPULATE_WRITE) != 0) {
            die("MADV_POPULATE_WRITE ahead");
        }
    }
    return NULL;
}

/* A child writing size_bytes into @fd from a 1 MiB buffer of random bytes. */
static pid_t writer_start(int fd)
{
    pid_t pid = fork();
    if (pid < 0) {
        die("fork");
    }
    if (pid == 0) {
        uint8_t *buf = malloc(MIB);
        uint64_t x = 0x9e3779b97f4a7c15ULL;
        for (size_t i = 0; i < MIB; i += 8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            memcpy(buf + i, &x, 8);
        }
        size_t left = size_bytes;
        while (left) {
            ssize_t n = write(fd, buf + (size_bytes - left) % MIB, left < MIB ? left : MIB);
            if (n < 0 && errno == EINTR) {
                continue;
            }
            if (n <= 0) {
                _exit(1);
            }
            left -= (size_t)n;
        }
        _exit(0);
    }
    return pid;
}

static void read_full(int fd, uint8_t *dst, size_t len)
{
    while (len) {
        ssize_t n = read(fd, dst, len);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            die("read");
        }
        dst += n;
        len -= (size_t)n;
    }
}

/* One measurement: seconds of wall clock into *wall, CPU seconds into *cpu; false if the backing is missing. */
static bool run_one(int b, int w, double *wall, double *cpu)
{
    Mapping m;
    if (w != W_SOCKET && !map_new(b, &m)) {
        return false;
    }
    if (w != W_SOCKET) {
        dontfork(&m);
    }
    if (w == W_REWRITE || w == W_RECV_WARM) {
        populate(m.p, size_bytes);
    }
    int sv[2] = { -1, -1 };
    pid_t child = -1;
    static uint8_t *buf;
    if (!buf) {
        buf = aligned_alloc(4096, MIB);
        memset(buf, 1, MIB);
    }
    if (w >= W_RECV_PLACE) {
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
            die("socketpair");
        }
        child = writer_start(sv[1]);
        close(sv[1]);
    }
    double c0 = cpu_s(), t0 = now_s();
    switch (w) {
    case W_TOUCH:
    case W_REWRITE:
        memset(m.p, 0x5a, size_bytes);
        break;
    case W_POP1:
        populate(m.p, size_bytes);
        break;
    case W_POP2: {
        pthread_t t;
        PopArg a = { m.p + size_bytes / 2, size_bytes - size_bytes / 2 };
        pthread_create(&t, NULL, pop_thread, &a);
        populate(m.p, size_bytes / 2);
        pthread_join(t, NULL);
        break;
    }
    case W_RECV_PLACE:
    case W_RECV_WARM:
        for (size_t off = 0; off < size_bytes; off += MIB) {
            read_full(sv[0], m.p + off, MIB);
        }
        break;
    case W_RECV_BUF:
        for (size_t off = 0; off < size_bytes; off += 256 * 1024) {
            read_full(sv[0], buf, 256 * 1024);
            memcpy(m.p + off, buf, 256 * 1024);
        }
        break;
    case W_RECV_BUFPOP:
        for (size_t off = 0; off < size_bytes; off += 256 * 1024) {
            read_full(sv[0], buf, 256 * 1024);
            if (madvise(m.p + off, 256 * 1024, MADV_POPULATE_WRITE) != 0) {
                die("MADV_POPULATE_WRITE");
            }
            memcpy(m.p + off, buf, 256 * 1024);
        }
        break;
    case W_RECV_AHEAD: {
        pthread_t t;
        Ahead a = { .p = m.p, .len = size_bytes };
        pthread_create(&t, NULL, ahead_thread, &a);
        for (size_t off = 0; off < size_bytes; off += MIB) {
            read_full(sv[0], m.p + off, MIB);
            __atomic_store_n(&a.reader, off + MIB, __ATOMIC_RELAXED);
        }
        pthread_join(t, NULL);
        break;
    }
    case W_RECV_UFFD: {
        int uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC);
        struct uffdio_api api = { .api = UFFD_API };
        struct uffdio_register reg = { .range = { (uintptr_t)m.p, size_bytes }, .mode = UFFDIO_REGISTER_MODE_MISSING };
        if (uffd < 0 || ioctl(uffd, UFFDIO_API, &api) != 0 || ioctl(uffd, UFFDIO_REGISTER, &reg) != 0) {
            die("userfaultfd");
        }
        for (size_t off = 0; off < size_bytes; off += 256 * 1024) {
            read_full(sv[0], buf, 256 * 1024);
            struct uffdio_copy cp = { .dst = (uintptr_t)(m.p + off), .src = (uintptr_t)buf, .len = 256 * 1024 };
            if (ioctl(uffd, UFFDIO_COPY, &cp) != 0) {
                die("UFFDIO_COPY");
            }
        }
        close(uffd);
        break;
    }
    case W_SOCKET:
        for (size_t off = 0; off < size_bytes; off += MIB) {
            read_full(sv[0], buf, MIB);
        }
        break;
    }
    *wall = now_s() - t0;
    *cpu = cpu_s() - c0;
    if (child > 0) {
        int st;
        waitpid(child, &st, 0);
        close(sv[0]);
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            fprintf(stderr, "mem-study: the writer failed\n");
            exit(1);
        }
    }
    if (w != W_SOCKET) {
        map_free(&m);
    }
    return true;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    double s[MAX_RUNS];
    memcpy(s, v, (size_t)n * sizeof(*v));
    qsort(s, (size_t)n, sizeof(*s), cmp_double);
    return n % 2 ? s[n / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
}

static void print_file(const char *label, const char *path)
{
    char line[256] = "(unreadable)";
    FILE *f = fopen(path, "r");
    if (f) {
        if (!fgets(line, sizeof(line), f)) {
            strcpy(line, "(empty)");
        }
        fclose(f);
    }
    line[strcspn(line, "\n")] = 0;
    printf("%s: %s\n", label, line);
}

static long read_long(const char *path)
{
    long v = -1;
    FILE *f = fopen(path, "r");
    if (f) {
        if (fscanf(f, "%ld", &v) != 1) {
            v = -1;
        }
        fclose(f);
    }
    return v;
}

static bool write_long(const char *path, long v)
{
    FILE *f = fopen(path, "w");
    if (!f) {
        return false;
    }
    bool ok = fprintf(f, "%ld\n", v) > 0;
    return fclose(f) == 0 && ok;
}

/* Whether way @w is in the comma-separated list @ways (all when NULL; socket and rewrite always, as limits). */
static bool way_wanted(const char *ways, int w)
{
    if (!ways || w == W_SOCKET || w == W_REWRITE) {
        return true;
    }
    char list[256], name[32];
    snprintf(list, sizeof(list), ",%s,", ways);
    snprintf(name, sizeof(name), ",%s,", way_names[w]);
    return strstr(list, name) != NULL;
}

static const char *const NR_HUGE = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages";
static long saved_nr_huge = -1;

static void restore_huge(void)
{
    if (saved_nr_huge >= 0) {
        write_long(NR_HUGE, saved_nr_huge);
    }
}

int main(int argc, char **argv)
{
    size_t mib = 1024;
    int repeat = 3;
    long reserve = 0;
    const char *only = NULL, *ways = NULL;
    double settle = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--size") == 0 && i + 1 < argc) {
            mib = strtoull(argv[++i], NULL, 0);
        } else if (strcmp(argv[i], "--repeat") == 0 && i + 1 < argc) {
            repeat = atoi(argv[++i]);
        } else if (strcmp(argv[i], "--reserve") == 0 && i + 1 < argc) {
            reserve = atol(argv[++i]);
        } else if (strcmp(argv[i], "--backings") == 0 && i + 1 < argc) {
            only = argv[++i];
        } else if (strcmp(argv[i], "--ways") == 0 && i + 1 < argc) {
            ways = argv[++i];
        } else if (strcmp(argv[i], "--settle") == 0 && i + 1 < argc) {
            settle = atof(argv[++i]);
        } else {
            fprintf(stderr, "usage: mem-study [--size MiB] [--repeat N] [--reserve MiB] [--backings a,b,...]\n"
                            "                 [--ways a,b,...]\n"
                            "                 [--settle SECONDS]\n"
                            "backings: anon-4k anon-thp memfd memfd-thp hugetlb\n");
            return 2;
        }
    }
    if (mib < 2 || mib % 2 || repeat < 1 || repeat > MAX_RUNS) {
        fprintf(stderr, "mem-study: --size must be an even number of MiB, --repeat 1-%d\n", MAX_RUNS);
        return 2;
    }
    size_bytes = mib * MIB;
    if (reserve > 0) {
        saved_nr_huge = read_long(NR_HUGE);
        if (saved_nr_huge < 0 || !write_long(NR_HUGE, saved_nr_huge + reserve / 2)) {
            fprintf(stderr, "mem-study: could not reserve %ld MiB of huge pages in %s (root is needed)\n", reserve,
                    NR_HUGE);
            saved_nr_huge = -1;
        } else {
            atexit(restore_huge);
        }
    }
    print_file("transparent_hugepage/enabled", "/sys/kernel/mm/transparent_hugepage/enabled");
    print_file("transparent_hugepage/defrag", "/sys/kernel/mm/transparent_hugepage/defrag");
    print_file("transparent_hugepage/shmem_enabled", "/sys/kernel/mm/transparent_hugepage/shmem_enabled");
    printf("2 MiB huge pages: %ld reserved, %ld free\n", read_long(NR_HUGE),
           read_long("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages"));
    print_file("page_reporting_order", "/sys/module/page_reporting/parameters/page_reporting_order");
    printf("size %zu MiB, %d runs each, order rotating per round, %.1f s idle before each\n\n", mib, repeat,
           settle);
    fflush(stdout);

    static double wall[NBACK][NWAY][MAX_RUNS], cpu[NBACK][NWAY][MAX_RUNS];
    bool missing[NBACK] = { false };
    bool want[NBACK];
    for (int b = 0; b < NBACK; b++) {
        want[b] = !only || strstr(only, back_names[b]) != NULL;
        /* "memfd" is a prefix of "memfd-thp": match whole names. */
        if (only && b == B_MEMFD) {
            char list[256];
            snprintf(list, sizeof(list), ",%s,", only);
            want[b] = strstr(list, ",memfd,") != NULL;
        }
        if (only && b == B_ANON4K) {
            want[b] = strstr(only, "anon-4k") != NULL;
        }
    }
    for (int r = 0; r < repeat; r++) {
        for (int k = 0; k < NBACK * NWAY; k++) {
            int idx = (k + r * 7) % (NBACK * NWAY);
            int b = idx / NWAY, w = idx % NWAY;
            if (!want[b] || missing[b] || (w == W_SOCKET && b != 0) || !way_wanted(ways, w) ||
                (w == W_RECV_UFFD && b > B_ANONTHP)) {
                continue;
            }
            if (settle > 0) {
                struct timespec ts = { (time_t)settle, (long)((settle - (double)(time_t)settle) * 1e9) };
                nanosleep(&ts, NULL);
            }
            if (!run_one(b, w, &wall[b][w][r], &cpu[b][w][r])) {
                missing[b] = true;
            }
        }
    }
    double sock = 0;
    double t[MAX_RUNS], c[MAX_RUNS];
    for (int r = 0; r < repeat; r++) {
        t[r] = wall[0][W_SOCKET][r];
    }
    if (want[0]) {
        sock = (double)size_bytes / (1 << 30) / median(t, repeat);
    }
    double gib = (double)size_bytes / (1 << 30);
    printf("%-10s %-11s %9s %11s %11s   %s\n", "backing", "way", "GiB/s", "CPU s/GiB", "of limit", "runs (GiB/s)");
    for (int b = 0; b < NBACK; b++) {
        if (!want[b]) {
            continue;
        }
        if (missing[b]) {
            printf("%-10s (not measured: %s)\n", back_names[b],
                   b == B_HUGETLB ? "no free 2 MiB huge pages; --reserve MiB as root" : "mapping failed");
            continue;
        }
        for (int r = 0; r < repeat; r++) {
            t[r] = wall[b][W_REWRITE][r];
        }
        double rewrite = gib / median(t, repeat);
        for (int w = 0; w < NWAY; w++) {
            if ((w == W_SOCKET && b != 0) || !way_wanted(ways, w) || (w == W_RECV_UFFD && b > B_ANONTHP)) {
                continue;
            }
            for (int r = 0; r < repeat; r++) {
                t[r] = wall[b][w][r];
                c[r] = cpu[b][w][r];
            }
            double rate = gib / median(t, repeat);
            char runs[256] = "";
            for (int r = 0; r < repeat; r++) {
                size_t l = strlen(runs);
                snprintf(runs + l, sizeof(runs) - l, "%s%.2f", r ? " " : "", gib / t[r]);
            }
            char ratio[32] = "-";
            if (w >= W_RECV_PLACE && w != W_SOCKET && sock > 0) {
                snprintf(ratio, sizeof(ratio), "%.2f socket", rate / sock);
            } else if (w <= W_POP2) {
                snprintf(ratio, sizeof(ratio), "%.2f rewrite", rate / rewrite);
            }
            printf("%-10s %-11s %9.2f %11.2f %11s   %s\n", back_names[b], way_names[w], rate,
                   median(c, repeat) / gib, ratio, runs);
        }
    }
    printf("\n\"of limit\": the median over the same run's socket line (recv ways) or over the same backing's "
           "rewrite line (touch, populate)\n");
    return 0;
}
