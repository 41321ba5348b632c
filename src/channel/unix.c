/*
 * The UNIX-domain socket transport: turns a FerryUnixAddress into a connected channel or a listening socket
 * bound to a path. A stale socket file at the path is replaced; any other kind of file is left alone and is an
 * error. The byte-moving ops are socket.c's; the accept loop and the removal of the socket file are channel.c's.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "channel/channel-int.h"
#include "util/util.h"

/* The parser already rejected paths that do not fit; addresses built elsewhere are checked again here. */
static bool fill_sockaddr(struct sockaddr_un *sun, const char *path, const char *uri, const char *what,
                          FerryError **errp)
{
    memset(sun, 0, sizeof(*sun));
    sun->sun_family = AF_UNIX;
    if (!path || !*path || strlen(path) >= sizeof(sun->sun_path)) {
        ferry_error_setg(errp, "Failed to %s '%s': socket path empty or longer than %zu bytes", what, uri,
                         sizeof(sun->sun_path) - 1);
        return false;
    }
    memcpy(sun->sun_path, path, strlen(path));
    return true;
}

FerryChannel *ferry__unix_connect(const FerryUnixAddress *un, const char *uri, int cancel_fd, FerryError **errp)
{
    struct sockaddr_un sun;
    if (!fill_sockaddr(&sun, un->path, uri, "connect to", errp)) {
        return NULL;
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        ferry_error_setg_errno(errp, errno, "Failed to connect to '%s': cannot create socket", uri);
        return NULL;
    }
    ferry__socket_tune(fd);
    int err = ferry__socket_connect(fd, (struct sockaddr *)&sun, sizeof(sun), cancel_fd);
    if (err == ECANCELED) {
        ferry_error_setg(errp, "Failed to connect to '%s': cancelled", uri);
        close(fd);
        return NULL;
    }
    if (err) {
        ferry_error_setg_errno(errp, err, "Failed to connect to '%s'", uri);
        close(fd);
        return NULL;
    }
    return ferry__socket_channel_new(fd, "unix", uri);
}

bool ferry__unix_listen(FerryListener *l, const FerryUnixAddress *un, FerryError **errp)
{
    struct sockaddr_un sun;
    if (!fill_sockaddr(&sun, un->path, l->uri, "bind to", errp)) {
        return false;
    }
    struct stat st;
    if (lstat(un->path, &st) == 0) {
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
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        ferry_error_setg_errno(errp, errno, "Failed to bind to '%s': cannot create socket", l->uri);
        return false;
    }
    ferry__socket_tune(fd);
    if (bind(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0) {
        ferry_error_setg_errno(errp, errno, "Failed to bind to '%s'", l->uri);
        close(fd);
        return false;
    }
    /* Remember which file we created, so that free() never removes a successor's socket. */
    if (lstat(un->path, &st) == 0) {
        l->unlink_path = ferry__xstrdup(un->path);
        l->unlink_dev = st.st_dev;
        l->unlink_ino = st.st_ino;
    }
    if (listen(fd, SOMAXCONN) < 0) {
        ferry_error_setg_errno(errp, errno, "Failed to listen on '%s'", l->uri);
        close(fd);
        return false;
    }
    l->fd = fd;
    return true;
}
