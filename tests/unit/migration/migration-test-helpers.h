/*
 * Helpers shared by the migration unit tests (include after <cmocka.h> and "migration/migration.h"). Test-only.
 */
#ifndef FERRY_MIGRATION_TEST_HELPERS_H
#define FERRY_MIGRATION_TEST_HELPERS_H

#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "migration/migration.h"
#include "util/util.h"

/*
 * Polls query-migrate until @m reaches a terminal state; returns it ("completed", "failed", "cancelled"), or
 * "timeout" after @timeout_ms. The string is static: use it before the next call.
 */
static inline const char *wait_terminal(FerryMigration *m, int timeout_ms)
{
    static char status[32];
    int64_t end = ferry__clock_ms() + timeout_ms;
    for (;;) {
        json_t *q = ferry__migration_query(m);
        snprintf(status, sizeof(status), "%s", json_string_value(json_object_get(q, "status")));
        json_decref(q);
        if (!strcmp(status, "completed") || !strcmp(status, "failed") || !strcmp(status, "cancelled")) {
            return status;
        }
        if (ferry__clock_ms() > end) {
            return "timeout";
        }
        usleep(1000);
    }
}

#endif
