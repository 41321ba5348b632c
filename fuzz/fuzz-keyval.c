/*
 * libFuzzer target: the parsers of comma-separated options. Each input (up to its first NUL byte, as a command
 * line gives it) goes through QEMU's keyval syntax (src/util/keyval.c) and, when that accepts it, the conversion
 * and check of "-incoming config:" (ferry__migration_params_check_keyval) and the setting of what the check
 * accepted; through the host runtime's options that take such strings (-incoming config:, -qmp, -monitor, -name);
 * and through the host programs' -object memory-backend-*, -machine, -netdev and -device parsers
 * (hosts/common/options.c, netdev.c), in both programs' flavours.
 *
 * Besides the sanitizers' rules: keyval's result has strings for leaves, lists without holes and no empty
 * containers, and it is what the input says: printing it back as keyval (",," for a comma in a value) and parsing
 * that gives the same object; whatever the -incoming config: check accepts, migrate-set-parameters takes.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "ferry/ferry.h"
#include "migration/migration.h"
#include "monitor/monitor.h"
#include "net.h"
#include "options.h"
#include "util/util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void fail(const char *what, const char *input)
{
    fprintf(stderr, "fuzz-keyval: %s: '%s'\n", what, input);
    abort();
}

/* A growing string. */
typedef struct Buf {
    char *s;
    size_t len, cap;
} Buf;

static void buf_add(Buf *b, const char *s, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        b->cap = (b->len + n + 1) * 2;
        b->s = ferry__xrealloc(b->s, b->cap);
    }
    memcpy(b->s + b->len, s, n);
    b->len += n;
    b->s[b->len] = '\0';
}

/* Print @v at dotted key @path as keyval pairs; checks the shape on the way. */
static void print_keyval(Buf *b, const char *path, json_t *v, const char *input)
{
    if (json_is_string(v)) {
        if (b->len) {
            buf_add(b, ",", 1);
        }
        buf_add(b, path, strlen(path));
        buf_add(b, "=", 1);
        for (const char *p = json_string_value(v); *p; p++) {
            buf_add(b, p, 1);
            if (*p == ',') {
                buf_add(b, ",", 1);
            }
        }
        return;
    }
    if (json_is_object(v)) {
        const char *key;
        json_t *member;
        if (*path && json_object_size(v) == 0) {
            fail("keyval made an empty object", input);
        }
        json_object_foreach(v, key, member) {
            char *sub = *path ? ferry__xasprintf("%s.%s", path, key) : ferry__xstrdup(key);
            print_keyval(b, sub, member, input);
            free(sub);
        }
        return;
    }
    if (json_is_array(v)) {
        size_t i;
        json_t *item;
        if (json_array_size(v) == 0) {
            fail("keyval made an empty list", input);
        }
        json_array_foreach(v, i, item) {
            char *sub = ferry__xasprintf("%s.%zu", path, i);
            print_keyval(b, sub, item, input);
            free(sub);
        }
        return;
    }
    fail("keyval made a leaf that is not a string", input);
}

static void fuzz_keyval(const char *s)
{
    static FerryMigration *m;
    if (!m) {
        m = ferry__migration_new();
    }
    FerryError *err = NULL;
    json_t *kv = ferry__keyval_parse(s, &err);
    if (!kv) {
        if (!err || !*ferry_error_msg(err)) {
            fail("keyval refused an input without a message", s);
        }
        ferry_error_free(err);
        return;
    }
    if (!json_is_object(kv)) {
        fail("keyval's result is not an object", s);
    }
    Buf b = { 0 };
    buf_add(&b, "", 0);
    print_keyval(&b, "", kv, s);
    json_t *again = ferry__keyval_parse(b.s, &err);
    if (!again || !json_equal(kv, again)) {
        fprintf(stderr, "fuzz-keyval: printed back as '%s': %s\n", b.s, err ? ferry_error_msg(err) : "differs");
        fail("keyval's result, printed back, parses to something else", s);
    }
    json_decref(again);
    free(b.s);

    json_t *typed = NULL;
    if (ferry__migration_params_check_keyval(kv, &typed, &err)) {
        if (!ferry__migration_set_params(m, typed, &err)) {
            fprintf(stderr, "fuzz-keyval: %s\n", ferry_error_msg(err));
            fail("migrate-set-parameters refused what -incoming config: accepted", s);
        }
        json_decref(ferry__migration_query_params(m));
        json_decref(typed);
    } else {
        ferry_error_free(err);
    }
    json_decref(kv);
}

/* The host runtime's options of this syntax. A new host each time: -incoming config: is allowed once. */
static void fuzz_host_options(const char *s)
{
    FerryHost *h = ferry_host_new("fuzz-keyval", NULL);
    static const char *const opts[] = { "-incoming", "-qmp", "-monitor", "-name" };
    char *config = ferry__xasprintf("config:%s", s);
    for (size_t i = 0; i < FERRY_ARRAY_SIZE(opts); i++) {
        bool used = false;
        FerryError *err = NULL;
        int r = ferry_host_parse_option(h, opts[i], i == 0 ? config : s, &used, &err);
        if (r != 1 && r != -1) {
            fail("a common option was not taken as one", s);
        }
        if ((r < 0) != (err != NULL) || !used) {
            fail("a common option broke its contract", s);
        }
        ferry_error_free(err);
    }
    free(config);
    char *path = NULL;
    if (ferry__monitor_parse_qmp_spec(s, &path, NULL) && (!path || !*path)) {
        fail("-qmp accepted a spec without a path", s);
    }
    free(path);
    ferry_host_free(h);
}

static void fuzz_workload_options(const char *s)
{
    MemBackend mb = { 0 };
    FerryError *err = NULL;
    if (opts_parse_object(s, &mb, &err)) {
        if (!mb.id[0] || !mb.size || (strcmp(mb.type, "memory-backend-file") == 0 && !mb.mem_path[0])) {
            fail("-object accepted a backend without id, size or mem-path", s);
        }
    }
    ferry_error_free(err);
    err = NULL;
    opts_parse_machine(s, &mb, &err);
    ferry_error_free(err);
    err = NULL;
    MemBackend vmb = { .vm_machine = true };
    opts_parse_machine(s, &vmb, &err);
    ferry_error_free(err);
    err = NULL;
    NetSetup net = { 0 };
    if (net_parse_netdev(&net, s, &err)) {
        net_parse_device(&net, "virtio-net,netdev=n0,ip=10.0.0.2", NULL);
    }
    ferry_error_free(err);
    err = NULL;
    NetSetup net2 = { 0 };
    net_parse_netdev(&net2, "tap,id=n0,ifname=ftap0,script=no", NULL);
    if (net_parse_device(&net2, s, &err)) {
        net_setup_check(&net2, NULL);
    }
    ferry_error_free(err);
    err = NULL;
    /* ferry-vm's flavour (hosts/common/netdev.c): a guest's NIC, which must refuse ip=. */
    NetSetup net3 = { .guest_nic = true };
    net_parse_netdev(&net3, "tap,id=n0,ifname=ftap0,script=no", NULL);
    if (net_parse_device(&net3, s, &err) && net3.cfg[0].ident.ip[0]) {
        fail("-device accepted ip= for a guest's NIC", s);
    }
    ferry_error_free(err);
    uint64_t v;
    opts_parse_size(s, 20, &v);
    opts_parse_u64(s, UINT64_MAX, &v);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s = ferry__xstrndup((const char *)data, size);
    fuzz_keyval(s);
    fuzz_host_options(s);
    fuzz_workload_options(s);
    free(s);
    return 0;
}
