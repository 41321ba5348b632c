/*
 * Errors. A function that can fail returns bool (or a pointer) and takes FerryError **errp as its last argument:
 * the error is created where the context is known and passed up untouched. errp may be NULL when the caller does
 * not care; *errp must be NULL on entry. The class maps onto QMP's error classes so that the monitor reports
 * what the engine said without translation.
 */
#ifndef FERRY_ERROR_H
#define FERRY_ERROR_H

#include "ferry/common.h"

typedef enum FerryErrorClass {
    FERRY_ERROR_GENERIC = 0,        /* QMP "GenericError" */
    FERRY_ERROR_COMMAND_NOT_FOUND,  /* QMP "CommandNotFound" */
    FERRY_ERROR_DEVICE_NOT_ACTIVE,  /* QMP "DeviceNotActive" */
    FERRY_ERROR_DEVICE_NOT_FOUND,   /* QMP "DeviceNotFound" */
} FerryErrorClass;

FERRY_API void ferry_error_setg(FerryError **errp, const char *fmt, ...) FERRY_PRINTF(2, 3);
FERRY_API void ferry_error_set(FerryError **errp, FerryErrorClass cls, const char *fmt, ...) FERRY_PRINTF(3, 4);
/* Like ferry_error_setg, with ": strerror(errnum)" appended. */
FERRY_API void ferry_error_setg_errno(FerryError **errp, int errnum, const char *fmt, ...) FERRY_PRINTF(3, 4);
/* Prefix the message of *errp (if set) with a formatted context: "connecting to x: " + old message. */
FERRY_API void ferry_error_prepend(FerryError **errp, const char *fmt, ...) FERRY_PRINTF(2, 3);
/* Move @err into *dst (or free it if dst is NULL or *dst is already set). */
FERRY_API void ferry_error_propagate(FerryError **dst, FerryError *err);
FERRY_API FerryError *ferry_error_copy(const FerryError *err);
FERRY_API const char *ferry_error_msg(const FerryError *err);
FERRY_API FerryErrorClass ferry_error_class(const FerryError *err);
/* "GenericError", "CommandNotFound", ... */
FERRY_API const char *ferry_error_class_name(FerryErrorClass cls);
FERRY_API void ferry_error_free(FerryError *err); /* NULL is a no-op */

#endif
