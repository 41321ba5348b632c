"""ferryctl against servers it must survive: a fake QMP server (a thread of this test) that sends fields longer than
ferryctl's progress line, and arguments that cannot be sent as JSON at all. ferryctl must not crash or write out of
bounds (a sanitizer report fails the test), and must say what was wrong."""

import json
import os
import socket
import subprocess
import threading

from ferrytest import build_dir, sanitizer_report


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
