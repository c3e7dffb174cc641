"""The one table of admin methods: name, handler, parameters with types, help.

The socket server dispatches from it and validates parameters against it; hpbxctl builds its
help and parses its ``key=value`` arguments from it, so the two cannot drift apart.

Handlers take ``(ctx, params)`` with ``params`` already checked against the table (optional
parameters that were not given are absent, so an update changes only what was sent) and
return a JSON-able value. They may be coroutine functions. Domain errors propagate as
``ValidationError`` / ``NotFoundError``; the server maps them to JSON-RPC errors.
"""
from __future__ import annotations

import inspect
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

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.handler)


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
    Param("limit", "int", help="return at most this many entries", min=0),
    Param("offset", "int", help="skip this many entries first", min=0),
)


# -- live state ----------------------------------------------------------------------------

def registration_list(ctx: AdminContext, p: dict) -> list:
    source = _need(ctx, "list_registrations", "registrations")
    now = time.time()
    tenant, user = p.get("tenant"), p.get("user")
    out = []
    for b in source():
        b = dict(b)
        if tenant is not None and b.get("tenant") != tenant:
            continue
        if user is not None and b.get("user") != user:
            continue
        expires_at = b.get("expires_at")
        if isinstance(expires_at, (int, float)):
            b["expires_in"] = max(0, int(expires_at - now))
        out.append(b)
    return _page(out, p)


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


async def _items(result: Any) -> list:
    if hasattr(result, "__aiter__"):
        return [item async for item in result]
    return list(result)


async def find_wan_address(netns: str | None = None) -> dict:
    """The address this box uses towards the world: the source of its IPv4 default route.

    Asks the kernel over netlink (pyroute2, async: the admin server runs in the event loop);
    nothing is sent on the network.
    """
    from pyroute2 import AsyncIPRoute

    async with AsyncIPRoute(netns=netns) as ipr:
        routes = await _items(await ipr.get_default_routes(family=socket.AF_INET))
        if not routes:
            return {"address": None, "reason": "no default route"}
        route = min(routes, key=lambda r: r.get("priority") or 0)
        oif, gateway, address = route.get("oif"), route.get("gateway"), route.get("prefsrc")
        links = await _items(await ipr.link("get", index=oif))
        ifname = links[0].get("ifname") if links else None
        if address is None:
            # the kernel picks the interface's primary address as source for this route
            addrs = await _items(await ipr.addr("dump", index=oif, family=socket.AF_INET))
            address = addrs[0].get("address") if addrs else None
        if address is None:
            return {"address": None, "reason": f"default route via {ifname} has no IPv4 address",
                    "interface": ifname, "gateway": gateway}
        return {"address": address, "interface": ifname, "gateway": gateway}


async def system_info(ctx: AdminContext, p: dict) -> dict:
    licences: dict[str, Any]
    if ctx.provisioning is not None and hasattr(ctx.provisioning, "licence_counts"):
        licences = dict(ctx.provisioning.licence_counts())
    elif ctx.provisioning is not None and hasattr(ctx.provisioning, "user_list"):
        users = _all_users(ctx)
        licences = {"users": len(users), "cti_users": sum(1 for u in users if _cti(u))}
    else:
        licences = {"users": None, "cti_users": None, "reason": "provisioning is not available"}
    try:
        wan = await find_wan_address()
    except OSError as exc:
        wan = {"address": None, "reason": f"cannot read routes: {exc}"}
    return {
        "version": hpbx.__version__,
        "python": sys.version.split()[0],
        "pid": os.getpid(),
        "started_at": ctx.started_at,
        "uptime": round(time.monotonic() - ctx.started_monotonic, 3),
        "licences": licences,
        "wan": wan,
        "admin_socket": ctx.settings.admin.socket,
        "config": ctx.settings.path,
    }


def _all_users(ctx: AdminContext) -> list:
    fn = ctx.provisioning.user_list
    try:
        return list(fn())
    except TypeError:
        # a user_list that requires a tenant: count tenant by tenant
        out = []
        for t in ctx.provisioning.tenant_list():
            out.extend(fn(t["name"]))
        return out


def _cti(user: dict) -> bool:
    flags = user.get("flags") or {}
    return bool(user.get("cti_access") or flags.get("cti_access"))


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
     columns=("call_id", "tenant", "caller", "called", "state", "duration"))
_add("call.hangup", call_hangup, "Hang up a call in progress (both legs receive BYE or CANCEL).",
     Param("call_id", "str", required=True, help="the call's id from call.list"))
_add("stats.get", stats_get, "Counters and gauges of every layer (admin, sip, registrar, media, ...).",
     Param("layer", "str", help="only this layer"))
_add("system.info", system_info,
     "Version, uptime, licence counts (users, CTI users) and the WAN address from the default route.")
_add("config.reload", config_reload,
     "Reload the server settings file without dropping calls or registrations (like SIGHUP).")
