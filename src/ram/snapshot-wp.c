/*
 * Write protection for a background snapshot (snapshot-wp.h): a userfaultfd in synchronous write-protect mode over
 * the blocks, a fault thread that saves a page before its first write lifts the protection, and claim/release for
 * the saver that walks all pages. It neither formats nor sends pages (the callback and the caller do), and it is
 * not the dirty tracker of tracker-uffd.c, whose asynchronous mode never makes a writer wait.
 *
 * Per unit of protection (a 4 KiB page, or a huge page of a hugetlb block) two atomic bits:
 *   to_save   set at start for present units; cleared by whoever claims the unit (test-and-clear, so exactly one).
 *   inflight  set by the saver before its claim and cleared after its release: the fault thread, finding a unit
 *             not to be saved, tells from it whether the saver still holds the unit (its release will wake the
 *             writer) or the message is stale (the unit is released; it wakes the range itself, which is harmless).
 * The saver sets inflight before the test-and-clear of to_save (release/acquire through that read-modify-write),
 * so a fault thread that finds to_save clear by the saver sees inflight set until the release. A unit the saver
 * marks inflight but fails to claim is released or held by the fault thread, and the writer is woken by whoever
 * lifted the protection (UFFDIO_WRITEPROTECT without DONTWAKE wakes the waiters of the range; a writer that
 * faults after that finds the page writable and does not wait).
 */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdarg.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "ram/ram.h"
#include "ram/snapshot-wp.h"
#include "ram/uffd-compat.h"
#include "util/bitmap.h"
#include "util/util.h"

/* Pages a fault saves at once around the faulting one (an aligned window), so that a writer walking RAM page by
 * page waits once per window rather than once per page. */
#define FAULT_WINDOW_PAGES 16
/* Fault messages read per read(2). */
#define MSG_BATCH 64
/* EAGAIN from UFFDIO_WRITEPROTECT (the address space changing under it) is retried this many times. */
#define EAGAIN_RETRIES 100000

typedef struct WpBlock {
    FerryRamBlock *b;
    uint64_t start, end;     /* the mapping's addresses */
    uint64_t unit;           /* pages per unit */
    uint64_t nunits;
    unsigned long *to_save;  /* nunits bits, atomic */
    unsigned long *inflight; /* nunits bits, atomic */
    bool registered;
} WpBlock;

struct FerryWpSnapshot {
    int uffd;
    int evfd;
    WpBlock *blk;
    size_t n;
    FerryWpSaveFn save;
    void *opaque;
    uint64_t total;
    uint64_t faults; /* atomic */
    bool failed;     /* atomic */
    char *failure;   /* atomic: set once, under fail_lock */
    pthread_mutex_t fail_lock;
    pthread_t thread;
    bool thread_started;
};

static uint64_t page_bytes(void)
{
    return ferry_ram_page_size();
}

/* First set bit at or after @start, reading words atomically (the other side clears bits meanwhile). */
static uint64_t find_next_atomic(const unsigned long *map, uint64_t nbits, uint64_t start)
{
    while (start < nbits) {
        uint64_t i = start / FERRY_BITS_PER_LONG;
        unsigned long w = __atomic_load_n(&map[i], __ATOMIC_ACQUIRE) >> (start % FERRY_BITS_PER_LONG);
        if (w) {
            uint64_t bit = start + (uint64_t)__builtin_ctzl(w);
            return FERRY_MIN(bit, nbits);
        }
        start = (i + 1) * FERRY_BITS_PER_LONG;
    }
    return nbits;
}

/* UFFDIO_WRITEPROTECT of units [u, u + count) of @k: protect (@wp) or lift, which wakes the waiters. 0 or errno. */
static int writeprotect(FerryWpSnapshot *w, WpBlock *k, uint64_t u, uint64_t count, bool wp)
{
    uint64_t ps = page_bytes();
    uint64_t first = u * k->unit, end = FERRY_MIN((u + count) * k->unit, k->b->npages);
    struct uffdio_writeprotect arg = {
        .range = {.start = k->start + first * ps, .len = (end - first) * ps},
        .mode = wp ? UFFDIO_WRITEPROTECT_MODE_WP : 0,
    };
    for (unsigned tries = 0;; tries++) {
        if (ioctl(w->uffd, UFFDIO_WRITEPROTECT, &arg) == 0) {
            return 0;
        }
        if ((errno != EAGAIN && errno != EINTR) || tries >= EAGAIN_RETRIES) {
            return errno;
        }
    }
}

static void wake_range(FerryWpSnapshot *w, uint64_t start, uint64_t len)
{
    struct uffdio_range r = {.start = start, .len = len};
    (void)ioctl(w->uffd, UFFDIO_WAKE, &r);
}

/* Nothing more will be saved: forget what was left, lift every protection and wake every writer. Idempotent. */
static void unprotect_all(FerryWpSnapshot *w)
{
    for (size_t i = 0; i < w->n; i++) {
        WpBlock *k = &w->blk[i];
        if (!k->registered) {
            continue;
        }
        for (size_t j = 0; j < FERRY_BITMAP_LONGS(k->nunits); j++) {
            __atomic_store_n(&k->to_save[j], 0UL, __ATOMIC_SEQ_CST);
        }
        (void)writeprotect(w, k, 0, k->nunits, false);
        wake_range(w, k->start, k->end - k->start);
    }
}

/* Record a failure (the first reason only, if any) and let the workload go on. */
static void fail(FerryWpSnapshot *w, char *why)
{
    pthread_mutex_lock(&w->fail_lock);
    if (!w->failure && why) {
        __atomic_store_n(&w->failure, why, __ATOMIC_RELEASE); /* read without the lock */
        why = NULL;
    }
    __atomic_store_n(&w->failed, true, __ATOMIC_SEQ_CST);
    pthread_mutex_unlock(&w->fail_lock);
    free(why);
    unprotect_all(w);
}

static char *fmt(const char *f, ...) __attribute__((format(printf, 1, 2)));
static char *fmt(const char *f, ...)
{
    va_list ap;
    va_start(ap, f);
    char *s = NULL;
    if (vasprintf(&s, f, ap) < 0) {
        s = NULL;
    }
    va_end(ap);
    return s;
}

/* Lift units [u, u + count) of block @bi after they were saved; on failure, give up the snapshot (a writer left
 * waiting on a protected page would hang). */
static void release_units(FerryWpSnapshot *w, size_t bi, uint64_t u, uint64_t count)
{
    WpBlock *k = &w->blk[bi];
    int e = writeprotect(w, k, u, count, false);
    if (e) {
        fail(w, fmt("RAM block '%s': lifting the write protection of pages %" PRIu64 "+%" PRIu64 ": %s", k->b->name,
                    u * k->unit, count * k->unit, strerror(e)));
    }
}

uint64_t ferry__wp_snapshot_claim(FerryWpSnapshot *w, size_t bi, uint64_t first, uint64_t max)
{
    FERRY_ASSERT(bi < w->n);
    WpBlock *k = &w->blk[bi];
    if (max == 0 || first >= k->b->npages || first % k->unit || __atomic_load_n(&w->failed, __ATOMIC_ACQUIRE)) {
        return 0;
    }
    uint64_t u0 = first / k->unit, umax = FERRY_MAX(max / k->unit, 1), got = 0;
    umax = FERRY_MIN(umax, k->nunits - u0);
    while (got < umax) {
        uint64_t u = u0 + got;
        ferry__bitmap_test_and_set_atomic(k->inflight, (size_t)u);
        if (!ferry__bitmap_test_and_clear_atomic(k->to_save, (size_t)u)) {
            ferry__bitmap_test_and_clear_atomic(k->inflight, (size_t)u);
            break;
        }
        got++;
    }
    return FERRY_MIN(got * k->unit, k->b->npages - first);
}

void ferry__wp_snapshot_release(FerryWpSnapshot *w, size_t bi, uint64_t first, uint64_t n)
{
    FERRY_ASSERT(bi < w->n);
    WpBlock *k = &w->blk[bi];
    if (n == 0) {
        return;
    }
    FERRY_ASSERT(first % k->unit == 0 && first < k->b->npages && n <= k->b->npages - first);
    uint64_t u0 = first / k->unit, count = FERRY_DIV_ROUND_UP(n, k->unit);
    release_units(w, bi, u0, count);
    for (uint64_t u = u0; u < u0 + count; u++) {
        ferry__bitmap_test_and_clear_atomic(k->inflight, (size_t)u);
    }
}

uint64_t ferry__wp_snapshot_next(FerryWpSnapshot *w, size_t bi, uint64_t from)
{
    FERRY_ASSERT(bi < w->n);
    WpBlock *k = &w->blk[bi];
    if (from >= k->b->npages || __atomic_load_n(&w->failed, __ATOMIC_ACQUIRE)) {
        return k->b->npages;
    }
    uint64_t u = find_next_atomic(k->to_save, k->nunits, from / k->unit);
    return u < k->nunits ? u * k->unit : k->b->npages;
}

uint64_t ferry__wp_snapshot_unit(const FerryWpSnapshot *w, size_t bi)
{
    FERRY_ASSERT(bi < w->n);
    return w->blk[bi].unit;
}

uint64_t ferry__wp_snapshot_total(const FerryWpSnapshot *w)
{
    return w->total;
}

uint64_t ferry__wp_snapshot_faults(const FerryWpSnapshot *w)
{
    return __atomic_load_n(&w->faults, __ATOMIC_RELAXED);
}

bool ferry__wp_snapshot_failed(const FerryWpSnapshot *w)
{
    return __atomic_load_n(&w->failed, __ATOMIC_ACQUIRE);
}

const char *ferry__wp_snapshot_failure(const FerryWpSnapshot *w)
{
    return __atomic_load_n(&w->failure, __ATOMIC_ACQUIRE);
}

static size_t find_block(const FerryWpSnapshot *w, uint64_t addr)
{
    for (size_t i = 0; i < w->n; i++) {
        if (w->blk[i].registered && addr >= w->blk[i].start && addr < w->blk[i].end) {
            return i;
        }
    }
    return w->n;
}

/* Save and lift claimed units [u, u + count) of block @bi on the fault thread. */
static void fault_save(FerryWpSnapshot *w, size_t bi, uint64_t u, uint64_t count)
{
    WpBlock *k = &w->blk[bi];
    uint64_t first = u * k->unit, n = FERRY_MIN((u + count) * k->unit, k->b->npages) - first;
    if (!w->save(w->opaque, bi, k->b, first, n)) {
        fail(w, NULL);
        return;
    }
    __atomic_fetch_add(&w->faults, n, __ATOMIC_RELAXED);
    release_units(w, bi, u, count);
}

/* A write fault at @addr: save what is still to be saved around it, else wake a stale waiter. */
static void handle_fault(FerryWpSnapshot *w, uint64_t addr)
{
    uint64_t ps = page_bytes();
    size_t bi = find_block(w, addr);
    if (bi == w->n) {
        wake_range(w, addr & ~(ps - 1), ps); /* not ours: never leave a thread asleep */
        return;
    }
    WpBlock *k = &w->blk[bi];
    uint64_t u = (addr - k->start) / ps / k->unit;
    if (__atomic_load_n(&w->failed, __ATOMIC_ACQUIRE)) {
        wake_range(w, k->start + u * k->unit * ps, k->unit * ps);
        return;
    }
    uint64_t win = FERRY_MAX(FAULT_WINDOW_PAGES / k->unit, 1);
    uint64_t lo = u / win * win, hi = FERRY_MIN(lo + win, k->nunits);
    bool mine = false;
    /* Runs of units claimed here, saved one run at a time in address order. */
    uint64_t run = lo, len = 0;
    for (uint64_t v = lo; v < hi; v++) {
        if (ferry__bitmap_test_and_clear_atomic(k->to_save, (size_t)v)) {
            if (len == 0) {
                run = v;
            }
            len++;
            mine |= v == u;
            continue;
        }
        if (len) {
            fault_save(w, bi, run, len);
            len = 0;
        }
    }
    if (len) {
        fault_save(w, bi, run, len);
    }
    if (!mine && !ferry__bitmap_test_atomic(k->inflight, (size_t)u)) {
        wake_range(w, k->start + u * k->unit * ps, k->unit * ps);
    }
}

static void *fault_thread(void *opaque)
{
    FerryWpSnapshot *w = opaque;
    struct uffd_msg msgs[MSG_BATCH];
    struct pollfd pfd[2] = {{.fd = w->uffd, .events = POLLIN}, {.fd = w->evfd, .events = POLLIN}};
    for (;;) {
        int r = poll(pfd, 2, -1);
        if (r < 0) {
            if (errno == EINTR) {
                continue;
            }
            fail(w, fmt("polling the snapshot's userfaultfd: %s", strerror(errno)));
            return NULL;
        }
        if (pfd[1].revents) {
            return NULL;
        }
        if (pfd[0].revents & (POLLERR | POLLHUP | POLLNVAL)) {
            fail(w, fmt("the snapshot's userfaultfd reported an error (poll events 0x%x)", pfd[0].revents));
            return NULL;
        }
        ssize_t got = read(w->uffd, msgs, sizeof(msgs));
        if (got < 0) {
            if (errno == EINTR || errno == EAGAIN) {
                continue;
            }
            fail(w, fmt("reading the snapshot's userfaultfd: %s", strerror(errno)));
            return NULL;
        }
        for (size_t i = 0; i < (size_t)got / sizeof(msgs[0]); i++) {
            if (msgs[i].event == UFFD_EVENT_PAGEFAULT) {
                handle_fault(w, msgs[i].arg.pagefault.address);
            }
        }
    }
}

/* memfd, shmem file or hugetlb: write-protecting it needs UFFD_FEATURE_WP_HUGETLBFS_SHMEM. */
static bool block_needs_shmem_wp(const FerryRamBlock *b)
{
    return b->fd >= 0 || b->file || b->hugetlb;
}

void ferry__wp_snapshot_stop(FerryWpSnapshot *w)
{
    if (!w) {
        return;
    }
    /* Lift everything first, so that the fault thread finds nothing more to save and no writer waits on it. */
    unprotect_all(w);
    if (w->thread_started) {
        uint64_t one = 1;
        while (write(w->evfd, &one, sizeof(one)) < 0 && errno == EINTR) {
        }
        pthread_join(w->thread, NULL);
    }
    for (size_t i = 0; i < w->n; i++) {
        WpBlock *k = &w->blk[i];
        if (k->registered) {
            struct uffdio_range r = {.start = k->start, .len = k->end - k->start};
            /* A failure leaves the range registered to an fd closed right after, which disarms it as well. */
            (void)ioctl(w->uffd, UFFDIO_UNREGISTER, &r);
        }
        free(k->to_save);
        free(k->inflight);
    }
    if (w->evfd >= 0) {
        close(w->evfd);
    }
    if (w->uffd >= 0) {
        close(w->uffd);
    }
    pthread_mutex_destroy(&w->fail_lock);
    free(w->failure);
    free(w->blk);
    free(w);
}

/* Register block @k and protect its present units. */
static bool arm_block(FerryWpSnapshot *w, WpBlock *k, FerryError **errp)
{
    FerryRamBlock *b = k->b;
    uint64_t ps = page_bytes();
    k->start = (uint64_t)(uintptr_t)b->host;
    k->end = k->start + b->size;
    k->unit = b->hugetlb ? FERRY_MAX(b->page_size / ps, 1) : 1;
    k->nunits = FERRY_DIV_ROUND_UP(b->npages, k->unit);
    k->to_save = ferry__bitmap_new((size_t)k->nunits);
    k->inflight = ferry__bitmap_new((size_t)k->nunits);

    /* File blocks: map the file's pages in while fault-around still works (see the function). */
    ferry__ram_block_map_for_reading(b);
    unsigned long *present = ferry__bitmap_new((size_t)b->npages);
    ferry__ram_block_present_pages(b, present);
    for (uint64_t p = ferry__bitmap_find_next(present, b->npages, 0); p < b->npages;
         p = ferry__bitmap_find_next(present, b->npages, (p / k->unit + 1) * k->unit)) {
        ferry__bitmap_set(k->to_save, (size_t)(p / k->unit));
    }
    free(present);

    struct uffdio_register reg = {
        .range = {.start = k->start, .len = b->size},
        .mode = UFFDIO_REGISTER_MODE_WP,
    };
    if (ioctl(w->uffd, UFFDIO_REGISTER, &reg) != 0) {
        int e = errno;
        ferry_error_setg_errno(errp, e, "RAM block '%s': UFFDIO_REGISTER for write-protect%s", b->name,
                               e == EBUSY ? " (already registered with another userfaultfd: a dirty tracker or "
                                            "postcopy)"
                               : e == EINVAL ? " (the kernel write-protects only anonymous memory, shmem/memfd "
                                               "and hugetlbfs, not this mapping)"
                                             : "");
        return false;
    }
    k->registered = true;
    if (!(reg.ioctls & (1ULL << _UFFDIO_WRITEPROTECT))) {
        ferry_error_setg(errp, "RAM block '%s': the kernel offers no UFFDIO_WRITEPROTECT on it (ioctls 0x%llx)",
                         b->name, (unsigned long long)reg.ioctls);
        return false;
    }
    for (uint64_t u = ferry__bitmap_find_next(k->to_save, k->nunits, 0); u < k->nunits;) {
        uint64_t end = ferry__bitmap_find_next_zero(k->to_save, k->nunits, u);
        int e = writeprotect(w, k, u, end - u, true);
        if (e) {
            ferry_error_setg_errno(errp, e, "RAM block '%s': UFFDIO_WRITEPROTECT of pages %" PRIu64 "+%" PRIu64,
                                   b->name, u * k->unit, (end - u) * k->unit);
            return false;
        }
        w->total += FERRY_MIN(end * k->unit, b->npages) - u * k->unit;
        u = ferry__bitmap_find_next(k->to_save, k->nunits, end);
    }
    return true;
}

FerryWpSnapshot *ferry__wp_snapshot_start(FerryRamBlock **blocks, size_t n, FerryWpSaveFn save, void *opaque,
                                          FerryError **errp)
{
#ifdef FERRY_HAVE_VALGRIND
    /* A writer asleep in a write-protect fault keeps valgrind's one running thread, and the fault thread that would
     * wake it never runs (as for postcopy's faults, uffd-missing.c). */
    if (RUNNING_ON_VALGRIND) {
        ferry_error_setg(errp, "background-snapshot's write protection cannot work under valgrind (it runs one "
                         "thread at a time)");
        return NULL;
    }
#endif
    bool need_shmem = false;
    for (size_t i = 0; i < n; i++) {
        if (blocks[i]->adopted) {
            ferry_error_setg(errp, "RAM block '%s': its memory is the source's memfd (cpr-transfer), which a "
                             "background snapshot does not write-protect", blocks[i]->name);
            return NULL;
        }
        need_shmem |= block_needs_shmem_wp(blocks[i]);
    }
    uint64_t features;
    if (!ferry__userfaultfd_features(&features, errp)) {
        return NULL;
    }
    if (!(features & UFFD_FEATURE_PAGEFAULT_FLAG_WP)) {
        ferry_error_setg(errp, "this kernel's userfaultfd lacks write-protect (UFFD_FEATURE_PAGEFAULT_FLAG_WP, "
                         "Linux 5.7+), needed for a background snapshot");
        return NULL;
    }
    if (need_shmem && !(features & UFFD_FEATURE_WP_HUGETLBFS_SHMEM)) {
        for (size_t i = 0; i < n; i++) {
            if (block_needs_shmem_wp(blocks[i])) {
                ferry_error_setg(errp, "RAM block '%s': it is %s, and this kernel's userfaultfd cannot write-protect "
                                 "such memory (it lacks UFFD_FEATURE_WP_HUGETLBFS_SHMEM, Linux 6.1+)", blocks[i]->name,
                                 blocks[i]->hugetlb ? "backed by huge pages (hugetlb)"
                                 : blocks[i]->file  ? "a file mapping"
                                                    : "a memfd (shmem)");
                return NULL;
            }
        }
    }

    FerryWpSnapshot *w = ferry__xcalloc(1, sizeof(*w));
    w->evfd = -1;
    w->save = save;
    w->opaque = opaque;
    pthread_mutex_init(&w->fail_lock, NULL);
    w->blk = ferry__xcalloc(n ? n : 1, sizeof(*w->blk));
    w->n = n;
    w->uffd = ferry__userfaultfd_open(0, errp);
    if (w->uffd < 0) {
        goto fail;
    }
    struct uffdio_api api = {
        .api = UFFD_API,
        .features = UFFD_FEATURE_PAGEFAULT_FLAG_WP | (need_shmem ? UFFD_FEATURE_WP_HUGETLBFS_SHMEM : 0),
    };
    if (ioctl(w->uffd, UFFDIO_API, &api) != 0) {
        ferry_error_setg_errno(errp, errno, "UFFDIO_API with features 0x%llx", (unsigned long long)api.features);
        goto fail;
    }
    for (size_t i = 0; i < n; i++) {
        w->blk[i].b = blocks[i];
        if (!arm_block(w, &w->blk[i], errp)) {
            goto fail;
        }
    }
    w->evfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (w->evfd < 0) {
        ferry_error_setg_errno(errp, errno, "eventfd for the snapshot's fault thread");
        goto fail;
    }
    int e = pthread_create(&w->thread, NULL, fault_thread, w);
    if (e) {
        ferry_error_setg_errno(errp, e, "starting the snapshot's fault thread");
        goto fail;
    }
    w->thread_started = true;
    return w;

fail:
    ferry__wp_snapshot_stop(w);
    return NULL;
}
