"""The JSON-RPC machinery of the admin socket: framing, every error code, batches,
notifications, bounds, disconnects, concurrency, slow clients and access control."""
from __future__ import annotations

import asyncio
import os
import shutil
import socket
import stat
import tempfile
import threading
import time
from dataclasses import replace

import orjson
import pytest

from hpbx.admin.client import AdminClient
from hpbx.admin.context import AdminContext
from hpbx.admin.protocol import (
    INVALID_PARAMS, INVALID_REQUEST, METHOD_NOT_FOUND, NOT_AVAILABLE, PARSE_ERROR, PERMISSION_DENIED,
    RpcError,
)
from hpbx.admin.server import AdminServer
from adminrig import make_settings


def raw(path: str, timeout: float = 5.0) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(path)
    return s


def read_line(s: socket.socket) -> bytes:
    buf = bytearray()
    while not buf.endswith(b"\n"):
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


def read_until_eof(s: socket.socket) -> bytes:
    buf = bytearray()
    while chunk := s.recv(65536):
        buf += chunk
    return bytes(buf)


def ask(s: socket.socket, data: bytes):
    s.sendall(data)
    return orjson.loads(read_line(s))


def test_socket_mode_is_0660(admin_server):
    mode = stat.S_IMODE(os.stat(admin_server.path).st_mode)
    assert mode == 0o660
    assert stat.S_ISSOCK(os.stat(admin_server.path).st_mode)


def test_call_answers_result_with_same_id(admin_server):
    with raw(admin_server.path) as s:
        answer = ask(s, b'{"jsonrpc":"2.0","method":"stats.get","id":"abc"}\n')
    assert answer["id"] == "abc" and answer["jsonrpc"] == "2.0"
    assert answer["result"]["admin"]["clients"] == 1
    assert "error" not in answer


def test_malformed_json_is_parse_error_and_connection_survives(admin_server):
    with raw(admin_server.path) as s:
        answer = ask(s, b'{"jsonrpc":"2.0","method":\n')
        assert answer["error"]["code"] == PARSE_ERROR and answer["id"] is None
        answer = ask(s, b'\xff\xfe not utf8\n')
        assert answer["error"]["code"] == PARSE_ERROR
        answer = ask(s, b'{"jsonrpc":"2.0","method":"stats.get","id":7}\n')
        assert answer["id"] == 7 and "result" in answer


@pytest.mark.parametrize("line, id_", [
    (b'42', None),
    (b'"stats.get"', None),
    (b'{"method":"stats.get","id":1}', 1),
    (b'{"jsonrpc":"1.0","method":"stats.get","id":1}', 1),
    (b'{"jsonrpc":"2.0","method":5,"id":2}', 2),
    (b'{"jsonrpc":"2.0","method":"stats.get","id":{"a":1}}', None),
    (b'{"jsonrpc":"2.0","method":"stats.get","id":true}', None),
    (b'{"jsonrpc":"2.0","method":"stats.get","id":3,"extra":1}', 3),
    (b'[]', None),
])
def test_invalid_requests(admin_server, line, id_):
    with raw(admin_server.path) as s:
        answer = ask(s, line + b"\n")
    assert answer["error"]["code"] == INVALID_REQUEST, answer
    assert answer["id"] == id_


def test_unknown_method(admin_server):
    with raw(admin_server.path) as s:
        answer = ask(s, b'{"jsonrpc":"2.0","method":"tenant.explode","id":1}\n')
    assert answer["error"]["code"] == METHOD_NOT_FOUND
    assert answer["error"]["data"] == {"method": "tenant.explode"}
    assert "tenant.explode" in answer["error"]["message"]


@pytest.mark.parametrize("params, field, reason", [
    ({"layer": 5}, "layer", "must be a string, got number 5"),
    ({"layr": "admin"}, "layr", "unknown parameter of stats.get"),
    ({"layer": "nonsense"}, "layer", "unknown layer 'nonsense', known: admin"),
    (["admin", "x"], "params", "stats.get takes at most 1 positional parameters"),
    ("admin", "params", "must be an object or an array"),
])
def test_invalid_params_name_the_field(admin_server, params, field, reason):
    with admin_server.client() as c:
        with pytest.raises(RpcError) as err:
            c.call("stats.get", params)
    assert err.value.code == INVALID_PARAMS
    assert err.value.data == {"field": field, "reason": reason}
    assert err.value.message == f"{field}: {reason}"


def test_missing_required_and_bounds(admin_server):
    with admin_server.client() as c:
        with pytest.raises(RpcError) as err:
            c.call("call.hangup", {})
        assert (err.value.code, err.value.data["field"], err.value.data["reason"]) == (INVALID_PARAMS, "call_id", "required")
        with pytest.raises(RpcError) as err:
            c.call("registration.list", {"limit": -1})
        assert err.value.data == {"field": "limit", "reason": "must be at least 0, got -1"}
        with pytest.raises(RpcError) as err:
            c.call("registration.list", {"limit": True})
        assert err.value.data == {"field": "limit", "reason": "must be an integer, got boolean"}


def test_positional_params_follow_table_order(admin_server):
    with admin_server.client() as c:
        assert list(c.call("stats.get", ["admin"])) == ["admin"]


def test_missing_service_answers_not_available(admin_server):
    with admin_server.client() as c:
        for method, params in [("registration.list", {}), ("call.list", {}), ("call.hangup", {"call_id": "x"}),
                               ("config.reload", {})]:
            with pytest.raises(RpcError) as err:
                c.call(method, params)
            assert err.value.code == NOT_AVAILABLE, method
            assert err.value.data["feature"] in ("registrations", "calls", "config reload")
            assert "not available" in err.value.message


def test_batch_with_notifications_and_errors(admin_server):
    batch = [
        {"jsonrpc": "2.0", "method": "stats.get", "params": {"layer": "admin"}, "id": 1},
        {"jsonrpc": "2.0", "method": "stats.get"},  # notification: no answer
        {"jsonrpc": "2.0", "method": "nope", "id": 2},
        17,
        {"jsonrpc": "2.0", "method": "stats.get", "params": {"layer": 1}, "id": 3},
    ]
    with raw(admin_server.path) as s:
        answers = ask(s, orjson.dumps(batch) + b"\n")
    assert isinstance(answers, list) and len(answers) == 4
    by_id = {a["id"]: a for a in answers if a["id"] is not None}
    assert "admin" in by_id[1]["result"]
    assert by_id[2]["error"]["code"] == METHOD_NOT_FOUND
    assert by_id[3]["error"]["data"]["field"] == "layer"
    assert [a["error"]["code"] for a in answers if a["id"] is None] == [INVALID_REQUEST]


def test_notifications_get_no_answer(admin_server):
    with raw(admin_server.path) as s:
        s.sendall(b'{"jsonrpc":"2.0","method":"stats.get"}\n'
                  b'[{"jsonrpc":"2.0","method":"stats.get"},{"jsonrpc":"2.0","method":"nope"}]\n'
                  b'{"jsonrpc":"2.0","method":"stats.get","params":{"layer":"admin"},"id":99}\n')
        answer = orjson.loads(read_line(s))
    # the first line that comes back is the answer to the only request with an id
    assert answer["id"] == 99
    # both notified stats.get calls ran (a call is counted once it has finished)
    assert answer["result"]["admin"]["method.stats.get"] == 2


def test_oversized_line_is_refused_and_disconnected(start_admin):
    st = start_admin(admin_kw={"max_line": 1024})
    with raw(st.path) as s:
        s.sendall(b'{"jsonrpc":"2.0","method":"stats.get","params":{"layer":"' + b"x" * 2000 + b'"},"id":1}\n')
        data = read_until_eof(s)
    answer = orjson.loads(data.splitlines()[0])
    assert answer["error"]["code"] == INVALID_REQUEST
    assert "exceeds admin.max_line (1024 bytes)" in answer["error"]["message"]
    # a line that never ends is cut off at the bound too, without waiting for its newline
    with raw(st.path) as s:
        s.sendall(b"[" * 1500)
        data = read_until_eof(s)
    assert orjson.loads(data.splitlines()[0])["error"]["code"] == INVALID_REQUEST
    with st.client() as c:
        assert c.call("stats.get", {"layer": "admin"})["admin"]["oversized"] == 2


def test_client_disconnecting_mid_request_does_not_hurt(admin_server):
    for payload in [b'{"jsonrpc":"2.0","meth', b'{"jsonrpc":"2.0","method":"system.info","id":1}\n',
                    b'{"jsonrpc":"2.0","method":"stats.get","id":1}\n' * 50]:
        s = raw(admin_server.path)
        s.sendall(payload)
        s.close()
    # a client that resets the connection while answers are being written
    s = raw(admin_server.path)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    s.sendall(b'{"jsonrpc":"2.0","method":"system.info","id":1}\n' * 20)
    s.close()
    deadline = time.monotonic() + 5
    with admin_server.client() as c:
        while c.call("stats.get", {"layer": "admin"})["admin"]["clients"] != 1:
            assert time.monotonic() < deadline, "disconnected clients were not released"
            time.sleep(0.02)
        assert c.call("system.info")["version"]


def test_fifty_concurrent_clients(admin_server):
    errors: list[BaseException] = []
    calls_each = 20
    barrier = threading.Barrier(50)

    def worker(n: int) -> None:
        try:
            with admin_server.client() as c:
                barrier.wait(10)
                for i in range(calls_each):
                    answer = c.request({"jsonrpc": "2.0", "method": "stats.get", "params": {"layer": "admin"},
                                        "id": f"{n}-{i}"})
                    assert answer["id"] == f"{n}-{i}"
                    assert answer["result"]["admin"]["clients"] >= 1
        except BaseException as exc:  # collected and re-raised in the test thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors[:3]
    with admin_server.client() as c:
        stats = c.call("stats.get", {"layer": "admin"})["admin"]
    assert stats["method.stats.get"] == 50 * calls_each  # this call is counted once finished
    assert stats["connections"] == 51


def test_slow_reader_is_dropped_and_others_are_served(start_admin):
    st = start_admin(write_stall_timeout=2.0, write_high_water=16 * 1024)
    slow = raw(st.path)
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    request = b'{"jsonrpc":"2.0","method":"system.info","id":1}\n'
    slow.setblocking(False)
    sent = 0
    try:
        for _ in range(5000):  # bounded: the server stops reading long before this
            sent += slow.send(request * 10)
    except BlockingIOError:
        pass
    # meanwhile another client is answered at once
    with st.client(timeout=2) as c:
        t0 = time.monotonic()
        first = c.call("stats.get")["admin"]
        assert time.monotonic() - t0 < 1.5
        # answered while the slow client is still connected, paused, not yet dropped
        assert first["clients"] == 2 and first.get("stalled_dropped", 0) == 0
        deadline = time.monotonic() + 10
        while c.call("stats.get", {"layer": "admin"})["admin"].get("stalled_dropped", 0) < 1:
            assert time.monotonic() < deadline, "the stalled client was never dropped"
            time.sleep(0.05)
    assert sent > 0
    # the dropped client sees its connection end after whatever was already buffered
    slow.setblocking(True)
    slow.settimeout(5)
    try:
        while slow.recv(1 << 16):
            pass
    except ConnectionResetError:
        pass
    slow.close()


def test_uid_not_allowed_is_refused(start_admin):
    st = start_admin(admin_kw={"allow_uids": (4242,)})
    with raw(st.path) as s:
        data = read_until_eof(s)
    answer = orjson.loads(data)
    assert answer["error"]["code"] == PERMISSION_DENIED
    assert answer["error"]["message"] == f"permission denied: uid {os.getuid()} is not in admin.allow_uids"


def test_other_uid_refused_in_forked_child(start_admin, tmp_path, request):
    """A process running as another uid gets nothing, whether the socket mode or the
    SO_PEERCRED check stops it."""
    # pytest's tmp_path is private to root: use a directory the other uid can traverse, and
    # open the socket file to it, so that the uid check itself is what refuses it
    shared = tempfile.mkdtemp(prefix="hpbx-admin-")
    request.addfinalizer(lambda: shutil.rmtree(shared, ignore_errors=True))
    os.chmod(shared, 0o755)
    settings = make_settings(tmp_path, allow_uids=(0,))
    settings = replace(settings, admin=replace(settings.admin, socket=os.path.join(shared, "hpbx.sock")))
    st = start_admin(AdminContext(settings=settings))
    os.chmod(st.path, 0o666)
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: become nobody and try
        os.close(rfd)
        try:
            os.setgid(65534)
            os.setuid(65534)
            with AdminClient(st.path, timeout=5) as c:
                c.call("stats.get")
            verdict = b"answered"
        except RpcError as exc:
            verdict = f"rpc {exc.code}".encode()
        except BaseException as exc:
            verdict = f"other {exc!r}".encode()
        os.write(wfd, verdict)
        os._exit(0)
    os.close(wfd)
    with os.fdopen(rfd, "rb") as fh:
        verdict = fh.read().decode()
    os.waitpid(pid, 0)
    assert verdict == f"rpc {PERMISSION_DENIED}"
    with st.client() as c:
        assert c.call("stats.get", {"layer": "admin"})["admin"]["refused"] == 1


def test_stale_socket_is_replaced_live_one_is_not(start_admin, tmp_path):
    st = start_admin()
    second = AdminServer(AdminContext(settings=st.ctx.settings))
    with pytest.raises(OSError, match="in use by another running server"):
        asyncio.run(second.start())
    # a socket file left behind by a dead server is cleaned up
    stale = tmp_path / "stale.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(stale))
    s.close()
    ctx = AdminContext(settings=replace(st.ctx.settings, admin=replace(st.ctx.settings.admin, socket=str(stale))))

    async def start_stop():
        srv = AdminServer(ctx)
        await srv.start()
        await srv.stop()

    asyncio.run(start_stop())
    assert not stale.exists()


def test_lines_split_and_joined_across_reads(admin_server):
    req = b'{"jsonrpc":"2.0","method":"stats.get","params":{"layer":"admin"},"id":%d}\n'
    with raw(admin_server.path) as s:
        whole = req % 1
        for i in range(0, len(whole), 7):  # one request in many small pieces
            s.sendall(whole[i:i + 7])
            time.sleep(0.002)
        assert orjson.loads(read_line(s))["id"] == 1
        s.sendall(req % 2 + req % 3 + b"\n\n" + (req % 4)[:10])  # two and a half, blank lines skipped
        s.sendall((req % 4)[10:])
        buf = b""
        while buf.count(b"\n") < 3:
            buf += s.recv(65536)
    assert [orjson.loads(line)["id"] for line in buf.splitlines()] == [2, 3, 4]
