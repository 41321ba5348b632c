/*
 * The source side of multifd: one thread per extra channel, each taking batches of pages from the migration
 * thread and writing them as packets (wire.h: header, extents, zero bitmap, payload, CRC32C). A thread checks
 * pages for zero when asked (zero-page-detection=multifd), compresses with its own compressor, and otherwise
 * hands RAM to the kernel with one scatter-gather write per packet; it copies pages first only where a checksum or
 * the compressor must see stable bytes while the workload runs.
 *
 * Each thread has one slot the migration thread fills while the thread writes the previous batch, so that page
 * scanning and sending overlap. The first error of any thread is kept (naming its channel); the thread stops, and
 * every later call fails with that error. This file does not choose pages or synchronise passes; source.c does.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "multifd/multifd.h"
#include "util/util.h"

typedef enum JobType { JOB_PAGES, JOB_SYNC } JobType;

typedef struct Job {
    JobType type;
    uint64_t sync;
    FerryMultifdBatch batch;
} Job;

typedef struct Sender {
    FerryMultifdSend *owner;
    unsigned index;
    FerryChannel *chan;
    pthread_t thread;
    bool started;
    /* Guarded by owner->lock. */
    bool has_pending;
    bool busy;
    Job pending;
    /* The thread's own. */
    Job cur;
    uint64_t seq;
    FerryCompressor *comp;
    uint8_t *copybuf; /* FERRY_WIRE_MFD_MAX_PAGES pages */
    uint8_t *cbuf;    /* the largest compressed payload */
    uint8_t meta[FERRY_WIRE_MFD_PACKET_LEN + FERRY_WIRE_MFD_MAX_PAGES * FERRY_WIRE_MFD_EXTENT_LEN +
                 FERRY_WIRE_MFD_MAX_PAGES / 8];
    struct iovec iov[FERRY_WIRE_MFD_MAX_PAGES + 2];
} Sender;

struct FerryMultifdSend {
    pthread_mutex_t lock;
    pthread_cond_t cond; /* broadcast on every change of a slot, a thread's state or err */
    FerryMultifdConfig cfg;
    Sender *s;
    unsigned n;
    unsigned next;       /* round robin */
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

static bool write_pages(Sender *sn, FerryMultifdBatch *b, FerryError **errp)
{
    FerryMultifdSend *s = sn->owner;
    const size_t ps = s->cfg.page_size;
    const uint32_t n = b->npages;
    const uint32_t zb = (n + 7) / 8;

    if (!b->zmap_valid) {
        memset(b->zmap, 0, sizeof(b->zmap));
    }
    /* The pages with data, merged into runs of consecutive memory. */
    int niov = 0;
    uint32_t nonzero = 0, k = 0;
    for (uint32_t e = 0; e < b->nextents; e++) {
        for (uint32_t j = 0; j < b->ext[e].count; j++, k++) {
            uint8_t *p = b->block->host + (b->ext[e].first + j) * ps;
            if (!b->zmap_valid && s->cfg.detect_zero && ferry__buffer_is_zero(p, ps)) {
                b->zmap[k / 8] |= (uint8_t)(1u << (k % 8));
            }
            if ((b->zmap[k / 8] >> (k % 8)) & 1) {
                continue;
            }
            nonzero++;
            if (niov && (uint8_t *)sn->iov[niov].iov_base + sn->iov[niov].iov_len == p) {
                sn->iov[niov].iov_len += ps;
            } else {
                sn->iov[++niov] = (struct iovec){ .iov_base = p, .iov_len = ps };
            }
        }
    }
    /* iov[0] is the header, extents and bitmap; iov[1..niov] the data; iov[niov + 1] the CRC. */
    const size_t raw = (size_t)nonzero * ps;
    uint8_t flags = 0;
    size_t payload = raw;
    bool crc_done = false;
    uint32_t crc = 0;
    size_t mlen = FERRY_WIRE_MFD_PACKET_LEN;
    for (uint32_t e = 0; e < b->nextents; e++, mlen += FERRY_WIRE_MFD_EXTENT_LEN) {
        ferry__wire_mfd_extent_encode(&b->ext[e], sn->meta + mlen);
    }
    memcpy(sn->meta + mlen, b->zmap, zb);
    mlen += zb;

    if (raw && sn->comp) {
        if (!b->stopped) {
            size_t off = 0;
            for (int i = 1; i <= niov; i++) {
                memcpy(sn->copybuf + off, sn->iov[i].iov_base, sn->iov[i].iov_len);
                off += sn->iov[i].iov_len;
            }
            sn->iov[1] = (struct iovec){ .iov_base = sn->copybuf, .iov_len = raw };
            niov = 1;
        }
        size_t clen;
        if (!ferry__compress(sn->comp, sn->iov + 1, niov, sn->cbuf, ferry__wire_mfd_payload_max(raw), &clen,
                             errp)) {
            return false;
        }
        sn->iov[1] = (struct iovec){ .iov_base = sn->cbuf, .iov_len = clen };
        niov = 1;
        payload = clen;
        flags |= FERRY_MFD_PKT_COMPRESSED;
    }
    ferry__wire_mfd_packet_encode(&(FerryWireMfdPacket){ .type = FERRY_MFD_PKT_PAGES, .flags = flags,
                                                         .block = b->block->index, .pages = n,
                                                         .extents = b->nextents, .payload = (uint32_t)payload,
                                                         .number = sn->seq++ },
                                  sn->meta);
    if (s->cfg.checksum) {
        crc = ferry__crc32c(0, sn->meta, mlen);
        if (raw && !sn->comp && !b->stopped) {
            /* Running: checksum a copy, in the same pass as the copy, so that the CRC is of what leaves. */
            size_t off = 0;
            for (int i = 1; i <= niov; i++) {
                crc = ferry__crc32c_copy(crc, sn->copybuf + off, sn->iov[i].iov_base, sn->iov[i].iov_len);
                off += sn->iov[i].iov_len;
            }
            sn->iov[1] = (struct iovec){ .iov_base = sn->copybuf, .iov_len = raw };
            niov = raw ? 1 : 0;
            crc_done = true;
        }
        if (!crc_done) {
            for (int i = 1; i <= niov; i++) {
                crc = ferry__crc32c(crc, sn->iov[i].iov_base, sn->iov[i].iov_len);
            }
        }
    }
    uint8_t trailer[4];
    sn->iov[0] = (struct iovec){ .iov_base = sn->meta, .iov_len = mlen };
    int cnt = niov + 1;
    if (s->cfg.checksum) {
        ferry__put_be32(trailer, crc);
        sn->iov[cnt++] = (struct iovec){ .iov_base = trailer, .iov_len = sizeof(trailer) };
    }
    if (!ferry__channel_writev_all(sn->chan, sn->iov, cnt, errp)) {
        return false;
    }
    add_stat(&s->bytes, mlen + payload + (s->cfg.checksum ? 4 : 0));
    add_stat(&s->pages, n);
    add_stat(&s->normal, nonzero);
    add_stat(&s->zero, n - nonzero);
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

static void *sender_thread(void *opaque)
{
    Sender *sn = opaque;
    FerryMultifdSend *s = sn->owner;
    if (s->cfg.tls) {
        FerryError *err = NULL;
        if (!start_tls(sn, &err)) {
            ferry_error_prepend(&err, "multifd channel %u: ", sn->index);
            pthread_mutex_lock(&s->lock);
            if (!s->err) {
                s->err = err;
            } else {
                ferry_error_free(err);
            }
            pthread_cond_broadcast(&s->cond);
            pthread_mutex_unlock(&s->lock);
            return NULL;
        }
    }
    pthread_mutex_lock(&s->lock);
    for (;;) {
        while (!sn->has_pending && !s->quit && !s->err) {
            pthread_cond_wait(&s->cond, &s->lock);
        }
        if (!sn->has_pending || s->err) {
            break;
        }
        sn->cur = sn->pending;
        sn->has_pending = false;
        sn->busy = true;
        pthread_cond_broadcast(&s->cond);
        pthread_mutex_unlock(&s->lock);

        FerryError *err = NULL;
        bool ok = sn->cur.type == JOB_SYNC ? write_sync(sn, sn->cur.sync, &err) : write_pages(sn, &sn->cur.batch, &err);

        pthread_mutex_lock(&s->lock);
        sn->busy = false;
        if (!ok) {
            ferry_error_prepend(&err, "multifd channel %u: ", sn->index);
            if (!s->err) {
                s->err = err;
            } else {
                ferry_error_free(err);
            }
        }
        pthread_cond_broadcast(&s->cond);
        if (!ok) {
            break;
        }
    }
    pthread_mutex_unlock(&s->lock);
    return NULL;
}

FerryMultifdSend *ferry__multifd_send_new(const FerryMigrationAddress *addr, int cancel_fd,
                                          const FerryMultifdConfig *cfg, FerryError **errp)
{
    FerryMultifdSend *s = ferry__xcalloc(1, sizeof(*s));
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->cond, NULL);
    s->cfg = *cfg;
    s->n = cfg->channels;
    s->s = ferry__xcalloc(s->n, sizeof(*s->s));
    size_t raw = FERRY_WIRE_MFD_MAX_PAGES * cfg->page_size;
    for (unsigned i = 0; i < s->n; i++) {
        Sender *sn = &s->s[i];
        sn->owner = s;
        sn->index = i;
        FerryError *err = NULL;
        sn->chan = ferry__channel_connect(addr, cancel_fd, &err);
        uint8_t hello[FERRY_WIRE_MFD_HELLO_LEN];
        ferry__wire_mfd_hello_encode((uint16_t)i, cfg->session, hello);
        bool ready = false;
        if (sn->chan && !ferry__channel_set_timeout(sn->chan, cfg->timeout_ms, &err)) {
            /* err says why */
        } else if (sn->chan && cfg->tls) {
            /* Wrapped now, so that shutdown reaches it; its thread does the handshake and the hello. The timeout
             * was set on the socket, which the TLS channel moves its records through. */
            sn->chan = ferry__tls_channel_new(sn->chan, cfg->tls, &err);
            ready = sn->chan != NULL;
        } else if (sn->chan && ferry__channel_write_all(sn->chan, hello, sizeof(hello), &err)) {
            s->bytes += sizeof(hello);
            ready = true;
        }
        if (ready && cfg->compression != FERRY_MFD_COMP_NONE) {
            sn->comp = ferry__compressor_new(cfg->compression, cfg->level, &err);
        }
        if (err) {
            ferry_error_prepend(&err, "multifd channel %u: ", i);
            ferry_error_propagate(errp, err);
            ferry__multifd_send_free(s, true);
            return NULL;
        }
        sn->copybuf = ferry__xmalloc(raw);
        if (sn->comp) {
            sn->cbuf = ferry__xmalloc(ferry__wire_mfd_payload_max(raw));
        }
    }
    for (unsigned i = 0; i < s->n; i++) {
        if (pthread_create(&s->s[i].thread, NULL, sender_thread, &s->s[i]) != 0) {
            ferry_error_setg(errp, "multifd channel %u: cannot start its thread", i);
            ferry__multifd_send_free(s, true);
            return NULL;
        }
        s->s[i].started = true;
    }
    return s;
}

/* With lock held: fail with the first thread error, if any. */
static bool check_err_locked(FerryMultifdSend *s, FerryError **errp)
{
    if (s->err) {
        ferry_error_propagate(errp, ferry_error_copy(s->err));
        return false;
    }
    return true;
}

bool ferry__multifd_send_batch(FerryMultifdSend *s, const FerryMultifdBatch *batch, FerryError **errp)
{
    pthread_mutex_lock(&s->lock);
    for (;;) {
        if (!check_err_locked(s, errp)) {
            pthread_mutex_unlock(&s->lock);
            return false;
        }
        for (unsigned k = 0; k < s->n; k++) {
            Sender *sn = &s->s[(s->next + k) % s->n];
            if (!sn->has_pending) {
                sn->pending.type = JOB_PAGES;
                sn->pending.batch = *batch;
                sn->has_pending = true;
                s->next = (sn->index + 1) % s->n;
                pthread_cond_broadcast(&s->cond);
                pthread_mutex_unlock(&s->lock);
                return true;
            }
        }
        pthread_cond_wait(&s->cond, &s->lock);
    }
}

bool ferry__multifd_send_sync(FerryMultifdSend *s, uint64_t sync, FerryError **errp)
{
    pthread_mutex_lock(&s->lock);
    for (unsigned i = 0; i < s->n; i++) {
        Sender *sn = &s->s[i];
        while (sn->has_pending && !s->err) {
            pthread_cond_wait(&s->cond, &s->lock);
        }
        if (!check_err_locked(s, errp)) {
            pthread_mutex_unlock(&s->lock);
            return false;
        }
        sn->pending.type = JOB_SYNC;
        sn->pending.sync = sync;
        sn->has_pending = true;
        pthread_cond_broadcast(&s->cond);
    }
    pthread_mutex_unlock(&s->lock);
    return true;
}

bool ferry__multifd_send_flush(FerryMultifdSend *s, FerryError **errp)
{
    pthread_mutex_lock(&s->lock);
    for (unsigned i = 0; i < s->n; i++) {
        while ((s->s[i].has_pending || s->s[i].busy) && !s->err) {
            pthread_cond_wait(&s->cond, &s->lock);
        }
    }
    bool ok = check_err_locked(s, errp);
    pthread_mutex_unlock(&s->lock);
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
    pthread_mutex_lock(&s->lock);
    s->quit = true;
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->lock);
    for (unsigned i = 0; i < s->n; i++) {
        Sender *sn = &s->s[i];
        if (sn->started) {
            pthread_join(sn->thread, NULL);
        }
        ferry__channel_free(sn->chan);
        ferry__compressor_free(sn->comp);
        free(sn->copybuf);
        free(sn->cbuf);
    }
    free(s->s);
    ferry_error_free(s->err);
    pthread_mutex_destroy(&s->lock);
    pthread_cond_destroy(&s->cond);
    free(s);
}
