/*
 * Unit tests of FerryError (src/util/error.c): creation, classes, errno text, prepend, propagate and copy.
 * The double-set assertion is not exercised here because it aborts the process by design.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "ferry/error.h"
#include "ferry/ferry.h"

static void test_setg(void **state)
{
    FerryError *err = NULL;
    ferry_error_setg(&err, "bad value %d for '%s'", 42, "x");
    assert_non_null(err);
    assert_string_equal(ferry_error_msg(err), "bad value 42 for 'x'");
    assert_int_equal(ferry_error_class(err), FERRY_ERROR_GENERIC);
    assert_string_equal(ferry_error_class_name(ferry_error_class(err)), "GenericError");
    ferry_error_free(err);
}

static void test_set_class(void **state)
{
    FerryError *err = NULL;
    ferry_error_set(&err, FERRY_ERROR_COMMAND_NOT_FOUND, "The command %s has not been found", "foo");
    assert_int_equal(ferry_error_class(err), FERRY_ERROR_COMMAND_NOT_FOUND);
    assert_string_equal(ferry_error_class_name(ferry_error_class(err)), "CommandNotFound");
    assert_string_equal(ferry_error_msg(err), "The command foo has not been found");
    ferry_error_free(err);
    assert_string_equal(ferry_error_class_name(FERRY_ERROR_DEVICE_NOT_ACTIVE), "DeviceNotActive");
    assert_string_equal(ferry_error_class_name(FERRY_ERROR_DEVICE_NOT_FOUND), "DeviceNotFound");
}

static void test_null_errp(void **state)
{
    /* A NULL errp means "the caller does not care": nothing may crash or leak (ASan checks the latter). */
    ferry_error_setg(NULL, "ignored %s", "message");
    ferry_error_setg_errno(NULL, EPERM, "ignored");
    ferry_error_prepend(NULL, "ignored: ");
    FerryError *none = NULL;
    ferry_error_prepend(&none, "ignored: ");
    assert_null(none);
    ferry_error_free(NULL);
    assert_null(ferry_error_copy(NULL));
}

static void test_errno(void **state)
{
    FerryError *err = NULL;
    ferry_error_setg_errno(&err, ECONNREFUSED, "Failed to connect to '%s'", "tcp:127.0.0.1:4444");
    assert_string_equal(ferry_error_msg(err), "Failed to connect to 'tcp:127.0.0.1:4444': Connection refused");
    ferry_error_free(err);
}

static void test_prepend(void **state)
{
    FerryError *err = NULL;
    ferry_error_setg(&err, "Connection refused");
    ferry_error_prepend(&err, "connecting to %s: ", "x");
    ferry_error_prepend(&err, "migrate: ");
    assert_string_equal(ferry_error_msg(err), "migrate: connecting to x: Connection refused");
    ferry_error_free(err);
}

static void test_propagate(void **state)
{
    FerryError *dst = NULL;
    FerryError *first = NULL, *second = NULL;
    ferry_error_setg(&first, "first");
    ferry_error_setg(&second, "second");

    ferry_error_propagate(&dst, NULL);
    assert_null(dst);
    ferry_error_propagate(&dst, first);
    assert_ptr_equal(dst, first);
    /* The first error wins; the second is freed (ASan would report a leak otherwise). */
    ferry_error_propagate(&dst, second);
    assert_string_equal(ferry_error_msg(dst), "first");

    FerryError *third = NULL;
    ferry_error_setg(&third, "third");
    ferry_error_propagate(NULL, third);
    ferry_error_free(dst);
}

static void test_copy(void **state)
{
    FerryError *err = NULL;
    ferry_error_set(&err, FERRY_ERROR_DEVICE_NOT_FOUND, "no such block '%s'", "ram0");
    FerryError *copy = ferry_error_copy(err);
    assert_ptr_not_equal(copy, err);
    ferry_error_free(err);
    assert_string_equal(ferry_error_msg(copy), "no such block 'ram0'");
    assert_int_equal(ferry_error_class(copy), FERRY_ERROR_DEVICE_NOT_FOUND);
    ferry_error_free(copy);
}

static void test_version(void **state)
{
    assert_string_equal(ferry_version_string(), "0.1.0");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_setg),     cmocka_unit_test(test_set_class), cmocka_unit_test(test_null_errp),
        cmocka_unit_test(test_errno),    cmocka_unit_test(test_prepend),   cmocka_unit_test(test_propagate),
        cmocka_unit_test(test_copy),     cmocka_unit_test(test_version),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
