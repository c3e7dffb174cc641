"""Who is calling an admin method, and which tenant a call touches.

Every admin call runs for a principal: ``SocketPeer`` (a process on the admin socket, allowed by
its uid: every method) or ``WebAccount`` (an account of the web face: an operator may call
every method, a tenant admin only the methods of ``RULES`` and only on its own tenant). The
rule of a method says where its tenant comes from; ``resolve`` answers that tenant (or "" for
server-wide calls), which is also what the audit log records.

A tenant admin asking for another tenant's object gets "not found" (as if it did not exist, so
names cannot be probed); naming another tenant in a parameter, or calling a method that has no
rule, gets "permission denied". Methods added to the table without a rule are operator-only.
"""
from __future__ import annotations

import tomllib
from typing import Any

from hpbx.admin.protocol import NOT_FOUND, PERMISSION_DENIED, RpcError

# rule -> how the tenant of a call is found
#   tenant:  the ``tenant`` parameter (a tenant admin's is filled in when absent, so lists and
#            filters never reach further than its own tenant)
#   name:    the ``name`` parameter names the tenant itself
#   user:    the ``username`` parameter names a user; number: ``number``; phone: ``mac``;
#   call:    ``call_id`` of a live call
#   toml:    the ``tenant`` named inside the ``toml`` parameter
#   server:  server-wide and harmless (system.info)
#   filter:  server-wide list filtered to the tenant afterwards (tenant.list)
RULES: dict[str, str] = {
    "registration.list": "tenant", "call.list": "tenant", "call.hangup": "call", "cdr.list": "tenant",
    "cdr.export": "tenant",
    "system.info": "server",
    "tenant.get": "name", "tenant.update": "name", "tenant.export": "name", "tenant.list": "filter",
    "tenant.import": "toml",
    "user.create": "tenant", "user.list": "tenant",
    "user.get": "user", "user.update": "user", "user.delete": "user",
    "number.create": "tenant", "number.list": "tenant", "number.find_unused": "tenant",
    "number.search": "tenant",
    "number.get": "number", "number.update": "number", "number.delete": "number",
    "number.set_slots": "number", "number.simulate": "number",
    "phone.create": "tenant", "phone.list": "tenant", "phone.export": "tenant", "phone.import": "toml",
    "phone.get": "phone", "phone.update": "phone", "phone.delete": "phone",
    "audit.list": "tenant", "dashboard.get": "tenant",
    "mail.queue": "tenant",
}
for _noun in ("group", "trunk", "switch", "announcement"):
    for _verb in ("create", "get", "update", "delete", "list"):
        RULES[f"{_noun}.{_verb}"] = "tenant"
RULES["switch.set"] = RULES["switch.clear"] = "tenant"


# parameters that name files on the server's machine (read by the server): socket peers only
LOCAL_ONLY_PARAMS = {"announcement.create": ("path",), "announcement.update": ("path",)}

# operator-only methods whose tenant the audit log still records
OPERATOR_RULES = {"tenant.create": "name", "tenant.delete": "name", "admin.create": "tenant",
                  "admin.update": "tenant"}


def _not_found(kind: str, key: Any) -> RpcError:
    return RpcError(NOT_FOUND, f"{kind} {key!r} not found", {"kind": kind, "key": key})


def resolve(ctx, method: str, params: dict, rule: str | None = None) -> str:
    """The tenant a call touches ("" when server-wide or unknown). Never raises for a missing
    object: the handler then answers its own "not found"."""
    rule = rule or RULES.get(method) or OPERATOR_RULES.get(method, "")
    directory = ctx.provisioning.directory if ctx.provisioning is not None else None
    if rule == "tenant":
        return params.get("tenant") or ""
    if rule == "name":
        return params.get("name") or ""
    if directory is None:
        return ""
    if rule == "user":
        u = directory.user(params.get("username", ""))
        return u.tenant if u is not None else ""
    if rule == "number":
        n = directory.number(params.get("number", ""))
        return n.tenant if n is not None else ""
    if rule == "phone" and ctx.phones is not None:
        try:
            return ctx.phones.get_phone(params.get("mac", "")).tenant
        except Exception:
            return ""
    if rule == "call" and ctx.list_calls is not None:
        for c in ctx.list_calls():
            if c.get("call_id") == params.get("call_id"):
                return c.get("tenant") or ""
        return ""
    if rule == "toml":
        try:
            doc = tomllib.loads(params.get("toml", ""))
        except tomllib.TOMLDecodeError:
            return ""
        t = doc.get("tenant")
        name = t.get("name") if isinstance(t, dict) else t
        return name if isinstance(name, str) else ""
    return ""


def _current_files(ctx, tenant: str) -> set[str]:
    objs = ctx.provisioning.directory.objects(tenant) if ctx.provisioning is not None else None
    return {a.file for a in objs.announcements.values()} if objs is not None else set()


def _own_audio_only(ctx, own: str, text: str) -> None:
    """An import of a tenant admin names audio files of its own folder only (or the files its
    announcements already have, so that its own export imports again)."""
    from hpbx.web.media import own_file, tenant_folder
    current = _current_files(ctx, own)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return  # the import itself says what is wrong
    items = doc.get("announcements")
    for i, a in enumerate(items if isinstance(items, list) else []):
        file = a.get("file") if isinstance(a, dict) else None
        if isinstance(file, str) and file and not own_file(own, file) and file not in current:
            raise RpcError(PERMISSION_DENIED, f"permission denied: file must lie in {tenant_folder(own)}",
                           {"field": f"announcements[{i}].file", "reason": f"must lie in {tenant_folder(own)}"})


class SocketPeer:
    """A process on the admin socket: every method, every tenant."""

    def __init__(self, uid: int):
        self.name = f"uid:{uid}"

    def fill(self, method: str, params: Any) -> Any:
        return params

    def authorize(self, ctx, method: str, params: dict) -> str:
        return resolve(ctx, method, params)

    def filter(self, ctx, method: str, result: Any) -> Any:
        return result


class WebAccount:
    """A logged-in account of the web face (hpbx.admin.accounts.Account)."""

    def __init__(self, account):
        self.account = account
        self.name = f"web:{account.username}"

    def fill(self, method: str, params: Any) -> Any:
        """A tenant admin's own tenant stands in for a ``tenant`` it did not give."""
        if self.account.operator or RULES.get(method) != "tenant":
            return params
        if params is None:
            return {"tenant": self.account.tenant}
        if isinstance(params, dict) and "tenant" not in params:
            return {**params, "tenant": self.account.tenant}
        return params

    def authorize(self, ctx, method: str, params: dict) -> str:
        for name in LOCAL_ONLY_PARAMS.get(method, ()):
            if name in params:
                raise RpcError(PERMISSION_DENIED, f"permission denied: {name} is read on the server's "
                                                  "machine: only the admin socket may give it",
                               {"field": name, "reason": "admin socket only"})
        if self.account.operator:
            return resolve(ctx, method, params)
        own = self.account.tenant
        rule = RULES.get(method)
        if rule is None:
            raise RpcError(PERMISSION_DENIED, f"permission denied: {method} is for operators only",
                           {"method": method})
        if rule == "tenant":
            if "tenant" not in params:
                params["tenant"] = own
            elif params["tenant"] != own:
                raise RpcError(PERMISSION_DENIED, f"permission denied: tenant {params['tenant']!r} is not yours",
                               {"field": "tenant", "reason": "not your tenant"})
            if method in ("announcement.create", "announcement.update") and params.get("file"):
                # audio of its own folder only: no other tenant's file plays through its numbers
                from hpbx.web.media import own_file, tenant_folder
                if not own_file(own, params["file"]) and params["file"] not in _current_files(ctx, own):
                    raise RpcError(PERMISSION_DENIED, f"permission denied: file must lie in {tenant_folder(own)}",
                                   {"field": "file", "reason": f"must lie in {tenant_folder(own)} (upload it on the page)"})
            return own
        if rule == "server":
            return ""
        if rule == "filter":
            return own
        if rule == "toml":
            named = resolve(ctx, method, params, rule)
            if named and named != own:
                raise RpcError(PERMISSION_DENIED, f"permission denied: tenant {named!r} is not yours",
                               {"field": "toml", "reason": "not your tenant"})
            if method == "tenant.import":
                _own_audio_only(ctx, own, params.get("toml", ""))
            return own
        found = resolve(ctx, method, params, rule)
        if found != own:
            if rule == "name":
                raise _not_found("tenant", params.get("name"))
            key = {"user": "username", "number": "number", "phone": "mac", "call": "call_id"}[rule]
            if found == "":
                return own  # does not exist at all: the handler says so
            raise _not_found(rule, params.get(key))
        return own

    def filter(self, ctx, method: str, result: Any) -> Any:
        if self.account.operator or RULES.get(method) != "filter":
            return result
        own = self.account.tenant
        return [r for r in result if isinstance(r, dict) and r.get("name", r.get("tenant")) == own]
