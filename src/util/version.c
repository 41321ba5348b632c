/*
 * The library's version string, built from the FERRY_VERSION_* macros of the public header so that the number
 * lives in one place. Nothing else.
 */
#include "ferry/ferry.h"

#define FERRY_STR_(x) #x
#define FERRY_STR(x) FERRY_STR_(x)

const char *ferry_version_string(void)
{
    return FERRY_STR(FERRY_VERSION_MAJOR) "." FERRY_STR(FERRY_VERSION_MINOR) "." FERRY_STR(FERRY_VERSION_MICRO);
}
