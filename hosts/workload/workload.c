/*
 * ferry-workload's engine room: the RAM layout (blocks "ram0", "ram1", ... indexed as one run of pages), the
 * worker threads that stand in for vCPUs, their parking protocol for FerryHostOps stop/start, the device state
 * section that carries each worker's position across a migration, and the verifier behind query-pattern-check
 * and query-ram-digest. Page contents of the random patterns are in pattern.c; options and QMP are in main.c.
 *
 * Each worker owns a contiguous share of the pages and is the only writer of it, so a page is never written by
 * two threads at once and a parked worker leaves no page half written.
 *
 * For dirty-limit (FerryHostOps.writer_stats / dirty_limit, QEMU's set-vcpu-dirty-limit and calc-dirty-rate's
 * dirty-ring mode) a "writer" is a worker, numbered as -smp numbers them. Its dirty count is the pages it wrote,
 * counted by the worker itself at each write: a page written twice counts twice, as it would in a KVM dirty ring
 * only if the kernel had cleared its dirty bit in between, so this count is an upper bound of what a ring would
 * report; there is no ring and no ring-full wait. The limit is enforced in the worker's own thread, per period:
 * once it has written its quota for the period it sleeps to the period's end. It composes with auto-converge's
 * throttle and -dirty-rate's pacing (each only ever adds sleep): the slowest of the three wins.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <xxhash.h>

#include "workload.h"

#define MIB 1048576.0
/* A worker that fell this far behind its dirty-rate schedule (it was parked, or the machine was busy) restarts
 * the schedule instead of writing a burst to catch up. */
#define THROTTLE_SLACK_NS 100e6
/* Longest single sleep of a throttled worker, so that a stop request is noticed quickly. */
#define THROTTLE_MAX_SLEEP_NS 10e6
/* A worker sleeps only once it is this far ahead of its schedule: at high rates a sleep per page would cost more
 * CPU in wake-ups than the writes themselves, so pages go out in short bursts instead. */
#define THROTTLE_MIN_SLEEP_NS 1e6

static double now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static uint8_t *page_ptr(const Workload *wl, uint64_t index, FerryRamBlock **block, uint64_t *offset)
{
    uint64_t b = index / wl->pages_per_block;
    uint64_t off = (index % wl->pages_per_block) * wl->page_size;

    if (block) {
        *block = wl->blocks[b];
        *offset = off;
    }
    return wl->block_host[b] + off;
}

/* Pages of [start, end) that the pattern's initial fill writes (generation 1). */
static uint64_t filled_pages(const Workload *wl, uint64_t start, uint64_t end)
{
    switch (wl->cfg.pattern) {
    case WORKLOAD_PATTERN_RANDOM:
        return end - start;
    case WORKLOAD_PATTERN_HALF:
        /* Even indices below n: (n + 1) / 2. */
        return (end + 1) / 2 - (start + 1) / 2;
    default:
        return 0;
    }
}

static bool page_is_filled(const Workload *wl, uint64_t index)
{
    return wl->cfg.pattern == WORKLOAD_PATTERN_RANDOM ||
           (wl->cfg.pattern == WORKLOAD_PATTERN_HALF && index % 2 == 0);
}

Workload *workload_new(const WorkloadConfig *cfg, FerryError **errp)
{
    Workload *wl = calloc(1, sizeof(*wl));

    if (!wl) {
        ferry_error_setg(errp, "out of memory");
        return NULL;
    }
    wl->cfg = *cfg;
    wl->page_size = ferry_ram_page_size();
    wl->pages = cfg->ram_size / wl->page_size;
    wl->pages_per_block = cfg->block_size / wl->page_size;
    wl->nblocks = (unsigned)((wl->pages + wl->pages_per_block - 1) / wl->pages_per_block);
    wl->explicit_dirty = cfg->tracker == FERRY_TRACKER_EXPLICIT;
    if (cfg->dirty_rate) {
        wl->ns_per_page = (double)wl->page_size * cfg->smp * 1e9 / ((double)cfg->dirty_rate * MIB);
    }
    pthread_mutex_init(&wl->lock, NULL);
    pthread_cond_init(&wl->cond, NULL);
    atomic_init(&wl->go, false);

    wl->blocks = calloc(wl->nblocks, sizeof(*wl->blocks));
    wl->block_host = calloc(wl->nblocks, sizeof(*wl->block_host));
    wl->workers = calloc(cfg->smp, sizeof(*wl->workers));
    wl->zero_page = calloc(1, wl->page_size);
    if (!wl->blocks || !wl->block_host || !wl->workers || !wl->zero_page) {
        ferry_error_setg(errp, "out of memory");
        workload_free(wl);
        return NULL;
    }
    for (unsigned i = 0; i < cfg->smp; i++) {
        WorkloadWorker *w = &wl->workers[i];

        w->wl = wl;
        w->id = i;
        w->start = wl->pages * i / cfg->smp;
        w->end = wl->pages * (i + 1) / cfg->smp;
        w->cursor = w->start;
        /* Each worker's page choices depend on the seed and its number only, so runs are reproducible. */
        w->rng = workload_rng_derive(cfg->seed, i, UINT64_C(0x776f726b6572));
        atomic_init(&w->passes, 0);
        atomic_init(&w->pages_written, 0);
        atomic_init(&w->dirtied, 0);
        atomic_init(&w->dl_limit_mbps, 0);
        atomic_init(&w->dl_period_ms, WORKLOAD_DL_DEFAULT_PERIOD_MS);
        atomic_init(&w->dl_rate_mbps, 0);
        atomic_init(&w->dl_throttle_us, 0);
    }
    return wl;
}

void workload_stop_threads(Workload *wl)
{
    unsigned n;

    if (!wl) {
        return;
    }
    pthread_mutex_lock(&wl->lock);
    wl->quit = true;
    atomic_store(&wl->go, false);
    pthread_cond_broadcast(&wl->cond);
    n = wl->threads_started;
    pthread_mutex_unlock(&wl->lock);
    for (unsigned i = 0; i < n; i++) {
        pthread_join(wl->workers[i].thread, NULL);
    }
    /* Joined threads are forgotten, so that a second call (workload_free after main's own call) does not join
     * them again: joining a thread twice is undefined behaviour, and its id may already belong to another thread.
     * With no threads left, a stop() or hold() that comes later returns at once. */
    pthread_mutex_lock(&wl->lock);
    wl->threads_started = 0;
    wl->parked = 0;
    pthread_mutex_unlock(&wl->lock);
}

void workload_free(Workload *wl)
{
    if (!wl) {
        return;
    }
    workload_stop_threads(wl);
    pthread_cond_destroy(&wl->cond);
    pthread_mutex_destroy(&wl->lock);
    free(wl->zero_page);
    free(wl->workers);
    free(wl->block_host);
    free(wl->blocks);
    free(wl);
}

/* ---- Running, parking, holding ---- */

/* Caller holds wl->lock. */
static void update_go(Workload *wl)
{
    bool go = wl->host_run && wl->holds == 0 && !wl->quit;

    atomic_store(&wl->go, go);
    if (go) {
        pthread_cond_broadcast(&wl->cond);
    }
}

/* Caller holds wl->lock: wait until every worker thread sits in worker_park() (or has exited). */
static void wait_parked(Workload *wl)
{
    while (wl->parked < wl->threads_started) {
        pthread_cond_wait(&wl->cond, &wl->lock);
    }
}

/* Park between two pages until the worker may run again. Returns false when the program is quitting; an exited
 * worker stays counted as parked, so that a late stop() (at shutdown) does not wait for it. */
static bool worker_park(WorkloadWorker *w)
{
    Workload *wl = w->wl;

    /* A parked worker dirties nothing: its rate is 0 until it has run a period again. */
    atomic_store_explicit(&w->dl_rate_mbps, 0, memory_order_relaxed);
    w->dl_start_ns = 0;
    pthread_mutex_lock(&wl->lock);
    wl->parked++;
    pthread_cond_broadcast(&wl->cond);
    while (!(wl->host_run && wl->holds == 0) && !wl->quit) {
        pthread_cond_wait(&wl->cond, &wl->lock);
    }
    if (wl->quit) {
        pthread_mutex_unlock(&wl->lock);
        return false;
    }
    wl->parked--;
    pthread_mutex_unlock(&wl->lock);
    w->next_ns = now_ns();
    return true;
}

static void worker_step_ab(WorkloadWorker *w)
{
    Workload *wl = w->wl;
    FerryRamBlock *block;
    uint64_t offset;
    uint8_t *p = page_ptr(wl, w->cursor, &block, &offset);

    p[0]++;
    if (wl->explicit_dirty) {
        ferry_ram_mark_dirty(block, offset, wl->page_size);
    }
    if (++w->cursor == w->end) {
        w->cursor = w->start;
        atomic_fetch_add_explicit(&w->passes, 1, memory_order_relaxed);
    }
    atomic_fetch_add_explicit(&w->pages_written, 1, memory_order_relaxed);
}

static void worker_step_random(WorkloadWorker *w)
{
    Workload *wl = w->wl;
    uint64_t index = w->start + workload_rng_next(&w->rng) % (w->end - w->start);
    FerryRamBlock *block;
    uint64_t offset;
    uint8_t *p = page_ptr(wl, index, &block, &offset);

    workload_page_write(p, wl->page_size, wl->cfg.seed, index, workload_page_generation(p) + 1);
    if (wl->explicit_dirty) {
        ferry_ram_mark_dirty(block, offset, wl->page_size);
    }
    atomic_fetch_add_explicit(&w->pages_written, 1, memory_order_relaxed);
}

/* Keep this worker at its share of -dirty-rate. The schedule advances by one page interval per page, so sleeps
 * that overshoot are paid back by later pages and the average rate stays right. */
static void worker_throttle(WorkloadWorker *w)
{
    Workload *wl = w->wl;
    double now;

    if (wl->ns_per_page == 0) {
        return;
    }
    w->next_ns += wl->ns_per_page;
    now = now_ns();
    if (now - w->next_ns > THROTTLE_SLACK_NS) {
        w->next_ns = now;
        return;
    }
    if (w->next_ns - now < THROTTLE_MIN_SLEEP_NS) {
        return;
    }
    while (now < w->next_ns && atomic_load_explicit(&wl->go, memory_order_relaxed)) {
        double d = w->next_ns - now;
        struct timespec ts;

        if (d > THROTTLE_MAX_SLEEP_NS) {
            d = THROTTLE_MAX_SLEEP_NS;
        }
        ts.tv_sec = (time_t)(d / 1e9);
        ts.tv_nsec = (long)(d - (double)ts.tv_sec * 1e9);
        nanosleep(&ts, NULL);
        now = now_ns();
    }
}

/* auto-converge's throttle, as QEMU's vCPU throttle: after each 10 ms slice of work, sleep so that the sleep is
 * @percent % of the whole (10 ms * p / (100 - p)), in short naps so that a stop is not held up. */
#define CPU_THROTTLE_SLICE_NS 10e6
static void worker_cpu_throttle(WorkloadWorker *w)
{
    Workload *wl = w->wl;
    int pct = atomic_load_explicit(&wl->cpu_throttle, memory_order_relaxed);
    if (pct <= 0) {
        w->slice_ns = 0;
        return;
    }
    double now = now_ns();
    if (w->slice_ns == 0) {
        w->slice_ns = now;
        return;
    }
    if (now - w->slice_ns < CPU_THROTTLE_SLICE_NS) {
        return;
    }
    double until = now + CPU_THROTTLE_SLICE_NS * pct / (100 - pct);
    while (now < until && atomic_load_explicit(&wl->go, memory_order_relaxed)) {
        double d = until - now < THROTTLE_MAX_SLEEP_NS ? until - now : THROTTLE_MAX_SLEEP_NS;
        struct timespec ts = { .tv_sec = (time_t)(d / 1e9), .tv_nsec = (long)(d - (double)(time_t)(d / 1e9) * 1e9) };
        nanosleep(&ts, NULL);
        now = now_ns();
    }
    w->slice_ns = now;
}

/*
 * dirty-limit, in the worker's own thread: count the page just written in the current period; once the period's
 * quota (limit * period) is written, sleep to the period's end. Either way a period that ended gives the worker's
 * measured rate. The clock is read every DL_CLOCK_EVERY pages only (and when the quota is reached), so that an
 * unlimited worker writing one byte per page is not slowed by the measurement.
 */
#define DL_CLOCK_EVERY 64
static void dl_end_period(WorkloadWorker *w, double now)
{
    Workload *wl = w->wl;
    double secs = (now - w->dl_start_ns) / 1e9;
    uint64_t rate = secs > 0 ? (uint64_t)((double)w->dl_pages * (double)wl->page_size / MIB / secs + 0.5) : 0;
    atomic_store_explicit(&w->dl_rate_mbps, rate, memory_order_relaxed);
    w->dl_start_ns = now;
    w->dl_pages = 0;
}

static void worker_dirty_limit(WorkloadWorker *w)
{
    Workload *wl = w->wl;
    uint64_t limit = atomic_load_explicit(&w->dl_limit_mbps, memory_order_relaxed);
    double period_ns = atomic_load_explicit(&w->dl_period_ms, memory_order_relaxed) * 1e6;

    atomic_fetch_add_explicit(&w->dirtied, 1, memory_order_relaxed);
    w->dl_pages++;
    if (w->dl_start_ns == 0) {
        w->dl_start_ns = now_ns();
        w->dl_pages = 0;
        return;
    }
    double quota = limit ? (double)limit * MIB * period_ns / 1e9 / (double)wl->page_size : 0;
    bool over = limit && (double)w->dl_pages >= (quota < 1 ? 1 : quota);
    if (!over && w->dl_pages % DL_CLOCK_EVERY != 0) {
        return;
    }
    double now = now_ns();
    if (over) {
        double until = w->dl_start_ns + period_ns, slept_from = now;
        while (now < until && atomic_load_explicit(&wl->go, memory_order_relaxed) &&
               atomic_load_explicit(&w->dl_limit_mbps, memory_order_relaxed) == limit) {
            double d = until - now < THROTTLE_MAX_SLEEP_NS ? until - now : THROTTLE_MAX_SLEEP_NS;
            struct timespec ts = { .tv_sec = (time_t)(d / 1e9),
                                   .tv_nsec = (long)(d - (double)(time_t)(d / 1e9) * 1e9) };
            nanosleep(&ts, NULL);
            now = now_ns();
        }
        atomic_fetch_add_explicit(&w->dl_throttle_us, (uint64_t)((now - slept_from) / 1e3), memory_order_relaxed);
        dl_end_period(w, now);
        return;
    }
    if (now - w->dl_start_ns >= period_ns) {
        dl_end_period(w, now);
    }
}

static void *worker_main(void *arg)
{
    WorkloadWorker *w = arg;
    Workload *wl = w->wl;

    /* The workers are this program's vCPUs: a postcopy destination counts their waits for missing pages. */
    if (wl->m) {
        ferry_migration_set_vcpu_thread(wl->m, w->id, (int)gettid());
    }
    for (;;) {
        /* Acquire pairs with the release in update_go(): state loaded while parked is visible here. */
        if (!atomic_load_explicit(&wl->go, memory_order_acquire)) {
            if (!worker_park(w)) {
                return NULL;
            }
            continue;
        }
        if (wl->cfg.pattern == WORKLOAD_PATTERN_AB) {
            worker_step_ab(w);
        } else {
            worker_step_random(w);
        }
        worker_dirty_limit(w);
        worker_throttle(w);
        worker_cpu_throttle(w);
    }
}

bool workload_start_threads(Workload *wl, FerryError **errp)
{
    /* File-backed RAM without -pattern: nobody writes it. With no threads, stop and start return at once and the
     * workers' saved state stays at its initial values. */
    if (wl->cfg.mem_path[0] && !wl->cfg.file_workers) {
        return true;
    }
    for (unsigned i = 0; i < wl->cfg.smp; i++) {
        int err = pthread_create(&wl->workers[i].thread, NULL, worker_main, &wl->workers[i]);

        if (err) {
            ferry_error_setg_errno(errp, err, "creating worker thread %u", i);
            return false;
        }
        wl->threads_started++;
    }
    /* Wait until all are parked, so that a check or save before the first start sees them at rest. */
    pthread_mutex_lock(&wl->lock);
    wait_parked(wl);
    pthread_mutex_unlock(&wl->lock);
    return true;
}

static void ops_stop(void *opaque)
{
    Workload *wl = opaque;

    pthread_mutex_lock(&wl->lock);
    wl->host_run = false;
    update_go(wl);
    wait_parked(wl);
    pthread_mutex_unlock(&wl->lock);
}

static void ops_start(void *opaque)
{
    Workload *wl = opaque;

    pthread_mutex_lock(&wl->lock);
    wl->host_run = true;
    update_go(wl);
    pthread_mutex_unlock(&wl->lock);
}

/* FerryHostOps.throttle: the workers read it at every page (worker_cpu_throttle). */
static void ops_throttle(void *opaque, int percent)
{
    Workload *wl = opaque;
    atomic_store_explicit(&wl->cpu_throttle, percent, memory_order_relaxed);
}

/* FerryHostOps.writer_stats: one writer per worker, read without stopping them. */
static int ops_writer_stats(void *opaque, FerryWriterStats *stats, int max, const char **why)
{
    Workload *wl = opaque;
    if (wl->cfg.mem_path[0] && !wl->cfg.file_workers) {
        *why = "no worker writes this workload's RAM (file-backed RAM without -pattern)";
        return 0;
    }
    for (int i = 0; i < max && i < (int)wl->cfg.smp; i++) {
        WorkloadWorker *w = &wl->workers[i];
        stats[i] = (FerryWriterStats){
            .dirty_pages = atomic_load_explicit(&w->dirtied, memory_order_relaxed),
            .rate_mbps = atomic_load_explicit(&w->dl_rate_mbps, memory_order_relaxed),
            .limit_mbps = atomic_load_explicit(&w->dl_limit_mbps, memory_order_relaxed),
            .throttle_us = atomic_load_explicit(&w->dl_throttle_us, memory_order_relaxed),
            .ring_full_us = 0, /* no ring: the workers count their own writes */
        };
    }
    return (int)wl->cfg.smp;
}

/* FerryHostOps.dirty_limit: the workers read limit and period at every page (worker_dirty_limit). */
static void ops_dirty_limit(void *opaque, int index, uint64_t mbps, int period_ms)
{
    Workload *wl = opaque;
    for (unsigned i = 0; i < wl->cfg.smp; i++) {
        if (index < 0 || (unsigned)index == i) {
            atomic_store_explicit(&wl->workers[i].dl_period_ms, period_ms > 0 ? period_ms : 1,
                                  memory_order_relaxed);
            atomic_store_explicit(&wl->workers[i].dl_limit_mbps, mbps, memory_order_relaxed);
        }
    }
}

const FerryHostOps workload_ops = {
    .stop = ops_stop,
    .start = ops_start,
    .throttle = ops_throttle,
    .writer_stats = ops_writer_stats,
    .dirty_limit = ops_dirty_limit,
};

void workload_hold(Workload *wl)
{
    pthread_mutex_lock(&wl->lock);
    wl->holds++;
    update_go(wl);
    wait_parked(wl);
    pthread_mutex_unlock(&wl->lock);
}

void workload_release(Workload *wl)
{
    pthread_mutex_lock(&wl->lock);
    wl->holds--;
    update_go(wl);
    pthread_mutex_unlock(&wl->lock);
}

void workload_counters(Workload *wl, uint64_t *passes, uint64_t *pages_written)
{
    *passes = 0;
    *pages_written = 0;
    for (unsigned i = 0; i < wl->cfg.smp; i++) {
        *passes += atomic_load_explicit(&wl->workers[i].passes, memory_order_relaxed);
        *pages_written += atomic_load_explicit(&wl->workers[i].pages_written, memory_order_relaxed);
    }
}

/* ---- Work over all shares in parallel (fill, check) ---- */

typedef struct ShareJob {
    uint64_t mismatches;
    unsigned nrec;
    char rec[WORKLOAD_DETAIL_MAX][160];
} ShareJob;

typedef struct ShareRun {
    Workload *wl;
    ShareJob *jobs;
    void (*fn)(Workload *wl, unsigned share, ShareJob *job);
    atomic_uint next;
} ShareRun;

static void *share_run_main(void *arg)
{
    ShareRun *run = arg;
    unsigned i;

    while ((i = atomic_fetch_add(&run->next, 1)) < run->wl->cfg.smp) {
        run->fn(run->wl, i, &run->jobs[i]);
    }
    return NULL;
}

/* Run @fn once per share, on as many threads as there are CPUs (at most one per share). Results are per share,
 * so that what is reported does not depend on which thread got there first. */
static void run_shares(Workload *wl, ShareJob *jobs, void (*fn)(Workload *wl, unsigned share, ShareJob *job))
{
    ShareRun run = { .wl = wl, .jobs = jobs, .fn = fn };
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    unsigned nthreads = ncpu < 1 ? 1 : (unsigned)ncpu;
    pthread_t threads[WORKLOAD_MAX_SMP];
    unsigned started = 0;

    atomic_init(&run.next, 0);
    if (nthreads > wl->cfg.smp) {
        nthreads = wl->cfg.smp;
    }
    /* The calling thread is one of the runners; a thread that cannot be created just means less parallelism. */
    for (unsigned i = 1; i < nthreads; i++) {
        if (pthread_create(&threads[started], NULL, share_run_main, &run) == 0) {
            started++;
        }
    }
    share_run_main(&run);
    for (unsigned i = 0; i < started; i++) {
        pthread_join(threads[i], NULL);
    }
}

static void share_record(ShareJob *job, const char *text)
{
    job->mismatches++;
    if (job->nrec < WORKLOAD_DETAIL_MAX) {
        snprintf(job->rec[job->nrec++], sizeof(job->rec[0]), "%s", text);
    }
}

static void fill_share(Workload *wl, unsigned share, ShareJob *job)
{
    const WorkloadWorker *w = &wl->workers[share];

    for (uint64_t i = w->start; i < w->end; i++) {
        if (page_is_filled(wl, i)) {
            workload_page_write(page_ptr(wl, i, NULL, NULL), wl->page_size, wl->cfg.seed, i, 1);
        }
    }
}

bool workload_fill(Workload *wl, FerryError **errp)
{
    ShareJob *jobs;

    /* File-backed RAM is the file's content (WorkloadConfig.mem_path): overwriting it would defeat the point. */
    if (wl->cfg.mem_path[0] || wl->cfg.pattern == WORKLOAD_PATTERN_AB || wl->cfg.pattern == WORKLOAD_PATTERN_ZERO) {
        return true;
    }
    jobs = calloc(wl->cfg.smp, sizeof(*jobs));
    if (!jobs) {
        ferry_error_setg(errp, "out of memory");
        return false;
    }
    run_shares(wl, jobs, fill_share);
    free(jobs);
    return true;
}

/*
 * ab: a parked worker has incremented pages [start, cursor) passes + 1 times and [cursor, end) passes times
 * (mod 256). That is QEMU's "at most one boundary" rule made exact: the boundary must sit where the worker's
 * saved cursor says, so a page written just before the stop but never sent shows up too. ab writes only the
 * first byte of a page; the rest must stay zero.
 */
static void check_share_ab(Workload *wl, unsigned share, ShareJob *job)
{
    const WorkloadWorker *w = &wl->workers[share];
    uint64_t passes = atomic_load(&w->passes);
    char text[160];

    for (uint64_t i = w->start; i < w->end; i++) {
        const uint8_t *p = page_ptr(wl, i, NULL, NULL);
        uint8_t expected = (uint8_t)(passes + (i < w->cursor ? 1 : 0));

        if (p[0] != expected) {
            snprintf(text, sizeof(text),
                     "page %" PRIu64 ": first byte 0x%02x, expected 0x%02x (worker %u: cursor %" PRIu64
                     ", passes %" PRIu64 ")",
                     i, p[0], expected, share, w->cursor, passes);
            share_record(job, text);
        } else if (memcmp(p + 1, wl->zero_page, wl->page_size - 1) != 0) {
            size_t off = 1;

            while (p[off] == 0) {
                off++;
            }
            snprintf(text, sizeof(text), "page %" PRIu64 ": byte %zu is 0x%02x, expected 0 (ab writes byte 0 only)",
                     i, off, p[off]);
            share_record(job, text);
        }
    }
}

/*
 * random/zero/half: every page must be valid on its own (pattern.c), and because each write raises one page's
 * generation by one, the generations of a share must add up to its filled pages plus the worker's pages-written
 * counter. The sum catches a page that is valid but stale (an older generation that was never resent).
 */
static void check_share_random(Workload *wl, unsigned share, ShareJob *job)
{
    const WorkloadWorker *w = &wl->workers[share];
    uint64_t written = atomic_load(&w->pages_written);
    uint64_t expected_sum = filled_pages(wl, w->start, w->end) + written;
    uint64_t sum = 0;
    char text[160];

    for (uint64_t i = w->start; i < w->end; i++) {
        uint64_t gen;

        if (!workload_page_verify(page_ptr(wl, i, NULL, NULL), wl->page_size, wl->zero_page, wl->cfg.seed, i,
                                  &gen, text, sizeof(text))) {
            share_record(job, text);
        } else if (gen == 0 && page_is_filled(wl, i)) {
            snprintf(text, sizeof(text), "page %" PRIu64 ": zero, expected a written page (the fill wrote it)", i);
            share_record(job, text);
        }
        sum += gen;
    }
    if (job->mismatches == 0 && sum != expected_sum) {
        snprintf(text, sizeof(text),
                 "pages %" PRIu64 "-%" PRIu64 " (worker %u): generations add up to %" PRIu64 ", expected %" PRIu64
                 " (%" PRIu64 " filled + %" PRIu64 " written): a page is stale",
                 w->start, w->end - 1, share, sum, expected_sum, filled_pages(wl, w->start, w->end), written);
        share_record(job, text);
    }
}

bool workload_check(Workload *wl, WorkloadCheck *res, FerryError **errp)
{
    ShareJob *jobs = calloc(wl->cfg.smp, sizeof(*jobs));
    size_t len = 0;
    unsigned shown = 0;

    if (wl->cfg.mem_path[0]) {
        free(jobs);
        ferry_error_setg(errp, "RAM is backed by memory-backend-file and holds the file's content, not a pattern: "
                         "compare query-ram-digest instead");
        return false;
    }
    if (!jobs) {
        ferry_error_setg(errp, "out of memory");
        return false;
    }
    workload_hold(wl);
    run_shares(wl, jobs, wl->cfg.pattern == WORKLOAD_PATTERN_AB ? check_share_ab : check_share_random);
    workload_release(wl);

    res->pages = wl->pages;
    res->mismatches = 0;
    res->detail[0] = '\0';
    for (unsigned i = 0; i < wl->cfg.smp; i++) {
        res->mismatches += jobs[i].mismatches;
        for (unsigned r = 0; r < jobs[i].nrec && shown < WORKLOAD_DETAIL_MAX; r++, shown++) {
            int n = snprintf(res->detail + len, sizeof(res->detail) - len, "%s%s", len ? "; " : "", jobs[i].rec[r]);

            if (n > 0) {
                len += (size_t)n < sizeof(res->detail) - len ? (size_t)n : sizeof(res->detail) - len - 1;
            }
        }
    }
    if (res->mismatches > shown && len + 32 < sizeof(res->detail)) {
        snprintf(res->detail + len, sizeof(res->detail) - len, "; %" PRIu64 " more", res->mismatches - shown);
    }
    free(jobs);
    return true;
}

bool workload_digest(Workload *wl, char hex[33], uint64_t *size, FerryError **errp)
{
    XXH3_state_t *state = XXH3_createState();
    XXH128_canonical_t canon;
    uint64_t total = 0;

    if (!state) {
        ferry_error_setg(errp, "out of memory");
        return false;
    }
    XXH3_128bits_reset(state);
    workload_hold(wl);
    for (unsigned i = 0; i < wl->nblocks; i++) {
        uint64_t bsize = ferry_ram_block_size(wl->blocks[i]);

        XXH3_128bits_update(state, wl->block_host[i], (size_t)bsize);
        total += bsize;
    }
    workload_release(wl);
    XXH128_canonicalFromHash(&canon, XXH3_128bits_digest(state));
    XXH3_freeState(state);
    for (size_t i = 0; i < sizeof(canon.digest); i++) {
        snprintf(hex + 2 * i, 3, "%02x", canon.digest[i]);
    }
    *size = total;
    return true;
}

/* ---- Device state ---- */

typedef struct WorkerState {
    uint64_t cursor, rng, passes, pages_written;
} WorkerState;

static bool visit_workers(Workload *wl, FerryVisitor *v, WorkerState *ws, FerryError **errp)
{
    uint32_t count = wl->cfg.smp;

    if (!ferry_visit_start_list(v, "workers", &count, wl->cfg.smp, errp)) {
        return false;
    }
    if (count != wl->cfg.smp) {
        ferry_error_setg(errp, "incoming workload state has %" PRIu32 " workers, this process runs -smp %u", count,
                         wl->cfg.smp);
        return false;
    }
    for (uint32_t i = 0; i < count; i++) {
        if (!ferry_visit_start_struct(v, "worker", errp) ||
            !ferry_visit_u64(v, "cursor", &ws[i].cursor, errp) ||
            !ferry_visit_u64(v, "rng", &ws[i].rng, errp) ||
            !ferry_visit_u64(v, "passes", &ws[i].passes, errp) ||
            !ferry_visit_u64(v, "pages-written", &ws[i].pages_written, errp) ||
            !ferry_visit_end_struct(v, errp)) {
            return false;
        }
    }
    return ferry_visit_end_list(v, errp);
}

/* The fields that identify the workload; on load each must match this process's command line. */
static bool visit_identity(Workload *wl, FerryVisitor *v, bool load, FerryError **errp)
{
    char *pattern = strdup(workload_pattern_name(wl->cfg.pattern));
    uint64_t seed = wl->cfg.seed, pages = wl->pages, page_size = wl->page_size;
    uint32_t smp = wl->cfg.smp;
    bool ok = false;

    if (!pattern) {
        ferry_error_setg(errp, "out of memory");
        return false;
    }
    if (!ferry_visit_str(v, "pattern", &pattern, errp)) {
        goto out;
    }
    if (load && strcmp(pattern, workload_pattern_name(wl->cfg.pattern)) != 0) {
        ferry_error_setg(errp, "incoming workload state has -pattern %s, this process runs -pattern %s", pattern,
                         workload_pattern_name(wl->cfg.pattern));
        goto out;
    }
    if (!ferry_visit_u64(v, "seed", &seed, errp)) {
        goto out;
    }
    if (load && seed != wl->cfg.seed) {
        ferry_error_setg(errp, "incoming workload state has -seed %" PRIu64 ", this process runs -seed %" PRIu64,
                         seed, wl->cfg.seed);
        goto out;
    }
    if (!ferry_visit_u32(v, "smp", &smp, errp)) {
        goto out;
    }
    if (load && smp != wl->cfg.smp) {
        ferry_error_setg(errp, "incoming workload state has -smp %" PRIu32 ", this process runs -smp %u", smp,
                         wl->cfg.smp);
        goto out;
    }
    if (!ferry_visit_u64(v, "page-size", &page_size, errp) || !ferry_visit_u64(v, "pages", &pages, errp)) {
        goto out;
    }
    if (load && (page_size != wl->page_size || pages != wl->pages)) {
        ferry_error_setg(errp,
                         "incoming workload state has %" PRIu64 " pages of %" PRIu64 " bytes, this process has -m %"
                         PRIu64 " (%" PRIu64 " pages of %zu bytes)",
                         pages, page_size, wl->cfg.ram_size, wl->pages, wl->page_size);
        goto out;
    }
    ok = true;
out:
    free(pattern);
    return ok;
}

static bool workload_section(FerryVisitor *v, void *opaque, uint32_t version, FerryError **errp)
{
    Workload *wl = opaque;
    bool load = ferry_visitor_kind(v) == FERRY_VISITOR_INPUT;
    WorkerState *ws;
    bool ok = false;

    if (load && version != 1) {
        ferry_error_setg(errp, "workload state version %" PRIu32 " is not supported (this program reads version 1)",
                         version);
        return false;
    }
    ws = calloc(wl->cfg.smp, sizeof(*ws));
    if (!ws) {
        ferry_error_setg(errp, "out of memory");
        return false;
    }
    /* The engine saves and loads with the workload stopped; holding as well makes that true by construction. */
    workload_hold(wl);
    if (!load) {
        for (unsigned i = 0; i < wl->cfg.smp; i++) {
            const WorkloadWorker *w = &wl->workers[i];

            ws[i] = (WorkerState){ w->cursor, w->rng, atomic_load(&w->passes), atomic_load(&w->pages_written) };
        }
    }
    if (!ferry_visit_start_struct(v, "workload", errp) || !visit_identity(wl, v, load, errp) ||
        !visit_workers(wl, v, ws, errp) || !ferry_visit_end_struct(v, errp)) {
        goto out;
    }
    if (load) {
        /* Check everything before applying anything, so that a refused stream leaves the workers as they were. */
        for (unsigned i = 0; i < wl->cfg.smp; i++) {
            const WorkloadWorker *w = &wl->workers[i];

            if (ws[i].cursor < w->start || ws[i].cursor >= w->end ||
                (wl->cfg.pattern != WORKLOAD_PATTERN_AB && ws[i].cursor != w->start)) {
                ferry_error_setg(errp, "incoming workload state: worker %u has cursor %" PRIu64
                                 " outside its pages %" PRIu64 "-%" PRIu64,
                                 i, ws[i].cursor, w->start, w->end - 1);
                goto out;
            }
        }
        for (unsigned i = 0; i < wl->cfg.smp; i++) {
            WorkloadWorker *w = &wl->workers[i];

            w->cursor = ws[i].cursor;
            w->rng = ws[i].rng;
            atomic_store(&w->passes, ws[i].passes);
            atomic_store(&w->pages_written, ws[i].pages_written);
        }
    }
    ok = true;
out:
    workload_release(wl);
    free(ws);
    return ok;
}

bool workload_register(Workload *wl, FerryMigration *m, FerryError **errp)
{
    uint64_t bytes_per_block = wl->pages_per_block * wl->page_size;

    wl->m = m;
    for (unsigned i = 0; i < wl->nblocks; i++) {
        uint64_t left = wl->cfg.ram_size - (uint64_t)i * bytes_per_block;
        char name[32];

        snprintf(name, sizeof(name), "ram%u", i);
        uint64_t size = left < bytes_per_block ? left : bytes_per_block;
        if (wl->cfg.mem_path[0]) {
            wl->blocks[i] = ferry_ram_block_new_file(m, name, size, wl->cfg.mem_path, (uint64_t)i * bytes_per_block,
                                                     wl->cfg.file_share, errp);
        } else if (wl->cfg.mem_dir[0]) {
            wl->blocks[i] = ferry_ram_block_new_tmpfile(m, name, size, wl->cfg.mem_dir, wl->cfg.file_share, errp);
        } else if (wl->cfg.hugetlb) {
            wl->blocks[i] = ferry_ram_block_new_hugetlb(m, name, size, wl->cfg.memfd_share, wl->cfg.hugetlbsize,
                                                        errp);
        } else {
            wl->blocks[i] = wl->cfg.memfd ? ferry_ram_block_new_memfd(m, name, size, wl->cfg.memfd_share, errp)
                                          : ferry_ram_block_new(m, name, size, errp);
        }
        if (!wl->blocks[i]) {
            ferry_error_prepend(errp, "registering RAM block %s: ", name);
            return false;
        }
        wl->block_host[i] = ferry_ram_block_host(wl->blocks[i]);
        if (wl->cfg.mem_prealloc &&
            !ferry_ram_block_prealloc_threads(wl->blocks[i], wl->cfg.prealloc_threads, errp)) {
            ferry_error_prepend(errp, "-mem-prealloc: ");
            return false;
        }
    }
    if (!ferry_migration_register_section(m, "workload", 0, 1, workload_section, wl, errp)) {
        return false;
    }
    ferry_migration_set_dirty_tracker(m, wl->cfg.tracker);
    return true;
}
