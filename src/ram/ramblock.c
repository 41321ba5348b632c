/*
 * RAM blocks: one mapping each (anonymous and private, a memfd, a hugetlb memfd, an unlinked temporary file in a
 * directory, or a slice of a file as QEMU's memory-backend-file), plus the page-granular helpers the migration needs
 * around it (populate ahead of incoming data, discard after a failed load, list the pages the kernel has populated) and
 * the public accessors of include/ferry/ram.h. The list of blocks belongs to the engine (migration layer); dirty
 * tracking is in tracker.c and tracker-uffd.c, zero detection in zero.c.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/magic.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/sysinfo.h>
#include <unistd.h>

#include "ram/ram.h"
#include "ram/uffd-compat.h"
#include "util/bitmap.h"
#include "util/util.h"

/* MADV_POPULATE_WRITE is issued in chunks so that a fatal signal or an EINTR does not restart gigabytes of work. */
#define POPULATE_CHUNK (64ULL << 20)
/* Regions returned by one PAGEMAP_SCAN call; the kernel merges adjacent pages, so few calls are needed. */
#define SCAN_VEC_LEN 256

static pthread_once_t page_size_once = PTHREAD_ONCE_INIT;
static size_t page_size_value;

static void page_size_init(void)
{
    long ps = sysconf(_SC_PAGESIZE);
    page_size_value = ps > 0 ? (size_t)ps : 4096;
}

size_t ferry_ram_page_size(void)
{
    pthread_once(&page_size_once, page_size_init);
    return page_size_value;
}

/* Checks @name and @size and returns the size rounded up to the page size, or 0 with *errp set. */
static uint64_t check_block(const char *name, uint64_t size, FerryError **errp)
{
    uint64_t ps = ferry_ram_page_size();

    if (!name || !name[0]) {
        ferry_error_setg(errp, "RAM block name must not be empty");
        return 0;
    }
    if (strlen(name) > FERRY_RAM_NAME_MAX) {
        ferry_error_setg(errp, "RAM block name '%.32s...' is longer than %d bytes", name, FERRY_RAM_NAME_MAX);
        return 0;
    }
    if (size == 0) {
        ferry_error_setg(errp, "RAM block '%s': size must not be zero", name);
        return 0;
    }
    if (size > UINT64_MAX - (ps - 1) || FERRY_DIV_ROUND_UP(size, ps) * ps > (uint64_t)SIZE_MAX / 2) {
        ferry_error_setg(errp, "RAM block '%s': size %llu is too large", name, (unsigned long long)size);
        return 0;
    }
    return FERRY_DIV_ROUND_UP(size, ps) * ps;
}

#ifndef MFD_HUGE_SHIFT
#define MFD_HUGE_SHIFT 26 /* linux/memfd.h; glibc's sys/mman.h has MFD_HUGETLB but not the shift */
#endif

/* log2 of @v, a power of two. */
static unsigned log2_u64(uint64_t v)
{
    return (unsigned)__builtin_ctzll(v);
}

/* A new memfd of @size bytes, or -1 with *errp set; with @hugepage_size (non-zero) a hugetlb memfd of that page
 * size (the size goes into the flags as its log2, MFD_HUGE_SHIFT). */
static int new_memfd(const char *name, uint64_t size, uint64_t hugepage_size, FerryError **errp)
{
    unsigned flags = MFD_CLOEXEC;
    if (hugepage_size) {
        flags |= MFD_HUGETLB | (log2_u64(hugepage_size) << MFD_HUGE_SHIFT);
    }
    int fd = memfd_create(name, flags);
    if (fd < 0) {
        ferry_error_setg_errno(errp, errno, "RAM block '%s': memfd_create%s", name,
                               hugepage_size ? " (MFD_HUGETLB)" : "");
        return -1;
    }
    if (ftruncate(fd, (off_t)size) != 0) {
        ferry_error_setg_errno(errp, errno, "RAM block '%s': sizing the memfd to %llu bytes", name,
                               (unsigned long long)size);
        close(fd);
        return -1;
    }
    return fd;
}

/*
 * Anonymous RAM is mapped at a 2 MiB boundary and advised MADV_HUGEPAGE, as QEMU advises all its RAM. On the
 * machines ferry is measured on (guests whose free memory goes back to the hypervisor) neither page size wins: a
 * destination receiving 2 GiB took 1.2-2.9 s with huge pages and 0.9-3.0 s with 4 KiB pages over one evening,
 * each ahead in some runs (docs/memory.md, "The destination built from it"); huge pages are kept for QEMU's sake
 * and their narrower spread. The source's write tracking stays at 4 KiB: a write to a write-protected huge page
 * splits it (tests/unit/ram/test-tracker.c, bench/harvest-bench.c). FERRY_THP=0 in the environment asks for
 * 4 KiB pages (MADV_NOHUGEPAGE) instead: a switch for measurements.
 */
#define THP_ALIGN (2ULL << 20)

/* Advise [host, host + size) as above. Advice is a hint: a kernel without THP refuses it, and nothing is lost. */
static void anon_advise(void *host, uint64_t size)
{
    const char *e = getenv("FERRY_THP");
    bool off = e && (strcmp(e, "0") == 0 || strcmp(e, "off") == 0);
    (void)madvise(host, (size_t)size, off ? MADV_NOHUGEPAGE : MADV_HUGEPAGE);
}

/* Anonymous private memory of @size bytes starting at a THP_ALIGN boundary: map THP_ALIGN more, unmap the ends. */
static void *anon_map_aligned(uint64_t size)
{
    size_t len = (size_t)size + THP_ALIGN;
    uint8_t *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        return MAP_FAILED;
    }
    uint8_t *start = (uint8_t *)(((uintptr_t)p + (uintptr_t)THP_ALIGN - 1) & ~(uintptr_t)(THP_ALIGN - 1));
    if (start > p) {
        munmap(p, (size_t)(start - p));
    }
    size_t tail = (size_t)(p + len - (start + size));
    if (tail) {
        munmap(start + size, tail);
    }
    anon_advise(start, size);
    return start;
}

/* A block around the mapping @host of @size bytes, backed by pages of @page_size; the caller sets the backing. */
static FerryRamBlock *block_wrap(const char *name, void *host, uint64_t size, uint64_t page_size)
{
    FerryRamBlock *b = ferry__xcalloc(1, sizeof(*b));
    b->name = ferry__xstrdup(name);
    b->host = host;
    b->size = size;
    b->npages = size / ferry_ram_page_size();
    b->page_size = page_size;
    b->explicit_dirty = ferry__bitmap_new((size_t)b->npages);
    return b;
}

static FerryRamBlock *block_new(const char *name, uint64_t size, int fd, bool share, FerryError **errp)
{
    int flags = fd >= 0 ? (share ? MAP_SHARED : MAP_PRIVATE) : MAP_PRIVATE | MAP_ANONYMOUS;
    void *host = fd >= 0 ? mmap(NULL, (size_t)size, PROT_READ | PROT_WRITE, flags, fd, 0) : anon_map_aligned(size);
    if (host == MAP_FAILED) {
        ferry_error_setg_errno(errp, errno, "RAM block '%s': mapping %llu bytes", name, (unsigned long long)size);
        return NULL;
    }
    FerryRamBlock *b = block_wrap(name, host, size, ferry_ram_page_size()); /* hugetlb: the caller sets it */
    b->fd = fd;
    b->memfd = fd >= 0;
    b->shared = fd >= 0 && share;
    b->file_fd = -1;
    return b;
}

FerryRamBlock *ferry__ram_block_new(const char *name, uint64_t size, FerryError **errp)
{
    uint64_t rounded = check_block(name, size, errp);
    return rounded ? block_new(name, rounded, -1, false, errp) : NULL;
}

FerryRamBlock *ferry__ram_block_new_memfd(const char *name, uint64_t size, bool share, FerryError **errp)
{
    uint64_t rounded = check_block(name, size, errp);
    if (!rounded) {
        return NULL;
    }
    int fd = new_memfd(name, rounded, 0, errp);
    if (fd < 0) {
        return NULL;
    }
    FerryRamBlock *b = block_new(name, rounded, fd, share, errp);
    if (!b) {
        close(fd);
    }
    return b;
}

/* The page size of the file system of @fd: its block size on hugetlbfs (the huge page size it was mounted with),
 * else the base page size (0 with *errp set if fstatfs fails). */
static uint64_t fd_page_size(int fd, bool *hugetlb, FerryError **errp)
{
    struct statfs sfs;
    if (fstatfs(fd, &sfs) != 0) {
        ferry_error_setg_errno(errp, errno, "fstatfs");
        return 0;
    }
    *hugetlb = (unsigned long)sfs.f_type == HUGETLBFS_MAGIC;
    return *hugetlb ? (uint64_t)sfs.f_bsize : ferry_ram_page_size();
}

/* Map bytes [@offset, @offset + @size) of the file @fd (named @path in errors) as a file block; takes @fd on
 * success. On hugetlbfs both must be multiples of the file system's huge page. */
static FerryRamBlock *file_block_new(const char *name, uint64_t size, const char *path, int fd, uint64_t offset,
                                     bool share, FerryError **errp)
{
    bool hugetlb = false;
    uint64_t page_size = fd_page_size(fd, &hugetlb, errp);
    if (!page_size) {
        ferry_error_prepend(errp, "RAM block '%s': %s: ", name, path);
        return NULL;
    }
    if (size % page_size || offset % page_size) {
        ferry_error_setg(errp, "RAM block '%s': %s is on hugetlbfs with %" PRIu64 "-byte pages: the size %" PRIu64
                         " and offset %" PRIu64 " must be multiples of it", name, path, page_size, size, offset);
        return NULL;
    }
    void *host = mmap(NULL, (size_t)size, PROT_READ | PROT_WRITE, share ? MAP_SHARED : MAP_PRIVATE, fd,
                      (off_t)offset);
    int map_errno = errno;
    /* The mapping keeps the file referenced; the fd stays open only to find the file's holes
     * (ferry__ram_block_present_pages), and is never passed anywhere. */
    if (host == MAP_FAILED) {
        ferry_error_setg_errno(errp, map_errno, "RAM block '%s': mapping %llu bytes of %s at offset %llu%s", name,
                               (unsigned long long)size, path, (unsigned long long)offset,
                               hugetlb && map_errno == ENOMEM ? " (not enough free huge pages: see "
                                                                "/proc/sys/vm/nr_hugepages)" : "");
        return NULL;
    }
    FerryRamBlock *b = block_wrap(name, host, size, page_size);
    b->hugetlb = hugetlb;
    b->fd = -1;
    b->file = true;
    b->file_fd = fd;
    b->file_offset = offset;
    return b;
}

FerryRamBlock *ferry__ram_block_new_file(const char *name, uint64_t size, const char *path, uint64_t offset,
                                         bool share, FerryError **errp)
{
    uint64_t ps = ferry_ram_page_size();
    uint64_t rounded = check_block(name, size, errp);
    if (!rounded) {
        return NULL;
    }
    if (!path || !path[0]) {
        ferry_error_setg(errp, "RAM block '%s': no file to map (mem-path is required)", name);
        return NULL;
    }
    if (offset % ps) {
        ferry_error_setg(errp, "RAM block '%s': offset %llu in %s is not a multiple of the %llu-byte page", name,
                         (unsigned long long)offset, path, (unsigned long long)ps);
        return NULL;
    }
    /* A private mapping only reads the file (its writes go to copies), so read access is all it needs. */
    int fd = open(path, (share ? O_RDWR : O_RDONLY) | O_CLOEXEC);
    if (fd < 0) {
        ferry_error_setg_errno(errp, errno, "RAM block '%s': opening %s", name, path);
        return NULL;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        ferry_error_setg(errp, "RAM block '%s': %s is not a regular file", name, path);
        close(fd);
        return NULL;
    }
    /* Unlike QEMU, which grows a short file, a short file is refused: the block is the file's content, and a
     * size that does not match it is far more likely a mistake than a wish to append zeros. */
    if (offset > (uint64_t)st.st_size || (uint64_t)st.st_size - offset < rounded) {
        ferry_error_setg(errp, "RAM block '%s': %s is too small: %llu bytes, the block needs %llu at offset %llu",
                         name, path, (unsigned long long)st.st_size, (unsigned long long)rounded,
                         (unsigned long long)offset);
        close(fd);
        return NULL;
    }
    FerryRamBlock *b = file_block_new(name, rounded, path, fd, offset, share, errp);
    if (!b) {
        close(fd);
    }
    return b;
}

/* The huge page sizes this host offers (/sys/kernel/mm/hugepages/hugepages-<N>kB), ascending, at most @max; their
 * number (0 without hugetlb support). */
static size_t hugepage_sizes(uint64_t *sizes, size_t max)
{
    DIR *d = opendir("/sys/kernel/mm/hugepages");
    size_t n = 0;
    if (!d) {
        return 0;
    }
    for (struct dirent *e; (e = readdir(d)) != NULL && n < max;) {
        unsigned long long kb;
        char tail[4];
        if (sscanf(e->d_name, "hugepages-%llukB%3s", &kb, tail) == 1 && kb && !(kb & (kb - 1))) {
            uint64_t v = (uint64_t)kb << 10;
            size_t i = n++;
            for (; i > 0 && sizes[i - 1] > v; i--) {
                sizes[i] = sizes[i - 1];
            }
            sizes[i] = v;
        }
    }
    closedir(d);
    return n;
}

/* The default huge page size (Hugepagesize in /proc/meminfo), 0 if none. */
static uint64_t hugepage_default(void)
{
    FILE *f = fopen("/proc/meminfo", "re");
    unsigned long long kb = 0;
    char line[128];
    if (!f) {
        return 0;
    }
    while (fgets(line, sizeof(line), f)) {
        if (sscanf(line, "Hugepagesize: %llu kB", &kb) == 1) {
            break;
        }
    }
    fclose(f);
    return (uint64_t)kb << 10;
}

/* "2M", "1G", "64K" or bytes. */
static void format_size(uint64_t v, char *buf, size_t len)
{
    static const char units[] = "KMGT";
    int u = -1;
    while (u < 3 && v >= 1024 && v % 1024 == 0) {
        v /= 1024;
        u++;
    }
    if (u < 0) {
        snprintf(buf, len, "%" PRIu64, v);
    } else {
        snprintf(buf, len, "%" PRIu64 "%c", v, units[u]);
    }
}

bool ferry_ram_hugepage_size(uint64_t requested, uint64_t *size, FerryError **errp)
{
    uint64_t sizes[16];
    size_t n = hugepage_sizes(sizes, 16);
    if (n == 0) {
        ferry_error_setg(errp, "this host offers no huge pages (no /sys/kernel/mm/hugepages: a kernel without "
                         "hugetlb support)");
        return false;
    }
    uint64_t want = requested ? requested : hugepage_default();
    for (size_t i = 0; i < n; i++) {
        if (sizes[i] == want) {
            *size = want;
            return true;
        }
    }
    char list[16 * 24] = "", one[24];
    for (size_t i = 0; i < n; i++) {
        format_size(sizes[i], one, sizeof(one));
        snprintf(list + strlen(list), sizeof(list) - strlen(list), "%s%s", i ? ", " : "", one);
    }
    format_size(want, one, sizeof(one));
    ferry_error_setg(errp, "%s is not a huge page size of this host (it offers: %s)",
                     requested ? one : "the default huge page size", list);
    return false;
}

/* Whether the host has @size bytes of free, unreserved huge pages of @page_size, else false with *errp naming
 * the numbers: a clearer answer than mmap's ENOMEM (which still catches a race or a cgroup limit). Where the
 * counters cannot be read the mmap decides. */
static bool hugepages_enough(const char *name, uint64_t size, uint64_t page_size, FerryError **errp)
{
    unsigned long long v[2] = {0, 0};
    const char *what[2] = {"free_hugepages", "resv_hugepages"};
    for (int i = 0; i < 2; i++) {
        char path[96];
        snprintf(path, sizeof(path), "/sys/kernel/mm/hugepages/hugepages-%" PRIu64 "kB/%s", page_size >> 10,
                 what[i]);
        FILE *f = fopen(path, "re");
        bool ok = f && fscanf(f, "%llu", &v[i]) == 1;
        if (f) {
            fclose(f);
        }
        if (!ok) {
            return true;
        }
    }
    uint64_t avail = v[0] > v[1] ? v[0] - v[1] : 0, need = size / page_size;
    if (avail < need) {
        ferry_error_setg(errp, "RAM block '%s': %" PRIu64 " bytes need %" PRIu64 " huge pages of %" PRIu64
                         " bytes, and the host has %" PRIu64 " free (/sys/kernel/mm/hugepages/hugepages-%" PRIu64
                         "kB/nr_hugepages)", name, size, need, page_size, avail, page_size >> 10);
        return false;
    }
    return true;
}

FerryRamBlock *ferry__ram_block_new_hugetlb(const char *name, uint64_t size, bool share, uint64_t hugepage_size,
                                            FerryError **errp)
{
    uint64_t rounded = check_block(name, size, errp), checked;
    if (!rounded) {
        return NULL;
    }
    if (!ferry_ram_hugepage_size(hugepage_size, &checked, errp)) {
        ferry_error_prepend(errp, "RAM block '%s': ", name);
        return NULL;
    }
    /* Refused, not rounded up: the kernel cannot size a hugetlb memfd to part of a huge page (QEMU fails there
     * too), and growing the block would change the RAM size the user gave. */
    if (size % checked) {
        ferry_error_setg(errp, "RAM block '%s': size %" PRIu64 " is not a multiple of its %" PRIu64
                         "-byte huge page", name, size, checked);
        return NULL;
    }
    int fd = new_memfd(name, rounded, checked, errp);
    if (fd < 0) {
        return NULL;
    }
    /* The kernel places a hugetlb mapping at a huge-page-aligned address and reserves its pages at mmap: a
     * shortage fails here with ENOMEM, not later with SIGBUS. */
    FerryRamBlock *b = hugepages_enough(name, rounded, checked, errp) ? block_new(name, rounded, fd, share, errp)
                                                                       : NULL;
    if (!b) {
        close(fd);
        return NULL;
    }
    b->page_size = checked;
    b->hugetlb = true;
    return b;
}

FerryRamBlock *ferry__ram_block_new_tmpfile(const char *name, uint64_t size, const char *dir, bool share,
                                            FerryError **errp)
{
    uint64_t rounded = check_block(name, size, errp);
    if (!rounded) {
        return NULL;
    }
    struct stat st;
    if (!dir || stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        ferry_error_setg(errp, "RAM block '%s': %s is not a directory", name, dir ? dir : "(null)");
        return NULL;
    }
    /* As QEMU: a temporary file in the directory, unlinked at once, so that nothing is left behind. */
    size_t len = strlen(dir) + sizeof("/ferry_back_mem.XXXXXX");
    char *path = ferry__xcalloc(1, len);
    snprintf(path, len, "%s/ferry_back_mem.XXXXXX", dir);
    int fd = mkostemp(path, O_CLOEXEC);
    if (fd < 0) {
        ferry_error_setg_errno(errp, errno, "RAM block '%s': creating a file in %s", name, dir);
        free(path);
        return NULL;
    }
    unlink(path);
    free(path);
    bool hugetlb = false;
    uint64_t page_size = fd_page_size(fd, &hugetlb, errp);
    struct statfs sfs;
    FerryRamBlock *b = NULL;
    if (!page_size) {
        ferry_error_prepend(errp, "RAM block '%s': %s: ", name, dir);
    } else if (rounded % page_size) {
        /* Refused, not rounded up as QEMU does: the RAM size must stay what the user gave. */
        ferry_error_setg(errp, "RAM block '%s': size %" PRIu64 " is not a multiple of the %" PRIu64
                         "-byte huge page of %s (hugetlbfs)", name, size, page_size, dir);
    } else if (ftruncate(fd, (off_t)rounded) != 0) {
        ferry_error_setg_errno(errp, errno, "RAM block '%s': sizing a file in %s to %" PRIu64 " bytes", name, dir,
                               rounded);
    } else if (hugetlb || (fstatfs(fd, &sfs) == 0 && (unsigned long)sfs.f_type == TMPFS_MAGIC)) {
        /* Memory that the kernel never writes back or drops: exactly a memfd (pages never populated read as
         * zero and are not present; discard punches them out), also for cpr-transfer. */
        b = !hugetlb || hugepages_enough(name, rounded, page_size, errp)
                ? block_new(name, rounded, fd, share, errp) : NULL;
        if (b) {
            b->page_size = page_size;
            b->hugetlb = hugetlb;
        }
    } else {
        /* A file on disk: written pages may be written back and dropped from memory, where the page map no
         * longer sees them; the file block's SEEK_DATA walk does. */
        b = file_block_new(name, rounded, dir, fd, 0, share, errp);
    }
    if (!b) {
        close(fd);
    }
    return b;
}

bool ferry__ram_block_adopt_fd(FerryRamBlock *b, int fd, FerryError **errp)
{
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        ferry_error_setg(errp, "RAM block '%s': the fd received for it is not a memory file", b->name);
        return false;
    }
    if ((uint64_t)st.st_size < b->size) {
        ferry_error_setg(errp, "RAM block '%s': the memfd received for it has %llu bytes, the block %llu", b->name,
                         (unsigned long long)st.st_size, (unsigned long long)b->size);
        return false;
    }
    /* A hugetlb memfd maps only at huge-page-aligned addresses, and an ordinary one over a hugetlb block would
     * break what the block promises of its pages: the two sides must have the same backing page size. */
    bool hugetlb = false;
    uint64_t fd_ps = fd_page_size(fd, &hugetlb, NULL);
    if (fd_ps && fd_ps != b->page_size) {
        ferry_error_setg(errp, "RAM block '%s': the memfd received for it has %" PRIu64 "-byte pages, the block "
                         "%" PRIu64 "-byte pages (give both sides the same memory backend, hugetlb and "
                         "hugetlbsize)", b->name, fd_ps, b->page_size);
        return false;
    }
    /* MAP_FIXED replaces our own mapping in one step: the address never becomes free for someone else. */
    void *p = mmap(b->host, (size_t)b->size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 0);
    if (p == MAP_FAILED) {
        ferry_error_setg_errno(errp, errno, "RAM block '%s': mapping the received memfd", b->name);
        return false;
    }
    if (b->fd >= 0) {
        close(b->fd);
    }
    b->fd = fd;
    b->shared = true;
    b->adopted = true;
    return true;
}

void ferry__ram_block_unadopt(FerryRamBlock *b)
{
    if (!b->adopted) {
        return;
    }
    /* Fresh memory of the block's own kind, mapped over the source's pages before its fd is closed. If even
     * that fails, anonymous memory is the fallback: the block must never keep the source's pages. */
    int fd = b->memfd ? new_memfd(b->name, b->size, b->hugetlb ? b->page_size : 0, NULL) : -1;
    int flags = fd >= 0 ? MAP_SHARED | MAP_FIXED : MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED;
    if (mmap(b->host, (size_t)b->size, PROT_READ | PROT_WRITE, flags, fd, 0) == MAP_FAILED) {
        if (fd >= 0) {
            close(fd);
            fd = -1;
        }
        if (mmap(b->host, (size_t)b->size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1,
                 0) == MAP_FAILED) {
            /* Without a mapping the program would fault on its RAM: drop the source's pages at least. */
            munmap(b->host, (size_t)b->size);
        } else {
            anon_advise(b->host, b->size);
        }
    }
    close(b->fd);
    b->fd = fd;
    b->shared = fd >= 0;
    b->adopted = false;
    b->populated = false;
}

bool ferry__ram_block_map_file(FerryRamBlock *b, int fd, uint64_t offset, FerryError **errp)
{
    FERRY_ASSERT(b->fd < 0 && !b->file && !b->hugetlb && !b->adopted);
    int own = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (own < 0) {
        ferry_error_setg_errno(errp, errno, "RAM block '%s': keeping the snapshot file open", b->name);
        return false;
    }
    /* MAP_FIXED replaces the anonymous memory in one step, as an adoption does. */
    if (mmap(b->host, (size_t)b->size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_FIXED, own, (off_t)offset) ==
        MAP_FAILED) {
        ferry_error_setg_errno(errp, errno, "RAM block '%s': mapping the snapshot file at offset %llu", b->name,
                               (unsigned long long)offset);
        close(own);
        return false;
    }
    b->file = true;
    b->file_fd = own;
    b->file_offset = offset;
    b->restored = true;
    b->populated = false;
    return true;
}

/* Undo ferry__ram_block_map_file: fresh anonymous memory over the snapshot's pages. */
static void unmap_restored(FerryRamBlock *b)
{
    if (mmap(b->host, (size_t)b->size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) ==
        MAP_FAILED) {
        munmap(b->host, (size_t)b->size); /* never keep the snapshot's pages as if they were this run's */
    } else {
        anon_advise(b->host, b->size);
    }
    close(b->file_fd);
    b->file_fd = -1;
    b->file = false;
    b->file_offset = 0;
    b->restored = false;
}

void ferry__ram_block_free(FerryRamBlock *b)
{
    if (!b) {
        return;
    }
    munmap(b->host, (size_t)b->size);
    if (b->fd >= 0) {
        close(b->fd);
    }
    if (b->file_fd >= 0) {
        close(b->file_fd);
    }
    free(b->explicit_dirty);
    free(b->recv_written);
    free(b->name);
    free(b);
}

/* Fallback for kernels without MADV_POPULATE_WRITE (before 5.14): a write fault per page. An atomic add of zero
 * faults the page in for writing without changing its content, even if another thread (the destination loading
 * data) writes it meanwhile. */
static void populate_by_touch(FerryRamBlock *b, uint64_t off, uint64_t end)
{
    uint64_t ps = ferry_ram_page_size();
    for (; off < end; off += ps) {
        __atomic_fetch_add(&b->host[off], 0, __ATOMIC_RELAXED);
    }
}

/* Populate bytes [off, end) of @b (page aligned). Returns 0 or the errno of the failing madvise. */
static int populate_bytes(FerryRamBlock *b, uint64_t off, uint64_t end, uint64_t *failed_at)
{
    while (off < end) {
        uint64_t len = FERRY_MIN(POPULATE_CHUNK, end - off);
        if (madvise(b->host + off, (size_t)len, MADV_POPULATE_WRITE) == 0) {
            off += len;
            continue;
        }
        if (errno == EINTR || errno == EAGAIN) {
            continue;
        }
        if (errno == EINVAL) {
            /* The kernel does not know the advice: fault the rest in by hand. */
            populate_by_touch(b, off, end);
            return 0;
        }
        *failed_at = off;
        return errno;
    }
    return 0;
}

bool ferry__ram_block_populate(FerryRamBlock *b, FerryError **errp)
{
    uint64_t at = 0;
    int err = populate_bytes(b, 0, b->size, &at);
    if (err) {
        ferry_error_setg_errno(errp, err, "RAM block '%s': populating at offset %llu", b->name,
                               (unsigned long long)at);
        return false;
    }
    b->populated = true;
    return true;
}

void ferry__ram_block_prepare_write(FerryRamBlock *b, void *p, size_t len)
{
    /* Cleared for good the first time the kernel refuses the advice (before Linux 5.14). */
    static bool supported = true;
    if (b->populated || b->hugetlb || !__atomic_load_n(&supported, __ATOMIC_RELAXED) || len == 0) {
        return;
    }
    if (madvise(p, len, MADV_POPULATE_WRITE) != 0 && errno == EINVAL) {
        __atomic_store_n(&supported, false, __ATOMIC_RELAXED);
    }
}

void ferry__ram_block_populate_range(FerryRamBlock *b, uint64_t first, uint64_t count)
{
    if (first >= b->npages || count == 0) {
        return;
    }
    count = FERRY_MIN(count, b->npages - first);
    uint64_t ps = ferry_ram_page_size();
    uint64_t at = 0;
    int err = populate_bytes(b, first * ps, (first + count) * ps, &at);
    if (err) {
        /* Best effort by contract: the pages fault in when the data arrives, only slower. */
        ferry__log(FERRY_LOG_DEBUG, "RAM block '%s': populating at offset %llu: %s", b->name,
                   (unsigned long long)at, strerror(err));
    }
}

void ferry__ram_block_discard(FerryRamBlock *b)
{
    if (b->restored) {
        unmap_restored(b);
    }
    b->populated = b->file; /* a file block is overwritten with zeros below, the others lose their pages */
    if (b->adopted) {
        /* Never touch the source's pages: drop the mapping of them instead. */
        ferry__ram_block_unadopt(b);
        return;
    }
    if (b->file) {
        /* Dropping the pages of a file mapping makes them read as the file again, not as zero (and punching holes
         * would damage a file the user owns): only writing zeros keeps the promise. */
        memset(b->host, 0, (size_t)b->size);
        return;
    }
    if (b->shared) {
        /* Shared memfd pages outlive MADV_DONTNEED; punching them out of the file makes them read as zero. */
        if (fallocate(b->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, (off_t)b->size) != 0) {
            memset(b->host, 0, (size_t)b->size);
        }
        return;
    }
    /* MADV_DONTNEED on private anonymous memory cannot fail on a valid mapping, and afterwards the range reads
     * as zero. If it did fail (it cannot here), overwriting with zeros keeps the promise. */
    if (madvise(b->host, (size_t)b->size, MADV_DONTNEED) != 0) {
        memset(b->host, 0, (size_t)b->size);
    }
}

/* Whether swap space is configured. Swapped-out pages hold data but are not PAGE_IS_PRESENT; PAGE_IS_SWAPPED
 * however also matches the uffd-wp markers that write-protect never-populated pages, so asking for it when no
 * swap exists would report every protected empty page. */
static bool swap_configured(void)
{
    struct sysinfo si;
    if (sysinfo(&si) != 0) {
        return true;
    }
    return si.totalswap != 0;
}

int ferry__pagemap_scan_regions(int pagemap_fd, FerryRamBlock *b, uint64_t first, uint64_t count, uint64_t flags,
                                uint64_t category_mask, uint64_t inverted, uint64_t anyof_mask, uint64_t return_mask,
                                void (*region)(void *opaque, uint64_t first, uint64_t count, uint64_t categories),
                                void *opaque, uint64_t *stuck_at)
{
    uint64_t ps = ferry_ram_page_size();
    uint64_t base = (uint64_t)(uintptr_t)b->host;
    uint64_t end = base + FERRY_MIN(first + count, b->npages) * ps;
    uint64_t cursor = base + first * ps;
    struct page_region vec[SCAN_VEC_LEN];

    while (cursor < end) {
        struct pm_scan_arg arg = {
            .size = sizeof(arg),
            .flags = flags,
            .start = cursor,
            .end = end,
            .vec = (uint64_t)(uintptr_t)vec,
            .vec_len = SCAN_VEC_LEN,
            .category_mask = category_mask,
            .category_inverted = inverted,
            .category_anyof_mask = anyof_mask,
            .return_mask = category_mask | anyof_mask | return_mask,
        };
        int n = ioctl(pagemap_fd, PAGEMAP_SCAN, &arg);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            return errno;
        }
        FERRY_MARK_DEFINED(vec, (size_t)n * sizeof(vec[0]));
        FERRY_MARK_DEFINED(&arg.walk_end, sizeof(arg.walk_end));
        /* With PM_SCAN_WP_MATCHING the kernel re-protected exactly the pages it returned; when the vector filled
         * up it stopped at walk_end, and the next call continues from there. */
        for (int i = 0; i < n; i++) {
            uint64_t s = FERRY_MAX(vec[i].start, base);
            uint64_t e = FERRY_MIN(vec[i].end, end);
            if (e > s) {
                region(opaque, (s - base) / ps, (e - s) / ps, vec[i].categories);
            }
        }
        if (arg.walk_end <= cursor) {
            *stuck_at = cursor - base; /* no progress: do not spin */
            return -1;
        }
        cursor = arg.walk_end;
    }
    return 0;
}

typedef struct ScanToBitmap {
    unsigned long *bitmap;
    uint64_t found;
} ScanToBitmap;

static void scan_to_bitmap(void *opaque, uint64_t first, uint64_t count, uint64_t categories)
{
    (void)categories;
    ScanToBitmap *sb = opaque;
    if (sb->bitmap) {
        ferry__bitmap_set_range(sb->bitmap, (size_t)first, (size_t)count);
    }
    sb->found += count;
}

int ferry__pagemap_scan(int pagemap_fd, FerryRamBlock *b, uint64_t flags, uint64_t category_mask,
                        uint64_t inverted, uint64_t anyof_mask, unsigned long *bitmap, uint64_t *found,
                        uint64_t *stuck_at)
{
    ScanToBitmap sb = {.bitmap = bitmap};
    int err = ferry__pagemap_scan_regions(pagemap_fd, b, 0, b->npages, flags, category_mask, inverted, anyof_mask, 0,
                                          scan_to_bitmap, &sb, stuck_at);
    if (found) {
        *found = sb.found;
    }
    return err;
}

/*
 * A page of a file mapping that was never faulted in is not "present", yet it reads as the file's content: every
 * page over the file's data may hold data. A page over a hole reads as zero, like an untouched anonymous page, and
 * need not even be read (the kernel knows: SEEK_DATA / SEEK_HOLE); a private copy this process wrote over a hole
 * is found by the pagemap walk that follows. Where the file system cannot tell, every page counts.
 */
static bool file_present_pages(FerryRamBlock *b, unsigned long *bitmap)
{
    uint64_t ps = ferry_ram_page_size();
    uint64_t start = b->file_offset, end = b->file_offset + b->size, pos = start;
    bool any = false;
    while (pos < end) {
        off_t data = lseek(b->file_fd, (off_t)pos, SEEK_DATA);
        if (data < 0) {
            if (errno != ENXIO) {
                ferry__bitmap_set_range(bitmap, 0, (size_t)b->npages); /* cannot tell: all of it */
                any = true;
            }
            break; /* ENXIO: no data past pos */
        }
        if ((uint64_t)data >= end) {
            break;
        }
        off_t hole = lseek(b->file_fd, data, SEEK_HOLE);
        uint64_t stop = hole < 0 ? end : FERRY_MIN((uint64_t)hole, end);
        uint64_t first = ((uint64_t)data - start) / ps, last = (stop - start + ps - 1) / ps;
        ferry__bitmap_set_range(bitmap, (size_t)first, (size_t)(last - first));
        any = true;
        pos = stop;
    }
    return any;
}

/* The pieces of a file block to map (map_for_reading), taken by its threads in turn. */
typedef struct MapWork {
    FerryRamBlock *b;
    uint64_t (*piece)[2]; /* [offset, length] in the block */
    size_t n;
    size_t next; /* atomic: the next piece to take */
} MapWork;

static void *map_worker(void *opaque)
{
    MapWork *w = opaque;
    for (size_t i; (i = __atomic_fetch_add(&w->next, 1, __ATOMIC_RELAXED)) < w->n;) {
        madvise(w->b->host + w->piece[i][0], (size_t)w->piece[i][1], MADV_POPULATE_READ);
    }
    return NULL;
}

void ferry__ram_block_map_for_reading(FerryRamBlock *b)
{
    if (!b->file) {
        return;
    }
    /* Once the uffd-wp tracker has registered the mapping, the kernel no longer maps 16 pages per read fault (no
     * fault-around under userfaultfd write-protect), so reading the block would take one fault per 4 KiB page;
     * and even one MADV_POPULATE_READ then maps page by page. Before registration it maps the file's pages in
     * with fault-around: page-cache pages are mapped, no memory is added, the content does not change. On
     * failure (a kernel before 5.14) the pages just fault in as they are read. Holes are left alone (mapping
     * them would have the file system allocate them). This is all of the migration's setup for file-backed RAM
     * (about 0.12 s per GiB here, docs/memory.md), CPU work in the kernel while the destination waits: it is
     * shared between as many threads as there are CPUs, at most 4, in pieces of POPULATE_CHUNK. */
    uint64_t ps = ferry_ram_page_size();
    uint64_t start = b->file_offset, end = b->file_offset + b->size, pos = start;
    MapWork w = { .b = b };
    size_t cap = 0;
    while (pos < end) {
        off_t data = lseek(b->file_fd, (off_t)pos, SEEK_DATA);
        uint64_t from = data < 0 ? (errno == ENXIO ? end : pos) : (uint64_t)data;
        if (from >= end) {
            break;
        }
        off_t hole = data < 0 ? -1 : lseek(b->file_fd, data, SEEK_HOLE);
        uint64_t stop = hole < 0 ? end : FERRY_MIN((uint64_t)hole, end);
        uint64_t lo = (from - start) / ps * ps, hi = (stop - start + ps - 1) / ps * ps;
        for (uint64_t off = lo; off < hi; off += POPULATE_CHUNK) {
            if (w.n == cap) {
                cap = cap ? cap * 2 : 64;
                w.piece = ferry__xrealloc(w.piece, cap * sizeof(*w.piece));
            }
            w.piece[w.n][0] = off;
            w.piece[w.n][1] = FERRY_MIN(POPULATE_CHUNK, hi - off);
            w.n++;
        }
        pos = stop;
    }
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    size_t nthreads = (size_t)FERRY_MIN(FERRY_MIN(cpus > 0 ? cpus : 1, 4), (long)w.n);
    pthread_t t[4];
    bool started[4] = { false };
    for (size_t i = 1; i < nthreads; i++) {
        started[i] = pthread_create(&t[i], NULL, map_worker, &w) == 0;
    }
    map_worker(&w);
    for (size_t i = 1; i < nthreads; i++) {
        if (started[i]) {
            pthread_join(t[i], NULL);
        }
    }
    free(w.piece);
}

bool ferry__ram_block_present_pages(FerryRamBlock *b, unsigned long *bitmap)
{
    bool any = false;
    if (b->file) {
        any = file_present_pages(b, bitmap);
    }
    int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        ferry__bitmap_set_range(bitmap, 0, (size_t)b->npages);
        return true;
    }
    bool swap = swap_configured();
    uint64_t stuck, found = 0, found2 = 0;
    /* A file block's pages of the file itself were counted by the file's data above (a page of a hole can be
     * mapped too, zero-filled by readahead); what the walk adds are the private copies this process wrote. */
    uint64_t not_file = b->file ? PAGE_IS_FILE : 0;
    bool ok = ferry__pagemap_scan(fd, b, 0, not_file, not_file, PAGE_IS_PRESENT | (swap ? PAGE_IS_SWAPPED : 0),
                                  bitmap, &found, &stuck) == 0;
    if (ok && !swap && swap_configured()) {
        /* Swap appeared during the walk: a page may have left memory behind the cursor. Walk again with it. */
        ok = ferry__pagemap_scan(fd, b, 0, not_file, not_file, PAGE_IS_PRESENT | PAGE_IS_SWAPPED, bitmap,
                                 &found2, &stuck) == 0;
    }
    if (!ok) {
        /* No PAGEMAP_SCAN (before Linux 6.7) or it failed: every page may hold data. */
        ferry__bitmap_set_range(bitmap, 0, (size_t)b->npages);
        found = 1;
    }
    close(fd);
    return any || found || found2;
}

bool ferry_ram_block_prealloc(FerryRamBlock *b, FerryError **errp)
{
    return ferry_ram_block_prealloc_threads(b, 1, errp);
}

/* One prealloc thread's share: bytes [off, end) of the block. */
typedef struct PreallocPart {
    pthread_t thread;
    bool threaded; /* runs on its own thread (else it ran on the caller's) */
    FerryRamBlock *b;
    uint64_t off, end, failed_at;
    int err;
} PreallocPart;

static void *prealloc_part(void *opaque)
{
    PreallocPart *p = opaque;
    p->err = populate_bytes(p->b, p->off, p->end, &p->failed_at);
    return NULL;
}

bool ferry_ram_block_prealloc_threads(FerryRamBlock *b, unsigned threads, FerryError **errp)
{
    if (threads == 0 || threads > FERRY_PREALLOC_THREADS_MAX) {
        ferry_error_setg(errp, "RAM block '%s': %u prealloc threads (1 to %d)", b->name, threads,
                         FERRY_PREALLOC_THREADS_MAX);
        return false;
    }
    /* Parts are whole huge pages, so that no two threads fault the same 2 MiB page. */
    uint64_t huge = FERRY_DIV_ROUND_UP(b->size, THP_ALIGN);
    uint64_t nparts = FERRY_MIN((uint64_t)threads, huge), per = FERRY_DIV_ROUND_UP(huge, nparts) * THP_ALIGN;
    PreallocPart part[FERRY_PREALLOC_THREADS_MAX];
    unsigned n = 0;
    for (uint64_t off = 0; off < b->size; off += per, n++) {
        part[n] = (PreallocPart){ .b = b, .off = off, .end = FERRY_MIN(b->size, off + per) };
    }
    /* Part 0 runs on this thread, the others on their own; a part whose thread cannot start runs here too. */
    for (unsigned i = 1; i < n; i++) {
        part[i].threaded = pthread_create(&part[i].thread, NULL, prealloc_part, &part[i]) == 0;
    }
    for (unsigned i = 0; i < n; i++) {
        if (!part[i].threaded) {
            prealloc_part(&part[i]);
        }
    }
    int err = 0;
    uint64_t at = 0;
    for (unsigned i = 0; i < n; i++) {
        if (part[i].threaded) {
            pthread_join(part[i].thread, NULL);
        }
        if (part[i].err && !err) {
            err = part[i].err;
            at = part[i].failed_at;
        }
    }
    if (err) {
        ferry_error_setg_errno(errp, err, "RAM block '%s': populating at offset %llu", b->name,
                               (unsigned long long)at);
        return false;
    }
    b->populated = true;
    return true;
}

uint64_t ferry_ram_block_page_size(const FerryRamBlock *b)
{
    return b->page_size;
}

void *ferry_ram_block_host(const FerryRamBlock *b)
{
    return b->host;
}

uint64_t ferry_ram_block_size(const FerryRamBlock *b)
{
    return b->size;
}

const char *ferry_ram_block_name(const FerryRamBlock *b)
{
    return b->name;
}

void ferry_ram_mark_dirty(FerryRamBlock *b, uint64_t offset, uint64_t len)
{
    if (!b || len == 0 || offset >= b->size) {
        return;
    }
    if (len > b->size - offset) {
        len = b->size - offset;
    }
    uint64_t ps = ferry_ram_page_size();
    uint64_t first = offset / ps;
    uint64_t last = (offset + len - 1) / ps;
    ferry__bitmap_set_range_atomic(b->explicit_dirty, (size_t)first, (size_t)(last - first + 1));
    __atomic_store_n(&b->explicit_any, true, __ATOMIC_SEQ_CST);
}
