/*
 * KVM's dirty log as a ferry dirty tracker (FerryDirtyTrackerOps, include/ferry/ram.h), and the start-up probe
 * that decides whether ferry-vm may use it. Arming sets KVM_MEM_LOG_DIRTY_PAGES on every memory slot (KVM then
 * write-protects the guest's mappings and records the first write to each page); a harvest of the RAM block reads
 * each slot's bitmap with KVM_GET_DIRTY_LOG and, with KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, re-protects the pages it
 * reported with KVM_CLEAR_DIRTY_LOG before ferry reads them (without the capability KVM_GET_DIRTY_LOG re-protects
 * by itself). Disarming clears the flag again.
 *
 * The probe exists because a KVM can accept all of this and still report nothing: on this project's machines (a
 * nested KVM) KVM_GET_DIRTY_LOG was seen returning empty bitmaps although the guest wrote pages
 * (docs/PLATFORM.md). So ferry-vm runs a real guest on a throw-away VM with the same capabilities, lets it write
 * two known pages, harvests, lets it write one of them again, harvests again, and trusts the log only if both
 * harvests report exactly what was written. Otherwise main.c falls back to the library's uffd-wp tracker, which
 * sees KVM's writes through the host mapping, and says why. The dirty ring (KVM_CAP_DIRTY_LOG_RING) is not used:
 * see docs/vm.md.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "vm.h"

#define PAGE 4096u
#define BITS (8 * sizeof(unsigned long))

/* Read (and with manual protection re-protect) one slot's log into @map (a bitmap of the slot's pages). */
static bool slot_harvest(int vm_fd, bool manual, uint32_t slot, uint64_t npages, unsigned long *map,
                         FerryError **errp)
{
    struct kvm_dirty_log log = { .slot = slot, .dirty_bitmap = map };

    if (ioctl(vm_fd, KVM_GET_DIRTY_LOG, &log) < 0) {
        ferry_error_setg_errno(errp, errno, "KVM_GET_DIRTY_LOG (slot %u)", slot);
        return false;
    }
    if (manual) {
        struct kvm_clear_dirty_log clear = {
            .slot = slot,
            .first_page = 0,
            .num_pages = (uint32_t)npages,
            .dirty_bitmap = map,
        };

        if (ioctl(vm_fd, KVM_CLEAR_DIRTY_LOG, &clear) < 0) {
            ferry_error_setg_errno(errp, errno, "KVM_CLEAR_DIRTY_LOG (slot %u)", slot);
            return false;
        }
    }
    return true;
}

/* ---- The probe ---- */

/*
 * Real-mode code at guest-physical 0: write pages 1 and 3, halt; on the next entry write page 3 again, halt.
 *   c6 06 00 10 01   movb $1, 0x1000
 *   c6 06 00 30 01   movb $1, 0x3000
 *   f4               hlt
 *   c6 06 00 30 02   movb $2, 0x3000
 *   f4               hlt
 */
static const uint8_t probe_code[] = {
    0xc6, 0x06, 0x00, 0x10, 0x01, 0xc6, 0x06, 0x00, 0x30, 0x01, 0xf4, 0xc6, 0x06, 0x00, 0x30, 0x02, 0xf4,
};
#define PROBE_PAGES 64u

static bool probe_run_to_hlt(int cpu_fd, struct kvm_run *run, FerryError **errp)
{
    for (int i = 0; i < 16; i++) {
        if (ioctl(cpu_fd, KVM_RUN, 0) < 0) {
            if (errno == EINTR) {
                continue;
            }
            ferry_error_setg_errno(errp, errno, "KVM_RUN");
            return false;
        }
        if (run->exit_reason == KVM_EXIT_HLT) {
            return true;
        }
        if (run->exit_reason != KVM_EXIT_IO && run->exit_reason != KVM_EXIT_MMIO) {
            ferry_error_setg(errp, "the probe guest exited with reason %u", run->exit_reason);
            return false;
        }
    }
    ferry_error_setg(errp, "the probe guest did not halt");
    return false;
}

static void describe_bits(const unsigned long *map, char *out, size_t len)
{
    size_t n = 0;

    out[0] = '\0';
    for (unsigned i = 0; i < PROBE_PAGES && n + 8 < len; i++) {
        if (map[i / BITS] & (1UL << (i % BITS))) {
            n += (size_t)snprintf(out + n, len - n, "%s%u", n ? "," : "", i);
        }
    }
    if (!n) {
        snprintf(out, len, "none");
    }
}

static bool probe_expect(const unsigned long *map, unsigned long want, const char *round, FerryError **errp)
{
    char got[128];

    if (map[0] == want) {
        return true;
    }
    describe_bits(map, got, sizeof(got));
    ferry_error_setg(errp, "KVM_GET_DIRTY_LOG reported pages {%s} after the %s round, the guest wrote {%s}", got,
                     round, want == ((1UL << 1) | (1UL << 3)) ? "1,3" : "3");
    return false;
}

bool vm_dirty_log_probe(FerryError **errp)
{
    int kvm_fd = -1, vm_fd = -1, cpu_fd = -1;
    struct kvm_run *run = NULL;
    size_t run_size = 0;
    uint8_t *mem = MAP_FAILED;
    size_t mem_size = PROBE_PAGES * PAGE;
    unsigned long map[PROBE_PAGES / BITS];
    bool manual = false, ok = false;
    struct kvm_sregs sregs;
    struct kvm_regs regs = { .rip = 0, .rflags = 2 };
    int r;

    kvm_fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm_fd < 0) {
        ferry_error_setg_errno(errp, errno, "opening /dev/kvm");
        goto out;
    }
    vm_fd = ioctl(kvm_fd, KVM_CREATE_VM, 0);
    if (vm_fd < 0 || ioctl(vm_fd, KVM_SET_TSS_ADDR, (unsigned long)VM_TSS_ADDR) < 0) {
        ferry_error_setg_errno(errp, errno, "creating the probe VM");
        goto out;
    }
    /* The same mode as the real VM (vm_new), so that the probe tests the path a migration takes. */
    if (ioctl(kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2) > 0) {
        struct kvm_enable_cap cap = {
            .cap = KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
            .args[0] = KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE,
        };
        manual = ioctl(vm_fd, KVM_ENABLE_CAP, &cap) == 0;
    }
    mem = mmap(NULL, mem_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) {
        ferry_error_setg_errno(errp, errno, "mapping the probe's memory");
        goto out;
    }
    memcpy(mem, probe_code, sizeof(probe_code));
    struct kvm_userspace_memory_region region = {
        .slot = 0,
        .flags = KVM_MEM_LOG_DIRTY_PAGES,
        .guest_phys_addr = 0,
        .memory_size = mem_size,
        .userspace_addr = (uint64_t)(uintptr_t)mem,
    };
    if (ioctl(vm_fd, KVM_SET_USER_MEMORY_REGION, &region) < 0) {
        ferry_error_setg_errno(errp, errno, "KVM_SET_USER_MEMORY_REGION with KVM_MEM_LOG_DIRTY_PAGES");
        goto out;
    }
    cpu_fd = ioctl(vm_fd, KVM_CREATE_VCPU, 0UL);
    r = ioctl(kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0);
    if (cpu_fd < 0 || r <= 0) {
        ferry_error_setg_errno(errp, errno, "creating the probe vCPU");
        goto out;
    }
    run_size = (size_t)r;
    run = mmap(NULL, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, cpu_fd, 0);
    if (run == MAP_FAILED) {
        run = NULL;
        ferry_error_setg_errno(errp, errno, "mapping the probe vCPU's kvm_run");
        goto out;
    }
    if (ioctl(cpu_fd, KVM_GET_SREGS, &sregs) < 0) {
        ferry_error_setg_errno(errp, errno, "KVM_GET_SREGS");
        goto out;
    }
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    sregs.ds.base = 0;
    sregs.ds.selector = 0;
    if (ioctl(cpu_fd, KVM_SET_SREGS, &sregs) < 0 || ioctl(cpu_fd, KVM_SET_REGS, &regs) < 0) {
        ferry_error_setg_errno(errp, errno, "setting the probe vCPU's registers");
        goto out;
    }
    /* Pages written before the log is read once (KVM populating the code page) are not the guest's: start from
     * an empty log. */
    memset(map, 0, sizeof(map));
    if (!slot_harvest(vm_fd, manual, 0, PROBE_PAGES, map, errp)) {
        goto out;
    }
    if (!probe_run_to_hlt(cpu_fd, run, errp)) {
        goto out;
    }
    memset(map, 0, sizeof(map));
    if (!slot_harvest(vm_fd, manual, 0, PROBE_PAGES, map, errp) ||
        !probe_expect(map, (1UL << 1) | (1UL << 3), "first", errp)) {
        goto out;
    }
    if (!probe_run_to_hlt(cpu_fd, run, errp)) {
        goto out;
    }
    memset(map, 0, sizeof(map));
    if (!slot_harvest(vm_fd, manual, 0, PROBE_PAGES, map, errp) || !probe_expect(map, 1UL << 3, "second", errp)) {
        goto out;
    }
    if (mem[0x1000] != 1 || mem[0x3000] != 2) {
        ferry_error_setg(errp, "the probe guest's writes did not reach its memory");
        goto out;
    }
    ok = true;
out:
    if (run) {
        munmap(run, run_size);
    }
    if (cpu_fd >= 0) {
        close(cpu_fd);
    }
    if (vm_fd >= 0) {
        close(vm_fd);
    }
    if (kvm_fd >= 0) {
        close(kvm_fd);
    }
    if (mem != MAP_FAILED) {
        munmap(mem, mem_size);
    }
    return ok;
}

/* ---- The tracker ---- */

static bool log_start(void *opaque, FerryError **errp)
{
    Vm *vm = opaque;

    return vm_set_slot_flags(vm, KVM_MEM_LOG_DIRTY_PAGES, errp);
}

static bool log_harvest(void *opaque, FerryRamBlock *b, unsigned long *bitmap, FerryError **errp)
{
    Vm *vm = opaque;

    if (b != vm->ram) {
        return true; /* not guest RAM: nothing of KVM's writes there */
    }
    for (unsigned i = 0; i < vm->nslots; i++) {
        const VmSlot *s = &vm->slots[i];
        uint64_t npages = s->size / PAGE, first = s->block_offset / PAGE;
        size_t words = (size_t)((npages + BITS - 1) / BITS);
        unsigned long *map = calloc(words, sizeof(*map));

        if (!map) {
            ferry_error_setg(errp, "out of memory");
            return false;
        }
        if (!slot_harvest(vm->vm_fd, vm->manual_protect, s->slot, npages, map, errp)) {
            free(map);
            return false;
        }
        /* The slot's pages are the block's from @first: whole words when @first is word aligned (always, for
         * the pc layout's 3 GiB), bit by bit otherwise. */
        if (first % BITS == 0) {
            for (size_t w = 0; w < words; w++) {
                bitmap[first / BITS + w] |= map[w];
            }
        } else {
            for (uint64_t p = 0; p < npages; p++) {
                if (map[p / BITS] & (1UL << (p % BITS))) {
                    bitmap[(first + p) / BITS] |= 1UL << ((first + p) % BITS);
                }
            }
        }
        free(map);
    }
    return true;
}

static void log_stop(void *opaque)
{
    Vm *vm = opaque;
    FerryError *err = NULL;

    if (!vm_set_slot_flags(vm, 0, &err)) {
        fprintf(stderr, "ferry-vm: disarming the dirty log: %s\n", ferry_error_msg(err));
        ferry_error_free(err);
    }
}

const FerryDirtyTrackerOps vm_dirty_log_ops = {
    .name = "kvm-dirty-log",
    .start = log_start,
    .harvest = log_harvest,
    .stop = log_stop,
};
