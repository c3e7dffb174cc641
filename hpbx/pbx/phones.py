"""Phone provisioning records (FEATURES 19): which desk phone (by MAC) carries which users on
its account keys, its function keys, phonebook, time zone, language and transport, and the
credentials the phone uses to fetch its configuration.

``Phone.from_dict`` validates one record on its own (``ValidationError(field, reason)``);
``PhoneService`` checks it against the tenant (users, switches) and keeps every record in
memory over ``hpbx.store.phones.PhoneStore``. Templates render from ``Phone`` plus the
directory (hpbx/web/provisioning.py); nothing here knows HTTP.
"""
from __future__ import annotations

import re
import secrets
import tomllib
from dataclasses import dataclass, field
from typing import Any, Mapping
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import tomli_w

from hpbx.errors import NotFoundError, ValidationError

VENDORS = ("snom", "yealink")
LANGUAGES = ("en", "de", "fr", "it")
TRANSPORTS = ("udp", "tcp", "tls")
KEY_TYPES = ("blf", "switch", "pickup", "speeddial")
MAX_ACCOUNTS = 16
MAX_KEYS = 100
_MAC_RE = re.compile(r"[0-9a-f]{12}")
_VALUE_RE = re.compile(r"[A-Za-z0-9 _.+*#@:-]{1,64}")
_CRED_RE = re.compile(r"[A-Za-z0-9_.+-]{1,64}")
_URL_RE = re.compile(r"https?://[A-Za-z0-9._~:/?#@!$&'()*+,;=%-]{1,400}")


def normalize_mac(text: Any, name: str = "mac") -> str:
    """``00:15:65:AA:BB:CC``, ``00-15-65-aa-bb-cc`` or ``001565AABBCC`` -> ``001565aabbcc``."""
    if not isinstance(text, str):
        raise ValidationError(name, f"must be a string, got {text!r}")
    mac = text.lower().replace(":", "").replace("-", "")
    if not _MAC_RE.fullmatch(mac):
        raise ValidationError(name, f"{text!r} is not a MAC address (12 hex digits)")
    return mac


def _text(data: Mapping, key: str, path: str, default: str = "", pattern: re.Pattern | None = None,
          what: str = "") -> str:
    value = data.get(key, default)
    if value is None:
        value = default
    if not isinstance(value, str):
        raise ValidationError(f"{path}{key}", f"must be a string, got {value!r}")
    if any(ord(c) < 32 for c in value):
        raise ValidationError(f"{path}{key}", "contains control characters")
    if value and pattern is not None and not pattern.fullmatch(value):
        raise ValidationError(f"{path}{key}", f"{value!r} is not a valid {what or key}")
    return value


def _choice(data: Mapping, key: str, options: tuple, default: str, path: str = "") -> str:
    value = data.get(key, default)
    if value not in options:
        raise ValidationError(f"{path}{key}", f"{value!r} is not one of {', '.join(options)}")
    return value


@dataclass(frozen=True, slots=True)
class FunctionKey:
    type: str  # blf (a supervised user's lamp), switch (a special switch), pickup, speeddial
    value: str  # username, switch name, username, or number
    label: str = ""

    def to_dict(self) -> dict:
        return {"type": self.type, "value": self.value, "label": self.label}


@dataclass(frozen=True, slots=True)
class Phone:
    mac: str
    tenant: str
    vendor: str
    accounts: tuple[str, ...]  # usernames on account keys 1..n
    model: str = ""
    keys: tuple[FunctionKey, ...] = ()
    phonebook_url: str = ""  # "" = this server's phonebook of the tenant
    timezone: str = ""  # "" = the tenant's time zone
    language: str = "en"
    transport: str = "udp"
    http_user: str = ""  # credentials the phone fetches its files with
    http_password: str = ""

    @classmethod
    def from_dict(cls, data: Any, path: str = "") -> "Phone":
        if not isinstance(data, Mapping):
            raise ValidationError(path or "params", "must be an object")
        p = f"{path}." if path else ""
        known = {"mac", "tenant", "vendor", "model", "accounts", "keys", "phonebook_url", "timezone",
                 "language", "transport", "http_user", "http_password"}
        for k in data:
            if k not in known:
                raise ValidationError(f"{p}{k}", "unknown field")
        mac = normalize_mac(data.get("mac"), f"{p}mac")
        tenant = _text(data, "tenant", p)
        if not tenant:
            raise ValidationError(f"{p}tenant", "is required")
        accounts = data.get("accounts")
        if not isinstance(accounts, (list, tuple)) or not accounts:
            raise ValidationError(f"{p}accounts", "must be a non-empty list of usernames")
        if len(accounts) > MAX_ACCOUNTS:
            raise ValidationError(f"{p}accounts", f"at most {MAX_ACCOUNTS} account keys")
        for i, a in enumerate(accounts):
            if not isinstance(a, str) or not _CRED_RE.fullmatch(a):
                raise ValidationError(f"{p}accounts[{i}]", f"{a!r} is not a username")
            if a in accounts[:i]:
                raise ValidationError(f"{p}accounts[{i}]", f"{a!r} is listed twice")
        keys_raw = data.get("keys", [])
        if not isinstance(keys_raw, (list, tuple)) or len(keys_raw) > MAX_KEYS:
            raise ValidationError(f"{p}keys", f"must be a list of at most {MAX_KEYS} keys")
        keys = []
        for i, k in enumerate(keys_raw):
            kp = f"{p}keys[{i}]."
            if not isinstance(k, Mapping):
                raise ValidationError(f"{p}keys[{i}]", "must be an object {type, value, label}")
            for name in k:
                if name not in ("type", "value", "label"):
                    raise ValidationError(f"{kp}{name}", "unknown field")
            value = _text(k, "value", kp, pattern=_VALUE_RE, what="key value")
            if not value:
                raise ValidationError(f"{kp}value", "is required")
            keys.append(FunctionKey(_choice(k, "type", KEY_TYPES, "blf", kp), value,
                                    _text(k, "label", kp, pattern=_VALUE_RE, what="label")))
        tz = _text(data, "timezone", p)
        if tz:
            try:
                ZoneInfo(tz)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValidationError(f"{p}timezone", f"{tz!r} is not a known time zone") from None
        return cls(
            mac=mac, tenant=tenant, vendor=_choice(data, "vendor", VENDORS, "yealink", p),
            accounts=tuple(accounts), model=_text(data, "model", p, pattern=_VALUE_RE, what="model"),
            keys=tuple(keys),
            phonebook_url=_text(data, "phonebook_url", p, pattern=_URL_RE, what="http(s) URL"),
            timezone=tz, language=_choice(data, "language", LANGUAGES, "en", p),
            transport=_choice(data, "transport", TRANSPORTS, "udp", p),
            http_user=_text(data, "http_user", p, pattern=_CRED_RE, what="user name"),
            http_password=_text(data, "http_password", p, pattern=_CRED_RE, what="password"),
        )

    def to_dict(self, with_tenant: bool = True) -> dict:
        d = {"mac": self.mac, "tenant": self.tenant, "vendor": self.vendor, "model": self.model,
             "accounts": list(self.accounts), "keys": [k.to_dict() for k in self.keys],
             "phonebook_url": self.phonebook_url, "timezone": self.timezone, "language": self.language,
             "transport": self.transport, "http_user": self.http_user, "http_password": self.http_password}
        if not with_tenant:
            del d["tenant"]
        return d


class PhoneService:
    """Every phone record, validated against the current directory of ``provisioning``."""

    def __init__(self, store, provisioning):
        self.store = store
        self.provisioning = provisioning
        self.phones: dict[str, Phone] = {}
        for doc in store.load():
            phone = Phone.from_dict(doc)
            self.phones[phone.mac] = phone
        provisioning.subscribe(self.prune)

    def _check(self, phone: Phone, path: str = "") -> None:
        p = f"{path}." if path else ""
        directory = self.provisioning.directory
        objs = directory.objects(phone.tenant)
        if objs is None:
            raise ValidationError(f"{p}tenant", f"tenant {phone.tenant!r} does not exist")
        for i, a in enumerate(phone.accounts):
            if a not in objs.users:
                raise ValidationError(f"{p}accounts[{i}]", f"user {a!r} does not exist in tenant {phone.tenant!r}")
        for i, k in enumerate(phone.keys):
            if k.type in ("blf", "pickup") and k.value not in objs.users:
                raise ValidationError(f"{p}keys[{i}].value",
                                      f"user {k.value!r} does not exist in tenant {phone.tenant!r}")
            if k.type == "switch" and k.value not in objs.switches:
                raise ValidationError(f"{p}keys[{i}].value",
                                      f"switch {k.value!r} does not exist in tenant {phone.tenant!r}")

    @staticmethod
    def _with_credentials(phone: Phone) -> Phone:
        if phone.http_user and phone.http_password:
            return phone
        d = phone.to_dict()
        d["http_user"] = phone.http_user or phone.mac
        d["http_password"] = phone.http_password or secrets.token_urlsafe(12)
        return Phone.from_dict(d)

    def _write(self, phones: list[Phone], delete: list[str] = ()) -> None:
        self.store.put_many([ph.to_dict() for ph in phones], list(delete))
        for mac in delete:
            self.phones.pop(mac, None)
        for ph in phones:
            self.phones[ph.mac] = ph

    def get_phone(self, mac: str) -> Phone:
        mac = normalize_mac(mac)
        phone = self.phones.get(mac)
        if phone is None:
            raise NotFoundError("phone", mac)
        return phone

    def phone_create(self, data: dict) -> dict:
        phone = Phone.from_dict(data)
        if phone.mac in self.phones:
            raise ValidationError("mac", f"phone {phone.mac} is already provisioned")
        self._check(phone)
        phone = self._with_credentials(phone)
        self._write([phone])
        return phone.to_dict()

    def phone_get(self, mac: str) -> dict:
        return self.get_phone(mac).to_dict()

    def phone_update(self, mac: str, changes: dict) -> dict:
        current = self.get_phone(mac)
        merged = {**current.to_dict(), **changes}
        if normalize_mac(merged["mac"]) != current.mac:
            raise ValidationError("mac", "cannot be changed (it is the object's key); delete and create instead")
        if merged["tenant"] != current.tenant:
            raise ValidationError("tenant", "cannot be changed; delete and create instead")
        phone = Phone.from_dict(merged)
        self._check(phone)
        phone = self._with_credentials(phone)
        self._write([phone])
        return phone.to_dict()

    def phone_delete(self, mac: str) -> dict:
        phone = self.get_phone(mac)
        self._write([], [phone.mac])
        return {"mac": phone.mac, "deleted": True}

    def phone_list(self, tenant: str | None = None) -> list[dict]:
        return [ph.to_dict() for ph in sorted(self.phones.values(), key=lambda p: p.mac)
                if tenant is None or ph.tenant == tenant]

    def phone_export(self, tenant: str) -> str:
        """The tenant's phones as TOML (``[[phones]]`` tables, the format phone_import reads)."""
        items = [ph.to_dict(with_tenant=False) for ph in sorted(self.phones.values(), key=lambda p: p.mac)
                 if ph.tenant == tenant]
        return tomli_w.dumps({"tenant": tenant, "phones": items})

    def phone_import(self, text: str, replace: bool = False) -> dict:
        """``tenant = "x"`` plus ``[[phones]]``, all in one change; ``replace``: the tenant's
        other phones are deleted in the same change."""
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ValidationError("toml", f"invalid TOML: {exc}") from None
        for key in doc:
            if key not in ("tenant", "phones"):
                raise ValidationError(key, "unknown key (expected tenant and [[phones]])")
        tenant = doc.get("tenant")
        if not isinstance(tenant, str) or not tenant:
            raise ValidationError("tenant", "is required")
        items = doc.get("phones", [])
        if not isinstance(items, list):
            raise ValidationError("phones", "must be a list of tables")
        phones, seen = [], set()
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise ValidationError(f"phones[{i}]", "must be a table")
            if item.get("tenant", tenant) != tenant:
                raise ValidationError(f"phones[{i}].tenant", f"does not match tenant {tenant!r}")
            phone = Phone.from_dict({**item, "tenant": tenant}, f"phones[{i}]")
            if phone.mac in seen:
                raise ValidationError(f"phones[{i}].mac", f"{phone.mac} appears twice")
            other = self.phones.get(phone.mac)
            if other is not None and other.tenant != tenant:
                raise ValidationError(f"phones[{i}].mac", f"{phone.mac} belongs to another tenant")
            if other is not None and not replace:
                raise ValidationError(f"phones[{i}].mac", f"phone {phone.mac} is already provisioned")
            self._check(phone, f"phones[{i}]")
            seen.add(phone.mac)
            phones.append(self._with_credentials(phone))
        delete = [m for m, ph in self.phones.items() if replace and ph.tenant == tenant and m not in seen]
        self._write(phones, delete)
        return {"tenant": tenant, "phones": len(phones), "deleted": len(delete)}

    def prune(self, directory, removed=()) -> None:
        """After a provisioning change: drop the phones of tenants that no longer exist."""
        gone = [m for m, ph in self.phones.items() if directory.objects(ph.tenant) is None]
        if gone:
            self._write([], gone)
