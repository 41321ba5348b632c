/*
 * Helpers shared by unit tests of several areas (include after <cmocka.h>). Test-only: nothing here is part of
 * libferry.
 */
#ifndef FERRY_TEST_HELPERS_H
#define FERRY_TEST_HELPERS_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ferry/error.h"
#include "util/util.h"

/* Fails the test unless @err is set and its message contains @needle. */
static inline void assert_msg_contains(FerryError *err, const char *needle)
{
    assert_non_null(err);
    if (!strstr(ferry_error_msg(err), needle)) {
        print_error("message \"%s\" lacks \"%s\"\n", ferry_error_msg(err), needle);
        fail();
    }
}

/*
 * A loopback TCP listener whose backlog is full: the kernel drops further SYNs, so a connect to the returned URI
 * ("tcp:127.0.0.1:PORT", caller frees) hangs until the kernel's SYN retries run out (minutes). *lfd and *filler
 * are the listener and the connection that fills the backlog; the caller closes both.
 */
static inline char *full_backlog_listener(int *lfd, int *filler)
{
    struct sockaddr_in sin = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t len = sizeof(sin);
    *lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_int_equal(bind(*lfd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    assert_int_equal(listen(*lfd, 0), 0);
    assert_int_equal(getsockname(*lfd, (struct sockaddr *)&sin, &len), 0);
    /* Backlog 0 admits one pending connection: this one. */
    *filler = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_int_equal(connect(*filler, (struct sockaddr *)&sin, sizeof(sin)), 0);
    return ferry__xasprintf("tcp:127.0.0.1:%u", ntohs(sin.sin_port));
}

/*
 * Runs @fn(@arg) in a child process whose stderr is a pipe, for code that is meant to abort (FERRY_ASSERT,
 * FERRY_BUG). Returns the child's wait status; *out gets what it wrote to stderr (up to 4 KiB, caller frees). A
 * child that returns from @fn exits 0.
 */
static inline int run_in_child(void (*fn)(void *), void *arg, char **out)
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
        fn(arg);
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

#endif
