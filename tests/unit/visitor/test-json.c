/*
 * Unit tests of the JSON visitor and of ferry__section_data_to_json: both give the same JSON for the same device
 * state, u64 above INT64_MAX is a decimal string, bytes are hex and invalid UTF-8 becomes U+FFFD. Also the dealloc
 * visitor (ASan's leak check sees a string it failed to free).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "test-common.h"

typedef struct Elem {
    uint16_t k;
    char *label;
} Elem;

typedef struct State {
    uint8_t u8;
    uint32_t u32;
    uint64_t small, big;
    int64_t neg;
    bool flag;
    uint8_t raw[3];
    char *text;
    uint32_t n;
    Elem elems[3];
    uint32_t nl;
    uint32_t nothing[1];
} State;

static bool visit_state(FerryVisitor *v, void *opaque, FerryError **errp)
{
    State *s = opaque;
    if (!ferry_visit_u8(v, "u8", &s->u8, errp) || !ferry_visit_u32(v, "u32", &s->u32, errp) ||
        !ferry_visit_u64(v, "small", &s->small, errp) || !ferry_visit_u64(v, "big", &s->big, errp) ||
        !ferry_visit_i64(v, "neg", &s->neg, errp) || !ferry_visit_bool(v, "flag", &s->flag, errp) ||
        !ferry_visit_bytes(v, "raw", s->raw, 3, errp) || !ferry_visit_str(v, "text", &s->text, errp) ||
        !ferry_visit_start_struct(v, "nested", errp) || !ferry_visit_start_list(v, "elems", &s->n, 3, errp)) {
        return false;
    }
    for (uint32_t i = 0; i < s->n; i++) {
        if (!ferry_visit_start_struct(v, "elem", errp) || !ferry_visit_u16(v, "k", &s->elems[i].k, errp) ||
            !ferry_visit_str(v, "label", &s->elems[i].label, errp) || !ferry_visit_end_struct(v, errp)) {
            return false;
        }
    }
    if (!ferry_visit_end_list(v, errp) || !ferry_visit_end_struct(v, errp) ||
        !ferry_visit_start_list(v, "none", &s->nl, 1, errp)) {
        return false;
    }
    for (uint32_t i = 0; i < s->nl; i++) {
        if (!ferry_visit_u32(v, "x", &s->nothing[i], errp)) {
            return false;
        }
    }
    return ferry_visit_end_list(v, errp);
}

static State sample(void)
{
    State s = { .u8 = 200, .u32 = 4000000000u, .small = 12, .big = 0x8000000000000001ull, .neg = -5,
                .flag = true, .raw = { 0x00, 0xab, 0xff }, .text = "ok \xff\xc3\xa9", .n = 2,
                .elems = { { 1, "one" }, { 2, NULL } }, .nl = 0 };
    return s;
}

static void test_json_visitor(void **state)
{
    State st = sample();
    FerryVisitor *v = ferry_visitor_json_new();
    json_t *empty = ferry_visitor_json_result(v);
    assert_true(json_is_object(empty) && json_object_size(empty) == 0);
    json_decref(empty);
    FerryError *err = NULL;
    assert_true(visit_state(v, &st, &err));
    json_t *j = ferry_visitor_json_result(v);
    ferry_visitor_free(v);
    json_t *want = json_loads("{\"u8\": 200, \"u32\": 4000000000, \"small\": 12, \"big\": \"9223372036854775809\","
                              " \"neg\": -5, \"flag\": true, \"raw\": \"00abff\", \"text\": \"ok \\ufffd\\u00e9\","
                              " \"nested\": {\"elems\": [{\"k\": 1, \"label\": \"one\"}, {\"k\": 2, \"label\": \"\"}]},"
                              " \"none\": []}",
                              0, NULL);
    assert_non_null(want);
    if (!json_equal(j, want)) {
        char *got = json_dumps(j, 0);
        print_error("got %s\n", got);
        free(got);
        fail();
    }
    json_decref(want);
    json_decref(j);
}

static void test_decode_matches_visitor(void **state)
{
    State st = sample();
    FerrySchema *s;
    uint8_t *data;
    size_t len;
    save(visit_state, &st, &s, &data, &len);
    FerryError *err = NULL;
    json_t *decoded = ferry__section_data_to_json("test", s, data, len, &err);
    assert_non_null(decoded);
    FerryVisitor *v = ferry_visitor_json_new();
    assert_true(visit_state(v, &st, &err));
    json_t *visited = ferry_visitor_json_result(v);
    ferry_visitor_free(v);
    assert_true(json_equal(decoded, visited));
    /* Same key order too, as both follow the visit order. */
    char *a = json_dumps(decoded, 0), *b = json_dumps(visited, 0);
    assert_string_equal(a, b);
    free(a);
    free(b);
    json_decref(decoded);
    json_decref(visited);
    ferry__schema_free(s);
    free(data);
}

static void test_dealloc_after_load(void **state)
{
    State in = sample();
    FerrySchema *s;
    uint8_t *data;
    size_t len;
    save(visit_state, &in, &s, &data, &len);
    State out = { 0 };
    FerryError *err = NULL;
    assert_true(load(visit_state, &out, s, data, len, NULL, &err));
    assert_string_equal(out.elems[0].label, "one");
    assert_string_equal(out.elems[1].label, "");
    assert_memory_equal(out.text, "ok \xff\xc3\xa9", 6);
    FerryVisitor *v = ferry_visitor_dealloc_new();
    assert_true(visit_state(v, &out, &err));
    ferry_visitor_free(v);
    assert_null(out.text);
    assert_null(out.elems[0].label);
    assert_null(out.elems[1].label);
    assert_int_equal(out.n, 2); /* counts are left alone */
    ferry__schema_free(s);
    free(data);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_json_visitor),
        cmocka_unit_test(test_decode_matches_visitor),
        cmocka_unit_test(test_dealloc_after_load),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
