/*
 * Unit tests of the TLS channel (src/channel/tls.c) over socketpairs, the server's handshake on a second thread:
 * x509 and PSK sessions that carry data both ways, and each refusal with the message each end gives (hostname
 * mismatch, a CA the client does not trust, a server CA that did not sign the client, a client without a
 * certificate, a client the authz list does not allow, a plaintext peer on either side, mismatched PSKs), the
 * channel a refusal can still be reported on, the FerryTls checks done before any connection, and shutdown from
 * another thread interrupting a blocked read and a blocked write.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "channel/channel.h"
#include "crypto/crypto.h"
#include "test-helpers.h"
#include "tls-test-helpers.h"

typedef struct Fixture {
    TestCa ca, other;
    char *dir;       /* CA "one", server and client certificates */
    char *other_dir; /* CA "two" and a client certificate it signed */
    char *anon_dir;  /* CA "one" only: a client without a certificate */
    char *psk_dir, *psk2_dir;
} Fixture;

static void add_obj(const char *fmt, ...) FERRY_PRINTF(1, 2);
static void add_obj(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *spec = ferry__xvasprintf(fmt, ap);
    va_end(ap);
    FerryError *err = NULL;
    if (!ferry_object_add_str(spec, &err)) {
        print_error("%s: %s\n", spec, ferry_error_msg(err));
        fail();
    }
    free(spec);
}

static int setup(void **state)
{
    Fixture *f = ferry__xcalloc(1, sizeof(*f));
    f->dir = tls_test_x509_dir(&f->ca, "one", "laptop.example.com");
    f->other_dir = tls_test_mkdir();
    tls_test_ca(&f->other, "two");
    tls_test_write_ca(&f->other, f->other_dir);
    tls_test_leaf(&f->other, f->other_dir, "client", "stranger", 5);
    f->anon_dir = tls_test_mkdir();
    tls_test_write_ca(&f->ca, f->anon_dir);
    f->psk_dir = tls_test_mkdir();
    tls_test_write_file(f->psk_dir, "keys.psk", "qemu:000102030405060708090a0b0c0d0e0f\n");
    f->psk2_dir = tls_test_mkdir();
    tls_test_write_file(f->psk2_dir, "keys.psk", "qemu:ffeeddccbbaa99887766554433221100\n");
    add_obj("tls-creds-x509,id=srv,endpoint=server,dir=%s", f->dir);
    add_obj("tls-creds-x509,id=srv-noverify,endpoint=server,verify-peer=off,dir=%s", f->dir);
    add_obj("tls-creds-x509,id=cli,dir=%s", f->dir);
    add_obj("tls-creds-x509,id=cli-other,dir=%s", f->other_dir);
    add_obj("tls-creds-x509,id=cli-anon,dir=%s", f->anon_dir);
    add_obj("tls-creds-psk,id=psk-srv,endpoint=server,dir=%s", f->psk_dir);
    add_obj("tls-creds-psk,id=psk-cli,dir=%s", f->psk_dir);
    add_obj("tls-creds-psk,id=psk-cli2,dir=%s", f->psk2_dir);
    add_obj("authz-list,id=allow-laptop,rules.0.match=*CN=laptop.example.com,rules.0.policy=allow,"
            "rules.0.format=glob");
    add_obj("authz-simple,id=only-bob,identity=bob");
    add_obj("authz-simple,id=only-qemu,identity=qemu");
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    Fixture *f = *state;
    ferry__objects_clear();
    tls_test_ca_free(&f->ca);
    tls_test_ca_free(&f->other);
    tls_test_rmdir(f->dir);
    tls_test_rmdir(f->other_dir);
    tls_test_rmdir(f->anon_dir);
    tls_test_rmdir(f->psk_dir);
    tls_test_rmdir(f->psk2_dir);
    free(f);
    return 0;
}

static FerryTls *tls_or_fail(const char *creds, bool server, const char *hostname, const char *authz)
{
    FerryError *err = NULL;
    FerryTls *t = ferry__tls_new(creds, server, hostname, authz, &err);
    if (!t) {
        print_error("%s: %s\n", creds, ferry_error_msg(err));
        fail();
    }
    return t;
}

/* Two plain channels on the ends of a socketpair. */
static void pair(FerryChannel **a, FerryChannel **b)
{
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    *a = ferry__channel_new_fd(sv[0], "pair-client");
    *b = ferry__channel_new_fd(sv[1], "pair-server");
    assert_non_null(*a);
    assert_non_null(*b);
}

typedef struct Handshake {
    FerryChannel *c;
    bool ok;
    FerryError *err;
} Handshake;

static void *handshake_thread(void *opaque)
{
    Handshake *h = opaque;
    h->ok = ferry__tls_channel_handshake(h->c, &h->err);
    return NULL;
}

/* Client and server sessions over a socketpair; both handshakes run, their outcomes in @cli and @srv. */
static void connect_pair(FerryTls *ctls, FerryTls *stls, Handshake *cli, Handshake *srv)
{
    FerryChannel *a, *b;
    pair(&a, &b);
    cli->c = ferry__tls_channel_new(a, ctls, NULL);
    srv->c = ferry__tls_channel_new(b, stls, NULL);
    assert_non_null(cli->c);
    assert_non_null(srv->c);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, handshake_thread, srv), 0);
    cli->ok = ferry__tls_channel_handshake(cli->c, &cli->err);
    if (!cli->ok) {
        /* The server may wait for a client that gave up: make its read end. */
        ferry__channel_shutdown(cli->c);
    }
    pthread_join(t, NULL);
}

static void close_pair(Handshake *cli, Handshake *srv)
{
    ferry__channel_free(cli->c);
    ferry__channel_free(srv->c);
    ferry_error_free(cli->err);
    ferry_error_free(srv->err);
}

typedef struct Reader {
    FerryChannel *c;
    size_t len;
    uint8_t *buf;
    bool ok;
    FerryError *err;
} Reader;

static void *read_thread(void *opaque)
{
    Reader *r = opaque;
    r->ok = ferry__channel_read_all(r->c, r->buf, r->len, &r->err);
    return NULL;
}

static void test_x509_session(void **state)
{
    FerryTls *ctls = tls_or_fail("cli", false, "localhost", NULL);
    FerryTls *stls = tls_or_fail("srv", true, NULL, "allow-laptop");
    Handshake cli = { 0 }, srv = { 0 };
    connect_pair(ctls, stls, &cli, &srv);
    if (!cli.ok || !srv.ok) {
        print_error("client: %s; server: %s\n", cli.err ? ferry_error_msg(cli.err) : "ok",
                    srv.err ? ferry_error_msg(srv.err) : "ok");
        fail();
    }
    assert_true(ferry__channel_is_tls(cli.c));
    assert_false(ferry__channel_can_pass_fds(cli.c)); /* SCM_RIGHTS does not go through TLS */
    assert_int_equal(ferry__channel_take_fd(srv.c), -1);

    /* 4 MiB one way (many records, more than the socket buffers hold), a few bytes back. */
    size_t len = 4u << 20;
    uint8_t *data = ferry__xmalloc(len);
    for (size_t i = 0; i < len; i++) {
        data[i] = (uint8_t)(i * 2654435761u >> 13);
    }
    Reader r = { .c = srv.c, .len = len, .buf = ferry__xcalloc(1, len) };
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, read_thread, &r), 0);
    struct iovec iov[3] = { { data, 1000 }, { data + 1000, 0 }, { data + 1000, len - 1000 } };
    FerryError *err = NULL;
    assert_true(ferry__channel_writev_all(cli.c, iov, 3, &err));
    pthread_join(t, NULL);
    assert_true(r.ok);
    assert_memory_equal(r.buf, data, len);
    assert_int_equal(ferry__channel_wait_readable(cli.c, 0), 0);
    assert_true(ferry__channel_write_all(srv.c, "ack", 3, &err));
    assert_int_equal(ferry__channel_wait_readable(cli.c, 5000), 1);
    char ack[3];
    assert_true(ferry__channel_read_all(cli.c, ack, 3, &err));
    assert_memory_equal(ack, "ack", 3);

    json_t *ci = ferry__tls_channel_info(cli.c), *si = ferry__tls_channel_info(srv.c);
    assert_string_equal(json_string_value(json_object_get(ci, "creds")), "cli");
    assert_non_null(strstr(json_string_value(json_object_get(ci, "peer")), "CN=localhost"));
    assert_non_null(strstr(json_string_value(json_object_get(si, "peer")), "CN=laptop.example.com"));
    assert_non_null(strstr(json_string_value(json_object_get(si, "protocol")), "TLS"));
    json_decref(ci);
    json_decref(si);

    /* The peer's end: a close without close_notify reads as the end of the stream. */
    ferry__channel_free(cli.c);
    cli.c = NULL;
    uint8_t b;
    assert_int_equal(ferry__channel_read(srv.c, &b, 1, &err), 0);
    close_pair(&cli, &srv);
    free(r.buf);
    free(data);
    ferry__tls_unref(ctls);
    ferry__tls_unref(stls);
}

/* A refusal: each end fails, with a message containing @cli_msg / @srv_msg. */
static void expect_refusal(const char *ccreds, const char *host, const char *screds, const char *authz,
                           const char *cli_msg, const char *srv_msg, bool check_report)
{
    FerryTls *ctls = tls_or_fail(ccreds, false, host, NULL);
    FerryTls *stls = tls_or_fail(screds, true, NULL, authz);
    Handshake cli = { 0 }, srv = { 0 };
    connect_pair(ctls, stls, &cli, &srv);
    assert_false(srv.ok);
    if (cli_msg) {
        assert_false(cli.ok);
        assert_msg_contains(cli.err, "TLS handshake with 'pair-client' failed: ");
        assert_msg_contains(cli.err, cli_msg);
    }
    assert_msg_contains(srv.err, "TLS handshake with 'pair-server' failed: ");
    assert_msg_contains(srv.err, srv_msg);
    if (check_report) {
        /* Refused after the handshake: the session can still carry the reason to the client. */
        FerryError *err = NULL;
        char buf[2];
        assert_true(cli.ok);
        assert_ptr_equal(ferry__tls_channel_report_path(srv.c), srv.c);
        assert_true(ferry__channel_write_all(srv.c, "no", 2, &err));
        assert_true(ferry__channel_read_all(cli.c, buf, 2, &err));
        assert_memory_equal(buf, "no", 2);
    }
    close_pair(&cli, &srv);
    ferry__tls_unref(ctls);
    ferry__tls_unref(stls);
}

static void test_hostname_mismatch(void **state)
{
    expect_refusal("cli", "wrong.example", "srv", NULL, "hostname mismatch: the certificate 'O=Ferry Test,CN="
                   "localhost' is not for 'wrong.example'", "the peer refused the session", false);
    /* The IP address of a tcp URI matches the certificate's IP SAN. */
    FerryTls *ctls = tls_or_fail("cli", false, "127.0.0.1", NULL);
    FerryTls *stls = tls_or_fail("srv", true, NULL, NULL);
    Handshake cli = { 0 }, srv = { 0 };
    connect_pair(ctls, stls, &cli, &srv);
    assert_true(cli.ok && srv.ok);
    close_pair(&cli, &srv);
    ferry__tls_unref(ctls);
    ferry__tls_unref(stls);
}

static void test_untrusted_ca(void **state)
{
    expect_refusal("cli-other", "localhost", "srv", NULL, "certificate not trusted: 'O=Ferry Test,CN=localhost' "
                   "is not signed by a trusted CA", "TLS alert", false);
}

/* The server's refusals come after the handshake: the client's handshake succeeds, and the server can say why. */
static void test_server_refusals(void **state)
{
    expect_refusal("cli", "localhost", "srv", "only-bob", NULL,
                   "'O=Ferry Test,CN=laptop.example.com' is not the identity authz-simple 'only-bob' allows", true);

    expect_refusal("cli-anon", "localhost", "srv", NULL, NULL,
                   "verify-peer is on for tls-creds 'srv', but the peer presented no certificate", true);

    /* verify-peer=off: a client without a certificate is let in. */
    FerryTls *ctls = tls_or_fail("cli-anon", false, "localhost", NULL);
    FerryTls *stls = tls_or_fail("srv-noverify", true, NULL, NULL);
    Handshake cli = { 0 }, srv = { 0 };
    connect_pair(ctls, stls, &cli, &srv);
    assert_true(cli.ok && srv.ok);
    json_t *si = ferry__tls_channel_info(srv.c);
    assert_null(json_object_get(si, "peer"));
    json_decref(si);
    close_pair(&cli, &srv);
    ferry__tls_unref(ctls);
    ferry__tls_unref(stls);
}

static void test_psk(void **state)
{
    FerryTls *ctls = tls_or_fail("psk-cli", false, NULL, NULL);
    FerryTls *stls = tls_or_fail("psk-srv", true, NULL, "only-qemu");
    Handshake cli = { 0 }, srv = { 0 };
    connect_pair(ctls, stls, &cli, &srv);
    assert_true(cli.ok && srv.ok);
    json_t *si = ferry__tls_channel_info(srv.c);
    assert_string_equal(json_string_value(json_object_get(si, "peer")), "qemu");
    json_decref(si);
    FerryError *err = NULL;
    char buf[5];
    assert_true(ferry__channel_write_all(cli.c, "hello", 5, &err));
    assert_true(ferry__channel_read_all(srv.c, buf, 5, &err));
    assert_memory_equal(buf, "hello", 5);
    close_pair(&cli, &srv);
    ferry__tls_unref(ctls);
    ferry__tls_unref(stls);

    /* Another key: no session. */
    expect_refusal("psk-cli2", NULL, "psk-srv", NULL, "TLS", "TLS", false);
    /* The right key, a user the list does not allow. */
    expect_refusal("psk-cli", NULL, "psk-srv", "only-bob", NULL, "'qemu' is not the identity", true);
}

static void test_plaintext_peers(void **state)
{
    FerryError *err = NULL;
    /* A plaintext client: refused before GnuTLS reads anything, and told so in plaintext. */
    FerryTls *stls = tls_or_fail("srv", true, NULL, NULL);
    FerryChannel *a, *b;
    pair(&a, &b);
    FerryChannel *s = ferry__tls_channel_new(b, stls, &err);
    assert_true(ferry__channel_write_all(a, "FERRYMIG\0\0\0\2\0\0\0\0", 16, &err));
    assert_false(ferry__tls_channel_handshake(s, &err));
    assert_msg_contains(err, "peer did not speak TLS (its first byte is 0x46 'F', as of a plaintext ferry stream");
    assert_msg_contains(err, "TLS is required here (tls-creds 'srv')");
    ferry_error_free(err);
    err = NULL;
    FerryChannel *plain = ferry__tls_channel_report_path(s);
    assert_non_null(plain);
    assert_ptr_not_equal(plain, s);
    assert_true(ferry__channel_write_all(plain, "NACK", 4, &err));
    char buf[4];
    assert_true(ferry__channel_read_all(a, buf, 4, &err));
    assert_memory_equal(buf, "NACK", 4);
    ferry__channel_free(s);
    ferry__channel_free(a);

    /* A plaintext server answering a client's hello with something that is not a TLS record. */
    FerryTls *ctls = tls_or_fail("cli", false, "localhost", NULL);
    pair(&a, &b);
    FerryChannel *c = ferry__tls_channel_new(a, ctls, &err);
    assert_true(ferry__channel_write_all(b, "\x01\x00\x00\x00\x00\x00\x00\x05nope!\0\0\0\0", 17, &err));
    assert_false(ferry__tls_channel_handshake(c, &err));
    assert_msg_contains(err, "peer did not speak TLS (it answered with byte 0x01");
    ferry_error_free(err);
    err = NULL;
    ferry__channel_free(c);
    ferry__channel_free(b);

    /* A client that connects and goes away. */
    pair(&a, &b);
    s = ferry__tls_channel_new(b, stls, &err);
    ferry__channel_free(a);
    assert_false(ferry__tls_channel_handshake(s, &err));
    assert_msg_contains(err, "the peer closed the connection before the TLS handshake");
    assert_null(ferry__tls_channel_report_path(s));
    ferry_error_free(err);
    ferry__channel_free(s);
    ferry__tls_unref(ctls);
    ferry__tls_unref(stls);
}

static void test_config_checks(void **state)
{
    FerryError *err = NULL;
    assert_null(ferry__tls_new("cli", false, NULL, NULL, &err));
    assert_msg_contains(err, "tls-creds 'cli' verifies the destination's certificate, which needs a hostname");
    ferry_error_free(err);
    err = NULL;
    assert_null(ferry__tls_new("cli", false, "", NULL, &err));
    assert_msg_contains(err, "set tls-hostname");
    ferry_error_free(err);
    err = NULL;
    assert_null(ferry__tls_new("srv-noverify", true, NULL, "only-bob", &err));
    assert_msg_contains(err, "tls-authz 'only-bob' checks the client's certificate, but tls-creds 'srv-noverify' "
                        "has verify-peer=off");
    ferry_error_free(err);
    err = NULL;
    assert_null(ferry__tls_new("srv", true, NULL, "nothing", &err));
    assert_msg_contains(err, "No authorization object with id 'nothing'");
    ferry_error_free(err);
    err = NULL;
    assert_null(ferry__tls_new("srv", false, "localhost", NULL, &err));
    assert_msg_contains(err, "Expected TLS credentials for a client endpoint, but 'srv' is for a server endpoint");
    ferry_error_free(err);
    err = NULL;
    assert_null(ferry__tls_new("only-bob", true, NULL, NULL, &err));
    assert_msg_contains(err, "Object 'only-bob' is not TLS credentials");
    ferry_error_free(err);
    /* PSK needs no hostname; a client ignores tls-authz. */
    FerryTls *t = tls_or_fail("psk-cli", false, NULL, "nothing");
    ferry__tls_unref(t);
    /* While a FerryTls holds them, the objects cannot be deleted. */
    t = tls_or_fail("srv", true, NULL, "only-bob");
    err = NULL;
    assert_false(ferry_object_del("srv", &err));
    assert_msg_contains(err, "is in use");
    ferry_error_free(err);
    err = NULL;
    assert_false(ferry_object_del("only-bob", &err));
    assert_msg_contains(err, "is in use");
    ferry_error_free(err);
    ferry__tls_unref(t);
    assert_true(ferry_object_del("only-bob", NULL));
}

typedef struct Blocked {
    FerryChannel *c;
    bool write;
    bool ok;
    FerryError *err;
} Blocked;

static void *blocked_thread(void *opaque)
{
    Blocked *b = opaque;
    size_t len = 64u << 20;
    uint8_t *buf = ferry__xcalloc(1, len);
    b->ok = b->write ? ferry__channel_write_all(b->c, buf, len, &b->err)
                     : ferry__channel_read_all(b->c, buf, len, &b->err);
    free(buf);
    return NULL;
}

static void test_shutdown_interrupts(void **state)
{
    FerryTls *ctls = tls_or_fail("cli", false, "localhost", NULL);
    FerryTls *stls = tls_or_fail("srv", true, NULL, NULL);
    for (int write = 0; write <= 1; write++) {
        Handshake cli = { 0 }, srv = { 0 };
        connect_pair(ctls, stls, &cli, &srv);
        assert_true(cli.ok && srv.ok);
        /* Nobody reads or writes the other end: the thread blocks, and only the shutdown can free it. */
        Blocked b = { .c = write ? cli.c : srv.c, .write = write };
        pthread_t t;
        assert_int_equal(pthread_create(&t, NULL, blocked_thread, &b), 0);
        usleep(200 * 1000);
        ferry__channel_shutdown(b.c);
        pthread_join(t, NULL);
        assert_false(b.ok);
        assert_msg_contains(b.err, "channel was shut down");
        ferry_error_free(b.err);
        close_pair(&cli, &srv);
    }
    /* A handshake blocked on a server that never answers. */
    FerryChannel *a, *bch;
    pair(&a, &bch);
    Handshake h = { .c = ferry__tls_channel_new(a, ctls, NULL) };
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, handshake_thread, &h), 0);
    usleep(200 * 1000);
    ferry__channel_shutdown(h.c);
    pthread_join(t, NULL);
    assert_false(h.ok);
    assert_msg_contains(h.err, "channel was shut down");
    ferry_error_free(h.err);
    ferry__channel_free(h.c);
    ferry__channel_free(bch);
    ferry__tls_unref(ctls);
    ferry__tls_unref(stls);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_x509_session),
        cmocka_unit_test(test_hostname_mismatch),
        cmocka_unit_test(test_untrusted_ca),
        cmocka_unit_test(test_server_refusals),
        cmocka_unit_test(test_psk),
        cmocka_unit_test(test_plaintext_peers),
        cmocka_unit_test(test_config_checks),
        cmocka_unit_test(test_shutdown_interrupts),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
