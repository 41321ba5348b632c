/*
 * The checked invariants of util.h: FerryMutex knows whether the calling thread holds it (held by this thread,
 * not held, held by another thread), FERRY_ASSERT aborts naming the condition when it fails and costs nothing when
 * it holds, and FERRY_BUG is logged loudly and aborts a debug build. The aborting cases run in a child process.
 */
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "test-helpers.h"
#include "util/util.h"

static FerryMutex shared = FERRY_MUTEX_INITIALIZER;

static void *holder(void *opaque)
{
    pthread_barrier_t *b = opaque;
    ferry__mutex_lock(&shared);
    pthread_barrier_wait(&b[0]); /* held */
    pthread_barrier_wait(&b[1]); /* the main thread has looked */
    ferry__mutex_unlock(&shared);
    return NULL;
}

static void test_mutex_owner(void **state)
{
    (void)state;
    FerryMutex mx;
    ferry__mutex_init(&mx);
    assert_false(ferry__mutex_held(&mx));
    ferry__mutex_lock(&mx);
    assert_true(ferry__mutex_held(&mx));
    FERRY_ASSERT_HELD(&mx);
    ferry__mutex_unlock(&mx);
    assert_false(ferry__mutex_held(&mx));
    ferry__mutex_destroy(&mx);

    /* Held by another thread is not held by this one. */
    pthread_barrier_t b[2];
    pthread_barrier_init(&b[0], NULL, 2);
    pthread_barrier_init(&b[1], NULL, 2);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, holder, b), 0);
    pthread_barrier_wait(&b[0]);
    assert_false(ferry__mutex_held(&shared));
    pthread_barrier_wait(&b[1]);
    pthread_join(t, NULL);
    pthread_barrier_destroy(&b[0]);
    pthread_barrier_destroy(&b[1]);
}

static volatile int answer = 42;

static void assert_that_fails(void *unused)
{
    (void)unused;
    FERRY_ASSERT(answer == 41);
}

static void assert_that_holds(void *unused)
{
    (void)unused;
    FERRY_ASSERT(answer == 42);
}

static void unlock_not_held(void *unused)
{
    (void)unused;
    FerryMutex mx;
    ferry__mutex_init(&mx);
    ferry__mutex_unlock(&mx);
}

static void bug(void *unused)
{
    (void)unused;
    FERRY_BUG("status %s -> %s", "completed", "cancelling");
}

static void test_assert(void **state)
{
    (void)state;
    char *out;
    int st = run_in_child(assert_that_fails, NULL, &out);
    assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT);
    assert_non_null(strstr(out, "assertion failed: answer == 41"));
    assert_non_null(strstr(out, "test-check.c"));
    free(out);

    st = run_in_child(assert_that_holds, NULL, &out);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    assert_string_equal(out, "");
    free(out);

    /* Unlocking a FerryMutex this thread does not hold is caught. */
    st = run_in_child(unlock_not_held, NULL, &out);
    assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT);
    assert_non_null(strstr(out, "ferry__mutex_held"));
    free(out);
}

static void test_bug(void **state)
{
    (void)state;
    char *out;
    int st = run_in_child(bug, NULL, &out);
    assert_non_null(strstr(out, "BUG: status completed -> cancelling"));
#ifdef NDEBUG
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
#else
    assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT);
#endif
    free(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mutex_owner),
        cmocka_unit_test(test_assert),
        cmocka_unit_test(test_bug),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
