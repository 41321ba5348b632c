/*
 * The engine with TLS (src/migration/engine.c, source.c, dest.c over src/channel/tls.c), inside one process:
 * the checks migrate and migrate-incoming run against the tls-* parameters before anything connects (objects that
 * do not exist or are for the other endpoint, addresses and features TLS cannot serve, a missing hostname), a
 * migration over TLS on a UNIX socket whose RAM and section arrive and whose query-migrate shows the session, the
 * same with multifd, a cancel that interrupts a throttled TLS migration, an fd that is a pipe refused once
 * connected, and a TLS source meeting a plaintext destination and the reverse, each end with its reason.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "test-helpers.h"
#include "tls-test-helpers.h"

#include "ferry/ferry.h"
#include "channel/channel.h"
#include "crypto/crypto.h"
#include "migration/migration.h"
#include "migration-test-helpers.h"

typedef struct Side {
    FerryMigration *m;
    FerryRamBlock *blk;
    uint64_t counter;
} Side;

static bool dev_visit(FerryVisitor *v, void *opaque, uint32_t version, FerryError **errp)
{
    return ferry_visit_u64(v, "counter", opaque, errp);
}

static void side_init(Side *s, bool incoming, uint64_t size)
{
    memset(s, 0, sizeof(*s));
    s->m = ferry__migration_new();
    s->blk = ferry_ram_block_new(s->m, "ram0", size, NULL);
    assert_non_null(s->blk);
    /* Stop-and-copy unless a test asks for live passes (only those are throttled by max-bandwidth). */
    ferry_migration_set_dirty_tracker(s->m, FERRY_TRACKER_NONE);
    assert_true(ferry_migration_register_section(s->m, "dev", 0, 1, dev_visit, &s->counter, NULL));
    ferry__runstate_init(s->m, true, incoming);
}

static void set_params(FerryMigration *m, const char *json)
{
    json_t *p = json_loads(json, 0, NULL);
    assert_non_null(p);
    FerryError *err = NULL;
    if (!ferry__migration_set_params(m, p, &err)) {
        fail_msg("%s: %s", json, ferry_error_msg(err));
    }
    json_decref(p);
}

static void set_cap(FerryMigration *m, const char *cap, bool on)
{
    json_t *c = json_pack("[{s:s, s:b}]", "capability", cap, "state", on);
    assert_true(ferry__migration_set_caps(m, c, NULL));
    json_decref(c);
}

static FerryMigrationAddress *addr_of(const char *uri)
{
    FerryMigrationAddress *a = NULL;
    assert_true(ferry__address_parse_uri(uri, &a, NULL));
    return a;
}

static char *sock_uri(void)
{
    static int n;
    return ferry__xasprintf("unix:/tmp/ferry-test-tls-%d-%d.sock", (int)getpid(), n++);
}

static char *query_str(FerryMigration *m, const char *key)
{
    json_t *q = ferry__migration_query(m);
    const char *v = json_string_value(json_object_get(q, key));
    char *r = ferry__xstrdup(v ? v : "");
    json_decref(q);
    return r;
}

typedef struct Fixture {
    TestCa ca;
    char *dir;
} Fixture;

static int setup(void **state)
{
    Fixture *f = ferry__xcalloc(1, sizeof(*f));
    f->dir = tls_test_x509_dir(&f->ca, "one", "source.example.com");
    FerryError *err = NULL;
    char *s = ferry__xasprintf("tls-creds-x509,id=tls-dst,endpoint=server,dir=%s", f->dir);
    char *c = ferry__xasprintf("tls-creds-x509,id=tls-src,dir=%s", f->dir);
    assert_true(ferry_object_add_str(s, &err));
    assert_true(ferry_object_add_str(c, &err));
    assert_true(ferry_object_add_str("authz-list,id=auth0,rules.0.match=*CN=source.example.com,"
                                     "rules.0.policy=allow,rules.0.format=glob", &err));
    free(s);
    free(c);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    Fixture *f = *state;
    ferry__objects_clear();
    tls_test_ca_free(&f->ca);
    tls_test_rmdir(f->dir);
    free(f);
    return 0;
}

static void expect_migrate_error(FerryMigration *m, const char *uri, const char *needle)
{
    FerryMigrationAddress *a = addr_of(uri);
    FerryError *err = NULL;
    assert_false(ferry__migrate(m, a, &err));
    assert_msg_contains(err, needle);
    ferry_error_free(err);
    ferry__address_free(a);
}

static void test_checks_at_migrate(void **state)
{
    Side src, dst;
    side_init(&src, false, 1 << 20);
    side_init(&dst, true, 1 << 20);
    set_params(src.m, "{\"tls-creds\": \"nope\"}");
    expect_migrate_error(src.m, "unix:/tmp/x.sock", "No TLS credentials with id 'nope'");
    set_params(src.m, "{\"tls-creds\": \"tls-dst\"}");
    expect_migrate_error(src.m, "tcp:127.0.0.1:1", "Expected TLS credentials for a client endpoint, but 'tls-dst' "
                         "is for a server endpoint");
    set_params(src.m, "{\"tls-creds\": \"auth0\"}");
    expect_migrate_error(src.m, "tcp:127.0.0.1:1", "Object 'auth0' is not TLS credentials");
    set_params(src.m, "{\"tls-creds\": \"tls-src\"}");
    expect_migrate_error(src.m, "unix:/tmp/x.sock", "set tls-hostname");
    expect_migrate_error(src.m, "exec:cat > /dev/null", "tls-creds 'tls-src' cannot be used on 'exec:cat > "
                         "/dev/null': TLS needs a socket channel");
    expect_migrate_error(src.m, "file:/tmp/x", "TLS needs a socket channel");
    expect_migrate_error(src.m, "rdma:127.0.0.1:1", "TLS over RDMA is not supported");
    set_params(src.m, "{\"tls-hostname\": \"localhost\"}");
    set_cap(src.m, "unix-page-flipping", true);
    expect_migrate_error(src.m, "unix:/tmp/x.sock", "tls-creds 'tls-src' cannot be combined with unix-page-flipping "
                         "on 'unix:/tmp/x.sock': file descriptors cannot travel inside TLS");
    set_cap(src.m, "unix-page-flipping", false);
    set_params(src.m, "{\"mode\": \"cpr-transfer\"}");
    expect_migrate_error(src.m, "unix:/tmp/x.sock", "cannot be combined with mode cpr-transfer");
    set_params(src.m, "{\"mode\": \"normal\"}");

    /* The destination: server credentials, an authz object that exists. */
    FerryMigrationAddress *a = addr_of("unix:/tmp/ferry-test-tls-never.sock");
    FerryError *err = NULL;
    set_params(dst.m, "{\"tls-creds\": \"tls-src\"}");
    assert_false(ferry__migrate_incoming(dst.m, a, false, &err));
    assert_msg_contains(err, "Expected TLS credentials for a server endpoint, but 'tls-src' is for a client");
    ferry_error_free(err);
    err = NULL;
    set_params(dst.m, "{\"tls-creds\": \"tls-dst\", \"tls-authz\": \"nobody\"}");
    assert_false(ferry__migrate_incoming(dst.m, a, false, &err));
    assert_msg_contains(err, "No authorization object with id 'nobody'");
    ferry_error_free(err);
    ferry__address_free(a);
    err = NULL;
    a = addr_of("file:/tmp/ferry-test-tls-never.bin");
    set_params(dst.m, "{\"tls-authz\": \"\"}");
    assert_false(ferry__migrate_incoming(dst.m, a, false, &err));
    assert_msg_contains(err, "TLS needs a socket channel");
    ferry_error_free(err);
    ferry__address_free(a);
    ferry__migration_free(src.m);
    ferry__migration_free(dst.m);
}

/* A migration of @size bytes from src to dst over @uri; returns the source's final status. */
static const char *run(Side *src, Side *dst, const char *uri)
{
    FerryMigrationAddress *a = addr_of(uri);
    FerryError *err = NULL;
    if (!ferry__migrate_incoming(dst->m, a, false, &err)) {
        fail_msg("migrate-incoming: %s", ferry_error_msg(err));
    }
    if (!ferry__migrate(src->m, a, &err)) {
        fail_msg("migrate: %s", ferry_error_msg(err));
    }
    ferry__address_free(a);
    const char *st = wait_terminal(src->m, 60000);
    static char status[32];
    snprintf(status, sizeof(status), "%s", st);
    wait_terminal(dst->m, 60000);
    return status;
}

static void fill(Side *s, size_t size)
{
    uint8_t *p = ferry_ram_block_host(s->blk);
    for (size_t i = 0; i < size; i += 64) {
        p[i] = (uint8_t)(i / 64 * 31 + 7);
    }
    s->counter = 4242;
}

static void test_migration_over_tls(void **state)
{
    for (int multifd = 0; multifd <= 1; multifd++) {
        const size_t size = 8 << 20;
        Side src, dst;
        side_init(&src, false, size);
        side_init(&dst, true, size);
        fill(&src, size);
        set_params(src.m, "{\"tls-creds\": \"tls-src\", \"tls-hostname\": \"localhost\", \"max-bandwidth\": 0, "
                          "\"multifd-channels\": 3}");
        set_params(dst.m, "{\"tls-creds\": \"tls-dst\", \"tls-authz\": \"auth0\"}");
        if (multifd) {
            set_cap(src.m, "multifd", true);
            set_cap(dst.m, "multifd", true);
        }
        char *uri = sock_uri();
        const char *st = run(&src, &dst, uri);
        if (strcmp(st, "completed") != 0) {
            char *e = query_str(src.m, "error-desc"), *de = query_str(dst.m, "error-desc");
            fail_msg("status %s: %s / destination: %s", st, e, de);
        }
        assert_memory_equal(ferry_ram_block_host(src.blk), ferry_ram_block_host(dst.blk), size);
        assert_true(dst.counter == 4242);
        json_t *q = ferry__migration_query(src.m), *dq = ferry__migration_query(dst.m);
        json_t *tls = json_object_get(q, "tls"), *dtls = json_object_get(dq, "tls");
        assert_string_equal(json_string_value(json_object_get(tls, "creds")), "tls-src");
        assert_non_null(strstr(json_string_value(json_object_get(tls, "peer")), "CN=localhost"));
        assert_string_equal(json_string_value(json_object_get(dtls, "creds")), "tls-dst");
        assert_non_null(strstr(json_string_value(json_object_get(dtls, "peer")), "CN=source.example.com"));
        if (multifd) {
            assert_true(json_integer_value(json_object_get(json_object_get(q, "ram"), "multifd-bytes")) >=
                        (json_int_t)size / 2);
        }
        json_decref(q);
        json_decref(dq);
        /* The migrations are over: nothing holds the objects any more (object-del would succeed). */
        FerryTlsCreds *c = ferry__tls_creds_get("tls-src", FERRY_TLS_ENDPOINT_CLIENT, NULL);
        assert_non_null(c);
        ferry__tls_creds_unref(c);
        free(uri);
        ferry__migration_free(src.m);
        ferry__migration_free(dst.m);
    }
    FerryError *err = NULL;
    assert_true(ferry_object_del("auth0", &err));
}

/* One end with TLS, the other without: each fails with its own reason, and nothing is loaded. */
static void test_mixed_ends(void **state)
{
    for (int tls_on_source = 0; tls_on_source <= 1; tls_on_source++) {
        const size_t size = 1 << 20;
        Side src, dst;
        side_init(&src, false, size);
        side_init(&dst, true, size);
        fill(&src, size);
        if (tls_on_source) {
            set_params(src.m, "{\"tls-creds\": \"tls-src\", \"tls-hostname\": \"localhost\"}");
        } else {
            set_params(dst.m, "{\"tls-creds\": \"tls-dst\"}");
        }
        char *uri = sock_uri();
        assert_string_equal(run(&src, &dst, uri), "failed");
        char *e = query_str(src.m, "error-desc"), *de = query_str(dst.m, "error-desc");
        if (tls_on_source) {
            assert_non_null(strstr(e, "peer did not speak TLS"));
            assert_non_null(strstr(de, "the source speaks TLS, but this destination has no tls-creds set"));
        } else {
            assert_non_null(strstr(e, "the destination failed: "));
            assert_non_null(strstr(e, "peer did not speak TLS"));
            assert_non_null(strstr(de, "TLS is required here (tls-creds 'tls-dst')"));
        }
        json_t *dq = ferry__migration_query(dst.m);
        assert_int_equal(json_integer_value(json_object_get(json_object_get(dq, "ram"), "normal")), 0);
        json_decref(dq);
        assert_true(dst.counter == 0);
        assert_int_equal(ferry__runstate_get(dst.m), FERRY_RUN_INMIGRATE);
        assert_int_equal(ferry__runstate_get(src.m), FERRY_RUN_PRELAUNCH);
        free(e);
        free(de);
        free(uri);
        ferry__migration_free(src.m);
        ferry__migration_free(dst.m);
    }
}

/* Throttled to a crawl over TLS: cancel interrupts the TLS writes. */
static void test_cancel_over_tls(void **state)
{
    const size_t size = 16 << 20;
    Side src, dst;
    side_init(&src, false, size);
    side_init(&dst, true, size);
    ferry_migration_set_dirty_tracker(src.m, FERRY_TRACKER_EXPLICIT);
    fill(&src, size);
    set_params(src.m, "{\"tls-creds\": \"tls-src\", \"tls-hostname\": \"localhost\", \"max-bandwidth\": 1048576}");
    set_params(dst.m, "{\"tls-creds\": \"tls-dst\"}");
    char *uri = sock_uri();
    FerryMigrationAddress *a = addr_of(uri);
    assert_true(ferry__migrate_incoming(dst.m, a, false, NULL));
    assert_true(ferry__migrate(src.m, a, NULL));
    for (int i = 0; i < 500; i++) {
        char *st = query_str(src.m, "status");
        bool active = strcmp(st, "active") == 0;
        free(st);
        if (active) {
            break;
        }
        usleep(10 * 1000);
    }
    usleep(200 * 1000);
    int64_t t0 = ferry__clock_ms();
    assert_true(ferry__migrate_cancel(src.m, NULL));
    assert_string_equal(wait_terminal(src.m, 10000), "cancelled");
    assert_true(ferry__clock_ms() - t0 < 5000);
    assert_string_equal(wait_terminal(dst.m, 10000), "failed");
    ferry__address_free(a);
    free(uri);
    ferry__migration_free(src.m);
    ferry__migration_free(dst.m);
}

/* fd: is accepted by migrate (the kind of fd is known only once taken) and refused once connected. */
static void test_fd_that_is_a_pipe(void **state)
{
    Side src;
    side_init(&src, false, 1 << 20);
    set_params(src.m, "{\"tls-creds\": \"tls-src\", \"tls-hostname\": \"localhost\"}");
    int p[2];
    assert_int_equal(pipe(p), 0);
    assert_true(ferry__fdstore_add("tlspipe", p[1], NULL));
    FerryMigrationAddress *a = addr_of("fd:tlspipe");
    assert_true(ferry__migrate(src.m, a, NULL));
    assert_string_equal(wait_terminal(src.m, 10000), "failed");
    char *e = query_str(src.m, "error-desc");
    assert_non_null(strstr(e, "tls-creds 'tls-src' needs a two-way socket, and 'fd:tlspipe' is not one"));
    free(e);
    close(p[0]);
    ferry__address_free(a);
    ferry__migration_free(src.m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_checks_at_migrate),
        cmocka_unit_test(test_migration_over_tls),
        cmocka_unit_test(test_mixed_ends),
        cmocka_unit_test(test_cancel_over_tls),
        cmocka_unit_test(test_fd_that_is_a_pipe),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
