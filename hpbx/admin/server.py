"""The admin socket: JSON-RPC 2.0 over a Unix stream socket, one JSON text per line.

Access is by filesystem mode (0660) and by the peer's uid (SO_PEERCRED) against
``admin.allow_uids``. Each connection is a protocol with a bounded input buffer
(``admin.max_line``), a bounded queue of pending lines and a write buffer that is drained
before the next request is served; a client that stops reading is paused and, past
``write_stall_timeout``, disconnected. So one slow or broken client never stalls the loop or
the other clients.
"""
from __future__ import annotations

import asyncio
import collections
import inspect
import logging
import os
import socket
import stat
import struct
from pathlib import Path
from typing import Any

import orjson

from hpbx.admin.context import AdminContext
from hpbx.admin.methods import METHODS, Method
from hpbx.admin.scope import SocketPeer
from hpbx.admin.protocol import (
    INTERNAL_ERROR, INVALID_PARAMS, INVALID_REQUEST, METHOD_NOT_FOUND, NOT_FOUND,
    OPERATION_FAILED, PARSE_ERROR, PERMISSION_DENIED, RpcError, encode,
)
from hpbx.errors import HpbxError, NotFoundError, ValidationError

log = logging.getLogger("hpbx.admin")

_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def peer_credentials(sock: Any) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a Unix socket."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    return _PEERCRED.unpack(raw)


def _error(code: int, message: str, data: dict | None = None, id_: Any = None) -> dict:
    return {"jsonrpc": "2.0", "error": RpcError(code, message, data).to_json(), "id": id_}


class AdminServer:
    def __init__(self, ctx: AdminContext, *, methods: dict[str, Method] = METHODS,
                 write_stall_timeout: float = 30.0, max_pending: int = 64, max_batch: int = 1000,
                 write_high_water: int = 256 * 1024):
        self.ctx = ctx
        self.methods = methods
        self.path = ctx.settings.admin.socket
        self.allow_uids = frozenset(ctx.settings.admin.allow_uids)
        self.max_line = ctx.settings.admin.max_line
        self.write_stall_timeout = write_stall_timeout
        self.max_pending = max_pending
        self.max_batch = max_batch
        self.write_high_water = write_high_water
        self._server: asyncio.AbstractServer | None = None
        self._clients: set[_Client] = set()
        self._inode: int | None = None
        self.counters: collections.Counter[str] = collections.Counter()
        ctx.stats_sources.setdefault("admin", self.stats)

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        path = Path(self.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._remove_stale_socket(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # bound under a umask that leaves 0660, so the socket is never reachable by others,
        # not even between bind and chmod
        old_umask = os.umask(0o117)
        try:
            sock.bind(str(path))
        except OSError:
            sock.close()
            raise
        finally:
            os.umask(old_umask)
        os.chmod(path, 0o660)
        self._inode = path.stat().st_ino
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(lambda: _Client(self), sock=sock, backlog=128)
        log.info("admin socket listening on %s (uids %s)", path, sorted(self.allow_uids))

    @staticmethod
    def _remove_stale_socket(path: Path) -> None:
        try:
            st = path.lstat()
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise OSError(f"admin socket path {path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()  # left behind by a server that is gone
        else:
            raise OSError(f"admin socket {path} is in use by another running server")
        finally:
            probe.close()

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for client in list(self._clients):
            client.close()
        await self._server.wait_closed()
        self._server = None
        try:
            if Path(self.path).stat().st_ino == self._inode:
                os.unlink(self.path)
        except FileNotFoundError:
            pass

    def configure(self, settings) -> None:
        """Apply reloaded settings: the uid allow-list and line bound take effect for new
        connections at once; a new socket path only at the next start."""
        admin = settings.admin
        if admin.socket != self.path:
            log.warning("reload: admin.socket changed; the socket moves at the next restart")
        self.allow_uids = frozenset(admin.allow_uids)
        self.max_line = admin.max_line
        self.ctx.settings = settings

    def stats(self) -> dict:
        return {"clients": len(self._clients), **self.counters}

    # -- requests ------------------------------------------------------------------------------

    async def handle_line(self, line: bytes, principal: Any = None) -> bytes | None:
        """Answer one line: the encoded response, or None when nothing is owed (notifications).
        ``principal`` (hpbx.admin.scope): who calls; None = a local process allowed to do all."""
        try:
            msg = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            self.counters["parse_errors"] += 1
            return encode(_error(PARSE_ERROR, f"parse error: {exc}"))
        if isinstance(msg, list):
            if not msg:
                return encode(_error(INVALID_REQUEST, "invalid request: empty batch"))
            if len(msg) > self.max_batch:
                return encode(_error(INVALID_REQUEST, f"invalid request: batch of {len(msg)} exceeds {self.max_batch}"))
            self.counters["batches"] += 1
            answers = [a for a in [await self.handle_request(m, principal) for m in msg] if a is not None]
            return encode(answers) if answers else None
        answer = await self.handle_request(msg, principal)
        return encode(answer) if answer is not None else None

    async def handle_request(self, msg: Any, principal: Any = None) -> dict | None:
        self.counters["requests"] += 1
        if not isinstance(msg, dict):
            return self._count(_error(INVALID_REQUEST, "invalid request: expected an object"))
        id_ = msg.get("id")
        id_ok = id_ is None or (isinstance(id_, (str, int, float)) and not isinstance(id_, bool))
        if not id_ok:
            return self._count(_error(INVALID_REQUEST, "invalid request: id must be a string, number or null"))
        notification = "id" not in msg
        method_name = msg.get("method")
        if msg.get("jsonrpc") != "2.0":
            return self._count(_error(INVALID_REQUEST, 'invalid request: "jsonrpc" must be "2.0"', id_=id_))
        if not isinstance(method_name, str):
            return self._count(_error(INVALID_REQUEST, 'invalid request: "method" must be a string', id_=id_))
        unknown = set(msg) - {"jsonrpc", "method", "params", "id"}
        if unknown:
            return self._count(_error(INVALID_REQUEST, f"invalid request: unknown member {sorted(unknown)[0]!r}", id_=id_))
        try:
            result = await self.call(method_name, msg.get("params"), principal)
        except RpcError as exc:
            answer = {"jsonrpc": "2.0", "error": exc.to_json(), "id": id_}
            return None if notification else self._count(answer)
        return None if notification else {"jsonrpc": "2.0", "result": result, "id": id_}

    async def call(self, method_name: str, params: Any, principal: Any = None) -> Any:
        """Run one method for ``principal`` (it may refuse it or narrow its parameters); every
        failure comes out as an RpcError; a change that was made is in the audit log before the
        answer leaves."""
        method = self.methods.get(method_name)
        if method is None:
            raise RpcError(METHOD_NOT_FOUND, f"method not found: {method_name}", {"method": method_name})
        principal = principal or _LOCAL
        bound = method.bind(principal.fill(method_name, params))
        audit = self.ctx.audit
        try:
            tenant = principal.authorize(self.ctx, method_name, bound)
        except RpcError as exc:
            if audit is not None and exc.code == PERMISSION_DENIED:
                audit.record(principal.name, method_name, "", bound, "denied")
            raise
        try:
            result = method.handler(self.ctx, bound)
            if inspect.isawaitable(result):
                result = await result
        except RpcError:
            raise
        except ValidationError as exc:
            raise RpcError(INVALID_PARAMS, str(exc), {"field": exc.field, "reason": exc.reason}) from None
        except NotFoundError as exc:
            raise RpcError(NOT_FOUND, str(exc), {"kind": exc.kind, "key": exc.key}) from None
        except HpbxError as exc:
            raise RpcError(OPERATION_FAILED, str(exc), {"reason": str(exc)}) from None
        except Exception:
            log.exception("admin method %s failed", method_name)
            raise RpcError(INTERNAL_ERROR, f"internal error in {method_name} (see the server log)") from None
        self.counters[f"method.{method_name}"] += 1
        if audit is not None and audit.is_change(method_name):
            audit.record(principal.name, method_name, tenant, bound)
        return principal.filter(self.ctx, method_name, result)

    def _count(self, answer: dict) -> dict:
        self.counters[f"error.{answer['error']['code']}"] += 1
        return answer


_LOCAL = SocketPeer(os.getuid())


class _Client(asyncio.Protocol):
    """One admin connection: bounded line framing, in-order answers, write back-pressure."""

    def __init__(self, server: AdminServer):
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.scanned = 0
        self.lines: collections.deque[bytes] = collections.deque()
        self.wakeup = asyncio.Event()
        self.writable = asyncio.Event()
        self.writable.set()
        self.reading_paused = False
        self.closing = False
        self.stall_timer: asyncio.TimerHandle | None = None
        self.worker: asyncio.Task | None = None
        self.principal: SocketPeer | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        server = self.server
        server.counters["connections"] += 1
        try:
            pid, uid, _gid = peer_credentials(transport.get_extra_info("socket"))
        except OSError as exc:
            log.warning("admin: cannot read peer credentials: %s", exc)
            pid, uid = -1, -1
        if uid not in server.allow_uids:
            server.counters["refused"] += 1
            log.warning("admin: refused connection from uid %d (pid %d)", uid, pid)
            self.closing = True
            transport.write(encode(_error(PERMISSION_DENIED, f"permission denied: uid {uid} is not in admin.allow_uids",
                                          {"uid": uid})))
            transport.close()
            return
        self.principal = SocketPeer(uid)
        transport.set_write_buffer_limits(high=server.write_high_water)
        server._clients.add(self)
        self.worker = asyncio.get_running_loop().create_task(self._serve())

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        self.buffer += data
        max_line = self.server.max_line
        start = 0
        # self.scanned: bytes at the head of the buffer already known to hold no newline, so a
        # long line arriving in small pieces is not rescanned from its start every time
        while (end := self.buffer.find(b"\n", max(start, self.scanned))) >= 0:
            if end - start > max_line:
                return self._too_long()
            line = bytes(self.buffer[start:end])
            start = end + 1
            if line.strip():
                self.lines.append(line)
        if start:
            del self.buffer[:start]
        self.scanned = len(self.buffer)
        if len(self.buffer) > max_line:
            return self._too_long()
        if self.lines:
            self.wakeup.set()
            if len(self.lines) >= self.server.max_pending:
                self._pause_reading()

    def _too_long(self) -> None:
        self.server.counters["oversized"] += 1
        self.buffer.clear()
        self.lines.clear()
        self.closing = True
        self.transport.write(encode(_error(INVALID_REQUEST,
                                           f"invalid request: line exceeds admin.max_line ({self.server.max_line} bytes)")))
        self.transport.close()

    async def _serve(self) -> None:
        # Not cancelled on disconnect: a request already taken is carried out in full (its
        # answer is then dropped), so a vanishing client cannot leave a change half-applied.
        while not self.closing:
            if not self.lines:
                self.wakeup.clear()
                await self.wakeup.wait()
                continue
            if not self.writable.is_set():
                await self.writable.wait()
                continue
            line = self.lines.popleft()
            if self.reading_paused and len(self.lines) < self.server.max_pending // 2:
                self._resume_reading()
            try:
                answer = await self.server.handle_line(line, self.principal)
            except Exception:  # e.g. a result orjson cannot encode: answer, keep serving
                log.exception("admin: cannot answer a request")
                answer = encode(_error(INTERNAL_ERROR, "internal error: the answer could not be encoded"))
            if answer is not None and not self.closing:
                self.transport.write(answer)

    def _pause_reading(self) -> None:
        if not self.reading_paused and not self.closing:
            self.reading_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self.reading_paused and not self.closing:
            self.reading_paused = False
            self.transport.resume_reading()

    def pause_writing(self) -> None:
        # The client is not reading its answers: stop taking requests from it, and give it
        # write_stall_timeout to catch up before it is dropped.
        self.writable.clear()
        self._pause_reading()
        self.stall_timer = asyncio.get_running_loop().call_later(
            self.server.write_stall_timeout, self._stalled)

    def resume_writing(self) -> None:
        if self.stall_timer is not None:
            self.stall_timer.cancel()
            self.stall_timer = None
        self.writable.set()
        if len(self.lines) < self.server.max_pending // 2:
            self._resume_reading()

    def _stalled(self) -> None:
        self.server.counters["stalled_dropped"] += 1
        log.warning("admin: dropping a client that stopped reading its answers")
        self.closing = True
        self.transport.abort()

    def close(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        if self.stall_timer is not None:
            self.stall_timer.cancel()
        self.server._clients.discard(self)
        self.writable.set()
        self.wakeup.set()
