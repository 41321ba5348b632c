/*
 * The host programs' option parsers (options.h): sizes, numbers, -object memory-backend-memfd /
 * memory-backend-file, -machine memory-backend= and the checks that turn them into guest RAM. Moved from
 * ferry-workload unchanged in what they accept and say; ferry-vm's flavour of -machine also takes the machine
 * type and accel=kvm. What needs the running program is the program's.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "options.h"

/* Parse "123", "256M", "4G"...; @default_shift applies without a suffix (20 for -m's MiB, 0 for bytes). */
bool opts_parse_size(const char *s, unsigned default_shift, uint64_t *out)
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

bool opts_parse_u64(const char *s, uint64_t max, uint64_t *out)
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

const char *opts_next_pair(const char *opt, char *buf, size_t bufsize, const char **key, const char **value)
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
bool opts_parse_object(const char *arg, MemBackend *mb, FerryError **errp)
{
    char buf[sizeof(mb->mem_path) + 16];
    const char *key, *value;
    const char *rest = opts_next_pair(arg, buf, sizeof(buf), &key, &value);
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
        /* opts_next_pair() cuts what does not fit: a cut mem-path would name another file, so refuse instead. */
        if (strcspn(rest, ",") >= sizeof(buf)) {
            ferry_error_setg(errp, "-object %s: property '%.32s...' is too long", mb->type, rest);
            return false;
        }
        rest = opts_next_pair(rest, buf, sizeof(buf), &key, &value);
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
            if (!opts_parse_size(value, 0, &mb->size) || mb->size == 0) {
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
        } else if (strcmp(key, "prealloc-threads") == 0) {
            if (!opts_parse_u64(value, FERRY_PREALLOC_THREADS_MAX, &mb->prealloc_threads) ||
                mb->prealloc_threads == 0) {
                ferry_error_setg(errp, "-object %s: prealloc-threads '%s' is not a number from 1 to %d", mb->type,
                                 value, FERRY_PREALLOC_THREADS_MAX);
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
            ferry_error_setg(errp, "-object %s: unknown property '%s' (id, size, share, prealloc, prealloc-threads%s)", mb->type,
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

/* -machine key=value,...: memory-backend= (and ferry-vm's machine type and accelerator). */
bool opts_parse_machine(const char *arg, MemBackend *mb, FerryError **errp)
{
    char buf[256];
    const char *key, *value;
    const char *rest = arg;

    while (rest && *rest) {
        rest = opts_next_pair(rest, buf, sizeof(buf), &key, &value);
        if (mb->vm_machine && !value && (strcmp(key, "pc") == 0 || strcmp(key, "q35") == 0)) {
            continue; /* the machine type: ferry-vm has one, and QEMU's spelling is accepted */
        }
        if (mb->vm_machine && value && strcmp(key, "accel") == 0 && strcmp(value, "kvm") == 0) {
            continue;
        }
        if (strcmp(key, "memory-backend") != 0 || !value || !*value || strlen(value) >= sizeof(mb->machine_backend)) {
            ferry_error_setg(errp, "-machine: unsupported property '%s' (%s)", key,
                             mb->vm_machine ? "pc, accel=kvm, memory-backend=ID" : "only memory-backend=ID");
            return false;
        }
        strcpy(mb->machine_backend, value);
    }
    return true;
}

bool opts_memory_backend_resolve(const MemBackend *mb, bool m_given, bool incoming, MemChoice *out,
                                 FerryError **errp)
{
    size_t page_size = ferry_ram_page_size();

    if (!mb->machine_backend[0]) {
        if (mb->given) {
            ferry_error_setg(errp, "-object %s,id=%s is not used: add -machine memory-backend=%s", mb->type, mb->id,
                             mb->id);
            return false;
        }
        return true;
    }
    if (!mb->given || strcmp(mb->id, mb->machine_backend) != 0) {
        ferry_error_setg(errp, "-machine memory-backend=%s: no -object memory-backend-memfd or memory-backend-file "
                         "with that id", mb->machine_backend);
        return false;
    }
    if (mb->size % page_size) {
        ferry_error_setg(errp, "%s size %" PRIu64 " is not a multiple of the %zu-byte page", mb->type, mb->size,
                         page_size);
        return false;
    }
    if (m_given && mb->size != out->size) {
        ferry_error_setg(errp, "-m %" PRIu64 " bytes does not match memory-backend '%s' size %" PRIu64, out->size,
                         mb->id, mb->size);
        return false;
    }
    out->size = mb->size;
    out->prealloc = mb->prealloc;
    out->prealloc_threads = (unsigned)mb->prealloc_threads;
    if (!mb->mem_path[0]) {
        out->memfd = true;
        out->memfd_share = mb->share;
        return true;
    }
    struct stat st;

    /* A destination's pages that the source does not send must read as zero; ferry's source sends only the
     * populated pages of anonymous RAM, so over a file they would keep the file's content. */
    if (incoming) {
        ferry_error_setg(errp, "memory-backend-file cannot be used with -incoming: pages the source does not send "
                         "would keep the file's content (start the destination with -m)");
        return false;
    }
    /* Checked here once for the whole file; the library checks each block's slice again. */
    if (stat(mb->mem_path, &st) != 0) {
        ferry_error_setg(errp, "memory-backend-file: mem-path %s: %s", mb->mem_path, strerror(errno));
        return false;
    }
    if (!S_ISREG(st.st_mode)) {
        ferry_error_setg(errp, "memory-backend-file: mem-path %s is not a regular file", mb->mem_path);
        return false;
    }
    if ((uint64_t)st.st_size < mb->size) {
        ferry_error_setg(errp, "memory-backend-file: mem-path %s is too small: %" PRIu64 " bytes, size=%" PRIu64,
                         mb->mem_path, (uint64_t)st.st_size, mb->size);
        return false;
    }
    strcpy(out->mem_path, mb->mem_path);
    out->file_share = mb->share;
    return true;
}

