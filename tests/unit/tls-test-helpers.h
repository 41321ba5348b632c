/*
 * Helpers for unit tests that need TLS credentials on disk (include after <cmocka.h>): a CA and certificates it
 * signs, made with GnuTLS's own API in a temporary directory, laid out as tls-creds-x509 expects (ca-cert.pem,
 * server-cert.pem, ...), and a keys.psk. Test-only; the integration tests make theirs with certtool instead, as
 * a user would.
 */
#ifndef FERRY_TLS_TEST_HELPERS_H
#define FERRY_TLS_TEST_HELPERS_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <gnutls/gnutls.h>
#include <gnutls/x509.h>

#include "util/util.h"

typedef struct TestCa {
    gnutls_x509_privkey_t key;
    gnutls_x509_crt_t crt;
} TestCa;

static inline void tls_test_write(const char *dir, const char *name, const gnutls_datum_t *d)
{
    char *path = ferry__xasprintf("%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(fwrite(d->data, 1, d->size, f), d->size);
    fclose(f);
    free(path);
}

static inline void tls_test_new_key(gnutls_x509_privkey_t *k)
{
    assert_int_equal(gnutls_x509_privkey_init(k), 0);
    assert_int_equal(gnutls_x509_privkey_generate(*k, GNUTLS_PK_ECDSA,
                                                  GNUTLS_CURVE_TO_BITS(GNUTLS_ECC_CURVE_SECP256R1), 0), 0);
}

static inline void tls_test_set_dn(gnutls_x509_crt_t c, const char *org, const char *cn)
{
    assert_int_equal(gnutls_x509_crt_set_dn_by_oid(c, GNUTLS_OID_X520_ORGANIZATION_NAME, 0, org, strlen(org)), 0);
    assert_int_equal(gnutls_x509_crt_set_dn_by_oid(c, GNUTLS_OID_X520_COMMON_NAME, 0, cn, strlen(cn)), 0);
}

static inline void tls_test_basics(gnutls_x509_crt_t c, gnutls_x509_privkey_t key, unsigned serial)
{
    unsigned char sn[4] = { 0, 0, (unsigned char)(serial >> 8), (unsigned char)serial };
    time_t now = time(NULL);
    assert_int_equal(gnutls_x509_crt_set_version(c, 3), 0);
    assert_int_equal(gnutls_x509_crt_set_serial(c, sn, sizeof(sn)), 0);
    assert_int_equal(gnutls_x509_crt_set_activation_time(c, now - 3600), 0);
    assert_int_equal(gnutls_x509_crt_set_expiration_time(c, now + 24 * 3600), 0);
    assert_int_equal(gnutls_x509_crt_set_key(c, key), 0);
}

/* A self-signed CA named "Test CA @name". */
static inline void tls_test_ca(TestCa *ca, const char *name)
{
    char cn[64];
    snprintf(cn, sizeof(cn), "Test CA %s", name);
    tls_test_new_key(&ca->key);
    assert_int_equal(gnutls_x509_crt_init(&ca->crt), 0);
    tls_test_basics(ca->crt, ca->key, 1);
    tls_test_set_dn(ca->crt, "Ferry Test", cn);
    assert_int_equal(gnutls_x509_crt_set_basic_constraints(ca->crt, 1, -1), 0);
    assert_int_equal(gnutls_x509_crt_set_key_usage(ca->crt, GNUTLS_KEY_KEY_CERT_SIGN | GNUTLS_KEY_CRL_SIGN), 0);
    assert_int_equal(gnutls_x509_crt_sign2(ca->crt, ca->crt, ca->key, GNUTLS_DIG_SHA256, 0), 0);
}

static inline void tls_test_ca_free(TestCa *ca)
{
    gnutls_x509_crt_deinit(ca->crt);
    gnutls_x509_privkey_deinit(ca->key);
}

/* ca-cert.pem of @ca into @dir. */
static inline void tls_test_write_ca(const TestCa *ca, const char *dir)
{
    gnutls_datum_t d;
    assert_int_equal(gnutls_x509_crt_export2(ca->crt, GNUTLS_X509_FMT_PEM, &d), 0);
    tls_test_write(dir, "ca-cert.pem", &d);
    gnutls_free(d.data);
}

/*
 * A certificate signed by @ca for @who ("server": DNS name localhost and IP 127.0.0.1, CN localhost; "client": CN
 * @cn), as @who-cert.pem and @who-key.pem in @dir.
 */
static inline void tls_test_leaf(const TestCa *ca, const char *dir, const char *who, const char *cn, unsigned serial)
{
    bool server = strcmp(who, "server") == 0;
    gnutls_x509_privkey_t key;
    gnutls_x509_crt_t c;
    tls_test_new_key(&key);
    assert_int_equal(gnutls_x509_crt_init(&c), 0);
    tls_test_basics(c, key, serial);
    tls_test_set_dn(c, "Ferry Test", cn);
    assert_int_equal(gnutls_x509_crt_set_basic_constraints(c, 0, -1), 0);
    assert_int_equal(gnutls_x509_crt_set_key_usage(c, GNUTLS_KEY_DIGITAL_SIGNATURE | GNUTLS_KEY_KEY_ENCIPHERMENT), 0);
    assert_int_equal(gnutls_x509_crt_set_key_purpose_oid(c, server ? GNUTLS_KP_TLS_WWW_SERVER
                                                                   : GNUTLS_KP_TLS_WWW_CLIENT, 0), 0);
    if (server) {
        static const unsigned char lo[4] = { 127, 0, 0, 1 };
        assert_int_equal(gnutls_x509_crt_set_subject_alt_name(c, GNUTLS_SAN_DNSNAME, "localhost", 9,
                                                              GNUTLS_FSAN_APPEND), 0);
        assert_int_equal(gnutls_x509_crt_set_subject_alt_name(c, GNUTLS_SAN_IPADDRESS, lo, 4, GNUTLS_FSAN_APPEND),
                         0);
    }
    assert_int_equal(gnutls_x509_crt_sign2(c, ca->crt, ca->key, GNUTLS_DIG_SHA256, 0), 0);
    gnutls_datum_t d;
    char name[64];
    assert_int_equal(gnutls_x509_crt_export2(c, GNUTLS_X509_FMT_PEM, &d), 0);
    snprintf(name, sizeof(name), "%s-cert.pem", who);
    tls_test_write(dir, name, &d);
    gnutls_free(d.data);
    assert_int_equal(gnutls_x509_privkey_export2(key, GNUTLS_X509_FMT_PEM, &d), 0);
    snprintf(name, sizeof(name), "%s-key.pem", who);
    tls_test_write(dir, name, &d);
    gnutls_free(d.data);
    gnutls_x509_crt_deinit(c);
    gnutls_x509_privkey_deinit(key);
}

/* A fresh temporary directory (caller frees the string; tls_test_rmdir removes it). */
static inline char *tls_test_mkdir(void)
{
    char *dir = ferry__xstrdup("/tmp/ferry-tls-XXXXXX");
    assert_non_null(mkdtemp(dir));
    return dir;
}

static inline void tls_test_rmdir(char *dir)
{
    static const char *const names[] = { "ca-cert.pem", "ca-crl.pem", "server-cert.pem", "server-key.pem",
                                         "client-cert.pem", "client-key.pem", "dh-params.pem", "keys.psk" };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        char *p = ferry__xasprintf("%s/%s", dir, names[i]);
        unlink(p);
        free(p);
    }
    rmdir(dir);
    free(dir);
}

/* A directory with a CA (@ca, which the caller frees) and a server and a client certificate it signed. */
static inline char *tls_test_x509_dir(TestCa *ca, const char *ca_name, const char *client_cn)
{
    char *dir = tls_test_mkdir();
    tls_test_ca(ca, ca_name);
    tls_test_write_ca(ca, dir);
    tls_test_leaf(ca, dir, "server", "localhost", 2);
    tls_test_leaf(ca, dir, "client", client_cn, 3);
    return dir;
}

static inline void tls_test_write_file(const char *dir, const char *name, const char *text)
{
    gnutls_datum_t d = { (unsigned char *)text, (unsigned)strlen(text) };
    tls_test_write(dir, name, &d);
}

#endif
