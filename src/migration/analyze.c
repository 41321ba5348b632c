/*
 * The stream analyzer behind ferry_stream_analyze() and ferry-analyze: it reads a version-2 migration stream from
 * an fd up to its END record, checks everything a destination would check that does not depend on the
 * destination's own RAM blocks and sections (framing, order, trailers, features, run lengths, schemas, section
 * encodings, END totals), and describes the stream as JSON. It is not a loader: nothing is applied anywhere, page
 * contents are skipped through the stream's buffer, and at most one control or SECTION record is held in memory.
 *
 * The record reader it shares with the destination (record-reader.c) reads the records and enforces their order
 * (docs/stream-format.md: HELLO, FEATURES, CONFIG, then POPULATE_HINT / RAM_PAGES / PASS_END / FDS, then SECTIONs,
 * then END), their flags, lengths and trailers; this file has one step per record kind that checks and describes
 * its content. Unknown non-critical records may appear anywhere between FEATURES and END and are listed; unknown
 * critical ones end the analysis. Bytes after END are not read: a file: stream may be followed by other data.
 *
 * mapped-ram: after its MAPPED_RAM record the file holds page regions (a bitmap, a CRC32C table and the pages of
 * each block) and the records go on at the resume offset. The analyzer reads the regions in order through the
 * stream, as the records (so stdin works too): it counts the bitmap's pages into the RAM totals END is checked
 * against, checks each present page against its CRC32C, and checks that each absent page reads as zero (the
 * invariant a mapped restore relies on). Only a bitmap and a checksum table are held in memory, grown as their
 * bytes arrive, so a CONFIG that claims more RAM than the file holds costs no more than the file.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ferry/analyze.h"
#include "channel/channel.h"
#include "migration/record-reader.h"
#include "stream/stream.h"
#include "util/util.h"
#include "visitor/visitor-int.h"
#include "wire/wire.h"

typedef struct BlockStats {
    uint64_t npages;
    uint64_t pages, zero_pages, data_bytes;
} BlockStats;

typedef struct SeenSection {
    char name[256];
    uint32_t instance_id;
} SeenSection;

typedef struct Analyzer {
    FerryRecordReader r;
    unsigned flags;

    json_t *header, *offered, *features, *config, *end;
    json_t *sections, *schema, *unknown, *fds;
    json_t *postcopy; /* {"flags": [...], "needed-pages": N, "run": bool} once POSTCOPY_START was read */

    FerryWireFeatureList offer; /* HELLO's: FEATURES must stay within it */
    FerryWireConfig cfg;
    BlockStats *blocks;

    SeenSection *seen;  /* every section so far, for the duplicate check; grows by doubling */
    size_t nseen, seen_cap;
    uint32_t *seen_index; /* open-addressing hash of seen: entry i + 1, 0 for free; seen_cap * 2 slots */

    uint64_t ram_records, pages, zero_pages, data_pages, data_bytes, passes, hint_records, hinted_pages;
    uint64_t piped_bytes; /* page data announced by runs whose data went through the page pipe */
    FerryWireEnd endrec;

    int64_t file_base;     /* the file offset of the stream's first byte, -1 when the input cannot seek (a pipe) */
    FerryWireMapped layout; /* MAPPED_RAM's, once read; its regions are read after the record's trailer */
    bool mapped_pending;    /* MAPPED_RAM was read and its regions were not yet */
    json_t *mapped;         /* the "mapped-ram" member */
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

static json_t *features_json(const FerryWireFeatureList *l, bool mark_unknown)
{
    json_t *arr = json_array();
    for (uint32_t i = 0; i < l->n; i++) {
        json_t *f = json_pack("{s:s, s:b}", "name", l->f[i].name, "critical",
                              (l->f[i].flags & FERRY_FEATURE_CRITICAL) != 0);
        if (mark_unknown && !ferry__feature_known(l->f[i].name)) {
            json_object_set_new(f, "known", json_false());
        }
        json_array_append_new(arr, f);
    }
    return arr;
}

static bool do_hello(Analyzer *a, FerryError **errp)
{
    if (!ferry__record_read_features(&a->r, &a->offer, errp)) {
        return false;
    }
    a->offered = features_json(&a->offer, false);
    return true;
}

/*
 * FEATURES: the stream may use a feature this build does not know only if it is not critical, and only what HELLO
 * offered. multifd is known but not readable here: its pages travel on other connections, which a reader of the
 * main stream does not see, so END's totals could not be checked.
 */
static bool do_features(Analyzer *a, FerryError **errp)
{
    FerryWireFeatureList l;
    if (!ferry__record_read_features(&a->r, &l, errp)) {
        return false;
    }
    a->features = features_json(&l, true);
    for (uint32_t i = 0; i < l.n; i++) {
        const FerryWireFeature *f = &l.f[i];
        bool known = ferry__feature_known(f->name) && strcmp(f->name, ferry__feature_name(FERRY_CAP_MULTIFD)) != 0;
        if (!known && (f->flags & FERRY_FEATURE_CRITICAL)) {
            ferry_error_setg(errp, "the stream uses feature '%s', which this reader does not support", f->name);
            return false;
        }
    }
    if (!ferry__record_check_offered(&l, &a->offer, errp)) {
        return false;
    }
    ferry__record_set_features(&a->r, &l);
    return true;
}

static bool do_config(Analyzer *a, FerryError **errp)
{
    if (!ferry__record_read_config(&a->r, &a->cfg, errp)) {
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
    return true;
}

static bool do_hint(Analyzer *a, FerryError **errp)
{
    uint8_t *buf;
    FerryWireHint h;
    if (!ferry__record_uses(&a->r, FERRY_CAP_POPULATE_HINTS)) {
        ferry_error_setg(errp, "POPULATE_HINT record in a stream whose FEATURES lack '%s'",
                         ferry__feature_name(FERRY_CAP_POPULATE_HINTS));
        return false;
    }
    if (!ferry__record_read_hint(&a->r, &buf, &h, errp)) {
        return false;
    }
    bool ok = false;
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

static bool do_pages(Analyzer *a, FerryError **errp)
{
    uint8_t zmap[FERRY_WIRE_MAX_RUN_PAGES / 8];
    FerryWireRun run;
    uint32_t zeros;
    if (!ferry__record_read_run(&a->r, a->cfg.page_size, &run, zmap, &zeros, errp)) {
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
    uint64_t data = (uint64_t)(run.count - zeros) * a->cfg.page_size;
    if (run.flags & FERRY_RUN_DATA_IN_PIPE) {
        /* The data went through the page pipe (unix-page-flipping): it is not in the stream. */
        a->piped_bytes += data;
        data = 0;
    }
    if (!ferry__record_skip(&a->r, data, errp)) {
        return false;
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

/* MAPPED_RAM: the layout, checked against CONFIG; the regions follow the record's trailer (read_mapped_regions). */
static bool do_mapped(Analyzer *a, FerryError **errp)
{
    uint8_t *payload;
    if (a->mapped) {
        ferry_error_setg(errp, "a second MAPPED_RAM record: the layout of the page regions is given once");
        return false;
    }
    if (!ferry__record_read_payload(&a->r, &payload, errp)) {
        return false;
    }
    uint32_t len = a->r.rh.length;
    uint64_t after = a->r.offset + FERRY_WIRE_RECORD_HEADER_LEN + len +
                     (a->r.trailers ? FERRY_WIRE_RECORD_TRAILER_LEN : 0);
    bool ok = ferry__wire_mapped_decode(payload, len, &a->cfg, after, &a->layout, errp);
    free(payload);
    if (!ok) {
        return false;
    }
    json_t *blocks = json_array();
    for (uint32_t i = 0; i < a->layout.nblocks; i++) {
        const FerryWireMappedBlock *mb = &a->layout.blocks[i];
        json_array_append_new(blocks, json_pack("{s:o, s:o, s:o, s:o, s:I}", "name", jstr(a->cfg.blocks[i].name),
                                                "bitmap-offset", ju64(mb->bitmap), "checksums-offset",
                                                ju64(mb->checksums), "pages-offset", ju64(mb->pages),
                                                "pages-present", (json_int_t)0));
    }
    a->mapped = json_pack("{s:o, s:o, s:b, s:I, s:I}", "blocks", blocks, "resume-offset", ju64(a->layout.resume),
                          "checksums", (a->layout.flags & FERRY_MAPPED_F_CHECKSUMS) != 0, "pages-present",
                          (json_int_t)0, "pages-verified", (json_int_t)0);
    a->mapped_pending = true;
    return true;
}

/* Reads @len bytes of a region at stream offset @off into *buf, grown as the bytes arrive so that the allocation
 * never runs ahead of what the input really holds by more than one chunk. */
static bool read_region(Analyzer *a, uint64_t off, uint64_t len, uint8_t **buf, FerryError **errp)
{
    const uint64_t chunk = 1u << 20;
    FerryStream *s = a->r.s;
    a->r.offset = off;
    if (!ferry__stream_read_seek(s, off)) {
        ferry__stream_check(s, errp);
        return false;
    }
    for (uint64_t done = 0; done < len;) {
        uint64_t n = len - done < chunk ? len - done : chunk;
        *buf = ferry__xrealloc(*buf, (size_t)(done + n));
        if (!ferry__stream_read(s, *buf + done, (size_t)n)) {
            ferry__stream_check(s, errp);
            return false;
        }
        done += n;
    }
    return true;
}

/* Where a page is, for messages: the file offset when the input is a file, else the stream offset. */
static void page_where(const Analyzer *a, uint64_t off, uint64_t page, uint32_t block, char *buf, size_t size)
{
    snprintf(buf, size, "at %s offset %llu (page %llu of RAM block '%s')", a->file_base >= 0 ? "file" : "stream",
             (unsigned long long)(a->file_base >= 0 ? (uint64_t)a->file_base + off : off),
             (unsigned long long)page, a->cfg.blocks[block].name);
}

static bool all_zero(const uint8_t *p, size_t len)
{
    return len == 0 || (p[0] == 0 && memcmp(p, p + 1, len - 1) == 0);
}

#define REGION_BUF (1u << 20) /* the pages region is read in pieces of at most this */

/* Checks page @page of block @i, whose CRC32C is @crc and which is all zero if @zero, against bitmap and table. */
static bool check_mapped_page(Analyzer *a, uint32_t i, uint64_t page, const uint8_t *bitmap, const uint8_t *table,
                              uint32_t crc, bool zero, uint64_t *present, uint64_t *verified, FerryError **errp)
{
    uint64_t off = a->layout.blocks[i].pages + page * a->cfg.page_size;
    char where[512];
    if (!(bitmap[page / 8] & (1u << (page % 8)))) {
        if (!zero) {
            a->r.offset = off;
            page_where(a, off, page, i, where, sizeof(where));
            ferry_error_setg(errp, "%s: the bitmap says the page is absent, but it does not read as zero", where);
            return false;
        }
        return true;
    }
    (*present)++;
    if (table) {
        uint32_t want = ferry__get_be32(table + page * 4);
        if (want != crc) {
            a->r.offset = off;
            page_where(a, off, page, i, where, sizeof(where));
            ferry_error_setg(errp, "%s: CRC mismatch: the checksum table has 0x%08x, the page 0x%08x", where, want,
                             crc);
            return false;
        }
        (*verified)++;
    }
    return true;
}

/*
 * One block's regions: the bitmap, the checksum table, then every page (present: its CRC32C; absent: zero). The
 * pages are read in units of a page or of REGION_BUF, whichever is smaller (a page may be up to 1 GiB), a page's
 * CRC and zero test carried from unit to unit.
 */
static bool read_mapped_block(Analyzer *a, uint32_t i, uint8_t *buf, uint64_t *present, uint64_t *verified,
                              FerryError **errp)
{
    const FerryWireMappedBlock *mb = &a->layout.blocks[i];
    const uint32_t ps = a->cfg.page_size;
    const uint32_t unit = ps < REGION_BUF ? ps : REGION_BUF, per_page = ps / unit, per_buf = REGION_BUF / unit;
    const uint64_t npages = a->blocks[i].npages, units = npages * per_page;
    const bool sums = (a->layout.flags & FERRY_MAPPED_F_CHECKSUMS) != 0;
    uint8_t *bitmap = NULL, *table = NULL;
    bool ok = read_region(a, mb->bitmap, (npages + 7) / 8, &bitmap, errp) &&
              (!sums || read_region(a, mb->checksums, npages * 4, &table, errp));
    uint32_t crc = 0;
    bool zero = true;
    *present = *verified = 0;
    if (ok) {
        a->r.offset = mb->pages;
        ok = ferry__stream_read_seek(a->r.s, mb->pages) || ferry__stream_check(a->r.s, errp);
    }
    for (uint64_t u = 0; ok && u < units; u += per_buf) {
        uint64_t n = units - u < per_buf ? units - u : per_buf;
        a->r.offset = mb->pages + u * unit;
        if (!ferry__stream_read(a->r.s, buf, (size_t)(n * unit))) {
            ok = ferry__stream_check(a->r.s, errp);
            break;
        }
        for (uint64_t k = 0; ok && k < n; k++) {
            const uint8_t *data = buf + k * unit;
            uint64_t page = (u + k) / per_page;
            if ((u + k) % per_page == 0) {
                crc = 0;
                zero = true;
            }
            if (bitmap[page / 8] & (1u << (page % 8))) {
                crc = table ? ferry__crc32c(crc, data, unit) : 0;
            } else {
                zero = zero && all_zero(data, unit);
            }
            if ((u + k) % per_page == per_page - 1) {
                ok = check_mapped_page(a, i, page, bitmap, table, crc, zero, present, verified, errp);
            }
        }
    }
    free(bitmap);
    free(table);
    return ok;
}

/* The page regions after MAPPED_RAM, then on to the resume offset where the records go on. */
static bool read_mapped_regions(Analyzer *a, FerryError **errp)
{
    a->mapped_pending = false;
    a->r.where = "MAPPED_RAM page regions";
    a->r.in_record = false;
    uint8_t *pages = ferry__xmalloc(REGION_BUF);
    json_t *blocks = json_object_get(a->mapped, "blocks");
    uint64_t total = 0, total_verified = 0;
    bool ok = true;
    for (uint32_t i = 0; ok && i < a->layout.nblocks; i++) {
        uint64_t present, verified;
        ok = read_mapped_block(a, i, pages, &present, &verified, errp);
        if (ok) {
            BlockStats *b = &a->blocks[i];
            json_object_set_new(json_array_get(blocks, i), "pages-present", ju64(present));
            b->pages += present;
            b->data_bytes += present * a->cfg.page_size;
            a->pages += present;
            a->data_pages += present;
            a->data_bytes += present * a->cfg.page_size;
            total += present;
            total_verified += verified;
        }
    }
    free(pages);
    json_object_set_new(a->mapped, "pages-present", ju64(total));
    json_object_set_new(a->mapped, "pages-verified", ju64(total_verified));
    if (ok) {
        a->r.offset = a->layout.resume;
        ok = ferry__stream_read_seek(a->r.s, a->layout.resume) || ferry__stream_check(a->r.s, errp);
    }
    return ok;
}

static bool do_pass_end(Analyzer *a, FerryError **errp)
{
    uint8_t p[8];
    if (!ferry__record_read(&a->r, p, sizeof(p), errp)) {
        return false;
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

static bool do_section(Analyzer *a, FerryError **errp)
{
    uint8_t *buf;
    FerryWireSection sec;
    if (!ferry__record_read_section(&a->r, &buf, &sec, errp)) {
        return false;
    }
    FerrySchema *schema = NULL;
    json_t *sj = NULL, *state = NULL;
    bool ok = false;
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
                  "offset", (json_int_t)a->r.offset, "bytes", (json_int_t)sec.data_len, "state", state));
    free(name);
    ok = true;
out:
    json_decref(state);
    ferry__schema_free(schema);
    free(buf);
    return ok;
}

static bool do_end(Analyzer *a, FerryError **errp)
{
    uint8_t p[FERRY_WIRE_END_LEN];
    return ferry__record_read(&a->r, p, sizeof(p), errp) && ferry__wire_end_decode(p, &a->endrec, errp);
}

/* END's totals, checked once its trailer has been: a damaged count is then the writer's, not the medium's. */
static bool check_end(Analyzer *a, FerryError **errp)
{
    if (!ferry__record_check_end(&a->endrec, a->pages, a->nseen, errp)) {
        return false;
    }
    a->end = json_pack("{s:o, s:I, s:b}", "pages", ju64(a->endrec.pages), "sections",
                       (json_int_t)a->endrec.sections, "source-running",
                       (a->endrec.flags & FERRY_END_SOURCE_RUNNING) != 0);
    return true;
}

static const char *fd_kind_json(uint8_t kind)
{
    switch (kind) {
    case FERRY_FD_RAM_BLOCK: return "ram-block";
    case FERRY_FD_PAGE_PIPE: return "page-pipe";
    default: return "backend";
    }
}

/* FDS: the descriptors themselves only exist on a live UNIX socket; the analyzer lists what they were. */
static bool do_fds(Analyzer *a, FerryError **errp)
{
    FerryWireFd *entries;
    uint32_t n;
    if (!ferry__record_read_fds(&a->r, &entries, &n, errp)) {
        return false;
    }
    bool ok = true;
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
        json_array_append_new(a->fds, json_pack("{s:I, s:s, s:o}", "offset", (json_int_t)a->r.offset, "kind",
                                                fd_kind_json(entries[i].kind), "name", jstr(entries[i].name)));
    }
    free(entries);
    return ok;
}

/* A record of a type this reader does not know: the reader has checked it is not critical; skip and list it. */
static bool do_unknown(Analyzer *a, FerryError **errp)
{
    const FerryRecordHeader *rh = &a->r.rh;
    if (!ferry__record_skip(&a->r, rh->length, errp)) {
        return false;
    }
    json_array_append_new(a->unknown, json_pack("{s:I, s:I, s:I, s:b}", "offset", (json_int_t)a->r.offset, "type",
                                                (json_int_t)rh->type, "length", (json_int_t)rh->length,
                                                "critical", false));
    return true;
}

/* POSTCOPY_START (a capture of a postcopy's main channel): the switch, its flags. */
static bool do_pc_start(Analyzer *a, FerryError **errp)
{
    uint8_t p[FERRY_WIRE_PC_START_LEN];
    FerryWirePcStart st;
    if (!ferry__record_read(&a->r, p, sizeof(p), errp) || !ferry__wire_pc_start_decode(p, &st, errp)) {
        return false;
    }
    json_t *flags = json_array();
    if (st.flags & FERRY_PC_SOURCE_RUNNING) {
        json_array_append_new(flags, json_string("source-running"));
    }
    if (st.flags & FERRY_PC_PREEMPT) {
        json_array_append_new(flags, json_string("preempt"));
    }
    a->postcopy = json_pack("{s:o, s:I, s:b}", "flags", flags, "needed-pages", (json_int_t)0, "run", false);
    return true;
}

/* POSTCOPY_NEED: the ranges the destination drops and fetches, checked against CONFIG and counted. */
static bool do_pc_need(Analyzer *a, FerryError **errp)
{
    uint8_t *buf;
    FerryWireHint h;
    if (!ferry__record_read_hint(&a->r, &buf, &h, errp)) {
        return false;
    }
    bool ok = h.block < a->cfg.nblocks;
    uint64_t pages = 0;
    if (!ok) {
        ferry_error_setg(errp, "needed pages of RAM block %u, the stream has %u blocks", h.block, a->cfg.nblocks);
    }
    for (uint32_t i = 0; ok && i < h.count; i++) {
        uint64_t first, count, npages = a->blocks[h.block].npages;
        ferry__wire_hint_range(&h, i, &first, &count);
        if (count == 0 || first >= npages || count > npages - first) {
            ferry_error_setg(errp, "needed range %llu+%llu is outside RAM block '%s' (%llu pages)",
                             (unsigned long long)first, (unsigned long long)count, a->cfg.blocks[h.block].name,
                             (unsigned long long)npages);
            ok = false;
        }
        pages += count;
    }
    if (ok) {
        json_int_t before = json_integer_value(json_object_get(a->postcopy, "needed-pages"));
        json_object_set_new(a->postcopy, "needed-pages", json_integer(before + (json_int_t)pages));
    }
    free(buf);
    return ok;
}

static bool do_pc_run(Analyzer *a, FerryError **errp)
{
    (void)errp;
    json_object_set_new(a->postcopy, "run", json_true());
    return true;
}

typedef bool (*AnalyzeStep)(Analyzer *a, FerryError **errp);

/* One step per record kind. MULTIFD, MULTIFD_SYNC and COMMIT have none: FEATURES refuses multifd, and the
 * analysis stops at END. */
static const struct {
    uint16_t type;
    AnalyzeStep step;
} steps[] = {
    { FERRY_REC_HELLO, do_hello },
    { FERRY_REC_FEATURES, do_features },
    { FERRY_REC_CONFIG, do_config },
    { FERRY_REC_FDS, do_fds },
    { FERRY_REC_POPULATE_HINT, do_hint },
    { FERRY_REC_RAM_PAGES, do_pages },
    { FERRY_REC_MAPPED_RAM, do_mapped },
    { FERRY_REC_PASS_END, do_pass_end },
    { FERRY_REC_SECTION, do_section },
    { FERRY_REC_END, do_end },
    { FERRY_REC_POSTCOPY_START, do_pc_start },
    { FERRY_REC_POSTCOPY_NEED, do_pc_need },
    { FERRY_REC_POSTCOPY_RUN, do_pc_run },
};

static bool do_record(Analyzer *a, FerryError **errp)
{
    if (!ferry__record_known(&a->r)) {
        return do_unknown(a, errp);
    }
    for (size_t i = 0; i < FERRY_ARRAY_SIZE(steps); i++) {
        if (steps[i].type == a->r.rh.type) {
            return steps[i].step(a, errp);
        }
    }
    FERRY_BUG("the record reader let a %s record through to the analyzer", a->r.where);
    ferry_error_setg(errp, "internal error: no step for the record");
    return false;
}

/* Reads to the END record; on failure a->r says where. */
static bool analyze(Analyzer *a, FerryError **errp)
{
    uint8_t hdr[FERRY_WIRE_HEADER_LEN];
    if (!ferry__record_read_stream_header(&a->r, hdr, errp) || !ferry__wire_decode_header(hdr, errp)) {
        return false;
    }
    a->header = json_pack("{s:s, s:I, s:I}", "magic", FERRY_WIRE_MAGIC, "version",
                          (json_int_t)ferry__get_be32(hdr + 8), "flags", (json_int_t)ferry__get_be32(hdr + 12));
    while (a->r.phase != FERRY_PHASE_END) {
        if (!ferry__record_next(&a->r, errp) || !do_record(a, errp) || !ferry__record_finish(&a->r, errp)) {
            return false;
        }
        if (a->mapped_pending && !read_mapped_regions(a, errp)) {
            return false;
        }
    }
    return check_end(a, errp);
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

/* The JSON of what was read, complete or not (docs/stream-format.md, "Output"). */
static json_t *result_json(const Analyzer *a, uint64_t bytes)
{
    json_t *r = json_object();
    if (a->flags & FERRY_ANALYZE_SCHEMA_ONLY) {
        json_object_set(r, "sections", a->schema);
        return r;
    }
    set_opt(r, "header", a->header);
    set_opt(r, "offered", a->offered);
    set_opt(r, "features", a->features);
    set_opt(r, "config", a->config);
    json_object_set(r, "sections", a->sections);
    json_object_set(r, "schema", a->schema);
    json_object_set_new(r, "ram", ram_json(a));
    set_opt(r, "end", a->end);
    json_object_set_new(r, "records", json_integer((json_int_t)a->r.records));
    json_object_set_new(r, "bytes", json_integer((json_int_t)bytes));
    json_object_set_new(r, "framing-bytes", json_integer((json_int_t)(bytes - a->data_bytes)));
    json_object_set(r, "unknown-records", a->unknown);
    json_object_set(r, "fds", a->fds);
    set_opt(r, "postcopy", a->postcopy);
    set_opt(r, "mapped-ram", a->mapped);
    return r;
}

/* Reads the stream from a duplicate of @fd; *bytes gets how many bytes were read, *started whether reading began
 * (if so, a->r says where a failure was found). */
static bool analyze_fd(Analyzer *a, int fd, uint64_t *bytes, bool *started, FerryError **errp)
{
    /* The channel switches a pipe to non-blocking mode, which is shared with the caller's fd: put it back. */
    int fl = fcntl(fd, F_GETFL);
    int dfd = fl < 0 ? -1 : fcntl(fd, F_DUPFD_CLOEXEC, 0);
    FerryChannel *c = dfd < 0 ? NULL : ferry__channel_new_fd(dfd, "analyzed stream");
    if (!c) {
        if (dfd >= 0) {
            close(dfd);
        }
        ferry_error_setg(errp, "cannot read the stream from fd %d: not an open file descriptor", fd);
        return false;
    }
    /* Where the stream starts in the file, for messages that name a file offset (mapped-ram's pages). */
    off_t base = lseek(dfd, 0, SEEK_CUR);
    a->file_base = base < 0 ? -1 : (int64_t)base;
    FerryStream *s = ferry__stream_new(c);
    ferry__record_reader_init(&a->r, s);
    *started = true;
    bool ok = analyze(a, errp);
    *bytes = ferry__stream_bytes_read(s);
    ferry__stream_free(s);
    a->r.s = NULL;
    ferry__channel_free(c);
    fcntl(fd, F_SETFL, fl);
    return ok;
}

static void analyzer_free(Analyzer *a)
{
    json_decref(a->header);
    json_decref(a->offered);
    json_decref(a->features);
    json_decref(a->config);
    json_decref(a->end);
    json_decref(a->sections);
    json_decref(a->schema);
    json_decref(a->unknown);
    json_decref(a->fds);
    json_decref(a->postcopy);
    json_decref(a->mapped);
    free(a->layout.blocks);
    ferry__wire_config_free(&a->cfg);
    free(a->blocks);
    free(a->seen);
    free(a->seen_index);
}

bool ferry_stream_analyze(int fd, unsigned flags, json_t **result, FerryError **errp)
{
    Analyzer a = { .flags = flags };
    FerryError *err = NULL;
    uint64_t bytes = 0;
    bool started = false;
    a.r.where = "stream header"; /* until the reader starts */
    a.sections = json_array();
    a.schema = json_array();
    a.unknown = json_array();
    a.fds = json_array();

    bool ok = analyze_fd(&a, fd, &bytes, &started, &err);
    json_t *r = result_json(&a, bytes);
    if (!ok) {
        /* The members say where; the error, as the destination's, starts with it. */
        json_object_set_new(r, "error", json_pack("{s:I, s:s, s:o}", "offset", (json_int_t)a.r.offset, "record",
                                                  a.r.where, "message", jstr(ferry_error_msg(err))));
        if (started) {
            ferry__record_error_prefix(&a.r, &err);
        }
        ferry_error_propagate(errp, err);
    }
    *result = r;
    analyzer_free(&a);
    return ok;
}
