/*
 * The host runtime: what every program that ferry migrates needs around its own code. It owns the engine
 * (FerryMigration), the run state (running, paused, inmigrate, ...), the QMP monitor and the common command-line
 * options (-qmp, -incoming, -S, -name), so that ferry-workload and ferry-vm share one implementation.
 *
 * Typical use: ferry_host_new(); feed argv through ferry_host_parse_option(); register RAM blocks and sections on
 * ferry_host_migration(); register extra QMP commands; ferry_host_set_ops(); ferry_host_start(); ferry_host_run().
 * The thread that calls ferry_host_run() serves the monitor; migrations run on their own threads.
 */
#ifndef FERRY_HOST_H
#define FERRY_HOST_H

#include <jansson.h>

#include "ferry/common.h"

/* One writer's counters (FerryHostOps.writer_stats). */
typedef struct FerryWriterStats {
    uint64_t dirty_pages;  /* 4 KiB pages it dirtied since start-up, as the host counts them (ring entries, writes) */
    uint64_t rate_mbps;    /* its dirty rate over the last dirty-limit period, MB/s (2^20 bytes) */
    uint64_t limit_mbps;   /* the limit it is held to, 0 = none */
    uint64_t throttle_us;  /* time it slept to hold its limit since start-up */
    uint64_t ring_full_us; /* time it waited on a full dirty ring since start-up (0 where there is no ring) */
} FerryWriterStats;

typedef struct FerryHostOps {
    /* Quiesce every writer of RAM and device state; return only once they are stopped. */
    void (*stop)(void *opaque);
    /* Let them run again. */
    void (*start)(void *opaque);
    /*
     * auto-converge: slow every writer of RAM (vCPUs, workers) so that it sleeps @percent % of its time, 1..99, in
     * slices short enough that the rate it dirties pages falls at once (QEMU's vCPU throttle: each vCPU sleeps its
     * share of every 10 ms time slice); 0 lifts the throttle. Called by the source's migration thread, without
     * locks of the engine held, after a pass and when the migration ends in any way (with 0); it must return
     * without waiting for the writers and take effect within about one time slice. Independent of stop/start: a
     * throttled workload that is stopped and started again stays throttled. May be NULL: the host cannot
     * throttle, and a migration with auto-converge on is refused with that reason.
     */
    void (*throttle)(void *opaque, int percent);
    /*
     * Per-writer dirty counts and limits (dirty-limit, set-vcpu-dirty-limit, calc-dirty-rate's dirty-ring mode).
     * A "writer" is a thread of the host that dirties RAM and that the host can count and slow on its own: a vCPU
     * of ferry-vm, a worker of ferry-workload; they are numbered 0..n-1 (QEMU's cpu-index).
     *
     * writer_stats: fill @stats[0..min(n, @max)) and return n, the number of writers; return 0 when the host
     * cannot count per writer now (ferry-vm without a dirty ring, say), with a reason in *@why (a static string)
     * which the engine gives to whoever asked. Counters are cumulative since start-up, so that every reader takes
     * its own differences; the rate is the host's measurement over its last dirty-limit period. Any thread, any
     * time (the monitor's for query-vcpu-dirty-limit, the migration's between passes); must not block on the
     * writers.
     *
     * dirty_limit: hold writer @index (or all of them, -1) to @mbps MB/s (2^20 bytes) of dirtied memory,
     * measured over @period_ms (QEMU's x-vcpu-dirty-limit-period, 1..1000); @mbps 0 lifts the limit. The host
     * enforces it in the writer's own thread: when the writer dirtied more than its quota in a period it sleeps
     * long enough to bring its rate back to the limit (and counts that time in throttle_us). Called by the
     * monitor's thread (set-/cancel-vcpu-dirty-limit) and by the source's migration thread (the dirty-limit
     * capability, lifted when the migration ends in any way); it returns without waiting for the writers; the
     * limit holds from the next period on. Independent of stop/start and of throttle.
     *
     * Both NULL: the host cannot count per writer at all; the commands are refused with that reason.
     */
    int (*writer_stats)(void *opaque, FerryWriterStats *stats, int max, const char **why);
    void (*dirty_limit)(void *opaque, int index, uint64_t mbps, int period_ms);
} FerryHostOps;

/* QMP argument types, checked by the monitor before a command runs. */
typedef enum FerryArgType {
    FERRY_ARG_STR,
    FERRY_ARG_INT,
    FERRY_ARG_BOOL,
    FERRY_ARG_NUMBER,
    FERRY_ARG_OBJECT,
    FERRY_ARG_ARRAY,
    FERRY_ARG_ANY,
} FerryArgType;

typedef struct FerryArgSpec {
    const char *name;
    FerryArgType type;
    bool optional;
} FerryArgSpec;

/*
 * A QMP command. @args has been checked against the command's FerryArgSpec list (no unknown key, no missing
 * required key, every type right), it is borrowed. Return a new reference (an empty object for "no data"), or
 * NULL with *errp set.
 */
typedef json_t *(*FerryCommandFn)(json_t *args, void *opaque, FerryError **errp);

FERRY_API FerryHost *ferry_host_new(const char *progname, FerryError **errp);
FERRY_API void ferry_host_free(FerryHost *h);
FERRY_API FerryMigration *ferry_host_migration(FerryHost *h);
FERRY_API void ferry_host_set_ops(FerryHost *h, const FerryHostOps *ops, void *opaque);

/*
 * Parse one common option. @opt is the option with its dash ("-qmp"), @arg the next argv element or NULL.
 * Returns 1 if the option was consumed (*used_arg tells whether @arg was too), 0 if it is not a common option,
 * -1 with *errp set if it is one but its value is bad.
 */
FERRY_API int ferry_host_parse_option(FerryHost *h, const char *opt, const char *arg, bool *used_arg,
                                      FerryError **errp);
/* Help text for the common options, one per line. */
FERRY_API const char *ferry_host_common_usage(void);
FERRY_API const char *ferry_host_name(const FerryHost *h);
/* Whether -incoming was given: the program's RAM and state will come from a migration, so it must not
 * initialise them itself. */
FERRY_API bool ferry_host_incoming(const FerryHost *h);

/* Register a QMP command (before ferry_host_start). @args ends with {NULL}; NULL means "no arguments". */
FERRY_API bool ferry_host_register_command(FerryHost *h, const char *name, const FerryArgSpec *args,
                                           FerryCommandFn fn, void *opaque, FerryError **errp);
/* Send an event to every QMP client that has finished negotiation. Takes @data (may be NULL). Any thread. */
FERRY_API void ferry_host_emit_event(FerryHost *h, const char *name, json_t *data);

/* Open the monitor sockets, start listening for an incoming migration if -incoming gave an address, and start
 * the workload unless -S or -incoming was given. */
FERRY_API bool ferry_host_start(FerryHost *h, FerryError **errp);
/* Serve the monitor until quit is requested (QMP "quit", or a fatal incoming failure); returns the exit code. */
FERRY_API int ferry_host_run(FerryHost *h);
/* Thread-safe; ferry_host_run() returns @status soon after. */
FERRY_API void ferry_host_request_quit(FerryHost *h, int status);
/* Whether the workload is running now (run state "running"). */
FERRY_API bool ferry_host_is_running(FerryHost *h);

#endif
