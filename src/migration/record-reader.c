/*
 * The record reader shared by the destination and the stream analyzer (record-reader.h): the grammar of the
 * stream as one table, and the reading of headers, payloads and trailers within it. Both readers therefore refuse
 * exactly the same misplaced, mis-flagged or mis-sized records with the same message, and damage is reported in
 * one place with the offset of the record where it was found. What a record means is not decided here.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "migration/record-reader.h"
#include "util/util.h"

#define BIT(phase) (1u << (phase))
#define P(phase) BIT(FERRY_PHASE_##phase)
#define KEEP FERRY_PHASE__MAX /* a record that does not change the phase */
#define NO_CAP (-1)
#define CONTROL FERRY_WIRE_MAX_CONTROL_LEN
#define CAP(c) (1u << FERRY_CAP_##c)

/* Where a record may come, what phase follows it, its payload's bounds, and the feature it needs or excludes. */
typedef struct RecordRule {
    uint16_t type;
    unsigned phases;        /* bit per FerryStreamPhase */
    FerryStreamPhase next;  /* the phase once the record has been read, or KEEP */
    unsigned keeps;         /* phases in which the record does not change the phase after all */
    uint32_t min_len, max_len;
    int needs;              /* FerryCapability whose feature the stream must use, or NO_CAP */
    unsigned excludes;      /* CAPS() of the features the stream must not use (0: none) */
    unsigned excludes_in;   /* the phases in which @excludes holds (0: all) */
} RecordRule;

/* docs/stream-format.md, "Records": keep the two in step. */
static const RecordRule rules[] = {
    { FERRY_REC_HELLO, P(HELLO), FERRY_PHASE_FEATURES, 0, 0, CONTROL, NO_CAP, 0, 0 },
    { FERRY_REC_FEATURES, P(FEATURES), FERRY_PHASE_CONFIG, 0, 0, CONTROL, NO_CAP, 0, 0 },
    { FERRY_REC_CONFIG, P(CONFIG), FERRY_PHASE_RAM, 0, 0, CONTROL, NO_CAP, 0, 0 },
    /* In postcopy-setup: the backends' fds of backend-transfer. */
    { FERRY_REC_FDS, P(RAM) | P(POSTCOPY_SETUP), KEEP, 0, 0, CONTROL, NO_CAP, 0, 0 },
    { FERRY_REC_MULTIFD, P(RAM), KEEP, 0, 0, CONTROL, FERRY_CAP_MULTIFD, 0, 0 },
    /* A full hint record (64 Ki ranges and its 8-byte header) is just over 1 MiB. Hints are harmless, so the
     * destination acts on them whatever FEATURES says; the analyzer, a checker, refuses them without the feature. */
    { FERRY_REC_POPULATE_HINT, P(RAM), KEEP, 0, 0, CONTROL + 64, NO_CAP, 0, 0 },
    /* mapped-ram: the layout of the file's page regions, once, right after CONFIG; the stream goes on past them. */
    { FERRY_REC_MAPPED_RAM, P(RAM), KEEP, 0, FERRY_WIRE_MAPPED_HEADER_LEN, CONTROL, FERRY_CAP_MAPPED_RAM, 0, 0 },
    /* Its exact length follows from its run header and zero bitmap: the step checks it before touching RAM. With
     * multifd, pages travel on the main channel only after the switch to postcopy. */
    { FERRY_REC_RAM_PAGES, P(RAM) | P(POSTCOPY), KEEP, 0, 0, UINT32_MAX, NO_CAP, CAP(MULTIFD) | CAP(MAPPED_RAM), P(RAM) },
    { FERRY_REC_PASS_END, P(RAM), KEEP, 0, 8, 8, NO_CAP, 0, 0 },
    { FERRY_REC_MULTIFD_SYNC, P(RAM), KEEP, 0, 8, 8, FERRY_CAP_MULTIFD, 0, 0 },
    /* In postcopy-setup the device state comes before POSTCOPY_RUN, which moves on. */
    { FERRY_REC_SECTION, P(RAM) | P(SECTIONS) | P(POSTCOPY_SETUP), FERRY_PHASE_SECTIONS, P(POSTCOPY_SETUP), 0,
      FERRY_WIRE_MAX_SECTION_LEN, NO_CAP, 0, 0 },
    { FERRY_REC_END, P(RAM) | P(SECTIONS) | P(POSTCOPY), FERRY_PHASE_END, 0, FERRY_WIRE_END_LEN, FERRY_WIRE_END_LEN,
      NO_CAP, 0, 0 },
    { FERRY_REC_COMMIT, P(END), FERRY_PHASE_DONE, 0, 0, 0, FERRY_CAP_SWITCHOVER_COMMIT, 0, 0 },
    { FERRY_REC_POSTCOPY_START, P(RAM), FERRY_PHASE_POSTCOPY_SETUP, 0, FERRY_WIRE_PC_START_LEN,
      FERRY_WIRE_PC_START_LEN, FERRY_CAP_POSTCOPY_RAM, 0, 0 },
    { FERRY_REC_POSTCOPY_NEED, P(POSTCOPY_SETUP), KEEP, 0, 0, CONTROL + 64, FERRY_CAP_POSTCOPY_RAM, 0, 0 },
    { FERRY_REC_POSTCOPY_RUN, P(POSTCOPY_SETUP), FERRY_PHASE_POSTCOPY, 0, 0, 0, FERRY_CAP_POSTCOPY_RAM, 0, 0 },
    /* Only as the first record of a recovery connection, which the destination reads on its own. */
    { FERRY_REC_POSTCOPY_RESUME, 0, KEEP, 0, 0, 0, NO_CAP, 0, 0 },
    /* The return path's records never travel in this direction. */
    { FERRY_REC_HELLO_REPLY, 0, KEEP, 0, 0, 0, NO_CAP, 0, 0 },
    { FERRY_REC_ACK, 0, KEEP, 0, 0, 0, NO_CAP, 0, 0 },
    { FERRY_REC_NACK, 0, KEEP, 0, 0, 0, NO_CAP, 0, 0 },
    { FERRY_REC_REQ_PAGES, 0, KEEP, 0, 0, 0, NO_CAP, 0, 0 },
    { FERRY_REC_RESUME_NEED, 0, KEEP, 0, 0, 0, NO_CAP, 0, 0 },
    { FERRY_REC_RESUME_ACK, 0, KEEP, 0, 0, 0, NO_CAP, 0, 0 },
    { FERRY_REC_KEEPALIVE, 0, KEEP, 0, 0, 0, NO_CAP, 0, 0 },
};

/* Records of a type this reader does not know: anywhere between FEATURES and END (and skipped). */
static const unsigned unknown_phases = P(CONFIG) | P(RAM) | P(SECTIONS) | P(POSTCOPY_SETUP) | P(POSTCOPY);

static const char *const phase_names[FERRY_PHASE__MAX] = {
    [FERRY_PHASE_HELLO] = "hello", [FERRY_PHASE_FEATURES] = "features", [FERRY_PHASE_CONFIG] = "config",
    [FERRY_PHASE_RAM] = "ram",     [FERRY_PHASE_SECTIONS] = "sections", [FERRY_PHASE_END] = "end",
    [FERRY_PHASE_DONE] = "done",   [FERRY_PHASE_POSTCOPY_SETUP] = "postcopy-setup",
    [FERRY_PHASE_POSTCOPY] = "postcopy",
};

static const RecordRule *rule_of(uint16_t type)
{
    for (size_t i = 0; i < FERRY_ARRAY_SIZE(rules); i++) {
        if (rules[i].type == type) {
            return &rules[i];
        }
    }
    return NULL;
}

const char *ferry__stream_phase_name(FerryStreamPhase phase)
{
    return phase < FERRY_PHASE__MAX ? phase_names[phase] : "?";
}

void ferry__record_reader_init(FerryRecordReader *r, FerryStream *s)
{
    *r = (FerryRecordReader){ .s = s, .phase = FERRY_PHASE_HELLO, .where = "stream header", .trailers = true };
    r->offset = ferry__stream_bytes_read(s);
}

static bool stream_failed(const FerryRecordReader *r, FerryError **errp)
{
    ferry__stream_check(r->s, errp);
    return false;
}

bool ferry__record_read_stream_header(FerryRecordReader *r, uint8_t hdr[FERRY_WIRE_HEADER_LEN], FerryError **errp)
{
    r->offset = ferry__stream_bytes_read(r->s);
    r->where = "stream header";
    r->in_record = false;
    return ferry__stream_read(r->s, hdr, FERRY_WIRE_HEADER_LEN) || stream_failed(r, errp);
}

/* Why @rule's record cannot come now, as a hint for the message ("" if there is nothing useful to add). */
static void phase_hint(const FerryRecordReader *r, const RecordRule *rule, char *buf, size_t size)
{
    buf[0] = '\0';
    if (rule && rule->type == FERRY_REC_POSTCOPY_RESUME) {
        snprintf(buf, size, " (it only opens a recovering connection)");
        return;
    }
    if (rule && rule->phases == 0) {
        snprintf(buf, size, " (a return-path record)");
        return;
    }
    bool once = rule && rule->next != KEEP && (rule->phases & (rule->phases - 1)) == 0; /* one phase, left */
    if (once && rule->phases < BIT(r->phase)) {
        snprintf(buf, size, " (a second %s record)", ferry__wire_record_name(rule->type));
        return;
    }
    for (size_t i = 0; i < FERRY_ARRAY_SIZE(rules); i++) {
        if (rules[i].phases == BIT(r->phase) && rules[i].next != KEEP) {
            snprintf(buf, size, " (expected %s)", ferry__wire_record_name(rules[i].type));
            return;
        }
    }
    if (rule && r->phase == FERRY_PHASE_SECTIONS && (rule->phases & P(RAM))) {
        snprintf(buf, size, " (it must come before the first SECTION record)");
    }
}

static bool refuse_in_phase(const FerryRecordReader *r, const RecordRule *rule, FerryError **errp)
{
    char hint[64], what[32];
    phase_hint(r, rule, hint, sizeof(hint));
    if (rule) {
        snprintf(what, sizeof(what), "%s", ferry__wire_record_name(r->rh.type));
    } else {
        snprintf(what, sizeof(what), "type 0x%04x", r->rh.type);
    }
    ferry_error_setg(errp, "record %s not allowed in phase %s%s", what, ferry__stream_phase_name(r->phase), hint);
    return false;
}

/* The checks of a known record's header against its rule, the phase aside. */
static bool check_rule(const FerryRecordReader *r, const RecordRule *rule, FerryError **errp)
{
    const char *name = ferry__wire_record_name(rule->type);
    uint32_t len = r->rh.length;
    if (r->rh.flags & ~FERRY_REC_CRITICAL) {
        ferry_error_setg(errp, "reserved record flags 0x%04x are set", r->rh.flags & ~FERRY_REC_CRITICAL);
        return false;
    }
    if (rule->needs != NO_CAP && !ferry__record_uses(r, (FerryCapability)rule->needs)) {
        ferry_error_setg(errp, "%s record in a stream whose FEATURES lack '%s'", name,
                         ferry__feature_name((FerryCapability)rule->needs));
        return false;
    }
    for (int cap = 0; cap < FERRY_CAP__MAX; cap++) {
        if ((rule->excludes & (1u << cap)) && (!rule->excludes_in || (rule->excludes_in & BIT(r->phase))) &&
            ferry__record_uses(r, (FerryCapability)cap)) {
            ferry_error_setg(errp, "%s record on the main channel of a stream that uses '%s'", name,
                             ferry__feature_name((FerryCapability)cap));
            return false;
        }
    }
    if (rule->min_len == rule->max_len && len != rule->min_len) {
        ferry_error_setg(errp, "payload of %u bytes, expected %u", len, rule->min_len);
        return false;
    }
    if (len > rule->max_len) {
        ferry_error_setg(errp, "payload of %u bytes exceeds the limit of %u", len, rule->max_len);
        return false;
    }
    return true;
}

bool ferry__record_next(FerryRecordReader *r, FerryError **errp)
{
    uint8_t h[FERRY_WIRE_RECORD_HEADER_LEN];
    r->offset = ferry__stream_bytes_read(r->s);
    r->where = "record header";
    r->in_record = false;
    r->consumed = 0;
    ferry__stream_read_crc_reset(r->s);
    if (!ferry__stream_read(r->s, h, sizeof(h))) {
        return stream_failed(r, errp);
    }
    ferry__wire_decode_record(h, &r->rh);
    r->where = ferry__wire_record_name(r->rh.type);
    r->in_record = true;
    if (r->rh.type == FERRY_REC_NONE) {
        ferry_error_setg(errp, "record type 0 is invalid");
        return false;
    }
    const RecordRule *rule = rule_of(r->rh.type);
    if (!((rule ? rule->phases : unknown_phases) & BIT(r->phase))) {
        return refuse_in_phase(r, rule, errp);
    }
    if (!rule && (r->rh.flags & FERRY_REC_CRITICAL)) {
        ferry_error_setg(errp, "unknown critical record type 0x%04x (%u bytes)", r->rh.type, r->rh.length);
        return false;
    }
    return !rule || check_rule(r, rule, errp);
}

bool ferry__record_known(const FerryRecordReader *r)
{
    return rule_of(r->rh.type) != NULL;
}

/* A step asked for more than its record holds: it would read the next record's bytes as this one's. */
static bool overrun(const FerryRecordReader *r, uint64_t len, FerryError **errp)
{
    FERRY_BUG("reading %llu bytes at %llu of a %s record's %u payload bytes", (unsigned long long)len,
              (unsigned long long)r->consumed, r->where, r->rh.length);
    ferry_error_setg(errp, "internal error: a read past the end of the record");
    return false;
}

bool ferry__record_read(FerryRecordReader *r, void *buf, size_t len, FerryError **errp)
{
    if (len > r->rh.length - r->consumed) {
        return overrun(r, len, errp);
    }
    if (!ferry__stream_read(r->s, buf, len)) {
        return stream_failed(r, errp);
    }
    r->consumed += len;
    return true;
}

bool ferry__record_skip(FerryRecordReader *r, uint64_t len, FerryError **errp)
{
    if (len > r->rh.length - r->consumed) {
        return overrun(r, len, errp);
    }
    if (!ferry__stream_skip(r->s, len)) {
        return stream_failed(r, errp);
    }
    r->consumed += len;
    return true;
}

bool ferry__record_read_payload(FerryRecordReader *r, uint8_t **out, FerryError **errp)
{
    const size_t step = 64u << 10;
    size_t len = r->rh.length - r->consumed, cap = FERRY_MIN(len, step), got = 0;
    uint8_t *buf = ferry__xmalloc(cap ? cap : 1);
    while (got < len) {
        if (got == cap) {
            cap = FERRY_MIN(len, cap * 2);
            buf = ferry__xrealloc(buf, cap);
        }
        if (!ferry__record_read(r, buf + got, cap - got, errp)) {
            free(buf);
            return false;
        }
        got = cap;
    }
    *out = buf;
    return true;
}

/* The rest of the payload in *buf and its length, for a decoder. */
static bool read_rest(FerryRecordReader *r, uint8_t **buf, size_t *len, FerryError **errp)
{
    *len = r->rh.length - r->consumed;
    return ferry__record_read_payload(r, buf, errp);
}

bool ferry__record_read_features(FerryRecordReader *r, FerryWireFeatureList *l, FerryError **errp)
{
    uint8_t *buf;
    size_t len;
    if (!read_rest(r, &buf, &len, errp)) {
        return false;
    }
    bool ok = ferry__wire_features_decode(buf, len, l, errp);
    free(buf);
    return ok;
}

bool ferry__record_read_config(FerryRecordReader *r, FerryWireConfig *c, FerryError **errp)
{
    uint8_t *buf;
    size_t len;
    if (!read_rest(r, &buf, &len, errp)) {
        return false;
    }
    bool ok = ferry__wire_config_decode(buf, len, c, errp);
    free(buf);
    return ok;
}

bool ferry__record_read_fds(FerryRecordReader *r, FerryWireFd **entries, uint32_t *n, FerryError **errp)
{
    uint8_t *buf;
    size_t len;
    if (!read_rest(r, &buf, &len, errp)) {
        return false;
    }
    bool ok = ferry__wire_fds_decode(buf, len, entries, n, errp);
    free(buf);
    return ok;
}

bool ferry__record_read_multifd(FerryRecordReader *r, FerryWireMultifd *mfd, FerryError **errp)
{
    uint8_t *buf;
    size_t len;
    if (!read_rest(r, &buf, &len, errp)) {
        return false;
    }
    bool ok = ferry__wire_mfd_decode(buf, len, mfd, errp);
    free(buf);
    return ok;
}

bool ferry__record_read_hint(FerryRecordReader *r, uint8_t **payload, FerryWireHint *h, FerryError **errp)
{
    size_t len;
    if (!read_rest(r, payload, &len, errp)) {
        return false;
    }
    if (!ferry__wire_hint_decode(*payload, len, h, errp)) {
        free(*payload);
        return false;
    }
    return true;
}

bool ferry__record_read_section(FerryRecordReader *r, uint8_t **payload, FerryWireSection *sec, FerryError **errp)
{
    size_t len;
    if (!read_rest(r, payload, &len, errp)) {
        return false;
    }
    if (!ferry__wire_section_decode(*payload, len, sec, errp)) {
        free(*payload);
        return false;
    }
    return true;
}

bool ferry__record_read_run(FerryRecordReader *r, uint32_t page_size, FerryWireRun *run,
                            uint8_t zmap[FERRY_WIRE_MAX_RUN_PAGES / 8], uint32_t *zeros, FerryError **errp)
{
    uint8_t hdr[FERRY_WIRE_RAM_RUN_HEADER_LEN];
    uint32_t len = r->rh.length;
    memset(zmap, 0, FERRY_WIRE_MAX_RUN_PAGES / 8);
    if (len < sizeof(hdr)) {
        ferry_error_setg(errp, "payload of %u bytes is shorter than the %zu-byte run header", len, sizeof(hdr));
        return false;
    }
    if (!ferry__record_read(r, hdr, sizeof(hdr), errp)) {
        return false;
    }
    ferry__wire_run_decode(hdr, run);
    /* With a count out of range the bitmap is not read: ferry__wire_run_expected_len refuses the run first. */
    if (run->count >= 1 && run->count <= FERRY_WIRE_MAX_RUN_PAGES) {
        uint32_t zb = FERRY_DIV_ROUND_UP(run->count, 8);
        if (len < sizeof(hdr) + zb) {
            ferry_error_setg(errp, "payload of %u bytes is too short for the zero bitmap of %u pages", len,
                             run->count);
            return false;
        }
        if (!ferry__record_read(r, zmap, zb, errp)) {
            return false;
        }
    }
    uint64_t expect;
    if (!ferry__wire_run_expected_len(run, zmap, page_size, &expect, zeros, errp)) {
        return false;
    }
    if ((run->flags & FERRY_RUN_DATA_IN_PIPE) && !ferry__record_uses(r, FERRY_CAP_UNIX_PAGE_FLIPPING)) {
        ferry_error_setg(errp, "run with its data in the page pipe in a stream whose FEATURES lack '%s'",
                         ferry__feature_name(FERRY_CAP_UNIX_PAGE_FLIPPING));
        return false;
    }
    if (len != expect) {
        ferry_error_setg(errp, "run of pages %llu+%u in RAM block %u (%u zero) is %u bytes, expected %llu",
                         (unsigned long long)run->first, run->count, run->block, *zeros, len,
                         (unsigned long long)expect);
        return false;
    }
    return true;
}

void ferry__record_set_features(FerryRecordReader *r, const FerryWireFeatureList *used)
{
    r->features = *used;
    r->features_set = true;
}

bool ferry__record_uses(const FerryRecordReader *r, FerryCapability cap)
{
    return ferry__features_uses(&r->features, cap);
}

bool ferry__record_finish(FerryRecordReader *r, FerryError **errp)
{
    if (r->consumed != r->rh.length) {
        FERRY_BUG("a %s record's step consumed %llu of its %u payload bytes", r->where,
                  (unsigned long long)r->consumed, r->rh.length);
        ferry_error_setg(errp, "internal error: the record was not read to its end");
        return false;
    }
    /* The trailer: CRC32C of header and payload. A step may already have acted on the payload (pages written to
     * RAM, which nothing runs before END and a failed load discards); device state is loaded only after END's. */
    if (r->trailers) {
        uint32_t want = ferry__stream_read_crc(r->s), got;
        if (!ferry__stream_read_be32(r->s, &got)) {
            return stream_failed(r, errp);
        }
        if (got != want) {
            ferry_error_setg(errp, "stream damaged: CRC mismatch (computed 0x%08x, the record says 0x%08x)", want,
                             got);
            return false;
        }
    }
    r->records++;
    const RecordRule *rule = rule_of(r->rh.type);
    if (rule && rule->next != KEEP && !(rule->keeps & BIT(r->phase))) {
        r->phase = rule->next;
    }
    if (r->features_set) {
        /* From the next record on, trailers are as FEATURES says; without them the running CRC is not needed. */
        r->features_set = false;
        r->trailers = ferry__record_uses(r, FERRY_CAP_RECORD_CHECKSUM);
        ferry__stream_set_crc(r->s, r->trailers);
    }
    return true;
}

void ferry__record_error_prefix(const FerryRecordReader *r, FerryError **errp)
{
    ferry_error_prepend(errp, "at stream offset %llu, %s%s: ", (unsigned long long)r->offset, r->where,
                        r->in_record ? " record" : "");
}

bool ferry__record_check_end(const FerryWireEnd *end, uint64_t pages, uint64_t sections, FerryError **errp)
{
    if (end->pages != pages) {
        ferry_error_setg(errp, "stream damaged: the source sent %llu pages, %llu arrived",
                         (unsigned long long)end->pages, (unsigned long long)pages);
        return false;
    }
    if (end->sections != sections) {
        ferry_error_setg(errp, "stream damaged: the source sent %u sections, %llu arrived", end->sections,
                         (unsigned long long)sections);
        return false;
    }
    return true;
}

bool ferry__record_check_offered(const FerryWireFeatureList *used, const FerryWireFeatureList *offered,
                                 FerryError **errp)
{
    for (uint32_t i = 0; i < used->n; i++) {
        if (ferry__wire_features_find(offered, used->f[i].name) < 0) {
            ferry_error_setg(errp, "the stream uses feature '%s', which its HELLO record did not offer",
                             used->f[i].name);
            return false;
        }
    }
    return true;
}
