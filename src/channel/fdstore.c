/*
 * The process's named fd store (channel.h): fds given over QMP with getfd (SCM_RIGHTS) under a name, closed with
 * closefd, and taken by "fd:NAME" addresses. A small array under one mutex: a process holds a handful of named
 * fds, and the store holds at most FERRY_FDSTORE_MAX of them (channel.h). It does not receive fds (the monitor does) and does not use them (fd.c does).
 */
#include <ctype.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "channel/channel.h"
#include "util/util.h"

typedef struct NamedFd {
    char *name;
    int fd;
} NamedFd;

static FerryMutex store_lock = FERRY_MUTEX_INITIALIZER;
static NamedFd *store;
static size_t store_len, store_cap;

/* Index of @name, or store_len. Called with the lock held. */
static size_t find_locked(const char *name)
{
    FERRY_ASSERT_HELD(&store_lock);
    size_t i;
    for (i = 0; i < store_len; i++) {
        if (strcmp(store[i].name, name) == 0) {
            break;
        }
    }
    return i;
}

static void remove_locked(size_t i)
{
    FERRY_ASSERT_HELD(&store_lock);
    free(store[i].name);
    store[i] = store[--store_len];
}

bool ferry__fdstore_add(const char *name, int fd, FerryError **errp)
{
    if (!name || !*name) {
        ferry_error_setg(errp, "Invalid file descriptor name: it must not be empty");
        return false;
    }
    if (isdigit((unsigned char)name[0])) {
        /* "fd:3" means the inherited fd number 3: a stored name like that could never be used. */
        ferry_error_setg(errp, "Invalid file descriptor name '%s': it must not start with a digit", name);
        return false;
    }
    if (strlen(name) > FERRY_FDSTORE_MAX_NAME) {
        ferry_error_setg(errp, "Invalid file descriptor name '%.32s...': longer than %d bytes", name,
                         FERRY_FDSTORE_MAX_NAME);
        return false;
    }
    if (fd < 0) {
        ferry_error_setg(errp, "Invalid file descriptor %d for name '%s'", fd, name);
        return false;
    }
    int old = -1;
    ferry__mutex_lock(&store_lock);
    size_t i = find_locked(name);
    if (i < store_len) {
        old = store[i].fd;
        store[i].fd = fd;
    } else if (store_len >= FERRY_FDSTORE_MAX) {
        ferry__mutex_unlock(&store_lock);
        ferry_error_setg(errp, "Cannot name file descriptor '%s': %d named file descriptors are held already "
                         "(closefd some)", name, FERRY_FDSTORE_MAX);
        return false;
    } else {
        if (store_len == store_cap) {
            store_cap = store_cap ? store_cap * 2 : 8;
            store = ferry__xrealloc(store, store_cap * sizeof(*store));
        }
        store[store_len].name = ferry__xstrdup(name);
        store[store_len].fd = fd;
        store_len++;
    }
    ferry__mutex_unlock(&store_lock);
    /* Closed outside the lock: close() of the last reference to a socket can take a while. */
    if (old >= 0 && old != fd) {
        close(old);
    }
    return true;
}

bool ferry__fdstore_close(const char *name, FerryError **errp)
{
    int fd = ferry__fdstore_take(name);
    if (fd < 0) {
        ferry_error_setg(errp, "File descriptor named '%s' not found", name ? name : "");
        return false;
    }
    close(fd);
    return true;
}

int ferry__fdstore_take(const char *name)
{
    if (!name) {
        return -1;
    }
    int fd = -1;
    ferry__mutex_lock(&store_lock);
    size_t i = find_locked(name);
    if (i < store_len) {
        fd = store[i].fd;
        remove_locked(i);
    }
    ferry__mutex_unlock(&store_lock);
    return fd;
}
