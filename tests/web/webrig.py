"""The web face under test: the real server (demo tenant + tenant "other") with an [http]
listener on a free loopback port, admin accounts made over the socket, and small HTTP helpers
(urllib: no client library between the test and the server's bytes)."""
from __future__ import annotations

import base64
import http.cookiejar
import json
import urllib.error
import urllib.request
from pathlib import Path

from harness import REPO, HpbxServer, free_port
from hpbx.admin.client import AdminClient

OTHER_TENANT = """
[tenant]
name = "other"

[[users]]
username = "olga"
sip_password = "olga-secret"
internal_number = "200"

[[numbers]]
number = "0449990000"
name = "Other main"

[[numbers.slots]]
active = true
days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]

[[numbers.slots.rows]]
duration = 20
targets = ["user:olga"]

[[switches]]
name = "other-closed"
numbers = ["0449990000"]
"""

ACCOUNTS = {"op": ("operator-secret", "operator", ""), "demoadm": ("demoadm-secret", "tenant_admin", "demo"),
            "otheradm": ("otheradm-secret", "tenant_admin", "other")}


class WebRig:
    def __init__(self, directory: Path, http_extra: str = "", security: dict | None = None,
                 https: tuple[Path, Path] | None = None):
        directory.mkdir(parents=True, exist_ok=True)
        other = directory / "other.toml"
        other.write_text(OTHER_TENANT)
        self.http_port = free_port()
        listen = [f"http:127.0.0.1:{self.http_port}"]
        if https is not None:  # (certificate, key): an https: listener beside the http: one
            self.https_port = free_port()
            listen.append(f"https:127.0.0.1:{self.https_port}")
            http_extra = f'tls_cert = "{https[0]}"\ntls_key = "{https[1]}"\n{http_extra}'
        self.server = HpbxServer(directory, provision_files=(REPO / "config" / "demo.toml", other),
                                 security=security, extra_toml=f'[http]\nlisten = {json.dumps(listen)}\n{http_extra}')
        self.base = f"http://127.0.0.1:{self.http_port}"

    def start(self) -> "WebRig":
        self.server.start()
        with self.admin() as a:
            for name, (pw, role, tenant) in ACCOUNTS.items():
                a.call("admin.create", username=name, password=pw, role=role,
                       **({"tenant": tenant} if tenant else {}))
        return self

    def stop(self) -> None:
        self.server.stop()

    def admin(self) -> AdminClient:
        return AdminClient(str(self.server.dir / "hpbx.sock"))

    # -- HTTP
    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                opener=None) -> tuple[int, dict, bytes]:
        req = urllib.request.Request(self.base + path, data=body, method=method, headers=headers or {})
        try:
            with (opener or urllib.request.build_opener()).open(req, timeout=30) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def basic_rpc(self, user: str, method: str, params: dict | None = None) -> dict:
        pw = ACCOUNTS[user][0]
        token = base64.b64encode(f"{user}:{pw}".encode()).decode()
        body = json.dumps({"jsonrpc": "2.0", "method": method, "params": params or {}, "id": 1}).encode()
        status, _, data = self.request("POST", "/rpc", body, {"Authorization": f"Basic {token}",
                                                             "Content-Type": "application/json"})
        answer = json.loads(data)
        answer["_status"] = status
        return answer

    def session(self, user: str, password: str | None = None) -> "Session":
        return Session(self, user, ACCOUNTS[user][0] if password is None else password)


class Session:
    """A browser-like client: cookie jar plus the CSRF token from the login answer."""

    def __init__(self, rig: WebRig, user: str, password: str):
        self.rig = rig
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))
        self.status, self.headers, body = rig.request(
            "POST", "/api/login", json.dumps({"username": user, "password": password}).encode(),
            {"Content-Type": "application/json"}, self.opener)
        self.answer = json.loads(body)
        self.csrf = self.answer.get("csrf", "")

    def rpc(self, method: str, params: dict | None = None, csrf: str | None = None) -> dict:
        body = json.dumps({"jsonrpc": "2.0", "method": method, "params": params or {}, "id": 1}).encode()
        status, _, data = self.rig.request("POST", "/rpc", body, {
            "Content-Type": "application/json", "X-CSRF-Token": self.csrf if csrf is None else csrf}, self.opener)
        answer = json.loads(data)
        answer["_status"] = status
        return answer
