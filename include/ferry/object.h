/*
 * User-creatable objects, as QEMU's -object, object-add and object-del: the TLS credentials and authorization
 * lists that migrations name in their tls-creds and tls-authz parameters. Objects belong to the process (one
 * registry, thread-safe), not to a FerryHost: a host program may create them before or after its host, on the
 * command line (the host runtime's -object does it) or over QMP (object-add). This header only creates and
 * deletes them; migrations look them up by id when they start and hold them until they end.
 *
 * Types and their properties (QEMU's names and defaults):
 *   tls-creds-x509  dir (required), endpoint client|server (client), verify-peer (true), priority (GnuTLS
 *                   priority string, default "NORMAL"), sanity-check (true); dir holds ca-cert.pem (required),
 *                   ca-crl.pem (optional), server-cert.pem + server-key.pem (server, required), client-cert.pem +
 *                   client-key.pem (client, optional), dh-params.pem (server, optional)
 *   tls-creds-psk   dir (required), endpoint, username (client, default "qemu"), priority, verify-peer; dir holds
 *                   keys.psk with one "username:hexkey" per line
 *   authz-list      policy allow|deny (deny), rules [{match, policy allow|deny, format exact|glob (exact)}]
 *   authz-simple    identity (required)
 */
#ifndef FERRY_OBJECT_H
#define FERRY_OBJECT_H

#include <jansson.h>

#include "ferry/common.h"

/*
 * object-add: create object @id of @qom_type from @props (borrowed; a JSON object of the type's properties, typed
 * as QMP types them, without "qom-type" and "id"; NULL means none). Errors (QMP's texts where QEMU has one): an
 * unknown type, an id that is not an identifier or is taken, a missing, unknown or mistyped property, and every
 * problem with the files a credentials directory must hold, naming the file.
 */
FERRY_API bool ferry_object_add(const char *qom_type, const char *id, json_t *props, FerryError **errp);
/* -object: "TYPE,id=ID,key=value,..." (QEMU's keyval syntax: ",," is a comma in a value, rules.0.match=... builds
 * a list) or a JSON object {"qom-type": TYPE, "id": ID, ...}. */
FERRY_API bool ferry_object_add_str(const char *spec, FerryError **errp);
/* object-del: "object 'x' not found"; "object 'x' is in use, can not be deleted" while a migration uses it. */
FERRY_API bool ferry_object_del(const char *id, FerryError **errp);
/* Whether @qom_type is one of the types above (a program may have object types of its own). */
FERRY_API bool ferry_object_type_known(const char *qom_type);
/* The types above, for messages: "tls-creds-x509, tls-creds-psk, authz-list, authz-simple". */
FERRY_API const char *ferry_object_type_names(void);

#endif
