/*
 * The fd-backed channel (channel-int.h) that every transport builds on: sockets of every family, and pipes,
 * FIFOs and files handed to us or created by exec.c and file.c. It moves bytes, reports errors and makes
 * shutdown interrupt blocked calls (a TCP connection shut down is reset when closed); it does not resolve,
 * connect or listen (that is the transports' job) and does not buffer (that is the stream's). Also the socket
 * helpers shared by the socket transports.
 */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <linux/vm_sockets.h>

#include "channel/channel-int.h"
#include "util/util.h"

#define SOCKET_BUFFER_HINT (4 * 1024 * 1024)

bool ferry__fd_channel_is_shut(FerryChannel *c)
{
    return __atomic_load_n(&((FerryFdChannel *)c)->shut, __ATOMIC_ACQUIRE) != 0;
}

/* Waits until @fd is ready for @events or the channel is shut down. False with errno set on a poll error, and
 * with errno ETIMEDOUT when nothing happened for the channel's timeout (ferry__channel_set_timeout). */
static bool wait_ready(FerryFdChannel *fc, short events)
{
    struct pollfd pfd[2] = {
        { .fd = fc->base.fd, .events = events },
        { .fd = fc->wake_fd, .events = POLLIN },
    };
    int timeout = fc->timeout_ms ? (int)fc->timeout_ms : -1;
    for (;;) {
        int n = poll(pfd, 2, timeout);
        if (n > 0) {
            return true;
        }
        if (n == 0) {
            errno = ETIMEDOUT;
            return false;
        }
        if (errno != EINTR) {
            return false;
        }
    }
}

/* Whether a failed call with @err is the channel's timeout expiring: EAGAIN from a blocking socket with
 * SO_RCVTIMEO/SO_SNDTIMEO, ETIMEDOUT from wait_ready. */
static bool timed_out(const FerryFdChannel *fc, int err)
{
    return fc->timeout_ms && (err == EAGAIN || err == EWOULDBLOCK || err == ETIMEDOUT);
}

/* The error of a read or write that gave up: say which parameter made it give up, so that the user knows both
 * what happened (the peer stopped reading or sending) and what to change. */
static void set_io_error(FerryFdChannel *fc, FerryError **errp, int err, const char *what)
{
    if (timed_out(fc, err)) {
        ferry_error_setg(errp, "Failed to %s '%s': no progress for %u ms (io-timeout); the peer stopped %s",
                         what, fc->base.desc, fc->timeout_ms, what[0] == 'r' ? "sending" : "reading");
    } else {
        ferry_error_setg_errno(errp, err, "Failed to %s '%s'", what, fc->base.desc);
    }
}

/*
 * recvmsg(2) on a UNIX socket, keeping any fds that arrive with the bytes (SCM_RIGHTS) in fc->rfds. The kernel
 * never merges bytes that carry fds with bytes that carry others into one read, so one control buffer sized for
 * the largest message (FERRY_CHANNEL_MAX_FDS) is enough; if fds were cut anyway (MSG_CTRUNC, e.g. the process ran
 * out of fd slots) the read fails: a stream that lost fds cannot be trusted. Returns what recvmsg returns, or -2
 * with *errp set.
 */
static ssize_t recv_with_fds(FerryFdChannel *fc, const struct iovec *iov, int iovcnt, FerryError **errp)
{
    union {
        char buf[CMSG_SPACE(sizeof(int) * FERRY_CHANNEL_MAX_FDS)];
        struct cmsghdr align;
    } ctl;
    struct msghdr msg = {
        .msg_iov = (struct iovec *)iov,
        .msg_iovlen = (size_t)iovcnt,
        .msg_control = ctl.buf,
        .msg_controllen = sizeof(ctl.buf),
    };
    ssize_t n = recvmsg(fc->base.fd, &msg, MSG_CMSG_CLOEXEC);
    if (n < 0) {
        return n;
    }
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm)) {
        if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS) {
            continue;
        }
        size_t k = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        if (fc->nrfds + k > fc->rfds_cap) {
            fc->rfds_cap = FERRY_MAX(fc->rfds_cap * 2, fc->nrfds + k);
            fc->rfds = ferry__xrealloc(fc->rfds, fc->rfds_cap * sizeof(int));
        }
        memcpy(fc->rfds + fc->nrfds, CMSG_DATA(cm), k * sizeof(int));
        fc->nrfds += k;
    }
    if (msg.msg_flags & MSG_CTRUNC) {
        ferry_error_setg(errp, "Failed to read from '%s': file descriptors sent by the peer were cut off "
                         "(MSG_CTRUNC; out of file descriptors?)", fc->base.desc);
        return -2;
    }
    return n;
}

ssize_t ferry__fd_channel_readv(FerryChannel *c, const struct iovec *iov, int iovcnt, FerryError **errp)
{
    FerryFdChannel *fc = (FerryFdChannel *)c;
    for (;;) {
        /* A pollable fd is checked first: its shutdown does not reach the kernel object, only the eventfd. */
        if (fc->pollable && ferry__fd_channel_is_shut(c)) {
            ferry_error_setg(errp, "Failed to read from '%s': channel was shut down", c->desc);
            return -1;
        }
        ssize_t n = fc->is_unix ? recv_with_fds(fc, iov, iovcnt, errp) : readv(c->fd, iov, iovcnt);
        if (n == -2) {
            return -1; /* recv_with_fds set *errp */
        }
        if (n > 0) {
            return n;
        }
        /* After a local shutdown the kernel reports end of stream; say what really happened instead of
         * blaming the peer. */
        if (ferry__fd_channel_is_shut(c)) {
            ferry_error_setg(errp, "Failed to read from '%s': channel was shut down", c->desc);
            return -1;
        }
        if (n == 0) {
            return 0;
        }
        if (fc->pollable && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (!wait_ready(fc, POLLIN)) {
                set_io_error(fc, errp, errno, "read from");
                return -1;
            }
            continue;
        }
        if (errno != EINTR) {
            set_io_error(fc, errp, errno, "read from");
            return -1;
        }
    }
}

/*
 * writev(2) (or vmsplice(2) with @splice_flags, when @splice) on a non-socket without SIGPIPE: a pipe whose
 * reader is gone must give EPIPE to the caller, never kill the process (the host programs ignore SIGPIPE, but a
 * library must not rely on it). SIGPIPE is blocked in this thread around the call, and one raised by it is
 * consumed before the mask is restored; one that was pending already is left alone.
 */
ssize_t ferry__pipe_write_nosigpipe(int fd, const struct iovec *iov, int iovcnt, bool splice, unsigned splice_flags)
{
    sigset_t pipe_set, old, pending;
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    sigemptyset(&pending);
    bool was_pending = sigpending(&pending) == 0 && sigismember(&pending, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_set, &old);
    ssize_t n = splice ? vmsplice(fd, iov, (unsigned long)iovcnt, splice_flags) : writev(fd, iov, iovcnt);
    int err = errno;
    if (n < 0 && err == EPIPE && !was_pending) {
        const struct timespec zero = { 0, 0 };
        while (sigtimedwait(&pipe_set, NULL, &zero) < 0 && errno == EINTR) {
        }
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    errno = err;
    return n;
}

ssize_t ferry__fd_channel_writev(FerryChannel *c, const struct iovec *iov, int iovcnt, FerryError **errp)
{
    FerryFdChannel *fc = (FerryFdChannel *)c;
    for (;;) {
        if (ferry__fd_channel_is_shut(c)) {
            ferry_error_setg(errp, "Failed to write to '%s': channel was shut down", c->desc);
            return -1;
        }
        ssize_t n;
        if (fc->is_socket) {
            /* MSG_NOSIGNAL: a dead peer must give EPIPE, never kill the process with SIGPIPE. */
            struct msghdr msg = { .msg_iov = (struct iovec *)iov, .msg_iovlen = (size_t)iovcnt };
            n = sendmsg(c->fd, &msg, MSG_NOSIGNAL);
        } else {
            n = ferry__pipe_write_nosigpipe(c->fd, iov, iovcnt, false, 0);
        }
        if (n >= 0) {
            return n;
        }
        if (fc->pollable && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (!wait_ready(fc, POLLOUT)) {
                set_io_error(fc, errp, errno, "write to");
                return -1;
            }
            continue;
        }
        if (errno != EINTR) {
            int err = errno;
            if (ferry__fd_channel_is_shut(c)) {
                ferry_error_setg(errp, "Failed to write to '%s': channel was shut down", c->desc);
            } else {
                set_io_error(fc, errp, err, "write to");
            }
            return -1;
        }
    }
}

void ferry__fd_channel_shutdown(FerryChannel *c)
{
    FerryFdChannel *fc = (FerryFdChannel *)c;
    __atomic_store_n(&fc->shut, 1, __ATOMIC_RELEASE);
    if (fc->is_socket) {
        if (!fc->is_unix) {
            /* The close that follows must reset the connection, not end it gracefully. After SHUT_RD, Linux no
             * longer announces the window that reading frees. A reader that then reads the queue empty closes
             * with nothing unread, so the kernel sends no RST and keeps the closed end in FIN_WAIT2 for
             * tcp_fin_timeout (60 s) with the last advertised window. If the peer's writer had filled that
             * window, it was zero: the writer's window probes are answered with zero windows, and its blocked
             * send goes on for the whole minute. A reset fails that send at once. UNIX sockets have no window. */
            struct linger abort_on_close = { .l_onoff = 1, .l_linger = 0 };
            (void)setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &abort_on_close, sizeof(abort_on_close));
        }
        /* Wakes a reader or writer blocked in the kernel on this socket, in any thread. */
        shutdown(c->fd, SHUT_RDWR);
    } else if (fc->wake_fd >= 0) {
        uint64_t one = 1;
        /* Only fails when the counter is saturated, which already wakes poll. */
        ssize_t n = write(fc->wake_fd, &one, sizeof(one));
        (void)n;
    }
}

bool ferry__fd_channel_send_fds(FerryChannel *c, const void *buf, size_t len, const int *fds, size_t nfds,
                                FerryError **errp)
{
    union {
        char buf[CMSG_SPACE(sizeof(int) * FERRY_CHANNEL_MAX_FDS)];
        struct cmsghdr align;
    } ctl;
    struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };
    struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };
    memset(&ctl, 0, sizeof(ctl));
    msg.msg_control = ctl.buf;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
    struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
    memcpy(CMSG_DATA(cm), fds, sizeof(int) * nfds);
    for (;;) {
        if (ferry__fd_channel_is_shut(c)) {
            ferry_error_setg(errp, "Failed to write to '%s': channel was shut down", c->desc);
            return false;
        }
        ssize_t n = sendmsg(c->fd, &msg, MSG_NOSIGNAL);
        if (n >= 0) {
            /* The fds went with the first byte; the rest of the bytes, if any, go without them. */
            return (size_t)n == len || ferry__channel_write_all(c, (const char *)buf + n, len - (size_t)n, errp);
        }
        if (errno != EINTR) {
            if (timed_out((FerryFdChannel *)c, errno)) {
                set_io_error((FerryFdChannel *)c, errp, errno, "write to");
            } else {
                ferry_error_setg_errno(errp, errno, "Failed to send %zu file descriptors to '%s'", nfds, c->desc);
            }
            return false;
        }
    }
}

void ferry__fd_channel_close(FerryChannel *c)
{
    FerryFdChannel *fc = (FerryFdChannel *)c;
    for (size_t i = 0; i < fc->nrfds; i++) {
        close(fc->rfds[i]);
    }
    free(fc->rfds);
    fc->rfds = NULL;
    fc->nrfds = fc->rfds_cap = 0;
    if (c->fd >= 0) {
        close(c->fd);
        c->fd = -1;
    }
    if (fc->wake_fd >= 0) {
        close(fc->wake_fd);
        fc->wake_fd = -1;
    }
}

void ferry__fd_channel_init(FerryFdChannel *fc, const FerryChannelOps *ops, int fd, const char *desc)
{
    fc->base.ops = ops;
    fc->base.fd = fd;
    fc->base.desc = ferry__xstrdup(desc);
    fc->wake_fd = -1;
    int type;
    socklen_t type_len = sizeof(type);
    fc->is_socket = getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &type_len) == 0;
    int domain;
    socklen_t domain_len = sizeof(domain);
    fc->is_unix = fc->is_socket && type == SOCK_STREAM &&
                  getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &domain_len) == 0 && domain == AF_UNIX;
    fc->base.one_way = !fc->is_socket;
    struct stat st;
    if (fc->is_socket || fstat(fd, &st) < 0 || S_ISREG(st.st_mode) || S_ISBLK(st.st_mode)) {
        return;
    }
    /* A pipe, FIFO or character device can block forever: wait for it in poll() together with an eventfd.
     * O_NONBLOCK is a property of the open file description, which a pipe end created by exec.c has alone;
     * an fd handed to us is ours from now on (channel.h), so changing its mode is ours to do. */
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0) {
        return;
    }
    int wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (wake < 0) {
        /* Blocking I/O then, as the ops expect without poll (file.c opens a FIFO non-blocking). */
        if (flags & O_NONBLOCK) {
            (void)fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
        }
        return;
    }
    if (!(flags & O_NONBLOCK) && fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) {
        close(wake);
        return;
    }
    fc->wake_fd = wake;
    fc->pollable = true;
}

bool ferry__fd_channel_set_timeout(FerryChannel *c, unsigned ms, FerryError **errp)
{
    FerryFdChannel *fc = (FerryFdChannel *)c;
    if (fc->is_socket) {
        /* A blocking socket gives up by itself: a send or receive that moved nothing for this long fails with
         * EAGAIN (a partial transfer returns its count, so the limit is on a lack of progress, not on a
         * record's duration). */
        struct timeval tv = { .tv_sec = ms / 1000, .tv_usec = (suseconds_t)(ms % 1000) * 1000 };
        if (setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) < 0 ||
            setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) < 0) {
            ferry_error_setg_errno(errp, errno, "Failed to set io-timeout on '%s'", c->desc);
            return false;
        }
    }
    /* Pipes use it in wait_ready; regular files never wait for a peer. */
    fc->timeout_ms = ms;
    return true;
}

static void fd_channel_close_op(FerryChannel *c)
{
    ferry__fd_channel_close(c);
}

#define FD_OPS(opsname) { .name = opsname, .readv = ferry__fd_channel_readv, .writev = ferry__fd_channel_writev, \
                          .shutdown = ferry__fd_channel_shutdown, .close = fd_channel_close_op, \
                          .set_timeout = ferry__fd_channel_set_timeout }

static const FerryChannelOps tcp_ops = FD_OPS("tcp");
static const FerryChannelOps unix_ops = FD_OPS("unix");
static const FerryChannelOps vsock_ops = FD_OPS("vsock");
static const FerryChannelOps fd_ops = FD_OPS("fd");

void ferry__socket_tune(int fd)
{
    int size = SOCKET_BUFFER_HINT;
    (void)setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof(size));
    (void)setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof(size));
}

bool ferry__cancel_wait(int cancel_fd, int timeout_ms)
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
        if (ferry__cancel_wait(cancel_fd, 0)) {
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
            if (ferry__cancel_wait(cancel_fd, 10)) {
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

void ferry__connect_error(FerryError **errp, int err, const char *uri)
{
    if (err == ECANCELED) {
        ferry_error_setg(errp, "Failed to connect to '%s': cancelled", uri);
    } else {
        ferry_error_setg_errno(errp, err, "Failed to connect to '%s'", uri);
    }
}

FerryChannel *ferry__socket_connect_channel(int family, const struct sockaddr *sa, socklen_t len, const char *name,
                                            const char *uri, int cancel_fd, FerryError **errp)
{
    int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        ferry_error_setg_errno(errp, errno, "Failed to connect to '%s': cannot create a %s socket", uri, name);
        return NULL;
    }
    ferry__socket_tune(fd);
    int err = ferry__socket_connect(fd, sa, len, cancel_fd);
    if (err) {
        ferry__connect_error(errp, err, uri);
        close(fd);
        return NULL;
    }
    return ferry__socket_channel_new(fd, name, uri);
}

int ferry__socket_bind_listen(int family, const struct sockaddr *sa, socklen_t len, const char *uri,
                              FerryError **errp)
{
    int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        ferry_error_setg_errno(errp, errno, "Failed to bind to '%s': cannot create socket", uri);
        return -1;
    }
    ferry__socket_tune(fd);
    if (bind(fd, sa, len) < 0) {
        ferry_error_setg_errno(errp, errno, "Failed to bind to '%s'", uri);
        close(fd);
        return -1;
    }
    if (listen(fd, SOMAXCONN) < 0) {
        ferry_error_setg_errno(errp, errno, "Failed to listen on '%s'", uri);
        close(fd);
        return -1;
    }
    return fd;
}

FerryChannel *ferry__socket_channel_new(int fd, const char *name, const char *desc)
{
    FerryFdChannel *fc = ferry__xcalloc(1, sizeof(*fc));
    const FerryChannelOps *ops = &fd_ops;
    if (strcmp(name, "tcp") == 0) {
        ops = &tcp_ops;
    } else if (strcmp(name, "unix") == 0) {
        ops = &unix_ops;
    } else if (strcmp(name, "vsock") == 0) {
        ops = &vsock_ops;
    }
    ferry__fd_channel_init(fc, ops, fd, desc);
    return &fc->base;
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
        if (max > 0 && sun->sun_path[0] == '\0') {
            /* Abstract: the name is the bytes after the leading NUL, exactly as long as the bound length. */
            char *name = ferry__xstrndup(sun->sun_path + 1, max - 1);
            json_t *j = json_pack("{s:s, s:s, s:b}", "type", "unix", "path", name, "abstract", 1);
            free(name);
            return j;
        }
        char *path = ferry__xstrndup(sun->sun_path, max);
        json_t *j = json_pack("{s:s, s:s}", "type", "unix", "path", path);
        free(path);
        return j;
    }
    if (ss.ss_family == AF_VSOCK) {
        const struct sockaddr_vm *svm = (const struct sockaddr_vm *)&ss;
        char cid[16], port[16];
        snprintf(cid, sizeof(cid), "%u", svm->svm_cid);
        snprintf(port, sizeof(port), "%u", svm->svm_port);
        return json_pack("{s:s, s:s, s:s}", "type", "vsock", "cid", cid, "port", port);
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
