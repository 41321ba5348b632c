/*
 * multifd-compression=zstd, with the system's libzstd: a packet's payload is one complete zstd frame over the data
 * of its non-zero pages, so that a packet decodes on its own (level 0..20 from multifd-zstd-level; 0 is zstd's
 * default). Each channel thread keeps one compression or decompression context, reset from packet to packet, and a
 * buffer for the compressed bytes; the frame is read from and decompressed into scattered pages (an iovec) without
 * an intermediate buffer. Frames carry no checksum of their own: the packet's CRC32C is the integrity check. The
 * error of a bad frame names zstd's reason. The packet-level steps every compressing method shares are methods.c's.
 */
#include <stdlib.h>

#include <zstd.h>

#include "multifd/multifd-int.h"
#include "util/util.h"

typedef struct ZstdState {
    ZSTD_CCtx *cctx; /* source */
    ZSTD_DCtx *dctx; /* destination */
    uint8_t *cbuf;
} ZstdState;

static void zstd_cleanup(void *state)
{
    ZstdState *st = state;
    ZSTD_freeCCtx(st->cctx);
    ZSTD_freeDCtx(st->dctx);
    free(st->cbuf);
    free(st);
}

static bool zstd_send_setup(const FerryMultifdConfig *cfg, void **state, FerryError **errp)
{
    ZstdState *st = ferry__xcalloc(1, sizeof(*st));
    st->cctx = ZSTD_createCCtx();
    if (!st->cctx || ZSTD_isError(ZSTD_CCtx_setParameter(st->cctx, ZSTD_c_compressionLevel, cfg->level))) {
        ferry_error_setg(errp, "zstd: cannot set up compression at level %d", cfg->level);
        zstd_cleanup(st);
        return false;
    }
    st->cbuf = ferry__multifd_cbuf_new(cfg->page_size);
    *state = st;
    return true;
}

static bool zstd_compress(void *ctx, const struct iovec *iov, int iovcnt, uint8_t *out, size_t cap, size_t *outlen,
                          FerryError **errp)
{
    ZSTD_CCtx *cctx = ((ZstdState *)ctx)->cctx;
    ZSTD_CCtx_reset(cctx, ZSTD_reset_session_only);
    ZSTD_outBuffer ob = { .dst = out, .size = cap, .pos = 0 };
    for (int i = 0; i < iovcnt; i++) {
        ZSTD_inBuffer ib = { .src = iov[i].iov_base, .size = iov[i].iov_len, .pos = 0 };
        ZSTD_EndDirective mode = i == iovcnt - 1 ? ZSTD_e_end : ZSTD_e_continue;
        size_t r;
        do {
            r = ZSTD_compressStream2(cctx, &ob, &ib, mode);
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

static bool zstd_send_prepare(void *state, FerryMultifdPayload *p, FerryError **errp)
{
    return ferry__multifd_send_compressed(p, zstd_compress, state, ((ZstdState *)state)->cbuf, errp);
}

static bool zstd_recv_setup(const FerryMultifdConfig *cfg, void **state, FerryError **errp)
{
    ZstdState *st = ferry__xcalloc(1, sizeof(*st));
    st->dctx = ZSTD_createDCtx();
    if (!st->dctx) {
        ferry_error_setg(errp, "zstd: cannot set up decompression");
        zstd_cleanup(st);
        return false;
    }
    st->cbuf = ferry__multifd_cbuf_new(cfg->page_size);
    *state = st;
    return true;
}

/* Every page is full (@r is what the last call returned): the frame may still have its end to consume, with no
 * more output allowed, and nothing may follow it. */
static bool zstd_check_end(ZSTD_DCtx *dctx, ZSTD_inBuffer *ib, size_t r, FerryError **errp)
{
    if (r != 0) {
        ZSTD_outBuffer none = { .dst = NULL, .size = 0, .pos = 0 };
        r = ZSTD_decompressStream(dctx, &none, ib);
        if (ZSTD_isError(r) || r != 0) {
            ferry_error_setg(errp, "zstd: the compressed data holds more than the packet's pages");
            return false;
        }
    }
    if (ib->pos != ib->size) {
        ferry_error_setg(errp, "zstd: %zu bytes after the end of the compressed data", ib->size - ib->pos);
        return false;
    }
    return true;
}

static bool zstd_decompress(void *ctx, const uint8_t *in, size_t len, const struct iovec *iov, int iovcnt,
                            FerryError **errp)
{
    ZSTD_DCtx *dctx = ((ZstdState *)ctx)->dctx;
    ZSTD_DCtx_reset(dctx, ZSTD_reset_session_only);
    ZSTD_inBuffer ib = { .src = in, .size = len, .pos = 0 };
    size_t r = 1;
    for (int i = 0; i < iovcnt; i++) {
        ZSTD_outBuffer ob = { .dst = iov[i].iov_base, .size = iov[i].iov_len, .pos = 0 };
        while (ob.pos < ob.size) {
            size_t before_in = ib.pos, before_out = ob.pos;
            r = ZSTD_decompressStream(dctx, &ob, &ib);
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
    return zstd_check_end(dctx, &ib, r, errp);
}

static bool zstd_recv(void *state, FerryChannel *c, const FerryWireMfdPacket *pk, const FerryMultifdPayload *p,
                      uint32_t *crc, FerryError **errp)
{
    return ferry__multifd_recv_compressed(c, pk, p, crc, zstd_decompress, state, ((ZstdState *)state)->cbuf, errp);
}

const FerryMultifdMethods ferry__multifd_zstd = {
    .name = "zstd",
    .send_setup = zstd_send_setup,
    .send_cleanup = zstd_cleanup,
    .send_prepare = zstd_send_prepare,
    .recv_setup = zstd_recv_setup,
    .recv_cleanup = zstd_cleanup,
    .recv = zstd_recv,
};
