/*
 * Unit tests of the migration URI parser (src/channel/address.c), table driven: good URIs with the fields they
 * must give and their canonical form, which must parse again to the same thing; bad URIs with a substring of the
 * error they must produce (every message names the URI).
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

static const struct {
    const char *uri;
    FerrySocketType type;
    const char *host_or_path;
    const char *port;
    int ipv4, ipv6; /* -1 absent, 0 off, 1 on */
    const char *canonical; /* NULL: same as uri */
} good[] = {
    { "tcp:127.0.0.1:4444", FERRY_SOCKET_INET, "127.0.0.1", "4444", -1, -1, NULL },
    { "tcp:localhost:0", FERRY_SOCKET_INET, "localhost", "0", -1, -1, NULL },
    { "tcp:example.com:65535", FERRY_SOCKET_INET, "example.com", "65535", -1, -1, NULL },
    { "tcp:[::1]:4444", FERRY_SOCKET_INET, "::1", "4444", -1, -1, NULL },
    { "tcp:[fe80::1%eth0]:4444", FERRY_SOCKET_INET, "fe80::1%eth0", "4444", -1, -1, NULL },
    { "tcp:[::]:1", FERRY_SOCKET_INET, "::", "1", -1, -1, NULL },
    { "tcp::4444", FERRY_SOCKET_INET, "", "4444", -1, -1, NULL },
    { "tcp:0.0.0.0:4444", FERRY_SOCKET_INET, "0.0.0.0", "4444", -1, -1, NULL },
    { "tcp:host-1.my_lab:http", FERRY_SOCKET_INET, "host-1.my_lab", "http", -1, -1, NULL },
    { "tcp:h:x-11", FERRY_SOCKET_INET, "h", "x-11", -1, -1, NULL },
    { "tcp:h:4444,ipv4=on", FERRY_SOCKET_INET, "h", "4444", 1, -1, NULL },
    { "tcp:h:4444,ipv6=off", FERRY_SOCKET_INET, "h", "4444", -1, 0, NULL },
    { "tcp:h:4444,ipv6=on,ipv4=off", FERRY_SOCKET_INET, "h", "4444", 0, 1, "tcp:h:4444,ipv4=off,ipv6=on" },
    { "tcp:[::1]:5,ipv4=on,ipv6=on", FERRY_SOCKET_INET, "::1", "5", 1, 1, NULL },
    { "tcp:h:00080", FERRY_SOCKET_INET, "h", "00080", -1, -1, NULL },
    { "unix:/tmp/ferry.sock", FERRY_SOCKET_UNIX, "/tmp/ferry.sock", NULL, -1, -1, NULL },
    { "unix:relative/path", FERRY_SOCKET_UNIX, "relative/path", NULL, -1, -1, NULL },
    { "unix:/tmp/with:colon,comma", FERRY_SOCKET_UNIX, "/tmp/with:colon,comma", NULL, -1, -1, NULL },
    { "unix:" PATH_107, FERRY_SOCKET_UNIX, PATH_107, NULL, -1, -1, NULL },
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
    { "tcp:h:1,to=5", "unknown option 'to=5'" },
    { "unix:", "empty socket path" },
    { "unix:" PATH_108, "longer than 107 bytes" },
};

static int tri(bool has, bool v)
{
    return has ? (int)v : -1;
}

static void check_fields(size_t i, const FerryMigrationAddress *a)
{
    assert_int_equal(a->transport, FERRY_TRANSPORT_SOCKET);
    assert_int_equal(a->socket.type, good[i].type);
    if (good[i].type == FERRY_SOCKET_INET) {
        assert_string_equal(a->socket.inet.host, good[i].host_or_path);
        assert_string_equal(a->socket.inet.port, good[i].port);
        assert_int_equal(tri(a->socket.inet.has_ipv4, a->socket.inet.ipv4), good[i].ipv4);
        assert_int_equal(tri(a->socket.inet.has_ipv6, a->socket.inet.ipv6), good[i].ipv6);
    } else {
        assert_string_equal(a->socket.un.path, good[i].host_or_path);
    }
}

static void test_good(void **state)
{
    for (size_t i = 0; i < FERRY_ARRAY_SIZE(good); i++) {
        FerryMigrationAddress *a = NULL;
        FerryError *err = NULL;
        if (!ferry__address_parse_uri(good[i].uri, &a, &err)) {
            print_error("'%s' rejected: %s\n", good[i].uri, ferry_error_msg(err));
            fail();
        }
        check_fields(i, a);

        char *uri = ferry__address_to_uri(a);
        assert_string_equal(uri, good[i].canonical ? good[i].canonical : good[i].uri);

        /* The canonical form parses back to the same address. */
        FerryMigrationAddress *again = NULL;
        assert_true(ferry__address_parse_uri(uri, &again, NULL));
        check_fields(i, again);

        /* A copy is deep: it survives the original. */
        FerryMigrationAddress *copy = ferry__address_copy(a);
        ferry__address_free(a);
        check_fields(i, copy);
        char *uri2 = ferry__address_to_uri(copy);
        assert_string_equal(uri, uri2);

        free(uri);
        free(uri2);
        ferry__address_free(again);
        ferry__address_free(copy);
    }
}

static void test_bad(void **state)
{
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
}

static void test_free_null(void **state)
{
    ferry__address_free(NULL);
    assert_null(ferry__address_copy(NULL));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_good),
        cmocka_unit_test(test_bad),
        cmocka_unit_test(test_free_null),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
