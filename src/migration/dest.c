/*
 * The destination side, run on its own thread (ferry__dest_thread): accept one connection, check the stream
 * header and the CONFIG record against this process's RAM blocks, write RAM records straight into the (not yet
 * running) RAM, stage device sections, and only after the END record has been received and its totals checked,
 * load the sections, acknowledge on the return path, and resume the workload.
 *
 * Page faults cost more than copies on these machines (shared/docs/PLATFORM.md), so a second thread faults in
 * the ranges announced by POPULATE_HINT records ahead of the data, in parallel with the receive loop.
 *
 * On a channel without a return path (exec, file, a pipe) there is no ACK or NACK: the stream's own checks (CONFIG,
 * END totals) decide.
 *
 * On any error nothing runs: the reason goes back to the source (NACK), RAM is discarded so that it reads as
 * zero again (the next attempt relies on that, since pass 1 does not send never-populated pages), and the process
 * exits non-zero unless exit-on-error=false asked it to stay up and report.
 */
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "migration/migration-priv.h"
#include "stream/stream.h"
#include "util/util.h"
#include "visitor/visitor-int.h"
#include "wire/wire.h"

typedef struct PopulateRange {
    FerryRamBlock *b;
    uint64_t first, count;
} PopulateRange;

typedef struct Staged {
    size_t section;
    uint32_t version;
    uint8_t *data; /* the whole record payload */
    size_t off, len;
} Staged;

typedef struct Dest {
    FerryMigration *m;
    FerryChannel *chan;
    FerryStream *s;
    size_t ps;
    bool config_seen;
    uint64_t pages;
    uint64_t normal, duplicate;
    Staged *staged;
    size_t nstaged;
    bool source_running;
    uint8_t end[16]; /* the END record's payload */

    pthread_t pop_thread;
    bool pop_started;
    pthread_mutex_t pop_lock;
    pthread_cond_t pop_cond;
    PopulateRange *pop_q;
    size_t pop_head, pop_len, pop_cap;
    bool pop_stop;
} Dest;

/* The populate thread: fault in announced ranges, 16 MiB at a time so that stop is seen quickly. */
static void *populate_thread(void *opaque)
{
    Dest *d = opaque;
    const uint64_t chunk = (16u << 20) / d->ps;
    pthread_mutex_lock(&d->pop_lock);
    for (;;) {
        while (!d->pop_stop && d->pop_head == d->pop_len) {
            pthread_cond_wait(&d->pop_cond, &d->pop_lock);
        }
        if (d->pop_stop) {
            break;
        }
        PopulateRange *r = &d->pop_q[d->pop_head];
        uint64_t n = FERRY_MIN(r->count, chunk);
        FerryRamBlock *b = r->b;
        uint64_t first = r->first;
        r->first += n;
        r->count -= n;
        if (r->count == 0) {
            d->pop_head++;
        }
        pthread_mutex_unlock(&d->pop_lock);
        ferry__ram_block_populate_range(b, first, n);
        pthread_mutex_lock(&d->pop_lock);
    }
    pthread_mutex_unlock(&d->pop_lock);
    return NULL;
}

static void populate_queue(Dest *d, FerryRamBlock *b, uint64_t first, uint64_t count)
{
    pthread_mutex_lock(&d->pop_lock);
    if (d->pop_len == d->pop_cap) {
        d->pop_cap = d->pop_cap ? d->pop_cap * 2 : 64;
        d->pop_q = ferry__xrealloc(d->pop_q, d->pop_cap * sizeof(*d->pop_q));
    }
    d->pop_q[d->pop_len++] = (PopulateRange){ .b = b, .first = first, .count = count };
    pthread_cond_signal(&d->pop_cond);
    pthread_mutex_unlock(&d->pop_lock);
}

static void populate_stop(Dest *d)
{
    if (!d->pop_started) {
        return;
    }
    pthread_mutex_lock(&d->pop_lock);
    d->pop_stop = true;
    pthread_cond_signal(&d->pop_cond);
    pthread_mutex_unlock(&d->pop_lock);
    pthread_join(d->pop_thread, NULL);
    d->pop_started = false;
}

static bool read_payload(Dest *d, uint32_t len, uint32_t max, const char *what, uint8_t **out, FerryError **errp)
{
    if (len > max) {
        ferry_error_setg(errp, "%s record of %u bytes exceeds the limit of %u", what, len, max);
        return false;
    }
    uint8_t *buf = ferry__xmalloc(len ? len : 1);
    if (!ferry__stream_read(d->s, buf, len)) {
        free(buf);
        ferry__stream_check(d->s, errp);
        return false;
    }
    *out = buf;
    return true;
}

static bool load_config(Dest *d, uint32_t len, FerryError **errp)
{
    FerryMigration *m = d->m;
    uint8_t *buf;
    if (!read_payload(d, len, FERRY_WIRE_MAX_CONTROL_LEN, "CONFIG", &buf, errp)) {
        return false;
    }
    FerryWireReader r;
    ferry__wire_reader_init(&r, buf, len);
    uint32_t ps = ferry__wire_get_be32(&r);
    uint32_t n = ferry__wire_get_be32(&r);
    bool ok = false;
    if (r.failed) {
        ferry_error_setg(errp, "CONFIG record is truncated");
        goto out;
    }
    if (ps != d->ps) {
        ferry_error_setg(errp, "page size mismatch: the stream has %u, this process %zu", ps, d->ps);
        goto out;
    }
    if (n != m->nblocks) {
        ferry_error_setg(errp, "RAM block count mismatch: the stream has %u, this process %zu", n, m->nblocks);
        goto out;
    }
    for (uint32_t i = 0; i < n; i++) {
        char name[256];
        if (!ferry__wire_get_name(&r, name)) {
            ferry_error_setg(errp, "CONFIG record: bad name of RAM block %u", i);
            goto out;
        }
        uint64_t size = ferry__wire_get_be64(&r);
        if (r.failed) {
            ferry_error_setg(errp, "CONFIG record is truncated");
            goto out;
        }
        FerryRamBlock *b = m->blocks[i];
        if (strcmp(name, b->name) != 0) {
            ferry_error_setg(errp, "RAM block %u is '%s' in the stream but '%s' in this process", i, name, b->name);
            goto out;
        }
        if (size != b->size) {
            ferry_error_setg(errp, "RAM block '%s' size mismatch: the stream has %llu bytes, this process %llu",
                             name, (unsigned long long)size, (unsigned long long)b->size);
            goto out;
        }
    }
    if (r.pos != r.len) {
        ferry_error_setg(errp, "CONFIG record has %zu trailing bytes", r.len - r.pos);
        goto out;
    }
    d->config_seen = true;
    ok = true;
out:
    free(buf);
    return ok;
}

static bool load_hint(Dest *d, uint32_t len, FerryError **errp)
{
    uint8_t *buf;
    if (!read_payload(d, len, FERRY_WIRE_MAX_CONTROL_LEN + 64, "POPULATE_HINT", &buf, errp)) {
        return false;
    }
    FerryWireReader r;
    ferry__wire_reader_init(&r, buf, len);
    uint32_t bi = ferry__wire_get_be32(&r);
    uint32_t count = ferry__wire_get_be32(&r);
    bool ok = false;
    if (r.failed || bi >= d->m->nblocks || (uint64_t)count * 16 != r.len - r.pos) {
        ferry_error_setg(errp, "malformed POPULATE_HINT record (block %u, %u ranges, %u bytes)", bi, count, len);
        goto out;
    }
    FerryRamBlock *b = d->m->blocks[bi];
    for (uint32_t i = 0; i < count; i++) {
        uint64_t first = ferry__wire_get_be64(&r), n = ferry__wire_get_be64(&r);
        if (first >= b->npages || n > b->npages - first) {
            ferry_error_setg(errp, "POPULATE_HINT range %llu+%llu is outside RAM block '%s'",
                             (unsigned long long)first, (unsigned long long)n, b->name);
            goto out;
        }
        populate_queue(d, b, first, n);
    }
    ok = true;
out:
    free(buf);
    return ok;
}

static bool load_pages(Dest *d, uint32_t len, FerryError **errp)
{
    uint8_t run[FERRY_WIRE_RAM_RUN_HEADER_LEN];
    uint8_t zmap[FERRY_WIRE_MAX_RUN_PAGES / 8];
    if (!d->config_seen) {
        ferry_error_setg(errp, "RAM_PAGES record before the CONFIG record");
        return false;
    }
    if (len < sizeof(run) || !ferry__stream_read(d->s, run, sizeof(run))) {
        if (len < sizeof(run)) {
            ferry_error_setg(errp, "RAM_PAGES record of %u bytes is too short", len);
        } else {
            ferry__stream_check(d->s, errp);
        }
        return false;
    }
    uint32_t bi = ferry__get_be32(run);
    uint32_t flags = ferry__get_be32(run + 4);
    uint64_t first = ferry__get_be64(run + 8);
    uint32_t n = ferry__get_be32(run + 16);
    if (bi >= d->m->nblocks) {
        ferry_error_setg(errp, "RAM_PAGES record names block %u, this process has %zu", bi, d->m->nblocks);
        return false;
    }
    FerryRamBlock *b = d->m->blocks[bi];
    if (flags != 0 || n == 0 || n > FERRY_WIRE_MAX_RUN_PAGES || first >= b->npages || n > b->npages - first) {
        ferry_error_setg(errp, "bad RAM_PAGES record: block '%s', pages %llu+%u, flags 0x%x", b->name,
                         (unsigned long long)first, n, flags);
        return false;
    }
    uint32_t zb = (n + 7) / 8;
    if (!ferry__stream_read(d->s, zmap, zb)) {
        ferry__stream_check(d->s, errp);
        return false;
    }
    uint32_t zeros = 0;
    for (uint32_t i = 0; i < n; i++) {
        zeros += (zmap[i / 8] >> (i % 8)) & 1;
    }
    uint64_t expect = FERRY_WIRE_RAM_RUN_HEADER_LEN + zb + (uint64_t)(n - zeros) * d->ps;
    if (len != expect) {
        ferry_error_setg(errp, "RAM_PAGES record for block '%s' pages %llu+%u is %u bytes, expected %llu", b->name,
                         (unsigned long long)first, n, len, (unsigned long long)expect);
        return false;
    }
    /* Read runs of consecutive data pages with one call each, straight into RAM. */
    uint32_t i = 0;
    while (i < n) {
        uint8_t *p = b->host + (first + i) * d->ps;
        if ((zmap[i / 8] >> (i % 8)) & 1) {
            if (!ferry__buffer_is_zero(p, d->ps)) {
                memset(p, 0, d->ps);
            }
            i++;
            continue;
        }
        uint32_t j = i;
        while (j < n && !((zmap[j / 8] >> (j % 8)) & 1)) {
            j++;
        }
        if (!ferry__stream_read(d->s, p, (size_t)(j - i) * d->ps)) {
            ferry__stream_check(d->s, errp);
            return false;
        }
        i = j;
    }
    d->pages += n;
    d->normal += n - zeros;
    d->duplicate += zeros;
    return true;
}

static bool load_section(Dest *d, uint32_t len, FerryError **errp)
{
    FerryMigration *m = d->m;
    uint8_t *buf;
    if (!read_payload(d, len, FERRY_WIRE_MAX_SECTION_LEN + 512, "SECTION", &buf, errp)) {
        return false;
    }
    FerryWireReader r;
    ferry__wire_reader_init(&r, buf, len);
    char name[256];
    bool good_name = ferry__wire_get_name(&r, name);
    uint32_t instance = ferry__wire_get_be32(&r);
    uint32_t version = ferry__wire_get_be32(&r);
    if (!good_name || r.failed) {
        free(buf);
        ferry_error_setg(errp, "malformed SECTION record header");
        return false;
    }
    size_t idx;
    for (idx = 0; idx < m->nsections; idx++) {
        if (strcmp(m->sections[idx].name, name) == 0 && m->sections[idx].instance_id == instance) {
            break;
        }
    }
    if (idx == m->nsections) {
        free(buf);
        ferry_error_setg(errp, "unknown section '%s' instance %u in the stream", name, instance);
        return false;
    }
    for (size_t i = 0; i < d->nstaged; i++) {
        if (d->staged[i].section == idx) {
            free(buf);
            ferry_error_setg(errp, "section '%s' instance %u appears twice in the stream", name, instance);
            return false;
        }
    }
    d->staged = ferry__xrealloc(d->staged, (d->nstaged + 1) * sizeof(*d->staged));
    d->staged[d->nstaged++] = (Staged){ .section = idx, .version = version, .data = buf, .off = r.pos,
                                        .len = r.len - r.pos };
    return true;
}

/* END, read: its totals are checked by finish_end() once the record's CRC has been. */
static bool load_end(Dest *d, uint32_t len, FerryError **errp)
{
    if (len != sizeof(d->end)) {
        ferry_error_setg(errp, "END record of %u bytes, expected %zu", len, sizeof(d->end));
        return false;
    }
    if (!ferry__stream_read(d->s, d->end, sizeof(d->end))) {
        ferry__stream_check(d->s, errp);
        return false;
    }
    return true;
}

/* After END: check the totals, then load the staged sections. Nothing was applied to device state before this. */
static bool finish_end(Dest *d, FerryError **errp)
{
    FerryMigration *m = d->m;
    uint32_t flags = ferry__get_be32(d->end);
    uint64_t pages = ferry__get_be64(d->end + 4);
    uint32_t nsec = ferry__get_be32(d->end + 12);
    if (!d->config_seen) {
        ferry_error_setg(errp, "END record before the CONFIG record");
        return false;
    }
    if (pages != d->pages) {
        ferry_error_setg(errp, "stream damaged: the source sent %llu pages, %llu arrived",
                         (unsigned long long)pages, (unsigned long long)d->pages);
        return false;
    }
    if (nsec != d->nstaged) {
        ferry_error_setg(errp, "stream damaged: the source sent %u sections, %zu arrived", nsec, d->nstaged);
        return false;
    }
    for (size_t i = 0; i < m->nsections; i++) {
        size_t j;
        for (j = 0; j < d->nstaged && d->staged[j].section != i; j++) {
        }
        if (j == d->nstaged) {
            ferry_error_setg(errp, "section '%s' instance %u is missing from the stream", m->sections[i].name,
                             m->sections[i].instance_id);
            return false;
        }
    }
    for (size_t j = 0; j < d->nstaged; j++) {
        Staged *st = &d->staged[j];
        FerrySection *sec = &m->sections[st->section];
        FerryVisitor *v = ferry__visitor_input_new(st->data + st->off, st->len);
        bool ok = sec->fn(v, sec->opaque, st->version, errp) && ferry__visitor_input_finish(v, errp);
        ferry__visitor_free(v);
        if (!ok) {
            ferry_error_prepend(errp, "loading section '%s' instance %u (version %u): ", sec->name,
                                sec->instance_id, st->version);
            return false;
        }
    }
    d->source_running = flags & FERRY_END_SOURCE_RUNNING;
    return true;
}

static void update_stats(Dest *d)
{
    FerryMigration *m = d->m;
    pthread_mutex_lock(&m->lock);
    m->stats.transferred = ferry__stream_bytes_read(d->s);
    m->stats.normal = d->normal;
    m->stats.duplicate = d->duplicate;
    pthread_mutex_unlock(&m->lock);
}

static bool receive(Dest *d, FerryError **errp)
{
    uint8_t hdr[FERRY_WIRE_HEADER_LEN];
    if (!ferry__stream_read(d->s, hdr, sizeof(hdr))) {
        ferry__stream_check(d->s, errp);
        return false;
    }
    if (!ferry__wire_decode_header(hdr, errp)) {
        return false;
    }
    for (;;) {
        uint8_t rh_bytes[FERRY_WIRE_RECORD_HEADER_LEN];
        FerryRecordHeader rh;
        uint64_t offset = ferry__stream_bytes_read(d->s);
        ferry__stream_read_crc_reset(d->s);
        if (!ferry__stream_read(d->s, rh_bytes, sizeof(rh_bytes))) {
            ferry__stream_check(d->s, errp);
            return false;
        }
        ferry__wire_decode_record(rh_bytes, &rh);
        bool ok;
        switch (rh.type) {
        case FERRY_REC_CONFIG:
            ok = load_config(d, rh.length, errp);
            break;
        case FERRY_REC_POPULATE_HINT:
            ok = load_hint(d, rh.length, errp);
            break;
        case FERRY_REC_RAM_PAGES:
            ok = load_pages(d, rh.length, errp);
            break;
        case FERRY_REC_PASS_END: {
            uint8_t p[8];
            ok = rh.length == 8 && ferry__stream_read(d->s, p, 8);
            if (ok) {
                pthread_mutex_lock(&d->m->lock);
                d->m->stats.dirty_sync_count = ferry__get_be64(p);
                pthread_mutex_unlock(&d->m->lock);
            } else if (!ferry__stream_check(d->s, errp)) {
            } else {
                ferry_error_setg(errp, "PASS_END record of %u bytes, expected 8", rh.length);
            }
            break;
        }
        case FERRY_REC_SECTION:
            ok = load_section(d, rh.length, errp);
            break;
        case FERRY_REC_END:
            ok = load_end(d, rh.length, errp);
            break;
        default:
            if (rh.flags & FERRY_REC_CRITICAL) {
                ferry_error_setg(errp, "unknown critical record type 0x%04x (%u bytes)", rh.type, rh.length);
                ok = false;
            } else {
                ok = ferry__stream_skip(d->s, rh.length);
                if (!ok) {
                    ferry__stream_check(d->s, errp);
                }
            }
            break;
        }
        /* The trailer: CRC32C of header and payload. RAM may already hold the record's pages, which is harmless
         * (nothing runs here, and a failed load discards RAM); device state is only loaded after END's check. */
        if (ok) {
            uint32_t want = ferry__stream_read_crc(d->s), got;
            if (!ferry__stream_read_be32(d->s, &got)) {
                ferry__stream_check(d->s, errp);
                ok = false;
            } else if (got != want) {
                ferry_error_setg(errp, "stream damaged: CRC mismatch (computed 0x%08x, the record says 0x%08x)",
                                 want, got);
                ok = false;
            }
        }
        if (!ok) {
            ferry_error_prepend(errp, "at stream offset %llu, %s record: ", (unsigned long long)offset,
                                ferry__wire_record_name(rh.type));
            return false;
        }
        update_stats(d);
        if (rh.type == FERRY_REC_END) {
            if (!finish_end(d, errp)) {
                ferry_error_prepend(errp, "at stream offset %llu: ", (unsigned long long)offset);
                return false;
            }
            return true;
        }
    }
}

/* Tell the source why, then let it read that before the connection goes away: stop writing, drain what it still
 * sends for a short while (closing with unread data would reset the connection and lose the message). */
static void send_nack(Dest *d, const FerryError *err)
{
    const char *msg = ferry_error_msg(err);
    size_t n = FERRY_MIN(strlen(msg), 4096);
    uint8_t h[FERRY_WIRE_RECORD_HEADER_LEN];
    ferry__wire_encode_record(h, &(FerryRecordHeader){ .type = FERRY_REC_NACK, .length = (uint32_t)n });
    uint8_t trailer[FERRY_WIRE_RECORD_TRAILER_LEN];
    ferry__put_be32(trailer, ferry__crc32c(ferry__crc32c(0, h, sizeof(h)), msg, n));
    if (!ferry__channel_write_all(d->chan, h, sizeof(h), NULL) ||
        !ferry__channel_write_all(d->chan, msg, n, NULL) ||
        !ferry__channel_write_all(d->chan, trailer, sizeof(trailer), NULL)) {
        return;
    }
    shutdown(d->chan->fd, SHUT_WR);
    int64_t deadline = ferry__clock_ms() + 2000;
    char sink[65536];
    while (ferry__clock_ms() < deadline) {
        struct pollfd p = { .fd = d->chan->fd, .events = POLLIN };
        if (poll(&p, 1, 100) < 0) {
            break;
        }
        if (p.revents && ferry__channel_read(d->chan, sink, sizeof(sink), NULL) <= 0) {
            break;
        }
    }
}

static bool run(Dest *d, FerryError **errp)
{
    FerryMigration *m = d->m;
    pthread_mutex_lock(&m->lock);
    FerryListener *l = m->listener;
    pthread_mutex_unlock(&m->lock);

    FerryChannel *c = ferry__listener_accept(l, errp);
    pthread_mutex_lock(&m->lock);
    m->listener = NULL; /* one connection per incoming migration, as QEMU */
    m->in_chan = c;
    bool quitting = m->quitting;
    pthread_mutex_unlock(&m->lock);
    ferry__listener_free(l);
    if (!c) {
        return false;
    }
    d->chan = c;
    if (quitting) {
        ferry_error_setg(errp, "shutting down");
        return false;
    }
    d->s = ferry__stream_new(c);
    pthread_mutex_lock(&m->lock);
    m->stats.setup_time_ms = ferry__clock_ms() - m->stats.start_ms;
    pthread_mutex_unlock(&m->lock);
    ferry__mig_set_status(m, FERRY_MIG_ACTIVE);

    if (pthread_create(&d->pop_thread, NULL, populate_thread, d) == 0) {
        d->pop_started = true;
    }
    bool ok = receive(d, errp);
    populate_stop(d);
    if (!ok) {
        return false;
    }
    if (d->chan->one_way) {
        return true; /* nobody to acknowledge to: the stream was checked on its own */
    }
    uint8_t h[FERRY_WIRE_RECORD_HEADER_LEN];
    ferry__wire_encode_record(h, &(FerryRecordHeader){ .type = FERRY_REC_ACK, .length = 0 });
    ferry__stream_write_crc_reset(d->s);
    ferry__stream_write(d->s, h, sizeof(h));
    ferry__stream_write_be32(d->s, ferry__stream_write_crc(d->s));
    if (!ferry__stream_flush(d->s)) {
        ferry__stream_check(d->s, errp);
        ferry_error_prepend(errp, "cannot acknowledge completion to the source: ");
        return false;
    }
    return true;
}

void *ferry__dest_thread(void *opaque)
{
    FerryMigration *m = opaque;
    Dest d = { .m = m, .ps = ferry_ram_page_size() };
    pthread_mutex_init(&d.pop_lock, NULL);
    pthread_cond_init(&d.pop_cond, NULL);
    FerryError *err = NULL;

    bool ok = run(&d, &err);
    populate_stop(&d);
    if (!ok && d.chan && !d.chan->one_way && !m->quitting) {
        send_nack(&d, err);
    }
    pthread_mutex_lock(&m->lock);
    m->in_chan = NULL;
    bool exit_on_error = m->exit_on_error;
    pthread_mutex_unlock(&m->lock);
    ferry__stream_free(d.s);
    ferry__channel_free(d.chan);
    for (size_t i = 0; i < d.nstaged; i++) {
        free(d.staged[i].data);
    }
    free(d.staged);
    free(d.pop_q);
    pthread_mutex_destroy(&d.pop_lock);
    pthread_cond_destroy(&d.pop_cond);

    if (ok) {
        ferry__vm_incoming_done(m, d.source_running);
        ferry__mig_set_status(m, FERRY_MIG_COMPLETED);
    } else {
        for (size_t i = 0; i < m->nblocks; i++) {
            ferry__ram_block_discard(m->blocks[i]);
        }
        fprintf(stderr, "ferry: incoming migration failed: %s\n", ferry_error_msg(err));
        ferry__mig_fail(m, err);
        if (exit_on_error && !m->quitting && m->quit_fn) {
            m->quit_fn(1, m->quit_opaque);
        }
    }
    ferry_error_free(err);
    return NULL;
}
