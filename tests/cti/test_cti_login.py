"""CTI over a real WebSocket (aiohttp client) against the real server: login, refusals, bad input."""
from __future__ import annotations

import asyncio
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
