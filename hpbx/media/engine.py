"""The media engine: the narrow command set calls use to anchor their audio in the relay.

A call allocates one relay session (two legs, each an RTP/RTCP port pair), tells the engine
the SDP address of each side, marks hold, reads stats for ``call.list`` and the CDR, and
deletes the session when it ends (also when it ends abnormally). The engine keeps the map from
call key to relay session, and polls the relay for media timeouts, reporting each timed-out
call once to the call layer's callback.

Leg "a" faces the caller: the caller sends to ``port_a`` (written into the SDP hpbx sends to
the caller) and hpbx sends the callee's media to the caller from ``port_a``. Leg "b" faces
the callee the same way with ``port_b``.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hpbx._fast.relay import Relay
from hpbx.errors import NotFoundError, RelayError, ValidationError

log = logging.getLogger(__name__)

LEGS = ("a", "b")


@dataclass(frozen=True, slots=True)
class MediaSession:
    """What a call needs to rewrite SDP: the relay's advertised address and the two RTP ports."""

    key: str
    address: str
    port_a: int
    port_b: int
    handle: int
    address6: str = ""  # the relay's IPv6 address on a dual-stack relay

    def port(self, leg: str) -> int:
        return self.port_a if leg == "a" else self.port_b

    def address_for(self, host: str) -> str:
        """The relay address to write into SDP for a party at ``host`` (its family's)."""
        return self.address6 if self.address6 and ":" in host else self.address


def _check_leg(leg: str) -> str:
    if leg not in LEGS:
        raise ValidationError("leg", f"must be 'a' or 'b', not {leg!r}")
    return leg


def _is_unspecified(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


class MediaEngine:
    """Owns a ``Relay`` and the call → session map.

    ``on_timeout(key)`` is called (from ``check_timeouts`` / ``watch``) once for every session
    without RTP in either direction for ``media_timeout`` seconds that is not on hold.
    """

    def __init__(
        self,
        address: str,
        port_min: int,
        port_max: int,
        *,
        advertise: str = "",
        workers: int = 0,
        strict_latching: bool = False,
        silence: float = 2.0,
        media_timeout: float = 60.0,
        on_timeout: Callable[[str], Any] | None = None,
        address6: str = "",
    ):
        if media_timeout <= 0:
            raise ValidationError("rtp.media_timeout", "must be > 0 seconds")
        self.relay = Relay(address, port_min, port_max, workers=workers,
                           strict_latching=strict_latching, silence=silence, address6=address6)
        self.advertise = advertise or address
        self.address6 = address6
        self.media_timeout = media_timeout
        self.on_timeout = on_timeout
        self._sessions: dict[str, MediaSession] = {}
        self._by_handle: dict[int, str] = {}
        self._reported: set[str] = set()

    @classmethod
    def from_settings(cls, rtp, on_timeout: Callable[[str], Any] | None = None) -> MediaEngine:
        """Build from ``hpbx.settings.RtpSettings``."""
        return cls(rtp.address, rtp.port_min, rtp.port_max, advertise=rtp.advertise,
                   workers=rtp.workers, strict_latching=rtp.strict_latching,
                   media_timeout=rtp.media_timeout, on_timeout=on_timeout, address6=rtp.address6)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self.relay.start()

    def close(self) -> None:
        """Stop the relay threads; every session and port goes with them. Idempotent; relay
        commands afterwards raise RelayError("relay closed")."""
        self.relay.close()
        self._sessions.clear()
        self._by_handle.clear()
        self._reported.clear()

    def __enter__(self) -> MediaEngine:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ commands
    def allocate(self, key: str) -> MediaSession:
        """New relay session for a call (key: Call-ID, or Call-ID plus branch when forking)."""
        if not key:
            raise ValidationError("call_id", "must not be empty")
        if key in self._sessions:
            raise ValidationError("call_id", f"{key!r} already has a media session")
        handle = self.relay.allocate()
        port_a, port_b = self.relay.ports(handle)
        ms = MediaSession(key, self.advertise, port_a, port_b, handle, self.address6)
        self._sessions[key] = ms
        self._by_handle[handle] = key
        return ms

    def get(self, key: str) -> MediaSession:
        try:
            return self._sessions[key]
        except KeyError:
            raise NotFoundError("media session", key) from None

    def set_peer(self, key: str, leg: str, host: str, port: int, *, rtcp_port: int = 0,
                 rtcp_mux: bool = False) -> None:
        """The SDP address of one side: the first send target until that side's packets are seen.

        ``c=0.0.0.0`` (RFC 2543 hold) keeps the current peer and puts the session on hold.
        """
        ms = self.get(key)
        _check_leg(leg)
        if _is_unspecified(host):
            self.set_hold(key, True)
            return
        try:
            self.relay.set_peer(ms.handle, leg, host, port, rtcp_port, rtcp_mux)
        except RelayError as e:
            raise ValidationError(f"sdp.{leg}", str(e)) from None

    def offer(self, key: str, host: str, port: int, **kw: Any) -> None:
        """Caller's SDP (leg a)."""
        self.set_peer(key, "a", host, port, **kw)

    def answer(self, key: str, host: str, port: int, **kw: Any) -> None:
        """Callee's SDP (leg b)."""
        self.set_peer(key, "b", host, port, **kw)

    def relatch(self, key: str, leg: str | None = None) -> None:
        """After a re-INVITE: accept a new source on one leg (or both)."""
        ms = self.get(key)
        for lg in (_check_leg(leg),) if leg else LEGS:
            self.relay.relatch(ms.handle, lg)

    def set_hold(self, key: str, hold: bool) -> None:
        """A held call (sendonly/inactive) is never reported as a media timeout."""
        ms = self.get(key)
        self.relay.set_hold(ms.handle, hold)
        if not hold:
            self._reported.discard(key)

    def set_clock_rate(self, key: str, leg: str, rate: int) -> None:
        self.relay.set_clock_rate(self.get(key).handle, _check_leg(leg), rate)

    def stats(self, key: str) -> dict[str, Any]:
        ms = self.get(key)
        s = self.relay.stats(ms.handle)
        s["call_id"] = key
        s["address"] = ms.address
        return s

    def delete(self, key: str) -> dict[str, Any] | None:
        """Free the call's ports; returns the final stats (for the CDR), None if it had none.

        Safe to call twice and on every abnormal end: a missing session is not an error here.
        """
        ms = self._sessions.pop(key, None)
        if ms is None:
            return None
        self._by_handle.pop(ms.handle, None)
        self._reported.discard(key)
        try:
            final = self.relay.stats(ms.handle)
        except RelayError:
            final = None
        self.relay.delete(ms.handle)
        return final

    def list(self) -> list[dict[str, Any]]:
        """One summary per call, for ``call.list``."""
        out = []
        for key in list(self._sessions):
            s = self.stats(key)
            out.append({
                "call_id": key,
                "address": s["address"],
                "hold": s["hold"],
                "legs": {lg: {k: s[lg][k] for k in ("port", "peer", "packets", "bytes", "lost",
                                                    "jitter_ms", "last_packet")} for lg in LEGS},
            })
        return out

    # ------------------------------------------------------------------ pool
    def free_pairs(self) -> int:
        return self.relay.free_pairs()

    def used_pairs(self) -> int:
        return self.relay.used_pairs()

    def __len__(self) -> int:
        return len(self._sessions)

    # ------------------------------------------------------------------ media timeout
    def check_timeouts(self) -> list[str]:
        """Report newly timed-out calls to ``on_timeout``; returns their keys."""
        if self.relay.closed:
            return []
        fresh = []
        for handle in self.relay.timed_out(self.media_timeout):
            key = self._by_handle.get(handle)
            if key is None or key in self._reported:
                continue
            self._reported.add(key)
            fresh.append(key)
        if self.on_timeout is not None:
            for key in fresh:
                try:
                    self.on_timeout(key)
                except Exception:
                    # one failing call must not stop the watch for all others
                    log.exception("media timeout handler failed for %s", key)
        return fresh

    async def watch(self, interval: float = 1.0) -> None:
        """Poll for media timeouts until cancelled or the relay is closed (run as a task by the
        app, which cancels and awaits it before ``close``)."""
        while True:
            await asyncio.sleep(interval)
            if self.relay.closed:
                return
            try:
                self.check_timeouts()
            except RelayError:
                if self.relay.closed:
                    return  # closed under us: the watch simply ends
                raise
