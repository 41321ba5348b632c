/*
 * The source side of multifd: one thread per extra channel, each taking batches of pages from the migration
 * thread and writing them as packets (wire.h: header, extents, zero bitmap, payload, CRC32C). A packet is made in
 * named steps (write_pages): zero-page detection when asked (zero-page-detection=multifd, pages.c), the runs of the
 * other pages in RAM (pages.c), the payload by the negotiated compression method's send_prepare (multifd-int.h;
 * none keeps the pages as they are), the metadata, the checksum, one scatter-gather write, the statistics. RAM goes
 * to the kernel directly; pages are copied first only where a checksum or a compressor must see stable bytes while
 * the workload runs.
 *
 * Each thread has one slot the migration thread fills while the thread writes the previous batch, so that page
 * scanning and sending overlap; the slot belongs to exactly one of the two at a time, handed over under the lock
 * and asserted at each hand-over (SlotState). The first error of any thread is kept (naming its channel); the
 * thread stops, and every later call fails with that error. This file does not choose pages or synchronise passes;
 * source.c does. It names no compression method.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "multifd/multifd-int.h"
#include "util/util.h"

typedef enum JobType { JOB_PAGES, JOB_SYNC } JobType;

typedef struct Job {
    JobType type;
    uint64_t sync;
    FerryMultifdBatch batch;
} Job;

/* Who owns a channel's slot (Sender.pending): exactly one thread at a time, handed over under owner->lock. */
typedef enum SlotState {
    SLOT_EMPTY, /* the migration thread's: it may fill the slot (fill_slot_locked) */
    SLOT_FULL,  /* the channel thread's: taking the job empties the slot again (take_job_locked) */
} SlotState;

typedef struct Sender {
    FerryMultifdSend *owner;
    unsigned index;
    FerryChannel *chan;
    pthread_t thread;
    bool started;
    /* Guarded by owner->lock. */
    SlotState slot;
    bool busy; /* the thread is writing cur */
    Job pending;
    /* The thread's own. */
    Job cur;
    uint64_t seq;
    void *mstate;     /* the compression method's (FerryMultifdMethods.send_setup) */
    uint8_t *copybuf; /* FERRY_WIRE_MFD_MAX_PAGES pages */
    uint8_t meta[FERRY_WIRE_MFD_PACKET_LEN + FERRY_WIRE_MFD_MAX_PAGES * FERRY_WIRE_MFD_EXTENT_LEN +
                 FERRY_WIRE_MFD_MAX_PAGES / 8];
    struct iovec iov[FERRY_WIRE_MFD_MAX_PAGES + 2]; /* header and metadata, payload runs, CRC */
} Sender;

struct FerryMultifdSend {
    FerryMutex lock;
    pthread_cond_t cond; /* broadcast on every change of a slot, a thread's state or err */
    FerryMultifdConfig cfg;
    const FerryMultifdMethods *methods; /* of cfg.compression */
    Sender *s;
    unsigned n;
    unsigned next; /* round robin */
    bool quit;
    FerryError *err;
    uint64_t bytes, pages, normal, zero; /* atomic */
};

static void add_stat(uint64_t *v, uint64_t n)
{
    __atomic_fetch_add(v, n, __ATOMIC_RELAXED);
}

static bool write_sync(Sender *sn, uint64_t sync, FerryError **errp)
{
    FerryMultifdSend *s = sn->owner;
    uint8_t pkt[FERRY_WIRE_MFD_PACKET_LEN + 4];
    ferry__wire_mfd_packet_encode(&(FerryWireMfdPacket){ .type = FERRY_MFD_PKT_SYNC, .number = sync }, pkt);
    size_t len = FERRY_WIRE_MFD_PACKET_LEN;
    if (s->cfg.checksum) {
        ferry__put_be32(pkt + len, ferry__crc32c(0, pkt, len));
        len += 4;
    }
    if (!ferry__channel_write_all(sn->chan, pkt, len, errp)) {
        return false;
    }
    add_stat(&s->bytes, len);
    return true;
}

/* The packet's header, extents and zero bitmap into sn->meta, once its payload is made; returns their length. */
static size_t encode_meta(Sender *sn, const FerryMultifdBatch *b, const FerryMultifdPayload *p)
{
    size_t mlen = FERRY_WIRE_MFD_PACKET_LEN;
    for (uint32_t e = 0; e < b->nextents; e++, mlen += FERRY_WIRE_MFD_EXTENT_LEN) {
        ferry__wire_mfd_extent_encode(&b->ext[e], sn->meta + mlen);
    }
    memcpy(sn->meta + mlen, b->zmap, (b->npages + 7) / 8);
    mlen += (b->npages + 7) / 8;
    ferry__wire_mfd_packet_encode(&(FerryWireMfdPacket){ .type = FERRY_MFD_PKT_PAGES, .flags = p->flags,
                                                         .block = b->block->index, .pages = b->npages,
                                                         .extents = b->nextents, .payload = (uint32_t)p->len,
                                                         .number = sn->seq++ },
                                  sn->meta);
    return mlen;
}

/*
 * The CRC32C of the packet: its first @mlen bytes in sn->meta, then its payload. A payload that is still the
 * running workload's RAM is copied in the same pass (into the channel's copybuf, which it is then sent from), so
 * that the CRC is of the bytes that leave.
 */
static uint32_t checksum(Sender *sn, FerryMultifdPayload *p, size_t mlen)
{
    uint32_t crc = ferry__crc32c(0, sn->meta, mlen);
    if (p->live && p->niov) {
        size_t off = 0;
        for (int i = 0; i < p->niov; i++) {
            crc = ferry__crc32c_copy(crc, p->copybuf + off, p->iov[i].iov_base, p->iov[i].iov_len);
            off += p->iov[i].iov_len;
        }
        p->iov[0] = (struct iovec){ .iov_base = p->copybuf, .iov_len = p->len };
        p->niov = 1;
        p->live = false;
        return crc;
    }
    for (int i = 0; i < p->niov; i++) {
        crc = ferry__crc32c(crc, p->iov[i].iov_base, p->iov[i].iov_len);
    }
    return crc;
}

/* Header and metadata, payload (at sn->iov + 1) and, with checksums, the CRC: one scatter-gather write. */
static bool write_packet(Sender *sn, const FerryMultifdPayload *p, size_t mlen, uint32_t crc, FerryError **errp)
{
    FERRY_ASSERT(p->iov == sn->iov + 1);
    uint8_t trailer[4];
    sn->iov[0] = (struct iovec){ .iov_base = sn->meta, .iov_len = mlen };
    int cnt = p->niov + 1;
    if (sn->owner->cfg.checksum) {
        ferry__put_be32(trailer, crc);
        sn->iov[cnt++] = (struct iovec){ .iov_base = trailer, .iov_len = sizeof(trailer) };
    }
    return ferry__channel_writev_all(sn->chan, sn->iov, cnt, errp);
}

static void count_sent(FerryMultifdSend *s, const FerryMultifdBatch *b, const FerryMultifdPayload *p, size_t mlen)
{
    add_stat(&s->bytes, mlen + p->len + (s->cfg.checksum ? 4 : 0));
    add_stat(&s->pages, b->npages);
    add_stat(&s->normal, p->npages);
    add_stat(&s->zero, b->npages - p->npages);
}

/* One PAGES packet: find the zero pages, gather the others, let the method make the payload, checksum, write. */
static bool write_pages(Sender *sn, FerryMultifdBatch *b, FerryError **errp)
{
    FerryMultifdSend *s = sn->owner;
    const size_t ps = s->cfg.page_size;
    ferry__multifd_detect_zero(b, ps, s->cfg.detect_zero);
    FerryMultifdPayload p = { .iov = sn->iov + 1, .live = !b->stopped, .copybuf = sn->copybuf };
    p.niov = ferry__multifd_gather(b->block->host, ps, b->ext, b->nextents, b->zmap, p.iov, &p.npages);
    p.raw = p.len = (size_t)p.npages * ps;
    if (p.raw && s->methods->send_prepare && !s->methods->send_prepare(sn->mstate, &p, errp)) {
        return false;
    }
    size_t mlen = encode_meta(sn, b, &p);
    uint32_t crc = s->cfg.checksum ? checksum(sn, &p, mlen) : 0;
    if (!write_packet(sn, &p, mlen, crc, errp)) {
        return false;
    }
    count_sent(s, b, &p, mlen);
    return true;
}

/* TLS: the handshake, then the hello inside the session (see ferry__multifd_send_new). */
static bool start_tls(Sender *sn, FerryError **errp)
{
    FerryMultifdSend *s = sn->owner;
    uint8_t hello[FERRY_WIRE_MFD_HELLO_LEN];
    ferry__wire_mfd_hello_encode((uint16_t)sn->index, s->cfg.session, hello);
    if (!ferry__tls_channel_handshake(sn->chan, errp) ||
        !ferry__channel_write_all(sn->chan, hello, sizeof(hello), errp)) {
        return false;
    }
    add_stat(&s->bytes, sizeof(hello));
    return true;
}

/* Keep @err (the thread's) as the first error of any channel thread, or drop it if there is one; wake every waiter. */
static void keep_error_locked(Sender *sn, FerryError *err)
{
    FerryMultifdSend *s = sn->owner;
    FERRY_ASSERT_HELD(&s->lock);
    ferry_error_prepend(&err, "multifd channel %u: ", sn->index);
    if (!s->err) {
        s->err = err;
    } else {
        ferry_error_free(err);
    }
    pthread_cond_broadcast(&s->cond);
}

/* Migration thread: hand a job over to @sn's thread (a batch, or the SYNC @sync if @batch is NULL). */
static void fill_slot_locked(Sender *sn, const FerryMultifdBatch *batch, uint64_t sync)
{
    FERRY_ASSERT_HELD(&sn->owner->lock);
    FERRY_ASSERT(sn->slot == SLOT_EMPTY);
    if (batch) {
        sn->pending.type = JOB_PAGES;
        sn->pending.batch = *batch;
    } else {
        sn->pending.type = JOB_SYNC;
        sn->pending.sync = sync;
    }
    sn->slot = SLOT_FULL;
    pthread_cond_broadcast(&sn->owner->cond);
}

/* Channel thread: wait for a job and take it into sn->cur, which gives the slot back to the migration thread.
 * False when there is none to take and the thread must stop (quit, or another thread's error). */
static bool take_job_locked(Sender *sn)
{
    FerryMultifdSend *s = sn->owner;
    FERRY_ASSERT_HELD(&s->lock);
    while (sn->slot == SLOT_EMPTY && !s->quit && !s->err) {
        ferry__mutex_cond_wait(&s->lock, &s->cond);
    }
    if (sn->slot == SLOT_EMPTY || s->err) {
        return false;
    }
    FERRY_ASSERT(!sn->busy);
    sn->cur = sn->pending;
    sn->slot = SLOT_EMPTY;
    sn->busy = true;
    pthread_cond_broadcast(&s->cond);
    return true;
}

static void *sender_thread(void *opaque)
{
    Sender *sn = opaque;
    FerryMultifdSend *s = sn->owner;
    FerryError *err = NULL;
    bool ok = !s->cfg.tls || start_tls(sn, &err);
    ferry__mutex_lock(&s->lock);
    while (ok && take_job_locked(sn)) {
        ferry__mutex_unlock(&s->lock);
        ok = sn->cur.type == JOB_SYNC ? write_sync(sn, sn->cur.sync, &err) : write_pages(sn, &sn->cur.batch, &err);
        ferry__mutex_lock(&s->lock);
        sn->busy = false;
        pthread_cond_broadcast(&s->cond);
    }
    if (!ok) {
        keep_error_locked(sn, err);
    }
    ferry__mutex_unlock(&s->lock);
    return NULL;
}

/*
 * Connect channel @sn, set its timeout and either write its hello or, with TLS, wrap it (its thread does the
 * handshake and the hello); then set up the method's state and the copy buffer. The error names no channel.
 */
static bool open_channel(Sender *sn, const FerryMigrationAddress *addr, int cancel_fd, FerryError **errp)
{
    FerryMultifdSend *s = sn->owner;
    const FerryMultifdConfig *cfg = &s->cfg;
    sn->chan = ferry__channel_connect(addr, cancel_fd, errp);
    if (!sn->chan || !ferry__channel_set_timeout(sn->chan, cfg->timeout_ms, errp)) {
        return false;
    }
    if (cfg->tls) {
        /* Wrapped now, so that shutdown reaches it. The timeout was set on the socket, which the TLS channel moves
         * its records through. */
        sn->chan = ferry__tls_channel_new(sn->chan, cfg->tls, errp);
        if (!sn->chan) {
            return false;
        }
    } else {
        uint8_t hello[FERRY_WIRE_MFD_HELLO_LEN];
        ferry__wire_mfd_hello_encode((uint16_t)sn->index, cfg->session, hello);
        if (!ferry__channel_write_all(sn->chan, hello, sizeof(hello), errp)) {
            return false;
        }
        s->bytes += sizeof(hello);
    }
    if (s->methods->send_setup && !s->methods->send_setup(cfg, &sn->mstate, errp)) {
        return false;
    }
    sn->copybuf = ferry__xmalloc(FERRY_WIRE_MFD_MAX_PAGES * cfg->page_size);
    return true;
}

FerryMultifdSend *ferry__multifd_send_new(const FerryMigrationAddress *addr, int cancel_fd,
                                          const FerryMultifdConfig *cfg, FerryError **errp)
{
    const FerryMultifdMethods *methods = ferry__multifd_methods(cfg->compression, errp);
    if (!methods) {
        return NULL;
    }
    FerryMultifdSend *s = ferry__xcalloc(1, sizeof(*s));
    ferry__mutex_init(&s->lock);
    pthread_cond_init(&s->cond, NULL);
    s->cfg = *cfg;
    s->methods = methods;
    s->n = cfg->channels;
    s->s = ferry__xcalloc(s->n, sizeof(*s->s));
    for (unsigned i = 0; i < s->n; i++) {
        s->s[i].owner = s;
        s->s[i].index = i;
        FerryError *err = NULL;
        if (!open_channel(&s->s[i], addr, cancel_fd, &err)) {
            ferry_error_prepend(&err, "multifd channel %u: ", i);
            ferry_error_propagate(errp, err);
            ferry__multifd_send_free(s, true);
            return NULL;
        }
    }
    for (unsigned i = 0; i < s->n; i++) {
        if (pthread_create(&s->s[i].thread, NULL, sender_thread, &s->s[i]) != 0) {
            ferry_error_setg(errp, "multifd channel %u: cannot start its thread", i);
            ferry__multifd_send_free(s, true);
            return NULL;
        }
        char name[16]; /* the kernel keeps 15 bytes */
        snprintf(name, sizeof(name), "mig/src/mfd%u", i % 10000u);
        pthread_setname_np(s->s[i].thread, name);
        s->s[i].started = true;
    }
    return s;
}

/* Fail with the first thread error, if any. */
static bool check_err_locked(FerryMultifdSend *s, FerryError **errp)
{
    FERRY_ASSERT_HELD(&s->lock);
    if (s->err) {
        ferry_error_propagate(errp, ferry_error_copy(s->err));
        return false;
    }
    return true;
}

bool ferry__multifd_send_batch(FerryMultifdSend *s, const FerryMultifdBatch *batch, FerryError **errp)
{
    ferry__mutex_lock(&s->lock);
    for (;;) {
        if (!check_err_locked(s, errp)) {
            ferry__mutex_unlock(&s->lock);
            return false;
        }
        for (unsigned k = 0; k < s->n; k++) {
            Sender *sn = &s->s[(s->next + k) % s->n];
            if (sn->slot == SLOT_EMPTY) {
                fill_slot_locked(sn, batch, 0);
                s->next = (sn->index + 1) % s->n;
                ferry__mutex_unlock(&s->lock);
                return true;
            }
        }
        ferry__mutex_cond_wait(&s->lock, &s->cond);
    }
}

bool ferry__multifd_send_sync(FerryMultifdSend *s, uint64_t sync, FerryError **errp)
{
    ferry__mutex_lock(&s->lock);
    for (unsigned i = 0; i < s->n; i++) {
        Sender *sn = &s->s[i];
        while (sn->slot == SLOT_FULL && !s->err) {
            ferry__mutex_cond_wait(&s->lock, &s->cond);
        }
        if (!check_err_locked(s, errp)) {
            ferry__mutex_unlock(&s->lock);
            return false;
        }
        fill_slot_locked(sn, NULL, sync);
    }
    ferry__mutex_unlock(&s->lock);
    return true;
}

bool ferry__multifd_send_flush(FerryMultifdSend *s, FerryError **errp)
{
    ferry__mutex_lock(&s->lock);
    for (unsigned i = 0; i < s->n; i++) {
        while ((s->s[i].slot == SLOT_FULL || s->s[i].busy) && !s->err) {
            ferry__mutex_cond_wait(&s->lock, &s->cond);
        }
    }
    bool ok = check_err_locked(s, errp);
    ferry__mutex_unlock(&s->lock);
    return ok;
}

void ferry__multifd_send_stats(FerryMultifdSend *s, FerryMultifdStats *out)
{
    out->bytes = __atomic_load_n(&s->bytes, __ATOMIC_RELAXED);
    out->pages = __atomic_load_n(&s->pages, __ATOMIC_RELAXED);
    out->normal = __atomic_load_n(&s->normal, __ATOMIC_RELAXED);
    out->zero = __atomic_load_n(&s->zero, __ATOMIC_RELAXED);
}

void ferry__multifd_send_shutdown(FerryMultifdSend *s)
{
    for (unsigned i = 0; i < s->n; i++) {
        if (s->s[i].chan) {
            ferry__channel_shutdown(s->s[i].chan);
        }
    }
}

void ferry__multifd_send_free(FerryMultifdSend *s, bool abort)
{
    if (!s) {
        return;
    }
    if (abort) {
        ferry__multifd_send_shutdown(s);
    }
    ferry__mutex_lock(&s->lock);
    s->quit = true;
    pthread_cond_broadcast(&s->cond);
    ferry__mutex_unlock(&s->lock);
    for (unsigned i = 0; i < s->n; i++) {
        Sender *sn = &s->s[i];
        if (sn->started) {
            pthread_join(sn->thread, NULL);
        }
        ferry__channel_free(sn->chan);
        if (sn->mstate) {
            s->methods->send_cleanup(sn->mstate);
        }
        free(sn->copybuf);
    }
    free(s->s);
    ferry_error_free(s->err);
    ferry__mutex_destroy(&s->lock);
    pthread_cond_destroy(&s->cond);
    free(s);
}
