"""Real SIP clients driven headless for the interop tests: baresip (ctrl_tcp, netstring JSON)
and linphone-daemon (its unix socket, one command per line). Each runs in its own temporary
directory, binds only loopback ports handed to it, and is killed at the end.

    with Baresip(tmp_path / "a", "alice", "alice-pw", server) as a:
        a.wait_event("REGISTER_OK")
        a.command("dial", "sip:201@127.0.0.1:5060")
        a.wait_event("CALL_ESTABLISHED")
"""
from __future__ import annotations

import json
import math
import os
import queue
import shutil
import socket
import struct
import subprocess
import threading
import time
import wave
from pathlib import Path

BARESIP = shutil.which("baresip")
LINPHONE_DAEMON = shutil.which("linphone-daemon")
MODULES = "/usr/lib/baresip/modules"


def tone_wav(path: Path, freq: float, seconds: float = 30.0, rate: int = 8000) -> Path:
    """A mono 16-bit sine of ``freq`` Hz (what a phone sends as its microphone)."""
    n = int(seconds * rate)
    frames = b"".join(struct.pack("<h", int(9000 * math.sin(2 * math.pi * freq * i / rate)))
                      for i in range(n))
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(frames)
    return path


def dominant_freq(samples: list[int], rate: int = 8000) -> float:
    """The strongest frequency (Hz, 50-3000) of the last second of a sample run; 0 if silent."""
    import numpy as np
    if len(samples) < rate // 4:
        return 0.0
    chunk = np.asarray(samples[-rate:], dtype=float)
    if np.abs(chunk).max() < 300:
        return 0.0
    spectrum = np.abs(np.fft.rfft(chunk * np.hanning(len(chunk))))
    freqs = np.fft.rfftfreq(len(chunk), 1 / rate)
    band = (freqs >= 50) & (freqs <= 3000)
    return float(freqs[band][np.argmax(spectrum[band])])


def wav_samples(path: Path) -> list[int]:
    """16-bit samples (first channel) of a WAV file, also of one still being written (whose
    header sizes are not filled in yet: everything after the data chunk's header counts)."""
    raw = path.read_bytes()
    at = raw.find(b"data", 12)
    fmt = raw.find(b"fmt ", 12)
    if at < 0 or fmt < 0:
        return []
    channels = struct.unpack_from("<H", raw, fmt + 10)[0] or 1
    data = raw[at + 8:]
    data = data[:len(data) // 2 * 2]
    return list(struct.unpack(f"<{len(data) // 2}h", data)[::channels])


def _free_tcp_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class ClientError(AssertionError):
    pass


class Baresip:
    """One baresip process with one account (``transport`` udp/tcp/tls), sending ``tone`` Hz
    as its microphone and recording what it receives (module sndfile)."""

    def __init__(self, directory: Path, username: str, password: str, server: str, *,
                 sip_port: int, transport: str = "udp", tone: float = 440.0,
                 answermode: str = "auto", host: str = "127.0.0.1", extra_account: str = ""):
        if BARESIP is None:
            import pytest
            pytest.skip("baresip is not installed (Debian package baresip-core)")
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.username = username
        self.server = server
        self.transport = transport
        self.tone = tone
        self.ctrl_port = _free_tcp_port()
        self.rec = self.dir / "rec"
        self.rec.mkdir(exist_ok=True)
        tone_wav(self.dir / "tone.wav", tone)
        hostpart = f"[{host}]" if ":" in host else host
        (self.dir / "config").write_text("\n".join([
            "poll_method epoll",
            f"sip_listen {hostpart}:{sip_port}",
            "sip_trans_def udp",
            f"audio_source aufile,{self.dir / 'tone.wav'}",
            "audio_player aubridge,nil",
            "audio_alert aubridge,nil",
            "audio_path /usr/share/baresip",
            f"rtp_ports {sip_port + 2}-{sip_port + 40}",
            f"module_path {MODULES}",
            "module g711.so", "module aufile.so", "module aubridge.so", "module sndfile.so",
            "module_app account.so", "module_app menu.so", "module_app ctrl_tcp.so",
            f"ctrl_tcp_listen 127.0.0.1:{self.ctrl_port}",
            f"snd_path {self.rec}",
            f"net_interface {host}",
            "dns_server 127.0.0.1:53",
            "", ]))
        tp = "" if transport == "udp" else f";transport={transport}"
        # the account is added over ctrl_tcp once connected (uanew), so that its REGISTER_OK
        # event is not sent before anyone listens (ctrl_tcp keeps no backlog of events)
        self.account = (f"<sip:{username}@{server}{tp}>;auth_pass={password};"
                        f"answermode={answermode};audio_codecs=pcmu,pcma;regint=3600;mwi=no"
                        f"{extra_account}")
        (self.dir / "accounts").write_text("")
        (self.dir / "contacts").write_text("")
        self.events: "queue.Queue[dict]" = queue.Queue()
        self.seen: list[dict] = []
        self.log = open(self.dir / "baresip.log", "wb")
        self.proc = subprocess.Popen([BARESIP, "-f", str(self.dir), "-v"], stdin=subprocess.DEVNULL,
                                     stdout=self.log, stderr=subprocess.STDOUT, cwd=self.dir)
        self.sock = self._connect()
        self._responses: "queue.Queue[dict]" = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.command("uanew", self.account)

    def _connect(self) -> socket.socket:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ClientError(f"baresip exited {self.proc.returncode}:\n{self.output()}")
            try:
                return socket.create_connection(("127.0.0.1", self.ctrl_port), timeout=1)
            except OSError:
                time.sleep(0.05)
        raise ClientError("baresip ctrl_tcp did not open:\n" + self.output())

    def _read(self) -> None:
        buf = b""
        self.sock.settimeout(None)
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            buf += data
            while b":" in buf:
                head, _, rest = buf.partition(b":")
                if not head.isdigit() or len(rest) < int(head) + 1:
                    break
                n = int(head)
                payload, buf = rest[:n], rest[n + 1:]
                try:
                    obj = json.loads(payload)
                except ValueError:
                    continue
                if obj.get("event"):
                    self.events.put(obj)
                elif obj.get("response"):
                    self._responses.put(obj)

    def output(self) -> str:
        try:
            return (self.dir / "baresip.log").read_text(errors="replace")[-5000:]
        except OSError:
            return ""

    def command(self, command: str, params: str = "", timeout: float = 5.0) -> dict:
        body = json.dumps({"command": command, "params": params, "token": command}).encode()
        self.sock.sendall(str(len(body)).encode() + b":" + body + b",")
        try:
            return self._responses.get(timeout=timeout)
        except queue.Empty:
            raise ClientError(f"baresip: no answer to {command} {params}\n{self.output()}") from None

    def wait_event(self, kind: str, timeout: float = 10.0, **match) -> dict:
        """The next event of type ``kind`` (events seen before stay in ``seen``)."""
        for ev in self.seen:
            if ev.get("type") == kind and all(ev.get(k) == v for k, v in match.items()) \
                    and not ev.get("_used"):
                ev["_used"] = True
                return ev
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ClientError(f"baresip {self.username}: no {kind} within {timeout}s; events: "
                                  f"{[e.get('type') for e in self.seen]}\n{self.output()}")
            try:
                ev = self.events.get(timeout=left)
            except queue.Empty:
                continue
            self.seen.append(ev)
            if ev.get("type") == kind and all(ev.get(k) == v for k, v in match.items()):
                ev["_used"] = True
                return ev
            if ev.get("type") == "REGISTER_FAIL" and kind == "REGISTER_OK":
                raise ClientError(f"baresip {self.username}: REGISTER_FAIL {ev}\n{self.output()}")

    def received_wavs(self) -> list[Path]:
        return sorted(self.rec.glob("*-dec.wav"))

    def heard(self) -> float:
        """Dominant frequency of the newest received recording (0 when there is none)."""
        wavs = self.received_wavs()
        if not wavs:
            return 0.0
        return dominant_freq(wav_samples(max(wavs, key=lambda p: p.stat().st_mtime)))

    def close(self) -> None:
        try:
            self.command("quit", timeout=1)
        except (ClientError, OSError):
            pass
        try:
            self.proc.wait(3)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.sock.close()
        self.log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
