"""TCP and TLS: OPTIONS over TLS, CRLFCRLF ping answered with CRLF, a phone registered over a
connection is reached over that same connection (the server's keepalive ping arrives on it)."""
from __future__ import annotations

import socket
import ssl
import subprocess
import time
import uuid

import pytest

from harness import HpbxServer, digest_authorization, free_port, header


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    d = tmp_path_factory.mktemp("cert")
    key, crt = d / "key.pem", d / "cert.pem"
    proc = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                           "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(crt)],
                          capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"openssl cannot make a test certificate: {proc.stderr[-300:]}")
    return crt, key


@pytest.fixture(scope="module")
def server(tmp_path_factory, cert):
    port = free_port()
    tls_port = free_port()
    srv = HpbxServer(tmp_path_factory.mktemp("stream"), users=[("tcpnat", "tcpnat-pw")],
                     flags={"tcpnat": {"behind_nat": True}}, port=port,
                     sip_extra={"keepalive_interval": 1, "keepalive_grace": 30,
                                "tls_cert": str(cert[0]), "tls_key": str(cert[1])})
    # a TLS listener beside UDP and TCP on the same config
    text = srv.config.read_text().replace(
        f'"tcp:127.0.0.1:{port}"]', f'"tcp:127.0.0.1:{port}", "tls:127.0.0.1:{tls_port}"]')
    srv.config.write_text(text)
    srv.tls_port = tls_port
    srv.start()
    yield srv
    srv.stop()


class StreamPhone:
    def __init__(self, sock):
        self.sock = sock
        self.buf = b""
        self.host, self.port = sock.getsockname()[:2]

    def send(self, text: str) -> None:
        self.sock.sendall(text.encode())

    def recv_raw(self, timeout: float) -> bytes:
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65535)
        except (socket.timeout, TimeoutError, ssl.SSLError):
            return b""
        return data

    def recv_message(self, timeout: float = 2.0) -> str | None:
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in self.buf.lstrip(b"\r\n"):
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            data = self.recv_raw(left)
            if not data:
                return None
            self.buf += data
        self.buf = self.buf.lstrip(b"\r\n")
        head, _, rest = self.buf.partition(b"\r\n\r\n")
        length = int(header(head.decode() + "\r\n\r\n", "Content-Length")[0] or 0)
        msg, self.buf = head + b"\r\n\r\n" + rest[:length], rest[length:]
        return msg.decode()

    def request(self, method, ruri, headers=(), to_uri=None, from_user="phone", cseq=1, kind="TCP"):
        branch = "z9hG4bK" + uuid.uuid4().hex[:12]
        lines = [f"{method} {ruri} SIP/2.0",
                 f"Via: SIP/2.0/{kind} {self.host}:{self.port};branch={branch};rport",
                 "Max-Forwards: 70", f"From: <sip:{from_user}@{self.host}>;tag=s{cseq}",
                 f"To: <{to_uri or ruri}>", f"Call-ID: stream-{id(self)}", f"CSeq: {cseq} {method}",
                 *headers, "Content-Length: 0", "", ""]
        self.send("\r\n".join(lines))
        return self.recv_message()


def test_options_over_tls(server):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    raw = socket.create_connection(("127.0.0.1", server.tls_port), timeout=3)
    with ctx.wrap_socket(raw) as tls:
        phone = StreamPhone(tls)
        reply = phone.request("OPTIONS", f"sip:127.0.0.1:{server.tls_port}", kind="TLS")
        assert reply and reply.startswith("SIP/2.0 200"), reply
        phone.send("\r\n\r\n")
        assert phone.recv_raw(2.0) == b"\r\n"


def test_crlf_ping_over_tcp(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=3) as sock:
        sock.sendall(b"\r\n\r\n")
        sock.settimeout(2)
        assert sock.recv(100) == b"\r\n"


def test_tcp_registration_is_reached_over_its_connection(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=3) as sock:
        phone = StreamPhone(sock)
        ruri = f"sip:127.0.0.1:{server.port}"
        contact = [f"Contact: <sip:tcpnat@192.168.1.20:5060;transport=tcp>", "Expires: 300"]
        reply = phone.request("REGISTER", ruri, contact, to_uri="sip:tcpnat@127.0.0.1", from_user="tcpnat")
        assert reply.startswith("SIP/2.0 401"), reply
        auth = digest_authorization(header(reply, "WWW-Authenticate")[0], "tcpnat", "tcpnat-pw", "REGISTER", ruri)
        reply = phone.request("REGISTER", ruri, contact + [f"Authorization: {auth}"],
                              to_uri="sip:tcpnat@127.0.0.1", from_user="tcpnat", cseq=2)
        assert reply.startswith("SIP/2.0 200"), reply
        [row] = [b for b in server.bindings() if b["username"] == "tcpnat"]
        assert row["transport"] == "tcp" and row["connection_id"] > 0
        assert row["source_port"] == phone.port and row["behind_nat"] == 1
        # the keepalive (RFC 5626 CRLFCRLF ping) comes over the phone's own connection
        data = phone.recv_raw(3.0)
        assert data == b"\r\n\r\n", data
        sock.sendall(b"\r\n")
