#!/usr/bin/python3
"""Receive-path checksum benchmark: what the per-record CRC32C costs the destination, in CPU time and wall time.

Migrates --size GiB (default 2) of random RAM of a paused ferry-workload (-S) over a UNIX socket to a destination
started with -mem-prealloc (so that first-touch page faults, which vary by a factor of several between runs on
these machines, are out of the figure and the CPU work of receiving is all that is left), on the main channel
alone and with multifd (--multifd-channels, default 2), with record-checksum on and off. Each way runs
--repeat times (default 3), after one uncounted warm-up run, in an order that rotates from round to round so that
none always runs first. For every run it reads the destination's and the source's CPU time (user and system, from
/proc/PID/stat, from just before `migrate` until completion; the destination's preallocation at start-up is not
counted) and the migration's total time, and it checks that the destination's RAM digest equals the source's.

A way is (build, record-checksum, channels, chunk): --build is the tree under test; --before names another build
(e.g. the main branch's build-release) whose ways are measured in the same run, so that before/after ratios do
not compare different hours of a shared machine. --chunks lists values of FERRY_CRC_CHUNK (bytes per received
piece that is checksummed as soon as it lands, src/util/crc32c.c; used by the multifd receive path, the main
stream's pieces are its read buffer) to measure besides the build's default, with multifd and record-checksum
on; a build that predates it ignores the variable.

Prints every run, then per way the medians of destination CPU (user+sys, and user, sys), source CPU, wall time
and throughput, and the ratios of each way's medians to the same build's record-checksum-off way and, with
--before, to the before build's way of the same kind. With --perf DIR it also records a profile of the
destination (perf record -g -p PID) during the last run of each way and prints its top symbols (needs Debian's
linux-perf). This is a measurement, not a test: it asserts no speed. Run it through `bash bench/run.sh
--crc-recv`, which builds a release tree.
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


def cpu_times(pid):
    """(user, system) CPU seconds of process @pid so far, its exited threads included."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # After the comm: state is field 3, utime 14 and stime 15 (1-based) of the whole line.
    return int(fields[11]) / TICK, int(fields[12]) / TICK


def run_once(tmp, opts, way, perf_out=None):
    build, crc, channels, chunk = way["build"], way["crc"], way["channels"], way["chunk"]
    binary = os.path.join(build, "hosts", "workload", "ferry-workload")
    env = dict(os.environ)
    env.pop("FERRY_CRC_CHUNK", None)
    if chunk:
        env["FERRY_CRC_CHUNK"] = str(chunk)
    args = ["-m", f"{opts.size}G", "-smp", "2", "-pattern", "random", "-seed", "1", "-S"]
    uri = f"unix:{os.path.join(tmp, 'crc.sock')}"
    procs = []
    perf = None
    try:
        dst = ferrytest.Workload(tmp, "crc-dst", args + ["-incoming", uri, "-mem-prealloc"], env=env, binary=binary)
        procs.append(dst)
        src = ferrytest.Workload(tmp, "crc-src", args, env=env, binary=binary)
        procs.append(src)
        ferrytest.wait_listening(uri)
        caps = {"record-checksum": crc}
        if channels:
            caps["multifd"] = True
        for w in (src, dst):
            w.cmd("migrate-set-capabilities", capabilities=[{"capability": k, "state": v} for k, v in caps.items()])
        params = {"max-bandwidth": HIGH_BANDWIDTH}
        if channels:
            params["multifd-channels"] = channels
        src.set_params(**params)
        if perf_out:
            perf = subprocess.Popen(["perf", "record", "-g", "-q", "-o", perf_out, "-p", str(dst.proc.pid)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)
        d0, s0 = cpu_times(dst.proc.pid), cpu_times(src.proc.pid)
        src.migrate(uri)
        info = src.wait_migration(timeout=600)
        dst.wait_migration(timeout=60)
        d1, s1 = cpu_times(dst.proc.pid), cpu_times(src.proc.pid)
        if perf:
            perf.send_signal(2)
            perf.wait(60)
            perf = None
        if info["status"] != "completed":
            raise RuntimeError(f"migration {info['status']}: {info.get('error-desc')}")
        if ("record-checksum" in info["stream-features"]) != crc:
            raise RuntimeError(f"record-checksum {crc} asked, stream features {info['stream-features']}")
        if channels and "multifd" not in info["stream-features"]:
            raise RuntimeError(f"multifd asked, stream features {info['stream-features']}")
        if src.digest() != dst.digest():
            raise RuntimeError("RAM digests differ")
        return {"wall": info["total-time"] / 1000.0, "bytes": info["ram"]["total"],
                "dst_user": d1[0] - d0[0], "dst_sys": d1[1] - d0[1], "src_cpu": sum(s1) - sum(s0)}
    finally:
        if perf:
            perf.kill()
            perf.wait(10)
        for p in procs:
            p.stop_process()


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def perf_top(path, n=8):
    out = subprocess.run(["perf", "report", "-i", path, "--no-children", "--sort", "sym", "--stdio", "-q",
                          "--percent-limit", "2"], capture_output=True, text=True, timeout=300).stdout
    lines = [ln.strip() for ln in out.splitlines() if "%" in ln and not ln.lstrip().startswith(("-", "|"))]
    return lines[:n]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default=os.path.join(ROOT, "build-release"), help="build under test (release)")
    ap.add_argument("--before", help="another build to measure in the same run (e.g. /work/main/build-release)")
    ap.add_argument("--size", type=int, default=2, help="guest RAM in GiB (default 2)")
    ap.add_argument("--repeat", type=int, default=3, help="counted runs of each way (default 3)")
    ap.add_argument("--multifd-channels", type=int, default=2, help="multifd channels; 0: main channel only")
    ap.add_argument("--chunks", default="", help="FERRY_CRC_CHUNK values (bytes, comma-separated) to measure "
                                                 "besides the default, multifd, record-checksum on")
    ap.add_argument("--no-main", action="store_true", help="skip the main-channel ways")
    ap.add_argument("--perf", metavar="DIR", help="profile the destination in the last run of each way into DIR")
    opts = ap.parse_args()
    builds = [("after", os.path.abspath(opts.build))]
    if opts.before:
        builds.insert(0, ("before", os.path.abspath(opts.before)))
    for _, b in builds:
        if not os.access(os.path.join(b, "hosts", "workload", "ferry-workload"), os.X_OK):
            sys.exit(f"crc-recv-bench: no ferry-workload in {b}: run bench/run.sh --crc-recv")
    os.environ["FERRY_BUILD"] = builds[-1][1]

    ways = []
    kinds = ([0] if not opts.no_main else []) + ([opts.multifd_channels] if opts.multifd_channels else [])
    for bname, b in builds:
        for ch in kinds:
            for crc in (True, False):
                ways.append({"name": f"{bname}/{'multifd' + str(ch) if ch else 'main'}/crc-{'on' if crc else 'off'}",
                             "build": b, "crc": crc, "channels": ch, "chunk": None, "bname": bname})
    for c in [int(x) for x in opts.chunks.split(",") if x]:
        ch = opts.multifd_channels
        ways.append({"name": f"after/multifd{ch}/crc-on/chunk-{c >> 10}K", "build": builds[-1][1], "crc": True,
                     "channels": ch, "chunk": c, "bname": "after"})

    print(f"{opts.size} GiB of random RAM, paused source, UNIX socket, destination -mem-prealloc; "
          f"{len(ways)} ways x {opts.repeat} runs after one warm-up; CPU of {os.cpu_count()} cores shared with "
          f"whatever else runs on this machine")
    results = {w["name"]: [] for w in ways}
    tmp = tempfile.mkdtemp(prefix="ferry-crc-bench-", dir="/tmp")
    failed = False
    try:
        schedule = [(ways[0], False)]
        for i in range(opts.repeat):
            k = i % len(ways)
            schedule += [(w, True) for w in ways[k:] + ways[:k]]
        last = {w["name"]: max(i for i, (x, _) in enumerate(schedule) if x is w) for w in ways}
        if opts.perf:
            os.makedirs(opts.perf, exist_ok=True)
        for i, (way, counted) in enumerate(schedule):
            perf_out = None
            if opts.perf and counted and last[way["name"]] == i:
                perf_out = os.path.join(opts.perf, way["name"].replace("/", "_") + ".data")
            try:
                r = run_once(tmp, opts, way, perf_out)
            except Exception as e:
                print(f"{way['name']:<32} error: {e}", flush=True)
                failed = True
                continue
            print(f"{way['name']:<32} {'run' if counted else 'warm-up'}: wall {r['wall']:.2f} s, "
                  f"{r['bytes'] / (1 << 20) / r['wall']:.0f} MiB/s, destination CPU {r['dst_user'] + r['dst_sys']:.2f} s "
                  f"(user {r['dst_user']:.2f}, sys {r['dst_sys']:.2f}), source CPU {r['src_cpu']:.2f} s", flush=True)
            if counted:
                results[way["name"]].append(r)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    med = {}
    print(f"\nmedians of {opts.repeat} runs")
    print(f"{'way':<32} {'wall s':>7} {'MiB/s':>6} {'dst CPU':>8} {'dst usr':>8} {'dst sys':>8} {'src CPU':>8}")
    for w in ways:
        rs = results[w["name"]]
        if not rs:
            continue
        m = {k: median([r[k] for r in rs]) for k in ("wall", "dst_user", "dst_sys", "src_cpu")}
        m["dst"] = median([r["dst_user"] + r["dst_sys"] for r in rs])
        m["rate"] = median([r["bytes"] / (1 << 20) / r["wall"] for r in rs])
        med[w["name"]] = m
        print(f"{w['name']:<32} {m['wall']:>7.2f} {m['rate']:>6.0f} {m['dst']:>8.2f} {m['dst_user']:>8.2f} "
              f"{m['dst_sys']:>8.2f} {m['src_cpu']:>8.2f}")
    print("\nratios of medians (same run)")
    for w in ways:
        name = w["name"]
        if name not in med or not w["crc"]:
            continue
        off = name.split("/crc-")[0] + "/crc-off"
        if off in med:
            print(f"{name:<32} against {off}: destination CPU x{med[name]['dst'] / med[off]['dst']:.2f}, "
                  f"wall x{med[name]['wall'] / med[off]['wall']:.2f}")
        if w["bname"] == "after" and opts.before and not w["chunk"]:
            before = name.replace("after/", "before/", 1)
            if before in med:
                print(f"{name:<32} against {before}: destination CPU x{med[name]['dst'] / med[before]['dst']:.2f}, "
                      f"wall x{med[name]['wall'] / med[before]['wall']:.2f}")
    if opts.perf:
        for w in ways:
            path = os.path.join(opts.perf, w["name"].replace("/", "_") + ".data")
            if os.path.exists(path):
                print(f"\nprofile of the destination, {w['name']} (perf report --no-children --sort sym):")
                for ln in perf_top(path):
                    print("   ", ln)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
