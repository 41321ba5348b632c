"""A network test harness for the integration tests: two network namespaces joined by a veth pair, with traffic
control on each side (rate, delay, loss) and a link that can be taken down and up again while a migration runs.

The source workload runs in namespace A, the destination in namespace B (Workload's prefix=side.prefix, which is
"ip netns exec NAME": the pid stays the program's). QMP sockets are UNIX sockets in the filesystem, so the test
talks to both processes from the root namespace as usual; only the migration's TCP connection crosses the veth.
Addresses are 10.213.0.1/30 (A) and 10.213.0.2/30 (B), private and visible only inside the two namespaces, so
parallel runs cannot clash on them; namespace names are unique per run (fnp-PID-RANDOM-a/-b) and the namespaces
of runs whose process is gone are swept at the next start.

What it does not do: it does not emulate anything the kernel lacks. Delay and loss need sch_netem; where the
kernel has none, shape() raises Unsupported (the `netpair` fixture's users turn that into a skip) except for a
rate alone, which falls back to sch_tbf. It uses the standard library and iproute2's ip and tc only.
"""

import os
import re
import secrets
import shutil
import subprocess
import threading
import time

import pytest

PREFIX = "fnp-"
NETNS_DIR = "/var/run/netns"
ADDR_A, ADDR_B, PLEN = "10.213.0.1", "10.213.0.2", 30
DEV_A, DEV_B = "fnp0", "fnp1"   # interface names are per namespace: fixed names cannot clash


class Unsupported(Exception):
    """The kernel or the tools lack what was asked for; str() says what (a skip reason)."""


def _run(argv, check=True):
    p = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {p.returncode}: {p.stderr.strip()}")
    return p


def skip_reason():
    """Why the harness cannot run here at all, or None (netem is checked separately: NetPair.netem_available)."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, veth, tc)"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"iproute2's {tool} is not installed (scripts/install-deps.sh installs iproute2)"
    return None


def sweep_stale():
    """Delete the namespaces of earlier runs whose pytest process is gone (killed before its teardown)."""
    try:
        names = os.listdir(NETNS_DIR)
    except FileNotFoundError:
        return
    for name in names:
        m = re.fullmatch(re.escape(PREFIX) + r"(\d+)-[0-9a-f]+-[ab]", name)
        if not m or int(m.group(1)) == os.getpid():
            continue
        try:
            os.kill(int(m.group(1)), 0)
            continue            # its owner still runs (a parallel run): not ours to delete
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        _run(["ip", "netns", "del", name], check=False)


class Side:
    """One end of the pair: its namespace, interface and address. @prefix runs a program inside it."""

    def __init__(self, ns, dev, addr):
        self.ns, self.dev, self.addr = ns, dev, addr
        self.prefix = ("ip", "netns", "exec", ns)

    def __repr__(self):
        return f"<Side {self.ns} {self.dev} {self.addr}>"

    def run(self, *cmd, check=True):
        """Run @cmd inside this namespace; returns the CompletedProcess (text)."""
        return _run([*self.prefix, *cmd], check=check)

    def tc(self, *args, check=True):
        return _run(["tc", "-n", self.ns, *args], check=check)

    def ip(self, *args, check=True):
        return _run(["ip", "-n", self.ns, *args], check=check)

    def listening(self, port):
        """Whether some socket listens on TCP @port in this namespace (/proc/net/tcp as seen from inside)."""
        out = self.run("cat", "/proc/net/tcp", "/proc/net/tcp6", check=False).stdout
        for line in out.splitlines()[1:]:
            fields = line.split()
            if len(fields) > 3 and fields[3] == "0A" and ":" in fields[1]:
                try:
                    if int(fields[1].rsplit(":", 1)[1], 16) == port:
                        return True
                except ValueError:
                    pass
        return False

    def counters(self):
        """rx_bytes, tx_bytes, rx_packets, tx_packets of this side's interface."""
        names = ("rx_bytes", "tx_bytes", "rx_packets", "tx_packets")
        out = self.run("cat", *[f"/sys/class/net/{self.dev}/statistics/{n}" for n in names]).stdout.split()
        return dict(zip(names, map(int, out)))

    def qdisc(self):
        """The root qdisc of this side's interface, as tc prints it (for messages and checks)."""
        return self.tc("qdisc", "show", "dev", self.dev).stdout.strip()


class NetPair:
    """Two namespaces, a (A) and b (B), joined by a veth pair: a.addr <-> b.addr. close() deletes both whatever
    state they are in; use it as a context manager or through the `netpair` fixture."""

    def __init__(self):
        reason = skip_reason()
        if reason:
            raise Unsupported(reason)
        sweep_stale()
        base = f"{PREFIX}{os.getpid()}-{secrets.token_hex(3)}"
        self.a = Side(base + "-a", DEV_A, ADDR_A)
        self.b = Side(base + "-b", DEV_B, ADDR_B)
        self._created = []
        self._netem = None
        self._cuts = []
        try:
            for side in (self.a, self.b):
                p = _run(["ip", "netns", "add", side.ns], check=False)
                if p.returncode != 0:
                    raise Unsupported(f"ip netns add failed: {p.stderr.strip()}")
                self._created.append(side.ns)
            p = self.a.ip("link", "add", DEV_A, "type", "veth", "peer", "name", DEV_B, "netns", self.b.ns,
                          check=False)
            if p.returncode != 0:
                raise Unsupported(f"cannot create a veth pair: {p.stderr.strip()}")
            for side in (self.a, self.b):
                side.ip("link", "set", "lo", "up")
                side.ip("addr", "add", f"{side.addr}/{PLEN}", "dev", side.dev)
                side.ip("link", "set", side.dev, "up")
            self.wait_link(True)
        except BaseException:
            self.close()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"<NetPair {self.a.ns}:{self.a.addr} <-> {self.b.ns}:{self.b.addr}>"

    def close(self):
        """Bring the link back (so a cut thread has nothing left to do) and delete both namespaces; deleting a
        namespace destroys its end of the veth, and with it the pair. Processes still inside keep their
        (now nameless) namespace until they exit; the workload fixture reaps them."""
        for t in self._cuts:
            t.cancel()
        for t in self._cuts:
            t.join(10)
        for ns in self._created:
            _run(["ip", "netns", "del", ns], check=False)
        self._created = []

    # --- addresses ---------------------------------------------------------------------------------------------
    def tcp_uri(self, port, side=None):
        """A migration URI for a destination listening in @side (default b) on @port."""
        return f"tcp:{(side or self.b).addr}:{port}"

    def wait_listening(self, uri, timeout=30.0, side=None):
        """Wait until a destination in @side (default b) listens on the tcp: @uri, without connecting."""
        port = int(uri.rsplit(":", 1)[1])
        side = side or self.b
        deadline = time.monotonic() + timeout
        while not side.listening(port):
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on TCP port {port} in {side.ns} after {timeout:.0f} s")
            time.sleep(0.05)

    # --- traffic control ---------------------------------------------------------------------------------------
    def netem_available(self):
        """Whether the kernel has sch_netem (probed once, on a's interface)."""
        if self._netem is None:
            p = self.a.tc("qdisc", "replace", "dev", DEV_A, "root", "netem", "delay", "0ms", check=False)
            self._netem = p.returncode == 0
            if self._netem:
                self.a.tc("qdisc", "del", "dev", DEV_A, "root", check=False)
        return self._netem

    def shape(self, side, rate=None, delay=None, jitter=None, loss=None, limit=None):
        """Shape what @side (self.a or self.b) sends: @rate as tc writes it ("20mbit"), @delay and @jitter
        ("50ms"), @loss in percent, @limit in packets (netem's queue). Replaces what was there. With netem
        missing, a rate alone is shaped by tbf; anything else raises Unsupported."""
        if self.netem_available():
            args = ["netem"]
            if delay is not None:
                args += ["delay", delay] + ([jitter] if jitter is not None else [])
            if loss is not None:
                args += ["loss", f"{loss}%"]
            if rate is not None:
                args += ["rate", rate]
            if limit is not None:
                args += ["limit", str(limit)]
        elif delay is None and jitter is None and loss is None and limit is None and rate is not None:
            # tbf: the bucket must hold a full GSO packet or so, the queue a fraction of a second of traffic.
            args = ["tbf", "rate", rate, "burst", "64kb", "latency", "100ms"]
        else:
            raise Unsupported("the kernel has no sch_netem (CONFIG_NET_SCH_NETEM): delay and loss cannot be "
                              "emulated; only a rate (tbf) can")
        side.tc("qdisc", "replace", "dev", side.dev, "root", *args)

    def unshape(self, side=None):
        """Back to the default qdisc on @side, or on both."""
        for s in ([side] if side else [self.a, self.b]):
            s.tc("qdisc", "del", "dev", s.dev, "root", check=False)

    # --- the link ----------------------------------------------------------------------------------------------
    def _carrier(self, side):
        return side.run("cat", f"/sys/class/net/{side.dev}/operstate", check=False).stdout.strip()

    def wait_link(self, up, timeout=10.0):
        want = "up" if up else "down"
        deadline = time.monotonic() + timeout
        while any(self._carrier(s) != want for s in (self.a, self.b)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"link not {want} after {timeout:.0f} s: a {self._carrier(self.a)}, "
                                   f"b {self._carrier(self.b)}")
            time.sleep(0.02)

    def link_down(self):
        """Take both ends down: nothing crosses, neither side gets an error from the wire (no RST, no ICMP);
        TCP connections stay open and retransmit, as over a pulled cable. Addresses and routes come back
        with link_up()."""
        for s in (self.a, self.b):
            s.ip("link", "set", s.dev, "down")

    def link_up(self):
        for s in (self.a, self.b):
            s.ip("link", "set", s.dev, "up")
        self.wait_link(True)

    def cut(self, seconds, delay=0.0):
        """In a background thread: after @delay seconds take the link down, and bring it up @seconds later.
        Returns the Cut (.down and .up are Events with .t_down/.t_up their monotonic times; join() waits for
        the end). close() ends a cut early and brings the link up."""
        c = Cut(self, seconds, delay)
        self._cuts.append(c)
        c.start()
        return c


class Cut(threading.Thread):
    def __init__(self, pair, seconds, delay):
        super().__init__(daemon=True)
        self.pair, self.seconds, self.delay = pair, seconds, delay
        self.down, self.up = threading.Event(), threading.Event()
        self.t_down = self.t_up = None
        self.error = None
        self._cancel = threading.Event()

    def run(self):
        try:
            if self._cancel.wait(self.delay):
                return
            self.pair.link_down()
            self.t_down = time.monotonic()
            self.down.set()
            self._cancel.wait(self.seconds)
            self.pair.link_up()
            self.t_up = time.monotonic()
        except Exception as e:  # reported by join()
            self.error = e
        finally:
            self.up.set()

    def cancel(self):
        self._cancel.set()

    def join(self, timeout=None):
        super().join(timeout)
        if self.error is not None:
            raise self.error


@pytest.fixture
def netpair():
    """A NetPair deleted whatever happens; skips with the reason where namespaces or veth are unavailable."""
    try:
        pair = NetPair()
    except Unsupported as e:
        pytest.skip(str(e))
    try:
        yield pair
    finally:
        pair.close()
