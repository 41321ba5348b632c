/*
 * Unit tests of CRC32C (src/util/crc32c.c): the standard check value and the RFC 3720 B.4 vectors through every
 * path, the table path against a bit-at-a-time reference written here from the definition, the instruction path
 * and the folding path (each reached by capping the others with ferry__crc32c_limit) against the table path on
 * pseudo-random buffers of every length 0..1100 at every alignment 0..15 and on long buffers around the sizes
 * where each path changes gear, copy-and-checksum through each path, and incremental computation against one-shot
 * computation. The comparisons of a path this CPU lacks skip, with the reason printed.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "util/util.h"

typedef uint32_t (*CrcFn)(uint32_t crc, const void *buf, size_t len);

/* ferry__crc32c with its paths capped at @max. */
static uint32_t crc_capped(FerryCrc32cImpl max, uint32_t crc, const void *buf, size_t len)
{
    FerryCrc32cImpl prev = ferry__crc32c_limit(max);
    uint32_t v = ferry__crc32c(crc, buf, len);
    ferry__crc32c_limit(prev);
    return v;
}

static uint32_t crc_hw(uint32_t crc, const void *buf, size_t len)
{
    return crc_capped(FERRY_CRC32C_HW, crc, buf, len);
}

static uint32_t crc_fold(uint32_t crc, const void *buf, size_t len)
{
    return crc_capped(FERRY_CRC32C_FOLD, crc, buf, len);
}

static const struct {
    const char *name;
    CrcFn fn;
} impls[] = {
    { "ferry__crc32c", ferry__crc32c },
    { "ferry__crc32c_sw", ferry__crc32c_sw },
    { "instruction path", crc_hw },
    { "folding path", crc_fold },
};

/* The paths compared with the table, by the limit that reaches them. */
static const struct {
    const char *name;
    FerryCrc32cImpl impl;
    CrcFn fn;
} fast_paths[] = {
    { "instruction", FERRY_CRC32C_HW, crc_hw },
    { "folding", FERRY_CRC32C_FOLD, crc_fold },
};

/* The definition, one bit at a time: independent of the tables and of the instruction. */
static uint32_t crc32c_reference(uint32_t crc, const uint8_t *p, size_t len)
{
    crc = ~crc;
    for (size_t i = 0; i < len; i++) {
        crc ^= p[i];
        for (int bit = 0; bit < 8; bit++) {
            crc = (crc >> 1) ^ ((crc & 1) ? 0x82F63B78u : 0);
        }
    }
    return ~crc;
}

/* A fixed-seed xorshift64 generator, so that every run checks the same buffers. */
static uint64_t rng_state;

static uint64_t rng_next(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static void fill_random(uint8_t *p, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        p[i] = (uint8_t)(rng_next() >> 56);
    }
}

/* Whether a path is missing here (said once per test, with the reason). */
static bool lacks(FerryCrc32cImpl impl)
{
    if (ferry__crc32c_available(impl)) {
        return false;
    }
    if (impl == FERRY_CRC32C_HW) {
        printf("not checked: this CPU has no SSE4.2 crc32 instruction (or the build is not x86-64)\n");
    } else {
        printf("not checked: this CPU lacks AVX-512 VPCLMULQDQ (or the build is not x86-64)\n");
    }
    return true;
}

static void test_check_value(void **state)
{
    static const char check[] = "123456789";
    for (size_t i = 0; i < FERRY_ARRAY_SIZE(impls); i++) {
        assert_int_equal(impls[i].fn(0, check, 9), 0xE3069283u);
        /* An empty buffer leaves the value alone, whatever the pointer. */
        assert_int_equal(impls[i].fn(0, NULL, 0), 0);
        assert_int_equal(impls[i].fn(0x12345678u, check, 0), 0x12345678u);
    }
    assert_int_equal(crc32c_reference(0, (const uint8_t *)check, 9), 0xE3069283u);
}

static void test_rfc3720_vectors(void **state)
{
    uint8_t zeros[32], ones[32], inc[32], dec[32];
    memset(zeros, 0, sizeof(zeros));
    memset(ones, 0xff, sizeof(ones));
    for (int i = 0; i < 32; i++) {
        inc[i] = (uint8_t)i;
        dec[i] = (uint8_t)(31 - i);
    }
    for (size_t i = 0; i < FERRY_ARRAY_SIZE(impls); i++) {
        uint32_t got[4] = { impls[i].fn(0, zeros, 32), impls[i].fn(0, ones, 32), impls[i].fn(0, inc, 32),
                            impls[i].fn(0, dec, 32) };
        static const uint32_t want[4] = { 0x8A9136AAu, 0x62A8AB43u, 0x46DD794Eu, 0x113FDB5Cu };
        for (int v = 0; v < 4; v++) {
            if (got[v] != want[v]) {
                fail_msg("%s: vector %d: got 0x%08x, want 0x%08x", impls[i].name, v, got[v], want[v]);
            }
        }
    }
}

/* The table path against the bit-at-a-time definition, every length 0..1100 at every alignment 0..15, with a
 * starting value that is not 0 half of the time. */
static void test_sw_vs_reference(void **state)
{
    enum { MAXLEN = 1100, ALIGNS = 16 };
    uint8_t *buf = malloc(MAXLEN + ALIGNS);
    assert_non_null(buf);
    rng_state = 0x9E3779B97F4A7C15ull;
    fill_random(buf, MAXLEN + ALIGNS);
    for (size_t len = 0; len <= MAXLEN; len++) {
        for (size_t align = 0; align < ALIGNS; align++) {
            uint32_t start = (len & 1) ? (uint32_t)rng_next() : 0;
            uint32_t want = crc32c_reference(start, buf + align, len);
            uint32_t got = ferry__crc32c_sw(start, buf + align, len);
            if (got != want) {
                fail_msg("sw: len %zu align %zu start 0x%08x: got 0x%08x, want 0x%08x", len, align, start, got,
                         want);
            }
        }
    }
    free(buf);
}

static void test_paths_vs_sw(void **state)
{
    if (lacks(FERRY_CRC32C_HW)) {
        skip();
    }
    enum { MAXLEN = 1100, ALIGNS = 16 };
    uint8_t *buf = malloc(MAXLEN + ALIGNS);
    assert_non_null(buf);
    rng_state = 0xD1B54A32D192ED03ull;
    for (size_t len = 0; len <= MAXLEN; len++) {
        /* Fresh data for every length, so that each length sees different bytes. */
        fill_random(buf, len + ALIGNS);
        for (size_t align = 0; align < ALIGNS; align++) {
            uint32_t start = (align & 1) ? (uint32_t)rng_next() : 0;
            uint32_t want = ferry__crc32c_sw(start, buf + align, len);
            for (size_t i = 0; i < FERRY_ARRAY_SIZE(fast_paths); i++) {
                uint32_t got = fast_paths[i].fn(start, buf + align, len);
                if (got != want) {
                    fail_msg("%s: len %zu align %zu start 0x%08x: got 0x%08x, want 0x%08x", fast_paths[i].name,
                             len, align, start, got, want);
                }
            }
            assert_int_equal(ferry__crc32c(start, buf + align, len), want);
        }
    }
    free(buf);
}

/* Lengths around the boundaries where the paths change gear: the instruction path's three-way chunks (3 x 256 and
 * 3 x 4096 bytes), the folding path's start (512 bytes), its 256-byte steps, 64-byte and 16-byte tails, and runs
 * of several of them, where a mistake in joining partial results would show. */
static void test_long_buffers(void **state)
{
    if (lacks(FERRY_CRC32C_HW)) {
        skip();
    }
    bool fold = !lacks(FERRY_CRC32C_FOLD);
    enum { MAXLEN = 65536 + 300 };
    uint8_t *buf = malloc(MAXLEN + 16);
    assert_non_null(buf);
    rng_state = 0x2545F4914F6CDD1Dull;
    fill_random(buf, MAXLEN + 16);
    static const size_t bases[] = { 3 * 256, 2 * 3 * 256, 3 * 4096, 2 * 3 * 4096, 5 * 3 * 4096,
                                    3 * 4096 + 3 * 256, 4096, 65536, 512, 1024, 2048 + 64 };
    for (size_t b = 0; b < FERRY_ARRAY_SIZE(bases); b++) {
        for (long delta = -17; delta <= 300; delta++) {
            size_t len = (size_t)((long)bases[b] + delta);
            assert_true(len <= MAXLEN);
            for (size_t align = 0; align < 16; align += (delta < 18 ? 3 : 7)) {
                uint32_t start = (uint32_t)(len * 0x9E3779B1u);
                uint32_t want = ferry__crc32c_sw(start, buf + align, len);
                for (size_t i = 0; i < (fold ? 2 : 1); i++) {
                    uint32_t got = fast_paths[i].fn(start, buf + align, len);
                    if (got != want) {
                        fail_msg("%s: len %zu align %zu: got 0x%08x, want 0x%08x", fast_paths[i].name, len, align,
                                 got, want);
                    }
                }
            }
        }
    }
    /* The whole buffer against the definition too, so that the table and the others cannot agree on a wrong
     * value. */
    uint32_t ref = crc32c_reference(0, buf, MAXLEN);
    assert_int_equal(crc_hw(0, buf, MAXLEN), ref);
    assert_int_equal(crc_fold(0, buf, MAXLEN), ref);
    free(buf);
}

/* Copy and checksum in one pass through the paths up to @max: the copy is exact and the value is the checksum of
 * the copied bytes, for lengths around every chunk boundary, unaligned ends on both sides, and a non-zero
 * starting value. */
static void copy_check(FerryCrc32cImpl max)
{
    enum { MAXLEN = 5 * 3 * 4096 + 320 };
    uint8_t *src = malloc(MAXLEN + 16), *dst = malloc(MAXLEN + 16);
    assert_non_null(src);
    assert_non_null(dst);
    rng_state = 0x9E3779B97F4A7C15ull;
    fill_random(src, MAXLEN + 16);
    static const size_t bases[] = { 0,        8,        512, 3 * 256, 1024 + 64 + 16, 3 * 4096, 3 * 4096 + 3 * 256,
                                    2 * 3 * 4096, 5 * 3 * 4096 };
    for (size_t b = 0; b < FERRY_ARRAY_SIZE(bases); b++) {
        for (long delta = 0; delta <= 300; delta += (delta < 17 ? 1 : 23)) {
            size_t len = bases[b] + (size_t)delta;
            for (size_t sa = 0; sa < 8; sa += 3) {
                for (size_t da = 0; da < 8; da += 5) {
                    uint32_t start = (uint32_t)(len * 2654435761u);
                    memset(dst, 0x5a, MAXLEN + 16);
                    FerryCrc32cImpl prev = ferry__crc32c_limit(max);
                    uint32_t got = ferry__crc32c_copy(start, dst + da, src + sa, len);
                    ferry__crc32c_limit(prev);
                    assert_memory_equal(dst + da, src + sa, len);
                    assert_int_equal(dst[da + len], 0x5a); /* nothing written past the end */
                    if (da > 0) {
                        assert_int_equal(dst[da - 1], 0x5a);
                    }
                    assert_int_equal(got, ferry__crc32c_sw(start, src + sa, len));
                }
            }
        }
    }
    free(src);
    free(dst);
}

static void test_copy(void **state)
{
    copy_check(FERRY_CRC32C_SW);
    if (!lacks(FERRY_CRC32C_HW)) {
        copy_check(FERRY_CRC32C_HW);
    }
    if (!lacks(FERRY_CRC32C_FOLD)) {
        copy_check(FERRY_CRC32C_FOLD);
    }
}

/* Extending a value piece by piece gives the one-shot value: every split point of a short buffer, and random
 * pieces of a long one, through every entry point. */
static void test_incremental(void **state)
{
    enum { SHORT = 300, LONG = 100000 };
    uint8_t *buf = malloc(LONG);
    assert_non_null(buf);
    rng_state = 0x5851F42D4C957F2Dull;
    fill_random(buf, LONG);
    for (size_t i = 0; i < FERRY_ARRAY_SIZE(impls); i++) {
        CrcFn fn = impls[i].fn;
        uint32_t whole = fn(0, buf, SHORT);
        assert_int_equal(whole, crc32c_reference(0, buf, SHORT));
        for (size_t split = 0; split <= SHORT; split++) {
            assert_int_equal(fn(fn(0, buf, split), buf + split, SHORT - split), whole);
        }

        whole = fn(0, buf, LONG);
        assert_int_equal(whole, crc32c_reference(0, buf, LONG));
        for (int round = 0; round < 20; round++) {
            uint32_t crc = 0;
            size_t off = 0;
            while (off < LONG) {
                /* Pieces from empty to a few chunks long. */
                size_t piece = (size_t)(rng_next() % (round < 10 ? 64 : 20000));
                piece = FERRY_MIN(piece, (size_t)LONG - off);
                crc = fn(crc, buf + off, piece);
                off += piece;
            }
            assert_int_equal(crc, whole);
        }
    }
    /* The check value in pieces. */
    uint32_t crc = ferry__crc32c(0, "1234", 4);
    crc = ferry__crc32c(crc, "5", 1);
    crc = ferry__crc32c(crc, "6789", 4);
    assert_int_equal(crc, 0xE3069283u);
    free(buf);
}

/* A flipped bit anywhere changes the value (CRC32C detects every single-bit error). */
static void test_single_bit_flips(void **state)
{
    enum { LEN = 4096 + 13 };
    uint8_t *buf = malloc(LEN);
    assert_non_null(buf);
    rng_state = 0x14057B7EF767814Full;
    fill_random(buf, LEN);
    uint32_t good = ferry__crc32c(0, buf, LEN);
    for (size_t i = 0; i < LEN; i += 7) {
        buf[i] ^= (uint8_t)(1u << (i % 8));
        assert_int_not_equal(ferry__crc32c(0, buf, LEN), good);
        buf[i] ^= (uint8_t)(1u << (i % 8));
    }
    assert_int_equal(ferry__crc32c(0, buf, LEN), good);
    free(buf);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_check_value),     cmocka_unit_test(test_rfc3720_vectors),
        cmocka_unit_test(test_sw_vs_reference), cmocka_unit_test(test_paths_vs_sw),
        cmocka_unit_test(test_long_buffers), cmocka_unit_test(test_incremental),
        cmocka_unit_test(test_single_bit_flips), cmocka_unit_test(test_copy),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
