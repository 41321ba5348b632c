/*
 * Unit tests of the background snapshot's write protection (ram/snapshot-wp.c), checked the way a snapshot uses
 * it: a writer thread overwrites RAM in random order while the test thread, as the saver, walks claim/save/release
 * into a separate buffer and the fault thread saves through the callback into the same buffer; at the end the
 * buffer must equal RAM as it was at start, every page saved exactly once, and RAM must hold the writer's last
 * writes. On an anonymous block and on a shared memfd, with the saver starting late so that the writer waits on
 * faults; pages not present at start (never saved, never waited on); a write from the kernel (read(2) into a
 * protected page); a failing callback (the writer goes on, failed() is true, stop is clean); and a stop in the
 * middle (every page writable again). Skips with the reason where the kernel lacks userfaultfd write-protect.
 * A hugetlb block (whole huge pages) runs where 2 MiB huge pages can be reserved (root), else skips.
 */
#include <inttypes.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "ram/ram.h"
#include "ram/snapshot-wp.h"
#include "ram/uffd-compat.h"
#include "test-helpers.h"
#include "util/util.h"

/* The userfaultfd features the kernel offers, or skip the test saying why there are none. */
static uint64_t features_or_skip(void)
{
    FerryError *err = NULL;
    int fd = ferry__userfaultfd_open(0, &err);
    if (fd < 0) {
        print_message("skipping: no userfaultfd serving kernel-mode faults: %s\n", ferry_error_msg(err));
        ferry_error_free(err);
        skip();
    }
    struct uffdio_api api = {.api = UFFD_API, .features = 0};
    int r = ioctl(fd, UFFDIO_API, &api);
    close(fd);
    if (r != 0) {
        print_message("skipping: UFFDIO_API failed\n");
        skip();
    }
    if (!(api.features & UFFD_FEATURE_PAGEFAULT_FLAG_WP)) {
        print_message("skipping: userfaultfd lacks write-protect (UFFD_FEATURE_PAGEFAULT_FLAG_WP)\n");
        skip();
    }
    return api.features;
}

/* The byte that fills page @p in round @round (0: before start). Never 0, so a page left unsaved shows. */
static uint8_t pattern(uint64_t p, unsigned round)
{
    return (uint8_t)(1 + (p * 7 + round * 101) % 251);
}

typedef struct Snap {
    FerryRamBlock *b;
    uint8_t *buf;        /* the snapshot: npages pages, zero where nothing was saved */
    unsigned *saved;     /* times each page was saved (atomic) */
    bool fail_callback;  /* the callback fails */
    unsigned callbacks;  /* atomic */
} Snap;

static void save_into(Snap *s, uint64_t first, uint64_t n)
{
    size_t ps = ferry_ram_page_size();
    memcpy(s->buf + first * ps, s->b->host + first * ps, n * ps);
    for (uint64_t p = first; p < first + n; p++) {
        __atomic_fetch_add(&s->saved[p], 1, __ATOMIC_RELAXED);
    }
}

static bool save_cb(void *opaque, size_t bi, FerryRamBlock *b, uint64_t first, uint64_t n)
{
    Snap *s = opaque;
    assert_int_equal(bi, 0);
    assert_ptr_equal(b, s->b);
    __atomic_fetch_add(&s->callbacks, 1, __ATOMIC_RELAXED);
    if (s->fail_callback) {
        return false;
    }
    save_into(s, first, n);
    return true;
}

/* The saver's walk over the whole block: what the migration thread does. */
static void saver_walk(FerryWpSnapshot *w, Snap *s, uint64_t max)
{
    for (uint64_t p = ferry__wp_snapshot_next(w, 0, 0); p < s->b->npages;) {
        uint64_t k = ferry__wp_snapshot_claim(w, 0, p, max);
        if (k == 0) {
            p = ferry__wp_snapshot_next(w, 0, p + 1);
            continue;
        }
        save_into(s, p, k);
        ferry__wp_snapshot_release(w, 0, p, k);
        p = ferry__wp_snapshot_next(w, 0, p + k);
    }
}

typedef struct Writer {
    FerryRamBlock *b;
    uint64_t *order; /* pages to write, in this order */
    uint64_t n;
    unsigned rounds;
    bool done; /* atomic */
} Writer;

static void *writer_thread(void *opaque)
{
    Writer *wr = opaque;
    size_t ps = ferry_ram_page_size();
    for (unsigned r = 1; r <= wr->rounds; r++) {
        for (uint64_t i = 0; i < wr->n; i++) {
            uint64_t p = wr->order[i];
            memset(wr->b->host + p * ps, pattern(p, r), ps);
            if (i % 64 == 63) {
                usleep(100); /* let the saver race the writer rather than find everything saved */
            }
        }
    }
    __atomic_store_n(&wr->done, true, __ATOMIC_RELEASE);
    return NULL;
}

static uint64_t *shuffled(uint64_t n, unsigned seed)
{
    uint64_t *o = ferry__xmalloc(n * sizeof(*o));
    for (uint64_t i = 0; i < n; i++) {
        o[i] = i;
    }
    srand(seed);
    for (uint64_t i = n - 1; i > 0; i--) {
        uint64_t j = (uint64_t)rand() % (i + 1), t = o[i];
        o[i] = o[j];
        o[j] = t;
    }
    return o;
}

/* Wait up to @ms for @flag; false if it never came. */
static bool wait_flag(bool *flag, int ms)
{
    for (int i = 0; i < ms; i++) {
        if (__atomic_load_n(flag, __ATOMIC_ACQUIRE)) {
            return true;
        }
        usleep(1000);
    }
    return __atomic_load_n(flag, __ATOMIC_ACQUIRE);
}

#define NPAGES 4096

/* Test (1)/(3): the race between writer, fault thread and saver over @b. */
static void race(FerryRamBlock *b)
{
    size_t ps = ferry_ram_page_size();
    uint64_t n = b->npages;
    for (uint64_t p = 0; p < n; p++) {
        memset(b->host + p * ps, pattern(p, 0), ps);
    }
    Snap s = {.b = b, .buf = ferry__xcalloc(n, ps), .saved = ferry__xcalloc(n, sizeof(unsigned))};
    FerryError *err = NULL;
    FerryWpSnapshot *w = ferry__wp_snapshot_start(&b, 1, save_cb, &s, &err);
    if (!w) {
        print_error("start: %s\n", ferry_error_msg(err));
        fail();
    }
    assert_int_equal(ferry__wp_snapshot_total(w), n);
    assert_int_equal(ferry__wp_snapshot_unit(w, 0), 1);

    Writer wr = {.b = b, .order = shuffled(n, 42), .n = n, .rounds = 2};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, writer_thread, &wr), 0);
    usleep(20 * 1000); /* the writer runs ahead: its first writes must wait for the fault thread */
    saver_walk(w, &s, 32);
    assert_true(wait_flag(&wr.done, 30000));
    pthread_join(th, NULL);

    assert_false(ferry__wp_snapshot_failed(w));
    assert_null(ferry__wp_snapshot_failure(w));
    uint64_t faults = ferry__wp_snapshot_faults(w);
    print_message("%" PRIu64 " of %" PRIu64 " pages saved by the fault thread\n", faults, n);
    assert_true(faults > 0);
    assert_true(faults < n); /* and the saver's walk saved some too */
    assert_int_equal(ferry__wp_snapshot_next(w, 0, 0), n);
    ferry__wp_snapshot_stop(w);

    for (uint64_t p = 0; p < n; p++) {
        if (s.saved[p] != 1) {
            print_error("page %" PRIu64 " saved %u times\n", p, s.saved[p]);
            fail();
        }
        for (size_t i = 0; i < ps; i++) {
            if (s.buf[p * ps + i] != pattern(p, 0) || b->host[p * ps + i] != pattern(p, 2)) {
                print_error("page %" PRIu64 " byte %zu: snapshot %u (want %u), RAM %u (want %u)\n", p, i,
                            s.buf[p * ps + i], pattern(p, 0), b->host[p * ps + i], pattern(p, 2));
                fail();
            }
        }
    }
    free(wr.order);
    free(s.buf);
    free(s.saved);
}

static void test_race_anonymous(void **state)
{
    features_or_skip();
    FerryRamBlock *b = ferry__ram_block_new("ram", NPAGES * ferry_ram_page_size(), NULL);
    assert_non_null(b);
    race(b);
    ferry__ram_block_free(b);
}

static void test_race_memfd(void **state)
{
    uint64_t f = features_or_skip();
    if (!(f & UFFD_FEATURE_WP_HUGETLBFS_SHMEM)) {
        print_message("skipping: userfaultfd lacks UFFD_FEATURE_WP_HUGETLBFS_SHMEM (Linux 6.1+)\n");
        skip();
    }
    FerryRamBlock *b = ferry__ram_block_new_memfd("ram", NPAGES * ferry_ram_page_size(), true, NULL);
    assert_non_null(b);
    race(b);
    ferry__ram_block_free(b);
}

/* (2) Pages not present at start: never protected, never saved, not in the total; writing them does not wait. */
static void test_not_present(void **state)
{
    features_or_skip();
    size_t ps = ferry_ram_page_size();
    uint64_t n = 256;
    FerryRamBlock *b = ferry__ram_block_new("ram", n * ps, NULL);
    assert_non_null(b);
    for (uint64_t p = 0; p < n; p += 2) {
        memset(b->host + p * ps, pattern(p, 0), ps);
    }
    Snap s = {.b = b, .buf = ferry__xcalloc(n, ps), .saved = ferry__xcalloc(n, sizeof(unsigned))};
    FerryWpSnapshot *w = ferry__wp_snapshot_start(&b, 1, save_cb, &s, NULL);
    assert_non_null(w);
    assert_int_equal(ferry__wp_snapshot_total(w), n / 2);
    assert_int_equal(ferry__wp_snapshot_next(w, 0, 1), 2);
    assert_int_equal(ferry__wp_snapshot_claim(w, 0, 1, 8), 0);
    assert_int_equal(ferry__wp_snapshot_claim(w, 0, 0, 8), 1); /* stops at the first page not to save */
    save_into(&s, 0, 1);
    ferry__wp_snapshot_release(w, 0, 0, 1);
    assert_int_equal(ferry__wp_snapshot_claim(w, 0, 0, 8), 0); /* saved already */

    for (uint64_t p = 1; p < n; p += 2) {
        memset(b->host + p * ps, 0xee, ps);
    }
    assert_int_equal(ferry__wp_snapshot_faults(w), 0);
    assert_int_equal(__atomic_load_n(&s.callbacks, __ATOMIC_RELAXED), 0);

    saver_walk(w, &s, 5);
    ferry__wp_snapshot_stop(w);
    for (uint64_t p = 0; p < n; p++) {
        assert_int_equal(s.saved[p], p % 2 == 0);
        assert_int_equal(s.buf[p * ps + ps / 2], p % 2 == 0 ? pattern(p, 0) : 0);
    }
    free(s.buf);
    free(s.saved);
    ferry__ram_block_free(b);
}

/* A write by the kernel on our behalf: read(2) from a pipe into a protected page waits for the fault thread like a
 * user-mode write (the userfaultfd serves kernel-mode faults). */
static void test_kernel_write(void **state)
{
    features_or_skip();
    size_t ps = ferry_ram_page_size();
    uint64_t n = 64;
    FerryRamBlock *b = ferry__ram_block_new("ram", n * ps, NULL);
    assert_non_null(b);
    memset(b->host, 0x5a, n * ps);
    Snap s = {.b = b, .buf = ferry__xcalloc(n, ps), .saved = ferry__xcalloc(n, sizeof(unsigned))};
    FerryWpSnapshot *w = ferry__wp_snapshot_start(&b, 1, save_cb, &s, NULL);
    assert_non_null(w);
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    char msg[100];
    memset(msg, 0xa5, sizeof(msg));
    assert_int_equal(write(fds[1], msg, sizeof(msg)), (ssize_t)sizeof(msg));
    assert_int_equal(read(fds[0], b->host + 37 * ps + 10, sizeof(msg)), (ssize_t)sizeof(msg));
    close(fds[0]);
    close(fds[1]);
    assert_true(ferry__wp_snapshot_faults(w) > 0);
    assert_int_equal(s.saved[37], 1);
    saver_walk(w, &s, 16);
    ferry__wp_snapshot_stop(w);
    for (uint64_t p = 0; p < n; p++) {
        assert_int_equal(s.saved[p], 1);
    }
    for (size_t i = 0; i < n * ps; i++) {
        assert_int_equal(s.buf[i], 0x5a);
    }
    assert_int_equal(b->host[37 * ps + 10], 0xa5);
    assert_int_equal(b->host[37 * ps + 9], 0x5a);
    free(s.buf);
    free(s.saved);
    ferry__ram_block_free(b);
}

/* (4) A failing callback: the writer is not left waiting, failed() turns true, nothing more is claimed, stop is
 * clean and leaves every page writable. */
static void test_callback_fails(void **state)
{
    features_or_skip();
    size_t ps = ferry_ram_page_size();
    uint64_t n = 512;
    FerryRamBlock *b = ferry__ram_block_new("ram", n * ps, NULL);
    assert_non_null(b);
    memset(b->host, 1, n * ps);
    Snap s = {.b = b, .buf = ferry__xcalloc(n, ps), .saved = ferry__xcalloc(n, sizeof(unsigned)),
              .fail_callback = true};
    FerryWpSnapshot *w = ferry__wp_snapshot_start(&b, 1, save_cb, &s, NULL);
    assert_non_null(w);
    assert_false(ferry__wp_snapshot_failed(w));

    Writer wr = {.b = b, .order = shuffled(n, 7), .n = n, .rounds = 1};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, writer_thread, &wr), 0);
    assert_true(wait_flag(&wr.done, 10000)); /* a writer still waiting would never get here */
    pthread_join(th, NULL);
    assert_true(ferry__wp_snapshot_failed(w));
    assert_null(ferry__wp_snapshot_failure(w)); /* the callback's failure, not the module's */
    assert_true(__atomic_load_n(&s.callbacks, __ATOMIC_RELAXED) >= 1);
    assert_int_equal(ferry__wp_snapshot_claim(w, 0, 0, 8), 0);
    assert_int_equal(ferry__wp_snapshot_next(w, 0, 0), n);
    ferry__wp_snapshot_stop(w);
    for (uint64_t p = 0; p < n; p++) {
        assert_int_equal(b->host[p * ps], pattern(p, 1));
    }
    free(wr.order);
    free(s.buf);
    free(s.saved);
    ferry__ram_block_free(b);
}

/* (5) Stop in the middle (a cancel), with pages still protected, some claimed but not released, and a writer
 * running into protected pages meanwhile: the writer completes, and afterwards every page is writable without
 * anyone serving faults (no callback after stop). */
static void test_stop_midway(void **state)
{
    features_or_skip();
    size_t ps = ferry_ram_page_size();
    uint64_t n = 2048;
    FerryRamBlock *b = ferry__ram_block_new("ram", n * ps, NULL);
    assert_non_null(b);
    memset(b->host, 3, n * ps);
    Snap s = {.b = b, .buf = ferry__xcalloc(n, ps), .saved = ferry__xcalloc(n, sizeof(unsigned))};
    FerryWpSnapshot *w = ferry__wp_snapshot_start(&b, 1, save_cb, &s, NULL);
    assert_non_null(w);
    assert_int_equal(ferry__wp_snapshot_claim(w, 0, 0, 10), 10);
    ferry__wp_snapshot_release(w, 0, 0, 10);
    assert_int_equal(ferry__wp_snapshot_claim(w, 0, 100, 10), 10); /* never released */

    Writer wr = {.b = b, .order = shuffled(n, 9), .n = n, .rounds = 1};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, writer_thread, &wr), 0);
    usleep(2000);
    ferry__wp_snapshot_stop(w);
    ferry__wp_snapshot_stop(NULL);
    unsigned calls = __atomic_load_n(&s.callbacks, __ATOMIC_RELAXED);
    if (!wait_flag(&wr.done, 10000)) {
        print_error("a writer still waits 10 s after stop: pages were left write-protected\n");
        fail(); /* the writer thread stays blocked; the process exits with the failure */
    }
    pthread_join(th, NULL);

    Writer wr2 = {.b = b, .order = wr.order, .n = n, .rounds = 2};
    assert_int_equal(pthread_create(&th, NULL, writer_thread, &wr2), 0);
    if (!wait_flag(&wr2.done, 10000)) {
        print_error("a writer waits 10 s after stop: pages were left write-protected\n");
        fail();
    }
    pthread_join(th, NULL);
    assert_int_equal(__atomic_load_n(&s.callbacks, __ATOMIC_RELAXED), calls);
    for (uint64_t p = 0; p < n; p++) {
        assert_int_equal(b->host[p * ps + 1], pattern(p, 2));
    }
    free(wr.order);
    free(s.buf);
    free(s.saved);
    ferry__ram_block_free(b);
}

#define HUGE_NR_PATH "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"
#define HUGE_FREE_PATH "/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages"
#define HUGE_PAGES 4

static long huge_old_nr = -1; /* nr_hugepages before setup raised it; -1: not raised */

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

static int huge_setup(void **state)
{
    long nr = read_long(HUGE_NR_PATH), free_pages = read_long(HUGE_FREE_PATH);
    if (nr >= 0 && free_pages >= 0 && free_pages < HUGE_PAGES &&
        write_long(HUGE_NR_PATH, nr + HUGE_PAGES - free_pages)) {
        huge_old_nr = nr;
    }
    return 0;
}

static int huge_teardown(void **state)
{
    if (huge_old_nr >= 0) {
        write_long(HUGE_NR_PATH, huge_old_nr);
        huge_old_nr = -1;
    }
    return 0;
}

/* A hugetlb block: protected, claimed and saved in whole 2 MiB pages; a 4 KiB write saves its whole huge page. */
static void test_hugetlb(void **state)
{
    uint64_t f = features_or_skip();
    if (!(f & UFFD_FEATURE_WP_HUGETLBFS_SHMEM)) {
        print_message("skipping: userfaultfd lacks UFFD_FEATURE_WP_HUGETLBFS_SHMEM (Linux 6.1+)\n");
        skip();
    }
    const uint64_t huge = 2 << 20;
    if (read_long(HUGE_FREE_PATH) < HUGE_PAGES) {
        print_message("skipping: cannot reserve %d huge pages of 2 MiB (" HUGE_NR_PATH ", needs root)\n", HUGE_PAGES);
        skip();
    }
    FerryError *err = NULL;
    FerryRamBlock *b = ferry__ram_block_new_hugetlb("huge", HUGE_PAGES * huge, true, huge, &err);
    if (!b) {
        print_message("skipping: %s\n", ferry_error_msg(err));
        ferry_error_free(err);
        skip();
    }
    size_t ps = ferry_ram_page_size();
    uint64_t n = b->npages, unit = huge / ps;
    /* Huge pages 0, 1 and 3 present; 2 never touched. */
    for (uint64_t p = 0; p < n; p++) {
        if (p / unit != 2) {
            memset(b->host + p * ps, pattern(p, 0), ps);
        }
    }
    Snap s = {.b = b, .buf = ferry__xcalloc(n, ps), .saved = ferry__xcalloc(n, sizeof(unsigned))};
    FerryWpSnapshot *w = ferry__wp_snapshot_start(&b, 1, save_cb, &s, &err);
    if (!w) {
        print_error("start: %s\n", ferry_error_msg(err));
        fail();
    }
    assert_int_equal(ferry__wp_snapshot_unit(w, 0), unit);
    assert_int_equal(ferry__wp_snapshot_total(w), 3 * unit);
    assert_int_equal(ferry__wp_snapshot_claim(w, 0, 1, 16), 0);     /* not a huge page's first */
    assert_int_equal(ferry__wp_snapshot_claim(w, 0, 0, 16), unit);  /* one whole huge page at least */
    assert_int_equal(ferry__wp_snapshot_next(w, 0, 5), unit);
    assert_int_equal(ferry__wp_snapshot_next(w, 0, 2 * unit + 3), 3 * unit);
    save_into(&s, 0, unit);

    /* A write into huge page 3 waits for the fault thread, which saves all of it. */
    Writer wr = {.b = b, .order = ferry__xmalloc(sizeof(uint64_t)), .n = 1, .rounds = 1};
    wr.order[0] = 3 * unit + 7;
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, writer_thread, &wr), 0);
    assert_true(wait_flag(&wr.done, 10000));
    pthread_join(th, NULL);
    assert_int_equal(ferry__wp_snapshot_faults(w), unit);
    assert_int_equal(ferry__wp_snapshot_next(w, 0, 2 * unit), n);

    ferry__wp_snapshot_release(w, 0, 0, unit);
    saver_walk(w, &s, 64);
    assert_false(ferry__wp_snapshot_failed(w));
    ferry__wp_snapshot_stop(w);
    for (uint64_t p = 0; p < n; p++) {
        bool present = p / unit != 2;
        assert_int_equal(s.saved[p], present);
        assert_int_equal(s.buf[p * ps + 9], present ? pattern(p, 0) : 0);
    }
    assert_int_equal(b->host[(3 * unit + 7) * ps], pattern(3 * unit + 7, 1));
    free(wr.order);
    free(s.buf);
    free(s.saved);
    ferry__ram_block_free(b);
}

/* Refusals name the block: an adopted one, and one already registered with the dirty tracker's userfaultfd. */
static void test_refusals(void **state)
{
    features_or_skip();
    size_t ps = ferry_ram_page_size();
    FerryRamBlock *b = ferry__ram_block_new("guest-ram", 16 * ps, NULL);
    assert_non_null(b);
    memset(b->host, 1, 16 * ps);
    FerryError *err = NULL;
    b->adopted = true;
    assert_null(ferry__wp_snapshot_start(&b, 1, save_cb, NULL, &err));
    assert_msg_contains(err, "'guest-ram'");
    assert_msg_contains(err, "cpr-transfer");
    ferry_error_free(err);
    err = NULL;
    b->adopted = false;

    FerryWpSnapshot *w = ferry__wp_snapshot_start(&b, 1, save_cb, NULL, NULL);
    assert_non_null(w);
    assert_null(ferry__wp_snapshot_start(&b, 1, save_cb, NULL, &err)); /* the range has a userfaultfd already */
    assert_msg_contains(err, "'guest-ram'");
    assert_msg_contains(err, "already registered");
    ferry_error_free(err);
    ferry__wp_snapshot_stop(w);
    ferry__ram_block_free(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_race_anonymous),
        cmocka_unit_test(test_race_memfd),
        cmocka_unit_test(test_not_present),
        cmocka_unit_test(test_kernel_write),
        cmocka_unit_test(test_callback_fails),
        cmocka_unit_test(test_stop_midway),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test_setup_teardown(test_hugetlb, huge_setup, huge_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
