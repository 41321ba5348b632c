"""The completion policy (ferry's own parameters completion-policy and completion-deadline, issue 19) with real
ferry-workload processes: a workload that precopy cannot finish completes without any operator command, the
source's decisions visible in query-migrate ("completion") and in MIGRATION_COMPLETION events: straight to
postcopy when the pass saturates, throttling up to convergence when postcopy is off, a workload that converges
by itself, the operator's deadline, and the refusals. ferry__precopy_predict_ms is
tested by tests/unit/migration/test-completion.c; bench/converge-bench.py measures."""
import os

import pytest

from ferrytest import QMPError, wait_listening, wait_until

UNTHROTTLED = ["-m", "32M", "-smp", "2", "-pattern", "ab", "-dirty-rate", "0"]
LINK = 32 << 20


def unix_uri(workload, name="mig.sock"):
    return f"unix:{os.path.join(workload.tmpdir, name)}"


def caps(w, **on):
    w.cmd("migrate-set-capabilities",
          capabilities=[{"capability": k.replace("_", "-"), "state": v} for k, v in on.items()])


def pair(workload, args, postcopy):
    uri = unix_uri(workload)
    dst = workload("dst", *args, "-incoming", "defer")
    if postcopy:
        caps(dst, postcopy_ram=True)
    dst.cmd("migrate-incoming", uri=uri)
    wait_listening(uri)
    src = workload("src", *args)
    pages = src.workload_info()["pages"]
    wait_until(lambda: src.workload_info()["pages-written"] >= pages, 30, "every page written once")
    src.enable_events()
    caps(src, events=True, postcopy_ram=postcopy)
    src.set_params(**{"max-bandwidth": LINK, "downtime-limit": 50, "completion-policy": "ensure"})
    return uri, src, dst


def decisions(src):
    return [(e["data"]["decision"], e["data"]["reason"]) for e in src.events_named("MIGRATION_COMPLETION")]


def finish(src, dst):
    info = src.wait_migration(timeout=120)
    assert info["status"] == "completed", info
    assert "cpu-throttle-percentage" not in info
    assert src.workload_info()["cpu-throttle"] == 0
    dst.wait_status(("running",))
    dst.assert_pattern_ok()
    dst.assert_advancing()
    return info


def test_unthrottled_writers_go_to_postcopy(workload):
    """Two unthrottled writers far above the link: the throttle that would let precopy converge is above 50 %,
    so the source switches to postcopy after the first pass, by itself."""
    uri, src, dst = pair(workload, UNTHROTTLED, postcopy=True)
    src.migrate(uri)
    info = finish(src, dst)
    got = decisions(src)
    assert [d for d, _ in got] == ["postcopy"], got
    assert "never converges" in got[0][1] and "switching to postcopy" in got[0][1], got
    c = info["completion"]
    assert c["decision"] == "postcopy" and c["policy"] == "ensure" and c["pass"] == 1, c
    assert c["predicted-time"] == -1 and c["deadline"] > 0, c
    assert info["ram"]["postcopy-requests"] >= 0 and info["ram"]["postcopy-bytes"] > 0, info
    assert src.migration_events()[-2:] == ["postcopy-active", "completed"], src.migration_events()


def test_throttle_without_postcopy(workload):
    """postcopy-ram off: the source throttles, and raises the throttle pass by pass until precopy converges. The
    link is twice LINK here: at the largest throttle (99%) two A-B writers still dirtied about 32 MiB/s on this
    machine, as fast as LINK, and whether precopy then converged depended on the run."""
    uri, src, dst = pair(workload, UNTHROTTLED, postcopy=False)
    src.set_params(**{"max-bandwidth": 2 * LINK})
    src.migrate(uri)
    info = finish(src, dst)
    got = decisions(src)
    assert got and got[0][0] == "throttle", got
    assert all(d in ("throttle", "precopy") for d, _ in got), got
    pcts = [int(r.rsplit(" ", 1)[1].rstrip("%")) for d, r in got if d == "throttle"]
    # Saturated passes: no throttle can be computed, so it steps up as auto-converge does (20 %, then +10 %).
    assert pcts[0] == 20 and all(b > a for a, b in zip(pcts, pcts[1:])), got
    assert info["completion"]["decision"] in ("throttle", "precopy"), info
    assert "postcopy-bytes" not in info["ram"] or info["ram"]["postcopy-bytes"] == 0, info


def test_converging_workload_stays_in_precopy(workload):
    """8 MB/s over 16 MiB against a 32 MiB/s link converges within the bound: one decision, precopy, and nothing else (the
    throttle that fits, and the choice between it and postcopy, are tests/unit/migration/test-completion.c's:
    whether a throttle helps depends on whether the writers are CPU-bound, which this machine cannot promise)."""
    args = ["-m", "16M", "-smp", "2", "-pattern", "ab", "-dirty-rate", "8"]
    uri, src, dst = pair(workload, args, postcopy=True)
    src.set_params(**{"downtime-limit": 10})
    src.migrate(uri)
    info = finish(src, dst)
    got = decisions(src)
    assert [d for d, _ in got] == ["precopy"], got
    assert "converges in about" in got[0][1], got
    assert info["completion"]["decision"] == "precopy" and info["completion"]["predicted-time"] >= 0, info
    assert info["ram"].get("postcopy-bytes", 0) == 0, info


def test_deadline_switches_to_postcopy(workload):
    """The workload of the test above, which precopy finishes within the default bound, with a completion-deadline
    of 1 ms: the first pass already ends past it, and the source switches to postcopy then."""
    args = ["-m", "16M", "-smp", "2", "-pattern", "ab", "-dirty-rate", "8"]
    uri, src, dst = pair(workload, args, postcopy=True)
    src.set_params(**{"downtime-limit": 1, "completion-deadline": 1})
    src.migrate(uri)
    info = finish(src, dst)
    got = decisions(src)
    assert [d for d, _ in got] == ["postcopy"], got
    assert "reached the bound of 1 ms" in got[0][1], got
    assert info["completion"]["deadline"] == 1 and info["completion"]["pass"] == 1, info


def test_parameters_and_refusals(workload):
    w = workload("w", "-m", "32M")
    p = w.cmd("query-migrate-parameters")
    assert (p["completion-policy"], p["completion-deadline"]) == ("none", 0)
    with pytest.raises(QMPError) as e:
        w.set_params(**{"completion-policy": "always"})
    assert "completion-policy" in str(e.value) and "always" in str(e.value)
    with pytest.raises(QMPError) as e:
        w.set_params(**{"completion-deadline": -1})
    assert "Parameter 'completion-deadline' expects" in str(e.value)
    w.set_params(**{"completion-policy": "ensure"})
    caps(w, auto_converge=True)
    with pytest.raises(QMPError) as e:
        w.migrate(unix_uri(workload, "nobody.sock"))
    assert "cannot be combined with auto-converge" in str(e.value)
    assert w.status() == "running"
