/*
 * The migration engine end to end inside one process: a source engine and a destination engine, each with its
 * own RAM blocks and a state section, connected over a UNIX socket. Checks that RAM written while the migration
 * runs arrives (dirty tracking), that zero pages and never-touched pages come out zero, that sections are loaded,
 * and the failure rules: a block mismatch is refused by the destination and reported to the source, which keeps
 * its state; a section that fails to load leaves the destination not running; cancel leaves the source running;
 * a backend's fd reaches the destination's set_fd, and the source's release runs only once a destination
 * acknowledged; a hostile destination's megabyte failure report reaches error-desc bounded.
 */
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <cmocka.h>

#include "test-helpers.h"

#include "ferry/ferry.h"
#include "channel/channel.h"
#include "migration/migration.h"
#include "migration/migration-priv.h"
#include "migration-test-helpers.h"
#include "ram/ram.h"
#include "util/util.h"
#include "wire/wire.h"

typedef struct Dev {
    uint64_t counter;
    char *label;
    bool fail_load;
} Dev;

static bool dev_visit(FerryVisitor *v, void *opaque, uint32_t version, FerryError **errp)
{
    Dev *d = opaque;
    if (ferry_visitor_kind(v) == FERRY_VISITOR_INPUT && d->fail_load) {
        ferry_error_setg(errp, "refusing on purpose");
        return false;
    }
    return ferry_visit_u64(v, "counter", &d->counter, errp) && ferry_visit_str(v, "label", &d->label, errp);
}

typedef struct Writer {
    FerryRamBlock *blk;
    size_t npages, ps;
    bool mark;
    volatile bool stop;
    uint64_t rounds;
    pthread_t thread;
    bool running;
} Writer;

/* A stand-in workload: writes one byte of every 7th page, round after round, until stopped. */
static void *writer_thread(void *opaque)
{
    Writer *w = opaque;
    uint8_t *p = ferry_ram_block_host(w->blk);
    while (!w->stop) {
        for (size_t i = 0; i < w->npages && !w->stop; i += 7) {
            p[i * w->ps] = (uint8_t)(w->rounds + 1);
            if (w->mark) {
                ferry_ram_mark_dirty(w->blk, i * w->ps, 1);
            }
        }
        w->rounds++;
    }
    return NULL;
}

typedef struct Side {
    FerryMigration *m;
    FerryRamBlock *blk[2];
    Dev dev;
    int stops, starts;
    Writer *w;
} Side;

/* The host's stop callback must not return before the writers have stopped: join the writer. */
static void host_stop(void *opaque)
{
    Side *s = opaque;
    s->stops++;
    if (s->w && s->w->running) {
        s->w->stop = true;
        pthread_join(s->w->thread, NULL);
        s->w->running = false;
    }
}

static void host_start(void *opaque)
{
    Side *s = opaque;
    s->starts++;
    if (s->w && !s->w->running) {
        s->w->stop = false;
        pthread_create(&s->w->thread, NULL, writer_thread, s->w);
        s->w->running = true;
    }
}

static const FerryHostOps ops = { .stop = host_stop, .start = host_start };

static void side_init(Side *s, uint64_t size0, FerryTrackerKind kind)
{
    memset(s, 0, sizeof(*s));
    s->m = ferry__migration_new();
    s->blk[0] = ferry_ram_block_new(s->m, "ram0", size0, NULL);
    s->blk[1] = ferry_ram_block_new(s->m, "ram1", 1 << 20, NULL);
    assert_non_null(s->blk[0]);
    assert_non_null(s->blk[1]);
    ferry_migration_set_dirty_tracker(s->m, kind);
    assert_true(ferry_migration_register_section(s->m, "dev", 0, 1, dev_visit, &s->dev, NULL));
    ferry__migration_set_host_ops(s->m, &ops, s);
}

static void side_free(Side *s)
{
    ferry__migration_free(s->m);
    free(s->dev.label);
}

static char *sock_path(void)
{
    static int n;
    return ferry__xasprintf("unix:/tmp/ferry-test-loopback-%d-%d.sock", (int)getpid(), n++);
}

static FerryMigrationAddress *addr_of(const char *uri)
{
    FerryMigrationAddress *a = NULL;
    assert_true(ferry__address_parse_uri(uri, &a, NULL));
    return a;
}

static char *error_desc(FerryMigration *m)
{
    json_t *q = ferry__migration_query(m);
    const char *e = json_string_value(json_object_get(q, "error-desc"));
    char *r = ferry__xstrdup(e ? e : "");
    json_decref(q);
    return r;
}

static void run_good(FerryTrackerKind kind)
{
    Side src, dst;
    const uint64_t size = 8 << 20;
    side_init(&src, size, kind);
    side_init(&dst, size, kind);
    size_t ps = ferry_ram_page_size();
    uint8_t *s0 = ferry_ram_block_host(src.blk[0]);
    uint8_t *s1 = ferry_ram_block_host(src.blk[1]);
    /* Data pages, a zero page that was touched, and pages never touched. */
    for (size_t i = 0; i < size / ps; i += 3) {
        memset(s0 + i * ps, (int)(i % 251) + 1, ps);
    }
    memset(s0 + 1 * ps, 0, ps);
    s1[100] = 42;
    src.dev.counter = 12345;
    src.dev.label = ferry__xstrdup("hello");
    /* Make the destination's RAM dirty where the source has zeros, to prove zero pages are written. */
    uint8_t *d0 = ferry_ram_block_host(dst.blk[0]);
    memset(d0 + 1 * ps, 0x77, ps);

    Writer w = { .blk = src.blk[0], .npages = size / ps, .ps = ps, .mark = kind == FERRY_TRACKER_EXPLICIT };
    src.w = &w;
    ferry__runstate_init(dst.m, false, true);
    ferry__runstate_init(src.m, false, false);
    ferry__vm_start_initial(src.m);
    assert_int_equal(src.starts, 1);

    char *uri = sock_path();
    FerryMigrationAddress *a = addr_of(uri);
    FerryError *err = NULL;
    assert_true(ferry__migrate_incoming(dst.m, a, false, &err));
    json_t *limit = json_pack("{s:i}", "max-bandwidth", 0);
    assert_true(ferry__migration_set_params(src.m, limit, NULL));
    json_decref(limit);
    usleep(20 * 1000);
    assert_true(ferry__migrate(src.m, a, &err));
    const char *st = wait_terminal(src.m, 30000);
    if (strcmp(st, "completed") != 0) {
        fail_msg("source status %s: %s", st, error_desc(src.m));
    }
    assert_string_equal(wait_terminal(dst.m, 30000), "completed");
    assert_int_equal(ferry__runstate_get(src.m), FERRY_RUN_POSTMIGRATE);
    assert_int_equal(ferry__runstate_get(dst.m), FERRY_RUN_RUNNING);
    assert_int_equal(src.stops, 1);
    assert_int_equal(dst.starts, 1);
    assert_true(w.rounds > 0);
    /* Every page, including those the writer changed while the migration ran, arrived as it was at the stop. */
    for (size_t i = 0; i < size / ps; i++) {
        if (memcmp(s0 + i * ps, d0 + i * ps, ps) != 0) {
            fail_msg("page %zu differs (source %u, destination %u)", i, s0[i * ps], d0[i * ps]);
        }
    }
    assert_memory_equal(s1, ferry_ram_block_host(dst.blk[1]), 1 << 20);
    assert_true(dst.dev.counter == 12345);
    assert_string_equal(dst.dev.label, "hello");

    json_t *q = ferry__migration_query(src.m);
    json_t *ram = json_object_get(q, "ram");
    assert_true(json_integer_value(json_object_get(ram, "duplicate")) >= 1);
    assert_true(json_integer_value(json_object_get(ram, "normal")) >= (json_int_t)((size / ps) / 3));
    assert_non_null(json_object_get(q, "downtime"));
    const char *tracker = json_string_value(json_object_get(q, "dirty-tracker"));
    assert_non_null(tracker);
    if (kind == FERRY_TRACKER_UFFD_WP) {
        assert_string_equal(tracker, "uffd-wp");
    } else if (kind == FERRY_TRACKER_EXPLICIT) {
        assert_string_equal(tracker, "explicit");
    } else if (kind == FERRY_TRACKER_NONE) {
        assert_string_equal(tracker, "none");
        assert_non_null(json_object_get(q, "dirty-tracker-note"));
    }
    json_decref(q);

    ferry__address_free(a);
    free(uri);
    side_free(&src);
    side_free(&dst);
}

static void test_migrate_uffd(void **state)
{
    if (!ferry__tracker_uffd_wp_probe(NULL)) {
        print_message("skipped: userfaultfd write-protect unavailable here\n");
        skip();
    }
    run_good(FERRY_TRACKER_UFFD_WP);
}

static void test_migrate_explicit(void **state)
{
    run_good(FERRY_TRACKER_EXPLICIT);
}

static void test_migrate_none(void **state)
{
    run_good(FERRY_TRACKER_NONE);
}

/* Start the source workload, listen on the destination, and start the migration between them. */
static FerryMigrationAddress *migrate_pair(Side *src, Side *dst, char **uri)
{
    ferry__runstate_init(dst->m, false, true);
    ferry__runstate_init(src->m, false, false);
    ferry__vm_start_initial(src->m);
    *uri = sock_path();
    FerryMigrationAddress *a = addr_of(*uri);
    assert_true(ferry__migrate_incoming(dst->m, a, false, NULL));
    assert_true(ferry__migrate(src->m, a, NULL));
    return a;
}

/* The destination has a different RAM size: it refuses, and the source reports the destination's reason and
 * keeps running. */
static void test_config_mismatch(void **state)
{
    Side src, dst;
    side_init(&src, 4 << 20, FERRY_TRACKER_AUTO);
    side_init(&dst, 8 << 20, FERRY_TRACKER_AUTO);
    memset(ferry_ram_block_host(src.blk[0]), 0x5a, 4 << 20);
    char *uri;
    FerryMigrationAddress *a = migrate_pair(&src, &dst, &uri);
    assert_string_equal(wait_terminal(src.m, 30000), "failed");
    assert_string_equal(wait_terminal(dst.m, 30000), "failed");
    char *e = error_desc(src.m);
    assert_non_null(strstr(e, "size mismatch"));
    free(e);
    assert_int_equal(ferry__runstate_get(src.m), FERRY_RUN_RUNNING);
    assert_int_equal(ferry__runstate_get(dst.m), FERRY_RUN_INMIGRATE);
    uint8_t *p = ferry_ram_block_host(src.blk[0]);
    for (size_t i = 0; i < (4u << 20); i++) {
        if (p[i] != 0x5a) {
            fail_msg("source RAM changed at %zu", i);
        }
    }
    ferry__address_free(a);
    free(uri);
    side_free(&src);
    side_free(&dst);
}

/* A section that fails to load: the destination fails, does not run, and RAM reads as zero again; the source
 * that had stopped its workload for switchover starts it again. */
static void test_section_load_failure(void **state)
{
    Side src, dst;
    side_init(&src, 2 << 20, FERRY_TRACKER_AUTO);
    side_init(&dst, 2 << 20, FERRY_TRACKER_AUTO);
    dst.dev.fail_load = true;
    memset(ferry_ram_block_host(src.blk[0]), 0x33, 2 << 20);
    char *uri;
    FerryMigrationAddress *a = migrate_pair(&src, &dst, &uri);
    assert_string_equal(wait_terminal(src.m, 30000), "failed");
    assert_string_equal(wait_terminal(dst.m, 30000), "failed");
    char *e = error_desc(src.m);
    assert_non_null(strstr(e, "refusing on purpose"));
    free(e);
    assert_int_equal(src.stops, 1);
    assert_int_equal(src.starts, 2);
    assert_int_equal(ferry__runstate_get(src.m), FERRY_RUN_RUNNING);
    assert_int_equal(dst.starts, 0);
    uint8_t *d = ferry_ram_block_host(dst.blk[0]);
    for (size_t i = 0; i < (2u << 20); i += 512) {
        assert_int_equal(d[i], 0);
    }
    /* A second attempt on the same destination works once the section loads. */
    dst.dev.fail_load = false;
    assert_true(ferry__migrate_incoming(dst.m, a, false, NULL));
    assert_true(ferry__migrate(src.m, a, NULL));
    assert_string_equal(wait_terminal(src.m, 30000), "completed");
    assert_string_equal(wait_terminal(dst.m, 30000), "completed");
    assert_memory_equal(ferry_ram_block_host(src.blk[0]), d, 2 << 20);
    ferry__address_free(a);
    free(uri);
    side_free(&src);
    side_free(&dst);
}

/* A hostile destination: accepts one connection, waits for the source's first bytes, and answers with a failure
 * report (NACK) as long as a control record may be, full of terminal controls; then waits for the source to hang
 * up. */
static void *nack_destination(void *opaque)
{
    int fd = accept(*(int *)opaque, NULL, NULL);
    assert_true(fd >= 0);
    char buf[4096];
    assert_true(read(fd, buf, sizeof(buf)) > 0);
    uint32_t len = FERRY_WIRE_MAX_CONTROL_LEN;
    uint8_t *rec = ferry__xmalloc(FERRY_WIRE_RECORD_HEADER_LEN + len + 4);
    ferry__wire_encode_record(rec, &(FerryRecordHeader){ .type = FERRY_REC_NACK, .flags = FERRY_REC_CRITICAL,
                                                         .length = len });
    uint8_t *text = rec + FERRY_WIRE_RECORD_HEADER_LEN;
    for (uint32_t i = 0; i < len; i++) {
        text[i] = "\x1b[2J\rforged "[i % 12];
    }
    ferry__put_be32(text + len, ferry__crc32c(0, rec, FERRY_WIRE_RECORD_HEADER_LEN + len));
    size_t total = FERRY_WIRE_RECORD_HEADER_LEN + len + 4, done = 0;
    while (done < total) {
        ssize_t n = write(fd, rec + done, total - done);
        if (n <= 0) {
            break;
        }
        done += (size_t)n;
    }
    free(rec);
    while (read(fd, buf, sizeof(buf)) > 0) {
    }
    close(fd);
    return NULL;
}

/* The destination's failure report is quoted in the source's error-desc, but at most FERRY_MIG_ERROR_DESC_MAX bytes
 * of it, cut on a character boundary with a marker saying how much was left out. */
static void test_error_desc_bounded(void **state)
{
    Side src;
    side_init(&src, 1 << 20, FERRY_TRACKER_AUTO);
    ferry__runstate_init(src.m, false, false);
    ferry__vm_start_initial(src.m);
    char *uri = sock_path();
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", uri + strlen("unix:"));
    int lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(lfd >= 0);
    unlink(sa.sun_path);
    assert_int_equal(bind(lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(lfd, 1), 0);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, nack_destination, &lfd), 0);

    FerryMigrationAddress *a = addr_of(uri);
    assert_true(ferry__migrate(src.m, a, NULL));
    assert_string_equal(wait_terminal(src.m, 30000), "failed");
    char *e = error_desc(src.m);
    if (strlen(e) > FERRY_MIG_ERROR_DESC_MAX + strlen("... (1048576 bytes cut)")) {
        fail_msg("error-desc of %zu bytes", strlen(e));
    }
    assert_non_null(strstr(e, "the destination failed: \x1b[2J\rforged \x1b[2J\rforged "));
    assert_non_null(strstr(e, " bytes cut)"));
    free(e);
    assert_int_equal(ferry__runstate_get(src.m), FERRY_RUN_RUNNING);
    side_free(&src);
    assert_int_equal(pthread_join(t, NULL), 0);
    close(lfd);
    unlink(sa.sun_path);
    ferry__address_free(a);
    free(uri);
}

/* A migration throttled to a crawl is cancelled: status cancelled, the source was never stopped. */
static void test_cancel(void **state)
{
    Side src, dst;
    side_init(&src, 32 << 20, FERRY_TRACKER_AUTO);
    side_init(&dst, 32 << 20, FERRY_TRACKER_AUTO);
    memset(ferry_ram_block_host(src.blk[0]), 0x11, 32 << 20);
    ferry__runstate_init(dst.m, false, true);
    ferry__runstate_init(src.m, false, false);
    ferry__vm_start_initial(src.m);
    json_t *p = json_pack("{s:i}", "max-bandwidth", 1 << 20);
    assert_true(ferry__migration_set_params(src.m, p, NULL));
    json_decref(p);
    char *uri = sock_path();
    FerryMigrationAddress *a = addr_of(uri);
    assert_true(ferry__migrate_incoming(dst.m, a, false, NULL));
    assert_true(ferry__migrate(src.m, a, NULL));
    usleep(300 * 1000);
    assert_true(ferry__migrate_cancel(src.m, NULL));
    assert_string_equal(wait_terminal(src.m, 30000), "cancelled");
    assert_string_equal(wait_terminal(dst.m, 30000), "failed");
    assert_int_equal(src.stops, 0);
    assert_int_equal(ferry__runstate_get(src.m), FERRY_RUN_RUNNING);
    /* Busy while another migration is pending on the destination side. */
    FerryError *err = NULL;
    assert_false(ferry__migrate(dst.m, a, &err));
    assert_non_null(strstr(ferry_error_msg(err), "incoming"));
    ferry_error_free(err);
    ferry__address_free(a);
    free(uri);
    side_free(&src);
    side_free(&dst);
}

/* migrate_cancel reaches a migration still waiting for its TCP connection (a listener with a full backlog never
 * completes it); so does freeing the engine, which must not wait for the kernel's connect timeout. */
static void test_cancel_while_connecting(void **state)
{
    int lfd, filler;
    char *uri = full_backlog_listener(&lfd, &filler);
    FerryMigrationAddress *a = addr_of(uri);

    Side src;
    side_init(&src, 1 << 20, FERRY_TRACKER_AUTO);
    ferry__runstate_init(src.m, false, false);
    ferry__vm_start_initial(src.m);
    assert_true(ferry__migrate(src.m, a, NULL));
    usleep(200 * 1000);
    assert_string_equal(wait_terminal(src.m, 1), "timeout"); /* still connecting */
    assert_true(ferry__migrate_cancel(src.m, NULL));
    assert_string_equal(wait_terminal(src.m, 30000), "cancelled");
    assert_int_equal(ferry__runstate_get(src.m), FERRY_RUN_RUNNING);

    /* Again, and this time leave it to ferry__migration_free() (what quit does). */
    assert_true(ferry__migrate(src.m, a, NULL));
    usleep(100 * 1000);
    side_free(&src);

    ferry__address_free(a);
    free(uri);
    close(filler);
    close(lfd);
}

/*
 * Start a migration from @src to @dst over a pipe ("fd:NAME-in" / "fd:NAME-out" in the fd store): a one-way
 * channel, so the source completes once the stream is written. Both run states are set up for it first.
 */
static void migrate_over_pipe(Side *src, Side *dst, const char *name)
{
    ferry__runstate_init(dst->m, false, true);
    ferry__runstate_init(src->m, false, false);
    ferry__vm_start_initial(src->m);
    int p[2];
    char in_name[64], out_name[64], in_uri[80], out_uri[80];
    snprintf(in_name, sizeof(in_name), "%s-in", name);
    snprintf(out_name, sizeof(out_name), "%s-out", name);
    snprintf(in_uri, sizeof(in_uri), "fd:%s", in_name);
    snprintf(out_uri, sizeof(out_uri), "fd:%s", out_name);
    assert_int_equal(pipe2(p, O_CLOEXEC), 0);
    /* A pipe holds 64 KiB: the two ends must run at the same time, as they do. */
    assert_true(ferry__fdstore_add(in_name, p[0], NULL));
    assert_true(ferry__fdstore_add(out_name, p[1], NULL));
    FerryMigrationAddress *in = addr_of(in_uri), *out = addr_of(out_uri);
    assert_true(ferry__migrate_incoming(dst->m, in, false, NULL));
    assert_true(ferry__migrate(src->m, out, NULL));
    ferry__address_free(in);
    ferry__address_free(out);
}

/*
 * A channel without a return path: the stream goes through a pipe handed to both engines as named fds
 * ("fd:NAME"). The source completes once the stream is written (no ACK can come back), the destination checks
 * the stream on its own. A second run with a destination whose RAM differs shows that the destination refuses on
 * its own; the source cannot be told why, but the closed pipe fails it and it keeps running.
 */
static void run_one_way(uint64_t dst_size, bool expect_ok)
{
    Side src, dst;
    side_init(&src, 4 << 20, FERRY_TRACKER_AUTO);
    side_init(&dst, dst_size, FERRY_TRACKER_AUTO);
    memset(ferry_ram_block_host(src.blk[0]), 0x42, 4 << 20);
    src.dev.counter = 7;
    migrate_over_pipe(&src, &dst, "oneway");
    const char *st = wait_terminal(src.m, 30000);
    if (strcmp(st, expect_ok ? "completed" : "failed") != 0) {
        fail_msg("source status %s: %s", st, error_desc(src.m));
    }
    assert_string_equal(wait_terminal(dst.m, 30000), expect_ok ? "completed" : "failed");
    if (expect_ok) {
        assert_memory_equal(ferry_ram_block_host(src.blk[0]), ferry_ram_block_host(dst.blk[0]), 4 << 20);
        assert_true(dst.dev.counter == 7);
        assert_int_equal(ferry__runstate_get(dst.m), FERRY_RUN_RUNNING);
    } else {
        char *e = error_desc(dst.m);
        assert_non_null(strstr(e, "size mismatch"));
        free(e);
        assert_int_equal(ferry__runstate_get(dst.m), FERRY_RUN_INMIGRATE);
        assert_int_equal(ferry__runstate_get(src.m), FERRY_RUN_RUNNING);
    }
    side_free(&src);
    side_free(&dst);
}

static void test_one_way(void **state)
{
    run_one_way(4 << 20, true);
    run_one_way(8 << 20, false);
}

/* ---- Backends: set_fd on the destination, release on the source (include/ferry/backend.h) ---- */

typedef struct TestBackend {
    FerryMigration *m;
    int fd;
    int sets, releases;
    FerryRunState state_at_release;
} TestBackend;

static int tb_get_fd(void *opaque)
{
    return ((TestBackend *)opaque)->fd;
}

static bool tb_set_fd(void *opaque, int fd, FerryError **errp)
{
    TestBackend *tb = opaque;
    if (tb->fd >= 0) {
        close(tb->fd);
    }
    tb->fd = fd;
    tb->sets++;
    return true;
}

static void tb_release(void *opaque)
{
    TestBackend *tb = opaque;
    tb->releases++;
    tb->state_at_release = ferry__runstate_get(tb->m);
    if (tb->fd >= 0) {
        close(tb->fd);
        tb->fd = -1;
    }
}

static const FerryBackendOps tb_ops = { .get_fd = tb_get_fd, .set_fd = tb_set_fd, .release = tb_release };

static void tb_register(Side *s, TestBackend *tb, int fd, bool transfer)
{
    *tb = (TestBackend){ .m = s->m, .fd = fd, .state_at_release = FERRY_RUN_SHUTDOWN };
    assert_true(ferry_migration_register_backend(s->m, "virtio-net-tap", "n0", &tb_ops, tb, NULL));
    if (transfer) {
        json_t *p = json_pack("{s:[s]}", "backend-transfer", "virtio-net-tap");
        assert_true(ferry__migration_set_params(s->m, p, NULL));
        json_decref(p);
    }
}

/* A source and a destination of 1 MiB with a test backend each; the source's holds a new memfd (returned). */
static int backend_pair(Side *src, TestBackend *sb, Side *dst, TestBackend *db, bool transfer)
{
    side_init(src, 1 << 20, FERRY_TRACKER_AUTO);
    side_init(dst, 1 << 20, FERRY_TRACKER_AUTO);
    int fd = memfd_create("backend", MFD_CLOEXEC);
    assert_true(fd >= 0);
    tb_register(src, sb, fd, transfer);
    tb_register(dst, db, -1, transfer);
    return fd;
}

/*
 * With backend-transfer on, the destination's set_fd gets the very open file the source had; the source's release
 * runs exactly once, after the destination acknowledged and before the run state became postmigrate (the
 * workload still stopped); the destination's release never runs. A failed migration releases nothing, and
 * neither does a stream without a return path (nobody is known to run the backend then), with or without
 * backend-transfer.
 */
static void test_backend_release(void **state)
{
    struct stat st_src, st_dst;
    Side src, dst;
    TestBackend sb, db;
    char *uri;

    /* Completed: the fd moves, the source lets go of it. */
    int fd = backend_pair(&src, &sb, &dst, &db, true);
    assert_int_equal(fstat(fd, &st_src), 0);
    FerryMigrationAddress *a = migrate_pair(&src, &dst, &uri);
    assert_string_equal(wait_terminal(src.m, 30000), "completed");
    assert_string_equal(wait_terminal(dst.m, 30000), "completed");
    assert_int_equal(sb.releases, 1);
    assert_int_equal(sb.state_at_release, FERRY_RUN_FINISH_MIGRATE);
    assert_int_equal(sb.fd, -1);
    assert_int_equal(ferry__runstate_get(src.m), FERRY_RUN_POSTMIGRATE);
    assert_int_equal(db.sets, 1);
    assert_int_equal(db.releases, 0);
    assert_true(db.fd >= 0);
    assert_int_equal(fstat(db.fd, &st_dst), 0);
    assert_true(st_src.st_ino == st_dst.st_ino && st_src.st_dev == st_dst.st_dev);
    close(db.fd);
    ferry__address_free(a);
    free(uri);
    side_free(&src);
    side_free(&dst);

    /* Failed (the destination refuses a section after it adopted the fd): the source keeps its backend. */
    fd = backend_pair(&src, &sb, &dst, &db, true);
    dst.dev.fail_load = true;
    a = migrate_pair(&src, &dst, &uri);
    assert_string_equal(wait_terminal(src.m, 30000), "failed");
    assert_string_equal(wait_terminal(dst.m, 30000), "failed");
    assert_int_equal(sb.releases, 0);
    assert_int_equal(sb.fd, fd);
    assert_int_equal(ferry__runstate_get(src.m), FERRY_RUN_RUNNING);
    close(sb.fd);
    if (db.fd >= 0) {
        close(db.fd);
    }
    ferry__address_free(a);
    free(uri);
    side_free(&src);
    side_free(&dst);

    /* One way (a pipe): completed, but no acknowledgement, so no release. */
    fd = backend_pair(&src, &sb, &dst, &db, false);
    migrate_over_pipe(&src, &dst, "release");
    assert_string_equal(wait_terminal(src.m, 30000), "completed");
    assert_string_equal(wait_terminal(dst.m, 30000), "completed");
    assert_int_equal(ferry__runstate_get(src.m), FERRY_RUN_POSTMIGRATE);
    assert_int_equal(sb.releases, 0);
    assert_int_equal(sb.fd, fd);
    assert_int_equal(db.sets, 0);
    close(sb.fd);
    side_free(&src);
    side_free(&dst);
}

/* Restore @path into a fresh destination; returns its final status (the destination stays up). */
static const char *restore_from(const char *uri, Side *dst, uint64_t size)
{
    side_init(dst, size, FERRY_TRACKER_AUTO);
    ferry__runstate_init(dst->m, false, true);
    FerryMigrationAddress *a = addr_of(uri);
    assert_true(ferry__migrate_incoming(dst->m, a, false, NULL));
    ferry__address_free(a);
    return wait_terminal(dst->m, 30000);
}

/*
 * Integrity: a stream saved to a file, then damaged. Every single flipped byte (all of the first KiB, a sample
 * through the pages, the last bytes) and every truncation tried must make the restore fail, with the workload
 * not started and no device state loaded; the undamaged file restores.
 */
static void test_damaged_stream(void **state)
{
    Side src;
    const uint64_t size = 1 << 20;
    side_init(&src, size, FERRY_TRACKER_AUTO);
    for (size_t i = 0; i < size; i += 4096) {
        memset((uint8_t *)ferry_ram_block_host(src.blk[0]) + i, (int)(i >> 12) + 1, 4096);
    }
    src.dev.counter = 99;
    src.dev.label = ferry__xstrdup("intact");
    ferry__runstate_init(src.m, true, false);
    char *path = ferry__xasprintf("/tmp/ferry-test-damaged-%d.bin", (int)getpid());
    char *uri = ferry__xasprintf("file:%s", path);
    FerryMigrationAddress *a = addr_of(uri);
    assert_true(ferry__migrate(src.m, a, NULL));
    assert_string_equal(wait_terminal(src.m, 30000), "completed");
    ferry__address_free(a);
    side_free(&src);

    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *good = malloc((size_t)len);
    assert_int_equal(fread(good, 1, (size_t)len, f), (size_t)len);
    fclose(f);

    Side dst;
    assert_string_equal(restore_from(uri, &dst, size), "completed");
    assert_true(dst.dev.counter == 99);
    side_free(&dst);

    int tried = 0;
    /* Every byte of the first KiB (stream header, CONFIG, hints, the first run's header), then one in 4099, then
     * every byte of the last 48 (sections, END, trailers). */
    for (long off = 0; off < len; off = off < 1024 ? off + 1 : off + 4099 < len - 48 ? off + 4099 : FERRY_MAX(off + 1, len - 48)) {
        uint8_t *bad = malloc((size_t)len);
        memcpy(bad, good, (size_t)len);
        bad[off] ^= 0x20;
        f = fopen(path, "wb");
        assert_int_equal(fwrite(bad, 1, (size_t)len, f), (size_t)len);
        fclose(f);
        free(bad);
        const char *st = restore_from(uri, &dst, size);
        if (strcmp(st, "failed") != 0) {
            fail_msg("a flipped byte at offset %ld was not detected (status %s)", off, st);
        }
        assert_int_equal(ferry__runstate_get(dst.m), FERRY_RUN_INMIGRATE);
        assert_true(dst.dev.counter == 0);
        side_free(&dst);
        tried++;
    }
    int cuts = 0;
    for (long cut = 0; cut < len; cut += len / 37 + 1, cuts++) {
        f = fopen(path, "wb");
        assert_int_equal(fwrite(good, 1, (size_t)cut, f), (size_t)cut);
        fclose(f);
        const char *st = restore_from(uri, &dst, size);
        if (strcmp(st, "failed") != 0) {
            fail_msg("a stream cut at %ld of %ld bytes was not detected (status %s)", cut, len, st);
        }
        assert_true(dst.dev.counter == 0);
        side_free(&dst);
    }
    print_message("%d flipped bytes and %d truncations of a %ld-byte stream detected\n", tried, cuts, len);
    unlink(path);
    free(good);
    free(path);
    free(uri);
}

static void test_params(void **state)
{
    FerryMigration *m = ferry__migration_new();
    FerryError *err = NULL;
    json_t *q = ferry__migration_query_params(m);
    assert_int_equal(json_integer_value(json_object_get(q, "max-bandwidth")), 128 << 20);
    assert_int_equal(json_integer_value(json_object_get(q, "downtime-limit")), 300);
    json_decref(q);

    static const struct {
        const char *json;
        const char *error;
    } bad[] = {
        { "{\"downtime-limit\": -1}", "Parameter 'downtime-limit' expects an integer in the range of 0 to 2000000" },
        { "{\"downtime-limit\": 2000001}", "range" },
        { "{\"max-bandwidth\": \"fast\"}", "Invalid parameter type for 'max-bandwidth', expected: integer" },
        { "{\"max-bandwidth\": 1.5}", "Invalid parameter type" },
        { "{\"no-such\": 1}", "Parameter 'no-such' is unexpected" },
        { "{\"announce-max\": 5}", "not supported by ferry yet" },
        { "{\"tls-creds\": 5}", "Invalid parameter type for 'tls-creds', expected: string" },
        { "{\"multifd-channels\": 0}", "Parameter 'multifd-channels' expects an integer in the range of 1 to 255" },
        { "{\"multifd-compression\": \"qpl\"}", "qpl needs Intel QPL" },
        /* All or nothing: the good member must not be applied when another is bad. */
        { "{\"downtime-limit\": 10, \"max-bandwidth\": -5}", "max-bandwidth" },
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        json_t *j = json_loads(bad[i].json, 0, NULL);
        assert_false(ferry__migration_set_params(m, j, &err));
        if (!strstr(ferry_error_msg(err), bad[i].error)) {
            fail_msg("%s: got '%s'", bad[i].json, ferry_error_msg(err));
        }
        ferry_error_free(err);
        err = NULL;
        json_decref(j);
    }
    q = ferry__migration_query_params(m);
    assert_int_equal(json_integer_value(json_object_get(q, "downtime-limit")), 300);
    json_decref(q);

    json_t *good = json_pack("{s:i, s:I}", "downtime-limit", 50, "max-bandwidth", (json_int_t)1 << 30);
    assert_true(ferry__migration_set_params(m, good, NULL));
    json_decref(good);
    q = ferry__migration_query_params(m);
    assert_int_equal(json_integer_value(json_object_get(q, "downtime-limit")), 50);
    json_decref(q);

    /* The string form (-incoming config:, HMP): converted by type, then the same checks. */
    json_t *kv = json_pack("{s:s, s:s}", "max-bandwidth", "1G", "downtime-limit", "123");
    json_t *typed = NULL;
    assert_true(ferry__migration_params_check_keyval(kv, &typed, NULL));
    assert_int_equal(json_integer_value(json_object_get(typed, "max-bandwidth")), 1 << 30);
    assert_int_equal(json_integer_value(json_object_get(typed, "downtime-limit")), 123);
    assert_true(ferry__migration_set_params(m, typed, NULL));
    json_decref(typed);
    json_decref(kv);
    static const struct {
        const char *json;
        const char *error;
    } bad_kv[] = {
        { "{\"downtime-limit\": \"abc\"}", "downtime-limit" },
        { "{\"downtime-limit\": \"1G\"}", "downtime-limit" },
        { "{\"downtime-limit\": \"3000000\"}", "range of 0 to 2000000" },
        { "{\"max-bandwidth\": \"99999999999999999999\"}", "max-bandwidth" },
        { "{\"max-bandwidth\": {\"a\": \"1\"}}", "expects a single value" },
        { "{\"nope\": \"1\"}", "Parameter 'nope' is unexpected" },
        { "{\"xbzrle-cache-size\": \"1M\"}", "not supported by ferry yet" },
        { "{\"tls-hostname\": {\"a\": \"1\"}}", "expects a single value" },
        { "{\"multifd-channels\": \"256\"}", "range of 1 to 255" },
        { "{\"multifd-compression\": \"lz4\"}", "lz4" },
    };
    for (size_t i = 0; i < sizeof(bad_kv) / sizeof(bad_kv[0]); i++) {
        json_t *j = json_loads(bad_kv[i].json, 0, NULL);
        assert_non_null(j);
        typed = NULL;
        assert_false(ferry__migration_params_check_keyval(j, &typed, &err));
        assert_null(typed);
        if (!strstr(ferry_error_msg(err), bad_kv[i].error)) {
            fail_msg("%s: got '%s'", bad_kv[i].json, ferry_error_msg(err));
        }
        ferry_error_free(err);
        err = NULL;
        json_decref(j);
    }

    /* The TLS parameters: strings, "" by default, null resets them (QEMU's StrOrNull); objects are looked up at
     * migrate time, not here. */
    q = ferry__migration_query_params(m);
    assert_string_equal(json_string_value(json_object_get(q, "tls-creds")), "");
    assert_string_equal(json_string_value(json_object_get(q, "tls-hostname")), "");
    assert_string_equal(json_string_value(json_object_get(q, "tls-authz")), "");
    json_decref(q);
    json_t *tls = json_pack("{s:s, s:s, s:s}", "tls-creds", "nonexistent", "tls-hostname", "dst.example",
                            "tls-authz", "auth0");
    assert_true(ferry__migration_set_params(m, tls, NULL));
    json_decref(tls);
    q = ferry__migration_query_params(m);
    assert_string_equal(json_string_value(json_object_get(q, "tls-creds")), "nonexistent");
    assert_string_equal(json_string_value(json_object_get(q, "tls-hostname")), "dst.example");
    json_decref(q);
    tls = json_pack("{s:n}", "tls-creds");
    assert_true(ferry__migration_set_params(m, tls, NULL));
    json_decref(tls);
    kv = json_pack("{s:s}", "tls-authz", "");
    assert_true(ferry__migration_params_check_keyval(kv, &typed, NULL));
    assert_string_equal(json_string_value(json_object_get(typed, "tls-authz")), "");
    assert_true(ferry__migration_set_params(m, typed, NULL));
    json_decref(typed);
    json_decref(kv);
    q = ferry__migration_query_params(m);
    assert_string_equal(json_string_value(json_object_get(q, "tls-creds")), "");
    assert_string_equal(json_string_value(json_object_get(q, "tls-hostname")), "dst.example");
    assert_string_equal(json_string_value(json_object_get(q, "tls-authz")), "");
    json_decref(q);

    json_t *caps = json_loads("[{\"capability\": \"events\", \"state\": true}]", 0, NULL);
    assert_true(ferry__migration_set_caps(m, caps, NULL));
    json_decref(caps);
    q = ferry__migration_query_caps(m);
    assert_true(json_is_true(json_object_get(json_array_get(q, 0), "state")));
    json_decref(q);
    caps = json_loads("[{\"capability\": \"bogus\", \"state\": true}]", 0, NULL);
    assert_false(ferry__migration_set_caps(m, caps, &err));
    assert_non_null(strstr(ferry_error_msg(err), "'bogus'"));
    ferry_error_free(err);
    json_decref(caps);
    ferry__migration_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_params),
        cmocka_unit_test(test_error_desc_bounded),
        cmocka_unit_test(test_migrate_uffd),
        cmocka_unit_test(test_migrate_explicit),
        cmocka_unit_test(test_migrate_none),
        cmocka_unit_test(test_config_mismatch),
        cmocka_unit_test(test_section_load_failure),
        cmocka_unit_test(test_cancel),
        cmocka_unit_test(test_cancel_while_connecting),
        cmocka_unit_test(test_one_way),
        cmocka_unit_test(test_backend_release),
        cmocka_unit_test(test_damaged_stream),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
