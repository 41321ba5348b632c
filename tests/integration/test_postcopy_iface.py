"""The control plane of postcopy, as a QEMU user reaches it: the capabilities postcopy-ram, postcopy-preempt and
postcopy-blocktime, the parameter max-postcopy-bandwidth (QMP, HMP and -incoming config:), and the commands
migrate-start-postcopy, migrate-pause, migrate-recover and migrate with resume, over QMP and HMP, with their
argument checks. With no migration running the engine refuses the commands; these tests only require that the
refusal is an error with a reason (its wording is the engine's), and that nothing changed.

What this is not: postcopy migrations themselves (the engine's tests)."""

import os

import pytest

from ferrytest import HMP, QMPError, wait_until
from test_incoming_config import run_bad

SMALL = ["-m", "16M", "-smp", "1", "-pattern", "ab", "-dirty-rate", "1"]
POSTCOPY_CAPS = ("postcopy-ram", "postcopy-preempt", "postcopy-blocktime")


def caps_of(w):
    return {c["capability"]: c["state"] for c in w.cmd("query-migrate-capabilities")}


def set_caps(w, **states):
    w.cmd("migrate-set-capabilities",
          capabilities=[{"capability": k, "state": v} for k, v in states.items()])


def qmp_error(w, name, **args):
    with pytest.raises(QMPError) as e:
        w.cmd(name, **args)
    return e.value


def test_caps_defaults_and_preempt_needs_ram(workload):
    w = workload("w", *SMALL)
    caps = caps_of(w)
    for name in POSTCOPY_CAPS:
        assert caps.get(name) is False, caps
    # Listed in the table's order, after the older ones (and before the snapshot ones, which came later).
    names = [c["capability"] for c in w.cmd("query-migrate-capabilities")]
    assert names[-5:-2] == list(POSTCOPY_CAPS) and names[-2:] == ["mapped-ram", "background-snapshot"], names

    # postcopy-preempt without postcopy-ram: refused, the message names both, nothing applied.
    err = qmp_error(w, "migrate-set-capabilities",
                    capabilities=[{"capability": "events", "state": True},
                                  {"capability": "postcopy-preempt", "state": True}])
    assert err.cls == "GenericError"
    assert "'postcopy-preempt'" in err.desc and "'postcopy-ram'" in err.desc, err.desc
    assert caps_of(w) == caps

    # Both together (in either order) are fine; postcopy-ram off under preempt is refused again.
    set_caps(w, **{"postcopy-preempt": True, "postcopy-ram": True})
    caps = caps_of(w)
    assert caps["postcopy-ram"] and caps["postcopy-preempt"], caps
    err = qmp_error(w, "migrate-set-capabilities", capabilities=[{"capability": "postcopy-ram", "state": False}])
    assert "postcopy-ram" in err.desc, err.desc
    assert caps_of(w)["postcopy-ram"] is True

    # Unlike QEMU, postcopy combines with multifd and unix-page-flipping.
    set_caps(w, **{"multifd": True, "unix-page-flipping": True, "postcopy-blocktime": True})
    caps = caps_of(w)
    assert caps["multifd"] and caps["unix-page-flipping"] and caps["postcopy-blocktime"], caps
    assert w.migration_status() in (None, "none")


def test_max_postcopy_bandwidth_qmp(workload):
    w = workload("w", *SMALL)
    params = w.cmd("query-migrate-parameters")
    assert params["max-postcopy-bandwidth"] == 0, params       # QEMU's default: no limit
    w.set_params(**{"max-postcopy-bandwidth": 256 << 20})
    params = w.cmd("query-migrate-parameters")
    assert params["max-postcopy-bandwidth"] == 256 << 20, params
    assert params["max-bandwidth"] == 128 << 20, params        # a parameter of its own
    for bad, word in ((-1, "range"), ("fast", "expected: integer"), (1 << 62, "range")):
        with pytest.raises(QMPError) as e:
            w.set_params(**{"max-postcopy-bandwidth": bad})
        assert "max-postcopy-bandwidth" in e.value.desc and word in e.value.desc, e.value.desc
    assert w.cmd("query-migrate-parameters")["max-postcopy-bandwidth"] == 256 << 20


def test_max_postcopy_bandwidth_incoming_config(workload):
    w = workload("w", *SMALL, "-incoming", "config:max-postcopy-bandwidth=512M,downtime-limit=111",
                 "-incoming", "defer")
    params = w.cmd("query-migrate-parameters")
    assert params["max-postcopy-bandwidth"] == 512 << 20 and params["downtime-limit"] == 111, params
    assert w.status() == "inmigrate"


def test_max_postcopy_bandwidth_bad_config(tmpdir_short):
    r = run_bad(tmpdir_short, ["-incoming", "config:max-postcopy-bandwidth=lots"])
    assert "max-postcopy-bandwidth" in r.stderr, r.stderr
    r = run_bad(tmpdir_short, ["-incoming", "config:max-postcopy-bandwidth=2E"])
    assert "max-postcopy-bandwidth" in r.stderr and "range" in r.stderr, r.stderr


def test_commands_reach_the_engine(workload):
    """Nothing runs: each command gets the engine's refusal (an error with a reason), and nothing changes."""
    w = workload("w", *SMALL)
    sock = f"unix:{os.path.join(workload.tmpdir, 'r.sock')}"
    for name, args in (("migrate-start-postcopy", {}), ("migrate-pause", {}), ("migrate-recover", {"uri": sock}),
                       ("migrate", {"uri": sock, "resume": True})):
        err = qmp_error(w, name, **args)
        assert err.cls == "GenericError" and err.desc, (name, err)
    channels = [{"channel-type": "main", "addr": {"transport": "socket", "type": "unix", "path": sock[5:]}}]
    err = qmp_error(w, "migrate-recover", channels=channels)
    assert err.desc, err
    assert w.migration_status() in (None, "none"), w.query_migrate()
    assert w.status() == "running"
    assert not os.path.exists(sock[5:]), "a refused migrate-recover left a socket behind"


def test_argument_checks(workload):
    w = workload("w", *SMALL)
    sock = f"unix:{os.path.join(workload.tmpdir, 'r.sock')}"
    channels = [{"channel-type": "main", "addr": {"transport": "socket", "type": "unix", "path": sock[5:]}}]
    cases = [
        ("migrate-recover", {}, "need either 'uri' or 'channels' argument"),
        ("migrate-recover", {"uri": sock, "channels": channels}, "need either 'uri' or 'channels' argument"),
        ("migrate-recover", {"uri": 5}, "Invalid parameter type for 'uri', expected: string"),
        ("migrate-recover", {"channels": []}, "channels: no channel of type 'main'"),
        ("migrate-recover", {"uri": "bogus:1"}, "bogus"),
        ("migrate-recover", {"uri": sock, "exit-on-error": True}, "Parameter 'exit-on-error' is unexpected"),
        ("migrate-start-postcopy", {"now": True}, "Parameter 'now' is unexpected"),
        ("migrate-pause", {"x": 1}, "Parameter 'x' is unexpected"),
        ("migrate", {"resume": True}, "need either 'uri' or 'channels' argument"),
        ("migrate", {"uri": sock, "resume": "yes"}, "Invalid parameter type for 'resume', expected: boolean"),
        ("migrate", {"uri": "bogus:1", "resume": True}, "bogus"),
    ]
    for name, args, want in cases:
        err = qmp_error(w, name, **args)
        assert err.cls == "GenericError" and want in err.desc, (name, args, err.desc)
    assert w.migration_status() in (None, "none"), w.query_migrate()
    names = {c["name"] for c in w.cmd("query-commands")}
    assert {"migrate-start-postcopy", "migrate-pause", "migrate-recover"} <= names, names


def test_hmp(workload):
    sock = os.path.join(workload.tmpdir, "hmp.sock")
    w = workload("w", *SMALL, "-monitor", f"unix:{sock},server=on,wait=off")
    wait_until(lambda: os.path.exists(sock), 20, f"HMP socket {sock}")
    hmp = HMP.over_unix(sock)
    mig = f"unix:{os.path.join(workload.tmpdir, 'r.sock')}"
    try:
        out = hmp.cmd("info migrate_capabilities")
        for name in POSTCOPY_CAPS:
            assert f"{name}: off\n" in out, out
        out = hmp.cmd("migrate_set_capability postcopy-preempt on")
        assert out.startswith("Error: ") and "postcopy-ram" in out, out
        assert hmp.cmd("migrate_set_capability postcopy-ram on") == ""
        assert hmp.cmd("migrate_set_capability postcopy-preempt on") == ""
        assert caps_of(w)["postcopy-preempt"] is True

        assert hmp.cmd("migrate_set_parameter max-postcopy-bandwidth 1G") == ""
        assert w.cmd("query-migrate-parameters")["max-postcopy-bandwidth"] == 1 << 30
        out = hmp.cmd("info migrate_parameters")
        assert "max-postcopy-bandwidth: 1073741824 bytes/second\n" in out, out
        out = hmp.cmd("migrate_set_parameter max-postcopy-bandwidth lots")
        assert out.startswith("Error: ") and "max-postcopy-bandwidth" in out, out

        # The commands reach the engine (an error with a reason while nothing runs); usage errors are HMP's.
        for line in ("migrate_start_postcopy", "migrate_pause", f"migrate_recover {mig}", f"migrate -r {mig}",
                     f"migrate -d -r {mig}"):
            out = hmp.cmd(line)
            assert out.startswith("Error: ") and len(out.strip()) > len("Error:"), (line, out)
        assert hmp.cmd("migrate_recover") == "Error: migrate_recover: expected migrate_recover uri\n"
        assert hmp.cmd("migrate_start_postcopy now") == ("Error: migrate_start_postcopy: expected "
                                                         "migrate_start_postcopy\n")
        assert "bogus" in hmp.cmd("migrate_recover bogus:1")
        assert "migrate [-d] [-r] uri -- " in hmp.cmd("help migrate")
        assert hmp.cmd("info migrate") == "Migration status: none\n"
    finally:
        hmp.close()
    assert w.migration_status() in (None, "none")
    assert w.alive()
