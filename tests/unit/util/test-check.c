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

/* Runs @fn in a child with stderr on a pipe; returns the child's wait status and what it wrote (caller frees). */
static int run_child(void (*fn)(void), char **out)
{
    int p[2];
    assert_int_equal(pipe(p), 0);
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        dup2(p[1], 2);
        close(p[0]);
        signal(SIGABRT, SIG_DFL);
        fn();
        _exit(0);
    }
    close(p[1]);
    char buf[4096];
    size_t n = 0;
    ssize_t r;
    while (n < sizeof(buf) - 1 && (r = read(p[0], buf + n, sizeof(buf) - 1 - n)) > 0) {
        n += (size_t)r;
    }
    buf[n] = '\0';
    close(p[0]);
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    *out = ferry__xstrdup(buf);
    return status;
}

static volatile int answer = 42;

static void assert_that_fails(void)
{
    FERRY_ASSERT(answer == 41);
}

static void assert_that_holds(void)
{
    FERRY_ASSERT(answer == 42);
}

static void unlock_not_held(void)
{
    FerryMutex mx;
    ferry__mutex_init(&mx);
    ferry__mutex_unlock(&mx);
}

static void bug(void)
{
    FERRY_BUG("status %s -> %s", "completed", "cancelling");
}

static void test_assert(void **state)
{
    (void)state;
    char *out;
    int st = run_child(assert_that_fails, &out);
    assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT);
    assert_non_null(strstr(out, "assertion failed: answer == 41"));
    assert_non_null(strstr(out, "test-check.c"));
    free(out);

    st = run_child(assert_that_holds, &out);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    assert_string_equal(out, "");
    free(out);

    /* Unlocking a FerryMutex this thread does not hold is caught. */
    st = run_child(unlock_not_held, &out);
    assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT);
    assert_non_null(strstr(out, "ferry__mutex_held"));
    free(out);
}

static void test_bug(void **state)
{
    (void)state;
    char *out;
    int st = run_child(bug, &out);
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
