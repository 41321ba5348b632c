/*
 * Unit tests of the authorization objects (src/crypto/authz.c), table driven: authz-list rules (exact and glob,
 * first match wins, the default policy) and authz-simple against identities, with the refusal messages; and the
 * property checks of the rules list, from QMP's typed form and from the command line's keyval form.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "crypto/crypto.h"
#include "test-helpers.h"

static int teardown(void **state)
{
    ferry__objects_clear();
    return 0;
}

static FerryAuthz *make(const char *spec)
{
    FerryError *err = NULL;
    if (!ferry_object_add_str(spec, &err)) {
        print_error("%s: %s\n", spec, ferry_error_msg(err));
        fail();
    }
    size_t n = strcspn(strstr(spec, "id=") ? strstr(spec, "id=") + 3 : "", ",");
    char *id = ferry__xstrndup(strstr(spec, "id=") + 3, n);
    FerryAuthz *a = ferry__authz_get(id, &err);
    assert_non_null(a);
    assert_string_equal(ferry__authz_id(a), id);
    free(id);
    return a;
}

static const char *const DN = "C=GB,ST=London,L=London,O=Example Org,CN=laptop.example.com";

static const struct {
    const char *spec;
    const char *identity;
    const char *refusal; /* NULL: allowed */
} cases[] = {
    /* The default policy is deny; a list without rules allows nobody, or everybody with policy=allow. */
    { "authz-list,id=a", "anyone", "'anyone' is not in authz list 'a'" },
    { "authz-list,id=a,policy=allow", "anyone", NULL },
    /* Exact matches are whole-string and case-sensitive. */
    { "authz-list,id=a,rules.0.match=fred,rules.0.policy=allow", "fred", NULL },
    { "authz-list,id=a,rules.0.match=fred,rules.0.policy=allow", "Fred", "'Fred' is not in authz list 'a'" },
    { "authz-list,id=a,rules.0.match=fred,rules.0.policy=allow", "fredx", "not in authz list" },
    /* Globs: '*' matches commas and slashes too (fnmatch without flags). */
    { "authz-list,id=a,rules.0.match=*CN=laptop.example.com,rules.0.policy=allow,rules.0.format=glob", NULL, NULL },
    { "authz-list,id=a,rules.0.match=*O=Example Org*,rules.0.policy=allow,rules.0.format=glob", NULL, NULL },
    { "authz-list,id=a,rules.0.match=dan?,rules.0.policy=allow,rules.0.format=glob", "danb", NULL },
    { "authz-list,id=a,rules.0.match=dan?,rules.0.policy=allow,rules.0.format=glob", "danbb", "not in authz list" },
    /* The first rule that matches decides (QEMU's documented example). */
    { "authz-list,id=a,rules.0.match=danb,rules.0.policy=deny,rules.1.match=dan*,rules.1.policy=allow,"
      "rules.1.format=glob", "danb", "'danb' is denied by rule 0 of authz list 'a'" },
    { "authz-list,id=a,rules.0.match=danb,rules.0.policy=deny,rules.1.match=dan*,rules.1.policy=allow,"
      "rules.1.format=glob", "dana", NULL },
    { "authz-list,id=a,policy=allow,rules.0.match=eve,rules.0.policy=deny", "eve", "denied by rule 0" },
    { "authz-list,id=a,policy=allow,rules.0.match=eve,rules.0.policy=deny", "bob", NULL },
    /* A distinguished name: its commas doubled on the command line. */
    { "authz-list,id=a,rules.0.match=C=GB,,ST=London,,L=London,,O=Example Org,,CN=laptop.example.com,"
      "rules.0.policy=allow", NULL, NULL },
    { "authz-simple,id=s,identity=C=GB,,ST=London,,L=London,,O=Example Org,,CN=laptop.example.com", NULL, NULL },
    { "authz-simple,id=s,identity=CN=other", NULL, "is not the identity authz-simple 's' allows" },
};

static void test_matching(void **state)
{
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        FerryAuthz *a = make(cases[i].spec);
        const char *who = cases[i].identity ? cases[i].identity : DN;
        FerryError *err = NULL;
        bool ok = ferry__authz_check(a, who, &err);
        if (ok != (cases[i].refusal == NULL)) {
            print_error("case %zu (%s, '%s'): %s\n", i, cases[i].spec, who, ok ? "allowed" : ferry_error_msg(err));
            fail();
        }
        if (!ok) {
            assert_msg_contains(err, cases[i].refusal);
            ferry_error_free(err);
        }
        ferry__authz_unref(a);
        ferry__objects_clear();
    }
}

static const struct {
    const char *json;
    const char *error;
} bad[] = {
    { "{\"rules\": {}}", "Invalid parameter type for 'rules', expected: array" },
    { "{\"rules\": [1]}", "Invalid parameter type for 'rules[0]', expected: object" },
    { "{\"rules\": [{\"policy\": \"allow\"}]}", "Parameter 'rules[0].match' is missing" },
    { "{\"rules\": [{\"match\": \"x\"}]}", "Parameter 'rules[0].policy' is missing" },
    { "{\"rules\": [{\"match\": \"x\", \"policy\": \"maybe\"}]}",
      "Parameter 'rules[0].policy' does not accept value 'maybe'" },
    { "{\"rules\": [{\"match\": \"x\", \"policy\": \"allow\", \"format\": \"regex\"}]}",
      "Parameter 'rules[0].format' does not accept value 'regex'" },
    { "{\"rules\": [{\"match\": \"x\", \"policy\": \"allow\"}, {\"match\": 3, \"policy\": \"allow\"}]}",
      "Invalid parameter type for 'rules[1].match', expected: string" },
    { "{\"rules\": [{\"match\": \"x\", \"policy\": \"allow\", \"why\": 1}]}", "Parameter 'rules[0].why' is unexpected" },
    { "{\"policy\": \"reject\"}", "Parameter 'policy' does not accept value 'reject'" },
    { "{\"identity\": \"x\"}", "Parameter 'identity' is unexpected" },
};

static void test_bad_properties(void **state)
{
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        json_t *props = json_loads(bad[i].json, 0, NULL);
        assert_non_null(props);
        FerryError *err = NULL;
        assert_false(ferry_object_add("authz-list", "a", props, &err));
        assert_msg_contains(err, bad[i].error);
        assert_msg_contains(err, "authz-list 'a': ");
        ferry_error_free(err);
        json_decref(props);
    }
    FerryError *err = NULL;
    assert_false(ferry_object_add("authz-simple", "s", NULL, &err));
    assert_msg_contains(err, "Parameter 'identity' is missing");
    ferry_error_free(err);
    /* keyval: a rules list with a gap, and rules given as a plain value. */
    err = NULL;
    assert_false(ferry_object_add_str("authz-list,id=a,rules.1.match=x,rules.1.policy=allow", &err));
    assert_msg_contains(err, "list indices must be 0..");
    ferry_error_free(err);
    err = NULL;
    assert_false(ferry_object_add_str("authz-list,id=a,rules=x", &err));
    assert_msg_contains(err, "Invalid parameter type for 'rules', expected: array");
    ferry_error_free(err);
}

static void test_lookup(void **state)
{
    FerryError *err = NULL;
    assert_null(ferry__authz_get("none", &err));
    assert_msg_contains(err, "No authorization object with id 'none'");
    ferry_error_free(err);
    err = NULL;
    char *dir = ferry__xstrdup("/tmp/ferry-authz-XXXXXX");
    assert_non_null(mkdtemp(dir));
    char *keys = ferry__xasprintf("%s/keys.psk", dir);
    FILE *f = fopen(keys, "w");
    assert_non_null(f);
    fputs("qemu:00112233\n", f);
    fclose(f);
    char *spec = ferry__xasprintf("tls-creds-psk,id=p,dir=%s", dir);
    assert_true(ferry_object_add_str(spec, &err));
    assert_null(ferry__authz_get("p", &err));
    assert_msg_contains(err, "Object 'p' is not an authorization object (it is a tls-creds-psk)");
    ferry_error_free(err);
    unlink(keys);
    rmdir(dir);
    free(spec);
    free(keys);
    free(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_matching, teardown),
        cmocka_unit_test_teardown(test_bad_properties, teardown),
        cmocka_unit_test_teardown(test_lookup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
