/*
 * The file transport (QEMU's file: migration): the source writes the stream into a file from an offset on, the
 * destination reads it back from the same offset, so that restoring from a file is a migration from a file.
 * The bytes before the offset are left as they are (a caller may keep its own header there); the file is cut at
 * the offset first, so that a shorter stream never leaves the tail of an older one behind. The source's finish
 * flushes the data to disk. There is no return path: one_way is set. A regular file never blocks for long, so
 * shutdown only makes later calls fail.
 *
 * A FIFO is a stream (offset 0 only, nothing to cut or flush), for piping a migration through another program.
 * Nothing here may block where cancel or quit cannot reach it: the source opens the FIFO non-blocking, which
 * fails while there is no reader, and retries until a reader comes or the migration is cancelled; the
 * destination's open never blocks (a read end opens at once), and the wait for a writer happens at accept, in
 * the incoming thread, where the listener's shutdown ends it. Then the fd channel's poll-based I/O takes over.
 * Other special files (directories, character devices, sockets; block devices on the source) are refused
 * naming what they are: they cannot hold or carry a stream the way file: means.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include "channel/channel-int.h"
#include "util/util.h"

/* How long the source waits between attempts to open a FIFO that has no reader yet: the kernel offers no wait
 * for a reader other than a blocking open(), which cancel could not interrupt. */
#define FIFO_RETRY_MS 20

typedef struct FileChannel {
    FerryFdChannel fdc; /* first: the generic fd channel does the I/O */
    bool fifo;
    uint64_t offset;    /* where the stream starts in the file */
    char *path;
} FileChannel;

static bool file_finish(FerryChannel *c, FerryError **errp)
{
    /* A FIFO has no disk to flush to: its reader sees the end of the stream when the channel is closed. */
    if (c->fd >= 0 && !((FileChannel *)c)->fifo && fdatasync(c->fd) < 0) {
        ferry_error_setg_errno(errp, errno, "Failed to flush '%s' to disk", c->desc);
        return false;
    }
    return true;
}

static void file_close(FerryChannel *c)
{
    free(((FileChannel *)c)->path);
    ((FileChannel *)c)->path = NULL;
    ferry__fd_channel_close(c);
}

static const FerryChannelOps file_ops = {
    .name = "file",
    .readv = ferry__fd_channel_readv,
    .writev = ferry__fd_channel_writev,
    .shutdown = ferry__fd_channel_shutdown,
    .close = file_close,
    .finish = file_finish,
    /* Only a FIFO waits for a peer; for a regular file the timeout is never used. */
    .set_timeout = ferry__fd_channel_set_timeout,
};

/* Whether @st (of @name) can carry the stream: a regular file, a FIFO at offset 0, or (destination only) a block
 * device, which can be read from an offset but not cut at one. */
static bool check_kind(const struct stat *st, const char *name, const FerryFileAddress *fa, bool source,
                       FerryError **errp)
{
    if (S_ISREG(st->st_mode) || (S_ISBLK(st->st_mode) && !source)) {
        return true;
    }
    if (S_ISFIFO(st->st_mode)) {
        if (fa->offset != 0) {
            ferry_error_setg(errp, "Invalid offset %" PRIu64 " for '%s': it is a FIFO, which cannot be positioned "
                             "(only offset 0)", fa->offset, name);
            return false;
        }
        return true;
    }
    const char *what = S_ISDIR(st->st_mode)    ? "a directory"
                       : S_ISCHR(st->st_mode)  ? "a character device"
                       : S_ISBLK(st->st_mode)  ? "a block device (it cannot be cut at the offset)"
                       : S_ISSOCK(st->st_mode) ? "a socket (unix:PATH connects to one)"
                                               : "not a regular file";
    ferry_error_setg(errp, "Cannot use '%s' for a file: migration: it is %s; a regular file or a FIFO is needed",
                     name, what);
    return false;
}

/* Opens @name for the source without blocking: a FIFO without a reader is retried until one opens it or
 * @cancel_fd becomes readable. */
static int open_for_writing(const char *name, int cancel_fd, FerryError **errp)
{
    for (;;) {
        /* No O_TRUNC: what lies before the offset stays; ftruncate drops only what follows it. */
        int fd = open(name, O_WRONLY | O_CREAT | O_NONBLOCK | O_CLOEXEC, 0600);
        if (fd >= 0) {
            return fd;
        }
        int err = errno;
        struct stat st;
        if (err == ENXIO && stat(name, &st) == 0 && S_ISFIFO(st.st_mode)) {
            if (ferry__cancel_wait(cancel_fd, FIFO_RETRY_MS)) {
                ferry_error_setg(errp, "Failed to open FIFO '%s' for writing: cancelled while waiting for a reader",
                                 name);
                return -1;
            }
            continue;
        }
        if (err != EINTR) {
            ferry_error_setg_errno(errp, err, "Failed to open '%s' for writing", name);
            return -1;
        }
    }
}

/* Opens @name (checked before the open, so that a device is never opened, and again after it, in case the path
 * changed in between) and positions a regular file at the offset. Returns the fd, *fifo set, or -1. */
static int open_checked(const FerryFileAddress *fa, bool source, int cancel_fd, bool *fifo, FerryError **errp)
{
    const char *name = fa->filename;
    struct stat st;
    if (stat(name, &st) == 0 && !check_kind(&st, name, fa, source, errp)) {
        return -1;
    }
    int fd = source ? open_for_writing(name, cancel_fd, errp) : open(name, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        if (!source) {
            ferry_error_setg_errno(errp, errno, "Failed to open '%s' for reading", name);
        }
        return -1;
    }
    if (fstat(fd, &st) < 0) {
        ferry_error_setg_errno(errp, errno, "Failed to open '%s'", name);
        close(fd);
        return -1;
    }
    if (!check_kind(&st, name, fa, source, errp)) {
        close(fd);
        return -1;
    }
    *fifo = S_ISFIFO(st.st_mode);
    if (*fifo) {
        return fd; /* stays non-blocking: the fd channel polls it */
    }
    off_t off = (off_t)fa->offset;
    int flags = fcntl(fd, F_GETFL);
    if (flags >= 0) {
        (void)fcntl(fd, F_SETFL, flags & ~O_NONBLOCK); /* no effect on a file, but the channel expects blocking */
    }
    if (source && ftruncate(fd, off) < 0) {
        ferry_error_setg_errno(errp, errno, "Failed to truncate '%s' at offset %" PRIu64, name, fa->offset);
        close(fd);
        return -1;
    }
    if (lseek(fd, off, SEEK_SET) < 0) {
        ferry_error_setg_errno(errp, errno, "Failed to seek '%s' to offset %" PRIu64, name, fa->offset);
        close(fd);
        return -1;
    }
    return fd;
}

static FerryChannel *file_open(const FerryFileAddress *fa, const char *uri, bool source, int cancel_fd,
                               FerryError **errp)
{
    const char *name = fa->filename;
    if (!name || !*name) {
        ferry_error_setg(errp, "Invalid file address '%s': no file name given", uri);
        return NULL;
    }
    if (fa->offset > (uint64_t)INT64_MAX) {
        ferry_error_setg(errp, "Invalid offset %" PRIu64 " for file '%s'", fa->offset, name);
        return NULL;
    }
    bool fifo = false;
    int fd = open_checked(fa, source, cancel_fd, &fifo, errp);
    if (fd < 0) {
        return NULL;
    }
    FileChannel *fc = ferry__xcalloc(1, sizeof(*fc));
    ferry__fd_channel_init(&fc->fdc, &file_ops, fd, uri);
    fc->fdc.base.one_way = true;
    fc->fifo = fifo;
    fc->offset = fa->offset;
    fc->path = ferry__xstrdup(name);
    return &fc->fdc.base;
}

bool ferry__channel_file_info(const FerryChannel *c, int *fd, uint64_t *offset, const char **path)
{
    if (!c || c->ops != &file_ops || ((const FileChannel *)c)->fifo) {
        return false;
    }
    *fd = c->fd;
    *offset = ((const FileChannel *)c)->offset;
    *path = ((const FileChannel *)c)->path;
    return true;
}

FerryChannel *ferry__file_connect(const FerryFileAddress *fa, const char *uri, int cancel_fd, FerryError **errp)
{
    return file_open(fa, uri, true, cancel_fd, errp);
}

bool ferry__file_listen(FerryListener *l, const FerryFileAddress *fa, FerryError **errp)
{
    l->pending = file_open(fa, l->uri, false, -1, errp);
    return l->pending != NULL;
}

bool ferry__file_wait_writer(FerryListener *l, int timeout_ms, FerryError **errp)
{
    FerryChannel *c = l->pending;
    if (!((FileChannel *)c)->fifo) {
        return true;
    }
    /* A read end with no writer yet polls as nothing (Linux reports POLLHUP only after a writer has come and
     * gone): POLLIN or POLLHUP means a writer opened it. */
    struct pollfd pfd[2] = {
        { .fd = c->fd, .events = POLLIN },
        { .fd = l->wake_fd, .events = POLLIN },
    };
    int n;
    while ((n = poll(pfd, 2, timeout_ms)) < 0 && errno == EINTR) {
    }
    if (n < 0) {
        ferry_error_setg_errno(errp, errno, "Failed to accept on '%s'", l->uri);
        return false;
    }
    if (pfd[1].revents) {
        ferry_error_setg(errp, "Failed to accept on '%s': cancelled while waiting for a writer to the FIFO", l->uri);
        return false;
    }
    if (n == 0) {
        ferry_error_setg(errp, "Failed to accept on '%s': no writer opened the FIFO within %d ms", l->uri,
                         timeout_ms);
        return false;
    }
    return true;
}
