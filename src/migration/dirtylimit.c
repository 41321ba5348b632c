/*
 * dirty-limit, the engine's side (QEMU 8.1's dirty page rate limit): the commands set-vcpu-dirty-limit,
 * cancel-vcpu-dirty-limit and query-vcpu-dirty-limit, and the dirty-limit capability's part of an outgoing
 * migration (hold every writer to vcpu-dirty-limit once auto-converge's trigger rule fires, report the throttle in
 * query-migrate, lift it when the migration ends). Counting and sleeping are the host's (FerryHostOps.writer_stats
 * and dirty_limit, include/ferry/host.h): this file only decides and reports. It keeps no copy of the limits: the
 * host's counters say which writer has which, so a query never disagrees with what the writers do.
 *
 * Not here: the trigger rule (source.c, shared with auto-converge), the parameters and the capability's checks
 * (params.c), QMP/HMP text (qmp-cmds.c, hmp.c).
 */
#include <string.h>

#include "migration/migration-priv.h"
#include "util/util.h"

/* QEMU measures the vCPUs' rates over 1 s when no migration with dirty-limit sets the period. */
#define DIRTYLIMIT_CALC_PERIOD_MS 1000

typedef struct FerryDirtyLimitRun FerryDirtyLimitRun;

struct FerryDirtyLimitRun {
    int64_t limit_mbps;      /* what the migration holds the writers to */
    int64_t period_ms;
    int n;                   /* writers at the last pass */
    uint64_t *throttle_prev; /* their throttle_us / ring_full_us then */
    uint64_t *ring_prev;
    int64_t prev_ms;
};

bool ferry__dirtylimit_supported(FerryMigration *m, const char **why)
{
    *why = "this host cannot count or limit the dirty pages of its writers";
    if (!m->host_ops.writer_stats || !m->host_ops.dirty_limit) {
        return false;
    }
    return m->host_ops.writer_stats(m->host_opaque, NULL, 0, why) > 0;
}

FerryWriterStats *ferry__dirtylimit_stats(FerryMigration *m, int *n, const char **why)
{
    *why = "this host cannot count or limit the dirty pages of its writers";
    *n = 0;
    if (!m->host_ops.writer_stats || !m->host_ops.dirty_limit) {
        return NULL;
    }
    int count = m->host_ops.writer_stats(m->host_opaque, NULL, 0, why);
    if (count <= 0) {
        return NULL;
    }
    FerryWriterStats *st = ferry__xcalloc((size_t)count, sizeof(*st));
    int got = m->host_ops.writer_stats(m->host_opaque, st, count, why);
    if (got <= 0) {
        free(st);
        return NULL;
    }
    *n = got < count ? got : count;
    return st;
}

/*
 * QEMU's rule: the operator may not change the limits while a migration that uses them runs (the migration's
 * thread itself may). "Uses them": an outgoing migration with the capability on, while some writer has a limit.
 */
static bool manual_change_allowed(FerryMigration *m, const FerryWriterStats *st, int n)
{
    ferry__mutex_lock(&m->lock);
    bool running = !m->incoming && !ferry__migration_status_terminal(m->status) && m->caps[FERRY_CAP_DIRTY_LIMIT];
    ferry__mutex_unlock(&m->lock);
    bool in_service = false;
    for (int i = 0; i < n; i++) {
        in_service |= st[i].limit_mbps != 0;
    }
    return !(running && in_service);
}

bool ferry__dirtylimit_cancel(FerryMigration *m, int64_t index, FerryError **errp)
{
    int n;
    const char *why;
    FerryWriterStats *st = ferry__dirtylimit_stats(m, &n, &why);
    if (!st) {
        return true; /* as QEMU: nothing can be limited, so there is nothing to cancel */
    }
    bool ok = false;
    if (index >= n || (index < 0 && index != -1)) {
        ferry_error_setg(errp, "incorrect cpu index specified");
    } else if (!manual_change_allowed(m, st, n)) {
        ferry_error_setg(errp, "can't cancel dirty page rate limit while migration is running");
    } else {
        m->host_ops.dirty_limit(m->host_opaque, (int)index, 0, DIRTYLIMIT_CALC_PERIOD_MS);
        ok = true;
    }
    free(st);
    return ok;
}

bool ferry__dirtylimit_set(FerryMigration *m, int64_t index, uint64_t mbps, FerryError **errp)
{
    int n;
    const char *why;
    FerryWriterStats *st = ferry__dirtylimit_stats(m, &n, &why);
    if (!st) {
        ferry_error_setg(errp, "dirty page limit feature requires a host that counts dirty pages per writer: %s",
                         why);
        return false;
    }
    bool ok = false;
    if (index >= n || (index < 0 && index != -1)) {
        ferry_error_setg(errp, "incorrect cpu index specified");
    } else if (!manual_change_allowed(m, st, n)) {
        ferry_error_setg(errp, "can't set dirty page rate limit while migration is running");
    } else {
        /* A rate of 0 is a cancel (QEMU's rule); the host's contract reads 0 the same way. */
        m->host_ops.dirty_limit(m->host_opaque, (int)index, mbps, DIRTYLIMIT_CALC_PERIOD_MS);
        ok = true;
    }
    free(st);
    return ok;
}

json_t *ferry__dirtylimit_query(FerryMigration *m, FerryError **errp)
{
    int n;
    const char *why;
    FerryWriterStats *st = ferry__dirtylimit_stats(m, &n, &why);
    json_t *r = json_array();
    for (int i = 0; st && i < n; i++) {
        if (st[i].limit_mbps) {
            json_array_append_new(r, json_pack("{s:i, s:I, s:I}", "cpu-index", i, "limit-rate",
                                               (json_int_t)st[i].limit_mbps, "current-rate",
                                               (json_int_t)st[i].rate_mbps));
        }
    }
    free(st);
    return r;
}

/* ---- The capability's part of an outgoing migration (the source's thread only) ---- */

void ferry__dirtylimit_migration_apply(FerryMigration *m)
{
    ferry__mutex_lock(&m->lock);
    int64_t limit = m->params.vcpu_dirty_limit, period = m->params.x_vcpu_dirty_limit_period;
    ferry__mutex_unlock(&m->lock);
    FerryDirtyLimitRun *run = m->dl_run;
    if (run && run->limit_mbps == limit && run->period_ms == period) {
        return;
    }
    int n;
    const char *why;
    FerryWriterStats *st = ferry__dirtylimit_stats(m, &n, &why);
    if (!st) {
        /* The capability was accepted when the host could count; it cannot now (ferry-vm lost its ring, say). */
        ferry__log(FERRY_LOG_WARN, "dirty-limit: the workload cannot be limited: %s", why);
        return;
    }
    if (!run) {
        run = m->dl_run = ferry__xcalloc(1, sizeof(*run));
    }
    free(run->throttle_prev);
    free(run->ring_prev);
    run->limit_mbps = limit;
    run->period_ms = period;
    run->n = n;
    run->throttle_prev = ferry__xcalloc((size_t)n, sizeof(uint64_t));
    run->ring_prev = ferry__xcalloc((size_t)n, sizeof(uint64_t));
    for (int i = 0; i < n; i++) {
        run->throttle_prev[i] = st[i].throttle_us;
        run->ring_prev[i] = st[i].ring_full_us;
    }
    run->prev_ms = ferry__clock_ms();
    free(st);
    m->host_ops.dirty_limit(m->host_opaque, -1, (uint64_t)limit, (int)period);
    ferry__mutex_lock(&m->lock);
    m->stats.dirty_limit_active = true;
    ferry__mutex_unlock(&m->lock);
    ferry__log(FERRY_LOG_INFO, "dirty-limit: %d writers held to %lld MB/s (period %lld ms)", n, (long long)limit,
               (long long)period);
}

/*
 * QEMU's dirty-limit-throttle-time-per-round is the longest sleep of a vCPU per round of its dirty ring; ferry's
 * round is the writer's period: the most any writer slept per period since the last pass. ring-full-time is
 * reported only where the host has a ring: the mean wait on a full ring per writer per period.
 */
void ferry__dirtylimit_migration_pass_stats(FerryMigration *m)
{
    FerryDirtyLimitRun *run = m->dl_run;
    if (!run) {
        return;
    }
    int n;
    const char *why;
    FerryWriterStats *st = ferry__dirtylimit_stats(m, &n, &why);
    if (!st) {
        return;
    }
    int64_t now = ferry__clock_ms();
    double periods = (double)(now - run->prev_ms) / (double)run->period_ms;
    if (periods < 1) {
        periods = 1;
    }
    uint64_t max_sleep = 0, ring = 0;
    bool has_ring = false;
    int k = n < run->n ? n : run->n;
    for (int i = 0; i < k; i++) {
        uint64_t slept = st[i].throttle_us - run->throttle_prev[i];
        max_sleep = slept > max_sleep ? slept : max_sleep;
        ring += st[i].ring_full_us - run->ring_prev[i];
        has_ring |= st[i].ring_full_us != 0;
        run->throttle_prev[i] = st[i].throttle_us;
        run->ring_prev[i] = st[i].ring_full_us;
    }
    run->prev_ms = now;
    free(st);
    ferry__mutex_lock(&m->lock);
    m->stats.dirty_limit_throttle_us = (uint64_t)((double)max_sleep / periods);
    m->stats.dirty_limit_has_ring = has_ring;
    m->stats.dirty_limit_ring_full_us = k ? (uint64_t)((double)ring / k / periods) : 0;
    ferry__mutex_unlock(&m->lock);
}

void ferry__dirtylimit_migration_lift(FerryMigration *m)
{
    FerryDirtyLimitRun *run = m->dl_run;
    if (!run) {
        return;
    }
    /* As QEMU: every writer's limit goes, the ones the operator had set before the migration too (the
     * migration's limit replaced them when it was applied). */
    m->host_ops.dirty_limit(m->host_opaque, -1, 0, DIRTYLIMIT_CALC_PERIOD_MS);
    free(run->throttle_prev);
    free(run->ring_prev);
    free(run);
    m->dl_run = NULL;
    ferry__mutex_lock(&m->lock);
    m->stats.dirty_limit_active = false;
    m->stats.dirty_limit_throttle_us = 0;
    m->stats.dirty_limit_has_ring = false;
    m->stats.dirty_limit_ring_full_us = 0;
    ferry__mutex_unlock(&m->lock);
}
