/*
 * One vCPU's migrated state: what KVM keeps for it, read with the KVM_GET_* ioctls, written with KVM_SET_* in the
 * order KVM needs (QEMU's kvm_arch_put_registers order: registers, XSAVE, XCRs, special registers, MSRs, MP
 * state, LAPIC, the TSC deadline again once the LAPIC is in its mode, events, debug registers), and visited field
 * by field so that the stream describes it (every register has a name in ferry-analyze's output). The XSAVE area
 * and the LAPIC's register page are byte buffers: they are KVM's own layouts (the XSAVE format is the CPU's).
 *
 * The vCPU must not be in KVM_RUN while this runs: the engine saves and loads with the machine stopped, and the
 * section function holds the vCPUs as well so that this is true by construction. It does not create vCPUs or
 * decide when state is applied (vm.c).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>

#include "vm.h"

#define MSR_IA32_TSC_DEADLINE 0x6e0u

VcpuState *vcpu_state_new(const Vm *vm)
{
    VcpuState *s = calloc(1, sizeof(*s));

    if (!s) {
        return NULL;
    }
    s->xsave_size = vm->xsave_size;
    s->xsave = calloc(1, vm->xsave_size);
    if (!s->xsave) {
        free(s);
        return NULL;
    }
    return s;
}

void vcpu_state_free(VcpuState *s)
{
    if (!s) {
        return;
    }
    free(s->xsave);
    free(s);
}

bool vcpu_state_get(Vcpu *cpu, VcpuState *s, FerryError **errp)
{
    Vm *vm = cpu->vm;
    struct {
        struct kvm_msrs m;
        struct kvm_msr_entry e[VM_MAX_MSRS];
    } msrs;
    int r;

    if (ioctl(cpu->fd, KVM_GET_REGS, &s->regs) < 0) {
        vm_error_ioctl(errp, "KVM_GET_REGS");
        return false;
    }
    if (ioctl(cpu->fd, KVM_GET_SREGS, &s->sregs) < 0) {
        vm_error_ioctl(errp, "KVM_GET_SREGS");
        return false;
    }
    /* KVM_GET_XSAVE2 fills an area of KVM_CAP_XSAVE2's size; KVM_GET_XSAVE the legacy 4 KiB. */
    memset(s->xsave, 0, s->xsave_size);
    if (ioctl(cpu->fd, s->xsave_size > sizeof(struct kvm_xsave) ? KVM_GET_XSAVE2 : KVM_GET_XSAVE, s->xsave) < 0) {
        vm_error_ioctl(errp, "KVM_GET_XSAVE2");
        return false;
    }
    memset(&s->xcrs, 0, sizeof(s->xcrs));
    if (vm->xcrs && ioctl(cpu->fd, KVM_GET_XCRS, &s->xcrs) < 0) {
        vm_error_ioctl(errp, "KVM_GET_XCRS");
        return false;
    }
    memset(&msrs, 0, sizeof(msrs));
    msrs.m.nmsrs = vm->nmsrs;
    for (unsigned i = 0; i < vm->nmsrs; i++) {
        msrs.e[i].index = vm->msr_index[i];
    }
    r = ioctl(cpu->fd, KVM_GET_MSRS, &msrs);
    if (r < 0 || (unsigned)r != vm->nmsrs) {
        if (r < 0) {
            vm_error_ioctl(errp, "KVM_GET_MSRS");
        } else {
            ferry_error_setg(errp, "KVM_GET_MSRS read %d of %u MSRs (stopped at 0x%x)", r, vm->nmsrs,
                             vm->msr_index[r]);
        }
        return false;
    }
    s->nmsrs = vm->nmsrs;
    memcpy(s->msrs, msrs.e, vm->nmsrs * sizeof(msrs.e[0]));
    if (ioctl(cpu->fd, KVM_GET_LAPIC, &s->lapic) < 0) {
        vm_error_ioctl(errp, "KVM_GET_LAPIC");
        return false;
    }
    if (ioctl(cpu->fd, KVM_GET_VCPU_EVENTS, &s->events) < 0) {
        vm_error_ioctl(errp, "KVM_GET_VCPU_EVENTS");
        return false;
    }
    if (ioctl(cpu->fd, KVM_GET_DEBUGREGS, &s->debugregs) < 0) {
        vm_error_ioctl(errp, "KVM_GET_DEBUGREGS");
        return false;
    }
    if (ioctl(cpu->fd, KVM_GET_MP_STATE, &s->mp_state) < 0) {
        vm_error_ioctl(errp, "KVM_GET_MP_STATE");
        return false;
    }
    r = ioctl(cpu->fd, KVM_GET_TSC_KHZ, 0);
    s->tsc_khz = r > 0 ? (uint32_t)r : 0;
    return true;
}

static bool set_msrs(Vcpu *cpu, const struct kvm_msr_entry *e, uint32_t n, FerryError **errp)
{
    struct {
        struct kvm_msrs m;
        struct kvm_msr_entry e[VM_MAX_MSRS];
    } msrs;
    int r;

    memset(&msrs, 0, sizeof(msrs));
    msrs.m.nmsrs = n;
    memcpy(msrs.e, e, n * sizeof(*e));
    r = ioctl(cpu->fd, KVM_SET_MSRS, &msrs);
    if (r < 0) {
        vm_error_ioctl(errp, "KVM_SET_MSRS");
        return false;
    }
    if ((uint32_t)r != n) {
        /* KVM stops at the first MSR it refuses: name it. */
        ferry_error_setg(errp, "KVM_SET_MSRS refused MSR 0x%x (value 0x%" PRIx64 "), %d of %u set", e[r].index,
                         (uint64_t)e[r].data, r, n);
        return false;
    }
    return true;
}

bool vcpu_state_put(Vcpu *cpu, const VcpuState *s, FerryError **errp)
{
    Vm *vm = cpu->vm;

    if (s->xsave_size != vm->xsave_size) {
        ferry_error_setg(errp, "the XSAVE area is %u bytes, this KVM's is %u", s->xsave_size, vm->xsave_size);
        return false;
    }
    if (s->tsc_khz && ioctl(cpu->fd, KVM_SET_TSC_KHZ, (unsigned long)s->tsc_khz) < 0) {
        int r = ioctl(cpu->fd, KVM_GET_TSC_KHZ, 0);

        /* A KVM without TSC scaling refuses any rate but its own; that is fine if it is the same. */
        if (r != (int)s->tsc_khz) {
            ferry_error_setg_errno(errp, errno, "KVM_SET_TSC_KHZ %u (this host runs the TSC at %d kHz)",
                                   s->tsc_khz, r);
            return false;
        }
    }
    if (ioctl(cpu->fd, KVM_SET_REGS, &s->regs) < 0) {
        vm_error_ioctl(errp, "KVM_SET_REGS");
        return false;
    }
    if (ioctl(cpu->fd, KVM_SET_XSAVE, s->xsave) < 0) {
        vm_error_ioctl(errp, "KVM_SET_XSAVE");
        return false;
    }
    if (vm->xcrs && ioctl(cpu->fd, KVM_SET_XCRS, &s->xcrs) < 0) {
        vm_error_ioctl(errp, "KVM_SET_XCRS");
        return false;
    }
    if (ioctl(cpu->fd, KVM_SET_SREGS, &s->sregs) < 0) {
        vm_error_ioctl(errp, "KVM_SET_SREGS");
        return false;
    }
    if (!set_msrs(cpu, s->msrs, s->nmsrs, errp)) {
        return false;
    }
    if (ioctl(cpu->fd, KVM_SET_MP_STATE, &s->mp_state) < 0) {
        vm_error_ioctl(errp, "KVM_SET_MP_STATE");
        return false;
    }
    if (ioctl(cpu->fd, KVM_SET_LAPIC, &s->lapic) < 0) {
        vm_error_ioctl(errp, "KVM_SET_LAPIC");
        return false;
    }
    /* The TSC deadline is dropped while the LAPIC is not in TSC-deadline mode: write it again now that it is. */
    for (uint32_t i = 0; i < s->nmsrs; i++) {
        if (s->msrs[i].index == MSR_IA32_TSC_DEADLINE && !set_msrs(cpu, &s->msrs[i], 1, errp)) {
            return false;
        }
    }
    if (ioctl(cpu->fd, KVM_SET_VCPU_EVENTS, &s->events) < 0) {
        vm_error_ioctl(errp, "KVM_SET_VCPU_EVENTS");
        return false;
    }
    if (ioctl(cpu->fd, KVM_SET_DEBUGREGS, &s->debugregs) < 0) {
        vm_error_ioctl(errp, "KVM_SET_DEBUGREGS");
        return false;
    }
    return true;
}

/* ---- Visiting ---- */

/* KVM's __u64 is unsigned long long, ferry's uint64_t unsigned long: the same bits, distinct types for aliasing,
 * so values go through a local of the right type. */
static bool visit_kvm_u64(FerryVisitor *v, const char *name, __u64 *p, FerryError **errp)
{
    uint64_t t = *p;

    if (!ferry_visit_u64(v, name, &t, errp)) {
        return false;
    }
    *p = t;
    return true;
}

#define U64(name, field) visit_kvm_u64(v, name, &(field), errp)

static bool visit_segment(FerryVisitor *v, const char *name, struct kvm_segment *sg, FerryError **errp)
{
    return ferry_visit_start_struct(v, name, errp) &&
           U64("base", sg->base) &&
           ferry_visit_u32(v, "limit", &sg->limit, errp) &&
           ferry_visit_u16(v, "selector", &sg->selector, errp) &&
           ferry_visit_u8(v, "type", &sg->type, errp) &&
           ferry_visit_u8(v, "present", &sg->present, errp) &&
           ferry_visit_u8(v, "dpl", &sg->dpl, errp) &&
           ferry_visit_u8(v, "db", &sg->db, errp) &&
           ferry_visit_u8(v, "s", &sg->s, errp) &&
           ferry_visit_u8(v, "l", &sg->l, errp) &&
           ferry_visit_u8(v, "g", &sg->g, errp) &&
           ferry_visit_u8(v, "avl", &sg->avl, errp) &&
           ferry_visit_u8(v, "unusable", &sg->unusable, errp) &&
           ferry_visit_end_struct(v, errp);
}

static bool visit_dtable(FerryVisitor *v, const char *name, struct kvm_dtable *dt, FerryError **errp)
{
    return ferry_visit_start_struct(v, name, errp) &&
           U64("base", dt->base) &&
           ferry_visit_u16(v, "limit", &dt->limit, errp) &&
           ferry_visit_end_struct(v, errp);
}

static bool visit_regs(FerryVisitor *v, struct kvm_regs *r, FerryError **errp)
{
    return ferry_visit_start_struct(v, "regs", errp) &&
           U64("rax", r->rax) && U64("rbx", r->rbx) && U64("rcx", r->rcx) && U64("rdx", r->rdx) &&
           U64("rsi", r->rsi) && U64("rdi", r->rdi) && U64("rsp", r->rsp) && U64("rbp", r->rbp) &&
           U64("r8", r->r8) && U64("r9", r->r9) && U64("r10", r->r10) && U64("r11", r->r11) &&
           U64("r12", r->r12) && U64("r13", r->r13) && U64("r14", r->r14) && U64("r15", r->r15) &&
           U64("rip", r->rip) && U64("rflags", r->rflags) &&
           ferry_visit_end_struct(v, errp);
}

static bool visit_sregs(FerryVisitor *v, struct kvm_sregs *s, FerryError **errp)
{
    uint32_t n = 4;

    if (!ferry_visit_start_struct(v, "sregs", errp) ||
        !visit_segment(v, "cs", &s->cs, errp) || !visit_segment(v, "ds", &s->ds, errp) ||
        !visit_segment(v, "es", &s->es, errp) || !visit_segment(v, "fs", &s->fs, errp) ||
        !visit_segment(v, "gs", &s->gs, errp) || !visit_segment(v, "ss", &s->ss, errp) ||
        !visit_segment(v, "tr", &s->tr, errp) || !visit_segment(v, "ldt", &s->ldt, errp) ||
        !visit_dtable(v, "gdt", &s->gdt, errp) || !visit_dtable(v, "idt", &s->idt, errp) ||
        !U64("cr0", s->cr0) || !U64("cr2", s->cr2) || !U64("cr3", s->cr3) || !U64("cr4", s->cr4) ||
        !U64("cr8", s->cr8) || !U64("efer", s->efer) || !U64("apic-base", s->apic_base)) {
        return false;
    }
    /* The pending external interrupt, one bit per vector (KVM reports it here without vCPU events; with them
     * it is in events.interrupt and this is zero, but it is carried either way). */
    if (!ferry_visit_start_list(v, "interrupt-bitmap", &n, 4, errp)) {
        return false;
    }
    if (n != 4) {
        ferry_error_setg(errp, "sregs.interrupt-bitmap has %" PRIu32 " words, expected 4", n);
        return false;
    }
    for (unsigned i = 0; i < 4; i++) {
        if (!U64("word", s->interrupt_bitmap[i])) {
            return false;
        }
    }
    return ferry_visit_end_list(v, errp) && ferry_visit_end_struct(v, errp);
}

static bool visit_xcrs(FerryVisitor *v, struct kvm_xcrs *x, FerryError **errp)
{
    uint32_t n = x->nr_xcrs;

    if (!ferry_visit_start_list(v, "xcrs", &n, KVM_MAX_XCRS, errp)) {
        return false;
    }
    x->nr_xcrs = n;
    for (uint32_t i = 0; i < n; i++) {
        if (!ferry_visit_start_struct(v, "xcr", errp) || !ferry_visit_u32(v, "index", &x->xcrs[i].xcr, errp) ||
            !U64("value", x->xcrs[i].value) || !ferry_visit_end_struct(v, errp)) {
            return false;
        }
    }
    return ferry_visit_end_list(v, errp);
}

static bool visit_msrs(FerryVisitor *v, VcpuState *s, FerryError **errp)
{
    uint32_t n = s->nmsrs;

    if (!ferry_visit_start_list(v, "msrs", &n, VM_MAX_MSRS, errp)) {
        return false;
    }
    s->nmsrs = n;
    for (uint32_t i = 0; i < n; i++) {
        if (!ferry_visit_start_struct(v, "msr", errp) || !ferry_visit_u32(v, "index", &s->msrs[i].index, errp) ||
            !U64("value", s->msrs[i].data) || !ferry_visit_end_struct(v, errp)) {
            return false;
        }
    }
    return ferry_visit_end_list(v, errp);
}

static bool visit_events(FerryVisitor *v, struct kvm_vcpu_events *e, FerryError **errp)
{
    return ferry_visit_start_struct(v, "events", errp) &&
           ferry_visit_start_struct(v, "exception", errp) &&
           ferry_visit_u8(v, "injected", &e->exception.injected, errp) &&
           ferry_visit_u8(v, "nr", &e->exception.nr, errp) &&
           ferry_visit_u8(v, "has-error-code", &e->exception.has_error_code, errp) &&
           ferry_visit_u8(v, "pending", &e->exception.pending, errp) &&
           ferry_visit_u32(v, "error-code", &e->exception.error_code, errp) &&
           ferry_visit_u8(v, "has-payload", &e->exception_has_payload, errp) &&
           U64("payload", e->exception_payload) &&
           ferry_visit_end_struct(v, errp) &&
           ferry_visit_start_struct(v, "interrupt", errp) &&
           ferry_visit_u8(v, "injected", &e->interrupt.injected, errp) &&
           ferry_visit_u8(v, "nr", &e->interrupt.nr, errp) &&
           ferry_visit_u8(v, "soft", &e->interrupt.soft, errp) &&
           ferry_visit_u8(v, "shadow", &e->interrupt.shadow, errp) &&
           ferry_visit_end_struct(v, errp) &&
           ferry_visit_start_struct(v, "nmi", errp) &&
           ferry_visit_u8(v, "injected", &e->nmi.injected, errp) &&
           ferry_visit_u8(v, "pending", &e->nmi.pending, errp) &&
           ferry_visit_u8(v, "masked", &e->nmi.masked, errp) &&
           ferry_visit_end_struct(v, errp) &&
           ferry_visit_u32(v, "sipi-vector", &e->sipi_vector, errp) &&
           ferry_visit_u32(v, "flags", &e->flags, errp) &&
           ferry_visit_start_struct(v, "smi", errp) &&
           ferry_visit_u8(v, "smm", &e->smi.smm, errp) &&
           ferry_visit_u8(v, "pending", &e->smi.pending, errp) &&
           ferry_visit_u8(v, "smm-inside-nmi", &e->smi.smm_inside_nmi, errp) &&
           ferry_visit_u8(v, "latched-init", &e->smi.latched_init, errp) &&
           ferry_visit_end_struct(v, errp) &&
           ferry_visit_u8(v, "triple-fault-pending", &e->triple_fault.pending, errp) &&
           ferry_visit_end_struct(v, errp);
}

static bool visit_debugregs(FerryVisitor *v, struct kvm_debugregs *d, FerryError **errp)
{
    return ferry_visit_start_struct(v, "debugregs", errp) &&
           U64("db0", d->db[0]) && U64("db1", d->db[1]) && U64("db2", d->db[2]) && U64("db3", d->db[3]) &&
           U64("dr6", d->dr6) && U64("dr7", d->dr7) && U64("flags", d->flags) &&
           ferry_visit_end_struct(v, errp);
}

bool vcpu_state_visit(FerryVisitor *v, const Vm *vm, VcpuState *s, FerryError **errp)
{
    bool load = ferry_visitor_kind(v) == FERRY_VISITOR_INPUT;
    uint32_t xsave_size = s->xsave_size;

    if (!visit_regs(v, &s->regs, errp) || !visit_sregs(v, &s->sregs, errp)) {
        return false;
    }
    /* The XSAVE area's size depends on the features KVM enables: both ends must agree before the bytes load. */
    if (!ferry_visit_u32(v, "xsave-size", &xsave_size, errp)) {
        return false;
    }
    if (load && xsave_size != s->xsave_size) {
        ferry_error_setg(errp, "the incoming XSAVE area is %" PRIu32 " bytes, this KVM's is %" PRIu32, xsave_size,
                         s->xsave_size);
        return false;
    }
    return ferry_visit_bytes(v, "xsave", s->xsave, s->xsave_size, errp) &&
           visit_xcrs(v, &s->xcrs, errp) &&
           visit_msrs(v, s, errp) &&
           ferry_visit_bytes(v, "lapic", s->lapic.regs, sizeof(s->lapic.regs), errp) &&
           visit_events(v, &s->events, errp) &&
           visit_debugregs(v, &s->debugregs, errp) &&
           ferry_visit_u32(v, "mp-state", &s->mp_state.mp_state, errp) &&
           ferry_visit_u32(v, "tsc-khz", &s->tsc_khz, errp);
}

bool vcpu_section(FerryVisitor *v, void *opaque, uint32_t version, FerryError **errp)
{
    Vcpu *cpu = opaque;
    Vm *vm = cpu->vm;
    bool load = ferry_visitor_kind(v) == FERRY_VISITOR_INPUT;
    VcpuState *s;
    bool ok = false;

    if (load && version != 1) {
        ferry_error_setg(errp, "cpu state version %" PRIu32 " is not supported (this program reads version 1)",
                         version);
        return false;
    }
    s = vcpu_state_new(vm);
    if (!s) {
        ferry_error_setg(errp, "out of memory");
        return false;
    }
    vm_hold(vm);
    if (!load && !vcpu_state_get(cpu, s, errp)) {
        goto out;
    }
    if (!ferry_visit_start_struct(v, "cpu", errp) || !vcpu_state_visit(v, vm, s, errp) ||
        !ferry_visit_end_struct(v, errp)) {
        goto out;
    }
    if (load && !vcpu_state_put(cpu, s, errp)) {
        ferry_error_prepend(errp, "loading vCPU %u: ", cpu->id);
        goto out;
    }
    ok = true;
out:
    vm_release(vm);
    vcpu_state_free(s);
    return ok;
}
