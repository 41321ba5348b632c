/*
 * Checked invariants (FERRY_ASSERT, FERRY_BUG) and FerryMutex, the mutex that knows its owner so that the lock
 * rule of a *_locked function is checked rather than only stated. Declared in util.h. Nothing here knows about
 * migration; the checks are cheap enough to stay on in release builds.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "util/util.h"

_Noreturn void ferry__assert_fail(const char *cond, const char *file, int line, const char *func)
{
    /* Straight to stderr: the logger allocates, and the state that failed the check may be the allocator's. */
    fprintf(stderr, "ferry: assertion failed: %s (%s:%d, %s)\n", cond, file, line, func);
    fflush(stderr);
    abort();
}

void ferry__bug(const char *file, int line, const char *func, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *msg = ferry__xvasprintf(fmt, ap);
    va_end(ap);
    fprintf(stderr, "ferry: BUG: %s (%s:%d, %s)\n", msg, file, line, func);
    fflush(stderr);
    free(msg);
#ifndef NDEBUG
    abort();
#endif
}

void ferry__mutex_init(FerryMutex *mx)
{
    pthread_mutex_init(&mx->mu, NULL);
    mx->owner = 0;
}

void ferry__mutex_destroy(FerryMutex *mx)
{
    FERRY_ASSERT(__atomic_load_n(&mx->owner, __ATOMIC_RELAXED) == 0);
    pthread_mutex_destroy(&mx->mu);
}

void ferry__mutex_lock(FerryMutex *mx)
{
    pthread_mutex_lock(&mx->mu);
    __atomic_store_n(&mx->owner, pthread_self(), __ATOMIC_RELAXED);
}

void ferry__mutex_unlock(FerryMutex *mx)
{
    FERRY_ASSERT(ferry__mutex_held(mx));
    __atomic_store_n(&mx->owner, (pthread_t)0, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&mx->mu);
}

void ferry__mutex_cond_wait(FerryMutex *mx, pthread_cond_t *cond)
{
    FERRY_ASSERT(ferry__mutex_held(mx));
    __atomic_store_n(&mx->owner, (pthread_t)0, __ATOMIC_RELAXED);
    pthread_cond_wait(cond, &mx->mu);
    __atomic_store_n(&mx->owner, pthread_self(), __ATOMIC_RELAXED);
}

bool ferry__mutex_held(const FerryMutex *mx)
{
    /* Only this thread stores its own id, so a relaxed load that equals it was this thread's own store. */
    return pthread_equal(__atomic_load_n(&mx->owner, __ATOMIC_RELAXED), pthread_self());
}
