/*
 * crc32c-bench: the throughput of ferry's CRC32C through each of its paths (folding with VPCLMULQDQ, the crc32
 * instruction, the table), and of copy-and-checksum in one pass, next to memcpy measured in the same run, so that
 * the cost of checksumming every record can be judged against the cost of moving the bytes at all on this
 * machine. Four working sets: a 64 MiB buffer (read from memory, as the source reads RAM it has not touched for a
 * while), a 1 MiB one (in cache, as the destination checksums a run it has just received), 256 KiB (a received
 * piece, ferry__crc32c_chunk) and 32 KiB (in the first-level cache: the speed of the code itself, which memory
 * cannot limit). Each figure is the best of several passes over buffers touched before the clock starts (page
 * faults are not measured). It is a measurement, not a test; it exits non-zero only if two paths disagree or
 * memory cannot be had.
 *
 * Usage: crc32c-bench [PASSES]   (default 5)
 * Output: one line per method and working set, "NAME GB/s X.XX ratio-to-memcpy Y.YY" (GB = 10^9 bytes); the
 * cold memcpy line comes first and is named plain "memcpy" (bench/migrate-bench.py reads it).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/util.h"

#define COLD_SIZE (64u << 20)
#define HOT_SIZE (1u << 20)

/* Results go here so that the compiler cannot drop the work that produced them. */
static volatile uint32_t sink;

typedef enum Method { METHOD_MEMCPY, METHOD_CRC, METHOD_COPY_CRC } Method;

/* Best time in ns of @passes runs of @method over @size bytes (repeated @reps times per run, so that the hot
 * working set is timed over as many bytes as the cold one). */
static int64_t best_ns(Method method, int passes, const uint8_t *src, uint8_t *dst, size_t size, int reps)
{
    int64_t best = INT64_MAX;
    for (int i = 0; i < passes; i++) {
        int64_t t0 = ferry__clock_ns();
        for (int r = 0; r < reps; r++) {
            switch (method) {
            case METHOD_MEMCPY:
                memcpy(dst, src, size);
                sink = dst[size / 2];
                break;
            case METHOD_CRC:
                sink = ferry__crc32c(0, src, size);
                break;
            case METHOD_COPY_CRC:
                sink = ferry__crc32c_copy(0, dst, src, size);
                break;
            }
        }
        int64_t dt = ferry__clock_ns() - t0;
        best = FERRY_MIN(best, dt);
    }
    return best > 0 ? best : 1;
}

static void report(const char *name, const char *set, size_t bytes, int64_t ns, int64_t memcpy_ns)
{
    char label[64];
    snprintf(label, sizeof(label), "%s%s", name, set);
    printf("%-20s GB/s %6.2f ratio-to-memcpy %5.2f\n", label, (double)bytes / (double)ns,
           (double)memcpy_ns / (double)ns);
}

static const struct {
    const char *name;
    FerryCrc32cImpl impl;
} paths[] = {
    { "crc32c-fold", FERRY_CRC32C_FOLD },
    { "crc32c-hw", FERRY_CRC32C_HW },
    { "crc32c-sw", FERRY_CRC32C_SW },
};

int main(int argc, char **argv)
{
    int passes = 5;
    if (argc > 1) {
        passes = atoi(argv[1]);
        if (passes < 1) {
            fprintf(stderr, "usage: crc32c-bench [PASSES]   (PASSES >= 1)\n");
            return 2;
        }
    }
    uint8_t *src = malloc(COLD_SIZE);
    uint8_t *dst = malloc(COLD_SIZE);
    if (!src || !dst) {
        fprintf(stderr, "crc32c-bench: cannot allocate 2 x 64 MiB\n");
        return 1;
    }
    /* Pseudo-random content (the CRC does not care, but it keeps the pages really allocated), and the destination
     * touched so that memcpy is not charged for first-touch faults. */
    uint64_t x = 0x9E3779B97F4A7C15ull;
    for (size_t i = 0; i < COLD_SIZE; i += 8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        memcpy(src + i, &x, 8);
    }
    memset(dst, 1, COLD_SIZE);

    uint32_t want = ferry__crc32c_sw(0, src, COLD_SIZE);
    for (size_t i = 0; i < FERRY_ARRAY_SIZE(paths); i++) {
        if (!ferry__crc32c_available(paths[i].impl)) {
            continue;
        }
        ferry__crc32c_limit(paths[i].impl);
        uint32_t got = ferry__crc32c(0, src, COLD_SIZE), copied = ferry__crc32c_copy(0, dst, src, COLD_SIZE);
        if (got != want || copied != want || memcmp(dst, src, COLD_SIZE) != 0) {
            fprintf(stderr, "crc32c-bench: %s gives 0x%08x (0x%08x copying), the table 0x%08x\n", paths[i].name, got,
                    copied, want);
            return 1;
        }
    }

    static const struct {
        const char *suffix;
        size_t size;
    } sets[] = { { "", COLD_SIZE }, { "-hot", HOT_SIZE }, { "-256k", 256u << 10 }, { "-l1", 32u << 10 } };
    for (size_t s = 0; s < FERRY_ARRAY_SIZE(sets); s++) {
        size_t size = sets[s].size;
        int reps = (int)(COLD_SIZE / size);
        int64_t memcpy_ns = best_ns(METHOD_MEMCPY, passes, src, dst, size, reps);
        report("memcpy", sets[s].suffix, COLD_SIZE, memcpy_ns, memcpy_ns);
        for (size_t i = 0; i < FERRY_ARRAY_SIZE(paths); i++) {
            if (!ferry__crc32c_available(paths[i].impl)) {
                printf("%s%s unavailable on this CPU (or not an x86-64 build)\n", paths[i].name, sets[s].suffix);
                continue;
            }
            ferry__crc32c_limit(paths[i].impl);
            char name[48];
            report(paths[i].name, sets[s].suffix, COLD_SIZE, best_ns(METHOD_CRC, passes, src, dst, size, reps),
                   memcpy_ns);
            snprintf(name, sizeof(name), "copy+%s", paths[i].name + strlen("crc32c-"));
            report(name, sets[s].suffix, COLD_SIZE, best_ns(METHOD_COPY_CRC, passes, src, dst, size, reps),
                   memcpy_ns);
        }
    }
    free(src);
    free(dst);
    return 0;
}
