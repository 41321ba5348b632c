/*
 * Unit tests of ferry-workload's worker life cycle (hosts/workload/workload.c): the workers start parked, run and
 * park again through the host ops, and are joined exactly once however often they are stopped (main() stops them
 * and then frees the workload, which stops them again). pthread_join is wrapped (-Wl,--wrap) to count the joins.
 * The throttle of FerryHostOps (auto-converge) is checked here on real workers: the contract is that it takes effect
 * within about a time slice and that 0 lifts it. So is the dirty limit (FerryHostOps.dirty_limit / writer_stats): a
 * limited worker dirties within 20% of its limit, its own measurement agrees, and lifting gives its speed back. The
 * RAM, the device state and the verifier are exercised by the
 * integration tests, not here.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "migration/migration.h"
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

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
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

static uint64_t written_over(Workload *wl, unsigned ms)
{
    uint64_t p0, w0, p1, w1;
    workload_counters(wl, &p0, &w0);
    struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000 };
    nanosleep(&ts, NULL);
    workload_counters(wl, &p1, &w1);
    return w1 - w0;
}

/* FerryHostOps.throttle: at 75 % the workers write far fewer pages than unthrottled in the same time, at once
 * (the host must not wait for the workers), and 0 gives them their speed back. Ratios within one run, so that a
 * slow or busy machine does not matter: 75 % asleep leaves 25 % of the work; below 60 % is asserted. */
static void test_throttle_slows_and_lifts(void **state)
{
    FerryMigration *m = ferry__migration_new();
    WorkloadConfig cfg = {
        .ram_size = 2 * 256 * ferry_ram_page_size(),
        .block_size = UINT64_C(1) << 30,
        .smp = 2,
        .pattern = WORKLOAD_PATTERN_AB,
        .seed = 1,
        .tracker = FERRY_TRACKER_NONE,
    };
    FerryError *err = NULL;
    Workload *wl = workload_new(&cfg, &err);
    assert_non_null(wl);
    assert_true(workload_register(wl, m, &err));
    assert_true(workload_fill(wl, &err));
    assert_true(workload_start_threads(wl, &err));
    workload_ops.start(wl);
    uint64_t full = written_over(wl, 300);
    workload_ops.throttle(wl, 75);
    written_over(wl, 50); /* the slices already begun end */
    uint64_t slow = written_over(wl, 300);
    workload_ops.throttle(wl, 0);
    written_over(wl, 50);
    uint64_t again = written_over(wl, 300);
    assert_true(full > 0);
    assert_true(slow * 10 < full * 6);
    assert_true(again * 10 > slow * 12);
    workload_stop_threads(wl);
    workload_free(wl);
    ferry__migration_free(m);
}


/* A worker's pages dirtied in @ms, from writer_stats (the count the host gives the engine). */
static uint64_t dirtied_over(Workload *wl, unsigned index, unsigned ms, double *mbps)
{
    FerryWriterStats a[2], b[2];
    const char *why = NULL;
    double t0 = now_s();
    assert_int_equal(workload_ops.writer_stats(wl, a, 2, &why), 2);
    struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000 };
    nanosleep(&ts, NULL);
    assert_int_equal(workload_ops.writer_stats(wl, b, 2, &why), 2);
    uint64_t pages = b[index].dirty_pages - a[index].dirty_pages;
    *mbps = (double)pages * (double)ferry_ram_page_size() / 1048576.0 / (now_s() - t0);
    return pages;
}

/* FerryHostOps.dirty_limit: worker 0 held to LIMIT MB/s dirties within 20% of it over ~1 s (its own measurement,
 * rate_mbps, too) and counts the time it slept, while worker 1 runs free; lifting it gives it its speed back. */
#define LIMIT 16
static void test_dirty_limit_holds_and_lifts(void **state)
{
    FerryMigration *m = ferry__migration_new();
    WorkloadConfig cfg = {
        .ram_size = 2 * 256 * ferry_ram_page_size(),
        .block_size = UINT64_C(1) << 30,
        .smp = 2,
        .pattern = WORKLOAD_PATTERN_AB,
        .seed = 1,
        .tracker = FERRY_TRACKER_NONE,
    };
    FerryError *err = NULL;
    Workload *wl = workload_new(&cfg, &err);
    assert_non_null(wl);
    assert_true(workload_register(wl, m, &err));
    assert_true(workload_start_threads(wl, &err));
    workload_ops.start(wl);
    double free0, held, other, again;
    dirtied_over(wl, 0, 200, &free0);
    /* The limit is far below what an unlimited worker writes, or the test would prove nothing. */
    assert_true(free0 > 5 * LIMIT);
    workload_ops.dirty_limit(wl, 0, LIMIT, 100);
    dirtied_over(wl, 0, 150, &held); /* the period under way ends */
    dirtied_over(wl, 0, 1000, &held);
    dirtied_over(wl, 1, 200, &other);
    FerryWriterStats st[2];
    const char *why = NULL;
    assert_int_equal(workload_ops.writer_stats(wl, st, 2, &why), 2);
    if (held < 0.8 * LIMIT || held > 1.2 * LIMIT) {
        fail_msg("worker 0 held to %d MB/s dirtied %.1f MB/s", LIMIT, held);
    }
    if (st[0].rate_mbps < 0.8 * LIMIT || st[0].rate_mbps > 1.2 * LIMIT) {
        fail_msg("worker 0 held to %d MB/s measured itself at %llu MB/s", LIMIT, (unsigned long long)st[0].rate_mbps);
    }
    assert_int_equal(st[0].limit_mbps, LIMIT);
    assert_int_equal(st[1].limit_mbps, 0);
    assert_true(st[0].throttle_us > 500000);
    assert_int_equal(st[1].throttle_us, 0);
    assert_int_equal(st[0].ring_full_us, 0);
    assert_true(other > 5 * LIMIT);
    workload_ops.dirty_limit(wl, -1, 0, 1000);
    dirtied_over(wl, 0, 50, &again);
    dirtied_over(wl, 0, 200, &again);
    assert_true(again > 5 * LIMIT);
    print_message("dirty limit %d MB/s: free %.0f MB/s, held %.1f MB/s (own measure %llu), other %.0f, lifted %.0f\n",
                  LIMIT, free0, held, (unsigned long long)st[0].rate_mbps, other, again);
    /* A parked worker dirties nothing, and says so. */
    workload_ops.stop(wl);
    assert_int_equal(workload_ops.writer_stats(wl, st, 2, &why), 2);
    assert_int_equal(st[0].rate_mbps, 0);
    assert_int_equal(st[1].rate_mbps, 0);
    workload_stop_threads(wl);
    workload_free(wl);
    ferry__migration_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stop_twice_joins_once),
        cmocka_unit_test(test_ops_after_stop_return),
        cmocka_unit_test(test_throttle_slows_and_lifts),
        cmocka_unit_test(test_dirty_limit_holds_and_lifts),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
