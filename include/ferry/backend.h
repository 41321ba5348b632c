/*
 * Backends whose open file descriptor moves to the destination of a local migration (seed 004's
 * backend-transfer): a host program registers each such backend (a TAP device behind a virtio-net model, ...)
 * under a kind and an id, and the migration passes its fd over the UNIX socket channel (SCM_RIGHTS) when the
 * backend-transfer parameter lists the kind. The destination adopts that very fd: no close, no re-open, no
 * re-configuration. This header covers the fd only; a backend's state (MAC, counters, queue positions) is device
 * state and travels in a section (visitor.h) like any other.
 */
#ifndef FERRY_BACKEND_H
#define FERRY_BACKEND_H

#include "ferry/common.h"

typedef struct FerryBackendOps {
    /*
     * Source, with the workload stopped (during switchover): the fd to pass. It stays the host program's: ferry
     * sends the kernel a reference to it and closes nothing. Return -1 if the backend has no open fd; the
     * migration then fails naming the backend.
     */
    int (*get_fd)(void *opaque);
    /*
     * Destination, before any section is loaded: adopt @fd (an open fd of the same kind as the source's, with
     * close-on-exec set). On success the backend owns it; on failure (*errp set) ferry closes it and the
     * migration fails. If the incoming migration fails later, the backend keeps the fd (the destination never
     * ran, so it has not used it); a later incoming migration may call set_fd again: drop the previous fd then.
     */
    bool (*set_fd)(void *opaque, int fd, FerryError **errp);
    /*
     * Source, optional (NULL if the backend has nothing to let go of): the outgoing migration completed and a
     * live destination acknowledged it. Called once per completed migration, for every registered backend
     * whether or not its fd was passed, on the migration thread with the workload still stopped, before the run
     * state becomes postmigrate (so no start callback can run meanwhile). The destination runs the device from
     * now on: the backend lets go of it here (closes its fd), so that a destination that opens the device by
     * name (backend-transfer off, a TAP without multi_queue) can attach it, and so that a later "cont" of this
     * process cannot take the destination's frames. Not called after a save to a file or an exec: nothing runs
     * the device yet then, and the source may well go on with it.
     */
    void (*release)(void *opaque);
} FerryBackendOps;

/*
 * Register a backend. @kind is a value of the backend-transfer enum ("virtio-net-tap" is the only one);
 * @id names the backend, unique per kind (the netdev id), at most 200 bytes. Both ends must register the same
 * kind and id. Registration is refused once a migration has started in either direction.
 */
FERRY_API bool ferry_migration_register_backend(FerryMigration *m, const char *kind, const char *id,
                                                const FerryBackendOps *ops, void *opaque, FerryError **errp);

/*
 * Whether the backend-transfer parameter lists @kind now (set by migrate-set-parameters or -incoming config:).
 * A destination whose backend would be transferred must not open its own at start-up. set_fd is called before
 * any section is loaded, so by the time the device's own section loads (the end of the incoming load) and the
 * workload is started, the backend knows whether the fd came; it opens its own by name only if it did not.
 */
FERRY_API bool ferry_migration_backend_transfer(FerryMigration *m, const char *kind);

#endif
