/*
 * Unit tests of src/wire/records.c, the record payload codecs: round trips of every codec, every malformed case
 * the decoders must name, and truncation of each encoded payload at every offset (which must fail, never read
 * past the end: run under ASan). Record names of the version-2 records are checked too.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "test-helpers.h"
#include "wire/wire.h"

/* Takes errp (not the error) since the call that sets it is evaluated in the same argument list. */
static void expect_error(bool ok, FerryError **errp, const char *needle)
{
    assert_false(ok);
    assert_msg_contains(*errp, needle);
    ferry_error_free(*errp);
    *errp = NULL;
}

static void test_record_names(void **state)
{
    assert_string_equal(ferry__wire_record_name(FERRY_REC_HELLO), "HELLO");
    assert_string_equal(ferry__wire_record_name(FERRY_REC_FEATURES), "FEATURES");
    assert_string_equal(ferry__wire_record_name(FERRY_REC_HELLO_REPLY), "HELLO_REPLY");
    assert_string_equal(ferry__wire_record_name(FERRY_REC_RAM_PAGES), "RAM_PAGES");
    assert_string_equal(ferry__wire_record_name(0x7777), "unknown");
}

/* ---- features ---- */

static void test_features_round_trip(void **state)
{
    FerryWireFeatureList l = { 0 }, d;
    FerryError *err = NULL;
    assert_true(ferry__wire_features_add(&l, "record-checksum", FERRY_FEATURE_CRITICAL));
    assert_true(ferry__wire_features_add(&l, "populate-hints", 0));
    assert_true(ferry__wire_features_add(&l, "record-checksum", 0)); /* present: no-op */
    assert_int_equal(l.n, 2);
    assert_int_equal(l.f[0].flags, FERRY_FEATURE_CRITICAL);
    assert_int_equal(ferry__wire_features_find(&l, "populate-hints"), 1);
    assert_int_equal(ferry__wire_features_find(&l, "nope"), -1);

    size_t len = ferry__wire_features_len(&l);
    assert_int_equal(len, 2 + 2 + 15 + 2 + 14);
    uint8_t *buf = malloc(len);
    ferry__wire_features_encode(&l, buf);
    assert_int_equal(ferry__get_be16(buf), 2);
    assert_true(ferry__wire_features_decode(buf, len, &d, &err));
    assert_null(err);
    assert_int_equal(d.n, 2);
    assert_string_equal(d.f[0].name, "record-checksum");
    assert_int_equal(d.f[0].flags, FERRY_FEATURE_CRITICAL);
    assert_string_equal(d.f[1].name, "populate-hints");
    assert_int_equal(d.f[1].flags, 0);

    /* Every truncation fails. */
    for (size_t cut = 0; cut < len; cut++) {
        err = NULL;
        assert_false(ferry__wire_features_decode(buf, cut, &d, &err));
        assert_non_null(err);
        ferry_error_free(err);
    }
    free(buf);

    /* An empty list. */
    FerryWireFeatureList empty = { 0 };
    uint8_t e[2];
    assert_int_equal(ferry__wire_features_len(&empty), 2);
    ferry__wire_features_encode(&empty, e);
    err = NULL;
    assert_true(ferry__wire_features_decode(e, 2, &d, &err));
    assert_int_equal(d.n, 0);
}

static void test_features_add_refuses(void **state)
{
    FerryWireFeatureList l = { 0 };
    char name[80];
    assert_false(ferry__wire_features_add(&l, "", 0));
    assert_false(ferry__wire_features_add(&l, "has space", 0));
    assert_false(ferry__wire_features_add(&l, "tab\t", 0));
    assert_false(ferry__wire_features_add(&l, "\x7f", 0));
    memset(name, 'a', 64);
    name[64] = '\0';
    assert_false(ferry__wire_features_add(&l, name, 0));
    name[63] = '\0';
    assert_true(ferry__wire_features_add(&l, name, 0));
    assert_true(ferry__wire_features_add(&l, "!~", 0));
    l.n = 0;
    for (unsigned i = 0; i < FERRY_WIRE_MAX_FEATURES; i++) {
        snprintf(name, sizeof(name), "f%u", i);
        assert_true(ferry__wire_features_add(&l, name, 0));
    }
    assert_false(ferry__wire_features_add(&l, "one-too-many", 0));
    assert_true(ferry__wire_features_add(&l, "f3", 0)); /* present: still fine when full */
}

static void test_features_malformed(void **state)
{
    FerryWireFeatureList d;
    FerryError *err = NULL;

    expect_error(ferry__wire_features_decode((const uint8_t *)"\x00", 1, &d, &err), &err, "too short");
    err = NULL;
    expect_error(ferry__wire_features_decode((const uint8_t *)"\x00\x41", 2, &d, &err), &err,
                 "65 features, at most 64");
    err = NULL;
    expect_error(ferry__wire_features_decode((const uint8_t *)"\x00\x01\x00\x00", 4, &d, &err), &err,
                 "feature 0 has an invalid name");
    err = NULL;
    expect_error(ferry__wire_features_decode((const uint8_t *)"\x00\x01\x00\x01 ", 5, &d, &err), &err,
                 "invalid name");
    err = NULL;
    expect_error(ferry__wire_features_decode((const uint8_t *)"\x00\x01\x00\x01\x80", 5, &d, &err), &err,
                 "invalid name");
    err = NULL;
    expect_error(ferry__wire_features_decode((const uint8_t *)"\x00\x02\x00\x01x\x01\x01x", 8, &d, &err), &err,
                 "feature 'x' appears twice");
    err = NULL;
    expect_error(ferry__wire_features_decode((const uint8_t *)"\x00\x01\x00\x01xZ", 6, &d, &err), &err,
                 "1 trailing bytes");
    err = NULL;
    expect_error(ferry__wire_features_decode((const uint8_t *)"\x00\x02\x00\x01x", 5, &d, &err), &err,
                 "truncated in feature 1 of 2");

    /* A 64-byte name. */
    uint8_t big[2 + 2 + 64];
    memcpy(big, "\x00\x01\x00\x40", 4);
    memset(big + 4, 'a', 64);
    err = NULL;
    expect_error(ferry__wire_features_decode(big, sizeof(big), &d, &err), &err, "invalid name (64 bytes");
    /* Unknown flag bits are kept, not refused. */
    err = NULL;
    assert_true(ferry__wire_features_decode((const uint8_t *)"\x00\x01\x83\x01x", 5, &d, &err));
    assert_int_equal(d.f[0].flags, 0x83);
}

/* ---- CONFIG ---- */

static void test_config_round_trip(void **state)
{
    FerryWireBlock blocks[3] = { { .size = 1u << 20 }, { .size = 4096 }, { .size = 1ull << 40 } };
    strcpy(blocks[0].name, "ram0");
    memset(blocks[1].name, 'n', 255);
    blocks[1].name[255] = '\0';
    strcpy(blocks[2].name, "x");
    FerryWireConfig c = { .page_size = 4096, .nblocks = 3, .blocks = blocks }, d;
    size_t len;
    FerryError *err = NULL;
    uint8_t *buf = ferry__wire_config_encode(&c, &len);
    assert_int_equal(len, 8 + (1 + 4 + 8) + (1 + 255 + 8) + (1 + 1 + 8));
    assert_true(ferry__wire_config_decode(buf, len, &d, &err));
    assert_int_equal(d.page_size, 4096);
    assert_int_equal(d.nblocks, 3);
    assert_string_equal(d.blocks[0].name, "ram0");
    assert_true(d.blocks[0].size == 1u << 20);
    assert_string_equal(d.blocks[1].name, blocks[1].name);
    assert_true(d.blocks[2].size == 1ull << 40);
    ferry__wire_config_free(&d);
    assert_null(d.blocks);
    ferry__wire_config_free(NULL);

    for (size_t cut = 0; cut < len; cut++) {
        err = NULL;
        assert_false(ferry__wire_config_decode(buf, cut, &d, &err));
        assert_non_null(err);
        assert_null(d.blocks);
        ferry_error_free(err);
    }
    /* A trailing byte. */
    buf = realloc(buf, len + 1);
    buf[len] = 0;
    err = NULL;
    expect_error(ferry__wire_config_decode(buf, len + 1, &d, &err), &err, "1 trailing bytes");
    free(buf);

    /* No blocks at all is well-formed. */
    FerryWireConfig none = { .page_size = 65536 };
    buf = ferry__wire_config_encode(&none, &len);
    assert_int_equal(len, 8);
    err = NULL;
    assert_true(ferry__wire_config_decode(buf, len, &d, &err));
    assert_int_equal(d.nblocks, 0);
    ferry__wire_config_free(&d);
    free(buf);
}

static void test_config_malformed(void **state)
{
    FerryWireConfig d;
    FerryError *err = NULL;
    uint8_t b[64] = { 0 };

    ferry__put_be32(b, 4095);
    expect_error(ferry__wire_config_decode(b, 8, &d, &err), &err, "page size 4095 is not a power of two");
    err = NULL;
    ferry__put_be32(b, 256);
    expect_error(ferry__wire_config_decode(b, 8, &d, &err), &err, "page size 256");
    err = NULL;
    ferry__put_be32(b, 0);
    expect_error(ferry__wire_config_decode(b, 8, &d, &err), &err, "page size 0");
    err = NULL;
    ferry__put_be32(b, 1u << 31);
    expect_error(ferry__wire_config_decode(b, 8, &d, &err), &err, "page size");

    /* A count that cannot fit is refused before any allocation (4 billion blocks in 18 bytes). */
    ferry__put_be32(b, 4096);
    ferry__put_be32(b + 4, 0xffffffffu);
    err = NULL;
    expect_error(ferry__wire_config_decode(b, 18, &d, &err), &err, "claims 4294967295 RAM blocks");
    assert_null(d.blocks);

    /* An empty name, a name with a NUL. */
    ferry__put_be32(b + 4, 1);
    b[8] = 0;
    err = NULL;
    expect_error(ferry__wire_config_decode(b, 8 + 1 + 8 + 1, &d, &err), &err, "block 0 has an invalid name (empty)");
    b[8] = 2;
    b[9] = 'a';
    b[10] = 0;
    err = NULL;
    expect_error(ferry__wire_config_decode(b, 8 + 3 + 8, &d, &err), &err, "contains a NUL byte");
    /* Truncated in the second block. */
    ferry__put_be32(b + 4, 2);
    b[10] = 'b';
    b[19] = 1;
    b[20] = 'c';
    err = NULL;
    expect_error(ferry__wire_config_decode(b, 8 + 11 + 2 + 7, &d, &err), &err, "truncated in RAM block 1 of 2");
}

/* ---- POPULATE_HINT ---- */

static void test_hint(void **state)
{
    uint8_t b[8 + 2 * FERRY_WIRE_HINT_RANGE_LEN];
    FerryWireHint h;
    FerryError *err = NULL;
    ferry__put_be32(b, 3);
    ferry__put_be32(b + 4, 2);
    ferry__put_be64(b + 8, 10);
    ferry__put_be64(b + 16, 5);
    ferry__put_be64(b + 24, 1ull << 40);
    ferry__put_be64(b + 32, 7);
    assert_true(ferry__wire_hint_decode(b, sizeof(b), &h, &err));
    assert_int_equal(h.block, 3);
    assert_int_equal(h.count, 2);
    uint64_t first, count;
    ferry__wire_hint_range(&h, 0, &first, &count);
    assert_true(first == 10 && count == 5);
    ferry__wire_hint_range(&h, 1, &first, &count);
    assert_true(first == 1ull << 40 && count == 7);

    for (size_t cut = 0; cut < sizeof(b); cut++) {
        err = NULL;
        assert_false(ferry__wire_hint_decode(b, cut, &h, &err));
        assert_non_null(err);
        ferry_error_free(err);
    }
    err = NULL;
    expect_error(ferry__wire_hint_decode(b, 7, &h, &err), &err, "shorter than its 8-byte header");
    /* A huge count with a short payload: the multiplication must not wrap. */
    ferry__put_be32(b + 4, 0xffffffffu);
    err = NULL;
    expect_error(ferry__wire_hint_decode(b, sizeof(b), &h, &err), &err, "claims 4294967295 ranges");
    ferry__put_be32(b + 4, 0);
    err = NULL;
    assert_true(ferry__wire_hint_decode(b, 8, &h, &err));
    assert_int_equal(h.count, 0);
}

/* ---- RAM run header ---- */

static void test_run(void **state)
{
    FerryWireRun r = { .block = 2, .flags = 0, .first = 0x123456789ull, .count = 10 }, d;
    uint8_t b[FERRY_WIRE_RAM_RUN_HEADER_LEN];
    ferry__wire_run_encode(&r, b);
    assert_int_equal(ferry__get_be32(b + 16), 10);
    ferry__wire_run_decode(b, &d);
    assert_int_equal(d.block, 2);
    assert_int_equal(d.flags, 0);
    assert_true(d.first == 0x123456789ull);
    assert_int_equal(d.count, 10);

    uint8_t zmap[32] = { 0x05, 0x02 }; /* pages 0, 2 and 9 are zero */
    uint64_t len;
    uint32_t zeros;
    FerryError *err = NULL;
    assert_true(ferry__wire_run_expected_len(&d, zmap, 4096, &len, &zeros, &err));
    assert_int_equal(zeros, 3);
    assert_true(len == 20 + 2 + 7 * 4096ull);

    /* A bit past the run's last page. */
    zmap[1] = 0x04;
    err = NULL;
    expect_error(ferry__wire_run_expected_len(&d, zmap, 4096, &len, &zeros, &err), &err, "bits set past its last");
    zmap[1] = 0;

    /* Data in the page pipe: the record is the header and the bitmap only. */
    d.flags = FERRY_RUN_DATA_IN_PIPE;
    assert_true(ferry__wire_run_expected_len(&d, zmap, 4096, &len, &zeros, &err));
    assert_true(len == 20 + 2);
    d.flags = FERRY_RUN_DATA_IN_PIPE | 0x4;
    err = NULL;
    expect_error(ferry__wire_run_expected_len(&d, zmap, 4096, &len, &zeros, &err), &err, "unknown flags 0x4");
    d.flags = 0;
    d.count = 0;
    err = NULL;
    expect_error(ferry__wire_run_expected_len(&d, zmap, 4096, &len, &zeros, &err), &err, "run of 0 pages");
    d.count = FERRY_WIRE_MAX_RUN_PAGES + 1;
    err = NULL;
    expect_error(ferry__wire_run_expected_len(&d, zmap, 4096, &len, &zeros, &err), &err, "run of 257 pages");

    /* A full run of zero pages. */
    memset(zmap, 0xff, sizeof(zmap));
    d.count = FERRY_WIRE_MAX_RUN_PAGES;
    err = NULL;
    assert_true(ferry__wire_run_expected_len(&d, zmap, 65536, &len, &zeros, &err));
    assert_int_equal(zeros, 256);
    assert_true(len == 20 + 32);
}

/* ---- SECTION ---- */

static uint8_t *section_payload(const FerryWireSection *s, size_t *len)
{
    uint8_t hdr[FERRY_WIRE_SECTION_HEADER_MAX];
    size_t hl = ferry__wire_section_header_encode(s, hdr);
    *len = hl + s->schema_len + s->data_len;
    uint8_t *buf = malloc(*len);
    memcpy(buf, hdr, hl);
    memcpy(buf + hl, s->schema, s->schema_len);
    memcpy(buf + hl + s->schema_len, s->data, s->data_len);
    return buf;
}

static void test_section(void **state)
{
    FerryWireSection s = { .instance_id = 7, .version = 3, .flags = 0x3, .schema = (const uint8_t *)"SCHEMA",
                           .schema_len = 6, .data = (const uint8_t *)"data!", .data_len = 5 }, d;
    strcpy(s.name, "workload");
    size_t len;
    FerryError *err = NULL;
    uint8_t *buf = section_payload(&s, &len);
    assert_int_equal(len, 1 + 8 + 16 + 6 + 5);
    assert_true(ferry__wire_section_decode(buf, len, &d, &err));
    assert_string_equal(d.name, "workload");
    assert_int_equal(d.instance_id, 7);
    assert_int_equal(d.version, 3);
    assert_int_equal(d.flags, 3);
    assert_int_equal(d.schema_len, 6);
    assert_memory_equal(d.schema, "SCHEMA", 6);
    assert_ptr_equal(d.schema, buf + 25);
    assert_int_equal(d.data_len, 5);
    assert_memory_equal(d.data, "data!", 5);

    /* Truncation: up to the end of the schema every cut fails; after it, the cut only shortens the data. */
    for (size_t cut = 0; cut < len; cut++) {
        err = NULL;
        bool ok = ferry__wire_section_decode(buf, cut, &d, &err);
        if (cut < 1 + 8 + 16 + 6) {
            assert_false(ok);
            assert_non_null(err);
            ferry_error_free(err);
        } else {
            assert_true(ok);
            assert_int_equal(d.data_len, cut - 31);
        }
    }

    buf[1 + 8 + 8 + 3] = 0x04; /* flags */
    err = NULL;
    expect_error(ferry__wire_section_decode(buf, len, &d, &err), &err, "unknown flags 0x4");
    buf[1 + 8 + 8 + 3] = 0;
    ferry__put_be32(buf + 1 + 8 + 12, 12); /* schema longer than the rest */
    err = NULL;
    expect_error(ferry__wire_section_decode(buf, len, &d, &err), &err, "schema of 12 bytes does not fit in the 11");
    ferry__put_be32(buf + 1 + 8 + 12, 11); /* exactly the rest: no data */
    err = NULL;
    assert_true(ferry__wire_section_decode(buf, len, &d, &err));
    assert_int_equal(d.data_len, 0);
    buf[3] = 0;
    err = NULL;
    expect_error(ferry__wire_section_decode(buf, len, &d, &err), &err, "contains a NUL byte");
    buf[0] = 0;
    err = NULL;
    expect_error(ferry__wire_section_decode(buf, len, &d, &err), &err, "invalid name (empty)");
    free(buf);

    /* A 255-byte name uses the whole fixed part. */
    memset(s.name, 'q', 255);
    s.name[255] = '\0';
    buf = section_payload(&s, &len);
    assert_int_equal(len, FERRY_WIRE_SECTION_HEADER_MAX + 11);
    err = NULL;
    assert_true(ferry__wire_section_decode(buf, len, &d, &err));
    assert_string_equal(d.name, s.name);
    free(buf);
}

/* ---- END ---- */

static void test_end(void **state)
{
    FerryWireEnd e = { .flags = FERRY_END_SOURCE_RUNNING, .pages = 0x1122334455ull, .sections = 9 }, d;
    uint8_t b[FERRY_WIRE_END_LEN];
    ferry__wire_end_encode(&e, b);
    assert_int_equal(ferry__get_be32(b), 1);
    assert_true(ferry__get_be64(b + 4) == 0x1122334455ull);
    assert_true(ferry__wire_end_decode(b, &d, NULL));
    assert_int_equal(d.flags, FERRY_END_SOURCE_RUNNING);
    assert_true(d.pages == 0x1122334455ull);
    assert_int_equal(d.sections, 9);

    /* Only the defined flags: any other bit is refused, naming it. */
    FerryError *err = NULL;
    e.flags = FERRY_END_SOURCE_RUNNING | 0x80000004u;
    ferry__wire_end_encode(&e, b);
    assert_false(ferry__wire_end_decode(b, &d, &err));
    assert_msg_contains(err, "unknown flags 0x80000004");
    ferry_error_free(err);
}

/* ---- postcopy ---- */

static void test_pc_start(void **state)
{
    FerryWirePcStart st = { .flags = FERRY_PC_SOURCE_RUNNING | FERRY_PC_PREEMPT }, d;
    for (int i = 0; i < FERRY_WIRE_PC_SESSION_LEN; i++) {
        st.session[i] = (uint8_t)(0xf0 - i);
    }
    uint8_t b[FERRY_WIRE_PC_START_LEN];
    memset(b, 0xee, sizeof(b));
    ferry__wire_pc_start_encode(&st, b);
    assert_int_equal(ferry__get_be32(b), 3);
    assert_int_equal(ferry__get_be32(b + 4), 0);
    assert_memory_equal(b + 8, st.session, FERRY_WIRE_PC_SESSION_LEN);
    FerryError *err = NULL;
    assert_true(ferry__wire_pc_start_decode(b, &d, &err));
    assert_int_equal(d.flags, st.flags);
    assert_memory_equal(d.session, st.session, FERRY_WIRE_PC_SESSION_LEN);
    st.flags = 0;
    ferry__wire_pc_start_encode(&st, b);
    assert_true(ferry__wire_pc_start_decode(b, &d, &err));
    assert_int_equal(d.flags, 0);

    /* Every undefined flag bit, alone, is refused and named. */
    for (int bit = 2; bit < 32; bit++) {
        st.flags = FERRY_PC_SOURCE_RUNNING | (1u << bit);
        ferry__wire_pc_start_encode(&st, b);
        char want[48];
        snprintf(want, sizeof(want), "unknown flags 0x%x", 1u << bit);
        expect_error(ferry__wire_pc_start_decode(b, &d, &err), &err, want);
    }
    /* Reserved bytes: any non-zero value. */
    st.flags = 0;
    for (int i = 4; i < 8; i++) {
        ferry__wire_pc_start_encode(&st, b);
        b[i] = 0x01;
        expect_error(ferry__wire_pc_start_decode(b, &d, &err), &err, "non-zero reserved field");
    }
}

static void test_req_pages_codec(void **state)
{
    FerryWireReqPages r = { .block = 0x01020304, .count = 0x05060708, .first = 0x1112131415161718ull }, d;
    uint8_t b[FERRY_WIRE_REQ_PAGES_LEN];
    ferry__wire_req_pages_encode(&r, b);
    static const uint8_t want[FERRY_WIRE_REQ_PAGES_LEN] = { 1, 2, 3, 4, 5, 6, 7, 8,
                                                            0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18 };
    assert_memory_equal(b, want, sizeof(b));
    ferry__wire_req_pages_decode(b, &d);
    assert_int_equal(d.block, r.block);
    assert_int_equal(d.count, r.count);
    assert_true(d.first == r.first);
}

/* The source's blocks in the return-path tests: 16, 1, 13 pages and one of 2^62 (sums must not wrap). */
static const uint64_t test_blocks[] = { 16, 1, 13, 1ull << 62 };

static uint64_t test_block_pages(const void *opaque, uint32_t block)
{
    const uint64_t *pages = opaque;
    assert_true(block < FERRY_ARRAY_SIZE(test_blocks));
    return pages[block];
}

static bool req_check(uint32_t block, uint32_t count, uint64_t first, FerryWireReqPages *out, FerryError **errp)
{
    uint8_t b[FERRY_WIRE_REQ_PAGES_LEN];
    ferry__wire_req_pages_encode(&(FerryWireReqPages){ .block = block, .count = count, .first = first }, b);
    return ferry__wire_req_pages_check(b, sizeof(b), FERRY_ARRAY_SIZE(test_blocks), test_block_pages, test_blocks,
                                       out, errp);
}

static void test_req_pages_check(void **state)
{
    FerryWireReqPages rq;
    FerryError *err = NULL;
    assert_true(req_check(0, 16, 0, &rq, &err));
    assert_int_equal(rq.block, 0);
    assert_int_equal(rq.count, 16);
    assert_true(req_check(0, 1, 15, &rq, &err));
    assert_int_equal(rq.first, 15);
    assert_true(req_check(1, 1, 0, &rq, &err));
    assert_true(req_check(3, FERRY_WIRE_MAX_RUN_PAGES, (1ull << 62) - FERRY_WIRE_MAX_RUN_PAGES, &rq, &err));

    const char *gone = "which do not exist";
    expect_error(req_check(0, 0, 0, &rq, &err), &err, "pages 0+0 of block 0, which do not exist");
    expect_error(req_check(0, 2, 15, &rq, &err), &err, gone);
    expect_error(req_check(0, 1, 16, &rq, &err), &err, gone);
    expect_error(req_check(1, 2, 0, &rq, &err), &err, gone);
    expect_error(req_check(4, 1, 0, &rq, &err), &err, "of block 4, which");
    expect_error(req_check(UINT32_MAX, 1, 0, &rq, &err), &err, gone);
    expect_error(req_check(3, FERRY_WIRE_MAX_RUN_PAGES + 1, 0, &rq, &err), &err, gone);
    /* first + count wraps around 2^64 to inside the block: still refused. */
    expect_error(req_check(3, 2, UINT64_MAX, &rq, &err), &err, gone);
    expect_error(req_check(3, 256, (1ull << 62) - 255, &rq, &err), &err, gone);

    uint8_t b[FERRY_WIRE_REQ_PAGES_LEN + 1] = { 0 };
    ferry__wire_req_pages_encode(&(FerryWireReqPages){ .block = 0, .count = 1 }, b);
    expect_error(ferry__wire_req_pages_check(b, sizeof(b), 4, test_block_pages, test_blocks, &rq, &err), &err,
                 "page request has 17 bytes, expected 16");
    expect_error(ferry__wire_req_pages_check(b, 15, 4, test_block_pages, test_blocks, &rq, &err), &err,
                 "has 15 bytes");
    expect_error(ferry__wire_req_pages_check(b, 0, 4, test_block_pages, test_blocks, &rq, &err), &err,
                 "has 0 bytes");
    /* No blocks at all: the lookup is never called. */
    expect_error(ferry__wire_req_pages_check(b, 16, 0, test_block_pages, test_blocks, &rq, &err), &err, gone);
}

/* A RESUME_NEED payload for pages first+n of @block, bitmap bytes from @bits (or all clear); *len its length. */
static uint8_t *need_payload(uint32_t block, uint64_t first, uint64_t n, const uint8_t *bits, size_t nbits,
                             size_t *len)
{
    size_t bytes = nbits;
    *len = FERRY_WIRE_RESUME_NEED_HEADER_LEN + bytes;
    uint8_t *p = calloc(1, *len + 1);
    ferry__wire_resume_need_encode_header(&(FerryWireResumeNeed){ .block = block, .first = first, .count = n }, p);
    if (bits) {
        memcpy(p + FERRY_WIRE_RESUME_NEED_HEADER_LEN, bits, bytes);
    }
    return p;
}

static bool need_decode(const uint8_t *p, size_t len, FerryWireResumeNeed *n, FerryError **errp)
{
    return ferry__wire_resume_need_decode(p, len, FERRY_ARRAY_SIZE(test_blocks), test_block_pages, test_blocks, n,
                                          errp);
}

static void test_resume_need(void **state)
{
    FerryWireResumeNeed n;
    FerryError *err = NULL;
    size_t len;
    /* Block 2 (13 pages), all of it: 2 bitmap bytes, pages 0, 7, 8 and 12 missing. */
    const uint8_t bits[] = { 0x81, 0x11 };
    uint8_t *p = need_payload(2, 0, 13, bits, 2, &len);
    assert_int_equal(len, 22);
    assert_int_equal(ferry__get_be32(p), 2);
    assert_true(ferry__get_be64(p + 4) == 0);
    assert_true(ferry__get_be64(p + 12) == 13);
    assert_true(need_decode(p, len, &n, &err));
    assert_int_equal(n.block, 2);
    assert_true(n.first == 0 && n.count == 13);
    assert_ptr_equal(n.bitmap, p + FERRY_WIRE_RESUME_NEED_HEADER_LEN);

    /* A bit past page 12 (bit 5 of byte 1) is refused; the header length's, the bitmap length's, are named. */
    p[FERRY_WIRE_RESUME_NEED_HEADER_LEN + 1] = 0x20;
    expect_error(need_decode(p, len, &n, &err), &err, "bitmap bits set past its last page");
    p[FERRY_WIRE_RESUME_NEED_HEADER_LEN + 1] = 0x10;
    assert_true(need_decode(p, len, &n, &err));
    expect_error(need_decode(p, len - 1, &n, &err), &err, "bitmap of 1 bytes, expected 2");
    expect_error(need_decode(p, len + 1, &n, &err), &err, "bitmap of 3 bytes, expected 2");
    expect_error(need_decode(p, 19, &n, &err), &err, "RESUME_NEED of 19 bytes is shorter than its 20-byte header");
    expect_error(need_decode(p, 0, &n, &err), &err, "shorter than its 20-byte header");
    free(p);

    /* A multiple of 8 pages has no spare bits: 0xff in the last byte is fine. */
    const uint8_t full[] = { 0xff, 0xff };
    p = need_payload(0, 0, 16, full, 2, &len);
    assert_true(need_decode(p, len, &n, &err));
    free(p);
    p = need_payload(0, 15, 1, full, 1, &len);
    expect_error(need_decode(p, len, &n, &err), &err, "bits set past its last page");
    free(p);
    const uint8_t one[] = { 0x01 };
    p = need_payload(0, 15, 1, one, 1, &len);
    assert_true(need_decode(p, len, &n, &err));
    assert_true(n.first == 15 && n.count == 1);
    free(p);

    /* Ranges that are not inside a block of the reader's, sums that would wrap among them. */
    const char *fit = "does not fit this process's RAM";
    struct {
        uint32_t block;
        uint64_t first, n;
    } bad[] = {
        { 0, 0, 0 }, { 0, 16, 1 }, { 0, 15, 2 }, { 0, 0, 17 }, { 1, 1, 1 }, { 4, 0, 1 }, { UINT32_MAX, 0, 1 },
        { 3, UINT64_MAX, 2 }, { 3, 1, UINT64_MAX }, { 3, (1ull << 62) - 1, 2 },
    };
    for (size_t i = 0; i < FERRY_ARRAY_SIZE(bad); i++) {
        p = need_payload(bad[i].block, bad[i].first, bad[i].n, NULL, 0, &len);
        expect_error(need_decode(p, len, &n, &err), &err, fit);
        free(p);
    }
    /* A huge block with a bitmap that does not match its claimed count: refused by length, nothing read past it. */
    p = need_payload(3, 0, 1ull << 40, NULL, 8, &len);
    expect_error(need_decode(p, len, &n, &err), &err, "bitmap of 8 bytes, expected 137438953472");
    free(p);
}

/* ---- the return path's framing ---- */

static void test_return_framing(void **state)
{
    static const uint16_t want[] = { FERRY_REC_REQ_PAGES, FERRY_REC_ACK };
    FerryError *err = NULL;
    FerryRecordHeader rh = { .type = FERRY_REC_REQ_PAGES, .length = 16 };
    assert_true(ferry__wire_return_header_check(&rh, want, 2, &err));
    rh.type = FERRY_REC_ACK;
    assert_true(ferry__wire_return_header_check(&rh, want, 2, &err));
    /* NACK is always expected: it carries the destination's failure. */
    rh.type = FERRY_REC_NACK;
    rh.length = FERRY_WIRE_MAX_CONTROL_LEN;
    assert_true(ferry__wire_return_header_check(&rh, want, 2, &err));
    rh.length = FERRY_WIRE_MAX_CONTROL_LEN + 1;
    expect_error(ferry__wire_return_header_check(&rh, want, 2, &err), &err,
                 "unexpected record NACK (0x0102, 1048577 bytes) on the return path, expected REQ_PAGES");
    rh = (FerryRecordHeader){ .type = FERRY_REC_RESUME_NEED, .length = 20 };
    expect_error(ferry__wire_return_header_check(&rh, want, 2, &err), &err, "unexpected record RESUME_NEED (0x0105");
    rh.type = 0x4242;
    expect_error(ferry__wire_return_header_check(&rh, want, 2, &err), &err, "unexpected record unknown (0x4242");
    rh.type = FERRY_REC_RAM_PAGES;
    expect_error(ferry__wire_return_header_check(&rh, want, 1, &err), &err, "RAM_PAGES");

    /* The trailer is the CRC of header and payload, as a record's on the stream. */
    uint8_t h[FERRY_WIRE_RECORD_HEADER_LEN];
    ferry__wire_encode_record(h, &(FerryRecordHeader){ .type = FERRY_REC_NACK, .length = 3 });
    uint8_t all[FERRY_WIRE_RECORD_HEADER_LEN + 3];
    memcpy(all, h, sizeof(h));
    memcpy(all + sizeof(h), "abc", 3);
    assert_int_equal(ferry__wire_record_crc(h, (const uint8_t *)"abc", 3), ferry__crc32c_sw(0, all, sizeof(all)));
    assert_int_equal(ferry__wire_record_crc(h, NULL, 0), ferry__crc32c_sw(0, h, sizeof(h)));
}

/* ---- mapped-ram ---- */

/*
 * CONFIG ram0 (16 pages) and vga (4 pages) of 4 KiB; the MAPPED_RAM record ends at stream offset 200. The good
 * layout: ram0 bitmap 200 (2 bytes), checksums 202 (64), pages 4096 (64 KiB); vga bitmap 69632 (1), checksums
 * 69633 (16), pages 73728 (16 KiB); resume 90112.
 */
static FerryWireBlock mapped_cfg_blocks[2] = { { "ram0", 16 * 4096 }, { "vga", 4 * 4096 } };
static const FerryWireConfig mapped_cfg = { .page_size = 4096, .nblocks = 2, .blocks = mapped_cfg_blocks };

static void mapped_good(FerryWireMappedBlock mb[2], FerryWireMapped *m)
{
    mb[0] = (FerryWireMappedBlock){ .bitmap = 200, .checksums = 202, .pages = 4096 };
    mb[1] = (FerryWireMappedBlock){ .bitmap = 69632, .checksums = 69633, .pages = 73728 };
    *m = (FerryWireMapped){ .flags = FERRY_MAPPED_F_CHECKSUMS, .nblocks = 2, .resume = 90112, .blocks = mb };
}

/* Encodes @m and decodes its first @len bytes against mapped_cfg, the record ending at offset 200. */
static bool mapped_try(const FerryWireMapped *m, size_t len, FerryWireMapped *out, FerryError **errp)
{
    uint8_t p[24 + 4 * 24];
    assert_true(ferry__wire_mapped_len(m->nblocks) <= sizeof(p));
    ferry__wire_mapped_encode(m, p);
    return ferry__wire_mapped_decode(p, len, &mapped_cfg, 200, out, errp);
}

static void test_mapped(void **state)
{
    FerryWireMappedBlock mb[2];
    FerryWireMapped m, out;
    FerryError *err = NULL;
    size_t len = ferry__wire_mapped_len(2);
    assert_int_equal(len, FERRY_WIRE_MAPPED_HEADER_LEN + 2 * FERRY_WIRE_MAPPED_BLOCK_LEN);

    mapped_good(mb, &m);
    assert_true(mapped_try(&m, len, &out, &err));
    assert_int_equal(out.flags, FERRY_MAPPED_F_CHECKSUMS);
    assert_int_equal(out.nblocks, 2);
    assert_int_equal(out.resume, 90112);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(out.blocks[i].bitmap, mb[i].bitmap);
        assert_int_equal(out.blocks[i].checksums, mb[i].checksums);
        assert_int_equal(out.blocks[i].pages, mb[i].pages);
    }
    free(out.blocks);
    /* Regions may leave gaps, and the last may end right at the resume offset or before it. */
    m.resume = 1u << 20;
    m.flags = 0;
    assert_true(mapped_try(&m, len, &out, &err));
    assert_int_equal(out.flags, 0);
    free(out.blocks);

    /* Every truncation. */
    for (size_t n = 0; n < len; n++) {
        mapped_good(mb, &m);
        expect_error(mapped_try(&m, n, &out, &err), &err, n < 24 ? "shorter than its 24-byte header" : "expected");
        assert_null(out.blocks);
    }

    /* The header's fields: version, flags, reserved, block count. */
    uint8_t p[24 + 2 * 24];
    mapped_good(mb, &m);
    ferry__wire_mapped_encode(&m, p);
    ferry__put_be32(p, 2);
    expect_error(ferry__wire_mapped_decode(p, len, &mapped_cfg, 200, &out, &err), &err,
                 "MAPPED_RAM version 2 is not supported (only 1)");
    ferry__wire_mapped_encode(&m, p);
    ferry__put_be32(p + 4, FERRY_MAPPED_F_CHECKSUMS | 0x4);
    expect_error(ferry__wire_mapped_decode(p, len, &mapped_cfg, 200, &out, &err), &err, "unknown flags 0x4");
    ferry__wire_mapped_encode(&m, p);
    ferry__put_be32(p + 12, 1);
    expect_error(ferry__wire_mapped_decode(p, len, &mapped_cfg, 200, &out, &err), &err, "non-zero reserved field");
    ferry__wire_mapped_encode(&m, p);
    ferry__put_be32(p + 8, 1);
    expect_error(ferry__wire_mapped_decode(p, len, &mapped_cfg, 200, &out, &err), &err,
                 "MAPPED_RAM describes 1 blocks, the CONFIG record 2");
    ferry__wire_mapped_encode(&m, p);
    expect_error(ferry__wire_mapped_decode(p, len - 1, &mapped_cfg, 200, &out, &err), &err,
                 "MAPPED_RAM is 71 bytes, 72 expected for 2 blocks");

    /* The regions: before the record's end, overlapping, out of block order, past resume, misaligned pages. */
    mapped_good(mb, &m);
    mb[0].bitmap = 199;
    expect_error(mapped_try(&m, len, &out, &err), &err,
                 "the bitmap of block 'ram0' (offset 199, 2 bytes) overlaps another region or lies outside [200, "
                 "90112)");
    mapped_good(mb, &m);
    mb[0].checksums = 201;
    expect_error(mapped_try(&m, len, &out, &err), &err,
                 "the checksum table of block 'ram0' (offset 201, 64 bytes) overlaps another region");
    mapped_good(mb, &m);
    mb[0].pages = 0; /* the page regions overlap the record and the regions before */
    expect_error(mapped_try(&m, len, &out, &err), &err, "the pages of block 'ram0' (offset 0, 65536 bytes)");
    mapped_good(mb, &m);
    mb[1].bitmap = 100; /* vga's regions before ram0's */
    expect_error(mapped_try(&m, len, &out, &err), &err, "the bitmap of block 'vga' (offset 100, 1 bytes)");
    mapped_good(mb, &m);
    m.resume = 90111;
    expect_error(mapped_try(&m, len, &out, &err), &err,
                 "the pages of block 'vga' (offset 73728, 16384 bytes) overlaps another region or lies outside "
                 "[69649, 90111)");
    mapped_good(mb, &m);
    mb[0].checksums = UINT64_MAX - 10; /* its end would wrap around */
    m.resume = UINT64_MAX;
    expect_error(mapped_try(&m, len, &out, &err), &err,
                 "the checksum table of block 'ram0' (offset 18446744073709551605, 64 bytes)");
    mapped_good(mb, &m);
    mb[1].pages = 73728 + 512;
    m.resume = 1u << 20;
    expect_error(mapped_try(&m, len, &out, &err), &err,
                 "the pages of block 'vga' start at offset 74240, not a multiple of the page size 4096");
    assert_null(out.blocks);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_record_names),
        cmocka_unit_test(test_features_round_trip),
        cmocka_unit_test(test_features_add_refuses),
        cmocka_unit_test(test_features_malformed),
        cmocka_unit_test(test_config_round_trip),
        cmocka_unit_test(test_config_malformed),
        cmocka_unit_test(test_hint),
        cmocka_unit_test(test_run),
        cmocka_unit_test(test_section),
        cmocka_unit_test(test_end),
        cmocka_unit_test(test_pc_start),
        cmocka_unit_test(test_req_pages_codec),
        cmocka_unit_test(test_req_pages_check),
        cmocka_unit_test(test_resume_need),
        cmocka_unit_test(test_return_framing),
        cmocka_unit_test(test_mapped),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
