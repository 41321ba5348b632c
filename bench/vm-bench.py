#!/usr/bin/python3
"""ferry-vm against QEMU, side by side: the same guest (ferry-vm's A-B boot sector, hosts/vm/guest/ab-boot.s),
running, in a VM of the same size, migrated over a UNIX socket by each program with the same settings, in one run.

The guest image is the build's ab-boot.bin with its parameter block patched to the range both machines have below
4 GiB (QEMU's pc machine and ferry-vm both keep 3 GiB low once RAM reaches 3.5 GiB, else all of it; the guest's
32-bit code reaches that part only), less the top 32 MiB where SeaBIOS keeps its data: every page from 1 MiB up, a
progress character every pass. QEMU 7.2 (Debian's
qemu-system-x86, installed with bench/qemu-bench.py's logic if missing) boots it from a raw drive through SeaBIOS;
ferry-vm loads it where a BIOS would.

  QEMU     qemu-system-x86_64 -machine pc,accel=kvm -nodefaults -display none -m SIZE -drive file=IMG,format=raw
           -serial file:LOG; the destination the same with -incoming defer (then migrate-incoming).
  ferry    ferry-vm -m SIZE -drive file=IMG,format=raw -serial file:LOG; the destination with -incoming unix:PATH.

Settings (both): max-bandwidth 100 GiB/s (QEMU 7.2 has no "unlimited"), downtime-limit --downtime-limit ms (the
A-B guest rewrites its whole range in about a second, faster than any link here moves it, so with the default
300 ms neither program would ever switch over: QEMU's own migration test raises the limit for this guest too).
Each source runs until the guest has printed --warm-up progress characters (its RAM all touched), then migrates.
Figures are each program's own query-migrate (total-time, downtime, dirty-sync-count as passes, transferred) plus
"e2e", the wall time from migrate to the destination reporting completed (bench/qemu-bench.py's timed_migrate).
Each destination is checked: it must be running and print more progress characters; ferry-vm's with
query-pattern-check, QEMU's by pmemsave of the range into /dev/shm and the same A-B check (QEMU's own rule: all
first bytes equal but for one step down by one).

A measurement, not a test: it asserts no speed. --repeat N runs each program N times, alternating which goes first.
Run it through bench/vm-bench, which builds the release tree.
"""

import argparse
import atexit
import datetime
import importlib.util
import os
import signal
import struct
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

import ferrytest  # noqa: E402

_spec = importlib.util.spec_from_file_location("qemu_bench", os.path.join(ROOT, "bench", "qemu-bench.py"))
qb = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(qb)

GIB = 1 << 30
PAGE = 4096
AB_PARAMS = 0x1E0
AB_START = 1 << 20
# SeaBIOS keeps its relocated code and data and the ACPI tables in the top 16 MiB or so of low RAM (e820
# reserved); pages there start with non-zero bytes, so the A-B check would flag them. Both guests leave this much
# of the top alone (QEMU's own migration test stops at 100 MiB for the same reason).
TOP_MARGIN = 32 << 20


def lowmem(size):
    return 3 * GIB if size >= 0xE0000000 else size


def patched_image(build, size, path):
    """ab-boot.bin told the range [1 MiB, low RAM - TOP_MARGIN) and one progress character per pass."""
    with open(os.path.join(build, "hosts", "vm", "guest", "ab-boot.bin"), "rb") as f:
        img = bytearray(f.read())
    if img[AB_PARAMS:AB_PARAMS + 4] != b"FAB1":
        raise RuntimeError("ab-boot.bin has no parameter block")
    npages = (lowmem(size) - TOP_MARGIN - AB_START) // PAGE
    struct.pack_into("<III", img, AB_PARAMS + 4, AB_START, npages, 1)
    with open(path, "wb") as f:
        f.write(img)
    qb._files.append(path)
    return npages


def progress(log):
    try:
        with open(log, "rb") as f:
            return f.read().count(b"B")
    except FileNotFoundError:
        return 0


def wait_progress(log, n, timeout, what):
    deadline = time.monotonic() + timeout
    first = progress(log)
    while progress(log) < first + n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: fewer than {n} progress characters after {timeout} s")
        time.sleep(0.1)


def ab_check_bytes(first_bytes):
    """QEMU's check_guests_ram over the first byte of every page: returns the number of bad pages."""
    bad, edge = 0, False
    last = first_bytes[0]
    for b in first_bytes[1:]:
        if b != last:
            if (b + 1) % 256 == last and not edge:
                edge = True
            else:
                bad += 1
            last = b
    return bad


def qemu_ab_check(dst, npages):
    """Stop the QEMU destination, save the guest's range and check it; the caller's run is over by then."""
    dst.cmd("stop")
    dump = f"/dev/shm/vm-bench-{os.getpid()}.ram"
    qb._files.append(dump)
    dst.cmd("pmemsave", val=AB_START, size=npages * PAGE, filename=dump)
    with open(dump, "rb") as f:
        data = f.read()
    os.unlink(dump)
    qb._files.remove(dump)
    if len(data) != npages * PAGE:
        raise RuntimeError(f"pmemsave wrote {len(data)} bytes, expected {npages * PAGE}")
    return ab_check_bytes(data[::PAGE])


def set_params(end, downtime_limit):
    end.cmd("migrate-set-parameters", **{"max-bandwidth": qb.HIGH_BANDWIDTH, "downtime-limit": downtime_limit})


def run_qemu(qemu, tmp, size, img, npages, args):
    common = ["-machine", "pc,accel=kvm", "-nodefaults", "-display", "none", "-m", f"{size // (1 << 20)}M",
              "-drive", f"file={img},format=raw"]
    src_log, dst_log = os.path.join(tmp, "qsrc.serial"), os.path.join(tmp, "qdst.serial")
    uri = f"unix:{os.path.join(tmp, 'qmig.sock')}"
    qb.remove_socket(uri)
    src = dst = None
    try:
        src = qb.Qemu(qemu, tmp, "qsrc", [*common, "-serial", f"file:{src_log}"])
        dst = qb.Qemu(qemu, tmp, "qdst", [*common, "-serial", f"file:{dst_log}", "-incoming", "defer"])
        dst.cmd("migrate-incoming", uri=uri)
        wait_progress(src_log, args.warm_up, 300, "QEMU source")
        set_params(src, args.downtime_limit)
        info, e2e = qb.timed_migrate(src, dst, uri)
        wait_progress(dst_log, 2, 120, "QEMU destination after the migration")
        bad = qemu_ab_check(dst, npages)
        return info, e2e, bad
    finally:
        for p in (src, dst):
            if p:
                p.stop()


class FerryVM(qb.Ferry):
    def __init__(self, tmp, name, args, binary):
        self.w = ferrytest.Workload(tmp, name, args, binary=binary)
        qb._procs.append(self.w.proc)


def run_ferry(build, tmp, size, img, npages, args):
    binary = os.path.join(build, "hosts", "vm", "ferry-vm")
    common = ["-m", f"{size // (1 << 20)}M", "-drive", f"file={img},format=raw"]
    src_log, dst_log = os.path.join(tmp, "fsrc.serial"), os.path.join(tmp, "fdst.serial")
    uri = f"unix:{os.path.join(tmp, 'fmig.sock')}"
    qb.remove_socket(uri)
    src = dst = None
    try:
        dst = FerryVM(tmp, "fdst", [*common, "-serial", f"file:{dst_log}", "-incoming", uri], binary)
        ferrytest.wait_listening(uri)
        src = FerryVM(tmp, "fsrc", [*common, "-serial", f"file:{src_log}"], binary)
        wait_progress(src_log, args.warm_up, 300, "ferry-vm source")
        set_params(src, args.downtime_limit)
        info, e2e = qb.timed_migrate(src, dst, uri)
        wait_progress(dst_log, 2, 120, "ferry-vm destination after the migration")
        check = dst.cmd("query-pattern-check")
        if check["pages"] != npages:
            raise RuntimeError(f"ferry-vm checked {check['pages']} pages, expected {npages}")
        info["dirty-tracker"] = info.get("dirty-tracker", "?")
        return info, e2e, check["mismatches"]
    finally:
        for p in (src, dst):
            if p:
                p.stop()


def row(name, info, e2e, bad):
    ram = info["ram"]
    return (f"| {name} | {info['total-time']} | {e2e:.0f} | {info.get('downtime', '-')} | "
            f"{ram.get('dirty-sync-count', '-')} | {ram['transferred'] / GIB:.2f} | "
            f"{'ok' if bad == 0 else f'{bad} bad pages'} |")


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", required=True, help="the build tree (bench/vm-bench passes build-release)")
    ap.add_argument("--size", type=float, default=4, help="guest RAM in GiB (default 4)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per program (default 1)")
    ap.add_argument("--downtime-limit", type=int, default=2000, help="ms, both programs (default 2000)")
    ap.add_argument("--warm-up", type=int, default=3, help="progress characters before migrating (default 3)")
    args = ap.parse_args()

    signal.signal(signal.SIGTERM, qb._on_signal)
    signal.signal(signal.SIGINT, qb._on_signal)
    atexit.register(qb.cleanup)
    if not qb.kvm_works():
        sys.exit("vm-bench: /dev/kvm does not work here; both programs need it")
    qemu = qb.ensure_qemu()
    size = int(args.size * GIB)
    if qb.mem_available() < 2.5 * size:
        sys.exit(f"vm-bench: {args.size} GiB guests need about {2.5 * args.size:.0f} GiB available "
                 "(source, destination and QEMU's check)")
    print(f"vm-bench {datetime.datetime.now().isoformat(timespec='seconds')}: {qb.machine_description()}")
    print(f"{qb.qemu_version(qemu)}; ferry-vm from {args.build}")
    with tempfile.TemporaryDirectory(prefix="vm-bench-", dir="/tmp") as tmp:
        img = os.path.join(tmp, "ab-boot.bin")
        npages = patched_image(args.build, size, img)
        print(f"guest: {args.size:g} GiB, A-B over {npages * PAGE / GIB:.2f} GiB from 1 MiB, one 'B' per pass; "
              f"max-bandwidth 100 GiB/s, downtime-limit {args.downtime_limit} ms, over a UNIX socket")
        results = {"QEMU": [], "ferry-vm": []}
        for r in range(args.repeat):
            order = ["QEMU", "ferry-vm"] if r % 2 == 0 else ["ferry-vm", "QEMU"]
            for name in order:
                if name == "QEMU":
                    res = run_qemu(qemu, tmp, size, img, npages, args)
                else:
                    res = run_ferry(args.build, tmp, size, img, npages, args)
                results[name].append(res)
                print(f"  run {r + 1} {name}: total {res[0]['total-time']} ms, e2e {res[1]:.0f} ms, downtime "
                      f"{res[0].get('downtime')} ms, passes {res[0]['ram'].get('dirty-sync-count')}, "
                      f"transferred {res[0]['ram']['transferred'] / GIB:.2f} GiB, "
                      f"check {'ok' if res[2] == 0 else res[2]}", flush=True)
    print()
    print("| program | total-time ms | e2e ms | downtime ms | passes | transferred GiB | A-B check |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    med = {}
    for name, runs in results.items():
        by_total = sorted(runs, key=lambda x: x[0]["total-time"])
        info, e2e, bad = by_total[len(by_total) // 2]
        med[name] = (median([x[0]["total-time"] for x in runs]), median([x[1] for x in runs]),
                     median([x[0].get("downtime", 0) for x in runs]))
        print(row(f"{name} (median of {len(runs)})", info, e2e, bad))
    q, f = med["QEMU"], med["ferry-vm"]
    print()
    print(f"ferry-vm / QEMU: total-time {f[0] / q[0]:.2f}x, e2e {f[1] / q[1]:.2f}x, downtime "
          f"{(f[2] / q[2]) if q[2] else float('nan'):.2f}x (below 1 is faster)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
