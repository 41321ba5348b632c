/*
 * Postcopy's userfaultfd on the destination (postcopy.h): MISSING-mode registration of RAM blocks, placing pages
 * with UFFDIO_COPY / UFFDIO_ZEROPAGE, dropping pages back to missing, and reading fault messages. It neither asks
 * the source for pages nor keeps statistics (blocktime.c); the engine combines them.
 *
 * Unlike the uffd-wp tracker (tracker-uffd.c), whose write-protect faults are resolved inside the kernel, a MISSING
 * fault puts the thread to sleep until we place the page. A userfaultfd opened with UFFD_USER_MODE_ONLY would turn
 * a fault taken in kernel mode (a syscall writing into the block, KVM reaching guest memory through the host
 * mapping) into SIGBUS or EFAULT instead, so this file opens it without that flag.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/magic.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "ram/postcopy.h"
#include "ram/ram.h"
#include "ram/uffd-compat.h"
#include "util/util.h"

/* Zero pages given to UFFDIO_COPY at a time when UFFDIO_ZEROPAGE is not offered. */
#define ZERO_CHUNK_PAGES 16
/* EAGAIN without progress (the mapping changing under us) is retried this many times before giving up. */
#define EAGAIN_RETRIES 100000
/* Fault messages read per read(2). */
#define MSG_BATCH 64

typedef struct UffdReg {
    FerryRamBlock *b;
    uint64_t start, end; /* the block's mapping */
    uint64_t ioctls;     /* what UFFDIO_REGISTER offered on it (1 << _UFFDIO_*) */
} UffdReg;

struct FerryUffd {
    int fd;
    uint64_t features;  /* enabled by UFFDIO_API */
    UffdReg *regs;      /* sorted by start */
    size_t nregs;       /* regs[0..nregs) are registered */
    bool no_zeropage;   /* tests: use the UFFDIO_COPY fallback */
    uint8_t *zeros;     /* ZERO_CHUNK_PAGES of zeros (a read-only anonymous mapping), made on first need */
};

/* A userfaultfd that serves kernel-mode faults: the syscall, or /dev/userfaultfd where the syscall is refused
 * (access to the node is then decided by its permissions). */
static int uffd_open(FerryError **errp)
{
#ifdef FERRY_HAVE_VALGRIND
    /* Valgrind runs one thread at a time and a thread asleep in a MISSING fault keeps that turn: the thread that
     * would place the page never runs, and the process hangs. Better refused with the reason. */
    if (RUNNING_ON_VALGRIND) {
        ferry_error_setg(errp, "userfaultfd for postcopy cannot work under valgrind (it runs one thread at a time)");
        return -1;
    }
#endif
    return ferry__userfaultfd_open(0, errp);
}

/* The access flags of the mapping at @host, from /proc/self/maps: 's' (shared) or 'p' (private), 0 if not found. */
static char mapping_kind(const void *host)
{
    FILE *f = fopen("/proc/self/maps", "re");
    if (!f) {
        return 0;
    }
    uintptr_t want = (uintptr_t)host;
    char line[512];
    char kind = 0;
    while (fgets(line, sizeof(line), f)) {
        uintptr_t lo, hi;
        char perms[5];
        if (sscanf(line, "%" SCNxPTR "-%" SCNxPTR " %4s", &lo, &hi, perms) == 3 && lo <= want && want < hi) {
            kind = perms[3];
            break;
        }
        /* A line longer than the buffer (a long path): skip its rest. */
        while (!strchr(line, '\n') && fgets(line, sizeof(line), f)) {
        }
    }
    fclose(f);
    return kind;
}

/* Whether the pages of @b can be made missing and served by a MISSING-mode userfaultfd; if not, why. */
static bool block_supported(FerryRamBlock *b, FerryError **errp)
{
    if (b->adopted) {
        ferry_error_setg(errp,
                         "RAM block '%s': its memory is the source's memfd (cpr-transfer), postcopy cannot drop "
                         "or place its pages",
                         b->name);
        return false;
    }
    if (b->hugetlb) {
        /* A fault in a hugetlb mapping is resolved only by placing the whole huge page (UFFDIO_COPY of its
         * size); the fault thread and the stream place 4 KiB pages. */
        ferry_error_setg(errp, "RAM block '%s': it is backed by %" PRIu64 "-byte huge pages (hugetlb), which "
                         "postcopy does not support", b->name, b->page_size);
        return false;
    }
    if (!b->file) {
        return true; /* anonymous or a memfd (shmem) */
    }
    struct statfs sfs;
    if (fstatfs(b->file_fd, &sfs) != 0) {
        ferry_error_setg_errno(errp, errno, "RAM block '%s': fstatfs of its file", b->name);
        return false;
    }
    if ((unsigned long)sfs.f_type == HUGETLBFS_MAGIC) {
        ferry_error_setg(errp, "RAM block '%s': its file is on hugetlbfs, which postcopy does not support here",
                         b->name);
        return false;
    }
    if ((unsigned long)sfs.f_type != TMPFS_MAGIC) {
        ferry_error_setg(errp,
                         "RAM block '%s': its file is not on tmpfs/shmem (file system magic 0x%lx); userfaultfd "
                         "serves missing pages only of anonymous memory, shmem and hugetlbfs",
                         b->name, (unsigned long)sfs.f_type);
        return false;
    }
    char kind = mapping_kind(b->host);
    if (kind != 's') {
        ferry_error_setg(errp,
                         "RAM block '%s': %s; a page of a private file mapping cannot be made missing without "
                         "punching it out of the file, which the mapping must never write",
                         b->name, kind == 'p' ? "it is a private file mapping" : "its mapping is not in /proc/self/maps");
        return false;
    }
    return true;
}

static bool block_is_shmem(const FerryRamBlock *b)
{
    return b->fd >= 0 || b->file;
}

static int reg_cmp(const void *a, const void *b)
{
    const UffdReg *x = a, *y = b;
    return x->start < y->start ? -1 : x->start > y->start;
}

static void unregister_all(FerryUffd *u)
{
    for (size_t i = 0; i < u->nregs; i++) {
        struct uffdio_range r = {.start = u->regs[i].start, .len = u->regs[i].end - u->regs[i].start};
        /* Wake first: UNREGISTER wakes too on current kernels, but a thread left asleep would hang for good. */
        (void)ioctl(u->fd, UFFDIO_WAKE, &r);
        /* A failure leaves the range registered to an fd that is closed right after, which disarms it too. */
        (void)ioctl(u->fd, UFFDIO_UNREGISTER, &r);
    }
    u->nregs = 0;
}

void ferry__uffd_free(FerryUffd *u)
{
    if (!u) {
        return;
    }
    unregister_all(u);
    close(u->fd);
    if (u->zeros) {
        munmap(u->zeros, ZERO_CHUNK_PAGES * ferry_ram_page_size());
    }
    free(u->regs);
    free(u);
}

FerryUffd *ferry__uffd_new(FerryRamBlock **blocks, size_t n, FerryError **errp)
{
    bool need_shmem = false;
    for (size_t i = 0; i < n; i++) {
        if (!block_supported(blocks[i], errp)) {
            return NULL;
        }
        need_shmem |= block_is_shmem(blocks[i]);
    }
    uint64_t supported;
    if (!ferry__userfaultfd_features(&supported, errp)) {
        return NULL;
    }
    if (need_shmem && !(supported & UFFD_FEATURE_MISSING_SHMEM)) {
        for (size_t i = 0; i < n; i++) {
            if (block_is_shmem(blocks[i])) {
                ferry_error_setg(errp, "RAM block '%s': this kernel's userfaultfd lacks MISSING_SHMEM (Linux 4.11+)",
                                 blocks[i]->name);
                return NULL;
            }
        }
    }

    FerryUffd *u = ferry__xcalloc(1, sizeof(*u));
    u->fd = uffd_open(errp);
    if (u->fd < 0) {
        free(u);
        return NULL;
    }
    struct uffdio_api api = {
        .api = UFFD_API,
        .features = supported & (UFFD_FEATURE_THREAD_ID | (need_shmem ? UFFD_FEATURE_MISSING_SHMEM : 0)),
    };
    if (ioctl(u->fd, UFFDIO_API, &api) != 0) {
        ferry_error_setg_errno(errp, errno, "UFFDIO_API with features 0x%llx", (unsigned long long)api.features);
        goto fail;
    }
    u->features = api.features;

    u->regs = ferry__xcalloc(n ? n : 1, sizeof(*u->regs));
    for (size_t i = 0; i < n; i++) {
        FerryRamBlock *b = blocks[i];
        struct uffdio_register reg = {
            .range = {.start = (uint64_t)(uintptr_t)b->host, .len = b->size},
            .mode = UFFDIO_REGISTER_MODE_MISSING,
        };
        if (ioctl(u->fd, UFFDIO_REGISTER, &reg) != 0) {
            int e = errno;
            ferry_error_setg_errno(errp, e, "RAM block '%s': UFFDIO_REGISTER for missing pages%s", b->name,
                                   e == EBUSY ? " (already registered with another userfaultfd, e.g. a dirty tracker)"
                                   : e == EINVAL ? " (the kernel does not serve missing pages of this memory)"
                                                 : "");
            goto fail;
        }
        u->regs[u->nregs++] = (UffdReg){
            .b = b, .start = reg.range.start, .end = reg.range.start + b->size, .ioctls = reg.ioctls};
        if (!(reg.ioctls & (1ULL << _UFFDIO_COPY))) {
            ferry_error_setg(errp, "RAM block '%s': the kernel offers no UFFDIO_COPY on it (ioctls 0x%llx)", b->name,
                             (unsigned long long)reg.ioctls);
            goto fail;
        }
    }
    qsort(u->regs, u->nregs, sizeof(*u->regs), reg_cmp);
    return u;

fail:
    ferry__uffd_free(u);
    return NULL;
}

bool ferry__uffd_probe(FerryRamBlock **blocks, size_t n, FerryError **errp)
{
    FerryUffd *u = ferry__uffd_new(blocks, n, errp);
    ferry__uffd_free(u);
    return u != NULL;
}

int ferry__uffd_fd(const FerryUffd *u)
{
    return u->fd;
}

void ferry__uffd_test_disable_zeropage(FerryUffd *u)
{
    u->no_zeropage = true;
}

bool ferry__ram_block_drop_pages(FerryRamBlock *b, uint64_t first, uint64_t n, FerryError **errp)
{
    if (first > b->npages || n > b->npages - first) {
        ferry_error_setg(errp, "RAM block '%s': pages %" PRIu64 "+%" PRIu64 " lie outside its %" PRIu64 " pages",
                         b->name, first, n, b->npages);
        return false;
    }
    if (!block_supported(b, errp)) {
        return false;
    }
    if (n == 0) {
        return true;
    }
    uint64_t ps = ferry_ram_page_size();
    uint64_t off = first * ps, len = n * ps;
    /* The mapping first, then the file: a thread that read the page between the two would map the old page-cache
     * page again, and the punch unmaps that as well (it only spares private copies, which the madvise dropped). */
    if (madvise(b->host + off, (size_t)len, MADV_DONTNEED) != 0) {
        ferry_error_setg_errno(errp, errno, "RAM block '%s': MADV_DONTNEED of pages %" PRIu64 "+%" PRIu64, b->name,
                               first, n);
        return false;
    }
    int fd = b->fd >= 0 ? b->fd : b->file ? b->file_fd : -1;
    uint64_t file_off = b->file ? b->file_offset + off : off;
    if (fd >= 0 && fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)file_off, (off_t)len) != 0) {
        ferry_error_setg_errno(errp, errno, "RAM block '%s': punching pages %" PRIu64 "+%" PRIu64 " out of its %s",
                               b->name, first, n, b->file ? "file" : "memfd");
        return false;
    }
    return true;
}

static const UffdReg *find_reg(const FerryUffd *u, const FerryRamBlock *b)
{
    for (size_t i = 0; i < u->nregs; i++) {
        if (u->regs[i].b == b) {
            return &u->regs[i];
        }
    }
    return NULL;
}

static const UffdReg *find_reg_addr(const FerryUffd *u, uint64_t addr)
{
    size_t lo = 0, hi = u->nregs;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (addr < u->regs[mid].start) {
            hi = mid;
        } else if (addr >= u->regs[mid].end) {
            lo = mid + 1;
        } else {
            return &u->regs[mid];
        }
    }
    return NULL;
}

static const UffdReg *check_range(const FerryUffd *u, const FerryRamBlock *b, uint64_t first, uint64_t n,
                                  const char *what, FerryError **errp)
{
    const UffdReg *r = find_reg(u, b);
    if (!r) {
        ferry_error_setg(errp, "RAM block '%s' is not registered with this userfaultfd (%s)", b->name, what);
        return NULL;
    }
    if (first > b->npages || n > b->npages - first) {
        ferry_error_setg(errp, "RAM block '%s': %s of pages %" PRIu64 "+%" PRIu64 " outside its %" PRIu64 " pages",
                         b->name, what, first, n, b->npages);
        return NULL;
    }
    return r;
}

static void wake_bytes(FerryUffd *u, uint64_t start, uint64_t len)
{
    struct uffdio_range r = {.start = start, .len = len};
    (void)ioctl(u->fd, UFFDIO_WAKE, &r);
}

/*
 * One fill ioctl (UFFDIO_COPY or UFFDIO_ZEROPAGE) over [dst, dst + len), resumed past partial progress. Both
 * report bytes filled in a field of their argument: on a partial fill the ioctl fails with EAGAIN and the field
 * holds the bytes done; a page found present fails with EEXIST (the field holds -EEXIST, or on some kernels the
 * bytes done before it), and is skipped and woken.
 */
static bool fill(FerryUffd *u, FerryRamBlock *b, uint64_t first, uint64_t len, const uint8_t *src, uint64_t *pages,
                 FerryError **errp)
{
    uint64_t ps = ferry_ram_page_size();
    uint64_t dst = (uint64_t)(uintptr_t)b->host + first * ps;
    uint64_t done = 0;
    unsigned stalls = 0;
    while (done < len) {
        int r, e;
        int64_t filled;
        if (src) {
            struct uffdio_copy c = {.dst = dst + done, .src = (uint64_t)(uintptr_t)(src + done), .len = len - done};
            r = ioctl(u->fd, UFFDIO_COPY, &c);
            e = errno;
            filled = r == 0 ? (int64_t)(len - done) : c.copy;
        } else {
            struct uffdio_zeropage z = {.range = {.start = dst + done, .len = len - done}};
            r = ioctl(u->fd, UFFDIO_ZEROPAGE, &z);
            e = errno;
            filled = r == 0 ? (int64_t)(len - done) : z.zeropage;
        }
        if (filled > 0) {
            done += (uint64_t)filled;
            *pages += (uint64_t)filled / ps;
            stalls = 0;
        }
        if (r == 0 || e == EAGAIN) {
            if (r != 0 && filled <= 0) {
                if (++stalls > EAGAIN_RETRIES) {
                    ferry_error_setg(errp, "RAM block '%s': %s at page %" PRIu64 " kept failing with EAGAIN",
                                     b->name, src ? "UFFDIO_COPY" : "UFFDIO_ZEROPAGE", first + done / ps);
                    return false;
                }
                sched_yield();
            }
            continue;
        }
        if (e == EEXIST) {
            wake_bytes(u, dst + done, ps);
            done += ps;
            continue;
        }
        ferry_error_setg_errno(errp, e, "RAM block '%s': %s at page %" PRIu64, b->name,
                               src ? "UFFDIO_COPY" : "UFFDIO_ZEROPAGE", first + done / ps);
        return false;
    }
    return true;
}

bool ferry__uffd_place(FerryUffd *u, FerryRamBlock *b, uint64_t first, uint64_t n, const void *src, uint64_t *placed,
                       FerryError **errp)
{
    uint64_t pages = 0;
    if (placed) {
        *placed = 0;
    }
    if (!check_range(u, b, first, n, "placing", errp)) {
        return false;
    }
    bool ok = n == 0 || fill(u, b, first, n * ferry_ram_page_size(), src, &pages, errp);
    if (placed) {
        *placed = pages;
    }
    return ok;
}

bool ferry__uffd_place_zero(FerryUffd *u, FerryRamBlock *b, uint64_t first, uint64_t n, uint64_t *placed,
                            FerryError **errp)
{
    uint64_t pages = 0;
    if (placed) {
        *placed = 0;
    }
    const UffdReg *r = check_range(u, b, first, n, "placing zero pages", errp);
    if (!r) {
        return false;
    }
    uint64_t ps = ferry_ram_page_size();
    bool ok = true;
    if (n == 0) {
        /* nothing */
    } else if (!u->no_zeropage && (r->ioctls & (1ULL << _UFFDIO_ZEROPAGE))) {
        ok = fill(u, b, first, n * ps, NULL, &pages, errp);
    } else {
        uint8_t *zeros = __atomic_load_n(&u->zeros, __ATOMIC_ACQUIRE);
        if (!zeros) {
            /* Never written, so every page of it is the kernel's zero page: costs no memory. */
            zeros = mmap(NULL, ZERO_CHUNK_PAGES * ps, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (zeros == MAP_FAILED) {
                ferry_error_setg_errno(errp, errno, "RAM block '%s': mapping a zero buffer", b->name);
                return false;
            }
            uint8_t *expected = NULL;
            if (!__atomic_compare_exchange_n(&u->zeros, &expected, zeros, false, __ATOMIC_ACQ_REL,
                                             __ATOMIC_ACQUIRE)) {
                munmap(zeros, ZERO_CHUNK_PAGES * ps); /* another thread made one first */
                zeros = expected;
            }
        }
        for (uint64_t p = 0; ok && p < n; p += ZERO_CHUNK_PAGES) {
            uint64_t k = FERRY_MIN((uint64_t)ZERO_CHUNK_PAGES, n - p);
            ok = fill(u, b, first + p, k * ps, zeros, &pages, errp);
        }
    }
    if (placed) {
        *placed = pages;
    }
    return ok;
}

void ferry__uffd_wake(FerryUffd *u, FerryRamBlock *b, uint64_t first, uint64_t n)
{
    if (!check_range(u, b, first, n, "waking", NULL) || n == 0) {
        return;
    }
    uint64_t ps = ferry_ram_page_size();
    wake_bytes(u, (uint64_t)(uintptr_t)b->host + first * ps, n * ps);
}

int ferry__uffd_read_faults(FerryUffd *u, FerryUffdFault *out, int max, FerryError **errp)
{
    uint64_t ps = ferry_ram_page_size();
    struct uffd_msg msgs[MSG_BATCH];
    int stored = 0;
    uint64_t stray = 0;
    bool bad = false;
    while (stored < max) {
        size_t want = FERRY_MIN((size_t)(max - stored), (size_t)MSG_BATCH);
        ssize_t r = read(u->fd, msgs, want * sizeof(msgs[0]));
        if (r < 0) {
            if (errno == EINTR) {
                continue;
            }
            if (errno == EAGAIN) {
                break;
            }
            ferry_error_setg_errno(errp, errno, "reading userfaultfd messages");
            return -1;
        }
        size_t got = (size_t)r / sizeof(msgs[0]);
        for (size_t i = 0; i < got; i++) {
            if (msgs[i].event != UFFD_EVENT_PAGEFAULT) {
                continue;
            }
            uint64_t addr = msgs[i].arg.pagefault.address;
            const UffdReg *reg = find_reg_addr(u, addr);
            if (!reg) {
                if (!bad) {
                    stray = addr;
                }
                bad = true;
                continue;
            }
            out[stored++] = (FerryUffdFault){
                .block = reg->b,
                .page = (addr - reg->start) / ps,
                .tid = (u->features & UFFD_FEATURE_THREAD_ID) ? msgs[i].arg.pagefault.feat.ptid : 0,
                .write = (msgs[i].arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WRITE) != 0,
            };
        }
        if (got < want) {
            break; /* drained */
        }
    }
    if (bad) {
        ferry_error_setg(errp, "userfaultfd reported a fault at 0x%" PRIx64 ", outside every registered RAM block",
                         stray);
        return -1;
    }
    return stored;
}
