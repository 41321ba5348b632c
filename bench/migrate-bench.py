#!/usr/bin/python3
"""Migration benchmark: migrate an N GiB ferry-workload over a UNIX socket for the patterns random (paused, -S),
zero (paused) and ab (running), with max-bandwidth set high and the default downtime-limit, and print per case the
throughput (guest RAM size / total time), total time, downtime, setup time, bytes sent, passes (dirty syncs) and
the ratio of the throughput to the machine's UNIX-socket peak measured by bench/sockpeak in the same run. Each
result is verified (equal RAM digests for paused cases, the A-B invariant for the running one).

The "local" case migrates --local-size GiB (default 4) of random RAM between two processes on this host three
ways, side by side: over the plain UNIX socket, with unix-page-flipping (page data through a pipe, spliced from
RAM), and backed by a shared memfd in mode cpr-transfer (the memfd is passed, nothing copied); it prints each
way's throughput, total time, downtime and bytes, next to the single-thread memcpy speed (bench/crc32c-bench) and
the UNIX-socket peak measured in the same run.

The "crc" case measures what the per-record CRC32C costs: the random case with the record-checksum stream feature
on and off (switched off on the source, so the stream carries no trailers and nobody computes them), after one
uncounted warm-up run, in rotating order, --crc-repeat times each, and prints every run, the medians and the best
runs, and the cost in percent of throughput; with checksums on it runs the default CRC32C path and those of
--crc-paths (the crc32 instruction by default), capped with the FERRY_CRC32C environment variable. Its destination preallocates its RAM (-mem-prealloc, as
QEMU's): first-touch page faults on these machines cost more than everything else and vary by a factor of three
between runs (docs/design.md), which would hide a cost of a few percent; without them the CPU work is all that
is left, so the checksum's share is at its largest. --no-crc-prealloc measures with faults instead.

The "tls" case measures what TLS costs: the random case (paused, --size GiB) over a UNIX socket plaintext and
with TLS (tls-creds-x509 on both ends, certificates made with certtool in a temporary directory, the
destination verifying the source's certificate), after one uncounted warm-up run, in alternating order,
--tls-repeat times each, to a destination with -mem-prealloc (as the crc case, so that page faults do not hide
the cost); it prints every run, both medians and the ratio of TLS to plaintext throughput, with the session's
protocol and cipher.

This is a measurement, not a test: it asserts no speed. Run it through bench/run.sh, which builds a release tree.
It reuses the QMP client and process wrapper of the integration tests (tests/integration/ferrytest.py).
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

import ferrytest  # noqa: E402  (path set up above)

HIGH_BANDWIDTH = 100 << 30  # 100 GiB/s: effectively unlimited, as the issue asks for benchmarks


def socket_peak(build):
    out = subprocess.run([os.path.join(build, "bench", "sockpeak"), "2"], check=True, capture_output=True,
                         text=True, timeout=300).stdout
    for line in out.splitlines():
        if line.startswith("unix-socket-peak-mibps"):
            return float(line.split()[1])
    raise RuntimeError(f"sockpeak printed no result: {out!r}")


def run_case(tmp, case, size_gib, smp, ab_dirty_rate, caps=None, params=None, dst_prealloc=False, env=None,
             src_extra=(), dst_extra=()):
    mem = f"{size_gib}G"
    if case in ("random", "plain", "flip"):
        args = ["-m", mem, "-smp", str(smp), "-pattern", "random", "-seed", "1", "-S"]
    elif case == "shared":
        args = ["-object", f"memory-backend-memfd,id=ram0,size={mem},share=on", "-machine", "memory-backend=ram0",
                "-smp", str(smp), "-pattern", "random", "-seed", "1", "-S"]
    elif case == "zero":
        args = ["-m", mem, "-smp", str(smp), "-pattern", "zero", "-S"]
    elif case == "ab":
        args = ["-m", mem, "-smp", str(smp), "-pattern", "ab", "-dirty-rate", str(ab_dirty_rate)]
    else:
        raise ValueError(case)
    uri = f"unix:{os.path.join(tmp, case + '.sock')}"
    procs = []
    try:
        dst = ferrytest.Workload(tmp, f"{case}-dst", args + list(dst_extra) + ["-incoming", uri] +
                                 (["-mem-prealloc"] if dst_prealloc else []), env=env)
        procs.append(dst)
        src = ferrytest.Workload(tmp, f"{case}-src", args + list(src_extra), env=env)
        procs.append(src)
        ferrytest.wait_listening(uri)
        if case == "ab":
            # Pages never written cost nothing to migrate: let every worker write its whole share once, so that
            # the full RAM size is migrated.
            ferrytest.wait_until(lambda: src.workload_info()["passes"] >= smp,
                                 60 + size_gib * 2 * 1024 / max(ab_dirty_rate, 1), "every page written once",
                                 interval=0.2)
        src.set_params(**{"max-bandwidth": HIGH_BANDWIDTH}, **(params or {}))
        if caps:
            # Capabilities are set on both ends: a stream feature is used only if both have it on.
            for w in (src, dst):
                w.cmd("migrate-set-capabilities",
                      capabilities=[{"capability": k, "state": v} for k, v in caps.items()])
        src.migrate(uri)
        info = src.wait_migration(timeout=600)
        if info["status"] != "completed":
            raise RuntimeError(f"{case}: migration {info['status']}: {info.get('error-desc')}")
        if case == "ab":
            dst.wait_status(("running",))
            check = dst.pattern_check()
            verified = "ok" if check["ok"] else f"FAILED ({check['detail']})"
        else:
            verified = "ok" if src.digest() == dst.digest() else "FAILED (digests differ)"
        return info, verified
    finally:
        for p in procs:
            p.stop_process()


def crc_case(tmp, opts):
    """Random RAM with and without record-checksum; returns True if a run failed.

    Receiving RAM is dominated by page faults whose cost depends on what the machine did just before (on a virtual
    machine, memory the host has reclaimed faults twice), so the first run is a warm-up that is not counted, and
    the order of the ways rotates from round to round so that none always runs first. Noise of this kind only
    ever slows a run down, so the cost is given from the best run of each way as well as from the medians. The
    ways: record-checksum off, and on with each CRC32C path this CPU has (FERRY_CRC32C caps the path of both
    processes; "best" is what ferry uses by default)."""
    ways = [("off", False, None), ("best", True, None)] + [(p, True, p) for p in opts.crc_paths.split(",") if p]
    rates = {w[0]: [] for w in ways}
    schedule = [ways[1]]
    for i in range(opts.crc_repeat):
        schedule += ways[i % len(ways):] + ways[:i % len(ways)]
    env_base = dict(os.environ)
    for n, (name, on, path) in enumerate(schedule):
        env = dict(env_base)
        env.pop("FERRY_CRC32C", None)
        if path:
            env["FERRY_CRC32C"] = path
        try:
            info, verified = run_case(tmp, "random", opts.size, opts.smp, opts.ab_dirty_rate,
                                      caps={"record-checksum": on}, dst_prealloc=opts.crc_prealloc, env=env)
        except Exception as e:
            print(f"crc      error: {e}")
            return True
        if verified != "ok" or info["stream-features"].count("record-checksum") != on:
            print(f"crc      FAILED: verified {verified}, features {info['stream-features']}")
            return True
        rate = info["ram"]["total"] / (1 << 20) / (info["total-time"] / 1000.0)
        print(f"crc      {'warm-up' if n == 0 else 'run'}: record-checksum {name:5} {rate:6.0f} MiB/s, "
              f"total {info['total-time']} ms, {info['ram']['total']} bytes", flush=True)
        if n > 0:
            rates[name].append(rate)
    med = {w: sorted(r)[len(r) // 2] for w, r in rates.items()}
    best = {w: max(r) for w, r in rates.items()}
    for name, _, _ in ways[1:]:
        print(f"crc      record-checksum {name:5} against off, medians of {opts.crc_repeat}: {med[name]:.0f} / "
              f"{med['off']:.0f} MiB/s, cost {100 * (1 - med[name] / med['off']):.1f}%; best runs: "
              f"{best[name]:.0f} / {best['off']:.0f} MiB/s, cost {100 * (1 - best[name] / best['off']):.1f}% "
              f"of throughput")
    return False


def make_tls_dirs(tmp):
    """A CA, a server certificate for localhost and a client certificate, as tls-creds-x509 reads them; returns the
    server's and the client's directory."""
    def certtool(*args):
        subprocess.run(["certtool", *args], check=True, capture_output=True, timeout=60)

    root = os.path.join(tmp, "pki")
    dirs = {who: os.path.join(root, who) for who in ("ca", "server", "client")}
    for d in dirs.values():
        os.makedirs(d, exist_ok=True)
    templates = {
        "ca": "cn = ferry bench CA\nca\ncert_signing_key\nexpiration_days = 2\n",
        "server": "cn = localhost\ndns_name = localhost\ntls_www_server\nencryption_key\nsigning_key\n"
                  "expiration_days = 2\n",
        "client": "cn = ferry bench client\ntls_www_client\nencryption_key\nsigning_key\nexpiration_days = 2\n",
    }
    for who, text in templates.items():
        with open(os.path.join(root, who + ".info"), "w") as f:
            f.write(text)
    ca = dirs["ca"]
    certtool("--generate-privkey", "--key-type=ecdsa", "--outfile", f"{ca}/ca-key.pem")
    certtool("--generate-self-signed", "--load-privkey", f"{ca}/ca-key.pem", "--template", f"{root}/ca.info",
             "--outfile", f"{ca}/ca-cert.pem")
    for who in ("server", "client"):
        d = dirs[who]
        certtool("--generate-privkey", "--key-type=ecdsa", "--outfile", f"{d}/{who}-key.pem")
        certtool("--generate-certificate", "--load-privkey", f"{d}/{who}-key.pem", "--load-ca-certificate",
                 f"{ca}/ca-cert.pem", "--load-ca-privkey", f"{ca}/ca-key.pem", "--template", f"{root}/{who}.info",
                 "--outfile", f"{d}/{who}-cert.pem")
        shutil.copy(f"{ca}/ca-cert.pem", f"{d}/ca-cert.pem")
    return dirs["server"], dirs["client"]


def tls_case(tmp, opts, peak):
    """Random RAM over a UNIX socket, plaintext and TLS, alternating; returns True if a run failed."""
    if shutil.which("certtool") is None:
        print("tls      error: certtool (Debian package gnutls-bin) is needed to make the certificates")
        return True
    server, client = make_tls_dirs(tmp)
    ways = {
        "plain": {},
        "tls": {"src_extra": ["-object", f"tls-creds-x509,id=tls0,dir={client}"],
                "dst_extra": ["-object", f"tls-creds-x509,id=tls0,dir={server},endpoint=server",
                              "-incoming", "config:tls-creds=tls0"],
                "params": {"tls-creds": "tls0", "tls-hostname": "localhost"}},
    }
    rates = {w: [] for w in ways}
    schedule = ["plain"] + [w for i in range(opts.tls_repeat) for w in (("plain", "tls") if i % 2 else
                                                                         ("tls", "plain"))]
    print(f"tls      {opts.size} GiB of random RAM over a UNIX socket, destination with -mem-prealloc; UNIX socket "
          f"peak {peak:.0f} MiB/s")
    session = None
    for n, way in enumerate(schedule):
        try:
            info, verified = run_case(tmp, "random", opts.size, opts.smp, opts.ab_dirty_rate, dst_prealloc=True,
                                      **ways[way])
        except Exception as e:
            print(f"tls      error: {e}")
            return True
        if verified != "ok" or (way == "tls") != ("tls" in info):
            print(f"tls      FAILED: {way}: verified {verified}, tls {info.get('tls')}")
            return True
        session = info.get("tls", session)
        rate = info["ram"]["total"] / (1 << 20) / (info["total-time"] / 1000.0)
        print(f"tls      {'warm-up' if n == 0 else 'run'}: {way:5} {rate:6.0f} MiB/s, total {info['total-time']} ms, "
              f"downtime {info.get('downtime', 0)} ms", flush=True)
        if n > 0:
            rates[way].append(rate)
    med = {w: sorted(r)[len(r) // 2] for w, r in rates.items()}
    best = {w: max(r) for w, r in rates.items()}
    print(f"tls      session: {session['protocol']} {session['cipher']}")
    print(f"tls      medians of {opts.tls_repeat}: plaintext {med['plain']:.0f} MiB/s, TLS {med['tls']:.0f} MiB/s, "
          f"TLS/plaintext {med['tls'] / med['plain']:.2f}; best runs: {best['plain']:.0f} / {best['tls']:.0f} MiB/s, "
          f"{best['tls'] / best['plain']:.2f}")
    return False


def memcpy_limit(build):
    out = subprocess.run([os.path.join(build, "bench", "crc32c-bench"), "3"], check=True, capture_output=True,
                         text=True, timeout=300).stdout
    for line in out.splitlines():
        if line.startswith("memcpy"):
            return float(line.split()[2]) * 1e9 / (1 << 20)
    raise RuntimeError(f"crc32c-bench printed no memcpy figure: {out!r}")


LOCAL_CASES = {
    # name: (what, capabilities on both ends, source parameters)
    "plain": ("plain UNIX socket", None, None),
    "flip": ("unix-page-flipping", {"unix-page-flipping": True}, None),
    "shared": ("shared memfd, mode cpr-transfer", None, {"mode": "cpr-transfer"}),
}


def local_case(tmp, opts, peak):
    """Local migration three ways, side by side, --local-repeat times each (medians): plain, flipped, shared."""
    print(f"local    {opts.local_size} GiB of random RAM over a UNIX socket; single-thread memcpy "
          f"{memcpy_limit(opts.build):.0f} MiB/s, UNIX socket peak {peak:.0f} MiB/s")
    failed = False
    for name, (what, caps, params) in LOCAL_CASES.items():
        runs = []
        for _ in range(opts.local_repeat):
            try:
                info, verified = run_case(tmp, name, opts.local_size, opts.smp, opts.ab_dirty_rate, caps=caps,
                                          params=params)
            except Exception as e:
                print(f"local    {name}: error: {e}")
                failed = True
                break
            if verified != "ok":
                print(f"local    {name}: FAILED verification: {verified}")
                failed = True
                break
            runs.append(info)
        if len(runs) != opts.local_repeat:
            continue
        runs.sort(key=lambda i: i["total-time"])
        info = runs[len(runs) // 2]
        ram = info["ram"]
        total_ms = info["total-time"]
        mibps = ram["total"] / (1 << 20) / (total_ms / 1000.0) if total_ms else float("inf")
        print(f"local    {name:<7} {what:<34} {mibps:>7.0f} MiB/s ({mibps / peak:.0%} of socket peak), total "
              f"{total_ms} ms, downtime {info.get('downtime', 0)} ms, socket bytes "
              f"{ram['transferred'] - ram.get('page-pipe-bytes', 0)}, pipe bytes {ram.get('page-pipe-bytes', 0)}, "
              f"fd-passed bytes {ram.get('fd-passed-bytes', 0)} (median of {opts.local_repeat})", flush=True)
    return failed


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default=os.path.join(ROOT, "build-release"), help="build directory (release)")
    ap.add_argument("--size", type=int, default=1, help="guest RAM in GiB (default 1)")
    ap.add_argument("--smp", type=int, default=2, help="worker threads of the workload (default 2)")
    ap.add_argument("--cases", default="random,zero,ab,crc",
                    help="comma-separated: random, zero, ab, crc, local, tls")
    ap.add_argument("--tls-repeat", type=int, default=3, help="runs of each side of the tls case (default 3)")
    ap.add_argument("--local-size", type=int, default=4, help="RAM of the local case in GiB (default 4)")
    ap.add_argument("--local-repeat", type=int, default=3, help="runs of each way of the local case (default 3)")
    ap.add_argument("--crc-repeat", type=int, default=4, help="runs of each side of the crc case (default 4)")
    ap.add_argument("--crc-paths", default="hw",
                    help="crc case: CRC32C paths to run besides the default one, comma-separated: fold, hw, sw "
                         "(default hw)")
    ap.add_argument("--crc-prealloc", action=argparse.BooleanOptionalAction, default=True,
                    help="crc case: destination started with -mem-prealloc (default on; see above)")
    ap.add_argument("--ab-dirty-rate", type=int, default=256,
                    help="dirty rate of the running A-B case in MiB/s (default 256; 0 would never converge)")
    opts = ap.parse_args()
    os.environ["FERRY_BUILD"] = os.path.abspath(opts.build)
    if not os.access(ferrytest.workload_binary(), os.X_OK):
        sys.exit(f"migrate-bench: {ferrytest.workload_binary()} not found: run bench/run.sh")

    peak = socket_peak(opts.build)
    print(f"UNIX socket peak (sockpeak, 1 MiB writes between two processes): {peak:.0f} MiB/s")
    print(f"guest RAM {opts.size} GiB, smp {opts.smp}, max-bandwidth {HIGH_BANDWIDTH >> 30} GiB/s, "
          f"default downtime-limit, ab dirty rate {opts.ab_dirty_rate} MiB/s")
    print("MiB/s = RAM size / total time (zero pages are not sent, so it can exceed the socket peak); "
          "wire = bytes sent / total time")
    header = (f"{'case':<8} {'MiB/s':>8} {'of peak':>8} {'wire':>7} {'total ms':>9} {'downtime':>9} "
              f"{'setup ms':>9} {'bytes sent':>13} {'passes':>7}  verified")
    print(header)
    print("-" * len(header))
    failed = False
    tmp = tempfile.mkdtemp(prefix="ferry-bench-", dir="/tmp")
    try:
        for case in opts.cases.split(","):
            if case == "crc":
                failed |= crc_case(tmp, opts)
                continue
            if case == "local":
                failed |= local_case(tmp, opts, peak)
                continue
            if case == "tls":
                failed |= tls_case(tmp, opts, peak)
                continue
            try:
                info, verified = run_case(tmp, case, opts.size, opts.smp, opts.ab_dirty_rate)
            except Exception as e:  # report and go on with the other cases
                print(f"{case:<8} error: {e}")
                failed = True
                continue
            ram = info["ram"]
            total_ms = info["total-time"]
            mibps = ram["total"] / (1 << 20) / (total_ms / 1000.0) if total_ms else float("inf")
            wire = ram["transferred"] / (1 << 20) / (total_ms / 1000.0) if total_ms else float("inf")
            print(f"{case:<8} {mibps:>8.0f} {mibps / peak:>7.0%} {wire:>7.0f} {total_ms:>9} "
                  f"{info.get('downtime', 0):>9} "
                  f"{info.get('setup-time', 0):>9} {ram['transferred']:>13} {ram['dirty-sync-count']:>7}  "
                  f"{verified}")
            failed |= verified != "ok"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
