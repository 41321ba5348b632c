/*
 * Unit tests of ferry__buffer_is_zero (ram/zero.c), through each of its paths (AVX-512, AVX2, SSE2, plain C: each
 * reached by capping the others with ferry__zero_limit; a path this CPU lacks is skipped with the reason printed)
 * and through the default choice, against a trivial byte loop. Every length from 0 to 600 bytes at every alignment
 * within 64 bytes, all zero and with a single nonzero byte at every position; page-sized lengths around 4 KiB at
 * every alignment with the nonzero byte first or last, and at a spread of alignments with it everywhere; real
 * pages of a RAM block. The bytes around each buffer are nonzero, so that a read outside [p, p + len) shows up as
 * a wrong answer, and one test puts every buffer at the very end of its own allocation, so that ASan sees a load
 * that goes past it.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "ram/ram.h"
#include "util/util.h"

#define SHORT_MAX 600
#define ALIGNS 64
#define PAGE 4096
#define LONG_LEN (3 * PAGE)
/* A window starts GUARD bytes into the area (plus its alignment) and has at least GUARD nonzero bytes after it. */
#define GUARD 64
#define AREA (GUARD + ALIGNS + LONG_LEN + GUARD)
#define FILL 0xa5

typedef struct Path {
    const char *name;
    FerryZeroImpl impl;
    bool dispatch; /* no limit: whatever ferry__buffer_is_zero picks by itself */
    const char *lack; /* the reason printed when the CPU lacks the path */
} Path;

static const Path paths[] = {
    { "avx512", FERRY_ZERO_AVX512, false, "this CPU lacks AVX-512F/BW (or the build is not x86-64)" },
    { "avx2", FERRY_ZERO_AVX2, false, "this CPU lacks AVX2 (or the build is not x86-64)" },
    { "sse2", FERRY_ZERO_SSE2, false, "not an x86-64 build" },
    { "c", FERRY_ZERO_C, false, NULL },
    { "default", FERRY_ZERO_AVX512, true, NULL },
};

static FerryZeroImpl saved_limit;

/* Caps the paths at the one under test (a path the CPU lacks skips the test, saying why). */
static int path_setup(void **state)
{
    const Path *path = *state;
    if (!path->dispatch && !ferry__zero_available(path->impl)) {
        return 0; /* the test skips itself: cmocka reports a failed setup as an error */
    }
    saved_limit = ferry__zero_limit(path->dispatch ? FERRY_ZERO_AVX512 : path->impl);
    return 0;
}

static int path_teardown(void **state)
{
    const Path *path = *state;
    if (path->dispatch || ferry__zero_available(path->impl)) {
        ferry__zero_limit(saved_limit);
    }
    return 0;
}

static void skip_unless_available(const Path *path)
{
    if (!path->dispatch && !ferry__zero_available(path->impl)) {
        print_message("%s skipped: %s\n", path->name, path->lack);
        skip();
    }
}

/* The reference: one byte at a time. */
static bool bytes_are_zero(const unsigned char *p, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        if (p[i] != 0) {
            return false;
        }
    }
    return true;
}

static void expect(const Path *path, const unsigned char *p, size_t len, size_t off, long pos)
{
    bool want = bytes_are_zero(p, len);
    bool got = ferry__buffer_is_zero(p, len);
    if (got != want) {
        fail_msg("%s: alignment %zu length %zu, nonzero byte at %ld (-1: none): %s, should be %s", path->name, off,
                 len, pos, got ? "zero" : "nonzero", want ? "zero" : "nonzero");
    }
}

/* A 64-byte aligned area of nonzero bytes. */
static unsigned char *area_new(void)
{
    unsigned char *a = aligned_alloc(64, AREA);
    assert_non_null(a);
    memset(a, FILL, AREA);
    return a;
}

/* Checks the window of @len bytes at alignment @off in @a: all zero, then with one nonzero byte at each position
 * (every one if @every, else the first and the last), and leaves the area nonzero again. */
static void check_window(const Path *path, unsigned char *a, size_t off, size_t len, bool every)
{
    static const unsigned char values[] = { 0x01, 0x80, 0xff };
    unsigned char *w = a + GUARD + off;
    memset(w, 0, len);
    expect(path, w, len, off, -1);
    for (size_t pos = 0; pos < len; pos++) {
        if (!every && pos != 0 && pos != len - 1) {
            continue;
        }
        w[pos] = values[pos % FERRY_ARRAY_SIZE(values)];
        expect(path, w, len, off, (long)pos);
        w[pos] = 0;
    }
    memset(w, FILL, len);
}

static void test_short_all_alignments(void **state)
{
    const Path *path = *state;
    skip_unless_available(path);
    unsigned char *a = area_new();
    for (size_t len = 0; len <= SHORT_MAX; len++) {
        for (size_t off = 0; off < ALIGNS; off++) {
            check_window(path, a, off, len, true);
        }
    }
    free(a);
}

static void test_page_sizes(void **state)
{
    const Path *path = *state;
    skip_unless_available(path);
    static const size_t lens[] = { 1000, 1024, 2047, 4032, 4095, 4096, 4097, 4160, 8192 + 13, LONG_LEN };
    static const size_t offs[] = { 0, 1, 8, 13, 16, 32, 63 };
    unsigned char *a = area_new();
    for (size_t i = 0; i < FERRY_ARRAY_SIZE(lens); i++) {
        /* Every alignment with the nonzero byte first or last (the page whose data is in its last byte is the one
         * that takes the whole loop), a spread of alignments with it everywhere. */
        for (size_t off = 0; off < ALIGNS; off++) {
            check_window(path, a, off, lens[i], false);
        }
        for (size_t j = 0; j < FERRY_ARRAY_SIZE(offs); j++) {
            check_window(path, a, offs[j], lens[i], true);
        }
    }
    free(a);
}

/* Each buffer ends where its allocation ends, so that ASan reports a load past it (the guard bytes of the other
 * tests only catch loads whose bytes change the answer). */
static void test_buffer_at_allocation_end(void **state)
{
    const Path *path = *state;
    skip_unless_available(path);
    for (size_t len = 0; len <= SHORT_MAX + 64; len++) {
        for (size_t off = 0; off < ALIGNS; off++) {
            unsigned char *a = malloc(off + len + 1); /* + 1: malloc(0) may be NULL */
            assert_non_null(a);
            unsigned char *w = a + 1 + off;
            memset(a, 0, 1 + off + len);
            a[0] = FILL; /* the byte before */
            expect(path, w, len, off, -1);
            if (len > 0) {
                w[len - 1] = 1;
                expect(path, w, len, off, (long)len - 1);
            }
            free(a);
        }
    }
    for (size_t off = 0; off < ALIGNS; off++) {
        unsigned char *a = malloc(off + PAGE);
        assert_non_null(a);
        memset(a, 0, off + PAGE);
        expect(path, a + off, PAGE, off, -1);
        a[off + PAGE - 1] = 1;
        expect(path, a + off, PAGE, off, PAGE - 1);
        free(a);
    }
}

static void test_real_page(void **state)
{
    /* The case that matters most: a page-aligned page of an anonymous mapping, never written (the zero page). */
    const Path *path = *state;
    skip_unless_available(path);
    FerryRamBlock *b = ferry__ram_block_new("zero", 4 * ferry_ram_page_size(), NULL);
    assert_non_null(b);
    size_t ps = ferry_ram_page_size();
    assert_true(ferry__buffer_is_zero(b->host, ps));
    assert_true(ferry__buffer_is_zero(b->host, b->size));
    b->host[2 * ps - 1] = 1;
    assert_false(ferry__buffer_is_zero(b->host + ps, ps));
    assert_false(ferry__buffer_is_zero(b->host, b->size));
    assert_true(ferry__buffer_is_zero(b->host + 2 * ps, 2 * ps));
    b->host[2 * ps - 1] = 0;
    b->host[3 * ps + ps / 2] = 0x40;
    assert_false(ferry__buffer_is_zero(b->host + 3 * ps, ps));
    assert_true(ferry__buffer_is_zero(b->host, 3 * ps));
    ferry__ram_block_free(b);
}

static void test_limit(void **state)
{
    /* The C path is always there; a limit returns the previous one and may name a path the CPU lacks (the fastest
     * path below it is used then, which the path tests cover). */
    assert_true(ferry__zero_available(FERRY_ZERO_C));
    FerryZeroImpl prev = ferry__zero_limit(FERRY_ZERO_C);
    assert_int_equal(ferry__zero_limit(FERRY_ZERO_AVX2), FERRY_ZERO_C);
    assert_int_equal(ferry__zero_limit(prev), FERRY_ZERO_AVX2);
    assert_true(ferry__buffer_is_zero(NULL, 0));
    for (size_t i = 0; i < FERRY_ARRAY_SIZE(paths); i++) {
        if (!paths[i].dispatch && !ferry__zero_available(paths[i].impl)) {
            print_message("not available: %s: %s\n", paths[i].name, paths[i].lack);
        }
    }
}

/* One test of @fn for path @i, named "PATH: what" so that the cmocka output says which path failed. */
#define PATH_TEST(i, fn, what)                                                                                        \
    {                                                                                                                 \
        .name = what, .test_func = fn, .setup_func = path_setup, .teardown_func = path_teardown,                     \
        .initial_state = (void *)&paths[i],                                                                           \
    }
#define PATH_TESTS(i, name)                                                                                           \
    PATH_TEST(i, test_short_all_alignments, name ": lengths 0-600 at every alignment"),                              \
        PATH_TEST(i, test_page_sizes, name ": page-sized lengths"),                                                   \
        PATH_TEST(i, test_buffer_at_allocation_end, name ": buffers at the end of their allocation"),                 \
        PATH_TEST(i, test_real_page, name ": pages of a RAM block")

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_limit),
        PATH_TESTS(0, "avx512"),
        PATH_TESTS(1, "avx2"),
        PATH_TESTS(2, "sse2"),
        PATH_TESTS(3, "c"),
        PATH_TESTS(4, "default"),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
