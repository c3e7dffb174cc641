"""A pcap of G.711 RTP carrying a tone, for SIPp's ``play_pcap_audio`` (which replays the UDP
payloads with their timing to the call's remote media address)."""
from __future__ import annotations

import math
import struct
from pathlib import Path


def _ulaw(sample: int) -> int:
    """ITU-T G.711 mu-law of one 16-bit sample."""
    bias, clip = 0x84, 32635
    sign = 0x80 if sample < 0 else 0
    sample = min(abs(sample), clip) + bias
    exponent = 7
    for exp in range(7, -1, -1):
        if sample & (1 << (exp + 7)):
            exponent = exp
            break
    mantissa = (sample >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


def tone_pcap(path: Path, freq: float, seconds: float = 4.0, pt: int = 0) -> Path:
    """``seconds`` of a ``freq`` Hz tone as 20 ms PCMU (pt 0) packets, 127.0.0.1:6000 -> :6002."""
    rate, per = 8000, 160
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    ssrc = 0x5157A7E5
    for n in range(int(seconds * 50)):
        payload = bytes(_ulaw(int(9000 * math.sin(2 * math.pi * freq * (n * per + i) / rate)))
                        for i in range(per))
        rtp = struct.pack("!BBHII", 0x80, pt, n & 0xFFFF, n * per, ssrc) + payload
        udp = struct.pack("!HHHH", 6000, 6002, 8 + len(rtp), 0) + rtp
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), n & 0xFFFF, 0, 64, 17, 0,
                         bytes([127, 0, 0, 1]), bytes([127, 0, 0, 1])) + udp
        frame = b"\x00" * 12 + b"\x08\x00" + ip
        t = n * 0.02
        out.append(struct.pack("<IIII", int(t), int((t % 1) * 1e6), len(frame), len(frame)) + frame)
    path.write_bytes(b"".join(out))
    return path
