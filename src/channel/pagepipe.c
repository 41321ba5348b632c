/*
 * The page pipe: the side channel of local migration with unix-page-flipping (seed 002). The source creates a
 * pipe, passes its read end to the destination over the UNIX socket (an FDS record), and then moves page data
 * into it with vmsplice(SPLICE_F_GIFT) while the record that says where the pages go travels on the socket. The
 * destination read()s the data straight into place.
 *
 * What the kernel really does (Linux 6.x, docs/local-migration.md has the measurements): vmsplice with
 * SPLICE_F_GIFT takes references to the source's pages and puts them in the pipe's buffers; nothing is copied on
 * the sending side. Reading the pipe copies the data into the reader's memory: one copy, where a socket makes two
 * (into the socket buffer, out of it). No mainline kernel moves a gifted page into the reader's address space, so
 * "page flipping" is one copy, not zero. A page the source writes after it was spliced and before it was read
 * may reach the destination in its old or its new state; either way the write is caught by dirty tracking and
 * the page sent again, and the last copy wins.
 *
 * This file moves bytes between memory and the pipe and knows nothing of records. Waits poll with a short
 * timeout so that the migration's main channel being shut down (cancel, quit) ends them.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "channel/channel-int.h"
#include "util/util.h"

/* Large enough to hold a whole RAM run (256 pages of 4 KiB), so that one vmsplice rarely waits; the kernel caps
 * it at /proc/sys/fs/pipe-max-size for unprivileged processes. */
#define PAGE_PIPE_SIZE (1 << 20)
#define PAGE_PIPE_POLL_MS 100

struct FerryPagePipe {
    int fd;
    bool writer;
};

bool ferry__page_pipe_new(FerryPagePipe **writer, int *read_fd, FerryError **errp)
{
    int p[2];
    if (pipe2(p, O_CLOEXEC | O_NONBLOCK) != 0) {
        ferry_error_setg_errno(errp, errno, "cannot create the page pipe");
        return false;
    }
    /* Best effort: a smaller pipe only means more waits. */
    if (fcntl(p[1], F_SETPIPE_SZ, PAGE_PIPE_SIZE) < 0) {
        ferry__log(FERRY_LOG_DEBUG, "page pipe: F_SETPIPE_SZ %d failed: %s", PAGE_PIPE_SIZE, strerror(errno));
    }
    FerryPagePipe *pp = ferry__xcalloc(1, sizeof(*pp));
    pp->fd = p[1];
    pp->writer = true;
    *writer = pp;
    *read_fd = p[0];
    return true;
}

FerryPagePipe *ferry__page_pipe_reader_take(int fd, FerryError **errp)
{
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISFIFO(st.st_mode)) {
        ferry_error_setg(errp, "the page pipe received is not a pipe");
        return NULL;
    }
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) != 0) {
        ferry_error_setg_errno(errp, errno, "page pipe: cannot make it non-blocking");
        return NULL;
    }
    FerryPagePipe *pp = ferry__xcalloc(1, sizeof(*pp));
    pp->fd = fd;
    return pp;
}

void ferry__page_pipe_free(FerryPagePipe *pp)
{
    if (pp) {
        close(pp->fd);
        free(pp);
    }
}

/* Waits for @events on the pipe; false with *errp set if @main was shut down meanwhile, poll failed, or nothing
 * happened for @main's io-timeout (the pipe is part of that channel). */
static bool wait_pipe(FerryPagePipe *pp, short events, FerryChannel *main, const char *what, FerryError **errp)
{
    unsigned timeout_ms = ((FerryFdChannel *)main)->timeout_ms;
    int64_t start = ferry__clock_ms();
    for (;;) {
        if (ferry__fd_channel_is_shut(main)) {
            ferry_error_setg(errp, "%s the page pipe: the migration channel was shut down", what);
            return false;
        }
        if (timeout_ms && ferry__clock_ms() - start >= (int64_t)timeout_ms) {
            ferry_error_setg(errp, "%s the page pipe: no progress for %u ms (io-timeout)", what, timeout_ms);
            return false;
        }
        struct pollfd p = { .fd = pp->fd, .events = events };
        int n = poll(&p, 1, PAGE_PIPE_POLL_MS);
        if (n > 0) {
            return true;
        }
        if (n < 0 && errno != EINTR) {
            ferry_error_setg_errno(errp, errno, "%s the page pipe", what);
            return false;
        }
    }
}

bool ferry__page_pipe_send(FerryPagePipe *pp, const struct iovec *iov, int iovcnt, FerryChannel *main,
                           FerryError **errp)
{
    struct iovec stack[64];
    struct iovec *v = iovcnt <= 64 ? stack : ferry__xmalloc(sizeof(*v) * (size_t)iovcnt);
    memcpy(v, iov, sizeof(*v) * (size_t)iovcnt);
    struct iovec *cur = v;
    int left = iovcnt;
    bool ok = true;
    while (left > 0) {
        /* vmsplice takes at most IOV_MAX segments a call; RAM runs have at most 256. */
        ssize_t n = ferry__pipe_write_nosigpipe(pp->fd, cur, FERRY_MIN(left, 1024), true,
                                                SPLICE_F_GIFT | SPLICE_F_NONBLOCK);
        if (n < 0) {
            if (errno == EAGAIN) {
                if (!(ok = wait_pipe(pp, POLLOUT, main, "writing to", errp))) {
                    break;
                }
                continue;
            }
            if (errno == EINTR) {
                continue;
            }
            ferry_error_setg_errno(errp, errno, errno == EPIPE ? "the destination closed the page pipe"
                                                               : "writing to the page pipe");
            ok = false;
            break;
        }
        size_t done = (size_t)n;
        while (left > 0 && done >= cur->iov_len) {
            done -= cur->iov_len;
            cur++;
            left--;
        }
        if (left > 0) {
            cur->iov_base = (char *)cur->iov_base + done;
            cur->iov_len -= done;
        }
    }
    if (v != stack) {
        free(v);
    }
    return ok;
}

bool ferry__page_pipe_recv(FerryPagePipe *pp, void *buf, size_t len, FerryChannel *main, FerryError **errp)
{
    uint8_t *p = buf;
    while (len > 0) {
        ssize_t n = read(pp->fd, p, len);
        if (n > 0) {
            p += n;
            len -= (size_t)n;
            continue;
        }
        if (n == 0) {
            ferry_error_setg(errp, "the source closed the page pipe with %zu bytes of page data still expected",
                             len);
            return false;
        }
        if (errno == EAGAIN) {
            if (!wait_pipe(pp, POLLIN, main, "reading from", errp)) {
                return false;
            }
            continue;
        }
        if (errno != EINTR) {
            ferry_error_setg_errno(errp, errno, "reading from the page pipe");
            return false;
        }
    }
    return true;
}
