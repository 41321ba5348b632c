/*
 * ferry-vm: a minimal KVM virtual machine that libferry live-migrates while its guest runs. This file is its own
 * options (QEMU's spellings: -drive, -kernel, -initrd, -append, -serial, -accel, -display, and -dirty-tracker,
 * -ab-every), the choice of dirty tracker, the QMP commands query-pattern-check, query-vm, query-netdev and
 * query-pci, and the machine that main() builds. The command line both host programs share (-m, -smp,
 * -mem-prealloc, -object memory-backend-*, -machine, -netdev tap, -device virtio-net-pci, and the host runtime's
 * -object for TLS, -qmp, -monitor, -incoming, -S, -name) and main()'s life cycle are hosts/common/argv.c's. The
 * machine is in vm.c and its neighbours (vm.h lists them). It uses only libferry's public API.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "argv.h"    /* the shared command line and main(), as ferry-workload's (hosts/common) */
#include "options.h" /* sizes and key=value lists */
#include "vm.h"

#define PROG "ferry-vm"

static void usage(FILE *out)
{
    fprintf(out,
            "Usage: " PROG " [options]\n"
            "A minimal KVM virtual machine whose running guest live-migrates with libferry. Without -drive it runs\n"
            "the built-in A-B test guest (a boot sector that increments the first byte of every page from 1 MiB up\n"
            "and prints 'B' on the serial port every N passes). Start the destination with the same options plus\n"
            "-incoming.\n"
            "\n"
            "  -m SIZE                 guest RAM (suffix K, M, G or T; no suffix means MiB, as in QEMU); default 128M.\n"
            "                          From 3.5G on, 3 GiB stay below 4 GiB and the rest is mapped from 4 GiB\n"
            "  -smp N                  vCPUs, 1..%d; default 1 (vCPU 0 boots, the others wait for INIT/SIPI)\n"
            "  -drive file=PATH[,format=raw]\n"
            "                          boot the first sector of PATH (512 bytes ending in 55 aa) instead of the\n"
            "                          built-in guest, loaded at 0x7c00 and entered in real mode as a BIOS would\n"
            "  -kernel BZIMAGE [-initrd FILE] [-append CMDLINE]\n"
            "                          boot a Linux kernel (32-bit boot protocol; its console is ttyS0)\n"
            "                          instead of a boot sector\n"
            "  -serial stdio|file:PATH|null\n"
            "                          the 16550 at 0x3f8: output to stdout (input from stdin), to PATH, or\n"
            "                          nowhere; default stdio (null with -monitor stdio)\n"
            "  -object memory-backend-memfd,id=ID,size=SIZE[,share=on|off][,prealloc=on|off]\n"
            "          [,hugetlb=on|off][,hugetlbsize=HSIZE][,prealloc-threads=N]\n"
            "  -object memory-backend-file,id=ID,size=SIZE,mem-path=FILE|DIR[,share=on|off][,prealloc=on|off]\n"
            "          [,prealloc-threads=N]\n"
            "  -machine [pc,][accel=kvm,]memory-backend=ID\n"
            "                          guest RAM in a memfd (share=on, the default as in QEMU, lets mode\n"
            "                          cpr-transfer pass it to a local\n"
            "                          destination instead of copying it; hugetlb=on: huge pages of HSIZE, the\n"
            "                          host's default if not given, SIZE a multiple of it, no postcopy), over a\n"
            "                          file (not on a destination), or in a new unlinked file in DIR (e.g. a\n"
            "                          hugetlbfs mount: its huge pages)\n"
            "  -mem-path FILE|DIR      -m's guest RAM over FILE or in a new file in DIR (private, as QEMU)\n"
            "  -object tls-creds-x509|tls-creds-psk|authz-list|authz-simple,id=ID,...\n"
            "                          TLS credentials and authorization for migrations, as in QEMU\n"
            "  -mem-prealloc           fault all guest RAM in at start-up, one thread per vCPU unless the backend\n"
            "                          sets prealloc-threads. Plain -m RAM asks for transparent huge pages\n"
            "  -accel kvm[,dirty-ring-size=N]\n"
            "                          KVM's dirty ring of N entries per vCPU (a power of two, %u..%u; 0: none)\n"
            "                          for outgoing migrations instead of its dirty bitmap; QEMU's other kvm\n"
            "                          properties are accepted and ignored\n"
            "  -dirty-tracker auto|kvm-dirty-log|kvm-dirty-ring|uffd-wp|none\n"
            "                          how outgoing migrations find the pages the guest wrote: KVM's dirty log\n"
            "                          (auto takes it if a start-up probe sees the guest's writes in it, or the\n"
            "                          ring if -accel gave a dirty-ring-size), KVM's dirty ring (%u entries\n"
            "                          unless -accel says), or the library's userfaultfd write-protect tracker;\n"
            "                          default auto\n"
            "  -netdev tap,id=ID,ifname=TAP[,script=no][,downscript=no]\n"
            "  -device virtio-net-pci,netdev=ID[,mac=MAC][,id=ID]\n"
            "                          a virtio-net NIC (legacy virtio-pci, on PCI bus 0) on the TAP (attached by\n"
            "                          name; with backend-transfer a migration hands its fd to the destination)\n"
            "  -ab-every N             passes of the A-B guest per progress character (0 = about one per 256 MiB\n"
            "                          written); default 0\n"
            "  -enable-kvm, -nographic, -display none, -nodefaults\n"
            "                          accepted for QEMU compatibility (always KVM, never a display)\n"
            "  -h, --help              this text\n"
            "%s",
            VM_MAX_SMP, VM_DIRTY_RING_MIN, VM_DIRTY_RING_MAX, VM_DIRTY_RING_DEFAULT, ferry_host_common_usage());
}

/* A decimal number 0..@max that fits a u32. */
static bool parse_u32(const char *s, uint32_t max, uint32_t *out)
{
    uint64_t v;

    if (!opts_parse_u64(s, max, &v)) {
        return false;
    }
    *out = (uint32_t)v;
    return true;
}

/* The machine and what the command line asked for. */
typedef struct Machine {
    HostArgs args;              /* the options both host programs take (hosts/common/argv.h) */
    VmConfig cfg;
    bool serial_given;
    char serial_path[4096];
    char drive[4096];
    bool ring_size_given;       /* -accel kvm,dirty-ring-size= */

    Vm *vm;
    FerryHost *host;
    const char *tracker;       /* what outgoing migrations will use */
    char tracker_note[512];    /* why, if it is not KVM's dirty log */
    bool dirty_ring;           /* KVM_CAP_DIRTY_LOG_RING is offered (used with -accel kvm,dirty-ring-size) */
} Machine;

/* -accel kvm's dirty-ring-size=N: a power of two in QEMU's bounds, or 0 for none. */
static bool parse_ring_size(const char *value, Machine *mc, FerryError **errp)
{
    uint32_t v;

    if (!parse_u32(value, UINT32_MAX, &v) ||
        (v && (v < VM_DIRTY_RING_MIN || v > VM_DIRTY_RING_MAX || (v & (v - 1))))) {
        ferry_error_setg(errp, "-accel kvm: dirty-ring-size '%s' is not a power of two from %u to %u (or 0: no ring)",
                         value, VM_DIRTY_RING_MIN, VM_DIRTY_RING_MAX);
        return false;
    }
    mc->cfg.dirty_ring_size = v;
    mc->ring_size_given = true;
    return true;
}

/* QEMU's -accel: the accelerator (first, bare or accel=) must be kvm. Of its properties dirty-ring-size counts;
 * the others QEMU's kvm accelerator has are accepted for QEMU's command lines and ignored, as they tune what
 * ferry-vm does not have or does one way only (kernel-irqchip must then be on, the only mode here). */
static bool parse_accel(const char *arg, Machine *mc, FerryError **errp)
{
    static const char *const ignored[] = {
        "kvm-shadow-mem", "eager-split-size", "notify-vmexit", "notify-window", "thread", "device",
    };
    char buf[256];
    const char *key, *value;
    const char *rest = opts_next_pair(arg, buf, sizeof(buf), &key, &value);
    const char *accel = value && strcmp(key, "accel") == 0 ? value : !value ? key : "";

    if (strcmp(accel, "kvm") != 0) {
        ferry_error_setg(errp, "-accel: '%s' is not an accelerator of ferry-vm (only kvm)", *accel ? accel : arg);
        return false;
    }
    while (rest && *rest) {
        bool known = false;

        rest = opts_next_pair(rest, buf, sizeof(buf), &key, &value);
        if (!value) {
            ferry_error_setg(errp, "-accel kvm: '%s' needs a value", key);
            return false;
        }
        if (strcmp(key, "dirty-ring-size") == 0) {
            if (!parse_ring_size(value, mc, errp)) {
                return false;
            }
            continue;
        }
        if (strcmp(key, "kernel-irqchip") == 0) {
            if (strcmp(value, "on") != 0) {
                ferry_error_setg(errp, "-accel kvm: kernel-irqchip=%s: ferry-vm has the whole irqchip in KVM (on)",
                                 value);
                return false;
            }
            continue;
        }
        for (size_t i = 0; i < sizeof(ignored) / sizeof(ignored[0]); i++) {
            known = known || strcmp(key, ignored[i]) == 0;
        }
        if (!known) {
            ferry_error_setg(errp, "-accel kvm: unknown property '%s' (dirty-ring-size=N, or QEMU's other kvm ones)",
                             key);
            return false;
        }
    }
    return true;
}

static bool parse_drive(const char *arg, Machine *mc, FerryError **errp)
{
    char buf[sizeof(mc->drive) + 16];
    const char *key, *value;
    const char *rest = arg;

    while (rest && *rest) {
        if (strcspn(rest, ",") >= sizeof(buf)) {
            ferry_error_setg(errp, "-drive: property too long");
            return false;
        }
        rest = opts_next_pair(rest, buf, sizeof(buf), &key, &value);
        if (value && strcmp(key, "file") == 0 && *value && strlen(value) < sizeof(mc->drive)) {
            strcpy(mc->drive, value);
        } else if (value && strcmp(key, "format") == 0 && strcmp(value, "raw") == 0) {
            continue;
        } else if (value && (strcmp(key, "if") == 0 || strcmp(key, "index") == 0 || strcmp(key, "media") == 0)) {
            continue; /* QEMU's placement properties: there is one boot disk here */
        } else {
            ferry_error_setg(errp, "-drive: unsupported property '%s' (file=PATH, format=raw)", key);
            return false;
        }
    }
    if (!mc->drive[0]) {
        ferry_error_setg(errp, "-drive: file= is required");
        return false;
    }
    mc->cfg.drive = mc->drive;
    return true;
}

static bool parse_serial(const char *arg, Machine *mc, FerryError **errp)
{
    mc->serial_given = true;
    if (strcmp(arg, "stdio") == 0) {
        mc->cfg.serial_mode = VM_SERIAL_STDIO;
    } else if (strcmp(arg, "null") == 0 || strcmp(arg, "none") == 0) {
        mc->cfg.serial_mode = VM_SERIAL_NULL;
    } else if (strncmp(arg, "file:", 5) == 0 && arg[5] && strlen(arg + 5) < sizeof(mc->serial_path)) {
        strcpy(mc->serial_path, arg + 5);
        mc->cfg.serial_mode = VM_SERIAL_FILE;
        mc->cfg.serial_path = mc->serial_path;
    } else {
        ferry_error_setg(errp, "-serial: '%s' is not stdio, file:PATH or null", arg);
        return false;
    }
    return true;
}

static const struct {
    const char *name;
    VmTrackerChoice choice;
} tracker_names[] = {
    {"auto", VM_TRACKER_AUTO},
    {"kvm-dirty-log", VM_TRACKER_KVM},
    {"kvm-dirty-ring", VM_TRACKER_KVM_RING},
    {"uffd-wp", VM_TRACKER_UFFD_WP},
    {"none", VM_TRACKER_NONE},
};

static bool parse_tracker(const char *arg, VmTrackerChoice *t, FerryError **errp)
{
    for (size_t i = 0; i < sizeof(tracker_names) / sizeof(tracker_names[0]); i++) {
        if (strcmp(arg, tracker_names[i].name) == 0) {
            *t = tracker_names[i].choice;
            return true;
        }
    }
    ferry_error_setg(errp, "-dirty-tracker: '%s' is not auto, kvm-dirty-log, kvm-dirty-ring, uffd-wp or none", arg);
    return false;
}

static const char *tracker_name(VmTrackerChoice t)
{
    for (size_t i = 0; i < sizeof(tracker_names) / sizeof(tracker_names[0]); i++) {
        if (tracker_names[i].choice == t) {
            return tracker_names[i].name;
        }
    }
    return "?";
}

/* ferry-vm's own options (hosts/common/argv.c has the shared ones and the host runtime's). */
static const char *const own_with_arg[] = {
    "-drive", "-serial", "-accel", "-dirty-tracker", "-ab-every", "-display", "-kernel", "-initrd", "-append", NULL,
};
/* Accepted for QEMU compatibility: always KVM, never a display, no default devices anyway. */
static const char *const own_flags[] = { "-enable-kvm", "-nographic", "-nodefaults", NULL };

static bool parse_option(void *opaque, const char *opt, const char *arg, FerryError **errp)
{
    Machine *mc = opaque;

    if (!arg) {
        return true; /* own_flags */
    }
    if (strcmp(opt, "-ab-every") == 0) {
        if (!parse_u32(arg, UINT32_MAX, &mc->cfg.ab_every)) {
            ferry_error_setg(errp, "-ab-every: '%s' is not a number of passes", arg);
            return false;
        }
        return true;
    }
    if (strcmp(opt, "-kernel") == 0 || strcmp(opt, "-initrd") == 0 || strcmp(opt, "-append") == 0) {
        if (strcmp(opt, "-append") != 0 && !*arg) {
            ferry_error_setg(errp, "%s: no file given", opt);
            return false;
        }
        *(opt[1] == 'k' ? &mc->cfg.kernel : opt[1] == 'i' ? &mc->cfg.initrd : &mc->cfg.append) = arg;
        return true;
    }
    if (strcmp(opt, "-display") == 0) {
        if (strcmp(arg, "none") != 0) {
            ferry_error_setg(errp, "-display: only 'none'");
            return false;
        }
        return true;
    }
    return strcmp(opt, "-drive") == 0    ? parse_drive(arg, mc, errp)
           : strcmp(opt, "-serial") == 0 ? parse_serial(arg, mc, errp)
           : strcmp(opt, "-accel") == 0  ? parse_accel(arg, mc, errp)
                                         : parse_tracker(arg, &mc->cfg.tracker, errp); /* -dirty-tracker */
}

/* QEMU uses the ring only when given a size; here -dirty-tracker kvm-dirty-ring asks for it too. With a ring KVM
 * keeps no bitmap, and another tracker would leave the ring unread: those pairs contradict each other. */
static bool finish_tracker(Machine *mc, FerryError **errp)
{
    VmConfig *cfg = &mc->cfg;

    if (cfg->tracker == VM_TRACKER_KVM_RING) {
        if (mc->ring_size_given && !cfg->dirty_ring_size) {
            ferry_error_setg(errp, "-dirty-tracker kvm-dirty-ring needs a ring: -accel kvm,dirty-ring-size=0 says "
                             "none");
            return false;
        }
        if (!mc->ring_size_given) {
            cfg->dirty_ring_size = VM_DIRTY_RING_DEFAULT;
        }
    } else if (cfg->dirty_ring_size) {
        if (cfg->tracker != VM_TRACKER_AUTO) {
            ferry_error_setg(errp, "-accel kvm,dirty-ring-size=%u and -dirty-tracker %s contradict each other (the "
                             "ring is KVM's dirty log then; use -dirty-tracker auto or kvm-dirty-ring)",
                             cfg->dirty_ring_size, tracker_name(cfg->tracker));
            return false;
        }
        cfg->tracker = VM_TRACKER_KVM_RING;
    }
    return true;
}

/* After all options: the guest's RAM and vCPUs as the shared options chose, and ferry-vm's own rules. */
static bool finish_options(void *opaque, HostArgs *a, FerryError **errp)
{
    Machine *mc = opaque;
    VmConfig *cfg = &mc->cfg;

    cfg->ram_size = a->ram.size;
    cfg->smp = a->smp;
    cfg->mem_prealloc = a->ram.prealloc;
    cfg->prealloc_threads = a->ram.prealloc_threads;
    cfg->memfd = a->ram.memfd;
    cfg->memfd_share = a->ram.memfd_share;
    cfg->mem_path = a->ram.mem_path[0] && !a->ram.mem_dir ? a->ram.mem_path : NULL;
    cfg->mem_dir = a->ram.mem_dir ? a->ram.mem_path : NULL;
    cfg->file_share = a->ram.file_share;
    cfg->hugetlb = a->ram.hugetlb;
    cfg->hugetlbsize = a->ram.hugetlbsize;
    if (!finish_tracker(mc, errp)) {
        return false;
    }
    /* QEMU's rules: -initrd and -append go with -kernel, and a kernel is booted instead of a disk. */
    if ((cfg->initrd || cfg->append) && !cfg->kernel) {
        ferry_error_setg(errp, "%s is only allowed with -kernel", cfg->initrd ? "-initrd" : "-append");
        return false;
    }
    if (cfg->kernel && cfg->drive) {
        ferry_error_setg(errp, "-kernel and -drive: boot one or the other");
        return false;
    }
    if (!mc->serial_given && a->monitor_stdio) {
        cfg->serial_mode = VM_SERIAL_NULL;
    }
    if (a->monitor_stdio && cfg->serial_mode == VM_SERIAL_STDIO) {
        ferry_error_setg(errp, "-serial stdio and -monitor stdio cannot share the terminal: give -serial file:PATH");
        return false;
    }
    return true;
}

/* ---- QMP ---- */

static json_t *cmd_pattern_check(json_t *args, void *opaque, FerryError **errp)
{
    Machine *mc = opaque;
    VmCheck res;

    if (!vm_ab_check(mc->vm, &res, errp)) {
        return NULL;
    }
    /* One entry per vCPU's slice, so that a caller sees each vCPU's progress (its slice's first byte moves). */
    json_t *slices = json_array();
    for (unsigned i = 0; i < res.nslices; i++) {
        const VmCheckSlice *sl = &res.slices[i];

        json_array_append_new(slices, json_pack("{s:I, s:I, s:i, s:b, s:I}", "start", (json_int_t)sl->start, "pages",
                                                (json_int_t)sl->pages, "first-byte", (int)sl->first_byte, "edge",
                                                sl->edge, "mismatches", (json_int_t)sl->mismatches));
    }
    return json_pack("{s:b, s:I, s:I, s:I, s:i, s:b, s:I, s:s, s:o}", "ok", res.mismatches == 0, "pages",
                     (json_int_t)res.pages, "mismatches", (json_int_t)res.mismatches, "start", (json_int_t)res.start,
                     "first-byte", (int)res.first_byte, "edge", res.edge, "edge-page", (json_int_t)res.edge_page,
                     "detail", res.detail, "slices", slices);
}

static json_t *cmd_query_vm(json_t *args, void *opaque, FerryError **errp)
{
    Machine *mc = opaque;
    Vm *vm = mc->vm;
    uint64_t clock;
    json_t *cpus = json_array(), *r;

    if (!vm_clock_now(vm, &clock, errp)) {
        json_decref(cpus);
        return NULL;
    }
    for (unsigned i = 0; i < vm->nvcpus; i++) {
        Vcpu *cpu = &vm->vcpus[i];
        bool dead;

        pthread_mutex_lock(&vm->lock);
        dead = cpu->dead;
        pthread_mutex_unlock(&vm->lock);
        /* The dirty-limit counters (dirty-limit.c) as they stand: reading them here neither collects the rings
         * nor starts counting, as writer_stats does. */
        json_array_append_new(cpus, json_pack("{s:i, s:I, s:b, s:I, s:I, s:I, s:I, s:I, s:I}", "cpu-index", (int)i,
                                              "exits", (json_int_t)atomic_load(&cpu->exits), "stopped-for-good",
                                              dead, "throttle-sleeps", (json_int_t)atomic_load(&cpu->throttle_sleeps),
                                              "dirty-pages", (json_int_t)atomic_load(&cpu->dirty_pages),
                                              "dirty-rate", (json_int_t)atomic_load(&cpu->rate_mbps),
                                              "dirty-limit", (json_int_t)atomic_load(&cpu->limit_mbps),
                                              "dirty-limit-throttle-us", (json_int_t)atomic_load(&cpu->limit_sleep_us),
                                              "dirty-ring-full-us", (json_int_t)atomic_load(&cpu->ring_full_us)));
    }
    r = json_pack("{s:I, s:I, s:I, s:o, s:I, s:I, s:s, s:b, s:b, s:i}", "ram-size", (json_int_t)vm->cfg.ram_size,
                  "lowmem", (json_int_t)vm->lowmem, "highmem", (json_int_t)vm->highmem, "cpus", cpus, "kvm-clock",
                  (json_int_t)clock, "serial-bytes", (json_int_t)serial_bytes_out(vm->serial), "dirty-tracker",
                  mc->tracker, "manual-dirty-log-protect", vm->manual_protect, "dirty-ring-available",
                  mc->dirty_ring, "msrs", (int)vm->nmsrs);
    if (r) {
        /* cpu-throttle: what auto-converge asks of the vCPUs now (0: full speed). */
        json_object_set_new(r, "cpu-throttle", json_integer(atomic_load(&vm->throttle_pct)));
    }
    if (r && mc->tracker_note[0]) {
        json_object_set_new(r, "dirty-tracker-note", json_string(mc->tracker_note));
    }
    if (r) {
        uint64_t collected;

        pthread_mutex_lock(&vm->ring_lock);
        collected = vm->ring_collected;
        pthread_mutex_unlock(&vm->ring_lock);
        json_object_set_new(r, "dirty-ring-size", json_integer((json_int_t)vm->ring_size));
        json_object_set_new(r, "dirty-ring-collected", json_integer((json_int_t)collected));
        json_object_set_new(r, "dirty-ring-full-exits", json_integer((json_int_t)atomic_load(&vm->ring_full_exits)));
    }
    return r;
}

/* query-netdev: each NIC, its TAP and its counters (as ferry-workload's, which has the same command). */
static json_t *cmd_query_netdev(json_t *args, void *opaque, FerryError **errp)
{
    Machine *mc = opaque;
    json_t *a = json_array();

    (void)args;
    for (unsigned i = 0; a && i < mc->vm->nnics; i++) {
        json_array_append_new(a, virtio_net_query(mc->vm->nics[i]));
    }
    if (!a) {
        ferry_error_setg(errp, "out of memory");
    }
    return a;
}

/* query-pci: the devices on bus 0, as QEMU's query-pci lists them (slot, ids, command, the I/O window). */
static json_t *cmd_query_pci(json_t *args, void *opaque, FerryError **errp)
{
    Machine *mc = opaque;
    json_t *a = pci_query(mc->vm->pci);

    (void)args;
    if (!a) {
        ferry_error_setg(errp, "out of memory");
    }
    return a;
}

/* Choose the tracker outgoing migrations use (-dirty-tracker); false only if kvm-dirty-log or the ring was
 * required and the probe failed. */
static bool choose_tracker(Machine *mc, FerryMigration *m, FerryError **errp)
{
    Vm *vm = mc->vm;
    FerryError *err = NULL;

    mc->dirty_ring = ioctl(vm->vm_fd, KVM_CHECK_EXTENSION, KVM_CAP_DIRTY_LOG_RING) > 0 ||
                     ioctl(vm->vm_fd, KVM_CHECK_EXTENSION, KVM_CAP_DIRTY_LOG_RING_ACQ_REL) > 0;
    switch (vm->cfg.tracker) {
    case VM_TRACKER_KVM_RING:
        /* vm_new enabled the ring only after its probe passed (it reports what a guest writes, and keeps its
         * entries and its place past a full ring), or failed. */
        mc->tracker = "kvm-dirty-ring";
        ferry_migration_set_dirty_tracker_ops(m, &vm_dirty_ring_ops, vm);
        return true;
    case VM_TRACKER_UFFD_WP:
        mc->tracker = "uffd-wp";
        ferry_migration_set_dirty_tracker(m, FERRY_TRACKER_UFFD_WP);
        return true;
    case VM_TRACKER_NONE:
        mc->tracker = "none";
        ferry_migration_set_dirty_tracker(m, FERRY_TRACKER_NONE);
        return true;
    case VM_TRACKER_KVM:
    case VM_TRACKER_AUTO:
        break;
    }
    if (vm_dirty_log_probe(&err)) {
        mc->tracker = "kvm-dirty-log";
        ferry_migration_set_dirty_tracker_ops(m, &vm_dirty_log_ops, vm);
        return true;
    }
    if (vm->cfg.tracker == VM_TRACKER_KVM) {
        ferry_error_propagate(errp, err);
        ferry_error_prepend(errp, "-dirty-tracker kvm-dirty-log: the start-up probe failed: ");
        return false;
    }
    /* The library's uffd-wp tracker sees the guest's writes through the host mapping of its RAM; where that
     * does not work either, AUTO falls back to stop-and-copy and query-migrate says so. */
    snprintf(mc->tracker_note, sizeof(mc->tracker_note), "KVM dirty log unusable (%s), using uffd-wp",
             ferry_error_msg(err));
    ferry_error_free(err);
    mc->tracker = "uffd-wp";
    ferry_migration_set_dirty_tracker(m, FERRY_TRACKER_AUTO);
    ferry_migration_set_dirty_tracker_note(m, mc->tracker_note);
    return true;
}

static bool open_serial(Vm *vm, FerryError **errp)
{
    int out = -1, in = -1;
    bool own = false;

    switch (vm->cfg.serial_mode) {
    case VM_SERIAL_STDIO:
        out = STDOUT_FILENO;
        in = STDIN_FILENO;
        break;
    case VM_SERIAL_FILE:
        out = open(vm->cfg.serial_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (out < 0) {
            ferry_error_setg_errno(errp, errno, "-serial file:%s", vm->cfg.serial_path);
            return false;
        }
        own = true;
        break;
    case VM_SERIAL_NULL:
        break;
    }
    vm->serial = serial_new(vm, out, own, in);
    if (!vm->serial) {
        if (own) {
            close(out);
        }
        ferry_error_setg(errp, "out of memory");
        return false;
    }
    return true;
}

/* The NICs: each on the bus, its state section and TAP backend registered, its TAP attached unless this is a
 * destination (which gets the fd from the source or attaches by name when it first runs). */
static bool add_nics(Vm *vm, FerryHost *host, FerryMigration *m, const NetSetup *net, FerryError **errp)
{
    for (unsigned i = 0; i < net->n; i++) {
        vm->nics[i] = virtio_net_new(vm, &net->cfg[i], i, errp);
        if (!vm->nics[i]) {
            return false;
        }
        vm->nnics++;
        if (!virtio_net_register(vm->nics[i], m, errp) ||
            !virtio_net_init_backend(vm->nics[i], ferry_host_incoming(host), errp)) {
            return false;
        }
    }
    return true;
}

static bool machine_setup(void *opaque, FerryHost *host, FerryError **errp)
{
    Machine *mc = opaque;
    FerryMigration *m = ferry_host_migration(host);

    mc->host = host;
    mc->vm = vm_new(&mc->cfg, errp);
    if (!mc->vm) {
        return false;
    }
    mc->vm->host = host;
    if (!open_serial(mc->vm, errp) || !vm_setup_ram(mc->vm, m, errp) || !vm_register_sections(mc->vm, m, errp) ||
        !add_nics(mc->vm, host, m, &mc->args.net, errp) || !choose_tracker(mc, m, errp) ||
        !ferry_host_register_command(host, "query-pattern-check", NULL, cmd_pattern_check, mc, errp) ||
        !ferry_host_register_command(host, "query-vm", NULL, cmd_query_vm, mc, errp) ||
        !ferry_host_register_command(host, "query-netdev", NULL, cmd_query_netdev, mc, errp) ||
        !ferry_host_register_command(host, "query-pci", NULL, cmd_query_pci, mc, errp)) {
        return false;
    }
    /* A destination's guest comes from the migration: RAM, registers and devices are all loaded. */
    if (!ferry_host_incoming(host) && !vm_boot(mc->vm, errp)) {
        return false;
    }
    if (!vm_start_threads(mc->vm, errp) || !serial_start_input(mc->vm->serial, errp)) {
        return false;
    }
    for (unsigned i = 0; i < mc->vm->nnics; i++) {
        if (!virtio_net_start_thread(mc->vm->nics[i], errp)) {
            return false;
        }
    }
    ferry_host_set_ops(host, &vm_ops, mc->vm);
    return true;
}

/* The vCPU threads run on the engine's RAM: they end first. The VM's fds go after the engine, whose migration
 * threads may still harvest the dirty log until ferry_host_free has joined them. */
static void machine_stop_threads(void *opaque)
{
    vm_stop_threads(((Machine *)opaque)->vm);
}

static void machine_free(void *opaque)
{
    vm_free(((Machine *)opaque)->vm);
}

static const HostProgram program = {
    .name = PROG,
    .usage = usage,
    .ram_min_mib = 2,
    .smp_max = VM_MAX_SMP,
    .smp_unit = "vCPUs",
    .with_arg = own_with_arg,
    .flags = own_flags,
    .option = parse_option,
    .finish = finish_options,
    .setup = machine_setup,
    .stop = machine_stop_threads,
    .free = machine_free,
};

int main(int argc, char **argv)
{
    Machine mc = {
        .args = {
            .ram = { .size = UINT64_C(128) << 20 },
            .smp = 1,
            .mb = { .vm_machine = true },
            .net = { .guest_nic = true },
        },
        .cfg = { .serial_mode = VM_SERIAL_STDIO, .tracker = VM_TRACKER_AUTO },
    };

    return host_main(&program, &mc, &mc.args, argc, argv);
}
