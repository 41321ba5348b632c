/*
 * The JSON visitor: runs a section function in save mode and builds a JSON object of the fields it visits, for
 * people and tools (ferry-analyze prints the same JSON from a stream through ferry__section_data_to_json, which
 * shares the value builders below so that both agree). It writes no binary data and keeps no schema.
 */
#include <stdlib.h>
#include <string.h>

#include "util/util.h"
#include "visitor/visitor-impl.h"

json_t *ferry__json_u64(uint64_t v)
{
    if (v > (uint64_t)INT64_MAX) {
        char buf[24];
        snprintf(buf, sizeof(buf), "%llu", (unsigned long long)v);
        return json_string(buf);
    }
    return json_integer((json_int_t)v);
}

/* Length of the valid UTF-8 sequence at @p (at most @n bytes), 0 if there is none (RFC 3629: no overlong forms,
 * no surrogates, nothing above U+10FFFF). */
static size_t utf8_seq(const unsigned char *p, size_t n)
{
    if (p[0] < 0x80) {
        return 1;
    }
    size_t len;
    uint32_t cp, min;
    if ((p[0] & 0xe0) == 0xc0) {
        len = 2, cp = p[0] & 0x1f, min = 0x80;
    } else if ((p[0] & 0xf0) == 0xe0) {
        len = 3, cp = p[0] & 0x0f, min = 0x800;
    } else if ((p[0] & 0xf8) == 0xf0) {
        len = 4, cp = p[0] & 0x07, min = 0x10000;
    } else {
        return 0;
    }
    if (n < len) {
        return 0;
    }
    for (size_t i = 1; i < len; i++) {
        if ((p[i] & 0xc0) != 0x80) {
            return 0;
        }
        cp = (cp << 6) | (p[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) {
        return 0;
    }
    return len;
}

json_t *ferry__json_str(const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s;
    /* Each invalid byte becomes the 3-byte U+FFFD. */
    char *out = ferry__xmalloc(len * 3 + 1);
    size_t o = 0;
    for (size_t i = 0; i < len;) {
        size_t n = utf8_seq(p + i, len - i);
        if (n == 0) {
            memcpy(out + o, "\xef\xbf\xbd", 3);
            o += 3;
            i++;
        } else {
            memcpy(out + o, p + i, n);
            o += n;
            i += n;
        }
    }
    json_t *j = json_stringn(out, o);
    free(out);
    return j;
}

json_t *ferry__json_hex(const uint8_t *p, size_t len)
{
    static const char digits[] = "0123456789abcdef";
    char *out = ferry__xmalloc(len * 2 + 1);
    for (size_t i = 0; i < len; i++) {
        out[2 * i] = digits[p[i] >> 4];
        out[2 * i + 1] = digits[p[i] & 0xf];
    }
    json_t *j = json_stringn(out, len * 2);
    free(out);
    return j;
}

typedef struct JsonVisitor {
    FerryVisitor base;
    json_t *root;
    json_t **stack; /* borrowed: the open containers, stack[0] is root */
    size_t depth, cap;
} JsonVisitor;

/* Add @val (a new reference, consumed) to the innermost container. */
static void add(JsonVisitor *jv, const char *name, json_t *val)
{
    json_t *c = jv->stack[jv->depth];
    if (json_is_array(c)) {
        json_array_append_new(c, val);
    } else {
        json_object_set_new(c, name ? name : "", val);
    }
}

static bool json_value_visit(FerryVisitor *v, const char *name, unsigned attrs, uint8_t type, void *val,
                             uint32_t len, FerryError **errp)
{
    JsonVisitor *jv = (JsonVisitor *)v;
    json_t *j;
    switch (type) {
    case FERRY_FT_U8:
        j = json_integer(*(uint8_t *)val);
        break;
    case FERRY_FT_U16:
        j = json_integer(*(uint16_t *)val);
        break;
    case FERRY_FT_U32:
        j = json_integer(*(uint32_t *)val);
        break;
    case FERRY_FT_U64:
        j = ferry__json_u64(*(uint64_t *)val);
        break;
    case FERRY_FT_I64:
        j = json_integer(*(int64_t *)val);
        break;
    case FERRY_FT_BOOL:
        j = json_boolean(*(bool *)val);
        break;
    case FERRY_FT_BYTES:
        j = ferry__json_hex(val, len);
        break;
    case FERRY_FT_STR: {
        const char *s = *(char **)val ? *(char **)val : "";
        j = ferry__json_str(s, strlen(s));
        break;
    }
    default:
        abort();
    }
    add(jv, name, j);
    return true;
}

static void open_container(JsonVisitor *jv, const char *name, json_t *c)
{
    add(jv, name, c);
    if (jv->depth + 1 >= jv->cap) {
        jv->cap *= 2;
        jv->stack = ferry__xrealloc(jv->stack, jv->cap * sizeof(*jv->stack));
    }
    jv->stack[++jv->depth] = c;
}

static bool close_container(JsonVisitor *jv, bool is_list, FerryError **errp)
{
    if (jv->depth == 0 || json_is_array(jv->stack[jv->depth]) != is_list) {
        ferry_error_setg(errp, "end of a %s without a matching start", is_list ? "list" : "struct");
        return false;
    }
    jv->depth--;
    return true;
}

static bool json_start_struct(FerryVisitor *v, const char *name, unsigned attrs, FerryError **errp)
{
    open_container((JsonVisitor *)v, name, json_object());
    return true;
}

static bool json_end_struct(FerryVisitor *v, FerryError **errp)
{
    return close_container((JsonVisitor *)v, false, errp);
}

static bool json_start_list(FerryVisitor *v, const char *name, unsigned attrs, uint32_t *count, uint32_t max,
                            FerryError **errp)
{
    open_container((JsonVisitor *)v, name, json_array());
    return true;
}

static bool json_end_list(FerryVisitor *v, FerryError **errp)
{
    return close_container((JsonVisitor *)v, true, errp);
}

static void json_visitor_free(FerryVisitor *v)
{
    JsonVisitor *jv = (JsonVisitor *)v;
    json_decref(jv->root);
    free(jv->stack);
    free(jv);
}

static const VisitorOps json_ops = {
    .value = json_value_visit,
    .start_struct = json_start_struct,
    .end_struct = json_end_struct,
    .start_list = json_start_list,
    .end_list = json_end_list,
    .free = json_visitor_free,
};

FerryVisitor *ferry_visitor_json_new(void)
{
    JsonVisitor *jv = ferry__xcalloc(1, sizeof(*jv));
    jv->base.ops = &json_ops;
    jv->base.kind = FERRY_VISITOR_OUTPUT;
    jv->root = json_object();
    jv->cap = 8;
    jv->stack = ferry__xcalloc(jv->cap, sizeof(*jv->stack));
    jv->stack[0] = jv->root;
    return &jv->base;
}

json_t *ferry_visitor_json_result(FerryVisitor *v)
{
    return json_incref(((JsonVisitor *)v)->root);
}
