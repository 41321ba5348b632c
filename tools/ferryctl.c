/*
 * ferryctl: a small QMP client for ferry's host programs (and, as far as the commands exist there, QEMU). It
 * connects to a QMP UNIX socket, negotiates, and either runs one command and prints its result, or drives a
 * migration ("migrate") / waits for one ("wait") while showing progress and the final statistics. It speaks only
 * the wire protocol (docs/qmp.md) and links jansson, not libferry; it holds no migration logic.
 */
#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#define REPLY_TIMEOUT_MS 30000
#define DEFAULT_INTERVAL_MS 250

typedef struct Qmp {
    int fd;
    const char *path;
    char *buf;
    size_t len, cap;
    long long next_id;
} Qmp;

static void usage(void)
{
    fprintf(stderr,
            "usage: ferryctl SOCKET COMMAND [JSON-ARGS]      run one QMP command, print its result\n"
            "       ferryctl SOCKET migrate URI [--interval MS]\n"
            "                                               migrate, showing progress every MS ms (250)\n"
            "       ferryctl SOCKET wait [--timeout S]      wait until the migration ends (destination)\n"
            "examples:\n"
            "       ferryctl /tmp/src.qmp query-status\n"
            "       ferryctl /tmp/src.qmp migrate-set-parameters '{\"max-bandwidth\": 1073741824}'\n"
            "       ferryctl /tmp/src.qmp migrate unix:/tmp/mig.sock\n"
            "exit status: 0 success, 1 command or migration failed, 2 bad usage\n");
    exit(2);
}

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("error: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int64_t ms)
{
    struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000 };
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
    }
}

static void qmp_connect(Qmp *q, const char *path)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    if (strlen(path) >= sizeof(sa.sun_path)) {
        die("socket path %s is too long", path);
    }
    strcpy(sa.sun_path, path);
    q->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (q->fd < 0) {
        die("socket: %s", strerror(errno));
    }
    if (connect(q->fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        die("connecting to %s: %s", path, strerror(errno));
    }
    q->path = path;
}

static void qmp_close(Qmp *q)
{
    close(q->fd);
    q->fd = -1;
    free(q->buf);
    q->buf = NULL;
    q->len = q->cap = 0;
}

/* Next message from the server, waiting until @deadline (monotonic ms). Dies on EOF, bad JSON or timeout. */
static json_t *qmp_recv(Qmp *q, int64_t deadline)
{
    for (;;) {
        size_t pos = 0;
        while (pos < q->len && strchr(" \t\r\n", q->buf[pos]) && q->buf[pos]) {
            pos++;
        }
        if (pos < q->len) {
            json_error_t err;
            json_t *msg = json_loadb(q->buf + pos, q->len - pos, JSON_DISABLE_EOF_CHECK, &err);
            if (msg) {
                pos += (size_t)err.position;
                memmove(q->buf, q->buf + pos, q->len - pos);
                q->len -= pos;
                return msg;
            }
            if (json_error_code(&err) != json_error_premature_end_of_input) {
                die("bad JSON from %s: %s", q->path, err.text);
            }
        }
        int64_t left = deadline - now_ms();
        if (left <= 0) {
            die("no reply from %s within %d s", q->path, REPLY_TIMEOUT_MS / 1000);
        }
        struct pollfd pfd = { .fd = q->fd, .events = POLLIN };
        int r = poll(&pfd, 1, (int)left);
        if (r < 0 && errno != EINTR) {
            die("poll: %s", strerror(errno));
        }
        if (r <= 0) {
            continue;
        }
        if (q->cap - q->len < 65536) {
            q->cap = q->len + 65536;
            q->buf = realloc(q->buf, q->cap);
            if (!q->buf) {
                die("out of memory");
            }
        }
        ssize_t n = read(q->fd, q->buf + q->len, q->cap - q->len);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0) {
            die("reading from %s: %s", q->path, strerror(errno));
        }
        if (n == 0) {
            die("%s closed the connection (did the program exit?)", q->path);
        }
        q->len += (size_t)n;
    }
}

static void qmp_send(Qmp *q, json_t *msg)
{
    char *s = json_dumps(msg, JSON_COMPACT);
    if (!s) {
        die("out of memory");
    }
    size_t len = strlen(s), done = 0;
    while (done < len) {
        ssize_t n = send(q->fd, s + done, len - done, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0) {
            die("writing to %s: %s", q->path, strerror(errno));
        }
        done += (size_t)n;
    }
    free(s);
    if (send(q->fd, "\r\n", 2, MSG_NOSIGNAL) != 2) {
        die("writing to %s: %s", q->path, strerror(errno));
    }
}

/* Run @name with @args (taken, may be NULL); return the whole reply ({"return"...} or {"error"...}). Events that
 * arrive before it are dropped. */
static json_t *qmp_execute(Qmp *q, const char *name, json_t *args)
{
    json_t *id = json_integer(++q->next_id);
    json_t *req = json_pack("{s:s, s:O}", "execute", name, "id", id);
    if (!req) {
        /* jansson refuses strings that are not UTF-8; QMP is JSON, so such a name cannot be sent at all. */
        die("command name '%s' is not valid UTF-8", name);
    }
    if (args) {
        json_object_set_new(req, "arguments", args);
    }
    qmp_send(q, req);
    json_decref(req);
    int64_t deadline = now_ms() + REPLY_TIMEOUT_MS;
    for (;;) {
        json_t *msg = qmp_recv(q, deadline);
        if (json_equal(json_object_get(msg, "id"), id)) {
            json_decref(id);
            return msg;
        }
        json_decref(msg);
    }
}

/* The "return" of a reply (borrowed from @reply), or print "error: CLASS: DESC" and exit 1. */
static json_t *reply_return(json_t *reply)
{
    json_t *error = json_object_get(reply, "error");
    if (error) {
        const char *cls = json_string_value(json_object_get(error, "class"));
        const char *desc = json_string_value(json_object_get(error, "desc"));
        fprintf(stderr, "error: %s: %s\n", cls ? cls : "?", desc ? desc : "?");
        json_decref(reply);
        exit(1);
    }
    json_t *ret = json_object_get(reply, "return");
    if (!ret) {
        die("reply without \"return\" or \"error\"");
    }
    return ret;
}

static void qmp_handshake(Qmp *q)
{
    json_t *greeting = qmp_recv(q, now_ms() + REPLY_TIMEOUT_MS);
    if (!json_object_get(greeting, "QMP")) {
        die("%s did not greet with a QMP banner", q->path);
    }
    json_decref(greeting);
    json_t *reply = qmp_execute(q, "qmp_capabilities", NULL);
    reply_return(reply);
    json_decref(reply);
}

/* 1536 -> "1.5 KiB" */
static const char *human_bytes(double v, char *buf, size_t size)
{
    static const char *const units[] = { "B", "KiB", "MiB", "GiB", "TiB", "PiB" };
    size_t u = 0;
    while (v >= 1024 && u + 1 < sizeof(units) / sizeof(units[0])) {
        v /= 1024;
        u++;
    }
    if (u == 0) {
        snprintf(buf, size, "%.0f B", v);
    } else {
        snprintf(buf, size, "%.1f %s", v, units[u]);
    }
    return buf;
}

/* Numeric field of @obj, or false when it is absent (every query-migrate field is optional). */
static bool num_field(json_t *obj, const char *key, double *out)
{
    json_t *v = json_object_get(obj, key);
    if (!json_is_number(v)) {
        return false;
    }
    *out = json_number_value(v);
    return true;
}

/* QEMU's "mbps" is megabits (10^6 bits) per second; ferryctl shows MiB/s. */
static double mbps_to_mib(double mbps)
{
    return mbps * 1e6 / 8 / (1024 * 1024);
}

static bool status_is_terminal(const char *s)
{
    return s && (!strcmp(s, "completed") || !strcmp(s, "failed") || !strcmp(s, "cancelled"));
}

/* Append to @line (of @size bytes, @*n used) without ever running past its end: a field the server sent may be
 * longer than the line, and snprintf's return value is what it wanted to write, not what it wrote. */
static void line_append(char *line, size_t size, size_t *n, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static void line_append(char *line, size_t size, size_t *n, const char *fmt, ...)
{
    if (*n + 1 >= size) {
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    int r = vsnprintf(line + *n, size - *n, fmt, ap);
    va_end(ap);
    if (r > 0) {
        *n = (size_t)r < size - *n ? *n + (size_t)r : size - 1;
    }
}

static void print_progress(json_t *info, bool tty)
{
    const char *status = json_string_value(json_object_get(info, "status"));
    json_t *ram = json_object_get(info, "ram");
    double total, remaining, v;
    char line[512], tmp[64];
    size_t n = 0;

    line_append(line, sizeof(line), &n, "%-10s", status ? status : "?");
    /* During setup nothing has been counted yet: a percentage would be meaningless. */
    bool counting = status && strcmp(status, "setup") != 0;
    if (counting && num_field(ram, "total", &total) && num_field(ram, "remaining", &remaining) && total > 0) {
        line_append(line, sizeof(line), &n, " %5.1f%%", (total - remaining) * 100.0 / total);
    } else {
        line_append(line, sizeof(line), &n, "     -%%");
    }
    if (num_field(ram, "mbps", &v)) {
        line_append(line, sizeof(line), &n, "  %8.1f MiB/s", mbps_to_mib(v));
    }
    if (num_field(ram, "remaining", &v)) {
        line_append(line, sizeof(line), &n, "  remaining %s", human_bytes(v, tmp, sizeof(tmp)));
    }
    if (num_field(ram, "dirty-sync-count", &v)) {
        /* dirty-sync-count counts the passes finished; the one in progress is the next. */
        line_append(line, sizeof(line), &n, "  pass %.0f", v + 1);
    }
    if (num_field(info, "expected-downtime", &v)) {
        line_append(line, sizeof(line), &n, "  expected-downtime %.0f ms", v);
    }
    if (tty) {
        /* Rewrite the line in place and clear what a longer previous line left behind. */
        printf("\r%s\033[K", line);
    } else {
        printf("%s\n", line);
    }
    fflush(stdout);
}

static void print_ms(json_t *info, const char *key)
{
    double v;
    if (num_field(info, key, &v)) {
        printf("%-18s %.0f ms\n", key, v);
    }
}

/* Final statistics; returns the exit status (0 only when the migration completed). */
/* @s on stdout with control characters as \xNN: error-desc may quote what a peer sent, and on a terminal an ESC or
 * CR in it could move the cursor or forge lines. (ferryctl needs no libferry, so this is not libferry's escape.) */
static void print_escaped(const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p < 0x20 || *p == 0x7f) {
            printf("\\x%02x", *p);
        } else {
            putchar(*p);
        }
    }
}

static int print_final(json_t *info)
{
    const char *status = json_string_value(json_object_get(info, "status"));
    json_t *ram = json_object_get(info, "ram");
    double v, transferred = 0, total_time = 0;
    bool has_transferred, has_total_time;
    char tmp[64];

    printf("%-18s %s\n", "status", status ? status : "?");
    print_ms(info, "total-time");
    print_ms(info, "setup-time");
    print_ms(info, "downtime");
    has_transferred = num_field(ram, "transferred", &transferred);
    if (has_transferred) {
        printf("%-18s %s (%.0f bytes)\n", "transferred", human_bytes(transferred, tmp, sizeof(tmp)), transferred);
    }
    if (num_field(ram, "duplicate", &v)) {
        printf("%-18s %.0f\n", "duplicate pages", v);
    }
    if (num_field(ram, "normal", &v)) {
        printf("%-18s %.0f\n", "normal pages", v);
    }
    if (num_field(ram, "dirty-sync-count", &v)) {
        printf("%-18s %.0f\n", "passes", v);
    }
    has_total_time = num_field(info, "total-time", &total_time);
    if (has_transferred && has_total_time && total_time > 0) {
        printf("%-18s %.1f MiB/s (transferred / total-time)\n", "mean throughput",
               transferred / (1024.0 * 1024.0) / (total_time / 1000.0));
    }
    const char *tracker = json_string_value(json_object_get(info, "dirty-tracker"));
    if (tracker) {
        printf("%-18s %s\n", "dirty-tracker", tracker);
    }
    const char *desc = json_string_value(json_object_get(info, "error-desc"));
    if (desc) {
        printf("%-18s ", "error-desc");
        print_escaped(desc);
        putchar('\n');
    }
    fflush(stdout);
    return status && !strcmp(status, "completed") ? 0 : 1;
}

static json_t *query_migrate(Qmp *q)
{
    json_t *reply = qmp_execute(q, "query-migrate", NULL);
    json_t *info = json_incref(reply_return(reply));
    json_decref(reply);
    return info;
}

/* Poll query-migrate until a terminal status; with @progress print a progress line per poll. */
static int follow_migration(Qmp *q, int64_t interval_ms, int64_t timeout_ms, bool progress)
{
    bool tty = isatty(STDOUT_FILENO);
    int64_t deadline = timeout_ms > 0 ? now_ms() + timeout_ms : 0;
    bool printed = false;
    for (;;) {
        json_t *info = query_migrate(q);
        const char *status = json_string_value(json_object_get(info, "status"));
        if (status_is_terminal(status)) {
            if (printed && tty) {
                printf("\n");
            }
            int rc = print_final(info);
            json_decref(info);
            return rc;
        }
        if (progress) {
            print_progress(info, tty);
            printed = true;
        }
        if (deadline && now_ms() >= deadline) {
            if (printed && tty) {
                printf("\n");
            }
            fprintf(stderr, "error: the migration did not end within %lld s (status %s)\n",
                    (long long)(timeout_ms / 1000), status ? status : "?");
            json_decref(info);
            return 1;
        }
        json_decref(info);
        sleep_ms(interval_ms);
    }
}

static long long parse_positive(const char *s, const char *what)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end || v <= 0) {
        fprintf(stderr, "ferryctl: %s must be a positive integer, not '%s'\n", what, s);
        usage();
    }
    return v;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        usage();
    }
    const char *path = argv[1];
    const char *cmd = argv[2];
    /* Static so that its buffer stays reachable (not a leak to LeakSanitizer) when an error path calls exit(). */
    static Qmp q = { .fd = -1 };
    int rc;

    if (!strcmp(cmd, "migrate") && argc == 3) {
        usage();
    }
    if (!strcmp(cmd, "migrate") && argv[3][0] != '{') {
        int64_t interval = DEFAULT_INTERVAL_MS;
        for (int i = 4; i < argc; i++) {
            if (!strcmp(argv[i], "--interval") && i + 1 < argc) {
                interval = parse_positive(argv[++i], "--interval");
            } else {
                usage();
            }
        }
        json_t *uri = json_pack("{s:s}", "uri", argv[3]);
        if (!uri) {
            die("migration URI '%s' is not valid UTF-8", argv[3]);
        }
        qmp_connect(&q, path);
        qmp_handshake(&q);
        json_t *reply = qmp_execute(&q, "migrate", uri);
        reply_return(reply);
        json_decref(reply);
        rc = follow_migration(&q, interval, 0, true);
        qmp_close(&q);
        return rc;
    }
    if (!strcmp(cmd, "wait")) {
        int64_t timeout_ms = 0;
        for (int i = 3; i < argc; i++) {
            if (!strcmp(argv[i], "--timeout") && i + 1 < argc) {
                timeout_ms = parse_positive(argv[++i], "--timeout") * 1000;
            } else {
                usage();
            }
        }
        qmp_connect(&q, path);
        qmp_handshake(&q);
        rc = follow_migration(&q, DEFAULT_INTERVAL_MS, timeout_ms, false);
        qmp_close(&q);
        return rc;
    }

    if (argc > 4 || cmd[0] == '-') {
        usage();
    }
    json_t *args = NULL;
    if (argc == 4) {
        json_error_t err;
        /* A duplicate key is refused (the server would refuse it too; json_dumps would silently drop one). */
        args = json_loads(argv[3], JSON_REJECT_DUPLICATES, &err);
        if (!json_is_object(args)) {
            fprintf(stderr, "ferryctl: JSON-ARGS must be a JSON object%s%s\n", args ? "" : ": ",
                    args ? "" : err.text);
            usage();
        }
    }
    qmp_connect(&q, path);
    qmp_handshake(&q);
    json_t *reply = qmp_execute(&q, cmd, args);
    char *out = json_dumps(reply_return(reply), JSON_INDENT(2) | JSON_ENCODE_ANY);
    printf("%s\n", out ? out : "null");
    free(out);
    json_decref(reply);
    qmp_close(&q);
    return 0;
}
