/*
 * Channels: a connected, bidirectional byte pipe behind one ops table, one file per transport (tcp.c, unix.c,
 * ...). A transport only turns an address into a connected channel (or a listener that yields channels); it
 * knows nothing of the stream format. Buffering is the stream layer's job.
 *
 * Threads: a channel is used by one thread at a time for reading and one for writing, except shutdown, which any
 * thread may call to make blocked reads and writes fail at once (that is how migrate_cancel interrupts a
 * migration thread).
 */
#ifndef FERRY_CHANNEL_H
#define FERRY_CHANNEL_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>
#include <sys/uio.h>

#include <jansson.h>

#include "ferry/error.h"
#include "channel/address.h"

typedef struct FerryChannel FerryChannel;

typedef struct FerryChannelOps {
    const char *name; /* "tcp", "unix", ... */
    /* Like readv(2)/writev(2) with EINTR retried: bytes moved (0 on readv = end of stream), or -1 with *errp. */
    ssize_t (*readv)(FerryChannel *c, const struct iovec *iov, int iovcnt, FerryError **errp);
    ssize_t (*writev)(FerryChannel *c, const struct iovec *iov, int iovcnt, FerryError **errp);
    void (*shutdown)(FerryChannel *c);
    void (*close)(FerryChannel *c);
    /* Optional: the sender's last step after the end of the stream (exec: close the child's stdin, reap it and
     * fail on a non-zero exit status; file: flush to disk). NULL means nothing to do. */
    bool (*finish)(FerryChannel *c, FerryError **errp);
    /* Optional: see ferry__channel_set_timeout. NULL means the channel never waits for a peer (files). */
    bool (*set_timeout)(FerryChannel *c, unsigned ms, FerryError **errp);
    /* Optional: whether bytes are buffered inside the channel that a poll(2) on fd would not show (TLS records
     * already decrypted). NULL means never. */
    bool (*pending)(FerryChannel *c);
} FerryChannelOps;

struct FerryChannel {
    const FerryChannelOps *ops;
    int fd;
    char *desc;   /* peer description for messages, e.g. "tcp:127.0.0.1:4444" */
    bool one_way; /* no return path (exec, file, an fd that is a pipe): the destination cannot answer */
};

/* Connect to @addr, blocking until connected, refused, or @cancel_fd (-1 for none) becomes readable: then it fails
 * with "Failed to connect to '...': cancelled" (a file: FIFO waits for its reader the same way). Name resolution
 * itself is not interruptible. */
FerryChannel *ferry__channel_connect(const FerryMigrationAddress *addr, int cancel_fd, FerryError **errp);
/* Loop until everything is moved. read_all fails with "connection closed by peer" on an early end of stream. */
bool ferry__channel_write_all(FerryChannel *c, const void *buf, size_t len, FerryError **errp);
bool ferry__channel_writev_all(FerryChannel *c, struct iovec *iov, int iovcnt, FerryError **errp); /* may modify iov */
bool ferry__channel_read_all(FerryChannel *c, void *buf, size_t len, FerryError **errp);
bool ferry__channel_readv_all(FerryChannel *c, struct iovec *iov, int iovcnt, FerryError **errp); /* may modify iov */
/* Read up to @len bytes: returns bytes read, 0 at end of stream, -1 on error. */
ssize_t ferry__channel_read(FerryChannel *c, void *buf, size_t len, FerryError **errp);
/* Abort: blocked and later calls fail, and a TCP connection is reset when the channel is closed (socket.c says
 * why). */
void ferry__channel_shutdown(FerryChannel *c);
/* Make a read or write that moves nothing for @ms milliseconds fail with an error that names the io-timeout
 * parameter (0: wait forever, the default). It bounds a lack of progress, not the length of a transfer: a peer
 * that reads or sends slowly is not cut off, one that stops is. */
bool ferry__channel_set_timeout(FerryChannel *c, unsigned ms, FerryError **errp);
/* Whether a read would not block now (data, end of stream or an error are waiting), waiting up to @timeout_ms
 * (0: just look; -1: forever): 1 if so, 0 if not. Counts what the channel buffers itself (TLS). */
int ferry__channel_wait_readable(FerryChannel *c, int timeout_ms);
/* Run the ops' finish step if it has one (see FerryChannelOps.finish). */
bool ferry__channel_finish(FerryChannel *c, FerryError **errp);
/*
 * File descriptors over the channel (SCM_RIGHTS), for local migration: only a channel on an AF_UNIX stream
 * socket (unix:, or fd: / a socketpair end that is one) can carry them. FERRY_CHANNEL_MAX_FDS is the kernel's
 * limit per message (SCM_MAX_FD).
 *
 * send_fds writes @len (>= 1) bytes with @nfds (1..FERRY_CHANNEL_MAX_FDS) fds attached to the first of them; the
 * fds stay the caller's (the peer gets new references to the same open files). The reading side collects fds as
 * the bytes they came with are read, in order; take_fd hands the oldest one to the caller (-1 if none is
 * pending) and fds_pending counts them. Fds never taken are closed with the channel.
 */
#define FERRY_CHANNEL_MAX_FDS 253
bool ferry__channel_can_pass_fds(const FerryChannel *c);
bool ferry__channel_send_fds(FerryChannel *c, const void *buf, size_t len, const int *fds, size_t nfds,
                             FerryError **errp);
int ferry__channel_take_fd(FerryChannel *c);
size_t ferry__channel_fds_pending(const FerryChannel *c);
/*
 * The page pipe of unix-page-flipping (pagepipe.c): page data moved with vmsplice(SPLICE_F_GIFT) by the source
 * and read into place by the destination, beside the main channel that carries the records. Waits end when
 * @main is shut down.
 *
 * page_pipe_new creates the pipe: *writer is the source's end (free with page_pipe_free), *read_fd the end to
 * pass to the destination (the caller closes it once passed). page_pipe_reader_take wraps a received read end
 * (takes @fd on success). send moves the bytes of @iov into the pipe without copying them (the pages must stay
 * mapped until the destination has read them); recv reads exactly @len bytes.
 */
typedef struct FerryPagePipe FerryPagePipe;
bool ferry__page_pipe_new(FerryPagePipe **writer, int *read_fd, FerryError **errp);
FerryPagePipe *ferry__page_pipe_reader_take(int fd, FerryError **errp);
void ferry__page_pipe_free(FerryPagePipe *pp); /* NULL is a no-op */
bool ferry__page_pipe_send(FerryPagePipe *pp, const struct iovec *iov, int iovcnt, FerryChannel *main,
                           FerryError **errp);
bool ferry__page_pipe_recv(FerryPagePipe *pp, void *buf, size_t len, FerryChannel *main, FerryError **errp);
/* Wrap an already connected fd (a socketpair end, an fd received over SCM_RIGHTS, a pipe) into a channel named
 * @desc in messages. Takes @fd on success; returns NULL (and leaves @fd to the caller) if @fd is not open.
 * Sockets get the full semantics; a pipe, FIFO or character device is switched to non-blocking mode and waited
 * for in poll(), so that shutdown interrupts a blocked call on it too, and its writes give EPIPE instead of
 * raising SIGPIPE; for a regular file shutdown only fails later calls. one_way is set for non-sockets. */
FerryChannel *ferry__channel_new_fd(int fd, const char *desc);
/* A file: channel on a regular file (not a FIFO): its fd (the channel's), the file offset where the stream starts
 * and the file's name, for what positions data in the file itself (mapped-ram). false for any other channel. */
bool ferry__channel_file_info(const FerryChannel *c, int *fd, uint64_t *offset, const char **path);
void ferry__channel_free(FerryChannel *c); /* closes; NULL is a no-op */

/*
 * The process's named fds, given over QMP with getfd (SCM_RIGHTS) and used by "fd:NAME" addresses. The store owns
 * them. Thread-safe.
 */
/* Takes @fd on success. A name that exists already has its old fd closed and replaced (QEMU's getfd does that).
 * Names must be non-empty, at most FERRY_FDSTORE_MAX_NAME bytes, and must not start with a digit (those mean
 * inherited fd numbers); at most FERRY_FDSTORE_MAX names are held (a QMP client must not be able to fill the
 * process's memory and fd table with names). */
#define FERRY_FDSTORE_MAX 1024
#define FERRY_FDSTORE_MAX_NAME 255
bool ferry__fdstore_add(const char *name, int fd, FerryError **errp);
/* closefd: fails with "File descriptor named 'x' not found" for an unknown name. */
bool ferry__fdstore_close(const char *name, FerryError **errp);
/* Remove @name from the store and hand its fd to the caller; -1 if there is none. */
int ferry__fdstore_take(const char *name);

/*
 * TLS (tls.c): a channel that runs a GnuTLS session over a connected socket channel, the source as client and the
 * destination as server (docs/design.md, "TLS"). Every connection of a migration (the main channel and each
 * multifd channel) is wrapped and does its own handshake before any byte of the stream.
 *
 * A FerryTls holds what a migration's sessions share: references to its credentials object and (server) its
 * authorization object, and (client) the hostname the server's certificate must carry. ferry__tls_new looks the
 * objects up (errors name the id: "No TLS credentials with id 'x'", an endpoint that does not fit, a tls-authz
 * that could check nothing) and requires a hostname where a certificate is to be verified.
 */
typedef struct FerryTls FerryTls;
FerryTls *ferry__tls_new(const char *creds_id, bool server, const char *hostname, const char *authz_id,
                         FerryError **errp);
FerryTls *ferry__tls_ref(FerryTls *t);
void ferry__tls_unref(FerryTls *t); /* NULL is a no-op */
const char *ferry__tls_creds_name(const FerryTls *t);
/* Wrap @inner (taken in every case; freed with the new channel, or at once on failure). No I/O yet. */
FerryChannel *ferry__tls_channel_new(FerryChannel *inner, FerryTls *tls, FerryError **errp);
/*
 * The handshake and the checks of docs/design.md, "TLS". Errors start "TLS handshake with 'DESC' failed: " and
 * say why: "certificate not trusted: ...", "hostname mismatch: ...", "'CN=...' is not in authz list 'a'", "peer
 * did not speak TLS (...)", "the peer refused the session ...: TLS alert '...'". Interrupted by a shutdown of the
 * channel from another thread.
 */
bool ferry__tls_channel_handshake(FerryChannel *c, FerryError **errp);
bool ferry__channel_is_tls(const FerryChannel *c);
/* After a failed handshake: the channel on which the peer can still be told why, or NULL. That is the TLS channel
 * itself when the session was established and this end refused the peer afterwards (server checks), the inner
 * channel when the peer spoke plaintext (it understands nothing else), and NULL otherwise. */
FerryChannel *ferry__tls_channel_report_path(FerryChannel *c);
/* {"creds": ID, "protocol": "TLS1.3", "cipher": "AES-256-GCM", "peer": IDENTITY} of an established session (peer
 * only when known: the server's DN on a verifying client, the client's DN or PSK username on a server). */
json_t *ferry__tls_channel_info(FerryChannel *c);

typedef struct FerryListener FerryListener;

/* Bind and listen on @addr. For the one-way transports (exec, file) and fd, "listening" prepares the single
 * channel that accept will return (exec: the child is started at accept; file: opened and positioned at the
 * offset, a FIFO opened without waiting for a writer; fd: the named or numbered fd is taken). Never blocks. For
 * tcp with port 0 the kernel's choice is reported by ferry__listener_addresses(). For unix an existing socket
 * file at the path is replaced, with a warning logged when a listener is still alive behind it. */
FerryListener *ferry__listener_new(const FerryMigrationAddress *addr, FerryError **errp);
/* Block until a peer connects (a file: FIFO: until a writer has written or closed), or ferry__listener_shutdown()
 * is called (then fails with "cancelled"). A unix listener checks every second that its path still names its
 * socket, and fails saying it "was removed" or "was taken over by another process" when not. */
FerryChannel *ferry__listener_accept(FerryListener *l, FerryError **errp);
/* The same, failing after @timeout_ms (-1: never). */
FerryChannel *ferry__listener_accept_timeout(FerryListener *l, int timeout_ms, FerryError **errp);
/* Whether the listener is a listening socket, which can accept more than one channel (tcp, unix, vsock). */
bool ferry__listener_is_socket(const FerryListener *l);
void ferry__listener_shutdown(FerryListener *l); /* any thread */
/* QMP SocketAddress list of what is really bound: [{"type":"inet","host":"127.0.0.1","port":"40123"}] or
 * [{"type":"unix","path":"/tmp/x"}] (plus "abstract": true for an abstract name), vsock {"type":"vsock","cid",
 * "port"}; for fd [{"type":"fd","str":NAME}]; for exec and file the MigrationAddress JSON ({"transport":"file",
 * "filename":...,"offset":...}). New reference. */
json_t *ferry__listener_addresses(const FerryListener *l);
void ferry__listener_free(FerryListener *l); /* closes, removes a unix socket file it created; NULL no-op */

#endif
