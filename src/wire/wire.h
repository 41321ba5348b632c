/*
 * The wire format of the migration stream, as pure encode/decode over buffers: byte order, the stream header and
 * the record header. No sockets, no threads. Every multi-byte integer on the wire is big-endian and goes through
 * the helpers here, so that byte order is handled in one place. docs/stream-format.md describes the format; keep
 * the two in step.
 *
 * Framing (version 1): a 16-byte stream header, then records, each an 8-byte header (type, flags, payload length),
 * its payload, and a 4-byte trailer: the CRC32C of header and payload, so that a flipped bit anywhere is caught. A record whose type the reader does not know is skipped if it is not flagged critical, and
 * fails the migration if it is: that rule is what lets later versions add records without breaking readers.
 */
#ifndef FERRY_WIRE_H
#define FERRY_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ferry/error.h"

#define FERRY_WIRE_MAGIC "FERRYMIG"
#define FERRY_WIRE_MAGIC_LEN 8
#define FERRY_WIRE_VERSION 1
#define FERRY_WIRE_HEADER_LEN 16
#define FERRY_WIRE_RECORD_HEADER_LEN 8
#define FERRY_WIRE_RECORD_TRAILER_LEN 4 /* CRC32C of the record header and payload */

/* Record flags. */
#define FERRY_REC_CRITICAL 0x8000u /* a reader that does not know the type must fail, not skip */

/* Record types, source to destination. */
enum {
    FERRY_REC_CONFIG = 0x0001,        /* page size and the RAM block list; the destination checks it */
    FERRY_REC_RAM_PAGES = 0x0002,     /* a run of consecutive pages of one block */
    FERRY_REC_PASS_END = 0x0003,      /* end of a pass over dirty pages (informational) */
    FERRY_REC_SECTION = 0x0004,       /* one device state section */
    FERRY_REC_END = 0x0005,           /* end of the stream, with totals to check */
    FERRY_REC_POPULATE_HINT = 0x0006, /* page ranges that will receive data: populate them ahead of it */
};

/* Record types, destination to source (the return path). */
enum {
    FERRY_REC_ACK = 0x0101,  /* everything received, checked and applied */
    FERRY_REC_NACK = 0x0102, /* the destination failed; payload is its error message */
};

/* Bounds a reader enforces before allocating or looping on anything a peer sent. */
#define FERRY_WIRE_MAX_RUN_PAGES 256u              /* pages in one RAM_PAGES record */
#define FERRY_WIRE_MAX_SECTION_LEN (64u << 20)      /* one device state section */
#define FERRY_WIRE_MAX_CONTROL_LEN (1u << 20)       /* CONFIG, hints, NACK and other control records */
#define FERRY_WIRE_RAM_RUN_HEADER_LEN 20            /* block, flags, first page, page count */

/* END record flags. */
#define FERRY_END_SOURCE_RUNNING 0x1u /* the workload was running when the source stopped it */

static inline void ferry__put_be16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static inline void ferry__put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static inline void ferry__put_be64(uint8_t *p, uint64_t v)
{
    ferry__put_be32(p, (uint32_t)(v >> 32));
    ferry__put_be32(p + 4, (uint32_t)v);
}

static inline uint16_t ferry__get_be16(const uint8_t *p)
{
    return (uint16_t)((p[0] << 8) | p[1]);
}

static inline uint32_t ferry__get_be32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static inline uint64_t ferry__get_be64(const uint8_t *p)
{
    return ((uint64_t)ferry__get_be32(p) << 32) | ferry__get_be32(p + 4);
}

typedef struct FerryRecordHeader {
    uint16_t type;
    uint16_t flags;
    uint32_t length; /* payload bytes that follow the header */
} FerryRecordHeader;

void ferry__wire_encode_header(uint8_t out[FERRY_WIRE_HEADER_LEN]);
/* Checks magic and version; the error says what was found. */
bool ferry__wire_decode_header(const uint8_t in[FERRY_WIRE_HEADER_LEN], FerryError **errp);

void ferry__wire_encode_record(uint8_t out[FERRY_WIRE_RECORD_HEADER_LEN], const FerryRecordHeader *h);
void ferry__wire_decode_record(const uint8_t in[FERRY_WIRE_RECORD_HEADER_LEN], FerryRecordHeader *h);
/* "RAM_PAGES", ..., or "unknown" */
const char *ferry__wire_record_name(uint16_t type);

/* A payload reader with bounds checks: every get fails (and latches) past the end. */
typedef struct FerryWireReader {
    const uint8_t *p;
    size_t len;
    size_t pos;
    bool failed;
} FerryWireReader;

void ferry__wire_reader_init(FerryWireReader *r, const uint8_t *p, size_t len);
uint8_t ferry__wire_get_u8(FerryWireReader *r);
uint32_t ferry__wire_get_be32(FerryWireReader *r);
uint64_t ferry__wire_get_be64(FerryWireReader *r);
/* Borrow @n bytes (NULL on failure). */
const uint8_t *ferry__wire_get_bytes(FerryWireReader *r, size_t n);
/* A u8-length-prefixed name copied into @buf (size >= 256), NUL-terminated. */
bool ferry__wire_get_name(FerryWireReader *r, char buf[256]);

#endif
