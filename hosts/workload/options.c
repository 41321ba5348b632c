/*
 * ferry-workload's option parsers that need no running program (options.h): sizes, numbers, -object
 * memory-backend-memfd / memory-backend-file and -machine memory-backend=. Moved out of main.c unchanged in what
 * they accept, with their messages as FerryErrors (main.c prints them after the program's name), so that the fuzz
 * target of the option parsers and unit tests can call them. What needs the file system or the other options is
 * checked in main.c.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "options.h"

/* Parse "123", "256M", "4G"...; @default_shift applies without a suffix (20 for -m's MiB, 0 for bytes). */
bool workload_parse_size(const char *s, unsigned default_shift, uint64_t *out)
{
    char *end;
    unsigned long long v;
    unsigned shift = default_shift;

    if (*s < '0' || *s > '9') {
        return false;
    }
    errno = 0;
    v = strtoull(s, &end, 10);
    if (errno) {
        return false;
    }
    if (*end) {
        switch (*end) {
        case 'b': case 'B': shift = 0; break;
        case 'k': case 'K': shift = 10; break;
        case 'm': case 'M': shift = 20; break;
        case 'g': case 'G': shift = 30; break;
        case 't': case 'T': shift = 40; break;
        default: return false;
        }
        if (end[1]) {
            return false;
        }
    }
    if (v > (UINT64_MAX >> shift)) {
        return false;
    }
    *out = (uint64_t)v << shift;
    return true;
}

bool workload_parse_u64(const char *s, uint64_t max, uint64_t *out)
{
    char *end;
    unsigned long long v;

    if (*s < '0' || *s > '9') {
        return false;
    }
    errno = 0;
    v = strtoull(s, &end, 10);
    if (errno || *end || v > max) {
        return false;
    }
    *out = v;
    return true;
}

/* Splits @opt at its first ',' pair into key and value (both in @buf); returns the rest or NULL at the end. */
static const char *next_pair(const char *opt, char *buf, size_t bufsize, const char **key, const char **value)
{
    const char *end = strchr(opt, ',');
    size_t len = end ? (size_t)(end - opt) : strlen(opt);
    if (len >= bufsize) {
        len = bufsize - 1;
    }
    memcpy(buf, opt, len);
    buf[len] = '\0';
    char *eq = strchr(buf, '=');
    *key = buf;
    *value = NULL;
    if (eq) {
        *eq = '\0';
        *value = eq + 1;
    }
    return end ? end + 1 : NULL;
}

/* Parses the on|off value of property @key of -object @type into @out. */
static bool parse_on_off(const char *type, const char *key, const char *value, bool *out, FerryError **errp)
{
    if (strcmp(value, "on") != 0 && strcmp(value, "off") != 0) {
        ferry_error_setg(errp, "-object %s: %s must be on or off, not '%s'", type, key, value);
        return false;
    }
    *out = strcmp(value, "on") == 0;
    return true;
}

/* -object TYPE,key=value,...: memory-backend-memfd and memory-backend-file are known. */
bool workload_parse_object(const char *arg, MemBackend *mb, FerryError **errp)
{
    char buf[sizeof(mb->mem_path) + 16];
    const char *key, *value;
    const char *rest = next_pair(arg, buf, sizeof(buf), &key, &value);
    bool file = strcmp(key, "memory-backend-file") == 0;

    if (value || (!file && strcmp(key, "memory-backend-memfd") != 0)) {
        ferry_error_setg(errp, "-object: unknown object type '%s' (memory-backend-memfd, memory-backend-file, %s)",
                         key, ferry_object_type_names());
        return false;
    }
    if (mb->given) {
        ferry_error_setg(errp, "-object: only one memory backend is supported");
        return false;
    }
    mb->given = true;
    mb->type = file ? "memory-backend-file" : "memory-backend-memfd";
    mb->share = false; /* QEMU's default for memory backends */
    while (rest && *rest) {
        /* next_pair() cuts what does not fit: a cut mem-path would name another file, so refuse instead. */
        if (strcspn(rest, ",") >= sizeof(buf)) {
            ferry_error_setg(errp, "-object %s: property '%.32s...' is too long", mb->type, rest);
            return false;
        }
        rest = next_pair(rest, buf, sizeof(buf), &key, &value);
        if (!value) {
            ferry_error_setg(errp, "-object %s: '%s' needs a value (key=value)", mb->type, key);
            return false;
        }
        if (strcmp(key, "id") == 0) {
            if (!*value || strlen(value) >= sizeof(mb->id)) {
                ferry_error_setg(errp, "-object %s: bad id '%s'", mb->type, value);
                return false;
            }
            strcpy(mb->id, value);
        } else if (strcmp(key, "size") == 0) {
            if (!workload_parse_size(value, 0, &mb->size) || mb->size == 0) {
                ferry_error_setg(errp, "-object %s: size '%s' is not a size", mb->type, value);
                return false;
            }
        } else if (strcmp(key, "share") == 0) {
            if (!parse_on_off(mb->type, key, value, &mb->share, errp)) {
                return false;
            }
        } else if (strcmp(key, "prealloc") == 0) {
            if (!parse_on_off(mb->type, key, value, &mb->prealloc, errp)) {
                return false;
            }
        } else if (file && strcmp(key, "mem-path") == 0) {
            if (!*value || strlen(value) >= sizeof(mb->mem_path)) {
                ferry_error_setg(errp, "-object memory-backend-file: mem-path must be 1 to %zu bytes",
                                 sizeof(mb->mem_path) - 1);
                return false;
            }
            strcpy(mb->mem_path, value);
        } else {
            ferry_error_setg(errp, "-object %s: unknown property '%s' (id, size, share, prealloc%s)", mb->type,
                             key, file ? ", mem-path" : "");
            return false;
        }
    }
    if (!mb->id[0] || !mb->size) {
        ferry_error_setg(errp, "-object %s: id= and size= are required", mb->type);
        return false;
    }
    if (file && !mb->mem_path[0]) {
        ferry_error_setg(errp, "-object memory-backend-file: mem-path= is required (the file to map)");
        return false;
    }
    return true;
}

/* -machine key=value,...: only memory-backend= is known. */
bool workload_parse_machine(const char *arg, MemBackend *mb, FerryError **errp)
{
    char buf[256];
    const char *key, *value;
    const char *rest = arg;

    while (rest && *rest) {
        rest = next_pair(rest, buf, sizeof(buf), &key, &value);
        if (strcmp(key, "memory-backend") != 0 || !value || !*value || strlen(value) >= sizeof(mb->machine_backend)) {
            ferry_error_setg(errp, "-machine: unsupported property '%s' (only memory-backend=ID)", key);
            return false;
        }
        strcpy(mb->machine_backend, value);
    }
    return true;
}

