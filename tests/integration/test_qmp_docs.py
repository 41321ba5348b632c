"""The examples of docs/qmp.md, replayed: every fenced block marked `qmp` or `hmp` runs against a fresh
ferry-workload, so the reference cannot drift from what the program does. The block syntax is described at the
top of docs/qmp.md: `->` requests and `<-` expected replies or events (`"<any>"` matches any value, a member
`"...": "<any>"` allows more members), `# start: ARGS` for extra command-line arguments, `# with an fd` to send
the next request with a pipe's read end as SCM_RIGHTS data, `$TMP` for a temporary directory; in `hmp` blocks
`(ferry) COMMAND` lines are typed and the lines up to the next one are the expected output (`<any>` inside a line
matches any text). The test also checks that the page has examples at all and that every command the program
registers is documented."""

import json
import os
import re
import shlex

import pytest

from ferrytest import HMP

DOC = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "qmp.md")
SMALL = ["-m", "16M", "-smp", "1", "-pattern", "ab", "-dirty-rate", "1"]
ANY = "<any>"


def doc_blocks(kind):
    """The fenced blocks of docs/qmp.md marked @kind, as (first line number, lines)."""
    blocks = []
    with open(DOC) as f:
        lines = f.read().split("\n")
    i = 0
    while i < len(lines):
        if lines[i].strip() == "```" + kind:
            start = i + 1
            j = start
            while lines[j].strip() != "```":
                j += 1
            blocks.append((start + 1, lines[start:j]))
            i = j
        i += 1
    return blocks


def matches(want, got):
    """Whether @got (a JSON value) fits @want with its placeholders; returns a reason string on mismatch."""
    if want == ANY:
        return None
    if isinstance(want, dict):
        if not isinstance(got, dict):
            return f"expected an object, got {got!r}"
        open_ended = want.get("...") == ANY
        for k, v in want.items():
            if k == "...":
                continue
            if k not in got:
                return f"member {k!r} missing in {got!r}"
            why = matches(v, got[k])
            if why:
                return f"{k}: {why}"
        extra = set(got) - set(want)
        if extra and not open_ended:
            return f"unexpected members {sorted(extra)} in {got!r}"
        return None
    if isinstance(want, list):
        if not isinstance(got, list) or len(got) != len(want):
            return f"expected {want!r}, got {got!r}"
        for n, (w, g) in enumerate(zip(want, got)):
            why = matches(w, g)
            if why:
                return f"[{n}]: {why}"
        return None
    if type(want) is not type(got) or want != got:
        return f"expected {want!r}, got {got!r}"
    return None


def block_start_args(lines, tmpdir):
    args = []
    for line in lines:
        if line.startswith("# start:"):
            args += shlex.split(line[len("# start:"):].replace("$TMP", tmpdir))
    return args


QMP_BLOCKS = doc_blocks("qmp")
HMP_BLOCKS = doc_blocks("hmp")


def test_doc_has_examples():
    assert len(QMP_BLOCKS) >= 6 and len(HMP_BLOCKS) >= 1


@pytest.mark.parametrize("lineno,lines", QMP_BLOCKS, ids=[f"qmp.md:{n}" for n, _ in QMP_BLOCKS])
def test_qmp_example(workload, lineno, lines):
    tmpdir = workload.tmpdir
    w = workload("w", *SMALL, *block_start_args(lines, tmpdir))
    with_fd = False
    pending = []          # events seen and not yet matched
    for n, line in enumerate(lines, lineno):
        where = f"docs/qmp.md:{n}"
        line = line.replace("$TMP", tmpdir)
        if line.startswith("# with an fd"):
            with_fd = True
        elif line.startswith("-> "):
            req = json.loads(line[3:])
            if with_fd:
                r, wr = os.pipe()
                try:
                    reply = w.qmp.request(req, fds=[r])
                finally:
                    os.close(r)
                    os.close(wr)
                with_fd = False
            else:
                reply = w.qmp.request(req)
            pending = []
            w.qmp.events.clear()
            last_reply = reply
            consumed = False
        elif line.startswith("<- "):
            want = json.loads(line[3:])
            if "event" in want:
                want.setdefault("timestamp", ANY)
                got = None
                for _ in range(50):
                    pending = w.qmp.events_named(want["event"])
                    if pending:
                        got = pending[0]
                        break
                    w.qmp.pump(0.1)
                assert got is not None, f"{where}: no {want['event']} event"
                why = matches(want, got)
                assert not why, f"{where}: {why}"
            else:
                assert not consumed, f"{where}: two replies for one request"
                why = matches(want, last_reply)
                assert not why, f"{where}: {why}"
                consumed = True
        elif line.strip() and not line.startswith("#"):
            pytest.fail(f"{where}: a qmp block line must start with '->', '<-' or '#': {line!r}")


def hmp_line_matches(want, got):
    pattern = ".*".join(re.escape(part) for part in want.split(ANY))
    return re.fullmatch(pattern, got) is not None


@pytest.mark.parametrize("lineno,lines", HMP_BLOCKS, ids=[f"qmp.md:{n}" for n, _ in HMP_BLOCKS])
def test_hmp_example(workload, lineno, lines):
    tmpdir = workload.tmpdir
    sock = os.path.join(tmpdir, "hmp.sock")
    w = workload("w", *SMALL, "-monitor", f"unix:{sock},server=on,wait=off", *block_start_args(lines, tmpdir))
    hmp = HMP.over_unix(sock)
    try:
        assert hmp.banner == "ferry 0.1.0 monitor - type 'help' for more information\n"
        steps = []
        for n, line in enumerate(lines, lineno):
            if line.startswith("(ferry) "):
                steps.append((n, line[len("(ferry) "):], []))
            elif not line.startswith("# start:"):
                assert steps, f"docs/qmp.md:{n}: output before the first command"
                steps[-1][2].append(line)
        for n, command, want in steps:
            got = hmp.cmd(command.replace("$TMP", tmpdir))
            got_lines = got.split("\n")
            if got_lines and got_lines[-1] == "":
                got_lines.pop()
            ok = len(got_lines) == len(want) and all(hmp_line_matches(a, b) for a, b in zip(want, got_lines))
            assert ok, f"docs/qmp.md:{n}: {command!r} printed {got_lines!r}, the page says {want!r}"
    finally:
        hmp.close()
    assert w.alive()


def test_every_command_documented(workload):
    w = workload("w", *SMALL)
    with open(DOC) as f:
        text = f.read()
    names = [c["name"] for c in w.cmd("query-commands")]
    missing = [n for n in names if f"**{n}**" not in text and f"`{n}`" not in text]
    assert not missing, f"commands without an entry in docs/qmp.md: {missing}"
