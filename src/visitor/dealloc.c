/*
 * The dealloc visitor: run a section function over state an input visitor filled in, and every string is freed
 * and set to NULL. Nothing else is touched (a list's *count stays as it is, so that the device code walks the same
 * elements it allocated); every visit succeeds. It neither reads nor writes any stream.
 */
#include <stdlib.h>

#include "util/util.h"
#include "visitor/visitor-impl.h"

static bool dealloc_value(FerryVisitor *v, const char *name, unsigned attrs, uint8_t type, void *val, uint32_t len,
                          FerryError **errp)
{
    if (type == FERRY_FT_STR) {
        char **s = val;
        free(*s);
        *s = NULL;
    }
    return true;
}

static bool dealloc_start_struct(FerryVisitor *v, const char *name, unsigned attrs, FerryError **errp)
{
    return true;
}

static bool dealloc_end(FerryVisitor *v, FerryError **errp)
{
    return true;
}

static bool dealloc_start_list(FerryVisitor *v, const char *name, unsigned attrs, uint32_t *count, uint32_t max,
                               FerryError **errp)
{
    return true;
}

static void dealloc_free(FerryVisitor *v)
{
    free(v);
}

static const VisitorOps dealloc_ops = {
    .value = dealloc_value,
    .start_struct = dealloc_start_struct,
    .end_struct = dealloc_end,
    .start_list = dealloc_start_list,
    .end_list = dealloc_end,
    .free = dealloc_free,
};

FerryVisitor *ferry_visitor_dealloc_new(void)
{
    FerryVisitor *v = ferry__xcalloc(1, sizeof(*v));
    v->ops = &dealloc_ops;
    v->kind = FERRY_VISITOR_DEALLOC;
    return v;
}
