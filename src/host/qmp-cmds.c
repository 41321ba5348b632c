/*
 * The QMP commands of the host runtime: each one translates its (already type-checked) arguments into one call of
 * the engine's internal API (src/migration/migration.h), or of the object registry (object-add, object-del:
 * include/ferry/object.h), and its result back into JSON. URIs and "channels" are
 * parsed here, at the edge, and nowhere below; HMP reaches these same functions through the monitor's table. No migration logic lives in this file; the built-in protocol commands
 * (qmp_capabilities, query-version, query-commands) are the monitor's own.
 */
#include <stdint.h>
#include <string.h>

#include "crypto/crypto.h"
#include "ferry/object.h"
#include "host/host-int.h"
#include "migration/migration.h"
#include "util/util.h"

static json_t *cmd_query_status(json_t *args, void *opaque, FerryError **errp)
{
    FerryHost *h = opaque;
    FerryRunState rs = ferry__runstate_get(h->m);
    return json_pack("{s:s, s:b, s:b}", "status", ferry__runstate_name(rs), "running", rs == FERRY_RUN_RUNNING,
                     "singlestep", 0);
}

/* QEMU's query-name: the -name given, or nothing. A clone restored from a snapshot keeps its own (the name is the
 * process's, not part of the saved state). */
static json_t *cmd_query_name(json_t *args, void *opaque, FerryError **errp)
{
    FerryHost *h = opaque;
    return h->name ? json_pack("{s:s}", "name", h->name) : json_object();
}

static json_t *cmd_stop(json_t *args, void *opaque, FerryError **errp)
{
    FerryHost *h = opaque;
    return ferry__vm_stop(h->m, errp) ? json_object() : NULL;
}

static json_t *cmd_cont(json_t *args, void *opaque, FerryError **errp)
{
    FerryHost *h = opaque;
    return ferry__vm_cont(h->m, errp) ? json_object() : NULL;
}

/*
 * quit: the reply is queued before the SHUTDOWN event (the monitor delivers events after the reply to the
 * request that raised them), and the monitor flushes both before ferry_host_run() returns and the program exits.
 */
static json_t *cmd_quit(json_t *args, void *opaque, FerryError **errp)
{
    FerryHost *h = opaque;
    ferry__monitor_emit_event(h->mon, "SHUTDOWN", json_pack("{s:b, s:s}", "guest", 0, "reason", "host-qmp-quit"));
    ferry__monitor_request_quit(h->mon, 0);
    return json_object();
}

/*
 * migrate and migrate-incoming take the address as a URI string or as QAPI "channels", exactly one of the two
 * (QEMU's rule and text). Either way it is parsed here, once, into the address model.
 */
static bool parse_uri_or_channels(json_t *args, FerryMigrationAddress **addr, FerryError **errp)
{
    json_t *uri = json_object_get(args, "uri");
    json_t *channels = json_object_get(args, "channels");
    if (!uri == !channels) {
        ferry_error_setg(errp, "need either 'uri' or 'channels' argument");
        return false;
    }
    if (channels) {
        return ferry__channels_parse_main(channels, addr, errp);
    }
    return ferry__address_parse_uri(json_string_value(uri), addr, errp);
}

static json_t *cmd_migrate(json_t *args, void *opaque, FerryError **errp)
{
    FerryHost *h = opaque;
    /* QEMU's old block-migration flags: ferry migrates no disks, so asking for it must not silently do nothing. */
    if (json_is_true(json_object_get(args, "blk"))) {
        ferry_error_setg(errp, "block migration (blk) is not supported: ferry migrates no block devices");
        return NULL;
    }
    if (json_is_true(json_object_get(args, "inc"))) {
        ferry_error_setg(errp, "incremental block migration (inc) is not supported: ferry migrates no block "
                         "devices");
        return NULL;
    }
    /* "detach" is accepted and ignored, as in QEMU: migrate always returns at once. */
    if (!ferry__dirtyrate_check_migrate(h->m, errp)) {
        return NULL;
    }
    FerryMigrationAddress *addr = NULL;
    if (!parse_uri_or_channels(args, &addr, errp)) {
        return NULL;
    }
    /* resume: reconnect a source paused in postcopy to the destination's migrate-recover address. */
    bool ok = json_is_true(json_object_get(args, "resume")) ? ferry__migrate_resume(h->m, addr, errp)
                                                            : ferry__migrate(h->m, addr, errp);
    ferry__address_free(addr);
    return ok ? json_object() : NULL;
}

static json_t *cmd_migrate_start_postcopy(json_t *args, void *opaque, FerryError **errp)
{
    FerryHost *h = opaque;
    return ferry__migrate_start_postcopy(h->m, errp) ? json_object() : NULL;
}

static json_t *cmd_migrate_pause(json_t *args, void *opaque, FerryError **errp)
{
    FerryHost *h = opaque;
    return ferry__migrate_pause(h->m, errp) ? json_object() : NULL;
}

/* migrate-recover: QEMU takes only "uri"; ferry also takes "channels", as migrate-incoming does, with the same
 * rule (exactly one of the two). */
static json_t *cmd_migrate_recover(json_t *args, void *opaque, FerryError **errp)
{
    FerryHost *h = opaque;
    FerryMigrationAddress *addr = NULL;
    if (!parse_uri_or_channels(args, &addr, errp)) {
        return NULL;
    }
    bool ok = ferry__migrate_recover(h->m, addr, errp);
    ferry__address_free(addr);
    return ok ? json_object() : NULL;
}

static json_t *cmd_migrate_incoming(json_t *args, void *opaque, FerryError **errp)
{
    FerryHost *h = opaque;
    json_t *eoe = json_object_get(args, "exit-on-error");
    bool exit_on_error = eoe ? json_is_true(eoe) : true;
    if (!ferry__dirtyrate_check_migrate(h->m, errp)) {
        return NULL;
    }
    FerryMigrationAddress *addr = NULL;
    if (!parse_uri_or_channels(args, &addr, errp)) {
        return NULL;
    }
    bool ok = ferry__migrate_incoming(h->m, addr, exit_on_error, errp);
    ferry__address_free(addr);
    return ok ? json_object() : NULL;
}

static json_t *cmd_migrate_cancel(json_t *args, void *opaque, FerryError **errp)
{
    FerryHost *h = opaque;
    return ferry__migrate_cancel(h->m, errp) ? json_object() : NULL;
}

static json_t *cmd_query_migrate(json_t *args, void *opaque, FerryError **errp)
{
    FerryHost *h = opaque;
    return ferry__migration_query(h->m);
}

static json_t *cmd_migrate_set_parameters(json_t *args, void *opaque, FerryError **errp)
{
    FerryHost *h = opaque;
    return ferry__migration_set_params(h->m, args, errp) ? json_object() : NULL;
}

static json_t *cmd_query_migrate_parameters(json_t *args, void *opaque, FerryError **errp)
{
    FerryHost *h = opaque;
    return ferry__migration_query_params(h->m);
}

static json_t *cmd_migrate_set_capabilities(json_t *args, void *opaque, FerryError **errp)
{
    FerryHost *h = opaque;
    return ferry__migration_set_caps(h->m, json_object_get(args, "capabilities"), errp) ? json_object() : NULL;
}

/* object-add: QEMU's flat form, {"qom-type": T, "id": ID, PROP: VALUE, ...}. */
static json_t *cmd_object_add(json_t *args, void *opaque, FerryError **errp)
{
    return ferry__object_add_args(args, errp) ? json_object() : NULL;
}

static json_t *cmd_object_del(json_t *args, void *opaque, FerryError **errp)
{
    return ferry_object_del(json_string_value(json_object_get(args, "id")), errp) ? json_object() : NULL;
}

static json_t *cmd_query_migrate_capabilities(json_t *args, void *opaque, FerryError **errp)
{
    FerryHost *h = opaque;
    return ferry__migration_query_caps(h->m);
}

/* calc-dirty-rate: calc-time is in calc-time-unit (default second); the engine checks the ranges after the
 * conversion to milliseconds, which saturates so that an absurd number of seconds stays out of range. */
static json_t *cmd_calc_dirty_rate(json_t *args, void *opaque, FerryError **errp)
{
    FerryHost *h = opaque;
    FerryDirtyRateConfig cfg = { .mode = FERRY_DIRTYRATE_PAGE_SAMPLING };
    bool unit_ms = false;
    json_t *unit = json_object_get(args, "calc-time-unit");
    json_t *mode = json_object_get(args, "mode");
    json_t *pages = json_object_get(args, "sample-pages");
    if (unit && !ferry__dirtyrate_unit_parse(json_string_value(unit), &unit_ms, errp)) {
        return NULL;
    }
    if (mode && !ferry__dirtyrate_mode_parse(json_string_value(mode), &cfg.mode, errp)) {
        return NULL;
    }
    json_int_t t = json_integer_value(json_object_get(args, "calc-time"));
    if (unit_ms) {
        cfg.calc_time_ms = t;
    } else {
        cfg.calc_time_ms = t > INT64_MAX / 1000 ? INT64_MAX : t < INT64_MIN / 1000 ? INT64_MIN : t * 1000;
    }
    if (pages) {
        cfg.has_sample_pages = true;
        cfg.sample_pages = json_integer_value(pages);
    }
    return ferry__dirtyrate_calc(h->m, &cfg, errp) ? json_object() : NULL;
}

static json_t *cmd_query_dirty_rate(json_t *args, void *opaque, FerryError **errp)
{
    FerryHost *h = opaque;
    bool unit_ms = false;
    json_t *unit = json_object_get(args, "calc-time-unit");
    if (unit && !ferry__dirtyrate_unit_parse(json_string_value(unit), &unit_ms, errp)) {
        return NULL;
    }
    return ferry__dirtyrate_query(h->m, unit_ms);
}

/* set-/cancel-/query-vcpu-dirty-limit: cpu-index absent means every writer. dirty-rate is QAPI's uint64: a
 * negative number is refused here rather than read as a huge one. */
static bool cpu_index_arg(json_t *args, int64_t *index, FerryError **errp)
{
    json_t *v = json_object_get(args, "cpu-index");
    *index = v ? (int64_t)json_integer_value(v) : -1;
    if (v && *index < 0) {
        ferry_error_setg(errp, "incorrect cpu index specified");
        return false;
    }
    return true;
}

static json_t *cmd_set_vcpu_dirty_limit(json_t *args, void *opaque, FerryError **errp)
{
    FerryHost *h = opaque;
    int64_t index;
    json_int_t rate = json_integer_value(json_object_get(args, "dirty-rate"));
    if (rate < 0) {
        ferry_error_setg(errp, "invalid dirty page limit %lld", (long long)rate);
        return NULL;
    }
    if (!cpu_index_arg(args, &index, errp)) {
        return NULL;
    }
    return ferry__dirtylimit_set(h->m, index, (uint64_t)rate, errp) ? json_object() : NULL;
}

static json_t *cmd_cancel_vcpu_dirty_limit(json_t *args, void *opaque, FerryError **errp)
{
    FerryHost *h = opaque;
    int64_t index;
    if (!cpu_index_arg(args, &index, errp)) {
        return NULL;
    }
    return ferry__dirtylimit_cancel(h->m, index, errp) ? json_object() : NULL;
}

static json_t *cmd_query_vcpu_dirty_limit(json_t *args, void *opaque, FerryError **errp)
{
    FerryHost *h = opaque;
    return ferry__dirtylimit_query(h->m, errp);
}

bool ferry__host_register_qmp_commands(FerryHost *h, FerryError **errp)
{
    static const FerryArgSpec migrate_args[] = {
        { "uri", FERRY_ARG_STR, true },
        { "channels", FERRY_ARG_ARRAY, true },
        { "blk", FERRY_ARG_BOOL, true },
        { "inc", FERRY_ARG_BOOL, true },
        { "detach", FERRY_ARG_BOOL, true },
        { "resume", FERRY_ARG_BOOL, true },
        { NULL, FERRY_ARG_ANY, false },
    };
    static const FerryArgSpec incoming_args[] = {
        { "uri", FERRY_ARG_STR, true },
        { "channels", FERRY_ARG_ARRAY, true },
        { "exit-on-error", FERRY_ARG_BOOL, true },
        { NULL, FERRY_ARG_ANY, false },
    };
    static const FerryArgSpec recover_args[] = {
        { "uri", FERRY_ARG_STR, true },
        { "channels", FERRY_ARG_ARRAY, true },
        { NULL, FERRY_ARG_ANY, false },
    };
    static const FerryArgSpec set_params_args[] = {
        { "*", FERRY_ARG_ANY, true },
        { NULL, FERRY_ARG_ANY, false },
    };
    static const FerryArgSpec object_add_args[] = {
        { "qom-type", FERRY_ARG_STR, false },
        { "id", FERRY_ARG_STR, false },
        { "*", FERRY_ARG_ANY, true },
        { NULL, FERRY_ARG_ANY, false },
    };
    static const FerryArgSpec object_del_args[] = {
        { "id", FERRY_ARG_STR, false },
        { NULL, FERRY_ARG_ANY, false },
    };
    static const FerryArgSpec set_caps_args[] = {
        { "capabilities", FERRY_ARG_ARRAY, false },
        { NULL, FERRY_ARG_ANY, false },
    };
    static const FerryArgSpec calc_dirty_rate_args[] = {
        { "calc-time", FERRY_ARG_INT, false },
        { "calc-time-unit", FERRY_ARG_STR, true },
        { "sample-pages", FERRY_ARG_INT, true },
        { "mode", FERRY_ARG_STR, true },
        { NULL, FERRY_ARG_ANY, false },
    };
    static const FerryArgSpec query_dirty_rate_args[] = {
        { "calc-time-unit", FERRY_ARG_STR, true },
        { NULL, FERRY_ARG_ANY, false },
    };
    static const FerryArgSpec set_dirty_limit_args[] = {
        { "cpu-index", FERRY_ARG_INT, true },
        { "dirty-rate", FERRY_ARG_INT, false },
        { NULL, FERRY_ARG_ANY, false },
    };
    static const FerryArgSpec cancel_dirty_limit_args[] = {
        { "cpu-index", FERRY_ARG_INT, true },
        { NULL, FERRY_ARG_ANY, false },
    };
    static const struct {
        const char *name;
        const FerryArgSpec *args;
        FerryCommandFn fn;
    } cmds[] = {
        { "query-status", NULL, cmd_query_status },
        { "query-name", NULL, cmd_query_name },
        { "stop", NULL, cmd_stop },
        { "cont", NULL, cmd_cont },
        { "quit", NULL, cmd_quit },
        { "migrate", migrate_args, cmd_migrate },
        { "migrate-incoming", incoming_args, cmd_migrate_incoming },
        { "migrate_cancel", NULL, cmd_migrate_cancel },
        { "migrate-start-postcopy", NULL, cmd_migrate_start_postcopy },
        { "migrate-pause", NULL, cmd_migrate_pause },
        { "migrate-recover", recover_args, cmd_migrate_recover },
        { "query-migrate", NULL, cmd_query_migrate },
        { "migrate-set-parameters", set_params_args, cmd_migrate_set_parameters },
        { "query-migrate-parameters", NULL, cmd_query_migrate_parameters },
        { "migrate-set-capabilities", set_caps_args, cmd_migrate_set_capabilities },
        { "query-migrate-capabilities", NULL, cmd_query_migrate_capabilities },
        { "object-add", object_add_args, cmd_object_add },
        { "object-del", object_del_args, cmd_object_del },
        { "calc-dirty-rate", calc_dirty_rate_args, cmd_calc_dirty_rate },
        { "query-dirty-rate", query_dirty_rate_args, cmd_query_dirty_rate },
        { "set-vcpu-dirty-limit", set_dirty_limit_args, cmd_set_vcpu_dirty_limit },
        { "cancel-vcpu-dirty-limit", cancel_dirty_limit_args, cmd_cancel_vcpu_dirty_limit },
        { "query-vcpu-dirty-limit", NULL, cmd_query_vcpu_dirty_limit },
    };
    for (size_t i = 0; i < FERRY_ARRAY_SIZE(cmds); i++) {
        if (!ferry__monitor_register(h->mon, cmds[i].name, cmds[i].args, cmds[i].fn, h, errp)) {
            return false;
        }
    }
    return true;
}
