/*
 * multifd-compression=none: a packet's payload is the data of its non-zero pages as they are, concatenated. The
 * source hands them to the kernel straight from RAM (send.c copies them only to checksum what leaves while the
 * workload runs); the destination reads them straight into place with one scatter-gather read, or, when the
 * packet is checksummed, in cache-sized pieces through a small buffer, copied into place and checksummed in one
 * pass. Its recv also serves every packet not flagged compressed in a stream of another method (a packet whose
 * pages are all zero has an empty plain payload whatever the method). The method keeps no per-channel state (the
 * piece buffer is allocated per packet).
 */
#include <stdlib.h>
#include <string.h>

#include "multifd/multifd-int.h"
#include "util/util.h"

static bool nocomp_recv(void *state, FerryChannel *c, const FerryWireMfdPacket *pk, const FerryMultifdPayload *p,
                        uint32_t *crc, FerryError **errp)
{
    (void)state;
    if (pk->payload != p->raw) {
        ferry_error_setg(errp, "packet %llu: %u bytes of data for %u pages with data", (unsigned long long)pk->number,
                         pk->payload, p->npages);
        return false;
    }
    FERRY_ASSERT(p->niov >= 0 && (size_t)p->niov <= FERRY_WIRE_MFD_MAX_PAGES);
    if (!crc) {
        /* readv consumes the iovec it is given: work on a copy. */
        struct iovec work[FERRY_WIRE_MFD_MAX_PAGES];
        memcpy(work, p->iov, sizeof(*p->iov) * (size_t)p->niov);
        return ferry__channel_readv_all(c, work, p->niov, errp);
    }
    /* With the checksum, the payload is read in pieces of ferry__crc32c_chunk() bytes into a small buffer that
     * stays in cache, and each piece is copied into the pages and checksummed in one pass (ferry__crc32c_copy):
     * the pages are touched once, by that copy. Reading straight into the pages and checksumming them afterwards
     * touched them twice, and on the machine of docs/memory.md every touch of the destination's RAM is what
     * costs. A piece may start or end inside a run. */
    size_t chunk = ferry__crc32c_chunk();
    uint8_t *bounce = ferry__xmalloc(chunk);
    bool ok = true;
    int i = 0;
    size_t off = 0; /* bytes of p->iov[i] already filled */
    for (size_t done = 0; ok && done < p->raw;) {
        size_t n = FERRY_MIN(chunk, p->raw - done);
        if (!ferry__channel_read_all(c, bounce, n, errp)) {
            ok = false;
            break;
        }
        for (size_t pos = 0; pos < n;) {
            size_t l = FERRY_MIN(p->iov[i].iov_len - off, n - pos);
            *crc = ferry__crc32c_copy(*crc, (uint8_t *)p->iov[i].iov_base + off, bounce + pos, l);
            pos += l;
            off += l;
            if (off == p->iov[i].iov_len) {
                i++;
                off = 0;
            }
        }
        done += n;
    }
    free(bounce);
    return ok;
}

const FerryMultifdMethods ferry__multifd_nocomp = {
    .name = "none",
    .recv = nocomp_recv,
};
