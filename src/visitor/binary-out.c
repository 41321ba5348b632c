/*
 * The binary output visitor: runs a section function in save mode and builds, in one pass, the section's schema
 * (a descriptor the first time a field is visited, keyed by its parent descriptor and its name) and its data (the
 * encoding of docs/stream-format.md, "Device state": be16 field id + value; structs and lists are length-prefixed,
 * the length patched in when they end). Because the schema is whatever the device visited, this is also the schema
 * visitor: ferry_migration_schema() runs it and prints the schema. It does not read any stream.
 */
#include <stdlib.h>
#include <string.h>

#include "util/util.h"
#include "visitor/visitor-impl.h"
#include "wire/wire.h"

typedef struct OutFrame {
    uint16_t desc;       /* the struct/list descriptor, FERRY_SCHEMA_NO_PARENT at the top level */
    bool is_list;
    size_t len_pos;      /* offset of the be32 length placeholder (struct, list) */
    uint64_t instance;   /* struct/top: stamp that marks the fields visited in this instance */
    uint32_t count;      /* list: elements announced */
    uint32_t seen;       /* list: elements visited */
    char *name;          /* for messages */
} OutFrame;

typedef struct OutDesc {
    uint16_t first_child, next_sibling;
    uint64_t stamp; /* the instance of the struct this field was last visited in */
} OutDesc;

typedef struct OutVisitor {
    FerryVisitor base;
    FerrySchemaField *fields;
    OutDesc *desc;
    size_t n, cap_fields;
    uint16_t top_first;
    uint8_t *buf;
    size_t len, cap;
    OutFrame frames[FERRY_SCHEMA_MAX_DEPTH + 1];
    size_t depth;          /* frames[0] is the top level */
    uint64_t next_instance;
    char *optional_name;   /* the name passed to ferry_visit_optional, until the next visit */
} OutVisitor;

static void reserve(OutVisitor *o, size_t n)
{
    if (o->cap - o->len >= n) {
        return;
    }
    size_t cap = o->cap ? o->cap : 256;
    while (cap - o->len < n) {
        cap *= 2;
    }
    o->buf = ferry__xrealloc(o->buf, cap);
    o->cap = cap;
}

static void put(OutVisitor *o, const void *p, size_t n)
{
    reserve(o, n);
    memcpy(o->buf + o->len, p, n);
    o->len += n;
}

static void put_be16(OutVisitor *o, uint16_t v)
{
    reserve(o, 2);
    ferry__put_be16(o->buf + o->len, v);
    o->len += 2;
}

static void put_be32(OutVisitor *o, uint32_t v)
{
    reserve(o, 4);
    ferry__put_be32(o->buf + o->len, v);
    o->len += 4;
}

static void put_be64(OutVisitor *o, uint64_t v)
{
    reserve(o, 8);
    ferry__put_be64(o->buf + o->len, v);
    o->len += 8;
}

static bool name_ok(const char *name, FerryError **errp)
{
    size_t len = name ? strlen(name) : 0;
    bool ok = len >= 1 && len <= 255;
    for (size_t i = 0; ok && i < len; i++) {
        ok = (unsigned char)name[i] >= 0x21 && (unsigned char)name[i] <= 0x7e;
    }
    if (!ok) {
        char *clean = ferry__utf8_scrub(name ? name : "");
        ferry_error_setg(errp, "invalid field name '%s' (1..255 bytes 0x21..0x7e)", clean);
        free(clean);
    }
    return ok;
}

static uint16_t add_desc(OutVisitor *o, uint16_t parent, uint8_t type, const char *name)
{
    if (o->n == o->cap_fields) {
        o->cap_fields = o->cap_fields ? o->cap_fields * 2 : 16;
        o->fields = ferry__xrealloc(o->fields, o->cap_fields * sizeof(*o->fields));
        o->desc = ferry__xrealloc(o->desc, o->cap_fields * sizeof(*o->desc));
    }
    uint16_t id = (uint16_t)o->n++;
    o->fields[id] = (FerrySchemaField){ .parent = parent, .type = type, .name = ferry__xstrdup(name) };
    o->desc[id] = (OutDesc){ .first_child = FERRY_SCHEMA_NO_PARENT, .next_sibling = FERRY_SCHEMA_NO_PARENT };
    /* Appending keeps siblings in visit order; the linear walk is over one struct's fields only. */
    uint16_t *link = parent == FERRY_SCHEMA_NO_PARENT ? &o->top_first : &o->desc[parent].first_child;
    while (*link != FERRY_SCHEMA_NO_PARENT) {
        link = &o->desc[*link].next_sibling;
    }
    *link = id;
    return id;
}

/*
 * Find or create the descriptor of the field now visited and write its id (outside lists). Checks the name, the
 * type against earlier visits and that no field is visited twice in one struct instance.
 */
static bool begin_field(OutVisitor *o, const char *name, unsigned attrs, uint8_t type, uint16_t *idp,
                        FerryError **errp)
{
    OutFrame *fr = &o->frames[o->depth];
    if (!name_ok(name, errp)) {
        return false;
    }
    uint8_t flags = attrs & (FERRY_SCHEMA_SKIPPABLE | FERRY_SCHEMA_DEFAULT);
    if (o->optional_name) {
        if (strcmp(o->optional_name, name) == 0) {
            flags |= FERRY_SCHEMA_OPTIONAL;
        }
        free(o->optional_name);
        o->optional_name = NULL;
    }
    uint16_t id = FERRY_SCHEMA_NO_PARENT;
    if (fr->is_list) {
        if (fr->seen >= fr->count) {
            ferry_error_setg(errp, "list '%s': more than the %u element(s) announced", fr->name, fr->count);
            return false;
        }
        id = o->desc[fr->desc].first_child;
        if (id != FERRY_SCHEMA_NO_PARENT && o->fields[id].type != type) {
            ferry_error_setg(errp, "list '%s': element of type %s after elements of type %s", fr->name,
                             ferry__field_type_name(type), ferry__field_type_name(o->fields[id].type));
            return false;
        }
    } else {
        uint16_t c = fr->desc == FERRY_SCHEMA_NO_PARENT ? o->top_first : o->desc[fr->desc].first_child;
        for (; c != FERRY_SCHEMA_NO_PARENT; c = o->desc[c].next_sibling) {
            if (strcmp(o->fields[c].name, name) == 0) {
                break;
            }
        }
        id = c;
        if (id != FERRY_SCHEMA_NO_PARENT) {
            if (o->desc[id].stamp == fr->instance) {
                ferry_error_setg(errp, "field '%s' visited twice in one struct", name);
                return false;
            }
            if (o->fields[id].type != type) {
                ferry_error_setg(errp, "field '%s' visited as %s, and as %s before", name,
                                 ferry__field_type_name(type), ferry__field_type_name(o->fields[id].type));
                return false;
            }
        }
    }
    if (id == FERRY_SCHEMA_NO_PARENT) {
        if (o->n >= FERRY_SCHEMA_MAX_FIELDS) {
            ferry_error_setg(errp, "field '%s': more than %u field descriptors in one section", name,
                             FERRY_SCHEMA_MAX_FIELDS);
            return false;
        }
        id = add_desc(o, fr->desc, type, name);
    }
    /* Attributes and optionality accumulate over visits: the schema describes every instance. */
    o->fields[id].flags |= flags;
    if (fr->is_list) {
        fr->seen++;
    } else {
        o->desc[id].stamp = fr->instance;
        put_be16(o, id);
    }
    *idp = id;
    return true;
}

static bool out_value(FerryVisitor *v, const char *name, unsigned attrs, uint8_t type, void *val, uint32_t len,
                      FerryError **errp)
{
    OutVisitor *o = (OutVisitor *)v;
    uint16_t id;
    if (type == FERRY_FT_BYTES && len > FERRY_VISIT_MAX_BYTES) {
        ferry_error_setg(errp, "field '%s': %u bytes, at most %u are allowed", name, len, FERRY_VISIT_MAX_BYTES);
        return false;
    }
    const char *str = NULL;
    size_t slen = 0;
    if (type == FERRY_FT_STR) {
        str = *(char **)val ? *(char **)val : "";
        slen = strlen(str);
        if (slen > FERRY_VISIT_MAX_STR) {
            ferry_error_setg(errp, "field '%s': a string of %zu bytes, at most %u are allowed", name, slen,
                             FERRY_VISIT_MAX_STR);
            return false;
        }
    }
    if (!begin_field(o, name, attrs, type, &id, errp)) {
        return false;
    }
    switch (type) {
    case FERRY_FT_U8:
        put(o, val, 1);
        break;
    case FERRY_FT_U16:
        put_be16(o, *(uint16_t *)val);
        break;
    case FERRY_FT_U32:
        put_be32(o, *(uint32_t *)val);
        break;
    case FERRY_FT_U64:
        put_be64(o, *(uint64_t *)val);
        break;
    case FERRY_FT_I64:
        put_be64(o, (uint64_t)*(int64_t *)val);
        break;
    case FERRY_FT_BOOL: {
        uint8_t b = *(bool *)val ? 1 : 0;
        put(o, &b, 1);
        break;
    }
    case FERRY_FT_BYTES:
        put_be32(o, len);
        put(o, val, len);
        break;
    case FERRY_FT_STR:
        put_be32(o, (uint32_t)slen);
        put(o, str, slen);
        break;
    default:
        abort();
    }
    return true;
}

static bool push_frame(OutVisitor *o, const char *name, unsigned attrs, bool is_list, FerryError **errp)
{
    uint16_t id;
    if (o->depth >= FERRY_SCHEMA_MAX_DEPTH) {
        ferry_error_setg(errp, "field '%s': structs and lists nested more than %u deep", name ? name : "",
                         FERRY_SCHEMA_MAX_DEPTH);
        return false;
    }
    if (!begin_field(o, name, attrs, is_list ? FERRY_FT_LIST : FERRY_FT_STRUCT, &id, errp)) {
        return false;
    }
    OutFrame *fr = &o->frames[++o->depth];
    *fr = (OutFrame){ .desc = id, .is_list = is_list, .len_pos = o->len, .instance = ++o->next_instance,
                      .name = ferry__xstrdup(name) };
    put_be32(o, 0);
    return true;
}

/* Close the innermost frame, which must be a struct (or a list when @is_list), and patch its length. */
static bool pop_frame(OutVisitor *o, bool is_list, FerryError **errp)
{
    OutFrame *fr = &o->frames[o->depth];
    if (o->depth == 0 || fr->is_list != is_list) {
        ferry_error_setg(errp, "end of a %s without a matching start", is_list ? "list" : "struct");
        return false;
    }
    if (is_list && fr->seen != fr->count) {
        ferry_error_setg(errp, "list '%s': %u element(s) announced, %u visited", fr->name, fr->count, fr->seen);
        return false;
    }
    size_t extent = o->len - fr->len_pos - 4;
    if (extent > UINT32_MAX) {
        ferry_error_setg(errp, "%s '%s' is longer than 4 GiB", is_list ? "list" : "struct", fr->name);
        return false;
    }
    ferry__put_be32(o->buf + fr->len_pos, (uint32_t)extent);
    /* An optional field announced and not visited in this struct says nothing about the fields after it. */
    free(o->optional_name);
    o->optional_name = NULL;
    free(fr->name);
    fr->name = NULL;
    o->depth--;
    return true;
}

static bool out_start_struct(FerryVisitor *v, const char *name, unsigned attrs, FerryError **errp)
{
    return push_frame((OutVisitor *)v, name, attrs, false, errp);
}

static bool out_end_struct(FerryVisitor *v, FerryError **errp)
{
    return pop_frame((OutVisitor *)v, false, errp);
}

static bool out_start_list(FerryVisitor *v, const char *name, unsigned attrs, uint32_t *count, uint32_t max,
                           FerryError **errp)
{
    OutVisitor *o = (OutVisitor *)v;
    if (!push_frame(o, name, attrs, true, errp)) {
        return false;
    }
    o->frames[o->depth].count = *count;
    put_be32(o, *count);
    return true;
}

static bool out_end_list(FerryVisitor *v, FerryError **errp)
{
    return pop_frame((OutVisitor *)v, true, errp);
}

static void out_optional(FerryVisitor *v, const char *name, bool *present)
{
    OutVisitor *o = (OutVisitor *)v;
    free(o->optional_name);
    o->optional_name = ferry__xstrdup(name);
}

static void out_free(FerryVisitor *v)
{
    OutVisitor *o = (OutVisitor *)v;
    for (size_t i = 0; i < o->n; i++) {
        free(o->fields[i].name);
    }
    for (size_t i = 1; i <= o->depth; i++) {
        free(o->frames[i].name);
    }
    free(o->fields);
    free(o->desc);
    free(o->buf);
    free(o->optional_name);
    free(o);
}

static const VisitorOps out_ops = {
    .value = out_value,
    .start_struct = out_start_struct,
    .end_struct = out_end_struct,
    .start_list = out_start_list,
    .end_list = out_end_list,
    .optional = out_optional,
    .free = out_free,
};

FerryVisitor *ferry__visitor_output_new(void)
{
    OutVisitor *o = ferry__xcalloc(1, sizeof(*o));
    o->base.ops = &out_ops;
    o->base.kind = FERRY_VISITOR_OUTPUT;
    o->top_first = FERRY_SCHEMA_NO_PARENT;
    o->frames[0] = (OutFrame){ .desc = FERRY_SCHEMA_NO_PARENT, .instance = ++o->next_instance };
    return &o->base;
}

bool ferry__visitor_output_finish(FerryVisitor *v, FerrySchema **schema, uint8_t **data, size_t *len,
                                  FerryError **errp)
{
    OutVisitor *o = (OutVisitor *)v;
    if (o->depth != 0) {
        ferry_error_setg(errp, "%zu struct(s) or list(s) left open (innermost '%s')", o->depth,
                         o->frames[o->depth].name);
        return false;
    }
    FerrySchema *s = ferry__xcalloc(1, sizeof(*s));
    s->fields = o->fields;
    s->n = o->n;
    *schema = s;
    *data = o->buf;
    *len = o->len;
    o->fields = NULL;
    o->n = o->cap_fields = 0;
    free(o->desc);
    o->desc = NULL;
    o->top_first = FERRY_SCHEMA_NO_PARENT;
    o->buf = NULL;
    o->len = o->cap = 0;
    return true;
}
