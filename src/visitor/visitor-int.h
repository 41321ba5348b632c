/*
 * Visitor implementations, internal side. Today there are two, both in binary.c and both over memory buffers: the
 * binary output visitor (save) and the binary input visitor (load); the public ferry_visit_* functions branch on
 * the kind. The encoding is positional and big-endian; field names are carried by the API but not yet by the bytes
 * (the self-describing form, with its JSON and schema visitors, is a later step and will put an ops table here).
 */
#ifndef FERRY_VISITOR_INT_H
#define FERRY_VISITOR_INT_H

#include <stddef.h>
#include <stdint.h>

#include "ferry/visitor.h"

/* Output: collects bytes in a growing buffer. */
FerryVisitor *ferry__visitor_output_new(void);
/* The bytes written so far (borrowed, valid until the next visit or free). */
const uint8_t *ferry__visitor_output_data(const FerryVisitor *v, size_t *len);

/* Input: reads from @buf (borrowed: must outlive the visitor). */
FerryVisitor *ferry__visitor_input_new(const uint8_t *buf, size_t len);
/* After a load: fails if bytes are left over or structs/lists are unbalanced. */
bool ferry__visitor_input_finish(FerryVisitor *v, FerryError **errp);

void ferry__visitor_free(FerryVisitor *v); /* NULL is a no-op */

#endif
