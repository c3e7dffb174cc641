"""Failed web logins and wrong phone credentials count toward the SIP ban engine: past
``[security] auth_failures`` the source is banned, and then its logins and phone fetches are
refused (403) and its SIP requests dropped. The client speaks from 127.0.0.2 (the demo
tenant's trunk makes 127.0.0.1 a trusted source)."""
from __future__ import annotations

import base64
import http.client
import json
import socket
import uuid

from webrig import WebRig

SOURCE = "127.0.0.2"


def http_from(rig, method: str, path: str, body: dict | None = None, auth: bytes | None = None) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", rig.http_port, timeout=10, source_address=(SOURCE, 0))
    headers = {"Content-Type": "application/json"}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(auth).decode()
    conn.request(method, path, json.dumps(body) if body is not None else None, headers)
    status = conn.getresponse().status
    conn.close()
    return status


def options_from(port: int) -> bool:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((SOURCE, 0))
    sock.settimeout(0.5)
    branch = "z9hG4bK" + uuid.uuid4().hex[:12]
    lport = sock.getsockname()[1]
    sock.sendto((f"OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\nVia: SIP/2.0/UDP {SOURCE}:{lport};branch={branch}\r\n"
                 f"Max-Forwards: 70\r\nFrom: <sip:probe@{SOURCE}>;tag=1\r\nTo: <sip:127.0.0.1>\r\n"
                 f"Call-ID: {branch}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n").encode(), ("127.0.0.1", port))
    try:
        return sock.recv(4096).startswith(b"SIP/2.0 200")
    except OSError:
        return False
    finally:
        sock.close()


def test_http_failures_ban_the_source(tmp_path):
    rig = WebRig(tmp_path, http_extra="login_failures = 100\n",
                 security={"auth_failures": 3, "user_failures": 0, "flood_threshold": 1_000_000}).start()
    try:
        with rig.admin() as a:
            a.call("phone.create", mac="001565000001", tenant="demo", vendor="yealink", accounts=["alice"],
                   http_password="dev-pass-1")
        assert options_from(rig.server.port)
        assert http_from(rig, "POST", "/api/login", {"username": "op", "password": "wrong-1"}) == 401
        assert http_from(rig, "POST", "/api/login", {"username": "op", "password": "wrong-2"}) == 401
        # the third failure: wrong HTTP Basic credentials on /rpc
        assert http_from(rig, "POST", "/rpc", {"jsonrpc": "2.0", "method": "user.list", "id": 1},
                         auth=b"op:wrong-3") == 401
        with rig.admin() as a:
            bans = a.call("ban.list")
        assert [b["host"] for b in bans] == [SOURCE]
        assert http_from(rig, "POST", "/api/login", {"username": "op", "password": "operator-secret"}) == 403
        assert http_from(rig, "GET", "/prov/001565000001.cfg", auth=b"001565000001:dev-pass-1") == 403
        assert not options_from(rig.server.port)  # its SIP is dropped too
        assert rig.session("op").status == 200  # 127.0.0.1 is not banned
        with rig.admin() as a:
            a.call("ban.remove", host=SOURCE)
        assert http_from(rig, "POST", "/api/login", {"username": "op", "password": "operator-secret"}) == 200
    finally:
        rig.stop()
