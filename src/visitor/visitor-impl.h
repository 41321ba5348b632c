/*
 * What every visitor implementation shares and the public API does not see: the common header at the start of
 * every struct FerryVisitor, the ops table through which visitor.c dispatches the public ferry_visit_* calls, and
 * the JSON value builders that both the JSON visitor and ferry__section_data_to_json use (so that the two produce
 * identical JSON for the same state). Device code never includes this.
 */
#ifndef FERRY_VISITOR_IMPL_H
#define FERRY_VISITOR_IMPL_H

#include <stdbool.h>
#include <stdint.h>

#include <jansson.h>

#include "visitor/visitor-int.h"

/*
 * One entry point per kind of visit. Scalars go through one function: @type is a FerryFieldType (u8..str) and
 * @val points to a value of the matching C type (uint8_t, ..., bool, a buffer of @len bytes for bytes, char ** for
 * str). @attrs are the FERRY_FIELD_* attributes of this field (visitor.c has already cleared the pending ones).
 */
typedef struct VisitorOps {
    bool (*value)(FerryVisitor *v, const char *name, unsigned attrs, uint8_t type, void *val, uint32_t len,
                  FerryError **errp);
    bool (*start_struct)(FerryVisitor *v, const char *name, unsigned attrs, FerryError **errp);
    bool (*end_struct)(FerryVisitor *v, FerryError **errp);
    bool (*start_list)(FerryVisitor *v, const char *name, unsigned attrs, uint32_t *count, uint32_t max,
                       FerryError **errp);
    bool (*end_list)(FerryVisitor *v, FerryError **errp);
    void (*optional)(FerryVisitor *v, const char *name, bool *present); /* NULL: nothing to do */
    void (*free)(FerryVisitor *v); /* frees the whole visitor */
} VisitorOps;

/* The first member of every visitor's own struct. */
struct FerryVisitor {
    const VisitorOps *ops;
    FerryVisitorKind kind;
    unsigned pending_attrs; /* set by ferry_visit_attrs, consumed by the next value, struct or list */
};

/* JSON forms of values shared by json.c and the section decoder in binary-in.c. */
json_t *ferry__json_u64(uint64_t v);                     /* a number, or a decimal string above INT64_MAX */
json_t *ferry__json_str(const char *s, size_t len);      /* invalid UTF-8 replaced by U+FFFD */
json_t *ferry__json_hex(const uint8_t *p, size_t len);   /* lowercase hex string */

#endif
