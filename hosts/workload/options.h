/*
 * ferry-workload's option parsers that need no running program around them: sizes and numbers as the command line
 * spells them, and QEMU's memory-backend options (-object memory-backend-memfd / memory-backend-file, -machine
 * memory-backend=). They fill structures and report errors; checks that need the file system or the other options
 * (the file's size, -m against the backend's size) are main.c's. Split from main.c so that the fuzz target
 * fuzz/fuzz-keyval.c and the unit tests can reach them; this header is not part of libferry.
 */
#ifndef FERRY_WORKLOAD_OPTIONS_H
#define FERRY_WORKLOAD_OPTIONS_H

#include <stdbool.h>
#include <stdint.h>

#include "ferry/ferry.h"

/* "123", "256M", "4G"...: suffixes B K M G T (powers of 1024); @default_shift applies without one (20 for -m's
 * MiB, 0 for bytes). False on anything else or on overflow. */
bool workload_parse_size(const char *s, unsigned default_shift, uint64_t *out);
/* A decimal number 0..@max, digits only. */
bool workload_parse_u64(const char *s, uint64_t max, uint64_t *out);

/* What -object memory-backend-memfd or memory-backend-file said; -machine memory-backend=ID selects it. */
typedef struct MemBackend {
    bool given;
    const char *type;          /* "memory-backend-memfd" or "memory-backend-file" */
    char id[64];
    uint64_t size;
    bool share;
    bool prealloc;             /* prealloc=on: as -mem-prealloc */
    char mem_path[4096];       /* memory-backend-file only */
    char machine_backend[64];  /* -machine memory-backend=, "" if not given */
} MemBackend;

/* -object TYPE,key=value,... (memory-backend-memfd and memory-backend-file; one of them, once). */
bool workload_parse_object(const char *arg, MemBackend *mb, FerryError **errp);
/* -machine key=value,...: only memory-backend=ID. */
bool workload_parse_machine(const char *arg, MemBackend *mb, FerryError **errp);

#endif
