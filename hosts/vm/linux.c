/*
 * Booting a Linux kernel (-kernel bzImage, -initrd, -append) with the 32-bit boot protocol of
 * Documentation/arch/x86/boot.rst, as a boot loader without a BIOS does: the image's setup header is copied into a
 * zeroed "zero page" (struct boot_params) at 0x10000 and filled in (loader type, command line at 0x20000, initrd
 * at the top of RAM below 4 GiB and below the kernel's initrd_addr_max, an e820 map of guest RAM); the protected-
 * mode kernel is loaded at 1 MiB; vCPU 0 enters it at code32_start in 32-bit protected mode, paging off,
 * interrupts off, %esi pointing at the zero page, with flat code and data segments at selectors 0x10 and 0x18 of a
 * GDT at 0x500 (what the protocol asks for). The setup code (real mode, BIOS calls) is not run: ferry-vm has no
 * BIOS.
 *
 * The machine has no ACPI tables; an MP table (as a BIOS leaves one) lists the vCPUs, the IOAPIC and the buses,
 * so Linux starts every vCPU itself and finds the PIT, the KVM clock, the 16550 at 0x3f8 as ttyS0 and, by
 * probing configuration mechanism #1, the PCI bus with its NICs. That is enough for a console, a network and a
 * shell on an initramfs, which is what this is for: a real OS running (and migrating)
 * in ferry-vm. It is not a general loader: no 64-bit entry, no EFI handover, no setup_data.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "vm.h"

/* Guest-physical places (all in the first MiB, below the kernel). */
#define LINUX_GDT_ADDR 0x500u
#define LINUX_ZERO_PAGE 0x10000u
#define LINUX_CMDLINE 0x20000u
#define LINUX_CMDLINE_MAX 0x10000u
#define LINUX_KERNEL_ADDR 0x100000u

/* Offsets in struct boot_params and its setup header (boot.rst, "The real-mode kernel header"). */
#define BP_E820_ENTRIES 0x1e8u
#define BP_HDR 0x1f1u          /* setup_sects: the header starts here */
#define HDR_VID_MODE 0x1fau
#define HDR_JUMP 0x200u        /* the header ends at 0x202 + the byte at 0x201 */
#define HDR_MAGIC 0x202u       /* "HdrS" */
#define HDR_VERSION 0x206u
#define HDR_TYPE_OF_LOADER 0x210u
#define HDR_LOADFLAGS 0x211u
#define HDR_CODE32_START 0x214u
#define HDR_RAMDISK_IMAGE 0x218u
#define HDR_RAMDISK_SIZE 0x21cu
#define HDR_CMD_LINE_PTR 0x228u
#define HDR_INITRD_ADDR_MAX 0x22cu
#define HDR_CMDLINE_SIZE 0x238u
#define HDR_INIT_SIZE 0x260u   /* protocol 2.10: the memory the kernel needs from its load address on */
#define BP_E820_TABLE 0x2d0u

#define LOADED_HIGH 0x01u      /* loadflags: the protected-mode kernel is loaded at 0x100000 */
#define E820_RAM 1u
#define E820_RESERVED 2u

/* Read the whole of @path into malloc'd memory. */
static uint8_t *read_file(const char *what, const char *path, size_t *len, FerryError **errp)
{
    struct stat st;
    uint8_t *buf = NULL;
    size_t n = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);

    if (fd < 0) {
        ferry_error_setg_errno(errp, errno, "opening the %s %s", what, path);
        return NULL;
    }
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size <= 0) {
        ferry_error_setg(errp, "the %s %s is not a non-empty regular file", what, path);
        goto fail;
    }
    buf = malloc((size_t)st.st_size);
    if (!buf) {
        ferry_error_setg(errp, "out of memory reading the %s %s", what, path);
        goto fail;
    }
    while (n < (size_t)st.st_size) {
        ssize_t r = read(fd, buf + n, (size_t)st.st_size - n);

        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r <= 0) {
            ferry_error_setg_errno(errp, r < 0 ? errno : EIO, "reading the %s %s", what, path);
            goto fail;
        }
        n += (size_t)r;
    }
    close(fd);
    *len = n;
    return buf;
fail:
    free(buf);
    close(fd);
    return NULL;
}

static void e820_add(uint8_t *zp, uint64_t addr, uint64_t size, uint32_t type)
{
    uint8_t n = zp[BP_E820_ENTRIES];
    uint8_t *e = zp + BP_E820_TABLE + 20u * n;

    vm_wr64(e, addr);
    vm_wr64(e + 8, size);
    vm_wr32(e + 16, type);
    zp[BP_E820_ENTRIES] = (uint8_t)(n + 1);
}

/*
 * The MP table (Intel's MultiProcessor Specification 1.4) that tells Linux about every vCPU, the IOAPIC and how
 * the ISA and PCI interrupts reach it, where a BIOS would leave it: the floating pointer at the start of the BIOS area
 * (0xf0000, reserved in the e820 map), the configuration table right after it. Without it Linux sees one CPU and
 * no IOAPIC. The routing is KVM's default one: ISA IRQ n goes to IOAPIC pin n (the PIT included), the PIC reaches
 * LINT0 as ExtINT, NMIs LINT1; a PCI device's INTA# goes to its pin from 16 up (pci.c).
 */
#define MP_FLOAT_ADDR 0xf0000u
#define MP_TABLE_ADDR (MP_FLOAT_ADDR + 16u)
#define MP_IOAPIC_ADDR 0xfec00000u
#define MP_LAPIC_ADDR 0xfee00000u

static uint8_t mp_checksum(const uint8_t *p, size_t len)
{
    uint8_t sum = 0;

    for (size_t i = 0; i < len; i++) {
        sum = (uint8_t)(sum + p[i]);
    }
    return (uint8_t)-sum;
}

#define MP_BUS_PCI 0 /* the MP bus id of a PCI bus is its bus number: Linux matches them */
#define MP_BUS_ISA 1

/* An 8-byte interrupt entry: type 3 (I/O) or 4 (local), interrupt type, source bus and its IRQ (ISA: the IRQ
 * number; PCI: slot << 2 | pin - 1), destination, pin. */
static uint8_t *mp_irq(uint8_t *e, uint8_t entry, uint8_t kind, uint8_t bus, uint8_t irq, uint8_t dest,
                       uint8_t pin)
{
    e[0] = entry;
    e[1] = kind;
    vm_wr16(e + 2, 0); /* polarity and trigger as the bus says (ISA: high, edge; PCI: low, level) */
    e[4] = bus;
    e[5] = irq;
    e[6] = dest;
    e[7] = pin;
    return e + 8;
}

static void write_mptable(Vm *vm)
{
    uint8_t *fp = vm_gpa_to_host(vm, MP_FLOAT_ADDR, 0x10000);
    uint8_t *t = fp + (MP_TABLE_ADDR - MP_FLOAT_ADDR), *e = t + 44;
    uint8_t ioapic_id = (uint8_t)vm->nvcpus; /* after the LAPIC ids 0..n-1 */
    uint16_t count = 0;

    memset(fp, 0, 0x10000);
    for (unsigned i = 0; i < vm->nvcpus; i++, count++) {
        e[0] = 0;                        /* processor */
        e[1] = (uint8_t)i;               /* its LAPIC id (vm.c puts the vCPU index there) */
        e[2] = 0x14;                     /* LAPIC version: an integrated xAPIC */
        e[3] = i == 0 ? 0x3 : 0x1;       /* enabled, and the boot processor */
        vm_wr32(e + 4, 0x600);              /* family 6 */
        vm_wr32(e + 8, 0x201);              /* FPU, APIC */
        e += 20;
    }
    memcpy(e, "\x01\x00PCI   ", 8);     /* bus 0: PCI (pci.c) */
    e[1] = MP_BUS_PCI;
    memcpy(e + 8, "\x01\x00ISA   ", 8);
    e[9] = MP_BUS_ISA;
    e += 16;
    count += 2;
    e[0] = 2;                            /* the IOAPIC */
    e[1] = ioapic_id;
    e[2] = 0x11;
    e[3] = 1;                            /* enabled */
    vm_wr32(e + 4, MP_IOAPIC_ADDR);
    e += 8;
    count++;
    for (uint8_t irq = 0; irq < 16; irq++, count++) {
        e = mp_irq(e, 3, 0 /* INT */, MP_BUS_ISA, irq, ioapic_id, irq);
    }
    /* Each PCI device's INTA# on its own pin from 16 up (pci.c drives it there). */
    for (unsigned slot = 1; vm->pci && slot < VM_PCI_SLOTS; slot++) {
        if (pci_slot_has_intx(vm->pci, slot)) {
            e = mp_irq(e, 3, 0 /* INT */, MP_BUS_PCI, (uint8_t)(slot << 2), ioapic_id, (uint8_t)pci_slot_gsi(slot));
            count++;
        }
    }
    e = mp_irq(e, 4, 3 /* ExtINT */, MP_BUS_ISA, 0, 0xff, 0);
    e = mp_irq(e, 4, 1 /* NMI */, MP_BUS_ISA, 0, 0xff, 1);
    count += 2;

    memcpy(t, "PCMP", 4);
    vm_wr16(t + 4, (uint32_t)(e - t));
    t[6] = 4;                            /* specification 1.4 */
    memcpy(t + 8, "FERRY   ", 8);
    memcpy(t + 16, "FERRY-VM    ", 12);
    vm_wr16(t + 34, count);
    vm_wr32(t + 36, MP_LAPIC_ADDR);
    t[7] = mp_checksum(t, (size_t)(e - t));

    memcpy(fp, "_MP_", 4);
    vm_wr32(fp + 4, MP_TABLE_ADDR);
    fp[8] = 1;                           /* 16 bytes */
    fp[9] = 4;
    fp[10] = mp_checksum(fp, 16);
}

/* vCPU 0 at the 32-bit entry: flat segments from the GDT at LINUX_GDT_ADDR, %esi = the zero page. */
static bool enter_protected(Vm *vm, uint32_t entry, FerryError **errp)
{
    static const uint64_t gdt[4] = {
        0,
        0,
        UINT64_C(0x00cf9b000000ffff), /* 0x10: code, base 0, 4 GiB, 32-bit, execute/read, accessed */
        UINT64_C(0x00cf93000000ffff), /* 0x18: data, base 0, 4 GiB, 32-bit, read/write, accessed */
    };
    uint8_t *g = vm_gpa_to_host(vm, LINUX_GDT_ADDR, sizeof(gdt));
    Vcpu *cpu = &vm->vcpus[0];
    struct kvm_sregs sregs;
    struct kvm_regs regs = { .rip = entry, .rflags = 2, .rsi = LINUX_ZERO_PAGE };
    struct kvm_segment code = {
        .base = 0, .limit = 0xffffffff, .selector = 0x10, .type = 11, .present = 1, .dpl = 0, .db = 1, .s = 1,
        .l = 0, .g = 1,
    };
    struct kvm_segment data = code;

    for (unsigned i = 0; i < 4; i++) {
        vm_wr64(g + 8 * i, gdt[i]);
    }
    data.selector = 0x18;
    data.type = 3;
    if (ioctl(cpu->fd, KVM_GET_SREGS, &sregs) < 0) {
        vm_error_ioctl(errp, "KVM_GET_SREGS");
        return false;
    }
    sregs.cs = code;
    sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = data;
    sregs.gdt.base = LINUX_GDT_ADDR;
    sregs.gdt.limit = sizeof(gdt) - 1;
    /* Protection on, paging off; caches on (the reset value has CD and NW set). */
    sregs.cr0 = (sregs.cr0 | 0x1u) & ~(UINT64_C(1) << 30 | UINT64_C(1) << 29);
    sregs.cr4 = 0;
    sregs.efer = 0;
    return vm_vcpu_set_entry(cpu, &sregs, &regs, errp);
}

bool vm_boot_linux(Vm *vm, FerryError **errp)
{
    const VmConfig *cfg = &vm->cfg;
    size_t klen = 0, ilen = 0, setup_len, hdr_end, clen;
    uint8_t *kernel = NULL, *initrd = NULL, *zp, *dst;
    uint32_t version, cmdline_max, initrd_max, setup_sects;
    uint64_t initrd_addr = 0;
    bool ok = false;

    kernel = read_file("kernel", cfg->kernel, &klen, errp);
    if (!kernel) {
        return false;
    }
    if (klen < 0x1000 || vm_rd32(kernel + HDR_MAGIC) != 0x53726448u) {
        ferry_error_setg(errp, "the kernel %s is not a bzImage (no \"HdrS\" setup header)", cfg->kernel);
        goto out;
    }
    version = vm_rd16(kernel + HDR_VERSION);
    if (version < 0x0206 || !(kernel[HDR_LOADFLAGS] & LOADED_HIGH)) {
        ferry_error_setg(errp, "the kernel %s speaks boot protocol %u.%02u without LOADED_HIGH; 2.06 or later, "
                         "a bzImage, is needed", cfg->kernel, version >> 8, version & 0xff);
        goto out;
    }
    setup_sects = kernel[BP_HDR] ? kernel[BP_HDR] : 4;
    setup_len = (size_t)(setup_sects + 1) * 512;
    hdr_end = 0x202 + kernel[HDR_JUMP + 1];
    if (setup_len >= klen || hdr_end > setup_len || hdr_end > 0x1000) {
        ferry_error_setg(errp, "the kernel %s has a setup part of %zu bytes in a file of %zu", cfg->kernel,
                         setup_len, klen);
        goto out;
    }
    dst = vm_gpa_to_host(vm, LINUX_KERNEL_ADDR, klen - setup_len);
    if (!dst) {
        ferry_error_setg(errp, "the kernel (%zu bytes at 1 MiB) does not fit in guest RAM", klen - setup_len);
        goto out;
    }
    memcpy(dst, kernel + setup_len, klen - setup_len);

    zp = vm_gpa_to_host(vm, LINUX_ZERO_PAGE, 4096);
    memset(zp, 0, 4096);
    memcpy(zp + BP_HDR, kernel + BP_HDR, hdr_end - BP_HDR);
    zp[HDR_TYPE_OF_LOADER] = 0xff; /* "undefined" loader */
    vm_wr16(zp + HDR_VID_MODE, 0xffff); /* "normal" */

    cmdline_max = vm_rd32(kernel + HDR_CMDLINE_SIZE);
    if (cmdline_max == 0 || cmdline_max >= LINUX_CMDLINE_MAX) {
        cmdline_max = LINUX_CMDLINE_MAX - 1;
    }
    clen = cfg->append ? strlen(cfg->append) : 0;
    if (clen > cmdline_max) {
        ferry_error_setg(errp, "-append: the command line has %zu bytes, the kernel takes at most %" PRIu32, clen,
                         cmdline_max);
        goto out;
    }
    dst = vm_gpa_to_host(vm, LINUX_CMDLINE, clen + 1);
    memcpy(dst, cfg->append ? cfg->append : "", clen + 1);
    vm_wr32(zp + HDR_CMD_LINE_PTR, LINUX_CMDLINE);

    if (cfg->initrd) {
        initrd = read_file("initrd", cfg->initrd, &ilen, errp);
        if (!initrd) {
            goto out;
        }
        initrd_max = vm_rd32(kernel + HDR_INITRD_ADDR_MAX);
        uint64_t top = vm->lowmem < (uint64_t)initrd_max + 1 ? vm->lowmem : (uint64_t)initrd_max + 1;
        /* Above what the kernel needs to decompress and start in place, not just above its file. */
        uint64_t need = version >= 0x020a ? vm_rd32(kernel + HDR_INIT_SIZE) : 0;
        uint64_t kernel_end = LINUX_KERNEL_ADDR + (need > klen - setup_len ? need : klen - setup_len);

        if (ilen > top || ((top - ilen) & ~UINT64_C(0xfff)) < kernel_end) {
            ferry_error_setg(errp, "the initrd (%zu bytes) does not fit in guest RAM between the kernel (up to "
                             "0x%" PRIx64 ") and 0x%" PRIx64 ": give more -m", ilen, kernel_end, top);
            goto out;
        }
        initrd_addr = (top - ilen) & ~UINT64_C(0xfff);
        memcpy(vm_gpa_to_host(vm, initrd_addr, ilen), initrd, ilen);
        vm_wr32(zp + HDR_RAMDISK_IMAGE, (uint32_t)initrd_addr);
        vm_wr32(zp + HDR_RAMDISK_SIZE, (uint32_t)ilen);
    }

    /* The map a BIOS would report for this RAM: base memory less the EBDA, the BIOS area reserved, the rest. */
    e820_add(zp, 0, 0x9fc00, E820_RAM);
    e820_add(zp, 0x9fc00, 0x400, E820_RESERVED);
    e820_add(zp, 0xf0000, 0x10000, E820_RESERVED);
    e820_add(zp, 0x100000, vm->lowmem - 0x100000, E820_RAM);
    if (vm->highmem) {
        e820_add(zp, VM_HIGHMEM_BASE, vm->highmem, E820_RAM);
    }
    write_mptable(vm);
    /* The kernel was loaded at 1 MiB, so that is where it is entered, whatever its header proposed. */
    vm_wr32(zp + HDR_CODE32_START, LINUX_KERNEL_ADDR);
    ok = enter_protected(vm, LINUX_KERNEL_ADDR, errp);
out:
    free(kernel);
    free(initrd);
    return ok;
}
