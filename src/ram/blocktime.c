/*
 * Postcopy fault latency and blocktime accounting (blocktime.h). A vCPU thread is blocked on at most one page at a
 * time (it sleeps in the fault), so each vCPU holds its own pending fault; faults of other threads wait in a short
 * list. Both are bounded by the number of threads asleep, so the linear scans below stay short. Percentiles come
 * from a uniform reservoir sample of the latencies (Algorithm R, with a fixed-seed generator so that runs repeat);
 * the histogram has QEMU's power-of-two microsecond buckets. Nothing here reads a clock: the caller's timestamps
 * are the only time, which keeps the tests exact.
 */
#include <stdlib.h>
#include <string.h>

#include "ferry/ram.h"
#include "ram/blocktime.h"
#include "util/util.h"

typedef struct Vcpu {
    uint32_t tid;
    bool registered;
    bool blocked;
    uint64_t page;  /* page address it waits on, while blocked */
    int64_t since;  /* when it faulted, while blocked */
    uint64_t blocked_ns;
    uint64_t faults;
    uint64_t latency_sum_ns;
} Vcpu;

typedef struct OtherFault {
    uint64_t page;
    uint32_t tid;
    int64_t since;
} OtherFault;

struct FerryBlocktime {
    FerryMutex lock;
    Vcpu *vcpus;
    uint32_t nvcpus;        /* length of vcpus */
    uint32_t nregistered;
    uint32_t nblocked;      /* registered vCPUs blocked now */
    bool all_blocked;
    int64_t all_since;
    uint64_t blocktime_ns;
    int64_t last_now;       /* latest timestamp seen */

    OtherFault *others;
    size_t nothers, others_cap;

    uint64_t faults, latency_sum_ns, latency_max_ns;
    uint64_t non_vcpu_faults, non_vcpu_latency_sum_ns;
    uint64_t dist[FERRY_BLOCKTIME_DIST_BUCKETS];
    uint64_t *reservoir;    /* FERRY_BLOCKTIME_RESERVOIR latencies */
    uint64_t rng;
};

FerryBlocktime *ferry__blocktime_new(void)
{
    FerryBlocktime *bt = ferry__xcalloc(1, sizeof(*bt));
    ferry__mutex_init(&bt->lock);
    bt->reservoir = ferry__xcalloc(FERRY_BLOCKTIME_RESERVOIR, sizeof(*bt->reservoir));
    bt->rng = 0x9e3779b97f4a7c15ULL;
    return bt;
}

void ferry__blocktime_free(FerryBlocktime *bt)
{
    if (!bt) {
        return;
    }
    ferry__mutex_destroy(&bt->lock);
    free(bt->vcpus);
    free(bt->others);
    free(bt->reservoir);
    free(bt);
}

/* splitmix64: a small, good enough generator for picking reservoir slots. */
static uint64_t next_random(FerryBlocktime *bt)
{
    uint64_t z = (bt->rng += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static unsigned dist_bucket(uint64_t ns)
{
    uint64_t us = ns / 1000;
    if (us == 0) {
        return 0;
    }
    unsigned log2 = 63u - (unsigned)__builtin_clzll(us);
    return FERRY_MIN(log2, (unsigned)FERRY_BLOCKTIME_DIST_BUCKETS - 1);
}

static void note_time_locked(FerryBlocktime *bt, int64_t now)
{
    if (now > bt->last_now) {
        bt->last_now = now;
    }
}

/* A fault that began at @since ended at @now; @v is its vCPU or NULL. Returns its latency. */
static uint64_t account_locked(FerryBlocktime *bt, Vcpu *v, int64_t since, int64_t now)
{
    FERRY_ASSERT_HELD(&bt->lock);
    uint64_t lat = now > since ? (uint64_t)(now - since) : 0;
    bt->faults++;
    bt->latency_sum_ns += lat;
    bt->latency_max_ns = FERRY_MAX(bt->latency_max_ns, lat);
    bt->dist[dist_bucket(lat)]++;
    if (bt->faults <= FERRY_BLOCKTIME_RESERVOIR) {
        bt->reservoir[bt->faults - 1] = lat;
    } else {
        uint64_t j = next_random(bt) % bt->faults;
        if (j < FERRY_BLOCKTIME_RESERVOIR) {
            bt->reservoir[j] = lat;
        }
    }
    if (v) {
        v->faults++;
        v->latency_sum_ns += lat;
        v->blocked_ns += lat;
    } else {
        bt->non_vcpu_faults++;
        bt->non_vcpu_latency_sum_ns += lat;
    }
    return lat;
}

static void end_all_blocked_locked(FerryBlocktime *bt, int64_t now)
{
    if (bt->all_blocked) {
        bt->blocktime_ns += now > bt->all_since ? (uint64_t)(now - bt->all_since) : 0;
        bt->all_blocked = false;
    }
}

static void vcpu_unblock_locked(FerryBlocktime *bt, Vcpu *v, int64_t now)
{
    account_locked(bt, v, v->since, now);
    v->blocked = false;
    bt->nblocked--;
    end_all_blocked_locked(bt, now);
}

static void vcpu_block_locked(FerryBlocktime *bt, Vcpu *v, uint64_t page, int64_t now)
{
    v->blocked = true;
    v->page = page;
    v->since = now;
    bt->nblocked++;
    if (bt->nregistered > 0 && bt->nblocked == bt->nregistered && !bt->all_blocked) {
        bt->all_blocked = true;
        bt->all_since = now;
    }
}

void ferry__blocktime_set_vcpu(FerryBlocktime *bt, unsigned index, uint32_t tid)
{
    if (tid == 0) {
        return;
    }
    ferry__mutex_lock(&bt->lock);
    if (index >= bt->nvcpus) {
        bt->vcpus = ferry__xrealloc(bt->vcpus, ((size_t)index + 1) * sizeof(*bt->vcpus));
        memset(bt->vcpus + bt->nvcpus, 0, ((size_t)index + 1 - bt->nvcpus) * sizeof(*bt->vcpus));
        bt->nvcpus = index + 1;
    }
    Vcpu *v = &bt->vcpus[index];
    v->tid = tid;
    if (!v->registered) {
        v->registered = true;
        bt->nregistered++;
        /* One more vCPU that is not blocked: not all of them are any more. */
        end_all_blocked_locked(bt, bt->last_now);
    }
    ferry__mutex_unlock(&bt->lock);
}

static Vcpu *vcpu_of_locked(FerryBlocktime *bt, uint32_t tid)
{
    if (tid == 0) {
        return NULL;
    }
    for (uint32_t i = 0; i < bt->nvcpus; i++) {
        if (bt->vcpus[i].registered && bt->vcpus[i].tid == tid) {
            return &bt->vcpus[i];
        }
    }
    return NULL;
}

void ferry__blocktime_fault(FerryBlocktime *bt, uint64_t addr, uint32_t tid, int64_t now_ns)
{
    uint64_t page = addr & ~((uint64_t)ferry_ram_page_size() - 1);
    ferry__mutex_lock(&bt->lock);
    note_time_locked(bt, now_ns);
    Vcpu *v = vcpu_of_locked(bt, tid);
    if (v) {
        if (v->blocked && v->page == page) {
            goto out; /* the same fault, retried */
        }
        if (v->blocked) {
            vcpu_unblock_locked(bt, v, now_ns); /* it got past the previous page without our placing it */
        }
        vcpu_block_locked(bt, v, page, now_ns);
        goto out;
    }
    for (size_t i = 0; i < bt->nothers; i++) {
        if (bt->others[i].page == page && bt->others[i].tid == tid) {
            goto out;
        }
    }
    if (bt->nothers == bt->others_cap) {
        bt->others_cap = bt->others_cap ? 2 * bt->others_cap : 16;
        bt->others = ferry__xrealloc(bt->others, bt->others_cap * sizeof(*bt->others));
    }
    bt->others[bt->nothers++] = (OtherFault){.page = page, .tid = tid, .since = now_ns};
out:
    ferry__mutex_unlock(&bt->lock);
}

void ferry__blocktime_placed(FerryBlocktime *bt, uint64_t addr, uint64_t len, int64_t now_ns)
{
    if (len == 0) {
        return;
    }
    uint64_t lo = addr & ~((uint64_t)ferry_ram_page_size() - 1);
    uint64_t hi = addr + len; /* a page starting below hi overlaps the range */
    ferry__mutex_lock(&bt->lock);
    note_time_locked(bt, now_ns);
    for (uint32_t i = 0; i < bt->nvcpus; i++) {
        Vcpu *v = &bt->vcpus[i];
        if (v->blocked && v->page >= lo && v->page < hi) {
            vcpu_unblock_locked(bt, v, now_ns);
        }
    }
    for (size_t i = 0; i < bt->nothers;) {
        OtherFault *o = &bt->others[i];
        if (o->page >= lo && o->page < hi) {
            account_locked(bt, NULL, o->since, now_ns);
            *o = bt->others[--bt->nothers];
        } else {
            i++;
        }
    }
    ferry__mutex_unlock(&bt->lock);
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Nearest rank: the smallest sample with at least @pct percent of the samples at or below it. */
static uint64_t percentile(const uint64_t *sorted, size_t n, unsigned pct)
{
    size_t rank = (size_t)(((uint64_t)n * pct + 99) / 100);
    return sorted[rank ? rank - 1 : 0];
}

void ferry__blocktime_get(FerryBlocktime *bt, FerryBlocktimeStats *out)
{
    memset(out, 0, sizeof(*out));
    ferry__mutex_lock(&bt->lock);
    out->blocktime_ns = bt->blocktime_ns;
    out->blocktime_ms = bt->blocktime_ns / 1000000;
    out->nvcpus = bt->nvcpus;
    size_t nv = bt->nvcpus ? bt->nvcpus : 1;
    out->vcpu_blocktime_ms = ferry__xcalloc(nv, sizeof(uint64_t));
    out->vcpu_blocktime_ns = ferry__xcalloc(nv, sizeof(uint64_t));
    out->vcpu_faults = ferry__xcalloc(nv, sizeof(uint64_t));
    out->vcpu_latency_avg_ns = ferry__xcalloc(nv, sizeof(uint64_t));
    uint64_t pending = bt->nothers;
    for (uint32_t i = 0; i < bt->nvcpus; i++) {
        const Vcpu *v = &bt->vcpus[i];
        out->vcpu_blocktime_ns[i] = v->blocked_ns;
        out->vcpu_blocktime_ms[i] = v->blocked_ns / 1000000;
        out->vcpu_faults[i] = v->faults;
        out->vcpu_latency_avg_ns[i] = v->faults ? v->latency_sum_ns / v->faults : 0;
        pending += v->blocked;
    }
    out->pending = pending;
    out->faults = bt->faults;
    out->latency_avg_ns = bt->faults ? bt->latency_sum_ns / bt->faults : 0;
    out->latency_max_ns = bt->latency_max_ns;
    out->non_vcpu_faults = bt->non_vcpu_faults;
    out->non_vcpu_latency_avg_ns = bt->non_vcpu_faults ? bt->non_vcpu_latency_sum_ns / bt->non_vcpu_faults : 0;
    memcpy(out->dist, bt->dist, sizeof(out->dist));
    size_t ns = (size_t)FERRY_MIN(bt->faults, (uint64_t)FERRY_BLOCKTIME_RESERVOIR);
    uint64_t *sample = ns ? ferry__xmalloc(ns * sizeof(*sample)) : NULL;
    if (ns) {
        memcpy(sample, bt->reservoir, ns * sizeof(*sample));
    }
    ferry__mutex_unlock(&bt->lock);

    if (ns) {
        qsort(sample, ns, sizeof(*sample), cmp_u64);
        out->latency_p50_ns = percentile(sample, ns, 50);
        out->latency_p99_ns = percentile(sample, ns, 99);
    }
    free(sample);
}

void ferry__blocktime_stats_free(FerryBlocktimeStats *s)
{
    if (!s) {
        return;
    }
    free(s->vcpu_blocktime_ms);
    free(s->vcpu_blocktime_ns);
    free(s->vcpu_faults);
    free(s->vcpu_latency_avg_ns);
    memset(s, 0, sizeof(*s));
}
