/*
 * FerryError: an error class plus a formatted message, created where the context is known and passed up
 * untouched. This file only builds, decorates and frees errors; it does not log or report them (the caller
 * decides where an error ends up: a QMP reply, a migration's error-desc, stderr).
 */
#include <assert.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ferry/error.h"
#include "util/util.h"

struct FerryError {
    FerryErrorClass cls;
    char *msg;
};

static void error_setv(FerryError **errp, FerryErrorClass cls, const char *suffix, const char *fmt, va_list ap)
{
    if (!errp) {
        return;
    }
    /* Setting an error twice loses the first one: that is always a bug in the caller. */
    assert(*errp == NULL);

    FerryError *err = ferry__xmalloc(sizeof(*err));
    err->cls = cls;
    char *msg = ferry__xvasprintf(fmt, ap);
    if (suffix) {
        err->msg = ferry__xasprintf("%s: %s", msg, suffix);
        free(msg);
    } else {
        err->msg = msg;
    }
    *errp = err;
}

void ferry_error_setg(FerryError **errp, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    error_setv(errp, FERRY_ERROR_GENERIC, NULL, fmt, ap);
    va_end(ap);
}

void ferry_error_set(FerryError **errp, FerryErrorClass cls, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    error_setv(errp, cls, NULL, fmt, ap);
    va_end(ap);
}

void ferry_error_setg_errno(FerryError **errp, int errnum, const char *fmt, ...)
{
    /* strerror_r (GNU flavour) so that concurrent threads do not share strerror's static buffer. */
    char buf[256];
    const char *text = strerror_r(errnum, buf, sizeof(buf));
    va_list ap;
    va_start(ap, fmt);
    error_setv(errp, FERRY_ERROR_GENERIC, text, fmt, ap);
    va_end(ap);
}

void ferry_error_prepend(FerryError **errp, const char *fmt, ...)
{
    if (!errp || !*errp) {
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    char *prefix = ferry__xvasprintf(fmt, ap);
    va_end(ap);
    char *msg = ferry__xasprintf("%s%s", prefix, (*errp)->msg);
    free(prefix);
    free((*errp)->msg);
    (*errp)->msg = msg;
}

void ferry_error_propagate(FerryError **dst, FerryError *err)
{
    if (!err) {
        return;
    }
    if (!dst || *dst) {
        /* The first error wins, as in QEMU's error_propagate. */
        ferry_error_free(err);
        return;
    }
    *dst = err;
}

FerryError *ferry_error_copy(const FerryError *err)
{
    if (!err) {
        return NULL;
    }
    FerryError *copy = ferry__xmalloc(sizeof(*copy));
    copy->cls = err->cls;
    copy->msg = ferry__xstrdup(err->msg);
    return copy;
}

const char *ferry_error_msg(const FerryError *err)
{
    return err ? err->msg : NULL;
}

FerryErrorClass ferry_error_class(const FerryError *err)
{
    return err ? err->cls : FERRY_ERROR_GENERIC;
}

const char *ferry_error_class_name(FerryErrorClass cls)
{
    switch (cls) {
    case FERRY_ERROR_GENERIC:
        return "GenericError";
    case FERRY_ERROR_COMMAND_NOT_FOUND:
        return "CommandNotFound";
    case FERRY_ERROR_DEVICE_NOT_ACTIVE:
        return "DeviceNotActive";
    case FERRY_ERROR_DEVICE_NOT_FOUND:
        return "DeviceNotFound";
    }
    return "GenericError";
}

void ferry_error_free(FerryError *err)
{
    if (!err) {
        return;
    }
    free(err->msg);
    free(err);
}
