/*
 * Unit tests of ferry__buffer_is_zero (ram/zero.c): every length from 0 to a few hundred bytes and page-sized
 * lengths around 4 KiB, at every alignment within a 64-byte chunk (all of them for short lengths, a spread for
 * long ones), with a single nonzero byte at every position. The bytes around the buffer are nonzero so that a
 * read outside [p, p + len) shows up as a wrong answer.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "ram/ram.h"
#include "util/util.h"

#define AREA (3 * 4096 + 256)

/* A 64-byte aligned area, nonzero everywhere except [off, off + len). */
static unsigned char *area_new(size_t off, size_t len)
{
    unsigned char *a = aligned_alloc(64, AREA);
    assert_non_null(a);
    memset(a, 0xa5, AREA);
    memset(a + off, 0, len);
    return a;
}

static void check_one(size_t off, size_t len)
{
    static const unsigned char values[] = {0x01, 0x80, 0xff};
    unsigned char *a = area_new(off, len);
    assert_true(ferry__buffer_is_zero(a + off, len));
    for (size_t pos = 0; pos < len; pos++) {
        unsigned char v = values[pos % FERRY_ARRAY_SIZE(values)];
        a[off + pos] = v;
        if (ferry__buffer_is_zero(a + off, len)) {
            fail_msg("offset %zu length %zu: nonzero byte 0x%02x at %zu not seen", off, len, v, pos);
        }
        a[off + pos] = 0;
    }
    free(a);
}

static void test_short_all_alignments(void **state)
{
    for (size_t len = 0; len <= 300; len++) {
        for (size_t off = 0; off < 64; off++) {
            check_one(off, len);
        }
    }
}

static void test_page_sizes(void **state)
{
    static const size_t lens[] = {511, 512, 513, 1000, 1024, 2047, 4095, 4096, 4097, 8192 + 13, 3 * 4096};
    static const size_t offs[] = {0, 1, 8, 13, 32, 63, 64};
    for (size_t i = 0; i < FERRY_ARRAY_SIZE(lens); i++) {
        for (size_t j = 0; j < FERRY_ARRAY_SIZE(offs); j++) {
            check_one(offs[j], lens[i]);
        }
    }
}

static void test_real_page(void **state)
{
    /* The case that matters most: a page-aligned page of an anonymous mapping, never written (the zero page). */
    FerryRamBlock *b = ferry__ram_block_new("zero", 4 * ferry_ram_page_size(), NULL);
    assert_non_null(b);
    size_t ps = ferry_ram_page_size();
    assert_true(ferry__buffer_is_zero(b->host, ps));
    b->host[2 * ps - 1] = 1;
    assert_false(ferry__buffer_is_zero(b->host + ps, ps));
    assert_true(ferry__buffer_is_zero(b->host + 2 * ps, 2 * ps));
    ferry__ram_block_free(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_short_all_alignments),
        cmocka_unit_test(test_page_sizes),
        cmocka_unit_test(test_real_page),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
