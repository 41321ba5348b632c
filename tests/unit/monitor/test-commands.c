/*
 * Unit tests of the monitor's edge with the host runtime's command functions behind it (src/host, src/monitor/
 * hmp.c): the uri/channels rule of migrate and migrate-incoming, the -incoming forms (defer, URI, JSON channel,
 * config:) and -monitor, and HMP: line parsing, the translation into QMP commands and the human output. A real
 * FerryHost is used without starting a migration; nothing here opens a socket except the host itself.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "host/host-int.h"
#include "migration/migration-priv.h"
#include "monitor/monitor.h"

static json_t *qmp(FerryHost *h, const char *text)
{
    json_t *req = json_loads(text, 0, NULL);
    assert_non_null(req);
    json_t *reply = ferry__monitor_dispatch(h->mon, req);
    json_decref(req);
    return reply;
}

/* Run @text and check that it fails with a desc containing @want. */
static void expect_qmp_error(FerryHost *h, const char *text, const char *want)
{
    json_t *reply = qmp(h, text);
    const char *desc = json_string_value(json_object_get(json_object_get(reply, "error"), "desc"));
    if (!desc || !strstr(desc, want)) {
        char *r = json_dumps(reply, 0);
        fail_msg("%s: got %s, want an error with '%s'", text, r, want);
    }
    json_decref(reply);
}

static void test_uri_or_channels(void **state)
{
    FerryHost *h = ferry_host_new("test", NULL);
    assert_non_null(h);
    static const char uri_and_channels[] =
        "{\"execute\": \"%s\", \"arguments\": {\"uri\": \"unix:/tmp/x\", \"channels\": [{\"channel-type\": "
        "\"main\", \"addr\": {\"transport\": \"socket\", \"type\": \"unix\", \"path\": \"/tmp/x\"}}]}}";
    const char *cmds[] = { "migrate", "migrate-incoming" };
    for (size_t i = 0; i < 2; i++) {
        char buf[512];
        snprintf(buf, sizeof(buf), uri_and_channels, cmds[i]);
        expect_qmp_error(h, buf, "need either 'uri' or 'channels' argument");
        snprintf(buf, sizeof(buf), "{\"execute\": \"%s\"}", cmds[i]);
        expect_qmp_error(h, buf, "need either 'uri' or 'channels' argument");
        /* The channels are parsed by the address model, whose errors name the element. */
        snprintf(buf, sizeof(buf), "{\"execute\": \"%s\", \"arguments\": {\"channels\": [{\"channel-type\": "
                 "\"main\", \"addr\": {\"transport\": \"socket\", \"type\": \"unix\"}}]}}", cmds[i]);
        expect_qmp_error(h, buf, "channels[0]");
        snprintf(buf, sizeof(buf), "{\"execute\": \"%s\", \"arguments\": {\"channels\": {}}}", cmds[i]);
        expect_qmp_error(h, buf, "Invalid parameter type for 'channels', expected: array");
        snprintf(buf, sizeof(buf), "{\"execute\": \"%s\", \"arguments\": {\"uri\": \"bogus:x\"}}", cmds[i]);
        expect_qmp_error(h, buf, "bogus");
    }
    /* A good address in either form gets past parsing to the engine, which refuses for its own reasons. */
    expect_qmp_error(h, "{\"execute\": \"migrate\", \"arguments\": {\"channels\": [{\"channel-type\": \"main\", "
                        "\"addr\": {\"transport\": \"socket\", \"type\": \"unix\", \"path\": \"/tmp/x\"}}]}}",
                     "nothing to migrate");
    expect_qmp_error(h, "{\"execute\": \"migrate\", \"arguments\": {\"uri\": \"unix:/tmp/x\"}}",
                     "nothing to migrate");
    expect_qmp_error(h, "{\"execute\": \"migrate-incoming\", \"arguments\": {\"channels\": [{\"channel-type\": "
                        "\"main\", \"addr\": {\"transport\": \"socket\", \"type\": \"unix\", \"path\": \"/tmp/x\"}}], "
                        "\"exit-on-error\": false}}",
                     "'-incoming' was not specified on the command line");
    ferry_host_free(h);
}

static int opt(FerryHost *h, const char *o, const char *arg, FerryError **errp)
{
    bool used = false;
    return ferry_host_parse_option(h, o, arg, &used, errp);
}

static void expect_opt_error(FerryHost *h, const char *o, const char *arg, const char *want)
{
    FerryError *err = NULL;
    assert_int_equal(opt(h, o, arg, &err), -1);
    if (!strstr(ferry_error_msg(err), want)) {
        fail_msg("%s %s: got '%s', want '%s'", o, arg, ferry_error_msg(err), want);
    }
    ferry_error_free(err);
}

static char *main_uri(FerryHost *h)
{
    return ferry__address_to_uri(h->incoming_addrs[FERRY_CHANNEL_MAIN]);
}

static void test_incoming_options(void **state)
{
    FerryHost *h = ferry_host_new("test", NULL);
    FerryError *err = NULL;

    /* config: alone does not make the program wait for a migration (as in QEMU). */
    assert_int_equal(opt(h, "-incoming", "config:downtime-limit=123,max-bandwidth=1G", &err), 1);
    assert_false(ferry_host_incoming(h));
    assert_int_equal(json_integer_value(json_object_get(h->incoming_config, "max-bandwidth")), 1 << 30);
    expect_opt_error(h, "-incoming", "config:downtime-limit=1", "Only one -incoming config:... is allowed");

    /* Last one per type wins; a JSON channel and a URI are the same thing. */
    assert_int_equal(opt(h, "-incoming", "tcp:127.0.0.1:0", &err), 1);
    assert_true(ferry_host_incoming(h));
    assert_int_equal(opt(h, "--incoming", "{\"channel-type\": \"main\", \"addr\": {\"transport\": \"socket\", "
                                          "\"type\": \"unix\", \"path\": \"/tmp/ferry-x.sock\"}}", &err), 1);
    char *u = main_uri(h);
    assert_string_equal(u, "unix:/tmp/ferry-x.sock");
    free(u);
    assert_int_equal(opt(h, "-incoming", "defer", &err), 1);
    assert_null(h->incoming_addrs[FERRY_CHANNEL_MAIN]);
    assert_true(ferry_host_incoming(h));

    expect_opt_error(h, "-incoming", "{\"channel-type\": \"main\"", "not valid JSON");
    expect_opt_error(h, "-incoming", "{\"channel-type\": \"main\", \"channel-type\": \"cpr\"}",
                     "duplicate object key near '\"channel-type\"'");
    expect_opt_error(h, "-incoming", "{\"channel-type\": \"main\", \"addr\": {\"transport\": \"socket\", "
                                     "\"type\": \"inet\", \"host\": \"h\", \"port\": \"x\", \"bogus\": 1}}", "bogus");
    expect_opt_error(h, "-incoming", "{\"channel-type\": \"cpr\", \"addr\": {\"transport\": \"socket\", "
                                     "\"type\": \"unix\", \"path\": \"/tmp/c\"}}", "'cpr' is not supported");
    expect_opt_error(h, "-incoming", "nonsense:1", "-incoming 'nonsense:1': ");
    ferry_host_free(h);

    /* A bad config: names the key and the reason; the check is migrate-set-parameters' own. */
    static const struct {
        const char *arg, *want;
    } bad[] = {
        { "config:downtime-limit=abc", "downtime-limit" },
        { "config:downtime-limit=3000000", "range of 0 to 2000000" },
        { "config:no-such-thing=1", "Parameter 'no-such-thing' is unexpected" },
        { "config:max-bandwidth", "max-bandwidth" },
        { "config:a=1,,b", "a" },
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        h = ferry_host_new("test", NULL);
        expect_opt_error(h, "-incoming", bad[i].arg, bad[i].want);
        ferry_host_free(h);
    }

    /* Applied at start: query-migrate-parameters shows it before any migration. */
    h = ferry_host_new("test", NULL);
    assert_int_equal(opt(h, "-incoming", "config:downtime-limit=77", &err), 1);
    assert_int_equal(opt(h, "-S", NULL, &err), 1);
    if (!ferry_host_start(h, &err)) {
        fail_msg("start: %s", ferry_error_msg(err));
    }
    json_t *r = qmp(h, "{\"execute\": \"query-migrate-parameters\"}");
    assert_int_equal(json_integer_value(json_object_get(json_object_get(r, "return"), "downtime-limit")), 77);
    json_decref(r);
    ferry_host_free(h);
}

static void test_monitor_option(void **state)
{
    FerryHost *h = ferry_host_new("test", NULL);
    FerryError *err = NULL;
    assert_int_equal(opt(h, "-monitor", "stdio", &err), 1);
    expect_opt_error(h, "-monitor", "stdio", "-monitor stdio: only one monitor can use stdio");
    assert_int_equal(opt(h, "-monitor", "unix:/tmp/ferry-h1.sock,server=on,wait=off", &err), 1);
    assert_int_equal(opt(h, "-monitor", "unix:/tmp/ferry-h2.sock,server,nowait", &err), 1);
    expect_opt_error(h, "-monitor", "tcp:1:2", "-monitor 'tcp:1:2': only stdio and unix:");
    expect_opt_error(h, "-monitor", "unix:/tmp/x,server=on,wait=on", "-monitor 'unix:/tmp/x,server=on,wait=on': "
                                                                    "wait=on is not supported");
    expect_opt_error(h, "-monitor", "unix:/tmp/x,bogus=1", "-monitor 'unix:/tmp/x,bogus=1': unknown option");
    assert_int_equal(h->nhmp, 3);
    ferry_host_free(h);
}

static char *hmp(FerryHost *h, const char *line, bool *wait)
{
    bool w = false;
    char *out = ferry__hmp_handle_line(h->mon, line, &w);
    if (wait) {
        *wait = w;
    } else {
        assert_false(w);
    }
    return out;
}

static void expect_hmp(FerryHost *h, const char *line, const char *want)
{
    char *out = hmp(h, line, NULL);
    if (strcmp(out, want) != 0) {
        fail_msg("'%s': got\n%s\nwant\n%s", line, out, want);
    }
    free(out);
}

static void expect_hmp_has(FerryHost *h, const char *line, const char *want)
{
    char *out = hmp(h, line, NULL);
    if (!strstr(out, want)) {
        fail_msg("'%s': got\n%s\nwant a line with '%s'", line, out, want);
    }
    free(out);
}

static void test_hmp_commands(void **state)
{
    FerryHost *h = ferry_host_new("test", NULL);
    FerryError *err = NULL;
    assert_int_equal(opt(h, "-S", NULL, &err), 1);
    assert_true(ferry_host_start(h, &err));

    expect_hmp(h, "", "");
    expect_hmp(h, "   \t", "");
    expect_hmp(h, "frobnicate 1 2", "Error: unknown command: 'frobnicate'\n");
    expect_hmp(h, "info status", "VM status: paused (prelaunch)\n");
    expect_hmp(h, "cont", "");
    expect_hmp(h, "info status", "VM status: running\n");
    expect_hmp(h, "stop", "");
    expect_hmp(h, "info status", "VM status: paused\n");
    expect_hmp(h, "info bogus", "Error: unknown info item: 'bogus'\n");
    expect_hmp(h, "info migrate", "Migration status: none\n");

    /* Parameters: the value is converted by the parameter's type, as -incoming config: does. */
    expect_hmp(h, "migrate_set_parameter max-bandwidth 1G", "");
    expect_hmp(h, "migrate_set_parameter downtime-limit 250", "");
    expect_hmp_has(h, "info migrate_parameters", "max-bandwidth: 1073741824 bytes/second\n");
    expect_hmp_has(h, "info migrate_parameters", "downtime-limit: 250 ms\n");
    expect_hmp_has(h, "migrate_set_parameter downtime-limit 1G", "Error: ");
    expect_hmp_has(h, "migrate_set_parameter downtime-limit 9999999", "range of 0 to 2000000");
    expect_hmp(h, "migrate_set_parameter nope 1", "Error: Parameter 'nope' is unexpected\n");
    expect_hmp(h, "migrate_set_parameter downtime-limit", "Error: migrate_set_parameter: expected "
                                                         "migrate_set_parameter parameter value\n");

    expect_hmp(h, "info migrate_capabilities", "events: off\nrecord-checksum: on\npopulate-hints: on\n"
                                               "unix-page-flipping: off\nmultifd: off\n"
                                               "switchover-commit: on\nauto-converge: off\ndirty-limit: off\n"
                                               "postcopy-ram: off\npostcopy-preempt: off\npostcopy-blocktime: off\n"
                                               "mapped-ram: off\nbackground-snapshot: off\n");
    expect_hmp(h, "migrate_set_capability events on", "");
    expect_hmp(h, "migrate_set_capability record-checksum off", "");
    expect_hmp(h, "info migrate_capabilities", "events: on\nrecord-checksum: off\npopulate-hints: on\n"
                                               "unix-page-flipping: off\nmultifd: off\n"
                                               "switchover-commit: on\nauto-converge: off\ndirty-limit: off\n"
                                               "postcopy-ram: off\npostcopy-preempt: off\npostcopy-blocktime: off\n"
                                               "mapped-ram: off\nbackground-snapshot: off\n");
    expect_hmp(h, "migrate_set_capability postcopy-preempt on",
               "Error: Capability 'postcopy-preempt' requires capability 'postcopy-ram' (turn postcopy-ram on with "
               "it, or postcopy-preempt off)\n");
    expect_hmp(h, "migrate_set_capability postcopy-ram on", "");
    expect_hmp(h, "migrate_set_capability postcopy-preempt on", "");
    expect_hmp_has(h, "info migrate_capabilities", "postcopy-ram: on\npostcopy-preempt: on\n");
    expect_hmp(h, "migrate_set_parameter max-postcopy-bandwidth 64M", "");
    expect_hmp_has(h, "info migrate_parameters", "max-postcopy-bandwidth: 67108864 bytes/second\n");
    expect_hmp_has(h, "migrate_set_parameter max-postcopy-bandwidth -1", "Error: ");
    expect_hmp(h, "migrate_set_capability events maybe", "Error: migrate_set_capability: expected 'on' or 'off', "
                                                         "not 'maybe'\n");
    expect_hmp_has(h, "migrate_set_capability nosuch on", "Error: ");

    /* migrate: the URI reaches QMP migrate whole (quoted words keep their blanks) and is parsed there once. */
    expect_hmp(h, "migrate", "Error: migrate: expected migrate [-d] [-r] uri\n");
    expect_hmp(h, "migrate -d -r unix:/tmp/a b", "Error: migrate: expected migrate [-d] [-r] uri\n");
    expect_hmp(h, "migrate unix:/tmp/a -r", "Error: migrate: too many arguments\n");
    expect_hmp(h, "migrate -x unix:/tmp/a", "Error: migrate: unsupported option '-x'\n");
    expect_hmp(h, "migrate -d \"exec:cat > /dev/null\"",
               "Error: nothing to migrate: no RAM block or state section is registered\n");
    expect_hmp_has(h, "migrate bogus:1", "Error: ");
    expect_hmp(h, "migrate \"unterminated", "Error: unterminated string\n");
    expect_hmp(h, "migrate \"a\\qb\"", "Error: unsupported escape code: '\\q'\n");
    expect_hmp(h, "migrate_incoming unix:/tmp/x", "Error: '-incoming' was not specified on the command line\n");
    /* Bytes that are not UTF-8 cannot become a JSON string: the error says so instead of blaming a missing
     * argument or the parameters' shape. */
    expect_hmp(h, "migrate_set_parameter downtime-limit 1\xff", "Error: word 3 of the command line is not valid "
                                                              "UTF-8\n");
    expect_hmp(h, "migrate -d unix:/tmp/\xc3", "Error: word 3 of the command line is not valid UTF-8\n");
    expect_hmp(h, "migrate_set_capability ev\xff" "ents on", "Error: word 2 of the command line is not valid UTF-8\n");
    expect_hmp(h, "migrate_cancel", "");
    /* The postcopy commands reach the engine, which refuses them with nothing running: an error with a reason
     * (its wording is the engine's). */
    expect_hmp_has(h, "migrate_start_postcopy", "Error: ");
    expect_hmp_has(h, "migrate_pause", "Error: ");
    expect_hmp_has(h, "migrate_recover unix:/tmp/ferry-no-such-recover.sock", "Error: ");
    expect_hmp_has(h, "migrate -r unix:/tmp/ferry-no-such-resume.sock", "Error: ");
    expect_hmp(h, "migrate_recover", "Error: migrate_recover: expected migrate_recover uri\n");
    expect_hmp(h, "migrate_pause now", "Error: migrate_pause: expected migrate_pause\n");
    expect_hmp_has(h, "migrate_recover bogus:1", "bogus");

    expect_hmp_has(h, "help", "migrate [-d] [-r] uri -- ");
    expect_hmp_has(h, "help", "migrate_recover uri -- ");
    expect_hmp_has(h, "help", "migrate_start_postcopy -- ");
    expect_hmp_has(h, "help", "migrate_pause -- ");
    expect_hmp_has(h, "help", "info [subcommand] -- ");
    expect_hmp(h, "help stop", "stop -- stop emulation\n");
    expect_hmp_has(h, "help nosuch", "Error: unknown command: 'nosuch'\n");
    expect_hmp_has(h, "info", "info migrate_parameters  -- ");

    /* Nothing runs, so a wait for a migration ends at once, printing nothing. */
    char *out = NULL;
    assert_true(ferry__hmp_migration_done(h->mon, &out));
    assert_string_equal(out, "");
    free(out);
    /* A migration paused in postcopy gives the monitor back, saying so, so that "migrate -r" can be typed there.
     * The status is forced (no engine path leads there without a postcopy migration); only the HMP side is under
     * test. */
    ferry__mutex_lock(&h->m->lock);
    h->m->status = FERRY_MIG_POSTCOPY_PAUSED;
    ferry__mutex_unlock(&h->m->lock);
    out = NULL;
    assert_true(ferry__hmp_migration_done(h->mon, &out));
    assert_string_equal(out, "Migration status: postcopy-paused (resume with migrate -r URI)\n");
    free(out);
    ferry__mutex_lock(&h->m->lock);
    h->m->status = FERRY_MIG_ACTIVE;
    ferry__mutex_unlock(&h->m->lock);
    out = NULL;
    assert_false(ferry__hmp_migration_done(h->mon, &out));
    assert_null(out);
    ferry__mutex_lock(&h->m->lock);
    h->m->status = FERRY_MIG_NONE;
    ferry__mutex_unlock(&h->m->lock);
    ferry_host_free(h);
}

static void test_hmp_format(void **state)
{
    json_t *info = json_loads(
        "{\"status\": \"completed\", \"total-time\": 1234, \"downtime\": 12, \"setup-time\": 3, "
        "\"socket-address\": [{\"type\": \"inet\", \"host\": \"::1\", \"port\": \"4444\"}, "
        "{\"type\": \"unix\", \"path\": \"/tmp/m\"}], "
        "\"ram\": {\"transferred\": 2048000, \"remaining\": 0, \"total\": 268435456, \"duplicate\": 10, "
        "\"normal\": 500, \"normal-bytes\": 2048000, \"dirty-sync-count\": 3, \"mbps\": 812.5, "
        "\"pages-per-second\": 1000, \"dirty-pages-rate\": 0, \"precopy-bytes\": 1024000, "
        "\"downtime-bytes\": 4096, \"page-size\": 4096}, \"dirty-tracker\": \"uffd-wp\"}", 0, NULL);
    assert_non_null(info);
    char *s = ferry__hmp_format_migrate(info);
    assert_string_equal(s, "Migration status: completed\n"
                           "total time: 1234 ms\n"
                           "downtime: 12 ms\n"
                           "setup: 3 ms\n"
                           "socket address: [\n"
                           "\ttcp:[::1]:4444\n"
                           "\tunix:/tmp/m\n"
                           "]\n"
                           "transferred ram: 2000 kbytes\n"
                           "throughput: 812.50 mbps\n"
                           "remaining ram: 0 kbytes\n"
                           "total ram: 262144 kbytes\n"
                           "duplicate: 10 pages\n"
                           "normal: 500 pages\n"
                           "normal bytes: 2000 kbytes\n"
                           "dirty sync count: 3\n"
                           "page size: 4 kbytes\n"
                           "pages-per-second: 1000\n"
                           "precopy ram: 1000 kbytes\n"
                           "downtime ram: 4 kbytes\n"
                           "dirty tracker: uffd-wp\n");
    free(s);
    json_decref(info);

    /* Postcopy fields in QEMU's words and units; members without a line of their own (a newer engine's, or
     * ferry's extensions) still appear, with their QMP names, escaped. */
    info = json_loads(
        "{\"status\": \"postcopy-active\", \"total-time\": 900, \"setup-time\": 2, "
        "\"ram\": {\"transferred\": 4096, \"remaining\": 8192, \"total\": 1048576, \"duplicate\": 1, "
        "\"normal\": 1, \"normal-bytes\": 4096, \"dirty-sync-count\": 1, \"mbps\": 1.0, "
        "\"pages-per-second\": 7, \"page-size\": 4096, \"postcopy-requests\": 42, \"postcopy-bytes\": 20480, "
        "\"multifd-bytes\": 2048, \"page-pipe-bytes\": 4096}, "
        "\"postcopy-blocktime\": 15, \"postcopy-vcpu-blocktime\": [10, 5], \"postcopy-latency\": 120000, "
        "\"postcopy-vcpu-latency\": [100000, 140000], \"postcopy-latency-dist\": [0, 3, 1], "
        "\"dirty-tracker\": \"none\", \"dirty-tracker-note\": \"why\", \"stream-features\": "
        "[\"record-checksum\", \"postcopy-ram\"], \"fds-passed\": 2, \"tls\": {\"creds\": \"t\"}, "
        "\"postcopy-new-thing\": \"a\\u001bb\", \"flag\": true}", 0, NULL);
    assert_non_null(info);
    s = ferry__hmp_format_migrate(info);
    assert_string_equal(s, "Migration status: postcopy-active\n"
                           "total time: 900 ms\n"
                           "setup: 2 ms\n"
                           "transferred ram: 4 kbytes\n"
                           "throughput: 1.00 mbps\n"
                           "remaining ram: 8 kbytes\n"
                           "total ram: 1024 kbytes\n"
                           "duplicate: 1 pages\n"
                           "normal: 1 pages\n"
                           "normal bytes: 4 kbytes\n"
                           "dirty sync count: 1\n"
                           "page size: 4 kbytes\n"
                           "multifd bytes: 2 kbytes\n"
                           "pages-per-second: 7\n"
                           "postcopy request count: 42\n"
                           "postcopy ram: 20 kbytes\n"
                           "page-pipe-bytes: 4096\n"
                           "postcopy blocktime: 15 ms\n"
                           "postcopy vcpu blocktime: [10, 5] ms\n"
                           "postcopy latency: 120000 ns\n"
                           "postcopy vcpu latency: [100000, 140000] ns\n"
                           "postcopy latency distribution: [0, 3, 1]\n"
                           "dirty tracker: none (why)\n"
                           "stream-features: record-checksum, postcopy-ram\n"
                           "fds-passed: 2\n"
                           "tls: {\"creds\":\"t\"}\n"
                           "postcopy-new-thing: a\\x1bb\n"
                           "flag: on\n");
    free(s);
    json_decref(info);

    /* An error-desc outside failed (a postcopy pause says why) is shown too. */
    info = json_loads("{\"status\": \"postcopy-paused\", \"error-desc\": \"lost\"}", 0, NULL);
    s = ferry__hmp_format_migrate(info);
    assert_string_equal(s, "Migration status: postcopy-paused\nerror-desc: lost\n");
    free(s);
    json_decref(info);

    info = json_loads("{\"status\": \"failed\", \"error-desc\": \"boom\", \"total-time\": 5, "
                      "\"expected-downtime\": 7}", 0, NULL);
    s = ferry__hmp_format_migrate(info);
    assert_string_equal(s, "Migration status: failed (boom)\ntotal time: 5 ms\nexpected downtime: 7 ms\n");
    free(s);
    json_decref(info);

    /* An error-desc that quotes a peer cannot put a line of its own, or a cursor move, on the terminal. */
    info = json_loads("{\"status\": \"failed\", \"error-desc\": \"x\\r\\nforged\\u001b[2K\"}", 0, NULL);
    assert_non_null(info);
    s = ferry__hmp_format_migrate(info);
    assert_string_equal(s, "Migration status: failed (x\\r\\nforged\\x1b[2K)\n");
    free(s);
    json_decref(info);

    json_t *p = json_loads("{\"max-bandwidth\": 5, \"tls-creds\": \"x\", \"flag\": true, \"list\": [1], "
                           "\"mode\": \"normal\", \"backend-transfer\": [\"a\", \"b\"], \"none\": [], "
                           "\"obj\": {}}", 0, NULL);
    s = ferry__hmp_format_params(p);
    assert_string_equal(s, "max-bandwidth: 5 bytes/second\ntls-creds: 'x'\nflag: on\nlist: ?\nmode: normal\n"
                           "backend-transfer: a,b\nnone:\nobj: {}\n");
    free(s);
    json_decref(p);

    json_t *st = json_loads("{\"status\": \"inmigrate\", \"running\": false}", 0, NULL);
    s = ferry__hmp_format_status(st);
    assert_string_equal(s, "VM status: paused (inmigrate)\n");
    free(s);
    json_decref(st);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_uri_or_channels),
        cmocka_unit_test(test_incoming_options),
        cmocka_unit_test(test_monitor_option),
        cmocka_unit_test(test_hmp_commands),
        cmocka_unit_test(test_hmp_format),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
