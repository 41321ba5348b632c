"""Snapshots (issue 21): the mapped-ram file layout (pages at fixed offsets, a bitmap and a CRC32C per page, device
state as records after the page regions), saved with one thread or with multifd's writer threads and restored by
copy or by mapping (restore-mode map), the file size bound across many passes, damaged files, ENOSPC, direct-io,
background-snapshot's consistency while the A-B workload runs, and clones restored side by side from one file
sharing its pages.

What this is not: the wire codec's checks one by one (tests/unit/wire/test-records.c), the write-protect layer's
own races (tests/unit/ram/test-snapshot-wp.c), or speed (bench/snapshot-bench.py)."""

import json
import os
import subprocess
import time

import pytest

from ferrytest import build_dir, wait_until

PAGE = 4096
RANDOM = ["-m", "32M", "-smp", "2", "-pattern", "random", "-seed", "21", "-dirty-rate", "50"]
AB = ["-m", "32M", "-smp", "2", "-pattern", "ab", "-dirty-rate", "0"]


def caps(w, **on):
    w.cmd("migrate-set-capabilities",
          capabilities=[{"capability": k.replace("_", "-"), "state": v} for k, v in on.items()])


def stopped_source(workload, name="src", args=RANDOM):
    src = workload(name, *args)
    src.wait_status(("running",))
    wait_until(lambda: src.workload_info()["pages-written"] >= 2048, 20, "pages written")
    src.cmd("stop")
    src.set_params(**{"max-bandwidth": 0})
    return src


def save(src, uri):
    src.cmd("migrate", uri=uri)
    info = src.wait_migration()
    assert info["status"] == "completed", info
    return info


def restore(workload, name, path, args=RANDOM, mode="copy", multifd=0, expect="completed", extra_caps=None):
    dst = workload(name, *args, "-incoming", "defer")
    caps(dst, mapped_ram=True, **({"multifd": True} if multifd else {}), **(extra_caps or {}))
    params = {"restore-mode": mode}
    if multifd:
        params["multifd-channels"] = multifd
    dst.set_params(**params)
    dst.cmd("migrate-incoming", uri=f"file:{path}")
    info = dst.wait_migration()
    assert info["status"] == expect, info
    return dst, info


def analyze(path, *flags):
    return subprocess.run([os.path.join(build_dir(), "tools", "ferry-analyze"), *flags, path], capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize("channels", [0, 3])
def test_mapped_ram_save_and_restore_by_copy(workload, channels):
    src = stopped_source(workload)
    caps(src, mapped_ram=True, **({"multifd": True} if channels else {}))
    if channels:
        src.set_params(**{"multifd-channels": channels})
    path = os.path.join(workload.tmpdir, "snap.fram")
    info = save(src, f"file:{path}")
    assert "mapped-ram" in info["stream-features"], info
    assert "multifd" not in info["stream-features"], info  # multifd means writer threads here, not connections
    st = os.stat(path)
    assert st.st_size <= (32 << 20) + (2 << 20), st.st_size
    dst, dinfo = restore(workload, "dst", path, multifd=channels)
    assert dst.digest() == src.digest()
    dst.wait_status(("paused",))  # the source was stopped when it was saved


def test_mapped_ram_restore_by_map_matches_copy(workload):
    src = stopped_source(workload)
    caps(src, mapped_ram=True)
    path = os.path.join(workload.tmpdir, "snap.fram")
    save(src, f"file:{path}")
    a, _ = restore(workload, "copy", path, mode="copy")
    b, binfo = restore(workload, "map", path, mode="map")
    assert a.digest() == b.digest() == src.digest()
    v = wait_until(lambda: (lambda r: r if r["status"] != "running" else None)(
        b.query_migrate()["restore-verify"]), 30, "the verifier to finish")
    assert v["status"] == "passed" and v["checked-pages"] == v["total-pages"] > 0, v


def test_mapped_ram_refusals(workload):
    src = stopped_source(workload)
    caps(src, mapped_ram=True)
    with pytest.raises(Exception, match="mapped-ram cannot be used on 'unix:.*': it needs a 'file:' address"):
        src.migrate(uri=f"unix:{workload.tmpdir}/x.sock")
    caps(src, mapped_ram=False)
    with pytest.raises(Exception, match="direct-io needs the mapped-ram capability"):
        src.set_params(**{"direct-io": True})
        src.migrate(uri=f"file:{workload.tmpdir}/y")
    src.set_params(**{"direct-io": False})
    # A FIFO cannot hold pages at offsets.
    fifo = os.path.join(workload.tmpdir, "fifo")
    os.mkfifo(fifo)
    caps(src, mapped_ram=True)
    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        src.migrate(uri=f"file:{fifo}")
        info = src.wait_migration()
        assert info["status"] == "failed" and "needs a regular file" in info["error-desc"], info
    finally:
        os.close(fd)
    assert src.status() == "paused"


def test_analyze_mapped_ram(workload):
    """ferry-analyze describes a mapped-ram file (its layout, the pages its bitmaps hold, each checked against its
    CRC32C) and refuses it once one byte of a present page is flipped, naming that byte's page by file offset."""
    src = stopped_source(workload)
    caps(src, mapped_ram=True)
    path = os.path.join(workload.tmpdir, "snap.fram")
    save(src, f"file:{path}")
    r = analyze(path, "--compact")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert "mapped-ram" in [f["name"] for f in d["features"]], d["features"]
    mr = d["mapped-ram"]
    assert mr["checksums"] is True, mr
    present = sum(b["pages-present"] for b in mr["blocks"])
    assert 0 < present == mr["pages-present"] == d["end"]["pages"] == d["ram"]["pages"], (mr, d["end"], d["ram"])
    assert mr["pages-verified"] == present, mr
    assert mr["resume-offset"] > max(b["pages-offset"] for b in mr["blocks"]), mr

    # The first present page of the first block that has one: its bitmap says where it is.
    with open(path, "rb") as f:
        data = f.read()
    block = next(b for b in mr["blocks"] if b["pages-present"])
    bitmap_off = block["bitmap-offset"]
    page = next(j for j in range(len(data) * 8) if data[bitmap_off + j // 8] & (1 << (j % 8)))
    page_off = block["pages-offset"] + page * PAGE
    with open(path, "r+b") as f:
        f.seek(page_off + 100)
        f.write(bytes([data[page_off + 100] ^ 0x40]))
    r = analyze(path, "--compact")
    assert r.returncode == 1, (r.returncode, r.stderr)
    want = f"at file offset {page_off} (page {page} of RAM block '{block['name']}'): CRC mismatch"
    assert want in r.stderr, r.stderr
    assert json.loads(r.stdout)["error"]["offset"] == page_off, r.stdout
