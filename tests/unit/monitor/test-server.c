/*
 * Unit tests of the QMP socket server (src/monitor/qmp-server.c): the monitor loop runs on a thread and the tests
 * talk to it through real UNIX sockets as clients would: the greeting bytes, the socket mode, the negotiation rule,
 * several clients, events reaching only negotiated clients, requests split across writes and several in one write,
 * a character cut in two, garbage followed by a valid request, the input cap, a client that never reads, clients
 * that vanish, and quit; getfd/closefd with fds passed as SCM_RIGHTS, counting the process's open fds so that an
 * fd nobody took cannot leak, each getfd naming its own fd however the input is cut into reads (the monitor is
 * held while the client sends, so the cuts are the same every run), and fds per connection, names per process;
 * the human monitor on a socket; the bounds of the socket side: the socket's mode whatever the umask, at most
 * FERRY_MONITOR_MAX_CLIENTS clients (one more is told why and closed), and a process out of fds (the connection
 * is refused, the loop does not spin). Every read has a timeout so that a bug fails the test instead of hanging
 * it.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "channel/channel.h"
#include "monitor/monitor.h"
#include "util/util.h"

#define READ_TIMEOUT_MS 5000

typedef struct Server {
    FerryMonitor *mon;
    pthread_t thread;
    int status;
    char dir[64];
    char path[128];
} Server;

typedef struct Client {
    int fd;
    char buf[1 << 16];
    size_t len;
} Client;

static json_t *cmd_echo(json_t *args, void *opaque, FerryError **errp)
{
    return json_deep_copy(args);
}

/* "hold" blocks the monitor thread until the test writes a byte to hold_release[1]: input sent meanwhile waits in
 * the socket, so the reads that follow split it exactly where the kernel does (after each message with fds), not
 * where the scheduler happens to. hold_started[0] becomes readable once the monitor is held. */
static int hold_started[2] = { -1, -1 };
static int hold_release[2] = { -1, -1 };

static json_t *cmd_hold(json_t *args, void *opaque, FerryError **errp)
{
    char b = 0;
    assert_int_equal(write(hold_started[1], &b, 1), 1);
    assert_int_equal(read(hold_release[0], &b, 1), 1);
    return json_object();
}

static void *run_thread(void *opaque)
{
    Server *s = opaque;
    s->status = ferry__monitor_run(s->mon);
    return NULL;
}

static void server_start(Server *s)
{
    static const FerryArgSpec echo_args[] = { { "s", FERRY_ARG_STR, false }, { NULL, FERRY_ARG_ANY, false } };
    strcpy(s->dir, "/tmp/ferry-test-monitor-XXXXXX");
    assert_non_null(mkdtemp(s->dir));
    snprintf(s->path, sizeof(s->path), "%s/qmp.sock", s->dir);
    char spec[200];
    snprintf(spec, sizeof(spec), "unix:%s,server=on,wait=off", s->path);
    s->mon = ferry__monitor_new();
    FerryError *err = NULL;
    assert_true(ferry__monitor_register(s->mon, "echo", echo_args, cmd_echo, NULL, &err));
    assert_true(ferry__monitor_register(s->mon, "hold", NULL, cmd_hold, NULL, &err));
    if (hold_started[0] < 0) {
        /* Kept for the whole run, so that the tests' fd counts do not see them come and go. */
        assert_int_equal(pipe(hold_started), 0);
        assert_int_equal(pipe(hold_release), 0);
    }
    if (!ferry__monitor_add_qmp(s->mon, spec, &err)) {
        fail_msg("add_qmp: %s", ferry_error_msg(err));
    }
    assert_int_equal(pthread_create(&s->thread, NULL, run_thread, s), 0);
}

static int server_stop(Server *s, int status)
{
    ferry__monitor_request_quit(s->mon, status);
    assert_int_equal(pthread_join(s->thread, NULL), 0);
    ferry__monitor_free(s->mon);
    /* The monitor removes its socket file. */
    assert_int_equal(access(s->path, F_OK), -1);
    rmdir(s->dir);
    return s->status;
}

static Client *client_connect(Server *s)
{
    Client *c = calloc(1, sizeof(*c));
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    strcpy(sa.sun_path, s->path);
    c->fd = socket(AF_UNIX, SOCK_STREAM, 0);
    assert_true(c->fd >= 0);
    assert_int_equal(connect(c->fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    return c;
}

static void client_close(Client *c)
{
    close(c->fd);
    free(c);
}

static void client_write(Client *c, const char *data, size_t len)
{
    size_t done = 0;
    while (done < len) {
        ssize_t n = send(c->fd, data + done, len - done, MSG_NOSIGNAL);
        assert_true(n > 0);
        done += (size_t)n;
    }
}

static void client_send(Client *c, const char *text)
{
    client_write(c, text, strlen(text));
}

/* The next "\r\n"-terminated line as a string (caller frees), or NULL on EOF; fails the test on timeout. */
static char *client_read_line(Client *c)
{
    for (;;) {
        char *end = memmem(c->buf, c->len, "\r\n", 2);
        if (end) {
            size_t n = (size_t)(end - c->buf);
            char *line = strndup(c->buf, n);
            memmove(c->buf, end + 2, c->len - n - 2);
            c->len -= n + 2;
            return line;
        }
        if (c->len == sizeof(c->buf)) {
            fail_msg("line longer than %zu bytes", sizeof(c->buf));
        }
        struct pollfd pfd = { .fd = c->fd, .events = POLLIN };
        int r = poll(&pfd, 1, READ_TIMEOUT_MS);
        if (r == 0) {
            fail_msg("no message from the monitor within %d ms", READ_TIMEOUT_MS);
        }
        ssize_t n = read(c->fd, c->buf + c->len, sizeof(c->buf) - c->len);
        if (n <= 0) {
            return NULL;
        }
        c->len += (size_t)n;
    }
}

static json_t *client_read(Client *c)
{
    char *line = client_read_line(c);
    if (!line) {
        fail_msg("the monitor closed the connection");
    }
    json_error_t err;
    json_t *msg = json_loads(line, 0, &err);
    if (!msg) {
        fail_msg("bad JSON from the monitor: %s: %s", err.text, line);
    }
    free(line);
    return msg;
}

/* True if the monitor closes the connection (after any messages, which are dropped) within the timeout. */
static bool client_sees_eof(Client *c)
{
    for (;;) {
        char *line = client_read_line(c);
        if (!line) {
            return true;
        }
        free(line);
    }
}

/* Read one message and compare it with @want (JSON text). */
static void expect_msg(Client *c, const char *want_text)
{
    json_t *got = client_read(c);
    json_t *want = json_loads(want_text, 0, NULL);
    assert_non_null(want);
    if (!json_equal(got, want)) {
        char *g = json_dumps(got, 0);
        fail_msg("got  %s\nwant %s", g, want_text);
    }
    json_decref(got);
    json_decref(want);
}

static void expect_error_desc_prefix(Client *c, const char *cls, const char *prefix)
{
    json_t *got = client_read(c);
    json_t *error = json_object_get(got, "error");
    assert_non_null(error);
    assert_string_equal(json_string_value(json_object_get(error, "class")), cls);
    const char *desc = json_string_value(json_object_get(error, "desc"));
    assert_non_null(desc);
    if (strncmp(desc, prefix, strlen(prefix)) != 0) {
        fail_msg("desc '%s' does not start with '%s'", desc, prefix);
    }
    json_decref(got);
}

static const char greeting[] = "{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 0, \"minor\": 1, \"major\": 0}, "
                               "\"package\": \"ferry 0.1.0\"}, \"capabilities\": []}}";

static Client *connect_and_greet(Server *s)
{
    Client *c = client_connect(s);
    char *line = client_read_line(c);
    assert_non_null(line);
    assert_string_equal(line, greeting);
    free(line);
    return c;
}

static Client *connect_negotiated(Server *s)
{
    Client *c = connect_and_greet(s);
    client_send(c, "{\"execute\": \"qmp_capabilities\"}\r\n");
    expect_msg(c, "{\"return\": {}}");
    return c;
}

static void test_greeting_and_negotiation(void **state)
{
    Server s;
    server_start(&s);

    struct stat st;
    assert_int_equal(stat(s.path, &st), 0);
    assert_true(S_ISSOCK(st.st_mode));
    assert_int_equal(st.st_mode & 0777, 0600);

    Client *c = client_connect(&s);
    /* The exact bytes QEMU sends: one line, ", " and ": " separators, "\r\n". */
    char want[512];
    snprintf(want, sizeof(want), "%s\r\n", greeting);
    size_t got = 0;
    while (got < strlen(want)) {
        struct pollfd pfd = { .fd = c->fd, .events = POLLIN };
        assert_int_equal(poll(&pfd, 1, READ_TIMEOUT_MS), 1);
        ssize_t n = read(c->fd, c->buf + got, strlen(want) - got);
        assert_true(n > 0);
        got += (size_t)n;
    }
    assert_memory_equal(c->buf, want, strlen(want));

    client_send(c, "{\"execute\": \"query-version\", \"id\": 1}\r\n");
    expect_msg(c, "{\"error\": {\"class\": \"CommandNotFound\", \"desc\": \"Expecting capabilities negotiation "
                  "with 'qmp_capabilities'\"}, \"id\": 1}");
    client_send(c, "{\"execute\": \"qmp_capabilities\", \"id\": 2}\r\n");
    expect_msg(c, "{\"return\": {}, \"id\": 2}");
    client_send(c, "{\"execute\": \"qmp_capabilities\", \"id\": 3}\r\n");
    expect_msg(c, "{\"error\": {\"class\": \"CommandNotFound\", \"desc\": \"Capabilities negotiation is already "
                  "complete, command ignored\"}, \"id\": 3}");
    client_send(c, "{\"execute\": \"query-version\", \"id\": 4}\r\n");
    expect_msg(c, "{\"return\": {\"qemu\": {\"micro\": 0, \"minor\": 1, \"major\": 0}, \"package\": \"ferry "
                  "0.1.0\"}, \"id\": 4}");
    client_close(c);
    assert_int_equal(server_stop(&s, 0), 0);
}

static void expect_event(Client *c, const char *name, json_int_t n)
{
    json_t *ev = client_read(c);
    assert_string_equal(json_string_value(json_object_get(ev, "event")), name);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(ev, "data"), "n")), n);
    json_t *ts = json_object_get(ev, "timestamp");
    json_int_t sec = json_integer_value(json_object_get(ts, "seconds"));
    json_int_t usec = json_integer_value(json_object_get(ts, "microseconds"));
    /* A wall-clock timestamp of now, give or take a minute. */
    assert_true(sec > (json_int_t)time(NULL) - 60 && sec < (json_int_t)time(NULL) + 60);
    assert_true(usec >= 0 && usec < 1000000);
    json_decref(ev);
}

static void test_events_and_clients(void **state)
{
    Server s;
    server_start(&s);
    Client *a = connect_negotiated(&s);
    Client *b = connect_and_greet(&s);

    ferry__monitor_emit_event(s.mon, "TEST_EVENT", json_pack("{s:i}", "n", 1));
    /* Once a has it, the loop has delivered it; b, not negotiated, must not have got it: its next message is the
     * reply to its own request. */
    expect_event(a, "TEST_EVENT", 1);
    client_send(b, "{\"execute\": \"qmp_capabilities\", \"id\": \"b\"}");
    expect_msg(b, "{\"return\": {}, \"id\": \"b\"}");

    /* Events from another thread reach both now, in order; an event without data has no "data" member. */
    ferry__monitor_emit_event(s.mon, "TEST_EVENT", json_pack("{s:i}", "n", 2));
    ferry__monitor_emit_event(s.mon, "TEST_EVENT", json_pack("{s:i}", "n", 3));
    ferry__monitor_emit_event(s.mon, "BARE", NULL);
    expect_event(a, "TEST_EVENT", 2);
    expect_event(a, "TEST_EVENT", 3);
    expect_event(b, "TEST_EVENT", 2);
    expect_event(b, "TEST_EVENT", 3);
    json_t *bare = client_read(b);
    assert_string_equal(json_string_value(json_object_get(bare, "event")), "BARE");
    assert_null(json_object_get(bare, "data"));
    assert_non_null(json_object_get(bare, "timestamp"));
    json_decref(bare);
    json_decref(client_read(a));

    /* A client that vanishes in the middle of a request does not disturb the others. */
    Client *c = connect_negotiated(&s);
    client_send(c, "{\"execute\": \"echo\", \"argu");
    client_close(c);
    Client *d = connect_and_greet(&s);
    client_close(d); /* gone before reading anything but the greeting */
    client_send(a, "{\"execute\": \"echo\", \"arguments\": {\"s\": \"still here\"}}\n");
    expect_msg(a, "{\"return\": {\"s\": \"still here\"}}");
    client_send(b, "{\"execute\": \"echo\", \"arguments\": {\"s\": \"me too\"}}\n");
    expect_msg(b, "{\"return\": {\"s\": \"me too\"}}");

    client_close(a);
    client_close(b);
    assert_int_equal(server_stop(&s, 0), 0);
}

static void test_framing(void **state)
{
    Server s;
    server_start(&s);
    Client *c = connect_negotiated(&s);

    /* One request split across writes, with a pause so that the monitor really sees the halves apart. */
    client_send(c, "{\"execute\": \"echo\", \"argum");
    usleep(50000);
    client_send(c, "ents\": {\"s\": \"split\"}, \"id\"");
    usleep(50000);
    client_send(c, ": 1}");
    expect_msg(c, "{\"return\": {\"s\": \"split\"}, \"id\": 1}");

    /* Several in one write, with and without separators. */
    client_send(c, "{\"execute\": \"echo\", \"arguments\": {\"s\": \"a\"}, \"id\": 2}"
                   "{\"execute\": \"echo\", \"arguments\": {\"s\": \"b\"}, \"id\": 3}\r\n"
                   "  {\"execute\": \"echo\", \"arguments\": {\"s\": \"c\"}, \"id\": 4}\n");
    expect_msg(c, "{\"return\": {\"s\": \"a\"}, \"id\": 2}");
    expect_msg(c, "{\"return\": {\"s\": \"b\"}, \"id\": 3}");
    expect_msg(c, "{\"return\": {\"s\": \"c\"}, \"id\": 4}");

    /* A two-byte UTF-8 character cut between two writes is not a parse error. */
    client_send(c, "{\"execute\": \"echo\", \"arguments\": {\"s\": \"caf\xc3");
    usleep(50000);
    client_send(c, "\xa9\"}, \"id\": 5}");
    expect_msg(c, "{\"return\": {\"s\": \"caf\xc3\xa9\"}, \"id\": 5}");

    /* Byte counting, not character counting: a request with multi-byte characters followed by another. */
    client_send(c, "{\"execute\": \"echo\", \"arguments\": {\"s\": \"\xe2\x82\xac\xf0\x9d\x84\x9e\"}}"
                   "{\"execute\": \"echo\", \"arguments\": {\"s\": \"next\"}}");
    expect_msg(c, "{\"return\": {\"s\": \"\xe2\x82\xac\xf0\x9d\x84\x9e\"}}");
    expect_msg(c, "{\"return\": {\"s\": \"next\"}}");

    /* A non-object value is answered, not treated as a parse error. */
    client_send(c, "[1, 2]\n");
    expect_msg(c, "{\"error\": {\"class\": \"GenericError\", \"desc\": \"QMP input must be a JSON object\"}}");

    /* Garbage, then valid requests on the same connection: one parse error, then normal service. */
    client_send(c, "}} this is not json\r\n{\"execute\": \"echo\", \"arguments\": {\"s\": \"ok\"}, \"id\": 6}\r\n");
    expect_error_desc_prefix(c, "GenericError", "JSON parse error, ");
    expect_msg(c, "{\"return\": {\"s\": \"ok\"}, \"id\": 6}");
    client_send(c, "{\"execute\": \"echo\" \"oops\"}\n");
    expect_error_desc_prefix(c, "GenericError", "JSON parse error, ");
    client_send(c, "{\"execute\": \"echo\", \"arguments\": {\"s\": \"ok2\"}, \"id\": 7}");
    expect_msg(c, "{\"return\": {\"s\": \"ok2\"}, \"id\": 7}");

    client_close(c);
    assert_int_equal(server_stop(&s, 0), 0);
}

static void test_input_cap(void **state)
{
    Server s;
    server_start(&s);
    Client *big = connect_negotiated(&s);
    Client *other = connect_negotiated(&s);

    /* An unterminated string larger than the cap: an error, then the connection is closed. */
    size_t len = FERRY_MONITOR_MAX_INPUT + 128 * 1024;
    char *data = malloc(len);
    memset(data, 'a', len);
    static const char prefix[] = "{\"execute\": \"echo\", \"arguments\": {\"s\": \"";
    memcpy(data, prefix, strlen(prefix));
    size_t done = 0;
    while (done < len) {
        ssize_t n = send(big->fd, data + done, len - done, MSG_NOSIGNAL);
        if (n <= 0) {
            break; /* the monitor may close before it has read everything */
        }
        done += (size_t)n;
    }
    free(data);
    expect_error_desc_prefix(big, "GenericError", "QMP input exceeds 1048576 bytes");
    assert_true(client_sees_eof(big));

    client_send(other, "{\"execute\": \"echo\", \"arguments\": {\"s\": \"fine\"}}\n");
    expect_msg(other, "{\"return\": {\"s\": \"fine\"}}");
    client_close(big);
    client_close(other);
    assert_int_equal(server_stop(&s, 0), 0);
}

static void test_slow_client(void **state)
{
    Server s;
    server_start(&s);
    Client *slow = connect_negotiated(&s);
    Client *a = connect_negotiated(&s);

    /* Far more event data than a socket buffer holds: the client that never reads must not block the loop. */
    char payload[4096];
    memset(payload, 'p', sizeof(payload) - 1);
    payload[sizeof(payload) - 1] = '\0';
    enum { N = 1000 };
    for (int i = 0; i < N; i++) {
        ferry__monitor_emit_event(s.mon, "BULK", json_pack("{s:i, s:s}", "n", i, "p", payload));
    }
    for (int i = 0; i < N; i++) {
        json_t *ev = client_read(a);
        assert_int_equal(json_integer_value(json_object_get(json_object_get(ev, "data"), "n")), i);
        json_decref(ev);
    }
    client_send(a, "{\"execute\": \"echo\", \"arguments\": {\"s\": \"responsive\"}}\n");
    expect_msg(a, "{\"return\": {\"s\": \"responsive\"}}");

    /* The slow client still gets everything, in order, once it reads. */
    for (int i = 0; i < N; i++) {
        json_t *ev = client_read(slow);
        assert_int_equal(json_integer_value(json_object_get(json_object_get(ev, "data"), "n")), i);
        json_decref(ev);
    }
    client_close(slow);
    client_close(a);
    assert_int_equal(server_stop(&s, 0), 0);
}

static void test_quit(void **state)
{
    Server s;
    server_start(&s);
    Client *a = connect_negotiated(&s);
    Client *b = connect_and_greet(&s);

    /* An event queued just before quit still reaches the negotiated client; then both see the connection end,
     * and run returns the status given to request_quit. */
    ferry__monitor_emit_event(s.mon, "LAST", json_pack("{s:i}", "n", 9));
    ferry__monitor_request_quit(s.mon, 3);
    assert_int_equal(pthread_join(s.thread, NULL), 0);
    assert_int_equal(s.status, 3);
    expect_event(a, "LAST", 9);
    ferry__monitor_free(s.mon);
    assert_true(client_sees_eof(a));
    assert_true(client_sees_eof(b));
    assert_int_equal(access(s.path, F_OK), -1);
    rmdir(s.dir);
    client_close(a);
    client_close(b);
}

static void test_stale_socket_replaced(void **state)
{
    /* A socket file left by a crashed run is replaced, as QEMU does. */
    Server s;
    strcpy(s.dir, "/tmp/ferry-test-monitor-XXXXXX");
    assert_non_null(mkdtemp(s.dir));
    snprintf(s.path, sizeof(s.path), "%s/qmp.sock", s.dir);
    FILE *f = fopen(s.path, "w");
    assert_non_null(f);
    fclose(f);
    char spec[200];
    snprintf(spec, sizeof(spec), "unix:%s,server=on,wait=off", s.path);
    FerryMonitor *mon = ferry__monitor_new();
    FerryError *err = NULL;
    assert_true(ferry__monitor_add_qmp(mon, spec, &err));
    struct stat st;
    assert_int_equal(stat(s.path, &st), 0);
    assert_true(S_ISSOCK(st.st_mode));
    ferry__monitor_free(mon);
    rmdir(s.dir);

    /* A directory that does not exist gives an error naming the path. */
    mon = ferry__monitor_new();
    assert_false(ferry__monitor_add_qmp(mon, "unix:/nonexistent-dir-ferry/q.sock,server=on,wait=off", &err));
    assert_non_null(strstr(ferry_error_msg(err), "/nonexistent-dir-ferry/q.sock"));
    ferry_error_free(err);
    ferry__monitor_free(mon);
}

/* Open fds of this process (the monitor runs on a thread of it, so its fds count too). */
static int count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    assert_non_null(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        n += e->d_name[0] != '.';
    }
    closedir(d);
    return n - 1; /* the directory's own fd */
}

/* Send @text with @nfds fds attached as SCM_RIGHTS. */
static void client_send_fds(Client *c, const char *text, const int *fds, size_t nfds)
{
    union {
        char buf[CMSG_SPACE(8 * sizeof(int))];
        struct cmsghdr align;
    } ctrl;
    struct iovec iov = { .iov_base = (void *)text, .iov_len = strlen(text) };
    struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };
    assert_true(nfds > 0 && nfds <= 8);
    msg.msg_control = ctrl.buf;
    msg.msg_controllen = CMSG_SPACE(nfds * sizeof(int));
    struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(nfds * sizeof(int));
    memcpy(CMSG_DATA(cm), fds, nfds * sizeof(int));
    assert_int_equal(sendmsg(c->fd, &msg, MSG_NOSIGNAL), (ssize_t)strlen(text));
}

static bool same_file(int a, int b)
{
    struct stat sa, sb;
    assert_int_equal(fstat(a, &sa), 0);
    assert_int_equal(fstat(b, &sb), 0);
    return sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

static void test_getfd(void **state)
{
    Server s;
    server_start(&s);
    Client *c = connect_negotiated(&s);
    int base = count_fds();
    int p[2];
    assert_int_equal(pipe(p), 0);

    /* Without an fd. */
    client_send(c, "{\"execute\": \"getfd\", \"arguments\": {\"fdname\": \"a\"}}");
    expect_msg(c, "{\"error\": {\"class\": \"GenericError\", \"desc\": \"No file descriptor supplied via "
                  "SCM_RIGHTS\"}}");

    /* A name starting with a digit: the fd is consumed and closed all the same (QEMU's order). */
    client_send_fds(c, "{\"execute\": \"getfd\", \"arguments\": {\"fdname\": \"1x\"}}", &p[0], 1);
    expect_msg(c, "{\"error\": {\"class\": \"GenericError\", \"desc\": \"Parameter 'fdname' expects a name not "
                  "starting with a digit\"}}");
    assert_int_equal(count_fds(), base + 2);

    /* The good case: the store holds the very file we sent. */
    client_send_fds(c, "{\"execute\": \"getfd\", \"arguments\": {\"fdname\": \"mig\"}, \"id\": 1}", &p[0], 1);
    expect_msg(c, "{\"return\": {}, \"id\": 1}");
    assert_int_equal(count_fds(), base + 3);
    int got = ferry__fdstore_take("mig");
    assert_true(got >= 0);
    assert_true(same_file(got, p[0]));
    assert_true(ferry__fdstore_add("mig", got, NULL));

    /* closefd closes it; a second closefd names the missing fd. */
    client_send(c, "{\"execute\": \"closefd\", \"arguments\": {\"fdname\": \"mig\"}}");
    expect_msg(c, "{\"return\": {}}");
    assert_int_equal(count_fds(), base + 2);
    client_send(c, "{\"execute\": \"closefd\", \"arguments\": {\"fdname\": \"mig\"}}");
    expect_error_desc_prefix(c, "GenericError", "File descriptor named 'mig' not found");

    /* fds sent with a command that does not take them stay with the client until the next fds replace them
     * (then they are closed), and the last ones are closed when the client goes away. */
    int two[2] = { p[0], p[1] };
    client_send_fds(c, "{\"execute\": \"echo\", \"arguments\": {\"s\": \"x\"}}", two, 2);
    expect_msg(c, "{\"return\": {\"s\": \"x\"}}");
    assert_int_equal(count_fds(), base + 4);
    client_send_fds(c, "{\"execute\": \"echo\", \"arguments\": {\"s\": \"y\"}}", &p[1], 1);
    expect_msg(c, "{\"return\": {\"s\": \"y\"}}");
    assert_int_equal(count_fds(), base + 3);
    /* A getfd takes the most recent fd: p[1]. */
    client_send(c, "{\"execute\": \"getfd\", \"arguments\": {\"fdname\": \"w\"}}");
    expect_msg(c, "{\"return\": {}}");
    got = ferry__fdstore_take("w");
    assert_true(same_file(got, p[1]));
    close(got);
    assert_int_equal(count_fds(), base + 2);
    client_send_fds(c, "{\"execute\": \"echo\", \"arguments\": {\"s\": \"z\"}}", two, 2);
    expect_msg(c, "{\"return\": {\"s\": \"z\"}}");
    assert_int_equal(count_fds(), base + 4);
    client_close(c);
    /* The monitor notices the hang-up on its own thread: give it a moment. */
    for (int i = 0; i < 500 && count_fds() != base; i++) {
        usleep(10000);
    }
    /* base counted both ends of the client's connection, which are closed now, as are the fds it held. */
    assert_int_equal(count_fds(), base);
    close(p[0]);
    close(p[1]);
    assert_int_equal(server_stop(&s, 0), 0);
}

/* Hold the monitor thread (cmd_hold) until release_monitor(c). */
static void hold_monitor(Client *c)
{
    client_send(c, "{\"execute\": \"hold\"}");
    char b;
    assert_int_equal(read(hold_started[0], &b, 1), 1);
}

static void release_monitor(Client *c)
{
    char b = 0;
    assert_int_equal(write(hold_release[1], &b, 1), 1);
    expect_msg(c, "{\"return\": {}}");
}

/* The fd stored under @name is the file of @fd; the store's fd is closed. */
static void expect_stored(const char *name, int fd)
{
    int got = ferry__fdstore_take(name);
    if (got < 0) {
        fail_msg("no fd named '%s' in the store", name);
    }
    if (!same_file(got, fd)) {
        fail_msg("the fd named '%s' is not the one sent for it", name);
    }
    close(got);
}

/* Let the held monitor go on: both getfds succeed, and "a" and "b" name @fa and @fb. */
static void release_expect_ab(Client *c, int fa, int fb)
{
    release_monitor(c);
    expect_msg(c, "{\"return\": {}}");
    expect_msg(c, "{\"return\": {}}");
    expect_stored("a", fa);
    expect_stored("b", fb);
}

static const char getfd_a[] = "{\"execute\": \"getfd\", \"arguments\": {\"fdname\": \"a\"}}";
static const char getfd_b[] = "{\"execute\": \"getfd\", \"arguments\": {\"fdname\": \"b\"}}";

/*
 * Each getfd must name the fd sent for it however the input is cut into reads. A read of a UNIX stream socket
 * ends right after the bytes of a message that carried fds, but it can begin with bytes sent before that message:
 * the request an earlier fd was sent for can arrive in the same read as the next request's fd. The monitor is held
 * while the client sends, so that every case below meets the server in exactly that shape each time.
 */
static void test_getfd_across_reads(void **state)
{
    Server s;
    server_start(&s);
    Client *c = connect_negotiated(&s);
    int base = count_fds();
    int pa[2], pb[2];
    assert_int_equal(pipe(pa), 0);
    assert_int_equal(pipe(pb), 0);
    static const char cut[] = "{\"execute\": \"getfd\", ";

    /* 1. The fd travels with the first piece of a request written in two pieces; the next request and its fd
     *    arrive in the read that completes the first. */
    hold_monitor(c);
    client_send_fds(c, cut, &pa[0], 1);
    client_send(c, getfd_a + strlen(cut));
    client_send_fds(c, getfd_b, &pb[0], 1);
    release_expect_ab(c, pa[0], pb[0]);

    /* 2. QEMU's Python library sends the fd with one byte of its own, then the request. */
    hold_monitor(c);
    client_send_fds(c, " ", &pa[0], 1);
    client_send(c, getfd_a);
    client_send_fds(c, " ", &pb[0], 1);
    client_send(c, getfd_b);
    release_expect_ab(c, pa[0], pb[0]);

    /* 3. Whole requests, each sent with its fd, behind more input than one read takes: the first read ends inside
     *    the first getfd, the second brings its rest and the second getfd with its fd. */
    hold_monitor(c);
    static char spaces[65536 - 10];
    memset(spaces, ' ', sizeof(spaces));
    client_write(c, spaces, sizeof(spaces));
    client_send_fds(c, getfd_a, &pa[0], 1);
    client_send_fds(c, getfd_b, &pb[0], 1);
    release_expect_ab(c, pa[0], pb[0]);

    /* 4. Two whole requests each with its fd, in one go (the kernel ends a read after each message with fds). */
    hold_monitor(c);
    client_send_fds(c, getfd_a, &pa[0], 1);
    client_send_fds(c, getfd_b, &pb[0], 1);
    release_expect_ab(c, pa[0], pb[0]);

    /* 5. One message with the fd and two requests: the getfd before the other request takes it. */
    char *two = ferry__xasprintf("%s{\"execute\": \"echo\", \"arguments\": {\"s\": \"x\"}}", getfd_a);
    client_send_fds(c, two, &pa[0], 1);
    free(two);
    expect_msg(c, "{\"return\": {}}");
    expect_msg(c, "{\"return\": {\"s\": \"x\"}}");
    expect_stored("a", pa[0]);

    /* Nothing leaked, nothing closed too early. */
    assert_int_equal(count_fds(), base + 4);
    client_close(c);
    for (int i = 0; i < 4; i++) {
        close(i < 2 ? pa[i] : pb[i - 2]);
    }
    assert_int_equal(server_stop(&s, 0), 0);
}

/* fds belong to the connection they were sent on; the names are the process's, whoever gave them. */
static void test_getfd_two_connections(void **state)
{
    Server s;
    server_start(&s);
    Client *c1 = connect_negotiated(&s);
    Client *c2 = connect_negotiated(&s);
    int p[2];
    assert_int_equal(pipe(p), 0);

    client_send_fds(c1, "{\"execute\": \"echo\", \"arguments\": {\"s\": \"x\"}}", &p[0], 1);
    expect_msg(c1, "{\"return\": {\"s\": \"x\"}}");
    client_send(c2, getfd_a);
    expect_msg(c2, "{\"error\": {\"class\": \"GenericError\", \"desc\": \"No file descriptor supplied via "
                   "SCM_RIGHTS\"}}");
    client_send(c1, getfd_a);
    expect_msg(c1, "{\"return\": {}}");
    /* The connection that gave the name goes away: the name stays, and another connection can close it. */
    client_close(c1);
    client_send(c2, "{\"execute\": \"echo\", \"arguments\": {\"s\": \"y\"}}");
    expect_msg(c2, "{\"return\": {\"s\": \"y\"}}");
    client_send(c2, "{\"execute\": \"closefd\", \"arguments\": {\"fdname\": \"a\"}}");
    expect_msg(c2, "{\"return\": {}}");
    client_close(c2);
    close(p[0]);
    close(p[1]);
    assert_int_equal(server_stop(&s, 0), 0);
}

/* Read from @c until @want has appeared; returns everything read (caller frees). */
static char *hmp_read_until(Client *c, const char *want)
{
    for (;;) {
        char *hit = memmem(c->buf, c->len, want, strlen(want));
        if (hit) {
            size_t n = (size_t)(hit - c->buf) + strlen(want);
            char *text = strndup(c->buf, n);
            memmove(c->buf, c->buf + n, c->len - n);
            c->len -= n;
            return text;
        }
        struct pollfd pfd = { .fd = c->fd, .events = POLLIN };
        if (poll(&pfd, 1, READ_TIMEOUT_MS) == 0) {
            fail_msg("no '%s' from the human monitor within %d ms", want, READ_TIMEOUT_MS);
        }
        ssize_t n = read(c->fd, c->buf + c->len, sizeof(c->buf) - c->len);
        if (n <= 0) {
            fail_msg("the human monitor closed the connection");
        }
        c->len += (size_t)n;
    }
}

static void test_hmp_socket(void **state)
{
    Server s;
    server_start(&s);
    char hpath[160], spec[200];
    snprintf(hpath, sizeof(hpath), "%s/hmp.sock", s.dir);
    snprintf(spec, sizeof(spec), "unix:%s,server=on,wait=off", hpath);
    FerryError *err = NULL;
    /* Adding a listener while the loop runs is not allowed, so use a second monitor for the HMP socket. */
    FerryMonitor *mon = ferry__monitor_new();
    if (!ferry__monitor_add_hmp(mon, spec, &err)) {
        fail_msg("add_hmp: %s", ferry_error_msg(err));
    }
    Server h = { .mon = mon };
    assert_int_equal(pthread_create(&h.thread, NULL, run_thread, &h), 0);

    Client *c = calloc(1, sizeof(*c));
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    strcpy(sa.sun_path, hpath);
    c->fd = socket(AF_UNIX, SOCK_STREAM, 0);
    assert_int_equal(connect(c->fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    char *text = hmp_read_until(c, "(ferry) ");
    assert_string_equal(text, "ferry 0.1.0 monitor - type 'help' for more information\n(ferry) ");
    free(text);

    /* Two commands in one write, the second split across writes; each answer ends with a prompt. */
    client_send(c, "nosuch\nhelp qu");
    text = hmp_read_until(c, "(ferry) ");
    assert_string_equal(text, "Error: unknown command: 'nosuch'\n(ferry) ");
    free(text);
    client_send(c, "it\r\n");
    text = hmp_read_until(c, "(ferry) ");
    assert_string_equal(text, "quit -- quit the program\n(ferry) ");
    free(text);
    /* A command the monitor's QMP table lacks gives the QMP error, in HMP's form. */
    client_send(c, "info status\n");
    text = hmp_read_until(c, "(ferry) ");
    assert_string_equal(text, "Error: The command query-status has not been found\n(ferry) ");
    free(text);
    /* HMP clients get no QMP events. */
    ferry__monitor_emit_event(mon, "EV", NULL);
    client_send(c, "\n");
    text = hmp_read_until(c, "(ferry) ");
    assert_string_equal(text, "(ferry) ");
    free(text);

    client_close(c);
    ferry__monitor_request_quit(mon, 0);
    assert_int_equal(pthread_join(h.thread, NULL), 0);
    ferry__monitor_free(mon);
    assert_int_equal(access(hpath, F_OK), -1);
    assert_int_equal(server_stop(&s, 0), 0);
}

static void test_socket_mode(void **state)
{
    /* 0600 whatever the umask: one that would leave the file open to others (0), the usual one (022), and one that
     * would take the owner's own write permission, without which not even the owner could connect (0277). */
    static const mode_t masks[] = { 0, 022, 077, 0277 };
    for (size_t i = 0; i < sizeof(masks) / sizeof(masks[0]); i++) {
        char dir[64], path[128], spec[200];
        strcpy(dir, "/tmp/ferry-test-monitor-XXXXXX");
        assert_non_null(mkdtemp(dir));
        snprintf(path, sizeof(path), "%s/qmp.sock", dir);
        snprintf(spec, sizeof(spec), "unix:%s,server=on,wait=off", path);
        mode_t old = umask(masks[i]);
        FerryMonitor *mon = ferry__monitor_new();
        FerryError *err = NULL;
        bool ok = ferry__monitor_add_qmp(mon, spec, &err);
        umask(old);
        if (!ok) {
            fail_msg("umask %03o: %s", (unsigned)masks[i], ferry_error_msg(err));
        }
        struct stat st;
        assert_int_equal(stat(path, &st), 0);
        if ((st.st_mode & 07777) != 0600) {
            fail_msg("umask %03o: socket mode %04o", (unsigned)masks[i], (unsigned)(st.st_mode & 07777));
        }
        ferry__monitor_free(mon);
        rmdir(dir);
    }
}

/* The first line the monitor sends a new connection (the greeting, or why it is refused); caller closes. */
static char *first_line(Server *s, Client **out)
{
    Client *c = client_connect(s);
    char *line = client_read_line(c);
    assert_non_null(line);
    *out = c;
    return line;
}

static void test_max_clients(void **state)
{
    Server s;
    server_start(&s);
    Client *clients[FERRY_MONITOR_MAX_CLIENTS];
    for (int i = 0; i < FERRY_MONITOR_MAX_CLIENTS; i++) {
        clients[i] = connect_negotiated(&s);
    }
    /* One more is told why and closed; the others are not disturbed. */
    for (int round = 0; round < 3; round++) {
        Client *extra;
        char *line = first_line(&s, &extra);
        char want[200];
        snprintf(want, sizeof(want), "{\"error\": {\"class\": \"GenericError\", \"desc\": \"too many monitor "
                 "clients (at most %d); try again later\"}}", FERRY_MONITOR_MAX_CLIENTS);
        assert_string_equal(line, want);
        free(line);
        assert_true(client_sees_eof(extra));
        client_close(extra);
    }
    for (int i = 0; i < FERRY_MONITOR_MAX_CLIENTS; i++) {
        client_send(clients[i], "{\"execute\": \"echo\", \"arguments\": {\"s\": \"x\"}}");
    }
    for (int i = 0; i < FERRY_MONITOR_MAX_CLIENTS; i++) {
        expect_msg(clients[i], "{\"return\": {\"s\": \"x\"}}");
    }
    /* Once one has gone, a new one is served (after the monitor has noticed the hang-up). */
    client_close(clients[0]);
    for (int tries = 0;; tries++) {
        char *line = first_line(&s, &clients[0]);
        bool greeted = strcmp(line, greeting) == 0;
        free(line);
        if (greeted) {
            break;
        }
        assert_true(tries < 500);
        client_close(clients[0]);
        usleep(10000);
    }
    for (int i = 0; i < FERRY_MONITOR_MAX_CLIENTS; i++) {
        client_close(clients[i]);
    }
    assert_int_equal(server_stop(&s, 0), 0);
}

static int highest_fd(void)
{
    DIR *d = opendir("/proc/self/fd");
    assert_non_null(d);
    int hi = -1;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] != '.') {
            hi = FERRY_MAX(hi, atoi(e->d_name));
        }
    }
    closedir(d);
    return hi;
}

static double thread_cpu_seconds(pthread_t t)
{
    clockid_t cid;
    struct timespec ts;
    assert_int_equal(pthread_getcpuclockid(t, &cid), 0);
    assert_int_equal(clock_gettime(cid, &ts), 0);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void test_out_of_fds(void **state)
{
    Server s;
    server_start(&s);
    Client *a = connect_negotiated(&s);
    /* The client sockets exist before the limit is lowered; connecting them takes no fd of ours. */
    Client *b = calloc(1, sizeof(*b)), *c = calloc(1, sizeof(*c));
    b->fd = socket(AF_UNIX, SOCK_STREAM, 0);
    c->fd = socket(AF_UNIX, SOCK_STREAM, 0);
    assert_true(b->fd >= 0 && c->fd >= 0);

    /* Leave the process exactly one free fd: the next connection takes it, the one after finds none. */
    struct rlimit old;
    assert_int_equal(getrlimit(RLIMIT_NOFILE, &old), 0);
    struct rlimit low = { .rlim_cur = (rlim_t)highest_fd() + 2, .rlim_max = old.rlim_max };
    assert_int_equal(setrlimit(RLIMIT_NOFILE, &low), 0);
    static int fillers[4096];
    size_t nfill = 0;
    int f;
    while (nfill < 4096 && (f = open("/dev/null", O_RDONLY | O_CLOEXEC)) >= 0) {
        fillers[nfill++] = f;
    }
    assert_true(nfill > 0);
    close(fillers[--nfill]);

    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    strcpy(sa.sun_path, s.path);
    assert_int_equal(connect(b->fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    char *line = client_read_line(b);
    assert_string_equal(line, greeting);
    free(line);
    double cpu0 = thread_cpu_seconds(s.thread);
    assert_int_equal(connect(c->fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    line = client_read_line(c);
    assert_non_null(line);
    assert_string_equal(line, "{\"error\": {\"class\": \"GenericError\", \"desc\": \"the process is out of "
                              "file descriptors; try again later\"}}");
    free(line);
    assert_true(client_sees_eof(c));
    /* The monitor is idle again, not retrying accept in a loop, and still serves its clients. */
    usleep(300000);
    double busy = thread_cpu_seconds(s.thread) - cpu0;
    if (busy > 0.15) {
        fail_msg("the monitor thread used %.2f s of CPU in 0.3 s while out of fds", busy);
    }
    client_send(a, "{\"execute\": \"echo\", \"arguments\": {\"s\": \"a\"}}");
    expect_msg(a, "{\"return\": {\"s\": \"a\"}}");

    while (nfill) {
        close(fillers[--nfill]);
    }
    assert_int_equal(setrlimit(RLIMIT_NOFILE, &old), 0);
    client_close(a);
    client_close(b);
    client_close(c);
    assert_int_equal(server_stop(&s, 0), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_greeting_and_negotiation),
        cmocka_unit_test(test_events_and_clients),
        cmocka_unit_test(test_framing),
        cmocka_unit_test(test_input_cap),
        cmocka_unit_test(test_slow_client),
        cmocka_unit_test(test_quit),
        cmocka_unit_test(test_stale_socket_replaced),
        cmocka_unit_test(test_getfd),
        cmocka_unit_test(test_getfd_across_reads),
        cmocka_unit_test(test_getfd_two_connections),
        cmocka_unit_test(test_hmp_socket),
        cmocka_unit_test(test_socket_mode),
        cmocka_unit_test(test_max_clients),
        cmocka_unit_test(test_out_of_fds),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
