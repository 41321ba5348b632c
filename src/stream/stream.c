/*
 * The buffered stream over a channel (stream/stream.h): a 256 KiB write buffer, a 256 KiB read buffer, byte
 * counters, a running CRC32C in each direction (for record trailers) and a sticky error. It knows nothing of
 * record framing (src/wire does). Large reads and ferry__stream_write_iov bypass the buffers so that page data is
 * not copied twice (with the CRC on, large reads go through the read buffer instead, whose copy out also
 * checksums, so that RAM is touched once); ferry__stream_write always copies, so that its CRC covers exactly the
 * bytes that are sent even when the caller's memory changes meanwhile (RAM of a running workload).
 *
 * The writer and the reader may be different threads; they share only the latched error, which is set once
 * with a compare-and-swap and never changed or freed before ferry__stream_free, so reading it needs no lock.
 */
#include <errno.h>
#include <stdlib.h>
#include <unistd.h>
#include <string.h>

#include "stream/stream.h"
#include "util/util.h"
#include "wire/wire.h" /* byte order, kept in one place */

#define STREAM_BUF_SIZE (256 * 1024)
/* Stack iovec arrays up to this size in write_iov; longer lists are copied to the heap. */
#define STREAM_IOV_STACK 64

struct FerryStream {
    FerryChannel *c;
    FerryError *err; /* atomic: NULL until the first error */

    /* Writer side. */
    uint8_t *wbuf;
    size_t wlen;
    uint64_t written;
    uint32_t wcrc;
    bool crc;        /* compute the running CRCs (both directions); on by default */

    /* Reader side: rbuf[rpos, rlen) holds bytes read ahead of the caller. */
    uint8_t *rbuf;
    size_t rpos, rlen;
    uint64_t read;
    uint32_t rcrc;
};

FerryStream *ferry__stream_new(FerryChannel *c)
{
    FerryStream *s = ferry__xcalloc(1, sizeof(*s));
    s->c = c;
    s->crc = true;
    s->wbuf = ferry__xmalloc(STREAM_BUF_SIZE);
    s->rbuf = ferry__xmalloc(STREAM_BUF_SIZE);
    return s;
}

void ferry__stream_free(FerryStream *s)
{
    if (!s) {
        return;
    }
    ferry_error_free(s->err);
    free(s->wbuf);
    free(s->rbuf);
    free(s);
}

FerryChannel *ferry__stream_channel(FerryStream *s)
{
    return s->c;
}

/* ---- the sticky error ---- */

bool ferry__stream_failed(const FerryStream *s)
{
    return __atomic_load_n(&s->err, __ATOMIC_ACQUIRE) != NULL;
}

void ferry__stream_set_error(FerryStream *s, FerryError *err)
{
    if (!err) {
        return;
    }
    FerryError *expected = NULL;
    if (!__atomic_compare_exchange_n(&s->err, &expected, err, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
        /* The first error is the one that explains the failure; later ones are consequences. */
        ferry_error_free(err);
    }
}

bool ferry__stream_check(const FerryStream *s, FerryError **errp)
{
    FerryError *err = __atomic_load_n(&s->err, __ATOMIC_ACQUIRE);
    if (!err) {
        return true;
    }
    ferry_error_propagate(errp, ferry_error_copy(err));
    return false;
}

/* ---- writing ---- */

static bool write_out(FerryStream *s, const void *buf, size_t len)
{
    FerryError *err = NULL;
    if (!ferry__channel_write_all(s->c, buf, len, &err)) {
        ferry__stream_set_error(s, err);
        return false;
    }
    return true;
}

bool ferry__stream_flush(FerryStream *s)
{
    if (ferry__stream_failed(s)) {
        return false;
    }
    if (s->wlen == 0) {
        return true;
    }
    size_t len = s->wlen;
    /* The buffer is considered consumed even on failure: nothing will be written after an error anyway. */
    s->wlen = 0;
    return write_out(s, s->wbuf, len);
}

void ferry__stream_write(FerryStream *s, const void *buf, size_t len)
{
    const uint8_t *p = buf;
    while (len > 0 && !ferry__stream_failed(s)) {
        size_t n = FERRY_MIN(len, STREAM_BUF_SIZE - s->wlen);
        /* Checksum the copy, not the source: the copy is what goes out. One pass does both. */
        if (s->crc) {
            s->wcrc = ferry__crc32c_copy(s->wcrc, s->wbuf + s->wlen, p, n);
        } else {
            memcpy(s->wbuf + s->wlen, p, n);
        }
        s->wlen += n;
        s->written += n;
        p += n;
        len -= n;
        if (s->wlen == STREAM_BUF_SIZE) {
            ferry__stream_flush(s);
        }
    }
}

void ferry__stream_write_with_fds(FerryStream *s, const void *buf, size_t len, const int *fds, size_t nfds)
{
    if (!ferry__stream_flush(s)) {
        return;
    }
    size_t groups = FERRY_DIV_ROUND_UP(nfds, FERRY_CHANNEL_MAX_FDS);
    FerryError *err = NULL;
    if (groups == 0 || len < groups) {
        ferry_error_setg(&err, "cannot attach %zu file descriptors to %zu bytes", nfds, len);
        ferry__stream_set_error(s, err);
        return;
    }
    const uint8_t *p = buf;
    for (size_t g = 0; g < groups; g++) {
        size_t from = g * len / groups, to = (g + 1) * len / groups;
        size_t first = g * FERRY_CHANNEL_MAX_FDS, n = FERRY_MIN(nfds - first, (size_t)FERRY_CHANNEL_MAX_FDS);
        if (!ferry__channel_send_fds(s->c, p + from, to - from, fds + first, n, &err)) {
            ferry__stream_set_error(s, err);
            return;
        }
    }
    if (s->crc) {
        s->wcrc = ferry__crc32c(s->wcrc, buf, len);
    }
    s->written += len;
}

void ferry__stream_write_u8(FerryStream *s, uint8_t v)
{
    ferry__stream_write(s, &v, 1);
}

void ferry__stream_write_be16(FerryStream *s, uint16_t v)
{
    uint8_t b[2];
    ferry__put_be16(b, v);
    ferry__stream_write(s, b, sizeof(b));
}

void ferry__stream_write_be32(FerryStream *s, uint32_t v)
{
    uint8_t b[4];
    ferry__put_be32(b, v);
    ferry__stream_write(s, b, sizeof(b));
}

void ferry__stream_write_be64(FerryStream *s, uint64_t v)
{
    uint8_t b[8];
    ferry__put_be64(b, v);
    ferry__stream_write(s, b, sizeof(b));
}

void ferry__stream_write_iov(FerryStream *s, const struct iovec *iov, int iovcnt)
{
    if (!ferry__stream_flush(s) || iovcnt <= 0) {
        return;
    }
    /* writev_all advances the iovec it is given: work on a copy, the caller's stays intact. */
    struct iovec stack[STREAM_IOV_STACK];
    struct iovec *copy = iovcnt <= STREAM_IOV_STACK ? stack : ferry__xmalloc(sizeof(*copy) * (size_t)iovcnt);
    uint64_t total = 0;
    for (int i = 0; i < iovcnt; i++) {
        copy[i] = iov[i];
        total += iov[i].iov_len;
        if (s->crc) {
            s->wcrc = ferry__crc32c(s->wcrc, iov[i].iov_base, iov[i].iov_len);
        }
    }
    s->written += total;
    FerryError *err = NULL;
    if (!ferry__channel_writev_all(s->c, copy, iovcnt, &err)) {
        ferry__stream_set_error(s, err);
    }
    if (copy != stack) {
        free(copy);
    }
}

uint64_t ferry__stream_bytes_written(const FerryStream *s)
{
    return s->written;
}

void ferry__stream_set_crc(FerryStream *s, bool on)
{
    s->crc = on;
    s->wcrc = 0;
    s->rcrc = 0;
}

bool ferry__stream_crc(const FerryStream *s)
{
    return s->crc;
}

void ferry__stream_write_crc_reset(FerryStream *s)
{
    s->wcrc = 0;
}

uint32_t ferry__stream_write_crc(const FerryStream *s)
{
    return s->wcrc;
}

/* ---- reading ---- */

/* One read call of whatever is available into @buf; false (error latched) on failure or end of stream. */
static bool read_some(FerryStream *s, void *buf, size_t len, size_t *got)
{
    FerryError *err = NULL;
    ssize_t n = ferry__channel_read(s->c, buf, len, &err);
    if (n < 0) {
        ferry__stream_set_error(s, err);
        return false;
    }
    if (n == 0) {
        ferry_error_setg(&err, "Failed to read from '%s': connection closed by peer (unexpected end of stream)",
                         s->c->desc);
        ferry__stream_set_error(s, err);
        return false;
    }
    *got = (size_t)n;
    return true;
}

/* Delivers @len bytes to @buf, or discards them if @buf is NULL (skip). */
static bool stream_read(FerryStream *s, uint8_t *buf, uint64_t len)
{
    if (ferry__stream_failed(s)) {
        return false;
    }
    while (len > 0) {
        size_t avail = s->rlen - s->rpos;
        if (avail > 0) {
            size_t n = (size_t)FERRY_MIN((uint64_t)avail, len);
            if (buf) {
                if (s->crc) {
                    s->rcrc = ferry__crc32c_copy(s->rcrc, buf, s->rbuf + s->rpos, n);
                } else {
                    memcpy(buf, s->rbuf + s->rpos, n);
                }
                buf += n;
            } else if (s->crc) {
                s->rcrc = ferry__crc32c(s->rcrc, s->rbuf + s->rpos, n);
            }
            s->rpos += n;
            s->read += n;
            len -= n;
            continue;
        }
        size_t got;
        if (buf && len >= STREAM_BUF_SIZE && !s->crc) {
            /* Large reads go straight into the caller's memory: page data is copied once, by the kernel. Not with
             * the CRC on: the checksum would then be a second pass over the caller's memory (RAM), and on the
             * machine of docs/memory.md each touch of the destination's RAM costs more than the copy into a read
             * buffer that stays in cache. Through the buffer, ferry__crc32c_copy moves each piece into RAM and
             * checksums it in one pass, so RAM is touched once either way. */
            if (!read_some(s, buf, (size_t)len, &got)) {
                return false;
            }
            buf += got;
            s->read += got;
            len -= got;
            continue;
        }
        s->rpos = s->rlen = 0;
        if (!read_some(s, s->rbuf, STREAM_BUF_SIZE, &got)) {
            return false;
        }
        s->rlen = got;
    }
    return true;
}

bool ferry__stream_read(FerryStream *s, void *buf, size_t len)
{
    return stream_read(s, buf, len);
}

bool ferry__stream_read_u8(FerryStream *s, uint8_t *v)
{
    return stream_read(s, v, 1);
}

bool ferry__stream_read_be16(FerryStream *s, uint16_t *v)
{
    uint8_t b[2];
    if (!stream_read(s, b, sizeof(b))) {
        return false;
    }
    *v = ferry__get_be16(b);
    return true;
}

bool ferry__stream_read_be32(FerryStream *s, uint32_t *v)
{
    uint8_t b[4];
    if (!stream_read(s, b, sizeof(b))) {
        return false;
    }
    *v = ferry__get_be32(b);
    return true;
}

bool ferry__stream_read_be64(FerryStream *s, uint64_t *v)
{
    uint8_t b[8];
    if (!stream_read(s, b, sizeof(b))) {
        return false;
    }
    *v = ferry__get_be64(b);
    return true;
}

bool ferry__stream_skip(FerryStream *s, uint64_t len)
{
    return stream_read(s, NULL, len);
}

bool ferry__stream_read_seek(FerryStream *s, uint64_t offset)
{
    if (ferry__stream_failed(s)) {
        return false;
    }
    if (offset < s->read) {
        FerryError *err = NULL;
        ferry_error_setg(&err, "cannot go back in the stream from offset %llu to %llu", (unsigned long long)s->read,
                         (unsigned long long)offset);
        ferry__stream_set_error(s, err);
        return false;
    }
    int fd;
    uint64_t base;
    const char *path;
    if (!ferry__channel_file_info(s->c, &fd, &base, &path)) {
        return stream_read(s, NULL, offset - s->read); /* a pipe: read through */
    }
    if (lseek(fd, (off_t)(base + offset), SEEK_SET) < 0) {
        FerryError *err = NULL;
        ferry_error_setg_errno(&err, errno, "cannot seek '%s' to offset %llu", path,
                               (unsigned long long)(base + offset));
        ferry__stream_set_error(s, err);
        return false;
    }
    s->rpos = s->rlen = 0;
    s->read = offset;
    return true;
}

bool ferry__stream_write_seek(FerryStream *s, uint64_t offset)
{
    int fd;
    uint64_t base;
    const char *path;
    if (!ferry__stream_flush(s)) {
        return false;
    }
    if (!ferry__channel_file_info(s->c, &fd, &base, &path)) {
        FerryError *err = NULL;
        ferry_error_setg(&err, "the stream's channel '%s' is not a regular file, which positioned data needs",
                         s->c->desc);
        ferry__stream_set_error(s, err);
        return false;
    }
    if (lseek(fd, (off_t)(base + offset), SEEK_SET) < 0) {
        FerryError *err = NULL;
        ferry_error_setg_errno(&err, errno, "cannot seek '%s' to offset %llu", path,
                               (unsigned long long)(base + offset));
        ferry__stream_set_error(s, err);
        return false;
    }
    s->written = offset;
    return true;
}

uint64_t ferry__stream_bytes_read(const FerryStream *s)
{
    return s->read;
}

void ferry__stream_read_crc_reset(FerryStream *s)
{
    s->rcrc = 0;
}

uint32_t ferry__stream_read_crc(const FerryStream *s)
{
    return s->rcrc;
}
