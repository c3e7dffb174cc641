"""Toll-fraud limits on calls that leave through a trunk: destination policy (national,
international, premium; allow and deny prefixes), concurrent trunk calls per user and per
tenant, and call attempts per hour per user and per tenant.

Limits come from ``[security.toll]`` (defaults, per tenant ``[security.toll.tenants.NAME]``);
``toll.set`` over admin overrides them per tenant, stored, and wins over the file. A refusal
is ``Refusal(status 403, reason, rule)`` and a security event:

    SECURITY event=toll_refused src=192.0.2.7 tenant=acme user="anna" dialled=0901123456 rule=premium

Numbers are normalised first: ``+CC…`` stays, ``00CC…`` becomes ``+CC…``, a national ``0N…``
becomes ``+<country_code>N…``; anything else (short codes) counts as national.
"""
from __future__ import annotations

import collections
import logging
import time
from dataclasses import dataclass, replace

import orjson

from hpbx.security.config import TOLL_KEYS, TollLimits

log = logging.getLogger("hpbx.security")

HOUR = 3600.0


@dataclass(frozen=True, slots=True)
class Refusal:
    status: int
    reason: str
    rule: str


def normalise(number: str, country_code: str) -> str:
    digits = "".join(c for c in number if c.isdigit() or c == "+")
    if digits.startswith("+"):
        return "+" + digits[1:].replace("+", "")
    if digits.startswith("00"):
        return "+" + digits[2:]
    if digits.startswith("0"):
        return f"+{country_code}{digits[1:]}"
    return digits


def _clean(text) -> str:
    text = "" if text is None else str(text)
    return "".join(c if 32 <= ord(c) < 127 and c not in '"\\ ' else "?" for c in text)[:64]


class TollPolicy:
    def __init__(self, settings, store=None, clock=time.time):
        self.store = store
        self.clock = clock
        self._overrides: dict[str, dict] = {}  # tenant -> {key: value} set over admin
        self._held: dict[str, tuple[str, str | None]] = {}  # call id -> (tenant, user)
        self._live_tenant: collections.Counter = collections.Counter()
        self._live_user: collections.Counter = collections.Counter()
        self._attempts_tenant: dict[str, collections.deque] = {}
        self._attempts_user: dict[tuple[str, str], collections.deque] = {}
        self.stats = {"toll_admitted": 0, "toll_refused": 0}
        self.configure(settings)
        if store is not None:
            for tenant, doc in store.toll_overrides():
                self._overrides[tenant] = orjson.loads(doc)

    def configure(self, settings) -> None:
        self.settings = settings.security.toll

    # ---- the limits in force
    def limits(self, tenant: str) -> TollLimits:
        base = self.settings.limits(tenant)
        override = self._overrides.get(tenant)
        if not override:
            return base
        values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in override.items()
                  if k in TOLL_KEYS}
        return replace(base, **values)

    def classify(self, number: str) -> tuple[str, str]:
        """(normalised number, "national" | "international" | "premium")."""
        toll = self.settings
        norm = normalise(number, toll.country_code)
        if any(norm.startswith(p) for p in toll.premium_prefixes):
            return norm, "premium"
        if norm.startswith("+") and not norm.startswith("+" + toll.country_code):
            return norm, "international"
        return norm, "national"

    # ---- a call towards a trunk
    def admit(self, call_id: str, tenant: str, user: str | None, number: str, src=None) -> Refusal | None:
        """May call ``call_id`` of ``tenant`` (placed by ``user``, or None for a diversion)
        ring ``number`` through the trunk? The first admitted external target of a call
        holds one concurrent slot until ``release(call_id)``."""
        limits = self.limits(tenant)
        norm, kind = self.classify(number)
        refusal = self._destination(limits, norm, kind)
        if refusal is None and call_id not in self._held:
            refusal = self._capacity(limits, tenant, user)
        if refusal is not None:
            self.stats["toll_refused"] += 1
            log.warning('SECURITY event=toll_refused src=%s tenant=%s user="%s" dialled=%s rule=%s',
                        src[0] if src else "-", _clean(tenant), _clean(user), _clean(number),
                        refusal.rule)
            return refusal
        if call_id not in self._held:
            now = self.clock()
            self._held[call_id] = (tenant, user)
            self._live_tenant[tenant] += 1
            self._attempts_tenant.setdefault(tenant, collections.deque()).append(now)
            if user is not None:
                self._live_user[(tenant, user)] += 1
                self._attempts_user.setdefault((tenant, user), collections.deque()).append(now)
        self.stats["toll_admitted"] += 1
        return None

    def release(self, call_id: str) -> None:
        held = self._held.pop(call_id, None)
        if held is None:
            return
        tenant, user = held
        self._live_tenant[tenant] -= 1
        if self._live_tenant[tenant] <= 0:
            del self._live_tenant[tenant]
        if user is not None:
            key = (tenant, user)
            self._live_user[key] -= 1
            if self._live_user[key] <= 0:
                del self._live_user[key]

    @staticmethod
    def _destination(limits: TollLimits, norm: str, kind: str) -> Refusal | None:
        if any(norm.startswith(p) for p in limits.deny_prefixes):
            return Refusal(403, "Destination not allowed", "deny_prefix")
        if any(norm.startswith(p) for p in limits.allow_prefixes):
            return None
        if kind == "premium" and not limits.allow_premium:
            return Refusal(403, "Premium destinations not allowed", "premium")
        if kind == "international" and not limits.allow_international:
            return Refusal(403, "International calls not allowed", "international")
        return None

    def _capacity(self, limits: TollLimits, tenant: str, user: str | None) -> Refusal | None:
        if user is not None and limits.max_outbound_per_user and \
                self._live_user[(tenant, user)] >= limits.max_outbound_per_user:
            return Refusal(403, "Too many outbound calls of this user", "max_outbound_per_user")
        if limits.max_outbound_per_tenant and self._live_tenant[tenant] >= limits.max_outbound_per_tenant:
            return Refusal(403, "Too many outbound calls of this tenant", "max_outbound_per_tenant")
        now = self.clock()
        if user is not None and limits.calls_per_hour_user and \
                self._recent(self._attempts_user.get((tenant, user)), now) >= limits.calls_per_hour_user:
            return Refusal(403, "Outbound call rate of this user exceeded", "calls_per_hour_user")
        if limits.calls_per_hour_tenant and \
                self._recent(self._attempts_tenant.get(tenant), now) >= limits.calls_per_hour_tenant:
            return Refusal(403, "Outbound call rate of this tenant exceeded", "calls_per_hour_tenant")
        return None

    @staticmethod
    def _recent(attempts: collections.deque | None, now: float) -> int:
        if not attempts:
            return 0
        while attempts and now - attempts[0] >= HOUR:
            attempts.popleft()
        return len(attempts)

    # ---- admin
    def get(self, tenant: str) -> dict:
        now = self.clock()
        return {"tenant": tenant, "limits": self.limits(tenant).as_dict(),
                "overrides": dict(self._overrides.get(tenant, {})),
                "outbound_calls": self._live_tenant[tenant],
                "attempts_last_hour": self._recent(self._attempts_tenant.get(tenant), now),
                "users": {user: {"outbound_calls": self._live_user[(t, user)],
                                 "attempts_last_hour": self._recent(q, now)}
                          for (t, user), q in self._attempts_user.items() if t == tenant}}

    def set(self, tenant: str, values: dict) -> dict:
        """Override limits of ``tenant`` (stored); values already checked by the caller."""
        override = {**self._overrides.get(tenant, {}), **values}
        replace(self.settings.defaults, **{k: (tuple(v) if isinstance(v, list) else v)
                                           for k, v in override.items()})
        self._overrides[tenant] = override
        if self.store is not None:
            self.store.set_toll_override(tenant, orjson.dumps(override).decode())
        log.warning("SECURITY event=toll_limits tenant=%s set=%s by=admin", _clean(tenant),
                    ",".join(sorted(values)))
        return self.get(tenant)

    def reset(self, tenant: str) -> bool:
        found = self._overrides.pop(tenant, None) is not None
        if self.store is not None:
            found = self.store.delete_toll_override(tenant) or found
        return found

    def counts(self) -> dict:
        return {**self.stats, "toll_outbound_calls": sum(self._live_tenant.values())}
