"""The web face beside the admin socket, same server, same methods, same run:

  1. start the real server (demo tenant) with an [http] listener; an operator account;
  2. for each method (user.get, user.list of the tenant, number.get, number.simulate), N calls
     in sequence over one admin-socket connection (the anchor), then over one keep-alive HTTP
     connection to POST /rpc as the page does (session cookie + X-CSRF-Token), then with HTTP
     Basic (credentials checked once, then cached); both HTTP runs use a raw-socket client as
     lean as the socket's, and one more run shows the same with Python's http.client;
     calls/s, p50/p99 and the HTTP/socket ratio per call (target: HTTP < 2x the socket);
  3. the admin page in headless Chromium with an empty cache: bytes transferred for the first
     load (document + scripts + styles), time to interactive (navigation start to the login
     form wired and the session checked), and login-to-dashboard time (target < 300 KB, < 1 s).

Figures only; nothing passes or fails on time.

    .venv/bin/python -m pytest -q -s bench/bench_web.py
    .venv/bin/python bench/bench_web.py

Env: WEB_CALLS (3000 per method and face), WEB_SECS (15 per method and face).
"""
from __future__ import annotations

import base64
import http.client
import json
import os
import re
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "tests" / "web")]

from harness import HpbxServer, free_port  # noqa: E402

from hpbx.admin.client import AdminClient  # noqa: E402
from hpbx.admin.protocol import encode  # noqa: E402

CALLS = int(os.environ.get("WEB_CALLS", "3000"))
SECS = float(os.environ.get("WEB_SECS", "15"))
METHODS = [
    ("user.get", {"username": "alice"}),
    ("user.list", {"tenant": "demo"}),
    ("number.get", {"number": "0441234500"}),
    ("number.simulate", {"number": "0441234500"}),
]


def stats(lat: list[float], wall: float) -> dict:
    lat.sort()
    return {"calls": len(lat), "rate": len(lat) / wall, "p50_ms": 1000 * statistics.median(lat),
            "p99_ms": 1000 * lat[min(len(lat) - 1, int(len(lat) * 0.99))]}


def over_socket(path: str, method: str, params: dict) -> dict:
    with AdminClient(path) as c:
        lat, deadline, t0 = [], time.monotonic() + SECS, time.perf_counter()
        for n in range(CALLS):
            t = time.perf_counter()
            c.send_line(encode({"jsonrpc": "2.0", "method": method, "params": params, "id": n}))
            line = c.read_line()
            lat.append(time.perf_counter() - t)
            if b'"error"' in line[:40]:
                raise RuntimeError(line[:300])
            if time.monotonic() > deadline:
                break
        return stats(lat, time.perf_counter() - t0)


class RawHttp:
    """HTTP/1.1 keep-alive over a plain socket, as lean as the socket client (AdminClient), so
    the ratio compares the servers' faces, not two client libraries."""

    def __init__(self, port: int, headers: dict):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.buf = b""

    def post(self, body: bytes) -> tuple[int, bytes]:
        self.sock.sendall(f"POST /rpc HTTP/1.1\r\nHost: 127.0.0.1\r\n{self.head}"
                          f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        while b"\r\n\r\n" not in self.buf:
            self.buf += self.sock.recv(65536)
        head, _, rest = self.buf.partition(b"\r\n\r\n")
        length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
        while len(rest) < length:
            rest += self.sock.recv(65536)
        self.buf = rest[length:]
        return int(head[9:12]), rest[:length]

    def close(self) -> None:
        self.sock.close()


def over_http(port: int, headers: dict, method: str, params: dict, client: str = "raw") -> dict:
    if client == "raw":
        conn = RawHttp(port, headers)
    else:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    lat, deadline, t0 = [], time.monotonic() + SECS, time.perf_counter()
    for n in range(CALLS):
        body = json.dumps({"jsonrpc": "2.0", "method": method, "params": params, "id": n}).encode()
        t = time.perf_counter()
        if client == "raw":
            status, data = conn.post(body)
        else:
            conn.request("POST", "/rpc", body, headers)
            r = conn.getresponse()
            status, data = r.status, r.read()
        lat.append(time.perf_counter() - t)
        if status != 200 or b'"error"' in data[:40]:
            raise RuntimeError(f"{status} {data[:300]!r}")
        if time.monotonic() > deadline:
            break
    conn.close()
    return stats(lat, time.perf_counter() - t0)


def login(port: int, user: str, password: str) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", "/api/login", json.dumps({"username": user, "password": password}),
                 {"Content-Type": "application/json"})
    r = conn.getresponse()
    answer = json.loads(r.read())
    cookie = r.getheader("Set-Cookie").split(";", 1)[0]
    conn.close()
    return {"Content-Type": "application/json", "Cookie": cookie, "X-CSRF-Token": answer["csrf"]}


def page_load(base: str) -> dict | None:
    if not os.path.exists("/usr/bin/chromedriver"):
        print("page load: chromium-driver not installed, skipped")
        return None
    os.environ.setdefault("SE_OFFLINE", "true")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/lib/chromium/chromium" if os.path.exists("/usr/lib/chromium/chromium") else shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,900", "--disable-dev-shm-usage"):
        opts.add_argument(arg)
    d = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    try:
        d.get(base + "/")
        WebDriverWait(d, 30, 0.01).until(lambda d: d.execute_script(
            "return document.getElementById('ready').textContent") == "ready")
        perf = d.execute_script("""
            const nav = performance.getEntriesByType('navigation')[0];
            const res = performance.getEntriesByType('resource');
            return {nav_bytes: nav.transferSize, nav_body: nav.decodedBodySize,
                    res_bytes: res.reduce((a, r) => a + r.transferSize, 0),
                    res_body: res.reduce((a, r) => a + r.decodedBodySize, 0),
                    resources: res.map(r => r.name.replace(location.origin, '')),
                    dcl: nav.domContentLoadedEventEnd, load: nav.loadEventEnd,
                    ready: performance.now()};""")
        t = time.perf_counter()
        d.find_element("id", "login-user").send_keys("op")
        d.find_element("id", "login-pass").send_keys("operator-secret")
        d.find_element("id", "login-btn").click()
        WebDriverWait(d, 30, 0.01).until(lambda d: d.find_elements("css selector", ".card[data-tenant] svg"))
        perf["login_to_dashboard_ms"] = 1000 * (time.perf_counter() - t)
        return perf
    finally:
        d.quit()


def run() -> dict:
    out = {}
    with tempfile.TemporaryDirectory(prefix="hpbx-bench-web-") as tmp:
        port = free_port()
        srv = HpbxServer(Path(tmp), log_level="warning", provision_files=(ROOT / "config" / "demo.toml",),
                         extra_toml=f'[http]\nlisten = ["http:127.0.0.1:{port}"]\n')
        with srv:
            sock = str(srv.dir / "hpbx.sock")
            with AdminClient(sock) as c:
                c.call("admin.create", username="op", password="operator-secret", role="operator")
            cookie = login(port, "op", "operator-secret")
            basic = {"Content-Type": "application/json",
                     "Authorization": "Basic " + base64.b64encode(b"op:operator-secret").decode()}
            print(f"\n{'method':<18}{'face':<16}{'calls':>7}{'calls/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'x socket':>10}")
            for method, params in METHODS:
                s = over_socket(sock, method, params)
                h = over_http(port, cookie, method, params)
                b = over_http(port, basic, method, params)
                lib = over_http(port, cookie, method, params, client="http.client")
                out[method] = {"socket": s, "http": h, "basic": b, "http.client": lib}
                for face, r in (("socket", s), ("http session", h), ("http basic", b), ("(http.client)", lib)):
                    ratio = r["p50_ms"] / s["p50_ms"]
                    print(f"{method:<18}{face:<16}{r['calls']:>7}{r['rate']:>10.0f}{r['p50_ms']:>9.3f}"
                          f"{r['p99_ms']:>9.3f}{ratio:>10.2f}")
            page = page_load(f"http://127.0.0.1:{port}")
            if page:
                total = page["nav_bytes"] + page["res_bytes"]
                print(f"admin page, empty cache: {total} bytes transferred ({page['nav_body'] + page['res_body']} "
                      f"decoded; {', '.join(page['resources'])}); DOMContentLoaded {page['dcl']:.0f} ms, "
                      f"load {page['load']:.0f} ms, interactive (session checked, form wired) {page['ready']:.0f} ms; "
                      f"login to dashboard drawn {page['login_to_dashboard_ms']:.0f} ms "
                      f"(targets: < 300 KB, < 1000 ms)")
                out["page"] = page
    return out


def test_web_rates():
    out = run()
    assert out["user.get"]["http"]["calls"] > 0


if __name__ == "__main__":
    run()
