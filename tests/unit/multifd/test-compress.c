/*
 * Unit tests of multifd's compression methods through their ops table (src/multifd/multifd-int.h): the table gives
 * each FERRY_MFD_COMP_* value its method and refuses an unknown value by name; every method round-trips scattered
 * pages through its send_prepare and its recv (which reads the payload from a channel, here a memfd); zlib and zstd
 * at their lowest, default and highest levels round-trip compressible and random pages, and a stream that is
 * damaged, truncated, too long or too short for the pages it must fill is refused with a message, never
 * half-accepted. The checksum of a full packet's payload, read in cache-sized pieces, covers a damaged byte in its
 * last piece.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cmocka.h>

#include "multifd/multifd-int.h"
#include "test-helpers.h"

#define PS 4096
#define NPAGES 64

static uint64_t rng = 0x9E3779B97F4A7C15ull;

static void fill(uint8_t *p, size_t len, bool random)
{
    for (size_t i = 0; i < len; i++) {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        p[i] = random ? (uint8_t)(rng >> 56) : (uint8_t)(i / PS);
    }
}

/* Pages 0, 2, 4, ... of @buf as the payload of a packet (never contiguous: the decompressor must fill them one by
 * one). */
static FerryMultifdPayload every_other(uint8_t *buf, struct iovec *iov, int n)
{
    for (int i = 0; i < n; i++) {
        iov[i] = (struct iovec){ .iov_base = buf + (size_t)(2 * i) * PS, .iov_len = PS };
    }
    return (FerryMultifdPayload){ .iov = iov, .niov = n, .npages = (uint32_t)n, .raw = (size_t)n * PS };
}

static FerryMultifdConfig config(uint8_t method, int level)
{
    return (FerryMultifdConfig){ .channels = 1, .compression = method, .level = level, .page_size = PS };
}

/* A channel from which the @len bytes at @buf can be read, as a packet's payload is. */
static FerryChannel *channel_holding(const void *buf, size_t len)
{
    int fd = memfd_create("payload", MFD_CLOEXEC);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, buf, len), (ssize_t)len);
    assert_int_equal(lseek(fd, 0, SEEK_SET), 0);
    FerryChannel *c = ferry__channel_new_fd(fd, "test payload");
    assert_non_null(c);
    return c;
}

/* The payload the method of @method makes of pages 0, 2, 4, ... of @src, copied into @out (of @cap bytes); sets
 * *flags to the packet's flags. @live: the workload runs, so a compressor reads a copy of the pages (one buffer)
 * rather than the pages in place. Twice: a state is reused from packet to packet, and the second stream must be
 * the same as the first. */
static size_t prepare_pages(uint8_t method, int level, bool live, uint8_t *src, uint8_t *out, size_t cap,
                            uint8_t *flags)
{
    const FerryMultifdMethods *m = ferry__multifd_methods(method, NULL);
    FerryMultifdConfig cfg = config(method, level);
    FerryError *err = NULL;
    void *st = NULL;
    assert_true(!m->send_setup || m->send_setup(&cfg, &st, &err));
    uint8_t *copybuf = malloc((size_t)FERRY_WIRE_MFD_MAX_PAGES * PS);
    size_t first = 0;
    for (int round = 0; round < 2; round++) {
        struct iovec iov[NPAGES];
        FerryMultifdPayload p = every_other(src, iov, NPAGES / 2);
        p.len = p.raw;
        p.live = live;
        p.copybuf = copybuf;
        assert_true(!m->send_prepare || m->send_prepare(st, &p, &err));
        assert_true(p.len <= cap && p.len <= ferry__wire_mfd_payload_max(p.raw));
        uint8_t *dst = round == 0 ? out : malloc(cap);
        size_t off = 0;
        for (int i = 0; i < p.niov; i++) {
            memcpy(dst + off, p.iov[i].iov_base, p.iov[i].iov_len);
            off += p.iov[i].iov_len;
        }
        assert_int_equal(off, p.len);
        if (round == 0) {
            first = p.len;
        } else {
            assert_int_equal(p.len, first);
            assert_memory_equal(out, dst, first);
            free(dst);
        }
        *flags = p.flags;
    }
    if (st) {
        m->send_cleanup(st);
    }
    free(copybuf);
    return first;
}

/* The method's recv of @len payload bytes at @comp (flagged @flags) into @npages pages 0, 2, 4, ... of @dst. */
static bool load_pages(uint8_t method, uint8_t flags, const uint8_t *comp, size_t len, uint8_t *dst, int npages,
                       FerryError **errp)
{
    const FerryMultifdMethods *m = ferry__multifd_methods(method, NULL);
    FerryMultifdConfig cfg = config(method, 0);
    void *st = NULL;
    assert_true(!m->recv_setup || m->recv_setup(&cfg, &st, errp));
    struct iovec iov[NPAGES];
    FerryMultifdPayload p = every_other(dst, iov, npages);
    FerryWireMfdPacket pk = { .type = FERRY_MFD_PKT_PAGES, .flags = flags, .pages = (uint32_t)npages,
                              .payload = (uint32_t)len, .number = 7 };
    FerryChannel *c = channel_holding(comp, len);
    uint32_t crc = 0;
    bool ok = m->recv(st, c, &pk, &p, &crc, errp);
    if (ok) {
        /* The checksum is extended over the payload as it travelled. */
        assert_int_equal(crc, ferry__crc32c(0, comp, len));
    }
    ferry__channel_free(c);
    if (st) {
        m->recv_cleanup(st);
    }
    return ok;
}

static void round_trip(uint8_t method, int level, bool random)
{
    size_t raw = (size_t)NPAGES * PS;
    uint8_t *src = malloc(raw), *dst = calloc(1, raw);
    size_t cap = ferry__wire_mfd_payload_max(raw / 2);
    uint8_t *comp = malloc(cap);
    fill(src, raw, random);
    for (int live = 0; live < 2; live++) {
        uint8_t flags;
        size_t len = prepare_pages(method, level, live, src, comp, cap, &flags);
        assert_int_equal(flags, method == FERRY_MFD_COMP_NONE ? 0 : FERRY_MFD_PKT_COMPRESSED);
        if (method == FERRY_MFD_COMP_NONE) {
            assert_int_equal(len, raw / 2); /* none does not compress: the payload is the pages */
        } else if (!random && level > 0) {
            assert_true(len < raw / 2 / 20); /* pages of one repeated byte shrink to almost nothing */
        }
        for (int round = 0; round < 2; round++) {
            FerryError *err = NULL;
            assert_true(load_pages(method, flags, comp, len, dst, NPAGES / 2, &err));
            for (int i = 0; i < NPAGES; i += 2) {
                assert_memory_equal(dst + (size_t)i * PS, src + (size_t)i * PS, PS);
            }
            memset(dst, 0, raw);
        }
    }
    free(src);
    free(dst);
    free(comp);
}

/* Every value of the table round-trips under the name the wire gives it. */
static void test_table(void **state)
{
    static const uint8_t values[] = { FERRY_MFD_COMP_NONE, FERRY_MFD_COMP_ZLIB, FERRY_MFD_COMP_ZSTD };
    for (size_t i = 0; i < FERRY_ARRAY_SIZE(values); i++) {
        FerryError *err = NULL;
        const FerryMultifdMethods *m = ferry__multifd_methods(values[i], &err);
        assert_non_null(m);
        assert_null(err);
        assert_string_equal(m->name, ferry__wire_mfd_comp_name(values[i]));
        assert_non_null(m->recv);
        /* A method with state sets it up and cleans it up on both sides. */
        assert_true(!m->send_setup == !m->send_cleanup && !m->recv_setup == !m->recv_cleanup);
        round_trip(values[i], 1, false);
        round_trip(values[i], 1, true);
    }
}

static void test_zlib(void **state)
{
    for (int level = 0; level <= 9; level += 1) {
        round_trip(FERRY_MFD_COMP_ZLIB, level, false);
    }
    round_trip(FERRY_MFD_COMP_ZLIB, 1, true);
    round_trip(FERRY_MFD_COMP_ZLIB, 9, true);
}

static void test_zstd(void **state)
{
    static const int levels[] = { 0, 1, 3, 19, 20 };
    for (size_t i = 0; i < FERRY_ARRAY_SIZE(levels); i++) {
        round_trip(FERRY_MFD_COMP_ZSTD, levels[i], false);
    }
    round_trip(FERRY_MFD_COMP_ZSTD, 1, true);
}

/* Loading @comp (of @len bytes, flagged @flags) into @npages pages must fail with @msg. */
static void expect_refused(uint8_t method, uint8_t flags, const uint8_t *comp, size_t len, int npages,
                           const char *msg)
{
    uint8_t *dst = calloc(1, (size_t)NPAGES * 2 * PS);
    FerryError *err = NULL;
    bool ok = load_pages(method, flags, comp, len, dst, npages, &err);
    if (ok) {
        print_error("method %u, %zu bytes into %d pages: accepted, expected \"%s\"\n", method, len, npages, msg);
    }
    assert_false(ok);
    assert_msg_contains(err, msg);
    ferry_error_free(err);
    free(dst);
}

static void bad_streams(uint8_t method, bool random)
{
    const char *name = ferry__wire_mfd_comp_name(method);
    size_t raw = (size_t)NPAGES * PS;
    uint8_t *src = malloc(raw);
    size_t cap = ferry__wire_mfd_payload_max(raw / 2);
    uint8_t *comp = malloc(cap + 16);
    fill(src, raw, random);
    uint8_t f;
    size_t len = prepare_pages(method, 1, false, src, comp, cap, &f);
    /* Fewer pages than the stream holds: random data is longer than any stream for fewer pages can be, which the
     * length check refuses before reading; compressible data must be refused by the decompressor. */
    expect_refused(method, f, comp, len, NPAGES / 2 - 1,
                   random ? "bytes of compressed data for 31 pages" : "more than the packet's pages");
    /* More pages than it holds, cut short, trailing bytes, a flipped byte. */
    expect_refused(method, f, comp, len, NPAGES / 2 + 1, name);
    expect_refused(method, f, comp, len / 2, NPAGES / 2, name);
    comp[len] = 0;
    expect_refused(method, f, comp, len + 1, NPAGES / 2, "after the end");
    /* zlib's own adler32 catches a flipped byte anywhere; zstd frames here carry no checksum (the packet's CRC32C is
     * the integrity check), so for zstd the flip goes where the format itself must notice. */
    size_t at = method == FERRY_MFD_COMP_ZLIB ? len / 3 : 0;
    comp[at] ^= 0x55;
    expect_refused(method, f, comp, len, NPAGES / 2, name);
    /* Garbage from the start. */
    memset(comp, 0xa5, 64);
    expect_refused(method, f, comp, 64, 1, name);
    free(src);
    free(comp);
}

static void test_bad_streams(void **state)
{
    bad_streams(FERRY_MFD_COMP_ZLIB, true);
    bad_streams(FERRY_MFD_COMP_ZLIB, false);
    bad_streams(FERRY_MFD_COMP_ZSTD, true);
    bad_streams(FERRY_MFD_COMP_ZSTD, false);
}

/* none reads exactly the bytes of its pages: a payload of any other length is refused before it is read. */
static void test_none_length(void **state)
{
    uint8_t buf[2 * PS] = { 0 };
    expect_refused(FERRY_MFD_COMP_NONE, 0, buf, PS, 2, "packet 7: 4096 bytes of data for 2 pages with data");
    expect_refused(FERRY_MFD_COMP_NONE, 0, buf, 2 * PS, 1, "packet 7: 8192 bytes of data for 1 pages with data");
}

/* A decompressor that accepts any payload and leaves the pages alone: the piece-wise reading and checksumming of
 * a compressed payload is what is tested, not a library. */
static bool accept_any(void *ctx, const uint8_t *in, size_t len, const struct iovec *iov, int iovcnt,
                       FerryError **errp)
{
    (void)ctx, (void)in, (void)len, (void)iov, (void)iovcnt, (void)errp;
    return true;
}

/* The CRC32C a recv computes over the @len payload bytes at @payload into the pages of @p (compressed: into @cbuf). */
static uint32_t recv_crc(bool compressed, const uint8_t *payload, size_t len, const FerryMultifdPayload *p,
                         uint8_t *cbuf)
{
    FerryWireMfdPacket pk = { .type = FERRY_MFD_PKT_PAGES, .flags = compressed ? FERRY_MFD_PKT_COMPRESSED : 0,
                              .pages = p->npages, .payload = (uint32_t)len, .number = 9 };
    FerryChannel *c = channel_holding(payload, len);
    FerryError *err = NULL;
    uint32_t crc = 0;
    bool ok = compressed ? ferry__multifd_recv_compressed(c, &pk, p, &crc, accept_any, NULL, cbuf, &err)
                         : ferry__multifd_nocomp.recv(NULL, c, &pk, p, &crc, &err);
    assert_null(err);
    assert_true(ok);
    ferry__channel_free(c);
    return crc;
}

/*
 * A full packet's payload (FERRY_WIRE_MFD_MAX_PAGES pages, several pieces of ferry__crc32c_chunk() bytes) is read
 * and checksummed piece by piece, pieces starting and ending inside runs of pages (nocomp copies each piece from
 * its buffer into the runs): the pages still receive every byte, and a byte damaged in the last piece still changes the checksum that recv.c compares with the packet's
 * trailer; the same for a compressed payload.
 */
static void test_crc_covers_later_pieces(void **state)
{
    const uint32_t n = FERRY_WIRE_MFD_MAX_PAGES;
    size_t raw = (size_t)n * PS;
    assert_true(ferry__crc32c_chunk() < raw / 2);
    uint8_t *payload = malloc(raw), *damaged = malloc(raw), *ram = calloc(1, 2 * raw);
    uint8_t *cbuf = ferry__multifd_cbuf_new(PS);
    fill(payload, raw, true);
    memcpy(damaged, payload, raw);
    damaged[raw - PS - 3] ^= 0x01;
    /* Runs of three pages with a one-page hole after each. */
    struct iovec iov[FERRY_WIRE_MFD_MAX_PAGES];
    int niov = 0;
    for (uint32_t page = 0; page < n; page += 3) {
        uint32_t run = FERRY_MIN(3u, n - page);
        iov[niov++] = (struct iovec){ .iov_base = ram + (size_t)(page + page / 3) * PS, .iov_len = (size_t)run * PS };
    }
    FerryMultifdPayload p = { .iov = iov, .niov = niov, .npages = n, .raw = raw };
    uint32_t want = ferry__crc32c(0, payload, raw);

    assert_int_equal(recv_crc(false, payload, raw, &p, cbuf), want);
    for (uint32_t page = 0, off = 0; page < n; page += 3) {
        size_t bytes = (size_t)FERRY_MIN(3u, n - page) * PS;
        assert_memory_equal(ram + (size_t)(page + page / 3) * PS, payload + off, bytes);
        off += (uint32_t)bytes;
    }
    uint32_t bad = recv_crc(false, damaged, raw, &p, cbuf);
    assert_int_not_equal(bad, want);
    assert_int_equal(bad, ferry__crc32c(0, damaged, raw));

    assert_int_equal(recv_crc(true, payload, raw, &p, cbuf), want);
    bad = recv_crc(true, damaged, raw, &p, cbuf);
    assert_int_not_equal(bad, want);
    assert_int_equal(bad, ferry__crc32c(0, damaged, raw));
    free(payload);
    free(damaged);
    free(ram);
    free(cbuf);
}

static void test_unknown_method(void **state)
{
    static const uint8_t unknown[] = { 3, 7, 255 };
    for (size_t i = 0; i < FERRY_ARRAY_SIZE(unknown); i++) {
        FerryError *err = NULL;
        assert_null(ferry__multifd_methods(unknown[i], &err));
        char want[80];
        snprintf(want, sizeof(want), "multifd compression method %u is unknown (known: none, zlib, zstd)",
                 unknown[i]);
        assert_msg_contains(err, want);
        ferry_error_free(err);
    }
    /* none cannot compress: the table gives it no compressing step, so its packets go as their pages (test_table
     * checks the payload). */
    assert_null(ferry__multifd_methods(FERRY_MFD_COMP_NONE, NULL)->send_prepare);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table),
        cmocka_unit_test(test_zlib),
        cmocka_unit_test(test_zstd),
        cmocka_unit_test(test_bad_streams),
        cmocka_unit_test(test_none_length),
        cmocka_unit_test(test_unknown_method),
        cmocka_unit_test(test_crc_covers_later_pieces),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
