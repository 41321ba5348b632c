/*
 * Migration parameters and capabilities: one table each, with QEMU's names, types, defaults and ranges. Every
 * reader and writer goes through the table, so adding a parameter is adding a row. migrate-set-parameters checks
 * every member before applying any (all or nothing); "-incoming config:" and HMP's migrate_set_parameter convert
 * their strings by the row's type and then run the very same check.
 *
 * String parameters (the tls-* ones) are char * fields, replaced under the lock.
 *
 * QEMU parameters that ferry does not implement yet have rows too, with the reason: setting one is an error that
 * says so (never silently accepted), and query-migrate-parameters does not show them. docs/qmp.md lists them.
 */
#include <string.h>

#include "migration/migration-priv.h"
#include "util/util.h"

typedef enum ParamType {
    PARAM_INT,  /* QAPI int / uint64: a plain number */
    PARAM_SIZE, /* QAPI size: a number of bytes; on the command line and in HMP also "1G", "512M" */
    PARAM_ENUM, /* a QAPI enum: a string out of .values, stored as its index */
    PARAM_ENUM_LIST, /* a list of a QAPI enum (no duplicates), stored as a bit mask of the indices */
    PARAM_STR,  /* a QAPI StrOrNull: a string, or null for "" (QEMU's way to unset tls-creds); a char * field */
    PARAM_BOOL, /* a QAPI bool, stored as 0 / 1 */
    PARAM_NOT_YET, /* known to QEMU, not implemented by ferry: refused with .unit as the reason */
} ParamType;

typedef struct ParamDesc {
    const char *name;
    ParamType type;
    size_t offset;   /* int64_t field in FerryParams (char * for PARAM_STR) */
    int64_t def;
    int64_t min, max;
    const char *unit; /* for messages; for PARAM_NOT_YET: why not, or which work brings it */
    /* PARAM_ENUM, PARAM_ENUM_LIST: the names, NULL-terminated; a non-NULL .refused[i] makes value i an error
     * with that reason (QEMU knows it, ferry does not do it). */
    const char *const *values;
    const char *const *refused;
} ParamDesc;

#define NOT_YET(name, why) { name, PARAM_NOT_YET, 0, 0, 0, 0, why, NULL, NULL }

/* QEMU's MigMode. */
static const char *const mode_values[] = { "normal", "cpr-reboot", "cpr-transfer", "cpr-exec", NULL };
static const char *const mode_refused[] = { NULL, "cpr-reboot is not supported by ferry (use cpr-transfer)", NULL,
                                            "cpr-exec is not supported by ferry (use cpr-transfer)" };
/* QEMU's MultiFDCompression; the accelerator-backed ones need hardware ferry does not drive. */
static const char *const compression_values[] = { "none", "zlib", "zstd", "qpl", "uadk", "qatzip", NULL };
static const char *const compression_refused[] = {
    NULL, NULL, NULL, "multifd-compression qpl needs Intel QPL, which ferry does not use (use zlib or zstd)",
    "multifd-compression uadk needs a UADK accelerator, which ferry does not use (use zlib or zstd)",
    "multifd-compression qatzip needs Intel QAT, which ferry does not use (use zlib or zstd)",
};
/* QEMU's ZeroPageDetection. */
static const char *const zero_values[] = { "none", "legacy", "multifd", NULL };
/* ferry's completion-policy. */
static const char *const completion_values[] = { "none", "ensure", NULL };
/* ferry's restore-mode. */
static const char *const restore_values[] = { "copy", "map", NULL };
/* Seed 004's BackendTransfer enum. */
static const char *const backend_values[] = { "virtio-net-tap", NULL };

#define MAX_MIGRATE_DOWNTIME_MS 2000000 /* QEMU's MAX_MIGRATE_DOWNTIME, 2000 seconds */

static const ParamDesc params[] = {
    { "max-bandwidth", PARAM_SIZE, offsetof(FerryParams, max_bandwidth), 128ll << 20, 0, INT64_MAX / 8,
      "bytes per second", NULL, NULL },
    /* QEMU's: the limit once in postcopy, where the pages the destination waits for go first anyway; 0 (the
     * default, as QEMU) sends as fast as the channel takes it. */
    { "max-postcopy-bandwidth", PARAM_SIZE, offsetof(FerryParams, max_postcopy_bandwidth), 0, 0, INT64_MAX / 8,
      "bytes per second", NULL, NULL },
    { "downtime-limit", PARAM_INT, offsetof(FerryParams, downtime_limit), 300, 0, MAX_MIGRATE_DOWNTIME_MS,
      "milliseconds", NULL, NULL },
    { "multifd-channels", PARAM_INT, offsetof(FerryParams, multifd_channels), 2, 1, 255, "channels", NULL,
      NULL },
    { "multifd-compression", PARAM_ENUM, offsetof(FerryParams, multifd_compression), FERRY_MFD_COMPRESSION_NONE, 0,
      0, NULL, compression_values, compression_refused },
    { "multifd-zlib-level", PARAM_INT, offsetof(FerryParams, multifd_zlib_level), 1, 0, 9, "level", NULL, NULL },
    { "multifd-zstd-level", PARAM_INT, offsetof(FerryParams, multifd_zstd_level), 1, 0, 20, "level", NULL, NULL },
    { "zero-page-detection", PARAM_ENUM, offsetof(FerryParams, zero_page_detection), FERRY_ZERO_MULTIFD, 0, 0,
      NULL, zero_values, NULL },
    /* ferry's own (QEMU has none): a stalled peer (one that stops reading or sending while the connection
     * stays up) otherwise holds a migration until migrate_cancel. 0 keeps QEMU's behaviour, waiting forever. */
    { "io-timeout", PARAM_INT, offsetof(FerryParams, io_timeout), 0, 0, 24 * 3600 * 1000, "milliseconds", NULL,
      NULL },
    /* ferry's own (QEMU has none): "ensure" makes the source predict, after every pass, whether precopy converges
     * within downtime-limit (and completion-deadline), and throttle, then switch to postcopy, when it will not
     * (source.c, "Completion policy"). "none" keeps QEMU's behaviour. */
    { "completion-policy", PARAM_ENUM, offsetof(FerryParams, completion_policy), FERRY_COMPLETION_NONE, 0, 0, NULL,
      completion_values, NULL },
    /* ferry's own: with completion-policy "ensure", the time from migrate by which the source must have stopped
     * iterating (it switches to postcopy then, at the latest); 0 = bounded only by the prediction. */
    { "completion-deadline", PARAM_INT, offsetof(FerryParams, completion_deadline), 0, 0, 24 * 3600 * 1000,
      "milliseconds", NULL, NULL },
    /* Checked against the objects when a migration starts (src/migration/engine.c), not here: as in QEMU the
     * objects may be created after the parameters are set. */
    { "tls-creds", PARAM_STR, offsetof(FerryParams, tls_creds), 0, 0, 0, NULL, NULL, NULL },
    { "tls-hostname", PARAM_STR, offsetof(FerryParams, tls_hostname), 0, 0, 0, NULL, NULL, NULL },
    { "tls-authz", PARAM_STR, offsetof(FerryParams, tls_authz), 0, 0, 0, NULL, NULL, NULL },
    { "mode", PARAM_ENUM, offsetof(FerryParams, mode), FERRY_MODE_NORMAL, 0, 0, NULL, mode_values, mode_refused },
    { "backend-transfer", PARAM_ENUM_LIST, offsetof(FerryParams, backend_transfer), 0, 0, 0, NULL, backend_values,
      NULL },
    NOT_YET("cpr-exec-command", "cpr-exec is not planned"),
    NOT_YET("announce-initial", "ferry has no guest network to announce"),
    NOT_YET("announce-max", "ferry has no guest network to announce"),
    NOT_YET("announce-rounds", "ferry has no guest network to announce"),
    NOT_YET("announce-step", "ferry has no guest network to announce"),
    /* auto-converge (QEMU's names, defaults and ranges): throttle when the bytes dirtied in a pass exceed this
     * percentage of the bytes sent in it, twice; start at cpu-throttle-initial %, add cpu-throttle-increment % per
     * trigger (or, with tailslow, only what the measured excess asks for), never above max-cpu-throttle %. */
    { "throttle-trigger-threshold", PARAM_INT, offsetof(FerryParams, throttle_trigger_threshold), 50, 1, 100,
      "percent", NULL, NULL },
    { "cpu-throttle-initial", PARAM_INT, offsetof(FerryParams, cpu_throttle_initial), 20, 1, 99, "percent", NULL,
      NULL },
    { "cpu-throttle-increment", PARAM_INT, offsetof(FerryParams, cpu_throttle_increment), 10, 1, 99, "percent",
      NULL, NULL },
    { "cpu-throttle-tailslow", PARAM_BOOL, offsetof(FerryParams, cpu_throttle_tailslow), 0, 0, 1, NULL, NULL, NULL },
    { "max-cpu-throttle", PARAM_INT, offsetof(FerryParams, max_cpu_throttle), 99, 1, 99, "percent", NULL, NULL },
    NOT_YET("avail-switchover-bandwidth", "not implemented"),
    NOT_YET("xbzrle-cache-size", "XBZRLE is not implemented"),
    NOT_YET("block-bitmap-mapping", "ferry migrates no block devices"),
    /* dirty-limit (QEMU's names, defaults and ranges): once auto-converge's trigger rule fires, every writer is
     * held to vcpu-dirty-limit MB/s, measured and enforced over x-vcpu-dirty-limit-period ms. */
    { "x-vcpu-dirty-limit-period", PARAM_INT, offsetof(FerryParams, x_vcpu_dirty_limit_period), 1000, 1, 1000,
      "milliseconds", NULL, NULL },
    { "vcpu-dirty-limit", PARAM_INT, offsetof(FerryParams, vcpu_dirty_limit), 1, 1, INT64_MAX, "MB/s", NULL,
      NULL },
    /* QEMU's: mapped-ram's page data read and written with O_DIRECT, past the page cache. Checked when a
     * migration starts, against the file's file system (tmpfs, for one, may refuse O_DIRECT). */
    { "direct-io", PARAM_BOOL, offsetof(FerryParams, direct_io), 0, 0, 1, NULL, NULL, NULL },
    /* ferry's own (QEMU has no lazy restore): how a destination loads a mapped-ram file. "copy" reads every page
     * into RAM before the workload runs; "map" maps the file's page region privately as the RAM (copy on write),
     * so that the workload runs at once and processes restored from one file share its pages
     * (src/migration/mapped-ram.c). */
    { "restore-mode", PARAM_ENUM, offsetof(FerryParams, restore_mode), FERRY_RESTORE_COPY, 0, 0, NULL,
      restore_values, NULL },
    NOT_YET("x-checkpoint-delay", "COLO is not implemented"),
};

/*
 * Capabilities. Some are stream features (docs/stream-format.md, "Features"): the source offers the ones that are
 * on, a destination accepts the offered ones it supports and has on, and the stream uses the intersection.
 * "critical" is the wire flag: a reader that does not support such a feature must refuse the stream.
 */
typedef struct CapDesc {
    const char *name;
    bool def;
    bool feature;  /* negotiated in the stream */
    bool critical;
} CapDesc;

static const CapDesc cap_table[FERRY_CAP__MAX] = {
    [FERRY_CAP_EVENTS] = { "events", false, false, false },
    /* Every record ends with a CRC32C. Critical: without it a reader would take a trailer for the next record. */
    [FERRY_CAP_RECORD_CHECKSUM] = { "record-checksum", true, true, true },
    /* POPULATE_HINT records: skippable, so a reader that does not know them loses nothing but speed. */
    [FERRY_CAP_POPULATE_HINTS] = { "populate-hints", true, true, false },
    /* Page data through a pipe passed over the UNIX socket (seed 002): critical, since RAM_PAGES records then
     * carry no data. Off by default: it needs both ends on one host. */
    [FERRY_CAP_UNIX_PAGE_FLIPPING] = { "unix-page-flipping", false, true, true },
    /* RAM pages over extra channels (MULTIFD record): critical, since the main channel then carries none. A
     * destination accepts it only where it can accept more connections (a listening socket). */
    [FERRY_CAP_MULTIFD] = { "multifd", false, true, true },
    /* After the ACK the source confirms with a COMMIT record, and only then does the destination run: a
     * connection lost between the two can then leave nobody running (both ends keep the whole state) but never
     * both. Not critical: it changes nothing before END, and a destination without it just does not wait. */
    [FERRY_CAP_SWITCHOVER_COMMIT] = { "switchover-commit", true, true, false },
    /* The source throttles its workload's writers when precopy does not converge (the host's throttle op). */
    [FERRY_CAP_AUTO_CONVERGE] = { "auto-converge", false, false, false },
    /* The source may switch to postcopy (migrate-start-postcopy): the destination then runs the workload with
     * pages still missing and asks for them. Critical: a reader without postcopy would run an incomplete RAM. */
    [FERRY_CAP_POSTCOPY_RAM] = { "postcopy-ram", false, true, true },
    /* In postcopy, the pages the destination asked for travel on a channel of their own, so they do not wait
     * behind the background stream. Critical: those pages are then missing from the main channel. */
    [FERRY_CAP_POSTCOPY_PREEMPT] = { "postcopy-preempt", false, true, true },
    /* The destination measures how long the workload waited for missing pages (query-migrate). Local to the
     * destination, so not a stream feature. */
    [FERRY_CAP_POSTCOPY_BLOCKTIME] = { "postcopy-blocktime", false, false, false },
    /* The source holds the workload's writers to vcpu-dirty-limit when precopy does not converge (the host's
     * writer_stats / dirty_limit ops; src/migration/dirtylimit.c). Local to the source. */
    [FERRY_CAP_DIRTY_LIMIT] = { "dirty-limit", false, false, false },
    /* QEMU's mapped-ram (file: only): every page at a fixed offset of the file, with a bitmap of the pages present
     * and (ferry's addition) a CRC32C per page; the stream's records go on after the page regions. Critical: a
     * reader that does not know it would find no RAM_PAGES at all. */
    [FERRY_CAP_MAPPED_RAM] = { "mapped-ram", false, true, true },
    /* QEMU's background-snapshot: save RAM and device state as they were when the migration started, while the
     * workload keeps running (writes wait until the old page is saved). Local to the source: the file it writes
     * is an ordinary one. */
    [FERRY_CAP_BACKGROUND_SNAPSHOT] = { "background-snapshot", false, false, false },
};

/* QEMU capabilities ferry does not implement, with the reason: setting one on is an error that says why (setting
 * it off is accepted, since off is what ferry does), and query-migrate-capabilities does not list them. */
static const struct {
    const char *name;
    const char *why;
} caps_not_yet[] = {
    { "zero-copy-send", "MSG_ZEROCOPY gave no gain where measured (TCP loopback copies anyway: "
                        "bench/zerocopy-bench, docs/benchmarks.md)" },
    { "xbzrle", "XBZRLE is not implemented" },
    { "x-colo", "COLO is not implemented" },
};

/* The reason a QEMU capability ferry knows is not implemented, or NULL if @name is not one of them. */
static const char *cap_not_yet_reason(const char *name)
{
    for (size_t k = 0; k < FERRY_ARRAY_SIZE(caps_not_yet); k++) {
        if (strcmp(caps_not_yet[k].name, name) == 0) {
            return caps_not_yet[k].why;
        }
    }
    return NULL;
}

static int64_t *param_field(FerryParams *p, const ParamDesc *d)
{
    return (int64_t *)((char *)p + d->offset);
}

static char **param_str_field(FerryParams *p, const ParamDesc *d)
{
    return (char **)((char *)p + d->offset);
}

void ferry__params_init(FerryMigration *m)
{
    for (size_t i = 0; i < FERRY_ARRAY_SIZE(params); i++) {
        if (params[i].type == PARAM_NOT_YET) {
            continue;
        }
        if (params[i].type == PARAM_STR) {
            *param_str_field(&m->params, &params[i]) = ferry__xstrdup("");
            continue;
        }
        *param_field(&m->params, &params[i]) = params[i].def;
    }
    for (int c = 0; c < FERRY_CAP__MAX; c++) {
        m->caps[c] = cap_table[c].def;
    }
}

void ferry__params_free(FerryMigration *m)
{
    for (size_t i = 0; i < FERRY_ARRAY_SIZE(params); i++) {
        if (params[i].type == PARAM_STR) {
            free(*param_str_field(&m->params, &params[i]));
            *param_str_field(&m->params, &params[i]) = NULL;
        }
    }
}

/* With mapped-ram the pages are in the file's page regions: multifd means writer threads (not channels), and
 * the features that shape how pages travel in records do not apply. */
static bool mapped_ram_excludes(int c)
{
    return c == FERRY_CAP_MULTIFD || c == FERRY_CAP_POPULATE_HINTS || c == FERRY_CAP_UNIX_PAGE_FLIPPING ||
           c == FERRY_CAP_POSTCOPY_RAM || c == FERRY_CAP_POSTCOPY_PREEMPT;
}

void ferry__features_offer(FerryMigration *m, FerryWireFeatureList *out)
{
    memset(out, 0, sizeof(*out));
    ferry__mutex_lock(&m->lock);
    for (int c = 0; c < FERRY_CAP__MAX; c++) {
        if (m->caps[FERRY_CAP_MAPPED_RAM] && mapped_ram_excludes(c)) {
            continue;
        }
        if (cap_table[c].feature && m->caps[c]) {
            ferry__wire_features_add(out, cap_table[c].name, cap_table[c].critical ? FERRY_FEATURE_CRITICAL : 0);
        }
    }
    ferry__mutex_unlock(&m->lock);
}

void ferry__features_accept(FerryMigration *m, const FerryWireFeatureList *offered, FerryWireFeatureList *out)
{
    memset(out, 0, sizeof(*out));
    ferry__mutex_lock(&m->lock);
    for (uint32_t i = 0; i < offered->n; i++) {
        for (int c = 0; c < FERRY_CAP__MAX; c++) {
            if (cap_table[c].feature && m->caps[c] && strcmp(cap_table[c].name, offered->f[i].name) == 0) {
                ferry__wire_features_add(out, cap_table[c].name, offered->f[i].flags);
            }
        }
    }
    ferry__mutex_unlock(&m->lock);
}

bool ferry__feature_known(const char *name)
{
    for (int c = 0; c < FERRY_CAP__MAX; c++) {
        if (cap_table[c].feature && strcmp(cap_table[c].name, name) == 0) {
            return true;
        }
    }
    return false;
}

const char *ferry__feature_name(FerryCapability cap)
{
    return cap_table[cap].name;
}

bool ferry__features_check(const FerryWireFeatureList *used, FerryError **errp)
{
    for (uint32_t i = 0; i < used->n; i++) {
        if (!ferry__feature_known(used->f[i].name) && (used->f[i].flags & FERRY_FEATURE_CRITICAL)) {
            ferry_error_setg(errp, "the stream uses feature '%s', which this destination does not support",
                             used->f[i].name);
            return false;
        }
    }
    return true;
}

void ferry__features_record(FerryMigration *m, const FerryWireFeatureList *used)
{
    ferry__mutex_lock(&m->lock);
    m->features_negotiated = true;
    m->features = *used;
    ferry__mutex_unlock(&m->lock);
}

bool ferry__features_uses(const FerryWireFeatureList *used, FerryCapability cap)
{
    return ferry__wire_features_find(used, cap_table[cap].name) >= 0;
}

int64_t ferry__param_max_postcopy_bandwidth(FerryMigration *m)
{
    return __atomic_load_n(&m->params.max_postcopy_bandwidth, __ATOMIC_RELAXED);
}

int64_t ferry__param_max_bandwidth(FerryMigration *m)
{
    return __atomic_load_n(&m->params.max_bandwidth, __ATOMIC_RELAXED);
}

int64_t ferry__param_downtime_limit(FerryMigration *m)
{
    return __atomic_load_n(&m->params.downtime_limit, __ATOMIC_RELAXED);
}

static json_t *param_to_json(const ParamDesc *d, int64_t v)
{
    if (d->type == PARAM_BOOL) {
        return json_boolean(v);
    }
    if (d->type == PARAM_ENUM) {
        return json_string(d->values[v]);
    }
    if (d->type == PARAM_ENUM_LIST) {
        json_t *a = json_array();
        for (int i = 0; d->values[i]; i++) {
            if (v & (INT64_C(1) << i)) {
                json_array_append_new(a, json_string(d->values[i]));
            }
        }
        return a;
    }
    return json_integer(v);
}

FerryMigMode ferry__param_mode(FerryMigration *m)
{
    return (FerryMigMode)__atomic_load_n(&m->params.mode, __ATOMIC_RELAXED);
}

bool ferry__param_backend_transfer(FerryMigration *m, FerryBackendKind kind)
{
    return (__atomic_load_n(&m->params.backend_transfer, __ATOMIC_RELAXED) >> kind) & 1;
}

bool ferry__backend_kind_parse(const char *name, FerryBackendKind *kind)
{
    for (int i = 0; backend_values[i]; i++) {
        if (strcmp(backend_values[i], name) == 0) {
            *kind = (FerryBackendKind)i;
            return true;
        }
    }
    return false;
}

const char *ferry__backend_kind_name(FerryBackendKind kind)
{
    return backend_values[kind];
}

json_t *ferry__migration_query_params(FerryMigration *m)
{
    json_t *r = json_object();
    ferry__mutex_lock(&m->lock);
    for (size_t i = 0; i < FERRY_ARRAY_SIZE(params); i++) {
        if (params[i].type == PARAM_NOT_YET) {
            continue;
        }
        if (params[i].type == PARAM_STR) {
            json_object_set_new(r, params[i].name, json_string(*param_str_field(&m->params, &params[i])));
            continue;
        }
        json_object_set_new(r, params[i].name, param_to_json(&params[i], *param_field(&m->params, &params[i])));
    }
    ferry__mutex_unlock(&m->lock);
    return r;
}

static const ParamDesc *find_param(const char *name)
{
    for (size_t i = 0; i < FERRY_ARRAY_SIZE(params); i++) {
        if (strcmp(params[i].name, name) == 0) {
            return &params[i];
        }
    }
    return NULL;
}

/* The index of @s in d->values, or -1 with *errp set (QEMU's wording for a value an enum does not have). */
static int enum_index(const ParamDesc *d, const char *what, json_t *val, FerryError **errp)
{
    if (!json_is_string(val)) {
        ferry_error_setg(errp, "Invalid parameter type for '%s', expected: string", what);
        return -1;
    }
    const char *s = json_string_value(val);
    for (int i = 0; d->values[i]; i++) {
        if (strcmp(d->values[i], s) == 0) {
            if (d->refused && d->refused[i]) {
                ferry_error_setg(errp, "Parameter '%s' value '%s' is not supported: %s", what, s, d->refused[i]);
                return -1;
            }
            return i;
        }
    }
    ferry_error_setg(errp, "Parameter '%s' does not accept value '%s'", what, s);
    return -1;
}

static bool check_enum(const ParamDesc *d, json_t *val, int64_t *out, FerryError **errp)
{
    if (d->type == PARAM_ENUM) {
        int i = enum_index(d, d->name, val, errp);
        if (i < 0) {
            return false;
        }
        *out = i;
        return true;
    }
    if (!json_is_array(val)) {
        ferry_error_setg(errp, "Invalid parameter type for '%s', expected: array", d->name);
        return false;
    }
    int64_t mask = 0;
    size_t k;
    json_t *el;
    json_array_foreach(val, k, el) {
        char what[64];
        snprintf(what, sizeof(what), "%s[%zu]", d->name, k);
        int i = enum_index(d, what, el, errp);
        if (i < 0) {
            return false;
        }
        if (mask & (INT64_C(1) << i)) {
            ferry_error_setg(errp, "Parameter '%s' lists '%s' twice", d->name, d->values[i]);
            return false;
        }
        mask |= INT64_C(1) << i;
    }
    *out = mask;
    return true;
}

/* QEMU's own words for some out-of-range values, where they differ from the generic range message. */
static const char *range_message(const ParamDesc *d)
{
    if (strcmp(d->name, "x-vcpu-dirty-limit-period") == 0) {
        return "Option x-vcpu-dirty-limit-period expects a value between 1 and 1000";
    }
    if (strcmp(d->name, "vcpu-dirty-limit") == 0) {
        return "Parameter 'vcpu_dirty_limit' must be greater than 1 MB/s";
    }
    return NULL;
}

/* Check one member; on success *out holds the value to apply. */
static bool check_param(const char *key, json_t *val, const ParamDesc **descp, int64_t *out, FerryError **errp)
{
    const ParamDesc *d = find_param(key);
    if (!d) {
        ferry_error_setg(errp, "Parameter '%s' is unexpected", key);
        return false;
    }
    if (d->type == PARAM_NOT_YET) {
        ferry_error_setg(errp, "Parameter '%s' is not supported by ferry yet: %s", key, d->unit);
        return false;
    }
    if (d->type == PARAM_STR) {
        if (!json_is_string(val) && !json_is_null(val)) {
            ferry_error_setg(errp, "Invalid parameter type for '%s', expected: string", key);
            return false;
        }
        *descp = d;
        *out = 0;
        return true;
    }
    if (d->type == PARAM_ENUM || d->type == PARAM_ENUM_LIST) {
        if (!check_enum(d, val, out, errp)) {
            return false;
        }
        *descp = d;
        return true;
    }
    if (d->type == PARAM_BOOL) {
        if (!json_is_boolean(val)) {
            ferry_error_setg(errp, "Invalid parameter type for '%s', expected: boolean", key);
            return false;
        }
        *descp = d;
        *out = json_is_true(val);
        return true;
    }
    if (!json_is_integer(val)) {
        ferry_error_setg(errp, "Invalid parameter type for '%s', expected: integer", key);
        return false;
    }
    json_int_t v = json_integer_value(val);
    if ((v < d->min || v > d->max) && range_message(d)) {
        ferry_error_setg(errp, "%s", range_message(d));
        return false;
    }
    if (v < d->min || v > d->max) {
        ferry_error_setg(errp, "Parameter '%s' expects an integer in the range of %lld to %lld %s", key,
                         (long long)d->min, (long long)d->max, d->unit);
        return false;
    }
    *descp = d;
    *out = v;
    return true;
}

bool ferry__migration_set_params(FerryMigration *m, json_t *args, FerryError **errp)
{
    if (!json_is_object(args)) {
        ferry_error_setg(errp, "migration parameters must be a JSON object");
        return false;
    }
    const char *key;
    json_t *val;
    /* First pass: check everything; nothing is applied unless all members are good. */
    json_object_foreach(args, key, val) {
        const ParamDesc *d;
        int64_t v;
        if (!check_param(key, val, &d, &v, errp)) {
            return false;
        }
    }
    ferry__mutex_lock(&m->lock);
    json_object_foreach(args, key, val) {
        const ParamDesc *d;
        int64_t v;
        check_param(key, val, &d, &v, NULL);
        if (d->type == PARAM_STR) {
            char **f = param_str_field(&m->params, d);
            free(*f);
            *f = ferry__xstrdup(json_is_string(val) ? json_string_value(val) : "");
            continue;
        }
        __atomic_store_n(param_field(&m->params, d), v, __ATOMIC_RELAXED);
    }
    ferry__mutex_unlock(&m->lock);
    return true;
}

/*
 * Parameters given as strings (keyval from "-incoming config:", HMP's migrate_set_parameter): convert each value by
 * the parameter's type, then run the very check migrate-set-parameters runs, so that the three edges accept and
 * refuse exactly the same things.
 */
bool ferry__migration_params_check_keyval(json_t *kv, json_t **typed, FerryError **errp)
{
    if (!json_is_object(kv)) {
        ferry_error_setg(errp, "migration parameters must be key=value pairs");
        return false;
    }
    json_t *out = json_object();
    const char *key;
    json_t *val;
    json_object_foreach(kv, key, val) {
        const ParamDesc *d = find_param(key);
        if (d && d->type == PARAM_NOT_YET) {
            d = NULL; /* refused below by check_param, with its reason */
        }
        if (d && d->type == PARAM_ENUM_LIST && !json_is_array(val)) {
            ferry_error_setg(errp, "Parameter '%s' expects a list (%s.0=VALUE,%s.1=VALUE,...)", key, key, key);
            json_decref(out);
            return false;
        }
        if (d && d->type != PARAM_ENUM_LIST && !json_is_string(val)) {
            ferry_error_setg(errp, "Parameter '%s' expects a single value", key);
            json_decref(out);
            return false;
        }
        json_t *conv;
        if (d && d->type == PARAM_BOOL) {
            /* QEMU's keyval booleans. */
            const char *s = json_string_value(val);
            bool on = !strcmp(s, "on") || !strcmp(s, "true") || !strcmp(s, "yes");
            if (!on && strcmp(s, "off") != 0 && strcmp(s, "false") != 0 && strcmp(s, "no") != 0) {
                ferry_error_setg(errp, "Parameter '%s' expects 'on' or 'off'", key);
                json_decref(out);
                return false;
            }
            conv = json_boolean(on);
        } else if (!d || d->type == PARAM_ENUM || d->type == PARAM_ENUM_LIST || d->type == PARAM_STR) {
            /* Enums and strings are strings already; unknown or not implemented parameters are refused by
             * check_param below with the usual message. */
            conv = json_incref(val);
        } else {
            const char *s = json_string_value(val);
            uint64_t v;
            FerryError *perr = NULL;
            bool ok = d->type == PARAM_SIZE ? ferry__parse_size(s, key, &v, &perr)
                                            : ferry__parse_uint64(s, key, &v, &perr);
            if (ok && v > (uint64_t)INT64_MAX && range_message(d)) {
                ferry_error_setg(&perr, "%s", range_message(d));
                ok = false;
            } else if (ok && v > (uint64_t)INT64_MAX) {
                ferry_error_setg(&perr, "Parameter '%s' expects an integer in the range of %lld to %lld %s", key,
                                 (long long)d->min, (long long)d->max, d->unit);
                ok = false;
            }
            if (!ok) {
                ferry_error_propagate(errp, perr);
                json_decref(out);
                return false;
            }
            conv = json_integer((json_int_t)v);
        }
        json_object_set_new(out, key, conv);
    }
    json_object_foreach(out, key, val) {
        const ParamDesc *d;
        int64_t v;
        if (!check_param(key, val, &d, &v, errp)) {
            json_decref(out);
            return false;
        }
    }
    *typed = out;
    return true;
}

json_t *ferry__migration_query_caps(FerryMigration *m)
{
    json_t *r = json_array();
    ferry__mutex_lock(&m->lock);
    for (int i = 0; i < FERRY_CAP__MAX; i++) {
        json_t *c = json_pack("{s:s, s:b}", "capability", cap_table[i].name, "state", m->caps[i]);
        if (cap_table[i].feature && m->features_negotiated) {
            json_object_set_new(c, "negotiated", json_boolean(ferry__features_uses(&m->features, i)));
        }
        json_array_append_new(r, c);
    }
    ferry__mutex_unlock(&m->lock);
    return r;
}

/*
 * The combination the capabilities would have after a set (@next: all of them), checked as a whole, so that the
 * order of the elements of one command never matters. QEMU refuses postcopy with multifd and with compression;
 * ferry does not: both are precopy-only means that stop at the switch. With m->lock held.
 */
static bool caps_check_locked(FerryMigration *m, const bool *next, FerryError **errp)
{
    FERRY_ASSERT_HELD(&m->lock);
    if (next[FERRY_CAP_POSTCOPY_PREEMPT] && !next[FERRY_CAP_POSTCOPY_RAM]) {
        ferry_error_setg(errp, "Capability 'postcopy-preempt' requires capability 'postcopy-ram' (turn "
                         "postcopy-ram on with it, or postcopy-preempt off)");
        return false;
    }
    /* As QEMU: the destination must know before it takes connections whether one of them is the channel of
     * requested pages. */
    if (next[FERRY_CAP_DIRTY_LIMIT] && next[FERRY_CAP_AUTO_CONVERGE]) {
        ferry_error_setg(errp, "dirty-limit conflicts with auto-converge either of then available currently");
        return false;
    }
    bool incoming_started = m->incoming && m->in_thread_joinable && !ferry__migration_status_terminal(m->status);
    if (incoming_started && next[FERRY_CAP_POSTCOPY_PREEMPT] != m->caps[FERRY_CAP_POSTCOPY_PREEMPT]) {
        ferry_error_setg(errp, "Capability 'postcopy-preempt' must be set before the incoming migration starts");
        return false;
    }
    return true;
}

bool ferry__migration_set_caps(FerryMigration *m, json_t *caps, FerryError **errp)
{
    if (!json_is_array(caps)) {
        ferry_error_setg(errp, "Invalid parameter type for 'capabilities', expected: array");
        return false;
    }
    bool want[FERRY_CAP__MAX];
    bool given[FERRY_CAP__MAX] = { false };
    size_t i;
    json_t *el;
    json_array_foreach(caps, i, el) {
        if (!json_is_object(el)) {
            ferry_error_setg(errp, "Invalid parameter type for 'capabilities[%zu]', expected: object", i);
            return false;
        }
        json_t *name = json_object_get(el, "capability"), *state = json_object_get(el, "state");
        const char *key;
        json_t *v;
        json_object_foreach(el, key, v) {
            if (strcmp(key, "capability") != 0 && strcmp(key, "state") != 0) {
                ferry_error_setg(errp, "Parameter 'capabilities[%zu].%s' is unexpected", i, key);
                return false;
            }
        }
        if (!name) {
            ferry_error_setg(errp, "Parameter 'capabilities[%zu].capability' is missing", i);
            return false;
        }
        if (!json_is_string(name)) {
            ferry_error_setg(errp, "Invalid parameter type for 'capabilities[%zu].capability', expected: string", i);
            return false;
        }
        if (!state) {
            ferry_error_setg(errp, "Parameter 'capabilities[%zu].state' is missing", i);
            return false;
        }
        if (!json_is_boolean(state)) {
            ferry_error_setg(errp, "Invalid parameter type for 'capabilities[%zu].state', expected: boolean", i);
            return false;
        }
        int c;
        for (c = 0; c < FERRY_CAP__MAX; c++) {
            if (strcmp(cap_table[c].name, json_string_value(name)) == 0) {
                break;
            }
        }
        if (c == FERRY_CAP__MAX) {
            const char *why = cap_not_yet_reason(json_string_value(name));
            if (why && !json_is_true(state)) {
                continue; /* off is what ferry does anyway */
            }
            if (why) {
                ferry_error_setg(errp, "Capability '%s' is not supported by ferry: %s", json_string_value(name),
                                 why);
            } else {
                ferry_error_setg(errp, "Parameter 'capability' does not accept value '%s'",
                                 json_string_value(name));
            }
            return false;
        }
        want[c] = json_is_true(state);
        given[c] = true;
    }
    /* dirty-limit needs a host that counts per writer (QEMU: KVM with a dirty ring). Asked before the lock: the
     * host's callback is not to be called under it. Checked after the conflict with auto-converge, as QEMU. */
    const char *dl_why = NULL;
    bool dl_refused = given[FERRY_CAP_DIRTY_LIMIT] && want[FERRY_CAP_DIRTY_LIMIT] &&
                      !ferry__dirtylimit_supported(m, &dl_why);
    ferry__mutex_lock(&m->lock);
    if (!m->incoming && (m->out_thread_joinable && m->status != FERRY_MIG_COMPLETED &&
                         m->status != FERRY_MIG_FAILED && m->status != FERRY_MIG_CANCELLED)) {
        ferry__mutex_unlock(&m->lock);
        ferry_error_setg(errp, "There's a migration process in progress");
        return false;
    }
    bool next[FERRY_CAP__MAX];
    for (int c = 0; c < FERRY_CAP__MAX; c++) {
        next[c] = given[c] ? want[c] : m->caps[c];
    }
    if (!caps_check_locked(m, next, errp)) {
        ferry__mutex_unlock(&m->lock);
        return false;
    }
    if (dl_refused) {
        ferry__mutex_unlock(&m->lock);
        ferry_error_setg(errp, "dirty-limit requires a host that counts dirty pages per writer: %s", dl_why);
        return false;
    }
    memcpy(m->caps, next, sizeof(next));
    ferry__mutex_unlock(&m->lock);
    return true;
}
