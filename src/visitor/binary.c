/*
 * The binary output and input visitors: save and load device state to and from a byte buffer. Integers are
 * big-endian and fixed-width, bool is one byte (0 or 1), bytes and strings are length-prefixed (be32) so that a
 * reader can check them, a list is a be32 element count. Structs add no bytes. Every input check produces an
 * error that names the field. This is not yet self-describing: both sides must visit the same fields in the same
 * order (the section version is how they agree).
 */
#include <stdlib.h>
#include <string.h>

#include "util/util.h"
#include "visitor/visitor-int.h"
#include "wire/wire.h"

#define MAX_DEPTH 32
#define MAX_STR_LEN (1u << 20)

struct FerryVisitor {
    FerryVisitorKind kind;
    uint8_t *buf;       /* output: owned growing buffer; input: borrowed */
    size_t len, cap;    /* output: bytes written; input: bytes available */
    size_t pos;         /* input: read position */
    int depth;          /* open structs and lists */
};

FerryVisitorKind ferry_visitor_kind(const FerryVisitor *v)
{
    return v->kind;
}

FerryVisitor *ferry__visitor_output_new(void)
{
    FerryVisitor *v = ferry__xcalloc(1, sizeof(*v));
    v->kind = FERRY_VISITOR_OUTPUT;
    return v;
}

const uint8_t *ferry__visitor_output_data(const FerryVisitor *v, size_t *len)
{
    *len = v->len;
    return v->buf;
}

FerryVisitor *ferry__visitor_input_new(const uint8_t *buf, size_t len)
{
    FerryVisitor *v = ferry__xcalloc(1, sizeof(*v));
    v->kind = FERRY_VISITOR_INPUT;
    v->buf = (uint8_t *)buf;
    v->len = len;
    return v;
}

bool ferry__visitor_input_finish(FerryVisitor *v, FerryError **errp)
{
    if (v->depth != 0) {
        ferry_error_setg(errp, "section state left %d struct(s) or list(s) open", v->depth);
        return false;
    }
    if (v->pos != v->len) {
        ferry_error_setg(errp, "section state has %zu unread byte(s) at its end", v->len - v->pos);
        return false;
    }
    return true;
}

void ferry__visitor_free(FerryVisitor *v)
{
    if (!v) {
        return;
    }
    if (v->kind == FERRY_VISITOR_OUTPUT) {
        free(v->buf);
    }
    free(v);
}

static void out_put(FerryVisitor *v, const void *p, size_t n)
{
    if (v->len + n > v->cap) {
        size_t cap = v->cap ? v->cap : 256;
        while (cap < v->len + n) {
            cap *= 2;
        }
        v->buf = ferry__xrealloc(v->buf, cap);
        v->cap = cap;
    }
    memcpy(v->buf + v->len, p, n);
    v->len += n;
}

static const uint8_t *in_get(FerryVisitor *v, const char *name, size_t n, FerryError **errp)
{
    if (n > v->len - v->pos) {
        ferry_error_setg(errp, "field '%s': section state ends early (need %zu byte(s), %zu left)", name ? name : "?",
                         n, v->len - v->pos);
        return NULL;
    }
    const uint8_t *p = v->buf + v->pos;
    v->pos += n;
    return p;
}

static bool visit_uint(FerryVisitor *v, const char *name, uint64_t *val, unsigned width, FerryError **errp)
{
    uint8_t b[8];
    if (v->kind == FERRY_VISITOR_OUTPUT) {
        for (unsigned i = 0; i < width; i++) {
            b[i] = (uint8_t)(*val >> (8 * (width - 1 - i)));
        }
        out_put(v, b, width);
        return true;
    }
    const uint8_t *p = in_get(v, name, width, errp);
    if (!p) {
        return false;
    }
    uint64_t x = 0;
    for (unsigned i = 0; i < width; i++) {
        x = (x << 8) | p[i];
    }
    *val = x;
    return true;
}

bool ferry_visit_start_struct(FerryVisitor *v, const char *name, FerryError **errp)
{
    if (v->depth >= MAX_DEPTH) {
        ferry_error_setg(errp, "struct '%s' nests deeper than %d levels", name ? name : "?", MAX_DEPTH);
        return false;
    }
    v->depth++;
    return true;
}

bool ferry_visit_end_struct(FerryVisitor *v, FerryError **errp)
{
    if (v->depth == 0) {
        ferry_error_setg(errp, "end of a struct that was not started");
        return false;
    }
    v->depth--;
    return true;
}

bool ferry_visit_start_list(FerryVisitor *v, const char *name, uint32_t *count, uint32_t max, FerryError **errp)
{
    uint64_t n = *count;
    if (!ferry_visit_start_struct(v, name, errp) || !visit_uint(v, name, &n, 4, errp)) {
        return false;
    }
    if (n > max) {
        ferry_error_setg(errp, "list '%s' has %llu element(s), at most %u allowed", name ? name : "?",
                         (unsigned long long)n, max);
        return false;
    }
    *count = (uint32_t)n;
    return true;
}

bool ferry_visit_end_list(FerryVisitor *v, FerryError **errp)
{
    return ferry_visit_end_struct(v, errp);
}

bool ferry_visit_u8(FerryVisitor *v, const char *name, uint8_t *val, FerryError **errp)
{
    uint64_t x = *val;
    if (!visit_uint(v, name, &x, 1, errp)) {
        return false;
    }
    *val = (uint8_t)x;
    return true;
}

bool ferry_visit_u16(FerryVisitor *v, const char *name, uint16_t *val, FerryError **errp)
{
    uint64_t x = *val;
    if (!visit_uint(v, name, &x, 2, errp)) {
        return false;
    }
    *val = (uint16_t)x;
    return true;
}

bool ferry_visit_u32(FerryVisitor *v, const char *name, uint32_t *val, FerryError **errp)
{
    uint64_t x = *val;
    if (!visit_uint(v, name, &x, 4, errp)) {
        return false;
    }
    *val = (uint32_t)x;
    return true;
}

bool ferry_visit_u64(FerryVisitor *v, const char *name, uint64_t *val, FerryError **errp)
{
    return visit_uint(v, name, val, 8, errp);
}

bool ferry_visit_i64(FerryVisitor *v, const char *name, int64_t *val, FerryError **errp)
{
    uint64_t x = (uint64_t)*val;
    if (!visit_uint(v, name, &x, 8, errp)) {
        return false;
    }
    *val = (int64_t)x;
    return true;
}

bool ferry_visit_bool(FerryVisitor *v, const char *name, bool *val, FerryError **errp)
{
    uint64_t x = *val ? 1 : 0;
    if (!visit_uint(v, name, &x, 1, errp)) {
        return false;
    }
    if (x > 1) {
        ferry_error_setg(errp, "field '%s': invalid bool value %llu", name ? name : "?", (unsigned long long)x);
        return false;
    }
    *val = x != 0;
    return true;
}

bool ferry_visit_bytes(FerryVisitor *v, const char *name, void *buf, uint32_t len, FerryError **errp)
{
    uint64_t n = len;
    if (!visit_uint(v, name, &n, 4, errp)) {
        return false;
    }
    if (v->kind == FERRY_VISITOR_OUTPUT) {
        out_put(v, buf, len);
        return true;
    }
    if (n != len) {
        ferry_error_setg(errp, "field '%s': %llu byte(s) in the stream, %u expected", name ? name : "?",
                         (unsigned long long)n, len);
        return false;
    }
    const uint8_t *p = in_get(v, name, len, errp);
    if (!p) {
        return false;
    }
    memcpy(buf, p, len);
    return true;
}

bool ferry_visit_str(FerryVisitor *v, const char *name, char **str, FerryError **errp)
{
    if (v->kind == FERRY_VISITOR_OUTPUT) {
        const char *s = *str ? *str : "";
        uint64_t n = strlen(s);
        if (n > MAX_STR_LEN) {
            ferry_error_setg(errp, "field '%s': string longer than %u bytes", name ? name : "?", MAX_STR_LEN);
            return false;
        }
        visit_uint(v, name, &n, 4, errp);
        out_put(v, s, n);
        return true;
    }
    uint64_t n = 0;
    if (!visit_uint(v, name, &n, 4, errp)) {
        return false;
    }
    if (n > MAX_STR_LEN) {
        ferry_error_setg(errp, "field '%s': string of %llu bytes is longer than %u", name ? name : "?",
                         (unsigned long long)n, MAX_STR_LEN);
        return false;
    }
    const uint8_t *p = in_get(v, name, n, errp);
    if (!p) {
        return false;
    }
    if (memchr(p, '\0', n)) {
        ferry_error_setg(errp, "field '%s': string contains a NUL byte", name ? name : "?");
        return false;
    }
    free(*str);
    *str = ferry__xstrndup((const char *)p, n);
    return true;
}
