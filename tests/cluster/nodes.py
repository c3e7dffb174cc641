"""Two (or more) hpbx nodes sharing one PostgreSQL and one Redis, each a ``CallRig`` on its own
loopback address (127.0.0.1, 127.0.0.2, ...), with its own admin socket and relay."""
from __future__ import annotations

import time
from pathlib import Path

import orjson
import psycopg

from callrig import CallRig


def cluster_store(dsn: str, redis_url: str, node: str) -> str:
    esc = dsn.replace("\\", "\\\\").replace('"', '\\"')
    return (f'backend = "postgres"\ndsn = "{esc}"\nredis = "{redis_url}"\nnode = "{node}"\n')


class Node(CallRig):
    def __init__(self, directory: Path, tenant_toml: str, *, name: str, host: str, dsn: str,
                 redis_url: str, **kw):
        super().__init__(directory, tenant_toml, host=host, **kw)
        self.name = name
        self.dsn = dsn
        config = self.server.config
        text = config.read_text().replace("[store]\n", "[store]\n" + cluster_store(dsn, redis_url, name), 1)
        config.write_text(text)

    def cdrs(self, wait: float = 2.0, count: int = 1) -> list[dict]:
        """The CDR table in PostgreSQL (shared: every node's CDRs)."""
        deadline = time.monotonic() + wait
        while True:
            with psycopg.connect(self.dsn) as db:
                rows = [orjson.loads(r[0]) for r in db.execute("SELECT doc FROM cdrs ORDER BY id")]
            if len(rows) >= count or time.monotonic() > deadline:
                return rows
            time.sleep(0.1)


def wait_for(predicate, timeout: float = 5.0, step: float = 0.02):
    """The predicate's first truthy value within ``timeout`` s, else its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(step)


class TcpPhone:
    """A phone on one TCP connection (as phones behind NAT keep theirs): registers with digest,
    then answers one call that arrives on the same connection and takes the BYE."""

    def __init__(self, server: tuple[str, int], username: str, password: str, local_ip: str):
        import socket
        self.sock = socket.create_connection(server, timeout=5, source_address=(local_ip, 0))
        self.server = server
        self.username, self.password = username, password
        self.host, self.port = self.sock.getsockname()[:2]
        self.buf = b""
        self.received: list[str] = []

    def close(self) -> None:
        self.sock.close()

    def read(self, timeout: float = 5.0) -> str:
        """One message (framed by Content-Length)."""
        self.sock.settimeout(timeout)
        while True:
            head, sep, rest = self.buf.partition(b"\r\n\r\n")
            if sep:
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() in (b"content-length", b"l"):
                        length = int(value)
                if len(rest) >= length:
                    self.buf = rest[length:]
                    text = (head + sep + rest[:length]).decode()
                    self.received.append(text)
                    return text
            data = self.sock.recv(65535)
            if not data:
                raise ConnectionError("the server closed the connection")
            self.buf += data

    def send(self, text: str) -> None:
        self.sock.sendall(text.encode())

    def register(self) -> str:
        from harness import digest_authorization, header
        host, port = self.server
        uri = f"sip:{host}:{port}"
        for cseq, auth in ((1, None), (2, "pending")):
            lines = [f"REGISTER {uri} SIP/2.0",
                     f"Via: SIP/2.0/TCP {self.host}:{self.port};branch=z9hG4bKtcp{cseq}{self.port};rport",
                     "Max-Forwards: 70", f"From: <sip:{self.username}@{host}>;tag=tp{self.port}",
                     f"To: <sip:{self.username}@{host}>", f"Call-ID: reg-{self.port}@tcpphone",
                     f"CSeq: {cseq} REGISTER",
                     f"Contact: <sip:{self.username}@{self.host}:{self.port};transport=tcp>",
                     "Expires: 300"]
            if auth:
                lines.append("Authorization: " + digest_authorization(
                    header(challenge, "WWW-Authenticate")[0], self.username, self.password, "REGISTER", uri))
            self.send("\r\n".join(lines + ["Content-Length: 0", "", ""]))
            answer = self.read()
            if cseq == 1:
                assert answer.startswith("SIP/2.0 401"), answer
                challenge = answer
        return answer

    @staticmethod
    def _reply(request: str, status: str, tag: str, extra: list[str] = (), body: str = "") -> str:
        from harness import header
        head = request.split("\r\n\r\n")[0].split("\r\n")
        copied = [line for line in head[1:] if line.split(":", 1)[0].strip().lower()
                  in ("via", "from", "call-id", "cseq", "record-route")]
        to = header(request, "To")[0]
        if ";tag=" not in to:
            to += f";tag={tag}"
        return "\r\n".join([f"SIP/2.0 {status}", *copied, f"To: {to}", *extra,
                            f"Content-Length: {len(body.encode())}", "", body])

    def answer_call(self) -> tuple[str, str]:
        """INVITE -> 180, 200 (SDP) -> ACK -> BYE -> 200: (the INVITE, the BYE)."""
        invite = self.read()
        assert invite.startswith("INVITE "), invite
        contact = f"Contact: <sip:{self.username}@{self.host}:{self.port};transport=tcp>"
        self.send(self._reply(invite, "180 Ringing", "tcpph", [contact]))
        sdp = ("v=0\r\no=- 1 1 IN IP4 {h}\r\ns=-\r\nc=IN IP4 {h}\r\nt=0 0\r\n"
               "m=audio 40000 RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n").format(h=self.host)
        self.send(self._reply(invite, "200 OK", "tcpph", [contact, "Content-Type: application/sdp"], sdp))
        ack = self.read()
        assert ack.startswith("ACK "), ack
        bye = self.read(15)
        assert bye.startswith("BYE "), bye
        self.send(self._reply(bye, "200 OK", "tcpph"))
        return invite, bye
