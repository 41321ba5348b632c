/*
 * The host programs' option parsers that need no running program around them (hosts/common, compiled into
 * ferry-workload and ferry-vm): sizes and numbers as the command line spells them, QEMU's memory-backend options
 * (-object memory-backend-memfd / memory-backend-file, -machine memory-backend=), and turning the backend into the
 * RAM a program registers. They fill structures and report errors as FerryErrors (the program prints them after
 * its name). Split from the programs so that both use one copy and the fuzz target fuzz/fuzz-keyval.c reaches
 * them; this header is not part of libferry.
 */
#ifndef FERRY_HOSTS_OPTIONS_H
#define FERRY_HOSTS_OPTIONS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ferry/ferry.h"

/* "123", "256M", "4G"...: suffixes B K M G T (powers of 1024); @default_shift applies without one (20 for -m's
 * MiB, 0 for bytes). False on anything else or on overflow. */
bool opts_parse_size(const char *s, unsigned default_shift, uint64_t *out);
/* A decimal number 0..@max, digits only. */
bool opts_parse_u64(const char *s, uint64_t max, uint64_t *out);
/* Split "key=value,..." at its first ',': *key and *value (NULL without '=') point into @buf, which gets the pair,
 * cut to @bufsize - 1 bytes (a caller to whom a cut value would mean something else checks the length first).
 * Returns the rest, or NULL at the end. */
const char *opts_next_pair(const char *opt, char *buf, size_t bufsize, const char **key, const char **value);

/* What -object memory-backend-memfd or memory-backend-file said; -machine memory-backend=ID selects it. */
typedef struct MemBackend {
    /* Set before parsing. false (ferry-workload): -machine takes memory-backend= only. true (ferry-vm): also
     * QEMU's machine type (pc, q35) and accel=kvm, which a VMM's command lines carry. */
    bool vm_machine;
    bool given;
    const char *type;          /* "memory-backend-memfd" or "memory-backend-file" */
    char id[64];
    uint64_t size;
    bool share;
    bool prealloc;             /* prealloc=on: as -mem-prealloc */
    uint64_t prealloc_threads; /* prealloc-threads=N, 0 if not given (QEMU's default: 1) */
    char mem_path[4096];       /* memory-backend-file only: a file, or a directory for a temporary file */
    bool hugetlb;              /* memory-backend-memfd: hugetlb=on */
    uint64_t hugetlbsize;      /* memory-backend-memfd: hugetlbsize=, 0 for the default huge page size */
    char machine_backend[64];  /* -machine memory-backend=, "" if not given */
} MemBackend;

/* -object TYPE,key=value,... (memory-backend-memfd and memory-backend-file; one of them, once). */
bool opts_parse_object(const char *arg, MemBackend *mb, FerryError **errp);
/* -machine key=value,...: memory-backend=ID (and, with mb->vm_machine, pc, q35, accel=kvm). */
bool opts_parse_machine(const char *arg, MemBackend *mb, FerryError **errp);

/* The RAM the options asked for, once all are parsed. */
typedef struct MemChoice {
    uint64_t size;        /* -m, or the backend's size */
    bool prealloc;        /* prealloc=on (ORed into -mem-prealloc by the caller) */
    unsigned prealloc_threads; /* threads that preallocate: prealloc-threads=, else -smp with -mem-prealloc, else 1 */
    bool memfd, memfd_share;
    char mem_path[4096];  /* memory-backend-file's file or directory (mem_dir), or -mem-path's; "" for none */
    bool mem_dir;         /* mem_path is a directory: each block is a new unlinked temporary file in it */
    bool file_share;
    bool hugetlb;         /* memfd: hugetlb=on, of hugetlbsize-byte pages (checked; the default filled in) */
    uint64_t hugetlbsize;
    uint64_t page_size;   /* the backing's huge page size (hugetlb memfd or a directory on hugetlbfs), else 0:
                           * every block's size must be a multiple of it */
} MemChoice;
/*
 * Check the backend against the other options and fill @out (whose size is -m's, or the default, on entry;
 * @m_given says whether -m was given): -machine memory-backend= must name the -object, a backend must be used,
 * its size must be whole pages and match -m; hugetlb=on's hugetlbsize must be a huge page size of the host
 * and the size a multiple of it; a memory-backend-file's mem-path is a directory (a temporary file in it, whose
 * size on hugetlbfs must be a multiple of its huge page) or a regular file at least size bytes long, which is
 * refused on a destination (@incoming), whose pages the source does not send would keep the file's
 * content. Without a backend @out stays as it is.
 */
bool opts_memory_backend_resolve(const MemBackend *mb, bool m_given, bool incoming, MemChoice *out,
                                 FerryError **errp);
/* QEMU's -mem-path PATH without a memory backend: RAM in a temporary file in the directory PATH (or, PATH a
 * regular file, that file, as memory-backend-file,mem-path=PATH), MAP_PRIVATE as QEMU's default. Fails if a
 * memory backend was selected too. */
bool opts_mem_path_resolve(const char *path, const MemBackend *mb, bool incoming, MemChoice *out,
                           FerryError **errp);

#endif
