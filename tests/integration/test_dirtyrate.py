"""calc-dirty-rate / query-dirty-rate (QEMU 5.2's dirty-rate measurement, without migrating) on ferry-workload:
the rate reported against the rate the workload was started with, in page-sampling and dirty-bitmap modes; ~0 on
a stopped workload; QEMU's refusals (ranges, a second measurement, dirty-bitmap during a migration); dirty-ring
mode, which reads the hosts' per-writer counters, is in test_dirtylimit.py;
HMP's calc_dirty_rate and info dirty_rate.

The workload is -pattern random: every write changes a page's content (its generation), and pages are chosen at
random, so page sampling sees the writes and the pages dirtied in the window are nearly all distinct. Its
-dirty-rate is MiB/s over all workers together (hosts/workload/main.c); QEMU's MB/s is MiB/s too. Over a window of
T seconds a worker dirtying r pages/s of its N pages dirties N(1 - e^(-rT/N)) distinct ones: 256 MiB at 64 MiB/s
for 1 s gives 0.885 of the configured rate, inside the 25% the test allows. What this is not: the dirty-limit or
auto-converge throttles (issue 19's other parts)."""

import os
import time

import pytest

from ferrytest import QMPError, wait_listening, wait_until

RATE = 64
RANDOM = ["-m", "256M", "-smp", "2", "-pattern", "random", "-seed", "3", "-dirty-rate", str(RATE)]


def measure(w, timeout=30, **args):
    w.cmd("calc-dirty-rate", **args)
    wait_until(lambda: w.cmd("query-dirty-rate")["status"] == "measured", timeout, "a measured dirty rate")
    return w.cmd("query-dirty-rate")


def measure_written(w, **args):
    """measure(), and the MiB/s the workload really wrote meanwhile (its pages-written counter)."""
    first, t0 = w.workload_info()["pages-written"], time.monotonic()
    r = measure(w, **args)
    written = (w.workload_info()["pages-written"] - first) * 4096 / (1 << 20) / (time.monotonic() - t0)
    return r, written


def assert_near(got, want, what, written=None):
    """Within 25% of the configured rate. A workload starved of CPU (2 cores shared with the test runner) writes
    less than it was told to; it restarts its schedule rather than catching up, so the rate it kept is then the
    reference, and the message says so."""
    ref, why = want, "configured"
    if written is not None and written < 0.9 * want:
        ref, why = written, f"written (the workload kept only {written:.1f} of its {want} MiB/s)"
    assert abs(got - ref) <= 0.25 * ref, f"{what}: measured {got} MB/s, {why} {ref} MiB/s"


def started(w):
    # Give the workers' rate schedule a moment to settle after start-up.
    w.assert_advancing()
    time.sleep(0.5)


def test_page_sampling_near_configured_rate(workload):
    w = workload("w", *RANDOM)
    started(w)
    r, written = measure_written(w, **{"calc-time": 1, "sample-pages": 16384})
    assert r["mode"] == "page-sampling" and r["sample-pages"] == 16384 and r["calc-time"] == 1, r
    assert r["calc-time-unit"] == "second" and "vcpu-dirty-rate" not in r, r
    assert_near(r["dirty-rate"], RATE, "page-sampling", written)
    # The default sample (512 pages per GiB: 128 pages here) is coarse but must still be in the neighbourhood.
    r = measure(w, **{"calc-time": 1})
    assert r["sample-pages"] == 512 and 0 < r["dirty-rate"] < 3 * RATE, r


def test_page_sampling_milliseconds(workload):
    w = workload("w", *RANDOM)
    started(w)
    r, written = measure_written(w, **{"calc-time": 500, "calc-time-unit": "millisecond", "sample-pages": 16384})
    assert_near(r["dirty-rate"], RATE, "page-sampling over 500 ms", written)
    ms = w.cmd("query-dirty-rate", **{"calc-time-unit": "millisecond"})
    assert ms["calc-time"] == 500 and ms["calc-time-unit"] == "millisecond", ms
    s = w.cmd("query-dirty-rate")
    assert s["calc-time"] == 0 and s["calc-time-unit"] == "second", s


@pytest.mark.parametrize("tracker", ["auto", "explicit"])
def test_dirty_bitmap_near_configured_rate(workload, tracker):
    w = workload("w", *RANDOM, "-dirty-tracker", tracker)
    started(w)
    r, written = measure_written(w, **{"calc-time": 1, "mode": "dirty-bitmap"})
    if tracker == "auto" and "error-desc" in r:
        pytest.skip(f"no write tracker on this kernel: {r['error-desc']}")
    assert r["mode"] == "dirty-bitmap" and r["sample-pages"] == 0 and "error-desc" not in r, r
    assert_near(r["dirty-rate"], RATE, f"dirty-bitmap with tracker {tracker}", written)
    # The tracker is released: a migration afterwards is not refused for it.
    w.assert_advancing()


@pytest.mark.parametrize("mode", ["page-sampling", "dirty-bitmap"])
def test_stopped_workload_measures_zero(workload, mode):
    w = workload("w", *RANDOM, "-dirty-tracker", "explicit")
    started(w)
    w.cmd("stop")
    r = measure(w, **{"calc-time": 1, "mode": mode})
    assert r["dirty-rate"] == 0, r
    w.cmd("cont")
    r = measure(w, **{"calc-time": 1, "mode": mode})
    assert r["dirty-rate"] > 0, r


def refused(w, args, text):
    with pytest.raises(QMPError) as e:
        w.cmd("calc-dirty-rate", **args)
    assert text in e.value.desc, e.value.desc
    return e.value.desc


def test_refusals(workload):
    w = workload("w", "-m", "16M", "-smp", "1", "-pattern", "random", "-dirty-rate", "1")
    assert w.cmd("query-dirty-rate")["status"] == "unstarted"
    refused(w, {"calc-time": 0}, "Calculation time is out of range [50ms, 60000ms].")
    refused(w, {"calc-time": 61}, "Calculation time is out of range [50ms, 60000ms].")
    refused(w, {"calc-time": -1}, "Calculation time is out of range [50ms, 60000ms].")
    refused(w, {"calc-time": 1 << 62}, "Calculation time is out of range [50ms, 60000ms].")
    refused(w, {"calc-time": 49, "calc-time-unit": "millisecond"}, "Calculation time is out of range")
    refused(w, {"calc-time": 1, "sample-pages": 127}, "sample-pages is out of range[128, 16384].")
    refused(w, {"calc-time": 1, "sample-pages": 16385}, "sample-pages is out of range[128, 16384].")
    refused(w, {"calc-time": 1, "sample-pages": 512, "mode": "dirty-bitmap"},
            "sample-pages is used only in page-sampling mode")
    refused(w, {"calc-time": 1, "mode": "bogus"}, "Parameter 'mode' does not accept value 'bogus'")
    refused(w, {"calc-time": 1, "calc-time-unit": "hour"}, "Parameter 'calc-time-unit' does not accept value 'hour'")
    refused(w, {"calc-time": "1"}, "calc-time")
    # Nothing was started by a refused command.
    assert w.cmd("query-dirty-rate")["status"] == "unstarted"

    w.cmd("calc-dirty-rate", **{"calc-time": 2})
    r = w.cmd("query-dirty-rate")
    assert r["status"] == "measuring" and "dirty-rate" not in r, r
    refused(w, {"calc-time": 1}, "the dirty rate is already being measured.")
    wait_until(lambda: w.cmd("query-dirty-rate")["status"] == "measured", 10, "measured")
    w.cmd("calc-dirty-rate", **{"calc-time": 60, "calc-time-unit": "millisecond"})
    wait_until(lambda: w.cmd("query-dirty-rate")["status"] == "measured", 10, "measured")


def test_dirty_bitmap_and_migration_exclude_each_other(workload):
    small = ["-m", "64M", "-smp", "2", "-pattern", "random", "-dirty-rate", "16", "-dirty-tracker", "explicit"]
    uri = f"unix:{os.path.join(workload.tmpdir, 'mig.sock')}"
    dst = workload("dst", *small, "-incoming", uri)
    wait_listening(uri)
    src = workload("src", *small)
    # A running dirty-bitmap measurement owns the tracker: migrate is refused until it is measured.
    src.cmd("calc-dirty-rate", **{"calc-time": 3, "mode": "dirty-bitmap"})
    with pytest.raises(QMPError) as e:
        src.migrate(uri)
    assert "dirty-bitmap" in e.value.desc, e.value.desc
    wait_until(lambda: src.cmd("query-dirty-rate")["status"] == "measured", 10, "measured")
    # And the reverse: while the migration runs, dirty-bitmap is refused, page-sampling is allowed.
    src.set_params(**{"max-bandwidth": 8 << 20})
    src.migrate(uri)
    refused(src, {"calc-time": 1, "mode": "dirty-bitmap"}, "a migration is running")
    r = measure(src, **{"calc-time": 1})
    assert r["dirty-rate"] >= 0 and "error-desc" not in r, r
    src.set_params(**{"max-bandwidth": 0})
    src.wait_migration()
    assert src.migration_status() == "completed"
    # The destination, waiting for its migration, refused dirty-bitmap as well (it had no tracker to give).
    assert dst.alive()


def test_hmp(wl):
    w = wl.start("w", *RANDOM, hmp_stdio=True)
    started(w)
    hmp = w.hmp
    out = hmp.cmd("info dirty_rate")
    assert "Status: unstarted" in out and "Dirty rate: (not ready)" in out, out
    out = hmp.cmd("calc_dirty_rate 1 16384")
    assert "Error" not in out and "info dirty_rate" in out, out
    wait_until(lambda: w.cmd("query-dirty-rate")["status"] == "measured", 10, "measured")
    out = hmp.cmd("info dirty_rate")
    lines = out.splitlines()
    assert "Status: measured" in lines and "Mode: page-sampling" in lines, out
    assert "Sample Pages: 16384 (per GB)" in lines and "Period: 1 (sec)" in lines, out
    rate = int([ln for ln in lines if ln.startswith("Dirty rate: ")][0].split()[2])
    assert rate == w.cmd("query-dirty-rate")["dirty-rate"]
    assert_near(rate, RATE, "HMP page-sampling")

    out = hmp.cmd("calc_dirty_rate -b 1")
    assert "Error" not in out, out
    wait_until(lambda: w.cmd("query-dirty-rate")["status"] == "measured", 10, "measured")
    out = hmp.cmd("info dirty_rate")
    assert "Mode: dirty-bitmap" in out and "Sample Pages" not in out, out

    out = hmp.cmd("calc_dirty_rate -r 1")
    assert "Error" not in out, out
    wait_until(lambda: w.cmd("query-dirty-rate")["status"] == "measured", 10, "measured")
    out = hmp.cmd("info dirty_rate")
    assert "Mode: dirty-ring" in out and "Sample Pages" not in out, out
    assert "Either dirty ring or dirty bitmap" in hmp.cmd("calc_dirty_rate -r -b 1")
    assert "Calculation time is out of range" in hmp.cmd("calc_dirty_rate 0")
    assert "sample-pages is used only in page-sampling mode" in hmp.cmd("calc_dirty_rate -b 1 512")
    assert "not an integer" in hmp.cmd("calc_dirty_rate soon")
    assert "expected" in hmp.cmd("calc_dirty_rate")


# ---- ferry-vm: its own trackers (KVM's dirty log, its dirty ring) behind dirty-bitmap, and dirty-ring's refusal.
# These skip where /dev/kvm cannot be opened (scripts/kvm-emulated.sh gives one). The A-B guest writes as fast as
# it can, so there is no configured rate: page-sampling and dirty-bitmap must both see it and roughly agree.

def vm_skip_reason():
    import test_vm
    return test_vm.kvm_unavailable()


@pytest.mark.parametrize("tracker", [[], ["-dirty-tracker", "kvm-dirty-log"], ["-dirty-tracker", "kvm-dirty-ring"]],
                         ids=["auto", "kvm-dirty-log", "kvm-dirty-ring"])
def test_vm_modes(tmpdir_short, tracker):
    why = vm_skip_reason()
    if why:
        pytest.skip(why)
    import test_vm
    if tracker and tracker[1] == "kvm-dirty-ring":
        why = test_vm.dirty_ring_unavailable()
        if why:
            pytest.skip(why)
    vms = test_vm.VMSet(tmpdir_short)
    try:
        if tracker and tracker[1] == "kvm-dirty-ring":
            vm = test_vm.start_ring_vm(vms, "vm", *test_vm.VM, *tracker)
            if vm is None:
                return
        else:
            vm = vms.start("vm", *test_vm.VM, *tracker)
        name = vm.cmd("query-vm")["dirty-tracker"]
        test_vm.wait_progress(vm)
        if name != "kvm-dirty-ring":
            # Without a ring ferry-vm has no per-vCPU counts (FerryHostOps.writer_stats): refused with its reason.
            refused(vm, {"calc-time": 1, "mode": "dirty-ring"}, "mode dirty-ring is not enabled, use other method instead.")
        timeout = 30 * test_vm.SLOWER
        bitmap = measure(vm, timeout, **{"calc-time": 2, "mode": "dirty-bitmap"})
        assert "error-desc" not in bitmap, bitmap
        sampled = measure(vm, timeout, **{"calc-time": 2, "sample-pages": 16384})
        assert bitmap["dirty-rate"] > 0 and sampled["dirty-rate"] > 0, (name, bitmap, sampled)
        # 64 MiB sampled at 16384 pages per GiB is 1024 samples, and the guest's pace varies between the two
        # windows (under the emulated KVM they read 31 and 30 MB/s): they must agree within half.
        lo, hi = sorted((bitmap["dirty-rate"], sampled["dirty-rate"]))
        assert hi <= 1.5 * lo, (name, bitmap, sampled)
        # The tracker was given back: the guest still runs and the A-B check holds.
        test_vm.wait_progress(vm)
        vm.cmd("stop")
        test_vm.assert_ab_ok(vm)
    finally:
        problems = vms.close()
    assert not problems, "\n".join(problems)
