"""Migrations over every transport this machine has, each addressed once with a URI and once with QAPI
"channels", and with mixed forms between the two ends: a running A-B workload over tcp (IPv4, IPv6), unix
(file and abstract) and fd (getfd with SCM_RIGHTS, and an inherited fd number); exec and file as save-then-restore;
vsock and rdma as addresses that are accepted and fail with a clear error; the uri/channels argument rules and
bad channel JSON; getfd/closefd errors and fd accounting.

What this is not: the URI and JSON parsers' full tables (tests/unit/channel/test-address.c), HMP
(test_hmp.py), -incoming config: and JSON -incoming (test_incoming_config.py)."""

import os
import socket
import uuid

import pytest

from ferrytest import (QMP, QMPError, free_port, ipv6_loopback_works, wait_listening,
                       wait_until)
from test_migration import AB, FAST, check_completed_stats, check_running_destination

HALF_RAM_PAGES = (32 << 20) // 4096
STOPPED = ["-m", "64M", "-smp", "2", "-pattern", "random", "-seed", "5", "-dirty-rate", "50"]


def main_channel(addr):
    return [{"channel-type": "main", "addr": addr}]


def socket_addr(**members):
    return {"transport": "socket", **members}


class Endpoint:
    """One migration address in both spellings: @uri (None when no URI spells it) and the QAPI @addr."""

    def __init__(self, uri, addr):
        self.uri = uri
        self.addr = addr

    @property
    def channels(self):
        return main_channel(self.addr)


def endpoint(kind, tmpdir):
    if kind == "tcp4":
        port = free_port()
        return Endpoint(f"tcp:127.0.0.1:{port}", socket_addr(type="inet", host="127.0.0.1", port=str(port)))
    if kind == "tcp6":
        if not ipv6_loopback_works():
            pytest.skip("IPv6 loopback (::1) does not work on this machine")
        port = free_port(socket.AF_INET6, "::1")
        return Endpoint(f"tcp:[::1]:{port}", socket_addr(type="inet", host="::1", port=str(port)))
    if kind == "unix":
        path = os.path.join(tmpdir, "mig.sock")
        return Endpoint(f"unix:{path}", socket_addr(type="unix", path=path))
    if kind == "abstract":
        # QEMU's URI syntax has no spelling for an abstract socket: only the JSON form (abstract: true) names one.
        return Endpoint(None, socket_addr(type="unix", path=f"ferry-test-{uuid.uuid4().hex}", abstract=True))
    raise ValueError(kind)


def wait_dst_listening(dst, ep):
    """The destination listens on @ep: from the socket table when a URI names it, else from query-migrate's
    socket-address (which must then be present)."""
    if ep.uri:
        wait_listening(ep.uri)
        return
    wait_until(lambda: dst.query_migrate().get("socket-address"), 20, "socket-address in query-migrate")


def wait_half_written(src):
    wait_until(lambda: src.workload_info()["pages-written"] >= HALF_RAM_PAGES, 20, "half the RAM written")


def migrate_running(src, dst, ep_src_form):
    """Migrate the running A-B workload of @src with @ep_src_form ({"uri": ...} or {"channels": ...}) and check
    both ends."""
    src.wait_status(("running",))
    wait_half_written(src)
    src.set_params(**{"max-bandwidth": FAST})
    src.cmd("migrate", ep_src_form)
    info = src.wait_migration()
    assert info["status"] == "completed", f"migration did not complete: {info}"
    check_completed_stats(info, 64 << 20)
    check_running_destination(src, dst)
    return info


# (id, transport, how the destination is told, how the source is told): "uri" on the destination is the
# command line (-incoming URI), "qmp-uri" QMP migrate-incoming with a URI, "channels" migrate-incoming channels.
SOCKET_CASES = [
    (f"{t}-{name}", t, d, s)
    for t in ("tcp4", "tcp6", "unix")
    for name, d, s in (("uri", "uri", "uri"), ("channels", "channels", "channels"),
                       ("dst-channels-src-uri", "channels", "uri"), ("dst-uri-src-channels", "qmp-uri", "channels"))
] + [("abstract-channels", "abstract", "channels", "channels")]


@pytest.mark.deadline(120)
@pytest.mark.parametrize("transport,dst_form,src_form", [c[1:] for c in SOCKET_CASES],
                         ids=[c[0] for c in SOCKET_CASES])
def test_socket_transports(wl, transport, dst_form, src_form):
    ep = endpoint(transport, wl.tmpdir)
    if dst_form == "uri":
        dst = wl.start("dst", *AB, "-incoming", ep.uri)
    else:
        dst = wl.start("dst", *AB, "-incoming", "defer")
        dst.cmd("migrate-incoming", {"uri": ep.uri} if dst_form == "qmp-uri" else {"channels": ep.channels})
    wait_dst_listening(dst, ep)
    assert dst.status() == "inmigrate"
    src = wl.start("src", *AB)
    migrate_running(src, dst, {"uri": ep.uri} if src_form == "uri" else {"channels": ep.channels})


@pytest.mark.deadline(120)
@pytest.mark.parametrize("form", ["uri", "channels"])
def test_tcp_port_zero_reports_real_port(wl, form):
    """Listening on port 0: query-migrate's socket-address tells the kernel's choice, and the source can use it."""
    dst = wl.start("dst", *AB, "-incoming", "defer")
    if form == "uri":
        dst.cmd("migrate-incoming", uri="tcp:127.0.0.1:0")
    else:
        dst.cmd("migrate-incoming", channels=main_channel(socket_addr(type="inet", host="127.0.0.1", port="0")))
    addrs = dst.query_migrate().get("socket-address")
    assert isinstance(addrs, list) and len(addrs) >= 1, dst.query_migrate()
    a = addrs[0]
    assert a.get("type") == "inet" and a.get("host") == "127.0.0.1", addrs
    port = int(a["port"])
    assert port != 0, addrs
    wait_listening(f"tcp:127.0.0.1:{port}")
    src = wl.start("src", *AB)
    migrate_running(src, dst, {"uri": f"tcp:127.0.0.1:{port}"})


# --- fd ---------------------------------------------------------------------------------------------------------

def fd_channels(name):
    return main_channel(socket_addr(type="fd", str=name))


@pytest.mark.deadline(120)
@pytest.mark.parametrize("form", ["uri", "channels"])
def test_fd_getfd_both_sides(wl, form):
    """A socketpair: one end given to each process with getfd (SCM_RIGHTS), then fd:NAME on both sides."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    dst = wl.start("dst", *AB, "-incoming", "defer")
    src = wl.start("src", *AB)
    try:
        dst.getfd("migin", b.fileno())
        src.getfd("migout", a.fileno())
    finally:
        # The processes hold their own copies now: the test's must not keep the stream open.
        a.close()
        b.close()
    if form == "uri":
        dst.cmd("migrate-incoming", uri="fd:migin")
        migrate_running(src, dst, {"uri": "fd:migout"})
    else:
        dst.cmd("migrate-incoming", channels=fd_channels("migin"))
        migrate_running(src, dst, {"channels": fd_channels("migout")})


@pytest.mark.deadline(120)
def test_fd_inherited_number_destination(wl):
    """The destination inherits its end as an fd number (-incoming fd:N); the source gets its end by getfd."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        dst = wl.start("dst", *AB, "-incoming", f"fd:{b.fileno()}", pass_fds=[b.fileno()])
        b.close()
        src = wl.start("src", *AB)
        src.getfd("mig", a.fileno())
    finally:
        a.close()
        b.close()
    assert dst.status() == "inmigrate"
    migrate_running(src, dst, {"channels": fd_channels("mig")})


@pytest.mark.deadline(120)
@pytest.mark.parametrize("src_form", ["uri", "channels"])
def test_unix_source_fd_destination(wl, src_form):
    """Different transports at the two ends: the source connects to a UNIX socket the test listens on; the test
    accepts and gives the accepted socket to the destination with getfd; the destination reads from fd:NAME."""
    path = os.path.join(wl.tmpdir, "relay.sock")
    dst = wl.start("dst", *AB, "-incoming", "defer")
    src = wl.start("src", *AB)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(path)
        listener.listen(1)
        listener.settimeout(30)
        src.wait_status(("running",))
        wait_half_written(src)
        src.set_params(**{"max-bandwidth": FAST})
        if src_form == "uri":
            src.migrate(uri=f"unix:{path}")
        else:
            src.migrate(channels=main_channel(socket_addr(type="unix", path=path)))
        conn, _ = listener.accept()
        with conn:
            dst.getfd("accepted", conn.fileno())
    dst.cmd("migrate-incoming", uri="fd:accepted")
    info = src.wait_migration()
    assert info["status"] == "completed", info
    check_completed_stats(info, 64 << 20)
    check_running_destination(src, dst)


# --- exec and file: save, then restore --------------------------------------------------------------------------

def exec_addr(args):
    return {"transport": "exec", "args": args}


@pytest.mark.deadline(120)
@pytest.mark.parametrize("form", ["uri", "channels"])
def test_exec_save_then_restore_running(wl, form):
    """Source: exec:"cat > FILE" (the stream goes to the child's stdin); destination: exec:"cat FILE" (the
    stream comes from the child's stdout). The workload runs while it is saved and runs on after the restore."""
    path = os.path.join(wl.tmpdir, "exec.img")
    src = wl.start("src", *AB)
    if form == "uri":
        migrate_form = {"uri": f"exec:cat > {path}"}
    else:
        migrate_form = {"channels": main_channel(exec_addr(["/bin/sh", "-c", f"cat > {path}"]))}
    src.wait_status(("running",))
    wait_half_written(src)
    src.set_params(**{"max-bandwidth": FAST})
    src.cmd("migrate", migrate_form)
    info = src.wait_migration()
    assert info["status"] == "completed", info
    check_completed_stats(info, 64 << 20)
    src.wait_status(("postmigrate",))
    assert os.path.getsize(path) > HALF_RAM_PAGES * 4096, "the saved stream is smaller than the RAM written"

    if form == "uri":
        dst = wl.start("dst", *AB, "-incoming", f"exec:cat {path}")
    else:
        dst = wl.start("dst", *AB, "-incoming", "defer")
        dst.cmd("migrate-incoming", channels=main_channel(exec_addr(["cat", path])))
    dinfo = dst.wait_migration()
    assert dinfo["status"] == "completed", dinfo
    dst.wait_status(("running",))
    dst.assert_pattern_ok()
    dst.assert_advancing()
    dst.assert_pattern_ok()


@pytest.mark.deadline(60)
@pytest.mark.parametrize("command", ["cat > /dev/null; exit 3", "exit 3"])
def test_exec_failing_command_fails_migration(wl, command):
    """A source command that exits non-zero fails the migration with its exit status, whether it read the whole
    stream or none of it (then the write fails first, and the status is still the error, not "Broken pipe");
    the workload runs on."""
    src = wl.start("src", *AB)
    src.set_params(**{"max-bandwidth": FAST})
    src.migrate(uri=f"exec:{command}")
    info = src.wait_migration()
    assert info["status"] == "failed", info
    desc = info.get("error-desc", "")
    assert f"exec command '/bin/sh -c {command}' exited with status 3" in desc, info
    src.wait_status(("running",))
    src.assert_advancing()
    src.assert_pattern_ok()


def save_stopped(src, form, path, offset=None):
    src.assert_advancing()
    src.cmd("stop")
    before = src.digest()
    src.set_params(**{"max-bandwidth": FAST})
    if form == "uri":
        src.migrate(uri=f"file:{path}" + (f",offset={offset}" if offset is not None else ""))
    else:
        # QAPI's FileMigrationArgs has a mandatory offset.
        addr = {"transport": "file", "filename": path, "offset": 0 if offset is None else offset}
        src.migrate(channels=main_channel(addr))
    info = src.wait_migration()
    assert info["status"] == "completed", info
    assert src.digest() == before
    return before


@pytest.mark.deadline(120)
@pytest.mark.parametrize("form", ["uri", "channels"])
def test_file_save_then_restore(wl, form):
    path = os.path.join(wl.tmpdir, "state.img")
    src = wl.start("src", *STOPPED)
    saved = save_stopped(src, form, path)
    assert os.path.getsize(path) > 0
    if form == "uri":
        dst = wl.start("dst", *STOPPED, "-S", "-incoming", f"file:{path}")
    else:
        dst = wl.start("dst", *STOPPED, "-S", "-incoming", "defer")
        dst.cmd("migrate-incoming", channels=main_channel({"transport": "file", "filename": path, "offset": 0}))
    info = dst.wait_migration()
    assert info["status"] == "completed", info
    assert dst.status() != "running"
    assert dst.digest() == saved
    dst.assert_pattern_ok()
    dst.cmd("cont")
    dst.wait_status(("running",))
    dst.assert_advancing()
    dst.assert_pattern_ok()


@pytest.mark.deadline(120)
@pytest.mark.parametrize("form", ["uri", "channels"])
def test_file_at_offset(wl, form):
    """file:PATH,offset=N writes after N bytes that stay untouched (1M in the URI: a size suffix), and the
    restore reads from the same offset."""
    path = os.path.join(wl.tmpdir, "state.img")
    header = bytes([0xA5]) * (1 << 20)
    with open(path, "wb") as f:
        f.write(header)
    src = wl.start("src", *STOPPED)
    saved = save_stopped(src, form, path, offset="1M" if form == "uri" else 1 << 20)
    with open(path, "rb") as f:
        assert f.read(1 << 20) == header, "the bytes before the offset were changed"
        assert len(f.read(4096)) > 0, "nothing was written after the offset"
    if form == "uri":
        dst = wl.start("dst", *STOPPED, "-S", "-incoming", f"file:{path},offset=1M")
    else:
        dst = wl.start("dst", *STOPPED, "-S", "-incoming", "defer")
        dst.cmd("migrate-incoming",
                channels=main_channel({"transport": "file", "filename": path, "offset": 1 << 20}))
    info = dst.wait_migration()
    assert info["status"] == "completed", info
    assert dst.digest() == saved


@pytest.mark.deadline(60)
def test_file_restore_missing_file_names_it(wl):
    path = os.path.join(wl.tmpdir, "no-such.img")
    dst = wl.start("dst", *STOPPED, "-incoming", "defer")
    try:
        dst.cmd("migrate-incoming", {"uri": f"file:{path}", "exit-on-error": False})
    except QMPError as e:
        assert e.cls == "GenericError" and path in e.desc, e
        return
    info = dst.wait_migration()
    assert info["status"] == "failed" and path in info.get("error-desc", ""), info


# --- file: on a FIFO and on other special files ------------------------------------------------------------------

def make_fifo(wl, name="mig.fifo"):
    path = os.path.join(wl.tmpdir, name)
    os.mkfifo(path, 0o600)
    return path


@pytest.mark.deadline(90)
def test_file_fifo_without_reader_cancel_and_quit(wl):
    """A FIFO that nobody reads: the source waits for a reader where migrate_cancel reaches it (cancelled, the
    workload runs on), and quit ends the process while it waits (it used to hang in open() for ever)."""
    path = make_fifo(wl)
    src = wl.start("src", *AB)
    src.wait_status(("running",))
    src.migrate(uri=f"file:{path}")
    wait_until(lambda: src.migration_status() == "setup", 10, "status setup")
    src.cmd("migrate_cancel")
    info = src.wait_migration(timeout=10)
    assert info["status"] == "cancelled", info
    src.wait_status(("running",))
    src.assert_pattern_ok()
    src.migrate(uri=f"file:{path}")
    wait_until(lambda: src.migration_status() == "setup", 10, "status setup")
    src.cmd("quit")
    assert src.wait_exit(15) == 0


@pytest.mark.deadline(90)
def test_file_fifo_incoming_does_not_block_startup(wl):
    """-incoming file:FIFO: the program starts and answers QMP while no writer has opened the FIFO (the wait
    happens in the incoming thread), and quit ends it."""
    path = make_fifo(wl)
    dst = wl.start("dst", *STOPPED, "-incoming", f"file:{path}")
    assert dst.migration_status() == "setup"
    assert dst.status() == "inmigrate"
    dst.cmd("quit")
    assert dst.wait_exit(15) == 0


@pytest.mark.deadline(150)
@pytest.mark.parametrize("first", ["source", "destination"])
def test_file_fifo_migration(wl, first):
    """A real migration through a FIFO, whichever end opens it first (the source waits for its reader, the
    destination for its writer)."""
    path = make_fifo(wl)
    src = wl.start("src", *STOPPED)
    src.assert_advancing()
    src.cmd("stop")
    before = src.digest()
    src.set_params(**{"max-bandwidth": FAST})
    if first == "source":
        src.migrate(uri=f"file:{path}")
        wait_until(lambda: src.migration_status() == "setup", 10, "status setup")
        dst = wl.start("dst", *STOPPED, "-S", "-incoming", f"file:{path}")
    else:
        dst = wl.start("dst", *STOPPED, "-S", "-incoming", f"file:{path}")
        src.migrate(uri=f"file:{path}")
    info = src.wait_migration()
    assert info["status"] == "completed", info
    dinfo = dst.wait_migration()
    assert dinfo["status"] == "completed", dinfo
    assert dst.digest() == before
    dst.assert_pattern_ok()


@pytest.mark.deadline(60)
def test_file_special_files_refused(wl):
    """What cannot carry a file: stream is refused naming what it is: a character device, a directory, a socket
    (on both ends), and an offset on a FIFO."""
    sock_path = os.path.join(wl.tmpdir, "a.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(sock_path)
    fifo = make_fifo(wl)
    src = wl.start("src", *AB)
    try:
        cases = [("/dev/zero", "a character device"), (wl.tmpdir, "directory"), (sock_path, "a socket"),
                 (f"{fifo},offset=4096", "FIFO")]
        for target, words in cases:
            assert_fails_clearly(src, {"uri": f"file:{target}"}, [words])
        dst = wl.start("dst", *STOPPED, "-incoming", "defer")
        for target, words in cases:
            try:
                dst.cmd("migrate-incoming", {"uri": f"file:{target}", "exit-on-error": False})
            except QMPError as e:
                assert words.lower() in e.desc.lower(), e
            else:
                raise AssertionError(f"migrate-incoming file:{target} was accepted")
    finally:
        sock.close()


# --- unix: a second destination on the same path ----------------------------------------------------------------

@pytest.mark.deadline(120)
def test_unix_path_taken_over_by_second_destination(wl):
    """A second destination on the same unix: path takes the socket over (as in QEMU) but warns, and the first
    notices that no source can reach it any more and fails saying why instead of waiting for ever. A migration to
    the path then reaches the second."""
    path = os.path.join(wl.tmpdir, "mig.sock")
    first = wl.start("first", *AB, "-incoming", "defer")
    first.cmd("migrate-incoming", {"uri": f"unix:{path}", "exit-on-error": False})
    wait_listening(f"unix:{path}")
    second = wl.start("second", *AB, "-incoming", f"unix:{path}")
    assert f"unix:{path}: removing a socket another process is listening on" in second.stderr()
    info = first.wait_migration(timeout=15)
    assert info["status"] == "failed", info
    assert f"{path} was taken over by another process" in info.get("error-desc", ""), info
    assert "removing a socket" not in first.stderr()
    src = wl.start("src", *AB)
    migrate_running(src, second, {"uri": f"unix:{path}"})


# --- vsock and rdma: accepted, then a clear failure ---------------------------------------------------------------

def assert_fails_clearly(src, form, words):
    """migrate with @form is either refused by the command or fails in query-migrate; either way the message
    contains every one of @words (case-insensitively) and the workload runs on."""
    try:
        src.cmd("migrate", form)
    except QMPError as e:
        assert e.cls == "GenericError", e
        desc = e.desc
    else:
        info = src.wait_migration(timeout=30)
        assert info["status"] == "failed", info
        desc = info.get("error-desc", "")
    for w in words:
        assert w.lower() in desc.lower(), f"{desc!r} does not mention {w!r}"
    src.wait_status(("running",))
    src.assert_advancing()
    src.assert_pattern_ok()
    return desc


def vsock_loopback_works():
    af = getattr(socket, "AF_VSOCK", None)
    if af is None:
        return False
    try:
        with socket.socket(af, socket.SOCK_STREAM) as srv:
            srv.bind((socket.VMADDR_CID_ANY, socket.VMADDR_PORT_ANY))
            srv.listen(1)
            with socket.socket(af, socket.SOCK_STREAM) as c:
                c.settimeout(2)
                c.connect((1, srv.getsockname()[1]))  # 1 = VMADDR_CID_LOCAL
        return True
    except OSError:
        return False


@pytest.mark.deadline(60)
@pytest.mark.parametrize("form", ["uri", "channels"])
def test_vsock_address_accepted_then_fails(wl, form):
    src = wl.start("src", *AB)
    if form == "uri":
        f = {"uri": "vsock:2:4321"}
    else:
        f = {"channels": main_channel(socket_addr(type="vsock", cid="2", port="4321"))}
    assert_fails_clearly(src, f, ["vsock"])


def test_vsock_bad_address_rejected(wl):
    src = wl.start("src", *AB)
    for uri in ("vsock:x:1", "vsock:2", "vsock:2:port"):
        with pytest.raises(QMPError) as e:
            src.migrate(uri=uri)
        assert e.value.cls == "GenericError", e.value
    assert src.migration_status() in (None, "none"), src.query_migrate()


@pytest.mark.deadline(120)
def test_vsock_transfer(wl):
    if not vsock_loopback_works():
        pytest.skip("vsock: this kernel has the AF_VSOCK family but no loopback transport (vsock_loopback), so "
                    "no vsock connection can be made on this machine")
    port = free_port()
    dst = wl.start("dst", *AB, "-incoming", f"vsock:1:{port}")
    src = wl.start("src", *AB)
    migrate_running(src, dst, {"uri": f"vsock:1:{port}"})


@pytest.mark.deadline(60)
@pytest.mark.parametrize("form", ["uri", "channels"])
def test_rdma_no_device(wl, form):
    src = wl.start("src", *AB)
    if form == "uri":
        f = {"uri": f"rdma:127.0.0.1:{free_port()}"}
    else:
        f = {"channels": main_channel({"transport": "rdma", "host": "127.0.0.1", "port": str(free_port())})}
    assert_fails_clearly(src, f, ["RDMA", "device"])
    assert src.status() == "running"


def test_rdma_incoming_no_device(wl):
    dst = wl.start("dst", *AB, "-incoming", "defer")
    try:
        dst.cmd("migrate-incoming", {"uri": f"rdma:127.0.0.1:{free_port()}", "exit-on-error": False})
    except QMPError as e:
        assert e.cls == "GenericError" and "rdma" in e.desc.lower() and "device" in e.desc.lower(), e
        return
    info = dst.wait_migration(timeout=30)
    assert info["status"] == "failed", info
    assert "rdma" in info.get("error-desc", "").lower() and "device" in info["error-desc"].lower(), info


# --- argument rules ---------------------------------------------------------------------------------------------

GOOD_UNIX = {"transport": "socket", "type": "unix", "path": "/tmp/ferry-never-used.sock"}

# (id, arguments of migrate / migrate-incoming, words the description must contain, case-insensitively)
BAD_ARGUMENTS = [
    ("both", {"uri": "unix:/tmp/ferry-x.sock", "channels": main_channel(GOOD_UNIX)}, ["uri", "channels"]),
    ("neither", {}, ["uri", "channels"]),
    ("channels-not-array", {"channels": {"channel-type": "main", "addr": GOOD_UNIX}}, ["channels"]),
    ("channels-empty", {"channels": []}, ["main"]),
    ("no-main", {"channels": [{"channel-type": "cpr", "addr": GOOD_UNIX}]}, ["main"]),
    ("two-mains", {"channels": main_channel(GOOD_UNIX) * 2}, ["main"]),
    ("bad-channel-type", {"channels": [{"channel-type": "sideways", "addr": GOOD_UNIX}]}, ["channel-type"]),
    ("missing-addr", {"channels": [{"channel-type": "main"}]}, ["addr"]),
    ("unknown-channel-key", {"channels": [{"channel-type": "main", "addr": GOOD_UNIX, "bogus": 1}]}, ["bogus"]),
    ("unknown-addr-key", {"channels": main_channel({**GOOD_UNIX, "colour": "red"})}, ["colour"]),
    ("bad-transport", {"channels": main_channel({"transport": "pigeon"})}, ["transport"]),
    ("missing-transport", {"channels": main_channel({"type": "unix", "path": "/tmp/x"})}, ["transport"]),
    ("missing-socket-type", {"channels": main_channel({"transport": "socket", "path": "/tmp/x"})}, ["type"]),
    ("missing-port", {"channels": main_channel(socket_addr(type="inet", host="127.0.0.1"))}, ["port"]),
    ("port-not-string", {"channels": main_channel(socket_addr(type="inet", host="127.0.0.1", port=4444))},
     ["port"]),
    ("port-out-of-range",
     {"channels": main_channel(socket_addr(type="inet", host="127.0.0.1", port="70000"))}, ["port"]),
    ("empty-path", {"channels": main_channel(socket_addr(type="unix", path=""))}, ["path"]),
    ("path-too-long", {"channels": main_channel(socket_addr(type="unix", path="/tmp/" + "x" * 200))}, ["path"]),
    ("ipv4-not-bool",
     {"channels": main_channel(socket_addr(type="inet", host="127.0.0.1", port="1", ipv4="yes"))}, ["ipv4"]),
    ("exec-args-empty", {"channels": main_channel(exec_addr([]))}, ["args"]),
    ("exec-args-not-strings", {"channels": main_channel(exec_addr(["cat", 5]))}, ["args"]),
    ("file-offset-string",
     {"channels": main_channel({"transport": "file", "filename": "/tmp/x", "offset": "lots"})}, ["offset"]),
    ("file-no-filename", {"channels": main_channel({"transport": "file"})}, ["filename"]),
    ("fd-empty", {"channels": main_channel(socket_addr(type="fd", str=""))}, ["str"]),
    ("vsock-cid-not-number", {"channels": main_channel(socket_addr(type="vsock", cid="x", port="1"))}, ["cid"]),
]


@pytest.mark.parametrize("command", ["migrate", "migrate-incoming"])
def test_bad_arguments(wl, command):
    w = wl.start("w", *AB, *(["-incoming", "defer"] if command == "migrate-incoming" else []))
    failures = []
    for case_id, args, words in BAD_ARGUMENTS:
        try:
            w.cmd(command, args)
            failures.append(f"{case_id}: accepted")
            continue
        except QMPError as e:
            if e.cls != "GenericError":
                failures.append(f"{case_id}: class {e.cls}: {e.desc}")
            missing = [x for x in words if x.lower() not in e.desc.lower()]
            if missing:
                failures.append(f"{case_id}: {e.desc!r} does not name {missing}")
    assert not failures, "\n".join(failures)
    # Nothing started: the process is where it was.
    assert w.migration_status() in (None, "none"), w.query_migrate()
    assert w.status() == ("inmigrate" if command == "migrate-incoming" else "running")


# --- getfd / closefd --------------------------------------------------------------------------------------------

def test_getfd_closefd_errors_and_fd_accounting(wl):
    src = wl.start("src", *AB)
    baseline = src.open_fds()

    with pytest.raises(QMPError) as e:
        src.cmd("getfd", fdname="nothing")
    assert e.value.cls == "GenericError" and "SCM_RIGHTS" in e.value.desc, e.value

    with pytest.raises(QMPError) as e:
        src.cmd("closefd", fdname="never-given")
    assert e.value.cls == "GenericError" and "never-given" in e.value.desc, e.value

    # A name starting with a digit would mean an inherited fd number: refused, and the fd that came with the
    # request must not stay open in the process.
    r, w = os.pipe()
    try:
        with pytest.raises(QMPError) as e:
            src.getfd("1abc", r)
        assert e.value.cls == "GenericError" and "fdname" in e.value.desc, e.value
        # An fd sent with a command that takes none must not stay behind either, at the latest when the client
        # that sent it goes away.
        other = QMP(src.qmp_path)
        try:
            other.cmd("query-status", fds=[r])
        finally:
            other.close()
    finally:
        os.close(r)
        os.close(w)

    # Migrations that fail: an unknown fd name, a socket nobody listens on.
    with _failing_migration(src):
        src.migrate(uri="fd:unknown-name")
    with _failing_migration(src):
        src.migrate(uri=f"unix:{os.path.join(wl.tmpdir, 'nobody.sock')}")

    # getfd then closefd: the fd is open in between and gone after.
    a, b = socket.socketpair()
    with a, b:
        src.getfd("pair", a.fileno())
        wait_until(lambda: src.open_fds() == baseline + 1, 10, f"exactly one more fd than {baseline}")
        # Replacing a name closes the old fd (QEMU's getfd does that).
        src.getfd("pair", b.fileno())
        assert src.open_fds() == baseline + 1
        src.cmd("closefd", fdname="pair")
    with pytest.raises(QMPError) as e:
        src.cmd("closefd", fdname="pair")
    assert e.value.cls == "GenericError", e.value

    wait_until(lambda: src.open_fds() == baseline, 10,
               f"the source's open fds back to {baseline} (now {src.open_fds()}: {sorted(fd_targets(src.proc.pid))})")
    src.assert_advancing()


class _failing_migration:
    """A migrate that must fail, either as a command error or as a failed migration, leaving the source running."""

    def __init__(self, src):
        self.src = src

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None and not issubclass(exc_type, QMPError):
            return False
        if exc_type is None:
            info = self.src.wait_migration(timeout=30)
            assert info["status"] == "failed", info
        else:
            assert exc.cls == "GenericError", exc
        self.src.wait_status(("running",))
        return True


def fd_targets(pid):
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out.append(f"{fd}->{os.readlink(f'/proc/{pid}/fd/{fd}')}")
        except OSError:
            pass
    return out
