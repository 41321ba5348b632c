/*
 * Helpers of the hosts/vm unit tests (test-state.c, test-check.c, test-virtio-net.c). Include after cmocka.h.
 *
 * bare_vm(): the machine the KVM-less tests build by hand: guest RAM of BARE_VM_RAM bytes at guest-physical 0 in one
 * slot, the PCI bus, the parking lock and condition (for vm_hold/vm_release; there are no threads to park), and no
 * KVM at all (vm_fd -1: the PCI bus keeps its interrupt lines' levels itself). Not a VM that runs anything.
 *
 * section_roundtrip(): a state section saved and loaded through the engine's own binary visitors.
 */
#ifndef FERRY_TEST_VM_TEST_H
#define FERRY_TEST_VM_TEST_H

#include <stdlib.h>

#include "visitor/visitor-int.h"
#include "vm.h"

#define BARE_VM_RAM (UINT64_C(4) << 20)

static inline Vm *bare_vm(void)
{
    Vm *vm = calloc(1, sizeof(*vm));

    assert_non_null(vm);
    vm->ram_host = calloc(1, BARE_VM_RAM);
    assert_non_null(vm->ram_host);
    vm->lowmem = BARE_VM_RAM;
    vm->slots[0] = (VmSlot){ .slot = 0, .gpa = 0, .size = BARE_VM_RAM, .block_offset = 0 };
    vm->nslots = 1;
    vm->vm_fd = -1;
    vm->kvm_fd = -1;
    pthread_mutex_init(&vm->lock, NULL);
    pthread_cond_init(&vm->cond, NULL);
    vm->pci = pci_bus_new(vm, NULL);
    assert_non_null(vm->pci);
    return vm;
}

/* Frees the NICs in vm->nics too. */
static inline void bare_vm_free(Vm *vm)
{
    for (unsigned i = 0; i < vm->nnics; i++) {
        virtio_net_free(vm->nics[i]);
    }
    pci_bus_free(vm->pci);
    pthread_cond_destroy(&vm->cond);
    pthread_mutex_destroy(&vm->lock);
    free(vm->ram_host);
    free(vm);
}

/* Save with @fn(@src) and load with @fn(@dst) through the engine's binary output and input visitors (the schema the
 * output wrote checks the load); the load's result, its error in *@errp. The save must succeed, and a load that
 * succeeds must have used every field of the stream. */
static inline bool section_roundtrip(FerrySectionFn fn, void *src, void *dst, FerryError **errp)
{
    FerryVisitor *v = ferry__visitor_output_new();
    FerryError *err = NULL;
    FerrySchema *schema = NULL;
    uint8_t *data = NULL;
    size_t len = 0;

    if (!fn(v, src, 1, &err)) {
        print_error("save: %s\n", ferry_error_msg(err));
        fail();
    }
    assert_true(ferry__visitor_output_finish(v, &schema, &data, &len, NULL));
    ferry_visitor_free(v);
    v = ferry__visitor_input_new("test", schema, data, len, NULL);
    assert_non_null(v);
    bool ok = fn(v, dst, 1, errp) && ferry__visitor_input_finish(v, errp);
    if (ok) {
        assert_int_equal(ferry__visitor_input_skipped(v), 0);
    }
    ferry_visitor_free(v);
    ferry__schema_free(schema);
    free(data);
    return ok;
}

#endif
