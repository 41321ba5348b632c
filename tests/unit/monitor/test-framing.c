/*
 * Unit tests of the QMP server's input path without sockets (a detached client, ferry__monitor_client_feed): the
 * incremental framing of json-frame.c (replies do not depend on how the input is split; one byte at a time costs
 * linear time), and the bounds of monitor.h: the request size limit to the byte, the nesting limit, the skipped
 * line after a parse error, the cut-off after consecutive bad inputs, and resynchronisation after errors (an
 * unterminated string, a mismatched bracket). The socket side of the limits (socket mode, many clients, running
 * out of fds) is in test-server.c.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "monitor/monitor.h"
#include "util/util.h"

static json_t *cmd_echo(json_t *args, void *opaque, FerryError **errp)
{
    return json_deep_copy(args);
}

static FerryMonitor *monitor_new(void)
{
    static const FerryArgSpec echo_args[] = { { "s", FERRY_ARG_ANY, true }, { NULL, FERRY_ARG_ANY, false } };
    FerryMonitor *mon = ferry__monitor_new();
    assert_true(ferry__monitor_register(mon, "echo", echo_args, cmd_echo, NULL, NULL));
    return mon;
}

/* A negotiated detached client, its greeting and negotiation reply taken. */
static FerryMonitorClient *client_new(FerryMonitor *mon)
{
    FerryMonitorClient *c = ferry__monitor_client_new_detached(mon);
    static const char caps[] = "{\"execute\": \"qmp_capabilities\"}\n";
    assert_true(ferry__monitor_client_feed(mon, c, caps, strlen(caps)));
    size_t len;
    char *out = ferry__monitor_client_take_output(c, &len);
    assert_non_null(strstr(out, "{\"return\": {}}\r\n"));
    free(out);
    return c;
}

/* Everything the monitor answered to @input fed in pieces of @piece bytes (0: at once); *alive: whether the
 * client was still served at the end. */
static char *answers(const char *input, size_t len, size_t piece, bool *alive)
{
    FerryMonitor *mon = monitor_new();
    FerryMonitorClient *c = client_new(mon);
    bool ok = true;
    for (size_t pos = 0; pos < len && ok;) {
        size_t n = piece ? FERRY_MIN(piece, len - pos) : len - pos;
        ok = ferry__monitor_client_feed(mon, c, input + pos, n);
        pos += n;
    }
    size_t out_len;
    char *out = ferry__monitor_client_take_output(c, &out_len);
    ferry__monitor_client_free(c);
    ferry__monitor_free(mon);
    if (alive) {
        *alive = ok;
    }
    return out;
}

/* The number of replies in @out whose desc starts with @prefix. */
static int count_errors(const char *out, const char *prefix)
{
    int n = 0;
    char *needle = ferry__xasprintf("\"desc\": \"%s", prefix);
    for (const char *p = strstr(out, needle); p; p = strstr(p + 1, needle)) {
        n++;
    }
    free(needle);
    return n;
}

static int count_lines(const char *out)
{
    int n = 0;
    for (const char *p = strstr(out, "\r\n"); p; p = strstr(p + 2, "\r\n")) {
        n++;
    }
    return n;
}

static void test_split_anywhere(void **state)
{
    static const char *const inputs[] = {
        "{\"execute\": \"echo\", \"arguments\": {\"s\": \"a\"}, \"id\": 1}{\"execute\": \"echo\", \"id\": 2}\r\n",
        "{\"execute\": \"echo\", \"arguments\": {\"s\": \"caf\xc3\xa9 \xe2\x82\xac \\\"q\\\" \\\\\"}}\n",
        "12 34\n[1, {\"a\": [2, 3]}] \"str\" true null\n{\"execute\": \"echo\"}",
        "}} garbage\n{\"execute\": \"echo\", \"id\": 3}\n{\"execute\": \"echo\" \"oops\"}\n{\"execute\": \"echo\"}\n",
        "{\"execute\": \"echo\", \"id\": \"unterminated\n{\"execute\": \"echo\", \"id\": 4}\n",
        "[1, 2}\n{\"execute\": \"echo\", \"id\": 5}\n{'single': 1}\n\x01\xff\n{\"execute\": \"echo\", \"id\": 6}\n",
    };
    for (size_t i = 0; i < FERRY_ARRAY_SIZE(inputs); i++) {
        size_t len = strlen(inputs[i]);
        char *whole = answers(inputs[i], len, 0, NULL);
        for (size_t piece = 1; piece <= 7; piece++) {
            char *split = answers(inputs[i], len, piece, NULL);
            if (strcmp(whole, split) != 0) {
                fail_msg("input %zu in pieces of %zu:\n%s\nat once:\n%s", i, piece, split, whole);
            }
            free(split);
        }
        free(whole);
    }
}

static void test_resynchronisation(void **state)
{
    /* A string without its closing quote ends at the newline: the next line is served, not swallowed. */
    static const char unterminated[] = "{\"execute\": \"echo\", \"id\": \"oops\n{\"execute\": \"echo\", \"id\": 1}\n";
    char *out = answers(unterminated, strlen(unterminated), 0, NULL);
    assert_int_equal(count_errors(out, "JSON parse error, "), 1);
    assert_non_null(strstr(out, "{\"return\": {}, \"id\": 1}\r\n"));
    free(out);

    /* A closing bracket of the wrong kind ends the value at once. */
    static const char mismatched[] = "{\"execute\": [}\n{\"execute\": \"echo\", \"id\": 2}\n";
    out = answers(mismatched, strlen(mismatched), 0, NULL);
    assert_int_equal(count_errors(out, "JSON parse error, "), 1);
    assert_non_null(strstr(out, "{\"return\": {}, \"id\": 2}\r\n"));
    free(out);

    /* After a parse error the rest of that line is dropped, the next line is not. */
    static const char rest[] = "nonsense {\"execute\": \"echo\", \"id\": 3}\n{\"execute\": \"echo\", \"id\": 4}\n";
    out = answers(rest, strlen(rest), 0, NULL);
    assert_int_equal(count_errors(out, "JSON parse error, "), 1);
    assert_null(strstr(out, "\"id\": 3"));
    assert_non_null(strstr(out, "{\"return\": {}, \"id\": 4}\r\n"));
    free(out);
}

static void test_duplicate_keys(void **state)
{
    /* The last key does not win: a request with "execute" twice is refused naming the key, and so is a duplicate
     * inside the arguments. Each refused value is dropped alone: the next value on the same line is served. */
    static const char dup[] =
        "{\"execute\": \"echo\", \"execute\": \"nonexistent\", \"id\": 1} {\"execute\": \"echo\", \"id\": 2}\n"
        "{\"execute\": \"echo\", \"arguments\": {\"s\": \"a\", \"s\": \"b\"}, \"id\": 3}{\"execute\": \"echo\", "
        "\"id\": 4}\n";
    bool alive;
    char *out = answers(dup, strlen(dup), 0, &alive);
    assert_true(alive);
    assert_int_equal(count_errors(out, "JSON parse error, duplicate object key near '\\\"execute\\\"'"), 1);
    assert_int_equal(count_errors(out, "JSON parse error, duplicate object key near '\\\"s\\\"'"), 1);
    assert_null(strstr(out, "\"id\": 1"));
    assert_null(strstr(out, "\"id\": 3"));
    assert_non_null(strstr(out, "{\"return\": {}, \"id\": 2}\r\n"));
    assert_non_null(strstr(out, "{\"return\": {}, \"id\": 4}\r\n"));
    assert_int_equal(count_lines(out), 4);
    free(out);

    /* A duplicate followed by a syntax error: one error, and the line is skipped as after any syntax error. */
    static const char both[] = "{\"a\": 1, \"a\": 2 oops} {\"execute\": \"echo\", \"id\": 5}\n"
                               "{\"execute\": \"echo\", \"id\": 6}\n";
    out = answers(both, strlen(both), 0, &alive);
    assert_true(alive);
    assert_int_equal(count_errors(out, "JSON parse error, duplicate object key"), 1);
    assert_null(strstr(out, "\"id\": 5"));
    assert_non_null(strstr(out, "{\"return\": {}, \"id\": 6}\r\n"));
    assert_int_equal(count_lines(out), 2);
    free(out);
}

/* A request of exactly @len bytes: {"execute": "echo", "arguments": {"s": "aaa..."}}. */
static char *request_of_size(size_t len)
{
    static const char head[] = "{\"execute\": \"echo\", \"arguments\": {\"s\": \"";
    static const char tail[] = "\"}}";
    char *r = ferry__xmalloc(len + 2);
    memset(r, 'a', len);
    memcpy(r, head, strlen(head));
    memcpy(r + len - strlen(tail), tail, strlen(tail));
    r[len] = '\n';
    r[len + 1] = '\0';
    return r;
}

static void test_size_limit(void **state)
{
    bool alive;
    /* Exactly the limit: served. */
    char *req = request_of_size(FERRY_MONITOR_MAX_INPUT);
    char *out = answers(req, FERRY_MONITOR_MAX_INPUT + 1, 0, &alive);
    assert_true(alive);
    assert_non_null(strstr(out, "{\"return\": {\"s\": \"aaaa"));
    free(out);
    free(req);

    /* One byte more: an error and the cut-off, however it arrives. */
    req = request_of_size(FERRY_MONITOR_MAX_INPUT + 1);
    for (size_t piece = 0; piece <= 4096; piece += 4096) {
        out = answers(req, FERRY_MONITOR_MAX_INPUT + 2, piece, &alive);
        assert_false(alive);
        assert_int_equal(count_lines(out), 1);
        assert_int_equal(count_errors(out, "QMP input exceeds 1048576 bytes without a complete request; closing"), 1);
        free(out);
    }
    free(req);

    /* A line skipped after a parse error is bounded too: garbage without a newline cannot be fed forever. */
    size_t len = FERRY_MONITOR_MAX_INPUT + 10;
    char *garbage = ferry__xmalloc(len);
    memset(garbage, 'x', len);
    garbage[0] = '}';
    out = answers(garbage, len, 65536, &alive);
    assert_false(alive);
    assert_int_equal(count_errors(out, "JSON parse error, "), 1);
    assert_int_equal(count_errors(out, "QMP input exceeds 1048576 bytes"), 1);
    free(out);
    free(garbage);
}

static void test_nesting_limit(void **state)
{
    for (int depth = FERRY_MONITOR_MAX_DEPTH - 2; depth <= FERRY_MONITOR_MAX_DEPTH + 1; depth++) {
        /* {"execute": "echo", "arguments": {"s": [[...]]}}: two levels are the request's own. */
        size_t inner = (size_t)depth - 2;
        char *open = ferry__xmalloc(inner + 1), *close = ferry__xmalloc(inner + 1);
        memset(open, '[', inner);
        memset(close, ']', inner);
        open[inner] = close[inner] = '\0';
        char *req = ferry__xasprintf("{\"execute\": \"echo\", \"arguments\": {\"s\": %s%s}}\n"
                                     "{\"execute\": \"echo\", \"id\": 9}\n", open, close);
        free(open);
        free(close);
        bool alive;
        char *out = answers(req, strlen(req), 0, &alive);
        assert_true(alive);
        bool too_deep = depth > FERRY_MONITOR_MAX_DEPTH;
        assert_int_equal(count_errors(out, "JSON parse error, nesting depth limit exceeded (at most 1024 levels)"),
                         too_deep ? 1 : 0);
        assert_int_equal(strstr(out, "{\"return\": {\"s\": [[") != NULL, !too_deep);
        /* The next line is served either way. */
        assert_non_null(strstr(out, "{\"return\": {}, \"id\": 9}\r\n"));
        free(out);
        free(req);
    }
}

static void test_bad_input_cut_off(void **state)
{
    bool alive;
    /* One short of the limit, then a request: served, and the count starts again. */
    char input[4096] = "";
    for (int i = 0; i < FERRY_MONITOR_MAX_BAD_INPUT - 1; i++) {
        strcat(input, i % 3 == 0 ? "garbage\n" : i % 3 == 1 ? "42\n" : "[1, 2]\n");
    }
    strcat(input, "{\"execute\": \"echo\", \"id\": 1}\n");
    for (int i = 0; i < FERRY_MONITOR_MAX_BAD_INPUT - 1; i++) {
        strcat(input, "\x01\n");
    }
    strcat(input, "{\"execute\": \"echo\", \"id\": 2}\n");
    char *out = answers(input, strlen(input), 0, &alive);
    assert_true(alive);
    assert_non_null(strstr(out, "\"id\": 1}"));
    assert_non_null(strstr(out, "\"id\": 2}"));
    free(out);

    /* At the limit: every bad input is answered, then the client is told and cut off; what follows is not read. */
    input[0] = '\0';
    for (int i = 0; i < FERRY_MONITOR_MAX_BAD_INPUT; i++) {
        strcat(input, i % 2 ? "not json\n" : "\"a string\"\n");
    }
    strcat(input, "{\"execute\": \"echo\", \"id\": 3}\n");
    out = answers(input, strlen(input), 1, &alive);
    assert_false(alive);
    assert_int_equal(count_lines(out), FERRY_MONITOR_MAX_BAD_INPUT + 1);
    assert_int_equal(count_errors(out, "10 inputs in a row were not QMP requests; closing"), 1);
    assert_null(strstr(out, "\"id\": 3"));
    free(out);

    /* Random bytes: errors, then the cut-off, long before the input ends. */
    size_t len = 1 << 20;
    unsigned char *noise = ferry__xmalloc(len);
    uint32_t x = 2463534242u;
    for (size_t i = 0; i < len; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        noise[i] = (unsigned char)x;
    }
    out = answers((const char *)noise, len, 4096, &alive);
    assert_false(alive);
    assert_true(count_lines(out) <= FERRY_MONITOR_MAX_BAD_INPUT + 1);
    free(out);
    free(noise);
}

static void test_linear_time(void **state)
{
    /* A request just under the limit, one byte per read: with re-parsing after every read this would take hours
     * (10^11 bytes parsed); framed incrementally it takes a moment, even under the sanitizers. */
    size_t len = FERRY_MONITOR_MAX_INPUT - 16;
    char *req = request_of_size(len);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    bool alive;
    char *out = answers(req, len + 1, 1, &alive);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    assert_true(alive);
    assert_non_null(strstr(out, "{\"return\": {\"s\": \"aaaa"));
    double secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    if (secs > 30) {
        fail_msg("1 MiB fed one byte at a time took %.1f s", secs);
    }
    free(out);
    free(req);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_split_anywhere),
        cmocka_unit_test(test_resynchronisation),
        cmocka_unit_test(test_duplicate_keys),
        cmocka_unit_test(test_size_limit),
        cmocka_unit_test(test_nesting_limit),
        cmocka_unit_test(test_bad_input_cut_off),
        cmocka_unit_test(test_linear_time),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
