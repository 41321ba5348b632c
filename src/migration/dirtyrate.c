/*
 * Dirty-rate measurement without migrating (QEMU's calc-dirty-rate / query-dirty-rate): how fast the workload
 * dirties its RAM, measured on a thread of its own for calc-time, in one of QEMU's modes:
 * - page-sampling: a fixed set of pages chosen at random (sample-pages per GiB of each block) is hashed at the
 *   start and at the end; the share of sampled pages that changed, times the RAM, over the time, is the rate.
 *   It sees only pages whose content changed, and a page written several times counts once.
 * - dirty-bitmap: the engine's dirty tracker (the host's own when it registered one) runs for calc-time and the
 *   pages of one harvest are counted. It owns the tracker, so it excludes a migration and the reverse.
 * - dirty-ring: per-writer rates (QEMU: per vCPU, from its KVM dirty ring) from the host's writer counters
 *   (FerryHostOps.writer_stats): each writer's pages dirtied over calc-time is its rate, and the rate is their sum.
 *   What a writer's count means is the host's (ferry-workload: pages its worker wrote; ferry-vm: ring entries). A
 *   host that cannot count per writer has the mode refused with its reason.
 * Rates are in MB/s with QEMU's MB (2^20 bytes). This file holds no QMP parsing (qmp-cmds.c) and no text
 * (hmp.c); the argument checks and their messages (QEMU's) are here, so that QMP and HMP share them.
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "migration/migration-priv.h"
#include "ram/ram.h"
#include "util/bitmap.h"
#include "util/util.h"

typedef enum DirtyRateStatus {
    DR_UNSTARTED,
    DR_MEASURING,
    DR_MEASURED,
} DirtyRateStatus;

struct FerryDirtyRate {
    pthread_mutex_t lock;
    pthread_cond_t cond;     /* signalled on cancel, so that the measurement's wait ends at once */
    pthread_t thread;
    bool thread_joinable;
    bool cancel;
    DirtyRateStatus status;
    FerryDirtyRateConfig cfg;
    int64_t start_time_s;    /* monotonic seconds, when the measurement started (QEMU's start-time) */
    int64_t rate_mbps;       /* valid once measured */
    int64_t *vcpu_rates;     /* dirty-ring: each writer's rate, valid once measured */
    int nvcpu;
    char *error;             /* why the last measurement failed (reported by query-dirty-rate), or NULL */
    FerryMigration *m;
};

static const char *const mode_names[] = {
    [FERRY_DIRTYRATE_PAGE_SAMPLING] = "page-sampling",
    [FERRY_DIRTYRATE_DIRTY_BITMAP] = "dirty-bitmap",
    [FERRY_DIRTYRATE_DIRTY_RING] = "dirty-ring",
};

static const char *const status_names[] = {
    [DR_UNSTARTED] = "unstarted",
    [DR_MEASURING] = "measuring",
    [DR_MEASURED] = "measured",
};

bool ferry__dirtyrate_mode_parse(const char *name, FerryDirtyRateMode *mode, FerryError **errp)
{
    for (size_t i = 0; i < FERRY_ARRAY_SIZE(mode_names); i++) {
        if (name && strcmp(name, mode_names[i]) == 0) {
            *mode = (FerryDirtyRateMode)i;
            return true;
        }
    }
    ferry_error_setg(errp, "Parameter 'mode' does not accept value '%s'", name ? name : "");
    return false;
}

bool ferry__dirtyrate_unit_parse(const char *name, bool *unit_ms, FerryError **errp)
{
    if (name && strcmp(name, "second") == 0) {
        *unit_ms = false;
        return true;
    }
    if (name && strcmp(name, "millisecond") == 0) {
        *unit_ms = true;
        return true;
    }
    ferry_error_setg(errp, "Parameter 'calc-time-unit' does not accept value '%s'", name ? name : "");
    return false;
}

uint64_t ferry__dirtyrate_extrapolate(uint64_t changed, uint64_t sampled, uint64_t ram_bytes, int64_t elapsed_ms)
{
    if (sampled == 0 || elapsed_ms <= 0) {
        return 0;
    }
    /* changed/sampled of the RAM was dirtied in elapsed_ms; in MB/s. Long double keeps 2^64-byte RAM exact
     * enough and avoids the overflow of changed * ram_bytes. */
    long double mb = (long double)changed / (long double)sampled * (long double)ram_bytes / 1048576.0L;
    return (uint64_t)(mb * 1000.0L / (long double)elapsed_ms + 0.5L);
}

uint64_t ferry__dirtyrate_samples_for_block(uint64_t sample_pages_per_gib, uint64_t block_bytes, uint64_t npages)
{
    /* Rounded up, so that a block smaller than 1 GiB / sample-pages still gets a sample: QEMU skips blocks under
     * 128 MiB, but ferry-workload's RAM may be all in such blocks. */
    uint64_t n = (uint64_t)(((unsigned __int128)sample_pages_per_gib * block_bytes + (1ull << 30) - 1) >> 30);
    return n > npages ? npages : n;
}

/* Wait @ms from @start_ms or until cancelled. False if cancelled. */
static bool wait_calc_time(FerryDirtyRate *d, int64_t start_ms, int64_t ms)
{
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    int64_t left = start_ms + ms - ferry__clock_ms();
    if (left < 0) {
        left = 0;
    }
    deadline.tv_sec += left / 1000;
    deadline.tv_nsec += (left % 1000) * 1000000;
    if (deadline.tv_nsec >= 1000000000) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000;
    }
    pthread_mutex_lock(&d->lock);
    while (!d->cancel && ferry__clock_ms() < start_ms + ms) {
        if (pthread_cond_timedwait(&d->cond, &d->lock, &deadline) != 0) {
            break;
        }
    }
    bool ok = !d->cancel;
    pthread_mutex_unlock(&d->lock);
    return ok;
}

static uint64_t rng_next(uint64_t *s)
{
    /* xorshift64*: enough to spread samples over a block; not a security matter. */
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * UINT64_C(2685821657736338717);
}

typedef struct Sample {
    size_t block;
    uint64_t page;
    uint32_t hash;
} Sample;

static bool measure_page_sampling(FerryDirtyRate *d, int64_t *rate, FerryError **errp)
{
    FerryMigration *m = d->m;
    size_t page_size = ferry_ram_page_size();
    uint64_t seed = (uint64_t)ferry__clock_ms() * UINT64_C(0x9e3779b97f4a7c15) | 1;
    Sample *s = NULL;
    size_t n = 0, cap = 0;
    uint64_t ram_bytes = 0;

    for (size_t b = 0; b < m->nblocks; b++) {
        FerryRamBlock *blk = m->blocks[b];
        uint64_t count = ferry__dirtyrate_samples_for_block((uint64_t)d->cfg.sample_pages, blk->npages * page_size,
                                                            blk->npages);
        ram_bytes += blk->npages * page_size;
        for (uint64_t i = 0; i < count; i++) {
            if (n == cap) {
                cap = cap ? cap * 2 : 1024;
                s = ferry__xrealloc(s, cap * sizeof(*s));
            }
            s[n].block = b;
            s[n].page = rng_next(&seed) % blk->npages;
            s[n].hash = ferry__crc32c(0, blk->host + s[n].page * page_size, page_size);
            n++;
        }
    }
    int64_t t0 = ferry__clock_ms();
    if (!wait_calc_time(d, t0, d->cfg.calc_time_ms)) {
        free(s);
        ferry_error_setg(errp, "the measurement was cancelled");
        return false;
    }
    uint64_t changed = 0;
    for (size_t i = 0; i < n; i++) {
        FerryRamBlock *blk = m->blocks[s[i].block];
        changed += ferry__crc32c(0, blk->host + s[i].page * page_size, page_size) != s[i].hash;
    }
    int64_t elapsed = ferry__clock_ms() - t0;
    free(s);
    *rate = (int64_t)ferry__dirtyrate_extrapolate(changed, n, ram_bytes, elapsed);
    return true;
}

static bool measure_dirty_bitmap(FerryDirtyRate *d, int64_t *rate, FerryError **errp)
{
    FerryMigration *m = d->m;
    size_t page_size = ferry_ram_page_size();
    FerryDirtyTracker *t = m->tracker_kind == FERRY_TRACKER_HOST
                               ? ferry__tracker_start_host(m->host_tracker, m->host_tracker_opaque, m->blocks,
                                                           m->nblocks, errp)
                               : ferry__tracker_start(m->tracker_kind, m->blocks, m->nblocks, errp);
    if (!t) {
        return false;
    }
    if (ferry__tracker_is_none(t)) {
        const char *note = ferry__tracker_note(t);
        ferry_error_setg(errp, "mode dirty-bitmap: this host has no dirty tracker that sees writes%s%s",
                         note ? ": " : "", note ? note : "");
        ferry__tracker_stop(t);
        return false;
    }
    int64_t t0 = ferry__clock_ms();
    if (!wait_calc_time(d, t0, d->cfg.calc_time_ms)) {
        ferry__tracker_stop(t);
        ferry_error_setg(errp, "the measurement was cancelled");
        return false;
    }
    uint64_t dirty = 0;
    bool ok = true;
    for (size_t b = 0; b < m->nblocks && ok; b++) {
        FerryRamBlock *blk = m->blocks[b];
        unsigned long *map = ferry__bitmap_new((size_t)blk->npages);
        ok = ferry__tracker_harvest(t, blk, map, errp);
        dirty += ferry__bitmap_count(map, (size_t)blk->npages);
        free(map);
    }
    int64_t elapsed = ferry__clock_ms() - t0;
    ferry__tracker_stop(t);
    if (!ok) {
        return false;
    }
    /* Every page is seen: the "sample" is the whole RAM. */
    *rate = (int64_t)ferry__dirtyrate_extrapolate(dirty, 1, page_size, elapsed);
    return true;
}

/* The writers' counts before and after calc-time. *vcpu (allocated) gets each writer's rate, *n their number. */
static bool measure_dirty_ring(FerryDirtyRate *d, int64_t *rate, int64_t **vcpu, int *n, FerryError **errp)
{
    FerryMigration *m = d->m;
    const char *why;
    int n0, n1;
    FerryWriterStats *before = ferry__dirtylimit_stats(m, &n0, &why);
    if (!before) {
        ferry_error_setg(errp, "mode dirty-ring: %s", why);
        return false;
    }
    int64_t t0 = ferry__clock_ms();
    if (!wait_calc_time(d, t0, d->cfg.calc_time_ms)) {
        free(before);
        ferry_error_setg(errp, "the measurement was cancelled");
        return false;
    }
    FerryWriterStats *after = ferry__dirtylimit_stats(m, &n1, &why);
    int64_t elapsed = ferry__clock_ms() - t0;
    if (!after) {
        free(before);
        ferry_error_setg(errp, "mode dirty-ring: %s", why);
        return false;
    }
    *n = n0 < n1 ? n0 : n1;
    *vcpu = ferry__xcalloc((size_t)(*n ? *n : 1), sizeof(int64_t));
    *rate = 0;
    for (int i = 0; i < *n; i++) {
        (*vcpu)[i] = (int64_t)ferry__dirtyrate_extrapolate(after[i].dirty_pages - before[i].dirty_pages, 1,
                                                           ferry_ram_page_size(), elapsed);
        *rate += (*vcpu)[i];
    }
    free(before);
    free(after);
    return true;
}

static void *dirtyrate_thread(void *opaque)
{
    FerryDirtyRate *d = opaque;
    FerryError *err = NULL;
    int64_t rate = 0, *vcpu = NULL;
    int nvcpu = 0;
    bool ok = d->cfg.mode == FERRY_DIRTYRATE_PAGE_SAMPLING ? measure_page_sampling(d, &rate, &err)
              : d->cfg.mode == FERRY_DIRTYRATE_DIRTY_RING  ? measure_dirty_ring(d, &rate, &vcpu, &nvcpu, &err)
                                                           : measure_dirty_bitmap(d, &rate, &err);
    pthread_mutex_lock(&d->lock);
    d->rate_mbps = ok ? rate : 0;
    free(d->vcpu_rates);
    d->vcpu_rates = vcpu;
    d->nvcpu = nvcpu;
    if (!ok) {
        d->error = ferry__xstrdup(ferry_error_msg(err));
        ferry__log(FERRY_LOG_WARN, "calc-dirty-rate: %s", d->error);
        ferry_error_free(err);
    }
    /* QEMU also ends in "measured" when it could not measure; the error member says why. */
    d->status = DR_MEASURED;
    pthread_mutex_unlock(&d->lock);
    return NULL;
}

static FerryDirtyRate *dirtyrate_get(FerryMigration *m)
{
    if (!m->dirtyrate) {
        FerryDirtyRate *d = ferry__xcalloc(1, sizeof(*d));
        pthread_mutex_init(&d->lock, NULL);
        pthread_cond_init(&d->cond, NULL);
        d->m = m;
        d->cfg.calc_time_ms = 0;
        d->cfg.sample_pages = FERRY_DIRTYRATE_DEFAULT_SAMPLE_PAGES;
        m->dirtyrate = d;
    }
    return m->dirtyrate;
}

static bool dirtyrate_measuring(FerryDirtyRate *d, FerryDirtyRateMode *mode)
{
    pthread_mutex_lock(&d->lock);
    bool busy = d->status == DR_MEASURING;
    if (mode) {
        *mode = d->cfg.mode;
    }
    pthread_mutex_unlock(&d->lock);
    return busy;
}

bool ferry__dirtyrate_calc(FerryMigration *m, const FerryDirtyRateConfig *cfg_in, FerryError **errp)
{
    FerryDirtyRate *d = dirtyrate_get(m);
    if (dirtyrate_measuring(d, NULL)) {
        ferry_error_setg(errp, "the dirty rate is already being measured.");
        return false;
    }
    FerryDirtyRateConfig cfg = *cfg_in;
    /* calc-time in its unit, checked before converting so that a huge number of seconds cannot wrap. */
    int64_t ms = cfg.calc_time_ms;
    if (ms < FERRY_DIRTYRATE_MIN_CALC_TIME_MS || ms > FERRY_DIRTYRATE_MAX_CALC_TIME_MS) {
        ferry_error_setg(errp, "Calculation time is out of range [%dms, %dms].", FERRY_DIRTYRATE_MIN_CALC_TIME_MS,
                         FERRY_DIRTYRATE_MAX_CALC_TIME_MS);
        return false;
    }
    if (cfg.has_sample_pages && cfg.mode != FERRY_DIRTYRATE_PAGE_SAMPLING) {
        ferry_error_setg(errp, "sample-pages is used only in page-sampling mode");
        return false;
    }
    if (cfg.has_sample_pages) {
        if (cfg.sample_pages < FERRY_DIRTYRATE_MIN_SAMPLE_PAGES || cfg.sample_pages > FERRY_DIRTYRATE_MAX_SAMPLE_PAGES) {
            ferry_error_setg(errp, "sample-pages is out of range[%d, %d].", FERRY_DIRTYRATE_MIN_SAMPLE_PAGES,
                             FERRY_DIRTYRATE_MAX_SAMPLE_PAGES);
            return false;
        }
    } else {
        cfg.sample_pages = FERRY_DIRTYRATE_DEFAULT_SAMPLE_PAGES;
    }
    const char *why;
    if (cfg.mode == FERRY_DIRTYRATE_DIRTY_RING && !ferry__dirtylimit_supported(m, &why)) {
        ferry_error_setg(errp, "mode dirty-ring is not enabled, use other method instead. (%s)", why);
        return false;
    }
    if (cfg.mode == FERRY_DIRTYRATE_DIRTY_BITMAP) {
        ferry__mutex_lock(&m->lock);
        bool migrating = !ferry__migration_status_terminal(m->status);
        bool inmigrate = m->runstate == FERRY_RUN_INMIGRATE;
        ferry__mutex_unlock(&m->lock);
        if (migrating || inmigrate) {
            ferry_error_setg(errp, "mode dirty-bitmap cannot measure while %s: the migration owns the dirty "
                             "tracker (use page-sampling)",
                             migrating ? "a migration is running" : "waiting for an incoming migration");
            return false;
        }
    }
    if (m->nblocks == 0) {
        ferry_error_setg(errp, "no RAM is registered: there is nothing to measure");
        return false;
    }
    if (d->thread_joinable) {
        pthread_join(d->thread, NULL);
        d->thread_joinable = false;
    }
    pthread_mutex_lock(&d->lock);
    d->cfg = cfg;
    d->status = DR_MEASURING;
    d->cancel = false;
    d->rate_mbps = 0;
    free(d->error);
    d->error = NULL;
    d->start_time_s = ferry__clock_ms() / 1000;
    pthread_mutex_unlock(&d->lock);
    int rc = pthread_create(&d->thread, NULL, dirtyrate_thread, d);
    if (rc != 0) {
        pthread_mutex_lock(&d->lock);
        d->status = DR_UNSTARTED;
        pthread_mutex_unlock(&d->lock);
        ferry_error_setg_errno(errp, rc, "cannot create the dirty rate thread");
        return false;
    }
    pthread_setname_np(d->thread, "dirtyrate");
    d->thread_joinable = true;
    return true;
}

json_t *ferry__dirtyrate_query(FerryMigration *m, bool unit_ms)
{
    FerryDirtyRate *d = dirtyrate_get(m);
    pthread_mutex_lock(&d->lock);
    int64_t calc_time = unit_ms ? d->cfg.calc_time_ms : d->cfg.calc_time_ms / 1000;
    json_t *r = json_pack("{s:s, s:I, s:I, s:s, s:I, s:s}", "status", status_names[d->status], "start-time",
                          (json_int_t)d->start_time_s, "calc-time", (json_int_t)calc_time, "calc-time-unit",
                          unit_ms ? "millisecond" : "second", "sample-pages",
                          (json_int_t)(d->cfg.mode == FERRY_DIRTYRATE_PAGE_SAMPLING ? d->cfg.sample_pages : 0),
                          "mode", mode_names[d->cfg.mode]);
    if (d->status == DR_MEASURED && !d->error) {
        json_object_set_new(r, "dirty-rate", json_integer(d->rate_mbps));
    }
    if (d->status == DR_MEASURED && !d->error && d->cfg.mode == FERRY_DIRTYRATE_DIRTY_RING) {
        json_t *v = json_array();
        for (int i = 0; i < d->nvcpu; i++) {
            json_array_append_new(v, json_pack("{s:i, s:I}", "id", i, "dirty-rate", (json_int_t)d->vcpu_rates[i]));
        }
        json_object_set_new(r, "vcpu-dirty-rate", v);
    }
    if (d->error) {
        /* ferry's own member: QEMU reports a failed measurement only in its log. */
        json_object_set_new(r, "error-desc", json_string(d->error));
    }
    pthread_mutex_unlock(&d->lock);
    return r;
}

bool ferry__dirtyrate_check_migrate(FerryMigration *m, FerryError **errp)
{
    FerryDirtyRateMode mode;
    if (m->dirtyrate && dirtyrate_measuring(m->dirtyrate, &mode) && mode == FERRY_DIRTYRATE_DIRTY_BITMAP) {
        ferry_error_setg(errp, "a calc-dirty-rate measurement in mode dirty-bitmap is running and owns the dirty "
                         "tracker: wait until query-dirty-rate says measured");
        return false;
    }
    return true;
}

void ferry__dirtyrate_free(FerryMigration *m)
{
    FerryDirtyRate *d = m->dirtyrate;
    if (!d) {
        return;
    }
    pthread_mutex_lock(&d->lock);
    d->cancel = true;
    pthread_cond_broadcast(&d->cond);
    pthread_mutex_unlock(&d->lock);
    if (d->thread_joinable) {
        pthread_join(d->thread, NULL);
    }
    pthread_cond_destroy(&d->cond);
    pthread_mutex_destroy(&d->lock);
    free(d->error);
    free(d->vcpu_rates);
    free(d);
    m->dirtyrate = NULL;
}
