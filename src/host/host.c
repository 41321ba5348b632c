/*
 * The host runtime (include/ferry/host.h): the glue every migrated program shares. It owns the engine, the QMP
 * monitor and the common options (-qmp, -monitor, -incoming, -S, -name, spelled as QEMU spells them), wires the engine's
 * hooks (events, quit, host ops) to the monitor and the program, orders start-up so that an incoming migration
 * listens before QMP is reachable, and turns SIGINT/SIGTERM into an orderly quit. It holds no migration logic and
 * no command logic (qmp-cmds.c translates QMP into engine calls).
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ferry/ferry.h"
#include "crypto/crypto.h"
#include "host/host-int.h"
#include "migration/migration.h"
#include "util/util.h"

/*
 * The write end of the running host's signal self-pipe. A signal handler can only reach global state, and a
 * process runs one host, so one slot is enough; a second started host takes the signals over.
 */
static volatile int host_signal_fd = -1;

static void on_signal_handler(int signo)
{
    int saved = errno;
    int fd = host_signal_fd;
    if (fd >= 0) {
        unsigned char b = (unsigned char)signo;
        /* write() is async-signal-safe; a full pipe already holds a wake-up, so a lost byte does not matter. */
        ssize_t r = write(fd, &b, 1);
        (void)r;
    }
    errno = saved;
}

/* Runs on the monitor thread when the self-pipe is readable: QEMU's reaction to SIGTERM, an orderly exit 0. */
static void on_signal_pipe(int fd, void *opaque)
{
    FerryHost *h = opaque;
    unsigned char b = 0;
    bool got = false;
    while (read(fd, &b, 1) == 1) {
        got = true;
    }
    if (!got) {
        return;
    }
    ferry__log(FERRY_LOG_WARN, "%s: terminating on signal %d", h->progname, b);
    ferry__monitor_emit_event(h->mon, "SHUTDOWN", json_pack("{s:b, s:s}", "guest", 0, "reason", "host-signal"));
    ferry__monitor_request_quit(h->mon, 0);
}

static void event_hook(const char *name, json_t *data, void *opaque)
{
    ferry__monitor_emit_event(opaque, name, data);
}

static void quit_hook(int status, void *opaque)
{
    ferry__monitor_request_quit(opaque, status);
}

FerryHost *ferry_host_new(const char *progname, FerryError **errp)
{
    FerryHost *h = ferry__xcalloc(1, sizeof(*h));
    h->progname = ferry__xstrdup(progname ? progname : "ferry");
    h->sig_pipe[0] = h->sig_pipe[1] = -1;
    h->m = ferry__migration_new();
    h->mon = ferry__monitor_new();
    ferry__migration_set_event_fn(h->m, event_hook, h->mon);
    ferry__migration_set_quit_fn(h->m, quit_hook, h->mon);
    if (!ferry__host_register_qmp_commands(h, errp)) {
        ferry_host_free(h);
        return NULL;
    }
    return h;
}

void ferry_host_free(FerryHost *h)
{
    if (!h) {
        return;
    }
    if (h->sig_pipe[1] >= 0) {
        if (host_signal_fd == h->sig_pipe[1]) {
            /* Nobody serves the pipe any more: let SIGINT/SIGTERM terminate the process again. */
            signal(SIGINT, SIG_DFL);
            signal(SIGTERM, SIG_DFL);
            host_signal_fd = -1;
        }
        close(h->sig_pipe[1]);
    }
    /* The engine goes first: its threads may still emit events into the monitor while they wind down. */
    ferry__migration_free(h->m);
    ferry__monitor_free(h->mon);
    if (h->sig_pipe[0] >= 0) {
        close(h->sig_pipe[0]);
    }
    for (size_t i = 0; i < h->nqmp; i++) {
        free(h->qmp_specs[i]);
    }
    free(h->qmp_specs);
    for (size_t i = 0; i < h->nhmp; i++) {
        free(h->hmp_specs[i]);
    }
    free(h->hmp_specs);
    for (size_t i = 0; i < FERRY_CHANNEL_TYPE__MAX; i++) {
        ferry__address_free(h->incoming_addrs[i]);
    }
    json_decref(h->incoming_config);
    free(h->name);
    free(h->progname);
    free(h);
}

FerryMigration *ferry_host_migration(FerryHost *h)
{
    return h->m;
}

void ferry_host_set_ops(FerryHost *h, const FerryHostOps *ops, void *opaque)
{
    ferry__migration_set_host_ops(h->m, ops, opaque);
}

/* -name NAME, or QEMU's key=value form "guest=NAME,process=P,debug-threads=on" (a leading bare value is the
 * guest name). Only the guest name means something to ferry; the other QEMU keys are accepted and ignored. */
static bool parse_name(FerryHost *h, const char *arg, FerryError **errp)
{
    char *copy = ferry__xstrdup(arg);
    char *save = NULL;
    char *name = NULL;
    bool first = true;
    for (char *item = strtok_r(copy, ",", &save); item; item = strtok_r(NULL, ",", &save), first = false) {
        char *eq = strchr(item, '=');
        if (!eq) {
            if (!first) {
                ferry_error_setg(errp, "-name '%s': '%s' is not key=value", arg, item);
                goto fail;
            }
            free(name);
            name = ferry__xstrdup(item);
            continue;
        }
        *eq = '\0';
        if (!strcmp(item, "guest")) {
            free(name);
            name = ferry__xstrdup(eq + 1);
        } else if (strcmp(item, "process") != 0 && strcmp(item, "debug-threads") != 0) {
            ferry_error_setg(errp, "-name '%s': unknown key '%s'", arg, item);
            goto fail;
        }
    }
    if (!name || !*name) {
        ferry_error_setg(errp, "-name '%s': no name given", arg);
        goto fail;
    }
    free(copy);
    free(h->name);
    h->name = name;
    return true;

fail:
    free(name);
    free(copy);
    return false;
}

/*
 * -incoming config:KEY=VALUE,... (QEMU keyval syntax): the migration parameters the program starts with. Checked
 * now by the very check migrate-set-parameters runs, so that a bad key or value stops the program before it does
 * anything; applied by ferry_host_start, before QMP is reachable, so query-migrate-parameters shows it at once.
 * Unlike a channel it does not make the program wait for a migration (as in QEMU).
 */
static bool parse_incoming_config(FerryHost *h, const char *arg, FerryError **errp)
{
    if (h->incoming_config) {
        ferry_error_setg(errp, "Only one -incoming config:... is allowed");
        return false;
    }
    json_t *kv = ferry__keyval_parse(arg + strlen("config:"), errp);
    if (!kv) {
        ferry_error_prepend(errp, "-incoming '%s': ", arg);
        return false;
    }
    json_t *typed = NULL;
    bool ok = ferry__migration_params_check_keyval(kv, &typed, errp);
    json_decref(kv);
    if (!ok) {
        ferry_error_prepend(errp, "-incoming '%s': ", arg);
        return false;
    }
    h->incoming_config = typed;
    return true;
}

/* -incoming defer | URI | JSON MigrationChannel | config:...; the last channel of each type wins. */
static bool parse_incoming(FerryHost *h, const char *arg, FerryError **errp)
{
    if (!strncmp(arg, "config:", strlen("config:"))) {
        return parse_incoming_config(h, arg, errp);
    }
    FerryChannelType type = FERRY_CHANNEL_MAIN;
    FerryMigrationAddress *addr = NULL;
    if (!strcmp(arg, "defer")) {
        /* "defer": no main channel yet, QMP migrate-incoming gives it. */
    } else if (arg[0] == '{') {
        json_error_t jerr;
        /* Duplicate keys are refused, as QEMU's parser refuses them (the last one would silently win). */
        json_t *obj = json_loads(arg, JSON_REJECT_DUPLICATES, &jerr);
        if (!obj) {
            ferry_error_setg(errp, "-incoming '%s': not valid JSON: %s", arg, jerr.text);
            return false;
        }
        FerryMigrationChannel *ch = NULL;
        bool ok = ferry__channel_from_json(obj, "-incoming", &ch, errp);
        json_decref(obj);
        if (!ok) {
            return false;
        }
        type = ch->type;
        addr = ch->addr;
        ch->addr = NULL;
        ferry__migration_channel_free(ch);
        if (type != FERRY_CHANNEL_MAIN) {
            /* A cpr channel only means something with migrate mode cpr-transfer, which ferry lacks: refuse it
             * now rather than accept a channel nothing will ever listen on. */
            ferry_error_setg(errp, "-incoming '%s': channel-type '%s' is not supported by ferry yet (only 'main')",
                             arg, ferry__channel_type_name(type));
            ferry__address_free(addr);
            return false;
        }
    } else if (!ferry__address_parse_uri(arg, &addr, errp)) {
        /* The URI is parsed once, here, at the edge. */
        ferry_error_prepend(errp, "-incoming '%s': ", arg);
        return false;
    }
    ferry__address_free(h->incoming_addrs[type]);
    h->incoming_addrs[type] = addr;
    h->incoming = true;
    return true;
}

/*
 * -object TYPE,id=ID,...: an object of the types include/ferry/object.h lists, created now (as QEMU creates its
 * -object objects before anything uses them), so that a bad directory stops the program at once and every later
 * step (-incoming config:tls-creds=..., the first migrate-incoming) finds it, whatever the order of the options.
 * Other types are left to the program: 0.
 */
static int parse_object(const char *arg, bool *used_arg, FerryError **errp)
{
    bool known;
    json_t *args = NULL;
    if (!ferry__object_spec_parse(arg, &known, &args, errp)) {
        ferry_error_prepend(errp, "-object '%s': ", arg);
        return -1;
    }
    if (!known) {
        return 0;
    }
    *used_arg = true;
    bool ok = ferry__object_add_args(args, errp);
    if (!ok) {
        ferry_error_prepend(errp, "-object '%s': ", arg);
    }
    json_decref(args);
    return ok ? 1 : -1;
}

int ferry_host_parse_option(FerryHost *h, const char *opt, const char *arg, bool *used_arg, FerryError **errp)
{
    *used_arg = false;
    /* QEMU accepts every option with one dash or two. */
    if (opt[0] == '-' && opt[1] == '-') {
        opt++;
    }
    if (!strcmp(opt, "-S")) {
        h->start_stopped = true;
        return 1;
    }
    if (!strcmp(opt, "-object")) {
        if (!arg) {
            ferry_error_setg(errp, "option %s requires an argument", opt);
            return -1;
        }
        return parse_object(arg, used_arg, errp);
    }
    bool is_qmp = !strcmp(opt, "-qmp"), is_incoming = !strcmp(opt, "-incoming"), is_name = !strcmp(opt, "-name");
    bool is_monitor = !strcmp(opt, "-monitor");
    if (!is_qmp && !is_incoming && !is_name && !is_monitor) {
        return 0;
    }
    if (!arg) {
        ferry_error_setg(errp, "option %s requires an argument", opt);
        return -1;
    }
    *used_arg = true;
    if (is_qmp) {
        /* Checked now so that a typo stops the program before it does anything; bound in ferry_host_start. */
        if (!ferry__monitor_parse_qmp_spec(arg, NULL, errp)) {
            return -1;
        }
        h->qmp_specs = ferry__xrealloc(h->qmp_specs, (h->nqmp + 1) * sizeof(*h->qmp_specs));
        h->qmp_specs[h->nqmp++] = ferry__xstrdup(arg);
        return 1;
    }
    if (is_monitor) {
        char *path = NULL;
        if (!ferry__monitor_parse_hmp_spec(arg, &path, errp)) {
            return -1;
        }
        bool stdio = path == NULL;
        free(path);
        if (stdio && h->hmp_stdio) {
            ferry_error_setg(errp, "-monitor stdio: only one monitor can use stdio");
            return -1;
        }
        h->hmp_stdio |= stdio;
        h->hmp_specs = ferry__xrealloc(h->hmp_specs, (h->nhmp + 1) * sizeof(*h->hmp_specs));
        h->hmp_specs[h->nhmp++] = ferry__xstrdup(arg);
        return 1;
    }
    if (is_incoming) {
        return parse_incoming(h, arg, errp) ? 1 : -1;
    }
    if (!parse_name(h, arg, errp)) {
        return -1;
    }
    return 1;
}

const char *ferry_host_common_usage(void)
{
    return "  -qmp unix:PATH,server=on,wait=off  serve QMP on a UNIX socket (repeatable; mode 0600)\n"
           "  -monitor stdio|unix:PATH,server=on,wait=off\n"
           "                                     serve the human monitor (HMP) on stdio or a UNIX socket\n"
           "  -incoming URI|JSON|defer           receive a migration on URI (tcp:, unix:, vsock:, fd:, exec:,\n"
           "                                     file:, rdma:) or a JSON MigrationChannel, or wait for QMP\n"
           "                                     migrate-incoming with 'defer'\n"
           "  -incoming config:KEY=VALUE,...     initial migration parameters (once)\n"
           "  -object TYPE,id=ID,KEY=VALUE,...   create an object: tls-creds-x509, tls-creds-psk, authz-list,\n"
           "                                     authz-simple (or a JSON object with qom-type and id)\n"
           "  -S                                 do not start the workload until QMP 'cont'\n"
           "  -name NAME|guest=NAME              name this program (shown in logs)\n";
}

const char *ferry_host_name(const FerryHost *h)
{
    return h->name ? h->name : h->progname;
}

bool ferry_host_incoming(const FerryHost *h)
{
    return h->incoming;
}

bool ferry_host_register_command(FerryHost *h, const char *name, const FerryArgSpec *args, FerryCommandFn fn,
                                 void *opaque, FerryError **errp)
{
    if (h->started) {
        ferry_error_setg(errp, "QMP command '%s' must be registered before the host starts", name);
        return false;
    }
    return ferry__monitor_register(h->mon, name, args, fn, opaque, errp);
}

void ferry_host_emit_event(FerryHost *h, const char *name, json_t *data)
{
    ferry__monitor_emit_event(h->mon, name, data);
}

static bool install_signal_handling(FerryHost *h, FerryError **errp)
{
    /* A client that vanishes mid-reply, or a migration peer that closes, must give EPIPE, not kill us. */
    signal(SIGPIPE, SIG_IGN);
    if (pipe2(h->sig_pipe, O_NONBLOCK | O_CLOEXEC) < 0) {
        ferry_error_setg_errno(errp, errno, "cannot create the signal pipe");
        h->sig_pipe[0] = h->sig_pipe[1] = -1;
        return false;
    }
    host_signal_fd = h->sig_pipe[1];
    struct sigaction sa = { .sa_handler = on_signal_handler, .sa_flags = SA_RESTART };
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    ferry__monitor_watch_fd(h->mon, h->sig_pipe[0], on_signal_pipe, h);
    return true;
}

bool ferry_host_start(FerryHost *h, FerryError **errp)
{
    if (h->started) {
        ferry_error_setg(errp, "the host has already been started");
        return false;
    }
    h->started = true;
    if (!install_signal_handling(h, errp)) {
        return false;
    }
    ferry__runstate_init(h->m, h->start_stopped, h->incoming);
    /* -incoming config: was checked when parsed; applying it first means every later step, and the first QMP
     * client, sees these parameters. */
    if (h->incoming_config && !ferry__migration_set_params(h->m, h->incoming_config, errp)) {
        ferry_error_prepend(errp, "-incoming config: ");
        return false;
    }
    /* Listen for the incoming migration before QMP is reachable: a client that can talk to QMP may then rely on
     * the migration socket being there. */
    FerryMigrationAddress *main_addr = h->incoming_addrs[FERRY_CHANNEL_MAIN];
    if (main_addr && !ferry__migrate_incoming(h->m, main_addr, true, errp)) {
        return false;
    }
    for (size_t i = 0; i < h->nqmp; i++) {
        if (!ferry__monitor_add_qmp(h->mon, h->qmp_specs[i], errp)) {
            return false;
        }
    }
    for (size_t i = 0; i < h->nhmp; i++) {
        if (!ferry__monitor_add_hmp(h->mon, h->hmp_specs[i], errp)) {
            return false;
        }
    }
    if (!h->start_stopped && !h->incoming) {
        ferry__vm_start_initial(h->m);
    }
    return true;
}

int ferry_host_run(FerryHost *h)
{
    int status = ferry__monitor_run(h->mon);
    /* Migrations first: a destination in postcopy has workload threads waiting for pages in the kernel, which
     * only the end of its incoming migration (letting userfaultfd go) releases, and stopping the workload waits
     * for its threads. An outgoing migration is cancelled and puts the workload back before it is stopped. */
    ferry__migration_join(h->m);
    ferry__vm_shutdown(h->m);
    return status;
}

void ferry_host_request_quit(FerryHost *h, int status)
{
    ferry__monitor_request_quit(h->mon, status);
}

bool ferry_host_is_running(FerryHost *h)
{
    return ferry__runstate_get(h->m) == FERRY_RUN_RUNNING;
}
