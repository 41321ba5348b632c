/*
 * Postcopy fault latency and blocktime accounting on the destination (the numbers QEMU reports with the
 * postcopy-blocktime capability: postcopy-blocktime, postcopy-vcpu-blocktime, and since QEMU 10.1
 * postcopy-latency, postcopy-vcpu-latency, postcopy-non-vcpu-latency and postcopy-latency-dist).
 *
 * The engine reports two events with its own timestamps: a thread faulted on a page (ferry__blocktime_fault, from
 * the fault messages) and pages were placed (ferry__blocktime_placed), which ends every fault waiting on them. A
 * fault's latency is the time between the two. The host names its vCPU threads (ferry__blocktime_set_vcpu); a
 * fault of any other thread, or of an unknown one (tid 0), is a non-vCPU fault. Only resolved faults are counted:
 * a fault still waiting shows in no figure but @pending.
 *
 * Thread-safe (one mutex). It knows nothing of userfaultfd or of how pages arrive.
 */
#ifndef FERRY_RAM_BLOCKTIME_H
#define FERRY_RAM_BLOCKTIME_H

#include <stdbool.h>
#include <stdint.h>

/* Buckets of the latency histogram: bucket N counts latencies in [2^N, 2^(N+1)) microseconds, bucket 0 also those
 * under 1 us, the last one also everything longer (as QEMU's postcopy-latency-dist: 24 buckets, up to 8-16 s). */
#define FERRY_BLOCKTIME_DIST_BUCKETS 24
/* Latencies kept for the percentiles (a uniform reservoir sample): exact up to this many faults. */
#define FERRY_BLOCKTIME_RESERVOIR 4096

typedef struct FerryBlocktime FerryBlocktime;

typedef struct FerryBlocktimeStats {
    /* Time during which every registered vCPU was blocked at once (postcopy-blocktime); 0 without vCPUs. */
    uint64_t blocktime_ms;
    uint64_t blocktime_ns;
    /* Length of the per-vCPU arrays: the highest index registered + 1 (indices never registered read 0). */
    uint32_t nvcpus;
    uint64_t *vcpu_blocktime_ms;   /* time each vCPU was blocked in faults (postcopy-vcpu-blocktime) */
    uint64_t *vcpu_blocktime_ns;
    uint64_t *vcpu_faults;         /* resolved faults of each vCPU */
    uint64_t *vcpu_latency_avg_ns; /* postcopy-vcpu-latency; 0 for a vCPU without faults */
    uint64_t faults;               /* resolved faults, all threads */
    uint64_t pending;              /* faults still waiting */
    uint64_t latency_avg_ns;       /* postcopy-latency: all resolved faults */
    uint64_t latency_p50_ns;       /* nearest-rank percentiles of the reservoir sample; 0 without faults */
    uint64_t latency_p99_ns;
    uint64_t latency_max_ns;
    uint64_t non_vcpu_faults;
    uint64_t non_vcpu_latency_avg_ns; /* postcopy-non-vcpu-latency */
    uint64_t dist[FERRY_BLOCKTIME_DIST_BUCKETS]; /* postcopy-latency-dist */
} FerryBlocktimeStats;

FerryBlocktime *ferry__blocktime_new(void);
void ferry__blocktime_free(FerryBlocktime *bt); /* NULL is a no-op */
/*
 * vCPU @index runs on thread @tid (non-zero). Any time, before or during the faults; faults already reported keep
 * the kind they had. Re-registering an index moves it to the new thread (a fault the old thread still waits on
 * stays that vCPU's). Registering a new vCPU while all others are blocked ends that all-blocked period at the last
 * event's time.
 */
void ferry__blocktime_set_vcpu(FerryBlocktime *bt, unsigned index, uint32_t tid);
/* Thread @tid (0 = unknown) faulted on the page holding address @addr at @now_ns. A fault reported again for the
 * same thread and page (a retried fault) keeps its first time; with tid 0 the same page is taken for the same
 * fault. A vCPU reported on another page is taken to have left the previous fault at @now_ns. */
void ferry__blocktime_fault(FerryBlocktime *bt, uint64_t addr, uint32_t tid, int64_t now_ns);
/* Pages covering [@addr, @addr + @len) were placed at @now_ns: every fault waiting on them ends. */
void ferry__blocktime_placed(FerryBlocktime *bt, uint64_t addr, uint64_t len, int64_t now_ns);
/* The figures so far into @out (arrays allocated; release with ferry__blocktime_stats_free). */
void ferry__blocktime_get(FerryBlocktime *bt, FerryBlocktimeStats *out);
void ferry__blocktime_stats_free(FerryBlocktimeStats *s); /* frees the arrays and zeroes @s */

#endif
