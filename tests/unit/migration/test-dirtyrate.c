/*
 * calc-dirty-rate's arithmetic (dirtyrate.c): page-sampling's extrapolation from the share of sampled pages that
 * changed to MB/s over the whole RAM, and how many pages a block gets sampled. The measurement itself (threads,
 * trackers, real writers) is tested against ferry-workload in tests/integration/test_dirtyrate.py.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "migration/migration.h"

#define MIB (UINT64_C(1) << 20)
#define GIB (UINT64_C(1) << 30)

static void test_extrapolate(void **state)
{
    (void)state;
    /* A quarter of 1 GiB's samples changed in 1 s: 256 MB/s. */
    assert_int_equal(ferry__dirtyrate_extrapolate(128, 512, GIB, 1000), 256);
    /* The same over 2 s is half the rate; over 500 ms twice. */
    assert_int_equal(ferry__dirtyrate_extrapolate(128, 512, GIB, 2000), 128);
    assert_int_equal(ferry__dirtyrate_extrapolate(128, 512, GIB, 500), 512);
    /* Nothing changed, nothing sampled, no time: 0, never a division by zero. */
    assert_int_equal(ferry__dirtyrate_extrapolate(0, 512, GIB, 1000), 0);
    assert_int_equal(ferry__dirtyrate_extrapolate(0, 0, GIB, 1000), 0);
    assert_int_equal(ferry__dirtyrate_extrapolate(5, 10, GIB, 0), 0);
    /* Every page of 256 MiB changed in 1 s, and dirty-bitmap's use (count pages, "sample" of one page). */
    assert_int_equal(ferry__dirtyrate_extrapolate(65536, 65536, 256 * MIB, 1000), 256);
    assert_int_equal(ferry__dirtyrate_extrapolate(16384, 1, 4096, 1000), 64);
    /* Rounded to the nearest MB/s: 1.5 MiB in 1 s is 2, 1.4 MiB is 1. */
    assert_int_equal(ferry__dirtyrate_extrapolate(3, 4, 2 * MIB, 1000), 2);
    assert_int_equal(ferry__dirtyrate_extrapolate(7, 10, 2 * MIB, 1000), 1);
    /* A huge RAM does not overflow: half of 1 PiB (2^29 MiB) in 1000 s is 536870.9 MB/s. */
    assert_int_equal(ferry__dirtyrate_extrapolate(1, 2, GIB * 1024 * 1024, 1000000), 536871);
}

static void test_samples_for_block(void **state)
{
    (void)state;
    /* sample-pages per GiB, rounded up, at most every page. */
    assert_int_equal(ferry__dirtyrate_samples_for_block(512, GIB, GIB / 4096), 512);
    assert_int_equal(ferry__dirtyrate_samples_for_block(512, 4 * GIB, 4 * GIB / 4096), 2048);
    assert_int_equal(ferry__dirtyrate_samples_for_block(16384, 256 * MIB, 65536), 4096);
    /* A small block still gets a sample, and never more samples than pages. */
    assert_int_equal(ferry__dirtyrate_samples_for_block(128, MIB, 256), 1);
    assert_int_equal(ferry__dirtyrate_samples_for_block(16384, 64 * 1024, 16), 1);
    assert_int_equal(ferry__dirtyrate_samples_for_block(16384, 1 << 30, 100), 100);
    assert_int_equal(ferry__dirtyrate_samples_for_block(512, 0, 0), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_extrapolate),
        cmocka_unit_test(test_samples_for_block),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
