/*
 * The destination side, run on its own thread (ferry__dest_thread): accept one connection, check the stream
 * header and the CONFIG record against this process's RAM blocks, write RAM records straight into the (not yet
 * running) RAM, stage device sections, and only after the END record has been received and its totals checked,
 * load the sections, acknowledge on the return path, and resume the workload.
 *
 * The stream is read as a state machine: the record reader shared with the analyzer (record-reader.c) holds the
 * phase (hello, features, config, ram, sections, end, done) and refuses a record that is not allowed in it,
 * naming both; this file has one step per record kind (dest_steps). The thread body reads as the phases of an
 * incoming migration: accept, receive, acknowledge, await the commit.
 *
 * Page faults cost more than copies on these machines (shared/docs/PLATFORM.md), so a second thread faults in
 * the ranges announced by POPULATE_HINT records ahead of the data, in parallel with the receive loop.
 *
 * On a channel without a return path (exec, file, a pipe) there is no ACK or NACK: the stream's own checks (CONFIG,
 * END totals) decide.
 *
 * With multifd the listener stays open until the MULTIFD record has named the extra channels and they have been
 * accepted (src/multifd/recv.c writes their pages); each MULTIFD_SYNC record waits until every channel has
 * reached the same SYNC, and at END the channel threads are stopped before the totals are checked, so nothing
 * writes RAM once the workload may run.
 *
 * On any error nothing runs: the reason goes back to the source (NACK), RAM is discarded so that it reads as
 * zero again (the next attempt relies on that, since pass 1 does not send never-populated pages), and the process
 * exits non-zero unless exit-on-error=false asked it to stay up and report.
 *
 * Postcopy (the section "Postcopy" below) is the exception: after POSTCOPY_RUN the workload runs here with pages
 * still missing behind userfaultfd, and an error pauses instead, keeping everything, until a recovery.
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/eventfd.h>
#include <sys/socket.h>

#include "migration/mapped-ram.h"
#include "migration/migration-priv.h"
#include "migration/record-reader.h"
#include "multifd/multifd.h"
#include "ram/blocktime.h"
#include "ram/postcopy.h"
#include "stream/stream.h"
#include "util/util.h"
#include "visitor/visitor-int.h"
#include "wire/wire.h"

typedef struct PopulateRange {
    FerryRamBlock *b;
    uint64_t first, count;
    bool first_pass; /* announced before the first pass: skip what the pass has reached (recv_frontier) */
} PopulateRange;

typedef struct Staged {
    size_t section;
    uint32_t version;
    uint8_t *payload;     /* the whole record payload: schema and data point into it */
    FerrySchema *schema;
    FerryVisitor *v;      /* the input visitor, created (and the data checked) on arrival */
} Staged;

typedef struct Dest {
    FerryMigration *m;
    FerryTls *tls;           /* tls-creds set: every channel is a TLS server (taken from m->in_tls) */
    FerryChannel *chan;
    FerryStream *s;
    FerryRecordReader r;     /* the stream's records, and the phase of the stream */
    size_t ps;
    unsigned timeout_ms;     /* io-timeout when the connection came, for every channel of this migration */
    uint64_t pages;
    uint64_t normal, duplicate;
    Staged *staged;
    size_t nstaged;
    uint32_t sections_seen;  /* staged and skipped */
    uint64_t skipped;        /* bytes of skippable data this build did not know */
    FerryWireFeatureList offered; /* HELLO's */
    bool accepted_valid;     /* a HELLO_REPLY was sent: FEATURES must stay within it */
    FerryWireFeatureList accepted;
    FerryWireFeatureList used; /* FEATURES' */
    bool source_running;
    bool pages_started;      /* a RAM_PAGES record arrived: RAM blocks can no longer be replaced by fds */
    bool flip;               /* the stream uses unix-page-flipping */
    FerryPagePipe *pipe;     /* its page pipe, once the FDS record brought it */
    uint64_t pipe_bytes;
    FerryWireEnd end;        /* the END record */
    FerryListener *listener; /* kept while multifd channels may still have to be accepted */
    bool tls_up;             /* the main channel's TLS session is up and the source was accepted */
    bool multifd;            /* the stream uses multifd */
    bool commit;             /* the stream uses switchover-commit: wait for COMMIT after the ACK */
    uint64_t mapped_resume;  /* MAPPED_RAM's resume offset: where the records go on (0 before the record) */
    bool uncommitted;        /* everything loaded and acknowledged, but the source's COMMIT never came */
    FerryMultifdRecv *mfd;   /* its channel threads, once the MULTIFD record came */
    uint64_t mfd_sync;       /* MULTIFD_SYNCs passed */

    pthread_t pop_thread;
    bool pop_started;
    pthread_mutex_t pop_lock;
    pthread_cond_t pop_cond;
    PopulateRange *pop_q;    /* [pop_head, pop_len) are still to be populated */
    size_t pop_head, pop_len, pop_cap;
    uint64_t *hinted;        /* per block: pages announced so far (at most the block's pages are queued) */
    bool pop_stop;
    bool first_pass;         /* no PASS_END yet */
    bool mfd_stopped;        /* the multifd channels were stopped and their pages counted */

    /* Postcopy (the section "Postcopy" below). */
    bool in_postcopy;        /* POSTCOPY_START came: RAM is registered with userfaultfd */
    bool pc_running;         /* POSTCOPY_RUN came: the loader thread runs the workload; failures pause */
    FerryWirePcStart pc;
    int64_t pc_start_ms;
    FerryUffd *uffd;
    FerryBlocktime *blocktime; /* m->blocktime's (the engine owns it) */
    unsigned long **need;    /* per block (atomic): pages still to come, cleared once placed */
    unsigned long **requested; /* per block (atomic): pages asked for and not yet placed */
    uint64_t need_left;      /* atomic: bits set in need */
    uint8_t *bounce;         /* this thread's page buffer for UFFDIO_COPY */
    FerryMutex rp_lock;      /* the return path's writer */
    pthread_t fault_thread;
    bool fault_started;
    int fault_wake;          /* eventfd: stops the fault thread */
    FerryChannel *pchan;     /* the preempt channel, read by its own thread */
    pthread_t preempt_thread;
    bool preempt_started;
    bool pc_stopping;        /* atomic: the end is expected on the preempt channel */
    pthread_t load_thread;
    bool load_started;
    FerryError *load_err;    /* the loader thread's failure */
    uint64_t pc_pages, pc_bytes, pc_normal, pc_zero, pc_requests; /* atomic */
    uint64_t pc_preempt_bytes; /* atomic: bytes of the records read on the preempt channel */
    int64_t rp_last_ms;      /* atomic: when the return path was last written (for KEEPALIVE) */
} Dest;

/* The populate thread: fault in announced ranges, 2 MiB at a time so that stop is seen quickly. */
static void *populate_thread(void *opaque)
{
    Dest *d = opaque;
    const uint64_t chunk = (2u << 20) / d->ps; /* stop waits for one chunk: at a switch to postcopy, in downtime */
    pthread_mutex_lock(&d->pop_lock);
    for (;;) {
        while (!d->pop_stop && d->pop_head == d->pop_len) {
            pthread_cond_wait(&d->pop_cond, &d->pop_lock);
        }
        if (d->pop_stop) {
            break;
        }
        PopulateRange *r = &d->pop_q[d->pop_head];
        if (r->first_pass) {
            /* Pages the first pass has reached arrived already (or were zero and must stay unpopulated). */
            uint64_t frontier = __atomic_load_n(&r->b->recv_frontier, __ATOMIC_RELAXED);
            if (frontier > r->first) {
                uint64_t skip = FERRY_MIN(frontier - r->first, r->count);
                r->first += skip;
                r->count -= skip;
                if (r->count == 0) {
                    d->pop_head++;
                    continue;
                }
            }
        }
        if (r->b->populated) {
            d->pop_head++; /* preallocated: nothing to fault in */
            continue;
        }
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

/*
 * Whether to act on an announced range of @count pages of @b. Hints beyond the pages a block has are ignored: a
 * source announces each page at most once (docs/stream-format.md), so more can only come from a broken or hostile
 * one, and without this rule its hints would grow the populate queue, and the work, with the length of the stream
 * rather than the size of RAM.
 */
static bool hint_accept(Dest *d, FerryRamBlock *b, uint64_t count)
{
    if (!d->hinted) {
        d->hinted = ferry__xcalloc(d->m->nblocks, sizeof(*d->hinted));
    }
    if (d->hinted[b->index] + count > b->npages) {
        if (d->hinted[b->index] <= b->npages) {
            ferry__log(FERRY_LOG_WARN, "POPULATE_HINT records announce more pages than RAM block '%s' has; the "
                       "excess is ignored", b->name);
            d->hinted[b->index] = b->npages + 1; /* warned */
        }
        return false;
    }
    d->hinted[b->index] += count;
    return true;
}

/* Queue an announced range for the populate thread. The queue holds only what is still to be done: the
 * populated head is reclaimed. */
static void populate_queue(Dest *d, FerryRamBlock *b, uint64_t first, uint64_t count)
{
    pthread_mutex_lock(&d->pop_lock);
    bool drained = d->pop_head == d->pop_len, half_done = d->pop_len == d->pop_cap && d->pop_head >= d->pop_cap / 2;
    if (d->pop_head > 0 && (drained || half_done)) {
        memmove(d->pop_q, d->pop_q + d->pop_head, (d->pop_len - d->pop_head) * sizeof(*d->pop_q));
        d->pop_len -= d->pop_head;
        d->pop_head = 0;
    }
    if (d->pop_len == d->pop_cap) {
        d->pop_cap = d->pop_cap ? d->pop_cap * 2 : 64;
        d->pop_q = ferry__xrealloc(d->pop_q, d->pop_cap * sizeof(*d->pop_q));
    }
    d->pop_q[d->pop_len++] = (PopulateRange){ .b = b, .first = first, .count = count,
                                              .first_pass = d->first_pass };
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

/* ---- The records' steps: each reads its record's payload through d->r and acts on it. ---- */

/* CONFIG: the RAM blocks, which must be this process's, in the same order and of the same sizes. */
static bool step_config(Dest *d, FerryError **errp)
{
    FerryMigration *m = d->m;
    FerryWireConfig c;
    if (!ferry__record_read_config(&d->r, &c, errp)) {
        return false;
    }
    bool ok = false;
    if (c.page_size != d->ps) {
        ferry_error_setg(errp, "page size mismatch: the stream has %u, this process %zu", c.page_size, d->ps);
        goto out;
    }
    if (c.nblocks != m->nblocks) {
        ferry_error_setg(errp, "RAM block count mismatch: the stream has %u, this process %zu", c.nblocks,
                         m->nblocks);
        goto out;
    }
    for (uint32_t i = 0; i < c.nblocks; i++) {
        FerryRamBlock *b = m->blocks[i];
        if (strcmp(c.blocks[i].name, b->name) != 0) {
            ferry_error_setg(errp, "RAM block %u is '%s' in the stream but '%s' in this process", i,
                             c.blocks[i].name, b->name);
            goto out;
        }
        if (c.blocks[i].size != b->size) {
            ferry_error_setg(errp, "RAM block '%s' size mismatch: the stream has %llu bytes, this process %llu",
                             b->name, (unsigned long long)c.blocks[i].size, (unsigned long long)b->size);
            goto out;
        }
    }
    ok = true;
out:
    ferry__wire_config_free(&c);
    return ok;
}

/* The listener is no longer needed: close it (from here on no other connection is accepted, as QEMU). */
static void release_listener(Dest *d)
{
    if (!d->listener) {
        return;
    }
    ferry__mutex_lock(&d->m->lock);
    d->m->listener = NULL;
    ferry__mutex_unlock(&d->m->lock);
    ferry__listener_free(d->listener);
    d->listener = NULL;
}

/* Whether this end can take multifd channels: a listening socket to accept them on. */
static bool can_multifd(const Dest *d)
{
    return d->listener && ferry__listener_is_socket(d->listener);
}

/* HELLO: what the source offers. FEATURES must stay within it. */
static bool step_hello(Dest *d, FerryError **errp)
{
    return ferry__record_read_features(&d->r, &d->offered, errp);
}

/* Whether this end can take a postcopy: its RAM can be registered with userfaultfd. If not, postcopy-ram is left
 * out of the answer to HELLO (the source's migrate-start-postcopy then says the destination did not accept it)
 * and the reason is logged here. */
static bool postcopy_possible(Dest *d)
{
    FerryError *err = NULL;
    if (ferry__uffd_probe(d->m->blocks, d->m->nblocks, &err)) {
        return true;
    }
    ferry__log(FERRY_LOG_WARN, "postcopy-ram is not accepted: %s", ferry_error_msg(err));
    ferry_error_free(err);
    return false;
}

/*
 * After HELLO, with a return path: answer with what this side accepts; the source then writes FEATURES within
 * that. The answer always carries a CRC trailer (as every return-path record).
 */
static bool after_hello(Dest *d, FerryError **errp)
{
    if (d->chan->one_way) {
        return true;
    }
    ferry__features_accept(d->m, &d->offered, &d->accepted);
    /* The page pipe comes as an fd: without a UNIX socket this end cannot take it. multifd channels come as
     * connections: without a listening socket this end cannot accept them. */
    bool no_fds = !ferry__channel_can_pass_fds(d->chan), no_mfd = !can_multifd(d);
    bool no_pc = ferry__wire_features_find(&d->accepted, ferry__feature_name(FERRY_CAP_POSTCOPY_RAM)) >= 0 &&
                 !postcopy_possible(d);
    if (no_fds || no_mfd || no_pc) {
        FerryWireFeatureList keep;
        memset(&keep, 0, sizeof(keep));
        for (uint32_t i = 0; i < d->accepted.n; i++) {
            const char *name = d->accepted.f[i].name;
            if ((no_fds && strcmp(name, ferry__feature_name(FERRY_CAP_UNIX_PAGE_FLIPPING)) == 0) ||
                (no_mfd && (strcmp(name, ferry__feature_name(FERRY_CAP_MULTIFD)) == 0 ||
                            strcmp(name, ferry__feature_name(FERRY_CAP_POSTCOPY_PREEMPT)) == 0)) ||
                (no_pc && (strcmp(name, ferry__feature_name(FERRY_CAP_POSTCOPY_RAM)) == 0 ||
                           strcmp(name, ferry__feature_name(FERRY_CAP_POSTCOPY_PREEMPT)) == 0))) {
                continue;
            }
            ferry__wire_features_add(&keep, name, d->accepted.f[i].flags);
        }
        d->accepted = keep;
    }
    d->accepted_valid = true;
    uint8_t out[FERRY_WIRE_RECORD_HEADER_LEN + 2 + FERRY_WIRE_MAX_FEATURES * (2 + FERRY_WIRE_MAX_FEATURE_NAME) + 4];
    size_t n = ferry__wire_features_len(&d->accepted);
    ferry__wire_encode_record(out, &(FerryRecordHeader){ .type = FERRY_REC_HELLO_REPLY, .length = (uint32_t)n });
    ferry__wire_features_encode(&d->accepted, out + FERRY_WIRE_RECORD_HEADER_LEN);
    ferry__put_be32(out + FERRY_WIRE_RECORD_HEADER_LEN + n, ferry__crc32c(0, out, FERRY_WIRE_RECORD_HEADER_LEN + n));
    if (!ferry__channel_write_all(d->chan, out, FERRY_WIRE_RECORD_HEADER_LEN + n + 4, errp)) {
        ferry_error_prepend(errp, "cannot answer the source's HELLO: ");
        return false;
    }
    return true;
}

/*
 * FEATURES: what the stream uses. Refused before anything is loaded if this build cannot honour it, or (with a
 * return path) if this side did not accept it. On a one-way channel it is not checked against HELLO's offer: a
 * feature that was not offered but is supported does no harm (ferry-analyze, a checker, refuses it).
 */
static bool step_features(Dest *d, FerryError **errp)
{
    FerryWireFeatureList *used = &d->used;
    if (!ferry__record_read_features(&d->r, used, errp) || !ferry__features_check(used, errp)) {
        return false;
    }
    for (uint32_t i = 0; d->accepted_valid && i < used->n; i++) {
        if (ferry__wire_features_find(&d->accepted, used->f[i].name) < 0) {
            ferry_error_setg(errp, "the stream uses feature '%s', which this destination did not accept",
                             used->f[i].name);
            return false;
        }
    }
    d->flip = ferry__features_uses(used, FERRY_CAP_UNIX_PAGE_FLIPPING);
    d->multifd = ferry__features_uses(used, FERRY_CAP_MULTIFD);
    d->commit = ferry__features_uses(used, FERRY_CAP_SWITCHOVER_COMMIT);
    if (d->flip && !ferry__channel_can_pass_fds(d->chan)) {
        ferry_error_setg(errp, "the stream uses unix-page-flipping, which needs a UNIX socket; '%s' is not one",
                         d->chan->desc);
        return false;
    }
    if (d->multifd && !can_multifd(d)) {
        ferry_error_setg(errp, "the stream uses multifd, but this destination has no listening socket to accept "
                         "its channels on");
        return false;
    }
    ferry__record_set_features(&d->r, used);
    return true;
}

/* The stream uses postcopy-preempt: the listener stays until the preempt channel is accepted. */
static bool uses_preempt(const Dest *d)
{
    return ferry__features_uses(&d->used, FERRY_CAP_POSTCOPY_PREEMPT);
}

/* After FEATURES: without multifd no other connection is accepted; query-migrate shows what the stream uses. */
static bool after_features(Dest *d, FerryError **errp)
{
    if (!d->multifd && !uses_preempt(d)) {
        release_listener(d);
    }
    ferry__features_record(d->m, &d->used);
    return true;
}

/* POPULATE_HINT: queue the announced ranges for the populate thread. */
static bool step_hint(Dest *d, FerryError **errp)
{
    uint8_t *buf;
    FerryWireHint h;
    if (!ferry__record_read_hint(&d->r, &buf, &h, errp)) {
        return false;
    }
    bool ok = false;
    if (h.block >= d->m->nblocks) {
        ferry_error_setg(errp, "POPULATE_HINT record names block %u, this process has %zu", h.block, d->m->nblocks);
        goto out;
    }
    FerryRamBlock *b = d->m->blocks[h.block];
    for (uint32_t i = 0; i < h.count; i++) {
        uint64_t first, n;
        ferry__wire_hint_range(&h, i, &first, &n);
        if (first >= b->npages || n > b->npages - first) {
            ferry_error_setg(errp, "POPULATE_HINT range %llu+%llu is outside RAM block '%s'",
                             (unsigned long long)first, (unsigned long long)n, b->name);
            goto out;
        }
        if (hint_accept(d, b, n) && d->pop_started && !b->adopted) {
            populate_queue(d, b, first, n);
        }
    }
    ok = true;
out:
    free(buf);
    return ok;
}

/* A received fd for the page pipe; closes @fd on failure. */
static bool adopt_page_pipe(Dest *d, int fd, FerryError **errp)
{
    if (!d->flip) {
        ferry_error_setg(errp, "a page pipe in a stream that does not use unix-page-flipping");
    } else if (d->pipe) {
        ferry_error_setg(errp, "a second page pipe");
    } else if ((d->pipe = ferry__page_pipe_reader_take(fd, errp)) != NULL) {
        return true;
    }
    close(fd);
    return false;
}

/* A received fd holding the memory of RAM block @name (mode cpr-transfer); closes @fd on failure. */
static bool adopt_ram_fd(Dest *d, const char *name, int fd, FerryError **errp)
{
    FerryMigration *m = d->m;
    size_t i;
    for (i = 0; i < m->nblocks && strcmp(m->blocks[i]->name, name) != 0; i++) {
    }
    if (d->pages_started) {
        ferry_error_setg(errp, "file descriptor for RAM block '%s' outside the start of the stream (it must "
                         "follow CONFIG, before any page)", name);
    } else if (i == m->nblocks) {
        ferry_error_setg(errp, "file descriptor for RAM block '%s', which this process does not have", name);
    } else if (m->blocks[i]->adopted) {
        ferry_error_setg(errp, "a second file descriptor for RAM block '%s'", name);
    } else if (ferry__ram_block_adopt_fd(m->blocks[i], fd, errp)) {
        ferry__mutex_lock(&m->lock);
        m->stats.fd_ram_bytes += m->blocks[i]->size;
        m->stats.fd_ram_blocks++;
        ferry__mutex_unlock(&m->lock);
        return true;
    }
    close(fd);
    return false;
}

/* A received fd for the backend named "KIND:ID" (backend-transfer); closes @fd on failure. */
static bool adopt_backend_fd(Dest *d, const char *name, int fd, FerryError **errp)
{
    FerryMigration *m = d->m;
    const char *colon = strchr(name, ':');
    char kind_name[64];
    FerryBackendKind kind;
    size_t kl = colon ? (size_t)(colon - name) : 0;
    if (!colon || kl >= sizeof(kind_name)) {
        ferry_error_setg(errp, "backend file descriptor '%s' is not named KIND:ID", name);
        close(fd);
        return false;
    }
    memcpy(kind_name, name, kl);
    kind_name[kl] = '\0';
    if (!ferry__backend_kind_parse(kind_name, &kind)) {
        ferry_error_setg(errp, "the source transfers a backend of unknown kind '%s'", kind_name);
    } else if (!ferry__param_backend_transfer(m, kind)) {
        ferry_error_setg(errp, "the source transfers backend %s '%s', but backend-transfer does not list %s here",
                         kind_name, colon + 1, kind_name);
    } else {
        for (size_t i = 0; i < m->nbackends; i++) {
            FerryBackend *be = &m->backends[i];
            if (be->kind == kind && strcmp(be->id, colon + 1) == 0) {
                if (be->ops.set_fd(be->opaque, fd, errp)) {
                    return true;
                }
                ferry_error_prepend(errp, "backend %s '%s': ", kind_name, be->id);
                close(fd);
                return false;
            }
        }
        ferry_error_setg(errp, "the source transfers backend %s '%s', which this process does not have", kind_name,
                         colon + 1);
    }
    close(fd);
    return false;
}

/* Hands one received fd to what the FDS entry @e names; closes @fd on failure. */
static bool adopt_fd(Dest *d, const FerryWireFd *e, int fd, FerryError **errp)
{
    switch (e->kind) {
    case FERRY_FD_PAGE_PIPE: return adopt_page_pipe(d, fd, errp);
    case FERRY_FD_RAM_BLOCK: return adopt_ram_fd(d, e->name, fd, errp);
    default: return adopt_backend_fd(d, e->name, fd, errp);
    }
}

/*
 * FDS: the entries name what the fds that came with the record's bytes are. Every fd taken from the channel is
 * either adopted by exactly one object or closed here, on every path; fds that came without a record stay with
 * the channel, which closes them.
 */
static bool step_fds(Dest *d, FerryError **errp)
{
    if (!ferry__channel_can_pass_fds(d->chan)) {
        ferry_error_setg(errp, "the stream passes file descriptors, but '%s' is not a UNIX socket and cannot carry "
                         "them", d->chan->desc);
        return false;
    }
    FerryWireFd *entries;
    uint32_t n;
    if (!ferry__record_read_fds(&d->r, &entries, &n, errp)) {
        return false;
    }
    size_t have = ferry__channel_fds_pending(d->chan);
    if (have < n) {
        ferry_error_setg(errp, "FDS record announces %u file descriptors, %zu arrived with it", n, have);
        free(entries);
        return false;
    }
    int *fds = ferry__xcalloc(n, sizeof(*fds));
    for (uint32_t i = 0; i < n; i++) {
        fds[i] = ferry__channel_take_fd(d->chan);
    }
    bool ok = true;
    uint32_t i;
    for (i = 0; i < n && ok; i++) {
        ok = adopt_fd(d, &entries[i], fds[i], errp);
    }
    for (; i < n; i++) {
        close(fds[i]);
    }
    ferry__mutex_lock(&d->m->lock);
    d->m->stats.fds_passed += n;
    ferry__mutex_unlock(&d->m->lock);
    free(fds);
    free(entries);
    return ok;
}

/* MULTIFD: accept the channels it names and start their threads. */
static bool step_multifd(Dest *d, FerryError **errp)
{
    if (d->mfd) {
        ferry_error_setg(errp, "a second MULTIFD record");
        return false;
    }
    FerryWireMultifd r;
    if (!ferry__record_read_multifd(&d->r, &r, errp)) {
        return false;
    }
    if (!can_multifd(d)) {
        ferry_error_setg(errp, "the stream uses multifd, but this destination has no listening socket to accept "
                         "its channels on");
        return false;
    }
    FerryMultifdConfig cfg = { .channels = r.channels, .compression = r.compression,
                               .checksum = r.flags & FERRY_MFD_F_CHECKSUM, .page_size = d->ps,
                               .timeout_ms = d->timeout_ms, .tls = d->tls };
    memcpy(cfg.session, r.session, sizeof(cfg.session));
    d->mfd = ferry__multifd_recv_new(d->listener, &cfg, d->m->blocks, d->m->nblocks, d->chan, errp);
    ferry__mutex_lock(&d->m->lock);
    d->m->in_mfd = d->mfd;
    bool quitting = d->m->quitting;
    ferry__mutex_unlock(&d->m->lock);
    if (quitting && d->mfd) {
        ferry__multifd_recv_shutdown(d->mfd); /* quit came before in_mfd was set */
    }
    if (!uses_preempt(d)) {
        release_listener(d);
    }
    /* Pages may arrive from now on: no RAM block may get the source's memory any more. */
    d->pages_started = true;
    return d->mfd != NULL;
}

/* MULTIFD_SYNC: every channel must reach the same SYNC before any goes on. */
static bool step_multifd_sync(Dest *d, FerryError **errp)
{
    uint8_t p[8];
    if (!ferry__record_read(&d->r, p, sizeof(p), errp)) {
        return false;
    }
    uint64_t n = ferry__get_be64(p);
    if (!d->mfd) {
        ferry_error_setg(errp, "MULTIFD_SYNC record before the MULTIFD record");
        return false;
    }
    if (n != d->mfd_sync + 1) {
        ferry_error_setg(errp, "MULTIFD_SYNC %llu after MULTIFD_SYNC %llu", (unsigned long long)n,
                         (unsigned long long)d->mfd_sync);
        return false;
    }
    d->mfd_sync = n;
    return ferry__multifd_recv_sync(d->mfd, n, errp);
}

/* After END: stop the channel threads (the stream is complete) and count their pages with the others. */
static bool stop_multifd(Dest *d, FerryError **errp)
{
    if (!d->mfd || d->mfd_stopped) {
        return true;
    }
    if (!ferry__multifd_recv_stop(d->mfd, errp)) {
        return false;
    }
    d->mfd_stopped = true;
    FerryMultifdStats st;
    ferry__multifd_recv_stats(d->mfd, &st);
    d->pages += st.pages;
    d->normal += st.normal;
    d->duplicate += st.zero;
    return true;
}

/* The block of a run, checked: this process has it, its memory is not the source's, the run lies within it. */
static FerryRamBlock *run_block(Dest *d, const FerryWireRun *run, FerryError **errp)
{
    if (run->block >= d->m->nblocks) {
        ferry_error_setg(errp, "RAM_PAGES record names block %u, this process has %zu", run->block, d->m->nblocks);
        return NULL;
    }
    FerryRamBlock *b = d->m->blocks[run->block];
    if (b->adopted) {
        /* Its memory is the source's own: writing pages into it would change the running source. */
        ferry_error_setg(errp, "RAM_PAGES record for block '%s', whose memory came as a file descriptor", b->name);
        return NULL;
    }
    if (run->first >= b->npages || run->count > b->npages - run->first) {
        ferry_error_setg(errp, "bad RAM_PAGES record: block '%s', pages %llu+%u", b->name,
                         (unsigned long long)run->first, run->count);
        return NULL;
    }
    if ((run->flags & FERRY_RUN_DATA_IN_PIPE) && !d->pipe) {
        ferry_error_setg(errp, "RAM_PAGES record with its data in the page pipe, but no page pipe was passed");
        return NULL;
    }
    return b;
}

/* The pages of a checked run: zero pages zeroed, runs of consecutive data pages read with one call each, straight
 * into RAM, from the stream or the page pipe. */
static bool receive_run(Dest *d, FerryRamBlock *b, const FerryWireRun *run, const uint8_t *zmap, FerryError **errp)
{
    uint32_t i = 0, n = run->count;
    while (i < n) {
        uint8_t *p = b->host + (run->first + i) * d->ps;
        if ((zmap[i / 8] >> (i % 8)) & 1) {
            ferry__ram_block_zero_page(b, run->first + i, d->ps);
            i++;
            continue;
        }
        uint32_t j = i;
        while (j < n && !((zmap[j / 8] >> (j % 8)) & 1)) {
            j++;
        }
        size_t bytes = (size_t)(j - i) * d->ps;
        ferry__ram_block_prepare_write(b, p, bytes);
        if (run->flags & FERRY_RUN_DATA_IN_PIPE) {
            if (!ferry__page_pipe_recv(d->pipe, p, bytes, d->chan, errp)) {
                return false;
            }
            d->pipe_bytes += bytes;
        } else if (!ferry__record_read(&d->r, p, bytes, errp)) {
            return false;
        }
        ferry__ram_block_note_written(b, run->first + i, j - i);
        i = j;
    }
    return true;
}

/* RAM_PAGES: a run of pages of one block. */
static bool pc_receive_pages(Dest *d, FerryRecordReader *r, uint8_t *bounce, FerryError **errp);

static bool step_pages(Dest *d, FerryError **errp)
{
    if (d->in_postcopy) {
        return pc_receive_pages(d, &d->r, d->bounce, errp);
    }
    uint8_t zmap[FERRY_WIRE_MAX_RUN_PAGES / 8];
    FerryWireRun run;
    uint32_t zeros;
    if (!ferry__record_read_run(&d->r, (uint32_t)d->ps, &run, zmap, &zeros, errp)) {
        return false;
    }
    FerryRamBlock *b = run_block(d, &run, errp);
    if (!b) {
        return false;
    }
    d->pages_started = true;
    if (!receive_run(d, b, &run, zmap, errp)) {
        return false;
    }
    d->pages += run.count;
    d->normal += run.count - zeros;
    d->duplicate += zeros;
    ferry__ram_block_note_received(b, run.first + run.count);
    return true;
}

/* PASS_END: informational; later hints are no longer for the first pass. */
static bool step_pass_end(Dest *d, FerryError **errp)
{
    uint8_t p[8];
    if (!ferry__record_read(&d->r, p, sizeof(p), errp)) {
        return false;
    }
    d->first_pass = false;
    ferry__mutex_lock(&d->m->lock);
    d->m->stats.dirty_sync_count = ferry__get_be64(p);
    ferry__mutex_unlock(&d->m->lock);
    return true;
}

/* The registered section @ws is, or m->nsections if this process has none such. */
static size_t section_index(const FerryMigration *m, const FerryWireSection *ws)
{
    size_t idx;
    for (idx = 0; idx < m->nsections; idx++) {
        if (strcmp(m->sections[idx].name, ws->name) == 0 && m->sections[idx].instance_id == ws->instance_id) {
            break;
        }
    }
    return idx;
}

/*
 * SECTION: decode its header and schema and check its data against the schema now (so that an error points at
 * this record), then stage it: sections are loaded only after END. A section this process does not have is
 * skipped if the source marked it skippable, and fails the migration otherwise.
 */
static bool step_section(Dest *d, FerryError **errp)
{
    uint8_t *buf;
    uint32_t len = d->r.rh.length;
    FerryWireSection ws;
    if (!ferry__record_read_section(&d->r, &buf, &ws, errp)) {
        return false;
    }
    size_t idx = section_index(d->m, &ws);
    d->sections_seen++;
    if (idx == d->m->nsections) {
        free(buf);
        if (!(ws.flags & FERRY_SECTION_SKIPPABLE)) {
            ferry_error_setg(errp, "unknown section '%s' instance %u in the stream (the source did not mark it "
                             "skippable)", ws.name, ws.instance_id);
            return false;
        }
        ferry__log(FERRY_LOG_INFO, "skipping section '%s' instance %u (%u bytes): not known here, skippable",
                   ws.name, ws.instance_id, len);
        d->skipped += FERRY_WIRE_RECORD_HEADER_LEN + (uint64_t)len +
                      (d->r.trailers ? FERRY_WIRE_RECORD_TRAILER_LEN : 0);
        return true;
    }
    for (size_t i = 0; i < d->nstaged; i++) {
        if (d->staged[i].section == idx) {
            free(buf);
            ferry_error_setg(errp, "section '%s' instance %u appears twice in the stream", ws.name, ws.instance_id);
            return false;
        }
    }
    FerrySchema *schema = ferry__schema_decode(ws.schema, ws.schema_len, errp);
    FerryVisitor *v = schema ? ferry__visitor_input_new(ws.name, schema, ws.data, ws.data_len, errp) : NULL;
    if (!v) {
        ferry_error_prepend(errp, "section '%s' instance %u: ", ws.name, ws.instance_id);
        ferry__schema_free(schema);
        free(buf);
        return false;
    }
    d->staged = ferry__xrealloc(d->staged, (d->nstaged + 1) * sizeof(*d->staged));
    d->staged[d->nstaged++] = (Staged){ .section = idx, .version = ws.version, .payload = buf, .schema = schema,
                                        .v = v };
    return true;
}

/* restore-mode map: the verifier found a damaged page behind the running workload. The workload is stopped (what
 * it read may be wrong) and the reason kept for query-migrate's restore-verify. On the verifier's thread. */
static void verify_failed(void *opaque, const FerryError *err)
{
    FerryMigration *m = opaque;
    ferry__log(FERRY_LOG_ERROR, "restore verification failed, the workload is stopped: %s", ferry_error_msg(err));
    ferry__mutex_lock(&m->lock);
    free(m->verify_error);
    m->verify_error = ferry__xstrdup(ferry_error_msg(err));
    ferry__mutex_unlock(&m->lock);
    ferry__vm_stop(m, NULL);
}

/*
 * MAPPED_RAM: the pages are in the file's page regions. restore-mode "copy" reads them all into RAM now (multifd:
 * with multifd-channels threads), each checked against its CRC; "map" maps the regions as the RAM and leaves the
 * check to a verifier thread behind the running workload. Either way the records go on at the resume offset
 * (after_mapped). END then counts the pages the bitmaps hold.
 */
static bool step_mapped(Dest *d, FerryError **errp)
{
    FerryMigration *m = d->m;
    if (d->mapped_resume) {
        ferry_error_setg(errp, "a second MAPPED_RAM record (the file's layout is given once)");
        return false;
    }
    uint8_t *payload;
    if (!ferry__record_read_payload(&d->r, &payload, errp)) {
        return false;
    }
    uint32_t len = d->r.rh.length;
    FerryWireConfig c = { .page_size = (uint32_t)d->ps, .nblocks = (uint32_t)m->nblocks };
    c.blocks = ferry__xcalloc(m->nblocks ? m->nblocks : 1, sizeof(*c.blocks));
    for (size_t i = 0; i < m->nblocks; i++) {
        snprintf(c.blocks[i].name, sizeof(c.blocks[i].name), "%s", m->blocks[i]->name);
        c.blocks[i].size = m->blocks[i]->size;
    }
    uint64_t after = d->r.offset + FERRY_WIRE_RECORD_HEADER_LEN + len + (d->r.trailers ? FERRY_WIRE_RECORD_TRAILER_LEN
                                                                                        : 0);
    FerryWireMapped layout;
    bool ok = ferry__wire_mapped_decode(payload, len, &c, after, &layout, errp);
    free(payload);
    ferry__wire_config_free(&c);
    if (!ok) {
        return false;
    }
    FerryMappedFile f = { .checksums = (layout.flags & FERRY_MAPPED_F_CHECKSUMS) != 0 };
    if (!ferry__channel_file_info(d->chan, &f.fd, &f.base, &f.path)) {
        ferry_error_setg(errp, "the stream uses mapped-ram, which needs a regular file ('file:PATH'); '%s' is not "
                         "one", d->chan->desc);
        free(layout.blocks);
        return false;
    }
    ferry__mutex_lock(&m->lock);
    FerryRestoreMode mode = (FerryRestoreMode)m->params.restore_mode;
    unsigned threads = m->caps[FERRY_CAP_MULTIFD] ? (unsigned)m->params.multifd_channels : 1;
    f.direct = m->params.direct_io != 0;
    ferry__mutex_unlock(&m->lock);
    uint64_t present = 0;
    d->pages_started = true;
    if (mode == FERRY_RESTORE_MAP) {
        ok = ferry__mapped_map(m->blocks, m->nblocks, &f, &layout, &present, errp);
        FerryMappedVerifier *v = ok ? ferry__mapped_verify_start(m->blocks, m->nblocks, &f, &layout, verify_failed, m,
                                                                 errp)
                                    : NULL;
        ok = ok && v;
        ferry__mutex_lock(&m->lock);
        m->verifier = v;
        ferry__mutex_unlock(&m->lock);
    } else {
        ok = ferry__mapped_load(m->blocks, m->nblocks, &f, &layout, threads, &present, errp);
    }
    d->mapped_resume = layout.resume;
    free(layout.blocks);
    d->pages += present;
    d->normal += present;
    return ok;
}

/* After MAPPED_RAM: the records go on past the page regions. */
static bool after_mapped(Dest *d, FerryError **errp)
{
    return ferry__stream_read_seek(d->s, d->mapped_resume) || ferry__stream_check(d->s, errp);
}

/* END, read: its totals are checked by after_end() once the record's CRC has been. */
static bool step_end(Dest *d, FerryError **errp)
{
    uint8_t p[FERRY_WIRE_END_LEN];
    return ferry__record_read(&d->r, p, sizeof(p), errp) && ferry__wire_end_decode(p, &d->end, errp);
}

/* Every registered section is staged, or registered optional. */
static bool check_sections_present(Dest *d, FerryError **errp)
{
    FerryMigration *m = d->m;
    for (size_t i = 0; i < m->nsections; i++) {
        size_t j;
        for (j = 0; j < d->nstaged && d->staged[j].section != i; j++) {
        }
        if (j < d->nstaged) {
            continue;
        }
        if (!(m->sections[i].flags & FERRY_SECTION_OPTIONAL)) {
            ferry_error_setg(errp, "section '%s' instance %u is missing from the stream", m->sections[i].name,
                             m->sections[i].instance_id);
            return false;
        }
        ferry__log(FERRY_LOG_INFO, "section '%s' instance %u is not in the stream (optional: keeping its state)",
                   m->sections[i].name, m->sections[i].instance_id);
    }
    return true;
}

/* Load the staged sections, in stream order. */
static bool load_sections(Dest *d, FerryError **errp)
{
    FerryMigration *m = d->m;
    for (size_t j = 0; j < d->nstaged; j++) {
        Staged *st = &d->staged[j];
        FerrySection *sec = &m->sections[st->section];
        if (!sec->fn(st->v, sec->opaque, st->version, errp) || !ferry__visitor_input_finish(st->v, errp)) {
            ferry_error_prepend(errp, "loading section '%s' instance %u (version %u): ", sec->name,
                                sec->instance_id, st->version);
            return false;
        }
        d->skipped += ferry__visitor_input_skipped(st->v);
    }
    return true;
}

static bool pc_after_end(Dest *d, FerryError **errp);

/*
 * After END: stop the multifd channels, check the totals, then load the staged sections. Nothing was applied to
 * device state before this. (After a switch to postcopy: pc_after_end.)
 */
static bool after_end(Dest *d, FerryError **errp)
{
    if (d->in_postcopy) {
        return pc_after_end(d, errp);
    }
    if (!stop_multifd(d, errp) || !ferry__record_check_end(&d->end, d->pages, d->sections_seen, errp) ||
        !check_sections_present(d, errp) || !load_sections(d, errp)) {
        return false;
    }
    d->source_running = d->end.flags & FERRY_END_SOURCE_RUNNING;
    return true;
}

/* COMMIT (switchover-commit, after this side's ACK): empty, so the record reader has checked all there is. */
static bool step_commit(Dest *d, FerryError **errp)
{
    (void)d;
    (void)errp;
    return true;
}

/* A record of a type this build does not know: the reader has checked it is not critical; skip it. */
static bool step_unknown(Dest *d, FerryError **errp)
{
    uint32_t len = d->r.rh.length;
    if (!ferry__record_skip(&d->r, len, errp)) {
        return false;
    }
    d->skipped += FERRY_WIRE_RECORD_HEADER_LEN + (uint64_t)len + (d->r.trailers ? FERRY_WIRE_RECORD_TRAILER_LEN : 0);
    return true;
}

/* ---- Postcopy (postcopy-ram; docs/design.md, "Postcopy") ----
 *
 * POSTCOPY_START: the populate thread and the multifd channels stop (nothing may write RAM behind
 * userfaultfd's back from here on), every block is registered for missing-page faults, and the fault thread
 * starts. POSTCOPY_NEED: the pages listed are dropped (they are stale or never arrived) and marked needed. The
 * device state is staged as usual. POSTCOPY_RUN: a loader thread loads it and runs the workload, while this thread
 * goes on reading pages, so that a section whose load touches a needed page gets it (the page comes on the
 * channel this thread reads). Every page is placed atomically (UFFDIO_COPY / UFFDIO_ZEROPAGE), and only then
 * marked as no longer needed: the fault thread zero-fills a missing page that is not needed (it was zero at the
 * source and never sent), so the order matters. A fault on a needed page becomes a REQ_PAGES on the return path.
 */

/* The return path's writer: the fault thread's requests, this thread's ACK and NACK. Records carry a CRC. */
static bool rp_write(Dest *d, uint16_t type, const void *payload, uint32_t len, FerryError **errp)
{
    /* One write per record: a request is small and wakes the source's reader once. */
    uint8_t small[FERRY_WIRE_RECORD_HEADER_LEN + 64 + FERRY_WIRE_RECORD_TRAILER_LEN];
    size_t total = FERRY_WIRE_RECORD_HEADER_LEN + (size_t)len + FERRY_WIRE_RECORD_TRAILER_LEN;
    uint8_t *rec = total <= sizeof(small) ? small : ferry__xmalloc(total);
    ferry__wire_encode_record(rec, &(FerryRecordHeader){ .type = type, .length = len });
    if (len) {
        memcpy(rec + FERRY_WIRE_RECORD_HEADER_LEN, payload, len);
    }
    ferry__put_be32(rec + FERRY_WIRE_RECORD_HEADER_LEN + len, ferry__crc32c(0, rec, FERRY_WIRE_RECORD_HEADER_LEN + len));
    ferry__mutex_lock(&d->rp_lock);
    bool ok = ferry__channel_write_all(d->chan, rec, total, errp);
    ferry__mutex_unlock(&d->rp_lock);
    __atomic_store_n(&d->rp_last_ms, ferry__clock_ms(), __ATOMIC_RELAXED);
    if (rec != small) {
        free(rec);
    }
    return ok;
}

static bool pc_request(Dest *d, FerryRamBlock *b, uint64_t page)
{
    uint8_t p[FERRY_WIRE_REQ_PAGES_LEN];
    ferry__wire_req_pages_encode(&(FerryWireReqPages){ .block = b->index, .count = 1, .first = page }, p);
    __atomic_add_fetch(&d->pc_requests, 1, __ATOMIC_RELAXED);
    FerryError *err = NULL;
    if (!rp_write(d, FERRY_REC_REQ_PAGES, p, sizeof(p), &err)) {
        /* The connection broke: the main thread sees it too and pauses; the request is made again on resume. */
        ferry__log(FERRY_LOG_DEBUG, "postcopy: page request not sent: %s", ferry_error_msg(err));
        ferry_error_free(err);
        return false;
    }
    return true;
}

/* One fault: a needed page is requested (once), any other missing page was zero at the source. */
static void pc_handle_fault(Dest *d, const FerryUffdFault *f)
{
    FerryRamBlock *b = f->block;
    uint64_t addr = (uint64_t)(uintptr_t)(b->host + f->page * d->ps);
    if (!ferry__bitmap_test_atomic(d->need[b->index], f->page)) {
        FerryError *err = NULL;
        if (!ferry__uffd_place_zero(d->uffd, b, f->page, 1, NULL, &err)) {
            ferry__log(FERRY_LOG_ERROR, "postcopy: cannot zero-fill page %llu of '%s': %s",
                       (unsigned long long)f->page, b->name, ferry_error_msg(err));
            ferry_error_free(err);
        }
        return;
    }
    ferry__blocktime_fault(d->blocktime, addr, f->tid, ferry__clock_ns());
    if (!ferry__bitmap_test_atomic(d->need[b->index], f->page)) {
        /* Placed between the two looks: its placement may have come before the fault was counted. */
        ferry__blocktime_placed(d->blocktime, addr, d->ps, ferry__clock_ns());
        return;
    }
    if (!ferry__bitmap_test_and_set_atomic(d->requested[b->index], f->page)) {
        pc_request(d, b, f->page);
    }
}

/* The fault thread: faults from the registered blocks until the wake eventfd says stop. */
static void *pc_fault_thread(void *opaque)
{
    Dest *d = opaque;
    FerryUffdFault faults[64];
    struct pollfd p[2] = { { .fd = ferry__uffd_fd(d->uffd), .events = POLLIN },
                           { .fd = d->fault_wake, .events = POLLIN } };
    /* With io-timeout the source gives up on a return path silent for that long: a workload that faults on
     * nothing must not look like a dead link, so the return path carries a KEEPALIVE when it has been quiet. */
    int keepalive_ms = d->timeout_ms ? (int)FERRY_MAX(d->timeout_ms / 3, 1u) : -1;
    for (;;) {
        int n = poll(p, 2, keepalive_ms);
        if (n < 0 && errno != EINTR) {
            ferry__log(FERRY_LOG_ERROR, "postcopy: fault thread: poll: %s", strerror(errno));
            break;
        }
        if (n > 0 && p[1].revents) {
            break;
        }
        if (__atomic_load_n(&d->pc_running, __ATOMIC_ACQUIRE) && keepalive_ms > 0 &&
            ferry__clock_ms() - __atomic_load_n(&d->rp_last_ms, __ATOMIC_RELAXED) >= keepalive_ms) {
            rp_write(d, FERRY_REC_KEEPALIVE, NULL, 0, NULL); /* a failure is the main thread's to see */
        }
        if (n <= 0) {
            continue;
        }
        FerryError *err = NULL;
        int got = ferry__uffd_read_faults(d->uffd, faults, (int)FERRY_ARRAY_SIZE(faults), &err);
        if (got < 0) {
            ferry__log(FERRY_LOG_ERROR, "postcopy: fault thread: %s", ferry_error_msg(err));
            ferry_error_free(err);
            break;
        }
        for (int i = 0; i < got; i++) {
            pc_handle_fault(d, &faults[i]);
        }
    }
    return NULL;
}

/* After a resume: ask again for every page that was requested and has not come (the requests may be lost). */
static void pc_rerequest(Dest *d)
{
    for (size_t bi = 0; bi < d->m->nblocks; bi++) {
        FerryRamBlock *b = d->m->blocks[bi];
        for (size_t i = ferry__bitmap_find_next(d->requested[bi], b->npages, 0); i < b->npages;
             i = ferry__bitmap_find_next(d->requested[bi], b->npages, i + 1)) {
            if (ferry__bitmap_test_atomic(d->need[bi], i) && !pc_request(d, b, i)) {
                return;
            }
        }
    }
}

/*
 * Place the pages of a checked run read through @r: data pages from @bounce (filled here), zero pages zero-filled;
 * then they are no longer needed. A page placed already (EEXIST) is skipped.
 */
static bool pc_place_run(Dest *d, FerryRecordReader *r, uint8_t *bounce, FerryRamBlock *b, const FerryWireRun *run,
                         const uint8_t *zmap, FerryError **errp)
{
    uint32_t n = run->count, data = 0;
    for (uint32_t i = 0; i < n; i++) {
        data += !((zmap[i / 8] >> (i % 8)) & 1);
    }
    if (data && !ferry__record_read(r, bounce, (size_t)data * d->ps, errp)) {
        return false;
    }
    uint32_t i = 0, off = 0;
    while (i < n) {
        bool zero = (zmap[i / 8] >> (i % 8)) & 1;
        uint32_t j = i + 1;
        while (j < n && (bool)((zmap[j / 8] >> (j % 8)) & 1) == zero) {
            j++;
        }
        bool ok = zero ? ferry__uffd_place_zero(d->uffd, b, run->first + i, j - i, NULL, errp)
                       : ferry__uffd_place(d->uffd, b, run->first + i, j - i, bounce + (size_t)off * d->ps, NULL,
                                           errp);
        if (!ok) {
            return false;
        }
        off += zero ? 0 : j - i;
        i = j;
    }
    uint64_t now = (uint64_t)ferry__clock_ns(), done = 0;
    for (uint32_t k = 0; k < n; k++) {
        done += ferry__bitmap_test_and_clear_atomic(d->need[b->index], run->first + k);
        ferry__bitmap_test_and_clear_atomic(d->requested[b->index], run->first + k);
    }
    ferry__blocktime_placed(d->blocktime, (uint64_t)(uintptr_t)(b->host + run->first * d->ps), (uint64_t)n * d->ps,
                            (int64_t)now);
    /* Counted before need_left says they are here: END's check reads the count once need_left is 0. */
    __atomic_add_fetch(&d->pc_pages, n, __ATOMIC_RELAXED);
    __atomic_sub_fetch(&d->need_left, done, __ATOMIC_RELEASE);
    uint64_t bytes = FERRY_WIRE_RECORD_HEADER_LEN + (uint64_t)r->rh.length + (r->trailers ? 4 : 0);
    __atomic_add_fetch(&d->pc_bytes, bytes, __ATOMIC_RELAXED);
    if (r != &d->r) {
        __atomic_add_fetch(&d->pc_preempt_bytes, bytes, __ATOMIC_RELAXED);
    }
    __atomic_add_fetch(&d->pc_normal, data, __ATOMIC_RELAXED);
    __atomic_add_fetch(&d->pc_zero, n - data, __ATOMIC_RELAXED);
    return true;
}

/* RAM_PAGES after the switch, on any channel: the run checked against the blocks, then placed. */
static bool pc_receive_pages(Dest *d, FerryRecordReader *r, uint8_t *bounce, FerryError **errp)
{
    uint8_t zmap[FERRY_WIRE_MAX_RUN_PAGES / 8];
    FerryWireRun run;
    uint32_t zeros;
    if (!ferry__record_read_run(r, (uint32_t)d->ps, &run, zmap, &zeros, errp)) {
        return false;
    }
    FerryRamBlock *b = run_block(d, &run, errp);
    if (!b) {
        return false;
    }
    if (run.flags & FERRY_RUN_DATA_IN_PIPE) {
        ferry_error_setg(errp, "RAM_PAGES record with its data in the page pipe after the switch to postcopy");
        return false;
    }
    return pc_place_run(d, r, bounce, b, &run, zmap, errp);
}

/* The preempt channel's thread: requested pages, placed as they come, until the channel ends. */
static void *pc_preempt_thread(void *opaque)
{
    Dest *d = opaque;
    FerryStream *s = ferry__stream_new(d->pchan);
    FerryRecordReader r;
    ferry__record_reader_init(&r, s);
    ferry__record_set_features(&r, &d->used);
    r.phase = FERRY_PHASE_POSTCOPY;
    r.trailers = ferry__features_uses(&d->used, FERRY_CAP_RECORD_CHECKSUM);
    ferry__stream_set_crc(s, r.trailers);
    uint8_t *bounce = ferry__xmalloc((size_t)FERRY_WIRE_MAX_RUN_PAGES * d->ps);
    FerryError *err = NULL;
    while (!__atomic_load_n(&d->pc_stopping, __ATOMIC_ACQUIRE)) {
        bool ok = ferry__record_next(&r, &err);
        if (ok && r.rh.type != FERRY_REC_RAM_PAGES) {
            ferry_error_setg(&err, "only RAM_PAGES records may come on the preempt channel");
            ok = false;
        }
        if (!(ok && pc_receive_pages(d, &r, bounce, &err) && ferry__record_finish(&r, &err))) {
            ferry__record_error_prefix(&r, &err);
            break;
        }
    }
    if (err && !__atomic_load_n(&d->pc_stopping, __ATOMIC_ACQUIRE)) {
        /* The pages the source put on this channel are lost with it: pause (the main thread fails on the shut
         * channel), so that recovery asks for them again. */
        ferry_error_prepend(&err, "postcopy preempt channel: ");
        ferry__log(FERRY_LOG_WARN, "%s", ferry_error_msg(err));
        ferry__channel_shutdown(d->chan);
    }
    ferry_error_free(err);
    free(bounce);
    ferry__stream_free(s);
    return NULL;
}

/* Accept the preempt channel the source connects after POSTCOPY_START, check its hello, start its thread. */
static bool pc_accept_preempt(Dest *d, FerryError **errp)
{
    if (!d->listener) {
        ferry_error_setg(errp, "the stream uses postcopy-preempt, but this destination has no listening socket to "
                         "accept its channel on");
        return false;
    }
    FerryChannel *c = ferry__listener_accept_timeout(d->listener, 10000, errp);
    bool ok = c && ferry__channel_set_timeout(c, d->timeout_ms, errp);
    if (ok && d->tls) {
        c = ferry__tls_channel_new(c, d->tls, errp);
        ok = c && ferry__tls_channel_handshake(c, errp);
    }
    uint8_t hello[FERRY_WIRE_MFD_HELLO_LEN], session[FERRY_WIRE_PC_SESSION_LEN];
    ok = ok && ferry__channel_read_all(c, hello, sizeof(hello), errp) &&
         ferry__wire_preempt_hello_decode(hello, session, errp);
    if (ok && memcmp(session, d->pc.session, sizeof(session)) != 0) {
        ferry_error_setg(errp, "it belongs to another migration (session id differs)");
        ok = false;
    }
    if (!ok) {
        ferry__channel_free(c);
        ferry_error_prepend(errp, "postcopy preempt channel: ");
        return false;
    }
    /* Quiet while the workload faults on nothing: its reader has no io-timeout (the main channel has one). */
    if (!ferry__channel_set_timeout(c, 0, errp)) {
        ferry__channel_free(c);
        return false;
    }
    d->pchan = c;
    ferry__mutex_lock(&d->m->lock);
    d->m->in_pchan = c;
    ferry__mutex_unlock(&d->m->lock);
    if (pthread_create(&d->preempt_thread, NULL, pc_preempt_thread, d) != 0) {
        ferry_error_setg(errp, "cannot start the postcopy preempt thread");
        return false;
    }
    pthread_setname_np(d->preempt_thread, "mig/dst/preempt");
    d->preempt_started = true;
    return true;
}

/* POSTCOPY_START: read it; after_pc_start acts on it. */
static bool step_pc_start(Dest *d, FerryError **errp)
{
    uint8_t p[FERRY_WIRE_PC_START_LEN];
    return ferry__record_read(&d->r, p, sizeof(p), errp) && ferry__wire_pc_start_decode(p, &d->pc, errp);
}

/* The switch: stop whatever writes RAM directly, register it with userfaultfd, start the fault thread. */
static bool after_pc_start(Dest *d, FerryError **errp)
{
    FerryMigration *m = d->m;
    if (d->chan->one_way) {
        ferry_error_setg(errp, "POSTCOPY_START on a channel without a return path: pages could not be requested");
        return false;
    }
    d->pc_start_ms = ferry__clock_ms();
    populate_stop(d);
    if (!stop_multifd(d, errp)) {
        return false;
    }
    size_t n = m->nblocks ? m->nblocks : 1;
    d->need = ferry__xcalloc(n, sizeof(*d->need));
    d->requested = ferry__xcalloc(n, sizeof(*d->requested));
    for (size_t i = 0; i < m->nblocks; i++) {
        d->need[i] = ferry__bitmap_new(m->blocks[i]->npages);
        d->requested[i] = ferry__bitmap_new(m->blocks[i]->npages);
    }
    d->bounce = ferry__xmalloc((size_t)FERRY_WIRE_MAX_RUN_PAGES * d->ps);
    d->blocktime = ferry__blocktime_new();
    for (size_t i = 0; i < m->nvcpu_tids; i++) {
        if (m->vcpu_tids[i]) {
            ferry__blocktime_set_vcpu(d->blocktime, (unsigned)i, m->vcpu_tids[i]);
        }
    }
    ferry__mutex_lock(&m->lock);
    ferry__blocktime_free(m->blocktime);
    m->blocktime = d->blocktime; /* query-migrate reads it under lock; the engine frees it */
    ferry__mutex_unlock(&m->lock);
    d->uffd = ferry__uffd_new(m->blocks, m->nblocks, errp);
    if (!d->uffd) {
        return false;
    }
    d->fault_wake = eventfd(0, EFD_CLOEXEC);
    if (d->fault_wake < 0 || pthread_create(&d->fault_thread, NULL, pc_fault_thread, d) != 0) {
        ferry_error_setg(errp, "cannot start the postcopy fault thread");
        return false;
    }
    pthread_setname_np(d->fault_thread, "mig/dst/fault");
    d->fault_started = true;
    d->in_postcopy = true;
    ferry__mig_set_state(m, FERRY_MIG_ACTIVE, FERRY_MIG_POSTCOPY_ACTIVE);
    return !(d->pc.flags & FERRY_PC_PREEMPT) || pc_accept_preempt(d, errp);
}

/* POSTCOPY_NEED: drop the listed pages and mark them needed. */
static bool step_pc_need(Dest *d, FerryError **errp)
{
    uint8_t *buf;
    FerryWireHint h;
    if (!ferry__record_read_hint(&d->r, &buf, &h, errp)) {
        return false;
    }
    bool ok = h.block < d->m->nblocks;
    if (!ok) {
        ferry_error_setg(errp, "POSTCOPY_NEED record names block %u, this process has %zu", h.block, d->m->nblocks);
    }
    for (uint32_t i = 0; ok && i < h.count; i++) {
        FerryRamBlock *b = d->m->blocks[h.block];
        uint64_t first, n;
        ferry__wire_hint_range(&h, i, &first, &n);
        if (first >= b->npages || n > b->npages - first) {
            ferry_error_setg(errp, "POSTCOPY_NEED range %llu+%llu is outside RAM block '%s'",
                             (unsigned long long)first, (unsigned long long)n, b->name);
            ok = false;
            break;
        }
        ok = ferry__ram_block_drop_pages(b, first, n, errp);
        uint64_t before = ferry__bitmap_count(d->need[h.block], b->npages);
        ferry__bitmap_set_range_atomic(d->need[h.block], first, n);
        __atomic_add_fetch(&d->need_left, ferry__bitmap_count(d->need[h.block], b->npages) - before,
                           __ATOMIC_RELAXED);
    }
    free(buf);
    return ok;
}

/* The loader thread: the device state (its load may fault on needed pages, which this thread's reads bring),
 * then the workload runs. */
static void *pc_load_thread(void *opaque)
{
    Dest *d = opaque;
    FerryError *err = NULL;
    if (load_sections(d, &err)) {
        ferry__vm_incoming_done(d->m, d->pc.flags & FERRY_PC_SOURCE_RUNNING);
        ferry__mutex_lock(&d->m->lock);
        d->m->stats.downtime_ms = ferry__clock_ms() - d->pc_start_ms;
        ferry__mutex_unlock(&d->m->lock);
    }
    d->load_err = err;
    return NULL;
}

/* POSTCOPY_RUN: empty; after it, the loader thread runs the workload while this thread reads pages. */
static bool step_pc_run(Dest *d, FerryError **errp)
{
    (void)d;
    (void)errp;
    return true;
}

static bool after_pc_run(Dest *d, FerryError **errp)
{
    if (!check_sections_present(d, errp)) {
        return false;
    }
    if (pthread_create(&d->load_thread, NULL, pc_load_thread, d) != 0) {
        ferry_error_setg(errp, "cannot start the postcopy loader thread");
        return false;
    }
    pthread_setname_np(d->load_thread, "mig/dst/load");
    d->load_started = true;
    __atomic_store_n(&d->pc_running, true, __ATOMIC_RELEASE);
    return true;
}

/* Stop the fault and preempt threads and let userfaultfd go (every blocked thread is woken: with all pages placed
 * it finds its page; at a forced end, a missing page then reads as zero). Idempotent. */
static void pc_teardown(Dest *d)
{
    if (d->fault_started) {
        uint64_t one = 1;
        if (write(d->fault_wake, &one, sizeof(one)) < 0) {
            ferry__log(FERRY_LOG_WARN, "postcopy: cannot stop the fault thread: %s", strerror(errno));
        }
        pthread_join(d->fault_thread, NULL);
        d->fault_started = false;
    }
    if (d->preempt_started) {
        __atomic_store_n(&d->pc_stopping, true, __ATOMIC_RELEASE);
        ferry__channel_shutdown(d->pchan);
        pthread_join(d->preempt_thread, NULL);
        d->preempt_started = false;
    }
    ferry__uffd_free(d->uffd);
    d->uffd = NULL;
}

/* The END of a postcopy stream: every needed page placed (those on the preempt channel may still be landing),
 * the device state loaded, the totals right. Then userfaultfd can go. */
static bool pc_after_end(Dest *d, FerryError **errp)
{
    /* The source writes END once it has handed every page to a channel: requested pages may still be on their way
     * on the preempt channel. Wait while they keep coming; ten seconds without one is a failure. */
    uint64_t left = __atomic_load_n(&d->need_left, __ATOMIC_ACQUIRE);
    int64_t deadline = ferry__clock_ms() + 10000;
    while (left > 0 && ferry__clock_ms() < deadline && !ferry__stream_failed(d->s)) {
        ferry__sleep_ns(200 * 1000);
        uint64_t now_left = __atomic_load_n(&d->need_left, __ATOMIC_ACQUIRE);
        if (now_left < left) {
            deadline = ferry__clock_ms() + 10000;
        }
        left = now_left;
    }
    if (left) {
        ferry_error_setg(errp, "END came with %llu pages still missing (none arrived for 10 s)",
                         (unsigned long long)left);
        return false;
    }
    pthread_join(d->load_thread, NULL);
    d->load_started = false;
    if (d->load_err) {
        ferry_error_propagate(errp, d->load_err);
        d->load_err = NULL;
        return false;
    }
    uint64_t pages = d->pages + __atomic_load_n(&d->pc_pages, __ATOMIC_RELAXED);
    if (!ferry__record_check_end(&d->end, pages, d->sections_seen, errp)) {
        return false;
    }
    pc_teardown(d);
    return true;
}

static void update_stats(Dest *d)
{
    FerryMigration *m = d->m;
    ferry__mutex_lock(&m->lock);
    m->stats.transferred = ferry__stream_bytes_read(d->s) + d->pipe_bytes;
    m->stats.normal = d->normal;
    m->stats.duplicate = d->duplicate;
    m->stats.skipped_bytes = d->skipped;
    m->stats.page_pipe_bytes = d->pipe_bytes;
    if (d->in_postcopy) {
        m->stats.transferred += __atomic_load_n(&d->pc_preempt_bytes, __ATOMIC_RELAXED);
        m->stats.normal += __atomic_load_n(&d->pc_normal, __ATOMIC_RELAXED);
        m->stats.duplicate += __atomic_load_n(&d->pc_zero, __ATOMIC_RELAXED);
        m->stats.postcopy_bytes = __atomic_load_n(&d->pc_bytes, __ATOMIC_RELAXED);
        m->stats.postcopy_requests = __atomic_load_n(&d->pc_requests, __ATOMIC_RELAXED);
        m->stats.postcopy_pending = __atomic_load_n(&d->need_left, __ATOMIC_RELAXED);
    }
    if (d->mfd) {
        FerryMultifdStats st;
        ferry__multifd_recv_stats(d->mfd, &st);
        m->stats.multifd_bytes = st.bytes;
        m->stats.transferred += st.bytes;
        m->stats.normal += st.normal;
        m->stats.duplicate += st.zero;
        m->stats.mfd_seen_bytes = st.bytes;
        m->stats.mfd_seen_normal = st.normal;
        m->stats.mfd_seen_zero = st.zero;
    }
    ferry__mutex_unlock(&m->lock);
}

/* ---- The receive loop: the stream header, then one record at a time, each through its step. ---- */

typedef bool (*DestStepFn)(Dest *d, FerryError **errp);

/*
 * One step per record kind; the phases each may come in, its flags, length and feature are the grammar of the
 * record reader (record-reader.c), which refuses an out-of-place record before any step runs. @step reads the
 * payload; @after, if any, runs once the record's trailer has been checked.
 */
static const struct DestStep {
    uint16_t type;
    DestStepFn step, after;
} dest_steps[] = {
    { FERRY_REC_HELLO, step_hello, after_hello },
    { FERRY_REC_FEATURES, step_features, after_features },
    { FERRY_REC_CONFIG, step_config, NULL },
    { FERRY_REC_FDS, step_fds, NULL },
    { FERRY_REC_MULTIFD, step_multifd, NULL },
    { FERRY_REC_POPULATE_HINT, step_hint, NULL },
    { FERRY_REC_RAM_PAGES, step_pages, NULL },
    { FERRY_REC_PASS_END, step_pass_end, NULL },
    { FERRY_REC_MULTIFD_SYNC, step_multifd_sync, NULL },
    { FERRY_REC_SECTION, step_section, NULL },
    { FERRY_REC_END, step_end, after_end },
    { FERRY_REC_COMMIT, step_commit, NULL },
    { FERRY_REC_POSTCOPY_START, step_pc_start, after_pc_start },
    { FERRY_REC_POSTCOPY_NEED, step_pc_need, NULL },
    { FERRY_REC_POSTCOPY_RUN, step_pc_run, after_pc_run },
    { FERRY_REC_MAPPED_RAM, step_mapped, after_mapped },
};

static const struct DestStep unknown_step = { FERRY_REC_NONE, step_unknown, NULL };

static const struct DestStep *step_of(const Dest *d)
{
    if (!ferry__record_known(&d->r)) {
        return &unknown_step;
    }
    for (size_t i = 0; i < FERRY_ARRAY_SIZE(dest_steps); i++) {
        if (dest_steps[i].type == d->r.rh.type) {
            return &dest_steps[i];
        }
    }
    return NULL;
}

/* One record: its header checked by the reader, its step, its trailer, then what follows from it. */
static bool receive_record(Dest *d, FerryError **errp)
{
    bool ok = ferry__record_next(&d->r, errp);
    const struct DestStep *st = ok ? step_of(d) : NULL;
    if (ok && !st) {
        FERRY_BUG("the record reader let a %s record through to the destination", d->r.where);
        ferry_error_setg(errp, "internal error: no step for the record");
        ok = false;
    }
    ok = ok && st->step(d, errp) && ferry__record_finish(&d->r, errp);
    if (ok) {
        update_stats(d);
        ok = !st->after || st->after(d, errp);
    }
    if (!ok) {
        ferry__record_error_prefix(&d->r, errp);
    }
    return ok;
}

/* The stream header. A TLS handshake record (type 0x16, version 3.x) there means the source was told to use TLS
 * and this end was not. */
static bool receive_header(Dest *d, FerryError **errp)
{
    uint8_t hdr[FERRY_WIRE_HEADER_LEN];
    bool ok = ferry__record_read_stream_header(&d->r, hdr, errp);
    if (ok && !ferry__channel_is_tls(d->chan) && hdr[0] == 0x16 && hdr[1] == 0x03) {
        ferry_error_setg(errp, "the source speaks TLS, but this destination has no tls-creds set (set tls-creds "
                         "to a tls-creds-x509 or tls-creds-psk object with endpoint=server)");
        ok = false;
    }
    ok = ok && ferry__wire_decode_header(hdr, errp);
    if (!ok) {
        ferry__record_error_prefix(&d->r, errp);
    }
    return ok;
}

/* The stream up to and including END, its totals checked and the sections loaded. */
static bool receive(Dest *d, FerryError **errp)
{
    d->s = ferry__stream_new(d->chan);
    ferry__record_reader_init(&d->r, d->s);
    if (!receive_header(d, errp)) {
        return false;
    }
    while (d->r.phase != FERRY_PHASE_END) {
        if (!receive_record(d, errp)) {
            return false;
        }
    }
    return true;
}

/* Tell the source why, then let it read that before the connection goes away: stop writing, drain what it still
 * sends for a short while (closing with unread data would reset the connection and lose the message). */
static void send_nack(FerryChannel *c, const FerryError *err)
{
    const char *msg = ferry_error_msg(err);
    size_t n = FERRY_MIN(strlen(msg), 4096);
    uint8_t h[FERRY_WIRE_RECORD_HEADER_LEN];
    ferry__wire_encode_record(h, &(FerryRecordHeader){ .type = FERRY_REC_NACK, .length = (uint32_t)n });
    uint8_t trailer[FERRY_WIRE_RECORD_TRAILER_LEN];
    ferry__put_be32(trailer, ferry__crc32c(ferry__crc32c(0, h, sizeof(h)), msg, n));
    if (!ferry__channel_write_all(c, h, sizeof(h), NULL) || !ferry__channel_write_all(c, msg, n, NULL) ||
        !ferry__channel_write_all(c, trailer, sizeof(trailer), NULL)) {
        return;
    }
    /* On the socket itself, also under TLS: the source sees the end after the NACK's record either way. */
    shutdown(c->fd, SHUT_WR);
    int64_t deadline = ferry__clock_ms() + 2000;
    char sink[65536];
    while (ferry__clock_ms() < deadline) {
        if (ferry__channel_wait_readable(c, 100) && ferry__channel_read(c, sink, sizeof(sink), NULL) <= 0) {
            break;
        }
    }
}

/* switchover-commit: the record after the ACK must be COMMIT (the only record of phase end). Anything else, or the
 * end of the connection, means the source may not have switched over. */
static bool await_commit(Dest *d, FerryError **errp)
{
    FERRY_ASSERT(d->r.phase == FERRY_PHASE_END);
    return receive_record(d, errp);
}

/* Where a failure can be reported to the source: the channel, or for a TLS session that never came up whatever
 * the TLS channel says (ferry__tls_channel_report_path); NULL for nowhere. */
static FerryChannel *report_channel(Dest *d)
{
    if (!d->chan || d->chan->one_way) {
        return NULL;
    }
    if (ferry__channel_is_tls(d->chan) && !d->tls_up) {
        return ferry__tls_channel_report_path(d->chan);
    }
    return d->chan;
}

/*
 * The TLS server's handshake on the accepted main channel, before any byte of the stream is read. The TLS channel
 * is published as in_chan first, so that quit interrupts the handshake.
 */
static bool start_tls(Dest *d, FerryError **errp)
{
    FerryMigration *m = d->m;
    if (!ferry__mig_tls_wrap(m, &d->chan, &m->in_chan, d->tls, errp)) {
        return false;
    }
    ferry__mutex_lock(&m->lock);
    bool quitting = m->quitting;
    ferry__mutex_unlock(&m->lock);
    if (quitting) {
        ferry_error_setg(errp, "shutting down");
        return false;
    }
    d->tls_up = ferry__mig_tls_handshake(m, d->chan, errp);
    return d->tls_up;
}

/*
 * The phase before the stream: accept the main channel and, with tls-creds, run the TLS handshake on it. The
 * listener stays open (and m->listener set, so that quit can interrupt an accept) until FEATURES says whether
 * multifd channels follow; then it is closed (release_listener), as QEMU takes one connection.
 */
static bool accept_main(Dest *d, FerryError **errp)
{
    FerryMigration *m = d->m;
    ferry__mutex_lock(&m->lock);
    d->listener = m->listener;
    ferry__mutex_unlock(&m->lock);
    FerryChannel *c = ferry__listener_accept(d->listener, errp);
    ferry__mutex_lock(&m->lock);
    m->in_chan = c;
    bool quitting = m->quitting;
    d->timeout_ms = (unsigned)m->params.io_timeout;
    ferry__mutex_unlock(&m->lock);
    if (!c) {
        return false;
    }
    d->chan = c;
    if (!ferry__channel_set_timeout(c, d->timeout_ms, errp)) {
        return false;
    }
    if (quitting) {
        ferry_error_setg(errp, "shutting down");
        return false;
    }
    return !d->tls || start_tls(d, errp);
}

/* The stream, with the populate thread faulting in announced ranges meanwhile. */
static bool receive_stream(Dest *d, FerryError **errp)
{
    if (pthread_create(&d->pop_thread, NULL, populate_thread, d) == 0) {
        pthread_setname_np(d->pop_thread, "mig/dst/pop");
        d->pop_started = true;
    }
    FerryError *err = NULL;
    bool ok = receive(d, &err);
    populate_stop(d);
    release_listener(d);
    if (!ok) {
        /* A multifd channel's failure shuts the main channel's reading side down: its error is the real one. */
        FerryError *merr = NULL;
        if (d->mfd && ferry__multifd_recv_error(d->mfd, &merr)) {
            ferry_error_free(err);
            err = merr;
        }
        ferry_error_propagate(errp, err);
    }
    return ok;
}

/* ---- Postcopy recovery on this side (docs/design.md, "Postcopy"): pause, accept the source's resume, tell it
 * which pages are still missing, go on reading. ---- */

/* The POSTCOPY_RESUME record that opens a recovering connection: always with a CRC trailer. */
static bool pc_read_resume(Dest *d, FerryError **errp)
{
    uint8_t hdr[FERRY_WIRE_HEADER_LEN], rec[FERRY_WIRE_RECORD_HEADER_LEN + FERRY_WIRE_PC_SESSION_LEN + 4];
    FerryRecordHeader rh;
    if (!ferry__stream_read(d->s, hdr, sizeof(hdr)) || !ferry__stream_read(d->s, rec, sizeof(rec))) {
        ferry__stream_check(d->s, errp);
        return false;
    }
    if (!ferry__wire_decode_header(hdr, errp)) {
        return false;
    }
    ferry__wire_decode_record(rec, &rh);
    size_t body = FERRY_WIRE_RECORD_HEADER_LEN + FERRY_WIRE_PC_SESSION_LEN;
    if (rh.type != FERRY_REC_POSTCOPY_RESUME || rh.length != FERRY_WIRE_PC_SESSION_LEN) {
        ferry_error_setg(errp, "the first record is %s (%u bytes), expected POSTCOPY_RESUME",
                         ferry__wire_record_name(rh.type), rh.length);
        return false;
    }
    if (ferry__get_be32(rec + body) != ferry__crc32c(0, rec, body)) {
        ferry_error_setg(errp, "POSTCOPY_RESUME is damaged (CRC mismatch)");
        return false;
    }
    if (memcmp(rec + FERRY_WIRE_RECORD_HEADER_LEN, d->pc.session, FERRY_WIRE_PC_SESSION_LEN) != 0) {
        ferry_error_setg(errp, "the resuming source belongs to another migration (session id differs)");
        return false;
    }
    return true;
}

/* RESUME_NEED records (the pages still missing, in chunks that fit a control record), then RESUME_ACK. */
static bool pc_send_need(Dest *d, FerryError **errp)
{
    enum { CHUNK = 4u << 20 }; /* pages per record: a 512 KiB bitmap */
    uint8_t *buf = ferry__xmalloc(FERRY_WIRE_RESUME_NEED_HEADER_LEN + CHUNK / 8);
    bool ok = true;
    for (size_t bi = 0; ok && bi < d->m->nblocks; bi++) {
        uint64_t npages = d->m->blocks[bi]->npages;
        for (uint64_t first = 0; ok && first < npages; first += CHUNK) {
            uint64_t n = FERRY_MIN(npages - first, (uint64_t)CHUNK);
            uint8_t *bits = buf + FERRY_WIRE_RESUME_NEED_HEADER_LEN;
            memset(bits, 0, (size_t)((n + 7) / 8));
            for (uint64_t i = 0; i < n; i++) {
                if (ferry__bitmap_test_atomic(d->need[bi], first + i)) {
                    bits[i / 8] |= (uint8_t)(1u << (i % 8));
                }
            }
            ferry__wire_resume_need_encode_header(&(FerryWireResumeNeed){ .block = (uint32_t)bi, .first = first,
                                                                           .count = n }, buf);
            ok = rp_write(d, FERRY_REC_RESUME_NEED, buf, (uint32_t)(FERRY_WIRE_RESUME_NEED_HEADER_LEN + (n + 7) / 8),
                          errp);
        }
    }
    free(buf);
    return ok && rp_write(d, FERRY_REC_RESUME_ACK, NULL, 0, errp);
}

/* Accept the recovering source on @l: its channel replaces the broken one, the stream goes on in phase
 * postcopy. */
static bool pc_accept_resume(Dest *d, FerryListener *l, FerryError **errp)
{
    FerryMigration *m = d->m;
    FerryChannel *c = ferry__listener_accept(l, errp);
    if (!c) {
        return false;
    }
    ferry__mutex_lock(&m->lock);
    m->in_chan = c;
    ferry__mutex_unlock(&m->lock);
    ferry__mutex_lock(&d->rp_lock);
    ferry__stream_free(d->s);
    ferry__channel_free(d->chan);
    d->chan = c;
    d->s = ferry__stream_new(c);
    ferry__mutex_unlock(&d->rp_lock);
    if (!ferry__channel_set_timeout(c, d->timeout_ms, errp)) {
        return false;
    }
    if (d->tls && !start_tls(d, errp)) {
        return false;
    }
    ferry__mutex_lock(&d->rp_lock);
    ferry__stream_free(d->s);
    d->s = ferry__stream_new(d->chan);
    ferry__mutex_unlock(&d->rp_lock);
    ferry__mig_set_state(m, FERRY_MIG_POSTCOPY_RECOVER_SETUP, FERRY_MIG_POSTCOPY_RECOVER);
    if (!pc_read_resume(d, errp) || !pc_send_need(d, errp)) {
        return false;
    }
    if ((d->pc.flags & FERRY_PC_PREEMPT) && !pc_accept_preempt(d, errp)) {
        return false;
    }
    ferry__record_reader_init(&d->r, d->s);
    ferry__record_set_features(&d->r, &d->used);
    d->r.phase = FERRY_PHASE_POSTCOPY;
    d->r.trailers = ferry__features_uses(&d->used, FERRY_CAP_RECORD_CHECKSUM);
    ferry__stream_set_crc(d->s, d->r.trailers);
    ferry__mig_set_state(m, FERRY_MIG_POSTCOPY_RECOVER, FERRY_MIG_POSTCOPY_ACTIVE);
    pc_rerequest(d);
    return true;
}

/*
 * The connection broke after POSTCOPY_RUN (or migrate-pause): pause, keeping every page and the workload
 * (its threads wait on what is missing), until migrate-recover gives a listener and a source resumes on it.
 * True once resumed; false (with *errp the reason of the pause) when the process quits instead.
 */
static bool pc_pause(Dest *d, FerryError **errp)
{
    FerryMigration *m = d->m;
    for (;;) {
        /* Whatever broke, the source must see the break too: it pauses on its side. */
        ferry__channel_shutdown(d->chan);
        if (d->preempt_started) {
            __atomic_store_n(&d->pc_stopping, true, __ATOMIC_RELEASE);
            ferry__channel_shutdown(d->pchan);
            pthread_join(d->preempt_thread, NULL);
            d->preempt_started = false;
            __atomic_store_n(&d->pc_stopping, false, __ATOMIC_RELEASE);
            ferry__mutex_lock(&m->lock);
            m->in_pchan = NULL;
            ferry__mutex_unlock(&m->lock);
            ferry__channel_free(d->pchan);
            d->pchan = NULL;
        }
        ferry_error_prepend(errp, "postcopy paused, the workload running here with pages still at the source "
                            "(its threads wait for them): recover with migrate-recover here and migrate "
                            "resume=true there; ");
        ferry__log(FERRY_LOG_WARN, "%s", ferry_error_msg(*errp));
        FerryMigrationStatus from = ferry__mig_status(m);
        if (from != FERRY_MIG_POSTCOPY_PAUSED && !ferry__mig_pause(m, from, *errp)) {
            return false;
        }
        FerryListener *l = ferry__mig_wait_recover(m);
        if (!l) {
            return false;
        }
        ferry__mig_set_state(m, FERRY_MIG_POSTCOPY_PAUSED, FERRY_MIG_POSTCOPY_RECOVER_SETUP);
        FerryError *err = NULL;
        d->listener = l;
        bool ok = pc_accept_resume(d, l, &err);
        ferry__mutex_lock(&m->lock);
        if (m->listener == l) {
            m->listener = NULL;
        }
        ferry__mutex_unlock(&m->lock);
        ferry__listener_free(l);
        d->listener = NULL;
        if (ok) {
            ferry_error_free(*errp);
            *errp = NULL;
            return true;
        }
        ferry_error_free(*errp);
        *errp = err;
    }
}

/* The rest of a resumed postcopy stream, up to END. */
static bool receive_resumed(Dest *d, FerryError **errp)
{
    while (d->r.phase != FERRY_PHASE_END) {
        if (!receive_record(d, errp)) {
            return false;
        }
    }
    return true;
}

/* ACK: everything arrived, was checked and loaded. Return-path records always carry a CRC trailer. */
static bool send_ack(Dest *d, FerryError **errp)
{
    uint8_t ack[FERRY_WIRE_RECORD_HEADER_LEN + FERRY_WIRE_RECORD_TRAILER_LEN];
    ferry__wire_encode_record(ack, &(FerryRecordHeader){ .type = FERRY_REC_ACK, .length = 0 });
    ferry__put_be32(ack + FERRY_WIRE_RECORD_HEADER_LEN, ferry__crc32c(0, ack, FERRY_WIRE_RECORD_HEADER_LEN));
    if (!ferry__channel_write_all(d->chan, ack, sizeof(ack), errp)) {
        ferry_error_prepend(errp, "cannot acknowledge completion to the source: ");
        return false;
    }
    return true;
}

/* An incoming migration's phases: accept, receive (setup -> active), acknowledge, await the commit. */
static bool run(Dest *d, FerryError **errp)
{
    FerryMigration *m = d->m;
    if (!accept_main(d, errp)) {
        return false;
    }
    ferry__mutex_lock(&m->lock);
    m->stats.setup_time_ms = ferry__clock_ms() - m->stats.start_ms;
    ferry__mutex_unlock(&m->lock);
    ferry__mig_set_state(m, FERRY_MIG_SETUP, FERRY_MIG_ACTIVE);
    bool ok = receive_stream(d, errp);
    /* After POSTCOPY_RUN the workload runs here: a failure pauses, keeping every page, until a recovery. */
    while (!ok && d->pc_running && pc_pause(d, errp)) {
        ok = receive_resumed(d, errp);
    }
    if (!ok) {
        return false;
    }
    if (d->chan->one_way) {
        return true; /* nobody to acknowledge to: the stream was checked on its own */
    }
    if (!send_ack(d, errp)) {
        return false;
    }
    if (d->commit && !d->in_postcopy && !await_commit(d, errp)) {
        d->uncommitted = true;
        ferry_error_prepend(errp, "the source did not confirm the switchover after this destination's ACK, so "
                            "it may still be running; the state is loaded here and left paused (if the source "
                            "is not running, 'cont' runs it here): ");
        return false;
    }
    return true;
}

static void dest_init(Dest *d, FerryMigration *m)
{
    *d = (Dest){ .m = m, .ps = ferry_ram_page_size(), .first_pass = true };
    /* A new incoming migration replaces whatever a mapped restore before it left (its verifier reads RAM that is
     * about to be replaced). */
    ferry__mutex_lock(&m->lock);
    FerryMappedVerifier *old = m->verifier;
    m->verifier = NULL;
    free(m->verify_error);
    m->verify_error = NULL;
    ferry__mutex_unlock(&m->lock);
    ferry__mapped_verify_free(old);
    for (size_t i = 0; i < m->nblocks; i++) {
        FerryRamBlock *b = m->blocks[i];
        __atomic_store_n(&b->recv_frontier, 0, __ATOMIC_RELAXED);
        if (b->recv_written) {
            ferry__bitmap_zero(b->recv_written, (size_t)b->npages);
        } else {
            b->recv_written = ferry__bitmap_new((size_t)b->npages);
        }
        /* What is populated now may hold data (preallocated RAM, a host that wrote it); the rest reads as zero. */
        ferry__ram_block_present_pages(b, b->recv_written);
    }
    pthread_mutex_init(&d->pop_lock, NULL);
    pthread_cond_init(&d->pop_cond, NULL);
    ferry__mutex_init(&d->rp_lock);
    d->fault_wake = -1;
}

/* What postcopy leaves: the threads stopped (the loader joined: it may still be loading at a forced end, and
 * needs pages only the channel it no longer has could bring, so it is woken by letting userfaultfd go first). */
static void pc_cleanup(Dest *d)
{
    pc_teardown(d);
    if (d->load_started) {
        pthread_join(d->load_thread, NULL);
        d->load_started = false;
    }
    ferry_error_free(d->load_err);
    d->load_err = NULL;
    for (size_t i = 0; d->need && i < d->m->nblocks; i++) {
        free(d->need[i]);
        free(d->requested[i]);
    }
    free(d->need);
    free(d->requested);
    free(d->bounce);
    d->need = d->requested = NULL;
    d->bounce = NULL;
    if (d->fault_wake >= 0) {
        close(d->fault_wake);
        d->fault_wake = -1;
    }
    ferry__mutex_lock(&d->m->lock);
    d->m->in_pchan = NULL;
    ferry__mutex_unlock(&d->m->lock);
    ferry__channel_free(d->pchan);
    d->pchan = NULL;
    ferry__mutex_destroy(&d->rp_lock);
}

/* Everything but the channel. */
static void dest_cleanup(Dest *d)
{
    /* The channel threads write RAM: they are stopped before anyone discards it or lets the workload run. */
    ferry__mutex_lock(&d->m->lock);
    d->m->in_mfd = NULL;
    ferry__mutex_unlock(&d->m->lock);
    ferry__multifd_recv_free(d->mfd);
    d->mfd = NULL;
    release_listener(d);
    ferry__page_pipe_free(d->pipe);
    ferry__stream_free(d->s);
    for (size_t i = 0; i < d->nstaged; i++) {
        ferry_visitor_free(d->staged[i].v);
        ferry__schema_free(d->staged[i].schema);
        free(d->staged[i].payload);
    }
    free(d->staged);
    free(d->pop_q);
    free(d->hinted);
    pthread_mutex_destroy(&d->pop_lock);
    pthread_cond_destroy(&d->pop_cond);
    pc_cleanup(d);
}

bool ferry__migration_load_stream(FerryMigration *m, FerryChannel *c, uint64_t *skipped, FerryError **errp)
{
    Dest d;
    dest_init(&d, m);
    d.chan = c;
    bool ok = receive(&d, errp);
    if (skipped) {
        *skipped = d.skipped;
    }
    dest_cleanup(&d);
    return ok;
}

/*
 * The end: the run state and the terminal status. Completed: the workload runs here (unless the source was stopped
 * or -S says otherwise). Undecided (the switchover's commit was lost): not a partial state but one that may or
 * may not be the only copy, so it is kept, paused, and the process stays up whatever exit-on-error says, for the
 * operator to decide. Failed: RAM is discarded, and with exit-on-error the process exits.
 */
static void dest_finish(Dest *d, bool ok, bool exit_on_error, const FerryError *err)
{
    FerryMigration *m = d->m;
    if (ok && d->in_postcopy) {
        ferry__mig_set_state(m, FERRY_MIG_POSTCOPY_ACTIVE, FERRY_MIG_COMPLETED);
        return;
    }
    if (ok) {
        ferry__vm_incoming_done(m, d->source_running);
        ferry__mig_set_state(m, FERRY_MIG_ACTIVE, FERRY_MIG_COMPLETED);
        return;
    }
    if (d->pc_running) {
        /* Only a quit ends a paused postcopy here: the state was split, and what ran here is all there is. */
        ferry__log(FERRY_LOG_ERROR, "incoming postcopy ended: %s", ferry_error_msg(err));
        ferry__mig_fail(m, err);
        return;
    }
    if (d->uncommitted) {
        ferry__vm_incoming_done(m, false);
        ferry__log(FERRY_LOG_ERROR, "incoming migration undecided: %s", ferry_error_msg(err));
        ferry__mig_fail(m, err);
        return;
    }
    /* A mapped restore's verifier goes first: the mappings it checks and prefetches are about to be dropped. */
    ferry__mutex_lock(&m->lock);
    FerryMappedVerifier *v = m->verifier;
    m->verifier = NULL;
    ferry__mutex_unlock(&m->lock);
    ferry__mapped_verify_free(v);
    for (size_t i = 0; i < m->nblocks; i++) {
        ferry__ram_block_discard(m->blocks[i]);
    }
    /* Through the logger: the message may quote what the peer sent, and the logger escapes it. */
    ferry__log(FERRY_LOG_ERROR, "incoming migration failed: %s", ferry_error_msg(err));
    ferry__mig_fail(m, err);
    if (exit_on_error && !m->quitting && m->quit_fn) {
        m->quit_fn(1, m->quit_opaque);
    }
}

void *ferry__dest_thread(void *opaque)
{
    FerryMigration *m = opaque;
    Dest d;
    dest_init(&d, m);
    FerryError *err = NULL;
    ferry__mutex_lock(&m->lock);
    d.tls = m->in_tls;
    m->in_tls = NULL;
    ferry__mutex_unlock(&m->lock);

    bool ok = run(&d, &err);
    populate_stop(&d);
    FerryChannel *report = ok || d.uncommitted || d.pc_running || m->quitting ? NULL : report_channel(&d);
    if (report) {
        send_nack(report, err);
    }
    ferry__mutex_lock(&m->lock);
    m->in_chan = NULL;
    bool exit_on_error = m->exit_on_error;
    ferry__mutex_unlock(&m->lock);
    dest_cleanup(&d);
    ferry__channel_free(d.chan);
    ferry__tls_unref(d.tls);

    dest_finish(&d, ok, exit_on_error, err);
    ferry_error_free(err);
    return NULL;
}
