/*
 * The uffd-wp dirty tracker: userfaultfd in asynchronous write-protect mode plus PAGEMAP_SCAN (Linux 6.7+).
 *
 * Start opens a userfaultfd with UFFD_FEATURE_WP_ASYNC (a write to a protected page is resolved inside the kernel
 * by dropping the protection, so no thread ever waits on us) and UFFD_FEATURE_WP_UNPOPULATED (never-populated
 * pages get a write-protect marker, so their first write is seen too), registers every block in write-protect mode
 * and protects it whole. A harvest is one PAGEMAP_SCAN walk with PM_SCAN_WP_MATCHING: the kernel reports the
 * pages whose protection was dropped ("written") and protects them again under the page-table lock, so a write
 * that races with the walk is either reported now or left unprotected for the next harvest; never lost.
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
typedef struct UffdTracker {
    int uffd;
    int pagemap_fd;
    size_t nregistered; /* t->blocks[0..nregistered) are registered with uffd */
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
    if (u->pagemap_fd >= 0) {
        close(u->pagemap_fd);
    }
    close(u->uffd);
    free(u);
    t->priv = NULL;
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
        struct uffdio_writeprotect wp = {
            .range = {.start = (uint64_t)(uintptr_t)b->host, .len = b->size},
            .mode = UFFDIO_WRITEPROTECT_MODE_WP,
        };
        if (ioctl(u->uffd, UFFDIO_WRITEPROTECT, &wp) != 0) {
            ferry_error_setg_errno(errp, errno, "UFFDIO_WRITEPROTECT of RAM block '%s'", b->name);
            goto fail;
        }
    }
    return true;

fail:
    uffd_wp_stop(t);
    return false;
}

static bool uffd_wp_harvest(FerryDirtyTracker *t, FerryRamBlock *b, unsigned long *bitmap, FerryError **errp)
{
    UffdTracker *u = t->priv;
    uint64_t stuck;
    int err = ferry__pagemap_scan(u->pagemap_fd, b, PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC, PAGE_IS_WRITTEN, 0, 0,
                                  bitmap, &stuck);
    if (err == 0) {
        return true;
    }
    if (err < 0) {
        ferry_error_setg(errp, "PAGEMAP_SCAN of RAM block '%s' made no progress at offset %llu", b->name,
                         (unsigned long long)stuck);
    } else if (err == EPERM) {
        ferry_error_setg(errp, "PAGEMAP_SCAN of RAM block '%s': part of it is not write-protected by this tracker",
                         b->name);
    } else {
        ferry_error_setg_errno(errp, err, "PAGEMAP_SCAN of RAM block '%s'", b->name);
    }
    return false;
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
    bool ok = false;

    if (!uffd_wp_start(&t, errp)) {
        goto out;
    }
    b->host[ps] = 1;
    if (!uffd_wp_harvest(&t, b, bits, errp)) {
        goto out_stop;
    }
    if (bits[0] != 2) {
        ferry_error_setg(errp, "PAGEMAP_SCAN reported pages 0x%lx written where only page 1 was (expected 0x2)",
                         bits[0]);
        goto out_stop;
    }
    bits[0] = 0;
    if (!uffd_wp_harvest(&t, b, bits, errp)) {
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
