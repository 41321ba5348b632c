"""File-backed RAM (QEMU's -object memory-backend-file,mem-path=FILE): the command line's refusals (no mem-path, a
file too small, a size that does not match -m, a destination over a file, ...), the rule that such RAM keeps the
file's content (no pattern fill, no writers unless -pattern is given, query-pattern-check refused), and
migrations of a file-backed source to anonymous destinations, compared by query-ram-digest. The file contents are
made here: random pages, all different, mixed with zero pages, so a source that sent only the pages the kernel
has populated (none of a file mapping that was never read) would leave the destination with zeros.

It does not cover QEMU itself (bench/qemu-bench.py measures against it), memfd backends (test_local.py) nor
mem-path= a directory (test_hugetlb.py)."""

import os
import subprocess

import pytest

from ferrytest import sanitizer_report, wait_listening, wait_until, workload_binary

FAST = 1 << 30
PAGE = os.sysconf("SC_PAGE_SIZE")
SIZE = 64 << 20


def write_file(path, size, zero_every=3):
    """@size bytes of random pages (each different) where every @zero_every-th page is zero; returns the number
    of non-zero pages."""
    nonzero = 0
    chunk = bytearray()
    with open(path, "wb") as f:
        for i in range(size // PAGE):
            if zero_every and i % zero_every == 0:
                chunk += bytes(PAGE)
            else:
                chunk += os.urandom(PAGE)
                nonzero += 1
            if len(chunk) >= 1 << 20:
                f.write(chunk)
                chunk = bytearray()
        f.write(chunk)
    return nonzero


def file_backend(path, size="64M", share="off", extra=""):
    return ["-object", f"memory-backend-file,id=ram0,size={size},mem-path={path},share={share}{extra}",
            "-machine", "memory-backend=ram0"]


@pytest.fixture
def ramfile(tmpdir_short):
    path = os.path.join(tmpdir_short, "ram.img")
    nonzero = write_file(path, SIZE)
    return path, nonzero


def refused(argv):
    p = subprocess.run([workload_binary(), *argv], stdin=subprocess.DEVNULL, capture_output=True, timeout=20,
                       text=True, errors="replace")
    assert p.returncode > 0, f"exit status {p.returncode} for {argv}; stderr: {p.stderr}"
    assert sanitizer_report(p.stderr) is None, p.stderr
    return p.stderr


@pytest.mark.parametrize("case", ["no-mem-path", "empty-mem-path", "missing-file", "directory", "too-small",
                                  "size-mismatch", "bad-share", "bad-prealloc", "unknown-property", "incoming",
                                  "unused", "path-too-long"])
def test_bad_file_backend(ramfile, tmpdir_short, case):
    path, _ = ramfile
    machine = ["-machine", "memory-backend=ram0"]
    argv, words = {
        "no-mem-path": (["-object", "memory-backend-file,id=ram0,size=64M"] + machine, ["mem-path", "required"]),
        "empty-mem-path": (["-object", "memory-backend-file,id=ram0,size=64M,mem-path="] + machine, ["mem-path"]),
        "missing-file": (file_backend(os.path.join(tmpdir_short, "nope")), ["nope", "No such file"]),
        "directory": (file_backend("/dev/null"), ["not a regular file or a directory"]),
        "too-small": (file_backend(path, size="128M"), ["too small", str(SIZE)]),
        "size-mismatch": (["-m", "32M"] + file_backend(path), ["does not match"]),
        "bad-share": (file_backend(path, share="yes"), ["share", "yes"]),
        "bad-prealloc": (file_backend(path, extra=",prealloc=maybe"), ["prealloc", "maybe"]),
        "unknown-property": (file_backend(path, extra=",discard-data=on"), ["discard-data"]),
        "incoming": (file_backend(path) + ["-incoming", "defer"], ["-incoming"]),
        "unused": (["-object", f"memory-backend-file,id=ram0,size=64M,mem-path={path}"], ["memory-backend=ram0"]),
        "path-too-long": (file_backend("/" + "x" * 5000), ["too long"]),
    }[case]
    msg = refused(argv)
    assert all(w.lower() in msg.lower() for w in words), f"message for {case} lacks {words}: {msg!r}"


def digest_equal(src, dst):
    a, b = src.digest(), dst.digest()
    assert a["size"] == b["size"] == SIZE, (a, b)
    assert a["digest"] == b["digest"], (a, b)
    return a["digest"]


@pytest.mark.parametrize("dst_kind", ["anonymous", "prealloc"])
def test_migrate_paused_file_backed(workload, ramfile, dst_kind):
    """Random file contents, never read by the source before the migration, arrive whole: every non-zero page goes
    as data, every zero page as a zero record. Four blocks each map their slice of the file."""
    path, nonzero = ramfile
    uri = f"unix:{os.path.join(workload.tmpdir, 'mig.sock')}"
    dst = workload("dst", "-m", "64M", "-ram-block-size", "16M", "-incoming", uri,
                   *(["-mem-prealloc"] if dst_kind == "prealloc" else []))
    wait_listening(uri)
    src = workload("src", *file_backend(path), "-ram-block-size", "16M", "-S")
    src.set_params(**{"max-bandwidth": FAST})
    src.migrate(uri)
    info = src.wait_migration()
    assert info["status"] == "completed", info
    ram = info["ram"]
    assert ram["normal"] == nonzero, info
    assert ram["duplicate"] == SIZE // PAGE - nonzero, info
    digest_equal(src, dst)
    # share=off: the source never wrote the file.
    with open(path, "rb") as f:
        first = f.read(PAGE * 2)
    assert first[:PAGE] == bytes(PAGE) and first[PAGE:] != bytes(PAGE)


def test_file_backed_ram_keeps_its_content(workload, ramfile):
    """Running without -pattern: no fill and no writers, so the RAM stays the file's; the pattern check refuses."""
    path, _ = ramfile
    src = workload("src", *file_backend(path, share="on"))
    src.wait_status(("running",))
    before = src.digest()
    info = src.workload_info()
    assert info["pages-written"] == 0, info
    with pytest.raises(Exception) as e:
        src.pattern_check()
    assert "query-ram-digest" in str(e.value)
    src.cmd("stop")
    src.cmd("cont")
    assert src.digest() == before
    assert src.workload_info()["pages-written"] == 0
    # share=on maps the file itself: what the workload holds is exactly the file.
    ref = workload("ref", *file_backend(path), "-S")
    assert ref.digest() == before


def test_migrate_running_file_backed_with_pattern(workload, ramfile):
    """With -pattern the workers write over the file's content while the migration runs (dirty tracking of a
    private file mapping); the destination, held with -S, must equal the stopped source."""
    path, _ = ramfile
    uri = f"unix:{os.path.join(workload.tmpdir, 'mig.sock')}"
    args = ["-smp", "2", "-pattern", "random", "-dirty-rate", "16"]
    dst = workload("dst", "-m", "64M", *args, "-incoming", uri, "-S")
    wait_listening(uri)
    src = workload("src", *file_backend(path), *args)
    src.wait_status(("running",))
    wait_until(lambda: src.workload_info()["pages-written"] >= 256, 30, "some pages written")
    src.set_params(**{"max-bandwidth": 256 << 20})
    src.migrate(uri)
    info = src.wait_migration()
    assert info["status"] == "completed", info
    assert info["ram"]["dirty-sync-count"] >= 2, info
    src.wait_status(("postmigrate",))
    digest_equal(src, dst)


def test_sparse_file_holes_are_not_sent(workload, tmpdir_short):
    """A file's holes read as zero, like never-touched RAM, and the kernel knows where they are (SEEK_DATA): the
    source does not even read them. Only the written pages travel (some of them zero: written zeros are data of
    the file and cost a bit each); the destination reads zero everywhere else."""
    path = os.path.join(tmpdir_short, "sparse.img")
    written = list(range(0, SIZE // PAGE, 97))  # a page every 97, the rest holes
    with open(path, "wb") as f:
        f.truncate(SIZE)
        for i, page in enumerate(written):
            f.seek(page * PAGE)
            f.write(bytes(PAGE) if i % 2 else os.urandom(PAGE))
    uri = f"unix:{os.path.join(workload.tmpdir, 'mig.sock')}"
    dst = workload("dst", "-m", "64M", "-incoming", uri)
    wait_listening(uri)
    src = workload("src", *file_backend(path), "-S")
    src.set_params(**{"max-bandwidth": FAST})
    src.migrate(uri)
    info = src.wait_migration()
    assert info["status"] == "completed", info
    ram = info["ram"]
    assert ram["normal"] + ram["duplicate"] == len(written), info
    assert ram["normal"] == (len(written) + 1) // 2, info
    digest_equal(src, dst)
