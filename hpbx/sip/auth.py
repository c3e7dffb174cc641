"""Digest authentication (RFC 3261 §22, RFC 7616 / RFC 8760): MD5 and SHA-256, qop=auth.

The work is done by the compiled core ``hpbx._fast.digest`` (one scan of the credentials,
stateless signed nonces, two generations of nonce-counts against replays, an HA1 cache); this
module gives it hpbx's ``Verdict`` enum and keeps the API the registrar and the B2BUA use.

``Authenticator.check(...)`` returns one ``Verdict``:
  * OK — credentials valid (``user`` set);
  * CHALLENGE — no usable credentials: answer 401 with ``challenge_for(user, stale=...)``;
  * STALE — the nonce expired: challenge again with ``stale=True``;
  * FORBIDDEN — a challenge was answered wrongly (wrong password or unknown user: both look
    the same to the caller).
"""
from __future__ import annotations

import enum
import time

from hpbx._fast.digest import DigestAuth, parse_digest

__all__ = ["MAX_TRACKED_NONCES", "Authenticator", "Verdict", "parse_digest"]

# nonce-counts remembered per generation; a flood of fresh nonces rotates early instead of
# growing without bound (per instance: ``Authenticator.max_tracked_nonces``)
MAX_TRACKED_NONCES = 200_000
# what a challenge offers (RFC 8760 §2.4: most preferred first); see challenge_for
SHA256_FIRST = ("SHA-256", "MD5")
MD5_ONLY = ("MD5",)


class Verdict(enum.Enum):
    OK = "ok"
    CHALLENGE = "challenge"
    STALE = "stale"
    FORBIDDEN = "forbidden"


class Authenticator(DigestAuth):
    """``directory_lookup(username) -> user | None``; a user has ``username`` and ``sip_password``."""

    def __init__(self, directory_lookup, realm: str, nonce_ttl: int,
                 algorithms: tuple[str, ...] = ("MD5", "SHA-256"), clock=time.monotonic):
        super().__init__(directory_lookup, realm, nonce_ttl, algorithms, clock,
                         (Verdict.OK, Verdict.CHALLENGE, Verdict.STALE, Verdict.FORBIDDEN),
                         MAX_TRACKED_NONCES)

    def challenge_for(self, username: str | None, header: str = "WWW-Authenticate",
                      stale: bool = False) -> list[tuple[str, str]]:
        """The challenge for a request from ``username``: SHA-256 first and then MD5 (each if
        enabled) when the user's phones are known to do SHA-256 (``flags.sha256_digest``),
        else MD5 alone (SHA-256 alone when MD5 is disabled). Every enabled algorithm is
        accepted either way; only the offer differs."""
        user = self.lookup(username) if username else None
        flags = getattr(user, "flags", None)
        offer = SHA256_FIRST if getattr(flags, "sha256_digest", False) else MD5_ONLY
        return self.challenge_headers(header, stale, offer)
