/*
 * The UNIX-domain socket transport: turns a FerryUnixAddress into a connected channel or a listening socket,
 * bound either to a path or, with "abstract", to a name in Linux's abstract namespace (no file: sun_path starts
 * with a NUL and the address length says where the name ends). A stale socket file at a path is replaced; any
 * other kind of file is left alone and is an error. The byte-moving ops are socket.c's; the accept loop and the
 * removal of the socket file are channel.c's.
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
        /* A socket file left by an earlier listener (they are never removed on a crash). */
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
