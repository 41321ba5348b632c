/*
 * Unit tests of ferry-vm's migrated state (hosts/vm/cpu-state.c, vm-state.c, serial.c): every KVM state piece
 * makes the round trip a migration makes. A source VM boots the A-B guest and runs it briefly (so that its vCPU
 * is in protected mode with live registers, MSRs and a running TSC), some state is set to values no reset leaves
 * (debug registers, a PIC mask, an IOAPIC route, a programmed PIT channel); then each section is saved with the
 * engine's binary output visitor, loaded with its input visitor into a fresh VM, read back from KVM and compared
 * with what was saved, piece by piece. Values that move by themselves are compared by direction (the TSC and the
 * KVM clock must not go backwards). The serial port is checked the same way without KVM. Every test skips where
 * /dev/kvm cannot be opened.
 */
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "vm-test.h"
#include "vm.h"

#define MSR_IA32_TSC 0x10u

static void skip_without_kvm(void)
{
    int fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);

    if (fd < 0) {
        print_message("skipping: /dev/kvm cannot be opened\n");
        skip();
    }
    close(fd);
}

static Vm *new_vm(unsigned smp)
{
    VmConfig cfg = { .ram_size = UINT64_C(8) << 20, .smp = smp, .serial_mode = VM_SERIAL_NULL };
    FerryError *err = NULL;
    Vm *vm = vm_new(&cfg, &err);

    if (!vm) {
        print_error("vm_new: %s\n", ferry_error_msg(err));
        fail();
    }
    vm->serial = serial_new(vm, -1, false, -1);
    assert_non_null(vm->serial);
    assert_true(vm_setup_ram(vm, NULL, &err));
    return vm;
}

/* A VM whose guest has run for a while: at least 100 ms, and until vCPU 1 (started by the guest with INIT/SIPI)
 * has written its slice of the A-B range, for at most 30 s (a slow, emulated KVM takes its time). */
static Vm *running_vm(void)
{
    Vm *vm = new_vm(2);
    struct timespec ts = { 0, 100 * 1000 * 1000 };
    const uint8_t *params;
    const volatile uint8_t *ap_page;
    uint64_t start, pages;

    assert_true(vm_boot(vm, NULL));
    params = vm_gpa_to_host(vm, VM_AB_PARAMS_ADDR, VM_AB_PARAMS_SIZE);
    assert_non_null(params);
    vm_ab_slice(*(const uint32_t *)(params + 4), *(const uint32_t *)(params + 8), 2, 1, &start, &pages);
    ap_page = vm_gpa_to_host(vm, start, 1);
    assert_non_null(ap_page);
    assert_true(vm_start_threads(vm, NULL));
    vm_ops.start(vm);
    nanosleep(&ts, NULL);
    for (int i = 0; i < 300 && *ap_page == 0; i++) {
        nanosleep(&ts, NULL);
    }
    vm_ops.stop(vm);
    assert_int_not_equal(*ap_page, 0);
    return vm;
}

/* A section saved from @src and loaded into @dst (vm-test.h), which must succeed. */
static void roundtrip(FerrySectionFn fn, void *src, void *dst)
{
    FerryError *err = NULL;

    if (!section_roundtrip(fn, src, dst, &err)) {
        print_error("load: %s\n", ferry_error_msg(err));
        fail();
    }
}

static void test_vcpu_roundtrip(void **state)
{
    skip_without_kvm();
    Vm *a = running_vm();
    Vm *b = new_vm(2);
    VcpuState *sa = vcpu_state_new(a), *sb = vcpu_state_new(b);

    assert_true(vcpu_state_get(&a->vcpus[0], sa, NULL));
    /* The guest ran: it is in protected mode, in its loop. */
    assert_true(sa->sregs.cr0 & 1);
    assert_true(sa->regs.rip > VM_BOOT_ADDR && sa->regs.rip < VM_BOOT_ADDR + VM_BOOT_SIZE);
    /* Values no reset leaves, in pieces the guest does not touch. */
    sa->regs.r15 = 0x1122334455667788ull;
    sa->debugregs.db[0] = 0x7000;
    sa->debugregs.db[2] = 0x9000;
    assert_true(vcpu_state_put(&a->vcpus[0], sa, NULL));
    assert_true(vcpu_state_get(&a->vcpus[0], sa, NULL));
    assert_int_equal(sa->debugregs.db[2], 0x9000);

    for (unsigned i = 0; i < 2; i++) {
        roundtrip(vcpu_section, &a->vcpus[i], &b->vcpus[i]);
    }
    assert_true(vcpu_state_get(&b->vcpus[0], sb, NULL));
    assert_memory_equal(&sa->regs, &sb->regs, sizeof(sa->regs));
    assert_memory_equal(&sa->sregs, &sb->sregs, sizeof(sa->sregs));
    assert_int_equal(sa->xsave_size, sb->xsave_size);
    assert_memory_equal(sa->xsave, sb->xsave, sa->xsave_size);
    assert_memory_equal(&sa->xcrs, &sb->xcrs, sizeof(sa->xcrs));
    assert_memory_equal(&sa->lapic, &sb->lapic, sizeof(sa->lapic));
    assert_memory_equal(&sa->events, &sb->events, sizeof(sa->events));
    assert_memory_equal(&sa->debugregs, &sb->debugregs, sizeof(sa->debugregs));
    assert_int_equal(sa->mp_state.mp_state, sb->mp_state.mp_state);
    assert_int_equal(sa->tsc_khz, sb->tsc_khz);
    assert_int_equal(sa->nmsrs, sb->nmsrs);
    assert_true(sa->nmsrs > 10);
    for (uint32_t i = 0; i < sa->nmsrs; i++) {
        assert_int_equal(sa->msrs[i].index, sb->msrs[i].index);
        if (sa->msrs[i].index == MSR_IA32_TSC) {
            assert_true(sb->msrs[i].data >= sa->msrs[i].data); /* it runs on: later, never earlier */
        } else if (sa->msrs[i].data != sb->msrs[i].data) {
            print_error("MSR 0x%x: 0x%llx saved, 0x%llx loaded\n", sa->msrs[i].index,
                        (unsigned long long)sa->msrs[i].data, (unsigned long long)sb->msrs[i].data);
            fail();
        }
    }
    /* vCPU 1 was started by the guest's INIT/SIPI and runs its slice in protected mode; so it does on the
     * destination, from the same registers. */
    VcpuState *sa1 = vcpu_state_new(a), *sb1 = vcpu_state_new(b);
    assert_true(vcpu_state_get(&a->vcpus[1], sa1, NULL));
    assert_true(vcpu_state_get(&b->vcpus[1], sb1, NULL));
    assert_int_equal(sa1->mp_state.mp_state, KVM_MP_STATE_RUNNABLE);
    assert_int_equal(sb1->mp_state.mp_state, KVM_MP_STATE_RUNNABLE);
    assert_true(sb1->sregs.cr0 & 1);
    assert_true(sb1->regs.rip > VM_BOOT_ADDR && sb1->regs.rip < VM_BOOT_ADDR + VM_BOOT_SIZE);
    assert_memory_equal(&sa1->regs, &sb1->regs, sizeof(sa1->regs));
    assert_memory_equal(&sa1->sregs, &sb1->sregs, sizeof(sa1->sregs));
    assert_memory_equal(&sa1->lapic, &sb1->lapic, sizeof(sa1->lapic));
    vcpu_state_free(sa1);
    vcpu_state_free(sb1);
    vcpu_state_free(sa);
    vcpu_state_free(sb);
    vm_free(a);
    vm_free(b);
}

static void test_vcpu_refuses_other_xsave(void **state)
{
    skip_without_kvm();
    Vm *a = new_vm(1);
    VcpuState *s = vcpu_state_new(a);
    FerryError *err = NULL;

    assert_true(vcpu_state_get(&a->vcpus[0], s, NULL));
    s->xsave_size -= 64; /* a source with another XSAVE layout */
    assert_false(vcpu_state_put(&a->vcpus[0], s, &err));
    assert_non_null(strstr(ferry_error_msg(err), "XSAVE area"));
    ferry_error_free(err);
    s->xsave_size += 64;
    vcpu_state_free(s);
    vm_free(a);
}

static void test_vm_state_roundtrip(void **state)
{
    skip_without_kvm();
    Vm *a = running_vm();
    Vm *b = new_vm(2);
    VmState sa, sb;

    assert_true(vm_state_get(a, &sa, NULL));
    sa.pic[0].chip.pic.imr = 0xfb;
    sa.pic[1].chip.pic.imr = 0x7f;
    sa.pic[0].chip.pic.irq_base = 0x20;
    sa.ioapic.chip.ioapic.redirtbl[4].bits = 0x0100000000000031ull; /* COM1 to vector 0x31, CPU 1 */
    /* PIT channel 2 (its gate is ours to set) in mode 2 with a count that is not the reset one. */
    sa.pit.channels[2].mode = 2;
    sa.pit.channels[2].rw_mode = 3;
    sa.pit.channels[2].count = 1234;
    sa.pit.channels[2].gate = 0;
    assert_true(vm_state_put(a, &sa, NULL));
    assert_true(vm_state_get(a, &sa, NULL));
    assert_int_equal(sa.pic[0].chip.pic.imr, 0xfb);

    roundtrip(vm_irqchip_section, a, b);
    roundtrip(vm_pit_section, a, b);
    roundtrip(vm_clock_section, a, b);
    roundtrip(vm_machine_section, a, b);
    assert_true(vm_state_get(b, &sb, NULL));
    assert_memory_equal(&sa.pic[0].chip.pic, &sb.pic[0].chip.pic, sizeof(struct kvm_pic_state));
    assert_memory_equal(&sa.pic[1].chip.pic, &sb.pic[1].chip.pic, sizeof(struct kvm_pic_state));
    assert_memory_equal(&sa.ioapic.chip.ioapic, &sb.ioapic.chip.ioapic, sizeof(struct kvm_ioapic_state));
    for (unsigned i = 0; i < 3; i++) {
        struct kvm_pit_channel_state ca = sa.pit.channels[i], cb = sb.pit.channels[i];

        ca.count_load_time = cb.count_load_time = 0; /* the host's time of the reload: KVM sets it */
        assert_memory_equal(&ca, &cb, sizeof(ca));
    }
    assert_int_equal(sa.pit.flags, sb.pit.flags);
    /* The clock goes on from the saved value: not earlier, and not much later. */
    assert_true(sb.clock.clock >= sa.clock.clock);
    assert_true(sb.clock.clock - sa.clock.clock < UINT64_C(10) * 1000 * 1000 * 1000);
    vm_free(a);
    vm_free(b);
}

static void test_machine_shape_refused(void **state)
{
    skip_without_kvm();
    Vm *a = new_vm(1);
    Vm *b = new_vm(2);
    FerryError *err = NULL;

    assert_false(section_roundtrip(vm_machine_section, a, b, &err));
    assert_non_null(strstr(ferry_error_msg(err), "-smp 1"));
    ferry_error_free(err);
    vm_free(a);
    vm_free(b);
}

static void test_serial_roundtrip(void **state)
{
    int pipefd[2];
    uint8_t val, out[4];

    assert_int_equal(pipe(pipefd), 0);
    Serial *a = serial_new(NULL, pipefd[1], true, -1);
    Serial *b = serial_new(NULL, -1, false, -1);
    SerialRegs r;

    /* Program it as a driver would: 115200 baud (divisor 1), 8N1, FIFO on, THR and RX interrupts on. */
    val = 0x80; serial_io(a, 3, true, &val);
    val = 1; serial_io(a, 0, true, &val);
    val = 0; serial_io(a, 1, true, &val);
    val = 0x03; serial_io(a, 3, true, &val);
    val = 0x01; serial_io(a, 2, true, &val);
    val = 0x0b; serial_io(a, 4, true, &val);
    val = 0x5a; serial_io(a, 7, true, &val);
    val = 0x03; serial_io(a, 1, true, &val);
    /* THR empty is pending at once; reading IIR reports it (with the FIFO bits) and clears it. */
    serial_io(a, 2, false, &val);
    assert_int_equal(val, 0xc2);
    serial_io(a, 2, false, &val);
    assert_int_equal(val, 0xc1);
    val = 'x'; serial_io(a, 0, true, &val);
    assert_int_equal(read(pipefd[0], out, sizeof(out)), 1);
    assert_int_equal(out[0], 'x');
    assert_int_equal(serial_bytes_out(a), 1);
    /* Three received bytes, the ring wrapped. */
    serial_get_regs(a, &r);
    r.rx_head = SERIAL_FIFO - 1;
    r.rx[SERIAL_FIFO - 1] = 'p';
    r.rx[0] = 'q';
    r.rx[1] = 'r';
    r.rx_count = 3;
    serial_set_regs(a, &r);

    roundtrip(serial_section, a, b);
    serial_io(b, 5, false, &val);
    assert_int_equal(val & 0x61, 0x61); /* data ready, THR and transmitter empty */
    serial_io(b, 2, false, &val);
    assert_int_equal(val, 0xc4); /* received data available */
    for (const char *c = "pqr"; *c; c++) {
        serial_io(b, 0, false, &val);
        assert_int_equal(val, *c);
    }
    serial_io(b, 5, false, &val);
    assert_int_equal(val & 1, 0);
    serial_io(b, 7, false, &val);
    assert_int_equal(val, 0x5a);
    serial_io(b, 3, false, &val);
    assert_int_equal(val, 0x03);
    val = 0x83; serial_io(b, 3, true, &val);
    serial_io(b, 0, false, &val);
    assert_int_equal(val, 1); /* the divisor came along */
    serial_io(b, 4, false, &val);
    assert_int_equal(val, 0x0b);
    serial_free(a);
    serial_free(b);
    close(pipefd[0]);
}

static void test_json_names(void **state)
{
    skip_without_kvm();
    Vm *a = new_vm(1);
    FerryVisitor *v = ferry_visitor_json_new();

    assert_true(vcpu_section(v, &a->vcpus[0], 1, NULL));
    json_t *j = ferry_visitor_json_result(v);
    json_t *cpu = json_object_get(j, "cpu");
    assert_non_null(json_object_get(json_object_get(cpu, "regs"), "rip"));
    assert_non_null(json_object_get(json_object_get(json_object_get(cpu, "sregs"), "cs"), "selector"));
    assert_true(json_array_size(json_object_get(cpu, "msrs")) > 10);
    assert_non_null(json_object_get(json_object_get(cpu, "events"), "nmi"));
    json_decref(j);
    ferry_visitor_free(v);
    vm_free(a);
}

static void test_dirty_log_probe(void **state)
{
    skip_without_kvm();
    FerryError *err = NULL;

    /* Either answer is legitimate (PLATFORM.md); a "no" must say why. */
    if (!vm_dirty_log_probe(&err)) {
        assert_non_null(err);
        print_message("KVM dirty log unusable here: %s\n", ferry_error_msg(err));
        ferry_error_free(err);
    }
}

static void test_dirty_log_tracker(void **state)
{
    skip_without_kvm();
    FerryError *err = NULL;
    if (!vm_dirty_log_probe(&err)) {
        print_message("skipping: %s\n", ferry_error_msg(err));
        ferry_error_free(err);
        skip();
    }
    /* The running A-B guest writes every page of its range: each harvest reports them, and of the pages below
     * 1 MiB only its stack's (page 7, below 0x7c00: putc's call and push). */
    Vm *vm = new_vm(1);
    size_t npages = vm->cfg.ram_size / 4096, words = (npages + 63) / 64;
    unsigned long *map = calloc(words, sizeof(*map));
    struct timespec ts = { 0, 50 * 1000 * 1000 };

    assert_true(vm_boot(vm, NULL));
    assert_true(vm_start_threads(vm, NULL));
    vm->ram = (FerryRamBlock *)(uintptr_t)1; /* the harvest only compares the pointer */
    assert_true(vm_dirty_log_ops.start(vm, NULL));
    vm_ops.start(vm);
    /* Harvests taken every 50 ms until together they name more than half of the range: one pass takes 50 ms
     * natively but seconds under emulation (scripts/kvm-emulated.sh). */
    for (int round = 0; round < 2; round++) {
        size_t high = 0;

        memset(map, 0, words * sizeof(*map));
        for (int tries = 0; high <= (npages - 256) / 2; tries++) {
            assert_true(tries < 1200);
            nanosleep(&ts, NULL);
            assert_true(vm_dirty_log_ops.harvest(vm, vm->ram, map, NULL));
            high = 0;
            for (size_t p = 0; p < npages; p++) {
                if (map[p / 64] & (1UL << (p % 64))) {
                    if (p < 256 && p != 7) {
                        print_error("page %zu below 1 MiB reported written\n", p);
                        fail();
                    }
                    high++;
                }
            }
        }
    }
    vm_ops.stop(vm);
    vm_dirty_log_ops.stop(vm);
    vm->ram = NULL;
    free(map);
    vm_free(vm);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_vcpu_roundtrip),
        cmocka_unit_test(test_vcpu_refuses_other_xsave),
        cmocka_unit_test(test_vm_state_roundtrip),
        cmocka_unit_test(test_machine_shape_refused),
        cmocka_unit_test(test_serial_roundtrip),
        cmocka_unit_test(test_json_names),
        cmocka_unit_test(test_dirty_log_probe),
        cmocka_unit_test(test_dirty_log_tracker),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
