"""The one table of CTI methods: name, handler, parameters with types, help.

Parameters are checked with the admin table's ``Param`` (the same error shape: -32602 with
``data.field``). Handlers take ``(service, session, params)``; every method acts for the
logged-in user only: a call id that is not one of the user's calls is "not found", whoever's
call it is, so nothing of another user or tenant leaks.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from hpbx.admin.methods import Method, Param
from hpbx.admin.protocol import INVALID_PARAMS, NOT_FOUND, OPERATION_FAILED, RpcError


@dataclass(frozen=True, slots=True)
class CtiMethod:
    name: str
    handler: Callable[..., Any]
    params: tuple[Param, ...]
    help: str
    anonymous: bool = False  # callable before login

    def bind(self, params: Any) -> dict:
        return Method(self.name, self.handler, self.params, self.help).bind(params)


METHODS: dict[str, CtiMethod] = {}


def _add(name: str, handler: Callable, help: str, *params: Param, anonymous: bool = False) -> None:
    assert name not in METHODS, name
    METHODS[name] = CtiMethod(name, handler, tuple(params), help, anonymous)


def _user_calls(svc, session) -> list:
    me = session.username
    out = []
    for call in list(svc.calls.calls.values()):
        if (call.caller_user is not None and call.caller_user.username == me) or \
                any(leg.user == me for leg in call.legs.values()):
            out.append(call)
    return out


def _my_call(svc, session, call_id: str):
    for call in _user_calls(svc, session):
        if call.id == call_id:
            return call
    raise RpcError(NOT_FOUND, f"call_id: no call of yours is {call_id[:80]!r}",
                   {"kind": "call", "key": call_id[:80], "field": "call_id"})


# ---------------------------------------------------------------------------- handlers

def login(svc, session, p):
    return svc.login(session, p["username"], p["password"], "ws")


def help_(svc, session, p):
    return [{"method": m.name, "help": m.help, "login_needed": not m.anonymous,
             "params": [{"name": x.name, "type": x.type, "required": x.required, "help": x.help}
                        for x in m.params]} for m in METHODS.values()]


def whoami(svc, session, p):
    u = svc.provisioning.directory.auth_user(session.username) or session.user
    return {"username": u.username, "tenant": u.tenant, "internal_number": u.internal_number,
            "displayed_number": u.displayed_number, "dnd": u.flags.dnd,
            "sessions": len(svc.sessions.get(u.username, ()))}


def call_list(svc, session, p):
    me = session.username
    out = []
    for call in _user_calls(svc, session):
        d = call.as_dict()
        out.append({"call_id": d["call_id"], "state": d["state"], "caller": d["caller"],
                    "called": d["called"], "answered_by": d["answered_by"], "start": d["start"],
                    "direction": "out" if call.caller_user is not None and call.caller_user.username == me else "in"})
    return out


def call_dial(svc, session, p):
    from hpbx.cti.clicktodial import ClickToDial
    user = svc.provisioning.directory.auth_user(session.username) or session.user
    dest = p["destination"].strip()
    if not dest or len(dest) > 64 or any(c.isspace() or c in "<>@;\"" for c in dest):
        raise RpcError(INVALID_PARAMS, "destination: must be a number or username (no spaces, <, >, @, ;)",
                       {"field": "destination", "reason": "not a dialable string"})
    bindings = sorted((b for b in svc.registrar.lookup(user.username) if b.online),
                      key=lambda b: b.registered_at, reverse=True)
    if p.get("device"):
        bindings = [b for b in bindings if p["device"] in (b.contact, f"{b.source_host}:{b.source_port}")]
    if not bindings:
        why = "no registered device" + (f" {p['device']!r}" if p.get("device") else "")
        raise RpcError(OPERATION_FAILED, f"device: {why} of {user.username} to call first",
                       {"field": "device", "reason": why})
    return ClickToDial(svc, session, user, dest, bindings[0], p.get("auto_answer", False)).start()


def call_hangup(svc, session, p):
    click = svc.clicks.get(p["call_id"])
    if click is not None and click.user.username == session.username and click.call is None:
        click.cancel()
        return {"call_id": click.call_id, "hung_up": True}
    call = _my_call(svc, session, p["call_id"])
    call.guarded(call.hangup, f"hung up by {session.username} (CTI)")
    return {"call_id": call.id, "hung_up": True}


def dnd_set(svc, session, p):
    user = svc.provisioning.user_update(session.username, {"flags": {"dnd": p["on"]}})
    fresh = svc.provisioning.directory.auth_user(session.username)
    if fresh is not None:
        for s in svc.sessions.get(session.username, ()):
            s.user = fresh
        svc.presence_changed(fresh)
    return {"dnd": user["flags"]["dnd"]}


def colleague_list(svc, session, p):
    viewer = svc.provisioning.directory.auth_user(session.username) or session.user
    groups: dict[str, list] = {}
    for other in svc.provisioning.directory.users_of(viewer.tenant):
        if svc.visible(viewer, other):
            doc = svc.presence_of(other)
            for g in other.cti_groups or ("",):
                groups.setdefault(g, []).append(doc)
    return [{"cti_group": g, "users": sorted(users, key=lambda d: d["username"])}
            for g, users in sorted(groups.items())]


def calllog_list(svc, session, p):
    u = svc.provisioning.directory.auth_user(session.username) or session.user
    mine = {u.username, u.internal_number} - {""}
    out = []
    offset = 0
    want = p.get("limit", 50)
    while len(out) < want:
        page = svc.provisioning.cdr_list(u.tenant, limit=500, offset=offset)
        if not page:
            break
        offset += len(page)
        for c in page:
            if c.get("caller") in mine or c.get("answered_by") == u.username or \
                    any(t in (f"user:{u.username}", u.username) for t in c.get("targets_tried", ())):
                out.append({k: c.get(k) for k in ("call_id", "caller", "called", "start", "answer", "end",
                                                  "answered_by", "end_reason")})
                if len(out) >= want:
                    break
    return out


_add("login", login, "Log in with the username and the CTI password; needs the user's CTI access flag.",
     Param("username", "str", True, "the user's username"),
     Param("password", "str", True, "the user's CTI password"), anonymous=True)
_add("help", help_, "This table: every method with its parameters.", anonymous=True)
_add("whoami", whoami, "The logged-in user: username, tenant, numbers, DND, open sessions.")
_add("call.list", call_list, "The user's calls in progress (call_id, state, caller, called, direction).")
_add("call.dial", call_dial,
     "Click-to-dial: hpbx calls your phone, and when you answer it calls the destination "
     "(presenting your displayed number outside) and connects you; events dialing, "
     "phone_answered, then ringing/answered/ended (or dial_failed) with the same call_id.",
     Param("destination", "str", True, "what you would dial on the phone: internal or external number"),
     Param("device", "str", help="which registered device: its Contact URI or host:port (default: the newest)"),
     Param("auto_answer", "bool", help="ask the phone to answer by itself (Call-Info answer-after=0)"))
_add("call.hangup", call_hangup, "Hang up one of the user's calls (ringing: cancelled; answered: BYE).",
     Param("call_id", "str", True, "call_id of an event or of call.list"))
_add("dnd.set", dnd_set, "Do not disturb on or off (as *78/*79): calls to the user get 486.",
     Param("on", "bool", True, "true: do not disturb"))
_add("colleague.list", colleague_list,
     "Colleagues whose presence the user may see (same presence group, not hidden), by CTI group.")
_add("calllog.list", calllog_list, "The user's own calls, newest first (from the CDRs).",
     Param("limit", "int", help="at most this many (default 50)", min=1, max=500))
