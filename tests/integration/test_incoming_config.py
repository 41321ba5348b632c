"""The command line's -incoming beyond a plain URI: -incoming config:key=value,... (QEMU keyval syntax, checked at
parse time by the same check as migrate-set-parameters, allowed once, visible in query-migrate-parameters before
any migration, combined with a channel form), and -incoming with a JSON MigrationChannel (the last one per channel
type wins). A bad option must stop the program before it does anything: no QMP socket, no migration socket.

What this is not: the keyval parser's edge cases (tests/unit/util/test-keyval.c) or the transports
(test_channels.py)."""

import json
import os
import subprocess
import time

import pytest

from ferrytest import QMPError, sanitizer_report, wait_listening, workload_binary
from test_migration import AB, FAST, check_running_destination


def unix_channel(path):
    return json.dumps({"channel-type": "main", "addr": {"transport": "socket", "type": "unix", "path": path}})


def params(w):
    return w.cmd("query-migrate-parameters")


def migrate_to(src, uri):
    src.set_params(**{"max-bandwidth": FAST})
    src.migrate(uri=uri)
    info = src.wait_migration()
    assert info["status"] == "completed", info


def test_config_visible_before_any_migration(wl):
    w = wl.start("w", *AB, "-incoming", "config:downtime-limit=123,max-bandwidth=1G")
    p = params(w)
    assert p["downtime-limit"] == 123 and p["max-bandwidth"] == 1 << 30, p
    assert w.migration_status() in (None, "none")


@pytest.mark.parametrize("order", ["config-first", "uri-first"])
def test_config_with_uri(wl, order):
    uri = f"unix:{os.path.join(wl.tmpdir, 'mig.sock')}"
    opts = [["-incoming", "config:downtime-limit=123,max-bandwidth=1G"], ["-incoming", uri]]
    if order == "uri-first":
        opts.reverse()
    dst = wl.start("dst", *AB, *opts[0], *opts[1])
    assert dst.status() == "inmigrate"
    p = params(dst)
    assert p["downtime-limit"] == 123 and p["max-bandwidth"] == 1 << 30, p
    wait_listening(uri)
    src = wl.start("src", *AB)
    migrate_to(src, uri)
    check_running_destination(src, dst)


def test_config_with_json_channel(wl):
    path = os.path.join(wl.tmpdir, "mig.sock")
    dst = wl.start("dst", *AB, "-incoming", unix_channel(path), "-incoming", "config:downtime-limit=77")
    assert params(dst)["downtime-limit"] == 77
    wait_listening(f"unix:{path}")
    src = wl.start("src", *AB)
    migrate_to(src, f"unix:{path}")
    check_running_destination(src, dst)


def test_config_keyval_escape(wl):
    """',,' is a comma inside a value (QEMU keyval): here it makes the value invalid, and the message shows it
    with the comma, naming the key."""
    r = run_bad(wl.tmpdir, ["-incoming", "config:downtime-limit=1,,5"])
    assert "downtime-limit" in r.stderr and "1,5" in r.stderr, r.stderr


def run_bad(tmpdir, args, timeout=20):
    """Run ferry-workload with a bad command line that also names a QMP socket and a migration socket; it must exit
    non-zero with no sanitizer report, and neither socket may ever appear. Returns the CompletedProcess-like
    result (returncode, stderr)."""
    qmp = os.path.join(tmpdir, "bad.qmp")
    mig = os.path.join(tmpdir, "bad-mig.sock")
    errpath = os.path.join(tmpdir, "bad.stderr")
    argv = [workload_binary(), "-m", "16M", "-qmp", f"unix:{qmp},server=on,wait=off", *args]
    if not any(a.startswith("unix:") or a.startswith("{") or a == "defer" for a in args):
        argv += ["-incoming", f"unix:{mig}"]
    with open(errpath, "wb") as err:
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                             start_new_session=True)
    seen = []
    deadline = time.monotonic() + timeout
    try:
        # Poll fast: the sockets would be removed again at exit, so they must be caught while the process runs.
        while p.poll() is None:
            for path in (qmp, mig):
                if os.path.exists(path) and path not in seen:
                    seen.append(path)
            if time.monotonic() > deadline:
                pytest.fail(f"{argv} did not exit: a bad -incoming must be refused at once")
            time.sleep(0.001)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(10)
    with open(errpath, errors="replace") as f:
        stderr = f.read()
    assert p.returncode > 0, f"exit status {p.returncode} for {args}; stderr: {stderr}"
    assert sanitizer_report(stderr) is None, stderr
    assert not seen, f"{seen} appeared although the command line {args} is bad"

    class Result:
        pass
    r = Result()
    r.returncode, r.stderr = p.returncode, stderr
    return r


# (id, -incoming config: value, words the message must contain)
BAD_CONFIGS = [
    ("unknown-key", "config:no-such-param=1", ["no-such-param"]),
    ("bad-value", "config:downtime-limit=lots", ["downtime-limit"]),
    ("out-of-range", "config:downtime-limit=99999999999", ["downtime-limit"]),
    ("negative", "config:max-bandwidth=-1", ["max-bandwidth"]),
    ("second-key-bad", "config:downtime-limit=100,max-bandwidth=fast", ["max-bandwidth"]),
    ("not-implemented", "config:announce-initial=50", ["announce-initial"]),
    ("no-equals", "config:downtime-limit", ["downtime-limit"]),
    ("duplicate-key", "config:downtime-limit=1,downtime-limit=2", ["downtime-limit"]),
    ("empty-key", "config:=5", []),
]


@pytest.mark.parametrize("value,words", [c[1:] for c in BAD_CONFIGS], ids=[c[0] for c in BAD_CONFIGS])
def test_bad_config_rejected_at_start(tmpdir_short, value, words):
    r = run_bad(tmpdir_short, ["-incoming", value])
    for w in words:
        assert w in r.stderr, f"message for {value!r} does not name {w!r}: {r.stderr!r}"


def test_two_configs_rejected(tmpdir_short):
    r = run_bad(tmpdir_short, ["-incoming", "config:downtime-limit=100", "-incoming", "config:max-bandwidth=1G"])
    assert "only one" in r.stderr.lower() and "config" in r.stderr, r.stderr


def test_config_same_check_as_qmp(wl):
    """The command line check is the QMP check: the same bad value gets the same message."""
    w = wl.start("w", *AB)
    failures = []
    # Values that convert to integers but are out of range (a value that is no number at all fails the
    # conversion from the command line's string first, which QMP's typed JSON never needs).
    for key, value, qmp_value in (("downtime-limit", "99999999999", 99999999999),
                                  ("max-bandwidth", "2E", 1 << 61)):
        with pytest.raises(QMPError) as e:
            w.set_params(**{key: qmp_value})
        r = run_bad(wl.tmpdir, ["-incoming", f"config:{key}={value}"])
        if e.value.desc not in r.stderr:
            failures.append(f"{key}={value}: QMP says {e.value.desc!r}, the command line {r.stderr!r}")
    assert not failures, "\n".join(failures)


def test_bad_json_channel_rejected(tmpdir_short):
    bad = json.dumps({"channel-type": "main", "addr": {"transport": "socket", "type": "unix"}})
    r = run_bad(tmpdir_short, ["-incoming", bad])
    assert "path" in r.stderr, r.stderr
    r = run_bad(tmpdir_short, ["-incoming", '{"channel-type": "main", "addr": '])
    assert "-incoming" in r.stderr or "JSON" in r.stderr or "json" in r.stderr, r.stderr


def test_json_channel(wl):
    path = os.path.join(wl.tmpdir, "mig.sock")
    dst = wl.start("dst", *AB, "-incoming", unix_channel(path))
    assert dst.status() == "inmigrate"
    wait_listening(f"unix:{path}")
    src = wl.start("src", *AB)
    migrate_to(src, f"unix:{path}")
    check_running_destination(src, dst)


@pytest.mark.parametrize("first", ["uri", "json"])
def test_last_incoming_per_channel_type_wins(wl, first):
    p1 = os.path.join(wl.tmpdir, "first.sock")
    p2 = os.path.join(wl.tmpdir, "second.sock")
    if first == "uri":
        opts = ["-incoming", f"unix:{p1}", "-incoming", unix_channel(p2)]
    else:
        opts = ["-incoming", unix_channel(p1), "-incoming", f"unix:{p2}"]
    dst = wl.start("dst", *AB, *opts)
    wait_listening(f"unix:{p2}")
    assert not os.path.exists(p1), "the first -incoming (overridden) was listened on"
    addrs = dst.query_migrate().get("socket-address")
    assert addrs == [{"type": "unix", "path": p2}], dst.query_migrate()
    src = wl.start("src", *AB)
    migrate_to(src, f"unix:{p2}")
    check_running_destination(src, dst)
