/*
 * The binary input visitor and the schema-only decoder of section data. ferry__visitor_input_new first checks the
 * whole encoding against the schema (docs/stream-format.md, "Device state"), so that the visits that follow, and
 * ferry__section_data_to_json, walk data known to be well formed: every extent inside its parent's, every field id a
 * child of its enclosing descriptor and present at most once, list counts consistent with their extents. Only then
 * does device code run: a field is found by name (its descriptor among the children of the current struct, then its
 * value in the current fieldset), so that field order does not matter, unknown skippable fields are skipped and
 * missing fields take the device's default. Each struct's fieldset is indexed when the device opens it. Nothing
 * here allocates by a length read from the data before that length has been checked against its extent.
 */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "util/util.h"
#include "visitor/visitor-impl.h"
#include "wire/wire.h"

#define NONE FERRY_SCHEMA_NO_PARENT

/* The schema's tree, as links: built once per visitor or decode. */
typedef struct Tree {
    const FerrySchema *s;
    uint16_t top_first;
    uint16_t *first_child, *next_sibling;
    uint32_t *stamp; /* validation: the fieldset in which a descriptor's field was last seen */
    uint32_t next_stamp;
} Tree;

static void tree_init(Tree *t, const FerrySchema *s)
{
    size_t n = s->n ? s->n : 1;
    t->s = s;
    t->top_first = NONE;
    t->first_child = ferry__xmalloc(n * sizeof(uint16_t));
    t->next_sibling = ferry__xmalloc(n * sizeof(uint16_t));
    t->stamp = ferry__xcalloc(n, sizeof(uint32_t));
    t->next_stamp = 0;
    for (size_t i = 0; i < s->n; i++) {
        t->first_child[i] = NONE;
        t->next_sibling[i] = NONE;
    }
    /* Built backwards so that each sibling list is in table order. */
    for (size_t i = s->n; i-- > 0;) {
        uint16_t p = s->fields[i].parent;
        if (p == NONE) {
            t->next_sibling[i] = t->top_first;
            t->top_first = (uint16_t)i;
        } else if (p < s->n) {
            t->next_sibling[i] = t->first_child[p];
            t->first_child[p] = (uint16_t)i;
        }
    }
}

static void tree_destroy(Tree *t)
{
    free(t->first_child);
    free(t->next_sibling);
    free(t->stamp);
}

static uint16_t tree_children(const Tree *t, uint16_t parent)
{
    return parent == NONE ? t->top_first : t->first_child[parent];
}

/* The schema path of a descriptor for validation errors: "a.list[].x". */
static char *desc_path(const FerrySchema *s, uint16_t id)
{
    uint16_t chain[FERRY_SCHEMA_MAX_DEPTH + 2];
    size_t n = 0;
    for (uint16_t i = id; i != NONE && i < s->n && n < FERRY_ARRAY_SIZE(chain); i = s->fields[i].parent) {
        chain[n++] = i;
    }
    char *path = ferry__xstrdup("");
    while (n-- > 0) {
        const FerrySchemaField *f = &s->fields[chain[n]];
        uint16_t p = f->parent;
        char *next;
        if (p != NONE && s->fields[p].type == FERRY_FT_LIST) {
            next = ferry__xasprintf("%s[]", path);
        } else {
            next = ferry__xasprintf("%s%s%s", path, *path ? "." : "", f->name);
        }
        free(path);
        path = next;
    }
    return path;
}

static bool is_int_type(uint8_t t)
{
    return t >= FERRY_FT_U8 && t <= FERRY_FT_I64;
}

static size_t fixed_size(uint8_t t)
{
    switch (t) {
    case FERRY_FT_U8:
    case FERRY_FT_BOOL:
        return 1;
    case FERRY_FT_U16:
        return 2;
    case FERRY_FT_U32:
        return 4;
    case FERRY_FT_U64:
    case FERRY_FT_I64:
        return 8;
    default:
        return 0; /* length-prefixed */
    }
}

/* Bytes taken by a value of @type at @p, in data that has been validated. */
static size_t value_size(uint8_t type, const uint8_t *p)
{
    size_t n = fixed_size(type);
    return n ? n : 4 + (size_t)ferry__get_be32(p);
}

static bool check_fieldset(Tree *t, uint16_t parent, const uint8_t *d, size_t pos, size_t end, unsigned depth,
                           FerryError **errp);

static bool check_value(Tree *t, uint16_t id, const uint8_t *d, size_t pos, size_t end, unsigned depth, size_t *next,
                        FerryError **errp)
{
    const FerrySchema *s = t->s;
    uint8_t type = s->fields[id].type;
    size_t avail = end - pos;
    const char *what = NULL;
    size_t need = fixed_size(type);
    if (depth > FERRY_SCHEMA_MAX_DEPTH + 1) {
        what = "is nested too deep";
        goto bad;
    }
    if (need) {
        if (avail < need) {
            what = "is truncated";
            goto bad;
        }
        if (type == FERRY_FT_BOOL && d[pos] > 1) {
            what = "is a bool that is neither 0 nor 1";
            goto bad;
        }
        *next = pos + need;
        return true;
    }
    if ((type > FERRY_FT_LAST_KNOWN && type < FERRY_FT_FIRST_LENGTH_PREFIXED) || type == 0) {
        what = "has an invalid type";
        goto bad;
    }
    if (avail < 4) {
        what = "is truncated (its length)";
        goto bad;
    }
    size_t len = ferry__get_be32(d + pos);
    if (len > avail - 4) {
        what = "has a length that runs past its enclosing extent";
        goto bad;
    }
    size_t start = pos + 4, vend = start + len;
    switch (type) {
    case FERRY_FT_BYTES:
        if (len > FERRY_VISIT_MAX_BYTES) {
            what = "has more bytes than allowed";
            goto bad;
        }
        break;
    case FERRY_FT_STR:
        if (len > FERRY_VISIT_MAX_STR) {
            what = "is a string longer than allowed";
            goto bad;
        }
        if (memchr(d + start, 0, len)) {
            what = "is a string with a NUL byte";
            goto bad;
        }
        break;
    case FERRY_FT_STRUCT:
        if (!check_fieldset(t, id, d, start, vend, depth + 1, errp)) {
            return false;
        }
        break;
    case FERRY_FT_LIST: {
        if (len < 4) {
            what = "is a list without its count";
            goto bad;
        }
        uint32_t count = ferry__get_be32(d + start);
        uint16_t elem = t->first_child[id];
        if (count > 0 && elem == NONE) {
            what = "is a list with elements but no element descriptor";
            goto bad;
        }
        size_t p = start + 4;
        /* Every element takes at least one byte, so this loop ends within the extent whatever the count says. */
        for (uint32_t i = 0; i < count; i++) {
            if (p >= vend) {
                what = "is a list with fewer elements than its count";
                goto bad;
            }
            if (!check_value(t, elem, d, p, vend, depth + 1, &p, errp)) {
                return false;
            }
        }
        if (p != vend) {
            what = "is a list with bytes after its last element";
            goto bad;
        }
        break;
    }
    default:
        break; /* a length-prefixed type this version does not know: opaque */
    }
    *next = vend;
    return true;

bad: {
    char *path = desc_path(s, id);
    ferry_error_setg(errp, "section data: field '%s' (%s) at offset %zu %s", path, ferry__field_type_name(type), pos,
                     what);
    free(path);
    return false;
}
}

static bool check_fieldset(Tree *t, uint16_t parent, const uint8_t *d, size_t pos, size_t end, unsigned depth,
                           FerryError **errp)
{
    const FerrySchema *s = t->s;
    uint32_t mine = ++t->next_stamp;
    while (pos < end) {
        if (end - pos < 2) {
            ferry_error_setg(errp, "section data: field id at offset %zu is truncated", pos);
            return false;
        }
        uint16_t id = ferry__get_be16(d + pos);
        if (id >= s->n || s->fields[id].parent != parent) {
            char *ppath = parent == NONE ? ferry__xstrdup("the top level") : desc_path(s, parent);
            ferry_error_setg(errp, "section data: field id %u at offset %zu is not a field of %s%s%s", id, pos,
                             parent == NONE ? "" : "'", ppath, parent == NONE ? "" : "'");
            free(ppath);
            return false;
        }
        if (t->stamp[id] == mine) {
            char *path = desc_path(s, id);
            ferry_error_setg(errp, "section data: field '%s' occurs twice in one struct (offset %zu)", path, pos);
            free(path);
            return false;
        }
        t->stamp[id] = mine;
        if (!check_value(t, id, d, pos + 2, end, depth, &pos, errp)) {
            return false;
        }
    }
    return true;
}

/* ---- The input visitor ---- */

typedef struct InEntry {
    uint16_t id;
    bool visited;
    size_t off; /* of the field id */
    size_t end; /* after the value */
} InEntry;

typedef struct InFrame {
    bool is_list;
    bool phantom;     /* a missing struct/list taken with DEFAULT: everything inside keeps its value */
    uint16_t desc;    /* NONE at the top level */
    char *path;       /* "" at the top level */
    InEntry *entries; /* struct/top */
    size_t n_entries;
    uint16_t elem;    /* list: element descriptor */
    uint32_t count, next;
    size_t pos, end;  /* list: next element, end of extent */
} InFrame;

typedef struct InVisitor {
    FerryVisitor base;
    Tree tree;
    const uint8_t *data;
    size_t len;
    InFrame *frames;
    size_t depth, cap;
    uint64_t skipped;
} InVisitor;

static InFrame *push(InVisitor *iv)
{
    if (iv->depth + 1 >= iv->cap) {
        iv->cap = iv->cap ? iv->cap * 2 : 8;
        iv->frames = ferry__xrealloc(iv->frames, iv->cap * sizeof(*iv->frames));
    }
    InFrame *fr = &iv->frames[++iv->depth];
    memset(fr, 0, sizeof(*fr));
    return fr;
}

/* Index the fieldset [pos, end) of validated data. */
static void index_fieldset(InVisitor *iv, InFrame *fr, size_t pos, size_t end)
{
    size_t cap = 0;
    while (pos < end) {
        uint16_t id = ferry__get_be16(iv->data + pos);
        size_t vend = pos + 2 + value_size(iv->tree.s->fields[id].type, iv->data + pos + 2);
        if (fr->n_entries == cap) {
            cap = cap ? cap * 2 : 8;
            fr->entries = ferry__xrealloc(fr->entries, cap * sizeof(*fr->entries));
        }
        fr->entries[fr->n_entries++] = (InEntry){ .id = id, .off = pos, .end = vend };
        pos = vend;
    }
}

static char *child_path(const InFrame *fr, const char *name)
{
    return ferry__xasprintf("%s%s%s", fr->path, *fr->path ? "." : "", name);
}

/* The field @name in the current frame: its entry (NULL in a list or when missing). */
static InEntry *lookup(InVisitor *iv, InFrame *fr, const char *name)
{
    const FerrySchema *s = iv->tree.s;
    uint16_t c = tree_children(&iv->tree, fr->desc);
    for (; c != NONE; c = iv->tree.next_sibling[c]) {
        if (strcmp(s->fields[c].name, name) == 0) {
            break;
        }
    }
    if (c == NONE) {
        return NULL;
    }
    for (size_t i = 0; i < fr->n_entries; i++) {
        if (fr->entries[i].id == c) {
            return &fr->entries[i];
        }
    }
    return NULL;
}

typedef enum { FOUND, MISSING_DEFAULT, FAILED } Found;

/*
 * Locate the value of the field visited now. FOUND: *type, *val (offset of the value) and *path are set (the caller
 * frees *path). MISSING_DEFAULT: the visit succeeds without touching the value. FAILED: *errp is set.
 */
static Found locate(InVisitor *iv, const char *name, unsigned attrs, uint16_t *id, uint8_t *type, size_t *val,
                    char **path, FerryError **errp)
{
    InFrame *fr = &iv->frames[iv->depth];
    if (fr->phantom) {
        return MISSING_DEFAULT;
    }
    if (fr->is_list) {
        if (fr->next >= fr->count) {
            ferry_error_setg(errp, "list '%s': more elements visited than the %" PRIu32 " in the stream", fr->path,
                             fr->count);
            return FAILED;
        }
        *id = fr->elem;
        *type = iv->tree.s->fields[fr->elem].type;
        *val = fr->pos;
        *path = ferry__xasprintf("%s[%" PRIu32 "]", fr->path, fr->next);
        fr->pos += value_size(*type, iv->data + fr->pos);
        fr->next++;
        return FOUND;
    }
    InEntry *e = lookup(iv, fr, name ? name : "");
    if (!e) {
        if (attrs & FERRY_FIELD_DEFAULT) {
            return MISSING_DEFAULT;
        }
        char *p = child_path(fr, name ? name : "");
        ferry_error_setg(errp, "field '%s' is missing from the stream and has no default", p);
        free(p);
        return FAILED;
    }
    e->visited = true;
    *id = e->id;
    *type = iv->tree.s->fields[e->id].type;
    *val = e->off + 2;
    *path = child_path(fr, name);
    return FOUND;
}

static bool type_mismatch(const char *path, uint8_t stream, uint8_t want, FerryError **errp)
{
    ferry_error_setg(errp, "field '%s' is %s in the stream, this program reads %s", path,
                     ferry__field_type_name(stream), ferry__field_type_name(want));
    return false;
}

static bool read_int(const char *path, uint8_t st, const uint8_t *p, uint8_t want, void *val, FerryError **errp)
{
    uint64_t u = 0;
    bool neg = false;
    switch (st) {
    case FERRY_FT_U8:
        u = p[0];
        break;
    case FERRY_FT_U16:
        u = ferry__get_be16(p);
        break;
    case FERRY_FT_U32:
        u = ferry__get_be32(p);
        break;
    default:
        u = ferry__get_be64(p);
        neg = st == FERRY_FT_I64 && (int64_t)u < 0;
        break;
    }
    uint64_t max = want == FERRY_FT_U8 ? UINT8_MAX
                 : want == FERRY_FT_U16 ? UINT16_MAX
                 : want == FERRY_FT_U32 ? UINT32_MAX
                 : want == FERRY_FT_U64 ? UINT64_MAX
                 : (uint64_t)INT64_MAX;
    if ((neg && want != FERRY_FT_I64) || (!neg && u > max)) {
        if (neg) {
            ferry_error_setg(errp, "field '%s': value %" PRId64 " in the stream does not fit %s", path, (int64_t)u,
                             ferry__field_type_name(want));
        } else {
            ferry_error_setg(errp, "field '%s': value %" PRIu64 " in the stream does not fit %s", path, u,
                             ferry__field_type_name(want));
        }
        return false;
    }
    switch (want) {
    case FERRY_FT_U8:
        *(uint8_t *)val = (uint8_t)u;
        break;
    case FERRY_FT_U16:
        *(uint16_t *)val = (uint16_t)u;
        break;
    case FERRY_FT_U32:
        *(uint32_t *)val = (uint32_t)u;
        break;
    case FERRY_FT_U64:
        *(uint64_t *)val = u;
        break;
    default:
        *(int64_t *)val = (int64_t)u;
        break;
    }
    return true;
}

static bool in_value(FerryVisitor *v, const char *name, unsigned attrs, uint8_t type, void *val, uint32_t len,
                     FerryError **errp)
{
    InVisitor *iv = (InVisitor *)v;
    uint16_t id = NONE;
    uint8_t st;
    size_t pos;
    char *path = NULL;
    Found f = locate(iv, name, attrs, &id, &st, &pos, &path, errp);
    if (f != FOUND) {
        return f == MISSING_DEFAULT;
    }
    const uint8_t *p = iv->data + pos;
    bool ok = true;
    if (is_int_type(type) && is_int_type(st)) {
        ok = read_int(path, st, p, type, val, errp);
    } else if (st != type) {
        ok = type_mismatch(path, st, type, errp);
    } else if (type == FERRY_FT_BOOL) {
        *(bool *)val = p[0] != 0;
    } else if (type == FERRY_FT_BYTES) {
        uint32_t n = ferry__get_be32(p);
        if (n != len) {
            ferry_error_setg(errp, "field '%s': the stream has %" PRIu32 " bytes, this program reads %" PRIu32,
                             path, n, len);
            ok = false;
        } else {
            memcpy(val, p + 4, n);
        }
    } else {
        uint32_t n = ferry__get_be32(p);
        char **s = val;
        free(*s);
        *s = ferry__xstrndup((const char *)p + 4, n);
    }
    free(path);
    return ok;
}

static bool in_start(InVisitor *iv, const char *name, unsigned attrs, bool is_list, uint32_t *count, uint32_t max,
                     FerryError **errp)
{
    uint8_t want = is_list ? FERRY_FT_LIST : FERRY_FT_STRUCT;
    uint16_t id = NONE;
    uint8_t st;
    size_t pos;
    char *path = NULL;
    Found f = locate(iv, name, attrs, &id, &st, &pos, &path, errp);
    if (f == FAILED) {
        return false;
    }
    if (f == FOUND && st != want) {
        type_mismatch(path, st, want, errp);
        free(path);
        return false;
    }
    if (f == FOUND && is_list && ferry__get_be32(iv->data + pos + 4) > max) {
        ferry_error_setg(errp, "list '%s' has %" PRIu32 " elements in the stream, this program accepts at most %" PRIu32,
                         path, ferry__get_be32(iv->data + pos + 4), max);
        free(path);
        return false;
    }
    if (f == MISSING_DEFAULT) {
        path = child_path(&iv->frames[iv->depth], name ? name : "");
    }
    /* push() may move the frames: nothing above may be used after it. */
    InFrame *fr = push(iv);
    fr->is_list = is_list;
    if (f == MISSING_DEFAULT) {
        fr->phantom = true;
        fr->path = path;
        return true;
    }
    fr->desc = id;
    fr->path = path;
    size_t extent = ferry__get_be32(iv->data + pos);
    if (is_list) {
        fr->count = ferry__get_be32(iv->data + pos + 4);
        *count = fr->count;
        fr->elem = iv->tree.first_child[id];
        fr->pos = pos + 8;
        fr->end = pos + 4 + extent;
    } else {
        index_fieldset(iv, fr, pos + 4, pos + 4 + extent);
    }
    return true;
}

static bool in_start_struct(FerryVisitor *v, const char *name, unsigned attrs, FerryError **errp)
{
    return in_start((InVisitor *)v, name, attrs, false, NULL, 0, errp);
}

static bool in_start_list(FerryVisitor *v, const char *name, unsigned attrs, uint32_t *count, uint32_t max,
                          FerryError **errp)
{
    return in_start((InVisitor *)v, name, attrs, true, count, max, errp);
}

/* Fields of @fr the device did not visit: counted when skippable, an error otherwise. */
static bool check_unvisited(InVisitor *iv, InFrame *fr, FerryError **errp)
{
    for (size_t i = 0; i < fr->n_entries; i++) {
        InEntry *e = &fr->entries[i];
        if (e->visited) {
            continue;
        }
        const FerrySchemaField *f = &iv->tree.s->fields[e->id];
        if (f->flags & FERRY_SCHEMA_SKIPPABLE) {
            iv->skipped += e->end - e->off;
            continue;
        }
        char *p = child_path(fr, f->name);
        ferry_error_setg(errp,
                         "field '%s' (%s) is not known to this program and the source did not mark it skippable", p,
                         ferry__field_type_name(f->type));
        free(p);
        return false;
    }
    return true;
}

static void frame_clear(InFrame *fr)
{
    free(fr->path);
    free(fr->entries);
    fr->path = NULL;
    fr->entries = NULL;
}

static bool in_end(InVisitor *iv, bool is_list, FerryError **errp)
{
    InFrame *fr = &iv->frames[iv->depth];
    if (iv->depth == 0 || fr->is_list != is_list) {
        ferry_error_setg(errp, "end of a %s without a matching start", is_list ? "list" : "struct");
        return false;
    }
    if (!fr->phantom) {
        if (is_list && fr->next != fr->count) {
            ferry_error_setg(errp, "list '%s': %" PRIu32 " of the %" PRIu32 " element(s) in the stream visited",
                             fr->path, fr->next, fr->count);
            return false;
        }
        if (!is_list && !check_unvisited(iv, fr, errp)) {
            return false;
        }
    }
    frame_clear(fr);
    iv->depth--;
    return true;
}

static bool in_end_struct(FerryVisitor *v, FerryError **errp)
{
    return in_end((InVisitor *)v, false, errp);
}

static bool in_end_list(FerryVisitor *v, FerryError **errp)
{
    return in_end((InVisitor *)v, true, errp);
}

static void in_optional(FerryVisitor *v, const char *name, bool *present)
{
    InVisitor *iv = (InVisitor *)v;
    InFrame *fr = &iv->frames[iv->depth];
    if (fr->phantom) {
        *present = false;
    } else if (fr->is_list) {
        *present = fr->next < fr->count;
    } else {
        *present = lookup(iv, fr, name ? name : "") != NULL;
    }
}

static void in_free(FerryVisitor *v)
{
    InVisitor *iv = (InVisitor *)v;
    for (size_t i = 0; i <= iv->depth; i++) {
        frame_clear(&iv->frames[i]);
    }
    free(iv->frames);
    tree_destroy(&iv->tree);
    free(iv);
}

static const VisitorOps in_ops = {
    .value = in_value,
    .start_struct = in_start_struct,
    .end_struct = in_end_struct,
    .start_list = in_start_list,
    .end_list = in_end_list,
    .optional = in_optional,
    .free = in_free,
};

FerryVisitor *ferry__visitor_input_new(const char *section, const FerrySchema *schema, const uint8_t *data,
                                       size_t len, FerryError **errp)
{
    InVisitor *iv = ferry__xcalloc(1, sizeof(*iv));
    iv->base.ops = &in_ops;
    iv->base.kind = FERRY_VISITOR_INPUT;
    iv->data = data;
    iv->len = len;
    tree_init(&iv->tree, schema);
    if (!check_fieldset(&iv->tree, NONE, data, 0, len, 0, errp)) {
        tree_destroy(&iv->tree);
        free(iv);
        return NULL;
    }
    iv->cap = 8;
    iv->frames = ferry__xcalloc(iv->cap, sizeof(*iv->frames));
    iv->frames[0].desc = NONE;
    iv->frames[0].path = ferry__xstrdup("");
    index_fieldset(iv, &iv->frames[0], 0, len);
    return &iv->base;
}

bool ferry__visitor_input_finish(FerryVisitor *v, FerryError **errp)
{
    InVisitor *iv = (InVisitor *)v;
    if (iv->depth != 0) {
        ferry_error_setg(errp, "%zu struct(s) or list(s) left open (innermost '%s')", iv->depth,
                         iv->frames[iv->depth].path);
        return false;
    }
    return check_unvisited(iv, &iv->frames[0], errp);
}

uint64_t ferry__visitor_input_skipped(const FerryVisitor *v)
{
    return ((const InVisitor *)v)->skipped;
}

/* ---- Decoding without device code ---- */

static json_t *json_fieldset(const Tree *t, const uint8_t *d, size_t pos, size_t end);

static json_t *json_value(const Tree *t, uint16_t id, const uint8_t *d, size_t pos)
{
    uint8_t type = t->s->fields[id].type;
    const uint8_t *p = d + pos;
    switch (type) {
    case FERRY_FT_U8:
        return json_integer(p[0]);
    case FERRY_FT_U16:
        return json_integer(ferry__get_be16(p));
    case FERRY_FT_U32:
        return json_integer(ferry__get_be32(p));
    case FERRY_FT_U64:
        return ferry__json_u64(ferry__get_be64(p));
    case FERRY_FT_I64:
        return json_integer((json_int_t)(int64_t)ferry__get_be64(p));
    case FERRY_FT_BOOL:
        return json_boolean(p[0]);
    case FERRY_FT_BYTES:
        return ferry__json_hex(p + 4, ferry__get_be32(p));
    case FERRY_FT_STR:
        return ferry__json_str((const char *)p + 4, ferry__get_be32(p));
    case FERRY_FT_STRUCT:
        return json_fieldset(t, d, pos + 4, pos + 4 + ferry__get_be32(p));
    case FERRY_FT_LIST: {
        json_t *arr = json_array();
        uint32_t count = ferry__get_be32(p + 4);
        uint16_t elem = t->first_child[id];
        size_t at = pos + 8;
        for (uint32_t i = 0; i < count; i++) {
            json_array_append_new(arr, json_value(t, elem, d, at));
            at += value_size(t->s->fields[elem].type, d + at);
        }
        return arr;
    }
    default:
        return json_pack("{s:s, s:o}", "type", ferry__field_type_name(type), "hex",
                         ferry__json_hex(p + 4, ferry__get_be32(p)));
    }
}

static json_t *json_fieldset(const Tree *t, const uint8_t *d, size_t pos, size_t end)
{
    json_t *obj = json_object();
    while (pos < end) {
        uint16_t id = ferry__get_be16(d + pos);
        json_object_set_new(obj, t->s->fields[id].name, json_value(t, id, d, pos + 2));
        pos += 2 + value_size(t->s->fields[id].type, d + pos + 2);
    }
    return obj;
}

json_t *ferry__section_data_to_json(const char *section, const FerrySchema *schema, const uint8_t *data, size_t len,
                                    FerryError **errp)
{
    Tree t;
    tree_init(&t, schema);
    json_t *res = NULL;
    if (check_fieldset(&t, NONE, data, 0, len, 0, errp)) {
        res = json_fieldset(&t, data, 0, len);
    }
    tree_destroy(&t);
    return res;
}
