/*
 * The fd transport: "fd:NAME" takes a file descriptor that was given to the process with QMP getfd (from the fd
 * store), "fd:N" an fd number the process inherited. On both sides the fd itself is the data stream (as in
 * QEMU's fd: migration): nothing is connected, listened on or accepted. A socket gives a two-way channel; a pipe
 * or a file a one-way one. The channel owns the fd from then on.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "channel/channel-int.h"
#include "util/util.h"

static bool all_digits(const char *s)
{
    if (!*s) {
        return false;
    }
    for (; *s; s++) {
        if (*s < '0' || *s > '9') {
            return false;
        }
    }
    return true;
}

/* Takes the fd @fa names: from the store, or the inherited number after checking that it is open. */
static int take_fd(const FerryFdAddress *fa, const char *uri, FerryError **errp)
{
    const char *str = fa->str ? fa->str : "";
    if (!all_digits(str)) {
        int fd = ferry__fdstore_take(str);
        if (fd < 0) {
            ferry_error_setg(errp, "File descriptor named '%s' has not been found", str);
        }
        return fd;
    }
    uint64_t n;
    if (!ferry__parse_uint64(str, "fd number", &n, NULL) || n > INT32_MAX) {
        ferry_error_setg(errp, "Invalid file descriptor number '%s' in '%s'", str, uri);
        return -1;
    }
    int fd = (int)n;
    if (fcntl(fd, F_GETFD) < 0) {
        ferry_error_setg_errno(errp, errno, "File descriptor %d of '%s' is not open", fd, uri);
        return -1;
    }
    /* Not for a child we start: the migration stream must not leak into an exec: command. */
    (void)fcntl(fd, F_SETFD, FD_CLOEXEC);
    return fd;
}

FerryChannel *ferry__fd_connect(const FerryFdAddress *fa, const char *uri, FerryError **errp)
{
    int fd = take_fd(fa, uri, errp);
    if (fd < 0) {
        return NULL;
    }
    return ferry__socket_channel_new(fd, "fd", uri);
}

bool ferry__fd_listen(FerryListener *l, const FerryFdAddress *fa, FerryError **errp)
{
    int fd = take_fd(fa, l->uri, errp);
    if (fd < 0) {
        return false;
    }
    l->pending = ferry__socket_channel_new(fd, "fd", l->uri);
    return true;
}
