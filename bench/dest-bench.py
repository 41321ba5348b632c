#!/usr/bin/python3
"""Destination benchmark: how fast each kind of destination RAM takes a migration, in one run (docs/memory.md).

Migrates --size GiB (default 2) of random RAM of a paused ferry-workload (-S) over a UNIX socket (main channel, or
multifd with --multifd-channels) to destinations that differ only in their RAM:

  default        plain -m RAM: anonymous, 2 MiB aligned, no huge-page advice (the kernel's policy decides), pages
                 faulted in by the populate thread ahead of the data and by the receive path
  default-thp    the same with FERRY_THP=1 (MADV_HUGEPAGE, as QEMU advises all its RAM)
  prealloc       -mem-prealloc (one preallocating thread per -smp worker, QEMU's rule), faulted in at start-up
  prealloc-thp   the same with FERRY_THP=1
  memfd          -object memory-backend-memfd (ferry's default share=off: a private mapping of shmem, so every
                 page is allocated in the memfd and copied on write)
  memfd-shared   the same with share=on (QEMU's default for memfd; shmem, huge pages only as shmem_enabled says)
  hugetlb        -object memory-backend-memfd,hugetlb=on (2 MiB pages; only with --hugetlb, which needs free
                 huge pages: as root, --reserve reserves them for the run and gives them back)

Each way runs --repeat times (default 3) after one uncounted warm-up, in an order that rotates every round, each
run --settle seconds (default 3) after the one before: on a guest with free page reporting (virtio-balloon), memory
freed longer ago than about 2 s is no longer backed by the hypervisor and costs more to touch, and a real
destination starts on such memory, not on what the previous run just freed (docs/memory.md, "Fresh memory"). Per
run: the migration's total time (the source's clock, from migrate to the destination's ACK), the destination's
CPU (user + system, /proc/PID/stat, from migrate to completion: a preallocated destination's start-up is not
counted), the source's CPU, and a check that both RAM digests are equal. The UNIX-socket peak (bench/sockpeak)
is measured in the same run, before and after the migrations. Prints every run, the medians, each way's
throughput as a share of the socket peak, and the ratio of each way's total time to the prealloc way's.

A measurement, not a test: it asserts no speed. Run it through `bash bench/run.sh --dest`, which builds a release
tree.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

import ferrytest  # noqa: E402  (path set up above)

HIGH_BANDWIDTH = 100 << 30
TICK = os.sysconf("SC_CLK_TCK")
NR_HUGE = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"


def cpu_times(pid):
    """User + system CPU seconds of process @pid so far, its exited threads included."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def sockpeak(build):
    out = subprocess.run([os.path.join(build, "bench", "sockpeak"), "2"], check=True, capture_output=True,
                         text=True, timeout=300).stdout
    for line in out.splitlines():
        if line.startswith("unix-socket-peak-mibps"):
            return float(line.split()[1])
    raise RuntimeError(f"sockpeak printed no result: {out!r}")


def ways(opts):
    size = f"{opts.size}G"
    memfd = ["-object", f"memory-backend-memfd,id=mem,size={size}", "-machine", "memory-backend=mem"]
    w = [("default", [], {}), ("default-thp", [], {"FERRY_THP": "1"}),
         ("prealloc", ["-mem-prealloc"], {}), ("prealloc-thp", ["-mem-prealloc"], {"FERRY_THP": "1"}),
         ("memfd", memfd, {}), ("memfd-shared", [memfd[0], memfd[1] + ",share=on"] + memfd[2:], {})]
    if opts.hugetlb:
        w.append(("hugetlb", ["-object", f"memory-backend-memfd,id=mem,size={size},hugetlb=on",
                              "-machine", "memory-backend=mem"], {}))
    only = set(opts.ways.split(",")) if opts.ways else None
    return [x for x in w if not only or x[0] in only]


def run_once(tmp, opts, way):
    name, dst_args, dst_env = way
    binary = os.path.join(opts.build, "hosts", "workload", "ferry-workload")
    args = ["-m", f"{opts.size}G", "-smp", "2", "-pattern", "random", "-seed", "1", "-S"]
    uri = f"unix:{os.path.join(tmp, 'dest.sock')}"
    procs = []
    try:
        env = dict(os.environ)
        env.pop("FERRY_THP", None)
        env.update(dst_env)
        dst = ferrytest.Workload(tmp, "dst", args + dst_args + ["-incoming", uri], env=env, binary=binary)
        procs.append(dst)
        src_env = dict(os.environ)
        src_env.pop("FERRY_THP", None)
        src = ferrytest.Workload(tmp, "src", args, env=src_env, binary=binary)
        procs.append(src)
        ferrytest.wait_listening(uri)
        if opts.multifd_channels:
            for w in (src, dst):
                w.cmd("migrate-set-capabilities", capabilities=[{"capability": "multifd", "state": True}])
            src.set_params(**{"multifd-channels": opts.multifd_channels})
        src.set_params(**{"max-bandwidth": HIGH_BANDWIDTH})
        d0, s0 = cpu_times(dst.proc.pid), cpu_times(src.proc.pid)
        src.migrate(uri)
        info = src.wait_migration(timeout=600)
        dst.wait_migration(timeout=60)
        d1, s1 = cpu_times(dst.proc.pid), cpu_times(src.proc.pid)
        if info["status"] != "completed":
            raise RuntimeError(f"migration {info['status']}: {info.get('error-desc')}")
        if src.digest() != dst.digest():
            raise RuntimeError("RAM digests differ")
        return {"wall": info["total-time"] / 1000.0, "dst": d1 - d0, "src": s1 - s0}
    finally:
        for p in procs:
            p.stop_process()


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default=os.path.join(ROOT, "build-release"), help="build directory (release)")
    ap.add_argument("--size", type=int, default=2, help="guest RAM in GiB (default 2)")
    ap.add_argument("--repeat", type=int, default=3, help="counted runs of each way (default 3)")
    ap.add_argument("--multifd-channels", type=int, default=0, help="multifd channels (default 0: main channel)")
    ap.add_argument("--ways", default="", help="comma-separated subset of the ways")
    ap.add_argument("--settle", type=float, default=3.0,
                    help="seconds to wait before each run (default 3), so that memory freed by the previous run is "
                         "handed back to the hypervisor first, as a new destination would find it (docs/memory.md)")
    ap.add_argument("--hugetlb", action="store_true", help="also the hugetlb way (needs free 2 MiB huge pages)")
    ap.add_argument("--reserve", action="store_true",
                    help="with --hugetlb: reserve the huge pages for the run (root) and give them back after")
    opts = ap.parse_args()
    opts.build = os.path.abspath(opts.build)
    os.environ["FERRY_BUILD"] = opts.build
    saved = None
    if opts.hugetlb and opts.reserve:
        with open(NR_HUGE) as f:
            saved = int(f.read())
        with open(NR_HUGE, "w") as f:
            f.write(str(saved + opts.size * 512))
    try:
        bench(opts)
    finally:
        if saved is not None:
            with open(NR_HUGE, "w") as f:
                f.write(str(saved))


def bench(opts):
    ws = ways(opts)
    for name in ("/sys/kernel/mm/transparent_hugepage/enabled", "/sys/kernel/mm/transparent_hugepage/defrag",
                 "/sys/kernel/mm/transparent_hugepage/shmem_enabled"):
        with open(name) as f:
            print(f"{name.split('/')[-1]}: {f.read().strip()}")
    peaks = [sockpeak(opts.build)]
    print(f"{opts.size} GiB of random RAM, paused source, UNIX socket, "
          f"{'multifd ' + str(opts.multifd_channels) if opts.multifd_channels else 'main channel'}; "
          f"{len(ws)} ways x {opts.repeat} runs after one warm-up; socket peak {peaks[0]:.0f} MiB/s", flush=True)
    results = {w[0]: [] for w in ws}
    tmp = tempfile.mkdtemp(prefix="ferry-dest-bench-", dir="/tmp")
    try:
        schedule = [(ws[0], False)]
        for i in range(opts.repeat):
            k = i % len(ws)
            schedule += [(w, True) for w in ws[k:] + ws[:k]]
        for way, counted in schedule:
            time.sleep(opts.settle)
            r = run_once(tmp, opts, way)
            print(f"{way[0]:<12} {'run' if counted else 'warm-up'}: {r['wall']:.2f} s, "
                  f"{opts.size * 1024 / r['wall']:.0f} MiB/s, destination CPU {r['dst']:.2f} s, "
                  f"source CPU {r['src']:.2f} s", flush=True)
            if counted:
                results[way[0]].append(r)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    peaks.append(sockpeak(opts.build))
    peak = median(peaks)
    print(f"\nsocket peak before/after: {peaks[0]:.0f} / {peaks[1]:.0f} MiB/s")
    print(f"medians of {opts.repeat} runs")
    print(f"{'way':<12} {'total s':>8} {'MiB/s':>6} {'of peak':>8} {'dst CPU':>8} {'src CPU':>8} {'/prealloc':>10}")
    med = {n: {k: median([r[k] for r in rs]) for k in ("wall", "dst", "src")} for n, rs in results.items() if rs}
    ref = med.get("prealloc", {}).get("wall")
    for n, m in med.items():
        rate = opts.size * 1024 / m["wall"]
        vs = f"{m['wall'] / ref:.2f}" if ref else "-"
        print(f"{n:<12} {m['wall']:>8.2f} {rate:>6.0f} {rate / peak:>8.2f} {m['dst']:>8.2f} {m['src']:>8.2f} "
              f"{vs:>10}")


if __name__ == "__main__":
    main()
