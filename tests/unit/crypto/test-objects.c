/*
 * Unit tests of the object registry and the TLS credential objects (src/crypto/object.c, tlscreds.c): object-add's
 * checks (type, id, properties, their types and enum values), the command-line spec forms (keyval and JSON) and
 * their conversion, every file a credentials directory must or may hold (x509 and PSK, for both endpoints) and the
 * error that names it, the lookup by id with its endpoint check, and reference counting (an object in use cannot
 * be deleted).
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
#include "tls-test-helpers.h"

typedef struct Fixture {
    TestCa ca;
    char *dir;   /* CA, server and client certificates */
} Fixture;

static int setup(void **state)
{
    Fixture *f = ferry__xcalloc(1, sizeof(*f));
    f->dir = tls_test_x509_dir(&f->ca, "one", "client.example.com");
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    Fixture *f = *state;
    ferry__objects_clear();
    tls_test_ca_free(&f->ca);
    tls_test_rmdir(f->dir);
    free(f);
    return 0;
}

/* object-add with props given as JSON text; returns the error (or NULL on success). */
static FerryError *add(const char *type, const char *id, const char *props_json)
{
    json_t *props = props_json ? json_loads(props_json, 0, NULL) : NULL;
    if (props_json) {
        assert_non_null(props);
    }
    FerryError *err = NULL;
    bool ok = ferry_object_add(type, id, props, &err);
    assert_true(ok == (err == NULL));
    json_decref(props);
    return err;
}

static void expect_error(FerryError *err, const char *needle)
{
    assert_msg_contains(err, needle);
    ferry_error_free(err);
}

static char *props_dir(const char *dir, const char *extra)
{
    return ferry__xasprintf("{\"dir\": \"%s\"%s%s}", dir, extra ? ", " : "", extra ? extra : "");
}

static void test_x509_both_endpoints(void **state)
{
    Fixture *f = *state;
    char *server = props_dir(f->dir, "\"endpoint\": \"server\"");
    char *client = props_dir(f->dir, NULL);
    assert_null(add("tls-creds-x509", "srv", server));
    assert_null(add("tls-creds-x509", "cli", client));
    FerryError *err = NULL;
    FerryTlsCreds *c = ferry__tls_creds_get("srv", FERRY_TLS_ENDPOINT_SERVER, &err);
    assert_non_null(c);
    assert_string_equal(ferry__tls_creds_id(c), "srv");
    assert_string_equal(ferry__tls_creds_dir(c), f->dir);
    assert_false(ferry__tls_creds_is_psk(c));
    assert_true(ferry__tls_creds_verify_peer(c));
    ferry__tls_creds_unref(c);
    /* The endpoint is part of the check, with QEMU's text and the id. */
    assert_null(ferry__tls_creds_get("srv", FERRY_TLS_ENDPOINT_CLIENT, &err));
    expect_error(err, "Expected TLS credentials for a client endpoint, but 'srv' is for a server endpoint");
    err = NULL;
    assert_null(ferry__tls_creds_get("nope", FERRY_TLS_ENDPOINT_CLIENT, &err));
    expect_error(err, "No TLS credentials with id 'nope'");
    free(server);
    free(client);
}

static void test_registry_errors(void **state)
{
    Fixture *f = *state;
    char *client = props_dir(f->dir, NULL);
    expect_error(add("no-such-type", "x", NULL), "Parameter 'qom-type' does not accept value 'no-such-type'");
    expect_error(add("tls-creds-x509", "1abc", client), "Parameter 'id' expects an identifier");
    expect_error(add("tls-creds-x509", "a b", client), "Parameter 'id' expects an identifier");
    expect_error(add("tls-creds-x509", "", client), "Parameter 'id' expects an identifier");
    assert_null(add("tls-creds-x509", "tls0", client));
    expect_error(add("tls-creds-x509", "tls0", client), "an object with id 'tls0' already exists");
    /* Another type under an id that is taken, and a lookup of the wrong kind. */
    expect_error(add("authz-simple", "tls0", "{\"identity\": \"x\"}"), "already exists");
    assert_null(add("authz-simple", "az", "{\"identity\": \"x\"}"));
    FerryError *err = NULL;
    assert_null(ferry__tls_creds_get("az", FERRY_TLS_ENDPOINT_CLIENT, &err));
    expect_error(err, "Object 'az' is not TLS credentials (it is an authz-simple)");
    err = NULL;
    assert_false(ferry_object_del("missing", &err));
    expect_error(err, "object 'missing' not found");
    free(client);
}

static void test_property_errors(void **state)
{
    Fixture *f = *state;
    expect_error(add("tls-creds-x509", "t", NULL), "tls-creds-x509 't': Parameter 'dir' is missing");
    expect_error(add("tls-creds-x509", "t", "{\"dir\": 5}"), "Invalid parameter type for 'dir', expected: string");
    char *p = props_dir(f->dir, "\"verify-peer\": \"no\"");
    expect_error(add("tls-creds-x509", "t", p), "Invalid parameter type for 'verify-peer', expected: boolean");
    free(p);
    p = props_dir(f->dir, "\"endpoint\": \"both\"");
    expect_error(add("tls-creds-x509", "t", p), "Parameter 'endpoint' does not accept value 'both'");
    free(p);
    p = props_dir(f->dir, "\"colour\": \"blue\"");
    expect_error(add("tls-creds-x509", "t", p), "Parameter 'colour' is unexpected");
    free(p);
    p = props_dir(f->dir, "\"passwordid\": \"sec0\"");
    expect_error(add("tls-creds-x509", "t", p), "Parameter 'passwordid' is not supported by ferry");
    free(p);
    p = props_dir(f->dir, "\"priority\": \"NORMAL:+NOTHING-REAL\"");
    expect_error(add("tls-creds-x509", "t", p), "priority 'NORMAL:+NOTHING-REAL' is not valid");
    free(p);
    expect_error(add("tls-creds-x509", "t", "[]"), "properties must be a JSON object");
}

static void test_x509_files(void **state)
{
    Fixture *f = *state;
    expect_error(add("tls-creds-x509", "t", "{\"dir\": \"/nonexistent/tls\"}"),
                 "dir '/nonexistent/tls': No such file or directory");
    expect_error(add("tls-creds-x509", "t", "{\"dir\": \"/etc/hostname\"}"), "is not a directory");

    /* An empty directory: the CA is missing, named with its path. */
    char *empty = tls_test_mkdir();
    char *p = props_dir(empty, NULL);
    char *want = ferry__xasprintf("%s/ca-cert.pem is missing", empty);
    expect_error(add("tls-creds-x509", "t", p), want);
    free(want);
    free(p);

    /* A CA only: a client may go without a certificate, a server may not. */
    tls_test_write_ca(&f->ca, empty);
    p = props_dir(empty, NULL);
    assert_null(add("tls-creds-x509", "anon", p));
    free(p);
    p = props_dir(empty, "\"endpoint\": \"server\"");
    want = ferry__xasprintf("%s/server-cert.pem is missing (a server endpoint needs its certificate and key)",
                            empty);
    expect_error(add("tls-creds-x509", "t", p), want);
    free(want);
    free(p);

    /* A certificate without its key. */
    tls_test_leaf(&f->ca, empty, "client", "c", 7);
    char *key = ferry__xasprintf("%s/client-key.pem", empty);
    unlink(key);
    p = props_dir(empty, NULL);
    want = ferry__xasprintf("%s is missing (", key);
    expect_error(add("tls-creds-x509", "t", p), want);
    free(want);
    free(key);
    free(p);

    /* A CA file that is not PEM. */
    tls_test_write_file(empty, "ca-cert.pem", "not a certificate\n");
    p = props_dir(empty, NULL);
    expect_error(add("tls-creds-x509", "t", p), "ca-cert.pem: ");
    free(p);
    tls_test_rmdir(empty);
}

static void test_x509_sanity_check(void **state)
{
    Fixture *f = *state;
    /* This end's certificate was signed by another CA than the one it trusts. */
    TestCa other;
    char *dir = tls_test_mkdir();
    tls_test_ca(&other, "two");
    tls_test_write_ca(&other, dir);
    tls_test_leaf(&f->ca, dir, "server", "localhost", 9);
    char *p = props_dir(dir, "\"endpoint\": \"server\"");
    expect_error(add("tls-creds-x509", "t", p), "server-cert.pem is not signed by a trusted CA");
    free(p);
    p = props_dir(dir, "\"endpoint\": \"server\", \"sanity-check\": false");
    assert_null(add("tls-creds-x509", "t", p));
    free(p);
    /* A key that does not belong to the certificate. */
    tls_test_leaf(&other, dir, "client", "a", 10);
    char *cert = ferry__xasprintf("%s/client-cert.pem", dir), *skey = ferry__xasprintf("%s/server-key.pem", dir),
         *ckey = ferry__xasprintf("%s/client-key.pem", dir);
    assert_int_equal(rename(skey, ckey), 0);
    p = props_dir(dir, NULL);
    expect_error(add("tls-creds-x509", "u", p), "client-cert.pem with");
    free(p);
    free(cert);
    free(skey);
    free(ckey);
    tls_test_ca_free(&other);
    tls_test_rmdir(dir);
}

static void test_psk(void **state)
{
    char *dir = tls_test_mkdir();
    char *p = props_dir(dir, NULL);
    char *want = ferry__xasprintf("%s/keys.psk is missing", dir);
    expect_error(add("tls-creds-psk", "p", p), want);
    free(want);

    tls_test_write_file(dir, "keys.psk", "qemu:00112233445566778899aabbccddeeff\nalice:0a0b0c0d\n\n");
    assert_null(add("tls-creds-psk", "p", p));
    free(p);
    p = props_dir(dir, "\"username\": \"alice\"");
    assert_null(add("tls-creds-psk", "alice", p));
    free(p);
    p = props_dir(dir, "\"username\": \"bob\"");
    expect_error(add("tls-creds-psk", "bob", p), "has no key for username 'bob'");
    free(p);
    p = props_dir(dir, "\"endpoint\": \"server\"");
    assert_null(add("tls-creds-psk", "ps", p));
    free(p);
    p = props_dir(dir, "\"endpoint\": \"server\", \"username\": \"qemu\"");
    expect_error(add("tls-creds-psk", "ps2", p), "username is for a client endpoint");
    free(p);
    FerryError *err = NULL;
    FerryTlsCreds *c = ferry__tls_creds_get("ps", FERRY_TLS_ENDPOINT_SERVER, &err);
    assert_non_null(c);
    assert_true(ferry__tls_creds_is_psk(c));
    ferry__tls_creds_unref(c);

    tls_test_write_file(dir, "keys.psk", "qemu:0011\n");
    p = props_dir(dir, NULL);
    expect_error(add("tls-creds-psk", "q", p), "keys.psk line 1: a key of 2 bytes is too short");
    free(p);
    tls_test_write_file(dir, "keys.psk", "qemu:00112233\nbroken line\n");
    p = props_dir(dir, NULL);
    expect_error(add("tls-creds-psk", "q", p), "keys.psk line 2: expected USERNAME:HEXKEY");
    tls_test_write_file(dir, "keys.psk", "qemu:xyz\n");
    expect_error(add("tls-creds-psk", "q", p), "keys.psk line 1");
    tls_test_write_file(dir, "keys.psk", "\n");
    expect_error(add("tls-creds-psk", "q", p), "keys.psk holds no key");
    free(p);
    tls_test_rmdir(dir);
}

static void test_in_use(void **state)
{
    Fixture *f = *state;
    char *p = props_dir(f->dir, NULL);
    assert_null(add("tls-creds-x509", "tls0", p));
    FerryError *err = NULL;
    FerryTlsCreds *c = ferry__tls_creds_get("tls0", FERRY_TLS_ENDPOINT_CLIENT, &err);
    assert_non_null(c);
    assert_false(ferry_object_del("tls0", &err));
    expect_error(err, "object 'tls0' is in use, can not be deleted");
    ferry__tls_creds_unref(c);
    err = NULL;
    assert_true(ferry_object_del("tls0", &err));
    assert_null(ferry__tls_creds_get("tls0", FERRY_TLS_ENDPOINT_CLIENT, &err));
    expect_error(err, "No TLS credentials with id 'tls0'");
    /* A reference outlives the object's deletion from the registry (ferry__objects_clear removes everything). */
    assert_null(add("tls-creds-x509", "tls1", p));
    err = NULL;
    c = ferry__tls_creds_get("tls1", FERRY_TLS_ENDPOINT_CLIENT, &err);
    assert_non_null(c);
    ferry__objects_clear();
    assert_string_equal(ferry__tls_creds_id(c), "tls1");
    ferry__tls_creds_unref(c);
    free(p);
}

static void test_spec_forms(void **state)
{
    Fixture *f = *state;
    bool known;
    json_t *args = NULL;
    FerryError *err = NULL;
    char *spec = ferry__xasprintf("tls-creds-x509,id=t0,dir=%s,endpoint=server,verify-peer=off", f->dir);
    assert_true(ferry__object_spec_parse(spec, &known, &args, &err));
    assert_true(known);
    assert_string_equal(json_string_value(json_object_get(args, "qom-type")), "tls-creds-x509");
    assert_true(json_is_false(json_object_get(args, "verify-peer")));
    json_decref(args);
    assert_true(ferry_object_add_str(spec, &err));
    FerryTlsCreds *c = ferry__tls_creds_get("t0", FERRY_TLS_ENDPOINT_SERVER, &err);
    assert_non_null(c);
    assert_false(ferry__tls_creds_verify_peer(c));
    ferry__tls_creds_unref(c);
    free(spec);

    /* Booleans as QEMU's keyval spells them, and a bad one. */
    spec = ferry__xasprintf("tls-creds-x509,id=t1,dir=%s,verify-peer=yes,sanity-check=true", f->dir);
    assert_true(ferry_object_add_str(spec, &err));
    free(spec);
    spec = ferry__xasprintf("tls-creds-x509,id=t2,dir=%s,verify-peer=maybe", f->dir);
    assert_false(ferry_object_add_str(spec, &err));
    expect_error(err, "Parameter 'verify-peer' expects 'on' or 'off'");
    free(spec);

    /* JSON, and the commas of a distinguished name doubled in keyval. */
    err = NULL;
    assert_true(ferry_object_add_str("{\"qom-type\": \"authz-simple\", \"id\": \"a0\", \"identity\": \"CN=x,O=y\"}",
                                     &err));
    assert_true(ferry_object_add_str("authz-simple,id=a1,identity=CN=x,,O=y", &err));
    FerryAuthz *a = ferry__authz_get("a1", &err);
    assert_non_null(a);
    assert_true(ferry__authz_check(a, "CN=x,O=y", NULL));
    ferry__authz_unref(a);

    /* Types that are not ours are left alone; missing or mistyped members are errors. */
    assert_true(ferry__object_spec_parse("memory-backend-memfd,id=m,size=1G", &known, &args, &err));
    assert_false(known);
    assert_true(ferry__object_spec_parse("{\"qom-type\": \"memory-backend-file\", \"id\": \"m\"}", &known, &args,
                                         &err));
    assert_false(known);
    assert_false(ferry__object_spec_parse("authz-simple,identity=x", &known, &args, &err));
    expect_error(err, "Parameter 'id' is missing");
    err = NULL;
    assert_false(ferry__object_spec_parse("{\"id\": \"x\"}", &known, &args, &err));
    expect_error(err, "Parameter 'qom-type' is missing");
    err = NULL;
    assert_false(ferry__object_spec_parse("{nope", &known, &args, &err));
    expect_error(err, "not a JSON object");
    err = NULL;
    assert_false(ferry__object_spec_parse("{\"qom-type\": \"authz-simple\", \"id\": \"a\", \"id\": \"b\"}", &known,
                                          &args, &err));
    expect_error(err, "duplicate object key near '\"id\"'");
    err = NULL;
    assert_false(ferry__object_spec_parse("authz-simple,id=x,bad key=1", &known, &args, &err));
    assert_non_null(err);
    ferry_error_free(err);
    err = NULL;
    assert_false(ferry_object_add_str("memory-backend-memfd,id=m,size=1G", &err));
    expect_error(err, "unknown object type");
    assert_true(ferry_object_type_known("tls-creds-psk"));
    assert_false(ferry_object_type_known("memory-backend-memfd"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_x509_both_endpoints, setup, teardown),
        cmocka_unit_test_setup_teardown(test_registry_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_property_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_x509_files, setup, teardown),
        cmocka_unit_test_setup_teardown(test_x509_sanity_check, setup, teardown),
        cmocka_unit_test_setup_teardown(test_psk, setup, teardown),
        cmocka_unit_test_setup_teardown(test_in_use, setup, teardown),
        cmocka_unit_test_setup_teardown(test_spec_forms, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
