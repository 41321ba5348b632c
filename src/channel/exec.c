/*
 * The exec transport: the source starts a command and writes the stream into its stdin; the destination starts
 * a command and reads the stream from its stdout (QEMU's exec: migration; "exec:CMD" runs /bin/sh -c CMD). The
 * channel is a pipe end wrapped by socket.c's fd channel (non-blocking, so that shutdown interrupts a blocked
 * read or write) plus the child's lifetime: the source's finish closes the pipe and waits for the command, and
 * fails naming it if it did not exit with status 0; a write that fails because the command exited names its
 * exit status as well; close reaps it, killing it first if it is still running after a cancel or an error. There is no return path: one_way is set.
 *
 * The child runs in its own process group, so that a cancel also kills what a shell started; it gets default
 * signal dispositions and an empty signal mask (the host ignores SIGPIPE, and `cat` must die of it as usual),
 * and no fd of ours but the pipe (posix_spawn closes everything from 3 on).
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "channel/channel-int.h"
#include "util/util.h"

extern char **environ;

/* A 1 MiB pipe moves data in fewer, larger steps than the default 64 KiB (shared/docs/PLATFORM.md). */
#define EXEC_PIPE_SIZE (1024 * 1024)
/* How long close waits for a command that should be exiting on its own before it is killed. */
#define EXEC_EXIT_GRACE_MS 2000

typedef struct ExecChannel {
    FerryFdChannel fdc; /* first: the generic fd channel does the I/O */
    char *command;      /* args joined with spaces, for messages */
    bool source;        /* true: we write the child's stdin; false: we read its stdout */
    bool saw_eof;
    FerryMutex lock; /* protects the fields below against shutdown from another thread */
    pid_t pid;
    bool reaped;
    bool killed;          /* we sent SIGKILL: its status is ours, not the command's */
    bool status_lost;     /* reaped by someone else (SIGCHLD ignored, a waitpid(-1) elsewhere): status unknown */
    int status;           /* waitpid status once reaped */
} ExecChannel;

static bool check_args(const FerryExecAddress *ea, const char *uri, FerryError **errp)
{
    if (!ea->args || ea->nargs == 0 || !ea->args[0] || !*ea->args[0]) {
        ferry_error_setg(errp, "Invalid exec address '%s': no command given", uri);
        return false;
    }
    return true;
}

/* Starts @ea with @child_end as its fd @target (0: stdin, 1: stdout). The destination's command gets
 * /dev/null as stdin, so that it cannot take input meant for a monitor on our stdin. */
static pid_t spawn(const FerryExecAddress *ea, const char *command, int child_end, int target, FerryError **errp)
{
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t attr;
    posix_spawn_file_actions_init(&fa);
    posix_spawnattr_init(&attr);
    /* dup2 clears close-on-exec on the target (glibc also does so when child_end == target). */
    posix_spawn_file_actions_adddup2(&fa, child_end, target);
    if (target != 0) {
        posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    }
    /* Everything of ours is O_CLOEXEC, but a host program's own fds need not be. */
    posix_spawn_file_actions_addclosefrom_np(&fa, 3);
    sigset_t none, defaults;
    sigemptyset(&none);
    sigemptyset(&defaults);
    static const int reset[] = { SIGPIPE, SIGINT, SIGQUIT, SIGHUP, SIGTERM, SIGCHLD, SIGUSR1, SIGUSR2 };
    for (size_t i = 0; i < FERRY_ARRAY_SIZE(reset); i++) {
        sigaddset(&defaults, reset[i]);
    }
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setsigdefault(&attr, &defaults);
    posix_spawnattr_setpgroup(&attr, 0);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETPGROUP);
    pid_t pid;
    int rc = posix_spawnp(&pid, ea->args[0], &fa, &attr, ea->args, environ);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
    if (rc != 0) {
        ferry_error_setg_errno(errp, rc, "Failed to start exec command '%s'", command);
        return -1;
    }
    return pid;
}

static void kill_locked(ExecChannel *ec)
{
    FERRY_ASSERT_HELD(&ec->lock);
    if (!ec->reaped && !ec->killed) {
        /* The whole group: a shell's children too. The leader is not reaped yet, so its pid (the group id)
         * cannot have been reused. */
        kill(-ec->pid, SIGKILL);
        ec->killed = true;
    }
}

/*
 * Waits until the child has exited and reaps it. @grace_ms < 0 waits as long as it takes (shutdown kills the
 * child, so that cannot hang a cancel); otherwise the child is killed after @grace_ms. The wait itself does not
 * reap (WNOWAIT), so that shutdown, which may run at the same time, never signals a reused pid.
 */
static void reap(ExecChannel *ec, int grace_ms)
{
    ferry__mutex_lock(&ec->lock);
    bool done = ec->reaped;
    ferry__mutex_unlock(&ec->lock);
    if (done) {
        return;
    }
    int64_t deadline = ferry__clock_ms() + (grace_ms > 0 ? grace_ms : 0);
    for (;;) {
        siginfo_t si;
        memset(&si, 0, sizeof(si));
        int flags = WEXITED | WNOWAIT | (grace_ms >= 0 ? WNOHANG : 0);
        if (waitid(P_PID, (id_t)ec->pid, &si, flags) < 0) {
            if (errno == EINTR) {
                continue;
            }
            break; /* ECHILD: someone else reaped it (a host with SIGCHLD ignored); nothing to wait for */
        }
        if (si.si_pid != 0) {
            break;
        }
        if (ferry__clock_ms() >= deadline) {
            ferry__mutex_lock(&ec->lock);
            kill_locked(ec);
            ferry__mutex_unlock(&ec->lock);
            grace_ms = -1; /* now wait for the kill to take effect */
            continue;
        }
        ferry__sleep_ns(10 * 1000 * 1000);
    }
    ferry__mutex_lock(&ec->lock);
    int status = 0;
    pid_t r;
    while ((r = waitpid(ec->pid, &status, 0)) < 0 && errno == EINTR) {
    }
    /* Not reaped by us: the status is gone, and "unknown" must never read as success. */
    ec->status_lost = r != ec->pid;
    ec->status = r == ec->pid ? status : 0;
    ec->reaped = true;
    ferry__mutex_unlock(&ec->lock);
}

/* The error for a child that did not exit with status 0, or true. */
static bool check_status(ExecChannel *ec, FerryError **errp)
{
    int st = ec->status;
    if (ec->status_lost) {
        ferry_error_setg(errp, "the exit status of exec command '%s' is unknown: the process was reaped elsewhere "
                         "(is SIGCHLD ignored?)", ec->command);
        return false;
    }
    if (WIFEXITED(st) && WEXITSTATUS(st) == 0) {
        return true;
    }
    if (WIFEXITED(st)) {
        ferry_error_setg(errp, "exec command '%s' exited with status %d", ec->command, WEXITSTATUS(st));
    } else if (WIFSIGNALED(st)) {
        ferry_error_setg(errp, "exec command '%s' was killed by signal %d (%s)%s", ec->command, WTERMSIG(st),
                         strsignal(WTERMSIG(st)), ec->killed ? " after the migration was stopped" : "");
    } else {
        ferry_error_setg(errp, "exec command '%s' ended with wait status 0x%x", ec->command, (unsigned)st);
    }
    return false;
}

/*
 * Whether the child has exited (or was reaped elsewhere), waiting up to @grace_ms for a command that should be
 * exiting on its own, and no longer once the channel is shut down. It does not reap (WNOWAIT): reap() does.
 */
static bool wait_exited(ExecChannel *ec, int grace_ms)
{
    int64_t deadline = ferry__clock_ms() + grace_ms;
    for (;;) {
        siginfo_t si;
        memset(&si, 0, sizeof(si));
        if (waitid(P_PID, (id_t)ec->pid, &si, WEXITED | WNOWAIT | WNOHANG) < 0) {
            if (errno == EINTR) {
                continue;
            }
            return true; /* ECHILD: reaped elsewhere; reap() records that its status is lost */
        }
        if (si.si_pid != 0) {
            return true;
        }
        if (ferry__clock_ms() >= deadline || ferry__fd_channel_is_shut(&ec->fdc.base)) {
            return false;
        }
        ferry__sleep_ns(5 * 1000 * 1000);
    }
}

static ssize_t exec_readv(FerryChannel *c, const struct iovec *iov, int iovcnt, FerryError **errp)
{
    ExecChannel *ec = (ExecChannel *)c;
    ssize_t n = ferry__fd_channel_readv(c, iov, iovcnt, errp);
    if (n == 0 && !ec->source) {
        /* The command closed its stdout, so it is exiting: a failed command is a better error than a stream
         * that ends early. One that keeps running without stdout is left to close. */
        ec->saw_eof = true;
        if (wait_exited(ec, EXEC_EXIT_GRACE_MS)) {
            reap(ec, -1);
            if (!check_status(ec, errp)) {
                return -1;
            }
        }
    }
    return n;
}

/* Whether nobody reads the pipe any more (poll reports POLLERR on a write end without readers): a write failed
 * because the command closed its stdin or exited, not because of a timeout or a shutdown. */
static bool reader_gone(int fd)
{
    struct pollfd p = { .fd = fd, .events = POLLOUT };
    return poll(&p, 1, 0) > 0 && (p.revents & POLLERR);
}

/*
 * The source's write. When it fails because the command stopped reading and the command has exited, the
 * command's exit status is the error ("exec command '...' exited with status 3"), not the pipe's "Broken pipe":
 * that is what the user has to fix. A command that exited with status 0 without reading everything is named
 * too; one that only closed its stdin and runs on keeps the write's error (close kills it).
 */
static ssize_t exec_writev(FerryChannel *c, const struct iovec *iov, int iovcnt, FerryError **errp)
{
    ExecChannel *ec = (ExecChannel *)c;
    FerryError *err = NULL;
    ssize_t n = ferry__fd_channel_writev(c, iov, iovcnt, &err);
    if (n < 0 && ec->source && !ferry__fd_channel_is_shut(c) && reader_gone(c->fd) &&
        wait_exited(ec, EXEC_EXIT_GRACE_MS)) {
        reap(ec, -1);
        FerryError *why = NULL;
        if (check_status(ec, &why)) {
            ferry_error_setg(&why, "exec command '%s' exited with status 0 before it had read the whole stream",
                             ec->command);
        }
        ferry_error_free(err);
        err = why;
    }
    ferry_error_propagate(errp, err);
    return n;
}

static void exec_shutdown(FerryChannel *c)
{
    ExecChannel *ec = (ExecChannel *)c;
    ferry__fd_channel_shutdown(c);
    /* Also ends a finish that waits for the command, and a command that would never exit. */
    ferry__mutex_lock(&ec->lock);
    kill_locked(ec);
    ferry__mutex_unlock(&ec->lock);
}

static bool exec_finish(FerryChannel *c, FerryError **errp)
{
    ExecChannel *ec = (ExecChannel *)c;
    if (!ec->source) {
        return true;
    }
    /* End of stream for the command: it finishes its work and exits. */
    if (c->fd >= 0) {
        close(c->fd);
        c->fd = -1;
    }
    reap(ec, -1);
    return check_status(ec, errp);
}

static void exec_close(FerryChannel *c)
{
    ExecChannel *ec = (ExecChannel *)c;
    ferry__fd_channel_close(c);
    ferry__mutex_lock(&ec->lock);
    bool was_reaped = ec->reaped;
    ferry__mutex_unlock(&ec->lock);
    if (!was_reaped) {
        /* A command that is done (end of its output seen, or the source closing without an error) gets a
         * moment to exit. After a shutdown it is killed already; a destination that stops reading before the
         * end has given up on it, so it is killed too (and its death is not news). */
        bool stopping = ferry__fd_channel_is_shut(c) || (!ec->source && !ec->saw_eof);
        reap(ec, stopping ? 0 : EXEC_EXIT_GRACE_MS);
        FerryError *err = NULL;
        if (!ec->killed && !check_status(ec, &err)) {
            ferry__log(FERRY_LOG_WARN, "%s", ferry_error_msg(err));
        }
        ferry_error_free(err);
    }
    ferry__mutex_destroy(&ec->lock);
    free(ec->command);
}

static const FerryChannelOps exec_ops = {
    .name = "exec",
    .readv = exec_readv,
    .writev = exec_writev,
    .shutdown = exec_shutdown,
    .close = exec_close,
    .finish = exec_finish,
    .set_timeout = ferry__fd_channel_set_timeout,
};

/* Starts the command with a pipe to its stdin (@source) or from its stdout, and wraps our end. */
static FerryChannel *exec_start(const FerryExecAddress *ea, const char *uri, bool source, FerryError **errp)
{
    if (!check_args(ea, uri, errp)) {
        return NULL;
    }
    char *command = ferry__exec_args_join(ea);
    int p[2];
    if (pipe2(p, O_CLOEXEC) < 0) {
        ferry_error_setg_errno(errp, errno, "Failed to start exec command '%s': cannot create a pipe", command);
        free(command);
        return NULL;
    }
    int ours = source ? p[1] : p[0];
    int theirs = source ? p[0] : p[1];
    (void)fcntl(ours, F_SETPIPE_SZ, EXEC_PIPE_SIZE); /* a hint: the default size works too */
    pid_t pid = spawn(ea, command, theirs, source ? 0 : 1, errp);
    close(theirs);
    if (pid < 0) {
        close(ours);
        free(command);
        return NULL;
    }
    ExecChannel *ec = ferry__xcalloc(1, sizeof(*ec));
    ferry__fd_channel_init(&ec->fdc, &exec_ops, ours, uri);
    ec->fdc.base.one_way = true;
    ec->command = command;
    ec->source = source;
    ec->pid = pid;
    ferry__mutex_init(&ec->lock);
    return &ec->fdc.base;
}

FerryChannel *ferry__exec_connect(const FerryExecAddress *ea, const char *uri, FerryError **errp)
{
    return exec_start(ea, uri, true, errp);
}

bool ferry__exec_listen(FerryListener *l, const FerryExecAddress *ea, FerryError **errp)
{
    /* Nothing to prepare: the command is started by accept, when the destination is ready to read. */
    return check_args(ea, l->uri, errp);
}

FerryChannel *ferry__exec_accept(FerryListener *l, const FerryExecAddress *ea, FerryError **errp)
{
    return exec_start(ea, l->uri, false, errp);
}
