/* Unit tests of the section schema: its wire form round-trips, every malformed schema is refused with an error
 * naming what is wrong, and its JSON form. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "test-common.h"
#include "wire/wire.h"

#define NP FERRY_SCHEMA_NO_PARENT

static const Desc good[] = {
    { NP, FERRY_FT_U32, 0, "a" },
    { NP, FERRY_FT_STRUCT, FERRY_SCHEMA_SKIPPABLE, "s" },
    { 1, FERRY_FT_STR, FERRY_SCHEMA_DEFAULT, "name" },
    { 1, FERRY_FT_LIST, FERRY_SCHEMA_OPTIONAL, "l" },
    { 3, FERRY_FT_STRUCT, 0, "el" },
    { 4, FERRY_FT_U64, 0, "a" }, /* same name as a top-level field, other parent: fine */
    { NP, 200, 0, "future" },
    { NP, FERRY_FT_LIST, 0, "empty" },
};

static uint8_t *encode(const Desc *d, size_t n, size_t *len)
{
    FerrySchema *s = schema_make(d, n);
    *len = ferry__schema_encoded_len(s);
    uint8_t *buf = malloc(*len);
    ferry__schema_encode(s, buf);
    ferry__schema_free(s);
    return buf;
}

static void test_round_trip(void **state)
{
    size_t len;
    uint8_t *buf = encode(good, FERRY_ARRAY_SIZE(good), &len);
    assert_int_equal(ferry__get_be16(buf), FERRY_ARRAY_SIZE(good));
    /* The first descriptor: parent ffff, type 3, flags 0, name "a". */
    static const uint8_t first[] = { 0xff, 0xff, 3, 0, 1, 'a' };
    assert_memory_equal(buf + 2, first, sizeof(first));
    FerryError *err = NULL;
    FerrySchema *s = ferry__schema_decode(buf, len, &err);
    assert_non_null(s);
    assert_int_equal(s->n, FERRY_ARRAY_SIZE(good));
    for (size_t i = 0; i < s->n; i++) {
        assert_int_equal(s->fields[i].parent, good[i].parent);
        assert_int_equal(s->fields[i].type, good[i].type);
        assert_int_equal(s->fields[i].flags, good[i].flags);
        assert_string_equal(s->fields[i].name, good[i].name);
    }
    ferry__schema_free(s);
    free(buf);
    ferry__schema_free(NULL);
}

/* Decode @d and expect an error containing @needle. */
static void expect_bad(const Desc *d, size_t n, const char *needle)
{
    size_t len;
    uint8_t *buf = encode(d, n, &len);
    FerryError *err = NULL;
    assert_null(ferry__schema_decode(buf, len, &err));
    assert_msg_contains(err, needle);
    ferry_error_free(err);
    free(buf);
}

static void test_bad_structure(void **state)
{
    const Desc parent_after[] = { { 1, FERRY_FT_U8, 0, "a" }, { NP, FERRY_FT_STRUCT, 0, "s" } };
    expect_bad(parent_after, 2, "descriptor 0 ('a') has parent 1, which does not come before it");
    const Desc self_parent[] = { { 0, FERRY_FT_STRUCT, 0, "s" } };
    expect_bad(self_parent, 1, "does not come before it");
    const Desc wrong_parent[] = { { NP, FERRY_FT_U32, 0, "n" }, { 0, FERRY_FT_U8, 0, "a" } };
    expect_bad(wrong_parent, 2, "parent 0 of type u32, not struct or list");
    const Desc two_children[] = { { NP, FERRY_FT_LIST, 0, "l" }, { 0, FERRY_FT_U8, 0, "a" },
                                  { 0, FERRY_FT_U8, 0, "b" } };
    expect_bad(two_children, 3, "descriptor 2 ('b') is a second element descriptor of list 0");
    const Desc dup_top[] = { { NP, FERRY_FT_U8, 0, "a" }, { NP, FERRY_FT_U16, 0, "a" } };
    expect_bad(dup_top, 2, "descriptors 0 and 1 have the same parent and name 'a'");
    const Desc dup_inner[] = { { NP, FERRY_FT_STRUCT, 0, "s" }, { 0, FERRY_FT_U8, 0, "x" },
                               { 0, FERRY_FT_U8, 0, "y" }, { 0, FERRY_FT_U8, 0, "x" } };
    expect_bad(dup_inner, 4, "descriptors 1 and 3 have the same parent and name 'x'");
    const Desc bad_type[] = { { NP, 11, 0, "a" } };
    expect_bad(bad_type, 1, "descriptor 0 ('a') has invalid type 11");
    const Desc type0[] = { { NP, 0, 0, "a" } };
    expect_bad(type0, 1, "invalid type 0");
    const Desc type63[] = { { NP, 63, 0, "a" } };
    expect_bad(type63, 1, "invalid type 63");
    const Desc space[] = { { NP, FERRY_FT_U8, 0, "a b" } };
    expect_bad(space, 1, "descriptor 0 has an invalid name 'a b'");
    const Desc empty[] = { { NP, FERRY_FT_U8, 0, "" } };
    expect_bad(empty, 1, "invalid name ''");
    const Desc high[] = { { NP, FERRY_FT_U8, 0, "caf\xc3\xa9" } };
    expect_bad(high, 1, "invalid name");
}

static void test_too_deep(void **state)
{
    Desc d[FERRY_SCHEMA_MAX_DEPTH + 2];
    for (size_t i = 0; i < FERRY_ARRAY_SIZE(d); i++) {
        d[i] = (Desc){ i == 0 ? NP : (uint16_t)(i - 1), FERRY_FT_STRUCT, 0, "s" };
    }
    d[FERRY_ARRAY_SIZE(d) - 1].type = FERRY_FT_U8;
    /* MAX_DEPTH nested structs and a field inside: accepted. */
    size_t len;
    uint8_t *buf = encode(d, FERRY_ARRAY_SIZE(d) - 1, &len);
    FerryError *err = NULL;
    FerrySchema *s = ferry__schema_decode(buf, len, &err);
    assert_non_null(s);
    ferry__schema_free(s);
    free(buf);
    /* One more level: refused. */
    expect_bad(d, FERRY_ARRAY_SIZE(d), "nested more than 32 deep");
}

static void test_truncated(void **state)
{
    size_t len;
    uint8_t *buf = encode(good, FERRY_ARRAY_SIZE(good), &len);
    for (size_t cut = 0; cut < len; cut++) {
        FerryError *err = NULL;
        uint8_t *copy = malloc(cut ? cut : 1);
        memcpy(copy, buf, cut);
        assert_null(ferry__schema_decode(copy, cut, &err));
        assert_non_null(err);
        ferry_error_free(err);
        free(copy);
    }
    /* And a byte too many. */
    uint8_t *longer = malloc(len + 1);
    memcpy(longer, buf, len);
    longer[len] = 0;
    FerryError *err = NULL;
    assert_null(ferry__schema_decode(longer, len + 1, &err));
    assert_msg_contains(err, "1 byte(s) after the last descriptor");
    ferry_error_free(err);
    free(longer);
    free(buf);
}

static void test_too_many(void **state)
{
    uint8_t buf[2];
    ferry__put_be16(buf, FERRY_SCHEMA_MAX_FIELDS + 1);
    FerryError *err = NULL;
    assert_null(ferry__schema_decode(buf, sizeof(buf), &err));
    assert_msg_contains(err, "4097 descriptors, at most 4096");
    ferry_error_free(err);
}

static void test_empty_and_unknown_flags(void **state)
{
    uint8_t buf[2] = { 0, 0 };
    FerryError *err = NULL;
    FerrySchema *s = ferry__schema_decode(buf, 2, &err);
    assert_non_null(s);
    assert_int_equal(s->n, 0);
    ferry__schema_free(s);
    /* Flag bits this version does not know are hints: accepted and kept. */
    const Desc d[] = { { NP, FERRY_FT_U8, 0xf0, "a" } };
    size_t len;
    uint8_t *enc = encode(d, 1, &len);
    s = ferry__schema_decode(enc, len, &err);
    assert_non_null(s);
    assert_int_equal(s->fields[0].flags, 0xf0);
    ferry__schema_free(s);
    free(enc);
}

static void test_json(void **state)
{
    FerrySchema *s = schema_make(good, FERRY_ARRAY_SIZE(good));
    json_t *j = ferry__section_schema_json("dev", 3, 2, FERRY_SECTION_SKIPPABLE, s);
    json_error_t jerr;
    json_t *want = json_loads(
        "{\"name\": \"dev\", \"instance-id\": 3, \"version\": 2, \"skippable\": true, \"optional\": false,"
        " \"fields\": ["
        "  {\"name\": \"a\", \"type\": \"u32\"},"
        "  {\"name\": \"s\", \"type\": \"struct\", \"skippable\": true, \"fields\": ["
        "    {\"name\": \"name\", \"type\": \"str\", \"default\": true},"
        "    {\"name\": \"l\", \"type\": \"list\", \"optional\": true, \"element\":"
        "      {\"name\": \"el\", \"type\": \"struct\", \"fields\": [{\"name\": \"a\", \"type\": \"u64\"}]}}]},"
        "  {\"name\": \"future\", \"type\": \"type-200\"},"
        "  {\"name\": \"empty\", \"type\": \"list\"}]}",
        0, &jerr);
    assert_non_null(want);
    if (!json_equal(j, want)) {
        char *got = json_dumps(j, JSON_SORT_KEYS);
        print_error("got %s\n", got);
        free(got);
        fail();
    }
    json_decref(j);
    json_decref(want);
    ferry__schema_free(s);
    assert_string_equal(ferry__field_type_name(FERRY_FT_BYTES), "bytes");
    assert_string_equal(ferry__field_type_name(64), "type-64");
    assert_string_equal(ferry__field_type_name(255), "type-255");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),   cmocka_unit_test(test_bad_structure),
        cmocka_unit_test(test_too_deep),     cmocka_unit_test(test_truncated),
        cmocka_unit_test(test_too_many),     cmocka_unit_test(test_empty_and_unknown_flags),
        cmocka_unit_test(test_json),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
