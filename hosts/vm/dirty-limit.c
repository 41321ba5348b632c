/*
 * ferry-vm's per-vCPU dirty counts and dirty limits (FerryHostOps.writer_stats and dirty_limit, include/ferry/host.h),
 * over KVM's dirty ring: what set-/cancel-/query-vcpu-dirty-limit, the dirty-limit capability and calc-dirty-rate's
 * dirty-ring mode ask of the host. Not the ring tracker itself (dirty-log.c), nor auto-converge's throttle (vm.c),
 * which this coexists with: a vCPU may sleep for both.
 *
 * Counting. Each entry of a vCPU's ring is a page that vCPU dirtied, so every collection of the rings (the
 * migration's harvests, a vCPU's own after KVM_EXIT_DIRTY_RING_FULL, and the limit thread's) adds each vCPU's
 * entries to its dirty_pages. KVM records entries only while the slots log (KVM_MEM_LOG_DIRTY_PAGES), which
 * outside a migration nobody asks for, and nobody collects the rings until one fills. So the limit thread, started
 * the first time a limit is set or counts are asked for, makes the slots log while any limit is set or for
 * STATS_KEEP_NS after the last writer_stats call ("counting"), and collects every period. Collected entries go to
 * the ring tracker's pending bitmap while it is armed, as any collection's do, so a migration's harvests still see
 * every page; when the tracker is disarmed during counting the slots go on logging (dirty-log.c's ring_stop asks
 * vm_limit_counting_locked), and when counting ends while the tracker is armed the slots stay logging for it. Both
 * decisions are taken under ring_lock. writer_stats collects too before it reads, so that a reader's differences
 * (calc-dirty-rate's) cover exactly the time between its calls, not the limit thread's periods; its first call
 * turns logging on, so pages count from then on (a call with @max 0, the engine asking whether there are counts
 * at all, starts nothing). What is counted is what QEMU's dirty-ring rate counts: a page once
 * per collection, however often it was written in between.
 *
 * Limiting. Each vCPU with a limit has a quota per period (x-vcpu-dirty-limit-period): limit * period. From the
 * start of a period it runs freely while the limit thread checks its count (collecting the rings first), the next
 * check due when, at the highest rate it was recently seen writing, it would have used 3/4 of what it has left;
 * once it has used its quota it is kicked as the auto-converge throttle kicks (immediate_exit and the signal, its
 * own "limit pending" mark) and its own thread sleeps until the period ends, in naps that end when the VM stops or
 * the limit is lifted, counting the time in throttle_us. A check comes late by however long the limit thread
 * waits to be scheduled, so a vCPU runs over its quota by what it writes meanwhile; that excess is owed by the next
 * periods (at most 4 quotas of it), which keeps the rate over several periods at the limit. A vCPU under its quota
 * sleeps nothing; a limit set during a period holds from the next. This is QEMU's structure (the limit thread
 * measures per period, the vCPU sleeps in its own thread) with another trigger: QEMU sleeps a vCPU at each of its
 * ring-full exits, adjusting the sleep once per period toward the quota, which with a ring of thousands of entries
 * and a limit of a few MB/s comes seconds apart and takes periods to settle; counting against the quota holds each
 * period whatever the ring's size. ring_full_us is the time a vCPU spent after its ring-full exits collecting the
 * rings (waiting on ring_lock included) before it could go on.
 *
 * Without a ring (no -accel kvm,dirty-ring-size, so the bitmap or uffd-wp tracker) the counts are of the whole VM,
 * not of a vCPU: writer_stats returns 0 with that reason and dirty_limit does nothing (the engine refuses first).
 */
#include <errno.h>
#include <signal.h>
#include <string.h>
#include <time.h>

#include "vm.h"

#define PAGE 4096u
#define MB (UINT64_C(1) << 20)
#define NS_PER_S INT64_C(1000000000)
/* How long counting goes on after a writer_stats call: longer than calc-dirty-rate's longest measurement (QEMU's
 * 60 s), so that its second reading finds the first one's counting still on. */
#define STATS_KEEP_NS (65 * NS_PER_S)
#define DEFAULT_PERIOD_MS 1000
#define NAP_NS INT64_C(1000000)
/* The shortest time between two checks of a limited vCPU's pages. */
#define CHECK_MIN_NS INT64_C(2000000)
#define KICK_SIGNAL SIGUSR1 /* vm.c's */

static const char no_ring[] = "ferry-vm counts dirty pages per vCPU only with KVM's dirty ring; start it with "
                              "-accel kvm,dirty-ring-size=N (N a power of two from 1024 to 65536)";

int64_t vm_mono_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * NS_PER_S + ts.tv_nsec;
}

void vm_limit_init(Vm *vm)
{
    pthread_condattr_t ca;

    pthread_mutex_init(&vm->limit_lock, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&vm->limit_cond, &ca);
    pthread_condattr_destroy(&ca);
    vm->limit_period_ms = DEFAULT_PERIOD_MS;
}

bool vm_limit_counting_locked(Vm *vm)
{
    return vm->counting;
}

/* Counting on or off: the slots' logging follows unless the ring tracker is armed, which keeps it on. Caller
 * holds ring_lock. */
static void set_counting_locked(Vm *vm, bool on)
{
    FerryError *err = NULL;

    if (on == vm->counting) {
        return;
    }
    if (on && !(vm->slot_flags & KVM_MEM_LOG_DIRTY_PAGES) &&
        !vm_set_slot_flags(vm, KVM_MEM_LOG_DIRTY_PAGES, &err)) {
        fprintf(stderr, "ferry-vm: turning the dirty log on to count dirty pages: %s\n", ferry_error_msg(err));
        ferry_error_free(err);
        return;
    }
    if (!on && !vm->ring_pending && !vm_set_slot_flags(vm, 0, &err)) {
        fprintf(stderr, "ferry-vm: turning the dirty log off after counting: %s\n", ferry_error_msg(err));
        ferry_error_free(err);
    }
    vm->counting = on;
}

static void set_counting(Vm *vm, bool on)
{
    pthread_mutex_lock(&vm->ring_lock);
    set_counting_locked(vm, on);
    pthread_mutex_unlock(&vm->ring_lock);
}

static void collect(Vm *vm)
{
    FerryError *err = NULL;

    if (!vm_dirty_ring_collect(vm, NULL, &err)) {
        fprintf(stderr, "ferry-vm: collecting the dirty rings: %s\n", ferry_error_msg(err));
        ferry_error_free(err);
    }
}

/* Kick a running vCPU into vm_limit_sleep, as the throttle thread kicks it (vm.c). */
static void kick(Vm *vm, unsigned i)
{
    pthread_mutex_lock(&vm->lock);
    if (i < vm->threads_started && atomic_load(&vm->go) && !vm->quit) {
        Vcpu *cpu = &vm->vcpus[i];

        atomic_store(&cpu->limit_pending, true);
        cpu->run->immediate_exit = 1;
        pthread_kill(cpu->thread, KICK_SIGNAL);
    }
    pthread_mutex_unlock(&vm->lock);
}

/* The limit thread's per-vCPU state within a period. */
typedef struct PeriodState {
    uint64_t base;       /* its pages at the period's start */
    uint64_t seen;       /* ... at the last check, taken at seen_ns */
    int64_t seen_ns;
    int64_t next_ns;     /* when to check it next; 0: not limited, or asleep until the period's end */
    double rate;         /* pages per ns it wrote between checks: the highest, decaying over checks and periods */
    bool limited;        /* it had a limit when the period began */
    double debt;         /* pages the earlier periods ran over their quota, owed by this one (0..4 quotas) */
} PeriodState;

static bool any_limit(Vm *vm)
{
    for (unsigned i = 0; i < vm->nvcpus; i++) {
        if (atomic_load(&vm->vcpus[i].limit_mbps)) {
            return true;
        }
    }
    return false;
}

/* A new period from @now: rates of the one that ended (@dt ns long, 0: none), fresh quotas. */
static void new_period(Vm *vm, PeriodState *ps, int64_t now, int64_t dt, int period_ms)
{
    for (unsigned i = 0; i < vm->nvcpus; i++) {
        Vcpu *cpu = &vm->vcpus[i];
        uint64_t pages = atomic_load(&cpu->dirty_pages);

        if (dt > 0) {
            double mbps = (double)(pages - ps[i].base) * PAGE * NS_PER_S / (double)dt / MB;
            atomic_store(&cpu->rate_mbps, (uint64_t)(mbps + 0.5));
        }
        /* A check comes some time after the vCPU used its quota (the limit thread must be scheduled, and under the
         * emulated KVM that took 20 ms, in which a vCPU wrote 700 pages): what it ran over is owed by the next
         * periods, so that its rate over several periods is the limit, not the limit plus that overshoot. */
        uint64_t limit = atomic_load(&cpu->limit_mbps);
        double quota = (double)limit * MB / PAGE * (double)period_ms / 1000, debt = 0;
        if (limit && ps[i].limited && dt > 0) {
            debt = ps[i].debt + (double)(pages - ps[i].base) - quota;
            debt = debt < 0 ? 0 : debt > 4 * quota ? 4 * quota : debt;
        }
        ps[i] = (PeriodState){ .base = pages, .seen = pages, .seen_ns = now, .rate = ps[i].rate,
                               .limited = limit != 0, .debt = debt, .next_ns = limit ? now + CHECK_MIN_NS : 0 };
    }
}

/*
 * Check the limited vCPUs due at @now (the rings just collected): one that used its quota of the period ending at
 * @end sleeps until then; the others are checked again when, at the rate seen since their last check, they will
 * have used it (at least CHECK_MIN_NS, at most a tenth of the period later). Returns the earliest next check.
 */
static int64_t check_quotas(Vm *vm, PeriodState *ps, int64_t now, int64_t end, int period_ms)
{
    int64_t next = end, max_step = (int64_t)period_ms * 1000000 / 10;

    for (unsigned i = 0; i < vm->nvcpus; i++) {
        Vcpu *cpu = &vm->vcpus[i];
        uint64_t limit = atomic_load(&cpu->limit_mbps);

        if (!limit || !ps[i].next_ns) {
            continue; /* not limited when the period began (its limit holds from the next), or asleep until its end */
        }
        if (ps[i].next_ns > now) {
            next = ps[i].next_ns < next ? ps[i].next_ns : next;
            continue;
        }
        uint64_t pages = atomic_load(&cpu->dirty_pages), used = pages - ps[i].base;
        double quota = (double)limit * MB / PAGE * (double)period_ms / 1000;

        double allowed = quota - ps[i].debt;

        if ((double)used >= allowed) {
            if (end - now > CHECK_MIN_NS) {
                atomic_store(&cpu->limit_sleep_ns, (uint64_t)(end - now));
                kick(vm, i);
            }
            ps[i].next_ns = 0;
            continue;
        }
        /* The next check comes when the vCPU would have used 3/4 of what is left at the highest rate it was seen
         * writing (decaying), not at its last one: right after a period began a check finds it barely awake, and
         * a vCPU back from its sleep writes faster than on average (under the emulated KVM, 20 pages/ms where its
         * average was 4). Checking early costs a collection; checking late lets it run over its quota. */
        if (now - ps[i].seen_ns >= CHECK_MIN_NS) {
            double r = (double)(pages - ps[i].seen) / (double)(now - ps[i].seen_ns);
            ps[i].rate = r > ps[i].rate ? r : (3 * ps[i].rate + r) / 4;
        }
        double rate = ps[i].rate;
        int64_t step = rate > 0 ? (int64_t)((allowed - (double)used) * 3 / 4 / rate) : CHECK_MIN_NS;
        step = step < CHECK_MIN_NS ? CHECK_MIN_NS : step > max_step ? max_step : step;
        ps[i].seen = pages;
        ps[i].seen_ns = now;
        ps[i].next_ns = now + step;
        next = ps[i].next_ns < next ? ps[i].next_ns : next;
    }
    return next;
}

static void *limit_main(void *arg)
{
    Vm *vm = arg;
    PeriodState ps[VM_MAX_SMP];
    int64_t start = 0, end = 0; /* the current period, start 0: none (not counting) */

    pthread_mutex_lock(&vm->limit_lock);
    while (!vm->limit_quit) {
        int64_t now = vm_mono_ns();
        int period_ms = vm->limit_period_ms;

        if (!any_limit(vm) && now >= vm->stats_until_ns) {
            set_counting(vm, false);
            for (unsigned i = 0; i < vm->nvcpus; i++) {
                atomic_store(&vm->vcpus[i].rate_mbps, 0);
            }
            start = 0;
            pthread_cond_wait(&vm->limit_cond, &vm->limit_lock);
            continue;
        }
        if (!start) {
            memset(ps, 0, sizeof(ps));
            set_counting(vm, true);
            collect(vm);
            new_period(vm, ps, now, 0, period_ms);
            start = now;
            end = now + (int64_t)period_ms * 1000000;
        } else if (now >= end) {
            collect(vm);
            new_period(vm, ps, now, now - start, period_ms);
            start = now;
            end = now + (int64_t)period_ms * 1000000;
        } else {
            collect(vm);
        }
        int64_t until = check_quotas(vm, ps, now, end, period_ms);
        struct timespec ts = { .tv_sec = (time_t)(until / NS_PER_S), .tv_nsec = (long)(until % NS_PER_S) };
        pthread_cond_timedwait(&vm->limit_cond, &vm->limit_lock, &ts);
    }
    pthread_mutex_unlock(&vm->limit_lock);
    return NULL;
}

/* Caller holds limit_lock. */
static void ensure_thread(Vm *vm)
{
    if (vm->limit_started || vm->limit_quit) {
        pthread_cond_broadcast(&vm->limit_cond);
        return;
    }
    int err = pthread_create(&vm->limit_thread, NULL, limit_main, vm);
    if (err) {
        fprintf(stderr, "ferry-vm: creating the dirty-limit thread: %s; no rates are measured, no limit holds\n",
                strerror(err));
        return;
    }
    vm->limit_started = true;
}

int vm_writer_stats(void *opaque, FerryWriterStats *stats, int max, const char **why)
{
    Vm *vm = opaque;

    if (!vm->ring_size) {
        *why = no_ring;
        return 0;
    }
    if (max <= 0) {
        return (int)vm->nvcpus; /* only whether there are counts (the engine's capability check): none started */
    }
    pthread_mutex_lock(&vm->limit_lock);
    vm->stats_until_ns = vm_mono_ns() + STATS_KEEP_NS;
    ensure_thread(vm);
    pthread_mutex_unlock(&vm->limit_lock);
    /* Counting from now on, and everything the rings hold so far in the counts. */
    set_counting(vm, true);
    collect(vm);
    for (int i = 0; i < (int)vm->nvcpus && i < max; i++) {
        Vcpu *cpu = &vm->vcpus[i];

        stats[i] = (FerryWriterStats){
            .dirty_pages = atomic_load(&cpu->dirty_pages),
            .rate_mbps = atomic_load(&cpu->rate_mbps),
            .limit_mbps = atomic_load(&cpu->limit_mbps),
            .throttle_us = atomic_load(&cpu->limit_sleep_us),
            .ring_full_us = atomic_load(&cpu->ring_full_us),
        };
    }
    return (int)vm->nvcpus;
}

void vm_dirty_limit(void *opaque, int index, uint64_t mbps, int period_ms)
{
    Vm *vm = opaque;

    if (!vm->ring_size || index >= (int)vm->nvcpus) {
        return; /* writer_stats says why; the engine refuses before it gets here */
    }
    pthread_mutex_lock(&vm->limit_lock);
    vm->limit_period_ms = period_ms >= 1 && period_ms <= 1000 ? period_ms : DEFAULT_PERIOD_MS;
    for (unsigned i = 0; i < vm->nvcpus; i++) {
        if (index < 0 || (unsigned)index == i) {
            atomic_store(&vm->vcpus[i].limit_mbps, mbps);
            if (!mbps) {
                atomic_store(&vm->vcpus[i].limit_sleep_ns, 0);
            }
        }
    }
    ensure_thread(vm);
    pthread_mutex_unlock(&vm->limit_lock);
}

void vm_limit_sleep(Vcpu *cpu)
{
    Vm *vm = cpu->vm;
    int64_t start = vm_mono_ns(), now = start;
    int64_t until = start + (int64_t)atomic_exchange(&cpu->limit_sleep_ns, 0);

    while (now < until && atomic_load(&vm->go) && atomic_load(&cpu->limit_mbps)) {
        int64_t d = until - now < NAP_NS ? until - now : NAP_NS;
        struct timespec ts = { .tv_sec = 0, .tv_nsec = (long)d };
        nanosleep(&ts, NULL);
        now = vm_mono_ns();
    }
    atomic_fetch_add_explicit(&cpu->limit_sleep_us, (uint64_t)(now - start) / 1000, memory_order_relaxed);
}

void vm_limit_stop(Vm *vm)
{
    bool started;

    pthread_mutex_lock(&vm->limit_lock);
    vm->limit_quit = true;
    pthread_cond_broadcast(&vm->limit_cond);
    started = vm->limit_started;
    vm->limit_started = false;
    pthread_mutex_unlock(&vm->limit_lock);
    if (started) {
        pthread_join(vm->limit_thread, NULL);
    }
}

void vm_limit_destroy(Vm *vm)
{
    pthread_cond_destroy(&vm->limit_cond);
    pthread_mutex_destroy(&vm->limit_lock);
}
