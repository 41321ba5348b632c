/*
 * multifd-compression=none: a packet's payload is the data of its non-zero pages as they are, concatenated. The
 * source hands them to the kernel straight from RAM (send.c copies them only to checksum what leaves while the
 * workload runs); the destination reads them straight into place with one scatter-gather read. Its recv also serves
 * every packet not flagged compressed in a stream of another method (a packet whose pages are all zero has an
 * empty plain payload whatever the method). The method keeps no per-channel state.
 */
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
    /* readv consumes the iovec it is given; the pages' own is kept for the checksum. */
    struct iovec work[FERRY_WIRE_MFD_MAX_PAGES];
    FERRY_ASSERT(p->niov >= 0 && (size_t)p->niov <= FERRY_ARRAY_SIZE(work));
    memcpy(work, p->iov, sizeof(*p->iov) * (size_t)p->niov);
    if (!ferry__channel_readv_all(c, work, p->niov, errp)) {
        return false;
    }
    for (int i = 0; crc && i < p->niov; i++) {
        *crc = ferry__crc32c(*crc, p->iov[i].iov_base, p->iov[i].iov_len);
    }
    return true;
}

const FerryMultifdMethods ferry__multifd_nocomp = {
    .name = "none",
    .recv = nocomp_recv,
};
