"""Login sessions of the web face, and the limit on failed logins per source address.

A session is a random 256-bit token in an HttpOnly, SameSite=Strict cookie (Secure under TLS),
with its own CSRF token that every state-changing request must echo in ``X-CSRF-Token``. Sessions
live in memory (a restart logs everybody out) and expire after ``ttl`` seconds without use.
Failed logins are counted per source over a sliding window; past the limit the source is locked
out until its oldest failure leaves the window.
"""
from __future__ import annotations

import collections
import hmac
import secrets
import time
from dataclasses import dataclass, field

MAX_SESSIONS = 10_000


@dataclass(slots=True)
class Session:
    token: str
    account: object  # hpbx.admin.accounts.Account
    csrf: str
    expires: float
    created: float = field(default_factory=time.time)


class Sessions:
    def __init__(self, ttl: float, clock=time.monotonic):
        self.ttl = ttl
        self.clock = clock
        self._by_token: dict[str, Session] = {}

    def create(self, account) -> Session:
        if len(self._by_token) >= MAX_SESSIONS:
            self.prune()
            if len(self._by_token) >= MAX_SESSIONS:  # drop the one closest to expiry
                del self._by_token[min(self._by_token.values(), key=lambda s: s.expires).token]
        s = Session(secrets.token_urlsafe(32), account, secrets.token_urlsafe(32), self.clock() + self.ttl)
        self._by_token[s.token] = s
        return s

    def get(self, token: str | None) -> Session | None:
        if not token:
            return None
        s = self._by_token.get(token)
        if s is None:
            return None
        now = self.clock()
        if now > s.expires:
            del self._by_token[token]
            return None
        s.expires = now + self.ttl
        return s

    @staticmethod
    def csrf_ok(session: Session, header: str | None) -> bool:
        return bool(header) and hmac.compare_digest(session.csrf.encode(), header.encode())

    def drop(self, token: str) -> None:
        self._by_token.pop(token, None)

    def drop_account(self, username: str) -> None:
        for token in [t for t, s in self._by_token.items() if s.account.username == username]:
            del self._by_token[token]

    def prune(self) -> None:
        now = self.clock()
        for token in [t for t, s in self._by_token.items() if now > s.expires]:
            del self._by_token[token]

    def __len__(self) -> int:
        return len(self._by_token)


class LoginLimiter:
    """At most ``limit`` failures per source within ``window`` seconds."""

    def __init__(self, limit: int, window: float, clock=time.monotonic):
        self.limit = limit
        self.window = window
        self.clock = clock
        self._failures: dict[str, collections.deque] = {}

    def _recent(self, source: str) -> collections.deque | None:
        q = self._failures.get(source)
        if q is None:
            return None
        cutoff = self.clock() - self.window
        while q and q[0] < cutoff:
            q.popleft()
        if not q:
            del self._failures[source]
            return None
        return q

    def retry_after(self, source: str) -> float:
        """0 when the source may try; else seconds until it may."""
        q = self._recent(source)
        if q is None or len(q) < self.limit:
            return 0.0
        return max(1.0, q[0] + self.window - self.clock())

    def failed(self, source: str) -> int:
        if len(self._failures) > 100_000:
            self._failures.clear()  # bounded memory under a spray of sources
        q = self._failures.setdefault(source, collections.deque())
        q.append(self.clock())
        return len(q)

    def succeeded(self, source: str) -> None:
        self._failures.pop(source, None)
