"""A test caller's media: a real UDP socket named in the SDP SIPp sends (``-key rtp_port``), a
thread that sends 20 ms PCMA frames (silence or a tone) and RFC 4733 digits on one RTP stream,
and a thread that keeps what arrives with its receive time."""
from __future__ import annotations

import struct
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "unit"))
from media_peer import LO, Peer, decode, encode, power, sine  # noqa: E402

EVENTS = {**{str(i): i for i in range(10)}, "*": 10, "#": 11}


class Phone:
    def __init__(self, ssrc: int):
        self.peer = Peer()
        self.port = self.peer.port
        self.ssrc = ssrc
        self.dest: int | None = None
        self.freq = 0.0  # 0 = silence
        self.seq, self.ts = 1, 0
        self.digits: list[str] = []
        self.got: list[tuple[float, np.ndarray]] = []  # (arrival, decoded 8 kHz samples)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._send, daemon=True),
                         threading.Thread(target=self._recv, daemon=True)]

    def start(self, dest_port: int) -> "Phone":
        self.dest = dest_port
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            if t.is_alive():
                t.join(2)
        self.peer.close()

    def dial(self, digits: str) -> None:
        with self._lock:
            self.digits.extend(digits)

    def wait_dialled(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while self.digits and time.monotonic() < deadline:
            time.sleep(0.02)

    def _pkt(self, pt: int, payload: bytes, marker: int = 0) -> bytes:
        return struct.pack("!BBHII", 0x80, (marker << 7) | pt, self.seq & 0xFFFF,
                           self.ts & 0xFFFFFFFF, self.ssrc) + payload

    def _send(self) -> None:
        t0, i, phase = time.monotonic(), 0, 0.0
        pending: list[bytes] = []
        while not self._stop.is_set():
            d = t0 + i * 0.02 - time.monotonic()
            if d > 0:
                time.sleep(d)
            i += 1
            if not pending:
                with self._lock:
                    digit = self.digits.pop(0) if self.digits else None
                if digit is not None:
                    ev, start = EVENTS[digit], self.ts
                    # 100 ms: 5 packets of growing duration, the end three times, 60 ms gap
                    pending = [(struct.pack("!BBH", ev, 10, k * 160), k == 1) for k in range(1, 6)]
                    pending += [(struct.pack("!BBH", ev, 0x80 | 10, 800), False)] * 3
                    pending += [None] * 3
                    self.ts += 1280 + 480
            if pending:
                item = pending.pop(0)
                if item is not None:
                    payload, marker = item
                    self.peer.send(struct.pack("!BBHII", 0x80, (int(marker) << 7) | 101, self.seq & 0xFFFF,
                                               start & 0xFFFFFFFF, self.ssrc) + payload, self.dest)
                    self.seq += 1
                continue
            if self.freq:
                x = sine(self.freq, 20, 5000, phase)
                phase += 2 * np.pi * self.freq * 0.02
            else:
                x = np.zeros(160)
            self.peer.send(self._pkt(8, encode("PCMA", x)), self.dest)
            self.seq += 1
            self.ts += 160

    def _recv(self) -> None:
        while not self._stop.is_set():
            for p in self.peer.recv(timeout=0.1):
                if p.pt in (0, 8):
                    with self._lock:
                        self.got.append((time.monotonic(), decode("PCMA" if p.pt == 8 else "PCMU", p.payload)))

    def heard(self, since: float, until: float | None = None) -> np.ndarray:
        until = until or time.monotonic()
        with self._lock:
            parts = [x for t, x in self.got if since <= t <= until]
        return np.concatenate(parts) if parts else np.zeros(0)


def level(x: np.ndarray, freq: float) -> float:
    return power(x, freq) if len(x) else 0.0
