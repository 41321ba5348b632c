/*
 * Device state is saved and loaded by one function per section, written once against a visitor: the same code
 * runs with an output visitor on the source and an input visitor on the destination. Every call names its field,
 * so that later visitors (a JSON dump, a schema, a self-describing binary form) need no change in device code.
 * The binary encoding today is positional (see docs/stream-format.md); this header is the contract that stays.
 */
#ifndef FERRY_VISITOR_H
#define FERRY_VISITOR_H

#include "ferry/common.h"

typedef enum FerryVisitorKind {
    FERRY_VISITOR_OUTPUT, /* reading the program's state into the stream (save) */
    FERRY_VISITOR_INPUT,  /* writing state from the stream into the program (load) */
} FerryVisitorKind;

FERRY_API FerryVisitorKind ferry_visitor_kind(const FerryVisitor *v);

FERRY_API bool ferry_visit_start_struct(FerryVisitor *v, const char *name, FerryError **errp);
FERRY_API bool ferry_visit_end_struct(FerryVisitor *v, FerryError **errp);
/* A list: on output *count is the number of elements that follow; on input it is set from the stream and must not
 * exceed @max (a bound the device knows), so that no allocation is sized by an unchecked length. */
FERRY_API bool ferry_visit_start_list(FerryVisitor *v, const char *name, uint32_t *count, uint32_t max,
                                      FerryError **errp);
FERRY_API bool ferry_visit_end_list(FerryVisitor *v, FerryError **errp);

FERRY_API bool ferry_visit_u8(FerryVisitor *v, const char *name, uint8_t *val, FerryError **errp);
FERRY_API bool ferry_visit_u16(FerryVisitor *v, const char *name, uint16_t *val, FerryError **errp);
FERRY_API bool ferry_visit_u32(FerryVisitor *v, const char *name, uint32_t *val, FerryError **errp);
FERRY_API bool ferry_visit_u64(FerryVisitor *v, const char *name, uint64_t *val, FerryError **errp);
FERRY_API bool ferry_visit_i64(FerryVisitor *v, const char *name, int64_t *val, FerryError **errp);
FERRY_API bool ferry_visit_bool(FerryVisitor *v, const char *name, bool *val, FerryError **errp);
/* Exactly @len bytes; on input the stream must hold exactly @len. */
FERRY_API bool ferry_visit_bytes(FerryVisitor *v, const char *name, void *buf, uint32_t len, FerryError **errp);
/* A NUL-terminated string. On input *str is replaced by a malloc'd string (the old pointer is freed). */
FERRY_API bool ferry_visit_str(FerryVisitor *v, const char *name, char **str, FerryError **errp);

/* A section's save/load function: the same function does both, according to ferry_visitor_kind(v). */
typedef bool (*FerrySectionFn)(FerryVisitor *v, void *opaque, uint32_t version, FerryError **errp);

/*
 * Register a device state section. @name + @instance_id identify it on both sides; @version is what this side
 * writes; on load the function is called with the version found in the stream and must refuse versions it cannot
 * read. Sections are saved with the workload stopped and loaded on the destination only after the whole stream
 * has been received and checked.
 */
FERRY_API bool ferry_migration_register_section(FerryMigration *m, const char *name, uint32_t instance_id,
                                                uint32_t version, FerrySectionFn fn, void *opaque,
                                                FerryError **errp);

#endif
