/*
 * Transport-independent channel code (channel.h): the read/write loops on top of the ops table, the finish step,
 * dispatch of connect, listen, accept and the listener's addresses by transport and socket type, and the accept
 * loop with its cross-thread wake-up. The transports (tcp.c, unix.c, vsock.c, fd.c, exec.c, file.c, rdma.c) only
 * turn an address into a channel or a listener; the byte-moving ops live in socket.c.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "channel/channel-int.h"
#include "util/util.h"

/* How often a waiting unix listener checks that its path still names its socket (ferry__unix_listener_check). */
#define UNIX_PATH_CHECK_MS 1000

FerryChannel *ferry__channel_connect(const FerryMigrationAddress *addr, int cancel_fd, FerryError **errp)
{
    char *uri = ferry__address_to_uri(addr);
    FerryChannel *c = NULL;
    switch (addr->transport) {
    case FERRY_TRANSPORT_SOCKET:
        switch (addr->socket.type) {
        case FERRY_SOCKET_INET:
            c = ferry__tcp_connect(&addr->socket.inet, uri, cancel_fd, errp);
            break;
        case FERRY_SOCKET_UNIX:
            c = ferry__unix_connect(&addr->socket.un, uri, cancel_fd, errp);
            break;
        case FERRY_SOCKET_VSOCK:
            c = ferry__vsock_connect(&addr->socket.vsock, uri, cancel_fd, errp);
            break;
        case FERRY_SOCKET_FD:
            c = ferry__fd_connect(&addr->socket.fd, uri, errp);
            break;
        default:
            ferry_error_setg(errp, "Failed to connect to '%s': unknown socket type %d", uri, (int)addr->socket.type);
            break;
        }
        break;
    case FERRY_TRANSPORT_EXEC:
        c = ferry__exec_connect(&addr->exec, uri, errp);
        break;
    case FERRY_TRANSPORT_FILE:
        c = ferry__file_connect(&addr->file, uri, cancel_fd, errp);
        break;
    case FERRY_TRANSPORT_RDMA:
        c = ferry__rdma_connect(&addr->rdma, uri, errp);
        break;
    default:
        ferry_error_setg(errp, "Failed to connect to '%s': unknown transport %d", uri, (int)addr->transport);
        break;
    }
    free(uri);
    return c;
}

bool ferry__channel_set_timeout(FerryChannel *c, unsigned ms, FerryError **errp)
{
    return !c->ops->set_timeout || c->ops->set_timeout(c, ms, errp);
}

int ferry__channel_wait_readable(FerryChannel *c, int timeout_ms)
{
    if (c->ops->pending && c->ops->pending(c)) {
        return 1;
    }
    struct pollfd p = { .fd = c->fd, .events = POLLIN };
    int n;
    while ((n = poll(&p, 1, timeout_ms)) < 0 && errno == EINTR) {
    }
    /* A poll error is reported as readable: the read that follows fails and says why. */
    return n != 0;
}

bool ferry__channel_finish(FerryChannel *c, FerryError **errp)
{
    if (!c->ops->finish) {
        return true;
    }
    return c->ops->finish(c, errp);
}

/*
 * Move every byte of @iov with the channel's readv (@reading) or writev, advancing @iov past what each call moved
 * (a partial transfer can end inside an entry) and skipping empty entries, so that the count given to the kernel
 * stays meaningful. A read that meets the end of the stream fails.
 */
static bool iov_all(FerryChannel *c, struct iovec *iov, int iovcnt, bool reading, FerryError **errp)
{
    while (iovcnt > 0) {
        if (iov->iov_len == 0) {
            iov++;
            iovcnt--;
            continue;
        }
        int cnt = FERRY_MIN(iovcnt, IOV_MAX);
        ssize_t n = reading ? c->ops->readv(c, iov, cnt, errp) : c->ops->writev(c, iov, cnt, errp);
        if (n < 0) {
            return false;
        }
        if (n == 0 && reading) {
            ferry_error_setg(errp, "Failed to read from '%s': connection closed by peer", c->desc);
            return false;
        }
        size_t done = (size_t)n;
        while (iovcnt > 0 && done >= iov->iov_len) {
            done -= iov->iov_len;
            iov++;
            iovcnt--;
        }
        if (done) {
            iov->iov_base = (char *)iov->iov_base + done;
            iov->iov_len -= done;
        }
    }
    return true;
}

bool ferry__channel_writev_all(FerryChannel *c, struct iovec *iov, int iovcnt, FerryError **errp)
{
    return iov_all(c, iov, iovcnt, false, errp);
}

bool ferry__channel_write_all(FerryChannel *c, const void *buf, size_t len, FerryError **errp)
{
    struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };
    return ferry__channel_writev_all(c, &iov, 1, errp);
}

bool ferry__channel_readv_all(FerryChannel *c, struct iovec *iov, int iovcnt, FerryError **errp)
{
    return iov_all(c, iov, iovcnt, true, errp);
}

ssize_t ferry__channel_read(FerryChannel *c, void *buf, size_t len, FerryError **errp)
{
    struct iovec iov = { .iov_base = buf, .iov_len = len };
    return c->ops->readv(c, &iov, 1, errp);
}

bool ferry__channel_read_all(FerryChannel *c, void *buf, size_t len, FerryError **errp)
{
    char *p = buf;
    while (len > 0) {
        ssize_t n = ferry__channel_read(c, p, len, errp);
        if (n < 0) {
            return false;
        }
        if (n == 0) {
            ferry_error_setg(errp, "Failed to read from '%s': connection closed by peer", c->desc);
            return false;
        }
        p += n;
        len -= (size_t)n;
    }
    return true;
}

/* Every channel is a FerryFdChannel (socket.c) or embeds one first (exec.c, file.c). */
bool ferry__channel_can_pass_fds(const FerryChannel *c)
{
    return ((const FerryFdChannel *)c)->is_unix;
}

bool ferry__channel_send_fds(FerryChannel *c, const void *buf, size_t len, const int *fds, size_t nfds,
                             FerryError **errp)
{
    if (!ferry__channel_can_pass_fds(c)) {
        ferry_error_setg(errp, "cannot pass file descriptors over '%s': only a UNIX socket can carry them", c->desc);
        return false;
    }
    if (len == 0 || nfds == 0 || nfds > FERRY_CHANNEL_MAX_FDS) {
        ferry_error_setg(errp, "cannot pass %zu file descriptors with %zu bytes (1..%d fds, at least one byte)",
                         nfds, len, FERRY_CHANNEL_MAX_FDS);
        return false;
    }
    return ferry__fd_channel_send_fds(c, buf, len, fds, nfds, errp);
}

int ferry__channel_take_fd(FerryChannel *c)
{
    FerryFdChannel *fc = (FerryFdChannel *)c;
    if (fc->nrfds == 0) {
        return -1;
    }
    int fd = fc->rfds[0];
    memmove(fc->rfds, fc->rfds + 1, (fc->nrfds - 1) * sizeof(int));
    fc->nrfds--;
    return fd;
}

size_t ferry__channel_fds_pending(const FerryChannel *c)
{
    return ((const FerryFdChannel *)c)->nrfds;
}

void ferry__channel_shutdown(FerryChannel *c)
{
    if (c) {
        c->ops->shutdown(c);
    }
}

void ferry__channel_free(FerryChannel *c)
{
    if (!c) {
        return;
    }
    c->ops->close(c);
    free(c->desc);
    free(c);
}

/* ---- listeners ---- */

FerryListener *ferry__listener_new(const FerryMigrationAddress *addr, FerryError **errp)
{
    FerryListener *l = ferry__xcalloc(1, sizeof(*l));
    l->fd = -1;
    l->addr = ferry__address_copy(addr);
    l->uri = ferry__address_to_uri(addr);
    l->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (l->wake_fd < 0) {
        ferry_error_setg_errno(errp, errno, "Failed to listen on '%s': cannot create eventfd", l->uri);
        ferry__listener_free(l);
        return NULL;
    }
    bool ok = false;
    switch (addr->transport) {
    case FERRY_TRANSPORT_SOCKET:
        switch (addr->socket.type) {
        case FERRY_SOCKET_INET:
            ok = ferry__tcp_listen(l, &addr->socket.inet, errp);
            break;
        case FERRY_SOCKET_UNIX:
            ok = ferry__unix_listen(l, &addr->socket.un, errp);
            break;
        case FERRY_SOCKET_VSOCK:
            ok = ferry__vsock_listen(l, &addr->socket.vsock, errp);
            break;
        case FERRY_SOCKET_FD:
            ok = ferry__fd_listen(l, &addr->socket.fd, errp);
            break;
        default:
            ferry_error_setg(errp, "Failed to listen on '%s': unknown socket type %d", l->uri,
                             (int)addr->socket.type);
            break;
        }
        break;
    case FERRY_TRANSPORT_EXEC:
        ok = ferry__exec_listen(l, &addr->exec, errp);
        break;
    case FERRY_TRANSPORT_FILE:
        ok = ferry__file_listen(l, &addr->file, errp);
        break;
    case FERRY_TRANSPORT_RDMA:
        ok = ferry__rdma_listen(l, &addr->rdma, errp);
        break;
    default:
        ferry_error_setg(errp, "Failed to listen on '%s': unknown transport %d", l->uri, (int)addr->transport);
        break;
    }
    if (!ok) {
        ferry__listener_free(l);
        return NULL;
    }
    if (l->fd < 0) {
        /* fd, exec, file: no listening socket, accept hands out the one prepared channel. */
        return l;
    }
    /* Non-blocking, so that a connection that goes away between poll() and accept() cannot block us in
     * accept() where the wake-up eventfd would not be seen. */
    int flags = fcntl(l->fd, F_GETFL);
    if (flags < 0 || fcntl(l->fd, F_SETFL, flags | O_NONBLOCK) < 0) {
        ferry_error_setg_errno(errp, errno, "Failed to listen on '%s': cannot make the socket non-blocking", l->uri);
        ferry__listener_free(l);
        return NULL;
    }
    return l;
}

/* True if ferry__listener_shutdown() has been called (the eventfd is never drained). */
static bool listener_is_shut(const FerryListener *l)
{
    struct pollfd p = { .fd = l->wake_fd, .events = POLLIN };
    return poll(&p, 1, 0) > 0;
}

/* Accept for the transports without a listening socket: the single channel, once (a FIFO's once a writer has
 * opened it, waiting up to @timeout_ms). */
static FerryChannel *accept_single(FerryListener *l, int timeout_ms, FerryError **errp)
{
    if (listener_is_shut(l)) {
        ferry_error_setg(errp, "Failed to accept on '%s': cancelled", l->uri);
        return NULL;
    }
    if (l->accepted) {
        ferry_error_setg(errp, "Failed to accept on '%s': its only channel was accepted already", l->uri);
        return NULL;
    }
    FerryChannel *c;
    if (l->addr->transport == FERRY_TRANSPORT_EXEC) {
        c = ferry__exec_accept(l, &l->addr->exec, errp);
        if (!c) {
            return NULL;
        }
    } else {
        if (l->addr->transport == FERRY_TRANSPORT_FILE && !ferry__file_wait_writer(l, timeout_ms, errp)) {
            return NULL;
        }
        c = l->pending;
        l->pending = NULL;
    }
    l->accepted = true;
    return c;
}

bool ferry__listener_is_socket(const FerryListener *l)
{
    return l->fd >= 0;
}

FerryChannel *ferry__listener_accept(FerryListener *l, FerryError **errp)
{
    return ferry__listener_accept_timeout(l, -1, errp);
}

/* accept4 on a listening socket that poll found readable: the new channel; NULL with *errp set on an error, or
 * NULL without an error when there was nothing to accept after all (the caller waits again). */
static FerryChannel *accept_one(FerryListener *l, FerryError **errp)
{
    /* Accepted sockets do not inherit O_NONBLOCK on Linux: the channel is blocking, as the ops expect. */
    int fd = accept4(l->fd, NULL, NULL, SOCK_CLOEXEC);
    if (fd < 0) {
        /* The peer may have given up already, or the network reported an error for a pending
         * connection (accept(2) says to retry on those). */
        if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK || errno == ECONNABORTED ||
            errno == EPROTO || errno == ENETDOWN || errno == ENOPROTOOPT || errno == EHOSTDOWN ||
            errno == ENONET || errno == EHOSTUNREACH || errno == EOPNOTSUPP || errno == ENETUNREACH) {
            return NULL;
        }
        ferry_error_setg_errno(errp, errno, "Failed to accept on '%s'", l->uri);
        return NULL;
    }
    ferry__socket_tune(fd);
    if (l->addr->socket.type == FERRY_SOCKET_INET) {
        ferry__tcp_tune_connected(fd, &l->addr->socket.inet);
        char *desc = ferry__tcp_peer_desc(fd);
        FerryChannel *c = ferry__socket_channel_new(fd, "tcp", desc ? desc : l->uri);
        free(desc);
        return c;
    }
    if (l->addr->socket.type == FERRY_SOCKET_VSOCK) {
        return ferry__socket_channel_new(fd, "vsock", l->uri);
    }
    /* A unix peer is normally unnamed: the listening path is the useful description. */
    return ferry__socket_channel_new(fd, "unix", l->uri);
}

FerryChannel *ferry__listener_accept_timeout(FerryListener *l, int timeout_ms, FerryError **errp)
{
    if (l->fd < 0) {
        return accept_single(l, timeout_ms, errp);
    }
    int64_t deadline = timeout_ms < 0 ? 0 : ferry__clock_ms() + timeout_ms;
    for (;;) {
        struct pollfd pfd[2] = {
            { .fd = l->fd, .events = POLLIN },
            { .fd = l->wake_fd, .events = POLLIN },
        };
        int wait = -1;
        if (timeout_ms >= 0) {
            int64_t left = deadline - ferry__clock_ms();
            if (left <= 0) {
                ferry_error_setg(errp, "Failed to accept on '%s': no connection within %d ms", l->uri, timeout_ms);
                return NULL;
            }
            wait = (int)left;
        }
        if (l->unlink_path && (wait < 0 || wait > UNIX_PATH_CHECK_MS)) {
            wait = UNIX_PATH_CHECK_MS;
        }
        if (poll(pfd, 2, wait) < 0) {
            if (errno == EINTR) {
                continue;
            }
            ferry_error_setg_errno(errp, errno, "Failed to accept on '%s'", l->uri);
            return NULL;
        }
        /* The eventfd is never drained: once shut down, every later accept fails at once too. */
        if (pfd[1].revents) {
            ferry_error_setg(errp, "Failed to accept on '%s': cancelled", l->uri);
            return NULL;
        }
        if (!pfd[0].revents) {
            /* Nobody came: a unix listener whose path now names another socket (or nothing) would wait for
             * ever, as no source can reach it any more. */
            if (l->unlink_path && !ferry__unix_listener_check(l, errp)) {
                return NULL;
            }
            continue;
        }
        FerryError *err = NULL;
        FerryChannel *c = accept_one(l, &err);
        if (c || err) {
            ferry_error_propagate(errp, err);
            return c;
        }
    }
}

void ferry__listener_shutdown(FerryListener *l)
{
    if (!l || l->wake_fd < 0) {
        return;
    }
    uint64_t one = 1;
    /* Cannot fail in a useful way: EAGAIN only when the counter is saturated, which already wakes poll. */
    ssize_t n = write(l->wake_fd, &one, sizeof(one));
    (void)n;
}

json_t *ferry__listener_addresses(const FerryListener *l)
{
    json_t *list = json_array();
    json_t *a = NULL;
    if (l->fd >= 0) {
        a = ferry__socket_local_address(l->fd, NULL);
    } else if (l->addr->transport == FERRY_TRANSPORT_SOCKET) {
        /* fd: a SocketAddress of type fd, as QAPI spells it. */
        a = json_pack("{s:s, s:s}", "type", "fd", "str", l->addr->socket.fd.str ? l->addr->socket.fd.str : "");
    } else {
        /* exec and file are not SocketAddresses: their MigrationAddress says what the destination reads. */
        a = ferry__address_to_json(l->addr);
    }
    if (a) {
        json_array_append_new(list, a);
    }
    return list;
}

void ferry__listener_free(FerryListener *l)
{
    if (!l) {
        return;
    }
    if (l->fd >= 0) {
        close(l->fd);
    }
    if (l->wake_fd >= 0) {
        close(l->wake_fd);
    }
    ferry__channel_free(l->pending);
    if (l->unlink_path) {
        /* Remove the socket file only if it is still the one we bound: another process may have replaced it
         * since. */
        struct stat st;
        if (lstat(l->unlink_path, &st) == 0 && st.st_dev == l->unlink_dev && st.st_ino == l->unlink_ino) {
            unlink(l->unlink_path);
        }
        free(l->unlink_path);
    }
    ferry__address_free(l->addr);
    free(l->uri);
    free(l);
}
