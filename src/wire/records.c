/*
 * Payload codecs of the records that more than one reader parses (the destination and the stream analyzer):
 * feature lists (HELLO, FEATURES, HELLO_REPLY), CONFIG, POPULATE_HINT, the RAM_PAGES run header, the SECTION
 * header, END, the postcopy records, and the return-path records the source reads (REQ_PAGES, RESUME_NEED, and
 * their framing). Pure functions over buffers. Decoders check every length and bound before they allocate or
 * loop on a count a peer sent, refuse trailing bytes, and name what is wrong; they do not check a record against
 * the reader's own state (its RAM blocks, its sections): that is the caller's part, except on the return path,
 * where the block bounds of REQ_PAGES and RESUME_NEED are checked here through a lookup the caller passes, so that
 * the source's parsing can be tested and fuzzed without a migration.
 */
#include <stdlib.h>
#include <string.h>

#include "util/util.h"
#include "wire/wire.h"

/* ---- features ---- */

/* A feature name: 1..63 bytes, each printable ASCII without space (0x21..0x7e). */
static bool feature_name_valid(const char *name, size_t n)
{
    if (n < 1 || n > FERRY_WIRE_MAX_FEATURE_NAME) {
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        if ((unsigned char)name[i] < 0x21 || (unsigned char)name[i] > 0x7e) {
            return false;
        }
    }
    return true;
}

size_t ferry__wire_features_len(const FerryWireFeatureList *l)
{
    size_t len = 2;
    for (uint32_t i = 0; i < l->n; i++) {
        len += 2 + strlen(l->f[i].name);
    }
    return len;
}

void ferry__wire_features_encode(const FerryWireFeatureList *l, uint8_t *out)
{
    ferry__put_be16(out, (uint16_t)l->n);
    out += 2;
    for (uint32_t i = 0; i < l->n; i++) {
        size_t n = strlen(l->f[i].name);
        *out++ = l->f[i].flags;
        *out++ = (uint8_t)n;
        memcpy(out, l->f[i].name, n);
        out += n;
    }
}

int ferry__wire_features_find(const FerryWireFeatureList *l, const char *name)
{
    for (uint32_t i = 0; i < l->n; i++) {
        if (strcmp(l->f[i].name, name) == 0) {
            return (int)i;
        }
    }
    return -1;
}

bool ferry__wire_features_add(FerryWireFeatureList *l, const char *name, uint8_t flags)
{
    if (!feature_name_valid(name, strlen(name))) {
        return false;
    }
    if (ferry__wire_features_find(l, name) >= 0) {
        return true;
    }
    if (l->n >= FERRY_WIRE_MAX_FEATURES) {
        return false;
    }
    FerryWireFeature *f = &l->f[l->n++];
    f->flags = flags;
    strcpy(f->name, name);
    return true;
}

bool ferry__wire_features_decode(const uint8_t *p, size_t len, FerryWireFeatureList *l, FerryError **errp)
{
    FerryWireReader r;
    ferry__wire_reader_init(&r, p, len);
    const uint8_t *cnt = ferry__wire_get_bytes(&r, 2);
    if (!cnt) {
        ferry_error_setg(errp, "feature list of %zu bytes is too short for its count", len);
        return false;
    }
    uint32_t n = ferry__get_be16(cnt);
    if (n > FERRY_WIRE_MAX_FEATURES) {
        ferry_error_setg(errp, "feature list has %u features, at most %u are allowed", n, FERRY_WIRE_MAX_FEATURES);
        return false;
    }
    l->n = 0;
    for (uint32_t i = 0; i < n; i++) {
        /* Other flag bits are hints for later versions: keep them, a reader acts only on the ones it knows. */
        uint8_t flags = ferry__wire_get_u8(&r);
        uint8_t nlen = ferry__wire_get_u8(&r);
        const uint8_t *name = ferry__wire_get_bytes(&r, nlen);
        if (!name) {
            ferry_error_setg(errp, "feature list is truncated in feature %u of %u", i, n);
            return false;
        }
        if (!feature_name_valid((const char *)name, nlen)) {
            ferry_error_setg(errp, "feature %u has an invalid name (%u bytes; 1..%u bytes of 0x21..0x7e expected)",
                             i, nlen, FERRY_WIRE_MAX_FEATURE_NAME);
            return false;
        }
        FerryWireFeature *f = &l->f[l->n];
        f->flags = flags;
        memcpy(f->name, name, nlen);
        f->name[nlen] = '\0';
        if (ferry__wire_features_find(l, f->name) >= 0) {
            ferry_error_setg(errp, "feature '%s' appears twice in the feature list", f->name);
            return false;
        }
        l->n++;
    }
    if (r.pos != r.len) {
        ferry_error_setg(errp, "feature list has %zu trailing bytes", r.len - r.pos);
        return false;
    }
    return true;
}

/* ---- CONFIG ---- */

uint8_t *ferry__wire_config_encode(const FerryWireConfig *c, size_t *len)
{
    size_t n = 8;
    for (uint32_t i = 0; i < c->nblocks; i++) {
        n += 1 + strlen(c->blocks[i].name) + 8;
    }
    uint8_t *buf = ferry__xmalloc(n);
    uint8_t *q = buf;
    ferry__put_be32(q, c->page_size);
    ferry__put_be32(q + 4, c->nblocks);
    q += 8;
    for (uint32_t i = 0; i < c->nblocks; i++) {
        size_t nl = strlen(c->blocks[i].name); /* at most 255: the name buffer is 256 bytes */
        *q++ = (uint8_t)nl;
        memcpy(q, c->blocks[i].name, nl);
        q += nl;
        ferry__put_be64(q, c->blocks[i].size);
        q += 8;
    }
    *len = n;
    return buf;
}

bool ferry__wire_config_decode(const uint8_t *p, size_t len, FerryWireConfig *c, FerryError **errp)
{
    FerryWireReader r;
    ferry__wire_reader_init(&r, p, len);
    c->page_size = 0;
    c->nblocks = 0;
    c->blocks = NULL;
    uint32_t ps = ferry__wire_get_be32(&r);
    uint32_t n = ferry__wire_get_be32(&r);
    if (r.failed) {
        ferry_error_setg(errp, "CONFIG payload of %zu bytes is shorter than its 8-byte header", len);
        return false;
    }
    if (ps < 512 || ps > (1u << 30) || (ps & (ps - 1)) != 0) {
        ferry_error_setg(errp, "CONFIG page size %u is not a power of two between 512 and 1 GiB", ps);
        return false;
    }
    /* A block takes at least 10 bytes (a 1-byte name): refuse a count the payload cannot hold before allocating. */
    if (n > (len - 8) / 10) {
        ferry_error_setg(errp, "CONFIG claims %u RAM blocks, but its %zu bytes hold at most %zu", n, len,
                         (len - 8) / 10);
        return false;
    }
    FerryWireBlock *blocks = ferry__xcalloc(n ? n : 1, sizeof(*blocks));
    for (uint32_t i = 0; i < n; i++) {
        uint8_t nl = ferry__wire_get_u8(&r);
        const uint8_t *name = ferry__wire_get_bytes(&r, nl);
        uint64_t size = ferry__wire_get_be64(&r);
        if (r.failed) {
            ferry_error_setg(errp, "CONFIG is truncated in RAM block %u of %u", i, n);
            free(blocks);
            return false;
        }
        if (nl == 0 || memchr(name, 0, nl)) {
            ferry_error_setg(errp, "CONFIG RAM block %u has an invalid name (%s)", i,
                             nl == 0 ? "empty" : "contains a NUL byte");
            free(blocks);
            return false;
        }
        memcpy(blocks[i].name, name, nl);
        blocks[i].name[nl] = '\0';
        blocks[i].size = size;
    }
    if (r.pos != r.len) {
        ferry_error_setg(errp, "CONFIG has %zu trailing bytes", r.len - r.pos);
        free(blocks);
        return false;
    }
    c->page_size = ps;
    c->nblocks = n;
    c->blocks = blocks;
    return true;
}

void ferry__wire_config_free(FerryWireConfig *c)
{
    if (!c) {
        return;
    }
    free(c->blocks);
    c->blocks = NULL;
    c->nblocks = 0;
}

/* ---- POPULATE_HINT ---- */

bool ferry__wire_hint_decode(const uint8_t *p, size_t len, FerryWireHint *h, FerryError **errp)
{
    if (len < 8) {
        ferry_error_setg(errp, "POPULATE_HINT payload of %zu bytes is shorter than its 8-byte header", len);
        return false;
    }
    uint32_t block = ferry__get_be32(p);
    uint32_t count = ferry__get_be32(p + 4);
    if ((uint64_t)count * FERRY_WIRE_HINT_RANGE_LEN != len - 8) {
        ferry_error_setg(errp, "POPULATE_HINT claims %u ranges (%llu bytes) but carries %zu bytes of ranges", count,
                         (unsigned long long)count * FERRY_WIRE_HINT_RANGE_LEN, len - 8);
        return false;
    }
    h->block = block;
    h->count = count;
    h->ranges = p + 8;
    return true;
}

void ferry__wire_hint_range(const FerryWireHint *h, uint32_t i, uint64_t *first, uint64_t *count)
{
    const uint8_t *q = h->ranges + (size_t)i * FERRY_WIRE_HINT_RANGE_LEN;
    *first = ferry__get_be64(q);
    *count = ferry__get_be64(q + 8);
}

/* ---- RAM_PAGES run header ---- */

void ferry__wire_run_encode(const FerryWireRun *r, uint8_t out[FERRY_WIRE_RAM_RUN_HEADER_LEN])
{
    ferry__put_be32(out, r->block);
    ferry__put_be32(out + 4, r->flags);
    ferry__put_be64(out + 8, r->first);
    ferry__put_be32(out + 16, r->count);
}

void ferry__wire_run_decode(const uint8_t in[FERRY_WIRE_RAM_RUN_HEADER_LEN], FerryWireRun *r)
{
    r->block = ferry__get_be32(in);
    r->flags = ferry__get_be32(in + 4);
    r->first = ferry__get_be64(in + 8);
    r->count = ferry__get_be32(in + 16);
}

bool ferry__wire_run_expected_len(const FerryWireRun *r, const uint8_t *zmap, uint32_t page_size, uint64_t *len,
                                  uint32_t *zero_pages, FerryError **errp)
{
    if (r->flags & ~FERRY_RUN_DATA_IN_PIPE) {
        ferry_error_setg(errp, "RAM run has unknown flags 0x%x", r->flags & ~FERRY_RUN_DATA_IN_PIPE);
        return false;
    }
    if (r->count < 1 || r->count > FERRY_WIRE_MAX_RUN_PAGES) {
        ferry_error_setg(errp, "RAM run of %u pages (1..%u allowed)", r->count, FERRY_WIRE_MAX_RUN_PAGES);
        return false;
    }
    uint32_t zb = FERRY_DIV_ROUND_UP(r->count, 8);
    /* Bits past the run in the last bitmap byte must be clear, so that one encoding has one meaning. */
    if (r->count % 8 && (zmap[zb - 1] >> (r->count % 8)) != 0) {
        ferry_error_setg(errp, "RAM run of %u pages has zero-bitmap bits set past its last page", r->count);
        return false;
    }
    uint32_t zeros = 0;
    for (uint32_t i = 0; i < zb; i++) {
        zeros += (uint32_t)__builtin_popcount(zmap[i]);
    }
    *zero_pages = zeros;
    *len = FERRY_WIRE_RAM_RUN_HEADER_LEN + zb +
           (r->flags & FERRY_RUN_DATA_IN_PIPE ? 0 : (uint64_t)(r->count - zeros) * page_size);
    return true;
}

/* ---- SECTION ---- */

#define SECTION_FLAGS_KNOWN 0x3u /* FERRY_SECTION_SKIPPABLE | FERRY_SECTION_OPTIONAL (ferry/visitor.h) */

size_t ferry__wire_section_header_encode(const FerryWireSection *s, uint8_t out[FERRY_WIRE_SECTION_HEADER_MAX])
{
    size_t nl = strlen(s->name);
    out[0] = (uint8_t)nl;
    memcpy(out + 1, s->name, nl);
    uint8_t *q = out + 1 + nl;
    ferry__put_be32(q, s->instance_id);
    ferry__put_be32(q + 4, s->version);
    ferry__put_be32(q + 8, s->flags);
    ferry__put_be32(q + 12, s->schema_len);
    return 1 + nl + 16;
}

bool ferry__wire_section_decode(const uint8_t *p, size_t len, FerryWireSection *s, FerryError **errp)
{
    FerryWireReader r;
    ferry__wire_reader_init(&r, p, len);
    uint8_t nl = ferry__wire_get_u8(&r);
    const uint8_t *name = ferry__wire_get_bytes(&r, nl);
    if (!name) {
        ferry_error_setg(errp, "SECTION payload of %zu bytes is truncated in its name", len);
        return false;
    }
    if (nl == 0 || memchr(name, 0, nl)) {
        ferry_error_setg(errp, "SECTION has an invalid name (%s)", nl == 0 ? "empty" : "contains a NUL byte");
        return false;
    }
    memcpy(s->name, name, nl);
    s->name[nl] = '\0';
    s->instance_id = ferry__wire_get_be32(&r);
    s->version = ferry__wire_get_be32(&r);
    s->flags = ferry__wire_get_be32(&r);
    s->schema_len = ferry__wire_get_be32(&r);
    if (r.failed) {
        ferry_error_setg(errp, "SECTION '%s' payload of %zu bytes is truncated in its header", s->name, len);
        return false;
    }
    if (s->flags & ~SECTION_FLAGS_KNOWN) {
        ferry_error_setg(errp, "SECTION '%s' has unknown flags 0x%x", s->name, s->flags & ~SECTION_FLAGS_KNOWN);
        return false;
    }
    s->schema = ferry__wire_get_bytes(&r, s->schema_len);
    if (!s->schema) {
        ferry_error_setg(errp, "SECTION '%s' schema of %u bytes does not fit in the %zu bytes left", s->name,
                         s->schema_len, len - r.pos);
        return false;
    }
    s->data = p + r.pos;
    s->data_len = len - r.pos;
    return true;
}

/* ---- END ---- */

void ferry__wire_end_encode(const FerryWireEnd *e, uint8_t out[FERRY_WIRE_END_LEN])
{
    ferry__put_be32(out, e->flags);
    ferry__put_be64(out + 4, e->pages);
    ferry__put_be32(out + 12, e->sections);
}

bool ferry__wire_end_decode(const uint8_t in[FERRY_WIRE_END_LEN], FerryWireEnd *e, FerryError **errp)
{
    e->flags = ferry__get_be32(in);
    e->pages = ferry__get_be64(in + 4);
    e->sections = ferry__get_be32(in + 12);
    if (e->flags & ~FERRY_END_FLAGS_KNOWN) {
        ferry_error_setg(errp, "END has unknown flags 0x%x (known: 0x%x)", e->flags & ~FERRY_END_FLAGS_KNOWN,
                         FERRY_END_FLAGS_KNOWN);
        return false;
    }
    return true;
}

/* ---- postcopy ---- */

void ferry__wire_pc_start_encode(const FerryWirePcStart *p, uint8_t out[FERRY_WIRE_PC_START_LEN])
{
    ferry__put_be32(out, p->flags);
    ferry__put_be32(out + 4, 0);
    memcpy(out + 8, p->session, FERRY_WIRE_PC_SESSION_LEN);
}

bool ferry__wire_pc_start_decode(const uint8_t in[FERRY_WIRE_PC_START_LEN], FerryWirePcStart *p, FerryError **errp)
{
    p->flags = ferry__get_be32(in);
    memcpy(p->session, in + 8, FERRY_WIRE_PC_SESSION_LEN);
    if (p->flags & ~FERRY_PC_FLAGS_KNOWN) {
        ferry_error_setg(errp, "POSTCOPY_START has unknown flags 0x%x (known: 0x%x)", p->flags & ~FERRY_PC_FLAGS_KNOWN,
                         FERRY_PC_FLAGS_KNOWN);
        return false;
    }
    if (ferry__get_be32(in + 4) != 0) {
        ferry_error_setg(errp, "POSTCOPY_START has a non-zero reserved field 0x%x", ferry__get_be32(in + 4));
        return false;
    }
    return true;
}

void ferry__wire_req_pages_encode(const FerryWireReqPages *r, uint8_t out[FERRY_WIRE_REQ_PAGES_LEN])
{
    ferry__put_be32(out, r->block);
    ferry__put_be32(out + 4, r->count);
    ferry__put_be64(out + 8, r->first);
}

void ferry__wire_req_pages_decode(const uint8_t in[FERRY_WIRE_REQ_PAGES_LEN], FerryWireReqPages *r)
{
    r->block = ferry__get_be32(in);
    r->count = ferry__get_be32(in + 4);
    r->first = ferry__get_be64(in + 8);
}

/* ---- the return path, as the source reads it ---- */

bool ferry__wire_req_pages_check(const uint8_t *p, size_t len, size_t nblocks, FerryWireBlockPagesFn block_pages,
                                 const void *opaque, FerryWireReqPages *rq, FerryError **errp)
{
    if (len != FERRY_WIRE_REQ_PAGES_LEN) {
        ferry_error_setg(errp, "the destination's page request has %zu bytes, expected %d", len,
                         FERRY_WIRE_REQ_PAGES_LEN);
        return false;
    }
    ferry__wire_req_pages_decode(p, rq);
    /* Written so that no sum can wrap: first < pages, then count <= pages - first. */
    uint64_t pages = rq->block < nblocks ? block_pages(opaque, rq->block) : 0;
    if (rq->block >= nblocks || rq->count == 0 || rq->count > FERRY_WIRE_MAX_RUN_PAGES || rq->first >= pages ||
        rq->count > pages - rq->first) {
        ferry_error_setg(errp, "the destination requested pages %llu+%u of block %u, which do not exist",
                         (unsigned long long)rq->first, rq->count, rq->block);
        return false;
    }
    return true;
}

void ferry__wire_resume_need_encode_header(const FerryWireResumeNeed *n,
                                           uint8_t out[FERRY_WIRE_RESUME_NEED_HEADER_LEN])
{
    ferry__put_be32(out, n->block);
    ferry__put_be64(out + 4, n->first);
    ferry__put_be64(out + 12, n->count);
}

bool ferry__wire_resume_need_decode(const uint8_t *p, size_t len, size_t nblocks, FerryWireBlockPagesFn block_pages,
                                    const void *opaque, FerryWireResumeNeed *n, FerryError **errp)
{
    if (len < FERRY_WIRE_RESUME_NEED_HEADER_LEN) {
        ferry_error_setg(errp, "RESUME_NEED of %zu bytes is shorter than its %d-byte header", len,
                         FERRY_WIRE_RESUME_NEED_HEADER_LEN);
        return false;
    }
    n->block = ferry__get_be32(p);
    n->first = ferry__get_be64(p + 4);
    n->count = ferry__get_be64(p + 12);
    n->bitmap = p + FERRY_WIRE_RESUME_NEED_HEADER_LEN;
    uint64_t pages = n->block < nblocks ? block_pages(opaque, n->block) : 0;
    if (n->block >= nblocks || n->count == 0 || n->first >= pages || n->count > pages - n->first) {
        ferry_error_setg(errp, "RESUME_NEED for pages %llu+%llu of block %u does not fit this process's RAM",
                         (unsigned long long)n->first, (unsigned long long)n->count, n->block);
        return false;
    }
    /* count <= pages, a block's page count: (count + 7) / 8 cannot wrap. */
    uint64_t bytes = FERRY_DIV_ROUND_UP(n->count, 8);
    if (len - FERRY_WIRE_RESUME_NEED_HEADER_LEN != bytes) {
        ferry_error_setg(errp, "RESUME_NEED for %llu pages has a bitmap of %zu bytes, expected %llu",
                         (unsigned long long)n->count, len - FERRY_WIRE_RESUME_NEED_HEADER_LEN,
                         (unsigned long long)bytes);
        return false;
    }
    /* As in a run's zero bitmap: bits past the last page must be clear, so that one encoding has one meaning. */
    if (n->count % 8 && (n->bitmap[bytes - 1] >> (n->count % 8)) != 0) {
        ferry_error_setg(errp, "RESUME_NEED for %llu pages has bitmap bits set past its last page",
                         (unsigned long long)n->count);
        return false;
    }
    return true;
}

bool ferry__wire_return_header_check(const FerryRecordHeader *rh, const uint16_t *want, size_t nwant,
                                     FerryError **errp)
{
    bool wanted = rh->type == FERRY_REC_NACK;
    for (size_t i = 0; i < nwant; i++) {
        wanted |= rh->type == want[i];
    }
    if (!wanted || rh->length > FERRY_WIRE_MAX_CONTROL_LEN) {
        ferry_error_setg(errp, "unexpected record %s (0x%04x, %u bytes) on the return path, expected %s",
                         ferry__wire_record_name(rh->type), rh->type, rh->length,
                         ferry__wire_record_name(nwant ? want[0] : FERRY_REC_ACK));
        return false;
    }
    return true;
}

uint32_t ferry__wire_record_crc(const uint8_t h[FERRY_WIRE_RECORD_HEADER_LEN], const uint8_t *payload, size_t len)
{
    return ferry__crc32c(ferry__crc32c(0, h, FERRY_WIRE_RECORD_HEADER_LEN), payload, len);
}

/* ---- FDS ---- */

uint8_t *ferry__wire_fds_encode(const FerryWireFd *fds, uint32_t n, size_t *len)
{
    size_t total = 4;
    for (uint32_t i = 0; i < n; i++) {
        total += 2 + strlen(fds[i].name);
    }
    uint8_t *out = ferry__xmalloc(total);
    ferry__put_be32(out, n);
    uint8_t *q = out + 4;
    for (uint32_t i = 0; i < n; i++) {
        size_t nl = strlen(fds[i].name);
        *q++ = fds[i].kind;
        *q++ = (uint8_t)nl;
        memcpy(q, fds[i].name, nl);
        q += nl;
    }
    *len = total;
    return out;
}

const char *ferry__wire_fd_kind_name(uint8_t kind)
{
    switch (kind) {
    case FERRY_FD_RAM_BLOCK: return "RAM block";
    case FERRY_FD_BACKEND: return "backend";
    case FERRY_FD_PAGE_PIPE: return "page pipe";
    default: return "unknown";
    }
}

bool ferry__wire_fds_decode(const uint8_t *p, size_t len, FerryWireFd **fds, uint32_t *n, FerryError **errp)
{
    FerryWireReader r;
    ferry__wire_reader_init(&r, p, len);
    uint32_t count = ferry__wire_get_be32(&r);
    if (r.failed || count == 0 || count > FERRY_WIRE_MAX_FDS) {
        ferry_error_setg(errp, "FDS record announces %u file descriptors (1..%u allowed)", count,
                         FERRY_WIRE_MAX_FDS);
        return false;
    }
    /* Each entry takes at least 3 bytes: the count cannot promise more entries than the payload holds. */
    if ((uint64_t)count * 3 > len - 4) {
        ferry_error_setg(errp, "FDS record of %zu bytes cannot describe %u file descriptors", len, count);
        return false;
    }
    FerryWireFd *out = ferry__xcalloc(count, sizeof(*out));
    for (uint32_t i = 0; i < count; i++) {
        out[i].kind = ferry__wire_get_u8(&r);
        if (!ferry__wire_get_name(&r, out[i].name) || !out[i].name[0]) {
            ferry_error_setg(errp, "FDS record: entry %u has a bad name", i);
            free(out);
            return false;
        }
        for (const char *c = out[i].name; *c; c++) {
            if (*c < 0x21 || *c > 0x7e) {
                ferry_error_setg(errp, "FDS record: entry %u name has byte 0x%02x (printable ASCII only)", i,
                                 (unsigned char)*c);
                free(out);
                return false;
            }
        }
        if (out[i].kind != FERRY_FD_RAM_BLOCK && out[i].kind != FERRY_FD_BACKEND &&
            out[i].kind != FERRY_FD_PAGE_PIPE) {
            ferry_error_setg(errp, "FDS record: entry %u ('%s') has unknown kind %u", i, out[i].name, out[i].kind);
            free(out);
            return false;
        }
    }
    if (r.pos != len) {
        ferry_error_setg(errp, "FDS record has %zu bytes after its %u entries", len - r.pos, count);
        free(out);
        return false;
    }
    *fds = out;
    *n = count;
    return true;
}

/* ---- mapped-ram ---- */

size_t ferry__wire_mapped_len(uint32_t nblocks)
{
    return FERRY_WIRE_MAPPED_HEADER_LEN + (size_t)nblocks * FERRY_WIRE_MAPPED_BLOCK_LEN;
}

void ferry__wire_mapped_encode(const FerryWireMapped *r, uint8_t *out)
{
    ferry__put_be32(out, FERRY_WIRE_MAPPED_VERSION);
    ferry__put_be32(out + 4, r->flags);
    ferry__put_be32(out + 8, r->nblocks);
    ferry__put_be32(out + 12, 0);
    ferry__put_be64(out + 16, r->resume);
    for (uint32_t i = 0; i < r->nblocks; i++) {
        uint8_t *b = out + FERRY_WIRE_MAPPED_HEADER_LEN + (size_t)i * FERRY_WIRE_MAPPED_BLOCK_LEN;
        ferry__put_be64(b, r->blocks[i].bitmap);
        ferry__put_be64(b + 8, r->blocks[i].checksums);
        ferry__put_be64(b + 16, r->blocks[i].pages);
    }
}

/* Region [off, off + len) of block @name's @what, checked to start at or after *end and fit below @limit; *end
 * moves past it. */
static bool mapped_region(const char *name, const char *what, uint64_t off, uint64_t len, uint64_t *end,
                          uint64_t limit, FerryError **errp)
{
    if (off < *end || off > limit || len > limit - off) {
        ferry_error_setg(errp, "MAPPED_RAM: the %s of block '%s' (offset %llu, %llu bytes) overlaps another region "
                         "or lies outside [%llu, %llu)", what, name, (unsigned long long)off,
                         (unsigned long long)len, (unsigned long long)*end, (unsigned long long)limit);
        return false;
    }
    *end = off + len;
    return true;
}

bool ferry__wire_mapped_decode(const uint8_t *p, size_t len, const FerryWireConfig *c, uint64_t after,
                               FerryWireMapped *r, FerryError **errp)
{
    memset(r, 0, sizeof(*r));
    if (len < FERRY_WIRE_MAPPED_HEADER_LEN) {
        ferry_error_setg(errp, "MAPPED_RAM is %zu bytes, shorter than its %u-byte header", len,
                         FERRY_WIRE_MAPPED_HEADER_LEN);
        return false;
    }
    uint32_t version = ferry__get_be32(p), reserved = ferry__get_be32(p + 12);
    r->flags = ferry__get_be32(p + 4);
    r->nblocks = ferry__get_be32(p + 8);
    r->resume = ferry__get_be64(p + 16);
    if (version != FERRY_WIRE_MAPPED_VERSION) {
        ferry_error_setg(errp, "MAPPED_RAM version %u is not supported (only %u)", version, FERRY_WIRE_MAPPED_VERSION);
        return false;
    }
    if ((r->flags & ~FERRY_MAPPED_F_CHECKSUMS) || reserved) {
        ferry_error_setg(errp, "MAPPED_RAM has unknown flags 0x%x or a non-zero reserved field",
                         r->flags & ~FERRY_MAPPED_F_CHECKSUMS);
        return false;
    }
    if (r->nblocks != c->nblocks) {
        ferry_error_setg(errp, "MAPPED_RAM describes %u blocks, the CONFIG record %u", r->nblocks, c->nblocks);
        return false;
    }
    if (len != ferry__wire_mapped_len(r->nblocks)) {
        ferry_error_setg(errp, "MAPPED_RAM is %zu bytes, %zu expected for %u blocks", len,
                         ferry__wire_mapped_len(r->nblocks), r->nblocks);
        return false;
    }
    r->blocks = ferry__xcalloc(r->nblocks ? r->nblocks : 1, sizeof(*r->blocks));
    uint64_t end = after;
    for (uint32_t i = 0; i < r->nblocks; i++) {
        const uint8_t *b = p + FERRY_WIRE_MAPPED_HEADER_LEN + (size_t)i * FERRY_WIRE_MAPPED_BLOCK_LEN;
        FerryWireMappedBlock *mb = &r->blocks[i];
        mb->bitmap = ferry__get_be64(b);
        mb->checksums = ferry__get_be64(b + 8);
        mb->pages = ferry__get_be64(b + 16);
        uint64_t npages = c->blocks[i].size / c->page_size;
        const char *name = c->blocks[i].name;
        if (!mapped_region(name, "bitmap", mb->bitmap, (npages + 7) / 8, &end, r->resume, errp) ||
            !mapped_region(name, "checksum table", mb->checksums, npages * 4, &end, r->resume, errp) ||
            !mapped_region(name, "pages", mb->pages, c->blocks[i].size, &end, r->resume, errp)) {
            goto fail;
        }
        if (mb->pages % c->page_size) {
            ferry_error_setg(errp, "MAPPED_RAM: the pages of block '%s' start at offset %llu, not a multiple of the "
                             "page size %u", name, (unsigned long long)mb->pages, c->page_size);
            goto fail;
        }
    }
    return true;
fail:
    free(r->blocks);
    r->blocks = NULL;
    return false;
}
