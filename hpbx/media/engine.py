"""The media engine: the narrow command set calls use to anchor and terminate their audio.

A call allocates one relay session (two legs, each an RTP/RTCP port pair), tells the engine
the SDP address of each side, marks hold, reads stats for ``call.list`` and the CDR, and
deletes the session when it ends (also when it ends abnormally). The engine keeps the map from
call key to relay session, and polls the relay for media timeouts, reporting each timed-out
call once to the call layer's callback.

Leg "a" faces the caller: the caller sends to ``port_a`` (written into the SDP hpbx sends to
the caller) and hpbx sends the callee's media to the caller from ``port_a``. Leg "b" faces
the callee the same way with ``port_b``.

Media endpoints (the relay's native workers do the work; Python never touches a frame):

    engine.add_prompt(name, pcm) -> ms          8 kHz s16le mono, encoded once to PCMA/PCMU and
                                                shared; replacing a name is atomic (players of
                                                the old audio finish it)
    engine.remove_prompt(name); engine.has_prompt(name) -> bool
    engine.terminate(key, leg, codec="PCMA", pt=8, ptime_ms=20, dtmf_pt=101, inband=False)
                                                codec PCMA, PCMU or G722 (when built with
                                                spandsp: CODECS lists them)
                                                the leg ends at hpbx: what it receives is
                                                consumed (digits, recorder, room); what hpbx
                                                plays leaves from the leg's port. Again on a
                                                terminated leg: change codec/ptime/digits.
    engine.bridge(key, leg=None)                back to relaying (the leg keeps its outgoing
                                                SSRC/seq/timestamps: relayed packets are
                                                rewritten into them)
    engine.watch_digits(key, leg, on_digit, dtmf_pts=(101,), inband=False, codec="PCMA", pt=None)
                                                a RELAYED leg reports its digits (RFC 4733 of
                                                up to two payload types, in-band when asked)
                                                to on_digit(MediaEvent) while its packets are
                                                relayed unchanged (in the native worker, no
                                                GIL); such digits never go to next_event.
                                                While the leg is terminated its endpoint hears
                                                the digits instead (normal digit events).
    engine.unwatch_digits(key, leg=None)
    engine.play(key, leg, prompts, loop=False, barge_in="", start_ms=0)
    engine.stop_play(key, leg)
    engine.tone(key, leg, name, loop=True)      ringback, busy, congestion, dial, beep, join,
                                                leave (TONES: 425 Hz CEPT defaults)
    engine.record(key, leg, path, max_ms=, silence_ms=0, stop_digits="", beep=False) -> id
    engine.stop_record(key, leg)
    engine.send_dtmf(key, leg, digits, duration_ms=100)   RFC 4733 (or in-band without dtmf_pt)
    engine.room_create() -> room; room_join(room, key, leg); room_leave(key, leg);
    engine.room_mute(key, leg, muted); room_delete(room)
    engine.media_stats() -> dict                players, recorders, rooms, late ticks,
                                                send-jitter p50/p99 (ms), ...

Events (MediaEvent: kind, key, leg, data, time = time.monotonic() of the event) reach the
asyncio loop through an eventfd reader (attached by ``start()`` inside a running loop, or by
``attach_loop()``): ``on_event(event)`` is called for each, and ``await next_event(key, kinds,
timeout)`` returns the next one of a call (events not yet asked for wait, up to 64 per call):

    digit        {"digit": "5", "source": "rfc4733"|"inband", "duration_ms": 120}
    play_done    {"reason": "end"|"barge_in"|"stopped"}
    tone_done    {"reason": "end"|"stopped"}
    record_done  {"path", "ms", "reason": "digit"|"silence"|"max"|"stopped"|"hangup"|"error",
                  "digit"}
    fax_done     {"id", "path", "pages", "ok", "status" (spandsp T30_ERR_* code), "reason" (its
                  text), "phase", "remote_ident", "bit_rate", "ecm", "x_resolution",
                  "y_resolution", "transfer_ms", "lost_packets", ...}  (see fax_receive)

Bad input raises ValidationError naming the field, or NotFoundError (unknown prompt, tone,
room or call).
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hpbx._fast.relay import CODECS, DIGITS, FAX, PLAY_REASONS, RECORD_REASONS, FaxCore, MediaCore, Prompt, Relay
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


@dataclass(frozen=True, slots=True)
class MediaEvent:
    """What a media endpoint reports: kind "digit", "play_done", "tone_done", "record_done"."""

    kind: str
    key: str
    leg: str
    data: dict = field(default_factory=dict)
    time: float = 0.0


# Tones: (segments of (frequencies Hz, ms); silence = ()), at -13 dBm0 per frequency.
# Country-neutral CEPT/ETSI defaults (ETSI TR 101 041): 425 Hz.
TONES: dict[str, list[tuple[tuple[float, ...], int]]] = {
    "ringback": [((425.0,), 1000), ((), 4000)],
    "busy": [((425.0,), 500), ((), 500)],
    "congestion": [((425.0,), 250), ((), 250)],
    "dial": [((425.0,), 1000)],
    "beep": [((1000.0,), 250)],
    "join": [((660.0,), 120), ((), 40), ((880.0,), 160)],
    "leave": [((880.0,), 120), ((), 40), ((660.0,), 160)],
}
_TONE_AMPLITUDE = 22776 * 10 ** (-13 / 20)  # 0 dBm0 = 22776 (G.711 overload at +3.14 dBm0)
_EVENT_BACKLOG = 64  # events per call kept for next_event
_MAX_RECORD_MS = 3 * 3600 * 1000
_ENDED_KEEP = 30.0  # seconds a deleted call's last events stay readable


def tone_pcm(segments: Iterable[tuple[tuple[float, ...], int]]) -> bytes:
    """8 kHz s16le PCM of a tone cadence (one period)."""
    parts = []
    for freqs, ms in segments:
        t = np.arange(ms * 8) / 8000.0
        x = np.zeros(len(t))
        for f in freqs:
            x += _TONE_AMPLITUDE * np.sin(2 * np.pi * f * t)
        parts.append(x)
    return np.concatenate(parts).astype("<i2").tobytes()


def _check_leg(leg: str) -> str:
    if leg not in LEGS:
        raise ValidationError("leg", f"must be 'a' or 'b', not {leg!r}")
    return leg


def _is_unspecified(host: str) -> bool:
    # inet_pton, not ipaddress: this runs twice per call, and address objects cost ~4 us each
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            return not any(socket.inet_pton(family, host))
        except (OSError, ValueError):  # ValueError: a NUL in it
            continue
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
        io: str = "auto",
        nice: int = 0,
        on_event: Callable[[MediaEvent], Any] | None = None,
    ):
        if media_timeout <= 0:
            raise ValidationError("rtp.media_timeout", "must be > 0 seconds")
        self.relay = Relay(address, port_min, port_max, workers=workers,
                           strict_latching=strict_latching, silence=silence, address6=address6,
                           io=io, nice=nice)
        self.media = MediaCore(self.relay)
        self.on_event = on_event
        self._prompts: dict[str, Prompt] = {}
        self._tones = {name: Prompt(tone_pcm(segs)) for name, segs in TONES.items()}
        self._endpoints: dict[tuple[str, str], dict[str, Any]] = {}
        self._watchers: dict[tuple[str, str], Callable[[MediaEvent], Any]] = {}
        self._recordings: dict[int, tuple[str, str, str]] = {}  # id -> key, leg, path
        self.fax = FaxCore(self.media) if FAX else None
        self._faxes: dict[int, tuple[str, str, str]] = {}  # fax id -> key, leg, path
        # deleted calls whose events can still be taken: until this monotonic time (inf while a
        # recording of theirs is still being finished)
        self._ended: dict[str, float] = {}
        self._backlog: dict[str, deque[MediaEvent]] = {}
        self._waiters: dict[str, list[tuple[frozenset[str] | None, asyncio.Future]]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
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
        """Start the relay threads; inside a running asyncio loop, also take events there."""
        self.relay.start()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self.attach_loop(loop)

    def attach_loop(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Deliver media events on ``loop`` (default: the running one). Idempotent."""
        loop = loop or asyncio.get_running_loop()
        if self._loop is loop:
            return
        self.detach_loop()
        loop.add_reader(self.media.fileno(), self.drain_events)
        self._loop = loop

    def detach_loop(self) -> None:
        if self._loop is not None and not self.relay.closed:
            try:
                self._loop.remove_reader(self.media.fileno())
            except (RuntimeError, ValueError):
                pass  # the loop is already closed
        self._loop = None

    def close(self) -> None:
        """Stop the relay threads; every session and port goes with them. Idempotent; relay
        commands afterwards raise RelayError("relay closed")."""
        self.detach_loop()
        self.relay.close()
        self._sessions.clear()
        self._by_handle.clear()
        self._reported.clear()
        self._endpoints.clear()
        for waiters in self._waiters.values():
            for _, fut in waiters:
                if not fut.done():
                    fut.cancel()
        self._waiters.clear()
        self._backlog.clear()
        self._recordings.clear()
        self._ended.clear()

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

    def switch(self, key: str, leg: str) -> None:
        """A new party on one leg (transfer, pickup, call move; after set_peer with its SDP):
        the relay sends to it at once and latches its first packet; the old party's packets
        are relayed meanwhile but cannot take the leg back (hpbx._fast.relay ``switch``)."""
        ms = self.get(key)
        self.relay.switch(ms.handle, _check_leg(leg))

    def adopt_stream(self, key: str, leg: str, source_key: str, source_leg: str) -> None:
        """A party moves from session ``source_key`` (its ``source_leg`` faced it) to ``key``'s
        ``leg`` (an attended transfer's target): it goes on receiving one continuous stream.
        Call before ``source_key`` is deleted."""
        ms, src = self.get(key), self.get(source_key)
        self.relay.adopt_stream(ms.handle, _check_leg(leg), src.handle, _check_leg(source_leg))

    def set_hold(self, key: str, hold: bool) -> None:
        """A held call (sendonly/inactive) is never reported as a media timeout."""
        ms = self.get(key)
        self.relay.set_hold(ms.handle, hold)
        if not hold:
            self._reported.discard(key)

    def set_clock_rate(self, key: str, leg: str, rate: int) -> None:
        self.relay.set_clock_rate(self.get(key).handle, _check_leg(leg), rate)

    def set_udptl(self, key: str, leg: str | None = None, on: bool = True) -> None:
        """One leg (or both, for a relayed T.38 call) carries T.38 UDPTL instead of RTP."""
        ms = self.get(key)
        for lg in (_check_leg(leg),) if leg else LEGS:
            self.relay.set_udptl(ms.handle, lg, on)

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
        self._reported.discard(key)
        try:
            final = self.relay.stats(ms.handle)
        except RelayError:
            final = None
        self.relay.delete(ms.handle, False)  # no round trip to the relay worker per call
        for lg in LEGS:
            self._endpoints.pop((key, lg), None)
        if any(k == key for k, _, _ in self._recordings.values()) or any(
                k == key for k, _, _ in self._faxes.values()):
            # its record_done ("hangup") comes once the file is complete: keep the call's
            # events readable until then, and a while after
            self._ended[key] = float("inf")
        self.drain_events()
        self._by_handle.pop(ms.handle, None)
        for lg in LEGS:
            self._watchers.pop((key, lg), None)
        if key not in self._ended:
            self._forget_events(key)
        self._purge_ended()
        return final

    def _purge_ended(self) -> None:
        now = time.monotonic()
        for key in [k for k, until in self._ended.items() if until < now]:
            self._forget_events(key)

    def _forget_events(self, key: str) -> None:
        self._ended.pop(key, None)
        self._backlog.pop(key, None)
        for _, fut in self._waiters.pop(key, []):
            if not fut.done():
                fut.cancel()

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

    # ------------------------------------------------------------------ prompts
    def add_prompt(self, name: str, pcm: bytes) -> int:
        """Load 8 kHz s16le mono PCM under ``name``; returns its length in ms. Replacing a name
        is atomic: calls playing the old audio finish it, new plays get the new one."""
        if not name or not isinstance(name, str):
            raise ValidationError("name", "must be a non-empty string")
        if not isinstance(pcm, bytes | bytearray | memoryview):
            raise ValidationError("pcm", "must be bytes (8 kHz s16le mono)")
        pcm = bytes(pcm)
        if len(pcm) < 2 or len(pcm) % 2:
            raise ValidationError("pcm", "must be a whole number of 16-bit samples, at least one")
        try:
            p = Prompt(pcm)
        except RelayError as e:
            raise ValidationError("pcm", str(e)) from None
        self._prompts[name] = p
        return p.duration_ms

    def remove_prompt(self, name: str) -> None:
        """Forget a prompt; calls playing it finish it."""
        if self._prompts.pop(name, None) is None:
            raise NotFoundError("prompt", name)

    def has_prompt(self, name: str) -> bool:
        return name in self._prompts

    def prompt_ms(self, name: str) -> int:
        try:
            return self._prompts[name].duration_ms
        except KeyError:
            raise NotFoundError("prompt", name) from None

    # ------------------------------------------------------------------ endpoints
    def _endpoint(self, key: str, leg: str) -> tuple[MediaSession, dict[str, Any]]:
        ms = self.get(key)
        ep = self._endpoints.get((key, _check_leg(leg)))
        if ep is None:
            raise ValidationError("leg", f"leg {leg!r} of {key!r} is not terminated (terminate first)")
        return ms, ep

    def terminate(self, key: str, leg: str, *, codec: str = "PCMA", pt: int | None = None,
                  ptime_ms: int = 20, dtmf_pt: int | None = 101, inband: bool = False) -> None:
        """End ``leg`` at a media endpoint (see the module doc); again to change its settings."""
        ms = self.get(key)
        _check_leg(leg)
        if codec not in CODECS:
            raise ValidationError("codec", f"must be one of {', '.join(CODECS)}, not {codec!r}")
        if pt is None:
            pt = {"PCMA": 8, "PCMU": 0, "G722": 9}[codec]
        if not isinstance(pt, int) or not 0 <= pt <= 127:
            raise ValidationError("pt", f"must be a payload type 0-127, not {pt!r}")
        if ptime_ms not in (10, 20, 30):
            raise ValidationError("ptime_ms", f"must be 10, 20 or 30, not {ptime_ms!r}")
        if dtmf_pt is not None and (not isinstance(dtmf_pt, int) or not 0 <= dtmf_pt <= 127
                                    or dtmf_pt == pt):
            raise ValidationError("dtmf_pt", f"must be a payload type 0-127 other than pt, not {dtmf_pt!r}")
        self.media.terminate(ms.handle, leg, codec, pt, ptime_ms, -1 if dtmf_pt is None else dtmf_pt,
                             bool(inband))
        self._endpoints[(key, leg)] = {"codec": codec, "pt": pt, "ptime_ms": ptime_ms,
                                       "dtmf_pt": dtmf_pt, "inband": bool(inband)}

    def watch_digits(self, key: str, leg: str, on_digit: Callable[[MediaEvent], Any], *,
                     dtmf_pts: Iterable[int | None] = (101,), inband: bool = False,
                     codec: str = "PCMA", pt: int | None = None) -> None:
        """Hear the digits of a relayed leg without stopping the relay (see the module doc);
        again to change the settings or the listener."""
        ms = self.get(key)
        _check_leg(leg)
        if not callable(on_digit):
            raise ValidationError("on_digit", "must be callable")
        pts = [p for p in dtmf_pts if p is not None]
        if len(pts) > 2 or any(not isinstance(p, int) or not 0 <= p <= 127 for p in pts):
            raise ValidationError("dtmf_pts", f"at most two payload types 0-127, not {list(dtmf_pts)!r}")
        if codec not in CODECS:
            raise ValidationError("codec", f"must be one of {', '.join(CODECS)}, not {codec!r}")
        if pt is None:
            pt = {"PCMA": 8, "PCMU": 0, "G722": 9}[codec]
        if not isinstance(pt, int) or not 0 <= pt <= 127 or pt in pts:
            raise ValidationError("pt", f"must be an audio payload type 0-127, not {pt!r}")
        if not pts and not inband:
            raise ValidationError("dtmf_pts", "nothing to watch (no payload type and inband off)")
        pts += [-1] * (2 - len(pts))
        self.media.watch(ms.handle, leg, pts[0], pts[1], bool(inband), codec, pt)
        self._watchers[(key, leg)] = on_digit

    def unwatch_digits(self, key: str, leg: str | None = None) -> None:
        """Stop watching one leg's digits (or both); unknown calls are ignored."""
        ms = self._sessions.get(key)
        for lg in (_check_leg(leg),) if leg else LEGS:
            if self._watchers.pop((key, lg), None) is not None and ms is not None:
                self.media.watch(ms.handle, lg, -1, -1, False, "PCMA", 8)

    def is_watched(self, key: str, leg: str) -> bool:
        return (key, leg) in self._watchers

    def is_terminated(self, key: str, leg: str) -> bool:
        return (key, leg) in self._endpoints

    def bridge(self, key: str, leg: str | None = None) -> None:
        """Back to relaying on one leg (or both); what the endpoint did stops ("stopped")."""
        ms = self.get(key)
        for lg in (_check_leg(leg),) if leg else LEGS:
            if self._endpoints.pop((key, lg), None) is not None:
                self.media.bridge(ms.handle, lg)

    @staticmethod
    def _digits(fieldname: str, digits: str) -> int:
        if not isinstance(digits, str):
            raise ValidationError(fieldname, "must be a string of DTMF digits")
        m = 0
        for c in digits.upper():
            i = DIGITS.find(c)
            if i < 0:
                raise ValidationError(fieldname, f"{c!r} is not a DTMF digit (0-9, *, #, A-D)")
            m |= 1 << i
        return m

    def play(self, key: str, leg: str, prompts: list[str] | str, *, loop: bool = False,
             barge_in: str = "", start_ms: int = 0) -> None:
        """Play prompts in order (or in a loop, e.g. music on hold, from ``start_ms`` into the
        first). A digit in ``barge_in`` stops it. Ends with play_done."""
        ms, _ = self._endpoint(key, leg)
        if isinstance(prompts, str):
            prompts = [prompts]
        if not prompts:
            raise ValidationError("prompts", "must name at least one prompt")
        objs = []
        for name in prompts:
            p = self._prompts.get(name)
            if p is None:
                raise NotFoundError("prompt", name)
            objs.append(p)
        if not isinstance(start_ms, int) or start_ms < 0:
            raise ValidationError("start_ms", "must be >= 0")
        self.media.play(ms.handle, leg, objs, loop=bool(loop), barge=self._digits("barge_in", barge_in),
                        start_samples=start_ms * 8)

    def stop_play(self, key: str, leg: str) -> None:
        ms, _ = self._endpoint(key, leg)
        self.media.stop_play(ms.handle, leg)

    def tone(self, key: str, leg: str, name: str, *, loop: bool = True) -> None:
        """Play a tone (TONES); a tone that does not loop ends with tone_done."""
        ms, _ = self._endpoint(key, leg)
        p = self._tones.get(name)
        if p is None:
            raise NotFoundError("tone", name)
        self.media.play(ms.handle, leg, [p], loop=bool(loop), tone=True)

    def stop_tone(self, key: str, leg: str) -> None:
        self.stop_play(key, leg)

    def record(self, key: str, leg: str, path: str, *, max_ms: int, silence_ms: int = 0,
               stop_digits: str = "", beep: bool = False) -> int:
        """Record what the leg receives into a WAV file (8 kHz, 16 bit, mono) until a digit of
        ``stop_digits``, ``silence_ms`` of silence, ``max_ms``, stop_record or hangup; then
        record_done. ``beep`` plays the beep first and records after it. Returns its id."""
        ms, _ = self._endpoint(key, leg)
        if not isinstance(max_ms, int) or not 0 < max_ms <= _MAX_RECORD_MS:
            raise ValidationError("max_ms", f"must be 1-{_MAX_RECORD_MS}")
        if not isinstance(silence_ms, int) or silence_ms < 0:
            raise ValidationError("silence_ms", "must be >= 0 (0 = no silence stop)")
        mask = self._digits("stop_digits", stop_digits)
        if not path or not isinstance(path, str):
            raise ValidationError("path", "must be a file path")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
        except OSError as e:
            raise ValidationError("path", f"cannot create {path!r}: {e.strerror}") from None
        gate = 0
        try:
            os.write(fd, bytes(44))  # the header is written when the recording ends
            if beep:
                self.media.play(ms.handle, leg, [self._tones["beep"]], tone=True)
                gate = self._tones["beep"].duration_ms + 20
        except BaseException:
            os.close(fd)
            raise
        rid = self.media.record(ms.handle, leg, fd, max_ms, silence_ms, mask, gate)
        self._recordings[rid] = (key, leg, path)
        return rid

    def stop_record(self, key: str, leg: str) -> None:
        ms, _ = self._endpoint(key, leg)
        self.media.stop_record(ms.handle, leg)

    def send_dtmf(self, key: str, leg: str, digits: str, *, duration_ms: int = 100) -> None:
        """Send digits: RFC 4733 (3 end packets, volume -10 dBm0) with a dtmf_pt, else in-band."""
        ms, _ = self._endpoint(key, leg)
        self._digits("digits", digits)
        if not digits or len(digits) > 32:
            raise ValidationError("digits", "must be 1-32 digits")
        if not isinstance(duration_ms, int) or not 40 <= duration_ms <= 2000:
            raise ValidationError("duration_ms", "must be 40-2000")
        try:
            self.media.send_dtmf(ms.handle, leg, digits, duration_ms)
        except RelayError as e:
            raise ValidationError("digits", str(e)) from None

    # ------------------------------------------------------------------ rooms
    def room_create(self) -> int:
        """A mixing room: each member hears the loudest three others, not itself."""
        try:
            return self.media.room_create()
        except RelayError as e:
            raise ValidationError("room", str(e)) from None

    def room_join(self, room: int, key: str, leg: str) -> None:
        ms, _ = self._endpoint(key, leg)
        try:
            self.media.room_join(room, ms.handle, leg)
        except RelayError as e:
            if "unknown room" in str(e):
                raise NotFoundError("room", room) from None
            raise ValidationError("room", str(e)) from None

    def room_leave(self, key: str, leg: str) -> None:
        ms, _ = self._endpoint(key, leg)
        self.media.room_leave(ms.handle, leg)

    def room_mute(self, key: str, leg: str, muted: bool) -> None:
        ms, _ = self._endpoint(key, leg)
        try:
            self.media.room_mute(ms.handle, leg, bool(muted))
        except RelayError:
            raise ValidationError("leg", f"leg {leg!r} of {key!r} is in no room") from None

    def room_delete(self, room: int) -> None:
        try:
            self.media.room_delete(room)
        except RelayError:
            raise NotFoundError("room", room) from None

    def media_stats(self) -> dict[str, Any]:
        s = self.media.stats()
        s["prompts"] = len(self._prompts)
        return s

    # ------------------------------------------------------------------ events
    def drain_events(self) -> None:
        """Hand every waiting event out (the loop's reader calls it; code without a loop may
        call it when ``media.fileno()`` is readable)."""
        if self.relay.closed:
            return
        while True:
            batch = self.media.events()
            for kind, handle, li, t, digit, source, value, rid, reason in batch:
                if kind == "fax_done":
                    self._fax_done(rid, t)
                    continue
                if kind == "record_done":
                    rec = self._recordings.pop(rid, None)
                    if rec is None:
                        continue
                    key, leg, path = rec
                    self._deliver(MediaEvent(kind, key, leg, {"path": path, "ms": value,
                                                              "reason": RECORD_REASONS[reason],
                                                              "digit": digit}, t))
                    if key in self._ended and not any(k == key for k, _, _ in self._recordings.values()):
                        if self._backlog.get(key):
                            self._ended[key] = time.monotonic() + _ENDED_KEEP
                        else:
                            self._forget_events(key)  # a waiter took it already
                    continue
                key = self._by_handle.get(handle)
                if key is None:
                    continue
                if kind == "digit":
                    data = {"digit": digit, "source": ("rfc4733", "inband")[source], "duration_ms": value}
                    if reason == 1:  # heard on a relayed leg: only its watcher gets it
                        data["relayed"] = True
                        watcher = self._watchers.get((key, LEGS[li]))
                        if watcher is not None:
                            try:
                                watcher(MediaEvent(kind, key, LEGS[li], data, t))
                            except Exception:
                                log.exception("digit watcher failed for %s", key)
                        continue
                else:
                    data = {"reason": PLAY_REASONS[reason]}
                self._deliver(MediaEvent(kind, key, LEGS[li], data, t))
            if len(batch) < 256:
                return

    # ------------------------------------------------------------------ fax (media_fax.h)
    def _fax_start(self, key: str, leg: str, path: str, send: bool, ident: str, header: str,
                   ecm: bool, t38: bool = False) -> int:
        ms, ep = self._endpoint(key, leg)
        if self.fax is None:
            raise ValidationError("fax", "this build has no fax (spandsp missing)")
        if not t38 and ep["codec"] not in ("PCMA", "PCMU"):
            raise ValidationError("codec", f"fax runs over PCMA or PCMU, not {ep['codec']}")
        if not path or not isinstance(path, str):
            raise ValidationError("path", "must be a file path")
        for fieldname, v, n in (("ident", ident, 20), ("header", header, 50)):
            if not isinstance(v, str) or len(v) > n or not v.isascii() or not v.isprintable():
                raise ValidationError(fieldname, f"must be printable ASCII of at most {n} characters")
        try:
            fid = self.fax.start(ms.handle, leg, path, send=send, ident=ident, header=header, ecm=ecm,
                                 t38=t38)
        except RelayError as e:
            raise ValidationError("leg", str(e)) from None
        if t38:  # an audio fax it replaced ends without fax_done
            for old in [f for f, (k, lg, _) in self._faxes.items() if k == key and lg == leg]:
                del self._faxes[old]
        self._faxes[fid] = (key, leg, path)
        return fid

    def fax_receive(self, key: str, leg: str, path: str, *, ident: str = "", ecm: bool = True,
                    t38: bool = False) -> int:
        """Answer a fax on a terminated G.711 leg (T.30 as the called party), writing the pages
        to ``path`` (TIFF-F); ``ident`` is our CSID. Ends with fax_done. Returns the fax id.
        ``t38``: the leg carries T.38 over UDPTL (after an image/t38 offer) instead of audio; an
        audio fax already running there is replaced (it ends without fax_done)."""
        return self._fax_start(key, leg, path, False, ident, "", ecm, t38)

    def fax_send(self, key: str, leg: str, path: str, *, ident: str = "", header: str = "",
                 ecm: bool = True, t38: bool = False) -> int:
        """Send the pages of the TIFF-F ``path`` (T.4/T.6, fax widths and resolutions) as the
        calling party; ``header`` is printed on top of each page. Ends with fax_done.
        ``t38``: over T.38/UDPTL (see fax_receive)."""
        if not isinstance(path, str) or not os.path.isfile(path):
            raise ValidationError("path", f"no such file {path!r}")
        return self._fax_start(key, leg, path, True, ident, header, ecm, t38)

    def fax_stop(self, key: str, leg: str) -> None:
        """End the fax now (fax_done comes, reason call dropped, with the pages so far)."""
        ms, _ = self._endpoint(key, leg)
        if self.fax is not None:
            self.fax.stop(ms.handle, leg)

    def _fax_done(self, fid: int, t: float) -> None:
        rec = self._faxes.pop(fid, None)
        if rec is None:
            return
        key, leg, path = rec
        info = FaxCore.info(fid) or {"id": fid, "status": -1, "reason": "unknown", "pages": 0}
        info["path"] = path
        info["ok"] = info.get("status") == 0
        self._deliver(MediaEvent("fax_done", key, leg, info, t))
        if key in self._ended and not any(k == key for k, _, _ in self._recordings.values()) \
                and not any(k == key for k, _, _ in self._faxes.values()):
            if self._backlog.get(key):
                self._ended[key] = time.monotonic() + _ENDED_KEEP
            else:
                self._forget_events(key)

    def _deliver(self, ev: MediaEvent) -> None:
        if self.on_event is not None:
            try:
                self.on_event(ev)
            except Exception:
                log.exception("media event handler failed for %s", ev.key)
        waiters = self._waiters.get(ev.key)
        if waiters:
            for i, (kinds, fut) in enumerate(waiters):
                if fut.done():
                    continue
                if kinds is None or ev.kind in kinds:
                    del waiters[i]
                    fut.set_result(ev)
                    return
        q = self._backlog.get(ev.key)
        if q is None:
            q = self._backlog[ev.key] = deque(maxlen=_EVENT_BACKLOG)
        q.append(ev)

    async def next_event(self, key: str, kinds: Iterable[str] | str | None = None,
                         timeout: float | None = None) -> MediaEvent | None:
        """The call's next event of ``kinds`` (all kinds if None), waiting at most ``timeout``
        seconds (None: no limit); None on timeout. Events nobody asked for yet are kept (64 per
        call), so ``play(...)`` then ``await next_event(key, "play_done")`` cannot miss it.
        After ``delete`` a call's record_done still comes (reason "hangup")."""
        if key not in self._ended:
            self.get(key)
        want = frozenset([kinds] if isinstance(kinds, str) else kinds) if kinds is not None else None
        q = self._backlog.get(key)
        if q:
            for ev in q:
                if want is None or ev.kind in want:
                    q.remove(ev)
                    if not q and self._ended.get(key, float("inf")) != float("inf"):
                        self._forget_events(key)  # the ended call's last event was taken
                    return ev
        fut = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(key, []).append((want, fut))
        try:
            return await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            return None
        finally:
            ws = self._waiters.get(key)
            if ws:
                ws[:] = [w for w in ws if w[1] is not fut]

    def clear_events(self, key: str) -> None:
        """Forget the call's events not yet taken (e.g. digits typed ahead of a menu)."""
        self._backlog.pop(key, None)
