/*
 * Unit tests of the multifd wire codecs (src/wire/multifd.c): the MULTIFD record, the channel hello and the
 * packet header round-trip, and every bad value a peer could send is refused with a message that names it.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "test-helpers.h"
#include "wire/wire.h"

static void test_record_round_trip(void **state)
{
    FerryWireMultifd r = { .channels = 255, .compression = FERRY_MFD_COMP_ZSTD, .flags = FERRY_MFD_F_CHECKSUM,
                           .max_pages = FERRY_WIRE_MFD_MAX_PAGES };
    for (int i = 0; i < FERRY_WIRE_MFD_SESSION_LEN; i++) {
        r.session[i] = (uint8_t)(i * 7 + 1);
    }
    uint8_t buf[FERRY_WIRE_MFD_RECORD_LEN];
    ferry__wire_mfd_encode(&r, buf);
    FerryWireMultifd out;
    FerryError *err = NULL;
    assert_true(ferry__wire_mfd_decode(buf, sizeof(buf), &out, &err));
    assert_int_equal(out.channels, 255);
    assert_int_equal(out.compression, FERRY_MFD_COMP_ZSTD);
    assert_int_equal(out.flags, FERRY_MFD_F_CHECKSUM);
    assert_int_equal(out.max_pages, FERRY_WIRE_MFD_MAX_PAGES);
    assert_memory_equal(out.session, r.session, sizeof(r.session));
    assert_string_equal(ferry__wire_mfd_comp_name(FERRY_MFD_COMP_ZLIB), "zlib");
}

static void test_record_bad(void **state)
{
    FerryWireMultifd r = { .channels = 2, .max_pages = 128 };
    uint8_t good[FERRY_WIRE_MFD_RECORD_LEN], buf[FERRY_WIRE_MFD_RECORD_LEN];
    ferry__wire_mfd_encode(&r, good);
    static const struct {
        size_t off;
        uint8_t val;
        const char *msg;
    } cases[] = {
        { 1, 2, "version 2" },        { 2, 0, "with 0 channels" },     { 3, 0, "with 0 channels" },
        { 4, 3, "compression method 3" }, { 5, 0x80, "unknown flags 0x80" }, { 6, 1, "reserved" },
        { 13, 1, "reserved" },        { 11, 0, "0 pages per packet" },
    };
    for (size_t i = 0; i < FERRY_ARRAY_SIZE(cases); i++) {
        memcpy(buf, good, sizeof(buf));
        buf[cases[i].off] = cases[i].val;
        if (cases[i].off == 11) {
            memset(buf + 8, 0, 4);
        }
        if (cases[i].off == 2 || cases[i].off == 3) {
            buf[2] = buf[3] = 0;
        }
        FerryWireMultifd out;
        FerryError *err = NULL;
        assert_false(ferry__wire_mfd_decode(buf, sizeof(buf), &out, &err));
        assert_msg_contains(err, cases[i].msg);
        ferry_error_free(err);
    }
    /* 256 channels and 257 pages per packet are past the bounds. */
    memcpy(buf, good, sizeof(buf));
    ferry__put_be16(buf + 2, 256);
    FerryWireMultifd out;
    FerryError *err = NULL;
    assert_false(ferry__wire_mfd_decode(buf, sizeof(buf), &out, &err));
    assert_msg_contains(err, "256 channels");
    ferry_error_free(err);
    err = NULL;
    memcpy(buf, good, sizeof(buf));
    ferry__put_be32(buf + 8, FERRY_WIRE_MFD_MAX_PAGES + 1);
    assert_false(ferry__wire_mfd_decode(buf, sizeof(buf), &out, &err));
    assert_msg_contains(err, "257 pages per packet");
    ferry_error_free(err);
    err = NULL;
    assert_false(ferry__wire_mfd_decode(good, sizeof(good) - 1, &out, &err));
    assert_msg_contains(err, "31 bytes");
    ferry_error_free(err);
}

static void test_hello(void **state)
{
    uint8_t session[FERRY_WIRE_MFD_SESSION_LEN], got[FERRY_WIRE_MFD_SESSION_LEN];
    memset(session, 0xab, sizeof(session));
    uint8_t h[FERRY_WIRE_MFD_HELLO_LEN], bad[FERRY_WIRE_MFD_HELLO_LEN];
    ferry__wire_mfd_hello_encode(42, session, h);
    uint16_t index;
    FerryError *err = NULL;
    assert_true(ferry__wire_mfd_hello_decode(h, &index, got, &err));
    assert_int_equal(index, 42);
    assert_memory_equal(got, session, sizeof(session));

    /* Any flipped byte is caught (by the magic or the CRC). */
    for (size_t i = 0; i < sizeof(h); i++) {
        memcpy(bad, h, sizeof(h));
        bad[i] ^= 0x10;
        err = NULL;
        assert_false(ferry__wire_mfd_hello_decode(bad, &index, got, &err));
        assert_non_null(err);
        ferry_error_free(err);
    }
    /* A main channel's stream header where a multifd channel was expected is named as such. */
    memcpy(bad, FERRY_WIRE_MAGIC, FERRY_WIRE_MAGIC_LEN);
    err = NULL;
    assert_false(ferry__wire_mfd_hello_decode(bad, &index, got, &err));
    assert_msg_contains(err, "a second main channel");
    ferry_error_free(err);
}

static void test_packet_round_trip(void **state)
{
    FerryWireMfdPacket p = { .type = FERRY_MFD_PKT_PAGES, .flags = FERRY_MFD_PKT_COMPRESSED, .block = 3,
                             .pages = 256, .extents = 5, .payload = 4096, .number = 0x123456789ull };
    uint8_t buf[FERRY_WIRE_MFD_PACKET_LEN];
    ferry__wire_mfd_packet_encode(&p, buf);
    FerryWireMfdPacket out;
    FerryError *err = NULL;
    assert_true(ferry__wire_mfd_packet_decode(buf, 4096, &out, &err));
    assert_int_equal(out.type, p.type);
    assert_int_equal(out.flags, p.flags);
    assert_int_equal(out.block, p.block);
    assert_int_equal(out.pages, p.pages);
    assert_int_equal(out.extents, p.extents);
    assert_int_equal(out.payload, p.payload);
    assert_int_equal(out.number, p.number);
    FerryWireMfdPacket s = { .type = FERRY_MFD_PKT_SYNC, .number = 7 };
    ferry__wire_mfd_packet_encode(&s, buf);
    assert_true(ferry__wire_mfd_packet_decode(buf, 4096, &out, &err));
    assert_int_equal(out.type, FERRY_MFD_PKT_SYNC);
    assert_int_equal(out.number, 7);
}

static void test_packet_bad(void **state)
{
    static const struct {
        FerryWireMfdPacket p;
        const char *msg;
    } cases[] = {
        { { .type = 9, .pages = 1, .extents = 1 }, "unknown packet type 9" },
        { { .type = FERRY_MFD_PKT_PAGES, .flags = 0x4, .pages = 1, .extents = 1 }, "unknown flags 0x04" },
        { { .type = FERRY_MFD_PKT_PAGES, .pages = 0, .extents = 1 }, "of 0 pages" },
        { { .type = FERRY_MFD_PKT_PAGES, .pages = 257, .extents = 1 }, "of 257 pages" },
        { { .type = FERRY_MFD_PKT_PAGES, .pages = 2, .extents = 3 }, "2 pages in 3 extents" },
        { { .type = FERRY_MFD_PKT_PAGES, .pages = 2, .extents = 0 }, "2 pages in 0 extents" },
        { { .type = FERRY_MFD_PKT_PAGES, .pages = 2, .extents = 1, .payload = 8193 }, "at most 8192" },
        { { .type = FERRY_MFD_PKT_PAGES, .flags = FERRY_MFD_PKT_COMPRESSED, .pages = 1, .extents = 1,
            .payload = 0x7fffffff }, "of payload" },
        { { .type = FERRY_MFD_PKT_SYNC, .pages = 1 }, "SYNC packet with a body" },
    };
    for (size_t i = 0; i < FERRY_ARRAY_SIZE(cases); i++) {
        uint8_t buf[FERRY_WIRE_MFD_PACKET_LEN];
        ferry__wire_mfd_packet_encode(&cases[i].p, buf);
        FerryWireMfdPacket out;
        FerryError *err = NULL;
        assert_false(ferry__wire_mfd_packet_decode(buf, 4096, &out, &err));
        assert_msg_contains(err, cases[i].msg);
        ferry_error_free(err);
    }
    uint8_t buf[FERRY_WIRE_MFD_PACKET_LEN];
    ferry__wire_mfd_packet_encode(&cases[0].p, buf);
    buf[0] ^= 1;
    FerryWireMfdPacket out;
    FerryError *err = NULL;
    assert_false(ferry__wire_mfd_packet_decode(buf, 4096, &out, &err));
    assert_msg_contains(err, "bad packet magic");
    ferry_error_free(err);
}

static void test_extents(void **state)
{
    FerryWireMfdExtent in[3] = { { 0, 10 }, { 20, 1 }, { 90, 10 } }, out[3];
    uint8_t buf[3 * FERRY_WIRE_MFD_EXTENT_LEN];
    for (int i = 0; i < 3; i++) {
        ferry__wire_mfd_extent_encode(&in[i], buf + i * FERRY_WIRE_MFD_EXTENT_LEN);
    }
    FerryError *err = NULL;
    assert_true(ferry__wire_mfd_extents_decode(buf, 3, 21, 100, out, &err));
    for (int i = 0; i < 3; i++) {
        assert_int_equal(out[i].first, in[i].first);
        assert_int_equal(out[i].count, in[i].count);
    }
    /* The block ends at page 100: extent 2 may not reach past it, nor a count add up to another total. */
    assert_false(ferry__wire_mfd_extents_decode(buf, 3, 21, 99, out, &err));
    assert_msg_contains(err, "extent 2 (pages 90+10)");
    ferry_error_free(err);
    err = NULL;
    assert_false(ferry__wire_mfd_extents_decode(buf, 3, 22, 100, out, &err));
    assert_msg_contains(err, "extents of 21 pages in a packet of 22 pages");
    ferry_error_free(err);
    err = NULL;
    FerryWireMfdExtent huge = { UINT64_MAX - 1, 4 };
    ferry__wire_mfd_extent_encode(&huge, buf);
    assert_false(ferry__wire_mfd_extents_decode(buf, 1, 4, 100, out, &err));
    assert_msg_contains(err, "outside the block");
    ferry_error_free(err);
    err = NULL;
    FerryWireMfdExtent empty = { 1, 0 };
    ferry__wire_mfd_extent_encode(&empty, buf);
    assert_false(ferry__wire_mfd_extents_decode(buf, 1, 0, 100, out, &err));
    assert_msg_contains(err, "is empty");
    ferry_error_free(err);
}

/* The preempt channel's hello: the multifd hello's layout under its own magic, index 0. */
static void test_preempt_hello(void **state)
{
    uint8_t session[FERRY_WIRE_MFD_SESSION_LEN], got[FERRY_WIRE_MFD_SESSION_LEN];
    for (int i = 0; i < FERRY_WIRE_MFD_SESSION_LEN; i++) {
        session[i] = (uint8_t)(i * 13 + 5);
    }
    uint8_t h[FERRY_WIRE_MFD_HELLO_LEN], bad[FERRY_WIRE_MFD_HELLO_LEN];
    ferry__wire_preempt_hello_encode(session, h);
    assert_memory_equal(h, "FERRYPCP", 8);
    assert_int_equal(ferry__get_be16(h + 8), FERRY_WIRE_MFD_VERSION);
    assert_int_equal(ferry__get_be16(h + 10), 0);
    assert_int_equal(ferry__get_be32(h + 32), ferry__crc32c_sw(0, h, 32));
    FerryError *err = NULL;
    assert_true(ferry__wire_preempt_hello_decode(h, got, &err));
    assert_memory_equal(got, session, sizeof(session));

    /* Any flipped bit is caught, by the magic or by the CRC. */
    for (size_t i = 0; i < sizeof(h) * 8; i++) {
        memcpy(bad, h, sizeof(h));
        bad[i / 8] ^= (uint8_t)(1u << (i % 8));
        assert_false(ferry__wire_preempt_hello_decode(bad, got, &err));
        assert_msg_contains(err, i < 64 ? "not a postcopy preempt channel" : "damaged: CRC mismatch");
        ferry_error_free(err);
        err = NULL;
    }
    /* A multifd channel's hello, a main channel's stream header: not a preempt channel. */
    ferry__wire_mfd_hello_encode(0, session, bad);
    assert_false(ferry__wire_preempt_hello_decode(bad, got, &err));
    assert_msg_contains(err, "does not start with \"FERRYPCP\"");
    ferry_error_free(err);
    err = NULL;
    memcpy(bad, h, sizeof(h));
    memcpy(bad, FERRY_WIRE_MAGIC, FERRY_WIRE_MAGIC_LEN);
    assert_false(ferry__wire_preempt_hello_decode(bad, got, &err));
    assert_msg_contains(err, "not a postcopy preempt channel");
    ferry_error_free(err);
    err = NULL;

    /* Behind a good CRC: an unknown flag or reserved bit, another version, an index other than 0. */
    struct {
        size_t off;
        uint8_t val;
        const char *needle;
    } cases[] = {
        { 15, 0x01, "unknown flags 0x00000001" },
        { 12, 0x80, "unknown flags 0x80000000" },
        { 9, 0x02, "of version 2" },
        { 11, 0x01, "index 1, expected 0" },
        { 10, 0x01, "index 256, expected 0" },
    };
    for (size_t i = 0; i < FERRY_ARRAY_SIZE(cases); i++) {
        memcpy(bad, h, sizeof(h));
        bad[cases[i].off] = cases[i].val;
        ferry__put_be32(bad + 32, ferry__crc32c(0, bad, 32));
        assert_false(ferry__wire_preempt_hello_decode(bad, got, &err));
        assert_msg_contains(err, cases[i].needle);
        ferry_error_free(err);
        err = NULL;
    }
    /* A multifd hello does not take the preempt channel's magic either. */
    uint16_t index;
    assert_false(ferry__wire_mfd_hello_decode(h, &index, got, &err));
    assert_msg_contains(err, "not a multifd channel");
    ferry_error_free(err);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_record_round_trip), cmocka_unit_test(test_record_bad),
        cmocka_unit_test(test_hello),             cmocka_unit_test(test_packet_round_trip),
        cmocka_unit_test(test_packet_bad),        cmocka_unit_test(test_extents),
        cmocka_unit_test(test_preempt_hello),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
