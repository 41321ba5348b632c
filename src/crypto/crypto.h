/*
 * The crypto layer, internal API: the process's user-creatable objects (QEMU's -object / object-add / object-del)
 * of the kinds TLS needs, and what the channel layer asks of them. Two families:
 *
 *   - TLS credentials: tls-creds-x509 (a directory of PEM files named as QEMU names them) and tls-creds-psk (a
 *     directory with keys.psk). Loaded into GnuTLS credentials when the object is created, so that a missing or
 *     bad file is an error of object-add, not of a later migration. Each is for one endpoint (client: the
 *     migration source; server: the destination), as in QEMU.
 *   - Authorization: authz-list (ordered rules with exact or glob matches and a default policy) and authz-simple
 *     (one identity), checked against the identity a TLS peer proved (its certificate's distinguished name, or its
 *     PSK username).
 *
 * Objects live in one registry per process under one mutex (like the fd store: a process has a handful), named by
 * ids of QEMU's form. Users take a reference while they use an object (a migration, from start to end), and
 * object-del refuses an object with references other than the registry's. This layer does no I/O on channels:
 * src/channel/tls.c runs the sessions.
 *
 * The public face is include/ferry/object.h (ferry_object_add / ferry_object_add_str / ferry_object_del).
 */
#ifndef FERRY_CRYPTO_H
#define FERRY_CRYPTO_H

#include <stdbool.h>

#include <gnutls/gnutls.h>
#include <jansson.h>

#include "ferry/error.h"
#include "ferry/object.h"

/* ---- objects (object.c) ---- */

/*
 * A command-line or HMP object spec ("TYPE,id=ID,key=value,..." in QEMU's keyval syntax, or a JSON object with
 * "qom-type" and "id") turned into the arguments of QMP object-add: {"qom-type": T, "id": ID, props...} with
 * every property converted by its declared type (booleans from on/off, yes/no, true/false). Only the host's
 * object types are known here; *known is false (and nothing is set) for any other type, so that a program can
 * handle its own (ferry-workload's memory backends). New reference in *args.
 */
bool ferry__object_spec_parse(const char *spec, bool *known, json_t **args, FerryError **errp);
/* object-add from its arguments, {"qom-type": T, "id": ID, props...} (what ferry__object_spec_parse gives, and
 * QMP's flat form). */
bool ferry__object_add_args(json_t *args, FerryError **errp);
/* Remove every object, referenced or not (references stay valid: an object is freed by its last unref). For tests
 * and for a clean exit. */
void ferry__objects_clear(void);

/* ---- TLS credentials (tlscreds.c) ---- */

typedef enum FerryTlsEndpoint {
    FERRY_TLS_ENDPOINT_CLIENT,
    FERRY_TLS_ENDPOINT_SERVER,
} FerryTlsEndpoint;

typedef struct FerryTlsCreds FerryTlsCreds;

/*
 * A reference to the credentials named @id, which must be for @endpoint. Errors, QEMU's texts with the id:
 * "No TLS credentials with id 'x'", "Object 'x' is not TLS credentials (it is an authz-list)", "Expected TLS
 * credentials for a client endpoint, but 'x' is for a server endpoint".
 */
FerryTlsCreds *ferry__tls_creds_get(const char *id, FerryTlsEndpoint endpoint, FerryError **errp);
void ferry__tls_creds_unref(FerryTlsCreds *c); /* NULL is a no-op */
const char *ferry__tls_creds_id(const FerryTlsCreds *c);
const char *ferry__tls_creds_dir(const FerryTlsCreds *c);
bool ferry__tls_creds_is_psk(const FerryTlsCreds *c);
bool ferry__tls_creds_verify_peer(const FerryTlsCreds *c);
/* Why a certificate verification failed, in words a user can act on ("not signed by a trusted CA", "expired",
 * ...), from GnuTLS's status bits. New string. */
char *ferry__tls_cert_status_text(unsigned status);
/* Give @session the credentials, the priority string and (server, x509, verify-peer) the request for a client
 * certificate. */
bool ferry__tls_creds_setup_session(const FerryTlsCreds *c, gnutls_session_t session, FerryError **errp);

/* ---- authorization (authz.c) ---- */

typedef struct FerryAuthz FerryAuthz;

/* A reference to the authorization object @id: "No authorization object with id 'x'", or "Object 'x' is not an
 * authorization object (it is a tls-creds-x509)". */
FerryAuthz *ferry__authz_get(const char *id, FerryError **errp);
void ferry__authz_unref(FerryAuthz *a); /* NULL is a no-op */
const char *ferry__authz_id(const FerryAuthz *a);
/*
 * Whether @identity may connect. authz-list: the first rule that matches decides (exact: the whole string;
 * glob: fnmatch(3) without flags), else the list's policy. authz-simple: exactly its identity. On refusal *errp
 * says why, naming the identity and the object: "'CN=x' is not in authz list 'auth0'", "'CN=x' is denied by
 * rule 2 of authz list 'auth0'", "'CN=x' is not the identity authz-simple 'auth0' allows".
 */
bool ferry__authz_check(const FerryAuthz *a, const char *identity, FerryError **errp);

#endif
