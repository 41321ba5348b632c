/*
 * Unit tests of ferry-vm's dirty ring tracker (hosts/vm/dirty-log.c's vm_dirty_ring_ops, and vm.c's handling of
 * KVM_EXIT_DIRTY_RING_FULL): a VM made with a dirty ring runs the A-B guest, which rewrites every page from 1 MiB
 * to the end of its RAM, while the tracker is armed and harvested. The check is the tracker's contract
 * (include/ferry/ram.h): with the vCPUs stopped, RAM is copied; the guest runs while the test harvests now and
 * then; the vCPUs stop and a last harvest is taken; every page that differs from the copy must have been reported
 * by one of those harvests, and nothing the guest cannot write may be. A ring of QEMU's smallest size (1024
 * entries) is smaller than one pass of the guest, so its vCPU must fill it, collect it itself and go on; the same
 * happens with the slots logging but the tracker not armed, where the collected entries are dropped. The probe is
 * run as start-up runs it, and the probes' acceptance rule (the pages written, plus at most the code page) is
 * checked on its own, without KVM. Not tested here: several vCPUs writing (the VMs here have one; a 2-vCPU A-B guest
 * crawls under the emulated KVM these tests also run on), and the engine (tests/integration/test_vm.py migrates with the ring). Every test but the rule's skips where /dev/kvm
 * cannot be opened or KVM has no dirty ring.
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

#include "vm.h"

#define PAGE 4096u
#define RAM (UINT64_C(8) << 20)
#define NPAGES (RAM / PAGE)
#define BITS (8 * sizeof(unsigned long))
#define WORDS ((NPAGES + BITS - 1) / BITS)

/* The largest ring KVM offers in entries, 0 without a ring; skips the test without /dev/kvm or a ring. */
static uint32_t skip_without_ring(void)
{
    int fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    int max;

    if (fd < 0) {
        print_message("skipping: /dev/kvm cannot be opened\n");
        skip();
    }
    max = ioctl(fd, KVM_CHECK_EXTENSION, KVM_CAP_DIRTY_LOG_RING);
    if (max <= 0) {
        max = ioctl(fd, KVM_CHECK_EXTENSION, KVM_CAP_DIRTY_LOG_RING_ACQ_REL);
    }
    close(fd);
    if (max <= 0) {
        print_message("skipping: this KVM has no dirty ring (KVM_CAP_DIRTY_LOG_RING)\n");
        skip();
    }
    return (uint32_t)((size_t)max / sizeof(struct kvm_dirty_gfn));
}

static Vm *new_ring_vm(uint32_t entries)
{
    VmConfig cfg = { .ram_size = RAM, .smp = 1, .serial_mode = VM_SERIAL_NULL, .dirty_ring_size = entries };
    FerryError *err = NULL;
    Vm *vm = vm_new(&cfg, &err);

    if (!vm) {
        print_error("vm_new: %s\n", ferry_error_msg(err));
        fail();
    }
    assert_int_equal(vm->ring_size, entries);
    assert_non_null(vm->vcpus[0].ring);
    assert_false(vm->manual_protect);
    vm->serial = serial_new(vm, -1, false, -1);
    assert_non_null(vm->serial);
    assert_true(vm_setup_ram(vm, NULL, &err));
    assert_true(vm_boot(vm, NULL));
    assert_true(vm_start_threads(vm, NULL));
    vm->ram = (FerryRamBlock *)(uintptr_t)1; /* the harvest only compares the pointer */
    return vm;
}

static void free_ring_vm(Vm *vm)
{
    vm->ram = NULL;
    vm_free(vm);
}

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void sleep_ms(long ms)
{
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000 * 1000 };

    nanosleep(&ts, NULL);
}

static bool vcpu_dead(Vm *vm)
{
    bool dead;

    pthread_mutex_lock(&vm->lock);
    dead = vm->vcpus[0].dead;
    pthread_mutex_unlock(&vm->lock);
    return dead;
}

static void harvest(Vm *vm, unsigned long *map)
{
    FerryError *err = NULL;

    if (!vm_dirty_ring_ops.harvest(vm, vm->ram, map, &err)) {
        print_error("harvest: %s\n", ferry_error_msg(err));
        fail();
    }
}

/*
 * The contract, with a ring of @entries: run the guest 200 ms, harvesting every 20 ms while it runs (and, with
 * @want_full, then until its ring filled at least once, without harvesting: the guest fills it after @entries
 * page writes however slowly it runs, where a harvest every 20 ms outpaced a slow emulated guest that never
 * wrote that many pages between two), then stop it and harvest once more.
 */
static void check_contract(uint32_t entries, bool want_full)
{
    Vm *vm = new_ring_vm(entries);
    unsigned long *acc = calloc(WORDS, sizeof(*acc));
    uint8_t *copy = malloc(RAM);
    uint64_t changed = 0, reported = 0, fulls;
    double t0;

    assert_non_null(acc);
    assert_non_null(copy);
    assert_true(vm_dirty_ring_ops.start(vm, NULL));
    /* A first stretch, then a harvest with the vCPU stopped: from here on every write must show up. */
    vm_ops.start(vm);
    sleep_ms(50);
    vm_ops.stop(vm);
    harvest(vm, acc);
    memset(acc, 0, WORDS * sizeof(*acc));
    memcpy(copy, vm->ram_host, RAM);
    fulls = atomic_load(&vm->ring_full_exits);

    vm_ops.start(vm);
    t0 = now_s();
    for (;;) {
        sleep_ms(20);
        if (now_s() - t0 < 0.2) {
            harvest(vm, acc);
            continue;
        }
        if (!want_full || atomic_load(&vm->ring_full_exits) > fulls) {
            break;
        }
        if (now_s() - t0 > 60) {
            print_error("the ring of %u entries did not fill within 60 s\n", entries);
            fail();
        }
    }
    vm_ops.stop(vm);
    harvest(vm, acc);
    assert_false(vcpu_dead(vm));

    for (uint64_t p = 0; p < NPAGES; p++) {
        bool bit = acc[p / BITS] & (1UL << (p % BITS));

        if (memcmp(copy + p * PAGE, vm->ram_host + p * PAGE, PAGE) != 0) {
            changed++;
            if (!bit) {
                print_error("page %llu was written but no harvest reported it\n", (unsigned long long)p);
                fail();
            }
        }
        if (bit) {
            reported++;
            /* The guest writes its range from 1 MiB and its stack (page 7, below 0x7c00), nothing else. */
            if (p < 256 && p != 7) {
                print_error("page %llu below 1 MiB reported written\n", (unsigned long long)p);
                fail();
            }
        }
    }
    print_message("ring of %u entries: %llu pages changed, %llu reported, %llu ring-full exits, %llu entries "
                  "collected\n", entries, (unsigned long long)changed, (unsigned long long)reported,
                  (unsigned long long)(atomic_load(&vm->ring_full_exits) - fulls),
                  (unsigned long long)vm->ring_collected);
    assert_true(changed > 0);
    if (want_full) {
        assert_true(atomic_load(&vm->ring_full_exits) > fulls);
    }
    vm_dirty_ring_ops.stop(vm);
    assert_null(vm->ring_pending);
    free(copy);
    free(acc);
    free_ring_vm(vm);
}

/* The probes' acceptance rule, without KVM: the pages written, plus at most the code page (0). */
static void test_probe_rule(void **state)
{
    const unsigned long w13 = (1UL << 1) | (1UL << 3);
    unsigned long map[2] = { 0, 0 };

    map[0] = w13;
    assert_true(vm_dirty_probe_report_ok(map, 2, w13));
    map[0] = w13 | 1UL; /* the emulated KVM's report */
    assert_true(vm_dirty_probe_report_ok(map, 2, w13));
    map[0] = (1UL << 3) | 1UL;
    assert_true(vm_dirty_probe_report_ok(map, 2, 1UL << 3));
    map[0] = 1UL << 1; /* page 3 missing: a lost write */
    assert_false(vm_dirty_probe_report_ok(map, 2, w13));
    map[0] = 1UL; /* only the code page */
    assert_false(vm_dirty_probe_report_ok(map, 2, 1UL << 3));
    map[0] = 0;
    assert_false(vm_dirty_probe_report_ok(map, 2, w13));
    map[0] = w13 | (1UL << 2); /* a page nobody wrote */
    assert_false(vm_dirty_probe_report_ok(map, 2, w13));
    map[0] = w13;
    map[1] = 1UL; /* one in the second word */
    assert_false(vm_dirty_probe_report_ok(map, 2, w13));
}

static void test_ring_probe(void **state)
{
    FerryError *err = NULL;

    skip_without_ring();
    for (uint32_t entries = VM_DIRTY_RING_MIN; entries <= VM_DIRTY_RING_DEFAULT; entries *= 4) {
        if (!vm_dirty_ring_probe(entries, &err)) {
            print_error("the ring probe (%u entries) failed: %s\n", entries, ferry_error_msg(err));
            fail();
        }
    }
}

static void test_ring_too_big_refused(void **state)
{
    uint32_t max = skip_without_ring();
    VmConfig cfg = { .ram_size = RAM, .smp = 1, .serial_mode = VM_SERIAL_NULL, .dirty_ring_size = max * 2 };
    FerryError *err = NULL;
    char want[64];

    assert_null(vm_new(&cfg, &err));
    snprintf(want, sizeof(want), "dirty-ring-size=%u", max * 2);
    assert_non_null(strstr(ferry_error_msg(err), want));
    assert_non_null(strstr(ferry_error_msg(err), "largest ring"));
    ferry_error_free(err);
}

static void test_ring_contract(void **state)
{
    skip_without_ring();
    check_contract(VM_DIRTY_RING_DEFAULT, false);
}

static void test_ring_full(void **state)
{
    skip_without_ring();
    check_contract(VM_DIRTY_RING_MIN, true);
}

/* The slots log but the tracker is not armed (no pending bitmap): a full ring is collected, its entries dropped,
 * and the vCPU goes on rather than spinning or stopping. */
static void test_ring_full_unarmed(void **state)
{
    skip_without_ring();
    Vm *vm = new_ring_vm(VM_DIRTY_RING_MIN);
    uint64_t collected;
    double t0;

    assert_true(vm_set_slot_flags(vm, KVM_MEM_LOG_DIRTY_PAGES, NULL));
    vm_ops.start(vm);
    t0 = now_s();
    while (atomic_load(&vm->ring_full_exits) < 2) {
        sleep_ms(20);
        if (now_s() - t0 > 60) {
            print_error("the ring did not fill twice within 60 s\n");
            fail();
        }
    }
    vm_ops.stop(vm);
    assert_false(vcpu_dead(vm));
    assert_null(vm->ring_pending);
    pthread_mutex_lock(&vm->ring_lock);
    collected = vm->ring_collected;
    pthread_mutex_unlock(&vm->ring_lock);
    /* Each fill left at least the ring less KVM's reserve to collect. */
    assert_true(collected >= VM_DIRTY_RING_MIN / 2);
    assert_true(vm_set_slot_flags(vm, 0, NULL));
    free_ring_vm(vm);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_probe_rule),
        cmocka_unit_test(test_ring_probe),
        cmocka_unit_test(test_ring_too_big_refused),
        cmocka_unit_test(test_ring_contract),
        cmocka_unit_test(test_ring_full),
        cmocka_unit_test(test_ring_full_unarmed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
