/*
 * The engine object: registration of RAM blocks and state sections, the hooks of the host runtime, the
 * migration status machine and query-migrate, and the entry points that start, cancel and join migrations.
 * The work of each direction is in source.c and dest.c; run state in runstate.c; parameters in params.c.
 *
 * Migration status (QEMU's MigrationStatus names). A status changes only through ferry__mig_set_state(m, from,
 * to), and only from the status the caller expects: a caller that finds another (a cancel got there first) sees
 * false and decides what follows. A change that the table `transitions` below does not list is a bug. The
 * table, drawn (F: failed is reachable from every status that is not terminal; C: so is cancelling, on the
 * source, except in postcopy):
 *
 *   none, completed, failed, cancelled --migrate / incoming--> setup
 *   setup --connected, negotiated--> active                                   (F, C)
 *   active --last pass fits downtime-limit, workload stopped--> device       (F, C)
 *   active --pause-before-switchover--> pre-switchover --> device            (F, C)
 *   device --ACK (and COMMIT)--> completed                                   (F, C)
 *   active --destination: END verified, sections loaded--> completed
 *   active, pre-switchover, device --postcopy starts--> postcopy-active     (F)
 *   postcopy-active --all pages there--> completed
 *   postcopy-active --channel lost--> postcopy-paused --recover--> postcopy-recover-setup
 *   postcopy-recover-setup --connected--> postcopy-recover --> postcopy-active
 *   postcopy-recover-setup, postcopy-recover --lost again--> postcopy-paused
 *   cancelling --thread stopped--> cancelled
 *   cancelling --the commit point had passed: the destination runs--> completed
 *
 * Today a destination uses setup, active, completed and failed, and a source also device, cancelling and
 * cancelled. completed, failed and cancelled are terminal; a new migration starts again from setup.
 * pre-switchover and the postcopy statuses are in the table already, so that the issues that add them only add the
 * code that makes these transitions.
 */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "migration/mapped-ram.h"
#include "migration/migration-priv.h"
#include "multifd/multifd.h"
#include "ram/blocktime.h"
#include "util/util.h"

static const char *const status_names[FERRY_MIG__MAX] = {
    [FERRY_MIG_NONE] = "none",
    [FERRY_MIG_SETUP] = "setup",
    [FERRY_MIG_CANCELLING] = "cancelling",
    [FERRY_MIG_CANCELLED] = "cancelled",
    [FERRY_MIG_ACTIVE] = "active",
    [FERRY_MIG_POSTCOPY_ACTIVE] = "postcopy-active",
    [FERRY_MIG_POSTCOPY_PAUSED] = "postcopy-paused",
    [FERRY_MIG_POSTCOPY_RECOVER_SETUP] = "postcopy-recover-setup",
    [FERRY_MIG_POSTCOPY_RECOVER] = "postcopy-recover",
    [FERRY_MIG_COMPLETED] = "completed",
    [FERRY_MIG_FAILED] = "failed",
    [FERRY_MIG_PRE_SWITCHOVER] = "pre-switchover",
    [FERRY_MIG_DEVICE] = "device",
};

#define TO(s) (1u << FERRY_MIG_##s)
#define TO_START TO(SETUP)
#define TO_END (TO(FAILED) | TO(CANCELLING))

/* The transition table: for each status, the statuses it may change to (drawn in the comment at the top). */
static const uint32_t transitions[FERRY_MIG__MAX] = {
    [FERRY_MIG_NONE] = TO_START,
    [FERRY_MIG_COMPLETED] = TO_START,
    [FERRY_MIG_FAILED] = TO_START,
    [FERRY_MIG_CANCELLED] = TO_START,
    [FERRY_MIG_SETUP] = TO(ACTIVE) | TO_END,
    [FERRY_MIG_ACTIVE] = TO(PRE_SWITCHOVER) | TO(DEVICE) | TO(POSTCOPY_ACTIVE) | TO(COMPLETED) | TO_END,
    [FERRY_MIG_PRE_SWITCHOVER] = TO(DEVICE) | TO(POSTCOPY_ACTIVE) | TO_END,
    [FERRY_MIG_DEVICE] = TO(COMPLETED) | TO(POSTCOPY_ACTIVE) | TO_END,
    [FERRY_MIG_POSTCOPY_ACTIVE] = TO(COMPLETED) | TO(POSTCOPY_PAUSED) | TO(FAILED),
    [FERRY_MIG_POSTCOPY_PAUSED] = TO(POSTCOPY_RECOVER_SETUP) | TO(FAILED),
    [FERRY_MIG_POSTCOPY_RECOVER_SETUP] = TO(POSTCOPY_RECOVER) | TO(POSTCOPY_PAUSED) | TO(FAILED),
    [FERRY_MIG_POSTCOPY_RECOVER] = TO(POSTCOPY_ACTIVE) | TO(POSTCOPY_PAUSED) | TO(FAILED),
    [FERRY_MIG_CANCELLING] = TO(CANCELLED) | TO(COMPLETED) | TO(FAILED),
};

const char *ferry__migration_status_name(FerryMigrationStatus s)
{
    return (unsigned)s < FERRY_MIG__MAX ? status_names[s] : "unknown";
}

bool ferry__migration_status_terminal(FerryMigrationStatus s)
{
    return s == FERRY_MIG_NONE || s == FERRY_MIG_COMPLETED || s == FERRY_MIG_FAILED || s == FERRY_MIG_CANCELLED;
}

bool ferry__migration_transition_allowed(FerryMigrationStatus from, FerryMigrationStatus to)
{
    return (unsigned)from < FERRY_MIG__MAX && (unsigned)to < FERRY_MIG__MAX && (transitions[from] >> to & 1);
}

static bool status_is_terminal(FerryMigrationStatus s)
{
    return ferry__migration_status_terminal(s);
}

/*
 * The one place that changes m->status. With lock held. False, and nothing changed, when the status is not
 * @from (a race the caller sees and decides about) or when the table does not allow @from -> @to (a bug: logged
 * loudly, fatal in a debug build).
 */
static bool set_state_locked(FerryMigration *m, FerryMigrationStatus from, FerryMigrationStatus to)
{
    FERRY_ASSERT_HELD(&m->lock);
    if (m->status != from) {
        return false;
    }
    if (!ferry__migration_transition_allowed(from, to)) {
        FERRY_BUG("migration status %s -> %s is not an allowed transition", ferry__migration_status_name(from),
                  ferry__migration_status_name(to));
        return false;
    }
    m->status = to;
    if (status_is_terminal(to) && !m->stats.end_ms) {
        m->stats.end_ms = ferry__clock_ms();
    }
    return true;
}

/*
 * Drops m->lock (held) and, if @changed, announces the change to @to: the log line and the MIGRATION event. The
 * event lock is taken before m->lock is dropped, so that two changes are announced in the order they were made
 * (a cancel's "cancelling" can never follow the source thread's "cancelled"). Lock order: lock, then event_lock.
 */
static void unlock_and_announce(FerryMigration *m, bool changed, FerryMigrationStatus to)
{
    FERRY_ASSERT_HELD(&m->lock);
    if (!changed) {
        ferry__mutex_unlock(&m->lock);
        return;
    }
    bool events = m->caps[FERRY_CAP_EVENTS];
    ferry__mutex_lock(&m->event_lock);
    ferry__mutex_unlock(&m->lock);
    ferry__log(FERRY_LOG_INFO, "migration status: %s", ferry__migration_status_name(to));
    if (events) {
        ferry__mig_emit(m, "MIGRATION", json_pack("{s:s}", "status", ferry__migration_status_name(to)));
    }
    ferry__mutex_unlock(&m->event_lock);
}

void ferry__migration_set_test_hook(FerryMigration *m, FerryMigTestHook fn, void *opaque)
{
    m->test_hook = fn;
    m->test_hook_opaque = opaque;
}

void ferry__mig_test_point(FerryMigration *m, FerryMigTestPoint point)
{
    if (m->test_hook) {
        m->test_hook(m, point, m->test_hook_opaque);
    }
}

FerryMigration *ferry__migration_new(void)
{
    FerryMigration *m = ferry__xcalloc(1, sizeof(*m));
    ferry__mutex_init(&m->lock);
    ferry__mutex_init(&m->event_lock);
    pthread_mutex_init(&m->run_lock, NULL);
    m->runstate = FERRY_RUN_PRELAUNCH;
    m->autostart = true;
    m->status = FERRY_MIG_NONE;
    m->tracker_kind = FERRY_TRACKER_AUTO;
    /* Without it a connect could not be interrupted; nothing else depends on it. */
    m->cancel_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    pthread_cond_init(&m->pc_cond, NULL);
    ferry__params_init(m);
    return m;
}

void ferry__migration_free(FerryMigration *m)
{
    if (!m) {
        return;
    }
    ferry__migration_join(m);
    ferry__dirtyrate_free(m); /* its thread reads the blocks freed below */
    for (size_t i = 0; i < m->nblocks; i++) {
        ferry__ram_block_free(m->blocks[i]);
    }
    free(m->blocks);
    for (size_t i = 0; i < m->nsections; i++) {
        free(m->sections[i].name);
    }
    free(m->sections);
    for (size_t i = 0; i < m->nbackends; i++) {
        free(m->backends[i].id);
    }
    free(m->backends);
    free(m->error_desc);
    free(m->tracker_name);
    free(m->tracker_note);
    free(m->host_tracker_note);
    ferry__mapped_verify_free(m->verifier);
    free(m->verify_error);
    json_decref(m->tls_info);
    ferry__tls_unref(m->out_tls);
    ferry__tls_unref(m->in_tls);
    ferry__params_free(m);
    ferry__address_free(m->out_addr);
    ferry__postcopy_free(m);
    pthread_cond_destroy(&m->pc_cond);
    if (m->cancel_fd >= 0) {
        close(m->cancel_fd);
    }
    ferry__mutex_destroy(&m->lock);
    ferry__mutex_destroy(&m->event_lock);
    pthread_mutex_destroy(&m->run_lock);
    free(m);
}

void ferry__migration_set_event_fn(FerryMigration *m, FerryEventFn fn, void *opaque)
{
    m->event_fn = fn;
    m->event_opaque = opaque;
}

void ferry__migration_set_quit_fn(FerryMigration *m, FerryQuitFn fn, void *opaque)
{
    m->quit_fn = fn;
    m->quit_opaque = opaque;
}

void ferry__migration_set_host_ops(FerryMigration *m, const FerryHostOps *ops, void *opaque)
{
    if (ops) {
        m->host_ops = *ops;
    } else {
        memset(&m->host_ops, 0, sizeof(m->host_ops));
    }
    m->host_opaque = opaque;
}

void ferry__mig_emit(FerryMigration *m, const char *name, json_t *data)
{
    if (m->event_fn) {
        m->event_fn(name, data, m->event_opaque);
    } else {
        json_decref(data);
    }
}

bool ferry__mig_cap(FerryMigration *m, FerryCapability cap)
{
    ferry__mutex_lock(&m->lock);
    bool on = m->caps[cap];
    ferry__mutex_unlock(&m->lock);
    return on;
}

bool ferry__mig_set_state(FerryMigration *m, FerryMigrationStatus from, FerryMigrationStatus to)
{
    ferry__mutex_lock(&m->lock);
    bool changed = set_state_locked(m, from, to);
    unlock_and_announce(m, changed, to);
    return changed;
}

FerryMigrationStatus ferry__mig_status(FerryMigration *m)
{
    ferry__mutex_lock(&m->lock);
    FerryMigrationStatus s = m->status;
    ferry__mutex_unlock(&m->lock);
    return s;
}

bool ferry__mig_tls_wrap(FerryMigration *m, FerryChannel **chan, FerryChannel **slot, FerryTls *tls,
                         FerryError **errp)
{
    if ((*chan)->one_way) {
        ferry_error_setg(errp, "tls-creds '%s' needs a two-way socket, and '%s' is not one",
                         ferry__tls_creds_name(tls), (*chan)->desc);
        return false;
    }
    ferry__mutex_lock(&m->lock);
    *slot = NULL;
    ferry__mutex_unlock(&m->lock);
    FerryChannel *t = ferry__tls_channel_new(*chan, tls, errp);
    *chan = t;
    if (!t) {
        return false;
    }
    ferry__mutex_lock(&m->lock);
    *slot = t;
    ferry__mutex_unlock(&m->lock);
    return true;
}

bool ferry__mig_tls_handshake(FerryMigration *m, FerryChannel *chan, FerryError **errp)
{
    if (!ferry__tls_channel_handshake(chan, errp)) {
        return false;
    }
    json_t *info = ferry__tls_channel_info(chan);
    ferry__mutex_lock(&m->lock);
    json_decref(m->tls_info);
    m->tls_info = info;
    ferry__mutex_unlock(&m->lock);
    return true;
}

void ferry__mig_fail(FerryMigration *m, const FerryError *err)
{
    ferry__mutex_lock(&m->lock);
    if (!m->error_desc) {
        /* The message may quote what a peer sent (a NACK, a block name): keep it valid for QMP's JSON. */
        m->error_desc = ferry__utf8_scrub_bounded(err ? ferry_error_msg(err) : "unknown error",
                                                  FERRY_MIG_ERROR_DESC_MAX);
    }
    /* Failing is allowed from every status that is not terminal, whichever the thread last saw. */
    FerryMigrationStatus from = m->status;
    bool changed = !status_is_terminal(from) && set_state_locked(m, from, FERRY_MIG_FAILED);
    unlock_and_announce(m, changed, FERRY_MIG_FAILED);
}

bool ferry__migration_is_active_locked(const FerryMigration *m)
{
    FERRY_ASSERT_HELD(&m->lock);
    return !status_is_terminal(m->status) || m->out_thread_joinable || m->in_thread_joinable;
}

/* Public registration API. */

const char *ferry__migration_needs_fds(FerryMigration *m)
{
    if (m->params.mode == FERRY_MODE_CPR_TRANSFER) {
        return "mode cpr-transfer";
    }
    if (m->caps[FERRY_CAP_UNIX_PAGE_FLIPPING]) {
        return "unix-page-flipping";
    }
    for (size_t i = 0; i < m->nbackends; i++) {
        if ((m->params.backend_transfer >> m->backends[i].kind) & 1) {
            return "backend-transfer";
        }
    }
    return NULL;
}

/* Whether a migration is under way in either direction (registration is closed then). */
static bool registration_closed(FerryMigration *m)
{
    ferry__mutex_lock(&m->lock);
    bool busy = ferry__migration_is_active_locked(m) && m->status != FERRY_MIG_NONE;
    ferry__mutex_unlock(&m->lock);
    return busy;
}

/* What backs a new block: anonymous memory, a memfd, or the file @path from @offset (file_path non-NULL). */
typedef struct RamBacking {
    bool memfd;
    bool share;
    uint64_t hugetlb;      /* memfd: a hugetlb memfd of these pages (see ferry_ram_hugepage_size), 0 for none */
    bool hugetlb_default;  /* memfd: hugetlb with the default huge page size */
    const char *tmp_dir;   /* a temporary file in this directory */
    const char *file_path;
    uint64_t file_offset;
} RamBacking;

static FerryRamBlock *ram_block_new(FerryMigration *m, const char *name, uint64_t size, const RamBacking *how,
                                    FerryError **errp);

FerryRamBlock *ferry_ram_block_new(FerryMigration *m, const char *name, uint64_t size, FerryError **errp)
{
    return ram_block_new(m, name, size, &(RamBacking){ .memfd = false }, errp);
}

FerryRamBlock *ferry_ram_block_new_memfd(FerryMigration *m, const char *name, uint64_t size, bool share,
                                         FerryError **errp)
{
    return ram_block_new(m, name, size, &(RamBacking){ .memfd = true, .share = share }, errp);
}

FerryRamBlock *ferry_ram_block_new_file(FerryMigration *m, const char *name, uint64_t size, const char *path,
                                        uint64_t offset, bool share, FerryError **errp)
{
    if (!path || !path[0]) {
        /* Checked here too: a NULL path would otherwise select the anonymous kind. */
        ferry_error_setg(errp, "RAM block '%s': no file to map (mem-path is required)", name ? name : "(null)");
        return NULL;
    }
    return ram_block_new(m, name, size,
                         &(RamBacking){ .share = share, .file_path = path, .file_offset = offset }, errp);
}

FerryRamBlock *ferry_ram_block_new_hugetlb(FerryMigration *m, const char *name, uint64_t size, bool share,
                                           uint64_t hugepage_size, FerryError **errp)
{
    return ram_block_new(m, name, size,
                         &(RamBacking){ .memfd = true, .share = share, .hugetlb = hugepage_size,
                                        .hugetlb_default = hugepage_size == 0 },
                         errp);
}

FerryRamBlock *ferry_ram_block_new_tmpfile(FerryMigration *m, const char *name, uint64_t size, const char *dir,
                                           bool share, FerryError **errp)
{
    if (!dir || !dir[0]) {
        ferry_error_setg(errp, "RAM block '%s': no directory for its file (mem-path is required)",
                         name ? name : "(null)");
        return NULL;
    }
    return ram_block_new(m, name, size, &(RamBacking){ .share = share, .tmp_dir = dir }, errp);
}

bool ferry_ram_block_shared(const FerryRamBlock *b)
{
    return b->shared;
}

bool ferry_migration_register_backend(FerryMigration *m, const char *kind, const char *id,
                                      const FerryBackendOps *ops, void *opaque, FerryError **errp)
{
    FerryBackendKind k;
    if (!kind || !ferry__backend_kind_parse(kind, &k)) {
        ferry_error_setg(errp, "unknown backend kind '%s' (virtio-net-tap)", kind ? kind : "(null)");
        return false;
    }
    if (!id || !*id || strlen(id) > 200) {
        ferry_error_setg(errp, "backend id must be 1 to 200 bytes");
        return false;
    }
    for (const char *c = id; *c; c++) {
        if (*c < 0x21 || *c > 0x7e) {
            ferry_error_setg(errp, "backend id '%s': printable ASCII without spaces only", id);
            return false;
        }
    }
    if (!ops || !ops->get_fd || !ops->set_fd) {
        ferry_error_setg(errp, "backend '%s': get_fd and set_fd are both needed", id);
        return false;
    }
    for (size_t i = 0; i < m->nbackends; i++) {
        if (m->backends[i].kind == k && strcmp(m->backends[i].id, id) == 0) {
            ferry_error_setg(errp, "backend %s '%s' is already registered", kind, id);
            return false;
        }
    }
    if (registration_closed(m)) {
        ferry_error_setg(errp, "cannot register backend '%s' while a migration is in progress", id);
        return false;
    }
    m->backends = ferry__xrealloc(m->backends, (m->nbackends + 1) * sizeof(*m->backends));
    m->backends[m->nbackends++] = (FerryBackend){ .kind = k, .id = ferry__xstrdup(id), .ops = *ops,
                                                  .opaque = opaque };
    return true;
}

bool ferry_migration_backend_transfer(FerryMigration *m, const char *kind)
{
    FerryBackendKind k;
    return kind && ferry__backend_kind_parse(kind, &k) && ferry__param_backend_transfer(m, k);
}

static FerryRamBlock *ram_block_new(FerryMigration *m, const char *name, uint64_t size, const RamBacking *how,
                                    FerryError **errp)
{
    for (size_t i = 0; i < m->nblocks; i++) {
        if (strcmp(m->blocks[i]->name, name) == 0) {
            ferry_error_setg(errp, "RAM block '%s' is already registered", name);
            return NULL;
        }
    }
    if (registration_closed(m)) {
        ferry_error_setg(errp, "cannot register RAM block '%s' while a migration is in progress", name);
        return NULL;
    }
    FerryRamBlock *b = how->file_path ? ferry__ram_block_new_file(name, size, how->file_path, how->file_offset,
                                                                  how->share, errp)
                       : how->tmp_dir ? ferry__ram_block_new_tmpfile(name, size, how->tmp_dir, how->share, errp)
                       : how->hugetlb || how->hugetlb_default
                           ? ferry__ram_block_new_hugetlb(name, size, how->share, how->hugetlb, errp)
                       : how->memfd   ? ferry__ram_block_new_memfd(name, size, how->share, errp)
                                      : ferry__ram_block_new(name, size, errp);
    if (!b) {
        return NULL;
    }
    b->index = (uint32_t)m->nblocks;
    m->blocks = ferry__xrealloc(m->blocks, (m->nblocks + 1) * sizeof(*m->blocks));
    m->blocks[m->nblocks++] = b;
    return b;
}

void ferry_migration_set_dirty_tracker(FerryMigration *m, FerryTrackerKind kind)
{
    ferry__mutex_lock(&m->lock);
    m->tracker_kind = kind;
    ferry__mutex_unlock(&m->lock);
}

void ferry_migration_set_dirty_tracker_ops(FerryMigration *m, const FerryDirtyTrackerOps *ops, void *opaque)
{
    ferry__mutex_lock(&m->lock);
    m->host_tracker = ops;
    m->host_tracker_opaque = opaque;
    m->tracker_kind = FERRY_TRACKER_HOST;
    ferry__mutex_unlock(&m->lock);
}

void ferry_migration_set_dirty_tracker_note(FerryMigration *m, const char *note)
{
    ferry__mutex_lock(&m->lock);
    free(m->host_tracker_note);
    m->host_tracker_note = note ? ferry__xstrdup(note) : NULL;
    ferry__mutex_unlock(&m->lock);
}

bool ferry_migration_add_section(FerryMigration *m, const FerrySectionInfo *info, FerryError **errp)
{
    const char *name = info->name;
    if (!name || !*name || strlen(name) > 255) {
        ferry_error_setg(errp, "section name must be 1 to 255 bytes");
        return false;
    }
    if (!info->fn) {
        ferry_error_setg(errp, "section '%s' has no visit function", name);
        return false;
    }
    if (info->flags & ~(uint32_t)(FERRY_SECTION_SKIPPABLE | FERRY_SECTION_OPTIONAL)) {
        ferry_error_setg(errp, "section '%s': unknown flags 0x%x", name, info->flags);
        return false;
    }
    for (size_t i = 0; i < m->nsections; i++) {
        if (strcmp(m->sections[i].name, name) == 0 && m->sections[i].instance_id == info->instance_id) {
            ferry_error_setg(errp, "section '%s' instance %u is already registered", name, info->instance_id);
            return false;
        }
    }
    m->sections = ferry__xrealloc(m->sections, (m->nsections + 1) * sizeof(*m->sections));
    m->sections[m->nsections++] = (FerrySection){
        .name = ferry__xstrdup(name), .instance_id = info->instance_id, .version = info->version,
        .flags = info->flags, .fn = info->fn, .opaque = info->opaque,
    };
    return true;
}

bool ferry_migration_register_section(FerryMigration *m, const char *name, uint32_t instance_id, uint32_t version,
                                      FerrySectionFn fn, void *opaque, FerryError **errp)
{
    const FerrySectionInfo info = {
        .name = name, .instance_id = instance_id, .version = version, .fn = fn, .opaque = opaque,
    };
    return ferry_migration_add_section(m, &info, errp);
}

bool ferry__section_save(const FerrySection *sec, FerrySchema **schema, uint8_t **data, size_t *len,
                         FerryError **errp)
{
    FerryVisitor *v = ferry__visitor_output_new();
    bool ok = sec->fn(v, sec->opaque, sec->version, errp) && ferry__visitor_output_finish(v, schema, data, len, errp);
    ferry_visitor_free(v);
    if (!ok) {
        ferry_error_prepend(errp, "saving section '%s' instance %u: ", sec->name, sec->instance_id);
    }
    return ok;
}

json_t *ferry_migration_schema(FerryMigration *m, FerryError **errp)
{
    json_t *r = json_array();
    for (size_t i = 0; i < m->nsections; i++) {
        const FerrySection *sec = &m->sections[i];
        FerrySchema *schema;
        uint8_t *data;
        size_t len;
        if (!ferry__section_save(sec, &schema, &data, &len, errp)) {
            json_decref(r);
            return NULL;
        }
        json_array_append_new(r, ferry__section_schema_json(sec->name, sec->instance_id, sec->version, sec->flags,
                                                            schema));
        ferry__schema_free(schema);
        free(data);
    }
    return r;
}

/* Starting, cancelling and joining. */

static void reset_for_new_migration_locked(FerryMigration *m, bool incoming)
{
    FERRY_ASSERT(set_state_locked(m, m->status, FERRY_MIG_SETUP));
    m->incoming = incoming;
    free(m->error_desc);
    m->error_desc = NULL;
    free(m->tracker_name);
    m->tracker_name = NULL;
    free(m->tracker_note);
    m->tracker_note = NULL;
    m->features_negotiated = false;
    json_decref(m->tls_info);
    m->tls_info = NULL;
    memset(&m->stats, 0, sizeof(m->stats));
    m->stats.start_ms = ferry__clock_ms();
    m->stats.expected_downtime_ms = m->params.downtime_limit;
    for (size_t i = 0; i < m->nblocks; i++) {
        m->stats.total += m->blocks[i]->size;
    }
    m->cancel_requested = false;
    m->postcopy_requested = false;
    uint64_t drained;
    if (m->cancel_fd >= 0 && read(m->cancel_fd, &drained, sizeof(drained)) < 0) {
        /* EAGAIN: nothing was pending. */
    }
}

/* Make a pending or future connect of the current outgoing migration give up. Called with lock held. */
static void request_cancel_locked(FerryMigration *m)
{
    FERRY_ASSERT_HELD(&m->lock);
    m->cancel_requested = true;
    if (m->out_chan) {
        ferry__channel_shutdown(m->out_chan);
    }
    if (m->out_mfd) {
        ferry__multifd_send_shutdown(m->out_mfd);
    }
    if (m->out_pchan) {
        ferry__channel_shutdown(m->out_pchan);
    }
    uint64_t one = 1;
    if (m->cancel_fd >= 0 && write(m->cancel_fd, &one, sizeof(one)) < 0) {
        /* Only fails when the counter is saturated, i.e. already signalled. */
    }
}

/* Reap the finished thread of a previous migration, in either direction, so that a new one can start (a
 * destination that completed may migrate on: A to B to C). Called with lock held; drops it while joining. */
static void reap_finished_locked(FerryMigration *m)
{
    FERRY_ASSERT_HELD(&m->lock);
    if (!status_is_terminal(m->status)) {
        return;
    }
    if (m->out_thread_joinable) {
        pthread_t t = m->out_thread;
        m->out_thread_joinable = false;
        ferry__mutex_unlock(&m->lock);
        pthread_join(t, NULL);
        ferry__mutex_lock(&m->lock);
    }
    if (m->in_thread_joinable) {
        pthread_t t = m->in_thread;
        m->in_thread_joinable = false;
        ferry__mutex_unlock(&m->lock);
        pthread_join(t, NULL);
        ferry__mutex_lock(&m->lock);
    }
}

/*
 * TLS for a migration on @addr, from the tls-* parameters (with lock held): NULL in *tls when tls-creds is not
 * set. The objects are looked up now, as QEMU does at migrate time, so that a wrong id or endpoint is the
 * command's error, named. TLS needs a socket: exec, file and rdma are refused, and so is everything that passes
 * file descriptors (SCM_RIGHTS data cannot travel inside an encrypted stream). An fd: address is checked once
 * connected, when it is known whether the fd is a socket.
 */
static bool tls_setup_locked(FerryMigration *m, const FerryMigrationAddress *addr, bool incoming, FerryTls **tls,
                             FerryError **errp)
{
    FERRY_ASSERT_HELD(&m->lock);
    *tls = NULL;
    const char *creds = m->params.tls_creds;
    if (!creds || !*creds) {
        return true;
    }
    const char *why = NULL;
    if (addr->transport != FERRY_TRANSPORT_SOCKET) {
        why = addr->transport == FERRY_TRANSPORT_RDMA ? "TLS over RDMA is not supported"
                                                      : "TLS needs a socket channel (tcp, unix, vsock or fd)";
    } else if (!incoming && ferry__migration_needs_fds(m)) {
        why = "file descriptors cannot travel inside TLS";
    }
    if (why) {
        char *uri = ferry__address_to_uri(addr);
        const char *fds = incoming ? NULL : ferry__migration_needs_fds(m);
        if (fds) {
            ferry_error_setg(errp, "tls-creds '%s' cannot be combined with %s on '%s': %s (turn one of them off)",
                             creds, fds, uri, why);
        } else {
            ferry_error_setg(errp, "tls-creds '%s' cannot be used on '%s': %s", creds, uri, why);
        }
        free(uri);
        return false;
    }
    /* As QEMU: tls-hostname, else the host of a tcp address, is what the server's certificate must name. */
    const char *hostname = m->params.tls_hostname;
    if ((!hostname || !*hostname) && addr->socket.type == FERRY_SOCKET_INET) {
        hostname = addr->socket.inet.host;
    }
    *tls = ferry__tls_new(creds, incoming, hostname, incoming ? m->params.tls_authz : NULL, errp);
    return *tls != NULL;
}

/* Whether an outgoing migration to @addr may start now, with lock held (and the finished one reaped); the error
 * says why not. */
/* postcopy-ram on: refuse, as QEMU, what cannot carry it: the destination's page requests need a return path
 * (no file or exec), and RAM passed as memfds (mode cpr-transfer) is shared, never copied, so never missing. */
static bool postcopy_address_ok(FerryMigration *m, const FerryMigrationAddress *addr, FerryError **errp)
{
    const char *why = NULL;
    if (addr->transport == FERRY_TRANSPORT_FILE || addr->transport == FERRY_TRANSPORT_EXEC) {
        why = "the destination's page requests need a return path, which a file or exec migration does not have";
    } else if (addr->transport == FERRY_TRANSPORT_RDMA) {
        why = "postcopy over RDMA is not supported";
    } else if (m->params.mode == FERRY_MODE_CPR_TRANSFER) {
        why = "mode cpr-transfer passes shared RAM as memfds, which postcopy has nothing to do for (turn "
              "postcopy-ram off)";
    }
    for (size_t i = 0; !why && i < m->nblocks; i++) {
        /* The destination would have to place each huge page whole, in one UFFDIO_COPY, before the fault that
         * asked for 4 KiB of it is resolved; ferry places 4 KiB pages. */
        if (m->blocks[i]->hugetlb) {
            char *uri = ferry__address_to_uri(addr);
            ferry_error_setg(errp, "postcopy-ram cannot be used on '%s': RAM block '%s' is backed by %" PRIu64
                             "-byte huge pages (hugetlb), which postcopy does not support (turn postcopy-ram "
                             "off)", uri, m->blocks[i]->name, m->blocks[i]->page_size);
            free(uri);
            return false;
        }
    }
    if (!why) {
        return true;
    }
    char *uri = ferry__address_to_uri(addr);
    ferry_error_setg(errp, "postcopy-ram cannot be used on '%s': %s", uri, why);
    free(uri);
    return false;
}

/* mapped-ram and background-snapshot, as QEMU's migrate_caps_check and migrate_params_check refuse them: what
 * they cannot be combined with, named. */
static bool snapshot_check_locked(FerryMigration *m, const FerryMigrationAddress *addr, FerryError **errp)
{
    FERRY_ASSERT_HELD(&m->lock);
    if (m->caps[FERRY_CAP_MAPPED_RAM]) {
        const char *why = NULL;
        if (addr->transport != FERRY_TRANSPORT_FILE) {
            why = "it needs a 'file:' address (its pages go to fixed offsets of the file)";
        } else if (m->params.multifd_compression != FERRY_MFD_COMPRESSION_NONE) {
            why = "it cannot be combined with multifd-compression (pages keep their size in the file)";
        } else if (m->caps[FERRY_CAP_POSTCOPY_RAM]) {
            why = "it cannot be combined with postcopy-ram";
        }
        if (why) {
            char *uri = ferry__address_to_uri(addr);
            ferry_error_setg(errp, "mapped-ram cannot be used on '%s': %s", uri, why);
            free(uri);
            return false;
        }
    } else if (m->params.direct_io) {
        ferry_error_setg(errp, "direct-io needs the mapped-ram capability (turn it on, or direct-io off)");
        return false;
    }
    if (m->caps[FERRY_CAP_BACKGROUND_SNAPSHOT]) {
        static const struct {
            FerryCapability cap;
            const char *name;
        } no[] = {
            { FERRY_CAP_POSTCOPY_RAM, "postcopy-ram" },    { FERRY_CAP_AUTO_CONVERGE, "auto-converge" },
            { FERRY_CAP_DIRTY_LIMIT, "dirty-limit" },      { FERRY_CAP_UNIX_PAGE_FLIPPING, "unix-page-flipping" },
            { FERRY_CAP_POSTCOPY_BLOCKTIME, "postcopy-blocktime" },
        };
        for (size_t i = 0; i < FERRY_ARRAY_SIZE(no); i++) {
            if (m->caps[no[i].cap]) {
                ferry_error_setg(errp, "background-snapshot cannot be combined with %s (turn one of them off)",
                                 no[i].name);
                return false;
            }
        }
        if (m->caps[FERRY_CAP_MULTIFD] && !m->caps[FERRY_CAP_MAPPED_RAM]) {
            ferry_error_setg(errp, "background-snapshot cannot be combined with multifd except with mapped-ram "
                             "(turn multifd off, or mapped-ram on)");
            return false;
        }
        if (m->params.mode != FERRY_MODE_NORMAL || m->params.completion_policy != FERRY_COMPLETION_NONE) {
            ferry_error_setg(errp, "background-snapshot needs mode 'normal' and completion-policy 'none'");
            return false;
        }
    }
    return true;
}

static bool migrate_check_locked(FerryMigration *m, const FerryMigrationAddress *addr, FerryError **errp)
{
    FERRY_ASSERT_HELD(&m->lock);
    if (m->runstate == FERRY_RUN_INMIGRATE) {
        ferry_error_setg(errp, "Guest is waiting for an incoming migration");
        return false;
    }
    if (m->out_thread_joinable || m->in_thread_joinable || !status_is_terminal(m->status)) {
        ferry_error_setg(errp, "There's a migration process in progress");
        return false;
    }
    if (m->runstate == FERRY_RUN_SHUTDOWN) {
        ferry_error_setg(errp, "cannot migrate: the workload has shut down");
        return false;
    }
    if (m->nblocks == 0 && m->nsections == 0) {
        ferry_error_setg(errp, "nothing to migrate: no RAM block or state section is registered");
        return false;
    }
    if (m->caps[FERRY_CAP_POSTCOPY_RAM] && !postcopy_address_ok(m, addr, errp)) {
        return false;
    }
    if (m->caps[FERRY_CAP_AUTO_CONVERGE] && !m->host_ops.throttle) {
        ferry_error_setg(errp, "auto-converge needs a host that can throttle its workload, and this one cannot "
                         "(turn auto-converge off)");
        return false;
    }
    if (m->params.completion_policy == FERRY_COMPLETION_ENSURE) {
        /* The policy throttles, then switches to postcopy: it needs at least one of the two, and it would fight
         * auto-converge over the throttle. */
        if (m->caps[FERRY_CAP_AUTO_CONVERGE] || m->caps[FERRY_CAP_DIRTY_LIMIT]) {
            ferry_error_setg(errp, "completion-policy 'ensure' throttles the workload by itself: it cannot be "
                             "combined with %s (turn one of them off)",
                             m->caps[FERRY_CAP_AUTO_CONVERGE] ? "auto-converge" : "dirty-limit");
            return false;
        }
        if (!m->caps[FERRY_CAP_POSTCOPY_RAM] && !m->host_ops.throttle) {
            ferry_error_setg(errp, "completion-policy 'ensure' needs the postcopy-ram capability or a host that "
                             "can throttle its workload, and this one cannot throttle (turn postcopy-ram on)");
            return false;
        }
    }
    if (!snapshot_check_locked(m, addr, errp)) {
        return false;
    }
    /* multifd opens more connections to the same address: only the listening sockets can take them (with
     * mapped-ram it means writer threads on the one file instead). */
    const char *why = NULL;
    if (m->caps[FERRY_CAP_MULTIFD] && !m->caps[FERRY_CAP_MAPPED_RAM]) {
        if (addr->transport != FERRY_TRANSPORT_SOCKET || addr->socket.type == FERRY_SOCKET_FD) {
            why = "it needs an address more connections can be made to (tcp, unix or vsock)";
        } else if (m->caps[FERRY_CAP_UNIX_PAGE_FLIPPING]) {
            why = "it cannot be combined with unix-page-flipping (turn one of them off)";
        }
    }
    /* What needs file descriptors passed needs a UNIX socket: refuse the others now, with the reason (an fd:
     * address is checked once connected, when its socket's family is known). */
    const char *needs_fds = ferry__migration_needs_fds(m);
    bool fds_ok = !needs_fds || (addr->transport == FERRY_TRANSPORT_SOCKET &&
                                 (addr->socket.type == FERRY_SOCKET_UNIX || addr->socket.type == FERRY_SOCKET_FD));
    if (!why && fds_ok) {
        return true;
    }
    char *uri = ferry__address_to_uri(addr);
    if (why) {
        ferry_error_setg(errp, "multifd is not supported on '%s': %s", uri, why);
    } else {
        ferry_error_setg(errp, "%s passes file descriptors, which needs a UNIX socket channel ('unix:PATH'); "
                         "'%s' cannot carry them", needs_fds, uri);
    }
    free(uri);
    return false;
}

bool ferry__migrate(FerryMigration *m, const FerryMigrationAddress *addr, FerryError **errp)
{
    ferry__mutex_lock(&m->lock);
    reap_finished_locked(m);
    if (!migrate_check_locked(m, addr, errp)) {
        ferry__mutex_unlock(&m->lock);
        return false;
    }
    FerryTls *tls;
    if (!tls_setup_locked(m, addr, false, &tls, errp)) {
        ferry__mutex_unlock(&m->lock);
        return false;
    }
    reset_for_new_migration_locked(m, false);
    ferry__address_free(m->out_addr);
    m->out_addr = ferry__address_copy(addr);
    ferry__tls_unref(m->out_tls);
    m->out_tls = tls;
    int rc = pthread_create(&m->out_thread, NULL, ferry__source_thread, m);
    if (rc != 0) {
        ferry__tls_unref(m->out_tls);
        m->out_tls = NULL;
        set_state_locked(m, FERRY_MIG_SETUP, FERRY_MIG_FAILED);
        m->error_desc = ferry__xstrdup("cannot create the migration thread");
        ferry__mutex_unlock(&m->lock);
        ferry_error_setg_errno(errp, rc, "cannot create the migration thread");
        return false;
    }
    pthread_setname_np(m->out_thread, "mig/src");
    m->out_thread_joinable = true;
    /* "setup" is announced before anything the new thread changes (it waits for the event lock). */
    unlock_and_announce(m, true, FERRY_MIG_SETUP);
    return true;
}

bool ferry__migrate_incoming(FerryMigration *m, const FerryMigrationAddress *addr, bool exit_on_error,
                             FerryError **errp)
{
    ferry__mutex_lock(&m->lock);
    if (m->runstate != FERRY_RUN_INMIGRATE) {
        ferry__mutex_unlock(&m->lock);
        ferry_error_setg(errp, "'-incoming' was not specified on the command line");
        return false;
    }
    /* A previous attempt that failed with exit-on-error=false is reaped before trying again. */
    reap_finished_locked(m);
    if (m->in_thread_joinable || m->out_thread_joinable) {
        ferry__mutex_unlock(&m->lock);
        ferry_error_setg(errp, "The incoming migration has already been started");
        return false;
    }
    FerryTls *tls;
    bool tls_ok = tls_setup_locked(m, addr, true, &tls, errp);
    ferry__mutex_unlock(&m->lock);
    if (!tls_ok) {
        return false;
    }

    FerryListener *l = ferry__listener_new(addr, errp);
    if (!l) {
        ferry__tls_unref(tls);
        return false;
    }

    ferry__mutex_lock(&m->lock);
    reset_for_new_migration_locked(m, true);
    m->listener = l;
    ferry__tls_unref(m->in_tls);
    m->in_tls = tls;
    m->exit_on_error = exit_on_error;
    int rc = pthread_create(&m->in_thread, NULL, ferry__dest_thread, m);
    if (rc != 0) {
        m->listener = NULL;
        ferry__tls_unref(m->in_tls);
        m->in_tls = NULL;
        set_state_locked(m, FERRY_MIG_SETUP, FERRY_MIG_FAILED);
        ferry__mutex_unlock(&m->lock);
        ferry__listener_free(l);
        ferry_error_setg_errno(errp, rc, "cannot create the incoming migration thread");
        return false;
    }
    pthread_setname_np(m->in_thread, "mig/dst");
    m->in_thread_joinable = true;
    unlock_and_announce(m, true, FERRY_MIG_SETUP);
    return true;
}

/*
 * Ask the outgoing migration to stop: status cancelling, the channels shut down. The check of the status and the
 * change to cancelling are one step under the lock, so a source thread that reaches a terminal status at the same
 * moment either comes first (then there is nothing to cancel) or finds cancelling and ends from there. With lock
 * held; whether the status changed (the caller announces it).
 */
static bool cancel_locked(FerryMigration *m)
{
    FERRY_ASSERT_HELD(&m->lock);
    FerryMigrationStatus from = m->status;
    if (m->incoming || !ferry__migration_transition_allowed(from, FERRY_MIG_CANCELLING)) {
        return false;
    }
    request_cancel_locked(m);
    return set_state_locked(m, from, FERRY_MIG_CANCELLING);
}

bool ferry__migrate_cancel(FerryMigration *m, FerryError **errp)
{
    ferry__mutex_lock(&m->lock);
    FerryMigrationStatus from = m->status;
    if (!m->incoming && from >= FERRY_MIG_POSTCOPY_ACTIVE && from <= FERRY_MIG_POSTCOPY_RECOVER) {
        ferry__mutex_unlock(&m->lock);
        ferry_error_setg(errp, "migrate_cancel cannot stop a migration in status %s: the destination already "
                         "runs the workload", ferry__migration_status_name(from));
        return false;
    }
    /* QEMU: cancelling when nothing runs (or a cancel already runs) is not an error. */
    unlock_and_announce(m, cancel_locked(m), FERRY_MIG_CANCELLING);
    ferry__mig_test_point(m, FERRY_MIG_TP_CANCEL_DECIDED);
    return true;
}

void ferry__migration_join(FerryMigration *m)
{
    ferry__mutex_lock(&m->lock);
    m->quitting = true;
    /* As QEMU's migration_shutdown(): an outgoing migration is cancelled (in postcopy, only stopped). */
    bool cancelling = false;
    if (m->out_thread_joinable && !status_is_terminal(m->status) && !(cancelling = cancel_locked(m))) {
        request_cancel_locked(m);
    }
    if (m->listener) {
        ferry__listener_shutdown(m->listener);
    }
    if (m->in_chan) {
        ferry__channel_shutdown(m->in_chan);
    }
    if (m->in_mfd) {
        /* The incoming thread may wait for the channel threads at a MULTIFD_SYNC: failing them wakes it. */
        ferry__multifd_recv_shutdown(m->in_mfd);
    }
    /* A paused postcopy waits for a recovery that will not come now. */
    pthread_cond_broadcast(&m->pc_cond);
    if (m->in_pchan) {
        ferry__channel_shutdown(m->in_pchan);
    }
    bool out = m->out_thread_joinable, in = m->in_thread_joinable;
    pthread_t ot = m->out_thread, it = m->in_thread;
    m->out_thread_joinable = m->in_thread_joinable = false;
    unlock_and_announce(m, cancelling, FERRY_MIG_CANCELLING);
    if (out) {
        pthread_join(ot, NULL);
    }
    if (in) {
        pthread_join(it, NULL);
    }
}

/* query-migrate's "ram" object. */
static json_t *query_ram(const FerryMigStats *st)
{
    json_t *ram = json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:f, s:I, s:I, s:I, s:I}",
        "transferred", (json_int_t)st->transferred,
        "remaining", (json_int_t)st->remaining,
        "total", (json_int_t)st->total,
        "duplicate", (json_int_t)st->duplicate,
        "normal", (json_int_t)st->normal,
        "normal-bytes", (json_int_t)(st->normal * ferry_ram_page_size()),
        "dirty-sync-count", (json_int_t)st->dirty_sync_count,
        "dirty-pages-rate", (json_int_t)st->dirty_pages_rate,
        "mbps", st->mbps,
        "pages-per-second", (json_int_t)st->pages_per_second,
        "precopy-bytes", (json_int_t)st->precopy_bytes,
        "downtime-bytes", (json_int_t)st->downtime_bytes,
        "page-size", (json_int_t)ferry_ram_page_size());
    if (st->fd_ram_blocks) {
        /* ferry extension: RAM that went as memfds (mode cpr-transfer) and was not copied; "total" counts all RAM,
         * "transferred" only what was copied. */
        json_object_set_new(ram, "fd-passed-bytes", json_integer((json_int_t)st->fd_ram_bytes));
        json_object_set_new(ram, "fd-passed-blocks", json_integer((json_int_t)st->fd_ram_blocks));
    }
    if (st->multifd_bytes) {
        json_object_set_new(ram, "multifd-bytes", json_integer((json_int_t)st->multifd_bytes));
    }
    if (st->page_pipe_bytes) {
        /* ferry extension: page data that went through the page pipe (unix-page-flipping), not the socket. */
        json_object_set_new(ram, "page-pipe-bytes", json_integer((json_int_t)st->page_pipe_bytes));
    }
    /* QEMU reports these in every query; the pages still to come in postcopy are ferry's. */
    json_object_set_new(ram, "postcopy-requests", json_integer((json_int_t)st->postcopy_requests));
    json_object_set_new(ram, "postcopy-bytes", json_integer((json_int_t)st->postcopy_bytes));
    if (st->postcopy_pending) {
        json_object_set_new(ram, "postcopy-pending-pages", json_integer((json_int_t)st->postcopy_pending));
    }
    return ram;
}

/* The members of query-migrate that exist once a migration has started, with lock held. */
static void query_started_locked(FerryMigration *m, const FerryMigStats *st, json_t *r)
{
    FERRY_ASSERT_HELD(&m->lock);
    int64_t end = st->end_ms ? st->end_ms : ferry__clock_ms();
    json_object_set_new(r, "total-time", json_integer(end - st->start_ms));
    json_object_set_new(r, "setup-time", json_integer(st->setup_time_ms));
    bool postcopy = st->downtime_ms && m->status >= FERRY_MIG_POSTCOPY_ACTIVE &&
                    m->status <= FERRY_MIG_POSTCOPY_RECOVER;
    if ((m->status == FERRY_MIG_COMPLETED && (!m->incoming || st->downtime_ms)) || postcopy) {
        /* In postcopy the downtime is known from the switch on: stop here to running there. */
        json_object_set_new(r, "downtime", json_integer(st->downtime_ms));
    }
    if (m->status == FERRY_MIG_ACTIVE && !m->incoming) {
        json_object_set_new(r, "expected-downtime", json_integer(st->expected_downtime_ms));
    }
    if (st->cpu_throttle_percentage) {
        json_object_set_new(r, "cpu-throttle-percentage", json_integer(st->cpu_throttle_percentage));
    }
    if (st->completion_decision) {
        json_object_set_new(r, "completion",
                            json_pack("{s:s, s:s, s:s, s:I, s:I, s:I}", "policy", "ensure", "decision",
                                      st->completion_decision, "reason", st->completion_reason, "pass",
                                      (json_int_t)st->completion_pass, "predicted-time",
                                      (json_int_t)st->completion_predicted_ms, "deadline",
                                      (json_int_t)st->completion_deadline_ms));
    }
    if (st->dirty_limit_active && m->caps[FERRY_CAP_DIRTY_LIMIT]) {
        /* QEMU's meaning, in microseconds; ring-full-time only where the host has a dirty ring. */
        json_object_set_new(r, "dirty-limit-throttle-time-per-round",
                            json_integer((json_int_t)st->dirty_limit_throttle_us));
        if (st->dirty_limit_has_ring) {
            json_object_set_new(r, "dirty-limit-ring-full-time",
                                json_integer((json_int_t)st->dirty_limit_ring_full_us));
        }
    }
    json_object_set_new(r, "ram", query_ram(st));
    if (st->fds_passed) {
        json_object_set_new(r, "fds-passed", json_integer((json_int_t)st->fds_passed));
    }
    if (m->tracker_name) {
        json_object_set_new(r, "dirty-tracker", json_string(m->tracker_name));
    }
    if (m->tracker_note) {
        json_object_set_new(r, "dirty-tracker-note", json_string(m->tracker_note));
    }
    if (m->features_negotiated) {
        json_t *f = json_array();
        for (uint32_t i = 0; i < m->features.n; i++) {
            json_array_append_new(f, json_string(m->features.f[i].name));
        }
        json_object_set_new(r, "stream-features", f);
    }
    if (m->incoming) {
        json_object_set_new(r, "skipped-bytes", json_integer((json_int_t)st->skipped_bytes));
    }
    if (m->incoming && m->verifier) {
        /* ferry extension: restore-mode map's check of the pages behind the running workload. */
        uint64_t checked, total;
        const char *status = ferry__mapped_verify_status(m->verifier, &checked, &total);
        json_t *v = json_pack("{s:s, s:I, s:I}", "status", status, "checked-pages", (json_int_t)checked,
                              "total-pages", (json_int_t)total);
        if (m->verify_error) {
            json_object_set_new(v, "error", json_string(m->verify_error));
        }
        json_object_set_new(r, "restore-verify", v);
    }
    if (m->tls_info) {
        /* ferry extension: the main channel's TLS session (docs/qmp.md). */
        json_object_set_new(r, "tls", json_deep_copy(m->tls_info));
    }
    ferry__postcopy_query_locked(m, r);
}

json_t *ferry__migration_query(FerryMigration *m)
{
    ferry__mutex_lock(&m->lock);
    FerryMigStats live = m->stats;
    if (m->in_mfd) {
        /* The channel threads' counts since the incoming thread last updated the statistics. */
        FerryMultifdStats ms;
        ferry__multifd_recv_stats(m->in_mfd, &ms);
        live.multifd_bytes += ms.bytes - live.mfd_seen_bytes;
        live.transferred += ms.bytes - live.mfd_seen_bytes;
        live.normal += ms.normal - live.mfd_seen_normal;
        live.duplicate += ms.zero - live.mfd_seen_zero;
    }
    json_t *r = json_object();
    json_object_set_new(r, "status", json_string(ferry__migration_status_name(m->status)));
    if (m->status != FERRY_MIG_NONE) {
        query_started_locked(m, &live, r);
    }
    if (m->error_desc && (m->status == FERRY_MIG_FAILED || m->status == FERRY_MIG_CANCELLED ||
                          m->status == FERRY_MIG_POSTCOPY_PAUSED)) {
        json_object_set_new(r, "error-desc", json_string(m->error_desc));
    }
    if (m->incoming && m->listener) {
        json_object_set_new(r, "socket-address", ferry__listener_addresses(m->listener));
    }
    ferry__mutex_unlock(&m->lock);
    return r;
}

/* ---- Postcopy: the commands and what a paused migration waits on (docs/design.md, "Postcopy"). ---- */

/* Whether @s is one of the statuses of a migration that has switched to postcopy. */
static bool status_is_postcopy(FerryMigrationStatus s)
{
    return s >= FERRY_MIG_POSTCOPY_ACTIVE && s <= FERRY_MIG_POSTCOPY_RECOVER;
}

bool ferry__migrate_start_postcopy(FerryMigration *m, FerryError **errp)
{
    ferry__mutex_lock(&m->lock);
    bool ok = false;
    if (!m->caps[FERRY_CAP_POSTCOPY_RAM]) {
        ferry_error_setg(errp, "Enable postcopy with migrate_set_capability before the start of migration");
    } else if (m->incoming || !m->out_thread_joinable || status_is_terminal(m->status)) {
        ferry_error_setg(errp, "migrate-start-postcopy needs an outgoing migration in progress (status is %s)",
                         ferry__migration_status_name(m->status));
    } else if (status_is_postcopy(m->status)) {
        ferry_error_setg(errp, "the migration is in postcopy already (status %s)",
                         ferry__migration_status_name(m->status));
    } else if (m->status == FERRY_MIG_CANCELLING || m->status == FERRY_MIG_DEVICE) {
        ferry_error_setg(errp, "too late to switch to postcopy: the migration is in status %s",
                         ferry__migration_status_name(m->status));
    } else if (m->features_negotiated && !ferry__features_uses(&m->features, FERRY_CAP_POSTCOPY_RAM)) {
        ferry_error_setg(errp, "the destination did not accept postcopy-ram (it is off there, its RAM cannot be "
                         "registered with userfaultfd, or it does not support it: its log says which); the "
                         "precopy goes on");
    } else {
        /* Before the features are settled (status setup) the request waits; a destination that then refuses
         * postcopy leaves it unanswered, and the source says so in its log. */
        __atomic_store_n(&m->postcopy_requested, true, __ATOMIC_RELAXED);
        ok = true;
    }
    ferry__mutex_unlock(&m->lock);
    return ok;
}

bool ferry__migrate_pause(FerryMigration *m, FerryError **errp)
{
    ferry__mutex_lock(&m->lock);
    if (m->status != FERRY_MIG_POSTCOPY_ACTIVE && m->status != FERRY_MIG_POSTCOPY_RECOVER) {
        ferry_error_setg(errp, "migrate-pause is only allowed in postcopy (status is %s)",
                         ferry__migration_status_name(m->status));
        ferry__mutex_unlock(&m->lock);
        return false;
    }
    /* As a cut connection: both ends see their channels fail and pause, keeping every page. */
    FerryChannel *chans[] = { m->incoming ? m->in_chan : m->out_chan, m->incoming ? m->in_pchan : m->out_pchan };
    for (size_t i = 0; i < FERRY_ARRAY_SIZE(chans); i++) {
        if (chans[i]) {
            ferry__channel_shutdown(chans[i]);
        }
    }
    ferry__mutex_unlock(&m->lock);
    return true;
}

bool ferry__migrate_recover(FerryMigration *m, const FerryMigrationAddress *addr, FerryError **errp)
{
    ferry__mutex_lock(&m->lock);
    bool paused = m->incoming && m->status == FERRY_MIG_POSTCOPY_PAUSED && !m->recover_listener;
    FerryMigrationStatus st = m->status;
    ferry__mutex_unlock(&m->lock);
    if (!paused) {
        ferry_error_setg(errp, "Migrate recover can only be run when postcopy is paused (this side: %s %s)",
                         m->incoming ? "incoming," : "outgoing,", ferry__migration_status_name(st));
        return false;
    }
    FerryListener *l = ferry__listener_new(addr, errp);
    if (!l) {
        return false;
    }
    ferry__mutex_lock(&m->lock);
    m->recover_listener = l;
    m->listener = l; /* so that quit interrupts its accept */
    pthread_cond_broadcast(&m->pc_cond);
    ferry__mutex_unlock(&m->lock);
    return true;
}

bool ferry__migrate_resume(FerryMigration *m, const FerryMigrationAddress *addr, FerryError **errp)
{
    ferry__mutex_lock(&m->lock);
    bool ok = !m->incoming && m->status == FERRY_MIG_POSTCOPY_PAUSED && !m->resume_addr;
    if (ok) {
        m->resume_addr = ferry__address_copy(addr);
        pthread_cond_broadcast(&m->pc_cond);
    } else {
        ferry_error_setg(errp, "Cannot resume if there is no paused migration (status is %s)",
                         ferry__migration_status_name(m->status));
    }
    ferry__mutex_unlock(&m->lock);
    return ok;
}

bool ferry__mig_pause(FerryMigration *m, FerryMigrationStatus from, const FerryError *why)
{
    ferry__mutex_lock(&m->lock);
    free(m->error_desc);
    m->error_desc = ferry__utf8_scrub_bounded(why ? ferry_error_msg(why) : "connection lost",
                                              FERRY_MIG_ERROR_DESC_MAX);
    bool changed = set_state_locked(m, from, FERRY_MIG_POSTCOPY_PAUSED);
    unlock_and_announce(m, changed, FERRY_MIG_POSTCOPY_PAUSED);
    return changed;
}

FerryMigrationAddress *ferry__mig_wait_resume(FerryMigration *m)
{
    ferry__mutex_lock(&m->lock);
    while (!m->resume_addr && !m->quitting) {
        ferry__mutex_cond_wait(&m->lock, &m->pc_cond);
    }
    FerryMigrationAddress *a = m->quitting ? NULL : m->resume_addr;
    if (a) {
        m->resume_addr = NULL;
    }
    ferry__mutex_unlock(&m->lock);
    return a;
}

FerryListener *ferry__mig_wait_recover(FerryMigration *m)
{
    ferry__mutex_lock(&m->lock);
    while (!m->recover_listener && !m->quitting) {
        ferry__mutex_cond_wait(&m->lock, &m->pc_cond);
    }
    FerryListener *l = m->quitting ? NULL : m->recover_listener;
    m->recover_listener = NULL;
    ferry__mutex_unlock(&m->lock);
    return l;
}

void ferry__postcopy_query_locked(FerryMigration *m, json_t *r)
{
    FERRY_ASSERT_HELD(&m->lock);
    if (!m->incoming || !m->blocktime || !m->caps[FERRY_CAP_POSTCOPY_BLOCKTIME]) {
        return;
    }
    FerryBlocktimeStats st;
    ferry__blocktime_get(m->blocktime, &st);
    json_t *vb = json_array(), *vl = json_array(), *dist = json_array();
    for (uint32_t i = 0; i < st.nvcpus; i++) {
        json_array_append_new(vb, json_integer((json_int_t)st.vcpu_blocktime_ms[i]));
        json_array_append_new(vl, json_integer((json_int_t)st.vcpu_latency_avg_ns[i]));
    }
    for (int i = 0; i < FERRY_BLOCKTIME_DIST_BUCKETS; i++) {
        json_array_append_new(dist, json_integer((json_int_t)st.dist[i]));
    }
    json_object_set_new(r, "postcopy-blocktime", json_integer((json_int_t)st.blocktime_ms));
    json_object_set_new(r, "postcopy-vcpu-blocktime", vb);
    json_object_set_new(r, "postcopy-latency", json_integer((json_int_t)st.latency_avg_ns));
    json_object_set_new(r, "postcopy-vcpu-latency", vl);
    json_object_set_new(r, "postcopy-non-vcpu-latency", json_integer((json_int_t)st.non_vcpu_latency_avg_ns));
    json_object_set_new(r, "postcopy-latency-dist", dist);
    /* ferry extensions: the spread QEMU's average hides. */
    json_object_set_new(r, "postcopy-faults", json_integer((json_int_t)st.faults));
    json_object_set_new(r, "postcopy-latency-p50", json_integer((json_int_t)st.latency_p50_ns));
    json_object_set_new(r, "postcopy-latency-p99", json_integer((json_int_t)st.latency_p99_ns));
    ferry__blocktime_stats_free(&st);
}

void ferry__postcopy_free(FerryMigration *m)
{
    ferry__blocktime_free(m->blocktime);
    m->blocktime = NULL;
    ferry__address_free(m->resume_addr);
    m->resume_addr = NULL;
    if (m->recover_listener) {
        if (m->listener == m->recover_listener) {
            m->listener = NULL;
        }
        ferry__listener_free(m->recover_listener);
        m->recover_listener = NULL;
    }
    free(m->vcpu_tids);
    m->vcpu_tids = NULL;
}

void ferry_migration_set_vcpu_thread(FerryMigration *m, unsigned index, int tid)
{
    if (index >= 4096) {
        return; /* more vCPUs than any host here runs: not worth a table */
    }
    ferry__mutex_lock(&m->lock);
    if (index >= m->nvcpu_tids) {
        m->vcpu_tids = ferry__xrealloc(m->vcpu_tids, (index + 1) * sizeof(*m->vcpu_tids));
        memset(m->vcpu_tids + m->nvcpu_tids, 0, (index + 1 - m->nvcpu_tids) * sizeof(*m->vcpu_tids));
        m->nvcpu_tids = index + 1;
    }
    m->vcpu_tids[index] = (uint32_t)tid;
    if (m->blocktime && tid) {
        ferry__blocktime_set_vcpu(m->blocktime, index, (uint32_t)tid);
    }
    ferry__mutex_unlock(&m->lock);
}
