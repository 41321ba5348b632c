#!/usr/bin/python3
"""ferry against QEMU, side by side: the same RAM (a file in /dev/shm, mapped privately by the source as QEMU's
memory-backend-file,share=off), migrated by QEMU and by ferry-workload, alternately, over the same transports to
the same kinds of destination, with the same settings, in one run; printed next to this machine's limits measured
in the same run.

For each --size (GiB) and case it writes one file: "random" (every page random and different from every other),
"zero" (all zero) or "half" (every other page random, the rest zero), zero pages written as zero bytes (resident,
so that a reader must look at them; --zero-pages holes leaves them holes); and "untouched", with no file: both
sources get plain -m SIZE anonymous RAM that was never touched, a VM's zero RAM (QEMU reads every page of it, ferry
asks the kernel which pages were ever populated). Then for each transport (a UNIX socket; TCP over 127.0.0.1), destination kind ("default": plain
anonymous RAM of the same size, faulted in as the data arrives; "prealloc": -mem-prealloc, faulted in before) and
channel count (1 without multifd; N with --multifd N, capability multifd on at both ends and multifd-channels N),
it migrates --repeat times each way, QEMU and ferry alternately (the order flips every round), and prints the
median of each, plus every run's total time.

  QEMU    qemu-system-x86_64 -machine pc,accel=kvm|tcg -nodefaults -display none -m SIZE, paused (-S, so no guest
          is needed): the source's RAM is -object memory-backend-file,id=pc.ram,size=SIZE,mem-path=FILE,share=off
          -machine memory-backend=pc.ram (the id pc.ram is the one plain -m gives its RAM, which the destination's
          RAM block must match by name), the destination plain -m SIZE with -incoming defer (plus -mem-prealloc).
  ferry   ferry-workload with the same -object/-machine spelling and -S as the source, -m SIZE -incoming URI as
          the destination (plus -mem-prealloc).

Settings: each program's defaults (downtime-limit 300 ms in both) with max-bandwidth 100 GiB/s (QEMU 7.2 has no
"0 = unlimited" for max-bandwidth; 100 GiB/s is far beyond this machine). The figures are each program's own
query-migrate: total-time (ms), downtime (ms); throughput is the RAM size divided by the total time (GiB/s), so
zero pages, which neither program sends as data, count as moved. The two clocks differ: QEMU's source stops
at its last byte sent, ferry's at the destination's ACK (after the destination has checked and loaded it all), so
the table also has "e2e", from the migrate command to the destination reporting "completed", alike for both (see
timed_migrate). The limits: single-thread memcpy (crc32c-bench's
cold "memcpy" line, 64 MiB buffers) and the UNIX-socket and TCP-loopback throughput between two processes
(sockpeak: 1 MiB writes from a 1 GiB buffer into another).

Each migration is checked: ferry by equal query-ram-digest at both ends; QEMU by its destination's status
"completed" and (--verify-qemu, by default the first run of each row) by pmemsave of the destination's RAM into
/dev/shm compared with the file, except the legacy window 640 KiB-1 MiB, where guest-physical reads return the
BIOS and VGA areas rather than RAM.

It is a measurement, not a test: it asserts no speed. It needs root to install QEMU (Debian's qemu-system-x86,
with apt-get, if qemu-system-x86_64 is missing) and RAM for the file, the destination and the check: a size that
does not fit in MemAvailable is skipped, or run without the QEMU check, and the output says so. Processes and
/dev/shm files are removed on every exit path. Run it through bench/qemu-bench.sh, which builds the release tree.
"""

import argparse
import atexit
import datetime
import fcntl
import os
import platform
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

import ferrytest  # noqa: E402  (path set up above)

GIB = 1 << 30
PAGE = os.sysconf("SC_PAGE_SIZE")
HIGH_BANDWIDTH = 100 << 30
QEMU = "qemu-system-x86_64"
# Bytes of the guest-physical window that pmemsave does not read from RAM on a pc machine (VGA, option ROMs, BIOS).
LEGACY_WINDOW = (0xA0000, 0x100000)
MIGRATION_TIMEOUT = 600
KVM_GET_API_VERSION = 0xAE00

# Everything this run created, removed by cleanup() on any exit (normal, exception, SIGINT/SIGTERM).
_procs = []
_files = []


def cleanup():
    for p in list(_procs):
        try:
            if p.poll() is None:
                p.kill()
            p.wait(10)
        except Exception:
            pass
        _procs.remove(p)
    for f in list(_files):
        try:
            os.unlink(f)
        except FileNotFoundError:
            pass
        _files.remove(f)


def _on_signal(signum, frame):
    # Unwind through the finally blocks (and then atexit) instead of dying with processes and files left behind.
    raise SystemExit(128 + signum)


# ---- set-up ---------------------------------------------------------------------------------------------------

def ensure_qemu():
    """The path of qemu-system-x86_64, installed with apt-get (Debian's qemu-system-x86) if it is missing."""
    path = shutil.which(QEMU)
    if path:
        return path
    if os.geteuid() != 0:
        sys.exit(f"qemu-bench: {QEMU} is missing and installing it needs root (apt-get install qemu-system-x86)")
    print(f"{QEMU} not found: installing Debian's qemu-system-x86 (apt-get update; apt-get install)", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "qemu-system-x86"], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    path = shutil.which(QEMU)
    if not path:
        sys.exit(f"qemu-bench: {QEMU} still missing after installing qemu-system-x86")
    return path


def kvm_works():
    """Whether /dev/kvm opens and answers KVM_GET_API_VERSION with the stable API (12)."""
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return fcntl.ioctl(fd, KVM_GET_API_VERSION) == 12
    except OSError:
        return False
    finally:
        os.close(fd)


def mem_available():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def machine_description():
    cpu = "unknown CPU"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        total = int(f.readline().split()[1]) * 1024
    return f"{os.cpu_count()} x {cpu}, {total / GIB:.0f} GiB RAM, Linux {platform.release()}"


def qemu_version(qemu):
    out = subprocess.run([qemu, "--version"], capture_output=True, text=True, check=True).stdout
    return out.splitlines()[0]


# ---- the machine's limits ---------------------------------------------------------------------------------------

def memcpy_gibps(build):
    out = subprocess.run([os.path.join(build, "bench", "crc32c-bench"), "3"], check=True, capture_output=True,
                         text=True, timeout=300).stdout
    for line in out.splitlines():
        if line.split()[0] == "memcpy":
            return float(line.split()[2]) * 1e9 / GIB
    raise RuntimeError(f"crc32c-bench printed no memcpy line: {out!r}")


def socket_peak_gibps(build, transport):
    out = subprocess.run([os.path.join(build, "bench", "sockpeak"), "2", transport], check=True,
                         capture_output=True, text=True, timeout=300).stdout
    return float(out.split()[-1]) * (1 << 20) / GIB


# ---- the RAM file -----------------------------------------------------------------------------------------------

def write_ram_file(path, size, case, zero_pages="holes"):
    """@size bytes of @case content at @path. Random pages come from a 64 MiB pool of os.urandom bytes (fast: the
    kernel's generator alone makes 0.5 GB/s here), each stamped in its first 16 bytes with its page index and a
    per-file salt, so that no two pages are equal and neither deduplication nor compression could cheat. Zero
    pages are holes of the file (@zero_pages "holes": never written, as a VM's untouched RAM, which the kernel
    knows reads as zero) or zero bytes written into it ("written": resident, so that a reader must look)."""
    chunk_size = 16 << 20
    pool = os.urandom(64 << 20)
    salt = int.from_bytes(os.urandom(8), "little")
    zeros = bytes(chunk_size)
    pages_per_chunk = chunk_size // PAGE
    _files.append(path)
    with open(path, "wb") as f:
        f.truncate(size)
        for c in range(size // chunk_size):
            f.seek(c * chunk_size)
            if case == "zero":
                if zero_pages == "written":
                    f.write(zeros)
                continue
            start = (c * chunk_size) % len(pool)
            buf = bytearray(pool[start:start + chunk_size])
            first = c * pages_per_chunk
            for i in range(pages_per_chunk):
                off = i * PAGE
                if case == "half" and (first + i) % 2:
                    buf[off:off + PAGE] = bytes(PAGE)
                else:
                    struct.pack_into("<QQ", buf, off, first + i, salt)
            if case == "half" and zero_pages == "holes":
                # Only the random pages are written; the zero ones stay holes.
                for i in range(0, pages_per_chunk, 2):
                    f.seek(c * chunk_size + i * PAGE)
                    f.write(buf[i * PAGE:(i + 1) * PAGE])
            else:
                f.write(buf)


# ---- processes ----------------------------------------------------------------------------------------------------

class Qemu:
    """A qemu-system-x86_64 process with its QMP socket (ferrytest's QMP client: QEMU speaks the same protocol)."""

    def __init__(self, qemu, tmp, name, args):
        self.name = name
        self.qmp_path = os.path.join(tmp, f"{name}.qmp")
        self.log_path = os.path.join(tmp, f"{name}.log")
        argv = [qemu, *args, "-qmp", f"unix:{self.qmp_path},server=on,wait=off"]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         start_new_session=True)
        _procs.append(self.proc)
        self.qmp = None
        # The QMP greeting comes from the main loop, i.e. after machine init, -mem-prealloc included.
        deadline = time.monotonic() + 120
        while self.qmp is None:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {self.proc.returncode}: {self.log()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name}: no QMP socket after 120 s")
            try:
                self.qmp = ferrytest.QMP(self.qmp_path, timeout=120)
            except (FileNotFoundError, ConnectionRefusedError):
                time.sleep(0.05)

    def log(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()[-2000:]

    def cmd(self, name, args=None, **kwargs):
        return self.qmp.cmd(name, args, **kwargs)

    def stop(self):
        if self.proc.poll() is None:
            try:
                self.qmp.cmd("quit", timeout=10)
            except Exception:
                pass
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc.wait(10)
        if self.qmp:
            self.qmp.close()
        if self.proc in _procs:
            _procs.remove(self.proc)


class Ferry:
    """ferrytest.Workload, registered for cleanup."""

    def __init__(self, tmp, name, args):
        self.w = ferrytest.Workload(tmp, name, args)
        _procs.append(self.w.proc)

    def cmd(self, name, args=None, **kwargs):
        return self.w.cmd(name, args, **kwargs)

    def stop(self):
        self.w.stop_process()
        if self.w.proc in _procs:
            _procs.remove(self.w.proc)


def wait_migration(query, timeout=MIGRATION_TIMEOUT):
    """Poll @query (a query-migrate) until the migration ends. Both programs time it themselves (total-time),
    so the polling interval does not enter the figures."""
    deadline = time.monotonic() + timeout
    while True:
        info = query()
        if info.get("status") in ("completed", "failed", "cancelled"):
            return info
        if time.monotonic() > deadline:
            raise TimeoutError(f"migration not finished after {timeout} s: {info}")
        time.sleep(0.02)


def timed_migrate(src, dst, uri):
    """Start the migration and return (the source's final query-migrate, end-to-end ms). The programs' total-time
    is not measured alike: QEMU's source stops its clock when it has sent everything, while the destination may
    still be loading; ferry's source stops it at the destination's ACK, after everything was checked and loaded.
    So this also measures, for both, the wall time from the migrate command until the destination reports
    "completed" (polled every 10 ms, so up to 10 ms late)."""
    t0 = time.monotonic()
    src.cmd("migrate", uri=uri)
    deadline = t0 + MIGRATION_TIMEOUT
    while True:
        status = dst.cmd("query-migrate").get("status")
        if status in ("completed", "failed", "cancelled"):
            break
        if src.cmd("query-migrate").get("status") in ("failed", "cancelled") or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    e2e = (time.monotonic() - t0) * 1000.0
    info = wait_migration(lambda: src.cmd("query-migrate"))
    if status != "completed":
        raise RuntimeError(f"migration {info['status']} (destination {status}): {info.get('error-desc')}")
    return info, e2e


def set_multifd(end, channels):
    if channels > 1:
        end.cmd("migrate-set-capabilities", capabilities=[{"capability": "multifd", "state": True}])
        end.cmd("migrate-set-parameters", **{"multifd-channels": channels})


def make_uri(transport, tmp):
    if transport == "unix":
        return f"unix:{os.path.join(tmp, 'mig.sock')}"
    return f"tcp:127.0.0.1:{ferrytest.free_port()}"


def remove_socket(uri):
    if uri.startswith("unix:"):
        try:
            os.unlink(uri[len("unix:"):])
        except FileNotFoundError:
            pass


def run_qemu(opts, tmp, size, path, transport, dst_kind, channels, verify):
    """One QEMU migration; returns (query-migrate of the source, verification text)."""
    mem = f"{size}G"
    common = ["-machine", f"pc,accel={opts.accel}", "-nodefaults", "-display", "none", "-m", mem]
    if opts.accel == "kvm":
        common += ["-cpu", "host"]
    uri = make_uri(transport, tmp)
    dst = src = None
    try:
        dst = Qemu(opts.qemu, tmp, "qemu-dst",
                   common + ["-incoming", "defer"] + (["-mem-prealloc"] if dst_kind == "prealloc" else []))
        set_multifd(dst, channels)
        dst.cmd("migrate-incoming", uri=uri)
        ferrytest.wait_listening(uri)
        ram = ["-object", f"memory-backend-file,id=pc.ram,size={mem},mem-path={path},share=off",
               "-machine", "memory-backend=pc.ram"] if path else []  # untouched: plain -m
        src = Qemu(opts.qemu, tmp, "qemu-src", common + ["-S"] + ram)
        set_multifd(src, channels)
        src.cmd("migrate-set-parameters", **{"max-bandwidth": HIGH_BANDWIDTH})
        info, info["e2e"] = timed_migrate(src, dst, uri)
        verified = "completed"
        if verify and path:
            verified = compare_qemu_ram(dst, path, size, tmp)
        return info, verified
    finally:
        for p in (src, dst):
            if p:
                p.stop()
        remove_socket(uri)


def compare_qemu_ram(dst, path, size, tmp):
    """pmemsave the destination's RAM to /dev/shm and compare it with the file, page by page."""
    dump = f"/dev/shm/ferry-qbench-{os.getpid()}-dump"
    _files.append(dump)
    try:
        dst.cmd("pmemsave", val=0, size=size * GIB, filename=dump, timeout=300)
        bad = 0
        chunk = 16 << 20
        with open(path, "rb") as a, open(dump, "rb") as b:
            off = 0
            while off < size * GIB:
                x, y = a.read(chunk), b.read(chunk)
                if x != y:
                    for p in range(0, len(x), PAGE):
                        at = off + p
                        if LEGACY_WINDOW[0] <= at < LEGACY_WINDOW[1]:
                            continue
                        if x[p:p + PAGE] != y[p:p + PAGE]:
                            bad += 1
                off += chunk
        return "ok (pmemsave)" if bad == 0 else f"FAILED ({bad} pages differ)"
    finally:
        os.unlink(dump)
        _files.remove(dump)


def run_ferry(opts, tmp, size, path, transport, dst_kind, channels):
    """One ferry migration; returns (query-migrate of the source, verification text)."""
    mem = f"{size}G"
    uri = make_uri(transport, tmp)
    dst = src = None
    try:
        dst = Ferry(tmp, "ferry-dst",
                    ["-m", mem, "-incoming", uri] + ([] if path else ["-pattern", "zero"]) +
                    (["-mem-prealloc"] if dst_kind == "prealloc" else []))
        try:
            set_multifd(dst, channels)
        except ferrytest.QMPError as e:
            return None, f"n/a (multifd: {e.desc})"
        ferrytest.wait_listening(uri)
        ram = (["-object", f"memory-backend-file,id=ram0,size={mem},mem-path={path},share=off",
                "-machine", "memory-backend=ram0"] if path else ["-m", mem, "-pattern", "zero"])  # untouched
        src = Ferry(tmp, "ferry-src", ram + ["-S"])
        set_multifd(src, channels)
        src.cmd("migrate-set-parameters", **{"max-bandwidth": HIGH_BANDWIDTH})
        info, info["e2e"] = timed_migrate(src, dst, uri)
        same = src.cmd("query-ram-digest") == dst.cmd("query-ram-digest")
        return info, "ok (digest)" if same else "FAILED (digests differ)"
    except Exception as e:
        # Say what the processes said: an engine's error message is worth more than a reset QMP connection.
        said = "; ".join(f"{p.w.name}: {p.w.stderr().strip()[-300:]}" for p in (src, dst) if p and p.w.stderr().strip())
        raise RuntimeError(f"{e}{' (' + said + ')' if said else ''}") from e
    finally:
        for p in (src, dst):
            if p:
                p.stop()
        remove_socket(uri)


# ---- the table ----------------------------------------------------------------------------------------------------

def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def summarize(runs):
    """Median run (by total time) of a list of (info, verified)."""
    infos = sorted((i for i, _ in runs), key=lambda i: i["total-time"])
    return infos[len(infos) // 2]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default=os.path.join(ROOT, "build-release"), help="build directory (release)")
    ap.add_argument("--size", default="2", help="comma-separated RAM sizes in GiB (default 2), e.g. 2,8")
    ap.add_argument("--cases", default="random,zero,half,untouched",
                    help="comma-separated: random, zero, half (file contents), untouched (no file: never-touched "
                         "anonymous RAM)")
    ap.add_argument("--zero-pages", choices=("holes", "written"), default="written",
                    help="zero pages of the file: written zero bytes (resident, the default) or holes (note that "
                         "QEMU's source, reading them, fills a tmpfs file's holes for the runs after it)")
    ap.add_argument("--transports", default="unix,tcp", help="comma-separated: unix, tcp (127.0.0.1)")
    ap.add_argument("--dst", default="default,prealloc", help="comma-separated destination kinds: default, prealloc")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each engine per row (default 3; median shown)")
    ap.add_argument("--multifd", type=int, default=0,
                    help="also rows with capability multifd and this many multifd-channels (default 0: none)")
    ap.add_argument("--verify-qemu", choices=("first", "all", "none"), default="first",
                    help="compare QEMU's destination RAM with the file (pmemsave): first run of each row, all, none")
    ap.add_argument("--settle", type=float, default=3.0,
                    help="seconds to wait before each migration (default 3): on a guest with free page reporting, "
                         "memory freed by the run before is handed back to the hypervisor after about 2 s, and a "
                         "destination then starts on memory as a fresh one would (docs/memory.md)")
    ap.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="auto",
                    help="QEMU accelerator (default: kvm if /dev/kvm works, else tcg)")
    opts = ap.parse_args()

    atexit.register(cleanup)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)

    os.environ["FERRY_BUILD"] = os.path.abspath(opts.build)
    if not os.access(ferrytest.workload_binary(), os.X_OK):
        sys.exit(f"qemu-bench: {ferrytest.workload_binary()} not found: run bench/qemu-bench.sh")
    opts.qemu = ensure_qemu()
    if opts.accel == "auto":
        opts.accel = "kvm" if kvm_works() else "tcg"
    sizes = [int(s) for s in opts.size.split(",") if s]
    cases = [c for c in opts.cases.split(",") if c]
    transports = [t for t in opts.transports.split(",") if t]
    dst_kinds = [d for d in opts.dst.split(",") if d]
    channel_counts = [1] + ([opts.multifd] if opts.multifd > 1 else [])
    for c in cases:
        if c not in ("random", "zero", "half", "untouched"):
            sys.exit(f"qemu-bench: unknown case {c!r} (random, zero, half, untouched)")

    print(f"date {datetime.datetime.now().isoformat(timespec='seconds')}; machine: {machine_description()}")
    print(f"{qemu_version(opts.qemu)}, accel={opts.accel}; ferry from {opts.build}")
    # Two cores are easily shared with other work: the load says how quiet the machine was.
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    limits = {"memcpy": memcpy_gibps(opts.build), "unix": socket_peak_gibps(opts.build, "unix"),
              "tcp": socket_peak_gibps(opts.build, "tcp")}
    print(f"limits measured now: single-thread memcpy {limits['memcpy']:.2f} GiB/s; between two processes, 1 MiB "
          f"writes: UNIX socket {limits['unix']:.2f} GiB/s, TCP loopback {limits['tcp']:.2f} GiB/s")
    print(f"settings: max-bandwidth {HIGH_BANDWIDTH >> 30} GiB/s, default downtime-limit (300 ms); paused sources; "
          f"{opts.settle:g} s idle before each migration; "
          f"GiB/s = RAM size / total time; 'of peak' = that against the transport's peak above; {opts.repeat} runs "
          f"per engine and row, median shown, QEMU and ferry alternating")
    print("e2e = migrate command to destination 'completed' (ms); e2e GiB/s = RAM size / e2e; ferry/QEMU = ratio "
          "of throughputs (total-time based, then e2e based)")
    header = (f"{'case':<7}{'size':>5} {'transport':<9} {'dest':<9}{'ch':>3}  {'engine':<6}{'total ms':>9}"
              f"{'GiB/s':>7}{'of peak':>8}{'downtime':>9}{'setup':>6}{'e2e ms':>8}{'e2e GiB/s':>10}  "
              f"{'runs (total ms)':<18} {'ferry/QEMU':>12}  verified")
    print(header)
    print("-" * len(header))

    rows = []
    failed = False
    tmp = tempfile.mkdtemp(prefix="ferry-qbench-", dir="/tmp")
    try:
        for size in sizes:
            need = 2 * size * GIB + GIB  # the file and a destination, plus room for the processes themselves
            avail = mem_available()
            if need > avail:
                print(f"{size} GiB: skipped: the file and a destination need {need / GIB:.0f} GiB, "
                      f"MemAvailable is {avail / GIB:.1f} GiB")
                continue
            verify_mode = opts.verify_qemu
            if verify_mode != "none" and need + size * GIB > avail:
                print(f"{size} GiB: QEMU's destination RAM is not compared with the file (the dump would need "
                      f"{size} GiB more than MemAvailable {avail / GIB:.1f} GiB allows); status only")
                verify_mode = "none"
            for case in cases:
                path = None
                if case != "untouched":
                    path = f"/dev/shm/ferry-qbench-{os.getpid()}-{case}-{size}G.img"
                    t0 = time.monotonic()
                    write_ram_file(path, size * GIB, case, opts.zero_pages)
                    print(f"# {case} {size} GiB file written in {time.monotonic() - t0:.1f} s", flush=True)
                try:
                    for transport in transports:
                        for dst_kind in dst_kinds:
                            for ch in channel_counts:
                                row = run_row(opts, tmp, size, path, case, transport, dst_kind, ch, verify_mode,
                                              limits)
                                failed |= row["failed"]
                                rows.append(row)
                finally:
                    if path:
                        os.unlink(path)
                        _files.remove(path)
    finally:
        cleanup()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print_markdown(rows, limits)
    return 1 if failed else 0


def run_row(opts, tmp, size, path, case, transport, dst_kind, ch, verify_mode, limits):
    runs = {"qemu": [], "ferry": []}
    notes = {"qemu": [], "ferry": []}
    skipped = {}
    for r in range(opts.repeat):
        order = ("qemu", "ferry") if r % 2 == 0 else ("ferry", "qemu")
        for engine in order:
            if engine in skipped:
                continue
            time.sleep(opts.settle)
            try:
                if engine == "qemu":
                    verify = verify_mode == "all" or (verify_mode == "first" and r == 0)
                    info, verified = run_qemu(opts, tmp, size, path, transport, dst_kind, ch, verify)
                else:
                    info, verified = run_ferry(opts, tmp, size, path, transport, dst_kind, ch)
            except Exception as e:  # report and go on with the other rows
                skipped[engine] = f"error: {e}"
                continue
            if info is None:
                skipped[engine] = verified
                continue
            runs[engine].append(info)
            notes[engine].append(verified)
    row = {"case": case, "size": size, "transport": transport, "dst": dst_kind, "ch": ch, "failed": False}
    size_b = size * GIB
    for engine in ("qemu", "ferry"):
        prefix = (f"{case:<7}{str(size) + 'G':>5} {transport:<9} {dst_kind:<9}{ch:>3}  {engine:<6}")
        if engine in skipped and not runs[engine]:
            print(f"{prefix}{skipped[engine]}", flush=True)
            row[engine] = None
            row["failed"] |= skipped[engine].startswith("error")
            continue
        med = summarize([(i, None) for i in runs[engine]])
        gibps = size_b / GIB / (med["total-time"] / 1000.0)
        e2e = median([i["e2e"] for i in runs[engine]])
        row[engine] = {"total": med["total-time"], "gibps": gibps, "downtime": med.get("downtime", 0),
                       "setup": med.get("setup-time", 0), "runs": [i["total-time"] for i in runs[engine]],
                       "e2e": e2e, "e2e_gibps": size_b / GIB / (e2e / 1000.0),
                       "verified": sorted(set(notes[engine]))}
        ratio = ""
        if engine == "ferry" and row.get("qemu"):
            ratio = (f"{gibps / row['qemu']['gibps']:.2f}x "
                     f"{row[engine]['e2e_gibps'] / row['qemu']['e2e_gibps']:.2f}x")
        bad = [n for n in notes[engine] if n.startswith("FAILED")]
        row["failed"] |= bool(bad) or engine in skipped
        verified = ", ".join(row[engine]["verified"]) + (f"; {skipped[engine]}" if engine in skipped else "")
        runs_txt = "/".join(str(t) for t in row[engine]["runs"])
        print(f"{prefix}{med['total-time']:>9}{gibps:>7.2f}{gibps / limits[transport]:>8.0%}"
              f"{med.get('downtime', 0):>9}{med.get('setup-time', 0):>6}{e2e:>8.0f}{row[engine]['e2e_gibps']:>10.2f}  "
              f"{runs_txt:<18} {ratio:>12}  {verified}", flush=True)
    return row


def print_markdown(rows, limits):
    """The same table as markdown, for docs/benchmarks.md."""
    if not rows:
        return
    print()
    print("| case | size | transport | destination | channels | QEMU total ms | QEMU GiB/s | QEMU downtime ms | "
          "QEMU e2e ms | ferry total ms | ferry GiB/s | ferry downtime ms | ferry e2e ms | ferry/QEMU | "
          "ferry/QEMU e2e |")
    print("| --- " * 15 + "|")
    for r in rows:
        cells = [r["case"], f"{r['size']} GiB", "UNIX" if r["transport"] == "unix" else "TCP 127.0.0.1", r["dst"],
                 str(r["ch"])]
        for engine in ("qemu", "ferry"):
            e = r[engine]
            cells += ([str(e["total"]), f"{e['gibps']:.2f}", str(e["downtime"]), f"{e['e2e']:.0f}"] if e
                      else ["n/a"] * 4)
        both = r["ferry"] and r["qemu"]
        cells.append(f"{r['ferry']['gibps'] / r['qemu']['gibps']:.2f}" if both else "n/a")
        cells.append(f"{r['ferry']['e2e_gibps'] / r['qemu']['e2e_gibps']:.2f}" if both else "n/a")
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    sys.exit(main())
