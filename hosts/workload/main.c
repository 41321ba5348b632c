/*
 * ferry-workload: a host program that stands in for a VM so that migrations can be tested and measured without
 * one. This file is the workload's own options (-pattern, -seed, -dirty-rate, -dirty-tracker, -ram-block-size;
 * the command line both host programs share, -m, -smp, -object, -machine, -netdev, -device and the host
 * runtime's options, and main()'s life cycle are hosts/common/argv.c's), the QMP commands query-pattern-check,
 * query-ram-digest, query-workload and query-netdev, the host ops that stop and start the workers and the network
 * devices together, and the machine that main() builds. The workers, the RAM layout and their state are in
 * workload.c; the network device is in net.c and netframe.c. It uses only libferry's public API.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "argv.h"   /* the shared command line and main() (hosts/common) */
#include "net.h"
#include "options.h"
#include "workload.h"

#define PROG "ferry-workload"

static void usage(FILE *out)
{
    fprintf(out,
            "Usage: " PROG " [options]\n"
            "A stand-in for a VM: worker threads (\"vCPUs\") write RAM registered with libferry in a pattern that\n"
            "can be verified after a migration. Start the destination with the same options plus -incoming.\n"
            "\n"
            "  -m SIZE                 RAM size (suffix K, M, G or T; no suffix means MiB, as in QEMU); default 128M\n"
            "  -smp N                  worker threads, 1..%d; default 1\n"
            "  -pattern ab|random|zero|half\n"
            "                          ab: each worker increments the first byte of every page of its share in turn\n"
            "                          random/zero/half: all/no/every other page filled with self-verifying data,\n"
            "                          then workers rewrite random pages of their share; default ab\n"
            "  -seed N                 seed of the generators, 0..%" PRId64 "; default 1\n"
            "  -dirty-rate MIBPS       MiB/s written by all workers together, 0 = unlimited; default 0\n"
            "  -dirty-tracker auto|uffd-wp|explicit|none\n"
            "                          how outgoing migrations find written pages; default auto\n"
            "  -ram-block-size SIZE    RAM is registered as blocks ram0, ram1, ... of at most SIZE bytes (suffix K,\n"
            "                          M, G or T); default 1G\n"
            "  -object memory-backend-memfd,id=ID,size=SIZE[,share=on|off][,prealloc=on|off]\n"
            "          [,hugetlb=on|off][,hugetlbsize=HSIZE][,prealloc-threads=N]\n"
            "  -object memory-backend-file,id=ID,size=SIZE,mem-path=FILE|DIR[,share=on|off][,prealloc=on|off]\n"
            "          [,prealloc-threads=N]\n"
            "  -machine memory-backend=ID\n"
            "                          back RAM with memfds (one per block, blocks named as above); share=on (the\n"
            "                          default for memfds, as in QEMU) maps them shared, so that mode cpr-transfer\n"
            "                          passes them instead of copying;\n"
            "                          hugetlb=on makes them huge pages of HSIZE (default the host's default huge\n"
            "                          page size; SIZE and -ram-block-size must be multiples of it; no postcopy).\n"
            "                          Or with FILE (at least SIZE bytes), each block mapping its slice of it,\n"
            "                          shared (writes reach FILE) or private. File-backed RAM keeps FILE's content:\n"
            "                          no pattern is written and the workers only run with -pattern; verify with\n"
            "                          query-ram-digest. Not with -incoming. Or with DIR (e.g. a hugetlbfs mount):\n"
            "                          each block is a new unlinked file in DIR, RAM as any other (huge pages on\n"
            "                          hugetlbfs). SIZE must equal -m if both are given\n"
            "  -mem-path FILE|DIR      -m's RAM over FILE or in new files in DIR, as memory-backend-file (private)\n"
            "  -netdev tap,id=ID,ifname=NAME[,script=no][,downscript=no]\n"
            "                          a TAP backend (/dev/net/tun); created if there is none, attached as one more\n"
            "                          queue if it is multi_queue. With -incoming it is attached only when the\n"
            "                          workload first runs, unless its fd came with backend-transfer\n"
            "  -device virtio-net,netdev=ID,ip=A.B.C.D[,mac=MAC][,id=ID]\n"
            "                          a NIC on that netdev that answers ARP and ping for ip (the workload has no\n"
            "                          guest OS); mac defaults to 52:54:00:12:34:56. At most %d of each\n"
            "  -mem-prealloc           fault all RAM in at start-up (a destination then takes no page fault while\n"
            "                          the data arrives), with one thread per worker unless the backend sets\n"
            "                          prealloc-threads. Plain RAM asks for transparent huge pages (madvise)\n"
            "  -h, --help              this text\n"
            "%s",
            WORKLOAD_MAX_SMP, INT64_MAX, NET_MAX_DEVICES, ferry_host_common_usage());
}

/* Everything the host ops stop and start: the workers ("vCPUs") and the network devices; and what the command line
 * asked for. */
typedef struct Machine {
    HostArgs args;
    WorkloadConfig cfg;
    Workload *wl;
    NetDev *net[NET_MAX_DEVICES];
    unsigned nnet;
} Machine;

/* The workload's own options (hosts/common/argv.c has the shared ones and the host runtime's). */
static const char *const own_with_arg[] = {
    "-pattern", "-seed", "-dirty-rate", "-dirty-tracker", "-ram-block-size", NULL,
};

static bool parse_option(void *opaque, const char *opt, const char *arg, FerryError **errp)
{
    WorkloadConfig *cfg = &((Machine *)opaque)->cfg;
    size_t page_size = ferry_ram_page_size();

    if (strcmp(opt, "-ram-block-size") == 0) {
        if (!opts_parse_size(arg, 0, &cfg->block_size) || cfg->block_size == 0 || cfg->block_size % page_size) {
            ferry_error_setg(errp, "-ram-block-size: '%s' is not a block size (a positive multiple of the "
                             "%zu-byte page, e.g. 64M)", arg, page_size);
            return false;
        }
    } else if (strcmp(opt, "-pattern") == 0) {
        if (!workload_pattern_parse(arg, &cfg->pattern)) {
            ferry_error_setg(errp, "-pattern: unknown pattern '%s' (ab, random, zero or half)", arg);
            return false;
        }
        cfg->file_workers = true; /* asked for: file-backed RAM gets writers too (workload.h) */
    } else if (strcmp(opt, "-seed") == 0) {
        /* Bounded to int64 so that query-workload can report it as a JSON integer. */
        if (!opts_parse_u64(arg, INT64_MAX, &cfg->seed)) {
            ferry_error_setg(errp, "-seed: '%s' is not a number in 0..%" PRId64, arg, INT64_MAX);
            return false;
        }
    } else if (strcmp(opt, "-dirty-rate") == 0) {
        if (!opts_parse_u64(arg, UINT32_MAX, &cfg->dirty_rate)) {
            ferry_error_setg(errp, "-dirty-rate: '%s' is not a rate in MiB/s (0 = unlimited)", arg);
            return false;
        }
    } else if (!ferry_tracker_kind_parse(arg, &cfg->tracker)) { /* -dirty-tracker */
        ferry_error_setg(errp, "-dirty-tracker: unknown tracker '%s' (auto, uffd-wp, explicit or none)", arg);
        return false;
    }
    return true;
}

/* After all options: RAM and workers as the shared options chose, checked against the workload's own. */
static bool finish_options(void *opaque, HostArgs *a, FerryError **errp)
{
    WorkloadConfig *cfg = &((Machine *)opaque)->cfg;
    size_t page_size = ferry_ram_page_size();

    cfg->ram_size = a->ram.size;
    cfg->smp = a->smp;
    cfg->mem_prealloc = a->ram.prealloc;
    cfg->prealloc_threads = a->ram.prealloc_threads;
    cfg->memfd = a->ram.memfd;
    cfg->memfd_share = a->ram.memfd_share;
    strcpy(a->ram.mem_dir ? cfg->mem_dir : cfg->mem_path, a->ram.mem_path);
    cfg->file_share = a->ram.file_share;
    cfg->hugetlb = a->ram.hugetlb;
    cfg->hugetlbsize = a->ram.hugetlbsize;
    /* Every block is a whole number of huge pages: the last one is what remains of -m. */
    if (a->ram.page_size && (cfg->block_size % a->ram.page_size || cfg->ram_size % a->ram.page_size)) {
        ferry_error_setg(errp, "-ram-block-size %" PRIu64 " and -m %" PRIu64 " must be multiples of the %" PRIu64
                         "-byte huge page of the memory backend", cfg->block_size, cfg->ram_size,
                         a->ram.page_size);
        return false;
    }
    if (cfg->ram_size / page_size < cfg->smp) {
        ferry_error_setg(errp, "-m %" PRIu64 " bytes is %" PRIu64 " pages, fewer than -smp %u workers",
                         cfg->ram_size, cfg->ram_size / page_size, cfg->smp);
        return false;
    }
    if (cfg->ram_size / cfg->block_size >= 1u << 20) {
        ferry_error_setg(errp, "-ram-block-size %" PRIu64 " splits -m %" PRIu64 " into too many blocks",
                         cfg->block_size, cfg->ram_size);
        return false;
    }
    return true;
}

/* ---- QMP commands ---- */

static json_t *cmd_pattern_check(json_t *args, void *opaque, FerryError **errp)
{
    WorkloadCheck res;

    if (!workload_check(opaque, &res, errp)) {
        return NULL;
    }
    return json_pack("{s:b, s:I, s:I, s:s}", "ok", res.mismatches == 0, "pages", (json_int_t)res.pages,
                     "mismatches", (json_int_t)res.mismatches, "detail", res.detail);
}

static json_t *cmd_ram_digest(json_t *args, void *opaque, FerryError **errp)
{
    char hex[33];
    uint64_t size;

    if (!workload_digest(opaque, hex, &size, errp)) {
        return NULL;
    }
    return json_pack("{s:s, s:I}", "digest", hex, "size", (json_int_t)size);
}

static json_t *cmd_query_workload(json_t *args, void *opaque, FerryError **errp)
{
    Workload *wl = opaque;
    uint64_t passes, written;

    workload_counters(wl, &passes, &written);
    /* cpu-throttle: what auto-converge asked of the workers now (0: full speed). */
    return json_pack("{s:s, s:I, s:i, s:I, s:I, s:I, s:i}", "pattern", workload_pattern_name(wl->cfg.pattern), "seed",
                     (json_int_t)wl->cfg.seed, "smp", (int)wl->cfg.smp, "pages", (json_int_t)wl->pages, "passes",
                     (json_int_t)passes, "pages-written", (json_int_t)written, "cpu-throttle",
                     atomic_load(&wl->cpu_throttle));
}

static json_t *cmd_query_netdev(json_t *args, void *opaque, FerryError **errp)
{
    Machine *mc = opaque;
    json_t *list = json_array();

    for (unsigned i = 0; i < mc->nnet; i++) {
        json_t *o = net_dev_query(mc->net[i]);

        if (!o || json_array_append_new(list, o) < 0) {
            json_decref(list);
            ferry_error_setg(errp, "out of memory");
            return NULL;
        }
    }
    return list;
}

static bool register_commands(FerryHost *host, Machine *mc, FerryError **errp)
{
    Workload *wl = mc->wl;

    return ferry_host_register_command(host, "query-pattern-check", NULL, cmd_pattern_check, wl, errp) &&
           ferry_host_register_command(host, "query-ram-digest", NULL, cmd_ram_digest, wl, errp) &&
           ferry_host_register_command(host, "query-workload", NULL, cmd_query_workload, wl, errp) &&
           ferry_host_register_command(host, "query-netdev", NULL, cmd_query_netdev, mc, errp);
}

/* As QEMU: the vCPUs stop before the devices, and the devices run before the vCPUs, so that nothing a worker
 * does ever meets a stopped device. */
static void machine_stop(void *opaque)
{
    Machine *mc = opaque;

    workload_ops.stop(mc->wl);
    for (unsigned i = 0; i < mc->nnet; i++) {
        net_dev_stop(mc->net[i]);
    }
}

static void machine_start(void *opaque)
{
    Machine *mc = opaque;

    for (unsigned i = 0; i < mc->nnet; i++) {
        net_dev_start(mc->net[i]);
    }
    workload_ops.start(mc->wl);
}

/* Only the workers dirty RAM fast enough to matter: the NIC's device thread is not throttled (as QEMU throttles
 * vCPUs only). */
static void machine_throttle(void *opaque, int percent)
{
    Machine *mc = opaque;

    workload_ops.throttle(mc->wl, percent);
}

/* dirty-limit's writers are the workers too (workload.c's header says what they count). */
static int machine_writer_stats(void *opaque, FerryWriterStats *stats, int max, const char **why)
{
    Machine *mc = opaque;

    return workload_ops.writer_stats(mc->wl, stats, max, why);
}

static void machine_dirty_limit(void *opaque, int index, uint64_t mbps, int period_ms)
{
    Machine *mc = opaque;

    workload_ops.dirty_limit(mc->wl, index, mbps, period_ms);
}

static const FerryHostOps machine_ops = {
    .stop = machine_stop,
    .start = machine_start,
    .throttle = machine_throttle,
    .writer_stats = machine_writer_stats,
    .dirty_limit = machine_dirty_limit,
};

/* Threads end before the engine goes (the workers write its RAM); the devices go after it, since its migration
 * threads may still call their backend ops until ferry_host_free has joined them. The host may still call
 * stop/start on its way down; those return at once once the threads are gone. */
static void machine_stop_threads(void *opaque)
{
    Machine *mc = opaque;

    workload_stop_threads(mc->wl);
    for (unsigned i = 0; i < mc->nnet; i++) {
        net_dev_stop_thread(mc->net[i]);
    }
}

static void machine_free(void *opaque)
{
    Machine *mc = opaque;

    workload_free(mc->wl);
    for (unsigned i = 0; i < mc->nnet; i++) {
        net_dev_free(mc->net[i]);
    }
}

static bool machine_setup(void *opaque, FerryHost *host, FerryError **errp)
{
    Machine *mc = opaque;
    const NetSetup *net = &mc->args.net;
    FerryMigration *m = ferry_host_migration(host);
    bool incoming = ferry_host_incoming(host);

    mc->wl = workload_new(&mc->cfg, errp);
    if (!mc->wl || !workload_register(mc->wl, m, errp)) {
        return false;
    }
    for (unsigned i = 0; i < net->n; i++) {
        mc->net[i] = net_dev_new(&net->cfg[i], i, m, errp);
        if (!mc->net[i]) {
            return false;
        }
        mc->nnet++;
        if (!net_dev_register(mc->net[i], errp)) {
            return false;
        }
    }
    if (!register_commands(host, mc, errp) || (!incoming && !workload_fill(mc->wl, errp))) {
        return false;
    }
    for (unsigned i = 0; i < mc->nnet; i++) {
        if (!net_dev_init_backend(mc->net[i], incoming, errp)) {
            return false;
        }
    }
    if (!workload_start_threads(mc->wl, errp)) {
        return false;
    }
    for (unsigned i = 0; i < mc->nnet; i++) {
        if (!net_dev_start_thread(mc->net[i], errp)) {
            return false;
        }
    }
    ferry_host_set_ops(host, &machine_ops, mc);
    return true;
}

static const HostProgram program = {
    .name = PROG,
    .usage = usage,
    .smp_max = WORKLOAD_MAX_SMP,
    .smp_unit = "workers",
    .with_arg = own_with_arg,
    .option = parse_option,
    .finish = finish_options,
    .setup = machine_setup,
    .stop = machine_stop_threads,
    .free = machine_free,
};

int main(int argc, char **argv)
{
    Machine mc = {
        .args = { .ram = { .size = UINT64_C(128) << 20 }, .smp = 1 },
        .cfg = {
            .block_size = UINT64_C(1) << 30,
            .pattern = WORKLOAD_PATTERN_AB,
            .seed = 1,
            .dirty_rate = 0,
            .tracker = FERRY_TRACKER_AUTO,
        },
    };

    return host_main(&program, &mc, &mc.args, argc, argv);
}
