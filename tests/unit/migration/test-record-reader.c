/*
 * Unit tests of the record reader's grammar (src/migration/record-reader.c) for the phases of postcopy: streams of
 * records are built by hand (payloads of the right length, content that the grammar does not look at) and read
 * with the reader alone, skipping each payload, so that every rule is reached whatever a destination or the
 * analyzer would make of the content: a one-way destination refuses POSTCOPY_START itself and the analyzer refuses
 * multifd streams, so neither reaches the postcopy phases of a multifd stream. What the records mean is tested
 * with the analyzer (test-analyze.c) and the integration tests (tests/integration/test_postcopy.py).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cmocka.h>

#include "channel/channel.h"
#include "migration/migration-priv.h"
#include "migration/record-reader.h"
#include "stream/stream.h"
#include "test-helpers.h"
#include "util/util.h"
#include "wire/wire.h"

typedef struct Buf {
    uint8_t *p;
    size_t len, cap;
} Buf;

static void buf_put(Buf *b, const void *d, size_t n)
{
    if (b->len + n > b->cap) {
        b->cap = (b->len + n) * 2;
        b->p = realloc(b->p, b->cap);
    }
    memcpy(b->p + b->len, d, n);
    b->len += n;
}

static void put_record(Buf *b, uint16_t type, uint16_t flags, const void *payload, size_t n)
{
    uint8_t h[FERRY_WIRE_RECORD_HEADER_LEN];
    ferry__wire_encode_record(h, &(FerryRecordHeader){ .type = type, .flags = flags, .length = (uint32_t)n });
    buf_put(b, h, sizeof(h));
    buf_put(b, payload, n);
    uint8_t t[4];
    ferry__put_be32(t, ferry__crc32c(ferry__crc32c(0, h, sizeof(h)), payload, n));
    buf_put(b, t, sizeof(t));
}

/* One record of a test stream: its type, record flags and payload length (the payload is zeros). */
typedef struct Rec {
    uint16_t type;
    uint16_t flags;
    uint32_t len;
} Rec;

#define START { FERRY_REC_POSTCOPY_START, FERRY_REC_CRITICAL, FERRY_WIRE_PC_START_LEN }
#define NEED { FERRY_REC_POSTCOPY_NEED, FERRY_REC_CRITICAL, 24 }
#define RUN { FERRY_REC_POSTCOPY_RUN, FERRY_REC_CRITICAL, 0 }
#define PAGES { FERRY_REC_RAM_PAGES, FERRY_REC_CRITICAL, 4117 }
#define SECTION { FERRY_REC_SECTION, FERRY_REC_CRITICAL, 40 }
#define FDS { FERRY_REC_FDS, FERRY_REC_CRITICAL, 12 }
#define END { FERRY_REC_END, FERRY_REC_CRITICAL, FERRY_WIRE_END_LEN }
#define PASS_END { FERRY_REC_PASS_END, 0, 8 }
#define MFD { FERRY_REC_MULTIFD, FERRY_REC_CRITICAL, FERRY_WIRE_MFD_RECORD_LEN }
#define MFD_SYNC { FERRY_REC_MULTIFD_SYNC, FERRY_REC_CRITICAL, 8 }
#define HINT { FERRY_REC_POPULATE_HINT, 0, 24 }
#define UNKNOWN { 0x0042, 0, 5 }
#define NREC(...) (sizeof((Rec[]){ __VA_ARGS__ }) / sizeof(Rec))
#define RECS(...) (const Rec[]){ __VA_ARGS__ }, NREC(__VA_ARGS__)

/* Stream header, HELLO and FEATURES (record-checksum and the comma-separated @features), CONFIG (8 bytes), then
 * @recs. */
static Buf build(const char *features, const Rec *recs, size_t n)
{
    Buf b = { 0 };
    uint8_t hdr[FERRY_WIRE_HEADER_LEN];
    ferry__wire_encode_header(hdr);
    buf_put(&b, hdr, sizeof(hdr));
    FerryWireFeatureList f = { 0 };
    assert_true(ferry__wire_features_add(&f, "record-checksum", FERRY_FEATURE_CRITICAL));
    char copy[256];
    snprintf(copy, sizeof(copy), "%s", features);
    for (char *save = NULL, *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        assert_true(ferry__wire_features_add(&f, tok, FERRY_FEATURE_CRITICAL));
    }
    uint8_t p[2 + FERRY_WIRE_MAX_FEATURES * (2 + FERRY_WIRE_MAX_FEATURE_NAME)];
    ferry__wire_features_encode(&f, p);
    put_record(&b, FERRY_REC_HELLO, FERRY_REC_CRITICAL, p, ferry__wire_features_len(&f));
    put_record(&b, FERRY_REC_FEATURES, FERRY_REC_CRITICAL, p, ferry__wire_features_len(&f));
    uint8_t cfg[8] = { 0 };
    put_record(&b, FERRY_REC_CONFIG, FERRY_REC_CRITICAL, cfg, sizeof(cfg));
    for (size_t i = 0; i < n; i++) {
        uint8_t *z = calloc(1, recs[i].len ? recs[i].len : 1);
        put_record(&b, recs[i].type, recs[i].flags, z, recs[i].len);
        free(z);
    }
    return b;
}

typedef struct Result {
    bool ok;
    FerryError *err;
    size_t records;                /* records read completely (HELLO, FEATURES and CONFIG included) */
    FerryStreamPhase phase[64];    /* the phase after each of them */
    FerryStreamPhase final;
} Result;

/* Reads @b with the record reader alone (FEATURES applied, every other payload skipped) until the end of the
 * input or a failure. */
static Result read_stream(const Buf *b)
{
    Result res = { 0 };
    int fd = memfd_create("stream", MFD_CLOEXEC);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, b->p, b->len), (ssize_t)b->len);
    assert_int_equal(lseek(fd, 0, SEEK_SET), 0);
    FerryChannel *c = ferry__channel_new_fd(fd, "crafted stream");
    assert_non_null(c);
    FerryStream *s = ferry__stream_new(c);
    FerryRecordReader r;
    ferry__record_reader_init(&r, s);
    uint8_t hdr[FERRY_WIRE_HEADER_LEN];
    res.ok = ferry__record_read_stream_header(&r, hdr, &res.err) && ferry__wire_decode_header(hdr, &res.err);
    while (res.ok && ferry__stream_bytes_read(s) < b->len) {
        res.ok = ferry__record_next(&r, &res.err);
        if (res.ok && r.rh.type == FERRY_REC_FEATURES) {
            FerryWireFeatureList used;
            res.ok = ferry__record_read_features(&r, &used, &res.err);
            if (res.ok) {
                ferry__record_set_features(&r, &used);
            }
        } else if (res.ok) {
            res.ok = ferry__record_skip(&r, r.rh.length, &res.err);
        }
        res.ok = res.ok && ferry__record_finish(&r, &res.err);
        if (res.ok) {
            assert_true(res.records < FERRY_ARRAY_SIZE(res.phase));
            res.phase[res.records++] = r.phase;
        }
    }
    if (!res.ok) {
        ferry__record_error_prefix(&r, &res.err);
    }
    res.final = r.phase;
    ferry__stream_free(s);
    ferry__channel_free(c);
    return res;
}

static Result run(const char *features, const Rec *recs, size_t n)
{
    Buf b = build(features, recs, n);
    Result res = read_stream(&b);
    free(b.p);
    return res;
}

static void expect_ok(const char *features, const Rec *recs, size_t n, FerryStreamPhase final)
{
    Result res = run(features, recs, n);
    if (!res.ok) {
        fail_msg("%s", ferry_error_msg(res.err));
    }
    assert_int_equal(res.records, 3 + n);
    assert_string_equal(ferry__stream_phase_name(res.final), ferry__stream_phase_name(final));
}

/* The stream is refused at its record @index (0: the first after CONFIG), with @needle in the message. */
static void expect_refused(const char *features, const Rec *recs, size_t n, size_t index, const char *needle)
{
    Result res = run(features, recs, n);
    if (res.ok) {
        fail_msg("a stream was read that should fail with '%s'", needle);
    }
    assert_msg_contains(res.err, needle);
    assert_int_equal(res.records, 3 + index);
    char where[64];
    snprintf(where, sizeof(where), ", %s record: ", ferry__wire_record_name(recs[index].type));
    if (recs[index].type < 0x0100 && strcmp(ferry__wire_record_name(recs[index].type), "unknown") != 0) {
        assert_msg_contains(res.err, where);
    }
    ferry_error_free(res.err);
}

#define PC "postcopy-ram"

/* A postcopy stream: ram, postcopy-setup (which a SECTION does not leave), postcopy, end. */
static void test_postcopy_phases(void **state)
{
    static const Rec recs[] = { PAGES, PASS_END, HINT, PAGES, START, NEED, FDS, NEED, SECTION, SECTION, UNKNOWN,
                                RUN, PAGES, UNKNOWN, PAGES, END };
    Result res = run(PC, recs, FERRY_ARRAY_SIZE(recs));
    if (!res.ok) {
        fail_msg("%s", ferry_error_msg(res.err));
    }
    static const FerryStreamPhase want[] = {
        FERRY_PHASE_FEATURES, FERRY_PHASE_CONFIG, FERRY_PHASE_RAM, /* HELLO, FEATURES, CONFIG */
        FERRY_PHASE_RAM, FERRY_PHASE_RAM, FERRY_PHASE_RAM, FERRY_PHASE_RAM,
        FERRY_PHASE_POSTCOPY_SETUP, FERRY_PHASE_POSTCOPY_SETUP, FERRY_PHASE_POSTCOPY_SETUP,
        FERRY_PHASE_POSTCOPY_SETUP, FERRY_PHASE_POSTCOPY_SETUP, FERRY_PHASE_POSTCOPY_SETUP,
        FERRY_PHASE_POSTCOPY_SETUP,
        FERRY_PHASE_POSTCOPY, FERRY_PHASE_POSTCOPY, FERRY_PHASE_POSTCOPY, FERRY_PHASE_POSTCOPY,
        FERRY_PHASE_END,
    };
    assert_int_equal(res.records, FERRY_ARRAY_SIZE(want));
    for (size_t i = 0; i < FERRY_ARRAY_SIZE(want); i++) {
        if (res.phase[i] != want[i]) {
            fail_msg("after record %zu: phase %s, expected %s", i, ferry__stream_phase_name(res.phase[i]),
                     ferry__stream_phase_name(want[i]));
        }
    }
    assert_string_equal(ferry__stream_phase_name(FERRY_PHASE_POSTCOPY_SETUP), "postcopy-setup");
    assert_string_equal(ferry__stream_phase_name(FERRY_PHASE_POSTCOPY), "postcopy");

    /* Pure postcopy: the switch right after CONFIG; no device state, no pages needed, no pages before END. */
    expect_ok(PC, RECS(START, RUN, END), FERRY_PHASE_END);
    expect_ok(PC, RECS(START, RUN, PAGES, END), FERRY_PHASE_END);
    /* A precopy stream of a source that could have switched and did not. */
    expect_ok(PC, RECS(PAGES, SECTION, END), FERRY_PHASE_END);
}

/* POSTCOPY_START only in ram; POSTCOPY_NEED and POSTCOPY_RUN only in postcopy-setup. */
static void test_postcopy_misplaced(void **state)
{
    const char *np = "not allowed in phase";
    expect_refused(PC, RECS(PAGES, SECTION, START, RUN, END), 2,
                   "record POSTCOPY_START not allowed in phase sections");
    expect_refused(PC, RECS(START, START, RUN, END), 1, "record POSTCOPY_START not allowed in phase postcopy-setup");
    expect_refused(PC, RECS(START, RUN, START, END), 2, "record POSTCOPY_START not allowed in phase postcopy");
    expect_refused(PC, RECS(NEED, START, RUN, END), 0, "record POSTCOPY_NEED not allowed in phase ram");
    expect_refused(PC, RECS(RUN, END), 0, "record POSTCOPY_RUN not allowed in phase ram");
    expect_refused(PC, RECS(SECTION, RUN, END), 1, "record POSTCOPY_RUN not allowed in phase sections");
    expect_refused(PC, RECS(START, RUN, NEED, END), 2, "record POSTCOPY_NEED not allowed in phase postcopy");
    expect_refused(PC, RECS(START, RUN, RUN, END), 2, "record POSTCOPY_RUN not allowed in phase postcopy");
    expect_refused(PC, RECS(START, RUN, END, RUN), 3, "record POSTCOPY_RUN not allowed in phase end");
    /* postcopy-setup ends only with POSTCOPY_RUN: no END, no pages, no precopy records. */
    expect_refused(PC, RECS(START, SECTION, END), 2,
                   "record END not allowed in phase postcopy-setup (expected POSTCOPY_RUN)");
    expect_refused(PC, RECS(START, PAGES, RUN, END), 1, "record RAM_PAGES not allowed in phase postcopy-setup");
    expect_refused(PC, RECS(START, PASS_END, RUN, END), 1, np);
    expect_refused(PC, RECS(START, HINT, RUN, END), 1, np);
    /* postcopy: pages and END only; the device state was complete at POSTCOPY_RUN. */
    expect_refused(PC, RECS(START, RUN, SECTION, END), 2, "record SECTION not allowed in phase postcopy");
    expect_refused(PC, RECS(START, RUN, FDS, END), 2, "record FDS not allowed in phase postcopy");
    expect_refused(PC, RECS(START, RUN, PASS_END, END), 2, "record PASS_END not allowed in phase postcopy");
    expect_refused(PC, RECS(START, RUN, HINT, END), 2, "record POPULATE_HINT not allowed in phase postcopy");
    /* An unknown critical record is refused in the new phases as anywhere. */
    expect_refused(PC, RECS(START, { 0x0042, FERRY_REC_CRITICAL, 5 }, RUN, END), 1,
                   "unknown critical record type 0x0042");
    expect_refused(PC, RECS(START, RUN, { 0x0042, FERRY_REC_CRITICAL, 5 }, END), 2,
                   "unknown critical record type 0x0042");
}

/* Lengths and flags of the new records are checked before their payload is read. */
static void test_postcopy_lengths_and_flags(void **state)
{
    expect_refused(PC, RECS({ FERRY_REC_POSTCOPY_START, FERRY_REC_CRITICAL, 23 }, RUN, END), 0,
                   "payload of 23 bytes, expected 24");
    expect_refused(PC, RECS({ FERRY_REC_POSTCOPY_START, FERRY_REC_CRITICAL, 25 }, RUN, END), 0,
                   "payload of 25 bytes, expected 24");
    expect_refused(PC, RECS(START, { FERRY_REC_POSTCOPY_RUN, FERRY_REC_CRITICAL, 1 }, END), 1,
                   "payload of 1 bytes, expected 0");
    expect_refused(PC, RECS(START, { FERRY_REC_POSTCOPY_NEED, 0, FERRY_WIRE_MAX_CONTROL_LEN + 65 }, RUN, END), 1,
                   "exceeds the limit of 1048640");
    expect_ok(PC, RECS(START, { FERRY_REC_POSTCOPY_NEED, 0, FERRY_WIRE_MAX_CONTROL_LEN + 64 }, RUN, END),
              FERRY_PHASE_END);
    expect_refused(PC, RECS({ FERRY_REC_POSTCOPY_START, FERRY_REC_CRITICAL | 0x0001, 24 }, RUN, END), 0,
                   "reserved record flags 0x0001 are set");
    expect_refused(PC, RECS(START, { FERRY_REC_POSTCOPY_NEED, 0x4000, 24 }, RUN, END), 1,
                   "reserved record flags 0x4000 are set");
    expect_refused(PC, RECS(START, { FERRY_REC_POSTCOPY_RUN, 0x0100, 0 }, END), 1,
                   "reserved record flags 0x0100 are set");
}

/* Without the postcopy-ram feature none of the postcopy records is allowed (nor with postcopy-preempt alone). */
static void test_postcopy_needs_feature(void **state)
{
    const char *lack = "record in a stream whose FEATURES lack 'postcopy-ram'";
    expect_refused("", RECS(START, RUN, END), 0, lack);
    expect_refused("populate-hints", RECS(PAGES, START, RUN, END), 1, "POSTCOPY_START record in a stream whose");
    expect_refused("postcopy-preempt", RECS(START, RUN, END), 0, lack);
    /* NEED and RUN where they would be placed right after a START, which needs the feature first: the phase
     * check comes first, so they are refused for their phase. */
    expect_refused("", RECS(NEED, END), 0, "record POSTCOPY_NEED not allowed in phase ram");
    expect_refused("", RECS(RUN, END), 0, "record POSTCOPY_RUN not allowed in phase ram");
    expect_ok("postcopy-ram,postcopy-preempt", RECS(START, NEED, RUN, PAGES, END), FERRY_PHASE_END);
}

/* With multifd, pages travel on the main channel only after the switch. */
static void test_postcopy_multifd(void **state)
{
    const char *mf = PC ",multifd";
    expect_ok(mf, RECS(MFD, MFD_SYNC, START, NEED, SECTION, RUN, PAGES, PAGES, END), FERRY_PHASE_END);
    expect_refused(mf, RECS(MFD, PAGES, START, RUN, END), 1,
                   "RAM_PAGES record on the main channel of a stream that uses 'multifd'");
    /* The multifd means stop at the switch. */
    expect_refused(mf, RECS(MFD, START, MFD_SYNC, RUN, END), 2,
                   "record MULTIFD_SYNC not allowed in phase postcopy-setup");
    expect_refused(mf, RECS(MFD, START, RUN, MFD_SYNC, END), 3, "record MULTIFD_SYNC not allowed in phase postcopy");
    expect_refused(mf, RECS(START, MFD, RUN, END), 1, "record MULTIFD not allowed in phase postcopy-setup");
    expect_refused(mf, RECS(MFD, START, RUN, PAGES, MFD, END), 4, "record MULTIFD not allowed in phase postcopy");
    /* multifd without postcopy-ram: still no pages on the main channel, no switch. */
    expect_refused("multifd", RECS(MFD, START, RUN, PAGES, END), 1, "FEATURES lack 'postcopy-ram'");
}

/* Return-path records (and POSTCOPY_RESUME, which only a recovering connection's first record is) never come in
 * the stream, whatever the phase. */
static void test_return_path_records_refused(void **state)
{
    static const uint16_t types[] = { FERRY_REC_REQ_PAGES, FERRY_REC_RESUME_NEED, FERRY_REC_RESUME_ACK,
                                      FERRY_REC_ACK, FERRY_REC_NACK, FERRY_REC_HELLO_REPLY,
                                      FERRY_REC_POSTCOPY_RESUME };
    for (size_t i = 0; i < FERRY_ARRAY_SIZE(types); i++) {
        const Rec bad = { types[i], 0, types[i] == FERRY_REC_REQ_PAGES ? FERRY_WIRE_REQ_PAGES_LEN : 0 };
        char want[96];
        /* Non-critical or critical, known types are refused for their phase, not skipped as unknown. */
        for (int crit = 0; crit < 2; crit++) {
            Rec b = bad;
            b.flags = crit ? FERRY_REC_CRITICAL : 0;
            snprintf(want, sizeof(want), "record %s not allowed in phase ram", ferry__wire_record_name(types[i]));
            expect_refused(PC, RECS(PAGES, b, START, RUN, END), 1, want);
            snprintf(want, sizeof(want), "record %s not allowed in phase postcopy-setup",
                     ferry__wire_record_name(types[i]));
            expect_refused(PC, RECS(START, NEED, b, RUN, END), 2, want);
            snprintf(want, sizeof(want), "record %s not allowed in phase postcopy", ferry__wire_record_name(types[i]));
            expect_refused(PC, RECS(START, RUN, PAGES, b, END), 3, want);
        }
        if (types[i] != FERRY_REC_POSTCOPY_RESUME) {
            snprintf(want, sizeof(want), "record %s not allowed in phase postcopy (a return-path record)",
                     ferry__wire_record_name(types[i]));
            expect_refused(PC, RECS(START, RUN, bad, END), 2, want);
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_postcopy_phases),
        cmocka_unit_test(test_postcopy_misplaced),
        cmocka_unit_test(test_postcopy_lengths_and_flags),
        cmocka_unit_test(test_postcopy_needs_feature),
        cmocka_unit_test(test_postcopy_multifd),
        cmocka_unit_test(test_return_path_records_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
