/*
 * Cross-version compatibility of the migration stream, against golden streams kept in tests/data/compat/.
 *
 * Each case defines a test device twice, as its "version 1" and its "version 2" would be written with the visitor
 * API (one visit function per version, registered with section version 1 or 2), and has a golden stream saved by
 * each version (<case>-v1.fstream, <case>-v2.fstream). The test loads every golden into both versions and checks
 * the outcome: for a success the loaded values, the RAM and the count of skipped bytes; for a failure the key
 * words of the message (section and field names). It also regenerates every stream in a temporary directory and
 * requires it to be byte-identical to its golden, so that an unintended change of the encoding fails here; the
 * failure message says how to regenerate the goldens when the change is intended. Further: a FEATURES record
 * rewritten to carry an unknown feature (critical: refused before anything is loaded; not critical: loads), and
 * the same source state written to file: and to exec: giving the same bytes.
 *
 * Run as "test-migration-compat DATA_DIR" (what meson does) or "test-migration-compat --regen DIR" to write the
 * goldens into DIR. Streams are generated with the "none" dirty tracker so that their bytes do not depend on this
 * machine's userfaultfd support. This test does not cover sockets (an integration test does) nor damaged streams
 * (test-loopback.c does).
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "test-helpers.h"

#include "ferry/ferry.h"
#include "channel/channel.h"
#include "migration/migration.h"
#include "migration-test-helpers.h"
#include "util/util.h"
#include "wire/wire.h"

#define RAM_PAGES 16
#define DATA_PAGE 3 /* the one page with data; every other page is written with zeros */

/* Values the sources save, and the sentinels a destination holds before a load. */
#define SRC_A 0x11223344u
#define SRC_B 0x0102030405060708ull
#define SRC_B32 42u
#define SRC_OLD 0x01dcafeu
#define SRC_X 0xe1e2e3e4u
#define SRC_NOTE 99u
#define BIG_A (1ull << 40)
#define SMALL_A 5u
#define B_DEFAULT 7u
#define OLD_DEFAULT 5u
#define DST_SENTINEL32 0xdeadbeefu
#define DST_SENTINEL64 0xbadbadbadull
#define DST_X 0x5eedu
#define DST_RAM_BYTE 0xee

static const char *data_dir;

/* The state of one test device. Each version of each case uses the fields it knows. */
typedef struct Dev {
    uint32_t a;
    uint64_t a64;   /* type-change v2: a is a u64 */
    uint64_t b;     /* skippable-field v2 */
    uint32_t b32;   /* required-field v2 */
    uint32_t old;   /* removed-field v1 */
    bool note_present;
    uint32_t note;  /* optional-field */
    uint32_t loaded_version; /* the version the engine passed on load, 0 before */
} Dev;

/* A second section ("extra", "extra2" or "old") where a case has one. */
typedef struct Extra {
    uint32_t x;
    uint32_t loaded_version;
} Extra;

typedef struct Machine {
    FerryMigration *m;
    FerryRamBlock *ram;
    Dev dev;
    Extra extra;
} Machine;

static void note_version(FerryVisitor *v, uint32_t *slot, uint32_t version)
{
    if (ferry_visitor_kind(v) == FERRY_VISITOR_INPUT) {
        *slot = version;
    }
}

/* Case 1, a field added as skippable with a default. */
static bool skippable_v1(FerryVisitor *v, void *opaque, uint32_t version, FerryError **errp)
{
    Dev *d = opaque;
    note_version(v, &d->loaded_version, version);
    return ferry_visit_u32(v, "a", &d->a, errp);
}

static bool skippable_v2(FerryVisitor *v, void *opaque, uint32_t version, FerryError **errp)
{
    Dev *d = opaque;
    note_version(v, &d->loaded_version, version);
    if (ferry_visitor_kind(v) == FERRY_VISITOR_INPUT) {
        d->b = B_DEFAULT; /* what a stream of version 1, which has no b, leaves */
    }
    if (!ferry_visit_u32(v, "a", &d->a, errp)) {
        return false;
    }
    ferry_visit_attrs(v, FERRY_FIELD_SKIPPABLE | FERRY_FIELD_DEFAULT);
    return ferry_visit_u64(v, "b", &d->b, errp);
}

/* Case 2, a field added without attributes: both directions must fail. */
static bool required_v2(FerryVisitor *v, void *opaque, uint32_t version, FerryError **errp)
{
    Dev *d = opaque;
    note_version(v, &d->loaded_version, version);
    return ferry_visit_u32(v, "a", &d->a, errp) && ferry_visit_u32(v, "b", &d->b32, errp);
}

/* Case 3, a field removed; version 1 had marked it skippable with a default, so both directions load. */
static bool removed_field_v1(FerryVisitor *v, void *opaque, uint32_t version, FerryError **errp)
{
    Dev *d = opaque;
    note_version(v, &d->loaded_version, version);
    if (ferry_visitor_kind(v) == FERRY_VISITOR_INPUT) {
        d->old = OLD_DEFAULT;
    }
    if (!ferry_visit_u32(v, "a", &d->a, errp)) {
        return false;
    }
    ferry_visit_attrs(v, FERRY_FIELD_SKIPPABLE | FERRY_FIELD_DEFAULT);
    return ferry_visit_u32(v, "old", &d->old, errp);
}

/* Case 4, a widened to u64 in version 2 (version 1 is skippable_v1). */
static bool widened_v2(FerryVisitor *v, void *opaque, uint32_t version, FerryError **errp)
{
    Dev *d = opaque;
    note_version(v, &d->loaded_version, version);
    return ferry_visit_u64(v, "a", &d->a64, errp);
}

/* Case 8: an optional field. The same code serves both versions; the saved state decides whether it is sent. */
static bool optional_any(FerryVisitor *v, void *opaque, uint32_t version, FerryError **errp)
{
    Dev *d = opaque;
    note_version(v, &d->loaded_version, version);
    if (!ferry_visit_u32(v, "a", &d->a, errp)) {
        return false;
    }
    ferry_visit_optional(v, "note", &d->note_present);
    return !d->note_present || ferry_visit_u32(v, "note", &d->note, errp);
}

/* The second section of cases 5, 6 and 7. */
static bool extra_visit(FerryVisitor *v, void *opaque, uint32_t version, FerryError **errp)
{
    Extra *e = opaque;
    note_version(v, &e->loaded_version, version);
    return ferry_visit_u32(v, "x", &e->x, errp);
}

static void add(Machine *mc, const char *name, uint32_t version, uint32_t flags, FerrySectionFn fn, void *opaque)
{
    FerrySectionInfo info = { .name = name, .version = version, .flags = flags, .fn = fn, .opaque = opaque };
    FerryError *err = NULL;
    if (!ferry_migration_add_section(mc->m, &info, &err)) {
        fail_msg("registering section '%s': %s", name, ferry_error_msg(err));
    }
}

static void setup_skippable(Machine *mc, int ver)
{
    add(mc, "dev", (uint32_t)ver, 0, ver == 1 ? skippable_v1 : skippable_v2, &mc->dev);
}

static void setup_required(Machine *mc, int ver)
{
    add(mc, "dev", (uint32_t)ver, 0, ver == 1 ? skippable_v1 : required_v2, &mc->dev);
}

static void setup_removed_field(Machine *mc, int ver)
{
    add(mc, "dev", (uint32_t)ver, 0, ver == 1 ? removed_field_v1 : skippable_v1, &mc->dev);
}

static void setup_widened(Machine *mc, int ver)
{
    add(mc, "dev", (uint32_t)ver, 0, ver == 1 ? skippable_v1 : widened_v2, &mc->dev);
}

static void setup_new_section(Machine *mc, int ver)
{
    add(mc, "dev", (uint32_t)ver, 0, skippable_v1, &mc->dev);
    if (ver == 2) {
        add(mc, "extra", 1, FERRY_SECTION_SKIPPABLE | FERRY_SECTION_OPTIONAL, extra_visit, &mc->extra);
    }
}

static void setup_new_section_required(Machine *mc, int ver)
{
    add(mc, "dev", (uint32_t)ver, 0, skippable_v1, &mc->dev);
    if (ver == 2) {
        add(mc, "extra2", 1, 0, extra_visit, &mc->extra);
    }
}

static void setup_removed_section(Machine *mc, int ver)
{
    add(mc, "dev", (uint32_t)ver, 0, skippable_v1, &mc->dev);
    if (ver == 1) {
        add(mc, "old", 1, FERRY_SECTION_SKIPPABLE | FERRY_SECTION_OPTIONAL, extra_visit, &mc->extra);
    }
}

static void setup_optional(Machine *mc, int ver)
{
    add(mc, "dev", (uint32_t)ver, 0, optional_any, &mc->dev);
}

/* Source state. */
static void fill_common(Machine *mc, int ver)
{
    mc->dev.a = SRC_A;
    mc->dev.a64 = SRC_A;
    mc->dev.b = SRC_B;
    mc->dev.b32 = SRC_B32;
    mc->dev.old = SRC_OLD;
    mc->dev.note_present = ver == 2; /* optional-field: version 1's stream lacks the note, version 2's has it */
    mc->dev.note = SRC_NOTE;
    mc->extra.x = SRC_X;
}

static void fill_big(Machine *mc, int ver)
{
    fill_common(mc, ver);
    mc->dev.a64 = BIG_A;
}

static void fill_small(Machine *mc, int ver)
{
    fill_common(mc, ver);
    mc->dev.a = SMALL_A;
    mc->dev.a64 = SMALL_A;
}

/* Checks of a successful load of a stream of version @sv into a destination of version @dv. */
static void check_skippable(const Machine *d, int sv, int dv)
{
    assert_int_equal(d->dev.a, SRC_A);
    if (dv == 2) {
        assert_true(d->dev.b == (sv == 2 ? SRC_B : B_DEFAULT));
    }
}

static void check_required(const Machine *d, int sv, int dv)
{
    (void)sv;
    assert_int_equal(d->dev.a, SRC_A);
    if (dv == 2) {
        assert_int_equal(d->dev.b32, SRC_B32);
    }
}

static void check_removed_field(const Machine *d, int sv, int dv)
{
    assert_int_equal(d->dev.a, SRC_A);
    if (dv == 1) {
        assert_int_equal(d->dev.old, sv == 1 ? SRC_OLD : OLD_DEFAULT);
    }
}

static void check_widened(const Machine *d, int sv, int dv)
{
    if (dv == 1) {
        assert_int_equal(d->dev.a, SRC_A);
    } else {
        assert_true(d->dev.a64 == (sv == 1 ? SRC_A : BIG_A));
    }
}

static void check_widened_small(const Machine *d, int sv, int dv)
{
    (void)sv;
    if (dv == 1) {
        assert_int_equal(d->dev.a, SMALL_A);
    } else {
        assert_true(d->dev.a64 == SMALL_A);
    }
}

static void check_new_section(const Machine *d, int sv, int dv)
{
    assert_int_equal(d->dev.a, SRC_A);
    if (dv == 2) {
        /* Loaded from a stream that has it; kept as it was (and never called) from one that has not. */
        assert_int_equal(d->extra.x, sv == 2 ? SRC_X : DST_X);
        assert_int_equal(d->extra.loaded_version, sv == 2 ? 1 : 0);
    }
}

static void check_new_section_required(const Machine *d, int sv, int dv)
{
    (void)sv;
    assert_int_equal(d->dev.a, SRC_A);
    if (dv == 2) {
        assert_int_equal(d->extra.x, SRC_X);
        assert_int_equal(d->extra.loaded_version, 1);
    }
}

static void check_removed_section(const Machine *d, int sv, int dv)
{
    assert_int_equal(d->dev.a, SRC_A);
    if (dv == 1) {
        assert_int_equal(d->extra.x, sv == 1 ? SRC_X : DST_X);
        assert_int_equal(d->extra.loaded_version, sv == 1 ? 1 : 0);
    }
}

static void check_optional(const Machine *d, int sv, int dv)
{
    (void)dv;
    assert_int_equal(d->dev.a, SRC_A);
    assert_int_equal(d->dev.note_present, sv == 2);
    assert_int_equal(d->dev.note, sv == 2 ? SRC_NOTE : DST_SENTINEL32);
}

/* What a load must give: success (words[0] == NULL) with or without skipped bytes, or a failure whose message
 * contains every one of words. */
typedef struct Expect {
    const char *words[4];
    uint64_t skipped; /* success: the exact count of skipped bytes */
} Expect;

#define OK { { NULL }, 0 }
#define OK_SKIPPED(n) { { NULL }, (n) }
#define FAILS(...) { { __VA_ARGS__ }, 0 }

typedef struct Case {
    const char *name;
    const char *what; /* for the notes and messages */
    void (*setup)(Machine *mc, int ver);
    void (*fill)(Machine *mc, int ver);
    void (*check)(const Machine *d, int sv, int dv);
    Expect v2_to_v1; /* the v2 stream loaded by version 1 */
    Expect v1_to_v2;
} Case;

/* Skipped bytes of a field are its id (be16) and its value; of a section, its whole record: header (8), payload
 * and CRC trailer (4). */
static const Case cases[] = {
    { "skippable-field", "field b (u64) added, SKIPPABLE|DEFAULT", setup_skippable, fill_common, check_skippable,
      OK_SKIPPED(2 + 8), OK },
    { "required-field", "field b (u32) added without attributes", setup_required, fill_common, check_required,
      FAILS("'dev'", "'b'", "not known", "skippable"), FAILS("'dev'", "'b'", "missing", "no default") },
    { "removed-field", "field old (u32, SKIPPABLE|DEFAULT in v1) removed", setup_removed_field, fill_common,
      check_removed_field, OK, OK_SKIPPED(2 + 4) },
    { "type-change", "field a widened from u32 to u64 (v2 saves 2^40)", setup_widened, fill_big, check_widened,
      FAILS("'dev'", "'a'", "1099511627776", "does not fit u32"), OK },
    { "type-change-small", "field a widened from u32 to u64 (v2 saves 5)", setup_widened, fill_small,
      check_widened_small, OK, OK },
    { "new-section", "section extra added, SKIPPABLE|OPTIONAL", setup_new_section, fill_common, check_new_section,
      OK_SKIPPED(8 + 36 + 4), OK },
    { "new-section-required", "section extra2 added without flags", setup_new_section_required, fill_common,
      check_new_section_required, FAILS("'extra2'", "unknown section", "skippable"), FAILS("'extra2'", "missing from the stream") },
    { "removed-section", "section old (SKIPPABLE|OPTIONAL in v1) removed", setup_removed_section, fill_common,
      check_removed_section, OK, OK_SKIPPED(8 + 34 + 4) },
    { "optional-field", "optional field note: absent in the v1 stream, present in the v2 stream", setup_optional,
      fill_common, check_optional, OK, OK },
};

static void machine_init(Machine *mc, const Case *c, int ver)
{
    memset(mc, 0, sizeof(*mc));
    mc->m = ferry__migration_new();
    FerryError *err = NULL;
    mc->ram = ferry_ram_block_new(mc->m, "ram0", (uint64_t)RAM_PAGES * ferry_ram_page_size(), &err);
    if (!mc->ram) {
        fail_msg("ram block: %s", ferry_error_msg(err));
    }
    ferry_migration_set_dirty_tracker(mc->m, FERRY_TRACKER_NONE);
    c->setup(mc, ver);
}

static void machine_free(Machine *mc)
{
    ferry__migration_free(mc->m);
}

/* The source's RAM: one page of data, every other page written with zeros so that all are populated (and so sent,
 * as zero pages) whatever the kernel does with pages never touched. */
static void fill_ram(uint8_t *p)
{
    size_t ps = ferry_ram_page_size();
    memset(p, 0, RAM_PAGES * ps);
    for (size_t i = 0; i < ps; i++) {
        p[DATA_PAGE * ps + i] = (uint8_t)(i * 7 + 1);
    }
}

static void check_ram(const uint8_t *p)
{
    size_t ps = ferry_ram_page_size();
    uint8_t *want = malloc(RAM_PAGES * ps);
    fill_ram(want);
    for (size_t i = 0; i < RAM_PAGES; i++) {
        if (memcmp(want + i * ps, p + i * ps, ps) != 0) {
            free(want);
            fail_msg("RAM page %zu differs from the source's", i);
        }
    }
    free(want);
}

/* Save the state of @c's version @ver to @uri (file: or exec:), with the default capabilities or with every
 * optional stream feature (populate-hints) off. Returns NULL or a message (malloc'd). */
static char *generate_to(const Case *c, int ver, const char *uri, bool no_optional)
{
    Machine src;
    machine_init(&src, c, ver);
    if (no_optional) {
        json_t *caps = json_pack("[{s:s, s:b}]", "capability", "populate-hints", "state", 0);
        assert_true(ferry__migration_set_caps(src.m, caps, NULL));
        json_decref(caps);
    }
    c->fill(&src, ver);
    fill_ram(ferry_ram_block_host(src.ram));
    ferry__runstate_init(src.m, true, false); /* stopped (prelaunch): END says the source was not running */
    FerryMigrationAddress *a = NULL;
    FerryError *err = NULL;
    char *msg = NULL;
    if (!ferry__address_parse_uri(uri, &a, &err) || !ferry__migrate(src.m, a, &err)) {
        msg = ferry__xasprintf("%s: %s", uri, ferry_error_msg(err));
        ferry_error_free(err);
    } else {
        const char *st = wait_terminal(src.m, 30000);
        if (strcmp(st, "completed") != 0) {
            json_t *q = ferry__migration_query(src.m);
            msg = ferry__xasprintf("%s: status %s: %s", uri, st,
                                   json_string_value(json_object_get(q, "error-desc")));
            json_decref(q);
        }
    }
    ferry__address_free(a);
    machine_free(&src);
    return msg;
}

static char *golden_path(const char *dir, const Case *c, int ver)
{
    return ferry__xasprintf("%s/%s-v%d.fstream", dir, c->name, ver);
}

static char *generate_file(const Case *c, int ver, const char *dir)
{
    char *path = golden_path(dir, c, ver);
    unlink(path); /* the file transport does not truncate what lies before its offset */
    char *uri = ferry__xasprintf("file:%s", path);
    char *msg = generate_to(c, ver, uri, false);
    free(uri);
    free(path);
    return msg;
}

static uint8_t *read_whole(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        return NULL;
    }
    size_t cap = 1 << 16, n = 0;
    uint8_t *buf = malloc(cap);
    size_t got;
    while ((got = fread(buf + n, 1, cap - n, f)) > 0) {
        n += got;
        if (n == cap) {
            cap *= 2;
            buf = realloc(buf, cap);
        }
    }
    fclose(f);
    *len = n;
    return buf;
}

static void write_whole(const char *path, const uint8_t *buf, size_t len)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(buf, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
}

static const char *regen_hint =
    "if the change of the stream encoding is intended, regenerate the goldens with "
    "'<build>/tests/unit/migration/test-migration-compat --regen tests/data/compat' (from the source root) and "
    "describe the change in docs/stream-format.md";

static char *temp_dir(void)
{
    char *dir = ferry__xasprintf("/tmp/ferry-test-compat-XXXXXX");
    assert_non_null(mkdtemp(dir));
    return dir;
}

/* Remove the files @names (freed) from @dir, then @dir (freed). */
static void remove_dir(char *dir, char **names, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char *p = ferry__xasprintf("%s/%s", dir, names[i]);
        unlink(p);
        free(p);
        free(names[i]);
    }
    rmdir(dir);
    free(dir);
}

/* Load the stream in @path into @dst; returns whether it loaded, with *err and *skipped. */
static bool load_file(Machine *dst, const char *path, uint64_t *skipped, FerryError **err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        fail_msg("cannot open %s: %s; %s", path, strerror(errno), regen_hint);
    }
    FerryChannel *ch = ferry__channel_new_fd(fd, path);
    assert_non_null(ch);
    *skipped = 0;
    bool ok = ferry__migration_load_stream(dst->m, ch, skipped, err);
    ferry__channel_free(ch);
    return ok;
}

/* A destination of version @ver before a load: everything holds a sentinel, RAM included. */
static void dest_init(Machine *dst, const Case *c, int ver)
{
    machine_init(dst, c, ver);
    dst->dev.a = DST_SENTINEL32;
    dst->dev.a64 = DST_SENTINEL64;
    dst->dev.b = DST_SENTINEL64;
    dst->dev.b32 = DST_SENTINEL32;
    dst->dev.old = DST_SENTINEL32;
    dst->dev.note = DST_SENTINEL32;
    dst->dev.note_present = true;
    dst->extra.x = DST_X;
    memset(ferry_ram_block_host(dst->ram), DST_RAM_BYTE, RAM_PAGES * ferry_ram_page_size());
}

/* One load of a golden and the check of its outcome. Prints the outcome, which docs/stream-format.md quotes. */
static void run_load(const Case *c, int sv, int dv)
{
    const Expect ok_same = OK;
    const Expect *e = sv == dv ? &ok_same : sv == 2 ? &c->v2_to_v1 : &c->v1_to_v2;
    char *path = golden_path(data_dir, c, sv);
    Machine dst;
    dest_init(&dst, c, dv);
    uint64_t skipped;
    FerryError *err = NULL;
    bool ok = load_file(&dst, path, &skipped, &err);
    if (ok) {
        print_message("compat: %-20s v%d stream -> v%d: loads, %llu bytes skipped\n", c->name, sv, dv,
                      (unsigned long long)skipped);
    } else {
        print_message("compat: %-20s v%d stream -> v%d: fails: %s\n", c->name, sv, dv, ferry_error_msg(err));
    }
    if (e->words[0]) {
        if (ok) {
            fail_msg("%s: the v%d stream loaded into version %d, it must fail", c->name, sv, dv);
        }
        for (size_t i = 0; i < 4 && e->words[i]; i++) {
            assert_msg_contains(err, e->words[i]);
        }
        ferry_error_free(err);
    } else {
        if (!ok) {
            fail_msg("%s: the v%d stream does not load into version %d: %s", c->name, sv, dv, ferry_error_msg(err));
        }
        check_ram(ferry_ram_block_host(dst.ram));
        assert_int_equal(dst.dev.loaded_version, (uint32_t)sv);
        c->check(&dst, sv, dv);
        assert_int_equal(skipped, e->skipped);
    }
    machine_free(&dst);
    free(path);
}

static void test_cross_version(void **state)
{
    (void)state;
    for (size_t i = 0; i < FERRY_ARRAY_SIZE(cases); i++) {
        for (int sv = 1; sv <= 2; sv++) {
            for (int dv = 1; dv <= 2; dv++) {
                run_load(&cases[i], sv, dv);
            }
        }
    }
}

/* Every stream regenerated now must be byte-identical to its golden. */
static void test_goldens_unchanged(void **state)
{
    (void)state;
    char *dir = temp_dir();
    char *names[2 * FERRY_ARRAY_SIZE(cases)];
    size_t nnames = 0;
    for (size_t i = 0; i < FERRY_ARRAY_SIZE(cases); i++) {
        for (int ver = 1; ver <= 2; ver++) {
            const Case *c = &cases[i];
            char *msg = generate_file(c, ver, dir);
            if (msg) {
                fail_msg("generating %s v%d: %s", c->name, ver, msg);
            }
            char *fresh_path = golden_path(dir, c, ver), *golden = golden_path(data_dir, c, ver);
            size_t flen, glen;
            uint8_t *fresh = read_whole(fresh_path, &flen), *gold = read_whole(golden, &glen);
            assert_non_null(fresh);
            if (!gold) {
                fail_msg("golden %s is missing; %s", golden, regen_hint);
            }
            size_t off = 0;
            while (off < flen && off < glen && fresh[off] == gold[off]) {
                off++;
            }
            if (off != flen || flen != glen) {
                fail_msg("the stream of %s v%d (%zu bytes) differs from the golden %s (%zu bytes) from offset %zu; "
                         "%s", c->name, ver, flen, golden, glen, off, regen_hint);
            }
            free(fresh);
            free(gold);
            free(fresh_path);
            free(golden);
            names[nnames++] = ferry__xasprintf("%s-v%d.fstream", c->name, ver);
        }
    }
    remove_dir(dir, names, nnames);
}

/*
 * A copy of the golden @c v@ver whose FEATURES record (the second record, after HELLO) also lists @feature with
 * @flags: decoded, extended, encoded, and framed again with its new length and CRC trailer.
 */
static uint8_t *with_extra_feature(const Case *c, int ver, const char *feature, uint8_t flags, size_t *out_len)
{
    char *path = golden_path(data_dir, c, ver);
    size_t len;
    uint8_t *in = read_whole(path, &len);
    if (!in) {
        fail_msg("golden %s is missing; %s", path, regen_hint);
    }
    free(path);
    size_t hello = FERRY_WIRE_HEADER_LEN;
    FerryRecordHeader rh;
    assert_true(len > hello + FERRY_WIRE_RECORD_HEADER_LEN);
    ferry__wire_decode_record(in + hello, &rh);
    assert_int_equal(rh.type, FERRY_REC_HELLO);
    size_t feat = hello + FERRY_WIRE_RECORD_HEADER_LEN + rh.length + FERRY_WIRE_RECORD_TRAILER_LEN;
    assert_true(len > feat + FERRY_WIRE_RECORD_HEADER_LEN);
    ferry__wire_decode_record(in + feat, &rh);
    assert_int_equal(rh.type, FERRY_REC_FEATURES);
    size_t after = feat + FERRY_WIRE_RECORD_HEADER_LEN + rh.length + FERRY_WIRE_RECORD_TRAILER_LEN;
    assert_true(after <= len);

    FerryWireFeatureList l;
    assert_true(ferry__wire_features_decode(in + feat + FERRY_WIRE_RECORD_HEADER_LEN, rh.length, &l, NULL));
    assert_int_equal(ferry__wire_features_find(&l, feature), -1);
    assert_true(ferry__wire_features_add(&l, feature, flags));
    size_t plen = ferry__wire_features_len(&l);
    size_t rec_len = FERRY_WIRE_RECORD_HEADER_LEN + plen + FERRY_WIRE_RECORD_TRAILER_LEN;
    uint8_t *out = malloc(len - (after - feat) + rec_len);
    memcpy(out, in, feat);
    uint8_t *r = out + feat;
    rh.length = (uint32_t)plen;
    ferry__wire_encode_record(r, &rh);
    ferry__wire_features_encode(&l, r + FERRY_WIRE_RECORD_HEADER_LEN);
    ferry__put_be32(r + FERRY_WIRE_RECORD_HEADER_LEN + plen, ferry__crc32c(0, r, FERRY_WIRE_RECORD_HEADER_LEN + plen));
    memcpy(r + rec_len, in + after, len - after);
    *out_len = feat + rec_len + (len - after);
    free(in);
    return out;
}

/* Load @c v2 with an extra feature into a version-2 destination. */
static void run_feature_load(uint8_t flags)
{
    const Case *c = &cases[0];
    size_t len;
    uint8_t *bytes = with_extra_feature(c, 2, "x-future-feature", flags, &len);
    char *dir = temp_dir();
    char *path = ferry__xasprintf("%s/features.fstream", dir);
    write_whole(path, bytes, len);
    free(bytes);

    Machine dst;
    dest_init(&dst, c, 2);
    uint64_t skipped;
    FerryError *err = NULL;
    bool ok = load_file(&dst, path, &skipped, &err);
    if (flags & FERRY_FEATURE_CRITICAL) {
        if (ok) {
            fail_msg("a stream using the unknown critical feature 'x-future-feature' loaded");
        }
        print_message("compat: unknown critical feature: fails: %s\n", ferry_error_msg(err));
        assert_msg_contains(err, "'x-future-feature'");
        assert_msg_contains(err, "FEATURES");
        ferry_error_free(err);
        /* Refused before anything was loaded: RAM and device state are as they were. */
        const uint8_t *p = ferry_ram_block_host(dst.ram);
        for (size_t i = 0; i < RAM_PAGES * ferry_ram_page_size(); i++) {
            if (p[i] != DST_RAM_BYTE) {
                fail_msg("RAM byte %zu was written before the stream was refused", i);
            }
        }
        assert_int_equal(dst.dev.a, DST_SENTINEL32);
        assert_true(dst.dev.b == DST_SENTINEL64);
        assert_int_equal(dst.dev.loaded_version, 0);
    } else {
        if (!ok) {
            fail_msg("a stream using the unknown non-critical feature 'x-future-feature' does not load: %s",
                     ferry_error_msg(err));
        }
        print_message("compat: unknown non-critical feature: loads\n");
        check_ram(ferry_ram_block_host(dst.ram));
        check_skippable(&dst, 2, 2);
    }
    machine_free(&dst);
    char *base = ferry__xstrdup("features.fstream");
    remove_dir(dir, &base, 1);
    free(path);
}

static void test_unknown_critical_feature(void **state)
{
    (void)state;
    run_feature_load(FERRY_FEATURE_CRITICAL);
}

static void test_unknown_feature(void **state)
{
    (void)state;
    run_feature_load(0);
}

/*
 * The bytes a source writes do not depend on the transport: the same state written to file: and through
 * exec:"cat > PATH" (a pipe to a child) must give the same stream. Every case with the default capabilities, and
 * the first case again with no optional feature in use (populate-hints off), which must change the stream (it has
 * no POPULATE_HINT record then) and still be the same on both transports.
 */
static void test_same_bytes_any_transport(void **state)
{
    (void)state;
    char *dir = temp_dir();
    size_t first_len[2] = { 0, 0 };
    for (size_t k = 0; k <= FERRY_ARRAY_SIZE(cases); k++) {
        bool no_optional = k == FERRY_ARRAY_SIZE(cases);
        const Case *c = &cases[no_optional ? 0 : k];
        char *file_path = ferry__xasprintf("%s/file.fstream", dir);
        char *exec_path = ferry__xasprintf("%s/exec.fstream", dir);
        char *file_uri = ferry__xasprintf("file:%s", file_path);
        char *exec_uri = ferry__xasprintf("exec:cat > '%s'", exec_path);
        unlink(file_path);
        char *msg = generate_to(c, 2, file_uri, no_optional);
        if (!msg) {
            msg = generate_to(c, 2, exec_uri, no_optional);
        }
        if (msg) {
            fail_msg("%s: %s", c->name, msg);
        }
        size_t flen, elen;
        uint8_t *f = read_whole(file_path, &flen), *e = read_whole(exec_path, &elen);
        assert_non_null(f);
        assert_non_null(e);
        if (flen != elen || memcmp(f, e, flen) != 0) {
            fail_msg("%s: the stream written to file: (%zu bytes) differs from the one written to exec: (%zu bytes)",
                     c->name, flen, elen);
        }
        if (k == 0 || no_optional) {
            first_len[no_optional] = flen;
        }
        free(f);
        free(e);
        free(file_uri);
        free(exec_uri);
        free(file_path);
        free(exec_path);
    }
    /* Without populate-hints the stream lacks the hint record (a header, block and range count, one range, a
     * trailer) and the feature's entry (flags, name length, name) in both HELLO and FEATURES. */
    assert_int_equal(first_len[0] - first_len[1],
                     FERRY_WIRE_RECORD_HEADER_LEN + 8 + FERRY_WIRE_HINT_RANGE_LEN + FERRY_WIRE_RECORD_TRAILER_LEN +
                         2 * (2 + strlen("populate-hints")));
    char *names[2] = { ferry__xstrdup("file.fstream"), ferry__xstrdup("exec.fstream") };
    remove_dir(dir, names, 2);
}

/* --regen DIR: write every golden into DIR. */
static int regen(const char *dir)
{
    if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
        fprintf(stderr, "cannot create %s: %s\n", dir, strerror(errno));
        return 1;
    }
    for (size_t i = 0; i < FERRY_ARRAY_SIZE(cases); i++) {
        for (int ver = 1; ver <= 2; ver++) {
            char *msg = generate_file(&cases[i], ver, dir);
            if (msg) {
                fprintf(stderr, "%s v%d: %s\n", cases[i].name, ver, msg);
                free(msg);
                return 1;
            }
            char *path = golden_path(dir, &cases[i], ver);
            printf("wrote %s\n", path);
            free(path);
        }
    }
    return 0;
}

int main(int argc, char **argv)
{
    /* Every stream is made with the "none" tracker on purpose: its warning would only be noise here. */
    setenv("FERRY_LOG", "error", 0);
    if (argc == 3 && strcmp(argv[1], "--regen") == 0) {
        return regen(argv[2]);
    }
    if (argc != 2) {
        fprintf(stderr, "usage: %s DATA_DIR | --regen DIR\n", argv[0]);
        return 2;
    }
    data_dir = argv[1];
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_goldens_unchanged),
        cmocka_unit_test(test_cross_version),
        cmocka_unit_test(test_unknown_critical_feature),
        cmocka_unit_test(test_unknown_feature),
        cmocka_unit_test(test_same_bytes_any_transport),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
