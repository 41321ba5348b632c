/*
 * The file transport (QEMU's file: migration): the source writes the stream into a file from an offset on, the
 * destination reads it back from the same offset, so that restoring from a file is a migration from a file.
 * The bytes before the offset are left as they are (a caller may keep its own header there); the file is cut at
 * the offset first, so that a shorter stream never leaves the tail of an older one behind. The source's finish
 * flushes the data to disk. There is no return path: one_way is set. A regular file never blocks for long, so
 * shutdown only makes later calls fail.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

#include "channel/channel-int.h"
#include "util/util.h"

static bool file_finish(FerryChannel *c, FerryError **errp)
{
    if (c->fd >= 0 && fdatasync(c->fd) < 0) {
        ferry_error_setg_errno(errp, errno, "Failed to flush '%s' to disk", c->desc);
        return false;
    }
    return true;
}

static void file_close(FerryChannel *c)
{
    ferry__fd_channel_close(c);
}

static const FerryChannelOps file_ops = {
    .name = "file",
    .readv = ferry__fd_channel_readv,
    .writev = ferry__fd_channel_writev,
    .shutdown = ferry__fd_channel_shutdown,
    .close = file_close,
    .finish = file_finish,
};

static FerryChannel *file_open(const FerryFileAddress *fa, const char *uri, bool source, FerryError **errp)
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
    off_t off = (off_t)fa->offset;
    int fd;
    if (source) {
        /* No O_TRUNC: what lies before the offset stays; ftruncate drops only what follows it. */
        fd = open(name, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
        if (fd < 0) {
            ferry_error_setg_errno(errp, errno, "Failed to open '%s' for writing", name);
            return NULL;
        }
        if (ftruncate(fd, off) < 0) {
            ferry_error_setg_errno(errp, errno, "Failed to truncate '%s' at offset %" PRIu64, name, fa->offset);
            close(fd);
            return NULL;
        }
    } else {
        fd = open(name, O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            ferry_error_setg_errno(errp, errno, "Failed to open '%s' for reading", name);
            return NULL;
        }
    }
    if (lseek(fd, off, SEEK_SET) < 0) {
        ferry_error_setg_errno(errp, errno, "Failed to seek '%s' to offset %" PRIu64, name, fa->offset);
        close(fd);
        return NULL;
    }
    FerryFdChannel *fc = ferry__xcalloc(1, sizeof(*fc));
    ferry__fd_channel_init(fc, &file_ops, fd, uri);
    fc->base.one_way = true;
    return &fc->base;
}

FerryChannel *ferry__file_connect(const FerryFileAddress *fa, const char *uri, FerryError **errp)
{
    return file_open(fa, uri, true, errp);
}

bool ferry__file_listen(FerryListener *l, const FerryFileAddress *fa, FerryError **errp)
{
    l->pending = file_open(fa, l->uri, false, errp);
    return l->pending != NULL;
}
