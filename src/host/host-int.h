/*
 * Private to src/host: the FerryHost structure and the registration of the QMP commands the host runtime provides
 * (qmp-cmds.c). The public contract is include/ferry/host.h; nothing outside src/host includes this file.
 */
#ifndef FERRY_HOST_INT_H
#define FERRY_HOST_INT_H

#include <stdbool.h>

#include <jansson.h>

#include "channel/address.h"
#include "ferry/host.h"
#include "monitor/monitor.h"

struct FerryHost {
    char *progname;
    char *name;                        /* -name, or NULL */
    FerryMigration *m;
    FerryMonitor *mon;
    char **qmp_specs;                  /* -qmp values, checked at option time, bound by ferry_host_start */
    size_t nqmp;
    char **hmp_specs;                  /* -monitor values (stdio or unix:...), checked at option time */
    size_t nhmp;
    bool hmp_stdio;                    /* -monitor stdio was given (at most once) */
    bool start_stopped;                /* -S */
    bool incoming;                     /* -incoming with a channel form or defer (config: alone is not) */
    /* -incoming channel per type, the last one of each type wins; the main one is listened on. NULL after
     * defer (for main) or when none was given. */
    FerryMigrationAddress *incoming_addrs[FERRY_CHANNEL_TYPE__MAX];
    json_t *incoming_config;           /* -incoming config:..., checked and typed; applied by ferry_host_start */
    bool started;
    int sig_pipe[2];                   /* SIGINT/SIGTERM self-pipe, watched by the monitor loop */
};

/* Register query-status, stop, cont, quit, migrate, migrate-incoming, migrate_cancel, query-migrate, the
 * parameter and capability commands, and object-add / object-del on h->mon. */
bool ferry__host_register_qmp_commands(FerryHost *h, FerryError **errp);

#endif
