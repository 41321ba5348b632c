/*
 * ferry-vm, the program's own internal interface: a minimal KVM virtual machine (vCPUs, guest RAM registered
 * with libferry as one RAM block, an in-kernel irqchip and PIT, a 16550 serial port) whose whole state is saved
 * and loaded through visitors, so that a running guest live-migrates. This header is shared by the program's
 * files only (the C files of hosts/vm and tests/unit/vm); it is not part of libferry, and like every host program ferry-vm
 * uses only the public API (include/ferry/).
 *
 * Files: vm.c (the VM, its memory slots, the vCPU threads and their parking protocol, port I/O dispatch),
 * cpu-state.c (one vCPU's state: get, set, visit), vm-state.c (irqchip, PIT, KVM clock), serial.c (the UART),
 * dirty-log.c (KVM's dirty log, bitmap and ring, as ferry dirty trackers, and their start-up probes), boot.c
 * (loading the boot sector, the real-mode start, the A-B checker), dirty-limit.c (per-vCPU dirty counts and
 * limits over the ring), linux.c (booting a Linux bzImage), main.c
 * (options, QMP commands, main()).
 */
#ifndef FERRY_VM_H
#define FERRY_VM_H

#include <linux/kvm.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "ferry/ferry.h"
#include "netdev.h" /* -netdev/-device and the TAP, shared with ferry-workload (hosts/common) */

#define VM_MAX_SMP 64
/* Guest-physical layout as QEMU's pc machine lays out RAM: below 4 GiB up to VM_LOWMEM_MAX, the rest from 4 GiB
 * (QEMU keeps 3 GiB low once RAM reaches 3.5 GiB; below that all RAM is low). The hole above is where the LAPIC
 * (0xfee00000), the IOAPIC (0xfec00000) and KVM's TSS and identity map live. */
#define VM_LOWMEM_MAX UINT64_C(0xc0000000)
#define VM_LOWMEM_SPLIT UINT64_C(0xe0000000)
#define VM_HIGHMEM_BASE (UINT64_C(1) << 32)
#define VM_TSS_ADDR UINT64_C(0xfffbd000)
#define VM_IDENTITY_MAP_ADDR UINT64_C(0xfffbc000)

/* The boot sector: loaded where a BIOS loads it, entered in real mode at 0000:7c00. */
#define VM_BOOT_ADDR 0x7c00u
#define VM_BOOT_SIZE 512u
/* The A-B guest's parameter block (hosts/vm/guest/ab-boot.s): "FAB1", first page address, page count, passes
 * per progress character, vCPUs sharing the range (0 = 1), each a little-endian u32. */
#define VM_AB_PARAMS_ADDR (VM_BOOT_ADDR + 0x1e0u)
#define VM_AB_PARAMS_SIZE 20u
#define VM_AB_MAGIC "FAB1"

#define VM_COM1_BASE 0x3f8u
#define VM_COM1_IRQ 4u

/* The KVM state pieces' fixed sizes. */
#define VM_MAX_MSRS 256u
#define VM_MAX_XSAVE (64u << 10)
#define VM_MAX_CPUID 256u

/* Little-endian fields of guest memory (boot sectors, the Linux zero page, MP tables): byte by byte, so that
 * neither alignment nor the host's byte order matters. */
static inline uint32_t vm_rd16(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8;
}

static inline uint32_t vm_rd32(const uint8_t *p)
{
    return vm_rd16(p) | vm_rd16(p + 2) << 16;
}

static inline void vm_wr16(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static inline void vm_wr32(uint8_t *p, uint32_t v)
{
    vm_wr16(p, v);
    vm_wr16(p + 2, v >> 16);
}

static inline void vm_wr64(uint8_t *p, uint64_t v)
{
    vm_wr32(p, (uint32_t)v);
    vm_wr32(p + 4, (uint32_t)(v >> 32));
}

typedef enum VmSerialMode {
    VM_SERIAL_STDIO, /* output to stdout, input from stdin */
    VM_SERIAL_FILE,  /* output to a file (truncated at start-up), no input */
    VM_SERIAL_NULL,  /* output dropped, no input */
} VmSerialMode;

/* Which tracker outgoing migrations use for guest RAM (-dirty-tracker). */
typedef enum VmTrackerChoice {
    VM_TRACKER_AUTO,    /* KVM's dirty log if the start-up probe saw a guest write in it, else uffd-wp, else none */
    VM_TRACKER_KVM,     /* KVM's dirty log; start-up fails if the probe does not pass */
    VM_TRACKER_KVM_RING, /* KVM's dirty ring (cfg.dirty_ring_size entries per vCPU); fails as VM_TRACKER_KVM */
    VM_TRACKER_UFFD_WP, /* the library's userfaultfd write-protect tracker, which sees KVM's writes too */
    VM_TRACKER_NONE,    /* stop-and-copy */
} VmTrackerChoice;

typedef struct VmConfig {
    uint64_t ram_size;
    unsigned smp;
    bool memfd, memfd_share, mem_prealloc;
    unsigned prealloc_threads; /* with mem_prealloc: threads (QEMU's prealloc-threads) */
    const char *mem_path;       /* -object memory-backend-file's file (guest RAM is its content), NULL for none */
    bool file_share;            /* ... mapped MAP_SHARED (share=on) */
    const char *mem_dir;        /* memory-backend-file's or -mem-path's directory: RAM is a new temporary file in it */
    bool hugetlb;               /* memory-backend-memfd,hugetlb=on: a hugetlb memfd of hugetlbsize-byte pages */
    uint64_t hugetlbsize;
    const char *drive;          /* boot sector image (-drive file=), NULL for the built-in A-B guest */
    const char *kernel;         /* a Linux bzImage (-kernel) booted instead of a sector, NULL for none */
    const char *initrd;         /* its initramfs (-initrd), NULL for none */
    const char *append;         /* its command line (-append), NULL for an empty one */
    uint32_t ab_every;          /* passes per progress character given to the A-B guest, 0 = ferry-vm's choice */
    VmSerialMode serial_mode;
    const char *serial_path;    /* VM_SERIAL_FILE */
    VmTrackerChoice tracker;
    uint32_t dirty_ring_size;   /* entries of each vCPU's dirty ring (a power of two), 0 = no ring */
} VmConfig;

/* QEMU's bounds for -accel kvm,dirty-ring-size (qemu-options.hx: a power of two, 1024 or more) and KVM's
 * (KVM_DIRTY_RING_MAX_ENTRIES, include/linux/kvm_dirty_ring.h); the kernel may offer less (vm_new checks). */
#define VM_DIRTY_RING_MIN 1024u
#define VM_DIRTY_RING_MAX 65536u
#define VM_DIRTY_RING_DEFAULT 4096u

typedef struct Vm Vm;
typedef struct Serial Serial;
typedef struct PciBus PciBus;
typedef struct VirtioNet VirtioNet;

/* One vCPU and its thread. */
typedef struct Vcpu {
    Vm *vm;
    unsigned id;
    int fd;
    struct kvm_run *run;
    size_t run_size;
    pthread_t thread;
    bool thread_started;
    bool dead;            /* the guest shut down or KVM failed: the vCPU never runs again (vm->lock) */
    _Atomic uint64_t exits;
    struct kvm_dirty_gfn *ring; /* its dirty ring (vm->ring_size entries) mapped from the vCPU fd, or NULL */
    uint32_t ring_fetch;  /* free-running index of the next entry to collect (vm->ring_lock) */
    atomic_bool throttle_pending; /* auto-converge: kicked for a throttle sleep, not (only) for a stop */
    _Atomic uint64_t throttle_sleeps; /* throttle sleeps taken */
    /* dirty-limit (vm_ops.writer_stats, dirty_limit; dirty-limit.c). Counters are cumulative since start-up. */
    _Atomic uint64_t dirty_pages;   /* entries collected from its ring, by whoever collected them */
    _Atomic uint64_t ring_full_us;  /* time spent collecting after its KVM_EXIT_DIRTY_RING_FULL exits */
    _Atomic uint64_t limit_mbps;    /* the limit it is held to, 0 = none */
    _Atomic uint64_t rate_mbps;     /* its dirty rate over the last period (the limit thread measures it) */
    _Atomic uint64_t limit_sleep_ns; /* the sleep the limit thread asked for with its last kick */
    _Atomic uint64_t limit_sleep_us; /* time slept for the limit (throttle_us) */
    atomic_bool limit_pending;      /* kicked for a limit sleep */
} Vcpu;

/* A KVM memory slot: guest-physical [gpa, gpa + size) is the RAM block's bytes from block_offset. */
typedef struct VmSlot {
    uint32_t slot;
    uint64_t gpa, size, block_offset;
} VmSlot;

struct Vm {
    VmConfig cfg;
    int kvm_fd, vm_fd;
    FerryRamBlock *ram;   /* "pc.ram", as QEMU names the pc machine's RAM */
    uint8_t *ram_host;
    uint64_t lowmem, highmem;
    VmSlot slots[2];
    unsigned nslots;
    uint32_t slot_flags;  /* KVM_MEM_LOG_DIRTY_PAGES while the dirty log is armed */
    Vcpu vcpus[VM_MAX_SMP];
    unsigned nvcpus;
    struct kvm_cpuid2 *cpuid;    /* what KVM supports, given to every vCPU (with its APIC id) */
    uint32_t msr_index[VM_MAX_MSRS]; /* MSRs KVM lists as saveable and KVM_GET_MSRS accepts */
    unsigned nmsrs;
    uint32_t xsave_size;  /* KVM_CAP_XSAVE2's size, or sizeof(struct kvm_xsave) */
    bool xcrs;            /* KVM_CAP_XCRS */
    bool manual_protect;  /* KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 enabled: harvest = GET + CLEAR */
    /* The dirty ring (cfg.dirty_ring_size != 0: KVM_CAP_DIRTY_LOG_RING enabled, no bitmap). Collections come from
     * the migration thread's harvest and from a vCPU whose ring filled; ring_lock serializes them and guards
     * ring_pending (pages of the RAM block collected since the last harvest; allocated while the tracker is
     * armed, NULL otherwise: entries collected then are dropped) and every vCPU's ring_fetch. */
    uint32_t ring_size;   /* entries per vCPU ring */
    pthread_mutex_t ring_lock;
    unsigned long *ring_pending;
    uint64_t ring_pages;  /* bits of ring_pending: the RAM block's pages */
    uint64_t ring_collected; /* entries collected since start-up (ring_lock) */
    _Atomic uint64_t ring_full_exits; /* KVM_EXIT_DIRTY_RING_FULL exits of all vCPUs */
    Serial *serial;
    PciBus *pci;          /* bus 0 (always there, with its host bridge); NULL in unit tests that need none */
    VirtioNet *nics[NET_MAX_DEVICES]; /* -device virtio-net-pci, each on the bus */
    unsigned nnics;
    FerryHost *host;      /* for events; NULL in unit tests */

    /* Parking, as ferry-workload's workers: vCPUs run while host_run and no hold; go mirrors that. */
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool host_run;
    unsigned holds;
    bool quit;
    unsigned parked;
    unsigned threads_started;
    atomic_bool go;

    /* auto-converge (vm_ops.throttle): the percentage asked for, and the thread that kicks every vCPU once per
     * time slice while it is not 0 (started the first time it is not, joined by vm_stop_threads; vm->lock). */
    atomic_int throttle_pct;
    pthread_cond_t throttle_cond; /* CLOCK_MONOTONIC; signalled when throttle_pct changes or at quit */
    pthread_t throttle_thread;
    bool throttle_started;

    /* dirty-limit (dirty-limit.c): the limit thread, started the first time a limit is set or counts are asked
     * for with a ring. limit_lock guards what follows; limit_cond (CLOCK_MONOTONIC) wakes the thread. */
    pthread_mutex_t limit_lock;
    pthread_cond_t limit_cond;
    pthread_t limit_thread;
    bool limit_started, limit_quit;
    int limit_period_ms;        /* x-vcpu-dirty-limit-period of the last dirty_limit call (1000 until then) */
    int64_t stats_until_ns;     /* counting goes on until then (CLOCK_MONOTONIC) after a writer_stats call */
    bool counting;              /* the slots log for the limit thread's sake (ring_lock) */
};

/* ---- vm.c ---- */
/* Create the VM: KVM fd, VM fd, irqchip, PIT, the vCPUs (with CPUID set, MSR list probed) but no RAM yet. */
Vm *vm_new(const VmConfig *cfg, FerryError **errp);
/* Register the RAM block with @m (NULL: a private anonymous mapping, for unit tests) and map it into KVM. */
bool vm_setup_ram(Vm *vm, FerryMigration *m, FerryError **errp);
/* Register every state section with @m. */
bool vm_register_sections(Vm *vm, FerryMigration *m, FerryError **errp);
/* Start the vCPU threads, parked until vm_ops' start. */
bool vm_start_threads(Vm *vm, FerryError **errp);
/* Stop the threads for good and join them (the vCPUs', then the NICs' receive threads). Idempotent. */
void vm_stop_threads(Vm *vm);
void vm_free(Vm *vm); /* NULL is a no-op; the RAM block is the engine's */
extern const FerryHostOps vm_ops;
/* Park the vCPUs independently of the run state (nesting): for the checker and QMP queries. */
void vm_hold(Vm *vm);
void vm_release(Vm *vm);
/* Host pointer of guest-physical @gpa if [@gpa, @gpa + @len) is RAM, else NULL. */
void *vm_gpa_to_host(Vm *vm, uint64_t gpa, uint64_t len);
/* A device wrote guest RAM [@gpa, @gpa + @len) from the host side, which KVM's dirty log does not see: tell the
 * engine (ferry_ram_mark_dirty), so that an outgoing migration sends those pages again. */
void vm_mark_dirty(Vm *vm, uint64_t gpa, uint64_t len);
/* (Re)set every slot with @flags (KVM_MEM_LOG_DIRTY_PAGES or 0). */
bool vm_set_slot_flags(Vm *vm, uint32_t flags, FerryError **errp);
/* Describe an ioctl failure: "KVM_X: strerror". */
void vm_error_ioctl(FerryError **errp, const char *what);

/* ---- cpu-state.c ---- */
typedef struct VcpuEvents {
    struct kvm_vcpu_events ev;
} VcpuEvents;

/* Everything KVM keeps for one vCPU that a migration must carry. */
typedef struct VcpuState {
    struct kvm_regs regs;
    struct kvm_sregs sregs;
    uint32_t xsave_size;
    uint8_t *xsave;                  /* xsave_size bytes (malloc'd) */
    struct kvm_xcrs xcrs;
    uint32_t nmsrs;
    struct kvm_msr_entry msrs[VM_MAX_MSRS];
    struct kvm_lapic_state lapic;
    struct kvm_vcpu_events events;
    struct kvm_debugregs debugregs;
    struct kvm_mp_state mp_state;
    uint32_t tsc_khz;
} VcpuState;

VcpuState *vcpu_state_new(const Vm *vm);
void vcpu_state_free(VcpuState *s);
bool vcpu_state_get(Vcpu *cpu, VcpuState *s, FerryError **errp);
bool vcpu_state_put(Vcpu *cpu, const VcpuState *s, FerryError **errp);
/* Visit the state (save or load: the visitor's kind says which); @vm bounds what a load may carry. */
bool vcpu_state_visit(FerryVisitor *v, const Vm *vm, VcpuState *s, FerryError **errp);
/* The section function of "cpu" instance N (opaque: the Vcpu). */
bool vcpu_section(FerryVisitor *v, void *opaque, uint32_t version, FerryError **errp);

/* ---- vm-state.c ---- */
typedef struct VmState {
    struct kvm_irqchip pic[2];  /* KVM_IRQCHIP_PIC_MASTER, _SLAVE */
    struct kvm_irqchip ioapic;  /* KVM_IRQCHIP_IOAPIC */
    struct kvm_pit_state2 pit;
    struct kvm_clock_data clock;
} VmState;

bool vm_state_get(Vm *vm, VmState *s, FerryError **errp);
bool vm_state_put(Vm *vm, const VmState *s, FerryError **errp);
bool vm_state_visit_irqchip(FerryVisitor *v, VmState *s, FerryError **errp);
bool vm_state_visit_pit(FerryVisitor *v, VmState *s, FerryError **errp);
bool vm_state_visit_clock(FerryVisitor *v, VmState *s, FerryError **errp);
/* Section functions "irqchip", "pit", "kvmclock" and "machine" (opaque: the Vm). */
bool vm_irqchip_section(FerryVisitor *v, void *opaque, uint32_t version, FerryError **errp);
bool vm_pit_section(FerryVisitor *v, void *opaque, uint32_t version, FerryError **errp);
bool vm_clock_section(FerryVisitor *v, void *opaque, uint32_t version, FerryError **errp);
bool vm_machine_section(FerryVisitor *v, void *opaque, uint32_t version, FerryError **errp);
/* The guest's KVM clock now (ns). */
bool vm_clock_now(Vm *vm, uint64_t *ns, FerryError **errp);

/* ---- serial.c ---- */
#define SERIAL_FIFO 16u
/* The 16550's registers and receive FIFO: its whole migrated state. */
typedef struct SerialRegs {
    uint8_t ier, iir_thri, lcr, mcr, lsr, msr, scr, dll, dlm, fcr;
    uint8_t rx[SERIAL_FIFO];
    uint32_t rx_head, rx_count;
} SerialRegs;

/* @out_fd: where output goes (-1: dropped; not closed by serial_free unless @own_fd); @in_fd: input (-1: none). */
Serial *serial_new(Vm *vm, int out_fd, bool own_fd, int in_fd);
void serial_free(Serial *s);
/* Port I/O at offset 0..7 from the base; @is_write says which; @val in/out. */
void serial_io(Serial *s, unsigned offset, bool is_write, uint8_t *val);
bool serial_start_input(Serial *s, FerryError **errp);
bool serial_visit(FerryVisitor *v, SerialRegs *r, FerryError **errp);
bool serial_section(FerryVisitor *v, void *opaque, uint32_t version, FerryError **errp);
uint64_t serial_bytes_out(Serial *s);
void serial_get_regs(Serial *s, SerialRegs *r);
void serial_set_regs(Serial *s, const SerialRegs *r);

/* ---- dirty-log.c ---- */
/* Whether KVM's dirty log reports the pages a guest wrote, on a throw-away VM; on false *errp says what failed. */
bool vm_dirty_log_probe(FerryError **errp);
/* The same with the dirty ring of @entries entries instead of the bitmap, and whether the ring keeps every entry
 * and its place past a full ring (vm_new runs it before it takes a ring). */
bool vm_dirty_ring_probe(uint32_t entries, FerryError **errp);
/* Only its first part, the bitmap probe's two pages on a ring of @entries (for the tests). */
bool vm_dirty_ring_pages_probe(uint32_t entries, FerryError **errp);
/* The probes' rule for one harvest (@map: @words words, page i = bit i): every page of @want (pages of the first
 * word) and nothing else but page 0, the probe guest's code page. */
bool vm_dirty_probe_report_ok(const unsigned long *map, size_t words, unsigned long want);
/* The ferry dirty trackers over @vm's slots (opaque: the Vm): the bitmap, and the ring (@vm made with a
 * dirty_ring_size). */
extern const FerryDirtyTrackerOps vm_dirty_log_ops;
extern const FerryDirtyTrackerOps vm_dirty_ring_ops;
/* Collect every vCPU's ring (into ring_pending while armed, else dropped) and have KVM re-protect the collected
 * pages (KVM_RESET_DIRTY_RINGS); *@total (may be NULL) gets the number of entries ever collected. What a vCPU
 * thread does when its ring is full. */
bool vm_dirty_ring_collect(Vm *vm, uint64_t *total, FerryError **errp);
/* KVM_ENABLE_CAP(KVM_CAP_DIRTY_LOG_RING) on @vm_fd with @entries per vCPU (before any vCPU exists), and the mapping
 * of one vCPU's ring (NULL on failure). */
bool vm_enable_dirty_ring(int vm_fd, uint32_t entries, FerryError **errp);
void *vm_map_dirty_ring(int cpu_fd, uint32_t entries, FerryError **errp);

/* ---- dirty-limit.c ---- */
/* Per-vCPU dirty counts and limits over the dirty ring (vm_ops.writer_stats and dirty_limit; see the file). */
int vm_writer_stats(void *opaque, FerryWriterStats *stats, int max, const char **why);
void vm_dirty_limit(void *opaque, int index, uint64_t mbps, int period_ms);
/* Init and tear-down of the limit thread's state (vm_new, vm_stop_threads, vm_free). */
void vm_limit_init(Vm *vm);
void vm_limit_stop(Vm *vm);
void vm_limit_destroy(Vm *vm);
/* In a vCPU thread kicked for it: sleep what the limit thread asked, in naps that end early when @vm stops. */
void vm_limit_sleep(Vcpu *cpu);
/* Whether the slots must keep logging for the limit thread (caller holds ring_lock). */
bool vm_limit_counting_locked(Vm *vm);
/* The clock the vCPU threads and the limit thread share (CLOCK_MONOTONIC, ns). */
int64_t vm_mono_ns(void);

/* ---- pci.c ---- */
/* Bus 0: slots (device numbers, one function each), the window its I/O BARs live in, and the IOAPIC pins INTx
 * uses (slot N's INTA# on pin VM_PCI_GSI_BASE + N - 1, past the 16 ISA pins; KVM's IOAPIC has 24). */
#define VM_PCI_SLOTS 32u
#define VM_PCI_IO_MIN 0x1000u
#define VM_PCI_IO_BASE 0xc000u
#define VM_PCI_GSI_BASE 16u
#define VM_PCI_MAX_INTX 8u

typedef struct PciDev PciDev;
/* A BAR0 access at @offset of @size bytes (1, 2 or 4; little-endian in @data). */
typedef void (*PciIoFn)(void *opaque, unsigned offset, unsigned size, bool is_write, uint8_t *data);
typedef struct PciDevInfo {
    const char *name;
    uint16_t vendor, device, subsystem_vendor, subsystem;
    uint8_t revision;
    uint32_t class_code;  /* base class, subclass, programming interface */
    uint32_t io_size;     /* BAR0: an I/O BAR of this many bytes (a power of two, 4..256) */
} PciDevInfo;

PciBus *pci_bus_new(Vm *vm, FerryError **errp);
void pci_bus_free(PciBus *bus);
/* Add a device in the next free slot, BAR0 assigned and I/O decoding on; the bus owns it. */
PciDev *pci_add_device(PciBus *bus, const PciDevInfo *info, PciIoFn io, void *opaque, FerryError **errp);
unsigned pci_dev_slot(const PciDev *d);
/* Whether a device sits in @slot and has an INTx pin (the MP table lists those). */
bool pci_slot_has_intx(PciBus *bus, unsigned slot);
/* The IOAPIC pin (GSI) of @slot's INTA#. */
unsigned pci_slot_gsi(unsigned slot);
/* Set the device's INTx pin (level-triggered: it stays asserted until the device lowers it). */
void pci_set_irq(PciDev *d, bool pending);
/* Port I/O: the configuration ports and the devices' BARs. False if @port is none of them. */
bool pci_io(PciBus *bus, uint16_t port, unsigned size, bool is_write, uint8_t *data);
/* The "pci" section (opaque: the bus) and query-pci's list. */
bool pci_section(FerryVisitor *v, void *opaque, uint32_t version, FerryError **errp);
json_t *pci_query(PciBus *bus);

/* ---- virtio-net.c ---- */
/* A legacy virtio-net PCI device (virtio 0.9.5, QEMU's virtio-net-pci in its transitional form) on the TAP of
 * @cfg, in the next free slot of vm->pci; its section instance and the backend id are @index and the netdev id. */
VirtioNet *virtio_net_new(Vm *vm, const NetConfig *cfg, unsigned index, FerryError **errp);
/* Register the "virtio-net" section and the TAP backend with @m. */
bool virtio_net_register(VirtioNet *n, FerryMigration *m, FerryError **errp);
/* The section function (opaque: the VirtioNet). */
bool virtio_net_section(FerryVisitor *v, void *opaque, uint32_t version, FerryError **errp);
/* net_tap_backend_init (hosts/common/netdev.h) on its TAP: a source attaches it now, a destination waits for it. */
bool virtio_net_init_backend(VirtioNet *n, bool incoming, FerryError **errp);
bool virtio_net_start_thread(VirtioNet *n, FerryError **errp);
/* Give a stopped device without a backend @fd (non-blocking, one Ethernet frame per read and write: a TAP, or a
 * SOCK_SEQPACKET socket in the unit tests, which have no TAP) unchecked; it takes the fd. */
bool virtio_net_attach_fd(VirtioNet *n, int fd, FerryError **errp);
/* Park the receive thread (it then writes no guest memory and reads no frame) / let it run. */
void virtio_net_stop(VirtioNet *n);
void virtio_net_start(VirtioNet *n);
/* Stop and join the receive thread for good (idempotent): before the engine, which owns guest RAM, goes. */
void virtio_net_stop_thread(VirtioNet *n);
void virtio_net_free(VirtioNet *n);    /* NULL is a no-op; joins the thread, closes the TAP */
json_t *virtio_net_query(VirtioNet *n); /* query-netdev's entry */

/* ---- linux.c ---- */
/* Load cfg.kernel (and cfg.initrd, cfg.append) with the 32-bit boot protocol and put vCPU 0 at its entry. */
bool vm_boot_linux(Vm *vm, FerryError **errp);

/* ---- boot.c ---- */
/* Fresh boot: load the boot sector at 0x7c00, fill the A-B parameter block if it has one (the range and, unless
 * the image says, one slice per vCPU), and put vCPU 0 at 0000:7c00 in real mode, the others in their reset state
 * (waiting for INIT/SIPI). */
bool vm_boot(Vm *vm, FerryError **errp);
/* Where a boot starts @cpu: its special and general registers (KVM_SET_SREGS, KVM_SET_REGS). */
bool vm_vcpu_set_entry(Vcpu *cpu, const struct kvm_sregs *sregs, const struct kvm_regs *regs, FerryError **errp);

/* One vCPU's slice of the A-B range: QEMU's check applies to each on its own. */
typedef struct VmCheckSlice {
    uint64_t start, pages, mismatches;
    uint8_t first_byte;
    bool edge;
    uint64_t edge_page;   /* index in the slice */
} VmCheckSlice;

typedef struct VmCheck {
    uint64_t start, pages, mismatches;   /* the whole range; mismatches summed over the slices */
    uint8_t first_byte;                  /* of the range's first page */
    bool edge;                           /* some slice has an edge; edge_page is the first one's, in the range */
    uint64_t edge_page;
    unsigned nslices;                    /* the vCPUs the guest was told share the range (1..VM_MAX_SMP) */
    VmCheckSlice slices[VM_MAX_SMP];
    char detail[512];
} VmCheck;
/* Slice @i of @n of the A-B range [@start, @start + @npages pages), cut as the guest cuts it: equal page counts,
 * the remainder to the last. */
void vm_ab_slice(uint64_t start, uint64_t npages, unsigned n, unsigned i, uint64_t *slice_start,
                 uint64_t *slice_pages);
/* QEMU's A-B check of the guest's range (read from its parameter block), slice by slice, with the vCPUs held. */
bool vm_ab_check(Vm *vm, VmCheck *res, FerryError **errp);

/* The built-in A-B guest (guest/ab-boot.s, built into guest-blob.c). */
extern const unsigned char vm_ab_guest[];
extern const unsigned int vm_ab_guest_len;

#endif
