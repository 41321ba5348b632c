/*
 * The migration engine, internal API: the state machine (QEMU's MigrationStatus names), the run state of the
 * host's workload (QEMU's RunState names), parameters and capabilities, and the two directions. The monitor's
 * command functions translate QMP arguments into these calls and hold no migration logic themselves.
 *
 * Locking: FerryMigration has one mutex for its shared state (status, statistics, parameters). Every function
 * here takes it itself; callers hold nothing. Events are emitted through the event hook from the thread that
 * made the change, after the lock is dropped.
 */
#ifndef FERRY_MIGRATION_INT_H
#define FERRY_MIGRATION_INT_H

#include <stdbool.h>
#include <stdint.h>

#include <jansson.h>

#include "ferry/error.h"
#include "ferry/host.h"
#include "channel/address.h"
#include "channel/channel.h"

/* QEMU's MigrationStatus, in QEMU's order. The transitions allowed between them are one table in engine.c. */
typedef enum FerryMigrationStatus {
    FERRY_MIG_NONE,
    FERRY_MIG_SETUP,
    FERRY_MIG_CANCELLING,
    FERRY_MIG_CANCELLED,
    FERRY_MIG_ACTIVE,
    FERRY_MIG_POSTCOPY_ACTIVE,
    FERRY_MIG_POSTCOPY_PAUSED,
    FERRY_MIG_POSTCOPY_RECOVER_SETUP,
    FERRY_MIG_POSTCOPY_RECOVER,
    FERRY_MIG_COMPLETED,
    FERRY_MIG_FAILED,
    FERRY_MIG_PRE_SWITCHOVER,
    FERRY_MIG_DEVICE,
    FERRY_MIG__MAX,
} FerryMigrationStatus;

/* "none", "setup", "cancelling", ..., "postcopy-active", ..., "pre-switchover", "device" */
const char *ferry__migration_status_name(FerryMigrationStatus s);
/* none, completed, failed and cancelled: no migration runs in that status. */
bool ferry__migration_status_terminal(FerryMigrationStatus s);
/* Whether the transition table (engine.c) allows @from -> @to. */
bool ferry__migration_transition_allowed(FerryMigrationStatus from, FerryMigrationStatus to);

/*
 * Test hook: called at named points of a migration, from the thread that reaches them, with no lock held, so that
 * a unit test can force an interleaving (a cancel just before or just after completion). NULL (the default) costs
 * one load per point. Not for production use.
 */
typedef enum FerryMigTestPoint {
    FERRY_MIG_TP_BEFORE_COMPLETE, /* source: past the commit point, before the status becomes completed */
    FERRY_MIG_TP_AFTER_COMPLETE,  /* source: right after it became completed */
    FERRY_MIG_TP_CANCEL_DECIDED,  /* migrate_cancel: the status is cancelling (or nothing was to be cancelled) */
} FerryMigTestPoint;
typedef void (*FerryMigTestHook)(FerryMigration *m, FerryMigTestPoint point, void *opaque);
void ferry__migration_set_test_hook(FerryMigration *m, FerryMigTestHook fn, void *opaque);

typedef enum FerryRunState {
    FERRY_RUN_PRELAUNCH,      /* "prelaunch": started with -S, never run */
    FERRY_RUN_RUNNING,        /* "running" */
    FERRY_RUN_PAUSED,         /* "paused": stopped by the user */
    FERRY_RUN_INMIGRATE,      /* "inmigrate": waiting for / loading an incoming migration */
    FERRY_RUN_FINISH_MIGRATE, /* "finish-migrate": stopped by the migration for switchover */
    FERRY_RUN_POSTMIGRATE,    /* "postmigrate": the source after a completed migration */
    FERRY_RUN_SHUTDOWN,       /* "shutdown" */
} FerryRunState;

const char *ferry__runstate_name(FerryRunState rs);

FerryMigration *ferry__migration_new(void);
void ferry__migration_free(FerryMigration *m);

/* Hooks installed by the host runtime. */
typedef void (*FerryEventFn)(const char *name, json_t *data /* taken */, void *opaque);
typedef void (*FerryQuitFn)(int status, void *opaque);
void ferry__migration_set_event_fn(FerryMigration *m, FerryEventFn fn, void *opaque);
void ferry__migration_set_quit_fn(FerryMigration *m, FerryQuitFn fn, void *opaque);
void ferry__migration_set_host_ops(FerryMigration *m, const FerryHostOps *ops, void *opaque);

/* Run state. set_initial is called once at start-up: -S gives prelaunch, -incoming gives inmigrate. */
void ferry__runstate_init(FerryMigration *m, bool start_stopped, bool incoming);
FerryRunState ferry__runstate_get(FerryMigration *m);
/* QMP stop / cont, as QEMU: on a destination still waiting (inmigrate) they only decide whether the workload
 * starts once the incoming migration is done; cont fails after shutdown and during a switchover. Both succeed
 * when already in the requested state. They emit STOP / RESUME. */
bool ferry__vm_stop(FerryMigration *m, FerryError **errp);
bool ferry__vm_cont(FerryMigration *m, FerryError **errp);
/* Start the workload for the first time (host start-up without -S and without -incoming). */
void ferry__vm_start_initial(FerryMigration *m);
/* Stop the workload for good before exit (quit): state shutdown. */
void ferry__vm_shutdown(FerryMigration *m);

/*
 * migrate: start an outgoing migration to @addr on its own thread and return. Fails at once if a migration is
 * already running in either direction, if this process is waiting for an incoming one, or if no RAM or state is
 * registered; connection errors come later, as status "failed" with error-desc.
 */
bool ferry__migrate(FerryMigration *m, const FerryMigrationAddress *addr, FerryError **errp);
/* migrate-incoming: listen on @addr now (bind errors are returned) and accept and load on a thread. Only valid
 * in run state inmigrate (i.e. with -incoming defer or a URI). */
bool ferry__migrate_incoming(FerryMigration *m, const FerryMigrationAddress *addr, bool exit_on_error,
                             FerryError **errp);
/* migrate_cancel: cancel an outgoing migration (no-op if none is active). */
bool ferry__migrate_cancel(FerryMigration *m, FerryError **errp);
/*
 * Postcopy (QEMU's names). migrate-start-postcopy: the running outgoing migration switches to postcopy at its
 * next decision point (allowed right after migrate: it then switches before the first pass). Fails with the
 * reason if postcopy-ram is off, no outgoing migration runs, or it cannot switch (the destination did not accept
 * postcopy-ram, the channel has no return path); precopy then goes on.
 */
bool ferry__migrate_start_postcopy(FerryMigration *m, FerryError **errp);
/* migrate-pause: on either side, break the connection of a migration in postcopy-active; both ends go to
 * postcopy-paused, keeping every page. Fails outside postcopy-active. */
bool ferry__migrate_pause(FerryMigration *m, FerryError **errp);
/* migrate-recover: destination in postcopy-paused: listen on @addr for the source's resume. */
bool ferry__migrate_recover(FerryMigration *m, const FerryMigrationAddress *addr, FerryError **errp);
/* migrate resume=true: source in postcopy-paused: reconnect to @addr and resume the postcopy. */
bool ferry__migrate_resume(FerryMigration *m, const FerryMigrationAddress *addr, FerryError **errp);
/* Block until no migration thread of this engine runs (used at exit). */
void ferry__migration_join(FerryMigration *m);

/*
 * Load a whole stream from @c into @m's RAM blocks and sections on the calling thread, with the checks of an
 * incoming migration (header, features, CONFIG, CRCs, END totals; sections loaded only after END), but without a
 * return path, a populate thread, run-state changes or status updates. For the fuzzer and tests. *skipped (may be
 * NULL) gets the bytes of skippable data the reader did not know.
 */
bool ferry__migration_load_stream(FerryMigration *m, FerryChannel *c, uint64_t *skipped, FerryError **errp);

/* query-migrate's reply. New reference. */
json_t *ferry__migration_query(FerryMigration *m);

/* Parameters and capabilities: one table in params.c. The set functions check every member first and apply
 * nothing if one is wrong; the error names the member. */
json_t *ferry__migration_query_params(FerryMigration *m);
bool ferry__migration_set_params(FerryMigration *m, json_t *args, FerryError **errp);
/* The same, for parameters given as strings (a keyval object from "-incoming config:" or HMP): values are
 * converted by each parameter's type ("1G" for sizes) and checked exactly as set_params checks them. On success
 * *typed holds the arguments for ferry__migration_set_params (new reference). Needs no engine. */
bool ferry__migration_params_check_keyval(json_t *kv, json_t **typed, FerryError **errp);
json_t *ferry__migration_query_caps(FerryMigration *m);
/* @caps: the QMP array [{"capability": NAME, "state": BOOL}, ...] (unchecked JSON). */
bool ferry__migration_set_caps(FerryMigration *m, json_t *caps, FerryError **errp);

/*
 * QEMU's set-vcpu-dirty-limit, cancel-vcpu-dirty-limit and query-vcpu-dirty-limit (dirtylimit.c), from the
 * monitor's thread, through the host's writer_stats / dirty_limit (include/ferry/host.h). @index < 0: every
 * writer. Refused with QEMU's messages: a host that cannot count per writer (with its reason), an index that is
 * no writer's, and any change while a migration with the dirty-limit capability holds the writers. A rate of 0
 * cancels. query lists the writers that have a limit (an empty list when none has).
 */
bool ferry__dirtylimit_set(FerryMigration *m, int64_t index, uint64_t mbps, FerryError **errp);
bool ferry__dirtylimit_cancel(FerryMigration *m, int64_t index, FerryError **errp);
json_t *ferry__dirtylimit_query(FerryMigration *m, FerryError **errp);

/*
 * Dirty-rate measurement without migrating (dirtyrate.c; QEMU's calc-dirty-rate / query-dirty-rate). Called from
 * the monitor thread. calc starts a measurement on its own thread and returns: it refuses (QEMU's messages) a
 * second one while one runs, values out of QEMU's ranges, dirty-ring where the host cannot count per writer (FerryHostOps.writer_stats), and
 * dirty-bitmap while a migration runs or is awaited (both would own the dirty tracker).
 */
typedef enum FerryDirtyRateMode {
    FERRY_DIRTYRATE_PAGE_SAMPLING,
    FERRY_DIRTYRATE_DIRTY_BITMAP,
    FERRY_DIRTYRATE_DIRTY_RING,
} FerryDirtyRateMode;
#define FERRY_DIRTYRATE_MIN_CALC_TIME_MS 50
#define FERRY_DIRTYRATE_MAX_CALC_TIME_MS 60000
#define FERRY_DIRTYRATE_MIN_SAMPLE_PAGES 128
#define FERRY_DIRTYRATE_MAX_SAMPLE_PAGES 16384
#define FERRY_DIRTYRATE_DEFAULT_SAMPLE_PAGES 512
typedef struct FerryDirtyRateConfig {
    int64_t calc_time_ms;   /* calc-time converted from its unit (out-of-range values stay out of range) */
    bool has_sample_pages;
    int64_t sample_pages;   /* per GiB of RAM */
    FerryDirtyRateMode mode;
} FerryDirtyRateConfig;
/* "page-sampling" ... -> mode; "second" / "millisecond" -> unit_ms. Errors name the parameter (QAPI's text). */
bool ferry__dirtyrate_mode_parse(const char *name, FerryDirtyRateMode *mode, FerryError **errp);
bool ferry__dirtyrate_unit_parse(const char *name, bool *unit_ms, FerryError **errp);
bool ferry__dirtyrate_calc(FerryMigration *m, const FerryDirtyRateConfig *cfg, FerryError **errp);
/* query-dirty-rate's reply, calc-time in the unit asked for. New reference. */
json_t *ferry__dirtyrate_query(FerryMigration *m, bool unit_ms);
/* migrate / migrate-incoming ask this first: false with the reason while a dirty-bitmap measurement runs. */
bool ferry__dirtyrate_check_migrate(FerryMigration *m, FerryError **errp);
/* Cancel and join a running measurement and free its state (ferry__migration_free). */
void ferry__dirtyrate_free(FerryMigration *m);
/* page-sampling's arithmetic: @changed of @sampled pages changed in @elapsed_ms, over @ram_bytes of RAM: MB/s
 * (2^20 bytes), rounded. 0 when nothing was sampled or no time passed. */
uint64_t ferry__dirtyrate_extrapolate(uint64_t changed, uint64_t sampled, uint64_t ram_bytes, int64_t elapsed_ms);
/* Pages sampled in a block of @block_bytes (@npages pages): @sample_pages_per_gib per GiB, rounded up, at most
 * every page. */
uint64_t ferry__dirtyrate_samples_for_block(uint64_t sample_pages_per_gib, uint64_t block_bytes, uint64_t npages);

#endif
