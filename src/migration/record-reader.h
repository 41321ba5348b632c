/*
 * The one reader of a migration stream's records, shared by the destination (dest.c) and the stream analyzer
 * (analyze.c). It owns what the two have in common: the stream header's bytes, each record's header, the
 * grammar of the stream (which record may come in which phase, with which flags, under which features, with
 * which length), reading or skipping the payload within the record's length, the CRC trailer, and the one place
 * that says where a problem was found ("at stream offset N, CONFIG record: ..."). What a record means is left to
 * the caller, which dispatches on the type to its own step function between ferry__record_next() and
 * ferry__record_finish(). It does not read the return path, and it knows nothing of RAM blocks or sections.
 *
 * The phases follow docs/stream-format.md: HELLO, FEATURES, CONFIG, then RAM (FDS, MULTIFD, POPULATE_HINT,
 * RAM_PAGES, PASS_END, MULTIFD_SYNC), then SECTIONS (from the first SECTION on), then END; after END only COMMIT
 * (switchover-commit with a return path), then done. A postcopy stream leaves RAM with POSTCOPY_START for
 * POSTCOPY_SETUP (POSTCOPY_NEED, FDS, SECTION), goes on with POSTCOPY_RUN to POSTCOPY (RAM_PAGES), then END.
 */
#ifndef FERRY_RECORD_READER_H
#define FERRY_RECORD_READER_H

#include <stdbool.h>
#include <stdint.h>

#include "ferry/error.h"
#include "migration/migration-priv.h"
#include "stream/stream.h"
#include "wire/wire.h"

typedef enum FerryStreamPhase {
    FERRY_PHASE_HELLO,    /* the first record must be HELLO */
    FERRY_PHASE_FEATURES, /* then FEATURES */
    FERRY_PHASE_CONFIG,   /* then CONFIG */
    FERRY_PHASE_RAM,      /* fds, multifd, hints, pages, pass ends, syncs, until the first SECTION or END */
    FERRY_PHASE_SECTIONS, /* after the first SECTION: sections and END only */
    FERRY_PHASE_POSTCOPY_SETUP, /* postcopy-ram, after POSTCOPY_START: pages needed, fds, sections, then RUN */
    FERRY_PHASE_POSTCOPY, /* after POSTCOPY_RUN: pages (the destination runs), then END */
    FERRY_PHASE_END,      /* after END: only COMMIT */
    FERRY_PHASE_DONE,     /* after COMMIT: nothing */
    FERRY_PHASE__MAX,
} FerryStreamPhase;

typedef struct FerryRecordReader {
    FerryStream *s;
    FerryStreamPhase phase;
    uint64_t offset;         /* stream offset of the current record's header (of the stream header before) */
    const char *where;       /* "stream header", "record header", or the current record's name */
    bool in_record;          /* the header of the current record was read */
    FerryRecordHeader rh;    /* the current record's header */
    uint64_t consumed;       /* payload bytes of the current record read or skipped so far */
    bool trailers;           /* records end with a CRC trailer (HELLO and FEATURES always do) */
    bool features_set;       /* ferry__record_set_features was called during this record */
    FerryWireFeatureList features; /* what the stream uses (FEATURES), once known */
    uint64_t records;        /* records read completely, trailer included */
} FerryRecordReader;

void ferry__record_reader_init(FerryRecordReader *r, FerryStream *s);
const char *ferry__stream_phase_name(FerryStreamPhase phase);

/* The stream header's bytes, for the caller to check (ferry__wire_decode_header). */
bool ferry__record_read_stream_header(FerryRecordReader *r, uint8_t hdr[FERRY_WIRE_HEADER_LEN], FerryError **errp);

/*
 * Reads the next record's header and checks it against the grammar before anything of it is used: its type is
 * allowed in the current phase (the error names the record and the phase), no reserved flag is set on a known
 * type, the stream's features allow it, its length is within the type's bounds, and an unknown type is not
 * critical (the caller skips an unknown one with ferry__record_skip).
 */
bool ferry__record_next(FerryRecordReader *r, FerryError **errp);
/* Whether this reader knows the current record's type (an unknown one is to be skipped). */
bool ferry__record_known(const FerryRecordReader *r);

/* Payload of the current record, never past its length (asking for more is a bug of the caller). */
bool ferry__record_read(FerryRecordReader *r, void *buf, size_t len, FerryError **errp);
bool ferry__record_skip(FerryRecordReader *r, uint64_t len, FerryError **errp);
/* The rest of the payload in a malloc'd buffer that grows as the bytes arrive, so that a length damaged into a
 * large value costs memory only for bytes the stream really holds. */
bool ferry__record_read_payload(FerryRecordReader *r, uint8_t **out, FerryError **errp);
/* The rest of the payload, which must be a feature list (HELLO, FEATURES). */
bool ferry__record_read_features(FerryRecordReader *r, FerryWireFeatureList *l, FerryError **errp);
/* The payload of the current record decoded with its wire codec (records.c), for the records both the destination
 * and the analyzer decode. CONFIG, FDS and MULTIFD results own their memory (ferry__wire_config_free, free of
 * *entries). POPULATE_HINT and SECTION results point into *payload, which the caller frees after using them (it is
 * freed here on failure). */
bool ferry__record_read_config(FerryRecordReader *r, FerryWireConfig *c, FerryError **errp);
bool ferry__record_read_fds(FerryRecordReader *r, FerryWireFd **entries, uint32_t *n, FerryError **errp);
bool ferry__record_read_multifd(FerryRecordReader *r, FerryWireMultifd *mfd, FerryError **errp);
bool ferry__record_read_hint(FerryRecordReader *r, uint8_t **payload, FerryWireHint *h, FerryError **errp);
bool ferry__record_read_section(FerryRecordReader *r, uint8_t **payload, FerryWireSection *sec, FerryError **errp);

/* RAM_PAGES: the run header and zero bitmap, checked: flags, page count, the record's length against them, and
 * the data-in-pipe flag against the stream's features. The caller checks the run against its blocks, then reads
 * (or skips) the data of the non-zero pages. @zmap gets ceil(count / 8) bytes, the rest zero. */
bool ferry__record_read_run(FerryRecordReader *r, uint32_t page_size, FerryWireRun *run,
                            uint8_t zmap[FERRY_WIRE_MAX_RUN_PAGES / 8], uint32_t *zeros, FerryError **errp);

/* FEATURES was read: what the stream uses. Trailers follow it from the next record on. */
void ferry__record_set_features(FerryRecordReader *r, const FerryWireFeatureList *used);
/* Whether the stream (its FEATURES) uses the feature of @cap. */
bool ferry__record_uses(const FerryRecordReader *r, FerryCapability cap);

/* Ends the current record: every payload byte was consumed, then the trailer is checked; the phase moves on. */
bool ferry__record_finish(FerryRecordReader *r, FerryError **errp);

/* The one place that says where: prefixes *errp with "at stream offset N, <what>: ". */
void ferry__record_error_prefix(const FerryRecordReader *r, FerryError **errp);

/* END's flags are decoded by the wire layer; its totals against what arrived (pages and sections, skipped ones
 * included). */
bool ferry__record_check_end(const FerryWireEnd *end, uint64_t pages, uint64_t sections, FerryError **errp);

/* FEATURES against HELLO: a stream uses only features its HELLO offered. */
bool ferry__record_check_offered(const FerryWireFeatureList *used, const FerryWireFeatureList *offered,
                                 FerryError **errp);

#endif
