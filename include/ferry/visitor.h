/*
 * Device state is saved and loaded by one function per section, written once against a visitor: the same code
 * runs with an output visitor on the source, an input visitor on the destination, a JSON visitor to dump state
 * for people, a schema visitor to describe it, and a dealloc visitor to free what an input visitor allocated.
 * Every call names its field. The stream encoding is self-describing (docs/stream-format.md): fields are found by
 * name, not position, so a destination can skip fields it does not know (when the source marked them skippable),
 * take a default for fields the source did not send, and name the section and field in every error.
 *
 * This header is the contract device code sees; which visitor runs is the engine's choice.
 */
#ifndef FERRY_VISITOR_H
#define FERRY_VISITOR_H

#include <jansson.h>

#include "ferry/common.h"

typedef enum FerryVisitorKind {
    FERRY_VISITOR_OUTPUT,  /* reading the program's state (save, JSON dump, schema): values are only read */
    FERRY_VISITOR_INPUT,   /* writing state from the stream into the program (load) */
    FERRY_VISITOR_DEALLOC, /* freeing what an input visitor allocated: strings are freed and set to NULL */
} FerryVisitorKind;

FERRY_API FerryVisitorKind ferry_visitor_kind(const FerryVisitor *v);

/*
 * Attributes of the next field visited (a value, struct or list); they apply to that one field and are then
 * cleared. They travel in the stream's schema, so they are the writer's promise to every reader:
 *   SKIPPABLE: a destination whose device code does not visit this field may ignore it. Without it, a destination
 *              that finds the field and does not know it fails, naming the section and the field.
 *   DEFAULT:   on input, if the stream does not carry the field, the visit succeeds and leaves the value as the
 *              caller set it before the call (its default). Without it, a missing field is an error.
 */
#define FERRY_FIELD_SKIPPABLE 0x1u
#define FERRY_FIELD_DEFAULT 0x2u
FERRY_API void ferry_visit_attrs(FerryVisitor *v, unsigned attrs);

/*
 * An optional field, QEMU style: on output the caller sets *present and visits the field (named @name) only if it
 * is; on input *present is set to whether the stream carries a field of that name, and the caller visits it only
 * if so. Visitors other than input leave *present as it is.
 */
FERRY_API void ferry_visit_optional(FerryVisitor *v, const char *name, bool *present);

FERRY_API bool ferry_visit_start_struct(FerryVisitor *v, const char *name, FerryError **errp);
FERRY_API bool ferry_visit_end_struct(FerryVisitor *v, FerryError **errp);
/*
 * A list: on output *count is the number of elements that follow; on input it is set from the stream and must not
 * exceed @max (a bound the device knows), so that no allocation is sized by an unchecked length. Elements are
 * visited in order, each with the same name and type (structs in a list may differ in their optional fields).
 */
FERRY_API bool ferry_visit_start_list(FerryVisitor *v, const char *name, uint32_t *count, uint32_t max,
                                      FerryError **errp);
FERRY_API bool ferry_visit_end_list(FerryVisitor *v, FerryError **errp);

/*
 * Integers. On input an integer field of another width or signedness is accepted when its value fits (a field
 * widened from u32 to u64 between versions loads); a value that does not fit, or a field of a non-integer type,
 * is an error naming the field and both types.
 */
FERRY_API bool ferry_visit_u8(FerryVisitor *v, const char *name, uint8_t *val, FerryError **errp);
FERRY_API bool ferry_visit_u16(FerryVisitor *v, const char *name, uint16_t *val, FerryError **errp);
FERRY_API bool ferry_visit_u32(FerryVisitor *v, const char *name, uint32_t *val, FerryError **errp);
FERRY_API bool ferry_visit_u64(FerryVisitor *v, const char *name, uint64_t *val, FerryError **errp);
FERRY_API bool ferry_visit_i64(FerryVisitor *v, const char *name, int64_t *val, FerryError **errp);
FERRY_API bool ferry_visit_bool(FerryVisitor *v, const char *name, bool *val, FerryError **errp);
/* Exactly @len bytes; on input the stream must hold exactly @len. */
FERRY_API bool ferry_visit_bytes(FerryVisitor *v, const char *name, void *buf, uint32_t len, FerryError **errp);
/* A NUL-terminated string (at most 1 MiB). On input *str is replaced by a malloc'd string (the old one is freed);
 * the dealloc visitor frees *str and sets it to NULL. On output NULL is written as "". */
FERRY_API bool ferry_visit_str(FerryVisitor *v, const char *name, char **str, FerryError **errp);

/*
 * Visitors a program can run itself, for its own structures (the engine creates the binary ones).
 * JSON: objects for structs, arrays for lists, numbers for integers (a u64 above 2^63-1 is written as a decimal
 * string, since JSON numbers are doubles for many readers and jansson's are int64), true/false, strings (bytes
 * not valid UTF-8 replaced by U+FFFD), byte buffers as lowercase hex strings. The result is an object of the
 * fields visited at the top level.
 */
FERRY_API FerryVisitor *ferry_visitor_json_new(void);
/* The result so far (new reference): {} if nothing was visited. */
FERRY_API json_t *ferry_visitor_json_result(FerryVisitor *v);
FERRY_API FerryVisitor *ferry_visitor_dealloc_new(void);
FERRY_API void ferry_visitor_free(FerryVisitor *v); /* any visitor; NULL is a no-op */

/* A section's save/load function: the same function does both, according to ferry_visitor_kind(v). */
typedef bool (*FerrySectionFn)(FerryVisitor *v, void *opaque, uint32_t version, FerryError **errp);

/* Section flags. */
#define FERRY_SECTION_SKIPPABLE 0x1u /* a destination that has no such section may skip it (else it must fail) */
#define FERRY_SECTION_OPTIONAL 0x2u  /* a destination accepts a stream without this section; it keeps its state */

typedef struct FerrySectionInfo {
    const char *name;     /* at most 255 bytes */
    uint32_t instance_id;
    uint32_t version;     /* what this side writes; on load fn gets the stream's */
    uint32_t flags;       /* FERRY_SECTION_* */
    FerrySectionFn fn;
    void *opaque;
} FerrySectionInfo;

/*
 * Register a device state section. @name + @instance_id identify it on both sides; on load the function is
 * called with the version found in the stream and may refuse versions it cannot read (with self-describing fields
 * most changes need no version check). Sections are saved with the workload stopped and loaded on the destination
 * only after the whole stream has been received and checked.
 */
FERRY_API bool ferry_migration_add_section(FerryMigration *m, const FerrySectionInfo *info, FerryError **errp);
/* The same with flags 0. */
FERRY_API bool ferry_migration_register_section(FerryMigration *m, const char *name, uint32_t instance_id,
                                                uint32_t version, FerrySectionFn fn, void *opaque,
                                                FerryError **errp);

/*
 * The schema of every registered section, as a JSON array with one object per section (docs/stream-format.md
 * shows it): each section is run with the schema visitor against the program's current state, so a list's
 * element type is known once the list has an element. New reference, or NULL with *errp set if a section
 * function failed. Call it with the workload stopped, as the engine saves.
 */
FERRY_API json_t *ferry_migration_schema(FerryMigration *m, FerryError **errp);

#endif
