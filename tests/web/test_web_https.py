"""The web face over TLS (an https: listener beside the http: one, a certificate made here):
phones fetch their files with curl over HTTPS with Basic and with digest credentials, wrong
ones get 401; the login cookie is Secure over TLS and /rpc works with it; the page loads."""
from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from webrig import WebRig

MAC = "805ec0aabb77"


@pytest.fixture(scope="module")
def tls_rig(tmp_path_factory):
    if shutil.which("openssl") is None or shutil.which("curl") is None:
        pytest.skip("openssl and curl are needed")
    d = tmp_path_factory.mktemp("webtls")
    key, crt = d / "key.pem", d / "cert.pem"
    proc = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                           "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                           "-keyout", str(key), "-out", str(crt)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"openssl cannot make a test certificate: {proc.stderr[-300:]}")
    rig = WebRig(d / "srv", https=(crt, key)).start()
    rig.cert = crt
    with rig.admin() as a:
        a.call("phone.create", mac=MAC, tenant="demo", vendor="yealink", accounts=["alice"], http_password="tls-dev-pw")
    yield rig
    rig.stop()


def curl(rig, *args: str) -> tuple[int, str, str]:
    body_file = rig.server.dir / "curl-body"
    out = subprocess.run(["curl", "-s", "--cacert", str(rig.cert), "-D", "-", "-o", str(body_file),
                          "-w", "\n%{http_code}", *args], capture_output=True, text=True, timeout=30)
    heads, _, code = out.stdout.rpartition("\n")
    head = heads.replace("\r\n", "\n").strip().split("\n\n")[-1]  # the last response's (digest: a 401 first)
    body = body_file.read_text() if body_file.exists() else ""
    body_file.unlink(missing_ok=True)
    return int(code or 0), head, body


def test_phone_fetch_over_https(tls_rig):
    url = f"https://127.0.0.1:{tls_rig.https_port}/prov/{MAC}.cfg"
    code, _, body = curl(tls_rig, "-u", f"{MAC}:tls-dev-pw", url)
    assert code == 200 and "account.1.user_name = alice" in body and "account.1.password = alice-secret" in body
    code, _, body = curl(tls_rig, "--digest", "-u", f"{MAC}:tls-dev-pw", url)
    assert code == 200 and "account.1.user_name = alice" in body
    code, head, _ = curl(tls_rig, "-u", f"{MAC}:wrong", url)
    assert code == 401 and "Basic realm" in head and "Digest realm" in head
    # without the CA the phone's TLS check fails: the server really speaks TLS with that cert
    bad = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-u", f"{MAC}:tls-dev-pw", url],
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode != 0


def test_login_cookie_is_secure_over_tls(tls_rig):
    base = f"https://127.0.0.1:{tls_rig.https_port}"
    code, head, body = curl(tls_rig, "-H", "Content-Type: application/json",
                            "-d", json.dumps({"username": "demoadm", "password": "demoadm-secret"}), f"{base}/api/login")
    assert code == 200
    cookie = next(ln for ln in head.splitlines() if ln.lower().startswith("set-cookie:"))
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    token = cookie.split(":", 1)[1].strip().split(";")[0]
    csrf = json.loads(body)["csrf"]
    code, _, body = curl(tls_rig, "-H", "Content-Type: application/json", "-H", f"X-CSRF-Token: {csrf}",
                         "-H", f"Cookie: {token}", "-d", '{"jsonrpc":"2.0","method":"user.get","params":{"username":"alice"},"id":1}',
                         f"{base}/rpc")
    assert code == 200 and json.loads(body)["result"]["username"] == "alice"
    # the same login over plain http: no Secure flag (the browser would drop it otherwise)
    plain = tls_rig.session("demoadm")
    assert "Secure" not in plain.headers["Set-Cookie"]
    code, _, body = curl(tls_rig, f"{base}/")
    assert code == 200 and "/static/app.js" in body
