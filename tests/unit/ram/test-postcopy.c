/*
 * Unit tests of postcopy's userfaultfd layer (ram/uffd-missing.c) with real faults: a thread touches a dropped page
 * of an anonymous, memfd (shared and private) or tmpfs file block and sleeps until the test, having read the fault
 * (block, page, the thread's own tid), places the page; the thread must then see exactly the placed data. Also:
 * pages found present (EEXIST) skipped and counted out, zero pages by UFFDIO_ZEROPAGE and by its UFFDIO_COPY
 * fallback, a write fault and a fault taken in kernel mode (read(2) into a dropped page), several threads at once,
 * ferry__uffd_free waking a sleeper, and the refusals: a file on a disk file system, a private file mapping, an
 * adopted block, a block registered twice, ranges outside a block. Skips where no userfaultfd can be opened.
 */
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "ram/postcopy.h"
#include "ram/ram.h"
#include "test-helpers.h"
#include "util/util.h"

static void skip_without_uffd(void)
{
    FerryError *err = NULL;
    FerryUffd *u = ferry__uffd_new(NULL, 0, &err);
    if (!u) {
        print_message("skipping: no userfaultfd for postcopy here: %s\n", ferry_error_msg(err));
        ferry_error_free(err);
        skip();
    }
    ferry__uffd_free(u);
}

/* A thread that reads 64 bytes at p (or writes one byte) and records what it saw and its tid. */
typedef struct Toucher {
    pthread_t th;
    volatile uint8_t *p;
    bool write;
    uint8_t wval;
    uint8_t seen[64];
    uint32_t tid;
    int done;
    /* read(2) mode: read from this pipe into p instead of touching it */
    int pipe_fd;
    ssize_t read_ret;
} Toucher;

static void *toucher_fn(void *arg)
{
    Toucher *t = arg;
    __atomic_store_n(&t->tid, (uint32_t)gettid(), __ATOMIC_SEQ_CST);
    if (t->pipe_fd >= 0) {
        t->read_ret = read(t->pipe_fd, (void *)t->p, 5);
    } else if (t->write) {
        *t->p = t->wval;
    } else {
        for (size_t i = 0; i < sizeof(t->seen); i++) {
            t->seen[i] = t->p[i];
        }
    }
    __atomic_store_n(&t->done, 1, __ATOMIC_SEQ_CST);
    return NULL;
}

static void toucher_start(Toucher *t, uint8_t *p, bool write, uint8_t wval)
{
    memset(t, 0, sizeof(*t));
    t->p = p;
    t->write = write;
    t->wval = wval;
    t->pipe_fd = -1;
    assert_int_equal(pthread_create(&t->th, NULL, toucher_fn, t), 0);
}

static bool toucher_done(Toucher *t)
{
    return __atomic_load_n(&t->done, __ATOMIC_SEQ_CST) != 0;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Waits (up to 5 s) for fault messages and reads them; returns how many were read. */
static int wait_faults(FerryUffd *u, FerryUffdFault *out, int max)
{
    struct pollfd pfd = {.fd = ferry__uffd_fd(u), .events = POLLIN};
    int r = poll(&pfd, 1, 5000);
    assert_int_equal(r, 1);
    FerryError *err = NULL;
    int n = ferry__uffd_read_faults(u, out, max, &err);
    if (n < 0) {
        print_error("read_faults: %s\n", ferry_error_msg(err));
        fail();
    }
    return n;
}

static FerryUffdFault wait_one_fault(FerryUffd *u)
{
    FerryUffdFault f[4];
    int n = wait_faults(u, f, 4);
    assert_int_equal(n, 1);
    return f[0];
}

static void fill_page(uint8_t *buf, size_t ps, uint8_t seed)
{
    for (size_t i = 0; i < ps; i++) {
        buf[i] = (uint8_t)(seed + i * 7);
    }
}

/* The whole cycle on page @page of @b: a reader thread blocks on the dropped page, the fault names it and the
 * reader, the placed data is what the reader sees. */
static void fault_and_place(FerryUffd *u, FerryRamBlock *b, uint64_t page, uint8_t seed)
{
    size_t ps = ferry_ram_page_size();
    uint8_t *data = ferry__xmalloc(ps);
    fill_page(data, ps, seed);

    Toucher t;
    toucher_start(&t, b->host + page * ps, false, 0);
    FerryUffdFault f = wait_one_fault(u);
    assert_ptr_equal(f.block, b);
    assert_int_equal(f.page, page);
    assert_int_equal(f.tid, __atomic_load_n(&t.tid, __ATOMIC_SEQ_CST));
    assert_false(f.write);
    sleep_ms(20);
    assert_false(toucher_done(&t)); /* still asleep in the fault */

    uint64_t placed = 99;
    FerryError *err = NULL;
    assert_true(ferry__uffd_place(u, b, page, 1, data, &placed, &err));
    assert_null(err);
    assert_int_equal(placed, 1);
    assert_int_equal(pthread_join(t.th, NULL), 0);
    assert_memory_equal(t.seen, data, sizeof(t.seen));
    assert_memory_equal(b->host + page * ps, data, ps);
    free(data);
}

static void test_nothing_pending(void **state)
{
    (void)state;
    skip_without_uffd();
    FerryRamBlock *b = ferry__ram_block_new("idle", 4 * ferry_ram_page_size(), NULL);
    FerryUffd *u = ferry__uffd_new(&b, 1, NULL);
    assert_non_null(u);
    FerryUffdFault f[4];
    assert_int_equal(ferry__uffd_read_faults(u, f, 4, NULL), 0);
    struct pollfd pfd = {.fd = ferry__uffd_fd(u), .events = POLLIN};
    assert_int_equal(poll(&pfd, 1, 0), 0);
    ferry__uffd_free(u);
    ferry__uffd_free(NULL);
    ferry__ram_block_free(b);
}

static void test_anon_fault_place(void **state)
{
    (void)state;
    skip_without_uffd();
    size_t ps = ferry_ram_page_size();
    FerryRamBlock *b = ferry__ram_block_new("anon", 8 * ps, NULL);
    assert_non_null(b);
    memset(b->host, 0xaa, b->size);
    FerryError *err = NULL;
    assert_true(ferry__uffd_probe(&b, 1, &err));
    FerryUffd *u = ferry__uffd_new(&b, 1, &err);
    assert_non_null(u);

    assert_true(ferry__ram_block_drop_pages(b, 3, 1, &err));
    /* Neighbours untouched (page 3 itself must not be read here: it would block this thread). */
    assert_int_equal(b->host[2 * ps + ps - 1], 0xaa);
    assert_int_equal(b->host[4 * ps], 0xaa);

    fault_and_place(u, b, 3, 0x10);

    /* EEXIST: the page is present now; a second place skips it, counts nothing and leaves the data. */
    uint8_t *other = ferry__xmalloc(8 * ps);
    memset(other, 0x77, 8 * ps);
    uint8_t before[64];
    memcpy(before, b->host + 3 * ps, sizeof(before));
    uint64_t placed = 99;
    assert_true(ferry__uffd_place(u, b, 3, 1, other, &placed, &err));
    assert_int_equal(placed, 0);
    assert_memory_equal(b->host + 3 * ps, before, sizeof(before));

    /* A multi-page place over a present page in the middle: the others are placed, that one kept. */
    assert_true(ferry__ram_block_drop_pages(b, 0, 8, &err));
    uint8_t *p5 = ferry__xmalloc(ps);
    fill_page(p5, ps, 0x55);
    assert_true(ferry__uffd_place(u, b, 5, 1, p5, &placed, &err));
    assert_int_equal(placed, 1);
    assert_true(ferry__uffd_place(u, b, 0, 8, other, &placed, &err));
    assert_int_equal(placed, 7);
    for (size_t pg = 0; pg < 8; pg++) {
        if (pg == 5) {
            assert_memory_equal(b->host + pg * ps, p5, ps);
        } else {
            assert_memory_equal(b->host + pg * ps, other, ps);
        }
    }
    /* Everything present: nothing placed, no error. */
    assert_true(ferry__uffd_place(u, b, 0, 8, other, &placed, &err));
    assert_int_equal(placed, 0);
    assert_null(err);
    assert_int_equal(ferry__uffd_read_faults(u, (FerryUffdFault[1]){{0}}, 1, NULL), 0);

    free(p5);
    free(other);
    ferry__uffd_free(u);
    ferry__ram_block_free(b);
}

static void check_zero(FerryUffd *u, FerryRamBlock *b)
{
    size_t ps = ferry_ram_page_size();
    FerryError *err = NULL;
    /* Pages 0..6 are present (a missing page would block this very thread). */
    memset(b->host, 0xcc, 7 * ps);
    assert_true(ferry__ram_block_drop_pages(b, 0, 6, &err));
    uint8_t *data = ferry__xmalloc(ps);
    fill_page(data, ps, 0x31);
    uint64_t placed = 0;
    assert_true(ferry__uffd_place(u, b, 2, 1, data, &placed, &err));

    /* A reader waiting on page 4 is woken by the zero fill and sees zeros. */
    Toucher t;
    toucher_start(&t, b->host + 4 * ps, false, 0);
    FerryUffdFault f = wait_one_fault(u);
    assert_int_equal(f.page, 4);
    assert_true(ferry__uffd_place_zero(u, b, 0, 6, &placed, &err));
    assert_null(err);
    assert_int_equal(placed, 5); /* page 2 was there */
    assert_int_equal(pthread_join(t.th, NULL), 0);
    uint8_t zeros[64] = {0};
    assert_memory_equal(t.seen, zeros, sizeof(zeros));
    for (size_t pg = 0; pg < 6; pg++) {
        if (pg == 2) {
            assert_memory_equal(b->host + pg * ps, data, ps);
        } else {
            for (size_t i = 0; i < ps; i += 512) {
                assert_int_equal(b->host[pg * ps + i], 0);
            }
        }
    }
    assert_int_equal(b->host[6 * ps], 0xcc); /* outside the dropped range */
    assert_true(ferry__uffd_place_zero(u, b, 0, 6, &placed, &err));
    assert_int_equal(placed, 0);
    free(data);
}

static void test_place_zero(void **state)
{
    (void)state;
    skip_without_uffd();
    FerryRamBlock *b = ferry__ram_block_new("zero", 40 * ferry_ram_page_size(), NULL);
    memset(b->host, 0xcc, b->size);
    FerryUffd *u = ferry__uffd_new(&b, 1, NULL);
    assert_non_null(u);
    check_zero(u, b);
    ferry__uffd_test_disable_zeropage(u); /* the UFFDIO_COPY fallback */
    check_zero(u, b);
    /* The fallback copies in chunks: more pages than one chunk. */
    uint64_t placed = 0;
    assert_true(ferry__ram_block_drop_pages(b, 1, 39, NULL));
    assert_true(ferry__uffd_place_zero(u, b, 1, 39, &placed, NULL));
    assert_int_equal(placed, 39);
    ferry__uffd_free(u);
    ferry__ram_block_free(b);
}

static void test_write_fault(void **state)
{
    (void)state;
    skip_without_uffd();
    size_t ps = ferry_ram_page_size();
    FerryRamBlock *b = ferry__ram_block_new("write", 4 * ps, NULL);
    FerryUffd *u = ferry__uffd_new(&b, 1, NULL);
    assert_non_null(u);
    assert_true(ferry__ram_block_drop_pages(b, 1, 1, NULL));
    Toucher t;
    toucher_start(&t, b->host + ps + 10, true, 0xee);
    FerryUffdFault f = wait_one_fault(u);
    assert_int_equal(f.page, 1);
    assert_true(f.write);
    assert_int_equal(f.tid, __atomic_load_n(&t.tid, __ATOMIC_SEQ_CST));
    uint8_t *data = ferry__xmalloc(ps);
    fill_page(data, ps, 0x40);
    assert_true(ferry__uffd_place(u, b, 1, 1, data, NULL, NULL));
    assert_int_equal(pthread_join(t.th, NULL), 0);
    /* The write lands on the placed page, after it. */
    data[10] = 0xee;
    assert_memory_equal(b->host + ps, data, ps);
    free(data);
    ferry__uffd_free(u);
    ferry__ram_block_free(b);
}

/* read(2) into a dropped page faults inside the kernel: the fd must serve that too (no UFFD_USER_MODE_ONLY). */
static void test_kernel_mode_fault(void **state)
{
    (void)state;
    skip_without_uffd();
    size_t ps = ferry_ram_page_size();
    FerryRamBlock *b = ferry__ram_block_new("kernel", 2 * ps, NULL);
    FerryUffd *u = ferry__uffd_new(&b, 1, NULL);
    assert_non_null(u);
    assert_true(ferry__ram_block_drop_pages(b, 0, 2, NULL));
    int p[2];
    assert_int_equal(pipe(p), 0);
    assert_int_equal(write(p[1], "hello", 5), 5);
    Toucher t;
    memset(&t, 0, sizeof(t));
    t.p = b->host + ps + 100;
    t.pipe_fd = p[0];
    assert_int_equal(pthread_create(&t.th, NULL, toucher_fn, &t), 0);
    FerryUffdFault f = wait_one_fault(u);
    assert_int_equal(f.page, 1);
    assert_int_equal(f.tid, __atomic_load_n(&t.tid, __ATOMIC_SEQ_CST));
    uint64_t placed = 0;
    assert_true(ferry__uffd_place_zero(u, b, 1, 1, &placed, NULL));
    assert_int_equal(placed, 1);
    assert_int_equal(pthread_join(t.th, NULL), 0);
    assert_int_equal(t.read_ret, 5);
    assert_memory_equal(b->host + ps + 100, "hello", 5);
    close(p[0]);
    close(p[1]);
    ferry__uffd_free(u);
    ferry__ram_block_free(b);
}

static void test_many_threads(void **state)
{
    (void)state;
    skip_without_uffd();
    enum { N = 6 };
    size_t ps = ferry_ram_page_size();
    FerryRamBlock *blocks[2] = {ferry__ram_block_new("many-a", 8 * ps, NULL),
                                ferry__ram_block_new_memfd("many-b", 8 * ps, true, NULL)};
    FerryUffd *u = ferry__uffd_new(blocks, 2, NULL);
    assert_non_null(u);
    for (int i = 0; i < 2; i++) {
        assert_true(ferry__ram_block_drop_pages(blocks[i], 0, 8, NULL));
    }
    Toucher t[N];
    for (int i = 0; i < N; i++) {
        toucher_start(&t[i], blocks[i % 2]->host + (size_t)(i + 1) * ps, false, 0);
    }
    FerryUffdFault f[N];
    int got = 0;
    while (got < N) {
        got += wait_faults(u, f + got, N - got);
    }
    bool seen[N] = {false};
    uint8_t *data = ferry__xmalloc(ps);
    for (int k = 0; k < N; k++) {
        int i = -1;
        for (int j = 0; j < N; j++) {
            if (f[k].tid == __atomic_load_n(&t[j].tid, __ATOMIC_SEQ_CST)) {
                i = j;
            }
        }
        assert_true(i >= 0);
        assert_false(seen[i]);
        seen[i] = true;
        assert_ptr_equal(f[k].block, blocks[i % 2]);
        assert_int_equal(f[k].page, (uint64_t)(i + 1));
        fill_page(data, ps, (uint8_t)(0x80 + i));
        assert_true(ferry__uffd_place(u, f[k].block, f[k].page, 1, data, NULL, NULL));
    }
    for (int i = 0; i < N; i++) {
        assert_int_equal(pthread_join(t[i].th, NULL), 0);
        fill_page(data, ps, (uint8_t)(0x80 + i));
        assert_memory_equal(t[i].seen, data, sizeof(t[i].seen));
    }
    free(data);
    ferry__uffd_free(u);
    ferry__ram_block_free(blocks[0]);
    ferry__ram_block_free(blocks[1]);
}

static bool is_hole(int fd, off_t off)
{
    return lseek(fd, off, SEEK_HOLE) == off;
}

static void test_memfd_shared(void **state)
{
    (void)state;
    skip_without_uffd();
    size_t ps = ferry_ram_page_size();
    FerryRamBlock *b = ferry__ram_block_new_memfd("memfd-shared", 4 * ps, true, NULL);
    assert_non_null(b);
    memset(b->host, 0x11, b->size);
    FerryError *err = NULL;
    FerryUffd *u = ferry__uffd_new(&b, 1, &err);
    assert_non_null(u);
    assert_false(is_hole(b->fd, (off_t)ps));
    assert_true(ferry__ram_block_drop_pages(b, 1, 1, &err));
    assert_true(is_hole(b->fd, (off_t)ps)); /* out of the page cache, not only unmapped */
    assert_false(is_hole(b->fd, 2 * (off_t)ps));

    fault_and_place(u, b, 1, 0x22);
    /* Placed into the memfd itself: visible through the file. */
    uint8_t *data = ferry__xmalloc(ps), *back = ferry__xmalloc(ps);
    fill_page(data, ps, 0x22);
    assert_int_equal(pread(b->fd, back, ps, (off_t)ps), (ssize_t)ps);
    assert_memory_equal(back, data, ps);
    assert_int_equal(b->host[2 * ps], 0x11);
    free(data);
    free(back);
    ferry__uffd_free(u);
    ferry__ram_block_free(b);
}

static void test_memfd_private(void **state)
{
    (void)state;
    skip_without_uffd();
    size_t ps = ferry_ram_page_size();
    FerryRamBlock *b = ferry__ram_block_new_memfd("memfd-private", 4 * ps, false, NULL);
    assert_non_null(b);
    /* Page 1 has content in the memfd's page cache (seen through the private mapping), page 2 a private copy. */
    uint8_t *old = ferry__xmalloc(ps);
    memset(old, 0x33, ps);
    assert_int_equal(pwrite(b->fd, old, ps, (off_t)ps), (ssize_t)ps);
    assert_int_equal(b->host[ps], 0x33);
    memset(b->host + 2 * ps, 0x44, ps);
    FerryError *err = NULL;
    FerryUffd *u = ferry__uffd_new(&b, 1, &err);
    assert_non_null(u);
    assert_true(ferry__ram_block_drop_pages(b, 1, 2, &err));
    assert_true(is_hole(b->fd, (off_t)ps));

    fault_and_place(u, b, 1, 0x55);
    fault_and_place(u, b, 2, 0x66);
    /* A private mapping gets private pages: the memfd stays a hole. */
    assert_true(is_hole(b->fd, (off_t)ps));
    free(old);
    ferry__uffd_free(u);
    ferry__ram_block_free(b);
}

static char *make_file(const char *dir, size_t size, uint8_t fill)
{
    char *path = ferry__xasprintf("%s/ferry-test-postcopy-XXXXXX", dir);
    int fd = mkstemp(path);
    if (fd < 0) {
        free(path);
        return NULL;
    }
    uint8_t *buf = ferry__xmalloc(size);
    memset(buf, fill, size);
    assert_int_equal(write(fd, buf, size), (ssize_t)size);
    free(buf);
    close(fd);
    return path;
}

static void test_file_tmpfs(void **state)
{
    (void)state;
    skip_without_uffd();
    size_t ps = ferry_ram_page_size();
    char *path = make_file("/dev/shm", 5 * ps, 0x5a);
    if (!path) {
        print_message("skipping: cannot create a file in /dev/shm\n");
        skip();
    }
    FerryError *err = NULL;
    FerryRamBlock *b = ferry__ram_block_new_file("shm-file", 4 * ps, path, ps, true, &err);
    assert_non_null(b);
    assert_true(ferry__uffd_probe(&b, 1, &err));
    FerryUffd *u = ferry__uffd_new(&b, 1, &err);
    assert_non_null(u);
    assert_true(ferry__ram_block_drop_pages(b, 2, 1, &err));
    assert_true(is_hole(b->file_fd, 3 * (off_t)ps)); /* block page 2 = file page 3 */
    assert_false(is_hole(b->file_fd, 2 * (off_t)ps));
    fault_and_place(u, b, 2, 0x71);
    uint8_t *data = ferry__xmalloc(ps), *back = ferry__xmalloc(ps);
    fill_page(data, ps, 0x71);
    assert_int_equal(pread(b->file_fd, back, ps, 3 * (off_t)ps), (ssize_t)ps);
    assert_memory_equal(back, data, ps);
    free(data);
    free(back);
    ferry__uffd_free(u);
    ferry__ram_block_free(b);

    /* The same file mapped privately: refused, and the file left alone. */
    b = ferry__ram_block_new_file("shm-private", 4 * ps, path, 0, false, &err);
    assert_non_null(b);
    assert_false(ferry__uffd_probe(&b, 1, &err));
    assert_msg_contains(err, "'shm-private'");
    assert_msg_contains(err, "private file mapping");
    ferry_error_free(err);
    err = NULL;
    assert_false(ferry__ram_block_drop_pages(b, 0, 1, &err));
    assert_msg_contains(err, "private file mapping");
    ferry_error_free(err);
    err = NULL;
    assert_false(is_hole(b->file_fd, 0));
    ferry__ram_block_free(b);
    unlink(path);
    free(path);
}

static void test_file_disk_refused(void **state)
{
    (void)state;
    skip_without_uffd();
    size_t ps = ferry_ram_page_size();
    char *path = make_file("/var/tmp", 2 * ps, 0x3c);
    if (!path) {
        print_message("skipping: cannot create a file in /var/tmp\n");
        skip();
    }
    FerryError *err = NULL;
    FerryRamBlock *b = ferry__ram_block_new_file("disk-file", 2 * ps, path, 0, true, &err);
    assert_non_null(b);
    FerryRamBlock *anon = ferry__ram_block_new("fine", ps, NULL);
    FerryRamBlock *both[2] = {anon, b};
    assert_false(ferry__uffd_probe(both, 2, &err));
    print_message("disk file refused: %s\n", ferry_error_msg(err));
    assert_msg_contains(err, "'disk-file'");
    assert_msg_contains(err, "not on tmpfs");
    ferry_error_free(err);
    err = NULL;
    assert_null(ferry__uffd_new(both, 2, &err));
    assert_msg_contains(err, "'disk-file'");
    ferry_error_free(err);
    err = NULL;
    assert_false(ferry__ram_block_drop_pages(b, 0, 1, &err));
    assert_msg_contains(err, "'disk-file'");
    ferry_error_free(err);
    /* Nothing was dropped or punched. */
    assert_int_equal(b->host[0], 0x3c);
    uint8_t c = 0;
    assert_int_equal(pread(b->file_fd, &c, 1, 0), 1);
    assert_int_equal(c, 0x3c);
    /* The anonymous block alone is fine: the refusal was about the file. */
    assert_true(ferry__uffd_probe(&anon, 1, NULL));
    ferry__ram_block_free(b);
    ferry__ram_block_free(anon);
    unlink(path);
    free(path);
}

static void test_refusals(void **state)
{
    (void)state;
    skip_without_uffd();
    size_t ps = ferry_ram_page_size();
    FerryError *err = NULL;
    FerryRamBlock *b = ferry__ram_block_new("ranges", 4 * ps, NULL);
    FerryRamBlock *stranger = ferry__ram_block_new("stranger", ps, NULL);
    FerryUffd *u = ferry__uffd_new(&b, 1, &err);
    assert_non_null(u);

    /* Registered twice: the kernel refuses, the message says which block. */
    assert_null(ferry__uffd_new(&b, 1, &err));
    assert_msg_contains(err, "'ranges'");
    assert_msg_contains(err, "already registered");
    ferry_error_free(err);
    err = NULL;

    uint8_t *data = ferry__xcalloc(8, ps);
    uint64_t placed = 7;
    assert_false(ferry__uffd_place(u, b, 3, 2, data, &placed, &err));
    assert_int_equal(placed, 0);
    assert_msg_contains(err, "outside");
    ferry_error_free(err);
    err = NULL;
    assert_false(ferry__uffd_place_zero(u, b, 5, 1, NULL, &err));
    assert_msg_contains(err, "outside");
    ferry_error_free(err);
    err = NULL;
    assert_false(ferry__uffd_place(u, stranger, 0, 1, data, NULL, &err));
    assert_msg_contains(err, "'stranger' is not registered");
    ferry_error_free(err);
    err = NULL;
    assert_false(ferry__ram_block_drop_pages(b, 2, 3, &err));
    assert_msg_contains(err, "outside");
    ferry_error_free(err);
    err = NULL;
    assert_true(ferry__ram_block_drop_pages(b, 4, 0, NULL));

    /* An adopted block (cpr-transfer) holds the source's pages: never dropped. */
    FerryRamBlock *m = ferry__ram_block_new_memfd("adopted", ps, true, NULL);
    int fd = memfd_create("source", MFD_CLOEXEC);
    assert_int_equal(ftruncate(fd, (off_t)ps), 0);
    assert_true(ferry__ram_block_adopt_fd(m, fd, NULL));
    assert_false(ferry__uffd_probe(&m, 1, &err));
    assert_msg_contains(err, "'adopted'");
    assert_msg_contains(err, "cpr-transfer");
    ferry_error_free(err);
    err = NULL;
    assert_false(ferry__ram_block_drop_pages(m, 0, 1, &err));
    assert_msg_contains(err, "cpr-transfer");
    ferry_error_free(err);

    free(data);
    ferry__uffd_free(u);
    ferry__ram_block_free(m);
    ferry__ram_block_free(b);
    ferry__ram_block_free(stranger);
}

/* Freeing the uffd wakes a sleeper, which then faults normally (an anonymous page reads as zero). */
static void test_free_wakes(void **state)
{
    (void)state;
    skip_without_uffd();
    size_t ps = ferry_ram_page_size();
    FerryRamBlock *b = ferry__ram_block_new("free-wakes", 2 * ps, NULL);
    memset(b->host, 0x99, b->size);
    FerryUffd *u = ferry__uffd_new(&b, 1, NULL);
    assert_non_null(u);
    assert_true(ferry__ram_block_drop_pages(b, 1, 1, NULL));
    Toucher t;
    toucher_start(&t, b->host + ps, false, 0);
    FerryUffdFault f = wait_one_fault(u);
    assert_int_equal(f.page, 1);
    sleep_ms(20);
    assert_false(toucher_done(&t));
    ferry__uffd_free(u);
    assert_int_equal(pthread_join(t.th, NULL), 0);
    uint8_t zeros[64] = {0};
    assert_memory_equal(t.seen, zeros, sizeof(zeros));
    assert_int_equal(b->host[0], 0x99);
    ferry__ram_block_free(b);
}

/* ferry__uffd_wake releases a thread whose page was made present without UFFDIO_COPY. */
static void test_wake(void **state)
{
    (void)state;
    skip_without_uffd();
    size_t ps = ferry_ram_page_size();
    FerryRamBlock *b = ferry__ram_block_new_memfd("wake", 2 * ps, true, NULL);
    FerryUffd *u = ferry__uffd_new(&b, 1, NULL);
    assert_non_null(u);
    assert_true(ferry__ram_block_drop_pages(b, 0, 2, NULL));
    Toucher t;
    toucher_start(&t, b->host, false, 0);
    FerryUffdFault f = wait_one_fault(u);
    assert_int_equal(f.page, 0);
    /* Written into the memfd behind the mapping's back: the page is in the page cache now. */
    uint8_t *data = ferry__xmalloc(ps);
    fill_page(data, ps, 0x0d);
    assert_int_equal(pwrite(b->fd, data, ps, 0), (ssize_t)ps);
    sleep_ms(20);
    assert_false(toucher_done(&t)); /* nobody woke it */
    ferry__uffd_wake(u, b, 0, 1);
    assert_int_equal(pthread_join(t.th, NULL), 0);
    assert_memory_equal(t.seen, data, sizeof(t.seen));
    free(data);
    ferry__uffd_free(u);
    ferry__ram_block_free(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_nothing_pending),
        cmocka_unit_test(test_anon_fault_place),
        cmocka_unit_test(test_place_zero),
        cmocka_unit_test(test_write_fault),
        cmocka_unit_test(test_kernel_mode_fault),
        cmocka_unit_test(test_many_threads),
        cmocka_unit_test(test_memfd_shared),
        cmocka_unit_test(test_memfd_private),
        cmocka_unit_test(test_file_tmpfs),
        cmocka_unit_test(test_file_disk_refused),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_free_wakes),
        cmocka_unit_test(test_wake),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
