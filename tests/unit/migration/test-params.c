/*
 * The postcopy capabilities and parameter of params.c, without a migration: postcopy-ram, postcopy-preempt and
 * postcopy-blocktime (defaults, which of them are stream features, the checks made when they are set) and
 * max-postcopy-bandwidth (default, range, the string form of "-incoming config:" and HMP, the accessor the engine
 * reads). What postcopy does is tested with the engine, not here; the older parameters are in test-loopback.c.
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

    /* Listed, off by default, after the older ones (query-migrate-capabilities keeps the table's order). */
    json_t *q = ferry__migration_query_caps(m);
    size_t n = json_array_size(q);
    assert_true(n >= 3);
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_postcopy_caps),
        cmocka_unit_test(test_postcopy_features),
        cmocka_unit_test(test_preempt_before_incoming),
        cmocka_unit_test(test_max_postcopy_bandwidth),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
