"""Helpers for ferry's integration tests: a QMP client (with fd passing for getfd), an HMP client (over a pipe or
a UNIX socket), a ferry-workload process wrapper, small utilities (free ports, polling with deadlines,
sanitizer report detection, open-fd counts) and, for the TAP tests, a network namespace wrapper.

This module starts and talks to real processes; it contains no test itself and no knowledge of the engine's
internals beyond the QMP commands it documents. It uses the standard library only (tests run with Debian's
/usr/bin/python3 and its python3-pytest).
"""

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import time

# Sanitizer reports that make a process's run count as a crash even if it exited "normally".
SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                     "ERROR: ThreadSanitizer", "SUMMARY: UndefinedBehaviorSanitizer")

# Everything below waits with deadlines; these are generous because the suite runs under ASan on 2 cores.
START_TIMEOUT = 30.0
MIGRATION_TIMEOUT = 90.0


def build_dir():
    """The build tree to test: $FERRY_BUILD, else build-san or build next to the sources."""
    env = os.environ.get("FERRY_BUILD")
    if env:
        return os.path.abspath(env)
    root = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
    for name in ("build-san", "build"):
        if os.path.isdir(os.path.join(root, name)):
            return os.path.join(root, name)
    return os.path.join(root, "build")


def workload_binary():
    return os.path.join(build_dir(), "hosts", "workload", "ferry-workload")


def sanitizer_report(text):
    """The first line of a sanitizer report in @text, or None."""
    for line in text.splitlines():
        if any(m in line for m in SANITIZER_MARKERS):
            return line
    return None


def free_port(family=socket.AF_INET, host="127.0.0.1"):
    """A TCP port that was free a moment ago. The destination must be told its port before the source starts,
    so port 0 cannot be used; binding port 0 here and closing the socket is the usual approximation."""
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def ipv6_loopback_works():
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as srv:
            srv.bind(("::1", 0))
            srv.listen(1)
            with socket.create_connection(("::1", srv.getsockname()[1]), timeout=2):
                pass
        return True
    except OSError:
        return False


def wait_until(predicate, timeout, what, interval=0.05):
    """Poll @predicate until it returns a true value (which is returned) or fail after @timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def _listening_tcp(port):
    """Whether some socket listens on TCP @port (v4 or v6), from /proc/net/tcp{,6} (state 0A is LISTEN)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                        return True
        except FileNotFoundError:
            continue
    return False


def _listening_abstract(name):
    """Whether a listening abstract UNIX socket named @name exists (/proc/net/unix shows it as "@name"; flag
    00010000 is __SO_ACCEPTCON, i.e. listening)."""
    with open("/proc/net/unix") as f:
        next(f)
        for line in f:
            fields = line.split()
            if len(fields) >= 8 and fields[7] == "@" + name and int(fields[3], 16) & 0x10000:
                return True
    return False


def open_fds(pid):
    """The number of fds process @pid has open, from /proc/PID/fd."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def wait_listening(uri, timeout=START_TIMEOUT):
    """Wait until a destination listens on @uri without connecting to it (a destination accepts exactly one
    connection, so a probe would be taken for the migration)."""
    if uri.startswith("unix:@"):
        name = uri[len("unix:@"):]
        wait_until(lambda: _listening_abstract(name), timeout, f"abstract UNIX socket @{name}")
    elif uri.startswith("unix:"):
        path = uri[len("unix:"):]
        wait_until(lambda: os.path.exists(path), timeout, f"UNIX socket {path}")
    elif uri.startswith("tcp:"):
        port = int(uri.rsplit(":", 1)[1])
        wait_until(lambda: _listening_tcp(port), timeout, f"a listener on TCP port {port}")
    else:
        raise ValueError(f"cannot wait for {uri}")


class QMPError(Exception):
    """An "error" reply: .cls is QMP's error class, .desc its description."""

    def __init__(self, cls, desc, reply=None):
        super().__init__(f"{cls}: {desc}")
        self.cls = cls
        self.desc = desc
        self.reply = reply


class QMPProtocolError(Exception):
    """The peer broke the protocol (closed the connection, sent something that is not a JSON object)."""


class QMP:
    """A QMP client over a UNIX socket. Replies are matched in order (one request in flight at a time); events
    that arrive in between are collected in .events (each the event's JSON object)."""

    def __init__(self, path, negotiate=True, timeout=30.0):
        self.path = path
        self.timeout = timeout
        self.events = []
        self._buf = b""
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.greeting = self._read_message()
        if "QMP" not in self.greeting:
            raise QMPProtocolError(f"bad greeting: {self.greeting!r}")
        if negotiate:
            self.cmd("qmp_capabilities")

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    # --- framing ---------------------------------------------------------------------------------------------
    def _read_line(self, timeout):
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no complete QMP message from {self.path} within {timeout:.0f} s")
            self.sock.settimeout(left)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise QMPProtocolError(f"connection to {self.path} closed by peer")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line

    def _read_message(self, timeout=None):
        timeout = self.timeout if timeout is None else timeout
        while True:
            line = self._read_line(timeout).strip()
            if not line:
                continue
            try:
                msg = json.loads(line)
            except ValueError as e:
                raise QMPProtocolError(f"server sent bad JSON {line!r}: {e}") from e
            if not isinstance(msg, dict):
                raise QMPProtocolError(f"server sent a non-object {line!r}")
            return msg

    def _read_reply(self, timeout=None):
        while True:
            msg = self._read_message(timeout)
            if "event" in msg:
                self.events.append(msg)
                continue
            return msg

    # --- requests ----------------------------------------------------------------------------------------------
    def send_raw(self, data, timeout=None):
        """Send raw bytes and return the next reply object (events are collected)."""
        self.sock.sendall(data)
        return self._read_reply(timeout)

    def request(self, obj, timeout=None, fds=()):
        """Send a request object and return the whole reply object. @fds travel with it as SCM_RIGHTS ancillary
        data (QMP getfd's convention: the fds arrive with the request that consumes them)."""
        data = json.dumps(obj).encode() + b"\n"
        if not fds:
            return self.send_raw(data, timeout)
        sent = socket.send_fds(self.sock, [data], list(fds))
        if sent < len(data):
            self.sock.sendall(data[sent:])
        return self._read_reply(timeout)

    def cmd(self, name, args=None, timeout=None, fds=(), **kwargs):
        """Execute @name; keyword arguments have '_' turned into '-' (exit_on_error -> exit-on-error). @fds are
        sent with the request (SCM_RIGHTS). Returns the "return" member or raises QMPError."""
        arguments = dict(args or {})
        arguments.update({k.replace("_", "-"): v for k, v in kwargs.items()})
        req = {"execute": name}
        if arguments:
            req["arguments"] = arguments
        reply = self.request(req, timeout, fds)
        if "error" in reply:
            err = reply["error"]
            raise QMPError(err.get("class"), err.get("desc"), reply)
        if "return" not in reply:
            raise QMPProtocolError(f"reply without return or error: {reply!r}")
        return reply["return"]

    def pump(self, timeout=0.0):
        """Collect the events that arrive within @timeout seconds (at least those already buffered)."""
        deadline = time.monotonic() + timeout
        while True:
            while b"\n" in self._buf:
                line, self._buf = self._buf.split(b"\n", 1)
                line = line.strip()
                if line:
                    msg = json.loads(line)
                    if "event" in msg:
                        self.events.append(msg)
            left = max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([self.sock], [], [], left)
            if not ready:
                return
            chunk = self.sock.recv(65536)
            if not chunk:
                return
            self._buf += chunk

    def events_named(self, name):
        self.pump()
        return [e for e in self.events if e.get("event") == name]

    def migration_events(self):
        return [e.get("data", {}).get("status") for e in self.events_named("MIGRATION")]


class Workload:
    """A ferry-workload process with its QMP socket. Use through the `workload` fixture, which always kills and
    reaps it and checks its stderr for sanitizer reports."""

    def __init__(self, tmpdir, name, args, qmp=True, env=None, pass_fds=(), hmp_stdio=False, prefix=(),
                 binary=None):
        self.name = name
        self.tmpdir = tmpdir
        self.qmp_path = os.path.join(tmpdir, f"{name}.qmp")
        self.stdout_path = os.path.join(tmpdir, f"{name}.stdout")
        self.stderr_path = os.path.join(tmpdir, f"{name}.stderr")
        # @prefix runs the program through a wrapper that execs it (e.g. "ip netns exec NS"): the pid stays the
        # program's, so /proc/PID and signals reach it. @binary: another build's ferry-workload.
        self.argv = [*prefix, binary or workload_binary(), "-name", name]
        if qmp:
            self.argv += ["-qmp", f"unix:{self.qmp_path},server=on,wait=off"]
        self.argv += [str(a) for a in args]
        self.expect_crash = False   # set when the test kills the process on purpose
        self.qmp = None
        self.hmp = None
        if hmp_stdio:
            self.argv += ["-monitor", "stdio"]
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            # With -monitor stdio the test is the terminal: the monitor's stdin and stdout are pipes to it.
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE if hmp_stdio else subprocess.DEVNULL,
                                         stdout=subprocess.PIPE if hmp_stdio else out, stderr=err, env=env,
                                         pass_fds=tuple(pass_fds), start_new_session=True)
        try:
            if hmp_stdio:
                self.hmp = HMP.over_pipe(self.proc.stdin, self.proc.stdout, self.name)
            if qmp:
                self._connect()
        except BaseException:
            # Nobody else holds this process yet: do not leave it behind.
            if self.alive():
                os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
            raise

    def __repr__(self):
        return f"<Workload {self.name} pid {self.proc.pid}>"

    def _connect(self):
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode} before its QMP socket was up; "
                                   f"argv {self.argv}; stderr:\n{self.stderr()}")
            if os.path.exists(self.qmp_path):
                try:
                    self.qmp = QMP(self.qmp_path)
                    return
                except (ConnectionRefusedError, FileNotFoundError):
                    pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: QMP socket {self.qmp_path} not up after {START_TIMEOUT:.0f} s")
            time.sleep(0.05)

    # --- process --------------------------------------------------------------------------------------------
    def stderr(self):
        try:
            with open(self.stderr_path, "r", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def alive(self):
        return self.proc.poll() is None

    def wait_exit(self, timeout=30.0):
        """Wait for the process to exit on its own; returns its exit status."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"{self.name} still running {timeout:.0f} s after it should have exited")

    def kill(self):
        self.expect_crash = True
        if self.alive():
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        if self.qmp:
            self.qmp.close()

    def stop_process(self):
        """Teardown: ask politely with QMP quit (so that LeakSanitizer gets to run), then SIGKILL. Returns a
        complaint if the process ignored quit, else None."""
        complaint = None
        if self.alive() and self.qmp is not None:
            try:
                self.qmp.cmd("quit", timeout=5)
            except Exception:
                pass
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                pass
        if self.alive():
            if self.qmp is not None and not self.expect_crash:
                complaint = f"{self.name} did not exit within 15 s of QMP quit"
            self.expect_crash = True
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        if self.qmp is not None:
            self.qmp.close()
        if self.hmp is not None:
            self.hmp.close()
        return complaint

    # --- QMP shortcuts --------------------------------------------------------------------------------------
    def cmd(self, name, args=None, **kwargs):
        return self.qmp.cmd(name, args, **kwargs)

    def status(self):
        return self.cmd("query-status")["status"]

    def events_named(self, name):
        return self.qmp.events_named(name)

    def migration_events(self):
        return self.qmp.migration_events()

    def query_migrate(self):
        return self.cmd("query-migrate")

    def migration_status(self):
        return self.query_migrate().get("status")

    def pattern_check(self):
        return self.cmd("query-pattern-check")

    def workload_info(self):
        return self.cmd("query-workload")

    def digest(self):
        return self.cmd("query-ram-digest")

    def set_params(self, **params):
        return self.cmd("migrate-set-parameters", **params)

    def enable_events(self):
        return self.cmd("migrate-set-capabilities", capabilities=[{"capability": "events", "state": True}])

    def migrate(self, uri=None, channels=None):
        """migrate with exactly what is given: a URI, a channels list, or both/neither for error tests."""
        args = {}
        if uri is not None:
            args["uri"] = uri
        if channels is not None:
            args["channels"] = channels
        return self.cmd("migrate", args)

    def getfd(self, fdname, fd):
        """QMP getfd: hand @fd (which the test keeps and may close afterwards) to the process as @fdname."""
        return self.qmp.cmd("getfd", {"fdname": fdname}, fds=[fd])

    def open_fds(self):
        return open_fds(self.proc.pid)

    def wait_migration(self, statuses=("completed", "failed", "cancelled"), timeout=MIGRATION_TIMEOUT):
        """Poll query-migrate until its status is one of @statuses; returns the whole reply."""
        last = {}

        def done():
            nonlocal last
            last = self.query_migrate()
            return last if last.get("status") in statuses else None

        try:
            return wait_until(done, timeout, f"{self.name}: migration status in {statuses}", interval=0.1)
        except TimeoutError as e:
            raise TimeoutError(f"{e}; last query-migrate: {last}") from None

    def wait_status(self, statuses, timeout=30.0):
        def check():
            st = self.status()
            return st if st in statuses else None
        return wait_until(check, timeout, f"{self.name}: run state in {statuses}")

    def assert_advancing(self, timeout=15.0):
        """The workers run: pages-written grows."""
        first = self.workload_info()["pages-written"]
        wait_until(lambda: self.workload_info()["pages-written"] > first, timeout,
                   f"{self.name}: pages-written to grow beyond {first}")

    def assert_pattern_ok(self):
        check = self.pattern_check()
        assert check["ok"] is True, f"{self.name}: pattern check failed: {check}"
        assert check["mismatches"] == 0, check
        assert check["pages"] > 0, check
        return check


class HMPError(Exception):
    pass


class HMP:
    """A human monitor client: writes a command line, returns the text printed before the next "(ferry) "
    prompt. Works over the pipes of -monitor stdio or a -monitor unix: socket."""

    PROMPT = b"(ferry) "

    def __init__(self, write, read_some, close, name, timeout=30.0):
        self._write = write
        self._read_some = read_some  # (timeout) -> bytes, b"" at end of file
        self._close = close
        self.name = name
        self.timeout = timeout
        self._buf = b""
        self.banner = self._until_prompt(timeout)

    @classmethod
    def over_pipe(cls, stdin, stdout, name, timeout=30.0):
        fd = stdout.fileno()

        def read_some(left):
            ready, _, _ = select.select([fd], [], [], left)
            return os.read(fd, 65536) if ready else None

        def write(data):
            stdin.write(data)
            stdin.flush()

        def close():
            for f in (stdin, stdout):
                try:
                    f.close()
                except OSError:
                    pass
        # The process may not have started its monitor yet: the banner and prompt arrive when it has.
        return cls(write, read_some, close, name, timeout)

    @classmethod
    def over_unix(cls, path, timeout=30.0):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(path)

        def read_some(left):
            ready, _, _ = select.select([sock], [], [], left)
            return sock.recv(65536) if ready else None

        return cls(sock.sendall, read_some, sock.close, path, timeout)

    def _until_prompt(self, timeout):
        deadline = time.monotonic() + timeout
        while self.PROMPT not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"HMP {self.name}: no prompt within {timeout:.0f} s; got {self._buf!r}")
            chunk = self._read_some(left)
            if chunk is None:
                continue
            if chunk == b"":
                raise HMPError(f"HMP {self.name}: end of output before the prompt; got {self._buf!r}")
            self._buf += chunk
        text, self._buf = self._buf.split(self.PROMPT, 1)
        return text.decode(errors="replace")

    def cmd(self, line, timeout=None):
        """Run one command line; returns its output (without the prompt), with carriage returns removed."""
        self._write(line.encode() + b"\n")
        out = self._until_prompt(self.timeout if timeout is None else timeout)
        return out.replace("\r", "")

    def close(self):
        self._close()


class WorkloadSet:
    """Starts Workloads with every option of Workload (fd inheritance, HMP on stdio), and at close() stops and
    reaps them all, returning the problems found (sanitizer reports, deaths by a signal the test did not send,
    a process that ignored quit). The conftest `workload` fixture does the same for plain workloads."""

    def __init__(self, tmpdir):
        self.tmpdir = tmpdir
        self.started = []

    def start(self, name, *args, **kwargs):
        w = Workload(self.tmpdir, name, args, **kwargs)
        self.started.append(w)
        return w

    def close(self):
        problems = []
        for w in self.started:
            expected_kill = w.expect_crash
            try:
                complaint = w.stop_process()
                if complaint:
                    problems.append(complaint)
            except Exception as e:  # keep going: every process must be reaped
                problems.append(f"{w.name}: could not stop: {e}")
            report = sanitizer_report(w.stderr())
            if report:
                problems.append(f"{w.name}: sanitizer report: {report}\n--- stderr ---\n{w.stderr()[-6000:]}")
            rc = w.proc.returncode
            if rc is not None and rc < 0 and not expected_kill:
                problems.append(f"{w.name}: died by signal {-rc}; stderr:\n{w.stderr()[-4000:]}")
        return problems


class Relay:
    """A UNIX-socket relay between a source and a destination, for fault injection: it accepts on @path and
    forwards each connection (both directions) to the destination's @target path, in its own threads. Its faults:
    @accept_only stops listening after that many connections (later connects are refused); @cut=(k, nbytes)
    cuts connection k (0 is the first, the main channel) once nbytes went from the source towards the
    destination. Everything is on this machine's UNIX sockets and stops with close()."""

    def __init__(self, path, target, accept_only=None, cut=None):
        import threading
        self.path, self.target = path, target
        self.accept_only, self.cut = accept_only, cut
        self.conns = []
        self.cut_done = threading.Event()
        self._closed = False
        self._lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._lsock.bind(path)
        self._lsock.listen(512)
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    def _accept_loop(self):
        import threading
        n = 0
        while not self._closed:
            try:
                c, _ = self._lsock.accept()
            except OSError:
                return
            d = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                d.connect(self.target)
            except OSError:
                c.close()
                d.close()
                continue
            self.conns.append((c, d))
            index = n
            n += 1
            last = self.accept_only is not None and n >= self.accept_only
            if last:
                # No listener any more: a connect to the path is refused (the socket file stays). Closed before
                # any byte is relayed, so that no later connect can slip into the backlog.
                self._lsock.close()
            limit = self.cut[1] if self.cut and self.cut[0] == index else None
            threading.Thread(target=self._pump, args=(c, d, limit), daemon=True).start()
            threading.Thread(target=self._pump, args=(d, c, None), daemon=True).start()
            if last:
                return

    def _pump(self, a, b, limit):
        moved = 0
        try:
            while True:
                data = a.recv(1 << 16)
                if not data:
                    break
                if limit is not None and moved + len(data) >= limit:
                    self.cut_done.set()
                    for s in (a, b):
                        try:
                            s.shutdown(socket.SHUT_RDWR)
                        except OSError:
                            pass
                    return
                b.sendall(data)
                moved += len(data)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self):
        self._closed = True
        try:
            self._lsock.close()
        except OSError:
            pass
        for c, d in self.conns:
            for s in (c, d):
                try:
                    s.close()
                except OSError:
                    pass


# Record types of docs/stream-format.md that the StreamRelay needs to know.
REC_HELLO, REC_FEATURES, REC_RAM_PAGES, REC_PASS_END, REC_SECTION, REC_END, REC_COMMIT = 0x0007, 0x0008, \
    0x0002, 0x0003, 0x0004, 0x0005, 0x000C


class StreamRelay:
    """A UNIX-socket relay for a migration's main channel that reads the ferry stream as it forwards it
    (docs/stream-format.md: the 16-byte header, then records of type, flags, length, payload and a CRC32C trailer
    when the stream uses record-checksum) and holds the stream at a named point, before forwarding the record
    that marks it, so that a test can inject a fault exactly there:

      setup        HELLO (the source waits for the destination's HELLO_REPLY; nothing has been sent yet)
      first-pass   the 8th RAM_PAGES record of pass 1
      later-pass   the 8th RAM_PAGES record after the first PASS_END (pass 2 or later)
      switchover   the first SECTION (the source has stopped its workload and sent its last pages)
      device-state END (every SECTION has gone; only END and the destination's ACK are left)
      ack          the destination's answer to END (its ACK), held on the way back to the source
      commit       the source's COMMIT after it read the ACK (switchover-commit)

    at_point is set once the stream is held there; cut() then breaks both connections, release() lets the stream
    go on. If the destination side closes (killed), the source side is shut down too, as a real connection would
    break. Only the first connection is parsed; the relay takes just one (no multifd, no fd passing)."""

    POINTS = ("setup", "first-pass", "later-pass", "switchover", "device-state", "ack", "commit")

    def __init__(self, path, target, point):
        import threading
        assert point in self.POINTS, point
        self.path, self.target, self.point = path, target, point
        self.at_point = threading.Event()
        self._go = threading.Event()
        self._cut = False
        self._hold_back = False  # point "ack": END went out, hold what comes back
        self.c = self.d = None
        self._lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._lsock.bind(path)
        self._lsock.listen(4)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _recv_exact(self, n):
        buf = bytearray()
        while len(buf) < n:
            chunk = self.c.recv(min(n - len(buf), 1 << 20))
            if not chunk:
                raise EOFError("source closed")
            buf += chunk
        return bytes(buf)

    def _reached(self, rtype, ram_records, passes_ended):
        if self.point == "setup":
            return rtype == REC_HELLO
        if self.point == "first-pass":
            return rtype == REC_RAM_PAGES and passes_ended == 0 and ram_records == 8
        if self.point == "later-pass":
            return rtype == REC_RAM_PAGES and passes_ended >= 1 and ram_records == 8
        if self.point == "switchover":
            return rtype == REC_SECTION
        if self.point == "commit":
            return rtype == REC_COMMIT
        return self.point == "device-state" and rtype == REC_END

    @staticmethod
    def _features(payload):
        count = int.from_bytes(payload[0:2], "big")
        names, off = [], 2
        for _ in range(count):
            n = payload[off + 1]
            names.append(payload[off + 2:off + 2 + n].decode())
            off += 2 + n
        return names

    def _back(self):
        """Destination to source, unparsed; the destination's end closes the source's."""
        try:
            while True:
                data = self.d.recv(1 << 16)
                if not data:
                    break
                if self._hold_back:
                    self.at_point.set()
                    self._go.wait()
                    if self._cut:
                        return
                    self._hold_back = False
                self.c.sendall(data)
        except OSError:
            pass
        self._shutdown()

    def _shutdown(self):
        for s in (self.c, self.d):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except (OSError, AttributeError):
                pass
        self._go.set()

    def _run(self):
        import threading
        try:
            self.c, _ = self._lsock.accept()
        except OSError:
            return
        self._lsock.close()
        self.d = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.d.connect(self.target)
        except OSError:
            self._shutdown()
            return
        threading.Thread(target=self._back, daemon=True).start()
        checksum = True  # HELLO and FEATURES always carry it; FEATURES says for the rest
        ram_records = passes_ended = 0
        held = False
        try:
            self.d.sendall(self._recv_exact(16))
            while True:
                head = self._recv_exact(8)
                rtype = int.from_bytes(head[0:2], "big")
                length = int.from_bytes(head[4:8], "big")
                payload = self._recv_exact(length)
                always = rtype in (REC_HELLO, REC_FEATURES)
                trailer = self._recv_exact(4) if (checksum or always) else b""
                if rtype == REC_FEATURES:
                    checksum = "record-checksum" in self._features(payload)
                if rtype == REC_RAM_PAGES:
                    ram_records += 1
                if not held and self._reached(rtype, ram_records, passes_ended):
                    held = True
                    self.at_point.set()
                    self._go.wait()
                    if self._cut:
                        return
                if rtype == REC_PASS_END:
                    passes_ended += 1
                    ram_records = 0
                if rtype == REC_END and self.point == "ack":
                    self._hold_back = True  # before END goes: the answer may come at once
                self.d.sendall(head + payload + trailer)
                if rtype == REC_COMMIT or (rtype == REC_END and self.point != "commit"):
                    break
            # The rest (nothing but the end of the stream) goes through unparsed.
            while True:
                data = self.c.recv(1 << 16)
                if not data:
                    break
                self.d.sendall(data)
        except (OSError, EOFError):
            pass
        self._shutdown()

    def cut(self):
        self._cut = True
        self._shutdown()

    def release(self):
        self._go.set()

    def close(self):
        self.cut()
        for s in (self.c, self.d, self._lsock):
            try:
                s.close()
            except (OSError, AttributeError):
                pass


# ---- TAP tests: a network namespace with a TAP in it (test_tap.py, test_vm.py) ----

TAP = "ftap0"
HOST_IP = "10.0.0.1"


class NetNS:
    def __init__(self, name):
        self.name = name
        self.prefix = ("ip", "netns", "exec", name)

    def run(self, *cmd, check=True):
        p = subprocess.run([*self.prefix, *cmd], capture_output=True, text=True, timeout=20)
        if check and p.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} in {self.name}: exit {p.returncode}: {p.stderr.strip()}")
        return p

    def configure_tap(self, tap=TAP):
        """The host's side of the TAP: an address and link up (lo too, for completeness)."""
        self.run("ip", "link", "set", "lo", "up")
        self.run("ip", "addr", "add", f"{HOST_IP}/24", "dev", tap)
        self.run("ip", "link", "set", tap, "up")

    def tun_flags(self, tap=TAP):
        p = self.run("cat", f"/sys/class/net/{tap}/tun_flags", check=False)
        return int(p.stdout.strip(), 16) if p.returncode == 0 else None


def tap_skip_reason():
    """Why TAP tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, TAP devices and raw ICMP sockets)"
    if not os.path.exists("/dev/net/tun"):
        return "no /dev/net/tun (the kernel's TUN/TAP driver is missing)"
    if shutil.which("ip") is None:
        return "iproute2's ip is not installed"
    return None


def fd_tap_name(pid, fd):
    """The interface a TUN/TAP fd of process @pid is attached to (the "iff:" line of its fdinfo), or None."""
    with open(f"/proc/{pid}/fdinfo/{fd}") as f:
        for line in f:
            if line.startswith("iff:"):
                return line.split()[1]
    return None
