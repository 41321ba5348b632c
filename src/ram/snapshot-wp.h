/*
 * Write protection for a background snapshot (QEMU's background-snapshot capability), internal to libferry: the
 * snapshot is RAM as it was when ferry__wp_snapshot_start returned, taken while the workload keeps writing. The
 * pages present then are write-protected with a userfaultfd in synchronous write-protect mode; a writer that
 * touches one blocks in the kernel until this module's fault thread has saved the page's old contents (through the
 * caller's callback) and lifted the protection. The caller's own thread (the migration thread) meanwhile walks all
 * pages, claiming, saving and releasing those still to be saved. Every page present at start is saved exactly once,
 * by whichever side claims it first. Pages not present at start read as zero in the snapshot and are never
 * protected nor saved.
 *
 * This is not the dirty tracker (tracker-uffd.c, asynchronous write-protect, which nobody waits on) and must not
 * run over the same blocks at the same time: a range registers with one userfaultfd only. It sends nothing and
 * knows no stream format; the callback and the caller do.
 *
 * The workload must not write to the blocks during ferry__wp_snapshot_start (QEMU stops the VM around it): the
 * pages are scanned, then protected, and a page written in between would be in neither state. It must not discard
 * pages (MADV_DONTNEED, balloon) before they are saved either: a discarded anonymous page loses its protection and
 * its contents, and the saver would read zeros (QEMU disables discards during a background snapshot).
 */
#ifndef FERRY_RAM_SNAPSHOT_WP_H
#define FERRY_RAM_SNAPSHOT_WP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ferry/error.h"
#include "ram/ram.h"

typedef struct FerryWpSnapshot FerryWpSnapshot;

/*
 * Called on the fault thread, concurrently with the saver, for pages [first, first + n) of block @bi that a writer
 * is about to change: save them now (they are still protected, so their contents are the snapshot's). The writer
 * waits meanwhile, so be quick; never write to a protected page of the blocks from here (the fault thread is the
 * one that would serve that fault), and never wait for the thread that calls ferry__wp_snapshot_stop. Returns false
 * on failure (the callee keeps its own error); the module then unprotects everything so the workload goes on, and
 * ferry__wp_snapshot_failed() turns true.
 */
typedef bool (*FerryWpSaveFn)(void *opaque, size_t bi, FerryRamBlock *b, uint64_t first, uint64_t n);

/*
 * Register @blocks (@n of them, borrowed until stop), find the pages present now (ferry__ram_block_present_pages,
 * the migration source's notion for its first pass), write-protect exactly those, and start the fault thread.
 * Refuses, naming the block and the reason, what cannot be protected: an adopted block (the source's memfd of a
 * cpr-transfer), a memfd, shmem file or hugetlb block on a kernel without UFFD_FEATURE_WP_HUGETLBFS_SHMEM (Linux
 * 6.1+), memory the kernel does not write-protect (a file on a disk file system), a block already registered with
 * another userfaultfd. Needs userfaultfd write-protect (Linux 5.7+ for anonymous memory) and the right to serve
 * faults taken in kernel mode (CAP_SYS_PTRACE, vm.unprivileged_userfaultfd=1, or access to /dev/userfaultfd), so
 * that a read(2) into RAM or KVM's access through the host mapping waits like any writer.
 *
 * Blocks of huge pages (b->hugetlb) are protected, claimed and saved in whole huge pages; see
 * ferry__wp_snapshot_unit.
 */
FerryWpSnapshot *ferry__wp_snapshot_start(FerryRamBlock **blocks, size_t n, FerryWpSaveFn save, void *opaque,
                                          FerryError **errp);

/*
 * Saver side: claim up to @max consecutive pages of block @bi from @first on that are still to be saved (stops at
 * the first page that is not). Returns how many were claimed (0: page @first is not to be saved, or the snapshot
 * failed). The caller saves them, then calls release with the same range. In a block of huge pages, @first must be
 * the first page of a huge page (else nothing is claimed) and whole huge pages are claimed: @max is rounded down to
 * whole ones, but at least one is claimed, so the answer may exceed a @max smaller than a huge page.
 */
uint64_t ferry__wp_snapshot_claim(FerryWpSnapshot *w, size_t bi, uint64_t first, uint64_t max);
/* Lift the protection of claimed pages [first, first + n), which wakes writers waiting on them. */
void ferry__wp_snapshot_release(FerryWpSnapshot *w, size_t bi, uint64_t first, uint64_t n);
/* The next page >= @from of block @bi still to be saved, or the block's npages if none (or the snapshot failed).
 * In a block of huge pages, @from is first rounded down to its huge page, so the answer is a huge page's first. */
uint64_t ferry__wp_snapshot_next(FerryWpSnapshot *w, size_t bi, uint64_t from);
/* Pages (4 KiB) per unit of protection of block @bi: 1, or the huge page's for a block of huge pages. */
uint64_t ferry__wp_snapshot_unit(const FerryWpSnapshot *w, size_t bi);

/* Pages present at start (to save in all), and pages saved by the fault thread so far (for writes that waited). */
uint64_t ferry__wp_snapshot_total(const FerryWpSnapshot *w);
uint64_t ferry__wp_snapshot_faults(const FerryWpSnapshot *w);
/* A save callback failed, or this module could not read faults or lift a protection: the snapshot is not
 * complete. Everything has been unprotected already, and claim/next find nothing more to save. */
bool ferry__wp_snapshot_failed(const FerryWpSnapshot *w);
/* Why this module failed (a userfaultfd error), NULL if it did not or only the callback failed. Valid until stop. */
const char *ferry__wp_snapshot_failure(const FerryWpSnapshot *w);

/*
 * Unprotect whatever is still protected, stop the fault thread (after its callback in progress returns),
 * unregister and free. NULL is a no-op. Safe after a failure and in the middle (a cancel: what was not saved yet
 * is simply dropped). Not concurrently with claim or release.
 */
void ferry__wp_snapshot_stop(FerryWpSnapshot *w);

#endif
