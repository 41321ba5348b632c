/*
 * The postcopy capabilities and parameter of params.c, without a migration: postcopy-ram, postcopy-preempt and
 * postcopy-blocktime (defaults, which of them are stream features, the checks made when they are set) and
 * max-postcopy-bandwidth (default, range, the string form of "-incoming config:" and HMP, the accessor the engine
 * reads). What postcopy does is tested with the engine, not here; the older parameters are in test-loopback.c.
 * Also dirty-limit's engine side: its parameters, its capability's checks, and the set-/cancel-/query-vcpu-dirty-limit
 * functions against a fake host that records what it was asked (the real enforcement is tested in
 * tests/unit/workload and tests/integration/test_dirtylimit.py).
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

#include "channel/address.h"
#include "migration/migration.h"
#include "migration/migration-priv.h"
#include "util/util.h"

/* The state of capability @name in query-migrate-capabilities; fails the test if it is not listed. */
static bool cap_state(FerryMigration *m, const char *name)
{
    json_t *q = ferry__migration_query_caps(m);
    size_t i;
    json_t *c;
    json_array_foreach(q, i, c) {
        if (!strcmp(json_string_value(json_object_get(c, "capability")), name)) {
            bool on = json_is_true(json_object_get(c, "state"));
            json_decref(q);
            return on;
        }
    }
    json_decref(q);
    fail_msg("capability %s is not listed", name);
    return false;
}

/* Set @caps_json; NULL on success, else the error message (the caller frees it). */
static char *set_caps(FerryMigration *m, const char *caps_json)
{
    json_t *caps = json_loads(caps_json, 0, NULL);
    assert_non_null(caps);
    FerryError *err = NULL;
    bool ok = ferry__migration_set_caps(m, caps, &err);
    json_decref(caps);
    if (ok) {
        assert_null(err);
        return NULL;
    }
    assert_non_null(err);
    char *msg = ferry__xstrdup(ferry_error_msg(err));
    ferry_error_free(err);
    return msg;
}

static void expect_caps_ok(FerryMigration *m, const char *caps_json)
{
    char *msg = set_caps(m, caps_json);
    if (msg) {
        fail_msg("%s: refused: %s", caps_json, msg);
    }
}

static void expect_caps_refused(FerryMigration *m, const char *caps_json, const char *want)
{
    char *msg = set_caps(m, caps_json);
    if (!msg) {
        fail_msg("%s: accepted", caps_json);
    }
    if (!strstr(msg, want)) {
        fail_msg("%s: got '%s', want '%s' in it", caps_json, msg, want);
    }
    free(msg);
}

static void test_postcopy_caps(void **state)
{
    (void)state;
    FerryMigration *m = ferry__migration_new();

    /* Listed, off by default, after the older ones (query-migrate-capabilities keeps the table's order), and
     * before mapped-ram and background-snapshot, which came later. */
    json_t *q = ferry__migration_query_caps(m);
    size_t n = json_array_size(q) - 2;
    assert_true(n >= 3);
    assert_string_equal(json_string_value(json_object_get(json_array_get(q, n), "capability")), "mapped-ram");
    assert_string_equal(json_string_value(json_object_get(json_array_get(q, n + 1), "capability")),
                        "background-snapshot");
    assert_string_equal(json_string_value(json_object_get(json_array_get(q, n - 3), "capability")), "postcopy-ram");
    assert_string_equal(json_string_value(json_object_get(json_array_get(q, n - 2), "capability")),
                        "postcopy-preempt");
    assert_string_equal(json_string_value(json_object_get(json_array_get(q, n - 1), "capability")),
                        "postcopy-blocktime");
    json_decref(q);
    assert_false(cap_state(m, "postcopy-ram"));
    assert_false(cap_state(m, "postcopy-preempt"));
    assert_false(cap_state(m, "postcopy-blocktime"));

    /* postcopy-preempt needs postcopy-ram; the message names both, and nothing of the command is applied. */
    expect_caps_refused(m, "[{\"capability\": \"events\", \"state\": true}, "
                           "{\"capability\": \"postcopy-preempt\", \"state\": true}]",
                        "Capability 'postcopy-preempt' requires capability 'postcopy-ram'");
    assert_false(cap_state(m, "events"));
    assert_false(cap_state(m, "postcopy-preempt"));

    /* Both in one command, in either order: the combination is checked, not each element. */
    expect_caps_ok(m, "[{\"capability\": \"postcopy-preempt\", \"state\": true}, "
                      "{\"capability\": \"postcopy-ram\", \"state\": true}]");
    assert_true(cap_state(m, "postcopy-ram"));
    assert_true(cap_state(m, "postcopy-preempt"));
    /* Turning postcopy-ram off under postcopy-preempt is the same combination. */
    expect_caps_refused(m, "[{\"capability\": \"postcopy-ram\", \"state\": false}]", "'postcopy-ram'");
    assert_true(cap_state(m, "postcopy-ram"));
    expect_caps_ok(m, "[{\"capability\": \"postcopy-ram\", \"state\": false}, "
                      "{\"capability\": \"postcopy-preempt\", \"state\": false}]");
    assert_false(cap_state(m, "postcopy-ram"));

    /* Unlike QEMU, postcopy combines with multifd and unix-page-flipping (used before the switch). */
    expect_caps_ok(m, "[{\"capability\": \"postcopy-ram\", \"state\": true}, "
                      "{\"capability\": \"multifd\", \"state\": true}]");
    expect_caps_ok(m, "[{\"capability\": \"multifd\", \"state\": false}, "
                      "{\"capability\": \"unix-page-flipping\", \"state\": true}]");
    expect_caps_ok(m, "[{\"capability\": \"postcopy-blocktime\", \"state\": true}]");
    assert_true(cap_state(m, "postcopy-blocktime"));
    /* postcopy-blocktime needs nothing else. */
    expect_caps_ok(m, "[{\"capability\": \"postcopy-ram\", \"state\": false}]");
    assert_true(cap_state(m, "postcopy-blocktime"));

    /* Wrong shapes are still refused by name. */
    expect_caps_refused(m, "[{\"capability\": \"postcopy-ram\", \"state\": \"on\"}]",
                        "Invalid parameter type for 'capabilities[0].state', expected: boolean");
    ferry__migration_free(m);
}

/* postcopy-ram and postcopy-preempt are critical stream features; postcopy-blocktime is the destination's own. */
static void test_postcopy_features(void **state)
{
    (void)state;
    assert_true(ferry__feature_known("postcopy-ram"));
    assert_true(ferry__feature_known("postcopy-preempt"));
    assert_false(ferry__feature_known("postcopy-blocktime"));
    assert_string_equal(ferry__feature_name(FERRY_CAP_POSTCOPY_RAM), "postcopy-ram");
    assert_string_equal(ferry__feature_name(FERRY_CAP_POSTCOPY_PREEMPT), "postcopy-preempt");

    FerryMigration *m = ferry__migration_new();
    FerryWireFeatureList offer;
    ferry__features_offer(m, &offer);
    assert_int_equal(ferry__wire_features_find(&offer, "postcopy-ram"), -1);
    expect_caps_ok(m, "[{\"capability\": \"postcopy-ram\", \"state\": true}, "
                      "{\"capability\": \"postcopy-preempt\", \"state\": true}, "
                      "{\"capability\": \"postcopy-blocktime\", \"state\": true}]");
    ferry__features_offer(m, &offer);
    int i = ferry__wire_features_find(&offer, "postcopy-ram");
    assert_true(i >= 0);
    assert_true(offer.f[i].flags & FERRY_FEATURE_CRITICAL);
    i = ferry__wire_features_find(&offer, "postcopy-preempt");
    assert_true(i >= 0);
    assert_true(offer.f[i].flags & FERRY_FEATURE_CRITICAL);
    assert_int_equal(ferry__wire_features_find(&offer, "postcopy-blocktime"), -1);

    /* A destination with postcopy-ram off does not accept it (the stream then has no postcopy). */
    FerryMigration *dst = ferry__migration_new();
    FerryWireFeatureList accepted;
    ferry__features_accept(dst, &offer, &accepted);
    assert_int_equal(ferry__wire_features_find(&accepted, "postcopy-ram"), -1);
    expect_caps_ok(dst, "[{\"capability\": \"postcopy-ram\", \"state\": true}]");
    ferry__features_accept(dst, &offer, &accepted);
    assert_true(ferry__wire_features_find(&accepted, "postcopy-ram") >= 0);
    assert_int_equal(ferry__wire_features_find(&accepted, "postcopy-preempt"), -1);
    ferry__migration_free(dst);
    ferry__migration_free(m);
}

/* As QEMU: postcopy-preempt cannot change once the destination takes connections; postcopy-ram still can. */
static void test_preempt_before_incoming(void **state)
{
    (void)state;
    FerryMigration *m = ferry__migration_new();
    ferry__runstate_init(m, false, true);
    char *uri = ferry__xasprintf("unix:/tmp/ferry-test-params-%d.sock", (int)getpid());
    FerryMigrationAddress *a = NULL;
    assert_true(ferry__address_parse_uri(uri, &a, NULL));
    FerryError *err = NULL;
    if (!ferry__migrate_incoming(m, a, false, &err)) {
        fail_msg("migrate-incoming: %s", ferry_error_msg(err));
    }
    expect_caps_ok(m, "[{\"capability\": \"postcopy-ram\", \"state\": true}]");
    expect_caps_refused(m, "[{\"capability\": \"postcopy-preempt\", \"state\": true}]",
                        "Capability 'postcopy-preempt' must be set before the incoming migration starts");
    assert_false(cap_state(m, "postcopy-preempt"));
    /* Setting it to what it is already changes nothing and is not refused. */
    expect_caps_ok(m, "[{\"capability\": \"postcopy-preempt\", \"state\": false}]");
    ferry__migration_free(m);
    ferry__address_free(a);
    unlink(uri + strlen("unix:"));
    free(uri);
}

static void test_max_postcopy_bandwidth(void **state)
{
    (void)state;
    FerryMigration *m = ferry__migration_new();
    FerryError *err = NULL;

    /* QEMU's default: 0, no limit; listed by query-migrate-parameters. */
    json_t *q = ferry__migration_query_params(m);
    json_t *v = json_object_get(q, "max-postcopy-bandwidth");
    assert_true(json_is_integer(v));
    assert_int_equal(json_integer_value(v), 0);
    json_decref(q);
    assert_int_equal(ferry__param_max_postcopy_bandwidth(m), 0);

    json_t *p = json_pack("{s:I}", "max-postcopy-bandwidth", (json_int_t)1 << 30);
    assert_true(ferry__migration_set_params(m, p, NULL));
    json_decref(p);
    assert_int_equal(ferry__param_max_postcopy_bandwidth(m), (int64_t)1 << 30);
    /* Independent of max-bandwidth. */
    assert_int_equal(ferry__param_max_bandwidth(m), 128 << 20);

    static const struct {
        const char *json;
        const char *error;
    } bad[] = {
        { "{\"max-postcopy-bandwidth\": -1}", "Parameter 'max-postcopy-bandwidth' expects an integer in the range "
                                              "of 0 to 1152921504606846975 bytes per second" },
        { "{\"max-postcopy-bandwidth\": 1152921504606846976}", "range" },
        { "{\"max-postcopy-bandwidth\": \"fast\"}",
          "Invalid parameter type for 'max-postcopy-bandwidth', expected: integer" },
        /* All or nothing. */
        { "{\"max-postcopy-bandwidth\": 5, \"downtime-limit\": -1}", "downtime-limit" },
    };
    for (size_t i = 0; i < FERRY_ARRAY_SIZE(bad); i++) {
        json_t *j = json_loads(bad[i].json, 0, NULL);
        assert_non_null(j);
        assert_false(ferry__migration_set_params(m, j, &err));
        if (!strstr(ferry_error_msg(err), bad[i].error)) {
            fail_msg("%s: got '%s'", bad[i].json, ferry_error_msg(err));
        }
        ferry_error_free(err);
        err = NULL;
        json_decref(j);
    }
    assert_int_equal(ferry__param_max_postcopy_bandwidth(m), (int64_t)1 << 30);

    /* The string form: a size with suffixes, then the same check. */
    json_t *kv = json_pack("{s:s}", "max-postcopy-bandwidth", "512M");
    json_t *typed = NULL;
    assert_true(ferry__migration_params_check_keyval(kv, &typed, NULL));
    assert_int_equal(json_integer_value(json_object_get(typed, "max-postcopy-bandwidth")), 512 << 20);
    assert_true(ferry__migration_set_params(m, typed, NULL));
    json_decref(typed);
    json_decref(kv);
    assert_int_equal(ferry__param_max_postcopy_bandwidth(m), 512 << 20);
    kv = json_pack("{s:s}", "max-postcopy-bandwidth", "lots");
    typed = NULL;
    assert_false(ferry__migration_params_check_keyval(kv, &typed, &err));
    assert_null(typed);
    assert_non_null(strstr(ferry_error_msg(err), "max-postcopy-bandwidth"));
    ferry_error_free(err);
    json_decref(kv);

    /* 0 again: no limit. */
    p = json_pack("{s:i}", "max-postcopy-bandwidth", 0);
    assert_true(ferry__migration_set_params(m, p, NULL));
    json_decref(p);
    assert_int_equal(ferry__param_max_postcopy_bandwidth(m), 0);
    ferry__migration_free(m);
}


/* A host with FAKE_WRITERS writers (or none, with a reason), that records the limits it is given. */
#define FAKE_WRITERS 3
typedef struct FakeHost {
    int writers;
    uint64_t limit[FAKE_WRITERS];
    int period;
    int calls;
} FakeHost;

static int fake_writer_stats(void *opaque, FerryWriterStats *stats, int max, const char **why)
{
    FakeHost *f = opaque;
    if (!f->writers) {
        *why = "the fake host counts nothing";
        return 0;
    }
    for (int i = 0; i < max && i < f->writers; i++) {
        stats[i] = (FerryWriterStats){ .dirty_pages = 100, .rate_mbps = 7, .limit_mbps = f->limit[i] };
    }
    return f->writers;
}

static void fake_dirty_limit(void *opaque, int index, uint64_t mbps, int period_ms)
{
    FakeHost *f = opaque;
    for (int i = 0; i < f->writers; i++) {
        if (index < 0 || index == i) {
            f->limit[i] = mbps;
        }
    }
    f->period = period_ms;
    f->calls++;
}

static char *param_error(FerryMigration *m, const char *json)
{
    json_t *j = json_loads(json, 0, NULL);
    assert_non_null(j);
    FerryError *err = NULL;
    bool ok = ferry__migration_set_params(m, j, &err);
    json_decref(j);
    char *msg = ok ? NULL : ferry__xstrdup(ferry_error_msg(err));
    ferry_error_free(err);
    return msg;
}

static void test_dirty_limit(void **state)
{
    (void)state;
    FerryMigration *m = ferry__migration_new();
    FakeHost f = { 0 };
    FerryHostOps ops = { .writer_stats = fake_writer_stats, .dirty_limit = fake_dirty_limit };

    /* QEMU's defaults and messages. */
    json_t *q = ferry__migration_query_params(m);
    assert_int_equal(json_integer_value(json_object_get(q, "x-vcpu-dirty-limit-period")), 1000);
    assert_int_equal(json_integer_value(json_object_get(q, "vcpu-dirty-limit")), 1);
    json_decref(q);
    static const struct {
        const char *json, *error;
    } bad[] = {
        { "{\"x-vcpu-dirty-limit-period\": 0}", "Option x-vcpu-dirty-limit-period expects a value between 1 and 1000" },
        { "{\"x-vcpu-dirty-limit-period\": 1001}",
          "Option x-vcpu-dirty-limit-period expects a value between 1 and 1000" },
        { "{\"x-vcpu-dirty-limit-period\": -5}",
          "Option x-vcpu-dirty-limit-period expects a value between 1 and 1000" },
        { "{\"vcpu-dirty-limit\": 0}", "Parameter 'vcpu_dirty_limit' must be greater than 1 MB/s" },
        { "{\"vcpu-dirty-limit\": -1}", "Parameter 'vcpu_dirty_limit' must be greater than 1 MB/s" },
    };
    for (size_t i = 0; i < FERRY_ARRAY_SIZE(bad); i++) {
        char *msg = param_error(m, bad[i].json);
        if (!msg || strcmp(msg, bad[i].error) != 0) {
            fail_msg("%s: got '%s'", bad[i].json, msg ? msg : "(accepted)");
        }
        free(msg);
    }
    assert_null(param_error(m, "{\"x-vcpu-dirty-limit-period\": 1, \"vcpu-dirty-limit\": 64}"));
    assert_null(param_error(m, "{\"x-vcpu-dirty-limit-period\": 1000}"));
    /* The string form (HMP, -incoming config:) gets the same message. */
    json_t *kv = json_pack("{s:s}", "x-vcpu-dirty-limit-period", "0"), *typed = NULL;
    FerryError *err = NULL;
    assert_false(ferry__migration_params_check_keyval(kv, &typed, &err));
    assert_string_equal(ferry_error_msg(err), "Option x-vcpu-dirty-limit-period expects a value between 1 and 1000");
    ferry_error_free(err);
    err = NULL;
    json_decref(kv);

    /* No host ops: the capability and the commands are refused with the reason; cancel and query are quiet. */
    expect_caps_refused(m, "[{\"capability\": \"dirty-limit\", \"state\": true}]",
                        "dirty-limit requires a host that counts dirty pages per writer: this host cannot count");
    assert_false(ferry__dirtylimit_set(m, -1, 10, &err));
    assert_non_null(strstr(ferry_error_msg(err), "dirty page limit feature requires a host that counts"));
    ferry_error_free(err);
    err = NULL;
    assert_true(ferry__dirtylimit_cancel(m, -1, NULL));
    q = ferry__dirtylimit_query(m, NULL);
    assert_int_equal(json_array_size(q), 0);
    json_decref(q);

    /* A host that cannot count now: its reason. */
    ferry__migration_set_host_ops(m, &ops, &f);
    expect_caps_refused(m, "[{\"capability\": \"dirty-limit\", \"state\": true}]", "the fake host counts nothing");
    assert_false(ferry__dirtylimit_set(m, -1, 10, &err));
    assert_non_null(strstr(ferry_error_msg(err), "the fake host counts nothing"));
    ferry_error_free(err);
    err = NULL;

    /* One that can. */
    f.writers = FAKE_WRITERS;
    expect_caps_ok(m, "[{\"capability\": \"dirty-limit\", \"state\": true}]");
    assert_true(cap_state(m, "dirty-limit"));
    expect_caps_refused(m, "[{\"capability\": \"auto-converge\", \"state\": true}]",
                        "dirty-limit conflicts with auto-converge either of then available currently");
    expect_caps_refused(m, "[{\"capability\": \"auto-converge\", \"state\": true}, "
                           "{\"capability\": \"dirty-limit\", \"state\": false}, "
                           "{\"capability\": \"dirty-limit\", \"state\": true}]",
                        "dirty-limit conflicts with auto-converge");
    expect_caps_ok(m, "[{\"capability\": \"dirty-limit\", \"state\": false}]");
    expect_caps_ok(m, "[{\"capability\": \"auto-converge\", \"state\": true}]");
    expect_caps_refused(m, "[{\"capability\": \"dirty-limit\", \"state\": true}]", "conflicts with auto-converge");
    expect_caps_ok(m, "[{\"capability\": \"auto-converge\", \"state\": false}]");

    /* The commands: index checks, a rate of 0 cancels, query lists the limited writers with the host's rate. */
    assert_false(ferry__dirtylimit_set(m, FAKE_WRITERS, 10, &err));
    assert_string_equal(ferry_error_msg(err), "incorrect cpu index specified");
    ferry_error_free(err);
    err = NULL;
    assert_false(ferry__dirtylimit_cancel(m, FAKE_WRITERS, &err));
    assert_string_equal(ferry_error_msg(err), "incorrect cpu index specified");
    ferry_error_free(err);
    err = NULL;
    assert_true(ferry__dirtylimit_set(m, 1, 10, NULL));
    assert_int_equal(f.limit[1], 10);
    assert_int_equal(f.limit[0], 0);
    assert_int_equal(f.period, 1000);
    q = ferry__dirtylimit_query(m, NULL);
    assert_int_equal(json_array_size(q), 1);
    assert_int_equal(json_integer_value(json_object_get(json_array_get(q, 0), "cpu-index")), 1);
    assert_int_equal(json_integer_value(json_object_get(json_array_get(q, 0), "limit-rate")), 10);
    assert_int_equal(json_integer_value(json_object_get(json_array_get(q, 0), "current-rate")), 7);
    json_decref(q);
    assert_true(ferry__dirtylimit_set(m, -1, 20, NULL));
    q = ferry__dirtylimit_query(m, NULL);
    assert_int_equal(json_array_size(q), FAKE_WRITERS);
    json_decref(q);
    assert_true(ferry__dirtylimit_set(m, 2, 0, NULL));
    assert_int_equal(f.limit[2], 0);
    assert_true(ferry__dirtylimit_cancel(m, -1, NULL));
    for (int i = 0; i < FAKE_WRITERS; i++) {
        assert_int_equal(f.limit[i], 0);
    }

    /* The migration's side: apply holds every writer to vcpu-dirty-limit over the period, once; lift ends it. */
    assert_null(param_error(m, "{\"x-vcpu-dirty-limit-period\": 250, \"vcpu-dirty-limit\": 32}"));
    int calls = f.calls;
    ferry__dirtylimit_migration_apply(m);
    ferry__dirtylimit_migration_apply(m);
    assert_int_equal(f.calls, calls + 1);
    assert_int_equal(f.period, 250);
    for (int i = 0; i < FAKE_WRITERS; i++) {
        assert_int_equal(f.limit[i], 32);
    }
    ferry__dirtylimit_migration_pass_stats(m);
    ferry__dirtylimit_migration_lift(m);
    for (int i = 0; i < FAKE_WRITERS; i++) {
        assert_int_equal(f.limit[i], 0);
    }
    ferry__dirtylimit_migration_lift(m); /* a no-op now */
    assert_int_equal(f.calls, calls + 2);
    ferry__migration_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_postcopy_caps),
        cmocka_unit_test(test_postcopy_features),
        cmocka_unit_test(test_preempt_before_incoming),
        cmocka_unit_test(test_max_postcopy_bandwidth),
        cmocka_unit_test(test_dirty_limit),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
