/*
 * The QMP socket server: UNIX listeners, one poll loop on the thread that calls ferry__monitor_run(), per-client
 * input framing and output buffering, the greeting, fds received as SCM_RIGHTS ancillary data (kept with their
 * client until a command such as getfd takes them), and the thread-safe event queue. The same loop carries the
 * human monitor's clients (stdio and HMP sockets): for those it only frames lines, hmp.c says what they mean.
 * QMP input is a stream of JSON values with no required separator; json-frame.c finds where each one ends,
 * looking at every byte once, and only a complete value is parsed with jansson. Every socket is non-blocking and
 * every client has its own output buffer, so a slow or vanished client never stalls the loop or the other
 * clients. Each client's cost is bounded (monitor.h: request size and nesting, consecutive bad inputs, the number
 * of clients, pending output), and a client over a bound is cut off without disturbing the others. What a request
 * means is dispatch.c's job.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "monitor/monitor-priv.h"
#include "util/util.h"

/* A client whose pending output grows beyond this does not read its socket: it is dropped rather than letting it
 * hold the process's memory hostage. */
#define MON_MAX_OUTPUT (16 * 1024 * 1024)
#define MON_READ_CHUNK 65536
/* How long the loop keeps flushing replies and the last events once quit has been requested. */
#define MON_QUIT_FLUSH_MS 2000
/* How often a human monitor waiting for "migrate" (without -d) to end looks at the migration's status. */
#define MON_HMP_WAIT_POLL_MS 50
/* The most fds one message can carry on Linux (SCM_MAX_FD). */
#define MON_MAX_MSG_FDS 253
/* How long the listeners rest when accept fails for a reason that would make it fail again at once. */
#define MON_ACCEPT_PAUSE_MS 100

/* The fds of one received message (SCM_RIGHTS), and where in the client's input they arrived. */
typedef struct MonFds {
    int *fds;
    size_t n;
    uint64_t at;    /* input offset just past the read that brought them */
} MonFds;

struct FerryMonitorClient {
    int fd;         /* input, and output too unless out_fd differs (stdio) */
    int out_fd;
    bool hmp;       /* a human monitor client: lines in, text out, no events */
    bool is_stdio;  /* fds 0 and 1: never closed by the monitor */
    bool wait_mig;  /* HMP "migrate" without -d runs: input waits, nothing is printed until it ends */
    MonFds fds;     /* fds that arrived before the end of the request being handled (client_take_msg_fds) */
    MonFds new_fds; /* fds of a later read, not yet reached by a request */
    uint64_t in_base; /* input offset (bytes received before) of in[0] */
    bool negotiated;
    bool closing;   /* no more input is read; the client is closed once its output is flushed */
    bool dead;      /* close at the end of this loop iteration */
    MonFramer framer;   /* the QMP request being received */
    bool skip_line;     /* after a parse error: input is dropped up to the end of the line */
    size_t skipped;     /* bytes dropped so far on that line */
    unsigned bad_inputs; /* inputs in a row that were not JSON objects */
    char *in;
    size_t in_len, in_cap;
    char *out;
    size_t out_len, out_cap;
    MonClient *next;
};

struct MonEvent {
    char *line;     /* serialised, with the "\r\n", timestamp taken when the event was emitted */
    size_t len;
    MonEvent *next;
};

FerryMonitor *ferry__monitor_new(void)
{
    FerryMonitor *mon = ferry__xcalloc(1, sizeof(*mon));
    mon->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (mon->wake_fd < 0) {
        /* Without the wake-up fd events and quit requests from other threads could never reach the loop. */
        ferry__log(FERRY_LOG_ERROR, "monitor: eventfd: %s", strerror(errno));
        abort();
    }
    pthread_mutex_init(&mon->lock, NULL);
    mon->ev_tail = &mon->ev_head;
    mon->spare_fd = -1;
    ferry__monitor_register_builtins(mon);
    return mon;
}

static void fds_close(MonFds *f)
{
    for (size_t i = 0; i < f->n; i++) {
        close(f->fds[i]);
    }
    free(f->fds);
    *f = (MonFds){ 0 };
}

/*
 * fds received as SCM_RIGHTS ancillary data. A read of a UNIX stream socket ends right after the bytes of a message
 * that carried fds, but it can begin with bytes sent before that message: the requests that end in the same read
 * were sent before the fds or with them, which cannot be told apart. Handing a read's fds to the client at once
 * would close the fds of an earlier message before the request they were sent for is handled (a request written
 * in two pieces with its fd on the first, or QEMU's Python library, which sends the fd with a byte of its own
 * before the request, followed by the next request and its fd). So they wait in new_fds, with the input offset
 * where their read ended, until a request that ends at or after that offset is handled (it was sent with them or
 * after them). Then they replace the client's current fds, as a message's fds replace the last ones in QEMU.
 *
 * A getfd takes the current fds, or if there are none the fds of the read in which it ends (one message that
 * carried the getfd and more requests after it). Each client holds at most two sets: a read's fds make those of
 * an earlier read current, since every request handled from then on ends after them.
 */
static void fds_promote(MonClient *c)
{
    if (c->new_fds.n) {
        fds_close(&c->fds);
        c->fds = c->new_fds;
        c->new_fds = (MonFds){ 0 };
    }
}

/* Keep the fds of one received message, whose read ends at input offset @at. */
static void client_take_msg_fds(MonClient *c, struct msghdr *msg, uint64_t at)
{
    if (msg->msg_flags & MSG_CTRUNC) {
        ferry__log(FERRY_LOG_WARN, "monitor: a QMP client sent more than %d fds in one message; the excess was "
                   "dropped by the kernel", MON_MAX_MSG_FDS);
    }
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(msg); cm; cm = CMSG_NXTHDR(msg, cm)) {
        if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS) {
            continue;
        }
        size_t n = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        if (n == 0) {
            continue;
        }
        fds_promote(c);
        c->new_fds = (MonFds){ .fds = ferry__xcalloc(n, sizeof(int)), .n = n, .at = at };
        memcpy(c->new_fds.fds, CMSG_DATA(cm), n * sizeof(int));
    }
}

int ferry__monitor_take_fd(FerryMonitor *mon)
{
    MonClient *c = mon->cur_client;
    if (!c) {
        return -1;
    }
    MonFds *f = c->fds.n ? &c->fds : &c->new_fds;
    if (f->n == 0) {
        return -1;
    }
    /* The most recent fd is the one a getfd means; any others that came with it are not wanted by anybody. */
    int fd = f->fds[--f->n];
    fds_close(f);
    return fd;
}

static void client_free(MonClient *c)
{
    /* fds a client sent and no command took are ours to close. */
    fds_close(&c->fds);
    fds_close(&c->new_fds);
    if (c->fd >= 0 && !c->is_stdio) {
        close(c->fd);
    }
    free(c->in);
    free(c->out);
    free(c);
}

void ferry__monitor_free(FerryMonitor *mon)
{
    if (!mon) {
        return;
    }
    while (mon->clients) {
        MonClient *c = mon->clients;
        mon->clients = c->next;
        client_free(c);
    }
    for (size_t i = 0; i < mon->nlisteners; i++) {
        MonListener *l = &mon->listeners[i];
        struct stat st;
        /* Remove the socket file only if it is still the one we bound (another process may have replaced it). */
        if (stat(l->path, &st) == 0 && st.st_dev == l->dev && st.st_ino == l->ino) {
            unlink(l->path);
        }
        close(l->fd);
        free(l->path);
    }
    free(mon->listeners);
    if (mon->spare_fd >= 0) {
        close(mon->spare_fd);
    }
    free(mon->watches);
    while (mon->ev_head) {
        MonEvent *ev = mon->ev_head;
        mon->ev_head = ev->next;
        free(ev->line);
        free(ev);
    }
    ferry__monitor_free_commands(mon);
    close(mon->wake_fd);
    pthread_mutex_destroy(&mon->lock);
    free(mon);
}

static void wake(FerryMonitor *mon)
{
    uint64_t one = 1;
    /* EAGAIN means the counter is already non-zero: the loop will wake anyway. */
    ssize_t r = write(mon->wake_fd, &one, sizeof(one));
    (void)r;
}

/* QEMU's boolean option values. */
static bool parse_onoff(const char *v, bool *out)
{
    if (!strcmp(v, "on") || !strcmp(v, "yes") || !strcmp(v, "true")) {
        *out = true;
        return true;
    }
    if (!strcmp(v, "off") || !strcmp(v, "no") || !strcmp(v, "false")) {
        *out = false;
        return true;
    }
    return false;
}

bool ferry__monitor_parse_qmp_spec(const char *spec, char **path_out, FerryError **errp)
{
    if (strncmp(spec, "unix:", 5) != 0) {
        ferry_error_setg(errp, "-qmp '%s': only unix:PATH sockets are supported", spec);
        return false;
    }
    /* The path runs to the first single comma; ",," is QEMU's escape for a comma inside a value. */
    const char *p = spec + 5;
    size_t len = strlen(p);
    char *path = ferry__xcalloc(len + 1, 1);
    size_t n = 0;
    while (*p) {
        if (*p == ',') {
            if (p[1] == ',') {
                path[n++] = ',';
                p += 2;
                continue;
            }
            break;
        }
        path[n++] = *p++;
    }
    bool server = false, wait = false, ok = true;
    char *opts = ferry__xstrdup(*p == ',' ? p + 1 : p);
    char *save = NULL;
    for (char *opt = strtok_r(opts, ",", &save); opt && ok; opt = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(opt, '=');
        const char *val = eq ? eq + 1 : "on";
        if (eq) {
            *eq = '\0';
        }
        if (!strcmp(opt, "server")) {
            ok = parse_onoff(val, &server);
        } else if (!strcmp(opt, "wait")) {
            ok = parse_onoff(val, &wait);
        } else if (!strcmp(opt, "nowait") && !eq) {
            wait = false;
        } else {
            ferry_error_setg(errp, "-qmp '%s': unknown option '%s'", spec, opt);
            goto fail;
        }
        if (!ok) {
            ferry_error_setg(errp, "-qmp '%s': option '%s' takes on or off, not '%s'", spec, opt, val);
            goto fail;
        }
    }
    if (n == 0) {
        ferry_error_setg(errp, "-qmp '%s': the socket path is empty", spec);
        goto fail;
    }
    if (n >= sizeof(((struct sockaddr_un *)0)->sun_path)) {
        ferry_error_setg(errp, "-qmp '%s': socket path is longer than %zu bytes", spec,
                         sizeof(((struct sockaddr_un *)0)->sun_path) - 1);
        goto fail;
    }
    if (!server) {
        ferry_error_setg(errp, "-qmp '%s': only server=on is supported (ferry does not connect out)", spec);
        goto fail;
    }
    if (wait) {
        ferry_error_setg(errp, "-qmp '%s': wait=on is not supported, use wait=off", spec);
        goto fail;
    }
    free(opts);
    if (path_out) {
        *path_out = path;
    } else {
        free(path);
    }
    return true;

fail:
    free(opts);
    free(path);
    return false;
}

bool ferry__monitor_parse_hmp_spec(const char *spec, char **path_out, FerryError **errp)
{
    if (path_out) {
        *path_out = NULL;
    }
    if (!strcmp(spec, "stdio")) {
        return true;
    }
    if (strncmp(spec, "unix:", 5) != 0) {
        ferry_error_setg(errp, "-monitor '%s': only stdio and unix:PATH,server=on,wait=off are supported", spec);
        return false;
    }
    /* The same option syntax as -qmp, so the same parser; its messages say "-qmp", ours "-monitor". */
    FerryError *err = NULL;
    if (!ferry__monitor_parse_qmp_spec(spec, path_out, &err)) {
        const char *msg = ferry_error_msg(err);
        ferry_error_setg(errp, "-monitor%s", strncmp(msg, "-qmp", 4) == 0 ? msg + 4 : msg);
        ferry_error_free(err);
        return false;
    }
    return true;
}

static bool add_listener(FerryMonitor *mon, char *path, bool hmp, FerryError **errp) __attribute__((nonnull(2)));
static MonClient *client_new(FerryMonitor *mon, int fd, bool hmp);

bool ferry__monitor_add_qmp(FerryMonitor *mon, const char *spec, FerryError **errp)
{
    char *path = NULL;
    if (!ferry__monitor_parse_qmp_spec(spec, &path, errp)) {
        return false;
    }
    return add_listener(mon, path, false, errp);
}

bool ferry__monitor_add_hmp(FerryMonitor *mon, const char *spec, FerryError **errp)
{
    char *path = NULL;
    if (!ferry__monitor_parse_hmp_spec(spec, &path, errp)) {
        return false;
    }
    if (path) {
        return add_listener(mon, path, true, errp);
    }
    if (mon->hmp_stdio) {
        ferry_error_setg(errp, "-monitor stdio: only one monitor can use stdio");
        return false;
    }
    mon->hmp_stdio = true;
    MonClient *c = client_new(mon, STDIN_FILENO, true);
    c->out_fd = STDOUT_FILENO;
    c->is_stdio = true;
    return true;
}

/* Bind and listen on @path (taken) for QMP or HMP clients. */
static bool add_listener(FerryMonitor *mon, char *path, bool hmp, FerryError **errp)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    memcpy(sa.sun_path, path, strlen(path) + 1);

    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        ferry_error_setg_errno(errp, errno, "QMP socket %s: socket", path);
        free(path);
        return false;
    }
    /* The monitor can stop, migrate and quit the program: only its owner may connect. On Linux bind() creates
     * the socket file with the socket inode's mode (minus the umask), so restricting the inode first means the
     * file never exists with a wider mode, whatever the umask, even for the instant before the chmod below. */
    if (fchmod(fd, 0600) < 0) {
        ferry_error_setg_errno(errp, errno, "QMP socket %s: fchmod 0600", path);
        goto fail;
    }
    /* Like QEMU, replace a stale socket file left behind by an earlier run. */
    if (unlink(path) < 0 && errno != ENOENT) {
        ferry_error_setg_errno(errp, errno, "QMP socket %s: removing the old file", path);
        goto fail;
    }
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        ferry_error_setg_errno(errp, errno, "QMP socket %s: bind", path);
        goto fail;
    }
    /* Exactly 0600 even if the umask took bits away from the owner (who must be able to write to connect).
     * Nobody can connect before listen(). */
    if (chmod(path, 0600) < 0) {
        ferry_error_setg_errno(errp, errno, "QMP socket %s: chmod 0600", path);
        unlink(path);
        goto fail;
    }
    struct stat st;
    if (stat(path, &st) < 0 || listen(fd, SOMAXCONN) < 0) {
        ferry_error_setg_errno(errp, errno, "QMP socket %s: listen", path);
        unlink(path);
        goto fail;
    }
    mon->listeners = ferry__xrealloc(mon->listeners, (mon->nlisteners + 1) * sizeof(*mon->listeners));
    mon->listeners[mon->nlisteners++] = (MonListener){ .fd = fd, .hmp = hmp, .path = path, .dev = st.st_dev,
                                                       .ino = st.st_ino };
    if (mon->spare_fd < 0) {
        /* Given up when the process runs out of fds, so that a connection can still be accepted and closed
         * (accept_clients); failing to get it only loses that nicety. */
        mon->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    }
    return true;

fail:
    close(fd);
    free(path);
    return false;
}

void ferry__monitor_watch_fd(FerryMonitor *mon, int fd, FerryMonitorFdFn fn, void *opaque)
{
    mon->watches = ferry__xrealloc(mon->watches, (mon->nwatches + 1) * sizeof(*mon->watches));
    mon->watches[mon->nwatches++] = (MonWatch){ .fd = fd, .fn = fn, .opaque = opaque };
}

/* One message: QEMU's single-line JSON (", " and ": " separators, non-ASCII escaped) followed by "\r\n". */
static char *serialize(json_t *msg, size_t *len)
{
    char *body = json_dumps(msg, JSON_ENSURE_ASCII);
    if (!body) {
        ferry__log(FERRY_LOG_ERROR, "monitor: out of memory serialising a QMP message");
        abort();
    }
    char *line = ferry__xasprintf("%s\r\n", body);
    free(body);
    *len = strlen(line);
    return line;
}

static void client_queue(MonClient *c, const char *data, size_t len)
{
    if (c->dead) {
        return;
    }
    if (c->out_len + len > MON_MAX_OUTPUT) {
        ferry__log(FERRY_LOG_WARN, "monitor: dropping a QMP client that does not read its replies (%zu bytes "
                   "pending)", c->out_len);
        c->dead = true;
        return;
    }
    if (c->out_len + len > c->out_cap) {
        size_t cap = c->out_cap ? c->out_cap : 4096;
        while (cap < c->out_len + len) {
            cap *= 2;
        }
        c->out = ferry__xrealloc(c->out, cap);
        c->out_cap = cap;
    }
    memcpy(c->out + c->out_len, data, len);
    c->out_len += len;
}

static void client_queue_json(MonClient *c, json_t *msg)
{
    size_t len;
    char *line = serialize(msg, &len);
    client_queue(c, line, len);
    free(line);
}

/* Write what the socket takes now; never blocks, except on stdout (see below). */
static void client_flush(MonClient *c)
{
    size_t done = 0;
    while (!c->dead && done < c->out_len) {
        ssize_t n;
        if (c->is_stdio) {
            /* stdout is not ours to make non-blocking (it is shared with the parent's terminal or pipe), and a
             * human reads what the monitor prints: write it out, waiting if the pipe is full. */
            n = write(c->out_fd, c->out + done, c->out_len - done);
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                struct pollfd pfd = { .fd = c->out_fd, .events = POLLOUT };
                poll(&pfd, 1, 1000);
                continue;
            }
        } else {
            n = send(c->fd, c->out + done, c->out_len - done, MSG_NOSIGNAL | MSG_DONTWAIT);
        }
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            if (errno != EAGAIN && errno != EWOULDBLOCK) {
                ferry__log(FERRY_LOG_DEBUG, "monitor: QMP client write: %s", strerror(errno));
                c->dead = true;
            }
            break;
        }
        done += (size_t)n;
    }
    if (done) {
        memmove(c->out, c->out + done, c->out_len - done);
        c->out_len -= done;
    }
    /* A client that once fell behind (a burst of events) does not keep the buffer that took them. */
    if (c->out_len == 0 && c->out_cap > MON_READ_CHUNK) {
        free(c->out);
        c->out = NULL;
        c->out_cap = 0;
    }
    if (c->closing && c->out_len == 0) {
        c->dead = true;
    }
}

static void client_send_error(MonClient *c, const char *desc)
{
    json_t *reply = json_pack("{s:{s:s, s:s}}", "error", "class", "GenericError", "desc", desc);
    if (!reply) {
        /* jansson refuses a desc that is not UTF-8; a parse error may quote bytes the client sent. */
        char *clean = ferry__utf8_scrub(desc);
        reply = json_pack("{s:{s:s, s:s}}", "error", "class", "GenericError", "desc", clean);
        free(clean);
    }
    client_queue_json(c, reply);
    json_decref(reply);
}

static void client_drop_input(MonClient *c)
{
    c->in_base += c->in_len;
    free(c->in);
    c->in = NULL;
    c->in_len = c->in_cap = 0;
}

/* One last error, then no more input (what is pending is dropped); the connection is closed once the output has
 * been written. */
static void client_cut_off(MonClient *c, const char *desc)
{
    client_send_error(c, desc);
    c->closing = true;
    client_drop_input(c);
}

static void client_cut_off_too_long(MonClient *c)
{
    char *desc = ferry__xasprintf("QMP input exceeds %d bytes without a complete request; closing",
                                  FERRY_MONITOR_MAX_INPUT);
    client_cut_off(c, desc);
    free(desc);
}

/* An input that was not a JSON object has been answered: after too many in a row the client does not speak QMP
 * (a wrong program at the socket, random bytes) and is cut off rather than answered forever. */
static void client_count_bad_input(MonClient *c)
{
    if (++c->bad_inputs >= FERRY_MONITOR_MAX_BAD_INPUT && !c->dead) {
        char *desc = ferry__xasprintf("%d inputs in a row were not QMP requests; closing",
                                      FERRY_MONITOR_MAX_BAD_INPUT);
        client_cut_off(c, desc);
        free(desc);
    }
}

/* Run one parsed request, which ends at input offset @end, and queue its reply. */
static void client_run_request(FerryMonitor *mon, MonClient *c, json_t *req, uint64_t end)
{
    bool is_object = json_is_object(req);
    if (c->new_fds.n && c->new_fds.at <= end) {
        /* fds that arrived with this request or before it (client_take_msg_fds). */
        fds_promote(c);
    }
    mon->cur_client = c;
    json_t *reply = ferry__monitor_handle(mon, req, &c->negotiated);
    mon->cur_client = NULL;
    client_queue_json(c, reply);
    json_decref(reply);
    if (is_object) {
        c->bad_inputs = 0;
    } else {
        client_count_bad_input(c);
    }
}

/*
 * Parse the complete value of @vlen bytes at c->in + @pos and act on it. Returns true if the whole value was
 * consumed (handled, or refused for a duplicate key); false after a syntax error (answered, not yet counted as a
 * bad input), with *error_at the offset of the bad byte in the value, for resynchronisation.
 *
 * Duplicate keys are refused, as QEMU's parser refuses them: jansson would otherwise keep the last one, and
 * {"execute": "query-status", "execute": "quit"} would quit. Such a value is well-formed JSON whose end the framer
 * found for sure, so only that value is dropped, not the rest of its line; the check that it is well-formed
 * otherwise (a second parse) runs only on that error path.
 */
static bool client_parse_value(FerryMonitor *mon, MonClient *c, size_t pos, size_t vlen, size_t *error_at)
{
    json_error_t jerr;
    json_t *req = json_loadb(c->in + pos, vlen, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, &jerr);
    if (req) {
        client_run_request(mon, c, req, c->in_base + pos + vlen);
        json_decref(req);
        return true;
    }
    char *desc = ferry__xasprintf("JSON parse error, %s", jerr.text);
    client_send_error(c, desc);
    free(desc);
    if (json_error_code(&jerr) == json_error_duplicate_key) {
        /* jansson stops at the first problem: a syntax error after the duplicate is what resynchronises. */
        json_t *whole = json_loadb(c->in + pos, vlen, JSON_DECODE_ANY, &jerr);
        if (whole) {
            json_decref(whole);
            client_count_bad_input(c);
            return true;
        }
    }
    /* jansson's position is just past the byte where it gave up. */
    *error_at = jerr.position > 1 ? (size_t)jerr.position - 1 : 0;
    if (*error_at >= vlen) {
        *error_at = vlen - 1;
    }
    return false;
}

/*
 * Parse and handle every complete value in the client's input; keep an incomplete tail for later. After a parse
 * error the rest of the line on which it was found is dropped (a client that typed a broken request goes on with
 * its next line), as the server always did; a client's next request starts after that newline.
 */
static void client_process_input(FerryMonitor *mon, MonClient *c)
{
    size_t pos = 0;
    if (!c->in) {
        return;
    }
    while (!c->dead && !c->closing) {
        if (c->skip_line) {
            char *nl = memchr(c->in + pos, '\n', c->in_len - pos);
            size_t n = nl ? (size_t)(nl - (c->in + pos)) + 1 : c->in_len - pos;
            pos += n;
            c->skipped += n;
            if (!nl) {
                if (c->skipped > FERRY_MONITOR_MAX_INPUT) {
                    client_cut_off_too_long(c);
                    return;
                }
                break;
            }
            c->skip_line = false;
            c->skipped = 0;
            continue;
        }
        if (c->framer.scanned == 0) {
            while (pos < c->in_len && ferry__monitor_frame_is_space((unsigned char)c->in[pos])) {
                pos++;
            }
            if (pos >= c->in_len) {
                break;
            }
        }
        size_t vlen = 0;
        MonFrameResult fr = ferry__monitor_frame(&c->framer, c->in + pos, c->in_len - pos, &vlen);
        if (fr == MON_FRAME_MORE) {
            break;
        }
        if (fr == MON_FRAME_TOO_LONG) {
            client_cut_off_too_long(c);
            return;
        }
        size_t error_at; /* offset of the bad byte in the value, for resynchronisation */
        if (fr == MON_FRAME_TOO_DEEP) {
            char *desc = ferry__xasprintf("JSON parse error, nesting depth limit exceeded (at most %d levels)",
                                          FERRY_MONITOR_MAX_DEPTH);
            client_send_error(c, desc);
            free(desc);
            error_at = vlen - 1;
        } else if (client_parse_value(mon, c, pos, vlen, &error_at)) {
            pos += vlen;
            continue;
        }
        pos += error_at;
        c->skip_line = true;
        c->skipped = 0;
        client_count_bad_input(c);
    }
    if (c->closing || c->dead || !c->in) {
        return;
    }
    if (pos) {
        memmove(c->in, c->in + pos, c->in_len - pos);
        c->in_len -= pos;
        c->in_base += pos;
    }
    /* An idle client does not keep the buffer a large request needed. */
    if (c->in_len == 0 && c->in_cap > MON_READ_CHUNK) {
        client_drop_input(c);
    }
}

/* Run every complete line of a human monitor client, unless a migration it started is still running. */
static void client_process_hmp(FerryMonitor *mon, MonClient *c)
{
    size_t pos = 0;
    if (!c->in) {
        return;
    }
    while (!c->dead && !c->wait_mig) {
        char *nl = memchr(c->in + pos, '\n', c->in_len - pos);
        if (!nl) {
            break;
        }
        char *line = ferry__xstrndup(c->in + pos, (size_t)(nl - (c->in + pos)));
        pos = (size_t)(nl - c->in) + 1;
        char *out = ferry__hmp_handle_line(mon, line, &c->wait_mig);
        free(line);
        client_queue(c, out, strlen(out));
        free(out);
        if (!c->wait_mig) {
            client_queue(c, FERRY_HMP_PROMPT, strlen(FERRY_HMP_PROMPT));
        }
    }
    if (pos) {
        memmove(c->in, c->in + pos, c->in_len - pos);
        c->in_len -= pos;
        c->in_base += pos;
    }
    if (c->in_len > FERRY_MONITOR_MAX_INPUT && !c->dead) {
        static const char msg[] = "Error: input line too long; closing\n";
        client_queue(c, msg, strlen(msg));
        c->closing = true;
        client_drop_input(c);
    }
}

/* Room for one more read. The framer keeps a pending request below FERRY_MONITOR_MAX_INPUT and the human monitor
 * its line at most that long, so a client's input buffer never exceeds it by more than one read. The buffer grows
 * by doubling: grown by what one read needs, a request that arrives a few bytes at a time would be copied again on
 * every read (quadratic time, and one slow client would hold up all the others). */
static void client_reserve_read(MonClient *c)
{
    if (c->in_cap - c->in_len < MON_READ_CHUNK) {
        size_t cap = FERRY_MIN(FERRY_MAX(c->in_cap * 2, (size_t)MON_READ_CHUNK),
                               (size_t)FERRY_MONITOR_MAX_INPUT + MON_READ_CHUNK);
        c->in_cap = FERRY_MAX(cap, c->in_len + MON_READ_CHUNK);
        c->in = ferry__xrealloc(c->in, c->in_cap);
    }
}

/* Act on what the last read appended to the client's input. */
static void client_received(FerryMonitor *mon, MonClient *c)
{
    if (c->hmp) {
        client_process_hmp(mon, c);
    } else {
        client_process_input(mon, c);
    }
}

static void client_read(FerryMonitor *mon, MonClient *c)
{
    client_reserve_read(c);
    ssize_t n;
    if (c->is_stdio) {
        n = read(c->fd, c->in + c->in_len, MON_READ_CHUNK);
    } else {
        union {
            char buf[CMSG_SPACE(MON_MAX_MSG_FDS * sizeof(int))];
            struct cmsghdr align;
        } ctrl;
        struct iovec iov = { .iov_base = c->in + c->in_len, .iov_len = MON_READ_CHUNK };
        struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctrl.buf,
                              .msg_controllen = sizeof(ctrl.buf) };
        /* MSG_CMSG_CLOEXEC: a received fd must not leak into a child (an exec: migration) before it is used. */
        n = recvmsg(c->fd, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
        if (n > 0) {
            client_take_msg_fds(c, &msg, c->in_base + c->in_len + (uint64_t)n);
        }
    }
    if (n < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            ferry__log(FERRY_LOG_DEBUG, "monitor: QMP client read: %s", strerror(errno));
            c->dead = true;
        }
        return;
    }
    if (n == 0) {
        /* The client closed its side; it may still read the replies to what it sent (half close). */
        c->closing = true;
        if (c->out_len == 0) {
            c->dead = true;
        }
        return;
    }
    c->in_len += (size_t)n;
    client_received(mon, c);
}

/* A client with its greeting (or banner and prompt) queued, on no list. */
static MonClient *client_alloc(int fd, bool hmp)
{
    MonClient *c = ferry__xcalloc(1, sizeof(*c));
    c->fd = c->out_fd = fd;
    c->hmp = hmp;
    if (hmp) {
        char *banner = ferry__hmp_banner();
        client_queue(c, banner, strlen(banner));
        free(banner);
        client_queue(c, FERRY_HMP_PROMPT, strlen(FERRY_HMP_PROMPT));
    } else {
        json_t *greeting = ferry__monitor_greeting();
        client_queue_json(c, greeting);
        json_decref(greeting);
    }
    return c;
}

static MonClient *client_new(FerryMonitor *mon, int fd, bool hmp)
{
    MonClient *c = client_alloc(fd, hmp);
    c->next = mon->clients;
    mon->clients = c;
    mon->nclients++;
    return c;
}

/* Tell a connection the monitor will not serve it why, if its socket takes the line now, and close it. */
static void refuse_client(FerryMonitor *mon, int fd, bool hmp, const char *why)
{
    char *line;
    if (hmp) {
        line = ferry__xasprintf("Error: %s\n", why);
    } else {
        json_t *reply = json_pack("{s:{s:s, s:s}}", "error", "class", "GenericError", "desc", why);
        size_t len;
        line = serialize(reply, &len);
        json_decref(reply);
    }
    ssize_t r = send(fd, line, strlen(line), MSG_DONTWAIT | MSG_NOSIGNAL);
    (void)r;
    free(line);
    close(fd);
    if (!mon->refusing) {
        /* Once per episode: a client that retries in a loop must not flood the log. */
        ferry__log(FERRY_LOG_WARN, "monitor: refusing connections: %s", why);
        mon->refusing = true;
    }
}

FerryMonitorClient *ferry__monitor_client_new_detached(FerryMonitor *mon)
{
    return client_alloc(-1, false);
}

bool ferry__monitor_client_feed(FerryMonitor *mon, FerryMonitorClient *c, const void *data, size_t len)
{
    const char *p = data;
    while (len && !c->dead && !c->closing) {
        client_reserve_read(c);
        size_t n = FERRY_MIN(len, (size_t)MON_READ_CHUNK);
        memcpy(c->in + c->in_len, p, n);
        c->in_len += n;
        p += n;
        len -= n;
        client_received(mon, c);
    }
    return !c->dead && !c->closing;
}

char *ferry__monitor_client_take_output(FerryMonitorClient *c, size_t *len)
{
    char *out = ferry__xmalloc(c->out_len + 1);
    if (c->out_len) {
        memcpy(out, c->out, c->out_len);
    }
    out[c->out_len] = '\0';
    *len = c->out_len;
    c->out_len = 0;
    return out;
}

void ferry__monitor_client_free(FerryMonitorClient *c)
{
    if (c) {
        client_free(c);
    }
}

static void accept_clients(FerryMonitor *mon, MonListener *l)
{
    for (;;) {
        int fd = accept4(l->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            int err = errno;
            if (err == EINTR || err == ECONNABORTED) {
                continue;
            }
            if (err == EAGAIN || err == EWOULDBLOCK) {
                return;
            }
            if ((err == EMFILE || err == ENFILE) && mon->spare_fd >= 0) {
                /* Out of fds. The connection would stay queued and the listener readable, so the loop would
                 * spin; as libuv does, give up the spare fd to accept the connection and close it (the client
                 * learns why instead of hanging), then take the spare back. */
                close(mon->spare_fd);
                fd = accept4(l->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                err = errno;
                if (fd >= 0) {
                    refuse_client(mon, fd, l->hmp, "the process is out of file descriptors; try again later");
                }
                mon->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
                if (fd >= 0) {
                    continue;
                }
            }
            /* Whatever it is, retrying at once would fail the same way: rest the listeners for a moment. */
            ferry__log(FERRY_LOG_WARN, "monitor: accept on %s: %s", l->path, strerror(err));
            mon->accept_resume_ms = ferry__clock_ms() + MON_ACCEPT_PAUSE_MS;
            return;
        }
        if (mon->nclients >= FERRY_MONITOR_MAX_CLIENTS) {
            char why[96];
            snprintf(why, sizeof(why), "too many monitor clients (at most %d); try again later",
                     FERRY_MONITOR_MAX_CLIENTS);
            refuse_client(mon, fd, l->hmp, why);
            continue;
        }
        mon->refusing = false;
        client_new(mon, fd, l->hmp);
    }
}

void ferry__monitor_emit_event(FerryMonitor *mon, const char *name, json_t *data)
{
    int64_t sec, usec;
    ferry__realtime(&sec, &usec);
    json_t *msg = json_object();
    json_object_set_new(msg, "event", json_string(name));
    /* QEMU leaves "data" out of events that carry none (STOP, RESUME). */
    if (data) {
        json_object_set_new(msg, "data", data);
    }
    json_object_set_new(msg, "timestamp", json_pack("{s:I, s:I}", "seconds", (json_int_t)sec, "microseconds",
                                                    (json_int_t)usec));
    MonEvent *ev = ferry__xcalloc(1, sizeof(*ev));
    ev->line = serialize(msg, &ev->len);
    json_decref(msg);

    pthread_mutex_lock(&mon->lock);
    *mon->ev_tail = ev;
    mon->ev_tail = &ev->next;
    pthread_mutex_unlock(&mon->lock);
    wake(mon);
}

static void deliver_events(FerryMonitor *mon)
{
    pthread_mutex_lock(&mon->lock);
    MonEvent *list = mon->ev_head;
    mon->ev_head = NULL;
    mon->ev_tail = &mon->ev_head;
    pthread_mutex_unlock(&mon->lock);

    while (list) {
        MonEvent *ev = list;
        list = ev->next;
        for (MonClient *c = mon->clients; c; c = c->next) {
            if (c->negotiated && !c->closing && !c->hmp) {
                client_queue(c, ev->line, ev->len);
            }
        }
        free(ev->line);
        free(ev);
    }
}

static void reap_clients(FerryMonitor *mon)
{
    MonClient **pp = &mon->clients;
    while (*pp) {
        MonClient *c = *pp;
        if (c->dead) {
            *pp = c->next;
            client_free(c);
            mon->nclients--;
        } else {
            pp = &c->next;
        }
    }
}

void ferry__monitor_request_quit(FerryMonitor *mon, int status)
{
    pthread_mutex_lock(&mon->lock);
    if (!mon->quit) {
        mon->quit = true;
        mon->quit_status = status;
    }
    pthread_mutex_unlock(&mon->lock);
    wake(mon);
}

/* After quit: give the clients a bounded time to take the replies and events already queued (the reply to
 * "quit" and the SHUTDOWN event must reach the client before the process exits). */
static void final_flush(FerryMonitor *mon)
{
    int64_t deadline = ferry__clock_ms() + MON_QUIT_FLUSH_MS;
    for (;;) {
        size_t n = 0;
        for (MonClient *c = mon->clients; c; c = c->next) {
            client_flush(c);
            if (!c->dead && c->out_len) {
                n++;
            }
        }
        reap_clients(mon);
        int64_t left = deadline - ferry__clock_ms();
        if (n == 0 || left <= 0) {
            return;
        }
        struct pollfd *pfds = ferry__xcalloc(n, sizeof(*pfds));
        size_t i = 0;
        for (MonClient *c = mon->clients; c && i < n; c = c->next) {
            if (c->out_len) {
                pfds[i++] = (struct pollfd){ .fd = c->out_fd, .events = POLLOUT };
            }
        }
        poll(pfds, i, (int)left);
        free(pfds);
    }
}

/* What one turn of the monitor loop polls: the wake-up eventfd, the watches, the listeners, then the clients. */
typedef struct MonPollSet {
    struct pollfd *pfds;
    MonClient **clients;  /* the client of each pfds[i] from first_client on */
    size_t cap, n, first_client;
    bool accepting;       /* the listeners are not resting */
    int64_t accept_wait;  /* ms until resting listeners accept again */
    bool hmp_waiting;     /* a human monitor waits for its migration to end */
} MonPollSet;

/* The start of a turn: events out, pending output flushed, dead clients reaped. False once quit was asked for. */
static bool mon_turn_begin(FerryMonitor *mon)
{
    deliver_events(mon);
    for (MonClient *c = mon->clients; c; c = c->next) {
        if (c->out_len) {
            client_flush(c);
        }
    }
    reap_clients(mon);
    pthread_mutex_lock(&mon->lock);
    bool quit = mon->quit;
    pthread_mutex_unlock(&mon->lock);
    return !quit;
}

static void mon_pollset_build(FerryMonitor *mon, MonPollSet *ps)
{
    size_t nclients = 0;
    ps->hmp_waiting = false;
    for (MonClient *c = mon->clients; c; c = c->next) {
        nclients++;
        ps->hmp_waiting |= c->wait_mig;
    }
    ps->accept_wait = mon->accept_resume_ms - ferry__clock_ms();
    ps->accepting = ps->accept_wait <= 0;
    size_t n = 1 + mon->nwatches + mon->nlisteners + nclients;
    if (n > ps->cap) {
        ps->cap = n * 2;
        ps->pfds = ferry__xrealloc(ps->pfds, ps->cap * sizeof(*ps->pfds));
        ps->clients = ferry__xrealloc(ps->clients, ps->cap * sizeof(*ps->clients));
    }
    size_t k = 0;
    ps->pfds[k++] = (struct pollfd){ .fd = mon->wake_fd, .events = POLLIN };
    for (size_t i = 0; i < mon->nwatches; i++) {
        ps->pfds[k++] = (struct pollfd){ .fd = mon->watches[i].fd, .events = POLLIN };
    }
    for (size_t i = 0; i < mon->nlisteners; i++) {
        /* A negative fd is left out by poll(): listeners that rest are not looked at. */
        ps->pfds[k++] = (struct pollfd){ .fd = ps->accepting ? mon->listeners[i].fd : -1, .events = POLLIN };
    }
    ps->first_client = k;
    for (MonClient *c = mon->clients; c; c = c->next) {
        short ev = c->closing ? 0 : POLLIN;
        if (c->out_len && !c->is_stdio) {
            ev |= POLLOUT;
        }
        ps->clients[k] = c;
        ps->pfds[k++] = (struct pollfd){ .fd = c->fd, .events = ev };
    }
    ps->n = k;
}

/* A human monitor waiting for its migration has nothing to wake it when the migration ends (events are optional),
 * so the loop then looks at the status now and then; resting listeners wake it too. */
static int mon_poll_timeout(const MonPollSet *ps)
{
    int timeout = ps->hmp_waiting ? MON_HMP_WAIT_POLL_MS : -1;
    if (!ps->accepting && (timeout < 0 || ps->accept_wait < timeout)) {
        timeout = (int)ps->accept_wait;
    }
    return timeout;
}

/* What poll() reported, in the order the set was built. */
static void mon_dispatch(FerryMonitor *mon, const MonPollSet *ps)
{
    size_t j = 0;
    if (ps->pfds[j++].revents) {
        uint64_t v;
        ssize_t r = read(mon->wake_fd, &v, sizeof(v));
        (void)r;
    }
    for (size_t i = 0; i < mon->nwatches; i++, j++) {
        if (ps->pfds[j].revents) {
            mon->watches[i].fn(mon->watches[i].fd, mon->watches[i].opaque);
        }
    }
    for (size_t i = 0; i < mon->nlisteners; i++, j++) {
        if (ps->pfds[j].revents & POLLIN) {
            accept_clients(mon, &mon->listeners[i]);
        }
    }
    for (j = ps->first_client; j < ps->n; j++) {
        MonClient *c = ps->clients[j];
        short re = ps->pfds[j].revents;
        if (!re || c->dead) {
            continue;
        }
        if (re & POLLIN) {
            client_read(mon, c);
        } else if (re & (POLLHUP | POLLERR | POLLNVAL)) {
            c->dead = true;
            continue;
        }
        if (re & POLLOUT) {
            client_flush(c);
        }
    }
}

/* Human monitors whose migration has ended get its result and their prompt back. */
static void mon_resume_hmp_waiters(FerryMonitor *mon)
{
    for (MonClient *c = mon->clients; c; c = c->next) {
        char *out = NULL;
        if (c->wait_mig && !c->dead && ferry__hmp_migration_done(mon, &out)) {
            c->wait_mig = false;
            client_queue(c, out, strlen(out));
            client_queue(c, FERRY_HMP_PROMPT, strlen(FERRY_HMP_PROMPT));
            free(out);
            client_process_hmp(mon, c);
        }
    }
}

/* The monitor's loop, one turn per poll(), as libuv's uv_run() reads as its phases. */
int ferry__monitor_run(FerryMonitor *mon)
{
    MonPollSet ps = { 0 };
    while (mon_turn_begin(mon)) {
        mon_pollset_build(mon, &ps);
        if (poll(ps.pfds, ps.n, mon_poll_timeout(&ps)) < 0) {
            if (errno == EINTR) {
                continue;
            }
            ferry__log(FERRY_LOG_ERROR, "monitor: poll: %s", strerror(errno));
            abort();
        }
        mon_dispatch(mon, &ps);
        if (ps.hmp_waiting) {
            mon_resume_hmp_waiters(mon);
        }
    }
    free(ps.pfds);
    free(ps.clients);
    deliver_events(mon);
    final_flush(mon);
    pthread_mutex_lock(&mon->lock);
    int status = mon->quit_status;
    pthread_mutex_unlock(&mon->lock);
    return status;
}
