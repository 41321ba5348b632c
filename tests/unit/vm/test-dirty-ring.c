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
 * checked on its own, without KVM. dirty-limit (hosts/vm/dirty-limit.c): the contract holds with the limit thread
 * counting and collecting all along; a limit of a third of the guest's counted rate holds it within 20%, lifting it
 * restores the rate; without a ring writer_stats says how to get one. Not tested here: several vCPUs writing (the VMs here have one; a 2-vCPU A-B guest
 * crawls under the emulated KVM these tests also run on), and the engine (tests/integration/test_vm.py migrates with the ring). Every test but the rule's skips where /dev/kvm
 * cannot be opened or KVM has no dirty ring.
 *
 * Where KVM has a ring that fails ferry-vm's start-up probe (a KVM that runs a vCPU past its full ring and loses
 * entries, as kvm_pvm on this project's machine does: dirty-log.c), what is tested is that refusal instead: every
 * test that needs a ring VM checks that vm_new refuses one with the probe's reason, and the probe must fail the
 * same way (its ring-past-full part, the two-page part passing) for every size; a test then has nothing else to
 * check, as ferry-vm has no ring there to test. A probe that passes where the ring loses entries fails the
 * contract tests below.
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

/* Whether this KVM's ring passes ferry-vm's start-up probe with @entries entries. Where it does not, checks that
 * the failure is the ring-past-full check's and that vm_new refuses a VM with that ring, saying why. */
static bool ring_usable(uint32_t entries)
{
    VmConfig cfg = { .ram_size = RAM, .smp = 1, .serial_mode = VM_SERIAL_NULL, .dirty_ring_size = entries };
    FerryError *err = NULL;
    char want[96];

    if (vm_dirty_ring_probe(entries, &err)) {
        return true;
    }
    print_message("the ring probe (%u entries) failed: %s\n", entries, ferry_error_msg(err));
    assert_true(strncmp(ferry_error_msg(err), "KVM's dirty ring ", 17) == 0);
    ferry_error_free(err);
    err = NULL;
    assert_null(vm_new(&cfg, &err));
    snprintf(want, sizeof(want), "dirty-ring-size=%u: the dirty ring's start-up probe failed: KVM's dirty ring ",
             entries);
    assert_non_null(err);
    assert_true(strncmp(ferry_error_msg(err), want, strlen(want)) == 0);
    print_message("vm_new refuses it: %s\n", ferry_error_msg(err));
    ferry_error_free(err);
    return false;
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
static void check_contract(uint32_t entries, bool want_full, bool counting)
{
    Vm *vm = new_ring_vm(entries);
    unsigned long *acc = calloc(WORDS, sizeof(*acc));
    uint8_t *copy = malloc(RAM);
    uint64_t changed = 0, reported = 0, fulls;
    double t0;

    assert_non_null(acc);
    assert_non_null(copy);
    if (counting) {
        /* The limit thread counts (and collects every 100 ms) all along, as with a dirty limit set. */
        FerryWriterStats st[1];
        const char *why = NULL;

        vm_dirty_limit(vm, 0, 1000, 100);
        assert_int_equal(vm_writer_stats(vm, st, 1, &why), 1);
        assert_true(vm->slot_flags & KVM_MEM_LOG_DIRTY_PAGES);
    }
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
    /* Disarming leaves the slots logging while the limit thread counts. */
    assert_int_equal(!!(vm->slot_flags & KVM_MEM_LOG_DIRTY_PAGES), counting);
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
    /* Its two-page part alone passes at every size (the ring records writes at all); the whole probe passes at
     * every size or at none, as its ring-past-full part does not depend on the size asked for. */
    bool usable = ring_usable(VM_DIRTY_RING_MIN);
    for (uint32_t entries = VM_DIRTY_RING_MIN; entries <= VM_DIRTY_RING_DEFAULT; entries *= 4) {
        if (!vm_dirty_ring_pages_probe(entries, &err)) {
            print_error("the ring's two-page probe (%u entries) failed: %s\n", entries, ferry_error_msg(err));
            fail();
        }
        assert_true(ring_usable(entries) == usable);
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
    if (!ring_usable(VM_DIRTY_RING_DEFAULT)) {
        return;
    }
    check_contract(VM_DIRTY_RING_DEFAULT, false, false);
}

/* The same with the limit thread counting and collecting all along: the harvests still see every page. */
static void test_ring_contract_counting(void **state)
{
    skip_without_ring();
    if (!ring_usable(VM_DIRTY_RING_DEFAULT)) {
        return;
    }
    check_contract(VM_DIRTY_RING_DEFAULT, false, true);
}

static void test_ring_full(void **state)
{
    skip_without_ring();
    if (!ring_usable(VM_DIRTY_RING_MIN)) {
        return;
    }
    check_contract(VM_DIRTY_RING_MIN, true, false);
}

/* The slots log but the tracker is not armed (no pending bitmap): a full ring is collected, its entries dropped,
 * and the vCPU goes on rather than spinning or stopping. */
static void test_ring_full_unarmed(void **state)
{
    skip_without_ring();
    if (!ring_usable(VM_DIRTY_RING_MIN)) {
        return;
    }
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

/* vCPU 0's counted pages over @ms ms, as MB/s (2^20 bytes), and its throttle_us then. */
static double counted_rate(Vm *vm, long ms, uint64_t *throttle_us)
{
    FerryWriterStats a[1], b[1];
    const char *why = NULL;
    double t0, t1;

    assert_int_equal(vm_writer_stats(vm, a, 1, &why), 1);
    t0 = now_s();
    sleep_ms(ms);
    assert_int_equal(vm_writer_stats(vm, b, 1, &why), 1);
    t1 = now_s();
    if (throttle_us) {
        *throttle_us = b[0].throttle_us;
    }
    return (double)(b[0].dirty_pages - a[0].dirty_pages) * PAGE / (1 << 20) / (t1 - t0);
}

/*
 * dirty-limit on one vCPU running the A-B guest: its counted rate unlimited (R0), then limited to a third of it
 * (at least 1 MB/s), which must hold the counted rate over 4 s within 20% of the limit (after 3 s to settle,
 * with a period of 500 ms), and with the limit lifted it must be back above 1.5 times the limit. The rates of the
 * periods (rate_mbps) are printed as they come. Skipped when the emulated guest is too slow for a limit of 1 MB/s to
 * be a third of its rate.
 */
static void test_dirty_limit(void **state)
{
    skip_without_ring();
    if (!ring_usable(VM_DIRTY_RING_DEFAULT)) {
        return;
    }
    Vm *vm = new_ring_vm(VM_DIRTY_RING_DEFAULT);
    FerryWriterStats st[2];
    const char *why = NULL;
    uint64_t thr0, thr1;
    double r0, r, lifted;
    uint64_t limit;

    vm_ops.start(vm);
    /* The first call turns counting on: the rate is measured from the second. */
    assert_int_equal(vm_writer_stats(vm, st, 2, &why), 1);
    assert_int_equal(st[0].limit_mbps, 0);
    sleep_ms(500);
    r0 = counted_rate(vm, 3000, &thr0);
    print_message("unlimited: %.2f MB/s counted\n", r0);
    if (r0 < 3) {
        print_message("skipping: the guest dirties %.2f MB/s, too slow for a limit of a third of it\n", r0);
        vm_ops.stop(vm);
        free_ring_vm(vm);
        skip();
    }
    limit = (uint64_t)(r0 / 3);
    vm_dirty_limit(vm, -1, limit, 500);
    for (int i = 0; i < 6; i++) {
        sleep_ms(500);
        assert_int_equal(vm_writer_stats(vm, st, 1, &why), 1);
        print_message("limit %llu MB/s: period rate %llu MB/s, throttle_us %llu\n", (unsigned long long)limit,
                      (unsigned long long)st[0].rate_mbps, (unsigned long long)st[0].throttle_us);
    }
    assert_int_equal(st[0].limit_mbps, limit);
    r = counted_rate(vm, 4000, &thr1);
    print_message("limit %llu MB/s: %.2f MB/s counted over 4 s, %.2f s slept for it\n", (unsigned long long)limit, r,
                  (double)(thr1 - thr0) / 1e6);
    assert_true(thr1 > thr0);
    assert_true(r >= 0.8 * (double)limit && r <= 1.2 * (double)limit);

    vm_dirty_limit(vm, -1, 0, 500);
    sleep_ms(1000);
    lifted = counted_rate(vm, 2000, &thr0);
    assert_int_equal(vm_writer_stats(vm, st, 1, &why), 1);
    print_message("lifted: %.2f MB/s counted, throttle_us %llu\n", lifted, (unsigned long long)st[0].throttle_us);
    assert_int_equal(st[0].limit_mbps, 0);
    assert_int_equal(st[0].throttle_us, thr0); /* no sleep since */
    assert_true(lifted > 1.5 * (double)limit);
    assert_false(vcpu_dead(vm));
    vm_ops.stop(vm);
    free_ring_vm(vm);
}

/* Without a ring there are no per-vCPU counts: writer_stats says so and how to get them. */
static void test_no_ring_refused(void **state)
{
    VmConfig cfg = { .ram_size = RAM, .smp = 1, .serial_mode = VM_SERIAL_NULL };
    FerryError *err = NULL;
    FerryWriterStats st[1];
    const char *why = NULL;
    Vm *vm;

    skip_without_ring();
    vm = vm_new(&cfg, &err);
    assert_non_null(vm);
    assert_int_equal(vm_writer_stats(vm, st, 1, &why), 0);
    assert_non_null(why);
    assert_non_null(strstr(why, "-accel kvm,dirty-ring-size=N"));
    vm_dirty_limit(vm, 0, 10, 1000); /* does nothing */
    assert_int_equal(atomic_load(&vm->vcpus[0].limit_mbps), 0);
    vm_free(vm);
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
        cmocka_unit_test(test_ring_contract_counting),
        cmocka_unit_test(test_dirty_limit),
        cmocka_unit_test(test_no_ring_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
