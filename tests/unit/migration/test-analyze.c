/*
 * Unit tests of the stream analyzer (src/migration/analyze.c, ferry_stream_analyze): streams are built by hand in
 * memory with the wire encoders, the binary output visitor and CRC32C, written to a memfd or a pipe, and the JSON
 * the analyzer gives back is checked field by field. Damage is checked exhaustively on a small stream: every
 * single-byte flip and every truncation must fail with a stream offset. The ferry-analyze program itself is left
 * to the integration tests (it is a thin front end of this function).
 *
 * The analyzer and the destination read records with one reader (src/migration/record-reader.c): hostile streams
 * that break the stream's grammar (a record out of its phase, undefined flags) are also loaded into a destination
 * (ferry__migration_load_stream), which must refuse them with the same message and place.
 */
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "ferry/analyze.h"
#include "ferry/ferry.h"
#include "channel/channel.h"
#include "migration/migration.h"
#include "test-helpers.h"
#include "util/util.h"
#include "visitor/visitor-int.h"
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

static void put_record(Buf *b, uint16_t type, uint16_t flags, const void *payload, size_t n, bool crc)
{
    uint8_t h[FERRY_WIRE_RECORD_HEADER_LEN];
    ferry__wire_encode_record(h, &(FerryRecordHeader){ .type = type, .flags = flags, .length = (uint32_t)n });
    buf_put(b, h, sizeof(h));
    buf_put(b, payload, n);
    if (crc) {
        uint8_t t[4];
        ferry__put_be32(t, ferry__crc32c(ferry__crc32c(0, h, sizeof(h)), payload, n));
        buf_put(b, t, sizeof(t));
    }
}

static void put_features(Buf *b, uint16_t type, const FerryWireFeatureList *l)
{
    uint8_t p[2 + FERRY_WIRE_MAX_FEATURES * (2 + FERRY_WIRE_MAX_FEATURE_NAME)];
    ferry__wire_features_encode(l, p);
    put_record(b, type, FERRY_REC_CRITICAL, p, ferry__wire_features_len(l), true);
}

/* The device section of every test stream. */
static bool dev_fn(FerryVisitor *v, void *opaque, uint32_t version, FerryError **errp)
{
    uint32_t counter = 42;
    char label_buf[] = "hello";
    char *label = label_buf;
    bool on = true;
    uint64_t x = 1ull << 40;
    return ferry_visit_u32(v, "counter", &counter, errp) && ferry_visit_str(v, "label", &label, errp) &&
           ferry_visit_bool(v, "on", &on, errp) && ferry_visit_start_struct(v, "inner", errp) &&
           ferry_visit_u64(v, "x", &x, errp) && ferry_visit_end_struct(v, errp);
}

/* A SECTION payload for dev_fn; *data_len gets the length of the section data. */
static uint8_t *section_payload(const char *name, size_t *len, size_t *data_len)
{
    FerryVisitor *v = ferry__visitor_output_new();
    FerrySchema *schema;
    uint8_t *data;
    size_t dlen;
    assert_true(dev_fn(v, NULL, 1, NULL));
    assert_true(ferry__visitor_output_finish(v, &schema, &data, &dlen, NULL));
    ferry_visitor_free(v);
    size_t slen = ferry__schema_encoded_len(schema);
    FerryWireSection s = { .instance_id = 3, .version = 1, .flags = FERRY_SECTION_SKIPPABLE,
                           .schema_len = (uint32_t)slen };
    strcpy(s.name, name);
    uint8_t hdr[FERRY_WIRE_SECTION_HEADER_MAX];
    size_t hl = ferry__wire_section_header_encode(&s, hdr);
    *len = hl + slen + dlen;
    *data_len = dlen;
    uint8_t *p = malloc(*len);
    memcpy(p, hdr, hl);
    ferry__schema_encode(schema, p + hl);
    memcpy(p + hl + slen, data, dlen);
    ferry__schema_free(schema);
    free(data);
    return p;
}

typedef struct Opts {
    uint32_t page_size;         /* 0: 4096 */
    bool no_checksum;           /* FEATURES without record-checksum */
    bool no_hint_feature;       /* hints in a stream that did not declare populate-hints */
    const char *extra_feature;  /* offered and used */
    uint8_t extra_flags;
    uint16_t unknown_flags;     /* of the unknown record (0x0042) */
    uint64_t end_pages_extra;   /* added to END's page total */
    bool garbage_after_end;
    bool small;                 /* the first run is ram0 0+2 with page 1 zero, for the exhaustive damage test */
    uint32_t extra_sections;    /* more sections after "dev": "many" with instance ids 10, 11, ... */
    bool duplicate_last;        /* and then "many" of the last instance id again */
    /* Hostile streams, each breaking one rule of the format. */
    uint32_t end_flags_extra;   /* END flags beyond source-running */
    uint16_t repeat_type;       /* HELLO, FEATURES or CONFIG: written twice in a row */
    uint16_t pass_end_flags;    /* record flags of PASS_END (reserved bits) */
    bool late_pass_end;         /* a second PASS_END after the SECTION */
    bool ack_in_stream;         /* a return-path ACK after PASS_END */
    bool zero_type;             /* the unknown record has type 0 */
    bool piped_run;             /* the vga run claims its data is in the page pipe */
    /* Postcopy: after the vga run POSTCOPY_START (flags pc_flags), POSTCOPY_NEED (block need_block, ranges 2+3
     * and need_first+need_count), the unknown record and SECTION in postcopy-setup, POSTCOPY_RUN, RAM_PAGES ram0
     * 10+2 (page 11 zero), END (14 pages). */
    bool postcopy;
    bool pc_no_feature;         /* ... in a stream whose FEATURES lack postcopy-ram */
    uint32_t pc_flags;
    uint32_t need_block;
    uint64_t need_first, need_count; /* 0, 0: 10+6 */
} Opts;

typedef struct Built {
    Buf b;
    size_t unknown_offset, section_offset, section_data_len;
    size_t data_bytes;
} Built;

/*
 * HELLO, FEATURES, CONFIG (blocks "ram0" of 16 pages and "vga" of 4), POPULATE_HINT (ram0 0+16), RAM_PAGES (ram0
 * 0+10, pages 1 and 3 zero), PASS_END, RAM_PAGES (vga 2+2, both zero), an unknown record 0x0042 of 5 bytes,
 * SECTION "dev" instance 3, END (12 pages, 1 section).
 */
static void build(Built *out, const Opts *o)
{
    memset(out, 0, sizeof(*out));
    Buf *b = &out->b;
    uint32_t ps = o->page_size ? o->page_size : 4096;
    bool crc = !o->no_checksum;
    uint8_t hdr[FERRY_WIRE_HEADER_LEN];
    ferry__wire_encode_header(hdr);
    buf_put(b, hdr, sizeof(hdr));

    FerryWireFeatureList f = { 0 };
    if (crc) {
        assert_true(ferry__wire_features_add(&f, "record-checksum", FERRY_FEATURE_CRITICAL));
    }
    if (!o->no_hint_feature) {
        assert_true(ferry__wire_features_add(&f, "populate-hints", 0));
    }
    if (o->extra_feature) {
        assert_true(ferry__wire_features_add(&f, o->extra_feature, o->extra_flags));
    }
    if (o->postcopy && !o->pc_no_feature) {
        assert_true(ferry__wire_features_add(&f, "postcopy-ram", FERRY_FEATURE_CRITICAL));
    }
    FerryWireFeatureList offer = f;
    assert_true(ferry__wire_features_add(&offer, "record-checksum", FERRY_FEATURE_CRITICAL));
    put_features(b, FERRY_REC_HELLO, &offer);
    if (o->repeat_type == FERRY_REC_HELLO) {
        put_features(b, FERRY_REC_HELLO, &offer);
    }
    put_features(b, FERRY_REC_FEATURES, &f);
    if (o->repeat_type == FERRY_REC_FEATURES) {
        put_features(b, FERRY_REC_FEATURES, &f);
    }

    FerryWireBlock blocks[2] = { { "ram0", 16ull * ps }, { "vga", 4ull * ps } };
    FerryWireConfig cfg = { .page_size = ps, .nblocks = 2, .blocks = blocks };
    size_t len;
    uint8_t *p = ferry__wire_config_encode(&cfg, &len);
    put_record(b, FERRY_REC_CONFIG, FERRY_REC_CRITICAL, p, len, crc);
    if (o->repeat_type == FERRY_REC_CONFIG) {
        put_record(b, FERRY_REC_CONFIG, FERRY_REC_CRITICAL, p, len, crc);
    }
    free(p);

    uint8_t hint[8 + 16];
    ferry__put_be32(hint, 0);
    ferry__put_be32(hint + 4, 1);
    ferry__put_be64(hint + 8, 0);
    ferry__put_be64(hint + 16, 16);
    put_record(b, FERRY_REC_POPULATE_HINT, 0, hint, sizeof(hint), crc);

    /* ram0 0+10 with pages 1 and 3 zero (small: 0+2 with page 1 zero). */
    uint32_t run_pages = o->small ? 2 : 10, run_data = o->small ? 1 : 8;
    size_t zb = FERRY_DIV_ROUND_UP(run_pages, 8);
    size_t plen = FERRY_WIRE_RAM_RUN_HEADER_LEN + zb + (size_t)run_data * ps;
    p = calloc(1, plen);
    ferry__wire_run_encode(&(FerryWireRun){ .block = 0, .first = 0, .count = run_pages }, p);
    p[FERRY_WIRE_RAM_RUN_HEADER_LEN] = o->small ? 0x02 : 0x0a;
    for (size_t i = FERRY_WIRE_RAM_RUN_HEADER_LEN + zb; i < plen; i++) {
        p[i] = (uint8_t)(i * 7 + 1);
    }
    put_record(b, FERRY_REC_RAM_PAGES, FERRY_REC_CRITICAL, p, plen, crc);
    free(p);
    out->data_bytes = (size_t)run_data * ps;

    uint8_t pass[8];
    ferry__put_be64(pass, 1);
    put_record(b, FERRY_REC_PASS_END, o->pass_end_flags, pass, sizeof(pass), crc);
    if (o->ack_in_stream) {
        put_record(b, FERRY_REC_ACK, 0, "", 0, crc);
    }

    uint8_t run2[FERRY_WIRE_RAM_RUN_HEADER_LEN + 1];
    ferry__wire_run_encode(&(FerryWireRun){ .block = 1, .first = 2, .count = 2,
                                            .flags = o->piped_run ? FERRY_RUN_DATA_IN_PIPE : 0 }, run2);
    run2[FERRY_WIRE_RAM_RUN_HEADER_LEN] = 0x03;
    put_record(b, FERRY_REC_RAM_PAGES, FERRY_REC_CRITICAL, run2, sizeof(run2), crc);

    if (o->postcopy) {
        uint8_t st[FERRY_WIRE_PC_START_LEN];
        FerryWirePcStart pcs = { .flags = o->pc_flags };
        memset(pcs.session, 0x5a, sizeof(pcs.session));
        ferry__wire_pc_start_encode(&pcs, st);
        put_record(b, FERRY_REC_POSTCOPY_START, FERRY_REC_CRITICAL, st, sizeof(st), crc);
        uint8_t need[8 + 2 * 16];
        ferry__put_be32(need, o->need_block);
        ferry__put_be32(need + 4, 2);
        ferry__put_be64(need + 8, 2);
        ferry__put_be64(need + 16, 3);
        ferry__put_be64(need + 24, o->need_count ? o->need_first : 10);
        ferry__put_be64(need + 32, o->need_count ? o->need_count : 6);
        put_record(b, FERRY_REC_POSTCOPY_NEED, FERRY_REC_CRITICAL, need, sizeof(need), crc);
    }

    out->unknown_offset = b->len;
    put_record(b, o->zero_type ? FERRY_REC_NONE : 0x0042, o->unknown_flags, "abcde", 5, crc);

    out->section_offset = b->len;
    p = section_payload("dev", &len, &out->section_data_len);
    put_record(b, FERRY_REC_SECTION, FERRY_REC_CRITICAL, p, len, crc);
    free(p);
    uint32_t nsections = 1 + o->extra_sections + o->duplicate_last;
    for (uint32_t i = 0; i < o->extra_sections + o->duplicate_last; i++) {
        size_t dlen;
        p = section_payload("many", &len, &dlen);
        ferry__put_be32(p + 1 + strlen("many"), 10 + FERRY_MIN(i, o->extra_sections - 1));
        put_record(b, FERRY_REC_SECTION, FERRY_REC_CRITICAL, p, len, crc);
        free(p);
    }

    if (o->late_pass_end) {
        put_record(b, FERRY_REC_PASS_END, 0, pass, sizeof(pass), crc);
    }
    if (o->postcopy) {
        put_record(b, FERRY_REC_POSTCOPY_RUN, FERRY_REC_CRITICAL, "", 0, crc);
        size_t plen2 = FERRY_WIRE_RAM_RUN_HEADER_LEN + 1 + ps;
        p = calloc(1, plen2);
        ferry__wire_run_encode(&(FerryWireRun){ .block = 0, .first = 10, .count = 2 }, p);
        p[FERRY_WIRE_RAM_RUN_HEADER_LEN] = 0x02;
        memset(p + FERRY_WIRE_RAM_RUN_HEADER_LEN + 1, 0x77, ps);
        put_record(b, FERRY_REC_RAM_PAGES, FERRY_REC_CRITICAL, p, plen2, crc);
        free(p);
        out->data_bytes += ps;
    }
    uint8_t end[FERRY_WIRE_END_LEN];
    ferry__wire_end_encode(&(FerryWireEnd){ .flags = FERRY_END_SOURCE_RUNNING | o->end_flags_extra,
                                            .pages = run_pages + 2 + (o->postcopy ? 2 : 0) + o->end_pages_extra,
                                            .sections = nsections },
                           end);
    put_record(b, FERRY_REC_END, FERRY_REC_CRITICAL, end, sizeof(end), crc);
    if (o->garbage_after_end) {
        buf_put(b, "QEMU trailing data", 18);
    }
}

static int memfd_with(const uint8_t *p, size_t len)
{
    int fd = memfd_create("stream", MFD_CLOEXEC);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, p, len), (ssize_t)len);
    assert_int_equal(lseek(fd, 0, SEEK_SET), 0);
    return fd;
}

/* Analyze @len bytes of @p; returns the result, *err the error (if any). */
static json_t *analyze_buf(const uint8_t *p, size_t len, unsigned flags, bool *ok, FerryError **err)
{
    int fd = memfd_with(p, len);
    json_t *r = NULL;
    *ok = ferry_stream_analyze(fd, flags, &r, err);
    close(fd);
    assert_non_null(r);
    return r;
}

static json_int_t jint(json_t *obj, const char *path)
{
    /* "a.b.c" through objects */
    char buf[128];
    snprintf(buf, sizeof(buf), "%s", path);
    json_t *cur = obj;
    for (char *save = NULL, *tok = strtok_r(buf, ".", &save); tok; tok = strtok_r(NULL, ".", &save)) {
        cur = json_object_get(cur, tok);
        if (!cur) {
            print_error("no member '%s' in path '%s'\n", tok, path);
            fail();
        }
    }
    assert_true(json_is_integer(cur));
    return json_integer_value(cur);
}

static void expect_failure(const Opts *o, const char *needle, const char *record)
{
    Built bt;
    build(&bt, o);
    bool ok;
    FerryError *err = NULL;
    json_t *r = analyze_buf(bt.b.p, bt.b.len, 0, &ok, &err);
    assert_false(ok);
    assert_msg_contains(err, needle);
    assert_msg_contains(err, "at stream offset ");
    json_t *e = json_object_get(r, "error");
    assert_non_null(e);
    assert_string_equal(json_string_value(json_object_get(e, "record")), record);
    assert_non_null(strstr(json_string_value(json_object_get(e, "message")), needle));
    ferry_error_free(err);
    json_decref(r);
    free(bt.b.p);
}

static void test_good_stream(void **state)
{
    Built bt;
    build(&bt, &(Opts){ .garbage_after_end = true });
    bool ok;
    FerryError *err = NULL;
    json_t *r = analyze_buf(bt.b.p, bt.b.len, 0, &ok, &err);
    if (!ok) {
        print_error("%s\n", ferry_error_msg(err));
    }
    assert_true(ok);
    assert_null(json_object_get(r, "error"));

    assert_string_equal(json_string_value(json_object_get(json_object_get(r, "header"), "magic")), "FERRYMIG");
    assert_int_equal(jint(r, "header.version"), 2);
    assert_int_equal(jint(r, "header.flags"), 0);

    json_t *offered = json_object_get(r, "offered"), *features = json_object_get(r, "features");
    assert_int_equal(json_array_size(offered), 2);
    assert_int_equal(json_array_size(features), 2);
    assert_string_equal(json_string_value(json_object_get(json_array_get(features, 0), "name")), "record-checksum");
    assert_true(json_is_true(json_object_get(json_array_get(features, 0), "critical")));
    assert_true(json_is_false(json_object_get(json_array_get(features, 1), "critical")));

    assert_int_equal(jint(r, "config.page-size"), 4096);
    json_t *blocks = json_object_get(json_object_get(r, "config"), "blocks");
    assert_int_equal(json_array_size(blocks), 2);
    assert_string_equal(json_string_value(json_object_get(json_array_get(blocks, 1), "name")), "vga");
    assert_int_equal(jint(json_array_get(blocks, 1), "size"), 4 * 4096);

    assert_int_equal(jint(r, "ram.records"), 2);
    assert_int_equal(jint(r, "ram.pages"), 12);
    assert_int_equal(jint(r, "ram.zero-pages"), 4);
    assert_int_equal(jint(r, "ram.data-pages"), 8);
    assert_int_equal(jint(r, "ram.data-bytes"), 8 * 4096);
    assert_int_equal(jint(r, "ram.passes"), 1);
    assert_int_equal(jint(r, "ram.hint-records"), 1);
    assert_int_equal(jint(r, "ram.hinted-pages"), 16);
    json_t *rb = json_object_get(json_object_get(r, "ram"), "blocks");
    assert_int_equal(json_array_size(rb), 2);
    assert_int_equal(jint(json_array_get(rb, 0), "pages"), 10);
    assert_int_equal(jint(json_array_get(rb, 0), "zero-pages"), 2);
    assert_int_equal(jint(json_array_get(rb, 0), "data-bytes"), 8 * 4096);
    assert_int_equal(jint(json_array_get(rb, 1), "pages"), 2);
    assert_int_equal(jint(json_array_get(rb, 1), "zero-pages"), 2);
    assert_int_equal(jint(json_array_get(rb, 1), "data-bytes"), 0);

    json_t *secs = json_object_get(r, "sections");
    assert_int_equal(json_array_size(secs), 1);
    json_t *s = json_array_get(secs, 0);
    assert_string_equal(json_string_value(json_object_get(s, "name")), "dev");
    assert_int_equal(jint(s, "instance-id"), 3);
    assert_int_equal(jint(s, "version"), 1);
    assert_true(json_is_true(json_object_get(s, "skippable")));
    assert_true(json_is_false(json_object_get(s, "optional")));
    assert_int_equal(jint(s, "offset"), bt.section_offset);
    assert_int_equal(jint(s, "bytes"), bt.section_data_len);
    assert_int_equal(jint(s, "state.counter"), 42);
    assert_int_equal(jint(s, "state.inner.x"), 1ll << 40);
    json_t *st = json_object_get(s, "state");
    assert_string_equal(json_string_value(json_object_get(st, "label")), "hello");
    assert_true(json_is_true(json_object_get(st, "on")));

    json_t *schema = json_array_get(json_object_get(r, "schema"), 0);
    assert_string_equal(json_string_value(json_object_get(schema, "name")), "dev");
    json_t *fields = json_object_get(schema, "fields");
    assert_int_equal(json_array_size(fields), 4);
    assert_string_equal(json_string_value(json_object_get(json_array_get(fields, 0), "type")), "u32");
    assert_string_equal(json_string_value(json_object_get(json_array_get(fields, 3), "type")), "struct");

    assert_int_equal(jint(r, "end.pages"), 12);
    assert_int_equal(jint(r, "end.sections"), 1);
    assert_true(json_is_true(json_object_get(json_object_get(r, "end"), "source-running")));
    assert_int_equal(jint(r, "records"), 10);
    /* Everything up to END's trailer, not the data after it. */
    assert_int_equal(jint(r, "bytes"), bt.b.len - 18);
    assert_int_equal(jint(r, "framing-bytes"), bt.b.len - 18 - bt.data_bytes);

    json_t *unknown = json_object_get(r, "unknown-records");
    assert_int_equal(json_array_size(unknown), 1);
    json_t *u = json_array_get(unknown, 0);
    assert_int_equal(jint(u, "offset"), bt.unknown_offset);
    assert_int_equal(jint(u, "type"), 0x42);
    assert_int_equal(jint(u, "length"), 5);
    assert_true(json_is_false(json_object_get(u, "critical")));
    json_decref(r);

    /* Schema only. */
    r = analyze_buf(bt.b.p, bt.b.len, FERRY_ANALYZE_SCHEMA_ONLY, &ok, &err);
    assert_true(ok);
    assert_int_equal(json_object_size(r), 1);
    schema = json_array_get(json_object_get(r, "sections"), 0);
    assert_string_equal(json_string_value(json_object_get(schema, "name")), "dev");
    assert_int_equal(jint(schema, "instance-id"), 3);
    json_decref(r);
    free(bt.b.p);
}

/* A stream from a pipe: read to END, and the caller's fd keeps its blocking mode. */
static void test_pipe(void **state)
{
    Built bt;
    build(&bt, &(Opts){ .page_size = 512 });
    int p[2];
    assert_int_equal(pipe(p), 0);
    assert_true(bt.b.len < 65536);
    assert_int_equal(write(p[1], bt.b.p, bt.b.len), (ssize_t)bt.b.len);
    close(p[1]);
    int fl = fcntl(p[0], F_GETFL);
    json_t *r = NULL;
    FerryError *err = NULL;
    assert_true(ferry_stream_analyze(p[0], 0, &r, &err));
    assert_int_equal(fcntl(p[0], F_GETFL), fl);
    assert_int_equal(jint(r, "config.page-size"), 512);
    assert_int_equal(jint(r, "ram.data-bytes"), 8 * 512);
    json_decref(r);
    close(p[0]);
    free(bt.b.p);

    /* An fd that is not open. */
    r = NULL;
    assert_false(ferry_stream_analyze(p[0], 0, &r, &err));
    assert_msg_contains(err, "not an open file descriptor");
    assert_non_null(json_object_get(r, "error"));
    ferry_error_free(err);
    json_decref(r);
}

static void test_no_checksum(void **state)
{
    Built bt;
    build(&bt, &(Opts){ .no_checksum = true });
    bool ok;
    FerryError *err = NULL;
    json_t *r = analyze_buf(bt.b.p, bt.b.len, 0, &ok, &err);
    if (!ok) {
        print_error("%s\n", ferry_error_msg(err));
    }
    assert_true(ok);
    assert_int_equal(json_array_size(json_object_get(r, "features")), 1);
    assert_int_equal(jint(r, "records"), 10);
    assert_int_equal(jint(r, "bytes"), bt.b.len);
    assert_int_equal(jint(r, "ram.pages"), 12);
    json_decref(r);
    free(bt.b.p);
}

static void test_unknown_records_and_features(void **state)
{
    expect_failure(&(Opts){ .unknown_flags = FERRY_REC_CRITICAL }, "unknown critical record type 0x0042 (5 bytes)",
                   "unknown");
    expect_failure(&(Opts){ .extra_feature = "x-teleport", .extra_flags = FERRY_FEATURE_CRITICAL },
                   "the stream uses feature 'x-teleport', which this reader does not support", "FEATURES");

    /* An unknown non-critical feature is noted and the stream is read. */
    Built bt;
    build(&bt, &(Opts){ .extra_feature = "x-shiny" });
    bool ok;
    FerryError *err = NULL;
    json_t *r = analyze_buf(bt.b.p, bt.b.len, 0, &ok, &err);
    assert_true(ok);
    json_t *f = json_array_get(json_object_get(r, "features"), 2);
    assert_string_equal(json_string_value(json_object_get(f, "name")), "x-shiny");
    assert_true(json_is_false(json_object_get(f, "known")));
    json_decref(r);
    free(bt.b.p);
}

static void test_many_sections(void **state)
{
    /* 50000 distinct sections are checked for duplicates without a scan of all earlier ones per section (that was
     * 1.25e9 name comparisons here; a file of a million tiny sections took hours); a duplicate is still found. */
    Built bt;
    build(&bt, &(Opts){ .extra_sections = 50000 });
    bool ok;
    FerryError *err = NULL;
    json_t *r = analyze_buf(bt.b.p, bt.b.len, 0, &ok, &err);
    if (!ok) {
        fail_msg("%s", ferry_error_msg(err));
    }
    assert_int_equal(json_array_size(json_object_get(r, "sections")), 50001);
    json_decref(r);
    free(bt.b.p);
    expect_failure(&(Opts){ .extra_sections = 3000, .duplicate_last = true }, "section 'many' instance 3009 appears "
                   "twice", "SECTION");
}

static void test_inconsistent_streams(void **state)
{
    expect_failure(&(Opts){ .end_pages_extra = 1 }, "the source sent 13 pages, 12 arrived", "END");
    expect_failure(&(Opts){ .no_hint_feature = true }, "FEATURES lack 'populate-hints'", "POPULATE_HINT");
}

/* ferry-analyze knows the features this build knows (one list, params.c): switchover-commit, on by default, is not
 * "known": false (it was, from a list of its own that lacked it). */
static void test_known_features(void **state)
{
    Built bt;
    build(&bt, &(Opts){ .extra_feature = "switchover-commit" });
    bool ok;
    FerryError *err = NULL;
    json_t *r = analyze_buf(bt.b.p, bt.b.len, 0, &ok, &err);
    if (!ok) {
        fail_msg("%s", ferry_error_msg(err));
    }
    json_t *features = json_object_get(r, "features");
    assert_int_equal(json_array_size(features), 3);
    for (size_t i = 0; i < 3; i++) {
        json_t *f = json_array_get(features, i);
        if (json_object_get(f, "known")) {
            fail_msg("feature '%s' is reported as not known", json_string_value(json_object_get(f, "name")));
        }
    }
    json_decref(r);
    free(bt.b.p);

    /* unix-page-flipping is known, and readable: a run's data in the page pipe is simply not in the stream. */
    build(&bt, &(Opts){ .extra_feature = "unix-page-flipping", .extra_flags = FERRY_FEATURE_CRITICAL,
                        .piped_run = true });
    r = analyze_buf(bt.b.p, bt.b.len, 0, &ok, &err);
    if (!ok) {
        fail_msg("%s", ferry_error_msg(err));
    }
    assert_int_equal(jint(r, "ram.pages"), 12);
    json_decref(r);
    free(bt.b.p);

    /* multifd is known but cannot be read from the main channel alone: refused, as before. */
    expect_failure(&(Opts){ .extra_feature = "multifd", .extra_flags = FERRY_FEATURE_CRITICAL },
                   "the stream uses feature 'multifd', which this reader does not support", "FEATURES");
}

/* Loads @len bytes of @p into a destination with the blocks of build() ("ram0" of 16 pages, "vga" of 4) and no
 * sections (the stream's section is skippable); returns whether it loaded, *err the error. */
static bool load_into_destination(const uint8_t *p, size_t len, FerryError **err)
{
    size_t ps = ferry_ram_page_size();
    FerryMigration *m = ferry__migration_new();
    assert_non_null(ferry_ram_block_new(m, "ram0", 16 * ps, NULL));
    assert_non_null(ferry_ram_block_new(m, "vga", 4 * ps, NULL));
    FerryChannel *c = ferry__channel_new_fd(memfd_with(p, len), "crafted stream");
    assert_non_null(c);
    bool ok = ferry__migration_load_stream(m, c, NULL, err);
    ferry__channel_free(c);
    ferry__migration_free(m);
    return ok;
}

/* The analyzer and a destination both refuse the stream of @o with @needle, at the same record. */
static void expect_both_refuse(const Opts *o, const char *needle, const char *record)
{
    expect_failure(o, needle, record);
    Built bt;
    build(&bt, o);
    FerryError *err = NULL;
    if (load_into_destination(bt.b.p, bt.b.len, &err)) {
        fail_msg("a destination loaded a stream the analyzer refuses with '%s'", needle);
    }
    assert_msg_contains(err, needle);
    char where[64];
    snprintf(where, sizeof(where), ", %s record: ", record);
    assert_msg_contains(err, where);
    ferry_error_free(err);
    free(bt.b.p);
}

/* Streams that break a rule of docs/stream-format.md with valid checksums; several were accepted by the
 * destination, the analyzer, or both, before the two shared one reader. */
static void test_hostile_streams(void **state)
{
    size_t ps = ferry_ram_page_size();
    /* The good stream loads into the destination, so that the refusals below are for the one change each. */
    Built bt;
    build(&bt, &(Opts){ .page_size = (uint32_t)ps });
    FerryError *err = NULL;
    if (!load_into_destination(bt.b.p, bt.b.len, &err)) {
        fail_msg("%s", ferry_error_msg(err));
    }
    free(bt.b.p);

    expect_both_refuse(&(Opts){ .page_size = (uint32_t)ps, .end_flags_extra = 0x4 }, "END has unknown flags 0x4",
                       "END");
    expect_both_refuse(&(Opts){ .page_size = (uint32_t)ps, .repeat_type = FERRY_REC_CONFIG },
                       "record CONFIG not allowed in phase ram (a second CONFIG record)", "CONFIG");
    expect_both_refuse(&(Opts){ .page_size = (uint32_t)ps, .repeat_type = FERRY_REC_HELLO },
                       "record HELLO not allowed in phase features (a second HELLO record)", "HELLO");
    expect_both_refuse(&(Opts){ .page_size = (uint32_t)ps, .repeat_type = FERRY_REC_FEATURES },
                       "record FEATURES not allowed in phase config (a second FEATURES record)", "FEATURES");
    expect_both_refuse(&(Opts){ .page_size = (uint32_t)ps, .late_pass_end = true },
                       "record PASS_END not allowed in phase sections (it must come before the first SECTION "
                       "record)", "PASS_END");
    expect_both_refuse(&(Opts){ .page_size = (uint32_t)ps, .pass_end_flags = 0x0100 },
                       "reserved record flags 0x0100 are set", "PASS_END");
    expect_both_refuse(&(Opts){ .page_size = (uint32_t)ps, .ack_in_stream = true },
                       "record ACK not allowed in phase ram (a return-path record)", "ACK");
    expect_both_refuse(&(Opts){ .page_size = (uint32_t)ps, .zero_type = true }, "record type 0 is invalid",
                       "unknown");
    expect_both_refuse(&(Opts){ .page_size = (uint32_t)ps, .piped_run = true },
                       "run with its data in the page pipe in a stream whose FEATURES lack 'unix-page-flipping'",
                       "RAM_PAGES");
}

/* A record whose CRC is right but whose content is wrong: the checks behind the CRC must still catch it. */
static void test_bad_content_behind_good_crc(void **state)
{
    Buf b = { 0 };
    uint8_t hdr[FERRY_WIRE_HEADER_LEN];
    ferry__wire_encode_header(hdr);
    buf_put(&b, hdr, sizeof(hdr));
    FerryWireFeatureList f = { 0 };
    ferry__wire_features_add(&f, "record-checksum", FERRY_FEATURE_CRITICAL);
    put_features(&b, FERRY_REC_HELLO, &f);
    put_features(&b, FERRY_REC_FEATURES, &f);
    FerryWireBlock blocks[1] = { { "ram0", 4 * 4096 } };
    size_t len;
    uint8_t *p = ferry__wire_config_encode(&(FerryWireConfig){ .page_size = 4096, .nblocks = 1, .blocks = blocks },
                                           &len);
    put_record(&b, FERRY_REC_CONFIG, FERRY_REC_CRITICAL, p, len, true);
    free(p);
    size_t base = b.len;

    struct {
        uint16_t type;
        const char *needle;
    } cases[] = {
        { FERRY_REC_RAM_PAGES, "outside RAM block 'ram0'" },
        { FERRY_REC_SECTION, "section 'dev' instance 3" },
        { FERRY_REC_CONFIG, "a second CONFIG record" },
    };
    for (size_t i = 0; i < FERRY_ARRAY_SIZE(cases); i++) {
        b.len = base;
        if (cases[i].type == FERRY_REC_RAM_PAGES) {
            uint8_t run[FERRY_WIRE_RAM_RUN_HEADER_LEN + 1];
            ferry__wire_run_encode(&(FerryWireRun){ .block = 0, .first = 3, .count = 2 }, run);
            run[FERRY_WIRE_RAM_RUN_HEADER_LEN] = 0x3;
            put_record(&b, FERRY_REC_RAM_PAGES, FERRY_REC_CRITICAL, run, sizeof(run), true);
        } else if (cases[i].type == FERRY_REC_SECTION) {
            size_t dlen;
            p = section_payload("dev", &len, &dlen);
            p[len - dlen] ^= 0xff; /* the first byte of the data */
            put_record(&b, FERRY_REC_SECTION, FERRY_REC_CRITICAL, p, len, true);
            free(p);
        } else {
            p = ferry__wire_config_encode(&(FerryWireConfig){ .page_size = 4096, .nblocks = 1, .blocks = blocks },
                                          &len);
            put_record(&b, FERRY_REC_CONFIG, FERRY_REC_CRITICAL, p, len, true);
            free(p);
        }
        bool ok;
        FerryError *err = NULL;
        json_t *r = analyze_buf(b.p, b.len, 0, &ok, &err);
        assert_false(ok);
        assert_msg_contains(err, cases[i].needle);
        char want[64];
        snprintf(want, sizeof(want), "at stream offset %zu, %s record: ", base, ferry__wire_record_name(cases[i].type));
        assert_msg_contains(err, want);
        assert_int_equal(jint(r, "error.offset"), base);
        ferry_error_free(err);
        json_decref(r);
    }
    free(b.p);
}

/* A change of every single byte (bit 0 or bit 7, alternately) and every truncation of a small stream is refused,
 * with an offset. */
static void test_every_flip_and_truncation(void **state)
{
    Built bt;
    build(&bt, &(Opts){ .page_size = 512, .small = true });
    uint8_t *copy = malloc(bt.b.len);
    bool ok;
    FerryError *err = NULL;
    memcpy(copy, bt.b.p, bt.b.len);
    for (size_t i = 0; i < bt.b.len; i++) {
        uint8_t mask = i % 2 ? 0x80 : 0x01;
        copy[i] ^= mask;
        json_t *r = analyze_buf(copy, bt.b.len, 0, &ok, &err);
        copy[i] ^= mask;
        if (ok) {
            print_error("a flip of byte %zu (mask 0x%02x) went unnoticed\n", i, mask);
            fail();
        }
        assert_msg_contains(err, "at stream offset ");
        assert_true(json_is_integer(json_object_get(json_object_get(r, "error"), "offset")));
        ferry_error_free(err);
        err = NULL;
        json_decref(r);
    }
    for (size_t cut = 0; cut < bt.b.len; cut++) {
        json_t *r = analyze_buf(bt.b.p, cut, 0, &ok, &err);
        if (ok) {
            print_error("a stream cut at %zu of %zu bytes was accepted\n", cut, bt.b.len);
            fail();
        }
        assert_msg_contains(err, "at stream offset ");
        assert_true(jint(r, "error.offset") <= (json_int_t)cut);
        ferry_error_free(err);
        err = NULL;
        json_decref(r);
    }
    json_t *r = analyze_buf(bt.b.p, bt.b.len, 0, &ok, &err);
    assert_true(ok);
    json_decref(r);
    free(copy);
    free(bt.b.p);
}

/* A postcopy stream (a capture of a postcopy's main channel): the "postcopy" member, the pages sent after the
 * switch counted with the others; its records are refused where they break a rule, by the analyzer and a
 * destination alike. */
static void test_postcopy(void **state)
{
    Built bt;
    build(&bt, &(Opts){ .postcopy = true, .pc_flags = FERRY_PC_SOURCE_RUNNING | FERRY_PC_PREEMPT });
    bool ok;
    FerryError *err = NULL;
    json_t *r = analyze_buf(bt.b.p, bt.b.len, 0, &ok, &err);
    if (!ok) {
        fail_msg("%s", ferry_error_msg(err));
    }
    json_t *pc = json_object_get(r, "postcopy");
    assert_non_null(pc);
    json_t *flags = json_object_get(pc, "flags");
    assert_int_equal(json_array_size(flags), 2);
    assert_string_equal(json_string_value(json_array_get(flags, 0)), "source-running");
    assert_string_equal(json_string_value(json_array_get(flags, 1)), "preempt");
    assert_int_equal(jint(r, "postcopy.needed-pages"), 9);
    assert_true(json_is_true(json_object_get(pc, "run")));
    assert_int_equal(jint(r, "ram.records"), 3);
    assert_int_equal(jint(r, "ram.pages"), 14);
    assert_int_equal(jint(r, "ram.zero-pages"), 5);
    assert_int_equal(jint(r, "ram.data-bytes"), 9 * 4096);
    assert_int_equal(jint(json_array_get(json_object_get(json_object_get(r, "ram"), "blocks"), 0), "pages"), 12);
    assert_int_equal(jint(r, "end.pages"), 14);
    assert_int_equal(jint(r, "end.sections"), 1);
    /* HELLO FEATURES CONFIG HINT PAGES PASS_END PAGES START NEED unknown SECTION RUN PAGES END */
    assert_int_equal(jint(r, "records"), 14);
    assert_int_equal(jint(r, "bytes"), bt.b.len);
    assert_int_equal(jint(r, "framing-bytes"), bt.b.len - bt.data_bytes);
    assert_int_equal(json_array_size(json_object_get(r, "unknown-records")), 1);
    assert_int_equal(json_array_size(json_object_get(r, "features")), 3);
    json_decref(r);
    free(bt.b.p);

    /* No flags: an empty list; no "postcopy" member at all in a precopy stream. */
    build(&bt, &(Opts){ .postcopy = true });
    r = analyze_buf(bt.b.p, bt.b.len, 0, &ok, &err);
    assert_true(ok);
    assert_int_equal(json_array_size(json_object_get(json_object_get(r, "postcopy"), "flags")), 0);
    json_decref(r);
    free(bt.b.p);
    build(&bt, &(Opts){ 0 });
    r = analyze_buf(bt.b.p, bt.b.len, 0, &ok, &err);
    assert_true(ok);
    assert_null(json_object_get(r, "postcopy"));
    json_decref(r);
    free(bt.b.p);

    /* Content the grammar lets through, refused by the analyzer's steps. */
    expect_failure(&(Opts){ .postcopy = true, .pc_flags = FERRY_PC_SOURCE_RUNNING | 0x4 },
                   "POSTCOPY_START has unknown flags 0x4 (known: 0x3)", "POSTCOPY_START");
    expect_failure(&(Opts){ .postcopy = true, .need_block = 2 }, "needed pages of RAM block 2, the stream has 2 blocks",
                   "POSTCOPY_NEED");
    expect_failure(&(Opts){ .postcopy = true, .need_first = 10, .need_count = 7 },
                   "needed range 10+7 is outside RAM block 'ram0' (16 pages)", "POSTCOPY_NEED");
    expect_failure(&(Opts){ .postcopy = true, .need_first = UINT64_MAX, .need_count = 2 },
                   "is outside RAM block 'ram0'", "POSTCOPY_NEED");
    expect_failure(&(Opts){ .postcopy = true, .need_block = 1, .need_first = 3, .need_count = 1 },
                   "needed range 2+3 is outside RAM block 'vga' (4 pages)", "POSTCOPY_NEED");
    /* The pages after the switch count towards END's total as the others. */
    expect_failure(&(Opts){ .postcopy = true, .end_pages_extra = 1 }, "the source sent 15 pages, 14 arrived", "END");

    /* A destination reading from a file (a one-way channel) reads POSTCOPY_START and refuses it: it could not ask
     * for pages. So the grammar and the decoding of POSTCOPY_START are all that fuzz-stream reaches of postcopy. */
    size_t ps = ferry_ram_page_size();
    build(&bt, &(Opts){ .page_size = (uint32_t)ps, .postcopy = true });
    assert_false(load_into_destination(bt.b.p, bt.b.len, &err));
    assert_msg_contains(err, "POSTCOPY_START record: POSTCOPY_START on a channel without a return path");
    ferry_error_free(err);
    err = NULL;
    free(bt.b.p);
    /* ... and refuses a bad one as the analyzer does, before that. */
    expect_both_refuse(&(Opts){ .page_size = (uint32_t)ps, .postcopy = true, .pc_flags = 0x100 },
                       "POSTCOPY_START has unknown flags 0x100", "POSTCOPY_START");
    expect_both_refuse(&(Opts){ .page_size = (uint32_t)ps, .postcopy = true, .pc_no_feature = true },
                       "POSTCOPY_START record in a stream whose FEATURES lack 'postcopy-ram'", "POSTCOPY_START");
}

/*
 * A mapped-ram stream: HELLO, FEATURES (record-checksum, mapped-ram), CONFIG (ram0 of 16 pages, vga of 4),
 * MAPPED_RAM, the page regions (ram0: pages 0, 2, 5 and 15 present; vga: page 1), then at the resume offset PASS_END,
 * SECTION "dev" and END (5 pages). Regions are page aligned (the writer's 1 MiB alignment is not a rule of the
 * format). *page_off gets the file offset of ram0 page 0, *absent_off that of ram0 page 3 (absent).
 */
typedef struct MappedOpts {
    bool no_sums;             /* flags without FERRY_MAPPED_F_CHECKSUMS (the tables are zero) */
    uint64_t end_pages_extra; /* added to END's page total */
    bool ram_pages;           /* a RAM_PAGES record after MAPPED_RAM */
    uint32_t page_size;       /* 0: 4096 */
} MappedOpts;

static const uint64_t mapped_present[2][4] = { { 0, 2, 5, 15 }, { 1 } };
static const size_t mapped_npresent[2] = { 4, 1 };

static size_t align_page(size_t v, uint32_t ps)
{
    return (v + ps - 1) / ps * ps;
}

static void build_mapped(Buf *b, const MappedOpts *o, size_t *page_off, size_t *absent_off)
{
    const uint32_t ps = o->page_size ? o->page_size : 4096;
    memset(b, 0, sizeof(*b));
    uint8_t hdr[FERRY_WIRE_HEADER_LEN];
    ferry__wire_encode_header(hdr);
    buf_put(b, hdr, sizeof(hdr));
    FerryWireFeatureList f = { 0 };
    assert_true(ferry__wire_features_add(&f, "record-checksum", FERRY_FEATURE_CRITICAL));
    assert_true(ferry__wire_features_add(&f, "mapped-ram", FERRY_FEATURE_CRITICAL));
    put_features(b, FERRY_REC_HELLO, &f);
    put_features(b, FERRY_REC_FEATURES, &f);
    FerryWireBlock blocks[2] = { { "ram0", 16ull * ps }, { "vga", 4ull * ps } };
    FerryWireConfig cfg = { .page_size = ps, .nblocks = 2, .blocks = blocks };
    size_t len;
    uint8_t *p = ferry__wire_config_encode(&cfg, &len);
    put_record(b, FERRY_REC_CONFIG, FERRY_REC_CRITICAL, p, len, true);
    free(p);

    FerryWireMappedBlock mb[2];
    size_t mlen = ferry__wire_mapped_len(2);
    size_t end = b->len + FERRY_WIRE_RECORD_HEADER_LEN + mlen + FERRY_WIRE_RECORD_TRAILER_LEN;
    for (int i = 0; i < 2; i++) {
        uint64_t npages = blocks[i].size / ps;
        mb[i].bitmap = end;
        mb[i].checksums = end + (npages + 7) / 8;
        mb[i].pages = align_page(mb[i].checksums + npages * 4, ps);
        end = mb[i].pages + blocks[i].size;
    }
    FerryWireMapped m = { .flags = o->no_sums ? 0 : FERRY_MAPPED_F_CHECKSUMS, .nblocks = 2, .resume = end,
                          .blocks = mb };
    uint8_t mp[24 + 2 * 24];
    assert_int_equal(mlen, sizeof(mp));
    ferry__wire_mapped_encode(&m, mp);
    put_record(b, FERRY_REC_MAPPED_RAM, FERRY_REC_CRITICAL, mp, mlen, true);
    assert_int_equal(b->len, mb[0].bitmap);

    /* The regions: holes (zero) but for the present pages, their bits and their CRCs. */
    size_t regions = b->len;
    uint8_t *zero = calloc(1, end - regions);
    buf_put(b, zero, end - regions);
    free(zero);
    for (int i = 0; i < 2; i++) {
        for (size_t k = 0; k < mapped_npresent[i]; k++) {
            uint64_t j = mapped_present[i][k];
            uint8_t *page = b->p + mb[i].pages + j * ps;
            for (uint32_t x = 0; x < ps; x++) {
                page[x] = (uint8_t)(x * 7 + j + 1);
            }
            b->p[mb[i].bitmap + j / 8] |= (uint8_t)(1u << (j % 8));
            if (!o->no_sums) {
                ferry__put_be32(b->p + mb[i].checksums + j * 4, ferry__crc32c(0, page, ps));
            }
        }
    }
    *page_off = mb[0].pages;
    *absent_off = mb[0].pages + 3ull * ps;

    if (o->ram_pages) {
        uint8_t run[FERRY_WIRE_RAM_RUN_HEADER_LEN + 1];
        ferry__wire_run_encode(&(FerryWireRun){ .block = 1, .first = 2, .count = 1 }, run);
        run[FERRY_WIRE_RAM_RUN_HEADER_LEN] = 0x01;
        put_record(b, FERRY_REC_RAM_PAGES, FERRY_REC_CRITICAL, run, sizeof(run), true);
    }
    uint8_t pass[8];
    ferry__put_be64(pass, 1);
    put_record(b, FERRY_REC_PASS_END, 0, pass, sizeof(pass), true);
    size_t dlen;
    p = section_payload("dev", &len, &dlen);
    put_record(b, FERRY_REC_SECTION, FERRY_REC_CRITICAL, p, len, true);
    free(p);
    uint8_t endrec[FERRY_WIRE_END_LEN];
    ferry__wire_end_encode(&(FerryWireEnd){ .pages = 5 + o->end_pages_extra, .sections = 1 }, endrec);
    put_record(b, FERRY_REC_END, FERRY_REC_CRITICAL, endrec, sizeof(endrec), true);
}

static void check_mapped_description(json_t *r, bool sums, uint32_t ps)
{
    json_t *mr = json_object_get(r, "mapped-ram");
    assert_non_null(mr);
    assert_true(json_is_boolean(json_object_get(mr, "checksums")));
    assert_int_equal(json_boolean_value(json_object_get(mr, "checksums")), sums);
    assert_int_equal(jint(mr, "pages-present"), 5);
    assert_int_equal(jint(mr, "pages-verified"), sums ? 5 : 0);
    json_t *blocks = json_object_get(mr, "blocks");
    assert_int_equal(json_array_size(blocks), 2);
    assert_string_equal(json_string_value(json_object_get(json_array_get(blocks, 1), "name")), "vga");
    assert_int_equal(jint(json_array_get(blocks, 0), "pages-present"), 4);
    assert_int_equal(jint(json_array_get(blocks, 1), "pages-present"), 1);
    assert_int_equal(jint(json_array_get(blocks, 0), "pages-offset") % ps, 0);
    assert_true(jint(mr, "resume-offset") == jint(json_array_get(blocks, 1), "pages-offset") + 4 * (json_int_t)ps);
    assert_int_equal(jint(r, "ram.pages"), 5);
    assert_int_equal(jint(r, "ram.data-pages"), 5);
    assert_int_equal(jint(r, "end.pages"), 5);
    assert_int_equal(json_array_size(json_object_get(r, "sections")), 1);
}

static void expect_mapped_failure(Buf *b, const char *needle, const char *record, size_t offset)
{
    bool ok;
    FerryError *err = NULL;
    json_t *r = analyze_buf(b->p, b->len, 0, &ok, &err);
    assert_false(ok);
    assert_msg_contains(err, needle);
    json_t *e = json_object_get(r, "error");
    assert_non_null(e);
    assert_string_equal(json_string_value(json_object_get(e, "record")), record);
    if (offset) {
        assert_int_equal(jint(e, "offset"), (json_int_t)offset);
    }
    ferry_error_free(err);
    json_decref(r);
}

static void test_mapped_ram(void **state)
{
    Buf b;
    size_t page0, absent;
    bool ok;
    FerryError *err = NULL;
    for (int sums = 1; sums >= 0; sums--) {
        build_mapped(&b, &(MappedOpts){ .no_sums = !sums }, &page0, &absent);
        json_t *r = analyze_buf(b.p, b.len, 0, &ok, &err);
        if (!ok) {
            print_error("%s\n", ferry_error_msg(err));
        }
        assert_true(ok);
        check_mapped_description(r, sums, 4096);
        json_decref(r);
        free(b.p);
    }

    /* Read through a pipe (stdin): the regions are read in order, so the pages are checked as from a file. */
    build_mapped(&b, &(MappedOpts){ 0 }, &page0, &absent);
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(fds[0]);
        _exit(write(fds[1], b.p, b.len) == (ssize_t)b.len ? 0 : 1);
    }
    close(fds[1]);
    json_t *r = NULL;
    assert_true(ferry_stream_analyze(fds[0], 0, &r, &err));
    check_mapped_description(r, true, 4096);
    json_decref(r);
    close(fds[0]);
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);

    /* One flipped byte of present page 2 of ram0: refused, naming the page and its file offset. */
    b.p[page0 + 2 * 4096 + 100] ^= 0x40;
    char want[128];
    snprintf(want, sizeof(want), "at file offset %zu (page 2 of RAM block 'ram0'): CRC mismatch", page0 + 2 * 4096);
    expect_mapped_failure(&b, want, "MAPPED_RAM page regions", page0 + 2 * 4096);
    b.p[page0 + 2 * 4096 + 100] ^= 0x40;

    /* An absent page that does not read as zero breaks the invariant a mapped restore relies on. */
    b.p[absent + 5] = 1;
    snprintf(want, sizeof(want), "at file offset %zu (page 3 of RAM block 'ram0'): the bitmap says the page is absent",
             absent);
    expect_mapped_failure(&b, want, "MAPPED_RAM page regions", absent);
    b.p[absent + 5] = 0;

    /* Cut inside the page regions. */
    size_t full = b.len;
    b.len = page0 + 4096 + 10;
    expect_mapped_failure(&b, "at stream offset", "MAPPED_RAM page regions", 0);
    b.len = full;
    free(b.p);

    /* END's total counts the bitmaps' pages. */
    build_mapped(&b, &(MappedOpts){ .end_pages_extra = 1 }, &page0, &absent);
    expect_mapped_failure(&b, "the source sent 6 pages, 5 arrived", "END", 0);
    free(b.p);

    /* Pages in records too: refused in a mapped-ram stream. */
    build_mapped(&b, &(MappedOpts){ .ram_pages = true }, &page0, &absent);
    expect_mapped_failure(&b, "RAM_PAGES record on the main channel of a stream that uses 'mapped-ram'", "RAM_PAGES",
                          0);
    free(b.p);

    /* 2 MiB pages, which the analyzer reads in pieces: the CRC spans them, and damage in the last piece counts. */
    const uint32_t huge = 2u << 20;
    build_mapped(&b, &(MappedOpts){ .page_size = huge }, &page0, &absent);
    r = analyze_buf(b.p, b.len, 0, &ok, &err);
    assert_true(ok);
    check_mapped_description(r, true, huge);
    json_decref(r);
    b.p[page0 + 5ull * huge + huge - 1] ^= 1;
    snprintf(want, sizeof(want), "at file offset %zu (page 5 of RAM block 'ram0'): CRC mismatch", page0 + 5 * huge);
    expect_mapped_failure(&b, want, "MAPPED_RAM page regions", page0 + 5 * huge);
    b.p[page0 + 5ull * huge + huge - 1] ^= 1;
    b.p[absent + huge - 1] = 1;
    snprintf(want, sizeof(want), "at file offset %zu (page 3 of RAM block 'ram0'): the bitmap says", absent);
    expect_mapped_failure(&b, want, "MAPPED_RAM page regions", absent);
    free(b.p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_good_stream),
        cmocka_unit_test(test_pipe),
        cmocka_unit_test(test_no_checksum),
        cmocka_unit_test(test_unknown_records_and_features),
        cmocka_unit_test(test_inconsistent_streams),
        cmocka_unit_test(test_many_sections),
        cmocka_unit_test(test_known_features),
        cmocka_unit_test(test_hostile_streams),
        cmocka_unit_test(test_bad_content_behind_good_crc),
        cmocka_unit_test(test_every_flip_and_truncation),
        cmocka_unit_test(test_postcopy),
        cmocka_unit_test(test_mapped_ram),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
