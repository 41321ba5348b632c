/*
 * ferry-workload, the program's own internal interface: a stand-in for a VM whose "vCPUs" are worker threads that
 * write RAM registered with libferry in patterns a checker can verify after a migration. This header is shared by
 * the program's files only (main.c, workload.c, pattern.c); it is not part of libferry and nothing outside
 * hosts/workload includes it. It uses only the public API (include/ferry/).
 */
#ifndef FERRY_WORKLOAD_H
#define FERRY_WORKLOAD_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ferry/ferry.h"

#define WORKLOAD_MAX_SMP 256
/* How many mismatches query-pattern-check describes in its "detail" string. */
#define WORKLOAD_DETAIL_MAX 4
/* Bytes of the header of a self-verifying page: global page index (u64), generation (u64). */
#define WORKLOAD_PAGE_HEADER 16
/* A worker measures its dirty rate over this period when no dirty limit set another (QEMU's 1 s). */
#define WORKLOAD_DL_DEFAULT_PERIOD_MS 1000

typedef enum WorkloadPattern {
    WORKLOAD_PATTERN_AB,
    WORKLOAD_PATTERN_RANDOM,
    WORKLOAD_PATTERN_ZERO,
    WORKLOAD_PATTERN_HALF,
} WorkloadPattern;

/* "ab" ... "half" -> pattern; false on an unknown name. */
bool workload_pattern_parse(const char *name, WorkloadPattern *pattern);
const char *workload_pattern_name(WorkloadPattern pattern);

/* What the command line asked for. The destination of a migration must be given the same values. */
typedef struct WorkloadConfig {
    uint64_t ram_size;       /* bytes, a multiple of the page size */
    uint64_t block_size;     /* bytes, a multiple of the page size */
    unsigned smp;            /* 1..WORKLOAD_MAX_SMP */
    WorkloadPattern pattern;
    uint64_t seed;
    uint64_t dirty_rate;     /* MiB/s over all workers, 0 = unlimited */
    FerryTrackerKind tracker;
    /* -object memory-backend-memfd + -machine memory-backend: RAM blocks are memfds (shared if memfd_share). */
    bool memfd;
    bool memfd_share;
    /* -mem-prealloc: every RAM page is faulted in at start-up, as QEMU does. */
    bool mem_prealloc;
    unsigned prealloc_threads; /* with mem_prealloc: threads (QEMU's prealloc-threads) */
    /*
     * -object memory-backend-file + -machine memory-backend: block i maps the slice of mem_path at offset
     * i * block_size ("" otherwise), shared if file_share. Such RAM is the file's content, as a VM's would be:
     * it is never filled with the pattern, query-pattern-check refuses (verify with query-ram-digest), and the
     * workers are not even created unless -pattern was given (file_workers), so a running workload keeps the
     * content too. With -pattern they write it over the file's content.
     */
    char mem_path[4096];
    bool file_share;
    /* memory-backend-file with mem-path= a directory, or -mem-path DIR: block i is a new unlinked temporary file
     * in mem_dir ("" otherwise), shared if file_share; it reads as zero and is used as any other RAM. */
    char mem_dir[4096];
    /* memory-backend-memfd,hugetlb=on: the memfds are hugetlb ones of hugetlbsize-byte pages. */
    bool hugetlb;
    uint64_t hugetlbsize;
    bool file_workers;
} WorkloadConfig;

typedef struct Workload Workload;

/*
 * One worker ("vCPU"). Its share of the pages is [start, end). cursor, rng, passes and pages_written are its
 * device state: the worker writes them while it runs, and they are read or replaced only while it is parked
 * (passes and pages_written are also read, atomically, by query-workload at any time).
 */
typedef struct WorkloadWorker {
    Workload *wl;
    unsigned id;
    pthread_t thread;
    uint64_t start, end;
    uint64_t cursor;                 /* ab: next page to increment; other patterns: unused, kept at start */
    uint64_t rng;                    /* random/zero/half: splitmix64 state choosing the next page */
    _Atomic uint64_t passes;         /* ab: full loops over the share */
    _Atomic uint64_t pages_written;  /* pages this worker wrote (not counting the initial fill) */
    double next_ns;                  /* throttle: when the next page may be written (CLOCK_MONOTONIC ns) */
    double slice_ns;                 /* cpu throttle: when the current time slice of work began, 0 for none */
    /*
     * dirty-limit (FerryHostOps.writer_stats / dirty_limit). A worker is one "writer": it counts the pages it
     * writes (dirtied, since start-up, never migrated) and measures its own rate per period. The limit and the
     * period are set by any thread and read by the worker at every page; dl_start_ns and dl_pages are the
     * worker's own (the period under way and the pages written in it).
     */
    _Atomic uint64_t dirtied;        /* pages written since this process started */
    _Atomic uint64_t dl_limit_mbps;  /* 0: no limit */
    _Atomic int dl_period_ms;        /* the measuring (and limiting) period, 1..1000 */
    _Atomic uint64_t dl_rate_mbps;   /* its rate over the last full period (0 while parked) */
    _Atomic uint64_t dl_throttle_us; /* time slept to hold the limit, since start-up */
    double dl_start_ns;              /* when the current period began, 0 for "not yet" */
    uint64_t dl_pages;               /* pages written in it */
} WorkloadWorker;

struct Workload {
    WorkloadConfig cfg;
    size_t page_size;
    uint64_t pages;
    uint64_t pages_per_block;
    unsigned nblocks;
    FerryRamBlock **blocks;
    uint8_t **block_host;
    FerryMigration *m;   /* set by workload_register: the workers name their threads to it */
    bool explicit_dirty;             /* -dirty-tracker explicit: mark every page written */
    double ns_per_page;              /* per worker, from -dirty-rate; 0 = unlimited */
    uint8_t *zero_page;              /* page_size zero bytes to compare against */

    WorkloadWorker *workers;         /* cfg.smp of them */
    unsigned threads_started;

    /*
     * Workers run while host_run is set (FerryHostOps start/stop) and no one holds them (holds == 0, the
     * checker's own pauses). Keeping the two apart means a check never changes what the engine decided.
     * go mirrors "host_run && holds == 0 && !quit" so that workers test one atomic flag per page.
     */
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool host_run;
    unsigned holds;
    bool quit;
    unsigned parked;                 /* workers waiting in worker_park() (or exited) */
    atomic_bool go;
    atomic_int cpu_throttle;         /* auto-converge (FerryHostOps.throttle): percent of each slice asleep */
};

/* Page contents (pattern.c). */
uint64_t workload_rng_next(uint64_t *state);
/* A well mixed state derived from three values, for seeding generators. */
uint64_t workload_rng_derive(uint64_t a, uint64_t b, uint64_t c);
/* Write a whole self-verifying page: header (index, generation) then bytes derived from (seed, index, gen). */
void workload_page_write(uint8_t *page, size_t page_size, uint64_t seed, uint64_t index, uint64_t gen);
/* The generation in a page's header (0 for a page never written). */
uint64_t workload_page_generation(const uint8_t *page);
/*
 * Check a page of the random/zero/half patterns: either all zero (*gen = 0) or a page written by
 * workload_page_write for @index with generation *gen >= 1. On false, @why (of @why_len bytes) says what is wrong.
 */
bool workload_page_verify(const uint8_t *page, size_t page_size, const uint8_t *zero_page, uint64_t seed,
                          uint64_t index, uint64_t *gen, char *why, size_t why_len);

/* Life cycle (workload.c). */
Workload *workload_new(const WorkloadConfig *cfg, FerryError **errp);
/* Stop the workers for good and join them (before the engine, and with it the RAM, goes away). Idempotent. After
 * this, stop/start/hold still work and return at once. */
void workload_stop_threads(Workload *wl);
/* Stop and join the workers; NULL is a no-op. The RAM blocks belong to the engine and are not touched. */
void workload_free(Workload *wl);
/* Register the RAM blocks "ram0", "ram1", ... and the "workload" state section with @m, and set the tracker. */
bool workload_register(Workload *wl, FerryMigration *m, FerryError **errp);
/* Write the pattern's initial contents (not on a migration destination: RAM arrives by migration then). */
bool workload_fill(Workload *wl, FerryError **errp);
/* Create the worker threads, parked until workload_ops' start. */
bool workload_start_threads(Workload *wl, FerryError **errp);
/* The FerryHostOps for ferry_host_set_ops, with @wl as opaque. */
extern const FerryHostOps workload_ops;

/* Hold the workers parked at a page boundary (nesting), independent of the host's run state; release undoes. */
void workload_hold(Workload *wl);
void workload_release(Workload *wl);

typedef struct WorkloadCheck {
    uint64_t pages;
    uint64_t mismatches;
    char detail[WORKLOAD_DETAIL_MAX * 160 + 64];
} WorkloadCheck;

/* Verify every page against the pattern and the workers' state. Holds the workers for the duration. */
bool workload_check(Workload *wl, WorkloadCheck *res, FerryError **errp);
/* XXH3-128 over all blocks in order, as 32 hex digits; *size the bytes hashed. Holds the workers. */
bool workload_digest(Workload *wl, char hex[33], uint64_t *size, FerryError **errp);
/* Sums over the workers, read without stopping them. */
void workload_counters(Workload *wl, uint64_t *passes, uint64_t *pages_written);

#endif
