/*
 * ferry-vm's PCI bus: bus 0 reached through configuration mechanism #1 (the address register at 0xcf8, the data
 * window at 0xcfc..0xcff), as on QEMU's pc machine and as Linux probes it when there is no ACPI. It holds a host
 * bridge at 00:00.0 (Linux's "PCI: Using configuration type 1" sanity check wants a host bridge on bus 0) and
 * the devices ferry-vm adds (the virtio-net NIC), each with a 256-byte configuration header of type 0.
 *
 * What is modelled: the identification registers (read-only), the command register (I/O, memory, bus master,
 * INTx disable), one I/O BAR per device (BAR0: sized the standard way, writing all ones and reading the mask
 * back; pre-assigned at start-up as firmware leaves it, so that the guest need not assign it), the interrupt
 * line and pin, and the interrupt status bit. A device's INTx pin is wired to its own IOAPIC pin from 16 up, as
 * the MP table (linux.c) tells the guest. Not modelled: memory BARs, expansion ROMs, capabilities (so no MSI),
 * bridges, other buses; an access to an absent device reads all ones, as on real hardware.
 *
 * The writable registers of every device migrate in the "pci" section; the identification registers are
 * checked on load, so that a destination with another set of devices refuses the stream.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>

#include "vm.h"

#define CONFIG_ADDRESS 0xcf8u
#define CONFIG_DATA 0xcfcu
#define CONFIG_ENABLE 0x80000000u

/* Header fields (the PCI Local Bus Specification 3.0, 6.1). */
#define PCI_VENDOR_ID 0x00
#define PCI_DEVICE_ID 0x02
#define PCI_COMMAND 0x04
#define PCI_STATUS 0x06
#define PCI_REVISION 0x08
#define PCI_CLASS_PROG 0x09
#define PCI_HEADER_TYPE 0x0e
#define PCI_BAR0 0x10
#define PCI_SUBSYSTEM_VENDOR_ID 0x2c
#define PCI_SUBSYSTEM_ID 0x2e
#define PCI_INTERRUPT_LINE 0x3c
#define PCI_INTERRUPT_PIN 0x3d
#define PCI_COMMAND_IO 0x0001u
#define PCI_COMMAND_MEMORY 0x0002u
#define PCI_COMMAND_MASTER 0x0004u
#define PCI_COMMAND_INTX_DISABLE 0x0400u
#define PCI_STATUS_INTERRUPT 0x0008u
#define PCI_BAR_IO 0x1u

/* The host bridge: Red Hat's id for QEMU's generic host bridge, which Linux has no quirk for. */
#define HOST_BRIDGE_VENDOR 0x1b36u
#define HOST_BRIDGE_DEVICE 0x0008u

struct PciDev {
    PciBus *bus;
    unsigned slot;
    char name[32];
    uint8_t cfg[256];
    uint8_t wmask[256];    /* the bits a guest may write */
    uint32_t bar_size;     /* of BAR0 (an I/O BAR, a power of two), 0 for none */
    PciIoFn io;
    void *opaque;
    bool irq_pending;      /* the device's view of its INTx pin (the bus applies INTx disable) */
    bool irq_level;        /* what the IOAPIC pin was last driven to */
};

struct PciBus {
    Vm *vm;
    pthread_mutex_t lock;  /* the address register and every device's configuration header */
    uint32_t address;
    PciDev *devs[VM_PCI_SLOTS];
};

static void put_cfg16(PciDev *d, unsigned off, uint32_t v, uint32_t wmask)
{
    vm_wr16(d->cfg + off, v);
    vm_wr16(d->wmask + off, wmask);
}

static PciDev *dev_new(PciBus *bus, unsigned slot, const PciDevInfo *info)
{
    PciDev *d = calloc(1, sizeof(*d));

    if (!d) {
        return NULL;
    }
    d->bus = bus;
    d->slot = slot;
    snprintf(d->name, sizeof(d->name), "%s", info->name);
    put_cfg16(d, PCI_VENDOR_ID, info->vendor, 0);
    put_cfg16(d, PCI_DEVICE_ID, info->device, 0);
    put_cfg16(d, PCI_COMMAND, 0, PCI_COMMAND_IO | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER | PCI_COMMAND_INTX_DISABLE);
    d->cfg[PCI_REVISION] = info->revision;
    d->cfg[PCI_CLASS_PROG] = (uint8_t)info->class_code;
    vm_wr16(d->cfg + PCI_CLASS_PROG + 1, info->class_code >> 8);
    d->cfg[PCI_HEADER_TYPE] = 0;
    put_cfg16(d, PCI_SUBSYSTEM_VENDOR_ID, info->subsystem_vendor, 0);
    put_cfg16(d, PCI_SUBSYSTEM_ID, info->subsystem, 0);
    d->wmask[PCI_INTERRUPT_LINE] = 0xff;
    return d;
}

PciBus *pci_bus_new(Vm *vm, FerryError **errp)
{
    PciBus *bus = calloc(1, sizeof(*bus));
    const PciDevInfo bridge = {
        .name = "host-bridge", .vendor = HOST_BRIDGE_VENDOR, .device = HOST_BRIDGE_DEVICE, .class_code = 0x060000,
    };

    if (!bus) {
        ferry_error_setg(errp, "out of memory");
        return NULL;
    }
    bus->vm = vm;
    pthread_mutex_init(&bus->lock, NULL);
    bus->devs[0] = dev_new(bus, 0, &bridge);
    if (!bus->devs[0]) {
        ferry_error_setg(errp, "out of memory");
        pci_bus_free(bus);
        return NULL;
    }
    return bus;
}

void pci_bus_free(PciBus *bus)
{
    if (!bus) {
        return;
    }
    for (unsigned i = 0; i < VM_PCI_SLOTS; i++) {
        free(bus->devs[i]);
    }
    pthread_mutex_destroy(&bus->lock);
    free(bus);
}

PciDev *pci_add_device(PciBus *bus, const PciDevInfo *info, PciIoFn io, void *opaque, FerryError **errp)
{
    unsigned slot = 1;

    while (slot < VM_PCI_SLOTS && bus->devs[slot]) {
        slot++;
    }
    if (slot == VM_PCI_SLOTS || slot > VM_PCI_MAX_INTX) {
        ferry_error_setg(errp, "no free PCI slot for %s", info->name);
        return NULL;
    }
    if (info->io_size < 4 || (info->io_size & (info->io_size - 1)) || info->io_size > 256) {
        ferry_error_setg(errp, "%s: I/O BAR size %" PRIu32 " is not a power of two from 4 to 256", info->name,
                         info->io_size);
        return NULL;
    }
    PciDev *d = dev_new(bus, slot, info);
    if (!d) {
        ferry_error_setg(errp, "out of memory");
        return NULL;
    }
    d->io = io;
    d->opaque = opaque;
    d->bar_size = info->io_size;
    /* Firmware's assignment: slot N's window at 0xc000 + N * 0x100, I/O decoding on, as SeaBIOS leaves a
     * device; the guest may move it. */
    vm_wr32(d->cfg + PCI_BAR0, (VM_PCI_IO_BASE + slot * 0x100u) | PCI_BAR_IO);
    vm_wr32(d->wmask + PCI_BAR0, ~(info->io_size - 1) & 0xfffcu);
    vm_wr16(d->cfg + PCI_COMMAND, PCI_COMMAND_IO);
    d->cfg[PCI_INTERRUPT_PIN] = 1; /* INTA# */
    d->cfg[PCI_INTERRUPT_LINE] = (uint8_t)pci_slot_gsi(slot);
    bus->devs[slot] = d;
    return d;
}

unsigned pci_slot_gsi(unsigned slot)
{
    return VM_PCI_GSI_BASE + slot - 1;
}

bool pci_slot_has_intx(PciBus *bus, unsigned slot)
{
    return slot < VM_PCI_SLOTS && bus->devs[slot] && bus->devs[slot]->cfg[PCI_INTERRUPT_PIN];
}

unsigned pci_dev_slot(const PciDev *d)
{
    return d->slot;
}

/* Drive the IOAPIC pin to the pin's level unless INTx is disabled. Caller holds the bus lock. */
static void update_irq_locked(PciDev *d)
{
    bool level = d->irq_pending && !(vm_rd16(d->cfg + PCI_COMMAND) & PCI_COMMAND_INTX_DISABLE);
    uint32_t status = vm_rd16(d->cfg + PCI_STATUS);

    vm_wr16(d->cfg + PCI_STATUS, d->irq_pending ? status | PCI_STATUS_INTERRUPT : status & ~PCI_STATUS_INTERRUPT);
    if (level != d->irq_level && d->bus->vm && d->bus->vm->vm_fd >= 0) {
        struct kvm_irq_level irq = { .irq = pci_slot_gsi(d->slot), .level = level };

        ioctl(d->bus->vm->vm_fd, KVM_IRQ_LINE, &irq);
    }
    d->irq_level = level;
}

void pci_set_irq(PciDev *d, bool pending)
{
    pthread_mutex_lock(&d->bus->lock);
    d->irq_pending = pending;
    update_irq_locked(d);
    pthread_mutex_unlock(&d->bus->lock);
}

/* A configuration access of @size bytes at @off (within one dword) of the device the address register names. */
static void config_access(PciBus *bus, unsigned off, unsigned size, bool is_write, uint8_t *data)
{
    uint32_t a = bus->address;
    unsigned busno = (a >> 16) & 0xff, slot = (a >> 11) & 0x1f, fn = (a >> 8) & 0x7;
    unsigned reg = (a & 0xfc) + off;
    PciDev *d = (a & CONFIG_ENABLE) && busno == 0 && fn == 0 && slot < VM_PCI_SLOTS ? bus->devs[slot] : NULL;

    if (!d || reg + size > 256) {
        if (!is_write) {
            memset(data, 0xff, size);
        }
        return;
    }
    if (!is_write) {
        memcpy(data, d->cfg + reg, size);
        return;
    }
    for (unsigned i = 0; i < size; i++) {
        d->cfg[reg + i] = (uint8_t)((d->cfg[reg + i] & ~d->wmask[reg + i]) | (data[i] & d->wmask[reg + i]));
    }
    /* The I/O BAR's type bit is not writable; the status register's bits are read-only or write-1-to-clear of
     * conditions this bus never raises. */
    if (d->bar_size) {
        d->cfg[PCI_BAR0] |= PCI_BAR_IO;
    }
    if (reg <= PCI_COMMAND + 1 && reg + size > PCI_COMMAND) {
        update_irq_locked(d);
    }
}

bool pci_io(PciBus *bus, uint16_t port, unsigned size, bool is_write, uint8_t *data)
{
    PciDev *target = NULL;
    uint32_t base = 0;

    if (port == CONFIG_ADDRESS && size == 4) {
        pthread_mutex_lock(&bus->lock);
        if (is_write) {
            bus->address = vm_rd32(data) & 0x80fffffcu;
        } else {
            vm_wr32(data, bus->address);
        }
        pthread_mutex_unlock(&bus->lock);
        return true;
    }
    if (port >= CONFIG_DATA && port + size <= CONFIG_DATA + 4) {
        pthread_mutex_lock(&bus->lock);
        config_access(bus, port - CONFIG_DATA, size, is_write, data);
        pthread_mutex_unlock(&bus->lock);
        return true;
    }
    if (port < VM_PCI_IO_MIN) {
        return false; /* below the window the guest may put BARs in: the ISA devices' ports */
    }
    pthread_mutex_lock(&bus->lock);
    for (unsigned i = 1; i < VM_PCI_SLOTS; i++) {
        PciDev *d = bus->devs[i];

        if (!d || !d->bar_size || !(vm_rd16(d->cfg + PCI_COMMAND) & PCI_COMMAND_IO)) {
            continue;
        }
        uint32_t b = vm_rd32(d->cfg + PCI_BAR0) & ~3u;
        if (b && port >= b && port + size <= b + d->bar_size) {
            target = d;
            base = b;
            break;
        }
    }
    pthread_mutex_unlock(&bus->lock);
    if (!target) {
        return false;
    }
    /* The device has its own lock; the BAR may move right after this (a guest reprogramming it while another
     * vCPU uses it gets what it asked for on real hardware too). */
    target->io(target->opaque, port - base, size, is_write, data);
    return true;
}

/* ---- State ---- */

/* Per device: its slot and identification (checked), then its whole configuration header (only the writable
 * bits are applied on load). The section's layout depends only on the devices, which both sides must have. */
bool pci_section(FerryVisitor *v, void *opaque, uint32_t version, FerryError **errp)
{
    PciBus *bus = opaque;
    bool load = ferry_visitor_kind(v) == FERRY_VISITOR_INPUT;
    uint32_t n = 0;

    if (load && version != 1) {
        ferry_error_setg(errp, "pci state version %" PRIu32 " is not supported (this program reads version 1)",
                         version);
        return false;
    }
    for (unsigned i = 0; i < VM_PCI_SLOTS; i++) {
        n += bus->devs[i] != NULL;
    }
    if (!ferry_visit_start_struct(v, "pci", errp) || !ferry_visit_start_list(v, "devices", &n, VM_PCI_SLOTS, errp)) {
        return false;
    }
    uint32_t k = 0;
    for (unsigned i = 0; i < VM_PCI_SLOTS; i++) {
        PciDev *d = bus->devs[i];
        uint8_t cfg[256];
        uint32_t slot = i;

        if (!d) {
            continue;
        }
        if (load && k >= n) {
            ferry_error_setg(errp, "incoming pci state has %" PRIu32 " devices, this machine has more (%s at "
                             "slot %u)", n, d->name, i);
            return false;
        }
        k++;
        pthread_mutex_lock(&bus->lock);
        memcpy(cfg, d->cfg, sizeof(cfg));
        pthread_mutex_unlock(&bus->lock);
        if (!ferry_visit_start_struct(v, "device", errp) || !ferry_visit_u32(v, "slot", &slot, errp) ||
            !ferry_visit_bytes(v, "config", cfg, sizeof(cfg), errp) || !ferry_visit_end_struct(v, errp)) {
            return false;
        }
        if (!load) {
            continue;
        }
        if (slot != i || memcmp(cfg, d->cfg, 4) != 0 || memcmp(cfg + 0x08, d->cfg + 0x08, 4) != 0 ||
            memcmp(cfg + PCI_SUBSYSTEM_VENDOR_ID, d->cfg + PCI_SUBSYSTEM_VENDOR_ID, 4) != 0) {
            ferry_error_setg(errp, "incoming pci state has %04x:%04x at slot %" PRIu32 ", this machine has %s "
                             "(%04x:%04x) at slot %u", vm_rd16(cfg), vm_rd16(cfg + 2), slot, d->name,
                             vm_rd16(d->cfg), vm_rd16(d->cfg + 2), i);
            return false;
        }
        pthread_mutex_lock(&bus->lock);
        for (unsigned r = 0; r < sizeof(cfg); r++) {
            d->cfg[r] = (uint8_t)((d->cfg[r] & ~d->wmask[r]) | (cfg[r] & d->wmask[r]));
        }
        update_irq_locked(d);
        pthread_mutex_unlock(&bus->lock);
    }
    if (load && k != n) {
        ferry_error_setg(errp, "incoming pci state has %" PRIu32 " devices, this machine has %" PRIu32, n, k);
        return false;
    }
    return ferry_visit_end_list(v, errp) && ferry_visit_end_struct(v, errp);
}

json_t *pci_query(PciBus *bus)
{
    json_t *a = json_array();

    pthread_mutex_lock(&bus->lock);
    for (unsigned i = 0; a && i < VM_PCI_SLOTS; i++) {
        PciDev *d = bus->devs[i];

        if (!d) {
            continue;
        }
        json_t *o = json_pack("{s:i, s:s, s:i, s:i, s:i, s:b}", "slot", (int)i, "name", d->name, "vendor",
                              (int)vm_rd16(d->cfg), "device", (int)vm_rd16(d->cfg + 2), "command",
                              (int)vm_rd16(d->cfg + PCI_COMMAND), "irq-pending", d->irq_pending);
        if (o && d->bar_size) {
            json_object_set_new(o, "io-base", json_integer(vm_rd32(d->cfg + PCI_BAR0) & ~3u));
            json_object_set_new(o, "io-size", json_integer(d->bar_size));
            json_object_set_new(o, "gsi", json_integer(pci_slot_gsi(i)));
        }
        json_array_append_new(a, o);
    }
    pthread_mutex_unlock(&bus->lock);
    return a;
}
