/*
 * The TLS channel: a FerryChannel with its own ops table that runs a GnuTLS session over another, connected
 * socket channel (tcp, unix, vsock, or an fd that is a socket), as QEMU's io/channel-tls.c does over a socket
 * QIOChannel. The source is always the TLS client and the destination the server, on the main channel and on
 * every multifd channel alike: each connection does its own handshake before any byte of the stream.
 *
 * What it checks (the migration layer only says which objects and which hostname):
 *   - client: with verify-peer, the server's certificate chain against the CA of its tls-creds-x509, and that the
 *     certificate is for the hostname (tls-hostname, or the host of a tcp address). A refusal happens inside the
 *     handshake (GnuTLS's verify hook), and the server is sent a fatal alert that says which kind (unknown CA, bad
 *     certificate, ...), so that both ends know.
 *   - server: once the handshake is complete, with verify-peer, that the client presented a certificate the CA
 *     signed; then, with tls-authz, that the client's identity (the certificate's distinguished name, as
 *     gnutls_x509_crt_get_dn() spells it and QEMU matches it, or the PSK username) is allowed. These come after
 *     the handshake on purpose: the session is up by then, so the destination can tell the source why it was
 *     refused inside TLS (a NACK record), instead of an alert that only says "bad certificate". Nothing is read
 *     from such a peer.
 *   - a peer that does not speak TLS: the server peeks at the first byte before the handshake (a TLS connection
 *     starts with a handshake record, 0x16); anything else is refused at once, and the plaintext peer can be told
 *     why in plaintext (ferry__tls_channel_report_path). The client recognises a reply that is not a TLS record.
 *
 * I/O: GnuTLS moves its records through the inner channel's ops (push and pull functions), so shutdown of the
 * inner socket from any thread (migrate_cancel, quit) makes a blocked read or write, or a handshake, fail at
 * once. One thread may read while another writes (GnuTLS allows that for TLS 1.3 and for TLS 1.2 without
 * renegotiation, which is never offered here). Session tickets are off (GNUTLS_NO_TICKETS): a TLS 1.3 server
 * would otherwise send one after the handshake, and the source, which polls its socket for a destination's
 * failure report, would take its arrival for a report and block reading it.
 *
 * It cannot carry file descriptors: SCM_RIGHTS data does not go through an encrypted byte stream, so the fd
 * passing features are refused with TLS (src/migration/engine.c).
 */
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <gnutls/gnutls.h>
#include <gnutls/x509.h>

#include "channel/channel-int.h"
#include "crypto/crypto.h"
#include "util/util.h"

#define TLS_HANDSHAKE_RECORD 0x16 /* content type of the first record of a TLS connection */

struct FerryTls {
    int refs; /* atomic */
    bool server;
    FerryTlsCreds *creds;
    FerryAuthz *authz;  /* server only, or NULL */
    char *hostname;     /* client: the name the server's certificate must carry, or NULL (no check) */
};

typedef struct TlsChannel {
    /* First, and zeroed but for fd and desc: channel.c views every channel as a FerryFdChannel (for fd passing),
     * and this one then has no fds and cannot pass any. */
    FerryFdChannel fdc;
    FerryChannel *inner;
    FerryTls *tls;
    gnutls_session_t session;
    bool established;   /* the handshake completed: a refusal can be told to the peer inside TLS */
    bool up;            /* established and the peer accepted: the stream may flow */
    bool plaintext;     /* the peer's first bytes were not TLS */
    bool got_first;
    unsigned char first; /* the first byte the peer sent */
    /* The inner channel's error behind a failed push (writer's) or pull (reader's): each side keeps its own, so
     * that a reader and a writer on two threads never share one. */
    FerryError *push_err, *pull_err;
    /* Client: why the verify hook refused the server, and the alert that says so. */
    char *refusal;
    gnutls_alert_description_t alert;
    char *peer;         /* the identity the peer proved: certificate DN or PSK username, or NULL */
} TlsChannel;

static TlsChannel *tls_of(FerryChannel *c)
{
    return (TlsChannel *)c;
}

/* ---- the configuration a migration's channels share ---- */

FerryTls *ferry__tls_new(const char *creds_id, bool server, const char *hostname, const char *authz_id,
                         FerryError **errp)
{
    FerryTlsCreds *creds = ferry__tls_creds_get(creds_id, server ? FERRY_TLS_ENDPOINT_SERVER
                                                                 : FERRY_TLS_ENDPOINT_CLIENT, errp);
    if (!creds) {
        return NULL;
    }
    FerryAuthz *authz = NULL;
    bool x509_checked = !ferry__tls_creds_is_psk(creds) && ferry__tls_creds_verify_peer(creds);
    if (server && authz_id && *authz_id) {
        authz = ferry__authz_get(authz_id, errp);
        if (!authz) {
            ferry__tls_creds_unref(creds);
            return NULL;
        }
        if (!ferry__tls_creds_is_psk(creds) && !x509_checked) {
            /* QEMU checks the distinguished name only of a verified certificate: the list would allow anyone. */
            ferry_error_setg(errp, "tls-authz '%s' checks the client's certificate, but tls-creds '%s' has "
                             "verify-peer=off, so no certificate is asked for", authz_id, creds_id);
            ferry__authz_unref(authz);
            ferry__tls_creds_unref(creds);
            return NULL;
        }
    }
    if (!server && x509_checked && (!hostname || !*hostname)) {
        /* QEMU's rule too ("No hostname for certificate validation"), refused before anything connects. */
        ferry_error_setg(errp, "tls-creds '%s' verifies the destination's certificate, which needs a hostname to "
                         "check it against: set tls-hostname (only tcp addresses give one)", creds_id);
        ferry__tls_creds_unref(creds);
        return NULL;
    }
    FerryTls *t = ferry__xcalloc(1, sizeof(*t));
    t->refs = 1;
    t->server = server;
    t->creds = creds;
    t->authz = authz;
    t->hostname = !server && x509_checked ? ferry__xstrdup(hostname) : NULL;
    return t;
}

FerryTls *ferry__tls_ref(FerryTls *t)
{
    __atomic_add_fetch(&t->refs, 1, __ATOMIC_ACQ_REL);
    return t;
}

void ferry__tls_unref(FerryTls *t)
{
    if (!t || __atomic_sub_fetch(&t->refs, 1, __ATOMIC_ACQ_REL) != 0) {
        return;
    }
    ferry__tls_creds_unref(t->creds);
    ferry__authz_unref(t->authz);
    free(t->hostname);
    free(t);
}

const char *ferry__tls_creds_name(const FerryTls *t)
{
    return ferry__tls_creds_id(t->creds);
}

/* ---- transport: GnuTLS's records through the inner channel ---- */

static void keep_error(FerryError **slot, FerryError *err)
{
    ferry_error_free(*slot);
    *slot = err;
}

static ssize_t push_vec(gnutls_transport_ptr_t p, const giovec_t *iov, int iovcnt)
{
    TlsChannel *t = p;
    FerryError *err = NULL;
    /* giovec_t has struct iovec's layout (GnuTLS defines it as such on POSIX systems). */
    ssize_t n = t->inner->ops->writev(t->inner, (const struct iovec *)iov, iovcnt, &err);
    if (n < 0) {
        keep_error(&t->push_err, err);
        gnutls_transport_set_errno(t->session, EPIPE);
        return -1;
    }
    return n;
}

static ssize_t pull(gnutls_transport_ptr_t p, void *buf, size_t len)
{
    TlsChannel *t = p;
    FerryError *err = NULL;
    struct iovec iov = { .iov_base = buf, .iov_len = len };
    ssize_t n = t->inner->ops->readv(t->inner, &iov, 1, &err);
    if (n < 0) {
        keep_error(&t->pull_err, err);
        gnutls_transport_set_errno(t->session, ECONNRESET);
        return -1;
    }
    if (n > 0 && !t->got_first) {
        t->got_first = true;
        t->first = ((unsigned char *)buf)[0];
    }
    return n;
}

static bool inner_shut(TlsChannel *t)
{
    return ferry__fd_channel_is_shut(t->inner);
}

/* Why GnuTLS call @rc failed: the inner channel's own error if the transport failed (a whole message, naming the
 * channel), else what TLS says. Sets *inner_msg when it is the former. */
static void tls_reason(TlsChannel *t, int rc, bool *inner_msg, FerryError **errp)
{
    FerryError **slot = rc == GNUTLS_E_PUSH_ERROR ? &t->push_err : rc == GNUTLS_E_PULL_ERROR ? &t->pull_err : NULL;
    /* A transport error after some progress is not reported by the call that met it (writev returns the bytes
     * moved); the next call then only finds the session invalidated. The kept transport error is the cause. */
    if (!slot && rc == GNUTLS_E_INVALID_SESSION) {
        slot = t->push_err ? &t->push_err : t->pull_err ? &t->pull_err : NULL;
    }
    *inner_msg = false;
    if (inner_shut(t)) {
        ferry_error_setg(errp, "channel was shut down");
    } else if (slot && *slot) {
        *inner_msg = true;
        ferry_error_propagate(errp, *slot);
        *slot = NULL;
    } else if (rc == GNUTLS_E_FATAL_ALERT_RECEIVED) {
        ferry_error_setg(errp, "the peer sent TLS alert '%s'", gnutls_alert_get_name(gnutls_alert_get(t->session)));
    } else if (rc == GNUTLS_E_PREMATURE_TERMINATION) {
        ferry_error_setg(errp, "connection closed by peer");
    } else {
        ferry_error_setg(errp, "TLS: %s", gnutls_strerror(rc));
    }
}

/* The error of a failed read or write: "Failed to read from 'unix:/x': REASON". */
static void tls_error(TlsChannel *t, int rc, const char *what, FerryError **errp)
{
    bool inner_msg;
    FerryError *err = NULL;
    tls_reason(t, rc, &inner_msg, &err);
    if (!inner_msg) {
        ferry_error_prepend(&err, "Failed to %s '%s': ", what, t->fdc.base.desc);
    }
    ferry_error_propagate(errp, err);
}

/* ---- ops ---- */

static ssize_t tls_readv(FerryChannel *c, const struct iovec *iov, int iovcnt, FerryError **errp)
{
    TlsChannel *t = tls_of(c);
    if (!t->up) {
        ferry_error_setg(errp, "Failed to read from '%s': no TLS session", c->desc);
        return -1;
    }
    size_t total = 0;
    for (int i = 0; i < iovcnt; i++) {
        char *p = iov[i].iov_base;
        size_t left = iov[i].iov_len;
        while (left > 0) {
            /* Beyond the first record only what GnuTLS holds already: a readv never waits once it has bytes. */
            if (total > 0 && gnutls_record_check_pending(t->session) == 0) {
                return (ssize_t)total;
            }
            ssize_t n = gnutls_record_recv(t->session, p, left);
            if (n > 0) {
                p += n;
                left -= (size_t)n;
                total += (size_t)n;
                continue;
            }
            if (n == 0) {
                return (ssize_t)total; /* close_notify: the end of the stream */
            }
            if (n == GNUTLS_E_INTERRUPTED || n == GNUTLS_E_AGAIN || n == GNUTLS_E_WARNING_ALERT_RECEIVED) {
                continue;
            }
            if (total > 0) {
                return (ssize_t)total; /* the error comes again with the next call */
            }
            if (n == GNUTLS_E_PREMATURE_TERMINATION && !inner_shut(t)) {
                /* The peer closed without close_notify. A truncation cannot go unnoticed here (the stream has
                 * its own framing, totals and CRCs), so it is the end of the stream as on a plain socket. */
                return 0;
            }
            tls_error(t, (int)n, "read from", errp);
            return -1;
        }
    }
    return (ssize_t)total;
}

static ssize_t tls_writev(FerryChannel *c, const struct iovec *iov, int iovcnt, FerryError **errp)
{
    TlsChannel *t = tls_of(c);
    if (!t->up) {
        ferry_error_setg(errp, "Failed to write to '%s': no TLS session", c->desc);
        return -1;
    }
    /* Each gnutls_record_send() encrypts at most one record (16 KiB) straight from the caller's buffer into a
     * record and pushes it; loop over everything, returning early only on an error after some progress. */
    size_t total = 0;
    for (int i = 0; i < iovcnt; i++) {
        const char *p = iov[i].iov_base;
        size_t left = iov[i].iov_len;
        while (left > 0) {
            ssize_t n = gnutls_record_send(t->session, p, left);
            if (n > 0) {
                p += n;
                left -= (size_t)n;
                total += (size_t)n;
                continue;
            }
            if (n == GNUTLS_E_INTERRUPTED || n == GNUTLS_E_AGAIN) {
                continue;
            }
            if (total > 0) {
                return (ssize_t)total;
            }
            tls_error(t, (int)n, "write to", errp);
            return -1;
        }
    }
    return (ssize_t)total;
}

static void tls_shutdown(FerryChannel *c)
{
    /* The inner socket's shutdown(2) wakes whatever GnuTLS is blocked in, in any thread. */
    ferry__channel_shutdown(tls_of(c)->inner);
}

static bool tls_pending(FerryChannel *c)
{
    TlsChannel *t = tls_of(c);
    return t->up && gnutls_record_check_pending(t->session) > 0;
}

static void tls_close(FerryChannel *c)
{
    TlsChannel *t = tls_of(c);
    /* No close_notify: gnutls_bye() could block on a peer that no longer reads, and the stream's own END and
     * ACK records already say where it ends. */
    if (t->session) {
        gnutls_deinit(t->session);
    }
    ferry__channel_free(t->inner);
    ferry__tls_unref(t->tls);
    ferry_error_free(t->push_err);
    ferry_error_free(t->pull_err);
    free(t->refusal);
    free(t->peer);
}

/* io-timeout: records move through the inner channel, so its timeout is the session's (its error is kept and
 * becomes this channel's, naming the parameter). */
static bool tls_set_timeout(FerryChannel *c, unsigned ms, FerryError **errp)
{
    return ferry__channel_set_timeout(((TlsChannel *)c)->inner, ms, errp);
}

static const FerryChannelOps tls_ops = {
    .name = "tls",
    .readv = tls_readv,
    .writev = tls_writev,
    .shutdown = tls_shutdown,
    .close = tls_close,
    .pending = tls_pending,
    .set_timeout = tls_set_timeout,
};

bool ferry__channel_is_tls(const FerryChannel *c)
{
    return c && c->ops == &tls_ops;
}

/* ---- certificates ---- */

/* The peer's leaf certificate and its DN (gnutls_x509_crt_get_dn(): QEMU's form, which authz rules match).
 * False with *errp if the peer sent none. */
static bool peer_certificate(TlsChannel *t, gnutls_x509_crt_t *crt, char **dn, FerryError **errp)
{
    unsigned n = 0;
    const gnutls_datum_t *certs = gnutls_certificate_get_peers(t->session, &n);
    if (!certs || n == 0) {
        ferry_error_setg(errp, "the peer presented no certificate");
        return false;
    }
    int rc = gnutls_x509_crt_init(crt);
    if (rc >= 0) {
        rc = gnutls_x509_crt_import(*crt, &certs[0], GNUTLS_X509_FMT_DER);
        if (rc < 0) {
            gnutls_x509_crt_deinit(*crt);
        }
    }
    if (rc < 0) {
        ferry_error_setg(errp, "the peer's certificate cannot be read: %s", gnutls_strerror(rc));
        return false;
    }
    size_t len = 0;
    rc = gnutls_x509_crt_get_dn(*crt, NULL, &len);
    char *buf = ferry__xcalloc(1, len + 1);
    if (rc != GNUTLS_E_SHORT_MEMORY_BUFFER || gnutls_x509_crt_get_dn(*crt, buf, &len) < 0) {
        free(buf);
        buf = ferry__xstrdup("(no distinguished name)");
    }
    *dn = ferry__utf8_scrub(buf);
    free(buf);
    return true;
}

/* The chain the peer sent, against our CA (and CRL); *alert says how to tell the peer about a refusal. */
static bool verify_chain(TlsChannel *t, const char *dn, gnutls_alert_description_t *alert, FerryError **errp)
{
    unsigned status = 0;
    int rc = gnutls_certificate_verify_peers2(t->session, &status);
    if (rc < 0) {
        ferry_error_setg(errp, "certificate not trusted: cannot verify '%s': %s", dn, gnutls_strerror(rc));
        *alert = GNUTLS_A_BAD_CERTIFICATE;
        return false;
    }
    if (status == 0) {
        return true;
    }
    char *why = ferry__tls_cert_status_text(status);
    ferry_error_setg(errp, "certificate not trusted: '%s' is %s (CA: %s/ca-cert.pem)", dn, why,
                     ferry__tls_creds_dir(t->tls->creds));
    free(why);
    *alert = (status & GNUTLS_CERT_REVOKED)   ? GNUTLS_A_CERTIFICATE_REVOKED
             : (status & GNUTLS_CERT_EXPIRED) ? GNUTLS_A_CERTIFICATE_EXPIRED
             : (status & (GNUTLS_CERT_SIGNER_NOT_FOUND | GNUTLS_CERT_SIGNER_NOT_CA)) ? GNUTLS_A_UNKNOWN_CA
                                                                                     : GNUTLS_A_BAD_CERTIFICATE;
    return false;
}

/* Client: GnuTLS's verify hook, run when the server's certificate has arrived. Non-zero aborts the handshake. */
static int verify_server(gnutls_session_t session)
{
    TlsChannel *t = gnutls_session_get_ptr(session);
    gnutls_x509_crt_t crt;
    char *dn = NULL;
    FerryError *err = NULL;
    gnutls_alert_description_t alert = GNUTLS_A_BAD_CERTIFICATE;
    bool ok = peer_certificate(t, &crt, &dn, &err);
    if (ok) {
        ok = verify_chain(t, dn, &alert, &err);
        if (ok && !gnutls_x509_crt_check_hostname(crt, t->tls->hostname)) {
            ferry_error_setg(&err, "hostname mismatch: the certificate '%s' is not for '%s' (set tls-hostname to "
                             "a name it carries)", dn, t->tls->hostname);
            ok = false;
        }
        gnutls_x509_crt_deinit(crt);
    }
    if (ok) {
        t->peer = dn;
        return 0;
    }
    free(dn);
    t->refusal = ferry__xstrdup(ferry_error_msg(err));
    t->alert = alert;
    ferry_error_free(err);
    return -1;
}

/* Server: after the handshake, who the client is and whether it may come in. */
static bool check_client(TlsChannel *t, FerryError **errp)
{
    const FerryTls *tls = t->tls;
    if (ferry__tls_creds_is_psk(tls->creds)) {
        const char *user = gnutls_psk_server_get_username(t->session);
        t->peer = ferry__utf8_scrub(user ? user : "");
    } else if (ferry__tls_creds_verify_peer(tls->creds)) {
        gnutls_x509_crt_t crt;
        char *dn = NULL;
        gnutls_alert_description_t alert;
        if (!peer_certificate(t, &crt, &dn, errp)) {
            /* "... but the peer presented no certificate" */
            ferry_error_prepend(errp, "verify-peer is on for tls-creds '%s', but ", ferry__tls_creds_name(tls));
            return false;
        }
        gnutls_x509_crt_deinit(crt);
        bool ok = verify_chain(t, dn, &alert, errp);
        t->peer = dn;
        if (!ok) {
            return false;
        }
    }
    if (tls->authz && !ferry__authz_check(tls->authz, t->peer, errp)) {
        return false;
    }
    return true;
}

/* ---- channel ---- */

FerryChannel *ferry__tls_channel_new(FerryChannel *inner, FerryTls *tls, FerryError **errp)
{
    TlsChannel *t = ferry__xcalloc(1, sizeof(*t));
    t->fdc.base.ops = &tls_ops;
    t->fdc.base.fd = inner->fd;
    t->fdc.base.desc = ferry__xstrdup(inner->desc);
    t->fdc.wake_fd = -1;
    t->inner = inner;
    t->tls = ferry__tls_ref(tls);
    int rc = gnutls_init(&t->session, (tls->server ? GNUTLS_SERVER : GNUTLS_CLIENT) | GNUTLS_NO_TICKETS);
    if (rc < 0) {
        t->session = NULL;
        ferry_error_setg(errp, "TLS with '%s': %s", inner->desc, gnutls_strerror(rc));
        ferry__channel_free(&t->fdc.base);
        return NULL;
    }
    if (!ferry__tls_creds_setup_session(tls->creds, t->session, errp)) {
        ferry__channel_free(&t->fdc.base);
        return NULL;
    }
    gnutls_session_set_ptr(t->session, t);
    gnutls_transport_set_ptr(t->session, t);
    gnutls_transport_set_vec_push_function(t->session, push_vec);
    gnutls_transport_set_pull_function(t->session, pull);
    if (!tls->server && tls->hostname) {
        gnutls_session_set_verify_function(t->session, verify_server);
    }
    return &t->fdc.base;
}

/* Server: refuse a peer whose first byte is not a TLS handshake record before GnuTLS reads anything. */
static bool peek_for_tls(TlsChannel *t, FerryError **errp)
{
    unsigned char b;
    ssize_t n;
    while ((n = recv(t->inner->fd, &b, 1, MSG_PEEK)) < 0 && errno == EINTR) {
    }
    if (n < 0) {
        ferry_error_setg_errno(errp, errno, "cannot read from the peer");
        return false;
    }
    if (n == 0) {
        ferry_error_setg(errp, inner_shut(t) ? "channel was shut down"
                                             : "the peer closed the connection before the TLS handshake");
        return false;
    }
    if (b != TLS_HANDSHAKE_RECORD) {
        t->plaintext = true;
        ferry_error_setg(errp, "peer did not speak TLS (its first byte is 0x%02x%s, not a TLS handshake record), "
                         "and TLS is required here (tls-creds '%s')", b,
                         b == 'F' ? " 'F', as of a plaintext ferry stream" : "", ferry__tls_creds_name(t->tls));
        return false;
    }
    return true;
}

bool ferry__tls_channel_handshake(FerryChannel *c, FerryError **errp)
{
    TlsChannel *t = tls_of(c);
    const FerryTls *tls = t->tls;
    FerryError *err = NULL;
    if (tls->server && !peek_for_tls(t, &err)) {
        goto fail;
    }
    int rc;
    do {
        rc = gnutls_handshake(t->session);
    } while (rc < 0 && !gnutls_error_is_fatal(rc));
    if (rc < 0) {
        if (t->refusal) {
            /* Our verify hook refused the server: say which kind of refusal it is, then why. */
            gnutls_alert_send(t->session, GNUTLS_AL_FATAL, t->alert);
            ferry_error_setg(&err, "%s", t->refusal);
        } else if (t->got_first && (t->first < 0x14 || t->first > 0x18)) {
            /* Not a TLS record type (change_cipher_spec .. heartbeat): the peer answered in something else. */
            t->plaintext = true;
            ferry_error_setg(&err, "peer did not speak TLS (it answered with byte 0x%02x, not a TLS record; is TLS "
                             "set up on the other end?)", t->first);
        } else if (rc == GNUTLS_E_FATAL_ALERT_RECEIVED) {
            gnutls_alert_description_t a = gnutls_alert_get(t->session);
            bool cert = a == GNUTLS_A_UNKNOWN_CA || a == GNUTLS_A_BAD_CERTIFICATE ||
                        a == GNUTLS_A_CERTIFICATE_EXPIRED || a == GNUTLS_A_CERTIFICATE_REVOKED ||
                        a == GNUTLS_A_CERTIFICATE_UNKNOWN || a == GNUTLS_A_UNSUPPORTED_CERTIFICATE;
            ferry_error_setg(&err, "the peer refused the session%s: TLS alert '%s'",
                             cert ? " (it does not accept this end's certificate)" : "", gnutls_alert_get_name(a));
        } else {
            bool inner_msg;
            tls_reason(t, rc, &inner_msg, &err);
            if (!inner_msg && !inner_shut(t)) {
                /* GnuTLS does not tell the peer by itself; without an alert it would wait for our next record
                 * until we close (a wrong PSK, a protocol or cipher the other end does not offer). */
                gnutls_alert_send_appropriate(t->session, rc);
            }
        }
        goto fail;
    }
    t->established = true;
    if (tls->server && !check_client(t, &err)) {
        goto fail;
    }
    t->up = true;
    return true;

fail:
    ferry_error_prepend(&err, "TLS handshake with '%s' failed: ", c->desc);
    ferry_error_propagate(errp, err);
    return false;
}

FerryChannel *ferry__tls_channel_report_path(FerryChannel *c)
{
    TlsChannel *t = tls_of(c);
    if (t->established) {
        /* Refused after the handshake: the session can carry the reason. */
        t->up = true;
        return c;
    }
    return t->plaintext ? t->inner : NULL;
}

json_t *ferry__tls_channel_info(FerryChannel *c)
{
    TlsChannel *t = tls_of(c);
    json_t *o = json_pack("{s:s, s:s, s:s}", "creds", ferry__tls_creds_name(t->tls),
                          "protocol", gnutls_protocol_get_name(gnutls_protocol_get_version(t->session)),
                          "cipher", gnutls_cipher_get_name(gnutls_cipher_get(t->session)));
    if (t->peer) {
        json_object_set_new(o, "peer", json_string(t->peer));
    }
    return o;
}
