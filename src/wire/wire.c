/*
 * Encoding and decoding of the stream header and record headers, and a bounds-checked payload reader. Pure
 * functions over buffers: the stream layer moves the bytes, the migration layer decides what records mean.
 */
#include <string.h>

#include "wire/wire.h"

void ferry__wire_encode_header(uint8_t out[FERRY_WIRE_HEADER_LEN])
{
    memcpy(out, FERRY_WIRE_MAGIC, FERRY_WIRE_MAGIC_LEN);
    ferry__put_be32(out + 8, FERRY_WIRE_VERSION);
    ferry__put_be32(out + 12, 0); /* header flags: none defined in version 1 */
}

bool ferry__wire_decode_header(const uint8_t in[FERRY_WIRE_HEADER_LEN], FerryError **errp)
{
    if (memcmp(in, FERRY_WIRE_MAGIC, FERRY_WIRE_MAGIC_LEN) != 0) {
        ferry_error_setg(errp, "not a ferry migration stream (bad magic %02x%02x%02x%02x...)", in[0], in[1], in[2],
                         in[3]);
        return false;
    }
    uint32_t version = ferry__get_be32(in + 8);
    if (version != FERRY_WIRE_VERSION) {
        ferry_error_setg(errp, "unsupported stream version %u (this build reads version %u)", version,
                         FERRY_WIRE_VERSION);
        return false;
    }
    uint32_t flags = ferry__get_be32(in + 12);
    if (flags != 0) {
        ferry_error_setg(errp, "unsupported stream header flags 0x%x", flags);
        return false;
    }
    return true;
}

void ferry__wire_encode_record(uint8_t out[FERRY_WIRE_RECORD_HEADER_LEN], const FerryRecordHeader *h)
{
    ferry__put_be16(out, h->type);
    ferry__put_be16(out + 2, h->flags);
    ferry__put_be32(out + 4, h->length);
}

void ferry__wire_decode_record(const uint8_t in[FERRY_WIRE_RECORD_HEADER_LEN], FerryRecordHeader *h)
{
    h->type = ferry__get_be16(in);
    h->flags = ferry__get_be16(in + 2);
    h->length = ferry__get_be32(in + 4);
}

const char *ferry__wire_record_name(uint16_t type)
{
    switch (type) {
    case FERRY_REC_CONFIG: return "CONFIG";
    case FERRY_REC_RAM_PAGES: return "RAM_PAGES";
    case FERRY_REC_PASS_END: return "PASS_END";
    case FERRY_REC_SECTION: return "SECTION";
    case FERRY_REC_END: return "END";
    case FERRY_REC_POPULATE_HINT: return "POPULATE_HINT";
    case FERRY_REC_HELLO: return "HELLO";
    case FERRY_REC_FEATURES: return "FEATURES";
    case FERRY_REC_FDS: return "FDS";
    case FERRY_REC_MULTIFD: return "MULTIFD";
    case FERRY_REC_MULTIFD_SYNC: return "MULTIFD_SYNC";
    case FERRY_REC_COMMIT: return "COMMIT";
    case FERRY_REC_POSTCOPY_START: return "POSTCOPY_START";
    case FERRY_REC_POSTCOPY_NEED: return "POSTCOPY_NEED";
    case FERRY_REC_POSTCOPY_RUN: return "POSTCOPY_RUN";
    case FERRY_REC_POSTCOPY_RESUME: return "POSTCOPY_RESUME";
    case FERRY_REC_MAPPED_RAM: return "MAPPED_RAM";
    case FERRY_REC_REQ_PAGES: return "REQ_PAGES";
    case FERRY_REC_RESUME_NEED: return "RESUME_NEED";
    case FERRY_REC_RESUME_ACK: return "RESUME_ACK";
    case FERRY_REC_KEEPALIVE: return "KEEPALIVE";
    case FERRY_REC_HELLO_REPLY: return "HELLO_REPLY";
    case FERRY_REC_ACK: return "ACK";
    case FERRY_REC_NACK: return "NACK";
    default: return "unknown";
    }
}

void ferry__wire_reader_init(FerryWireReader *r, const uint8_t *p, size_t len)
{
    r->p = p;
    r->len = len;
    r->pos = 0;
    r->failed = false;
}

const uint8_t *ferry__wire_get_bytes(FerryWireReader *r, size_t n)
{
    if (r->failed || n > r->len - r->pos) {
        r->failed = true;
        return NULL;
    }
    const uint8_t *q = r->p + r->pos;
    r->pos += n;
    return q;
}

uint8_t ferry__wire_get_u8(FerryWireReader *r)
{
    const uint8_t *q = ferry__wire_get_bytes(r, 1);
    return q ? q[0] : 0;
}

uint32_t ferry__wire_get_be32(FerryWireReader *r)
{
    const uint8_t *q = ferry__wire_get_bytes(r, 4);
    return q ? ferry__get_be32(q) : 0;
}

uint64_t ferry__wire_get_be64(FerryWireReader *r)
{
    const uint8_t *q = ferry__wire_get_bytes(r, 8);
    return q ? ferry__get_be64(q) : 0;
}

bool ferry__wire_get_name(FerryWireReader *r, char buf[256])
{
    uint8_t n = ferry__wire_get_u8(r);
    const uint8_t *q = ferry__wire_get_bytes(r, n);
    if (!q) {
        return false;
    }
    memcpy(buf, q, n);
    buf[n] = '\0';
    /* A name with an embedded NUL would compare equal to a shorter one: refuse it. */
    return strlen(buf) == n;
}
