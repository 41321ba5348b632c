/*
 * multifd: RAM pages over several extra connections beside the main channel, each served by its own thread, so
 * that sending, checksumming and compressing pages use more than one core and more than one socket (QEMU's
 * multifd, with ferry's own packets: docs/stream-format.md, "multifd"). The main channel keeps the control
 * records and the device state; it announces the channels (MULTIFD record) and, at the end of every pass, a
 * synchronisation (MULTIFD_SYNC) that the destination's channel threads wait for together, so that a page of a
 * later pass is never applied before an older copy of it that travelled on another channel.
 *
 * This layer connects, accepts, sends and receives packets, and owns its threads and channels. It does not decide
 * which pages to send or when to synchronise: that is the migration layer's (source.c, dest.c).
 *
 * Its files: send.c and recv.c (the channels and their threads, a packet built and read step by step), pages.c
 * (zero-page detection and the runs of a packet's pages in RAM), and the compression methods as an ops table
 * (multifd-int.h, FerryMultifdMethods; methods.c holds the table and what the compressing methods share; nocomp.c,
 * zlib.c, zstd.c one method each). Only this header is for the rest of libferry.
 */
#ifndef FERRY_MULTIFD_H
#define FERRY_MULTIFD_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>

#include "ferry/error.h"
#include "channel/channel.h"
#include "ram/ram.h"
#include "wire/wire.h"

/* What both ends agree on: the MULTIFD record carries it. */
typedef struct FerryMultifdConfig {
    uint32_t channels;
    uint8_t compression; /* FERRY_MFD_COMP_* */
    int level;           /* of the compression (source only) */
    bool checksum;       /* packets end with a CRC32C */
    bool detect_zero;    /* source: the channel threads check pages for zero (zero-page-detection=multifd) */
    size_t page_size;
    unsigned timeout_ms; /* io-timeout of every channel (ferry__channel_set_timeout); 0 = none */
    uint8_t session[FERRY_WIRE_MFD_SESSION_LEN];
    /* Not on the wire: with TLS every channel is wrapped and does its own handshake (the source as client)
     * before its hello, which then travels inside TLS. Borrowed; each channel takes a reference. */
    FerryTls *tls;
} FerryMultifdConfig;

/* A batch of pages of one block for one packet. */
typedef struct FerryMultifdBatch {
    FerryRamBlock *block;
    uint32_t npages;
    uint32_t nextents;
    FerryWireMfdExtent ext[FERRY_WIRE_MFD_MAX_PAGES];
    /* With zmap_valid the caller has checked the pages for zero (zero-page-detection=legacy) and zmap says which
     * are; otherwise the channel thread checks them if detect_zero is on, and sends them all as data if not. */
    bool zmap_valid;
    uint8_t zmap[FERRY_WIRE_MFD_MAX_PAGES / 8];
    /* The workload is stopped: RAM may be handed to the kernel and checksummed in place. While it runs, pages
     * that are checksummed or compressed are copied first, so that the checksum covers the bytes that leave and
     * the compressor never sees its input change. */
    bool stopped;
} FerryMultifdBatch;

typedef struct FerryMultifdStats {
    uint64_t bytes;  /* on the multifd channels, hellos and packet framing included */
    uint64_t pages;  /* page entries (data or zero) */
    uint64_t normal; /* pages sent with data */
    uint64_t zero;   /* pages sent as a bit */
} FerryMultifdStats;

/* ---- Source (send.c) ---- */

typedef struct FerryMultifdSend FerryMultifdSend;

/*
 * Connect @cfg->channels channels to @addr, one after the other, write each its hello and start its thread.
 * A failure names the channel ("multifd channel 3: Failed to connect to ..."). @cancel_fd interrupts the
 * connects as it does the main channel's. With TLS the handshake and the hello are the first thing each channel
 * thread does instead: the destination accepts the channels only once it has read the MULTIFD record, which the
 * caller writes after this returns, so a handshake here would wait for it forever; and in threads, the
 * handshakes do not depend on the order in which the destination accepts. A handshake's failure is then the
 * thread's error, reported by the next call that hands it work.
 */
FerryMultifdSend *ferry__multifd_send_new(const FerryMigrationAddress *addr, int cancel_fd,
                                          const FerryMultifdConfig *cfg, FerryError **errp);
/* Hand a batch to the next channel thread that can take one, waiting until one can. Fails with the first error
 * a channel thread met (the migration then fails; nothing more is sent). */
bool ferry__multifd_send_batch(FerryMultifdSend *s, const FerryMultifdBatch *batch, FerryError **errp);
/* Queue a SYNC packet numbered @sync on every channel, behind everything handed to it before. */
bool ferry__multifd_send_sync(FerryMultifdSend *s, uint64_t sync, FerryError **errp);
/* Wait until every channel thread has written everything it was handed. */
bool ferry__multifd_send_flush(FerryMultifdSend *s, FerryError **errp);
void ferry__multifd_send_stats(FerryMultifdSend *s, FerryMultifdStats *out);
/* Any thread: shut every channel down, so that blocked writes fail at once (cancel). */
void ferry__multifd_send_shutdown(FerryMultifdSend *s);
/* Stop the threads (after shutting the channels down if @abort) and close everything. NULL is a no-op. */
void ferry__multifd_send_free(FerryMultifdSend *s, bool abort);

/* ---- Destination (recv.c) ---- */

typedef struct FerryMultifdRecv FerryMultifdRecv;

/*
 * Accept @cfg->channels channels on @l (the source connects them before it writes the MULTIFD record, so each is
 * waiting already; an accept, a TLS handshake or a hello that takes longer than a few seconds fails), with TLS
 * run each one's handshake as the server (the checks of the main channel's), check each one's hello
 * (the multifd magic, this session, an index not seen before) and start its thread, which writes the pages it
 * receives into @blocks. On a channel thread's error the first error is kept and @main's reading side is shut
 * down, so that the thread reading the main channel stops and can report it (ferry__multifd_recv_error).
 */
FerryMultifdRecv *ferry__multifd_recv_new(FerryListener *l, const FerryMultifdConfig *cfg, FerryRamBlock **blocks,
                                          size_t nblocks, FerryChannel *main, FerryError **errp);
/* The MULTIFD_SYNC of number @sync: wait until every channel thread has reached its SYNC packet @sync, then let
 * them go on. Fails with a channel thread's error. */
bool ferry__multifd_recv_sync(FerryMultifdRecv *r, uint64_t sync, FerryError **errp);
/* Stop the channel threads (they must be past the last SYNC) and close the channels; then say whether any of them
 * failed. Idempotent. */
bool ferry__multifd_recv_stop(FerryMultifdRecv *r, FerryError **errp);
/* Any thread: shut every channel down, so that the channel threads fail at once (quit); a thread waiting in
 * ferry__multifd_recv_sync then returns with their error. */
void ferry__multifd_recv_shutdown(FerryMultifdRecv *r);
/* A copy of the first error a channel thread met, or false if none. */
bool ferry__multifd_recv_error(FerryMultifdRecv *r, FerryError **errp);
void ferry__multifd_recv_stats(FerryMultifdRecv *r, FerryMultifdStats *out);
void ferry__multifd_recv_free(FerryMultifdRecv *r); /* stops first; NULL is a no-op */

#endif
