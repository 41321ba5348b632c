/*
 * Unit tests of postcopy's fault latency and blocktime accounting (ram/blocktime.c), with made-up timestamps so
 * that every figure is exact: two vCPUs blocked at overlapping and at separate times (only the overlap counts as
 * blocktime), per-vCPU blocked time and latency, non-vCPU and unknown-thread faults, retried and stale faults, a
 * placement covering several faults, the histogram buckets, the percentiles of a known distribution, vCPUs named
 * late, and several threads reporting at once.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "ferry/ram.h"
#include "ram/blocktime.h"
#include "util/util.h"

#define MS 1000000LL
#define US 1000LL

static uint64_t pg(uint64_t n)
{
    return 0x7f0000000000ULL + n * ferry_ram_page_size();
}

static void test_empty(void **state)
{
    (void)state;
    FerryBlocktime *bt = ferry__blocktime_new();
    FerryBlocktimeStats s;
    ferry__blocktime_get(bt, &s);
    assert_int_equal(s.blocktime_ms, 0);
    assert_int_equal(s.nvcpus, 0);
    assert_int_equal(s.faults, 0);
    assert_int_equal(s.latency_avg_ns, 0);
    assert_int_equal(s.latency_p50_ns, 0);
    for (int i = 0; i < FERRY_BLOCKTIME_DIST_BUCKETS; i++) {
        assert_int_equal(s.dist[i], 0);
    }
    ferry__blocktime_stats_free(&s);
    assert_null(s.vcpu_blocktime_ms);
    ferry__blocktime_free(bt);
    ferry__blocktime_free(NULL);
}

static void test_two_vcpus(void **state)
{
    (void)state;
    FerryBlocktime *bt = ferry__blocktime_new();
    ferry__blocktime_set_vcpu(bt, 0, 100);
    ferry__blocktime_set_vcpu(bt, 1, 101);

    /* Overlap: vCPU 0 blocked 0..10 ms, vCPU 1 4..15 ms: both blocked 4..10 = 6 ms. */
    ferry__blocktime_fault(bt, pg(1) + 123, 100, 0);
    ferry__blocktime_fault(bt, pg(2), 101, 4 * MS);
    ferry__blocktime_placed(bt, pg(1), ferry_ram_page_size(), 10 * MS);
    ferry__blocktime_placed(bt, pg(2), ferry_ram_page_size(), 15 * MS);
    /* Apart: vCPU 0 20..25, vCPU 1 30..32: no overlap. */
    ferry__blocktime_fault(bt, pg(3), 100, 20 * MS);
    ferry__blocktime_placed(bt, pg(3), 1, 25 * MS);
    ferry__blocktime_fault(bt, pg(4), 101, 30 * MS);
    ferry__blocktime_placed(bt, pg(4), 1, 32 * MS);
    /* Both on the same page 40..47 (from 41): one placement ends both; overlap 41..47 = 6 ms. */
    ferry__blocktime_fault(bt, pg(5), 100, 40 * MS);
    ferry__blocktime_fault(bt, pg(5) + 8, 101, 41 * MS);
    ferry__blocktime_placed(bt, pg(5), 1, 47 * MS);

    FerryBlocktimeStats s;
    ferry__blocktime_get(bt, &s);
    assert_int_equal(s.blocktime_ns, 12 * MS);
    assert_int_equal(s.blocktime_ms, 12);
    assert_int_equal(s.nvcpus, 2);
    assert_int_equal(s.vcpu_blocktime_ms[0], 10 + 5 + 7);
    assert_int_equal(s.vcpu_blocktime_ms[1], 11 + 2 + 6);
    assert_int_equal(s.vcpu_faults[0], 3);
    assert_int_equal(s.vcpu_faults[1], 3);
    assert_int_equal(s.vcpu_latency_avg_ns[0], 22 * MS / 3);
    assert_int_equal(s.vcpu_latency_avg_ns[1], 19 * MS / 3);
    assert_int_equal(s.faults, 6);
    assert_int_equal(s.pending, 0);
    assert_int_equal(s.latency_avg_ns, 41 * MS / 6);
    assert_int_equal(s.non_vcpu_faults, 0);
    assert_int_equal(s.non_vcpu_latency_avg_ns, 0);
    assert_int_equal(s.latency_max_ns, 11 * MS);
    ferry__blocktime_stats_free(&s);
    ferry__blocktime_free(bt);
}

static void test_non_vcpu(void **state)
{
    (void)state;
    FerryBlocktime *bt = ferry__blocktime_new();
    /* No vCPUs registered: every fault is a non-vCPU fault and blocktime stays 0. */
    ferry__blocktime_fault(bt, pg(1), 500, 0);
    ferry__blocktime_fault(bt, pg(1), 500, 1 * MS); /* the same fault retried: keeps its start */
    ferry__blocktime_fault(bt, pg(2), 0, 2 * MS);   /* unknown thread */
    ferry__blocktime_fault(bt, pg(2), 0, 3 * MS);   /* same page, unknown thread: the same fault */
    ferry__blocktime_fault(bt, pg(3), 501, 2 * MS);
    FerryBlocktimeStats s;
    ferry__blocktime_get(bt, &s);
    assert_int_equal(s.pending, 3);
    assert_int_equal(s.faults, 0);
    ferry__blocktime_stats_free(&s);

    /* One placement over pages 1..2 ends two faults; page 3 waits on. */
    ferry__blocktime_placed(bt, pg(1), 2 * ferry_ram_page_size(), 6 * MS);
    ferry__blocktime_get(bt, &s);
    assert_int_equal(s.faults, 2);
    assert_int_equal(s.pending, 1);
    assert_int_equal(s.non_vcpu_faults, 2);
    assert_int_equal(s.non_vcpu_latency_avg_ns, (6 + 4) * MS / 2);
    assert_int_equal(s.latency_avg_ns, 5 * MS);
    assert_int_equal(s.blocktime_ms, 0);
    assert_int_equal(s.nvcpus, 0);
    ferry__blocktime_stats_free(&s);

    /* A placement ending just before page 3 leaves it; one starting inside it ends it. */
    ferry__blocktime_placed(bt, pg(0), ferry_ram_page_size(), 7 * MS);
    ferry__blocktime_placed(bt, pg(4), ferry_ram_page_size(), 7 * MS);
    ferry__blocktime_get(bt, &s);
    assert_int_equal(s.pending, 1);
    ferry__blocktime_stats_free(&s);
    ferry__blocktime_placed(bt, pg(3) + 100, 1, 8 * MS);
    ferry__blocktime_get(bt, &s);
    assert_int_equal(s.pending, 0);
    assert_int_equal(s.non_vcpu_faults, 3);
    assert_int_equal(s.non_vcpu_latency_avg_ns, (6 + 4 + 6) * MS / 3);
    ferry__blocktime_stats_free(&s);
    ferry__blocktime_free(bt);
}

static void test_mixed_and_late_vcpu(void **state)
{
    (void)state;
    FerryBlocktime *bt = ferry__blocktime_new();
    ferry__blocktime_set_vcpu(bt, 2, 42); /* indices 0 and 1 never registered */
    ferry__blocktime_fault(bt, pg(1), 42, 0);
    ferry__blocktime_fault(bt, pg(2), 7, 0); /* not a vCPU yet */
    ferry__blocktime_set_vcpu(bt, 0, 7);      /* now it is; its pending fault stays a non-vCPU one */
    /* Registering vCPU 0 while vCPU 2 (the only one) was blocked ended the all-blocked period at 0. */
    ferry__blocktime_placed(bt, pg(1), 1, 3 * MS);
    ferry__blocktime_placed(bt, pg(2), 1, 5 * MS);
    ferry__blocktime_fault(bt, pg(3), 7, 10 * MS);
    ferry__blocktime_fault(bt, pg(4), 42, 11 * MS);
    ferry__blocktime_placed(bt, pg(4), 1, 12 * MS);
    ferry__blocktime_placed(bt, pg(3), 1, 14 * MS);

    FerryBlocktimeStats s;
    ferry__blocktime_get(bt, &s);
    assert_int_equal(s.nvcpus, 3);
    assert_int_equal(s.vcpu_faults[0], 1);
    assert_int_equal(s.vcpu_faults[1], 0);
    assert_int_equal(s.vcpu_faults[2], 2);
    assert_int_equal(s.vcpu_blocktime_ns[0], 4 * MS);
    assert_int_equal(s.vcpu_blocktime_ns[1], 0);
    assert_int_equal(s.vcpu_blocktime_ns[2], 4 * MS);
    assert_int_equal(s.vcpu_latency_avg_ns[2], 2 * MS);
    assert_int_equal(s.non_vcpu_faults, 1);
    assert_int_equal(s.non_vcpu_latency_avg_ns, 5 * MS);
    assert_int_equal(s.blocktime_ns, 1 * MS); /* 11..12: both blocked */
    assert_int_equal(s.faults, 4);
    ferry__blocktime_stats_free(&s);
    ferry__blocktime_free(bt);
}

/* A vCPU reported on a new page got past the old one: the old fault ends there, blocktime runs on. */
static void test_stale_vcpu_fault(void **state)
{
    (void)state;
    FerryBlocktime *bt = ferry__blocktime_new();
    ferry__blocktime_set_vcpu(bt, 0, 1);
    ferry__blocktime_fault(bt, pg(1), 1, 0);
    ferry__blocktime_fault(bt, pg(1), 1, 2 * MS); /* retried */
    ferry__blocktime_fault(bt, pg(2), 1, 3 * MS);
    ferry__blocktime_placed(bt, pg(1), 1, 4 * MS); /* nobody waits on page 1 any more */
    ferry__blocktime_placed(bt, pg(2), 1, 9 * MS);
    FerryBlocktimeStats s;
    ferry__blocktime_get(bt, &s);
    assert_int_equal(s.faults, 2);
    assert_int_equal(s.vcpu_blocktime_ns[0], 9 * MS);
    assert_int_equal(s.blocktime_ns, 9 * MS); /* a single vCPU: blocked is all blocked */
    assert_int_equal(s.latency_max_ns, 6 * MS);
    ferry__blocktime_stats_free(&s);
    ferry__blocktime_free(bt);
}

static void test_histogram_and_percentiles(void **state)
{
    (void)state;
    FerryBlocktime *bt = ferry__blocktime_new();
    /* Latencies 1..100 us (one fault each), plus one of 0.5 us and one of 20 s. */
    int64_t t = 0;
    for (int i = 1; i <= 100; i++) {
        ferry__blocktime_fault(bt, pg((uint64_t)i), 9, t);
        ferry__blocktime_placed(bt, pg((uint64_t)i), 1, t + i * US);
        t += MS;
    }
    FerryBlocktimeStats s;
    ferry__blocktime_get(bt, &s);
    assert_int_equal(s.faults, 100);
    assert_int_equal(s.latency_p50_ns, 50 * US);
    assert_int_equal(s.latency_p99_ns, 99 * US);
    assert_int_equal(s.latency_avg_ns, 5050 * US / 100);
    /* [1,2) us: 1; [2,4): 2,3; [4,8): 4..7; ... [64,128): 64..100. */
    assert_int_equal(s.dist[0], 1);
    assert_int_equal(s.dist[1], 2);
    assert_int_equal(s.dist[2], 4);
    assert_int_equal(s.dist[5], 32);
    assert_int_equal(s.dist[6], 37);
    assert_int_equal(s.dist[7], 0);
    ferry__blocktime_stats_free(&s);

    ferry__blocktime_fault(bt, pg(200), 9, t);
    ferry__blocktime_placed(bt, pg(200), 1, t + 500);
    ferry__blocktime_fault(bt, pg(201), 9, t);
    ferry__blocktime_placed(bt, pg(201), 1, t + 20000 * MS);
    ferry__blocktime_get(bt, &s);
    assert_int_equal(s.dist[0], 2);                                  /* under 1 us joins bucket 0 */
    assert_int_equal(s.dist[FERRY_BLOCKTIME_DIST_BUCKETS - 1], 1);   /* beyond the last bucket: kept in it */
    assert_int_equal(s.latency_max_ns, 20000 * MS);
    uint64_t sum = 0;
    for (int i = 0; i < FERRY_BLOCKTIME_DIST_BUCKETS; i++) {
        sum += s.dist[i];
    }
    assert_int_equal(sum, s.faults);
    ferry__blocktime_stats_free(&s);
    ferry__blocktime_free(bt);
}

/* Beyond the reservoir the percentiles are estimates: with 10 x the reservoir of a uniform spread they stay close. */
static void test_percentiles_sampled(void **state)
{
    (void)state;
    FerryBlocktime *bt = ferry__blocktime_new();
    const int n = 10 * FERRY_BLOCKTIME_RESERVOIR;
    for (int i = 0; i < n; i++) {
        int64_t lat = (int64_t)((i * 7919LL) % n) + 1; /* a permutation of 1..n ns */
        ferry__blocktime_fault(bt, pg(1), 3, 0);
        ferry__blocktime_placed(bt, pg(1), 1, lat);
    }
    FerryBlocktimeStats s;
    ferry__blocktime_get(bt, &s);
    assert_int_equal(s.faults, (uint64_t)n);
    assert_in_range(s.latency_p50_ns, (uint64_t)(n * 0.46), (uint64_t)(n * 0.54));
    assert_in_range(s.latency_p99_ns, (uint64_t)(n * 0.98), (uint64_t)n);
    ferry__blocktime_stats_free(&s);
    ferry__blocktime_free(bt);
}

typedef struct Worker {
    FerryBlocktime *bt;
    uint32_t tid;
} Worker;

static void *worker_fn(void *arg)
{
    Worker *w = arg;
    for (int i = 0; i < 10000; i++) {
        uint64_t a = pg(w->tid * 100000ULL + (uint64_t)i);
        ferry__blocktime_fault(w->bt, a, w->tid, i * 1000LL);
        ferry__blocktime_placed(w->bt, a, 1, i * 1000LL + 10);
    }
    return NULL;
}

static void test_threads(void **state)
{
    (void)state;
    FerryBlocktime *bt = ferry__blocktime_new();
    ferry__blocktime_set_vcpu(bt, 0, 1);
    ferry__blocktime_set_vcpu(bt, 1, 2);
    Worker w[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        w[i] = (Worker){bt, (uint32_t)(i + 1)};
        assert_int_equal(pthread_create(&th[i], NULL, worker_fn, &w[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
    }
    FerryBlocktimeStats s;
    ferry__blocktime_get(bt, &s);
    assert_int_equal(s.faults, 40000);
    assert_int_equal(s.pending, 0);
    assert_int_equal(s.vcpu_faults[0], 10000);
    assert_int_equal(s.vcpu_faults[1], 10000);
    assert_int_equal(s.non_vcpu_faults, 20000);
    assert_int_equal(s.latency_avg_ns, 10);
    assert_int_equal(s.vcpu_blocktime_ns[0], 100000);
    ferry__blocktime_stats_free(&s);
    ferry__blocktime_free(bt);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty),
        cmocka_unit_test(test_two_vcpus),
        cmocka_unit_test(test_non_vcpu),
        cmocka_unit_test(test_mixed_and_late_vcpu),
        cmocka_unit_test(test_stale_vcpu_fault),
        cmocka_unit_test(test_histogram_and_percentiles),
        cmocka_unit_test(test_percentiles_sampled),
        cmocka_unit_test(test_threads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
