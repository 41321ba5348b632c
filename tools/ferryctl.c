/*
 * ferryctl: a small QMP client for ferry's host programs (and, as far as the commands exist there, QEMU). It
 * connects to a QMP UNIX socket, negotiates, and either runs one command and prints its result, or drives a
 * migration ("migrate") / waits for one ("wait") while showing progress and the final statistics. "migrate" can
 * also record the migration's timeline (a sample per query-migrate poll and per MIGRATION_PASS event, with the
 * parameters and capabilities read at the start) as JSON (--timeline) and draw it as a PNG with gnuplot (--plot);
 * "plot" draws a saved timeline. gnuplot is an external program run on a script written to a temporary directory;
 * ferryctl draws nothing itself. It speaks only the wire protocol (docs/qmp.md) and links jansson, not libferry;
 * it holds no migration logic.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
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
    /* When not NULL, events that arrive are appended here (the timeline wants them); otherwise they are dropped. */
    json_t *events;
} Qmp;

extern char **environ;

static void usage(void)
{
    fprintf(stderr,
            "usage: ferryctl SOCKET COMMAND [JSON-ARGS]      run one QMP command, print its result\n"
            "       ferryctl SOCKET migrate URI [--interval MS] [--timeline FILE.json] [--plot FILE.png]\n"
            "                                               migrate, showing progress every MS ms (250);\n"
            "                                               --timeline: write the migration's timeline as JSON,\n"
            "                                               --plot: draw it as a PNG with gnuplot\n"
            "                                               (both turn the 'events' capability on)\n"
            "       ferryctl SOCKET wait [--timeout S]      wait until the migration ends (destination)\n"
            "       ferryctl plot TIMELINE.json OUT.png     draw a saved timeline with gnuplot\n"
            "examples:\n"
            "       ferryctl /tmp/src.qmp query-status\n"
            "       ferryctl /tmp/src.qmp migrate-set-parameters '{\"max-bandwidth\": 1073741824}'\n"
            "       ferryctl /tmp/src.qmp migrate unix:/tmp/mig.sock\n"
            "       ferryctl /tmp/src.qmp migrate unix:/tmp/mig.sock --timeline mig.json --plot mig.png\n"
            "exit status: 0 success, 1 command, migration or plot failed, 2 bad usage\n");
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

/* Next message from the server, waiting until @deadline (monotonic ms). Dies on EOF or bad JSON; at the
 * deadline dies too, or with @may_time_out returns NULL. */
static json_t *qmp_recv_until(Qmp *q, int64_t deadline, bool may_time_out)
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
        if (left <= 0 && may_time_out) {
            return NULL;
        }
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

static json_t *qmp_recv(Qmp *q, int64_t deadline)
{
    return qmp_recv_until(q, deadline, false);
}

/* Keep @msg if it is an event and someone collects them; else drop it. Takes @msg. */
static void qmp_keep_event(Qmp *q, json_t *msg)
{
    if (q->events && json_is_string(json_object_get(msg, "event"))) {
        json_array_append_new(q->events, msg);
    } else {
        json_decref(msg);
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
 * arrive before it are kept in q->events when it is set, else dropped. */
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
        qmp_keep_event(q, msg);
    }
}

/* Read events until @deadline; true as soon as an event @name has arrived (with @status: a MIGRATION event with
 * that status). The events are kept (q->events) or dropped as qmp_keep_event says. */
static bool qmp_wait_event(Qmp *q, const char *name, const char *status, int64_t deadline)
{
    for (;;) {
        json_t *msg = qmp_recv_until(q, deadline, true);
        if (!msg) {
            return false;
        }
        const char *ev = json_string_value(json_object_get(msg, "event"));
        const char *st = json_string_value(json_object_get(json_object_get(msg, "data"), "status"));
        bool found = ev && !strcmp(ev, name) && (!status || (st && !strcmp(st, status)));
        qmp_keep_event(q, msg);
        if (found) {
            return true;
        }
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

/*
 * The timeline (docs/qmp.md, "ferryctl"): one JSON document, built while the migration runs:
 *   {"format": "ferry-timeline", "version": 1, "socket", "uri", "interval-ms", "started-unix-ms",
 *    "parameters": query-migrate-parameters, "capabilities": {NAME: bool} from query-migrate-capabilities,
 *    "events-enabled-by-ferryctl": bool,
 *    "samples": [{"t_ms", "trigger": "poll"|"pass", "status", "pass", every number of query-migrate's "ram"
 *                 (remaining, transferred, dirty-pages-rate, mbps, ...), every top-level number (total-time,
 *                 expected-downtime, cpu-throttle-percentage, dirty-limit-throttle-time-per-round, ...) and
 *                 "completion" whatever its type}, ...],
 *    "passes": [{"t_ms", "pass"}] from MIGRATION_PASS, "events": [{"t_ms", "event", "data"}] (all events),
 *    "result": the last query-migrate, "end-ms"}
 * t_ms counts from the moment ferryctl sent "migrate": samples by the monotonic clock when the reply came,
 * events by their own (wall-clock) timestamp, so a pass begins where the engine says it did.
 */
typedef struct Timeline {
    json_t *doc;
    int64_t t0_ms;        /* monotonic, at "migrate" */
    double t0_wall_ms;    /* the same moment by the wall clock, for event timestamps */
} Timeline;

static double wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec * 1000.0 + ts.tv_nsec / 1e6;
}

/* The "return" of @name, or NULL with the error's description in *@err (the header records it; not fatal). */
static json_t *try_query(Qmp *q, const char *name, char *err, size_t size)
{
    json_t *reply = qmp_execute(q, name, NULL);
    json_t *ret = json_object_get(reply, "return");
    if (ret) {
        json_incref(ret);
    } else {
        const char *desc = json_string_value(json_object_get(json_object_get(reply, "error"), "desc"));
        snprintf(err, size, "%s", desc ? desc : "no return");
    }
    json_decref(reply);
    return ret;
}

/* Before "migrate": the header, and the 'events' capability on (MIGRATION_PASS needs it). */
static void timeline_start(Timeline *tl, Qmp *q, const char *path, const char *uri, int64_t interval_ms)
{
    char err[256];
    tl->doc = json_pack("{s:s, s:i, s:s, s:s, s:I}", "format", "ferry-timeline", "version", 1, "socket", path,
                        "uri", uri, "interval-ms", (json_int_t)interval_ms);
    if (!tl->doc) {
        die("socket path or URI is not valid UTF-8");
    }
    json_t *params = try_query(q, "query-migrate-parameters", err, sizeof(err));
    json_object_set_new(tl->doc, "parameters", params ? params : json_null());
    if (!params) {
        json_object_set_new(tl->doc, "parameters-error", json_string(err));
    }
    json_t *list = try_query(q, "query-migrate-capabilities", err, sizeof(err));
    json_t *caps = json_object();
    bool events_on = false;
    size_t i;
    json_t *c;
    json_array_foreach(list, i, c) {
        const char *name = json_string_value(json_object_get(c, "capability"));
        json_t *state = json_object_get(c, "state");
        if (name && json_is_boolean(state)) {
            json_object_set(caps, name, state);
            events_on |= !strcmp(name, "events") && json_is_true(state);
        }
    }
    if (!list) {
        json_object_set_new(tl->doc, "capabilities-error", json_string(err));
    }
    json_decref(list);
    json_object_set_new(tl->doc, "capabilities", caps);
    if (!events_on) {
        json_t *reply = qmp_execute(q, "migrate-set-capabilities",
                                    json_pack("{s:[{s:s, s:b}]}", "capabilities", "capability", "events", "state", 1));
        if (json_object_get(reply, "error")) {
            fprintf(stderr, "ferryctl: cannot turn the 'events' capability on for the timeline:\n");
            reply_return(reply);
        }
        json_decref(reply);
        json_object_set_new(caps, "events", json_true());
    }
    json_object_set_new(tl->doc, "events-enabled-by-ferryctl", json_boolean(!events_on));
    json_object_set_new(tl->doc, "samples", json_array());
    json_object_set_new(tl->doc, "passes", json_array());
    json_object_set_new(tl->doc, "events", json_array());
    q->events = json_array();
    tl->t0_ms = now_ms();
    tl->t0_wall_ms = wall_ms();
    json_object_set_new(tl->doc, "started-unix-ms", json_integer((json_int_t)tl->t0_wall_ms));
}

/* Move the events collected since the last call into the document. */
static void timeline_take_events(Timeline *tl, Qmp *q)
{
    size_t i;
    json_t *ev;
    json_array_foreach(q->events, i, ev) {
        json_t *ts = json_object_get(ev, "timestamp");
        double sec, usec;
        int64_t t = now_ms() - tl->t0_ms;
        if (num_field(ts, "seconds", &sec) && num_field(ts, "microseconds", &usec)) {
            t = (int64_t)(sec * 1000.0 + usec / 1000.0 - tl->t0_wall_ms);
        }
        const char *name = json_string_value(json_object_get(ev, "event"));
        json_t *data = json_object_get(ev, "data");
        json_t *rec = json_pack("{s:I, s:s}", "t_ms", (json_int_t)t, "event", name);
        if (data) {
            json_object_set(rec, "data", data);
        }
        json_array_append_new(json_object_get(tl->doc, "events"), rec);
        json_t *pass = json_object_get(data, "pass");
        if (!strcmp(name, "MIGRATION_PASS") && json_is_integer(pass)) {
            json_array_append_new(json_object_get(tl->doc, "passes"),
                                  json_pack("{s:I, s:O}", "t_ms", (json_int_t)t, "pass", pass));
        }
    }
    json_array_clear(q->events);
}

static void timeline_sample(Timeline *tl, json_t *info, const char *trigger)
{
    json_t *s = json_pack("{s:I, s:s}", "t_ms", (json_int_t)(now_ms() - tl->t0_ms), "trigger", trigger);
    json_t *status = json_object_get(info, "status");
    json_t *ram = json_object_get(info, "ram");
    const char *key;
    json_t *v;
    if (json_is_string(status)) {
        json_object_set(s, "status", status);
    }
    /* dirty-sync-count is the number that MIGRATION_PASS gives the pass under way. */
    if (json_is_integer(json_object_get(ram, "dirty-sync-count"))) {
        json_object_set(s, "pass", json_object_get(ram, "dirty-sync-count"));
    }
    json_object_foreach(ram, key, v) {
        if (json_is_number(v)) {
            json_object_set(s, key, v);
        }
    }
    json_object_foreach(info, key, v) {
        if (json_is_number(v) || !strcmp(key, "completion")) {
            json_object_set_new(s, key, json_deep_copy(v));
        }
    }
    json_array_append_new(json_object_get(tl->doc, "samples"), s);
}

static void timeline_finish(Timeline *tl, Qmp *q, json_t *info)
{
    /* The MIGRATION event of the last status may come just after the query-migrate that showed it: wait a
     * little for it, so that the events end where the migration did. */
    const char *status = json_string_value(json_object_get(info, "status"));
    bool seen = false;
    size_t i;
    json_t *ev;
    json_array_foreach(q->events, i, ev) {
        const char *st = json_string_value(json_object_get(json_object_get(ev, "data"), "status"));
        seen |= !strcmp(json_string_value(json_object_get(ev, "event")), "MIGRATION") && st && status &&
                !strcmp(st, status);
    }
    if (status && !seen) {
        qmp_wait_event(q, "MIGRATION", status, now_ms() + 1000);
    }
    timeline_take_events(tl, q);
    json_object_set(tl->doc, "result", info);
    json_object_set_new(tl->doc, "end-ms", json_integer((json_int_t)(now_ms() - tl->t0_ms)));
    json_decref(q->events);
    q->events = NULL;
}

/* gnuplot's single-quoted string: nothing is interpreted but '' (one quote). Control characters would end the
 * line of the script: they become '?'. */
static void gp_quoted(FILE *f, const char *s)
{
    fputc('\'', f);
    for (; *s; s++) {
        if (*s == '\'') {
            fputs("''", f);
        } else if ((unsigned char)*s < 0x20 || *s == 0x7f) {
            fputc('?', f);
        } else {
            fputc(*s, f);
        }
    }
    fputc('\'', f);
}

/* Is @prog an executable somewhere in PATH? */
static bool in_path(const char *prog)
{
    const char *path = getenv("PATH");
    if (!path) {
        return false;
    }
    char *copy = strdup(path), *save = NULL;
    bool found = false;
    if (!copy) {
        die("out of memory");
    }
    for (char *dir = strtok_r(copy, ":", &save); dir && !found; dir = strtok_r(NULL, ":", &save)) {
        char full[4096];
        snprintf(full, sizeof(full), "%s/%s", *dir ? dir : ".", prog);
        found = access(full, X_OK) == 0;
    }
    free(copy);
    return found;
}

/* Before migrating: would --plot @out work? Dies with what is wrong, so that no migration runs for nothing. */
static void plot_precheck(const char *out)
{
    if (!in_path("gnuplot")) {
        die("--plot needs gnuplot, which is not in PATH (Debian: apt-get install gnuplot-nox)");
    }
    char *dir = strdup(out);
    if (!dir) {
        die("out of memory");
    }
    char *slash = strrchr(dir, '/');
    const char *d = slash ? (slash == dir ? "/" : (*slash = 0, dir)) : ".";
    if (access(d, W_OK) != 0) {
        int e = errno;
        free(dir);
        die("cannot write the plot %s: its directory: %s", out, strerror(e));
    }
    free(dir);
}

static double sample_num(json_t *s, const char *key, double dflt)
{
    double v;
    return num_field(s, key, &v) ? v : dflt;
}

/* A vertical line at @t_s across every panel (arrows stay set across the plots of a multiplot). */
static void gp_vline(FILE *f, double t_s, const char *color, int dash)
{
    fprintf(f, "set arrow from %.3f, graph 0 to %.3f, graph 1 nohead lc rgb '%s' dt %d\n", t_s, t_s, color, dash);
}

/* Draw @doc (a timeline) into @out with gnuplot; false with a message on stderr when it cannot. */
static bool plot_timeline(json_t *doc, const char *out)
{
    json_t *samples = json_object_get(doc, "samples");
    const char *format = json_string_value(json_object_get(doc, "format"));
    if (!format || strcmp(format, "ferry-timeline") != 0 || !json_is_array(samples)) {
        fprintf(stderr, "error: not a ferry timeline (no \"format\": \"ferry-timeline\" with \"samples\")\n");
        return false;
    }
    if (json_array_size(samples) == 0) {
        fprintf(stderr, "error: the timeline has no samples to plot\n");
        return false;
    }
    if (!in_path("gnuplot")) {
        fprintf(stderr, "error: gnuplot is not in PATH (Debian: apt-get install gnuplot-nox)\n");
        return false;
    }
    const char *tmproot = getenv("TMPDIR") && *getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    char dir[4096], data[4200], script[4200];
    snprintf(dir, sizeof(dir), "%s/ferryctl-plot-XXXXXX", tmproot);
    if (!mkdtemp(dir)) {
        fprintf(stderr, "error: cannot make a temporary directory in %s: %s\n", tmproot, strerror(errno));
        return false;
    }
    snprintf(data, sizeof(data), "%s/timeline.dat", dir);
    snprintf(script, sizeof(script), "%s/timeline.gp", dir);

    /* The data: one line per sample, '?' where query-migrate had no such field. */
    FILE *f = fopen(data, "w");
    if (!f) {
        fprintf(stderr, "error: cannot write %s: %s\n", data, strerror(errno));
        return false;
    }
    fprintf(f, "# t_s remaining_MiB dirty_MiB/s bandwidth_MiB/s cpu-throttle_%% dirty-limit-throttle-time-per-round\n");
    size_t i;
    json_t *s;
    double tmax = 0;
    bool has_dl = false, has_throttle = false;
    int last_pass = -1;
    const char *last_status = "";
    json_t *marks = json_array();   /* [t_s, label] of status changes worth a line: postcopy, switchover */
    json_t *derived_passes = json_array();
    json_array_foreach(samples, i, s) {
        double t = sample_num(s, "t_ms", 0) / 1000.0, v;
        double ps = sample_num(s, "page-size", 4096);
        tmax = t > tmax ? t : tmax;
        fprintf(f, "%.3f", t);
        if (num_field(s, "remaining", &v)) {
            fprintf(f, " %.3f", v / 1048576.0);
        } else {
            fprintf(f, " ?");
        }
        if (num_field(s, "dirty-pages-rate", &v)) {
            fprintf(f, " %.3f", v * ps / 1048576.0);
        } else {
            fprintf(f, " ?");
        }
        if (num_field(s, "mbps", &v)) {
            fprintf(f, " %.3f", mbps_to_mib(v));
        } else {
            fprintf(f, " ?");
        }
        /* cpu-throttle-percentage is present only while a throttle is applied: absent is 0. */
        v = sample_num(s, "cpu-throttle-percentage", 0);
        has_throttle |= v > 0;
        fprintf(f, " %.1f", v);
        if (num_field(s, "dirty-limit-throttle-time-per-round", &v)) {
            fprintf(f, " %.1f\n", v);
            has_dl = true;
        } else {
            fprintf(f, " ?\n");
        }
        int pass = (int)sample_num(s, "pass", -1);
        if (pass != last_pass && pass >= 0) {
            json_array_append_new(derived_passes, json_pack("{s:f, s:i}", "t_ms", t * 1000.0, "pass", pass));
            last_pass = pass;
        }
        const char *st = json_string_value(json_object_get(s, "status"));
        if (st && strcmp(st, last_status) != 0) {
            if (!strcmp(st, "postcopy-active") || !strcmp(st, "device")) {
                json_array_append_new(marks, json_pack("{s:f, s:s}", "t", t,
                                                       "label", !strcmp(st, "device") ? "switchover" : "postcopy"));
            }
            last_status = st;
        }
    }
    if (fclose(f) != 0) {
        fprintf(stderr, "error: writing %s: %s\n", data, strerror(errno));
        json_decref(marks);
        json_decref(derived_passes);
        return false;
    }

    f = fopen(script, "w");
    if (!f) {
        fprintf(stderr, "error: cannot write %s: %s\n", script, strerror(errno));
        json_decref(marks);
        json_decref(derived_passes);
        return false;
    }
    json_t *result = json_object_get(doc, "result");
    const char *status = json_string_value(json_object_get(result, "status"));
    const char *uri = json_string_value(json_object_get(doc, "uri"));
    char title[512];
    snprintf(title, sizeof(title), "migration to %s: %s, total %.0f ms, downtime %.0f ms, %.0f passes",
             uri ? uri : "?", status ? status : "not finished", sample_num(result, "total-time", tmax * 1000),
             sample_num(result, "downtime", 0), sample_num(json_object_get(result, "ram"), "dirty-sync-count", 0));
    fputs("if (strstrt(GPVAL_TERMINALS, 'pngcairo') > 0) {\n"
          "    set terminal pngcairo size 1000,900 noenhanced font ',9'\n"
          "} else {\n"
          "    set terminal png size 1000,900 noenhanced\n"
          "}\n", f);
    fputs("set output ", f);
    gp_quoted(f, out);
    fputs("\nset datafile missing '?'\nset grid\nset key top right opaque\n", f);
    fprintf(f, "set xrange [0:%.3f]\nset lmargin 12\nset rmargin 12\n", tmax > 0 ? tmax : 1.0);
    /* Pass boundaries: from MIGRATION_PASS if there were any, else where the samples' pass number changed. */
    json_t *passes = json_object_get(doc, "passes");
    if (!json_is_array(passes) || json_array_size(passes) == 0) {
        passes = derived_passes;
    }
    json_t *p;
    size_t npasses = json_array_size(passes);
    json_array_foreach(passes, i, p) {
        double t = sample_num(p, "t_ms", 0) / 1000.0;
        gp_vline(f, t, "#999999", 2);
        if (npasses <= 40) {
            fprintf(f, "set label 'p%d' at %.3f, graph 1.03 center font ',7'\n", (int)sample_num(p, "pass", 0), t);
        }
    }
    json_array_foreach(marks, i, p) {
        double t = sample_num(p, "t", 0);
        gp_vline(f, t, "#cc0000", 1);
        /* Upright beside its line, in the middle of the panel: the key is at the top. */
        fprintf(f, "set label '%s' at %.3f, graph 0.5 center rotate by 90 offset -1.3,0 tc rgb '#cc0000'\n",
                json_string_value(json_object_get(p, "label")), t);
    }
    fputs("set multiplot layout 3,1 title ", f);
    gp_quoted(f, title);
    /* The top panel leaves room above it for the pass numbers, under the title. */
    fputs("\nset tmargin 3\nset ylabel 'remaining (MiB)'\nset format x ''\n", f);
    fputs("plot ", f);
    gp_quoted(f, data);
    fputs(" using 1:2 with lines lw 2 lc rgb '#1f77b4' title 'remaining (dashed: pass boundaries)'\n", f);
    fputs("unset label\nset tmargin 1\nset ylabel 'MiB/s'\n", f);
    json_array_foreach(marks, i, p) {
        gp_vline(f, sample_num(p, "t", 0), "#cc0000", 1);
    }
    fputs("plot ", f);
    gp_quoted(f, data);
    fputs(" using 1:3 with lines lw 2 lc rgb '#d62728' title 'dirty rate', '' using 1:4 with lines lw 2 "
          "lc rgb '#2ca02c' title 'bandwidth'\n", f);
    fputs("set ylabel 'cpu throttle (%)'\nset yrange [0:100]\nset format x '%g'\nset xlabel 'time (s)'\n", f);
    fputs("plot ", f);
    gp_quoted(f, data);
    fputs(" using 1:5 with steps lw 2 lc rgb '#9467bd' title 'cpu-throttle-percentage'", f);
    if (has_dl) {
        fputs(", '' using 1:6 axes x1y2 with steps lw 2 lc rgb '#ff7f0e' "
              "title 'dirty-limit-throttle-time-per-round (right axis)'\nset y2tics\n", f);
    } else {
        fputc('\n', f);
    }
    (void)has_throttle;
    fputs("unset multiplot\n", f);
    json_decref(marks);
    json_decref(derived_passes);
    if (fclose(f) != 0) {
        fprintf(stderr, "error: writing %s: %s\n", script, strerror(errno));
        return false;
    }

    /* gnuplot's messages go to our stderr; what it prints on stdout would mix with ferryctl's summary. */
    pid_t pid;
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_adddup2(&fa, STDERR_FILENO, STDOUT_FILENO);
    char *argv[] = { "gnuplot", script, NULL };
    int r = posix_spawnp(&pid, "gnuplot", &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (r != 0) {
        fprintf(stderr, "error: cannot run gnuplot: %s%s\n", strerror(r),
                r == ENOENT ? " (Debian: apt-get install gnuplot-nox)" : "");
        return false;
    }
    int wstatus;
    while (waitpid(pid, &wstatus, 0) < 0) {
        if (errno != EINTR) {
            fprintf(stderr, "error: waiting for gnuplot: %s\n", strerror(errno));
            return false;
        }
    }
    struct stat st;
    if (!WIFEXITED(wstatus) || WEXITSTATUS(wstatus) != 0) {
        if (WIFEXITED(wstatus)) {
            fprintf(stderr, "error: gnuplot failed (exit status %d); its script and data are kept in %s\n",
                    WEXITSTATUS(wstatus), dir);
        } else {
            fprintf(stderr, "error: gnuplot died of signal %d; its script and data are kept in %s\n",
                    WTERMSIG(wstatus), dir);
        }
        return false;
    }
    if (stat(out, &st) != 0 || st.st_size == 0) {
        fprintf(stderr, "error: gnuplot exited 0 but wrote no %s; its script and data are kept in %s\n", out, dir);
        return false;
    }
    unlink(data);
    unlink(script);
    rmdir(dir);
    return true;
}

/* Write the timeline to @f (opened before the migration, so that a bad path failed early); false on error. */
static bool timeline_write(json_t *doc, FILE *f, const char *path)
{
    if (json_dumpf(doc, f, JSON_INDENT(1)) != 0 || fputc('\n', f) == EOF || fclose(f) != 0) {
        fprintf(stderr, "error: writing the timeline %s: %s\n", path, strerror(errno));
        return false;
    }
    return true;
}

static int plot_command(const char *in, const char *out)
{
    json_error_t err;
    json_t *doc = json_load_file(in, JSON_REJECT_DUPLICATES, &err);
    if (!doc) {
        die("cannot read the timeline %s: %s (line %d)", in, err.text, err.line);
    }
    bool ok = plot_timeline(doc, out);
    json_decref(doc);
    return ok ? 0 : 1;
}

/* Poll query-migrate until a terminal status; with @progress print a progress line per poll. With @tl, record
 * every poll as a sample, and sample at once when a MIGRATION_PASS arrives (@tl's events are collected). */
static int follow_migration(Qmp *q, int64_t interval_ms, int64_t timeout_ms, bool progress, Timeline *tl)
{
    const char *trigger = "poll";
    bool tty = isatty(STDOUT_FILENO);
    int64_t deadline = timeout_ms > 0 ? now_ms() + timeout_ms : 0;
    bool printed = false;
    for (;;) {
        json_t *info = query_migrate(q);
        const char *status = json_string_value(json_object_get(info, "status"));
        if (tl) {
            timeline_take_events(tl, q);
            timeline_sample(tl, info, trigger);
        }
        if (status_is_terminal(status)) {
            if (printed && tty) {
                printf("\n");
            }
            int rc = print_final(info);
            if (tl) {
                timeline_finish(tl, q, info);
            }
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
        if (tl) {
            trigger = qmp_wait_event(q, "MIGRATION_PASS", NULL, now_ms() + interval_ms) ? "pass" : "poll";
        } else {
            sleep_ms(interval_ms);
        }
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

    /* "plot" in the place of the socket: there is no migration, only a saved timeline. */
    if (!strcmp(path, "plot")) {
        if (argc != 4) {
            fprintf(stderr, "ferryctl: plot takes TIMELINE.json OUT.png\n");
            usage();
        }
        return plot_command(argv[2], argv[3]);
    }
    if (!strcmp(cmd, "migrate") && argc == 3) {
        usage();
    }
    if (!strcmp(cmd, "migrate") && argv[3][0] != '{') {
        int64_t interval = DEFAULT_INTERVAL_MS;
        const char *timeline_path = NULL, *plot_path = NULL;
        for (int i = 4; i < argc; i++) {
            if (!strcmp(argv[i], "--interval") && i + 1 < argc) {
                interval = parse_positive(argv[++i], "--interval");
            } else if ((!strcmp(argv[i], "--timeline") || !strcmp(argv[i], "--plot")) &&
                       (i + 1 >= argc || !argv[i + 1][0] || argv[i + 1][0] == '-')) {
                fprintf(stderr, "ferryctl: %s needs a file name\n", argv[i]);
                usage();
            } else if (!strcmp(argv[i], "--timeline")) {
                timeline_path = argv[++i];
            } else if (!strcmp(argv[i], "--plot")) {
                plot_path = argv[++i];
            } else {
                fprintf(stderr, "ferryctl: migrate: unknown option or extra argument '%s'\n", argv[i]);
                usage();
            }
        }
        json_t *uri = json_pack("{s:s}", "uri", argv[3]);
        if (!uri) {
            die("migration URI '%s' is not valid UTF-8", argv[3]);
        }
        /* Whatever would keep the timeline from being written fails now, before a migration runs for nothing. */
        static FILE *timeline_file;
        if (timeline_path && !(timeline_file = fopen(timeline_path, "w"))) {
            die("cannot write the timeline %s: %s", timeline_path, strerror(errno));
        }
        if (plot_path) {
            plot_precheck(plot_path);
        }
        qmp_connect(&q, path);
        qmp_handshake(&q);
        static Timeline tl;
        bool recording = timeline_path || plot_path;
        if (recording) {
            timeline_start(&tl, &q, path, argv[3], interval);
        }
        json_t *reply = qmp_execute(&q, "migrate", uri);
        if (json_object_get(reply, "error") && timeline_file) {
            /* No migration, no timeline: do not leave the empty file behind. */
            fclose(timeline_file);
            unlink(timeline_path);
        }
        reply_return(reply);
        json_decref(reply);
        rc = follow_migration(&q, interval, 0, true, recording ? &tl : NULL);
        qmp_close(&q);
        if (timeline_path && !timeline_write(tl.doc, timeline_file, timeline_path)) {
            rc = 1;
        }
        if (plot_path && !plot_timeline(tl.doc, plot_path)) {
            rc = 1;
        }
        json_decref(tl.doc);
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
        rc = follow_migration(&q, DEFAULT_INTERVAL_MS, timeout_ms, false, NULL);
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
