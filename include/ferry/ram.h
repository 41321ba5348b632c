/*
 * RAM blocks: the memory a host program asks ferry to migrate. The engine maps each block (anonymous and
 * private, a memfd, or a slice of a file; page aligned), the host program uses the returned pointer as its RAM, and the engine
 * tracks which pages are written. The list of blocks is fixed once a migration has started in either direction; blocks are freed with
 * the engine (ferry_migration_free). This header does not cover device state (see visitor.h).
 */
#ifndef FERRY_RAM_H
#define FERRY_RAM_H

#include "ferry/common.h"

/* Map and register a block of @size bytes (rounded up to the page size) named @name (unique, at most 255 bytes).
 * The memory reads as zero until written. */
FERRY_API FerryRamBlock *ferry_ram_block_new(FerryMigration *m, const char *name, uint64_t size, FerryError **errp);
/* The same backed by a memfd (QEMU's memory-backend-memfd): with @share the mapping is MAP_SHARED, and a local
 * migration in mode cpr-transfer passes the memfd to the destination instead of copying its pages. Without
 * @share it is a private mapping of the memfd and migrates like anonymous memory. */
FERRY_API FerryRamBlock *ferry_ram_block_new_memfd(FerryMigration *m, const char *name, uint64_t size, bool share,
                                                   FerryError **errp);
/* The same backed by a hugetlb memfd (QEMU's memory-backend-memfd with hugetlb=on, hugetlbsize=): pages of
 * @hugepage_size bytes, 0 for the host's default huge page size (see ferry_ram_hugepage_size). @size must be a
 * multiple of the huge page (refused otherwise, naming both), and the host must have enough free huge pages
 * (/sys/kernel/mm/hugepages/hugepages-<N>kB/nr_hugepages); they are reserved here. Such a block migrates as any
 * other, except with postcopy-ram, which is refused (the kernel would need whole huge pages placed at once).
 * With @share, mode cpr-transfer passes the memfd; the destination's block must have the same page size. */
FERRY_API FerryRamBlock *ferry_ram_block_new_hugetlb(FerryMigration *m, const char *name, uint64_t size, bool share,
                                                     uint64_t hugepage_size, FerryError **errp);
/* The same backed by a new temporary file in the directory @dir, unlinked at once (QEMU's memory-backend-file
 * with mem-path= a directory, e.g. a hugetlbfs mount such as /dev/hugepages). The block reads as zero. On
 * hugetlbfs its page size is the file system's (ferry_ram_block_page_size), @size must be a multiple of it and
 * postcopy-ram is refused as for ferry_ram_block_new_hugetlb; on tmpfs and hugetlbfs it behaves as a memfd (with
 * @share mode cpr-transfer passes it), elsewhere as a file block that is always copied. */
FERRY_API FerryRamBlock *ferry_ram_block_new_tmpfile(FerryMigration *m, const char *name, uint64_t size,
                                                     const char *dir, bool share, FerryError **errp);
/* The host's huge page size @requested (0: the default huge page size) in *@size; false, with an error listing the
 * sizes /sys/kernel/mm/hugepages offers, if it offers no such size (QEMU's hugetlbsize= check). */
FERRY_API bool ferry_ram_hugepage_size(uint64_t requested, uint64_t *size, FerryError **errp);
/* The same mapping bytes [@offset, @offset + @size) of the regular file @path (QEMU's memory-backend-file with
 * mem-path=; several blocks can map consecutive slices of one file). With @share the mapping is MAP_SHARED and writes
 * reach the file; without, it is MAP_PRIVATE and the file is only read. The file must be at least @offset + @size
 * (rounded up to the page size) bytes long and @offset page aligned; a short file is refused, not grown. On hugetlbfs
 * @offset and @size must be multiples of its huge page. The block starts with the file's content, so an outgoing
 * migration sends every page over the file's data (zero pages cheaply), not only the pages the kernel has populated;
 * pages over the file's holes read as zero and are not sent, like untouched anonymous memory. Such a block is always
 * copied, also in mode cpr-transfer (only memfds are passed). As a destination's RAM it is right only if the file
 * reads as zero: a source sends nothing for memory that reads as zero, and such pages keep the file's content here. */
FERRY_API FerryRamBlock *ferry_ram_block_new_file(FerryMigration *m, const char *name, uint64_t size,
                                                  const char *path, uint64_t offset, bool share, FerryError **errp);
/* Fault every page of the block in now, for writing (QEMU's -mem-prealloc / prealloc=on): a destination whose RAM
 * is preallocated takes no page fault while the data arrives. The content is unchanged (fresh blocks stay zero). */
FERRY_API bool ferry_ram_block_prealloc(FerryRamBlock *b, FerryError **errp);
/* The same with the block split between @threads threads (1 to FERRY_PREALLOC_THREADS_MAX; QEMU's
 * prealloc-threads): faulting in is CPU work in the kernel, and this is the caller's thread plus @threads - 1. */
#define FERRY_PREALLOC_THREADS_MAX 64
FERRY_API bool ferry_ram_block_prealloc_threads(FerryRamBlock *b, unsigned threads, FerryError **errp);
/* Whether the block is shared memory (a memfd mapped MAP_SHARED; false for file blocks, even with share). */
FERRY_API bool ferry_ram_block_shared(const FerryRamBlock *b);
FERRY_API void *ferry_ram_block_host(const FerryRamBlock *b);
/* The page size of the block's backing: ferry_ram_page_size(), or its huge page size (hugetlb memfd, hugetlbfs). */
FERRY_API uint64_t ferry_ram_block_page_size(const FerryRamBlock *b);
FERRY_API uint64_t ferry_ram_block_size(const FerryRamBlock *b);
FERRY_API const char *ferry_ram_block_name(const FerryRamBlock *b);
FERRY_API size_t ferry_ram_page_size(void);

/*
 * Explicit dirty marking, for writers the kernel cannot see (a device model writing through another mapping, a
 * peer process) or for hosts that choose the explicit tracker. Safe from any thread, lock-free. The range is
 * clamped to the block.
 */
FERRY_API void ferry_ram_mark_dirty(FerryRamBlock *b, uint64_t offset, uint64_t len);

/*
 * The thread that runs vCPU (or worker) @index is @tid (gettid()). A destination in postcopy counts the time each
 * such thread waits for missing pages (query-migrate's postcopy-vcpu-blocktime, with the postcopy-blocktime
 * capability); other threads' waits count as non-vCPU. Any thread, any time; tid 0 forgets the index.
 */
FERRY_API void ferry_migration_set_vcpu_thread(FerryMigration *m, unsigned index, int tid);

typedef enum FerryTrackerKind {
    FERRY_TRACKER_AUTO = 0,  /* userfaultfd write-protect if it works here, else the stop-and-copy fallback */
    FERRY_TRACKER_UFFD_WP,   /* require userfaultfd async write-protect + PAGEMAP_SCAN; migrate fails without it */
    FERRY_TRACKER_EXPLICIT,  /* the host marks every write with ferry_ram_mark_dirty() */
    FERRY_TRACKER_NONE,      /* no tracking: RAM is sent again, whole, with the workload stopped */
    FERRY_TRACKER_HOST,      /* the host program's own tracker (ferry_migration_set_dirty_tracker_ops) */
} FerryTrackerKind;

/* Choose the dirty tracker used by outgoing migrations. Explicit marks are always honoured in addition. */
FERRY_API void ferry_migration_set_dirty_tracker(FerryMigration *m, FerryTrackerKind kind);
/* "auto", "uffd-wp", "explicit", "none" -> kind; false on an unknown name ("host" is not a name: a host tracker
 * comes with its ops). */
FERRY_API bool ferry_tracker_kind_parse(const char *name, FerryTrackerKind *kind);

/*
 * A dirty tracker the host program provides, for writes that only it can see being recorded: a VMM's guest
 * writes RAM through KVM, and KVM records them in its dirty log. ferry calls the ops on the migration thread of
 * an outgoing migration; explicit marks (ferry_ram_mark_dirty) are merged into every harvest as with the other
 * kinds. The ops must not call back into the migration.
 */
typedef struct FerryDirtyTrackerOps {
    const char *name; /* what query-migrate shows as dirty-tracker, e.g. "kvm-dirty-log"; static storage */
    /* Arm: from this call on, every write to the host's RAM blocks must be reported by a later harvest. */
    bool (*start)(void *opaque, FerryError **errp);
    /*
     * OR into @bitmap the pages of @b written since the previous harvest of @b (or since start), and re-arm them
     * in the same step, so that a write after this call is reported by the next harvest (ferry reads a page only
     * after the harvest that reported it). Page i of the block is bit i % BITS of @bitmap[i / BITS], BITS being
     * the bits of an unsigned long: the layout of KVM's dirty bitmap. The bitmap has room for every page of @b.
     */
    bool (*harvest)(void *opaque, FerryRamBlock *b, unsigned long *bitmap, FerryError **errp);
    /* Disarm. Never fails (a failure to disarm costs the writers speed, not correctness). May be NULL. */
    void (*stop)(void *opaque);
} FerryDirtyTrackerOps;

/* Register the host's tracker (@ops is borrowed and must outlive @m) and choose FERRY_TRACKER_HOST. */
FERRY_API void ferry_migration_set_dirty_tracker_ops(FerryMigration *m, const FerryDirtyTrackerOps *ops,
                                                     void *opaque);
/* A sentence on why the host chose its tracker (a probe that failed and the fallback taken), shown by
 * query-migrate as dirty-tracker-note before the engine's own note; NULL clears it. Copied. */
FERRY_API void ferry_migration_set_dirty_tracker_note(FerryMigration *m, const char *note);

#endif
