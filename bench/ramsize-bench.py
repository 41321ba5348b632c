#!/usr/bin/python3
"""RAM-size benchmark: what a migration costs when there is nothing to send. A paused ferry-workload whose RAM was
never touched (-pattern zero -S: nothing is written, so nothing is populated) is migrated over a UNIX socket for
each of --sizes GiB (default 1, 16, 64 and 256: sparse RAM fits a small machine), --repeat times each (default 3),
and the table gives per size the medians of setup-time, downtime and total-time, with ms per GiB, and the bytes
transferred. With --base BUILD the same runs are made with that build too (main's, for a before/after in the same
run), interleaved size by size so that both see the same machine.

Every run is checked: the migration must complete, and for sizes up to --verify-max GiB (default 1: reading
untouched RAM costs a page fault per page, 16 GiB over a minute on the test machine) the RAM digests of both ends
must be equal. This is a measurement, not a test: it asserts no speed. Run it through bench/run.sh --ramsize, which builds a release tree.
It reuses the QMP client and process wrapper of the integration tests (tests/integration/ferrytest.py).
"""

import argparse
import os
import shutil
import sys
import tempfile

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

import ferrytest  # noqa: E402  (path set up above)

HIGH_BANDWIDTH = 100 << 30  # as migrate-bench.py: effectively unlimited


def run_once(tmp, build, size_gib, verify):
    """One migration of @size_gib GiB of untouched RAM with the ferry-workload of @build; returns query-migrate's
    reply and the verification's result."""
    binary = os.path.join(build, "hosts", "workload", "ferry-workload")
    args = ["-m", f"{size_gib}G", "-smp", "2", "-pattern", "zero", "-S"]
    uri = f"unix:{os.path.join(tmp, 'ramsize.sock')}"
    procs = []
    try:
        dst = ferrytest.Workload(tmp, "ramsize-dst", args + ["-incoming", uri], binary=binary)
        procs.append(dst)
        src = ferrytest.Workload(tmp, "ramsize-src", args, binary=binary)
        procs.append(src)
        ferrytest.wait_listening(uri)
        src.set_params(**{"max-bandwidth": HIGH_BANDWIDTH})
        src.migrate(uri)
        info = src.wait_migration(timeout=600)
        if info["status"] != "completed":
            raise RuntimeError(f"{size_gib} GiB: migration {info['status']}: {info.get('error-desc')}")
        if not verify:
            return info, "not read"
        return info, "ok" if src.digest() == dst.digest() else "FAILED (digests differ)"
    finally:
        for p in procs:
            p.stop_process()


def median(values):
    return sorted(values)[len(values) // 2]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default=os.path.join(ROOT, "build-release"), help="build directory (release)")
    ap.add_argument("--base", help="a second build directory (e.g. main's) measured in the same run")
    ap.add_argument("--sizes", default="1,16,64,256", help="guest RAM sizes in GiB, comma-separated")
    ap.add_argument("--repeat", type=int, default=3, help="runs per size and build (default 3; medians)")
    ap.add_argument("--verify-max", type=int, default=1,
                    help="compare RAM digests for sizes up to this many GiB (default 1)")
    opts = ap.parse_args()
    builds = [("after", os.path.abspath(opts.build))]
    if opts.base:
        builds.insert(0, ("before", os.path.abspath(opts.base)))
    for _, b in builds:
        if not os.access(os.path.join(b, "hosts", "workload", "ferry-workload"), os.X_OK):
            sys.exit(f"ramsize-bench: no ferry-workload in {b}: run bench/run.sh --ramsize")
    os.environ["FERRY_BUILD"] = builds[-1][1]
    sizes = [int(s) for s in opts.sizes.split(",") if s]

    print(f"untouched RAM of a paused ferry-workload (-pattern zero -S), UNIX socket, max-bandwidth "
          f"{HIGH_BANDWIDTH >> 30} GiB/s; medians of {opts.repeat}; builds: "
          + ", ".join(f"{n} {b}" for n, b in builds), flush=True)
    failed = False
    results = {}
    tmp = tempfile.mkdtemp(prefix="ferry-ramsize-", dir="/tmp")
    try:
        for size in sizes:
            for rep in range(opts.repeat):
                # Alternate which build goes first, so that neither always runs on a machine the other just used.
                order = builds if rep % 2 == 0 else builds[::-1]
                for name, build in order:
                    try:
                        info, verified = run_once(tmp, build, size, size <= opts.verify_max)
                    except Exception as e:  # report and go on
                        print(f"{name:<6} {size:>4} GiB  error: {e}", flush=True)
                        failed = True
                        continue
                    failed |= verified.startswith("FAILED")
                    run = (info.get("setup-time", 0), info.get("downtime", 0), info["total-time"],
                           info["ram"]["transferred"])
                    results.setdefault((name, size), []).append(run)
                    print(f"{name:<6} {size:>4} GiB  run {rep + 1}: setup {run[0]} ms, downtime {run[1]} ms, total "
                          f"{run[2]} ms, {run[3]} bytes, verified {verified}", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    header = (f"{'build':<6} {'GiB':>4} {'setup ms':>9} {'ms/GiB':>7} {'downtime':>9} {'ms/GiB':>7} "
              f"{'total ms':>9} {'ms/GiB':>7} {'bytes':>8}")
    print()
    print(header)
    print("-" * len(header))
    for name, _ in builds:
        for size in sizes:
            runs = results.get((name, size))
            if not runs or len(runs) != opts.repeat:
                print(f"{name:<6} {size:>4}  (incomplete)")
                continue
            setup, down, total, sent = (median([r[i] for r in runs]) for i in range(4))
            print(f"{name:<6} {size:>4} {setup:>9} {setup / size:>7.2f} {down:>9} {down / size:>7.2f} "
                  f"{total:>9} {total / size:>7.2f} {sent:>8}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
