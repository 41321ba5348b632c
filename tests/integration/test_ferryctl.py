"""ferryctl against servers it must survive: a fake QMP server (a thread of this test) that sends fields longer than
ferryctl's progress line, and arguments that cannot be sent as JSON at all. ferryctl must not crash or write out of
bounds (a sanitizer report fails the test), and must say what was wrong. And ferryctl's timeline (issue 19, "A
picture"): a real migration of a small workload recorded as JSON (--timeline) and drawn with gnuplot (--plot,
`ferryctl plot`), and the errors of those options (a missing or failing gnuplot, paths that cannot be written)."""

import json
import os
import shutil
import socket
import subprocess
import threading

from ferrytest import build_dir, sanitizer_report, wait_listening, wait_until


def ferryctl_binary():
    return os.path.join(build_dir(), "tools", "ferryctl")


class FakeQmp(threading.Thread):
    """Serves one client: greeting, then one reply per request. query-migrate answers come from @statuses in
    order (the last one repeats)."""

    def __init__(self, path, statuses, extra=None):
        super().__init__(daemon=True)
        self.statuses = list(statuses)
        self.extra = extra or {}
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(1)
        self.sock.settimeout(30)

    def run(self):
        conn, _ = self.sock.accept()
        conn.settimeout(30)
        with conn:
            conn.sendall(b'{"QMP": {"version": {}, "capabilities": []}}\r\n')
            buf = b""
            dec = json.JSONDecoder()
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                buf += data
                while True:
                    text = buf.decode().lstrip()
                    if not text:
                        buf = b""
                        break
                    try:
                        req, end = dec.raw_decode(text)
                    except ValueError:
                        break
                    buf = text[end:].encode()
                    ret = {}
                    if req.get("execute") == "query-migrate":
                        status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
                        ret = {"status": status, "ram": {"total": 100, "remaining": 50, "mbps": 1.0},
                               **self.extra}
                    reply = {"return": ret, "id": req.get("id")}
                    conn.sendall(json.dumps(reply).encode() + b"\r\n")


def run_ferryctl(*args, timeout=60):
    return subprocess.run([ferryctl_binary(), *args], stdin=subprocess.DEVNULL, capture_output=True,
                          timeout=timeout, text=True, errors="replace")


def test_progress_line_survives_long_status(tmpdir_short):
    # Statuses longer than the 512-byte progress line (just past its end, where AddressSanitizer's red zone is,
    # and far past it): ferryctl must truncate, not write past the buffer.
    path = os.path.join(tmpdir_short, "fake.qmp")
    server = FakeQmp(path, ["x" * 515, "x" * 4000, "completed"])
    server.start()
    p = run_ferryctl(path, "migrate", "unix:/nonexistent", "--interval", "10")
    server.join(10)
    assert sanitizer_report(p.stderr) is None, p.stderr
    assert p.returncode == 0, f"exit {p.returncode}; stderr: {p.stderr}"
    progress = [line for line in p.stdout.splitlines() if line.startswith("xxxx")]
    assert progress and all(len(line) < 512 for line in progress), p.stdout[:600]
    assert "completed" in p.stdout


def test_error_desc_cannot_drive_the_terminal(tmpdir_short):
    # error-desc may quote what a peer sent: ferryctl's summary shows its control characters as escapes, so that
    # an ESC or CR cannot move the cursor or forge a line on the operator's terminal.
    path = os.path.join(tmpdir_short, "fake.qmp")
    server = FakeQmp(path, ["failed"], {"error-desc": "x\r\nforged\x1b[2K"})
    server.start()
    p = run_ferryctl(path, "migrate", "unix:/nonexistent", "--interval", "10")
    server.join(10)
    assert p.returncode == 1, f"exit {p.returncode}; stderr: {p.stderr}"
    assert "x\\x0d\\x0aforged\\x1b[2K" in p.stdout, p.stdout
    assert "\x1b" not in p.stdout and "\r" not in p.stdout, p.stdout


def test_non_utf8_arguments_are_named(tmpdir_short):
    # Bytes that are not UTF-8 cannot go into a JSON string: the error must say so, not "out of memory" or a
    # confusing reply from the server about a missing parameter.
    path = os.path.join(tmpdir_short, "fake.qmp")
    server = FakeQmp(path, ["completed"])
    server.start()
    bad = b"unix:/tmp/\xff".decode("utf-8", "surrogateescape")
    p = run_ferryctl(path, "migrate", bad)
    assert sanitizer_report(p.stderr) is None, p.stderr
    assert p.returncode == 1, f"exit {p.returncode}; stderr: {p.stderr}"
    assert "UTF-8" in p.stderr and "URI" in p.stderr, p.stderr

    p = run_ferryctl(path, b"query-\xff".decode("utf-8", "surrogateescape"))
    assert sanitizer_report(p.stderr) is None, p.stderr
    assert p.returncode == 1, f"exit {p.returncode}; stderr: {p.stderr}"
    assert "UTF-8" in p.stderr and "command" in p.stderr, p.stderr


def test_duplicate_keys_in_arguments_are_refused(tmpdir_short):
    # JSON-ARGS with a key twice would be sent with only the last value: refused before connecting, naming the key.
    path = os.path.join(tmpdir_short, "none.qmp")
    p = run_ferryctl(path, "migrate-set-parameters", '{"max-bandwidth": 1, "max-bandwidth": 2}')
    assert sanitizer_report(p.stderr) is None, p.stderr
    assert p.returncode != 0, f"exit {p.returncode}; stderr: {p.stderr}"
    assert "duplicate object key" in p.stderr and '"max-bandwidth"' in p.stderr, p.stderr


# --- the timeline (--timeline, --plot, plot) ---------------------------------------------------------------------

# A workload that converges in a few passes: 16 MiB/s of writes against a 32 MiB/s link, 64 MiB of RAM.
SMALL = ["-m", "64M", "-smp", "2", "-pattern", "ab", "-dirty-rate", "16"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path):
    with open(path, "rb") as f:
        head = f.read(8)
    size = os.path.getsize(path)
    assert head == PNG_MAGIC, f"{path} is not a PNG: starts {head!r}"
    # Three panels of 1000x900: a few tens of KiB; an empty or a truncated image would be far smaller.
    assert 10_000 < size < 2_000_000, f"{path}: {size} bytes"


def fake_gnuplot(dirpath, exit_status):
    """A directory for PATH whose gnuplot prints a complaint and exits with @exit_status."""
    os.makedirs(dirpath, exist_ok=True)
    path = os.path.join(dirpath, "gnuplot")
    with open(path, "w") as f:
        f.write(f"#!/bin/sh\necho 'fake gnuplot: no' >&2\nexit {exit_status}\n")
    os.chmod(path, 0o755)
    return dirpath


def test_timeline_and_plot_of_a_migration(workload):
    assert shutil.which("gnuplot"), "gnuplot is needed (Debian package gnuplot-nox; scripts/install-deps.sh)"
    tmp = workload.tmpdir
    uri = f"unix:{os.path.join(tmp, 'mig.sock')}"
    dst = workload("dst", *SMALL, "-incoming", uri)
    wait_listening(uri)
    src = workload("src", *SMALL)
    pages = src.workload_info()["pages"]
    wait_until(lambda: src.workload_info()["pages-written"] >= pages, 30, "every page written once")
    src.set_params(**{"max-bandwidth": 32 << 20})
    timeline, png = os.path.join(tmp, "tl.json"), os.path.join(tmp, "tl.png")
    p = run_ferryctl(src.qmp_path, "migrate", uri, "--interval", "50", "--timeline", timeline, "--plot", png,
                     timeout=120)
    assert sanitizer_report(p.stderr) is None, p.stderr
    assert p.returncode == 0, f"exit {p.returncode}; stdout {p.stdout[-2000:]}; stderr: {p.stderr}"
    dst.wait_status(("running",))
    dst.assert_pattern_ok()

    with open(timeline) as f:
        tl = json.load(f)
    assert tl["format"] == "ferry-timeline" and tl["version"] == 1, tl.keys()
    assert tl["uri"] == uri and tl["interval-ms"] == 50
    # The header: what the source had set when the migration started.
    assert tl["parameters"]["max-bandwidth"] == 32 << 20, tl["parameters"]
    assert tl["capabilities"]["events"] is True and tl["events-enabled-by-ferryctl"] is True, tl["capabilities"]
    assert src.cmd("query-migrate-capabilities")[0] == {"capability": "events", "state": True}

    samples = tl["samples"]
    assert len(samples) >= 10, samples
    times = [s["t_ms"] for s in samples]
    assert times == sorted(times), times
    passes = [s["pass"] for s in samples]
    assert passes == sorted(passes) and passes[-1] >= 2, passes
    for s in samples:
        assert {"status", "remaining", "transferred", "mbps", "dirty-pages-rate"} <= s.keys(), s
    assert {s["trigger"] for s in samples} == {"poll", "pass"}, "a MIGRATION_PASS must cause a sample at once"
    assert samples[-1]["status"] == "completed" and samples[-1]["remaining"] == 0, samples[-1]

    events = [e["pass"] for e in tl["passes"]]
    assert events and events == sorted(events) and len(set(events)) == len(events), tl["passes"]
    assert events[-1] >= 2, events
    assert all(0 <= e["t_ms"] <= tl["end-ms"] for e in tl["passes"]), (tl["passes"], tl["end-ms"])
    assert any(e["event"] == "MIGRATION" and e["data"]["status"] == "completed" for e in tl["events"]), tl["events"]

    result = tl["result"]
    assert result["status"] == "completed" and result == src.query_migrate(), result
    assert_png(png)

    # A migrate that is refused leaves no (empty) timeline behind.
    refused = os.path.join(tmp, "refused.json")
    p = run_ferryctl(src.qmp_path, "migrate", "bogus:x", "--timeline", refused)
    assert p.returncode == 1 and "unknown migration protocol" in p.stderr, p.stderr
    assert not os.path.exists(refused)

    # The same picture from the saved file.
    png2 = os.path.join(tmp, "again.png")
    p = run_ferryctl("plot", timeline, png2)
    assert p.returncode == 0, p.stderr
    assert_png(png2)


def minimal_timeline(path):
    tl = {"format": "ferry-timeline", "version": 1, "uri": "unix:/x", "passes": [{"t_ms": 500, "pass": 1}],
          "samples": [{"t_ms": 0, "status": "active", "pass": 0, "remaining": 1 << 20, "mbps": 8.0,
                       "dirty-pages-rate": 10, "cpu-throttle-percentage": 20},
                      {"t_ms": 1000, "status": "completed", "pass": 1, "remaining": 0, "mbps": 8.0,
                       "dirty-pages-rate": 0}],
          "result": {"status": "completed", "total-time": 1000}}
    with open(path, "w") as f:
        json.dump(tl, f)


def test_plot_errors(tmpdir_short):
    tl = os.path.join(tmpdir_short, "tl.json")
    minimal_timeline(tl)
    out = os.path.join(tmpdir_short, "out.png")
    base = os.environ.get("PATH", "")

    p = run_ferryctl("plot", os.path.join(tmpdir_short, "none.json"), out)
    assert p.returncode == 1 and "cannot read the timeline" in p.stderr, p.stderr

    notl = os.path.join(tmpdir_short, "other.json")
    with open(notl, "w") as f:
        json.dump({"samples": []}, f)
    p = run_ferryctl("plot", notl, out)
    assert p.returncode == 1 and "not a ferry timeline" in p.stderr, p.stderr

    p = run_ferryctl("plot", tl)
    assert p.returncode == 2 and "plot takes TIMELINE.json OUT.png" in p.stderr, p.stderr

    # No gnuplot in PATH: said so, with the package that has it.
    empty = os.path.join(tmpdir_short, "empty")
    os.mkdir(empty)
    p = subprocess.run([ferryctl_binary(), "plot", tl, out], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PATH": empty})
    assert p.returncode == 1 and "gnuplot" in p.stderr and "gnuplot-nox" in p.stderr, p.stderr

    # A gnuplot that fails: its exit status, and where its script was kept.
    bad = fake_gnuplot(os.path.join(tmpdir_short, "bad"), 3)
    p = subprocess.run([ferryctl_binary(), "plot", tl, out], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PATH": f"{bad}:{base}", "TMPDIR": tmpdir_short})
    assert p.returncode == 1, p.stderr
    assert "fake gnuplot: no" in p.stderr and "gnuplot failed (exit status 3)" in p.stderr, p.stderr
    kept = [d for d in os.listdir(tmpdir_short) if d.startswith("ferryctl-plot-")]
    assert len(kept) == 1 and os.path.exists(os.path.join(tmpdir_short, kept[0], "timeline.gp")), kept
    assert not os.path.exists(out)

    # A gnuplot that exits 0 without writing the picture is a failure too.
    lazy = fake_gnuplot(os.path.join(tmpdir_short, "lazy"), 0)
    p = subprocess.run([ferryctl_binary(), "plot", tl, out], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PATH": f"{lazy}:{base}", "TMPDIR": tmpdir_short})
    assert p.returncode == 1 and "wrote no" in p.stderr, p.stderr

    # The real one, and its temporary directory removed afterwards.
    if shutil.which("gnuplot"):
        p = subprocess.run([ferryctl_binary(), "plot", tl, out], capture_output=True, text=True, timeout=60,
                           env={**os.environ, "TMPDIR": tmpdir_short})
        assert p.returncode == 0, p.stderr
        assert_png(out)
        assert len([d for d in os.listdir(tmpdir_short) if d.startswith("ferryctl-plot-")]) == 2


def test_migrate_timeline_options_are_checked_first(tmpdir_short):
    # Everything that would keep the timeline or the plot from being written is refused before ferryctl connects
    # (the socket does not exist: an error about it would mean that ferryctl went on).
    sock = os.path.join(tmpdir_short, "none.qmp")
    for args, needle in ((["--plot"], "--plot needs a file name"),
                         (["--timeline", "--plot", "x.png"], "--timeline needs a file name"),
                         (["--bogus"], "unknown option or extra argument '--bogus'")):
        p = run_ferryctl(sock, "migrate", "unix:/x", *args)
        assert p.returncode == 2 and needle in p.stderr and "usage" in p.stderr, (args, p.stderr)
    p = run_ferryctl(sock, "migrate", "unix:/x", "--timeline", os.path.join(tmpdir_short, "no", "tl.json"))
    assert p.returncode == 1 and "cannot write the timeline" in p.stderr and "No such file" in p.stderr, p.stderr
    assert "connecting" not in p.stderr, p.stderr
    if shutil.which("gnuplot"):
        p = run_ferryctl(sock, "migrate", "unix:/x", "--plot", os.path.join(tmpdir_short, "no", "tl.png"))
        assert p.returncode == 1 and "cannot write the plot" in p.stderr, p.stderr
        assert "connecting" not in p.stderr, p.stderr
    empty = os.path.join(tmpdir_short, "empty")
    os.mkdir(empty)
    p = subprocess.run([ferryctl_binary(), sock, "migrate", "unix:/x", "--plot", os.path.join(tmpdir_short, "x.png")],
                       capture_output=True, text=True, timeout=60, env={**os.environ, "PATH": empty})
    assert p.returncode == 1 and "needs gnuplot" in p.stderr and "gnuplot-nox" in p.stderr, p.stderr
    assert "connecting" not in p.stderr, p.stderr
