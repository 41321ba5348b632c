/*
 * The stream analyzer behind ferry_stream_analyze() and ferry-analyze: it reads a version-2 migration stream from
 * an fd up to its END record, checks everything a destination would check that does not depend on the
 * destination's own RAM blocks and sections (framing, order, trailers, features, run lengths, schemas, section
 * encodings, END totals), and describes the stream as JSON. It is not a loader: nothing is applied anywhere, page
 * contents are skipped through the stream's buffer, and at most one control or SECTION record is held in memory.
 *
 * Order of records (docs/stream-format.md): HELLO, FEATURES, CONFIG, then POPULATE_HINT / RAM_PAGES / PASS_END in
 * any order, then SECTIONs, then END. Unknown non-critical records may appear anywhere after FEATURES and are
 * listed; unknown critical ones end the analysis. Bytes after END are not read: a file: stream may be followed by
 * other data.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ferry/analyze.h"
#include "channel/channel.h"
#include "stream/stream.h"
#include "util/util.h"
#include "visitor/visitor-int.h"
#include "wire/wire.h"

#define SKIP_CHUNK (64u << 10) /* page data is discarded in chunks of this size */

/* The features this reader knows (docs/stream-format.md, "Features"). */
#define FEATURE_RECORD_CHECKSUM "record-checksum"
#define FEATURE_POPULATE_HINTS "populate-hints"

typedef enum Phase {
    EXPECT_HELLO,
    EXPECT_FEATURES,
    EXPECT_CONFIG,
    IN_RAM,      /* after CONFIG: hints, pages, pass ends, sections */
    IN_SECTIONS, /* after the first SECTION: sections and END only */
} Phase;

typedef struct BlockStats {
    uint64_t npages;
    uint64_t pages, zero_pages, data_bytes;
} BlockStats;

typedef struct SeenSection {
    char name[256];
    uint32_t instance_id;
} SeenSection;

typedef struct Analyzer {
    FerryStream *s;
    unsigned flags;
    Phase phase;
    bool crc;         /* records carry a trailer */
    bool crc_pending; /* what FEATURES said, applied once its own trailer is checked */

    json_t *header, *offered, *features, *config, *end;
    json_t *sections, *schema, *unknown, *fds;

    FerryWireFeatureList used;
    FerryWireConfig cfg;
    BlockStats *blocks;

    SeenSection *seen;  /* every section so far, for the duplicate check; grows by doubling */
    size_t nseen, seen_cap;
    uint32_t *seen_index; /* open-addressing hash of seen: entry i + 1, 0 for free; seen_cap * 2 slots */

    uint64_t records, ram_records, pages, zero_pages, data_pages, data_bytes, passes, hint_records, hinted_pages;
    uint64_t piped_bytes; /* page data announced by runs whose data went through the page pipe */
    FerryWireEnd endrec;
} Analyzer;

/* Strings from the stream may hold any bytes; jansson refuses invalid UTF-8. */
static json_t *jstr(const char *s)
{
    char *t = ferry__utf8_scrub(s);
    json_t *j = json_string(t);
    free(t);
    return j;
}

/* A u64 as a JSON integer when it fits jansson's int64, else as a decimal string (as the JSON visitor does). */
static json_t *ju64(uint64_t v)
{
    if (v <= INT64_MAX) {
        return json_integer((json_int_t)v);
    }
    char buf[24];
    snprintf(buf, sizeof(buf), "%llu", (unsigned long long)v);
    return json_string(buf);
}

static bool stream_error(Analyzer *a, FerryError **errp)
{
    ferry__stream_check(a->s, errp);
    return false;
}

/*
 * Read a payload of @len bytes (at most @max). The buffer grows as the bytes arrive, so that a length damaged into
 * a large value costs memory only for bytes the stream really holds.
 */
static bool read_payload(Analyzer *a, uint32_t len, uint32_t max, uint8_t **out, FerryError **errp)
{
    if (len > max) {
        ferry_error_setg(errp, "payload of %u bytes exceeds the limit of %u", len, max);
        return false;
    }
    size_t cap = FERRY_MIN(len, SKIP_CHUNK), got = 0;
    uint8_t *buf = ferry__xmalloc(cap ? cap : 1);
    while (got < len) {
        if (got == cap) {
            cap = FERRY_MIN((size_t)len, cap * 2);
            buf = ferry__xrealloc(buf, cap);
        }
        size_t n = cap - got;
        if (!ferry__stream_read(a->s, buf + got, n)) {
            free(buf);
            return stream_error(a, errp);
        }
        got += n;
    }
    *out = buf;
    return true;
}

static json_t *features_json(const FerryWireFeatureList *l, bool mark_unknown)
{
    json_t *arr = json_array();
    for (uint32_t i = 0; i < l->n; i++) {
        json_t *f = json_pack("{s:s, s:b}", "name", l->f[i].name, "critical",
                              (l->f[i].flags & FERRY_FEATURE_CRITICAL) != 0);
        if (mark_unknown && strcmp(l->f[i].name, FEATURE_RECORD_CHECKSUM) != 0 &&
            strcmp(l->f[i].name, FEATURE_POPULATE_HINTS) != 0) {
            json_object_set_new(f, "known", json_false());
        }
        json_array_append_new(arr, f);
    }
    return arr;
}

/* Reads the payload of a HELLO or FEATURES record and decodes its feature list. */
static bool read_feature_list(Analyzer *a, uint32_t len, FerryWireFeatureList *l, FerryError **errp)
{
    uint8_t *buf;
    if (!read_payload(a, len, FERRY_WIRE_MAX_CONTROL_LEN, &buf, errp)) {
        return false;
    }
    bool ok = ferry__wire_features_decode(buf, len, l, errp);
    free(buf);
    return ok;
}

static bool do_hello(Analyzer *a, uint32_t len, FerryError **errp)
{
    if (a->phase != EXPECT_HELLO) {
        ferry_error_setg(errp, "a second HELLO record");
        return false;
    }
    FerryWireFeatureList l;
    if (!read_feature_list(a, len, &l, errp)) {
        return false;
    }
    a->offered = features_json(&l, false);
    /* FEATURES is checked against the offer; keep it in a->used until then. */
    a->used = l;
    a->phase = EXPECT_FEATURES;
    return true;
}

static bool do_features(Analyzer *a, uint32_t len, FerryError **errp)
{
    if (a->phase != EXPECT_FEATURES) {
        ferry_error_setg(errp, a->phase == EXPECT_HELLO ? "FEATURES record before the HELLO record"
                                                        : "a second FEATURES record");
        return false;
    }
    FerryWireFeatureList l;
    if (!read_feature_list(a, len, &l, errp)) {
        return false;
    }
    a->features = features_json(&l, true);
    for (uint32_t i = 0; i < l.n; i++) {
        const FerryWireFeature *f = &l.f[i];
        bool known = strcmp(f->name, FEATURE_RECORD_CHECKSUM) == 0 || strcmp(f->name, FEATURE_POPULATE_HINTS) == 0;
        if (!known && (f->flags & FERRY_FEATURE_CRITICAL)) {
            ferry_error_setg(errp, "the stream uses feature '%s', which this reader does not support", f->name);
            return false;
        }
        if (ferry__wire_features_find(&a->used, f->name) < 0) {
            ferry_error_setg(errp, "the stream uses feature '%s', which its HELLO record did not offer", f->name);
            return false;
        }
    }
    a->used = l;
    a->crc_pending = ferry__wire_features_find(&l, FEATURE_RECORD_CHECKSUM) >= 0;
    a->phase = EXPECT_CONFIG;
    return true;
}

static bool do_config(Analyzer *a, uint32_t len, FerryError **errp)
{
    if (a->phase != EXPECT_CONFIG) {
        ferry_error_setg(errp, "a second CONFIG record");
        return false;
    }
    uint8_t *buf;
    if (!read_payload(a, len, FERRY_WIRE_MAX_CONTROL_LEN, &buf, errp)) {
        return false;
    }
    bool ok = ferry__wire_config_decode(buf, len, &a->cfg, errp);
    free(buf);
    if (!ok) {
        return false;
    }
    json_t *blocks = json_array();
    a->config = json_pack("{s:I, s:o}", "page-size", (json_int_t)a->cfg.page_size, "blocks", blocks);
    a->blocks = ferry__xcalloc(a->cfg.nblocks ? a->cfg.nblocks : 1, sizeof(*a->blocks));
    for (uint32_t i = 0; i < a->cfg.nblocks; i++) {
        const FerryWireBlock *b = &a->cfg.blocks[i];
        json_array_append_new(blocks, json_pack("{s:o, s:o}", "name", jstr(b->name), "size", ju64(b->size)));
        if (b->size == 0 || b->size % a->cfg.page_size != 0) {
            ferry_error_setg(errp, "RAM block '%s' has size %llu, not a positive multiple of the page size %u",
                             b->name, (unsigned long long)b->size, a->cfg.page_size);
            return false;
        }
        a->blocks[i].npages = b->size / a->cfg.page_size;
    }
    a->phase = IN_RAM;
    return true;
}

/* Hints, pages and pass ends come after CONFIG and before the first SECTION. */
static bool check_ram_phase(Analyzer *a, FerryError **errp)
{
    if (a->phase < IN_RAM) {
        ferry_error_setg(errp, "RAM record before the CONFIG record");
        return false;
    }
    if (a->phase > IN_RAM) {
        ferry_error_setg(errp, "RAM record after the first SECTION record");
        return false;
    }
    return true;
}

static bool do_hint(Analyzer *a, uint32_t len, FerryError **errp)
{
    if (!check_ram_phase(a, errp)) {
        return false;
    }
    if (ferry__wire_features_find(&a->used, FEATURE_POPULATE_HINTS) < 0) {
        ferry_error_setg(errp, "POPULATE_HINT record in a stream whose FEATURES lack '%s'", FEATURE_POPULATE_HINTS);
        return false;
    }
    uint8_t *buf;
    FerryWireHint h;
    /* The bound the destination uses: a full hint record (64 Ki ranges and its 8-byte header) is just over 1 MiB. */
    if (!read_payload(a, len, FERRY_WIRE_MAX_CONTROL_LEN + 64, &buf, errp)) {
        return false;
    }
    bool ok = false;
    if (!ferry__wire_hint_decode(buf, len, &h, errp)) {
        goto out;
    }
    if (h.block >= a->cfg.nblocks) {
        ferry_error_setg(errp, "hint for RAM block %u, the stream has %u blocks", h.block, a->cfg.nblocks);
        goto out;
    }
    uint64_t npages = a->blocks[h.block].npages;
    for (uint32_t i = 0; i < h.count; i++) {
        uint64_t first, count;
        ferry__wire_hint_range(&h, i, &first, &count);
        if (count == 0 || first >= npages || count > npages - first) {
            ferry_error_setg(errp, "hint range %llu+%llu is outside RAM block '%s' (%llu pages)",
                             (unsigned long long)first, (unsigned long long)count, a->cfg.blocks[h.block].name,
                             (unsigned long long)npages);
            goto out;
        }
        a->hinted_pages += count;
    }
    a->hint_records++;
    ok = true;
out:
    free(buf);
    return ok;
}

static bool do_pages(Analyzer *a, uint32_t len, FerryError **errp)
{
    if (!check_ram_phase(a, errp)) {
        return false;
    }
    uint8_t hdr[FERRY_WIRE_RAM_RUN_HEADER_LEN];
    uint8_t zmap[FERRY_WIRE_MAX_RUN_PAGES / 8] = { 0 };
    FerryWireRun run;
    if (len < sizeof(hdr)) {
        ferry_error_setg(errp, "payload of %u bytes is shorter than the %u-byte run header", len,
                         FERRY_WIRE_RAM_RUN_HEADER_LEN);
        return false;
    }
    if (!ferry__stream_read(a->s, hdr, sizeof(hdr))) {
        return stream_error(a, errp);
    }
    ferry__wire_run_decode(hdr, &run);
    if (run.count >= 1 && run.count <= FERRY_WIRE_MAX_RUN_PAGES) {
        uint32_t zb = FERRY_DIV_ROUND_UP(run.count, 8);
        if (len < sizeof(hdr) + zb) {
            ferry_error_setg(errp, "payload of %u bytes is too short for the zero bitmap of %u pages", len,
                             run.count);
            return false;
        }
        if (!ferry__stream_read(a->s, zmap, zb)) {
            return stream_error(a, errp);
        }
    }
    /* With a count out of range the bitmap was not read: this call refuses the run before looking at it. */
    uint64_t expect;
    uint32_t zeros;
    if (!ferry__wire_run_expected_len(&run, zmap, a->cfg.page_size, &expect, &zeros, errp)) {
        return false;
    }
    if (run.block >= a->cfg.nblocks) {
        ferry_error_setg(errp, "run in RAM block %u, the stream has %u blocks", run.block, a->cfg.nblocks);
        return false;
    }
    BlockStats *b = &a->blocks[run.block];
    if (run.first >= b->npages || run.count > b->npages - run.first) {
        ferry_error_setg(errp, "run of pages %llu+%u is outside RAM block '%s' (%llu pages)",
                         (unsigned long long)run.first, run.count, a->cfg.blocks[run.block].name,
                         (unsigned long long)b->npages);
        return false;
    }
    if (len != expect) {
        ferry_error_setg(errp, "run of pages %llu+%u in RAM block '%s' (%u zero) is %u bytes, expected %llu",
                         (unsigned long long)run.first, run.count, a->cfg.blocks[run.block].name, zeros, len,
                         (unsigned long long)expect);
        return false;
    }
    uint64_t data = (uint64_t)(run.count - zeros) * a->cfg.page_size;
    if (run.flags & FERRY_RUN_DATA_IN_PIPE) {
        /* The data went through the page pipe (unix-page-flipping): it is not in the stream. */
        a->piped_bytes += data;
        data = 0;
    }
    for (uint64_t left = data; left > 0;) {
        uint64_t n = FERRY_MIN(left, (uint64_t)SKIP_CHUNK);
        if (!ferry__stream_skip(a->s, n)) {
            return stream_error(a, errp);
        }
        left -= n;
    }
    a->ram_records++;
    a->pages += run.count;
    a->zero_pages += zeros;
    a->data_pages += run.count - zeros;
    a->data_bytes += data;
    b->pages += run.count;
    b->zero_pages += zeros;
    b->data_bytes += data;
    return true;
}

static bool do_pass_end(Analyzer *a, uint32_t len, FerryError **errp)
{
    uint8_t p[8];
    if (!check_ram_phase(a, errp)) {
        return false;
    }
    if (len != sizeof(p)) {
        ferry_error_setg(errp, "payload of %u bytes, expected %zu", len, sizeof(p));
        return false;
    }
    if (!ferry__stream_read(a->s, p, sizeof(p))) {
        return stream_error(a, errp);
    }
    a->passes++;
    return true;
}

static uint32_t seen_hash(const char *name, uint32_t instance_id)
{
    uint32_t h = 2166136261u ^ instance_id;
    for (const unsigned char *p = (const unsigned char *)name; *p; p++) {
        h = (h ^ *p) * 16777619u;
    }
    return h;
}

/* Slot of (@name, @instance_id) in the index: the entry's, or the free one where it would go. */
static size_t seen_slot(const Analyzer *a, const char *name, uint32_t instance_id)
{
    size_t mask = a->seen_cap * 2 - 1;
    for (size_t i = seen_hash(name, instance_id) & mask;; i = (i + 1) & mask) {
        uint32_t e = a->seen_index[i];
        if (e == 0 || (a->seen[e - 1].instance_id == instance_id && strcmp(a->seen[e - 1].name, name) == 0)) {
            return i;
        }
    }
}

/*
 * Remember a section; false if it was seen already. A stream may hold any number of distinct sections, so the
 * check must not cost a scan of all earlier ones (a file of a million tiny sections would take hours).
 */
static bool seen_add(Analyzer *a, const char *name, uint32_t instance_id)
{
    if (a->nseen == a->seen_cap) {
        a->seen_cap = a->seen_cap ? a->seen_cap * 2 : 16;
        a->seen = ferry__xrealloc(a->seen, a->seen_cap * sizeof(*a->seen));
        free(a->seen_index);
        a->seen_index = ferry__xcalloc(a->seen_cap * 2, sizeof(*a->seen_index));
        for (size_t i = 0; i < a->nseen; i++) {
            a->seen_index[seen_slot(a, a->seen[i].name, a->seen[i].instance_id)] = (uint32_t)i + 1;
        }
    }
    size_t slot = seen_slot(a, name, instance_id);
    if (a->seen_index[slot]) {
        return false;
    }
    snprintf(a->seen[a->nseen].name, sizeof(a->seen[a->nseen].name), "%s", name);
    a->seen[a->nseen].instance_id = instance_id;
    a->seen_index[slot] = (uint32_t)++a->nseen;
    return true;
}

static bool do_section(Analyzer *a, uint64_t offset, uint32_t len, FerryError **errp)
{
    if (a->phase < IN_RAM) {
        ferry_error_setg(errp, "SECTION record before the CONFIG record");
        return false;
    }
    a->phase = IN_SECTIONS;
    uint8_t *buf;
    if (!read_payload(a, len, FERRY_WIRE_MAX_SECTION_LEN + 512, &buf, errp)) {
        return false;
    }
    FerryWireSection sec;
    FerrySchema *schema = NULL;
    json_t *sj = NULL, *state = NULL;
    bool ok = false;
    if (!ferry__wire_section_decode(buf, len, &sec, errp)) {
        goto out;
    }
    if (!seen_add(a, sec.name, sec.instance_id)) {
        ferry_error_setg(errp, "section '%s' instance %u appears twice", sec.name, sec.instance_id);
        goto out;
    }

    char *name = ferry__utf8_scrub(sec.name);
    schema = ferry__schema_decode(sec.schema, sec.schema_len, errp);
    if (schema) {
        state = ferry__section_data_to_json(name, schema, sec.data, sec.data_len, errp);
    }
    if (!schema || !state) {
        ferry_error_prepend(errp, "section '%s' instance %u: ", name, sec.instance_id);
        free(name);
        goto out;
    }
    sj = ferry__section_schema_json(name, sec.instance_id, sec.version, sec.flags, schema);
    json_array_append_new(a->schema, sj);
    json_array_append_new(
        a->sections,
        json_pack("{s:s, s:I, s:I, s:b, s:b, s:I, s:I, s:O}", "name", name, "instance-id",
                  (json_int_t)sec.instance_id, "version", (json_int_t)sec.version, "skippable",
                  (sec.flags & FERRY_SECTION_SKIPPABLE) != 0, "optional", (sec.flags & FERRY_SECTION_OPTIONAL) != 0,
                  "offset", (json_int_t)offset, "bytes", (json_int_t)sec.data_len, "state", state));
    free(name);
    ok = true;
out:
    json_decref(state);
    ferry__schema_free(schema);
    free(buf);
    return ok;
}

static bool do_end(Analyzer *a, uint32_t len, FerryError **errp)
{
    uint8_t p[FERRY_WIRE_END_LEN];
    if (a->phase < IN_RAM) {
        ferry_error_setg(errp, "END record before the CONFIG record");
        return false;
    }
    if (len != sizeof(p)) {
        ferry_error_setg(errp, "payload of %u bytes, expected %u", len, FERRY_WIRE_END_LEN);
        return false;
    }
    if (!ferry__stream_read(a->s, p, sizeof(p))) {
        return stream_error(a, errp);
    }
    ferry__wire_end_decode(p, &a->endrec);
    return true;
}

/* END's totals, checked once its trailer has been: a damaged count is then the writer's, not the medium's. */
static bool check_end(Analyzer *a, FerryError **errp)
{
    if (a->endrec.pages != a->pages) {
        ferry_error_setg(errp, "stream damaged: the source sent %llu pages, %llu arrived",
                         (unsigned long long)a->endrec.pages, (unsigned long long)a->pages);
        return false;
    }
    if (a->endrec.sections != a->nseen) {
        ferry_error_setg(errp, "stream damaged: the source sent %u sections, %zu arrived", a->endrec.sections,
                         a->nseen);
        return false;
    }
    a->end = json_pack("{s:o, s:I, s:b}", "pages", ju64(a->endrec.pages), "sections",
                       (json_int_t)a->endrec.sections, "source-running",
                       (a->endrec.flags & FERRY_END_SOURCE_RUNNING) != 0);
    return true;
}

/* FDS: the descriptors themselves only exist on a live UNIX socket; the analyzer lists what they were. */
static bool do_fds(Analyzer *a, uint64_t offset, uint32_t len, FerryError **errp)
{
    if (a->phase < IN_RAM) {
        ferry_error_setg(errp, "FDS record before the CONFIG record");
        return false;
    }
    uint8_t *buf;
    if (!read_payload(a, len, FERRY_WIRE_MAX_CONTROL_LEN, &buf, errp)) {
        return false;
    }
    FerryWireFd *entries;
    uint32_t n;
    bool ok = ferry__wire_fds_decode(buf, len, &entries, &n, errp);
    free(buf);
    if (!ok) {
        return false;
    }
    for (uint32_t i = 0; i < n && ok; i++) {
        if (entries[i].kind == FERRY_FD_RAM_BLOCK) {
            uint32_t b;
            for (b = 0; b < a->cfg.nblocks && strcmp(a->cfg.blocks[b].name, entries[i].name) != 0; b++) {
            }
            if (b == a->cfg.nblocks) {
                ferry_error_setg(errp, "FDS record names RAM block '%s', which CONFIG does not list", entries[i].name);
                ok = false;
                break;
            }
        }
        json_array_append_new(a->fds, json_pack("{s:I, s:s, s:o}", "offset", (json_int_t)offset, "kind",
                                                entries[i].kind == FERRY_FD_RAM_BLOCK ? "ram-block" : "backend",
                                                "name", jstr(entries[i].name)));
    }
    free(entries);
    return ok;
}

static bool do_unknown(Analyzer *a, uint64_t offset, const FerryRecordHeader *rh, FerryError **errp)
{
    if (a->phase < EXPECT_CONFIG) {
        ferry_error_setg(errp, "record type 0x%04x where the %s record must be", rh->type,
                         a->phase == EXPECT_HELLO ? "HELLO" : "FEATURES");
        return false;
    }
    if (rh->type == FERRY_REC_ACK || rh->type == FERRY_REC_NACK || rh->type == FERRY_REC_HELLO_REPLY) {
        ferry_error_setg(errp, "a return-path record in the main stream");
        return false;
    }
    if (rh->flags & FERRY_REC_CRITICAL) {
        ferry_error_setg(errp, "unknown critical record type 0x%04x (%u bytes)", rh->type, rh->length);
        return false;
    }
    if (!ferry__stream_skip(a->s, rh->length)) {
        return stream_error(a, errp);
    }
    json_array_append_new(a->unknown, json_pack("{s:I, s:I, s:I, s:b}", "offset", (json_int_t)offset, "type",
                                                (json_int_t)rh->type, "length", (json_int_t)rh->length,
                                                "critical", false));
    return true;
}

static bool do_record(Analyzer *a, uint64_t offset, const FerryRecordHeader *rh, FerryError **errp)
{
    switch (rh->type) {
    case FERRY_REC_HELLO: return do_hello(a, rh->length, errp);
    case FERRY_REC_FEATURES: return do_features(a, rh->length, errp);
    case FERRY_REC_CONFIG: return do_config(a, rh->length, errp);
    case FERRY_REC_POPULATE_HINT: return do_hint(a, rh->length, errp);
    case FERRY_REC_RAM_PAGES: return do_pages(a, rh->length, errp);
    case FERRY_REC_PASS_END: return do_pass_end(a, rh->length, errp);
    case FERRY_REC_SECTION: return do_section(a, offset, rh->length, errp);
    case FERRY_REC_END: return do_end(a, rh->length, errp);
    case FERRY_REC_FDS: return do_fds(a, offset, rh->length, errp);
    default: return do_unknown(a, offset, rh, errp);
    }
}

/* Reads to the END record; on failure *where and *record name the place. */
static bool analyze(Analyzer *a, uint64_t *where, const char **record, FerryError **errp)
{
    uint8_t hdr[FERRY_WIRE_HEADER_LEN];
    *where = 0;
    *record = "stream header";
    if (!ferry__stream_read(a->s, hdr, sizeof(hdr))) {
        return stream_error(a, errp);
    }
    if (!ferry__wire_decode_header(hdr, errp)) {
        return false;
    }
    a->header = json_pack("{s:s, s:I, s:I}", "magic", FERRY_WIRE_MAGIC, "version",
                          (json_int_t)ferry__get_be32(hdr + 8), "flags", (json_int_t)ferry__get_be32(hdr + 12));
    for (;;) {
        uint8_t rb[FERRY_WIRE_RECORD_HEADER_LEN];
        FerryRecordHeader rh;
        *where = ferry__stream_bytes_read(a->s);
        *record = "record header";
        ferry__stream_read_crc_reset(a->s);
        if (!ferry__stream_read(a->s, rb, sizeof(rb))) {
            return stream_error(a, errp);
        }
        ferry__wire_decode_record(rb, &rh);
        *record = ferry__wire_record_name(rh.type);
        /* HELLO and FEATURES always carry a trailer: the stream's checksum choice is in FEATURES itself. */
        bool trailer = a->crc || rh.type == FERRY_REC_HELLO || rh.type == FERRY_REC_FEATURES;
        if (!do_record(a, *where, &rh, errp)) {
            return false;
        }
        if (trailer) {
            uint32_t want = ferry__stream_read_crc(a->s), got;
            if (!ferry__stream_read_be32(a->s, &got)) {
                return stream_error(a, errp);
            }
            if (got != want) {
                ferry_error_setg(errp, "stream damaged: CRC mismatch (computed 0x%08x, the record says 0x%08x)",
                                 want, got);
                return false;
            }
        }
        a->records++;
        if (rh.type == FERRY_REC_FEATURES) {
            a->crc = a->crc_pending;
            /* Without trailers the running CRC would be computed for nothing. */
            ferry__stream_set_crc(a->s, a->crc);
        }
        if (rh.type == FERRY_REC_END) {
            return check_end(a, errp);
        }
    }
}

static json_t *ram_json(const Analyzer *a)
{
    json_t *blocks = json_array();
    for (uint32_t i = 0; a->blocks && i < a->cfg.nblocks; i++) {
        const BlockStats *b = &a->blocks[i];
        json_array_append_new(blocks, json_pack("{s:o, s:I, s:I, s:I}", "name", jstr(a->cfg.blocks[i].name),
                                                "pages", (json_int_t)b->pages, "zero-pages",
                                                (json_int_t)b->zero_pages, "data-bytes", (json_int_t)b->data_bytes));
    }
    json_t *r = json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:o}", "records", (json_int_t)a->ram_records,
                          "pages", (json_int_t)a->pages, "zero-pages", (json_int_t)a->zero_pages, "data-pages",
                          (json_int_t)a->data_pages, "data-bytes", (json_int_t)a->data_bytes, "passes",
                          (json_int_t)a->passes, "hint-records", (json_int_t)a->hint_records, "hinted-pages",
                          (json_int_t)a->hinted_pages, "blocks", blocks);
    if (a->piped_bytes) {
        json_object_set_new(r, "piped-bytes", json_integer((json_int_t)a->piped_bytes));
    }
    return r;
}

static void set_opt(json_t *obj, const char *key, json_t *val)
{
    if (val) {
        json_object_set(obj, key, val);
    }
}

bool ferry_stream_analyze(int fd, unsigned flags, json_t **result, FerryError **errp)
{
    Analyzer a = { .flags = flags, .crc = true, .phase = EXPECT_HELLO };
    FerryError *err = NULL;
    uint64_t where = 0, bytes = 0;
    const char *record = "stream header";
    bool ok = false, opened = false;

    a.sections = json_array();
    a.schema = json_array();
    a.unknown = json_array();
    a.fds = json_array();

    /* The channel switches a pipe to non-blocking mode, which is shared with the caller's fd: put it back. */
    int fl = fcntl(fd, F_GETFL);
    int dfd = fl < 0 ? -1 : fcntl(fd, F_DUPFD_CLOEXEC, 0);
    FerryChannel *c = dfd < 0 ? NULL : ferry__channel_new_fd(dfd, "analyzed stream");
    if (!c) {
        if (dfd >= 0) {
            close(dfd);
        }
        ferry_error_setg(&err, "cannot read the stream from fd %d: not an open file descriptor", fd);
    } else {
        a.s = ferry__stream_new(c);
        ok = analyze(&a, &where, &record, &err);
        opened = true;
        bytes = ferry__stream_bytes_read(a.s);
        ferry__stream_free(a.s);
        a.s = NULL;
        ferry__channel_free(c);
        fcntl(fd, F_SETFL, fl);
    }

    json_t *r = json_object();
    if (flags & FERRY_ANALYZE_SCHEMA_ONLY) {
        json_object_set(r, "sections", a.schema);
    } else {
        set_opt(r, "header", a.header);
        set_opt(r, "offered", a.offered);
        set_opt(r, "features", a.features);
        set_opt(r, "config", a.config);
        json_object_set(r, "sections", a.sections);
        json_object_set(r, "schema", a.schema);
        json_object_set_new(r, "ram", ram_json(&a));
        set_opt(r, "end", a.end);
        json_object_set_new(r, "records", json_integer((json_int_t)a.records));
        json_object_set_new(r, "bytes", json_integer((json_int_t)bytes));
        json_object_set_new(r, "framing-bytes", json_integer((json_int_t)(bytes - a.data_bytes)));
        json_object_set(r, "unknown-records", a.unknown);
        json_object_set(r, "fds", a.fds);
    }
    if (!ok) {
        json_object_set_new(r, "error", json_pack("{s:I, s:s, s:o}", "offset", (json_int_t)where, "record", record,
                                                  "message", jstr(ferry_error_msg(err))));
        if (opened) {
            ferry_error_prepend(&err, "at stream offset %llu, %s%s: ", (unsigned long long)where, record,
                                strcmp(record, "stream header") && strcmp(record, "record header") ? " record" : "");
        }
        ferry_error_propagate(errp, err);
    }
    *result = r;

    json_decref(a.header);
    json_decref(a.offered);
    json_decref(a.features);
    json_decref(a.config);
    json_decref(a.end);
    json_decref(a.sections);
    json_decref(a.schema);
    json_decref(a.unknown);
    json_decref(a.fds);
    ferry__wire_config_free(&a.cfg);
    free(a.blocks);
    free(a.seen);
    free(a.seen_index);
    return ok;
}
