/*
 * Private to src/crypto: what the registry (object.c) shares with the files that implement object types
 * (tlscreds.c, authz.c). Each type declares its properties; object.c checks a property set against them (types,
 * required members, enum values, unknown members), converts keyval strings by them, and only then calls the
 * type's create function, which may therefore read the properties without checking them again. Nothing outside
 * src/crypto includes this.
 */
#ifndef FERRY_CRYPTO_INT_H
#define FERRY_CRYPTO_INT_H

#include <stdbool.h>

#include <jansson.h>

#include "crypto/crypto.h"

typedef enum FerryPropKind {
    FERRY_PROP_STR,
    FERRY_PROP_BOOL,
    FERRY_PROP_ENUM,  /* a string out of .values */
    FERRY_PROP_RULES, /* authz-list's rules: [{match: str, policy: allow|deny, format?: exact|glob}] */
} FerryPropKind;

typedef struct FerryPropSpec {
    const char *name;
    FerryPropKind kind;
    bool required;
    const char *const *values; /* FERRY_PROP_ENUM: NULL-terminated */
    const char *refused;       /* non-NULL: QEMU has the property, ferry does not; setting it is this error */
} FerryPropSpec;

typedef struct FerryObjectHead FerryObjectHead;

typedef struct FerryObjectType {
    const char *name;
    const FerryPropSpec *props; /* terminated by a NULL name */
    /* Build the object from checked @props. Fills everything but the head, which object.c fills. */
    FerryObjectHead *(*create)(const char *id, json_t *props, FerryError **errp);
    void (*free)(FerryObjectHead *o);
} FerryObjectType;

/* First member of every object. refs counts the registry (while the object is in it) and every user. */
struct FerryObjectHead {
    char *id;
    const FerryObjectType *type;
    int refs; /* atomic */
};

extern const FerryObjectType ferry__tls_creds_x509_type;
extern const FerryObjectType ferry__tls_creds_psk_type;
extern const FerryObjectType ferry__authz_list_type;
extern const FerryObjectType ferry__authz_simple_type;

/* A new reference to the object @id, or NULL if there is none. */
FerryObjectHead *ferry__object_ref(const char *id);
void ferry__object_unref(FerryObjectHead *o); /* frees with the last reference; NULL is a no-op */

/* Property values of checked props: the default when absent. */
const char *ferry__prop_str(json_t *props, const char *name, const char *def);
bool ferry__prop_bool(json_t *props, const char *name, bool def);
/* The index of the value in @values, or @def when absent. */
int ferry__prop_enum(json_t *props, const char *name, const char *const *values, int def);

extern const char *const ferry__policy_values[];   /* "deny", "allow" (QEMU's QAuthZListPolicy) */
extern const char *const ferry__format_values[];   /* "exact", "glob" (QAuthZListFormat) */
extern const char *const ferry__endpoint_values[]; /* "client", "server" (QCryptoTLSCredsEndpoint) */

#endif
