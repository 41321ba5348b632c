/*
 * Unit tests of the text helpers of src/util/util.c for strings a peer may have sent: ferry__utf8_scrub (invalid
 * UTF-8 becomes '?'), ferry__utf8_scrub_bounded (cut at a character boundary, with a marker saying how much was
 * cut) and ferry__log_escape (control characters and invalid bytes escaped, valid UTF-8 kept), and ferry__log
 * itself: whatever the message holds, one call writes exactly one line to stderr.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "util/util.h"

static void expect_scrub_bounded(const char *in, size_t max, const char *want)
{
    char *got = ferry__utf8_scrub_bounded(in, max);
    if (strcmp(got, want) != 0) {
        fail_msg("ferry__utf8_scrub_bounded('%s', %zu) = '%s', want '%s'", in, max, got, want);
    }
    free(got);
}

static void test_scrub(void **state)
{
    char *s = ferry__utf8_scrub("caf\xc3\xa9 \xff\xc3(\xed\xa0\x80 \xe2\x82\xac");
    /* A stray byte, a lead byte without its continuation, an encoded surrogate: '?' each byte; the rest kept. */
    assert_string_equal(s, "caf\xc3\xa9 ?" "?(?" "?? \xe2\x82\xac");
    free(s);

    /* Short enough: unchanged (only scrubbed). */
    expect_scrub_bounded("abc", 3, "abc");
    expect_scrub_bounded("a\xff", 10, "a?");
    expect_scrub_bounded("", 0, "");
    /* Longer: cut, and the marker says how many bytes of the original are gone. */
    expect_scrub_bounded("abcdef", 4, "abcd... (2 bytes cut)");
    expect_scrub_bounded("abc", 0, "... (3 bytes cut)");
    /* Never inside a character: the two bytes of the é do not fit in 2, so only "a" is kept. */
    expect_scrub_bounded("a\xc3\xa9z", 2, "a... (3 bytes cut)");
    expect_scrub_bounded("a\xc3\xa9z", 3, "a\xc3\xa9... (1 bytes cut)");
    expect_scrub_bounded("\xe2\x82\xac\xe2\x82\xac", 5, "\xe2\x82\xac... (3 bytes cut)");

    /* A peer's megabyte: the copy keeps the bound, whatever the input. */
    size_t big = 1 << 20;
    char *in = ferry__xmalloc(big + 1);
    for (size_t i = 0; i < big; i += 2) {
        in[i] = (char)0xc3;
        in[i + 1] = (char)0xa9;
    }
    in[big] = '\0';
    s = ferry__utf8_scrub_bounded(in, 1024);
    assert_int_equal(strlen(s), 1024 + strlen("... (1047552 bytes cut)"));
    assert_string_equal(s + 1024, "... (1047552 bytes cut)");
    free(s);
    /* An odd bound falls inside a character, which is left out whole. */
    s = ferry__utf8_scrub_bounded(in, 1023);
    assert_string_equal(s + 1022, "... (1047554 bytes cut)");
    free(s);
    free(in);
}

static void expect_escape(const char *in, const char *want)
{
    char *got = ferry__log_escape(in);
    if (strcmp(got, want) != 0) {
        fail_msg("ferry__log_escape: got '%s', want '%s'", got, want);
    }
    free(got);
}

static void test_log_escape(void **state)
{
    expect_escape("plain text, 'quoted' and \\ kept", "plain text, 'quoted' and \\ kept");
    expect_escape("a\nb\rc\td", "a\\nb\\rc\\td");
    /* ESC (a terminal's control sequences), BEL, DEL, NUL-adjacent C0 bytes. */
    expect_escape("\x1b[2J\x1b]0;title\x07\x7f\x01\x1f", "\\x1b[2J\\x1b]0;title\\x07\\x7f\\x01\\x1f");
    /* Valid UTF-8 is kept, C1 controls (here CSI, U+009B) are not; U+00A0 is not a control. */
    expect_escape("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80", "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80");
    expect_escape("\xc2\x9b" "31m \xc2\xa0", "\\xc2\\x9b" "31m \xc2\xa0");
    /* Bytes that are not UTF-8 are shown, not replaced. */
    expect_escape("\xff\xfe \xc3(", "\\xff\\xfe \\xc3(");
    expect_escape("", "");
}

/* What ferry__log writes to stderr for @arg as its only %s. */
static char *log_output(const char *arg)
{
    char path[] = "/tmp/ferry-test-log-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    unlink(path);
    fflush(stderr);
    int saved = dup(STDERR_FILENO);
    assert_true(saved >= 0);
    assert_int_equal(dup2(fd, STDERR_FILENO), STDERR_FILENO);
    ferry__log(FERRY_LOG_ERROR, "section '%s' instance 0: bad", arg);
    fflush(stderr);
    assert_int_equal(dup2(saved, STDERR_FILENO), STDERR_FILENO);
    close(saved);
    off_t len = lseek(fd, 0, SEEK_END);
    char *out = ferry__xmalloc((size_t)len + 1);
    assert_int_equal(pread(fd, out, (size_t)len, 0), len);
    out[len] = '\0';
    close(fd);
    return out;
}

static void test_log_one_line(void **state)
{
    /* A section name that would end the line, then forge a whole line of its own, and hide it with an escape. */
    char *out = log_output("x\r\n12:00:00.000000 ferry error: forged\x1b[1A\x1b[2K");
    assert_non_null(strstr(out, "ferry error: section 'x\\r\\n12:00:00.000000 ferry error: forged\\x1b[1A\\x1b[2K' "
                                "instance 0: bad\n"));
    assert_ptr_equal(strchr(out, '\n'), out + strlen(out) - 1);
    assert_null(strchr(out, '\r'));
    assert_null(strchr(out, '\x1b'));
    free(out);
    out = log_output("caf\xc3\xa9");
    assert_non_null(strstr(out, "section 'caf\xc3\xa9' instance 0: bad\n"));
    free(out);
    /* A 1 MiB string from a peer is one bounded line. */
    char *big = ferry__xmalloc(1 << 20);
    memset(big, 'A', (1 << 20) - 1);
    big[(1 << 20) - 1] = '\0';
    out = log_output(big);
    assert_true(strlen(out) < FERRY_LOG_LINE_MAX + 128);
    assert_non_null(strstr(out, " bytes cut)\n"));
    assert_ptr_equal(strchr(out, '\n'), out + strlen(out) - 1);
    free(out);
    free(big);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_scrub),
        cmocka_unit_test(test_log_escape),
        cmocka_unit_test(test_log_one_line),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
