/*
 * Booting and checking the guest. ferry-vm has no BIOS: it does the one thing a BIOS does before it boots a
 * sector, loading the first 512 bytes of the image at 0x7c00 and entering it in real mode at 0000:7c00 with DL =
 * 0x80 (the first hard disk), the other vCPUs waiting for INIT/SIPI as the in-kernel LAPIC leaves them. If the
 * image is the A-B guest (its parameter block's magic is there) and nobody patched its range, ferry-vm tells it
 * the range: every page from 1 MiB to the end of RAM below 4 GiB (what its 32-bit code can reach); unless the
 * image names a vCPU count, it tells it to cut the range into one slice per vCPU, so that every vCPU runs.
 *
 * The checker is QEMU's migration test's (tests/qtest/migration-test.c, check_guests_ram), reimplemented and
 * applied to each slice: walking a slice upwards, the first byte of every page equals the previous one, except at
 * most once where it is one less (that vCPU's pass was interrupted there). It reads the range and the slice count
 * from the guest's own parameter block, so a destination checks what its source's guest was told. It does not
 * look at the rest of the pages (neither does QEMU's).
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "vm.h"

#define PAGE 4096u
#define AB_START (UINT64_C(1) << 20)

static bool load_sector(Vm *vm, uint8_t *dst, FerryError **errp)
{
    uint8_t buf[VM_BOOT_SIZE];
    ssize_t n = 0;
    int fd;

    if (!vm->cfg.drive) {
        memcpy(dst, vm_ab_guest, vm_ab_guest_len < VM_BOOT_SIZE ? vm_ab_guest_len : VM_BOOT_SIZE);
        return true;
    }
    fd = open(vm->cfg.drive, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        ferry_error_setg_errno(errp, errno, "opening the drive %s", vm->cfg.drive);
        return false;
    }
    while (n < (ssize_t)sizeof(buf)) {
        ssize_t r = read(fd, buf + n, sizeof(buf) - (size_t)n);

        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r <= 0) {
            break;
        }
        n += r;
    }
    close(fd);
    if (n != (ssize_t)sizeof(buf) || buf[510] != 0x55 || buf[511] != 0xaa) {
        ferry_error_setg(errp, "%s is not a boot sector (512 bytes ending in 55 aa)", vm->cfg.drive);
        return false;
    }
    memcpy(dst, buf, sizeof(buf));
    return true;
}

bool vm_boot(Vm *vm, FerryError **errp)
{
    uint8_t *sector = vm_gpa_to_host(vm, VM_BOOT_ADDR, VM_BOOT_SIZE);
    uint8_t *params;

    if (vm->cfg.kernel) {
        return vm_boot_linux(vm, errp);
    }
    if (!sector) {
        ferry_error_setg(errp, "guest RAM does not reach the boot sector at 0x7c00");
        return false;
    }
    if (!load_sector(vm, sector, errp)) {
        return false;
    }
    params = sector + (VM_AB_PARAMS_ADDR - VM_BOOT_ADDR);
    if (memcmp(params, VM_AB_MAGIC, 4) == 0) {
        uint64_t top = vm->lowmem;

        if (vm_rd32(params + 8) == 0) {
            if (top <= AB_START) {
                ferry_error_setg(errp, "the A-B guest needs RAM above 1 MiB (-m 2M at least)");
                return false;
            }
            vm_wr32(params + 4, (uint32_t)AB_START);
            vm_wr32(params + 8, (uint32_t)((top - AB_START) / PAGE));
        }
        if (vm_rd32(params + 16) == 0) {
            vm_wr32(params + 16, vm->cfg.smp);
        }
        if (vm_rd32(params + 12) == 0) {
            /* About one progress character per 256 MiB written, unless -ab-every says otherwise. */
            uint64_t range = (uint64_t)vm_rd32(params + 8) * PAGE;
            uint32_t every = vm->cfg.ab_every ? vm->cfg.ab_every : (uint32_t)((UINT64_C(256) << 20) / range);

            vm_wr32(params + 12, every ? every : 1);
        }
    }

    /* vCPU 0 where a BIOS hands over; the others stay in their reset state, waiting for INIT/SIPI. */
    Vcpu *cpu = &vm->vcpus[0];
    struct kvm_sregs sregs;
    struct kvm_regs regs = { .rip = VM_BOOT_ADDR, .rflags = 2, .rdx = 0x80, .rsp = VM_BOOT_ADDR };

    if (ioctl(cpu->fd, KVM_GET_SREGS, &sregs) < 0) {
        vm_error_ioctl(errp, "KVM_GET_SREGS");
        return false;
    }
    struct kvm_segment *segs[] = { &sregs.cs, &sregs.ds, &sregs.es, &sregs.fs, &sregs.gs, &sregs.ss };
    for (size_t i = 0; i < sizeof(segs) / sizeof(segs[0]); i++) {
        segs[i]->base = 0;
        segs[i]->selector = 0;
        segs[i]->limit = 0xffff;
    }
    return vm_vcpu_set_entry(cpu, &sregs, &regs, errp);
}

bool vm_vcpu_set_entry(Vcpu *cpu, const struct kvm_sregs *sregs, const struct kvm_regs *regs, FerryError **errp)
{
    if (ioctl(cpu->fd, KVM_SET_SREGS, sregs) < 0) {
        vm_error_ioctl(errp, "KVM_SET_SREGS");
        return false;
    }
    if (ioctl(cpu->fd, KVM_SET_REGS, regs) < 0) {
        vm_error_ioctl(errp, "KVM_SET_REGS");
        return false;
    }
    return true;
}

static void add_detail(VmCheck *res, const char *fmt, ...) FERRY_PRINTF(2, 3);

static void add_detail(VmCheck *res, const char *fmt, ...)
{
    size_t len = strlen(res->detail);
    va_list ap;

    if (len + 2 >= sizeof(res->detail)) {
        return;
    }
    if (len) {
        res->detail[len++] = ';';
        res->detail[len++] = ' ';
        res->detail[len] = '\0';
    }
    va_start(ap, fmt);
    vsnprintf(res->detail + len, sizeof(res->detail) - len, fmt, ap);
    va_end(ap);
}

void vm_ab_slice(uint64_t start, uint64_t npages, unsigned n, unsigned i, uint64_t *slice_start,
                 uint64_t *slice_pages)
{
    uint64_t per = npages / n;

    *slice_start = start + (uint64_t)i * per * PAGE;
    *slice_pages = i + 1 == n ? npages - (uint64_t)i * per : per;
}

/* QEMU's check_guests_ram over one slice; mismatches are described in @res->detail (the first four overall). */
static void check_slice(Vm *vm, VmCheckSlice *sl, VmCheck *res)
{
    uint8_t last;

    if (sl->pages == 0) {
        return; /* more vCPUs than pages: this one has nothing to write */
    }
    last = *(const uint8_t *)vm_gpa_to_host(vm, sl->start, 1);
    sl->first_byte = last;
    for (uint64_t i = 1; i < sl->pages; i++) {
        uint8_t b = *(const uint8_t *)vm_gpa_to_host(vm, sl->start + i * PAGE, 1);

        if (b == last) {
            continue;
        }
        if ((uint8_t)(b + 1) == last && !sl->edge) {
            /* The vCPU stopped while incrementing the page before this one. */
            sl->edge = true;
            sl->edge_page = i;
            last = b;
            continue;
        }
        if (res->mismatches < 4) {
            add_detail(res, "page 0x%" PRIx64 ": first byte 0x%02x after 0x%02x%s", sl->start + i * PAGE, b, last,
                       sl->edge ? " (past the edge)" : "");
        }
        sl->mismatches++;
        res->mismatches++;
        last = b;
    }
}

bool vm_ab_check(Vm *vm, VmCheck *res, FerryError **errp)
{
    const uint8_t *params;
    uint64_t start, npages;
    uint32_t cpus;
    bool ok = false;

    memset(res, 0, sizeof(*res));
    vm_hold(vm);
    params = vm_gpa_to_host(vm, VM_AB_PARAMS_ADDR, VM_AB_PARAMS_SIZE);
    if (!params || memcmp(params, VM_AB_MAGIC, 4) != 0) {
        ferry_error_setg(errp, "the guest is not the A-B guest (no parameter block at 0x%x)", VM_AB_PARAMS_ADDR);
        goto out;
    }
    start = vm_rd32(params + 4);
    npages = vm_rd32(params + 8);
    cpus = vm_rd32(params + 16);
    if (npages == 0 || !vm_gpa_to_host(vm, start, npages * PAGE)) {
        ferry_error_setg(errp, "the A-B guest's range (0x%" PRIx64 ", %" PRIu64 " pages) is not RAM", start,
                         npages);
        goto out;
    }
    if (cpus > VM_MAX_SMP) {
        ferry_error_setg(errp, "the A-B guest was told %" PRIu32 " vCPUs, more than the %u this checker handles",
                         cpus, VM_MAX_SMP);
        goto out;
    }
    res->start = start;
    res->pages = npages;
    res->nslices = cpus ? cpus : 1;
    res->first_byte = *(const uint8_t *)vm_gpa_to_host(vm, start, 1);
    for (unsigned i = 0; i < res->nslices; i++) {
        VmCheckSlice *sl = &res->slices[i];

        vm_ab_slice(start, npages, res->nslices, i, &sl->start, &sl->pages);
        check_slice(vm, sl, res);
        if (sl->edge && !res->edge) {
            res->edge = true;
            res->edge_page = (sl->start - start) / PAGE + sl->edge_page;
        }
    }
    if (res->mismatches > 4) {
        add_detail(res, "%" PRIu64 " more", res->mismatches - 4);
    }
    ok = true;
out:
    vm_release(vm);
    return ok;
}
