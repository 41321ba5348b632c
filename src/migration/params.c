/*
 * Migration parameters and capabilities: one table each, with QEMU's names, types, defaults and ranges. Every
 * reader and writer goes through the table, so adding a parameter is adding a row. migrate-set-parameters checks
 * every member before applying any (all or nothing). The early "-incoming config:" form of a later issue will use
 * the same check.
 *
 * Not here: parameters ferry does not implement yet. Setting one is an error that says so (never silently
 * accepted); docs/qmp.md lists them.
 */
#include <string.h>

#include "migration/migration-priv.h"
#include "util/util.h"

typedef struct ParamDesc {
    const char *name;
    size_t offset;   /* int64_t field in FerryParams */
    int64_t def;
    int64_t min, max;
    const char *unit; /* for messages */
} ParamDesc;

#define MAX_MIGRATE_DOWNTIME_MS 2000000 /* QEMU's MAX_MIGRATE_DOWNTIME, 2000 seconds */

static const ParamDesc params[] = {
    { "max-bandwidth", offsetof(FerryParams, max_bandwidth), 128ll << 20, 0, INT64_MAX / 8, "bytes per second" },
    { "downtime-limit", offsetof(FerryParams, downtime_limit), 300, 0, MAX_MIGRATE_DOWNTIME_MS, "milliseconds" },
};

/* QEMU parameters known by name but not implemented by ferry yet: refused with a clear message. */
static const char *const unimplemented_params[] = {
    "announce-initial", "announce-max", "announce-rounds", "announce-step", "throttle-trigger-threshold",
    "cpu-throttle-initial", "cpu-throttle-increment", "cpu-throttle-tailslow", "tls-creds", "tls-hostname",
    "tls-authz", "avail-switchover-bandwidth", "multifd-channels", "xbzrle-cache-size", "max-postcopy-bandwidth",
    "max-cpu-throttle", "multifd-compression", "multifd-zlib-level", "multifd-zstd-level",
    "block-bitmap-mapping", "x-vcpu-dirty-limit-period", "vcpu-dirty-limit", "mode", "zero-page-detection",
    "direct-io", "backend-transfer", "cpr-exec-command", "x-checkpoint-delay",
};

static const char *const cap_names[FERRY_CAP__MAX] = {
    [FERRY_CAP_EVENTS] = "events",
};

static int64_t *param_field(FerryParams *p, const ParamDesc *d)
{
    return (int64_t *)((char *)p + d->offset);
}

void ferry__params_init(FerryMigration *m)
{
    for (size_t i = 0; i < FERRY_ARRAY_SIZE(params); i++) {
        *param_field(&m->params, &params[i]) = params[i].def;
    }
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

static bool is_unimplemented(const char *name)
{
    for (size_t i = 0; i < FERRY_ARRAY_SIZE(unimplemented_params); i++) {
        if (strcmp(unimplemented_params[i], name) == 0) {
            return true;
        }
    }
    return false;
}

/* Check one member; on success *out holds the value to apply. */
static bool check_param(const char *key, json_t *val, const ParamDesc **descp, int64_t *out, FerryError **errp)
{
    const ParamDesc *d = find_param(key);
    if (!d) {
        if (is_unimplemented(key)) {
            ferry_error_setg(errp, "Parameter '%s' is not supported by ferry yet", key);
        } else {
            ferry_error_setg(errp, "Parameter '%s' is unexpected", key);
        }
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

json_t *ferry__migration_query_caps(FerryMigration *m)
{
    json_t *r = json_array();
    pthread_mutex_lock(&m->lock);
    for (int i = 0; i < FERRY_CAP__MAX; i++) {
        json_array_append_new(r, json_pack("{s:s, s:b}", "capability", cap_names[i], "state", m->caps[i]));
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
            if (strcmp(cap_names[c], json_string_value(name)) == 0) {
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
