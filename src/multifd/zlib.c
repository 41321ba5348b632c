/*
 * multifd-compression=zlib, with the system's zlib: a packet's payload is one complete zlib stream over the data of
 * its non-zero pages, so that a packet decodes on its own (level 0..9 from multifd-zlib-level). Each channel
 * thread keeps one deflate or inflate stream, reset from packet to packet, and a buffer for the compressed bytes;
 * the stream is read from and decompressed into scattered pages (an iovec) without an intermediate buffer. The
 * error of a bad stream names zlib's reason. The packet-level steps every compressing method shares are
 * methods.c's.
 */
#include <stdlib.h>

#include <zlib.h>

#include "multifd/multifd-int.h"
#include "util/util.h"

typedef struct ZlibState {
    z_stream z;
    uint8_t *cbuf;
} ZlibState;

static bool zlib_send_setup(const FerryMultifdConfig *cfg, void **state, FerryError **errp)
{
    ZlibState *st = ferry__xcalloc(1, sizeof(*st));
    if (deflateInit(&st->z, cfg->level) != Z_OK) {
        ferry_error_setg(errp, "zlib: cannot set up compression at level %d", cfg->level);
        free(st);
        return false;
    }
    st->cbuf = ferry__multifd_cbuf_new(cfg->page_size);
    *state = st;
    return true;
}

static void zlib_send_cleanup(void *state)
{
    ZlibState *st = state;
    deflateEnd(&st->z);
    free(st->cbuf);
    free(st);
}

static bool zlib_compress(void *ctx, const struct iovec *iov, int iovcnt, uint8_t *out, size_t cap, size_t *outlen,
                          FerryError **errp)
{
    z_stream *z = &((ZlibState *)ctx)->z;
    if (deflateReset(z) != Z_OK) {
        ferry_error_setg(errp, "zlib: cannot reset the compressor");
        return false;
    }
    z->next_out = out;
    z->avail_out = (uInt)FERRY_MIN(cap, (size_t)UINT32_MAX);
    for (int i = 0; i < iovcnt; i++) {
        z->next_in = iov[i].iov_base;
        z->avail_in = (uInt)iov[i].iov_len;
        int flush = i == iovcnt - 1 ? Z_FINISH : Z_NO_FLUSH;
        int r = deflate(z, flush);
        if ((flush == Z_FINISH && r != Z_STREAM_END) || (flush != Z_FINISH && r != Z_OK) || z->avail_in) {
            ferry_error_setg(errp, "zlib: compression failed (%d%s)", r, z->avail_out ? "" : ", output full");
            return false;
        }
    }
    *outlen = (size_t)z->total_out;
    return true;
}

static bool zlib_send_prepare(void *state, FerryMultifdPayload *p, FerryError **errp)
{
    return ferry__multifd_send_compressed(p, zlib_compress, state, ((ZlibState *)state)->cbuf, errp);
}

static bool zlib_recv_setup(const FerryMultifdConfig *cfg, void **state, FerryError **errp)
{
    ZlibState *st = ferry__xcalloc(1, sizeof(*st));
    if (inflateInit(&st->z) != Z_OK) {
        ferry_error_setg(errp, "zlib: cannot set up decompression");
        free(st);
        return false;
    }
    st->cbuf = ferry__multifd_cbuf_new(cfg->page_size);
    *state = st;
    return true;
}

static void zlib_recv_cleanup(void *state)
{
    ZlibState *st = state;
    inflateEnd(&st->z);
    free(st->cbuf);
    free(st);
}

/* Every page is full: the stream must end exactly here, with no byte after it. */
static bool zlib_check_end(z_stream *z, int r, FerryError **errp)
{
    if (r != Z_STREAM_END) {
        uint8_t extra;
        z->next_out = &extra;
        z->avail_out = 1;
        r = inflate(z, Z_NO_FLUSH);
        if (r != Z_STREAM_END || z->avail_out == 0) {
            ferry_error_setg(errp, "zlib: the compressed data holds more than the packet's pages");
            return false;
        }
    }
    if (z->avail_in != 0) {
        ferry_error_setg(errp, "zlib: %u bytes after the end of the compressed data", z->avail_in);
        return false;
    }
    return true;
}

static bool zlib_decompress(void *ctx, const uint8_t *in, size_t len, const struct iovec *iov, int iovcnt,
                            FerryError **errp)
{
    z_stream *z = &((ZlibState *)ctx)->z;
    if (inflateReset(z) != Z_OK) {
        ferry_error_setg(errp, "zlib: cannot reset the decompressor");
        return false;
    }
    z->next_in = (Bytef *)in;
    z->avail_in = (uInt)len;
    int r = Z_OK;
    for (int i = 0; i < iovcnt; i++) {
        z->next_out = iov[i].iov_base;
        z->avail_out = (uInt)iov[i].iov_len;
        while (z->avail_out > 0) {
            r = inflate(z, Z_NO_FLUSH);
            if (r == Z_STREAM_END && z->avail_out > 0) {
                ferry_error_setg(errp, "zlib: the compressed data ends %llu bytes short",
                                 (unsigned long long)z->avail_out);
                return false;
            }
            if (r != Z_OK && r != Z_STREAM_END) {
                ferry_error_setg(errp, "zlib: bad compressed data (%s)", z->msg ? z->msg : "no message");
                return false;
            }
            if (r == Z_OK && z->avail_in == 0 && z->avail_out > 0) {
                ferry_error_setg(errp, "zlib: the compressed data is truncated");
                return false;
            }
        }
    }
    return zlib_check_end(z, r, errp);
}

static bool zlib_recv(void *state, FerryChannel *c, const FerryWireMfdPacket *pk, const FerryMultifdPayload *p,
                      uint32_t *crc, FerryError **errp)
{
    return ferry__multifd_recv_compressed(c, pk, p, crc, zlib_decompress, state, ((ZlibState *)state)->cbuf, errp);
}

const FerryMultifdMethods ferry__multifd_zlib = {
    .name = "zlib",
    .send_setup = zlib_send_setup,
    .send_cleanup = zlib_send_cleanup,
    .send_prepare = zlib_send_prepare,
    .recv_setup = zlib_recv_setup,
    .recv_cleanup = zlib_recv_cleanup,
    .recv = zlib_recv,
};
