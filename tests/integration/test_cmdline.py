"""ferry-workload's command line: bad options make it exit non-zero at once with a message that names the
problem, without a sanitizer report. Good options are exercised by every other test."""

import subprocess

import pytest

from ferrytest import sanitizer_report, workload_binary

# (id, argv after the program name, words of which the message must contain at least one, case-insensitively)
BAD_COMMAND_LINES = [
    ("m-not-a-size", ["-m", "bogus"], ["bogus"]),
    ("m-bad-suffix", ["-m", "12Q"], ["12Q"]),
    ("m-zero", ["-m", "0"], ["-m", "size", "memory"]),
    ("m-missing-value", ["-m"], ["-m"]),
    ("unknown-option", ["-frobnicate"], ["frobnicate"]),
    ("incoming-bad-scheme", ["-incoming", "bogus:1"], ["bogus"]),
    ("incoming-tcp-no-port", ["-incoming", "tcp:127.0.0.1"], ["port", "tcp:127.0.0.1"]),
    ("smp-zero", ["-smp", "0"], ["smp"]),
    ("smp-not-a-number", ["-smp", "two"], ["two", "smp"]),
    ("pattern-unknown", ["-pattern", "zigzag"], ["zigzag"]),
    ("dirty-tracker-unknown", ["-dirty-tracker", "magic"], ["magic"]),
    ("dirty-rate-negative", ["-dirty-rate", "-5"], ["dirty-rate", "-5"]),
    ("qmp-not-unix", ["-qmp", "tcp:127.0.0.1:4444,server=on,wait=off"], ["qmp", "tcp"]),
    ("object-unknown-type", ["-object", "memory-backend-file,id=m,size=1M"], ["memory-backend-file"]),
    ("object-unknown-property", ["-object", "memory-backend-memfd,id=m,size=1M,seal=on"], ["seal"]),
    ("object-bad-share", ["-object", "memory-backend-memfd,id=m,size=1M,share=yes"], ["share", "yes"]),
    ("object-no-size", ["-object", "memory-backend-memfd,id=m"], ["size"]),
    ("object-unused", ["-object", "memory-backend-memfd,id=m,size=1M"], ["memory-backend=m"]),
    ("machine-unknown-backend", ["-machine", "memory-backend=nope"], ["nope"]),
    ("machine-unknown-property", ["-machine", "accel=kvm"], ["accel"]),
    ("backend-size-mismatch", ["-m", "64M", "-object", "memory-backend-memfd,id=m,size=32M",
                               "-machine", "memory-backend=m"], ["does not match"]),
]


@pytest.mark.parametrize("argv,words", [c[1:] for c in BAD_COMMAND_LINES], ids=[c[0] for c in BAD_COMMAND_LINES])
def test_bad_command_line(argv, words):
    try:
        p = subprocess.run([workload_binary(), *argv], stdin=subprocess.DEVNULL, capture_output=True, timeout=20,
                           text=True, errors="replace")
    except subprocess.TimeoutExpired:
        pytest.fail(f"ferry-workload {argv} did not exit: a bad command line must be refused at once")
    assert p.returncode > 0, f"exit status {p.returncode} for {argv}; stderr: {p.stderr}"
    assert sanitizer_report(p.stderr) is None, p.stderr
    msg = p.stderr.lower()
    assert any(w.lower() in msg for w in words), f"message for {argv} names none of {words}: {p.stderr!r}"

