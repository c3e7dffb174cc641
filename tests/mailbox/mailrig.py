"""Shared pieces of the mailbox tests (imported by name: ``from conftest import`` would pick
whichever folder's conftest pytest loaded last): the call rig (tests/sip/callrig.py) with an [smtp]
section pointing at a real aiosmtpd (tests/mail/smtp_sink.py), a caller's RTP socket
(tests/unit/media_peer.py) and RFC 4733 / tone helpers."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
for sub in ("sip", "unit", "mail"):
    p = str(HERE.parent / sub)
    if p not in sys.path:
        sys.path.insert(0, p)

from callrig import CallRig  # noqa: E402
from media_peer import Peer, decode, encode, rtp_packet, sine  # noqa: E402

from mailsink import SmtpSink  # noqa: E402

SCEN = HERE / "scenarios"


def smtp_toml(port: int) -> str:
    return ("\n[smtp]\nhost = \"127.0.0.1\"\n" f"port = {port}\n"
            "sender = \"pbx@example.com\"\ntimeout = 5\nretry_min = 1\nretry_max = 2\n")


def mail_rig(directory: Path, tenant_toml: str, smtp_port: int, **kw) -> CallRig:
    rig = CallRig(directory, tenant_toml, **kw)
    with open(rig.server.config, "a") as f:
        f.write(smtp_toml(smtp_port))
    return rig


class Caller:
    """The caller's media: one RTP stream (PCMA, one SSRC) with RFC 4733 digits, paced on
    absolute deadlines."""

    def __init__(self, ssrc: int = 0x4D41494C):
        self.peer = Peer()
        self.port = self.peer.port
        self.ssrc = ssrc
        self.seq = 1000
        self.ts = 16000
        self.t0 = None

    def close(self) -> None:
        self.peer.close()

    def _send(self, data: bytes, to: int) -> None:
        if self.t0 is None:
            self.t0 = time.monotonic()
        self.peer.send(data, to)

    def tones(self, to: int, freqs: list[float], seg_ms: int = 1000, amp: float = 8000.0) -> None:
        frames = []
        n = 0
        for f in freqs:
            for _ in range(seg_ms // 20):
                frames.append(encode("PCMA", sine(f, 20, amp, phase=2 * np.pi * f * n * 0.02)))
                n += 1
        start = time.monotonic()
        for i, fr in enumerate(frames):
            d = start + i * 0.02 - time.monotonic()
            if d > 0:
                time.sleep(d)
            self._send(rtp_packet(self.seq, self.ts, self.ssrc, fr, pt=8, marker=int(i == 0)), to)
            self.seq += 1
            self.ts += 160

    def pcm(self, to: int, pcm: np.ndarray) -> None:
        """8 kHz samples as PCMA, 20 ms a packet, paced (e.g. in-band DTMF)."""
        start = time.monotonic()
        for i in range(0, len(pcm) - 159, 160):
            d = start + (i // 160) * 0.02 - time.monotonic()
            if d > 0:
                time.sleep(d)
            self._send(rtp_packet(self.seq, self.ts, self.ssrc, encode("PCMA", pcm[i:i + 160]), pt=8), to)
            self.seq += 1
            self.ts += 160

    def digit(self, to: int, digit: str, pt: int = 101) -> None:
        event = "0123456789*#".index(digit)
        ts = self.ts
        for i, dur in enumerate((160, 320, 480, 640, 800)):
            self._send(rtp_packet(self.seq, ts, self.ssrc, bytes([event, 10]) + dur.to_bytes(2, "big"),
                                  pt=pt, marker=int(i == 0)), to)
            self.seq += 1
            time.sleep(0.02)
        for _ in range(3):
            self._send(rtp_packet(self.seq, ts, self.ssrc, bytes([event, 0x80 | 10]) + (800).to_bytes(2, "big"),
                                  pt=pt), to)
            self.seq += 1
        self.ts += 800
        time.sleep(0.1)


def wait_answered(rig, called: str, timeout: float = 8.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for c in rig.admin("call.list"):
            if c.get("called") == called and c.get("state") == "answered" and c.get("media"):
                return c
        time.sleep(0.05)
    raise AssertionError(f"no answered call to {called}: {rig.admin('call.list')}\n{rig.server.log()}")


def wav_of(msg) -> tuple[str, bytes]:
    parts = [p for p in msg.iter_attachments() if p.get_content_type() == "audio/wav"]
    assert len(parts) == 1, [p.get_content_type() for p in msg.iter_attachments()]
    return parts[0].get_filename(), parts[0].get_content()


def dominant_freq(x: np.ndarray, pad: int = 0) -> float:
    n = max(len(x), pad)
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x)), n))
    return float(np.fft.rfftfreq(n, 1 / 8000)[int(np.argmax(spec))])


def wait_beep(caller: "Caller", timeout: float = 20.0) -> list:
    """Everything the caller heard until the end of the 1 kHz beep that starts the recording
    (the greeting before it is real speech now: seconds long); fails if no beep came."""
    heard, run = [], 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = caller.peer.recv(n=1, timeout=0.15)
        if not got and run >= 5:  # the beep is over and hpbx is silent: the recorder runs
            return heard
        for p in got:
            heard.append(p)
            if p.pt not in (0, 8):
                continue
            x = decode("PCMA" if p.pt == 8 else "PCMU", p.payload).astype(np.float64)
            loud = np.sqrt(np.mean(x ** 2)) > 500
            if loud and abs(dominant_freq(x, pad=1024) - 1000) < 40:
                run += 1
            elif run >= 5:  # the beep (250 ms) is over: the recorder runs from now
                return heard
            else:
                run = 0
    raise AssertionError(f"no beep reached the caller ({len(heard)} packets)")


def prompt_ms(name: str = "leave-message", language: str = "de") -> int:
    """Length of a built system prompt (what the greeting takes before the beep)."""
    import wave
    path = HERE.parent.parent / "build" / "prompts" / language / f"{name}.wav"
    if not path.exists():
        path = HERE.parent.parent / "build" / "prompts" / "en" / f"{name}.wav"
    try:
        with wave.open(str(path)) as w:
            return w.getnframes() * 1000 // w.getframerate()
    except (OSError, EOFError, wave.Error):
        return 8000  # not built: at most the Debian recording's length
