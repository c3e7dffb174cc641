"""The ban service: the compiled ban table (``hpbx._fast.guard``) the transports ask for every
message, the digest-failure accounting that feeds it, security events, and persistence.

Digest failures count the same for unknown users and wrong passwords (an attacker must not
learn from the ban which names exist). Per source: ``auth_failures`` within ``auth_window``
bans it. A source that authenticated a user lately ("good": an office NAT) is banned only at
``good_factor`` times that; before, the (source, user) pair that keeps failing is blocked
(403 without a check), so one phone with a wrong password does not cut off the office. Per
user name, from any source: beyond ``user_failures`` within ``user_window`` every further
failing source is banned at its first failure (a distributed guess of one password).

Security events are log lines of the ``hpbx.security`` logger in one grep-able shape, e.g.

    SECURITY event=auth_failed src=192.0.2.7 port=5060 transport=udp method=REGISTER user="100" count=3
    SECURITY event=banned src=192.0.2.7 reason=auth secs=300 until=2026-12-02T18:00:00Z

(``config/fail2ban/`` has a filter for them). Bans, counters and operator-trusted networks are
stored (``hpbx.store.bans``) within a second of being made, and loaded at start.
"""
from __future__ import annotations

import ipaddress
import logging
import time
from datetime import datetime, timezone

from hpbx._fast.guard import Guard
from hpbx.sip.auth import Verdict

log = logging.getLogger("hpbx.security")

DRAIN_SECS = 1.0
MAX_COUNTERS = 100_000  # per kind; beyond, the oldest windows go first


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _clean(text) -> str:
    """A hostile string (a user name from the network) made safe for one log line."""
    text = "" if text is None else str(text)
    return "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "?" for c in text)[:64]


def canonical_network(text: str) -> str:
    try:
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError:
        raise ValueError(f"not a network: {text!r}") from None


def canonical_host(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise ValueError(f"not an IP address: {text!r}") from None


class _Window:
    """Counters over fixed windows, bounded in number."""

    __slots__ = ("secs", "items")

    def __init__(self, secs: float):
        self.secs = secs
        self.items: dict = {}  # key -> [count, window start]

    def bump(self, key, now: float) -> int:
        item = self.items.get(key)
        if item is None or now - item[1] >= self.secs:
            if item is None and len(self.items) >= MAX_COUNTERS:
                self.prune(now)
            item = self.items[key] = [0, now]
        item[0] += 1
        return item[0]

    def prune(self, now: float) -> None:
        self.items = {k: v for k, v in self.items.items() if now - v[1] < self.secs}
        if len(self.items) >= MAX_COUNTERS:
            keep = sorted(self.items.items(), key=lambda kv: kv[1][1])[MAX_COUNTERS // 2:]
            self.items = dict(keep)

    def get(self, key, now: float) -> int:
        item = self.items.get(key)
        return 0 if item is None or now - item[1] >= self.secs else item[0]


class BanService:
    def __init__(self, settings, store=None, wheel=None, clock=time.time):
        sec = settings.security
        self.guard = Guard(sec.table_size)
        self.store = store
        self.wheel = wheel
        self.clock = clock
        self._source = _Window(sec.auth_window)
        self._pair = _Window(sec.auth_window)
        self._user = _Window(sec.user_window)
        self._blocked: dict[tuple[str, str], float] = {}  # (host, user) -> until
        self._bans_made: list[tuple] = []  # waiting to be stored
        self._unbans: list[str] = []
        self._dirty = False
        self._timer = None
        self._trunks: tuple[str, ...] = ()
        self._operator_trusted: dict[str, str] = {}
        self.stats = {"auth_failures": 0, "auth_ok": 0, "pairs_blocked": 0, "bans_auth": 0,
                      "bans_user": 0}
        self.configure(settings)

    # ---- settings
    def configure(self, settings) -> None:
        sec = settings.security
        self.settings = sec
        self._source.secs = self._pair.secs = sec.auth_window
        self._user.secs = sec.user_window
        self._apply_guard()

    def _apply_guard(self) -> None:
        sec = self.settings
        trusted = list(dict.fromkeys([*sec.trusted, *self._operator_trusted, *self._trunks]))
        self.guard.configure(enabled=sec.enabled, window=float(sec.flood_window),
                             threshold=sec.flood_threshold, ban_secs=float(sec.ban_secs),
                             good_factor=sec.good_factor, agents=sec.scanner_agents,
                             trusted=trusted[:1024])

    def set_trunks(self, hosts) -> None:
        """Trunks' gateway addresses are trusted (never banned); names that are no literal
        address are skipped."""
        out = []
        for host in hosts:
            try:
                out.append(str(ipaddress.ip_address(host)))
            except ValueError:
                continue
        out = tuple(sorted(set(out)))
        if out != self._trunks:
            self._trunks = out
            self._apply_guard()

    # ---- start/stop
    def start(self) -> None:
        now = self.clock()
        if self.store is not None:
            for network, note in self.store.trusted():
                self._operator_trusted[network] = note
            self._apply_guard()
            for host, reason, until, _since in self.store.load_bans(now):
                self.guard.ban(host, until - now, reason, now)
            for kind, key, count, since in self.store.load_counters():
                if kind == "source":
                    self._source.items[key] = [count, since]
                elif kind == "user":
                    self._user.items[key] = [count, since]
                elif kind == "pair":
                    host, _, user = key.partition(" ")
                    self._pair.items[(host, user)] = [count, since]
                elif kind == "blocked" and since > now:
                    host, _, user = key.partition(" ")
                    self._blocked[(host, user)] = since
            n = len(self.guard.bans(now))
            if n:
                log.info("bans restored from the store: %d", n)
        if self.wheel is not None:
            self._timer = self.wheel.call_later(DRAIN_SECS, self._tick)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._dirty = True
        self.drain()

    def _tick(self) -> None:
        self._timer = None
        try:
            self.drain()
        finally:
            if self.wheel is not None:
                self._timer = self.wheel.call_later(DRAIN_SECS, self._tick)

    def drain(self) -> None:
        """Log the bans the receive path made, and store what changed."""
        secs = self.guard.ban_secs
        for host, reason, until in self.guard.events():
            self._banned(host, reason, until, secs)
        if self.store is None:
            self._bans_made.clear()
            self._unbans.clear()
            return
        if not (self._bans_made or self._unbans or self._dirty):
            return
        bans, self._bans_made = self._bans_made, []
        unbans, self._unbans = self._unbans, []
        counters = self._counter_rows(self.clock()) if self._dirty else None
        self._dirty = False
        try:
            self.store.write(bans, unbans, counters)
        except Exception:
            log.exception("bans: %d changes not stored", len(bans) + len(unbans))

    def _counter_rows(self, now: float) -> list[tuple]:
        rows = []
        for key, (count, since) in self._source.items.items():
            if now - since < self._source.secs:
                rows.append(("source", key, count, since))
        for (host, user), (count, since) in self._pair.items.items():
            if now - since < self._pair.secs:
                rows.append(("pair", f"{host} {user}", count, since))
        for key, (count, since) in self._user.items.items():
            if now - since < self._user.secs:
                rows.append(("user", key, count, since))
        for (host, user), until in self._blocked.items():
            if until > now:
                rows.append(("blocked", f"{host} {user}", 0, until))
        return rows

    def _banned(self, host: str, reason: str, until: float, secs: float) -> None:
        log.warning("SECURITY event=banned src=%s reason=%s secs=%d until=%s", host, reason,
                    round(secs), _iso(until))
        self._bans_made.append((host, reason, until, until - secs))

    # ---- digest results (registrar and B2BUA)
    def judge(self, verdict, username, addr, transport: str, method: str):
        """The verdict of a digest check as the caller should act on it: FORBIDDEN for a
        blocked (source, user) pair; failures counted, successes mark the source good."""
        host = addr[0]
        now = self.clock()
        if username is not None and self._blocked:
            key = (host, _clean(username))
            until = self._blocked.get(key)
            if until is not None:
                if until > now:
                    return Verdict.FORBIDDEN
                del self._blocked[key]
        if verdict is Verdict.FORBIDDEN:
            self.auth_failed(host, addr[1], transport, method, username, now)
        elif verdict is Verdict.OK:
            self.auth_ok(host, username, now)
        return verdict

    def auth_ok(self, host: str, username: str, now: float | None = None) -> None:
        now = self.clock() if now is None else now
        self.stats["auth_ok"] += 1
        if self.settings.good_secs:
            self.guard.mark_good(host, now + self.settings.good_secs)
        if self._pair.items.pop((host, username), None) is not None:
            self._dirty = True

    def auth_failed(self, host: str, port: int, transport: str, method: str, username,
                    now: float | None = None) -> None:
        sec = self.settings
        now = self.clock() if now is None else now
        user = _clean(username)
        self.stats["auth_failures"] += 1
        if not sec.enabled or self.guard.trusted(host):
            # trusted sources (trunks, the operator's own) are logged, never counted
            log.warning('SECURITY event=auth_failed src=%s port=%s transport=%s method=%s '
                        'user="%s" count=0', host, port, transport, method, user)
            return
        self._dirty = True
        n_source = self._source.bump(host, now)
        n_pair = self._pair.bump((host, user), now)
        n_user = self._user.bump(user, now)
        log.warning('SECURITY event=auth_failed src=%s port=%s transport=%s method=%s user="%s" '
                    'count=%d', host, port, transport, method, user, n_source)
        limit = sec.auth_failures
        over_user = bool(sec.user_failures) and n_user > sec.user_failures
        if self.guard.is_good(host, now):
            # phones of this source authenticate: ban it only at good_factor times the limit,
            # else keep only the failing (source, user) pair out
            if limit and n_source >= limit * sec.good_factor:
                self._ban(host, "auth")
                self.stats["bans_auth"] += 1
            elif (limit and n_pair >= limit) or over_user:
                self._blocked[(host, user)] = now + sec.ban_secs
                self._pair.items.pop((host, user), None)
                self.stats["pairs_blocked"] += 1
                log.warning('SECURITY event=pair_blocked src=%s user="%s" secs=%d', host, user,
                            sec.ban_secs)
        elif over_user:
            self._ban(host, "user")
            self.stats["bans_user"] += 1
        elif limit and n_source >= limit:
            self._ban(host, "auth")
            self.stats["bans_auth"] += 1

    def _ban(self, host: str, reason: str, secs: float | None = None) -> bool:
        now = self.clock()
        secs = self.settings.ban_secs if secs is None else secs
        if not self.guard.ban(host, secs, reason, now):
            return False
        self._source.items.pop(host, None)
        self._banned(host, reason, now + secs, secs)
        return True

    # ---- what the admin layer calls
    def ban_list(self) -> list[dict]:
        now = self.clock()
        return [{"host": host, "reason": reason, "until": until, "expires_in": max(0, int(until - now)),
                 "dropped": dropped} for host, until, reason, dropped in self.guard.bans(now)]

    def ban_add(self, host: str, secs: int | None = None) -> dict:
        host = canonical_host(host)
        secs = self.settings.ban_secs if secs is None else secs
        if self.guard.trusted(host):
            raise ValueError(f"{host} is trusted (never banned): remove it from the trusted networks first")
        self._ban(host, "admin", secs)
        return {"host": host, "until": self.guard.banned_until(host), "secs": secs}

    def ban_remove(self, host: str) -> bool:
        host = canonical_host(host)
        was = self.guard.unban(host)
        self._source.items.pop(host, None)
        for key in [k for k in self._blocked if k[0] == host]:
            del self._blocked[key]
        for key in [k for k in self._pair.items if k[0] == host]:
            del self._pair.items[key]
        self._bans_made = [b for b in self._bans_made if b[0] != host]  # not stored after all
        self._unbans.append(host)
        self._dirty = True
        if was:
            log.warning("SECURITY event=unbanned src=%s by=admin", host)
        self.drain()
        return was

    def counters(self) -> list[dict]:
        """Failure counters in their current windows, and blocked (source, user) pairs."""
        now = self.clock()
        return [{"kind": kind, "key": key, "count": count,
                 ("until" if kind == "blocked" else "since"): since}
                for kind, key, count, since in self._counter_rows(now)]

    def trusted_list(self) -> list[dict]:
        sec = self.settings
        rows = [{"network": n, "source": "settings", "note": ""} for n in sec.trusted]
        rows += [{"network": n, "source": "admin", "note": note}
                 for n, note in sorted(self._operator_trusted.items())]
        rows += [{"network": h, "source": "trunk", "note": ""} for h in self._trunks]
        return rows

    def trust(self, network: str, note: str = "") -> dict:
        network = canonical_network(network)
        self._operator_trusted[network] = note
        if self.store is not None:
            self.store.set_trusted(network, note)
        self._apply_guard()
        log.warning("SECURITY event=trusted network=%s by=admin", network)
        return {"network": network, "note": note}

    def untrust(self, network: str) -> bool:
        network = canonical_network(network)
        found = self._operator_trusted.pop(network, None) is not None
        if self.store is not None:
            found = self.store.delete_trusted(network) or found
        self._apply_guard()
        return found

    def counts(self) -> dict:
        return {**self.stats, **{f"guard_{k}": v for k, v in self.guard.stats.items()},
                "bans_active": len(self.guard.bans(self.clock())),
                "pairs_blocked_active": sum(1 for u in self._blocked.values() if u > self.clock())}
