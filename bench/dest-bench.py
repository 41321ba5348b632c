#!/usr/bin/python3
"""Destination benchmark: how fast each kind of destination RAM takes a migration, in one run (docs/memory.md).

Migrates --size GiB (default 2) of random RAM of a paused ferry-workload (-S) over a UNIX socket (main channel, or
multifd with --multifd-channels) to destinations that differ only in their RAM:

  default        plain -m RAM: anonymous, 2 MiB aligned, MADV_HUGEPAGE (as QEMU advises all its RAM), pages
                 faulted in by the populate thread ahead of the data and by the receive path
  default-4k     the same with FERRY_THP=0 (MADV_NOHUGEPAGE: 4 KiB pages only)
  prealloc       -mem-prealloc (one preallocating thread per -smp worker, QEMU's rule), faulted in at start-up
  prealloc-4k    the same with FERRY_THP=0
  memfd          -object memory-backend-memfd (ferry's default share=off: a private mapping of shmem, so every
                 page is allocated in the memfd and copied on write)
  memfd-shared   the same with share=on (QEMU's default for memfd; shmem, huge pages only as shmem_enabled says)
  hugetlb        -object memory-backend-memfd,hugetlb=on (2 MiB pages; only with --hugetlb, which needs free
                 huge pages: as root, --reserve reserves them for the run and gives them back)

--base BUILD adds that build's default and prealloc ways (base:default, base:prealloc), source and destination
both of that build, so that a change is measured against the code before it in the same run.

Each way runs --repeat times (default 3) after one uncounted warm-up, in an order that rotates every round, each
run --settle seconds (default 3) after the one before: on a guest with free page reporting (virtio-balloon), memory
freed longer ago than about 2 s is no longer backed by the hypervisor and costs more to touch, and a real
destination starts on such memory, not on what the previous run just freed (docs/memory.md, "Fresh memory"). Per
run: the migration's total time (the source's clock, from migrate to the destination's ACK), the destination's
CPU (user + system, /proc/PID/stat, from migrate to completion: a preallocated destination's start-up is not
counted; and per thread: the receiving thread mig/dst and the populate thread mig/dst/pop, from /proc/PID/task
sampled every 50 ms), the source's CPU, and a check that both RAM digests are equal. The UNIX-socket peak (bench/sockpeak)
is measured in the same run, before and after the migrations. Prints every run, the medians, each way's
throughput as a share of the socket peak, and the ratio of each way's total time to the prealloc way's.

--first-pass N instead runs the demo's migration (scripts/demo.sh: 1 GiB, -smp 2 -pattern ab -dirty-rate 128, the
source's workers first write every page, max-bandwidth 512 MiB/s) N times to each of the default and the
preallocated destination, polling query-migrate every 20 ms, and prints the first pass's rate (bytes transferred
when dirty-sync-count first moves, over the time since `migrate`) against max-bandwidth, and the pattern check of
the destination.

A measurement, not a test: it asserts no speed. Run it through `bash bench/run.sh --dest`, which builds a release
tree.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
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


class ThreadCpu:
    """CPU seconds per thread name of process @pid, from /proc/PID/task, sampled every 50 ms from start() to
    stop(): a thread that exits keeps its last sample. Threads of the same name are added up."""

    def __init__(self, pid):
        self.pid, self.last, self.base, self.stop_flag = pid, {}, {}, False
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self):
        out = {}
        try:
            tids = os.listdir(f"/proc/{self.pid}/task")
        except OSError:
            return out
        for tid in tids:
            try:
                with open(f"/proc/{self.pid}/task/{tid}/stat") as f:
                    head, tail = f.read().rsplit(")", 1)
            except OSError:
                continue
            fields = tail.split()
            out[tid] = (head.split("(", 1)[1], (int(fields[11]) + int(fields[12])) / TICK)
        return out

    def _run(self):
        while not self.stop_flag:
            self.last.update(self._sample())
            time.sleep(0.05)

    def start(self):
        self.base = self._sample()
        self.thread.start()

    def stop(self):
        self.last.update(self._sample())
        self.stop_flag = True
        self.thread.join()
        by_name = {}
        for tid, (name, cpu) in self.last.items():
            by_name[name] = by_name.get(name, 0.0) + cpu - self.base.get(tid, (name, 0.0))[1]
        return by_name


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
    w = [("default", [], {}), ("default-4k", [], {"FERRY_THP": "0"}),
         ("prealloc", ["-mem-prealloc"], {}), ("prealloc-4k", ["-mem-prealloc"], {"FERRY_THP": "0"}),
         ("memfd", memfd, {}), ("memfd-shared", [memfd[0], memfd[1] + ",share=on"] + memfd[2:], {})]
    if opts.hugetlb:
        w.append(("hugetlb", ["-object", f"memory-backend-memfd,id=mem,size={size},hugetlb=on",
                              "-machine", "memory-backend=mem"], {}))
    only = set(opts.ways.split(",")) if opts.ways else None
    w = [x + (opts.build,) for x in w if not only or x[0] in only]
    if opts.base:
        w += [("base:" + name, args, env, opts.base) for name, args, env, _ in w if name in ("default", "prealloc")]
    return w


def run_once(tmp, opts, way):
    name, dst_args, dst_env, build = way
    binary = os.path.join(build, "hosts", "workload", "ferry-workload")
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
        src = ferrytest.Workload(tmp, "src", args, env=src_env, binary=binary)  # the same build at both ends
        procs.append(src)
        ferrytest.wait_listening(uri)
        if opts.multifd_channels:
            for w in (src, dst):
                w.cmd("migrate-set-capabilities", capabilities=[{"capability": "multifd", "state": True}])
            src.set_params(**{"multifd-channels": opts.multifd_channels})
        src.set_params(**{"max-bandwidth": HIGH_BANDWIDTH})
        d0, s0 = cpu_times(dst.proc.pid), cpu_times(src.proc.pid)
        threads = ThreadCpu(dst.proc.pid)
        threads.start()
        src.migrate(uri)
        info = src.wait_migration(timeout=600)
        dst.wait_migration(timeout=60)
        d1, s1 = cpu_times(dst.proc.pid), cpu_times(src.proc.pid)
        per_thread = threads.stop()
        if info["status"] != "completed":
            raise RuntimeError(f"migration {info['status']}: {info.get('error-desc')}")
        if src.digest() != dst.digest():
            raise RuntimeError("RAM digests differ")
        return {"wall": info["total-time"] / 1000.0, "dst": d1 - d0, "src": s1 - s0,
                "recv": per_thread.get("mig/dst", 0.0), "pop": per_thread.get("mig/dst/pop", 0.0)}
    finally:
        for p in procs:
            p.stop_process()


def first_pass_once(tmp, opts, dst_args):
    binary = os.path.join(opts.build, "hosts", "workload", "ferry-workload")
    args = ["-m", "1G", "-smp", "2", "-pattern", "ab", "-dirty-rate", "128"]
    uri = f"unix:{os.path.join(tmp, 'fp.sock')}"
    procs = []
    try:
        dst = ferrytest.Workload(tmp, "fp-dst", args + dst_args + ["-incoming", uri], binary=binary)
        procs.append(dst)
        src = ferrytest.Workload(tmp, "fp-src", args, binary=binary)
        procs.append(src)
        ferrytest.wait_listening(uri)
        deadline = time.monotonic() + 60
        while src.cmd("query-workload")["passes"] < 2:
            if time.monotonic() > deadline:
                raise RuntimeError("the source's workers did not write every page within 60 s")
            time.sleep(0.2)
        bw = 512 << 20
        src.set_params(**{"max-bandwidth": bw})
        t0 = time.monotonic()
        src.migrate(uri)
        first = None
        v0 = None
        while True:
            info = src.query_migrate()
            sync = info.get("ram", {}).get("dirty-sync-count")
            if info["status"] in ("completed", "failed", "cancelled"):
                break
            if sync is not None:
                if v0 is None:
                    v0 = sync
                elif sync > v0 and first is None:
                    first = (time.monotonic() - t0, info["ram"]["transferred"])
            time.sleep(0.02)
        info = src.wait_migration(timeout=300)
        if info["status"] != "completed":
            raise RuntimeError(f"migration {info['status']}: {info.get('error-desc')}")
        dst.wait_migration(timeout=60)
        check = dst.cmd("query-pattern-check")
        if not check.get("ok"):
            raise RuntimeError(f"destination pattern check: {check}")
        if first is None:
            raise RuntimeError("the first pass ended between two samples of query-migrate")
        rate = first[1] / first[0]
        return {"rate": rate, "share": rate / bw, "total": info["total-time"] / 1000.0,
                "passes": info["ram"]["dirty-sync-count"]}
    finally:
        for p in procs:
            p.stop_process()


def first_pass(opts):
    ways = [("default", []), ("prealloc", ["-mem-prealloc"])]
    results = {w[0]: [] for w in ways}
    tmp = tempfile.mkdtemp(prefix="ferry-dest-bench-", dir="/tmp")
    try:
        for i in range(opts.first_pass):
            for name, extra in (ways if i % 2 == 0 else ways[::-1]):
                time.sleep(opts.settle)
                r = first_pass_once(tmp, opts, extra)
                print(f"{name:<9} first pass {r['rate'] / (1 << 20):.0f} MiB/s = {r['share']:.0%} of max-bandwidth "
                      f"512 MiB/s; total {r['total']:.2f} s, {r['passes']} passes", flush=True)
                results[name].append(r)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for name, rs in results.items():
        print(f"{name:<9} median first pass {median([r['rate'] for r in rs]) / (1 << 20):.0f} MiB/s = "
              f"{median([r['share'] for r in rs]):.0%} of max-bandwidth")


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
    ap.add_argument("--base", help="another build (e.g. the main branch's build-release): its default and prealloc "
                                   "ways are measured too, as base:default and base:prealloc, in the same run")
    ap.add_argument("--settle", type=float, default=3.0,
                    help="seconds to wait before each run (default 3), so that memory freed by the previous run is "
                         "handed back to the hypervisor first, as a new destination would find it (docs/memory.md)")
    ap.add_argument("--hugetlb", action="store_true", help="also the hugetlb way (needs free 2 MiB huge pages)")
    ap.add_argument("--reserve", action="store_true",
                    help="with --hugetlb: reserve the huge pages for the run (root) and give them back after")
    ap.add_argument("--first-pass", type=int, default=0, metavar="N",
                    help="instead: the demo's running migration N times per destination kind, first-pass rate")
    opts = ap.parse_args()
    opts.build = os.path.abspath(opts.build)
    opts.base = os.path.abspath(opts.base) if opts.base else None
    os.environ["FERRY_BUILD"] = opts.build
    if opts.first_pass:
        first_pass(opts)
        return
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
                  f"{opts.size * 1024 / r['wall']:.0f} MiB/s, destination CPU {r['dst']:.2f} s (receive thread "
                  f"{r['recv']:.2f}, populate thread {r['pop']:.2f}), source CPU {r['src']:.2f} s", flush=True)
            if counted:
                results[way[0]].append(r)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    peaks.append(sockpeak(opts.build))
    peak = median(peaks)
    print(f"\nsocket peak before/after: {peaks[0]:.0f} / {peaks[1]:.0f} MiB/s")
    print(f"medians of {opts.repeat} runs")
    print(f"{'way':<12} {'total s':>8} {'MiB/s':>6} {'of peak':>8} {'dst CPU':>8} {'receive':>8} {'populate':>9} "
          f"{'src CPU':>8} {'/prealloc':>10}")
    med = {n: {k: median([r[k] for r in rs]) for k in ("wall", "dst", "src", "recv", "pop")}
           for n, rs in results.items() if rs}
    ref = med.get("prealloc", {}).get("wall")
    for n, m in med.items():
        rate = opts.size * 1024 / m["wall"]
        vs = f"{m['wall'] / ref:.2f}" if ref else "-"
        print(f"{n:<12} {m['wall']:>8.2f} {rate:>6.0f} {rate / peak:>8.2f} {m['dst']:>8.2f} {m['recv']:>8.2f} "
              f"{m['pop']:>9.2f} {m['src']:>8.2f} {vs:>10}")


if __name__ == "__main__":
    main()
