/*
 * Unit tests of RAM blocks (ram/ramblock.c): argument checks and size rounding, the public accessors, populate of
 * a whole block or of a clamped page range (pages become present without changing content), discard (memory reads
 * zero again), present_pages after touching some pages, explicit marks (clamping to the block and marks from
 * several threads at once), and file blocks: the pages over their file's data count as present (an unfaulted
 * page of a file reads as the file), those over its holes do not, slices at offsets, private and shared mappings, discard, and the refusals of bad files.
 */
#include <limits.h>
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

#include "ram/ram.h"
#include "util/bitmap.h"
#include "util/util.h"

static void test_new_checks(void **state)
{
    FerryError *err = NULL;
    assert_null(ferry__ram_block_new("", 4096, &err));
    assert_non_null(strstr(ferry_error_msg(err), "empty"));
    ferry_error_free(err);
    err = NULL;

    char name[FERRY_RAM_NAME_MAX + 2];
    memset(name, 'n', sizeof(name) - 1);
    name[sizeof(name) - 1] = '\0';
    assert_null(ferry__ram_block_new(name, 4096, &err));
    assert_non_null(strstr(ferry_error_msg(err), "longer than 255"));
    ferry_error_free(err);
    err = NULL;

    assert_null(ferry__ram_block_new("z", 0, &err));
    assert_non_null(strstr(ferry_error_msg(err), "'z'"));
    ferry_error_free(err);
    err = NULL;

    assert_null(ferry__ram_block_new("huge", UINT64_MAX - 5, &err));
    assert_non_null(strstr(ferry_error_msg(err), "too large"));
    ferry_error_free(err);

    /* Exactly 255 bytes is fine. */
    name[FERRY_RAM_NAME_MAX] = '\0';
    FerryRamBlock *b = ferry__ram_block_new(name, 1, NULL);
    assert_non_null(b);
    assert_string_equal(ferry_ram_block_name(b), name);
    ferry__ram_block_free(b);
    ferry__ram_block_free(NULL);
}

static void test_new_rounding_and_accessors(void **state)
{
    size_t ps = ferry_ram_page_size();
    assert_true(ps >= 4096 && (ps & (ps - 1)) == 0);

    FerryRamBlock *b = ferry__ram_block_new("ram0", 3 * ps + 1, NULL);
    assert_non_null(b);
    assert_int_equal(ferry_ram_block_size(b), 4 * ps);
    assert_int_equal(b->npages, 4);
    assert_ptr_equal(ferry_ram_block_host(b), b->host);
    assert_int_equal((uintptr_t)b->host % ps, 0);
    assert_string_equal(ferry_ram_block_name(b), "ram0");
    assert_true(ferry__buffer_is_zero(b->host, b->size));
    assert_int_equal(ferry__bitmap_count(b->explicit_dirty, b->npages), 0);
    memset(b->host, 0x5a, b->size); /* the whole rounded size is usable */
    ferry__ram_block_free(b);
}

static void test_present_pages(void **state)
{
    size_t ps = ferry_ram_page_size();
    size_t n = 300;
    FerryRamBlock *b = ferry__ram_block_new("present", n * ps, NULL);
    assert_non_null(b);
    unsigned long *map = ferry__bitmap_new(n);

    ferry__ram_block_present_pages(b, map);
    size_t fresh = ferry__bitmap_count(map, n);
    if (fresh == n) {
        /* The fallback (no PAGEMAP_SCAN) reports everything, which is correct but says nothing more. */
        print_message("PAGEMAP_SCAN unavailable: present_pages falls back to all pages\n");
        free(map);
        ferry__ram_block_free(b);
        skip();
    }
    assert_int_equal(fresh, 0);

    static const size_t touched[] = {0, 1, 2, 63, 64, 65, 150, 298, 299};
    for (size_t i = 0; i < FERRY_ARRAY_SIZE(touched); i++) {
        b->host[touched[i] * ps + 17] = 1;
    }
    ferry__ram_block_present_pages(b, map);
    assert_int_equal(ferry__bitmap_count(map, n), FERRY_ARRAY_SIZE(touched));
    for (size_t i = 0; i < FERRY_ARRAY_SIZE(touched); i++) {
        assert_true(ferry__bitmap_test(map, touched[i]));
    }

    /* The bitmap is ORed into, not overwritten. */
    ferry__bitmap_zero(map, n);
    ferry__bitmap_set(map, 100);
    ferry__ram_block_present_pages(b, map);
    assert_int_equal(ferry__bitmap_count(map, n), FERRY_ARRAY_SIZE(touched) + 1);

    free(map);
    ferry__ram_block_free(b);
}

static void test_populate_and_discard(void **state)
{
    size_t ps = ferry_ram_page_size();
    size_t n = 256;
    FerryRamBlock *b = ferry__ram_block_new("pop", n * ps, NULL);
    assert_non_null(b);
    unsigned long *map = ferry__bitmap_new(n);

    b->host[5 * ps] = 0x42;
    FerryError *err = NULL;
    assert_true(ferry__ram_block_populate(b, &err));
    assert_null(err);
    assert_int_equal(b->host[5 * ps], 0x42); /* populate keeps content */
    assert_true(ferry__buffer_is_zero(b->host + 6 * ps, (n - 6) * ps));
    ferry__ram_block_present_pages(b, map);
    assert_int_equal(ferry__bitmap_count(map, n), n);

    memset(b->host, 0x77, b->size);
    ferry__ram_block_discard(b);
    assert_true(ferry__buffer_is_zero(b->host, b->size));
    ferry__bitmap_zero(map, n);
    ferry__ram_block_present_pages(b, map);
    size_t after = ferry__bitmap_count(map, n);
    assert_true(after == 0 || after == n); /* 0 with PAGEMAP_SCAN, all pages with the fallback */

    free(map);
    ferry__ram_block_free(b);
}

/* prealloc with threads (QEMU's prealloc-threads): every page populated, content kept, odd sizes and more threads
 * than huge pages split right, bad counts refused. */
static void test_prealloc_threads(void **state)
{
    size_t ps = ferry_ram_page_size();
    size_t sizes[] = { 256 * ps, (5u << 20) + 3 * ps }; /* under one 2 MiB part; parts that end mid-page-run */
    unsigned threads[] = { 1, 2, 3, 64 };
    FerryError *err = NULL;

    for (size_t i = 0; i < 2; i++) {
        for (size_t k = 0; k < 4; k++) {
            size_t n = sizes[i] / ps;
            FerryRamBlock *b = ferry__ram_block_new("pre", sizes[i], NULL);
            assert_non_null(b);
            b->host[(n - 1) * ps] = 0x42;
            assert_true(ferry_ram_block_prealloc_threads(b, threads[k], &err));
            assert_null(err);
            assert_int_equal(b->host[(n - 1) * ps], 0x42);
            assert_true(ferry__buffer_is_zero(b->host, (n - 1) * ps));
            unsigned long *map = ferry__bitmap_new(n);
            ferry__ram_block_present_pages(b, map);
            assert_int_equal(ferry__bitmap_count(map, n), n);
            free(map);
            ferry__ram_block_free(b);
        }
    }
    FerryRamBlock *b = ferry__ram_block_new("pre", ps, NULL);
    assert_false(ferry_ram_block_prealloc_threads(b, 0, &err));
    assert_non_null(strstr(ferry_error_msg(err), "0 prealloc threads"));
    ferry_error_free(err);
    err = NULL;
    assert_false(ferry_ram_block_prealloc_threads(b, FERRY_PREALLOC_THREADS_MAX + 1, &err));
    ferry_error_free(err);
    ferry__ram_block_free(b);
}

static void test_populate_range(void **state)
{
    size_t ps = ferry_ram_page_size();
    size_t n = 64;
    FerryRamBlock *b = ferry__ram_block_new("range", n * ps, NULL);
    assert_non_null(b);
    unsigned long *map = ferry__bitmap_new(n);
    ferry__ram_block_present_pages(b, map);
    if (ferry__bitmap_count(map, n) == n) {
        print_message("PAGEMAP_SCAN unavailable: cannot see which pages were populated\n");
        free(map);
        ferry__ram_block_free(b);
        skip();
    }

    b->host[11 * ps] = 7;
    ferry__ram_block_populate_range(b, 10, 5);     /* pages 10..14 */
    ferry__ram_block_populate_range(b, 60, 1000);  /* clamped: 60..63 */
    ferry__ram_block_populate_range(b, 64, 1);     /* past the end: nothing */
    ferry__ram_block_populate_range(b, 0, 0);      /* empty: nothing */
    ferry__ram_block_present_pages(b, map);
    assert_int_equal(ferry__bitmap_count(map, n), 9);
    for (size_t p = 10; p < 15; p++) {
        assert_true(ferry__bitmap_test(map, p));
    }
    for (size_t p = 60; p < 64; p++) {
        assert_true(ferry__bitmap_test(map, p));
    }
    assert_int_equal(b->host[11 * ps], 7);
    assert_true(ferry__buffer_is_zero(b->host + 12 * ps, 3 * ps));
    free(map);
    ferry__ram_block_free(b);
}

static void test_mark_dirty_clamp(void **state)
{
    size_t ps = ferry_ram_page_size();
    size_t n = 10;
    FerryRamBlock *b = ferry__ram_block_new("marks", n * ps, NULL);
    assert_non_null(b);

    ferry_ram_mark_dirty(b, 0, 0);                /* empty */
    ferry_ram_mark_dirty(b, n * ps, 100);         /* past the end */
    ferry_ram_mark_dirty(b, UINT64_MAX, UINT64_MAX);
    ferry_ram_mark_dirty(NULL, 0, 1);
    assert_int_equal(ferry__bitmap_count(b->explicit_dirty, n), 0);

    ferry_ram_mark_dirty(b, ps - 1, 2); /* straddles pages 0 and 1 */
    assert_int_equal(ferry__bitmap_count(b->explicit_dirty, n), 2);
    assert_true(ferry__bitmap_test(b->explicit_dirty, 0));
    assert_true(ferry__bitmap_test(b->explicit_dirty, 1));

    ferry_ram_mark_dirty(b, 4 * ps, ps); /* exactly page 4 */
    assert_int_equal(ferry__bitmap_count(b->explicit_dirty, n), 3);
    assert_true(ferry__bitmap_test(b->explicit_dirty, 4));

    ferry_ram_mark_dirty(b, 8 * ps + 5, UINT64_MAX); /* clamped to the end, no overflow */
    assert_int_equal(ferry__bitmap_count(b->explicit_dirty, n), 5);
    assert_true(ferry__bitmap_test(b->explicit_dirty, 8));
    assert_true(ferry__bitmap_test(b->explicit_dirty, 9));
    ferry__ram_block_free(b);
}

/* A temporary file of @npages pages, page i filled with byte (i + 1) except the pages in @zero_every (every
 * that many pages, 0 = none), which stay zero; the path goes to @path (PATH_MAX). Returns the open fd. */
static int make_file(char *path, size_t npages, size_t zero_every)
{
    size_t ps = ferry_ram_page_size();
    snprintf(path, PATH_MAX, "/tmp/ferry-test-ramblock-XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    uint8_t *page = malloc(ps);
    assert_non_null(page);
    for (size_t i = 0; i < npages; i++) {
        memset(page, zero_every && i % zero_every == 0 ? 0 : (int)(i + 1), ps);
        assert_int_equal(pwrite(fd, page, ps, (off_t)(i * ps)), (ssize_t)ps);
    }
    free(page);
    return fd;
}

/* The point of file blocks for an outgoing migration: none of their pages is populated before it is read, yet
 * every one holds the file's data, so present_pages must report them all (an anonymous block of the same size
 * reports none, which is what makes the first pass skip never-touched RAM). */
static void test_file_present_pages(void **state)
{
    size_t ps = ferry_ram_page_size();
    size_t n = 40;
    char path[PATH_MAX];
    int fd = make_file(path, n, 4);
    FerryError *err = NULL;
    FerryRamBlock *f = ferry__ram_block_new_file("file", n * ps, path, 0, false, &err);
    assert_null(err);
    assert_non_null(f);
    assert_true(f->file);
    assert_false(f->shared);
    assert_false(ferry_ram_block_shared(f));
    assert_int_equal(f->fd, -1);

    unsigned long *map = ferry__bitmap_new(n);
    ferry__ram_block_present_pages(f, map);
    assert_int_equal(ferry__bitmap_count(map, n), n);

    /* A sparse file: only the pages over its data count (a hole reads as zero, like untouched memory), plus a
     * page this process wrote over a hole (its private copy). */
    char spath[PATH_MAX];
    snprintf(spath, sizeof(spath), "/tmp/ferry-test-sparse-XXXXXX");
    int sfd = mkstemp(spath);
    assert_true(sfd >= 0);
    assert_int_equal(ftruncate(sfd, (off_t)(n * ps)), 0);
    uint8_t *page = malloc(ps);
    memset(page, 7, ps);
    assert_int_equal(pwrite(sfd, page, ps, (off_t)(3 * ps)), (ssize_t)ps);
    assert_int_equal(pwrite(sfd, page, 10, (off_t)(20 * ps + 100)), 10); /* part of page 20 */
    free(page);
    FerryRamBlock *sp = ferry__ram_block_new_file("sparse", n * ps, spath, 0, false, &err);
    assert_non_null(sp);
    sp->host[30 * ps] = 1; /* a private copy over a hole */
    ferry__bitmap_zero(map, n);
    ferry__ram_block_present_pages(sp, map);
    size_t got = ferry__bitmap_count(map, n);
    if (got != n) { /* n only where the file system cannot tell holes from data */
        assert_true(ferry__bitmap_test(map, 3));
        assert_true(ferry__bitmap_test(map, 20));
        assert_true(ferry__bitmap_test(map, 30));
        assert_int_equal(got, 3);
    }
    /* A slice at an offset counts its own pages: pages 2..9 of the file, of which page 3 is data. */
    FerryRamBlock *slice = ferry__ram_block_new_file("slice", 8 * ps, spath, 2 * ps, false, &err);
    assert_non_null(slice);
    ferry__bitmap_zero(map, n);
    ferry__ram_block_present_pages(slice, map);
    if (got != n) {
        assert_int_equal(ferry__bitmap_count(map, 8), 1);
        assert_true(ferry__bitmap_test(map, 1));
    }
    ferry__ram_block_free(slice);
    ferry__ram_block_free(sp);
    close(sfd);
    unlink(spath);

    FerryRamBlock *anon = ferry__ram_block_new("anon", n * ps, NULL);
    assert_non_null(anon);
    ferry__bitmap_zero(map, n);
    ferry__ram_block_present_pages(anon, map);
    size_t anon_present = ferry__bitmap_count(map, n);
    assert_true(anon_present == 0 || anon_present == n); /* n only with the no-PAGEMAP_SCAN fallback */

    /* Present and right: the content is the file's, its zero pages are zero (and cheap for zero detection). */
    for (size_t i = 0; i < n; i++) {
        if (i % 4 == 0) {
            assert_true(ferry__buffer_is_zero(f->host + i * ps, ps));
        } else {
            assert_int_equal(f->host[i * ps], (uint8_t)(i + 1));
            assert_int_equal(f->host[i * ps + ps - 1], (uint8_t)(i + 1));
        }
    }
    free(map);
    ferry__ram_block_free(anon);
    ferry__ram_block_free(f);
    close(fd);
    unlink(path);
}

/* Slices at an offset, private mappings that never write the file, shared ones that do, and discard. */
static void test_file_slices_share_discard(void **state)
{
    size_t ps = ferry_ram_page_size();
    size_t n = 16;
    char path[PATH_MAX];
    int fd = make_file(path, n, 0);

    FerryRamBlock *lo = ferry__ram_block_new_file("lo", 8 * ps, path, 0, false, NULL);
    FerryRamBlock *hi = ferry__ram_block_new_file("hi", 8 * ps, path, 8 * ps, true, NULL);
    assert_non_null(lo);
    assert_non_null(hi);
    assert_int_equal(lo->host[0], 1);
    assert_int_equal(hi->host[0], 9); /* page 8 of the file */
    assert_int_equal(hi->host[7 * ps], 16);

    uint8_t byte = 0;
    lo->host[3 * ps] = 0xee; /* private: a copy is written */
    assert_int_equal(pread(fd, &byte, 1, (off_t)(3 * ps)), 1);
    assert_int_equal(byte, 4);
    hi->host[2 * ps] = 0xdd; /* shared: the file is written */
    assert_int_equal(pread(fd, &byte, 1, (off_t)(10 * ps)), 1);
    assert_int_equal(byte, 0xdd);

    /* Discard keeps its promise (RAM reads as zero) although dropping file pages would bring the file back. */
    ferry__ram_block_discard(lo);
    assert_true(ferry__buffer_is_zero(lo->host, lo->size));
    assert_int_equal(pread(fd, &byte, 1, (off_t)(3 * ps)), 1);
    assert_int_equal(byte, 4); /* and a private block still never writes the file */

    ferry__ram_block_free(lo);
    ferry__ram_block_free(hi);
    close(fd);
    unlink(path);
}

static void expect_file_error(const char *path, uint64_t size, uint64_t offset, const char *words)
{
    FerryError *err = NULL;
    assert_null(ferry__ram_block_new_file("bad", size, path, offset, false, &err));
    assert_non_null(err);
    if (!strstr(ferry_error_msg(err), words)) {
        fail_msg("error for %s size %llu offset %llu is '%s', expected it to contain '%s'", path ? path : "NULL",
                 (unsigned long long)size, (unsigned long long)offset, ferry_error_msg(err), words);
    }
    ferry_error_free(err);
}

static void test_file_errors(void **state)
{
    size_t ps = ferry_ram_page_size();
    char path[PATH_MAX];
    int fd = make_file(path, 4, 0);

    expect_file_error(NULL, ps, 0, "mem-path is required");
    expect_file_error("", ps, 0, "mem-path is required");
    expect_file_error(path, 5 * ps, 0, "too small");
    expect_file_error(path, 2 * ps, 3 * ps, "too small");
    expect_file_error(path, ps, 100 * ps, "too small");
    expect_file_error(path, 3 * ps + 1, ps, "too small"); /* rounded up to 4 pages, only 3 left */
    expect_file_error(path, ps, 100, "not a multiple");
    expect_file_error("/tmp", ps, 0, "not a regular file");
    expect_file_error("/nonexistent/ferry-file", ps, 0, "opening /nonexistent/ferry-file");
    expect_file_error(path, 0, 0, "must not be zero");

    /* Exactly the file's size is fine. */
    FerryRamBlock *b = ferry__ram_block_new_file("whole", 4 * ps, path, 0, false, NULL);
    assert_non_null(b);
    ferry__ram_block_free(b);
    close(fd);
    unlink(path);
}

#define MARK_THREADS 4
#define MARK_PAGES 4096

typedef struct MarkArg {
    FerryRamBlock *b;
    unsigned id;
} MarkArg;

static void *mark_thread(void *opaque)
{
    MarkArg *a = opaque;
    size_t ps = ferry_ram_page_size();
    /* Each thread marks the pages congruent to its id, so every word of the bitmap is hit by all threads. */
    for (size_t p = a->id; p < MARK_PAGES; p += MARK_THREADS) {
        ferry_ram_mark_dirty(a->b, p * ps + (p % ps), 1);
    }
    return NULL;
}

static void test_mark_dirty_threads(void **state)
{
    size_t ps = ferry_ram_page_size();
    FerryRamBlock *b = ferry__ram_block_new("threads", MARK_PAGES * ps, NULL);
    assert_non_null(b);
    for (int round = 0; round < 20; round++) {
        pthread_t th[MARK_THREADS];
        MarkArg args[MARK_THREADS];
        ferry__bitmap_zero(b->explicit_dirty, MARK_PAGES);
        for (unsigned i = 0; i < MARK_THREADS; i++) {
            args[i] = (MarkArg){.b = b, .id = i};
            assert_int_equal(pthread_create(&th[i], NULL, mark_thread, &args[i]), 0);
        }
        for (unsigned i = 0; i < MARK_THREADS; i++) {
            pthread_join(th[i], NULL);
        }
        assert_int_equal(ferry__bitmap_count(b->explicit_dirty, MARK_PAGES), MARK_PAGES);
    }
    ferry__ram_block_free(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_new_checks),
        cmocka_unit_test(test_new_rounding_and_accessors),
        cmocka_unit_test(test_present_pages),
        cmocka_unit_test(test_populate_and_discard),
        cmocka_unit_test(test_populate_range),
        cmocka_unit_test(test_prealloc_threads),
        cmocka_unit_test(test_mark_dirty_clamp),
        cmocka_unit_test(test_mark_dirty_threads),
        cmocka_unit_test(test_file_present_pages),
        cmocka_unit_test(test_file_slices_share_discard),
        cmocka_unit_test(test_file_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
