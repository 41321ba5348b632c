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


def background_snapshot(src, path, mapped=True):
    caps(src, mapped_ram=mapped, background_snapshot=True)
    return save(src, f"file:{path}")


@pytest.mark.parametrize("mapped", [True, False], ids=["mapped-ram", "stream"])
def test_background_snapshot_of_a_running_ab_workload(workload, mapped):
    """The A-B workload keeps writing while its snapshot is saved; the restored copy is the instant the snapshot
    began, so its pattern check passes (a page saved after the workload changed it would break A-B), and the source
    never stopped for longer than the setup."""
    args = ["-m", "64M", "-smp", "2", "-pattern", "ab", "-dirty-rate", "0"]
    src = workload("src", *args)
    src.wait_status(("running",))
    src.assert_advancing()
    src.set_params(**{"max-bandwidth": 4 << 20})  # a slow walk: the writers meet protected pages first
    path = os.path.join(workload.tmpdir, "bg.fram")
    before = src.workload_info()["pages-written"]
    info = background_snapshot(src, path, mapped)
    assert src.status() == "running", "a background snapshot leaves the workload running"
    assert src.workload_info()["pages-written"] > before
    assert info["dirty-tracker"] == "background-snapshot", info
    assert info["downtime"] < 500, info
    src.assert_pattern_ok()
    if mapped:
        dst, _ = restore(workload, "dst", path, args=args)
    else:
        dst = workload("dst", *args, "-incoming", f"file:{path}")
        assert dst.wait_migration()["status"] == "completed"
    dst.wait_status(("running",))
    dst.assert_pattern_ok()
    dst.assert_advancing()


def test_background_snapshot_of_a_paused_workload_equals_its_digest(workload):
    src = stopped_source(workload)
    path = os.path.join(workload.tmpdir, "bg.fram")
    background_snapshot(src, path)
    assert src.status() == "paused"
    a, _ = restore(workload, "copy", path, mode="copy")
    b, _ = restore(workload, "map", path, mode="map")
    assert a.digest() == b.digest() == src.digest()
    # The stream form, to a live destination over a UNIX socket (with a return path): the same state.
    uri = f"unix:{workload.tmpdir}/bg.sock"
    c = workload("live", *RANDOM, "-incoming", uri)
    c.wait_status(("inmigrate",))
    caps(src, mapped_ram=False, background_snapshot=True)
    save(src, uri)
    assert c.wait_migration()["status"] == "completed"
    assert c.digest() == src.digest()
    assert src.status() == "paused"


def test_background_snapshot_refusals(workload):
    src = workload("src", *AB)
    src.wait_status(("running",))
    caps(src, background_snapshot=True, multifd=True)
    with pytest.raises(Exception, match="background-snapshot cannot be combined with multifd except with mapped-ram"):
        src.migrate(uri=f"unix:{workload.tmpdir}/x.sock")
    caps(src, multifd=False, mapped_ram=True, auto_converge=True)
    with pytest.raises(Exception, match="background-snapshot cannot be combined with auto-converge"):
        src.migrate(uri=f"file:{workload.tmpdir}/y")
    src.assert_pattern_ok()


def mapped_layout(path):
    """The MAPPED_RAM record of a mapped-ram file: (flags, resume, [(bitmap, checksums, pages)...]) with offsets
    from the file's start (file: offset 0)."""
    with open(path, "rb") as f:
        data = f.read(1 << 20)
    pos = 16
    while True:
        typ, flags, length = int.from_bytes(data[pos:pos + 2], "big"), data[pos + 2:pos + 4], \
            int.from_bytes(data[pos + 4:pos + 8], "big")
        payload = data[pos + 8:pos + 8 + length]
        pos += 8 + length + 4  # every record has its CRC trailer (record-checksum is on)
        if typ == 0x0011:
            break
    mflags = int.from_bytes(payload[4:8], "big")
    n = int.from_bytes(payload[8:12], "big")
    resume = int.from_bytes(payload[16:24], "big")
    blocks = [tuple(int.from_bytes(payload[24 + 24 * i + 8 * k:24 + 24 * i + 8 * k + 8], "big") for k in range(3))
              for i in range(n)]
    return mflags, resume, blocks


def first_present_page(path, block):
    bitmap, _, pages = block
    with open(path, "rb") as f:
        f.seek(bitmap)
        bm = f.read(4096)
    for i, byte in enumerate(bm):
        if byte:
            bit = (byte & -byte).bit_length() - 1
            return pages + (i * 8 + bit) * PAGE
    raise AssertionError("no present page")


def present_pages(path, block, npages):
    with open(path, "rb") as f:
        f.seek(block[0])
        return sum(bin(b).count("1") for b in f.read((npages + 7) // 8))


def test_live_passes_keep_the_file_within_ram_size(workload):
    """A running A-B workload saved with mapped-ram over several passes: every pass rewrites pages in place, so the
    file stays within RAM plus metadata however many passes ran, and the restored workload's check passes."""
    src = workload("src", "-m", "64M", "-smp", "2", "-pattern", "ab", "-dirty-rate", "32")
    src.wait_status(("running",))
    caps(src, mapped_ram=True)
    src.set_params(**{"max-bandwidth": 96 << 20, "downtime-limit": 100})
    path = os.path.join(workload.tmpdir, "live.fram")
    info = save(src, f"file:{path}")
    assert info["ram"]["dirty-sync-count"] >= 2, info
    _, _, blocks = mapped_layout(path)
    present = present_pages(path, blocks[0], (64 << 20) // PAGE)
    assert info["ram"]["normal"] > present, (info["ram"], present)  # pages were written more than once
    size = os.stat(path).st_size
    assert size <= (64 << 20) + (2 << 20), (size, info["ram"]["dirty-sync-count"])
    dst, _ = restore(workload, "dst", path, args=["-m", "64M", "-smp", "2", "-pattern", "ab", "-dirty-rate", "32"])
    dst.wait_status(("running",))
    dst.assert_pattern_ok()


@pytest.mark.parametrize("mode", ["copy", "map"])
def test_damaged_page_is_refused_naming_its_offset(workload, mode):
    src = stopped_source(workload)
    caps(src, mapped_ram=True)
    path = os.path.join(workload.tmpdir, "snap.fram")
    save(src, f"file:{path}")
    flags, resume, blocks = mapped_layout(path)
    assert flags & 1, flags  # checksums present
    off = first_present_page(path, blocks[0]) + 100
    with open(path, "r+b") as f:
        f.seek(off)
        b = f.read(1)
        f.seek(off)
        f.write(bytes([b[0] ^ 0x40]))
    page_off = off - 100
    if mode == "copy":
        dst = workload("dst", *RANDOM, "-incoming", "defer")
        dst.cmd("migrate-set-parameters", **{"restore-mode": "copy"})
        dst.cmd("migrate-incoming", uri=f"file:{path}")
        dst.wait_exit(30)  # exit-on-error: a failed restore does not leave a process with half a state
        assert f"is damaged at offset {page_off} (page" in dst.stderr(), dst.stderr()
        dst.expect_crash = True
        return
    dst, _ = restore(workload, "dst", path, mode="map")
    v = wait_until(lambda: (lambda r: r if r["status"] != "running" else None)(
        dst.query_migrate()["restore-verify"]), 30, "the verifier to finish")
    assert v["status"] == "failed" and f"is damaged at offset {page_off} (page" in v["error"], v
    dst.wait_status(("paused",))


def test_enospc_leaves_the_workload_running(workload):
    """A save that runs out of space fails with the reason, and the workload goes on as it was."""
    mnt = os.path.join(workload.tmpdir, "small")
    os.mkdir(mnt)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", mnt], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root) to run out of space")
    try:
        src = workload("src", *AB)
        src.wait_status(("running",))
        for mapped, background in ((True, False), (False, False), (True, True), (False, True)):
            caps(src, mapped_ram=mapped, background_snapshot=background)
            src.migrate(uri=f"file:{mnt}/snap")
            info = src.wait_migration()
            assert info["status"] == "failed", info
            assert "No space left on device" in info["error-desc"], info
            assert src.status() == "running"
            src.assert_advancing()
            src.assert_pattern_ok()
    finally:
        subprocess.run(["umount", "-l", mnt])


def mapping_memory(pid, path):
    """Rss and Pss (bytes) of @pid's mappings of the file @path: the restored RAM itself, whatever else the process
    holds (a sanitizer's shadow memory, say)."""
    out = {"Rss": 0, "Pss": 0}
    inside = False
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            parts = line.split()
            if "-" in parts[0] and len(parts) >= 5 and not parts[0].endswith(":"):
                inside = len(parts) >= 6 and parts[5] == path
            elif inside and parts[0] in ("Rss:", "Pss:"):
                out[parts[0][:-1]] += int(parts[1]) * 1024
    return out


def test_clones_share_the_snapshot_pages(workload):
    """Four processes restored from one file with restore-mode map run side by side, each with its own name, and
    share the file's pages: the proportional memory of their RAM mappings adds up to far less than four copies."""
    args = ["-m", "128M", "-smp", "1", "-pattern", "random", "-seed", "7"]
    src = workload("src", *args, "-dirty-rate", "200")
    # The clones' writers go slowly: each page they write becomes their own, and the check is of what they share.
    args += ["-dirty-rate", "1"]
    src.wait_status(("running",))
    wait_until(lambda: src.workload_info()["pages-written"] >= (128 << 20) // PAGE, 60, "RAM written")
    src.cmd("stop")
    caps(src, mapped_ram=True)
    path = os.path.join(workload.tmpdir, "snap.fram")
    save(src, f"file:{path}")
    digest = src.digest()
    clones = [restore(workload, f"clone{i}", path, args=args, mode="map")[0] for i in range(4)]
    names = {c.cmd("query-name")["name"] for c in clones}
    assert names == {f"clone{i}" for i in range(4)}, names
    for c in clones:
        assert c.digest() == digest
        c.cmd("cont")
    for c in clones:
        c.wait_status(("running",))
        c.assert_advancing()
    mem = [mapping_memory(c.proc.pid, path) for c in clones]
    pss, rss = sum(m["Pss"] for m in mem), sum(m["Rss"] for m in mem)
    # Every clone maps all 128 MiB of the file (the digest read every page): Rss counts them four times, Pss once
    # (plus the few pages each clone's writer has made its own since).
    assert rss >= 4 * (100 << 20), mem
    assert pss < 2 * (128 << 20), mem


def test_direct_io(workload):
    """direct-io where the file system takes O_DIRECT (the test directory's), and the refusal with the reason where
    it does not."""
    probe = os.path.join(workload.tmpdir, "probe")
    try:
        os.close(os.open(probe, os.O_CREAT | os.O_WRONLY | os.O_DIRECT))
    except OSError:
        pytest.skip(f"{workload.tmpdir} does not support O_DIRECT")
    src = stopped_source(workload)
    caps(src, mapped_ram=True)
    src.set_params(**{"direct-io": True})
    path = os.path.join(workload.tmpdir, "snap.fram")
    save(src, f"file:{path}")
    dst = workload("dst", *RANDOM, "-incoming", "defer")
    dst.set_params(**{"direct-io": True})
    dst.cmd("migrate-incoming", uri=f"file:{path}")
    assert dst.wait_migration()["status"] == "completed"
    assert dst.digest() == src.digest()


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
