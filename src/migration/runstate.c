/*
 * The run state of the host's workload, with QEMU's RunState names, and the only place that calls the host's
 * stop/start callbacks. STOP and RESUME events are emitted here, after the callbacks returned, so that a client
 * that sees STOP knows the workload no longer writes.
 *
 *   prelaunch --cont/start--> running <--stop/cont--> paused
 *   inmigrate --incoming done--> running (autostart and the source ran) | paused
 *   running --switchover--> finish-migrate --completed--> postmigrate (ferry__vm_postmigrate: the backends
 *                                 |                          are released first if a destination acknowledged)
 *                                 \--failed/cancelled--> back to what it was (running again if it ran)
 *   any --quit--> shutdown
 */
#include "migration/migration-priv.h"
#include "util/util.h"

static const char *const runstate_names[] = {
    [FERRY_RUN_PRELAUNCH] = "prelaunch",   [FERRY_RUN_RUNNING] = "running",
    [FERRY_RUN_PAUSED] = "paused",         [FERRY_RUN_INMIGRATE] = "inmigrate",
    [FERRY_RUN_FINISH_MIGRATE] = "finish-migrate", [FERRY_RUN_POSTMIGRATE] = "postmigrate",
    [FERRY_RUN_SHUTDOWN] = "shutdown",
};

const char *ferry__runstate_name(FerryRunState rs)
{
    return (unsigned)rs < FERRY_ARRAY_SIZE(runstate_names) ? runstate_names[rs] : "unknown";
}

void ferry__runstate_set(FerryMigration *m, FerryRunState rs)
{
    ferry__mutex_lock(&m->lock);
    m->runstate = rs;
    ferry__mutex_unlock(&m->lock);
}

FerryRunState ferry__runstate_get(FerryMigration *m)
{
    ferry__mutex_lock(&m->lock);
    FerryRunState rs = m->runstate;
    ferry__mutex_unlock(&m->lock);
    return rs;
}

void ferry__runstate_init(FerryMigration *m, bool start_stopped, bool incoming)
{
    ferry__mutex_lock(&m->lock);
    m->autostart = !start_stopped;
    m->runstate = incoming ? FERRY_RUN_INMIGRATE : FERRY_RUN_PRELAUNCH;
    ferry__mutex_unlock(&m->lock);
}

/* Both helpers are called with run_lock held. */
static void do_start(FerryMigration *m)
{
    if (m->host_ops.start) {
        m->host_ops.start(m->host_opaque);
    }
    ferry__runstate_set(m, FERRY_RUN_RUNNING);
    ferry__mig_emit(m, "RESUME", NULL);
}

static void do_stop(FerryMigration *m, FerryRunState new_state)
{
    if (m->host_ops.stop) {
        m->host_ops.stop(m->host_opaque);
    }
    ferry__runstate_set(m, new_state);
    ferry__mig_emit(m, "STOP", NULL);
}

void ferry__vm_start_initial(FerryMigration *m)
{
    pthread_mutex_lock(&m->run_lock);
    if (ferry__runstate_get(m) == FERRY_RUN_PRELAUNCH && m->autostart) {
        do_start(m);
    }
    pthread_mutex_unlock(&m->run_lock);
}

bool ferry__vm_stop(FerryMigration *m, FerryError **errp)
{
    pthread_mutex_lock(&m->run_lock);
    FerryRunState rs = ferry__runstate_get(m);
    if (rs == FERRY_RUN_RUNNING) {
        do_stop(m, FERRY_RUN_PAUSED);
    } else if (rs == FERRY_RUN_INMIGRATE) {
        /* As QEMU: stopping a destination before it runs means "do not start it after the migration". */
        ferry__mutex_lock(&m->lock);
        m->autostart = false;
        ferry__mutex_unlock(&m->lock);
    }
    pthread_mutex_unlock(&m->run_lock);
    return true;
}

bool ferry__vm_cont(FerryMigration *m, FerryError **errp)
{
    bool ok = true;
    pthread_mutex_lock(&m->run_lock);
    FerryRunState rs = ferry__runstate_get(m);
    switch (rs) {
    case FERRY_RUN_RUNNING:
        break;
    case FERRY_RUN_INMIGRATE:
        /* As QEMU: "cont" on a destination means "start it once the migration is done". */
        ferry__mutex_lock(&m->lock);
        m->autostart = true;
        ferry__mutex_unlock(&m->lock);
        break;
    case FERRY_RUN_SHUTDOWN:
        ferry_error_setg(errp, "the workload has shut down and cannot be resumed");
        ok = false;
        break;
    case FERRY_RUN_FINISH_MIGRATE:
        ferry_error_setg(errp, "cannot resume while a migration is switching over");
        ok = false;
        break;
    default:
        do_start(m);
        break;
    }
    pthread_mutex_unlock(&m->run_lock);
    return ok;
}

void ferry__vm_shutdown(FerryMigration *m)
{
    pthread_mutex_lock(&m->run_lock);
    FerryRunState rs = ferry__runstate_get(m);
    if (rs == FERRY_RUN_RUNNING) {
        if (m->host_ops.stop) {
            m->host_ops.stop(m->host_opaque);
        }
    }
    ferry__runstate_set(m, FERRY_RUN_SHUTDOWN);
    pthread_mutex_unlock(&m->run_lock);
}

FerryRunState ferry__vm_stop_for_migration(FerryMigration *m)
{
    pthread_mutex_lock(&m->run_lock);
    FerryRunState prev = ferry__runstate_get(m);
    if (prev == FERRY_RUN_RUNNING) {
        do_stop(m, FERRY_RUN_FINISH_MIGRATE);
    } else {
        ferry__runstate_set(m, FERRY_RUN_FINISH_MIGRATE);
    }
    pthread_mutex_unlock(&m->run_lock);
    return prev;
}

void ferry__vm_restore_after_migration(FerryMigration *m, FerryRunState prev)
{
    pthread_mutex_lock(&m->run_lock);
    if (ferry__runstate_get(m) == FERRY_RUN_FINISH_MIGRATE) {
        if (prev == FERRY_RUN_RUNNING) {
            do_start(m);
        } else {
            ferry__runstate_set(m, prev);
        }
    }
    pthread_mutex_unlock(&m->run_lock);
}

void ferry__vm_postmigrate(FerryMigration *m, bool acknowledged)
{
    /* run_lock keeps the release apart from any stop/start; in finish-migrate "cont" is refused anyway, and from
     * postmigrate on it would start a device that has let go of its backend (which it must then open again). */
    pthread_mutex_lock(&m->run_lock);
    if (acknowledged) {
        for (size_t i = 0; i < m->nbackends; i++) {
            if (m->backends[i].ops.release) {
                m->backends[i].ops.release(m->backends[i].opaque);
            }
        }
    }
    ferry__runstate_set(m, FERRY_RUN_POSTMIGRATE);
    pthread_mutex_unlock(&m->run_lock);
}

bool ferry__vm_throttle(FerryMigration *m, int percent)
{
    if (!m->host_ops.throttle) {
        return false;
    }
    m->host_ops.throttle(m->host_opaque, percent);
    ferry__mutex_lock(&m->lock);
    m->stats.cpu_throttle_percentage = percent;
    ferry__mutex_unlock(&m->lock);
    return true;
}

void ferry__vm_incoming_done(FerryMigration *m, bool source_running)
{
    pthread_mutex_lock(&m->run_lock);
    ferry__mutex_lock(&m->lock);
    bool start = m->autostart && source_running;
    ferry__mutex_unlock(&m->lock);
    if (start) {
        do_start(m);
    } else {
        ferry__runstate_set(m, FERRY_RUN_PAUSED);
    }
    pthread_mutex_unlock(&m->run_lock);
}
