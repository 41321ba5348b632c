/*
 * libFuzzer target: the QMP server's input path. Each input is the byte stream of one QMP client: it goes
 * through the real framing (json-frame.c), the limits and the negotiation of qmp-server.c and the dispatcher of
 * dispatch.c, as a client without a socket (ferry__monitor_client_feed). The command table is the host runtime's
 * own (query-status, stop, cont, quit, migrate, migrate-incoming, the parameter and capability commands, and the
 * monitor's built-ins), plus test commands that take an argument of every FerryArgType, required, optional or
 * passed through, and one that fails with a chosen class.
 *
 * Nothing here can start a migration or touch a file: the host has no RAM block and no section (migrate stops at
 * "nothing to migrate"), was not started with -incoming (migrate-incoming is refused before it listens), and
 * the client sends no fds (getfd fails); the target checks after each input that no migration exists.
 *
 * What is checked besides the sanitizers: every byte the monitor sends is a line of JSON ending in "\r\n", the
 * first the greeting and every other one a reply with exactly one of "return" and "error" (an error with a class
 * and a description); and the replies do not depend on how the input was split: the same input fed at once and
 * fed in small pieces (sizes drawn from a hash of the input) to a second host gives the same bytes.
 * FUZZ_QMP_PRINT=1 in the environment prints the replies to stderr (to see what a seed or a reproducer gets).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ferry/ferry.h"
#include "host/host-int.h"
#include "migration/migration.h"
#include "monitor/monitor.h"
#include "util/util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static json_t *cmd_echo(json_t *args, void *opaque, FerryError **errp)
{
    return json_deep_copy(args);
}

/* Fails with the class and text it is given, or without saying why (the dispatcher must still answer). */
static json_t *cmd_fail(json_t *args, void *opaque, FerryError **errp)
{
    json_t *desc = json_object_get(args, "desc");
    if (desc) {
        json_int_t cls = json_integer_value(json_object_get(args, "class"));
        ferry_error_set(errp, (FerryErrorClass)(cls & 3), "%s", json_string_value(desc));
    }
    return NULL;
}

static FerryHost *host_new(void)
{
    static const FerryArgSpec required[] = {
        { "s", FERRY_ARG_STR, false },    { "i", FERRY_ARG_INT, false },   { "b", FERRY_ARG_BOOL, false },
        { "n", FERRY_ARG_NUMBER, false }, { "o", FERRY_ARG_OBJECT, false }, { "a", FERRY_ARG_ARRAY, false },
        { "x", FERRY_ARG_ANY, false },    { NULL, FERRY_ARG_ANY, false },
    };
    static const FerryArgSpec optional[] = {
        { "s", FERRY_ARG_STR, true },    { "i", FERRY_ARG_INT, true },   { "b", FERRY_ARG_BOOL, true },
        { "n", FERRY_ARG_NUMBER, true }, { "o", FERRY_ARG_OBJECT, true }, { "a", FERRY_ARG_ARRAY, true },
        { "x", FERRY_ARG_ANY, true },    { NULL, FERRY_ARG_ANY, false },
    };
    static const FerryArgSpec passthrough[] = {
        { "s", FERRY_ARG_STR, false }, { "*", FERRY_ARG_ANY, true }, { NULL, FERRY_ARG_ANY, false },
    };
    static const FerryArgSpec fail[] = {
        { "desc", FERRY_ARG_STR, true }, { "class", FERRY_ARG_INT, true }, { NULL, FERRY_ARG_ANY, false },
    };
    FerryHost *h = ferry_host_new("fuzz-qmp", NULL);
    if (!h || !ferry_host_register_command(h, "x-echo", required, cmd_echo, NULL, NULL) ||
        !ferry_host_register_command(h, "x-echo-optional", optional, cmd_echo, NULL, NULL) ||
        !ferry_host_register_command(h, "x-echo-passthrough", passthrough, cmd_echo, NULL, NULL) ||
        !ferry_host_register_command(h, "x-fail", fail, cmd_fail, NULL, NULL)) {
        abort();
    }
    /* As after ferry_host_start() without -S or -incoming, but without its sockets and signal handlers. */
    FerryMigration *m = ferry_host_migration(h);
    ferry__runstate_init(m, false, false);
    ferry__vm_start_initial(m);
    return h;
}

/* Checks the monitor's output since the last call (*greeted: whether the greeting came already); returns it (caller
 * frees) for the comparison. */
static char *check_output(FerryMonitorClient *c, bool *greeted, size_t *len)
{
    char *out = ferry__monitor_client_take_output(c, len);
    size_t pos = 0;
    while (pos < *len) {
        char *end = memmem(out + pos, *len - pos, "\r\n", 2);
        if (!end) {
            abort(); /* a message without its line end */
        }
        size_t n = (size_t)(end - (out + pos));
        json_error_t jerr;
        json_t *msg = json_loadb(out + pos, n, 0, &jerr);
        if (!json_is_object(msg) || memchr(out + pos, '\n', n)) {
            abort(); /* not one line of JSON holding an object */
        }
        if (!*greeted) {
            if (!json_object_get(msg, "QMP")) {
                abort();
            }
        } else {
            json_t *ret = json_object_get(msg, "return");
            json_t *error = json_object_get(msg, "error");
            size_t members = json_object_size(msg) - (json_object_get(msg, "id") ? 1 : 0);
            if (!ret == !error || members != 1) {
                abort();
            }
            if (error && (!json_is_string(json_object_get(error, "class")) ||
                          !json_is_string(json_object_get(error, "desc")))) {
                abort();
            }
        }
        json_decref(msg);
        *greeted = true;
        pos += n + 2;
    }
    return out;
}

static void check_no_migration(FerryHost *h)
{
    json_t *q = ferry__migration_query(ferry_host_migration(h));
    if (strcmp(json_string_value(json_object_get(q, "status")), "none") != 0) {
        abort();
    }
    json_decref(q);
}

/* Feed @data to a fresh host's client, in one piece or in pieces of 1..64 bytes drawn from @seed; returns the
 * whole output. */
static char *run(const uint8_t *data, size_t size, uint64_t seed, bool pieces, size_t *out_len)
{
    FerryHost *h = host_new();
    FerryMonitorClient *c = ferry__monitor_client_new_detached(h->mon);
    size_t len;
    bool greeted = false;
    char *out = check_output(c, &greeted, &len);
    size_t pos = 0;
    while (pos < size) {
        size_t n = size - pos;
        if (pieces) {
            seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
            n = FERRY_MIN(n, (size_t)(seed >> 58) + 1);
        }
        bool alive = ferry__monitor_client_feed(h->mon, c, data + pos, n);
        pos += n;
        size_t more_len;
        char *more = check_output(c, &greeted, &more_len);
        out = ferry__xrealloc(out, len + more_len + 1);
        memcpy(out + len, more, more_len + 1);
        len += more_len;
        free(more);
        if (!alive) {
            break; /* cut off: the rest of the input is never read */
        }
    }
    check_no_migration(h);
    ferry__monitor_client_free(c);
    ferry_host_free(h);
    *out_len = len;
    return out;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* FNV-1a: the pieces are a function of the input, so a crash reproduces. */
    uint64_t seed = 14695981039346656037ULL;
    for (size_t i = 0; i < size; i++) {
        seed = (seed ^ data[i]) * 1099511628211ULL;
    }
    size_t whole_len, pieces_len;
    char *whole = run(data, size, seed, false, &whole_len);
    char *pieces = run(data, size, seed, true, &pieces_len);
    if (whole_len != pieces_len || memcmp(whole, pieces, whole_len) != 0) {
        fprintf(stderr, "fuzz-qmp: the replies depend on how the input was split:\n--- at once:\n%s\n--- in "
                "pieces:\n%s\n", whole, pieces);
        abort();
    }
    if (getenv("FUZZ_QMP_PRINT")) {
        fwrite(whole, 1, whole_len, stderr); /* to look at what an input gets, e.g. a seed */
    }
    free(whole);
    free(pieces);
    return 0;
}
