"""The self-describing stream seen from outside: ferry-analyze on a real saved workload (header, features, RAM
summary, the workload's section decoded from the stream's own schema, --schema, a damaged file), the features
handshake between two processes (a destination that switches a feature off, query-migrate-capabilities'
"negotiated", query-migrate's "stream-features" and "skipped-bytes"), and the promise that the bytes a source
writes do not depend on the transport (file, exec and a UNIX socket, captured by a relay, are identical).

What this is not: the encoding's rules field by field (tests/unit/visitor), cross-version loads
(tests/unit/migration/test-compat.c), or the analyzer's handling of every malformed record
(tests/unit/migration/test-analyze.c)."""

import json
import os
import socket
import subprocess
import threading

from ferrytest import build_dir, wait_until
from test_migration import AB, FAST, check_running_destination

RANDOM = ["-m", "32M", "-smp", "2", "-pattern", "random", "-seed", "21", "-dirty-rate", "50"]


def analyze_binary():
    return os.path.join(build_dir(), "tools", "ferry-analyze")


def analyze(path, *flags):
    return subprocess.run([analyze_binary(), *flags, path], capture_output=True, text=True, timeout=60)


def stopped_source(workload, name="src"):
    """A random-pattern workload that ran for a while and was stopped: its RAM and state stay fixed."""
    src = workload(name, *RANDOM)
    src.wait_status(("running",))
    wait_until(lambda: src.workload_info()["pages-written"] >= 2048, 20, "pages written")
    src.cmd("stop")
    src.set_params(**{"max-bandwidth": 0})
    return src


def save(src, uri):
    src.cmd("migrate", uri=uri)
    info = src.wait_migration()
    assert info["status"] == "completed", info
    return info


def test_analyze_saved_workload(workload):
    src = stopped_source(workload)
    path = os.path.join(workload.tmpdir, "saved.fstream")
    info = save(src, f"file:{path}")
    assert info["stream-features"] == ["record-checksum", "populate-hints", "switchover-commit"], info

    r = analyze(path)
    assert r.returncode == 0, r.stderr
    a = json.loads(r.stdout)
    assert a["header"] == {"magic": "FERRYMIG", "version": 2, "flags": 0}, a["header"]
    assert [f["name"] for f in a["features"]] == ["record-checksum", "populate-hints",
                                                    "switchover-commit"], a["features"]
    assert sum(b["size"] for b in a["config"]["blocks"]) == 32 << 20, a["config"]
    ram = a["ram"]
    # Every page the source counted went into the stream, and the analyzer saw exactly those.
    assert ram["data-pages"] == info["ram"]["normal"], (ram, info["ram"])
    assert ram["zero-pages"] == info["ram"]["duplicate"], (ram, info["ram"])
    assert ram["pages"] == a["end"]["pages"], (ram, a["end"])
    assert ram["data-bytes"] == ram["data-pages"] * 4096, ram
    # Framing (everything but page data) stays far under 1% of a stream that is mostly pages.
    assert a["framing-bytes"] < a["bytes"] // 100, (a["framing-bytes"], a["bytes"])
    assert a["end"]["source-running"] is False, a["end"]

    # The workload's section, decoded with no device code: its fields as the workload's own visitor names them.
    (sec,) = [s for s in a["sections"] if s["name"] == "workload"]
    state = sec["state"]["workload"]
    assert state["pattern"] == "random" and state["seed"] == 21 and state["smp"] == 2, state
    assert state["pages"] == (32 << 20) // 4096 and state["page-size"] == 4096, state
    assert len(state["workers"]) == 2, state
    assert set(state["workers"][0]) == {"cursor", "rng", "passes", "pages-written"}, state["workers"][0]
    pages_written = sum(w["pages-written"] for w in state["workers"])
    assert pages_written == src.workload_info()["pages-written"], (pages_written, src.workload_info())

    r = analyze(path, "--schema")
    assert r.returncode == 0, r.stderr
    schema = json.loads(r.stdout)
    (ws,) = [s for s in schema["sections"] if s["name"] == "workload"]
    assert ws["version"] == 1 and ws["instance-id"] == 0, ws
    (top,) = ws["fields"]
    assert top["name"] == "workload" and top["type"] == "struct", top
    workers = [f for f in top["fields"] if f["name"] == "workers"][0]
    assert workers["type"] == "list" and workers["element"]["type"] == "struct", workers
    assert {f["name"]: f["type"] for f in workers["element"]["fields"]}["cursor"] == "u64", workers

    # The same stream from stdin.
    with open(path, "rb") as f:
        r2 = subprocess.run([analyze_binary(), "-"], stdin=f, capture_output=True, text=True, timeout=60)
    assert r2.returncode == 0 and json.loads(r2.stdout) == a, r2.stderr

    # Damage: a flipped byte inside the page data, and a cut; both exit 1 with the offset of the bad record.
    data = open(path, "rb").read()
    bad = bytearray(data)
    bad[len(data) // 2] ^= 0x01
    bad_path = os.path.join(workload.tmpdir, "bad.fstream")
    open(bad_path, "wb").write(bad)
    r = analyze(bad_path)
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert "at stream offset" in r.stderr and "CRC" in r.stderr, r.stderr
    partial = json.loads(r.stdout)
    assert partial["error"]["offset"] < len(data) // 2 <= partial["error"]["offset"] + 20 + 256 * 4096 + 64, \
        partial["error"]
    open(bad_path, "wb").write(data[:len(data) - 3])
    r = analyze(bad_path)
    assert r.returncode == 1 and "at stream offset" in r.stderr, (r.returncode, r.stderr)
    # Not a stream at all; a missing file is a usage-level error.
    open(bad_path, "wb").write(b"hello, world\n" * 4)
    r = analyze(bad_path)
    assert r.returncode == 1 and "not a ferry migration stream" in r.stderr, r.stderr
    r = analyze(os.path.join(workload.tmpdir, "missing"))
    assert r.returncode == 2 and "missing" in r.stderr, r.stderr

    # And the file restores: the stream the analyzer read is the one a destination loads.
    dst = workload("dst", *RANDOM, "-incoming", f"file:{path}")
    dst.wait_status(("paused", "running"), timeout=60)
    assert dst.migration_status() == "completed"
    assert dst.query_migrate()["skipped-bytes"] == 0
    assert dst.digest() == src.digest()


class Relay:
    """A UNIX-socket man in the middle: accepts the source's connection, connects to the destination, copies both
    ways and keeps what the source sent."""

    def __init__(self, listen_path, target_path):
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(listen_path)
        self.listener.listen(1)
        self.target = target_path
        self.captured = bytearray()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        a, _ = self.listener.accept()
        b = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        b.connect(self.target)

        def back():
            while True:
                data = b.recv(65536)
                if not data:
                    a.shutdown(socket.SHUT_WR)
                    return
                a.sendall(data)

        t = threading.Thread(target=back, daemon=True)
        t.start()
        while True:
            data = a.recv(1 << 20)
            if not data:
                b.shutdown(socket.SHUT_WR)
                break
            self.captured += data
            b.sendall(data)
        t.join(30)
        a.close()
        b.close()

    def join(self):
        self.thread.join(60)
        self.listener.close()


def test_stream_bytes_do_not_depend_on_transport(workload):
    """Item 7's last rule: with no optional feature beyond the defaults, the stream is the same byte for byte
    over a file, an exec pipe and a UNIX socket (where the destination answers the handshake), except that a
    channel with a return path adds the COMMIT record after END (switchover-commit)."""
    src = stopped_source(workload)
    tmp = workload.tmpdir
    save(src, f"file:{tmp}/a.fstream")
    save(src, f"exec:cat > {tmp}/b.fstream")
    dst = workload("dst", *RANDOM, "-incoming", f"unix:{tmp}/dst.sock")
    dst.wait_status(("inmigrate",))
    relay = Relay(f"{tmp}/relay.sock", f"{tmp}/dst.sock")
    save(src, f"unix:{tmp}/relay.sock")
    relay.join()
    a = open(f"{tmp}/a.fstream", "rb").read()
    b = open(f"{tmp}/b.fstream", "rb").read()
    assert a == b, "file: and exec: streams differ"
    captured = bytes(relay.captured)
    # COMMIT: type 0x000C, flags critical, length 0, and its CRC32C trailer.
    assert captured[len(a):len(a) + 8] == bytes.fromhex("000c800000000000"), captured[len(a):].hex()
    assert len(captured) == len(a) + 12, captured[len(a):].hex()
    assert captured[:len(a)] == a, (
        f"the UNIX-socket stream ({len(relay.captured)} bytes) differs from the file stream ({len(a)} bytes)")
    dst.wait_status(("paused", "running"), timeout=60)
    assert dst.digest() == src.digest()


def test_destination_switches_features_off(workload):
    """The stream uses the intersection: a destination with populate-hints off gets no hints, one with
    record-checksum off gets records without trailers; both migrations of a running workload complete."""
    for off, used in (("populate-hints", ["record-checksum", "switchover-commit"]),
                      ("record-checksum", ["populate-hints", "switchover-commit"])):
        uri = f"unix:{workload.tmpdir}/{off}.sock"
        src = workload(f"src-{off}", *AB)
        dst = workload(f"dst-{off}", *AB, "-incoming", "defer")
        dst.cmd("migrate-set-capabilities", capabilities=[{"capability": off, "state": False}])
        dst.cmd("migrate-incoming", uri=uri)
        src.wait_status(("running",))
        wait_until(lambda: src.workload_info()["pages-written"] >= 4096, 20, "pages written")
        src.set_params(**{"max-bandwidth": FAST})
        src.cmd("migrate", uri=uri)
        info = src.wait_migration()
        assert info["status"] == "completed", info
        assert info["stream-features"] == used, info
        caps = {c["capability"]: c for c in src.cmd("query-migrate-capabilities")}
        assert caps[off]["state"] is True and caps[off]["negotiated"] is False, caps
        (other,) = [c for c in ("populate-hints", "record-checksum") if c != off]
        assert caps[other]["negotiated"] is True, caps
        assert "negotiated" not in caps["events"], caps
        check_running_destination(src, dst)
        dinfo = dst.query_migrate()
        assert dinfo["stream-features"] == used and dinfo["skipped-bytes"] == 0, dinfo
        dcaps = {c["capability"]: c for c in dst.cmd("query-migrate-capabilities")}
        assert dcaps[off] == {"capability": off, "state": False, "negotiated": False}, dcaps
