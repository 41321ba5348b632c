/*
 * Private to src/monitor: the FerryMonitor structure shared by the command dispatcher (dispatch.c) and the socket
 * server (qmp-server.c). Nothing outside src/monitor includes this; the rest of ferry uses monitor.h.
 */
#ifndef FERRY_MONITOR_PRIV_H
#define FERRY_MONITOR_PRIV_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include <jansson.h>

#include "monitor/monitor.h"

typedef struct MonCommand {
    char *name;
    FerryArgSpec *args;   /* deep copy, without the "*" entry and the {NULL} terminator */
    size_t nargs;
    bool pass_other;      /* the spec had {"*", FERRY_ARG_ANY, true}: unknown keys go to the command */
    FerryCommandFn fn;
    void *opaque;
} MonCommand;

typedef struct MonListener {
    int fd;
    bool hmp;             /* a human monitor socket: clients speak HMP lines, not QMP */
    char *path;
    dev_t dev;            /* identity of the socket file we bound, so that free unlinks only our own file */
    ino_t ino;
} MonListener;

typedef struct MonClient MonClient;
typedef struct MonEvent MonEvent;

typedef struct MonWatch {
    int fd;
    FerryMonitorFdFn fn;
    void *opaque;
} MonWatch;

struct FerryMonitor {
    /* Owned by the monitor thread (and by the registering thread before the loop runs). */
    MonCommand *cmds;
    size_t ncmds;
    MonListener *listeners;
    size_t nlisteners;
    MonClient *clients;
    MonWatch *watches;
    size_t nwatches;

    int wake_fd;              /* eventfd: written by any thread to wake the poll loop */
    bool hmp_stdio;           /* a human monitor runs on stdio (at most one may) */
    MonClient *cur_client;    /* the client whose QMP request is being handled (for ferry__monitor_take_fd) */

    /* Shared with other threads: protected by @lock. */
    pthread_mutex_t lock;
    MonEvent *ev_head;
    MonEvent **ev_tail;
    bool quit;
    int quit_status;
};

/*
 * Handle one parsed request for a client whose negotiation state is *negotiated (updated when qmp_capabilities
 * succeeds). Returns the reply (new reference). dispatch.c.
 */
json_t *ferry__monitor_handle(FerryMonitor *mon, json_t *request, bool *negotiated);
/* Register the built-in commands; called by ferry__monitor_new. dispatch.c. */
void ferry__monitor_register_builtins(FerryMonitor *mon);
/* The HMP banner line (with its newline) and prompt. hmp.c. */
#define FERRY_HMP_PROMPT "(ferry) "
char *ferry__hmp_banner(void);
/* Free the command table. dispatch.c. */
void ferry__monitor_free_commands(FerryMonitor *mon);

#endif
