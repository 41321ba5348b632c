"""Postcopy over a real network link (netns.py: the source in namespace a, the destination in b, joined by a veth
pair) and postcopy under TLS. A link cut during postcopy-active with io-timeout set on both ends: both pause
(a link down gives no RST, only the io-timeout notices) and migrate-recover + migrate resume=true finish the
migration once the link is back; the same with a second cut during the recovery handshake, and with two cuts in
a row. Then x509 TLS with postcopy-preempt across the namespaces: both channels run TLS (query-migrate's "tls",
and a capture on the destination's interface that sees every connection to its port open with a TLS handshake
record), through a migrate-pause and a recovery. And a destination that asks for nothing for a while (its
workload stopped) over a healthy link: io-timeout must not take that for a dead connection (it did, until the
destination's return path carried KEEPALIVEs when quiet and its preempt reader dropped the timeout). Recovery over UNIX and over loopback TCP, without a cut, is
test_postcopy.py's; this file does not repeat it.

What it does not do: delay or loss (no sch_netem on the kernels this runs on), or a cut of the preempt channel
alone (the link carries both)."""

import shutil
import subprocess
import sys
import time

import pytest

from ferrytest import free_port, wait_until
from netns import netpair  # noqa: F401 (the fixture)
from test_postcopy import BUSY, SLOW_PUSH, assert_dest_ok, caps, wait_status
from test_tls import CLIENT_DN, pki, x509  # noqa: F401 (pki: the fixture)

IO_TIMEOUT = 500          # ms, on both ends: a cut of 2 s is noticed on both sides well within it
CUT = 2.0


def start_pair(wl, pair, on, dst_objects=(), src_objects=(), dst_params=None, src_params=None):
    """A destination in b (-incoming defer, @on capabilities, @dst_params, listening on b's address) and a
    source in a with every page written once and the same capabilities; returns (src, dst, uri)."""
    uri = pair.tcp_uri(free_port())
    dst = wl.start("dst", *BUSY, *dst_objects, "-incoming", "defer", prefix=pair.b.prefix)
    caps(dst, **on)
    dst.set_params(**{"io-timeout": IO_TIMEOUT, **(dst_params or {})})
    dst.cmd("migrate-incoming", uri=uri)
    pair.wait_listening(uri)
    src = wl.start("src", *BUSY, *src_objects, prefix=pair.a.prefix)
    src.enable_events()
    pages = src.workload_info()["pages"]
    wait_until(lambda: src.workload_info()["pages-written"] >= pages, 30, "every page written once")
    caps(src, **on)
    src.set_params(**{"io-timeout": IO_TIMEOUT, "max-postcopy-bandwidth": SLOW_PUSH, **(src_params or {})})
    return src, dst, uri


def start_postcopy(src, dst, uri):
    src.migrate(uri)
    src.cmd("migrate-start-postcopy")
    wait_status(src, ("postcopy-active",))
    wait_status(dst, ("postcopy-active",))
    dst.wait_status(("running",))


def both_paused(src, dst, timeout=20):
    s = wait_status(src, ("postcopy-paused",), timeout)
    d = wait_status(dst, ("postcopy-paused",), timeout)
    return s, d


def recover(pair, src, dst):
    """migrate-recover on a new port of b's address, then migrate resume=true on the source."""
    uri = pair.tcp_uri(free_port())
    dst.cmd("migrate-recover", uri=uri)
    pair.wait_listening(uri)
    src.cmd("migrate", uri=uri, resume=True)
    return uri


def finish(src, dst):
    src.set_params(**{"max-postcopy-bandwidth": 0})
    info = src.wait_migration(timeout=30)
    assert info["status"] == "completed", (info, dst.query_migrate(), dst.stderr()[-3000:])
    d = dst.wait_migration(timeout=30)
    assert d["status"] == "completed", (d, dst.stderr()[-3000:])
    assert_dest_ok(dst)
    return info, d


def cut_and_pause(pair, src, dst, during="postcopy-active"):
    """Cut the link for CUT s during postcopy-active: both ends pause naming the io-timeout, while the link is
    still down; returns the two query-migrate replies."""
    st = src.query_migrate()["status"]
    assert st == during, st
    cut = pair.cut(CUT)
    assert cut.down.wait(10)
    s, d = both_paused(src, dst)
    paused_at = time.monotonic()
    assert not cut.up.is_set(), "the ends paused only after the link came back"
    cut.join(15)
    print(f"both ends paused {paused_at - cut.t_down:.2f} s into a {CUT} s cut")
    for info in (s, d):
        assert "io-timeout" in info.get("error-desc", ""), info
    assert src.status() == "postmigrate" and dst.status() == "running"
    return s, d


@pytest.mark.deadline(60)
def test_cut_in_postcopy_recovers(wl, netpair):
    """Also the capture's plaintext control for the TLS test: both connections, the first and the recovered
    one, open with the stream header's magic."""
    sniff = Sniffer(netpair)
    try:
        src, dst, uri = start_pair(wl, netpair, {"postcopy_ram": True})
        start_postcopy(src, dst, uri)
        time.sleep(0.5)
        cut_and_pause(netpair, src, dst)
        uri2 = recover(netpair, src, dst)
        wait_status(src, ("postcopy-active", "completed"))
        info, d = finish(src, dst)
    finally:
        flows = sniff.stop()
    magic = b"FER".hex()
    assert sorted(dport for sport, dport in flows) == sorted(int(u.rsplit(":", 1)[1]) for u in (uri, uri2)), flows
    assert all(first == magic for first in flows.values()), flows
    assert info["ram"]["postcopy-bytes"] > 0, info
    events = src.migration_events()
    assert events.count("postcopy-paused") == 1 and "postcopy-recover" in events, events


@pytest.mark.deadline(80)
def test_two_cuts_in_a_row(wl, netpair):
    """Cut, recover, cut again in the resumed postcopy, recover again."""
    src, dst, uri = start_pair(wl, netpair, {"postcopy_ram": True})
    start_postcopy(src, dst, uri)
    for n in (1, 2):
        time.sleep(0.5)
        cut_and_pause(netpair, src, dst)
        recover(netpair, src, dst)
        wait_status(src, ("postcopy-active",))
        wait_status(dst, ("postcopy-active",))
    finish(src, dst)
    events = src.migration_events()
    assert events.count("postcopy-paused") == 2, events


@pytest.mark.deadline(80)
def test_cut_during_recovery_handshake(wl, netpair):
    """The recovery handshake is slowed down by a 64 kbit/s link from b to a (the destination's RESUME_NEED
    bitmaps, 8 KiB for 256 MiB, take about a second), so that the source is surely in postcopy-recover, reading
    them, when the link goes down: both ends pause again (the source mid-handshake, the destination, which has
    written its half, in the resumed stream), and the next recovery, on a normal link, completes."""
    src, dst, uri = start_pair(wl, netpair, {"postcopy_ram": True})
    start_postcopy(src, dst, uri)
    time.sleep(0.5)
    cut_and_pause(netpair, src, dst)
    # tbf's burst at its minimum (a packet or two): the bitmaps do not pass in one burst.
    netpair.b.tc("qdisc", "replace", "dev", netpair.b.dev, "root", "tbf", "rate", "64kbit", "burst", "3kb",
                 "latency", "2s")
    recover(netpair, src, dst)
    wait_status(src, ("postcopy-recover",), 10)
    # The destination's half is written by now (8 KiB fit in its socket buffer): it is postcopy-active already,
    # its bitmaps still crossing the slow link; the source is the one mid-handshake.
    cut_and_pause(netpair, src, dst, during="postcopy-recover")
    netpair.unshape()
    events = src.migration_events()
    # Never back to postcopy-active between the two pauses: the cut broke the handshake itself.
    assert events[events.index("postcopy-recover"):].count("postcopy-active") == 0, events
    recover(netpair, src, dst)
    wait_status(src, ("postcopy-active", "completed"))
    finish(src, dst)


# Runs inside namespace b: every TCP connection to b's address whose first data segment it sees, as one line
# "SPORT DPORT FIRST-BYTES-HEX" (the first 3 bytes of the stream: 160301..160303 for a TLS handshake record).
SNIFFER = r"""
import socket, struct, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
s.bind((sys.argv[1], 0))
dst = socket.inet_aton(sys.argv[2])
print("ready", flush=True)
seen = set()
while True:
    try:
        f = s.recv(65535)
    except OSError:     # ENETDOWN once after the link went down: keep listening
        continue
    if f[12:14] != b"\x08\x00":
        continue
    ip = f[14:]
    ihl = (ip[0] & 15) * 4
    if ip[9] != 6 or ip[16:20] != dst:
        continue
    tcp = ip[ihl:struct.unpack("!H", ip[2:4])[0]]
    sport, dport = struct.unpack("!HH", tcp[:4])
    data = tcp[(tcp[12] >> 4) * 4:]
    if data and (sport, dport) not in seen:
        seen.add((sport, dport))
        print(sport, dport, data[:3].hex(), flush=True)
"""


class Sniffer:
    """What the first bytes of every connection to b's address were (SNIFFER in namespace b)."""

    def __init__(self, pair):
        self.proc = subprocess.Popen([*pair.b.prefix, sys.executable, "-c", SNIFFER, pair.b.dev, pair.b.addr],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        assert line.strip() == "ready", (line, self.proc.stderr.read() if self.proc.poll() is not None else "")

    def stop(self):
        """Stop it; returns {(sport, dport): first bytes hex}."""
        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=10)
        flows = {}
        for line in out.splitlines():
            sport, dport, first = line.split()
            flows[(int(sport), int(dport))] = first
        return flows


@pytest.mark.deadline(60)
@pytest.mark.skipif(shutil.which("certtool") is None, reason="certtool (gnutls-bin) is needed to make certificates")
def test_tls_postcopy_preempt_with_recovery(wl, netpair, pki):
    """x509 on both ends, postcopy-preempt on: the main channel and the preempt channel both open with a TLS
    handshake (on the wire, as a capture on b's interface sees them), before and after a migrate-pause and
    recovery; query-migrate's "tls" names the session on both ends, and the destination runs intact. The URI's
    host is b's address, which the server certificate does not carry: tls-hostname names it. io-timeout is off
    here (see test_quiet_destination_does_not_pause)."""
    on = {"postcopy_ram": True, "postcopy_preempt": True}
    sniff = Sniffer(netpair)
    try:
        src, dst, uri = start_pair(wl, netpair, on, dst_objects=x509(pki["server"], "server"),
                                   src_objects=x509(pki["client"], "client"),
                                   dst_params={"tls-creds": "tls0", "io-timeout": 0},
                                   src_params={"tls-creds": "tls0", "tls-hostname": "localhost", "io-timeout": 0})
        start_postcopy(src, dst, uri)
        wait_until(lambda: dst.query_migrate()["ram"]["postcopy-requests"] >= 20, 30, "page requests")
        info = src.query_migrate()
        assert "postcopy-preempt" in info["stream-features"], info
        assert info["tls"]["creds"] == "tls0" and "TLS1." in info["tls"]["protocol"], info
        assert info["tls"]["peer"] == "O=Ferry Test,CN=localhost", info
        assert dst.query_migrate()["tls"]["peer"] == CLIENT_DN, dst.query_migrate()

        src.cmd("migrate-pause")
        both_paused(src, dst)
        uri2 = recover(netpair, src, dst)
        wait_status(src, ("postcopy-active",))
        wait_status(dst, ("postcopy-active",))
        requests = dst.query_migrate()["ram"]["postcopy-requests"]
        wait_until(lambda: dst.query_migrate()["ram"]["postcopy-requests"] > requests + 10, 30,
                   "page requests after the recovery")
        info = src.query_migrate()
        assert info["tls"]["peer"] == "O=Ferry Test,CN=localhost", info
        assert dst.query_migrate()["tls"]["peer"] == CLIENT_DN
        finish(src, dst)
    finally:
        flows = sniff.stop()
    for u in (uri, uri2):
        port = int(u.rsplit(":", 1)[1])
        firsts = [first for (sport, dport), first in flows.items() if dport == port]
        # Two connections to each listener, main and preempt, each opening with a TLS handshake record.
        assert len(firsts) == 2, (u, flows)
        assert all(first in ("160301", "160302", "160303") for first in firsts), (u, flows)
    # Nothing else connected: no plaintext channel went elsewhere.
    assert len(flows) == 4, flows


@pytest.mark.deadline(60)
@pytest.mark.parametrize("case", ["both-ends", "preempt-destination-only"])
def test_quiet_destination_does_not_pause(wl, netpair, case):
    """io-timeout is about a connection that stopped moving, not about a destination that has nothing to ask:
    with the destination's workload stopped for 4 io-timeouts (no faults, so no page requests on the return
    path and no pages on the preempt channel) while the background push goes on, the link is fine and the
    migration must stay postcopy-active, and complete once the workload runs again. both-ends: io-timeout on
    both, no preempt (the source's return path is quiet). preempt-destination-only: io-timeout on the
    destination alone, postcopy-preempt on (its preempt channel is quiet)."""
    preempt = case.startswith("preempt")
    src_timeout = 0 if case == "preempt-destination-only" else IO_TIMEOUT
    src, dst, uri = start_pair(wl, netpair, {"postcopy_ram": True, "postcopy_preempt": preempt},
                               src_params={"io-timeout": src_timeout})
    start_postcopy(src, dst, uri)
    dst.cmd("stop")
    time.sleep(4 * IO_TIMEOUT / 1000)
    s, d = src.query_migrate(), dst.query_migrate()
    assert (s["status"], d["status"]) == ("postcopy-active", "postcopy-active"), (s, d, dst.stderr()[-2000:])
    dst.cmd("cont")
    # The workload faults again: its requests are served (over the preempt channel if there is one).
    requests = d["ram"]["postcopy-requests"]
    try:
        wait_until(lambda: dst.query_migrate()["ram"]["postcopy-requests"] > requests + 10, 5,
                   "page requests after cont")
    except TimeoutError as e:
        raise AssertionError(f"{e}: the destination's workload is stuck; destination {dst.query_migrate()}, "
                             f"source {src.query_migrate()}, destination stderr:\n{dst.stderr()[-2000:]}")
    dst.assert_advancing(timeout=5)
    finish(src, dst)
    assert "postcopy-paused" not in src.migration_events(), src.migration_events()
    assert "preempt channel" not in dst.stderr(), dst.stderr()[-2000:]
