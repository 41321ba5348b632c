/*
 * The table of multifd compression methods, indexed by the negotiated FERRY_MFD_COMP_* value, and what the
 * compressing methods share (multifd-int.h): the stable copy that a compressor reads while the workload runs, the
 * buffer of a channel's compressed payloads, and the reading of a compressed payload, checked against its pages
 * before a byte of it is read. A compressing method's file then holds only its library's calls. This file knows no
 * library and no method by name beyond the table.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "multifd/multifd-int.h"
#include "util/util.h"

/* One line per method; the index is its FERRY_MFD_COMP_* value on the wire. */
static const FerryMultifdMethods *const methods[] = {
    [FERRY_MFD_COMP_NONE] = &ferry__multifd_nocomp,
    [FERRY_MFD_COMP_ZLIB] = &ferry__multifd_zlib,
    [FERRY_MFD_COMP_ZSTD] = &ferry__multifd_zstd,
};

const FerryMultifdMethods *ferry__multifd_methods(uint8_t compression, FerryError **errp)
{
    if (compression < FERRY_ARRAY_SIZE(methods) && methods[compression]) {
        return methods[compression];
    }
    char known[128] = "";
    size_t used = 0;
    for (size_t i = 0; i < FERRY_ARRAY_SIZE(methods) && used < sizeof(known); i++) {
        if (methods[i]) {
            used += (size_t)snprintf(known + used, sizeof(known) - used, "%s%s", used ? ", " : "", methods[i]->name);
        }
    }
    ferry_error_setg(errp, "multifd compression method %u is unknown (known: %s)", compression, known);
    return NULL;
}

uint8_t *ferry__multifd_cbuf_new(size_t page_size)
{
    return ferry__xmalloc(ferry__wire_mfd_payload_max((uint64_t)FERRY_WIRE_MFD_MAX_PAGES * page_size));
}

bool ferry__multifd_send_compressed(FerryMultifdPayload *p, FerryMultifdCompressFn fn, void *ctx, uint8_t *cbuf,
                                    FerryError **errp)
{
    if (p->live) {
        size_t off = 0;
        for (int i = 0; i < p->niov; i++) {
            memcpy(p->copybuf + off, p->iov[i].iov_base, p->iov[i].iov_len);
            off += p->iov[i].iov_len;
        }
        p->iov[0] = (struct iovec){ .iov_base = p->copybuf, .iov_len = p->raw };
        p->niov = 1;
        p->live = false;
    }
    size_t clen;
    if (!fn(ctx, p->iov, p->niov, cbuf, ferry__wire_mfd_payload_max(p->raw), &clen, errp)) {
        return false;
    }
    p->iov[0] = (struct iovec){ .iov_base = cbuf, .iov_len = clen };
    p->niov = 1;
    p->len = clen;
    p->flags |= FERRY_MFD_PKT_COMPRESSED;
    return true;
}

bool ferry__multifd_recv_compressed(FerryChannel *c, const FerryWireMfdPacket *pk, const FerryMultifdPayload *p,
                                    uint32_t *crc, FerryMultifdDecompressFn fn, void *ctx, uint8_t *cbuf,
                                    FerryError **errp)
{
    if (pk->payload > ferry__wire_mfd_payload_max(p->raw)) {
        ferry_error_setg(errp, "packet %llu: %u bytes of compressed data for %u pages", (unsigned long long)pk->number,
                         pk->payload, p->npages);
        return false;
    }
    /* In pieces, each checksummed as soon as it has landed, while it is still in cache (the compressed payload goes
     * to a buffer of its own, not RAM, so the bytes are read once more only here). */
    size_t chunk = crc ? ferry__crc32c_chunk() : pk->payload;
    for (size_t off = 0; off < pk->payload;) {
        size_t n = FERRY_MIN(chunk, pk->payload - off);
        if (!ferry__channel_read_all(c, cbuf + off, n, errp)) {
            return false;
        }
        if (crc) {
            *crc = ferry__crc32c(*crc, cbuf + off, n);
        }
        off += n;
    }
    if (!fn(ctx, cbuf, pk->payload, p->iov, p->niov, errp)) {
        ferry_error_prepend(errp, "packet %llu: ", (unsigned long long)pk->number);
        return false;
    }
    return true;
}
