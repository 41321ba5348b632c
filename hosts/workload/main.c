/*
 * ferry-workload: a host program that stands in for a VM so that migrations can be tested and measured without
 * one. This file is the command line (QEMU's spellings: -m, -smp, -netdev, -device, plus the workload's own
 * options and the common ones of the host runtime), the QMP commands query-pattern-check, query-ram-digest,
 * query-workload and query-netdev, the host ops that stop and start the workers and the network devices
 * together, and main(). The workers, the RAM layout and their state are in workload.c; the network device is in
 * net.c and netframe.c. It uses only libferry's public API.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "net.h"
#include "options.h"
#include "workload.h"

#define PROG "ferry-workload"

/* Exit codes: a bad value is an error (1); an unknown option or a missing argument is a usage error (2). */
#define EXIT_BAD_VALUE 1
#define EXIT_USAGE 2

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
            "  -object memory-backend-file,id=ID,size=SIZE,mem-path=FILE[,share=on|off][,prealloc=on|off]\n"
            "  -machine memory-backend=ID\n"
            "                          back RAM with memfds (one per block, blocks named as above); share=on maps\n"
            "                          them shared, so that mode cpr-transfer passes them instead of copying;\n"
            "                          or with FILE (at least SIZE bytes), each block mapping its slice of it,\n"
            "                          shared (writes reach FILE) or private. File-backed RAM keeps FILE's content:\n"
            "                          no pattern is written and the workers only run with -pattern; verify with\n"
            "                          query-ram-digest. Not with -incoming. SIZE must equal -m if both are given\n"
            "  -netdev tap,id=ID,ifname=NAME[,script=no][,downscript=no]\n"
            "                          a TAP backend (/dev/net/tun); created if there is none, attached as one more\n"
            "                          queue if it is multi_queue. With -incoming it is attached only when the\n"
            "                          workload first runs, unless its fd came with backend-transfer\n"
            "  -device virtio-net,netdev=ID,ip=A.B.C.D[,mac=MAC][,id=ID]\n"
            "                          a NIC on that netdev that answers ARP and ping for ip (the workload has no\n"
            "                          guest OS); mac defaults to 52:54:00:12:34:56. At most %d of each\n"
            "  -mem-prealloc           fault all RAM in at start-up (a destination then takes no page fault while\n"
            "                          the data arrives)\n"
            "  -h, --help              this text\n"
            "%s",
            WORKLOAD_MAX_SMP, INT64_MAX, NET_MAX_DEVICES, ferry_host_common_usage());
}

static int bad_value(FerryError *err)
{
    fprintf(stderr, PROG ": %s\n", ferry_error_msg(err));
    ferry_error_free(err);
    return EXIT_BAD_VALUE;
}

/* Parse argv into @cfg and @net, handing common options to the host runtime. Returns -1 to go on, else an exit
 * code. */
static int parse_args(int argc, char **argv, FerryHost *host, WorkloadConfig *cfg, NetSetup *net)
{
    FerryError *err = NULL;
    size_t page_size = ferry_ram_page_size();
    uint64_t v;
    MemBackend mb = { 0 };
    bool m_given = false;

    for (int i = 1; i < argc; i++) {
        const char *opt = argv[i];
        const char *arg = i + 1 < argc ? argv[i + 1] : NULL;
        bool own_with_arg = true;

        /* QEMU accepts --opt as well as -opt. */
        if (opt[0] == '-' && opt[1] == '-' && opt[2]) {
            opt++;
        }
        if (strcmp(opt, "-h") == 0 || strcmp(opt, "-help") == 0) {
            usage(stdout);
            return EXIT_SUCCESS;
        }
        if (strcmp(opt, "-mem-prealloc") == 0) {
            cfg->mem_prealloc = true;
            continue;
        }
        if (strcmp(opt, "-m") == 0 || strcmp(opt, "-smp") == 0 || strcmp(opt, "-pattern") == 0 ||
            strcmp(opt, "-seed") == 0 || strcmp(opt, "-dirty-rate") == 0 || strcmp(opt, "-dirty-tracker") == 0 ||
            strcmp(opt, "-ram-block-size") == 0 || strcmp(opt, "-object") == 0 || strcmp(opt, "-machine") == 0 ||
            strcmp(opt, "-netdev") == 0 || strcmp(opt, "-device") == 0) {
            if (!arg) {
                fprintf(stderr, PROG ": option %s needs an argument (try --help)\n", opt);
                return EXIT_USAGE;
            }
            i++;
        } else {
            own_with_arg = false;
        }

        if (!own_with_arg) {
            bool used_arg = false;
            int r;

            if (opt[0] != '-') {
                fprintf(stderr, PROG ": unexpected argument '%s' (try --help)\n", argv[i]);
                return EXIT_USAGE;
            }
            r = ferry_host_parse_option(host, opt, arg, &used_arg, &err);
            if (r < 0) {
                fprintf(stderr, PROG ": %s\n", ferry_error_msg(err));
                ferry_error_free(err);
                return EXIT_BAD_VALUE;
            }
            if (r == 0) {
                fprintf(stderr, PROG ": unknown option '%s' (try --help)\n", argv[i]);
                return EXIT_USAGE;
            }
            if (used_arg) {
                i++;
            }
        } else if (strcmp(opt, "-object") == 0) {
            /* The host runtime's object types (TLS credentials, authorization) first; memory backends are ours. */
            bool used_arg = false;
            int r = ferry_host_parse_option(host, opt, arg, &used_arg, &err);

            if (r < 0) {
                return bad_value(err);
            }
            if (r == 0 && !opts_parse_object(arg, &mb, &err)) {
                return bad_value(err);
            }
        } else if (strcmp(opt, "-machine") == 0) {
            if (!opts_parse_machine(arg, &mb, &err)) {
                return bad_value(err);
            }
        } else if (strcmp(opt, "-netdev") == 0) {
            if (!net_parse_netdev(net, arg, &err)) {
                return bad_value(err);
            }
        } else if (strcmp(opt, "-device") == 0) {
            if (!net_parse_device(net, arg, &err)) {
                return bad_value(err);
            }
        } else if (strcmp(opt, "-m") == 0) {
            m_given = true;
            if (!opts_parse_size(arg, 20, &cfg->ram_size) || cfg->ram_size == 0 || cfg->ram_size % page_size) {
                fprintf(stderr, PROG ": -m: '%s' is not a RAM size (a positive multiple of the %zu-byte page, "
                        "e.g. 256M or 4G)\n", arg, page_size);
                return EXIT_BAD_VALUE;
            }
        } else if (strcmp(opt, "-ram-block-size") == 0) {
            if (!opts_parse_size(arg, 0, &cfg->block_size) || cfg->block_size == 0 || cfg->block_size % page_size) {
                fprintf(stderr, PROG ": -ram-block-size: '%s' is not a block size (a positive multiple of the "
                        "%zu-byte page, e.g. 64M)\n", arg, page_size);
                return EXIT_BAD_VALUE;
            }
        } else if (strcmp(opt, "-smp") == 0) {
            if (!opts_parse_u64(arg, WORKLOAD_MAX_SMP, &v) || v == 0) {
                fprintf(stderr, PROG ": -smp: '%s' is not a number of workers in 1..%d\n", arg, WORKLOAD_MAX_SMP);
                return EXIT_BAD_VALUE;
            }
            cfg->smp = (unsigned)v;
        } else if (strcmp(opt, "-pattern") == 0) {
            if (!workload_pattern_parse(arg, &cfg->pattern)) {
                fprintf(stderr, PROG ": -pattern: unknown pattern '%s' (ab, random, zero or half)\n", arg);
                return EXIT_BAD_VALUE;
            }
            cfg->file_workers = true; /* asked for: file-backed RAM gets writers too (workload.h) */
        } else if (strcmp(opt, "-seed") == 0) {
            /* Bounded to int64 so that query-workload can report it as a JSON integer. */
            if (!opts_parse_u64(arg, INT64_MAX, &cfg->seed)) {
                fprintf(stderr, PROG ": -seed: '%s' is not a number in 0..%" PRId64 "\n", arg, INT64_MAX);
                return EXIT_BAD_VALUE;
            }
        } else if (strcmp(opt, "-dirty-rate") == 0) {
            if (!opts_parse_u64(arg, UINT32_MAX, &cfg->dirty_rate)) {
                fprintf(stderr, PROG ": -dirty-rate: '%s' is not a rate in MiB/s (0 = unlimited)\n", arg);
                return EXIT_BAD_VALUE;
            }
        } else if (strcmp(opt, "-dirty-tracker") == 0) {
            if (!ferry_tracker_kind_parse(arg, &cfg->tracker)) {
                fprintf(stderr, PROG ": -dirty-tracker: unknown tracker '%s' (auto, uffd-wp, explicit or none)\n",
                        arg);
                return EXIT_BAD_VALUE;
            }
        }
    }
    MemChoice ram = { .size = cfg->ram_size };
    if (!opts_memory_backend_resolve(&mb, m_given, ferry_host_incoming(host), &ram, &err)) {
        return bad_value(err);
    }
    cfg->ram_size = ram.size;
    cfg->mem_prealloc |= ram.prealloc;
    cfg->memfd = ram.memfd;
    cfg->memfd_share = ram.memfd_share;
    strcpy(cfg->mem_path, ram.mem_path);
    cfg->file_share = ram.file_share;
    if (!net_setup_check(net, &err)) {
        return bad_value(err);
    }
    if (cfg->ram_size / page_size < cfg->smp) {
        fprintf(stderr, PROG ": -m %" PRIu64 " bytes is %" PRIu64 " pages, fewer than -smp %u workers\n",
                cfg->ram_size, cfg->ram_size / page_size, cfg->smp);
        return EXIT_BAD_VALUE;
    }
    if (cfg->ram_size / cfg->block_size >= 1u << 20) {
        fprintf(stderr, PROG ": -ram-block-size %" PRIu64 " splits -m %" PRIu64 " into too many blocks\n",
                cfg->block_size, cfg->ram_size);
        return EXIT_BAD_VALUE;
    }
    return -1;
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
    return json_pack("{s:s, s:I, s:i, s:I, s:I, s:I}", "pattern", workload_pattern_name(wl->cfg.pattern), "seed",
                     (json_int_t)wl->cfg.seed, "smp", (int)wl->cfg.smp, "pages", (json_int_t)wl->pages, "passes",
                     (json_int_t)passes, "pages-written", (json_int_t)written);
}

/* Everything the host ops stop and start: the workers ("vCPUs") and the network devices. */
typedef struct Machine {
    Workload *wl;
    NetDev *net[NET_MAX_DEVICES];
    unsigned nnet;
} Machine;

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

static const FerryHostOps machine_ops = {
    .stop = machine_stop,
    .start = machine_start,
};

/* Threads end before the engine goes (the workers write its RAM); the devices go after it, since its migration
 * threads may still call their backend ops until ferry_host_free has joined them. */
static void machine_teardown(Machine *mc, FerryHost *host)
{
    workload_stop_threads(mc->wl);
    for (unsigned i = 0; i < mc->nnet; i++) {
        net_dev_stop_thread(mc->net[i]);
    }
    ferry_host_free(host);
    workload_free(mc->wl);
    for (unsigned i = 0; i < mc->nnet; i++) {
        net_dev_free(mc->net[i]);
    }
}

static bool machine_setup(Machine *mc, FerryHost *host, const WorkloadConfig *cfg, const NetSetup *net,
                          FerryError **errp)
{
    FerryMigration *m = ferry_host_migration(host);
    bool incoming = ferry_host_incoming(host);

    mc->wl = workload_new(cfg, errp);
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

int main(int argc, char **argv)
{
    WorkloadConfig cfg = {
        .ram_size = UINT64_C(128) << 20,
        .block_size = UINT64_C(1) << 30,
        .smp = 1,
        .pattern = WORKLOAD_PATTERN_AB,
        .seed = 1,
        .dirty_rate = 0,
        .tracker = FERRY_TRACKER_AUTO,
    };
    NetSetup net = { .n = 0 };
    Machine mc = { 0 };
    FerryError *err = NULL;
    FerryHost *host;
    int status;

    host = ferry_host_new(PROG, &err);
    if (!host) {
        fprintf(stderr, PROG ": %s\n", ferry_error_msg(err));
        ferry_error_free(err);
        return EXIT_FAILURE;
    }
    status = parse_args(argc, argv, host, &cfg, &net);
    if (status >= 0) {
        ferry_host_free(host);
        return status;
    }

    if (!machine_setup(&mc, host, &cfg, &net, &err) || !ferry_host_start(host, &err)) {
        goto fail;
    }
    status = ferry_host_run(host);
    /* The workers write RAM that belongs to the engine: they end before ferry_host_free unmaps it. The host may
     * still call stop/start on its way down; those return at once once the threads are gone. */
    machine_teardown(&mc, host);
    return status;

fail:
    fprintf(stderr, PROG ": %s\n", ferry_error_msg(err));
    ferry_error_free(err);
    machine_teardown(&mc, host);
    return EXIT_FAILURE;
}
