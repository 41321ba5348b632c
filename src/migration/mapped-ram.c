/*
 * mapped-ram: RAM written to and read from fixed offsets of a file (mapped-ram.h says what each side does). The
 * layout, for the blocks in CONFIG order, each region after the one before:
 *
 *   [MAPPED_RAM record] [bitmap 0] [checksums 0] ... [pages 0, 1 MiB aligned] [bitmap 1] ... [pages n-1] [records...]
 *
 * Invariant the instant restore relies on: in a finished file, a page whose bitmap bit is clear reads as zero in
 * its page region. The writer keeps it: the file is cut to the end of the regions when the save starts (new pages
 * regions are holes), and a page found zero after it was written with data gets its range punched out again
 * (written with zeros where the file system cannot punch). So the page regions are the RAM, byte for byte, and
 * can be mapped as it.
 *
 * The checksums are ferry's (QEMU's mapped-ram has none): a CRC32C per page, computed over the bytes written (a
 * copy while the workload runs, so a concurrent write cannot make a false mismatch; such a write is caught by dirty
 * tracking and the page written again). The copy restore checks every page before the workload runs; the mapped
 * restore cannot, since it reads nothing up front, so its verifier checks the pages behind the running workload
 * and reports a damaged one (docs/snapshots.md says what that means).
 *
 * Threads: the writer's pool takes runs from a small queue (the migration thread fills it, the fault thread of
 * background-snapshot writes its own runs directly); the bitmap is set with atomics because runs of different
 * threads may share a word; each page's checksum slot has one writer at a time. The loader's threads take chunks
 * of present pages under a lock. Nothing here writes stream records.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "migration/mapped-ram.h"
#include "util/bitmap.h"
#include "util/util.h"

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif

#define CHUNK_PAGES FERRY_WIRE_MAX_RUN_PAGES
/* A reader's chunk: at most a 2 MiB-aligned 2 MiB, so that threads loading in parallel never share a transparent
 * huge page of the destination (two threads faulting in halves of one would serialise on it). */
#define LOAD_CHUNK_PAGES 512
#define QUEUE_LEN 64
#define IO_ALIGN 4096u

static uint64_t align_up(uint64_t v, uint64_t a)
{
    return (v + a - 1) / a * a;
}

uint8_t *ferry__mapped_scratch_new(void)
{
    void *p = NULL;
    if (posix_memalign(&p, IO_ALIGN, (size_t)CHUNK_PAGES * ferry_ram_page_size()) != 0) {
        fprintf(stderr, "ferry: out of memory for a mapped-ram buffer\n");
        abort();
    }
    return p;
}

/* Writes @len bytes at @off in full, or sets *errp naming @what and the offset. */
static bool pwrite_all(int fd, const void *buf, size_t len, uint64_t off, const char *path, const char *what,
                       FerryError **errp)
{
    const uint8_t *p = buf;
    while (len > 0) {
        ssize_t n = pwrite(fd, p, len, (off_t)off);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            ferry_error_setg_errno(errp, n < 0 ? errno : ENOSPC, "Failed to write %s to '%s' at offset %llu", what,
                                   path, (unsigned long long)off);
            return false;
        }
        p += n;
        off += (uint64_t)n;
        len -= (size_t)n;
    }
    return true;
}

/* Reads @len bytes at @off in full; the end of the file before them is an error that says where it is. */
static bool pread_all(int fd, void *buf, size_t len, uint64_t off, const char *path, const char *what,
                      FerryError **errp)
{
    uint8_t *p = buf;
    while (len > 0) {
        ssize_t n = pread(fd, p, len, (off_t)off);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0) {
            ferry_error_setg_errno(errp, errno, "Failed to read %s from '%s' at offset %llu", what, path,
                                   (unsigned long long)off);
            return false;
        }
        if (n == 0) {
            ferry_error_setg(errp, "'%s' ends at offset %llu, inside %s (the file is cut short)", path,
                             (unsigned long long)off, what);
            return false;
        }
        p += n;
        off += (uint64_t)n;
        len -= (size_t)n;
    }
    return true;
}

/* An O_DIRECT descriptor of @f's file for page data, or -1 with the reason (the file system refuses it). */
static int open_direct(const FerryMappedFile *f, bool write, FerryError **errp)
{
    if (f->base % IO_ALIGN) {
        ferry_error_setg(errp, "direct-io needs the stream to start at a multiple of %u bytes in '%s' (the file: "
                         "offset is %llu)", IO_ALIGN, f->path, (unsigned long long)f->base);
        return -1;
    }
    int fd = open(f->path, (write ? O_WRONLY : O_RDONLY) | O_DIRECT | O_CLOEXEC);
    if (fd < 0) {
        ferry_error_setg_errno(errp, errno, "direct-io: '%s' cannot be opened with O_DIRECT (its file system does "
                               "not support direct I/O; turn direct-io off)", f->path);
    }
    return fd;
}

/* ---- Source: the writer ---- */

typedef struct WriterBlock {
    FerryRamBlock *b;
    unsigned long *bitmap; /* atomic: pages written with data */
    uint32_t *crc;         /* per page */
} WriterBlock;

typedef struct Job {
    size_t bi;
    uint64_t first;
    uint32_t n;
    bool stable;
} Job;

struct FerryMappedWriter {
    FerryMappedFile f;
    char *path;
    int dfd;                /* O_DIRECT descriptor for page data, or -1 */
    size_t ps;
    WriterBlock *blocks;
    size_t n;
    FerryWireMappedBlock *layout;
    uint64_t resume;
    uint8_t *scratch;       /* the migration thread's */
    uint64_t bytes, normal, zero; /* atomic */

    pthread_t *threads;
    unsigned nthreads;
    pthread_mutex_t lock;
    pthread_cond_t cond;    /* queue changed */
    Job queue[QUEUE_LEN];
    size_t head, len;       /* queued jobs */
    unsigned busy;          /* jobs taken and not finished */
    bool stop;
    FerryError *err;        /* the first failure */
};

/* The range of page @page of block @bi is made to read as zero: punched, or written with zeros. */
static bool write_hole(FerryMappedWriter *w, size_t bi, uint64_t page, FerryError **errp)
{
    uint64_t off = w->f.base + w->layout[bi].pages + page * w->ps;
    if (fallocate(w->f.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off, (off_t)w->ps) == 0) {
        return true;
    }
    static const uint8_t zeros[65536];
    return pwrite_all(w->f.fd, zeros, w->ps, off, w->path, "a zero page", errp);
}

/* A segment of @count pages from @src (contiguous) written at page @first of block @bi. */
static bool write_segment(FerryMappedWriter *w, size_t bi, uint64_t first, const uint8_t *src, uint64_t count,
                          FerryError **errp)
{
    if (count == 0) {
        return true;
    }
    uint64_t off = w->f.base + w->layout[bi].pages + first * w->ps;
    char what[320];
    snprintf(what, sizeof(what), "pages %llu-%llu of RAM block '%s'", (unsigned long long)first,
             (unsigned long long)(first + count - 1), w->blocks[bi].b->name);
    if (!pwrite_all(w->dfd >= 0 ? w->dfd : w->f.fd, src, (size_t)(count * w->ps), off, w->path, what, errp)) {
        return false;
    }
    __atomic_fetch_add(&w->bytes, count * w->ps, __ATOMIC_RELAXED);
    __atomic_fetch_add(&w->normal, count, __ATOMIC_RELAXED);
    return true;
}

/* One run, on whichever thread: pages grouped into segments of consecutive pages with data. */
static bool write_run(FerryMappedWriter *w, const Job *j, uint8_t *buf, FerryError **errp)
{
    WriterBlock *wb = &w->blocks[j->bi];
    uint8_t *host = wb->b->host;
    /* A copy makes the CRC describe exactly the bytes written while RAM may change; O_DIRECT reads the source
     * buffer after we return from nothing, so RAM can be written from directly only when it is stable. */
    bool copy = !j->stable;
    uint64_t seg = j->first, segn = 0;
    uint8_t *segsrc = copy ? buf : host + j->first * w->ps;
    for (uint32_t i = 0; i < j->n; i++) {
        uint64_t page = j->first + i;
        uint8_t *p = host + page * w->ps;
        if (ferry__buffer_is_zero(p, w->ps)) {
            if (!write_segment(w, j->bi, seg, segsrc, segn, errp)) {
                return false;
            }
            if (ferry__bitmap_test_and_clear_atomic(wb->bitmap, page) && !write_hole(w, j->bi, page, errp)) {
                return false;
            }
            __atomic_fetch_add(&w->zero, 1, __ATOMIC_RELAXED);
            seg = page + 1;
            segn = 0;
            segsrc = copy ? buf : p + w->ps;
            continue;
        }
        uint32_t crc = 0;
        if (copy) {
            uint8_t *dst = buf + segn * w->ps;
            if (w->f.checksums) {
                crc = ferry__crc32c_copy(0, dst, p, w->ps);
            } else {
                memcpy(dst, p, w->ps);
            }
        } else if (w->f.checksums) {
            crc = ferry__crc32c(0, p, w->ps);
        }
        wb->crc[page] = crc;
        ferry__bitmap_set_range_atomic(wb->bitmap, (size_t)page, 1);
        segn++;
    }
    return write_segment(w, j->bi, seg, segsrc, segn, errp);
}

static void latch_locked(FerryMappedWriter *w, FerryError *err)
{
    if (w->err) {
        ferry_error_free(err);
    } else {
        w->err = err;
    }
}

static void *writer_thread(void *opaque)
{
    FerryMappedWriter *w = opaque;
    uint8_t *buf = ferry__mapped_scratch_new();
    pthread_mutex_lock(&w->lock);
    for (;;) {
        while (!w->stop && w->len == 0) {
            pthread_cond_wait(&w->cond, &w->lock);
        }
        if (w->stop) {
            break;
        }
        Job j = w->queue[w->head];
        w->head = (w->head + 1) % QUEUE_LEN;
        w->len--;
        w->busy++;
        bool skip = w->err != NULL; /* after a failure the rest is dropped: the migration fails anyway */
        pthread_cond_broadcast(&w->cond);
        pthread_mutex_unlock(&w->lock);
        FerryError *err = NULL;
        bool ok = skip || write_run(w, &j, buf, &err);
        pthread_mutex_lock(&w->lock);
        if (!ok) {
            latch_locked(w, err);
        }
        w->busy--;
        pthread_cond_broadcast(&w->cond);
    }
    pthread_mutex_unlock(&w->lock);
    free(buf);
    return NULL;
}

/* The latched error, copied to *errp: false if there is one. */
static bool writer_check_locked(FerryMappedWriter *w, FerryError **errp)
{
    if (!w->err) {
        return true;
    }
    if (errp && !*errp) {
        *errp = ferry_error_copy(w->err);
    }
    return false;
}

FerryMappedWriter *ferry__mapped_writer_new(FerryRamBlock **blocks, size_t n, const FerryMappedFile *f, uint64_t start,
                                            unsigned threads, FerryWireMapped *layout, FerryError **errp)
{
    FerryMappedWriter *w = ferry__xcalloc(1, sizeof(*w));
    w->f = *f;
    w->path = ferry__xstrdup(f->path);
    w->f.path = w->path;
    w->dfd = -1;
    w->ps = ferry_ram_page_size();
    w->n = n;
    w->blocks = ferry__xcalloc(n ? n : 1, sizeof(*w->blocks));
    w->layout = ferry__xcalloc(n ? n : 1, sizeof(*w->layout));
    pthread_mutex_init(&w->lock, NULL);
    pthread_cond_init(&w->cond, NULL);
    uint64_t end = start;
    for (size_t i = 0; i < n; i++) {
        FerryRamBlock *b = blocks[i];
        w->blocks[i].b = b;
        w->blocks[i].bitmap = ferry__bitmap_new((size_t)b->npages);
        w->blocks[i].crc = ferry__xcalloc(b->npages ? b->npages : 1, sizeof(uint32_t));
        w->layout[i].bitmap = align_up(end, IO_ALIGN);
        w->layout[i].checksums = align_up(w->layout[i].bitmap + (b->npages + 7) / 8, IO_ALIGN);
        w->layout[i].pages = align_up(w->layout[i].checksums + b->npages * 4, FERRY_WIRE_MAPPED_ALIGN);
        end = w->layout[i].pages + b->size;
    }
    w->resume = align_up(end, IO_ALIGN);
    *layout = (FerryWireMapped){ .nblocks = (uint32_t)n, .resume = w->resume, .blocks = w->layout };
    /* The regions as holes: whatever the file held there before reads as zero now. */
    if (ftruncate(f->fd, (off_t)(f->base + w->resume)) != 0) {
        ferry_error_setg_errno(errp, errno, "Failed to size '%s' for mapped-ram (%llu bytes)", f->path,
                               (unsigned long long)(f->base + w->resume));
        goto fail;
    }
    if (f->direct && (w->dfd = open_direct(f, true, errp)) < 0) {
        goto fail;
    }
    w->scratch = ferry__mapped_scratch_new();
    w->threads = ferry__xcalloc(threads ? threads : 1, sizeof(*w->threads));
    for (unsigned t = 0; t < threads; t++) {
        int rc = pthread_create(&w->threads[t], NULL, writer_thread, w);
        if (rc != 0) {
            ferry_error_setg_errno(errp, rc, "cannot create a mapped-ram writer thread");
            goto fail;
        }
        char name[32];
        snprintf(name, sizeof(name), "mig/src/file%u", t % 100);
        pthread_setname_np(w->threads[t], name);
        w->nthreads++;
    }
    return w;
fail:
    ferry__mapped_writer_free(w);
    return NULL;
}

bool ferry__mapped_writer_run(FerryMappedWriter *w, size_t bi, uint64_t first, uint32_t n, bool stable,
                              uint8_t *scratch, FerryError **errp)
{
    Job j = { .bi = bi, .first = first, .n = n, .stable = stable };
    FERRY_ASSERT(n >= 1 && n <= CHUNK_PAGES && bi < w->n);
    if (w->nthreads == 0 || scratch) {
        FerryError *err = NULL;
        if (write_run(w, &j, scratch ? scratch : w->scratch, &err)) {
            return true;
        }
        pthread_mutex_lock(&w->lock);
        latch_locked(w, err);
        bool ok = writer_check_locked(w, errp);
        pthread_mutex_unlock(&w->lock);
        return ok;
    }
    pthread_mutex_lock(&w->lock);
    while (w->len == QUEUE_LEN && !w->err) {
        pthread_cond_wait(&w->cond, &w->lock);
    }
    bool ok = writer_check_locked(w, errp);
    if (ok) {
        w->queue[(w->head + w->len) % QUEUE_LEN] = j;
        w->len++;
        pthread_cond_broadcast(&w->cond);
    }
    pthread_mutex_unlock(&w->lock);
    return ok;
}

bool ferry__mapped_writer_sync(FerryMappedWriter *w, FerryError **errp)
{
    pthread_mutex_lock(&w->lock);
    while ((w->len || w->busy) && !w->err) {
        pthread_cond_wait(&w->cond, &w->lock);
    }
    /* After a failure the queued rest is dropped by the threads; wait for the busy ones all the same. */
    while (w->busy) {
        pthread_cond_wait(&w->cond, &w->lock);
    }
    bool ok = writer_check_locked(w, errp);
    pthread_mutex_unlock(&w->lock);
    return ok;
}

bool ferry__mapped_writer_finish(FerryMappedWriter *w, uint64_t *present, FerryError **errp)
{
    if (!ferry__mapped_writer_sync(w, errp)) {
        return false;
    }
    *present = 0;
    for (size_t i = 0; i < w->n; i++) {
        WriterBlock *wb = &w->blocks[i];
        uint64_t np = wb->b->npages;
        size_t bmlen = (size_t)((np + 7) / 8);
        uint8_t *bm = ferry__xcalloc(bmlen ? bmlen : 1, 1);
        uint8_t *cs = ferry__xcalloc(np ? np * 4 : 1, 1);
        ferry__bitmap_to_bytes(wb->bitmap, (size_t)np, bm);
        *present += ferry__bitmap_count(wb->bitmap, (size_t)np);
        for (size_t p = ferry__bitmap_find_next(wb->bitmap, (size_t)np, 0); p < np;
             p = ferry__bitmap_find_next(wb->bitmap, (size_t)np, p + 1)) {
            ferry__put_be32(cs + p * 4, wb->crc[p]);
        }
        char what[300];
        snprintf(what, sizeof(what), "the page bitmap of RAM block '%s'", wb->b->name);
        bool ok = pwrite_all(w->f.fd, bm, bmlen, w->f.base + w->layout[i].bitmap, w->path, what, errp);
        snprintf(what, sizeof(what), "the page checksums of RAM block '%s'", wb->b->name);
        ok = ok && pwrite_all(w->f.fd, cs, (size_t)(np * 4), w->f.base + w->layout[i].checksums, w->path, what,
                              errp);
        free(bm);
        free(cs);
        if (!ok) {
            return false;
        }
    }
    return true;
}

void ferry__mapped_writer_stats(FerryMappedWriter *w, uint64_t *bytes, uint64_t *normal, uint64_t *zero)
{
    *bytes = __atomic_load_n(&w->bytes, __ATOMIC_RELAXED);
    *normal = __atomic_load_n(&w->normal, __ATOMIC_RELAXED);
    *zero = __atomic_load_n(&w->zero, __ATOMIC_RELAXED);
}

void ferry__mapped_writer_free(FerryMappedWriter *w)
{
    if (!w) {
        return;
    }
    pthread_mutex_lock(&w->lock);
    w->stop = true;
    pthread_cond_broadcast(&w->cond);
    pthread_mutex_unlock(&w->lock);
    for (unsigned t = 0; t < w->nthreads; t++) {
        pthread_join(w->threads[t], NULL);
    }
    free(w->threads);
    for (size_t i = 0; i < w->n; i++) {
        free(w->blocks[i].bitmap);
        free(w->blocks[i].crc);
    }
    if (w->dfd >= 0) {
        close(w->dfd);
    }
    ferry_error_free(w->err);
    pthread_mutex_destroy(&w->lock);
    pthread_cond_destroy(&w->cond);
    free(w->blocks);
    free(w->layout);
    free(w->scratch);
    free(w->path);
    free(w);
}

/* ---- Destination ---- */

/* A block's metadata as read from the file. */
typedef struct ReadBlock {
    FerryRamBlock *b;
    unsigned long *bitmap;
    uint32_t *crc; /* NULL without checksums */
    uint64_t pages_off; /* absolute file offset of page 0 */
} ReadBlock;

static void read_blocks_free(ReadBlock *rb, size_t n)
{
    for (size_t i = 0; rb && i < n; i++) {
        free(rb[i].bitmap);
        free(rb[i].crc);
    }
    free(rb);
}

/* Reads every block's bitmap (and checksum table if @with_crc); *present counts the pages with data. */
static ReadBlock *read_blocks(FerryRamBlock **blocks, size_t n, const FerryMappedFile *f,
                              const FerryWireMapped *layout, bool with_crc, uint64_t *present, FerryError **errp)
{
    ReadBlock *rb = ferry__xcalloc(n ? n : 1, sizeof(*rb));
    *present = 0;
    for (size_t i = 0; i < n; i++) {
        FerryRamBlock *b = blocks[i];
        uint64_t np = b->npages;
        size_t bmlen = (size_t)((np + 7) / 8);
        rb[i].b = b;
        rb[i].pages_off = f->base + layout->blocks[i].pages;
        rb[i].bitmap = ferry__bitmap_new((size_t)np);
        uint8_t *bm = ferry__xmalloc(bmlen ? bmlen : 1);
        char what[300];
        snprintf(what, sizeof(what), "the page bitmap of RAM block '%s'", b->name);
        bool ok = pread_all(f->fd, bm, bmlen, f->base + layout->blocks[i].bitmap, f->path, what, errp);
        /* Bits past the last page must be clear, as in every bitmap of the format. */
        if (ok && np % 8 && (bm[bmlen - 1] >> (np % 8))) {
            ferry_error_setg(errp, "the page bitmap of RAM block '%s' at offset %llu has bits set past its %llu "
                             "pages", b->name, (unsigned long long)(f->base + layout->blocks[i].bitmap + bmlen - 1),
                             (unsigned long long)np);
            ok = false;
        }
        if (ok) {
            ferry__bitmap_from_bytes(rb[i].bitmap, (size_t)np, bm);
            *present += ferry__bitmap_count(rb[i].bitmap, (size_t)np);
        }
        free(bm);
        if (ok && with_crc) {
            uint8_t *cs = ferry__xmalloc(np ? np * 4 : 1);
            snprintf(what, sizeof(what), "the page checksums of RAM block '%s'", b->name);
            ok = pread_all(f->fd, cs, (size_t)(np * 4), f->base + layout->blocks[i].checksums, f->path, what, errp);
            rb[i].crc = ferry__xmalloc(np ? np * 4 : 1);
            for (uint64_t p = 0; ok && p < np; p++) {
                rb[i].crc[p] = ferry__get_be32(cs + p * 4);
            }
            free(cs);
        }
        if (!ok) {
            read_blocks_free(rb, n);
            return NULL;
        }
    }
    return rb;
}

/* The error for page @page of @rb whose data does not match its checksum. */
static void page_damaged(const ReadBlock *rb, uint64_t page, size_t ps, const char *path, uint32_t want, uint32_t got,
                         FerryError **errp)
{
    ferry_error_setg(errp, "'%s' is damaged at offset %llu (page %llu of RAM block '%s'): CRC32C 0x%08x, the file's "
                     "table says 0x%08x", path, (unsigned long long)(rb->pages_off + page * ps),
                     (unsigned long long)page, rb->b->name, got, want);
}

typedef struct Loader {
    const FerryMappedFile *f;
    int dfd;
    ReadBlock *rb;
    size_t n;
    size_t ps;
    pthread_mutex_t lock;
    size_t bi;          /* cursor: the next chunk starts at page @page of block @bi */
    uint64_t page;
    FerryError *err;
} Loader;

/* The next chunk of consecutive present pages within one LOAD_CHUNK_PAGES-aligned stretch: false when there is
 * none or after a failure. */
static bool next_chunk(Loader *l, size_t *bi, uint64_t *first, uint32_t *count)
{
    pthread_mutex_lock(&l->lock);
    bool found = false;
    while (!l->err && l->bi < l->n) {
        ReadBlock *rb = &l->rb[l->bi];
        size_t np = (size_t)rb->b->npages;
        size_t i = ferry__bitmap_find_next(rb->bitmap, np, (size_t)l->page);
        if (i >= np) {
            l->bi++;
            l->page = 0;
            continue;
        }
        size_t end = FERRY_MIN(ferry__bitmap_find_next_zero(rb->bitmap, np, i),
                               (i / LOAD_CHUNK_PAGES + 1) * LOAD_CHUNK_PAGES);
        *bi = l->bi;
        *first = i;
        *count = (uint32_t)(end - i);
        l->page = end;
        found = true;
        break;
    }
    pthread_mutex_unlock(&l->lock);
    return found;
}

/* One chunk: read into @buf (in cache), then into RAM and checked in one pass. */
static bool load_chunk(Loader *l, size_t bi, uint64_t first, uint32_t count, uint8_t *buf, FerryError **errp)
{
    ReadBlock *rb = &l->rb[bi];
    size_t len = (size_t)count * l->ps;
    char what[320];
    snprintf(what, sizeof(what), "pages %llu-%llu of RAM block '%s'", (unsigned long long)first,
             (unsigned long long)(first + count - 1), rb->b->name);
    if (!pread_all(l->dfd >= 0 ? l->dfd : l->f->fd, buf, len, rb->pages_off + first * l->ps, l->f->path, what,
                   errp)) {
        return false;
    }
    uint8_t *dst = rb->b->host + first * l->ps;
    ferry__ram_block_prepare_write(rb->b, dst, len);
    for (uint32_t i = 0; i < count; i++) {
        const uint8_t *src = buf + (size_t)i * l->ps;
        if (rb->crc) {
            uint32_t got = ferry__crc32c_copy(0, dst + (size_t)i * l->ps, src, l->ps);
            if (got != rb->crc[first + i]) {
                page_damaged(rb, first + i, l->ps, l->f->path, rb->crc[first + i], got, errp);
                return false;
            }
        } else {
            memcpy(dst + (size_t)i * l->ps, src, l->ps);
        }
    }
    ferry__ram_block_note_written(rb->b, first, count);
    return true;
}

/* A reader's buffer: LOAD_CHUNK_PAGES pages, aligned for O_DIRECT. */
static uint8_t *load_buffer_new(void)
{
    void *p = NULL;
    if (posix_memalign(&p, IO_ALIGN, (size_t)LOAD_CHUNK_PAGES * ferry_ram_page_size()) != 0) {
        fprintf(stderr, "ferry: out of memory for a mapped-ram buffer\n");
        abort();
    }
    return p;
}

static void *loader_thread(void *opaque)
{
    Loader *l = opaque;
    uint8_t *buf = load_buffer_new();
    size_t bi;
    uint64_t first;
    uint32_t count;
    while (next_chunk(l, &bi, &first, &count)) {
        FerryError *err = NULL;
        if (!load_chunk(l, bi, first, count, buf, &err)) {
            pthread_mutex_lock(&l->lock);
            if (!l->err) {
                l->err = err;
            } else {
                ferry_error_free(err);
            }
            pthread_mutex_unlock(&l->lock);
        }
    }
    free(buf);
    return NULL;
}

bool ferry__mapped_load(FerryRamBlock **blocks, size_t n, const FerryMappedFile *f, const FerryWireMapped *layout,
                        unsigned threads, uint64_t *present, FerryError **errp)
{
    ReadBlock *rb = read_blocks(blocks, n, f, layout, f->checksums, present, errp);
    if (!rb) {
        return false;
    }
    Loader l = { .f = f, .dfd = -1, .rb = rb, .n = n, .ps = ferry_ram_page_size() };
    if (f->direct && (l.dfd = open_direct(f, false, errp)) < 0) {
        read_blocks_free(rb, n);
        return false;
    }
    pthread_mutex_init(&l.lock, NULL);
    /* Pages absent from the file read as zero: RAM this process may have written before is cleared. */
    for (size_t i = 0; i < n; i++) {
        FerryRamBlock *b = blocks[i];
        for (size_t p = ferry__bitmap_find_next(b->recv_written, (size_t)b->npages, 0); p < b->npages;
             p = ferry__bitmap_find_next(b->recv_written, (size_t)b->npages, p + 1)) {
            if (!ferry__bitmap_test(rb[i].bitmap, p)) {
                ferry__ram_block_zero_page(b, p, l.ps);
            }
        }
    }
    threads = FERRY_MAX(threads, 1u);
    pthread_t *tids = ferry__xcalloc(threads, sizeof(*tids));
    unsigned started = 0;
    for (unsigned t = 1; t < threads; t++) {
        if (pthread_create(&tids[t], NULL, loader_thread, &l) != 0) {
            break; /* fewer threads: the work is shared by those there are */
        }
        char name[32];
        snprintf(name, sizeof(name), "mig/dst/file%u", t % 100);
        pthread_setname_np(tids[t], name);
        started = t;
    }
    loader_thread(&l); /* the incoming thread takes its share */
    for (unsigned t = 1; t <= started; t++) {
        pthread_join(tids[t], NULL);
    }
    free(tids);
    bool ok = l.err == NULL;
    if (!ok) {
        ferry_error_propagate(errp, l.err);
    }
    pthread_mutex_destroy(&l.lock);
    if (l.dfd >= 0) {
        close(l.dfd);
    }
    read_blocks_free(rb, n);
    return ok;
}

bool ferry__mapped_map(FerryRamBlock **blocks, size_t n, const FerryMappedFile *f, const FerryWireMapped *layout,
                       uint64_t *present, FerryError **errp)
{
    size_t ps = ferry_ram_page_size();
    for (size_t i = 0; i < n; i++) {
        FerryRamBlock *b = blocks[i];
        const char *why = b->hugetlb  ? "it is backed by hugetlb pages"
                          : b->adopted ? "its memory came from the source as a file descriptor"
                          : b->file    ? "it is a file mapping of its own (memory-backend-file)"
                          : b->fd >= 0 ? "it is a memfd (memory-backend-memfd), whose sharing a private mapping of "
                                         "the snapshot would break"
                                       : NULL;
        if (why) {
            ferry_error_setg(errp, "restore-mode 'map' cannot restore RAM block '%s': %s; use restore-mode 'copy'",
                             b->name, why);
            return false;
        }
        if ((f->base + layout->blocks[i].pages) % ps) {
            ferry_error_setg(errp, "restore-mode 'map' needs page-aligned page regions, and block '%s' starts at "
                             "offset %llu of '%s' (use a file: offset that is a multiple of %zu)", b->name,
                             (unsigned long long)(f->base + layout->blocks[i].pages), f->path, ps);
            return false;
        }
    }
    /* The bitmaps for the END count only; the pages themselves are not read. */
    ReadBlock *rb = read_blocks(blocks, n, f, layout, false, present, errp);
    if (!rb) {
        return false;
    }
    read_blocks_free(rb, n);
    for (size_t i = 0; i < n; i++) {
        if (!ferry__ram_block_map_file(blocks[i], f->fd, f->base + layout->blocks[i].pages, errp)) {
            return false;
        }
    }
    return true;
}

/* ---- The verifier of a mapped restore ---- */

struct FerryMappedVerifier {
    FerryMappedFile f;
    char *path;
    int fd;            /* our own reference to the file */
    FerryRamBlock **blocks; /* a copy of the array (the blocks live as long as the process) */
    FerryWireMapped layout; /* a copy */
    ReadBlock *rb;     /* the thread's, once it has read the metadata */
    size_t n;
    FerryMappedFailFn failed;
    void *opaque;
    pthread_t thread;
    bool stop;         /* atomic */
    int state;         /* atomic: 0 running, 1 passed, 2 failed, 3 stopped */
    uint64_t checked;  /* atomic */
    uint64_t total;    /* atomic: known once the thread has read the bitmaps */
};

static void *verify_thread(void *opaque)
{
    FerryMappedVerifier *v = opaque;
    size_t ps = ferry_ram_page_size();
    int state = 1;
    /* The metadata is read here, not by the incoming thread: the checksum tables grow with the RAM (4 bytes a
     * page), and the workload must not wait for them. */
    FerryError *err = NULL;
    uint64_t total = 0;
    v->rb = read_blocks(v->blocks, v->n, &v->f, &v->layout, v->f.checksums, &total, &err);
    __atomic_store_n(&v->total, total, __ATOMIC_RELAXED);
    if (!v->rb) {
        v->failed(v->opaque, err);
        ferry_error_free(err);
        __atomic_store_n(&v->state, 2, __ATOMIC_RELAXED);
        return NULL;
    }
    uint8_t *buf = load_buffer_new();
    Loader l = { .f = &v->f, .dfd = -1, .rb = v->rb, .n = v->n, .ps = ps };
    pthread_mutex_init(&l.lock, NULL);
    size_t bi;
    uint64_t first;
    uint32_t count;
    while (next_chunk(&l, &bi, &first, &count)) {
        if (__atomic_load_n(&v->stop, __ATOMIC_RELAXED)) {
            state = 3;
            break;
        }
        ReadBlock *rb = &v->rb[bi];
        char what[320];
        snprintf(what, sizeof(what), "pages %llu-%llu of RAM block '%s'", (unsigned long long)first,
                 (unsigned long long)(first + count - 1), rb->b->name);
        bool ok = pread_all(v->fd, buf, (size_t)count * ps, rb->pages_off + first * ps, v->path, what, &err);
        for (uint32_t i = 0; ok && rb->crc && i < count; i++) {
            uint32_t got = ferry__crc32c(0, buf + (size_t)i * ps, ps);
            if (got != rb->crc[first + i]) {
                page_damaged(rb, first + i, ps, v->path, rb->crc[first + i], got, &err);
                ok = false;
            }
        }
        if (!ok) {
            __atomic_store_n(&v->state, 2, __ATOMIC_RELAXED);
            v->failed(v->opaque, err);
            ferry_error_free(err);
            state = 2;
            break;
        }
        /* Prefetch: the checked pages into the workload's page tables (best effort, an old kernel lacks it). */
        (void)madvise(rb->b->host + first * ps, (size_t)count * ps, MADV_POPULATE_READ);
        __atomic_fetch_add(&v->checked, count, __ATOMIC_RELAXED);
    }
    pthread_mutex_destroy(&l.lock);
    free(buf);
    __atomic_store_n(&v->state, state, __ATOMIC_RELAXED);
    return NULL;
}

FerryMappedVerifier *ferry__mapped_verify_start(FerryRamBlock **blocks, size_t n, const FerryMappedFile *f,
                                                const FerryWireMapped *layout, FerryMappedFailFn failed, void *opaque,
                                                FerryError **errp)
{
    FerryMappedVerifier *v = ferry__xcalloc(1, sizeof(*v));
    v->path = ferry__xstrdup(f->path);
    v->f = *f;
    v->f.path = v->path;
    v->n = n;
    v->failed = failed;
    v->opaque = opaque;
    v->blocks = ferry__xcalloc(n ? n : 1, sizeof(*v->blocks));
    memcpy(v->blocks, blocks, n * sizeof(*blocks));
    v->layout = *layout;
    v->layout.blocks = ferry__xcalloc(n ? n : 1, sizeof(*layout->blocks));
    memcpy(v->layout.blocks, layout->blocks, n * sizeof(*layout->blocks));
    v->fd = fcntl(f->fd, F_DUPFD_CLOEXEC, 0);
    if (v->fd < 0) {
        ferry_error_setg_errno(errp, errno, "cannot keep '%s' open for the restore's verification", f->path);
        goto fail;
    }
    v->f.fd = v->fd;
    int rc = pthread_create(&v->thread, NULL, verify_thread, v);
    if (rc != 0) {
        ferry_error_setg_errno(errp, rc, "cannot create the restore's verifier thread");
        goto fail;
    }
    pthread_setname_np(v->thread, "mig/dst/verify");
    return v;
fail:
    if (v->fd >= 0) {
        close(v->fd);
    }
    free(v->layout.blocks);
    free(v->blocks);
    free(v->path);
    free(v);
    return NULL;
}

const char *ferry__mapped_verify_status(FerryMappedVerifier *v, uint64_t *checked, uint64_t *total)
{
    static const char *const names[] = { "running", "passed", "failed", "stopped" };
    *checked = __atomic_load_n(&v->checked, __ATOMIC_RELAXED);
    *total = __atomic_load_n(&v->total, __ATOMIC_RELAXED);
    return names[__atomic_load_n(&v->state, __ATOMIC_RELAXED) & 3];
}

void ferry__mapped_verify_free(FerryMappedVerifier *v)
{
    if (!v) {
        return;
    }
    __atomic_store_n(&v->stop, true, __ATOMIC_RELAXED);
    pthread_join(v->thread, NULL);
    read_blocks_free(v->rb, v->n);
    close(v->fd);
    free(v->layout.blocks);
    free(v->blocks);
    free(v->path);
    free(v);
}
