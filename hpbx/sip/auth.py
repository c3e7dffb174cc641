"""Digest authentication (RFC 3261 §22, RFC 7616 / RFC 8760): MD5 and SHA-256, qop=auth.

Nonces are stateless (expiry time + counter, signed with a per-process HMAC key) so a challenge
costs no memory; only the highest nonce-count seen per nonce is remembered, in two generations
swapped every nonce lifetime, to refuse replays. HA1 is computed once per user and password
and cached.

``Authenticator.check(...)`` returns one ``Verdict``:
  * OK — credentials valid (``user`` set);
  * CHALLENGE — no usable credentials: answer 401 with ``challenge_headers(stale=...)``;
  * FORBIDDEN — a challenge was answered wrongly (wrong password or unknown user: both look
    the same to the caller).
"""
from __future__ import annotations

import enum
import hashlib
import hmac
import os
import re
import time

ALGORITHMS = {
    "MD5": hashlib.md5,
    "SHA-256": hashlib.sha256,
}


# nonce-counts remembered per generation; a flood of fresh nonces rotates early instead of
# growing without bound
MAX_TRACKED_NONCES = 200_000


class Verdict(enum.Enum):
    OK = "ok"
    CHALLENGE = "challenge"
    STALE = "stale"
    FORBIDDEN = "forbidden"


_PARAM = re.compile(r'([A-Za-z0-9_-]+)[ \t]*=[ \t]*(?:"((?:[^"\\]|\\.)*)"|([^\s,"]*))')
_QUOTED_PAIR = re.compile(r"\\(.)")


def parse_digest(value: str) -> dict[str, str] | None:
    """``Digest username="a", realm="b", nc=00000001, ...`` -> {name: value}; None if not Digest."""
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != "digest":
        return None
    params: dict[str, str] = {}
    # fast path for the common shape; any quoted value holding a comma, a quote or an escape
    # falls back to the full grammar
    if "\\" not in rest:
        for part in rest.split(","):
            name, _, val = part.partition("=")
            val = val.strip()
            if val[:1] == '"':
                if len(val) < 2 or val[-1] != '"' or '"' in val[1:-1]:
                    break
                val = val[1:-1]
            elif '"' in val:
                break
            params[name.strip().lower()] = val
        else:
            return params
        params = {}
    for name, quoted, token in _PARAM.findall(rest):
        if quoted and "\\" in quoted:
            quoted = _QUOTED_PAIR.sub(r"\1", quoted)
        params[name.lower()] = quoted or token
    return params


class Authenticator:
    def __init__(self, directory_lookup, realm: str, nonce_ttl: int,
                 algorithms: tuple[str, ...] = ("MD5", "SHA-256"), clock=time.monotonic):
        """``directory_lookup(username) -> user | None``; a user has ``sip_password``."""
        self.lookup = directory_lookup
        self.realm = realm
        self.nonce_ttl = nonce_ttl
        self.algorithms = algorithms
        self.clock = clock
        self._key = os.urandom(32)
        self._counter = 0
        self._nc_now: dict[str, int] = {}
        self._nc_old: dict[str, int] = {}
        self._nc_rotated = clock()
        self._valid_since = float("-inf")  # nonces issued before this are stale (see _nc_fresh)
        self._ha1: dict[tuple[str, str], tuple[str, str]] = {}  # (username, alg) -> (password, ha1)

    def configure(self, realm: str, nonce_ttl: int, algorithms: tuple[str, ...]) -> None:
        if realm != self.realm:
            self._ha1.clear()
        self.realm = realm
        self.nonce_ttl = nonce_ttl
        self.algorithms = algorithms

    # ---- nonces
    def _sign(self, body: str) -> str:
        # keyed BLAKE2 is a MAC in one C call (hmac.new costs several Python frames)
        return hashlib.blake2s(body.encode("utf-8", "surrogateescape"), key=self._key,
                               digest_size=10).hexdigest()

    def new_nonce(self) -> str:
        self._counter += 1
        body = f"{int(self.clock() * 1000):x}.{self._counter:x}"
        return f"{body}.{self._sign(body)}"

    def _nonce_age(self, nonce: str) -> float | None:
        """Seconds since the nonce was issued, None when it is not one of ours."""
        body, _, sig = nonce.rpartition(".")
        if not body or not hmac.compare_digest(sig, self._sign(body)):
            return None
        try:
            issued = int(body.partition(".")[0], 16) / 1000.0
        except ValueError:
            return None
        return self.clock() - issued

    def _nc_fresh(self, nonce: str, nc: int) -> bool:
        now = self.clock()
        if now - self._nc_rotated > self.nonce_ttl or len(self._nc_now) >= MAX_TRACKED_NONCES:
            # the counters of the oldest generation go; a nonce issued before the generation
            # that is kept could have its counter there, so it is stale from now on (with the
            # time-based rotation such a nonce is older than nonce_ttl anyway)
            self._valid_since = self._nc_rotated
            self._nc_old = self._nc_now
            self._nc_now = {}
            self._nc_rotated = now
        last = self._nc_now.get(nonce)
        if last is None:
            last = self._nc_old.get(nonce, 0)
        if nc <= last:
            return False
        self._nc_now[nonce] = nc
        return True

    def challenge_headers(self, header: str = "WWW-Authenticate", stale: bool = False):
        nonce = self.new_nonce()
        stale_part = ", stale=true" if stale else ""
        return [(header, f'Digest realm="{self.realm}", nonce="{nonce}", qop="auth", '
                         f'algorithm={alg}{stale_part}') for alg in self.algorithms]

    # ---- verification
    def ha1(self, user, algorithm: str) -> str:
        key = (user.username, algorithm)
        cached = self._ha1.get(key)
        if cached is not None and cached[0] == user.sip_password:
            return cached[1]
        digest = ALGORITHMS[algorithm](
            f"{user.username}:{self.realm}:{user.sip_password}".encode("utf-8", "surrogateescape")).hexdigest()
        self._ha1[key] = (user.sip_password, digest)
        return digest

    def check(self, method: str, authorization: str | None):
        """-> (Verdict, user or None, username or None)."""
        if not authorization:
            return Verdict.CHALLENGE, None, None
        params = parse_digest(authorization)
        if params is None:
            return Verdict.CHALLENGE, None, None
        username = params.get("username")
        nonce = params.get("nonce")
        response = params.get("response")
        uri = params.get("uri")
        algorithm = params.get("algorithm", "MD5")
        algorithm = "SHA-256" if algorithm.upper() == "SHA-256" else algorithm.upper()
        if (not username or not nonce or not response or uri is None
                or params.get("realm") != self.realm or algorithm not in self.algorithms):
            return Verdict.CHALLENGE, None, username
        age = self._nonce_age(nonce)
        if age is None:
            return Verdict.CHALLENGE, None, username
        if age > self.nonce_ttl or self.clock() - age <= self._valid_since:
            return Verdict.STALE, None, username
        qop = params.get("qop")
        if qop != "auth":
            return Verdict.CHALLENGE, None, username
        try:
            nc = int(params.get("nc", ""), 16)
        except ValueError:
            return Verdict.CHALLENGE, None, username
        cnonce = params.get("cnonce", "")
        user = self.lookup(username)
        hfunc = ALGORITHMS[algorithm]
        if user is None:
            # unknown user: same answer as a wrong password, after the same amount of work
            ha1 = hfunc(f"{username}:{self.realm}:".encode("utf-8", "surrogateescape")).hexdigest()
        else:
            ha1 = self.ha1(user, algorithm)
        ha2 = hfunc(f"{method}:{uri}".encode("utf-8", "surrogateescape")).hexdigest()
        expected = hfunc(f"{ha1}:{nonce}:{params.get('nc')}:{cnonce}:auth:{ha2}".encode("utf-8", "surrogateescape")).hexdigest()
        if user is None or not hmac.compare_digest(expected, response.lower()):
            return Verdict.FORBIDDEN, None, username
        if not self._nc_fresh(nonce, nc):
            # a replayed (or reordered) nonce-count: demand a fresh challenge
            return Verdict.CHALLENGE, None, username
        return Verdict.OK, user, username
