/*
 * HMP, the human monitor: one command line in, text for a human out, in QEMU's command names and output layout
 * ("info migrate", "migrate_set_parameter downtime-limit 100", ...). Every command is translated into the
 * arguments of a QMP command of the monitor's table and run through ferry__monitor_dispatch(), so HMP and QMP
 * share one implementation and one set of error messages; this file only tokenises lines and formats replies.
 * Values that arrive as strings (migrate_set_parameter) are converted by the engine's keyval check, the same
 * conversion "-incoming config:" uses, and a URI goes to QMP migrate as it is, to be parsed once there.
 * It is not the line framing or the sockets (qmp-server.c), and it holds no migration logic.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "crypto/crypto.h"
#include "migration/migration.h"
#include "monitor/monitor-priv.h"
#include "util/util.h"

char *ferry__hmp_banner(void)
{
    return ferry__xasprintf("ferry %d.%d.%d monitor - type 'help' for more information\n", FERRY_VERSION_MAJOR,
                            FERRY_VERSION_MINOR, FERRY_VERSION_MICRO);
}

/* A growable output string. */
typedef struct Out {
    char *s;
    size_t len;
} Out;

static void out_printf(Out *o, const char *fmt, ...) FERRY_PRINTF(2, 3);
static void out_printf(Out *o, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *piece = ferry__xvasprintf(fmt, ap);
    va_end(ap);
    size_t n = strlen(piece);
    o->s = ferry__xrealloc(o->s, o->len + n + 1);
    memcpy(o->s + o->len, piece, n + 1);
    o->len += n;
    free(piece);
}

static char *out_finish(Out *o)
{
    return o->s ? o->s : ferry__xstrdup("");
}

/*
 * Split a line into words as QEMU's HMP reads string arguments: blanks separate words; a word in double quotes
 * may hold blanks, with \" \\ \n \r \t escapes inside ("exec:cat > /tmp/x" must reach migrate whole).
 */
static bool tokenize(const char *line, char ***words_out, size_t *n_out, FerryError **errp)
{
    char **words = NULL;
    size_t n = 0;
    const char *p = line;
    for (;;) {
        while (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n') {
            p++;
        }
        if (!*p) {
            break;
        }
        char *w = ferry__xmalloc(strlen(p) + 1);
        size_t len = 0;
        if (*p == '"') {
            p++;
            while (*p && *p != '"') {
                if (*p == '\\') {
                    p++;
                    switch (*p) {
                    case '"': case '\\': w[len++] = *p; break;
                    case 'n': w[len++] = '\n'; break;
                    case 'r': w[len++] = '\r'; break;
                    case 't': w[len++] = '\t'; break;
                    default:
                        ferry_error_setg(errp, "unsupported escape code: '\\%c'", *p ? *p : ' ');
                        free(w);
                        goto fail;
                    }
                    p++;
                    continue;
                }
                w[len++] = *p++;
            }
            if (*p != '"') {
                ferry_error_setg(errp, "unterminated string");
                free(w);
                goto fail;
            }
            p++;
        } else {
            while (*p && *p != ' ' && *p != '\t' && *p != '\r' && *p != '\n') {
                w[len++] = *p++;
            }
        }
        w[len] = '\0';
        words = ferry__xrealloc(words, (n + 1) * sizeof(*words));
        words[n++] = w;
    }
    *words_out = words;
    *n_out = n;
    return true;

fail:
    for (size_t i = 0; i < n; i++) {
        free(words[i]);
    }
    free(words);
    return false;
}

/* Run QMP command @name with @args (taken; NULL for none). Returns its "return" (new reference) or NULL with
 * the command's error. */
static json_t *run_qmp(FerryMonitor *mon, const char *name, json_t *args, FerryError **errp)
{
    json_t *req = json_pack("{s:s}", "execute", name);
    if (args) {
        json_object_set_new(req, "arguments", args);
    }
    json_t *reply = ferry__monitor_dispatch(mon, req);
    json_decref(req);
    json_t *err = json_object_get(reply, "error");
    json_t *ret = NULL;
    if (err) {
        ferry_error_setg(errp, "%s", json_string_value(json_object_get(err, "desc")));
    } else {
        ret = json_incref(json_object_get(reply, "return"));
    }
    json_decref(reply);
    return ret;
}

static uint64_t get_u64(json_t *obj, const char *key)
{
    json_t *v = json_object_get(obj, key);
    return json_is_integer(v) && json_integer_value(v) > 0 ? (uint64_t)json_integer_value(v) : 0;
}

/* Whether @key is one of the NULL-terminated @keys. */
static bool key_in(const char *key, const char *const *keys)
{
    for (size_t i = 0; keys[i]; i++) {
        if (!strcmp(keys[i], key)) {
            return true;
        }
    }
    return false;
}

/* A list of numbers as "[1, 2, 3]" (postcopy-vcpu-blocktime and the like). */
static void out_number_list(Out *o, json_t *a)
{
    size_t i;
    json_t *el;
    out_printf(o, "[");
    json_array_foreach(a, i, el) {
        if (json_is_integer(el)) {
            out_printf(o, "%s%" JSON_INTEGER_FORMAT, i ? ", " : "", json_integer_value(el));
        } else {
            out_printf(o, "%s?", i ? ", " : "");
        }
    }
    out_printf(o, "]");
}

/*
 * A member "info migrate" has no line of its own for (a field a newer engine added, or one only some migrations
 * have): "NAME: VALUE" with the QMP name, so that nothing query-migrate says is hidden. Strings are escaped (they
 * may quote a peer); lists of scalars are comma-separated, objects compact JSON.
 */
static void out_member(Out *o, const char *key, json_t *v)
{
    if (json_is_integer(v)) {
        out_printf(o, "%s: %" JSON_INTEGER_FORMAT "\n", key, json_integer_value(v));
    } else if (json_is_real(v)) {
        out_printf(o, "%s: %0.2f\n", key, json_real_value(v));
    } else if (json_is_boolean(v)) {
        out_printf(o, "%s: %s\n", key, json_is_true(v) ? "on" : "off");
    } else if (json_is_string(v)) {
        char *safe = ferry__log_escape(json_string_value(v));
        out_printf(o, "%s: %s\n", key, safe);
        free(safe);
    } else {
        bool scalars = json_is_array(v);
        size_t i;
        json_t *el;
        json_array_foreach(v, i, el) {
            scalars = scalars && !json_is_array(el) && !json_is_object(el);
        }
        out_printf(o, "%s:", key);
        if (scalars) {
            json_array_foreach(v, i, el) {
                if (json_is_string(el)) {
                    char *safe = ferry__log_escape(json_string_value(el));
                    out_printf(o, "%s%s", i ? ", " : " ", safe);
                    free(safe);
                } else {
                    char *j = json_dumps(el, JSON_COMPACT | JSON_ENCODE_ANY);
                    out_printf(o, "%s%s", i ? ", " : " ", j ? j : "?");
                    free(j);
                }
            }
        } else {
            /* json_dumps escapes control characters, so a peer's text cannot reach the terminal raw. */
            char *j = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
            out_printf(o, " %s", j ? j : "?");
            free(j);
        }
        out_printf(o, "\n");
    }
}

char *ferry__hmp_format_migrate(json_t *info)
{
    /* The members with a line of their own below; every other one is printed by out_member at the end of its
     * object. */
    static const char *const top_known[] = {
        "status", "total-time", "expected-downtime", "downtime", "setup-time", "socket-address", "ram",
        "postcopy-blocktime", "postcopy-vcpu-blocktime", "postcopy-latency", "postcopy-non-vcpu-latency",
        "postcopy-vcpu-latency", "postcopy-latency-dist", "dirty-tracker", NULL,
    };
    static const char *const ram_known[] = {
        "transferred", "mbps", "remaining", "total", "duplicate", "normal", "normal-bytes", "dirty-sync-count",
        "page-size", "multifd-bytes", "pages-per-second", "dirty-pages-rate", "postcopy-requests", "precopy-bytes",
        "downtime-bytes", "postcopy-bytes", NULL,
    };
    Out o = { 0 };
    const char *status = json_string_value(json_object_get(info, "status"));
    const char *desc = json_string_value(json_object_get(info, "error-desc"));
    bool desc_shown = false;
    /* QEMU's hmp_info_migrate() layout: status and times, the listening addresses, then the RAM counters. */
    if (status) {
        if (desc && !strcmp(status, "failed")) {
            /* error-desc may quote a peer: escaped, it cannot move the cursor or forge lines on a terminal. */
            char *safe = ferry__log_escape(desc);
            out_printf(&o, "Migration status: %s (%s)\n", status, safe);
            free(safe);
            desc_shown = true;
        } else {
            out_printf(&o, "Migration status: %s\n", status);
        }
        if (json_object_get(info, "total-time")) {
            out_printf(&o, "total time: %" PRIu64 " ms\n", get_u64(info, "total-time"));
        }
        if (json_object_get(info, "expected-downtime")) {
            out_printf(&o, "expected downtime: %" PRIu64 " ms\n", get_u64(info, "expected-downtime"));
        }
        if (json_object_get(info, "downtime")) {
            out_printf(&o, "downtime: %" PRIu64 " ms\n", get_u64(info, "downtime"));
        }
        if (json_object_get(info, "setup-time")) {
            out_printf(&o, "setup: %" PRIu64 " ms\n", get_u64(info, "setup-time"));
        }
    }
    json_t *addrs = json_object_get(info, "socket-address");
    if (json_is_array(addrs)) {
        out_printf(&o, "socket address: [\n");
        size_t i;
        json_t *a;
        json_array_foreach(addrs, i, a) {
            const char *type = json_string_value(json_object_get(a, "type"));
            if (type && !strcmp(type, "inet")) {
                const char *host = json_string_value(json_object_get(a, "host"));
                const char *port = json_string_value(json_object_get(a, "port"));
                bool v6 = host && strchr(host, ':');
                out_printf(&o, "\ttcp:%s%s%s:%s\n", v6 ? "[" : "", host ? host : "", v6 ? "]" : "",
                           port ? port : "");
            } else if (type && !strcmp(type, "unix")) {
                out_printf(&o, "\tunix:%s\n", json_string_value(json_object_get(a, "path")));
            } else {
                char *j = json_dumps(a, JSON_COMPACT);
                out_printf(&o, "\t%s\n", j ? j : "?");
                free(j);
            }
        }
        out_printf(&o, "]\n");
    }
    json_t *ram = json_object_get(info, "ram");
    if (json_is_object(ram)) {
        out_printf(&o, "transferred ram: %" PRIu64 " kbytes\n", get_u64(ram, "transferred") >> 10);
        json_t *mbps = json_object_get(ram, "mbps");
        out_printf(&o, "throughput: %0.2f mbps\n", json_is_number(mbps) ? json_number_value(mbps) : 0.0);
        out_printf(&o, "remaining ram: %" PRIu64 " kbytes\n", get_u64(ram, "remaining") >> 10);
        out_printf(&o, "total ram: %" PRIu64 " kbytes\n", get_u64(ram, "total") >> 10);
        out_printf(&o, "duplicate: %" PRIu64 " pages\n", get_u64(ram, "duplicate"));
        out_printf(&o, "normal: %" PRIu64 " pages\n", get_u64(ram, "normal"));
        out_printf(&o, "normal bytes: %" PRIu64 " kbytes\n", get_u64(ram, "normal-bytes") >> 10);
        out_printf(&o, "dirty sync count: %" PRIu64 "\n", get_u64(ram, "dirty-sync-count"));
        out_printf(&o, "page size: %" PRIu64 " kbytes\n", get_u64(ram, "page-size") >> 10);
        if (json_object_get(ram, "multifd-bytes")) {
            out_printf(&o, "multifd bytes: %" PRIu64 " kbytes\n", get_u64(ram, "multifd-bytes") >> 10);
        }
        out_printf(&o, "pages-per-second: %" PRIu64 "\n", get_u64(ram, "pages-per-second"));
        if (get_u64(ram, "dirty-pages-rate")) {
            out_printf(&o, "dirty pages rate: %" PRIu64 " pages\n", get_u64(ram, "dirty-pages-rate"));
        }
        if (json_object_get(ram, "postcopy-requests")) {
            out_printf(&o, "postcopy request count: %" PRIu64 "\n", get_u64(ram, "postcopy-requests"));
        }
        if (json_object_get(ram, "precopy-bytes")) {
            out_printf(&o, "precopy ram: %" PRIu64 " kbytes\n", get_u64(ram, "precopy-bytes") >> 10);
        }
        if (json_object_get(ram, "downtime-bytes")) {
            out_printf(&o, "downtime ram: %" PRIu64 " kbytes\n", get_u64(ram, "downtime-bytes") >> 10);
        }
        if (json_object_get(ram, "postcopy-bytes")) {
            out_printf(&o, "postcopy ram: %" PRIu64 " kbytes\n", get_u64(ram, "postcopy-bytes") >> 10);
        }
        const char *key;
        json_t *v;
        json_object_foreach(ram, key, v) {
            if (!key_in(key, ram_known)) {
                out_member(&o, key, v);
            }
        }
    }
    /* Postcopy, destination: QEMU's units (blocktime in ms, latency in ns). */
    if (json_object_get(info, "postcopy-blocktime")) {
        out_printf(&o, "postcopy blocktime: %" PRIu64 " ms\n", get_u64(info, "postcopy-blocktime"));
    }
    json_t *list = json_object_get(info, "postcopy-vcpu-blocktime");
    if (json_is_array(list)) {
        out_printf(&o, "postcopy vcpu blocktime: ");
        out_number_list(&o, list);
        out_printf(&o, " ms\n");
    }
    if (json_object_get(info, "postcopy-latency")) {
        out_printf(&o, "postcopy latency: %" PRIu64 " ns\n", get_u64(info, "postcopy-latency"));
    }
    if (json_object_get(info, "postcopy-non-vcpu-latency")) {
        out_printf(&o, "postcopy non-vcpu latency: %" PRIu64 " ns\n", get_u64(info, "postcopy-non-vcpu-latency"));
    }
    list = json_object_get(info, "postcopy-vcpu-latency");
    if (json_is_array(list)) {
        out_printf(&o, "postcopy vcpu latency: ");
        out_number_list(&o, list);
        out_printf(&o, " ns\n");
    }
    list = json_object_get(info, "postcopy-latency-dist");
    if (json_is_array(list)) {
        out_printf(&o, "postcopy latency distribution: ");
        out_number_list(&o, list);
        out_printf(&o, "\n");
    }
    const char *tracker = json_string_value(json_object_get(info, "dirty-tracker"));
    if (tracker) {
        const char *note = json_string_value(json_object_get(info, "dirty-tracker-note"));
        out_printf(&o, "dirty tracker: %s%s%s%s\n", tracker, note ? " (" : "", note ? note : "", note ? ")" : "");
    }
    const char *key;
    json_t *v;
    json_object_foreach(info, key, v) {
        if (key_in(key, top_known) || (!strcmp(key, "error-desc") && desc_shown)) {
            continue;
        }
        if (tracker && !strcmp(key, "dirty-tracker-note")) {
            continue;
        }
        out_member(&o, key, v);
    }
    return out_finish(&o);
}

/* The units QEMU's "info migrate_parameters" prints after a parameter's value. */
static const char *param_unit(const char *name)
{
    static const struct {
        const char *name, *unit;
    } units[] = {
        { "max-bandwidth", " bytes/second" },
        { "avail-switchover-bandwidth", " bytes/second" },
        { "max-postcopy-bandwidth", " bytes/second" },
        { "downtime-limit", " ms" },
        { "x-checkpoint-delay", " ms" },
        { "io-timeout", " ms" },
        { "xbzrle-cache-size", " bytes" },
        { "cpu-throttle-initial", " %" },
        { "cpu-throttle-increment", " %" },
        { "throttle-trigger-threshold", " %" },
        { "max-cpu-throttle", " %" },
        { "x-vcpu-dirty-limit-period", " ms" },
        { "vcpu-dirty-limit", " MB/s" },
    };
    for (size_t i = 0; i < FERRY_ARRAY_SIZE(units); i++) {
        if (!strcmp(units[i].name, name)) {
            return units[i].unit;
        }
    }
    return "";
}

char *ferry__hmp_format_params(json_t *params)
{
    Out o = { 0 };
    const char *key;
    json_t *v;
    json_object_foreach(params, key, v) {
        if (json_is_integer(v)) {
            out_printf(&o, "%s: %" JSON_INTEGER_FORMAT "%s\n", key, json_integer_value(v), param_unit(key));
        } else if (json_is_boolean(v)) {
            out_printf(&o, "%s: %s\n", key, json_is_true(v) ? "on" : "off");
        } else if (json_is_string(v)) {
            /* QEMU quotes free-form strings (tls-creds: '') and prints enum values bare (mode: normal). */
            bool quoted = strncmp(key, "tls-", 4) == 0;
            out_printf(&o, quoted ? "%s: '%s'\n" : "%s: %s\n", key, json_string_value(v));
        } else if (json_is_array(v)) {
            /* A list of enum values (backend-transfer): comma-separated, nothing for an empty list. */
            out_printf(&o, "%s:", key);
            size_t i;
            json_t *el;
            json_array_foreach(v, i, el) {
                out_printf(&o, "%s%s", i ? "," : " ", json_is_string(el) ? json_string_value(el) : "?");
            }
            out_printf(&o, "\n");
        } else {
            char *j = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
            out_printf(&o, "%s: %s\n", key, j ? j : "?");
            free(j);
        }
    }
    return out_finish(&o);
}

char *ferry__hmp_format_caps(json_t *caps)
{
    Out o = { 0 };
    size_t i;
    json_t *c;
    json_array_foreach(caps, i, c) {
        out_printf(&o, "%s: %s\n", json_string_value(json_object_get(c, "capability")),
                   json_is_true(json_object_get(c, "state")) ? "on" : "off");
    }
    return out_finish(&o);
}

char *ferry__hmp_format_status(json_t *status)
{
    /* QEMU: "running", "paused", or "paused (STATE)" for any stopped state other than a user's stop. */
    const char *st = json_string_value(json_object_get(status, "status"));
    if (json_is_true(json_object_get(status, "running"))) {
        return ferry__xstrdup("VM status: running\n");
    }
    if (st && strcmp(st, "paused") != 0) {
        return ferry__xasprintf("VM status: paused (%s)\n", st);
    }
    return ferry__xstrdup("VM status: paused\n");
}

typedef struct HmpCommand HmpCommand;
typedef bool (*HmpFn)(FerryMonitor *mon, char **argv, size_t argc, Out *o, bool *wait, FerryError **errp);

struct HmpCommand {
    const char *name;
    size_t min_args, max_args; /* words after the command name, options included */
    const char *params;
    const char *help;
    HmpFn fn;
};

/* Run a QMP command whose reply a human does not need to see. */
static bool run_simple(FerryMonitor *mon, const char *name, json_t *args, FerryError **errp)
{
    json_t *r = run_qmp(mon, name, args, errp);
    json_decref(r);
    return r != NULL;
}

/* migrate [-d] [-r] URI, as QEMU's: -d returns at once, -r resumes a migration paused in postcopy. */
static bool hmp_migrate(FerryMonitor *mon, char **argv, size_t argc, Out *o, bool *wait, FerryError **errp)
{
    bool detach = false, resume = false;
    const char *uri = NULL;
    for (size_t i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "-d") && !uri) {
            detach = true;
        } else if (!strcmp(argv[i], "-r") && !uri) {
            resume = true;
        } else if (argv[i][0] == '-' && !uri) {
            ferry_error_setg(errp, "migrate: unsupported option '%s'", argv[i]);
            return false;
        } else if (!uri) {
            uri = argv[i];
        } else {
            ferry_error_setg(errp, "migrate: too many arguments");
            return false;
        }
    }
    if (!uri) {
        ferry_error_setg(errp, "migrate: missing URI");
        return false;
    }
    json_t *args = json_pack("{s:s}", "uri", uri);
    if (resume) {
        json_object_set_new(args, "resume", json_true());
    }
    if (!run_simple(mon, "migrate", args, errp)) {
        return false;
    }
    *wait = !detach;
    return true;
}

static bool hmp_migrate_start_postcopy(FerryMonitor *mon, char **argv, size_t argc, Out *o, bool *wait,
                                       FerryError **errp)
{
    return run_simple(mon, "migrate-start-postcopy", NULL, errp);
}

static bool hmp_migrate_pause(FerryMonitor *mon, char **argv, size_t argc, Out *o, bool *wait, FerryError **errp)
{
    return run_simple(mon, "migrate-pause", NULL, errp);
}

static bool hmp_migrate_recover(FerryMonitor *mon, char **argv, size_t argc, Out *o, bool *wait,
                                FerryError **errp)
{
    return run_simple(mon, "migrate-recover", json_pack("{s:s}", "uri", argv[0]), errp);
}

static bool hmp_migrate_incoming(FerryMonitor *mon, char **argv, size_t argc, Out *o, bool *wait,
                                 FerryError **errp)
{
    return run_simple(mon, "migrate-incoming", json_pack("{s:s}", "uri", argv[0]), errp);
}

static bool hmp_migrate_cancel(FerryMonitor *mon, char **argv, size_t argc, Out *o, bool *wait, FerryError **errp)
{
    return run_simple(mon, "migrate_cancel", NULL, errp);
}

static bool hmp_set_parameter(FerryMonitor *mon, char **argv, size_t argc, Out *o, bool *wait, FerryError **errp)
{
    /* The value is a string here as on the command line: the engine converts it by the parameter's type. */
    json_t *kv = json_pack("{s:s}", argv[0], argv[1]);
    json_t *typed = NULL;
    bool ok = ferry__migration_params_check_keyval(kv, &typed, errp);
    json_decref(kv);
    return ok && run_simple(mon, "migrate-set-parameters", typed, errp);
}

static bool hmp_set_capability(FerryMonitor *mon, char **argv, size_t argc, Out *o, bool *wait,
                               FerryError **errp)
{
    bool state;
    if (!strcmp(argv[1], "on")) {
        state = true;
    } else if (!strcmp(argv[1], "off")) {
        state = false;
    } else {
        ferry_error_setg(errp, "migrate_set_capability: expected 'on' or 'off', not '%s'", argv[1]);
        return false;
    }
    return run_simple(mon, "migrate-set-capabilities",
                      json_pack("{s:[{s:s, s:b}]}", "capabilities", "capability", argv[0], "state", state), errp);
}

/* object_add TYPE,id=ID,...: the -object spelling, converted by the type's properties into QMP object-add. */
static bool hmp_object_add(FerryMonitor *mon, char **argv, size_t argc, Out *o, bool *wait, FerryError **errp)
{
    bool known;
    json_t *args = NULL;
    if (!ferry__object_spec_parse(argv[0], &known, &args, errp)) {
        return false;
    }
    if (!known) {
        size_t tl = strcspn(argv[0], ",");
        ferry_error_setg(errp, "object_add: unknown object type '%.*s' (object types: %s)", (int)tl, argv[0],
                         ferry_object_type_names());
        return false;
    }
    return run_simple(mon, "object-add", args, errp);
}

static bool hmp_object_del(FerryMonitor *mon, char **argv, size_t argc, Out *o, bool *wait, FerryError **errp)
{
    return run_simple(mon, "object-del", json_pack("{s:s}", "id", argv[0]), errp);
}

static bool hmp_stop(FerryMonitor *mon, char **argv, size_t argc, Out *o, bool *wait, FerryError **errp)
{
    return run_simple(mon, "stop", NULL, errp);
}

static bool hmp_cont(FerryMonitor *mon, char **argv, size_t argc, Out *o, bool *wait, FerryError **errp)
{
    return run_simple(mon, "cont", NULL, errp);
}

static bool hmp_quit(FerryMonitor *mon, char **argv, size_t argc, Out *o, bool *wait, FerryError **errp)
{
    return run_simple(mon, "quit", NULL, errp);
}

/*
 * calc_dirty_rate [-r] [-b] SECONDS [SAMPLE_PAGES], QEMU's syntax: -r measures with the dirty ring, -b with the
 * dirty bitmap, neither by page sampling. The numbers go to QMP calc-dirty-rate, which checks them.
 */
static bool parse_hmp_int(const char *cmd, const char *word, const char *what, json_int_t *v, FerryError **errp)
{
    char *end;
    errno = 0;
    long long x = strtoll(word, &end, 10);
    if (errno || end == word || *end) {
        ferry_error_setg(errp, "%s: %s '%s' is not an integer", cmd, what, word);
        return false;
    }
    *v = x;
    return true;
}

static bool hmp_calc_dirty_rate(FerryMonitor *mon, char **argv, size_t argc, Out *o, bool *wait, FerryError **errp)
{
    bool ring = false, bitmap = false;
    size_t i = 0;
    for (; i < argc && argv[i][0] == '-' && argv[i][1] && !(argv[i][1] >= '0' && argv[i][1] <= '9'); i++) {
        if (!strcmp(argv[i], "-r")) {
            ring = true;
        } else if (!strcmp(argv[i], "-b")) {
            bitmap = true;
        } else {
            ferry_error_setg(errp, "calc_dirty_rate: unsupported option '%s'", argv[i]);
            return false;
        }
    }
    if (ring && bitmap) {
        ferry_error_setg(errp, "Either dirty ring or dirty bitmap can be specified!");
        return false;
    }
    if (i == argc || argc - i > 2) {
        ferry_error_setg(errp, "calc_dirty_rate: expected SECONDS [SAMPLE_PAGES]");
        return false;
    }
    json_int_t sec, pages = 0;
    if (!parse_hmp_int("calc_dirty_rate", argv[i], "calculation time", &sec, errp) ||
        (argc - i == 2 && !parse_hmp_int("calc_dirty_rate", argv[i + 1], "sample pages", &pages, errp))) {
        return false;
    }
    json_t *args = json_pack("{s:I, s:s}", "calc-time", sec, "mode",
                             ring ? "dirty-ring" : bitmap ? "dirty-bitmap" : "page-sampling");
    if (argc - i == 2) {
        json_object_set_new(args, "sample-pages", json_integer(pages));
    }
    if (!run_simple(mon, "calc-dirty-rate", args, errp)) {
        return false;
    }
    out_printf(o, "Starting dirty rate measurement with calc time %" PRId64 " seconds\n", (int64_t)sec);
    out_printf(o, "[Please use 'info dirty_rate' to check results]\n");
    return true;
}

/* set_vcpu_dirty_limit DIRTY_RATE [CPU_INDEX] and cancel_vcpu_dirty_limit [CPU_INDEX], QEMU's syntax. */
static bool hmp_set_vcpu_dirty_limit(FerryMonitor *mon, char **argv, size_t argc, Out *o, bool *wait,
                                     FerryError **errp)
{
    json_int_t rate, index;
    if (!parse_hmp_int("set_vcpu_dirty_limit", argv[0], "dirty rate", &rate, errp) ||
        (argc == 2 && !parse_hmp_int("set_vcpu_dirty_limit", argv[1], "cpu index", &index, errp))) {
        return false;
    }
    if (rate < 0) {
        ferry_error_setg(errp, "invalid dirty page limit %lld", (long long)rate);
        return false;
    }
    json_t *args = json_pack("{s:I}", "dirty-rate", rate);
    if (argc == 2) {
        json_object_set_new(args, "cpu-index", json_integer(index));
    }
    return run_simple(mon, "set-vcpu-dirty-limit", args, errp);
}

static bool hmp_cancel_vcpu_dirty_limit(FerryMonitor *mon, char **argv, size_t argc, Out *o, bool *wait,
                                        FerryError **errp)
{
    json_int_t index;
    if (argc == 1 && !parse_hmp_int("cancel_vcpu_dirty_limit", argv[0], "cpu index", &index, errp)) {
        return false;
    }
    if (!run_simple(mon, "cancel-vcpu-dirty-limit", argc == 1 ? json_pack("{s:I}", "cpu-index", index) : NULL,
                    errp)) {
        return false;
    }
    out_printf(o, "[Please use 'info vcpu_dirty_limit' to query dirty limit for virtual CPU]\n");
    return true;
}

static char *format_vcpu_dirty_limit(json_t *r)
{
    Out o = { 0 };
    if (json_array_size(r) == 0) {
        out_printf(&o, "Dirty page limit not enabled!\n");
    }
    size_t i;
    json_t *el;
    json_array_foreach(r, i, el) {
        out_printf(&o, "vcpu[%" PRIu64 "], limit rate %" PRIu64 " (MB/s), current rate %" PRIu64 " (MB/s)\n",
                   get_u64(el, "cpu-index"), get_u64(el, "limit-rate"), get_u64(el, "current-rate"));
    }
    return out_finish(&o);
}

static char *format_dirty_rate(json_t *r)
{
    Out o = { 0 };
    const char *mode = json_string_value(json_object_get(r, "mode"));
    out_printf(&o, "Status: %s\n", json_string_value(json_object_get(r, "status")));
    out_printf(&o, "Start Time: %" PRIu64 " (s)\n", get_u64(r, "start-time"));
    if (mode && !strcmp(mode, "page-sampling")) {
        out_printf(&o, "Sample Pages: %" PRIu64 " (per GB)\n", get_u64(r, "sample-pages"));
    }
    out_printf(&o, "Period: %" PRIu64 " (sec)\n", get_u64(r, "calc-time"));
    out_printf(&o, "Mode: %s\n", mode ? mode : "");
    if (json_object_get(r, "dirty-rate")) {
        out_printf(&o, "Dirty rate: %" PRIu64 " (MB/s)\n", get_u64(r, "dirty-rate"));
    } else {
        out_printf(&o, "Dirty rate: (not ready)\n");
    }
    json_t *err = json_object_get(r, "error-desc");
    if (err) {
        out_printf(&o, "Error: %s\n", json_string_value(err));
    }
    return out_finish(&o);
}

static const struct {
    const char *name;
    const char *qmp;
    char *(*format)(json_t *reply);
    const char *help;
} info_items[] = {
    { "migrate", "query-migrate", ferry__hmp_format_migrate, "show migration status" },
    { "migrate_parameters", "query-migrate-parameters", ferry__hmp_format_params,
      "show current migration parameters" },
    { "migrate_capabilities", "query-migrate-capabilities", ferry__hmp_format_caps,
      "show current migration capabilities" },
    { "status", "query-status", ferry__hmp_format_status, "show the current VM status (running|paused)" },
    { "dirty_rate", "query-dirty-rate", format_dirty_rate, "show dirty rate information" },
    { "vcpu_dirty_limit", "query-vcpu-dirty-limit", format_vcpu_dirty_limit,
      "show dirty page limit information of all vCPUs (ferry-workload: of all workers)" },
};

static bool hmp_info(FerryMonitor *mon, char **argv, size_t argc, Out *o, bool *wait, FerryError **errp)
{
    if (argc == 0) {
        for (size_t i = 0; i < FERRY_ARRAY_SIZE(info_items); i++) {
            out_printf(o, "info %s  -- %s\n", info_items[i].name, info_items[i].help);
        }
        return true;
    }
    for (size_t i = 0; i < FERRY_ARRAY_SIZE(info_items); i++) {
        if (!strcmp(argv[0], info_items[i].name)) {
            json_t *r = run_qmp(mon, info_items[i].qmp, NULL, errp);
            if (!r) {
                return false;
            }
            char *text = info_items[i].format(r);
            json_decref(r);
            out_printf(o, "%s", text);
            free(text);
            return true;
        }
    }
    ferry_error_setg(errp, "unknown info item: '%s'", argv[0]);
    return false;
}

static bool hmp_help(FerryMonitor *mon, char **argv, size_t argc, Out *o, bool *wait, FerryError **errp);

static const HmpCommand hmp_commands[] = {
    { "migrate", 1, 3, "[-d] [-r] uri",
      "migrate to URI (using -d to not wait for completion, -r to resume a migration paused in postcopy)",
      hmp_migrate },
    { "migrate_incoming", 1, 1, "uri", "start an incoming migration on URI (with -incoming defer)",
      hmp_migrate_incoming },
    { "migrate_cancel", 0, 0, "", "cancel the current migration", hmp_migrate_cancel },
    { "migrate_start_postcopy", 0, 0, "",
      "switch the running migration to postcopy (postcopy-ram must be on at both ends before migrate)",
      hmp_migrate_start_postcopy },
    { "migrate_pause", 0, 0, "", "pause a migration in postcopy (break its connection; both ends keep their state)",
      hmp_migrate_pause },
    { "migrate_recover", 1, 1, "uri", "destination: listen on URI for the source to resume a paused postcopy",
      hmp_migrate_recover },
    { "migrate_set_parameter", 2, 2, "parameter value", "set a migration parameter", hmp_set_parameter },
    { "migrate_set_capability", 2, 2, "capability on|off", "enable or disable a migration capability",
      hmp_set_capability },
    { "object_add", 1, 1, "type,id=str[,prop=value][,...]", "create QOM object", hmp_object_add },
    { "object_del", 1, 1, "id", "destroy QOM object", hmp_object_del },
    { "calc_dirty_rate", 1, 4, "[-r] [-b] second [sample_pages_per_GB]",
      "measure the dirty rate for SECOND seconds (-r: with the dirty ring, -b: with the dirty bitmap, "
      "neither: by sampling pages)", hmp_calc_dirty_rate },
    { "set_vcpu_dirty_limit", 1, 2, "dirty_rate [cpu_index]",
      "set dirty page rate limit, use cpu_index to set limit on a specified virtual cpu", hmp_set_vcpu_dirty_limit },
    { "cancel_vcpu_dirty_limit", 0, 1, "[cpu_index]",
      "cancel dirty page rate limit, use cpu_index to cancel limit on a specified virtual cpu",
      hmp_cancel_vcpu_dirty_limit },
    { "info", 0, 1, "[subcommand]", "show various information (info alone lists the items)", hmp_info },
    { "stop", 0, 0, "", "stop emulation", hmp_stop },
    { "cont", 0, 0, "", "resume emulation", hmp_cont },
    { "quit", 0, 0, "", "quit the program", hmp_quit },
    { "help", 0, 1, "[cmd]", "show the help", hmp_help },
};

static const HmpCommand *find_hmp(const char *name)
{
    for (size_t i = 0; i < FERRY_ARRAY_SIZE(hmp_commands); i++) {
        if (!strcmp(hmp_commands[i].name, name)) {
            return &hmp_commands[i];
        }
    }
    return NULL;
}

static bool hmp_help(FerryMonitor *mon, char **argv, size_t argc, Out *o, bool *wait, FerryError **errp)
{
    for (size_t i = 0; i < FERRY_ARRAY_SIZE(hmp_commands); i++) {
        const HmpCommand *c = &hmp_commands[i];
        if (argc == 0 || !strcmp(argv[0], c->name)) {
            out_printf(o, "%s%s%s -- %s\n", c->name, *c->params ? " " : "", c->params, c->help);
        }
    }
    if (argc && !find_hmp(argv[0])) {
        ferry_error_setg(errp, "unknown command: '%s'", argv[0]);
        return false;
    }
    return true;
}

char *ferry__hmp_handle_line(FerryMonitor *mon, const char *line, bool *wait_migration)
{
    Out o = { 0 };
    FerryError *err = NULL;
    char **words = NULL;
    size_t n = 0;

    *wait_migration = false;
    if (!tokenize(line, &words, &n, &err)) {
        goto out;
    }
    if (n == 0) {
        goto out;
    }
    /* Every word may end up in a JSON string, which must be UTF-8 (jansson refuses anything else, and the
     * command would then see a missing or malformed argument instead of the real problem). */
    for (size_t i = 0; i < n; i++) {
        json_t *probe = json_string(words[i]);
        if (!probe) {
            ferry_error_setg(&err, "word %zu of the command line is not valid UTF-8", i + 1);
            goto out;
        }
        json_decref(probe);
    }
    const HmpCommand *cmd = find_hmp(words[0]);
    if (!cmd) {
        ferry_error_setg(&err, "unknown command: '%s'", words[0]);
        goto out;
    }
    size_t argc = n - 1;
    if (argc < cmd->min_args || argc > cmd->max_args) {
        ferry_error_setg(&err, "%s: expected %s%s%s", cmd->name, cmd->name, *cmd->params ? " " : "", cmd->params);
        goto out;
    }
    cmd->fn(mon, words + 1, argc, &o, wait_migration, &err);

out:
    if (err) {
        out_printf(&o, "Error: %s\n", ferry_error_msg(err));
        ferry_error_free(err);
        *wait_migration = false;
    }
    for (size_t i = 0; i < n; i++) {
        free(words[i]);
    }
    free(words);
    return out_finish(&o);
}

bool ferry__hmp_migration_done(FerryMonitor *mon, char **out)
{
    FerryError *err = NULL;
    json_t *info = run_qmp(mon, "query-migrate", NULL, &err);
    if (!info) {
        /* Without query-migrate there is nothing to wait for: say why and give the monitor back. */
        *out = ferry__xasprintf("Error: %s\n", ferry_error_msg(err));
        ferry_error_free(err);
        return true;
    }
    const char *st = json_string_value(json_object_get(info, "status"));
    /* "none" too: migrate sets "setup" before it returns, so "none" means nothing is running to wait for. */
    bool done = !st || !strcmp(st, "none") || !strcmp(st, "completed") || !strcmp(st, "failed") ||
                !strcmp(st, "cancelled");
    /* A migration paused in postcopy waits for a human (migrate -r, migrate_recover on the destination): the
     * monitor is given back, saying so, instead of waiting for an end that needs this very monitor. */
    if (st && !strcmp(st, "postcopy-paused")) {
        const char *desc = json_string_value(json_object_get(info, "error-desc"));
        char *safe = desc ? ferry__log_escape(desc) : NULL;
        *out = ferry__xasprintf("Migration status: postcopy-paused%s%s%s (resume with migrate -r URI)\n",
                                safe ? " (" : "", safe ? safe : "", safe ? ")" : "");
        free(safe);
        json_decref(info);
        return true;
    }
    if (done) {
        /* As QEMU's hmp_migrate_status_cb(): nothing on success, the error when there is one. */
        const char *desc = json_string_value(json_object_get(info, "error-desc"));
        char *safe = desc ? ferry__log_escape(desc) : NULL;
        *out = safe ? ferry__xasprintf("%s\n", safe) : ferry__xstrdup("");
        free(safe);
    }
    json_decref(info);
    return done;
}
