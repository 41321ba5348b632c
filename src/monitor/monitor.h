/*
 * The QMP monitor, internal API: UNIX-socket listeners speaking QEMU's QMP wire protocol (greeting,
 * qmp_capabilities negotiation, execute/arguments/id, return/error, events with timestamps), a command table
 * with argument specifications checked before any command runs, and a thread-safe event queue. The monitor runs
 * a poll loop on the thread that calls ferry__monitor_run(). It holds no migration logic: commands are functions
 * registered by the host runtime.
 */
#ifndef FERRY_MONITOR_INT_H
#define FERRY_MONITOR_INT_H

#include <stdbool.h>

#include <jansson.h>

#include "ferry/error.h"
#include "ferry/host.h"

typedef struct FerryMonitor FerryMonitor;

/* Unparsed input a client may accumulate before it is sent an error and disconnected. */
#define FERRY_MONITOR_MAX_INPUT (1024 * 1024)

FerryMonitor *ferry__monitor_new(void);
void ferry__monitor_free(FerryMonitor *mon); /* closes every client and listener; NULL is a no-op */

/* "unix:PATH,server=on,wait=off" (QEMU's -qmp spelling; only server=on and wait=off are supported). Binds now. */
bool ferry__monitor_add_qmp(FerryMonitor *mon, const char *spec, FerryError **errp);
/* Check a -qmp spec without binding anything; on success *path is the socket path (caller frees). Lets a program
 * reject a bad -qmp at option time, long before it opens its sockets. */
bool ferry__monitor_parse_qmp_spec(const char *spec, char **path, FerryError **errp);

/* Register a command. Fails on a duplicate name. qmp_capabilities, query-commands and query-version are built
 * in. */
bool ferry__monitor_register(FerryMonitor *mon, const char *name, const FerryArgSpec *args, FerryCommandFn fn,
                             void *opaque, FerryError **errp);

/*
 * Handle one complete request object (already parsed) as a negotiated client would, and return the reply object
 * (new reference). Used by the unit tests and by the socket code alike.
 */
json_t *ferry__monitor_dispatch(FerryMonitor *mon, json_t *request);

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
