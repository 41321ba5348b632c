"""A migration with both ends under valgrind's memcheck: no invalid access, no use of uninitialised memory, no
definite leak, in the real processes (the unit tests run under ASan and UBSan, which miss uninitialised reads).

valgrind cannot run sanitized binaries, so this test needs a build without sanitizers: $FERRY_VALGRIND_BUILD
(scripts/test.sh points it at build-ci). It skips, saying why, without that build or without valgrind. Both
ends use the workload's explicit dirty tracker: valgrind does not implement the userfaultfd system call, so
under it the automatic choice would fall back to stop-and-copy and leave the live path untested. valgrind runs
the programs some 20-50 times slower, hence the small RAM."""

import os
import shutil

import pytest

from ferrytest import wait_listening, wait_until

VG_ARGS = ["valgrind", "--error-exitcode=99", "--leak-check=full", "--errors-for-leak-kinds=definite",
           "--show-leak-kinds=definite", "--track-origins=yes", "-q"]
RAM = ["-m", "16M", "-smp", "2", "-pattern", "ab", "-dirty-rate", "8", "-dirty-tracker", "explicit"]


@pytest.fixture
def vg_binary():
    build = os.environ.get("FERRY_VALGRIND_BUILD")
    if not build:
        pytest.skip("FERRY_VALGRIND_BUILD is not set (a build without sanitizers; scripts/test.sh sets it)")
    binary = os.path.join(build, "hosts", "workload", "ferry-workload")
    if not os.access(binary, os.X_OK):
        pytest.skip(f"{binary} is not built")
    if not shutil.which("valgrind"):
        pytest.skip("valgrind is not installed")
    return binary


def memcheck_errors(w):
    """The lines of @w's stderr that are valgrind reports (with -q it prints nothing else but errors)."""
    return [line for line in w.stderr().splitlines() if line.startswith("==")]


@pytest.mark.deadline(400)
@pytest.mark.parametrize("multifd", (False, True), ids=("main", "multifd-zstd"))
def test_migration_under_valgrind(wl, vg_binary, multifd):
    uri = f"unix:{os.path.join(wl.tmpdir, 'mig.sock')}"
    dst = wl.start("dst", *RAM, "-incoming", "defer", prefix=VG_ARGS, binary=vg_binary)
    src = wl.start("src", *RAM, prefix=VG_ARGS, binary=vg_binary)
    for w in (src, dst):
        if multifd:
            w.cmd("migrate-set-capabilities", capabilities=[{"capability": "multifd", "state": True}])
    if multifd:
        src.set_params(**{"multifd-channels": 2, "multifd-compression": "zstd"})
    dst.cmd("migrate-incoming", uri=uri)
    wait_listening(uri, timeout=120)
    pages = src.workload_info()["pages"]
    wait_until(lambda: src.workload_info()["pages-written"] >= pages, 120, "every page written once")
    src.set_params(**{"max-bandwidth": 0})
    src.migrate(uri)
    info = src.wait_migration(timeout=300)
    assert info["status"] == "completed", info
    dst.wait_status(("running",), timeout=60)
    dst.assert_pattern_ok()
    for w in (src, dst):
        w.cmd("quit")
        rc = w.wait_exit(120)
        errors = memcheck_errors(w)
        assert rc == 0 and not errors, f"{w.name} exited with {rc} under valgrind:\n" + "\n".join(errors[:80])
