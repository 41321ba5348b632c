/*
 * RAM blocks and dirty tracking, internal side. A block is one mapping (anonymous, a memfd or a slice of a file);
 * the engine (migration layer) keeps the list. Dirty trackers sit behind one interface (tracker-int.h):
 *
 *   uffd-wp   userfaultfd in async write-protect mode (UFFD_FEATURE_WP_ASYNC, Linux 6.7+) plus the PAGEMAP_SCAN
 *             ioctl with PM_SCAN_WP_MATCHING, which reports written pages and re-protects them in one step. Needs
 *             no cooperation from writers. Probed at run time; Debian 12's headers predate it, so the constants are
 *             defined in uffd-compat.h.
 *   explicit  only the marks made with ferry_ram_mark_dirty().
 *   none      nothing is tracked; the migration resends all RAM with the workload stopped.
 *   host      a tracker the host program provides (FerryDirtyTrackerOps, ferry_migration_set_dirty_tracker_ops):
 *             ferry-vm's KVM dirty log and KVM dirty ring are of this kind, named by the host ("kvm-dirty-log",
 *             "kvm-dirty-ring"). The engine forwards start, harvest and stop to it.
 *
 * Explicit marks are merged into every tracker's harvest. This file says nothing about how pages are sent.
 */
#ifndef FERRY_RAM_INT_H
#define FERRY_RAM_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "ferry/error.h"
#include "ferry/ram.h"
#include "util/bitmap.h"

#define FERRY_RAM_NAME_MAX 255

struct FerryRamBlock {
    char *name;
    uint8_t *host;               /* page aligned mapping of size bytes */
    uint64_t size;               /* multiple of the page size */
    uint64_t npages;
    uint32_t index;              /* position in the engine's list, used as the block id in the stream */
    unsigned long *explicit_dirty; /* npages bits, set atomically by ferry_ram_mark_dirty() */
    bool explicit_any;             /* atomic: set by ferry_ram_mark_dirty() after its bits, so that a harvest
                                    * need not read the bitmap of a block nobody marked */
    /* Backing. fd is -1 for anonymous memory, else the memfd (ours). shared: mapped MAP_SHARED, so another
     * process that maps fd sees the same pages (what mode cpr-transfer passes instead of copying). */
    int fd;
    bool shared;
    bool memfd;   /* created as a memfd, or an unlinked temporary file on tmpfs or hugetlbfs (memory-backend-file
                   * with mem-path= a directory), which reads as zero and behaves as one (kept when an adopted
                   * mapping is dropped again: a memfd of the same page size replaces it) */
    /* The backing's page size: ferry_ram_page_size(), or the huge page size of a hugetlb memfd or of a file on
     * hugetlbfs (hugetlb true). The engine still counts, tracks and sends 4 KiB pages; the kernel maps, faults,
     * discards and write-protects whole huge pages, so the block's size and address are multiples of it, a
     * discard covers whole huge pages, the uffd-wp tracker reports a write as its whole huge page, and postcopy
     * (which would place 4 KiB pages) refuses such a block. */
    uint64_t page_size;
    bool hugetlb;
    bool adopted; /* destination: the mapping is the source's memfd, received over the channel */
    bool restored; /* destination: a file block made by restore-mode map, a private mapping of a snapshot's pages
                    * (discarding it gives the block anonymous memory again) */
    /* A mapping of a slice of a file (QEMU's memory-backend-file), MAP_SHARED or MAP_PRIVATE. Such a block keeps
     * fd -1 and shared false: the mapping holds the file, and a shared file slice is not a memfd that mode
     * cpr-transfer could pass whole (the destination maps what it receives at offset 0). */
    bool file;
    int file_fd;          /* file blocks: the file, kept open to find its holes (SEEK_DATA); else -1 */
    uint64_t file_offset; /* file blocks: where the block starts in the file */
    /* Destination: the page up to which the stream's first pass has reached (atomic; pages arrive in block
     * order in the first pass, up to the batches still in flight on other multifd channels). The populate thread
     * does not fault in what lies below it: those pages have arrived already, and a zero page that was not
     * written must stay unpopulated. */
    uint64_t recv_frontier;
    /* Every page is populated (ferry_ram_block_prealloc, or the populate of a whole block) and nothing discarded
     * since: the destination need not fault anything in ahead of its writes. */
    bool populated;
    /* Destination: the pages that may hold data (bits set atomically): those populated when the incoming
     * migration started, and those it has written since. Any other page reads as zero, so a page the stream says
     * is zero needs no write there, and is not even read (reading an untouched page costs a fault). NULL until
     * the first incoming migration. */
    unsigned long *recv_written;
};

/* A userfaultfd (O_CLOEXEC | O_NONBLOCK | @mode_flags: UFFD_USER_MODE_ONLY or 0 to serve faults taken in the
 * kernel too), by the syscall or, where that is refused, by /dev/userfaultfd; the error says both reasons. */
int ferry__userfaultfd_open(int mode_flags, FerryError **errp);
/* The userfaultfd features this kernel offers, asked of a throwaway fd that serves kernel-mode faults too (UFFDIO_API
 * may be issued once per fd, and with no features requested the kernel answers with all it has). */
bool ferry__userfaultfd_features(uint64_t *features, FerryError **errp);

/* Map a block; the engine registers it. */
FerryRamBlock *ferry__ram_block_new(const char *name, uint64_t size, FerryError **errp);
/* The same backed by a new memfd (named @name for /proc/PID/maps), MAP_SHARED if @share else MAP_PRIVATE. */
FerryRamBlock *ferry__ram_block_new_memfd(const char *name, uint64_t size, bool share, FerryError **errp);
/* The same backed by a new hugetlb memfd of @hugepage_size pages (a size of ferry_ram_hugepage_size(), checked
 * again here); @size must be a multiple of it. Fails if the kernel cannot reserve the huge pages at mmap time. */
FerryRamBlock *ferry__ram_block_new_hugetlb(const char *name, uint64_t size, bool share, uint64_t hugepage_size,
                                            FerryError **errp);
/* The same backed by a new unlinked temporary file in the directory @dir (QEMU's memory-backend-file with
 * mem-path= a directory), of @size bytes, reading as zero. On hugetlbfs @size must be a multiple of the file
 * system's page size, which becomes the block's. On tmpfs and hugetlbfs the block behaves as a memfd (mode
 * cpr-transfer passes it when @share); elsewhere as a file block (b->file) over the temporary file. */
FerryRamBlock *ferry__ram_block_new_tmpfile(const char *name, uint64_t size, const char *dir, bool share,
                                            FerryError **errp);
/* The same mapping bytes [@offset, @offset + @size) of the file at @path (QEMU's memory-backend-file,mem-path=):
 * MAP_SHARED if @share (writes reach the file), else MAP_PRIVATE (copy on write; the file is never written). The
 * file must be a regular file at least @offset + @size bytes long; @offset a multiple of the page size. The block
 * starts with the file's content: every page over the file's data may hold data (see
 * ferry__ram_block_present_pages). */
FerryRamBlock *ferry__ram_block_new_file(const char *name, uint64_t size, const char *path, uint64_t offset,
                                         bool share, FerryError **errp);
/*
 * Destination of cpr-transfer: map the source's memfd @fd over the block, at the same address (the host
 * program's pointer stays valid), MAP_SHARED. Takes @fd on success. Fails if @fd is not a memfd-like file of at
 * least the block's size.
 */
bool ferry__ram_block_adopt_fd(FerryRamBlock *b, int fd, FerryError **errp);
/* Undo an adoption (a failed incoming migration): the block gets fresh zeroed memory of its original kind at the
 * same address and the source's fd is closed; the source's pages are never written. No-op if not adopted. */
void ferry__ram_block_unadopt(FerryRamBlock *b);
/* restore-mode map: map @len = the block's size of @fd (dup'ed, kept) at @offset privately over an anonymous block
 * (copy on write), which becomes a private file block: its pages over the file's data count as present, so it
 * migrates again like memory-backend-file,share=off. */
bool ferry__ram_block_map_file(FerryRamBlock *b, int fd, uint64_t offset, FerryError **errp);
void ferry__ram_block_free(FerryRamBlock *b); /* unmaps; NULL is a no-op */

/* Fault every page of the block in (MADV_POPULATE_WRITE), so that loading data later does not take a page fault
 * per page. Used by the destination ahead of the data. */
bool ferry__ram_block_populate(FerryRamBlock *b, FerryError **errp);
/* The same for pages [first, first + count) only; best effort (a failure only costs speed later). */
void ferry__ram_block_populate_range(FerryRamBlock *b, uint64_t first, uint64_t count);
/* Give the memory back and make it read as zero again (after a failed incoming migration). */
void ferry__ram_block_discard(FerryRamBlock *b);
/* Set in @bitmap (npages bits) every page that may hold data: pages the kernel has populated. Pages never
 * populated read as zero and need not be sent to a fresh destination. Falls back to "all pages" where the kernel
 * cannot tell; never fails. For a file block: every page over the file's data (a page of a file mapping not yet
 * faulted in reads as the file's content, not as zero), found with SEEK_DATA, plus the private copies this process
 * wrote; the pages over holes read as zero and are left out. */
bool ferry__ram_block_present_pages(FerryRamBlock *b, unsigned long *bitmap); /* false: it set no bit */
/* A source is about to read the block: map a file block's data pages in now, before the dirty tracker registers
 * the mapping (after that the kernel maps a page per fault). No-op for other blocks; never fails. */
void ferry__ram_block_map_for_reading(FerryRamBlock *b);

/*
 * Internal to src/ram: one PAGEMAP_SCAN walk over @b (ioctl flags @flags, pages matching all of @category_mask,
 * with the categories in @inverted negated, and any of @anyof_mask), setting the matching pages in @bitmap (if
 * not NULL) and counting them in *@found (if not NULL). The kernel skips empty page tables whole, so the walk
 * costs what is populated, not the block's size. Returns 0, an errno value, or -1 if the kernel stopped making
 * progress (*stuck_at: the block offset where).
 */
int ferry__pagemap_scan(int pagemap_fd, FerryRamBlock *b, uint64_t flags, uint64_t category_mask,
                        uint64_t inverted, uint64_t anyof_mask, unsigned long *bitmap, uint64_t *found,
                        uint64_t *stuck_at);
/* The same walk over pages [@first, @first + @count) of @b only, calling @region for each run of matching pages
 * (block page numbers), in address order, with the run's categories (those of the masks and @return_mask). */
int ferry__pagemap_scan_regions(int pagemap_fd, FerryRamBlock *b, uint64_t first, uint64_t count, uint64_t flags,
                                uint64_t category_mask, uint64_t inverted, uint64_t anyof_mask, uint64_t return_mask,
                                void (*region)(void *opaque, uint64_t first, uint64_t count, uint64_t categories),
                                void *opaque, uint64_t *stuck_at);

/*
 * zero.c: true if the @len bytes at @p are all zero (any length and alignment; @p may be NULL if @len is 0). Fastest
 * on page-sized, page-aligned buffers, and a buffer with data in its first or last bytes is answered at once.
 * Four paths give the same answer, the fastest the CPU has chosen on the first call: AVX-512 (F and BW), AVX2,
 * SSE2 and plain C (the only one on other architectures). FERRY_ZERO_IMPL=c|sse2|avx2|avx512 in the environment
 * caps them for the whole process; ferry__zero_limit caps them at run time, so that tests and benchmarks reach each
 * one (a path the CPU lacks is never used, whatever the limit).
 */
typedef enum FerryZeroImpl {
    FERRY_ZERO_C,      /* 64-bit words, every build */
    FERRY_ZERO_SSE2,   /* 16-byte vectors */
    FERRY_ZERO_AVX2,   /* 32-byte vectors */
    FERRY_ZERO_AVX512, /* 64-byte vectors, masked loads for short buffers */
} FerryZeroImpl;
bool ferry__buffer_is_zero(const void *p, size_t len);
/* Whether this CPU (and OS) has the path; the C path always is. */
bool ferry__zero_available(FerryZeroImpl impl);
/* Lets ferry__buffer_is_zero use paths up to @max only; returns the previous limit. Calls on other threads see the
 * old or the new path, both correct, but two threads must not set limits at once: for tests and benchmarks. */
FerryZeroImpl ferry__zero_limit(FerryZeroImpl max);

typedef struct FerryDirtyTracker FerryDirtyTracker;

/*
 * Arm a tracker of @kind over @blocks: from this call on, every write to them is reported by the next harvest.
 * FERRY_TRACKER_AUTO tries uffd-wp and falls back to none (the reason is kept, see ferry__tracker_note()).
 * Fails only if @kind was asked for explicitly and cannot work here.
 */
FerryDirtyTracker *ferry__tracker_start(FerryTrackerKind kind, FerryRamBlock **blocks, size_t nblocks,
                                        FerryError **errp);
/* The same with the host program's tracker (FERRY_TRACKER_HOST): @ops with @opaque, borrowed. Fails if @ops is NULL
 * (no host tracker was registered) or its start fails. */
FerryDirtyTracker *ferry__tracker_start_host(const FerryDirtyTrackerOps *ops, void *opaque, FerryRamBlock **blocks,
                                             size_t nblocks, FerryError **errp);
/* "uffd-wp", "explicit", "none" or the host tracker's name. */
const char *ferry__tracker_name(const FerryDirtyTracker *t);
/* Why a fallback was taken (NULL if none was). */
const char *ferry__tracker_note(const FerryDirtyTracker *t);
/* True for the "none" tracker: harvests tell nothing, the caller must resend everything with writers stopped. */
bool ferry__tracker_is_none(const FerryDirtyTracker *t);
/*
 * OR into @bitmap (b->npages bits) every page of @b written since the previous harvest of @b (or since start),
 * and re-arm those pages in the same step, so that a write that lands after this call is reported by the next
 * harvest. Read the pages only after harvesting them.
 */
bool ferry__tracker_harvest(FerryDirtyTracker *t, FerryRamBlock *b, unsigned long *bitmap, FerryError **errp);
/* The same, and *found false only if the harvest surely set no bit in @bitmap (so that a caller need not read a
 * bitmap it knows was empty before). */
bool ferry__tracker_harvest_found(FerryDirtyTracker *t, FerryRamBlock *b, unsigned long *bitmap, bool *found,
                                  FerryError **errp);
/* Disarm and free. Writers are never blocked by a stopped tracker. NULL is a no-op. */
void ferry__tracker_stop(FerryDirtyTracker *t);

/* Whether uffd-wp tracking works on this kernel; on false, *errp says why. */
bool ferry__tracker_uffd_wp_probe(FerryError **errp);

/* Destination: pages [@first, @first + @n) were written by this migration. Any thread. */
static inline void ferry__ram_block_note_written(FerryRamBlock *b, uint64_t first, uint64_t n)
{
    ferry__bitmap_set_range_atomic(b->recv_written, (size_t)first, (size_t)n);
}

/* Destination: make page @page read as zero, reading it only if it may hold data and writing it only if it does
 * (a page already zero stays as it is). */
static inline void ferry__ram_block_zero_page(FerryRamBlock *b, uint64_t page, size_t ps)
{
    const unsigned long bits = 8 * sizeof(unsigned long);
    unsigned long w = __atomic_load_n(&b->recv_written[page / bits], __ATOMIC_RELAXED);
    uint8_t *p = b->host + page * ps;
    if (((w >> (page % bits)) & 1) && !ferry__buffer_is_zero(p, ps)) {
        memset(p, 0, ps);
    }
}

/*
 * Destination, right before received data is written into [@p, @p + @len) of @b (page aligned): fault those pages
 * in with one MADV_POPULATE_WRITE rather than a page fault per page during the copy, which costs this machine
 * about 1.5 times the CPU (docs/memory.md, "Fresh memory"). Pages the populate thread reached first cost only
 * the walk. Nothing for a block that is populated whole, or a hugetlb one (whose faults are per huge page
 * already). Best effort: a failure leaves the faults to the copy. Any thread.
 */
void ferry__ram_block_prepare_write(FerryRamBlock *b, void *p, size_t len);

/* Destination: pages up to @end have arrived (recv_frontier only grows). Any thread. */
static inline void ferry__ram_block_note_received(FerryRamBlock *b, uint64_t end)
{
    uint64_t cur = __atomic_load_n(&b->recv_frontier, __ATOMIC_RELAXED);
    while (cur < end && !__atomic_compare_exchange_n(&b->recv_frontier, &cur, end, true, __ATOMIC_RELAXED,
                                                     __ATOMIC_RELAXED)) {
    }
}
#endif
