"""The human monitor (HMP) as a user types it: -monitor stdio driven through pipes, and -monitor
unix:PATH,server=on,wait=off. Each command is checked against what QMP reports, because HMP must call the same
command functions (a parameter set through HMP is what query-migrate-parameters shows). Output texts follow
QEMU's HMP where QEMU has one; the prompt is "(ferry) ".

What this is not: QMP itself (test_qmp.py) or the transports (test_channels.py)."""

import os

from ferrytest import HMP, wait_listening, wait_until
from test_migration import AB, check_running_destination


def lines_with(text, word):
    return [line for line in text.splitlines() if word in line]


def test_stdio_info_params_caps_and_migrate(wl):
    uri = f"unix:{os.path.join(wl.tmpdir, 'mig.sock')}"
    dst = wl.start("dst", *AB, "-incoming", uri)
    wait_listening(uri)
    src = wl.start("src", *AB, hmp_stdio=True)
    hmp = src.hmp

    out = hmp.cmd("info status")
    assert "running" in out, out

    out = hmp.cmd("migrate_set_parameter downtime-limit 100")
    assert "error" not in out.lower(), out
    out = hmp.cmd("info migrate_parameters")
    assert any("100" in line for line in lines_with(out, "downtime-limit")), out
    assert src.cmd("query-migrate-parameters")["downtime-limit"] == 100

    # Sizes take QEMU's suffixes, as in QEMU's HMP.
    hmp.cmd("migrate_set_parameter max-bandwidth 1G")
    assert src.cmd("query-migrate-parameters")["max-bandwidth"] == 1 << 30

    out = hmp.cmd("migrate_set_capability events on")
    assert "error" not in out.lower(), out
    out = hmp.cmd("info migrate_capabilities")
    assert any("on" in line for line in lines_with(out, "events")), out
    caps = {c["capability"]: c["state"] for c in src.cmd("query-migrate-capabilities")}
    assert caps["events"] is True, caps

    src.assert_advancing()
    # Without -d, migrate returns (and the prompt comes back) when the migration has ended.
    out = hmp.cmd(f"migrate {uri}", timeout=120)
    assert "error" not in out.lower(), out
    out = hmp.cmd("info migrate")
    assert "completed" in out, out
    assert src.migration_status() == "completed"
    check_running_destination(src, dst)
    # The events capability set through HMP took effect.
    wait_until(lambda: "completed" in src.qmp.migration_events(), 10, "MIGRATION completed event")

    out = hmp.cmd("info status")
    assert "postmigrate" in out or "post-migrate" in out or "paused" in out, out


def test_stdio_errors(wl):
    src = wl.start("src", *AB, hmp_stdio=True)
    hmp = src.hmp
    out = hmp.cmd("frobnicate now")
    assert "unknown command: 'frobnicate'" in out, out

    before = src.cmd("query-migrate-parameters")
    out = hmp.cmd("migrate_set_parameter downtime-limit lots")
    assert "downtime-limit" in out, out
    out = hmp.cmd("migrate_set_parameter no-such-parameter 1")
    assert "no-such-parameter" in out, out
    out = hmp.cmd("migrate_set_capability no-such-cap on")
    assert "no-such-cap" in out, out
    out = hmp.cmd("migrate bogus:1")
    assert "bogus" in out, out
    assert src.cmd("query-migrate-parameters") == before
    assert src.migration_status() in (None, "none")
    # The monitor still works and the workload still runs.
    assert "running" in hmp.cmd("info status")
    src.assert_advancing()


def test_stdio_migrate_incoming_detach_and_cancel(wl):
    """migrate_incoming on a deferred destination; migrate -d returns at once; migrate_cancel cancels."""
    uri = f"unix:{os.path.join(wl.tmpdir, 'mig.sock')}"
    dst = wl.start("dst", *AB, "-incoming", "defer", hmp_stdio=True)
    out = dst.hmp.cmd("info status")
    assert "inmigrate" in out, out
    out = dst.hmp.cmd(f"migrate_incoming {uri}")
    assert "error" not in out.lower(), out
    wait_listening(uri)

    src = wl.start("src", *AB, hmp_stdio=True)
    src.hmp.cmd("migrate_set_parameter max-bandwidth 1M")
    assert src.cmd("query-migrate-parameters")["max-bandwidth"] == 1 << 20
    # At 1 MiB/s 64 MiB of written RAM takes a minute: -d must give the prompt back long before.
    src.assert_advancing()
    src.hmp.cmd(f"migrate -d {uri}", timeout=10)
    wait_until(lambda: src.migration_status() == "active", 20, "the migration to become active")
    out = src.hmp.cmd("migrate_cancel")
    assert "error" not in out.lower(), out
    info = src.wait_migration(timeout=30)
    assert info["status"] == "cancelled", info
    out = src.hmp.cmd("info migrate")
    assert "cancelled" in out, out
    src.wait_status(("running",))
    src.assert_advancing()
    # The destination saw its stream end early: with exit-on-error (the default) it exits non-zero.
    assert dst.wait_exit(30) > 0


def test_unix_monitor(wl):
    path = os.path.join(wl.tmpdir, "hmp.sock")
    uri = f"unix:{os.path.join(wl.tmpdir, 'mig.sock')}"
    dst = wl.start("dst", *AB, "-incoming", uri)
    src = wl.start("src", *AB, "-monitor", f"unix:{path},server=on,wait=off")
    wait_until(lambda: os.path.exists(path), 20, f"HMP socket {path}")
    hmp = HMP.over_unix(path)
    try:
        assert "running" in hmp.cmd("info status")
        hmp.cmd("migrate_set_parameter downtime-limit 250")
        assert src.cmd("query-migrate-parameters")["downtime-limit"] == 250
        # A second client at the same time sees the same state.
        hmp2 = HMP.over_unix(path)
        try:
            out = hmp2.cmd("info migrate_parameters")
            assert any("250" in line for line in lines_with(out, "downtime-limit")), out
        finally:
            hmp2.close()
        hmp.cmd("migrate_set_parameter max-bandwidth 1G")
        wait_listening(uri)
        out = hmp.cmd(f"migrate {uri}", timeout=120)
        assert "error" not in out.lower(), out
        assert "completed" in hmp.cmd("info migrate")
    finally:
        hmp.close()
    check_running_destination(src, dst)
