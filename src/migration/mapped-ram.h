/*
 * mapped-ram (QEMU's capability of the same name, with ferry's checksums): RAM in a file at fixed offsets. The
 * stream's MAPPED_RAM record (docs/stream-format.md, "mapped-ram") says where each block's bitmap of present pages,
 * its table of per-page CRC32Cs and its page region lie; page j of a block is always at the same offset, so a page
 * written again in a later pass overwrites itself and the file never grows past RAM plus metadata, and any number
 * of threads can write or read pages at once (pwrite / pread at offsets, no ordering).
 *
 * The source side is a writer (a pool of threads, or the caller's thread alone); the destination side loads a file
 * either by copying every present page into RAM, checking each against its CRC, or by mapping the page regions
 * privately as the RAM (restore-mode "map"), after which a verifier thread checks the pages against their CRCs in
 * the background and maps them in ahead of the workload. This file does not write records or decide what to send.
 */
#ifndef FERRY_MAPPED_RAM_H
#define FERRY_MAPPED_RAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ferry/error.h"
#include "ram/ram.h"
#include "wire/wire.h"

/* The file as both ends use it: the stream's fd, the offset of the stream's first byte in it, its name (for an
 * O_DIRECT descriptor and for messages). Borrowed. */
typedef struct FerryMappedFile {
    int fd;
    uint64_t base;
    const char *path;
    bool direct;     /* page data with O_DIRECT (direct-io) */
    bool checksums;  /* the file has (the source: writes) a CRC32C per page */
} FerryMappedFile;

/* ---- Source ---- */

typedef struct FerryMappedWriter FerryMappedWriter;

/* A writer for @blocks (@n, borrowed) whose regions start at stream offset @start (right after the MAPPED_RAM
 * record), with @threads threads (0: every page is written on the calling thread). The file is cut to the end of
 * the regions (so that never-written pages are holes, which read as zero). *layout gets the regions (its blocks
 * array belongs to the writer). Fails naming the reason (O_DIRECT refused by the file system, say). */
FerryMappedWriter *ferry__mapped_writer_new(FerryRamBlock **blocks, size_t n, const FerryMappedFile *f, uint64_t start,
                                            unsigned threads, FerryWireMapped *layout, FerryError **errp);
/* Pages [first, first + n) of block @bi (n <= FERRY_WIRE_MAX_RUN_PAGES): zero pages become holes, the others are
 * written at their offsets with their CRCs. @stable: RAM cannot change meanwhile (workload stopped, or the pages
 * write-protected), so no copy is needed. With threads, handed to one and returns at once; an earlier failure is
 * returned here. Any thread may call it with @scratch, a FERRY_WIRE_MAX_RUN_PAGES-page buffer aligned to 4096
 * of its own (the fault thread of background-snapshot); NULL means the writer's own (the migration thread only). */
bool ferry__mapped_writer_run(FerryMappedWriter *w, size_t bi, uint64_t first, uint32_t n, bool stable,
                              uint8_t *scratch, FerryError **errp);
/* Waits until everything handed over is written. */
bool ferry__mapped_writer_sync(FerryMappedWriter *w, FerryError **errp);
/* After the last pass: sync, then the bitmaps and checksum tables; *present gets the pages with data. */
bool ferry__mapped_writer_finish(FerryMappedWriter *w, uint64_t *present, FerryError **errp);
/* Bytes of page data written, pages written with data, zero pages (atomic reads). */
void ferry__mapped_writer_stats(FerryMappedWriter *w, uint64_t *bytes, uint64_t *normal, uint64_t *zero);
void ferry__mapped_writer_free(FerryMappedWriter *w); /* stops the threads; NULL is a no-op */
/* A buffer for ferry__mapped_writer_run's @scratch; free() it. */
uint8_t *ferry__mapped_scratch_new(void);

/* ---- Destination ---- */

/* restore-mode "copy": every present page read into RAM on @threads threads (at least 1), checked against its CRC.
 * Pages absent from the file are made to read as zero. *present gets the pages with data. A damaged page fails it
 * naming its file offset, block and page. */
bool ferry__mapped_load(FerryRamBlock **blocks, size_t n, const FerryMappedFile *f, const FerryWireMapped *layout,
                        unsigned threads, uint64_t *present, FerryError **errp);

/* restore-mode "map": every block's page region mapped privately over the block (copy on write), nothing read but
 * the bitmaps. Checks every block first (anonymous private RAM only; the region's file offset page aligned), so
 * that a refusal changes nothing. */
bool ferry__mapped_map(FerryRamBlock **blocks, size_t n, const FerryMappedFile *f, const FerryWireMapped *layout,
                       uint64_t *present, FerryError **errp);

/* The background check of a mapped restore: reads each present page from the file, compares its CRC, and maps
 * the checked pages into the workload's page tables (MADV_POPULATE_READ) so that its first reads do not fault. A
 * mismatch stops the check and calls @failed (on the verifier's thread) with the error, which names the file
 * offset. */
typedef struct FerryMappedVerifier FerryMappedVerifier;
typedef void (*FerryMappedFailFn)(void *opaque, const FerryError *err);
FerryMappedVerifier *ferry__mapped_verify_start(FerryRamBlock **blocks, size_t n, const FerryMappedFile *f,
                                                const FerryWireMapped *layout, FerryMappedFailFn failed, void *opaque,
                                                FerryError **errp);
/* "running", "passed", "failed" or "stopped"; pages checked so far and in all. */
const char *ferry__mapped_verify_status(FerryMappedVerifier *v, uint64_t *checked, uint64_t *total);
void ferry__mapped_verify_free(FerryMappedVerifier *v); /* stops and joins; NULL is a no-op */

#endif
