/*
 * Private to src/channel: what channel.c (common code, dispatch) shares with the transport files. socket.c holds
 * the one fd-backed channel implementation that every transport builds on (sockets, pipes, files); tcp.c, unix.c,
 * vsock.c, fd.c, exec.c, file.c and rdma.c each turn one kind of address into a channel or a listener. Nothing
 * outside src/channel includes this.
 */
#ifndef FERRY_CHANNEL_INT_H
#define FERRY_CHANNEL_INT_H

#include <stdbool.h>
#include <sys/socket.h>
#include <sys/types.h>

#include <jansson.h>

#include "channel/channel.h"

/* What every socket gets: close-on-exec is set at socket()/accept4() time; this adds the large buffer hint
 * (4 MiB, failure ignored: the kernel caps it at net.core.[rw]mem_max anyway). */
void ferry__socket_tune(int fd);
/* connect(2) that can be abandoned: the socket is made non-blocking for the attempt and the wait polls both the
 * socket and @cancel_fd (-1 for none; readable means "give up"), so that a peer that never answers cannot hold
 * the caller until the kernel's SYN retries run out. Returns 0, an errno value, or ECANCELED. The socket is
 * blocking again on success. */
int ferry__socket_connect(int fd, const struct sockaddr *sa, socklen_t len, int cancel_fd);
/* Waits up to @timeout_ms (0: just look) for @cancel_fd (-1: none, then it only sleeps) to become readable:
 * whether the caller is to give up. */
bool ferry__cancel_wait(int cancel_fd, int timeout_ms);
/* The error for a failed ferry__socket_connect: "Failed to connect to 'URI': cancelled" or the errno text. */
void ferry__connect_error(FerryError **errp, int err, const char *uri);
/* A stream socket of @family connected to @sa (cancellable as above), wrapped into a channel named @name. For
 * transports with a single address (unix, vsock); tcp tries each resolved address itself. */
FerryChannel *ferry__socket_connect_channel(int family, const struct sockaddr *sa, socklen_t len, const char *name,
                                            const char *uri, int cancel_fd, FerryError **errp);
/* A stream socket of @family bound to @sa and listening; returns the fd or -1 with *errp naming @uri. */
int ferry__socket_bind_listen(int family, const struct sockaddr *sa, socklen_t len, const char *uri,
                              FerryError **errp);

/*
 * The fd-backed channel. Sockets use sendmsg(MSG_NOSIGNAL) and shutdown(2). Other fds that can block (pipes,
 * FIFOs, character devices) are made non-blocking and every wait polls them together with an eventfd that
 * shutdown writes, so that shutdown interrupts a blocked read or write on them too; their writes never raise
 * SIGPIPE (it is blocked around the write and a pending one is consumed). Regular files never block for long:
 * shutdown only makes later calls fail.
 */
typedef struct FerryFdChannel {
    FerryChannel base; /* first, so that a FerryChannel * is a FerryFdChannel * */
    bool is_socket;
    bool pollable;     /* a non-socket fd in non-blocking mode, waited for with poll() and wake_fd */
    int wake_fd;       /* eventfd written by shutdown when pollable, else -1 */
    int shut;          /* set (atomically) by shutdown from any thread */
    unsigned timeout_ms; /* ferry__channel_set_timeout: give up after this long without progress; 0 = never */
    bool is_unix;      /* an AF_UNIX stream socket: reads collect SCM_RIGHTS fds, sends can carry them */
    /* fds received with the bytes read so far and not yet taken (ferry__channel_take_fd), oldest first; owned
     * by the channel and closed with it. Only the reading thread touches them. */
    int *rfds;
    size_t nrfds, rfds_cap;
} FerryFdChannel;

/* Fills @fc (zeroed by the caller, possibly embedded in a larger struct) around @fd with @ops, and sets one_way
 * for non-sockets. Takes @fd. Cannot fail: if no eventfd can be had, a pipe is left (or made) blocking and shutdown then
 * only fails later calls, as for regular files. */
void ferry__fd_channel_init(FerryFdChannel *fc, const FerryChannelOps *ops, int fd, const char *desc);
/* The ops of a FerryFdChannel, for transports that embed one and override some ops (exec, file). */
ssize_t ferry__fd_channel_readv(FerryChannel *c, const struct iovec *iov, int iovcnt, FerryError **errp);
ssize_t ferry__fd_channel_writev(FerryChannel *c, const struct iovec *iov, int iovcnt, FerryError **errp);
void ferry__fd_channel_shutdown(FerryChannel *c);
void ferry__fd_channel_close(FerryChannel *c); /* closes the fd and the eventfd; the struct is channel.c's */
bool ferry__fd_channel_is_shut(FerryChannel *c);
bool ferry__fd_channel_set_timeout(FerryChannel *c, unsigned ms, FerryError **errp);
/* writev(2), or vmsplice(2) with @splice_flags if @splice, that gives EPIPE instead of raising SIGPIPE. */
ssize_t ferry__pipe_write_nosigpipe(int fd, const struct iovec *iov, int iovcnt, bool splice, unsigned splice_flags);
/* ferry__channel_send_fds for an fd channel that is_unix. */
bool ferry__fd_channel_send_fds(FerryChannel *c, const void *buf, size_t len, const int *fds, size_t nfds,
                                FerryError **errp);

/* Wraps a connected fd into a channel whose ops are named @name ("tcp", "unix", "vsock", "fd"). Takes @fd;
 * cannot fail. one_way is set when @fd is not a socket. */
FerryChannel *ferry__socket_channel_new(int fd, const char *name, const char *desc);

struct FerryListener {
    FerryMigrationAddress *addr;
    char *uri;    /* the address as given, for messages */
    int fd;       /* the listening socket; -1 for the transports that have none (fd, exec, file) */
    int wake_fd;  /* eventfd written by ferry__listener_shutdown() to wake a blocked accept */
    /* unix only: the socket file we created, removed on free if it is still ours */
    char *unlink_path;
    dev_t unlink_dev;
    ino_t unlink_ino;
    /* fd and file: the single channel prepared at listen time, handed out by the first accept */
    FerryChannel *pending;
    bool accepted; /* fd, exec, file: the single channel has been handed out */
};

/* Transport hooks. connect returns a connected channel; listen fills l->fd (and the unix fields) or, for the
 * transports without a listening socket, l->pending. @uri is the canonical URI, for messages. */
FerryChannel *ferry__tcp_connect(const FerryInetAddress *inet, const char *uri, int cancel_fd, FerryError **errp);
bool ferry__tcp_listen(FerryListener *l, const FerryInetAddress *inet, FerryError **errp);
/* Options of a connected TCP socket, on both sides: TCP_NODELAY, and SO_KEEPALIVE when "keep-alive" is on. */
void ferry__tcp_tune_connected(int fd, const FerryInetAddress *inet);
FerryChannel *ferry__unix_connect(const FerryUnixAddress *un, const char *uri, int cancel_fd, FerryError **errp);
bool ferry__unix_listen(FerryListener *l, const FerryUnixAddress *un, FerryError **errp);
/* Whether the path of a unix listener (one with unlink_path) still names the socket it bound; else false with
 * an error that says whether it was removed or taken over by another listener. */
bool ferry__unix_listener_check(const FerryListener *l, FerryError **errp);
FerryChannel *ferry__vsock_connect(const FerryVsockAddress *vs, const char *uri, int cancel_fd, FerryError **errp);
bool ferry__vsock_listen(FerryListener *l, const FerryVsockAddress *vs, FerryError **errp);
/* fd: both sides only take the fd (from the store or an inherited number) and wrap it. */
FerryChannel *ferry__fd_connect(const FerryFdAddress *fa, const char *uri, FerryError **errp);
bool ferry__fd_listen(FerryListener *l, const FerryFdAddress *fa, FerryError **errp);
/* exec: the source writes into the command's stdin; the destination reads its stdout (started at accept). */
FerryChannel *ferry__exec_connect(const FerryExecAddress *ea, const char *uri, FerryError **errp);
bool ferry__exec_listen(FerryListener *l, const FerryExecAddress *ea, FerryError **errp);
FerryChannel *ferry__exec_accept(FerryListener *l, const FerryExecAddress *ea, FerryError **errp);
/* file: the source writes from the offset on; the destination reads from the offset on. A FIFO is a stream:
 * connect waits for a reader until @cancel_fd becomes readable; listen opens it without waiting, and
 * wait_writer, called by accept, waits for a writer until @timeout_ms (-1: never) or the listener's shutdown
 * (true at once for a regular file). */
FerryChannel *ferry__file_connect(const FerryFileAddress *fa, const char *uri, int cancel_fd, FerryError **errp);
bool ferry__file_listen(FerryListener *l, const FerryFileAddress *fa, FerryError **errp);
bool ferry__file_wait_writer(FerryListener *l, int timeout_ms, FerryError **errp);
/* rdma: both always fail with the reason RDMA cannot be used on this host. */
FerryChannel *ferry__rdma_connect(const FerryInetAddress *ra, const char *uri, FerryError **errp);
bool ferry__rdma_listen(FerryListener *l, const FerryInetAddress *ra, FerryError **errp);

/* Peer description of an accepted socket ("tcp:10.0.0.1:51234"), or NULL if the kernel cannot tell. */
char *ferry__tcp_peer_desc(int fd);
/* QMP SocketAddress of a bound socket's local address (inet, unix incl. abstract, vsock), NULL (with *errp) if
 * getsockname fails. */
json_t *ferry__socket_local_address(int fd, FerryError **errp);

#endif
