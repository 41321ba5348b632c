/*
 * Unit tests of the address model (src/channel/address.c), table driven:
 * - good URIs with the JSON address they must give (written by hand, so it checks every member) and their canonical
 *   form; the canonical form and the JSON form must both parse back to the same address, and copies are deep;
 * - bad URIs with a substring of the error they must produce (every message also names the URI);
 * - good JSON addresses and channels that must round-trip unchanged, bad ones with the member path and reason the
 *   error must name, and the "channels" argument (exactly one main, at most one of each type);
 * - URIs whose bytes are not UTF-8 (a command line may hold any): their JSON form keeps every member, with '?' for
 *   each bad byte, and parses back (found by fuzz/fuzz-address.c: the member used to be left out).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "channel/address.h"
#include "util/util.h"

/* 107 characters: the longest path that fits sun_path with its terminator. */
#define P10 "/ppppppppp"
#define PATH_107 P10 P10 P10 P10 P10 P10 P10 P10 P10 P10 "/pppppp"
#define PATH_108 PATH_107 "x"

#define SOCK(type, rest) "{\"transport\":\"socket\",\"type\":\"" type "\"," rest "}"
#define INET(host, port, rest) SOCK("inet", "\"host\":\"" host "\",\"port\":\"" port "\"" rest)

static const struct {
    const char *uri;
    const char *json;      /* the address it must give */
    const char *canonical; /* NULL: same as uri */
} good[] = {
    { "tcp:127.0.0.1:4444", INET("127.0.0.1", "4444", ""), NULL },
    { "tcp:localhost:0", INET("localhost", "0", ""), NULL },
    { "tcp:example.com:65535", INET("example.com", "65535", ""), NULL },
    { "tcp:[::1]:4444", INET("::1", "4444", ""), NULL },
    { "tcp:[fe80::1%eth0]:4444", INET("fe80::1%eth0", "4444", ""), NULL },
    { "tcp:[::]:1", INET("::", "1", ""), NULL },
    { "tcp::4444", INET("", "4444", ""), NULL },
    { "tcp:0.0.0.0:4444", INET("0.0.0.0", "4444", ""), NULL },
    { "tcp:host-1.my_lab:http", INET("host-1.my_lab", "http", ""), NULL },
    { "tcp:h:x-11", INET("h", "x-11", ""), NULL },
    { "tcp:h:4444,ipv4=on", INET("h", "4444", ",\"ipv4\":true"), NULL },
    { "tcp:h:4444,ipv6=off", INET("h", "4444", ",\"ipv6\":false"), NULL },
    { "tcp:h:4444,ipv6=on,ipv4=off", INET("h", "4444", ",\"ipv4\":false,\"ipv6\":true"),
      "tcp:h:4444,ipv4=off,ipv6=on" },
    { "tcp:[::1]:5,ipv4=on,ipv6=on", INET("::1", "5", ",\"ipv4\":true,\"ipv6\":true"), NULL },
    { "tcp:h:00080", INET("h", "00080", ""), NULL },
    { "tcp:h:4444,to=4450", INET("h", "4444", ",\"to\":4450"), NULL },
    { "tcp:h:0,to=10", INET("h", "0", ",\"to\":10"), NULL },
    { "tcp:h:5,to=5", INET("h", "5", ",\"to\":5"), NULL },
    { "tcp:h:5,ipv4=on,to=9", INET("h", "5", ",\"to\":9,\"ipv4\":true"), "tcp:h:5,to=9,ipv4=on" },
    { "tcp:h:5,keep-alive=on,numeric=off",
      INET("h", "5", ",\"numeric\":false,\"keep-alive\":true"), "tcp:h:5,numeric=off,keep-alive=on" },
    { "unix:/tmp/ferry.sock", SOCK("unix", "\"path\":\"/tmp/ferry.sock\""), NULL },
    { "unix:relative/path", SOCK("unix", "\"path\":\"relative/path\""), NULL },
    { "unix:/tmp/with:colon,comma", SOCK("unix", "\"path\":\"/tmp/with:colon,comma\""), NULL },
    { "unix:" PATH_107, SOCK("unix", "\"path\":\"" PATH_107 "\""), NULL },
    { "unix:ferry-abs,abstract=on", SOCK("unix", "\"path\":\"ferry-abs\",\"abstract\":true"), NULL },
    { "unix:/x,abstract=off", SOCK("unix", "\"path\":\"/x\",\"abstract\":false"), NULL },
    { "unix:a,abstract=on,abstract=on", SOCK("unix", "\"path\":\"a,abstract=on\",\"abstract\":true"), NULL },
    { "vsock:2:1234", SOCK("vsock", "\"cid\":\"2\",\"port\":\"1234\""), NULL },
    { "vsock:4294967295:0", SOCK("vsock", "\"cid\":\"4294967295\",\"port\":\"0\""), NULL },
    { "fd:migfd", SOCK("fd", "\"str\":\"migfd\""), NULL },
    { "fd:3", SOCK("fd", "\"str\":\"3\""), NULL },
    { "fd:my-fd_2", SOCK("fd", "\"str\":\"my-fd_2\""), NULL },
    { "exec:cat > /tmp/x", "{\"transport\":\"exec\",\"args\":[\"/bin/sh\",\"-c\",\"cat > /tmp/x\"]}", NULL },
    { "exec:gzip -c | ssh h 'cat > f,g:1'",
      "{\"transport\":\"exec\",\"args\":[\"/bin/sh\",\"-c\",\"gzip -c | ssh h 'cat > f,g:1'\"]}", NULL },
    { "file:/tmp/mig.img", "{\"transport\":\"file\",\"filename\":\"/tmp/mig.img\",\"offset\":0}", NULL },
    { "file:/tmp/mig.img,offset=4096", "{\"transport\":\"file\",\"filename\":\"/tmp/mig.img\",\"offset\":4096}",
      NULL },
    { "file:/tmp/mig.img,offset=4k", "{\"transport\":\"file\",\"filename\":\"/tmp/mig.img\",\"offset\":4096}",
      "file:/tmp/mig.img,offset=4096" },
    { "file:/tmp/m,offset=1.5G", "{\"transport\":\"file\",\"filename\":\"/tmp/m\",\"offset\":1610612736}",
      "file:/tmp/m,offset=1610612736" },
    { "file:/tmp/m,offset=0", "{\"transport\":\"file\",\"filename\":\"/tmp/m\",\"offset\":0}", "file:/tmp/m" },
    { "file:rel/a:b,c", "{\"transport\":\"file\",\"filename\":\"rel/a:b,c\",\"offset\":0}", NULL },
    { "rdma:192.168.0.1:4444", "{\"transport\":\"rdma\",\"host\":\"192.168.0.1\",\"port\":\"4444\"}", NULL },
    { "rdma:[fe80::2]:4444", "{\"transport\":\"rdma\",\"host\":\"fe80::2\",\"port\":\"4444\"}", NULL },
};

static const struct {
    const char *uri;
    const char *err;
} bad[] = {
    { "", "invalid migration URI ''" },
    { "ftp:host:21", "unknown migration protocol: 'ftp:host:21'" },
    { "xyz", "unknown migration protocol: 'xyz'" },
    { "TCP:h:1", "unknown migration protocol: 'TCP:h:1'" },
    { "tcp", "unknown migration protocol: 'tcp'" },
    { "tcp:", "expected tcp:HOST:PORT" },
    { "tcp:host", "expected tcp:HOST:PORT" },
    { "tcp:host:", "missing port" },
    { "tcp::", "missing port" },
    { "tcp:host:65536", "out of range" },
    { "tcp:host:99999999999999999999", "out of range" },
    { "tcp:host:-1", "bad port '-1'" },
    { "tcp:host:12ab", "bad port '12ab'" },
    { "tcp:host:a b", "bad port 'a b'" },
    { "tcp:host:averyveryverylongservicename", "bad port" },
    { "tcp:host:http-", "bad port 'http-'" },
    { "tcp:ho st:1", "bad host 'ho st'" },
    { "tcp:host/x:1", "bad host 'host/x'" },
    { "tcp:::1:4444", "in brackets" },
    { "tcp:[::1:4444", "missing ']'" },
    { "tcp:[::1]4444", "expected ':PORT' after ']'" },
    { "tcp:[::1]:", "missing port" },
    { "tcp:[]:1", "'' is not an IPv6 address" },
    { "tcp:[foo]:1", "'foo' is not an IPv6 address" },
    { "tcp:[1.2.3.4]:1", "'1.2.3.4' is not an IPv6 address" },
    { "tcp:h:1,ipv4=yes", "expects 'on' or 'off', not 'yes'" },
    { "tcp:h:1,ipv5=on", "unknown option 'ipv5=on'" },
    { "tcp:h:1,ipv4", "unknown option 'ipv4'" },
    { "tcp:h:1,", "unknown option ''" },
    { "tcp:h:1,ipv4=on,ipv4=off", "option 'ipv4' given twice" },
    { "tcp:h:1,ipv4=off,ipv6=off", "cannot disable both IPv4 and IPv6" },
    { "tcp:h:1,to=", "option 'to' expects a port number 0..65535, not ''" },
    { "tcp:h:1,to=x", "option 'to' expects a port number" },
    { "tcp:h:1,to=65536", "option 'to' expects a port number" },
    { "tcp:h:1,to=-2", "option 'to' expects a port number" },
    { "tcp:h:100,to=99", "'to' (99) is below the port (100)" },
    { "tcp:h:1,to=2,to=3", "option 'to' given twice" },
    { "tcp:h:1,numeric=1", "option 'numeric' expects 'on' or 'off', not '1'" },
    { "tcp:h:1,keep-alive=", "option 'keep-alive' expects 'on' or 'off'" },
    { "unix:", "empty socket path" },
    { "unix:" PATH_108, "longer than 107 bytes" },
    { "unix:,abstract=on", "empty socket path" },
    { "unix:x,abstract=yes", "option 'abstract' expects 'on' or 'off', not 'yes'" },
    { "unix:" PATH_108 ",abstract=on", "longer than 107 bytes" },
    { "vsock:", "expected vsock:CID:PORT" },
    { "vsock:3", "expected vsock:CID:PORT" },
    { "vsock::1", "bad CID ''" },
    { "vsock:3:", "bad port ''" },
    { "vsock:x:1", "bad CID 'x'" },
    { "vsock:-1:1", "bad CID '-1'" },
    { "vsock:4294967296:1", "bad CID '4294967296'" },
    { "vsock:3:1:2", "bad port '1:2'" },
    { "vsock:3:http", "bad port 'http'" },
    { "fd:", "empty fd name" },
    { "fd:3x", "bad fd '3x'" },
    { "fd:99999999999", "bad fd '99999999999'" },
    { "exec:", "empty command" },
    { "exec:   ", "empty command" },
    { "file:", "empty file name" },
    { "file:,offset=5", "empty file name" },
    { "file:/x,offset=", "invalid offset ''" },
    { "file:/x,offset=abc", "invalid offset 'abc'" },
    { "file:/x,offset=-1", "invalid offset '-1'" },
    { "file:/x,offset=5Q", "invalid offset '5Q'" },
    { "file:/x,offset=1,offset=2", "invalid offset '1,offset=2'" },
    /* As the JSON form: offsets are at most INT64_MAX (off_t), checked when parsed rather than when opened. */
    { "file:/x,offset=9E", "offset 10376293541461622784 is out of range (0..9223372036854775807)" },
    { "file:/x,offset=9223372036854775808", "offset 9223372036854775808 is out of range" },
    { "rdma:", "expected rdma:HOST:PORT" },
    { "rdma:h", "expected rdma:HOST:PORT" },
    { "rdma:h:", "missing port" },
    { "rdma:h:70000", "out of range" },
    { "rdma:h:1,ipv4=on", "rdma takes no options" },
    { "rdma:[x]:1", "'x' is not an IPv6 address" },
};

static void assert_json_equal_str(json_t *got, const char *want_text, const char *what)
{
    json_error_t jerr;
    json_t *want = json_loads(want_text, 0, &jerr);
    if (!want) {
        print_error("test table: bad JSON %s: %s\n", want_text, jerr.text);
        fail();
    }
    if (!json_equal(got, want)) {
        char *dump = json_dumps(got, JSON_SORT_KEYS);
        print_error("%s: got %s, expected %s\n", what, dump, want_text);
        free(dump);
        fail();
    }
    json_decref(want);
}

static void test_good_uris(void **state)
{
    for (size_t i = 0; i < FERRY_ARRAY_SIZE(good); i++) {
        FerryMigrationAddress *a = NULL;
        FerryError *err = NULL;
        if (!ferry__address_parse_uri(good[i].uri, &a, &err)) {
            print_error("'%s' rejected: %s\n", good[i].uri, ferry_error_msg(err));
            fail();
        }
        json_t *j = ferry__address_to_json(a);
        assert_json_equal_str(j, good[i].json, good[i].uri);

        char *uri = ferry__address_to_uri(a);
        assert_string_equal(uri, good[i].canonical ? good[i].canonical : good[i].uri);

        /* The canonical form parses back to the same address. */
        FerryMigrationAddress *again = NULL;
        assert_true(ferry__address_parse_uri(uri, &again, NULL));
        json_t *j2 = ferry__address_to_json(again);
        assert_json_equal_str(j2, good[i].json, uri);

        /* So does the JSON form, and it prints the same canonical URI. */
        FerryMigrationAddress *from_json = NULL;
        if (!ferry__address_from_json(j, "addr", &from_json, &err)) {
            print_error("'%s': its JSON is rejected: %s\n", good[i].uri, ferry_error_msg(err));
            fail();
        }
        char *uri3 = ferry__address_to_uri(from_json);
        assert_string_equal(uri, uri3);

        /* A copy is deep: it survives the original. */
        FerryMigrationAddress *copy = ferry__address_copy(a);
        ferry__address_free(a);
        json_t *j3 = ferry__address_to_json(copy);
        assert_json_equal_str(j3, good[i].json, "copy");
        char *uri2 = ferry__address_to_uri(copy);
        assert_string_equal(uri, uri2);

        free(uri);
        free(uri2);
        free(uri3);
        json_decref(j);
        json_decref(j2);
        json_decref(j3);
        ferry__address_free(again);
        ferry__address_free(copy);
        ferry__address_free(from_json);
    }
}

static void test_bad_uris(void **state)
{
    assert_true(FERRY_ARRAY_SIZE(bad) >= 30);
    for (size_t i = 0; i < FERRY_ARRAY_SIZE(bad); i++) {
        FerryMigrationAddress *a = (FerryMigrationAddress *)0x1; /* must stay untouched */
        FerryError *err = NULL;
        if (ferry__address_parse_uri(bad[i].uri, &a, &err)) {
            print_error("'%s' accepted\n", bad[i].uri);
            fail();
        }
        assert_ptr_equal(a, (FerryMigrationAddress *)0x1);
        const char *msg = ferry_error_msg(err);
        char quoted[300];
        snprintf(quoted, sizeof(quoted), "'%s'", bad[i].uri);
        if (!strstr(msg, bad[i].err) || !strstr(msg, quoted)) {
            print_error("'%s': message \"%s\" lacks \"%s\" or the URI\n", bad[i].uri, msg, bad[i].err);
            fail();
        }
        ferry_error_free(err);
        /* A NULL errp is fine too. */
        assert_false(ferry__address_parse_uri(bad[i].uri, &a, NULL));
    }
    FerryError *err = NULL;
    assert_false(ferry__address_parse_uri(NULL, &(FerryMigrationAddress *){ NULL }, &err));
    ferry_error_free(err);
}

/* JSON channels that are already canonical: they must come back unchanged, and survive a trip through a URI. */
static const char *const good_channels[] = {
    "{\"channel-type\":\"main\",\"addr\":" INET("127.0.0.1", "4444", "") "}",
    "{\"channel-type\":\"main\",\"addr\":" INET("::1", "0", ",\"to\":100,\"ipv6\":true,\"numeric\":true") "}",
    "{\"channel-type\":\"main\",\"addr\":" INET("", "4444", ",\"keep-alive\":false") "}",
    "{\"channel-type\":\"cpr\",\"addr\":" SOCK("unix", "\"path\":\"/tmp/cpr.sock\"") "}",
    "{\"channel-type\":\"main\",\"addr\":" SOCK("unix", "\"path\":\"abs\",\"abstract\":true") "}",
    "{\"channel-type\":\"main\",\"addr\":" SOCK("unix", "\"path\":\"" PATH_107 "\"") "}",
    "{\"channel-type\":\"main\",\"addr\":" SOCK("vsock", "\"cid\":\"3\",\"port\":\"1024\"") "}",
    "{\"channel-type\":\"main\",\"addr\":" SOCK("fd", "\"str\":\"mig\"") "}",
    "{\"channel-type\":\"main\",\"addr\":{\"transport\":\"exec\",\"args\":[\"/bin/sh\",\"-c\",\"cat\"]}}",
    "{\"channel-type\":\"main\",\"addr\":{\"transport\":\"file\",\"filename\":\"/f\",\"offset\":9223372036854775807}}",
    "{\"channel-type\":\"main\",\"addr\":{\"transport\":\"rdma\",\"host\":\"h\",\"port\":\"1\"}}",
};

static void test_json_round_trip(void **state)
{
    for (size_t i = 0; i < FERRY_ARRAY_SIZE(good_channels); i++) {
        json_t *in = json_loads(good_channels[i], 0, NULL);
        assert_non_null(in);
        FerryMigrationChannel *ch = NULL;
        FerryError *err = NULL;
        if (!ferry__channel_from_json(in, "channels[0]", &ch, &err)) {
            print_error("%s rejected: %s\n", good_channels[i], ferry_error_msg(err));
            fail();
        }
        json_t *out = ferry__channel_to_json(ch);
        assert_json_equal_str(out, good_channels[i], "channel round trip");

        FerryMigrationChannel *copy = ferry__migration_channel_copy(ch);
        ferry__migration_channel_free(ch);
        json_t *out2 = ferry__channel_to_json(copy);
        assert_json_equal_str(out2, good_channels[i], "channel copy");

        /* Through the canonical URI and back. */
        char *uri = ferry__address_to_uri(copy->addr);
        FerryMigrationAddress *a = NULL;
        if (!ferry__address_parse_uri(uri, &a, &err)) {
            print_error("%s: its URI '%s' is rejected: %s\n", good_channels[i], uri, ferry_error_msg(err));
            fail();
        }
        json_t *aj = ferry__address_to_json(a);
        assert_true(json_equal(aj, json_object_get(in, "addr")));

        json_decref(aj);
        ferry__address_free(a);
        free(uri);
        json_decref(out);
        json_decref(out2);
        json_decref(in);
        ferry__migration_channel_free(copy);
    }
}

/* An exec address that is not "/bin/sh -c X" prints its argv joined with spaces. */
static void test_exec_argv(void **state)
{
    json_t *in = json_loads("{\"transport\":\"exec\",\"args\":[\"cat\",\"\",\"-\"]}", 0, NULL);
    FerryMigrationAddress *a = NULL;
    assert_true(ferry__address_from_json(in, "addr", &a, NULL));
    assert_int_equal(a->transport, FERRY_TRANSPORT_EXEC);
    assert_int_equal(a->exec.nargs, 3);
    assert_null(a->exec.args[3]);
    assert_string_equal(a->exec.args[0], "cat");
    assert_string_equal(a->exec.args[1], "");
    char *uri = ferry__address_to_uri(a);
    assert_string_equal(uri, "exec:cat  -");
    free(uri);
    FerryMigrationAddress *c = ferry__address_copy(a);
    ferry__address_free(a);
    assert_string_equal(c->exec.args[2], "-");
    assert_null(c->exec.args[3]);
    ferry__address_free(c);
    json_decref(in);
}

/* Bad MigrationChannel objects, parsed with @where "channels[0]": the error must contain @err. */
#define CH(addr) "{\"channel-type\":\"main\",\"addr\":" addr "}"
static const struct {
    const char *json;
    const char *err;
} bad_channels[] = {
    { "[]", "channels[0]: expected an object" },
    { "{\"addr\":" INET("h", "1", "") "}", "channels[0].channel-type: missing member" },
    { "{\"channel-type\":\"main\"}", "channels[0].addr: missing member" },
    { "{\"channel-type\":\"other\",\"addr\":" INET("h", "1", "") "}",
      "channels[0].channel-type: unknown channel type 'other'" },
    { "{\"channel-type\":1,\"addr\":" INET("h", "1", "") "}", "channels[0].channel-type: expected a string" },
    { "{\"channel-type\":\"\",\"addr\":" INET("h", "1", "") "}", "channels[0].channel-type: empty string" },
    { "{\"channel-type\":\"main\",\"addr\":" INET("h", "1", "") ",\"x\":1}", "channels[0].x: unknown member" },
    { CH("\"tcp:h:1\""), "channels[0].addr: expected an object" },
    { CH("{}"), "channels[0].addr.transport: missing member" },
    { CH("{\"transport\":\"ftp\"}"), "channels[0].addr.transport: unknown transport 'ftp'" },
    { CH("{\"transport\":null}"), "channels[0].addr.transport: expected a string" },
    { CH("{\"transport\":\"socket\"}"), "channels[0].addr.type: missing member" },
    { CH("{\"transport\":\"socket\",\"type\":\"tcp\"}"), "channels[0].addr.type: unknown socket type 'tcp'" },
    { CH(INET("h", "1", ",\"bogus\":true")), "channels[0].addr.bogus: unknown member" },
    { CH(SOCK("inet", "\"port\":\"1\"")), "channels[0].addr.host: missing member" },
    { CH(SOCK("inet", "\"host\":\"h\"")), "channels[0].addr.port: missing member" },
    { CH(SOCK("inet", "\"host\":\"h\",\"port\":4444")), "channels[0].addr.port: expected a string" },
    { CH(SOCK("inet", "\"host\":1,\"port\":\"1\"")), "channels[0].addr.host: expected a string" },
    { CH(INET("h", "", "")), "channels[0].addr.port: empty string" },
    { CH(INET("h", "65536", "")), "channels[0].addr.port: port '65536' out of range" },
    { CH(INET("h", "x y", "")), "channels[0].addr.port: bad port 'x y'" },
    { CH(INET("ho st", "1", "")), "channels[0].addr.host: bad host 'ho st'" },
    { CH(INET("::g", "1", "")), "channels[0].addr.host: '::g' is not an IPv6 address" },
    { CH(INET("h", "1", ",\"ipv4\":\"on\"")), "channels[0].addr.ipv4: expected a boolean" },
    { CH(INET("h", "1", ",\"numeric\":1")), "channels[0].addr.numeric: expected a boolean" },
    { CH(INET("h", "1", ",\"keep-alive\":null")), "channels[0].addr.keep-alive: expected a boolean" },
    { CH(INET("h", "1", ",\"to\":\"5\"")), "channels[0].addr.to: expected an integer" },
    { CH(INET("h", "1", ",\"to\":65536")), "channels[0].addr.to: 65536 out of range" },
    { CH(INET("h", "1", ",\"to\":-1")), "channels[0].addr.to: -1 out of range" },
    { CH(INET("h", "10", ",\"to\":9")), "channels[0].addr.to: 'to' (9) is below the port (10)" },
    { CH(INET("h", "1", ",\"ipv4\":false,\"ipv6\":false")), "channels[0].addr.ipv6: cannot disable both" },
    { CH(SOCK("unix", "\"path\":\"\"")), "channels[0].addr.path: empty string" },
    { CH(SOCK("unix", "\"path\":\"" PATH_108 "\"")), "channels[0].addr.path: socket path longer than 107 bytes" },
    { CH(SOCK("unix", "\"path\":[]")), "channels[0].addr.path: expected a string" },
    { CH(SOCK("unix", "\"path\":\"a\\u0000b\"")), "channels[0].addr.path: contains a NUL byte" },
    { CH(SOCK("unix", "\"path\":\"/x\",\"abstract\":1")), "channels[0].addr.abstract: expected a boolean" },
    { CH(SOCK("unix", "\"path\":\"/x\",\"tight\":false")), "channels[0].addr.tight: only tight" },
    { CH(SOCK("unix", "\"path\":\"/x\",\"host\":\"h\"")), "channels[0].addr.host: unknown member" },
    { CH(SOCK("vsock", "\"cid\":\"x\",\"port\":\"1\"")), "channels[0].addr.cid: bad CID 'x'" },
    { CH(SOCK("vsock", "\"cid\":3,\"port\":\"1\"")), "channels[0].addr.cid: expected a string" },
    { CH(SOCK("vsock", "\"cid\":\"3\",\"port\":\"99999999999\"")), "channels[0].addr.port: bad port" },
    { CH(SOCK("vsock", "\"cid\":\"3\"")), "channels[0].addr.port: missing member" },
    { CH(SOCK("fd", "\"str\":\"\"")), "channels[0].addr.str: empty string" },
    { CH(SOCK("fd", "\"str\":\"1a\"")), "channels[0].addr.str: bad fd '1a'" },
    { CH(SOCK("fd", "\"name\":\"x\"")), "channels[0].addr.name: unknown member" },
    { CH("{\"transport\":\"exec\"}"), "channels[0].addr.args: missing member" },
    { CH("{\"transport\":\"exec\",\"args\":\"cat\"}"), "channels[0].addr.args: expected an array of strings" },
    { CH("{\"transport\":\"exec\",\"args\":[]}"), "channels[0].addr.args: empty" },
    { CH("{\"transport\":\"exec\",\"args\":[\"cat\",1]}"), "channels[0].addr.args[1]: expected a string" },
    { CH("{\"transport\":\"exec\",\"args\":[\"\"]}"), "channels[0].addr.args[0]: empty string" },
    { CH("{\"transport\":\"exec\",\"args\":[\"a\"],\"env\":[]}"), "channels[0].addr.env: unknown member" },
    { CH("{\"transport\":\"file\",\"filename\":\"/f\"}"), "channels[0].addr.offset: missing member" },
    { CH("{\"transport\":\"file\",\"offset\":0}"), "channels[0].addr.filename: missing member" },
    { CH("{\"transport\":\"file\",\"filename\":\"\",\"offset\":0}"), "channels[0].addr.filename: empty string" },
    { CH("{\"transport\":\"file\",\"filename\":\"/f\",\"offset\":\"4096\"}"),
      "channels[0].addr.offset: expected an integer" },
    { CH("{\"transport\":\"file\",\"filename\":\"/f\",\"offset\":1.5}"), "channels[0].addr.offset: expected an integer" },
    { CH("{\"transport\":\"file\",\"filename\":\"/f\",\"offset\":-4}"), "channels[0].addr.offset: -4 out of range" },
    { CH("{\"transport\":\"rdma\",\"host\":\"h\",\"port\":\"1\",\"ipv4\":true}"),
      "channels[0].addr.ipv4: unknown member" },
    { CH("{\"transport\":\"rdma\",\"host\":\"h\",\"port\":\"\"}"), "channels[0].addr.port: empty string" },
};

static void test_bad_json(void **state)
{
    for (size_t i = 0; i < FERRY_ARRAY_SIZE(bad_channels); i++) {
        json_error_t jerr;
        json_t *in = json_loads(bad_channels[i].json, JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
        if (!in) {
            print_error("test table: bad JSON %s: %s\n", bad_channels[i].json, jerr.text);
            fail();
        }
        FerryMigrationChannel *ch = (FerryMigrationChannel *)0x1; /* must stay untouched */
        FerryError *err = NULL;
        if (ferry__channel_from_json(in, "channels[0]", &ch, &err)) {
            print_error("%s accepted\n", bad_channels[i].json);
            fail();
        }
        assert_ptr_equal(ch, (FerryMigrationChannel *)0x1);
        if (!strstr(ferry_error_msg(err), bad_channels[i].err)) {
            print_error("%s: message \"%s\" lacks \"%s\"\n", bad_channels[i].json, ferry_error_msg(err),
                        bad_channels[i].err);
            fail();
        }
        ferry_error_free(err);
        assert_false(ferry__channel_from_json(in, "channels[0]", &ch, NULL));
        json_decref(in);
    }
}

/* An address parsed on its own names its members from @where. */
static void test_address_where(void **state)
{
    json_t *in = json_loads(INET("h", "0x", ""), 0, NULL);
    FerryMigrationAddress *a = NULL;
    FerryError *err = NULL;
    assert_false(ferry__address_from_json(in, "addr", &a, &err));
    assert_non_null(strstr(ferry_error_msg(err), "addr.port: bad port '0x'"));
    ferry_error_free(err);
    err = NULL;
    assert_false(ferry__address_from_json(in, "", &a, &err));
    assert_int_equal(strncmp(ferry_error_msg(err), "port: bad port", 14), 0);
    ferry_error_free(err);
    json_decref(in);
}

static const struct {
    const char *json;
    const char *main_uri; /* NULL: an error containing err */
    const char *err;
} channel_lists[] = {
    { "[" CH(INET("h", "1", "")) "]", "tcp:h:1", NULL },
    /* A well-formed cpr channel is refused: ferry has no cpr-transfer mode to use it. */
    { "[{\"channel-type\":\"cpr\",\"addr\":" SOCK("unix", "\"path\":\"/c\"") "}," CH(SOCK("fd", "\"str\":\"m\"")) "]",
      NULL, "channels[0].channel-type: 'cpr' is not supported by ferry yet (only 'main')" },
    { "{}", NULL, "channels: expected an array" },
    { "\"tcp:h:1\"", NULL, "channels: expected an array" },
    { "[]", NULL, "channels: no channel of type 'main'" },
    { "[{\"channel-type\":\"cpr\",\"addr\":" SOCK("unix", "\"path\":\"/c\"") "}]", NULL,
      "channels: no channel of type 'main'" },
    { "[" CH(INET("h", "1", "")) "," CH(INET("h", "2", "")) "]", NULL,
      "channels[1].channel-type: a second 'main' channel" },
    { "[{\"channel-type\":\"cpr\",\"addr\":" SOCK("unix", "\"path\":\"/c\"") "},"
      "{\"channel-type\":\"cpr\",\"addr\":" SOCK("unix", "\"path\":\"/d\"") "}," CH(INET("h", "2", "")) "]",
      NULL, "channels[1].channel-type: a second 'cpr' channel" },
    { "[" CH(INET("h", "1", "")) ",1]", NULL, "channels[1]: expected an object" },
    { "[" CH(INET("h", "1", "")) "," CH("{\"transport\":\"file\",\"filename\":\"f\"}") "]", NULL,
      "channels[1].addr.offset: missing member" },
};

static void test_channels_parse_main(void **state)
{
    for (size_t i = 0; i < FERRY_ARRAY_SIZE(channel_lists); i++) {
        json_t *in = json_loads(channel_lists[i].json, JSON_DECODE_ANY, NULL);
        assert_non_null(in);
        FerryMigrationAddress *a = NULL;
        FerryError *err = NULL;
        bool ok = ferry__channels_parse_main(in, &a, &err);
        if (channel_lists[i].main_uri) {
            if (!ok) {
                print_error("%s rejected: %s\n", channel_lists[i].json, ferry_error_msg(err));
                fail();
            }
            char *uri = ferry__address_to_uri(a);
            assert_string_equal(uri, channel_lists[i].main_uri);
            free(uri);
            ferry__address_free(a);
        } else {
            if (ok) {
                print_error("%s accepted\n", channel_lists[i].json);
                fail();
            }
            assert_null(a);
            if (!strstr(ferry_error_msg(err), channel_lists[i].err)) {
                print_error("%s: message \"%s\" lacks \"%s\"\n", channel_lists[i].json, ferry_error_msg(err),
                            channel_lists[i].err);
                fail();
            }
            ferry_error_free(err);
        }
        json_decref(in);
    }
}

static void test_channel_type_names(void **state)
{
    FerryChannelType t;
    assert_string_equal(ferry__channel_type_name(FERRY_CHANNEL_MAIN), "main");
    assert_string_equal(ferry__channel_type_name(FERRY_CHANNEL_CPR), "cpr");
    assert_true(ferry__channel_type_from_name("cpr", &t));
    assert_int_equal(t, FERRY_CHANNEL_CPR);
    assert_true(ferry__channel_type_from_name("main", &t));
    assert_int_equal(t, FERRY_CHANNEL_MAIN);
    assert_false(ferry__channel_type_from_name("Main", &t));
    assert_false(ferry__channel_type_from_name("", &t));
    assert_false(ferry__channel_type_from_name(NULL, &t));
}

static void test_non_utf8_uri_to_json(void **state)
{
    static const struct {
        const char *uri;
        const char *json;
    } cases[] = {
        /* The reproducer kept in fuzz/corpus/address/regress-non-utf8-unix-path.txt. */
        { "unix:/\xdctmp/x.sock,abstract=off", SOCK("unix", "\"path\":\"/?tmp/x.sock\",\"abstract\":false") },
        { "file:/tmp/\xff\xfe.img,offset=1K",
          "{\"transport\":\"file\",\"filename\":\"/tmp/??.img\",\"offset\":1024}" },
        { "exec:cat > \xc3", "{\"transport\":\"exec\",\"args\":[\"/bin/sh\",\"-c\",\"cat > ?\"]}" },
        { "fd:mig\x80", SOCK("fd", "\"str\":\"mig?\"") },
    };
    for (size_t i = 0; i < FERRY_ARRAY_SIZE(cases); i++) {
        FerryMigrationAddress *a = NULL, *back = NULL;
        FerryError *err = NULL;
        if (!ferry__address_parse_uri(cases[i].uri, &a, &err)) {
            fail_msg("%s: %s", cases[i].uri, ferry_error_msg(err));
        }
        json_t *j = ferry__address_to_json(a);
        json_t *want = json_loads(cases[i].json, 0, NULL);
        assert_non_null(want);
        if (!json_equal(j, want)) {
            fail_msg("%s: got %s, want %s", cases[i].uri, json_dumps(j, JSON_SORT_KEYS), cases[i].json);
        }
        assert_true(ferry__address_from_json(j, "addr", &back, &err));
        json_t *j2 = ferry__address_to_json(back);
        assert_true(json_equal(j, j2));
        json_decref(j);
        json_decref(j2);
        json_decref(want);
        ferry__address_free(a);
        ferry__address_free(back);
    }
}

static void test_free_null(void **state)
{
    ferry__address_free(NULL);
    assert_null(ferry__address_copy(NULL));
    ferry__migration_channel_free(NULL);
    assert_null(ferry__migration_channel_copy(NULL));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_good_uris),
        cmocka_unit_test(test_bad_uris),
        cmocka_unit_test(test_json_round_trip),
        cmocka_unit_test(test_exec_argv),
        cmocka_unit_test(test_bad_json),
        cmocka_unit_test(test_address_where),
        cmocka_unit_test(test_channels_parse_main),
        cmocka_unit_test(test_channel_type_names),
        cmocka_unit_test(test_non_utf8_uri_to_json),
        cmocka_unit_test(test_free_null),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
