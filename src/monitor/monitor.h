/*
 * The QMP monitor, internal API: UNIX-socket listeners speaking QEMU's QMP wire protocol (greeting,
 * qmp_capabilities negotiation, execute/arguments/id, return/error, events with timestamps), a command table
 * with argument specifications checked before any command runs, and a thread-safe event queue. The monitor runs
 * a poll loop on the thread that calls ferry__monitor_run(). It holds no migration logic: commands are functions
 * registered by the host runtime. The same loop serves HMP, the human monitor (hmp.c): line-based text clients on
 * stdio or on UNIX sockets whose commands are translated into the very QMP commands of the table.
 */
#ifndef FERRY_MONITOR_INT_H
#define FERRY_MONITOR_INT_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

#include "ferry/error.h"
#include "ferry/host.h"

typedef struct FerryMonitor FerryMonitor;

/*
 * What one client may cost the monitor (docs/design.md, "Resource bounds"). A request (one JSON value) of more
 * than FERRY_MONITOR_MAX_INPUT bytes, or a line an error made the monitor skip that grows beyond it, gets an error
 * and the connection is closed; so does a value nested deeper than FERRY_MONITOR_MAX_DEPTH (QEMU's MAX_NESTING).
 * After FERRY_MONITOR_MAX_BAD_INPUT inputs in a row that are not JSON objects (parse errors, bare values), the
 * client is taken for something that does not speak QMP and is cut off. At most FERRY_MONITOR_MAX_CLIENTS clients
 * are served at once (over all sockets); one more is told so and closed.
 */
#define FERRY_MONITOR_MAX_INPUT (1024 * 1024)
#define FERRY_MONITOR_MAX_DEPTH 1024
#define FERRY_MONITOR_MAX_BAD_INPUT 10
#define FERRY_MONITOR_MAX_CLIENTS 128

FerryMonitor *ferry__monitor_new(void);
void ferry__monitor_free(FerryMonitor *mon); /* closes every client and listener; NULL is a no-op */

/* "unix:PATH,server=on,wait=off" (QEMU's -qmp spelling; only server=on and wait=off are supported). Binds now. */
bool ferry__monitor_add_qmp(FerryMonitor *mon, const char *spec, FerryError **errp);
/* Check a -qmp spec without binding anything; on success *path is the socket path (caller frees). Lets a program
 * reject a bad -qmp at option time, long before it opens its sockets. */
bool ferry__monitor_parse_qmp_spec(const char *spec, char **path, FerryError **errp);

/* HMP: "stdio" or "unix:PATH,server=on,wait=off" (the -qmp spelling, checked by the same parser). On success
 * *path is the socket path, or NULL for stdio (caller frees). Binds nothing. */
bool ferry__monitor_parse_hmp_spec(const char *spec, char **path, FerryError **errp);
/* Add a human monitor: on stdio (fds 0 and 1, at most once) or on a UNIX socket. Binds now. */
bool ferry__monitor_add_hmp(FerryMonitor *mon, const char *spec, FerryError **errp);

/*
 * For a command function running on behalf of a client: take the most recent fd that client sent as SCM_RIGHTS
 * ancillary data with or before the request being handled, and that has not been consumed yet (QEMU's
 * qemu_chr_fe_get_msgfd; qmp-server.c says how fds are matched to requests). The caller owns it. -1 if there is
 * none (no client, i.e. a direct dispatch, or no fd sent). Monitor thread only.
 */
int ferry__monitor_take_fd(FerryMonitor *mon);

/* Register a command. Fails on a duplicate name. qmp_capabilities, query-commands, query-version, getfd and
 * closefd are built in. */
bool ferry__monitor_register(FerryMonitor *mon, const char *name, const FerryArgSpec *args, FerryCommandFn fn,
                             void *opaque, FerryError **errp);

/*
 * Handle one complete request object (already parsed) as a negotiated client would, and return the reply object
 * (new reference). Used by the unit tests and by the socket code alike.
 */
json_t *ferry__monitor_dispatch(FerryMonitor *mon, json_t *request);

/*
 * HMP, without sockets (hmp.c), so that unit tests drive it directly. Run one command line and return what the
 * human sees (new string, without the prompt). *wait_migration is set when the line was a "migrate" without -d
 * that started: the monitor then prints nothing more until ferry__hmp_migration_done() says the migration ended.
 */
char *ferry__hmp_handle_line(FerryMonitor *mon, const char *line, bool *wait_migration);
/* Whether the outgoing migration has ended; if so *out is what to print (its error, or ""), caller frees. */
bool ferry__hmp_migration_done(FerryMonitor *mon, char **out);
/* Human forms of query-migrate, query-migrate-parameters, query-migrate-capabilities and query-status replies
 * (QEMU's "info" layout). New strings. */
char *ferry__hmp_format_migrate(json_t *info);
char *ferry__hmp_format_params(json_t *params);
char *ferry__hmp_format_caps(json_t *caps);
char *ferry__hmp_format_status(json_t *status);

/*
 * A QMP client with no socket behind it, for fuzzing and unit tests: the same framing, limits, negotiation and
 * dispatch as a client of a socket, without a poll loop. It is not one of the monitor's clients (events do not
 * reach it; ferry__monitor_take_fd finds no fd for it). Free it before the monitor.
 */
typedef struct FerryMonitorClient FerryMonitorClient;
/* The greeting is queued at once, as for a client that has just connected. */
FerryMonitorClient *ferry__monitor_client_new_detached(FerryMonitor *mon);
/* Act on @len bytes as if they had been read from the client's socket (in reads of the size the socket path
 * uses). Returns false once the monitor has cut the client off (further input is ignored). */
bool ferry__monitor_client_feed(FerryMonitor *mon, FerryMonitorClient *c, const void *data, size_t len);
/* Take what the monitor would have written to the client so far (*len bytes, NUL-terminated; caller frees). */
char *ferry__monitor_client_take_output(FerryMonitorClient *c, size_t *len);
void ferry__monitor_client_free(FerryMonitorClient *c); /* NULL is a no-op */

/* The greeting line's object, {"QMP": {"version": ..., "capabilities": []}}. New reference. */
json_t *ferry__monitor_greeting(void);

/* Queue an event for every negotiated client (takes @data, may be NULL). Any thread. */
void ferry__monitor_emit_event(FerryMonitor *mon, const char *name, json_t *data);

/*
 * Watch an extra fd (owned by the caller, which must keep it open until the monitor is freed) in the poll loop:
 * @fn runs on the monitor thread whenever @fd is readable. The host runtime uses it for its signal self-pipe.
 * Register before ferry__monitor_run().
 */
typedef void (*FerryMonitorFdFn)(int fd, void *opaque);
void ferry__monitor_watch_fd(FerryMonitor *mon, int fd, FerryMonitorFdFn fn, void *opaque);

/* Serve until ferry__monitor_request_quit(); returns the status given there. */
int ferry__monitor_run(FerryMonitor *mon);
void ferry__monitor_request_quit(FerryMonitor *mon, int status); /* any thread */

#endif
