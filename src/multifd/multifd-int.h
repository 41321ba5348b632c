/*
 * Inside multifd: what send.c and recv.c share with the files that serve them, and nothing outside src/multifd/
 * includes. Two parts:
 *
 * - The compression methods as a table of operations, as QEMU's MultiFDMethods: one FerryMultifdMethods per
 *   value of multifd-compression, each filled by its own file (nocomp.c, zlib.c, zstd.c) and found once, from the
 *   negotiated FERRY_MFD_COMP_* value, by ferry__multifd_methods() (methods.c). send.c and recv.c call the table
 *   and never name a method; adding one is adding its file, a line in the lookup table and one in meson.build
 *   (and its FERRY_MFD_COMP_* value in wire.h). methods.c also keeps what the compressing methods share: the
 *   stable copy of running RAM, the buffer of compressed data, and the reading and checking of a compressed
 *   payload, so that zlib.c and zstd.c hold only their library's calls.
 * - A packet's pages (pages.c): which pages of a batch are zero, and the runs of memory of the others.
 *
 * The methods know packets only as far as their payload goes; they know nothing of threads, slots or the order
 * of packets on a channel.
 */
#ifndef FERRY_MULTIFD_INT_H
#define FERRY_MULTIFD_INT_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>

#include "multifd/multifd.h"

/*
 * The page data of one packet on its way to or from the wire. On the source, send.c fills it with the runs of
 * the packet's non-zero pages in RAM, and the method's send_prepare turns it into the payload that is written;
 * on the destination, it says where the pages go, and the method's recv fills them from the payload it reads.
 */
typedef struct FerryMultifdPayload {
    struct iovec *iov; /* the pages with data, merged into runs of consecutive memory; then (source) the payload */
    int niov;
    uint32_t npages;   /* pages with data */
    size_t raw;        /* bytes of page data: npages times the page size */
    /* Source only. */
    size_t len;        /* bytes of payload: raw unless send_prepare makes another payload */
    uint8_t flags;     /* FERRY_MFD_PKT_* flags of the packet that send_prepare sets (COMPRESSED) */
    bool live;         /* iov points into RAM that the running workload may still write */
    uint8_t *copybuf;  /* the channel's buffer of FERRY_WIRE_MFD_MAX_PAGES pages, for a stable copy */
} FerryMultifdPayload;

/*
 * The operations of one compression method. A per-channel state (void *) is the method's own; a NULL setup means
 * the method keeps none (state stays NULL, cleanup is not called).
 */
typedef struct FerryMultifdMethods {
    const char *name; /* as multifd-compression spells it (ferry__wire_mfd_comp_name) */
    /* Source: one state per channel thread, from cfg->level and cfg->page_size; the error names the library's
     * refusal. */
    bool (*send_setup)(const FerryMultifdConfig *cfg, void **state, FerryError **errp);
    void (*send_cleanup)(void *state);
    /*
     * Source: make the payload of a packet that has page data (p->raw > 0; a packet whose pages are all zero has an
     * empty payload and never comes here): point p->iov/niov at it, set p->len and p->flags, and clear p->live once
     * the payload is no longer the workload's RAM. NULL: the payload is the page data as it is.
     */
    bool (*send_prepare)(void *state, FerryMultifdPayload *p, FerryError **errp);
    /* Destination: one state per channel thread. */
    bool (*recv_setup)(const FerryMultifdConfig *cfg, void **state, FerryError **errp);
    void (*recv_cleanup)(void *state);
    /*
     * Destination: read the payload of @pk (pk->payload bytes) from @c and load it into the pages p->iov (p->raw
     * bytes), checking first that its length can be right for them; extend *crc over the payload's bytes unless
     * @crc is NULL. recv.c calls the negotiated method's recv for a packet flagged COMPRESSED, and nocomp's for
     * any other.
     */
    bool (*recv)(void *state, FerryChannel *c, const FerryWireMfdPacket *pk, const FerryMultifdPayload *p,
                 uint32_t *crc, FerryError **errp);
} FerryMultifdMethods;

extern const FerryMultifdMethods ferry__multifd_nocomp; /* nocomp.c */
extern const FerryMultifdMethods ferry__multifd_zlib;   /* zlib.c */
extern const FerryMultifdMethods ferry__multifd_zstd;   /* zstd.c */

/* The methods of @compression (FERRY_MFD_COMP_*), or NULL with an error naming the value and the known ones. */
const FerryMultifdMethods *ferry__multifd_methods(uint8_t compression, FerryError **errp);

/* ---- Shared by the compressing methods (methods.c) ---- */

/* A compressor or decompressor of one library over one channel's context @ctx. compress: the bytes of @iov as one
 * stream into @out of @cap bytes. decompress: @in, which must be one whole stream of exactly as many bytes as @iov
 * holds, into @iov. */
typedef bool (*FerryMultifdCompressFn)(void *ctx, const struct iovec *iov, int iovcnt, uint8_t *out, size_t cap,
                                       size_t *outlen, FerryError **errp);
typedef bool (*FerryMultifdDecompressFn)(void *ctx, const uint8_t *in, size_t len, const struct iovec *iov,
                                         int iovcnt, FerryError **errp);

/* A buffer for the compressed payload of any packet of @page_size pages (ferry__wire_mfd_payload_max of a full
 * packet); free() it. */
uint8_t *ferry__multifd_cbuf_new(size_t page_size);
/* Source: compress the pages of @p with @fn into @cbuf and make that the payload. While the workload runs the
 * pages are copied into p->copybuf first, so that the compressor never sees its input change. */
bool ferry__multifd_send_compressed(FerryMultifdPayload *p, FerryMultifdCompressFn fn, void *ctx, uint8_t *cbuf,
                                    FerryError **errp);
/* Destination: read the compressed payload of @pk into @cbuf (after checking its length against the pages of @p),
 * extend *crc over it, and decompress it with @fn into the pages; a bad stream's error names the packet. */
bool ferry__multifd_recv_compressed(FerryChannel *c, const FerryWireMfdPacket *pk, const FerryMultifdPayload *p,
                                    uint32_t *crc, FerryMultifdDecompressFn fn, void *ctx, uint8_t *cbuf,
                                    FerryError **errp);

/* ---- A packet's pages (pages.c) ---- */

/* Whether page @k of a packet (in extent order) is marked zero in @zmap. */
static inline bool ferry__multifd_zmap_test(const uint8_t *zmap, uint32_t k)
{
    return (zmap[k / 8] >> (k % 8)) & 1;
}

/*
 * Source: zero-page detection of a batch. Unless the caller has done it (b->zmap_valid, zero-page-detection=
 * legacy), set b->zmap to the pages of @b that read as zero if @detect (zero-page-detection=multifd), to none if
 * not (every page then goes as data).
 */
void ferry__multifd_detect_zero(FerryMultifdBatch *b, size_t page_size, bool detect);

/*
 * The pages of @nextents extents @ext of the block at @host that @zmap does not mark zero, merged into runs of
 * consecutive memory in @iov (room for FERRY_WIRE_MFD_MAX_PAGES entries); returns the number of runs and sets
 * *nonzero to the number of pages.
 */
int ferry__multifd_gather(uint8_t *host, size_t page_size, const FerryWireMfdExtent *ext, uint32_t nextents,
                          const uint8_t *zmap, struct iovec *iov, uint32_t *nonzero);

#endif
