/*
 * Unit tests of channels and listeners over real sockets (src/channel/channel.c, socket.c, tcp.c, unix.c):
 * unix and TCP listeners with kernel-chosen ports, connect, data both ways, the addresses listeners report,
 * error messages for refused connections and busy ports, accept and blocked reads interrupted from another
 * thread, a TCP channel shut down and closed failing the peer's write blocked on its closed window at once, a
 * dead peer giving EPIPE instead of SIGPIPE, the write loops with partial writes and more iovecs
 * than IOV_MAX, and a unix listener whose path another listener takes over. Everything runs on loopback; IPv6 is skipped with a reason when ::1 is unavailable.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <linux/tcp.h> /* struct tcp_info with tcpi_snd_wnd */

#include <cmocka.h>

#include "test-helpers.h"

#include "channel/channel.h"
#include "util/util.h"

static char tmpdir[64];

static int setup(void **state)
{
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/ferry-test-channel-XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown(void **state)
{
    return rmdir(tmpdir);
}

static FerryMigrationAddress *parse(const char *uri)
{
    FerryMigrationAddress *a = NULL;
    FerryError *err = NULL;
    if (!ferry__address_parse_uri(uri, &a, &err)) {
        print_error("%s\n", ferry_error_msg(err));
        fail();
    }
    return a;
}

/* Connects to @uri, accepts on @l, and checks a message each way. */
static void exchange(FerryListener *l, const char *uri, FerryChannel **out_client, FerryChannel **out_server)
{
    FerryMigrationAddress *a = parse(uri);
    FerryError *err = NULL;
    /* The kernel completes the handshake from the backlog, so connecting before accept does not block. */
    FerryChannel *client = ferry__channel_connect(a, -1, &err);
    if (!client) {
        print_error("%s\n", ferry_error_msg(err));
        fail();
    }
    ferry__address_free(a);
    FerryChannel *server = ferry__listener_accept(l, &err);
    assert_non_null(server);

    char buf[16];
    assert_true(ferry__channel_write_all(client, "hello server", 12, NULL));
    assert_true(ferry__channel_read_all(server, buf, 12, NULL));
    assert_memory_equal(buf, "hello server", 12);
    assert_true(ferry__channel_write_all(server, "hi client", 9, NULL));
    assert_true(ferry__channel_read_all(client, buf, 9, NULL));
    assert_memory_equal(buf, "hi client", 9);

    *out_client = client;
    *out_server = server;
}

static void test_unix(void **state)
{
    char path[128], uri[160];
    snprintf(path, sizeof(path), "%s/sock", tmpdir);
    snprintf(uri, sizeof(uri), "unix:%s", path);
    FerryMigrationAddress *a = parse(uri);

    /* A stale socket file (bound, then its owner went away) is replaced. */
    int stale = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un sun = { .sun_family = AF_UNIX };
    strcpy(sun.sun_path, path);
    assert_int_equal(bind(stale, (struct sockaddr *)&sun, sizeof(sun)), 0);
    close(stale);

    FerryError *err = NULL;
    FerryListener *l = ferry__listener_new(a, &err);
    assert_non_null(l);
    ferry__address_free(a);

    json_t *addrs = ferry__listener_addresses(l);
    assert_int_equal(json_array_size(addrs), 1);
    json_t *first = json_array_get(addrs, 0);
    assert_string_equal(json_string_value(json_object_get(first, "type")), "unix");
    assert_string_equal(json_string_value(json_object_get(first, "path")), path);
    json_decref(addrs);

    FerryChannel *client, *server;
    exchange(l, uri, &client, &server);
    assert_string_equal(client->ops->name, "unix");
    assert_string_equal(client->desc, uri);
    assert_string_equal(server->desc, uri);

    /* A peer that goes away: read gives 0, read_all names the channel. */
    ferry__channel_free(client);
    char c;
    assert_int_equal(ferry__channel_read(server, &c, 1, NULL), 0);
    assert_false(ferry__channel_read_all(server, &c, 1, &err));
    assert_msg_contains(err, "connection closed by peer");
    assert_msg_contains(err, uri);
    ferry_error_free(err);
    err = NULL;

    /* Writing to it gives EPIPE, not SIGPIPE (which would kill this test). */
    assert_false(ferry__channel_write_all(server, "x", 1, &err));
    assert_msg_contains(err, "Broken pipe");
    ferry_error_free(err);
    err = NULL;
    ferry__channel_free(server);

    struct stat st;
    assert_int_equal(lstat(path, &st), 0);
    ferry__listener_free(l);
    /* free() removed the socket file it created. */
    assert_int_equal(lstat(path, &st), -1);
    assert_int_equal(errno, ENOENT);

    /* Connecting to nothing names the address and the reason. */
    a = parse(uri);
    assert_null(ferry__channel_connect(a, -1, &err));
    assert_msg_contains(err, "Failed to connect to '");
    assert_msg_contains(err, "': No such file or directory");
    ferry_error_free(err);
    err = NULL;
    ferry__address_free(a);
}

static void test_unix_not_a_socket(void **state)
{
    char path[128], uri[160];
    snprintf(path, sizeof(path), "%s/regular", tmpdir);
    snprintf(uri, sizeof(uri), "unix:%s", path);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fclose(f);
    FerryMigrationAddress *a = parse(uri);
    FerryError *err = NULL;
    assert_null(ferry__listener_new(a, &err));
    assert_msg_contains(err, "exists and is not a socket");
    ferry_error_free(err);
    ferry__address_free(a);
    /* The regular file was left alone. */
    assert_int_equal(unlink(path), 0);
}

/* Starts a TCP listener on @uri (port 0) and returns it with the real port. */
static FerryListener *tcp_listener(const char *uri, const char *want_host, char *port, size_t port_len)
{
    FerryMigrationAddress *a = parse(uri);
    FerryError *err = NULL;
    FerryListener *l = ferry__listener_new(a, &err);
    if (!l) {
        print_error("%s\n", ferry_error_msg(err));
        fail();
    }
    ferry__address_free(a);
    json_t *addrs = ferry__listener_addresses(l);
    assert_int_equal(json_array_size(addrs), 1);
    json_t *first = json_array_get(addrs, 0);
    assert_string_equal(json_string_value(json_object_get(first, "type")), "inet");
    if (want_host) {
        assert_string_equal(json_string_value(json_object_get(first, "host")), want_host);
    }
    const char *p = json_string_value(json_object_get(first, "port"));
    assert_non_null(p);
    /* The kernel's choice, not the 0 we asked for. */
    assert_string_not_equal(p, "0");
    assert_true(atoi(p) > 0 && atoi(p) <= 65535);
    snprintf(port, port_len, "%s", p);
    json_decref(addrs);
    return l;
}

static void test_tcp_ipv4(void **state)
{
    char port[16], uri[64];
    FerryListener *l = tcp_listener("tcp:127.0.0.1:0", "127.0.0.1", port, sizeof(port));
    snprintf(uri, sizeof(uri), "tcp:127.0.0.1:%s", port);

    FerryChannel *client, *server;
    exchange(l, uri, &client, &server);
    assert_string_equal(client->ops->name, "tcp");
    assert_string_equal(client->desc, uri);
    assert_int_equal(strncmp(server->desc, "tcp:127.0.0.1:", 14), 0);

    /* The port is taken while the listener lives. */
    FerryMigrationAddress *a = parse(uri);
    FerryError *err = NULL;
    assert_null(ferry__listener_new(a, &err));
    assert_msg_contains(err, "Failed to bind to '");
    assert_msg_contains(err, "Address already in use");
    ferry_error_free(err);
    err = NULL;

    ferry__channel_free(client);
    ferry__channel_free(server);
    ferry__listener_free(l);

    /* Nobody listens any more: refused, and the message names the address. */
    assert_null(ferry__channel_connect(a, -1, &err));
    char want[128];
    snprintf(want, sizeof(want), "Failed to connect to '%s': Connection refused", uri);
    assert_msg_contains(err, want);
    ferry_error_free(err);
    ferry__address_free(a);
}

static void test_tcp_any(void **state)
{
    /* "tcp::PORT": listen on every address, connect to the local host. */
    char port[16], uri[64];
    FerryListener *l = tcp_listener("tcp::0", NULL, port, sizeof(port));
    snprintf(uri, sizeof(uri), "tcp::%s", port);
    FerryChannel *client, *server;
    exchange(l, uri, &client, &server);
    ferry__channel_free(client);
    ferry__channel_free(server);

    /* 127.0.0.1 reaches it too (a "::" socket is dual-stack). */
    snprintf(uri, sizeof(uri), "tcp:127.0.0.1:%s", port);
    exchange(l, uri, &client, &server);
    ferry__channel_free(client);
    ferry__channel_free(server);
    ferry__listener_free(l);
}

static bool ipv6_loopback_available(void)
{
    int fd = socket(AF_INET6, SOCK_STREAM, 0);
    if (fd < 0) {
        return false;
    }
    struct sockaddr_in6 sin6 = { .sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT };
    bool ok = bind(fd, (struct sockaddr *)&sin6, sizeof(sin6)) == 0;
    close(fd);
    return ok;
}

static void test_tcp_ipv6(void **state)
{
    if (!ipv6_loopback_available()) {
        print_message("skipping: IPv6 loopback (::1) is not available on this host\n");
        skip();
    }
    char port[16], uri[64];
    FerryListener *l = tcp_listener("tcp:[::1]:0", "::1", port, sizeof(port));
    snprintf(uri, sizeof(uri), "tcp:[::1]:%s", port);
    FerryChannel *client, *server;
    exchange(l, uri, &client, &server);
    assert_int_equal(strncmp(server->desc, "tcp:[::1]:", 10), 0);
    ferry__channel_free(client);
    ferry__channel_free(server);
    ferry__listener_free(l);
}

static void test_tcp_resolve_error(void **state)
{
    /* ipv4=off on an IPv4 literal: nothing to resolve to. */
    FerryMigrationAddress *a = parse("tcp:127.0.0.1:1,ipv4=off");
    FerryError *err = NULL;
    assert_null(ferry__channel_connect(a, -1, &err));
    assert_msg_contains(err, "Failed to resolve '127.0.0.1' for 'tcp:127.0.0.1:1,ipv4=off'");
    ferry_error_free(err);
    ferry__address_free(a);
}

struct accept_ctx {
    FerryListener *l;
    FerryChannel *c;
    FerryError *err;
};

static void *accept_thread(void *opaque)
{
    struct accept_ctx *ctx = opaque;
    ctx->c = ferry__listener_accept(ctx->l, &ctx->err);
    return NULL;
}

static void test_accept_cancelled(void **state)
{
    char port[16];
    FerryListener *l = tcp_listener("tcp:127.0.0.1:0", "127.0.0.1", port, sizeof(port));
    struct accept_ctx ctx = { .l = l };
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, accept_thread, &ctx), 0);
    ferry__sleep_ns(50 * 1000 * 1000); /* let it block in poll (the result is the same if it has not) */
    ferry__listener_shutdown(l);
    pthread_join(t, NULL);
    assert_null(ctx.c);
    assert_msg_contains(ctx.err, "cancelled");
    ferry_error_free(ctx.err);

    /* It stays cancelled. */
    FerryError *err = NULL;
    assert_null(ferry__listener_accept(l, &err));
    assert_msg_contains(err, "cancelled");
    ferry_error_free(err);
    ferry__listener_free(l);
}

struct read_ctx {
    FerryChannel *c;
    bool ok;
    FerryError *err;
};

static void *read_thread(void *opaque)
{
    struct read_ctx *ctx = opaque;
    char buf[4];
    ctx->ok = ferry__channel_read_all(ctx->c, buf, sizeof(buf), &ctx->err);
    return NULL;
}

static void test_shutdown_interrupts_read(void **state)
{
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    FerryChannel *a = ferry__channel_new_fd(sv[0], "pair-a");
    FerryChannel *b = ferry__channel_new_fd(sv[1], "pair-b");
    assert_non_null(a);
    assert_non_null(b);
    assert_string_equal(a->ops->name, "fd");

    struct read_ctx ctx = { .c = a };
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, read_thread, &ctx), 0);
    ferry__sleep_ns(50 * 1000 * 1000);
    ferry__channel_shutdown(a);
    pthread_join(t, NULL);
    assert_false(ctx.ok);
    /* The local shutdown is reported as such, not as the peer closing. */
    assert_msg_contains(ctx.err, "Failed to read from 'pair-a': channel was shut down");
    ferry_error_free(ctx.err);

    FerryError *err = NULL;
    assert_false(ferry__channel_write_all(a, "x", 1, &err));
    assert_msg_contains(err, "channel was shut down");
    ferry_error_free(err);
    ferry__channel_free(a);
    ferry__channel_free(b);

    /* A closed fd is refused, and left to the caller. */
    assert_null(ferry__channel_new_fd(sv[0], "closed"));
    assert_null(ferry__channel_new_fd(-1, "negative"));
    ferry__channel_free(NULL);
}

struct blocked_writer {
    FerryChannel *c;
    bool ok;
    FerryError *err;
    int done; /* atomic */
};

static void *blocked_writer_thread(void *opaque)
{
    struct blocked_writer *w = opaque;
    size_t len = 64 << 20; /* far more than both sockets' buffers */
    char *big = ferry__xcalloc(1, len);
    w->ok = ferry__channel_write_all(w->c, big, len, &w->err);
    free(big);
    __atomic_store_n(&w->done, 1, __ATOMIC_RELEASE);
    return NULL;
}

/*
 * A destination that quits mid-stream (its channel shut down from another thread, the receive path reading what
 * was queued until the end, then the channel freed) while the source's write is blocked on a full window: the
 * write fails at once. Linux announces no window after SHUT_RD, so a graceful close left the closed end in
 * FIN_WAIT2 advertising a zero window for tcp_fin_timeout (60 s), and the writer stayed blocked that long.
 */
static void test_tcp_shutdown_fails_blocked_peer_writer(void **state)
{
    char port[16], uri[64];
    FerryListener *l = tcp_listener("tcp:127.0.0.1:0", "127.0.0.1", port, sizeof(port));
    snprintf(uri, sizeof(uri), "tcp:127.0.0.1:%s", port);
    FerryChannel *src, *dst;
    exchange(l, uri, &src, &dst);
    ferry__listener_free(l);

    struct blocked_writer w = { .c = src };
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, blocked_writer_thread, &w), 0);
    /* Until the writer is blocked on a zero window (a window left smaller than a segment is filled by the next
     * window probe, and that data would reach the closed end and reset it even without the fix). */
    uint32_t wnd = UINT32_MAX;
    for (int i = 0; i < 1000 && wnd != 0; i++) {
        ferry__sleep_ns(10 * 1000 * 1000);
        struct tcp_info ti;
        socklen_t len = sizeof(ti);
        assert_int_equal(getsockopt(src->fd, IPPROTO_TCP, TCP_INFO, &ti, &len), 0);
        if (len < offsetof(struct tcp_info, tcpi_snd_wnd) + sizeof(ti.tcpi_snd_wnd)) {
            /* An older kernel's tcp_info ends before it: without it the test cannot tell that the window is
             * closed. */
            ferry__channel_shutdown(src);
            pthread_join(t, NULL);
            ferry_error_free(w.err);
            ferry__channel_free(src);
            ferry__channel_free(dst);
            skip();
        }
        wnd = ti.tcpi_snd_wnd;
    }
    assert_int_equal(wnd, 0);
    assert_int_equal(__atomic_load_n(&w.done, __ATOMIC_ACQUIRE), 0);

    ferry__channel_shutdown(dst);
    char *sink = ferry__xmalloc(1 << 20);
    while (ferry__channel_read(dst, sink, 1 << 20, NULL) > 0) {
    }
    free(sink);
    ferry__channel_free(dst);

    int64_t deadline = ferry__clock_ms() + 10000;
    while (!__atomic_load_n(&w.done, __ATOMIC_ACQUIRE) && ferry__clock_ms() < deadline) {
        ferry__sleep_ns(10 * 1000 * 1000);
    }
    bool failed_in_time = __atomic_load_n(&w.done, __ATOMIC_ACQUIRE);
    if (!failed_in_time) {
        ferry__channel_shutdown(src); /* free the thread before failing */
    }
    pthread_join(t, NULL);
    if (!failed_in_time) {
        fail_msg("the writer was still blocked 10 s after the destination closed its end");
    }
    assert_false(w.ok);
    assert_msg_contains(w.err, "Failed to write to '");
    ferry_error_free(w.err);
    ferry__channel_free(src);
}

/* io-timeout: a read with nothing to read and a write into a full buffer give up after the timeout with an error
 * that names the parameter, on a socket (SO_RCVTIMEO/SO_SNDTIMEO) and on a pipe (poll); a slow peer that keeps
 * moving bytes is not cut off; 0 turns it off again. */
static void expect_timeout(FerryChannel *r, FerryChannel *w, const char *rdesc, const char *wdesc)
{
    FerryError *err = NULL;
    char buf[4];
    int64_t t0 = ferry__clock_ms();
    assert_false(ferry__channel_read_all(r, buf, sizeof(buf), &err));
    int64_t took = ferry__clock_ms() - t0;
    assert_true(took >= 190 && took < 5000);
    char want[200];
    snprintf(want, sizeof(want), "Failed to read from '%s': no progress for 200 ms (io-timeout); the peer stopped "
             "sending", rdesc);
    assert_msg_contains(err, want);
    ferry_error_free(err);
    err = NULL;

    /* Fill the writer's buffers: nobody reads, so the write stalls and then gives up. */
    size_t len = 64 << 20;
    char *big = ferry__xcalloc(1, len);
    assert_false(ferry__channel_write_all(w, big, len, &err));
    snprintf(want, sizeof(want), "Failed to write to '%s': no progress for 200 ms (io-timeout); the peer stopped "
             "reading", wdesc);
    assert_msg_contains(err, want);
    ferry_error_free(err);
    free(big);
}

static void test_io_timeout(void **state)
{
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    FerryChannel *a = ferry__channel_new_fd(sv[0], "pair-a");
    FerryChannel *b = ferry__channel_new_fd(sv[1], "pair-b");
    FerryError *err = NULL;
    assert_true(ferry__channel_set_timeout(a, 200, &err));
    expect_timeout(a, a, "pair-a", "pair-a");
    ferry__channel_free(a);
    ferry__channel_free(b);

    int p[2];
    assert_int_equal(pipe2(p, O_CLOEXEC), 0);
    FerryChannel *pr = ferry__channel_new_fd(p[0], "pipe-r");
    FerryChannel *pw = ferry__channel_new_fd(p[1], "pipe-w");
    assert_true(ferry__channel_set_timeout(pr, 200, &err));
    assert_true(ferry__channel_set_timeout(pw, 200, &err));
    expect_timeout(pr, pw, "pipe-r", "pipe-w");
    ferry__channel_free(pr);
    ferry__channel_free(pw);

    /* Slow but moving: a byte every 100 ms for 600 ms against a 200 ms timeout is never cut off; with the
     * timeout back at 0 a read waits past it. */
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    a = ferry__channel_new_fd(sv[0], "slow-a");
    b = ferry__channel_new_fd(sv[1], "slow-b");
    assert_true(ferry__channel_set_timeout(a, 200, &err));
    for (int i = 0; i < 6; i++) {
        char c = 0;
        ferry__sleep_ns(100 * 1000 * 1000);
        assert_true(ferry__channel_write_all(b, "x", 1, &err));
        assert_true(ferry__channel_read_all(a, &c, 1, &err));
        assert_int_equal(c, 'x');
    }
    assert_true(ferry__channel_set_timeout(a, 0, &err));
    struct read_ctx ctx = { .c = a };
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, read_thread, &ctx), 0);
    ferry__sleep_ns(400 * 1000 * 1000);
    assert_true(ferry__channel_write_all(b, "late", 4, &err));
    pthread_join(t, NULL);
    assert_true(ctx.ok);
    ferry__channel_free(a);
    ferry__channel_free(b);
}

#define BIG_LEN (8 * 1024 * 1024)
#define MANY_IOV (IOV_MAX * 2 + 17)

struct sink_ctx {
    FerryChannel *c;
    uint8_t *buf;
    size_t len;
    bool ok;
};

static void *sink_thread(void *opaque)
{
    struct sink_ctx *ctx = opaque;
    /* Small reads, so that the writer sees partial writes once the socket buffers are full. */
    size_t done = 0;
    ctx->ok = true;
    while (done < ctx->len) {
        ssize_t n = ferry__channel_read(ctx->c, ctx->buf + done, FERRY_MIN((size_t)65536, ctx->len - done), NULL);
        if (n <= 0) {
            ctx->ok = false;
            return NULL;
        }
        done += (size_t)n;
    }
    return NULL;
}

static void test_writev_all(void **state)
{
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    FerryChannel *w = ferry__channel_new_fd(sv[0], "writer");
    FerryChannel *r = ferry__channel_new_fd(sv[1], "reader");

    /* A big buffer in uneven pieces, plus more pieces than one writev takes, plus empty entries. */
    uint8_t *src = ferry__xmalloc(BIG_LEN);
    for (size_t i = 0; i < BIG_LEN; i++) {
        src[i] = (uint8_t)(i * 2654435761u >> 13);
    }
    struct iovec *iov = ferry__xcalloc(MANY_IOV, sizeof(*iov));
    size_t off = 0;
    for (int i = 0; i < MANY_IOV; i++) {
        size_t len = (i % 7 == 3) ? 0 : (size_t)(i % 13) + 1;
        if (i == MANY_IOV - 1) {
            len = BIG_LEN - off;
        }
        iov[i].iov_base = src + off;
        iov[i].iov_len = len;
        off += len;
    }
    assert_true(off == BIG_LEN);

    struct sink_ctx ctx = { .c = r, .buf = ferry__xmalloc(BIG_LEN), .len = BIG_LEN };
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, sink_thread, &ctx), 0);
    FerryError *err = NULL;
    assert_true(ferry__channel_writev_all(w, iov, MANY_IOV, &err));
    pthread_join(t, NULL);
    assert_true(ctx.ok);
    assert_memory_equal(ctx.buf, src, BIG_LEN);

    free(ctx.buf);
    free(iov);
    free(src);
    ferry__channel_free(w);
    ferry__channel_free(r);
}

static void *fire_later(void *opaque)
{
    int efd = *(int *)opaque;
    uint64_t one = 1;
    usleep(200 * 1000);
    assert_int_equal(write(efd, &one, sizeof(one)), sizeof(one));
    return NULL;
}

/*
 * A connect that the peer never completes can be abandoned: a loopback listener with a full backlog drops the
 * SYN, so without the cancel fd this connect would hang for the kernel's whole retry time (minutes). A cancel that
 * is already signalled stops a connect before it starts.
 */
static void test_connect_cancelled(void **state)
{
    int lfd, filler;
    char *uri = full_backlog_listener(&lfd, &filler);
    FerryMigrationAddress *a = parse(uri);
    int efd = eventfd(0, EFD_CLOEXEC);
    pthread_t t;
    pthread_create(&t, NULL, fire_later, &efd);
    FerryError *err = NULL;
    assert_null(ferry__channel_connect(a, efd, &err));
    pthread_join(t, NULL);
    assert_msg_contains(err, "cancelled");
    ferry_error_free(err);
    err = NULL;

    /* Already signalled: no attempt at all, even to a listener that would accept. */
    assert_null(ferry__channel_connect(a, efd, &err));
    assert_msg_contains(err, "cancelled");
    ferry_error_free(err);

    ferry__address_free(a);
    free(uri);
    close(efd);
    close(filler);
    close(lfd);
}

/* Runs ferry__listener_new for @a with stderr caught in a memfd; returns the listener and what was logged. */
static FerryListener *listen_logged(const FerryMigrationAddress *a, char *log, size_t log_size)
{
    int mfd = memfd_create("log", MFD_CLOEXEC), saved = dup(2);
    assert_true(mfd >= 0 && saved >= 0);
    fflush(stderr);
    dup2(mfd, 2);
    FerryLogLevel level = ferry__log_set_level(FERRY_LOG_WARN);
    FerryError *err = NULL;
    FerryListener *l = ferry__listener_new(a, &err);
    ferry__log_set_level(level);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    ssize_t n = pread(mfd, log, log_size - 1, 0);
    log[n > 0 ? n : 0] = '\0';
    close(mfd);
    if (!l) {
        fail_msg("listen: %s", ferry_error_msg(err));
    }
    return l;
}

/*
 * A second listener on the same unix path takes the socket file over (as QEMU's does) and warns, because a live
 * listener was behind it; a stale file gets no warning. The first listener, which no source can reach any more,
 * fails its accept within about a second saying why, instead of waiting for ever; the same when the file is
 * removed. The probe does not connect: the first listener never sees a connection.
 */
static void test_unix_taken_over(void **state)
{
    char path[128], uri[160], log[4096];
    snprintf(path, sizeof(path), "%s/taken.sock", tmpdir);
    snprintf(uri, sizeof(uri), "unix:%s", path);
    FerryMigrationAddress *a = parse(uri);
    FerryListener *first = listen_logged(a, log, sizeof(log));
    assert_null(strstr(log, "removing"));
    FerryListener *second = listen_logged(a, log, sizeof(log));
    char *want = ferry__xasprintf("%s: removing a socket another process is listening on", uri);
    if (!strstr(log, want)) {
        fail_msg("no warning '%s' in '%s'", want, log);
    }
    free(want);
    FerryError *err = NULL;
    int64_t start = ferry__clock_ms();
    assert_null(ferry__listener_accept(first, &err));
    assert_true(ferry__clock_ms() - start < 3000);
    assert_msg_contains(err, "was taken over by another process");
    assert_msg_contains(err, path);
    ferry_error_free(err);
    ferry__listener_free(first);
    /* The first did not remove the second's file: a client still reaches the second. */
    FerryChannel *client, *server;
    exchange(second, uri, &client, &server);
    ferry__channel_free(client);
    ferry__channel_free(server);
    /* Removed: the same, with the other reason. */
    assert_int_equal(unlink(path), 0);
    err = NULL;
    assert_null(ferry__listener_accept(second, &err));
    assert_msg_contains(err, "was removed");
    ferry_error_free(err);
    ferry__listener_free(second);
    /* A stale socket file (its listener is gone) is replaced without a warning. */
    int stale = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sun = { .sun_family = AF_UNIX };
    assert_true(strlen(path) < sizeof(sun.sun_path));
    memcpy(sun.sun_path, path, strlen(path) + 1);
    assert_int_equal(bind(stale, (struct sockaddr *)&sun, sizeof(sun)), 0);
    close(stale);
    FerryListener *l = listen_logged(a, log, sizeof(log));
    assert_null(strstr(log, "removing"));
    ferry__listener_free(l);
    ferry__address_free(a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_unix),
        cmocka_unit_test(test_unix_not_a_socket),
        cmocka_unit_test(test_tcp_ipv4),
        cmocka_unit_test(test_tcp_any),
        cmocka_unit_test(test_tcp_ipv6),
        cmocka_unit_test(test_tcp_resolve_error),
        cmocka_unit_test(test_accept_cancelled),
        cmocka_unit_test(test_shutdown_interrupts_read),
        cmocka_unit_test(test_tcp_shutdown_fails_blocked_peer_writer),
        cmocka_unit_test(test_io_timeout),
        cmocka_unit_test(test_writev_all),
        cmocka_unit_test(test_connect_cancelled),
        cmocka_unit_test(test_unix_taken_over),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
