/*
 * Reading a migration stream without the program that wrote it: the stream describes itself (its features, its
 * RAM layout, and a schema for every device section), so a tool can decode all of it. This is what ferry-analyze
 * prints; it is not a loader (nothing is applied anywhere) and it never holds page contents in memory beyond one
 * record (a mapped-ram file: 1 MiB of its pages, and one block's bitmap and checksum table).
 */
#ifndef FERRY_ANALYZE_H
#define FERRY_ANALYZE_H

#include <jansson.h>

#include "ferry/common.h"

#define FERRY_ANALYZE_SCHEMA_ONLY 0x1u /* the result is {"sections": [schema, ...]} only */

/*
 * Read the stream from @fd (a file, a pipe, stdin) up to its END record and describe it as JSON
 * (docs/stream-format.md, "Reading a stream", shows the shape). *result is always set (new reference) to what was
 * decoded, also on failure; on a damaged or truncated stream the function returns false with *errp naming the
 * stream offset and the record ("at stream offset 1234, RAM_PAGES record: ..."), and *result carries an "error"
 * member {"offset", "record", "message"}. A mapped-ram stream's page regions are read in order (so a pipe works as
 * a file does); a damaged page is named by its file offset when @fd can seek. @fd is not closed.
 */
FERRY_API bool ferry_stream_analyze(int fd, unsigned flags, json_t **result, FerryError **errp);

#endif
