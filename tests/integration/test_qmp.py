"""The QMP control socket of ferry-workload as a QEMU user sees it: the greeting and negotiation, ids, run-state
commands and their events, parameter defaults, and a table of bad inputs sent as raw bytes, each with the exact
error class expected. After every bad input the connection must still answer and the process must still run.
Migrations themselves are tested in test_migration.py and test_failures.py."""

import json

import pytest

from ferrytest import QMP, QMPError, wait_until

SMALL = ["-m", "16M", "-smp", "1", "-pattern", "ab", "-dirty-rate", "1"]


def obj(o):
    return json.dumps(o).encode() + b"\n"


# (id, raw bytes, expected class, a word the description must contain (or None), how the process is started)
BAD_INPUTS = [
    ("bad-json", b'{"execute": nonsense}\n', "GenericError", None, "running"),
    # QEMU's parser refuses duplicate keys; the last one must not win (this one would quit the process).
    ("duplicate-execute", b'{"execute": "query-status", "execute": "quit"}\n', "GenericError", '"execute"',
     "running"),
    ("duplicate-argument",
     b'{"execute": "migrate-set-parameters", "arguments": {"max-bandwidth": 1, "max-bandwidth": 2}}\n',
     "GenericError", '"max-bandwidth"', "running"),
    ("non-object-array", b"[1, 2]\n", "GenericError", None, "running"),
    ("non-object-number", b"42\n", "GenericError", None, "running"),
    ("missing-execute", obj({"arguments": {}}), "GenericError", "execute", "running"),
    ("execute-not-string", obj({"execute": 42}), "GenericError", "execute", "running"),
    ("unknown-command", obj({"execute": "no-such-command"}), "CommandNotFound", "no-such-command", "running"),
    ("missing-argument", obj({"execute": "migrate"}), "GenericError", "uri", "running"),
    ("wrong-type", obj({"execute": "migrate", "arguments": {"uri": 42}}), "GenericError", "uri", "running"),
    ("unknown-argument", obj({"execute": "query-status", "arguments": {"bogus": 1}}), "GenericError", "bogus",
     "running"),
    ("unknown-member", obj({"execute": "query-status", "bogus": 1}), "GenericError", "bogus", "running"),
    ("arguments-not-object", obj({"execute": "query-status", "arguments": [1]}), "GenericError", "arguments",
     "running"),
    ("qmp-capabilities-twice", obj({"execute": "qmp_capabilities"}), "CommandNotFound", None, "running"),
    ("migrate-bad-scheme", obj({"execute": "migrate", "arguments": {"uri": "bogus:1234"}}), "GenericError",
     "bogus", "running"),
    ("migrate-tcp-no-port", obj({"execute": "migrate", "arguments": {"uri": "tcp:127.0.0.1"}}), "GenericError",
     None, "running"),
    ("migrate-while-incoming", obj({"execute": "migrate", "arguments": {"uri": "unix:/tmp/ferry-nonexistent"}}),
     "GenericError", None, "defer"),
    ("migrate-incoming-without-incoming",
     obj({"execute": "migrate-incoming", "arguments": {"uri": "unix:/tmp/ferry-nonexistent"}}), "GenericError",
     None, "running"),
    ("set-params-unknown", obj({"execute": "migrate-set-parameters", "arguments": {"announce-initial": 50}}),
     "GenericError", "announce-initial", "running"),
    ("set-params-downtime-too-big",
     obj({"execute": "migrate-set-parameters", "arguments": {"downtime-limit": 1 << 40}}), "GenericError",
     "downtime-limit", "running"),
    ("set-params-downtime-negative",
     obj({"execute": "migrate-set-parameters", "arguments": {"downtime-limit": -1}}), "GenericError",
     "downtime-limit", "running"),
    ("set-params-wrong-type",
     obj({"execute": "migrate-set-parameters", "arguments": {"max-bandwidth": "fast"}}), "GenericError",
     "max-bandwidth", "running"),
    ("set-caps-unknown",
     obj({"execute": "migrate-set-capabilities",
          "arguments": {"capabilities": [{"capability": "no-such-cap", "state": True}]}}), "GenericError",
     "no-such-cap", "running"),
    ("set-caps-not-array",
     obj({"execute": "migrate-set-capabilities", "arguments": {"capabilities": "events"}}), "GenericError",
     "capabilities", "running"),
]


def start(workload, kind):
    if kind == "defer":
        return workload("w", *SMALL, "-incoming", "defer")
    return workload("w", *SMALL)


def assert_still_serving(w, client):
    assert client.cmd("query-status")["status"] in ("running", "inmigrate", "paused", "prelaunch")
    assert w.alive(), f"process died: {w.stderr()}"


@pytest.mark.parametrize("name,data,cls,word,kind", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input(workload, name, data, cls, word, kind):
    w = start(workload, kind)
    status_before = w.status()
    params_before = w.cmd("query-migrate-parameters")
    reply = w.qmp.send_raw(data)
    assert "error" in reply, f"{name}: expected an error, got {reply}"
    assert reply["error"]["class"] == cls, reply
    assert reply["error"].get("desc"), reply
    if word:
        assert word in reply["error"]["desc"], f"error description does not name {word!r}: {reply}"
    assert_still_serving(w, w.qmp)
    # No side effect: nothing changed state.
    assert w.status() == status_before
    assert w.cmd("query-migrate-parameters") == params_before
    assert w.migration_status() in (None, "none"), w.query_migrate()


def test_command_before_negotiation(workload):
    w = workload("w", *SMALL)
    c = QMP(w.qmp_path, negotiate=False)
    try:
        assert "version" in c.greeting["QMP"] and "capabilities" in c.greeting["QMP"], c.greeting
        reply = c.request({"execute": "query-status"})
        assert reply.get("error", {}).get("class") == "CommandNotFound", reply
        # Negotiation still works afterwards, and then the command does.
        c.cmd("qmp_capabilities")
        assert c.cmd("query-status")["status"] == "running"
    finally:
        c.close()
    assert w.alive()


def test_bad_input_in_one_line_with_good_ones(workload):
    """A bad request between two good ones in one write: three replies, in order."""
    w = workload("w", *SMALL)
    w.qmp.sock.sendall(obj({"execute": "query-status", "id": 1}) + b'{"execute": nonsense}\n'
                       + obj({"execute": "query-status", "id": 3}))
    r1, r2, r3 = (w.qmp._read_reply() for _ in range(3))
    assert r1.get("id") == 1 and "return" in r1, r1
    assert "error" in r2 and r2["error"]["class"] == "GenericError", r2
    assert r3.get("id") == 3 and "return" in r3, r3


def test_ids_are_echoed(workload):
    w = workload("w", *SMALL)
    r = w.qmp.request({"execute": "query-status", "id": "abc-1"})
    assert r.get("id") == "abc-1" and r["return"]["status"] == "running", r
    r = w.qmp.request({"execute": "no-such-command", "id": {"n": 7}})
    assert r.get("id") == {"n": 7} and r["error"]["class"] == "CommandNotFound", r


def test_set_parameters_is_all_or_nothing(workload):
    w = workload("w", *SMALL)
    before = w.cmd("query-migrate-parameters")
    with pytest.raises(QMPError) as e:
        w.set_params(**{"downtime-limit": 1234, "max-bandwidth": "fast"})
    assert e.value.cls == "GenericError"
    assert w.cmd("query-migrate-parameters") == before
    w.set_params(**{"downtime-limit": 1234, "max-bandwidth": 5 << 20})
    after = w.cmd("query-migrate-parameters")
    assert after["downtime-limit"] == 1234 and after["max-bandwidth"] == 5 << 20, after


def test_defaults_and_commands(workload):
    w = workload("w", *SMALL)
    params = w.cmd("query-migrate-parameters")
    assert params["max-bandwidth"] == 128 << 20, params     # QEMU's default: 128 MiB/s
    assert params["downtime-limit"] == 300, params
    caps = {c["capability"]: c["state"] for c in w.cmd("query-migrate-capabilities")}
    assert caps.get("events") is False, caps
    names = {c["name"] for c in w.cmd("query-commands")}
    wanted = {"qmp_capabilities", "query-version", "query-commands", "query-status", "stop", "cont", "quit",
              "migrate", "migrate-incoming", "migrate_cancel", "query-migrate", "migrate-set-parameters",
              "query-migrate-parameters", "migrate-set-capabilities", "query-migrate-capabilities",
              "query-pattern-check", "query-ram-digest", "query-workload"}
    assert wanted <= names, f"missing commands: {wanted - names}"
    w.cmd("query-version")
    info = w.workload_info()
    assert info["pattern"] == "ab" and info["smp"] == 1 and info["pages"] * 4096 >= 16 << 20, info
    # Nothing has migrated yet.
    assert w.migration_status() in (None, "none"), w.query_migrate()
    w.cmd("migrate_cancel")   # a no-op without a migration, as in QEMU


def test_stop_cont_events(workload):
    w = workload("w", *SMALL)
    w.cmd("stop")
    assert w.status() == "paused"
    wait_until(lambda: w.qmp.events_named("STOP"), 10, "STOP event")
    first = w.workload_info()["pages-written"]
    w.qmp.pump(0.3)
    assert w.workload_info()["pages-written"] == first, "workers still write while stopped"
    w.cmd("stop")   # already stopped: success, no second event
    w.cmd("cont")
    assert w.status() == "running"
    wait_until(lambda: w.qmp.events_named("RESUME"), 10, "RESUME event")
    assert len(w.qmp.events_named("STOP")) == 1, w.qmp.events
    w.assert_advancing()


def test_quit(workload):
    w = workload("w", *SMALL)
    w.cmd("quit")
    assert w.wait_exit(15) == 0


def test_second_client(workload):
    """Two monitor clients at once: both are served; events go to both."""
    w = workload("w", *SMALL)
    c2 = QMP(w.qmp_path)
    try:
        assert c2.cmd("query-status")["status"] == "running"
        w.cmd("stop")
        wait_until(lambda: c2.events_named("STOP"), 10, "STOP on the second client")
    finally:
        c2.close()
    assert w.status() == "paused"
