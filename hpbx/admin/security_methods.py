"""Admin methods of the security layer (``ban.*``, ``toll.*``), added to the one method table.

They reach the running server's ``BanService`` (and toll policy) through the context; a bad
address or network is -32602 naming the field.
"""
from __future__ import annotations

import re
from typing import Any

from hpbx.admin.context import AdminContext
from hpbx.admin.methods import PAGE, Param, _add, _need, _page
from hpbx.admin.protocol import NOT_FOUND, RpcError, invalid_params
from hpbx.security.config import NIGHT_RE, RATE_ACTIONS, TOLL_KEYS


def _security(ctx: AdminContext):
    return _need(ctx, "security", "security")


def ban_list(ctx: AdminContext, p: dict) -> list:
    return _page(_security(ctx).ban_list(), p)


def ban_add(ctx: AdminContext, p: dict) -> dict:
    try:
        return _security(ctx).ban_add(p["host"], p.get("secs"))
    except ValueError as exc:
        raise invalid_params("host", str(exc)) from None


def ban_remove(ctx: AdminContext, p: dict) -> dict:
    try:
        was = _security(ctx).ban_remove(p["host"])
    except ValueError as exc:
        raise invalid_params("host", str(exc)) from None
    if not was:
        raise RpcError(NOT_FOUND, f"{p['host']} is not banned", {"kind": "ban", "key": p["host"]})
    return {"host": p["host"], "removed": True}


def ban_counters(ctx: AdminContext, p: dict) -> list:
    return _page(_security(ctx).counters(), p)


def ban_trusted(ctx: AdminContext, p: dict) -> list:
    return _security(ctx).trusted_list()


def ban_trust(ctx: AdminContext, p: dict) -> dict:
    try:
        return _security(ctx).trust(p["network"], p.get("note", ""))
    except ValueError as exc:
        raise invalid_params("network", str(exc)) from None


def ban_untrust(ctx: AdminContext, p: dict) -> dict:
    try:
        found = _security(ctx).untrust(p["network"])
    except ValueError as exc:
        raise invalid_params("network", str(exc)) from None
    if not found:
        raise RpcError(NOT_FOUND, f"{p['network']} is not an operator-trusted network",
                       {"kind": "trusted", "key": p["network"]})
    return {"network": p["network"], "removed": True}


HOST = Param("host", "str", required=True, help="source IP address (IPv4 or IPv6)")
NETWORK = Param("network", "str", required=True, help="network (10.0.0.0/8, 2001:db8::/32) or address")

_add("ban.list", ban_list, "Sources banned now (silently dropped): reason, seconds left, packets dropped.",
     *PAGE, columns=("host", "reason", "expires_in", "dropped"))
_add("ban.add", ban_add, "Ban a source address (its packets are dropped unanswered until the ban ends).",
     HOST, Param("secs", "int", help="length of the ban in seconds ([security] ban_secs if absent)",
                 min=1, max=86400 * 365))
_add("ban.remove", ban_remove, "Lift the ban of a source address and reset its failure counters.", HOST)
_add("ban.counters", ban_counters,
     "Digest failure counters in their current window (per source, source and user, user) "
     "and blocked (source, user) pairs.", *PAGE, columns=("kind", "key", "count"))
_add("ban.trusted", ban_trusted,
     "Networks never counted nor banned: from the settings, added by the operator, trunks.",
     columns=("network", "source", "note"))
_add("ban.trust", ban_trust, "Trust a network (stored; never counted nor banned).",
     NETWORK, Param("note", "str", help="why (shown by ban.trusted)"))
_add("ban.untrust", ban_untrust, "Remove a network the operator trusted.", NETWORK)


# -- toll-fraud limits ---------------------------------------------------------------------

def _tenant(ctx: AdminContext, name: str) -> str:
    prov = _need(ctx, "provisioning", "provisioning")
    if name not in {t.name for t in prov.directory.tenants()}:
        raise RpcError(NOT_FOUND, f"tenant {name!r} not found", {"kind": "tenant", "key": name})
    return name


def toll_get(ctx: AdminContext, p: dict) -> dict:
    return _need(ctx, "toll", "toll limits").get(_tenant(ctx, p["tenant"]))


def toll_set(ctx: AdminContext, p: dict) -> dict:
    toll = _need(ctx, "toll", "toll limits")
    tenant = _tenant(ctx, p.pop("tenant"))
    if not p:
        raise invalid_params("params", f"give at least one of {', '.join(TOLL_KEYS)}")
    for key in ("allow_prefixes", "deny_prefixes"):
        for v in p.get(key, ()):
            if not isinstance(v, str) or not v or not (v.isdigit() or v[0] == "+" and v[1:].isdigit()):
                raise invalid_params(key, f"entries must be digit strings, optionally starting with +, got {v!r}")
    night = p.get("night_hours")
    if isinstance(night, str) and night and not re.match(NIGHT_RE, night):
        raise invalid_params("night_hours", f'must be "HH:MM-HH:MM" or "", got {night!r}')
    return toll.set(tenant, p)


def toll_reset(ctx: AdminContext, p: dict) -> dict:
    toll = _need(ctx, "toll", "toll limits")
    tenant = _tenant(ctx, p["tenant"])
    return {"tenant": tenant, "reset": toll.reset(tenant), **toll.get(tenant)}


_TOLL_HELP = {
    "max_outbound_per_user": "concurrent trunk calls of one user (0: no limit)",
    "max_outbound_per_tenant": "concurrent trunk calls of the tenant (0: no limit)",
    "calls_per_hour_user": "trunk call attempts of one user in any 60 minutes (0: no limit)",
    "calls_per_hour_tenant": "trunk call attempts of the tenant in any 60 minutes (0: no limit)",
    "allow_international": "numbers outside the home country",
    "allow_premium": "premium and high-risk ranges ([security.toll] premium_prefixes)",
    "max_call_secs": "an answered trunk call is hung up after this many seconds (0: never)",
    "on_rate_exceeded": "refuse (the attempt) or block (the tenant: trunk calls hung up and refused)",
    "blocked": "the tenant's trunk calls are refused (set by on_rate_exceeded = block; false lifts it)",
    "allow_prefixes": "normalised prefixes always allowed, e.g. [\"+49\"]",
    "deny_prefixes": "normalised prefixes always refused",
    "minutes_per_hour_user": "talk minutes through the trunk of one user in any 60 minutes (0: no limit)",
    "minutes_per_hour_tenant": "talk minutes through the trunk of the tenant in any 60 minutes (0: no limit)",
    "minutes_per_day_user": "talk minutes through the trunk of one user in any 24 hours (0: no limit)",
    "minutes_per_day_tenant": "talk minutes through the trunk of the tenant in any 24 hours (0: no limit)",
    "night_hours": "\"HH:MM-HH:MM\" in the tenant's zone: only national numbers then (\"\": off)",
}
_TOLL_PARAMS = tuple(
    Param(name, {int: "int", bool: "bool", tuple: "array", str: "str"}[kind], help=_TOLL_HELP[name],
          **({"min": 0, "max": 1_000_000} if kind is int else {}),
          **({"choices": RATE_ACTIONS} if name == "on_rate_exceeded" else {}))
    for name, kind in TOLL_KEYS.items())
TENANT = Param("tenant", "str", required=True, help="tenant name")

_add("toll.get", toll_get, "A tenant's toll-fraud limits in force, its overrides, and live counts.", TENANT)
_add("toll.set", toll_set, "Override toll-fraud limits of a tenant (stored; wins over the settings file).",
     TENANT, *_TOLL_PARAMS)
_add("toll.reset", toll_reset, "Drop a tenant's overrides: the settings file's limits apply again.", TENANT)


def tls_reload(ctx: AdminContext, p: dict) -> dict:
    return _need(ctx, "reload_tls", "tls reload")()


_add("tls.reload", tls_reload,
     "Read the TLS certificate and key files again: new connections get them, established ones "
     "keep theirs; a broken file is refused (-32003) and the old certificate stays.")
