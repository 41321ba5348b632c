"""pytest glue for ferry's integration tests: a hard per-test deadline, a short temporary directory (UNIX socket
paths are limited to 108 bytes), the `workload` fixture that starts ferry-workload processes and always kills,
reaps and checks them (a sanitizer report on a process's stderr fails the test), and the `netns` fixture (a
network namespace of the test's own, for TAP tests). The helpers themselves live in
ferrytest.py; the tests in test_*.py."""

import os
import secrets
import shutil
import subprocess
import signal
import tempfile

import pytest

import ferrytest

DEFAULT_DEADLINE = 150


def pytest_configure(config):
    config.addinivalue_line("markers", "deadline(seconds): hard time limit of the test (SIGALRM)")


def pytest_sessionstart(session):
    binary = ferrytest.workload_binary()
    if not os.access(binary, os.X_OK):
        raise pytest.UsageError(f"{binary} not found: build first and point FERRY_BUILD at the build directory")


class TestDeadline(Exception):
    pass


@pytest.fixture(autouse=True)
def deadline(request):
    """Every test has a hard time limit: a hung socket read or a migration that never ends fails the test
    instead of the suite. The alarm interrupts blocking calls (PEP 475 retries only if the handler returns)."""
    marker = request.node.get_closest_marker("deadline")
    seconds = int(marker.args[0]) if marker else DEFAULT_DEADLINE

    def expired(signum, frame):
        raise TestDeadline(f"test exceeded its deadline of {seconds} s")

    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


@pytest.fixture
def tmpdir_short():
    path = tempfile.mkdtemp(prefix="ferry-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def workload(tmpdir_short):
    """Factory: workload(name, *args, qmp=True) starts a ferry-workload (with -name and -qmp added) and returns a
    ferrytest.Workload. At teardown every process is stopped and reaped; a sanitizer report, or a death by a
    signal the test did not send, fails the test."""
    ws = ferrytest.WorkloadSet(tmpdir_short)

    def start(name, *args, qmp=True):
        return ws.start(name, *args, qmp=qmp)

    start.tmpdir = tmpdir_short
    yield start
    # The alarm of the test is off now; teardown has its own bounded waits.
    problems = ws.close()
    assert not problems, "\n".join(problems)


@pytest.fixture
def wl(tmpdir_short):
    """The same with every option of ferrytest.Workload (pass_fds=..., HMP on stdio): wl.start(name, *args, ...)."""
    ws = ferrytest.WorkloadSet(tmpdir_short)
    yield ws
    problems = ws.close()
    assert not problems, "\n".join(problems)


@pytest.fixture
def netns():
    """A network namespace of its own (ip netns add ferry-PID-RANDOM), deleted whatever happens; skips where TAP
    tests cannot run (ferrytest.tap_skip_reason)."""
    reason = ferrytest.tap_skip_reason()
    if reason:
        pytest.skip(reason)
    name = f"ferry-{os.getpid()}-{secrets.token_hex(3)}"
    p = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True, timeout=20)
    if p.returncode != 0:
        pytest.skip(f"ip netns add failed: {p.stderr.strip()}")
    try:
        yield ferrytest.NetNS(name)
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=20)
