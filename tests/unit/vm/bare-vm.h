/*
 * The machine the KVM-less unit tests of hosts/vm build by hand (test-check.c, test-virtio-net.c): guest RAM of
 * BARE_VM_RAM bytes at guest-physical 0 in one slot, the PCI bus, the parking lock and condition (for
 * vm_hold/vm_release; there are no threads to park), and no KVM at all (vm_fd -1: the PCI bus keeps its interrupt
 * lines' levels itself). Not a VM that runs anything. Include after cmocka.h.
 */
#ifndef FERRY_TEST_BARE_VM_H
#define FERRY_TEST_BARE_VM_H

#include <stdlib.h>

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

#endif
