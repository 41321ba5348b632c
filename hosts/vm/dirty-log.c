/*
 * KVM's dirty log as ferry dirty trackers (FerryDirtyTrackerOps, include/ferry/ram.h), in both of KVM's forms, and
 * the start-up probes that decide whether ferry-vm may use them.
 *
 * The bitmap ("kvm-dirty-log"): arming sets KVM_MEM_LOG_DIRTY_PAGES on every memory slot (KVM then write-protects
 * the guest's mappings and records the first write to each page); a harvest of the RAM block reads each slot's
 * bitmap with KVM_GET_DIRTY_LOG and, with KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, re-protects the pages it reported with
 * KVM_CLEAR_DIRTY_LOG before ferry reads them (without the capability KVM_GET_DIRTY_LOG re-protects by itself).
 * Disarming clears the flag again.
 *
 * The ring ("kvm-dirty-ring", KVM_CAP_DIRTY_LOG_RING, enabled by vm_new before the vCPUs exist): KVM records each
 * first write as an entry (slot, page offset) in the ring of the vCPU that wrote, mapped into this process, and
 * flags it KVM_DIRTY_GFN_F_DIRTY once it is complete. Arming sets the same slot flag; collecting walks every
 * vCPU's ring from where the last collection stopped, takes each entry flagged dirty (read with acquire
 * semantics, so that the entry's fields are KVM's final ones), notes its page in a pending bitmap of the RAM block
 * and hands the entry back (KVM_DIRTY_GFN_F_RESET, stored with release semantics); KVM_RESET_DIRTY_RINGS then
 * re-protects the pages handed back and frees their entries. A harvest is a collection plus the pending pages ORed
 * into the engine's bitmap. Pages are re-protected before the harvest returns and ferry reads them after it, so a
 * write that lands after its page was collected is either read by ferry or recorded again: every write before a
 * harvest is reported by it or a later one. A vCPU whose ring fills stops with KVM_EXIT_DIRTY_RING_FULL and
 * collects into the same pending bitmap itself (vm.c); ring_lock serializes it with the harvest. Where a CPU logs
 * writes in a buffer of its own first (Intel's PML), KVM moves them into the ring at the vCPU's next exit: a write
 * still buffered at one harvest is reported by a later one, at the latest by the last, taken with the vCPUs stopped.
 * Every collection, whoever makes it, also adds each vCPU's entries to its dirty_pages, the count dirty-limit.c
 * reads; that thread collects too while it counts, with the slots logging although no tracker is armed.
 *
 * The probes exist because a KVM can accept all of this and still report nothing: on this project's machines (a
 * nested KVM) KVM_GET_DIRTY_LOG was seen returning empty bitmaps although the guest wrote pages
 * (docs/PLATFORM.md). So ferry-vm runs a real guest on a throw-away VM with the same capabilities (and, for the
 * ring, a ring of the same size), lets it write two known pages, harvests, lets it write one of them again,
 * harvests again, and trusts the log only if each harvest reports every page written and nothing else but,
 * possibly, the guest's code page: an emulated KVM (scripts/kvm-emulated.sh) reports that one on the first round,
 * which over-reports (harmless, the page is sent once more) where missing a page would lose a write. A failed
 * bitmap probe makes main.c fall back to the library's uffd-wp tracker and say why; a failed ring probe is fatal,
 * as the ring is used only when asked for: vm_new runs it before it takes a ring. The ring probe also runs a guest
 * past many full rings (wrap_probe), as a KVM can report every page while the ring has room and lose entries
 * once it is full.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
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

/* ---- The ring ---- */

bool vm_enable_dirty_ring(int vm_fd, uint32_t entries, FerryError **errp)
{
    uint64_t bytes = (uint64_t)entries * sizeof(struct kvm_dirty_gfn);
    uint32_t capability = KVM_CAP_DIRTY_LOG_RING;
    int max = ioctl(vm_fd, KVM_CHECK_EXTENSION, capability);

    if (max <= 0) {
        capability = KVM_CAP_DIRTY_LOG_RING_ACQ_REL;
        max = ioctl(vm_fd, KVM_CHECK_EXTENSION, capability);
    }
    if (max <= 0) {
        ferry_error_setg(errp, "dirty-ring-size=%u: this KVM has no dirty ring (KVM_CAP_DIRTY_LOG_RING)", entries);
        return false;
    }
    if (bytes > (uint64_t)max) {
        ferry_error_setg(errp, "dirty-ring-size=%u: more than this KVM's largest ring, %zu entries", entries,
                         (size_t)max / sizeof(struct kvm_dirty_gfn));
        return false;
    }
    struct kvm_enable_cap cap = { .cap = capability, .args[0] = bytes };
    if (ioctl(vm_fd, KVM_ENABLE_CAP, &cap) < 0) {
        ferry_error_setg_errno(errp, errno, "dirty-ring-size=%u: KVM_ENABLE_CAP(%s, %" PRIu64 " bytes)", entries,
                               capability == KVM_CAP_DIRTY_LOG_RING ? "KVM_CAP_DIRTY_LOG_RING"
                                                                    : "KVM_CAP_DIRTY_LOG_RING_ACQ_REL",
                               bytes);
        return false;
    }
    return true;
}

void *vm_map_dirty_ring(int cpu_fd, uint32_t entries, FerryError **errp)
{
    void *ring = mmap(NULL, (size_t)entries * sizeof(struct kvm_dirty_gfn), PROT_READ | PROT_WRITE, MAP_SHARED,
                      cpu_fd, (off_t)KVM_DIRTY_LOG_PAGE_OFFSET * sysconf(_SC_PAGESIZE));

    if (ring == MAP_FAILED) {
        ferry_error_setg_errno(errp, errno, "mapping the dirty ring");
        return NULL;
    }
    return ring;
}

/* Take every entry KVM completed in @ring (@size entries, a power of two) from *@fetch on, give each to @fn and
 * hand it back to KVM; returns how many. KVM publishes an entry by storing its flags last: the acquire load pairs
 * with that store, and the release store of the reset flag keeps our reads of the entry before KVM's reuse. */
static uint64_t ring_walk(struct kvm_dirty_gfn *ring, uint32_t size, uint32_t *fetch,
                          void (*fn)(void *opaque, uint32_t slot, uint64_t offset), void *opaque)
{
    uint64_t n = 0;

    for (;;) {
        struct kvm_dirty_gfn *e = &ring[*fetch & (size - 1)];

        if (!(__atomic_load_n(&e->flags, __ATOMIC_ACQUIRE) & KVM_DIRTY_GFN_F_DIRTY)) {
            return n;
        }
        fn(opaque, e->slot, e->offset);
        __atomic_store_n(&e->flags, KVM_DIRTY_GFN_F_RESET, __ATOMIC_RELEASE);
        (*fetch)++;
        n++;
    }
}

static bool reset_rings(int vm_fd, FerryError **errp)
{
    if (ioctl(vm_fd, KVM_RESET_DIRTY_RINGS, 0) < 0) {
        ferry_error_setg_errno(errp, errno, "KVM_RESET_DIRTY_RINGS");
        return false;
    }
    return true;
}

/* An entry of the VM's rings: its page of the RAM block into ring_pending (while armed). Slots are numbered
 * (address space << 16) | slot; ferry-vm's slots are in address space 0. An entry outside every slot cannot come
 * from guest RAM and is dropped. */
static void note_vm_page(void *opaque, uint32_t slot, uint64_t offset)
{
    Vm *vm = opaque;

    if (!vm->ring_pending) {
        return;
    }
    for (unsigned i = 0; i < vm->nslots; i++) {
        const VmSlot *s = &vm->slots[i];

        if (s->slot == slot && offset < s->size / PAGE) {
            uint64_t page = s->block_offset / PAGE + offset;

            if (page < vm->ring_pages) {
                vm->ring_pending[page / BITS] |= 1UL << (page % BITS);
            }
            return;
        }
    }
}

/* Caller holds ring_lock. */
static bool collect_locked(Vm *vm, FerryError **errp)
{
    for (unsigned i = 0; i < vm->nvcpus; i++) {
        Vcpu *cpu = &vm->vcpus[i];

        if (cpu->ring) {
            uint64_t n = ring_walk(cpu->ring, vm->ring_size, &cpu->ring_fetch, note_vm_page, vm);

            /* The entries of this vCPU's ring are the pages it dirtied: its count for dirty-limit. */
            vm->ring_collected += n;
            atomic_fetch_add_explicit(&cpu->dirty_pages, n, memory_order_relaxed);
        }
    }
    return reset_rings(vm->vm_fd, errp);
}

bool vm_dirty_ring_collect(Vm *vm, uint64_t *total, FerryError **errp)
{
    bool ok;

    pthread_mutex_lock(&vm->ring_lock);
    ok = collect_locked(vm, errp);
    if (total) {
        *total = vm->ring_collected;
    }
    pthread_mutex_unlock(&vm->ring_lock);
    return ok;
}

/* ---- The probes ---- */

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
#define PROBE_WORDS ((PROBE_PAGES + BITS - 1) / BITS)

typedef struct Probe {
    int kvm_fd, vm_fd, cpu_fd;
    struct kvm_run *run;
    size_t run_size;
    uint8_t *mem;
    bool manual;
    uint32_t ring_size;        /* 0: the bitmap */
    struct kvm_dirty_gfn *ring;
    uint32_t fetch;
    unsigned long map[PROBE_WORDS];
    bool stray;                /* the ring named a page outside the probe's slot */
} Probe;

static bool probe_run_to_hlt(Probe *p, FerryError **errp)
{
    for (int i = 0; i < 16; i++) {
        if (ioctl(p->cpu_fd, KVM_RUN, 0) < 0) {
            if (errno == EINTR) {
                continue;
            }
            ferry_error_setg_errno(errp, errno, "KVM_RUN");
            return false;
        }
        if (p->run->exit_reason == KVM_EXIT_HLT) {
            return true;
        }
        if (p->run->exit_reason != KVM_EXIT_IO && p->run->exit_reason != KVM_EXIT_MMIO) {
            ferry_error_setg(errp, "the probe guest exited with reason %u", p->run->exit_reason);
            return false;
        }
    }
    ferry_error_setg(errp, "the probe guest did not halt");
    return false;
}

static void note_probe_page(void *opaque, uint32_t slot, uint64_t offset)
{
    Probe *p = opaque;

    if (slot != 0 || offset >= PROBE_PAGES) {
        p->stray = true;
        return;
    }
    p->map[offset / BITS] |= 1UL << (offset % BITS);
}

/* The pages written since the last call into p->map (cleared first), by the probe's kind of log. */
static bool probe_harvest(Probe *p, FerryError **errp)
{
    memset(p->map, 0, sizeof(p->map));
    p->stray = false;
    if (!p->ring_size) {
        return slot_harvest(p->vm_fd, p->manual, 0, PROBE_PAGES, p->map, errp);
    }
    ring_walk(p->ring, p->ring_size, &p->fetch, note_probe_page, p);
    return reset_rings(p->vm_fd, errp);
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

bool vm_dirty_probe_report_ok(const unsigned long *map, size_t words, unsigned long want)
{
    bool ok = words > 0 && (map[0] & ~1UL) == want;

    for (size_t w = 1; w < words; w++) {
        ok = ok && map[w] == 0;
    }
    return ok;
}

static bool probe_expect(const Probe *p, unsigned long want, const char *round, FerryError **errp)
{
    char got[128];

    if (!p->stray && vm_dirty_probe_report_ok(p->map, PROBE_WORDS, want)) {
        return true;
    }
    describe_bits(p->map, got, sizeof(got));
    ferry_error_setg(errp, "%s reported pages {%s}%s after the %s round, the guest wrote {%s}",
                     p->ring_size ? "the dirty ring" : "KVM_GET_DIRTY_LOG", got,
                     p->stray ? " and pages outside the probe's memory" : "", round,
                     want == ((1UL << 1) | (1UL << 3)) ? "1,3" : "3");
    return false;
}

static bool probe_setup(Probe *p, FerryError **errp)
{
    size_t mem_size = PROBE_PAGES * PAGE;
    struct kvm_sregs sregs;
    struct kvm_regs regs = { .rip = 0, .rflags = 2 };
    int r;

    p->kvm_fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (p->kvm_fd < 0) {
        ferry_error_setg_errno(errp, errno, "opening /dev/kvm");
        return false;
    }
    p->vm_fd = ioctl(p->kvm_fd, KVM_CREATE_VM, 0);
    if (p->vm_fd < 0 || ioctl(p->vm_fd, KVM_SET_TSS_ADDR, (unsigned long)VM_TSS_ADDR) < 0) {
        ferry_error_setg_errno(errp, errno, "creating the probe VM");
        return false;
    }
    /* The same mode as the real VM (vm_new), so that the probe tests the path a migration takes. */
    if (p->ring_size) {
        if (!vm_enable_dirty_ring(p->vm_fd, p->ring_size, errp)) {
            return false;
        }
    } else if (ioctl(p->kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2) > 0) {
        struct kvm_enable_cap cap = {
            .cap = KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
            .args[0] = KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE,
        };
        p->manual = ioctl(p->vm_fd, KVM_ENABLE_CAP, &cap) == 0;
    }
    p->mem = mmap(NULL, mem_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p->mem == MAP_FAILED) {
        p->mem = NULL;
        ferry_error_setg_errno(errp, errno, "mapping the probe's memory");
        return false;
    }
    memcpy(p->mem, probe_code, sizeof(probe_code));
    struct kvm_userspace_memory_region region = {
        .slot = 0,
        .flags = KVM_MEM_LOG_DIRTY_PAGES,
        .guest_phys_addr = 0,
        .memory_size = mem_size,
        .userspace_addr = (uint64_t)(uintptr_t)p->mem,
    };
    if (ioctl(p->vm_fd, KVM_SET_USER_MEMORY_REGION, &region) < 0) {
        ferry_error_setg_errno(errp, errno, "KVM_SET_USER_MEMORY_REGION with KVM_MEM_LOG_DIRTY_PAGES");
        return false;
    }
    p->cpu_fd = ioctl(p->vm_fd, KVM_CREATE_VCPU, 0UL);
    r = ioctl(p->kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0);
    if (p->cpu_fd < 0 || r <= 0) {
        ferry_error_setg_errno(errp, errno, "creating the probe vCPU");
        return false;
    }
    p->run_size = (size_t)r;
    p->run = mmap(NULL, p->run_size, PROT_READ | PROT_WRITE, MAP_SHARED, p->cpu_fd, 0);
    if (p->run == MAP_FAILED) {
        p->run = NULL;
        ferry_error_setg_errno(errp, errno, "mapping the probe vCPU's kvm_run");
        return false;
    }
    if (p->ring_size && !(p->ring = vm_map_dirty_ring(p->cpu_fd, p->ring_size, errp))) {
        return false;
    }
    if (ioctl(p->cpu_fd, KVM_GET_SREGS, &sregs) < 0) {
        ferry_error_setg_errno(errp, errno, "KVM_GET_SREGS");
        return false;
    }
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    sregs.ds.base = 0;
    sregs.ds.selector = 0;
    if (ioctl(p->cpu_fd, KVM_SET_SREGS, &sregs) < 0 || ioctl(p->cpu_fd, KVM_SET_REGS, &regs) < 0) {
        ferry_error_setg_errno(errp, errno, "setting the probe vCPU's registers");
        return false;
    }
    return true;
}

static void probe_close(Probe *p)
{
    if (p->ring) {
        munmap(p->ring, (size_t)p->ring_size * sizeof(struct kvm_dirty_gfn));
    }
    if (p->run) {
        munmap(p->run, p->run_size);
    }
    if (p->cpu_fd >= 0) {
        close(p->cpu_fd);
    }
    if (p->vm_fd >= 0) {
        close(p->vm_fd);
    }
    if (p->kvm_fd >= 0) {
        close(p->kvm_fd);
    }
    if (p->mem) {
        munmap(p->mem, PROBE_PAGES * PAGE);
    }
}

/* @ring_size entries per ring, or 0 for the bitmap. */
static bool probe(uint32_t ring_size, FerryError **errp)
{
    Probe p = { .kvm_fd = -1, .vm_fd = -1, .cpu_fd = -1, .ring_size = ring_size };
    bool ok = false;

    if (!probe_setup(&p, errp)) {
        goto out;
    }
    /* Pages written before the log is read once (KVM populating the code page) are not the guest's: start from
     * an empty log. */
    if (!probe_harvest(&p, errp) || !probe_run_to_hlt(&p, errp) || !probe_harvest(&p, errp) ||
        !probe_expect(&p, (1UL << 1) | (1UL << 3), "first", errp) || !probe_run_to_hlt(&p, errp) ||
        !probe_harvest(&p, errp) || !probe_expect(&p, 1UL << 3, "second", errp)) {
        goto out;
    }
    if (p.mem[0x1000] != 1 || p.mem[0x3000] != 2) {
        ferry_error_setg(errp, "the probe guest's writes did not reach its memory");
        goto out;
    }
    ok = true;
out:
    probe_close(&p);
    return ok;
}

bool vm_dirty_log_probe(FerryError **errp)
{
    return probe(0, errp);
}

/*
 * The ring past full. KVM asks a vCPU to leave once its ring is nearly full (its "soft limit", a reserve of
 * entries below the size) and lets it in again only once it is reset; a KVM that goes on running the vCPU, or
 * goes on writing guest memory for it, past the reserve pushes entries into a full ring, over entries not yet
 * collected or reset (the kernel WARNs in kvm_dirty_ring_push). Those pages are lost, and KVM's indexes no longer
 * match the collector's: the entries it publishes then start past where the collection stopped, with invalid
 * ones in between, and its reset stops at an invalid one, so the ring fills for good. Seen on this project's
 * machine (Linux 6.18 with the kvm_pvm module, where instruction emulation writes guest memory in an exit loop
 * that does not stop at the soft limit; docs/vm.md). Nothing in userspace can recover the lost entries, so the
 * probe must catch it: a guest writes WRAP_PAGES pages in order, cyclically, for WRAP_CYCLES cycles, on a ring of
 * VM_DIRTY_RING_MIN entries (what goes wrong is KVM's exit path, not a size: the smallest ring fills the most
 * often for the least memory). As the cycle is twice the ring, every page's last entry has been collected and
 * reset (its page write-protected again) before the guest comes back to it, so every write is one entry, and
 * the entries, collected in order at each KVM_EXIT_DIRTY_RING_FULL as vm.c collects, must be exactly the pages
 * in the order written. The code page may appear too (an emulated KVM reports it), and so may the page written
 * last again (note_wrap_page): both are ignored.
 *
 * 32-bit flat protected mode (set through KVM_SET_SREGS, no paging), code at 0x1000, data pages from 1 MiB:
 *   bb 00 00 10 00       L0: mov $0x100000, %ebx
 *   89 03                L1: mov %eax, (%ebx)
 *   81 c3 00 10 00 00        add $0x1000, %ebx
 *   81 fb <end>              cmp $<end>, %ebx
 *   72 f0                    jb L1
 *   e6 80                    out %al, $0x80        (one exit per cycle, so that the probe sees progress)
 *   eb e7                    jmp L0
 */
#define WRAP_CODE 0x1000u
#define WRAP_DATA 0x100000u
#define WRAP_PAGES (2 * VM_DIRTY_RING_MIN)
/* A broken KVM was seen losing its place within 2-6 fills, but not in every run: many fills make it show. */
#define WRAP_CYCLES 32u
#define WRAP_MEM (WRAP_DATA + WRAP_PAGES * PAGE)

typedef struct Wrap {
    uint64_t next;       /* the page the next entry must name (slot offset) */
    uint64_t entries;    /* data entries taken in order */
    uint64_t bad_offset; /* the first entry out of order, with bad set */
    uint32_t bad_slot;
    bool bad;
} Wrap;

static void note_wrap_page(void *opaque, uint32_t slot, uint64_t offset)
{
    Wrap *w = opaque;

    uint64_t last = w->next == WRAP_DATA / PAGE ? WRAP_MEM / PAGE - 1 : w->next - 1;

    /* The code page; or the last page again: the write that filled the ring to its limit may not have retired
     * when KVM stopped the vCPU, and the reset write-protected its page again, so the retried write is a second
     * entry (seen with kvm-amd under scripts/kvm-emulated.sh). */
    if (w->bad || (slot == 0 && offset == WRAP_CODE / PAGE) || (slot == 0 && w->entries && offset == last)) {
        return;
    }
    if (slot != 0 || offset != w->next) {
        w->bad = true;
        w->bad_slot = slot;
        w->bad_offset = offset;
        return;
    }
    w->entries++;
    w->next = offset + 1 == WRAP_MEM / PAGE ? WRAP_DATA / PAGE : offset + 1;
}

static bool wrap_expect(const Wrap *w, FerryError **errp)
{
    if (w->bad) {
        ferry_error_setg(errp,
                         "KVM's dirty ring lost entries past a full ring: after %" PRIu64 " entries in the order "
                         "the guest wrote its pages it named slot %u page %" PRIu64 " where the guest wrote "
                         "page %" PRIu64 " next (KVM pushed entries into a full ring over ones not yet collected)",
                         w->entries, w->bad_slot, w->bad_offset, w->next);
        return false;
    }
    return true;
}

static bool wrap_probe(FerryError **errp)
{
    static const uint8_t head[] = { 0xbb, 0x00, 0x00, 0x10, 0x00, 0x89, 0x03, 0x81, 0xc3,
                                    0x00, 0x10, 0x00, 0x00, 0x81, 0xfb };
    static const uint8_t tail[] = { 0x72, 0xf0, 0xe6, 0x80, 0xeb, 0xe7 };
    const uint32_t end = WRAP_MEM;
    const uint32_t size = VM_DIRTY_RING_MIN;
    Probe p = { .kvm_fd = -1, .vm_fd = -1, .cpu_fd = -1, .ring_size = size };
    Wrap w = { .next = WRAP_DATA / PAGE };
    struct kvm_sregs sregs;
    struct kvm_regs regs = { .rip = WRAP_CODE, .rflags = 2 };
    uint32_t cycles = 0, fulls = 0;
    bool ok = false;
    int r;

    p.kvm_fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (p.kvm_fd < 0) {
        ferry_error_setg_errno(errp, errno, "opening /dev/kvm");
        goto out;
    }
    p.vm_fd = ioctl(p.kvm_fd, KVM_CREATE_VM, 0);
    if (p.vm_fd < 0 || ioctl(p.vm_fd, KVM_SET_TSS_ADDR, (unsigned long)VM_TSS_ADDR) < 0) {
        ferry_error_setg_errno(errp, errno, "creating the probe VM");
        goto out;
    }
    if (!vm_enable_dirty_ring(p.vm_fd, size, errp)) {
        goto out;
    }
    p.mem = mmap(NULL, WRAP_MEM, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p.mem == MAP_FAILED) {
        p.mem = NULL;
        ferry_error_setg_errno(errp, errno, "mapping the probe's memory");
        goto out;
    }
    memcpy(p.mem + WRAP_CODE, head, sizeof(head));
    memcpy(p.mem + WRAP_CODE + sizeof(head), &end, sizeof(end));
    memcpy(p.mem + WRAP_CODE + sizeof(head) + sizeof(end), tail, sizeof(tail));
    struct kvm_userspace_memory_region region = {
        .slot = 0,
        .flags = KVM_MEM_LOG_DIRTY_PAGES,
        .guest_phys_addr = 0,
        .memory_size = WRAP_MEM,
        .userspace_addr = (uint64_t)(uintptr_t)p.mem,
    };
    if (ioctl(p.vm_fd, KVM_SET_USER_MEMORY_REGION, &region) < 0) {
        ferry_error_setg_errno(errp, errno, "KVM_SET_USER_MEMORY_REGION with KVM_MEM_LOG_DIRTY_PAGES");
        goto out;
    }
    p.cpu_fd = ioctl(p.vm_fd, KVM_CREATE_VCPU, 0UL);
    r = ioctl(p.kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0);
    if (p.cpu_fd < 0 || r <= 0) {
        ferry_error_setg_errno(errp, errno, "creating the probe vCPU");
        goto out;
    }
    p.run_size = (size_t)r;
    p.run = mmap(NULL, p.run_size, PROT_READ | PROT_WRITE, MAP_SHARED, p.cpu_fd, 0);
    if (p.run == MAP_FAILED) {
        p.run = NULL;
        ferry_error_setg_errno(errp, errno, "mapping the probe vCPU's kvm_run");
        goto out;
    }
    if (!(p.ring = vm_map_dirty_ring(p.cpu_fd, size, errp))) {
        goto out;
    }
    if (ioctl(p.cpu_fd, KVM_GET_SREGS, &sregs) < 0) {
        ferry_error_setg_errno(errp, errno, "KVM_GET_SREGS");
        goto out;
    }
    struct kvm_segment seg = {
        .base = 0, .limit = 0xffffffff, .selector = 8, .type = 11, .present = 1, .s = 1, .db = 1, .g = 1,
    };
    sregs.cs = seg;
    seg.selector = 16;
    seg.type = 3;
    sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = seg;
    sregs.cr0 |= 1; /* PE */
    if (ioctl(p.cpu_fd, KVM_SET_SREGS, &sregs) < 0 || ioctl(p.cpu_fd, KVM_SET_REGS, &regs) < 0) {
        ferry_error_setg_errno(errp, errno, "setting the probe vCPU's registers");
        goto out;
    }
    while (cycles < WRAP_CYCLES) {
        if (ioctl(p.cpu_fd, KVM_RUN, 0) < 0) {
            if (errno == EINTR) {
                continue;
            }
            ferry_error_setg_errno(errp, errno, "KVM_RUN");
            goto out;
        }
        switch (p.run->exit_reason) {
        case KVM_EXIT_IO:
            cycles++;
            break;
        case KVM_EXIT_DIRTY_RING_FULL:
            /* As vm.c's ring_full: collect in order and reset; a full ring with nothing where the last
             * collection stopped is the lost place this probe is for. */
            fulls++;
            if (!ring_walk(p.ring, size, &p.fetch, note_wrap_page, &w)) {
                ferry_error_setg(errp,
                                 "KVM's dirty ring was full with no entry where the last collection stopped "
                                 "(entry %u), after %" PRIu64 " entries in order (KVM pushed entries into a full "
                                 "ring over ones not yet collected)",
                                 p.fetch, w.entries);
                goto out;
            }
            if (!wrap_expect(&w, errp) || !reset_rings(p.vm_fd, errp)) {
                goto out;
            }
            break;
        default:
            ferry_error_setg(errp, "the probe guest exited with reason %u", p.run->exit_reason);
            goto out;
        }
    }
    ring_walk(p.ring, size, &p.fetch, note_wrap_page, &w);
    if (!wrap_expect(&w, errp)) {
        goto out;
    }
    /* Every write is one entry (see above, repeats not counted): WRAP_CYCLES whole cycles, none of them lost. */
    if (w.entries != (uint64_t)WRAP_CYCLES * WRAP_PAGES || fulls == 0) {
        ferry_error_setg(errp,
                         "KVM's dirty ring reported %" PRIu64 " page writes where the guest made %u, filling "
                         "%u times",
                         w.entries, WRAP_CYCLES * WRAP_PAGES, fulls);
        goto out;
    }
    ok = true;
out:
    if (p.mem) {
        munmap(p.mem, WRAP_MEM);
        p.mem = NULL;
    }
    probe_close(&p);
    return ok;
}

bool vm_dirty_ring_pages_probe(uint32_t entries, FerryError **errp)
{
    return probe(entries, errp);
}

/* The ring-past-full verdict is the KVM's, not the size's, and a broken KVM does not fail every run of it: it is
 * taken once per process, so that every VM of the process (and every check of a test) gets the same answer. */
static pthread_once_t wrap_once = PTHREAD_ONCE_INIT;
static FerryError *wrap_err; /* NULL: the ring passed */

static void wrap_probe_once(void)
{
    wrap_probe(&wrap_err);
}

bool vm_dirty_ring_probe(uint32_t entries, FerryError **errp)
{
    if (!probe(entries, errp)) {
        return false;
    }
    pthread_once(&wrap_once, wrap_probe_once);
    if (wrap_err) {
        ferry_error_setg(errp, "%s", ferry_error_msg(wrap_err));
        return false;
    }
    return true;
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

/* ---- The ring tracker ---- */

static bool ring_start(void *opaque, FerryError **errp)
{
    Vm *vm = opaque;
    uint64_t pages = vm->cfg.ram_size / PAGE;

    /* The pending bitmap first, so that no entry collected from the moment the slots log is dropped (entries left
     * from an earlier arming are noted too: over-reporting is harmless). */
    pthread_mutex_lock(&vm->ring_lock);
    if (!vm->ring_pending) {
        vm->ring_pending = calloc((size_t)((pages + BITS - 1) / BITS), sizeof(unsigned long));
        vm->ring_pages = pages;
    }
    if (!vm->ring_pending) {
        pthread_mutex_unlock(&vm->ring_lock);
        ferry_error_setg(errp, "out of memory for the dirty ring's pending pages");
        return false;
    }
    /* Under ring_lock, as the limit thread switches the slots' logging under it (vm_limit_counting_locked). */
    bool ok = vm_set_slot_flags(vm, KVM_MEM_LOG_DIRTY_PAGES, errp);
    pthread_mutex_unlock(&vm->ring_lock);
    return ok;
}

static bool ring_harvest(void *opaque, FerryRamBlock *b, unsigned long *bitmap, FerryError **errp)
{
    Vm *vm = opaque;
    bool ok;

    if (b != vm->ram) {
        return true; /* not guest RAM: nothing of KVM's writes there */
    }
    pthread_mutex_lock(&vm->ring_lock);
    ok = vm->ring_pending && collect_locked(vm, errp);
    if (ok) {
        size_t words = (size_t)((vm->ring_pages + BITS - 1) / BITS);

        for (size_t w = 0; w < words; w++) {
            bitmap[w] |= vm->ring_pending[w];
        }
        memset(vm->ring_pending, 0, words * sizeof(unsigned long));
    } else if (!vm->ring_pending) {
        ferry_error_setg(errp, "the dirty ring is harvested but not armed");
    }
    pthread_mutex_unlock(&vm->ring_lock);
    return ok;
}

/* The slots go on logging while the limit thread counts (a limit set, counts asked for): its entries are dropped
 * from here on, as before the tracker was armed. */
static void ring_stop(void *opaque)
{
    Vm *vm = opaque;

    pthread_mutex_lock(&vm->ring_lock);
    if (!vm_limit_counting_locked(vm)) {
        log_stop(vm);
    }
    free(vm->ring_pending);
    vm->ring_pending = NULL;
    pthread_mutex_unlock(&vm->ring_lock);
}

const FerryDirtyTrackerOps vm_dirty_ring_ops = {
    .name = "kvm-dirty-ring",
    .start = ring_start,
    .harvest = ring_harvest,
    .stop = ring_stop,
};
