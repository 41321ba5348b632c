/*
 * libFuzzer target: the return path as the source reads it in postcopy (src/migration/source.c, read_return_any,
 * pc_serve_request, pc_apply_need), through the pure functions those use from src/wire/records.c: the framing of
 * each record (ferry__wire_return_header_check, the CRC trailer of ferry__wire_record_crc), then the payload of
 * REQ_PAGES (ferry__wire_req_pages_check) and RESUME_NEED (ferry__wire_resume_need_decode) against a fixed set of
 * RAM blocks, one of them 2^40 pages so that a range whose sum wraps is tried. What the source then does with an
 * accepted payload is replayed on real bitmaps of the blocks' sizes (claiming requested pages, setting the bits of
 * missing pages), so that a check that lets an out-of-range page through is an AddressSanitizer report, and the
 * properties a checked payload promises are asserted. Not the threads, streams or sockets of the source.
 *
 * Input: one byte of mode, then records back to back as the destination writes them (header, payload, CRC32C).
 * Mode bit 0: the records a recovering source reads (RESUME_NEED, RESUME_ACK), else those of a running postcopy
 * (REQ_PAGES, ACK); bit 1: the trailer's value is not checked (it is still read), so that the fuzzer, which cannot
 * forge CRCs, reaches the payload checks. A NACK, an ACK/RESUME_ACK, an error or the end of the input ends it.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ferry/error.h"
#include "util/bitmap.h"
#include "util/util.h"
#include "wire/wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Block 4 is too large for a bitmap here: its pages are only checked against its size. */
static const uint64_t block_pages_of[] = { 16, 1, 13, 100003, 1ull << 40 };
#define NBLOCKS FERRY_ARRAY_SIZE(block_pages_of)
#define MAPPED 4 /* blocks 0..3 have a bitmap */

static uint64_t block_pages(const void *opaque, uint32_t block)
{
    const uint64_t *pages = opaque;
    if (block >= NBLOCKS) {
        abort(); /* the checks look a block up only after checking its index */
    }
    return pages[block];
}

static unsigned long *send_map[MAPPED]; /* the pages still to send, as the source's send[] */

/* pc_serve_request's claim loop on a checked request. */
static void serve(const FerryWireReqPages *rq)
{
    uint64_t pages = block_pages_of[rq->block];
    if (rq->count < 1 || rq->count > FERRY_WIRE_MAX_RUN_PAGES || rq->first >= pages || rq->count > pages - rq->first) {
        abort();
    }
    if (rq->block >= MAPPED) {
        return;
    }
    for (uint64_t p = rq->first; p < rq->first + rq->count; p++) {
        ferry__bitmap_test_and_clear_atomic(send_map[rq->block], p);
    }
}

/* pc_apply_need's loop on a checked RESUME_NEED of @len payload bytes. */
static void apply_need(const FerryWireResumeNeed *n, const uint8_t *payload, size_t len)
{
    uint64_t pages = block_pages_of[n->block];
    if (n->count < 1 || n->first >= pages || n->count > pages - n->first ||
        len != FERRY_WIRE_RESUME_NEED_HEADER_LEN + (n->count + 7) / 8 ||
        n->bitmap != payload + FERRY_WIRE_RESUME_NEED_HEADER_LEN) {
        abort();
    }
    for (uint64_t i = 0; i < n->count; i++) {
        if ((n->bitmap[i / 8] >> (i % 8)) & 1) {
            if (n->block < MAPPED) {
                ferry__bitmap_test_and_set_atomic(send_map[n->block], n->first + i);
            } else if (n->first + i >= pages) {
                abort();
            }
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!send_map[0]) {
        for (size_t i = 0; i < MAPPED; i++) {
            send_map[i] = ferry__bitmap_new(block_pages_of[i]);
        }
    }
    if (size < 1) {
        return 0;
    }
    static const uint16_t running[] = { FERRY_REC_REQ_PAGES, FERRY_REC_ACK };
    static const uint16_t recovering[] = { FERRY_REC_RESUME_NEED, FERRY_REC_RESUME_ACK };
    const uint16_t *want = data[0] & 1 ? recovering : running;
    bool check_crc = !(data[0] & 2);
    FerryWireReader r;
    ferry__wire_reader_init(&r, data + 1, size - 1);
    FerryError *err = NULL;
    for (;;) {
        const uint8_t *h = ferry__wire_get_bytes(&r, FERRY_WIRE_RECORD_HEADER_LEN);
        if (!h) {
            break; /* the source: "the connection to the destination was lost" */
        }
        FerryRecordHeader rh;
        ferry__wire_decode_record(h, &rh);
        if (!ferry__wire_return_header_check(&rh, want, 2, &err)) {
            break;
        }
        /* As the source: a buffer of exactly the payload's size (and a NUL for a NACK's message). */
        const uint8_t *body = ferry__wire_get_bytes(&r, rh.length);
        uint32_t crc = ferry__wire_get_be32(&r);
        if (r.failed) {
            break; /* cut short */
        }
        uint8_t *payload = ferry__xmalloc((size_t)rh.length + 1);
        memcpy(payload, body, rh.length);
        payload[rh.length] = '\0';
        if (check_crc && crc != ferry__wire_record_crc(h, payload, rh.length)) {
            free(payload);
            break;
        }
        bool go_on = false;
        if (rh.type == FERRY_REC_REQ_PAGES) {
            FerryWireReqPages rq;
            go_on = ferry__wire_req_pages_check(payload, rh.length, NBLOCKS, block_pages, block_pages_of, &rq, &err);
            if (go_on) {
                serve(&rq);
            }
        } else if (rh.type == FERRY_REC_RESUME_NEED) {
            FerryWireResumeNeed n;
            go_on = ferry__wire_resume_need_decode(payload, rh.length, NBLOCKS, block_pages, block_pages_of, &n, &err);
            if (go_on) {
                apply_need(&n, payload, rh.length);
            }
        } else if (rh.type == FERRY_REC_NACK) {
            ferry_error_setg(&err, "the destination failed: %s", (char *)payload);
        }
        free(payload);
        if (!go_on) {
            break; /* NACK, ACK, RESUME_ACK, or a refused payload */
        }
    }
    ferry_error_free(err);
    return 0;
}
