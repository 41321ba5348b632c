/*
 * The uffd-wp dirty tracker: userfaultfd in asynchronous write-protect mode plus PAGEMAP_SCAN (Linux 6.7+).
 *
 * Start opens a userfaultfd with UFFD_FEATURE_WP_ASYNC (a write to a protected page is resolved inside the kernel
 * by dropping the protection, so no thread ever waits on us) and UFFD_FEATURE_WP_UNPOPULATED (without it the
 * kernel refuses PAGEMAP_SCAN's write-protecting walk on anonymous memory), registers every block in
 * write-protect mode and arms the granules (page tables) that hold a page: write-protected whole, holes included.
 * A harvest is PAGEMAP_SCAN walks with PM_SCAN_WP_MATCHING: the kernel reports the pages whose protection was
 * dropped ("written") and protects them again under the page-table lock, so a write that races with the walk is
 * either reported now or left unprotected for the next harvest; never lost. In granules not armed, only pages
 * populated since are reported, and their granule is armed (uffd_wp_harvest). Untouched RAM has no page tables,
 * which the walks skip whole: start and harvests cost what is populated, not the size of RAM.
 * Reading the pages is the caller's business. This file does not decide when to fall back (tracker.c does).
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "ram/tracker-int.h"
#include "ram/uffd-compat.h"
#include "util/bitmap.h"
#include "util/util.h"

#define UFFD_WP_FEATURES ((uint64_t)(UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED))
/* Blocks are armed by granules of this much address space (at least): one page table on x86-64 and arm64 (4 KiB
 * pages); a larger huge page of a hugetlb block makes the granule that page. */
#define GRANULE (2ULL << 20)

typedef struct UffdTracker {
    int uffd;
    int pagemap_fd;
    size_t nregistered; /* t->blocks[0..nregistered) are registered with uffd */
    /* Per block (t->blocks order): the granules that are armed, i.e. write-protected whole, holes included
     * (markers); in the others only pages populated since the start exist, and they are protected page by page
     * as harvests find them. */
    unsigned long **armed;
    unsigned long *fresh;  /* scratch: granules a harvest found first populated, to arm */
    uint64_t gpages;       /* GRANULE in pages */
} UffdTracker;

int ferry__userfaultfd_open(int mode_flags, FerryError **errp)
{
    int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | mode_flags);
    if (fd >= 0) {
        return fd;
    }
    int syscall_errno = errno;

    int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
    if (dev < 0) {
        ferry_error_setg(errp, "userfaultfd(2) failed (%s%s) and /dev/userfaultfd cannot be opened (%s)",
                         strerror(syscall_errno),
                         mode_flags & UFFD_USER_MODE_ONLY ? "" : "; serving kernel-mode faults needs CAP_SYS_PTRACE "
                                                                 "or vm.unprivileged_userfaultfd=1",
                         strerror(errno));
        return -1;
    }
    /* The node's fds serve faults in either mode: its permissions decide who may have one. */
    fd = ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK);
    int dev_errno = errno;
    close(dev);
    if (fd < 0) {
        ferry_error_setg(errp, "userfaultfd(2) failed (%s) and USERFAULTFD_IOC_NEW on /dev/userfaultfd failed (%s)",
                         strerror(syscall_errno), strerror(dev_errno));
        return -1;
    }
    return fd;
}

bool ferry__userfaultfd_features(uint64_t *features, FerryError **errp)
{
    int fd = ferry__userfaultfd_open(0, errp);
    if (fd < 0) {
        return false;
    }
    struct uffdio_api api = { .api = UFFD_API, .features = 0 };
    int r = ioctl(fd, UFFDIO_API, &api);
    int e = errno;
    close(fd);
    if (r != 0) {
        ferry_error_setg_errno(errp, e, "UFFDIO_API");
        return false;
    }
    *features = api.features;
    return true;
}

/* The tracker's userfaultfd: UFFD_USER_MODE_ONLY keeps the syscall usable with vm.unprivileged_userfaultfd=0 (it
 * only write-protects; no fault of it is ever served). */
static int uffd_open(FerryError **errp)
{
    return ferry__userfaultfd_open(UFFD_USER_MODE_ONLY, errp);
}

static bool uffd_enable_features(int uffd, FerryError **errp)
{
    struct uffdio_api api = {.api = UFFD_API, .features = UFFD_WP_FEATURES};
    if (ioctl(uffd, UFFDIO_API, &api) != 0) {
        ferry_error_setg_errno(errp, errno,
                               "UFFDIO_API refused features WP_ASYNC|WP_UNPOPULATED (they need Linux 6.7+)");
        return false;
    }
    if ((api.features & UFFD_WP_FEATURES) != UFFD_WP_FEATURES) {
        ferry_error_setg(errp, "userfaultfd lacks WP_ASYNC|WP_UNPOPULATED (features 0x%llx; they need Linux 6.7+)",
                         (unsigned long long)api.features);
        return false;
    }
    return true;
}

static void uffd_unregister(UffdTracker *u, FerryRamBlock *b)
{
    struct uffdio_range range = {.start = (uint64_t)(uintptr_t)b->host, .len = b->size};
    /* Failure leaves the range registered to an fd that is closed right after, which disarms it as well. */
    (void)ioctl(u->uffd, UFFDIO_UNREGISTER, &range);
}

static void uffd_wp_stop(FerryDirtyTracker *t)
{
    UffdTracker *u = t->priv;
    if (!u) {
        return;
    }
    for (size_t i = 0; i < u->nregistered; i++) {
        uffd_unregister(u, t->blocks[i]);
    }
    for (size_t i = 0; u->armed && i < t->nblocks; i++) {
        free(u->armed[i]);
    }
    free(u->armed);
    free(u->fresh);
    if (u->pagemap_fd >= 0) {
        close(u->pagemap_fd);
    }
    close(u->uffd);
    free(u);
    t->priv = NULL;
}

/* Granules of @b: the first covers the block's first page, wherever the block starts in the address space. */
static uint64_t granule_count(const UffdTracker *u, const FerryRamBlock *b)
{
    uint64_t base = (uint64_t)(uintptr_t)b->host / ferry_ram_page_size();
    return (base + b->npages - 1) / u->gpages - base / u->gpages + 1;
}

/* Pages [*first, *end) of @b that granules [g, g_end) cover. */
static void granule_pages(const UffdTracker *u, const FerryRamBlock *b, uint64_t g, uint64_t g_end, uint64_t *first,
                          uint64_t *end)
{
    uint64_t base = (uint64_t)(uintptr_t)b->host / ferry_ram_page_size();
    uint64_t g0 = base / u->gpages;
    *first = (g0 + g) * u->gpages > base ? (g0 + g) * u->gpages - base : 0;
    *end = FERRY_MIN((g0 + g_end) * u->gpages - base, b->npages);
}

/* Set in @granules those that pages [first, first + count) of @b touch. */
static void granules_set(const UffdTracker *u, const FerryRamBlock *b, unsigned long *granules, uint64_t first,
                         uint64_t count)
{
    uint64_t base = (uint64_t)(uintptr_t)b->host / ferry_ram_page_size(), g0 = base / u->gpages;
    uint64_t g = (base + first) / u->gpages - g0, g_last = (base + first + count - 1) / u->gpages - g0;
    ferry__bitmap_set_range(granules, (size_t)g, (size_t)(g_last - g + 1));
}

/* A walk's state: where the pages go, the granules touched (NULL: not wanted), and which runs count (0: all;
 * else only those with one of these categories). */
typedef struct Walk {
    UffdTracker *u;
    FerryRamBlock *b;
    unsigned long *bitmap;
    unsigned long *granules;
    uint64_t only;
    uint64_t found;
} Walk;

static void walk_region(void *opaque, uint64_t first, uint64_t count, uint64_t categories)
{
    Walk *w = opaque;
    if (w->only && !(categories & w->only)) {
        return;
    }
    if (w->bitmap) {
        ferry__bitmap_set_range(w->bitmap, (size_t)first, (size_t)count);
    }
    if (w->granules) {
        granules_set(w->u, w->b, w->granules, first, count);
    }
    w->found += count;
}

/* One PAGEMAP_SCAN over granules [g, g_end) of @w->b; 0 or an errno value, with *errp set. */
static int walk_granules(Walk *w, uint64_t g, uint64_t g_end, uint64_t flags, uint64_t category_mask,
                         uint64_t anyof_mask, FerryError **errp)
{
    uint64_t first, end, stuck;
    granule_pages(w->u, w->b, g, g_end, &first, &end);
    int err = ferry__pagemap_scan_regions(w->u->pagemap_fd, w->b, first, end - first, flags, category_mask, 0,
                                          anyof_mask, w->only, walk_region, w, &stuck);
    if (err < 0) {
        ferry_error_setg(errp, "PAGEMAP_SCAN of RAM block '%s' made no progress at offset %llu", w->b->name,
                         (unsigned long long)stuck);
    } else if (err == EPERM) {
        ferry_error_setg(errp, "PAGEMAP_SCAN of RAM block '%s': part of it is not write-protected by this tracker",
                         w->b->name);
    } else if (err) {
        ferry_error_setg_errno(errp, err, "PAGEMAP_SCAN of RAM block '%s'", w->b->name);
    }
    return err ? (err < 0 ? EIO : err) : 0;
}

/*
 * Arm @b at start: write-protect whole every granule that holds a present or swapped-out page, holes included (with
 * WP_UNPOPULATED they get markers), and leave the others alone. Protecting the whole block instead would put a
 * marker into every never-populated page: page tables for all of RAM (512 MiB for 256 GiB, 1.7 s to build on the
 * 2-core test machine), and every harvest would walk them all, so setup and downtime would grow with the size of
 * RAM rather than with what is in it. The walk that finds the populated pages also checks (PM_SCAN_CHECK_WPASYNC)
 * that the kernel can write-protect the block, so that a block it cannot fails here and AUTO can fall back.
 */
static bool arm_block(UffdTracker *u, FerryRamBlock *b, unsigned long *armed, FerryError **errp)
{
    Walk w = {.u = u, .b = b, .granules = armed};
    if (walk_granules(&w, 0, granule_count(u, b), PM_SCAN_CHECK_WPASYNC, 0, PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
                      errp) != 0) {
        return false;
    }
    uint64_t n = granule_count(u, b);
    uint64_t ps = ferry_ram_page_size();
    for (uint64_t g = ferry__bitmap_find_next(armed, n, 0); g < n; ) {
        uint64_t g_end = ferry__bitmap_find_next_zero(armed, n, g), first, end;
        granule_pages(u, b, g, g_end, &first, &end);
        struct uffdio_writeprotect wp = {
            .range = {.start = (uint64_t)(uintptr_t)b->host + first * ps, .len = (end - first) * ps},
            .mode = UFFDIO_WRITEPROTECT_MODE_WP,
        };
        if (ioctl(u->uffd, UFFDIO_WRITEPROTECT, &wp) != 0) {
            if (errno == EINTR || errno == EAGAIN) {
                continue;
            }
            ferry_error_setg_errno(errp, errno, "UFFDIO_WRITEPROTECT of RAM block '%s' at offset %llu", b->name,
                                   (unsigned long long)(first * ps));
            return false;
        }
        g = ferry__bitmap_find_next(armed, n, g_end);
    }
    return true;
}

static bool uffd_wp_start(FerryDirtyTracker *t, FerryError **errp)
{
    UffdTracker *u = ferry__xcalloc(1, sizeof(*u));
    u->pagemap_fd = -1;
    u->uffd = uffd_open(errp);
    if (u->uffd < 0) {
        free(u);
        return false;
    }
    t->priv = u;

    if (!uffd_enable_features(u->uffd, errp)) {
        goto fail;
    }
    u->pagemap_fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    if (u->pagemap_fd < 0) {
        ferry_error_setg_errno(errp, errno, "opening /proc/self/pagemap");
        goto fail;
    }
    /*
     * Hugetlb blocks: UFFDIO_WRITEPROTECT and PAGEMAP_SCAN's write-protecting walk act on whole huge pages only
     * (a range that splits one is refused, EINVAL, or backed out), so a granule must hold whole huge pages of every
     * block: granules are aligned in the address space, and so are hugetlb mappings. Registering a hugetlb or
     * shmem range for write-protect needs UFFD_FEATURE_WP_HUGETLBFS_SHMEM, except in async mode, which allows any
     * memory (Linux 6.7+, as WP_ASYNC itself). The protection is per huge page: a write of 4 KiB drops it for the
     * whole huge page, and the harvest reports all of its 4 KiB pages as written; more to send, never a write
     * missed. A kernel that refuses any of it fails start, and AUTO falls back (tracker.c).
     */
    uint64_t granule = GRANULE;
    for (size_t i = 0; i < t->nblocks; i++) {
        granule = FERRY_MAX(granule, t->blocks[i]->page_size);
    }
    u->gpages = FERRY_MAX(granule / ferry_ram_page_size(), 1);
    u->armed = ferry__xcalloc(t->nblocks ? t->nblocks : 1, sizeof(*u->armed));
    uint64_t largest = 1;

    for (size_t i = 0; i < t->nblocks; i++) {
        FerryRamBlock *b = t->blocks[i];
        struct uffdio_register reg = {
            .range = {.start = (uint64_t)(uintptr_t)b->host, .len = b->size},
            .mode = UFFDIO_REGISTER_MODE_WP,
        };
        if (ioctl(u->uffd, UFFDIO_REGISTER, &reg) != 0) {
            ferry_error_setg_errno(errp, errno, "UFFDIO_REGISTER (write-protect mode) of RAM block '%s'", b->name);
            goto fail;
        }
        u->nregistered = i + 1;
        u->armed[i] = ferry__bitmap_new((size_t)granule_count(u, b));
        largest = FERRY_MAX(largest, granule_count(u, b));
        if (!arm_block(u, b, u->armed[i], errp)) {
            goto fail;
        }
    }
    u->fresh = ferry__bitmap_new((size_t)largest);
    return true;

fail:
    uffd_wp_stop(t);
    return false;
}

/*
 * A harvest, in three kinds of walk, each a PAGEMAP_SCAN with PM_SCAN_WP_MATCHING (report and re-protect under the
 * page-table lock):
 *   1. the armed granules: every page whose protection was dropped, including (on kernels that report them) pages
 *      discarded since, whose table entry is now empty;
 *   2. the rest: only pages that are present or swapped out and unprotected, i.e. populated since the start (or the
 *      last harvest). Their empty entries are not reported: a hole there was never populated, and recent kernels
 *      call every unprotected hole "written", which would make each harvest report, and arm, all of untouched RAM;
 *   3. the granules that walk 2 found populated, armed now as in 1 so that from now on a discard there is seen too.
 *      A write between walks 2 and 3 is reported by walk 3. The kernel reports (and arms) the granule's holes as
 *      well; they are not counted: none of them held data before walk 2 (the granule had no populated page before
 *      this harvest's walk 2), and a page walk 2 reported and that was discarded since is read, as zero, after
 *      this harvest anyway.
 * So a harvest walks what is populated; the empty page tables of untouched RAM are skipped whole.
 */
static bool uffd_wp_harvest(FerryDirtyTracker *t, FerryRamBlock *b, unsigned long *bitmap, bool *found,
                            FerryError **errp)
{
    UffdTracker *u = t->priv;
    size_t bi = 0;
    while (bi < t->nblocks && t->blocks[bi] != b) {
        bi++;
    }
    FERRY_ASSERT(bi < t->nblocks);
    const uint64_t flags = PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC;
    unsigned long *armed = u->armed[bi], *fresh = u->fresh;
    uint64_t n = granule_count(u, b);
    Walk w = {.u = u, .b = b, .bitmap = bitmap};
    Walk wf = {.u = u, .b = b, .bitmap = bitmap, .granules = fresh};
    Walk w3 = {.u = u, .b = b, .bitmap = bitmap, .only = PAGE_IS_PRESENT | PAGE_IS_SWAPPED};
    bool any_fresh = false;
    for (uint64_t g = 0; g < n;) {
        bool is_armed = ferry__bitmap_test(armed, (size_t)g);
        uint64_t g_end = is_armed ? ferry__bitmap_find_next_zero(armed, n, g) : ferry__bitmap_find_next(armed, n, g);
        int err = is_armed ? walk_granules(&w, g, g_end, flags, PAGE_IS_WRITTEN, 0, errp)
                           : walk_granules(&wf, g, g_end, flags, PAGE_IS_WRITTEN, PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
                                           errp);
        if (err) {
            return false;
        }
        any_fresh |= !is_armed && wf.found;
        g = g_end;
    }
    if (any_fresh) {
        for (uint64_t g = ferry__bitmap_find_next(fresh, n, 0); g < n;) {
            uint64_t g_end = ferry__bitmap_find_next_zero(fresh, n, g);
            if (walk_granules(&w3, g, g_end, flags, PAGE_IS_WRITTEN, 0, errp)) {
                return false;
            }
            ferry__bitmap_set_range(armed, (size_t)g, (size_t)(g_end - g));
            g = ferry__bitmap_find_next(fresh, n, g_end);
        }
        ferry__bitmap_zero(fresh, (size_t)n);
    }
    *found = w.found + wf.found + w3.found != 0;
    return true;
}

const FerryTrackerOps ferry__tracker_uffd_wp_ops = {
    .name = "uffd-wp",
    .is_none = false,
    .start = uffd_wp_start,
    .harvest = uffd_wp_harvest,
    .stop = uffd_wp_stop,
};

static pthread_once_t probe_once = PTHREAD_ONCE_INIT;
static char *probe_failure; /* NULL once the probe passed */

/* Arm a tracker over two pages, one of them populated before, write only the other (never populated: this needs
 * WP_UNPOPULATED) and expect a harvest to report exactly that page, and a second harvest nothing. */
static bool probe_run(FerryError **errp)
{
    FerryRamBlock *b = ferry__ram_block_new("uffd-wp-probe", 2 * ferry_ram_page_size(), errp);
    if (!b) {
        return false;
    }
    size_t ps = ferry_ram_page_size();
    b->host[0] = 1;

    FerryDirtyTracker t = {.ops = &ferry__tracker_uffd_wp_ops, .blocks = &b, .nblocks = 1};
    unsigned long bits[1] = {0};
    bool ok = false, found;

    if (!uffd_wp_start(&t, errp)) {
        goto out;
    }
    b->host[ps] = 1;
    if (!uffd_wp_harvest(&t, b, bits, &found, errp)) {
        goto out_stop;
    }
    if (bits[0] != 2) {
        ferry_error_setg(errp, "PAGEMAP_SCAN reported pages 0x%lx written where only page 1 was (expected 0x2)",
                         bits[0]);
        goto out_stop;
    }
    bits[0] = 0;
    if (!uffd_wp_harvest(&t, b, bits, &found, errp)) {
        goto out_stop;
    }
    if (bits[0] != 0) {
        ferry_error_setg(errp, "PAGEMAP_SCAN did not re-protect harvested pages (second harvest 0x%lx)", bits[0]);
        goto out_stop;
    }
    ok = true;
out_stop:
    uffd_wp_stop(&t);
out:
    ferry__ram_block_free(b);
    return ok;
}

static void probe_once_fn(void)
{
    FerryError *err = NULL;
    if (!probe_run(&err)) {
        probe_failure = ferry__xstrdup(ferry_error_msg(err));
        ferry_error_free(err);
    }
}

bool ferry__tracker_uffd_wp_probe(FerryError **errp)
{
    pthread_once(&probe_once, probe_once_fn);
    if (probe_failure) {
        ferry_error_setg(errp, "%s", probe_failure);
        return false;
    }
    return true;
}
