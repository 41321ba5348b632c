/*
 * Authorization objects, as QEMU's authz/list.c and authz/simple.c: which identities a TLS server lets in once
 * the peer has proved one (the distinguished name of its certificate, or its PSK username). authz-list holds
 * ordered rules, each an exact string or a glob(7) pattern (fnmatch(3) without flags, so '*' also matches '/' and
 * ',') with a policy; the first rule that matches decides, else the list's own policy, which defaults to deny.
 * authz-simple allows exactly one identity. The objects are immutable once created, so checks need no lock.
 *
 * This file decides; it does not know where identities come from (src/channel/tls.c) and it reads no file
 * (QEMU's authz-list-file and authz-pam are not implemented).
 */
#include <fnmatch.h>
#include <stdlib.h>
#include <string.h>

#include "crypto/crypto-int.h"
#include "util/util.h"

typedef struct AuthzRule {
    char *match;
    bool allow;
    bool glob;
} AuthzRule;

struct FerryAuthz {
    FerryObjectHead head;
    bool simple;        /* authz-simple: identity only */
    char *identity;
    bool default_allow; /* authz-list: policy when no rule matches */
    AuthzRule *rules;
    size_t nrules;
};

static void authz_free(FerryObjectHead *o)
{
    FerryAuthz *a = (FerryAuthz *)o;
    for (size_t i = 0; i < a->nrules; i++) {
        free(a->rules[i].match);
    }
    free(a->rules);
    free(a->identity);
    free(a);
}

static FerryObjectHead *list_create(const char *id, json_t *props, FerryError **errp)
{
    FerryAuthz *a = ferry__xcalloc(1, sizeof(*a));
    a->default_allow = ferry__prop_enum(props, "policy", ferry__policy_values, 0) == 1;
    json_t *rules = json_object_get(props, "rules");
    size_t n = json_array_size(rules);
    a->rules = ferry__xcalloc(n ? n : 1, sizeof(*a->rules));
    for (size_t i = 0; i < n; i++) {
        json_t *r = json_array_get(rules, i);
        a->rules[i].match = ferry__xstrdup(ferry__prop_str(r, "match", ""));
        a->rules[i].allow = ferry__prop_enum(r, "policy", ferry__policy_values, 0) == 1;
        a->rules[i].glob = ferry__prop_enum(r, "format", ferry__format_values, 0) == 1;
        a->nrules++;
    }
    return &a->head;
}

static FerryObjectHead *simple_create(const char *id, json_t *props, FerryError **errp)
{
    FerryAuthz *a = ferry__xcalloc(1, sizeof(*a));
    a->simple = true;
    a->identity = ferry__xstrdup(ferry__prop_str(props, "identity", ""));
    return &a->head;
}

static const FerryPropSpec list_props[] = {
    { "policy", FERRY_PROP_ENUM, false, ferry__policy_values, NULL },
    { "rules", FERRY_PROP_RULES, false, NULL, NULL },
    { NULL, FERRY_PROP_STR, false, NULL, NULL },
};

static const FerryPropSpec simple_props[] = {
    { "identity", FERRY_PROP_STR, true, NULL, NULL },
    { NULL, FERRY_PROP_STR, false, NULL, NULL },
};

const FerryObjectType ferry__authz_list_type = { "authz-list", list_props, list_create, authz_free };
const FerryObjectType ferry__authz_simple_type = { "authz-simple", simple_props, simple_create, authz_free };

FerryAuthz *ferry__authz_get(const char *id, FerryError **errp)
{
    FerryObjectHead *o = ferry__object_ref(id);
    if (!o) {
        ferry_error_setg(errp, "No authorization object with id '%s'", id ? id : "");
        return NULL;
    }
    if (o->type != &ferry__authz_list_type && o->type != &ferry__authz_simple_type) {
        ferry_error_setg(errp, "Object '%s' is not an authorization object (it is a %s)", id, o->type->name);
        ferry__object_unref(o);
        return NULL;
    }
    return (FerryAuthz *)o;
}

void ferry__authz_unref(FerryAuthz *a)
{
    ferry__object_unref(a ? &a->head : NULL);
}

const char *ferry__authz_id(const FerryAuthz *a)
{
    return a->head.id;
}

bool ferry__authz_check(const FerryAuthz *a, const char *identity, FerryError **errp)
{
    if (a->simple) {
        if (strcmp(a->identity, identity) == 0) {
            return true;
        }
        ferry_error_setg(errp, "'%s' is not the identity authz-simple '%s' allows", identity, a->head.id);
        return false;
    }
    for (size_t i = 0; i < a->nrules; i++) {
        const AuthzRule *r = &a->rules[i];
        bool hit = r->glob ? fnmatch(r->match, identity, 0) == 0 : strcmp(r->match, identity) == 0;
        if (!hit) {
            continue;
        }
        if (!r->allow) {
            ferry_error_setg(errp, "'%s' is denied by rule %zu of authz list '%s'", identity, i, a->head.id);
        }
        return r->allow;
    }
    if (!a->default_allow) {
        ferry_error_setg(errp, "'%s' is not in authz list '%s'", identity, a->head.id);
    }
    return a->default_allow;
}
