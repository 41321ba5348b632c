"""Local migration between two ferry-workload processes on one host: RAM backed by shared memfds passed over the
UNIX socket in mode cpr-transfer (nothing copied), mixed with RAM that is not shareable, the mode and
backend-transfer parameters and their edges (-incoming config:, QMP, HMP), refusal of channels that cannot carry
file descriptors, failures in the middle of fd passing with fd accounting on both sides, and compatibility with
a destination that passes nothing. The TAP device and its backend-transfer are in test_tap.py."""

import os
import subprocess

import pytest

from ferrytest import sanitizer_report, wait_listening, wait_until, workload_binary

FAST = 1 << 30
MEMFD = ["-object", "memory-backend-memfd,id=ram0,size=64M,share=on", "-machine", "memory-backend=ram0"]
AB = ["-smp", "2", "-pattern", "ab", "-dirty-rate", "32"]


def uri_of(workload, name="mig.sock"):
    return f"unix:{os.path.join(workload.tmpdir, name)}"


def pair(workload, args, uri, dst_extra=()):
    dst = workload("dst", *args, *dst_extra, "-incoming", uri)
    wait_listening(uri)
    src = workload("src", *args)
    return src, dst


def memfd_maps(pid):
    """Lines of /proc/PID/maps that map a memfd (the kernel names them /memfd:NAME)."""
    with open(f"/proc/{pid}/maps") as f:
        return [line for line in f if "/memfd:" in line]


def inode_of(line):
    return int(line.split()[4])


def test_cpr_transfer_passes_shared_ram(workload):
    uri = uri_of(workload)
    src, dst = pair(workload, MEMFD + AB, uri)
    src.wait_status(("running",))
    wait_until(lambda: src.workload_info()["pages-written"] >= 4096, 20, "some RAM written")
    src_inodes = {inode_of(line) for line in memfd_maps(src.proc.pid)}
    assert src_inodes, "the source maps no memfd"
    src.set_params(**{"max-bandwidth": FAST, "mode": "cpr-transfer"})
    assert src.cmd("query-migrate-parameters")["mode"] == "cpr-transfer"
    src.migrate(uri)
    info = src.wait_migration()
    assert info["status"] == "completed", info
    ram = info["ram"]
    # Every block was shared: nothing was copied, all of it went as fds.
    assert ram["fd-passed-bytes"] == 64 << 20 == ram["total"], info
    assert ram["fd-passed-blocks"] == 1, info
    assert ram["normal"] == 0 and ram["duplicate"] == 0, info
    assert ram["transferred"] < 64 << 10, info  # control records and device state only
    assert info["fds-passed"] == 1, info
    src.wait_status(("postmigrate",))
    dst.wait_status(("running",))
    # The destination runs on the very memory the source used.
    dst_inodes = {inode_of(line) for line in memfd_maps(dst.proc.pid)}
    assert src_inodes & dst_inodes, (src_inodes, dst_inodes)
    dinfo = dst.query_migrate()
    assert dinfo["ram"]["fd-passed-bytes"] == 64 << 20, dinfo
    dst.assert_pattern_ok()
    dst.assert_advancing()
    dst.assert_pattern_ok()


def test_cpr_transfer_mixed_ram(workload):
    """Blocks that are not shared (share=off) are copied as usual; query-migrate tells the two apart."""
    args = ["-object", "memory-backend-memfd,id=ram0,size=32M,share=off", "-machine", "memory-backend=ram0",
            "-pattern", "random", "-S"]
    uri = uri_of(workload)
    src, dst = pair(workload, args, uri)
    src.set_params(**{"max-bandwidth": FAST, "mode": "cpr-transfer"})
    src.migrate(uri)
    info = src.wait_migration()
    assert info["status"] == "completed", info
    assert "fd-passed-bytes" not in info["ram"], info
    assert info["ram"]["normal"] > 0, info
    assert src.digest() == dst.digest()


def test_cpr_transfer_downtime_does_not_grow_with_ram(workload):
    """Passing the memfd costs the same for 32 MiB and 512 MiB: nothing is copied or even touched."""
    times = {}
    for size in (32, 512):
        args = ["-object", f"memory-backend-memfd,id=ram0,size={size}M,share=on", "-machine",
                "memory-backend=ram0", "-pattern", "random", "-S"]
        uri = uri_of(workload, f"mig{size}.sock")
        dst = workload(f"dst{size}", *args, "-incoming", uri)
        wait_listening(uri)
        src = workload(f"src{size}", *args)
        src.set_params(mode="cpr-transfer")
        src.migrate(uri)
        info = src.wait_migration()
        assert info["status"] == "completed", info
        assert info["ram"]["transferred"] < 64 << 10, info
        assert src.digest() == dst.digest()
        times[size] = info["downtime"]
        src.stop_process()
        dst.stop_process()
    # Not a timing test: the bytes above prove no copy; this only guards against a per-page cost creeping in.
    assert times[512] < times[32] + 500, times


@pytest.mark.parametrize("uri_kind", ["tcp", "exec", "file"])
def test_fd_passing_refused_without_unix_socket(workload, uri_kind):
    src = workload("src", *MEMFD, "-pattern", "zero")
    uri = {"tcp": "tcp:127.0.0.1:1", "exec": "exec:cat >/dev/null",
           "file": f"file:{os.path.join(workload.tmpdir, 'x')}"}[uri_kind]
    src.set_params(mode="cpr-transfer")
    with pytest.raises(Exception) as e:
        src.migrate(uri)
    assert "mode cpr-transfer passes file descriptors" in str(e.value), e.value
    assert "UNIX socket" in str(e.value), e.value
    src.set_params(mode="normal")
    assert src.query_migrate()["status"] == "none"
    assert src.status() == "running"


def test_mode_and_backend_transfer_parameters(workload):
    w = workload("w", "-incoming", "defer")
    p = w.cmd("query-migrate-parameters")
    assert p["mode"] == "normal" and p["backend-transfer"] == []
    w.set_params(**{"backend-transfer": ["virtio-net-tap"], "mode": "cpr-transfer"})
    p = w.cmd("query-migrate-parameters")
    assert p["backend-transfer"] == ["virtio-net-tap"] and p["mode"] == "cpr-transfer"
    for bad, msg in [({"backend-transfer": ["virtio-net-vhost"]}, "'backend-transfer[0]' does not accept value "
                                                                   "'virtio-net-vhost'"),
                     ({"backend-transfer": "virtio-net-tap"}, "expected: array"),
                     ({"backend-transfer": ["virtio-net-tap", "virtio-net-tap"]}, "twice"),
                     ({"mode": "cpr-reboot"}, "not supported"),
                     ({"mode": "sideways"}, "'mode' does not accept value 'sideways'"),
                     ({"mode": 3}, "expected: string")]:
        with pytest.raises(Exception) as e:
            w.set_params(**bad)
        assert msg in str(e.value), (bad, e.value)
    # All or nothing: the failed calls changed nothing.
    assert w.cmd("query-migrate-parameters")["backend-transfer"] == ["virtio-net-tap"]
    w.set_params(**{"backend-transfer": []})
    assert w.cmd("query-migrate-parameters")["backend-transfer"] == []


def test_backend_transfer_on_the_command_line(workload):
    uri = uri_of(workload)
    w = workload("w", "-incoming", f"config:backend-transfer.0=virtio-net-tap,mode=cpr-transfer",
                 "-incoming", uri)
    p = w.cmd("query-migrate-parameters")
    assert p["backend-transfer"] == ["virtio-net-tap"] and p["mode"] == "cpr-transfer"


@pytest.mark.parametrize("config,msg", [
    ("backend-transfer.0=virtio-net-vhost", "'backend-transfer[0]' does not accept value 'virtio-net-vhost'"),
    ("backend-transfer=virtio-net-tap", "expects a list"),
    ("mode=cpr-exec", "not supported"),
])
def test_bad_backend_transfer_on_the_command_line(config, msg):
    p = subprocess.run([workload_binary(), "-incoming", f"config:{config}"], stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=20, text=True, errors="replace")
    assert p.returncode > 0, p
    assert sanitizer_report(p.stderr) is None, p.stderr
    assert msg in p.stderr, p.stderr


def test_destination_without_shared_ram_still_maps_the_fd(workload):
    """The destination's own RAM may be anonymous: the received memfd is mapped over it at the same address."""
    uri = uri_of(workload)
    dst = workload("dst", "-m", "64M", "-pattern", "random", "-S", "-incoming", uri)
    wait_listening(uri)
    src = workload("src", *MEMFD, "-pattern", "random", "-S")
    src.set_params(mode="cpr-transfer")
    src.migrate(uri)
    info = src.wait_migration()
    assert info["status"] == "completed", info
    assert src.digest() == dst.digest()
    assert memfd_maps(dst.proc.pid)


def test_plain_destination_of_a_memfd_source(workload):
    """mode normal: the shared memfd RAM is copied like any other; the stream passes no fd."""
    uri = uri_of(workload)
    src, dst = pair(workload, MEMFD + ["-pattern", "random", "-S"], uri)
    src.set_params(**{"max-bandwidth": FAST})
    src.migrate(uri)
    info = src.wait_migration()
    assert info["status"] == "completed", info
    assert "fds-passed" not in info and info["ram"]["normal"] > 0, info
    assert src.digest() == dst.digest()


def test_failed_cpr_transfer_leaves_source_intact_and_fds_balanced(workload):
    """The destination refuses the stream after it received and mapped the memfd (its sections differ): it
    drops the mapping and the fd, the source keeps running on its RAM, and a retry to a good destination works."""
    uri = uri_of(workload)
    bad = workload("bad", *MEMFD, "-pattern", "random", "-S", "-incoming", "defer")
    bad_fds = bad.open_fds()
    bad.cmd("migrate-incoming", uri=uri, **{"exit-on-error": False})
    wait_listening(uri)
    src = workload("src", *MEMFD, "-pattern", "ab", "-smp", "2", "-dirty-rate", "32")
    src.wait_status(("running",))
    wait_until(lambda: src.workload_info()["pages-written"] >= 2048, 20, "some RAM written")
    src_fds = src.open_fds()
    src.set_params(mode="cpr-transfer")
    src.migrate(uri)
    info = src.wait_migration()
    assert info["status"] == "failed", info
    assert "pattern" in info["error-desc"], info
    src.wait_status(("running",))
    src.assert_pattern_ok()
    src.assert_advancing()
    wait_until(lambda: src.open_fds() == src_fds, 10, "source fds back to where they were")
    assert bad.wait_migration()["status"] == "failed"
    # The destination gave the source's memfd back: no fd and no mapping of it are left (the listener and the
    # connection are gone too, so it is back to its count before migrate-incoming).
    wait_until(lambda: bad.open_fds() == bad_fds, 10, "destination fds back to where they were")
    src_inodes = {inode_of(line) for line in memfd_maps(src.proc.pid)}
    assert not src_inodes & {inode_of(line) for line in memfd_maps(bad.proc.pid)}

    uri2 = uri_of(workload, "mig2.sock")
    good = workload("good", *MEMFD, "-pattern", "ab", "-smp", "2", "-dirty-rate", "32", "-incoming", uri2)
    wait_listening(uri2)
    src.migrate(uri2)
    info = src.wait_migration()
    assert info["status"] == "completed", info
    good.wait_status(("running",))
    good.assert_pattern_ok()


# --- unix-page-flipping ----------------------------------------------------------------------------------------

def flipping(w, on=True):
    w.cmd("migrate-set-capabilities", capabilities=[{"capability": "unix-page-flipping", "state": on}])


def test_page_flipping_running_ab(workload):
    """Page data through the pipe while the workload runs and keeps writing: pages written after they were
    spliced are resent by dirty tracking, and the A-B invariant holds on the destination."""
    uri = uri_of(workload)
    src, dst = pair(workload, ["-m", "64M"] + AB, uri)
    flipping(src)
    flipping(dst)
    src.wait_status(("running",))
    wait_until(lambda: src.workload_info()["pages-written"] >= (32 << 20) // 4096, 20, "half the RAM written")
    src.set_params(**{"max-bandwidth": FAST})
    src.migrate(uri)
    info = src.wait_migration()
    assert info["status"] == "completed", info
    assert "unix-page-flipping" in info["stream-features"], info
    assert info["ram"]["page-pipe-bytes"] >= 32 << 20, info
    # Only records went on the socket: the page data did not.
    assert info["ram"]["transferred"] - info["ram"]["page-pipe-bytes"] < 4 << 20, info
    caps = {c["capability"]: c for c in src.cmd("query-migrate-capabilities")}
    assert caps["unix-page-flipping"]["negotiated"] is True
    dinfo = dst.query_migrate()
    assert dinfo["ram"]["page-pipe-bytes"] == info["ram"]["page-pipe-bytes"], (info, dinfo)
    src.wait_status(("postmigrate",))
    dst.wait_status(("running",))
    dst.assert_pattern_ok()
    dst.assert_advancing()
    dst.assert_pattern_ok()


def test_page_flipping_stopped_workload_digest(workload):
    uri = uri_of(workload)
    src, dst = pair(workload, ["-m", "64M", "-pattern", "half", "-S"], uri)
    flipping(src)
    flipping(dst)
    src.set_params(**{"max-bandwidth": FAST})
    src.migrate(uri)
    info = src.wait_migration()
    assert info["status"] == "completed", info
    assert info["ram"]["page-pipe-bytes"] == 32 << 20, info  # half of the pages hold data
    assert src.digest() == dst.digest()


def test_page_flipping_destination_without_it(workload):
    """The destination has the capability off: it does not accept the feature and the stream is the plain one."""
    uri = uri_of(workload)
    src, dst = pair(workload, ["-m", "64M", "-pattern", "random", "-S"], uri)
    flipping(src)
    src.set_params(**{"max-bandwidth": FAST})
    src.migrate(uri)
    info = src.wait_migration()
    assert info["status"] == "completed", info
    assert "unix-page-flipping" not in info["stream-features"], info
    assert "page-pipe-bytes" not in info["ram"] and "fds-passed" not in info, info
    assert src.digest() == dst.digest()


@pytest.mark.parametrize("flip", [False, True])
def test_unix_source_fd_destination(workload, flip):
    """The source connects to a UNIX socket; the destination reads an accepted socket given to it by getfd
    (fd:NAME). Plain, and with page flipping (the fd is a UNIX socket, so it can take the pipe)."""
    import socket
    path = os.path.join(workload.tmpdir, "relay.sock")
    args = ["-m", "32M", "-pattern", "random", "-S"]
    dst = workload("dst", *args, "-incoming", "defer")
    src = workload("src", *args)
    if flip:
        flipping(src)
        flipping(dst)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(path)
        listener.listen(1)
        listener.settimeout(30)
        src.migrate(f"unix:{path}")
        conn, _ = listener.accept()
        with conn:
            dst.getfd("accepted", conn.fileno())
    dst.cmd("migrate-incoming", uri="fd:accepted")
    info = src.wait_migration()
    assert info["status"] == "completed", info
    assert ("unix-page-flipping" in info["stream-features"]) == flip, info
    assert src.digest() == dst.digest()


def test_page_flipping_refused_on_tcp(workload):
    src = workload("src", "-m", "32M")
    flipping(src)
    with pytest.raises(Exception) as e:
        src.migrate("tcp:127.0.0.1:1")
    assert "unix-page-flipping passes file descriptors" in str(e.value), e.value


def test_page_flipping_destination_killed(workload):
    """The destination dies while pages flow through the pipe: the source fails cleanly (EPIPE, not SIGPIPE),
    keeps running with its state, and a new migration succeeds."""
    uri = uri_of(workload)
    args = ["-m", "256M"] + AB
    src, dst = pair(workload, args, uri)
    flipping(src)
    flipping(dst)
    src.wait_status(("running",))
    wait_until(lambda: src.workload_info()["pages-written"] >= (128 << 20) // 4096, 30, "half the RAM written")
    src.set_params(**{"max-bandwidth": 64 << 20})  # slow enough to kill the destination mid-stream
    src.migrate(uri)
    wait_until(lambda: src.query_migrate()["ram"].get("page-pipe-bytes", 0) > 4 << 20, 30, "pages in flight")
    dst.kill()
    info = src.wait_migration()
    assert info["status"] == "failed", info
    src.wait_status(("running",))
    src.assert_pattern_ok()
    src.assert_advancing()
    uri2 = uri_of(workload, "mig2.sock")
    dst2 = workload("dst2", *args, "-incoming", uri2)
    flipping(dst2)
    wait_listening(uri2)
    src.set_params(**{"max-bandwidth": FAST})
    src.migrate(uri2)
    info = src.wait_migration()
    assert info["status"] == "completed", info
    dst2.wait_status(("running",))
    dst2.assert_pattern_ok()


def test_shared_ram_running_normal_mode(workload):
    """Shared memfd RAM in mode normal while the workload runs: copied, with dirty tracking of shared memory."""
    uri = uri_of(workload)
    src, dst = pair(workload, MEMFD + AB, uri)
    src.wait_status(("running",))
    wait_until(lambda: src.workload_info()["pages-written"] >= (32 << 20) // 4096, 20, "half the RAM written")
    src.set_params(**{"max-bandwidth": FAST})
    src.migrate(uri)
    info = src.wait_migration()
    assert info["status"] == "completed", info
    assert "fd-passed-bytes" not in info["ram"] and info["ram"]["normal"] > 0, info
    dst.wait_status(("running",))
    dst.assert_pattern_ok()
    dst.assert_advancing()


@pytest.mark.parametrize("share", ["on", "off"])
def test_cpr_transfer_and_page_flipping_combined(workload, share):
    """Both at once: shared blocks go as fds, the rest through the page pipe."""
    args = ["-object", f"memory-backend-memfd,id=ram0,size=64M,share={share}", "-machine", "memory-backend=ram0",
            "-ram-block-size", "32M"] + AB
    uri = uri_of(workload)
    src, dst = pair(workload, args, uri)
    for w in (src, dst):
        flipping(w)
    src.wait_status(("running",))
    wait_until(lambda: src.workload_info()["pages-written"] >= (32 << 20) // 4096, 20, "half the RAM written")
    src.set_params(**{"max-bandwidth": FAST, "mode": "cpr-transfer"})
    src.migrate(uri)
    info = src.wait_migration()
    assert info["status"] == "completed", info
    assert "unix-page-flipping" in info["stream-features"], info
    if share == "on":
        assert info["ram"]["fd-passed-blocks"] == 2 and "page-pipe-bytes" not in info["ram"], info
        assert info["fds-passed"] == 3, info  # two blocks and the pipe
    else:
        assert "fd-passed-bytes" not in info["ram"] and info["ram"]["page-pipe-bytes"] > 0, info
    dst.wait_status(("running",))
    dst.assert_pattern_ok()
    dst.assert_advancing()
