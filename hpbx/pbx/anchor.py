"""Media anchoring of one call's SDP over the compiled SDP module (``hpbx._fast.sdp``).

``peer(body)`` reads what the relay needs from the first audio stream: address, ports,
rtcp-mux, direction and whether the stream is on hold.
``rewrite(body, address, port)`` points the audio stream at the relay (RTP ``port``, RTCP
``port + 1``), keeps codecs and payload types and drops ICE candidates and credentials (the
relay does not speak ICE; a phone that saw them would try to reach the other side directly).
The relay carries one audio stream per call, so any other stream is answered as rejected
(port 0, RFC 3264 §6) — its m= line stays, in its place, so the answer matches the offer.
"""
from __future__ import annotations

from dataclasses import dataclass

from hpbx._fast import sdp
from hpbx.errors import SdpError


@dataclass(frozen=True, slots=True)
class MediaPeer:
    host: str
    port: int
    rtcp_port: int
    rtcp_mux: bool
    direction: str  # sendrecv, sendonly, recvonly, inactive
    # not sendrecv, or c=0.0.0.0: the relay must not time the call out (recvonly counts: it is
    # the answer to a hold's sendonly, and taking it as "not held" ended the hold at once)
    hold: bool


def _audio_index(desc) -> int:
    for i, m in enumerate(desc.media):
        if m.kind == "audio" and m.port:
            return i
    raise SdpError("SDP has no active audio stream")


_last: list = [None, None]  # the last body parsed here and its description (read only)


def _parse(body: bytes):
    """``sdp.parse``, once for a body that ``peer`` and then ``rewrite`` both read."""
    if _last[0] is not None and body == _last[0]:
        return _last[1]
    desc = sdp.parse(body)
    _last[0], _last[1] = body, desc
    return desc


def peer(body: bytes) -> MediaPeer:
    """The first active audio stream of a body; SdpError when there is none or it is malformed."""
    desc = _parse(body)
    m = desc.media[_audio_index(desc)]
    host = m.connection
    if not host:
        raise SdpError("SDP has no connection address for the audio stream")
    hold = m.direction in ("sendonly", "recvonly", "inactive") or host in ("0.0.0.0", "::")
    return MediaPeer(host, m.port, m.rtcp_port, m.rtcp_mux, m.direction, hold)


def _sections(body: bytes) -> list[bytes]:
    """The session part, then one chunk per m= section (CRLF-terminated lines)."""
    lines = body.replace(b"\r\n", b"\n").split(b"\n")
    out = [b""]
    for line in lines:
        if not line:
            continue
        if line.startswith(b"m="):
            out.append(b"")
        out[-1] += line + b"\r\n"
    return out


def _rejected(section: bytes) -> bytes:
    """Only the m= line of a section, with port 0."""
    mline = section.split(b"\r\n", 1)[0]
    parts = mline.split(b" ")
    parts[1] = b"0"
    return b" ".join(parts) + b"\r\n"


def rewrite(body: bytes, address: str, port: int) -> bytes:
    desc = _parse(body)
    index = _audio_index(desc)
    ports = [(port, port + 1)]
    if len(desc.media) == 1:
        return sdp.rewrite(body, address, ports)
    sections = _sections(body)
    anchored = sdp.rewrite(sections[0] + sections[index + 1], address, ports)
    cut = anchored.find(b"\r\nm=") + 2
    out = anchored[:cut]
    for i, section in enumerate(sections[1:]):
        out += anchored[cut:] if i == index else _rejected(section)
    return out
