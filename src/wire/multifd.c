/*
 * The wire codecs of multifd: the MULTIFD record of the main channel, the hello that opens each extra channel and
 * the fixed header and extents of the packets that travel on them (wire.h describes the layouts). Pure encode and
 * decode over buffers, every length and count checked against its bound with an error that names it; no I/O. The
 * threads that send and receive packets are in src/multifd/.
 */
#include <string.h>

#include "util/util.h"
#include "wire/wire.h"

void ferry__wire_mfd_encode(const FerryWireMultifd *r, uint8_t out[FERRY_WIRE_MFD_RECORD_LEN])
{
    memset(out, 0, FERRY_WIRE_MFD_RECORD_LEN);
    ferry__put_be16(out, FERRY_WIRE_MFD_VERSION);
    ferry__put_be16(out + 2, r->channels);
    out[4] = r->compression;
    out[5] = r->flags;
    ferry__put_be32(out + 8, r->max_pages);
    memcpy(out + 16, r->session, FERRY_WIRE_MFD_SESSION_LEN);
}

bool ferry__wire_mfd_decode(const uint8_t *p, size_t len, FerryWireMultifd *r, FerryError **errp)
{
    if (len != FERRY_WIRE_MFD_RECORD_LEN) {
        ferry_error_setg(errp, "MULTIFD record of %zu bytes, expected %d", len, FERRY_WIRE_MFD_RECORD_LEN);
        return false;
    }
    uint16_t version = ferry__get_be16(p);
    if (version != FERRY_WIRE_MFD_VERSION) {
        ferry_error_setg(errp, "MULTIFD record of version %u, this build reads version %d", version,
                         FERRY_WIRE_MFD_VERSION);
        return false;
    }
    r->channels = ferry__get_be16(p + 2);
    r->compression = p[4];
    r->flags = p[5];
    r->max_pages = ferry__get_be32(p + 8);
    memcpy(r->session, p + 16, FERRY_WIRE_MFD_SESSION_LEN);
    if (r->channels < 1 || r->channels > FERRY_WIRE_MFD_MAX_CHANNELS) {
        ferry_error_setg(errp, "MULTIFD record with %u channels (1..%u)", r->channels, FERRY_WIRE_MFD_MAX_CHANNELS);
        return false;
    }
    if (r->compression > FERRY_MFD_COMP_ZSTD) {
        ferry_error_setg(errp, "MULTIFD record with unknown compression method %u", r->compression);
        return false;
    }
    if (r->flags & ~FERRY_MFD_F_CHECKSUM) {
        ferry_error_setg(errp, "MULTIFD record with unknown flags 0x%02x", r->flags & ~FERRY_MFD_F_CHECKSUM);
        return false;
    }
    if (r->max_pages < 1 || r->max_pages > FERRY_WIRE_MFD_MAX_PAGES) {
        ferry_error_setg(errp, "MULTIFD record with %u pages per packet (1..%u)", r->max_pages,
                         FERRY_WIRE_MFD_MAX_PAGES);
        return false;
    }
    if (ferry__get_be16(p + 6) || ferry__get_be32(p + 12)) {
        ferry_error_setg(errp, "MULTIFD record with non-zero reserved bytes");
        return false;
    }
    return true;
}

const char *ferry__wire_mfd_comp_name(uint8_t method)
{
    switch (method) {
    case FERRY_MFD_COMP_NONE: return "none";
    case FERRY_MFD_COMP_ZLIB: return "zlib";
    case FERRY_MFD_COMP_ZSTD: return "zstd";
    default: return "unknown";
    }
}

void ferry__wire_mfd_hello_encode(uint16_t index, const uint8_t session[FERRY_WIRE_MFD_SESSION_LEN],
                                  uint8_t out[FERRY_WIRE_MFD_HELLO_LEN])
{
    memcpy(out, FERRY_WIRE_MFD_MAGIC, 8);
    ferry__put_be16(out + 8, FERRY_WIRE_MFD_VERSION);
    ferry__put_be16(out + 10, index);
    ferry__put_be32(out + 12, 0);
    memcpy(out + 16, session, FERRY_WIRE_MFD_SESSION_LEN);
    ferry__put_be32(out + 32, ferry__crc32c(0, out, 32));
}

bool ferry__wire_mfd_hello_decode(const uint8_t in[FERRY_WIRE_MFD_HELLO_LEN], uint16_t *index,
                                  uint8_t session[FERRY_WIRE_MFD_SESSION_LEN], FerryError **errp)
{
    if (memcmp(in, FERRY_WIRE_MFD_MAGIC, 8) != 0) {
        if (memcmp(in, FERRY_WIRE_MAGIC, FERRY_WIRE_MAGIC_LEN) == 0) {
            ferry_error_setg(errp, "a second main channel (stream header) where a multifd channel was expected");
        } else {
            ferry_error_setg(errp, "not a multifd channel: it does not start with \"%s\"", FERRY_WIRE_MFD_MAGIC);
        }
        return false;
    }
    uint32_t crc = ferry__get_be32(in + 32);
    if (crc != ferry__crc32c(0, in, 32)) {
        ferry_error_setg(errp, "multifd channel hello damaged: CRC mismatch");
        return false;
    }
    uint16_t version = ferry__get_be16(in + 8);
    if (version != FERRY_WIRE_MFD_VERSION) {
        ferry_error_setg(errp, "multifd channel of version %u, this build reads version %d", version,
                         FERRY_WIRE_MFD_VERSION);
        return false;
    }
    if (ferry__get_be32(in + 12) != 0) {
        ferry_error_setg(errp, "multifd channel hello with unknown flags 0x%08x", ferry__get_be32(in + 12));
        return false;
    }
    *index = ferry__get_be16(in + 10);
    memcpy(session, in + 16, FERRY_WIRE_MFD_SESSION_LEN);
    return true;
}

void ferry__wire_mfd_packet_encode(const FerryWireMfdPacket *p, uint8_t out[FERRY_WIRE_MFD_PACKET_LEN])
{
    ferry__put_be32(out, FERRY_WIRE_MFD_PACKET_MAGIC);
    out[4] = p->type;
    out[5] = p->flags;
    ferry__put_be16(out + 6, 0);
    ferry__put_be32(out + 8, p->block);
    ferry__put_be32(out + 12, p->pages);
    ferry__put_be32(out + 16, p->extents);
    ferry__put_be32(out + 20, p->payload);
    ferry__put_be64(out + 24, p->number);
}

bool ferry__wire_mfd_packet_decode(const uint8_t in[FERRY_WIRE_MFD_PACKET_LEN], uint32_t page_size,
                                   FerryWireMfdPacket *p, FerryError **errp)
{
    if (ferry__get_be32(in) != FERRY_WIRE_MFD_PACKET_MAGIC) {
        ferry_error_setg(errp, "bad packet magic 0x%08x", ferry__get_be32(in));
        return false;
    }
    p->type = in[4];
    p->flags = in[5];
    p->block = ferry__get_be32(in + 8);
    p->pages = ferry__get_be32(in + 12);
    p->extents = ferry__get_be32(in + 16);
    p->payload = ferry__get_be32(in + 20);
    p->number = ferry__get_be64(in + 24);
    if (ferry__get_be16(in + 6) != 0) {
        ferry_error_setg(errp, "packet with non-zero reserved bytes");
        return false;
    }
    switch (p->type) {
    case FERRY_MFD_PKT_SYNC:
        if (p->flags || p->block || p->pages || p->extents || p->payload) {
            ferry_error_setg(errp, "SYNC packet with a body or flags");
            return false;
        }
        return true;
    case FERRY_MFD_PKT_PAGES:
        break;
    default:
        ferry_error_setg(errp, "unknown packet type %u", p->type);
        return false;
    }
    if (p->flags & ~FERRY_MFD_PKT_COMPRESSED) {
        ferry_error_setg(errp, "packet with unknown flags 0x%02x", p->flags & ~FERRY_MFD_PKT_COMPRESSED);
        return false;
    }
    if (p->pages < 1 || p->pages > FERRY_WIRE_MFD_MAX_PAGES) {
        ferry_error_setg(errp, "packet of %u pages (1..%u)", p->pages, FERRY_WIRE_MFD_MAX_PAGES);
        return false;
    }
    if (p->extents < 1 || p->extents > p->pages) {
        ferry_error_setg(errp, "packet of %u pages in %u extents", p->pages, p->extents);
        return false;
    }
    uint64_t raw = (uint64_t)p->pages * page_size;
    uint64_t max = (p->flags & FERRY_MFD_PKT_COMPRESSED) ? ferry__wire_mfd_payload_max(raw) : raw;
    if (p->payload > max) {
        ferry_error_setg(errp, "packet of %u pages with %u bytes of payload (at most %llu)", p->pages, p->payload,
                         (unsigned long long)max);
        return false;
    }
    return true;
}

void ferry__wire_mfd_extent_encode(const FerryWireMfdExtent *e, uint8_t out[FERRY_WIRE_MFD_EXTENT_LEN])
{
    ferry__put_be64(out, e->first);
    ferry__put_be32(out + 8, e->count);
}

bool ferry__wire_mfd_extents_decode(const uint8_t *in, uint32_t n, uint32_t pages, uint64_t block_pages,
                                    FerryWireMfdExtent *out, FerryError **errp)
{
    uint64_t total = 0;
    for (uint32_t i = 0; i < n; i++) {
        const uint8_t *e = in + (size_t)i * FERRY_WIRE_MFD_EXTENT_LEN;
        out[i].first = ferry__get_be64(e);
        out[i].count = ferry__get_be32(e + 8);
        if (out[i].count == 0 || out[i].first >= block_pages || out[i].count > block_pages - out[i].first) {
            ferry_error_setg(errp, "extent %u (pages %llu+%u) is empty or outside the block of %llu pages", i,
                             (unsigned long long)out[i].first, out[i].count, (unsigned long long)block_pages);
            return false;
        }
        total += out[i].count;
    }
    if (total != pages) {
        ferry_error_setg(errp, "extents of %llu pages in a packet of %u pages", (unsigned long long)total, pages);
        return false;
    }
    return true;
}

/* The preempt channel of postcopy borrows the multifd hello's layout, so one decoder's checks cover both. */
void ferry__wire_preempt_hello_encode(const uint8_t session[FERRY_WIRE_MFD_SESSION_LEN],
                                      uint8_t out[FERRY_WIRE_MFD_HELLO_LEN])
{
    ferry__wire_mfd_hello_encode(0, session, out);
    memcpy(out, FERRY_WIRE_PREEMPT_MAGIC, 8);
    ferry__put_be32(out + 32, ferry__crc32c(0, out, 32));
}

bool ferry__wire_preempt_hello_decode(const uint8_t in[FERRY_WIRE_MFD_HELLO_LEN],
                                      uint8_t session[FERRY_WIRE_MFD_SESSION_LEN], FerryError **errp)
{
    if (memcmp(in, FERRY_WIRE_PREEMPT_MAGIC, 8) != 0) {
        ferry_error_setg(errp, "not a postcopy preempt channel: it does not start with \"%s\"",
                         FERRY_WIRE_PREEMPT_MAGIC);
        return false;
    }
    uint8_t copy[FERRY_WIRE_MFD_HELLO_LEN];
    memcpy(copy, in, sizeof(copy));
    memcpy(copy, FERRY_WIRE_MFD_MAGIC, 8);
    if (ferry__get_be32(in + 32) != ferry__crc32c(0, in, 32)) {
        ferry_error_setg(errp, "postcopy preempt channel hello damaged: CRC mismatch");
        return false;
    }
    ferry__put_be32(copy + 32, ferry__crc32c(0, copy, 32));
    uint16_t index;
    if (!ferry__wire_mfd_hello_decode(copy, &index, session, errp)) {
        return false;
    }
    if (index != 0) {
        ferry_error_setg(errp, "postcopy preempt channel hello with index %u, expected 0", index);
        return false;
    }
    return true;
}
