"""TLS done right: TLS 1.1 refused and 1.2/1.3 accepted (checked with openssl s_client), no
suite without forward secrecy, certificate reload (tls.reload, SIGHUP) under an open
connection that keeps getting 200 to OPTIONS, a broken file refused with the old certificate
kept, SNI per domain, and our own connections to a TLS trunk checking its certificate."""
from __future__ import annotations

import hashlib
import sys
from pathlib import Path
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import uuid

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from certs import make_ca, make_leaf  # noqa: E402
from harness import HpbxServer, header  # noqa: E402

OPENSSL = shutil.which("openssl")
pytestmark = pytest.mark.skipif(OPENSSL is None, reason="the openssl command is not installed")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca = make_ca(d)
    return {"dir": d, "ca": ca,
            "a": make_leaf(d, ca, "cert-a", "IP:127.0.0.1"),
            "b": make_leaf(d, ca, "cert-b", "IP:127.0.0.1"),
            "t1": make_leaf(d, ca, "t1.test", "DNS:t1.test")}


@pytest.fixture(scope="module")
def server(tmp_path_factory, pki):
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "server.pem", d / "server.key"
    shutil.copy(pki["a"][0], cert)
    shutil.copy(pki["a"][1], key)
    srv = HpbxServer(d / "srv", users=[("100", "pw-100")], transports=("udp", "tls"),
                     sip_extra={"tls_cert": str(cert), "tls_key": str(key)},
                     security={"flood_threshold": 0, "auth_failures": 0,
                               "tls_certs": [{"domain": "t1.test", "cert": str(pki["t1"][0]),
                                              "key": str(pki["t1"][1])}]})
    srv.cert, srv.key = cert, key
    with srv:
        yield srv


def s_client(srv, *args: str) -> tuple[int, str]:
    r = subprocess.run([OPENSSL, "s_client", "-connect", f"127.0.0.1:{srv.port}", *args],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=20)
    return r.returncode, r.stdout + r.stderr


def fingerprint(srv, server_name: str | None = None) -> str:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=server_name) as tls:
            return hashlib.sha256(tls.getpeercert(binary_form=True)).hexdigest()


def cert_fingerprint(path) -> str:
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(path.read_text())).hexdigest()


def options(sock: ssl.SSLSocket, lport: int) -> str:
    branch = "z9hG4bK" + uuid.uuid4().hex[:16]
    sock.sendall((f"OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:{lport};branch={branch}\r\n"
                  f"Max-Forwards: 70\r\nFrom: <sip:probe@127.0.0.1>;tag=1\r\nTo: <sip:127.0.0.1>\r\n"
                  f"Call-ID: {branch}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n").encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65535)
        if not chunk:
            return ""
        data += chunk
    return data.decode(errors="replace").split("\r\n")[0]


def admin(srv, method, **params):
    from hpbx.admin.client import AdminClient
    with AdminClient(str(srv.dir / "hpbx.sock"), timeout=10) as c:
        return c.call(method, params)


def test_tls_1_1_refused_1_2_and_1_3_accepted(server):
    rc, out = s_client(server, "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0")
    # (s_client names the protocol it tried even when nothing was negotiated: Cipher 0000)
    assert rc != 0 and "Cipher is (NONE)" in out and "Cipher    : 0000" in out, out[-2000:]
    for flag, name in (("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")):
        rc, out = s_client(server, flag)
        assert rc == 0 and f"New, {name}, Cipher is " in out and "Cipher is (NONE)" not in out, out[-2000:]
        print(f"{flag}: negotiated {name}")
    # a TLS 1.2 suite without forward secrecy (plain RSA key exchange) or without AEAD
    rc, out = s_client(server, "-tls1_2", "-cipher", "AES128-SHA:ECDHE-ECDSA-AES128-SHA")
    assert rc != 0 and "Cipher is (NONE)" in out, out[-2000:]


def test_sni_picks_the_domains_certificate(server, pki):
    assert fingerprint(server, "t1.test") == cert_fingerprint(pki["t1"][0])
    assert fingerprint(server) == cert_fingerprint(server.cert)


def test_reload_under_an_open_connection(server, pki):
    ctx = ssl.create_default_context(cafile=str(pki["ca"][0]))
    answers: list[str] = []
    stop = threading.Event()
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    conn = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
    lport = conn.getsockname()[1]

    def keep_asking():
        while not stop.is_set():
            answers.append(options(conn, lport))
            time.sleep(0.1)

    asker = threading.Thread(target=keep_asking, daemon=True)
    asker.start()
    try:
        a = fingerprint(server)
        assert a == cert_fingerprint(pki["a"][0])
        shutil.copy(pki["b"][0], server.cert)
        shutil.copy(pki["b"][1], server.key)
        assert admin(server, "tls.reload") == {"reloaded": True}
        assert fingerprint(server) == cert_fingerprint(pki["b"][0])
        # a broken certificate: refused, B stays, over admin and over SIGHUP alike
        server.cert.write_text("-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n")
        from hpbx.admin.protocol import RpcError
        with pytest.raises(RpcError) as info:
            admin(server, "tls.reload")
        assert info.value.code == -32003 and "cannot load certificate" in info.value.message
        server.signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while "reload refused" not in server.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "reload refused" in server.log()
        assert fingerprint(server) == cert_fingerprint(pki["b"][0])
        # a good certificate again, by SIGHUP alone: new handshakes get it
        shutil.copy(pki["a"][0], server.cert)
        shutil.copy(pki["a"][1], server.key)
        server.signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while fingerprint(server) != cert_fingerprint(pki["a"][0]) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert fingerprint(server) == cert_fingerprint(pki["a"][0]), server.log()
        time.sleep(0.3)
    finally:
        stop.set()
        asker.join(5)
        conn.close()
        shutil.copy(pki["a"][0], server.cert)
    # every connection of this test is gone from the server's table once closed
    deadline = time.monotonic() + 5
    while admin(server, "stats.get", layer="sip")["sip"]["connections"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert admin(server, "stats.get", layer="sip")["sip"]["connections"] == 0
    assert len(answers) >= 5 and set(answers) == {"SIP/2.0 200 OK"}, answers
    print(f"open connection: {len(answers)} OPTIONS, all 200, across three reloads (admin, refused, SIGHUP)")


class TlsTrunk:
    """A TLS gateway that records what arrives after a completed handshake."""

    def __init__(self, cert, key):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(str(cert), str(key))
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.received: list[bytes] = []
        self.handshake_errors: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stop.is_set():
            try:
                raw, _ = self.sock.accept()
            except OSError:
                continue
            try:
                raw.settimeout(3)
                with self.ctx.wrap_socket(raw, server_side=True) as tls:
                    self.received.append(tls.recv(65535))
            except (ssl.SSLError, OSError) as exc:
                self.handshake_errors.append(str(exc))

    def close(self):
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


def test_our_connections_to_a_tls_trunk_check_its_certificate(tmp_path, pki):
    from harness import RawPhone, digest_authorization
    good = TlsTrunk(*pki["a"])  # signed by the CA the server trusts, for 127.0.0.1
    rogue_ca = make_ca(tmp_path / "rogue", "rogue CA")
    bad = TlsTrunk(*make_leaf(tmp_path / "rogue", rogue_ca, "rogue", "IP:127.0.0.1"))
    tenants = tmp_path / "tenants.toml"
    tenants.write_text(
        '[tenant]\nname = "good"\ntrunk = "gw"\n'
        f'[[trunks]]\nname = "gw"\nhost = "127.0.0.1"\nport = {good.port}\ntransport = "tls"\n'
        '[[users]]\nusername = "g1"\nsip_password = "g1-secret"\n')
    tenants2 = tmp_path / "tenants2.toml"
    tenants2.write_text(
        '[tenant]\nname = "bad"\ntrunk = "gw"\n'
        f'[[trunks]]\nname = "gw"\nhost = "127.0.0.1"\nport = {bad.port}\ntransport = "tls"\n'
        '[[users]]\nusername = "b1"\nsip_password = "b1-secret"\n')
    srv = HpbxServer(tmp_path / "srv", security={"flood_threshold": 0, "auth_failures": 0,
                                                 "tls_ca_file": str(pki["ca"][0])},
                     sip_extra={"tls_cert": str(pki["a"][0]), "tls_key": str(pki["a"][1])},
                     transports=("udp", "tls"))
    text = srv.config.read_text().replace("files = []", f'files = ["{tenants}", "{tenants2}"]')
    srv.config.write_text(text)
    try:
        with srv:
            for username in ("g1", "b1"):
                ruri = f"sip:0791110001@127.0.0.1:{srv.port}"
                with RawPhone(srv.host, srv.port) as phone:
                    phone.request("INVITE", ruri, from_user=username)
                    challenge = phone.recv_until(lambda m: m.startswith("SIP/2.0 407"), 3)
                    auth = digest_authorization(header(challenge, "Proxy-Authenticate")[0], username,
                                                f"{username}-secret", "INVITE", ruri)
                    phone.call_id += "x"
                    phone.request("INVITE", ruri, [f"Proxy-Authorization: {auth}"], from_user=username)
                    deadline = time.monotonic() + 5
                    trunk = good if username == "g1" else bad
                    while time.monotonic() < deadline and not (trunk.received or trunk.handshake_errors):
                        time.sleep(0.05)
            time.sleep(0.3)
            log = srv.log()
    finally:
        good.close()
        bad.close()
    assert good.received and good.received[0].startswith(b"INVITE sip:0791110001@127.0.0.1"), good.received
    assert bad.received == [] and bad.handshake_errors, (bad.received, bad.handshake_errors)
    assert "certificate verify failed" in log, log[-2000:]


def test_banned_sources_are_dropped_at_accept_on_tcp_and_before_the_tls_handshake(tmp_path, pki):
    """A banned address gets its TCP connection closed unanswered and no TLS handshake;
    another address is served on both."""
    from harness import free_port
    port, tls_port = free_port(), free_port()
    srv = HpbxServer(tmp_path / "srv", transports=("udp", "tcp", "tls"), port=port,
                     security={"flood_threshold": 0, "auth_failures": 0},
                     sip_extra={"tls_cert": str(pki["a"][0]), "tls_key": str(pki["a"][1])})
    srv.config.write_text(srv.config.read_text().replace(
        f'"tcp:127.0.0.1:{port}", "tls:127.0.0.1:{port}"',
        f'"tcp:127.0.0.1:{port}", "tls:127.0.0.1:{tls_port}"'))
    ctx = ssl.create_default_context(cafile=str(pki["ca"][0]))

    def over_tcp(source: str) -> str:
        with socket.create_connection(("127.0.0.1", port), timeout=2, source_address=(source, 0)) as s:
            try:
                return options(s, s.getsockname()[1])
            except (ConnectionError, socket.timeout):
                return ""

    def over_tls(source: str) -> str:
        raw = socket.create_connection(("127.0.0.1", tls_port), timeout=2, source_address=(source, 0))
        try:
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
                return options(s, s.getsockname()[1])
        except (ssl.SSLError, ConnectionError, socket.timeout) as exc:
            return f"no TLS: {type(exc).__name__}"
        finally:
            raw.close()

    with srv:
        admin(srv, "ban.add", host="127.0.0.5", secs=60)
        assert over_tcp("127.0.0.5") == ""
        assert over_tls("127.0.0.5").startswith("no TLS")
        assert over_tcp("127.0.0.6") == "SIP/2.0 200 OK"
        assert over_tls("127.0.0.6") == "SIP/2.0 200 OK"
        dropped = admin(srv, "ban.list")[0]["dropped"]
        assert dropped >= 2, dropped
        assert "handshake failed" not in srv.log()  # the banned one never got that far
