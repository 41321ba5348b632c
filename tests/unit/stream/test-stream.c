/*
 * Unit tests of the buffered stream (src/stream/stream.c) over a socketpair-backed channel: typed and raw writes
 * and reads of every size class (in the buffer, across its end, larger than it), write_iov, skip, byte counts,
 * the sticky error: an early end of stream, a dead peer on write, and set_error keeping the first error; and the
 * read CRC of a large read, which is received and checksummed piece by piece, still covering a damaged byte in a
 * later piece.
 */
#include <endian.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <cmocka.h>

#include "stream/stream.h"
#include "util/util.h"

#define BUF_SIZE (256 * 1024)

struct pair {
    FerryChannel *a, *b;
};

static void make_pair(struct pair *p)
{
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    p->a = ferry__channel_new_fd(sv[0], "pair-writer");
    p->b = ferry__channel_new_fd(sv[1], "pair-reader");
    assert_non_null(p->a);
    assert_non_null(p->b);
}

static void fill_pattern(uint8_t *buf, size_t len, uint32_t seed)
{
    for (size_t i = 0; i < len; i++) {
        buf[i] = (uint8_t)((i + seed) * 2654435761u >> 11);
    }
}

/* Sizes chosen around the buffer size: fits, fills it exactly, crosses its end, larger than it. */
static const size_t chunk_sizes[] = { 1, 7, 100, 4096, BUF_SIZE - 3, 5, BUF_SIZE, BUF_SIZE + 1, 3 * BUF_SIZE + 11, 2 };

struct writer_ctx {
    FerryChannel *c;
    uint64_t written;
    bool ok;
};

static void *writer_thread(void *opaque)
{
    struct writer_ctx *ctx = opaque;
    FerryStream *s = ferry__stream_new(ctx->c);
    ferry__stream_write_u8(s, 0xab);
    ferry__stream_write_be16(s, 0x1234);
    ferry__stream_write_be32(s, 0xdeadbeef);
    ferry__stream_write_be64(s, 0x0102030405060708ULL);
    for (size_t i = 0; i < FERRY_ARRAY_SIZE(chunk_sizes); i++) {
        uint8_t *buf = ferry__xmalloc(chunk_sizes[i]);
        fill_pattern(buf, chunk_sizes[i], (uint32_t)i);
        ferry__stream_write(s, buf, chunk_sizes[i]);
        free(buf);
    }
    /* Page-like data straight from the caller's memory, after buffered bytes that must go out first. */
    ferry__stream_write_be32(s, 3);
    uint8_t pages[3][4096];
    struct iovec iov[3];
    for (int i = 0; i < 3; i++) {
        fill_pattern(pages[i], sizeof(pages[i]), 100u + (uint32_t)i);
        iov[i].iov_base = pages[i];
        iov[i].iov_len = sizeof(pages[i]);
    }
    ferry__stream_write_iov(s, iov, 3);
    /* The caller's iovec is untouched. */
    ctx->ok = iov[0].iov_base == pages[0] && iov[2].iov_len == 4096;
    ferry__stream_write(s, "skipped!", 8);
    ferry__stream_write_be16(s, 0xbeef);
    ctx->ok = ferry__stream_flush(s) && ctx->ok;
    ctx->written = ferry__stream_bytes_written(s);
    ferry__stream_free(s);
    return NULL;
}

static void test_roundtrip(void **state)
{
    struct pair p;
    make_pair(&p);
    struct writer_ctx ctx = { .c = p.a };
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, writer_thread, &ctx), 0);

    FerryStream *s = ferry__stream_new(p.b);
    assert_ptr_equal(ferry__stream_channel(s), p.b);
    uint8_t u8;
    uint16_t u16;
    uint32_t u32;
    uint64_t u64;
    assert_true(ferry__stream_read_u8(s, &u8));
    assert_int_equal(u8, 0xab);
    assert_true(ferry__stream_read_be16(s, &u16));
    assert_int_equal(u16, 0x1234);
    assert_true(ferry__stream_read_be32(s, &u32));
    assert_int_equal(u32, 0xdeadbeef);
    assert_true(ferry__stream_read_be64(s, &u64));
    assert_true(u64 == 0x0102030405060708ULL);
    for (size_t i = 0; i < FERRY_ARRAY_SIZE(chunk_sizes); i++) {
        uint8_t *want = ferry__xmalloc(chunk_sizes[i]);
        uint8_t *got = ferry__xmalloc(chunk_sizes[i]);
        fill_pattern(want, chunk_sizes[i], (uint32_t)i);
        assert_true(ferry__stream_read(s, got, chunk_sizes[i]));
        assert_memory_equal(got, want, chunk_sizes[i]);
        free(want);
        free(got);
    }
    assert_true(ferry__stream_read_be32(s, &u32));
    assert_int_equal(u32, 3);
    for (int i = 0; i < 3; i++) {
        uint8_t want[4096], got[4096];
        fill_pattern(want, sizeof(want), 100u + (uint32_t)i);
        assert_true(ferry__stream_read(s, got, sizeof(got)));
        assert_memory_equal(got, want, sizeof(got));
    }
    assert_true(ferry__stream_skip(s, 8));
    assert_true(ferry__stream_read_be16(s, &u16));
    assert_int_equal(u16, 0xbeef);

    pthread_join(t, NULL);
    assert_true(ctx.ok);
    uint64_t expect = 1 + 2 + 4 + 8 + 4 + 3 * 4096 + 8 + 2;
    for (size_t i = 0; i < FERRY_ARRAY_SIZE(chunk_sizes); i++) {
        expect += chunk_sizes[i];
    }
    assert_true(ctx.written == expect);
    assert_true(ferry__stream_bytes_read(s) == expect);
    assert_false(ferry__stream_failed(s));
    assert_true(ferry__stream_check(s, NULL));

    ferry__stream_free(s);
    ferry__channel_free(p.a);
    ferry__channel_free(p.b);
}

static void test_buffered_until_flush(void **state)
{
    struct pair p;
    make_pair(&p);
    FerryStream *w = ferry__stream_new(p.a);
    ferry__stream_write_be32(w, 42);
    /* Counted although still buffered, and nothing reached the socket yet. */
    assert_true(ferry__stream_bytes_written(w) == 4);
    char c;
    assert_int_equal(recv(p.b->fd, &c, 1, MSG_DONTWAIT), -1);
    assert_true(ferry__stream_flush(w));
    uint8_t raw[4];
    assert_true(ferry__channel_read_all(p.b, raw, 4, NULL));
    assert_memory_equal(raw, "\0\0\0\x2a", 4);
    ferry__stream_free(w);
    ferry__channel_free(p.a);
    ferry__channel_free(p.b);
}

static void test_eof_is_sticky(void **state)
{
    struct pair p;
    make_pair(&p);
    assert_true(ferry__channel_write_all(p.a, "0123456789", 10, NULL));
    ferry__channel_free(p.a);

    FerryStream *s = ferry__stream_new(p.b);
    char buf[100];
    assert_true(ferry__stream_read(s, buf, 4));
    assert_memory_equal(buf, "0123", 4);
    /* Six bytes are there, a hundred were asked for. */
    assert_false(ferry__stream_read(s, buf, 100));
    assert_true(ferry__stream_failed(s));
    FerryError *err = NULL;
    assert_false(ferry__stream_check(s, &err));
    assert_non_null(strstr(ferry_error_msg(err), "connection closed by peer"));
    assert_non_null(strstr(ferry_error_msg(err), "pair-reader"));
    char *first = ferry__xstrdup(ferry_error_msg(err));
    ferry_error_free(err);
    err = NULL;

    /* Every later call fails at once, with the same error. */
    uint8_t u8 = 0x55;
    assert_false(ferry__stream_read_u8(s, &u8));
    assert_int_equal(u8, 0x55);
    assert_false(ferry__stream_skip(s, 1));
    assert_false(ferry__stream_check(s, &err));
    assert_string_equal(ferry_error_msg(err), first);
    ferry_error_free(err);
    free(first);
    /* check with a NULL errp only reports. */
    assert_false(ferry__stream_check(s, NULL));
    ferry__stream_free(s);
    ferry__channel_free(p.b);
}

static void test_set_error_keeps_first(void **state)
{
    struct pair p;
    make_pair(&p);
    FerryStream *s = ferry__stream_new(p.a);
    ferry__stream_write(s, "abc", 3);

    FerryError *e1 = NULL, *e2 = NULL;
    ferry_error_setg(&e1, "first problem");
    ferry_error_setg(&e2, "second problem");
    ferry__stream_set_error(s, e1);
    ferry__stream_set_error(s, e2); /* freed, not kept (ASan checks the leak) */
    ferry__stream_set_error(s, NULL);

    FerryError *err = NULL;
    assert_false(ferry__stream_check(s, &err));
    assert_string_equal(ferry_error_msg(err), "first problem");
    ferry_error_free(err);

    /* Writes are no-ops now: not counted, not sent. */
    ferry__stream_write_be64(s, 1);
    struct iovec iov = { .iov_base = "zz", .iov_len = 2 };
    ferry__stream_write_iov(s, &iov, 1);
    assert_true(ferry__stream_bytes_written(s) == 3);
    assert_false(ferry__stream_flush(s));
    char c;
    assert_int_equal(recv(p.b->fd, &c, 1, MSG_DONTWAIT), -1);

    ferry__stream_free(s);
    ferry__stream_free(NULL);
    ferry__channel_free(p.a);
    ferry__channel_free(p.b);
}

static void test_write_to_dead_peer(void **state)
{
    struct pair p;
    make_pair(&p);
    ferry__channel_free(p.b);
    FerryStream *s = ferry__stream_new(p.a);
    ferry__stream_write(s, "data", 4);
    assert_false(ferry__stream_flush(s));
    FerryError *err = NULL;
    assert_false(ferry__stream_check(s, &err));
    assert_non_null(strstr(ferry_error_msg(err), "Failed to write to 'pair-writer'"));
    assert_non_null(strstr(ferry_error_msg(err), "Broken pipe"));
    ferry_error_free(err);
    ferry__stream_free(s);
    ferry__channel_free(p.a);
}

/*
 * A large read with the CRC on goes through the read buffer, a piece at a time, each piece copied out and
 * checksummed in one pass. A byte damaged in transit in a later piece must still change the read CRC (the record
 * trailer's check then refuses the record), whether the read starts with an empty read buffer or after bytes
 * already in it.
 */
struct damage_ctx {
    FerryChannel *c;
    const uint8_t *intact, *damaged;
    size_t len;
    bool ok;
};

static void *damage_writer(void *opaque)
{
    struct damage_ctx *ctx = opaque;
    /* Raw channel writes: what the reader gets is not what its expected CRC was computed over. */
    ctx->ok = ferry__channel_write_all(ctx->c, ctx->intact, ctx->len, NULL) &&
              ferry__channel_write_all(ctx->c, ctx->damaged, ctx->len, NULL) &&
              ferry__channel_write_all(ctx->c, "x", 1, NULL) &&
              ferry__channel_write_all(ctx->c, ctx->damaged, ctx->len, NULL);
    return NULL;
}

static void test_crc_covers_later_pieces(void **state)
{
    size_t chunk = ferry__crc32c_chunk();
    /* Longer than both the read buffer (so that the read bypasses it) and four pieces. */
    size_t len = FERRY_MAX((size_t)4 * chunk, (size_t)4 * BUF_SIZE) + 123;
    uint8_t *intact = ferry__xmalloc(len), *damaged = ferry__xmalloc(len), *got = ferry__xmalloc(len);
    fill_pattern(intact, len, 7);
    memcpy(damaged, intact, len);
    size_t where = len - chunk / 2 - 5; /* inside the last piece, far from the first */
    damaged[where] ^= 0x10;
    uint32_t want = ferry__crc32c(0, intact, len);

    struct pair p;
    make_pair(&p);
    struct damage_ctx ctx = { .c = p.a, .intact = intact, .damaged = damaged, .len = len };
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, damage_writer, &ctx), 0);
    FerryStream *s = ferry__stream_new(p.b);
    assert_true(ferry__stream_crc(s));

    /* Intact: the pieces' CRCs join into the CRC of the whole. */
    ferry__stream_read_crc_reset(s);
    assert_true(ferry__stream_read(s, got, len));
    assert_memory_equal(got, intact, len);
    assert_int_equal(ferry__stream_read_crc(s), want);

    /* Damaged, read from a piece boundary. */
    ferry__stream_read_crc_reset(s);
    assert_true(ferry__stream_read(s, got, len));
    assert_int_not_equal(ferry__stream_read_crc(s), want);
    assert_int_equal(ferry__stream_read_crc(s), ferry__crc32c(0, damaged, len));

    /* Damaged, after one byte that leaves the rest of a buffered read-ahead in front of the large read. */
    uint8_t x;
    assert_true(ferry__stream_read_u8(s, &x));
    assert_int_equal(x, 'x');
    ferry__stream_read_crc_reset(s);
    assert_true(ferry__stream_read(s, got, len));
    assert_int_not_equal(ferry__stream_read_crc(s), want);
    assert_int_equal(ferry__stream_read_crc(s), ferry__crc32c(0, damaged, len));

    pthread_join(t, NULL);
    assert_true(ctx.ok);
    assert_false(ferry__stream_failed(s));
    ferry__stream_free(s);
    ferry__channel_free(p.a);
    ferry__channel_free(p.b);
    free(intact);
    free(damaged);
    free(got);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip),
        cmocka_unit_test(test_buffered_until_flush),
        cmocka_unit_test(test_eof_is_sticky),
        cmocka_unit_test(test_set_error_keeps_first),
        cmocka_unit_test(test_write_to_dead_peer),
        cmocka_unit_test(test_crc_covers_later_pieces),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
