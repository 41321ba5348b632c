/*
 * The UNIX-domain socket transport: turns a FerryUnixAddress into a connected channel or a listening socket,
 * bound either to a path or, with "abstract", to a name in Linux's abstract namespace (no file: sun_path starts
 * with a NUL and the address length says where the name ends). A stale socket file at a path is replaced; any
 * other kind of file is left alone and is an error. A socket file that a live listener still serves is replaced
 * too (as QEMU does), with a warning; the listener that lost it finds out in its accept loop
 * (ferry__unix_listener_check) and fails instead of waiting for ever. The byte-moving ops are socket.c's; the
 * accept loop and the removal of the socket file are channel.c's.
 */
#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "channel/channel-int.h"
#include "util/util.h"

static bool is_abstract(const FerryUnixAddress *un)
{
    return un->has_abstract && un->abstract;
}

/* The parser already rejected paths that do not fit; addresses built elsewhere are checked again here. An
 * abstract name needs one byte more (the leading NUL) but no terminating NUL, so the limit is the same. */
static bool fill_sockaddr(struct sockaddr_un *sun, socklen_t *len, const FerryUnixAddress *un, const char *uri,
                          const char *what, FerryError **errp)
{
    memset(sun, 0, sizeof(*sun));
    sun->sun_family = AF_UNIX;
    const char *path = un->path;
    if (!path || !*path || strlen(path) >= sizeof(sun->sun_path)) {
        ferry_error_setg(errp, "Failed to %s '%s': socket path empty or longer than %zu bytes", what, uri,
                         sizeof(sun->sun_path) - 1);
        return false;
    }
    size_t n = strlen(path);
    if (is_abstract(un)) {
        /* QEMU's "tight" form, the one every other program uses: the name's own length, no padding. */
        memcpy(sun->sun_path + 1, path, n);
        *len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + n);
    } else {
        memcpy(sun->sun_path, path, n);
        *len = sizeof(*sun);
    }
    return true;
}

/* Whether a socket is bound at @sun, i.e. a listener is alive behind the file rather than a stale file left by a
 * crash. A datagram connect answers that without disturbing the listener: it fails with EPROTOTYPE when a
 * stream socket is bound there and ECONNREFUSED when none is, and unlike a stream connect it never queues a
 * connection that the listener would accept as a migration. */
static bool someone_listens(const struct sockaddr_un *sun, socklen_t len)
{
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        return false;
    }
    bool live = connect(fd, (const struct sockaddr *)sun, len) == 0 || errno == EPROTOTYPE;
    close(fd);
    return live;
}

FerryChannel *ferry__unix_connect(const FerryUnixAddress *un, const char *uri, int cancel_fd, FerryError **errp)
{
    struct sockaddr_un sun;
    socklen_t len;
    if (!fill_sockaddr(&sun, &len, un, uri, "connect to", errp)) {
        return NULL;
    }
    return ferry__socket_connect_channel(AF_UNIX, (struct sockaddr *)&sun, len, "unix", uri, cancel_fd, errp);
}

bool ferry__unix_listen(FerryListener *l, const FerryUnixAddress *un, FerryError **errp)
{
    struct sockaddr_un sun;
    socklen_t len;
    if (!fill_sockaddr(&sun, &len, un, l->uri, "bind to", errp)) {
        return false;
    }
    struct stat st;
    if (!is_abstract(un) && lstat(un->path, &st) == 0) {
        if (!S_ISSOCK(st.st_mode)) {
            ferry_error_setg(errp, "Failed to bind to '%s': '%s' exists and is not a socket", l->uri, un->path);
            return false;
        }
        /* A socket file left by an earlier listener (they are never removed on a crash), or one that a live
         * listener still serves: QEMU takes the path over too, but that listener waits for ever unless told
         * (it notices the loss in its accept loop, ferry__unix_listener_check). */
        if (someone_listens(&sun, len)) {
            ferry__log(FERRY_LOG_WARN, "%s: removing a socket another process is listening on", l->uri);
        }
        if (unlink(un->path) < 0 && errno != ENOENT) {
            ferry_error_setg_errno(errp, errno, "Failed to bind to '%s': cannot remove the old socket file",
                                   l->uri);
            return false;
        }
    }
    int fd = ferry__socket_bind_listen(AF_UNIX, (struct sockaddr *)&sun, len, l->uri, errp);
    if (fd < 0) {
        return false;
    }
    /* Remember which file we created, so that free() never removes a successor's socket. An abstract name
     * has no file and disappears with the socket. */
    if (!is_abstract(un) && lstat(un->path, &st) == 0) {
        l->unlink_path = ferry__xstrdup(un->path);
        l->unlink_dev = st.st_dev;
        l->unlink_ino = st.st_ino;
    }
    l->fd = fd;
    return true;
}

bool ferry__unix_listener_check(const FerryListener *l, FerryError **errp)
{
    struct stat st;
    if (lstat(l->unlink_path, &st) < 0) {
        if (errno == ENOENT) {
            ferry_error_setg(errp, "Failed to accept on '%s': the socket file %s was removed, so no source can "
                             "connect", l->uri, l->unlink_path);
        } else {
            ferry_error_setg_errno(errp, errno, "Failed to accept on '%s': cannot check the socket file", l->uri);
        }
        return false;
    }
    if (st.st_dev == l->unlink_dev && st.st_ino == l->unlink_ino) {
        return true;
    }
    if (S_ISSOCK(st.st_mode)) {
        ferry_error_setg(errp, "Failed to accept on '%s': %s was taken over by another process (another listener "
                         "replaced the socket file), so no source can connect here", l->uri, l->unlink_path);
    } else {
        ferry_error_setg(errp, "Failed to accept on '%s': the socket file %s was replaced by another file, so no "
                         "source can connect", l->uri, l->unlink_path);
    }
    return false;
}
