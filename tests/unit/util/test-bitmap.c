/*
 * Unit tests of util/bitmap.h: single bits, ranges across word boundaries, count, find_next / find_next_zero at
 * and around word boundaries and at the end of a bitmap whose size is not a multiple of the word size, and the
 * atomic move, including a concurrent setter whose bits must all end up in either the source or the destination.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "util/bitmap.h"
#include "util/util.h"

#define BPL FERRY_BITS_PER_LONG

static void test_basic(void **state)
{
    size_t n = 3 * BPL + 5;
    unsigned long *map = ferry__bitmap_new(n);
    assert_int_equal(ferry__bitmap_count(map, n), 0);
    size_t bits[] = { 0, 1, BPL - 1, BPL, 2 * BPL + 7, n - 1 };
    for (size_t i = 0; i < FERRY_ARRAY_SIZE(bits); i++) {
        ferry__bitmap_set(map, bits[i]);
    }
    assert_int_equal(ferry__bitmap_count(map, n), FERRY_ARRAY_SIZE(bits));
    for (size_t i = 0; i < FERRY_ARRAY_SIZE(bits); i++) {
        assert_true(ferry__bitmap_test(map, bits[i]));
    }
    assert_false(ferry__bitmap_test(map, 2));
    assert_false(ferry__bitmap_test(map, BPL + 1));
    ferry__bitmap_clear(map, BPL);
    assert_false(ferry__bitmap_test(map, BPL));
    assert_true(ferry__bitmap_test(map, BPL - 1));
    assert_int_equal(ferry__bitmap_count(map, n), FERRY_ARRAY_SIZE(bits) - 1);

    ferry__bitmap_fill(map, n);
    assert_int_equal(ferry__bitmap_count(map, n), n);
    /* fill keeps the bits past the end clear. */
    assert_int_equal(map[3], (1UL << 5) - 1);
    ferry__bitmap_zero(map, n);
    assert_int_equal(ferry__bitmap_count(map, n), 0);
    free(map);
}

static void test_set_range(void **state)
{
    size_t n = 4 * BPL;
    unsigned long *map = ferry__bitmap_new(n);
    static const size_t ranges[][2] = {
        { 0, 0 }, { 0, 1 }, { 3, 10 }, { BPL - 1, 2 }, { BPL, BPL }, { BPL - 3, 2 * BPL + 6 }, { 0, 4 * BPL },
        { 2 * BPL + 63 % BPL, 1 },
    };
    for (size_t r = 0; r < FERRY_ARRAY_SIZE(ranges); r++) {
        for (int atomic = 0; atomic < 2; atomic++) {
            ferry__bitmap_zero(map, n);
            if (atomic) {
                ferry__bitmap_set_range_atomic(map, ranges[r][0], ranges[r][1]);
            } else {
                ferry__bitmap_set_range(map, ranges[r][0], ranges[r][1]);
            }
            for (size_t b = 0; b < n; b++) {
                bool want = b >= ranges[r][0] && b < ranges[r][0] + ranges[r][1];
                if (ferry__bitmap_test(map, b) != want) {
                    print_error("range %zu+%zu atomic=%d: bit %zu wrong\n", ranges[r][0], ranges[r][1], atomic, b);
                    fail();
                }
            }
            assert_int_equal(ferry__bitmap_count(map, n), ranges[r][1]);
        }
    }
    free(map);
}

static void test_find_next(void **state)
{
    size_t n = 2 * BPL + 3; /* last word partly used */
    unsigned long *map = ferry__bitmap_new(n);
    /* Empty bitmap. */
    assert_int_equal(ferry__bitmap_find_next(map, n, 0), n);
    assert_int_equal(ferry__bitmap_find_next_zero(map, n, 0), 0);
    assert_int_equal(ferry__bitmap_find_next_zero(map, n, n - 1), n - 1);
    /* Start at or past the end. */
    assert_int_equal(ferry__bitmap_find_next(map, n, n), n);
    assert_int_equal(ferry__bitmap_find_next_zero(map, n, n + 100), n);

    ferry__bitmap_set(map, BPL - 1);
    ferry__bitmap_set(map, BPL);
    ferry__bitmap_set(map, n - 1);
    assert_int_equal(ferry__bitmap_find_next(map, n, 0), BPL - 1);
    assert_int_equal(ferry__bitmap_find_next(map, n, BPL - 1), BPL - 1);
    assert_int_equal(ferry__bitmap_find_next(map, n, BPL), BPL);
    assert_int_equal(ferry__bitmap_find_next(map, n, BPL + 1), n - 1);
    assert_int_equal(ferry__bitmap_find_next(map, n, n - 1), n - 1);
    assert_int_equal(ferry__bitmap_find_next_zero(map, n, BPL - 1), BPL + 1);
    assert_int_equal(ferry__bitmap_find_next_zero(map, n, n - 1), n);

    /* Garbage past nbits in the last word must never be reported. */
    map[2] |= ~0UL << 3;
    ferry__bitmap_clear(map, n - 1);
    assert_int_equal(ferry__bitmap_find_next(map, n, BPL + 1), n);
    assert_int_equal(ferry__bitmap_count(map, n), 2);

    /* All set: find_next_zero runs off the end, also when bits past nbits are clear. */
    ferry__bitmap_fill(map, n);
    assert_int_equal(ferry__bitmap_find_next_zero(map, n, 0), n);
    assert_int_equal(ferry__bitmap_find_next_zero(map, n, BPL), n);
    ferry__bitmap_clear(map, 2 * BPL);
    assert_int_equal(ferry__bitmap_find_next_zero(map, n, 1), 2 * BPL);

    /* Exactly one word. */
    unsigned long *one = ferry__bitmap_new(BPL);
    ferry__bitmap_fill(one, BPL);
    assert_int_equal(ferry__bitmap_count(one, BPL), BPL);
    assert_int_equal(ferry__bitmap_find_next_zero(one, BPL, 0), BPL);
    ferry__bitmap_zero(one, BPL);
    assert_int_equal(ferry__bitmap_find_next(one, BPL, 0), BPL);
    free(one);
    free(map);
}

static void test_or(void **state)
{
    size_t n = 2 * BPL;
    unsigned long *a = ferry__bitmap_new(n), *b = ferry__bitmap_new(n);
    ferry__bitmap_set(a, 1);
    ferry__bitmap_set(b, 1);
    ferry__bitmap_set(b, BPL + 2);
    ferry__bitmap_or(a, b, n);
    assert_int_equal(ferry__bitmap_count(a, n), 2);
    assert_true(ferry__bitmap_test(a, BPL + 2));
    assert_int_equal(ferry__bitmap_count(b, n), 2);
    free(a);
    free(b);
}

static void test_move_atomic(void **state)
{
    size_t n = 3 * BPL + 1;
    unsigned long *dst = ferry__bitmap_new(n), *src = ferry__bitmap_new(n);
    ferry__bitmap_set(dst, 0);
    ferry__bitmap_set(src, 5);
    ferry__bitmap_set(src, 2 * BPL);
    ferry__bitmap_set(src, n - 1);
    ferry__bitmap_move_atomic(dst, src, n);
    assert_int_equal(ferry__bitmap_count(src, n), 0);
    assert_int_equal(ferry__bitmap_count(dst, n), 4);
    assert_true(ferry__bitmap_test(dst, n - 1));
    assert_true(ferry__bitmap_test(dst, 2 * BPL));
    free(dst);
    free(src);
}

#define RACE_BITS (64 * 1024)

struct race {
    unsigned long *src;
};

static void *race_setter(void *opaque)
{
    struct race *r = opaque;
    /* Each bit is set exactly once, in runs that straddle word boundaries. */
    for (size_t b = 0; b < RACE_BITS; b += 7) {
        ferry__bitmap_set_range_atomic(r->src, b, FERRY_MIN((size_t)7, RACE_BITS - b));
    }
    return NULL;
}

static void test_move_atomic_race(void **state)
{
    unsigned long *dst = ferry__bitmap_new(RACE_BITS), *src = ferry__bitmap_new(RACE_BITS);
    struct race r = { .src = src };
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, race_setter, &r), 0);
    for (int i = 0; i < 200; i++) {
        ferry__bitmap_move_atomic(dst, src, RACE_BITS);
    }
    pthread_join(t, NULL);
    ferry__bitmap_move_atomic(dst, src, RACE_BITS);
    /* No bit lost, none left behind. */
    assert_int_equal(ferry__bitmap_count(dst, RACE_BITS), RACE_BITS);
    assert_int_equal(ferry__bitmap_count(src, RACE_BITS), 0);
    free(dst);
    free(src);
}

/* Two threads clear the same bits (postcopy's two senders): each bit is claimed by exactly one of them. */
struct claim {
    unsigned long *map;
    size_t claimed;
};

static void *claimer(void *opaque)
{
    struct claim *c = opaque;
    for (size_t b = 0; b < RACE_BITS; b++) {
        c->claimed += ferry__bitmap_test_and_clear_atomic(c->map, b);
    }
    return NULL;
}

static void test_test_and_clear_race(void **state)
{
    (void)state;
    unsigned long *map = ferry__bitmap_new(RACE_BITS);
    ferry__bitmap_fill(map, RACE_BITS);
    struct claim a = { .map = map }, b = { .map = map };
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, claimer, &a), 0);
    claimer(&b);
    pthread_join(t, NULL);
    assert_int_equal(a.claimed + b.claimed, RACE_BITS);
    assert_int_equal(ferry__bitmap_count(map, RACE_BITS), 0);
    assert_false(ferry__bitmap_test_and_set_atomic(map, 5));
    assert_true(ferry__bitmap_test_and_set_atomic(map, 5));
    assert_true(ferry__bitmap_test_atomic(map, 5));
    assert_false(ferry__bitmap_test_atomic(map, 6));
    assert_true(ferry__bitmap_test_and_clear_atomic(map, 5));
    assert_false(ferry__bitmap_test_and_clear_atomic(map, 5));
    free(map);
}

/* The byte form (bit i in bit i % 8 of byte i / 8) both ways, for sizes that end inside a byte and a word; bits
 * past nbits never appear in either form. */
static void test_bytes(void **state)
{
    (void)state;
    size_t sizes[] = { 1, 7, 8, 9, 63, 64, 65, 200, 1000 };
    for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
        size_t n = sizes[k];
        unsigned long *a = ferry__bitmap_new(n + 64), *b = ferry__bitmap_new(n + 64);
        for (size_t i = 0; i < n + 64; i++) {
            if ((i * 7919) % 3 == 0) {
                ferry__bitmap_set(a, i); /* also past n: the conversion must drop those */
            }
        }
        uint8_t bytes[200] = { 0 };
        ferry__bitmap_to_bytes(a, n, bytes);
        for (size_t i = 0; i < (n + 7) / 8 * 8; i++) {
            bool want = i < n && ferry__bitmap_test(a, i);
            assert_int_equal((bytes[i / 8] >> (i % 8)) & 1, want);
        }
        memset(bytes + (n + 7) / 8, 0xff, sizeof(bytes) - (n + 7) / 8); /* beyond the form: never read */
        ferry__bitmap_from_bytes(b, n, bytes);
        for (size_t i = 0; i < n + 64; i++) {
            assert_int_equal(ferry__bitmap_test(b, i), i < n && ferry__bitmap_test(a, i));
        }
        free(a);
        free(b);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_basic),       cmocka_unit_test(test_set_range),
        cmocka_unit_test(test_find_next),   cmocka_unit_test(test_or),
        cmocka_unit_test(test_move_atomic), cmocka_unit_test(test_move_atomic_race),
        cmocka_unit_test(test_test_and_clear_race), cmocka_unit_test(test_bytes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
