/*
 * The TLS credential objects: tls-creds-x509 and tls-creds-psk, with QEMU's properties and file names. Creating
 * one loads its directory into GnuTLS credentials at once, so that every problem with the files (missing, not
 * readable, not PEM, a key that does not fit its certificate, a certificate the CA did not sign) is an error of
 * object-add or -object that names the file; a migration then only looks the object up. The credentials are
 * read-only afterwards and shared by every session that uses them (GnuTLS allows that across threads).
 *
 * This file does not run sessions or verify peers (src/channel/tls.c does); it hands a session what it needs
 * (ferry__tls_creds_setup_session).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <gnutls/x509.h>

#include "crypto/crypto-int.h"
#include "util/util.h"

/* QEMU's file names (crypto/tlscredsx509.h, tlscredspsk.h). */
#define CA_CERT "ca-cert.pem"
#define CA_CRL "ca-crl.pem"
#define SERVER_CERT "server-cert.pem"
#define SERVER_KEY "server-key.pem"
#define CLIENT_CERT "client-cert.pem"
#define CLIENT_KEY "client-key.pem"
#define DH_PARAMS "dh-params.pem"
#define PSK_FILE "keys.psk"

/* QEMU's default priority, and what it adds for PSK (TLS_PRIORITY_ADDITIONAL_PSK). */
#define DEFAULT_PRIORITY "NORMAL"
#define PSK_PRIORITY_SUFFIX ":+ECDHE-PSK:+DHE-PSK:+PSK"
#define DEFAULT_PSK_USERNAME "qemu"
#define PSK_MIN_KEY 4 /* bytes: GnuTLS 3.7 refuses shorter keys */

struct FerryTlsCreds {
    FerryObjectHead head;
    bool psk;
    FerryTlsEndpoint endpoint;
    bool verify_peer;
    char *dir;
    gnutls_priority_t priority;
    gnutls_certificate_credentials_t x509;
    gnutls_psk_client_credentials_t psk_client;
    gnutls_psk_server_credentials_t psk_server;
    gnutls_dh_params_t dh;
};

static void creds_free(FerryObjectHead *o)
{
    FerryTlsCreds *c = (FerryTlsCreds *)o;
    if (c->x509) {
        gnutls_certificate_free_credentials(c->x509);
    }
    if (c->psk_client) {
        gnutls_psk_free_client_credentials(c->psk_client);
    }
    if (c->psk_server) {
        gnutls_psk_free_server_credentials(c->psk_server);
    }
    if (c->dh) {
        gnutls_dh_params_deinit(c->dh);
    }
    if (c->priority) {
        gnutls_priority_deinit(c->priority);
    }
    free(c->dir);
    free(c);
}

/* DIR/NAME, and whether it exists; a file that exists but cannot be read is an error naming it. */
static char *dir_file(const FerryTlsCreds *c, const char *name, bool *exists, FerryError **errp)
{
    char *path = ferry__xasprintf("%s/%s", c->dir, name);
    if (access(path, R_OK) == 0) {
        *exists = true;
        return path;
    }
    int err = errno;
    *exists = false;
    if (err != ENOENT) {
        ferry_error_setg_errno(errp, err, "cannot read %s", path);
        free(path);
        return NULL;
    }
    return path;
}

/* A file the credentials cannot do without. */
static char *required_file(const FerryTlsCreds *c, const char *name, const char *why, FerryError **errp)
{
    bool exists;
    char *path = dir_file(c, name, &exists, errp);
    if (path && !exists) {
        ferry_error_setg(errp, "%s is missing (%s)", path, why);
        free(path);
        return NULL;
    }
    return path;
}

static bool check_dir(FerryTlsCreds *c, json_t *props, FerryError **errp)
{
    const char *dir = ferry__prop_str(props, "dir", "");
    struct stat st;
    if (!*dir) {
        ferry_error_setg(errp, "Parameter 'dir' must name a directory");
        return false;
    }
    if (stat(dir, &st) != 0) {
        ferry_error_setg_errno(errp, errno, "dir '%s'", dir);
        return false;
    }
    if (!S_ISDIR(st.st_mode)) {
        ferry_error_setg(errp, "dir '%s' is not a directory", dir);
        return false;
    }
    /* Without trailing slashes, so that the file names in messages read well. */
    size_t n = strlen(dir);
    while (n > 1 && dir[n - 1] == '/') {
        n--;
    }
    c->dir = ferry__xstrndup(dir, n);
    return true;
}

static bool set_priority(FerryTlsCreds *c, json_t *props, FerryError **errp)
{
    const char *base = ferry__prop_str(props, "priority", DEFAULT_PRIORITY);
    char *prio = c->psk ? ferry__xasprintf("%s%s", base, PSK_PRIORITY_SUFFIX) : ferry__xstrdup(base);
    const char *bad = NULL;
    int rc = gnutls_priority_init(&c->priority, prio, &bad);
    if (rc < 0) {
        c->priority = NULL;
        if (bad) {
            ferry_error_setg(errp, "priority '%s' is not valid at '%s': %s", base, bad, gnutls_strerror(rc));
        } else {
            ferry_error_setg(errp, "priority '%s' is not valid: %s", base, gnutls_strerror(rc));
        }
    }
    free(prio);
    return rc >= 0;
}

static bool load_dh(FerryTlsCreds *c, FerryError **errp)
{
    bool exists;
    char *path = dir_file(c, DH_PARAMS, &exists, errp);
    if (!path || !exists) {
        free(path);
        return path != NULL; /* optional: GnuTLS then uses ECDHE or the groups it knows */
    }
    gnutls_datum_t data = { NULL, 0 };
    int rc = gnutls_load_file(path, &data);
    if (rc >= 0) {
        rc = gnutls_dh_params_init(&c->dh);
    }
    if (rc >= 0) {
        rc = gnutls_dh_params_import_pkcs3(c->dh, &data, GNUTLS_X509_FMT_PEM);
    }
    gnutls_free(data.data);
    if (rc < 0) {
        ferry_error_setg(errp, "%s: %s", path, gnutls_strerror(rc));
    }
    free(path);
    return rc >= 0;
}

char *ferry__tls_cert_status_text(unsigned status)
{
    /* The common reasons in words a user can act on; anything else as GnuTLS says it. */
    if (status & (GNUTLS_CERT_SIGNER_NOT_FOUND | GNUTLS_CERT_SIGNER_NOT_CA)) {
        return ferry__xstrdup("not signed by a trusted CA");
    }
    if (status & GNUTLS_CERT_REVOKED) {
        return ferry__xstrdup("revoked");
    }
    if (status & GNUTLS_CERT_EXPIRED) {
        return ferry__xstrdup("expired");
    }
    if (status & GNUTLS_CERT_NOT_ACTIVATED) {
        return ferry__xstrdup("not yet valid");
    }
    if (status & GNUTLS_CERT_INSECURE_ALGORITHM) {
        return ferry__xstrdup("signed with an insecure algorithm");
    }
    gnutls_datum_t out = { NULL, 0 };
    if (gnutls_certificate_verification_status_print(status, GNUTLS_CRT_X509, &out, 0) < 0 || !out.data) {
        return ferry__xasprintf("invalid (verification status 0x%x)", status);
    }
    char *s = ferry__xstrdup((const char *)out.data);
    gnutls_free(out.data);
    return s;
}

/* PEM certificates of @path into a list (gnutls_x509_crt_deinit each, gnutls_free the array). */
static bool import_certs(const char *path, gnutls_x509_crt_t **list, unsigned *n, FerryError **errp)
{
    gnutls_datum_t data = { NULL, 0 };
    int rc = gnutls_load_file(path, &data);
    if (rc >= 0) {
        rc = gnutls_x509_crt_list_import2(list, n, &data, GNUTLS_X509_FMT_PEM, 0);
    }
    gnutls_free(data.data);
    if (rc < 0) {
        ferry_error_setg(errp, "%s: %s", path, gnutls_strerror(rc));
        return false;
    }
    return true;
}

static void free_certs(gnutls_x509_crt_t *list, unsigned n)
{
    for (unsigned i = 0; i < n; i++) {
        gnutls_x509_crt_deinit(list[i]);
    }
    gnutls_free(list);
}

/* QEMU's sanity-check, in part: this end's own certificate must be valid now and issued by the CA it trusts, or
 * every handshake would fail later with a less obvious message. */
static bool sanity_check(const char *cert_path, const char *ca_path, FerryError **errp)
{
    gnutls_x509_crt_t *certs = NULL, *cas = NULL;
    unsigned ncerts = 0, ncas = 0;
    bool ok = import_certs(cert_path, &certs, &ncerts, errp) && import_certs(ca_path, &cas, &ncas, errp);
    if (ok && ncerts == 0) {
        ferry_error_setg(errp, "%s holds no certificate", cert_path);
        ok = false;
    }
    if (ok) {
        unsigned status = 0;
        int rc = gnutls_x509_crt_list_verify(certs, ncerts, cas, ncas, NULL, 0, 0, &status);
        if (rc < 0) {
            ferry_error_setg(errp, "cannot verify %s: %s", cert_path, gnutls_strerror(rc));
            ok = false;
        } else if (status) {
            char *why = ferry__tls_cert_status_text(status);
            ferry_error_setg(errp, "%s is %s (checked against %s; sanity-check=off skips this)", cert_path, why,
                             ca_path);
            free(why);
            ok = false;
        }
    }
    free_certs(certs, ncerts);
    free_certs(cas, ncas);
    return ok;
}

static FerryObjectHead *x509_create(const char *id, json_t *props, FerryError **errp)
{
    FerryTlsCreds *c = ferry__xcalloc(1, sizeof(*c));
    c->endpoint = (FerryTlsEndpoint)ferry__prop_enum(props, "endpoint", ferry__endpoint_values,
                                                     FERRY_TLS_ENDPOINT_CLIENT);
    c->verify_peer = ferry__prop_bool(props, "verify-peer", true);
    bool server = c->endpoint == FERRY_TLS_ENDPOINT_SERVER;
    char *ca = NULL, *crl = NULL, *cert = NULL, *key = NULL;
    bool ok = false, exists, cert_exists = false, key_exists = false;
    int rc;
    if (!check_dir(c, props, errp) || !set_priority(c, props, errp)) {
        goto out;
    }
    rc = gnutls_certificate_allocate_credentials(&c->x509);
    if (rc < 0) {
        c->x509 = NULL;
        ferry_error_setg(errp, "cannot allocate credentials: %s", gnutls_strerror(rc));
        goto out;
    }
    ca = required_file(c, CA_CERT, "the CA certificate that peers' certificates are checked against", errp);
    if (!ca) {
        goto out;
    }
    rc = gnutls_certificate_set_x509_trust_file(c->x509, ca, GNUTLS_X509_FMT_PEM);
    if (rc <= 0) {
        ferry_error_setg(errp, "%s: %s", ca, rc < 0 ? gnutls_strerror(rc) : "no certificate in it");
        goto out;
    }
    crl = dir_file(c, CA_CRL, &exists, errp);
    if (!crl) {
        goto out;
    }
    if (exists && (rc = gnutls_certificate_set_x509_crl_file(c->x509, crl, GNUTLS_X509_FMT_PEM)) < 0) {
        ferry_error_setg(errp, "%s: %s", crl, gnutls_strerror(rc));
        goto out;
    }
    cert = dir_file(c, server ? SERVER_CERT : CLIENT_CERT, &cert_exists, errp);
    key = cert ? dir_file(c, server ? SERVER_KEY : CLIENT_KEY, &key_exists, errp) : NULL;
    if (!cert || !key) {
        goto out;
    }
    /* A server must prove who it is; a client may stay anonymous (the server decides with verify-peer). */
    if (server && (!cert_exists || !key_exists)) {
        ferry_error_setg(errp, "%s is missing (a server endpoint needs its certificate and key)",
                         cert_exists ? key : cert);
        goto out;
    }
    if (cert_exists != key_exists) {
        ferry_error_setg(errp, "%s is missing (%s has no partner)", cert_exists ? key : cert,
                         cert_exists ? cert : key);
        goto out;
    }
    if (cert_exists) {
        rc = gnutls_certificate_set_x509_key_file(c->x509, cert, key, GNUTLS_X509_FMT_PEM);
        if (rc < 0) {
            ferry_error_setg(errp, "%s with %s: %s", cert, key, gnutls_strerror(rc));
            goto out;
        }
        if (ferry__prop_bool(props, "sanity-check", true) && !sanity_check(cert, ca, errp)) {
            goto out;
        }
    }
    if (server && !load_dh(c, errp)) {
        goto out;
    }
    if (c->dh) {
        gnutls_certificate_set_dh_params(c->x509, c->dh);
    }
    ok = true;
out:
    free(ca);
    free(crl);
    free(cert);
    free(key);
    if (!ok) {
        creds_free(&c->head);
        return NULL;
    }
    return &c->head;
}

static bool is_hex(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (!((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f') || (ch >= 'A' && ch <= 'F'))) {
            return false;
        }
    }
    return n > 0 && n % 2 == 0;
}

/*
 * Check every line of keys.psk ("username:hexkey"; blank lines are allowed) and, with @username, return that
 * user's key (hex, caller frees). GnuTLS reads the file again for the server; checking it here makes a broken
 * file an error now instead of a failed handshake later.
 */
static bool read_psk_file(const char *path, const char *username, char **key, FerryError **errp)
{
    FILE *f = fopen(path, "re");
    if (!f) {
        ferry_error_setg_errno(errp, errno, "cannot open %s", path);
        return false;
    }
    char *line = NULL;
    size_t cap = 0, lineno = 0, keys = 0;
    ssize_t len;
    bool ok = true;
    while (ok && (len = getline(&line, &cap, f)) >= 0) {
        lineno++;
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r')) {
            line[--len] = '\0';
        }
        if (len == 0) {
            continue;
        }
        char *colon = strchr(line, ':');
        if (!colon || colon == line || !is_hex(colon + 1, strlen(colon + 1))) {
            ferry_error_setg(errp, "%s line %zu: expected USERNAME:HEXKEY (an even number of hex digits)", path,
                             lineno);
            ok = false;
            break;
        }
        size_t klen = strlen(colon + 1) / 2;
        if (klen < PSK_MIN_KEY) {
            /* GnuTLS refuses such keys, and only says that the request is invalid. */
            ferry_error_setg(errp, "%s line %zu: a key of %zu bytes is too short (at least %d; 32 random bytes are "
                             "usual)", path, lineno, klen, PSK_MIN_KEY);
            ok = false;
            break;
        }
        keys++;
        if (username && !*key && (size_t)(colon - line) == strlen(username) &&
            memcmp(line, username, strlen(username)) == 0) {
            *key = ferry__xstrdup(colon + 1);
        }
    }
    free(line);
    fclose(f);
    if (ok && keys == 0) {
        ferry_error_setg(errp, "%s holds no key", path);
        ok = false;
    }
    if (ok && username && !*key) {
        ferry_error_setg(errp, "%s has no key for username '%s'", path, username);
        ok = false;
    }
    if (!ok) {
        free(*key);
        *key = NULL;
    }
    return ok;
}

static FerryObjectHead *psk_create(const char *id, json_t *props, FerryError **errp)
{
    FerryTlsCreds *c = ferry__xcalloc(1, sizeof(*c));
    c->psk = true;
    c->endpoint = (FerryTlsEndpoint)ferry__prop_enum(props, "endpoint", ferry__endpoint_values,
                                                     FERRY_TLS_ENDPOINT_CLIENT);
    c->verify_peer = ferry__prop_bool(props, "verify-peer", true);
    bool server = c->endpoint == FERRY_TLS_ENDPOINT_SERVER;
    const char *username = ferry__prop_str(props, "username", DEFAULT_PSK_USERNAME);
    char *path = NULL, *key = NULL;
    bool ok = false;
    int rc;
    if (server && json_object_get(props, "username")) {
        ferry_error_setg(errp, "username is for a client endpoint (a server takes every user of %s)", PSK_FILE);
        goto out;
    }
    if (!*username) {
        ferry_error_setg(errp, "username must not be empty");
        goto out;
    }
    if (!check_dir(c, props, errp) || !set_priority(c, props, errp)) {
        goto out;
    }
    path = required_file(c, PSK_FILE, "the pre-shared keys, one USERNAME:HEXKEY per line", errp);
    if (!path || !read_psk_file(path, server ? NULL : username, &key, errp)) {
        goto out;
    }
    if (server) {
        rc = gnutls_psk_allocate_server_credentials(&c->psk_server);
        if (rc >= 0) {
            rc = gnutls_psk_set_server_credentials_file(c->psk_server, path);
        }
        if (rc < 0) {
            ferry_error_setg(errp, "%s: %s", path, gnutls_strerror(rc));
            goto out;
        }
        if (!load_dh(c, errp)) {
            goto out;
        }
        if (c->dh) {
            gnutls_psk_set_server_dh_params(c->psk_server, c->dh);
        }
    } else {
        gnutls_datum_t k = { (unsigned char *)key, (unsigned)strlen(key) };
        rc = gnutls_psk_allocate_client_credentials(&c->psk_client);
        if (rc >= 0) {
            rc = gnutls_psk_set_client_credentials(c->psk_client, username, &k, GNUTLS_PSK_KEY_HEX);
        }
        if (rc < 0) {
            ferry_error_setg(errp, "%s, username '%s': %s", path, username, gnutls_strerror(rc));
            goto out;
        }
    }
    ok = true;
out:
    if (key) {
        /* The key is a secret: do not leave it in freed memory. */
        memset(key, 0, strlen(key));
        free(key);
    }
    free(path);
    if (!ok) {
        creds_free(&c->head);
        return NULL;
    }
    return &c->head;
}

static const FerryPropSpec x509_props[] = {
    { "dir", FERRY_PROP_STR, true, NULL, NULL },
    { "endpoint", FERRY_PROP_ENUM, false, ferry__endpoint_values, NULL },
    { "verify-peer", FERRY_PROP_BOOL, false, NULL, NULL },
    { "priority", FERRY_PROP_STR, false, NULL, NULL },
    { "sanity-check", FERRY_PROP_BOOL, false, NULL, NULL },
    { "passwordid", FERRY_PROP_STR, false, NULL,
      "encrypted private keys are not supported (give the key unencrypted, readable only by its user)" },
    { NULL, FERRY_PROP_STR, false, NULL, NULL },
};

static const FerryPropSpec psk_props[] = {
    { "dir", FERRY_PROP_STR, true, NULL, NULL },
    { "endpoint", FERRY_PROP_ENUM, false, ferry__endpoint_values, NULL },
    { "verify-peer", FERRY_PROP_BOOL, false, NULL, NULL },
    { "priority", FERRY_PROP_STR, false, NULL, NULL },
    { "username", FERRY_PROP_STR, false, NULL, NULL },
    { NULL, FERRY_PROP_STR, false, NULL, NULL },
};

const FerryObjectType ferry__tls_creds_x509_type = { "tls-creds-x509", x509_props, x509_create, creds_free };
const FerryObjectType ferry__tls_creds_psk_type = { "tls-creds-psk", psk_props, psk_create, creds_free };

FerryTlsCreds *ferry__tls_creds_get(const char *id, FerryTlsEndpoint endpoint, FerryError **errp)
{
    FerryObjectHead *o = ferry__object_ref(id);
    if (!o) {
        ferry_error_setg(errp, "No TLS credentials with id '%s'", id ? id : "");
        return NULL;
    }
    if (o->type != &ferry__tls_creds_x509_type && o->type != &ferry__tls_creds_psk_type) {
        ferry_error_setg(errp, "Object '%s' is not TLS credentials (it is an %s)", id, o->type->name);
        ferry__object_unref(o);
        return NULL;
    }
    FerryTlsCreds *c = (FerryTlsCreds *)o;
    if (c->endpoint != endpoint) {
        /* QEMU's text, with the id. */
        ferry_error_setg(errp, "Expected TLS credentials for a %s endpoint, but '%s' is for a %s endpoint",
                         ferry__endpoint_values[endpoint], id, ferry__endpoint_values[c->endpoint]);
        ferry__object_unref(o);
        return NULL;
    }
    return c;
}

void ferry__tls_creds_unref(FerryTlsCreds *c)
{
    ferry__object_unref(c ? &c->head : NULL);
}

const char *ferry__tls_creds_id(const FerryTlsCreds *c)
{
    return c->head.id;
}

const char *ferry__tls_creds_dir(const FerryTlsCreds *c)
{
    return c->dir;
}

bool ferry__tls_creds_is_psk(const FerryTlsCreds *c)
{
    return c->psk;
}

bool ferry__tls_creds_verify_peer(const FerryTlsCreds *c)
{
    return c->verify_peer;
}

bool ferry__tls_creds_setup_session(const FerryTlsCreds *c, gnutls_session_t session, FerryError **errp)
{
    int rc = gnutls_priority_set(session, c->priority);
    if (rc >= 0) {
        if (c->psk) {
            rc = gnutls_credentials_set(session, GNUTLS_CRD_PSK,
                                        c->endpoint == FERRY_TLS_ENDPOINT_SERVER ? (void *)c->psk_server
                                                                                 : (void *)c->psk_client);
        } else {
            rc = gnutls_credentials_set(session, GNUTLS_CRD_CERTIFICATE, c->x509);
            /* REQUEST rather than REQUIRE: a client without a certificate then completes the handshake and is
             * refused by the server's own check, with a message the client can be told (src/channel/tls.c). */
            if (rc >= 0 && c->endpoint == FERRY_TLS_ENDPOINT_SERVER && c->verify_peer) {
                gnutls_certificate_server_set_request(session, GNUTLS_CERT_REQUEST);
                /* Without the list of our CAs in the request, a client presents its certificate whoever issued
                 * it (GnuTLS would otherwise hold back one our CA did not sign), and the refusal can then say
                 * "not signed by a trusted CA" rather than "no certificate". */
                gnutls_certificate_send_x509_rdn_sequence(session, 1);
            }
        }
    }
    if (rc < 0) {
        ferry_error_setg(errp, "TLS credentials '%s': %s", c->head.id, gnutls_strerror(rc));
        return false;
    }
    return true;
}
