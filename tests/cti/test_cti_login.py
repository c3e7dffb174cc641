"""CTI over a real WebSocket (aiohttp client) against the real server: login, refusals, bad input."""
from __future__ import annotations

import asyncio
import base64
import json

import aiohttp
import pytest

from harness import HpbxServer, free_port

TENANT = """
[tenant]
name = "acme"

[[users]]
username = "anna"
sip_password = "anna-pw"
internal_number = "201"
cti_password = "anna-cti"
[users.flags]
cti_access = true

[[users]]
username = "nocti"
sip_password = "nocti-pw"
internal_number = "202"
cti_password = "nocti-cti"
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    d = tmp_path_factory.mktemp("cti")
    (d / "acme.toml").write_text(TENANT)
    port = free_port()
    s = HpbxServer(d, provision_files=(d / "acme.toml",),
                   extra_toml=f'[http]\nlisten = ["http:127.0.0.1:{port}"]\n')
    s.start()
    s.cti_url = f"http://127.0.0.1:{port}/cti"
    yield s
    s.stop()


async def _session(url, frames):
    out = []
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(url) as ws:
            for f in frames:
                await ws.send_str(f if isinstance(f, str) else json.dumps(f))
                msg = await asyncio.wait_for(ws.receive(), 5)
                out.append(json.loads(msg.data) if msg.type == aiohttp.WSMsgType.TEXT else msg.type)
    return out


def run(url, frames):
    return asyncio.run(_session(url, frames))


def test_login_and_refusals(server):
    ok, = run(server.cti_url, [{"jsonrpc": "2.0", "id": 1, "method": "login",
                                "params": {"username": "anna", "password": "anna-cti"}}])
    assert ok["result"]["username"] == "anna", ok
    bad, = run(server.cti_url, [{"jsonrpc": "2.0", "id": 1, "method": "login",
                                 "params": {"username": "anna", "password": "wrong"}}])
    assert bad["error"]["code"] == -32004, bad
    no, = run(server.cti_url, [{"jsonrpc": "2.0", "id": 1, "method": "login",
                                "params": {"username": "nocti", "password": "nocti-cti"}}])
    assert "no CTI access" in no["error"]["message"], no


def test_bad_input_keeps_socket(server):
    r = run(server.cti_url, ["{not json", {"jsonrpc": "2.0", "id": 2, "method": "nope"},
                             {"jsonrpc": "2.0", "id": 3, "method": "call.list"},
                             {"jsonrpc": "2.0", "id": 4, "method": "login", "params": {"username": 5}}])
    assert r[0]["error"]["code"] == -32700
    assert r[1]["error"]["code"] == -32601
    assert r[2]["error"]["code"] == -32005
    assert r[3]["error"]["data"]["field"] in ("username", "password"), r[3]


def test_oversized_frame_and_a_client_that_never_reads(server):
    import socket
    import struct
    import os as _os
    # a frame over 16 KB: the socket is closed with 1009, the server carries on
    r = run(server.cti_url, ["x" * 20000])
    assert r == [aiohttp.WSMsgType.CLOSE] or r[0] in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), r

    # a raw client that asks for the (large) help table again and again and never reads
    host, port = server.cti_url.split("//")[1].split("/")[0].split(":")
    s = socket.create_connection((host, int(port)), 5)
    key = base64.b64encode(_os.urandom(16)).decode()
    s.sendall((f"GET /cti HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)

    def frame(text: str) -> bytes:
        data = text.encode()
        mask = _os.urandom(4)
        head = bytes([0x81]) + (bytes([0x80 | len(data)]) if len(data) < 126 else
                                bytes([0x80 | 126]) + struct.pack("!H", len(data)))
        return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data))

    login = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "login",
                        "params": {"username": "anna", "password": "anna-cti"}})
    s.sendall(frame(login))
    s.settimeout(2.0)
    dropped = False
    for i in range(2000):
        try:
            s.sendall(frame(json.dumps({"jsonrpc": "2.0", "id": i + 2, "method": "help"})))
        except (BrokenPipeError, ConnectionResetError, socket.timeout):
            dropped = True
            break
    import time
    from hpbx.admin.client import AdminClient
    deadline = time.monotonic() + 10  # the server drops it once its buffer towards it is full
    while True:
        with AdminClient(str(server.dir / "hpbx.sock")) as c:
            stats = c.call("stats.get", {"layer": "cti"})
        cti = stats.get("cti", stats)
        if cti.get("slow_clients_dropped", 0) >= 1 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    s.close()
    assert cti.get("slow_clients_dropped", 0) >= 1 and cti.get("oversized_closed", 0) >= 1, (dropped, cti)
    ok, = run(server.cti_url, [{"jsonrpc": "2.0", "id": 1, "method": "login",
                                "params": {"username": "anna", "password": "anna-cti"}}])
    assert ok["result"]["username"] == "anna"  # the server is unaffected


def test_dnd_and_call_log(server):
    r = run(server.cti_url, [{"jsonrpc": "2.0", "id": 1, "method": "login",
                              "params": {"username": "anna", "password": "anna-cti"}},
                             {"jsonrpc": "2.0", "id": 2, "method": "dnd.set", "params": {"on": True}},
                             {"jsonrpc": "2.0", "id": 3, "method": "whoami"},
                             {"jsonrpc": "2.0", "id": 4, "method": "dnd.set", "params": {"on": False}},
                             {"jsonrpc": "2.0", "id": 5, "method": "calllog.list", "params": {"limit": 5}},
                             {"jsonrpc": "2.0", "id": 6, "method": "dnd.set", "params": {"on": "yes"}}])
    assert r[1]["result"] == {"dnd": True} and r[2]["result"]["dnd"] is True
    assert r[3]["result"] == {"dnd": False} and r[4]["result"] == []
    assert r[5]["error"]["data"]["field"] == "on"


def test_failed_logins_ban_the_source(tmp_path):
    (tmp_path / "acme.toml").write_text(TENANT)
    port = free_port()
    s = HpbxServer(tmp_path, provision_files=(tmp_path / "acme.toml",),
                   security={"auth_failures": 3, "user_failures": 0, "flood_threshold": 1_000_000},
                   extra_toml=f'[http]\nlisten = ["http:127.0.0.1:{port}"]\n').start()
    url = f"http://127.0.0.1:{port}/cti"

    async def login_from(password):
        conn = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
        async with aiohttp.ClientSession(connector=conn) as http:
            async with http.ws_connect(url) as ws:
                await ws.send_str(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "login",
                                              "params": {"username": "anna", "password": password}}))
                return json.loads((await asyncio.wait_for(ws.receive(), 5)).data)

    try:
        for i in range(3):
            assert asyncio.run(login_from(f"wrong-{i}"))["error"]["code"] == -32004
        from hpbx.admin.client import AdminClient
        with AdminClient(str(tmp_path / "hpbx.sock")) as c:
            bans = c.call("ban.list")
        assert any(b.get("host") == "127.0.0.2" for b in bans), bans
        try:
            refused = asyncio.run(login_from("anna-cti"))
            assert "banned" in refused["error"]["message"], refused
        except aiohttp.ClientError:
            pass  # dropped at accept: refused too
        ok, = run(url, [{"jsonrpc": "2.0", "id": 1, "method": "login",
                         "params": {"username": "anna", "password": "anna-cti"}}])  # from 127.0.0.1
        assert ok["result"]["username"] == "anna"
    finally:
        s.stop()
