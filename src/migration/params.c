/*
 * Migration parameters and capabilities: one table each, with QEMU's names, types, defaults and ranges. Every
 * reader and writer goes through the table, so adding a parameter is adding a row. migrate-set-parameters checks
 * every member before applying any (all or nothing); "-incoming config:" and HMP's migrate_set_parameter convert
 * their strings by the row's type and then run the very same check.
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
    PARAM_NOT_YET, /* known to QEMU, not implemented by ferry: refused with .unit as the reason */
} ParamType;

typedef struct ParamDesc {
    const char *name;
    ParamType type;
    size_t offset;   /* int64_t field in FerryParams */
    int64_t def;
    int64_t min, max;
    const char *unit; /* for messages; for PARAM_NOT_YET: why not, or which work brings it */
} ParamDesc;

#define NOT_YET(name, why) { name, PARAM_NOT_YET, 0, 0, 0, 0, why }

#define MAX_MIGRATE_DOWNTIME_MS 2000000 /* QEMU's MAX_MIGRATE_DOWNTIME, 2000 seconds */

static const ParamDesc params[] = {
    { "max-bandwidth", PARAM_SIZE, offsetof(FerryParams, max_bandwidth), 128ll << 20, 0, INT64_MAX / 8,
      "bytes per second" },
    { "downtime-limit", PARAM_INT, offsetof(FerryParams, downtime_limit), 300, 0, MAX_MIGRATE_DOWNTIME_MS,
      "milliseconds" },
    NOT_YET("multifd-channels", "multifd comes with the throughput work"),
    NOT_YET("multifd-compression", "compression comes with the throughput work"),
    NOT_YET("multifd-zlib-level", "compression comes with the throughput work"),
    NOT_YET("multifd-zstd-level", "compression comes with the throughput work"),
    NOT_YET("zero-page-detection", "selectable zero-page detection comes with the throughput work"),
    NOT_YET("tls-creds", "TLS comes with the reliability and security work"),
    NOT_YET("tls-hostname", "TLS comes with the reliability and security work"),
    NOT_YET("tls-authz", "TLS comes with the reliability and security work"),
    NOT_YET("mode", "cpr-transfer comes with the local migration work"),
    NOT_YET("backend-transfer", "backend-transfer comes with the local migration work"),
    NOT_YET("cpr-exec-command", "cpr-exec is not planned"),
    NOT_YET("announce-initial", "ferry has no guest network to announce"),
    NOT_YET("announce-max", "ferry has no guest network to announce"),
    NOT_YET("announce-rounds", "ferry has no guest network to announce"),
    NOT_YET("announce-step", "ferry has no guest network to announce"),
    NOT_YET("throttle-trigger-threshold", "auto-converge throttling is not implemented"),
    NOT_YET("cpu-throttle-initial", "auto-converge throttling is not implemented"),
    NOT_YET("cpu-throttle-increment", "auto-converge throttling is not implemented"),
    NOT_YET("cpu-throttle-tailslow", "auto-converge throttling is not implemented"),
    NOT_YET("max-cpu-throttle", "auto-converge throttling is not implemented"),
    NOT_YET("avail-switchover-bandwidth", "not implemented"),
    NOT_YET("xbzrle-cache-size", "XBZRLE is not implemented"),
    NOT_YET("max-postcopy-bandwidth", "postcopy is not implemented"),
    NOT_YET("block-bitmap-mapping", "ferry migrates no block devices"),
    NOT_YET("x-vcpu-dirty-limit-period", "dirty-limit throttling is not implemented"),
    NOT_YET("vcpu-dirty-limit", "dirty-limit throttling is not implemented"),
    NOT_YET("direct-io", "direct I/O for file migration is not implemented"),
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
};

static int64_t *param_field(FerryParams *p, const ParamDesc *d)
{
    return (int64_t *)((char *)p + d->offset);
}

void ferry__params_init(FerryMigration *m)
{
    for (size_t i = 0; i < FERRY_ARRAY_SIZE(params); i++) {
        if (params[i].type == PARAM_NOT_YET) {
            continue;
        }
        *param_field(&m->params, &params[i]) = params[i].def;
    }
    for (int c = 0; c < FERRY_CAP__MAX; c++) {
        m->caps[c] = cap_table[c].def;
    }
}

void ferry__features_offer(FerryMigration *m, FerryWireFeatureList *out)
{
    memset(out, 0, sizeof(*out));
    pthread_mutex_lock(&m->lock);
    for (int c = 0; c < FERRY_CAP__MAX; c++) {
        if (cap_table[c].feature && m->caps[c]) {
            ferry__wire_features_add(out, cap_table[c].name, cap_table[c].critical ? FERRY_FEATURE_CRITICAL : 0);
        }
    }
    pthread_mutex_unlock(&m->lock);
}

void ferry__features_accept(FerryMigration *m, const FerryWireFeatureList *offered, FerryWireFeatureList *out)
{
    memset(out, 0, sizeof(*out));
    pthread_mutex_lock(&m->lock);
    for (uint32_t i = 0; i < offered->n; i++) {
        for (int c = 0; c < FERRY_CAP__MAX; c++) {
            if (cap_table[c].feature && m->caps[c] && strcmp(cap_table[c].name, offered->f[i].name) == 0) {
                ferry__wire_features_add(out, cap_table[c].name, offered->f[i].flags);
            }
        }
    }
    pthread_mutex_unlock(&m->lock);
}

bool ferry__features_check(const FerryWireFeatureList *used, FerryError **errp)
{
    for (uint32_t i = 0; i < used->n; i++) {
        int c;
        for (c = 0; c < FERRY_CAP__MAX; c++) {
            if (cap_table[c].feature && strcmp(cap_table[c].name, used->f[i].name) == 0) {
                break;
            }
        }
        if (c == FERRY_CAP__MAX && (used->f[i].flags & FERRY_FEATURE_CRITICAL)) {
            ferry_error_setg(errp, "the stream uses feature '%s', which this destination does not support",
                             used->f[i].name);
            return false;
        }
    }
    return true;
}

void ferry__features_record(FerryMigration *m, const FerryWireFeatureList *used)
{
    pthread_mutex_lock(&m->lock);
    m->features_negotiated = true;
    m->features = *used;
    pthread_mutex_unlock(&m->lock);
}

bool ferry__features_uses(const FerryWireFeatureList *used, FerryCapability cap)
{
    return ferry__wire_features_find(used, cap_table[cap].name) >= 0;
}

int64_t ferry__param_max_bandwidth(FerryMigration *m)
{
    return __atomic_load_n(&m->params.max_bandwidth, __ATOMIC_RELAXED);
}

int64_t ferry__param_downtime_limit(FerryMigration *m)
{
    return __atomic_load_n(&m->params.downtime_limit, __ATOMIC_RELAXED);
}

json_t *ferry__migration_query_params(FerryMigration *m)
{
    json_t *r = json_object();
    pthread_mutex_lock(&m->lock);
    for (size_t i = 0; i < FERRY_ARRAY_SIZE(params); i++) {
        if (params[i].type == PARAM_NOT_YET) {
            continue;
        }
        json_object_set_new(r, params[i].name, json_integer(*param_field(&m->params, &params[i])));
    }
    pthread_mutex_unlock(&m->lock);
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
    if (!json_is_integer(val)) {
        ferry_error_setg(errp, "Invalid parameter type for '%s', expected: integer", key);
        return false;
    }
    json_int_t v = json_integer_value(val);
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
    pthread_mutex_lock(&m->lock);
    json_object_foreach(args, key, val) {
        const ParamDesc *d;
        int64_t v;
        check_param(key, val, &d, &v, NULL);
        __atomic_store_n(param_field(&m->params, d), v, __ATOMIC_RELAXED);
    }
    pthread_mutex_unlock(&m->lock);
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
        if (d && !json_is_string(val)) {
            ferry_error_setg(errp, "Parameter '%s' expects a single value", key);
            json_decref(out);
            return false;
        }
        json_t *conv;
        if (!d) {
            /* Unknown or not implemented: check_param below refuses it with the usual message. */
            conv = json_incref(val);
        } else {
            const char *s = json_string_value(val);
            uint64_t v;
            FerryError *perr = NULL;
            bool ok = d->type == PARAM_SIZE ? ferry__parse_size(s, key, &v, &perr)
                                            : ferry__parse_uint64(s, key, &v, &perr);
            if (ok && v > (uint64_t)INT64_MAX) {
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
    pthread_mutex_lock(&m->lock);
    for (int i = 0; i < FERRY_CAP__MAX; i++) {
        json_t *c = json_pack("{s:s, s:b}", "capability", cap_table[i].name, "state", m->caps[i]);
        if (cap_table[i].feature && m->features_negotiated) {
            json_object_set_new(c, "negotiated", json_boolean(ferry__features_uses(&m->features, i)));
        }
        json_array_append_new(r, c);
    }
    pthread_mutex_unlock(&m->lock);
    return r;
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
            ferry_error_setg(errp, "Parameter 'capability' does not accept value '%s'", json_string_value(name));
            return false;
        }
        want[c] = json_is_true(state);
        given[c] = true;
    }
    pthread_mutex_lock(&m->lock);
    if (!m->incoming && (m->out_thread_joinable && m->status != FERRY_MIG_COMPLETED &&
                         m->status != FERRY_MIG_FAILED && m->status != FERRY_MIG_CANCELLED)) {
        pthread_mutex_unlock(&m->lock);
        ferry_error_setg(errp, "There's a migration process in progress");
        return false;
    }
    for (int c = 0; c < FERRY_CAP__MAX; c++) {
        if (given[c]) {
            m->caps[c] = want[c];
        }
    }
    pthread_mutex_unlock(&m->lock);
    return true;
}
