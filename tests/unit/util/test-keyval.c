/*
 * Unit tests of the keyval parser (src/util/keyval.c), table driven: good inputs with the JSON they must give
 * (compared structurally with json_equal), and bad inputs with a substring of the error they must produce.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "util/util.h"

static const struct {
    const char *in;
    const char *json;
} good[] = {
    { "", "{}" },
    { "a=1", "{\"a\":\"1\"}" },
    { "a=", "{\"a\":\"\"}" },
    { "a=1,", "{\"a\":\"1\"}" },  /* a trailing comma is accepted, as QEMU does */
    { "a=1,b=2", "{\"a\":\"1\",\"b\":\"2\"}" },
    { "a=x,,y", "{\"a\":\"x,y\"}" },
    { "a=,,", "{\"a\":\",\"}" },
    { "a=,,,,", "{\"a\":\",,\"}" },
    { "a=x,,,b=y", "{\"a\":\"x,\",\"b\":\"y\"}" },
    { "a=x,,b=y", "{\"a\":\"x,b=y\"}" },
    { "a=b=c", "{\"a\":\"b=c\"}" },
    { "a=1.5.x", "{\"a\":\"1.5.x\"}" },
    { "b.c=x", "{\"b\":{\"c\":\"x\"}}" },
    { "b.c=x,b.d=y", "{\"b\":{\"c\":\"x\",\"d\":\"y\"}}" },
    { "a.b.c.d=deep", "{\"a\":{\"b\":{\"c\":{\"d\":\"deep\"}}}}" },
    { "d.0=p,d.1=q", "{\"d\":[\"p\",\"q\"]}" },
    { "d.1=q,d.0=p", "{\"d\":[\"p\",\"q\"]}" },
    { "d.0.x=1,d.0.y=2,d.1.x=3", "{\"d\":[{\"x\":\"1\",\"y\":\"2\"},{\"x\":\"3\"}]}" },
    { "m.0.0=a,m.0.1=b,m.1.0=c", "{\"m\":[[\"a\",\"b\"],[\"c\"]]}" },
    { "backend-transfer.0=virtio-net-tap", "{\"backend-transfer\":[\"virtio-net-tap\"]}" },
    { "a=1,b.c=x,d.0=p,d.1=q", "{\"a\":\"1\",\"b\":{\"c\":\"x\"},\"d\":[\"p\",\"q\"]}" },
    { "0=top", "{\"0\":\"top\"}" },  /* the top level is always an object */
    { "max_bandwidth=1G,x-y_z=on", "{\"max_bandwidth\":\"1G\",\"x-y_z\":\"on\"}" },
    { "a=caf\xc3\xa9", "{\"a\":\"caf\xc3\xa9\"}" },
};

static const struct {
    const char *in;
    const char *err;
} bad[] = {
    { ",", "empty key at offset 0" },
    { ",a=1", "empty key at offset 0" },
    { "=1", "empty key at offset 0" },
    { "a=1,=2", "empty key at offset 4" },
    { "a", "expected '=' after key 'a' at offset 0" },
    { "a=1,b", "expected '=' after key 'b' at offset 4" },
    { "a=1,b,c=2", "expected '=' after key 'b'" },
    { "a=1,a=2", "duplicate key 'a' at offset 4" },
    { "b.c=1,b.c=2", "duplicate key 'b.c'" },
    { "a.=1", "invalid key 'a.' at offset 0: empty key fragment" },
    { ".a=1", "invalid key '.a'" },
    { "a..b=1", "empty key fragment" },
    { "a=1,a.b=2", "'a' is already a value" },
    { "a.b.c=1,a.b=2", "key 'a.b' at offset 8 is both a value and an object" },
    { "a.b=1,a=2", "is both a value and an object" },
    { "a b=1", "invalid character ' ' after key 'a' at offset 1" },
    { "a:b=1", "invalid character ':'" },
    { "k\xc3\xa9=1", "invalid character 0xc3" },
    { "d.1=q", "key 'd.0' missing: list indices must be 0..0 without gaps" },
    { "d.0=p,d.2=q", "key 'd.1' missing: list indices must be 0..1" },
    { "d.0=p,d.99999999999999999999=q", "key 'd.1' missing" },
    { "d.0=p,d.x=q", "key 'd' mixes list indices and member names" },
    { "d.x=q,d.0=p", "key 'd' mixes list indices and member names" },
    { "d.00=p", "key 'd.00': list index '00' has a leading zero" },
    { "d.0=p,d.01=q", "leading zero" },
    { "a.0.1=x", "key 'a.0.0' missing" },
    { "a=\xff", "not valid UTF-8" },
};

static void test_good(void **state)
{
    for (size_t i = 0; i < FERRY_ARRAY_SIZE(good); i++) {
        FerryError *err = NULL;
        json_t *got = ferry__keyval_parse(good[i].in, &err);
        if (!got) {
            print_error("'%s' rejected: %s\n", good[i].in, ferry_error_msg(err));
            fail();
        }
        json_t *want = json_loads(good[i].json, 0, NULL);
        assert_non_null(want);
        if (!json_equal(got, want)) {
            char *dump = json_dumps(got, JSON_SORT_KEYS);
            print_error("'%s' gave %s, expected %s\n", good[i].in, dump, good[i].json);
            free(dump);
            fail();
        }
        json_decref(got);
        json_decref(want);
    }
}

static void test_bad(void **state)
{
    for (size_t i = 0; i < FERRY_ARRAY_SIZE(bad); i++) {
        FerryError *err = NULL;
        json_t *got = ferry__keyval_parse(bad[i].in, &err);
        if (got) {
            char *dump = json_dumps(got, JSON_SORT_KEYS);
            print_error("'%s' accepted as %s\n", bad[i].in, dump);
            free(dump);
            fail();
        }
        if (!strstr(ferry_error_msg(err), bad[i].err)) {
            print_error("'%s': message \"%s\" lacks \"%s\"\n", bad[i].in, ferry_error_msg(err), bad[i].err);
            fail();
        }
        ferry_error_free(err);
        /* A NULL errp is fine too. */
        assert_null(ferry__keyval_parse(bad[i].in, NULL));
    }
}

/* "a=1,," is a value ending in an escaped comma, not a trailing comma plus an empty pair. */
static void test_escape_at_end(void **state)
{
    json_t *got = ferry__keyval_parse("a=1,,", NULL);
    assert_non_null(got);
    assert_string_equal(json_string_value(json_object_get(got, "a")), "1,");
    json_decref(got);
}

/* Error messages must be valid UTF-8 (they travel in QMP replies). */
static void test_messages_are_utf8(void **state)
{
    FerryError *err = NULL;
    assert_null(ferry__keyval_parse("\xff\xfe=1", &err));
    json_t *s = json_string(ferry_error_msg(err));
    assert_non_null(s);
    json_decref(s);
    ferry_error_free(err);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_good),
        cmocka_unit_test(test_bad),
        cmocka_unit_test(test_escape_at_end),
        cmocka_unit_test(test_messages_are_utf8),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
