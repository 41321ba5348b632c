/*
 * File descriptors in the stream: the channel's SCM_RIGHTS passing (more than one message's worth, refusal on
 * channels that cannot carry fds, fds never taken closed with the channel) and the destination's FDS record,
 * whose every fd must end owned by exactly one object or closed, on every error path: each case counts the
 * process's open fds before and after. Streams are written by hand, record by record, into one end of a
 * socketpair; the destination's reader (ferry__migration_load_stream) reads the other. The same hand-made streams
 * check the destination's bound on POPULATE_HINT (docs/design.md, "Resource bounds").
 */
#include <dirent.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "test-helpers.h"

#include "ferry/ferry.h"
#include "channel/channel.h"
#include "migration/migration.h"
#include "migration/migration-priv.h"
#include "ram/ram.h"
#include "stream/stream.h"
#include "util/util.h"
#include "wire/wire.h"

static int count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    assert_non_null(d);
    int n = 0;
    while (readdir(d)) {
        n++;
    }
    closedir(d);
    return n;
}

static int devnull(void)
{
    int fd = open("/dev/null", O_RDWR | O_CLOEXEC);
    assert_true(fd >= 0);
    return fd;
}

static void socket_pair(FerryChannel **a, FerryChannel **b)
{
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    *a = ferry__channel_new_fd(sv[0], "pair-a");
    *b = ferry__channel_new_fd(sv[1], "pair-b");
    assert_non_null(*a);
    assert_non_null(*b);
}

/* 300 fds are two messages' worth (253 + 47): all arrive, in order, each a working reference. */
static void test_many_fds(void **state)
{
    int before = count_fds();
    FerryChannel *a, *b;
    socket_pair(&a, &b);
    assert_true(ferry__channel_can_pass_fds(a));
    enum { N = 300 };
    int fds[N];
    for (int i = 0; i < N; i++) {
        /* Alternate two kinds of file so that order can be checked. */
        fds[i] = i % 2 ? devnull() : memfd_create("t", MFD_CLOEXEC);
        assert_true(fds[i] >= 0);
    }
    uint8_t bytes[700];
    for (size_t i = 0; i < sizeof(bytes); i++) {
        bytes[i] = (uint8_t)i;
    }
    FerryStream *ws = ferry__stream_new(a);
    ferry__stream_write(ws, "x", 1);
    ferry__stream_write_with_fds(ws, bytes, sizeof(bytes), fds, N);
    assert_true(ferry__stream_flush(ws));
    FerryStream *rs = ferry__stream_new(b);
    uint8_t got[701];
    assert_true(ferry__stream_read(rs, got, sizeof(got)));
    assert_memory_equal(got + 1, bytes, sizeof(bytes));
    assert_int_equal(ferry__channel_fds_pending(b), N);
    for (int i = 0; i < N; i++) {
        int fd = ferry__channel_take_fd(b);
        assert_true(fd >= 0);
        struct stat st;
        assert_int_equal(fstat(fd, &st), 0);
        assert_int_equal(S_ISCHR(st.st_mode), i % 2);
        assert_true(fcntl(fd, F_GETFD) & FD_CLOEXEC);
        close(fd);
        close(fds[i]);
    }
    assert_int_equal(ferry__channel_take_fd(b), -1);
    ferry__stream_free(ws);
    ferry__stream_free(rs);
    ferry__channel_free(a);
    ferry__channel_free(b);
    assert_int_equal(count_fds(), before);
}

/* A pipe cannot carry fds: refused with the reason, nothing sent. */
static void test_refused_on_pipe(void **state)
{
    int p[2];
    assert_int_equal(pipe2(p, O_CLOEXEC), 0);
    FerryChannel *c = ferry__channel_new_fd(p[1], "pipe");
    assert_false(ferry__channel_can_pass_fds(c));
    int fd = devnull();
    FerryError *err = NULL;
    assert_false(ferry__channel_send_fds(c, "x", 1, &fd, 1, &err));
    assert_msg_contains(err, "only a UNIX socket");
    ferry_error_free(err);
    close(fd);
    ferry__channel_free(c);
    close(p[0]);
}

/* Fds that arrived but were never taken belong to the channel and go with it. */
static void test_untaken_fds_closed(void **state)
{
    int before = count_fds();
    FerryChannel *a, *b;
    socket_pair(&a, &b);
    int fds[5];
    for (int i = 0; i < 5; i++) {
        fds[i] = devnull();
    }
    FerryError *err = NULL;
    assert_true(ferry__channel_send_fds(a, "hello", 5, fds, 5, &err));
    for (int i = 0; i < 5; i++) {
        close(fds[i]);
    }
    char buf[5];
    assert_true(ferry__channel_read_all(b, buf, sizeof(buf), &err));
    assert_int_equal(ferry__channel_fds_pending(b), 5);
    ferry__channel_free(a);
    ferry__channel_free(b);
    assert_int_equal(count_fds(), before);
}

/* ---- the destination's FDS record ---- */

typedef struct Out {
    uint8_t *p;
    size_t len;
} Out;

static void put(Out *o, const void *p, size_t n)
{
    o->p = realloc(o->p, o->len + n);
    assert_non_null(o->p);
    memcpy(o->p + o->len, p, n);
    o->len += n;
}

/* A record with a CRC trailer (HELLO and FEATURES always have one; this test's FEATURES turns them off after). */
static void record(Out *o, uint16_t type, const void *payload, uint32_t len, bool crc)
{
    uint8_t h[FERRY_WIRE_RECORD_HEADER_LEN];
    ferry__wire_encode_record(h, &(FerryRecordHeader){ .type = type, .flags = FERRY_REC_CRITICAL, .length = len });
    put(o, h, sizeof(h));
    put(o, payload, len);
    if (crc) {
        uint8_t c[4];
        ferry__put_be32(c, ferry__crc32c(ferry__crc32c(0, h, sizeof(h)), payload, len));
        put(o, c, 4);
    }
}

/* Header, HELLO and FEATURES (no features: no trailers after them), CONFIG with one block "ram0" of 16 pages. */
static void stream_start(Out *o)
{
    uint8_t hdr[FERRY_WIRE_HEADER_LEN];
    ferry__wire_encode_header(hdr);
    put(o, hdr, sizeof(hdr));
    uint8_t none[2] = { 0, 0 };
    record(o, FERRY_REC_HELLO, none, 2, true);
    record(o, FERRY_REC_FEATURES, none, 2, true);
    uint8_t cfg[4 + 4 + 1 + 4 + 8];
    ferry__put_be32(cfg, (uint32_t)ferry_ram_page_size());
    ferry__put_be32(cfg + 4, 1);
    cfg[8] = 4;
    memcpy(cfg + 9, "ram0", 4);
    ferry__put_be64(cfg + 13, 16 * ferry_ram_page_size());
    record(o, FERRY_REC_CONFIG, cfg, sizeof(cfg), false);
}

static void send_all(FerryChannel *c, const Out *o)
{
    FerryError *err = NULL;
    if (o->len) {
        assert_true(ferry__channel_write_all(c, o->p, o->len, &err));
    }
}

/* An FDS record for @n entries, sent with @nfds fds attached. */
static void send_fds_record(FerryChannel *c, const FerryWireFd *entries, uint32_t n, const int *fds, size_t nfds)
{
    size_t plen;
    uint8_t *payload = ferry__wire_fds_encode(entries, n, &plen);
    Out o = { 0 };
    record(&o, FERRY_REC_FDS, payload, (uint32_t)plen, false);
    FerryError *err = NULL;
    if (nfds) {
        assert_true(ferry__channel_send_fds(c, o.p, o.len, fds, nfds, &err));
    } else {
        send_all(c, &o);
    }
    free(o.p);
    free(payload);
}

static void send_end(FerryChannel *c)
{
    uint8_t end[FERRY_WIRE_END_LEN];
    ferry__wire_end_encode(&(FerryWireEnd){ 0 }, end);
    Out o = { 0 };
    record(&o, FERRY_REC_END, end, sizeof(end), false);
    send_all(c, &o);
    free(o.p);
}

typedef struct Backend {
    int fd;
    bool fail;
} Backend;

static int backend_get_fd(void *opaque)
{
    return ((Backend *)opaque)->fd;
}

static bool backend_set_fd(void *opaque, int fd, FerryError **errp)
{
    Backend *be = opaque;
    if (be->fail) {
        ferry_error_setg(errp, "refusing the fd on purpose");
        return false;
    }
    be->fd = fd;
    return true;
}

static const FerryBackendOps backend_ops = { .get_fd = backend_get_fd, .set_fd = backend_set_fd };

typedef struct Dst {
    FerryMigration *m;
    FerryRamBlock *ram;
    Backend be;
    FerryChannel *src, *dst;
} Dst;

static void dst_new(Dst *d, bool backend_transfer)
{
    memset(d, 0, sizeof(*d));
    d->be.fd = -1;
    d->m = ferry__migration_new();
    FerryError *err = NULL;
    d->ram = ferry_ram_block_new_memfd(d->m, "ram0", 16 * ferry_ram_page_size(), true, &err);
    assert_non_null(d->ram);
    assert_true(ferry_migration_register_backend(d->m, "virtio-net-tap", "n0", &backend_ops, &d->be, &err));
    if (backend_transfer) {
        json_t *p = json_pack("{s:[s]}", "backend-transfer", "virtio-net-tap");
        assert_true(ferry__migration_set_params(d->m, p, &err));
        json_decref(p);
    }
    socket_pair(&d->src, &d->dst);
}

/* A destination (dst_new) whose source end has sent the start of a stream: header, HELLO, FEATURES, CONFIG. */
static void dst_start(Dst *d, bool backend_transfer)
{
    dst_new(d, backend_transfer);
    Out o = { 0 };
    stream_start(&o);
    send_all(d->src, &o);
    free(o.p);
}

/* Loads what was sent; returns the error message (caller frees) or NULL on success. */
static char *dst_load(Dst *d)
{
    FerryError *err = NULL;
    bool ok = ferry__migration_load_stream(d->m, d->dst, NULL, &err);
    char *msg = ok ? NULL : ferry__xstrdup(ferry_error_msg(err));
    ferry_error_free(err);
    return msg;
}

static void dst_free(Dst *d)
{
    ferry__channel_free(d->src);
    ferry__channel_free(d->dst);
    if (d->be.fd >= 0) {
        close(d->be.fd);
    }
    ferry__migration_free(d->m);
}

static int memfd_of(size_t size)
{
    int fd = memfd_create("src-ram", MFD_CLOEXEC);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, (off_t)size), 0);
    return fd;
}

static void expect_failure(Dst *d, const char *needle)
{
    char *msg = dst_load(d);
    assert_non_null(msg);
    if (!strstr(msg, needle)) {
        fail_msg("message '%s' lacks '%s'", msg, needle);
    }
    free(msg);
}

/* Each case: the fds the source passes are the test's; whatever the destination did with its references, the
 * process's fd count is back where it started once the test has closed its own. */
static void test_dest_unknown_block(void **state)
{
    int before = count_fds();
    Dst d;
    dst_start(&d, false);
    int fd = memfd_of(16 * ferry_ram_page_size());
    FerryWireFd e = { .kind = FERRY_FD_RAM_BLOCK, .name = "nope" };
    send_fds_record(d.src, &e, 1, &fd, 1);
    close(fd);
    expect_failure(&d, "RAM block 'nope', which this process does not have");
    assert_false(d.ram->adopted);
    dst_free(&d);
    assert_int_equal(count_fds(), before);
}

/* The first fd is adopted, the second refused: the refused one is closed, the adopted one lives with its block
 * until the block gives it back (what a failed incoming migration does). */
static void test_dest_second_entry_fails(void **state)
{
    int before = count_fds();
    Dst d;
    dst_new(&d, true);
    d.be.fail = true;
    Out o = { 0 };
    stream_start(&o);
    send_all(d.src, &o);
    free(o.p);
    int fds[2] = { memfd_of(16 * ferry_ram_page_size()), devnull() };
    FerryWireFd e[2] = { { .kind = FERRY_FD_RAM_BLOCK, .name = "ram0" },
                         { .kind = FERRY_FD_BACKEND, .name = "virtio-net-tap:n0" } };
    send_fds_record(d.src, e, 2, fds, 2);
    /* The source's RAM: the destination must never write it, even when it fails. */
    uint8_t *src_ram = mmap(NULL, 16 * ferry_ram_page_size(), PROT_READ | PROT_WRITE, MAP_SHARED, fds[0], 0);
    assert_true(src_ram != MAP_FAILED);
    memset(src_ram, 0xab, 16 * ferry_ram_page_size());
    close(fds[0]);
    close(fds[1]);
    expect_failure(&d, "refusing the fd on purpose");
    assert_true(d.ram->adopted);
    uint8_t *host = ferry_ram_block_host(d.ram);
    assert_int_equal(host[0], 0xab); /* it is the source's memory */
    ferry__ram_block_discard(d.ram);
    assert_false(d.ram->adopted);
    assert_int_equal(host[0], 0); /* fresh memory at the same address */
    assert_int_equal(src_ram[0], 0xab);
    munmap(src_ram, 16 * ferry_ram_page_size());
    dst_free(&d);
    assert_int_equal(count_fds(), before);
}

/* The record announces two fds, one came: refused; the one that came stays with the channel and goes with it. */
static void test_dest_missing_fd(void **state)
{
    int before = count_fds();
    Dst d;
    dst_start(&d, true);
    int fd = devnull();
    FerryWireFd e[2] = { { .kind = FERRY_FD_BACKEND, .name = "virtio-net-tap:n0" },
                         { .kind = FERRY_FD_BACKEND, .name = "virtio-net-tap:n1" } };
    send_fds_record(d.src, e, 2, &fd, 1);
    close(fd);
    expect_failure(&d, "announces 2 file descriptors, 1 arrived");
    assert_int_equal(d.be.fd, -1);
    dst_free(&d);
    assert_int_equal(count_fds(), before);
}

/* backend-transfer off here: the source's backend fd is refused (and closed), naming the parameter. */
static void test_dest_backend_transfer_off(void **state)
{
    int before = count_fds();
    Dst d;
    dst_start(&d, false);
    int fd = devnull();
    FerryWireFd e = { .kind = FERRY_FD_BACKEND, .name = "virtio-net-tap:n0" };
    send_fds_record(d.src, &e, 1, &fd, 1);
    close(fd);
    expect_failure(&d, "backend-transfer does not list virtio-net-tap here");
    assert_int_equal(d.be.fd, -1);
    dst_free(&d);
    assert_int_equal(count_fds(), before);
}

/* The good path: the backend adopts the very open file the source had; RAM pages for an adopted block are
 * refused (they would write into the source's memory). */
static void test_dest_backend_adopted(void **state)
{
    int before = count_fds();
    Dst d;
    dst_start(&d, true);
    int fd = memfd_of(4096);
    FerryWireFd e = { .kind = FERRY_FD_BACKEND, .name = "virtio-net-tap:n0" };
    send_fds_record(d.src, &e, 1, &fd, 1);
    send_end(d.src);
    char *msg = dst_load(&d);
    assert_null(msg);
    assert_true(d.be.fd >= 0 && d.be.fd != fd);
    struct stat a, b;
    assert_int_equal(fstat(fd, &a), 0);
    assert_int_equal(fstat(d.be.fd, &b), 0);
    assert_true(a.st_ino == b.st_ino && a.st_dev == b.st_dev);
    close(fd);
    dst_free(&d);
    assert_int_equal(count_fds(), before);
}

static void test_dest_pages_for_adopted_block(void **state)
{
    int before = count_fds();
    Dst d;
    dst_start(&d, false);
    int fd = memfd_of(16 * ferry_ram_page_size());
    FerryWireFd e = { .kind = FERRY_FD_RAM_BLOCK, .name = "ram0" };
    send_fds_record(d.src, &e, 1, &fd, 1);
    close(fd);
    /* One all-zero page of block 0: header, a bitmap byte with bit 0 set. */
    uint8_t run[FERRY_WIRE_RAM_RUN_HEADER_LEN + 1];
    ferry__wire_run_encode(&(FerryWireRun){ .block = 0, .first = 0, .count = 1 }, run);
    run[FERRY_WIRE_RAM_RUN_HEADER_LEN] = 1;
    Out p = { 0 };
    record(&p, FERRY_REC_RAM_PAGES, run, sizeof(run), false);
    send_all(d.src, &p);
    free(p.p);
    expect_failure(&d, "whose memory came as a file descriptor");
    ferry__ram_block_discard(d.ram);
    dst_free(&d);
    assert_int_equal(count_fds(), before);
}

/* A channel that is not a UNIX socket cannot have carried fds: an FDS record on it is refused. */
static void test_dest_fds_on_a_pipe(void **state)
{
    int before = count_fds();
    FerryMigration *m = ferry__migration_new();
    FerryError *err = NULL;
    assert_non_null(ferry_ram_block_new_memfd(m, "ram0", 16 * ferry_ram_page_size(), true, &err));
    Out o = { 0 };
    stream_start(&o);
    size_t plen;
    FerryWireFd e = { .kind = FERRY_FD_RAM_BLOCK, .name = "ram0" };
    uint8_t *payload = ferry__wire_fds_encode(&e, 1, &plen);
    record(&o, FERRY_REC_FDS, payload, (uint32_t)plen, false);
    free(payload);
    int p[2];
    assert_int_equal(pipe2(p, O_CLOEXEC), 0);
    assert_int_equal(write(p[1], o.p, o.len), (ssize_t)o.len);
    close(p[1]);
    free(o.p);
    FerryChannel *c = ferry__channel_new_fd(p[0], "pipe");
    assert_false(ferry__migration_load_stream(m, c, NULL, &err));
    assert_msg_contains(err, "is not a UNIX socket");
    ferry_error_free(err);
    ferry__channel_free(c);
    ferry__migration_free(m);
    assert_int_equal(count_fds(), before);
}

/* Hints for more pages than a block has (a source announces each page once) are ignored, with one warning, and
 * the stream still loads: they must not grow the destination's populate queue with the stream's length. */
static void test_dest_excess_hints_ignored(void **state)
{
    Dst d;
    dst_start(&d, false);
    Out o = { 0 };
    for (int i = 0; i < 40; i++) {
        uint8_t hint[8 + FERRY_WIRE_HINT_RANGE_LEN];
        ferry__put_be32(hint, 0);
        ferry__put_be32(hint + 4, 1);
        ferry__put_be64(hint + 8, (uint64_t)(i % 16));
        ferry__put_be64(hint + 16, 1);
        record(&o, FERRY_REC_POPULATE_HINT, hint, sizeof(hint), false);
    }
    send_all(d.src, &o);
    free(o.p);
    send_end(d.src);
    /* The warning goes to stderr: catch it in a memfd. */
    int log = memfd_create("log", MFD_CLOEXEC), saved = dup(2);
    assert_true(log >= 0 && saved >= 0);
    fflush(stderr);
    dup2(log, 2);
    FerryLogLevel level = ferry__log_set_level(FERRY_LOG_WARN);
    char *msg = dst_load(&d);
    ferry__log_set_level(level);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    assert_null(msg);
    char text[4096] = "";
    ssize_t n = pread(log, text, sizeof(text) - 1, 0);
    assert_true(n > 0);
    text[n] = '\0';
    close(log);
    const char *warning = "POPULATE_HINT records announce more pages than RAM block 'ram0' has";
    const char *first = strstr(text, warning);
    if (!first) {
        fail_msg("no warning in '%s'", text);
    }
    assert_null(strstr(first + 1, warning));
    dst_free(&d);
}

/* ferry-analyze lists what the fds were (they cannot be in a file), and checks RAM entries against CONFIG. */
static void test_analyze_lists_fds(void **state)
{
    for (int bad = 0; bad < 2; bad++) {
        Out o = { 0 };
        stream_start(&o);
        FerryWireFd e[2] = { { .kind = FERRY_FD_RAM_BLOCK, .name = "ram0" },
                             { .kind = FERRY_FD_BACKEND, .name = "virtio-net-tap:n0" } };
        if (bad) {
            strcpy(e[0].name, "ram9");
        }
        size_t plen;
        uint8_t *payload = ferry__wire_fds_encode(e, 2, &plen);
        record(&o, FERRY_REC_FDS, payload, (uint32_t)plen, false);
        free(payload);
        uint8_t end[FERRY_WIRE_END_LEN];
        ferry__wire_end_encode(&(FerryWireEnd){ 0 }, end);
        record(&o, FERRY_REC_END, end, sizeof(end), false);
        int fd = memfd_create("stream", MFD_CLOEXEC);
        assert_int_equal(write(fd, o.p, o.len), (ssize_t)o.len);
        assert_int_equal(lseek(fd, 0, SEEK_SET), 0);
        free(o.p);
        json_t *r = NULL;
        FerryError *err = NULL;
        bool ok = ferry_stream_analyze(fd, 0, &r, &err);
        close(fd);
        if (bad) {
            assert_false(ok);
            assert_msg_contains(err, "RAM block 'ram9', which CONFIG does not list");
            ferry_error_free(err);
        } else {
            assert_true(ok);
            json_t *fds = json_object_get(r, "fds");
            assert_int_equal(json_array_size(fds), 2);
            assert_string_equal(json_string_value(json_object_get(json_array_get(fds, 0), "kind")), "ram-block");
            assert_string_equal(json_string_value(json_object_get(json_array_get(fds, 1), "name")),
                                "virtio-net-tap:n0");
        }
        json_decref(r);
    }
}

int main(void)
{
    setenv("FERRY_LOG", "error", 1);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_many_fds),
        cmocka_unit_test(test_refused_on_pipe),
        cmocka_unit_test(test_untaken_fds_closed),
        cmocka_unit_test(test_dest_unknown_block),
        cmocka_unit_test(test_dest_second_entry_fails),
        cmocka_unit_test(test_dest_missing_fd),
        cmocka_unit_test(test_dest_backend_transfer_off),
        cmocka_unit_test(test_dest_backend_adopted),
        cmocka_unit_test(test_dest_pages_for_adopted_block),
        cmocka_unit_test(test_dest_fds_on_a_pipe),
        cmocka_unit_test(test_analyze_lists_fds),
        cmocka_unit_test(test_dest_excess_hints_ignored),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
