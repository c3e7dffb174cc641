"""The admin socket of the real server (`hpbx serve` as a subprocess, tests/harness.py):
hpbxctl against it, a SIPp phone registered and listed, provisioning that takes effect on the
next request without a restart and survives one, config.reload, stats of every layer."""
from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import orjson
import pytest

from adminrig import HPBXCTL
from hpbx.admin.client import AdminClient
from hpbx.admin.protocol import NOT_FOUND, OPERATION_FAILED, RpcError
from harness import HpbxServer, have_sipp, run_sipp

SCEN = Path(__file__).resolve().parents[1] / "sip" / "scenarios"


def ctl(sock: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(HPBXCTL), "--socket", str(sock), *args], capture_output=True, text=True, timeout=20)


@pytest.fixture
def server(tmp_path):
    srv = HpbxServer(tmp_path / "srv", users=[("alice", "alice-pw"), ("bob", "bob-pw")])
    srv.start()
    yield srv
    srv.stop()


def test_admin_socket_of_the_running_server(server, tmp_path):
    sock = server.dir / "hpbx.sock"
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o660
    with AdminClient(str(sock)) as c:
        info = c.call("system.info")
        assert info["licences"] == {"users": 2, "cti_users": 0}
        assert info["uptime"] > 0 and info["pid"] == server.proc.pid
        stats = c.call("stats.get")
        assert {"admin", "sip", "registrar", "calls"} <= set(stats)
        assert c.call("call.list") == []
        with pytest.raises(RpcError) as err:
            c.call("call.hangup", {"call_id": "no-such-call"})
        assert err.value.code == NOT_FOUND and err.value.data == {"kind": "call", "key": "no-such-call"}

    # provision a user through hpbxctl: it can register at once, no restart
    out = ctl(sock, "user.create", "tenant=test", "username=carol", "sip_password=carol-pw", "internal_number=103",
              'flags={"cti_access": true}')
    assert out.returncode == 0, out.stderr
    assert "internal_number" in out.stdout and "103" in out.stdout
    if not have_sipp():
        pytest.skip("sipp is not installed")
    res = run_sipp(SCEN / "register_auth.xml", server.sip_target, tmp_path, inf=[("carol", "carol-pw", "carol-a", 300)])
    assert res.returncode == 0 and res.successful == 1, res.describe()

    out = ctl(sock, "--json", "registration.list", "user=carol")
    assert out.returncode == 0, out.stderr
    rows = orjson.loads(out.stdout)
    assert len(rows) == 1
    row = rows[0]
    assert row["user"] == "carol" and row["tenant"] == "test" and row["transport"] == "udp"
    assert row["source"].startswith("127.0.0.1:") and row["contact"].startswith("sip:carol-a@")
    assert row["behind_nat"] is False and 290 <= row["expires_in"] <= 300
    assert row["user_agent"] == "hpbx-test"  # as register_auth.xml sends it
    table = ctl(sock, "registration.list")
    assert table.returncode == 0 and table.stdout.splitlines()[0].startswith("USER")
    assert any(line.startswith("carol ") for line in table.stdout.splitlines()[1:])

    with AdminClient(str(sock)) as c:
        assert c.call("system.info")["licences"] == {"users": 3, "cti_users": 1}
        assert c.call("stats.get", {"layer": "registrar"})["registrar"]["bindings"] >= 1


def test_config_reload_and_refusal(server):
    sock = server.dir / "hpbx.sock"
    with AdminClient(str(sock)) as c:
        text = server.config.read_text()
        server.config.write_text(text.replace("t1_ms = 100", "t1_ms = 200"))
        result = c.call("config.reload")
        assert result["reloaded"] is True and "sip" in result["changed"]
        server.config.write_text(text.replace("t1_ms = 100", "t1_ms = 5"))
        with pytest.raises(RpcError) as err:
            c.call("config.reload")
        assert err.value.code == OPERATION_FAILED
        assert "sip.t1_ms: must be between 10 and 10000, got 5" in err.value.message
        server.config.write_text(text)
        assert c.call("stats.get", {"layer": "admin"})["admin"]["method.config.reload"] == 1


def test_provisioning_survives_a_restart(tmp_path):
    srv = HpbxServer(tmp_path / "srv", users=[("alice", "alice-pw")])
    with srv:
        out = ctl(srv.dir / "hpbx.sock", "number.create", "tenant=test", "number=0445081111", "name=Main")
        assert out.returncode == 0, out.stderr
    assert not (srv.dir / "hpbx.sock").exists()  # removed on clean stop
    with srv:
        out = ctl(srv.dir / "hpbx.sock", "--json", "number.get", "number=0445081111")
        assert out.returncode == 0, out.stderr
        assert orjson.loads(out.stdout)["name"] == "Main"


def test_hostile_clients_do_not_hurt_the_running_server(server):
    import socket
    import threading

    sock = str(server.dir / "hpbx.sock")
    # half a request, then gone; a full request, then gone before the answer
    for payload in (b'{"jsonrpc":"2.0","method":"user.li', b'{"jsonrpc":"2.0","method":"user.list","id":1}\n' * 20):
        s = socket.socket(socket.AF_UNIX)
        s.connect(sock)
        s.sendall(payload)
        s.close()
    # a line over admin.max_line (default 1 MiB): refused with -32600, then disconnected
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(sock)
    try:
        s.sendall(b'{"jsonrpc":"2.0","method":"user.list","params":{"tenant":"' + b"x" * (1 << 20) + b'"},"id":1}\n')
    except (BrokenPipeError, ConnectionResetError):
        pass
    data = bytearray()
    try:
        while chunk := s.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    s.close()
    assert orjson.loads(bytes(data).splitlines()[0])["error"]["code"] == -32600

    # 50 clients at once, each with its own ids
    errors = []

    def worker(n):
        try:
            with AdminClient(sock, timeout=20) as c:
                for i in range(5):
                    answer = c.request({"jsonrpc": "2.0", "method": "user.get", "params": {"username": "alice"},
                                        "id": f"{n}.{i}"})
                    assert answer["id"] == f"{n}.{i}" and answer["result"]["username"] == "alice"
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors[:3]
    with AdminClient(sock) as c:
        stats = c.call("stats.get", {"layer": "admin"})["admin"]
    assert stats["oversized"] == 1 and stats["method.user.get"] == 250 and stats["clients"] == 1


def test_uid_not_on_the_allow_list_is_refused(tmp_path):
    srv = HpbxServer(tmp_path / "srv", users=[("alice", "alice-pw")])
    srv.config.write_text(srv.config.read_text().replace("[admin]\n", "[admin]\nallow_uids = [4242]\n"))
    with srv:
        out = ctl(srv.dir / "hpbx.sock", "user.get", "username=alice")
        assert out.returncode == 1 and out.stdout == ""
        assert out.stderr.strip() == f"hpbxctl: user.get: permission denied: uid {os.getuid()} is not in admin.allow_uids"


def test_reload_applies_the_uid_allow_list(server):
    import signal
    import time

    sock = server.dir / "hpbx.sock"
    text = server.config.read_text()
    server.config.write_text(text.replace("[admin]\n", "[admin]\nallow_uids = [4242]\n"))
    assert "admin" in ctl(sock, "--json", "config.reload").stdout
    refused = ctl(sock, "stats.get")
    assert refused.returncode == 1 and "permission denied" in refused.stderr
    server.config.write_text(text)
    server.signal(signal.SIGHUP)  # the admin socket is closed to us now: reload the other way
    deadline = time.monotonic() + 5
    while (out := ctl(sock, "stats.get")).returncode != 0:
        assert time.monotonic() < deadline, out.stderr
        time.sleep(0.1)
