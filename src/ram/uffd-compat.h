/*
 * Kernel interfaces newer than the build machine's headers, in one place. Debian 12 ships the Linux 6.1 UAPI
 * headers, but the dirty tracker relies on userfaultfd asynchronous write-protect and the PAGEMAP_SCAN ioctl,
 * both merged in Linux 6.7 (include/uapi/linux/userfaultfd.h and include/uapi/linux/fs.h of 6.7, also described in
 * Documentation/admin-guide/mm/pagemap.rst). Each definition is guarded so that newer headers win. Nothing here
 * decides whether the running kernel has the feature: that is probed at run time (tracker-uffd.c).
 */
#ifndef FERRY_RAM_UFFD_COMPAT_H
#define FERRY_RAM_UFFD_COMPAT_H

#include <linux/fs.h>
#include <linux/userfaultfd.h>
#include <stdint.h>
#include <sys/ioctl.h>
#include <sys/mman.h>

/* MADV_POPULATE_WRITE: Linux 5.14, include/uapi/asm-generic/mman-common.h. */
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

/* UFFD_USER_MODE_ONLY: Linux 5.11. /dev/userfaultfd and USERFAULTFD_IOC_NEW: Linux 6.1. */
#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1
#endif
#ifndef USERFAULTFD_IOC
#define USERFAULTFD_IOC 0xAA
#endif
#ifndef USERFAULTFD_IOC_NEW
#define USERFAULTFD_IOC_NEW _IO(USERFAULTFD_IOC, 0x00)
#endif

/* userfaultfd features, Linux 6.1 (WP_HUGETLBFS_SHMEM), 6.4 (WP_UNPOPULATED) and 6.7 (WP_ASYNC). */
#ifndef UFFD_FEATURE_WP_HUGETLBFS_SHMEM
#define UFFD_FEATURE_WP_HUGETLBFS_SHMEM (1 << 12)
#endif
#ifndef UFFD_FEATURE_WP_UNPOPULATED
#define UFFD_FEATURE_WP_UNPOPULATED (1 << 13)
#endif
#ifndef UFFD_FEATURE_WP_ASYNC
#define UFFD_FEATURE_WP_ASYNC (1 << 15)
#endif

/* PAGEMAP_SCAN on /proc/<pid>/pagemap, Linux 6.7 (include/uapi/linux/fs.h). The struct layouts are ABI: the kernel
 * checks pm_scan_arg.size against its own sizeof. */
#ifndef PAGEMAP_SCAN

#define PAGE_IS_WPALLOWED (1 << 0)
#define PAGE_IS_WRITTEN (1 << 1)
#define PAGE_IS_FILE (1 << 2)
#define PAGE_IS_PRESENT (1 << 3)
#define PAGE_IS_SWAPPED (1 << 4)
#define PAGE_IS_PFNZERO (1 << 5)
#define PAGE_IS_HUGE (1 << 6)
#define PAGE_IS_SOFT_DIRTY (1 << 7)

struct page_region {
    uint64_t start;      /* first byte of the region */
    uint64_t end;        /* one past its last byte */
    uint64_t categories; /* PAGE_IS_* of the region, masked by return_mask */
};

#define PM_SCAN_WP_MATCHING (1 << 0)   /* write-protect the matched pages */
#define PM_SCAN_CHECK_WPASYNC (1 << 1) /* fail (EPERM) on a page without async write-protect */

struct pm_scan_arg {
    uint64_t size; /* sizeof(struct pm_scan_arg) */
    uint64_t flags;
    uint64_t start;
    uint64_t end;
    uint64_t walk_end; /* out: where the walk stopped */
    uint64_t vec;      /* struct page_region array */
    uint64_t vec_len;  /* its length, in entries */
    uint64_t max_pages;
    uint64_t category_inverted;
    uint64_t category_mask;
    uint64_t category_anyof_mask;
    uint64_t return_mask;
};

#define PAGEMAP_SCAN _IOWR('f', 16, struct pm_scan_arg)

#endif /* PAGEMAP_SCAN */

#endif
