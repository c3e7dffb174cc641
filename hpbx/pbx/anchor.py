"""Media anchoring of one call's SDP: what the relay needs from a body, and the body rewritten
onto the relay's address and ports (RFC 4566 / RFC 3264).

``peer(body)`` reads the first audio stream's address, ports, rtcp-mux and direction.
``rewrite(body, address, port)`` points every connection line and the audio stream at the
relay, keeps codecs and payload types, drops ICE candidates and credentials (the relay does
not speak ICE; a phone that sees them would try to reach the other side directly), and drops
a=rtcp lines that named the old port (RTCP goes to port + 1 of the relay pair, the default).
Other media streams are refused in the rewritten offer with port 0: the relay carries one
audio stream per call.
"""
from __future__ import annotations

from dataclasses import dataclass

from hpbx.errors import SdpError

_ICE_ATTRS = ("candidate", "ice-ufrag", "ice-pwd", "ice-options", "ice-lite", "ice-mismatch",
              "remote-candidates", "end-of-candidates")
DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
MAX_SDP = 16384


@dataclass(frozen=True, slots=True)
class MediaPeer:
    host: str
    port: int
    rtcp_port: int
    rtcp_mux: bool
    direction: str  # sendrecv, sendonly, recvonly, inactive
    hold: bool  # sendonly/inactive or c=0.0.0.0: the relay must not time the call out


def _lines(body: bytes) -> list[str]:
    if len(body) > MAX_SDP:
        raise SdpError(f"SDP body too large ({len(body)} bytes)")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise SdpError("SDP body is not UTF-8") from None
    lines = [ln for ln in text.replace("\r\n", "\n").split("\n") if ln]
    if not lines or not lines[0].startswith("v="):
        raise SdpError("SDP must start with v=")
    for ln in lines:
        if len(ln) < 2 or ln[1] != "=":
            raise SdpError(f"SDP line is not type=value: {ln[:40]!r}")
    return lines


def _conn_host(value: str) -> str:
    parts = value.split()
    if len(parts) < 3 or parts[0] != "IN" or parts[1] not in ("IP4", "IP6"):
        raise SdpError(f"bad c= line: {value[:60]!r}")
    return parts[2].split("/")[0]


def peer(body: bytes) -> MediaPeer:
    """The first audio stream of an SDP body. SdpError when there is none or it is malformed."""
    lines = _lines(body)
    session_host = ""
    session_dir = "sendrecv"
    in_audio = False
    seen_audio = False
    host = port = rtcp = 0
    media_host = ""
    mux = False
    direction = ""
    for ln in lines:
        kind, value = ln[0], ln[2:].strip()
        if kind == "m":
            if seen_audio:
                break
            parts = value.split()
            in_audio = bool(parts) and parts[0] == "audio"
            if in_audio:
                seen_audio = True
                try:
                    port = int(parts[1].split("/")[0])
                except (IndexError, ValueError):
                    raise SdpError(f"bad m= line: {value[:60]!r}") from None
                if not 0 <= port <= 65535:
                    raise SdpError(f"bad m= port {port}")
            continue
        if kind == "c":
            if in_audio:
                media_host = _conn_host(value)
            elif not seen_audio:
                session_host = _conn_host(value)
        elif kind == "a":
            name, _, arg = value.partition(":")
            if name in DIRECTIONS:
                if in_audio:
                    direction = name
                elif not seen_audio:
                    session_dir = name
            elif in_audio and name == "rtcp-mux":
                mux = True
            elif in_audio and name == "rtcp":
                try:
                    rtcp = int(arg.split()[0])
                except (IndexError, ValueError):
                    raise SdpError(f"bad a=rtcp: {arg[:40]!r}") from None
    if not seen_audio:
        raise SdpError("SDP has no audio stream")
    host = media_host or session_host
    if not host:
        raise SdpError("SDP has no connection address for the audio stream")
    direction = direction or session_dir
    hold = direction in ("sendonly", "inactive") or host in ("0.0.0.0", "::")
    return MediaPeer(host, port, rtcp or (port + 1 if port else 0), mux, direction, hold)


def rewrite(body: bytes, address: str, port: int) -> bytes:
    """The body with the first audio stream on ``address``:``port`` (RTCP on ``port`` + 1)."""
    lines = _lines(body)
    family = "IP6" if ":" in address else "IP4"
    out: list[str] = []
    section = "session"  # "session", "audio" (the anchored one), "other"
    anchored = False
    for ln in lines:
        kind, value = ln[0], ln[2:]
        if kind == "m":
            parts = value.split()
            if parts and parts[0] == "audio" and not anchored:
                section = "audio"
                anchored = True
                media_port = parts[1].split("/")[0]
                # port 0 (a refused stream) stays refused
                new_port = "0" if media_port == "0" else str(port)
                out.append("m=" + " ".join([parts[0], new_port] + parts[2:]))
                continue
            section = "other"
            out.append("m=" + " ".join(parts[:1] + ["0"] + parts[2:]))
            continue
        if kind == "o":
            parts = value.split()
            if len(parts) == 6:
                parts[4], parts[5] = family, address
                out.append("o=" + " ".join(parts))
                continue
        elif kind == "c":
            if section != "other":
                out.append(f"c=IN {family} {address}")
                continue
        elif kind == "a":
            name = value.partition(":")[0]
            if name in _ICE_ATTRS:
                continue
            if name == "rtcp" and section == "audio":
                continue
        out.append(ln)
    return ("\r\n".join(out) + "\r\n").encode()
