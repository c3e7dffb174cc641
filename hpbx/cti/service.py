"""CTI: the WebSocket face the desktop and mobile clients (and CRMs) talk to (FEATURES 15, 14.3).

One WebSocket per client at ``GET /cti`` on the web face's listener ([http] listen; TLS when the
listener is ``https:``). Text frames, one JSON-RPC 2.0 object each, both ways: the client sends
requests (``{"jsonrpc": "2.0", "id": 1, "method": "login", "params": {...}}``), the server
answers each with ``result`` or ``error`` (the admin socket's codes; ``data.field`` names a bad
parameter) and pushes events as notifications (``{"jsonrpc": "2.0", "method": "event",
"params": {"type": "ringing", ...}}``). The methods are the table in ``hpbx.cti.methods``.

Call events come from the B2BUA's observer hook (``CallService.observers``): they are written to
the socket in the loop iteration the SIP message was handled in. Per (call, user) the service
remembers what it told, so each user hears ``ringing`` once, then ``answered`` or ``missed``
(an incoming call it never answered), and ``ended`` with the duration.

Bad clients: a frame over ``MAX_MESSAGE`` bytes closes the socket (1009); malformed JSON, an
unknown method, bad parameters get an error and the socket stays; a client that does not log
in within ``LOGIN_SECS`` is closed; a client that does not read (its send buffer over
``MAX_BUFFER`` or ``MAX_QUEUE`` frames queued) is disconnected. Failed logins go to
``auth_failure_hooks`` ((host, port, kind, username)), which the server connects to the ban
engine like the web face's failed logins; banned sources are refused before the password is
looked at.
"""
from __future__ import annotations

import asyncio
import collections
import hmac
import logging
import time
from typing import Any, Callable

import orjson
from aiohttp import WSMsgType, web

from hpbx.admin.protocol import (INTERNAL_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, PARSE_ERROR,
                                 PERMISSION_DENIED, RpcError)
from hpbx.errors import HpbxError
from hpbx.pbx.presence import groups_of

log = logging.getLogger("hpbx.cti")

PATH = "/cti"
MAX_MESSAGE = 16 * 1024  # bytes of one client frame
MAX_BUFFER = 256 * 1024  # bytes waiting in the kernel/transport towards one client
MAX_QUEUE = 256  # frames waiting in hpbx towards one client
LOGIN_SECS = 10.0
HEARTBEAT_SECS = 30.0
NOT_LOGGED_IN = -32005


class Session:
    __slots__ = ("svc", "ws", "transport", "user", "username", "tenant", "peer", "since", "out",
                 "sender", "closed", "__weakref__")

    def __init__(self, svc: "CtiService", ws: web.WebSocketResponse, transport, peer):
        self.svc = svc
        self.ws = ws
        self.transport = transport
        self.user = None
        self.username = ""
        self.tenant = ""
        self.peer = peer
        self.since = 0.0
        self.out: collections.deque | None = None
        self.sender: asyncio.Task | None = None
        self.closed = False

    def push(self, obj: Any) -> None:
        """Queue one frame (an object, or its JSON text when it goes to many sessions); written
        at once while the client reads, else it is dropped."""
        if self.closed:
            return
        data = obj if isinstance(obj, str) else orjson.dumps(obj).decode()
        tr = self.transport
        if tr is None or tr.is_closing():
            self.closed = True
            return
        if tr.get_write_buffer_size() > MAX_BUFFER or (self.out is not None and len(self.out) >= MAX_QUEUE):
            self.svc.stats["slow_clients_dropped"] += 1
            log.warning("CTI client %s (%s) does not read: disconnected", self.peer, self.username)
            self.kill()
            return
        if self.out is None:
            self.out = collections.deque()
        self.out.append(data)
        if self.sender is None:
            self.sender = self.svc.loop.create_task(self._drain())

    async def _drain(self) -> None:
        try:
            while self.out and not self.closed:
                await self.ws.send_str(self.out.popleft())
                self.svc.stats["frames_sent"] += 1
        except (ConnectionError, RuntimeError, asyncio.CancelledError):
            self.closed = True
        finally:
            self.sender = None
            if not self.out:
                self.out = None  # idle sessions keep no deque

    def kill(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    async def close(self, code: int, message: str) -> None:
        self.closed = True
        try:
            await self.ws.close(code=code, message=message.encode()[:120])
        except Exception:  # a peer already gone
            pass


class CtiService:
    """The logged-in CTI sessions, their events and the ``/cti`` handler."""

    def __init__(self, loop, calls, provisioning, registrar):
        from hpbx.cti import methods
        self.loop = loop
        self.calls = calls
        self.provisioning = provisioning
        self.registrar = registrar
        self.methods = methods.METHODS
        self.sessions: dict[str, list[Session]] = {}
        # (tenant, presence group) -> usernames logged in: who may see a user's presence, without
        # looking at every session (groups as at login; visible() still checks the current ones)
        self.by_group: dict[tuple[str, str], set[str]] = {}
        self.anonymous: set[Session] = set()
        self.told: dict[tuple[str, str], str] = {}  # (call id, username) -> last event told
        self.clicks: dict = {}  # call id -> hpbx.cti.clicktodial.ClickToDial under way
        self.auth_failure_hooks: list[Callable[[str, int, str, str], Any]] = []
        self.source_allowed: Callable[[str], bool] = lambda host: True
        self.stats: collections.Counter[str] = collections.Counter()
        self.addressbooks = None  # hpbx.pbx.addressbook.AddressBooks: caller names, addressbook.*
        self.recorder = None  # hpbx.pbx.recording.CallRecorder: call.record
        self.holds: dict[str, dict] = {}  # call id -> {side label: on hold} (held / resumed)
        self.winners: dict[str, str] = {}  # call id -> the answered leg's user told (transferred)
        calls.observers.append(self.call_changed)
        calls.hold_observers.append(self.hold_changed)

    # ------------------------------------------------------------------ wiring
    def add_routes(self, app: web.Application) -> None:
        app.router.add_get(PATH, self.handle)

    def online(self, username: str) -> bool:
        return bool(self.sessions.get(username))

    def counts(self) -> dict:
        return {"sessions": sum(len(v) for v in self.sessions.values()), "users_online": len(self.sessions),
                "not_logged_in": len(self.anonymous), **self.stats}

    def close(self) -> None:
        for s in list(self.anonymous) + [s for v in self.sessions.values() for s in v]:
            s.kill()

    # ------------------------------------------------------------------ the socket
    async def handle(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=MAX_MESSAGE, heartbeat=HEARTBEAT_SECS, compress=False)
        await ws.prepare(request)
        peer = request.transport.get_extra_info("peername") if request.transport else None
        session = Session(self, ws, request.transport, peer)
        self.anonymous.add(session)
        self.stats["connections"] += 1
        timer = self.loop.call_later(LOGIN_SECS, self._login_timeout, session)
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    await self._frame(session, msg.data)
                elif msg.type == WSMsgType.BINARY:
                    session.push(_error(None, INVALID_REQUEST, "frames are JSON text, not binary"))
                elif msg.type == WSMsgType.ERROR:
                    if getattr(ws.exception(), "code", None) == 1009 or ws.close_code == 1009:
                        self.stats["oversized_closed"] += 1  # aiohttp closed it with 1009
                    break
                if session.closed:
                    break
        finally:
            timer.cancel()
            self._forget(session)
        return ws

    def _login_timeout(self, session: Session) -> None:
        if session.user is None and not session.closed:
            self.stats["login_timeouts"] += 1
            self.loop.create_task(session.close(4001, "no login"))

    def _forget(self, session: Session) -> None:
        session.closed = True
        self.anonymous.discard(session)
        if session.user is None:
            return
        mine = self.sessions.get(session.username)
        if mine and session in mine:
            mine.remove(session)
            if not mine:
                del self.sessions[session.username]
                for g in groups_of(session.user):
                    members = self.by_group.get((session.tenant, g))
                    if members is not None:
                        members.discard(session.username)
                        if not members:
                            del self.by_group[(session.tenant, g)]
                self.presence_changed(session.user)

    async def _frame(self, session: Session, text: str) -> None:
        self.stats["frames_received"] += 1
        try:
            req = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            self.stats["bad_frames"] += 1
            session.push(_error(None, PARSE_ERROR, f"not JSON: {exc}"))
            return
        if not isinstance(req, dict) or not isinstance(req.get("method"), str):
            self.stats["bad_frames"] += 1
            session.push(_error(req.get("id") if isinstance(req, dict) else None, INVALID_REQUEST,
                                "a request is an object with a string 'method'"))
            return
        rid = req.get("id")
        if rid is not None and not isinstance(rid, (str, int)) or isinstance(rid, bool):
            session.push(_error(None, INVALID_REQUEST, "id must be a string or an integer"))
            return
        method = self.methods.get(req["method"])
        if method is None:
            self.stats["unknown_methods"] += 1
            session.push(_error(rid, METHOD_NOT_FOUND, f"unknown method {req['method'][:64]!r}; see 'help'"))
            return
        if session.user is None and not method.anonymous:
            session.push(_error(rid, NOT_LOGGED_IN, "log in first (method 'login')"))
            return
        try:
            params = method.bind(req.get("params"))
            result = method.handler(self, session, params)
            if asyncio.iscoroutine(result):
                result = await result
        except RpcError as exc:
            session.push({"jsonrpc": "2.0", "id": rid, "error": exc.to_json()})
            return
        except HpbxError as exc:
            from hpbx.errors import NotFoundError, ValidationError
            from hpbx.admin.protocol import NOT_FOUND
            data = {"field": exc.field, "reason": exc.reason} if isinstance(exc, ValidationError) else None
            code = -32602 if data else NOT_FOUND if isinstance(exc, NotFoundError) else -32003
            err = RpcError(code, str(exc), data)
            session.push({"jsonrpc": "2.0", "id": rid, "error": err.to_json()})
            return
        except Exception:
            log.exception("CTI method %s failed", method.name)
            session.push(_error(rid, INTERNAL_ERROR, "internal error (logged)"))
            return
        if rid is not None:
            session.push({"jsonrpc": "2.0", "id": rid, "result": result})

    # ------------------------------------------------------------------ login
    def login(self, session: Session, username: str, password: str, source: str) -> dict:
        host, port = (session.peer[0], session.peer[1]) if session.peer else ("", 0)
        try:
            allowed = self.source_allowed(host)
        except ValueError:
            allowed = True
        if not allowed:
            self.stats["banned_refused"] += 1
            raise RpcError(PERMISSION_DENIED, "this address is banned")
        user = self.provisioning.directory.auth_user(username)
        ok = (user is not None and user.cti_password != ""
              and hmac.compare_digest(user.cti_password.encode(), password.encode()))
        if not ok:
            self.stats["login_failures"] += 1
            log.warning('SECURITY event=cti_login_failed src=%s user="%s"', host, username[:64])
            for hook in self.auth_failure_hooks:
                try:
                    hook(host, port, "cti-login", username)
                except Exception:
                    log.exception("auth failure hook %r failed", hook)
            raise RpcError(PERMISSION_DENIED, "wrong username or CTI password")
        if not user.flags.cti_access:
            self.stats["login_refused"] += 1
            raise RpcError(PERMISSION_DENIED, f"user {username} has no CTI access")
        if session.user is not None:
            raise RpcError(INVALID_REQUEST, "already logged in")
        if not self.sessions.get(user.username):
            from hpbx.pbx import licence
            in_tenant = sum(1 for v in self.sessions.values() if v and v[0].tenant == user.tenant)
            why = licence.cti_login_refusal(self.provisioning.directory.tenant(user.tenant), in_tenant,
                                            len(self.sessions))
            if why:
                self.stats["login_refused"] += 1
                raise RpcError(PERMISSION_DENIED, why)
        mine = self.sessions.setdefault(user.username, [])
        replaced = 0
        if mine and not user.flags.parallel_softphone_sessions:
            for old in list(mine):
                old.push({"jsonrpc": "2.0", "method": "event",
                          "params": {"type": "session_ended", "reason": "logged in elsewhere"}})
                self.loop.create_task(old.close(4002, "logged in elsewhere"))
                mine.remove(old)
                replaced += 1
        first = not mine
        self.anonymous.discard(session)
        session.user, session.username, session.tenant = user, user.username, user.tenant
        session.since = time.time()
        mine.append(session)
        for g in groups_of(user):
            self.by_group.setdefault((user.tenant, g), set()).add(user.username)
        self.stats["logins"] += 1
        if first and not replaced:
            self.presence_changed(user)
        return {"username": user.username, "tenant": user.tenant, "internal_number": user.internal_number,
                "sessions": len(mine), "replaced": replaced}

    # ------------------------------------------------------------------ presence
    def visible(self, viewer, other) -> bool:
        """Same tenant, not hidden, and a shared presence group (none = the default group)."""
        if other.tenant != viewer.tenant or other.flags.hide_user or other.username == viewer.username:
            return False
        return bool(groups_of(viewer) & groups_of(other))

    def presence_of(self, user) -> dict:
        directory = self.provisioning.directory
        fresh = directory.auth_user(user.username) or user
        calls = self.calls
        registered = any(b.online for b in self.registrar.iter_bindings(user.username)) \
            if self.registrar is not None else False
        state = ("busy" if calls.active.get(user.username) else
                 "ringing" if calls.ringing.get(user.username) else "idle")
        return {"username": fresh.username, "internal_number": fresh.internal_number,
                "name": fresh.details.full_name() if hasattr(fresh.details, "full_name") else "",
                "registered": registered, "call_state": state, "dnd": fresh.flags.dnd,
                "cti_online": self.online(fresh.username), "cti_groups": list(fresh.cti_groups)}

    def presence_changed(self, user) -> None:
        if not self.sessions:
            return
        doc = None
        viewers: set[str] = set()
        for g in groups_of(user):
            viewers |= self.by_group.get((user.tenant, g), set())
        for username in viewers:
            sessions = self.sessions.get(username)
            if not sessions or not self.visible(sessions[0].user, user):
                continue
            if doc is None:
                doc = orjson.dumps({"jsonrpc": "2.0", "method": "event",
                                    "params": {"type": "presence", **self.presence_of(user)}}).decode()
            for s in sessions:
                s.push(doc)

    # ------------------------------------------------------------------ call events
    def call_changed(self, call, ended: bool) -> None:
        """The B2BUA's observer: tell each logged-in user of the call what changed for it."""
        from hpbx.pbx.call import ANSWERED, RINGING
        if ended:
            self.clicks.pop(call.id, None)
            self.holds.pop(call.id, None)
            self.winners.pop(call.id, None)
        elif call.state == ANSWERED:
            self._transfer_check(call)
        users: list[tuple[str, str, object]] = []  # (username, direction, leg or None)
        if call.caller_user is not None:
            users.append((call.caller_user.username, "out", None))
        for leg in call.legs.values():
            if leg.user and all(u != leg.user for u, _, _ in users):
                users.append((leg.user, "in", leg))
        presence = []
        for username, direction, leg in users:
            key = (call.id, username)
            before = self.told.get(key)
            if ended:
                self.told.pop(key, None)
                if before is None:
                    continue
                won = call.winner is not None and call.winner.user == username
                if direction == "in" and not won:
                    kind = "missed" if before == "ringing" and not call.answer_iso else "ended"
                else:
                    kind = "ended"
                presence.append(username)
            elif call.state == ANSWERED:
                won = direction == "out" or (call.winner is not None and call.winner.user == username)
                if won:
                    kind = "answered"
                elif before == "ringing":  # another phone took it
                    self.told.pop(key, None)
                    kind = "missed"
                elif before == "answered":  # transferred away (the transferred event told it)
                    self.told.pop(key, None)
                    continue
                else:
                    continue
                if before == kind:
                    continue
                presence.append(username)
            elif call.state == RINGING:
                if before is not None:
                    continue
                if direction == "in" and not any(lg.live and lg.user == username for lg in call.legs.values()):
                    continue
                kind = "ringing"
                presence.append(username)
            else:
                continue
            if kind in ("ringing", "answered"):
                self.told[key] = kind
            sessions = self.sessions.get(username)
            if sessions:
                doc = orjson.dumps({"jsonrpc": "2.0", "method": "event",
                                    "params": self._call_event(kind, call, direction, leg, username)}).decode()
                for s in sessions:
                    s.push(doc)
                self.stats["call_events"] += len(sessions)
        if self.sessions:
            directory = self.provisioning.directory
            for username in presence:
                user = directory.auth_user(username)
                if user is not None:
                    self.presence_changed(user)

    # ------------------------------------------------------------------ held, transferred
    def _push_call(self, usernames, params: dict) -> None:
        doc = orjson.dumps({"jsonrpc": "2.0", "method": "event", "params": params}).decode()
        for username in usernames:
            for s in self.sessions.get(username, ()):
                s.push(doc)
                self.stats["call_events"] += 1

    def _parties(self, call) -> list[str]:
        out = []
        if call.caller_user is not None:
            out.append(call.caller_user.username)
        w = call.winner
        if w is not None and w.user and w.user not in out:
            out.append(w.user)
        return out

    def _label(self, call, side) -> str:
        if side == "a":
            return call.caller_user.username if call.caller_user is not None else (call.caller or "anonymous")
        return side.user or getattr(side.ring, "value", "") or "remote"

    def hold_changed(self, call, side, held: bool) -> None:
        """A re-offer (or its answer) of one side: the call is held while any side's last SDP
        said so (the holder's sendonly, then the held party's recvonly answer), resumed when
        none does. ``held`` / ``resumed`` go to the users in the call, ``by`` the holder."""
        state = self.holds.setdefault(call.id, {"a": False, "b": False, "by": ""})
        label = "a" if side == "a" else "b"
        was = state["a"] or state["b"]
        state[label] = held
        now = state["a"] or state["b"]
        if was == now:
            return
        if now:
            state["by"] = self._label(call, side)
        by = state["by"]
        self._push_call(self._parties(call), {"type": "held" if now else "resumed", "call_id": call.id,
                                              "by": by, "time": time.time()})

    def _transfer_check(self, call) -> None:
        w = call.winner
        # a call answered at hpbx (a media channel: conference, mailbox...) is its own winner:
        # it has no user nor ring target
        user = getattr(w, "user", None)
        ring = getattr(w, "ring", None)
        now = user if user else (ring.value if ring is not None else "")
        before = self.winners.get(call.id)
        self.winners[call.id] = now
        if before is None or before == now:
            return
        # the answered party changed hands: a blind or attended transfer (or a call move)
        params = {"type": "transferred", "call_id": call.id, "from": before, "to": now,
                  "time": time.time()}
        told = [u for u in [before] + self._parties(call) if u]
        self._push_call(dict.fromkeys(told), params)
        if before and (call.id, before) in self.told:
            self.told.pop((call.id, before), None)

    def _caller_name(self, call, username: str) -> str:
        if call.caller_user is not None:
            return call.caller_user.details.full_name()
        name = ""
        if self.addressbooks is not None and call.caller:
            try:
                name = self.addressbooks.caller_name(call.tenant, username or None, call.caller)
            except Exception:
                log.exception("caller-name lookup failed")
        return name or call.a_msg.from_addr.display or ""

    def _call_event(self, kind: str, call, direction: str, leg, username: str = "") -> dict:
        plan = call.plan
        via = leg.ring.via if leg is not None else ""
        # FEATURES 15.2: internal = a user of the PBX calls; direct = the user's own number (its
        # displayed number) was dialled; group = any other way an outside call reaches the user
        ring_class = "internal" if call.caller_user is not None else "group"
        if ring_class == "group" and username:
            me = self.provisioning.directory.auth_user(username)
            if me is not None and me.displayed_number and me.displayed_number == plan.dialled:
                ring_class = "direct"
        ev = {"type": kind, "call_id": call.id, "direction": direction, "caller": call.caller,
              "caller_name": self._caller_name(call, username), "dialled": plan.dialled,
              "slot": plan.slot, "ring_class": ring_class, "via": via, "time": time.time()}
        if kind == "ended" or kind == "missed":
            ev["reason"] = call.end_reason
            ev["duration"] = round(time.time() - _epoch(call.answer_iso), 3) if call.answer_iso else 0
        if kind == "answered":
            ev["answered_by"] = call.answered_by()
        return ev


def _epoch(iso: str) -> float:
    from datetime import datetime
    try:
        return datetime.fromisoformat(iso).timestamp()
    except ValueError:
        return time.time()


def _error(rid, code: int, message: str) -> dict:
    return {"jsonrpc": "2.0", "id": rid, "error": {"code": code, "message": message}}
