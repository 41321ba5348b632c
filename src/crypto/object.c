/*
 * The registry of user-creatable objects (include/ferry/object.h, crypto.h): the type table, the checks every
 * object-add runs before a type sees its properties (QMP's texts: "Parameter 'dir' is missing", "Invalid parameter
 * type for 'verify-peer', expected: boolean", "Parameter 'x' is unexpected", "Parameter 'endpoint' does not accept
 * value 'x'"), the conversion of command-line specs (keyval or JSON) into object-add's arguments, and reference
 * counting, which is what lets object-del refuse an object a migration holds. It knows no type's meaning: loading
 * credentials is tlscreds.c's, matching identities authz.c's.
 *
 * The registry is one array under one mutex: a process holds a handful of objects. Creation (which reads files)
 * runs outside the lock; the id is checked again when the object is inserted.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "crypto/crypto-int.h"
#include "util/util.h"

const char *const ferry__policy_values[] = { "deny", "allow", NULL };
const char *const ferry__format_values[] = { "exact", "glob", NULL };
const char *const ferry__endpoint_values[] = { "client", "server", NULL };

static const FerryObjectType *const types[] = {
    &ferry__tls_creds_x509_type,
    &ferry__tls_creds_psk_type,
    &ferry__authz_list_type,
    &ferry__authz_simple_type,
};

static FerryMutex registry_lock = FERRY_MUTEX_INITIALIZER;
static FerryObjectHead **registry;
static size_t registry_len, registry_cap;

static const FerryObjectType *find_type(const char *name)
{
    for (size_t i = 0; name && i < FERRY_ARRAY_SIZE(types); i++) {
        if (strcmp(types[i]->name, name) == 0) {
            return types[i];
        }
    }
    return NULL;
}

bool ferry_object_type_known(const char *qom_type)
{
    return find_type(qom_type) != NULL;
}

const char *ferry_object_type_names(void)
{
    return "tls-creds-x509, tls-creds-psk, authz-list, authz-simple";
}

/* QEMU's id_wellformed(): a letter, then letters, digits, '-', '.' and '_'. */
static bool id_wellformed(const char *id)
{
    if (!((id[0] >= 'a' && id[0] <= 'z') || (id[0] >= 'A' && id[0] <= 'Z'))) {
        return false;
    }
    for (const char *p = id + 1; *p; p++) {
        bool ok = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || *p == '-' ||
                  *p == '.' || *p == '_';
        if (!ok) {
            return false;
        }
    }
    return strlen(id) <= 128;
}

/* Index of @id with the lock held, or registry_len. */
static size_t find_locked(const char *id)
{
    FERRY_ASSERT_HELD(&registry_lock);
    size_t i;
    for (i = 0; i < registry_len; i++) {
        if (strcmp(registry[i]->id, id) == 0) {
            break;
        }
    }
    return i;
}

static bool enum_has(const char *const *values, const char *s)
{
    for (size_t i = 0; values[i]; i++) {
        if (strcmp(values[i], s) == 0) {
            return true;
        }
    }
    return false;
}

/* A string member @key of @obj whose value must be one of @values (NULL: any string); @what names it. */
static bool check_member(json_t *obj, const char *key, const char *what, bool required, const char *const *values,
                         FerryError **errp)
{
    json_t *v = json_object_get(obj, key);
    if (!v) {
        if (required) {
            ferry_error_setg(errp, "Parameter '%s' is missing", what);
        }
        return !required;
    }
    if (!json_is_string(v)) {
        ferry_error_setg(errp, "Invalid parameter type for '%s', expected: string", what);
        return false;
    }
    if (values && !enum_has(values, json_string_value(v))) {
        ferry_error_setg(errp, "Parameter '%s' does not accept value '%s'", what, json_string_value(v));
        return false;
    }
    return true;
}

static bool check_rules(json_t *rules, FerryError **errp)
{
    if (!json_is_array(rules)) {
        ferry_error_setg(errp, "Invalid parameter type for 'rules', expected: array");
        return false;
    }
    size_t i;
    json_t *r;
    json_array_foreach(rules, i, r) {
        char what[64];
        if (!json_is_object(r)) {
            ferry_error_setg(errp, "Invalid parameter type for 'rules[%zu]', expected: object", i);
            return false;
        }
        static const struct {
            const char *name;
            bool required;
            const char *const *values;
        } members[] = {
            { "match", true, NULL },
            { "policy", true, ferry__policy_values },
            { "format", false, ferry__format_values },
        };
        for (size_t k = 0; k < FERRY_ARRAY_SIZE(members); k++) {
            snprintf(what, sizeof(what), "rules[%zu].%s", i, members[k].name);
            if (!check_member(r, members[k].name, what, members[k].required, members[k].values, errp)) {
                return false;
            }
        }
        const char *key;
        json_t *v;
        json_object_foreach(r, key, v) {
            if (strcmp(key, "match") != 0 && strcmp(key, "policy") != 0 && strcmp(key, "format") != 0) {
                ferry_error_setg(errp, "Parameter 'rules[%zu].%s' is unexpected", i, key);
                return false;
            }
        }
    }
    return true;
}

/* The checks of QMP's generated code, in declaration order, then unknown members. */
static bool check_props(const FerryObjectType *t, json_t *props, FerryError **errp)
{
    for (const FerryPropSpec *p = t->props; p->name; p++) {
        json_t *v = json_object_get(props, p->name);
        if (!v) {
            if (p->required) {
                ferry_error_setg(errp, "Parameter '%s' is missing", p->name);
                return false;
            }
            continue;
        }
        if (p->refused) {
            ferry_error_setg(errp, "Parameter '%s' is not supported by ferry: %s", p->name, p->refused);
            return false;
        }
        bool ok = true;
        switch (p->kind) {
        case FERRY_PROP_STR:
        case FERRY_PROP_ENUM:
            ok = check_member(props, p->name, p->name, false, p->kind == FERRY_PROP_ENUM ? p->values : NULL, errp);
            break;
        case FERRY_PROP_BOOL:
            if (!json_is_boolean(v)) {
                ferry_error_setg(errp, "Invalid parameter type for '%s', expected: boolean", p->name);
                ok = false;
            }
            break;
        case FERRY_PROP_RULES:
            ok = check_rules(v, errp);
            break;
        }
        if (!ok) {
            return false;
        }
    }
    const char *key;
    json_t *v;
    json_object_foreach(props, key, v) {
        const FerryPropSpec *p;
        for (p = t->props; p->name && strcmp(p->name, key) != 0; p++) {
        }
        if (!p->name) {
            ferry_error_setg(errp, "Parameter '%s' is unexpected", key);
            return false;
        }
    }
    return true;
}

bool ferry_object_add(const char *qom_type, const char *id, json_t *props, FerryError **errp)
{
    const FerryObjectType *t = find_type(qom_type);
    if (!t) {
        ferry_error_setg(errp, "Parameter 'qom-type' does not accept value '%s' (object types: %s)",
                         qom_type ? qom_type : "", ferry_object_type_names());
        return false;
    }
    if (!id || !id_wellformed(id)) {
        ferry_error_setg(errp, "Parameter 'id' expects an identifier (a letter, then letters, digits, '-', '.' or "
                         "'_'), not '%s'", id ? id : "");
        return false;
    }
    if (props && !json_is_object(props)) {
        ferry_error_setg(errp, "%s '%s': properties must be a JSON object", t->name, id);
        return false;
    }
    json_t *empty = props ? NULL : json_object();
    json_t *p = props ? props : empty;
    bool taken;
    ferry__mutex_lock(&registry_lock);
    taken = find_locked(id) < registry_len;
    ferry__mutex_unlock(&registry_lock);
    FerryObjectHead *o = NULL;
    if (taken) {
        ferry_error_setg(errp, "an object with id '%s' already exists", id);
    } else if (check_props(t, p, errp)) {
        o = t->create(id, p, errp);
    }
    json_decref(empty);
    if (!o) {
        if (!taken) {
            /* The message names what is wrong; the object it is about is named once, here. */
            ferry_error_prepend(errp, "%s '%s': ", t->name, id);
        }
        return false;
    }
    o->id = ferry__xstrdup(id);
    o->type = t;
    o->refs = 1;
    ferry__mutex_lock(&registry_lock);
    taken = find_locked(id) < registry_len;
    if (!taken) {
        if (registry_len == registry_cap) {
            registry_cap = registry_cap ? registry_cap * 2 : 8;
            registry = ferry__xrealloc(registry, registry_cap * sizeof(*registry));
        }
        registry[registry_len++] = o;
    }
    ferry__mutex_unlock(&registry_lock);
    if (taken) {
        /* Another thread added the same id while this one read its files. */
        ferry__object_unref(o);
        ferry_error_setg(errp, "an object with id '%s' already exists", id);
        return false;
    }
    return true;
}

bool ferry_object_del(const char *id, FerryError **errp)
{
    ferry__mutex_lock(&registry_lock);
    size_t i = id ? find_locked(id) : registry_len;
    if (i == registry_len) {
        ferry__mutex_unlock(&registry_lock);
        ferry_error_setg(errp, "object '%s' not found", id ? id : "");
        return false;
    }
    FerryObjectHead *o = registry[i];
    /* References are only taken under this lock, so a count of 1 (the registry's) cannot grow meanwhile. */
    if (__atomic_load_n(&o->refs, __ATOMIC_ACQUIRE) > 1) {
        ferry__mutex_unlock(&registry_lock);
        ferry_error_setg(errp, "object '%s' is in use, can not be deleted (a migration uses it)", id);
        return false;
    }
    memmove(registry + i, registry + i + 1, (registry_len - i - 1) * sizeof(*registry));
    registry_len--;
    ferry__mutex_unlock(&registry_lock);
    ferry__object_unref(o);
    return true;
}

void ferry__objects_clear(void)
{
    ferry__mutex_lock(&registry_lock);
    FerryObjectHead **all = registry;
    size_t n = registry_len;
    registry = NULL;
    registry_len = registry_cap = 0;
    ferry__mutex_unlock(&registry_lock);
    for (size_t i = 0; i < n; i++) {
        ferry__object_unref(all[i]);
    }
    free(all);
}

FerryObjectHead *ferry__object_ref(const char *id)
{
    FerryObjectHead *o = NULL;
    ferry__mutex_lock(&registry_lock);
    size_t i = id ? find_locked(id) : registry_len;
    if (i < registry_len) {
        o = registry[i];
        __atomic_add_fetch(&o->refs, 1, __ATOMIC_ACQ_REL);
    }
    ferry__mutex_unlock(&registry_lock);
    return o;
}

void ferry__object_unref(FerryObjectHead *o)
{
    if (!o || __atomic_sub_fetch(&o->refs, 1, __ATOMIC_ACQ_REL) != 0) {
        return;
    }
    char *id = o->id;
    o->type->free(o);
    free(id);
}

const char *ferry__prop_str(json_t *props, const char *name, const char *def)
{
    json_t *v = json_object_get(props, name);
    return json_is_string(v) ? json_string_value(v) : def;
}

bool ferry__prop_bool(json_t *props, const char *name, bool def)
{
    json_t *v = json_object_get(props, name);
    return json_is_boolean(v) ? json_is_true(v) : def;
}

int ferry__prop_enum(json_t *props, const char *name, const char *const *values, int def)
{
    const char *s = ferry__prop_str(props, name, NULL);
    for (int i = 0; s && values[i]; i++) {
        if (strcmp(values[i], s) == 0) {
            return i;
        }
    }
    return def;
}

/* QEMU's keyval booleans. */
static bool keyval_bool(const char *name, const char *s, bool *out, FerryError **errp)
{
    if (!strcmp(s, "on") || !strcmp(s, "yes") || !strcmp(s, "true")) {
        *out = true;
    } else if (!strcmp(s, "off") || !strcmp(s, "no") || !strcmp(s, "false")) {
        *out = false;
    } else {
        ferry_error_setg(errp, "Parameter '%s' expects 'on' or 'off'", name);
        return false;
    }
    return true;
}

bool ferry__object_spec_parse(const char *spec, bool *known, json_t **args, FerryError **errp)
{
    *known = false;
    json_t *obj;
    bool from_json = spec[0] == '{';
    if (from_json) {
        /* QEMU's JSON form of -object: already typed, exactly object-add's arguments. Duplicate keys are refused
         * as QEMU's parser refuses them. */
        json_error_t jerr;
        obj = json_loads(spec, JSON_REJECT_DUPLICATES, &jerr);
        if (!obj || !json_is_object(obj)) {
            ferry_error_setg(errp, "not a JSON object: %s", obj ? "another JSON value" : jerr.text);
            json_decref(obj);
            return false;
        }
        json_t *t = json_object_get(obj, "qom-type");
        if (!json_is_string(t)) {
            ferry_error_setg(errp, t ? "Invalid parameter type for 'qom-type', expected: string"
                                     : "Parameter 'qom-type' is missing");
            json_decref(obj);
            return false;
        }
        if (!find_type(json_string_value(t))) {
            json_decref(obj);
            return true; /* not ours: *known stays false */
        }
    } else {
        /* "TYPE,key=value,...": the type is the leading bare value (QEMU's implied "qom-type" key). */
        size_t tl = strcspn(spec, ",");
        char *type = ferry__xstrndup(spec, tl);
        if (!find_type(type)) {
            free(type);
            return true;
        }
        obj = ferry__keyval_parse(spec[tl] ? spec + tl + 1 : "", errp);
        if (!obj) {
            free(type);
            return false;
        }
        if (json_object_get(obj, "qom-type")) {
            ferry_error_setg(errp, "Parameter 'qom-type' is given twice");
            free(type);
            json_decref(obj);
            return false;
        }
        json_object_set_new(obj, "qom-type", json_string(type));
        free(type);
    }
    *known = true;
    const FerryObjectType *t = find_type(json_string_value(json_object_get(obj, "qom-type")));
    json_t *id = json_object_get(obj, "id");
    if (!id) {
        ferry_error_setg(errp, "Parameter 'id' is missing");
        json_decref(obj);
        return false;
    }
    if (!from_json) {
        /* Keyval leaves are strings: convert the booleans (the only non-string properties besides rules,
         * whose members are all strings). */
        for (const FerryPropSpec *p = t->props; p->name; p++) {
            json_t *v = json_object_get(obj, p->name);
            bool b;
            if (p->kind != FERRY_PROP_BOOL || !json_is_string(v)) {
                continue;
            }
            if (!keyval_bool(p->name, json_string_value(v), &b, errp)) {
                json_decref(obj);
                return false;
            }
            json_object_set_new(obj, p->name, json_boolean(b));
        }
    }
    *args = obj;
    return true;
}

bool ferry__object_add_args(json_t *args, FerryError **errp)
{
    json_t *type = json_object_get(args, "qom-type"), *id = json_object_get(args, "id");
    if (!json_is_string(type) || !json_is_string(id)) {
        const char *bad = !json_is_string(type) ? "qom-type" : "id";
        if (json_object_get(args, bad)) {
            ferry_error_setg(errp, "Invalid parameter type for '%s', expected: string", bad);
        } else {
            ferry_error_setg(errp, "Parameter '%s' is missing", bad);
        }
        return false;
    }
    json_t *props = json_deep_copy(args);
    json_object_del(props, "qom-type");
    json_object_del(props, "id");
    bool ok = ferry_object_add(json_string_value(type), json_string_value(id), props, errp);
    json_decref(props);
    return ok;
}

bool ferry_object_add_str(const char *spec, FerryError **errp)
{
    bool known;
    json_t *args = NULL;
    if (!spec || !ferry__object_spec_parse(spec, &known, &args, errp)) {
        return false;
    }
    if (!known) {
        ferry_error_setg(errp, "unknown object type (object types: %s)", ferry_object_type_names());
        return false;
    }
    bool ok = ferry__object_add_args(args, errp);
    json_decref(args);
    return ok;
}
