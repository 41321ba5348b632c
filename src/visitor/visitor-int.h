/*
 * Visitors, internal side: the schema of a section (FerrySchema, the table of its field descriptors) and the
 * binary visitors that write and read the self-describing section encoding of docs/stream-format.md ("Device
 * state"). The public ferry_visit_* functions dispatch through an ops table in visitor.c; each visitor lives in its
 * own file (binary-out.c, binary-in.c, json.c, dealloc.c) and schema.c holds the descriptor table, its wire form
 * and its JSON form. None of this touches a stream or a channel: it works on memory buffers, and the migration
 * layer puts them in records.
 */
#ifndef FERRY_VISITOR_INT_H
#define FERRY_VISITOR_INT_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "ferry/visitor.h"

/* Field types on the wire. Codes 64..255 are reserved for later types whose value is length-prefixed (be32 length,
 * then that many bytes), so that a reader can skip a field of a type it does not know; 11..63 are invalid. */
typedef enum FerryFieldType {
    FERRY_FT_U8 = 1,
    FERRY_FT_U16 = 2,
    FERRY_FT_U32 = 3,
    FERRY_FT_U64 = 4,
    FERRY_FT_I64 = 5,
    FERRY_FT_BOOL = 6,
    FERRY_FT_BYTES = 7,
    FERRY_FT_STR = 8,
    FERRY_FT_STRUCT = 9,
    FERRY_FT_LIST = 10,
    FERRY_FT_LAST_KNOWN = 10,
    FERRY_FT_FIRST_LENGTH_PREFIXED = 64,
} FerryFieldType;

/* Descriptor flags (the first two are the FERRY_FIELD_* attributes, same bits). */
#define FERRY_SCHEMA_SKIPPABLE 0x01u
#define FERRY_SCHEMA_DEFAULT 0x02u
#define FERRY_SCHEMA_OPTIONAL 0x04u /* visited through ferry_visit_optional: some saves may not carry it */
#define FERRY_SCHEMA_FLAGS_KNOWN 0x07u /* other bits: a reader ignores them (they are hints, never needed to decode) */

#define FERRY_SCHEMA_NO_PARENT 0xffffu /* parent of a top-level field */
#define FERRY_SCHEMA_MAX_FIELDS 4096u  /* descriptors in one section */
#define FERRY_SCHEMA_MAX_DEPTH 32u     /* structs and lists nested in one another */
#define FERRY_VISIT_MAX_STR (1u << 20) /* bytes in one string */
#define FERRY_VISIT_MAX_BYTES (16u << 20) /* bytes in one byte buffer */

/*
 * One descriptor: a field of a struct (or the top level), or the element of a list (a list has at most one child
 * descriptor, none if every save so far had it empty). Descriptors are in pre-order: a parent comes before its
 * children, and a field's id is its index.
 */
typedef struct FerrySchemaField {
    uint16_t parent; /* index of the enclosing struct/list descriptor, or FERRY_SCHEMA_NO_PARENT */
    uint8_t type;    /* FerryFieldType */
    uint8_t flags;   /* FERRY_SCHEMA_* */
    char *name;      /* 1..255 bytes, each 0x21..0x7e */
} FerrySchemaField;

typedef struct FerrySchema {
    FerrySchemaField *fields;
    size_t n;
} FerrySchema;

void ferry__schema_free(FerrySchema *s); /* NULL is a no-op */
/* "u8", "u16", "u32", "u64", "i64", "bool", "bytes", "str", "struct", "list", or "type-N" */
const char *ferry__field_type_name(uint8_t type);
/*
 * Wire form: count (be16), then per descriptor: parent (be16), type (u8), flags (u8), name length (u8), name.
 * encode writes exactly ferry__schema_encoded_len() bytes.
 */
size_t ferry__schema_encoded_len(const FerrySchema *s);
void ferry__schema_encode(const FerrySchema *s, uint8_t *out);
/*
 * Parse and check a wire schema: bounds, at most FERRY_SCHEMA_MAX_FIELDS, parents before children and of type
 * struct or list, at most one child per list, sibling names unique, names valid, depth at most
 * FERRY_SCHEMA_MAX_DEPTH, types known or length-prefixed (64..255). NULL with an error naming the descriptor.
 */
FerrySchema *ferry__schema_decode(const uint8_t *p, size_t len, FerryError **errp);
/*
 * JSON form: an array of the top-level fields, each {"name", "type"} plus "fields" (an array, for a struct),
 * "element" (an object, for a list with a known element), and "skippable"/"default"/"optional": true when set.
 */
json_t *ferry__schema_to_json(const FerrySchema *s);
/* One section's schema as ferry_migration_schema() and ferry-analyze print it: {"name", "instance-id", "version",
 * "skippable": bool, "optional": bool (the FERRY_SECTION_* flags), "fields": ferry__schema_to_json()}. */
json_t *ferry__section_schema_json(const char *name, uint32_t instance_id, uint32_t version, uint32_t flags,
                                   const FerrySchema *s);

/*
 * The binary output visitor: runs a section function in save mode and builds the section's schema and its data
 * together (a descriptor is added the first time a field is visited). Errors: a field visited twice in one
 * struct, a list element of another type than the first, an invalid name, too many descriptors, too deep.
 */
FerryVisitor *ferry__visitor_output_new(void);
/* After the section function returned true: checks that structs and lists are balanced, then hands out the
 * schema and the data (both owned by the caller) and leaves @v empty; free it with ferry_visitor_free(). */
bool ferry__visitor_output_finish(FerryVisitor *v, FerrySchema **schema, uint8_t **data, size_t *len,
                                  FerryError **errp);

/*
 * The binary input visitor, over @data described by @schema (both borrowed: they must outlive the visitor).
 * It checks the whole encoding against the schema first (every extent inside its parent, every field id a child
 * of its enclosing descriptor, no field twice in one struct, list counts and lengths consistent, bool 0 or 1,
 * strings without NUL and within bounds) and returns NULL with an error if anything is wrong, so that device code
 * only ever sees well-formed data. @section is used in error messages only. Errors from visits name the field by
 * its path ("workload.workers[2].cursor").
 */
FerryVisitor *ferry__visitor_input_new(const char *section, const FerrySchema *schema, const uint8_t *data,
                                       size_t len, FerryError **errp);
/*
 * After the section function returned true: fails if structs or lists are unbalanced, or if a field the device
 * code did not visit is not skippable ("field 'a.b' (u32) is not known to this program and the source did not
 * mark it skippable"). Skippable fields not visited are counted in ferry__visitor_input_skipped().
 */
bool ferry__visitor_input_finish(FerryVisitor *v, FerryError **errp);
uint64_t ferry__visitor_input_skipped(const FerryVisitor *v); /* bytes of skipped fields (id + value) */

/*
 * Decode section data with its schema alone, no device code: the same checks as ferry__visitor_input_new, and
 * the same JSON as the JSON visitor would have produced from the device (an object of the top-level fields;
 * fields of a length-prefixed unknown type appear as {"type": "type-N", "hex": "..."}). For tools.
 */
json_t *ferry__section_data_to_json(const char *section, const FerrySchema *schema, const uint8_t *data, size_t len,
                                    FerryError **errp);

#endif
