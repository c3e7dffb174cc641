"""Licences (FEATURES 20, issue 14): how many users and CTI users a tenant and the server may have.

Two limits each, 0 meaning none: the tenant's ``licence_users`` / ``licence_cti_users`` and the
server's ``[licence] users`` / ``cti_users`` (settings, set into ``LIMITS`` at start and on
reload). Every provisioning change goes through ``check`` before it is written: a change that
*raises* a count beyond a limit is refused with a ValidationError naming the limit (creating a
user: field ``username``; switching CTI access on: ``flags.cti_access``); nothing is written.
A change that does not raise a count passes even when a limit was lowered below what exists,
so an administrator can still edit and delete users of a tenant over its licence.

``summary`` is what ``system.info`` shows: used/total per tenant and server-wide, and the seed's
line "Lic: 10/6" (users used/licensed; "-" where there is no limit), with the CTI users beside.
"""
from __future__ import annotations

from dataclasses import dataclass

from hpbx.errors import ValidationError


@dataclass(slots=True)
class Limits:
    users: int = 0
    cti_users: int = 0


LIMITS = Limits()


def configure(settings) -> None:
    LIMITS.users = settings.licence.users
    LIMITS.cti_users = settings.licence.cti_users


def _counts(users) -> tuple[int, int]:
    n = cti = 0
    for u in users:
        n += 1
        cti += u.flags.cti_access
    return n, cti


def check(directory, old, new) -> None:
    """Refuse the change of one tenant's objects (``old`` -> ``new``) if it raises a count over
    a limit."""
    t = new.tenant
    if not (t.licence_users or t.licence_cti_users or LIMITS.users or LIMITS.cti_users):
        return
    if old is not None and new.users is old.users:
        return  # the users were not touched
    old_n, old_cti = _counts(old.users.values()) if old is not None else (0, 0)
    new_n, new_cti = _counts(new.users.values())
    name = t.name
    if new_n > old_n and t.licence_users and new_n > t.licence_users:
        raise ValidationError("username", f"user licence of tenant {name} exhausted: it is licensed for "
                                          f"{t.licence_users} users (licence_users)")
    if new_cti > old_cti and t.licence_cti_users and new_cti > t.licence_cti_users:
        raise ValidationError("flags.cti_access", f"CTI licence of tenant {name} exhausted: it is licensed for "
                                                  f"{t.licence_cti_users} CTI users (licence_cti_users)")
    if (new_n > old_n and LIMITS.users) or (new_cti > old_cti and LIMITS.cti_users):
        all_n, all_cti = _server_counts(directory)
        if new_n > old_n and LIMITS.users and all_n - old_n + new_n > LIMITS.users:
            raise ValidationError("username", f"server user licence exhausted: {LIMITS.users} users are "
                                              "licensed ([licence] users)")
        if new_cti > old_cti and LIMITS.cti_users and all_cti - old_cti + new_cti > LIMITS.cti_users:
            raise ValidationError("flags.cti_access", f"server CTI licence exhausted: {LIMITS.cti_users} CTI "
                                                      "users are licensed ([licence] cti_users)")


def _server_counts(directory) -> tuple[int, int]:
    n = cti = 0
    for t in directory.tenants():
        a, b = _counts(directory.users_of(t.name))
        n += a
        cti += b
    return n, cti


def _pair(used: int, total: int) -> dict:
    return {"used": used, "total": total or None, "text": f"{used}/{total or '-'}"}


def summary(directory, tenant: str | None = None) -> dict:
    tenants = {}
    all_n = all_cti = 0
    for t in sorted(directory.tenants(), key=lambda t: t.name):
        n, cti = _counts(directory.users_of(t.name))
        all_n += n
        all_cti += cti
        if tenant is None or t.name == tenant:
            tenants[t.name] = {"users": _pair(n, t.licence_users), "cti_users": _pair(cti, t.licence_cti_users)}
    doc = {"tenants": tenants}
    if tenant is None:
        doc["users"] = _pair(all_n, LIMITS.users)
        doc["cti_users"] = _pair(all_cti, LIMITS.cti_users)
        doc["line"] = f"Lic: {doc['users']['text']}, CTI {doc['cti_users']['text']}"
    else:
        t = tenants.get(tenant)
        if t is not None:
            doc["line"] = f"Lic: {t['users']['text']}, CTI {t['cti_users']['text']}"
    return doc


def cti_login_refusal(tenant, online_in_tenant: int, online_total: int) -> str:
    """Why a new CTI user may not log in now ("" = it may): a licence lowered below the users
    who have CTI access still caps the users logged in at once."""
    if tenant is not None and tenant.licence_cti_users and online_in_tenant >= tenant.licence_cti_users:
        return (f"CTI licence of tenant {tenant.name}: {tenant.licence_cti_users} CTI users are licensed "
                "and as many are logged in")
    if LIMITS.cti_users and online_total >= LIMITS.cti_users:
        return f"server CTI licence: {LIMITS.cti_users} CTI users are licensed and as many are logged in"
    return ""
