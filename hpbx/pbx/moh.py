"""Music on hold and ring-back inside a relayed call (hooks called from hpbx/pbx/call.py).

Music on hold: a party that holds (re-INVITE or UPDATE with ``a=sendonly``, ``a=inactive``, or
the ``c=0.0.0.0`` of RFC 2543 phones) has its offer passed on to the other party as
``a=sendonly`` from the relay (the relay is what sends now), the other party answers recvonly,
and the relay leg facing the other party becomes a media endpoint that loops the tenant's music
(``music_on_hold``: a music class, or ``announcement:<id>``), in the codec that party answered
with. The holder gets the answer its offer needs (recvonly to sendonly, inactive to inactive).
Resume (a sendrecv offer) turns the leg back to relaying: the held party hears the holder again,
on the same SSRC and sequence.

Ring-back: a caller that already hears hpbx's early media (an announcement before the rows,
``Call.early_codec``) would hear silence while the targets ring with 180 and no SDP; the relay
leg facing the caller plays the ring-back tone then, until a callee's early media (183 with
SDP) or the answer.
"""
from __future__ import annotations

import logging
import re

from hpbx.errors import HpbxError
from hpbx.pbx import anchor

log = logging.getLogger("hpbx.pbx.moh")

_DIRECTION = re.compile(rb"(?m)^a=(sendrecv|sendonly|recvonly|inactive)\r?$")


def _set_direction(body: bytes, direction: str) -> bytes:
    """``body`` with its (first audio stream's / session) direction set to ``direction``."""
    new = b"a=" + direction.encode()
    if _DIRECTION.search(body):
        return _DIRECTION.sub(new, body)
    return body.rstrip(b"\r\n") + b"\r\n" + new + b"\r\n"


def music_for(svc, tenant: str) -> list[str]:
    """Engine prompt names of the tenant's music on hold ([] when none can be found)."""
    lib = getattr(svc, "prompts", None)
    if lib is None:
        return []
    choice = "default"
    try:
        choice = svc.provisioning.directory.tenant(tenant).music_on_hold or "default"
    except Exception:
        pass
    if choice.startswith("announcement:"):
        try:
            ann = svc.provisioning.directory.objects(tenant).announcements.get(int(choice.split(":")[1]))
        except Exception:
            ann = None
        name = lib.announcement(tenant, ann) if ann is not None else ""
        if name:
            return [name]
        log.warning("tenant %s: music on hold %s not found: the default plays", tenant, choice)
        choice = "default"
    return lib.music(choice)


# ---------------------------------------------------------------------- hold
def offer(call, side, raw: bytes, body: bytes) -> bytes:
    """A re-offer from ``side`` (raw SDP as sent, ``body`` as anchored for the other side)."""
    try:
        p = anchor.peer(raw)
    except HpbxError:
        return body
    holding = p.direction in ("sendonly", "inactive") or p.host in ("0.0.0.0", "::")
    if holding:
        if not music_for(call.service, call.tenant):
            return body
        call.moh = {"holder": side, "offered": "inactive" if p.direction == "inactive" else "sendonly",
                    "state": "pending"}
        return _set_direction(body, "sendonly")
    if call.moh is not None and call.moh.get("holder") == side:
        call.moh["state"] = "resume"
    return body


def answer(call, side, raw: bytes, body: bytes) -> bytes:
    """The other party's 2xx to ``side``'s re-offer: start or stop the music."""
    m = call.moh
    if m is None or m.get("holder") != side:
        return body
    svc = call.service
    leg = "b" if side == "a" else "a"  # the relay leg facing the held party
    if m["state"] == "pending":
        try:
            from hpbx.pbx.media_channel import parse_offer
            c = parse_offer(raw)
            music = music_for(svc, call.tenant)
            svc.media.terminate(call.id, leg, codec=c["codec"], pt=c["pt"], ptime_ms=c["ptime"],
                                dtmf_pt=c["dtmf_pt"], inband=False)
            svc.media.play(call.id, leg, music, loop=True)
            m["state"] = "playing"
            log.info("[%s] %s holds: music on hold to the other party (%s)", call.id,
                     "caller" if side == "a" else "callee", ", ".join(music))
        except HpbxError as exc:
            log.warning("[%s] music on hold not started: %s", call.id, exc)
            call.moh = None
        return _set_direction(body, "inactive" if m["offered"] == "inactive" else "recvonly")
    if m["state"] == "resume":
        call.moh = None
        try:
            svc.media.bridge(call.id, leg)
        except HpbxError:
            pass
        log.info("[%s] resumed: music on hold stopped", call.id)
    return body


def stop(call) -> None:
    """The held party is moved (blind or attended transfer): the music stops, its relay leg
    relays again (the party it now talks to is heard)."""
    m = call.moh
    if m is None:
        return
    call.moh = None
    if m.get("state") != "playing":
        return
    leg = "b" if m.get("holder") == "a" else "a"
    try:
        call.service.media.bridge(call.id, leg)
    except HpbxError:
        pass
    log.info("[%s] transferred: music on hold stopped", call.id)


# ---------------------------------------------------------------------- ring-back
def ringback(call, body: bytes) -> None:
    """A provisional response is passed to the caller (``body``: its anchored SDP or b"")."""
    codec = call.early_codec
    if codec is None or call.media is None:
        return
    media = call.service.media
    try:
        if body:
            stop_ringback(call)  # the callee's own early media takes over
            return
        if media.is_terminated(call.id, "a"):
            return
        media.terminate(call.id, "a", codec=codec["codec"], pt=codec["pt"], ptime_ms=codec["ptime"],
                        dtmf_pt=codec["dtmf_pt"], inband=False)
        media.tone(call.id, "a", "ringback", loop=True)
    except HpbxError as exc:
        log.info("[%s] no ring-back: %s", call.id, exc)


def stop_ringback(call) -> None:
    if call.early_codec is None or call.media is None:
        return
    try:
        if call.service.media.is_terminated(call.id, "a"):
            call.service.media.bridge(call.id, "a")
    except HpbxError:
        pass
