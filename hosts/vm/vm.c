/*
 * ferry-vm's machine: the KVM VM (in-kernel irqchip and PIT, KVM's TSS and identity map below 4 GiB), guest RAM as
 * one libferry RAM block mapped into one or two KVM memory slots (QEMU's pc layout), the vCPUs with the CPUID KVM
 * supports and the MSR list a migration carries, and one thread per vCPU that runs KVM_RUN and dispatches port
 * I/O (the serial port, the PCI bus and its devices' BARs; everything else reads as 0xff and ignores writes, as an
 * empty ISA bus does).
 *
 * Stopping a vCPU that sits in KVM_RUN takes a kick: the stopper clears "go", sets kvm_run.immediate_exit and
 * sends the thread SIGUSR1, whose handler does nothing and is installed without SA_RESTART. Whichever comes
 * first, KVM_RUN returns EINTR: a signal that lands before the thread enters KVM_RUN is caught by immediate_exit,
 * which the thread only clears under the lock while it is parked. This is kvmtool's and QEMU's technique; the
 * parking protocol (host_run, holds, go) is ferry-workload's. State sections live in cpu-state.c and vm-state.c,
 * the guest image in boot.c.
 *
 * auto-converge throttles the vCPUs as QEMU does: a throttle thread kicks every running vCPU once per time slice
 * (10 ms of run time, so a period of 10 ms * 100 / (100 - p)) with the same immediate_exit and signal, after
 * marking it "throttle pending"; the vCPU, back from KVM_RUN with EINTR and the mark set, sleeps 10 ms * p /
 * (100 - p) in short naps that end early when go is cleared, so that a stop is not held up. immediate_exit is
 * cleared there only while go is still set: if a stopper cleared go meanwhile, its immediate_exit must stay until
 * the vCPU parks, as the stop protocol above needs.
 *
 * With a dirty ring (-accel kvm,dirty-ring-size=N) KVM_CAP_DIRTY_LOG_RING is enabled before any vCPU exists, as KVM
 * requires, and each vCPU's ring is mapped from its fd. A vCPU whose ring fills exits with
 * KVM_EXIT_DIRTY_RING_FULL and cannot re-enter until the ring is collected and reset: its thread does that itself
 * (dirty-log.c's vm_dirty_ring_collect, under the ring's own lock, never vm->lock, so it cannot deadlock with a
 * stopper waiting for it to park) and goes on, as QEMU's vCPU threads reap the rings in that case.
 *
 * dirty-limit (dirty-limit.c) counts each vCPU's ring entries and kicks a vCPU over its quota the same way as the
 * throttle thread, with its own mark (limit_pending); a vCPU kicked by both sleeps for both.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "vm.h"

#define KICK_SIGNAL SIGUSR1
/* QEMU's vCPU throttle time slice (run time between two throttle sleeps), and the longest nap of a sleep. */
#define THROTTLE_SLICE_NS INT64_C(10000000)
#define THROTTLE_NAP_NS INT64_C(1000000)

void vm_error_ioctl(FerryError **errp, const char *what)
{
    ferry_error_setg_errno(errp, errno, "%s", what);
}

static void kick_handler(int signo)
{
    (void)signo;
}

/* Fill the CPUID table KVM supports, less what this VMM does not offer. */
static bool setup_cpuid(Vm *vm, FerryError **errp)
{
    size_t sz = sizeof(struct kvm_cpuid2) + VM_MAX_CPUID * sizeof(struct kvm_cpuid_entry2);

    vm->cpuid = calloc(1, sz);
    if (!vm->cpuid) {
        ferry_error_setg(errp, "out of memory");
        return false;
    }
    vm->cpuid->nent = VM_MAX_CPUID;
    if (ioctl(vm->kvm_fd, KVM_GET_SUPPORTED_CPUID, vm->cpuid) < 0) {
        vm_error_ioctl(errp, "KVM_GET_SUPPORTED_CPUID");
        return false;
    }
    for (uint32_t i = 0; i < vm->cpuid->nent; i++) {
        struct kvm_cpuid_entry2 *e = &vm->cpuid->entries[i];

        if (e->function == 1) {
            /* Keep KVM's answer but drop monitor/mwait (KVM does not emulate MWAIT for a guest by default), and
             * set the hypervisor bit as QEMU does: an OS looks at KVM's leaves (0x40000000, which KVM lists here)
             * only with it, and without them a Linux guest has no KVM clock. */
            e->ecx &= ~(1u << 3);
            e->ecx |= 1u << 31;
        }
    }
    return true;
}

/* The CPUID of vCPU @id: the VM's table with the APIC id in leaf 1 (EBX[31:24]) and leaf 0xb (EDX). */
static bool set_vcpu_cpuid(Vm *vm, Vcpu *cpu, FerryError **errp)
{
    size_t sz = sizeof(struct kvm_cpuid2) + vm->cpuid->nent * sizeof(struct kvm_cpuid_entry2);
    struct kvm_cpuid2 *c = malloc(sz);
    bool ok;

    if (!c) {
        ferry_error_setg(errp, "out of memory");
        return false;
    }
    memcpy(c, vm->cpuid, sz);
    for (uint32_t i = 0; i < c->nent; i++) {
        struct kvm_cpuid_entry2 *e = &c->entries[i];

        if (e->function == 1) {
            e->ebx = (e->ebx & 0x00ffffffu) | (cpu->id << 24);
        } else if (e->function == 0xb || e->function == 0x1f) {
            e->edx = cpu->id;
        }
    }
    ok = ioctl(cpu->fd, KVM_SET_CPUID2, c) == 0;
    if (!ok) {
        vm_error_ioctl(errp, "KVM_SET_CPUID2");
    }
    free(c);
    return ok;
}

/* Hyper-V's synthetic MSRs (the TLFS numbers them from 0x40000000; the crash and re-enlightenment MSRs reach
 * 0x400001xx). This VM offers no Hyper-V CPUID leaves, so its guest cannot use them; older KVMs (6.1) still let the
 * host read them, and some are counters derived from the clock (HV_X64_MSR_TIME_REF_COUNT) that no KVM_SET_MSRS
 * restores, which would make a saved and a loaded vCPU differ for nothing. */
#define HV_MSR_FIRST 0x40000000u
#define HV_MSR_LAST 0x400001ffu

/* The MSRs a migration carries: KVM's list of saveable and emulated MSRs, less Hyper-V's and those this vCPU's
 * KVM_GET_MSRS refuses (the list names what the host supports; a guest CPUID without the feature makes the MSR
 * unreadable). */
static bool probe_msrs(Vm *vm, Vcpu *cpu, FerryError **errp)
{
    struct {
        struct kvm_msr_list l;
        uint32_t idx[1024];
    } list = { .l.nmsrs = 1024 };
    struct {
        struct kvm_msrs m;
        struct kvm_msr_entry e;
    } one;

    if (ioctl(vm->kvm_fd, KVM_GET_MSR_INDEX_LIST, &list) < 0) {
        vm_error_ioctl(errp, "KVM_GET_MSR_INDEX_LIST");
        return false;
    }
    vm->nmsrs = 0;
    for (uint32_t i = 0; i < list.l.nmsrs && i < 1024; i++) {
        if (list.l.indices[i] >= HV_MSR_FIRST && list.l.indices[i] <= HV_MSR_LAST) {
            continue;
        }
        memset(&one, 0, sizeof(one));
        one.m.nmsrs = 1;
        one.e.index = list.l.indices[i];
        if (ioctl(cpu->fd, KVM_GET_MSRS, &one) != 1) {
            continue;
        }
        if (vm->nmsrs == VM_MAX_MSRS) {
            ferry_error_setg(errp, "KVM lists more than %u readable MSRs", VM_MAX_MSRS);
            return false;
        }
        vm->msr_index[vm->nmsrs++] = list.l.indices[i];
    }
    return true;
}

static bool create_vcpu(Vm *vm, unsigned id, FerryError **errp)
{
    Vcpu *cpu = &vm->vcpus[id];
    int mmap_size;

    cpu->vm = vm;
    cpu->id = id;
    cpu->fd = ioctl(vm->vm_fd, KVM_CREATE_VCPU, (unsigned long)id);
    if (cpu->fd < 0) {
        vm_error_ioctl(errp, "KVM_CREATE_VCPU");
        return false;
    }
    vm->nvcpus++;
    mmap_size = ioctl(vm->kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0);
    if (mmap_size < (int)sizeof(struct kvm_run)) {
        vm_error_ioctl(errp, "KVM_GET_VCPU_MMAP_SIZE");
        return false;
    }
    cpu->run_size = (size_t)mmap_size;
    cpu->run = mmap(NULL, cpu->run_size, PROT_READ | PROT_WRITE, MAP_SHARED, cpu->fd, 0);
    if (cpu->run == MAP_FAILED) {
        cpu->run = NULL;
        ferry_error_setg_errno(errp, errno, "mapping vCPU %u's kvm_run", id);
        return false;
    }
    if (vm->ring_size && !(cpu->ring = vm_map_dirty_ring(cpu->fd, vm->ring_size, errp))) {
        return false;
    }
    return set_vcpu_cpuid(vm, cpu, errp);
}

Vm *vm_new(const VmConfig *cfg, FerryError **errp)
{
    Vm *vm = calloc(1, sizeof(*vm));
    struct kvm_pit_config pit = { .flags = KVM_PIT_SPEAKER_DUMMY };
    int r;

    if (!vm) {
        ferry_error_setg(errp, "out of memory");
        return NULL;
    }
    vm->cfg = *cfg;
    vm->vm_fd = -1;
    pthread_mutex_init(&vm->lock, NULL);
    pthread_cond_init(&vm->cond, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&vm->throttle_cond, &ca);
    pthread_condattr_destroy(&ca);
    atomic_init(&vm->throttle_pct, 0);
    pthread_mutex_init(&vm->ring_lock, NULL);
    vm_limit_init(vm);
    atomic_init(&vm->go, false);
    vm->kvm_fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (vm->kvm_fd < 0) {
        ferry_error_setg_errno(errp, errno, "opening /dev/kvm");
        goto fail;
    }
    r = ioctl(vm->kvm_fd, KVM_GET_API_VERSION, 0);
    if (r != KVM_API_VERSION) {
        ferry_error_setg(errp, "/dev/kvm speaks API version %d, this program %d", r, KVM_API_VERSION);
        goto fail;
    }
    vm->vm_fd = ioctl(vm->kvm_fd, KVM_CREATE_VM, 0);
    if (vm->vm_fd < 0) {
        vm_error_ioctl(errp, "KVM_CREATE_VM");
        goto fail;
    }
    /* Intel's VMX needs a TSS and an identity map for real mode; both sit in the hole below 4 GiB. */
    if (ioctl(vm->vm_fd, KVM_SET_TSS_ADDR, (unsigned long)VM_TSS_ADDR) < 0) {
        vm_error_ioctl(errp, "KVM_SET_TSS_ADDR");
        goto fail;
    }
    uint64_t idmap = VM_IDENTITY_MAP_ADDR;
    if (ioctl(vm->kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_SET_IDENTITY_MAP_ADDR) > 0 &&
        ioctl(vm->vm_fd, KVM_SET_IDENTITY_MAP_ADDR, &idmap) < 0) {
        vm_error_ioctl(errp, "KVM_SET_IDENTITY_MAP_ADDR");
        goto fail;
    }
    /* The irqchip and PIT are part of the machine, not options: without them there is no LAPIC to migrate and
     * no timer. KVM on x86 has offered both for as long as KVM_CAP_IRQCHIP exists. */
    if (ioctl(vm->kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_IRQCHIP) <= 0 ||
        ioctl(vm->kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_PIT2) <= 0) {
        ferry_error_setg(errp, "this KVM has no in-kernel irqchip or PIT (KVM_CAP_IRQCHIP, KVM_CAP_PIT2)");
        goto fail;
    }
    if (ioctl(vm->vm_fd, KVM_CREATE_IRQCHIP, 0) < 0) {
        vm_error_ioctl(errp, "KVM_CREATE_IRQCHIP");
        goto fail;
    }
    if (ioctl(vm->vm_fd, KVM_CREATE_PIT2, &pit) < 0) {
        vm_error_ioctl(errp, "KVM_CREATE_PIT2");
        goto fail;
    }
    if (cfg->dirty_ring_size) {
        /* The probe first (dirty-log.c), on VMs of its own: a KVM whose ring takes entries and loses some, or
         * loses its place when full, would lose pages of a migration and stop a vCPU at its first full ring
         * whoever uses the ring (migration, dirty-limit, calc-dirty-rate), so -accel kvm,dirty-ring-size is
         * refused at start-up there, as QEMU refuses it where KVM has no ring. */
        if (!vm_enable_dirty_ring(vm->vm_fd, cfg->dirty_ring_size, errp)) {
            goto fail;
        }
        if (!vm_dirty_ring_probe(cfg->dirty_ring_size, errp)) {
            ferry_error_prepend(errp, "dirty-ring-size=%u: the dirty ring's start-up probe failed: ",
                                cfg->dirty_ring_size);
            goto fail;
        }
        vm->ring_size = cfg->dirty_ring_size;
    }
    /* Manual protection makes a harvest GET + CLEAR, so that pages are re-protected only once read: the
     * difference is speed, not correctness, so it is used where KVM has it. The bitmap is not kept with a
     * dirty ring (x86 KVM_GET_DIRTY_LOG refuses then), so neither is this. */
    if (!vm->ring_size && ioctl(vm->kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2) > 0) {
        struct kvm_enable_cap cap = {
            .cap = KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
            .args[0] = KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE,
        };
        vm->manual_protect = ioctl(vm->vm_fd, KVM_ENABLE_CAP, &cap) == 0;
    }
    r = ioctl(vm->vm_fd, KVM_CHECK_EXTENSION, KVM_CAP_XSAVE2);
    vm->xsave_size = r > (int)sizeof(struct kvm_xsave) ? (uint32_t)r : (uint32_t)sizeof(struct kvm_xsave);
    vm->xcrs = ioctl(vm->kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_XCRS) > 0;
    if (vm->xsave_size > VM_MAX_XSAVE) {
        ferry_error_setg(errp, "KVM's XSAVE area is %u bytes, more than the %u this program handles",
                         vm->xsave_size, VM_MAX_XSAVE);
        goto fail;
    }
    if (!setup_cpuid(vm, errp)) {
        goto fail;
    }
    for (unsigned i = 0; i < cfg->smp; i++) {
        if (!create_vcpu(vm, i, errp)) {
            ferry_error_prepend(errp, "vCPU %u: ", i);
            goto fail;
        }
    }
    if (!probe_msrs(vm, &vm->vcpus[0], errp)) {
        goto fail;
    }
    vm->pci = pci_bus_new(vm, errp);
    if (!vm->pci) {
        goto fail;
    }
    return vm;

fail:
    vm_free(vm);
    return NULL;
}

static bool set_slot(Vm *vm, const VmSlot *s, uint32_t flags, FerryError **errp)
{
    struct kvm_userspace_memory_region r = {
        .slot = s->slot,
        .flags = flags,
        .guest_phys_addr = s->gpa,
        .memory_size = s->size,
        .userspace_addr = (uint64_t)(uintptr_t)(vm->ram_host + s->block_offset),
    };

    if (ioctl(vm->vm_fd, KVM_SET_USER_MEMORY_REGION, &r) < 0) {
        ferry_error_setg_errno(errp, errno, "KVM_SET_USER_MEMORY_REGION (slot %u)", s->slot);
        return false;
    }
    return true;
}

bool vm_set_slot_flags(Vm *vm, uint32_t flags, FerryError **errp)
{
    for (unsigned i = 0; i < vm->nslots; i++) {
        if (!set_slot(vm, &vm->slots[i], flags, errp)) {
            return false;
        }
    }
    vm->slot_flags = flags;
    return true;
}

bool vm_setup_ram(Vm *vm, FerryMigration *m, FerryError **errp)
{
    const VmConfig *cfg = &vm->cfg;

    if (m) {
        vm->ram = cfg->mem_path ? ferry_ram_block_new_file(m, "pc.ram", cfg->ram_size, cfg->mem_path, 0,
                                                           cfg->file_share, errp)
                  : cfg->mem_dir ? ferry_ram_block_new_tmpfile(m, "pc.ram", cfg->ram_size, cfg->mem_dir,
                                                               cfg->file_share, errp)
                  : cfg->hugetlb ? ferry_ram_block_new_hugetlb(m, "pc.ram", cfg->ram_size, cfg->memfd_share,
                                                               cfg->hugetlbsize, errp)
                  : cfg->memfd  ? ferry_ram_block_new_memfd(m, "pc.ram", cfg->ram_size, cfg->memfd_share, errp)
                                : ferry_ram_block_new(m, "pc.ram", cfg->ram_size, errp);
        if (!vm->ram) {
            ferry_error_prepend(errp, "registering RAM block pc.ram: ");
            return false;
        }
        vm->ram_host = ferry_ram_block_host(vm->ram);
        if (cfg->mem_prealloc && !ferry_ram_block_prealloc_threads(vm->ram, cfg->prealloc_threads, errp)) {
            ferry_error_prepend(errp, "-mem-prealloc: ");
            return false;
        }
    } else {
        void *p = mmap(NULL, cfg->ram_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                       -1, 0);
        if (p == MAP_FAILED) {
            ferry_error_setg_errno(errp, errno, "mapping %" PRIu64 " bytes of guest RAM", cfg->ram_size);
            return false;
        }
        vm->ram_host = p;
    }
    /* QEMU's pc rule: RAM of 3.5 GiB or more keeps 3 GiB below 4 GiB and puts the rest above. */
    vm->lowmem = cfg->ram_size >= VM_LOWMEM_SPLIT ? VM_LOWMEM_MAX : cfg->ram_size;
    vm->highmem = cfg->ram_size - vm->lowmem;
    vm->slots[0] = (VmSlot){ .slot = 0, .gpa = 0, .size = vm->lowmem, .block_offset = 0 };
    vm->nslots = 1;
    if (vm->highmem) {
        vm->slots[1] = (VmSlot){ .slot = 1, .gpa = VM_HIGHMEM_BASE, .size = vm->highmem, .block_offset = vm->lowmem };
        vm->nslots = 2;
    }
    return vm_set_slot_flags(vm, 0, errp);
}

/* The slot holding all of [@gpa, @gpa + @len), or NULL. */
static const VmSlot *find_slot(const Vm *vm, uint64_t gpa, uint64_t len)
{
    for (unsigned i = 0; i < vm->nslots; i++) {
        const VmSlot *s = &vm->slots[i];

        if (gpa >= s->gpa && len <= s->size && gpa - s->gpa <= s->size - len) {
            return s;
        }
    }
    return NULL;
}

void *vm_gpa_to_host(Vm *vm, uint64_t gpa, uint64_t len)
{
    const VmSlot *s = find_slot(vm, gpa, len);

    return s ? vm->ram_host + s->block_offset + (gpa - s->gpa) : NULL;
}

void vm_mark_dirty(Vm *vm, uint64_t gpa, uint64_t len)
{
    const VmSlot *s = find_slot(vm, gpa, len);

    if (s && vm->ram) {
        ferry_ram_mark_dirty(vm->ram, s->block_offset + (gpa - s->gpa), len);
    }
}

/* ---- Running and parking ---- */

/* Caller holds vm->lock. */
static void update_go(Vm *vm)
{
    bool go = vm->host_run && vm->holds == 0 && !vm->quit;

    atomic_store(&vm->go, go);
    if (go) {
        pthread_cond_broadcast(&vm->cond);
        return;
    }
    for (unsigned i = 0; i < vm->threads_started; i++) {
        Vcpu *cpu = &vm->vcpus[i];

        cpu->run->immediate_exit = 1;
        pthread_kill(cpu->thread, KICK_SIGNAL);
    }
}

static void wait_parked(Vm *vm)
{
    while (vm->parked < vm->threads_started) {
        pthread_cond_wait(&vm->cond, &vm->lock);
    }
}

static bool vcpu_park(Vcpu *cpu)
{
    Vm *vm = cpu->vm;

    pthread_mutex_lock(&vm->lock);
    vm->parked++;
    pthread_cond_broadcast(&vm->cond);
    while (!(vm->host_run && vm->holds == 0 && !cpu->dead) && !vm->quit) {
        pthread_cond_wait(&vm->cond, &vm->lock);
    }
    if (vm->quit) {
        pthread_mutex_unlock(&vm->lock);
        return false;
    }
    vm->parked--;
    cpu->run->immediate_exit = 0;
    pthread_mutex_unlock(&vm->lock);
    return true;
}

#define mono_ns vm_mono_ns

/* A throttle or dirty-limit kick took this vCPU out of KVM_RUN: it may sleep unless it is being stopped (false). */
static bool vcpu_kick_resume(Vcpu *cpu)
{
    if (!atomic_load(&cpu->vm->go)) {
        return false; /* a stopper's kick too: immediate_exit stays for it, vcpu_park clears it */
    }
    cpu->run->immediate_exit = 0;
    /* Orders the store above before the loads of go in the sleeps and at the top of vcpu_main's loop: a stopper
     * that cleared go after this vCPU last saw it set writes immediate_exit = 1 after this, and its signal
     * follows. */
    atomic_thread_fence(memory_order_seq_cst);
    return true;
}

/* A throttle kick took this vCPU out of KVM_RUN (vcpu_kick_resume said yes): sleep its share of the slice. */
static void vcpu_throttle_sleep(Vcpu *cpu)
{
    Vm *vm = cpu->vm;
    int pct = atomic_load(&vm->throttle_pct);

    if (pct <= 0 || pct >= 100) {
        return; /* lifted since the kick */
    }
    atomic_fetch_add_explicit(&cpu->throttle_sleeps, 1, memory_order_relaxed);
    int64_t now = mono_ns(), until = now + THROTTLE_SLICE_NS * pct / (100 - pct);
    while (now < until && atomic_load(&vm->go)) {
        int64_t d = until - now < THROTTLE_NAP_NS ? until - now : THROTTLE_NAP_NS;
        struct timespec ts = { .tv_sec = 0, .tv_nsec = (long)d };
        nanosleep(&ts, NULL);
        now = mono_ns();
    }
}

/* The guest cannot go on (triple fault, KVM failure): the vCPU stays parked for good and says why. */
static void vcpu_die(Vcpu *cpu, const char *why)
{
    Vm *vm = cpu->vm;
    struct kvm_regs regs;

    memset(&regs, 0, sizeof(regs));
    ioctl(cpu->fd, KVM_GET_REGS, &regs);
    fprintf(stderr, "ferry-vm: vCPU %u: %s (rip 0x%llx); it stops\n", cpu->id, why, (unsigned long long)regs.rip);
    pthread_mutex_lock(&vm->lock);
    cpu->dead = true;
    pthread_mutex_unlock(&vm->lock);
    if (vm->host) {
        ferry_host_emit_event(vm->host, "GUEST_PANICKED",
                              json_pack("{s:s, s:i, s:s}", "action", "pause", "cpu", (int)cpu->id, "reason", why));
    }
}

static void handle_io(Vcpu *cpu)
{
    struct kvm_run *run = cpu->run;
    uint8_t *data = (uint8_t *)run + run->io.data_offset;
    bool is_write = run->io.direction == KVM_EXIT_IO_OUT;

    for (uint32_t n = 0; n < run->io.count; n++, data += run->io.size) {
        uint16_t port = run->io.port;

        if (port >= VM_COM1_BASE && port < VM_COM1_BASE + 8 && run->io.size == 1 && cpu->vm->serial) {
            serial_io(cpu->vm->serial, port - VM_COM1_BASE, is_write, data);
        } else if (cpu->vm->pci && pci_io(cpu->vm->pci, port, run->io.size, is_write, data)) {
            continue;
        } else if (!is_write) {
            memset(data, 0xff, run->io.size);
        }
    }
}

/* KVM_EXIT_DIRTY_RING_FULL: collect the rings and reset them, so that KVM lets the vCPU in again (QEMU's vCPU
 * threads reap in that case too). The ring may have been emptied already by the migration thread's harvest, so
 * this collection finding nothing is normal; but if nobody collected anything since this vCPU's previous exit,
 * also a full ring, the ring cannot be emptied and the vCPU would spin: it stops instead. *@last is the count of
 * entries ever collected at the previous such exit (UINT64_MAX: the previous exit was another). Returns false if
 * the vCPU died. */
static bool ring_full(Vcpu *cpu, uint64_t *last)
{
    FerryError *err = NULL;
    uint64_t total = 0;
    int64_t t0 = mono_ns();
    bool ok;

    atomic_fetch_add_explicit(&cpu->vm->ring_full_exits, 1, memory_order_relaxed);
    ok = vm_dirty_ring_collect(cpu->vm, &total, &err);
    atomic_fetch_add_explicit(&cpu->ring_full_us, (uint64_t)(mono_ns() - t0) / 1000, memory_order_relaxed);
    if (!ok) {
        char why[256];
        snprintf(why, sizeof(why), "dirty ring full, collecting it failed: %s", ferry_error_msg(err));
        ferry_error_free(err);
        vcpu_die(cpu, why);
        return false;
    }
    if (total == *last) {
        vcpu_die(cpu, "dirty ring full again with nothing collected since it last was");
        return false;
    }
    *last = total;
    return true;
}

static void *vcpu_main(void *arg)
{
    Vcpu *cpu = arg;
    Vm *vm = cpu->vm;
    uint64_t ring_last = UINT64_MAX; /* see ring_full() */

    /* A postcopy destination counts this thread's waits for missing guest pages as vCPU blocktime. */
    if (vm->host) {
        ferry_migration_set_vcpu_thread(ferry_host_migration(vm->host), (unsigned)(cpu - vm->vcpus), (int)gettid());
    }
    for (;;) {
        /* dead is written by this thread only; vcpu_park() reads it under the lock for the others' sake. */
        if (!atomic_load_explicit(&vm->go, memory_order_acquire) || cpu->dead) {
            if (!vcpu_park(cpu)) {
                return NULL;
            }
            continue;
        }
        if (ioctl(cpu->fd, KVM_RUN, 0) < 0) {
            if (errno == EINTR || errno == EAGAIN) {
                bool throttle = atomic_exchange(&cpu->throttle_pending, false);
                bool limit = atomic_exchange(&cpu->limit_pending, false);

                /* Kicked by auto-converge's throttle thread, dirty-limit's limit thread or both: each sleep is
                 * its own (a limited vCPU under auto-converge sleeps for both). */
                if ((throttle || limit) && vcpu_kick_resume(cpu)) {
                    if (throttle) {
                        vcpu_throttle_sleep(cpu);
                    }
                    if (limit) {
                        vm_limit_sleep(cpu);
                    }
                }
                continue;
            }
            char why[128];
            snprintf(why, sizeof(why), "KVM_RUN: %s", strerror(errno));
            vcpu_die(cpu, why);
            continue;
        }
        atomic_fetch_add_explicit(&cpu->exits, 1, memory_order_relaxed);
        if (cpu->run->exit_reason != KVM_EXIT_DIRTY_RING_FULL) {
            ring_last = UINT64_MAX;
        }
        switch (cpu->run->exit_reason) {
        case KVM_EXIT_IO:
            handle_io(cpu);
            break;
        case KVM_EXIT_MMIO:
            if (!cpu->run->mmio.is_write) {
                memset(cpu->run->mmio.data, 0xff, sizeof(cpu->run->mmio.data));
            }
            break;
        case KVM_EXIT_INTR:
            break;
        case KVM_EXIT_DIRTY_RING_FULL:
            ring_full(cpu, &ring_last);
            break;
        case KVM_EXIT_HLT:
            /* With the in-kernel irqchip KVM handles HLT itself; seeing one means the guest halted for good. */
            vcpu_die(cpu, "halted");
            break;
        case KVM_EXIT_SHUTDOWN:
            vcpu_die(cpu, "shutdown (triple fault)");
            break;
        case KVM_EXIT_FAIL_ENTRY: {
            char why[96];
            snprintf(why, sizeof(why), "entry failed, hardware reason 0x%llx",
                     (unsigned long long)cpu->run->fail_entry.hardware_entry_failure_reason);
            vcpu_die(cpu, why);
            break;
        }
        case KVM_EXIT_INTERNAL_ERROR: {
            char why[96];
            snprintf(why, sizeof(why), "KVM internal error, suberror %u", cpu->run->internal.suberror);
            vcpu_die(cpu, why);
            break;
        }
        default: {
            char why[64];
            snprintf(why, sizeof(why), "unhandled exit reason %u", cpu->run->exit_reason);
            vcpu_die(cpu, why);
            break;
        }
        }
    }
}

bool vm_start_threads(Vm *vm, FerryError **errp)
{
    struct sigaction sa = { .sa_handler = kick_handler, .sa_flags = 0 };

    sigemptyset(&sa.sa_mask);
    sigaction(KICK_SIGNAL, &sa, NULL);
    for (unsigned i = 0; i < vm->nvcpus; i++) {
        int err = pthread_create(&vm->vcpus[i].thread, NULL, vcpu_main, &vm->vcpus[i]);

        if (err) {
            ferry_error_setg_errno(errp, err, "creating the thread of vCPU %u", i);
            return false;
        }
        pthread_mutex_lock(&vm->lock);
        vm->vcpus[i].thread_started = true;
        vm->threads_started++;
        pthread_mutex_unlock(&vm->lock);
    }
    pthread_mutex_lock(&vm->lock);
    wait_parked(vm);
    pthread_mutex_unlock(&vm->lock);
    return true;
}

void vm_stop_threads(Vm *vm)
{
    unsigned n;
    bool throttler;

    if (!vm) {
        return;
    }
    vm_limit_stop(vm); /* first: it kicks vCPUs */
    pthread_mutex_lock(&vm->lock);
    vm->quit = true;
    update_go(vm);
    pthread_cond_broadcast(&vm->cond);
    pthread_cond_broadcast(&vm->throttle_cond);
    n = vm->threads_started;
    throttler = vm->throttle_started;
    vm->throttle_started = false;
    pthread_mutex_unlock(&vm->lock);
    if (throttler) {
        pthread_join(vm->throttle_thread, NULL);
    }
    for (unsigned i = 0; i < n; i++) {
        pthread_join(vm->vcpus[i].thread, NULL);
    }
    pthread_mutex_lock(&vm->lock);
    vm->threads_started = 0;
    vm->parked = 0;
    pthread_mutex_unlock(&vm->lock);
    for (unsigned i = 0; i < vm->nnics; i++) {
        virtio_net_stop_thread(vm->nics[i]);
    }
}

void vm_free(Vm *vm)
{
    if (!vm) {
        return;
    }
    vm_stop_threads(vm);
    for (unsigned i = 0; i < vm->nnics; i++) {
        virtio_net_free(vm->nics[i]);
    }
    pci_bus_free(vm->pci);
    serial_free(vm->serial);
    for (unsigned i = 0; i < vm->nvcpus; i++) {
        if (vm->vcpus[i].run) {
            munmap(vm->vcpus[i].run, vm->vcpus[i].run_size);
        }
        if (vm->vcpus[i].ring) {
            munmap(vm->vcpus[i].ring, (size_t)vm->ring_size * sizeof(struct kvm_dirty_gfn));
        }
        close(vm->vcpus[i].fd);
    }
    if (vm->vm_fd >= 0) {
        close(vm->vm_fd);
    }
    if (vm->kvm_fd >= 0) {
        close(vm->kvm_fd);
    }
    if (!vm->ram && vm->ram_host) {
        munmap(vm->ram_host, vm->cfg.ram_size);
    }
    free(vm->cpuid);
    free(vm->ring_pending);
    pthread_mutex_destroy(&vm->ring_lock);
    vm_limit_destroy(vm);
    pthread_cond_destroy(&vm->cond);
    pthread_cond_destroy(&vm->throttle_cond);
    pthread_mutex_destroy(&vm->lock);
    free(vm);
}

/* The vCPUs park first: a transmit they started completes in their own thread before they do. Then the NICs'
 * receive threads, so that nothing writes guest memory once stop returns. start goes the other way round. */
static void ops_stop(void *opaque)
{
    Vm *vm = opaque;

    pthread_mutex_lock(&vm->lock);
    vm->host_run = false;
    update_go(vm);
    wait_parked(vm);
    pthread_mutex_unlock(&vm->lock);
    for (unsigned i = 0; i < vm->nnics; i++) {
        virtio_net_stop(vm->nics[i]);
    }
}

static void ops_start(void *opaque)
{
    Vm *vm = opaque;

    for (unsigned i = 0; i < vm->nnics; i++) {
        virtio_net_start(vm->nics[i]);
    }
    pthread_mutex_lock(&vm->lock);
    vm->host_run = true;
    update_go(vm);
    pthread_mutex_unlock(&vm->lock);
}

/* The throttle thread: while throttle_pct is not 0, once per period (a time slice of run time plus the sleep)
 * mark every running vCPU and kick it as update_go() does; otherwise wait for a percentage or quit. vCPUs that are
 * parked are left alone: they do not dirty RAM, and vcpu_park clears immediate_exit when they go on. */
static void *throttle_main(void *arg)
{
    Vm *vm = arg;

    pthread_mutex_lock(&vm->lock);
    while (!vm->quit) {
        int pct = atomic_load(&vm->throttle_pct);

        if (pct <= 0) {
            pthread_cond_wait(&vm->throttle_cond, &vm->lock);
            continue;
        }
        int64_t until = mono_ns() + THROTTLE_SLICE_NS * 100 / (100 - pct);
        struct timespec ts = { .tv_sec = (time_t)(until / 1000000000), .tv_nsec = (long)(until % 1000000000) };
        if (pthread_cond_timedwait(&vm->throttle_cond, &vm->lock, &ts) != ETIMEDOUT) {
            continue; /* a new percentage (its period starts now) or quit */
        }
        if (vm->quit || atomic_load(&vm->throttle_pct) <= 0 || !atomic_load(&vm->go)) {
            continue;
        }
        for (unsigned i = 0; i < vm->threads_started; i++) {
            Vcpu *cpu = &vm->vcpus[i];

            atomic_store(&cpu->throttle_pending, true);
            cpu->run->immediate_exit = 1;
            pthread_kill(cpu->thread, KICK_SIGNAL);
        }
    }
    pthread_mutex_unlock(&vm->lock);
    return NULL;
}

/* FerryHostOps.throttle: the migration thread sets the percentage; the throttle thread is started the first
 * time it is not 0. If it cannot be created the guest runs unthrottled, and says so. */
static void ops_throttle(void *opaque, int percent)
{
    Vm *vm = opaque;

    pthread_mutex_lock(&vm->lock);
    atomic_store(&vm->throttle_pct, percent);
    pthread_cond_broadcast(&vm->throttle_cond);
    if (percent > 0 && !vm->throttle_started && !vm->quit) {
        int err = pthread_create(&vm->throttle_thread, NULL, throttle_main, vm);

        if (err) {
            fprintf(stderr, "ferry-vm: creating the vCPU throttle thread: %s; the vCPUs run unthrottled\n",
                    strerror(err));
        } else {
            vm->throttle_started = true;
        }
    }
    pthread_mutex_unlock(&vm->lock);
}

const FerryHostOps vm_ops = {
    .stop = ops_stop,
    .start = ops_start,
    .throttle = ops_throttle,
    .writer_stats = vm_writer_stats,
    .dirty_limit = vm_dirty_limit,
};

void vm_hold(Vm *vm)
{
    pthread_mutex_lock(&vm->lock);
    vm->holds++;
    update_go(vm);
    wait_parked(vm);
    pthread_mutex_unlock(&vm->lock);
}

void vm_release(Vm *vm)
{
    pthread_mutex_lock(&vm->lock);
    vm->holds--;
    update_go(vm);
    pthread_mutex_unlock(&vm->lock);
}

bool vm_register_sections(Vm *vm, FerryMigration *m, FerryError **errp)
{
    /* "machine" first: a destination of another shape refuses before any vCPU state is applied. The clock
     * comes last, as QEMU's kvmclock device, once everything it is measured against is in place. */
    if (!ferry_migration_register_section(m, "machine", 0, 1, vm_machine_section, vm, errp)) {
        return false;
    }
    for (unsigned i = 0; i < vm->nvcpus; i++) {
        if (!ferry_migration_register_section(m, "cpu", i, 1, vcpu_section, &vm->vcpus[i], errp)) {
            return false;
        }
    }
    return ferry_migration_register_section(m, "irqchip", 0, 1, vm_irqchip_section, vm, errp) &&
           ferry_migration_register_section(m, "pit", 0, 1, vm_pit_section, vm, errp) &&
           ferry_migration_register_section(m, "serial", 0, 1, serial_section, vm->serial, errp) &&
           (!vm->pci || ferry_migration_register_section(m, "pci", 0, 1, pci_section, vm->pci, errp)) &&
           ferry_migration_register_section(m, "kvmclock", 0, 1, vm_clock_section, vm, errp);
}
