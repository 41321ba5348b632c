/*
 * The wire format of the migration stream, as pure encode/decode over buffers: byte order, the stream header and
 * the record header. No sockets, no threads. Every multi-byte integer on the wire is big-endian and goes through
 * the helpers here, so that byte order is handled in one place. docs/stream-format.md describes the format; keep
 * the two in step.
 *
 * Framing (version 2): a 16-byte stream header, then records, each an 8-byte header (type, flags, payload length),
 * its payload, and (unless the stream's FEATURES turned "record-checksum" off) a 4-byte trailer: the CRC32C of
 * header and payload, so that a flipped bit anywhere is caught. A record whose type the reader does not know is
 * skipped if it is not flagged critical, and fails the migration if it is: that rule is what lets later versions
 * add records without breaking readers.
 *
 * records.c holds the payload codecs of the records that more than one reader parses (the destination, the
 * analyzer): features, CONFIG, POPULATE_HINT, the RAM run header, the SECTION header, END, the postcopy records,
 * and the checks the source makes of return-path records (REQ_PAGES, RESUME_NEED, framing); multifd.c those of
 * multifd: the MULTIFD record, the channel hello and the packet header.
 */
#ifndef FERRY_WIRE_H
#define FERRY_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ferry/error.h"

#define FERRY_WIRE_MAGIC "FERRYMIG"
#define FERRY_WIRE_MAGIC_LEN 8
#define FERRY_WIRE_VERSION 2
#define FERRY_WIRE_HEADER_LEN 16
#define FERRY_WIRE_RECORD_HEADER_LEN 8
#define FERRY_WIRE_RECORD_TRAILER_LEN 4 /* CRC32C of the record header and payload */

/* Record flags. */
#define FERRY_REC_CRITICAL 0x8000u /* a reader that does not know the type must fail, not skip */

/* Record types, source to destination. */
enum {
    FERRY_REC_NONE = 0x0000,          /* never on the wire */
    FERRY_REC_CONFIG = 0x0001,        /* page size and the RAM block list; the destination checks it */
    FERRY_REC_RAM_PAGES = 0x0002,     /* a run of consecutive pages of one block */
    FERRY_REC_PASS_END = 0x0003,      /* end of a pass over dirty pages (informational) */
    FERRY_REC_SECTION = 0x0004,       /* one device state section */
    FERRY_REC_END = 0x0005,           /* end of the stream, with totals to check */
    FERRY_REC_POPULATE_HINT = 0x0006, /* page ranges that will receive data: populate them ahead of it */
    FERRY_REC_HELLO = 0x0007,         /* the features the source offers (first record) */
    FERRY_REC_FEATURES = 0x0008,      /* the features this stream uses (second record) */
    FERRY_REC_FDS = 0x0009,           /* file descriptors riding with the record's bytes (UNIX socket only) */
    FERRY_REC_MULTIFD = 0x000A,       /* the stream's multifd channels: count, session, compression */
    FERRY_REC_MULTIFD_SYNC = 0x000B,  /* every multifd channel has sent its SYNC packet of this number */
    FERRY_REC_COMMIT = 0x000C,        /* after the destination's ACK: the source has switched over (switchover-commit) */
    FERRY_REC_POSTCOPY_START = 0x000D, /* postcopy-ram: the source stopped; the pages still to come follow */
    FERRY_REC_POSTCOPY_NEED = 0x000E, /* postcopy-ram: page ranges the destination must drop and fetch on demand */
    FERRY_REC_POSTCOPY_RUN = 0x000F,  /* postcopy-ram: device state is complete; the destination runs now */
    FERRY_REC_POSTCOPY_RESUME = 0x0010, /* postcopy recovery: first record of a new connection, with the session */
    FERRY_REC_MAPPED_RAM = 0x0011,    /* mapped-ram: where each block's bitmap, checksums and pages lie in the file */
};

/* Record types, destination to source (the return path). */
enum {
    FERRY_REC_ACK = 0x0101,  /* everything received, checked and applied */
    FERRY_REC_NACK = 0x0102, /* the destination failed; payload is its error message */
    FERRY_REC_HELLO_REPLY = 0x0103, /* the offered features the destination accepts */
    FERRY_REC_REQ_PAGES = 0x0104, /* postcopy: the destination faulted on these pages: send them first */
    FERRY_REC_RESUME_NEED = 0x0105, /* postcopy recovery: per block, the pages the destination still misses */
    FERRY_REC_RESUME_ACK = 0x0106,  /* postcopy recovery: the destination is ready; the postcopy goes on */
    FERRY_REC_KEEPALIVE = 0x0107,   /* postcopy: nothing to ask for, still there (so that io-timeout holds) */
};

/* Bounds a reader enforces before allocating or looping on anything a peer sent. */
#define FERRY_WIRE_MAX_RUN_PAGES 256u              /* pages in one RAM_PAGES record */
#define FERRY_WIRE_MAX_SECTION_LEN (64u << 20)      /* one device state section */
#define FERRY_WIRE_MAX_CONTROL_LEN (1u << 20)       /* CONFIG, hints, NACK and other control records */
#define FERRY_WIRE_RAM_RUN_HEADER_LEN 20            /* block, flags, first page, page count */
#define FERRY_WIRE_END_LEN 16                       /* flags, pages, sections */
#define FERRY_WIRE_HINT_RANGE_LEN 16                /* first page, page count */

/*
 * Postcopy (docs/stream-format.md, "postcopy"). POSTCOPY_START (24 bytes): flags (be32, FERRY_PC_*), reserved
 * (be32, 0), session id (16 bytes: a recovering or preempt connection names it). POSTCOPY_NEED: the encoding of
 * POPULATE_HINT (block, ranges). REQ_PAGES (16 bytes): block (be32), page count (be32), first page (be64).
 * POSTCOPY_RESUME (16 bytes): the session id. RESUME_NEED: block (be32), pages (be64), then the block's bitmap of
 * pages still missing, ceil(pages / 8) bytes, bit i of byte i / 8 for page i. RESUME_ACK: empty.
 * The preempt channel opens with a hello in the layout of the multifd hello (magic FERRY_WIRE_PREEMPT_MAGIC,
 * index 0) and then carries RAM_PAGES records only.
 */
#define FERRY_WIRE_PC_START_LEN 24
#define FERRY_WIRE_PC_SESSION_LEN 16
#define FERRY_WIRE_REQ_PAGES_LEN 16
#define FERRY_WIRE_PREEMPT_MAGIC "FERRYPCP"
#define FERRY_PC_SOURCE_RUNNING 0x1u /* the workload was running when the source stopped it */
#define FERRY_PC_PREEMPT 0x2u        /* a preempt channel connects after this record, for requested pages */
#define FERRY_PC_FLAGS_KNOWN (FERRY_PC_SOURCE_RUNNING | FERRY_PC_PREEMPT)

typedef struct FerryWirePcStart {
    uint32_t flags;
    uint8_t session[FERRY_WIRE_PC_SESSION_LEN];
} FerryWirePcStart;

typedef struct FerryWireReqPages {
    uint32_t block;
    uint32_t count;
    uint64_t first;
} FerryWireReqPages;

/* END record flags. A reader refuses any other bit. */
#define FERRY_END_SOURCE_RUNNING 0x1u /* the workload was running when the source stopped it */
#define FERRY_END_FLAGS_KNOWN FERRY_END_SOURCE_RUNNING

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


/* ---- Record payload codecs (records.c). Decoders check every length and bound and name what is wrong. ---- */

/* Features: HELLO, FEATURES and HELLO_REPLY carry a list of named features. Encoding: count (be16), then per
 * feature flags (u8) and name (u8 length, 1..63 bytes, each 0x21..0x7e). Names are unique in a list. */
#define FERRY_FEATURE_CRITICAL 0x01u /* a reader that does not support the feature must refuse the stream */
#define FERRY_WIRE_MAX_FEATURES 64u
#define FERRY_WIRE_MAX_FEATURE_NAME 63u

typedef struct FerryWireFeature {
    uint8_t flags;
    char name[FERRY_WIRE_MAX_FEATURE_NAME + 1];
} FerryWireFeature;

typedef struct FerryWireFeatureList {
    uint32_t n;
    FerryWireFeature f[FERRY_WIRE_MAX_FEATURES];
} FerryWireFeatureList;

size_t ferry__wire_features_len(const FerryWireFeatureList *l);
void ferry__wire_features_encode(const FerryWireFeatureList *l, uint8_t *out);
bool ferry__wire_features_decode(const uint8_t *p, size_t len, FerryWireFeatureList *l, FerryError **errp);
/* Index of @name in @l, or -1. */
int ferry__wire_features_find(const FerryWireFeatureList *l, const char *name);
/* Append (no-op if present); false if the list is full or the name invalid. */
bool ferry__wire_features_add(FerryWireFeatureList *l, const char *name, uint8_t flags);

/* CONFIG: page size (be32), block count (be32), per block: name (u8 length + 1..255 bytes, no NUL), size (be64). */
typedef struct FerryWireBlock {
    char name[256];
    uint64_t size;
} FerryWireBlock;

typedef struct FerryWireConfig {
    uint32_t page_size;
    uint32_t nblocks;
    FerryWireBlock *blocks; /* malloc'd by decode; free with ferry__wire_config_free */
} FerryWireConfig;

/* A malloc'd payload; *len gets its size. */
uint8_t *ferry__wire_config_encode(const FerryWireConfig *c, size_t *len);
bool ferry__wire_config_decode(const uint8_t *p, size_t len, FerryWireConfig *c, FerryError **errp);
void ferry__wire_config_free(FerryWireConfig *c);

/* POPULATE_HINT: block (be32), range count N (be32), N x (first page (be64), page count (be64)). Decode borrows:
 * range i is at ranges + i * FERRY_WIRE_HINT_RANGE_LEN (read it with ferry__wire_hint_range). Checks only the
 * framing; the caller checks ranges against its blocks. */
typedef struct FerryWireHint {
    uint32_t block;
    uint32_t count;
    const uint8_t *ranges;
} FerryWireHint;

bool ferry__wire_hint_decode(const uint8_t *p, size_t len, FerryWireHint *h, FerryError **errp);
void ferry__wire_hint_range(const FerryWireHint *h, uint32_t i, uint64_t *first, uint64_t *count);

/* The RAM_PAGES run header (20 bytes): block (be32), run flags (be32), first page (be64), page count (be32). */
/* Run flag: the data of the run's non-zero pages is not in the record but in the page pipe (unix-page-flipping),
 * in record order; the record is the run header and the zero bitmap only. */
#define FERRY_RUN_DATA_IN_PIPE 0x1u
typedef struct FerryWireRun {
    uint32_t block;
    uint32_t flags;
    uint64_t first;
    uint32_t count;
} FerryWireRun;

void ferry__wire_run_encode(const FerryWireRun *r, uint8_t out[FERRY_WIRE_RAM_RUN_HEADER_LEN]);
void ferry__wire_run_decode(const uint8_t in[FERRY_WIRE_RAM_RUN_HEADER_LEN], FerryWireRun *r);
/* The payload length a run must have: header + bitmap + data of the pages whose zero bit is clear (no data with
 * FERRY_RUN_DATA_IN_PIPE). Checks for unknown flags and 1 <= count <= FERRY_WIRE_MAX_RUN_PAGES (the error says
 * which); @zmap holds ceil(count / 8) bytes. */
bool ferry__wire_run_expected_len(const FerryWireRun *r, const uint8_t *zmap, uint32_t page_size, uint64_t *len,
                                  uint32_t *zero_pages, FerryError **errp);

/* SECTION: name (u8 length + 1..255 bytes, no NUL), instance id (be32), version (be32), section flags (be32,
 * FERRY_SECTION_*), schema length (be32), schema (visitor-int.h's wire form), then the section data to the end
 * of the payload. Decode borrows @schema and @data from the payload. */
#define FERRY_WIRE_SECTION_HEADER_MAX (1 + 255 + 16)

typedef struct FerryWireSection {
    char name[256];
    uint32_t instance_id;
    uint32_t version;
    uint32_t flags;
    const uint8_t *schema;
    uint32_t schema_len;
    const uint8_t *data;
    size_t data_len;
} FerryWireSection;

/* Writes the fixed part (name to schema length) into @out and returns its length; schema and data follow. */
size_t ferry__wire_section_header_encode(const FerryWireSection *s, uint8_t out[FERRY_WIRE_SECTION_HEADER_MAX]);
bool ferry__wire_section_decode(const uint8_t *p, size_t len, FerryWireSection *s, FerryError **errp);

/* FDS: count (be32, 1..FERRY_WIRE_MAX_FDS), then per fd: kind (u8, FERRY_FD_*), name (u8 length + 1..255
 * bytes, printable ASCII). The fds themselves ride as SCM_RIGHTS with the record's header and payload bytes, in
 * order, at most FERRY_CHANNEL_MAX_FDS per sendmsg. Decode copies the entries into a malloc'd array. */
#define FERRY_WIRE_MAX_FDS 4096u
enum {
    FERRY_FD_RAM_BLOCK = 1, /* a shared memfd holding the RAM block of that name (mode cpr-transfer) */
    FERRY_FD_BACKEND = 2,   /* a backend's fd (backend-transfer); name is "KIND:ID", e.g. "virtio-net-tap:n0" */
    FERRY_FD_PAGE_PIPE = 3, /* the read end of the page pipe (unix-page-flipping); name "page-pipe" */
};

typedef struct FerryWireFd {
    uint8_t kind;
    char name[256];
} FerryWireFd;

uint8_t *ferry__wire_fds_encode(const FerryWireFd *fds, uint32_t n, size_t *len);
bool ferry__wire_fds_decode(const uint8_t *p, size_t len, FerryWireFd **fds, uint32_t *n, FerryError **errp);
/* "RAM block" / "backend" / "unknown" */
const char *ferry__wire_fd_kind_name(uint8_t kind);

/* END (16 bytes): flags (be32, FERRY_END_*), pages sent (be64), sections sent (be32). */
typedef struct FerryWireEnd {
    uint32_t flags;
    uint64_t pages;
    uint32_t sections;
} FerryWireEnd;

void ferry__wire_end_encode(const FerryWireEnd *e, uint8_t out[FERRY_WIRE_END_LEN]);
/* Refuses flags outside FERRY_END_FLAGS_KNOWN, naming them. */
bool ferry__wire_end_decode(const uint8_t in[FERRY_WIRE_END_LEN], FerryWireEnd *e, FerryError **errp);

void ferry__wire_pc_start_encode(const FerryWirePcStart *p, uint8_t out[FERRY_WIRE_PC_START_LEN]);
/* Refuses flags outside FERRY_PC_FLAGS_KNOWN and a non-zero reserved field. */
bool ferry__wire_pc_start_decode(const uint8_t in[FERRY_WIRE_PC_START_LEN], FerryWirePcStart *p, FerryError **errp);
void ferry__wire_req_pages_encode(const FerryWireReqPages *r, uint8_t out[FERRY_WIRE_REQ_PAGES_LEN]);
void ferry__wire_req_pages_decode(const uint8_t in[FERRY_WIRE_REQ_PAGES_LEN], FerryWireReqPages *r);

/* The pages of block @block (< the block count the caller gave) of the reader's own RAM: the return-path checks
 * below look a request up in the source's blocks without knowing how it keeps them. */
typedef uint64_t (*FerryWireBlockPagesFn)(const void *opaque, uint32_t block);

/* A REQ_PAGES payload of @len bytes, decoded and checked against the reader's @nblocks blocks: exactly
 * FERRY_WIRE_REQ_PAGES_LEN bytes, 1..FERRY_WIRE_MAX_RUN_PAGES pages, all inside an existing block. */
bool ferry__wire_req_pages_check(const uint8_t *p, size_t len, size_t nblocks, FerryWireBlockPagesFn block_pages,
                                 const void *opaque, FerryWireReqPages *rq, FerryError **errp);

/* RESUME_NEED: block (be32), first page (be64), page count n (be64), bitmap of ceil(n / 8) bytes. */
#define FERRY_WIRE_RESUME_NEED_HEADER_LEN 20
typedef struct FerryWireResumeNeed {
    uint32_t block;
    uint64_t first;
    uint64_t count;
    const uint8_t *bitmap; /* borrowed from the payload: bit i of byte i / 8 is page first + i */
} FerryWireResumeNeed;

void ferry__wire_resume_need_encode_header(const FerryWireResumeNeed *n,
                                           uint8_t out[FERRY_WIRE_RESUME_NEED_HEADER_LEN]);
/* Decodes and checks a RESUME_NEED payload against the reader's blocks: the block exists, 1 <= n, the pages lie
 * inside it, the payload is exactly header + ceil(n / 8) bytes, and no bit past page n - 1 is set. */
bool ferry__wire_resume_need_decode(const uint8_t *p, size_t len, size_t nblocks, FerryWireBlockPagesFn block_pages,
                                    const void *opaque, FerryWireResumeNeed *n, FerryError **errp);

/* The framing of a return-path record as the source reads it: the type is one of @want (@nwant of them) or NACK,
 * and the length at most FERRY_WIRE_MAX_CONTROL_LEN; the error names the record and the first of @want. */
bool ferry__wire_return_header_check(const FerryRecordHeader *rh, const uint16_t *want, size_t nwant,
                                     FerryError **errp);
/* The CRC trailer of a record: CRC32C of its header and its payload. */
uint32_t ferry__wire_record_crc(const uint8_t h[FERRY_WIRE_RECORD_HEADER_LEN], const uint8_t *payload, size_t len);

/*
 * MAPPED_RAM (mapped-ram, a file only): version (be32, 1), flags (be32, FERRY_MAPPED_F_*), block count (be32, the CONFIG's),
 * reserved (be32, 0), resume offset (be64), then per block in CONFIG order: bitmap offset (be64), checksum offset
 * (be64), pages offset (be64). Offsets count from the stream header's first byte. Block i's bitmap holds
 * ceil(pages / 8) bytes (bit j of byte j / 8: page j has data in the file), its checksum table 4 bytes per page
 * (the CRC32C of page j, big-endian; meaningful where the bitmap bit is set), its pages region one page per page
 * at pages offset + j * page size (a page whose bit is clear reads as zero there: a hole). The stream's records go
 * on at the resume offset. Regions lie after the record, in block order, without overlap, pages regions aligned
 * to FERRY_WIRE_MAPPED_ALIGN, all below the resume offset.
 */
#define FERRY_WIRE_MAPPED_VERSION 1
#define FERRY_WIRE_MAPPED_HEADER_LEN 24
#define FERRY_WIRE_MAPPED_BLOCK_LEN 24
#define FERRY_WIRE_MAPPED_ALIGN (1u << 20) /* as QEMU's MAPPED_RAM_FILE_OFFSET_ALIGNMENT */

typedef struct FerryWireMappedBlock {
    uint64_t bitmap;
    uint64_t checksums;
    uint64_t pages;
} FerryWireMappedBlock;

#define FERRY_MAPPED_F_CHECKSUMS 0x1u /* the checksum tables hold each present page's CRC32C */

typedef struct FerryWireMapped {
    uint32_t flags;
    uint32_t nblocks;
    uint64_t resume;
    FerryWireMappedBlock *blocks; /* malloc'd by decode; free() it */
} FerryWireMapped;

/* The payload length for @nblocks blocks. */
size_t ferry__wire_mapped_len(uint32_t nblocks);
void ferry__wire_mapped_encode(const FerryWireMapped *r, uint8_t *out);
/* Decodes and checks the record against the CONFIG it follows (@c: block count and sizes) and the record's own end
 * offset (@after, where the stream header's first byte is 0): version, flags, count, every region's size and
 * place (after the record, in order, not overlapping, aligned, below resume). The error names what is wrong. */
bool ferry__wire_mapped_decode(const uint8_t *p, size_t len, const FerryWireConfig *c, uint64_t after,
                               FerryWireMapped *r, FerryError **errp);

/* ---- multifd (multifd.c): the MULTIFD record, and what travels on the extra channels. ---- */

/*
 * MULTIFD record (32 bytes): version (be16, 1), channels (be16, 1..255), compression (u8, FERRY_MFD_COMP_*),
 * flags (u8, FERRY_MFD_F_*), reserved (be16, 0), max pages per packet (be32), reserved (be32, 0), session id
 * (16 bytes). Written on the main channel once the channels are connected; the destination then accepts them.
 */
#define FERRY_WIRE_MFD_RECORD_LEN 32
#define FERRY_WIRE_MFD_VERSION 1
#define FERRY_WIRE_MFD_MAX_CHANNELS 255u
#define FERRY_WIRE_MFD_MAX_PAGES 256u      /* pages in one packet */
#define FERRY_WIRE_MFD_SESSION_LEN 16
enum {
    FERRY_MFD_COMP_NONE = 0,
    FERRY_MFD_COMP_ZLIB = 1,
    FERRY_MFD_COMP_ZSTD = 2,
};
#define FERRY_MFD_F_CHECKSUM 0x01u /* every packet ends with a CRC32C (the stream's record-checksum) */

typedef struct FerryWireMultifd {
    uint16_t channels;
    uint8_t compression;
    uint8_t flags;
    uint32_t max_pages;
    uint8_t session[FERRY_WIRE_MFD_SESSION_LEN];
} FerryWireMultifd;

void ferry__wire_mfd_encode(const FerryWireMultifd *r, uint8_t out[FERRY_WIRE_MFD_RECORD_LEN]);
/* Checks version, counts, method and flags; the error says what is wrong. */
bool ferry__wire_mfd_decode(const uint8_t *p, size_t len, FerryWireMultifd *r, FerryError **errp);
/* "none", "zlib", "zstd" or "unknown" */
const char *ferry__wire_mfd_comp_name(uint8_t method);

/*
 * A multifd channel opens with a hello (36 bytes) that tells the destination what it is and whose it is: magic
 * "FERRYMFD" (the main channel's stream header starts "FERRYMIG"), version (be16), channel index (be16), flags
 * (be32, 0), session id (16 bytes), CRC32C of the 32 bytes before (be32).
 */
#define FERRY_WIRE_MFD_MAGIC "FERRYMFD"
#define FERRY_WIRE_MFD_HELLO_LEN 36

void ferry__wire_mfd_hello_encode(uint16_t index, const uint8_t session[FERRY_WIRE_MFD_SESSION_LEN],
                                  uint8_t out[FERRY_WIRE_MFD_HELLO_LEN]);
bool ferry__wire_mfd_hello_decode(const uint8_t in[FERRY_WIRE_MFD_HELLO_LEN], uint16_t *index,
                                  uint8_t session[FERRY_WIRE_MFD_SESSION_LEN], FerryError **errp);
/* The preempt channel's hello: the same layout with magic FERRY_WIRE_PREEMPT_MAGIC and index 0. */
void ferry__wire_preempt_hello_encode(const uint8_t session[FERRY_WIRE_MFD_SESSION_LEN],
                                      uint8_t out[FERRY_WIRE_MFD_HELLO_LEN]);
bool ferry__wire_preempt_hello_decode(const uint8_t in[FERRY_WIRE_MFD_HELLO_LEN],
                                      uint8_t session[FERRY_WIRE_MFD_SESSION_LEN], FerryError **errp);

/*
 * Then packets. The fixed header (32 bytes): magic (be32, FERRY_WIRE_MFD_PACKET_MAGIC), type (u8), flags (u8),
 * reserved (be16, 0), block (be32), pages (be32), extents (be32), payload bytes (be32), number (be64: the
 * packet's sequence number on its channel, or for SYNC the sync number). A PAGES packet continues with its
 * extents (first page be64, page count be32; consecutive pages of the block, in order), a zero bitmap of
 * ceil(pages / 8) bytes over the pages in extent order (bit set: the page is zero and has no data), and the
 * payload: the data of the other pages, concatenated, or that compressed as one zlib or zstd stream. A SYNC
 * packet has no body. With FERRY_MFD_F_CHECKSUM every packet ends with the CRC32C (be32) of all its bytes.
 */
#define FERRY_WIRE_MFD_PACKET_MAGIC 0x4650414Bu /* "FPAK" */
#define FERRY_WIRE_MFD_PACKET_LEN 32
#define FERRY_WIRE_MFD_EXTENT_LEN 12
enum {
    FERRY_MFD_PKT_PAGES = 1,
    FERRY_MFD_PKT_SYNC = 2,
};
#define FERRY_MFD_PKT_COMPRESSED 0x01u

typedef struct FerryWireMfdPacket {
    uint8_t type;
    uint8_t flags;
    uint32_t block;
    uint32_t pages;
    uint32_t extents;
    uint32_t payload;
    uint64_t number;
} FerryWireMfdPacket;

typedef struct FerryWireMfdExtent {
    uint64_t first;
    uint32_t count;
} FerryWireMfdExtent;

/* The largest payload a packet of @raw bytes of page data may have: compressed data can be a little larger
 * than its input. Readers check against it before reading. */
static inline uint64_t ferry__wire_mfd_payload_max(uint64_t raw)
{
    return raw + raw / 64 + 1024;
}

void ferry__wire_mfd_packet_encode(const FerryWireMfdPacket *p, uint8_t out[FERRY_WIRE_MFD_PACKET_LEN]);
/* Checks magic, type, flags and the counts against FERRY_WIRE_MFD_MAX_PAGES and @page_size (the payload of an
 * uncompressed packet is checked against its zero bitmap later, by the reader). */
bool ferry__wire_mfd_packet_decode(const uint8_t in[FERRY_WIRE_MFD_PACKET_LEN], uint32_t page_size,
                                   FerryWireMfdPacket *p, FerryError **errp);
void ferry__wire_mfd_extent_encode(const FerryWireMfdExtent *e, uint8_t out[FERRY_WIRE_MFD_EXTENT_LEN]);
/* Decode @n extents from @in into @out, checking that each has a count of at least 1, that they lie within a
 * block of @block_pages pages and that their counts add up to @pages. */
bool ferry__wire_mfd_extents_decode(const uint8_t *in, uint32_t n, uint32_t pages, uint64_t block_pages,
                                    FerryWireMfdExtent *out, FerryError **errp);

#endif
