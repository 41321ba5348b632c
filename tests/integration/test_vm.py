"""ferry-vm, the KVM virtual machine, with its built-in A-B guest: it boots and prints on its serial port; a running
guest migrates over UNIX and TCP and keeps running on the destination (the A-B invariant holds, exactly as
QEMU's migration test checks it; more progress characters appear on the destination's serial output; the KVM
clock does not go backwards); it migrates twice (A to B to C); a cancelled migration leaves the source running
and a second one completes; shared memfd RAM moves without a copy in mode cpr-transfer; the uffd-wp tracker
works for KVM's writes too, and so does KVM's dirty ring, also one so small that the vCPU fills it over and over
during the migration; a destination of another shape refuses the stream; bad -accel values are refused. Every
test skips where /dev/kvm cannot be opened."""

import os
import time

import pytest

import ferrytest
from ferrytest import free_port, wait_listening, wait_until

FAST = 1 << 30  # max-bandwidth for migrations that should converge: 1 GiB/s
SLOW = 16 << 20  # one that cannot: the guest dirties its 63 MiB every few tens of ms
VM = ["-m", "64M", "-ab-every", "2"]


def vm_binary():
    return os.path.join(ferrytest.build_dir(), "hosts", "vm", "ferry-vm")


def kvm_unavailable():
    if not os.access(vm_binary(), os.X_OK):
        return f"{vm_binary()} was not built (not an x86-64 Linux build)"
    try:
        os.close(os.open("/dev/kvm", os.O_RDWR))
    except OSError as e:
        return f"/dev/kvm cannot be opened: {e.strerror}"
    return None


pytestmark = pytest.mark.skipif(kvm_unavailable() is not None, reason=str(kvm_unavailable()))


class VMSet(ferrytest.WorkloadSet):
    """ferry-vm processes, each with its serial output in NAME.serial."""

    def start(self, name, *args, **kwargs):
        serial = os.path.join(self.tmpdir, f"{name}.serial")
        vm = super().start(name, "-serial", f"file:{serial}", *args, binary=vm_binary(), **kwargs)
        vm.serial_path = serial
        return vm


@pytest.fixture
def vms(tmpdir_short):
    s = VMSet(tmpdir_short)
    yield s
    problems = s.close()
    assert not problems, "\n".join(problems)


def serial(vm):
    try:
        with open(vm.serial_path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return b""


def wait_progress(vm, more=2, timeout=30):
    """Wait until @more progress characters were added to @vm's serial output; returns the output."""
    first = serial(vm).count(b"B")
    return wait_until(lambda: serial(vm).count(b"B") >= first + more and serial(vm), timeout,
                      f"{vm.name}: {more} more 'B' on the serial port (had {first})")


def assert_ab_ok(vm):
    check = vm.cmd("query-pattern-check")
    assert check["ok"] is True and check["mismatches"] == 0, f"{vm.name}: A-B check failed: {check}"
    assert check["pages"] == (63 << 20) // 4096 and check["start"] == 1 << 20, check
    return check


def unix_uri(vms, name="mig.sock"):
    return f"unix:{os.path.join(vms.tmpdir, name)}"


def migrate(src, dst, uri, bandwidth=FAST):
    src.cmd("migrate-set-parameters", **{"max-bandwidth": bandwidth})
    clock_before = src.cmd("query-vm")["kvm-clock"]
    src.migrate(uri)
    info = src.wait_migration()
    assert info["status"] == "completed", f"migration did not complete: {info}"
    src.wait_status(("postmigrate",))
    dst.wait_status(("running",))
    assert dst.cmd("query-vm")["kvm-clock"] >= clock_before, "the destination's KVM clock went backwards"
    return info


def check_continues(src, dst):
    assert_ab_ok(dst)
    out = wait_progress(dst)
    assert out.count(b"B") >= 2, out
    assert b"A" not in out, "the destination's guest booted again instead of going on"
    # The source is stopped for good: its serial output no longer grows.
    before = serial(src)
    time.sleep(0.3)
    assert serial(src) == before
    assert_ab_ok(dst)


def test_boot_and_serial(vms):
    vm = vms.start("vm", *VM)
    out = wait_progress(vm, 3)
    assert out.startswith(b"AB"), out[:40]
    check = assert_ab_ok(vm)
    info = vm.cmd("query-vm")
    assert info["ram-size"] == 64 << 20 and len(info["cpus"]) == 1, info
    assert info["dirty-tracker"] in ("kvm-dirty-log", "uffd-wp"), info
    assert info["serial-bytes"] >= 4, info
    # The guest really runs: a later check finds other first bytes.
    wait_until(lambda: vm.cmd("query-pattern-check")["first-byte"] != check["first-byte"], 10, "the guest to move on")


@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_migrate_running(vms, transport):
    uri = unix_uri(vms) if transport == "unix" else f"tcp:127.0.0.1:{free_port()}"
    dst = vms.start("dst", *VM, "-incoming", uri)
    wait_listening(uri)
    src = vms.start("src", *VM)
    wait_progress(src)
    info = migrate(src, dst, uri)
    assert info["dirty-tracker"] == src.cmd("query-vm")["dirty-tracker"], info
    assert info["ram"]["normal"] >= (63 << 20) // 4096, info
    check_continues(src, dst)


def test_migrate_twice(vms):
    uri_b, uri_c = unix_uri(vms, "b.sock"), unix_uri(vms, "c.sock")
    a = vms.start("a", *VM)
    b = vms.start("b", *VM, "-incoming", uri_b)
    wait_listening(uri_b)
    wait_progress(a)
    migrate(a, b, uri_b)
    check_continues(a, b)
    c = vms.start("c", *VM, "-incoming", uri_c)
    wait_listening(uri_c)
    migrate(b, c, uri_c)
    check_continues(b, c)


def test_cancel_and_retry(vms):
    uri = unix_uri(vms)
    dst = vms.start("dst", *VM, "-incoming", uri)
    wait_listening(uri)
    src = vms.start("src", *VM)
    wait_progress(src)
    src.cmd("migrate-set-parameters", **{"max-bandwidth": SLOW})
    src.migrate(uri)
    wait_until(lambda: src.query_migrate().get("ram", {}).get("dirty-sync-count", 0) >= 2, 60, "a second pass")
    src.cmd("migrate_cancel")
    info = src.wait_migration(timeout=30)
    assert info["status"] == "cancelled", info
    src.wait_status(("running",))
    # The guest goes on where it was: same serial output, more progress, the invariant holds.
    wait_progress(src)
    assert_ab_ok(src)
    assert dst.wait_exit(30) != 0

    uri2 = unix_uri(vms, "mig2.sock")
    dst2 = vms.start("dst2", *VM, "-incoming", uri2)
    wait_listening(uri2)
    migrate(src, dst2, uri2)
    check_continues(src, dst2)


def test_cpr_transfer_memfd(vms):
    mem = ["-object", "memory-backend-memfd,id=pc.ram,size=64M,share=on", "-machine", "memory-backend=pc.ram",
           "-ab-every", "2"]
    uri = unix_uri(vms)
    dst = vms.start("dst", *mem, "-incoming", uri)
    wait_listening(uri)
    src = vms.start("src", *mem)
    wait_progress(src)
    src.cmd("migrate-set-parameters", mode="cpr-transfer")
    info = migrate(src, dst, uri)
    assert info["ram"]["normal"] == 0, f"cpr-transfer copied pages: {info}"
    assert info.get("fds-passed", 0) >= 1, info
    check_continues(src, dst)


def test_uffd_wp_tracker(vms):
    uri = unix_uri(vms)
    dst = vms.start("dst", *VM, "-incoming", uri)
    wait_listening(uri)
    src = vms.start("src", *VM, "-dirty-tracker", "uffd-wp")
    assert src.cmd("query-vm")["dirty-tracker"] == "uffd-wp"
    wait_progress(src)
    info = migrate(src, dst, uri)
    assert info["dirty-tracker"] == "uffd-wp", info
    check_continues(src, dst)


def dirty_ring_unavailable():
    import fcntl
    KVM_CHECK_EXTENSION = 0xAE03
    KVM_CAP_DIRTY_LOG_RING, KVM_CAP_DIRTY_LOG_RING_ACQ_REL = 192, 223
    try:
        fd = os.open("/dev/kvm", os.O_RDWR)
    except OSError as e:
        return f"/dev/kvm cannot be opened: {e.strerror}"
    try:
        if max(fcntl.ioctl(fd, KVM_CHECK_EXTENSION, c) for c in (KVM_CAP_DIRTY_LOG_RING,
                                                                   KVM_CAP_DIRTY_LOG_RING_ACQ_REL)) <= 0:
            return "this KVM has no dirty ring (KVM_CAP_DIRTY_LOG_RING)"
    finally:
        os.close(fd)
    return None


@pytest.mark.parametrize("ring", [["-dirty-tracker", "kvm-dirty-ring"], ["-accel", "kvm,dirty-ring-size=1024"]],
                         ids=["dirty-tracker", "accel-small"])
def test_dirty_ring_tracker(vms, ring):
    why = dirty_ring_unavailable()
    if why:
        pytest.skip(why)
    size = 4096 if ring[0] == "-dirty-tracker" else 1024
    uri = unix_uri(vms)
    # The destination needs no ring; it gets the same -accel anyway, as QEMU's destinations are started.
    dst = vms.start("dst", *VM, *ring, "-incoming", uri)
    wait_listening(uri)
    src = vms.start("src", *VM, *ring)
    info = src.cmd("query-vm")
    assert info["dirty-tracker"] == "kvm-dirty-ring" and info["dirty-ring-size"] == size, info
    assert info["manual-dirty-log-protect"] is False, info
    wait_progress(src)
    before = src.cmd("query-vm")
    info = migrate(src, dst, uri)
    assert info["dirty-tracker"] == "kvm-dirty-ring", info
    assert info["ram"]["normal"] >= (63 << 20) // 4096, info
    after = src.cmd("query-vm")
    # The guest rewrites 16128 pages per pass: the ring collected them, and a ring of 1024 entries filled (its vCPU
    # collected it) many times during the migration.
    assert after["dirty-ring-collected"] > before["dirty-ring-collected"], after
    if size == 1024:
        assert after["dirty-ring-full-exits"] > before["dirty-ring-full-exits"], after
    assert all(not c["stopped-for-good"] for c in after["cpus"]), after
    check_continues(src, dst)


def test_accel_option(vms):
    import subprocess

    def run(*args):
        return subprocess.run([vm_binary(), "-serial", "null", *args], capture_output=True, text=True, timeout=30)

    for value in ("1000", "512", "131072", "abc", "-4096", ""):
        bad = run("-accel", f"kvm,dirty-ring-size={value}")
        assert bad.returncode == 1, bad
        assert f"dirty-ring-size '{value}' is not a power of two from 1024 to 65536" in bad.stderr, bad.stderr
    for args, words in ((["-accel", "tcg"], "'tcg' is not an accelerator"),
                        (["-accel", "kvm,bogus=1"], "unknown property 'bogus'"),
                        (["-accel", "kvm,kernel-irqchip=split"], "kernel-irqchip=split"),
                        (["-accel", "kvm,dirty-ring-size=4096", "-dirty-tracker", "uffd-wp"], "contradict"),
                        (["-accel", "kvm,dirty-ring-size=4096", "-dirty-tracker", "kvm-dirty-log"], "contradict"),
                        (["-accel", "kvm,dirty-ring-size=0", "-dirty-tracker", "kvm-dirty-ring"], "needs a ring"),
                        (["-dirty-tracker", "ring"], "kvm-dirty-ring")):
        bad = run(*args)
        assert bad.returncode == 1 and words in bad.stderr, (args, bad)
    # Accepted: kvm alone, QEMU's properties ferry-vm ignores, no ring (0), and the bitmap still the default.
    for i, args in enumerate((["-accel", "kvm"], ["-accel", "accel=kvm,kvm-shadow-mem=256M,kernel-irqchip=on"],
                              ["-accel", "kvm,dirty-ring-size=0"], ["-machine", "pc,accel=kvm", "-enable-kvm"])):
        vm = vms.start(f"vm{i}", *VM, *args)
        info = vm.cmd("query-vm")
        assert info["dirty-tracker"] in ("kvm-dirty-log", "uffd-wp") and info["dirty-ring-size"] == 0, (args, info)
        vm.stop_process()


def test_shape_mismatch(vms):
    uri = unix_uri(vms)
    dst = vms.start("dst", "-m", "64M", "-smp", "2", "-incoming", uri)
    wait_listening(uri)
    src = vms.start("src", *VM)
    src.cmd("migrate-set-parameters", **{"max-bandwidth": FAST})
    src.migrate(uri)
    info = src.wait_migration()
    assert info["status"] == "failed", info
    # The engine finds the missing vCPU's section before the machine section could compare the shapes.
    assert "section 'cpu' instance 1 is missing" in info.get("error-desc", ""), info
    src.wait_status(("running",))
    wait_progress(src)
    assert dst.wait_exit(30) != 0


def test_command_line(vms):
    import subprocess
    out = subprocess.run([vm_binary(), "--help"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "-serial" in out.stdout and "-incoming" in out.stdout, out
    bad = subprocess.run([vm_binary(), "-serial", "tty"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 1 and "-serial" in bad.stderr, bad
    unknown = subprocess.run([vm_binary(), "-bogus"], capture_output=True, text=True, timeout=30)
    assert unknown.returncode == 2, unknown
    # A drive that is not a boot sector.
    path = os.path.join(vms.tmpdir, "not-a-disk")
    with open(path, "wb") as f:
        f.write(b"\0" * 512)
    nodisk = subprocess.run([vm_binary(), "-drive", f"file={path},format=raw", "-serial", "null"],
                            capture_output=True, text=True, timeout=30)
    assert nodisk.returncode == 1 and "not a boot sector" in nodisk.stderr, nodisk
