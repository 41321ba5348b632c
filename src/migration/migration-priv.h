/*
 * The inside of FerryMigration, shared by the files of the migration layer only (engine.c, runstate.c,
 * params.c, source.c, dest.c). Other layers see the functions of migration.h.
 *
 * One mutex (lock) guards the status, statistics, parameters, capabilities and the pointers the monitor thread
 * may touch (the channel and listener, to interrupt them). run_lock serialises calls into the host's stop/start
 * callbacks, which may take a while, so that they never run under lock. event_lock keeps the MIGRATION events in
 * the order of the status changes. Lock order: run_lock, lock, event_lock.
 */
#ifndef FERRY_MIGRATION_PRIV_H
#define FERRY_MIGRATION_PRIV_H

#include <pthread.h>
#include <stdint.h>

#include "ferry/backend.h"
#include "ferry/visitor.h"
#include "channel/channel.h"
#include "migration/migration.h"
#include "ram/ram.h"
#include "util/util.h"
#include "visitor/visitor-int.h"
#include "wire/wire.h"

typedef struct FerrySection {
    char *name;
    uint32_t instance_id;
    uint32_t version;
    uint32_t flags; /* FERRY_SECTION_* */
    FerrySectionFn fn;
    void *opaque;
} FerrySection;

/* Parameters: see params.c for the table (names, defaults, ranges). Read by migration threads with atomic loads. */
/* QEMU's MigMode; ferry does normal and cpr-transfer (the others are refused by the parameter check). */
typedef enum FerryMigMode {
    FERRY_MODE_NORMAL = 0,
    FERRY_MODE_CPR_REBOOT,
    FERRY_MODE_CPR_TRANSFER,
    FERRY_MODE_CPR_EXEC,
} FerryMigMode;

/* Values of the backend-transfer list (seed 004's BackendTransfer enum), as bit positions. */
typedef enum FerryBackendKind {
    FERRY_BACKEND_VIRTIO_NET_TAP = 0,
    FERRY_BACKEND__MAX,
} FerryBackendKind;

typedef struct FerryParams {
    int64_t max_bandwidth;  /* bytes per second, 0 = no limit */
    int64_t max_postcopy_bandwidth; /* bytes per second once in postcopy, 0 = no limit (QEMU's default) */
    int64_t throttle_trigger_threshold; /* auto-converge: percent */
    int64_t cpu_throttle_initial;
    int64_t cpu_throttle_increment;
    int64_t cpu_throttle_tailslow;      /* 0 / 1 */
    int64_t max_cpu_throttle;
    int64_t x_vcpu_dirty_limit_period;  /* dirty-limit: milliseconds, 1..1000 */
    int64_t vcpu_dirty_limit;           /* dirty-limit: MB/s per writer, >= 1 */
    int64_t downtime_limit; /* milliseconds */
    int64_t mode;           /* FerryMigMode */
    int64_t backend_transfer; /* bit mask of FerryBackendKind */
    int64_t multifd_channels;
    int64_t multifd_compression; /* FerryMultifdCompression */
    int64_t multifd_zlib_level;
    int64_t multifd_zstd_level;
    int64_t zero_page_detection; /* FerryZeroPageDetection */
    int64_t io_timeout;     /* milliseconds without progress on a channel before giving up; 0 = never */
    int64_t completion_policy;   /* FerryCompletionPolicy (ferry's own) */
    int64_t completion_deadline; /* milliseconds from migrate, 0 = none (ferry's own) */
    int64_t direct_io;      /* 0 / 1: mapped-ram page data with O_DIRECT (QEMU's direct-io) */
    int64_t restore_mode;   /* FerryRestoreMode (ferry's own) */
    /* QEMU's TLS parameters: object ids and a hostname, "" = not set (TLS off without tls-creds). Strings are
     * only read and replaced with lock held (no atomic access as for the numbers): migrations copy what they
     * need when they start. */
    char *tls_creds;
    char *tls_hostname;
    char *tls_authz;
} FerryParams;

/* ferry's restore-mode parameter: how a destination loads a mapped-ram file. */
typedef enum FerryRestoreMode {
    FERRY_RESTORE_COPY = 0, /* read every page into RAM before the workload runs (QEMU's way) */
    FERRY_RESTORE_MAP,      /* map the file's pages privately as the RAM (copy on write) and run at once */
} FerryRestoreMode;

/* ferry's completion-policy parameter. */
typedef enum FerryCompletionPolicy {
    FERRY_COMPLETION_NONE = 0,
    FERRY_COMPLETION_ENSURE,
} FerryCompletionPolicy;

/* QEMU's MultiFDCompression (the values ferry implements; the wire's FERRY_MFD_COMP_* have the same numbers). */
typedef enum FerryMultifdCompression {
    FERRY_MFD_COMPRESSION_NONE = 0,
    FERRY_MFD_COMPRESSION_ZLIB,
    FERRY_MFD_COMPRESSION_ZSTD,
} FerryMultifdCompression;

/* QEMU's ZeroPageDetection. */
typedef enum FerryZeroPageDetection {
    FERRY_ZERO_NONE = 0,   /* no check: zero pages are sent with their data */
    FERRY_ZERO_LEGACY,     /* checked by the migration thread */
    FERRY_ZERO_MULTIFD,    /* checked by the multifd channel threads (by the migration thread without multifd) */
} FerryZeroPageDetection;

typedef enum FerryCapability {
    FERRY_CAP_EVENTS,
    FERRY_CAP_RECORD_CHECKSUM,
    FERRY_CAP_POPULATE_HINTS,
    FERRY_CAP_UNIX_PAGE_FLIPPING,
    FERRY_CAP_MULTIFD,
    FERRY_CAP_SWITCHOVER_COMMIT,
    FERRY_CAP_AUTO_CONVERGE,
    FERRY_CAP_DIRTY_LIMIT,
    FERRY_CAP_POSTCOPY_RAM,
    FERRY_CAP_POSTCOPY_PREEMPT,
    FERRY_CAP_POSTCOPY_BLOCKTIME,
    FERRY_CAP_MAPPED_RAM,
    FERRY_CAP_BACKGROUND_SNAPSHOT,
    FERRY_CAP__MAX,
} FerryCapability;

/* Statistics of the current (or last) migration, in QEMU's units. */
typedef struct FerryMigStats {
    int64_t start_ms;            /* monotonic, when migrate / the incoming connection started */
    int64_t setup_time_ms;
    int64_t end_ms;              /* when it reached a terminal status, 0 before */
    int64_t downtime_ms;
    int64_t expected_downtime_ms;
    uint64_t transferred;        /* bytes on the wire, both RAM and control */
    uint64_t remaining;          /* bytes of dirty RAM not yet sent */
    uint64_t total;              /* bytes of RAM */
    uint64_t duplicate;          /* zero pages (sent as a bit) */
    uint64_t normal;             /* pages sent with their data */
    uint64_t dirty_sync_count;   /* passes (harvests of the dirty tracker) */
    uint64_t dirty_pages_rate;   /* pages dirtied per second, last pass */
    uint64_t precopy_bytes;      /* bytes sent while the workload ran */
    uint64_t downtime_bytes;     /* bytes sent while it was stopped */
    double mbps;                 /* recent throughput, megabits per second */
    uint64_t pages_per_second;
    uint64_t skipped_bytes;      /* incoming: bytes of skippable data this build did not know (records, sections,
                                  * fields) */
    uint64_t fd_ram_bytes;       /* cpr-transfer: bytes of RAM passed as memfds instead of copied */
    uint32_t fd_ram_blocks;      /* ... in that many blocks */
    uint32_t fds_passed;         /* file descriptors sent / received (RAM blocks, backends, the page pipe) */
    uint64_t page_pipe_bytes;    /* unix-page-flipping: page data that went through the page pipe */
    uint64_t multifd_bytes;      /* bytes on the multifd channels (QEMU's ram.multifd-bytes) */
    /* Incoming multifd: what the channel threads had counted when the fields above were last updated (the
     * incoming thread updates them per main-channel record, which are rare during a pass; query-migrate adds
     * what the channels counted since). */
    uint64_t mfd_seen_bytes, mfd_seen_normal, mfd_seen_zero;
    /* Postcopy, both ends (QEMU's ram.postcopy-requests, ram.postcopy-bytes). */
    uint64_t postcopy_requests;  /* pages requested by the destination's faults */
    uint64_t postcopy_bytes;     /* bytes sent / received after the switch to postcopy */
    uint64_t postcopy_pending;   /* pages still to come (0 outside postcopy) */
    int cpu_throttle_percentage; /* auto-converge: the throttle now applied to the workload (0: none) */
    /* completion-policy "ensure" (ferry's own): the source's last decision, NULL before the first (or with the
     * policy off); the pass it was taken after, why (in words), the time precopy was then predicted to need
     * (-1: never) and the bound it was held to, both in ms. */
    const char *completion_decision; /* "precopy", "throttle" or "postcopy" (static strings) */
    char completion_reason[256]; /* as FerryCompletionDecision.reason */
    uint64_t completion_pass;
    int64_t completion_predicted_ms;
    int64_t completion_deadline_ms;
    /* dirty-limit, while the migration holds the writers to vcpu-dirty-limit (dirtylimit.c). */
    bool dirty_limit_active;
    uint64_t dirty_limit_throttle_us;  /* the most a writer slept per period over the last pass */
    bool dirty_limit_has_ring;         /* the host reports ring-full waits */
    uint64_t dirty_limit_ring_full_us; /* ... the mean wait per writer per period over the last pass */
} FerryMigStats;

/* A backend whose fd moves with backend-transfer (include/ferry/backend.h). */
typedef struct FerryBackend {
    FerryBackendKind kind;
    char *id;
    FerryBackendOps ops;
    void *opaque;
} FerryBackend;

struct FerryMappedVerifier;

struct FerryMigration {
    FerryMutex lock;
    FerryMutex event_lock; /* orders the announcements of status changes (engine.c); taken after lock */
    pthread_mutex_t run_lock;

    /* Registration (before any migration). */
    FerryRamBlock **blocks;
    size_t nblocks;
    FerrySection *sections;
    size_t nsections;
    FerryBackend *backends;
    size_t nbackends;
    FerryTrackerKind tracker_kind;
    const FerryDirtyTrackerOps *host_tracker; /* FERRY_TRACKER_HOST's ops (borrowed), or NULL */
    void *host_tracker_opaque;
    char *host_tracker_note;     /* the host's reason for its choice (ferry_migration_set_dirty_tracker_note) */

    /* Hooks from the host runtime. */
    FerryEventFn event_fn;
    void *event_opaque;
    FerryQuitFn quit_fn;
    void *quit_opaque;
    FerryHostOps host_ops;
    void *host_opaque;

    /* Run state (guarded by lock; changed with run_lock held). */
    FerryRunState runstate;
    bool autostart; /* the destination resumes the workload after an incoming migration */

    FerryParams params;
    bool caps[FERRY_CAP__MAX];

    /* The current or last migration, in either direction. */
    bool incoming;               /* direction of the current/last one */
    FerryMigrationStatus status;
    char *error_desc;            /* at most FERRY_MIG_ERROR_DESC_MAX bytes of the error, then a cut marker */
    FerryMigStats stats;
    /* restore-mode map: the background check of the last restore (the incoming thread starts it, the next
     * incoming migration or the end frees it); its failure, once reported. Under lock. */
    struct FerryMappedVerifier *verifier;
    char *verify_error;
    char *tracker_name;          /* outgoing: the tracker in use */
    char *tracker_note;          /* why a fallback was taken */
    bool features_negotiated;    /* features holds what the current/last stream uses */
    FerryWireFeatureList features;
    json_t *tls_info;            /* the main channel's TLS session (ferry__tls_channel_info), or NULL */

    /* Outgoing. */
    pthread_t out_thread;
    bool out_thread_joinable;
    FerryMigrationAddress *out_addr;
    FerryChannel *out_chan;      /* set while connected, for cancel */
    struct FerryMultifdSend *out_mfd; /* its multifd channels while they exist, for cancel */
    bool cancel_requested;
    int cancel_fd;               /* eventfd, readable once cancel is requested: interrupts a connect */
    FerryTls *out_tls;           /* set by migrate when tls-creds is set; the source thread takes it */

    /* Incoming. */
    pthread_t in_thread;
    bool in_thread_joinable;
    FerryListener *listener;
    FerryChannel *in_chan;       /* set while connected, for shutdown at exit */
    struct FerryMultifdRecv *in_mfd; /* its multifd channels while they exist, for shutdown at exit */
    bool exit_on_error;
    bool quitting;
    FerryTls *in_tls;            /* set by migrate-incoming when tls-creds is set; the incoming thread takes it */

    /* Postcopy (postcopy.c has the commands). The source thread switches when it sees postcopy_requested (atomic);
     * a paused migration's thread waits on pc_cond (with lock) for resume_addr / recover_listener, or quitting. */
    bool postcopy_requested;
    pthread_cond_t pc_cond;
    FerryMigrationAddress *resume_addr; /* source: migrate resume=true's address, taken by the paused thread */
    FerryListener *recover_listener;    /* destination: migrate-recover's listener, taken by the paused thread */
    FerryChannel *out_pchan;     /* source: the preempt channel while connected, for pause and quit */
    FerryChannel *in_pchan;      /* destination: the same */
    struct FerryBlocktime *blocktime; /* destination: fault latencies of the current/last postcopy, or NULL */
    uint32_t *vcpu_tids;         /* the host's vCPU threads (ferry_host_set_vcpu_thread), index -> tid, 0 unset */
    size_t nvcpu_tids;

    struct FerryDirtyRate *dirtyrate; /* calc-dirty-rate's state (dirtyrate.c), NULL until first used */
    struct FerryDirtyLimitRun *dl_run; /* dirty-limit applied by the running migration (dirtylimit.c), or NULL */

    FerryMigTestHook test_hook;  /* ferry__migration_set_test_hook, for unit tests only */
    void *test_hook_opaque;
};

/* engine.c */
/* The status changes only here: from @from to @to if the status is @from (false, nothing changed, otherwise) and
 * the transition table allows it (a bug otherwise: logged, fatal in a debug build). Logs and emits MIGRATION. */
bool ferry__mig_set_state(FerryMigration *m, FerryMigrationStatus from, FerryMigrationStatus to);
FerryMigrationStatus ferry__mig_status(FerryMigration *m);
/* The most bytes of an error that error-desc keeps: the error may quote a string from the peer (a destination's
 * failure report, a block name) of up to a control record's size, and query-migrate is answered often. */
#define FERRY_MIG_ERROR_DESC_MAX 1024
/* Status failed (from whatever status that is not terminal) + error-desc (scrubbed, bounded), once. */
void ferry__mig_fail(FerryMigration *m, const FerryError *err);
/* Calls the test hook, if one is set, at @point. */
void ferry__mig_test_point(FerryMigration *m, FerryMigTestPoint point);
/* TLS on a migration's main channel, for both directions. tls_wrap replaces *@chan by a TLS channel around it
 * (which takes it) and publishes that in *@slot (m->out_chan or m->in_chan, under m->lock) so that cancel and quit
 * interrupt the handshake that follows; on failure *@chan is NULL. tls_handshake runs it and records the session
 * for query-migrate's "tls". */
bool ferry__mig_tls_wrap(FerryMigration *m, FerryChannel **chan, FerryChannel **slot, FerryTls *tls,
                         FerryError **errp);
bool ferry__mig_tls_handshake(FerryMigration *m, FerryChannel *chan, FerryError **errp);
void ferry__mig_emit(FerryMigration *m, const char *name, json_t *data);
bool ferry__mig_cap(FerryMigration *m, FerryCapability cap);
bool ferry__migration_is_active_locked(const FerryMigration *m);
/* Run @sec's function with the binary output visitor: its schema and data (both the caller's). The error names
 * the section. */
bool ferry__section_save(const FerrySection *sec, FerrySchema **schema, uint8_t **data, size_t *len,
                         FerryError **errp);

/* runstate.c: transitions made by migrations. */
void ferry__runstate_set(FerryMigration *m, FerryRunState rs);
/* Stop the workload for switchover; returns the run state before, to restore on failure. */
FerryRunState ferry__vm_stop_for_migration(FerryMigration *m);
/* After a failed or cancelled outgoing migration: back to @prev, restarting the workload if it ran. */
void ferry__vm_restore_after_migration(FerryMigration *m, FerryRunState prev);
/* After a completed outgoing migration: release every backend (FerryBackendOps.release) if a live destination
 * @acknowledged it, then run state postmigrate. */
void ferry__vm_postmigrate(FerryMigration *m, bool acknowledged);
/* auto-converge: slow the workload's writers to @percent % of their time asleep (0 lifts it) through the host's
 * throttle callback, and remember it for query-migrate. False if the host has no throttle. */
bool ferry__vm_throttle(FerryMigration *m, int percent);

/* completion-policy (completion.c): the time precopy needs to converge (ms) when @remaining bytes are left, the
 * workload dirties @dirty bytes per second and the link carries @bandwidth, stopping once the rest fits in
 * @downtime_ms; -1 when it never converges (the dirty rate keeps up with the bandwidth). @passes (may be NULL)
 * gets the passes it needs. */
int64_t ferry__precopy_predict_ms(double remaining, double dirty, double bandwidth, int64_t downtime_ms,
                                  unsigned *passes);

/* What the completion policy sees after a pass (completion.c says how it decides). */
typedef struct FerryCompletionInput {
    uint64_t pending_pages;    /* dirty pages left after the pass's harvest */
    uint64_t pages_in_pass;    /* pages the pass sent */
    uint64_t dirty_pages_rate; /* pages dirtied per second during the pass */
    uint32_t page_size;
    double bandwidth;          /* bytes per second, measured */
    int64_t downtime_ms;       /* downtime-limit */
    int64_t elapsed_ms;        /* since migrate */
    int64_t bound_ms;          /* completion-deadline, or three times the first pass */
    int throttle;              /* the throttle now (percent) */
    int throttle_initial, throttle_increment, max_throttle; /* cpu-throttle-initial, -increment, max-cpu-throttle */
    bool can_throttle;         /* the host has a throttle */
    bool can_postcopy;         /* the stream negotiated postcopy-ram */
} FerryCompletionInput;

typedef enum FerryCompletionAction {
    FERRY_COMPLETION_PRECOPY,  /* go on (or nothing more can be done) */
    FERRY_COMPLETION_THROTTLE, /* throttle the workload to .throttle % */
    FERRY_COMPLETION_POSTCOPY, /* switch to postcopy */
} FerryCompletionAction;

typedef struct FerryCompletionDecision {
    FerryCompletionAction action;
    int throttle;              /* THROTTLE: the new percentage */
    int64_t predicted_ms;      /* precopy's predicted time, -1 = never */
    char reason[256];
} FerryCompletionDecision;

void ferry__completion_decide(const FerryCompletionInput *in, FerryCompletionDecision *out);
const char *ferry__completion_action_name(FerryCompletionAction a);
/* After a successful incoming migration. */
void ferry__vm_incoming_done(FerryMigration *m, bool source_running);

/* params.c */
void ferry__params_init(FerryMigration *m);
void ferry__params_free(FerryMigration *m);
int64_t ferry__param_max_bandwidth(FerryMigration *m);
/* max-postcopy-bandwidth: the limit that replaces max-bandwidth once the migration is in postcopy; 0 = none. */
int64_t ferry__param_max_postcopy_bandwidth(FerryMigration *m);
int64_t ferry__param_downtime_limit(FerryMigration *m);
FerryMigMode ferry__param_mode(FerryMigration *m);
/* What in the current settings needs fds passed ("mode cpr-transfer", "backend-transfer"), or NULL. With m->lock
 * held. */
const char *ferry__migration_needs_fds(FerryMigration *m);
bool ferry__param_backend_transfer(FerryMigration *m, FerryBackendKind kind);
/* "virtio-net-tap" <-> FERRY_BACKEND_VIRTIO_NET_TAP. */
bool ferry__backend_kind_parse(const char *name, FerryBackendKind *kind);
const char *ferry__backend_kind_name(FerryBackendKind kind);

/* params.c: capabilities that are stream features. */
/* The features this side offers: the stream-feature capabilities that are on. */
void ferry__features_offer(FerryMigration *m, FerryWireFeatureList *out);
/* The destination's answer: the offered features it supports and has on. */
void ferry__features_accept(FerryMigration *m, const FerryWireFeatureList *offered, FerryWireFeatureList *out);
/* The destination's check of a stream's FEATURES: refuse a critical feature this build does not support. */
bool ferry__features_check(const FerryWireFeatureList *used, FerryError **errp);
/* Remember what the stream uses, for query-migrate and query-migrate-capabilities. */
void ferry__features_record(FerryMigration *m, const FerryWireFeatureList *used);
bool ferry__features_uses(const FerryWireFeatureList *used, FerryCapability cap);

/* postcopy.c: the engine's side of postcopy (the commands are in migration.h). */
/* Status @from (postcopy-active, -recover-setup, -recover) becomes postcopy-paused, error-desc says why (replacing
 * the last reason). False if the status was not @from. */
bool ferry__mig_pause(FerryMigration *m, FerryMigrationStatus from, const FerryError *why);
/* A paused migration waits (no lock held) for migrate resume=true (source) / migrate-recover (destination): the
 * address / listener to recover with, now the caller's; NULL when the process quits instead. */
FerryMigrationAddress *ferry__mig_wait_resume(FerryMigration *m);
FerryListener *ferry__mig_wait_recover(FerryMigration *m);
/* query-migrate's postcopy members (blocktime and fault latency, with the capability), lock held. */
void ferry__postcopy_query_locked(FerryMigration *m, json_t *r);
/* What the engine keeps for postcopy, at its end. */
void ferry__postcopy_free(FerryMigration *m);

typedef struct FerryDirtyRate FerryDirtyRate;

/*
 * dirtylimit.c: the dirty-limit capability's side in the source (the commands are in migration.h). Called by the
 * source's migration thread only. apply holds every writer to vcpu-dirty-limit over x-vcpu-dirty-limit-period
 * (again when the parameter changed; a no-op when nothing changed); pass_stats updates query-migrate's
 * dirty-limit members from the writers' counters since the last pass; lift removes every writer's limit and the
 * members, when the migration ends in any way (a no-op if apply never ran).
 */
void ferry__dirtylimit_migration_apply(FerryMigration *m);
void ferry__dirtylimit_migration_pass_stats(FerryMigration *m);
void ferry__dirtylimit_migration_lift(FerryMigration *m);
/* Whether the host can count per writer now; *why (static) says why not. Any thread, no lock held. */
bool ferry__dirtylimit_supported(FerryMigration *m, const char **why);
/* The host's writers' counters (ferry__xcalloc'd array, *n of them), or NULL with *why when it cannot count. */
FerryWriterStats *ferry__dirtylimit_stats(FerryMigration *m, int *n, const char **why);

/* source.c / dest.c: thread bodies. */
void *ferry__source_thread(void *opaque);
void *ferry__dest_thread(void *opaque);

/* ---- Added with the shared record reader (record-reader.c, issue 17): stream features by name. ---- */
/* params.c: whether @name is a stream feature this build knows. The capability table is the one list of known
 * features: the destination's check and the analyzer's "known" both ask it. */
bool ferry__feature_known(const char *name);
/* The feature name of a stream-feature capability ("record-checksum"). */
const char *ferry__feature_name(FerryCapability cap);

#endif
