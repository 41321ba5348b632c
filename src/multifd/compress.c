/*
 * Compression of multifd packet payloads with the system's zlib and zstd (multifd-compression), one compressor or
 * decompressor per channel thread, reused from packet to packet. A payload is one complete zlib or zstd stream
 * over the concatenated data of a packet's non-zero pages, so that a packet can be decoded on its own; it is
 * read from and decompressed into scattered pages (an iovec) without an intermediate buffer. This file knows
 * nothing of packets, channels or threads; the error of a bad stream names the library's reason.
 */
#include <string.h>

#include <zlib.h>
#include <zstd.h>

#include "multifd/multifd.h"
#include "util/util.h"

struct FerryCompressor {
    uint8_t method;
    z_stream z;
    ZSTD_CCtx *zstd;
};

struct FerryDecompressor {
    uint8_t method;
    z_stream z;
    ZSTD_DCtx *zstd;
};

FerryCompressor *ferry__compressor_new(uint8_t method, int level, FerryError **errp)
{
    FerryCompressor *c = ferry__xcalloc(1, sizeof(*c));
    c->method = method;
    switch (method) {
    case FERRY_MFD_COMP_ZLIB:
        if (deflateInit(&c->z, level) != Z_OK) {
            ferry_error_setg(errp, "zlib: cannot set up compression at level %d", level);
            free(c);
            return NULL;
        }
        return c;
    case FERRY_MFD_COMP_ZSTD:
        c->zstd = ZSTD_createCCtx();
        if (!c->zstd || ZSTD_isError(ZSTD_CCtx_setParameter(c->zstd, ZSTD_c_compressionLevel, level))) {
            ferry_error_setg(errp, "zstd: cannot set up compression at level %d", level);
            ZSTD_freeCCtx(c->zstd);
            free(c);
            return NULL;
        }
        return c;
    default:
        ferry_error_setg(errp, "compression method %s cannot compress", ferry__wire_mfd_comp_name(method));
        free(c);
        return NULL;
    }
}

void ferry__compressor_free(FerryCompressor *c)
{
    if (!c) {
        return;
    }
    if (c->method == FERRY_MFD_COMP_ZLIB) {
        deflateEnd(&c->z);
    }
    ZSTD_freeCCtx(c->zstd);
    free(c);
}

static bool zlib_compress(FerryCompressor *c, const struct iovec *iov, int iovcnt, uint8_t *out, size_t cap,
                          size_t *outlen, FerryError **errp)
{
    z_stream *z = &c->z;
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

static bool zstd_compress(FerryCompressor *c, const struct iovec *iov, int iovcnt, uint8_t *out, size_t cap,
                          size_t *outlen, FerryError **errp)
{
    ZSTD_CCtx_reset(c->zstd, ZSTD_reset_session_only);
    ZSTD_outBuffer ob = { .dst = out, .size = cap, .pos = 0 };
    for (int i = 0; i < iovcnt; i++) {
        ZSTD_inBuffer ib = { .src = iov[i].iov_base, .size = iov[i].iov_len, .pos = 0 };
        ZSTD_EndDirective mode = i == iovcnt - 1 ? ZSTD_e_end : ZSTD_e_continue;
        size_t r;
        do {
            r = ZSTD_compressStream2(c->zstd, &ob, &ib, mode);
            if (ZSTD_isError(r)) {
                ferry_error_setg(errp, "zstd: compression failed: %s", ZSTD_getErrorName(r));
                return false;
            }
            if (ob.pos == ob.size && (r || ib.pos < ib.size)) {
                ferry_error_setg(errp, "zstd: compression failed: output full");
                return false;
            }
        } while (mode == ZSTD_e_end ? r != 0 : ib.pos < ib.size);
    }
    *outlen = ob.pos;
    return true;
}

bool ferry__compress(FerryCompressor *c, const struct iovec *iov, int iovcnt, uint8_t *out, size_t cap,
                     size_t *outlen, FerryError **errp)
{
    if (iovcnt <= 0) {
        ferry_error_setg(errp, "nothing to compress");
        return false;
    }
    return c->method == FERRY_MFD_COMP_ZLIB ? zlib_compress(c, iov, iovcnt, out, cap, outlen, errp)
                                            : zstd_compress(c, iov, iovcnt, out, cap, outlen, errp);
}

FerryDecompressor *ferry__decompressor_new(uint8_t method, FerryError **errp)
{
    FerryDecompressor *d = ferry__xcalloc(1, sizeof(*d));
    d->method = method;
    switch (method) {
    case FERRY_MFD_COMP_ZLIB:
        if (inflateInit(&d->z) != Z_OK) {
            ferry_error_setg(errp, "zlib: cannot set up decompression");
            free(d);
            return NULL;
        }
        return d;
    case FERRY_MFD_COMP_ZSTD:
        d->zstd = ZSTD_createDCtx();
        if (!d->zstd) {
            ferry_error_setg(errp, "zstd: cannot set up decompression");
            free(d);
            return NULL;
        }
        return d;
    default:
        ferry_error_setg(errp, "compression method %s cannot decompress", ferry__wire_mfd_comp_name(method));
        free(d);
        return NULL;
    }
}

void ferry__decompressor_free(FerryDecompressor *d)
{
    if (!d) {
        return;
    }
    if (d->method == FERRY_MFD_COMP_ZLIB) {
        inflateEnd(&d->z);
    }
    ZSTD_freeDCtx(d->zstd);
    free(d);
}

static bool zlib_decompress(FerryDecompressor *d, const uint8_t *in, size_t len, const struct iovec *iov,
                            int iovcnt, FerryError **errp)
{
    z_stream *z = &d->z;
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
    /* Every page is full: the stream must end exactly here. */
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

static bool zstd_decompress(FerryDecompressor *d, const uint8_t *in, size_t len, const struct iovec *iov,
                            int iovcnt, FerryError **errp)
{
    ZSTD_DCtx_reset(d->zstd, ZSTD_reset_session_only);
    ZSTD_inBuffer ib = { .src = in, .size = len, .pos = 0 };
    size_t r = 1;
    for (int i = 0; i < iovcnt; i++) {
        ZSTD_outBuffer ob = { .dst = iov[i].iov_base, .size = iov[i].iov_len, .pos = 0 };
        while (ob.pos < ob.size) {
            size_t before_in = ib.pos, before_out = ob.pos;
            r = ZSTD_decompressStream(d->zstd, &ob, &ib);
            if (ZSTD_isError(r)) {
                ferry_error_setg(errp, "zstd: bad compressed data: %s", ZSTD_getErrorName(r));
                return false;
            }
            if ((r == 0 && ob.pos < ob.size) || (ib.pos == before_in && ob.pos == before_out)) {
                ferry_error_setg(errp, "zstd: the compressed data ends before the packet's pages are full");
                return false;
            }
        }
    }
    if (r != 0) {
        /* The pages are full; the frame may still have its end to consume (no more output allowed). */
        ZSTD_outBuffer none = { .dst = NULL, .size = 0, .pos = 0 };
        r = ZSTD_decompressStream(d->zstd, &none, &ib);
        if (ZSTD_isError(r) || r != 0) {
            ferry_error_setg(errp, "zstd: the compressed data holds more than the packet's pages");
            return false;
        }
    }
    if (ib.pos != ib.size) {
        ferry_error_setg(errp, "zstd: %zu bytes after the end of the compressed data", ib.size - ib.pos);
        return false;
    }
    return true;
}

bool ferry__decompress(FerryDecompressor *d, const uint8_t *in, size_t len, const struct iovec *iov, int iovcnt,
                       FerryError **errp)
{
    return d->method == FERRY_MFD_COMP_ZLIB ? zlib_decompress(d, in, len, iov, iovcnt, errp)
                                            : zstd_decompress(d, in, len, iov, iovcnt, errp);
}
