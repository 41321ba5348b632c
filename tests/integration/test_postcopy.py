"""Postcopy (issue 18) with real ferry-workload processes: a migration that precopy cannot finish completes after
migrate-start-postcopy, pure postcopy, postcopy-preempt and the fault counters, a destination without postcopy,
the refusals, what a killed end leaves, and recovery after the connection breaks (once, twice, during the
recovery handshake, over TCP and UNIX). A cut link and TLS are test_postcopy_net.py's. Not a benchmark:
bench/postcopy-bench.py measures."""
import os
import time

import pytest

from ferrytest import QMPError, free_port, wait_listening, wait_until

# Two unthrottled A-B writers dirty all of it many times a second: far above the links used here.
BUSY = ["-m", "256M", "-smp", "2", "-pattern", "ab", "-dirty-rate", "0"]
SLOW_LINK = 32 << 20          # precopy at 32 MiB/s never catches up with BUSY
SLOW_PUSH = 8 << 20           # a background push that takes ~30 s, so that postcopy-active lasts


def unix_uri(workload, name="mig.sock"):
    return f"unix:{os.path.join(workload.tmpdir, name)}"


def caps(w, **on):
    w.cmd("migrate-set-capabilities",
          capabilities=[{"capability": k.replace("_", "-"), "state": v} for k, v in on.items()])


def postcopy_pair(workload, uri, args=BUSY, dst_caps=None, src_caps=None, dst_extra=()):
    # -incoming defer: postcopy-preempt, as in QEMU, is set before the destination listens.
    dst = workload("dst", *args, *dst_extra, "-incoming", "defer")
    dst.enable_events()
    caps(dst, **(dst_caps if dst_caps is not None else {"postcopy_ram": True}))
    dst.cmd("migrate-incoming", uri=uri)
    wait_listening(uri)
    src = workload("src", *args)
    pages = src.workload_info()["pages"]
    wait_until(lambda: src.workload_info()["pages-written"] >= pages, 30, "every page written once")
    src.enable_events()
    caps(src, **(src_caps if src_caps is not None else {"postcopy_ram": True}))
    return src, dst


def wait_status(w, statuses, timeout=60):
    last = {}

    def check():
        nonlocal last
        last = w.query_migrate()
        return last.get("status") in statuses

    try:
        wait_until(check, timeout, f"{w.name}: migration status in {statuses}", interval=0.05)
    except TimeoutError as e:
        raise TimeoutError(f"{e}; last query-migrate: {last}") from None
    return last


def assert_dest_ok(dst, running=True):
    dst.wait_status(("running",) if running else ("paused",))
    if not running:
        dst.cmd("cont")
    dst.assert_pattern_ok()
    dst.assert_advancing()


@pytest.mark.parametrize("transport", ["unix"])  # tcp: test_recovery and test_postcopy_net.py
def test_non_converging_finishes_with_postcopy(workload, transport):
    """512 MiB written by two unthrottled writers over a 128 MiB/s link: each pass finds it all dirty again."""
    uri = unix_uri(workload) if transport == "unix" else f"tcp:127.0.0.1:{free_port()}"
    busy = ["-m", "512M", "-smp", "2", "-pattern", "ab", "-dirty-rate", "0"]
    src, dst = postcopy_pair(workload, uri, args=busy)
    src.set_params(**{"max-bandwidth": 128 << 20, "downtime-limit": 20})
    src.migrate(uri)
    # Bounded precopy: several passes, and still far from the downtime limit.
    wait_until(lambda: src.query_migrate()["ram"]["dirty-sync-count"] >= 2, 60, "two passes")
    info = src.query_migrate()
    assert info["status"] == "active" and info["expected-downtime"] > 20, info
    src.cmd("migrate-start-postcopy")
    info = src.wait_migration()
    assert info["status"] == "completed", info
    assert src.status() == "postmigrate"
    ram = info["ram"]
    assert ram["postcopy-bytes"] > 0 and ram["remaining"] == 0, info
    assert info["downtime"] < 5000, info
    d = dst.wait_migration()
    assert d["status"] == "completed", d
    assert d["ram"]["postcopy-bytes"] > 0
    assert_dest_ok(dst)
    assert src.migration_events() == ["setup", "active", "postcopy-active", "completed"]
    assert dst.migration_events() == ["setup", "active", "postcopy-active", "completed"]


@pytest.mark.parametrize("state", ["running", "paused"])
def test_pure_postcopy(workload, state):
    """migrate-start-postcopy right after migrate: no precopy pass at all, every page comes after the switch."""
    uri = unix_uri(workload)
    src, dst = postcopy_pair(workload, uri)
    if state == "paused":
        src.cmd("stop")
    src.migrate(uri)
    src.cmd("migrate-start-postcopy")
    info = src.wait_migration()
    assert info["status"] == "completed", info
    assert info["ram"]["precopy-bytes"] < (1 << 20), info  # the opening records only
    ram = info["ram"]
    assert ram["postcopy-bytes"] >= 128 << 20, info  # what the workers had written: most of RAM
    assert dst.wait_migration()["status"] == "completed"
    assert_dest_ok(dst, running=state == "running")


@pytest.mark.parametrize("preempt", [False, True])
def test_requests_and_blocktime(workload, preempt):
    """The destination's workers fault on missing pages while a slow background push runs: the faults become
    requests, the counters and the blocktime figures are non-zero and plausible, and with postcopy-preempt the
    requested pages come on their own channel."""
    uri = unix_uri(workload)
    on = {"postcopy_ram": True, "postcopy_preempt": preempt}
    src, dst = postcopy_pair(workload, uri, dst_caps={**on, "postcopy_blocktime": True}, src_caps=on)
    src.set_params(**{"max-postcopy-bandwidth": 16 << 20})
    src.migrate(uri)
    src.cmd("migrate-start-postcopy")
    wait_status(src, ("postcopy-active",))
    # The workers run on the destination while most pages are still missing: they ask for some.
    wait_until(lambda: dst.query_migrate()["ram"]["postcopy-requests"] >= 20, 30, "page requests")
    features = src.query_migrate()["stream-features"]
    assert ("postcopy-preempt" in features) == preempt, features
    info = src.wait_migration(timeout=120)
    assert info["status"] == "completed", info
    d = dst.wait_migration()
    assert d["status"] == "completed", d
    assert info["ram"]["postcopy-requests"] >= 20, info
    assert d["ram"]["postcopy-requests"] >= info["ram"]["postcopy-requests"] * 0.5, (d, info)
    # Blocktime (with the capability, on the destination): both workers were vCPUs, each waited.
    assert len(d["postcopy-vcpu-blocktime"]) == len(d["postcopy-vcpu-latency"]) == 2, d
    assert all(lat > 0 for lat in d["postcopy-vcpu-latency"]), d  # each worker waited at least once
    assert sum(d["postcopy-vcpu-blocktime"]) <= d["total-time"] * 2, d
    assert 0 < d["postcopy-latency"] < 10 * 10**9, d
    assert sum(d["postcopy-latency-dist"]) == d["postcopy-faults"] > 0, d
    assert d["postcopy-latency-p50"] <= d["postcopy-latency-p99"], d
    assert "postcopy-blocktime" not in info  # the source does not measure it
    assert_dest_ok(dst)


def test_destination_without_postcopy(workload):
    """A destination that has postcopy-ram off negotiates it away: migrate-start-postcopy fails with the reason
    and the precopy goes on (and finishes once the limits allow)."""
    uri = unix_uri(workload)
    src, dst = postcopy_pair(workload, uri, dst_caps={"postcopy_ram": False})
    src.set_params(**{"max-bandwidth": SLOW_LINK, "downtime-limit": 20})
    src.migrate(uri)
    wait_until(lambda: src.query_migrate()["status"] == "active", 30, "active")
    with pytest.raises(QMPError) as e:
        src.cmd("migrate-start-postcopy")
    assert "did not accept postcopy-ram" in str(e.value)
    assert "postcopy-ram" not in src.query_migrate()["stream-features"]
    assert src.query_migrate()["status"] == "active"
    src.cmd("stop")  # let the precopy finish
    src.set_params(**{"max-bandwidth": 0, "downtime-limit": 2000})
    assert src.wait_migration()["status"] == "completed"
    dst.wait_status(("paused",))


def test_refusals(workload, tmp_path):
    src = workload("src", "-m", "32M")
    with pytest.raises(QMPError) as e:
        src.cmd("migrate-start-postcopy")
    assert "Enable postcopy" in str(e.value)
    caps(src, postcopy_ram=True)
    with pytest.raises(QMPError) as e:
        src.cmd("migrate-start-postcopy")
    assert "needs an outgoing migration" in str(e.value)
    for uri in (f"file:{tmp_path}/x", "exec:cat > /dev/null"):
        with pytest.raises(QMPError) as e:
            src.migrate(uri)
        assert "return path" in str(e.value), e.value
    for cmd in ("migrate-pause",):
        with pytest.raises(QMPError) as e:
            src.cmd(cmd)
        assert "only allowed in postcopy" in str(e.value)
    with pytest.raises(QMPError) as e:
        src.cmd("migrate", uri="unix:/nonexistent", resume=True)
    assert "no paused migration" in str(e.value)
    assert src.status() == "running"


def slow_postcopy(workload, uri, preempt=False):
    on = {"postcopy_ram": True, "postcopy_preempt": preempt}
    src, dst = postcopy_pair(workload, uri, dst_caps=on, src_caps=on)
    src.set_params(**{"max-postcopy-bandwidth": SLOW_PUSH})
    src.migrate(uri)
    src.cmd("migrate-start-postcopy")
    wait_status(src, ("postcopy-active",))
    wait_status(dst, ("postcopy-active",))
    dst.wait_status(("running",))
    return src, dst


def test_cancel_refused_in_postcopy(workload):
    uri = unix_uri(workload)
    src, dst = slow_postcopy(workload, uri)
    with pytest.raises(QMPError) as e:
        src.cmd("migrate_cancel")
    assert "already runs the workload" in str(e.value)
    src.set_params(**{"max-postcopy-bandwidth": 0})
    assert src.wait_migration()["status"] == "completed"
    assert_dest_ok(dst)


def test_destination_killed_in_postcopy(workload):
    """The state is split: the source says so, stays stopped, and never resumes a stale copy on its own."""
    uri = unix_uri(workload)
    src, dst = slow_postcopy(workload, uri)
    dst.kill()
    info = wait_status(src, ("postcopy-paused",))
    assert "state split" in info.get("error-desc", ""), info
    time.sleep(1)
    assert src.query_migrate()["status"] == "postcopy-paused"
    assert src.status() == "postmigrate"


def test_source_killed_in_postcopy(workload):
    """The destination pauses, alive, its workload waiting for pages, not crashed; it still answers QMP."""
    uri = unix_uri(workload)
    src, dst = slow_postcopy(workload, uri)
    src.kill()
    info = wait_status(dst, ("postcopy-paused",))
    assert "migrate-recover" in info.get("error-desc", ""), info
    time.sleep(1)
    assert dst.alive()
    assert dst.status() == "running"
    assert dst.query_migrate()["status"] == "postcopy-paused"


def recover(src, dst, uri):
    dst.cmd("migrate-recover", uri=uri)
    wait_listening(uri)
    src.cmd("migrate", uri=uri, resume=True)


# Each transport once, each with and without preempt across the two (the suite's time on 2 cores is bounded).
@pytest.mark.parametrize("transport,preempt", [("unix", False), ("tcp", True)])
def test_recovery(workload, transport, preempt):
    """migrate-pause cuts the connection during postcopy-active (twice): both ends pause, nothing is lost, and
    migrate-recover + migrate resume=true finish the migration over a new address."""
    def new_uri(n):
        return unix_uri(workload, f"rec{n}.sock") if transport == "unix" else f"tcp:127.0.0.1:{free_port()}"

    uri = new_uri(0)
    src, dst = slow_postcopy(workload, uri, preempt=preempt)
    for n in (1, 2):
        time.sleep(0.5)
        (src if n == 1 else dst).cmd("migrate-pause")
        wait_status(src, ("postcopy-paused",))
        wait_status(dst, ("postcopy-paused",))
        recover(src, dst, new_uri(n))
        wait_status(src, ("postcopy-active", "completed"))
    src.set_params(**{"max-postcopy-bandwidth": 0})
    info = src.wait_migration(timeout=120)
    assert info["status"] == "completed", info
    assert dst.wait_migration()["status"] == "completed"
    assert_dest_ok(dst)
    cycle = ["postcopy-paused", "postcopy-recover-setup", "postcopy-recover", "postcopy-active"]
    for w in (src, dst):
        assert w.migration_events() == ["setup", "active", "postcopy-active"] + cycle * 2 + ["completed"], w.name


def test_recovery_broken_during_handshake(workload):
    """A resume whose connection breaks before the handshake ends pauses again; the next one completes."""
    uri = unix_uri(workload)
    src, dst = slow_postcopy(workload, uri)
    src.cmd("migrate-pause")
    wait_status(src, ("postcopy-paused",))
    wait_status(dst, ("postcopy-paused",))
    # A listener that accepts the source's resume and closes it at once: the handshake breaks.
    import socket
    bad = os.path.join(workload.tmpdir, "bad.sock")
    ls = socket.socket(socket.AF_UNIX)
    ls.bind(bad)
    ls.listen(1)
    src.cmd("migrate", uri=f"unix:{bad}", resume=True)
    c, _ = ls.accept()
    c.close()
    ls.close()
    info = wait_status(src, ("postcopy-paused",))
    assert info["status"] == "postcopy-paused"
    recover(src, dst, unix_uri(workload, "good.sock"))
    src.set_params(**{"max-postcopy-bandwidth": 0})
    assert src.wait_migration(timeout=120)["status"] == "completed"
    assert dst.wait_migration()["status"] == "completed"
    assert_dest_ok(dst)


@pytest.mark.parametrize("variant", ["multifd-zstd", "unix-page-flipping"])
def test_precopy_variants_then_postcopy(workload, variant):
    """What carries the pages before the switch (multifd channels with compression, the page pipe) stops at the
    switch; the pages after it go on the main channel, and the result is the same."""
    uri = unix_uri(workload)
    on = {"postcopy_ram": True}
    if variant == "multifd-zstd":
        on["multifd"] = True
    else:
        on["unix_page_flipping"] = True
    src, dst = postcopy_pair(workload, uri, dst_caps=on, src_caps=on)
    if variant == "multifd-zstd":
        src.set_params(**{"multifd-channels": 2, "multifd-compression": "zstd"})
        dst.set_params(**{"multifd-channels": 2, "multifd-compression": "zstd"})
    # zstd shrinks the A-B pages to almost nothing: only a thin link keeps that precopy from converging.
    src.set_params(**{"max-bandwidth": SLOW_LINK if variant != "multifd-zstd" else 1 << 20, "downtime-limit": 1})
    src.migrate(uri)
    # Pages, not bytes: zstd makes the A-B pages tiny on the wire.
    wait_until(lambda: src.query_migrate()["ram"]["normal"] >= 4096, 60, "some precopy")
    src.cmd("migrate-start-postcopy")
    info = src.wait_migration()
    assert info["status"] == "completed", info
    assert info["ram"]["postcopy-bytes"] > 0, info
    assert dst.wait_migration()["status"] == "completed"
    assert_dest_ok(dst)


@pytest.mark.parametrize("share", ["on", "off"])
def test_memfd_ram(workload, share):
    """The destination's RAM as memfds (shared: MISSING faults on shmem, pages dropped by punching the memfd too):
    pure postcopy, then the A-B check. (ferry-workload refuses file-backed RAM on a destination; the userfaultfd
    layer's refusal of disk files and acceptance of tmpfs files is tests/unit/ram/test-postcopy.c's.)"""
    obj = ["-object", f"memory-backend-memfd,id=ram0,size=64M,share={share}", "-machine", "memory-backend=ram0"]
    args = ["-m", "64M", "-smp", "2", "-pattern", "ab", "-dirty-rate", "0", *obj]
    uri = unix_uri(workload)
    src, dst = postcopy_pair(workload, uri, args=args)
    src.migrate(uri)
    src.cmd("migrate-start-postcopy")
    assert src.wait_migration()["status"] == "completed"
    assert dst.wait_migration()["status"] == "completed"
    assert_dest_ok(dst)
