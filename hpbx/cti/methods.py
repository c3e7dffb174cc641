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


# ---------------------------------------------------------------------------- call control
# answer / hold / resume ask the user's phone to do it (a NOTIFY in the call's dialog with
# ``Event: talk`` or ``Event: hold``, the remote-control events Yealink, Polycom, Snom and
# others accept): the phone then answers or sends its own hold re-INVITE, so what the phone
# shows and what the call does never disagree. A phone that does not support it answers the
# NOTIFY with an error (489 Bad Event, 481, 405...), which the command reports.

def _my_leg(call, me: str, *, ringing: bool):
    """The user's side of the call: ("a", dialog) when the user is the caller, else (leg, dialog)."""
    from hpbx.pbx.call import ANSWERED, RINGING
    if ringing:
        if call.state != RINGING:
            raise RpcError(OPERATION_FAILED, "call_id: the call is not ringing", {"field": "call_id", "reason": "not ringing"})
        for leg in call.legs.values():
            if leg.user == me and leg.live and leg.dialog is not None and leg.dialog.remote_tag:
                return leg, leg.dialog
        raise RpcError(OPERATION_FAILED, "call_id: none of your phones rings with this call yet",
                       {"field": "call_id", "reason": "no ringing phone"})
    if call.state != ANSWERED:
        raise RpcError(OPERATION_FAILED, "call_id: the call is not answered", {"field": "call_id", "reason": "not answered"})
    if call.caller_user is not None and call.caller_user.username == me and call.a_dialog is not None:
        return "a", call.a_dialog
    if call.winner is not None and call.winner.user == me and call.winner.dialog is not None:
        return call.winner, call.winner.dialog
    raise RpcError(OPERATION_FAILED, "call_id: you are not talking in this call", {"field": "call_id", "reason": "not a party"})


async def _remote_control(svc, dialog, event: str) -> int:
    import asyncio
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def answered(tx, status, msg):
        if status >= 200 and not done.done():
            done.set_result(status)

    headers = dialog.headers("NOTIFY") + [("Event", event), ("Subscription-State", "terminated")]
    svc.calls.transactions.send_request("NOTIFY", dialog.remote_target, headers, dialog.target, answered)
    try:
        status = await asyncio.wait_for(done, 8.0)
    except asyncio.TimeoutError:
        status = 408
    if status >= 300:
        raise RpcError(OPERATION_FAILED, f"your phone refused 'Event: {event}' ({status}): it does not "
                                         "support remote control, use the phone", {"status": status})
    return status


async def call_answer(svc, session, p):
    call = _my_call(svc, session, p["call_id"])
    leg, dialog = _my_leg(call, session.username, ringing=True)
    status = await _remote_control(svc, dialog, "talk")
    return {"call_id": call.id, "asked": "answer", "phone_status": status}


async def call_hold(svc, session, p):
    call = _my_call(svc, session, p["call_id"])
    side, dialog = _my_leg(call, session.username, ringing=False)
    status = await _remote_control(svc, dialog, "hold")
    return {"call_id": call.id, "asked": "hold", "phone_status": status}


async def call_resume(svc, session, p):
    call = _my_call(svc, session, p["call_id"])
    side, dialog = _my_leg(call, session.username, ringing=False)
    status = await _remote_control(svc, dialog, "talk")
    return {"call_id": call.id, "asked": "resume", "phone_status": status}


def call_transfer(svc, session, p):
    """Blind transfer done by hpbx: the other party is called at the destination; when it
    answers, the user's phone gets a BYE (as after the phone's own REFER)."""
    from datetime import datetime, timezone
    from hpbx.cti.transfer import CtiBlindTransfer
    from hpbx.pbx import router
    call = _my_call(svc, session, p["call_id"])
    side, dialog = _my_leg(call, session.username, ringing=False)
    if side == "a":
        raise RpcError(OPERATION_FAILED, "call_id: a call you placed is transferred from the phone "
                                         "(hpbx transfers calls you answered)", {"field": "call_id",
                                                                                 "reason": "caller side"})
    if call.transfer is not None:
        raise RpcError(OPERATION_FAILED, "call_id: a transfer is already in progress", {"field": "call_id"})
    dest = p["destination"].strip()
    if not dest or len(dest) > 64 or any(c.isspace() or c in "<>@;\"" for c in dest):
        raise RpcError(INVALID_PARAMS, "destination: must be a number or username",
                       {"field": "destination", "reason": "not a dialable string"})
    user = svc.provisioning.directory.auth_user(session.username) or session.user
    plan = router.route_internal(svc.provisioning.directory, user, dest, datetime.now(timezone.utc))
    if plan.kind == "external":
        plan = router.Plan(kind="external", tenant=plan.tenant, dialled=plan.dialled, rows=(
            router.Row(60, (router.Ring("external", plan.external, trunk=plan.trunk,
                                        via=f"transfer:{user.username}"),)),))
    if plan.status or not plan.rows:
        raise RpcError(INVALID_PARAMS, f"destination: {dest} cannot be called: {plan.reason or 'no target'}",
                       {"field": "destination", "reason": plan.reason or "no target"})
    call.transfer = CtiBlindTransfer(svc, session, call, side, plan)
    call.guarded(call.transfer.start)
    return {"call_id": call.id, "destination": dest, "transferring": call.transfer is not None}


# ---------------------------------------------------------------------------- settings
def forward_set(svc, session, p):
    changes = {k: p[k] for k in ("unconditional", "busy", "no_answer", "unavailable", "no_answer_after") if k in p}
    if not changes:
        raise RpcError(INVALID_PARAMS, "unconditional: give at least one rule", {"field": "unconditional"})
    user = svc.provisioning.user_update(session.username, {"forward": changes})
    return {"forward": {k: v for k, v in user["forward"].items() if k != "windows"}}


def switch_list(svc, session, p):
    objs = svc.provisioning.directory.objects(session.tenant)
    out = []
    for sw in sorted(objs.switches.values(), key=lambda s: s.name) if objs is not None else ():
        d = sw.to_dict()
        out.append({"name": sw.name, "on": bool(d.get("on", False)), "auto_off_at": d.get("auto_off_at", "")})
    return out


def switch_set(svc, session, p):
    objs = svc.provisioning.directory.objects(session.tenant)
    if objs is None or p["name"] not in objs.switches:
        raise RpcError(NOT_FOUND, f"name: no special switch {p['name'][:64]!r}", {"field": "name", "kind": "switch"})
    if p["on"]:
        svc.provisioning.switch_set(session.tenant, p["name"])
    else:
        svc.provisioning.switch_clear(session.tenant, p["name"])
    return {"name": p["name"], "on": p["on"]}


# ---------------------------------------------------------------------------- address books
def _books(svc):
    if svc.addressbooks is None:
        raise RpcError(OPERATION_FAILED, "address books are not available in this server")
    return svc.addressbooks


def _book_owner(svc, session, p) -> str:
    """"" for the global book (needs "may manage public address book"), else the user."""
    if p.get("book", "personal") == "personal":
        return session.username
    user = svc.provisioning.directory.auth_user(session.username) or session.user
    if not user.flags.may_manage_public_addressbook:
        raise RpcError(-32004, "book: you may not change the global address book "
                               "(flag may_manage_public_addressbook)", {"field": "book"})
    return ""


def ab_search(svc, session, p):
    return _books(svc).search(session.tenant, p["prefix"], session.username, p.get("limit", 50))


def ab_list(svc, session, p):
    return _books(svc).list(session.tenant, session.username, limit=p.get("limit", 1000),
                            offset=p.get("offset", 0), book="personal")


def ab_create(svc, session, p):
    owner = _book_owner(svc, session, p)
    doc = {k: p[k] for k in _AB_FIELDS if k in p}
    return _books(svc).create(session.tenant, owner or None, doc)


def ab_update(svc, session, p):
    owner = _book_owner(svc, session, p)
    return _books(svc).update(session.tenant, p["id"], {k: p[k] for k in _AB_FIELDS if k in p}, (owner,))


def ab_delete(svc, session, p):
    owner = _book_owner(svc, session, p)
    return _books(svc).delete(session.tenant, p["id"], (owner,))


_AB_FIELDS = ("first_name", "last_name", "company", "private", "office", "mobile")
_AB_PARAMS = tuple(Param(f, "str", help=h) for f, h in zip(_AB_FIELDS, (
    "first name", "last name", "company", "private number (text)", "office number (text)", "mobile number (text)")))
_BOOK = Param("book", "str", help="personal (default) or global (needs may_manage_public_addressbook)",
              choices=("personal", "global"))
_CALL = Param("call_id", "str", True, "call_id of an event or of call.list")

_add("call.answer", call_answer,
     "Answer a call ringing on your phone: the phone is asked (NOTIFY Event: talk); an error says when it cannot.",
     _CALL)
_add("call.hold", call_hold, "Put your answered call on hold: the phone is asked (NOTIFY Event: hold); "
     "events held/resumed follow the phone's re-INVITE.", _CALL)
_add("call.resume", call_resume, "Take your held call back (NOTIFY Event: talk to the phone).", _CALL)
_add("call.transfer", call_transfer,
     "Blind transfer of a call you answered: hpbx calls the destination for the other party; your phone is "
     "released when it answers. Events transfer_progress, then transferred (or transfer_failed).",
     _CALL, Param("destination", "str", True, "internal number, username or external number"))
_add("forward.set", forward_set, "Your forwarding rules (FEATURES 13.3); \"\" switches a rule off.",
     Param("unconditional", "str", help="always to this number"),
     Param("busy", "str", help="when busy"), Param("no_answer", "str", help="when not answered"),
     Param("no_answer_after", "int", help="seconds before no_answer", min=1, max=600),
     Param("unavailable", "str", help="when no phone is registered"))
_add("switch.list", switch_list, "Your tenant's special switches and whether each is on.")
_add("switch.set", switch_set, "Switch a special switch of your tenant on or off.",
     Param("name", "str", True, "the switch's name"), Param("on", "bool", True, "true: on"))
_add("addressbook.search", ab_search,
     "Search your personal book and the global book: every word is a prefix of a name, the company or a number.",
     Param("prefix", "str", True, "what to search for"), Param("limit", "int", help="at most (default 50)", min=1, max=500))
_add("addressbook.list", ab_list, "Your personal book (total and entries).",
     Param("limit", "int", help="at most (default 1000)", min=0, max=100000),
     Param("offset", "int", help="skip this many", min=0, max=2**31))
_add("addressbook.create", ab_create, "Add a contact (to your personal book unless book=global).", _BOOK, *_AB_PARAMS)
_add("addressbook.update", ab_update, "Change a contact of your personal book (or the global one).",
     Param("id", "int", True, "the entry's id", min=1), _BOOK, *_AB_PARAMS)
_add("addressbook.delete", ab_delete, "Delete a contact of your personal book (or the global one).",
     Param("id", "int", True, "the entry's id", min=1), _BOOK)


def call_record(svc, session, p):
    """Start or stop recording one of your answered calls (flag may_record; hpbx.pbx.recording)."""
    if svc.recorder is None:
        raise RpcError(OPERATION_FAILED, "call recording is not available in this server")
    call = _my_call(svc, session, p["call_id"])
    if p["on"]:
        return svc.recorder.start(call.id, session.username)
    return svc.recorder.stop(call.id, session.username)


_add("call.record", call_record,
     "Start (on: true) or stop recording your answered call; needs the flag may_record. The recording "
     "(both directions) is mailed to you and kept for recording.get.",
     _CALL, Param("on", "bool", True, "true: start, false: stop"))
