/*
 * Unit tests of QMP dispatch (src/monitor/dispatch.c) without any socket: a table of request objects and the exact
 * replies QEMU would give (error classes, desc texts, id echo), argument checking for every FerryArgSpec type, the
 * "*" pass-through, the negotiation rule, the built-in commands, and -qmp spec parsing. The socket side is covered
 * by test-server.c.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "monitor/monitor.h"
#include "monitor/monitor-priv.h"

static json_t *cmd_echo(json_t *args, void *opaque, FerryError **errp)
{
    int *calls = opaque;
    (*calls)++;
    return json_deep_copy(args);
}

static json_t *cmd_fail(json_t *args, void *opaque, FerryError **errp)
{
    ferry_error_set(errp, FERRY_ERROR_DEVICE_NOT_FOUND, "no such device");
    return NULL;
}

static json_t *cmd_silent_null(json_t *args, void *opaque, FerryError **errp)
{
    return NULL;
}

static int echo_calls;

static const FerryArgSpec echo_args[] = {
    { "s", FERRY_ARG_STR, false },
    { "i", FERRY_ARG_INT, true },
    { "b", FERRY_ARG_BOOL, true },
    { "n", FERRY_ARG_NUMBER, true },
    { "o", FERRY_ARG_OBJECT, true },
    { "a", FERRY_ARG_ARRAY, true },
    { "x", FERRY_ARG_ANY, true },
    { NULL, FERRY_ARG_ANY, false },
};

static const FerryArgSpec pass_args[] = {
    { "mode", FERRY_ARG_STR, false },
    { "*", FERRY_ARG_ANY, true },
    { NULL, FERRY_ARG_ANY, false },
};

static FerryMonitor *make_monitor(void)
{
    FerryMonitor *mon = ferry__monitor_new();
    FerryError *err = NULL;
    assert_true(ferry__monitor_register(mon, "echo", echo_args, cmd_echo, &echo_calls, &err));
    assert_true(ferry__monitor_register(mon, "pass", pass_args, cmd_echo, &echo_calls, &err));
    assert_true(ferry__monitor_register(mon, "fail", NULL, cmd_fail, NULL, &err));
    assert_true(ferry__monitor_register(mon, "silent-null", NULL, cmd_silent_null, NULL, &err));
    assert_null(err);
    return mon;
}

typedef struct Case {
    const char *request;
    const char *reply;
    bool runs; /* whether the command function must have been called */
} Case;

#define GENERIC(desc) "{\"error\": {\"class\": \"GenericError\", \"desc\": \"" desc "\"}}"
#define GENERIC_ID(desc, id) "{\"error\": {\"class\": \"GenericError\", \"desc\": \"" desc "\"}, \"id\": " id "}"

static const Case cases[] = {
    /* Success, and the id echoed verbatim whatever its type. */
    { "{\"execute\": \"echo\", \"arguments\": {\"s\": \"x\"}, \"id\": 7}", "{\"return\": {\"s\": \"x\"}, \"id\": 7}",
      true },
    { "{\"id\": {\"a\": [1, \"b\"]}, \"execute\": \"echo\", \"arguments\": {\"s\": \"\"}}",
      "{\"return\": {\"s\": \"\"}, \"id\": {\"a\": [1, \"b\"]}}", true },
    { "{\"execute\": \"echo\", \"arguments\": {\"s\": \"y\"}}", "{\"return\": {\"s\": \"y\"}}", true },
    /* Every type, right. */
    { "{\"execute\": \"echo\", \"arguments\": {\"s\": \"v\", \"i\": -3, \"b\": false, \"n\": 2.5, \"o\": {}, "
      "\"a\": [], \"x\": null}}",
      "{\"return\": {\"s\": \"v\", \"i\": -3, \"b\": false, \"n\": 2.5, \"o\": {}, \"a\": [], \"x\": null}}", true },
    { "{\"execute\": \"echo\", \"arguments\": {\"s\": \"v\", \"n\": 4}}", "{\"return\": {\"s\": \"v\", \"n\": 4}}",
      true },
    /* Request shape. */
    { "[1, 2]", GENERIC("QMP input must be a JSON object"), false },
    { "42", GENERIC("QMP input must be a JSON object"), false },
    { "\"execute\"", GENERIC("QMP input must be a JSON object"), false },
    { "{\"arguments\": {}, \"id\": 1}", GENERIC_ID("QMP input lacks member 'execute'", "1"), false },
    { "{}", GENERIC("QMP input lacks member 'execute'"), false },
    { "{\"execute\": 1, \"id\": \"q\"}", GENERIC_ID("QMP input member 'execute' must be a string", "\"q\""),
      false },
    { "{\"execute\": \"echo\", \"foo\": 1, \"id\": \"x\"}", GENERIC_ID("QMP input member 'foo' is unexpected",
                                                                       "\"x\""), false },
    { "{\"execute\": \"echo\", \"arguments\": [\"s\"]}", GENERIC("QMP input member 'arguments' must be an object"),
      false },
    { "{\"execute\": \"echo\", \"arguments\": null}", GENERIC("QMP input member 'arguments' must be an object"),
      false },
    { "{\"execute\": \"nope\", \"id\": 3}",
      "{\"error\": {\"class\": \"CommandNotFound\", \"desc\": \"The command nope has not been found\"}, \"id\": 3}",
      false },
    /* Argument checking: missing, every wrong type, unexpected, and missing before unexpected (QEMU's order). */
    { "{\"execute\": \"echo\"}", GENERIC("Parameter 's' is missing"), false },
    { "{\"execute\": \"echo\", \"arguments\": {\"zz\": 1}}", GENERIC("Parameter 's' is missing"), false },
    { "{\"execute\": \"echo\", \"arguments\": {\"s\": 1}}",
      GENERIC("Invalid parameter type for 's', expected: string"), false },
    { "{\"execute\": \"echo\", \"arguments\": {\"s\": \"v\", \"i\": \"1\"}}",
      GENERIC("Invalid parameter type for 'i', expected: integer"), false },
    { "{\"execute\": \"echo\", \"arguments\": {\"s\": \"v\", \"i\": 1.5}}",
      GENERIC("Invalid parameter type for 'i', expected: integer"), false },
    { "{\"execute\": \"echo\", \"arguments\": {\"s\": \"v\", \"b\": 1}}",
      GENERIC("Invalid parameter type for 'b', expected: boolean"), false },
    { "{\"execute\": \"echo\", \"arguments\": {\"s\": \"v\", \"n\": \"1\"}}",
      GENERIC("Invalid parameter type for 'n', expected: number"), false },
    { "{\"execute\": \"echo\", \"arguments\": {\"s\": \"v\", \"o\": []}}",
      GENERIC("Invalid parameter type for 'o', expected: object"), false },
    { "{\"execute\": \"echo\", \"arguments\": {\"s\": \"v\", \"a\": {}}}",
      GENERIC("Invalid parameter type for 'a', expected: array"), false },
    { "{\"execute\": \"echo\", \"arguments\": {\"s\": \"v\", \"zz\": 1}}", GENERIC("Parameter 'zz' is unexpected"),
      false },
    /* "*": other keys reach the command, declared ones are still checked. */
    { "{\"execute\": \"pass\", \"arguments\": {\"mode\": \"m\", \"other\": 1, \"more\": [true]}}",
      "{\"return\": {\"mode\": \"m\", \"other\": 1, \"more\": [true]}}", true },
    { "{\"execute\": \"pass\", \"arguments\": {\"other\": 1}}", GENERIC("Parameter 'mode' is missing"), false },
    { "{\"execute\": \"pass\", \"arguments\": {\"mode\": 2}}",
      GENERIC("Invalid parameter type for 'mode', expected: string"), false },
    /* Command errors keep their class; a command that fails without an error still gets one. */
    { "{\"execute\": \"fail\", \"id\": [0]}",
      "{\"error\": {\"class\": \"DeviceNotFound\", \"desc\": \"no such device\"}, \"id\": [0]}", false },
    { "{\"execute\": \"silent-null\"}", GENERIC("Command silent-null failed without saying why"), false },
    /* Built-ins. */
    { "{\"execute\": \"query-version\", \"id\": \"v\"}",
      "{\"return\": {\"qemu\": {\"micro\": 0, \"minor\": 1, \"major\": 0}, \"package\": \"ferry 0.1.0\"}, "
      "\"id\": \"v\"}", false },
    { "{\"execute\": \"query-version\", \"arguments\": {\"x\": 1}}", GENERIC("Parameter 'x' is unexpected"),
      false },
    { "{\"execute\": \"qmp_capabilities\"}",
      "{\"error\": {\"class\": \"CommandNotFound\", \"desc\": \"Capabilities negotiation is already complete, "
      "command ignored\"}}", false },
};

static json_t *load(const char *text)
{
    json_error_t err;
    json_t *v = json_loads(text, JSON_DECODE_ANY, &err);
    if (!v) {
        fail_msg("test table JSON '%s': %s", text, err.text);
    }
    return v;
}

static void test_table(void **state)
{
    FerryMonitor *mon = make_monitor();
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        json_t *req = load(cases[i].request);
        json_t *want = load(cases[i].reply);
        int before = echo_calls;
        json_t *got = ferry__monitor_dispatch(mon, req);
        if (!json_equal(got, want)) {
            char *g = json_dumps(got, 0);
            fail_msg("request %s\n  got  %s\n  want %s", cases[i].request, g, cases[i].reply);
        }
        assert_int_equal(echo_calls - before, cases[i].runs ? 1 : 0);
        json_decref(req);
        json_decref(want);
        json_decref(got);
    }
    ferry__monitor_free(mon);
}

static json_t *handle(FerryMonitor *mon, const char *text, bool *negotiated)
{
    json_t *req = load(text);
    json_t *reply = ferry__monitor_handle(mon, req, negotiated);
    json_decref(req);
    return reply;
}

static void expect_error(json_t *reply, const char *cls, const char *desc)
{
    json_t *error = json_object_get(reply, "error");
    assert_non_null(error);
    assert_string_equal(json_string_value(json_object_get(error, "class")), cls);
    assert_string_equal(json_string_value(json_object_get(error, "desc")), desc);
    json_decref(reply);
}

static void test_negotiation(void **state)
{
    FerryMonitor *mon = make_monitor();
    bool negotiated = false;

    /* Known and unknown commands alike are "not found" before negotiation, and nothing runs. */
    int before = echo_calls;
    expect_error(handle(mon, "{\"execute\": \"echo\", \"arguments\": {\"s\": \"x\"}}", &negotiated),
                 "CommandNotFound", "Expecting capabilities negotiation with 'qmp_capabilities'");
    expect_error(handle(mon, "{\"execute\": \"nope\"}", &negotiated), "CommandNotFound",
                 "Expecting capabilities negotiation with 'qmp_capabilities'");
    assert_int_equal(echo_calls, before);
    /* A malformed request is reported as such even before negotiation. */
    expect_error(handle(mon, "{\"id\": 1}", &negotiated), "GenericError", "QMP input lacks member 'execute'");
    /* ferry offers no capability, so enabling one fails and leaves the client unnegotiated. */
    expect_error(handle(mon, "{\"execute\": \"qmp_capabilities\", \"arguments\": {\"enable\": [\"oob\"]}}",
                        &negotiated), "GenericError", "Capability 'oob' not available");
    expect_error(handle(mon, "{\"execute\": \"qmp_capabilities\", \"arguments\": {\"enable\": \"oob\"}}",
                        &negotiated), "GenericError", "Invalid parameter type for 'enable', expected: array");
    assert_false(negotiated);

    json_t *reply = handle(mon, "{\"execute\": \"qmp_capabilities\", \"id\": \"n\"}", &negotiated);
    json_t *want = load("{\"return\": {}, \"id\": \"n\"}");
    assert_true(json_equal(reply, want));
    json_decref(reply);
    json_decref(want);
    assert_true(negotiated);

    expect_error(handle(mon, "{\"execute\": \"qmp_capabilities\"}", &negotiated), "CommandNotFound",
                 "Capabilities negotiation is already complete, command ignored");
    assert_true(negotiated);
    reply = handle(mon, "{\"execute\": \"echo\", \"arguments\": {\"s\": \"x\"}}", &negotiated);
    assert_non_null(json_object_get(reply, "return"));
    json_decref(reply);
    ferry__monitor_free(mon);
}

static void test_query_commands(void **state)
{
    FerryMonitor *mon = make_monitor();
    json_t *req = load("{\"execute\": \"query-commands\"}");
    json_t *reply = ferry__monitor_dispatch(mon, req);
    json_t *list = json_object_get(reply, "return");
    assert_true(json_is_array(list));
    const char *want[] = { "qmp_capabilities", "query-version", "query-commands", "getfd", "closefd", "echo",
                           "pass", "fail", "silent-null" };
    assert_int_equal(json_array_size(list), sizeof(want) / sizeof(want[0]));
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        assert_string_equal(json_string_value(json_object_get(json_array_get(list, i), "name")), want[i]);
    }
    json_decref(req);
    json_decref(reply);
    ferry__monitor_free(mon);
}

static void test_register_errors(void **state)
{
    FerryMonitor *mon = make_monitor();
    FerryError *err = NULL;
    assert_false(ferry__monitor_register(mon, "echo", NULL, cmd_echo, NULL, &err));
    assert_string_equal(ferry_error_msg(err), "QMP command 'echo' is already registered");
    ferry_error_free(err);
    err = NULL;
    assert_false(ferry__monitor_register(mon, "query-version", NULL, cmd_echo, NULL, &err));
    ferry_error_free(err);
    err = NULL;
    static const FerryArgSpec twice[] = { { "a", FERRY_ARG_INT, false }, { "a", FERRY_ARG_STR, true },
                                          { NULL, FERRY_ARG_ANY, false } };
    assert_false(ferry__monitor_register(mon, "twice", twice, cmd_echo, NULL, &err));
    assert_string_equal(ferry_error_msg(err), "QMP command 'twice' declares argument 'a' twice");
    ferry_error_free(err);
    err = NULL;
    assert_false(ferry__monitor_register(mon, "", NULL, cmd_echo, NULL, &err));
    ferry_error_free(err);
    ferry__monitor_free(mon);
}

static void test_greeting(void **state)
{
    json_t *g = ferry__monitor_greeting();
    char *s = json_dumps(g, 0);
    assert_string_equal(s, "{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 0, \"minor\": 1, \"major\": 0}, "
                           "\"package\": \"ferry 0.1.0\"}, \"capabilities\": []}}");
    free(s);
    json_decref(g);
}

static void test_qmp_spec(void **state)
{
    static const struct {
        const char *spec;
        const char *path; /* NULL: must be rejected */
    } specs[] = {
        { "unix:/tmp/a.qmp,server=on,wait=off", "/tmp/a.qmp" },
        { "unix:/tmp/a.qmp,server,nowait", "/tmp/a.qmp" },
        { "unix:/tmp/a.qmp,wait=no,server=yes", "/tmp/a.qmp" },
        { "unix:/tmp/a,,b.qmp,server=on,wait=off", "/tmp/a,b.qmp" },
        { "unix:/tmp/a.qmp,server=on", "/tmp/a.qmp" },
        { "unix:/tmp/a.qmp", NULL },                       /* client mode */
        { "unix:/tmp/a.qmp,server=off,wait=off", NULL },
        { "unix:/tmp/a.qmp,server=on,wait=on", NULL },
        { "unix:/tmp/a.qmp,server=maybe", NULL },
        { "unix:/tmp/a.qmp,server=on,colour=red", NULL },
        { "unix:,server=on,wait=off", NULL },
        { "tcp:localhost:4444,server=on,wait=off", NULL },
        { "/tmp/a.qmp", NULL },
    };
    for (size_t i = 0; i < sizeof(specs) / sizeof(specs[0]); i++) {
        char *path = NULL;
        FerryError *err = NULL;
        bool ok = ferry__monitor_parse_qmp_spec(specs[i].spec, &path, &err);
        if (specs[i].path) {
            if (!ok) {
                fail_msg("%s rejected: %s", specs[i].spec, ferry_error_msg(err));
            }
            assert_string_equal(path, specs[i].path);
        } else {
            if (ok) {
                fail_msg("%s accepted", specs[i].spec);
            }
            /* The message names the spec that was wrong. */
            assert_non_null(strstr(ferry_error_msg(err), specs[i].spec));
        }
        free(path);
        ferry_error_free(err);
    }
    /* A path longer than sun_path is rejected at parse time, not truncated. */
    char long_spec[300];
    memset(long_spec, 'x', sizeof(long_spec));
    memcpy(long_spec, "unix:/", 6);
    strcpy(long_spec + 250, ",server=on,wait=off");
    FerryError *err = NULL;
    assert_false(ferry__monitor_parse_qmp_spec(long_spec, NULL, &err));
    ferry_error_free(err);
}

static json_t *cmd_fail_bytes(json_t *args, void *opaque, FerryError **errp)
{
    /* A message quoting bytes that are not UTF-8: a lone continuation byte, a truncated sequence, an overlong
     * '/', a surrogate, then valid two-, three- and four-byte characters that must survive. */
    ferry_error_setg(errp, "block '\x80\xff' %s", (const char *)opaque);
    return NULL;
}

/* An error whose text jansson refuses (not UTF-8) must still reach the client as an error reply naming the command's
 * message, not as a NULL reply (which the server would fail to serialise and abort on). */
static void test_error_not_utf8(void **state)
{
    FerryMonitor *mon = ferry__monitor_new();
    FerryError *err = NULL;
    assert_true(ferry__monitor_register(mon, "fail-bytes", NULL, cmd_fail_bytes,
                                        "\xe2\x82 \xc0\xaf \xed\xa0\x80 \xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80 end", &err));
    json_t *req = json_pack("{s:s, s:i}", "execute", "fail-bytes", "id", 7);
    json_t *reply = ferry__monitor_dispatch(mon, req);
    json_decref(req);
    assert_non_null(reply);
    assert_int_equal(json_integer_value(json_object_get(reply, "id")), 7);
    expect_error(reply, "GenericError", "block '?" "?' ?" "? ?" "? ?" "?" "? \xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80 end");
    ferry__monitor_free(mon);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table),
        cmocka_unit_test(test_negotiation),
        cmocka_unit_test(test_query_commands),
        cmocka_unit_test(test_register_errors),
        cmocka_unit_test(test_greeting),
        cmocka_unit_test(test_qmp_spec),
        cmocka_unit_test(test_error_not_utf8),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
