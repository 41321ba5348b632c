#!/usr/bin/python3
"""Snapshots (issue 21): save and restore of a workload's RAM through a file, by QEMU 7.2 and by ferry, in one run,
next to the page-cache limits of the snapshot file's filesystem measured in the same run; ferry's instant restore
(restore-mode map), clones of one snapshot, and a background snapshot of a running workload.

What it measures, in order, for each --size (GiB) that fits MemAvailable:

  limits    in --dir (default /var/tmp: ext4 here; /dev/shm would be tmpfs, where there is no disk behind the page
            cache): writing SIZE bytes of random data into a new file with 16 MiB write() calls from one process,
            timed without and with the final fdatasync, after the same --settle as the saves (memory left idle
            comes back from the hypervisor slowly here, docs/memory.md, and a save's page cache is such memory
            too); reading it back with 16 MiB reads while it is cached (just written); as root, reading it again
            after `echo 1 > /proc/sys/vm/drop_caches` (cold: from the disk). Measured again after the save and
            restore rows, to show how much it moved on this shared machine; the ratios use the first.
  save      the RAM is a prepared file of random pages in /dev/shm (qemu-bench.py's "random" case), mapped privately
            by a paused source (-S) as a memory-backend-file, as in qemu-bench.py. QEMU 7.2 (no file: URI):
            `migrate exec:cat > FILE`. ferry-workload: `migrate file:FILE` with the old stream format, with
            capability mapped-ram, and with mapped-ram plus multifd (--channels). Time: wall clock from the migrate
            command to the source's status "completed" (polled every 10 ms), and the program's own total-time. The
            file's st_size and allocated bytes (st_blocks * 512) are printed next to the RAM size.
  restore   QEMU: `-m SIZE -incoming defer`, `migrate-incoming exec:cat FILE`. ferry: `-m SIZE -incoming defer`,
            the save's capabilities, `migrate-incoming file:FILE`. Time: migrate-incoming to the destination's
            "completed". ferry rows are checked by query-ram-digest against the source's, taken at save time (the
            destination stays paused, as its source was). From the mapped-ram file also restore-mode map (the
            file's pages mapped privately, nothing copied): once paused (digest checked) and once timed to
            "completed" and run state "running" (time to running: the destination keeps the saved workload's run
            state, paused here, so `cont` is sent at "completed" and its time is included).
  clones    --clones ferry-workload destinations, each with its own -name clone-N, restored with restore-mode map
            from one mapped-ram snapshot of --clone-size GiB, all spawned before any is waited for: time from the
            first spawn to all running; once their verifiers have mapped the whole file, the sum of Pss (the
            memory they use: the shared pages once, their own in full) and of Rss (which counts the shared pages
            in every clone) (/proc/PID/smaps_rollup) of all of them against the Rss of one destination restored
            by copy (restore-mode copy); query-name of each must differ.
  background
            a running ferry-workload (-pattern ab -smp 1, --bg-size GiB) saved with capabilities background-snapshot
            and mapped-ram: save time, and the workload's write rate (query-workload pages-written per second)
            during the save against the 3 s before it; then restored, and query-pattern-check must pass.

Restored workloads that run (time to running, clones) are started with -dirty-rate --run-dirty-rate (MiB/s, default
1): an unthrottled A-B writer would copy-on-write every mapped page within seconds, which is the workload's choice
and not the restore's, and 8 of them would not fit this machine.

Each figure is the median of --repeat runs; ratios are against the limits and QEMU of the same run. It is a
measurement, not a test: it asserts no speed, but a failed check (digest, pattern, names) makes it exit 1. A ferry
feature that is missing (e.g. "mapped-ram is not implemented") is reported in its row as "ferry: <error>" and the
other rows go on. Processes and files are removed on every exit path. Run it through `bash bench/run.sh
--snapshot`, which builds the release tree. Helpers (QEMU and ferry processes, the RAM file, cleanup) are
bench/qemu-bench.py's, imported.
"""

import argparse
import atexit
import datetime
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def _import_qemu_bench():
    spec = importlib.util.spec_from_file_location("qemu_bench", os.path.join(ROOT, "bench", "qemu-bench.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


qb = _import_qemu_bench()
ferrytest = qb.ferrytest
GIB = qb.GIB
CHUNK = 16 << 20
TIMEOUT = 900


class FerryRowError(Exception):
    """A ferry feature or step failed: reported in the row as "ferry: <error>", the other rows go on."""


# ---- small helpers ----------------------------------------------------------------------------------------------

def unlink(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    if path in qb._files:
        qb._files.remove(path)


def file_sizes(path):
    st = os.stat(path)
    return st.st_size, st.st_blocks * 512


def fmt_bytes(n):
    return f"{n / GIB:.2f}G" if n >= GIB // 4 else f"{n / (1 << 20):.1f}M"


def qmp_error(e):
    return e.desc if isinstance(e, ferrytest.QMPError) else str(e)


def set_caps(end, caps, channels=0):
    """Capabilities @caps on at @end (a qb.Ferry or qb.Qemu), multifd-channels if multifd is among them. A refusal
    becomes a FerryRowError naming what was refused."""
    params = [c for c in caps if c in ("direct-io",)]  # boolean parameters spelled as a variant's "capability"
    caps = [c for c in caps if c not in params]
    if caps:
        try:
            end.cmd("migrate-set-capabilities", capabilities=[{"capability": c, "state": True} for c in caps])
        except ferrytest.QMPError as e:
            raise FerryRowError(f"capabilities {'+'.join(caps)}: {e.desc}") from None
    for p in params:
        try:
            end.cmd("migrate-set-parameters", **{p: True})
        except ferrytest.QMPError as e:
            raise FerryRowError(f"{p}: {e.desc}") from None
    if "multifd" in caps:
        try:
            end.cmd("migrate-set-parameters", **{"multifd-channels": channels})
        except ferrytest.QMPError as e:
            raise FerryRowError(f"multifd-channels {channels}: {e.desc}") from None


def set_param(end, name, value):
    try:
        end.cmd("migrate-set-parameters", **{name: value})
    except ferrytest.QMPError as e:
        raise FerryRowError(f"{name} {value}: {e.desc}") from None


def poll(query, done, what, timeout=TIMEOUT, interval=0.01):
    """Call @query until @done(its result) is true or the migration failed; returns the last result."""
    deadline = time.monotonic() + timeout
    while True:
        r = query()
        if done(r):
            return r
        if isinstance(r, dict) and r.get("status") in ("failed", "cancelled"):
            raise RuntimeError(f"{what}: {r.get('status')}: {r.get('error-desc', '')}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not done after {timeout} s: {r}")
        time.sleep(interval)


def completed(info):
    return info.get("status") == "completed"


def wait_running(end, what):
    """After a completed restore: `cont` if the destination stayed paused (it keeps the saved workload's run
    state, and the saved sources here are paused), then wait for run state "running"."""
    if end.cmd("query-status").get("status") != "running":
        end.cmd("cont")
    poll(lambda: end.cmd("query-status"), lambda s: s.get("status") == "running", what, timeout=60, interval=0.001)


def ferry_said(*procs):
    said = "; ".join(f"{p.w.name}: {p.w.stderr().strip()[-300:]}" for p in procs if p and p.w.stderr().strip())
    return f" ({said})" if said else ""


def smaps_rollup(pid):
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[0] in ("Rss:", "Pss:"):
                out[parts[0][:-1]] = int(parts[1]) * 1024
    return out


# ---- the page-cache limits --------------------------------------------------------------------------------------

def page_cache_limits(directory, size):
    """Seconds to write @size random bytes into a new file in @directory (without, with fdatasync), to read it
    back cached, and (root) to read it after dropping the page cache; None where not measured."""
    path = os.path.join(directory, f"ferry-snapbench-{os.getpid()}-limit")
    qb._files.append(path)
    pool = memoryview(os.urandom(64 << 20))
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            t0 = time.monotonic()
            off = 0
            while off < size:
                n = min(CHUNK, size - off)
                start = off % len(pool)
                off += os.write(fd, pool[start:start + n])
            t_write = time.monotonic() - t0
            os.fdatasync(fd)
            t_sync = time.monotonic() - t0
        finally:
            os.close(fd)
        del pool
        t_cached = read_file_time(path)
        t_cold = None
        if os.geteuid() == 0:
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("1\n")
            t_cold = read_file_time(path)
        return {"write": t_write, "write+sync": t_sync, "read": t_cached, "cold-read": t_cold}
    finally:
        unlink(path)


def print_limits(opts, size, lim, when):
    cold = (f"{size / lim['cold-read']:.2f} GiB/s ({lim['cold-read']:.2f} s)" if lim["cold-read"]
            else "not measured (needs root for drop_caches)")
    line = (f"{size} GiB page-cache limits in {opts.dir}{when}: write {size / lim['write']:.2f} GiB/s "
            f"({lim['write']:.2f} s) without fdatasync, {size / lim['write+sync']:.2f} GiB/s "
            f"({lim['write+sync']:.2f} s) with it; read cached {size / lim['read']:.2f} GiB/s "
            f"({lim['read']:.2f} s); cold read after drop_caches {cold}")
    print(line, flush=True)
    return line


def read_file_time(path):
    buf = bytearray(CHUNK)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        t0 = time.monotonic()
        while os.readv(fd, [buf]) > 0:
            pass
        return time.monotonic() - t0
    finally:
        os.close(fd)


# ---- save and restore ---------------------------------------------------------------------------------------------

def qemu_common(opts, size):
    return ["-machine", f"pc,accel={opts.accel}", "-nodefaults", "-display", "none", "-m", f"{size}G"]


def qemu_save(opts, tmp, size, ram_path, snap):
    """QEMU 7.2 saves its paused RAM to @snap through exec:cat; returns (wall ms, total-time ms)."""
    src = None
    try:
        src = qb.Qemu(opts.qemu, tmp, "qemu-src", qemu_common(opts, size) + [
            "-S", "-object", f"memory-backend-file,id=pc.ram,size={size}G,mem-path={ram_path},share=off",
            "-machine", "memory-backend=pc.ram"])
        src.cmd("migrate-set-parameters", **{"max-bandwidth": qb.HIGH_BANDWIDTH})
        t0 = time.monotonic()
        src.cmd("migrate", uri=f"exec:cat > {snap}")
        info = poll(lambda: src.cmd("query-migrate"), completed, "QEMU save")
        return (time.monotonic() - t0) * 1000, info.get("total-time"), "completed"
    finally:
        if src:
            src.stop()


def qemu_restore(opts, tmp, size, snap):
    dst = None
    try:
        dst = qb.Qemu(opts.qemu, tmp, "qemu-dst", qemu_common(opts, size) + ["-incoming", "defer"])
        t0 = time.monotonic()
        dst.cmd("migrate-incoming", uri=f"exec:cat {snap}")
        info = poll(lambda: dst.cmd("query-migrate"), completed, "QEMU restore")
        return (time.monotonic() - t0) * 1000, info.get("total-time"), "completed"
    finally:
        if dst:
            dst.stop()


def ferry_save(opts, tmp, size, ram_path, snap, caps):
    """ferry-workload saves its paused RAM (the file @ram_path, mapped privately) to @snap with capabilities
    @caps; returns (wall ms, total-time ms, the source's query-ram-digest)."""
    src = None
    try:
        src = qb.Ferry(tmp, "ferry-src", ["-object", f"memory-backend-file,id=ram0,size={size}G,mem-path={ram_path},"
                                          "share=off", "-machine", "memory-backend=ram0", "-S"])
        set_caps(src, caps, opts.channels)
        src.cmd("migrate-set-parameters", **{"max-bandwidth": qb.HIGH_BANDWIDTH})
        t0 = time.monotonic()
        try:
            src.cmd("migrate", uri=f"file:{snap}")
            info = poll(lambda: src.cmd("query-migrate"), completed, "ferry save")
        except (ferrytest.QMPError, RuntimeError) as e:
            raise FerryRowError(f"{qmp_error(e)}{ferry_said(src)}") from None
        wall = (time.monotonic() - t0) * 1000
        return wall, info.get("total-time"), src.cmd("query-ram-digest")
    finally:
        if src:
            src.stop()


def ferry_restore(opts, tmp, size, snap, caps, digest, mode=None, run=False, name="ferry-dst"):
    """A ferry-workload destination restores @snap with capabilities @caps (and restore-mode @mode if given).
    Paused (@run false): timed to "completed", then its digest is compared with @digest. With @run, `cont` is sent
    before migrate-incoming and the time is to "completed" and run state "running"; no digest (the workload has
    written by then). Returns (wall ms, total-time ms, verification text)."""
    dst = None
    args = ["-m", f"{size}G", "-incoming", "defer"]
    if run:
        args += ["-smp", "1", "-dirty-rate", str(opts.run_dirty_rate)]
    try:
        dst = qb.Ferry(tmp, name, args)
        set_caps(dst, caps, opts.channels)
        if mode:
            set_param(dst, "restore-mode", mode)
        t0 = time.monotonic()
        try:
            dst.cmd("migrate-incoming", uri=f"file:{snap}")
            info = poll(lambda: dst.cmd("query-migrate"), completed, "ferry restore", interval=0.001)
            if run:
                wait_running(dst, "ferry run state")
        except (ferrytest.QMPError, RuntimeError, TimeoutError) as e:
            raise FerryRowError(f"{qmp_error(e)}{ferry_said(dst)}") from None
        wall = (time.monotonic() - t0) * 1000
        if run:
            verified = "running"
        else:
            verified = "ok (digest)" if dst.cmd("query-ram-digest") == digest else "FAILED (digests differ)"
        return wall, info.get("total-time"), verified
    finally:
        if dst:
            dst.stop()


class Rows:
    """The rows of the table, printed as they come and again as markdown at the end."""

    HEADER = (f"{'size':>5} {'op':<8} {'engine':<6} {'variant':<29}{'wall ms':>9}{'total ms':>9}{'GiB/s':>7}"
              f"{'of limit':>9}{'vs QEMU':>8}{'file size':>10}{'allocated':>10}  {'runs (wall ms)':<20} verified")

    def __init__(self):
        self.rows = []
        self.failed = False

    def add(self, size, op, engine, variant, runs=None, error=None, limit_gibps=None, qemu_wall=None, files=None):
        """@runs: a list of (wall ms, total-time ms, verified); the median by wall time is shown. @qemu_wall: QEMU's
        median wall time of the same operation, for the ratio (QEMU's time / this one: > 1 means faster)."""
        row = {"size": size, "op": op, "engine": engine, "variant": variant, "error": error}
        prefix = f"{str(size) + 'G':>5} {op:<8} {engine:<6} {variant:<29}"
        if error or not runs:
            # A ferry feature that is refused or a ferry migration that fails is reported, not counted as a failed
            # check; an unexpected error is.
            self.failed |= bool(error) and error.startswith("error:")
            print(f"{prefix}{engine}: {error}", flush=True)
            self.rows.append(row)
            return row
        med = sorted(runs, key=lambda r: r[0])[len(runs) // 2]
        wall, total = med[0], med[1]
        gibps = size / (wall / 1000.0)
        verified = sorted(set(r[2] for r in runs))
        self.failed |= any(v.startswith("FAILED") for v in verified)
        row.update(wall=wall, total=total, gibps=gibps, verified=verified, runs=[r[0] for r in runs],
                   of_limit=gibps / limit_gibps if limit_gibps else None,
                   vs_qemu=qemu_wall / wall if qemu_wall else None, files=files)
        fs = (fmt_bytes(files[0]), fmt_bytes(files[1])) if files else ("", "")
        of_limit = f"{row['of_limit']:.0%}" if row["of_limit"] else ""
        vs_qemu = f"{row['vs_qemu']:.2f}x" if row["vs_qemu"] else ""
        total_txt = str(total) if total is not None else ""
        print(f"{prefix}{wall:>9.0f}{total_txt:>9}{gibps:>7.2f}{of_limit:>9}{vs_qemu:>8}{fs[0]:>10}{fs[1]:>10}  "
              f"{'/'.join(f'{r:.0f}' for r in row['runs']):<20} {', '.join(verified)}", flush=True)
        self.rows.append(row)
        return row

    def markdown(self):
        if not self.rows:
            return
        print()
        print("| size | operation | engine | variant | wall ms | total-time ms | GiB/s | of page-cache limit | "
              "QEMU time / this | file size | allocated | verified |")
        print("| --- " * 12 + "|")
        for r in self.rows:
            cells = [f"{r['size']} GiB", r["op"], r["engine"], r["variant"]]
            if r.get("error") or "wall" not in r:
                cells += [f"{r['engine']}: {r['error']}"] + [""] * 7
            else:
                files = r["files"]
                cells += [f"{r['wall']:.0f}", str(r["total"] if r["total"] is not None else ""), f"{r['gibps']:.2f}",
                          f"{r['of_limit']:.0%}" if r["of_limit"] else "",
                          f"{r['vs_qemu']:.2f}x" if r["vs_qemu"] else "",
                          fmt_bytes(files[0]) if files else "", fmt_bytes(files[1]) if files else "",
                          ", ".join(r["verified"])]
            print("| " + " | ".join(cells) + " |")


def repeat(opts, fn):
    """@fn() --repeat times, a settle before each; the list of its results, or the first FerryRowError's text."""
    runs = []
    for _ in range(opts.repeat):
        time.sleep(opts.settle)
        try:
            runs.append(fn())
        except FerryRowError as e:
            return runs, str(e)
        except Exception as e:  # report and go on with the other rows
            return runs, f"error: {e}"
    return runs, None


FERRY_SAVES = [("stream", []), ("mapped-ram", ["mapped-ram"]), ("mapped-ram+multifd", ["mapped-ram", "multifd"]),
               ("mapped-ram+direct-io", ["mapped-ram", "direct-io"])]


def save_restore(opts, tmp, size, ram_path, limits, table):
    """Section 2 and 3 for one size: each engine and format saves and then restores the same file --repeat times."""
    snap = os.path.join(opts.dir, f"ferry-snapbench-{os.getpid()}-{size}G.snap")
    qb._files.append(snap)
    lw, lr = size / limits["write"], size / limits["read"]
    try:
        # QEMU: each run saves, then restores what it saved.
        saves, synced, restores, files, qemu_error = [], [], [], None, None
        for _ in range(opts.repeat):
            unlink(snap)
            qb._files.append(snap)
            time.sleep(opts.settle)
            try:
                saves.append(qemu_save(opts, tmp, size, ram_path, snap))
                # ferry's file: save ends with fdatasync (the file is on disk when it says completed); QEMU's
                # exec:cat leaves the data in the page cache. The same durability costs QEMU this much more.
                t0 = time.monotonic()
                fd = os.open(snap, os.O_RDONLY)
                try:
                    os.fdatasync(fd)
                finally:
                    os.close(fd)
                w, t, v = saves[-1]
                synced.append((w + (time.monotonic() - t0) * 1000, t, v))
                files = file_sizes(snap)
                time.sleep(opts.settle)
                restores.append(qemu_restore(opts, tmp, size, snap))
            except Exception as e:  # report and go on with ferry's rows
                qemu_error = f"error: {e}"
                break
        qemu_save_wall = table.add(size, "save", "QEMU", "exec:cat > FILE", saves,
                                   qemu_error if len(saves) < opts.repeat else None, lw, files=files).get("wall")
        table.add(size, "save", "QEMU", "exec:cat > FILE + fdatasync", synced,
                  qemu_error if len(synced) < opts.repeat else None, lw, files=files)
        qemu_rest_wall = table.add(size, "restore", "QEMU", "exec:cat FILE", restores,
                                   qemu_error if len(restores) < opts.repeat else None, lr).get("wall")

        for variant, caps in FERRY_SAVES:
            name = variant + (f" {opts.channels}ch" if "multifd" in caps else "")
            saves, rest = [], {"copy": [], "map": [], "map+cont": []}
            files, error, rest_errors = None, None, {}
            for _ in range(opts.repeat):
                unlink(snap)
                qb._files.append(snap)
                time.sleep(opts.settle)
                try:
                    wall, total, digest = ferry_save(opts, tmp, size, ram_path, snap, caps)
                except FerryRowError as e:
                    error = str(e)
                    break
                except Exception as e:
                    error = f"error: {e}"
                    break
                saves.append((wall, total, "completed"))
                files = file_sizes(snap)
                kinds = [("copy", None, False)]
                if variant == "mapped-ram":
                    kinds += [("map", "map", False), ("map+cont", "map", True)]
                for kind, mode, run in kinds:
                    if kind in rest_errors:
                        continue
                    time.sleep(opts.settle)
                    try:
                        rest[kind].append(ferry_restore(opts, tmp, size, snap, caps, digest, mode, run))
                    except FerryRowError as e:
                        rest_errors[kind] = str(e)
                    except Exception as e:
                        rest_errors[kind] = f"error: {e}"
            table.add(size, "save", "ferry", name, saves, error, lw, qemu_save_wall, files)
            for kind in rest:
                if variant != "mapped-ram" and kind != "copy":
                    continue
                label = {"copy": name, "map": f"{name} map", "map+cont": f"{name} map: to running"}[kind]
                err = rest_errors.get(kind) or ("n/a (no file: the save failed)" if error and not rest[kind] else None)
                table.add(size, "restore", "ferry", label, rest[kind], err, lr, qemu_rest_wall)
    finally:
        unlink(snap)


# ---- clones -------------------------------------------------------------------------------------------------------

class Spawned:
    """A ferry-workload started without waiting for its QMP socket (ferrytest.Workload waits in its constructor),
    so that several start together; connect() later."""

    def __init__(self, tmp, name, args):
        self.name = name
        self.qmp_path = os.path.join(tmp, f"{name}.qmp")
        self.stderr_path = os.path.join(tmp, f"{name}.stderr")
        argv = [ferrytest.workload_binary(), "-name", name, "-qmp", f"unix:{self.qmp_path},server=on,wait=off",
                *args]
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                         start_new_session=True)
        qb._procs.append(self.proc)
        self.qmp = None

    def connect(self):
        deadline = time.monotonic() + 60
        while self.qmp is None:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}: {self.stderr()}")
            try:
                self.qmp = ferrytest.QMP(self.qmp_path)
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.name}: no QMP socket after 60 s")
                time.sleep(0.002)

    def stderr(self):
        with open(self.stderr_path, errors="replace") as f:
            return f.read()[-300:]

    def cmd(self, name, args=None, **kwargs):
        return self.qmp.cmd(name, args, **kwargs)

    def stop(self):
        if self.proc.poll() is None:
            try:
                self.qmp.cmd("quit", timeout=5)
                self.proc.wait(15)
            except Exception:
                self.proc.kill()
        self.proc.wait(10)
        if self.qmp:
            self.qmp.close()
        if self.proc in qb._procs:
            qb._procs.remove(self.proc)


def clones(opts, tmp, size, ram_path):
    """Section 4: returns lines of text (the section's output) and whether a check failed."""
    lines, failed = [], False
    snap = os.path.join(opts.dir, f"ferry-snapbench-{os.getpid()}-clone.snap")
    qb._files.append(snap)
    procs = []
    try:
        time.sleep(opts.settle)
        try:
            ferry_save(opts, tmp, size, ram_path, snap, ["mapped-ram"])
        except (FerryRowError, Exception) as e:
            return [f"clones: ferry: {e} (no snapshot to clone)"], not isinstance(e, FerryRowError)
        # The reference: one destination restored by copy, running.
        time.sleep(opts.settle)
        ref = None
        try:
            one = Spawned(tmp, "copy-1", ["-m", f"{size}G", "-smp", "1", "-dirty-rate", str(opts.run_dirty_rate),
                                          "-incoming", "defer"])
            procs.append(one)
            one.connect()
            set_caps(one, ["mapped-ram"])
            set_param(one, "restore-mode", "copy")
            t0 = time.monotonic()
            one.cmd("migrate-incoming", uri=f"file:{snap}")
            poll(lambda: one.cmd("query-migrate"), completed, "restore by copy", interval=0.001)
            wait_running(one, "restore by copy: run state")
            ref_ms = (time.monotonic() - t0) * 1000
            ref = smaps_rollup(one.proc.pid)
            lines.append(f"clones: one destination restored by copy: {ref_ms:.0f} ms to running, Rss "
                         f"{fmt_bytes(ref['Rss'])}, Pss {fmt_bytes(ref['Pss'])}")
        except Exception as e:  # reported; the clones go on without the reference
            lines.append(f"clones: reference restore by copy: ferry: {qmp_error(e)}")
        finally:
            for p in procs:
                p.stop()
            procs.clear()
        time.sleep(opts.settle)
        try:
            t0 = time.monotonic()
            for i in range(opts.clones):
                procs.append(Spawned(tmp, f"clone-{i + 1}", ["-m", f"{size}G", "-smp", "1", "-dirty-rate",
                                                             str(opts.run_dirty_rate), "-incoming", "defer"]))
            for p in procs:
                p.connect()
                set_caps(p, ["mapped-ram"])
                set_param(p, "restore-mode", "map")
                p.cmd("migrate-incoming", uri=f"file:{snap}")
            for p in procs:
                poll(lambda: p.cmd("query-migrate"), completed, f"{p.name} restore", interval=0.001)
                wait_running(p, f"{p.name} run state")
            all_ms = (time.monotonic() - t0) * 1000
            # Memory once every clone's verifier has read and mapped the whole file (the steady state: each clone
            # maps every page of the file, so the sum of Pss counts the shared page cache once plus what each
            # clone has of its own; measured right after the start it would miss the pages not yet mapped).
            for p in procs:
                poll(lambda: p.cmd("query-migrate"), lambda r: r.get("restore-verify", {}).get("status") != "running",
                     f"{p.name} verifier", interval=0.05)
            mem = [smaps_rollup(p.proc.pid) for p in procs]
            pss, rss = sum(m["Pss"] for m in mem), sum(m["Rss"] for m in mem)
            lines.append(f"clones: {opts.clones} clones of a {size} GiB snapshot, restore-mode map: {all_ms:.0f} ms "
                         f"from the first spawn to all running; sum of Pss {fmt_bytes(pss)}, sum of Rss "
                         f"{fmt_bytes(rss)}")
            if ref:
                lines.append(f"clones: sum of Pss / Rss of one copy = {pss / ref['Rss']:.2f}x (target: < 1.5x); "
                             f"sum of Rss / Rss of one copy = {rss / ref['Rss']:.2f}x (shared pages counted in "
                             f"every clone)")
            try:
                names = [p.cmd("query-name").get("name") for p in procs]
                ok = len(set(names)) == len(names)
                failed |= not ok
                lines.append(f"clones: query-name: {', '.join(map(str, names))}: "
                             f"{'all differ' if ok else 'FAILED (not all differ)'}")
            except ferrytest.QMPError as e:
                lines.append(f"clones: query-name: ferry: {e.desc}")
        except Exception as e:
            said = "; ".join(f"{p.name}: {p.stderr().strip()}" for p in procs if p.stderr().strip())
            lines.append(f"clones: ferry: {qmp_error(e)}{' (' + said + ')' if said else ''}")
        return lines, failed
    finally:
        for p in procs:
            p.stop()
        unlink(snap)


# ---- background snapshot ------------------------------------------------------------------------------------------

def pages_written(w):
    return w.cmd("query-workload")["pages-written"]


def background(opts, tmp):
    """Section 5: returns lines of text and whether a check failed."""
    size = opts.bg_size
    snap = os.path.join(opts.dir, f"ferry-snapbench-{os.getpid()}-bg.snap")
    qb._files.append(snap)
    args = ["-m", f"{size}G", "-smp", "1", "-pattern", "ab"]
    src = dst = None
    lines = []
    try:
        time.sleep(opts.settle)
        src = qb.Ferry(tmp, "bg-src", args)
        try:
            set_caps(src, ["background-snapshot", "mapped-ram"])
        except FerryRowError as e:
            return [f"background: ferry: {e}"], False
        src.cmd("migrate-set-parameters", **{"max-bandwidth": qb.HIGH_BANDWIDTH})
        time.sleep(1.0)  # past the workload's first fill
        p0, t0 = pages_written(src), time.monotonic()
        time.sleep(3.0)
        p1, t1 = pages_written(src), time.monotonic()
        before = (p1 - p0) / (t1 - t0)
        try:
            src.cmd("migrate", uri=f"file:{snap}")
            info = poll(lambda: src.cmd("query-migrate"), completed, "background snapshot")
        except Exception as e:
            return [f"background: ferry: {qmp_error(e)}{ferry_said(src)}"], False
        p2, t2 = pages_written(src), time.monotonic()
        during = (p2 - p1) / (t2 - t1)
        files = file_sizes(snap)
        slowdown = f"{during / before:.1%} of before" if before else "no writes before the save: not a ratio"
        lines.append(f"background: {size} GiB running -pattern ab -smp 1: save {(t2 - t1) * 1000:.0f} ms wall, "
                     f"total-time {info.get('total-time')} ms; file {fmt_bytes(files[0])} "
                     f"(allocated {fmt_bytes(files[1])}); workload pages written/s (query-workload pages-written): "
                     f"{before:.0f} in the 3 s before, {during:.0f} during the save ({slowdown})")
        src.stop()
        src = None
        time.sleep(opts.settle)
        dst = qb.Ferry(tmp, "bg-dst", args + ["-incoming", "defer"])
        try:
            set_caps(dst, ["mapped-ram"])
            t0 = time.monotonic()
            dst.cmd("migrate-incoming", uri=f"file:{snap}")
            poll(lambda: dst.cmd("query-migrate"), completed, "background restore")
        except Exception as e:
            return lines + [f"background: restore: ferry: {qmp_error(e)}{ferry_said(dst)}"], False
        check = dst.cmd("query-pattern-check")
        ok = check.get("ok") is True and check.get("mismatches") == 0
        lines.append(f"background: restored in {(time.monotonic() - t0) * 1000:.0f} ms; query-pattern-check "
                     f"{'ok' if ok else 'FAILED'}: {check}")
        return lines, not ok
    except Exception as e:
        return lines + [f"background: error: {e}"], True
    finally:
        for p in (src, dst):
            if p:
                p.stop()
        unlink(snap)


# ---- main -------------------------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default=os.path.join(ROOT, "build-release"), help="build directory (release)")
    ap.add_argument("--size", default="2,8", help="comma-separated RAM sizes in GiB (default 2,8)")
    ap.add_argument("--dir", default="/var/tmp", help="where the snapshot files go (default /var/tmp)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per row (default 3; median shown)")
    ap.add_argument("--channels", type=int, default=2, help="multifd-channels of the multifd rows (default 2)")
    ap.add_argument("--clones", type=int, default=8, help="clones restored from one snapshot (default 8; 0: none)")
    ap.add_argument("--clone-size", type=int, default=2, help="RAM of the cloned snapshot in GiB (default 2)")
    ap.add_argument("--bg-size", type=int, default=2,
                    help="RAM of the background-snapshot workload in GiB (default 2; 0: no background section)")
    ap.add_argument("--run-dirty-rate", type=int, default=1,
                    help="-dirty-rate (MiB/s) of restored workloads that run: time to running, clones (default 1)")
    ap.add_argument("--settle", type=float, default=3.0,
                    help="seconds idle before each save or restore (default 3; see qemu-bench.py --settle)")
    ap.add_argument("--accel", choices=("kvm", "tcg"), default="tcg",
                    help="QEMU accelerator (default tcg: QEMU's RAM migration is the same, and this machine's "
                         "/dev/kvm is PVM)")
    opts = ap.parse_args()

    atexit.register(qb.cleanup)
    signal.signal(signal.SIGTERM, qb._on_signal)
    signal.signal(signal.SIGINT, qb._on_signal)

    os.environ["FERRY_BUILD"] = os.path.abspath(opts.build)
    if not os.access(ferrytest.workload_binary(), os.X_OK):
        sys.exit(f"snapshot-bench: {ferrytest.workload_binary()} not found: run bash bench/run.sh --snapshot")
    opts.qemu = qb.ensure_qemu()
    sizes = [int(s) for s in opts.size.split(",") if s]
    fstype = subprocess.run(["findmnt", "-n", "-o", "FSTYPE", "-T", opts.dir], capture_output=True,
                            text=True).stdout.strip() or "unknown filesystem"

    print(f"date {datetime.datetime.now().isoformat(timespec='seconds')}; machine: {qb.machine_description()}")
    print(f"{qb.qemu_version(opts.qemu)}, accel={opts.accel}; ferry from {opts.build}")
    print(f"snapshot files in {opts.dir} ({fstype}); RAM files in /dev/shm; load average at start: "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{opts.repeat} runs per row, median shown; {opts.settle:g} s idle before each save and restore; "
          f"max-bandwidth {qb.HIGH_BANDWIDTH >> 30} GiB/s; multifd rows: {opts.channels} channels")
    print("wall = command to 'completed' (restore 'to running': to 'completed' and run state running); "
          "GiB/s = RAM size / wall; of limit = against the page-cache limit of this size (write for saves, cached "
          "read for restores); vs QEMU = QEMU's wall / this wall")

    table = Rows()
    extra = []
    tmp = tempfile.mkdtemp(prefix="ferry-snapbench-", dir="/tmp")
    try:
        for size in sizes:
            need = 2 * size * GIB + GIB  # the RAM file and one destination, plus the processes
            avail = qb.mem_available()
            if need > avail:
                print(f"{size} GiB: skipped: the RAM file and a destination need {need / GIB:.0f} GiB, "
                      f"MemAvailable is {avail / GIB:.1f} GiB")
                continue
            # The same idle time as before each save: the page cache is then memory as fresh as the saves get.
            time.sleep(opts.settle)
            lim = page_cache_limits(opts.dir, size * GIB)
            print_limits(opts, size, lim, "")
            ram_path = f"/dev/shm/ferry-snapbench-{os.getpid()}-random-{size}G.img"
            t0 = time.monotonic()
            qb.write_ram_file(ram_path, size * GIB, "random")
            print(f"# random {size} GiB RAM file written in {time.monotonic() - t0:.1f} s", flush=True)
            try:
                if size == sizes[0]:
                    print(Rows.HEADER)
                    print("-" * len(Rows.HEADER))
                save_restore(opts, tmp, size, ram_path, lim, table)
                # Again after the rows: on a shared 2-core machine the limits move, and this says by how much.
                time.sleep(opts.settle)
                after = page_cache_limits(opts.dir, size * GIB)
                extra.append(print_limits(opts, size, after, " (again after the save and restore rows)"))
                if opts.clones and size == opts.clone_size:
                    if size * GIB * (1 + 1) + GIB > qb.mem_available():
                        extra.append("clones: skipped: not enough MemAvailable for the reference copy")
                    else:
                        lines, bad = clones(opts, tmp, size, ram_path)
                        table.failed |= bad
                        extra += lines
                        for line in lines:
                            print(line, flush=True)
            finally:
                unlink(ram_path)
        if opts.clones and opts.clone_size not in sizes:
            extra.append(f"clones: not run: --clone-size {opts.clone_size} is not among --size {opts.size}")
            print(extra[-1])
        if opts.bg_size:
            if 2 * opts.bg_size * GIB + GIB > qb.mem_available():
                lines, bad = [f"background: skipped: {opts.bg_size} GiB twice does not fit MemAvailable"], False
            else:
                lines, bad = background(opts, tmp)
            table.failed |= bad
            extra += lines
            for line in lines:
                print(line, flush=True)
    finally:
        qb.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)
    instant = [r for r in table.rows if r["variant"].endswith("map: to running") and "wall" in r]
    if instant:
        extra.append("instant restore (restore-mode map) to running, by size: " +
                     ", ".join(f"{r['size']} GiB {r['wall']:.0f} ms" for r in instant))
        print(extra[-1])
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    table.markdown()
    if extra:
        print()
        for line in extra:
            print(f"- {line}")
    return 1 if table.failed else 0


if __name__ == "__main__":
    sys.exit(main())
