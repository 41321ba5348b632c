"""Successful migrations between two real ferry-workload processes: a running A-B workload over UNIX, TCP/IPv4 and
TCP/IPv6; a random pattern with a dirty rate; stopped workloads compared by RAM digest; each dirty tracker; and
the MIGRATION / STOP / RESUME events. Failure, cancel and convergence cases are in test_failures.py."""

import os
import time

import pytest

from ferrytest import free_port, ipv6_loopback_works, wait_listening, wait_until

# A running A-B workload small enough for ASan on 2 cores, with a dirty rate that converges at the bandwidth set
# below.
AB = ["-m", "64M", "-smp", "2", "-pattern", "ab", "-dirty-rate", "32"]
FAST = 1 << 30  # max-bandwidth for tests that are not about bandwidth: 1 GiB/s


def make_uri(kind, tmpdir):
    if kind == "unix":
        return f"unix:{os.path.join(tmpdir, 'mig.sock')}"
    if kind == "tcp4":
        return f"tcp:127.0.0.1:{free_port()}"
    if kind == "tcp6":
        if not ipv6_loopback_works():
            pytest.skip("IPv6 loopback (::1) does not work on this machine")
        import socket
        return f"tcp:[::1]:{free_port(socket.AF_INET6, '::1')}"
    raise ValueError(kind)


def start_pair(workload, args, uri, src_extra=(), dst_extra=()):
    """A source with @args and a destination with the same @args listening on @uri."""
    dst = workload("dst", *args, *dst_extra, "-incoming", uri)
    wait_listening(uri)
    src = workload("src", *args, *src_extra)
    return src, dst


def migrate_and_wait(src, uri, bandwidth=FAST):
    src.set_params(**{"max-bandwidth": bandwidth})
    src.migrate(uri)
    info = src.wait_migration()
    assert info["status"] == "completed", f"migration did not complete: {info}"
    return info


def check_completed_stats(info, ram_size):
    assert info["total-time"] > 0, info
    assert "downtime" in info and info["downtime"] >= 0, info
    assert "setup-time" in info, info
    ram = info["ram"]
    assert ram["total"] == ram_size, info
    assert ram["page-size"] > 0, info
    assert ram["transferred"] > 0, info
    assert ram["remaining"] == 0, info
    assert ram["dirty-sync-count"] >= 1, info
    assert ram["normal"] > 0 and ram["normal-bytes"] == ram["normal"] * ram["page-size"], info


def check_running_destination(src, dst, check_passes=False):
    src.wait_status(("postmigrate",))
    dst.wait_status(("running",))
    dst.assert_pattern_ok()
    if check_passes:
        before = dst.workload_info()
        wait_until(lambda: dst.workload_info()["passes"] > before["passes"], 40,
                   f"destination passes to advance beyond {before['passes']}")
    dst.assert_advancing()
    # Checked again while the workers keep writing: the invariant must hold at any instant.
    dst.assert_pattern_ok()


@pytest.mark.parametrize("transport", ["unix", "tcp4", "tcp6"])
def test_running_ab(workload, transport):
    uri = make_uri(transport, workload.tmpdir)
    src, dst = start_pair(workload, AB, uri)
    src.wait_status(("running",))
    assert dst.status() == "inmigrate"
    # Let the workers write at least half of their RAM (pages never written cost nothing to migrate).
    wait_until(lambda: src.workload_info()["pages-written"] >= (32 << 20) // 4096, 20, "half the RAM written")
    info = migrate_and_wait(src, uri)
    check_completed_stats(info, 64 << 20)
    assert info["ram"]["normal"] >= (32 << 20) // 4096, info
    check_running_destination(src, dst, check_passes=True)
    # The workload's identity came along.
    s, d = src.workload_info(), dst.workload_info()
    assert (d["pattern"], d["smp"], d["pages"]) == ("ab", 2, s["pages"])


def test_random_with_dirty_rate(workload):
    args = ["-m", "128M", "-smp", "2", "-pattern", "random", "-seed", "7", "-dirty-rate", "20"]
    uri = make_uri("unix", workload.tmpdir)
    src, dst = start_pair(workload, args, uri)
    time.sleep(0.5)
    src.assert_pattern_ok()
    info = migrate_and_wait(src, uri)
    check_completed_stats(info, 128 << 20)
    check_running_destination(src, dst)
    assert dst.workload_info()["seed"] == 7


def test_stopped_prelaunch(workload):
    """-S on both sides: the RAM digests must be equal and the destination must not start running."""
    args = ["-m", "64M", "-smp", "2", "-pattern", "random", "-seed", "3", "-S"]
    uri = make_uri("unix", workload.tmpdir)
    src, dst = start_pair(workload, args, uri)
    assert src.status() == "prelaunch"
    before = src.digest()
    migrate_and_wait(src, uri)
    src.wait_status(("postmigrate",))
    # The source reports completion when the destination has acknowledged, so the load is finished here.
    assert dst.status() != "running"
    time.sleep(0.5)
    status = dst.status()
    assert status in ("paused", "prelaunch"), f"-S destination is {status!r} after the migration"
    s, d = src.digest(), dst.digest()
    assert s == before, "the source RAM changed although its workload never ran"
    assert d["digest"] == s["digest"] and d["size"] == s["size"] == 64 << 20, (s, d)


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_preallocated_destination(wl):
    """-mem-prealloc (QEMU's option): the destination's RAM is resident before any data arrives, and a migration
    into it gives the source's bytes, zero pages included (half the pages are zero; preallocation must not leave
    anything but zeros in them). The source's RAM is in 4 KiB pages (FERRY_THP=0), so that its untouched half is
    not resident and the residency check means something: with transparent huge pages (the default) writing every
    other page makes all of it resident."""
    args = ["-m", "64M", "-pattern", "half", "-seed", "5", "-S"]
    uri = make_uri("unix", wl.tmpdir)
    dst = wl.start("dst", *args, "-mem-prealloc", "-incoming", uri)
    wait_listening(uri)
    src = wl.start("src", *args, env=dict(os.environ, FERRY_THP="0"))
    assert rss_bytes(dst.proc.pid) >= 64 << 20, "the destination's RAM is not resident"
    assert rss_bytes(src.proc.pid) < 64 << 20, "RAM resident without -mem-prealloc (the check proves nothing)"
    migrate_and_wait(src, uri)
    s, d = src.digest(), dst.digest()
    assert d == s, (s, d)
    dst.assert_pattern_ok()


def test_stopped_after_running(workload):
    """A workload that ran and was stopped with QMP stop: digests equal, the destination stays paused until cont."""
    args = ["-m", "64M", "-smp", "2", "-pattern", "random", "-seed", "11", "-dirty-rate", "50"]
    uri = make_uri("unix", workload.tmpdir)
    src, dst = start_pair(workload, args, uri, dst_extra=["-S"])
    src.assert_advancing()
    src.cmd("stop")
    assert src.status() == "paused"
    migrate_and_wait(src, uri)
    src.wait_status(("postmigrate",))
    time.sleep(0.3)
    assert dst.status() != "running"
    s, d = src.digest(), dst.digest()
    assert d == s, (s, d)
    dst.assert_pattern_ok()
    dst.cmd("cont")
    dst.wait_status(("running",))
    dst.assert_advancing()
    dst.assert_pattern_ok()


@pytest.mark.parametrize("tracker", ["explicit", "none", "uffd-wp", "auto"])
def test_dirty_trackers(workload, tracker):
    uri = make_uri("unix", workload.tmpdir)
    src, dst = start_pair(workload, AB + ["-dirty-tracker", tracker], uri)
    src.assert_advancing()
    src.set_params(**{"max-bandwidth": FAST})
    src.migrate(uri)
    info = src.wait_migration()
    if tracker == "uffd-wp" and info["status"] == "failed" and "userfaultfd" in info.get("error-desc", "").lower():
        pytest.skip(f"userfaultfd write-protect tracking is not available here: {info['error-desc']}")
    assert info["status"] == "completed", info
    expected = {"explicit": {"explicit"}, "none": {"none"}, "uffd-wp": {"uffd-wp"},
                "auto": {"uffd-wp", "none"}}[tracker]
    assert info.get("dirty-tracker") in expected, f"query-migrate dirty-tracker: {info.get('dirty-tracker')!r}"
    check_running_destination(src, dst)


def test_events(workload):
    uri = make_uri("unix", workload.tmpdir)
    src, dst = start_pair(workload, AB, uri)
    src.enable_events()
    dst.enable_events()
    caps = {c["capability"]: c["state"] for c in src.cmd("query-migrate-capabilities")}
    assert caps.get("events") is True, caps
    migrate_and_wait(src, uri)
    dst.wait_status(("running",))
    wait_until(lambda: dst.qmp.events_named("RESUME"), 10, "RESUME on the destination")
    wait_until(lambda: "completed" in dst.qmp.migration_events(), 10, "MIGRATION completed on the destination")

    statuses = src.qmp.migration_events()
    assert statuses and statuses[-1] == "completed", statuses
    for earlier, later in (("setup", "active"), ("active", "completed")):
        assert earlier in statuses and later in statuses, statuses
        assert statuses.index(earlier) < statuses.index(later), statuses
    assert not {"failed", "cancelled", "cancelling"} & set(statuses), statuses
    stops = src.qmp.events_named("STOP")
    assert len(stops) == 1, src.qmp.events
    for e in src.qmp.events + dst.qmp.events:
        ts = e.get("timestamp")
        assert ts and ts["seconds"] > 1_600_000_000 and 0 <= ts["microseconds"] < 1_000_000, e
    # The source stopped for switchover before it reported completion.
    stop_i = src.qmp.events.index(stops[0])
    done_i = next(i for i, e in enumerate(src.qmp.events)
                  if e["event"] == "MIGRATION" and e["data"]["status"] == "completed")
    assert stop_i < done_i, src.qmp.events
    # The source never resumed: it ends in postmigrate.
    assert not src.qmp.events_named("RESUME"), src.qmp.events


def test_events_off_by_default(workload):
    uri = make_uri("unix", workload.tmpdir)
    src, dst = start_pair(workload, AB, uri)
    caps = {c["capability"]: c["state"] for c in src.cmd("query-migrate-capabilities")}
    assert caps.get("events") is False, caps
    migrate_and_wait(src, uri)
    src.wait_status(("postmigrate",))
    src.qmp.pump(0.5)
    assert src.qmp.migration_events() == [], src.qmp.events
    # STOP is not a migration event: it is sent regardless of the capability.
    assert src.qmp.events_named("STOP"), src.qmp.events


def test_chained_migration(workload):
    """After a completed migration the destination is an ordinary running workload that can migrate again."""
    uri1 = make_uri("unix", workload.tmpdir)
    src, dst = start_pair(workload, AB, uri1)
    migrate_and_wait(src, uri1)
    dst.wait_status(("running",))
    uri2 = f"unix:{os.path.join(workload.tmpdir, 'mig2.sock')}"
    dst2 = workload("dst2", *AB, "-incoming", uri2)
    wait_listening(uri2)
    migrate_and_wait(dst, uri2)
    check_running_destination(dst, dst2)
