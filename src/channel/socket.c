/*
 * The one ops table of fd-backed channels (channel.h), shared by every socket transport (tcp.c, unix.c) and by
 * channels wrapped around an fd handed to us (ferry__channel_new_fd). It moves bytes and reports errors; it does
 * not resolve, connect or listen (that is the transports' job) and does not buffer (that is the stream's).
 */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#include "channel/channel-int.h"
#include "util/util.h"

#define SOCKET_BUFFER_HINT (4 * 1024 * 1024)

typedef struct SocketChannel {
    FerryChannel base; /* first, so that a FerryChannel * is a SocketChannel * */
    bool is_socket;    /* sendmsg(MSG_NOSIGNAL) and shutdown(2) only work on sockets */
    int shut;          /* set (atomically) by ferry__channel_shutdown from any thread */
} SocketChannel;

static bool channel_is_shut(FerryChannel *c)
{
    return __atomic_load_n(&((SocketChannel *)c)->shut, __ATOMIC_ACQUIRE) != 0;
}

static ssize_t fd_readv(FerryChannel *c, const struct iovec *iov, int iovcnt, FerryError **errp)
{
    for (;;) {
        ssize_t n = readv(c->fd, iov, iovcnt);
        if (n > 0) {
            return n;
        }
        /* After a local shutdown the kernel reports end of stream; say what really happened instead of
         * blaming the peer. */
        if (channel_is_shut(c)) {
            ferry_error_setg(errp, "Failed to read from '%s': channel was shut down", c->desc);
            return -1;
        }
        if (n == 0) {
            return 0;
        }
        if (errno != EINTR) {
            ferry_error_setg_errno(errp, errno, "Failed to read from '%s'", c->desc);
            return -1;
        }
    }
}

static ssize_t fd_writev(FerryChannel *c, const struct iovec *iov, int iovcnt, FerryError **errp)
{
    SocketChannel *sc = (SocketChannel *)c;
    for (;;) {
        if (channel_is_shut(c)) {
            ferry_error_setg(errp, "Failed to write to '%s': channel was shut down", c->desc);
            return -1;
        }
        ssize_t n;
        if (sc->is_socket) {
            /* MSG_NOSIGNAL: a dead peer must give EPIPE, never kill the process with SIGPIPE. */
            struct msghdr msg = { .msg_iov = (struct iovec *)iov, .msg_iovlen = (size_t)iovcnt };
            n = sendmsg(c->fd, &msg, MSG_NOSIGNAL);
        } else {
            n = writev(c->fd, iov, iovcnt);
        }
        if (n >= 0) {
            return n;
        }
        if (errno != EINTR) {
            int err = errno;
            if (channel_is_shut(c)) {
                ferry_error_setg(errp, "Failed to write to '%s': channel was shut down", c->desc);
            } else {
                ferry_error_setg_errno(errp, err, "Failed to write to '%s'", c->desc);
            }
            return -1;
        }
    }
}

static void fd_shutdown(FerryChannel *c)
{
    SocketChannel *sc = (SocketChannel *)c;
    __atomic_store_n(&sc->shut, 1, __ATOMIC_RELEASE);
    if (sc->is_socket) {
        /* Wakes a reader or writer blocked in the kernel on this socket, in any thread. */
        shutdown(c->fd, SHUT_RDWR);
    }
}

static void fd_close(FerryChannel *c)
{
    if (c->fd >= 0) {
        close(c->fd);
        c->fd = -1;
    }
}

#define FD_OPS(opsname) { .name = opsname, .readv = fd_readv, .writev = fd_writev, .shutdown = fd_shutdown, \
                          .close = fd_close }

static const FerryChannelOps tcp_ops = FD_OPS("tcp");
static const FerryChannelOps unix_ops = FD_OPS("unix");
static const FerryChannelOps fd_ops = FD_OPS("fd");

void ferry__socket_tune(int fd)
{
    int size = SOCKET_BUFFER_HINT;
    (void)setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof(size));
    (void)setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof(size));
}

static bool cancelled(int cancel_fd, int timeout_ms)
{
    if (cancel_fd < 0) {
        if (timeout_ms > 0) {
            poll(NULL, 0, timeout_ms);
        }
        return false;
    }
    struct pollfd p = { .fd = cancel_fd, .events = POLLIN };
    return poll(&p, 1, timeout_ms) > 0;
}

int ferry__socket_connect(int fd, const struct sockaddr *sa, socklen_t len, int cancel_fd)
{
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) {
        return errno;
    }
    int err = 0;
    for (;;) {
        if (cancelled(cancel_fd, 0)) {
            err = ECANCELED;
            break;
        }
        if (connect(fd, sa, len) == 0) {
            break;
        }
        if (errno == EINTR) {
            continue;
        }
        if (errno == EAGAIN && sa->sa_family == AF_UNIX) {
            /* A UNIX listener whose backlog is full: the kernel does not queue the attempt, so try again a
             * little later (a blocking connect would sleep in the kernel, where cancel cannot reach it). */
            if (cancelled(cancel_fd, 10)) {
                err = ECANCELED;
                break;
            }
            continue;
        }
        if (errno != EINPROGRESS) {
            err = errno;
            break;
        }
        /* The attempt goes on in the kernel: wait for it, or for cancel. */
        struct pollfd pfd[2] = { { .fd = fd, .events = POLLOUT }, { .fd = cancel_fd, .events = POLLIN } };
        int n;
        while ((n = poll(pfd, cancel_fd >= 0 ? 2 : 1, -1)) < 0 && errno == EINTR) {
        }
        if (n < 0) {
            err = errno;
        } else if (cancel_fd >= 0 && pfd[1].revents) {
            err = ECANCELED;
        } else {
            socklen_t err_len = sizeof(err);
            if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &err_len) < 0) {
                err = errno;
            }
        }
        break;
    }
    if (err == 0 && fcntl(fd, F_SETFL, flags) < 0) {
        err = errno;
    }
    return err;
}

FerryChannel *ferry__socket_channel_new(int fd, const char *name, const char *desc)
{
    SocketChannel *sc = ferry__xcalloc(1, sizeof(*sc));
    if (strcmp(name, "tcp") == 0) {
        sc->base.ops = &tcp_ops;
    } else if (strcmp(name, "unix") == 0) {
        sc->base.ops = &unix_ops;
    } else {
        sc->base.ops = &fd_ops;
    }
    sc->base.fd = fd;
    sc->base.desc = ferry__xstrdup(desc);
    int type;
    socklen_t type_len = sizeof(type);
    sc->is_socket = getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &type_len) == 0;
    return &sc->base;
}

FerryChannel *ferry__channel_new_fd(int fd, const char *desc)
{
    if (fd < 0 || fcntl(fd, F_GETFD) < 0) {
        return NULL;
    }
    return ferry__socket_channel_new(fd, "fd", desc);
}

json_t *ferry__socket_local_address(int fd, FerryError **errp)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0) {
        ferry_error_setg_errno(errp, errno, "Failed to get the local address of a socket");
        return NULL;
    }
    if (ss.ss_family == AF_UNIX) {
        const struct sockaddr_un *sun = (const struct sockaddr_un *)&ss;
        size_t max = len - offsetof(struct sockaddr_un, sun_path);
        char *path = ferry__xstrndup(sun->sun_path, max);
        json_t *j = json_pack("{s:s, s:s}", "type", "unix", "path", path);
        free(path);
        return j;
    }
    char host[NI_MAXHOST], port[NI_MAXSERV];
    if ((ss.ss_family != AF_INET && ss.ss_family != AF_INET6) ||
        getnameinfo((const struct sockaddr *)&ss, len, host, sizeof(host), port, sizeof(port),
                    NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
        ferry_error_setg(errp, "Failed to describe a socket of address family %d", ss.ss_family);
        return NULL;
    }
    return json_pack("{s:s, s:s, s:s}", "type", "inet", "host", host, "port", port);
}
