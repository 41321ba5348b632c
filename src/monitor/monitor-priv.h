/*
 * Private to src/monitor: the FerryMonitor structure shared by the command dispatcher (dispatch.c) and the socket
 * server (qmp-server.c). Nothing outside src/monitor includes this; the rest of ferry uses monitor.h.
 */
#ifndef FERRY_MONITOR_PRIV_H
#define FERRY_MONITOR_PRIV_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
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

typedef struct FerryMonitorClient MonClient;
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

    size_t nclients;          /* on the clients list, at most FERRY_MONITOR_MAX_CLIENTS */
    bool refusing;            /* the last connection was refused (the next refusal is not logged again) */
    int spare_fd;             /* kept open to be given up when accept fails for want of fds (qmp-server.c) */
    int64_t accept_resume_ms; /* listeners are not polled before this time (accept kept failing) */

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

/*
 * Incremental framing of a QMP client's input (json-frame.c). The state of the value being framed lives with its
 * client between reads; all zero is the state before a value.
 */
typedef struct MonFramer {
    size_t scanned;        /* bytes of the current value looked at so far (never looked at again) */
    uint32_t depth;        /* brackets open */
    uint8_t kind;          /* what the value is, from its first byte (json-frame.c) */
    bool in_string;
    bool escape;           /* the previous byte was a backslash inside a string */
    char closer[FERRY_MONITOR_MAX_DEPTH]; /* the closing bracket each open one expects */
} MonFramer;

typedef enum MonFrameResult {
    MON_FRAME_MORE,     /* no complete value yet: keep the bytes, call again when more have arrived */
    MON_FRAME_VALUE,    /* the first *value_len bytes are one value for jansson, or the bytes up to the first
                         * that makes it invalid (jansson then reports what is wrong) */
    MON_FRAME_TOO_DEEP, /* more than FERRY_MONITOR_MAX_DEPTH brackets open at byte *value_len - 1 */
    MON_FRAME_TOO_LONG, /* FERRY_MONITOR_MAX_INPUT bytes and the value has not ended */
} MonFrameResult;

/* @buf starts with the value's first byte (whitespace before a value is the caller's to skip, with
 * ferry__monitor_frame_is_space) and holds every byte of it received so far; @len grows from call to call.
 * After any result but MORE the framer is reset for the next value. */
MonFrameResult ferry__monitor_frame(MonFramer *f, const char *buf, size_t len, size_t *value_len);
bool ferry__monitor_frame_is_space(unsigned char c);

#endif
