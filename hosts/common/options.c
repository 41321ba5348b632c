/*
 * The host programs' option parsers (options.h): sizes, numbers, -object memory-backend-memfd (with hugetlb=,
 * hugetlbsize=) / memory-backend-file (mem-path= a file or a directory), -machine memory-backend=, -mem-path and
 * the checks that turn them into guest RAM. Moved from
 * ferry-workload unchanged in what they accept and say; ferry-vm's flavour of -machine also takes the machine
 * type and accel=kvm. What needs the running program is the program's.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <linux/magic.h>
#include <sys/stat.h>
#include <sys/statfs.h>

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
    /* QEMU's defaults: share=on for memory-backend-memfd, off for memory-backend-file. A private mapping of a memfd
     * allocates every written page twice (in the memfd, then its private copy): a destination with one received
     * 2 GiB 4-8 times slower than with share=on (docs/memory.md). */
    mb->share = !file;
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
        } else if (!file && strcmp(key, "hugetlb") == 0) {
            if (!parse_on_off(mb->type, key, value, &mb->hugetlb, errp)) {
                return false;
            }
        } else if (!file && strcmp(key, "hugetlbsize") == 0) {
            /* QEMU refuses 0 too ("doesn't take value"); the default is asked for by leaving it out. */
            if (!opts_parse_size(value, 0, &mb->hugetlbsize) || mb->hugetlbsize == 0) {
                ferry_error_setg(errp, "-object memory-backend-memfd: hugetlbsize '%s' is not a size", value);
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
            ferry_error_setg(errp, "-object %s: unknown property '%s' (id, size, share, prealloc, "
                             "prealloc-threads, %s)", mb->type, key, file ? "mem-path" : "hugetlb, hugetlbsize");
            return false;
        }
    }
    if (!mb->id[0] || !mb->size) {
        ferry_error_setg(errp, "-object %s: id= and size= are required", mb->type);
        return false;
    }
    if (mb->hugetlbsize && !mb->hugetlb) {
        ferry_error_setg(errp, "-object memory-backend-memfd: hugetlbsize needs hugetlb=on");
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

static bool file_resolve(const char *path, uint64_t size, bool share, const char *what, bool incoming,
                         MemChoice *out, FerryError **errp);

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
        if (mb->hugetlb) {
            uint64_t hps;
            if (!ferry_ram_hugepage_size(mb->hugetlbsize, &hps, errp)) {
                ferry_error_prepend(errp, "memory-backend-memfd '%s' hugetlbsize: ", mb->id);
                return false;
            }
            /* The kernel cannot size a hugetlb memfd to part of a huge page (QEMU fails there too). */
            if (mb->size % hps) {
                ferry_error_setg(errp, "memory-backend-memfd '%s': size %" PRIu64 " is not a multiple of the %"
                                 PRIu64 "-byte huge page (hugetlbsize)", mb->id, mb->size, hps);
                return false;
            }
            out->hugetlb = true;
            out->hugetlbsize = hps;
            out->page_size = hps;
        }
        return true;
    }
    return file_resolve(mb->mem_path, mb->size, mb->share, "memory-backend-file: mem-path", incoming, out, errp);
}

bool opts_mem_path_resolve(const char *path, const MemBackend *mb, bool incoming, MemChoice *out,
                           FerryError **errp)
{
    if (mb->machine_backend[0]) {
        ferry_error_setg(errp, "'-mem-path' can't be used together with '-machine memory-backend'");
        return false;
    }
    return file_resolve(path, out->size, false, "-mem-path", incoming, out, errp);
}

/* A file backend at @path (a directory, or a regular file at least @size bytes long) into @out; @what names the
 * option in errors. */
static bool file_resolve(const char *path, uint64_t size, bool share, const char *what, bool incoming,
                         MemChoice *out, FerryError **errp)
{
    struct stat st;

    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
        /* A new temporary file per block reads as zero: right on a destination too. On hugetlbfs the file
         * system's page size is the huge page, which must divide the RAM (checked per block by the library as
         * well). */
        struct statfs sfs;
        if (statfs(path, &sfs) == 0 && (unsigned long)sfs.f_type == HUGETLBFS_MAGIC) {
            out->page_size = (uint64_t)sfs.f_bsize;
            if (size % out->page_size) {
                ferry_error_setg(errp, "%s %s is on hugetlbfs with %" PRIu64 "-byte pages: the RAM size %" PRIu64
                                 " is not a multiple of it", what, path, out->page_size, size);
                return false;
            }
        }
        strcpy(out->mem_path, path);
        out->mem_dir = true;
        out->file_share = share;
        return true;
    }

    /* A destination's pages that the source does not send must read as zero; ferry's source sends only the
     * populated pages of anonymous RAM, so over a file they would keep the file's content. */
    if (incoming) {
        ferry_error_setg(errp, "%s naming a file cannot be used with -incoming: pages the source does not send "
                         "would keep the file's content (start the destination with -m, or give a directory)", what);
        return false;
    }
    /* Checked here once for the whole file; the library checks each block's slice again. */
    if (stat(path, &st) != 0) {
        ferry_error_setg(errp, "%s %s: %s", what, path, strerror(errno));
        return false;
    }
    if (!S_ISREG(st.st_mode)) {
        ferry_error_setg(errp, "%s %s is not a regular file or a directory", what, path);
        return false;
    }
    if ((uint64_t)st.st_size < size) {
        ferry_error_setg(errp, "%s %s is too small: %" PRIu64 " bytes, size=%" PRIu64,
                         what, path, (uint64_t)st.st_size, size);
        return false;
    }
    strcpy(out->mem_path, path);
    out->file_share = share;
    return true;
}

