/*
 * Unit tests of the number and size parsers of src/util/util.c, table driven: every good form with its value,
 * every bad form with a substring its error message must contain (the message names what and the value).
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

static const struct {
    const char *in;
    uint64_t value;
} good_sizes[] = {
    { "0", 0 },
    { "4096", 4096 },
    { "512k", 512 * 1024ULL },
    { "512K", 512 * 1024ULL },
    { "256M", 256ULL << 20 },
    { "256m", 256ULL << 20 },
    { "4G", 4ULL << 30 },
    { "1.5G", 3ULL << 29 },
    { "0.5K", 512 },
    { "1.0", 1 },
    { "100B", 100 },
    { "100b", 100 },
    { "2T", 2ULL << 40 },
    { "3P", 3ULL << 50 },
    { "15E", 15ULL << 60 },
    { "1.25M", 1310720 },
    { "18446744073709551615", UINT64_MAX },
    { "0.999999999999999999999K", 1023 }, /* truncated to whole bytes, extra digits ignored */
};

static const struct {
    const char *in;
    const char *err; /* substring of the message */
} bad_sizes[] = {
    { "", "invalid test-size ''" },
    { "-1", "'-1'" },
    { "-1G", "'-1G'" },
    { "+5", "'+5'" },
    { " 5", "' 5'" },
    { "5 ", "unknown size suffix ' '" },
    { "G", "expected a size" },
    { "abc", "expected a size" },
    { "4X", "unknown size suffix 'X'" },
    { "4GB", "unknown size suffix 'GB'" },
    { "4Gi", "unknown size suffix 'Gi'" },
    { "1.5", "cannot have a fraction" },
    { "1.5B", "cannot have a fraction" },
    { "1.", "expected digits after the decimal point" },
    { ".5G", "expected a size" },
    { "1..5G", "expected digits after the decimal point" },
    { "16E", "too large" },
    { "18446744073709551616", "too large" },
    { "99999999999999999999999K", "too large" },
    { "17179869184G", "too large" },
    { "0x10", "unknown size suffix 'x10'" },
    { "16.5E", "too large" },
};

static void test_size_good(void **state)
{
    for (size_t i = 0; i < FERRY_ARRAY_SIZE(good_sizes); i++) {
        FerryError *err = NULL;
        uint64_t v = 12345;
        bool ok = ferry__parse_size(good_sizes[i].in, "test-size", &v, &err);
        if (!ok) {
            print_error("'%s' rejected: %s\n", good_sizes[i].in, ferry_error_msg(err));
        }
        assert_true(ok);
        assert_null(err);
        if (v != good_sizes[i].value) {
            print_error("'%s' gave %llu\n", good_sizes[i].in, (unsigned long long)v);
        }
        assert_true(v == good_sizes[i].value);
    }
}

static void test_size_bad(void **state)
{
    for (size_t i = 0; i < FERRY_ARRAY_SIZE(bad_sizes); i++) {
        FerryError *err = NULL;
        uint64_t v = 777;
        bool ok = ferry__parse_size(bad_sizes[i].in, "test-size", &v, &err);
        if (ok) {
            print_error("'%s' accepted as %llu\n", bad_sizes[i].in, (unsigned long long)v);
        }
        assert_false(ok);
        assert_non_null(err);
        assert_true(v == 777); /* untouched on failure */
        const char *msg = ferry_error_msg(err);
        if (!strstr(msg, bad_sizes[i].err) || !strstr(msg, "test-size")) {
            print_error("'%s': message '%s' lacks '%s'\n", bad_sizes[i].in, msg, bad_sizes[i].err);
            fail();
        }
        /* The message names the value. */
        char quoted[64];
        snprintf(quoted, sizeof(quoted), "'%s'", bad_sizes[i].in);
        assert_non_null(strstr(msg, quoted));
        ferry_error_free(err);
    }
}

static void test_size_null_errp(void **state)
{
    uint64_t v = 0;
    assert_false(ferry__parse_size("bogus", "x", &v, NULL));
    assert_true(ferry__parse_size("1k", "x", &v, NULL));
    assert_true(v == 1024);
}

static void test_uint64(void **state)
{
    static const struct {
        const char *in;
        bool ok;
        uint64_t value;
    } cases[] = {
        { "0", true, 0 },
        { "65535", true, 65535 },
        { "18446744073709551615", true, UINT64_MAX },
        { "18446744073709551616", false, 0 },
        { "", false, 0 },
        { "-1", false, 0 },
        { "+1", false, 0 },
        { "1k", false, 0 },
        { " 1", false, 0 },
        { "1 ", false, 0 },
        { "0x1", false, 0 },
    };
    for (size_t i = 0; i < FERRY_ARRAY_SIZE(cases); i++) {
        FerryError *err = NULL;
        uint64_t v = 99;
        bool ok = ferry__parse_uint64(cases[i].in, "count", &v, &err);
        if (ok != cases[i].ok) {
            print_error("'%s': expected %s\n", cases[i].in, cases[i].ok ? "success" : "failure");
            fail();
        }
        if (ok) {
            assert_true(v == cases[i].value);
        } else {
            assert_non_null(strstr(ferry_error_msg(err), "count"));
            assert_true(v == 99);
            ferry_error_free(err);
        }
    }
}

/* Invalid UTF-8 bytes become '?', valid multi-byte sequences stay. */
static void test_utf8_scrub(void **state)
{
    static const struct {
        const char *in, *out;
    } cases[] = {
        { "plain", "plain" },
        { "caf\xc3\xa9", "caf\xc3\xa9" },                   /* e-acute, 2 bytes */
        { "\xe2\x82\xac 5", "\xe2\x82\xac 5" },             /* euro sign, 3 bytes */
        { "\xf0\x9f\x98\x80", "\xf0\x9f\x98\x80" },       /* emoji, 4 bytes */
        { "a\xff" "b", "a?b" },                              /* never valid */
        { "\xc3", "?" },                                    /* truncated sequence */
        { "\xc0\xaf", "??" },                              /* overlong '/' */
        { "\xed\xa0\x80", "???" },                        /* surrogate U+D800 */
        { "\xf4\x90\x80\x80", "????" },                  /* above U+10FFFF */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *got = ferry__utf8_scrub(cases[i].in);
        assert_string_equal(got, cases[i].out);
        free(got);
    }
}

static void test_alloc_and_clock(void **state)
{
    char *s = ferry__xasprintf("%s-%d", "a", 7);
    assert_string_equal(s, "a-7");
    free(s);
    s = ferry__xstrndup("abcdef", 3);
    assert_string_equal(s, "abc");
    free(s);
    assert_null(ferry__xstrdup(NULL));

    int64_t t0 = ferry__clock_ns();
    ferry__sleep_ns(2000000);
    int64_t t1 = ferry__clock_ns();
    assert_true(t1 - t0 >= 2000000);
    assert_true(ferry__clock_ms() >= t1 / 1000000);
    int64_t sec, usec;
    ferry__realtime(&sec, &usec);
    assert_true(sec > 1600000000); /* after 2020: the wall clock, not the monotonic one */
    assert_true(usec >= 0 && usec < 1000000);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_size_good), cmocka_unit_test(test_size_bad),
        cmocka_unit_test(test_size_null_errp), cmocka_unit_test(test_uint64),
        cmocka_unit_test(test_alloc_and_clock), cmocka_unit_test(test_utf8_scrub),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
