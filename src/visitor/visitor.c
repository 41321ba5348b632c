/*
 * The public visitor API: each ferry_visit_* call hands the pending attributes to the visitor that runs (through
 * its ops table) and clears them, so that attributes always apply to exactly one field. No visitor logic lives
 * here; each visitor is in its own file.
 */
#include <stdlib.h>

#include "visitor/visitor-impl.h"

FerryVisitorKind ferry_visitor_kind(const FerryVisitor *v)
{
    return v->kind;
}

void ferry_visit_attrs(FerryVisitor *v, unsigned attrs)
{
    v->pending_attrs = attrs;
}

/* The attributes of the field being visited now: they are consumed whether or not the visit succeeds. */
static unsigned take_attrs(FerryVisitor *v)
{
    unsigned a = v->pending_attrs;
    v->pending_attrs = 0;
    return a;
}

void ferry_visit_optional(FerryVisitor *v, const char *name, bool *present)
{
    if (v->ops->optional) {
        v->ops->optional(v, name, present);
    }
}

bool ferry_visit_start_struct(FerryVisitor *v, const char *name, FerryError **errp)
{
    return v->ops->start_struct(v, name, take_attrs(v), errp);
}

bool ferry_visit_end_struct(FerryVisitor *v, FerryError **errp)
{
    return v->ops->end_struct(v, errp);
}

bool ferry_visit_start_list(FerryVisitor *v, const char *name, uint32_t *count, uint32_t max, FerryError **errp)
{
    return v->ops->start_list(v, name, take_attrs(v), count, max, errp);
}

bool ferry_visit_end_list(FerryVisitor *v, FerryError **errp)
{
    return v->ops->end_list(v, errp);
}

static bool visit_value(FerryVisitor *v, const char *name, uint8_t type, void *val, uint32_t len, FerryError **errp)
{
    return v->ops->value(v, name, take_attrs(v), type, val, len, errp);
}

bool ferry_visit_u8(FerryVisitor *v, const char *name, uint8_t *val, FerryError **errp)
{
    return visit_value(v, name, FERRY_FT_U8, val, 0, errp);
}

bool ferry_visit_u16(FerryVisitor *v, const char *name, uint16_t *val, FerryError **errp)
{
    return visit_value(v, name, FERRY_FT_U16, val, 0, errp);
}

bool ferry_visit_u32(FerryVisitor *v, const char *name, uint32_t *val, FerryError **errp)
{
    return visit_value(v, name, FERRY_FT_U32, val, 0, errp);
}

bool ferry_visit_u64(FerryVisitor *v, const char *name, uint64_t *val, FerryError **errp)
{
    return visit_value(v, name, FERRY_FT_U64, val, 0, errp);
}

bool ferry_visit_i64(FerryVisitor *v, const char *name, int64_t *val, FerryError **errp)
{
    return visit_value(v, name, FERRY_FT_I64, val, 0, errp);
}

bool ferry_visit_bool(FerryVisitor *v, const char *name, bool *val, FerryError **errp)
{
    return visit_value(v, name, FERRY_FT_BOOL, val, 0, errp);
}

bool ferry_visit_bytes(FerryVisitor *v, const char *name, void *buf, uint32_t len, FerryError **errp)
{
    return visit_value(v, name, FERRY_FT_BYTES, buf, len, errp);
}

bool ferry_visit_str(FerryVisitor *v, const char *name, char **str, FerryError **errp)
{
    return visit_value(v, name, FERRY_FT_STR, str, 0, errp);
}

void ferry_visitor_free(FerryVisitor *v)
{
    if (v) {
        v->ops->free(v);
    }
}
