"""TLS between two real ferry-workload processes, with credentials made by certtool as a user would make them (a CA,
a server and a client certificate, a second CA, a PSK file): x509 migrations over UNIX and TCP that verify (the
A-B invariant on the running destination) and over an fd that is a socket, PSK, multifd over TLS, the objects from -object, -incoming config:,
QMP object-add / object-del and HMP; and the refusals, each with a clear error on both ends, the source still
running with its pattern intact and the destination not having loaded anything: a CA the source does not trust,
a client certificate the destination does not trust, a wrong hostname, a client not in the authz list, a
plaintext source to a TLS destination and a TLS source to a plaintext destination. Also the configurations
migrate refuses up front, a cancel in the middle of a TLS migration, and an object that cannot be deleted while
a migration uses it."""

import os
import shutil
import subprocess
import tempfile

import pytest

from ferrytest import QMPError, free_port, wait_listening, wait_until, workload_binary

AB = ["-m", "64M", "-smp", "2", "-pattern", "ab", "-dirty-rate", "32"]
SLOW_AB = ["-m", "64M", "-smp", "2", "-pattern", "ab", "-dirty-rate", "64"]
FAST = 1 << 30
CLIENT_DN = "C=GB,ST=London,L=London,O=Example Org,CN=source.example.com"

pytestmark = pytest.mark.skipif(shutil.which("certtool") is None,
                                reason="certtool (Debian package gnutls-bin) is needed to make certificates")


def certtool(*args):
    subprocess.run(["certtool", *args], check=True, capture_output=True, timeout=60)


def write(path, text):
    with open(path, "w") as f:
        f.write(text)


def make_ca(d, name):
    os.makedirs(d, exist_ok=True)
    write(f"{d}/ca.info", f"cn = Ferry Test CA {name}\nca\ncert_signing_key\nexpiration_days = 30\n")
    certtool("--generate-privkey", "--key-type=ecdsa", "--outfile", f"{d}/ca-key.pem")
    certtool("--generate-self-signed", "--load-privkey", f"{d}/ca-key.pem", "--template", f"{d}/ca.info",
             "--outfile", f"{d}/ca-cert.pem")


def make_leaf(ca, d, who, template):
    """@who-cert.pem and @who-key.pem in @d, signed by the CA in directory @ca; ca-cert.pem copied along."""
    os.makedirs(d, exist_ok=True)
    write(f"{d}/{who}.info", template + "encryption_key\nsigning_key\nexpiration_days = 30\n")
    certtool("--generate-privkey", "--key-type=ecdsa", "--outfile", f"{d}/{who}-key.pem")
    certtool("--generate-certificate", "--load-privkey", f"{d}/{who}-key.pem", "--load-ca-certificate",
             f"{ca}/ca-cert.pem", "--load-ca-privkey", f"{ca}/ca-key.pem", "--template", f"{d}/{who}.info",
             "--outfile", f"{d}/{who}-cert.pem")


SERVER_TEMPLATE = ("organization = Ferry Test\ncn = localhost\ndns_name = localhost\nip_address = 127.0.0.1\n"
                   "tls_www_server\n")
CLIENT_TEMPLATE = ("country = GB\nstate = London\nlocality = London\norganization = Example Org\n"
                   "cn = source.example.com\ntls_www_client\n")


@pytest.fixture(scope="module")
def pki():
    """Directories of credentials, as tls-creds-x509 and tls-creds-psk read them:
    server      CA one, a server certificate for localhost and 127.0.0.1
    client      CA one, a client certificate CN=source.example.com
    client-ca2  CA two (which did not sign the server), a client certificate of its own
    client-bad  CA one, but a client certificate signed by CA two (needs sanity-check=off to load)
    psk         keys.psk; psk-other: another key for the same user"""
    root = tempfile.mkdtemp(prefix="ferry-pki-", dir="/tmp")
    try:
        make_ca(f"{root}/ca1", "one")
        make_ca(f"{root}/ca2", "two")
        d = {name: f"{root}/{name}" for name in ("server", "client", "client-ca2", "client-bad", "psk", "psk-other")}
        make_leaf(f"{root}/ca1", d["server"], "server", SERVER_TEMPLATE)
        make_leaf(f"{root}/ca1", d["client"], "client", CLIENT_TEMPLATE)
        make_leaf(f"{root}/ca2", d["client-ca2"], "client", CLIENT_TEMPLATE)
        make_leaf(f"{root}/ca2", d["client-bad"], "client", CLIENT_TEMPLATE)
        for name, ca in (("server", "ca1"), ("client", "ca1"), ("client-ca2", "ca2"), ("client-bad", "ca1")):
            shutil.copy(f"{root}/{ca}/ca-cert.pem", f"{d[name]}/ca-cert.pem")
        os.makedirs(d["psk"])
        os.makedirs(d["psk-other"])
        write(f"{d['psk']}/keys.psk", "qemu:" + os.urandom(32).hex() + "\n")
        write(f"{d['psk-other']}/keys.psk", "qemu:" + os.urandom(32).hex() + "\n")
        d["root"] = root
        yield d
    finally:
        shutil.rmtree(root, ignore_errors=True)


def x509(d, endpoint, id="tls0", extra=""):
    return ["-object", f"tls-creds-x509,id={id},dir={d},endpoint={endpoint}{extra}"]


def unix_uri(workload, name="mig.sock"):
    return f"unix:{os.path.join(workload.tmpdir, name)}"


def start_destination(workload, objects, params, uri, args=AB, name="dst"):
    """A destination with -incoming defer that listens on @uri with @params set (exit-on-error=false, so that a
    refused migration leaves it up to be inspected)."""
    dst = workload(name, *args, *objects, "-incoming", "defer")
    if params:
        dst.set_params(**params)
    dst.cmd("migrate-incoming", uri=uri, exit_on_error=False)
    wait_listening(uri)
    return dst


def all_written(src):
    wait_until(lambda: src.workload_info()["pages-written"] >= src.workload_info()["pages"], 30,
               "every page written once")


def migrate(src, uri, **params):
    src.set_params(**{"max-bandwidth": FAST, **params})
    src.migrate(uri)
    return src.wait_migration()


def check_verified(src, dst, info):
    assert info["status"] == "completed", info
    src.wait_status(("postmigrate",))
    dst.wait_status(("running",))
    dst.assert_pattern_ok()
    dst.assert_advancing()
    dst.assert_pattern_ok()


def assert_source_intact(src):
    assert src.status() == "running"
    src.assert_pattern_ok()
    src.assert_advancing()


def assert_nothing_loaded(dst):
    info = dst.wait_migration(statuses=("failed",), timeout=30)
    assert info.get("error-desc"), info
    assert info["ram"]["normal"] == 0 and info["ram"]["duplicate"] == 0, info
    assert dst.alive()
    assert dst.status() == "inmigrate"
    return info


@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_x509_migration(workload, pki, transport):
    """Over unix the hostname is tls-hostname; over tcp it is the URI's host, 127.0.0.1, which the server
    certificate carries as an IP address."""
    uri = unix_uri(workload) if transport == "unix" else f"tcp:127.0.0.1:{free_port()}"
    dst = start_destination(workload, x509(pki["server"], "server") +
                            ["-object", f"authz-simple,id=auth0,identity={CLIENT_DN.replace(',', ',,')}"],
                            {"tls-creds": "tls0", "tls-authz": "auth0"}, uri)
    src = workload("src", *AB, *x509(pki["client"], "client"))
    src.wait_status(("running",))
    params = {"tls-creds": "tls0"}
    if transport == "unix":
        params["tls-hostname"] = "localhost"
    info = migrate(src, uri, **params)
    check_verified(src, dst, info)
    assert info["tls"]["creds"] == "tls0" and "TLS1." in info["tls"]["protocol"], info
    assert info["tls"]["peer"] == "O=Ferry Test,CN=localhost", info
    dinfo = dst.query_migrate()
    assert dinfo["tls"]["peer"] == CLIENT_DN, dinfo
    assert src.cmd("query-migrate-parameters")["tls-creds"] == "tls0"


def test_x509_over_fd(wl, pki):
    """fd: addresses that are sockets (a socketpair, one end given to each process with getfd) carry TLS too."""
    import socket
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    dst = wl.start("dst", *AB, *x509(pki["server"], "server"), "-incoming", "defer")
    src = wl.start("src", *AB, *x509(pki["client"], "client"))
    try:
        dst.getfd("migin", b.fileno())
        src.getfd("migout", a.fileno())
    finally:
        a.close()
        b.close()
    dst.set_params(**{"tls-creds": "tls0"})
    dst.cmd("migrate-incoming", uri="fd:migin")
    info = migrate(src, "fd:migout", **{"tls-creds": "tls0", "tls-hostname": "localhost"})
    check_verified(src, dst, info)
    assert info["tls"]["creds"] == "tls0", info


def test_incoming_config_and_authz_list(workload, pki):
    """The destination's TLS set on the command line only: -object before or after -incoming config:, an
    authz-list in QEMU's JSON form of -object."""
    uri = unix_uri(workload)
    authz = ('{"qom-type": "authz-list", "id": "auth0", "policy": "deny", "rules": ['
             '{"match": "*CN=other*", "policy": "deny", "format": "glob"}, '
             '{"match": "*O=Example Org,CN=source.example.com", "policy": "allow", "format": "glob"}]}')
    dst = workload("dst", *AB, "-incoming", "config:tls-creds=tls0,tls-authz=auth0", "-incoming", uri,
                   *x509(pki["server"], "server"), "-object", authz)
    wait_listening(uri)
    p = dst.cmd("query-migrate-parameters")
    assert (p["tls-creds"], p["tls-authz"], p["tls-hostname"]) == ("tls0", "auth0", ""), p
    src = workload("src", *AB, *x509(pki["client"], "client"))
    info = migrate(src, uri, **{"tls-creds": "tls0", "tls-hostname": "localhost"})
    check_verified(src, dst, info)


def test_psk_migration(workload, pki):
    uri = unix_uri(workload)
    dst = start_destination(workload, ["-object", f"tls-creds-psk,id=psk0,dir={pki['psk']},endpoint=server",
                                       "-object", "authz-simple,id=auth0,identity=qemu"],
                            {"tls-creds": "psk0", "tls-authz": "auth0"}, uri)
    src = workload("src", *AB, "-object", f"tls-creds-psk,id=psk0,dir={pki['psk']},username=qemu")
    info = migrate(src, uri, **{"tls-creds": "psk0"})
    check_verified(src, dst, info)
    assert dst.query_migrate()["tls"]["peer"] == "qemu"


def test_psk_wrong_key(workload, pki):
    uri = unix_uri(workload)
    dst = start_destination(workload, ["-object", f"tls-creds-psk,id=psk0,dir={pki['psk']},endpoint=server"],
                            {"tls-creds": "psk0"}, uri)
    src = workload("src", *AB, "-object", f"tls-creds-psk,id=psk0,dir={pki['psk-other']}")
    info = migrate(src, uri, **{"tls-creds": "psk0"})
    assert info["status"] == "failed" and "TLS handshake with" in info["error-desc"], info
    assert "TLS handshake with" in assert_nothing_loaded(dst)["error-desc"]
    assert_source_intact(src)


@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_multifd_over_tls(workload, pki, transport):
    """Every multifd channel does its own handshake (and the server's checks) before its hello."""
    uri = unix_uri(workload) if transport == "unix" else f"tcp:127.0.0.1:{free_port()}"
    dst = workload("dst", *AB, *x509(pki["server"], "server"),
                   "-object", "authz-list,id=auth0,rules.0.match=*CN=source.example.com,rules.0.policy=allow,"
                              "rules.0.format=glob", "-incoming", "defer")
    dst.cmd("migrate-set-capabilities", capabilities=[{"capability": "multifd", "state": True}])
    dst.set_params(**{"tls-creds": "tls0", "tls-authz": "auth0"})
    dst.cmd("migrate-incoming", uri=uri, exit_on_error=False)
    wait_listening(uri)
    src = workload("src", *AB, *x509(pki["client"], "client"))
    src.cmd("migrate-set-capabilities", capabilities=[{"capability": "multifd", "state": True}])
    all_written(src)
    info = migrate(src, uri, **{"tls-creds": "tls0", "tls-hostname": "localhost", "multifd-channels": 4})
    check_verified(src, dst, info)
    assert "multifd" in info["stream-features"], info
    ram = info["ram"]
    assert ram["multifd-bytes"] >= ram["normal"] * ram["page-size"], info


REFUSALS = {
    # name: (source creds dir, source params, destination authz identity or None, source's text, destination's)
    "wrong-ca-on-source": ("client-ca2", {"tls-hostname": "localhost"}, None,
                           "certificate not trusted: 'O=Ferry Test,CN=localhost' is not signed by a trusted CA",
                           "the peer refused the session (it does not accept this end's certificate): TLS alert"),
    "client-not-trusted": ("client-bad", {"tls-hostname": "localhost"}, None,
                           "the destination failed: TLS handshake with",
                           f"certificate not trusted: '{CLIENT_DN}' is not signed by a trusted CA"),
    "wrong-hostname": ("client", {"tls-hostname": "wrong.example.com"}, None,
                       "hostname mismatch: the certificate 'O=Ferry Test,CN=localhost' is not for 'wrong.example.com'",
                       "TLS alert"),
    "not-in-authz-list": ("client", {"tls-hostname": "localhost"}, "CN=somebody-else",
                          f"the destination failed: TLS handshake with", f"'{CLIENT_DN}' is not in authz list 'auth0'"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refused(workload, pki, case):
    creds_dir, params, identity, src_text, dst_text = REFUSALS[case]
    uri = unix_uri(workload)
    objects = x509(pki["server"], "server")
    dparams = {"tls-creds": "tls0"}
    if identity:
        objects += ["-object", f"authz-list,id=auth0,rules.0.match={identity},rules.0.policy=allow"]
        dparams["tls-authz"] = "auth0"
    dst = start_destination(workload, objects, dparams, uri)
    src = workload("src", *AB, *x509(pki[creds_dir], "client", extra=",sanity-check=off"))
    src.wait_status(("running",))
    info = migrate(src, uri, **{"tls-creds": "tls0", **params})
    assert info["status"] == "failed", info
    assert src_text in info["error-desc"], info
    dinfo = assert_nothing_loaded(dst)
    assert dst_text in dinfo["error-desc"], dinfo
    assert_source_intact(src)


def test_plaintext_source_to_tls_destination(workload, pki):
    uri = unix_uri(workload)
    dst = start_destination(workload, x509(pki["server"], "server"), {"tls-creds": "tls0"}, uri)
    src = workload("src", *AB)
    info = migrate(src, uri)
    assert info["status"] == "failed", info
    assert "the destination failed: " in info["error-desc"], info
    assert "peer did not speak TLS" in info["error-desc"], info
    dinfo = assert_nothing_loaded(dst)
    assert "peer did not speak TLS" in dinfo["error-desc"] and "TLS is required here" in dinfo["error-desc"], dinfo
    assert_source_intact(src)


def test_tls_source_to_plaintext_destination(workload, pki):
    uri = unix_uri(workload)
    dst = start_destination(workload, [], {}, uri)
    src = workload("src", *AB, *x509(pki["client"], "client"))
    info = migrate(src, uri, **{"tls-creds": "tls0", "tls-hostname": "localhost"})
    assert info["status"] == "failed", info
    assert "peer did not speak TLS" in info["error-desc"], info
    dinfo = assert_nothing_loaded(dst)
    assert "the source speaks TLS, but this destination has no tls-creds set" in dinfo["error-desc"], dinfo
    assert_source_intact(src)
    # The same source, pointed at a destination that speaks TLS, then migrates.
    uri2 = unix_uri(workload, "mig2.sock")
    dst2 = start_destination(workload, x509(pki["server"], "server"), {"tls-creds": "tls0"}, uri2, name="dst2")
    info = migrate(src, uri2)
    check_verified(src, dst2, info)


def test_refused_configurations(workload, pki):
    """What migrate and migrate-incoming refuse before anything connects, naming the id or the reason."""
    src = workload("src", *AB, *x509(pki["client"], "client"), *x509(pki["server"], "server", id="srv"))
    sock = unix_uri(workload, "never.sock")

    def refused(uri, text, **params):
        src.set_params(**params)
        with pytest.raises(QMPError) as e:
            src.migrate(uri)
        assert text in e.value.desc, e.value.desc

    refused(sock, "No TLS credentials with id 'nope'", **{"tls-creds": "nope"})
    refused(sock, "Expected TLS credentials for a client endpoint, but 'srv' is for a server endpoint",
            **{"tls-creds": "srv"})
    refused(sock, "set tls-hostname (only tcp addresses give one)", **{"tls-creds": "tls0"})
    refused(f"file:{workload.tmpdir}/x", "TLS needs a socket channel (tcp, unix, vsock or fd)")
    refused("exec:cat >/dev/null", "TLS needs a socket channel")
    src.set_params(**{"tls-hostname": "localhost"})
    src.cmd("migrate-set-capabilities", capabilities=[{"capability": "unix-page-flipping", "state": True}])
    refused(sock, "cannot be combined with unix-page-flipping on")
    src.cmd("migrate-set-capabilities", capabilities=[{"capability": "unix-page-flipping", "state": False}])
    with pytest.raises(QMPError) as e:
        src.set_params(**{"tls-creds": 7})
    assert "Invalid parameter type for 'tls-creds', expected: string" in e.value.desc
    # null and "" both switch TLS off again (QEMU's StrOrNull).
    src.set_params(**{"tls-creds": None})
    assert src.cmd("query-migrate-parameters")["tls-creds"] == ""
    assert src.status() == "running"

    dst = workload("dst", *AB, *x509(pki["client"], "client"), "-incoming", "defer")
    dst.set_params(**{"tls-creds": "tls0"})
    with pytest.raises(QMPError) as e:
        dst.cmd("migrate-incoming", uri=unix_uri(workload, "in.sock"))
    assert "Expected TLS credentials for a server endpoint, but 'tls0' is for a client endpoint" in e.value.desc
    # The command line refuses the same at start-up.
    rc = subprocess.run([workload_binary(), "-m", "64M", *x509(pki["server"], "server"), "-incoming",
                         "config:tls-creds=tls0,tls-authz=missing", "-incoming", unix_uri(workload, "x.sock")],
                        capture_output=True, text=True, timeout=60)
    assert rc.returncode == 1, rc
    assert "No authorization object with id 'missing'" in rc.stderr, rc.stderr


def test_cancel_and_object_in_use(workload, pki):
    """A slow TLS migration: its objects cannot be deleted while it runs; migrate_cancel interrupts it; the
    objects can go once it has ended."""
    uri = unix_uri(workload)
    dst = start_destination(workload, x509(pki["server"], "server"), {"tls-creds": "tls0"}, uri, args=SLOW_AB)
    src = workload("src", *SLOW_AB, *x509(pki["client"], "client"))
    all_written(src)
    src.set_params(**{"tls-creds": "tls0", "tls-hostname": "localhost", "max-bandwidth": 4 << 20})
    src.migrate(uri)
    wait_until(lambda: src.query_migrate().get("ram", {}).get("transferred", 0) > (1 << 20), 30, "TLS data flowing")
    for w in (src, dst):
        with pytest.raises(QMPError) as e:
            w.cmd("object-del", id="tls0")
        assert "object 'tls0' is in use, can not be deleted" in e.value.desc
    src.cmd("migrate_cancel")
    info = src.wait_migration(timeout=30)
    assert info["status"] == "cancelled", info
    assert_source_intact(src)
    dst.wait_migration(statuses=("failed",), timeout=30)
    src.cmd("object-del", id="tls0")
    dst.cmd("object-del", id="tls0")
    with pytest.raises(QMPError) as e:
        src.migrate(uri)
    assert "No TLS credentials with id 'tls0'" in e.value.desc


def test_object_add_and_del_over_qmp(workload, pki):
    w = workload("w", "-m", "16M")
    assert w.cmd("object-add", {"qom-type": "tls-creds-x509", "id": "tls0", "dir": pki["server"],
                                "endpoint": "server", "verify-peer": True}) == {}
    w.cmd("object-add", {"qom-type": "tls-creds-psk", "id": "psk0", "dir": pki["psk"], "username": "qemu"})
    w.cmd("object-add", {"qom-type": "authz-list", "id": "auth0", "policy": "deny",
                         "rules": [{"match": "CN=a", "policy": "allow"},
                                   {"match": "CN=*", "policy": "deny", "format": "glob"}]})
    w.cmd("object-add", {"qom-type": "authz-simple", "id": "auth1", "identity": CLIENT_DN})
    empty = os.path.join(workload.tmpdir, "empty")
    os.makedirs(empty)
    bad = [
        ({"qom-type": "tls-creds-x509", "id": "tls0", "dir": pki["server"]}, "an object with id 'tls0' already exists"),
        ({"qom-type": "tls-creds-x509", "id": "9x", "dir": pki["server"]}, "Parameter 'id' expects an identifier"),
        ({"qom-type": "no-such-type", "id": "x"}, "Parameter 'qom-type' does not accept value 'no-such-type'"),
        ({"qom-type": "tls-creds-x509", "id": "x"}, "Parameter 'dir' is missing"),
        ({"qom-type": "tls-creds-x509", "id": "x", "dir": "/nonexistent"},
         "tls-creds-x509 'x': dir '/nonexistent': No such file or directory"),
        ({"qom-type": "tls-creds-x509", "id": "x", "dir": empty}, f"{empty}/ca-cert.pem is missing"),
        ({"qom-type": "tls-creds-x509", "id": "x", "dir": pki["client"], "endpoint": "server"},
         f"{pki['client']}/server-cert.pem is missing"),
        ({"qom-type": "tls-creds-x509", "id": "x", "dir": pki["server"], "verify-peer": "yes"},
         "Invalid parameter type for 'verify-peer', expected: boolean"),
        ({"qom-type": "tls-creds-x509", "id": "x", "dir": pki["server"], "endpoint": "middle"},
         "Parameter 'endpoint' does not accept value 'middle'"),
        ({"qom-type": "tls-creds-x509", "id": "x", "dir": pki["server"], "size": 5}, "Parameter 'size' is unexpected"),
        ({"qom-type": "tls-creds-x509", "id": "x", "dir": pki["client-bad"]},
         "client-cert.pem is not signed by a trusted CA"),
        ({"qom-type": "tls-creds-psk", "id": "x", "dir": empty}, f"{empty}/keys.psk is missing"),
        ({"qom-type": "tls-creds-psk", "id": "x", "dir": pki["psk"], "username": "nobody"},
         "has no key for username 'nobody'"),
        ({"qom-type": "authz-list", "id": "x", "rules": [{"match": "a"}]}, "Parameter 'rules[0].policy' is missing"),
        ({"qom-type": "authz-list", "id": "x", "rules": [{"match": "a", "policy": "allow", "format": "regex"}]},
         "Parameter 'rules[0].format' does not accept value 'regex'"),
    ]
    for args, text in bad:
        with pytest.raises(QMPError) as e:
            w.cmd("object-add", args)
        assert text in e.value.desc, (args, e.value.desc)
    with pytest.raises(QMPError) as e:
        w.cmd("object-add", {"id": "x"})
    assert e.value.desc == "Parameter 'qom-type' is missing"
    for oid in ("tls0", "psk0", "auth0", "auth1"):
        assert w.cmd("object-del", id=oid) == {}
    with pytest.raises(QMPError) as e:
        w.cmd("object-del", id="tls0")
    assert e.value.desc == "object 'tls0' not found"
    # Deleted means gone: the id can be used again.
    w.cmd("object-add", {"qom-type": "authz-simple", "id": "tls0", "identity": "x"})


def test_objects_over_hmp(wl, pki):
    w = wl.start("w", "-m", "16M", hmp_stdio=True)
    assert w.hmp.cmd(f"object_add tls-creds-x509,id=tls0,dir={pki['server']},endpoint=server,verify-peer=off") == ""
    assert w.hmp.cmd('object_add "authz-simple,id=a0,identity=CN=x,,O=Example Org"') == ""
    assert "already exists" in w.hmp.cmd(f"object_add tls-creds-x509,id=tls0,dir={pki['server']}")
    assert "unknown object type 'bogus'" in w.hmp.cmd("object_add bogus,id=x")
    assert "Parameter 'verify-peer' expects 'on' or 'off'" in w.hmp.cmd(
        f"object_add tls-creds-x509,id=t1,dir={pki['server']},verify-peer=perhaps")
    assert w.hmp.cmd("migrate_set_parameter tls-creds tls0") == ""
    assert "tls-creds: 'tls0'" in w.hmp.cmd("info migrate_parameters")
    assert w.hmp.cmd("object_del a0") == ""
    assert "object 'a0' not found" in w.hmp.cmd("object_del a0")


def test_command_line_errors(pki):
    def fails(*args):
        r = subprocess.run([workload_binary(), "-m", "16M", *args], capture_output=True, text=True, timeout=60)
        assert r.returncode == 1, (args, r)
        return r.stderr

    err = fails("-object", "tls-creds-x509,id=tls0,dir=/nonexistent,endpoint=server")
    assert "-object 'tls-creds-x509,id=tls0,dir=/nonexistent,endpoint=server': tls-creds-x509 'tls0': dir " \
           "'/nonexistent': No such file or directory" in err, err
    err = fails("-object", f"tls-creds-x509,id=tls0,dir={pki['server']}", "-object",
                f"tls-creds-psk,id=tls0,dir={pki['psk']}")
    assert "an object with id 'tls0' already exists" in err, err
    err = fails("-object", f"tls-creds-x509,dir={pki['server']}")
    assert "Parameter 'id' is missing" in err, err
    err = fails("-object", "no-such-thing,id=x")
    assert "unknown object type 'no-such-thing'" in err and "tls-creds-x509" in err, err


def test_io_timeout_under_tls(workload, pki):
    """A destination that stops reading mid-migration over TLS: the source's io-timeout holds on the socket
    under the session, and its error still names the parameter (the TLS channel keeps the inner error)."""
    import signal
    uri = unix_uri(workload)
    dst = start_destination(workload, x509(pki["server"], "server"), {"tls-creds": "tls0"}, uri, args=SLOW_AB)
    src = workload("src", *SLOW_AB, *x509(pki["client"], "client"))
    all_written(src)
    src.set_params(**{"max-bandwidth": 16 << 20, "tls-creds": "tls0", "tls-hostname": "localhost",
                      "io-timeout": 1500})
    src.migrate(uri)
    wait_until(lambda: src.query_migrate().get("ram", {}).get("transferred", 0) > 0, 30, "RAM to flow")
    os.kill(dst.proc.pid, signal.SIGSTOP)
    try:
        info = src.wait_migration(timeout=60)
        assert info["status"] == "failed", info
        assert "no progress for 1500 ms (io-timeout)" in info.get("error-desc", ""), info
        assert_source_intact(src)
    finally:
        os.kill(dst.proc.pid, signal.SIGCONT)
