"""T.38 in SDP (ITU-T T.38 Annex D / RFC 4612 attributes): finding an ``m=image ... udptl t38``
offer and writing hpbx's answer to it.

What hpbx answers (decided here, the issue is silent on the values): T.38 version 0, 14400 bit/s,
transferredTCF (the only rate management that works over UDPTL), UDPTL redundancy as error
correction (no FEC), a max datagram of 272 bytes (what the media engine sends and buffers) and
a max buffer of 200 bytes. An offer of TCP or RTP transport for T.38 is not taken (488).
"""
from __future__ import annotations

from dataclasses import dataclass

from hpbx._fast import sdp
from hpbx.errors import SdpError

MAX_DATAGRAM = 272


@dataclass
class ImageOffer:
    index: int  # of the m= section
    host: str
    port: int
    attrs: dict[str, str]


def image_offer(body: bytes) -> ImageOffer | None:
    """The offer's active image/t38 stream over UDPTL; None when it has none (an audio
    re-offer); SdpError when T.38 is offered over something else or without an address."""
    desc = sdp.parse(body)
    for i, m in enumerate(desc.media):
        if m.kind != "image" or m.port == 0 or "t38" not in [f.lower() for f in m.formats]:
            continue
        if m.proto.lower() != "udptl":
            raise SdpError(f"T.38 over {m.proto} is not supported (UDPTL only)")
        if not m.connection:
            raise SdpError("SDP has no connection address for the image stream")
        attrs = {}
        for a in m.attributes:
            k, _, v = a.partition(":")
            if k.lower().startswith("t38"):
                attrs[k.lower()] = v.strip()
        return ImageOffer(i, m.connection, m.port, attrs)
    return None


def answer(body: bytes, offer: ImageOffer, session: list[str], port: int) -> bytes:
    """Our answer: the image stream accepted on ``port``, every other stream refused (port 0)."""
    desc = sdp.parse(body)
    rate = offer.attrs.get("t38maxbitrate", "14400")
    rate = str(min(int(rate), 14400)) if rate.isdigit() else "14400"
    lines = list(session)
    for i, m in enumerate(desc.media):
        if i != offer.index:
            lines.append(f"m={m.kind} 0 {m.proto} {' '.join(m.formats) or '0'}")
            continue
        lines += [f"m=image {port} udptl t38", "a=T38FaxVersion:0", f"a=T38MaxBitRate:{rate}",
                  "a=T38FaxRateManagement:transferredTCF", "a=T38FaxMaxBuffer:200",
                  f"a=T38FaxMaxDatagram:{MAX_DATAGRAM}", "a=T38FaxUdpEC:t38UDPRedundancy",
                  "a=sendrecv"]
    return ("\r\n".join(lines) + "\r\n").encode()


def reanchor(media, key: str, leg: str, body: bytes, address: str, port: int) -> bytes | None:
    """A relayed call (two fax machines behind ATAs, a gateway and a trunk): when one side's
    offer or answer is image/t38 over UDPTL, its leg's peer moves to the image stream, the
    session carries UDPTL (media.set_udptl: relayed like RTP, without the RTP/RTCP handling)
    and the body is rewritten to the relay port; None for a body without T.38 (after a switch
    back to audio the session carries RTP again)."""
    try:
        offer = image_offer(body)
    except SdpError:
        return None
    if offer is None:
        if any(media.stats(key)[lg].get("udptl") for lg in ("a", "b")):
            media.set_udptl(key, None, False)
        return None
    media.set_peer(key, leg, offer.host, offer.port)
    media.relatch(key, leg)
    media.set_udptl(key, None, True)
    desc = sdp.parse(body)
    out = sdp.rewrite(body, address, [(port, port + 1)] * len(desc.media), direction=None)
    if len(desc.media) > 1:  # only the image stream is relayed: the others are refused
        lines, index = [], -1
        for line in out.decode("latin-1").split("\r\n"):
            if line.startswith("m="):
                index += 1
                if index != offer.index:
                    f = line.split(" ")
                    line = " ".join([f[0], "0"] + f[2:])
            lines.append(line)
        out = "\r\n".join(lines).encode("latin-1")
    return out
