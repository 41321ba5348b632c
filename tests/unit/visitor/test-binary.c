/* Unit tests of the binary visitors: one visit function saves and loads every field type, and bad input is
 * refused with an error naming the field. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "ferry/error.h"
#include "visitor/visitor-int.h"

typedef struct Dev {
    uint8_t a;
    uint16_t b;
    uint32_t c;
    uint64_t d;
    int64_t e;
    bool f;
    uint8_t mac[6];
    char *name;
    uint32_t nq;
    uint32_t q[8];
} Dev;

static bool visit_dev(FerryVisitor *v, Dev *dev, FerryError **errp)
{
    if (!ferry_visit_start_struct(v, "dev", errp) || !ferry_visit_u8(v, "a", &dev->a, errp) ||
        !ferry_visit_u16(v, "b", &dev->b, errp) || !ferry_visit_u32(v, "c", &dev->c, errp) ||
        !ferry_visit_u64(v, "d", &dev->d, errp) || !ferry_visit_i64(v, "e", &dev->e, errp) ||
        !ferry_visit_bool(v, "f", &dev->f, errp) || !ferry_visit_bytes(v, "mac", dev->mac, 6, errp) ||
        !ferry_visit_str(v, "name", &dev->name, errp) ||
        !ferry_visit_start_list(v, "queues", &dev->nq, 8, errp)) {
        return false;
    }
    for (uint32_t i = 0; i < dev->nq; i++) {
        if (!ferry_visit_u32(v, "pos", &dev->q[i], errp)) {
            return false;
        }
    }
    return ferry_visit_end_list(v, errp) && ferry_visit_end_struct(v, errp);
}

static uint8_t *save(Dev *dev, size_t *len)
{
    FerryVisitor *v = ferry__visitor_output_new();
    assert_int_equal(ferry_visitor_kind(v), FERRY_VISITOR_OUTPUT);
    assert_true(visit_dev(v, dev, NULL));
    const uint8_t *p = ferry__visitor_output_data(v, len);
    uint8_t *copy = malloc(*len);
    memcpy(copy, p, *len);
    ferry__visitor_free(v);
    return copy;
}

static void test_round_trip(void **state)
{
    Dev in = { .a = 0xab, .b = 0xbeef, .c = 0xdeadbeef, .d = 0x0123456789abcdefull, .e = -42, .f = true,
               .mac = { 0x52, 0x54, 0, 1, 2, 3 }, .name = "eth0", .nq = 3, .q = { 7, 8, 9 } };
    size_t len;
    uint8_t *buf = save(&in, &len);
    /* Fixed layout: 1+2+4+8+8+1 + (4+6) + (4+4) + 4 + 3*4 */
    assert_int_equal(len, 24 + 10 + 8 + 4 + 12);

    Dev out = { .name = strdup("old") };
    FerryVisitor *v = ferry__visitor_input_new(buf, len);
    assert_int_equal(ferry_visitor_kind(v), FERRY_VISITOR_INPUT);
    assert_true(visit_dev(v, &out, NULL));
    assert_true(ferry__visitor_input_finish(v, NULL));
    ferry__visitor_free(v);
    assert_int_equal(out.a, in.a);
    assert_int_equal(out.b, in.b);
    assert_int_equal(out.c, in.c);
    assert_true(out.d == in.d);
    assert_true(out.e == in.e);
    assert_true(out.f);
    assert_memory_equal(out.mac, in.mac, 6);
    assert_string_equal(out.name, "eth0");
    assert_int_equal(out.nq, 3);
    assert_int_equal(out.q[2], 9);
    free(out.name);
    free(buf);
}

static void expect_load_error(uint8_t *buf, size_t len, const char *substr)
{
    Dev out = { 0 };
    FerryError *err = NULL;
    FerryVisitor *v = ferry__visitor_input_new(buf, len);
    bool ok = visit_dev(v, &out, &err) && ferry__visitor_input_finish(v, &err);
    ferry__visitor_free(v);
    free(out.name);
    assert_false(ok);
    assert_non_null(err);
    if (!strstr(ferry_error_msg(err), substr)) {
        fail_msg("error '%s' does not contain '%s'", ferry_error_msg(err), substr);
    }
    ferry_error_free(err);
}

static void test_bad_input(void **state)
{
    Dev in = { .name = "x", .nq = 2, .q = { 1, 2 } };
    size_t len;
    uint8_t *buf = save(&in, &len);

    /* Truncated anywhere: the error names a field. */
    for (size_t cut = 0; cut < len; cut++) {
        expect_load_error(buf, cut, "field '");
    }
    /* A bool that is neither 0 nor 1. */
    buf[23] = 2;
    expect_load_error(buf, len, "field 'f': invalid bool");
    buf[23] = 1;
    /* Wrong byte-array length. */
    buf[24 + 3] = 5;
    expect_load_error(buf, len, "field 'mac'");
    buf[24 + 3] = 6;
    /* A list longer than the device allows. */
    size_t count_off = 24 + 10 + 4 + 1;
    buf[count_off + 3] = 9;
    expect_load_error(buf, len, "list 'queues' has 9 element(s), at most 8");
    buf[count_off + 3] = 2;
    /* Trailing garbage. */
    uint8_t *longer = malloc(len + 1);
    memcpy(longer, buf, len);
    longer[len] = 0;
    expect_load_error(longer, len + 1, "unread byte");
    free(longer);
    /* A string with a NUL inside. */
    buf[24 + 10 + 3] = 1;
    buf[24 + 10 + 4] = 0;
    expect_load_error(buf, len, "NUL");
    free(buf);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_bad_input),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
