"""RTP continuity across a transfer (issue 18): the party that stays receives one stream from
the relay, whoever talks into it. After a transfer the new talker has its own SSRC, sequence
numbers and timestamps; the relay rewrites them into the identity of the stream it was already
sending (same SSRC, sequence +1, timestamp advanced by the time elapsed, marker bit on the first
packet of the new talker), so a phone's jitter buffer does not drop the new talker's packets as
late or old. And the new talker is heard at once: the gap between the last packet of the old
talker and the first of the new one is measured on the wire at the staying party.

The staying party is a raw UDP device in the test (it records every RTP packet it receives:
arrival time, SSRC, sequence, timestamp, marker, and which tone the payload carries); the
transferor and the target are baresip phones, on the default jitter buffer (no workaround).
Both directions of the relay are exercised: the staying party as caller (the callee transfers,
relay leg b changes talker) and as callee (the caller transfers, leg a changes talker); also a
transferor that goes on talking until it reads its BYE (it must not lock the target out), a
baresip staying party's own recording, and an attended transfer's target, which moves to
another relay session and must still see one stream."""
from __future__ import annotations

import math
import re
import socket
import struct
import threading
import time

import pytest

from clients import Baresip
from harness import header, reserved_pair
from callrig import CallRig, user
from test_attended import NAMES, SDP, Transferor
from test_default_config import wait_heard

TENANT = '[tenant]\nname = "rtpc"\n' + "".join(user(n, i) for n, i in NAMES.items())
OLD, NEW, OWN = 440, 1000, 660  # Hz: the transferor's, the target's and the staying party's tones
MAX_GAP_MS = 200  # what the users hear as "no gap"; measured: README "Transfers"


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    r = CallRig(tmp_path_factory.mktemp("rtpc"), TENANT)
    r.start()
    yield r
    r.stop()


def _ulaw_decode(b: int) -> int:
    b = ~b & 0xFF
    sign, exponent, mantissa = b & 0x80, (b >> 4) & 7, b & 0x0F
    value = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return -value if sign else value


ULAW = [_ulaw_decode(i) for i in range(256)]


def _power(samples, freq):
    """Goertzel power of ``freq`` in a block of 8 kHz samples."""
    k = 2 * math.cos(2 * math.pi * freq / 8000)
    s1 = s2 = 0.0
    for x in samples:
        s1, s2 = x + k * s1 - s2, s1
    return s1 * s1 + s2 * s2 - k * s1 * s2


def tone_of(payload: bytes) -> int:
    """OLD, NEW or 0 (neither clearly): which tone one PCMU packet carries."""
    samples = [ULAW[b] for b in payload]
    po, pn = _power(samples, OLD), _power(samples, NEW)
    floor = 1e9  # a -20 dBFS tone over 160 samples is ~1e12
    if max(po, pn) < floor:
        return 0
    return OLD if po > 10 * pn else NEW if pn > 10 * po else 0


class Staying(Transferor):
    """The party that stays: records every RTP packet it receives and sends its own tone;
    answers hpbx's re-INVITE after the transfer (200 with its SDP)."""

    def __init__(self, rig, username):
        super().__init__(rig, username)
        self.reinvites: list[str] = []

    def asserted(self) -> list[str]:
        """P-Asserted-Identity of each re-INVITE hpbx sent (who the party now talks to)."""
        return [(header(m, "P-Asserted-Identity") or [""])[0] for m in self.reinvites]

    def recv(self, timeout=5.0, want=lambda m: True):
        def wanted(m):
            if m.startswith("INVITE ") and re.search(r"(?im)^To:.*;tag=", m):
                self.reinvites.append(m)
                keep = [h for h in m.split("\r\n\r\n")[0].split("\r\n")[1:]
                        if re.match(r"(?i)(via|from|to|call-id|cseq):", h)]
                body = SDP.format(port=self.rtp.getsockname()[1])
                self._send("SIP/2.0 200 OK\r\n" + "\r\n".join(keep) +
                           f"\r\nContact: <sip:{self.user}@127.0.0.1:{self.port}>\r\n"
                           f"Content-Type: application/sdp\r\nContent-Length: {len(body)}\r\n\r\n{body}")
                return False
            return want(m)
        return super().recv(timeout, wanted)

    def take_call_media(self, timeout=10.0, tone=OWN, seconds=12.0) -> dict:
        """Answer the next INVITE (take_call) and start media towards its SDP."""
        seen = []
        real = super().recv

        def spy(timeout=5.0, want=lambda m: True):
            m = real(timeout, want)
            if m and m.startswith("INVITE "):
                seen.append(m)
            return m
        self.recv = spy
        try:
            dialog = self.take_call(timeout)
        finally:
            del self.recv
        self.start_media(seen[0].split("\r\n\r\n", 1)[1], tone, seconds)
        return dialog

    def call_media(self, number, tone=OWN) -> dict:
        """Call ``number`` (INVITE with digest, ACK) and start media; the dialog."""
        call_id = "rtpc-" + str(time.time_ns())
        resp = self.authed("INVITE", f"sip:{number}@{self.rig.target}", [],
                           SDP.format(port=self.rtp.getsockname()[1]), call_id)
        assert resp.startswith("SIP/2.0 200"), resp
        to = header(resp, "To")[0]
        self._send(f"ACK {header(resp, 'Contact')[0].strip('<>')} SIP/2.0\r\n"
                   f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch=z9hG4bKack{time.time_ns()};rport\r\n"
                   f"Max-Forwards: 70\r\nFrom: <sip:{self.user}@127.0.0.1>;tag={self.tag}\r\nTo: {to}\r\n"
                   f"Call-ID: {call_id}\r\nCSeq: {self.cseq} ACK\r\nContent-Length: 0\r\n\r\n")
        self.start_media(resp.split("\r\n\r\n", 1)[1], tone)
        return {"call_id": call_id, "local_tag": self.tag,
                "remote_tag": re.search(r";tag=([^;\s>]+)", to).group(1),
                "local": f"<sip:{self.user}@127.0.0.1>", "remote": re.sub(r";tag=.*$", "", to),
                "target": header(resp, "Contact")[0].strip("<>"), "cseq": self.cseq + 100}

    def start_media(self, sdp_answer: str, tone=OWN, seconds=12.0):
        self.media_to = (re.search(r"c=IN IP4 (\S+)", sdp_answer).group(1),
                         int(re.search(r"m=audio (\d+)", sdp_answer).group(1)))
        self.packets: list[tuple] = []
        threading.Thread(target=self._receive, daemon=True).start()
        self.send_tone(tone, seconds=seconds)

    def _receive(self):
        self.rtp.settimeout(0.2)
        while not self._stop:
            try:
                data = self.rtp.recv(2048)
            except (socket.timeout, TimeoutError):
                continue
            except OSError:
                return
            if len(data) < 12:
                continue
            b0, b1, seq, ts, ssrc = struct.unpack("!BBHII", data[:12])
            self.packets.append((time.monotonic(), ssrc, seq, ts, bool(b1 & 0x80), tone_of(data[12:])))


def analyse(packets):
    """(gap ms between the last OLD and the first NEW packet, the packets from the first NEW on
    and a few before, the index of the first NEW one)."""
    first_new = next(i for i, p in enumerate(packets) if p[5] == NEW)
    last_old = max(i for i, p in enumerate(packets[:first_new]) if p[5] == OLD)
    return (packets[first_new][0] - packets[last_old][0]) * 1000.0, first_new, last_old


def check_continuous(packets, first_new):
    ssrcs = {p[1] for p in packets}
    assert len(ssrcs) == 1, f"the stream changed SSRC: {sorted(hex(s) for s in ssrcs)}"
    for a, b in zip(packets, packets[1:]):
        step = (b[2] - a[2]) & 0xFFFF
        assert 1 <= step <= 5, f"sequence {a[2]} -> {b[2]} around {packets.index(b)} (new talker at {first_new})"
        tstep = (b[3] - a[3]) & 0xFFFFFFFF
        assert 0 < tstep < 8000 * 3, f"timestamp {a[3]} -> {b[3]}"
    # the new talker's first packet starts a talkspurt (RFC 3551 §4.1): the marker bit
    marked = [i for i, p in enumerate(packets) if p[4]]
    assert any(first_new - 3 <= i <= first_new for i in marked), (first_new, marked)


def phone(rig, tmp_path, name, tone):
    p = Baresip(tmp_path / name, name, f"{name}-pw", rig.target, sip_port=reserved_pair(), tone=tone)
    p.wait_event("REGISTER_OK")
    return p


def test_callee_transfers_the_staying_caller(rig, tmp_path):
    """ada (raw) calls bob (baresip, 440 Hz); bob transfers her blind to cal (1000 Hz): ada's
    stream keeps its SSRC and sequence, the new talker's first packet is marked, and cal is
    heard within MAX_GAP_MS of bob's last packet."""
    ada = Staying(rig, "ada")
    try:
        ada.register()
        with phone(rig, tmp_path, "bob", OLD) as bob, phone(rig, tmp_path, "cal", NEW) as cal:
            ada.call_media(NAMES["bob"])
            bob.wait_event("CALL_ESTABLISHED")
            time.sleep(1.5)
            bob.command("transfer", f"sip:{NAMES['cal']}@{rig.target}")
            cal.wait_event("CALL_ESTABLISHED", timeout=15)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                ada.recv(0.2)  # answers hpbx's re-INVITE? (a raw device: only NOTIFY/BYE)
                if sum(1 for p in ada.packets if p[5] == NEW) > 50:
                    break
            gap, first_new, last_old = analyse(ada.packets)
            print(f"\ncallee transfer: gap {gap:.0f} ms between the old talker's last packet and "
                  f"the new talker's first at the staying caller")
            lo = max(0, last_old - 20)
            check_continuous(ada.packets[lo:first_new + 40], first_new - lo)
            assert gap <= MAX_GAP_MS, f"{gap:.0f} ms of silence after the transfer"
            assert abs(wait_heard(cal, OWN) - OWN) <= 20, cal.received_wavs()
            assert any(f"sip:{NAMES['cal']}@" in a for a in ada.asserted()), ada.reinvites  # caller ID
    finally:
        ada.close()
    rig.wait_idle(timeout=10)


def test_caller_transfers_the_staying_callee(rig, tmp_path):
    """bob (baresip, 440 Hz) calls ada (raw) and transfers her blind to cal (1000 Hz) from the
    caller side: the same continuity on the relay's other leg."""
    ada = Staying(rig, "ada")
    try:
        ada.register()
        with phone(rig, tmp_path, "bob", OLD) as bob, phone(rig, tmp_path, "cal", NEW) as cal:
            bob.command("dial", f"sip:{NAMES['ada']}@{rig.target}")
            ada.take_call_media()
            bob.wait_event("CALL_ESTABLISHED")
            time.sleep(1.5)
            bob.command("transfer", f"sip:{NAMES['cal']}@{rig.target}")
            cal.wait_event("CALL_ESTABLISHED", timeout=15)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                ada.recv(0.2)
                if sum(1 for p in ada.packets if p[5] == NEW) > 50:
                    break
            gap, first_new, last_old = analyse(ada.packets)
            print(f"\ncaller transfer: gap {gap:.0f} ms between the old talker's last packet and "
                  f"the new talker's first at the staying callee")
            lo = max(0, last_old - 20)
            check_continuous(ada.packets[lo:first_new + 40], first_new - lo)
            assert gap <= MAX_GAP_MS, f"{gap:.0f} ms of silence after the transfer"
            assert abs(wait_heard(cal, OWN) - OWN) <= 20, cal.received_wavs()
            assert any(f"sip:{NAMES['cal']}@" in a for a in ada.asserted()), ada.reinvites  # caller ID
    finally:
        ada.close()
    rig.wait_idle(timeout=10)


def heard_gap_ms(samples, rate=8000):
    """In a recording: ms from the last 20 ms block carrying OLD to the first carrying NEW
    (what the staying party's ear gets: silence or concealment in between)."""
    blocks = [samples[i:i + 160] for i in range(0, len(samples) - 160, 160)]
    kinds = []
    for b in blocks:
        po, pn = _power(b, OLD), _power(b, NEW)
        kinds.append(OLD if po > 1e9 and po > 10 * pn else NEW if pn > 1e9 and pn > 10 * po else 0)
    first_new = next(i for i, k in enumerate(kinds) if k == NEW)
    last_old = max(i for i, k in enumerate(kinds[:first_new]) if k == OLD)
    return (first_new - last_old - 1) * 20.0


def test_a_baresip_caller_hears_the_new_talker_at_once(rig, tmp_path):
    """ada (baresip, default jitter buffer) calls bob (baresip, 440 Hz), who transfers her to
    cal (1000 Hz): ada's recording goes from bob's tone to cal's with no more than the time
    the transfer itself takes (bob's baresip holds the call while it transfers): under 1 s,
    and cal's tone stays in it (no packets dropped as late: the recording's last second is
    cal's)."""
    from clients import wav_samples
    with phone(rig, tmp_path, "ada", OWN) as ada, phone(rig, tmp_path, "bob", OLD) as bob, \
            phone(rig, tmp_path, "cal", NEW) as cal:
        ada.command("dial", f"sip:{NAMES['bob']}@{rig.target}")
        ada.wait_event("CALL_ESTABLISHED")
        t0 = time.monotonic()
        bob.wait_event("CALL_ESTABLISHED")
        time.sleep(1.5)
        bob.command("transfer", f"sip:{NAMES['cal']}@{rig.target}")
        cal.wait_event("CALL_ESTABLISHED", timeout=15)
        assert abs(wait_heard(ada, NEW) - NEW) <= 20, ada.received_wavs()
        time.sleep(1.0)
        samples = wav_samples(max(ada.received_wavs(), key=lambda p: p.stat().st_mtime))
        gap = heard_gap_ms(samples)
        print(f"\nbaresip caller: {gap:.0f} ms between bob's tone and cal's in its recording "
              f"({len(samples) / 8000:.1f} s recorded in {time.monotonic() - t0:.1f} s)")
        assert gap < 1000, f"{gap:.0f} ms"
        ada.command("hangup")
        cal.wait_event("CALL_CLOSED")
    rig.wait_idle(timeout=10)


def test_a_transferor_still_talking_does_not_lock_the_target_out(rig, tmp_path):
    """ada (raw) calls bob (raw, 440 Hz), who REFERs her to cal (1000 Hz) and goes on sending
    RTP for 1.5 s after the 202 (as a far phone does until its BYE arrives): the relay goes on
    relaying bob until cal's first packet, then only cal (bob's late packets cannot take the
    leg back, which used to lock cal out for the 2 s latching silence): no gap, no 440 after
    the first 1000."""
    ada, bob = Staying(rig, "ada"), Staying(rig, "bob")
    try:
        ada.register()
        bob.register()
        with phone(rig, tmp_path, "cal", NEW) as cal:
            calling = threading.Thread(target=ada.call_media, args=(NAMES["bob"],))
            calling.start()
            dialog = bob.take_call_media(tone=OLD, seconds=4.5)
            calling.join(10)
            time.sleep(1.0)
            resp = bob.refer(dialog, f"<sip:{NAMES['cal']}@{rig.target}>")
            assert resp.startswith("SIP/2.0 202"), resp
            cal.wait_event("CALL_ESTABLISHED", timeout=15)
            time.sleep(2.5)  # bob's tone ends about 1.5 s after the REFER; his BYE waits unread
            deadline = time.monotonic() + 5
            while not bob.byes and time.monotonic() < deadline:
                bob.recv(0.2)
            assert bob.byes, "hpbx sent bob no BYE"
            while time.monotonic() < deadline and sum(1 for p in ada.packets if p[5] == NEW) < 50:
                ada.recv(0.2)
            gap, first_new, last_old = analyse(ada.packets)
            late_old = [p for p in ada.packets[first_new:] if p[5] == OLD]
            print(f"\ntransferor still talking: gap {gap:.0f} ms, {len(late_old)} of its packets after the target's first")
            assert not late_old, f"{len(late_old)} packets of bob after cal's first"
            assert gap <= MAX_GAP_MS, f"{gap:.0f} ms of silence after the transfer"
            lo = max(0, last_old - 20)
            check_continuous(ada.packets[lo:first_new + 40], first_new - lo)
    finally:
        ada.close()
        bob.close()
    rig.wait_idle(timeout=10)


def test_the_moved_party_of_an_attended_transfer_keeps_one_stream(rig, tmp_path):
    """ada (baresip, 1000 Hz) calls bob (raw); bob calls cal (raw, recording) and talks to her
    (440 Hz), then REFERs with Replaces: cal moves into ada's call, i.e. to another relay
    session and port. What cal receives stays one stream (the SSRC and sequence she had from
    bob's call go on, marker on ada's first packet), with no gap."""
    from test_attended import replaces_uri
    bob, cal = Staying(rig, "bob"), Staying(rig, "cal")
    try:
        bob.register()
        cal.register()
        with phone(rig, tmp_path, "ada", NEW) as ada:
            ada.command("dial", f"sip:{NAMES['bob']}@{rig.target}")
            taken = bob.take_call()
            ada.wait_event("CALL_ESTABLISHED")
            answering = threading.Thread(target=cal.take_call_media)
            answering.start()
            made = bob.call_media(NAMES["cal"], tone=OLD)
            answering.join(10)
            time.sleep(1.0)
            resp = bob.refer(taken, replaces_uri(NAMES["cal"], rig, made))
            assert resp.startswith("SIP/2.0 202"), resp
            deadline = time.monotonic() + 8
            while time.monotonic() < deadline and sum(1 for p in cal.packets if p[5] == NEW) < 50:
                cal.recv(0.2)
            gap, first_new, last_old = analyse(cal.packets)
            print(f"\nattended transfer, moved party: gap {gap:.0f} ms between bob's last packet and ada's first")
            lo = max(0, last_old - 20)
            check_continuous(cal.packets[lo:first_new + 40], first_new - lo)
            assert gap <= MAX_GAP_MS, f"{gap:.0f} ms of silence after the transfer"
            ada.command("hangup")
    finally:
        bob.close()
        cal.close()
    rig.wait_idle(timeout=10)
