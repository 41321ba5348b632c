/*
 * Unit tests of the binary output and input visitors: every type round-trips through the self-describing
 * encoding, fields are found by name whatever their order, unknown skippable fields are skipped and counted, missing
 * fields take defaults, integers convert when they fit, and bad data is refused before device code runs.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "test-common.h"
#include "wire/wire.h"

#define NP FERRY_SCHEMA_NO_PARENT

typedef struct Worker {
    uint32_t id;
    uint64_t cursor;
    bool has_tag;
    char *tag;
} Worker;

typedef struct Dev {
    uint8_t a;
    uint16_t b;
    uint32_t c;
    uint64_t d;
    int64_t e;
    bool f;
    uint8_t mac[6];
    char *name;
    struct {
        uint32_t x;
        char *s;
    } inner;
    uint32_t nworkers;
    Worker workers[4];
    uint32_t nempty;
    uint32_t empty[2];
    uint32_t nnums;
    uint64_t nums[3];
} Dev;

static bool visit_worker(FerryVisitor *v, Worker *w, FerryError **errp)
{
    if (!ferry_visit_start_struct(v, "worker", errp) || !ferry_visit_u32(v, "id", &w->id, errp) ||
        !ferry_visit_u64(v, "cursor", &w->cursor, errp)) {
        return false;
    }
    ferry_visit_optional(v, "tag", &w->has_tag);
    if (w->has_tag && !ferry_visit_str(v, "tag", &w->tag, errp)) {
        return false;
    }
    return ferry_visit_end_struct(v, errp);
}

static bool visit_dev(FerryVisitor *v, void *opaque, FerryError **errp)
{
    Dev *dev = opaque;
    if (!ferry_visit_u8(v, "a", &dev->a, errp) || !ferry_visit_u16(v, "b", &dev->b, errp) ||
        !ferry_visit_u32(v, "c", &dev->c, errp) || !ferry_visit_u64(v, "d", &dev->d, errp) ||
        !ferry_visit_i64(v, "e", &dev->e, errp) || !ferry_visit_bool(v, "f", &dev->f, errp) ||
        !ferry_visit_bytes(v, "mac", dev->mac, 6, errp) || !ferry_visit_str(v, "name", &dev->name, errp) ||
        !ferry_visit_start_struct(v, "inner", errp) || !ferry_visit_u32(v, "x", &dev->inner.x, errp) ||
        !ferry_visit_str(v, "s", &dev->inner.s, errp) || !ferry_visit_end_struct(v, errp) ||
        !ferry_visit_start_list(v, "workers", &dev->nworkers, 4, errp)) {
        return false;
    }
    for (uint32_t i = 0; i < dev->nworkers; i++) {
        if (!visit_worker(v, &dev->workers[i], errp)) {
            return false;
        }
    }
    if (!ferry_visit_end_list(v, errp) || !ferry_visit_start_list(v, "empty", &dev->nempty, 2, errp)) {
        return false;
    }
    for (uint32_t i = 0; i < dev->nempty; i++) {
        if (!ferry_visit_u32(v, "e", &dev->empty[i], errp)) {
            return false;
        }
    }
    if (!ferry_visit_end_list(v, errp) || !ferry_visit_start_list(v, "nums", &dev->nnums, 3, errp)) {
        return false;
    }
    for (uint32_t i = 0; i < dev->nnums; i++) {
        if (!ferry_visit_u64(v, "n", &dev->nums[i], errp)) {
            return false;
        }
    }
    return ferry_visit_end_list(v, errp);
}

/* The device state in a struct "dev", so that every cut of its encoding is invalid. */
static bool visit_wrapped(FerryVisitor *v, void *opaque, FerryError **errp)
{
    return ferry_visit_start_struct(v, "dev", errp) && visit_dev(v, opaque, errp) &&
           ferry_visit_end_struct(v, errp);
}

static Dev sample(void)
{
    Dev d = { .a = 0xab, .b = 0xbeef, .c = 0xdeadbeef, .d = 0xfedcba9876543210ull, .e = -42, .f = true,
              .mac = { 1, 2, 3, 4, 5, 6 }, .name = "eth0", .inner = { 7, "inner" }, .nworkers = 2,
              .workers = { { 1, 100, true, "first" }, { 2, 200, false, NULL } }, .nempty = 0, .nnums = 3,
              .nums = { 1, UINT64_MAX, 0 } };
    return d;
}

static void free_dev(Dev *d)
{
    FerryVisitor *v = ferry_visitor_dealloc_new();
    assert_int_equal(ferry_visitor_kind(v), FERRY_VISITOR_DEALLOC);
    assert_true(visit_dev(v, d, NULL));
    ferry_visitor_free(v);
    assert_null(d->name);
    assert_null(d->inner.s);
    for (uint32_t i = 0; i < d->nworkers; i++) {
        assert_null(d->workers[i].tag);
    }
}

static void test_round_trip(void **state)
{
    Dev in = sample();
    FerrySchema *s;
    uint8_t *data;
    size_t len;
    save(visit_dev, &in, &s, &data, &len);
    Dev out = { 0 };
    out.name = strdup("old"); /* replaced (and freed) by the load */
    FerryError *err = NULL;
    uint64_t skipped = 99;
    assert_true(load(visit_dev, &out, s, data, len, &skipped, &err));
    assert_int_equal(skipped, 0);
    assert_int_equal(out.a, in.a);
    assert_int_equal(out.b, in.b);
    assert_int_equal(out.c, in.c);
    assert_true(out.d == in.d);
    assert_true(out.e == -42);
    assert_true(out.f);
    assert_memory_equal(out.mac, in.mac, 6);
    assert_string_equal(out.name, "eth0");
    assert_int_equal(out.inner.x, 7);
    assert_string_equal(out.inner.s, "inner");
    assert_int_equal(out.nworkers, 2);
    assert_int_equal(out.workers[0].id, 1);
    assert_true(out.workers[0].cursor == 100);
    assert_true(out.workers[0].has_tag);
    assert_string_equal(out.workers[0].tag, "first");
    assert_int_equal(out.workers[1].id, 2);
    assert_true(out.workers[1].cursor == 200);
    assert_false(out.workers[1].has_tag);
    assert_null(out.workers[1].tag);
    assert_int_equal(out.nempty, 0);
    assert_int_equal(out.nnums, 3);
    assert_true(out.nums[1] == UINT64_MAX);
    /* The list element descriptors: the schema holds one per list with elements, none for the empty list. */
    size_t tag = SIZE_MAX, empty = SIZE_MAX;
    for (size_t i = 0; i < s->n; i++) {
        if (strcmp(s->fields[i].name, "tag") == 0) {
            tag = i;
        }
        if (strcmp(s->fields[i].name, "empty") == 0) {
            empty = i;
        }
    }
    assert_true(tag != SIZE_MAX && (s->fields[tag].flags & FERRY_SCHEMA_OPTIONAL));
    assert_true(empty != SIZE_MAX);
    for (size_t i = 0; i < s->n; i++) {
        assert_true(s->fields[i].parent != empty);
    }
    free_dev(&out);
    ferry__schema_free(s);
    free(data);
}

/* A small known encoding, byte for byte. */
static bool visit_small(FerryVisitor *v, void *opaque, FerryError **errp)
{
    uint16_t *x = opaque;
    uint32_t n = 2;
    uint8_t e[2] = { 5, 6 };
    ferry_visit_attrs(v, FERRY_FIELD_SKIPPABLE);
    return ferry_visit_u16(v, "x", x, errp) && ferry_visit_start_list(v, "l", &n, 2, errp) &&
           ferry_visit_u8(v, "e", &e[0], errp) && ferry_visit_u8(v, "e", &e[1], errp) &&
           ferry_visit_end_list(v, errp);
}

static void test_exact_bytes(void **state)
{
    uint16_t x = 0x1234;
    FerrySchema *s;
    uint8_t *data;
    size_t len;
    save(visit_small, &x, &s, &data, &len);
    static const uint8_t want[] = { 0, 0, 0x12, 0x34,             /* x */
                                    0, 1, 0, 0, 0, 6, 0, 0, 0, 2, /* l: length 6, count 2 */
                                    5, 6 };
    assert_int_equal(len, sizeof(want));
    assert_memory_equal(data, want, sizeof(want));
    assert_int_equal(s->n, 3);
    assert_int_equal(s->fields[0].flags, FERRY_SCHEMA_SKIPPABLE);
    assert_int_equal(s->fields[1].flags, 0); /* attrs apply to one field only */
    assert_int_equal(s->fields[2].parent, 1);
    assert_int_equal(s->fields[2].type, FERRY_FT_U8);
    ferry__schema_free(s);
    free(data);
}

typedef struct AB {
    uint32_t a;
    char *b;
} AB;

static bool visit_ab(FerryVisitor *v, void *opaque, FerryError **errp)
{
    AB *ab = opaque;
    return ferry_visit_u32(v, "a", &ab->a, errp) && ferry_visit_str(v, "b", &ab->b, errp);
}

static void test_order_independent(void **state)
{
    const Desc d[] = { { NP, FERRY_FT_U32, 0, "a" }, { NP, FERRY_FT_STR, 0, "b" } };
    FerrySchema *s = schema_make(d, 2);
    /* b before a. */
    static const uint8_t data[] = { 0, 1, 0, 0, 0, 2, 'h', 'i', 0, 0, 0, 0, 0, 9 };
    AB ab = { 0 };
    FerryError *err = NULL;
    assert_true(load(visit_ab, &ab, s, data, sizeof(data), NULL, &err));
    assert_int_equal(ab.a, 9);
    assert_string_equal(ab.b, "hi");
    free(ab.b);
    ferry__schema_free(s);
}

/* The source of a newer version: one more field in "inner", skippable or not. */
static bool newer_skippable;

static bool visit_newer(FerryVisitor *v, void *opaque, FerryError **errp)
{
    AB *ab = opaque;
    uint64_t extra = 77;
    if (!ferry_visit_start_struct(v, "inner", errp) || !ferry_visit_u32(v, "a", &ab->a, errp)) {
        return false;
    }
    ferry_visit_attrs(v, newer_skippable ? FERRY_FIELD_SKIPPABLE : 0);
    return ferry_visit_u64(v, "extra", &extra, errp) && ferry_visit_str(v, "b", &ab->b, errp) &&
           ferry_visit_end_struct(v, errp);
}

static bool visit_older(FerryVisitor *v, void *opaque, FerryError **errp)
{
    AB *ab = opaque;
    return ferry_visit_start_struct(v, "inner", errp) && ferry_visit_u32(v, "a", &ab->a, errp) &&
           ferry_visit_str(v, "b", &ab->b, errp) && ferry_visit_end_struct(v, errp);
}

static void test_unknown_field(void **state)
{
    for (int skippable = 1; skippable >= 0; skippable--) {
        newer_skippable = skippable;
        AB in = { 5, "five" }, out = { 0 };
        FerrySchema *s;
        uint8_t *data;
        size_t len;
        save(visit_newer, &in, &s, &data, &len);
        FerryError *err = NULL;
        uint64_t skipped = 0;
        bool ok = load(visit_older, &out, s, data, len, &skipped, &err);
        if (skippable) {
            assert_true(ok);
            assert_int_equal(skipped, 2 + 8);
            assert_int_equal(out.a, 5);
            assert_string_equal(out.b, "five");
        } else {
            assert_false(ok);
            assert_msg_contains(err, "field 'inner.extra' (u64) is not known to this program and the source did "
                                     "not mark it skippable");
            ferry_error_free(err);
        }
        free(out.b);
        ferry__schema_free(s);
        free(data);
    }
}

static bool default_attr;

static bool visit_with_c(FerryVisitor *v, void *opaque, FerryError **errp)
{
    AB *ab = opaque;
    uint32_t c = 1234;
    if (!ferry_visit_start_struct(v, "s", errp) || !visit_ab(v, ab, errp)) {
        return false;
    }
    ferry_visit_attrs(v, default_attr ? FERRY_FIELD_DEFAULT : 0);
    if (!ferry_visit_u32(v, "c", &c, errp)) {
        return false;
    }
    assert_int_equal(c, 1234); /* the default stays */
    /* A missing struct and list taken with DEFAULT leave everything inside alone. */
    uint32_t n = 3, e = 8;
    ferry_visit_attrs(v, FERRY_FIELD_DEFAULT);
    if (!ferry_visit_start_list(v, "gone", &n, 5, errp) || !ferry_visit_u32(v, "e", &e, errp) ||
        !ferry_visit_end_list(v, errp)) {
        return false;
    }
    assert_int_equal(n, 3);
    assert_int_equal(e, 8);
    return ferry_visit_end_struct(v, errp);
}

static bool visit_s_ab(FerryVisitor *v, void *opaque, FerryError **errp)
{
    return ferry_visit_start_struct(v, "s", errp) && visit_ab(v, opaque, errp) && ferry_visit_end_struct(v, errp);
}

static void test_missing_field(void **state)
{
    AB in = { 1, "x" };
    FerrySchema *s;
    uint8_t *data;
    size_t len;
    save(visit_s_ab, &in, &s, &data, &len);
    for (int def = 1; def >= 0; def--) {
        default_attr = def;
        AB out = { 0 };
        FerryError *err = NULL;
        bool ok = load(visit_with_c, &out, s, data, len, NULL, &err);
        if (def) {
            assert_true(ok);
            assert_int_equal(out.a, 1);
        } else {
            assert_false(ok);
            assert_msg_contains(err, "field 's.c' is missing from the stream and has no default");
            ferry_error_free(err);
        }
        free(out.b);
    }
    ferry__schema_free(s);
    free(data);
}

/* One integer field "v" of a chosen type, saved and loaded with possibly different types. */
typedef struct IntCase {
    uint8_t type;
    uint64_t u;
    int64_t i;
} IntCase;

static bool visit_int(FerryVisitor *v, void *opaque, FerryError **errp)
{
    IntCase *c = opaque;
    uint8_t u8 = (uint8_t)c->u;
    uint16_t u16 = (uint16_t)c->u;
    uint32_t u32 = (uint32_t)c->u;
    bool ok;
    switch (c->type) {
    case FERRY_FT_U8:
        ok = ferry_visit_u8(v, "v", &u8, errp);
        c->u = u8;
        break;
    case FERRY_FT_U16:
        ok = ferry_visit_u16(v, "v", &u16, errp);
        c->u = u16;
        break;
    case FERRY_FT_U32:
        ok = ferry_visit_u32(v, "v", &u32, errp);
        c->u = u32;
        break;
    case FERRY_FT_U64:
        ok = ferry_visit_u64(v, "v", &c->u, errp);
        break;
    case FERRY_FT_I64:
        ok = ferry_visit_i64(v, "v", &c->i, errp);
        break;
    case FERRY_FT_BOOL: {
        bool b = c->u != 0;
        ok = ferry_visit_bool(v, "v", &b, errp);
        break;
    }
    default: {
        char *str = NULL;
        ok = ferry_visit_str(v, "v", &str, errp);
        free(str);
        break;
    }
    }
    return ok;
}

/* Save @from, load as @to_type: NULL @needle means success with the value @want. */
static void int_case(IntCase from, uint8_t to_type, uint64_t want, const char *needle)
{
    FerrySchema *s;
    uint8_t *data;
    size_t len;
    save(visit_int, &from, &s, &data, &len);
    IntCase to = { .type = to_type };
    FerryError *err = NULL;
    bool ok = load(visit_int, &to, s, data, len, NULL, &err);
    if (needle) {
        assert_false(ok);
        assert_msg_contains(err, needle);
        ferry_error_free(err);
    } else {
        if (!ok) {
            print_error("%s\n", ferry_error_msg(err));
        }
        assert_true(ok);
        assert_true((to_type == FERRY_FT_I64 ? (uint64_t)to.i : to.u) == want);
    }
    ferry__schema_free(s);
    free(data);
}

static void test_integer_conversion(void **state)
{
    int_case((IntCase){ FERRY_FT_U16, 5, 0 }, FERRY_FT_U64, 5, NULL);         /* widened */
    int_case((IntCase){ FERRY_FT_U32, 70000, 0 }, FERRY_FT_U64, 70000, NULL);
    int_case((IntCase){ FERRY_FT_U64, 200, 0 }, FERRY_FT_U8, 200, NULL);      /* narrowed, fits */
    int_case((IntCase){ FERRY_FT_U32, 70000, 0 }, FERRY_FT_U16, 0, "field 'v': value 70000 in the stream does not fit u16");
    int_case((IntCase){ FERRY_FT_U8, 9, 0 }, FERRY_FT_I64, 9, NULL);
    int_case((IntCase){ FERRY_FT_I64, 0, 300 }, FERRY_FT_U16, 300, NULL);
    int_case((IntCase){ FERRY_FT_I64, 0, -1 }, FERRY_FT_U32, 0, "value -1 in the stream does not fit u32");
    int_case((IntCase){ FERRY_FT_U64, UINT64_MAX, 0 }, FERRY_FT_I64, 0,
             "value 18446744073709551615 in the stream does not fit i64");
    int_case((IntCase){ FERRY_FT_I64, 0, INT64_MIN }, FERRY_FT_I64, (uint64_t)INT64_MIN, NULL);
}

static void test_type_mismatch(void **state)
{
    int_case((IntCase){ 0xff /* str */, 0, 0 }, FERRY_FT_U64, 0, "field 'v' is str in the stream, this program reads u64");
    int_case((IntCase){ FERRY_FT_U8, 1, 0 }, FERRY_FT_BOOL, 0, "field 'v' is u8 in the stream, this program reads bool");
    int_case((IntCase){ FERRY_FT_BOOL, 1, 0 }, FERRY_FT_U32, 0, "field 'v' is bool in the stream, this program reads u32");
}

static bool visit_twice(FerryVisitor *v, void *opaque, FerryError **errp)
{
    uint32_t a = 1;
    return ferry_visit_start_struct(v, "s", errp) && ferry_visit_u32(v, "a", &a, errp) &&
           ferry_visit_u32(v, "a", &a, errp);
}

static bool visit_mixed_list(FerryVisitor *v, void *opaque, FerryError **errp)
{
    uint32_t n = 2;
    uint64_t x = 1;
    return ferry_visit_start_list(v, "x", &n, 2, errp) && ferry_visit_start_struct(v, "el", errp) &&
           ferry_visit_end_struct(v, errp) && ferry_visit_u64(v, "el", &x, errp);
}

static bool visit_bad_name(FerryVisitor *v, void *opaque, FerryError **errp)
{
    uint32_t a = 1;
    return ferry_visit_u32(v, opaque, &a, errp);
}

static bool visit_short_list(FerryVisitor *v, void *opaque, FerryError **errp)
{
    uint32_t n = 2, a = 0;
    return ferry_visit_start_list(v, "l", &n, 2, errp) && ferry_visit_u32(v, "a", &a, errp) &&
           ferry_visit_end_list(v, errp);
}

static void expect_save_error(VisitFn fn, void *opaque, const char *needle)
{
    FerryVisitor *v = ferry__visitor_output_new();
    FerryError *err = NULL;
    assert_false(fn(v, opaque, &err));
    assert_msg_contains(err, needle);
    ferry_error_free(err);
    ferry_visitor_free(v);
}

static void test_output_errors(void **state)
{
    expect_save_error(visit_twice, NULL, "field 'a' visited twice in one struct");
    expect_save_error(visit_mixed_list, NULL, "list 'x': element of type u64 after elements of type struct");
    expect_save_error(visit_bad_name, "has space", "invalid field name 'has space'");
    expect_save_error(visit_bad_name, "", "invalid field name ''");
    expect_save_error(visit_short_list, NULL, "list 'l': 2 element(s) announced, 1 visited");
    /* Unbalanced: finish refuses. */
    FerryVisitor *v = ferry__visitor_output_new();
    FerryError *err = NULL;
    assert_true(ferry_visit_start_struct(v, "open", &err));
    FerrySchema *s = NULL;
    uint8_t *data = NULL;
    size_t len;
    assert_false(ferry__visitor_output_finish(v, &s, &data, &len, &err));
    assert_msg_contains(err, "left open (innermost 'open')");
    ferry_error_free(err);
    err = NULL;
    assert_false(ferry_visit_end_list(v, &err));
    assert_msg_contains(err, "end of a list without a matching start");
    ferry_error_free(err);
    ferry_visitor_free(v);
    ferry_visitor_free(NULL);
}

static void test_list_over_max(void **state)
{
    Dev in = sample();
    in.nworkers = 4;
    in.workers[2] = in.workers[3] = in.workers[1];
    FerrySchema *s;
    uint8_t *data;
    size_t len;
    save(visit_dev, &in, &s, &data, &len);
    /* A reader that accepts at most 2 workers. */
    FerryVisitor *v = ferry__visitor_input_new("test", s, data, len, NULL);
    assert_non_null(v);
    uint32_t n;
    FerryError *err = NULL;
    assert_false(ferry_visit_start_list(v, "workers", &n, 2, &err));
    assert_msg_contains(err, "list 'workers' has 4 elements in the stream, this program accepts at most 2");
    ferry_error_free(err);
    ferry_visitor_free(v);
    ferry__schema_free(s);
    free(data);
}

static void expect_data_error(const FerrySchema *s, const uint8_t *data, size_t len, const char *needle)
{
    FerryError *err = NULL;
    assert_null(ferry__visitor_input_new("test", s, data, len, &err));
    assert_msg_contains(err, needle);
    ferry_error_free(err);
    err = NULL;
    assert_null(ferry__section_data_to_json("test", s, data, len, &err));
    assert_msg_contains(err, needle);
    ferry_error_free(err);
}

static void test_bad_data(void **state)
{
    const Desc d[] = { { NP, FERRY_FT_U32, 0, "a" },  { NP, FERRY_FT_BOOL, 0, "f" }, { NP, FERRY_FT_LIST, 0, "l" },
                       { 2, FERRY_FT_STRUCT, 0, "el" }, { 3, FERRY_FT_STR, 0, "s" }, { NP, FERRY_FT_LIST, 0, "nl" } };
    FerrySchema *s = schema_make(d, FERRY_ARRAY_SIZE(d));
    static const uint8_t dup[] = { 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 2 };
    expect_data_error(s, dup, sizeof(dup), "field 'a' occurs twice in one struct");
    static const uint8_t badbool[] = { 0, 1, 2 };
    expect_data_error(s, badbool, sizeof(badbool), "field 'f' (bool) at offset 2 is a bool that is neither 0 nor 1");
    static const uint8_t badid[] = { 0, 9, 0 };
    expect_data_error(s, badid, sizeof(badid), "field id 9 at offset 0 is not a field of the top level");
    static const uint8_t childtop[] = { 0, 4, 0, 0, 0, 0 };
    expect_data_error(s, childtop, sizeof(childtop), "field id 4 at offset 0 is not a field of the top level");
    /* l with count 2 but one element: {s: "x"}. */
    static const uint8_t count[] = { 0, 2, 0, 0, 0, 15, 0, 0, 0, 2, 0, 0, 0, 7, 0, 4, 0, 0, 0, 1, 'x' };
    expect_data_error(s, count, sizeof(count), "field 'l' (list) at offset 2 is a list with fewer elements than its count");
    /* Inside the element struct, a field of the top level. */
    static const uint8_t wrongparent[] = { 0, 2, 0, 0, 0, 14, 0, 0, 0, 1, 0, 0, 0, 6, 0, 0, 0, 0, 0, 1 };
    expect_data_error(s, wrongparent, sizeof(wrongparent), "field id 0 at offset 14 is not a field of 'l[]'");
    static const uint8_t nul[] = { 0, 2, 0, 0, 0, 15, 0, 0, 0, 1, 0, 0, 0, 7, 0, 4, 0, 0, 0, 1, 0 };
    expect_data_error(s, nul, sizeof(nul), "field 'l[].s' (str) at offset 16 is a string with a NUL byte");
    /* A list with elements but no element descriptor. */
    static const uint8_t noelem[] = { 0, 5, 0, 0, 0, 5, 0, 0, 0, 1, 7 };
    expect_data_error(s, noelem, sizeof(noelem), "is a list with elements but no element descriptor");
    static const uint8_t trailing[] = { 0, 5, 0, 0, 0, 5, 0, 0, 0, 0, 7 };
    expect_data_error(s, trailing, sizeof(trailing), "is a list with bytes after its last element");
    static const uint8_t huge[] = { 0, 2, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 1 };
    expect_data_error(s, huge, sizeof(huge), "has a length that runs past its enclosing extent");
    ferry__schema_free(s);
}

static void test_truncation_everywhere(void **state)
{
    Dev in = sample();
    FerrySchema *s;
    uint8_t *data;
    size_t len;
    save(visit_wrapped, &in, &s, &data, &len);
    for (size_t cut = 1; cut < len; cut++) {
        /* A copy of exactly @cut bytes, so that ASan sees any read past the end. */
        uint8_t *copy = malloc(cut);
        memcpy(copy, data, cut);
        FerryError *err = NULL;
        assert_null(ferry__visitor_input_new("test", s, copy, cut, &err));
        assert_non_null(err);
        ferry_error_free(err);
        err = NULL;
        assert_null(ferry__section_data_to_json("test", s, copy, cut, &err));
        assert_non_null(err);
        ferry_error_free(err);
        free(copy);
    }
    /* Every single-byte corruption: refused, or accepted and then loadable or refused cleanly, never a bad read. */
    for (size_t i = 0; i < len; i++) {
        for (unsigned bit = 0; bit < 8; bit += 3) {
            uint8_t *copy = malloc(len);
            memcpy(copy, data, len);
            copy[i] ^= (uint8_t)(1u << bit);
            FerryError *err = NULL, *jerr = NULL;
            json_t *j = ferry__section_data_to_json("test", s, copy, len, &jerr);
            Dev out = { 0 };
            bool ok = load(visit_wrapped, &out, s, copy, len, NULL, &err);
            assert_true(ok || err != NULL);
            assert_true((j != NULL) != (jerr != NULL));
            ferry_error_free(err);
            ferry_error_free(jerr);
            json_decref(j);
            free_dev(&out);
            free(copy);
        }
    }
    ferry__schema_free(s);
    free(data);
}

/* A field of a type this version does not know (64): opaque, length-prefixed. */
static bool visit_just_a(FerryVisitor *v, void *opaque, FerryError **errp)
{
    return ferry_visit_u32(v, "a", opaque, errp);
}

static void test_unknown_type(void **state)
{
    for (int skippable = 1; skippable >= 0; skippable--) {
        const Desc d[] = { { NP, 64, skippable ? FERRY_SCHEMA_SKIPPABLE : 0, "future" }, { NP, FERRY_FT_U32, 0, "a" } };
        FerrySchema *s = schema_make(d, 2);
        static const uint8_t data[] = { 0, 0, 0, 0, 0, 3, 0xaa, 0xbb, 0xcc, 0, 1, 0, 0, 0, 42 };
        uint32_t a = 0;
        uint64_t skipped = 0;
        FerryError *err = NULL;
        bool ok = load(visit_just_a, &a, s, data, sizeof(data), &skipped, &err);
        if (skippable) {
            assert_true(ok);
            assert_int_equal(a, 42);
            assert_int_equal(skipped, 2 + 4 + 3);
        } else {
            assert_false(ok);
            assert_msg_contains(err, "field 'future' (type-64) is not known to this program");
            ferry_error_free(err);
        }
        json_t *j = ferry__section_data_to_json("test", s, data, sizeof(data), NULL);
        json_t *want = json_pack("{s:{s:s, s:s}, s:i}", "future", "type", "type-64", "hex", "aabbcc", "a", 42);
        assert_true(json_equal(j, want));
        json_decref(j);
        json_decref(want);
        /* Visiting it as a known type is a mismatch. */
        err = NULL;
        FerryVisitor *v = ferry__visitor_input_new("test", s, data, sizeof(data), &err);
        assert_non_null(v);
        uint64_t x;
        assert_false(ferry_visit_u64(v, "future", &x, &err));
        assert_msg_contains(err, "field 'future' is type-64 in the stream, this program reads u64");
        ferry_error_free(err);
        ferry_visitor_free(v);
        ferry__schema_free(s);
    }
}

static void test_bytes_length(void **state)
{
    const Desc d[] = { { NP, FERRY_FT_BYTES, 0, "mac" } };
    FerrySchema *s = schema_make(d, 1);
    static const uint8_t data[] = { 0, 0, 0, 0, 0, 2, 1, 2 };
    FerryVisitor *v = ferry__visitor_input_new("test", s, data, sizeof(data), NULL);
    assert_non_null(v);
    uint8_t mac[6];
    FerryError *err = NULL;
    assert_false(ferry_visit_bytes(v, "mac", mac, 6, &err));
    assert_msg_contains(err, "field 'mac': the stream has 2 bytes, this program reads 6");
    ferry_error_free(err);
    ferry_visitor_free(v);
    ferry__schema_free(s);
}

static void test_list_paths(void **state)
{
    /* A device that reads worker cursors as u8: the error names the element by its index. */
    Dev in = sample();
    in.workers[1].cursor = 300;
    FerrySchema *s;
    uint8_t *data;
    size_t len;
    save(visit_dev, &in, &s, &data, &len);
    FerryVisitor *v = ferry__visitor_input_new("test", s, data, len, NULL);
    assert_non_null(v);
    uint32_t n, id;
    uint8_t cur;
    FerryError *err = NULL;
    assert_true(ferry_visit_start_list(v, "workers", &n, 4, &err));
    assert_int_equal(n, 2);
    for (uint32_t i = 0; i < n && !err; i++) {
        if (ferry_visit_start_struct(v, "w", &err) && ferry_visit_u32(v, "id", &id, &err) &&
            ferry_visit_u8(v, "cursor", &cur, &err)) {
            bool present;
            ferry_visit_optional(v, "tag", &present);
            assert_true(present == (i == 0));
            if (present) {
                char *tag = NULL;
                assert_true(ferry_visit_str(v, "tag", &tag, &err));
                free(tag);
            }
            assert_true(ferry_visit_end_struct(v, &err));
        }
    }
    assert_msg_contains(err, "field 'workers[1].cursor': value 300 in the stream does not fit u8");
    ferry_error_free(err);
    /* The visitor can still be freed with its frames open. */
    ferry_visitor_free(v);
    ferry__schema_free(s);
    free(data);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),         cmocka_unit_test(test_exact_bytes),
        cmocka_unit_test(test_order_independent),  cmocka_unit_test(test_unknown_field),
        cmocka_unit_test(test_missing_field),      cmocka_unit_test(test_integer_conversion),
        cmocka_unit_test(test_type_mismatch),      cmocka_unit_test(test_output_errors),
        cmocka_unit_test(test_list_over_max),      cmocka_unit_test(test_bad_data),
        cmocka_unit_test(test_truncation_everywhere), cmocka_unit_test(test_unknown_type),
        cmocka_unit_test(test_bytes_length),       cmocka_unit_test(test_list_paths),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
