/*
 * A multifd packet's pages, as both ends see them: on the source, which pages of a batch are zero (one bit each in
 * the packet, no data); on both ends, where the data of the others lies in RAM, as runs of consecutive memory, so
 * that the source writes and the destination reads a packet's pages with one scatter-gather call. Whether a page is
 * zero is ferry__buffer_is_zero's answer (ram/zero.c); this file only applies it to a batch. It does no I/O.
 */
#include <string.h>

#include "multifd/multifd-int.h"

void ferry__multifd_detect_zero(FerryMultifdBatch *b, size_t page_size, bool detect)
{
    if (b->zmap_valid) {
        return;
    }
    memset(b->zmap, 0, sizeof(b->zmap));
    if (!detect) {
        return;
    }
    uint32_t k = 0;
    for (uint32_t e = 0; e < b->nextents; e++) {
        for (uint32_t j = 0; j < b->ext[e].count; j++, k++) {
            if (ferry__buffer_is_zero(b->block->host + (b->ext[e].first + j) * page_size, page_size)) {
                b->zmap[k / 8] |= (uint8_t)(1u << (k % 8));
            }
        }
    }
}

int ferry__multifd_gather(uint8_t *host, size_t page_size, const FerryWireMfdExtent *ext, uint32_t nextents,
                          const uint8_t *zmap, struct iovec *iov, uint32_t *nonzero)
{
    int niov = 0;
    uint32_t k = 0;
    *nonzero = 0;
    for (uint32_t e = 0; e < nextents; e++) {
        for (uint32_t j = 0; j < ext[e].count; j++, k++) {
            if (ferry__multifd_zmap_test(zmap, k)) {
                continue;
            }
            uint8_t *p = host + (ext[e].first + j) * page_size;
            (*nonzero)++;
            if (niov && (uint8_t *)iov[niov - 1].iov_base + iov[niov - 1].iov_len == p) {
                iov[niov - 1].iov_len += page_size;
            } else {
                iov[niov++] = (struct iovec){ .iov_base = p, .iov_len = page_size };
            }
        }
    }
    return niov;
}
