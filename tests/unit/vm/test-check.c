/*
 * Unit tests of ferry-vm's A-B checker (hosts/vm/boot.c: vm_ab_check, vm_ab_slice), which needs no KVM: a VM
 * made by hand with guest RAM, no vCPUs and a parameter block written by the test, whose pages' first bytes are
 * laid out as vCPUs stopped at chosen instants would leave them. Each vCPU's slice must pass QEMU's check on its
 * own (at most one edge, a step of -1, per slice), so slices at different pass counts are fine and a second step
 * inside one slice is not. The guest code itself and the checker against a running guest are tested under KVM
 * (tests/integration/test_vm.py).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "vm-test.h"
#include "vm.h"

#define PAGE 4096u
#define RAM BARE_VM_RAM
#define START (UINT64_C(1) << 20)

static void set_params(Vm *vm, uint32_t npages, uint32_t cpus)
{
    uint8_t *p = vm->ram_host + VM_AB_PARAMS_ADDR;

    memcpy(p, VM_AB_MAGIC, 4);
    vm_wr32(p + 4, (uint32_t)START);
    vm_wr32(p + 8, npages);
    vm_wr32(p + 12, 1);
    vm_wr32(p + 16, cpus);
}

/* First bytes of pages [first, first + n) of the range set to @b. */
static void fill(Vm *vm, uint64_t first, uint64_t n, uint8_t b)
{
    for (uint64_t i = 0; i < n; i++) {
        vm->ram_host[START + (first + i) * PAGE] = b;
    }
}

static void check_ok(Vm *vm, VmCheck *res)
{
    FerryError *err = NULL;

    if (!vm_ab_check(vm, res, &err)) {
        print_error("vm_ab_check: %s\n", ferry_error_msg(err));
        fail();
    }
}

static void test_slices_cut_as_the_guest_does(void **state)
{
    uint64_t s, n;

    (void)state;
    vm_ab_slice(START, 10, 3, 0, &s, &n);
    assert_int_equal(s, START);
    assert_int_equal(n, 3);
    vm_ab_slice(START, 10, 3, 1, &s, &n);
    assert_int_equal(s, START + 3 * PAGE);
    assert_int_equal(n, 3);
    vm_ab_slice(START, 10, 3, 2, &s, &n); /* the last takes the remainder */
    assert_int_equal(s, START + 6 * PAGE);
    assert_int_equal(n, 4);
    vm_ab_slice(START, 2, 4, 1, &s, &n); /* more vCPUs than pages: only the last has any */
    assert_int_equal(n, 0);
    vm_ab_slice(START, 2, 4, 3, &s, &n);
    assert_int_equal(s, START);
    assert_int_equal(n, 2);
}

/* Two vCPUs at different pass counts, each stopped mid-pass: one edge in each slice, all fine. */
static void test_edge_per_slice(void **state)
{
    Vm *vm = bare_vm();
    VmCheck res;

    (void)state;
    set_params(vm, 100, 2);
    fill(vm, 0, 30, 8);  /* slice 0: pages 0..49, edge at 30 */
    fill(vm, 30, 20, 7);
    fill(vm, 50, 10, 3); /* slice 1: pages 50..99, edge at 60 */
    fill(vm, 60, 40, 2);
    check_ok(vm, &res);
    assert_int_equal(res.mismatches, 0);
    assert_int_equal(res.nslices, 2);
    assert_true(res.edge);
    assert_int_equal(res.edge_page, 30);
    assert_int_equal(res.first_byte, 8);
    assert_true(res.slices[0].edge && res.slices[1].edge);
    assert_int_equal(res.slices[0].edge_page, 30);
    assert_int_equal(res.slices[1].edge_page, 10);
    assert_int_equal(res.slices[1].start, START + 50 * PAGE);
    assert_int_equal(res.slices[1].first_byte, 3);
    bare_vm_free(vm);
}

/* A second step inside one slice is a mismatch of that slice; the other slice stays clean. */
static void test_second_step_is_a_mismatch(void **state)
{
    Vm *vm = bare_vm();
    VmCheck res;

    (void)state;
    set_params(vm, 100, 2);
    fill(vm, 0, 50, 5);
    fill(vm, 50, 10, 9);
    fill(vm, 60, 10, 8);
    fill(vm, 70, 30, 7);
    check_ok(vm, &res);
    assert_int_equal(res.slices[0].mismatches, 0);
    assert_int_equal(res.slices[1].mismatches, 1);
    assert_int_equal(res.mismatches, 1);
    assert_non_null(strstr(res.detail, "first byte 0x07 after 0x08"));
    /* A step up is a mismatch too (a page written that should not have been, or one lost). */
    fill(vm, 70, 30, 8);
    fill(vm, 10, 1, 6);
    check_ok(vm, &res);
    assert_int_equal(res.slices[0].mismatches, 1);
    assert_int_equal(res.mismatches, 1);
    bare_vm_free(vm);
}

/* An image from before the vCPU count (0 there) is one slice: a step between the halves is its one edge, two
 * steps are a mismatch, exactly as before. */
static void test_zero_cpus_is_one_slice(void **state)
{
    Vm *vm = bare_vm();
    VmCheck res;

    (void)state;
    set_params(vm, 100, 0);
    fill(vm, 0, 50, 4);
    fill(vm, 50, 50, 3);
    check_ok(vm, &res);
    assert_int_equal(res.nslices, 1);
    assert_int_equal(res.mismatches, 0);
    assert_true(res.edge);
    assert_int_equal(res.edge_page, 50);
    fill(vm, 80, 20, 2);
    check_ok(vm, &res);
    assert_int_equal(res.mismatches, 1);
    bare_vm_free(vm);
}

static void test_bad_blocks_refused(void **state)
{
    Vm *vm = bare_vm();
    FerryError *err = NULL;
    VmCheck res;

    (void)state;
    assert_false(vm_ab_check(vm, &res, &err)); /* no magic */
    assert_non_null(strstr(ferry_error_msg(err), "not the A-B guest"));
    ferry_error_free(err);
    err = NULL;
    set_params(vm, 100, VM_MAX_SMP + 1);
    assert_false(vm_ab_check(vm, &res, &err));
    assert_non_null(strstr(ferry_error_msg(err), "65 vCPUs"));
    ferry_error_free(err);
    err = NULL;
    set_params(vm, (uint32_t)(RAM / PAGE), 1); /* runs past the end of RAM */
    assert_false(vm_ab_check(vm, &res, &err));
    assert_non_null(strstr(ferry_error_msg(err), "is not RAM"));
    ferry_error_free(err);
    bare_vm_free(vm);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_slices_cut_as_the_guest_does),
        cmocka_unit_test(test_edge_per_slice),
        cmocka_unit_test(test_second_step_is_a_mismatch),
        cmocka_unit_test(test_zero_cpus_is_one_slice),
        cmocka_unit_test(test_bad_blocks_refused),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
