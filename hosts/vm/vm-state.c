/*
 * The VM-wide state KVM keeps: the in-kernel irqchip (the two 8259 PICs and the IOAPIC, KVM_GET_IRQCHIP), the
 * 8254 PIT (KVM_GET_PIT2) and the KVM clock (KVM_GET_CLOCK), each read, written and visited field by field; and
 * the "machine" section, which carries the shape of the VM (vCPUs, RAM, layout) so that a destination of another
 * shape refuses the stream before any state is applied. Per-vCPU state is in cpu-state.c.
 *
 * The KVM clock is what a guest's kvmclock reads: the destination sets it to the value the source read with its
 * vCPUs stopped, so the guest's clock goes on from where it stopped and never runs backwards (the downtime is
 * not seen by the guest, as with QEMU's default). The PIT's count_load_time is the source's host time: KVM
 * reloads each channel's count at KVM_SET_PIT2 and takes "now" as the load time, so it is carried only to
 * describe the state.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>

#include "vm.h"

bool vm_clock_now(Vm *vm, uint64_t *ns, FerryError **errp)
{
    struct kvm_clock_data c;

    memset(&c, 0, sizeof(c));
    if (ioctl(vm->vm_fd, KVM_GET_CLOCK, &c) < 0) {
        vm_error_ioctl(errp, "KVM_GET_CLOCK");
        return false;
    }
    *ns = c.clock;
    return true;
}

bool vm_state_get(Vm *vm, VmState *s, FerryError **errp)
{
    memset(s, 0, sizeof(*s));
    s->pic[0].chip_id = KVM_IRQCHIP_PIC_MASTER;
    s->pic[1].chip_id = KVM_IRQCHIP_PIC_SLAVE;
    s->ioapic.chip_id = KVM_IRQCHIP_IOAPIC;
    if (ioctl(vm->vm_fd, KVM_GET_IRQCHIP, &s->pic[0]) < 0 || ioctl(vm->vm_fd, KVM_GET_IRQCHIP, &s->pic[1]) < 0 ||
        ioctl(vm->vm_fd, KVM_GET_IRQCHIP, &s->ioapic) < 0) {
        vm_error_ioctl(errp, "KVM_GET_IRQCHIP");
        return false;
    }
    if (ioctl(vm->vm_fd, KVM_GET_PIT2, &s->pit) < 0) {
        vm_error_ioctl(errp, "KVM_GET_PIT2");
        return false;
    }
    if (ioctl(vm->vm_fd, KVM_GET_CLOCK, &s->clock) < 0) {
        vm_error_ioctl(errp, "KVM_GET_CLOCK");
        return false;
    }
    return true;
}

static bool put_irqchip(Vm *vm, const VmState *s, FerryError **errp)
{
    if (ioctl(vm->vm_fd, KVM_SET_IRQCHIP, &s->pic[0]) < 0 || ioctl(vm->vm_fd, KVM_SET_IRQCHIP, &s->pic[1]) < 0 ||
        ioctl(vm->vm_fd, KVM_SET_IRQCHIP, &s->ioapic) < 0) {
        vm_error_ioctl(errp, "KVM_SET_IRQCHIP");
        return false;
    }
    return true;
}

static bool put_pit(Vm *vm, const VmState *s, FerryError **errp)
{
    if (ioctl(vm->vm_fd, KVM_SET_PIT2, &s->pit) < 0) {
        vm_error_ioctl(errp, "KVM_SET_PIT2");
        return false;
    }
    return true;
}

static bool put_clock(Vm *vm, const VmState *s, FerryError **errp)
{
    /* Only the value: KVM_CLOCK_REALTIME would add the time the stream took, which QEMU does not either. */
    struct kvm_clock_data c = { .clock = s->clock.clock };

    if (ioctl(vm->vm_fd, KVM_SET_CLOCK, &c) < 0) {
        vm_error_ioctl(errp, "KVM_SET_CLOCK");
        return false;
    }
    return true;
}

bool vm_state_put(Vm *vm, const VmState *s, FerryError **errp)
{
    return put_irqchip(vm, s, errp) && put_pit(vm, s, errp) && put_clock(vm, s, errp);
}

/* ---- Visiting ---- */

static bool visit_kvm_u64(FerryVisitor *v, const char *name, __u64 *p, FerryError **errp)
{
    uint64_t t = *p;

    if (!ferry_visit_u64(v, name, &t, errp)) {
        return false;
    }
    *p = t;
    return true;
}

#define U8(name, field) ferry_visit_u8(v, name, &(field), errp)

static bool visit_pic(FerryVisitor *v, const char *name, struct kvm_pic_state *p, FerryError **errp)
{
    return ferry_visit_start_struct(v, name, errp) &&
           U8("last-irr", p->last_irr) && U8("irr", p->irr) && U8("imr", p->imr) && U8("isr", p->isr) &&
           U8("priority-add", p->priority_add) && U8("irq-base", p->irq_base) &&
           U8("read-reg-select", p->read_reg_select) && U8("poll", p->poll) &&
           U8("special-mask", p->special_mask) && U8("init-state", p->init_state) &&
           U8("auto-eoi", p->auto_eoi) && U8("rotate-on-auto-eoi", p->rotate_on_auto_eoi) &&
           U8("special-fully-nested-mode", p->special_fully_nested_mode) && U8("init4", p->init4) &&
           U8("elcr", p->elcr) && U8("elcr-mask", p->elcr_mask) &&
           ferry_visit_end_struct(v, errp);
}

static bool visit_ioapic(FerryVisitor *v, struct kvm_ioapic_state *io, FerryError **errp)
{
    uint32_t n = KVM_IOAPIC_NUM_PINS;

    if (!ferry_visit_start_struct(v, "ioapic", errp) || !visit_kvm_u64(v, "base-address", &io->base_address, errp) ||
        !ferry_visit_u32(v, "ioregsel", &io->ioregsel, errp) || !ferry_visit_u32(v, "id", &io->id, errp) ||
        !ferry_visit_u32(v, "irr", &io->irr, errp) ||
        !ferry_visit_start_list(v, "redirection-table", &n, KVM_IOAPIC_NUM_PINS, errp)) {
        return false;
    }
    if (n != KVM_IOAPIC_NUM_PINS) {
        ferry_error_setg(errp, "the incoming IOAPIC has %" PRIu32 " pins, this one %d", n, KVM_IOAPIC_NUM_PINS);
        return false;
    }
    for (unsigned i = 0; i < n; i++) {
        if (!visit_kvm_u64(v, "entry", &io->redirtbl[i].bits, errp)) {
            return false;
        }
    }
    return ferry_visit_end_list(v, errp) && ferry_visit_end_struct(v, errp);
}

bool vm_state_visit_irqchip(FerryVisitor *v, VmState *s, FerryError **errp)
{
    return visit_pic(v, "pic-master", &s->pic[0].chip.pic, errp) &&
           visit_pic(v, "pic-slave", &s->pic[1].chip.pic, errp) &&
           visit_ioapic(v, &s->ioapic.chip.ioapic, errp);
}

bool vm_state_visit_pit(FerryVisitor *v, VmState *s, FerryError **errp)
{
    uint32_t n = 3;

    if (!ferry_visit_u32(v, "flags", &s->pit.flags, errp) || !ferry_visit_start_list(v, "channels", &n, 3, errp)) {
        return false;
    }
    if (n != 3) {
        ferry_error_setg(errp, "the incoming PIT has %" PRIu32 " channels, expected 3", n);
        return false;
    }
    for (unsigned i = 0; i < 3; i++) {
        struct kvm_pit_channel_state *c = &s->pit.channels[i];
        int64_t load_time = c->count_load_time;

        if (!ferry_visit_start_struct(v, "channel", errp) || !ferry_visit_u32(v, "count", &c->count, errp) ||
            !ferry_visit_u16(v, "latched-count", &c->latched_count, errp) ||
            !U8("count-latched", c->count_latched) || !U8("status-latched", c->status_latched) ||
            !U8("status", c->status) || !U8("read-state", c->read_state) || !U8("write-state", c->write_state) ||
            !U8("write-latch", c->write_latch) || !U8("rw-mode", c->rw_mode) || !U8("mode", c->mode) ||
            !U8("bcd", c->bcd) || !U8("gate", c->gate) ||
            !ferry_visit_i64(v, "count-load-time", &load_time, errp) || !ferry_visit_end_struct(v, errp)) {
            return false;
        }
        c->count_load_time = load_time;
    }
    return ferry_visit_end_list(v, errp);
}

bool vm_state_visit_clock(FerryVisitor *v, VmState *s, FerryError **errp)
{
    return visit_kvm_u64(v, "clock", &s->clock.clock, errp) && ferry_visit_u32(v, "flags", &s->clock.flags, errp);
}

/* ---- Sections ---- */

typedef bool (*VisitPiece)(FerryVisitor *v, VmState *s, FerryError **errp);
typedef bool (*PutPiece)(Vm *vm, const VmState *s, FerryError **errp);

/* One VM-wide piece as a section: read everything (cheap), visit the piece, apply the piece on load. */
static bool piece_section(FerryVisitor *v, Vm *vm, const char *name, uint32_t version, VisitPiece visit,
                          PutPiece put, FerryError **errp)
{
    bool load = ferry_visitor_kind(v) == FERRY_VISITOR_INPUT;
    VmState *s = calloc(1, sizeof(*s));
    bool ok = false;

    if (!s) {
        ferry_error_setg(errp, "out of memory");
        return false;
    }
    if (load && version != 1) {
        ferry_error_setg(errp, "%s state version %" PRIu32 " is not supported (this program reads version 1)", name,
                         version);
        free(s);
        return false;
    }
    vm_hold(vm);
    /* On load too: the chip ids and the parts a piece does not visit keep this VM's values. */
    if (!vm_state_get(vm, s, errp)) {
        goto out;
    }
    if (!ferry_visit_start_struct(v, name, errp) || !visit(v, s, errp) || !ferry_visit_end_struct(v, errp)) {
        goto out;
    }
    if (load && !put(vm, s, errp)) {
        ferry_error_prepend(errp, "loading %s: ", name);
        goto out;
    }
    ok = true;
out:
    vm_release(vm);
    free(s);
    return ok;
}

bool vm_irqchip_section(FerryVisitor *v, void *opaque, uint32_t version, FerryError **errp)
{
    return piece_section(v, opaque, "irqchip", version, vm_state_visit_irqchip, put_irqchip, errp);
}

bool vm_pit_section(FerryVisitor *v, void *opaque, uint32_t version, FerryError **errp)
{
    return piece_section(v, opaque, "pit", version, vm_state_visit_pit, put_pit, errp);
}

bool vm_clock_section(FerryVisitor *v, void *opaque, uint32_t version, FerryError **errp)
{
    return piece_section(v, opaque, "kvmclock", version, vm_state_visit_clock, put_clock, errp);
}

bool vm_machine_section(FerryVisitor *v, void *opaque, uint32_t version, FerryError **errp)
{
    Vm *vm = opaque;
    bool load = ferry_visitor_kind(v) == FERRY_VISITOR_INPUT;
    uint32_t smp = vm->nvcpus, nmsrs = vm->nmsrs;
    uint64_t ram = vm->cfg.ram_size, lowmem = vm->lowmem;

    if (!ferry_visit_start_struct(v, "machine", errp) || !ferry_visit_u32(v, "smp", &smp, errp) ||
        !ferry_visit_u64(v, "ram-size", &ram, errp) || !ferry_visit_u64(v, "lowmem", &lowmem, errp) ||
        !ferry_visit_u32(v, "msrs", &nmsrs, errp) || !ferry_visit_end_struct(v, errp)) {
        return false;
    }
    if (load && (smp != vm->nvcpus || ram != vm->cfg.ram_size || lowmem != vm->lowmem)) {
        ferry_error_setg(errp,
                         "the incoming VM has -smp %" PRIu32 " and -m %" PRIu64 " bytes (%" PRIu64
                         " below 4 GiB); this one -smp %u and -m %" PRIu64 " (%" PRIu64 ")",
                         smp, ram, lowmem, vm->nvcpus, vm->cfg.ram_size, vm->lowmem);
        return false;
    }
    return true;
}
