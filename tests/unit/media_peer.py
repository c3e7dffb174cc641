"""Test helpers for the media engine: a real UDP peer that timestamps what it receives (kernel
receive time), RTP parsing, G.711 by the Python standard library's own tables (an independent
implementation), Goertzel, pcap reading and DTMF generation."""
from __future__ import annotations

import select
import socket
import struct
import time
import warnings
import wave
from pathlib import Path
from dataclasses import dataclass

import numpy as np

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop  # noqa: E402  (3.11: deprecated, still the reference G.711 of CPython)

LO = "127.0.0.1"
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)


@dataclass
class Rtp:
    t: float  # kernel receive time (CLOCK_REALTIME seconds)
    marker: int
    pt: int
    seq: int
    ts: int
    ssrc: int
    payload: bytes
    src: tuple

    @classmethod
    def parse(cls, data: bytes, t: float, src) -> Rtp:
        b0, b1, seq, ts, ssrc = struct.unpack("!BBHII", data[:12])
        assert b0 >> 6 == 2, "not RTP version 2"
        return cls(t, b1 >> 7, b1 & 0x7F, seq, ts, ssrc, data[12 + 4 * (b0 & 15):], src)


def rtp_packet(seq: int, ts: int, ssrc: int, payload: bytes, pt: int = 8, marker: int = 0) -> bytes:
    return struct.pack("!BBHII", 0x80, (marker << 7) | pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc) + payload


class Peer:
    """A phone's RTP socket on 127.0.0.1."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.sock.bind((LO, 0))
        self.port = self.sock.getsockname()[1]

    def close(self):
        self.sock.close()

    def send(self, data: bytes, port: int):
        self.sock.sendto(data, (LO, port))

    def recv(self, n: int | None = None, timeout: float = 2.0, idle: float | None = None) -> list[Rtp]:
        """Packets until n arrived, or nothing came for ``idle`` s, or ``timeout`` s passed."""
        out: list[Rtp] = []
        deadline = time.monotonic() + timeout
        while n is None or len(out) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            wait = min(left, idle) if idle is not None else left
            r, _, _ = select.select([self.sock], [], [], wait)
            if not r:
                if idle is not None:
                    break
                continue
            data, anc, _, src = self.sock.recvmsg(4096, 256)
            t = time.time()
            for level, kind, val in anc:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    sec, nsec = struct.unpack("qq", val[:16])
                    t = sec + nsec / 1e9
            out.append(Rtp.parse(data, t, src))
        return out

    def drain(self):
        self.sock.setblocking(False)
        try:
            while True:
                self.sock.recv(4096)
        except BlockingIOError:
            pass
        finally:
            self.sock.setblocking(True)


def decode(codec: str, payload: bytes) -> np.ndarray:
    lin = audioop.alaw2lin(payload, 2) if codec == "PCMA" else audioop.ulaw2lin(payload, 2)
    return np.frombuffer(lin, dtype="<i2").astype(np.float64)


def encode(codec: str, pcm: np.ndarray) -> bytes:
    b = np.clip(pcm, -32768, 32767).astype("<i2").tobytes()
    return audioop.lin2alaw(b, 2) if codec == "PCMA" else audioop.lin2ulaw(b, 2)


def sine(freq: float, ms: int, amp: float = 8000.0, phase: float = 0.0) -> np.ndarray:
    t = np.arange(ms * 8) / 8000.0
    return amp * np.sin(2 * np.pi * freq * t + phase)


def pcm_bytes(x: np.ndarray) -> bytes:
    return np.clip(x, -32768, 32767).astype("<i2").tobytes()


def power(x: np.ndarray, freq: float) -> float:
    """Goertzel: mean square of the component at ``freq``."""
    n = len(x)
    k = 2 * np.cos(2 * np.pi * freq / 8000.0)
    s1 = s2 = 0.0
    for v in x:
        s1, s2 = v + k * s1 - s2, s1
    return (s1 * s1 + s2 * s2 - k * s1 * s2) * 2 / (n * n)


def dominant(x: np.ndarray, freqs) -> float:
    return max(freqs, key=lambda f: power(x, f))


DTMF = {"1": (697, 1209), "2": (697, 1336), "3": (697, 1477), "A": (697, 1633),
        "4": (770, 1209), "5": (770, 1336), "6": (770, 1477), "B": (770, 1633),
        "7": (852, 1209), "8": (852, 1336), "9": (852, 1477), "C": (852, 1633),
        "*": (941, 1209), "0": (941, 1336), "#": (941, 1477), "D": (941, 1633)}


def dtmf_pcm(digits: str, on_ms: int = 80, off_ms: int = 80, amp: float = 6000.0) -> np.ndarray:
    """In-band DTMF (about -11 dBm0 per tone), each digit followed by silence."""
    parts = [np.zeros(off_ms * 8)]
    for d in digits:
        lo, hi = DTMF[d]
        parts.append(sine(lo, on_ms, amp) + sine(hi, on_ms, amp))
        parts.append(np.zeros(off_ms * 8))
    return np.concatenate(parts)


def read_pcap_udp(path: str) -> list[tuple[float, bytes]]:
    """(time, UDP payload) of every packet of a classic pcap (Ethernet or Linux cooked)."""
    data = open(path, "rb").read()
    magic = struct.unpack("<I", data[:4])[0]
    e = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
    linktype = struct.unpack(e + "I", data[20:24])[0]
    skip = {1: 14, 113: 16, 101: 0}[linktype]
    off, out = 24, []
    while off + 16 <= len(data):
        sec, usec, incl, _ = struct.unpack(e + "IIII", data[off:off + 16])
        off += 16
        pkt = data[off + skip:off + incl]
        off += incl
        ihl = (pkt[0] & 15) * 4
        out.append((sec + usec / 1e6, pkt[ihl + 8:]))
    return out


def read_wav(path: str) -> tuple[int, np.ndarray]:
    import wave
    with wave.open(path, "rb") as w:
        assert w.getnchannels() == 1 and w.getsampwidth() == 2
        return w.getframerate(), np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64)


def send_paced(peer: Peer, port: int, packets: list[bytes], interval: float = 0.02):
    """Send at absolute deadlines (no drift)."""
    t0 = time.monotonic()
    for i, p in enumerate(packets):
        d = t0 + i * interval - time.monotonic()
        if d > 0:
            time.sleep(d)
        peer.send(p, port)


class G722:
    """spandsp's G.722 (64 kbit/s, 8 kHz mode: one byte per 8 kHz sample) through ctypes: the
    reference library decodes what hpbx sent and encodes what the test sends."""

    def __init__(self):
        import ctypes
        import ctypes.util

        name = ctypes.util.find_library("spandsp")
        if not name:
            raise OSError("libspandsp not found")
        lib = ctypes.CDLL(name)
        lib.g722_encode_init.restype = ctypes.c_void_p
        lib.g722_decode_init.restype = ctypes.c_void_p
        lib.g722_encode_init.argtypes = lib.g722_decode_init.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
        lib.g722_encode.argtypes = lib.g722_decode.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                                                               ctypes.c_int]
        self._ct = ctypes
        self._lib = lib
        self._enc = lib.g722_encode_init(None, 64000, 1)  # G722_SAMPLE_RATE_8000
        self._dec = lib.g722_decode_init(None, 64000, 1)

    def encode(self, pcm: np.ndarray) -> bytes:
        x = np.ascontiguousarray(np.clip(pcm, -32768, 32767).astype(np.int16))
        out = self._ct.create_string_buffer(len(x))
        n = self._lib.g722_encode(self._enc, out, x.ctypes.data, len(x))
        return out.raw[:n]

    def decode(self, data: bytes) -> np.ndarray:
        out = np.zeros(len(data) * 2, dtype=np.int16)
        n = self._lib.g722_decode(self._dec, out.ctypes.data, data, len(data))
        return out[:n].astype(np.float64)


# ---- prompts as a caller hears them (the files `make build` writes, README "Media services")
BUILT = Path(__file__).resolve().parents[2] / "build" / "prompts"


def alaw_of(path: Path) -> bytes:
    """The A-law a player sends for a 8 kHz 16-bit mono WAV, whole 20 ms frames only."""
    with wave.open(str(path), "rb") as w:
        assert (w.getframerate(), w.getsampwidth(), w.getnchannels()) == (8000, 2, 1), path
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64)
    data = encode("PCMA", pcm)
    return data[:len(data) // 160 * 160]


def frames_heard(heard: bytes, f: Path) -> list[int]:
    """Where each 20 ms frame of ``f`` that is not (near) silence was found in ``heard`` (-1:
    not found). Frame by frame, so that a slot the engine skipped under a loaded box (a stall
    of 3 ptimes skips audio, README "Media engine") costs one frame, not the whole match."""
    want = alaw_of(f)
    frames = [want[i:i + 160] for i in range(0, len(want), 160)]
    return [heard.find(c) for c in frames if len(set(c)) > 8]


def assert_heard_in_order(heard: bytes, *files: Path) -> None:
    """Each file heard (at least 90 % of its frames, byte for byte), in this order."""
    last = -1
    for f in files:
        pos = frames_heard(heard, f)
        found = sorted(p for p in pos if p >= 0)
        assert pos and len(found) >= 0.9 * len(pos), f"{f}: {len(found)} of {len(pos)} frames heard"
        middle = found[len(found) // 2]
        assert middle > last, f"{f} heard before the file that should come first"
        last = middle


def assert_not_heard(heard: bytes, f: Path) -> None:
    pos = frames_heard(heard, f)
    assert sum(p >= 0 for p in pos) < 0.1 * len(pos), f"{f} was heard"
