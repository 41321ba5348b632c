/*
 * Unit tests of the dirty trackers (ram/tracker.c, ram/tracker-uffd.c): kind names, the explicit and none kinds
 * (explicit marks from several threads while harvesting, nothing lost, nothing invented), and the uffd-wp kind:
 * exact reports for pages written once, first writes to never-populated pages, a large sparse block (only its
 * populated page tables are protected, and writes anywhere are still seen), writes made by the
 * kernel on our behalf (read(2) into a block), and a writer thread racing repeated harvests, checked the way a
 * migration uses the tracker: a shadow copy refreshed from harvested pages must equal the block at the end, and
 * pages the writer never touches must never be reported; transparent huge pages (a 4 KiB write to a protected huge
 * page reports 4 KiB); and the AUTO fallback on memory uffd-wp cannot arm. The uffd-wp tests skip with the probe's
 * reason where the kernel lacks the feature. The host kind (FerryDirtyTrackerOps) is checked with a fake host tracker: its name,
 * start/harvest/stop calls, its bits merged with explicit marks, and a failing start.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cmocka.h>

#include "ram/ram.h"
#include "test-helpers.h"
#include "util/bitmap.h"
#include "util/util.h"

static void skip_without_uffd_wp(void)
{
    FerryError *err = NULL;
    if (!ferry__tracker_uffd_wp_probe(&err)) {
        print_message("skipping: userfaultfd write-protect unavailable: %s\n", ferry_error_msg(err));
        ferry_error_free(err);
        skip();
    }
}

static void test_kind_parse(void **state)
{
    FerryTrackerKind k = FERRY_TRACKER_NONE;
    assert_true(ferry_tracker_kind_parse("auto", &k));
    assert_int_equal(k, FERRY_TRACKER_AUTO);
    assert_true(ferry_tracker_kind_parse("uffd-wp", &k));
    assert_int_equal(k, FERRY_TRACKER_UFFD_WP);
    assert_true(ferry_tracker_kind_parse("explicit", &k));
    assert_int_equal(k, FERRY_TRACKER_EXPLICIT);
    assert_true(ferry_tracker_kind_parse("none", &k));
    assert_int_equal(k, FERRY_TRACKER_NONE);
    k = FERRY_TRACKER_EXPLICIT;
    assert_false(ferry_tracker_kind_parse("uffd", &k));
    assert_false(ferry_tracker_kind_parse("", &k));
    assert_false(ferry_tracker_kind_parse("NONE", &k));
    assert_false(ferry_tracker_kind_parse(NULL, &k));
    assert_int_equal(k, FERRY_TRACKER_EXPLICIT); /* untouched on failure */
}

static void test_none_and_explicit(void **state)
{
    size_t ps = ferry_ram_page_size();
    size_t n = 100;
    FerryRamBlock *b = ferry__ram_block_new("ram", n * ps, NULL);
    FerryRamBlock *other = ferry__ram_block_new("other", ps, NULL);
    assert_non_null(b);
    unsigned long *map = ferry__bitmap_new(n);

    static const FerryTrackerKind kinds[] = {FERRY_TRACKER_NONE, FERRY_TRACKER_EXPLICIT};
    for (size_t k = 0; k < FERRY_ARRAY_SIZE(kinds); k++) {
        ferry_ram_mark_dirty(b, 0, ps); /* before start: dropped, pass 1 sends everything */
        FerryDirtyTracker *t = ferry__tracker_start(kinds[k], &b, 1, NULL);
        assert_non_null(t);
        assert_null(ferry__tracker_note(t));
        assert_string_equal(ferry__tracker_name(t), kinds[k] == FERRY_TRACKER_NONE ? "none" : "explicit");
        assert_int_equal(ferry__tracker_is_none(t), kinds[k] == FERRY_TRACKER_NONE);

        memset(b->host, 1, b->size); /* plain writes are not seen by these kinds */
        ferry__bitmap_zero(map, n);
        assert_true(ferry__tracker_harvest(t, b, map, NULL));
        assert_int_equal(ferry__bitmap_count(map, n), 0);

        ferry_ram_mark_dirty(b, 7 * ps, 1);
        ferry_ram_mark_dirty(b, 99 * ps, ps);
        assert_true(ferry__tracker_harvest(t, b, map, NULL));
        assert_int_equal(ferry__bitmap_count(map, n), 2);
        assert_true(ferry__bitmap_test(map, 7));
        assert_true(ferry__bitmap_test(map, 99));
        /* Harvesting moved the marks: the next harvest is empty. */
        ferry__bitmap_zero(map, n);
        assert_true(ferry__tracker_harvest(t, b, map, NULL));
        assert_int_equal(ferry__bitmap_count(map, n), 0);

        FerryError *err = NULL;
        assert_false(ferry__tracker_harvest(t, other, map, &err));
        assert_non_null(strstr(ferry_error_msg(err), "'other' is not covered"));
        ferry_error_free(err);
        ferry__tracker_stop(t);
    }
    ferry__tracker_stop(NULL);
    free(map);
    ferry__ram_block_free(other);
    ferry__ram_block_free(b);
}

#define MARKERS 3
#define MARK_PAGES 2048
#define MARK_ROUNDS 200

typedef struct Marker {
    FerryRamBlock *b;
    unsigned id;
} Marker;

static void *marker_thread(void *opaque)
{
    Marker *m = opaque;
    size_t ps = ferry_ram_page_size();
    for (int r = 0; r < MARK_ROUNDS; r++) {
        for (size_t p = m->id; p < MARK_PAGES; p += MARKERS * 2) {
            ferry_ram_mark_dirty(m->b, p * ps, 1);
        }
    }
    return NULL;
}

static void test_explicit_threads(void **state)
{
    size_t ps = ferry_ram_page_size();
    FerryRamBlock *b = ferry__ram_block_new("ram", MARK_PAGES * ps, NULL);
    assert_non_null(b);
    FerryDirtyTracker *t = ferry__tracker_start(FERRY_TRACKER_EXPLICIT, &b, 1, NULL);
    assert_non_null(t);
    unsigned long *all = ferry__bitmap_new(MARK_PAGES);

    pthread_t th[MARKERS];
    Marker args[MARKERS];
    for (unsigned i = 0; i < MARKERS; i++) {
        args[i] = (Marker){.b = b, .id = i};
        assert_int_equal(pthread_create(&th[i], NULL, marker_thread, &args[i]), 0);
    }
    /* Harvest while the markers run; each harvest ORs into the union. */
    for (int i = 0; i < 200; i++) {
        assert_true(ferry__tracker_harvest(t, b, all, NULL));
    }
    for (unsigned i = 0; i < MARKERS; i++) {
        pthread_join(th[i], NULL);
    }
    assert_true(ferry__tracker_harvest(t, b, all, NULL));

    /* Marked: pages p with p % (2 * MARKERS) < MARKERS; no other page may appear. */
    for (size_t p = 0; p < MARK_PAGES; p++) {
        bool expected = p % (2 * MARKERS) < MARKERS;
        if (ferry__bitmap_test(all, p) != expected) {
            fail_msg("page %zu: harvested %d, expected %d", p, !expected, expected);
        }
    }
    free(all);
    ferry__tracker_stop(t);
    ferry__ram_block_free(b);
}

static void test_uffd_wp_exact(void **state)
{
    skip_without_uffd_wp();
    size_t ps = ferry_ram_page_size();
    size_t n = 64;
    FerryRamBlock *b = ferry__ram_block_new("ram", n * ps, NULL);
    assert_non_null(b);
    memset(b->host, 0x11, 32 * ps); /* populated before start: pages 0..31 */
    unsigned long *map = ferry__bitmap_new(n);

    FerryError *err = NULL;
    FerryDirtyTracker *t = ferry__tracker_start(FERRY_TRACKER_UFFD_WP, &b, 1, &err);
    assert_null(err);
    assert_non_null(t);
    assert_string_equal(ferry__tracker_name(t), "uffd-wp");
    assert_false(ferry__tracker_is_none(t));

    assert_true(ferry__tracker_harvest(t, b, map, NULL));
    assert_int_equal(ferry__bitmap_count(map, n), 0);

    /* Populated and never-populated pages, a read-only access (page 40), and an explicit mark. */
    b->host[3 * ps] = 1;
    b->host[31 * ps + ps - 1] = 2;
    b->host[33 * ps] = 3;
    b->host[63 * ps + 100] = 4;
    volatile uint8_t sink = b->host[40 * ps];
    (void)sink;
    ferry_ram_mark_dirty(b, 50 * ps, 1);
    assert_true(ferry__tracker_harvest(t, b, map, NULL));
    /* The read of page 40 is not a write; it is reported (once, as a zero page) only if page 40 lies in a page
     * table that held no populated page at start, which the tracker leaves unprotected. */
    uintptr_t pt = (uintptr_t)2 << 20;
    bool own_table = ((uintptr_t)b->host + 40 * ps) / pt != ((uintptr_t)b->host + 31 * ps) / pt;
    assert_int_equal(ferry__bitmap_count(map, n), own_table ? 6 : 5);
    assert_int_equal(ferry__bitmap_test(map, 40), own_table);
    assert_true(ferry__bitmap_test(map, 3));
    assert_true(ferry__bitmap_test(map, 31));
    assert_true(ferry__bitmap_test(map, 33));
    assert_true(ferry__bitmap_test(map, 50));
    assert_true(ferry__bitmap_test(map, 63));

    /* The harvest re-armed those pages: nothing new until they are written again. */
    ferry__bitmap_zero(map, n);
    assert_true(ferry__tracker_harvest(t, b, map, NULL));
    assert_int_equal(ferry__bitmap_count(map, n), 0);
    b->host[3 * ps + 8] = 9;
    assert_true(ferry__tracker_harvest(t, b, map, NULL));
    assert_int_equal(ferry__bitmap_count(map, n), 1);
    assert_true(ferry__bitmap_test(map, 3));

    ferry__tracker_stop(t);
    /* Writers are not blocked after stop. */
    memset(b->host, 0x22, b->size);
    free(map);
    ferry__ram_block_free(b);
}

/* VmPTE of this process in bytes: what its page tables take. */
static uint64_t page_table_bytes(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    assert_non_null(f);
    char line[256];
    uint64_t kib = UINT64_MAX;
    while (fgets(line, sizeof(line), f)) {
        if (strncmp(line, "VmPTE:", 6) == 0) {
            kib = strtoull(line + 6, NULL, 10);
        }
    }
    fclose(f);
    assert_true(kib != UINT64_MAX);
    return kib * 1024;
}

/*
 * A large block with two populated pages: starting the tracker protects their page tables only (it builds none
 * for the rest: a whole-block write-protect would take 2 MiB of page tables per GiB), and writes are still
 * reported exactly: first writes into never-populated page tables, next to the populated pages, and again after
 * a harvest re-armed them; a read of a never-populated page at most once.
 */
static void test_uffd_wp_sparse(void **state)
{
    skip_without_uffd_wp();
    size_t ps = ferry_ram_page_size();
    uint64_t size = 4ULL << 30, n = size / ps;
    FerryRamBlock *b = ferry__ram_block_new("ram", size, NULL);
    assert_non_null(b);
    /* Counted in 4 KiB pages: a transparent huge page would make a first write report its 2 MiB. */
    (void)madvise(b->host, size, MADV_NOHUGEPAGE);
    size_t mid = (size_t)(n / 2), last = (size_t)(n - 1);
    b->host[mid * ps] = 1;
    b->host[last * ps] = 2;
    unsigned long *map = ferry__bitmap_new((size_t)n);

    uint64_t before = page_table_bytes();
    FerryDirtyTracker *t = ferry__tracker_start(FERRY_TRACKER_UFFD_WP, &b, 1, NULL);
    assert_non_null(t);
    assert_true(page_table_bytes() - before < (1 << 20)); /* whole: 8 MiB */
    assert_true(ferry__tracker_harvest(t, b, map, NULL));
    assert_int_equal(ferry__bitmap_count(map, (size_t)n), 0);

    b->host[0] = 3;              /* never populated, an empty page table */
    b->host[(mid + 1) * ps] = 4; /* never populated, in the populated page's table */
    b->host[mid * ps + 1] = 5;   /* populated and protected */
    assert_true(ferry__tracker_harvest(t, b, map, NULL));
    assert_int_equal(ferry__bitmap_count(map, (size_t)n), 3);
    assert_true(ferry__bitmap_test(map, 0));
    assert_true(ferry__bitmap_test(map, mid));
    assert_true(ferry__bitmap_test(map, mid + 1));

    ferry__bitmap_zero(map, (size_t)n);
    assert_true(ferry__tracker_harvest(t, b, map, NULL));
    assert_int_equal(ferry__bitmap_count(map, (size_t)n), 0);
    b->host[8] = 6;
    b->host[last * ps + 8] = 7;
    volatile uint8_t sink = b->host[n / 4 * ps]; /* a read in an empty page table */
    (void)sink;
    assert_true(ferry__tracker_harvest(t, b, map, NULL));
    assert_true(ferry__bitmap_test(map, 0));
    assert_true(ferry__bitmap_test(map, last));
    size_t got = ferry__bitmap_count(map, (size_t)n);
    assert_true(got == 2 || (got == 3 && ferry__bitmap_test(map, n / 4)));
    ferry__bitmap_zero(map, (size_t)n);
    assert_true(ferry__tracker_harvest(t, b, map, NULL));
    assert_int_equal(ferry__bitmap_count(map, (size_t)n), 0);

    ferry__tracker_stop(t);
    free(map);
    ferry__ram_block_free(b);
}

/* AnonHugePages of the mapping that starts at @start, in bytes (0 if it is not found). */
static uint64_t anon_huge_bytes(const void *start)
{
    FILE *f = fopen("/proc/self/smaps", "r");
    char line[256];
    bool in = false;
    uint64_t kb = 0;
    assert_non_null(f);
    while (fgets(line, sizeof(line), f)) {
        unsigned long lo, hi;
        if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2) {
            in = lo == (uintptr_t)start;
        } else if (in && sscanf(line, "AnonHugePages: %lu kB", &lo) == 1) {
            kb = lo;
        }
    }
    fclose(f);
    return kb << 10;
}

/*
 * Transparent huge pages under the uffd-wp tracker (issue 20's question: does a 4 KiB write to a huge page make
 * the source resend 2 MiB?). A huge page that was populated before start is write-protected whole; the first
 * write to it splits it (asynchronous write-protect resolves the fault at 4 KiB) and only the written page is
 * reported. A huge page that appears after start in a granule that held nothing (not armed) is reported whole
 * once, by the harvest that finds it (its pages go as zero pages but one); from then on it is armed and 4 KiB
 * again.
 */
static void test_uffd_wp_thp(void **state)
{
    skip_without_uffd_wp();
    size_t ps = ferry_ram_page_size(), huge = 2u << 20, per = huge / ps;
    uint64_t size = 8 * huge, n = size / ps;
    FerryRamBlock *b = ferry__ram_block_new("ram", size, NULL);
    assert_non_null(b);
    assert_int_equal((uintptr_t)b->host % huge, 0); /* blocks are 2 MiB aligned for this */
    if (madvise(b->host, size, MADV_HUGEPAGE) != 0) {
        print_message("skipping: MADV_HUGEPAGE refused (no transparent huge pages in this kernel)\n");
        ferry__ram_block_free(b);
        skip();
    }
    memset(b->host, 0x5a, 6 * huge); /* huge pages 0-5 populated, 6-7 never */
    uint64_t thp = anon_huge_bytes(b->host);
    if (thp < 2 * huge) {
        print_message("skipping: the kernel gave %llu bytes of huge pages (THP disabled or memory fragmented)\n",
                      (unsigned long long)thp);
        ferry__ram_block_free(b);
        skip();
    }
    unsigned long *map = ferry__bitmap_new((size_t)n);
    FerryDirtyTracker *t = ferry__tracker_start(FERRY_TRACKER_UFFD_WP, &b, 1, NULL);
    assert_non_null(t);
    assert_true(ferry__tracker_harvest(t, b, map, NULL));
    assert_int_equal(ferry__bitmap_count(map, (size_t)n), 0);

    /* 4 KiB writes into protected huge pages: each reports its own page, whether or not the page stayed huge. */
    for (size_t h = 0; h < 6; h++) {
        b->host[(h * per + 5) * ps] = 1;
    }
    b->host[(per + 300) * ps + 17] = 2;
    assert_true(ferry__tracker_harvest(t, b, map, NULL));
    assert_int_equal(ferry__bitmap_count(map, (size_t)n), 7);
    for (size_t h = 0; h < 6; h++) {
        assert_true(ferry__bitmap_test(map, h * per + 5));
    }
    assert_true(ferry__bitmap_test(map, per + 300));
    ferry__bitmap_zero(map, (size_t)n);
    b->host[(2 * per + 6) * ps] = 3;
    assert_true(ferry__tracker_harvest(t, b, map, NULL));
    assert_int_equal(ferry__bitmap_count(map, (size_t)n), 1);
    assert_true(ferry__bitmap_test(map, 2 * per + 6));

    /* A first write where nothing was at start: its huge page (if the kernel makes one) is reported whole once. */
    ferry__bitmap_zero(map, (size_t)n);
    b->host[(7 * per + 9) * ps] = 4;
    assert_true(ferry__tracker_harvest(t, b, map, NULL));
    size_t got = ferry__bitmap_count(map, (size_t)n);
    print_message("huge pages at start: %llu MiB; a first write after start reported %zu pages\n",
                  (unsigned long long)(thp >> 20), got);
    assert_true(got == 1 || got == per);
    assert_true(ferry__bitmap_test(map, 7 * per + 9));
    ferry__bitmap_zero(map, (size_t)n);
    b->host[(7 * per + 10) * ps] = 5;
    assert_true(ferry__tracker_harvest(t, b, map, NULL));
    assert_int_equal(ferry__bitmap_count(map, (size_t)n), 1);
    assert_true(ferry__bitmap_test(map, 7 * per + 10));

    ferry__tracker_stop(t);
    free(map);
    ferry__ram_block_free(b);
}

static void test_uffd_wp_kernel_writes_and_blocks(void **state)
{
    skip_without_uffd_wp();
    size_t ps = ferry_ram_page_size();
    FerryRamBlock *blocks[2] = {
        ferry__ram_block_new("a", 16 * ps, NULL),
        ferry__ram_block_new("b", 16 * ps, NULL),
    };
    assert_non_null(blocks[0]);
    assert_non_null(blocks[1]);
    unsigned long *map = ferry__bitmap_new(16);

    FerryDirtyTracker *t = ferry__tracker_start(FERRY_TRACKER_AUTO, blocks, 2, NULL);
    assert_non_null(t);
    assert_string_equal(ferry__tracker_name(t), "uffd-wp");
    assert_null(ferry__tracker_note(t));

    /* A write by the kernel (copy to user in read(2)) into a never-populated page of block b, straddling into
     * the next page. */
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    char data[64];
    memset(data, 0xab, sizeof(data));
    assert_int_equal(write(fds[1], data, sizeof(data)), sizeof(data));
    assert_int_equal(read(fds[0], blocks[1]->host + 6 * ps - 32, sizeof(data)), sizeof(data));
    close(fds[0]);
    close(fds[1]);

    assert_true(ferry__tracker_harvest(t, blocks[0], map, NULL));
    assert_int_equal(ferry__bitmap_count(map, 16), 0);
    assert_true(ferry__tracker_harvest(t, blocks[1], map, NULL));
    assert_int_equal(ferry__bitmap_count(map, 16), 2);
    assert_true(ferry__bitmap_test(map, 5));
    assert_true(ferry__bitmap_test(map, 6));

    ferry__tracker_stop(t);
    free(map);
    ferry__ram_block_free(blocks[0]);
    ferry__ram_block_free(blocks[1]);
}

/* The race test. Pages [0, WRITE_PAGES) are written by the writer; of the rest, half were populated before the
 * start and half never were, and neither half is touched again. */
#define RACE_PAGES 1024
#define WRITE_PAGES 384
#define MIN_HARVESTS 100
#define MIN_WRITES 100000

typedef struct Race {
    FerryRamBlock *b;
    int harvests; /* atomic: harvests done by the main thread */
    int stop;     /* atomic: set by the writer when it is done */
    int epochs;   /* writer only: distinct harvest completions it saw and wrote after */
} Race;

static void *race_writer(void *opaque)
{
    Race *r = opaque;
    size_t ps = ferry_ram_page_size();
    uint64_t x = 0x9e3779b97f4a7c15ULL; /* fixed seed: the same sequence of writes every run */
    int seen = 0;
    for (long i = 0;; i++) {
        /* Count the harvests this thread saw complete; after each one it writes at least once more, so that
         * write must be reported by a later harvest. */
        int h = __atomic_load_n(&r->harvests, __ATOMIC_ACQUIRE);
        if (h != seen) {
            seen = h;
            r->epochs++;
        }
        if (i >= MIN_WRITES && r->epochs >= MIN_HARVESTS) {
            break;
        }
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        size_t page = (size_t)(x % WRITE_PAGES);
        size_t word = (size_t)((x >> 32) % (ps / 8));
        __atomic_store_n((uint64_t *)(void *)(r->b->host + page * ps) + word, x, __ATOMIC_RELAXED);
    }
    __atomic_store_n(&r->stop, 1, __ATOMIC_RELEASE);
    return NULL;
}

static void copy_dirty(FerryRamBlock *b, uint8_t *shadow, const unsigned long *map)
{
    size_t ps = ferry_ram_page_size();
    for (size_t p = ferry__bitmap_find_next(map, b->npages, 0); p < b->npages;
         p = ferry__bitmap_find_next(map, b->npages, p + 1)) {
        /* Word by word with relaxed atomic loads: the writer may be storing into this page right now. */
        const uint64_t *src = (const uint64_t *)(const void *)(b->host + p * ps);
        uint64_t *dst = (uint64_t *)(void *)(shadow + p * ps);
        for (size_t w = 0; w < ps / 8; w++) {
            dst[w] = __atomic_load_n(&src[w], __ATOMIC_RELAXED);
        }
    }
}

static void test_uffd_wp_race(void **state)
{
    skip_without_uffd_wp();
    size_t ps = ferry_ram_page_size();
    Race r = {.b = ferry__ram_block_new("race", RACE_PAGES * ps, NULL)};
    assert_non_null(r.b);
    size_t populated_end = WRITE_PAGES + (RACE_PAGES - WRITE_PAGES) / 2;
    memset(r.b->host, 0x3c, populated_end * ps);
    uint8_t *shadow = ferry__xmalloc(r.b->size);
    unsigned long *map = ferry__bitmap_new(RACE_PAGES);

    FerryDirtyTracker *t = ferry__tracker_start(FERRY_TRACKER_UFFD_WP, &r.b, 1, NULL);
    assert_non_null(t);
    /* Pass 1: everything. */
    ferry__bitmap_fill(map, RACE_PAGES);
    copy_dirty(r.b, shadow, map);

    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, race_writer, &r), 0);
    size_t reported = 0;
    int nonempty = 0;
    bool last = false;
    while (!last) {
        /* Read the flag before harvesting: once it is set, this harvest sees every write. */
        last = __atomic_load_n(&r.stop, __ATOMIC_ACQUIRE);
        ferry__bitmap_zero(map, RACE_PAGES);
        assert_true(ferry__tracker_harvest(t, r.b, map, NULL));
        size_t stray = ferry__bitmap_find_next(map, RACE_PAGES, WRITE_PAGES);
        if (stray < RACE_PAGES) {
            fail_msg("page %zu reported written, but nothing writes it", stray);
        }
        size_t count = ferry__bitmap_count(map, RACE_PAGES);
        reported += count;
        nonempty += count > 0;
        copy_dirty(r.b, shadow, map);
        __atomic_add_fetch(&r.harvests, 1, __ATOMIC_RELEASE);
    }
    pthread_join(th, NULL);

    /* The writer wrote after each of at least MIN_HARVESTS distinct harvests, so later harvests must report
     * pages. Not one non-empty harvest per epoch, though: a write made after seeing harvest k can land while
     * harvest k+1 is between its scan and its publication, and be reported by k+2 together with the write made
     * after seeing k+1. Each write is reported by a later harvest, so at most two epochs share one report:
     * fewer than half would mean lost reports. (Lost data is what the shadow comparison below catches.) */
    if (nonempty < MIN_HARVESTS / 2) {
        fail_msg("only %d harvests reported pages, but the writer wrote after %d distinct harvests", nonempty,
                 r.epochs);
    }
    for (size_t p = 0; p < RACE_PAGES; p++) {
        if (memcmp(shadow + p * ps, r.b->host + p * ps, ps) != 0) {
            fail_msg("page %zu changed after its last harvest and no later harvest reported it", p);
        }
    }
    print_message("%d harvests (%d non-empty), %zu pages reported\n", r.harvests, nonempty, reported);

    ferry__tracker_stop(t);
    free(map);
    free(shadow);
    ferry__ram_block_free(r.b);
}

static void test_uffd_wp_discard_and_restart(void **state)
{
    skip_without_uffd_wp();
    size_t ps = ferry_ram_page_size();
    size_t n = 32;
    FerryRamBlock *b = ferry__ram_block_new("ram", n * ps, NULL);
    assert_non_null(b);
    unsigned long *map = ferry__bitmap_new(n);

    for (int round = 0; round < 3; round++) {
        FerryDirtyTracker *t = ferry__tracker_start(FERRY_TRACKER_UFFD_WP, &b, 1, NULL);
        assert_non_null(t);
        ferry__bitmap_zero(map, n);
        assert_true(ferry__tracker_harvest(t, b, map, NULL));
        assert_int_equal(ferry__bitmap_count(map, n), 0);
        b->host[(size_t)(round + 1) * ps] = 1;
        assert_true(ferry__tracker_harvest(t, b, map, NULL));
        assert_int_equal(ferry__bitmap_count(map, n), 1);
        assert_true(ferry__bitmap_test(map, (size_t)round + 1));

        /* A discard may be reported conservatively, but a write after it must be seen. */
        ferry__ram_block_discard(b);
        assert_true(ferry__buffer_is_zero(b->host, b->size));
        assert_true(ferry__tracker_harvest(t, b, map, NULL));
        ferry__bitmap_zero(map, n);
        b->host[20 * ps] = 5;
        assert_true(ferry__tracker_harvest(t, b, map, NULL));
        assert_int_equal(ferry__bitmap_count(map, n), 1);
        assert_true(ferry__bitmap_test(map, 20));
        ferry__tracker_stop(t);
    }
    free(map);
    ferry__ram_block_free(b);
}

static void test_uffd_wp_fallback(void **state)
{
    skip_without_uffd_wp();
    /* A range can be registered with one userfaultfd only: while a first uffd-wp tracker covers the block,
     * arming a second fails although the probe passed. AUTO then falls back to "none" with the reason; an
     * explicit uffd-wp request fails. (Holes, read-only, shmem and file mappings are all accepted by Linux 6.18
     * in async mode, so this is the simplest refusal to provoke.) */
    size_t ps = ferry_ram_page_size();
    FerryRamBlock *b = ferry__ram_block_new("twice", 8 * ps, NULL);
    assert_non_null(b);
    FerryDirtyTracker *first = ferry__tracker_start(FERRY_TRACKER_UFFD_WP, &b, 1, NULL);
    assert_non_null(first);

    FerryError *err = NULL;
    assert_null(ferry__tracker_start(FERRY_TRACKER_UFFD_WP, &b, 1, &err));
    assert_non_null(err);
    assert_non_null(strstr(ferry_error_msg(err), "dirty tracker uffd-wp: UFFDIO_REGISTER"));
    assert_non_null(strstr(ferry_error_msg(err), "'twice'"));
    ferry_error_free(err);

    FerryDirtyTracker *t = ferry__tracker_start(FERRY_TRACKER_AUTO, &b, 1, NULL);
    assert_non_null(t);
    assert_string_equal(ferry__tracker_name(t), "none");
    assert_true(ferry__tracker_is_none(t));
    assert_non_null(ferry__tracker_note(t));
    assert_non_null(strstr(ferry__tracker_note(t), "userfaultfd write-protect unavailable: UFFDIO_REGISTER"));
    b->host[0] = 1; /* not blocked */
    unsigned long map[1] = {0};
    ferry_ram_mark_dirty(b, 2 * ps, 1);
    assert_true(ferry__tracker_harvest(t, b, map, NULL));
    assert_int_equal(map[0], 1UL << 2);
    ferry__tracker_stop(t);
    /* The failed attempts left the first tracker armed and working. */
    map[0] = 0;
    b->host[5 * ps] = 1;
    assert_true(ferry__tracker_harvest(first, b, map, NULL));
    assert_int_equal(map[0], (1UL << 0) | (1UL << 5));
    ferry__tracker_stop(first);
    ferry__ram_block_free(b);
}

/* A fake host tracker: reports the pages in @pending (then forgets them) and counts the calls. */
typedef struct FakeHost {
    unsigned starts, harvests, stops;
    bool fail_start;
    unsigned long pending;
    FerryRamBlock *expect;
} FakeHost;

static bool fake_start(void *opaque, FerryError **errp)
{
    FakeHost *f = opaque;
    f->starts++;
    if (f->fail_start) {
        ferry_error_setg(errp, "probe said no");
        return false;
    }
    return true;
}

static bool fake_harvest(void *opaque, FerryRamBlock *b, unsigned long *bitmap, FerryError **errp)
{
    FakeHost *f = opaque;
    assert_ptr_equal(b, f->expect);
    f->harvests++;
    bitmap[0] |= f->pending;
    f->pending = 0;
    return true;
}

static void fake_stop(void *opaque)
{
    ((FakeHost *)opaque)->stops++;
}

static const FerryDirtyTrackerOps fake_ops = {
    .name = "fake-log",
    .start = fake_start,
    .harvest = fake_harvest,
    .stop = fake_stop,
};

static void test_host_tracker(void **state)
{
    size_t ps = ferry_ram_page_size();
    FerryRamBlock *b = ferry__ram_block_new("host", 16 * ps, NULL);
    assert_non_null(b);
    FakeHost f = { .expect = b };
    unsigned long map[1] = {0};

    ferry_ram_mark_dirty(b, 0, ps); /* before the start: forgotten, pass 1 sends everything */
    FerryDirtyTracker *t = ferry__tracker_start_host(&fake_ops, &f, &b, 1, NULL);
    assert_non_null(t);
    assert_int_equal(f.starts, 1);
    assert_string_equal(ferry__tracker_name(t), "fake-log");
    assert_false(ferry__tracker_is_none(t));
    assert_null(ferry__tracker_note(t));
    f.pending = (1UL << 3) | (1UL << 9);
    ferry_ram_mark_dirty(b, 5 * ps, 1);
    assert_true(ferry__tracker_harvest(t, b, map, NULL));
    assert_int_equal(map[0], (1UL << 3) | (1UL << 5) | (1UL << 9));
    map[0] = 0;
    assert_true(ferry__tracker_harvest(t, b, map, NULL));
    assert_int_equal(map[0], 0);
    assert_int_equal(f.harvests, 2);
    ferry__tracker_stop(t);
    assert_int_equal(f.stops, 1);

    /* A start that fails fails the tracker, naming it; nothing is left to stop. */
    FerryError *err = NULL;
    f.fail_start = true;
    assert_null(ferry__tracker_start_host(&fake_ops, &f, &b, 1, &err));
    assert_msg_contains(err, "dirty tracker fake-log: probe said no");
    ferry_error_free(err);
    assert_int_equal(f.stops, 1);
    /* No ops at all (FERRY_TRACKER_HOST chosen without registering any). */
    err = NULL;
    assert_null(ferry__tracker_start_host(NULL, NULL, &b, 1, &err));
    assert_msg_contains(err, "registered no tracker");
    ferry_error_free(err);
    err = NULL;
    assert_null(ferry__tracker_start(FERRY_TRACKER_HOST, &b, 1, &err));
    assert_msg_contains(err, "registered no tracker");
    ferry_error_free(err);
    ferry__ram_block_free(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kind_parse),
        cmocka_unit_test(test_none_and_explicit),
        cmocka_unit_test(test_explicit_threads),
        cmocka_unit_test(test_uffd_wp_exact),
        cmocka_unit_test(test_uffd_wp_sparse),
        cmocka_unit_test(test_uffd_wp_thp),
        cmocka_unit_test(test_uffd_wp_kernel_writes_and_blocks),
        cmocka_unit_test(test_uffd_wp_race),
        cmocka_unit_test(test_uffd_wp_discard_and_restart),
        cmocka_unit_test(test_uffd_wp_fallback),
        cmocka_unit_test(test_host_tracker),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
