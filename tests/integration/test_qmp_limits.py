"""The QMP socket's resource bounds, against a real ferry-workload (docs/design.md, "Resource bounds"; the limits
are in src/monitor/monitor.h): the socket file is created mode 0600 whatever the umask; a client that sends a
100 MB line is answered with an error and cut off after 1 MiB, while another client connected at the same time
keeps getting answers promptly and the process does not buffer the line; garbage (invalid JSON, random bytes)
gets errors, then a cut-off; 64 clients at once are all served, one beyond the 128-client cap is told why and
closed. After each test the process is still serving (the fixture's own client asks it) and the fixture checks
its stderr for sanitizer reports. The protocol's errors themselves are test_qmp.py's."""

import json
import os
import random
import socket
import stat
import threading
import time

import pytest

from ferrytest import QMP, QMPProtocolError

SMALL = ["-m", "16M", "-smp", "1", "-pattern", "ab", "-dirty-rate", "1"]
MAX_INPUT = 1 << 20          # FERRY_MONITOR_MAX_INPUT
MAX_BAD_INPUT = 10           # FERRY_MONITOR_MAX_BAD_INPUT
MAX_CLIENTS = 128            # FERRY_MONITOR_MAX_CLIENTS


def assert_still_serving(w):
    assert w.qmp.cmd("query-status")["status"] == "running"
    assert w.alive(), f"process died: {w.stderr()}"


def read_until_closed(client, timeout=20.0):
    """Every message @client gets until the server closes the connection."""
    msgs = []
    while True:
        try:
            msgs.append(client._read_message(timeout))
        except (QMPProtocolError, ConnectionResetError):
            return msgs


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


@pytest.mark.parametrize("mask", [0o000, 0o022, 0o277], ids=["umask-000", "umask-022", "umask-277"])
def test_socket_mode_is_0600(workload, mask):
    """Whatever umask the program inherits: one that would open the socket to everybody, the usual one, and one that
    would take the owner's own write permission (needed to connect)."""
    old = os.umask(mask)
    try:
        w = workload("w", *SMALL)
    finally:
        os.umask(old)
    st = os.stat(w.qmp_path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600, oct(st.st_mode)
    assert st.st_uid == os.getuid()
    assert_still_serving(w)


class Prober(threading.Thread):
    """Asks query-status over its own connection, again and again, until stopped; records each answer's delay."""

    def __init__(self, path):
        super().__init__(daemon=True)
        self.client = QMP(path)
        self.stop = threading.Event()
        self.delays = []
        self.failure = None

    def run(self):
        try:
            while not self.stop.is_set():
                t0 = time.monotonic()
                assert self.client.cmd("query-status", timeout=20)["status"] == "running"
                self.delays.append(time.monotonic() - t0)
                time.sleep(0.01)
        except Exception as e:  # reported by the test
            self.failure = e

    def finish(self):
        self.stop.set()
        self.join(30)
        self.client.close()
        assert self.failure is None, f"the other client was disturbed: {self.failure!r}"


# A 100 MB line three ways: a string that never ends, a bare token, an array that never closes.
HUGE_LINES = {
    "string": (b'{"execute": "query-status", "arguments": {"s": "', b"a"),
    "token": (b"", b"1"),
    "array": (b'{"execute": "query-status", "id": [', b"1,"),
}


@pytest.mark.deadline(240)
@pytest.mark.parametrize("kind", sorted(HUGE_LINES))
def test_100mb_line_is_cut_off_others_served(workload, kind):
    w = workload("w", *SMALL)
    prober = Prober(w.qmp_path)
    prober.start()
    rss_before = rss_kib(w.proc.pid)
    big = QMP(w.qmp_path)
    head, unit = HUGE_LINES[kind]
    chunk = unit * ((1 << 20) // len(unit))
    sent = 0
    total = 100 << 20
    refused = None
    try:
        big.sock.settimeout(60)
        big.sock.sendall(head)
        while sent < total:
            big.sock.sendall(chunk)
            sent += len(chunk)
    except (BrokenPipeError, ConnectionResetError) as e:
        refused = e
    # The server stops reading after the limit and closes the connection: the rest is never taken.
    assert refused is not None, "the server took all 100 MB"
    assert sent < 16 << 20, f"{sent} bytes were taken before the cut-off"
    msgs = read_until_closed(big)
    assert len(msgs) == 1, msgs
    assert msgs[0]["error"]["desc"] == (f"QMP input exceeds {MAX_INPUT} bytes without a complete request; "
                                        "closing"), msgs
    big.close()
    time.sleep(0.3)
    prober.finish()
    assert prober.delays, "the other client got no answer at all"
    assert max(prober.delays) < 5, f"the other client waited {max(prober.delays):.1f} s for an answer"
    # The line was not buffered (under the sanitizers RSS moves by a few MB for a 1 MiB buffer, not by 100 MB).
    grown = rss_kib(w.proc.pid) - rss_before
    assert grown < 64 * 1024, f"RSS grew by {grown} KiB"
    assert_still_serving(w)


def test_invalid_json_errors_then_cut_off(workload):
    w = workload("w", *SMALL)
    g = QMP(w.qmp_path)
    for i in range(MAX_BAD_INPUT - 1):
        reply = g.send_raw(b"{'not': json}\n" if i % 2 else b"[1, 2]\n")
        assert "error" in reply, reply
    # A request resets the count: the client may go on.
    assert g.cmd("query-status")["status"] == "running"
    for _ in range(MAX_BAD_INPUT - 1):
        assert g.send_raw(b"nonsense\n")["error"]["desc"].startswith("JSON parse error, ")
    g.sock.sendall(b"nonsense\n")
    msgs = read_until_closed(g)
    assert len(msgs) == 2, msgs
    assert msgs[0]["error"]["desc"].startswith("JSON parse error, "), msgs
    assert msgs[1]["error"]["desc"] == f"{MAX_BAD_INPUT} inputs in a row were not QMP requests; closing", msgs
    g.close()
    assert_still_serving(w)


@pytest.mark.deadline(120)
def test_binary_garbage_errors_then_cut_off(workload):
    w = workload("w", *SMALL)
    prober = Prober(w.qmp_path)
    prober.start()
    g = QMP(w.qmp_path)
    noise = random.Random(7).randbytes(8 << 20)
    sender_error = []

    def send():
        try:
            g.sock.sendall(noise)
        except OSError as e:
            sender_error.append(e)

    t = threading.Thread(target=send, daemon=True)
    t.start()
    msgs = read_until_closed(g)
    t.join(30)
    assert sender_error, "the server read 8 MB of garbage without cutting the client off"
    assert 1 <= len(msgs) <= MAX_BAD_INPUT + 1, msgs
    assert all("error" in m for m in msgs), msgs
    assert ("inputs in a row were not QMP requests" in msgs[-1]["error"]["desc"]
            or msgs[-1]["error"]["desc"].startswith("QMP input exceeds")), msgs[-1]
    g.close()
    prober.finish()
    assert_still_serving(w)


@pytest.mark.deadline(180)
def test_64_concurrent_clients(workload):
    w = workload("w", *SMALL)
    n = 64
    barrier = threading.Barrier(n)
    results = [None] * n

    def client(i):
        try:
            c = QMP(w.qmp_path)
            barrier.wait(60)
            answers = [c.cmd("query-status", timeout=60)["status"] for _ in range(5)]
            reply = c.request({"execute": "query-status", "id": i}, timeout=60)
            c.close()
            results[i] = (answers, reply.get("id"))
        except Exception as e:
            results[i] = e

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for i, r in enumerate(results):
        assert isinstance(r, tuple), f"client {i}: {r!r}"
        assert r == (["running"] * 5, i), f"client {i}: {r!r}"
    assert_still_serving(w)


def first_line(path):
    """Connect and return (socket, the first message the server sends)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(20)
    s.connect(path)
    buf = b""
    while b"\n" not in buf:
        chunk = s.recv(4096)
        if not chunk:
            break
        buf += chunk
    return s, json.loads(buf.split(b"\n", 1)[0])


@pytest.mark.deadline(180)
def test_client_cap(workload):
    w = workload("w", *SMALL)
    # The fixture's client is one of them.
    clients = [QMP(w.qmp_path) for _ in range(MAX_CLIENTS - 1)]
    s, msg = first_line(w.qmp_path)
    assert msg == {"error": {"class": "GenericError",
                             "desc": f"too many monitor clients (at most {MAX_CLIENTS}); try again later"}}, msg
    assert s.recv(4096) == b""
    s.close()
    # Everybody already connected is still served; after one leaves, a newcomer is.
    for c in clients[::16]:
        assert c.cmd("query-status")["status"] == "running"
    clients.pop().close()
    deadline = time.monotonic() + 20
    while True:
        s, msg = first_line(w.qmp_path)
        s.close()
        if "QMP" in msg:
            break
        assert time.monotonic() < deadline, "no client was served after one left"
        time.sleep(0.05)
    for c in clients:
        c.close()
    assert_still_serving(w)
