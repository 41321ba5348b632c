/*
 * Unit tests of hugetlb-backed RAM blocks (ram/ramblock.c): the huge page size check (ferry_ram_hugepage_size) and
 * its error listing the host's sizes, hugetlb memfd blocks (size refusals, alignment, page size, populate,
 * discard making RAM read as zero, shared and private, the present-page scan reporting whole huge pages),
 * temporary files in a directory (hugetlbfs: the file system's page size; tmpfs: a memfd-like block; elsewhere a
 * file block), the uffd-wp tracker reporting a write as its whole huge page, postcopy's refusal, and cpr-transfer's
 * refusal of a memfd whose page size differs from the block's.
 *
 * The machine may have no huge pages reserved: the group setup reserves what the tests need (at most 16 pages of
 * 2 MiB) by raising /proc/sys/vm/nr_hugepages, and mounts a hugetlbfs in a temporary directory; the teardown
 * unmounts it and restores the old count. Without root or hugetlb support the tests skip, saying why. Not covered
 * here: a whole migration (tests/integration/test_hugetlb.py).
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <unistd.h>

#include <cmocka.h>

#include "ram/postcopy.h"
#include "ram/ram.h"
#include "util/bitmap.h"
#include "util/util.h"

#define HPS (2ULL << 20)
#define NEED_PAGES 16
#define NR_PATH "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"
#define FREE_PATH "/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages"

static long old_nr = -1;     /* nr_hugepages before setup raised it; -1: not raised */
static char mnt[64];         /* the hugetlbfs mount, "" if none */
static const char *why_skip; /* set by setup: why the tests cannot run here */

static long read_long(const char *path)
{
    FILE *f = fopen(path, "r");
    long v = -1;
    if (f) {
        if (fscanf(f, "%ld", &v) != 1) {
            v = -1;
        }
        fclose(f);
    }
    return v;
}

static bool write_long(const char *path, long v)
{
    FILE *f = fopen(path, "w");
    if (!f) {
        return false;
    }
    bool ok = fprintf(f, "%ld\n", v) > 0;
    return fclose(f) == 0 && ok;
}

static int group_setup(void **state)
{
    long nr = read_long(NR_PATH), free_pages = read_long(FREE_PATH);
    if (nr < 0 || free_pages < 0) {
        why_skip = "no 2 MiB huge pages on this host (" NR_PATH ")";
        return 0;
    }
    if (free_pages < NEED_PAGES) {
        if (!write_long(NR_PATH, nr + NEED_PAGES - free_pages)) {
            why_skip = "cannot reserve huge pages (needs root)";
            return 0;
        }
        old_nr = nr;
        if (read_long(FREE_PATH) < NEED_PAGES) {
            why_skip = "the kernel could not reserve 16 huge pages of 2 MiB (memory too fragmented)";
            return 0;
        }
    }
    snprintf(mnt, sizeof(mnt), "/tmp/ferry-hugetlbfs-XXXXXX");
    if (!mkdtemp(mnt)) {
        mnt[0] = '\0';
    } else if (mount("none", mnt, "hugetlbfs", 0, "pagesize=2M") != 0) {
        rmdir(mnt);
        mnt[0] = '\0';
    }
    return 0;
}

static int group_teardown(void **state)
{
    if (mnt[0]) {
        umount(mnt);
        rmdir(mnt);
    }
    if (old_nr >= 0) {
        write_long(NR_PATH, old_nr);
    }
    return 0;
}

#define NEED_HUGEPAGES()                                                                                              \
    do {                                                                                                              \
        if (why_skip) {                                                                                               \
            fprintf(stderr, "skipped: %s\n", why_skip);                                                               \
            skip();                                                                                                   \
        }                                                                                                             \
    } while (0)

static void expect_error(FerryError *err, const char *a, const char *b)
{
    assert_non_null(err);
    if (!strstr(ferry_error_msg(err), a) || (b && !strstr(ferry_error_msg(err), b))) {
        fail_msg("error '%s' lacks '%s' or '%s'", ferry_error_msg(err), a, b ? b : "");
    }
    ferry_error_free(err);
}

static void test_hugepage_size(void **state)
{
    NEED_HUGEPAGES();
    uint64_t size = 0;
    FerryError *err = NULL;
    assert_true(ferry_ram_hugepage_size(HPS, &size, &err));
    assert_int_equal(size, HPS);
    size = 0;
    assert_true(ferry_ram_hugepage_size(0, &size, &err)); /* the default: whatever the host's is */
    assert_true(size >= HPS && (size & (size - 1)) == 0);
    assert_false(ferry_ram_hugepage_size(3ULL << 20, &size, &err));
    expect_error(err, "3M is not a huge page size", "2M");
}

static void test_memfd_sizes(void **state)
{
    NEED_HUGEPAGES();
    FerryError *err = NULL;
    assert_null(ferry__ram_block_new_hugetlb("odd", HPS + 4096, false, HPS, &err));
    expect_error(err, "2101248 is not a multiple", "2097152-byte huge page");
    err = NULL;
    assert_null(ferry__ram_block_new_hugetlb("bad", HPS, false, 3ULL << 20, &err));
    expect_error(err, "not a huge page size", NULL);
    err = NULL;
    /* More than the host has free: refused up front, naming the numbers. */
    assert_null(ferry__ram_block_new_hugetlb("big", 1ULL << 40, false, HPS, &err));
    expect_error(err, "huge pages of 2097152 bytes", "free");
}

/* Write, scan, populate and discard a hugetlb block: the page scan and discard work in whole huge pages. */
static void check_block(FerryRamBlock *b)
{
    size_t ps = ferry_ram_page_size();
    uint64_t n = b->npages, per = HPS / ps;
    assert_int_equal(b->page_size, HPS);
    assert_int_equal(ferry_ram_block_page_size(b), HPS);
    assert_true(b->hugetlb);
    assert_int_equal((uintptr_t)b->host % HPS, 0);
    assert_true(ferry__buffer_is_zero(b->host, b->size));

    unsigned long *map = ferry__bitmap_new(n);
    b->host[per * ps + 100] = 0x5a; /* one byte of the second huge page */
    assert_true(ferry__ram_block_present_pages(b, map));
    /* The whole second huge page is present, the others not (or all, where PAGEMAP_SCAN is missing). */
    size_t count = ferry__bitmap_count(map, n);
    if (count != n) {
        assert_int_equal(count, per);
        assert_int_equal(ferry__bitmap_find_next(map, n, 0), per);
    }

    FerryError *err = NULL;
    assert_true(ferry__ram_block_populate(b, &err));
    assert_int_equal(b->host[per * ps + 100], 0x5a);
    ferry__ram_block_populate_range(b, 3, 5); /* inside a huge page: best effort, must not disturb */
    memset(b->host, 0x77, b->size);
    ferry__ram_block_discard(b);
    assert_true(ferry__buffer_is_zero(b->host, b->size));
    free(map);
}

static void test_memfd_block(void **state)
{
    NEED_HUGEPAGES();
    for (int share = 0; share <= 1; share++) {
        FerryError *err = NULL;
        FerryRamBlock *b = ferry__ram_block_new_hugetlb("huge", 4 * HPS, share, HPS, &err);
        if (!b) {
            fail_msg("%s", ferry_error_msg(err));
        }
        assert_int_equal(b->shared, share);
        assert_true(b->memfd);
        check_block(b);
        ferry__ram_block_free(b);
    }
}

static void test_tmpfile_hugetlbfs(void **state)
{
    NEED_HUGEPAGES();
    if (!mnt[0]) {
        fprintf(stderr, "skipped: cannot mount a hugetlbfs\n");
        skip();
    }
    FerryError *err = NULL;
    assert_null(ferry__ram_block_new_tmpfile("odd", HPS + 4096, mnt, true, &err));
    expect_error(err, "not a multiple of the 2097152-byte huge page", mnt);
    for (int share = 0; share <= 1; share++) {
        err = NULL;
        FerryRamBlock *b = ferry__ram_block_new_tmpfile("dir", 2 * HPS, mnt, share, &err);
        if (!b) {
            fail_msg("%s", ferry_error_msg(err));
        }
        assert_false(b->file);
        check_block(b);
        ferry__ram_block_free(b);
    }
    /* The file was unlinked at once: nothing is left in the directory. */
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "test -z \"$(ls -A %s)\"", mnt);
    assert_int_equal(system(cmd), 0);
}

static void test_tmpfile_other(void **state)
{
    FerryError *err = NULL;
    assert_null(ferry__ram_block_new_tmpfile("nodir", 4096, "/proc/self/status", false, &err));
    expect_error(err, "is not a directory", NULL);
    /* tmpfs: a memfd-like block; /var/tmp (usually a disk): a file block over the temporary file. */
    const char *dirs[] = {"/dev/shm", "/var/tmp"};
    for (int i = 0; i < 2; i++) {
        err = NULL;
        FerryRamBlock *b = ferry__ram_block_new_tmpfile("dir", 64 * 4096, dirs[i], true, &err);
        if (!b) {
            fail_msg("%s", ferry_error_msg(err));
        }
        assert_int_equal(b->page_size, ferry_ram_page_size());
        assert_false(b->hugetlb);
        assert_true(b->memfd != b->file);
        assert_true(ferry__buffer_is_zero(b->host, b->size));
        memset(b->host, 1, b->size);
        ferry__ram_block_discard(b);
        assert_true(ferry__buffer_is_zero(b->host, b->size));
        ferry__ram_block_free(b);
    }
}

/* The uffd-wp tracker on a hugetlb block: a 4 KiB write is reported as its whole huge page, once. */
static void test_tracker(void **state)
{
    NEED_HUGEPAGES();
    FerryError *err = NULL;
    if (!ferry__tracker_uffd_wp_probe(&err)) {
        fprintf(stderr, "skipped: no uffd-wp here: %s\n", ferry_error_msg(err));
        ferry_error_free(err);
        skip();
    }
    FerryRamBlock *b = ferry__ram_block_new_hugetlb("wp", 4 * HPS, true, HPS, &err);
    assert_non_null(b);
    size_t ps = ferry_ram_page_size();
    uint64_t n = b->npages, per = HPS / ps;
    b->host[0] = 1; /* populated before the start */
    FerryDirtyTracker *t = ferry__tracker_start(FERRY_TRACKER_UFFD_WP, &b, 1, &err);
    if (!t) {
        fail_msg("%s", ferry_error_msg(err));
    }
    unsigned long *map = ferry__bitmap_new(n);
    assert_true(ferry__tracker_harvest(t, b, map, &err));
    assert_int_equal(ferry__bitmap_count(map, n), 0);

    b->host[2 * HPS + 5 * ps] = 2; /* never populated before */
    b->host[10] = 3;               /* populated and armed */
    assert_true(ferry__tracker_harvest(t, b, map, &err));
    assert_int_equal(ferry__bitmap_count(map, n), 2 * per);
    assert_int_equal(ferry__bitmap_find_next(map, n, 0), 0);
    assert_int_equal(ferry__bitmap_find_next_zero(map, n, 0), per);
    assert_int_equal(ferry__bitmap_find_next(map, n, per), 2 * per);
    assert_int_equal(ferry__bitmap_find_next_zero(map, n, 2 * per), 3 * per);

    ferry__bitmap_zero(map, n);
    assert_true(ferry__tracker_harvest(t, b, map, &err));
    assert_int_equal(ferry__bitmap_count(map, n), 0);
    b->host[2 * HPS + 7 * ps] = 4; /* re-protected by the harvest: seen again */
    assert_true(ferry__tracker_harvest(t, b, map, &err));
    assert_int_equal(ferry__bitmap_count(map, n), per);
    ferry__tracker_stop(t);
    free(map);
    ferry__ram_block_free(b);
}

static void test_postcopy_refused(void **state)
{
    NEED_HUGEPAGES();
    FerryError *err = NULL;
    FerryRamBlock *b = ferry__ram_block_new_hugetlb("pc", HPS, false, HPS, &err);
    assert_non_null(b);
    assert_false(ferry__uffd_probe(&b, 1, &err));
    expect_error(err, "'pc'", "huge pages (hugetlb), which postcopy does not support");
    ferry__ram_block_free(b);
}

/* cpr-transfer: a received memfd must have the block's page size. */
static void test_adopt_page_size(void **state)
{
    NEED_HUGEPAGES();
    FerryError *err = NULL;
    FerryRamBlock *plain = ferry__ram_block_new_memfd("plain", HPS, true, &err);
    FerryRamBlock *huge = ferry__ram_block_new_hugetlb("huge", HPS, true, HPS, &err);
    assert_non_null(plain);
    assert_non_null(huge);
    int fd = dup(huge->fd);
    assert_false(ferry__ram_block_adopt_fd(plain, fd, &err));
    expect_error(err, "has 2097152-byte pages, the block 4096-byte pages", NULL);
    err = NULL;
    /* The same page size on both sides: adopted, the pages are the source's. */
    FerryRamBlock *dest = ferry__ram_block_new_hugetlb("dest", HPS, true, HPS, &err);
    assert_non_null(dest);
    huge->host[123] = 9;
    assert_true(ferry__ram_block_adopt_fd(dest, fd, &err));
    assert_int_equal(dest->host[123], 9);
    ferry__ram_block_unadopt(dest); /* back to a fresh hugetlb memfd of its own */
    assert_int_equal(dest->host[123], 0);
    assert_int_equal(huge->host[123], 9);
    ferry__ram_block_free(dest);
    ferry__ram_block_free(huge);
    ferry__ram_block_free(plain);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hugepage_size),
        cmocka_unit_test(test_memfd_sizes),
        cmocka_unit_test(test_memfd_block),
        cmocka_unit_test(test_tmpfile_hugetlbfs),
        cmocka_unit_test(test_tmpfile_other),
        cmocka_unit_test(test_tracker),
        cmocka_unit_test(test_postcopy_refused),
        cmocka_unit_test(test_adopt_page_size),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
