/*
 * QMP command dispatch: the command table, the checks QEMU's qmp_dispatch() makes on a request object (in the same
 * order and with the same texts), argument checking against each command's FerryArgSpec list, the negotiation
 * rule and the built-in commands (qmp_capabilities, query-version, query-commands, and getfd/closefd, which name
 * fds a client passed with SCM_RIGHTS). It works on parsed JSON objects only: no sockets, no threads, so the
 * unit tests drive it directly. The wire side is qmp-server.c.
 */
#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <unistd.h>

#include "channel/channel.h"
#include "monitor/monitor-priv.h"
#include "util/util.h"

/* QEMU's QAPI names for the JSON types, as they appear in "Invalid parameter type" messages. */
static const char *arg_type_name(FerryArgType t)
{
    switch (t) {
    case FERRY_ARG_STR: return "string";
    case FERRY_ARG_INT: return "integer";
    case FERRY_ARG_BOOL: return "boolean";
    case FERRY_ARG_NUMBER: return "number";
    case FERRY_ARG_OBJECT: return "object";
    case FERRY_ARG_ARRAY: return "array";
    case FERRY_ARG_ANY: return "any";
    }
    return "any";
}

static bool arg_type_matches(FerryArgType t, const json_t *v)
{
    switch (t) {
    case FERRY_ARG_STR: return json_is_string(v);
    case FERRY_ARG_INT: return json_is_integer(v);
    case FERRY_ARG_BOOL: return json_is_boolean(v);
    case FERRY_ARG_NUMBER: return json_is_number(v); /* QEMU's number accepts integers too */
    case FERRY_ARG_OBJECT: return json_is_object(v);
    case FERRY_ARG_ARRAY: return json_is_array(v);
    case FERRY_ARG_ANY: return true;
    }
    return false;
}

static MonCommand *find_command(FerryMonitor *mon, const char *name)
{
    for (size_t i = 0; i < mon->ncmds; i++) {
        if (strcmp(mon->cmds[i].name, name) == 0) {
            return &mon->cmds[i];
        }
    }
    return NULL;
}

bool ferry__monitor_register(FerryMonitor *mon, const char *name, const FerryArgSpec *args, FerryCommandFn fn,
                             void *opaque, FerryError **errp)
{
    if (!name || !*name) {
        ferry_error_setg(errp, "QMP command name must not be empty");
        return false;
    }
    if (!fn) {
        ferry_error_setg(errp, "QMP command '%s' has no function", name);
        return false;
    }
    if (find_command(mon, name)) {
        ferry_error_setg(errp, "QMP command '%s' is already registered", name);
        return false;
    }
    size_t n = 0;
    while (args && args[n].name) {
        n++;
    }
    MonCommand cmd = { .fn = fn, .opaque = opaque };
    cmd.args = ferry__xcalloc(n ? n : 1, sizeof(*cmd.args));
    for (size_t i = 0; i < n; i++) {
        if (strcmp(args[i].name, "*") == 0) {
            cmd.pass_other = true;
            continue;
        }
        for (size_t j = 0; j < cmd.nargs; j++) {
            if (strcmp(cmd.args[j].name, args[i].name) == 0) {
                ferry_error_setg(errp, "QMP command '%s' declares argument '%s' twice", name, args[i].name);
                for (size_t k = 0; k < cmd.nargs; k++) {
                    free((char *)cmd.args[k].name);
                }
                free(cmd.args);
                return false;
            }
        }
        cmd.args[cmd.nargs] = args[i];
        cmd.args[cmd.nargs].name = ferry__xstrdup(args[i].name);
        cmd.nargs++;
    }
    cmd.name = ferry__xstrdup(name);
    mon->cmds = ferry__xrealloc(mon->cmds, (mon->ncmds + 1) * sizeof(*mon->cmds));
    mon->cmds[mon->ncmds++] = cmd;
    return true;
}

void ferry__monitor_free_commands(FerryMonitor *mon)
{
    for (size_t i = 0; i < mon->ncmds; i++) {
        for (size_t j = 0; j < mon->cmds[i].nargs; j++) {
            free((char *)mon->cmds[i].args[j].name);
        }
        free(mon->cmds[i].args);
        free(mon->cmds[i].name);
    }
    free(mon->cmds);
    mon->cmds = NULL;
    mon->ncmds = 0;
}

/*
 * Check @args against the command's spec the way QEMU's generated marshallers do: members in declaration order
 * (missing, then wrong type), then any key the spec does not know, so the first error matches QEMU's.
 */
static bool check_args(const MonCommand *cmd, json_t *args, FerryError **errp)
{
    for (size_t i = 0; i < cmd->nargs; i++) {
        const FerryArgSpec *spec = &cmd->args[i];
        json_t *v = json_object_get(args, spec->name);
        if (!v) {
            if (!spec->optional) {
                ferry_error_setg(errp, "Parameter '%s' is missing", spec->name);
                return false;
            }
            continue;
        }
        if (!arg_type_matches(spec->type, v)) {
            ferry_error_setg(errp, "Invalid parameter type for '%s', expected: %s", spec->name,
                             arg_type_name(spec->type));
            return false;
        }
    }
    if (cmd->pass_other) {
        return true;
    }
    const char *key;
    json_t *v;
    json_object_foreach(args, key, v) {
        bool known = false;
        for (size_t i = 0; i < cmd->nargs && !known; i++) {
            known = strcmp(cmd->args[i].name, key) == 0;
        }
        if (!known) {
            ferry_error_setg(errp, "Parameter '%s' is unexpected", key);
            return false;
        }
    }
    return true;
}

static json_t *error_reply(FerryErrorClass cls, const char *desc)
{
    json_t *reply = json_pack("{s:{s:s, s:s}}", "error", "class", ferry_error_class_name(cls), "desc", desc);
    if (reply) {
        return reply;
    }
    /* jansson refuses a string that is not UTF-8, and a message may quote bytes that are not (a name from a
     * peer, a file's contents, a host command's own text). The client must still get its error: every byte that
     * is not part of a valid sequence becomes '?'. */
    char *clean = ferry__utf8_scrub(desc);
    reply = json_pack("{s:{s:s, s:s}}", "error", "class", ferry_error_class_name(cls), "desc", clean);
    free(clean);
    return reply;
}

/*
 * Validate the request object's shape (QEMU's order and texts) and find the command; returns the command name
 * or NULL with *errp set. *args_out is the (borrowed) arguments object, or NULL if absent.
 */
static const char *check_request(json_t *request, json_t **args_out, FerryError **errp)
{
    const char *name = NULL;
    const char *key;
    json_t *v;

    *args_out = NULL;
    if (!json_is_object(request)) {
        ferry_error_setg(errp, "QMP input must be a JSON object");
        return NULL;
    }
    json_object_foreach(request, key, v) {
        if (strcmp(key, "execute") == 0) {
            if (!json_is_string(v)) {
                ferry_error_setg(errp, "QMP input member 'execute' must be a string");
                return NULL;
            }
            name = json_string_value(v);
        } else if (strcmp(key, "arguments") == 0) {
            if (!json_is_object(v)) {
                ferry_error_setg(errp, "QMP input member 'arguments' must be an object");
                return NULL;
            }
            *args_out = v;
        } else if (strcmp(key, "id") != 0) {
            ferry_error_setg(errp, "QMP input member '%s' is unexpected", key);
            return NULL;
        }
    }
    if (!name) {
        ferry_error_setg(errp, "QMP input lacks member 'execute'");
        return NULL;
    }
    return name;
}

json_t *ferry__monitor_handle(FerryMonitor *mon, json_t *request, bool *negotiated)
{
    FerryError *err = NULL;
    json_t *args = NULL;
    json_t *ret = NULL;
    json_t *reply;

    const char *name = check_request(request, &args, &err);
    if (!name) {
        goto out;
    }
    MonCommand *cmd = find_command(mon, name);
    bool is_caps = strcmp(name, "qmp_capabilities") == 0;
    if (!*negotiated && !is_caps) {
        /* Before negotiation only qmp_capabilities exists; QEMU says so instead of "not found". */
        ferry_error_set(&err, FERRY_ERROR_COMMAND_NOT_FOUND,
                        "Expecting capabilities negotiation with 'qmp_capabilities'");
        goto out;
    }
    if (!cmd) {
        ferry_error_set(&err, FERRY_ERROR_COMMAND_NOT_FOUND, "The command %s has not been found", name);
        goto out;
    }

    json_t *empty = NULL;
    if (!args) {
        empty = json_object();
        args = empty;
    }
    if (check_args(cmd, args, &err)) {
        if (is_caps && *negotiated) {
            ferry_error_set(&err, FERRY_ERROR_COMMAND_NOT_FOUND,
                            "Capabilities negotiation is already complete, command ignored");
        } else {
            ret = cmd->fn(args, cmd->opaque, &err);
            if (!ret && !err) {
                ferry_error_setg(&err, "Command %s failed without saying why", name);
            }
            if (ret && is_caps) {
                *negotiated = true;
            }
        }
    }
    json_decref(empty);

out:
    if (err) {
        json_decref(ret);
        reply = error_reply(ferry_error_class(err), ferry_error_msg(err));
        ferry_error_free(err);
    } else {
        reply = json_object();
        json_object_set_new(reply, "return", ret);
    }
    /* QEMU echoes the id verbatim whenever the request was an object that had one, even on errors. */
    json_t *id = json_is_object(request) ? json_object_get(request, "id") : NULL;
    if (id) {
        json_object_set(reply, "id", id);
    }
    return reply;
}

json_t *ferry__monitor_dispatch(FerryMonitor *mon, json_t *request)
{
    bool negotiated = true;
    return ferry__monitor_handle(mon, request, &negotiated);
}

static json_t *version_object(void)
{
    char package[64];
    snprintf(package, sizeof(package), "ferry %d.%d.%d", FERRY_VERSION_MAJOR, FERRY_VERSION_MINOR,
             FERRY_VERSION_MICRO);
    return json_pack("{s:{s:i, s:i, s:i}, s:s}", "qemu", "micro", FERRY_VERSION_MICRO, "minor",
                     FERRY_VERSION_MINOR, "major", FERRY_VERSION_MAJOR, "package", package);
}

json_t *ferry__monitor_greeting(void)
{
    return json_pack("{s:{s:o, s:[]}}", "QMP", "version", version_object(), "capabilities");
}

/*
 * qmp_capabilities: ferry offers no optional capabilities (QEMU's only one is "oob"), so "enable" must be empty.
 * The negotiation state itself is flipped by ferry__monitor_handle, which knows the client.
 */
static json_t *cmd_qmp_capabilities(json_t *args, void *opaque, FerryError **errp)
{
    json_t *enable = json_object_get(args, "enable");
    size_t i;
    json_t *cap;

    json_array_foreach(enable, i, cap) {
        if (!json_is_string(cap)) {
            ferry_error_setg(errp, "Invalid parameter type for 'enable[%zu]', expected: string", i);
        } else {
            ferry_error_setg(errp, "Capability '%s' not available", json_string_value(cap));
        }
        return NULL;
    }
    return json_object();
}

static json_t *cmd_query_version(json_t *args, void *opaque, FerryError **errp)
{
    return version_object();
}

static json_t *cmd_query_commands(json_t *args, void *opaque, FerryError **errp)
{
    FerryMonitor *mon = opaque;
    json_t *list = json_array();
    for (size_t i = 0; i < mon->ncmds; i++) {
        json_array_append_new(list, json_pack("{s:s}", "name", mon->cmds[i].name));
    }
    return list;
}

/*
 * getfd: name the fd that came with this request (QEMU's order: the fd is taken first, so a request with a bad
 * name still consumes and closes it). The store in src/channel owns it from then on; "fd:NAME" addresses use it.
 */
static json_t *cmd_getfd(json_t *args, void *opaque, FerryError **errp)
{
    FerryMonitor *mon = opaque;
    const char *name = json_string_value(json_object_get(args, "fdname"));
    int fd = ferry__monitor_take_fd(mon);
    if (fd < 0) {
        ferry_error_setg(errp, "No file descriptor supplied via SCM_RIGHTS");
        return NULL;
    }
    if (isdigit((unsigned char)name[0])) {
        /* Numbers mean fds the process inherited ("fd:3"); a name must not be mistaken for one. */
        close(fd);
        ferry_error_setg(errp, "Parameter 'fdname' expects a name not starting with a digit");
        return NULL;
    }
    if (!ferry__fdstore_add(name, fd, errp)) {
        close(fd);
        return NULL;
    }
    return json_object();
}

static json_t *cmd_closefd(json_t *args, void *opaque, FerryError **errp)
{
    const char *name = json_string_value(json_object_get(args, "fdname"));
    return ferry__fdstore_close(name, errp) ? json_object() : NULL;
}

void ferry__monitor_register_builtins(FerryMonitor *mon)
{
    static const FerryArgSpec fdname_args[] = {
        { "fdname", FERRY_ARG_STR, false },
        { NULL, FERRY_ARG_ANY, false },
    };
    static const FerryArgSpec caps_args[] = {
        { "enable", FERRY_ARG_ARRAY, true },
        { NULL, FERRY_ARG_ANY, false },
    };
    /* These names are fresh in a new monitor, so registration cannot fail. */
    ferry__monitor_register(mon, "qmp_capabilities", caps_args, cmd_qmp_capabilities, mon, NULL);
    ferry__monitor_register(mon, "query-version", NULL, cmd_query_version, mon, NULL);
    ferry__monitor_register(mon, "query-commands", NULL, cmd_query_commands, mon, NULL);
    ferry__monitor_register(mon, "getfd", fdname_args, cmd_getfd, mon, NULL);
    ferry__monitor_register(mon, "closefd", fdname_args, cmd_closefd, mon, NULL);
}
