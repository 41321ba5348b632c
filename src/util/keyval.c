/*
 * A parser of QEMU's keyval syntax ("a=1,b.c=x,d.0=p,d.1=q"), used by "-incoming config:" and anything else that
 * takes structured options on a command line. It builds a JSON object whose leaves are all strings: what a value
 * means (a number, a size, a boolean) is the business of whoever checks it, so that the command line, HMP and QMP
 * end in the same typed check. It follows the behaviour of QEMU's util/keyval.c, with two deliberate differences:
 * a repeated key is an error instead of "the last one wins" (on a command line that is almost always a mistake),
 * and there is no implied key.
 *
 * Syntax: pairs separated by ','; a key is one or more fragments of [A-Za-z0-9_-] joined by '.'; the value runs to
 * the next ',' that is not doubled (",," stands for one ','). A dotted key builds nested objects; an object whose
 * members are all decimal indices becomes a list, and the indices must be exactly 0..n-1. A trailing ',' is
 * accepted as QEMU does; the empty string gives an empty object.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "util/util.h"

static bool is_key_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-' ||
           c == '.';
}

/* Puts @value at the dotted @key in @root, creating the objects on the way. */
static bool put(json_t *root, const char *key, const char *value, size_t key_pos, FerryError **errp)
{
    json_t *cur = root;
    const char *frag = key;
    for (;;) {
        size_t len = strcspn(frag, ".");
        if (len == 0) {
            ferry_error_setg(errp, "invalid key '%s' at offset %zu: empty key fragment", key, key_pos);
            return false;
        }
        char *name = ferry__xstrndup(frag, len);
        json_t *child = json_object_get(cur, name);
        size_t prefix_len = (size_t)(frag - key) + len;
        if (frag[len] == '\0') {
            if (child) {
                if (json_is_string(child)) {
                    ferry_error_setg(errp, "duplicate key '%s' at offset %zu", key, key_pos);
                } else {
                    ferry_error_setg(errp, "key '%s' at offset %zu is both a value and an object (it has members "
                                     "such as '%s.*')", key, key_pos, key);
                }
                free(name);
                return false;
            }
            json_t *v = json_string(value);
            if (!v) {
                ferry_error_setg(errp, "value of key '%s' at offset %zu is not valid UTF-8", key, key_pos);
                free(name);
                return false;
            }
            json_object_set_new(cur, name, v);
            free(name);
            return true;
        }
        if (!child) {
            child = json_object();
            json_object_set_new(cur, name, child);
        } else if (!json_is_object(child)) {
            ferry_error_setg(errp, "key '%s' at offset %zu: '%.*s' is already a value, it cannot have members", key,
                             key_pos, (int)prefix_len, key);
            free(name);
            return false;
        }
        free(name);
        cur = child;
        frag += len + 1;
    }
}

/* A list index: decimal digits without a leading zero. Returns -1 if @s is not all digits, -2 if it has a leading
 * zero, else the index (saturated at INT32_MAX, which can only be a gap). */
static long index_of(const char *s)
{
    long v = 0;
    if (!*s) {
        return -1;
    }
    for (const char *p = s; *p; p++) {
        if (*p < '0' || *p > '9') {
            return -1;
        }
        if (v < INT32_MAX) {
            v = v * 10 + (*p - '0');
            if (v > INT32_MAX) {
                v = INT32_MAX;
            }
        }
    }
    if (s[0] == '0' && s[1]) {
        return -2;
    }
    return v;
}

/*
 * Replaces every object below @obj whose keys are all indices by a list, depth first. @path is @obj's dotted key
 * ("" at the top, which always stays an object). The result for @obj itself is returned in *@out (a new reference).
 */
static bool listify(json_t *obj, const char *path, json_t **out, FerryError **errp)
{
    const char *key;
    json_t *val;
    size_t n = json_object_size(obj);
    size_t nindex = 0;
    json_t *result = json_object();

    json_object_foreach(obj, key, val) {
        char *sub = *path ? ferry__xasprintf("%s.%s", path, key) : ferry__xstrdup(key);
        long idx = *path ? index_of(key) : -1;
        if (idx == -2) {
            ferry_error_setg(errp, "key '%s': list index '%s' has a leading zero", sub, key);
            free(sub);
            json_decref(result);
            return false;
        }
        if (idx >= 0) {
            nindex++;
        }
        json_t *conv;
        if (json_is_object(val)) {
            if (!listify(val, sub, &conv, errp)) {
                free(sub);
                json_decref(result);
                return false;
            }
        } else {
            conv = json_incref(val);
        }
        free(sub);
        json_object_set_new(result, key, conv);
    }

    if (nindex == 0) {
        *out = result;
        return true;
    }
    if (nindex != n) {
        ferry_error_setg(errp, "key '%s' mixes list indices and member names", path);
        json_decref(result);
        return false;
    }
    json_t *list = json_array();
    for (size_t i = 0; i < n; i++) {
        char name[24];
        snprintf(name, sizeof(name), "%zu", i);
        json_t *item = json_object_get(result, name);
        if (!item) {
            ferry_error_setg(errp, "key '%s.%zu' missing: list indices must be 0..%zu without gaps", path, i, n - 1);
            json_decref(list);
            json_decref(result);
            return false;
        }
        json_array_append(list, item);
    }
    json_decref(result);
    *out = list;
    return true;
}

json_t *ferry__keyval_parse(const char *s, FerryError **errp)
{
    json_t *root = json_object();
    size_t pos = 0;
    size_t slen = strlen(s);
    char *value = ferry__xmalloc(slen + 1);
    char *key = NULL;

    while (s[pos]) {
        size_t key_pos = pos;
        while (is_key_char(s[pos])) {
            pos++;
        }
        key = ferry__xstrndup(s + key_pos, pos - key_pos);
        if (s[pos] && s[pos] != '=' && s[pos] != ',') {
            /* Quote bytes that are not printable ASCII by value: the message may end up in JSON. */
            unsigned char c = (unsigned char)s[pos];
            char shown[8];
            if (c >= 0x20 && c < 0x7f) {
                snprintf(shown, sizeof(shown), "'%c'", c);
            } else {
                snprintf(shown, sizeof(shown), "0x%02x", c);
            }
            ferry_error_setg(errp, "invalid character %s after key '%s' at offset %zu (keys are made of letters, "
                             "digits, '-', '_' and '.')", shown, key, pos);
            goto fail;
        }
        if (!*key) {
            ferry_error_setg(errp, "empty key at offset %zu", key_pos);
            goto fail;
        }
        if (s[pos] != '=') {
            ferry_error_setg(errp, "expected '=' after key '%s' at offset %zu", key, key_pos);
            goto fail;
        }
        pos++;

        size_t vlen = 0;
        for (;;) {
            if (s[pos] == ',' && s[pos + 1] == ',') {
                value[vlen++] = ',';
                pos += 2;
            } else if (s[pos] == ',' || s[pos] == '\0') {
                break;
            } else {
                value[vlen++] = s[pos++];
            }
        }
        value[vlen] = '\0';
        if (s[pos] == ',') {
            pos++;
        }
        if (!put(root, key, value, key_pos, errp)) {
            goto fail;
        }
        free(key);
        key = NULL;
    }
    free(value);

    json_t *out;
    bool ok = listify(root, "", &out, errp);
    json_decref(root);
    return ok ? out : NULL;

fail:
    free(key);
    free(value);
    json_decref(root);
    return NULL;
}
