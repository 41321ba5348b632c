/*
 * zero-bench: the throughput of ferry's zero-page detection (ferry__buffer_is_zero) through each of its paths
 * (AVX-512, AVX2, SSE2, plain C), next to memcpy of the same buffer measured in the same run, so that the cost of
 * asking "is this page zero?" of every page sent can be judged against the cost of moving the bytes at all. The
 * cases: a 1 GiB zero buffer in one call (the loop at memory bandwidth), the same buffer in 4 KiB pages, one call
 * per page (what the source does), 1 GiB of random pages one by one (a data page is answered after its first and
 * last bytes, so this measures the early exit: GB/s of pages classified, far above memory bandwidth), and one zero
 * page in cache asked about over and over (the loop's own speed, where memory does not limit it). Every buffer is
 * written before the clock starts, so page faults are not measured; each figure is the best of several passes.
 * It is a measurement, not a test; it exits non-zero only if a path gives a wrong answer or memory cannot be had.
 *
 * Usage: zero-bench [PASSES [MIB]]   (default 5 passes over 1024 MiB)
 * Output: one line per figure, "NAME GB/s X.XX ratio-to-memcpy Y.YY" (GB = 10^9 bytes; the ratio is to the
 * memcpy line, which comes first); a path this CPU lacks gets a line saying so.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "ram/ram.h"
#include "util/util.h"

#define PAGE 4096

/* Results go here so that the compiler cannot drop the work that produced them. */
static volatile size_t sink;

typedef enum Case { CASE_MEMCPY, CASE_WHOLE, CASE_PAGES, CASE_HOT } Case;

/* One run of @c over @size bytes at @buf; returns how many pages (or calls) said zero, to be checked. */
static size_t run_case(Case c, const uint8_t *buf, uint8_t *dst, size_t size)
{
    size_t zero = 0;
    switch (c) {
    case CASE_MEMCPY:
        memcpy(dst, buf, size);
        return dst[size / 2];
    case CASE_WHOLE:
        return ferry__buffer_is_zero(buf, size);
    case CASE_PAGES:
        for (size_t off = 0; off < size; off += PAGE) {
            zero += ferry__buffer_is_zero(buf + off, PAGE);
        }
        return zero;
    case CASE_HOT:
        /* The same page @size / PAGE times: it stays in L1. */
        for (size_t off = 0; off < size; off += PAGE) {
            zero += ferry__buffer_is_zero(buf, PAGE);
        }
        return zero;
    }
    return 0;
}

/* Best time in ns of @passes runs; fails the program if a run's answer is not @want. */
static int64_t best_ns(const char *name, Case c, int passes, const uint8_t *buf, uint8_t *dst, size_t size,
                       size_t want)
{
    int64_t best = INT64_MAX;
    for (int i = 0; i < passes; i++) {
        int64_t t0 = ferry__clock_ns();
        size_t got = run_case(c, buf, dst, size);
        int64_t dt = ferry__clock_ns() - t0;
        sink = got;
        if (c != CASE_MEMCPY && got != want) {
            fprintf(stderr, "zero-bench: %s: %zu zero answers, expected %zu\n", name, got, want);
            exit(1);
        }
        best = FERRY_MIN(best, dt);
    }
    return best > 0 ? best : 1;
}

static void report(const char *name, size_t bytes, int64_t ns, int64_t memcpy_ns)
{
    printf("%-24s GB/s %7.2f ratio-to-memcpy %6.2f\n", name, (double)bytes / (double)ns,
           (double)memcpy_ns / (double)ns);
    fflush(stdout);
}

static uint8_t *map(size_t size)
{
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

static const struct {
    const char *name;
    FerryZeroImpl impl;
} paths[] = {
    { "avx512", FERRY_ZERO_AVX512 },
    { "avx2", FERRY_ZERO_AVX2 },
    { "sse2", FERRY_ZERO_SSE2 },
    { "c", FERRY_ZERO_C },
};

int main(int argc, char **argv)
{
    int passes = 5;
    long mib = 1024;
    if (argc > 1) {
        passes = atoi(argv[1]);
    }
    if (argc > 2) {
        mib = atol(argv[2]);
    }
    if (argc > 3 || passes < 1 || mib < 1) {
        fprintf(stderr, "usage: zero-bench [PASSES [MIB]]   (PASSES >= 1, MIB >= 1)\n");
        return 2;
    }
    size_t size = (size_t)mib << 20;
    size_t npages = size / PAGE;
    uint8_t *zero = map(size), *other = map(size);
    if (!zero || !other) {
        fprintf(stderr, "zero-bench: cannot map 2 x %ld MiB\n", mib);
        return 1;
    }
    /* Written before timing: the zero buffer with zeros (a write fault allocates a real page, so this is RAM, not
     * the kernel's shared zero page), the memcpy destination with anything. */
    memset(zero, 0, size);
    memset(other, 1, size);

    int64_t memcpy_ns = best_ns("memcpy", CASE_MEMCPY, passes, zero, other, size, 0);
    report("memcpy", size, memcpy_ns, memcpy_ns);

    /* The memcpy destination becomes the random pages. */
    uint64_t x = 0x9E3779B97F4A7C15ull;
    for (size_t i = 0; i < size; i += 8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        memcpy(other + i, &x, 8);
    }

    for (size_t i = 0; i < FERRY_ARRAY_SIZE(paths); i++) {
        char name[48];
        if (!ferry__zero_available(paths[i].impl)) {
            printf("zero-%s unavailable on this CPU (or not an x86-64 build)\n", paths[i].name);
            continue;
        }
        ferry__zero_limit(paths[i].impl);
        snprintf(name, sizeof(name), "zero-%s", paths[i].name);
        report(name, size, best_ns(name, CASE_WHOLE, passes, zero, NULL, size, 1), memcpy_ns);
        snprintf(name, sizeof(name), "zero-%s-pages", paths[i].name);
        report(name, size, best_ns(name, CASE_PAGES, passes, zero, NULL, size, npages), memcpy_ns);
        snprintf(name, sizeof(name), "zero-%s-random-pages", paths[i].name);
        report(name, size, best_ns(name, CASE_PAGES, passes, other, NULL, size, 0), memcpy_ns);
        snprintf(name, sizeof(name), "zero-%s-hot-page", paths[i].name);
        report(name, size, best_ns(name, CASE_HOT, passes, zero, NULL, size, npages), memcpy_ns);
    }
    munmap(zero, size);
    munmap(other, size);
    return 0;
}
