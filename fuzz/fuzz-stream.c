/*
 * libFuzzer target: the destination's stream reader. Each input is loaded as an incoming migration stream (from
 * a memfd, which is a one-way channel) into an engine with a small RAM block and a section that visits every
 * field type: header, features, CONFIG, hints, RAM runs, sections with their schema and self-describing data,
 * END. Nothing may crash, leak, read out of bounds or allocate from an unchecked length; a bad input is an error.
 * The seed corpus is tests/data/compat (real streams).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "ferry/ferry.h"
#include "channel/channel.h"
#include "migration/migration.h"
#include "util/util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct Dev {
    uint8_t u8;
    uint16_t u16;
    uint32_t u32;
    uint64_t u64;
    int64_t i64;
    bool flag;
    uint8_t raw[16];
    char *name;
    uint32_t n;
    uint64_t items[8];
    bool has_opt;
    uint64_t opt;
} Dev;

static Dev dev;

static bool dev_visit(FerryVisitor *v, void *opaque, uint32_t version, FerryError **errp)
{
    Dev *d = opaque;
    if (!ferry_visit_start_struct(v, "dev", errp) || !ferry_visit_u8(v, "u8", &d->u8, errp) ||
        !ferry_visit_u16(v, "u16", &d->u16, errp) || !ferry_visit_u32(v, "u32", &d->u32, errp) ||
        !ferry_visit_u64(v, "u64", &d->u64, errp) || !ferry_visit_i64(v, "i64", &d->i64, errp) ||
        !ferry_visit_bool(v, "flag", &d->flag, errp) || !ferry_visit_bytes(v, "raw", d->raw, sizeof(d->raw), errp)) {
        return false;
    }
    ferry_visit_attrs(v, FERRY_FIELD_SKIPPABLE | FERRY_FIELD_DEFAULT);
    if (!ferry_visit_str(v, "name", &d->name, errp)) {
        return false;
    }
    if (!ferry_visit_start_list(v, "items", &d->n, 8, errp)) {
        return false;
    }
    for (uint32_t i = 0; i < d->n; i++) {
        if (!ferry_visit_start_struct(v, "item", errp) || !ferry_visit_u64(v, "value", &d->items[i], errp) ||
            !ferry_visit_end_struct(v, errp)) {
            return false;
        }
    }
    if (!ferry_visit_end_list(v, errp)) {
        return false;
    }
    ferry_visit_optional(v, "opt", &d->has_opt);
    if (d->has_opt && !ferry_visit_u64(v, "opt", &d->opt, errp)) {
        return false;
    }
    return ferry_visit_end_struct(v, errp);
}

static FerryMigration *setup(void)
{
    FerryMigration *m = ferry__migration_new();
    if (!ferry_ram_block_new(m, "ram0", 16 * ferry_ram_page_size(), NULL) ||
        !ferry_migration_register_section(m, "dev", 0, 1, dev_visit, &dev, NULL)) {
        abort();
    }
    const FerrySectionInfo extra = { .name = "extra", .instance_id = 1, .version = 1,
                                     .flags = FERRY_SECTION_OPTIONAL, .fn = dev_visit, .opaque = &dev };
    if (!ferry_migration_add_section(m, &extra, NULL)) {
        abort();
    }
    return m;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static FerryMigration *m;
    if (!m) {
        m = setup();
    }
    int fd = memfd_create("fuzz-stream", MFD_CLOEXEC);
    if (fd < 0 || (size && write(fd, data, size) != (ssize_t)size) || lseek(fd, 0, SEEK_SET) != 0) {
        abort();
    }
    FerryChannel *c = ferry__channel_new_fd(fd, "fuzz");
    if (!c) {
        abort();
    }
    FerryError *err = NULL;
    uint64_t skipped = 0;
    ferry__migration_load_stream(m, c, &skipped, &err);
    ferry_error_free(err);
    ferry__channel_free(c);
    /* What an input visitor allocated belongs to the device: free it as a device would. */
    FerryVisitor *dv = ferry_visitor_dealloc_new();
    dev_visit(dv, &dev, 1, NULL);
    ferry_visitor_free(dv);
    if (dev.name) {
        abort(); /* the dealloc visitor must have freed and cleared it */
    }
    return 0;
}
