/*
 * The destination's userfaultfd layer for postcopy (uffd-missing.c): RAM blocks registered for MISSING faults, so
 * that a thread touching a page that has not arrived yet sleeps in the kernel until the page is placed, and the
 * fault reaches us as a message (block, page, thread). Placing (UFFDIO_COPY / UFFDIO_ZEROPAGE) fills a page and
 * wakes its waiters atomically: no thread ever sees a half-written page. Dropping makes pages missing again
 * (postcopy's discard of pages the source dirtied after sending them).
 *
 * Supported blocks: anonymous private, memfd (shared or private) and shared file blocks on tmpfs. Refused, with
 * the reason: file blocks on other file systems (the kernel serves MISSING faults only for anonymous memory,
 * shmem and hugetlbfs), private file mappings (making a page missing would mean punching it out of the user's
 * file), hugetlbfs files and adopted blocks (their memory is the source's memfd under cpr-transfer).
 *
 * This file does not request pages, decide what to send or account fault latency (blocktime.h); the engine does.
 * Thread use: place, place_zero and wake from any thread; read_faults from one thread at a time.
 */
#ifndef FERRY_RAM_POSTCOPY_H
#define FERRY_RAM_POSTCOPY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ferry/error.h"
#include "ram/ram.h"

typedef struct FerryUffd FerryUffd;

/* Whether postcopy can work on these blocks here: opens a userfaultfd, registers each block for MISSING faults and
 * unregisters again. On false, *errp names the block and the reason. */
bool ferry__uffd_probe(FerryRamBlock **blocks, size_t n, FerryError **errp);

/*
 * Open a userfaultfd (O_CLOEXEC | O_NONBLOCK; with UFFD_FEATURE_THREAD_ID and UFFD_FEATURE_MISSING_SHMEM where the
 * kernel has them) and register every block for MISSING faults. The fd serves faults taken in kernel mode too (a
 * read(2) into a block, KVM reaching guest memory): it is opened without UFFD_USER_MODE_ONLY, which needs
 * CAP_SYS_PTRACE or vm.unprivileged_userfaultfd=1 for the syscall, else access to /dev/userfaultfd. @blocks must
 * stay mapped until ferry__uffd_free.
 */
FerryUffd *ferry__uffd_new(FerryRamBlock **blocks, size_t n, FerryError **errp);
/* Unregister, wake every thread still blocked in a fault (it retries and, the range no longer registered, finds the
 * page or faults normally: a missing page then reads as zero, or as the memfd's content), close. NULL is a no-op. */
void ferry__uffd_free(FerryUffd *u);
/* Readable (POLLIN) when fault messages are pending. */
int ferry__uffd_fd(const FerryUffd *u);

/*
 * Drop pages [@first, @first + @n) of @b so that the next access to each faults as missing (while registered):
 * MADV_DONTNEED on the mapping, and for a memfd block (shared or private) or a shared tmpfs file block also a hole
 * punched in the file (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE) over the same pages, so that the page cache
 * does not keep the old content. Refuses, naming why, the blocks whose pages cannot be made missing (see above)
 * and a range outside the block. No thread may use the pages meanwhile. Does not need a FerryUffd.
 */
bool ferry__ram_block_drop_pages(FerryRamBlock *b, uint64_t first, uint64_t n, FerryError **errp);

/*
 * Place @n pages at page @first of @b from @src (n pages, any alignment) atomically (UFFDIO_COPY), waking the
 * threads waiting on them. Pages already present (placed by another thread, or by a fault resolved without us)
 * are skipped, not an error, and their waiters woken; *@placed (may be NULL) gets how many pages this call placed.
 * A kernel busy changing the mapping (EAGAIN) is retried. @b must be one of the registered blocks.
 */
bool ferry__uffd_place(FerryUffd *u, FerryRamBlock *b, uint64_t first, uint64_t n, const void *src, uint64_t *placed,
                       FerryError **errp);
/* The same for zero pages: UFFDIO_ZEROPAGE where the registration offers it, else UFFDIO_COPY from zeros. */
bool ferry__uffd_place_zero(FerryUffd *u, FerryRamBlock *b, uint64_t first, uint64_t n, uint64_t *placed,
                            FerryError **errp);
/* Wake the threads waiting on pages [@first, @first + @n) of @b (UFFDIO_WAKE): for pages made present by other
 * means. Waking a page nobody waits on is harmless. */
void ferry__uffd_wake(FerryUffd *u, FerryRamBlock *b, uint64_t first, uint64_t n);

typedef struct FerryUffdFault {
    FerryRamBlock *block;
    uint64_t page;  /* page index in block */
    uint32_t tid;   /* the faulting thread (gettid()); 0 if the kernel gives none */
    bool write;     /* a write fault (else a read) */
} FerryUffdFault;
/*
 * Read the pending fault messages without blocking, up to @max (page faults only; other messages are ignored).
 * Returns how many were stored in @out (0: none pending), or -1 with *errp set: a read error, or a fault outside
 * every registered block (named by its address; the faults read along with it are dropped, and their threads stay
 * blocked until ferry__uffd_free: the caller is expected to give up).
 */
int ferry__uffd_read_faults(FerryUffd *u, FerryUffdFault *out, int max, FerryError **errp);

/* Tests only: make ferry__uffd_place_zero use its UFFDIO_COPY fallback even where UFFDIO_ZEROPAGE is offered. */
void ferry__uffd_test_disable_zeropage(FerryUffd *u);

#endif
