/*
 * Helpers for the visitor unit tests (include after <cmocka.h>): hand-built schemas, and save/load of a visit
 * function through the binary visitors. Test-only.
 */
#ifndef FERRY_TEST_VISITOR_COMMON_H
#define FERRY_TEST_VISITOR_COMMON_H

#include <stdlib.h>
#include <string.h>

#include "ferry/error.h"
#include "test-helpers.h"
#include "util/util.h"
#include "visitor/visitor-int.h"

typedef bool (*VisitFn)(FerryVisitor *v, void *state, FerryError **errp);

typedef struct Desc {
    uint16_t parent;
    uint8_t type;
    uint8_t flags;
    const char *name;
} Desc;

static inline FerrySchema *schema_make(const Desc *d, size_t n)
{
    FerrySchema *s = ferry__xcalloc(1, sizeof(*s));
    s->fields = ferry__xcalloc(n ? n : 1, sizeof(*s->fields));
    s->n = n;
    for (size_t i = 0; i < n; i++) {
        s->fields[i] = (FerrySchemaField){ d[i].parent, d[i].type, d[i].flags, ferry__xstrdup(d[i].name) };
    }
    return s;
}

/* Save @state with @fn; the schema goes through its wire form and back, as a destination would see it. */
static inline void save(VisitFn fn, void *state, FerrySchema **schema, uint8_t **data, size_t *len)
{
    FerryVisitor *v = ferry__visitor_output_new();
    FerryError *err = NULL;
    assert_int_equal(ferry_visitor_kind(v), FERRY_VISITOR_OUTPUT);
    assert_true(fn(v, state, &err));
    FerrySchema *s;
    assert_true(ferry__visitor_output_finish(v, &s, data, len, &err));
    ferry_visitor_free(v);
    size_t slen = ferry__schema_encoded_len(s);
    uint8_t *wire = malloc(slen);
    ferry__schema_encode(s, wire);
    *schema = ferry__schema_decode(wire, slen, &err);
    if (!*schema) {
        print_error("%s\n", ferry_error_msg(err));
    }
    assert_non_null(*schema);
    free(wire);
    ferry__schema_free(s);
}

/* Load into @state with @fn; the error (if any) goes to *errp; *skipped gets the skipped byte count. */
static inline bool load(VisitFn fn, void *state, const FerrySchema *schema, const uint8_t *data, size_t len,
                        uint64_t *skipped, FerryError **errp)
{
    FerryVisitor *v = ferry__visitor_input_new("test", schema, data, len, errp);
    if (!v) {
        return false;
    }
    assert_int_equal(ferry_visitor_kind(v), FERRY_VISITOR_INPUT);
    bool ok = fn(v, state, errp) && ferry__visitor_input_finish(v, errp);
    if (skipped) {
        *skipped = ferry__visitor_input_skipped(v);
    }
    ferry_visitor_free(v);
    return ok;
}

#endif
