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

from harness import client_media_ports

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
                 answermode: str = "auto", host: str = "127.0.0.1", extra_account: str = "",
                 presence_of: tuple[str, ...] = (), mwi: bool = False):
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
        media = client_media_ports(host)
        (self.dir / "config").write_text("\n".join([
            "poll_method epoll",
            f"sip_listen {hostpart}:{sip_port}",
            "sip_trans_def udp",
            f"audio_source aufile,{self.dir / 'tone.wav'}",
            "audio_player aubridge,nil",
            "audio_alert aubridge,nil",
            "audio_path /usr/share/baresip",
            f"rtp_ports {media}-{media + 7}",
            # no jitter buffer: baresip 1.0 keeps it across a change of sender (SSRC, after a
            # transfer) and drops the new sender's packets as late while their sequence numbers
            # are below the old one's (README, "Real phones")
            "jitter_buffer_delay 0-0",
            f"module_path {MODULES}",
            "module g711.so", "module aufile.so", "module aubridge.so", "module sndfile.so",
            "module_app account.so", "module_app menu.so", "module_app ctrl_tcp.so",
            *(["module contact.so", "module_app presence.so"] if presence_of else []),
            *(["module_app mwi.so"] if mwi else []),  # SUBSCRIBE message-summary, MWI_NOTIFY events
            f"ctrl_tcp_listen 127.0.0.1:{self.ctrl_port}",
            f"snd_path {self.rec}",
            f"net_interface {host}",
            "dns_server 127.0.0.1:53",
            "", ]))
        tp = "" if transport == "udp" else f";transport={transport}"
        # the account is added over ctrl_tcp once connected (uanew), so that its REGISTER_OK
        # event is not sent before anyone listens (ctrl_tcp keeps no backlog of events)
        self.account = (f"<sip:{username}@{server}{tp}>;auth_pass={password};"
                        f"answermode={answermode};audio_codecs=pcmu,pcma;regint=3600;mwi={'yes' if mwi else 'no'}"
                        f"{extra_account}")
        (self.dir / "accounts").write_text("")
        # contacts watched with SUBSCRIBE Event: presence (module presence)
        (self.dir / "contacts").write_text("".join(f"<{uri}>;presence=p2p\n" for uri in presence_of))
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

    def drain(self) -> list[dict]:
        """Every event so far (also those no wait_event asked for)."""
        while True:
            try:
                self.seen.append(self.events.get_nowait())
            except queue.Empty:
                return self.seen

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


class Linphone:
    """One linphone-daemon (Debian linphone-cli) with one account, driven over its unix socket
    (one client connection for its whole life: the daemon takes one at a time). Its audio to
    the peer is a tone file played into the call (``incall-player-start``); what it receives is
    seen in its RTP statistics (``call-stats``), since it has no recorder."""

    def __init__(self, directory: Path, username: str, password: str, server: str, *,
                 sip_port: int, transport: str = "udp", tone: float = 660.0,
                 auto_answer: bool = True, host: str = "127.0.0.1"):
        if LINPHONE_DAEMON is None:
            import pytest
            pytest.skip("linphone-daemon is not installed (Debian package linphone-cli)")
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / ".local" / "share" / "linphone").mkdir(parents=True, exist_ok=True)
        self.username = username
        self.server = server
        self.transport = transport
        self.tone_file = tone_wav(self.dir / "tone.wav", tone)
        self.pipe = f"hpbx-lin-{os.getpid()}-{sip_port}"
        self.sock_path = Path("/tmp") / self.pipe
        (self.dir / "rc").write_text("\n".join([
            "[sip]", "ipv6=0", "sip_port=-1", "sip_tcp_port=-1", "sip_tls_port=-1",
            f"bind_address={host}", "verify_server_certs=0", "verify_server_cn=0",
            "[rtp]", f"audio_rtp_port={client_media_ports(host)}",
            "[net]", f"bind_address={host}",
            "[sound]", "echocancellation=0", "", ]))
        env = dict(os.environ, HOME=str(self.dir))
        args = [LINPHONE_DAEMON, "--pipe", self.pipe, "--config", str(self.dir / "rc"),
                "--log", str(self.dir / "linphone.log"), "--disable-stats-events"]
        if auto_answer:
            args.append("--auto-answer")
        self.out = open(self.dir / "daemon.out", "wb")
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=self.out,
                                     stderr=subprocess.STDOUT, cwd=self.dir, env=env)
        self.sock = self._connect()
        self.events: list[dict] = []
        self.command(f"port sip {sip_port} {transport}")
        hostpart = server
        tp = "" if transport == "udp" else f";transport={transport}"
        self.command(f"register sip:{username}@{hostpart} sip:{hostpart}{tp} {password}")

    def _connect(self) -> socket.socket:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ClientError(f"linphone-daemon exited {self.proc.returncode}:\n{self.output()}")
            try:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(str(self.sock_path))
                return s
            except OSError:
                s.close()
                time.sleep(0.1)
        raise ClientError("linphone-daemon socket did not open:\n" + self.output())

    def output(self) -> str:
        try:
            return (self.dir / "linphone.log").read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def command(self, line: str, timeout: float = 5.0) -> dict:
        """Send one command; its answer as a dict of ``Key: value`` lines (``Status`` first)."""
        self.sock.sendall(line.encode() + b"\n")
        buf = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(0.25 if b"Status:" in buf else max(0.05, deadline - time.monotonic()))
            try:
                data = self.sock.recv(65536)
            except (socket.timeout, TimeoutError):
                if b"Status:" in buf:
                    break
                continue
            if not data:
                break
            buf += data
        text = buf.decode(errors="replace")
        out: dict = {"_text": text}
        for row in text.splitlines():
            key, sep, value = row.partition(":")
            if sep and key.strip() not in out:
                out[key.strip()] = value.strip()
        if "Status" not in out:
            raise ClientError(f"linphone: no answer to {line!r}\n{self.output()}")
        return out

    def ok(self, line: str) -> dict:
        ans = self.command(line)
        if ans["Status"] != "Ok":
            raise ClientError(f"linphone: {line!r} -> {ans['_text']}")
        return ans

    def poll(self, predicate, what: str, timeout: float = 10.0, command: str = "") -> dict:
        deadline = time.monotonic() + timeout
        while True:
            ans = self.command(command) if command else None
            if ans is not None and predicate(ans):
                return ans
            if not command:
                ev = self.command("pop-event")
                if ev.get("Size", "0") != "0" or "Event-type" in ev:
                    self.events.append(ev)
                    if predicate(ev):
                        return ev
                    continue
            if time.monotonic() > deadline:
                raise ClientError(f"linphone {self.username}: no {what} within {timeout}s "
                                  f"(last: {ans and ans['_text']}; events: "
                                  f"{[e.get('Event') for e in self.events]})\n{self.output()}")
            time.sleep(0.1)

    def wait_registered(self, timeout: float = 10.0) -> dict:
        return self.poll(lambda a: "LinphoneRegistrationOk" in a["_text"], "registration", timeout,
                         command="register-status ALL")

    def wait_call_state(self, state: str, timeout: float = 10.0) -> dict:
        return self.poll(lambda a: state in a["_text"], state, timeout, command="call-status")

    def download_kbps(self) -> float:
        """The audio RTP rate it received, as its last bandwidth report logged it (kbit/s)."""
        import re
        log = (self.dir / "linphone.log").read_text(errors="replace")
        rates = re.findall(r"\(audio\).*?RTP : \[d=([0-9.]+),", log)
        return float(rates[-1]) if rates else 0.0

    def close(self) -> None:
        try:
            self.sock.sendall(b"quit\n")
        except OSError:
            pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.sock.close()
        self.out.close()
        try:
            self.sock_path.unlink()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
