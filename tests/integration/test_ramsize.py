"""Large, sparse RAM: a running A-B workload of which only a few MiB were written migrates, sending what was written
and not the size of RAM, without the source's dirty tracker building page tables for RAM it never touched (it
write-protects only the page tables that hold pages: docs/memory.md, "Cost that grows with RAM size"); and its
written pages arrive intact (the A-B check on the destination). The A-B check reads every page, which costs about
5-20 us per never-touched page on the test machines (a page fault each), so it is made at 1 GiB; at 64 GiB the test
checks what does not need a read of all RAM. No timing is asserted: bench/ramsize-bench.py measures the cost."""

import os

from ferrytest import wait_listening, wait_until


def page_table_bytes(pid):
    """VmPTE of /proc/PID/status: the memory the process's page tables take."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmPTE:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmPTE in /proc/{pid}/status")


def migrate_sparse(workload, size_gib):
    """A running A-B workload of @size_gib GiB (two workers writing 8 MiB/s together, so a few MiB are written before
    and during the migration) migrated over UNIX; returns source, destination and query-migrate's reply."""
    args = ["-m", f"{size_gib}G", "-smp", "2", "-pattern", "ab", "-dirty-rate", "8"]
    uri = f"unix:{os.path.join(workload.tmpdir, 'mig.sock')}"
    dst = workload("dst", *args, "-incoming", uri)
    wait_listening(uri)
    src = workload("src", *args)
    src.wait_status(("running",))
    wait_until(lambda: src.workload_info()["pages-written"] >= 256, 20, "1 MiB written")
    src.set_params(**{"max-bandwidth": 1 << 30})
    src.migrate(uri)
    info = src.wait_migration()
    assert info["status"] == "completed", f"migration did not complete: {info}"
    ram = info["ram"]
    assert ram["total"] == size_gib << 30, info
    assert ram["normal"] > 0, info
    # What was written goes over the wire, not the size of RAM.
    assert ram["transferred"] < (64 << 20), info
    src.wait_status(("postmigrate",))
    dst.wait_status(("running",))
    return src, dst, info


def test_sparse_64g(workload):
    src, dst, _ = migrate_sparse(workload, 64)
    dst.assert_advancing()
    # Write-protecting all 64 GiB would have given the source page tables for all of it (128 MiB: 8 bytes per
    # 4 KiB page); arming what is populated leaves them at what the workers touched.
    assert page_table_bytes(src.proc.pid) < (16 << 20)


def test_sparse_ab_check(workload):
    src, dst, _ = migrate_sparse(workload, 1)
    dst.assert_pattern_ok()
    dst.assert_advancing()
    dst.assert_pattern_ok()
