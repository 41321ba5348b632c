/*
 * The destination side of multifd: accept the channels the MULTIFD record announced, check that each one opens
 * with a hello of this session, and run one thread per channel that reads packets and writes their pages straight
 * into RAM: uncompressed data with one scatter-gather read per packet, compressed data decompressed page by page
 * into place. Every count, extent and length is checked before anything is read or allocated by it, and the
 * CRC32C of each packet is checked before the next is read (RAM that already holds a damaged packet's pages is
 * harmless: nothing runs before the end of the stream, and a failed load discards RAM).
 *
 * At a SYNC packet a thread waits until the main channel's MULTIFD_SYNC of that number lets every thread go on
 * (ferry__multifd_recv_sync): pages of pass n + 1 are never written before every channel has written its pages
 * of pass n. This file does not read the main channel; dest.c does.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>

#include "multifd/multifd.h"
#include "util/util.h"

#define ACCEPT_TIMEOUT_MS 10000 /* the channels are connected before MULTIFD is written: they are waiting */

typedef struct Receiver {
    FerryMultifdRecv *owner;
    unsigned index;
    FerryChannel *chan;
    pthread_t thread;
    bool started;
    uint64_t synced; /* the last SYNC reached (owner->lock) */
    uint64_t seq;    /* the next packet number expected */
    FerryDecompressor *dec;
    uint8_t *cbuf;
    uint8_t meta[FERRY_WIRE_MFD_MAX_PAGES * FERRY_WIRE_MFD_EXTENT_LEN + FERRY_WIRE_MFD_MAX_PAGES / 8];
    FerryWireMfdExtent ext[FERRY_WIRE_MFD_MAX_PAGES];
    struct iovec iov[FERRY_WIRE_MFD_MAX_PAGES];
    struct iovec work[FERRY_WIRE_MFD_MAX_PAGES];
} Receiver;

struct FerryMultifdRecv {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    FerryMultifdConfig cfg;
    FerryRamBlock **blocks;
    size_t nblocks;
    FerryChannel *main;
    Receiver *r;
    unsigned n;
    uint64_t released; /* the last sync the main channel let through */
    bool quit;         /* stopping: the end of a channel is expected now */
    bool stopped;
    FerryError *err;
    uint64_t bytes, pages, normal, zero; /* atomic */
};

static void add_stat(uint64_t *v, uint64_t n)
{
    __atomic_fetch_add(v, n, __ATOMIC_RELAXED);
}

/* Keep the first error and wake the thread that reads the main channel (see the header). */
static void fail(FerryMultifdRecv *r, FerryError *err)
{
    pthread_mutex_lock(&r->lock);
    bool quiet = r->quit;
    if (!quiet && !r->err) {
        r->err = err;
        err = NULL;
    }
    pthread_cond_broadcast(&r->cond);
    pthread_mutex_unlock(&r->lock);
    ferry_error_free(err);
    if (!quiet) {
        shutdown(r->main->fd, SHUT_RD);
    }
}

static bool read_packet_body(Receiver *rv, const FerryWireMfdPacket *pk, uint32_t *crc, FerryError **errp)
{
    FerryMultifdRecv *r = rv->owner;
    const size_t ps = r->cfg.page_size;
    if (pk->block >= r->nblocks) {
        ferry_error_setg(errp, "packet %llu names block %u, this process has %zu", (unsigned long long)pk->number,
                         pk->block, r->nblocks);
        return false;
    }
    FerryRamBlock *b = r->blocks[pk->block];
    if (b->adopted) {
        ferry_error_setg(errp, "packet %llu for block '%s', whose memory came as a file descriptor",
                         (unsigned long long)pk->number, b->name);
        return false;
    }
    uint32_t zb = (pk->pages + 7) / 8;
    size_t mlen = (size_t)pk->extents * FERRY_WIRE_MFD_EXTENT_LEN + zb;
    if (!ferry__channel_read_all(rv->chan, rv->meta, mlen, errp)) {
        return false;
    }
    if (r->cfg.checksum) {
        *crc = ferry__crc32c(*crc, rv->meta, mlen);
    }
    if (!ferry__wire_mfd_extents_decode(rv->meta, pk->extents, pk->pages, b->npages, rv->ext, errp)) {
        ferry_error_prepend(errp, "packet %llu: ", (unsigned long long)pk->number);
        return false;
    }
    const uint8_t *zmap = rv->meta + (size_t)pk->extents * FERRY_WIRE_MFD_EXTENT_LEN;
    if (pk->pages % 8 && (zmap[zb - 1] >> (pk->pages % 8))) {
        ferry_error_setg(errp, "packet %llu: zero bitmap bits set past its %u pages", (unsigned long long)pk->number,
                         pk->pages);
        return false;
    }
    int niov = 0;
    uint32_t nonzero = 0, k = 0;
    for (uint32_t e = 0; e < pk->extents; e++) {
        for (uint32_t j = 0; j < rv->ext[e].count; j++, k++) {
            if ((zmap[k / 8] >> (k % 8)) & 1) {
                continue;
            }
            uint8_t *p = b->host + (rv->ext[e].first + j) * ps;
            nonzero++;
            if (niov && (uint8_t *)rv->iov[niov - 1].iov_base + rv->iov[niov - 1].iov_len == p) {
                rv->iov[niov - 1].iov_len += ps;
            } else {
                rv->iov[niov++] = (struct iovec){ .iov_base = p, .iov_len = ps };
            }
        }
    }
    const uint64_t raw = (uint64_t)nonzero * ps;
    if (pk->flags & FERRY_MFD_PKT_COMPRESSED) {
        if (r->cfg.compression == FERRY_MFD_COMP_NONE || !raw) {
            ferry_error_setg(errp, "packet %llu is compressed, but %s", (unsigned long long)pk->number,
                             raw ? "the stream's compression is none" : "it has no page data");
            return false;
        }
        if (pk->payload > ferry__wire_mfd_payload_max(raw)) {
            ferry_error_setg(errp, "packet %llu: %u bytes of compressed data for %u pages",
                             (unsigned long long)pk->number, pk->payload, nonzero);
            return false;
        }
        if (!ferry__channel_read_all(rv->chan, rv->cbuf, pk->payload, errp)) {
            return false;
        }
        if (r->cfg.checksum) {
            *crc = ferry__crc32c(*crc, rv->cbuf, pk->payload);
        }
        if (!ferry__decompress(rv->dec, rv->cbuf, pk->payload, rv->iov, niov, errp)) {
            ferry_error_prepend(errp, "packet %llu: ", (unsigned long long)pk->number);
            return false;
        }
    } else {
        if (pk->payload != raw) {
            ferry_error_setg(errp, "packet %llu: %u bytes of data for %u pages with data",
                             (unsigned long long)pk->number, pk->payload, nonzero);
            return false;
        }
        memcpy(rv->work, rv->iov, sizeof(*rv->iov) * (size_t)niov);
        if (!ferry__channel_readv_all(rv->chan, rv->work, niov, errp)) {
            return false;
        }
        for (int i = 0; r->cfg.checksum && i < niov; i++) {
            *crc = ferry__crc32c(*crc, rv->iov[i].iov_base, rv->iov[i].iov_len);
        }
    }
    /* Zero pages: only written if this migration wrote them before (see recv_written), so that untouched
     * memory stays unpopulated and unread; the others are recorded as written. */
    k = 0;
    for (uint32_t e = 0; e < pk->extents; e++) {
        for (uint32_t j = 0; j < rv->ext[e].count; j++, k++) {
            uint64_t page = rv->ext[e].first + j;
            if ((zmap[k / 8] >> (k % 8)) & 1) {
                ferry__ram_block_zero_page(b, page, ps);
            } else {
                ferry__ram_block_note_written(b, page, 1);
            }
        }
    }
    const FerryWireMfdExtent *last = &rv->ext[pk->extents - 1];
    ferry__ram_block_note_received(b, last->first + last->count);
    add_stat(&r->bytes, mlen + pk->payload);
    add_stat(&r->pages, pk->pages);
    add_stat(&r->normal, nonzero);
    add_stat(&r->zero, pk->pages - nonzero);
    return true;
}

/* Reads and applies one packet; false with *errp on a bad one, or with *errp NULL at a clean stop. */
static bool receive_one(Receiver *rv, FerryError **errp)
{
    FerryMultifdRecv *r = rv->owner;
    uint8_t hdr[FERRY_WIRE_MFD_PACKET_LEN];
    if (!ferry__channel_read_all(rv->chan, hdr, sizeof(hdr), errp)) {
        return false;
    }
    FerryWireMfdPacket pk;
    if (!ferry__wire_mfd_packet_decode(hdr, (uint32_t)r->cfg.page_size, &pk, errp)) {
        ferry_error_prepend(errp, "after packet %llu: ", (unsigned long long)rv->seq);
        return false;
    }
    uint32_t crc = r->cfg.checksum ? ferry__crc32c(0, hdr, sizeof(hdr)) : 0;
    if (pk.type == FERRY_MFD_PKT_PAGES) {
        if (pk.number != rv->seq) {
            ferry_error_setg(errp, "packet %llu where packet %llu was expected", (unsigned long long)pk.number,
                             (unsigned long long)rv->seq);
            return false;
        }
        rv->seq++;
        if (!read_packet_body(rv, &pk, &crc, errp)) {
            return false;
        }
    }
    if (r->cfg.checksum) {
        uint8_t t[4];
        if (!ferry__channel_read_all(rv->chan, t, sizeof(t), errp)) {
            return false;
        }
        if (ferry__get_be32(t) != crc) {
            ferry_error_setg(errp, "%s %llu damaged: CRC mismatch (computed 0x%08x, the packet says 0x%08x)",
                             pk.type == FERRY_MFD_PKT_SYNC ? "SYNC packet" : "packet", (unsigned long long)pk.number,
                             crc, ferry__get_be32(t));
            return false;
        }
        add_stat(&r->bytes, 4);
    }
    add_stat(&r->bytes, sizeof(hdr));
    if (pk.type == FERRY_MFD_PKT_SYNC) {
        pthread_mutex_lock(&r->lock);
        if (pk.number != rv->synced + 1) {
            pthread_mutex_unlock(&r->lock);
            ferry_error_setg(errp, "SYNC packet %llu after SYNC %llu", (unsigned long long)pk.number,
                             (unsigned long long)rv->synced);
            return false;
        }
        rv->synced = pk.number;
        pthread_cond_broadcast(&r->cond);
        while (r->released < pk.number && !r->quit && !r->err) {
            pthread_cond_wait(&r->cond, &r->lock);
        }
        bool go_on = r->released >= pk.number;
        pthread_mutex_unlock(&r->lock);
        if (!go_on) {
            return false; /* stopping, or another thread failed: nothing of ours to report */
        }
    }
    return true;
}

static void *receiver_thread(void *opaque)
{
    Receiver *rv = opaque;
    FerryMultifdRecv *r = rv->owner;
    for (;;) {
        FerryError *err = NULL;
        if (receive_one(rv, &err)) {
            continue;
        }
        if (err) {
            ferry_error_prepend(&err, "multifd channel %u: ", rv->index);
            fail(r, err);
        }
        break;
    }
    return NULL;
}

/*
 * Read the 36-byte hello of a fresh channel, waiting at most ACCEPT_TIMEOUT_MS for it; with TLS, *c is wrapped
 * first and its handshake (bounded by the same timeout, which the socket's SO_RCVTIMEO enforces) comes before.
 */
static bool read_hello(FerryChannel **c, FerryTls *tls, uint8_t hello[FERRY_WIRE_MFD_HELLO_LEN], FerryError **errp)
{
    struct timeval tv = { .tv_sec = ACCEPT_TIMEOUT_MS / 1000 }, none = { 0 };
    int fd = (*c)->fd;
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    FerryError *err = NULL;
    bool ok = true;
    if (tls) {
        *c = ferry__tls_channel_new(*c, tls, errp);
        ok = *c && ferry__tls_channel_handshake(*c, errp);
        if (!ok) {
            return false;
        }
    }
    ok = ferry__channel_read_all(*c, hello, FERRY_WIRE_MFD_HELLO_LEN, &err);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &none, sizeof(none));
    if (!ok) {
        ferry_error_propagate(errp, err);
        ferry_error_prepend(errp, "no multifd hello within %d s: ", ACCEPT_TIMEOUT_MS / 1000);
    }
    return ok;
}

FerryMultifdRecv *ferry__multifd_recv_new(FerryListener *l, const FerryMultifdConfig *cfg, FerryRamBlock **blocks,
                                          size_t nblocks, FerryChannel *main, FerryError **errp)
{
    FerryMultifdRecv *r = ferry__xcalloc(1, sizeof(*r));
    pthread_mutex_init(&r->lock, NULL);
    pthread_cond_init(&r->cond, NULL);
    r->cfg = *cfg;
    r->blocks = blocks;
    r->nblocks = nblocks;
    r->main = main;
    r->n = cfg->channels;
    r->r = ferry__xcalloc(r->n, sizeof(*r->r));
    size_t raw = FERRY_WIRE_MFD_MAX_PAGES * cfg->page_size;
    for (unsigned i = 0; i < r->n; i++) {
        r->r[i].owner = r;
        r->r[i].index = i;
    }
    for (unsigned got = 0; got < r->n; got++) {
        FerryError *err = NULL;
        FerryChannel *c = ferry__listener_accept_timeout(l, ACCEPT_TIMEOUT_MS, &err);
        uint8_t hello[FERRY_WIRE_MFD_HELLO_LEN], session[FERRY_WIRE_MFD_SESSION_LEN];
        uint16_t index = 0;
        char *desc = c ? ferry__xstrdup(c->desc) : NULL;
        /* The timeout goes on the socket, under any TLS session read_hello starts on it. */
        if (c && ferry__channel_set_timeout(c, cfg->timeout_ms, &err) && read_hello(&c, cfg->tls, hello, &err) &&
            ferry__wire_mfd_hello_decode(hello, &index, session, &err)) {
            if (memcmp(session, cfg->session, sizeof(session)) != 0) {
                ferry_error_setg(&err, "it belongs to another migration (session id differs)");
            } else if (index >= r->n) {
                ferry_error_setg(&err, "it says it is channel %u of %u", index, r->n);
            } else if (r->r[index].chan) {
                ferry_error_setg(&err, "a second channel %u", index);
            }
        }
        if (err) {
            if (desc) {
                ferry_error_prepend(&err, "multifd channel from '%s': ", desc);
            } else {
                ferry_error_prepend(&err, "waiting for multifd channel %u of %u: ", got + 1, r->n);
            }
            free(desc);
            ferry__channel_free(c);
            ferry_error_propagate(errp, err);
            ferry__multifd_recv_free(r);
            return NULL;
        }
        free(desc);
        r->r[index].chan = c;
    }
    for (unsigned i = 0; i < r->n; i++) {
        Receiver *rv = &r->r[i];
        if (cfg->compression != FERRY_MFD_COMP_NONE) {
            rv->dec = ferry__decompressor_new(cfg->compression, errp);
            if (!rv->dec) {
                ferry__multifd_recv_free(r);
                return NULL;
            }
            rv->cbuf = ferry__xmalloc(ferry__wire_mfd_payload_max(raw));
        }
    }
    for (unsigned i = 0; i < r->n; i++) {
        if (pthread_create(&r->r[i].thread, NULL, receiver_thread, &r->r[i]) != 0) {
            ferry_error_setg(errp, "multifd channel %u: cannot start its thread", i);
            ferry__multifd_recv_free(r);
            return NULL;
        }
        r->r[i].started = true;
    }
    return r;
}

bool ferry__multifd_recv_sync(FerryMultifdRecv *r, uint64_t sync, FerryError **errp)
{
    pthread_mutex_lock(&r->lock);
    for (;;) {
        if (r->err) {
            ferry_error_propagate(errp, ferry_error_copy(r->err));
            pthread_mutex_unlock(&r->lock);
            return false;
        }
        unsigned behind = 0;
        for (unsigned i = 0; i < r->n; i++) {
            behind += r->r[i].synced < sync;
        }
        if (!behind) {
            break;
        }
        pthread_cond_wait(&r->cond, &r->lock);
    }
    r->released = sync;
    pthread_cond_broadcast(&r->cond);
    pthread_mutex_unlock(&r->lock);
    return true;
}

void ferry__multifd_recv_shutdown(FerryMultifdRecv *r)
{
    for (unsigned i = 0; i < r->n; i++) {
        if (r->r[i].chan) {
            ferry__channel_shutdown(r->r[i].chan);
        }
    }
}

bool ferry__multifd_recv_error(FerryMultifdRecv *r, FerryError **errp)
{
    pthread_mutex_lock(&r->lock);
    bool failed = r->err != NULL;
    if (failed) {
        ferry_error_propagate(errp, ferry_error_copy(r->err));
    }
    pthread_mutex_unlock(&r->lock);
    return failed;
}

bool ferry__multifd_recv_stop(FerryMultifdRecv *r, FerryError **errp)
{
    pthread_mutex_lock(&r->lock);
    bool was_stopped = r->stopped;
    r->quit = true;
    r->stopped = true;
    pthread_cond_broadcast(&r->cond);
    pthread_mutex_unlock(&r->lock);
    if (!was_stopped) {
        for (unsigned i = 0; i < r->n; i++) {
            if (r->r[i].chan) {
                ferry__channel_shutdown(r->r[i].chan);
            }
        }
        for (unsigned i = 0; i < r->n; i++) {
            if (r->r[i].started) {
                pthread_join(r->r[i].thread, NULL);
                r->r[i].started = false;
            }
        }
    }
    return !ferry__multifd_recv_error(r, errp);
}

void ferry__multifd_recv_stats(FerryMultifdRecv *r, FerryMultifdStats *out)
{
    out->bytes = __atomic_load_n(&r->bytes, __ATOMIC_RELAXED);
    out->pages = __atomic_load_n(&r->pages, __ATOMIC_RELAXED);
    out->normal = __atomic_load_n(&r->normal, __ATOMIC_RELAXED);
    out->zero = __atomic_load_n(&r->zero, __ATOMIC_RELAXED);
}

void ferry__multifd_recv_free(FerryMultifdRecv *r)
{
    if (!r) {
        return;
    }
    ferry__multifd_recv_stop(r, NULL);
    for (unsigned i = 0; i < r->n; i++) {
        ferry__channel_free(r->r[i].chan);
        ferry__decompressor_free(r->r[i].dec);
        free(r->r[i].cbuf);
    }
    free(r->r);
    ferry_error_free(r->err);
    pthread_mutex_destroy(&r->lock);
    pthread_cond_destroy(&r->cond);
    free(r);
}
