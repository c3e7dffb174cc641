"""Toll-fraud limits on calls that leave through a trunk: destination policy (national,
international, premium; allow and deny prefixes), concurrent trunk calls per user and per
tenant, call attempts per hour per user and per tenant, and the longest an answered trunk call
may last (``max_call_secs``: both legs get BYE then), talk minutes per hour and per day (user
and tenant; an answered call is cut when the budget it started with is spent), and the
night-time restriction (``night_hours`` in the tenant's zone: national numbers only).

A reached velocity or minutes cap is a ``toll_alert`` security event and, at most once per
tenant and rule an hour, a JSON POST to ``alert_webhook`` and a mail to ``alert_mail`` (through
the server's mail spool); with ``on_rate_exceeded = "block"`` a tenant cap blocks the tenant.

Limits come from ``[security.toll]`` (defaults, per tenant ``[security.toll.tenants.NAME]``);
``toll.set`` over admin overrides them per tenant, stored, and wins over the file. A refusal
is ``Refusal(status 403, reason, rule)`` and a security event:

    SECURITY event=toll_refused src=192.0.2.7 tenant=acme user="anna" dialled=0901123456 rule=premium

The counters (attempts of the last hour, talk time of the last 24 hours) are written to the
store as they change, one row per trunk call, and read back at start, so a restart does not
give a tenant its hour or day afresh. A call that was up when the server died (no end
written) counts as having talked until the restart, at most ``max_call_secs``.

Numbers are normalised first: ``+CC…`` stays, ``00CC…`` becomes ``+CC…``, a national ``0N…``
becomes ``+<country_code>N…``; anything else (short codes) counts as national.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import time
import urllib.request
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import orjson

from hpbx.errors import HpbxError
from hpbx.security.config import TOLL_KEYS, TollLimits, night_window

log = logging.getLogger("hpbx.security")

HOUR = 3600.0
DAY = 86400.0


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
        self.stats = {"toll_admitted": 0, "toll_refused": 0, "toll_blocks": 0}
        # (tenant) -> None: hangs up the tenant's calls through the trunk (set by the B2BUA)
        self.on_block = None
        # (tenant) -> its time zone name or None (set by the app from the directory)
        self.zone_of = lambda tenant: None
        self._answered: dict[str, float] = {}  # call id -> when the trunk call was answered
        # the answered calls still up, by tenant and by (tenant, user): call id -> answer time
        self._up_tenant: dict[str, dict[str, float]] = {}
        self._up_user: dict[tuple[str, str], dict[str, float]] = {}
        self._talk_tenant: dict[str, collections.deque] = {}  # tenant -> (start, end) of ended calls
        self._talk_user: dict[tuple[str, str], collections.deque] = {}
        self._alerted: dict[tuple[str, str], float] = {}  # (tenant, rule) -> last alert
        self.alerts_sent = collections.Counter()  # "webhook" / "mail" / "failed"
        self.mail = None  # the server's mail spool (hpbx.mail.spool.MailSpool), set by the app
        # (call id, reason) -> None: hangs up one call (set by the app); (delay, fn) -> a timer
        # with cancel() (the server's timer wheel). Without them cut_due() is called by hand.
        self.on_cut = None
        self.call_later = None
        self._budget_timers: dict[tuple, object] = {}  # ("t", tenant) / ("u", tenant, user)
        self.configure(settings)
        self._writes = 0
        self._rows: dict[str, str] = {}  # call id -> its row in the store (a call id may come back)
        if store is not None:
            for tenant, doc in store.toll_overrides():
                self._overrides[tenant] = orjson.loads(doc)
            self._restore_usage()

    # ---- the counters in the store
    def _persist(self, method: str, *args) -> None:
        """Write one change of the counters; a failing store is logged, never fails a call."""
        fn = getattr(self.store, method, None) if self.store is not None else None
        if fn is None:
            return
        try:
            fn(*args)
            self._writes += 1
            if self._writes % 1000 == 0:
                self.store.toll_forget(self.clock() - DAY)
        except Exception as exc:  # noqa: BLE001 - the policy goes on from memory
            log.warning("toll counters not stored (%s): %s", method, exc)

    def _restore_usage(self) -> None:
        load = getattr(self.store, "toll_usage", None)
        if load is None:
            return
        now = self.clock()
        try:
            rows = load()
        except Exception as exc:  # noqa: BLE001
            log.warning("toll counters not restored: %s", exc)
            return
        talks = []
        for call_id, tenant, user, attempt, answered, ended in rows:
            if now - attempt < HOUR:
                self._attempts_tenant.setdefault(tenant, collections.deque()).append(attempt)
                if user is not None:
                    self._attempts_user.setdefault((tenant, user), collections.deque()).append(attempt)
            if answered is None:
                continue
            if ended is None:  # up when the server stopped: until now, at most max_call_secs
                cap = self.limits(tenant).max_call_secs or DAY
                ended = max(answered, min(now, answered + cap))
                self._persist("toll_ended", call_id, ended)
            if ended > now - DAY:
                talks.append((ended, answered, tenant, user))
        for ended, answered, tenant, user in sorted(talks):  # the deques are ordered by end
            self._talk_tenant.setdefault(tenant, collections.deque()).append((answered, ended))
            if user is not None:
                self._talk_user.setdefault((tenant, user), collections.deque()).append((answered, ended))
        self._persist("toll_forget", now - DAY)
        if rows:
            log.info("toll counters restored: %d trunk calls of the last 24 hours", len(rows))

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
        if refusal is None and kind != "national" and self.is_night(tenant, limits) and \
                not any(norm.startswith(p) for p in limits.allow_prefixes):
            refusal = Refusal(403, "Only national calls at night", "night_hours")
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
            self._rows[call_id] = row = f"{call_id}\t{now:.6f}"
            self._persist("toll_attempt", row, tenant, user, now)
        self.stats["toll_admitted"] += 1
        return None

    def max_call_secs(self, tenant: str, call_id: str | None = None) -> int:
        """How long an answered call through the trunk may last (0: no limit). With
        ``call_id`` (the call was answered now) its talk time starts counting toward the
        minutes caps, and the answer is the lesser of max_call_secs and the minutes left."""
        limits = self.limits(tenant)
        limit = limits.max_call_secs
        held = self._held.get(call_id) if call_id is not None else None
        if held is None:
            return limit
        now = self.clock()
        if call_id not in self._answered:
            self._answered[call_id] = now
            self._persist("toll_answered", self._rows.get(call_id, call_id), now)
            self._up_tenant.setdefault(held[0], {})[call_id] = now
            if held[1] is not None:
                self._up_user.setdefault(held, {})[call_id] = now
            self._rebudget(limits, held[0], held[1], now)
        left = self._minutes_left(limits, tenant, held[1], now)
        if left is not None:
            left = max(1, int(left))
            limit = min(limit, left) if limit else left
        return limit

    def is_night(self, tenant: str, limits: TollLimits | None = None) -> bool:
        window = night_window((limits or self.limits(tenant)).night_hours)
        if window is None:
            return False
        try:
            zone = ZoneInfo(self.zone_of(tenant) or "Europe/Zurich")
        except Exception:  # noqa: BLE001 - an unknown zone: UTC rather than no restriction
            zone = timezone.utc
        t = datetime.fromtimestamp(self.clock(), zone)
        minute = t.hour * 60 + t.minute
        start, end = window
        return start <= minute < end if start <= end else (minute >= start or minute < end)

    # ---- talk minutes
    def _talked(self, ended: collections.deque | None, live, now: float, window: float) -> float:
        """Seconds talked through the trunk within the last ``window`` seconds: ended calls
        (start, end) and the answered calls still up (their start times)."""
        since = now - window
        total = 0.0
        if ended:
            while ended and ended[0][1] <= now - DAY:
                ended.popleft()
            for start, end in reversed(ended):  # ordered by their end
                if end <= since:
                    break
                total += end - max(start, since)
        for start in live:
            total += now - max(start, since)
        return total

    def _live_starts(self, tenant: str, user: str | None):
        up = self._up_tenant.get(tenant) if user is None else self._up_user.get((tenant, user))
        return up.values() if up else ()

    def _minutes_left(self, limits: TollLimits, tenant: str, user: str | None, now: float) -> float | None:
        """Seconds of talk left under the tightest minutes cap (None: no cap)."""
        left = None
        caps = [(limits.minutes_per_hour_tenant, HOUR, None), (limits.minutes_per_day_tenant, DAY, None)]
        if user is not None:
            caps += [(limits.minutes_per_hour_user, HOUR, user), (limits.minutes_per_day_user, DAY, user)]
        for minutes, window, who in caps:
            if not minutes:
                continue
            ended = self._talk_tenant.get(tenant) if who is None else self._talk_user.get((tenant, who))
            rest = minutes * 60 - self._talked(ended, self._live_starts(tenant, who), now, window)
            left = rest if left is None else min(left, rest)
        return left

    # ---- the minutes budget shared by the answered calls still up
    def _caps(self, limits: TollLimits, key: tuple) -> list[tuple[int, float, str]]:
        if key[0] == "t":
            return [(limits.minutes_per_hour_tenant, HOUR, "minutes_per_hour_tenant"),
                    (limits.minutes_per_day_tenant, DAY, "minutes_per_day_tenant")]
        return [(limits.minutes_per_hour_user, HOUR, "minutes_per_hour_user"),
                (limits.minutes_per_day_user, DAY, "minutes_per_day_user")]

    def _key_state(self, key: tuple):
        if key[0] == "t":
            return self._talk_tenant.get(key[1]), self._up_tenant.get(key[1]) or {}
        return self._talk_user.get(key[1:]), self._up_user.get(key[1:]) or {}

    def _exhausted_in(self, limits: TollLimits, key: tuple, now: float) -> tuple[float, str] | None:
        """(seconds until the calls up of ``key`` have spent the tightest budget, its rule);
        None without a cap or without calls up. Each call up spends one second per second."""
        ended, up = self._key_state(key)
        if not up:
            return None
        best = None
        for minutes, window, rule in self._caps(limits, key):
            if not minutes:
                continue
            rest = minutes * 60 - self._talked(ended, up.values(), now, window)
            secs = max(0.0, rest) / len(up)
            if best is None or secs < best[0]:
                best = (secs, rule)
        return best

    def _rebudget(self, limits: TollLimits, tenant: str, user: str | None, now: float) -> None:
        """A call through the trunk was answered or ended: the moment the calls still up
        spend the budget together moves; the timer of each affected key follows it."""
        keys = [("t", tenant)] + ([("u", tenant, user)] if user is not None else [])
        for key in keys:
            old = self._budget_timers.pop(key, None)
            if old is not None:
                old.cancel()
            due = self._exhausted_in(limits, key, now)
            if due is not None and self.call_later is not None:
                self._budget_timers[key] = self.call_later(due[0] + 0.05, self._budget_timer, key)

    def _budget_timer(self, key: tuple) -> None:
        self._budget_timers.pop(key, None)
        self.cut_due()
        tenant = key[1]
        user = key[2] if key[0] == "u" else None
        if self._key_state(key)[1]:  # calls still up (budget grew as old calls slid out)
            self._rebudget(self.limits(tenant), tenant, user, self.clock())

    def cut_due(self) -> list[str]:
        """Hang up the answered trunk calls whose shared minutes budget is spent (the timers
        call this; so can a test with its own clock). The call ids cut."""
        now = self.clock()
        keys = [("t", t) for t in self._up_tenant] + [("u", *k) for k in self._up_user]
        cut: list[str] = []
        for key in keys:
            limits = self.limits(key[1])
            due = self._exhausted_in(limits, key, now)
            if due is None or due[0] > 0.5:
                continue
            rule = due[1]
            ids = list(self._key_state(key)[1])
            log.warning('SECURITY event=toll_cut tenant=%s user="%s" rule=%s calls=%d', _clean(key[1]),
                        _clean(key[2] if key[0] == "u" else None), rule, len(ids))
            self._alert(key[1], rule, key[2] if key[0] == "u" else None)
            if limits.on_rate_exceeded == "block" and key[0] == "t" and not limits.blocked:
                self._block(key[1], rule)
            for cid in ids:
                cut.append(cid)
                held = self._held.get(cid)
                if held is not None:
                    self._stop_talk(cid, held, now)
                if self.on_cut is not None:
                    self.on_cut(cid, "outbound minutes exceeded")
        return cut

    def minutes_used(self, tenant: str, user: str | None = None) -> dict:
        now = self.clock()
        ended = self._talk_tenant.get(tenant) if user is None else self._talk_user.get((tenant, user))
        live = self._live_starts(tenant, user)
        return {"minutes_last_hour": round(self._talked(ended, live, now, HOUR) / 60, 1),
                "minutes_last_day": round(self._talked(ended, live, now, DAY) / 60, 1)}

    def release(self, call_id: str) -> None:
        held = self._held.pop(call_id, None)
        if held is None:
            return
        tenant, user = held
        self._stop_talk(call_id, held, self.clock())
        self._rows.pop(call_id, None)
        self._live_tenant[tenant] -= 1
        if self._live_tenant[tenant] <= 0:
            del self._live_tenant[tenant]
        if user is not None:
            key = (tenant, user)
            self._live_user[key] -= 1
            if self._live_user[key] <= 0:
                del self._live_user[key]

    def _stop_talk(self, call_id: str, held: tuple[str, str | None], end: float) -> None:
        """An answered trunk call stops spending minutes (it ended, or it is being cut)."""
        start = self._answered.pop(call_id, None)
        if start is None:
            return
        tenant, user = held
        for up, key in ((self._up_tenant, tenant), (self._up_user, held)):
            calls = up.get(key)
            if calls is not None:
                calls.pop(call_id, None)
                if not calls:
                    del up[key]
        self._talk_tenant.setdefault(tenant, collections.deque()).append((start, end))
        if user is not None:
            self._talk_user.setdefault(held, collections.deque()).append((start, end))
        self._persist("toll_ended", self._rows.get(call_id, call_id), end)
        self._rebudget(self.limits(tenant), tenant, user, end)

    @staticmethod
    def _destination(limits: TollLimits, norm: str, kind: str) -> Refusal | None:
        if limits.blocked:
            return Refusal(403, "Outbound calls of this tenant are blocked", "blocked")
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
            self._alert(tenant, "calls_per_hour_user", user)
            return Refusal(403, "Outbound call rate of this user exceeded", "calls_per_hour_user")
        if limits.calls_per_hour_tenant and \
                self._recent(self._attempts_tenant.get(tenant), now) >= limits.calls_per_hour_tenant:
            self._alert(tenant, "calls_per_hour_tenant", user)
            if limits.on_rate_exceeded == "block":
                self._block(tenant)
                return Refusal(403, "Outbound calls of this tenant are blocked", "calls_per_hour_tenant")
            return Refusal(403, "Outbound call rate of this tenant exceeded", "calls_per_hour_tenant")
        for minutes, window, who, rule in (
                (limits.minutes_per_hour_user, HOUR, user, "minutes_per_hour_user"),
                (limits.minutes_per_day_user, DAY, user, "minutes_per_day_user"),
                (limits.minutes_per_hour_tenant, HOUR, None, "minutes_per_hour_tenant"),
                (limits.minutes_per_day_tenant, DAY, None, "minutes_per_day_tenant")):
            if not minutes or (rule.endswith("_user") and user is None):
                continue
            ended = self._talk_tenant.get(tenant) if who is None else self._talk_user.get((tenant, who))
            if self._talked(ended, self._live_starts(tenant, who), now, window) >= minutes * 60:
                whose = "user" if who is not None else "tenant"
                self._alert(tenant, rule, user)
                if limits.on_rate_exceeded == "block" and who is None:
                    self._block(tenant, rule)
                    return Refusal(403, "Outbound calls of this tenant are blocked", rule)
                return Refusal(403, f"Outbound minutes of this {whose} exceeded", rule)
        return None

    def _alert(self, tenant: str, rule: str, user: str | None) -> None:
        """A cap was reached: a security event, and (at most once per tenant and rule an hour)
        a JSON POST to alert_webhook and a mail to alert_mail, sent off the event loop."""
        now = self.clock()
        last = self._alerted.get((tenant, rule))
        if last is not None and now - last < HOUR:
            return
        self._alerted[(tenant, rule)] = now
        log.warning('SECURITY event=toll_alert tenant=%s user="%s" rule=%s', _clean(tenant),
                    _clean(user), rule)
        toll = self.settings
        if not toll.alert_webhook and not toll.alert_mail:
            return
        event = {"event": "toll_limit", "tenant": tenant, "user": user, "rule": rule,
                 "limits": self.limits(tenant).as_dict(), "time": int(now),
                 **self.minutes_used(tenant)}
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        for kind, url in (("webhook", toll.alert_webhook), ("mail", toll.alert_mail)):
            if not url:
                continue
            job = self._post if kind == "webhook" else self._mail
            if loop is None:
                job(url, event)
            else:
                loop.run_in_executor(None, job, url, event)

    def _post(self, url: str, event: dict) -> None:
        req = urllib.request.Request(url, data=orjson.dumps(event), method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as answer:
                answer.read()
            self.alerts_sent["webhook"] += 1
        except OSError as exc:
            self.alerts_sent["failed"] += 1
            log.error("toll alert webhook %s failed: %s", url, exc)

    def _mail(self, to: str, event: dict) -> None:
        """The alert mail goes into the server's mail spool (hpbx/mail/spool.py): on disk
        before this returns, retried until the SMTP server takes it."""
        if self.mail is None:
            self.alerts_sent["failed"] += 1
            log.error("toll alert mail to %s not sent: no mail spool", to)
            return
        body = "".join(f"{k}: {v}\n" for k, v in event.items())
        try:
            self.mail.submit(to=[to], subject=f"hpbx toll-fraud limit: {event['tenant']} {event['rule']}",
                             body=body, tenant=event["tenant"], kind="toll_alert")
            self.alerts_sent["mail"] += 1
        except (HpbxError, OSError) as exc:
            self.alerts_sent["failed"] += 1
            log.error("toll alert mail to %s not spooled: %s", to, exc)

    def _block(self, tenant: str, rule: str = "calls_per_hour_tenant") -> None:
        """The tenant's outbound calls stop: the block is stored (it outlives a restart), live
        trunk calls are hung up."""
        self.stats["toll_blocks"] += 1
        override = {**self._overrides.get(tenant, {}), "blocked": True}
        self._overrides[tenant] = override
        if self.store is not None:
            self.store.set_toll_override(tenant, orjson.dumps(override).decode())
        live = sum(1 for t, _ in self._held.values() if t == tenant)
        log.warning("SECURITY event=toll_blocked tenant=%s rule=%s live_calls=%d",
                    _clean(tenant), rule, live)
        if self.on_block is not None:
            self.on_block(tenant)

    def holds(self, call_id: str) -> bool:
        """Does ``call_id`` hold a slot (it rings or talks through the trunk)?"""
        return call_id in self._held

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
                **self.minutes_used(tenant), "night": self.is_night(tenant),
                "users": {user: {"outbound_calls": self._live_user[(t, user)],
                                 "attempts_last_hour": self._recent(q, now),
                                 **self.minutes_used(tenant, user)}
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
        return {**self.stats, "toll_outbound_calls": sum(self._live_tenant.values()),
                "toll_alerts_sent": self.alerts_sent["webhook"] + self.alerts_sent["mail"],
                "toll_alerts_failed": self.alerts_sent["failed"]}
