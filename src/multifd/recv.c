/*
 * The destination side of multifd: accept the channels the MULTIFD record announced, check that each one opens
 * with a hello of this session, and run one thread per channel that reads packets and writes their pages straight
 * into RAM, in named steps (read_packet_body): the block, the extents and zero bitmap, the runs of the pages with
 * data (pages.c), the payload by the method that made it (a plain payload by nocomp.c's recv with one
 * scatter-gather read, a compressed one by the negotiated method's, decompressed page by page into place), then
 * the zero pages. Every count, extent and length is checked before anything is read or allocated by it, and the
 * CRC32C of each packet is checked before the next is read (RAM that already holds a damaged packet's pages is
 * harmless: nothing runs before the end of the stream, and a failed load discards RAM).
 *
 * At a SYNC packet a thread waits until the main channel's MULTIFD_SYNC of that number lets every thread go on
 * (ferry__multifd_recv_sync): pages of pass n + 1 are never written before every channel has written its pages
 * of pass n. This file does not read the main channel; dest.c does. It names no compression method.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>

#include "multifd/multifd-int.h"
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
    void *mstate;    /* the compression method's (FerryMultifdMethods.recv_setup) */
    uint8_t meta[FERRY_WIRE_MFD_MAX_PAGES * FERRY_WIRE_MFD_EXTENT_LEN + FERRY_WIRE_MFD_MAX_PAGES / 8];
    FerryWireMfdExtent ext[FERRY_WIRE_MFD_MAX_PAGES];
    struct iovec iov[FERRY_WIRE_MFD_MAX_PAGES];
} Receiver;

struct FerryMultifdRecv {
    FerryMutex lock;
    pthread_cond_t cond;
    FerryMultifdConfig cfg;
    const FerryMultifdMethods *methods; /* of cfg.compression */
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
    ferry__mutex_lock(&r->lock);
    bool quiet = r->quit;
    if (!quiet && !r->err) {
        r->err = err;
        err = NULL;
    }
    pthread_cond_broadcast(&r->cond);
    ferry__mutex_unlock(&r->lock);
    ferry_error_free(err);
    if (!quiet) {
        shutdown(r->main->fd, SHUT_RD);
    }
}

/* The block @pk names, if this process has it and it can take pages. */
static FerryRamBlock *packet_block(FerryMultifdRecv *r, const FerryWireMfdPacket *pk, FerryError **errp)
{
    if (pk->block >= r->nblocks) {
        ferry_error_setg(errp, "packet %llu names block %u, this process has %zu", (unsigned long long)pk->number,
                         pk->block, r->nblocks);
        return NULL;
    }
    FerryRamBlock *b = r->blocks[pk->block];
    if (b->adopted) {
        ferry_error_setg(errp, "packet %llu for block '%s', whose memory came as a file descriptor",
                         (unsigned long long)pk->number, b->name);
        return NULL;
    }
    return b;
}

/* Read the extents and zero bitmap of @pk (into rv->meta, decoded into rv->ext) and check them against @b; returns
 * the bitmap, or NULL. *mlen is the bytes read. */
static const uint8_t *read_extents(Receiver *rv, const FerryWireMfdPacket *pk, const FerryRamBlock *b, size_t *mlen,
                                   uint32_t *crc, FerryError **errp)
{
    uint32_t zb = (pk->pages + 7) / 8;
    *mlen = (size_t)pk->extents * FERRY_WIRE_MFD_EXTENT_LEN + zb;
    if (!ferry__channel_read_all(rv->chan, rv->meta, *mlen, errp)) {
        return NULL;
    }
    if (crc) {
        *crc = ferry__crc32c(*crc, rv->meta, *mlen);
    }
    if (!ferry__wire_mfd_extents_decode(rv->meta, pk->extents, pk->pages, b->npages, rv->ext, errp)) {
        ferry_error_prepend(errp, "packet %llu: ", (unsigned long long)pk->number);
        return NULL;
    }
    const uint8_t *zmap = rv->meta + (size_t)pk->extents * FERRY_WIRE_MFD_EXTENT_LEN;
    if (pk->pages % 8 && (zmap[zb - 1] >> (pk->pages % 8))) {
        ferry_error_setg(errp, "packet %llu: zero bitmap bits set past its %u pages", (unsigned long long)pk->number,
                         pk->pages);
        return NULL;
    }
    return zmap;
}

/*
 * The payload into the pages @p, by the method that made it: a payload is plain page data unless the packet says
 * it is compressed, whatever the stream's method (a packet whose pages are all zero has an empty plain payload);
 * a compressed one is the negotiated method's.
 */
static bool read_payload(Receiver *rv, const FerryWireMfdPacket *pk, const FerryMultifdPayload *p, uint32_t *crc,
                         FerryError **errp)
{
    FerryMultifdRecv *r = rv->owner;
    if (!(pk->flags & FERRY_MFD_PKT_COMPRESSED)) {
        return ferry__multifd_nocomp.recv(NULL, rv->chan, pk, p, crc, errp);
    }
    if (r->cfg.compression == FERRY_MFD_COMP_NONE || !p->raw) {
        ferry_error_setg(errp, "packet %llu is compressed, but %s", (unsigned long long)pk->number,
                         p->raw ? "the stream's compression is none" : "it has no page data");
        return false;
    }
    return r->methods->recv(rv->mstate, rv->chan, pk, p, crc, errp);
}

/* Zero pages: only written if this migration wrote them before (see recv_written), so that untouched memory stays
 * unpopulated and unread; the others are recorded as written. */
static void apply_zero_map(Receiver *rv, const FerryWireMfdPacket *pk, FerryRamBlock *b, const uint8_t *zmap)
{
    const size_t ps = rv->owner->cfg.page_size;
    uint32_t k = 0;
    for (uint32_t e = 0; e < pk->extents; e++) {
        for (uint32_t j = 0; j < rv->ext[e].count; j++, k++) {
            uint64_t page = rv->ext[e].first + j;
            if (ferry__multifd_zmap_test(zmap, k)) {
                ferry__ram_block_zero_page(b, page, ps);
            } else {
                ferry__ram_block_note_written(b, page, 1);
            }
        }
    }
    const FerryWireMfdExtent *last = &rv->ext[pk->extents - 1];
    ferry__ram_block_note_received(b, last->first + last->count);
}

/* The body of PAGES packet @pk: its extents and zero bitmap, then its payload into RAM; *crc extended unless NULL. */
static bool read_packet_body(Receiver *rv, const FerryWireMfdPacket *pk, uint32_t *crc, FerryError **errp)
{
    FerryMultifdRecv *r = rv->owner;
    FerryRamBlock *b = packet_block(r, pk, errp);
    size_t mlen;
    const uint8_t *zmap = b ? read_extents(rv, pk, b, &mlen, crc, errp) : NULL;
    if (!zmap) {
        return false;
    }
    FerryMultifdPayload p = { .iov = rv->iov };
    p.niov = ferry__multifd_gather(b->host, r->cfg.page_size, rv->ext, pk->extents, zmap, p.iov, &p.npages);
    p.raw = (size_t)p.npages * r->cfg.page_size;
    for (int i = 0; i < p.niov; i++) {
        ferry__ram_block_prepare_write(b, p.iov[i].iov_base, p.iov[i].iov_len);
    }
    if (!read_payload(rv, pk, &p, crc, errp)) {
        return false;
    }
    apply_zero_map(rv, pk, b, zmap);
    add_stat(&r->bytes, mlen + pk->payload);
    add_stat(&r->pages, pk->pages);
    add_stat(&r->normal, p.npages);
    add_stat(&r->zero, pk->pages - p.npages);
    return true;
}

/* SYNC packet @number: note that this thread reached it, then wait until the main channel lets every thread past
 * it. False, with *errp untouched, when stopping or when another thread failed: nothing of ours to report. */
static bool reach_sync(Receiver *rv, uint64_t number, FerryError **errp)
{
    FerryMultifdRecv *r = rv->owner;
    ferry__mutex_lock(&r->lock);
    if (number != rv->synced + 1) {
        ferry__mutex_unlock(&r->lock);
        ferry_error_setg(errp, "SYNC packet %llu after SYNC %llu", (unsigned long long)number,
                         (unsigned long long)rv->synced);
        return false;
    }
    rv->synced = number;
    pthread_cond_broadcast(&r->cond);
    while (r->released < number && !r->quit && !r->err) {
        ferry__mutex_cond_wait(&r->lock, &r->cond);
    }
    bool go_on = r->released >= number;
    ferry__mutex_unlock(&r->lock);
    return go_on;
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
        if (!read_packet_body(rv, &pk, r->cfg.checksum ? &crc : NULL, errp)) {
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
    return pk.type != FERRY_MFD_PKT_SYNC || reach_sync(rv, pk.number, errp);
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

/* Accept one channel (the @got-th) and check its hello; false with the error naming the channel or the wait. */
static bool accept_channel(FerryMultifdRecv *r, FerryListener *l, unsigned got, FerryError **errp)
{
    FerryError *err = NULL;
    FerryChannel *c = ferry__listener_accept_timeout(l, ACCEPT_TIMEOUT_MS, &err);
    uint8_t hello[FERRY_WIRE_MFD_HELLO_LEN], session[FERRY_WIRE_MFD_SESSION_LEN];
    uint16_t index = 0;
    char *desc = c ? ferry__xstrdup(c->desc) : NULL;
    /* The timeout goes on the socket, under any TLS session read_hello starts on it. */
    if (c && ferry__channel_set_timeout(c, r->cfg.timeout_ms, &err) && read_hello(&c, r->cfg.tls, hello, &err) &&
        ferry__wire_mfd_hello_decode(hello, &index, session, &err)) {
        if (memcmp(session, r->cfg.session, sizeof(session)) != 0) {
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
        return false;
    }
    free(desc);
    r->r[index].chan = c;
    return true;
}

FerryMultifdRecv *ferry__multifd_recv_new(FerryListener *l, const FerryMultifdConfig *cfg, FerryRamBlock **blocks,
                                          size_t nblocks, FerryChannel *main, FerryError **errp)
{
    const FerryMultifdMethods *methods = ferry__multifd_methods(cfg->compression, errp);
    if (!methods) {
        return NULL;
    }
    FerryMultifdRecv *r = ferry__xcalloc(1, sizeof(*r));
    ferry__mutex_init(&r->lock);
    pthread_cond_init(&r->cond, NULL);
    r->cfg = *cfg;
    r->methods = methods;
    r->blocks = blocks;
    r->nblocks = nblocks;
    r->main = main;
    r->n = cfg->channels;
    r->r = ferry__xcalloc(r->n, sizeof(*r->r));
    for (unsigned i = 0; i < r->n; i++) {
        r->r[i].owner = r;
        r->r[i].index = i;
    }
    for (unsigned got = 0; got < r->n; got++) {
        if (!accept_channel(r, l, got, errp)) {
            ferry__multifd_recv_free(r);
            return NULL;
        }
    }
    for (unsigned i = 0; i < r->n; i++) {
        if (methods->recv_setup && !methods->recv_setup(cfg, &r->r[i].mstate, errp)) {
            ferry__multifd_recv_free(r);
            return NULL;
        }
    }
    for (unsigned i = 0; i < r->n; i++) {
        if (pthread_create(&r->r[i].thread, NULL, receiver_thread, &r->r[i]) != 0) {
            ferry_error_setg(errp, "multifd channel %u: cannot start its thread", i);
            ferry__multifd_recv_free(r);
            return NULL;
        }
        char name[16]; /* the kernel keeps 15 bytes */
        snprintf(name, sizeof(name), "mig/dst/mfd%u", i % 10000u);
        pthread_setname_np(r->r[i].thread, name);
        r->r[i].started = true;
    }
    return r;
}

bool ferry__multifd_recv_sync(FerryMultifdRecv *r, uint64_t sync, FerryError **errp)
{
    ferry__mutex_lock(&r->lock);
    for (;;) {
        if (r->err) {
            ferry_error_propagate(errp, ferry_error_copy(r->err));
            ferry__mutex_unlock(&r->lock);
            return false;
        }
        unsigned behind = 0;
        for (unsigned i = 0; i < r->n; i++) {
            behind += r->r[i].synced < sync;
        }
        if (!behind) {
            break;
        }
        ferry__mutex_cond_wait(&r->lock, &r->cond);
    }
    r->released = sync;
    pthread_cond_broadcast(&r->cond);
    ferry__mutex_unlock(&r->lock);
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
    ferry__mutex_lock(&r->lock);
    bool failed = r->err != NULL;
    if (failed) {
        ferry_error_propagate(errp, ferry_error_copy(r->err));
    }
    ferry__mutex_unlock(&r->lock);
    return failed;
}

bool ferry__multifd_recv_stop(FerryMultifdRecv *r, FerryError **errp)
{
    ferry__mutex_lock(&r->lock);
    bool was_stopped = r->stopped;
    r->quit = true;
    r->stopped = true;
    pthread_cond_broadcast(&r->cond);
    ferry__mutex_unlock(&r->lock);
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
        if (r->r[i].mstate) {
            r->methods->recv_cleanup(r->r[i].mstate);
        }
    }
    free(r->r);
    ferry_error_free(r->err);
    ferry__mutex_destroy(&r->lock);
    pthread_cond_destroy(&r->cond);
    free(r);
}
