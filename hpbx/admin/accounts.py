"""Who may administer over the web face: admin accounts with roles, and the audit log.

Roles: ``operator`` (every tenant, every method) and ``tenant_admin`` (one tenant; what it may
call is decided per method in hpbx/web/roles.py). Passwords are kept only as scrypt hashes
(``hashlib.scrypt``, N=2^14, r=8, p=1, 16-byte salt), checked in constant time.

The audit log takes every change made through the admin dispatch, from the socket (``uid:N``)
or the web (``web:USERNAME``): who, when, the method, the tenant it touched and its parameters
with secrets blanked.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone

from hpbx.errors import NotFoundError, ValidationError

ROLES = ("operator", "tenant_admin")
SCRYPT_N, SCRYPT_R, SCRYPT_P = 1 << 14, 8, 1
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@+-]{0,63}")
SECRET_KEYS = frozenset({"password", "sip_password", "cti_password", "http_password"})
# verbs that change nothing: not audited
READ_VERBS = frozenset({"get", "list", "info", "export", "simulate", "search", "find_unused", "help"})


def hash_password(password: str, salt: bytes | None = None) -> str:
    salt = os.urandom(16) if salt is None else salt
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    return "scrypt${}${}${}${}${}".format(SCRYPT_N, SCRYPT_R, SCRYPT_P, base64.b64encode(salt).decode(),
                                          base64.b64encode(digest).decode())


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        want = base64.b64decode(digest)
        got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                             dklen=len(want))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, want)


# a hash of a random password: unknown accounts cost as much time as wrong passwords
_DUMMY_HASH = hash_password(base64.b64encode(os.urandom(12)).decode())


@dataclass(frozen=True, slots=True)
class Account:
    username: str
    role: str
    tenant: str = ""  # the tenant of a tenant_admin

    @property
    def operator(self) -> bool:
        return self.role == "operator"

    def to_dict(self) -> dict:
        return {"username": self.username, "role": self.role, "tenant": self.tenant}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def redact(params: dict) -> dict:
    """The parameters as logged: secrets blanked, long texts (TOML imports) cut."""
    out = {}
    for k, v in params.items():
        if k in SECRET_KEYS:
            out[k] = "***"
        elif isinstance(v, dict):
            out[k] = redact(v)
        elif isinstance(v, str) and len(v) > 2000:
            out[k] = v[:2000] + f"... ({len(v)} characters)"
        else:
            out[k] = v
    return out


class AccountService:
    def __init__(self, store, tenant_exists=lambda name: True):
        self.store = store
        self.tenant_exists = tenant_exists
        # listener(username) after an account was changed or deleted: the web face ends its
        # sessions and forgets cached credentials at once
        self.listeners: list = []

    def _changed(self, username: str) -> None:
        for listener in self.listeners:
            listener(username)

    def create(self, username: str, password: str, role: str, tenant: str = "") -> dict:
        if not _NAME_RE.fullmatch(username):
            raise ValidationError("username", f"{username!r} is not a valid account name (letters, digits, _.@+-)")
        if self.store.account_get(username) is not None:
            raise ValidationError("username", f"account {username!r} already exists")
        self._check(password, role, tenant)
        self.store.account_put(username, role, tenant if role == "tenant_admin" else "",
                               hash_password(password), _now())
        return Account(username, role, tenant if role == "tenant_admin" else "").to_dict()

    def _check(self, password: str | None, role: str, tenant: str) -> None:
        if password is not None and not 8 <= len(password) <= 256:
            raise ValidationError("password", "must be 8-256 characters")
        if role not in ROLES:
            raise ValidationError("role", f"{role!r} is not one of {', '.join(ROLES)}")
        if role == "tenant_admin":
            if not tenant:
                raise ValidationError("tenant", "a tenant_admin needs its tenant")
            if not self.tenant_exists(tenant):
                raise ValidationError("tenant", f"tenant {tenant!r} does not exist")
        elif tenant:
            raise ValidationError("tenant", "an operator has no tenant (it administers all)")

    def update(self, username: str, password: str | None = None, role: str | None = None,
               tenant: str | None = None) -> dict:
        row = self.store.account_get(username)
        if row is None:
            raise NotFoundError("admin", username)
        role = row["role"] if role is None else role
        tenant = (row["tenant"] if tenant is None else tenant) if role == "tenant_admin" else (tenant or "")
        self._check(password, role, tenant)
        pwhash = hash_password(password) if password is not None else row["pwhash"]
        self.store.account_put(username, role, tenant, pwhash, row["created_at"])
        self._changed(username)
        return Account(username, role, tenant).to_dict()

    def delete(self, username: str) -> dict:
        if not self.store.account_delete(username):
            raise NotFoundError("admin", username)
        self._changed(username)
        return {"username": username, "deleted": True}

    def list(self, tenant: str | None = None) -> list[dict]:
        return self.store.account_list(tenant)

    def authenticate(self, username: str, password: str) -> Account | None:
        """The account when the password is right; None otherwise (same cost either way).
        Blocking (scrypt): run it off the event loop."""
        row = self.store.account_get(username) if isinstance(username, str) else None
        ok = verify_password(password, row["pwhash"] if row else _DUMMY_HASH)
        if not ok or row is None:
            return None
        return Account(row["username"], row["role"], row["tenant"])

    def account(self, username: str) -> Account | None:
        row = self.store.account_get(username)
        return None if row is None else Account(row["username"], row["role"], row["tenant"])


class AuditLog:
    def __init__(self, store):
        self.store = store

    @staticmethod
    def is_change(method: str) -> bool:
        return method.rpartition(".")[2] not in READ_VERBS

    def record(self, who: str, method: str, tenant: str, params: dict, outcome: str = "ok") -> None:
        self.store.audit_add(_now(), who, method, tenant, redact(params), outcome)

    def list(self, **filters) -> list[dict]:
        return self.store.audit_list(**filters)
