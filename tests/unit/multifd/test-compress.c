/*
 * Unit tests of multifd's compression (src/multifd/compress.c): zlib and zstd at their lowest, default and highest
 * levels round-trip scattered pages (compressible and random) into scattered pages; a stream that is damaged,
 * truncated, too long or too short for the pages it must fill is refused with a message, never half-accepted.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "multifd/multifd.h"
#include "test-helpers.h"

#define PS 4096
#define NPAGES 64

static uint64_t rng = 0x9E3779B97F4A7C15ull;

static void fill(uint8_t *p, size_t len, bool random)
{
    for (size_t i = 0; i < len; i++) {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        p[i] = random ? (uint8_t)(rng >> 56) : (uint8_t)(i / PS);
    }
}

/* Pages 0, 2, 4, ... of @buf as an iovec (never contiguous: the decompressor must fill them one by one). */
static int every_other(uint8_t *buf, struct iovec *iov, int n)
{
    for (int i = 0; i < n; i++) {
        iov[i] = (struct iovec){ .iov_base = buf + (size_t)(2 * i) * PS, .iov_len = PS };
    }
    return n;
}

static size_t compress_pages(uint8_t method, int level, uint8_t *src, uint8_t *out, size_t cap)
{
    struct iovec iov[NPAGES];
    int n = every_other(src, iov, NPAGES / 2);
    FerryError *err = NULL;
    FerryCompressor *c = ferry__compressor_new(method, level, &err);
    assert_non_null(c);
    size_t len = 0;
    assert_true(ferry__compress(c, iov, n, out, cap, &len, &err));
    /* A compressor is reused from packet to packet: the second stream must be the same. */
    size_t len2 = 0;
    uint8_t *again = malloc(cap);
    assert_true(ferry__compress(c, iov, n, again, cap, &len2, &err));
    assert_int_equal(len, len2);
    assert_memory_equal(out, again, len);
    free(again);
    ferry__compressor_free(c);
    return len;
}

static void round_trip(uint8_t method, int level, bool random)
{
    size_t raw = (size_t)NPAGES * PS;
    uint8_t *src = malloc(raw), *dst = calloc(1, raw);
    size_t cap = ferry__wire_mfd_payload_max(raw / 2);
    uint8_t *comp = malloc(cap);
    fill(src, raw, random);
    size_t len = compress_pages(method, level, src, comp, cap);
    assert_true(len <= cap);
    if (!random && level > 0) {
        assert_true(len < raw / 2 / 20); /* pages of one repeated byte shrink to almost nothing */
    }
    struct iovec iov[NPAGES];
    int n = every_other(dst, iov, NPAGES / 2);
    FerryError *err = NULL;
    FerryDecompressor *d = ferry__decompressor_new(method, &err);
    assert_non_null(d);
    for (int round = 0; round < 2; round++) {
        assert_true(ferry__decompress(d, comp, len, iov, n, &err));
        for (int i = 0; i < NPAGES; i += 2) {
            assert_memory_equal(dst + (size_t)i * PS, src + (size_t)i * PS, PS);
        }
    }
    ferry__decompressor_free(d);
    free(src);
    free(dst);
    free(comp);
}

static void test_zlib(void **state)
{
    for (int level = 0; level <= 9; level += 1) {
        round_trip(FERRY_MFD_COMP_ZLIB, level, false);
    }
    round_trip(FERRY_MFD_COMP_ZLIB, 1, true);
    round_trip(FERRY_MFD_COMP_ZLIB, 9, true);
}

static void test_zstd(void **state)
{
    static const int levels[] = { 0, 1, 3, 19, 20 };
    for (size_t i = 0; i < FERRY_ARRAY_SIZE(levels); i++) {
        round_trip(FERRY_MFD_COMP_ZSTD, levels[i], false);
    }
    round_trip(FERRY_MFD_COMP_ZSTD, 1, true);
}

/* Decompressing @comp (of @len bytes) into @npages pages must fail with @msg. */
static void expect_refused(uint8_t method, const uint8_t *comp, size_t len, int npages, const char *msg)
{
    uint8_t *dst = calloc(1, (size_t)NPAGES * 2 * PS);
    struct iovec iov[NPAGES];
    int n = every_other(dst, iov, npages);
    FerryError *err = NULL;
    FerryDecompressor *d = ferry__decompressor_new(method, &err);
    bool ok = ferry__decompress(d, comp, len, iov, n, &err);
    if (ok) {
        print_error("method %u, %zu bytes into %d pages: accepted, expected \"%s\"\n", method, len, npages, msg);
    }
    assert_false(ok);
    assert_msg_contains(err, msg);
    ferry_error_free(err);
    ferry__decompressor_free(d);
    free(dst);
}

static void test_bad_streams(void **state)
{
    static const uint8_t methods[] = { FERRY_MFD_COMP_ZLIB, FERRY_MFD_COMP_ZSTD };
    size_t raw = (size_t)NPAGES * PS;
    uint8_t *src = malloc(raw);
    size_t cap = ferry__wire_mfd_payload_max(raw / 2);
    uint8_t *comp = malloc(cap + 16);
    fill(src, raw, true);
    for (size_t m = 0; m < FERRY_ARRAY_SIZE(methods); m++) {
        const char *name = methods[m] == FERRY_MFD_COMP_ZLIB ? "zlib" : "zstd";
        size_t len = compress_pages(methods[m], 1, src, comp, cap);
        /* Fewer pages than the stream holds, more than it holds, cut short, trailing bytes, a flipped byte. */
        expect_refused(methods[m], comp, len, NPAGES / 2 - 1, "more than the packet's pages");
        expect_refused(methods[m], comp, len, NPAGES / 2 + 1, name);
        expect_refused(methods[m], comp, len / 2, NPAGES / 2, name);
        comp[len] = 0;
        expect_refused(methods[m], comp, len + 1, NPAGES / 2, "after the end");
        /* zlib's own adler32 catches a flipped byte anywhere; zstd frames here carry no checksum (the packet's
         * CRC32C is the integrity check), so for zstd the flip goes where the format itself must notice. */
        size_t at = methods[m] == FERRY_MFD_COMP_ZLIB ? len / 3 : 0;
        comp[at] ^= 0x55;
        expect_refused(methods[m], comp, len, NPAGES / 2, name);
        /* Garbage from the start. */
        memset(comp, 0xa5, 64);
        expect_refused(methods[m], comp, 64, 1, name);
    }
    free(src);
    free(comp);
}

static void test_unknown_method(void **state)
{
    FerryError *err = NULL;
    assert_null(ferry__compressor_new(FERRY_MFD_COMP_NONE, 1, &err));
    assert_msg_contains(err, "none cannot compress");
    ferry_error_free(err);
    err = NULL;
    assert_null(ferry__decompressor_new(7, &err));
    assert_msg_contains(err, "unknown cannot decompress");
    ferry_error_free(err);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_zlib),
        cmocka_unit_test(test_zstd),
        cmocka_unit_test(test_bad_streams),
        cmocka_unit_test(test_unknown_method),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
