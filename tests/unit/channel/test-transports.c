/*
 * Unit tests of the transports added behind the channel ops table (src/channel/unix.c abstract sockets, vsock.c,
 * fd.c, fdstore.c, exec.c, file.c, rdma.c, tcp.c's "to" and "keep-alive") and of the fd channel's pipe handling
 * in socket.c: data really moves through each, one_way is right, finish reports a failed command, shutdown
 * interrupts a blocked pipe write, a FIFO as a file: stream waits for its peer where cancel reaches it, and the
 * errors say what was wrong (special files refused, an exec command's exit status). Addresses are built by hand (not with the
 * URI parser, which has its own tests). vsock is tried and skipped with the kernel's reason when this machine has
 * no vsock transport.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <linux/vm_sockets.h>

#include <cmocka.h>

#include "test-helpers.h"

#include "channel/channel.h"
#include "util/util.h"

static char tmpdir[64];

static int setup(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/ferry-test-transports-XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    return rmdir(tmpdir);
}

/* ---- address builders ---- */

static FerryMigrationAddress *addr_new(FerryTransport t)
{
    FerryMigrationAddress *a = ferry__xcalloc(1, sizeof(*a));
    a->transport = t;
    return a;
}

static FerryMigrationAddress *unix_addr(const char *path, bool abstract)
{
    FerryMigrationAddress *a = addr_new(FERRY_TRANSPORT_SOCKET);
    a->socket.type = FERRY_SOCKET_UNIX;
    a->socket.un.path = ferry__xstrdup(path);
    a->socket.un.has_abstract = abstract;
    a->socket.un.abstract = abstract;
    return a;
}

static FerryMigrationAddress *inet_address(const char *host, const char *port)
{
    FerryMigrationAddress *a = addr_new(FERRY_TRANSPORT_SOCKET);
    a->socket.type = FERRY_SOCKET_INET;
    a->socket.inet.host = ferry__xstrdup(host);
    a->socket.inet.port = ferry__xstrdup(port);
    return a;
}

static FerryMigrationAddress *fd_addr(const char *str)
{
    FerryMigrationAddress *a = addr_new(FERRY_TRANSPORT_SOCKET);
    a->socket.type = FERRY_SOCKET_FD;
    a->socket.fd.str = ferry__xstrdup(str);
    return a;
}

static FerryMigrationAddress *fd_num_addr(int fd)
{
    char buf[16];
    snprintf(buf, sizeof(buf), "%d", fd);
    return fd_addr(buf);
}

static FerryMigrationAddress *exec_addr(const char *shell_cmd)
{
    FerryMigrationAddress *a = addr_new(FERRY_TRANSPORT_EXEC);
    a->exec.nargs = 3;
    a->exec.args = ferry__xcalloc(4, sizeof(char *));
    a->exec.args[0] = ferry__xstrdup("/bin/sh");
    a->exec.args[1] = ferry__xstrdup("-c");
    a->exec.args[2] = ferry__xstrdup(shell_cmd);
    return a;
}

static FerryMigrationAddress *file_addr(const char *name, uint64_t offset)
{
    FerryMigrationAddress *a = addr_new(FERRY_TRANSPORT_FILE);
    a->file.filename = ferry__xstrdup(name);
    a->file.offset = offset;
    return a;
}

/* ---- helpers ---- */

static FerryChannel *connect_ok(const FerryMigrationAddress *a)
{
    FerryError *err = NULL;
    FerryChannel *c = ferry__channel_connect(a, -1, &err);
    if (!c) {
        print_error("connect: %s\n", ferry_error_msg(err));
        fail();
    }
    return c;
}

static FerryListener *listen_ok(const FerryMigrationAddress *a)
{
    FerryError *err = NULL;
    FerryListener *l = ferry__listener_new(a, &err);
    if (!l) {
        print_error("listen: %s\n", ferry_error_msg(err));
        fail();
    }
    return l;
}

static FerryChannel *accept_ok(FerryListener *l)
{
    FerryError *err = NULL;
    FerryChannel *c = ferry__listener_accept(l, &err);
    if (!c) {
        print_error("accept: %s\n", ferry_error_msg(err));
        fail();
    }
    return c;
}

/* Sends a message from @a to @b and checks it arrives whole. */
static void check_flow(FerryChannel *a, FerryChannel *b, const char *msg)
{
    size_t len = strlen(msg);
    char buf[256];
    assert_true(len < sizeof(buf));
    assert_true(ferry__channel_write_all(a, msg, len, NULL));
    assert_true(ferry__channel_read_all(b, buf, len, NULL));
    assert_memory_equal(buf, msg, len);
}

static char *tmp_path(const char *name)
{
    return ferry__xasprintf("%s/%s", tmpdir, name);
}

static void write_file(const char *path, const char *content)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(fwrite(content, 1, strlen(content), f), strlen(content));
    assert_int_equal(fclose(f), 0);
}

/* The whole content of @path (NUL-terminated); caller frees. */
static char *read_file(const char *path, size_t *len_out)
{
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    size_t cap = 4096, len = 0;
    char *buf = ferry__xmalloc(cap);
    size_t n;
    while ((n = fread(buf + len, 1, cap - len - 1, f)) > 0) {
        len += n;
        if (cap - len - 1 == 0) {
            cap *= 2;
            buf = ferry__xrealloc(buf, cap);
        }
    }
    fclose(f);
    buf[len] = '\0';
    if (len_out) {
        *len_out = len;
    }
    return buf;
}

static bool fd_is_open(int fd)
{
    return fcntl(fd, F_GETFD) >= 0;
}

/* ---- unix abstract ---- */

static void test_unix_abstract(void **state)
{
    (void)state;
    char name[64];
    snprintf(name, sizeof(name), "ferry-test-abstract-%d", (int)getpid());
    FerryMigrationAddress *a = unix_addr(name, true);
    FerryListener *l = listen_ok(a);

    /* No file appears anywhere for an abstract name, and the listener reports it as abstract. */
    struct stat st;
    assert_int_equal(lstat(name, &st), -1);
    json_t *addrs = ferry__listener_addresses(l);
    assert_int_equal(json_array_size(addrs), 1);
    json_t *a0 = json_array_get(addrs, 0);
    assert_string_equal(json_string_value(json_object_get(a0, "type")), "unix");
    assert_string_equal(json_string_value(json_object_get(a0, "path")), name);
    assert_true(json_is_true(json_object_get(a0, "abstract")));
    json_decref(addrs);

    FerryChannel *c = connect_ok(a);
    FerryChannel *s = accept_ok(l);
    assert_false(c->one_way);
    check_flow(c, s, "to the destination");
    check_flow(s, c, "and back");
    ferry__channel_free(c);
    ferry__channel_free(s);
    ferry__listener_free(l);

    /* The name is free again once the listener is gone; a path-based socket of that name is another address. */
    FerryError *err = NULL;
    assert_null(ferry__channel_connect(a, -1, &err));
    assert_msg_contains(err, "Connection refused");
    ferry_error_free(err);
    ferry__address_free(a);
}

/* ---- fd store ---- */

static void test_fdstore(void **state)
{
    (void)state;
    int p1[2], p2[2];
    assert_int_equal(pipe2(p1, O_CLOEXEC), 0);
    assert_int_equal(pipe2(p2, O_CLOEXEC), 0);
    FerryError *err = NULL;

    assert_true(ferry__fdstore_add("store-a", p1[0], &err));
    /* Replacing closes the old fd, as QEMU's getfd does. */
    assert_true(ferry__fdstore_add("store-a", p2[0], &err));
    assert_false(fd_is_open(p1[0]));
    assert_true(fd_is_open(p2[0]));
    assert_int_equal(ferry__fdstore_take("store-a"), p2[0]);
    assert_int_equal(ferry__fdstore_take("store-a"), -1);

    /* closefd closes it; a second closefd does not find it. */
    assert_true(ferry__fdstore_add("store-b", p2[0], &err));
    assert_true(ferry__fdstore_close("store-b", &err));
    assert_false(fd_is_open(p2[0]));
    assert_false(ferry__fdstore_close("store-b", &err));
    assert_msg_contains(err, "File descriptor named 'store-b' not found");
    ferry_error_free(err);
    err = NULL;
    assert_int_equal(ferry__fdstore_take("never-added"), -1);

    /* Bad names: the fd stays the caller's. */
    assert_false(ferry__fdstore_add("", p1[1], &err));
    assert_msg_contains(err, "empty");
    ferry_error_free(err);
    err = NULL;
    assert_false(ferry__fdstore_add("3abc", p1[1], &err));
    assert_msg_contains(err, "'3abc'");
    assert_msg_contains(err, "digit");
    ferry_error_free(err);
    err = NULL;
    assert_true(fd_is_open(p1[1]));

    /* Many names at once: the store grows and keeps each one apart. */
    int fds[20];
    for (int i = 0; i < 20; i++) {
        char name[16];
        snprintf(name, sizeof(name), "many-%d", i);
        fds[i] = dup(p1[1]);
        assert_true(ferry__fdstore_add(name, fds[i], NULL));
    }
    for (int i = 19; i >= 0; i--) {
        char name[16];
        snprintf(name, sizeof(name), "many-%d", i);
        assert_int_equal(ferry__fdstore_take(name), fds[i]);
        close(fds[i]);
    }

    /* The store's bounds: a name longer than FERRY_FDSTORE_MAX_NAME, or one name more than FERRY_FDSTORE_MAX, is
     * refused and the fd stays the caller's; replacing a name that exists is still allowed when the store is full. */
    char longname[FERRY_FDSTORE_MAX_NAME + 2];
    memset(longname, 'n', sizeof(longname) - 1);
    longname[sizeof(longname) - 1] = '\0';
    assert_false(ferry__fdstore_add(longname, p1[1], &err));
    assert_msg_contains(err, "longer than 255 bytes");
    ferry_error_free(err);
    err = NULL;
    longname[FERRY_FDSTORE_MAX_NAME] = '\0';
    int held = dup(p1[1]);
    assert_true(ferry__fdstore_add(longname, held, &err));
    assert_int_equal(ferry__fdstore_take(longname), held);
    close(held);
    for (int i = 0; i < FERRY_FDSTORE_MAX; i++) {
        char name[16];
        snprintf(name, sizeof(name), "full-%d", i);
        /* Every name holds the same fd number: the store does not look at it, and nothing is used here. */
        assert_true(ferry__fdstore_add(name, 1000000 + i, &err));
    }
    assert_false(ferry__fdstore_add("one-more", p1[1], &err));
    assert_msg_contains(err, "1024 named file descriptors are held already");
    ferry_error_free(err);
    err = NULL;
    assert_true(fd_is_open(p1[1]));
    /* (The replaced number is closed, which for a number nothing holds is a harmless EBADF.) */
    assert_true(ferry__fdstore_add("full-0", 2000000, &err));
    assert_int_equal(ferry__fdstore_take("full-0"), 2000000);
    for (int i = 1; i < FERRY_FDSTORE_MAX; i++) {
        char name[16];
        snprintf(name, sizeof(name), "full-%d", i);
        assert_int_equal(ferry__fdstore_take(name), 1000000 + i);
    }
    close(p1[1]);
    close(p2[1]);
}

/* ---- fd ---- */

static void test_fd_by_name(void **state)
{
    (void)state;
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    assert_true(ferry__fdstore_add("mig-src", sv[0], NULL));
    assert_true(ferry__fdstore_add("mig-dst", sv[1], NULL));

    FerryMigrationAddress *src = fd_addr("mig-src");
    FerryMigrationAddress *dst = fd_addr("mig-dst");
    FerryChannel *c = connect_ok(src);
    FerryListener *l = listen_ok(dst);
    json_t *addrs = ferry__listener_addresses(l);
    assert_string_equal(json_string_value(json_object_get(json_array_get(addrs, 0), "type")), "fd");
    assert_string_equal(json_string_value(json_object_get(json_array_get(addrs, 0), "str")), "mig-dst");
    json_decref(addrs);
    FerryChannel *s = accept_ok(l);
    /* A socket gives a return path. */
    assert_false(c->one_way);
    assert_false(s->one_way);
    assert_string_equal(c->ops->name, "fd");
    check_flow(c, s, "over a named fd");
    check_flow(s, c, "the acknowledgement");

    /* The only channel of an fd listener is handed out once. */
    FerryError *err = NULL;
    assert_null(ferry__listener_accept(l, &err));
    assert_msg_contains(err, "accepted already");
    ferry_error_free(err);
    err = NULL;

    /* Taking moved the fds out of the store. */
    assert_null(ferry__channel_connect(src, -1, &err));
    assert_msg_contains(err, "File descriptor named 'mig-src' has not been found");
    ferry_error_free(err);
    err = NULL;
    assert_null(ferry__listener_new(dst, &err));
    assert_msg_contains(err, "File descriptor named 'mig-dst' has not been found");
    ferry_error_free(err);

    ferry__channel_free(c);
    ferry__channel_free(s);
    ferry__listener_free(l);
    ferry__address_free(src);
    ferry__address_free(dst);
}

static void test_fd_by_number(void **state)
{
    (void)state;
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0); /* inherited fds need not be O_CLOEXEC */
    FerryMigrationAddress *a = fd_num_addr(sv[0]);
    FerryChannel *c = connect_ok(a);
    assert_int_equal(c->fd, sv[0]);
    assert_false(c->one_way);
    /* The channel owns it now, and keeps it from children. */
    assert_true(fcntl(sv[0], F_GETFD) & FD_CLOEXEC);
    FerryChannel *peer = ferry__channel_new_fd(sv[1], "peer");
    assert_non_null(peer);
    check_flow(c, peer, "by number");
    check_flow(peer, c, "back by number");
    ferry__channel_free(c);
    assert_false(fd_is_open(sv[0]));

    /* A number that is not open is an error that names it. */
    FerryError *err = NULL;
    assert_null(ferry__channel_connect(a, -1, &err));
    char want[64];
    snprintf(want, sizeof(want), "File descriptor %d of", sv[0]);
    assert_msg_contains(err, want);
    assert_msg_contains(err, "not open");
    ferry_error_free(err);
    ferry__channel_free(peer);
    ferry__address_free(a);
}

typedef struct BlockedWrite {
    FerryChannel *c;
    bool ok;
    FerryError *err;
} BlockedWrite;

/* Writes far more than a pipe holds, so that the write blocks until the reader reads or shutdown comes. */
static void *blocked_write(void *arg)
{
    BlockedWrite *bw = arg;
    size_t len = 8 * 1024 * 1024;
    char *buf = ferry__xcalloc(1, len);
    bw->ok = ferry__channel_write_all(bw->c, buf, len, &bw->err);
    free(buf);
    return NULL;
}

static void test_fd_pipe(void **state)
{
    (void)state;
    int p[2];
    assert_int_equal(pipe(p), 0);
    FerryMigrationAddress *wa = fd_num_addr(p[1]);
    FerryMigrationAddress *ra = fd_num_addr(p[0]);
    FerryChannel *w = connect_ok(wa);
    FerryListener *l = listen_ok(ra);
    FerryChannel *r = accept_ok(l);
    ferry__listener_free(l); /* the accepted channel lives on without its listener */
    /* A pipe has no return path. */
    assert_true(w->one_way);
    assert_true(r->one_way);
    check_flow(w, r, "down the pipe");

    /* A writer blocked on a full pipe is released by shutdown from another thread. */
    BlockedWrite bw = { .c = w };
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, blocked_write, &bw), 0);
    ferry__sleep_ns(100 * 1000 * 1000);
    ferry__channel_shutdown(w);
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_false(bw.ok);
    assert_msg_contains(bw.err, "shut down");
    ferry_error_free(bw.err);
    ferry__channel_free(w);

    /* The reader sees the end of the stream after what was buffered. */
    char buf[65536];
    ssize_t n;
    while ((n = ferry__channel_read(r, buf, sizeof(buf), NULL)) > 0) {
    }
    assert_int_equal(n, 0);
    ferry__channel_free(r);

    /* A writer whose reader is gone gets EPIPE, not SIGPIPE (which would kill this test: it is not ignored). */
    assert_int_equal(pipe(p), 0);
    close(p[0]);
    FerryChannel *lone = ferry__channel_new_fd(p[1], "lonely pipe");
    assert_non_null(lone);
    FerryError *err = NULL;
    assert_false(ferry__channel_write_all(lone, "x", 1, &err));
    assert_msg_contains(err, "Broken pipe");
    ferry_error_free(err);
    ferry__channel_free(lone);

    ferry__address_free(wa);
    ferry__address_free(ra);
}

/* ---- exec ---- */

static void test_exec_source(void **state)
{
    (void)state;
    char *out = tmp_path("exec-out");
    char *cmd = ferry__xasprintf("cat > '%s'", out);
    FerryMigrationAddress *a = exec_addr(cmd);
    FerryChannel *c = connect_ok(a);
    assert_true(c->one_way);
    assert_string_equal(c->ops->name, "exec");
    /* More than a pipe holds, so that the child must really read while we write. */
    size_t len = 3 * 1024 * 1024 + 17;
    char *data = ferry__xmalloc(len);
    for (size_t i = 0; i < len; i++) {
        data[i] = (char)('a' + i % 26);
    }
    assert_true(ferry__channel_write_all(c, data, len, NULL));
    FerryError *err = NULL;
    assert_true(ferry__channel_finish(c, &err));
    ferry__channel_free(c);
    size_t got_len;
    char *got = read_file(out, &got_len);
    assert_int_equal(got_len, len);
    assert_memory_equal(got, data, len);
    free(got);
    free(data);
    unlink(out);
    ferry__address_free(a);
    free(cmd);
    free(out);
}

static void test_exec_source_fails(void **state)
{
    (void)state;
    FerryMigrationAddress *a = exec_addr("cat > /dev/null; exit 3");
    FerryChannel *c = connect_ok(a);
    assert_true(ferry__channel_write_all(c, "some stream", 11, NULL));
    FerryError *err = NULL;
    assert_false(ferry__channel_finish(c, &err));
    assert_msg_contains(err, "exec command '/bin/sh -c cat > /dev/null; exit 3' exited with status 3");
    ferry_error_free(err);
    ferry__channel_free(c);
    ferry__address_free(a);

    /* A command that exits without reading: the write fails, and its error is the exit status, not the pipe's
     * "Broken pipe". One that exits with status 0 early is named too. */
    const char *cmds[] = { "exit 3", "exit 0" };
    const char *want[] = { "exec command '/bin/sh -c exit 3' exited with status 3",
                           "exec command '/bin/sh -c exit 0' exited with status 0 before it had read the whole stream" };
    for (size_t i = 0; i < 2; i++) {
        a = exec_addr(cmds[i]);
        c = connect_ok(a);
        BlockedWrite bw = { .c = c };
        blocked_write(&bw);
        assert_false(bw.ok);
        assert_msg_contains(bw.err, want[i]);
        ferry_error_free(bw.err);
        ferry__channel_free(c);
        ferry__address_free(a);
    }

    /* A program that does not exist fails at the start, naming it. */
    a = addr_new(FERRY_TRANSPORT_EXEC);
    a->exec.nargs = 1;
    a->exec.args = ferry__xcalloc(2, sizeof(char *));
    a->exec.args[0] = ferry__xstrdup("/nonexistent/ferry-no-such-program");
    err = NULL;
    assert_null(ferry__channel_connect(a, -1, &err));
    assert_msg_contains(err, "Failed to start exec command '/nonexistent/ferry-no-such-program'");
    assert_msg_contains(err, "No such file");
    ferry_error_free(err);
    ferry__address_free(a);
}

/* A host that ignores SIGCHLD has its children reaped by the kernel: the command's exit status is lost, and
 * an unknown status must not be taken for success (the end of an exec: stream is the source's commit point). */
static void test_exec_status_lost(void **state)
{
    (void)state;
    struct sigaction ign = { .sa_handler = SIG_IGN }, old;
    sigemptyset(&ign.sa_mask);
    assert_int_equal(sigaction(SIGCHLD, &ign, &old), 0);
    FerryMigrationAddress *a = exec_addr("cat > /dev/null; exit 3");
    FerryChannel *c = connect_ok(a);
    assert_true(ferry__channel_write_all(c, "some stream", 11, NULL));
    FerryError *err = NULL;
    bool ok = ferry__channel_finish(c, &err);
    ferry__channel_free(c);
    ferry__address_free(a);
    /* The destination: the end of the command's output is not taken for a clean end either, and it does not
     * wait out the exit grace period for a process it can no longer see. */
    a = exec_addr("printf partial");
    FerryListener *l = listen_ok(a);
    c = accept_ok(l);
    ferry__listener_free(l);
    char buf[32];
    FerryError *rerr = NULL;
    int64_t start = ferry__clock_ms();
    ssize_t got = 0, n;
    while ((n = ferry__channel_read(c, buf, sizeof(buf), &rerr)) > 0) {
        got += n;
    }
    int64_t took = ferry__clock_ms() - start;
    ferry__channel_free(c);
    ferry__address_free(a);
    assert_int_equal(sigaction(SIGCHLD, &old, NULL), 0);
    assert_false(ok);
    assert_msg_contains(err, "the exit status of exec command '/bin/sh -c cat > /dev/null; exit 3' is unknown");
    ferry_error_free(err);
    assert_int_equal(got, 7);
    assert_int_equal(n, -1);
    assert_msg_contains(rerr, "the exit status of exec command '/bin/sh -c printf partial' is unknown");
    ferry_error_free(rerr);
    assert_true(took < 1500);
}

static void test_exec_source_cancel(void **state)
{
    (void)state;
    /* A command that never reads: the write blocks on the full pipe until shutdown kills the command. */
    FerryMigrationAddress *a = exec_addr("sleep 30");
    FerryChannel *c = connect_ok(a);
    BlockedWrite bw = { .c = c };
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, blocked_write, &bw), 0);
    ferry__sleep_ns(100 * 1000 * 1000);
    int64_t start = ferry__clock_ms();
    ferry__channel_shutdown(c);
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_false(bw.ok);
    assert_msg_contains(bw.err, "shut down");
    ferry_error_free(bw.err);
    /* The command was killed, and finish says so instead of waiting 30 s. */
    FerryError *err = NULL;
    assert_false(ferry__channel_finish(c, &err));
    assert_msg_contains(err, "was killed by signal 9");
    ferry_error_free(err);
    ferry__channel_free(c);
    assert_true(ferry__clock_ms() - start < 5000);
    ferry__address_free(a);
}

static void test_exec_destination(void **state)
{
    (void)state;
    char *in = tmp_path("exec-in");
    write_file(in, "a stream saved earlier");
    char *cmd = ferry__xasprintf("cat '%s'", in);
    FerryMigrationAddress *a = exec_addr(cmd);
    FerryListener *l = listen_ok(a);
    json_t *addrs = ferry__listener_addresses(l);
    assert_string_equal(json_string_value(json_object_get(json_array_get(addrs, 0), "transport")), "exec");
    json_decref(addrs);
    FerryChannel *c = accept_ok(l);
    ferry__listener_free(l);
    assert_true(c->one_way);
    char buf[64];
    assert_true(ferry__channel_read_all(c, buf, 22, NULL));
    assert_memory_equal(buf, "a stream saved earlier", 22);
    assert_int_equal(ferry__channel_read(c, buf, sizeof(buf), NULL), 0);
    ferry__channel_free(c);
    ferry__address_free(a);
    free(cmd);

    /* A command that fails: its status is the error, not an early end of stream. */
    a = exec_addr("printf partial; exit 2");
    l = listen_ok(a);
    c = accept_ok(l);
    ferry__listener_free(l);
    FerryError *err = NULL;
    assert_false(ferry__channel_read_all(c, buf, 20, &err));
    assert_msg_contains(err, "exited with status 2");
    ferry_error_free(err);
    ferry__channel_free(c);
    ferry__address_free(a);

    /* Shutdown before accept: the command is never started. */
    a = exec_addr("cat /dev/zero");
    l = listen_ok(a);
    ferry__listener_shutdown(l);
    err = NULL;
    assert_null(ferry__listener_accept(l, &err));
    assert_msg_contains(err, "cancelled");
    ferry_error_free(err);
    ferry__listener_free(l);

    /* A destination closed mid-stream kills an endless command instead of hanging. */
    l = listen_ok(a);
    c = accept_ok(l);
    ferry__listener_free(l);
    assert_true(ferry__channel_read_all(c, buf, sizeof(buf), NULL));
    int64_t start = ferry__clock_ms();
    ferry__channel_free(c);
    assert_true(ferry__clock_ms() - start < 5000);
    ferry__address_free(a);
    unlink(in);
    free(in);
}

/* ---- file ---- */

static void test_file(void **state)
{
    (void)state;
    char *path = tmp_path("saved");
    /* What lies before the offset is kept, what lies after it is replaced. */
    write_file(path, "HEADER:old stream that is much longer than the new one");
    FerryMigrationAddress *a = file_addr(path, 7);
    FerryChannel *c = connect_ok(a);
    assert_true(c->one_way);
    assert_string_equal(c->ops->name, "file");
    assert_true(ferry__channel_write_all(c, "new", 3, NULL));
    assert_true(ferry__channel_write_all(c, " stream", 7, NULL));
    assert_true(ferry__channel_finish(c, NULL));
    ferry__channel_free(c);
    char *got = read_file(path, NULL);
    assert_string_equal(got, "HEADER:new stream");
    free(got);

    /* Restoring reads from the same offset to the end. */
    FerryListener *l = listen_ok(a);
    json_t *addrs = ferry__listener_addresses(l);
    json_t *a0 = json_array_get(addrs, 0);
    assert_string_equal(json_string_value(json_object_get(a0, "transport")), "file");
    assert_string_equal(json_string_value(json_object_get(a0, "filename")), path);
    json_decref(addrs);
    FerryChannel *r = accept_ok(l);
    ferry__listener_free(l);
    assert_true(r->one_way);
    char buf[32];
    assert_true(ferry__channel_read_all(r, buf, 10, NULL));
    assert_memory_equal(buf, "new stream", 10);
    assert_int_equal(ferry__channel_read(r, buf, sizeof(buf), NULL), 0);
    /* After shutdown, reads fail and say why. */
    ferry__channel_shutdown(r);
    FerryError *err = NULL;
    assert_int_equal(ferry__channel_read(r, buf, sizeof(buf), &err), -1);
    assert_msg_contains(err, "shut down");
    ferry_error_free(err);
    ferry__channel_free(r);
    ferry__address_free(a);

    /* An offset beyond the end on the source leaves a hole; the file is created with mode 0600. */
    unlink(path);
    a = file_addr(path, 4096);
    c = connect_ok(a);
    assert_true(ferry__channel_write_all(c, "x", 1, NULL));
    assert_true(ferry__channel_finish(c, NULL));
    ferry__channel_free(c);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_size, 4097);
    assert_int_equal(st.st_mode & 0777, 0600);
    ferry__address_free(a);
    unlink(path);

    /* Errors name the file and the reason. */
    char *missing = tmp_path("no-such-dir/f");
    a = file_addr(missing, 0);
    err = NULL;
    assert_null(ferry__channel_connect(a, -1, &err));
    assert_msg_contains(err, missing);
    assert_msg_contains(err, "No such file or directory");
    ferry_error_free(err);
    err = NULL;
    assert_null(ferry__listener_new(a, &err));
    assert_msg_contains(err, missing);
    assert_msg_contains(err, "No such file or directory");
    ferry_error_free(err);
    ferry__address_free(a);
    free(missing);
    free(path);
}

/* ---- file: a FIFO, and special files ---- */

typedef struct Later {
    int efd;            /* written after 200 ms, if >= 0 */
    FerryListener *l;   /* else shut down after 200 ms */
} Later;

static void *fire_later(void *arg)
{
    Later *later = arg;
    ferry__sleep_ns(200 * 1000 * 1000);
    if (later->l) {
        ferry__listener_shutdown(later->l);
    } else {
        uint64_t one = 1;
        assert_int_equal(write(later->efd, &one, sizeof(one)), sizeof(one));
    }
    return NULL;
}

/* Runs @later in a thread while the caller blocks; the returned thread is joined by the caller. */
static pthread_t start_later(Later *later)
{
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, fire_later, later), 0);
    return t;
}

/*
 * A FIFO is a stream: the source waits for a reader until cancelled (it used to block in open() for ever, out of
 * cancel's reach); the destination's listen never blocks and its accept waits for a writer until the listener is
 * shut down; with both ends there, data flows and the reader sees the end of the stream when the writer closes.
 */
static void test_file_fifo(void **state)
{
    (void)state;
    char *path = tmp_path("fifo");
    assert_int_equal(mkfifo(path, 0600), 0);
    FerryMigrationAddress *a = file_addr(path, 0);

    int efd = eventfd(0, EFD_CLOEXEC);
    Later cancel = { .efd = efd };
    pthread_t t = start_later(&cancel);
    FerryError *err = NULL;
    int64_t start = ferry__clock_ms();
    assert_null(ferry__channel_connect(a, efd, &err));
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_true(ferry__clock_ms() - start < 3000);
    assert_msg_contains(err, "cancelled while waiting for a reader");
    ferry_error_free(err);
    close(efd);

    FerryListener *l = listen_ok(a);
    err = NULL;
    assert_null(ferry__listener_accept_timeout(l, 50, &err));
    assert_msg_contains(err, "no writer opened the FIFO within 50 ms");
    ferry_error_free(err);
    Later shut = { .efd = -1, .l = l };
    t = start_later(&shut);
    err = NULL;
    assert_null(ferry__listener_accept(l, &err));
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_msg_contains(err, "cancelled while waiting for a writer");
    ferry_error_free(err);
    ferry__listener_free(l);

    l = listen_ok(a);
    FerryChannel *w = connect_ok(a); /* a reader is there: no wait */
    assert_true(w->one_way);
    /* Accept sees the writer by its first bytes (an open alone does not show in poll on the read end). */
    assert_true(ferry__channel_write_all(w, "through ", 8, NULL));
    FerryChannel *r = accept_ok(l);
    ferry__listener_free(l);
    char first[8];
    assert_true(ferry__channel_read_all(r, first, sizeof(first), NULL));
    assert_memory_equal(first, "through ", 8);
    check_flow(w, r, "a FIFO");
    assert_true(ferry__channel_finish(w, NULL)); /* nothing to flush */
    ferry__channel_free(w);
    char buf[8];
    assert_int_equal(ferry__channel_read(r, buf, sizeof(buf), NULL), 0);
    ferry__channel_free(r);
    ferry__address_free(a);

    /* A FIFO cannot be positioned. */
    a = file_addr(path, 4096);
    err = NULL;
    assert_null(ferry__channel_connect(a, -1, &err));
    assert_msg_contains(err, "it is a FIFO, which cannot be positioned");
    ferry_error_free(err);
    ferry__address_free(a);
    unlink(path);
    free(path);
}

/* What cannot hold or carry a stream is refused naming what it is, on both ends, without waiting. */
static void test_file_special_refused(void **state)
{
    (void)state;
    char *sock_path = tmp_path("sock");
    int sfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sun = { .sun_family = AF_UNIX };
    assert_true(strlen(sock_path) < sizeof(sun.sun_path));
    memcpy(sun.sun_path, sock_path, strlen(sock_path) + 1);
    assert_int_equal(bind(sfd, (struct sockaddr *)&sun, sizeof(sun)), 0);
    assert_int_equal(listen(sfd, 1), 0);
    const char *paths[] = { "/dev/zero", tmpdir, sock_path };
    const char *what[] = { "it is a character device", "it is a directory", "it is a socket" };
    for (size_t i = 0; i < FERRY_ARRAY_SIZE(paths); i++) {
        FerryMigrationAddress *a = file_addr(paths[i], 0);
        FerryError *err = NULL;
        assert_null(ferry__channel_connect(a, -1, &err));
        assert_msg_contains(err, what[i]);
        assert_msg_contains(err, paths[i]);
        ferry_error_free(err);
        err = NULL;
        assert_null(ferry__listener_new(a, &err));
        assert_msg_contains(err, what[i]);
        ferry_error_free(err);
        ferry__address_free(a);
    }
    close(sfd);
    unlink(sock_path);
    free(sock_path);
}

/* ---- rdma ---- */

static void test_rdma(void **state)
{
    (void)state;
    FerryMigrationAddress *a = addr_new(FERRY_TRANSPORT_RDMA);
    a->rdma.host = ferry__xstrdup("192.0.2.1");
    a->rdma.port = ferry__xstrdup("4444");
    FerryError *err = NULL;
    assert_null(ferry__channel_connect(a, -1, &err));
    assert_msg_contains(err, "RDMA migration is not available");
    struct stat st;
    bool have_devices = false;
    if (stat("/sys/class/infiniband", &st) == 0) {
        /* A host with RDMA hardware gets the other reason; this machine has none. */
        have_devices = true;
    }
    if (!have_devices) {
        assert_msg_contains(err, "no RDMA device is present");
    }
    ferry_error_free(err);
    err = NULL;
    assert_null(ferry__listener_new(a, &err));
    assert_msg_contains(err, "RDMA migration is not available");
    ferry_error_free(err);
    ferry__address_free(a);
}

/* ---- vsock ---- */

static void test_vsock(void **state)
{
    (void)state;
    /* Probe with raw syscalls, so that a skip is decided by the kernel and never hides a ferry bug. */
    int fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        print_message("vsock skipped: socket(AF_VSOCK) failed: %s\n", strerror(errno));
        skip();
    }
    struct sockaddr_vm svm = { .svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_LOCAL, .svm_port = VMADDR_PORT_ANY };
    if (bind(fd, (struct sockaddr *)&svm, sizeof(svm)) < 0 || listen(fd, 1) < 0) {
        print_message("vsock skipped: no local (loopback) vsock transport: bind/listen: %s\n", strerror(errno));
        close(fd);
        skip();
    }
    socklen_t len = sizeof(svm);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&svm, &len), 0);
    int cfd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(cfd >= 0);
    if (connect(cfd, (struct sockaddr *)&svm, sizeof(svm)) < 0) {
        print_message("vsock skipped: no local (loopback) vsock transport: connect: %s\n", strerror(errno));
        close(cfd);
        close(fd);
        skip();
    }
    close(cfd);
    close(fd);

    /* The kernel can do it: ferry's vsock transport must work too. */
    FerryMigrationAddress *a = addr_new(FERRY_TRANSPORT_SOCKET);
    a->socket.type = FERRY_SOCKET_VSOCK;
    a->socket.vsock.cid = ferry__xasprintf("%u", VMADDR_CID_LOCAL);
    a->socket.vsock.port = ferry__xasprintf("%u", 20000 + (unsigned)getpid() % 20000);
    FerryListener *l = listen_ok(a);
    json_t *addrs = ferry__listener_addresses(l);
    assert_string_equal(json_string_value(json_object_get(json_array_get(addrs, 0), "type")), "vsock");
    json_decref(addrs);
    FerryChannel *c = connect_ok(a);
    FerryChannel *s = accept_ok(l);
    check_flow(c, s, "over vsock");
    check_flow(s, c, "and back over vsock");
    ferry__channel_free(c);
    ferry__channel_free(s);
    ferry__listener_free(l);
    ferry__address_free(a);
}

/* ---- tcp options ---- */

static char *listener_port(FerryListener *l)
{
    json_t *addrs = ferry__listener_addresses(l);
    char *port = ferry__xstrdup(json_string_value(json_object_get(json_array_get(addrs, 0), "port")));
    json_decref(addrs);
    return port;
}

static void test_tcp_to_and_keepalive(void **state)
{
    (void)state;
    /* Occupy a port, then ask for a range that starts there: the next free port of the range is taken. */
    FerryMigrationAddress *any = inet_address("127.0.0.1", "0");
    FerryListener *busy = listen_ok(any);
    char *busy_port = listener_port(busy);
    unsigned p = (unsigned)atoi(busy_port);
    assert_true(p > 0 && p < 65000);

    char port_str[16];
    snprintf(port_str, sizeof(port_str), "%u", p);
    FerryMigrationAddress *ranged = inet_address("127.0.0.1", port_str);
    ranged->socket.inet.has_to = true;
    ranged->socket.inet.to = (uint16_t)(p + 20);
    ranged->socket.inet.has_keep_alive = true;
    ranged->socket.inet.keep_alive = true;
    FerryListener *l = listen_ok(ranged);
    char *got_port = listener_port(l);
    unsigned q = (unsigned)atoi(got_port);
    assert_true(q > p && q <= p + 20);

    FerryMigrationAddress *dst = inet_address("127.0.0.1", got_port);
    dst->socket.inet.has_keep_alive = true;
    dst->socket.inet.keep_alive = true;
    FerryChannel *c = connect_ok(dst);
    FerryChannel *s = accept_ok(l);
    int on = 0;
    socklen_t len = sizeof(on);
    assert_int_equal(getsockopt(c->fd, SOL_SOCKET, SO_KEEPALIVE, &on, &len), 0);
    assert_int_equal(on, 1);
    /* The accepted side gets it from the listening address too. */
    on = 0;
    assert_int_equal(getsockopt(s->fd, SOL_SOCKET, SO_KEEPALIVE, &on, &len), 0);
    assert_int_equal(on, 1);
    check_flow(c, s, "ranged");
    ferry__channel_free(c);
    ferry__channel_free(s);
    ferry__listener_free(l);

    /* A range whose only port is busy fails naming the address; "to" below the port is refused. */
    FerryMigrationAddress *only = inet_address("127.0.0.1", port_str);
    only->socket.inet.has_to = true;
    only->socket.inet.to = (uint16_t)p;
    FerryError *err = NULL;
    assert_null(ferry__listener_new(only, &err));
    assert_msg_contains(err, "Address already in use");
    ferry_error_free(err);
    err = NULL;
    only->socket.inet.to = (uint16_t)(p - 1);
    assert_null(ferry__listener_new(only, &err));
    assert_msg_contains(err, "'to'");
    ferry_error_free(err);

    /* "numeric": a name is never looked up. */
    FerryMigrationAddress *named = inet_address("localhost", "0");
    named->socket.inet.has_numeric = true;
    named->socket.inet.numeric = true;
    err = NULL;
    assert_null(ferry__listener_new(named, &err));
    assert_msg_contains(err, "Failed to resolve 'localhost'");
    ferry_error_free(err);

    ferry__listener_free(busy);
    ferry__address_free(named);
    ferry__address_free(only);
    ferry__address_free(dst);
    ferry__address_free(ranged);
    ferry__address_free(any);
    free(busy_port);
    free(got_port);
}

static void test_finish_without_op(void **state)
{
    (void)state;
    /* Sockets have no finish step: finish succeeds and the channel stays usable. */
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    FerryChannel *a = ferry__channel_new_fd(sv[0], "a");
    FerryChannel *b = ferry__channel_new_fd(sv[1], "b");
    assert_true(ferry__channel_finish(a, NULL));
    check_flow(a, b, "after finish");
    ferry__channel_free(a);
    ferry__channel_free(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_unix_abstract),
        cmocka_unit_test(test_fdstore),
        cmocka_unit_test(test_fd_by_name),
        cmocka_unit_test(test_fd_by_number),
        cmocka_unit_test(test_fd_pipe),
        cmocka_unit_test(test_exec_source),
        cmocka_unit_test(test_exec_source_fails),
        cmocka_unit_test(test_exec_source_cancel),
        cmocka_unit_test(test_exec_status_lost),
        cmocka_unit_test(test_exec_destination),
        cmocka_unit_test(test_file),
        cmocka_unit_test(test_file_fifo),
        cmocka_unit_test(test_file_special_refused),
        cmocka_unit_test(test_rdma),
        cmocka_unit_test(test_vsock),
        cmocka_unit_test(test_tcp_to_and_keepalive),
        cmocka_unit_test(test_finish_without_op),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
