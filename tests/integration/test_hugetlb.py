"""Hugetlb-backed RAM with QEMU's option names: -object memory-backend-memfd,hugetlb=on[,hugetlbsize=SIZE],
-object memory-backend-file,mem-path=DIR (a new unlinked temporary file in a directory: here a hugetlbfs mount
and a plain directory) and the top-level -mem-path DIR. Migrations between hugetlb and ordinary RAM in both
directions must give equal query-ram-digest; a destination on hugetlb receives a running workload's writes
(the uffd-wp tracker reports whole huge pages); mode cpr-transfer passes a shared hugetlb memfd, and a
destination whose block has 4 KiB pages refuses it; postcopy-ram is refused at migrate time; the option errors
(hugetlbsize without hugetlb, a size the host does not offer, a size not a multiple of the huge page) name what
is wrong.

The machine may have no huge pages: the module fixture reserves 16 pages of 2 MiB (32 MiB) by raising
/proc/sys/vm/nr_hugepages, mounts a hugetlbfs in a temporary directory, and restores both afterwards; without
root or hugetlb support the tests skip, saying why. Not covered: 1 GiB pages (none can be reserved here), the
engine-level details (tests/unit/ram/test-hugetlb.c)."""

import os
import subprocess
import tempfile

import pytest

from ferrytest import sanitizer_report, wait_listening, workload_binary

FAST = 1 << 30
HPS = 2 << 20
SIZE = 8 << 20  # per workload: two side by side on hugetlb need 8 of the 16 pages
NR = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"
FREE = "/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages"
NEED = 16


def read_int(path):
    with open(path) as f:
        return int(f.read())


@pytest.fixture(scope="module")
def hugetlbfs():
    """A hugetlbfs mount with at least NEED free 2 MiB pages; yields its path. Restores nr_hugepages and unmounts."""
    if not os.path.exists(NR):
        pytest.skip("no 2 MiB huge pages on this host (no " + NR + ")")
    if os.geteuid() != 0:
        pytest.skip("reserving huge pages and mounting hugetlbfs needs root")
    old = read_int(NR)
    free = read_int(FREE)
    raised = False
    if free < NEED:
        with open(NR, "w") as f:
            f.write(str(old + NEED - free))
        raised = True
    mnt = tempfile.mkdtemp(prefix="ferry-hugetlbfs-")
    mounted = False
    try:
        if read_int(FREE) < NEED:
            pytest.skip("the kernel could not reserve 16 huge pages of 2 MiB")
        r = subprocess.run(["mount", "-t", "hugetlbfs", "-o", "pagesize=2M", "none", mnt], capture_output=True,
                           text=True)
        if r.returncode != 0:
            pytest.skip("cannot mount hugetlbfs: " + r.stderr.strip())
        mounted = True
        yield mnt
    finally:
        if mounted:
            subprocess.run(["umount", mnt], check=False)
        os.rmdir(mnt)
        if raised:
            with open(NR, "w") as f:
                f.write(str(old))


def memfd_huge(extra=""):
    return ["-object", f"memory-backend-memfd,id=ram0,size={SIZE},hugetlb=on{extra}",
            "-machine", "memory-backend=ram0"]


def dir_backend(path, share="off"):
    return ["-object", f"memory-backend-file,id=ram0,size={SIZE},mem-path={path},share={share}",
            "-machine", "memory-backend=ram0"]


def refused(argv):
    p = subprocess.run([workload_binary(), *argv], stdin=subprocess.DEVNULL, capture_output=True, timeout=20,
                       text=True, errors="replace")
    assert p.returncode > 0, f"exit status {p.returncode} for {argv}; stderr: {p.stderr}"
    assert sanitizer_report(p.stderr) is None, p.stderr
    return p.stderr


@pytest.mark.parametrize("case", ["size-without-hugetlb", "unsupported-size", "not-a-multiple",
                                  "zero-size", "dir-not-a-multiple", "mem-path-with-backend"])
def test_bad_hugetlb_options(hugetlbfs, case):
    argv, words = {
        "size-without-hugetlb": (["-object", f"memory-backend-memfd,id=ram0,size={SIZE},hugetlbsize=2M",
                                  "-machine", "memory-backend=ram0"], ["hugetlbsize needs hugetlb=on"]),
        "unsupported-size": (memfd_huge(",hugetlbsize=4M"), ["4M is not a huge page size", "offers: 2M"]),
        "not-a-multiple": (["-object", "memory-backend-memfd,id=ram0,size=9M,hugetlb=on",
                            "-machine", "memory-backend=ram0"], ["9437184 is not a multiple", "2097152-byte"]),
        "zero-size": (memfd_huge(",hugetlbsize=0"), ["hugetlbsize '0'"]),
        "dir-not-a-multiple": (["-object", f"memory-backend-file,id=ram0,size=9M,mem-path={hugetlbfs}",
                                "-machine", "memory-backend=ram0"], ["hugetlbfs", "2097152-byte pages", "9437184"]),
        "mem-path-with-backend": (memfd_huge() + ["-mem-path", hugetlbfs], ["-mem-path", "memory-backend"]),
    }[case]
    msg = refused(argv)
    assert all(w in msg for w in words), f"message for {case} lacks {words}: {msg!r}"


def migrate(workload, src_args, dst_args, running=False):
    uri = f"unix:{os.path.join(workload.tmpdir, 'mig.sock')}"
    common = ["-smp", "2", "-pattern", "random", "-ram-block-size", "4M"]
    if running:
        common += ["-dirty-rate", "8"]
    dst = workload("dst", "-m", str(SIZE) + "B", *common, *dst_args, "-incoming", uri, "-S")
    wait_listening(uri)
    src = workload("src", "-m", str(SIZE) + "B", *common, *src_args, *([] if running else ["-S"]))
    if running:
        src.wait_status(("running",))
    src.set_params(**{"max-bandwidth": FAST if not running else 64 << 20})
    src.migrate(uri)
    info = src.wait_migration()
    assert info["status"] == "completed", info
    a, b = src.digest(), dst.digest()
    assert a["size"] == b["size"] == SIZE, (a, b)
    assert a["digest"] == b["digest"], (a, b)
    return info


@pytest.mark.parametrize("src_kind,dst_kind", [("memfd-huge", "anonymous"), ("anonymous", "memfd-huge"),
                                               ("hugetlbfs-dir", "memfd-huge-shared"), ("memfd-huge", "mem-path")])
def test_migrate_hugetlb(workload, hugetlbfs, src_kind, dst_kind):
    kinds = {
        "anonymous": [],
        "memfd-huge": memfd_huge(",hugetlbsize=2M"),
        "memfd-huge-shared": memfd_huge(",share=on"),
        "hugetlbfs-dir": dir_backend(hugetlbfs, share="on"),
        "mem-path": ["-mem-path", hugetlbfs],
    }
    free0 = read_int(FREE)
    migrate(workload, kinds[src_kind], kinds[dst_kind])
    # The hugetlb side(s) really hold huge pages: the pattern and the migration wrote all of their RAM.
    huge_sides = (src_kind != "anonymous") + (dst_kind != "anonymous")
    assert free0 - read_int(FREE) == huge_sides * SIZE // HPS
    assert os.listdir(hugetlbfs) == []  # the temporary files were unlinked at once


def test_migrate_running_hugetlb(workload, hugetlbfs):
    """Writers run during the migration: every write to a huge page must reach the destination (the tracker may
    report the whole huge page, never less)."""
    info = migrate(workload, memfd_huge(), dir_backend(hugetlbfs), running=True)
    assert info["ram"]["dirty-sync-count"] >= 2, info


def test_plain_directory(workload, tmpdir_short):
    """mem-path= an ordinary directory: a temporary file on it is RAM as any other, also on a destination."""
    d = os.path.join(tmpdir_short, "ramdir")
    os.mkdir(d)
    migrate(workload, dir_backend(d), ["-mem-path", d])
    assert os.listdir(d) == []


def test_postcopy_refused(workload, hugetlbfs):
    src = workload("src", *memfd_huge(), "-S")
    src.cmd("migrate-set-capabilities", capabilities=[{"capability": "postcopy-ram", "state": True}])
    uri = f"unix:{os.path.join(workload.tmpdir, 'mig.sock')}"
    with pytest.raises(Exception) as e:
        src.migrate(uri)
    assert "huge pages" in str(e.value) and "postcopy" in str(e.value), str(e.value)


@pytest.mark.parametrize("dst_kind", ["memfd-huge-shared", "anonymous"])
def test_cpr_transfer(workload, hugetlbfs, dst_kind):
    """Mode cpr-transfer passes a shared hugetlb memfd as it passes a shmem one; a destination whose block has
    other pages refuses it, naming both page sizes, and the source stays intact."""
    uri = f"unix:{os.path.join(workload.tmpdir, 'mig.sock')}"
    common = ["-m", str(SIZE) + "B", "-pattern", "random", "-S"]
    dst = workload("dst", *common, *(memfd_huge(",share=on") if dst_kind != "anonymous" else []), "-incoming", uri)
    wait_listening(uri)
    src = workload("src", *common, *memfd_huge(",share=on"))
    src.set_params(mode="cpr-transfer")
    src.migrate(uri)
    info = src.wait_migration()
    if dst_kind == "anonymous":
        assert info["status"] == "failed", info
        dst.wait_exit()
        assert "2097152-byte pages, the block 4096-byte pages" in dst.stderr(), dst.stderr()
        return
    assert info["status"] == "completed", info
    assert info["ram"]["fd-passed-bytes"] == SIZE, info
    assert src.digest() == dst.digest()
