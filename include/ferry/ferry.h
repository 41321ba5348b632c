/* The whole public API of libferry. Host programs and tools include this and nothing under src/. */
#ifndef FERRY_FERRY_H
#define FERRY_FERRY_H

#include "ferry/common.h"
#include "ferry/analyze.h"
#include "ferry/backend.h"
#include "ferry/error.h"
#include "ferry/host.h"
#include "ferry/object.h"
#include "ferry/ram.h"
#include "ferry/visitor.h"

FERRY_API const char *ferry_version_string(void);

#endif
