"""Type stub of hpbx._fast.digest: the Digest authentication core (see digest.pyx).

hpbx.sip.auth.Authenticator subclasses DigestAuth and hands in its Verdict members, so callers
get enums while this module stays free of imports from hpbx.
"""
from typing import Any, Callable, Sequence

# Verdict indices: the order of ``verdicts`` given to DigestAuth
OK: int
CHALLENGE: int
STALE: int
FORBIDDEN: int
ALGORITHMS: tuple[str, ...]  # ("MD5", "SHA-256")

def parse_digest(value: object) -> dict[str, str] | None:
    """``Digest username="a", realm="b", ...`` -> {lowercase name: unescaped value}; None when the
    scheme is not Digest, the value is not a str, or the parameter list is malformed."""

def hash_hex(algorithm: str, data: bytes) -> str:
    """MD5 or SHA-256 of ``data`` as lowercase hex; ValueError for another algorithm."""

def siphash24(key: bytes, data: bytes) -> int:
    """SipHash-2-4 under a 16-byte key (the nonce tag)."""

class DigestAuth:
    lookup: Callable[[str], Any]  # username -> user (with .username, .sip_password) or None
    clock: Callable[[], float]
    max_tracked_nonces: int  # nonce-counts per generation before it rotates early

    def __init__(self, lookup: Callable[[str], Any], realm: str, nonce_ttl: float,
                 algorithms: Sequence[str] = ..., clock: Callable[[], float] | None = None,
                 verdicts: Sequence[Any] = ..., max_tracked_nonces: int = 200_000) -> None: ...
    def configure(self, realm: str, nonce_ttl: float, algorithms: Sequence[str]) -> None:
        """New realm, nonce lifetime, offered algorithms (in order); ValueError for an unknown
        algorithm. A new realm drops the HA1 cache."""
    @property
    def realm(self) -> str: ...
    @property
    def nonce_ttl(self) -> float: ...
    @property
    def algorithms(self) -> tuple[str, ...]: ...
    @property
    def tracked_nonces(self) -> int: ...
    def new_nonce(self) -> str:
        """``<issue ms hex>.<counter hex>.<16 hex SipHash tag>``."""
    def challenge_headers(self, header: str = "WWW-Authenticate", stale: bool = False,
                          offer: tuple[str, ...] | None = None) -> list[tuple[str, str]]:
        """One (header, value) per offered algorithm (every enabled one, or the enabled ones
        of ``offer`` in its order), sharing one fresh nonce."""
    def ha1(self, user: Any, algorithm: str) -> str:
        """H(username:realm:password) hex, cached; KeyError for an unknown algorithm."""
    def check(self, method: str, authorization: str | None) -> tuple[Any, Any, str | None]:
        """(verdict, user or None, username or None). Never raises on malformed credentials:
        they get CHALLENGE. A wrong password and an unknown user both get FORBIDDEN."""
