"""The WebSocket deframer of SIP over WebSocket (RFC 6455 §5): masked client frames unmasked,
fragments joined across any split of the byte stream, control frames between fragments, and
the protocol violations refused with the close code to send."""
from __future__ import annotations

import os

import pytest

from hpbx._fast import wsframe


def client_frame(op: int, payload: bytes, fin: bool = True, mask: bytes | None = None) -> bytes:
    """A frame as a browser sends it (masked unless mask=b"")."""
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | op])
    bit = 0x80 if mask != b"" else 0
    if n < 126:
        head += bytes([bit | n])
    elif n < 65536:
        head += bytes([bit | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([bit | 127]) + n.to_bytes(8, "big")
    if mask == b"":
        return head + payload
    mask = mask or os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


REGISTER = (b"REGISTER sip:example.test SIP/2.0\r\nVia: SIP/2.0/WSS df7jal23ls0d.invalid;branch=z9hG4bK1\r\n"
            b"Content-Length: 0\r\n\r\n") * 3


@pytest.mark.parametrize("step", [1, 3, 7, 64, 100000])
def test_fragments_and_control_frames_across_any_split(step):
    data = (client_frame(1, REGISTER[:50], fin=False) + client_frame(9, b"ping!")
            + client_frame(0, REGISTER[50:200], fin=False) + client_frame(0, REGISTER[200:])
            + client_frame(2, b"x" * 70000 if step == 100000 else b"y" * 300))
    d = wsframe.Deframer(100000)
    out = []
    for i in range(0, len(data), step):
        out += d.feed(data[i:i + step])
    assert out[0] == (wsframe.OP_PING, b"ping!")
    assert out[1] == (wsframe.OP_TEXT, REGISTER)
    assert out[2][0] == wsframe.OP_BINARY and len(out[2][1]) in (70000, 300)
    assert len(out) == 3 and d.buffered == 0


@pytest.mark.parametrize("frames,code", [
    ([client_frame(1, b"abc", mask=b"")], 1002),                       # unmasked client frame
    ([bytes([0x81 | 0x40]) + client_frame(1, b"a")[1:]], 1002),         # RSV1 without extension
    ([client_frame(3, b"a")], 1002),                                     # reserved opcode
    ([client_frame(9, b"a", fin=False)], 1002),                          # fragmented control frame
    ([client_frame(9, b"a" * 126)], 1002),                               # control frame > 125
    ([client_frame(0, b"a")], 1002),                                     # continuation, no start
    ([client_frame(1, b"a", fin=False), client_frame(1, b"b")], 1002),  # new message inside one
    ([client_frame(1, b"a" * 5000)], 1009),                              # over the limit
    ([client_frame(1, b"a" * 3000, fin=False), client_frame(0, b"a" * 3000)], 1009),
])
def test_violations_name_their_close_code(frames, code):
    d = wsframe.Deframer(4096)
    with pytest.raises(wsframe.WsProtocolError) as err:
        for f in frames:
            d.feed(f)
    assert err.value.code == code


def test_oversize_refused_from_the_header_before_the_payload_arrives():
    d = wsframe.Deframer(4096)
    header_only = client_frame(1, b"a" * 1_000_000)[:14]
    with pytest.raises(wsframe.WsProtocolError) as err:
        d.feed(header_only)
    assert err.value.code == 1009


@pytest.mark.parametrize("n", [0, 125, 126, 65535, 65536])
def test_server_frames_are_final_unmasked_with_the_right_length_form(n):
    payload = os.urandom(n)
    out = wsframe.frame(wsframe.OP_TEXT, payload)
    assert out[0] == 0x81 and not out[1] & 0x80
    hdr = 2 if n < 126 else 4 if n < 65536 else 10
    assert len(out) == hdr + n and out[hdr:] == payload
