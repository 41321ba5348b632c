/*
 * The source side of a precopy migration, run on its own thread (ferry__source_thread):
 *
 *   setup:      connect; arm the dirty tracker; stream header, CONFIG (block list), POPULATE_HINT (which pages
 *               hold data, so the destination can fault them in ahead of the data; later passes announce the
 *               pages first written since, so that no page is faulted in on the critical path if avoidable).
 *   pass 1:     every page the kernel has populated (never-populated pages read as zero and are not sent).
 *   pass n:     harvest the tracker (which re-arms it in the same step), then send what was written. After each
 *               pass: expected downtime = dirty bytes / measured bandwidth; switch over when it is within
 *               downtime-limit. A workload that dirties faster than the link keeps iterating (as QEMU does)
 *               until the limit or the bandwidth is raised, or the migration is cancelled.
 *   switchover: stop the workload, last harvest, remaining pages, device sections, END; wait for the
 *               destination's ACK; then "completed" and run state postmigrate.
 *
 * Without a return path (exec, file, a pipe) the end of the stream, written and finished, takes the ACK's place.
 *
 * Any error before the ACK (including cancel) disarms the tracker and puts the workload back as it was: RAM was
 * only ever read, so the source is intact. Pages are read after they were harvested, so a write that races with
 * the send is caught by the next harvest and the page is sent again.
 *
 * With the "none" tracker there are no live passes: the workload is stopped and all RAM sent (stop-and-copy).
 *
 * With multifd the pages of every pass go in batches to the channel threads of src/multifd/ instead of the main
 * channel; each pass ends with a SYNC packet on every channel and a MULTIFD_SYNC record on the main channel, and
 * waits until the channels have written the pass, so that the bandwidth measured is what really left.
 *
 * With postcopy-ram, migrate-start-postcopy replaces the switchover by the switch to postcopy (the section
 * "Postcopy" below): the destination runs before all RAM has arrived, and the source sends what it asks for first.
 */
#include <errno.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "migration/mapped-ram.h"
#include "migration/migration-priv.h"
#include "multifd/multifd.h"
#include "ram/snapshot-wp.h"
#include "stream/stream.h"
#include "util/bitmap.h"
#include "util/util.h"
#include "visitor/visitor-int.h"
#include "wire/wire.h"

#define RATE_WINDOW_NS (100 * 1000 * 1000LL) /* rate limiting slice, as QEMU's BUFFER_DELAY */
#define BW_SAMPLE_NS (50 * 1000 * 1000LL)    /* shortest span a bandwidth sample is taken over */
#define COPY_BELOW (64 * 1024)               /* with the workload stopped, smaller runs are still copied */
#define RETURN_PATH_POLL_EVERY 8             /* records between checks of the return path */

typedef struct EncodedSection EncodedSection;

typedef struct Source {
    FerryMigration *m;
    FerryTls *tls;        /* tls-creds set: every channel is a TLS client (taken from m->out_tls) */
    FerryChannel *chan;
    FerryStream *s;
    FerryDirtyTracker *tracker;
    unsigned long **send; /* per block: pages still to send in this pass */
    unsigned long **hinted; /* per block: pages already announced in a POPULATE_HINT */
    unsigned long *scratch; /* one bitmap as large as the largest block */
    bool *maybe_set;      /* per block: false only if send[] has no bit set, so that a pass, a harvest's count
                           * and the hints skip the block without reading its bitmap (an idle 256 GiB workload
                           * would otherwise scan 3 x 8 MiB of bitmaps at the switchover for nothing) */
    uint64_t pending;     /* bits set in send[] */
    bool hints;           /* the stream uses populate-hints */
    bool commit;          /* the stream uses switchover-commit: COMMIT follows the destination's ACK */
    size_t ps;
    bool downtime_phase;
    uint64_t pages_sent;  /* page entries (data or zero), checked by the END record */
    int records_since_poll;

    int64_t window_start_ns;
    uint64_t window_bytes;

    double bandwidth;     /* bytes per second, estimated */
    uint64_t bw_bytes;
    int64_t bw_ns;

    int64_t sample_ms;    /* for mbps / pages-per-second */
    uint64_t sample_bytes, sample_pages;
    uint64_t normal, duplicate;

    bool flip;            /* the stream uses unix-page-flipping: page data goes through pipe */
    FerryPagePipe *pipe;
    uint64_t pipe_bytes;
    bool *by_fd;          /* per block: passed as a memfd (mode cpr-transfer, shared block), never copied */
    FerryRamBlock **copied; /* the other blocks: the ones the tracker watches */
    size_t ncopied;

    FerryZeroPageDetection zero_mode;
    bool multifd;           /* the stream uses multifd */
    FerryMultifdSend *mfd;  /* the stream uses multifd: pages go to its channel threads */
    FerryMultifdBatch batch; /* the batch being filled */
    uint64_t mfd_sync;      /* MULTIFD_SYNCs written */
    uint64_t mfd_limited;   /* multifd bytes already counted by the rate limit */

    bool mapped;            /* the stream uses mapped-ram: pages go to fixed offsets of the file, not into records */
    FerryMappedWriter *mw;
    FerryWpSnapshot *wp;    /* background-snapshot: the write protection of the pages still to save */
    uint8_t *fault_scratch; /* ... the buffer of its fault thread */
    uint8_t *scratch_walk;  /* ... and of this thread's walk (written inline: a page is released once written) */
    EncodedSection *held;   /* ... without mapped-ram: the sections of its instant, written after the RAM */

    /* The phases' own state. */
    bool stop_and_copy;     /* the "none" tracker: no live passes, all RAM with the workload stopped */
    uint64_t pass;          /* live passes done */
    int64_t last_harvest_ms;
    FerryRunState prev;     /* the run state before switchover, to restore on failure */
    int throttle;           /* auto-converge: the percentage the workload is throttled to now (0: not) */
    unsigned ac_high;       /* auto-converge: passes that dirtied more than the threshold allows */
    uint64_t pass_start_bytes; /* sent_bytes() when the current pass began */
    uint64_t pass_start_pages; /* pages_sent() then */
    int64_t first_pass_ms;  /* completion policy: how long the first pass took (RAM sent once), 0 before */
    const char *cp_decision; /* completion policy: the last decision reported (NULL: none yet) */
    bool stopped;           /* the workload was stopped for switchover */

    /* Postcopy (the section "Postcopy" below). */
    bool postcopy;          /* the stream uses postcopy-ram */
    bool preempt;           /* ... and postcopy-preempt: requested pages go on their own channel */
    bool pc_switch;         /* switch to postcopy at the end of this iteration */
    bool in_postcopy;       /* POSTCOPY_START written: send[] holds what the destination still needs, and from now
                             * on two threads clear its bits (atomically: whoever clears a bit sends the page) */
    bool pc_running;        /* POSTCOPY_RUN written: the destination may run; the source never resumes on its own */
    uint8_t session[FERRY_WIRE_PC_SESSION_LEN];
    FerryMutex send_lock;   /* the main stream's writer in postcopy, shared with the return-path thread */
    FerryChannel *pchan;    /* the preempt channel, and its stream (the return-path thread's alone) */
    FerryStream *pstream;
    pthread_t rp_thread;    /* reads the return path in postcopy: requests, then the ACK */
    bool rp_started;
    bool rp_done;           /* atomic: the return-path thread has ended (rp_err says how) */
    FerryError *rp_err;     /* its failure, or NULL after the ACK */
    uint64_t pc_left;       /* atomic: pages still needed */
    uint64_t pc_hint;       /* atomic: (block << 48 | page) + 1 after the last request, 0 for none: the push
                             * goes on from there, where the destination's workload is reading */
    uint64_t pc_requests;   /* atomic: pages requested */
    uint64_t pc_start_bytes; /* sent_bytes() at the switch */
} Source;

static bool cancelled(FerryMigration *m)
{
    return __atomic_load_n(&m->cancel_requested, __ATOMIC_RELAXED);
}

/* migrate-start-postcopy came, and the stream can switch (it uses postcopy-ram). */
static bool postcopy_requested(const Source *src)
{
    return src->postcopy && !src->in_postcopy && __atomic_load_n(&src->m->postcopy_requested, __ATOMIC_RELAXED);
}

/* A record is write_record_header(), its payload, then end_record() for the CRC trailer. */
static void write_record_header(FerryStream *s, uint16_t type, uint16_t flags, uint32_t len)
{
    uint8_t h[FERRY_WIRE_RECORD_HEADER_LEN];
    ferry__stream_write_crc_reset(s);
    ferry__wire_encode_record(h, &(FerryRecordHeader){ .type = type, .flags = flags, .length = len });
    ferry__stream_write(s, h, sizeof(h));
}

/* The CRC trailer, unless the stream's features turned record-checksum off (then the stream computes none). */
static void end_record(FerryStream *s)
{
    if (ferry__stream_crc(s)) {
        ferry__stream_write_be32(s, ferry__stream_write_crc(s));
    }
}

/* A whole record from a payload in memory. */
static void write_record(FerryStream *s, uint16_t type, uint16_t flags, const void *payload, size_t len)
{
    write_record_header(s, type, flags, (uint32_t)len);
    ferry__stream_write(s, payload, len);
    end_record(s);
}

/* Bytes sent so far: the stream's, the multifd channels', and with unix-page-flipping the page data that went
 * through the pipe. */
static uint64_t sent_bytes(Source *src)
{
    uint64_t n = ferry__stream_bytes_written(src->s) + src->pipe_bytes;
    if (src->pstream) {
        n += ferry__stream_bytes_written(src->pstream); /* the return-path thread's: a count, read loosely */
    }
    if (src->mfd) {
        FerryMultifdStats st;
        ferry__multifd_send_stats(src->mfd, &st);
        n += st.bytes;
    }
    if (src->mw) {
        uint64_t bytes, normal, zero;
        ferry__mapped_writer_stats(src->mw, &bytes, &normal, &zero);
        n += bytes;
    }
    return n;
}

/* Pages sent so far, with their data or as zero pages, on every channel. */
static uint64_t pages_sent(Source *src)
{
    uint64_t n = __atomic_load_n(&src->normal, __ATOMIC_RELAXED) + __atomic_load_n(&src->duplicate, __ATOMIC_RELAXED);
    if (src->mfd) {
        FerryMultifdStats ms;
        ferry__multifd_send_stats(src->mfd, &ms);
        n += ms.normal + ms.zero;
    }
    if (src->mw) {
        uint64_t bytes, normal, zero;
        ferry__mapped_writer_stats(src->mw, &bytes, &normal, &zero);
        n += normal + zero;
    }
    return n;
}

static void update_stats(Source *src)
{
    FerryMigration *m = src->m;
    uint64_t written = sent_bytes(src);
    int64_t now = ferry__clock_ms();
    ferry__mutex_lock(&m->lock);
    FerryMigStats *st = &m->stats;
    if (src->pc_running) {
        /* The bytes after the switch are postcopy-bytes; precopy- and downtime-bytes stay as they were then. */
    } else if (src->downtime_phase) {
        st->downtime_bytes = written - st->precopy_bytes;
    } else {
        st->precopy_bytes = written;
    }
    st->transferred = written;
    st->remaining = src->pending * src->ps;
    if (src->in_postcopy) {
        uint64_t left = __atomic_load_n(&src->pc_left, __ATOMIC_RELAXED);
        st->postcopy_bytes = written - src->pc_start_bytes;
        st->postcopy_requests = __atomic_load_n(&src->pc_requests, __ATOMIC_RELAXED);
        st->postcopy_pending = left;
        st->remaining = left * src->ps;
    }
    st->page_pipe_bytes = src->pipe_bytes;
    uint64_t normal = __atomic_load_n(&src->normal, __ATOMIC_RELAXED);
    uint64_t duplicate = __atomic_load_n(&src->duplicate, __ATOMIC_RELAXED);
    if (src->mfd) {
        FerryMultifdStats ms;
        ferry__multifd_send_stats(src->mfd, &ms);
        st->multifd_bytes = ms.bytes;
        normal += ms.normal;
        duplicate += ms.zero;
    }
    if (src->mw) {
        uint64_t bytes, mnormal, mzero;
        ferry__mapped_writer_stats(src->mw, &bytes, &mnormal, &mzero);
        normal += mnormal;
        duplicate += mzero;
    }
    st->normal = normal;
    st->duplicate = duplicate;
    if (now - src->sample_ms >= 100) {
        double secs = (now - src->sample_ms) / 1000.0;
        if (src->sample_ms) {
            st->mbps = (double)(written - src->sample_bytes) * 8 / 1e6 / secs;
            st->pages_per_second = (uint64_t)((normal + duplicate - src->sample_pages) / secs);
        }
        src->sample_ms = now;
        src->sample_bytes = written;
        src->sample_pages = normal + duplicate;
    }
    ferry__mutex_unlock(&m->lock);
}

/*
 * Read one record from the return path. Return-path records always carry a CRC trailer, whatever the stream's
 * features (a NACK can come before the features are settled), so it is computed here rather than by the stream.
 * A NACK becomes "the destination failed: ..."; any type other than @want is an error; @missing says what it
 * means when no record comes at all. *payload is malloc'd.
 */
static bool read_return_any(Source *src, const uint16_t *want, size_t nwant, const char *what, const char *missing,
                            uint16_t *type, uint8_t **payload, uint32_t *len, FerryError **errp)
{
    uint8_t h[FERRY_WIRE_RECORD_HEADER_LEN];
    FerryRecordHeader rh;
    if (!ferry__stream_read(src->s, h, sizeof(h))) {
        ferry__stream_check(src->s, errp);
        ferry_error_prepend(errp, "%s: ", missing);
        return false;
    }
    ferry__wire_decode_record(h, &rh);
    if (!ferry__wire_return_header_check(&rh, want, nwant, errp)) {
        return false;
    }
    uint8_t *buf = ferry__xcalloc(1, rh.length + 1);
    uint32_t crc = 0;
    bool ok = ferry__stream_read(src->s, buf, rh.length) && ferry__stream_read_be32(src->s, &crc);
    if (!ok) {
        ferry__stream_check(src->s, errp);
        ferry_error_prepend(errp, "the destination's %s was cut short: ",
                            rh.type == FERRY_REC_NACK ? "failure report" : what);
    } else if (crc != ferry__wire_record_crc(h, buf, rh.length)) {
        ferry_error_setg(errp, "the destination's %s is damaged (CRC mismatch)",
                         rh.type == FERRY_REC_NACK ? "failure report" : what);
        ok = false;
    } else if (rh.type == FERRY_REC_NACK) {
        ferry_error_setg(errp, "the destination failed: %s", (char *)buf);
        ok = false;
    }
    if (!ok) {
        free(buf);
        return false;
    }
    *type = rh.type;
    *payload = buf;
    *len = rh.length;
    return true;
}

static bool read_return_record(Source *src, uint16_t want, const char *what, const char *missing, uint8_t **payload,
                               uint32_t *len, FerryError **errp)
{
    uint16_t type;
    return read_return_any(src, &want, 1, what, missing, &type, payload, len, errp);
}

/* The final answer: ACK gives true; NACK, end of stream or anything else give false + error. */
static bool read_reply(Source *src, const char *missing, FerryError **errp)
{
    uint8_t *payload;
    uint32_t len;
    if (!read_return_record(src, FERRY_REC_ACK, "acknowledgement", missing, &payload, &len, errp)) {
        return false;
    }
    free(payload);
    if (len != 0) {
        ferry_error_setg(errp, "the destination's acknowledgement has %u unexpected bytes", len);
        return false;
    }
    return true;
}

/*
 * The destination only writes on the return path to acknowledge or to report a failure, so anything readable
 * before the end means it failed: fetch its reason, which is better than the EPIPE the next write would give.
 */
static bool check_return_path(Source *src, FerryError **errp)
{
    if (src->chan->one_way) {
        return true;
    }
    if (!ferry__channel_wait_readable(src->chan, 0)) {
        return true;
    }
    /* Before the END nothing but a NACK is due: a closed connection is a destination that quit (or died) without
     * saying why, not a missing acknowledgement. */
    if (read_reply(src, "the destination closed the connection before the end of the stream without a report "
                   "(it quit or failed, or the connection was cut)", errp)) {
        ferry_error_setg(errp, "the destination acknowledged before the end of the stream");
    }
    return false;
}

/*
 * After a failure to send: what the return path says is the real reason (the write failed because the destination
 * gave up): its report, or, when the connection is closed from its side without one, that it closed before the
 * end of the stream (with the write's error). Either replaces *errp. Nothing readable: *errp stays.
 */
static void prefer_destination_reason(Source *src, FerryError **errp)
{
    FerryError *why = NULL;
    if (!check_return_path(src, &why) && why) {
        ferry_error_free(*errp);
        *errp = why;
    } else {
        ferry_error_free(why);
    }
}

static bool check_stream(Source *src, FerryError **errp)
{
    if (cancelled(src->m)) {
        ferry_error_setg(errp, "cancelled");
        return false;
    }
    if (!ferry__stream_check(src->s, errp)) {
        prefer_destination_reason(src, errp);
        return false;
    }
    return true;
}

/* The limit that applies now: max-bandwidth while the workload runs here, max-postcopy-bandwidth for the
 * background push of postcopy, none while the workload is stopped for switchover. */
static int64_t bandwidth_limit(Source *src)
{
    if (src->in_postcopy) {
        return ferry__param_max_postcopy_bandwidth(src->m);
    }
    return src->downtime_phase ? 0 : ferry__param_max_bandwidth(src->m);
}

/* Sleep in short slices so that cancel is seen promptly. */
static void rate_limit(Source *src, uint64_t bytes)
{
    int64_t bw = bandwidth_limit(src);
    int64_t now = ferry__clock_ns();
    if (now - src->window_start_ns >= RATE_WINDOW_NS) {
        src->window_start_ns = now;
        src->window_bytes = 0;
    }
    src->window_bytes += bytes;
    if (bw <= 0) {
        return;
    }
    uint64_t quota = (uint64_t)bw / (1000000000LL / RATE_WINDOW_NS);
    if (src->window_bytes < quota) {
        return;
    }
    /* Over quota: wait out the window, and longer if one record was larger than a whole window's quota. */
    int64_t until = src->window_start_ns + (int64_t)((double)src->window_bytes / (double)bw * 1e9);
    /* In postcopy the return-path thread writes on the main stream too (without preempt): take its lock. */
    ferry__mutex_lock(&src->send_lock);
    ferry__stream_flush(src->s);
    ferry__mutex_unlock(&src->send_lock);
    while ((now = ferry__clock_ns()) < until && !cancelled(src->m) && bandwidth_limit(src) == bw &&
           !ferry__stream_failed(src->s)) {
        ferry__sleep_ns(FERRY_MIN(until - now, 10 * 1000 * 1000LL));
    }
    src->window_start_ns = ferry__clock_ns();
    src->window_bytes = 0;
}

/*
 * unix-page-flipping: the record (run header and zero bitmap) goes on the socket and is flushed, then the data of
 * the non-zero pages goes into the page pipe straight from RAM (vmsplice, no copy). The flush comes first so
 * that the destination, which reads the pipe only when it has the record, can drain it: otherwise a full pipe
 * and a record still in our buffer would wait for each other. A page written after it was spliced is caught by
 * dirty tracking like any other write.
 */
static void send_run_flipped(Source *src, FerryRamBlock *b, uint64_t first, uint32_t n, const uint8_t *zmap,
                             const struct iovec *iov, int niov)
{
    uint8_t run[FERRY_WIRE_RAM_RUN_HEADER_LEN];
    uint32_t zb = (n + 7) / 8;
    uint32_t len = FERRY_WIRE_RAM_RUN_HEADER_LEN + zb;
    uint64_t data = 0;
    for (int i = 0; i < niov; i++) {
        data += iov[i].iov_len;
    }
    write_record_header(src->s, FERRY_REC_RAM_PAGES, FERRY_REC_CRITICAL, len);
    ferry__wire_run_encode(&(FerryWireRun){ .block = b->index, .flags = FERRY_RUN_DATA_IN_PIPE, .first = first,
                                            .count = n }, run);
    ferry__stream_write(src->s, run, sizeof(run));
    ferry__stream_write(src->s, zmap, zb);
    end_record(src->s);
    if (ferry__stream_flush(src->s)) {
        FerryError *err = NULL;
        if (!ferry__page_pipe_send(src->pipe, iov, niov, src->chan, &err)) {
            /* The stream carries the first error; the migration fails at its next check. */
            ferry__stream_set_error(src->s, err);
        }
    }
    src->pipe_bytes += data;
    uint32_t nonzero = (uint32_t)(data / src->ps);
    src->normal += nonzero;
    src->duplicate += n - nonzero;
    src->pages_sent += n;
    rate_limit(src, FERRY_WIRE_RECORD_HEADER_LEN + len + FERRY_WIRE_RECORD_TRAILER_LEN + data);
}

/* Pages [first, first + n) of @b as a run: zero pages marked in @zmap (zeroed by the caller), the others as
 * memory ranges in @iov (*niov of them, consecutive pages merged). Returns how many pages have data. */
static uint32_t collect_run(const Source *src, FerryRamBlock *b, uint64_t first, uint32_t n, uint8_t *zmap,
                            struct iovec *iov, int *niov)
{
    uint32_t nonzero = 0;
    *niov = 0;
    for (uint32_t i = 0; i < n; i++) {
        uint8_t *p = b->host + (first + i) * src->ps;
        if (src->zero_mode != FERRY_ZERO_NONE && ferry__buffer_is_zero(p, src->ps)) {
            zmap[i / 8] |= (uint8_t)(1u << (i % 8));
            continue;
        }
        nonzero++;
        if (*niov && (uint8_t *)iov[*niov - 1].iov_base + iov[*niov - 1].iov_len == p) {
            iov[*niov - 1].iov_len += src->ps;
        } else {
            iov[(*niov)++] = (struct iovec){ .iov_base = p, .iov_len = src->ps };
        }
    }
    return nonzero;
}

/* mapped-ram: the run to its place in the file, on a writer thread. RAM is stable while the workload is stopped;
 * a failure is latched in the stream so that the next check reports it. */
static void send_run_mapped(Source *src, FerryRamBlock *b, uint64_t first, uint32_t n)
{
    FerryError *err = NULL;
    if (!ferry__mapped_writer_run(src->mw, b->index, first, n, src->downtime_phase, NULL, &err)) {
        ferry__stream_set_error(src->s, err);
    }
    src->pages_sent += n;
    rate_limit(src, (uint64_t)n * src->ps);
}

static uint64_t write_run_record(Source *src, FerryRamBlock *b, uint64_t first, uint32_t n);

/* One RAM_PAGES record: pages [first, first + n) of @b, under the rate limit. */
static void send_run(Source *src, FerryRamBlock *b, uint64_t first, uint32_t n)
{
    if (src->mapped) {
        send_run_mapped(src, b, first, n);
        return;
    }
    uint64_t bytes = write_run_record(src, b, first, n);
    if (bytes) {
        rate_limit(src, bytes);
    }
}

/* The record of send_run, without the rate limit (which may take send_lock): returns the bytes it put on the
 * stream, 0 when the pages went through the page pipe (send_run_flipped limits on its own). */
static uint64_t write_run_record(Source *src, FerryRamBlock *b, uint64_t first, uint32_t n)
{
    uint8_t run[FERRY_WIRE_RAM_RUN_HEADER_LEN];
    uint8_t zmap[FERRY_WIRE_MAX_RUN_PAGES / 8] = { 0 };
    struct iovec iov[FERRY_WIRE_MAX_RUN_PAGES];
    int niov;
    uint32_t zb = (n + 7) / 8;
    uint32_t nonzero = collect_run(src, b, first, n, zmap, iov, &niov);
    uint64_t data = (uint64_t)nonzero * src->ps;
    if (src->flip && data) {
        send_run_flipped(src, b, first, n, zmap, iov, niov);
        return 0;
    }
    uint32_t len = (uint32_t)(FERRY_WIRE_RAM_RUN_HEADER_LEN + zb + data);
    write_record_header(src->s, FERRY_REC_RAM_PAGES, FERRY_REC_CRITICAL, len);
    ferry__wire_run_encode(&(FerryWireRun){ .block = b->index, .first = first, .count = n }, run);
    ferry__stream_write(src->s, run, sizeof(run));
    ferry__stream_write(src->s, zmap, zb);
    /* While the workload runs a page can change while it is sent: copy it, so that the CRC covers the bytes that
     * leave (a change after the copy is caught by the next harvest). With the workload stopped, large runs go
     * from RAM to the socket without the copy. */
    if (!src->downtime_phase || data < COPY_BELOW) {
        for (int i = 0; i < niov; i++) {
            ferry__stream_write(src->s, iov[i].iov_base, iov[i].iov_len);
        }
    } else {
        ferry__stream_write_iov(src->s, iov, niov);
    }
    end_record(src->s);
    src->normal += nonzero;
    src->duplicate += n - nonzero;
    src->pages_sent += n;
    return FERRY_WIRE_RECORD_HEADER_LEN + len + FERRY_WIRE_RECORD_TRAILER_LEN;
}

/* After each record or batch: now and then a look for a failure report on the return path; always cancel and the
 * stream's error. */
static bool after_send(Source *src, FerryError **errp)
{
    if (postcopy_requested(src)) {
        src->pc_switch = true; /* the pass stops here; what it did not send is what postcopy sends */
    }
    if (++src->records_since_poll >= RETURN_PATH_POLL_EVERY) {
        src->records_since_poll = 0;
        if (!check_return_path(src, errp)) {
            return false;
        }
    }
    return check_stream(src, errp);
}

/*
 * A multifd channel failed. That is often the destination having failed first: it then reports on the return path
 * and closes every channel, and which channel the source sees break first is chance. Wait a little for its
 * reason and prefer it.
 */
static bool multifd_failed(Source *src, FerryError **errp)
{
    if (src->chan->one_way || cancelled(src->m)) {
        return false;
    }
    if (ferry__channel_wait_readable(src->chan, 1000)) {
        prefer_destination_reason(src, errp);
    }
    return false;
}

/* Hand the batch being filled to a multifd channel thread. */
static bool mfd_flush_batch(Source *src, FerryError **errp)
{
    FerryMultifdBatch *bt = &src->batch;
    if (bt->npages == 0) {
        return true;
    }
    bt->stopped = src->downtime_phase;
    bt->zmap_valid = src->zero_mode != FERRY_ZERO_MULTIFD;
    memset(bt->zmap, 0, sizeof(bt->zmap));
    if (src->zero_mode == FERRY_ZERO_LEGACY) {
        uint32_t k = 0;
        for (uint32_t e = 0; e < bt->nextents; e++) {
            for (uint32_t j = 0; j < bt->ext[e].count; j++, k++) {
                if (ferry__buffer_is_zero(bt->block->host + (bt->ext[e].first + j) * src->ps, src->ps)) {
                    bt->zmap[k / 8] |= (uint8_t)(1u << (k % 8));
                }
            }
        }
    }
    if (!ferry__multifd_send_batch(src->mfd, bt, errp)) {
        return multifd_failed(src, errp);
    }
    src->pages_sent += bt->npages;
    src->pending -= bt->npages;
    bt->npages = bt->nextents = 0;
    FerryMultifdStats st;
    ferry__multifd_send_stats(src->mfd, &st);
    rate_limit(src, st.bytes - src->mfd_limited);
    src->mfd_limited = st.bytes;
    return true;
}

/* The multifd form of a pass: batches of up to FERRY_WIRE_MFD_MAX_PAGES pages of one block, in extents of
 * consecutive pages. */
static bool send_pass_multifd(Source *src, FerryError **errp)
{
    FerryMultifdBatch *bt = &src->batch;
    for (size_t bi = 0; bi < src->m->nblocks; bi++) {
        FerryRamBlock *b = src->m->blocks[bi];
        unsigned long *map = src->send[bi];
        if (!src->maybe_set[bi]) {
            continue;
        }
        bt->block = b;
        bt->npages = bt->nextents = 0;
        size_t i = ferry__bitmap_find_next(map, b->npages, 0);
        while (i < b->npages) {
            uint32_t n = 0, room = FERRY_WIRE_MFD_MAX_PAGES - bt->npages;
            while (i + n < b->npages && n < room && ferry__bitmap_test(map, i + n)) {
                ferry__bitmap_clear(map, i + n);
                n++;
            }
            FerryWireMfdExtent *last = bt->nextents ? &bt->ext[bt->nextents - 1] : NULL;
            if (last && last->first + last->count == i) {
                last->count += n;
            } else {
                bt->ext[bt->nextents++] = (FerryWireMfdExtent){ .first = i, .count = n };
            }
            bt->npages += n;
            if (bt->npages == FERRY_WIRE_MFD_MAX_PAGES) {
                if (!mfd_flush_batch(src, errp)) {
                    return false;
                }
                update_stats(src);
                if (!after_send(src, errp)) {
                    return false;
                }
            }
            i = src->pc_switch ? b->npages : ferry__bitmap_find_next(map, b->npages, i + n);
        }
        if (!mfd_flush_batch(src, errp)) {
            return false;
        }
        if (src->pc_switch) {
            break; /* the SYNC below still ends what was sent, so that the destination has it all at the switch */
        }
        src->maybe_set[bi] = false; /* the whole block was scanned and every bit cleared */
    }
    /* The end of the pass: a SYNC behind it on every channel, the MULTIFD_SYNC telling the destination to wait for
     * them all, and the wait for the channels to have written it. */
    src->mfd_sync++;
    if (!ferry__multifd_send_sync(src->mfd, src->mfd_sync, errp)) {
        return multifd_failed(src, errp);
    }
    write_record_header(src->s, FERRY_REC_MULTIFD_SYNC, FERRY_REC_CRITICAL, 8);
    ferry__stream_write_be64(src->s, src->mfd_sync);
    end_record(src->s);
    ferry__stream_flush(src->s);
    if (!ferry__multifd_send_flush(src->mfd, errp)) {
        return multifd_failed(src, errp);
    }
    update_stats(src);
    return check_stream(src, errp);
}

/* The pages of a pass as RAM_PAGES records on the main channel. */
static bool send_pass_main(Source *src, FerryError **errp)
{
    for (size_t bi = 0; bi < src->m->nblocks; bi++) {
        FerryRamBlock *b = src->m->blocks[bi];
        unsigned long *map = src->send[bi];
        if (!src->maybe_set[bi]) {
            continue;
        }
        size_t i = ferry__bitmap_find_next(map, b->npages, 0);
        while (i < b->npages) {
            uint32_t n = 0;
            while (i + n < b->npages && n < FERRY_WIRE_MAX_RUN_PAGES && ferry__bitmap_test(map, i + n)) {
                ferry__bitmap_clear(map, i + n);
                n++;
            }
            send_run(src, b, i, n);
            src->pending -= n;
            update_stats(src);
            if (!after_send(src, errp)) {
                return false;
            }
            if (src->pc_switch) {
                return true;
            }
            i = ferry__bitmap_find_next(map, b->npages, i + n);
        }
        src->maybe_set[bi] = false; /* the whole block was scanned and every bit cleared */
    }
    return true;
}

/* Send every page set in src->send, clearing the bits as it goes. */
static bool send_pass(Source *src, FerryError **errp)
{
    int64_t t0 = ferry__clock_ns();
    uint64_t b0 = sent_bytes(src);
    if (!(src->mfd ? send_pass_multifd(src, errp) : send_pass_main(src, errp))) {
        return false;
    }
    /* mapped-ram: the pass is over once the writer threads have written it (the bandwidth is what reached the
     * file). */
    if (src->mw && !ferry__mapped_writer_sync(src->mw, errp)) {
        return false;
    }
    ferry__stream_flush(src->s);
    if (!check_stream(src, errp)) {
        return false;
    }
    src->bw_bytes += sent_bytes(src) - b0;
    src->bw_ns += ferry__clock_ns() - t0;
    if (src->bw_ns >= BW_SAMPLE_NS || src->bandwidth == 0) {
        if (src->bw_ns > 0 && src->bw_bytes > 0) {
            src->bandwidth = (double)src->bw_bytes / ((double)src->bw_ns / 1e9);
        }
        src->bw_bytes = 0;
        src->bw_ns = 0;
    }
    return true;
}

/* Harvest the tracker into the send bitmaps; returns false on a tracker error. */
static bool harvest(Source *src, FerryError **errp)
{
    uint64_t before = src->pending;
    src->pending = 0;
    for (size_t bi = 0; bi < src->m->nblocks; bi++) {
        FerryRamBlock *b = src->m->blocks[bi];
        if (src->by_fd[bi]) {
            continue;
        }
        bool found;
        if (!ferry__tracker_harvest_found(src->tracker, b, src->send[bi], &found, errp)) {
            return false;
        }
        src->maybe_set[bi] |= found;
        if (src->maybe_set[bi]) {
            uint64_t n = ferry__bitmap_count(src->send[bi], b->npages);
            src->maybe_set[bi] = n != 0;
            src->pending += n;
        }
    }
    (void)before;
    return true;
}

static void mark_present(Source *src)
{
    src->pending = 0;
    for (size_t bi = 0; bi < src->m->nblocks; bi++) {
        FerryRamBlock *b = src->m->blocks[bi];
        if (src->by_fd[bi]) {
            continue;
        }
        if (ferry__ram_block_present_pages(b, src->send[bi])) {
            src->maybe_set[bi] = true;
            src->pending += ferry__bitmap_count(src->send[bi], b->npages);
        }
    }
}

static void write_config(Source *src)
{
    FerryMigration *m = src->m;
    FerryWireConfig c = { .page_size = (uint32_t)src->ps, .nblocks = (uint32_t)m->nblocks };
    c.blocks = ferry__xcalloc(m->nblocks ? m->nblocks : 1, sizeof(*c.blocks));
    for (size_t i = 0; i < m->nblocks; i++) {
        snprintf(c.blocks[i].name, sizeof(c.blocks[i].name), "%s", m->blocks[i]->name);
        c.blocks[i].size = m->blocks[i]->size;
    }
    size_t len;
    uint8_t *payload = ferry__wire_config_encode(&c, &len);
    write_record(src->s, FERRY_REC_CONFIG, FERRY_REC_CRITICAL, payload, len);
    free(payload);
    ferry__wire_config_free(&c);
}

/* Records of @type (POPULATE_HINT, POSTCOPY_NEED: block, then ranges) for the pages set in @map of @b, at most
 * 64 Ki ranges per record. */
static void write_block_ranges(Source *src, uint16_t type, uint16_t flags, FerryRamBlock *b, const unsigned long *map)
{
    enum { MAX_RANGES = 65536 };
    uint8_t *buf = ferry__xmalloc((size_t)MAX_RANGES * 16);
    size_t i = ferry__bitmap_find_next(map, b->npages, 0);
    while (i < b->npages) {
        uint32_t count = 0;
        while (i < b->npages && count < MAX_RANGES) {
            size_t end = ferry__bitmap_find_next_zero(map, b->npages, i);
            ferry__put_be64(buf + count * 16, i);
            ferry__put_be64(buf + count * 16 + 8, end - i);
            count++;
            i = ferry__bitmap_find_next(map, b->npages, end);
        }
        write_record_header(src->s, type, flags, 8 + count * 16);
        ferry__stream_write_be32(src->s, b->index);
        ferry__stream_write_be32(src->s, count);
        ferry__stream_write(src->s, buf, (size_t)count * 16);
        end_record(src->s);
    }
    free(buf);
}

/*
 * POPULATE_HINT records for the pages about to be sent that were never announced before: at setup the pages pass 1
 * will carry, after each harvest the pages first written since.
 */
static void write_populate_hints(Source *src)
{
    if (!src->hints) {
        return;
    }
    for (size_t bi = 0; bi < src->m->nblocks; bi++) {
        FerryRamBlock *b = src->m->blocks[bi];
        if (!src->maybe_set[bi]) {
            continue; /* nothing to send in it, so nothing to announce */
        }
        size_t words = FERRY_BITMAP_LONGS(b->npages);
        unsigned long *fresh = src->scratch, *hinted = src->hinted[bi];
        bool any = false;
        for (size_t w = 0; w < words; w++) {
            fresh[w] = src->send[bi][w] & ~hinted[w];
            hinted[w] |= fresh[w];
            any |= fresh[w] != 0;
        }
        if (any) {
            write_block_ranges(src, FERRY_REC_POPULATE_HINT, 0, b, fresh);
        }
    }
}

/*
 * An FDS record: the entries describe @fds, which ride with the record's header and payload bytes (SCM_RIGHTS).
 * The fds stay ours; the destination gets new references to the same open files.
 */
static bool write_fds(Source *src, const FerryWireFd *entries, const int *fds, uint32_t n, FerryError **errp)
{
    size_t plen;
    uint8_t *payload = ferry__wire_fds_encode(entries, n, &plen);
    uint8_t *rec = ferry__xmalloc(FERRY_WIRE_RECORD_HEADER_LEN + plen);
    ferry__wire_encode_record(rec, &(FerryRecordHeader){ .type = FERRY_REC_FDS, .flags = FERRY_REC_CRITICAL,
                                                         .length = (uint32_t)plen });
    memcpy(rec + FERRY_WIRE_RECORD_HEADER_LEN, payload, plen);
    ferry__stream_write_crc_reset(src->s);
    ferry__stream_write_with_fds(src->s, rec, FERRY_WIRE_RECORD_HEADER_LEN + plen, fds, n);
    end_record(src->s);
    free(rec);
    free(payload);
    if (!check_stream(src, errp)) {
        return false;
    }
    ferry__mutex_lock(&src->m->lock);
    src->m->stats.fds_passed += n;
    ferry__mutex_unlock(&src->m->lock);
    return true;
}

/* mode cpr-transfer: the memfds of the shared blocks, right after CONFIG, so that the destination maps them
 * before any page arrives. */
static bool write_ram_fds(Source *src, FerryError **errp)
{
    FerryMigration *m = src->m;
    uint32_t n = 0;
    uint64_t bytes = 0;
    FerryWireFd *entries = ferry__xcalloc(m->nblocks ? m->nblocks : 1, sizeof(*entries));
    int *fds = ferry__xcalloc(m->nblocks ? m->nblocks : 1, sizeof(*fds));
    for (size_t i = 0; i < m->nblocks; i++) {
        if (src->by_fd[i]) {
            entries[n].kind = FERRY_FD_RAM_BLOCK;
            snprintf(entries[n].name, sizeof(entries[n].name), "%s", m->blocks[i]->name);
            fds[n++] = m->blocks[i]->fd;
            bytes += m->blocks[i]->size;
        }
    }
    bool ok = n == 0 || write_fds(src, entries, fds, n, errp);
    free(entries);
    free(fds);
    if (ok) {
        ferry__mutex_lock(&m->lock);
        m->stats.fd_ram_bytes = bytes;
        m->stats.fd_ram_blocks = n;
        ferry__mutex_unlock(&m->lock);
    }
    return ok;
}

/* unix-page-flipping: create the page pipe and pass its read end, before the first page. */
static bool write_page_pipe(Source *src, FerryError **errp)
{
    if (!src->flip) {
        return true;
    }
    int read_fd;
    if (!ferry__page_pipe_new(&src->pipe, &read_fd, errp)) {
        return false;
    }
    FerryWireFd e = { .kind = FERRY_FD_PAGE_PIPE, .name = "page-pipe" };
    bool ok = write_fds(src, &e, &read_fd, 1, errp);
    /* The destination has its own reference now (or the migration failed): ours is not needed either way. */
    close(read_fd);
    return ok;
}

/* backend-transfer: the fds of the backends whose kind the parameter lists, with the workload stopped. */
static bool write_backend_fds(Source *src, FerryError **errp)
{
    FerryMigration *m = src->m;
    uint32_t n = 0;
    FerryWireFd *entries = ferry__xcalloc(m->nbackends ? m->nbackends : 1, sizeof(*entries));
    int *fds = ferry__xcalloc(m->nbackends ? m->nbackends : 1, sizeof(*fds));
    bool ok = true;
    for (size_t i = 0; i < m->nbackends && ok; i++) {
        FerryBackend *be = &m->backends[i];
        if (!ferry__param_backend_transfer(m, be->kind)) {
            continue;
        }
        int fd = be->ops.get_fd(be->opaque);
        if (fd < 0) {
            ferry_error_setg(errp, "backend-transfer: backend %s '%s' has no open file descriptor",
                             ferry__backend_kind_name(be->kind), be->id);
            ok = false;
            break;
        }
        entries[n].kind = FERRY_FD_BACKEND;
        snprintf(entries[n].name, sizeof(entries[n].name), "%s:%s", ferry__backend_kind_name(be->kind), be->id);
        fds[n++] = fd;
    }
    ok = ok && (n == 0 || write_fds(src, entries, fds, n, errp));
    free(entries);
    free(fds);
    return ok;
}

/* One SECTION record per section: its header, its schema (so that any reader can decode it), its data. */
/* A SECTION record's payload (header, schema, data), encoded: what write_sections writes, or what a background
 * snapshot holds from its instant until the RAM has gone. */
struct EncodedSection {
    uint8_t *payload;
    size_t len;
};

static void encoded_sections_free(EncodedSection *es, size_t n)
{
    for (size_t i = 0; es && i < n; i++) {
        free(es[i].payload);
    }
    free(es);
}

/* Every registered section saved now and encoded (*out: m->nsections of them). */
static bool encode_sections(Source *src, EncodedSection **out, FerryError **errp)
{
    FerryMigration *m = src->m;
    EncodedSection *es = ferry__xcalloc(m->nsections ? m->nsections : 1, sizeof(*es));
    for (size_t i = 0; i < m->nsections; i++) {
        FerrySection *sec = &m->sections[i];
        FerrySchema *schema;
        uint8_t *data;
        size_t len;
        if (!ferry__section_save(sec, &schema, &data, &len, errp)) {
            encoded_sections_free(es, m->nsections);
            return false;
        }
        FerryWireSection ws = { .instance_id = sec->instance_id, .version = sec->version, .flags = sec->flags,
                                .schema_len = (uint32_t)ferry__schema_encoded_len(schema) };
        snprintf(ws.name, sizeof(ws.name), "%s", sec->name);
        uint8_t head[FERRY_WIRE_SECTION_HEADER_MAX];
        size_t hlen = ferry__wire_section_header_encode(&ws, head);
        uint64_t total = hlen + ws.schema_len + len;
        bool ok = total <= FERRY_WIRE_MAX_SECTION_LEN;
        if (ok) {
            es[i].len = (size_t)total;
            es[i].payload = ferry__xmalloc(es[i].len);
            memcpy(es[i].payload, head, hlen);
            ferry__schema_encode(schema, es[i].payload + hlen);
            memcpy(es[i].payload + hlen + ws.schema_len, data, len);
        } else {
            ferry_error_setg(errp, "section '%s' is %llu bytes, more than the %u a stream may carry", sec->name,
                             (unsigned long long)total, FERRY_WIRE_MAX_SECTION_LEN);
        }
        ferry__schema_free(schema);
        free(data);
        if (!ok) {
            encoded_sections_free(es, m->nsections);
            return false;
        }
    }
    *out = es;
    return true;
}

static void write_encoded_sections(Source *src, const EncodedSection *es, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        write_record(src->s, FERRY_REC_SECTION, FERRY_REC_CRITICAL, es[i].payload, es[i].len);
    }
}

static bool write_sections(Source *src, FerryError **errp)
{
    EncodedSection *es;
    if (!encode_sections(src, &es, errp)) {
        return false;
    }
    write_encoded_sections(src, es, src->m->nsections);
    encoded_sections_free(es, src->m->nsections);
    return true;
}

/*
 * HELLO (what this side offers), then, with a return path, the destination's HELLO_REPLY (what it accepts), then
 * FEATURES: what the stream uses, the intersection. Without a return path the stream uses what it offers, and the
 * destination refuses it before loading anything if it cannot honour a critical feature. HELLO and FEATURES carry
 * a CRC trailer whatever they say; the records after them follow FEATURES.
 */
static bool negotiate(Source *src, FerryError **errp)
{
    FerryWireFeatureList offered, used;
    ferry__features_offer(src->m, &offered);
    uint8_t buf[2 + FERRY_WIRE_MAX_FEATURES * (2 + FERRY_WIRE_MAX_FEATURE_NAME)];
    ferry__wire_features_encode(&offered, buf);
    write_record(src->s, FERRY_REC_HELLO, FERRY_REC_CRITICAL, buf, ferry__wire_features_len(&offered));
    if (src->chan->one_way) {
        used = offered;
    } else {
        ferry__stream_flush(src->s);
        if (!check_stream(src, errp)) {
            return false;
        }
        uint8_t *payload;
        uint32_t len;
        FerryWireFeatureList accepted;
        if (!read_return_record(src, FERRY_REC_HELLO_REPLY, "answer to the stream's HELLO",
                                "no answer to the stream's HELLO from the destination", &payload, &len, errp)) {
            return false;
        }
        bool ok = ferry__wire_features_decode(payload, len, &accepted, errp);
        free(payload);
        if (!ok) {
            ferry_error_prepend(errp, "the destination's HELLO_REPLY: ");
            return false;
        }
        memset(&used, 0, sizeof(used));
        for (uint32_t i = 0; i < offered.n; i++) {
            if (ferry__wire_features_find(&accepted, offered.f[i].name) >= 0) {
                ferry__wire_features_add(&used, offered.f[i].name, offered.f[i].flags);
            }
        }
    }
    ferry__wire_features_encode(&used, buf);
    write_record(src->s, FERRY_REC_FEATURES, FERRY_REC_CRITICAL, buf, ferry__wire_features_len(&used));
    ferry__stream_set_crc(src->s, ferry__features_uses(&used, FERRY_CAP_RECORD_CHECKSUM));
    src->hints = ferry__features_uses(&used, FERRY_CAP_POPULATE_HINTS);
    src->flip = ferry__features_uses(&used, FERRY_CAP_UNIX_PAGE_FLIPPING);
    src->multifd = ferry__features_uses(&used, FERRY_CAP_MULTIFD);
    src->commit = ferry__features_uses(&used, FERRY_CAP_SWITCHOVER_COMMIT);
    src->mapped = ferry__features_uses(&used, FERRY_CAP_MAPPED_RAM);
    /* Postcopy needs the return path for its page requests (a one-way channel offers it only if asked to: the
     * check of migrate refuses that first). */
    src->postcopy = ferry__features_uses(&used, FERRY_CAP_POSTCOPY_RAM) && !src->chan->one_way;
    src->preempt = src->postcopy && ferry__features_uses(&used, FERRY_CAP_POSTCOPY_PREEMPT);
    if (!src->postcopy && __atomic_load_n(&src->m->postcopy_requested, __ATOMIC_RELAXED)) {
        ferry__log(FERRY_LOG_WARN, "migrate-start-postcopy came before the negotiation, and the destination did "
                   "not accept postcopy-ram: the migration stays precopy");
    }
    ferry__features_record(src->m, &used);
    return true;
}

/*
 * multifd: connect the channels (each opens with its hello; the destination accepts them when it reads the
 * MULTIFD record, so they wait in its listen queue until then), then announce them. This comes after the RAM
 * fds of mode cpr-transfer, so that the destination's channel threads start once every block has its final
 * memory.
 */
static bool setup_multifd(Source *src, FerryError **errp)
{
    FerryMigration *m = src->m;
    FerryMultifdConfig cfg = { .page_size = src->ps, .checksum = ferry__stream_crc(src->s),
                               .detect_zero = src->zero_mode == FERRY_ZERO_MULTIFD, .tls = src->tls };
    ferry__mutex_lock(&m->lock);
    cfg.channels = (uint32_t)m->params.multifd_channels;
    cfg.compression = (uint8_t)m->params.multifd_compression;
    cfg.level = (int)(cfg.compression == FERRY_MFD_COMP_ZLIB ? m->params.multifd_zlib_level
                                                             : m->params.multifd_zstd_level);
    cfg.timeout_ms = (unsigned)m->params.io_timeout;
    ferry__mutex_unlock(&m->lock);
    if (getrandom(cfg.session, sizeof(cfg.session), 0) != (ssize_t)sizeof(cfg.session)) {
        ferry_error_setg_errno(errp, errno, "multifd: cannot draw a session id");
        return false;
    }
    FerryMultifdSend *mfd = ferry__multifd_send_new(m->out_addr, m->cancel_fd, &cfg, errp);
    if (!mfd) {
        return false;
    }
    /* Published under the lock that cancel takes, so that a cancel from now on shuts the channels down too. */
    ferry__mutex_lock(&m->lock);
    src->mfd = mfd;
    m->out_mfd = mfd;
    ferry__mutex_unlock(&m->lock);
    if (cancelled(m)) {
        ferry_error_setg(errp, "cancelled");
        return false;
    }
    uint8_t rec[FERRY_WIRE_MFD_RECORD_LEN];
    FerryWireMultifd r = { .channels = (uint16_t)cfg.channels, .compression = cfg.compression,
                           .flags = cfg.checksum ? FERRY_MFD_F_CHECKSUM : 0, .max_pages = FERRY_WIRE_MFD_MAX_PAGES };
    memcpy(r.session, cfg.session, sizeof(r.session));
    ferry__wire_mfd_encode(&r, rec);
    write_record(src->s, FERRY_REC_MULTIFD, FERRY_REC_CRITICAL, rec, sizeof(rec));
    return true;
}

/*
 * The TLS client's handshake on the connected main channel, before any byte of the stream. The TLS channel is
 * published for cancel before the handshake, which a cancel then interrupts.
 */
static bool start_tls(Source *src, FerryError **errp)
{
    FerryMigration *m = src->m;
    if (!ferry__mig_tls_wrap(m, &src->chan, &m->out_chan, src->tls, errp)) {
        return false;
    }
    if (cancelled(m)) {
        ferry_error_setg(errp, "cancelled");
        return false;
    }
    return ferry__mig_tls_handshake(m, src->chan, errp);
}

/* Setup, step 1: connect, publish the channel for cancel, TLS, and the stream over it. */
static bool setup_channel(Source *src, FerryError **errp)
{
    FerryMigration *m = src->m;
    src->chan = ferry__channel_connect(m->out_addr, m->cancel_fd, errp);
    if (!src->chan) {
        return false;
    }
    ferry__mutex_lock(&m->lock);
    m->out_chan = src->chan;
    src->zero_mode = (FerryZeroPageDetection)m->params.zero_page_detection;
    unsigned timeout_ms = (unsigned)m->params.io_timeout;
    ferry__mutex_unlock(&m->lock);
    if (cancelled(m)) {
        ferry_error_setg(errp, "cancelled");
        return false;
    }
    /* On the socket itself: a TLS channel moves its records through it, so the timeout holds there too. */
    if (!ferry__channel_set_timeout(src->chan, timeout_ms, errp)) {
        return false;
    }
    if (src->tls && !start_tls(src, errp)) {
        return false;
    }
    src->s = ferry__stream_new(src->chan);
    return true;
}

/* A zeroed bitmap of @nbits for send[] and hinted[]: mapped, so that its pages cost nothing until a bit is set
 * (the bitmaps of untouched RAM are never written, and with maybe_set never read). calloc would clear, and fault
 * in, 2 x 8 MiB for 256 GiB of RAM at every setup. */
static unsigned long *bitmap_map(size_t nbits)
{
    size_t len = FERRY_MAX(FERRY_BITMAP_LONGS(nbits), 1) * sizeof(unsigned long);
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        /* As ferry__xcalloc does when memory runs out. */
        fprintf(stderr, "ferry: out of memory mapping a %zu-byte bitmap\n", len);
        abort();
    }
    return p;
}

static void bitmap_unmap(unsigned long *map, size_t nbits)
{
    if (map) {
        munmap(map, FERRY_MAX(FERRY_BITMAP_LONGS(nbits), 1) * sizeof(unsigned long));
    }
}

/* Setup, step 2: which blocks go as memfds (mode cpr-transfer, shared blocks) and which are copied; refuse what
 * needs fds passed on a channel that cannot pass them. */
static bool setup_blocks(Source *src, FerryError **errp)
{
    FerryMigration *m = src->m;
    ferry__mutex_lock(&m->lock);
    const char *needs_fds = ferry__migration_needs_fds(m);
    bool cpr = m->params.mode == FERRY_MODE_CPR_TRANSFER;
    ferry__mutex_unlock(&m->lock);
    if (needs_fds && !ferry__channel_can_pass_fds(src->chan)) {
        ferry_error_setg(errp, "%s passes file descriptors, which needs a UNIX socket channel; '%s' is not one",
                         needs_fds, src->chan->desc);
        return false;
    }
    size_t n = m->nblocks ? m->nblocks : 1, largest = 1;
    src->by_fd = ferry__xcalloc(n, sizeof(*src->by_fd));
    src->copied = ferry__xcalloc(n, sizeof(*src->copied));
    src->send = ferry__xcalloc(n, sizeof(*src->send));
    src->hinted = ferry__xcalloc(n, sizeof(*src->hinted));
    src->maybe_set = ferry__xcalloc(n, sizeof(*src->maybe_set));
    for (size_t i = 0; i < m->nblocks; i++) {
        FerryRamBlock *b = m->blocks[i];
        src->by_fd[i] = cpr && b->shared;
        if (!src->by_fd[i]) {
            src->copied[src->ncopied++] = b;
            ferry__ram_block_map_for_reading(b);
        }
        src->send[i] = bitmap_map(b->npages);
        src->hinted[i] = bitmap_map(b->npages);
        largest = FERRY_MAX(largest, b->npages);
    }
    src->scratch = ferry__bitmap_new(largest);
    return true;
}

/* The note query-migrate shows with the tracker: the host's reason for its choice first (it explains the
 * engine's note, if there is one), then why RAM goes with the workload stopped. NULL if there is nothing to say. */
static char *tracker_note(FerryMigration *m, FerryDirtyTracker *t)
{
    char *note = NULL;
    if (ferry__tracker_note(t)) {
        note = ferry__xasprintf("%s; RAM is sent with the workload stopped", ferry__tracker_note(t));
    } else if (ferry__tracker_is_none(t)) {
        note = ferry__xstrdup("no dirty tracking; RAM is sent with the workload stopped");
    }
    if (!m->host_tracker_note) {
        return note;
    }
    char *full = note ? ferry__xasprintf("%s; %s", m->host_tracker_note, note) : ferry__xstrdup(m->host_tracker_note);
    free(note);
    return full;
}

/* Setup, step 3: arm the dirty tracker on the copied blocks (with "none", stop-and-copy follows). */
static bool setup_tracker(Source *src, FerryError **errp)
{
    FerryMigration *m = src->m;
    ferry__mutex_lock(&m->lock);
    FerryTrackerKind kind = m->tracker_kind;
    const FerryDirtyTrackerOps *host_ops = m->host_tracker;
    void *host_opaque = m->host_tracker_opaque;
    ferry__mutex_unlock(&m->lock);
    if (kind == FERRY_TRACKER_HOST) {
        src->tracker = ferry__tracker_start_host(host_ops, host_opaque, src->copied, src->ncopied, errp);
    } else {
        src->tracker = ferry__tracker_start(kind, src->copied, src->ncopied, errp);
    }
    if (!src->tracker) {
        return false;
    }
    src->stop_and_copy = ferry__tracker_is_none(src->tracker);
    ferry__mutex_lock(&m->lock);
    m->tracker_name = ferry__xstrdup(ferry__tracker_name(src->tracker));
    m->tracker_note = tracker_note(m, src->tracker);
    char *note = ferry__xstrdup(m->tracker_note);
    ferry__mutex_unlock(&m->lock);
    if (note) {
        ferry__log(FERRY_LOG_WARN, "%s", note);
        free(note);
    }
    return true;
}

/*
 * mapped-ram: the writer, then the MAPPED_RAM record that tells where it puts each block, then the stream moves on
 * past the page regions, where its later records (PASS_END, the sections, END) go. With multifd the pages are
 * written by multifd-channels threads in parallel (QEMU's multifd with mapped-ram), not on connections.
 */
static bool setup_mapped(Source *src, FerryError **errp)
{
    FerryMigration *m = src->m;
    FerryMappedFile f = { .checksums = ferry__stream_crc(src->s) };
    if (!ferry__channel_file_info(src->chan, &f.fd, &f.base, &f.path)) {
        ferry_error_setg(errp, "mapped-ram needs a regular file ('file:PATH'), and '%s' is not one", src->chan->desc);
        return false;
    }
    ferry__mutex_lock(&m->lock);
    unsigned threads = m->caps[FERRY_CAP_MULTIFD] ? (unsigned)m->params.multifd_channels : 0;
    f.direct = m->params.direct_io != 0;
    ferry__mutex_unlock(&m->lock);
    size_t len = ferry__wire_mapped_len((uint32_t)m->nblocks);
    uint64_t start = ferry__stream_bytes_written(src->s) + FERRY_WIRE_RECORD_HEADER_LEN + len +
                     (f.checksums ? FERRY_WIRE_RECORD_TRAILER_LEN : 0);
    FerryWireMapped layout;
    src->mw = ferry__mapped_writer_new(m->blocks, m->nblocks, &f, start, threads, &layout, errp);
    if (!src->mw) {
        return false;
    }
    layout.flags = f.checksums ? FERRY_MAPPED_F_CHECKSUMS : 0;
    uint8_t *payload = ferry__xmalloc(len);
    ferry__wire_mapped_encode(&layout, payload);
    write_record(src->s, FERRY_REC_MAPPED_RAM, FERRY_REC_CRITICAL, payload, len);
    free(payload);
    FERRY_ASSERT(ferry__stream_bytes_written(src->s) == start);
    ferry__stream_write_seek(src->s, layout.resume);
    return check_stream(src, errp);
}

/* The records every stream opens with: the header, the negotiation, CONFIG. */
static bool write_opening(Source *src, FerryError **errp)
{
    uint8_t hdr[FERRY_WIRE_HEADER_LEN];
    ferry__wire_encode_header(hdr);
    ferry__stream_write(src->s, hdr, sizeof(hdr));
    if (!negotiate(src, errp)) {
        return false;
    }
    write_config(src);
    return true;
}

/* Setup, step 4: the stream's opening records: header, negotiation, CONFIG, the fds of mode cpr-transfer and of the
 * page pipe, the multifd channels and the first populate hints. */
static bool setup_stream(Source *src, FerryError **errp)
{
    if (!write_opening(src, errp)) {
        return false;
    }
    if (!write_ram_fds(src, errp) || !write_page_pipe(src, errp)) {
        return false;
    }
    if (src->mapped && !setup_mapped(src, errp)) {
        return false;
    }
    if (src->multifd && !setup_multifd(src, errp)) {
        return false;
    }
    if (!src->stop_and_copy) {
        mark_present(src);
        write_populate_hints(src);
    }
    ferry__stream_flush(src->s);
    return check_stream(src, errp);
}

/* Milliseconds since *@t, and *@t set to now: the phases' costs for the debug log. */
static double phase_ms(int64_t *t)
{
    int64_t now = ferry__clock_ns();
    double ms = (double)(now - *t) / 1e6;
    *t = now;
    return ms;
}

/* The setup phase, as QEMU's migration setup: everything before the first page, then status active. */
static bool source_setup(Source *src, FerryError **errp)
{
    FerryMigration *m = src->m;
    src->ps = ferry_ram_page_size();
    int64_t t = ferry__clock_ns();
    if (!setup_channel(src, errp)) {
        return false;
    }
    double channel = phase_ms(&t);
    if (!setup_blocks(src, errp)) {
        return false;
    }
    double blocks = phase_ms(&t);
    if (!setup_tracker(src, errp)) {
        return false;
    }
    double tracker = phase_ms(&t);
    if (!setup_stream(src, errp)) {
        return false;
    }
    ferry__log(FERRY_LOG_DEBUG, "migration setup: channel %.1f ms, blocks and bitmaps %.1f ms, tracker %.1f ms, "
               "stream (present pages, hints) %.1f ms", channel, blocks, tracker, phase_ms(&t));
    ferry__mutex_lock(&m->lock);
    m->stats.setup_time_ms = ferry__clock_ms() - m->stats.start_ms;
    ferry__mutex_unlock(&m->lock);
    /* A cancel may have come first: the stream's check below or the next one then fails the migration. */
    ferry__mig_set_state(m, FERRY_MIG_SETUP, FERRY_MIG_ACTIVE);
    src->last_harvest_ms = ferry__clock_ms();
    return true;
}

/* After a pass: the figures of query-migrate (QEMU's migration_update_counters) and the expected downtime, which
 * is returned. */
static int64_t update_pass_counters(Source *src)
{
    FerryMigration *m = src->m;
    int64_t now = ferry__clock_ms();
    double bw = src->bandwidth > 0 ? src->bandwidth : 1;
    int64_t expected = (int64_t)((double)(src->pending * src->ps) / bw * 1000.0);
    ferry__mutex_lock(&m->lock);
    m->stats.dirty_sync_count = src->pass;
    m->stats.dirty_pages_rate = now > src->last_harvest_ms
                                    ? src->pending * 1000 / (uint64_t)(now - src->last_harvest_ms) : 0;
    m->stats.expected_downtime_ms = expected;
    m->stats.remaining = src->pending * src->ps;
    bool events = m->caps[FERRY_CAP_EVENTS];
    ferry__mutex_unlock(&m->lock);
    src->last_harvest_ms = now;
    if (events) {
        ferry__mig_emit(m, "MIGRATION_PASS", json_pack("{s:I}", "pass", (json_int_t)src->pass));
    }
    ferry__log(FERRY_LOG_DEBUG, "pass %llu: %llu dirty pages, bandwidth %.0f B/s, expected downtime %lld ms",
               (unsigned long long)src->pass, (unsigned long long)src->pending, src->bandwidth, (long long)expected);
    return expected;
}

/*
 * auto-converge, QEMU's rule: when a pass dirtied more bytes than throttle-trigger-threshold % of the bytes it
 * sent, for the second time, throttle the workload: cpu-throttle-initial % the first time, then
 * cpu-throttle-increment % more each time (with cpu-throttle-tailslow only what the excess calls for, at most the
 * increment), never above max-cpu-throttle %. The throttle is lifted when the migration ends (source_cleanup).
 */
/* QEMU's trigger rule, shared by auto-converge and dirty-limit (the two capabilities exclude each other): the
 * pass dirtied more bytes than throttle-trigger-threshold % of the bytes it sent, for the second time. */
static bool throttle_trigger(Source *src, uint64_t sent_in_pass, int64_t threshold, uint64_t *dirtied,
                             uint64_t *allowed)
{
    *dirtied = src->pending * src->ps;
    *allowed = sent_in_pass * (uint64_t)threshold / 100;
    if (*dirtied <= *allowed || ++src->ac_high < 2) {
        return false;
    }
    src->ac_high = 0;
    return true;
}

static void auto_converge(Source *src, uint64_t sent_in_pass)
{
    FerryMigration *m = src->m;
    ferry__mutex_lock(&m->lock);
    bool on = m->caps[FERRY_CAP_AUTO_CONVERGE];
    FerryParams p = m->params;
    ferry__mutex_unlock(&m->lock);
    uint64_t dirtied, allowed;
    if (!on || !throttle_trigger(src, sent_in_pass, p.throttle_trigger_threshold, &dirtied, &allowed)) {
        return;
    }
    int next;
    if (!src->throttle) {
        next = (int)p.cpu_throttle_initial;
    } else if (!p.cpu_throttle_tailslow) {
        next = src->throttle + (int)p.cpu_throttle_increment;
    } else {
        /* Slow down at the tail: the share of CPU that would make the dirtied bytes fit the allowance. */
        double cpu_now = 100 - src->throttle, cpu_ideal = cpu_now * ((double)allowed / (double)dirtied);
        next = src->throttle + (int)FERRY_MIN(cpu_now - cpu_ideal, (double)p.cpu_throttle_increment);
    }
    next = (int)FERRY_MIN((int64_t)next, p.max_cpu_throttle);
    if (next == src->throttle || !ferry__vm_throttle(m, next)) {
        return;
    }
    src->throttle = next;
    ferry__log(FERRY_LOG_INFO, "auto-converge: pass %llu dirtied %llu bytes, %llu allowed: workload throttled to %d%%",
               (unsigned long long)src->pass, (unsigned long long)dirtied, (unsigned long long)allowed, next);
}

/*
 * Completion policy (completion-policy "ensure"): completion.c decides after each pass that did not converge;
 * here the inputs are gathered, the decision applied (the throttle, or the switch to postcopy) and reported in
 * query-migrate ("completion") and, with the events capability, in a MIGRATION_COMPLETION event: each change of
 * decision, and every throttle or switch.
 */
static void completion_policy(Source *src, uint64_t pages_in_pass)
{
    FerryMigration *m = src->m;
    ferry__mutex_lock(&m->lock);
    FerryParams p = m->params;
    int64_t start_ms = m->stats.start_ms;
    uint64_t dirty_pages_rate = m->stats.dirty_pages_rate;
    bool events = m->caps[FERRY_CAP_EVENTS];
    ferry__mutex_unlock(&m->lock);
    if (p.completion_policy != FERRY_COMPLETION_ENSURE) {
        return;
    }
    int64_t now = ferry__clock_ms();
    if (src->pass == 1) {
        src->first_pass_ms = FERRY_MAX(now - start_ms, (int64_t)1);
    }
    FerryCompletionInput in = {
        .pending_pages = src->pending,
        .pages_in_pass = pages_in_pass,
        .dirty_pages_rate = dirty_pages_rate,
        .page_size = src->ps,
        .bandwidth = src->bandwidth,
        .downtime_ms = ferry__param_downtime_limit(m),
        .elapsed_ms = now - start_ms,
        .bound_ms = p.completion_deadline ? p.completion_deadline : 3 * src->first_pass_ms,
        .throttle = src->throttle,
        .throttle_initial = (int)p.cpu_throttle_initial,
        .throttle_increment = (int)p.cpu_throttle_increment,
        .max_throttle = (int)p.max_cpu_throttle,
        .can_throttle = m->host_ops.throttle != NULL,
        .can_postcopy = src->postcopy,
    };
    FerryCompletionDecision d;
    ferry__completion_decide(&in, &d);
    if (d.action == FERRY_COMPLETION_THROTTLE) {
        if (!ferry__vm_throttle(m, d.throttle)) {
            return; /* not reached: can_throttle said the host has one */
        }
        src->throttle = d.throttle;
    } else if (d.action == FERRY_COMPLETION_POSTCOPY) {
        src->pc_switch = true;
    }
    const char *name = ferry__completion_action_name(d.action);
    ferry__mutex_lock(&m->lock);
    FerryMigStats *st = &m->stats;
    st->completion_decision = name;
    snprintf(st->completion_reason, sizeof(st->completion_reason), "%s", d.reason);
    st->completion_pass = src->pass;
    st->completion_predicted_ms = d.predicted_ms;
    st->completion_deadline_ms = in.bound_ms;
    ferry__mutex_unlock(&m->lock);
    /* Going on with precopy is reported once, not per pass: that would say nothing MIGRATION_PASS does not. */
    bool changed = src->cp_decision != name || d.action != FERRY_COMPLETION_PRECOPY;
    src->cp_decision = name;
    if (!changed) {
        return;
    }
    ferry__log(FERRY_LOG_INFO, "completion policy after pass %llu: %s (%s)", (unsigned long long)src->pass, name,
               d.reason);
    if (events) {
        ferry__mig_emit(m, "MIGRATION_COMPLETION",
                        json_pack("{s:s, s:s, s:I, s:I, s:I}", "decision", name, "reason", d.reason, "pass",
                                  (json_int_t)src->pass, "predicted-time", (json_int_t)d.predicted_ms, "deadline",
                                  (json_int_t)in.bound_ms));
    }
}

/*
 * dirty-limit, QEMU's use of the same trigger: hold every writer to vcpu-dirty-limit (dirtylimit.c; again if the
 * parameter changed since). Lifted when the migration ends (source_cleanup). Every pass (source_iterate) updates
 * query-migrate's dirty-limit members once the limit holds.
 */
static void dirty_limit_converge(Source *src, uint64_t sent_in_pass)
{
    FerryMigration *m = src->m;
    ferry__mutex_lock(&m->lock);
    bool on = m->caps[FERRY_CAP_DIRTY_LIMIT];
    int64_t threshold = m->params.throttle_trigger_threshold;
    ferry__mutex_unlock(&m->lock);
    uint64_t dirtied, allowed;
    if (on && throttle_trigger(src, sent_in_pass, threshold, &dirtied, &allowed)) {
        ferry__log(FERRY_LOG_INFO, "dirty-limit: pass %llu dirtied %llu bytes, %llu allowed",
                   (unsigned long long)src->pass, (unsigned long long)dirtied, (unsigned long long)allowed);
        ferry__dirtylimit_migration_apply(m);
    }
}

/*
 * One iteration, as QEMU's migration_iteration_run(): send what is dirty, end the pass, harvest what was written
 * meanwhile, and decide. *switchover is set when the rest fits in downtime-limit at the measured bandwidth (or
 * when there are no live passes: stop-and-copy, or when migrate-start-postcopy came: src->pc_switch).
 */
static bool source_iterate(Source *src, bool *switchover, FerryError **errp)
{
    if (postcopy_requested(src)) {
        src->pc_switch = true;
    }
    if (src->stop_and_copy || src->pc_switch) {
        *switchover = true;
        return true;
    }
    src->pass_start_bytes = sent_bytes(src);
    src->pass_start_pages = pages_sent(src);
    if (!send_pass(src, errp)) {
        return false;
    }
    if (src->pc_switch) {
        *switchover = true; /* the pass was cut short: the switch harvests and needs what it did not send */
        return true;
    }
    src->pass++;
    write_record_header(src->s, FERRY_REC_PASS_END, 0, 8);
    ferry__stream_write_be64(src->s, src->pass);
    end_record(src->s);
    if (!harvest(src, errp)) {
        return false;
    }
    write_populate_hints(src);
    *switchover = update_pass_counters(src) <= ferry__param_downtime_limit(src->m);
    ferry__dirtylimit_migration_pass_stats(src->m); /* the pass that ends the migration too */
    if (!*switchover) {
        auto_converge(src, sent_bytes(src) - src->pass_start_bytes);
        dirty_limit_converge(src, sent_bytes(src) - src->pass_start_bytes);
        completion_policy(src, pages_sent(src) - src->pass_start_pages);
        *switchover = src->pc_switch;
    }
    if (!*switchover && cancelled(src->m)) {
        ferry_error_setg(errp, "cancelled");
        return false;
    }
    return true;
}

/* With the workload stopped: what is left to send is what the last harvest finds (all of RAM without live
 * passes). */
static bool last_harvest(Source *src, FerryError **errp)
{
    src->downtime_phase = true;
    if (src->stop_and_copy) {
        mark_present(src);
        return true;
    }
    return harvest(src, errp);
}

/* END (whether the workload was running, the pages and the sections the stream holds), flushed. */
static void write_end(Source *src, uint64_t pages)
{
    uint8_t end[FERRY_WIRE_END_LEN];
    ferry__wire_end_encode(&(FerryWireEnd){ .flags = src->prev == FERRY_RUN_RUNNING ? FERRY_END_SOURCE_RUNNING : 0,
                                            .pages = pages, .sections = (uint32_t)src->m->nsections }, end);
    write_record(src->s, FERRY_REC_END, FERRY_REC_CRITICAL, end, sizeof(end));
    ferry__stream_flush(src->s);
    update_stats(src);
}

/* Completion, step 1: with the workload stopped, the last pages, the backends' fds, the device sections and END. */
static bool send_final_state(Source *src, FerryError **errp)
{
    int64_t t = ferry__clock_ns();
    if (!last_harvest(src, errp)) {
        return false;
    }
    double harvest_ms = phase_ms(&t);
    write_populate_hints(src);
    ferry__log(FERRY_LOG_DEBUG, "migration switchover: last harvest %.1f ms (%llu pages), hints %.1f ms", harvest_ms,
               (unsigned long long)src->pending, phase_ms(&t));
    if (!send_pass(src, errp)) {
        return false;
    }
    /* mapped-ram: END counts the pages the file holds (its bitmaps), which is what a reader can check. */
    uint64_t pages = src->pages_sent;
    if (src->mw && !ferry__mapped_writer_finish(src->mw, &pages, errp)) {
        return false;
    }
    if (!write_backend_fds(src, errp) || !write_sections(src, errp)) {
        return false;
    }
    write_end(src, pages);
    return check_stream(src, errp);
}

/*
 * Completion, step 2: the commit point. With a return path the destination's ACK is it (followed by COMMIT when
 * the stream uses switchover-commit). Without one (exec, file, a pipe) the stream is complete once it is written
 * and the channel's finish step (the exec child's exit status, the file's flush) succeeded: the destination checks
 * the stream on its own.
 */
static bool commit(Source *src, FerryError **errp)
{
    if (!src->chan->one_way && !read_reply(src, "no acknowledgement from the destination", errp)) {
        return false;
    }
    if (!src->chan->one_way && src->commit) {
        /* If this write fails the destination cannot have the COMMIT, so it will not run and we resume; once it
         * succeeded we never resume on our own, whether or not the record arrives. */
        write_record(src->s, FERRY_REC_COMMIT, FERRY_REC_CRITICAL, NULL, 0);
        if (!ferry__stream_flush(src->s)) {
            ferry__stream_check(src->s, errp);
            ferry_error_prepend(errp, "cannot confirm the switchover to the destination (it will not run): ");
            return false;
        }
    }
    return ferry__channel_finish(src->chan, errp);
}

/* The completion phase, as QEMU's migration_completion(): stop the workload (status device), send the rest,
 * reach the commit point. */
static bool source_complete(Source *src, FerryError **errp)
{
    FerryMigration *m = src->m;
    src->prev = ferry__vm_stop_for_migration(m);
    src->stopped = true;
    /* QEMU's status for the stopped phase (it has set it at every switchover since 9.1): the workload is paused
     * and the last pages and the device state are on their way. A cancel that came first keeps cancelling. */
    ferry__mig_set_state(m, FERRY_MIG_ACTIVE, FERRY_MIG_DEVICE);
    int64_t downtime_start = ferry__clock_ms();
    int64_t t = ferry__clock_ns();
    if (!send_final_state(src, errp)) {
        return false;
    }
    double final = phase_ms(&t);
    if (!commit(src, errp)) {
        return false;
    }
    ferry__log(FERRY_LOG_DEBUG, "migration switchover: final state (harvest, pages, sections, END) %.1f ms, "
               "until the commit (ACK) %.1f ms", final, phase_ms(&t));
    ferry__mutex_lock(&m->lock);
    m->stats.downtime_ms = ferry__clock_ms() - downtime_start;
    m->stats.remaining = 0;
    m->stats.dirty_sync_count = src->pass + 1;
    ferry__mutex_unlock(&m->lock);
    return true;
}

/* ---- Postcopy (postcopy-ram; docs/design.md, "Postcopy") ----
 *
 * At the switch the workload is stopped for good: the last harvest leaves in send[] every page whose current
 * content the destination lacks (POSTCOPY_NEED tells it which to drop and fetch), the device state follows, and
 * POSTCOPY_RUN lets the destination run. From then on two threads send pages out of send[]: the return-path
 * thread the pages the destination faulted on (REQ_PAGES), on the preempt channel if there is one, else on the
 * main stream under send_lock; this thread the rest, in order from where the last request was. Whoever clears a
 * page's bit sends it, so each page goes once. RAM no longer changes here, so pages leave without a copy.
 */

/* A RAM_PAGES record of pages [first, first + n) of @b on @s (whose writer the caller holds). */
static void pc_write_run(Source *src, FerryStream *s, FerryRamBlock *b, uint64_t first, uint32_t n)
{
    uint8_t run[FERRY_WIRE_RAM_RUN_HEADER_LEN];
    uint8_t zmap[FERRY_WIRE_MAX_RUN_PAGES / 8] = { 0 };
    struct iovec iov[FERRY_WIRE_MAX_RUN_PAGES];
    int niov;
    uint32_t nonzero = collect_run(src, b, first, n, zmap, iov, &niov);
    uint32_t zb = (n + 7) / 8;
    write_record_header(s, FERRY_REC_RAM_PAGES, FERRY_REC_CRITICAL,
                        (uint32_t)(FERRY_WIRE_RAM_RUN_HEADER_LEN + zb + (uint64_t)nonzero * src->ps));
    ferry__wire_run_encode(&(FerryWireRun){ .block = b->index, .first = first, .count = n }, run);
    ferry__stream_write(s, run, sizeof(run));
    ferry__stream_write(s, zmap, zb);
    ferry__stream_write_iov(s, iov, niov);
    end_record(s);
    __atomic_add_fetch(&src->normal, nonzero, __ATOMIC_RELAXED);
    __atomic_add_fetch(&src->duplicate, n - nonzero, __ATOMIC_RELAXED);
}

/* Claim up to @max still-needed pages of @b from @page on (clearing their bits): how many, 0 if @page is not
 * needed (any more). A claimed page is counted for END here, not once it is written: the push writes END as soon
 * as nothing is left to claim, while the return-path thread may still be writing the last pages it claimed. */
static uint32_t pc_claim(Source *src, FerryRamBlock *b, uint64_t page, uint64_t max)
{
    uint32_t n = 0;
    while (n < max && n < FERRY_WIRE_MAX_RUN_PAGES && page + n < b->npages &&
           ferry__bitmap_test_and_clear_atomic(src->send[b->index], page + n)) {
        n++;
    }
    if (n) {
        __atomic_add_fetch(&src->pages_sent, n, __ATOMIC_RELAXED);
        __atomic_sub_fetch(&src->pc_left, n, __ATOMIC_RELAXED);
    }
    return n;
}

/* The pages of block @i, for the wire's checks of what the destination sends back. */
static uint64_t block_npages(const void *opaque, uint32_t i)
{
    return ((const FerryMigration *)opaque)->blocks[i]->npages;
}

/* REQ_PAGES: send what of the range is still needed, at once, and move the background push there. */
static bool pc_serve_request(Source *src, const uint8_t *payload, uint32_t len, FerryError **errp)
{
    FerryMigration *m = src->m;
    FerryWireReqPages rq;
    if (!ferry__wire_req_pages_check(payload, len, m->nblocks, block_npages, m, &rq, errp)) {
        return false;
    }
    FerryRamBlock *b = m->blocks[rq.block];
    __atomic_add_fetch(&src->pc_requests, rq.count, __ATOMIC_RELAXED);
    __atomic_store_n(&src->pc_hint, ((uint64_t)rq.block << 48 | (rq.first + rq.count)) + 1, __ATOMIC_RELAXED);
    FerryStream *s = src->preempt ? src->pstream : src->s;
    if (!src->preempt) {
        ferry__mutex_lock(&src->send_lock);
    }
    for (uint64_t p = rq.first; p < rq.first + rq.count;) {
        uint32_t n = pc_claim(src, b, p, rq.first + rq.count - p);
        if (n) {
            pc_write_run(src, s, b, p, n);
        }
        p += n ? n : 1;
    }
    bool ok = ferry__stream_flush(s);
    if (!src->preempt) {
        ferry__mutex_unlock(&src->send_lock);
    }
    if (!ok) {
        ferry__stream_check(s, errp);
        ferry_error_prepend(errp, "sending requested pages: ");
    }
    return ok;
}

/* The return-path thread of postcopy: requests until the ACK (or a failure, kept in rp_err). */
static void *pc_return_path_thread(void *opaque)
{
    Source *src = opaque;
    static const uint16_t want[] = { FERRY_REC_REQ_PAGES, FERRY_REC_ACK, FERRY_REC_KEEPALIVE };
    FerryError *err = NULL;
    for (;;) {
        uint16_t type;
        uint8_t *payload;
        uint32_t len;
        if (!read_return_any(src, want, FERRY_ARRAY_SIZE(want), "page request",
                             "the connection to the destination was lost", &type, &payload, &len, &err)) {
            break;
        }
        bool ok = type != FERRY_REC_REQ_PAGES || pc_serve_request(src, payload, len, &err);
        free(payload);
        if (!ok || type == FERRY_REC_ACK) {
            break;
        }
    }
    src->rp_err = err;
    __atomic_store_n(&src->rp_done, true, __ATOMIC_RELEASE);
    return NULL;
}

static bool pc_start_return_path(Source *src, FerryError **errp)
{
    src->rp_done = false;
    src->rp_err = NULL;
    int rc = pthread_create(&src->rp_thread, NULL, pc_return_path_thread, src);
    if (rc != 0) {
        ferry_error_setg_errno(errp, rc, "cannot start the postcopy return-path thread");
        return false;
    }
    pthread_setname_np(src->rp_thread, "mig/src/rp");
    src->rp_started = true;
    return true;
}

/* Join the return-path thread (after shutting the channels down if it is still reading); its error, if any. */
static FerryError *pc_stop_return_path(Source *src, bool shut)
{
    if (!src->rp_started) {
        return NULL;
    }
    if (shut && !__atomic_load_n(&src->rp_done, __ATOMIC_ACQUIRE)) {
        ferry__channel_shutdown(src->chan);
    }
    pthread_join(src->rp_thread, NULL);
    src->rp_started = false;
    FerryError *err = src->rp_err;
    src->rp_err = NULL;
    return err;
}

/* postcopy-preempt: connect the channel for requested pages (TLS as the main channel), and its hello. */
static bool pc_connect_preempt(Source *src, FerryError **errp)
{
    FerryMigration *m = src->m;
    FerryChannel *c = ferry__channel_connect(m->out_addr, m->cancel_fd, errp);
    if (!c) {
        ferry_error_prepend(errp, "postcopy preempt channel: ");
        return false;
    }
    ferry__mutex_lock(&m->lock);
    m->out_pchan = c;
    unsigned timeout_ms = (unsigned)m->params.io_timeout;
    ferry__mutex_unlock(&m->lock);
    src->pchan = c;
    bool ok = ferry__channel_set_timeout(c, timeout_ms, errp);
    if (ok && src->tls) {
        ferry__mutex_lock(&m->lock);
        src->pchan = ferry__tls_channel_new(c, src->tls, errp);
        m->out_pchan = src->pchan;
        ferry__mutex_unlock(&m->lock);
        ok = src->pchan && ferry__tls_channel_handshake(src->pchan, errp);
    }
    uint8_t hello[FERRY_WIRE_MFD_HELLO_LEN];
    ferry__wire_preempt_hello_encode(src->session, hello);
    ok = ok && ferry__channel_write_all(src->pchan, hello, sizeof(hello), errp);
    if (!ok) {
        ferry_error_prepend(errp, "postcopy preempt channel: ");
        return false;
    }
    src->pstream = ferry__stream_new(src->pchan);
    ferry__stream_set_crc(src->pstream, ferry__stream_crc(src->s));
    return true;
}

/* The switch, up to the point of no return: POSTCOPY_START, the pages needed, the device state, POSTCOPY_RUN. */
static bool pc_switch(Source *src, FerryError **errp)
{
    FerryMigration *m = src->m;
    if (!last_harvest(src, errp)) {
        return false;
    }
    if (getrandom(src->session, sizeof(src->session), 0) != (ssize_t)sizeof(src->session)) {
        ferry_error_setg_errno(errp, errno, "postcopy: cannot draw a session id");
        return false;
    }
    src->in_postcopy = true;
    src->pc_left = src->pending;
    src->pc_start_bytes = sent_bytes(src);
    uint8_t rec[FERRY_WIRE_PC_START_LEN];
    FerryWirePcStart st = { .flags = (src->prev == FERRY_RUN_RUNNING ? FERRY_PC_SOURCE_RUNNING : 0) |
                                     (src->preempt ? FERRY_PC_PREEMPT : 0) };
    memcpy(st.session, src->session, sizeof(st.session));
    ferry__wire_pc_start_encode(&st, rec);
    write_record(src->s, FERRY_REC_POSTCOPY_START, FERRY_REC_CRITICAL, rec, sizeof(rec));
    ferry__stream_flush(src->s);
    if (!check_stream(src, errp) || (src->preempt && !pc_connect_preempt(src, errp))) {
        return false;
    }
    for (size_t bi = 0; bi < m->nblocks; bi++) {
        if (src->maybe_set[bi]) {
            write_block_ranges(src, FERRY_REC_POSTCOPY_NEED, FERRY_REC_CRITICAL, m->blocks[bi], src->send[bi]);
        }
    }
    if (!write_backend_fds(src, errp) || !write_sections(src, errp)) {
        return false;
    }
    write_record(src->s, FERRY_REC_POSTCOPY_RUN, FERRY_REC_CRITICAL, NULL, 0);
    /* A RUN that did not leave whole cannot have been acted on: until the flush succeeds the source may resume. */
    ferry__stream_flush(src->s);
    return check_stream(src, errp);
}

/* The next page the background push sends: from the last request on if one came since (@hint_seen), else from
 * the cursor; false when nothing is needed any more. */
static bool pc_next(Source *src, size_t *bi, uint64_t *page, uint64_t *hint_seen)
{
    FerryMigration *m = src->m;
    uint64_t hint = __atomic_load_n(&src->pc_hint, __ATOMIC_RELAXED);
    if (hint && hint != *hint_seen) {
        *hint_seen = hint;
        *bi = (size_t)((hint - 1) >> 48);
        *page = (hint - 1) & ((1ULL << 48) - 1);
    }
    for (size_t tried = 0; tried <= m->nblocks; tried++) {
        FerryRamBlock *b = m->blocks[*bi];
        /* Another thread clears bits meanwhile: a page found here is claimed atomically before it is sent. */
        size_t i = ferry__bitmap_find_next(src->send[*bi], b->npages, *page);
        if (i < b->npages) {
            *page = i;
            return true;
        }
        *bi = (*bi + 1) % m->nblocks;
        *page = 0;
    }
    return false;
}

/* The background push: every page still needed, while the return-path thread serves requests. */
static bool pc_push(Source *src, FerryError **errp)
{
    FerryMigration *m = src->m;
    size_t bi = 0;
    uint64_t page = 0, hint_seen = 0;
    /* Without preempt a request waits for the run being written: shorter runs (256 KiB) keep that wait short. */
    uint64_t run_max = src->preempt ? FERRY_WIRE_MAX_RUN_PAGES : 64;
    while (__atomic_load_n(&src->pc_left, __ATOMIC_RELAXED) > 0 && pc_next(src, &bi, &page, &hint_seen)) {
        if (__atomic_load_n(&src->rp_done, __ATOMIC_ACQUIRE)) {
            break; /* it failed (or acknowledged early, which the caller refuses) */
        }
        FerryRamBlock *b = m->blocks[bi];
        ferry__mutex_lock(&src->send_lock);
        uint32_t n = pc_claim(src, b, page, run_max);
        if (n) {
            pc_write_run(src, src->s, b, page, n);
            update_stats(src);
        }
        ferry__mutex_unlock(&src->send_lock);
        page += n ? n : 1;
        if (n) {
            rate_limit(src, FERRY_WIRE_RECORD_HEADER_LEN + FERRY_WIRE_RAM_RUN_HEADER_LEN + (uint64_t)n * src->ps);
        }
        if (ferry__stream_failed(src->s)) {
            return ferry__stream_check(src->s, errp);
        }
    }
    FerryWireEnd e = { .flags = src->prev == FERRY_RUN_RUNNING ? FERRY_END_SOURCE_RUNNING : 0,
                       .pages = __atomic_load_n(&src->pages_sent, __ATOMIC_RELAXED),
                       .sections = (uint32_t)m->nsections };
    uint8_t end[FERRY_WIRE_END_LEN];
    ferry__wire_end_encode(&e, end);
    ferry__mutex_lock(&src->send_lock);
    if (!__atomic_load_n(&src->rp_done, __ATOMIC_ACQUIRE)) {
        write_record(src->s, FERRY_REC_END, FERRY_REC_CRITICAL, end, sizeof(end));
        ferry__stream_flush(src->s);
        update_stats(src);
    }
    ferry__mutex_unlock(&src->send_lock);
    return ferry__stream_check(src->s, errp);
}

/*
 * After the switch: push the rest, then the destination's ACK (which the return-path thread reads) ends it.
 * Any failure here leaves the state split between the two ends: the caller pauses, never resumes.
 */
static bool pc_run(Source *src, FerryError **errp)
{
    FerryError *err = NULL;
    bool ok = pc_push(src, &err);
    FerryError *rp_err = pc_stop_return_path(src, !ok);
    if (rp_err) {
        ferry_error_free(err);
        err = rp_err; /* the return path's reason comes first: a write fails because the reader failed */
        ok = false;
    } else if (ok && !src->chan->one_way) {
        /* The thread ended without error: it read the ACK. Every page must have been sent by then. */
        uint64_t left = __atomic_load_n(&src->pc_left, __ATOMIC_RELAXED);
        if (left) {
            ferry_error_setg(&err, "the destination acknowledged with %llu pages not yet sent",
                             (unsigned long long)left);
            ok = false;
        }
    }
    if (!ok) {
        ferry_error_propagate(errp, err);
    }
    return ok;
}

/* ---- Postcopy recovery on this side: pause, reconnect on migrate resume=true, learn what is missing. ---- */

/* RESUME_NEED: the destination still misses these pages of a block: they are needed again (a page sent but lost
 * with the connection is sent once more, and counted once). */
static bool pc_apply_need(Source *src, const uint8_t *p, uint32_t len, FerryError **errp)
{
    FerryMigration *m = src->m;
    FerryWireResumeNeed need;
    if (!ferry__wire_resume_need_decode(p, len, m->nblocks, block_npages, m, &need, errp)) {
        return false;
    }
    uint64_t again = 0;
    for (uint64_t i = 0; i < need.count; i++) {
        if (((need.bitmap[i / 8] >> (i % 8)) & 1) &&
            !ferry__bitmap_test_and_set_atomic(src->send[need.block], need.first + i)) {
            again++;
        }
    }
    src->maybe_set[need.block] = true;
    __atomic_add_fetch(&src->pc_left, again, __ATOMIC_RELAXED);
    __atomic_sub_fetch(&src->pages_sent, again, __ATOMIC_RELAXED);
    return true;
}

/* The recovery handshake on a new main channel to @addr: stream header, POSTCOPY_RESUME, then the destination's
 * RESUME_NEED records and RESUME_ACK; the preempt channel again if the stream has one. */
static bool pc_reconnect(Source *src, FerryMigrationAddress *addr, FerryError **errp)
{
    FerryMigration *m = src->m;
    ferry__mutex_lock(&m->lock);
    ferry__address_free(m->out_addr);
    m->out_addr = addr;
    m->out_chan = NULL;
    m->out_pchan = NULL;
    ferry__mutex_unlock(&m->lock);
    ferry__stream_free(src->pstream);
    ferry__channel_free(src->pchan);
    src->pstream = NULL;
    src->pchan = NULL;
    bool crc = ferry__stream_crc(src->s);
    ferry__stream_free(src->s);
    ferry__channel_free(src->chan);
    src->s = NULL;
    src->chan = NULL;
    if (!setup_channel(src, errp)) {
        return false;
    }
    ferry__mig_set_state(m, FERRY_MIG_POSTCOPY_RECOVER_SETUP, FERRY_MIG_POSTCOPY_RECOVER);
    uint8_t hdr[FERRY_WIRE_HEADER_LEN];
    ferry__wire_encode_header(hdr);
    ferry__stream_write(src->s, hdr, sizeof(hdr));
    /* A new stream computes CRCs: the record carries its trailer whatever the features say, as HELLO does. */
    write_record(src->s, FERRY_REC_POSTCOPY_RESUME, FERRY_REC_CRITICAL, src->session, sizeof(src->session));
    ferry__stream_flush(src->s);
    if (!check_stream(src, errp)) {
        return false;
    }
    static const uint16_t want[] = { FERRY_REC_RESUME_NEED, FERRY_REC_RESUME_ACK, FERRY_REC_KEEPALIVE };
    for (;;) {
        uint16_t type;
        uint8_t *payload;
        uint32_t len;
        if (!read_return_any(src, want, FERRY_ARRAY_SIZE(want), "missing pages",
                             "no answer to the resume from the destination", &type, &payload, &len, errp)) {
            return false;
        }
        bool ok = type != FERRY_REC_RESUME_NEED || pc_apply_need(src, payload, len, errp);
        free(payload);
        if (!ok) {
            return false;
        }
        if (type == FERRY_REC_RESUME_ACK) {
            break;
        }
    }
    ferry__stream_set_crc(src->s, crc);
    if (src->preempt && !pc_connect_preempt(src, errp)) {
        return false;
    }
    ferry__mig_set_state(m, FERRY_MIG_POSTCOPY_RECOVER, FERRY_MIG_POSTCOPY_ACTIVE);
    return true;
}

/*
 * The connection broke after POSTCOPY_RUN (or migrate-pause): pause, with every page the destination may still
 * need kept here and the workload stopped, until migrate resume=true gives an address to reconnect to. True once
 * resumed (the return-path thread runs again); false, *errp the reason of the pause, when the process quits.
 */
static bool pc_pause_resume(Source *src, FerryError **errp)
{
    FerryMigration *m = src->m;
    for (;;) {
        /* Whatever broke, the destination must see the break too: it pauses on its side. */
        if (src->chan) {
            ferry__channel_shutdown(src->chan);
        }
        if (src->pchan) {
            ferry__channel_shutdown(src->pchan);
        }
        ferry_error_free(pc_stop_return_path(src, true));
        ferry_error_prepend(errp, "postcopy paused, the workload's state split between this source (stopped) and "
                            "the destination (running): recover with migrate-recover there and migrate "
                            "resume=true here; ");
        ferry__log(FERRY_LOG_WARN, "%s", ferry_error_msg(*errp));
        FerryMigrationStatus from = ferry__mig_status(m);
        if (from != FERRY_MIG_POSTCOPY_PAUSED && !ferry__mig_pause(m, from, *errp)) {
            return false;
        }
        FerryMigrationAddress *addr = ferry__mig_wait_resume(m);
        if (!addr) {
            return false;
        }
        ferry__mig_set_state(m, FERRY_MIG_POSTCOPY_PAUSED, FERRY_MIG_POSTCOPY_RECOVER_SETUP);
        FerryError *err = NULL;
        if (pc_reconnect(src, addr, &err) && pc_start_return_path(src, &err)) {
            ferry_error_free(*errp);
            *errp = NULL;
            ferry__log(FERRY_LOG_INFO, "postcopy resumed; %llu pages to send",
                       (unsigned long long)__atomic_load_n(&src->pc_left, __ATOMIC_RELAXED));
            return true;
        }
        ferry_error_free(*errp);
        *errp = err;
    }
}

/*
 * The postcopy phase, instead of source_complete: stop the workload, switch (status postcopy-active), then from
 * the point of no return on, the workload runs on the destination (run state postmigrate here) and the pages go
 * as it asks for them.
 */
static bool source_postcopy(Source *src, FerryError **errp)
{
    FerryMigration *m = src->m;
    int64_t downtime_start = ferry__clock_ms(); /* stopping the workload is part of it */
    src->prev = ferry__vm_stop_for_migration(m);
    src->stopped = true;
    if (!ferry__mig_set_state(m, FERRY_MIG_ACTIVE, FERRY_MIG_POSTCOPY_ACTIVE)) {
        ferry_error_setg(errp, "cancelled");
        return false;
    }
    if (!pc_switch(src, errp)) {
        return false;
    }
    src->pc_running = true;
    /* The destination runs the backends from POSTCOPY_RUN on. */
    ferry__vm_postmigrate(m, true);
    ferry__mutex_lock(&m->lock);
    m->stats.downtime_ms = ferry__clock_ms() - downtime_start;
    m->stats.dirty_sync_count = src->pass + 1;
    ferry__mutex_unlock(&m->lock);
    ferry__log(FERRY_LOG_INFO, "postcopy: the destination runs; %llu pages to send",
               (unsigned long long)src->pc_left);
    if (!pc_start_return_path(src, errp)) {
        return false;
    }
    while (!pc_run(src, errp)) {
        if (!pc_pause_resume(src, errp)) {
            return false;
        }
    }
    return true;
}

/* The cleanup phase: disarm the tracker, free what the migration used, unpublish and close the channels. */
static void source_cleanup(Source *src, bool ok)
{
    FerryMigration *m = src->m;
    if (src->throttle) {
        ferry__vm_throttle(m, 0); /* whatever the end: the workload runs at full speed again (or here, stopped) */
        src->throttle = 0;
    }
    ferry__dirtylimit_migration_lift(m); /* the same for dirty-limit's */
    int64_t t = ferry__clock_ns();
    ferry__tracker_stop(src->tracker);
    ferry__log(FERRY_LOG_DEBUG, "migration cleanup: tracker stopped in %.1f ms", phase_ms(&t));
    if (src->send) {
        for (size_t i = 0; i < m->nblocks; i++) {
            bitmap_unmap(src->send[i], m->blocks[i]->npages);
            bitmap_unmap(src->hinted[i], m->blocks[i]->npages);
        }
    }
    free(src->send);
    free(src->hinted);
    free(src->maybe_set);
    free(src->scratch);
    free(src->by_fd);
    free(src->copied);
    ferry__page_pipe_free(src->pipe);
    ferry_error_free(pc_stop_return_path(src, true));
    ferry__mutex_lock(&m->lock);
    m->out_chan = NULL;
    m->out_mfd = NULL;
    m->out_pchan = NULL;
    ferry__mutex_unlock(&m->lock);
    ferry__stream_free(src->pstream);
    ferry__channel_free(src->pchan);
    /* After a success every channel has written everything (each pass ends with a flush): closing loses nothing.
     * After a failure, shut them down first so that no thread stays blocked on a stalled peer. */
    ferry__multifd_send_free(src->mfd, !ok);
    ferry__mapped_writer_free(src->mw);
    ferry__stream_free(src->s);
    ferry__channel_free(src->chan);
    ferry__tls_unref(src->tls);
}

/*
 * The end: the run state and the terminal status. Past the commit point the destination runs, so a cancel that
 * came too late (status cancelling) still ends in completed. Before it, the workload is put back as it was and
 * the status is cancelled (a cancel was asked for) or failed.
 */
static void source_finish(Source *src, bool ok, bool acknowledged, const FerryError *err)
{
    FerryMigration *m = src->m;
    if (ok && src->pc_running) {
        ferry__mig_set_state(m, FERRY_MIG_POSTCOPY_ACTIVE, FERRY_MIG_COMPLETED);
        return;
    }
    if (ok) {
        ferry__vm_postmigrate(m, acknowledged);
        ferry__mig_test_point(m, FERRY_MIG_TP_BEFORE_COMPLETE);
        if (!ferry__mig_set_state(m, FERRY_MIG_DEVICE, FERRY_MIG_COMPLETED) &&
            !ferry__mig_set_state(m, FERRY_MIG_CANCELLING, FERRY_MIG_COMPLETED)) {
            FERRY_BUG("completed migration found in status %s", ferry__migration_status_name(ferry__mig_status(m)));
        }
        ferry__mig_test_point(m, FERRY_MIG_TP_AFTER_COMPLETE);
        return;
    }
    /* Once the destination may run, the workload's state is split: never resume here on our own. */
    if (src->stopped && !src->pc_running) {
        ferry__vm_restore_after_migration(m, src->prev);
    }
    if (!cancelled(m) || !ferry__mig_set_state(m, FERRY_MIG_CANCELLING, FERRY_MIG_CANCELLED)) {
        ferry__log(FERRY_LOG_ERROR, "migration failed: %s", ferry_error_msg(err));
        ferry__mig_fail(m, err);
    }
}

/* ---- background-snapshot (QEMU's capability of the name; docs/snapshots.md) ----
 *
 * The file (or the destination) gets RAM and device state as they were when the snapshot started, while the
 * workload runs on. With the workload stopped for a moment (as QEMU stops the VM): the stream's opening records,
 * the device sections of that instant (with mapped-ram written right away, since the RAM is not in the records;
 * in a plain stream held in memory until the RAM has gone), and write protection of every present page
 * (snapshot-wp.c); then the workload runs again. This thread walks the pages and saves each (to its place in the
 * file, or as a RAM_PAGES record); a write by the workload to a page not yet saved waits until the fault thread
 * has saved the old page. So one pass, no dirty tracking, every page once. */

/* Pages [first, first + n) of block @bi saved, by whichever thread claimed them (still write-protected, so they
 * hold the snapshot's data): to their place in the file with mapped-ram (@scratch: the caller's buffer), else as
 * RAM_PAGES records on the stream, which the walk and the fault thread share under send_lock. Returns the bytes
 * written to the stream (for the walk's rate limit); failures are latched in the writer or the stream. */
static uint64_t snapshot_save(Source *src, size_t bi, uint64_t first, uint64_t n, uint8_t *scratch, bool *ok)
{
    FerryRamBlock *b = src->m->blocks[bi];
    uint64_t bytes = 0;
    *ok = true;
    if (!src->mapped) {
        ferry__mutex_lock(&src->send_lock);
    }
    while (n > 0 && *ok) {
        uint32_t k = (uint32_t)FERRY_MIN(n, (uint64_t)FERRY_WIRE_MAX_RUN_PAGES);
        if (src->mapped) {
            *ok = ferry__mapped_writer_run(src->mw, bi, first, k, true, scratch, NULL);
        } else {
            bytes += write_run_record(src, b, first, k);
            *ok = !ferry__stream_failed(src->s);
        }
        first += k;
        n -= k;
    }
    if (!src->mapped) {
        ferry__mutex_unlock(&src->send_lock);
    }
    return bytes;
}

/* snapshot-wp's callback, on its fault thread: the old pages saved before the write goes on. */
static bool snapshot_save_cb(void *opaque, size_t bi, FerryRamBlock *b, uint64_t first, uint64_t n)
{
    Source *src = opaque;
    bool ok;
    snapshot_save(src, bi, first, n, src->fault_scratch, &ok);
    return ok; /* the writer or the stream keeps the error; the walk reports it */
}

/* Setup with the workload stopped: channel, the opening records, the device state, the protection. */
static bool snapshot_setup(Source *src, FerryError **errp)
{
    FerryMigration *m = src->m;
    src->ps = ferry_ram_page_size();
    if (!setup_channel(src, errp) || !setup_blocks(src, errp)) {
        return false;
    }
    src->prev = ferry__vm_stop_for_migration(m);
    src->stopped = true;
    int64_t stop_ms = ferry__clock_ms();
    if (!write_opening(src, errp)) {
        return false;
    }
    /* The device state of this instant: with mapped-ram written now (the RAM is not in the records, so they may
     * precede it); in a stream it must follow the RAM, so it is held until then. */
    if (src->mapped ? !setup_mapped(src, errp) || !write_sections(src, errp) : !encode_sections(src, &src->held, errp)) {
        return false;
    }
    ferry__stream_flush(src->s);
    if (!check_stream(src, errp)) {
        return false;
    }
    src->fault_scratch = ferry__mapped_scratch_new();
    src->wp = ferry__wp_snapshot_start(m->blocks, m->nblocks, snapshot_save_cb, src, errp);
    if (!src->wp) {
        return false;
    }
    ferry__vm_restore_after_migration(m, src->prev);
    src->stopped = false;
    ferry__mutex_lock(&m->lock);
    m->stats.downtime_ms = ferry__clock_ms() - stop_ms;
    m->stats.setup_time_ms = ferry__clock_ms() - m->stats.start_ms;
    m->tracker_name = ferry__xstrdup("background-snapshot");
    ferry__mutex_unlock(&m->lock);
    src->pending = ferry__wp_snapshot_total(src->wp);
    ferry__mig_set_state(m, FERRY_MIG_SETUP, FERRY_MIG_ACTIVE);
    return true;
}

/* The one pass: every page still to save, claimed, written from RAM (it cannot change while protected), released. */
static bool snapshot_walk(Source *src, FerryError **errp)
{
    FerryMigration *m = src->m;
    for (size_t bi = 0; bi < m->nblocks; bi++) {
        uint64_t npages = m->blocks[bi]->npages;
        for (uint64_t p = ferry__wp_snapshot_next(src->wp, bi, 0); p < npages;) {
            uint64_t n = ferry__wp_snapshot_claim(src->wp, bi, p, FERRY_WIRE_MAX_RUN_PAGES);
            if (n == 0) {
                p = ferry__wp_snapshot_next(src->wp, bi, p + 1);
                continue;
            }
            bool ok;
            uint64_t bytes = snapshot_save(src, bi, p, n, src->scratch_walk, &ok);
            ferry__wp_snapshot_release(src->wp, bi, p, n);
            if (!ok) {
                FerryError *err = NULL;
                if (src->mapped ? !ferry__mapped_writer_sync(src->mw, &err) : !ferry__stream_check(src->s, &err)) {
                    ferry_error_propagate(errp, err);
                    return false;
                }
                ferry_error_free(err);
            }
            if (src->mapped) {
                src->pages_sent += n; /* the stream's records count their own */
            }
            src->pending = src->pending > n ? src->pending - n : 0;
            rate_limit(src, src->mapped ? n * src->ps : bytes);
            update_stats(src);
            if (cancelled(m)) {
                ferry_error_setg(errp, "cancelled");
                return false;
            }
            if (ferry__wp_snapshot_failed(src->wp)) {
                break;
            }
            p = ferry__wp_snapshot_next(src->wp, bi, p + n);
        }
    }
    if (ferry__wp_snapshot_failed(src->wp)) {
        /* The writer's error says why (the callback's); otherwise the module's own. */
        FerryError *err = NULL;
        if (src->mapped ? !ferry__mapped_writer_sync(src->mw, &err) : !ferry__stream_check(src->s, &err)) {
            ferry_error_propagate(errp, err);
        } else {
            ferry_error_free(err);
            ferry_error_setg(errp, "write protection failed: %s", ferry__wp_snapshot_failure(src->wp) ?
                             ferry__wp_snapshot_failure(src->wp) : "unknown reason");
        }
        return false;
    }
    return true;
}

/* The end of the file: the metadata, END, and the flush to disk. The workload was running at the instant. */
static bool snapshot_finish(Source *src, FerryError **errp)
{
    FerryMigration *m = src->m;
    ferry__wp_snapshot_stop(src->wp); /* every page is saved: nothing is protected any more */
    src->wp = NULL;
    uint64_t pages = src->pages_sent;
    if (src->mapped && !ferry__mapped_writer_finish(src->mw, &pages, errp)) {
        return false;
    }
    if (src->held) {
        write_encoded_sections(src, src->held, m->nsections);
    }
    write_end(src, pages);
    return check_stream(src, errp) && commit(src, errp);
}

static void *snapshot_thread(Source *src)
{
    FerryMigration *m = src->m;
    FerryError *err = NULL;
    bool ok = snapshot_setup(src, &err) && snapshot_walk(src, &err) && snapshot_finish(src, &err);
    ferry__wp_snapshot_stop(src->wp); /* after a failure: the workload must never stay blocked */
    src->wp = NULL;
    if (src->stopped) {
        ferry__vm_restore_after_migration(m, src->prev);
        src->stopped = false;
    }
    source_cleanup(src, ok);
    free(src->fault_scratch);
    free(src->scratch_walk);
    encoded_sections_free(src->held, m->nsections);
    if (ok) {
        ferry__mutex_lock(&m->lock);
        m->stats.remaining = 0;
        m->stats.dirty_sync_count = 1;
        ferry__mutex_unlock(&m->lock);
        /* The workload runs on: a snapshot is not a switchover. */
        if (!ferry__mig_set_state(m, FERRY_MIG_ACTIVE, FERRY_MIG_COMPLETED)) {
            ferry__mig_set_state(m, FERRY_MIG_CANCELLING, FERRY_MIG_COMPLETED);
        }
    } else if (!cancelled(m) || !ferry__mig_set_state(m, FERRY_MIG_CANCELLING, FERRY_MIG_CANCELLED)) {
        ferry__log(FERRY_LOG_ERROR, "background snapshot failed: %s", ferry_error_msg(err));
        ferry__mig_fail(m, err);
    }
    ferry_error_free(err);
    ferry__mutex_destroy(&src->send_lock);
    return NULL;
}

/*
 * The migration thread, as QEMU's migration_thread(): setup, iterations until one says switch over, completion,
 * then cleanup and the end whatever happened. Any error before the commit point leaves the source as it was.
 */
void *ferry__source_thread(void *opaque)
{
    FerryMigration *m = opaque;
    Source src = { .m = m, .prev = FERRY_RUN_RUNNING };
    FerryError *err = NULL;
    ferry__mutex_init(&src.send_lock);
    ferry__mutex_lock(&m->lock);
    src.tls = m->out_tls;
    m->out_tls = NULL;
    bool snapshot = m->caps[FERRY_CAP_BACKGROUND_SNAPSHOT];
    ferry__mutex_unlock(&m->lock);
    if (snapshot) {
        src.scratch_walk = ferry__mapped_scratch_new();
        return snapshot_thread(&src);
    }

    bool ok = source_setup(&src, &err);
    bool switchover = false;
    while (ok && !switchover) {
        ok = source_iterate(&src, &switchover, &err);
    }
    if (ok && src.pc_switch) {
        ok = source_postcopy(&src, &err);
    } else {
        ok = ok && source_complete(&src, &err);
    }
    /* Only a destination that acknowledged is known to run the backends now (see FerryBackendOps.release). */
    bool acknowledged = ok && !src.chan->one_way;
    source_cleanup(&src, ok);
    source_finish(&src, ok, acknowledged, err);
    ferry_error_free(err);
    ferry__mutex_destroy(&src.send_lock);
    return NULL;
}
