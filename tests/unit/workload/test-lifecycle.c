/*
 * Unit tests of ferry-workload's worker life cycle (hosts/workload/workload.c): the workers start parked, run and
 * park again through the host ops, and are joined exactly once however often they are stopped (main() stops them
 * and then frees the workload, which stops them again). pthread_join is wrapped (-Wl,--wrap) to count the joins.
 * The RAM, the device state and the verifier are exercised by the integration tests, not here.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "workload.h"

int __real_pthread_join(pthread_t thread, void **retval);
int __wrap_pthread_join(pthread_t thread, void **retval);

#define MAX_JOINS 64
static pthread_t joined[MAX_JOINS];
static unsigned njoined;

int __wrap_pthread_join(pthread_t thread, void **retval)
{
    if (njoined < MAX_JOINS) {
        joined[njoined] = thread;
    }
    njoined++;
    return __real_pthread_join(thread, retval);
}

static Workload *new_workload(unsigned smp)
{
    WorkloadConfig cfg = {
        .ram_size = (uint64_t)smp * 4 * ferry_ram_page_size(),
        .block_size = UINT64_C(1) << 30,
        .smp = smp,
        .pattern = WORKLOAD_PATTERN_AB,
        .seed = 1,
        .tracker = FERRY_TRACKER_NONE,
    };
    FerryError *err = NULL;
    Workload *wl = workload_new(&cfg, &err);
    assert_null(err);
    assert_non_null(wl);
    return wl;
}

/* main() calls workload_stop_threads() and then workload_free(), which stops them again: each worker must be
 * joined once, not twice (a second join of a reaped thread is undefined behaviour). */
static void test_stop_twice_joins_once(void **state)
{
    Workload *wl = new_workload(3);
    FerryError *err = NULL;
    assert_true(workload_start_threads(wl, &err));
    pthread_t threads[3];
    for (unsigned i = 0; i < 3; i++) {
        threads[i] = wl->workers[i].thread;
    }

    njoined = 0;
    workload_stop_threads(wl);
    assert_int_equal(njoined, 3);
    workload_stop_threads(wl);
    workload_free(wl);
    assert_int_equal(njoined, 3);
    for (unsigned i = 0; i < 3; i++) {
        assert_true(pthread_equal(joined[i], threads[i]));
    }
}

/* After the workers are gone, the host ops and holds still return at once (the host may stop the workload on its
 * way down). */
static void test_ops_after_stop_return(void **state)
{
    Workload *wl = new_workload(2);
    FerryError *err = NULL;
    assert_true(workload_start_threads(wl, &err));
    workload_stop_threads(wl);
    workload_ops.start(wl);
    workload_ops.stop(wl);
    workload_hold(wl);
    workload_release(wl);
    workload_free(wl);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stop_twice_joins_once),
        cmocka_unit_test(test_ops_after_stop_return),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
