/*
 * The completion policy's rule (completion.c): precopy's predicted time, and the decision after a pass for the
 * cases that matter (converging, a throttle that fits, one that costs too much, a saturated pass, the bound
 * reached, no postcopy, nothing left to do). The policy applied to real workloads is
 * tests/integration/test_completion.py's.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "migration/migration-priv.h"

#define MIB (1024.0 * 1024.0)

static void test_predict(void **state)
{
    (void)state;
    unsigned passes = 0;
    /* Nothing dirtied: one pass of 64 MiB at 32 MiB/s. */
    assert_int_equal(ferry__precopy_predict_ms(64 * MIB, 0, 32 * MIB, 10, &passes), 2000);
    assert_int_equal(passes, 1);
    /* Already within the downtime limit: no pass at all. */
    assert_int_equal(ferry__precopy_predict_ms(MIB / 8, 0, 32 * MIB, 10, &passes), 0);
    assert_int_equal(passes, 0);
    /* Half the bandwidth dirtied: 2 s + 1 s + 0.5 s + ... until the rest fits in 10 ms (0.32 MiB): 8 passes. */
    int64_t t = ferry__precopy_predict_ms(64 * MIB, 16 * MIB, 32 * MIB, 10, &passes);
    assert_int_equal(passes, 8);
    assert_true(t > 3900 && t < 4000);
    /* As fast as the link, or faster, or no bandwidth measured: never. */
    assert_int_equal(ferry__precopy_predict_ms(64 * MIB, 32 * MIB, 32 * MIB, 10, NULL), -1);
    assert_int_equal(ferry__precopy_predict_ms(64 * MIB, 64 * MIB, 32 * MIB, 10, NULL), -1);
    assert_int_equal(ferry__precopy_predict_ms(64 * MIB, 0, 0, 10, NULL), -1);
    /* Faster dirtying never predicts less time. */
    int64_t prev = 0;
    for (int d = 0; d < 32; d += 4) {
        int64_t now = ferry__precopy_predict_ms(64 * MIB, d * MIB, 32 * MIB, 10, NULL);
        assert_true(now >= prev);
        prev = now;
    }
}

/* After a first pass of 2 s over 64 MiB at 32 MiB/s, with @dirty_mib MiB/s dirtied. */
static FerryCompletionInput after_first_pass(double dirty_mib)
{
    uint64_t pending = (uint64_t)(dirty_mib * 2 * MIB / 4096);
    return (FerryCompletionInput){
        .pending_pages = pending, .pages_in_pass = 16384, .dirty_pages_rate = (uint64_t)(dirty_mib * MIB / 4096),
        .page_size = 4096, .bandwidth = 32 * MIB, .downtime_ms = 10, .elapsed_ms = 2000, .bound_ms = 6000,
        .throttle_initial = 20, .throttle_increment = 10, .max_throttle = 99, .can_throttle = true,
        .can_postcopy = true,
    };
}

static void test_decide(void **state)
{
    (void)state;
    FerryCompletionDecision d;

    /* 8 MiB/s: converges well within the bound. */
    FerryCompletionInput in = after_first_pass(8);
    ferry__completion_decide(&in, &d);
    assert_int_equal(d.action, FERRY_COMPLETION_PRECOPY);
    assert_true(d.predicted_ms > 0 && d.predicted_ms < 4000);
    assert_non_null(strstr(d.reason, "converges"));

    /* 24 MiB/s: converges, but too late; a modest throttle makes it fit. */
    in = after_first_pass(24);
    ferry__completion_decide(&in, &d);
    assert_int_equal(d.action, FERRY_COMPLETION_THROTTLE);
    assert_true(d.throttle > 0 && d.throttle <= 50);
    assert_non_null(strstr(d.reason, "past the bound"));
    /* ... and with that throttle the rate it was computed for fits: precopy goes on. */
    FerryCompletionInput next = after_first_pass(24 * (100 - d.throttle) / 100.0);
    next.throttle = d.throttle;
    next.elapsed_ms = 2000;
    FerryCompletionDecision d2;
    ferry__completion_decide(&next, &d2);
    assert_int_equal(d2.action, FERRY_COMPLETION_PRECOPY);
    /* If the throttled pass still measured the unthrottled rate (a paced writer caught up), the throttle it then
     * asks for is above 50 %: postcopy instead. */
    next = after_first_pass(24);
    next.throttle = d.throttle;
    next.elapsed_ms = 3000;
    ferry__completion_decide(&next, &d2);
    assert_int_equal(d2.action, FERRY_COMPLETION_POSTCOPY);
    assert_non_null(strstr(d2.reason, "even throttled"));

    /* 30 MiB/s (the pass sent more than it found dirty again: zero pages, say): the throttle that fits is too
     * costly: postcopy. Without postcopy: that throttle after all. */
    in = after_first_pass(30);
    in.pages_in_pass *= 2;
    ferry__completion_decide(&in, &d);
    assert_int_equal(d.action, FERRY_COMPLETION_POSTCOPY);
    in.can_postcopy = false;
    ferry__completion_decide(&in, &d);
    assert_int_equal(d.action, FERRY_COMPLETION_THROTTLE);
    assert_true(d.throttle > 50);

    /* A saturated pass (all it sent dirty again): postcopy at once; without it, auto-converge's steps. */
    in = after_first_pass(32);
    in.pending_pages = in.pages_in_pass;
    ferry__completion_decide(&in, &d);
    assert_int_equal(d.action, FERRY_COMPLETION_POSTCOPY);
    assert_int_equal(d.predicted_ms, -1);
    assert_non_null(strstr(d.reason, "100% of what it sent"));
    in.can_postcopy = false;
    ferry__completion_decide(&in, &d);
    assert_int_equal(d.action, FERRY_COMPLETION_THROTTLE);
    assert_int_equal(d.throttle, 20);
    in.throttle = 20;
    ferry__completion_decide(&in, &d);
    assert_int_equal(d.throttle, 30);
    in.throttle = 95;
    ferry__completion_decide(&in, &d);
    assert_int_equal(d.throttle, 99);
    in.throttle = 99;
    ferry__completion_decide(&in, &d);
    assert_int_equal(d.action, FERRY_COMPLETION_PRECOPY);
    assert_non_null(strstr(d.reason, "at its maximum"));
    /* No throttle either: nothing to do but go on. */
    in.can_throttle = false;
    in.throttle = 0;
    ferry__completion_decide(&in, &d);
    assert_int_equal(d.action, FERRY_COMPLETION_PRECOPY);

    /* The bound reached: postcopy even for a workload that would converge a little later. */
    in = after_first_pass(16);
    in.elapsed_ms = 6000;
    ferry__completion_decide(&in, &d);
    assert_int_equal(d.action, FERRY_COMPLETION_POSTCOPY);
    assert_non_null(strstr(d.reason, "reached the bound"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_predict),
        cmocka_unit_test(test_decide),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
