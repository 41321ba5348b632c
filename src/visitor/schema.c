/*
 * The schema of a section: its table of field descriptors, the wire form that precedes the section's data in a
 * SECTION record, the checks a reader applies to a schema it received, and the JSON forms that
 * ferry_migration_schema() and ferry-analyze print. It knows nothing of section data (binary-in.c and
 * binary-out.c) or of records (the migration layer).
 */
#include <stdlib.h>
#include <string.h>

#include "util/util.h"
#include "visitor/visitor-impl.h"
#include "wire/wire.h"

/* Every code has a printable name, so that an error can always name what it found ("type-64" for a code this
 * version does not know). A static table keeps the returned strings valid forever and the function thread-safe. */
static const char *const type_names[256] = {
    "type-0", "u8", "u16", "u32", "u64", "i64", "bool", "bytes", "str", "struct",
    "list", "type-11", "type-12", "type-13", "type-14", "type-15", "type-16", "type-17", "type-18", "type-19",
    "type-20", "type-21", "type-22", "type-23", "type-24", "type-25", "type-26", "type-27", "type-28", "type-29",
    "type-30", "type-31", "type-32", "type-33", "type-34", "type-35", "type-36", "type-37", "type-38", "type-39",
    "type-40", "type-41", "type-42", "type-43", "type-44", "type-45", "type-46", "type-47", "type-48", "type-49",
    "type-50", "type-51", "type-52", "type-53", "type-54", "type-55", "type-56", "type-57", "type-58", "type-59",
    "type-60", "type-61", "type-62", "type-63", "type-64", "type-65", "type-66", "type-67", "type-68", "type-69",
    "type-70", "type-71", "type-72", "type-73", "type-74", "type-75", "type-76", "type-77", "type-78", "type-79",
    "type-80", "type-81", "type-82", "type-83", "type-84", "type-85", "type-86", "type-87", "type-88", "type-89",
    "type-90", "type-91", "type-92", "type-93", "type-94", "type-95", "type-96", "type-97", "type-98", "type-99",
    "type-100", "type-101", "type-102", "type-103", "type-104", "type-105", "type-106", "type-107", "type-108", "type-109",
    "type-110", "type-111", "type-112", "type-113", "type-114", "type-115", "type-116", "type-117", "type-118", "type-119",
    "type-120", "type-121", "type-122", "type-123", "type-124", "type-125", "type-126", "type-127", "type-128", "type-129",
    "type-130", "type-131", "type-132", "type-133", "type-134", "type-135", "type-136", "type-137", "type-138", "type-139",
    "type-140", "type-141", "type-142", "type-143", "type-144", "type-145", "type-146", "type-147", "type-148", "type-149",
    "type-150", "type-151", "type-152", "type-153", "type-154", "type-155", "type-156", "type-157", "type-158", "type-159",
    "type-160", "type-161", "type-162", "type-163", "type-164", "type-165", "type-166", "type-167", "type-168", "type-169",
    "type-170", "type-171", "type-172", "type-173", "type-174", "type-175", "type-176", "type-177", "type-178", "type-179",
    "type-180", "type-181", "type-182", "type-183", "type-184", "type-185", "type-186", "type-187", "type-188", "type-189",
    "type-190", "type-191", "type-192", "type-193", "type-194", "type-195", "type-196", "type-197", "type-198", "type-199",
    "type-200", "type-201", "type-202", "type-203", "type-204", "type-205", "type-206", "type-207", "type-208", "type-209",
    "type-210", "type-211", "type-212", "type-213", "type-214", "type-215", "type-216", "type-217", "type-218", "type-219",
    "type-220", "type-221", "type-222", "type-223", "type-224", "type-225", "type-226", "type-227", "type-228", "type-229",
    "type-230", "type-231", "type-232", "type-233", "type-234", "type-235", "type-236", "type-237", "type-238", "type-239",
    "type-240", "type-241", "type-242", "type-243", "type-244", "type-245", "type-246", "type-247", "type-248", "type-249",
    "type-250", "type-251", "type-252", "type-253", "type-254", "type-255",
};

const char *ferry__field_type_name(uint8_t type)
{
    return type_names[type];
}

void ferry__schema_free(FerrySchema *s)
{
    if (!s) {
        return;
    }
    for (size_t i = 0; i < s->n; i++) {
        free(s->fields[i].name);
    }
    free(s->fields);
    free(s);
}

size_t ferry__schema_encoded_len(const FerrySchema *s)
{
    size_t len = 2;
    for (size_t i = 0; i < s->n; i++) {
        len += 5 + strlen(s->fields[i].name);
    }
    return len;
}

void ferry__schema_encode(const FerrySchema *s, uint8_t *out)
{
    ferry__put_be16(out, (uint16_t)s->n);
    out += 2;
    for (size_t i = 0; i < s->n; i++) {
        const FerrySchemaField *f = &s->fields[i];
        size_t nlen = strlen(f->name);
        ferry__put_be16(out, f->parent);
        out[2] = f->type;
        out[3] = f->flags;
        out[4] = (uint8_t)nlen;
        memcpy(out + 5, f->name, nlen);
        out += 5 + nlen;
    }
}

static bool name_valid(const uint8_t *p, size_t len)
{
    if (len < 1 || len > 255) {
        return false;
    }
    for (size_t i = 0; i < len; i++) {
        if (p[i] < 0x21 || p[i] > 0x7e) {
            return false;
        }
    }
    return true;
}

static bool type_valid(uint8_t type)
{
    return (type >= FERRY_FT_U8 && type <= FERRY_FT_LAST_KNOWN) || type >= FERRY_FT_FIRST_LENGTH_PREFIXED;
}

FerrySchema *ferry__schema_decode(const uint8_t *p, size_t len, FerryError **errp)
{
    if (len < 2) {
        ferry_error_setg(errp, "schema: %zu byte(s), too short for its descriptor count", len);
        return NULL;
    }
    size_t n = ferry__get_be16(p);
    if (n > FERRY_SCHEMA_MAX_FIELDS) {
        ferry_error_setg(errp, "schema: %zu descriptors, at most %u are allowed", n, FERRY_SCHEMA_MAX_FIELDS);
        return NULL;
    }
    FerrySchema *s = ferry__xcalloc(1, sizeof(*s));
    s->fields = ferry__xcalloc(n ? n : 1, sizeof(*s->fields));
    /* Per descriptor: its nesting depth, its first child and next sibling (to check sibling names and list
     * children without a quadratic scan of the whole table). */
    uint8_t *depth = ferry__xcalloc(n ? n : 1, 1);
    uint16_t *first_child = ferry__xmalloc((n ? n : 1) * sizeof(uint16_t));
    uint16_t *next_sibling = ferry__xmalloc((n ? n : 1) * sizeof(uint16_t));
    uint16_t top_first = FERRY_SCHEMA_NO_PARENT;
    size_t pos = 2;
    for (size_t i = 0; i < n; i++) {
        first_child[i] = FERRY_SCHEMA_NO_PARENT;
        next_sibling[i] = FERRY_SCHEMA_NO_PARENT;
        if (len - pos < 5) {
            ferry_error_setg(errp, "schema: descriptor %zu is truncated", i);
            goto fail;
        }
        uint16_t parent = ferry__get_be16(p + pos);
        uint8_t type = p[pos + 2], flags = p[pos + 3];
        size_t nlen = p[pos + 4];
        pos += 5;
        if (len - pos < nlen) {
            ferry_error_setg(errp, "schema: the name of descriptor %zu is truncated", i);
            goto fail;
        }
        if (!name_valid(p + pos, nlen)) {
            char *shown = ferry__xstrndup((const char *)p + pos, nlen);
            char *clean = ferry__utf8_scrub(shown);
            ferry_error_setg(errp, "schema: descriptor %zu has an invalid name '%s' (1..255 bytes 0x21..0x7e)", i,
                             clean);
            free(clean);
            free(shown);
            goto fail;
        }
        FerrySchemaField *f = &s->fields[i];
        f->parent = parent;
        f->type = type;
        f->flags = flags;
        f->name = ferry__xstrndup((const char *)p + pos, nlen);
        s->n = i + 1;
        pos += nlen;
        if (!type_valid(type)) {
            ferry_error_setg(errp, "schema: descriptor %zu ('%s') has invalid type %u", i, f->name, type);
            goto fail;
        }
        uint16_t *siblings = &top_first;
        if (parent != FERRY_SCHEMA_NO_PARENT) {
            if (parent >= i) {
                ferry_error_setg(errp, "schema: descriptor %zu ('%s') has parent %u, which does not come before it",
                                 i, f->name, parent);
                goto fail;
            }
            uint8_t ptype = s->fields[parent].type;
            if (ptype != FERRY_FT_STRUCT && ptype != FERRY_FT_LIST) {
                ferry_error_setg(errp, "schema: descriptor %zu ('%s') has parent %u of type %s, not struct or list",
                                 i, f->name, parent, ferry__field_type_name(ptype));
                goto fail;
            }
            if (ptype == FERRY_FT_LIST && first_child[parent] != FERRY_SCHEMA_NO_PARENT) {
                ferry_error_setg(errp, "schema: descriptor %zu ('%s') is a second element descriptor of list %u",
                                 i, f->name, parent);
                goto fail;
            }
            depth[i] = (uint8_t)(depth[parent] + 1);
            if (depth[i] > FERRY_SCHEMA_MAX_DEPTH) {
                ferry_error_setg(errp, "schema: descriptor %zu ('%s') is nested more than %u deep", i, f->name,
                                 FERRY_SCHEMA_MAX_DEPTH);
                goto fail;
            }
            siblings = &first_child[parent];
        }
        for (uint16_t j = *siblings; j != FERRY_SCHEMA_NO_PARENT; j = next_sibling[j]) {
            if (strcmp(s->fields[j].name, f->name) == 0) {
                ferry_error_setg(errp, "schema: descriptors %u and %zu have the same parent and name '%s'", j, i,
                                 f->name);
                goto fail;
            }
        }
        /* Prepending keeps the loop above linear in the number of siblings. */
        next_sibling[i] = *siblings;
        *siblings = (uint16_t)i;
    }
    if (pos != len) {
        ferry_error_setg(errp, "schema: %zu byte(s) after the last descriptor", len - pos);
        goto fail;
    }
    free(depth);
    free(first_child);
    free(next_sibling);
    return s;

fail:
    free(depth);
    free(first_child);
    free(next_sibling);
    ferry__schema_free(s);
    return NULL;
}

/* The JSON array of the descriptors whose parent is @parent, in table order. */
static json_t *fields_json(const FerrySchema *s, size_t parent)
{
    json_t *arr = json_array();
    for (size_t i = 0; i < s->n; i++) {
        const FerrySchemaField *f = &s->fields[i];
        if (f->parent != parent) {
            continue;
        }
        json_t *o = json_pack("{s:s, s:s}", "name", f->name, "type", ferry__field_type_name(f->type));
        if (f->type == FERRY_FT_STRUCT) {
            json_object_set_new(o, "fields", fields_json(s, i));
        } else if (f->type == FERRY_FT_LIST) {
            json_t *elems = fields_json(s, i);
            if (json_array_size(elems) > 0) {
                json_object_set(o, "element", json_array_get(elems, 0));
            }
            json_decref(elems);
        }
        if (f->flags & FERRY_SCHEMA_SKIPPABLE) {
            json_object_set_new(o, "skippable", json_true());
        }
        if (f->flags & FERRY_SCHEMA_DEFAULT) {
            json_object_set_new(o, "default", json_true());
        }
        if (f->flags & FERRY_SCHEMA_OPTIONAL) {
            json_object_set_new(o, "optional", json_true());
        }
        json_array_append_new(arr, o);
    }
    return arr;
}

json_t *ferry__schema_to_json(const FerrySchema *s)
{
    return fields_json(s, FERRY_SCHEMA_NO_PARENT);
}

json_t *ferry__section_schema_json(const char *name, uint32_t instance_id, uint32_t version, uint32_t flags,
                                   const FerrySchema *s)
{
    return json_pack("{s:s, s:I, s:I, s:b, s:b, s:o}", "name", name, "instance-id", (json_int_t)instance_id,
                     "version", (json_int_t)version, "skippable", (flags & FERRY_SECTION_SKIPPABLE) != 0,
                     "optional", (flags & FERRY_SECTION_OPTIONAL) != 0, "fields", ferry__schema_to_json(s));
}
