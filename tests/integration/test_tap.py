"""ferry-workload's virtio-net device on a real TAP, across local migrations. Every test makes its own network
namespace (`ip netns add ferry-PID-RANDOM`, deleted whatever happens), runs the source and the destination inside
it (`ip netns exec`), gives the TAP 10.0.0.1/24 and the device 10.0.0.2, and pings the device with pinger.py
(raw ICMP, 100 requests per second) while it migrates over a UNIX socket. No packet leaves the namespace.

Checked: with backend-transfer the destination runs on the source's very TAP file (it never attaches one itself,
the TAP created by the source outlives it) and loses no ping beyond those sent during the downtime; the device
counters continue from the source's; a source resumed after it handed over cannot take the TAP back; without backend-transfer the destination attaches the TAP by name (plain and
multi_queue) and answers; a destination that is killed or refuses (a TAP of another name, other device state)
leaves the source running and answering, with every fd accounted for; a missing /dev/net/tun is a clear error.
The tests skip, naming the reason, without root, /dev/net/tun or `ip netns`.

The frames themselves (ARP and echo replies, checksums, malformed frames) are unit-tested in
tests/unit/workload/test-netframe.c; bad -netdev/-device values in test_cmdline.py.
"""

import json
import math
import os
import select
import subprocess
import sys
import time

import pytest

import ferrytest
from ferrytest import TAP, fd_tap_name, wait_listening, wait_until, workload_binary

pytestmark = pytest.mark.deadline(60)

DEVICE_IP = "10.0.0.2"
MAC = "52:54:00:12:34:56"
INTERVAL = 0.01           # seconds between echo requests
FINE_INTERVAL = 0.001     # ... where the downtime window must hold some
# Packets a migration may lose beyond those sent during the downtime the source reports: one request in flight at
# each edge of the window, and one for the wake-up of the destination's device thread on a busy 2-core machine.
SLACK = 3
FAST = 1 << 30
COMMON = ["-m", "32M", "-smp", "1", "-pattern", "ab", "-dirty-rate", "16"]
IFF_PERSIST = 0x0800
PINGER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pinger.py")


def nic(ifname=TAP, mac=MAC, ip=DEVICE_IP):
    return ["-netdev", f"tap,id=n0,ifname={ifname},script=no", "-device", f"virtio-net,netdev=n0,mac={mac},ip={ip}"]


@pytest.fixture
def tapwl(netns, tmpdir_short):
    """Workloads inside the namespace; stopped and checked (sanitizers) before the namespace goes."""
    ws = ferrytest.WorkloadSet(tmpdir_short)

    def start(name, *args):
        return ws.start(name, *args, prefix=netns.prefix)

    start.tmpdir = tmpdir_short
    yield start
    problems = ws.close()
    assert not problems, "\n".join(problems)


class Pinger:
    """pinger.py inside the namespace, pinging the device."""

    def __init__(self, ns, address=DEVICE_IP, interval=INTERVAL):
        self.proc = subprocess.Popen([*ns.prefix, sys.executable, PINGER, address, str(interval)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        self.result = None

    def wait_up(self, timeout=10.0):
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if line.strip() != "up":
            self.proc.kill()
            raise AssertionError(f"no echo reply within {timeout} s ({line!r}); stderr: {self.proc.stderr.read()}")

    def stop(self):
        out, err = self.proc.communicate("stop\n", timeout=20)
        assert self.proc.returncode == 0, err
        self.result = json.loads(out.strip().splitlines()[-1])
        return self.result

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def netdev(w):
    (nd,) = w.cmd("query-netdev")
    return nd


def report(what, res, downtime=None):
    """The measurement, printed for `pytest -s` and for docs/local-migration.md."""
    rtts = list(res["rtts"].values())
    late = sum(1 for r in rtts if r > 0.001)
    print(f"\n{what}: sent {res['sent']}, received {res['received']}, lost {len(res['lost'])}"
          f"{'' if downtime is None else f', downtime {downtime} ms'}, answered after more than 1 ms {late}, "
          f"max rtt {max(rtts) * 1000:.1f} ms")


def ping_during(ns, action, settle=0.3, after=0.5, interval=INTERVAL):
    """Ping the device, run @action() once replies flow, keep pinging @after seconds more; the pinger's result."""
    p = Pinger(ns, interval=interval)
    try:
        p.wait_up()
        time.sleep(settle)
        value = action()
        time.sleep(after)
        return p.stop(), value
    finally:
        p.close()


def test_backend_transfer_keeps_the_tap_and_the_pings(netns, tapwl):
    uri = f"unix:{os.path.join(tapwl.tmpdir, 'mig.sock')}"
    # No TAP exists yet: the source creates it, not persistent, so it lives exactly as long as a file is attached.
    src = tapwl("src", *COMMON, *nic())
    netns.configure_tap()
    assert netns.tun_flags() & IFF_PERSIST == 0
    assert netdev(src)["attached"] and netdev(src)["opens"] == 1
    dst = tapwl("dst", *COMMON, *nic(), "-incoming", "config:backend-transfer.0=virtio-net-tap", "-incoming", uri)
    wait_listening(uri)
    # backend-transfer at start-up with -incoming: the destination attaches nothing itself.
    nd = netdev(dst)
    assert not nd["attached"] and nd["opens"] == 0 and nd["adopted"] == 0, nd
    src.wait_status(("running",))

    def migrate():
        src.set_params(**{"backend-transfer": ["virtio-net-tap"], "max-bandwidth": FAST})
        src.migrate(uri)
        info = src.wait_migration()
        assert info["status"] == "completed", info
        dst.wait_status(("running",))
        return info

    # The downtime of a local migration is a few milliseconds: pings every millisecond put some inside it.
    res, info = ping_during(netns, migrate, interval=FINE_INTERVAL)
    downtime = info["downtime"]
    report("backend-transfer on", res, downtime)
    assert info["fds-passed"] == 1, info
    allowed = math.ceil(downtime / (FINE_INTERVAL * 1000)) + SLACK
    assert len(res["lost"]) <= allowed, (res["lost"], downtime)
    # The pings after the switchover were answered by the destination, on the source's file.
    nd = netdev(dst)
    assert nd["attached"] and nd["opens"] == 0 and nd["adopted"] == 1, nd
    assert fd_tap_name(dst.proc.pid, nd["fd"]) == TAP
    # The source let go of the TAP once the destination had acknowledged; its counters stopped at the switchover.
    snd = netdev(src)
    assert not snd["attached"] and snd["opens"] == 1, snd
    assert 0 < snd["echo-replies"] < res["received"]
    # State migrated: the destination's counters went on from the source's, so they count every reply of the run.
    assert nd["echo-replies"] == res["received"], (nd, res["received"])
    assert nd["rx-frames"] > snd["rx-frames"] and nd["tx-frames"] > snd["tx-frames"]
    assert nd["tx-errors"] == 0

    # The source resumed anyway ("cont" is allowed in postmigrate) tries to attach the TAP by name, which is busy
    # while the destination holds it: it gives up with the reason, and the destination keeps answering every ping.
    def resume_source():
        src.cmd("cont")
        src.wait_status(("running",))
        return wait_until(lambda: netdev(src).get("error"), 10, "the resumed source to give up the busy TAP")

    res2, error = ping_during(netns, resume_source, settle=0.0, after=0.1)
    assert "busy" in error, error
    assert not netdev(src)["attached"] and netdev(src)["opens"] == 1
    assert res2["received"] == res2["sent"] and not res2["lost"], res2
    assert netdev(dst)["echo-replies"] == res["received"] + res2["received"]

    # The source goes away: the TAP it created stays (the destination holds the same file) and keeps answering.
    src.stop_process()
    assert netns.tun_flags() is not None, "the TAP disappeared with the source"
    res3, _ = ping_during(netns, lambda: None, settle=0.0, after=0.3)
    assert res3["received"] == res3["sent"] and not res3["lost"], res3
    dst.assert_pattern_ok()


@pytest.mark.parametrize("queues,dst_lists_it", [("single", False), ("multi_queue", False), ("single", True)],
                         ids=["single", "multi_queue", "only-destination-lists-it"])
def test_without_backend_transfer_destination_attaches_by_name(netns, tapwl, queues, dst_lists_it):
    """The source does not pass the fd. only-destination-lists-it: the destination's backend-transfer lists
    virtio-net-tap, so it waits for an fd that never comes; it learns that by the end of the load and attaches the
    TAP by name like the others."""
    uri = f"unix:{os.path.join(tapwl.tmpdir, 'mig.sock')}"
    # Without backend-transfer the TAP must outlive the source's fd: a persistent one, as QEMU users make it.
    netns.run("ip", "tuntap", "add", TAP, "mode", "tap", *(["multi_queue"] if queues == "multi_queue" else []))
    netns.configure_tap()
    src = tapwl("src", *COMMON, *nic())
    transfer = ["-incoming", "config:backend-transfer.0=virtio-net-tap"] if dst_lists_it else []
    dst = tapwl("dst", *COMMON, *nic(), *transfer, "-incoming", uri)
    wait_listening(uri)
    assert not netdev(dst)["attached"]
    src.wait_status(("running",))
    marks = {}

    def migrate():
        src.set_params(**{"max-bandwidth": FAST})
        src.migrate(uri)
        info = src.wait_migration()
        assert info["status"] == "completed", info
        dst.wait_status(("running",))
        wait_until(lambda: netdev(dst)["attached"], 10, "the destination to attach the TAP")
        marks["attached"] = time.monotonic()
        return info

    res, info = ping_during(netns, migrate)
    report(f"backend-transfer off ({queues}{', destination lists it' if dst_lists_it else ''})", res,
           info["downtime"])
    assert "fds-passed" not in info, info
    nd = netdev(dst)
    assert nd["opens"] == 1 and nd["adopted"] == 0, nd
    assert nd["multi-queue"] == (queues == "multi_queue"), nd
    assert fd_tap_name(dst.proc.pid, nd["fd"]) == TAP
    assert not netdev(src)["attached"]
    # Every request sent once the destination had attached the TAP was answered.
    sent = res["send-times"]
    late_losses = [s for s in res["lost"] if sent[s] > marks["attached"]]
    assert not late_losses, (late_losses, res["lost"])
    assert len(res["lost"]) < len(sent) // 4, res["lost"]
    assert nd["echo-replies"] == res["received"], (nd, res["received"])


def start_ping_source(netns, tapwl):
    src = tapwl("src", "-m", "64M", "-smp", "1", "-pattern", "random", "-dirty-rate", "8", *nic())
    netns.configure_tap()
    src.wait_status(("running",))
    return src


@pytest.mark.parametrize("how", ["killed", "refuses-fd", "refuses-state"])
def test_failed_migration_leaves_source_answering(netns, tapwl, how):
    """killed: the destination dies during precopy. refuses-fd: its netdev names another TAP, so its set_fd
    refuses the fd (and ferry closes it). refuses-state: it adopts the fd, then refuses the device state (another
    MAC); it keeps the fd it was given (include/ferry/backend.h), and nothing else."""
    uri = f"unix:{os.path.join(tapwl.tmpdir, 'mig.sock')}"
    src = start_ping_source(netns, tapwl)
    args = ["-m", "64M", "-smp", "1", "-pattern", "random", "-dirty-rate", "8"]
    if how == "killed":
        dst = tapwl("dst", *args, *nic(), "-incoming", uri)
    else:
        dst = tapwl("dst", *args, *(nic(ifname="ftap9") if how == "refuses-fd" else nic(mac="52:54:00:12:34:57")),
                    "-incoming", "defer")
    dst.set_params(**{"backend-transfer": ["virtio-net-tap"]})
    dst_fds = dst.open_fds()
    if how != "killed":
        dst.cmd("migrate-incoming", uri=uri, **{"exit-on-error": False})
    wait_listening(uri)
    src_fds = src.open_fds()

    def migrate():
        # killed: slow enough (64 MiB of random pages at 16 MiB/s) to kill the destination in the middle.
        src.set_params(**{"backend-transfer": ["virtio-net-tap"],
                          "max-bandwidth": 16 << 20 if how == "killed" else FAST})
        src.migrate(uri)
        if how == "killed":
            wait_until(lambda: src.query_migrate().get("ram", {}).get("transferred", 0) > 4 << 20, 20,
                       "the migration to be under way")
            dst.kill()
        info = src.wait_migration()
        assert info["status"] == "failed", info
        src.wait_status(("running",))
        return info

    res, info = ping_during(netns, migrate)
    report(f"failed migration ({how})", res)
    if how == "refuses-fd":
        assert "this netdev has ifname=ftap9" in info["error-desc"], info
    elif how == "refuses-state":
        assert "mac" in info["error-desc"], info
    # The source never lost its TAP: everything sent was answered (frames that came while it was stopped for
    # the switchover waited in the TAP's queue).
    assert len(res["lost"]) <= SLACK, res["lost"]
    snd = netdev(src)
    assert snd["attached"] and snd["opens"] == 1 and snd["adopted"] == 0, snd
    assert snd["echo-replies"] == res["received"], (snd, res["received"])
    wait_until(lambda: src.open_fds() == src_fds, 10, "source fds back to where they were")
    src.assert_pattern_ok()
    if how == "killed":
        return
    assert dst.wait_migration()["status"] == "failed"
    nd = netdev(dst)
    if how == "refuses-fd":
        # The fd went back to ferry, which closed it; the listener and the connection are gone too.
        assert not nd["attached"] and nd["adopted"] == 0, nd
        wait_until(lambda: dst.open_fds() == dst_fds, 10, "destination fds back to where they were")
    else:
        assert nd["attached"] and nd["adopted"] == 1 and nd["opens"] == 0, nd
        wait_until(lambda: dst.open_fds() == dst_fds + 1, 10, "destination fds: one more, the TAP it kept")
        assert fd_tap_name(dst.proc.pid, nd["fd"]) == TAP


@pytest.mark.parametrize("role", ["source", "destination"])
def test_missing_dev_net_tun(netns, tmpdir_short, role):
    """/dev/net/tun hidden under an empty tmpfs (ip netns exec runs in a mount namespace of its own, so the host
    does not see it): the workload refuses to start, naming the device node."""
    argv = [workload_binary(), "-m", "16M", *nic()] + (["-incoming", "defer"] if role == "destination" else [])
    p = subprocess.run(["ip", "netns", "exec", netns.name, "sh", "-c", 'mount -t tmpfs none /dev/net && exec "$@"',
                        "sh", *argv], capture_output=True, text=True, timeout=20)
    assert p.returncode != 0, p
    assert "/dev/net/tun" in p.stderr and "missing" in p.stderr, p.stderr
    assert ferrytest.sanitizer_report(p.stderr) is None, p.stderr
