/*
 * harvest-bench: what transparent huge pages do to the source's dirty tracking (docs/memory.md, "Huge pages on
 * the source"). One RAM block of --size MiB is filled either in 4 KiB pages (MADV_NOHUGEPAGE) or in transparent
 * huge pages (MADV_HUGEPAGE, where the kernel gives them; the AnonHugePages it got are printed), the uffd-wp
 * tracker is started, and then, round after round, W pages spread over the block are written (one byte each, a
 * different page of a different huge page every time) and the block is harvested: it prints, per kind, the time
 * of the tracker's start, of the first harvest (which splits the huge pages that were written) and the median of
 * the later ones, and how many pages the harvests reported against the pages written: with 4 KiB granularity the
 * two are equal. It is a measurement, not a test; it exits non-zero only if a harvest misses a written page.
 *
 * Usage: harvest-bench [MIB [WRITES [ROUNDS]]]   (default 1024 MiB, 256 writes, 9 rounds)
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "ram/ram.h"
#include "util/bitmap.h"
#include "util/util.h"

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* AnonHugePages of the mapping that starts at @start, in MiB. */
static unsigned long anon_huge_mib(const void *start)
{
    FILE *f = fopen("/proc/self/smaps", "r");
    char line[256];
    int in = 0;
    unsigned long kb = 0, lo, hi;
    if (!f) {
        return 0;
    }
    while (fgets(line, sizeof(line), f)) {
        if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2) {
            in = lo == (uintptr_t)start;
        } else if (in && sscanf(line, "AnonHugePages: %lu kB", &lo) == 1) {
            kb = lo;
        }
    }
    fclose(f);
    return kb >> 10;
}

static int run(int huge, size_t mib, size_t writes, int rounds)
{
    size_t ps = ferry_ram_page_size(), size = mib << 20, n = size / ps, per = (2u << 20) / ps;
    FerryError *err = NULL;
    FerryRamBlock *b = ferry__ram_block_new("ram", size, &err);
    if (!b) {
        fprintf(stderr, "harvest-bench: %s\n", ferry_error_msg(err));
        return 1;
    }
    (void)madvise(b->host, size, huge ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
    memset(b->host, 0x5a, size);
    unsigned long got_huge = anon_huge_mib(b->host);
    unsigned long *map = ferry__bitmap_new(n);
    double t0 = now_ms();
    FerryDirtyTracker *t = ferry__tracker_start(FERRY_TRACKER_UFFD_WP, &b, 1, &err);
    double start_ms = now_ms() - t0;
    if (!t) {
        fprintf(stderr, "harvest-bench: %s\n", ferry_error_msg(err));
        return 1;
    }
    ferry__tracker_harvest(t, b, map, NULL); /* nothing written yet */
    double times[64], wtimes[64];
    size_t reported = 0, written = 0;
    int bad = 0;
    uint64_t x = 0x9e3779b97f4a7c15ULL;
    for (int r = 0; r < rounds; r++) {
        ferry__bitmap_zero(map, n);
        double w0 = now_ms();
        for (size_t w = 0; w < writes; w++) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            size_t h = (size_t)(x % (n / per)), page = h * per + (size_t)((x >> 32) % per);
            b->host[page * ps] ^= 1;
            if (!ferry__bitmap_test(map, page)) {
                ferry__bitmap_set(map, page); /* what must be reported */
            }
        }
        wtimes[r] = (now_ms() - w0) * 1000.0 / (double)writes;
        size_t want = ferry__bitmap_count(map, n);
        unsigned long *expect = ferry__bitmap_new(n);
        memcpy(expect, map, FERRY_DIV_ROUND_UP(n, 64) * 8);
        ferry__bitmap_zero(map, n);
        double h0 = now_ms();
        ferry__tracker_harvest(t, b, map, NULL);
        times[r] = now_ms() - h0;
        for (size_t p = 0; p < n; p++) {
            if (ferry__bitmap_test(expect, p) && !ferry__bitmap_test(map, p)) {
                bad = 1;
            }
        }
        reported += ferry__bitmap_count(map, n);
        written += want;
        free(expect);
    }
    double first = times[0], wfirst = wtimes[0];
    qsort(times + 1, (size_t)rounds - 1, sizeof(double), cmp_double);
    qsort(wtimes + 1, (size_t)rounds - 1, sizeof(double), cmp_double);
    printf("%-5s %5zu MiB, %5lu MiB of it in huge pages at start: tracker start %7.2f ms, first harvest %7.2f ms, "
           "later harvests (median) %7.2f ms; a write %.2f us in the first round, %.2f later; pages reported %zu "
           "for %zu written (%.2f each)%s\n",
           huge ? "thp" : "4k", mib, got_huge, start_ms, first, times[1 + (rounds - 1) / 2], wfirst,
           wtimes[1 + (rounds - 1) / 2], reported, written,
           (double)reported / (double)written, bad ? "; A WRITTEN PAGE WAS MISSED" : "");
    ferry__tracker_stop(t);
    free(map);
    ferry__ram_block_free(b);
    return bad;
}

int main(int argc, char **argv)
{
    size_t mib = argc > 1 ? strtoul(argv[1], NULL, 0) : 1024, writes = argc > 2 ? strtoul(argv[2], NULL, 0) : 256;
    int rounds = argc > 3 ? atoi(argv[3]) : 9;
    if (mib < 2 || writes < 1 || rounds < 2 || rounds > 64) {
        fprintf(stderr, "usage: harvest-bench [MIB [WRITES [ROUNDS 2-64]]]\n");
        return 2;
    }
    FerryError *err = NULL;
    if (!ferry__tracker_uffd_wp_probe(&err)) {
        fprintf(stderr, "harvest-bench: userfaultfd write-protect unavailable: %s\n", ferry_error_msg(err));
        return 1;
    }
    int bad = 0;
    for (int i = 0; i < 4; i++) {
        bad |= run(i % 2, mib, writes, rounds);
    }
    return bad;
}
