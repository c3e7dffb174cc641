"""The one table of admin methods: name, handler, parameters with types, help.

The socket server dispatches from it and validates parameters against it; hpbxctl builds its
help and parses its ``key=value`` arguments from it, so the two cannot drift apart.

Handlers take ``(ctx, params)`` with ``params`` already checked against the table (optional
parameters that were not given are absent, so an update changes only what was sent) and
return a JSON-able value. They may be coroutine functions. Domain errors propagate as
``ValidationError`` / ``NotFoundError``; the server maps them to JSON-RPC errors.
"""
from __future__ import annotations

import asyncio
import inspect
import itertools
import os
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

import hpbx
from hpbx.admin.context import AdminContext
from hpbx.admin.protocol import NOT_AVAILABLE, NOT_FOUND, RpcError, invalid_params

TYPES = ("str", "int", "number", "bool", "object", "array", "any")


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    type: str
    required: bool = False
    help: str = ""
    choices: tuple = ()
    min: int | None = None
    max: int | None = None

    def check(self, value: Any) -> Any:
        t = self.type
        ok = (
            t == "any"
            or (t == "str" and isinstance(value, str))
            or (t == "int" and isinstance(value, int) and not isinstance(value, bool))
            or (t == "number" and isinstance(value, (int, float)) and not isinstance(value, bool))
            or (t == "bool" and isinstance(value, bool))
            or (t == "object" and isinstance(value, dict))
            or (t == "array" and isinstance(value, list))
        )
        if not ok:
            raise invalid_params(self.name, f"must be {_TYPE_WORDS[t]}, got {_json_type(value)}")
        if self.choices and value not in self.choices:
            raise invalid_params(self.name, f"must be one of {', '.join(map(str, self.choices))}, got {value!r}")
        if self.min is not None and value < self.min:
            raise invalid_params(self.name, f"must be at least {self.min}, got {value}")
        if self.max is not None and value > self.max:
            raise invalid_params(self.name, f"must be at most {self.max}, got {value}")
        return value


_TYPE_WORDS = {
    "str": "a string", "int": "an integer", "number": "a number", "bool": "true or false",
    "object": "an object", "array": "an array", "any": "a value",
}


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return f"number {value!r}"
    if isinstance(value, str):
        return f"string {value[:40]!r}"
    return {dict: "object", list: "array"}.get(type(value), type(value).__name__)


@dataclass(frozen=True, slots=True)
class Method:
    name: str
    handler: Callable[[AdminContext, dict], Any]
    params: tuple[Param, ...]
    help: str
    columns: tuple[str, ...] = ()  # hpbxctl table columns for list results

    def bind(self, params: Any) -> dict:
        """Check ``params`` (object, array or absent) against the table; -32602 naming the field."""
        if params is None:
            params = {}
        elif isinstance(params, list):
            if len(params) > len(self.params):
                raise invalid_params("params", f"{self.name} takes at most {len(self.params)} positional parameters")
            params = {p.name: v for p, v in zip(self.params, params)}
        elif not isinstance(params, dict):
            raise invalid_params("params", "must be an object or an array")
        known = {p.name: p for p in self.params}
        for key in params:
            if key not in known:
                raise invalid_params(key, f"unknown parameter of {self.name}")
        bound = {}
        for p in self.params:
            if p.name in params:
                bound[p.name] = p.check(params[p.name])
            elif p.required:
                raise invalid_params(p.name, "required")
        return bound


# -- helpers shared by handlers ------------------------------------------------------------

def _need(ctx: AdminContext, attr: str, feature: str) -> Any:
    value = getattr(ctx, attr)
    if value is None:
        raise RpcError(NOT_AVAILABLE, f"{feature} is not available in this server", {"feature": feature})
    return value


def _service(ctx: AdminContext, name: str) -> Callable:
    prov = _need(ctx, "provisioning", "provisioning")
    fn = getattr(prov, name, None)
    if fn is None:
        raise RpcError(NOT_AVAILABLE, f"provisioning.{name} is not available in this server",
                       {"feature": f"provisioning.{name}"})
    return fn


def _page(items: list, params: dict) -> list:
    offset = params.get("offset", 0)
    limit = params.get("limit")
    return items[offset:offset + limit] if limit is not None else items[offset:]


PAGE = (
    Param("limit", "int", help="return at most this many entries", min=0, max=2**31),
    Param("offset", "int", help="skip this many entries first", min=0, max=2**31),
)


# -- live state ----------------------------------------------------------------------------

def registration_list(ctx: AdminContext, p: dict) -> list:
    source = _need(ctx, "list_registrations", "registrations")
    now = time.time()
    offset = p.get("offset", 0)
    limit = p.get("limit")
    stop = offset + limit if limit is not None else None
    return [registration_row(b, now)
            for b in itertools.islice(source(p.get("tenant"), p.get("user")), offset, stop)]


def registration_row(b: Any, now: float) -> dict:
    """One binding as operators read it. Takes either the operator shape (user, source, ...)
    or the registrar's stored ``Binding.as_dict()`` shape (username, source_host, ...)."""
    b = b if isinstance(b, dict) else b.as_dict()
    expires_at = b.get("expires_at")
    if "username" not in b:
        if "expires_in" in b or not isinstance(expires_at, (int, float)):
            return b  # already in the operator shape; the source yields fresh dicts
        return {**b, "expires_in": max(0, int(expires_at - now))}
    host, port = b.get("source_host"), b.get("source_port")
    return {
        "user": b.get("username"),
        "tenant": b.get("tenant"),
        "contact": b.get("contact"),
        "source": (f"[{host}]:{port}" if host and ":" in host else f"{host}:{port}") if host else None,
        "transport": b.get("transport"),
        "user_agent": b.get("user_agent"),
        "behind_nat": bool(b.get("behind_nat")),
        "expires_in": max(0, int(expires_at - now)) if isinstance(expires_at, (int, float)) else None,
        "expires_at": expires_at,
        "registered_at": b.get("registered_at"),
        "instance_id": b.get("instance_id"),
        "online": b.get("online", True),
    }


def call_list(ctx: AdminContext, p: dict) -> list:
    source = _need(ctx, "list_calls", "calls")
    tenant = p.get("tenant")
    return _page([dict(c) for c in source() if tenant is None or c.get("tenant") == tenant], p)


async def call_hangup(ctx: AdminContext, p: dict) -> dict:
    hangup = _need(ctx, "hangup_call", "calls")
    done = hangup(p["call_id"])
    if inspect.isawaitable(done):
        done = await done
    if not done:
        raise RpcError(NOT_FOUND, f"call {p['call_id']!r} not found", {"kind": "call", "key": p["call_id"]})
    return {"call_id": p["call_id"], "hungup": True}


def stats_get(ctx: AdminContext, p: dict) -> dict:
    layer = p.get("layer")
    sources = ctx.stats_sources
    if layer is not None:
        if layer not in sources:
            raise invalid_params("layer", f"unknown layer {layer!r}, known: {', '.join(sorted(sources))}")
        return {layer: sources[layer]()}
    return {name: fn() for name, fn in sources.items()}


async def config_reload(ctx: AdminContext, p: dict) -> dict:
    reload = _need(ctx, "reload_config", "config reload")
    result = reload()
    if inspect.isawaitable(result):
        result = await result
    return {"reloaded": True, **(result or {})}


def find_wan_address(netns: str | None = None) -> dict:
    """The address this box uses towards the world: the source of its IPv4 default route.

    Asks the kernel over netlink (pyroute2); nothing is sent on the network. Blocking: the
    server runs it in a worker thread (pyroute2's own loop cannot share uvloop's).
    """
    from pyroute2 import IPRoute, NetNS

    ipr = NetNS(netns) if netns else IPRoute()
    try:
        routes = list(ipr.get_default_routes(family=socket.AF_INET))
        if not routes:
            return {"address": None, "reason": "no default route"}
        route = min(routes, key=lambda r: r.get("priority") or 0)
        oif, gateway, address = route.get("oif"), route.get("gateway"), route.get("prefsrc")
        links = list(ipr.link("get", index=oif))
        ifname = links[0].get("ifname") if links else None
        if address is None:
            # the kernel picks the interface's primary address as source for this route
            addrs = list(ipr.addr("dump", index=oif, family=socket.AF_INET))
            address = addrs[0].get("address") if addrs else None
        if address is None:
            return {"address": None, "reason": f"default route via {ifname} has no IPv4 address",
                    "interface": ifname, "gateway": gateway}
        return {"address": address, "interface": ifname, "gateway": gateway}
    finally:
        ipr.close()


def _licence_summary(ctx: AdminContext) -> dict | None:
    from hpbx.pbx import licence
    if ctx.provisioning is None:
        return None
    doc = licence.summary(ctx.provisioning.directory)
    doc.pop("tenants", None)  # system.info is server-wide: no tenant names
    return doc


async def system_info(ctx: AdminContext, p: dict) -> dict:
    if ctx.provisioning is not None:
        licences = dict(ctx.provisioning.licence_counts())
    else:
        licences = {"users": None, "cti_users": None, "reason": "provisioning is not available"}
    try:
        wan = await asyncio.to_thread(find_wan_address)
    except Exception as exc:  # OSError, NetlinkError: system.info still answers the rest
        wan = {"address": None, "reason": f"cannot read routes: {exc}"}
    return {
        "version": hpbx.__version__,
        "python": sys.version.split()[0],
        "pid": os.getpid(),
        "started_at": ctx.started_at,
        "uptime": round(time.monotonic() - ctx.started_monotonic, 3),
        "licences": licences,
        # used/total and the seed's "Lic: 10/6" line (hpbx.pbx.licence); per tenant: licence.get
        "licence": _licence_summary(ctx),
        "wan": wan,
        "admin_socket": ctx.settings.admin.socket,
        "config": ctx.settings.path,
    }


# -- provisioning: thin calls into hpbx.pbx.provisioning (validation and the transaction are
# the service's; the table here fixes names, types and help) ---------------------------------

def _keys(p: dict, keys: tuple[str, ...]) -> list:
    return [p[k] for k in keys]


def _crud_handlers(noun: str, keys: tuple[str, ...], filters: tuple[str, ...]) -> dict[str, Callable]:
    def create(ctx: AdminContext, p: dict) -> Any:
        return _service(ctx, f"{noun}_create")(p)

    def get(ctx: AdminContext, p: dict) -> Any:
        return _service(ctx, f"{noun}_get")(*_keys(p, keys))

    def update(ctx: AdminContext, p: dict) -> Any:
        changes = {k: v for k, v in p.items() if k not in keys}
        if not changes:
            raise invalid_params("params", f"{noun}.update needs at least one field to change")
        return _service(ctx, f"{noun}_update")(*_keys(p, keys), changes)

    def delete(ctx: AdminContext, p: dict) -> Any:
        result = _service(ctx, f"{noun}_delete")(*_keys(p, keys))
        return result if result is not None else {"deleted": {k: p[k] for k in keys}}

    def list_(ctx: AdminContext, p: dict) -> Any:
        args = {k: p[k] for k in filters if k in p}
        return _page(list(_service(ctx, f"{noun}_list")(**args)), p)

    return {"create": create, "get": get, "update": update, "delete": delete, "list": list_}


def _add_crud(noun: str, what: str, keys: tuple[Param, ...], fields: tuple[Param, ...],
              filters: tuple[Param, ...], columns: tuple[str, ...], verbs: tuple[str, ...] = (
                  "create", "get", "update", "delete", "list")) -> None:
    key_names = tuple(k.name for k in keys)
    h = _crud_handlers(noun, key_names, tuple(f.name for f in filters))
    optional = tuple(Param(f.name, f.type, False, f.help, f.choices, f.min, f.max) for f in fields)
    docs = {
        "create": (f"Create {what}.", keys + fields),
        "get": (f"Show {what}.", keys),
        "update": (f"Change fields of {what}; fields not given keep their value.", keys + optional),
        "delete": (f"Delete {what}.", keys),
        "list": (f"List {what}s.", filters + PAGE),
    }
    for verb in verbs:
        text, params = docs[verb]
        _add(f"{noun}.{verb}", h[verb], text, *params, columns=columns if verb == "list" else ())


METHODS: dict[str, Method] = {}


def _add(name: str, handler: Callable, help: str, *params: Param, columns: tuple[str, ...] = ()) -> None:
    assert name not in METHODS, name
    for p in params:
        assert p.type in TYPES, (name, p)
    METHODS[name] = Method(name, handler, tuple(params), help, columns)


_add("registration.list", registration_list,
     "List the registered devices: user, contact, source address, transport, user agent, "
     "NAT flag and seconds until expiry.",
     Param("tenant", "str", help="only this tenant"),
     Param("user", "str", help="only this username"),
     *PAGE,
     columns=("user", "contact", "source", "transport", "user_agent", "behind_nat", "expires_in"))
_add("call.list", call_list, "List the calls in progress.",
     Param("tenant", "str", help="only this tenant"), *PAGE,
     columns=("call_id", "tenant", "caller", "called", "state", "slot", "answered_by", "ringing", "start"))
_add("call.hangup", call_hangup, "Hang up a call in progress (both legs receive BYE or CANCEL).",
     Param("call_id", "str", required=True, help="the call's id from call.list"))
_add("stats.get", stats_get, "Counters and gauges of every layer (admin, sip, registrar, media, ...).",
     Param("layer", "str", help="only this layer"))
_add("system.info", system_info,
     "Version, uptime, licence counts (users, CTI users) and the WAN address from the default route.")
_add("config.reload", config_reload,
     "Reload the server settings file without dropping calls or registrations (like SIGHUP).")

TENANT = Param("tenant", "str", required=True, help="tenant name")
_add_crud(
    "tenant", "a tenant (a customer's PBX)",
    (Param("name", "str", required=True, help="tenant name (a-z, 0-9, _.-)"),),
    (Param("domain", "str", help="SIP domain of the tenant"),
     Param("timezone", "str", help="IANA time zone of the dial plans (default Europe/Zurich)"),
     Param("trunk", "str", help="name of the trunk used for external numbers"),
     Param("default_number", "str",
           help="public number presented to the network for users with no displayed number"),
     Param("caller_id_fallback", "str", choices=("default_number", "withheld"),
           help="caller ID of users with no displayed number: the default number, or withheld "
                "(anonymous, P-Asserted-Identity + Privacy: id)"),
     Param("language", "str", help="prompt language callers hear: en, de, or an operator's folder (default de)"),
     Param("music_on_hold", "str", help="music class (default ships) or announcement:<id> of kind music"),
     Param("licence_users", "int", help="users licensed to the tenant (0 = no limit of its own)", min=0),
     Param("licence_cti_users", "int", help="CTI users licensed to the tenant (0 = no limit of its own)", min=0),
     # issue 11 (hpbx.pbx.voicemail, push, recording)
     Param("voicemail_format", "str", choices=("wav", "mp3"), help="attachment of voice messages"),
     Param("push_url", "str", help="http(s) URL of the push webhook (\"\" = none)"),
     Param("push_secret", "str", help="HMAC-SHA256 key signing the webhook's bodies"),
     Param("recording_notice", "str",
           help="played to both parties when a call recording starts: \"\", prompt, announcement:<id>")),
    (), ("name", "domain", "timezone", "trunk"))
_add_crud(
    "user", "a user (SIP account and person)",
    (Param("username", "str", required=True, help="SIP user name, unique on the server"),),
    (TENANT,
     Param("sip_password", "str", required=True, help="SIP digest password"),
     Param("internal_number", "str", help="internal number (2-6 digits; 700-720, 801, 900-902 reserved)"),
     Param("displayed_number", "str", help="one of the tenant's public numbers, shown to the called party"),
     Param("displayed_number_diversion", "str", help="caller ID on diverted calls",
           choices=("displayed", "original_caller", "dialled")),
     Param("cti_password", "str", help="password of the CTI clients"),
     Param("details", "object", help="first_name, name, company, mobile, nickname, email"),
     Param("flags", "object", help="e.g. {\"cti_access\": true, \"behind_nat\": true, \"dnd\": true}"),
     Param("max_calls", "int", help="signal busy beyond this many calls (0 = call waiting)"),
     Param("pickup", "array", help="usernames whose ringing calls this user may pick up"),
     Param("supervise", "array", help="usernames whose dialog state (BLF) this user may watch"),
     Param("presence_groups", "array", help="presence groups: presence is seen inside a shared group"),
     Param("conference_pin", "str", help="digits picking the user's personal conference room"),
     Param("cti_groups", "array", help="CTI groups: the sections of the colleague list"),
     Param("forward", "object",
           help="forwarding: unconditional, busy, no_answer (after no_answer_after s), unavailable; "
                "each an internal or external number, \"\" = off"),
     Param("mailbox", "object",
           help="user mailbox: enabled, email, greeting (announcement id), timeout, pin, keep, "
                "mwi_unsolicited"),
     Param("callthrough", "array",
           help="callthrough rules: [{authorised, access (a callthrough number), presented}]")),
    (Param("tenant", "str", help="only this tenant"),),
    ("username", "tenant", "internal_number", "displayed_number", "details"))
_add_crud(
    "group", "a group of users",
    (TENANT, Param("name", "str", required=True, help="group name")),
    (Param("internal_number", "str", help="internal number of the group"),
     Param("members", "array", help="usernames in ring order"),
     Param("logged_out", "array", help="members currently logged out")),
    (Param("tenant", "str", help="only this tenant"),),
    ("tenant", "name", "internal_number", "members", "logged_out"))
_add_crud(
    "trunk", "a trunk (gateway for external numbers)",
    (TENANT, Param("name", "str", required=True, help="trunk name")),
    (Param("host", "str", required=True, help="gateway host or address"),
     Param("port", "int", help="gateway port (default 5060)", min=1, max=65535),
     Param("transport", "str", help="transport to the gateway", choices=("udp", "tcp", "tls")),
     Param("username", "str", help="digest user name, when the gateway challenges"),
     Param("password", "str", help="digest password"),
     Param("from_domain", "str", help="host part of From on outgoing calls")),
    (Param("tenant", "str", help="only this tenant"),),
    ("tenant", "name", "host", "port", "transport", "from_domain"))
_add_crud(
    "number", "a public number (call distribution)",
    (Param("number", "str", required=True, help="the public number, national or +E.164"),),
    (TENANT,
     Param("usage", "str", help="what the number does", choices=("telephone", "fax", "conference", "followme", "callthrough")),
     Param("name", "str", help="label"),
     Param("alert_info", "str", help="Alert-Info sent to the rung devices"),
     Param("slots", "array", help="up to ten dial-plan slots (see number.set_slots)"),
     Param("pin", "str", help="conference or FollowMe: the PIN callers enter (digits)"),
     Param("personal_rooms", "bool", help="conference: the dial-in of every user's personal room"),
     Param("max_participants", "int", help="conference: participants per room (0 = [conference] default)"),
     Param("fax_mail", "str", help="usage fax: mail address(es) for received faxes, comma-separated"),
     Param("followme", "str", help="FollowMe: what it re-programs: switch:NAME, forward:USER[:RULE], slot:NUMBER:K"),
     Param("authorised", "array", help="FollowMe: calling numbers allowed to use it")),
    (Param("tenant", "str", help="only this tenant"),
     Param("filter", "str", help="digits the number contains (508 finds 0445081111)")),
    ("number", "tenant", "usage", "name"))
_add_crud(
    "switch", "a special switch (manual override of dial plans)",
    (TENANT, Param("name", "str", required=True, help="switch name")),
    (Param("numbers", "array", help="public numbers the switch overrides"),
     Param("use_slot", "int", help="1-10: use this slot of each number; 0: use plan", min=0, max=10),
     Param("plan", "object", help="the switch's own dial plan (a slot)"),
     Param("on", "bool", help="switched on"),
     Param("auto_off_at", "str", help="ISO 8601 time after which the switch counts as off")),
    (Param("tenant", "str", help="only this tenant"),),
    ("tenant", "name", "on", "switched_on_at", "numbers", "use_slot"))
_add_crud(
    "announcement", "an announcement (audio metadata)",
    (TENANT, Param("id", "int", required=True, help="announcement id", min=1)),
    (Param("name", "str", help="label"),
     Param("file", "str", help="audio file, relative to the media directory"),
     Param("kind", "str", help="announcement or music on hold", choices=("announcement", "music")),
     Param("duration_ms", "int", help="length in milliseconds", min=0)),
    (Param("tenant", "str", help="only this tenant"),),
    ("tenant", "id", "name", "kind", "file", "duration_ms"))
_create = METHODS["announcement.create"]
METHODS["announcement.create"] = Method(
    _create.name, _create.handler,
    tuple(Param("id", "int", help="announcement id (default: the next free one)", min=1) if p.name == "id" else p
          for p in _create.params),
    _create.help, _create.columns)


def number_set_slots(ctx: AdminContext, p: dict) -> Any:
    return _service(ctx, "number_set_slots")(p["number"], p["slots"])


def number_find_unused(ctx: AdminContext, p: dict) -> Any:
    return _page(list(_service(ctx, "number_find_unused")(p["tenant"])), p)


def number_search(ctx: AdminContext, p: dict) -> Any:
    return _page(list(_service(ctx, "number_search")(p["tenant"], p["text"])), p)


def switch_set(ctx: AdminContext, p: dict) -> Any:
    args = {"auto_off_at": p["auto_off_at"]} if "auto_off_at" in p else {}
    return _service(ctx, "switch_set")(p["tenant"], p["name"], **args)


def switch_clear(ctx: AdminContext, p: dict) -> Any:
    return _service(ctx, "switch_clear")(p["tenant"], p["name"])


def cdr_list(ctx: AdminContext, p: dict) -> Any:
    return _service(ctx, "cdr_list")(**{"limit": 100, **p})


def cdr_export(ctx: AdminContext, p: dict) -> Any:
    return _service(ctx, "cdr_export")(**p)


def cdr_purge(ctx: AdminContext, p: dict) -> Any:
    return _service(ctx, "cdr_purge")(**p)


def tenant_export(ctx: AdminContext, p: dict) -> str:
    # the bare TOML text, so that `hpbxctl tenant.export name=X > X.toml` gives the file
    return _service(ctx, "export_tenant")(p["name"])


def tenant_import(ctx: AdminContext, p: dict) -> Any:
    return _service(ctx, "import_tenant")(p["toml"], p.get("replace", False))


_add("number.set_slots", number_set_slots,
     "Replace the ten dial-plan slots of a number in one change (slots not given become empty).",
     Param("number", "str", required=True, help="the public number"),
     Param("slots", "array", required=True,
           help="up to ten slots: {active, name, mode, days, date_from, date_to, time_start, time_end, "
                "announcement_before, announcement_after, voice2mail, rows: [{duration, targets}]}"))
_add("number.find_unused", number_find_unused,
     "Telephone numbers of a tenant that reach nobody: no active switch and ten empty dial plans.",
     TENANT, *PAGE, columns=("number", "usage", "name"))
_add("number.search", number_search, "Find a tenant's public numbers whose dial plans reach a participant.",
     TENANT, Param("text", "str", required=True,
                   help="username, first name, name, nickname or group name; or digits of an external or linked number"),
     *PAGE, columns=("number", "tenant", "usage", "name"))
_add("switch.set", switch_set, "Switch a special switch on: it takes effect on the next call.",
     TENANT, Param("name", "str", required=True, help="switch name"),
     Param("auto_off_at", "str", help="ISO 8601 time after which the switch counts as off"))
_add("switch.clear", switch_clear, "Switch a special switch off.",
     TENANT, Param("name", "str", required=True, help="switch name"))
_add("cdr.list", cdr_list, "Call records, newest first (at most 100 unless limit says otherwise).",
     Param("tenant", "str", help="only this tenant"),
     Param("since", "str", help="ISO 8601: only calls that started at or after"),
     Param("until", "str", help="ISO 8601: only calls that started before"),
     *PAGE, columns=("id", "tenant", "caller", "called", "slot", "switch", "answered_by", "start", "end", "end_reason"))
_add("cdr.export", cdr_export, "Call records as CSV or JSON lines, oldest first (result: format, rows, text).",
     Param("tenant", "str", help="only this tenant"),
     Param("since", "str", help="ISO 8601: only calls that started at or after"),
     Param("until", "str", help="ISO 8601: only calls that started before"),
     Param("format", "str", choices=("csv", "jsonl"), help="csv (default) or jsonl"),
     Param("limit", "int", min=1, max=1_000_000, help="at most this many records (default 100000)"))
_add("cdr.purge", cdr_purge, "Delete the call records of calls that started before a time (retention).",
     Param("before", "str", required=True, help="ISO 8601 timestamp with offset"))
_add("tenant.export", tenant_export, "A tenant and everything it owns as TOML (the import format).",
     Param("name", "str", required=True, help="tenant name"))
_add("tenant.import", tenant_import,
     "Create a tenant and everything it owns from TOML (as written by tenant.export), in one change.",
     Param("toml", "str", required=True, help="the TOML text"),
     Param("replace", "bool", help="replace an existing tenant of that name (in the same change)"))

from hpbx.admin import security_methods  # noqa: E402,F401  (ban.*, toll.*: the security layer's methods)
from hpbx.admin import mail_methods  # noqa: E402,F401  (mail.*: the outgoing mail spool)
from hpbx.admin import conference_methods  # noqa: E402,F401  (conference.*: rooms, schedules)
from hpbx.admin import mailbox_methods  # noqa: E402,F401  (mailbox.*: user mailboxes, issue 11)
from hpbx.admin import recording_methods  # noqa: E402,F401  (call.record, recording.*: issue 11)
from hpbx.admin import announcement_methods  # noqa: E402,F401  (announcement.* with the audio itself)
from hpbx.admin import followme_methods  # noqa: E402,F401  (followme.*, callthrough.*: issue 12)

# -- the web face: admin accounts, audit log, dial-plan simulator, phones, dashboard -------

def admin_create(ctx: AdminContext, p: dict) -> Any:
    return _need(ctx, "accounts", "admin accounts").create(p["username"], p["password"], p["role"],
                                                           p.get("tenant", ""))


def admin_update(ctx: AdminContext, p: dict) -> Any:
    changes = {k: p[k] for k in ("password", "role", "tenant") if k in p}
    if not changes:
        raise invalid_params("params", "admin.update needs at least one field to change")
    return _need(ctx, "accounts", "admin accounts").update(p["username"], **changes)


def admin_delete(ctx: AdminContext, p: dict) -> Any:
    return _need(ctx, "accounts", "admin accounts").delete(p["username"])


def admin_list(ctx: AdminContext, p: dict) -> Any:
    return _page(_need(ctx, "accounts", "admin accounts").list(p.get("tenant")), p)


def audit_list(ctx: AdminContext, p: dict) -> Any:
    return _need(ctx, "audit", "audit log").list(**{"limit": 100, **p})


def _instant_param(p: dict, key: str) -> Any:
    from datetime import datetime, timezone
    if key not in p:
        return datetime.now(timezone.utc)
    try:
        when = datetime.fromisoformat(p[key])
    except ValueError:
        raise invalid_params(key, f"{p[key]!r} is not an ISO 8601 time") from None
    if when.tzinfo is None:
        raise invalid_params(key, f"{p[key]!r} needs a UTC offset (e.g. +01:00 or Z)")
    return when


def number_simulate(ctx: AdminContext, p: dict) -> Any:
    from hpbx.pbx.simulate import simulate
    prov = _need(ctx, "provisioning", "provisioning")
    at = _instant_param(p, "at")
    if prov.directory.number(p["number"]) is None:
        raise RpcError(NOT_FOUND, f"number {p['number']!r} not found", {"kind": "number", "key": p["number"]})
    regs = ctx.list_registrations

    def registered(username: str) -> list:
        return [registration_row(b, time.time()) for b in regs(None, username)] if regs else []

    return simulate(prov.directory, p["number"], at, registered)


def _phones(ctx: AdminContext) -> Any:
    return _need(ctx, "phones", "phone provisioning")


def phone_create(ctx: AdminContext, p: dict) -> Any:
    return _phones(ctx).phone_create(p)


def phone_get(ctx: AdminContext, p: dict) -> Any:
    return _phones(ctx).phone_get(p["mac"])


def phone_update(ctx: AdminContext, p: dict) -> Any:
    changes = {k: v for k, v in p.items() if k != "mac"}
    if not changes:
        raise invalid_params("params", "phone.update needs at least one field to change")
    return _phones(ctx).phone_update(p["mac"], changes)


def phone_delete(ctx: AdminContext, p: dict) -> Any:
    return _phones(ctx).phone_delete(p["mac"])


def phone_list(ctx: AdminContext, p: dict) -> Any:
    return _page(_phones(ctx).phone_list(p.get("tenant")), p)


def phone_export(ctx: AdminContext, p: dict) -> Any:
    _need(ctx, "provisioning", "provisioning")._objs(p["tenant"])
    return _phones(ctx).phone_export(p["tenant"])


def phone_import(ctx: AdminContext, p: dict) -> Any:
    return _phones(ctx).phone_import(p["toml"], p.get("replace", False))


def dashboard_get(ctx: AdminContext, p: dict) -> Any:
    """Per tenant: active calls, registered devices and users online, and per hour of the last
    ``hours``: calls and answered calls (from the CDRs)."""
    from datetime import datetime, timedelta, timezone
    prov = _need(ctx, "provisioning", "provisioning")
    hours = p.get("hours", 24)
    only = p.get("tenant")
    names = [only] if only is not None else sorted(t.name for t in prov.directory.tenants())
    if only is not None:
        prov._objs(only)
    now = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    start = now - timedelta(hours=hours)
    calls = list(ctx.list_calls()) if ctx.list_calls else []
    out = []
    for name in names:
        regs = list(ctx.list_registrations(name, None)) if ctx.list_registrations else []
        per_hour = [{"hour": (start + timedelta(hours=i)).isoformat(), "calls": 0, "answered": 0}
                    for i in range(hours)]
        total = answered = 0
        for cdr in prov.cdr_list(name, since=start.isoformat(), limit=100_000):
            try:
                at = datetime.fromisoformat(cdr["start"])
            except (KeyError, ValueError):
                continue
            i = int((at - start).total_seconds() // 3600)
            if 0 <= i < hours:
                per_hour[i]["calls"] += 1
                total += 1
                if cdr.get("answered_by"):
                    per_hour[i]["answered"] += 1
                    answered += 1
        out.append({
            "tenant": name,
            "active_calls": sum(1 for c in calls if c.get("tenant") == name),
            "registrations": len(regs),
            "users_online": len({r.get("user") for r in regs}),
            "users": sum(1 for _ in prov.directory.users_of(name)),
            "calls": total, "answered": answered,
            "answer_rate": round(answered / total, 4) if total else None,
            "per_hour": per_hour,
        })
    return {"hours": hours, "tenants": out}


_ROLE = Param("role", "str", help="operator (all tenants) or tenant_admin (one tenant)",
              choices=("operator", "tenant_admin"))
_add("admin.create", admin_create, "Create an account of the web face (its password is stored as a scrypt hash).",
     Param("username", "str", required=True, help="login name"),
     Param("password", "str", required=True, help="password, 8-256 characters"),
     Param(_ROLE.name, _ROLE.type, True, _ROLE.help, _ROLE.choices),
     Param("tenant", "str", help="the tenant of a tenant_admin"))
_add("admin.update", admin_update, "Change an account's password, role or tenant.",
     Param("username", "str", required=True, help="login name"),
     Param("password", "str", help="new password"), _ROLE,
     Param("tenant", "str", help="the tenant of a tenant_admin"))
_add("admin.delete", admin_delete, "Delete an account of the web face.",
     Param("username", "str", required=True, help="login name"))
_add("admin.list", admin_list, "List the accounts of the web face.",
     Param("tenant", "str", help="only this tenant's admins"), *PAGE,
     columns=("username", "role", "tenant", "created_at"))
_add("audit.list", audit_list, "The audit log: every change, newest first (who, when, method, tenant, parameters).",
     Param("tenant", "str", help="only changes of this tenant"),
     Param("who", "str", help="only this principal (uid:0, web:anna)"),
     Param("method", "str", help="only this method"),
     Param("since", "str", help="ISO 8601: only changes at or after"),
     *PAGE, columns=("id", "at", "who", "method", "tenant", "outcome"))
_add("number.simulate", number_simulate,
     "What happens if someone calls this number now (or at time at): the slot chosen and why, "
     "the rows and their targets with their registration state. Rings nobody.",
     Param("number", "str", required=True, help="the public number"),
     Param("at", "str", help="ISO 8601 time with offset (default now)"))
_PHONE_FIELDS = (
    Param("vendor", "str", help="snom or yealink", choices=("snom", "yealink")),
    Param("model", "str", help="model name (D785, T46U, ...)"),
    Param("accounts", "array", help="usernames on account keys 1..n"),
    Param("keys", "array", help="function keys [{type: blf|switch|pickup|speeddial, value, label}]"),
    Param("phonebook_url", "str", help="phonebook URL (default: this server's phonebook of the tenant)"),
    Param("timezone", "str", help="IANA time zone (default: the tenant's)"),
    Param("language", "str", help="en, de, fr or it", choices=("en", "de", "fr", "it")),
    Param("transport", "str", help="SIP transport", choices=("udp", "tcp", "tls")),
    Param("http_user", "str", help="user name the phone fetches its files with (default: the MAC)"),
    Param("http_password", "str", help="its password (default: generated)"),
)
_MAC = Param("mac", "str", required=True, help="MAC address (001565aabbcc or 00:15:65:AA:BB:CC)")
_add("phone.create", phone_create, "Provision a desk phone: its MAC, users on its keys, function keys, ...",
     _MAC, TENANT, *_PHONE_FIELDS)
_add("phone.get", phone_get, "Show a phone's provisioning record.", _MAC)
_add("phone.update", phone_update, "Change fields of a phone's record; fields not given keep their value.",
     _MAC, *_PHONE_FIELDS)
_add("phone.delete", phone_delete, "Delete a phone's provisioning record (it then gets 404).", _MAC)
_add("phone.list", phone_list, "List the provisioned phones.", Param("tenant", "str", help="only this tenant"),
     *PAGE, columns=("mac", "tenant", "vendor", "model", "accounts", "transport"))
_add("phone.export", phone_export, "A tenant's phones as TOML (tenant = ..., [[phones]]).", TENANT)
_add("phone.import", phone_import, "Provision phones from TOML (as phone.export writes it), in one change.",
     Param("toml", "str", required=True, help="the TOML text"),
     Param("replace", "bool", help="also replace existing phones and delete the tenant's others"))
_add("dashboard.get", dashboard_get,
     "Per tenant: active calls, registrations, users online, calls and answered calls per hour.",
     Param("tenant", "str", help="only this tenant"),
     Param("hours", "int", help="hours back (default 24)", min=1, max=24 * 31))

# CTI (hpbx.cti): cti.session.list, and user.get shows CTI and phone online status
from hpbx.cti import admin_methods as _cti_admin  # noqa: E402,F401
# address books (hpbx.pbx.addressbook): addressbook.*
from hpbx.admin import addressbook_methods as _addressbook  # noqa: E402,F401
# cdr.list number=... (issue 17: call records by number)
from hpbx.admin import cdr_number as _cdr_number  # noqa: E402,F401
# fax (hpbx.fax.send): fax.send, fax.status, fax.list (issue 15)
from hpbx.fax import admin_methods as _fax_admin  # noqa: E402,F401
