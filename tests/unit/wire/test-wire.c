/* Unit tests of src/wire: byte order, the stream header, record headers and the bounds-checked reader. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "wire/wire.h"

static void test_byte_order(void **state)
{
    uint8_t b[8];
    ferry__put_be16(b, 0x1234);
    assert_int_equal(b[0], 0x12);
    assert_int_equal(b[1], 0x34);
    assert_int_equal(ferry__get_be16(b), 0x1234);
    ferry__put_be32(b, 0xdeadbeef);
    assert_memory_equal(b, "\xde\xad\xbe\xef", 4);
    assert_int_equal(ferry__get_be32(b), 0xdeadbeef);
    ferry__put_be64(b, 0x0102030405060708ull);
    assert_memory_equal(b, "\x01\x02\x03\x04\x05\x06\x07\x08", 8);
    assert_true(ferry__get_be64(b) == 0x0102030405060708ull);
}

static void test_stream_header(void **state)
{
    uint8_t h[FERRY_WIRE_HEADER_LEN];
    FerryError *err = NULL;
    ferry__wire_encode_header(h);
    assert_memory_equal(h, "FERRYMIG", 8);
    assert_true(ferry__wire_decode_header(h, &err));

    h[0] = 'X';
    assert_false(ferry__wire_decode_header(h, &err));
    assert_non_null(strstr(ferry_error_msg(err), "bad magic"));
    ferry_error_free(err);
    err = NULL;

    ferry__wire_encode_header(h);
    ferry__put_be32(h + 8, 99);
    assert_false(ferry__wire_decode_header(h, &err));
    assert_non_null(strstr(ferry_error_msg(err), "unsupported stream version 99"));
    ferry_error_free(err);
    err = NULL;

    ferry__wire_encode_header(h);
    ferry__put_be32(h + 12, 1);
    assert_false(ferry__wire_decode_header(h, &err));
    assert_non_null(strstr(ferry_error_msg(err), "flags"));
    ferry_error_free(err);
}

static void test_record_header(void **state)
{
    uint8_t b[FERRY_WIRE_RECORD_HEADER_LEN];
    FerryRecordHeader in = { .type = FERRY_REC_RAM_PAGES, .flags = FERRY_REC_CRITICAL, .length = 0x10203 }, out;
    ferry__wire_encode_record(b, &in);
    assert_memory_equal(b, "\x00\x02\x80\x00\x00\x01\x02\x03", 8);
    ferry__wire_decode_record(b, &out);
    assert_int_equal(out.type, in.type);
    assert_int_equal(out.flags, in.flags);
    assert_int_equal(out.length, in.length);
    assert_string_equal(ferry__wire_record_name(FERRY_REC_END), "END");
    assert_string_equal(ferry__wire_record_name(0x7777), "unknown");
}

static void test_reader_bounds(void **state)
{
    const uint8_t buf[] = { 3, 'a', 'b', 'c', 0, 0, 0, 7, 1 };
    FerryWireReader r;
    char name[256];
    ferry__wire_reader_init(&r, buf, sizeof(buf));
    assert_true(ferry__wire_get_name(&r, name));
    assert_string_equal(name, "abc");
    assert_int_equal(ferry__wire_get_be32(&r), 7);
    assert_false(r.failed);
    /* One byte left: a be32 must fail and latch, and later reads keep failing. */
    assert_int_equal(ferry__wire_get_be32(&r), 0);
    assert_true(r.failed);
    assert_int_equal(ferry__wire_get_u8(&r), 0);
    assert_null(ferry__wire_get_bytes(&r, 0));

    /* A name whose length runs past the end. */
    const uint8_t bad[] = { 10, 'x' };
    ferry__wire_reader_init(&r, bad, sizeof(bad));
    assert_false(ferry__wire_get_name(&r, name));
    /* A name with an embedded NUL is refused. */
    const uint8_t nul[] = { 3, 'a', 0, 'b' };
    ferry__wire_reader_init(&r, nul, sizeof(nul));
    assert_false(ferry__wire_get_name(&r, name));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_byte_order),
        cmocka_unit_test(test_stream_header),
        cmocka_unit_test(test_record_header),
        cmocka_unit_test(test_reader_bounds),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
