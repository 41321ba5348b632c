/*
 * The migration status machine (engine.c): the transition table, and the race between migrate_cancel and a
 * source that reaches completion, forced through the engine's test hook in both orders. A cancel that is decided
 * before the source completes must not leave the status in cancelling once the source thread is gone (every later
 * migrate would then be refused as "in progress"), and one that comes after must change nothing. The MIGRATION
 * events must tell the same story in the same order (each one a transition of the table). A transition the table
 * lacks is a bug that fails this (debug) build.
 */
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "ferry/ferry.h"
#include "migration/migration.h"
#include "migration/migration-priv.h"
#include "migration-test-helpers.h"
#include "test-helpers.h"
#include "util/util.h"

/* The table's shape: what QEMU's users rely on, and what must never happen. */
static void test_transition_table(void **state)
{
    (void)state;
    static const FerryMigrationStatus terminal[] = { FERRY_MIG_NONE, FERRY_MIG_COMPLETED, FERRY_MIG_FAILED,
                                                     FERRY_MIG_CANCELLED };
    for (size_t i = 0; i < FERRY_ARRAY_SIZE(terminal); i++) {
        assert_true(ferry__migration_status_terminal(terminal[i]));
        assert_true(ferry__migration_transition_allowed(terminal[i], FERRY_MIG_SETUP));
        assert_false(ferry__migration_transition_allowed(terminal[i], FERRY_MIG_ACTIVE));
        assert_false(ferry__migration_transition_allowed(terminal[i], FERRY_MIG_CANCELLING));
    }
    for (int s = 0; s < FERRY_MIG__MAX; s++) {
        FerryMigrationStatus st = (FerryMigrationStatus)s;
        /* Every status has a name, and every status that is not terminal can fail. */
        assert_string_not_equal(ferry__migration_status_name(st), "unknown");
        if (!ferry__migration_status_terminal(st)) {
            assert_true(ferry__migration_transition_allowed(st, FERRY_MIG_FAILED));
        }
        assert_false(ferry__migration_transition_allowed(st, st));
    }
    assert_true(ferry__migration_transition_allowed(FERRY_MIG_SETUP, FERRY_MIG_ACTIVE));
    assert_true(ferry__migration_transition_allowed(FERRY_MIG_ACTIVE, FERRY_MIG_DEVICE));
    assert_true(ferry__migration_transition_allowed(FERRY_MIG_DEVICE, FERRY_MIG_COMPLETED));
    assert_true(ferry__migration_transition_allowed(FERRY_MIG_CANCELLING, FERRY_MIG_CANCELLED));
    assert_true(ferry__migration_transition_allowed(FERRY_MIG_CANCELLING, FERRY_MIG_COMPLETED));
    assert_false(ferry__migration_transition_allowed(FERRY_MIG_COMPLETED, FERRY_MIG_CANCELLING));
    assert_false(ferry__migration_transition_allowed(FERRY_MIG_CANCELLED, FERRY_MIG_COMPLETED));
    /* Postcopy: the destination runs, so there is no cancelling back to the source. */
    assert_false(ferry__migration_transition_allowed(FERRY_MIG_POSTCOPY_ACTIVE, FERRY_MIG_CANCELLING));
    assert_true(ferry__migration_transition_allowed(FERRY_MIG_POSTCOPY_ACTIVE, FERRY_MIG_POSTCOPY_PAUSED));
    assert_true(ferry__migration_transition_allowed(FERRY_MIG_POSTCOPY_PAUSED, FERRY_MIG_POSTCOPY_RECOVER_SETUP));
    assert_true(ferry__migration_transition_allowed(FERRY_MIG_POSTCOPY_RECOVER, FERRY_MIG_POSTCOPY_ACTIVE));
    assert_string_equal(ferry__migration_status_name(FERRY_MIG_POSTCOPY_RECOVER_SETUP), "postcopy-recover-setup");
    assert_string_equal(ferry__migration_status_name(FERRY_MIG_PRE_SWITCHOVER), "pre-switchover");
    assert_string_equal(ferry__migration_status_name(FERRY_MIG__MAX), "unknown");
}

/* The MIGRATION events of one engine, in the order they were emitted. */
typedef struct Events {
    pthread_mutex_t lock;
    FerryMigrationStatus seen[64];
    size_t n;
} Events;

static void event_fn(const char *name, json_t *data, void *opaque)
{
    Events *ev = opaque;
    if (strcmp(name, "MIGRATION") == 0) {
        const char *status = json_string_value(json_object_get(data, "status"));
        int s = 0;
        while (s < FERRY_MIG__MAX && strcmp(ferry__migration_status_name((FerryMigrationStatus)s), status) != 0) {
            s++;
        }
        assert_true(s < FERRY_MIG__MAX);
        pthread_mutex_lock(&ev->lock);
        if (ev->n < FERRY_ARRAY_SIZE(ev->seen)) {
            ev->seen[ev->n++] = (FerryMigrationStatus)s;
        }
        pthread_mutex_unlock(&ev->lock);
    }
    json_decref(data);
}

/* The events tell the story the table allows: setup first, each next one a transition the table has, @last last. */
static void assert_event_story(Events *ev, FerryMigrationStatus last)
{
    pthread_mutex_lock(&ev->lock);
    assert_true(ev->n >= 2);
    assert_int_equal(ev->seen[0], FERRY_MIG_SETUP);
    for (size_t i = 1; i < ev->n; i++) {
        if (!ferry__migration_transition_allowed(ev->seen[i - 1], ev->seen[i])) {
            fail_msg("event %zu: %s -> %s", i, ferry__migration_status_name(ev->seen[i - 1]),
                     ferry__migration_status_name(ev->seen[i]));
        }
    }
    assert_int_equal(ev->seen[ev->n - 1], last);
    pthread_mutex_unlock(&ev->lock);
}

static void bug_transition(void *m)
{
    ferry__mig_set_state(m, FERRY_MIG_SETUP, FERRY_MIG_COMPLETED);
}

/* A transition from a status that is not the current one is refused quietly (the caller sees false); one that the
 * table does not have is a bug: logged loudly, fatal in a debug build (the suite's). */
static void test_set_state(void **state)
{
    (void)state;
    FerryMigration *m = ferry__migration_new();
    assert_int_equal(ferry__mig_status(m), FERRY_MIG_NONE);
    assert_false(ferry__mig_set_state(m, FERRY_MIG_ACTIVE, FERRY_MIG_DEVICE));
    assert_int_equal(ferry__mig_status(m), FERRY_MIG_NONE);
    assert_true(ferry__mig_set_state(m, FERRY_MIG_NONE, FERRY_MIG_SETUP));
    assert_int_equal(ferry__mig_status(m), FERRY_MIG_SETUP);

    char *out;
    int st = run_in_child(bug_transition, m, &out);
    assert_non_null(strstr(out, "BUG: migration status setup -> completed is not an allowed transition"));
#ifdef NDEBUG
    assert_true(WIFEXITED(st));
#else
    assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT);
#endif
    free(out);
    /* And the status stayed. */
    assert_int_equal(ferry__mig_status(m), FERRY_MIG_SETUP);
    assert_true(ferry__mig_set_state(m, FERRY_MIG_SETUP, FERRY_MIG_FAILED));
    ferry__migration_free(m);
}

typedef enum RaceOrder { CANCEL_BEFORE_COMPLETE, CANCEL_AFTER_COMPLETE } RaceOrder;

typedef struct Race {
    RaceOrder order;
    FerryMigration *m;
    sem_t decided;   /* the cancel has been decided (its status change, if any, is made) */
    sem_t completed; /* the source thread has made its terminal change */
    pthread_t canceller;
    bool started;
    bool cancel_ok;
    int decisions;
} Race;

static void *cancel_thread(void *opaque)
{
    Race *r = opaque;
    r->cancel_ok = ferry__migrate_cancel(r->m, NULL);
    return NULL;
}

/*
 * CANCEL_BEFORE_COMPLETE: at the last point before the source's terminal change, a cancel runs on another thread
 * and is held right after it was decided until the source has made its change (the interleaving of the hostile-
 * input probe: 50 cancels while the stream was held at the destination's ACK). CANCEL_AFTER_COMPLETE: the cancel
 * runs right after the change, on the source thread itself.
 */
static void race_hook(FerryMigration *m, FerryMigTestPoint point, void *opaque)
{
    Race *r = opaque;
    switch (point) {
    case FERRY_MIG_TP_BEFORE_COMPLETE:
        if (r->order == CANCEL_BEFORE_COMPLETE) {
            assert_int_equal(pthread_create(&r->canceller, NULL, cancel_thread, r), 0);
            r->started = true;
            sem_wait(&r->decided);
        }
        break;
    case FERRY_MIG_TP_AFTER_COMPLETE:
        if (r->order == CANCEL_AFTER_COMPLETE) {
            r->cancel_ok = ferry__migrate_cancel(m, NULL);
        }
        sem_post(&r->completed);
        break;
    case FERRY_MIG_TP_CANCEL_DECIDED:
        r->decisions++;
        if (r->order == CANCEL_BEFORE_COMPLETE) {
            sem_post(&r->decided);
            sem_wait(&r->completed);
        }
        break;
    }
}

static FerryMigration *engine_new(bool incoming)
{
    FerryMigration *m = ferry__migration_new();
    FerryRamBlock *b = ferry_ram_block_new(m, "ram0", 1 << 20, NULL);
    assert_non_null(b);
    memset(ferry_ram_block_host(b), incoming ? 0 : 0x42, 1 << 20);
    ferry_migration_set_dirty_tracker(m, FERRY_TRACKER_EXPLICIT);
    ferry__runstate_init(m, false, incoming);
    if (!incoming) {
        ferry__vm_start_initial(m);
    }
    return m;
}

static FerryMigrationAddress *addr_new(int n)
{
    char *uri = ferry__xasprintf("unix:/tmp/ferry-test-status-%d-%d.sock", (int)getpid(), n);
    FerryMigrationAddress *a = NULL;
    assert_true(ferry__address_parse_uri(uri, &a, NULL));
    free(uri);
    return a;
}

static const char *status_of(FerryMigration *m)
{
    static char s[32];
    json_t *q = ferry__migration_query(m);
    snprintf(s, sizeof(s), "%s", json_string_value(json_object_get(q, "status")));
    json_decref(q);
    return s;
}

static void run_race(RaceOrder order)
{
    static int n;
    Race r = { .order = order };
    sem_init(&r.decided, 0, 0);
    sem_init(&r.completed, 0, 0);
    FerryMigration *src = engine_new(false), *dst = engine_new(true);
    r.m = src;
    ferry__migration_set_test_hook(src, race_hook, &r);
    Events ev = { .lock = PTHREAD_MUTEX_INITIALIZER };
    ferry__migration_set_event_fn(src, event_fn, &ev);
    json_t *caps = json_pack("[{s:s, s:b}]", "capability", "events", "state", 1);
    assert_true(ferry__migration_set_caps(src, caps, NULL));
    json_decref(caps);
    FerryMigrationAddress *a = addr_new(n++);
    assert_true(ferry__migrate_incoming(dst, a, false, NULL));
    assert_true(ferry__migrate(src, a, NULL));
    assert_string_equal(wait_terminal(dst, 30000), "completed");
    assert_string_equal(wait_terminal(src, 30000), "completed");
    if (r.started) {
        pthread_join(r.canceller, NULL);
    }
    /* Both cancels were accepted (QEMU: nothing to cancel is no error), and neither undid the completion. */
    assert_true(r.cancel_ok);
    assert_int_equal(r.decisions, 1);
    assert_string_equal(status_of(src), "completed");
    assert_int_equal(ferry__runstate_get(src), FERRY_RUN_POSTMIGRATE);
    assert_int_equal(ferry__runstate_get(dst), FERRY_RUN_RUNNING);
    assert_event_story(&ev, FERRY_MIG_COMPLETED);
    if (order == CANCEL_BEFORE_COMPLETE) {
        assert_int_equal(ev.seen[ev.n - 2], FERRY_MIG_CANCELLING);
    }
    /* Nothing is left "in progress": the migrated-to destination can migrate on, and so can the source. */
    ferry__migration_set_test_hook(src, NULL, NULL);
    FerryMigration *next = engine_new(true);
    FerryMigrationAddress *b = addr_new(n++);
    assert_true(ferry__migrate_incoming(next, b, false, NULL));
    FerryError *err = NULL;
    if (!ferry__migrate(src, b, &err)) {
        fail_msg("a new migrate after the race was refused: %s", ferry_error_msg(err));
    }
    assert_string_equal(wait_terminal(src, 30000), "completed");
    assert_string_equal(wait_terminal(next, 30000), "completed");
    ferry__address_free(a);
    ferry__address_free(b);
    ferry__migration_free(next);
    ferry__migration_free(src);
    ferry__migration_free(dst);
    sem_destroy(&r.decided);
    sem_destroy(&r.completed);
}

static void test_cancel_just_before_completion(void **state)
{
    (void)state;
    run_race(CANCEL_BEFORE_COMPLETE);
}

static void test_cancel_just_after_completion(void **state)
{
    (void)state;
    run_race(CANCEL_AFTER_COMPLETE);
}

/* A cancel that comes while the source is still sending ends in cancelled, and the source runs on. */
static void test_cancel_before_commit(void **state)
{
    (void)state;
    FerryMigration *src = engine_new(false), *dst = engine_new(true);
    Events ev = { .lock = PTHREAD_MUTEX_INITIALIZER };
    ferry__migration_set_event_fn(src, event_fn, &ev);
    json_t *caps = json_pack("[{s:s, s:b}]", "capability", "events", "state", 1);
    assert_true(ferry__migration_set_caps(src, caps, NULL));
    json_decref(caps);
    json_t *p = json_pack("{s:i}", "max-bandwidth", 64 << 10);
    assert_true(ferry__migration_set_params(src, p, NULL));
    json_decref(p);
    FerryMigrationAddress *a = addr_new(1000);
    assert_true(ferry__migrate_incoming(dst, a, false, NULL));
    assert_true(ferry__migrate(src, a, NULL));
    usleep(100 * 1000);
    assert_true(ferry__migrate_cancel(src, NULL));
    assert_string_equal(wait_terminal(src, 30000), "cancelled");
    assert_int_equal(ferry__runstate_get(src), FERRY_RUN_RUNNING);
    /* A second cancel of a cancelled migration is no error and changes nothing. */
    assert_true(ferry__migrate_cancel(src, NULL));
    assert_string_equal(status_of(src), "cancelled");
    assert_event_story(&ev, FERRY_MIG_CANCELLED);
    ferry__address_free(a);
    ferry__migration_free(src);
    ferry__migration_free(dst);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_transition_table),
        cmocka_unit_test(test_set_state),
        cmocka_unit_test(test_cancel_just_before_completion),
        cmocka_unit_test(test_cancel_just_after_completion),
        cmocka_unit_test(test_cancel_before_commit),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
