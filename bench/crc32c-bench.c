/*
 * crc32c-bench: the throughput of ferry's CRC32C over a 64 MiB buffer, through the crc32 instruction path and the
 * table path, next to memcpy of the same buffer measured in the same run, so that the cost of checksumming every
 * record can be judged against the cost of moving the bytes at all on this machine. Each figure is the best of
 * several passes over buffers touched before the clock starts (page faults are not measured). It is a
 * measurement, not a test; it exits non-zero only if the two paths disagree or memory cannot be had.
 *
 * Usage: crc32c-bench [PASSES]   (default 5)
 * Output: one line per method, "NAME GB/s X.XX ratio-to-memcpy Y.YY" (GB = 10^9 bytes).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/util.h"

#define BUF_SIZE (64u << 20)

/* Results go here so that the compiler cannot drop the work that produced them. */
static volatile uint32_t sink;

typedef enum Method { METHOD_MEMCPY, METHOD_HW, METHOD_SW } Method;

/* Best time in ns of @passes runs of @method over the buffer. */
static int64_t best_ns(Method method, int passes, const uint8_t *src, uint8_t *dst)
{
    int64_t best = INT64_MAX;
    for (int i = 0; i < passes; i++) {
        int64_t t0 = ferry__clock_ns();
        switch (method) {
        case METHOD_MEMCPY:
            memcpy(dst, src, BUF_SIZE);
            sink = dst[BUF_SIZE / 2];
            break;
        case METHOD_HW:
            sink = ferry__crc32c_hw(0, src, BUF_SIZE);
            break;
        case METHOD_SW:
            sink = ferry__crc32c_sw(0, src, BUF_SIZE);
            break;
        }
        int64_t dt = ferry__clock_ns() - t0;
        best = FERRY_MIN(best, dt);
    }
    return best > 0 ? best : 1;
}

static void report(const char *name, int64_t ns, int64_t memcpy_ns)
{
    printf("%-12s GB/s %6.2f ratio-to-memcpy %5.2f\n", name, (double)BUF_SIZE / (double)ns,
           (double)memcpy_ns / (double)ns);
}

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
    uint8_t *src = malloc(BUF_SIZE);
    uint8_t *dst = malloc(BUF_SIZE);
    if (!src || !dst) {
        fprintf(stderr, "crc32c-bench: cannot allocate 2 x 64 MiB\n");
        return 1;
    }
    /* Pseudo-random content (the CRC does not care, but it keeps the pages really allocated), and the destination
     * touched so that memcpy is not charged for first-touch faults. */
    uint64_t x = 0x9E3779B97F4A7C15ull;
    for (size_t i = 0; i < BUF_SIZE; i += 8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        memcpy(src + i, &x, 8);
    }
    memset(dst, 1, BUF_SIZE);

    uint32_t hw = ferry__crc32c_hw(0, src, BUF_SIZE);
    uint32_t sw = ferry__crc32c_sw(0, src, BUF_SIZE);
    if (hw != sw) {
        fprintf(stderr, "crc32c-bench: the instruction path gives 0x%08x, the table path 0x%08x\n", hw, sw);
        return 1;
    }

    int64_t memcpy_ns = best_ns(METHOD_MEMCPY, passes, src, dst);
    report("memcpy", memcpy_ns, memcpy_ns);
    if (ferry__crc32c_hw_available()) {
        report("crc32c-hw", best_ns(METHOD_HW, passes, src, dst), memcpy_ns);
    } else {
        printf("crc32c-hw    unavailable (no SSE4.2 crc32 instruction on this CPU or not an x86-64 build)\n");
    }
    report("crc32c-sw", best_ns(METHOD_SW, passes, src, dst), memcpy_ns);
    free(src);
    free(dst);
    return 0;
}
