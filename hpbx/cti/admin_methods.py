"""CTI entries of the admin method table (``hpbx.admin.methods`` imports this at its end):
``cti.session.list``, and ``user.get`` answers with the user's CTI and phone status."""
from __future__ import annotations

import asyncio
import dataclasses

from hpbx.admin import methods as M


async def cti_session_list(ctx, p):
    cti = M._need(ctx, "cti", "cti")
    out = []
    for username, sessions in sorted(cti.sessions.items()):
        for s in sessions:
            if p.get("tenant") not in (None, s.tenant):
                continue
            out.append({"user": username, "tenant": s.tenant, "since": s.since,
                        "source": f"{s.peer[0]}:{s.peer[1]}" if s.peer else ""})
    return M._page(out, p)


_user_get = M.METHODS["user.get"]


async def user_get(ctx, p):
    doc = _user_get.handler(ctx, p)
    if asyncio.iscoroutine(doc):
        doc = await doc
    if isinstance(doc, dict) and "username" in doc:
        name = doc["username"]
        doc = dict(doc)
        doc["cti_online"] = bool(ctx.cti is not None and ctx.cti.online(name))
        doc["cti_sessions"] = len(ctx.cti.sessions.get(name, ())) if ctx.cti is not None else 0
        regs = list(ctx.list_registrations(None, name)) if ctx.list_registrations is not None else []
        doc["phone_online"] = bool(regs)
        doc["phone_addresses"] = sorted({r.get("source", "").rsplit(":", 1)[0] for r in regs} - {""})
    return doc


M.METHODS["user.get"] = dataclasses.replace(
    _user_get, handler=user_get,
    help=_user_get.help + " Also: cti_online, cti_sessions, phone_online, phone_addresses.")
M._add("cti.session.list", cti_session_list, "The logged-in CTI sessions: user, tenant, since, source.",
       M.Param("tenant", "str", help="only this tenant"), *M.PAGE, columns=("user", "tenant", "source", "since"))

from hpbx.admin import scope as _scope  # noqa: E402

_scope.RULES["cti.session.list"] = "tenant"  # a tenant admin sees its own tenant's sessions


def licence_get(ctx, p):
    """Licences used/total (hpbx.pbx.licence): per tenant, and server-wide for the operator."""
    from hpbx.pbx import licence
    prov = M._need(ctx, "provisioning", "provisioning")
    tenant = p.get("tenant")
    if tenant is not None and prov.directory.objects(tenant) is None:
        from hpbx.admin.protocol import NOT_FOUND, RpcError
        raise RpcError(NOT_FOUND, f"tenant {tenant!r} not found", {"kind": "tenant", "key": tenant})
    return licence.summary(prov.directory, tenant)


M._add("licence.get", licence_get,
       "Licences used/total: users and CTI users per tenant (and server-wide without tenant), "
       "with the seed's line \"Lic: used/total\".",
       M.Param("tenant", "str", help="only this tenant"))
_scope.RULES["licence.get"] = "tenant"
