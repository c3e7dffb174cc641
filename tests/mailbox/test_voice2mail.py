"""Voice2Mail end to end (issue 11, FEATURES 8.1): a SIPp caller from the trunk (its RTP from
the test's own socket) calls a number whose rows nobody answers; hpbx answers, beeps, records
the caller's 10 s tone sequence until '#', and a real SMTP server (aiosmtpd) receives exactly
one mail, at the address of the slot that was active, with the WAV holding those tones. The
caller hanging up ends the recording too; a LINKed number's call takes the linked plan's
Voice2Mail (never the first number's); a silent or too short message is not mailed; a slot
without rows goes to Voice2Mail at once; SMTP down during the recording delivers once it is
back."""
from __future__ import annotations

import io
import time
import wave

import numpy as np
import pytest

from mailrig import SCEN, Caller, dominant_freq, prompt_ms, wait_answered, wait_beep, wav_of
from media_peer import decode, rtp_packet
from harness import have_sipp, reserved_port
from callrig import ALLDAYS, trunk, user

pytestmark = [pytest.mark.sipp,
              pytest.mark.skipif(not have_sipp(), reason="sipp is not installed (sip-tester)")]

CARRIER = reserved_port()
TONES = [500.0, 700.0, 900.0, 1200.0, 1500.0, 600.0, 800.0, 1100.0, 1400.0, 1700.0]


def slot(active: bool, name: str, v2m: str, rows=(("user:anna",),)) -> str:
    text = (f"[[numbers.slots]]\nactive = {'true' if active else 'false'}\nname = \"{name}\"\n"
            f"days = {ALLDAYS}\nvoice2mail = \"{v2m}\"\n")
    for targets in rows:
        quoted = ", ".join(f'"{t}"' for t in targets)
        text += f"[[numbers.slots.rows]]\nduration = 5\ntargets = [{quoted}]\n"
    return text


# anna is never registered: her row fails at once (480), and the rows are exhausted
TENANT = ('[tenant]\nname = "vm"\ntimezone = "Europe/Zurich"\n' + trunk("carrier", CARRIER)
          + user("anna", internal="21")
          + '\n[[numbers]]\nnumber = "044555300"\n'
          + slot(False, "Closed", "one@example.com") + slot(True, "Day", "two@example.com")
          + slot(True, "Late", "three@example.com")
          + '\n[[numbers]]\nnumber = "044555301"\n' + slot(True, "Nobody", "norows@example.com", rows=())
          # LINK (FEATURES 2.8): 044555302's second row hands the call to 044555303's plan
          + '\n[[numbers]]\nnumber = "044555302"\n'
          + slot(True, "Front", "front@example.com", rows=(("user:anna",), ("link:044555303",)))
          + '\n[[numbers]]\nnumber = "044555303"\n' + slot(False, "Off", "off@example.com")
          + slot(True, "Linked", "linked@example.com")
          # its slot is set over the admin socket with an after-announcement (the greeting)
          + '\n[[numbers]]\nnumber = "044555304"\n' + slot(True, "Placeholder", ""))



def _new_mail(sink, before: int, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msgs = sink.messages()
        if len(msgs) > before:
            return msgs[before:]
        time.sleep(0.1)
    raise AssertionError("no mail arrived")


def _wait_beep(caller: Caller) -> list:
    return wait_beep(caller)


def test_rows_exhausted_caller_records_tones_mail_goes_to_the_active_slot_only(rig, sink):
    before = len(sink.messages())
    caller = Caller()
    try:
        sipp = rig.sipp("call_uac_service.xml", service="044555300", port=CARRIER, timeout=40,
                        extra=["-key", "rtp_port", str(caller.port)], name="v2m")
        call = wait_answered(rig, "044555300")
        assert call["service"] == "voice2mail" and call["slot"] == 2, call
        port = call["media"]["a"]["port"]
        _wait_beep(caller)
        caller.tones(port, TONES)
        caller.digit(port, "#")
        res = sipp.finish()  # the service ends the call: BYE from hpbx
        assert res.successful == 1, res.describe() + rig.server.log()
    finally:
        caller.close()
    [msg] = _new_mail(sink, before)
    time.sleep(1.0)
    assert len(sink.messages()) == before + 1, "exactly one mail"
    assert msg["X-Envelope-To"] == "two@example.com", msg["X-Envelope-To"]
    assert "0311112222" in msg["Subject"] and "044555300" in msg["Subject"], msg["Subject"]
    body = msg.get_body(("plain",)).get_content()
    for needle in ("Caller: 0311112222 (Caller 1)", "Dialled number: 044555300", 'slot 2 "Day"',
                   "Europe/Zurich", "Duration: 0:1"):
        assert needle in body, (needle, body)
    name, data = wav_of(msg)
    assert name.endswith(".wav")
    with wave.open(io.BytesIO(data)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (8000, 1, 2)
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64)
    secs = len(pcm) / 8000
    assert 9.8 <= secs <= 11.0, secs
    loud = np.flatnonzero(np.abs(pcm) > 2000)
    start = loud[0]
    assert start < 8000, f"{start / 8000:.2f} s of silence before the tones"
    got = [dominant_freq(pcm[start + i * 8000 + 2000:start + i * 8000 + 6000]) for i in range(10)]
    assert all(abs(g - f) < 20 for g, f in zip(got, TONES)), got
    cdr = [c for c in rig.cdrs(count=1) if c.get("called") == "044555300"][-1]
    assert cdr["answered_by"] == "service:voice2mail" and cdr["targets_tried"] == ["user:anna"], cdr
    assert "mailed to two@example.com" in cdr["service_result"], cdr
    rig.assert_idle()


def test_caller_hanging_up_ends_the_recording_and_it_is_mailed(rig, sink):
    before = len(sink.messages())
    caller = Caller()
    try:
        sipp = rig.sipp(str(SCEN / "uac_hangup.xml"), service="044555300", port=CARRIER, timeout=30,
                        pause_ms=prompt_ms() + 5000, extra=["-key", "rtp_port", str(caller.port)], name="v2m-bye")
        port = wait_answered(rig, "044555300")["media"]["a"]["port"]
        _wait_beep(caller)
        caller.tones(port, [440.0, 440.0, 440.0])
        res = sipp.finish()
        assert res.successful == 1, res.describe() + rig.server.log()
    finally:
        caller.close()
    [msg] = _new_mail(sink, before)
    assert msg["X-Envelope-To"] == "two@example.com"
    _, data = wav_of(msg)
    with wave.open(io.BytesIO(data)) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64)
    assert 2.9 <= len(pcm) / 8000 <= 5.5, len(pcm) / 8000
    assert abs(dominant_freq(pcm[:24000]) - 440) < 20
    rig.assert_idle()


def test_a_silent_message_is_not_mailed(rig, sink):
    before = len(sink.messages())
    caller = Caller()
    try:
        sipp = rig.sipp("call_uac_service.xml", service="044555300", port=CARRIER, timeout=30,
                        extra=["-key", "rtp_port", str(caller.port)], name="v2m-silent")
        call = wait_answered(rig, "044555300")
        port = call["media"]["a"]["port"]
        _wait_beep(caller)
        caller.tones(port, [0.0, 0.0, 0.0], amp=0.0)  # RTP, but all silence
        # the call ends 3 s after the beep, inside the 2 s minimum..5 s silence stop window
        # whatever the load (a SIPp pause counted from the answer ended it too early when the
        # greeting came late: "too short" instead of "no audio")
        rig.admin("call.hangup", call_id=call["call_id"])
        res = sipp.finish()
        assert res.successful == 1, res.describe()
    finally:
        caller.close()
    # the caller hung up: the CDR is written then, the message is judged once the file is complete
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        stats = rig.admin("stats.get", layer="voicemail")["voicemail"]
        if stats["voicemail_discarded"]:
            break
        time.sleep(0.2)
    assert stats["voicemail_discarded"] == 1, stats
    assert "discarded: no audio" in rig.server.log()
    cdr = rig.cdrs(count=1)[-1]
    assert cdr["service_result"] == "voice2mail: recording", cdr
    time.sleep(1.5)
    assert len(sink.messages()) == before
    rig.assert_idle()


def test_slot_without_rows_goes_to_voice2mail_at_once(rig, sink):
    before = len(sink.messages())
    caller = Caller()
    try:
        sipp = rig.sipp("call_uac_service.xml", service="044555301", port=CARRIER, timeout=30,
                        extra=["-key", "rtp_port", str(caller.port)], name="v2m-norows")
        call = wait_answered(rig, "044555301")
        assert call["targets_tried"] == [], call
        port = call["media"]["a"]["port"]
        _wait_beep(caller)
        caller.tones(port, [900.0, 900.0, 900.0])
        caller.digit(port, "#")
        assert sipp.finish().successful == 1
    finally:
        caller.close()
    [msg] = _new_mail(sink, before)
    assert msg["X-Envelope-To"] == "norows@example.com"
    assert 'slot 1 "Nobody"' in msg.get_body(("plain",)).get_content()
    rig.assert_idle()


def test_linked_number_uses_the_link_targets_voice2mail_never_its_own(rig, sink):
    """FEATURES 2.8/8.1: 044555302 rings anna, then LINKs to 044555303, whose active slot 2
    rings anna too; when that plan ends, 044555303's slot-2 address gets the message (the
    dialled number stays 044555302), never 044555302's own Voice2Mail nor the inactive slot's."""
    before = len(sink.messages())
    caller = Caller()
    try:
        sipp = rig.sipp("call_uac_service.xml", service="044555302", port=CARRIER, timeout=40,
                        extra=["-key", "rtp_port", str(caller.port)], name="v2m-link")
        call = wait_answered(rig, "044555302")
        assert call["service"] == "voice2mail" and call["slot"] == 1, call  # where the call arrived
        port = call["media"]["a"]["port"]
        _wait_beep(caller)
        caller.tones(port, [650.0, 1250.0, 650.0])
        caller.digit(port, "#")
        res = sipp.finish()
        assert res.successful == 1, res.describe() + rig.server.log()
    finally:
        caller.close()
    [msg] = _new_mail(sink, before)
    time.sleep(1.0)
    assert len(sink.messages()) == before + 1, "exactly one mail"
    assert msg["X-Envelope-To"] == "linked@example.com", msg["X-Envelope-To"]
    body = msg.get_body(("plain",)).get_content()
    for needle in ("Dialled number: 044555302", 'Dial plan: 044555303 (LINK from 044555302) slot 2 "Linked"'):
        assert needle in body, (needle, body)
    _, data = wav_of(msg)
    with wave.open(io.BytesIO(data)) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64)
    start = np.flatnonzero(np.abs(pcm) > 2000)[0]
    got = [dominant_freq(pcm[start + i * 8000 + 2000:start + i * 8000 + 6000]) for i in range(3)]
    assert all(abs(g - f) < 20 for g, f in zip(got, [650.0, 1250.0, 650.0])), got
    cdr = [c for c in rig.cdrs(count=1) if c.get("called") == "044555302"][-1]
    assert cdr["answered_by"] == "service:voice2mail", cdr
    assert "mailed to linked@example.com" in cdr["service_result"], cdr
    rig.assert_idle()


def _tone_wav(freq: float, seconds: float) -> bytes:
    t = np.arange(int(seconds * 8000)) / 8000
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes((0.3 * np.sin(2 * np.pi * freq * t) * 32767).astype("<i2").tobytes())
    return out.getvalue()


def _flood(caller: Caller, port: int, events: int, digit: int = 5) -> None:
    """``events`` distinct RFC 4733 events (a new timestamp each, start and end in one packet),
    as fast as the socket takes them."""
    for i in range(events):
        caller._send(rtp_packet(caller.seq, caller.ts + 8 * i, caller.ssrc,
                                bytes([digit, 0x80 | 10]) + (40).to_bytes(2, "big"), pt=101), port)
        caller.seq += 1
        if i % 200 == 199:
            time.sleep(0.005)  # the relay's socket buffer, not the point of the test
    caller.ts += 8 * events


def test_after_announcement_is_the_greeting_and_an_rfc4733_flood_neither_stops_nor_grows_it(rig, sink):
    """FEATURES 8.1's order: rows exhausted -> the slot's after-announcement as greeting -> beep
    -> record. Issue 11 "bad input": 5,000 RFC 4733 events (no #) in the middle of the message
    neither end the recording nor add to it; # ends it; the server keeps running."""
    import base64
    ann = rig.admin("announcement.create", tenant="vm", name="greeting 600 Hz",
                    audio=base64.b64encode(_tone_wav(600, 1.0)).decode())
    rig.admin("number.set_slots", number="044555304",
              slots=[{"active": True, "name": "Greeted", "days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
                      "announcement_after": ann["id"], "voice2mail": "greeted@example.com",
                      "rows": [{"duration": 5, "targets": ["user:anna"]}]}])
    before = len(sink.messages())
    caller = Caller()
    try:
        sipp = rig.sipp("call_uac_service.xml", service="044555304", port=CARRIER, timeout=40,
                        extra=["-key", "rtp_port", str(caller.port)], name="v2m-greet")
        port = wait_answered(rig, "044555304")["media"]["a"]["port"]
        heard = [p for p in _wait_beep(caller) if p.pt == 8]
        freqs = [dominant_freq(decode("PCMA", p.payload).astype(np.float64), pad=1024) for p in heard]
        greeting = [f for f in freqs[:50] if abs(f - 600) < 30]
        assert len(greeting) >= 45, freqs[:60]  # the 1 s announcement, first, then the beep
        assert len(heard) <= 50 + 20, len(heard)  # and not the default greeting as well
        caller.tones(port, [650.0])
        _flood(caller, port, 5000)
        caller.tones(port, [1250.0])
        caller.digit(port, "#")
        res = sipp.finish()
        assert res.successful == 1, res.describe() + rig.server.log()
    finally:
        caller.close()
    [msg] = _new_mail(sink, before)
    assert msg["X-Envelope-To"] == "greeted@example.com"
    _, data = wav_of(msg)
    with wave.open(io.BytesIO(data)) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64)
    # the two tones, and between them no more than the flood's wall time (the events added nothing)
    assert 2.0 <= len(pcm) / 8000 <= 3.5, len(pcm) / 8000
    start = np.flatnonzero(np.abs(pcm) > 2000)[0]
    assert abs(dominant_freq(pcm[start + 1000:start + 6000]) - 650) < 20
    assert abs(dominant_freq(pcm[-7000:-1000]) - 1250) < 20
    assert rig.admin("stats.get", layer="voicemail")["voicemail"]["voicemail_discarded"] <= 1
    rig.assert_idle()


def test_five_seconds_of_silence_end_the_message_and_the_silence_is_cut(rig, sink):
    """FEATURES 8.1: the recording ends after 5 s of silence (the caller still on the line,
    sending silent RTP); hpbx ends the call, and the mailed WAV holds the tone, not the 5 s."""
    before = len(sink.messages())
    caller = Caller()
    try:
        sipp = rig.sipp("call_uac_service.xml", service="044555300", port=CARRIER, timeout=40,
                        extra=["-key", "rtp_port", str(caller.port)], name="v2m-quiet")
        port = wait_answered(rig, "044555300")["media"]["a"]["port"]
        _wait_beep(caller)
        caller.tones(port, [880.0, 880.0, 880.0])
        caller.tones(port, [0.0] * 8, amp=0.0)  # 8 s of silent RTP: no '#', no hang-up
        res = sipp.finish()  # hpbx hung up (BYE) once 5 s of silence had passed
        assert res.successful == 1, res.describe() + rig.server.log()
    finally:
        caller.close()
    [msg] = _new_mail(sink, before)
    assert msg["X-Envelope-To"] == "two@example.com"
    _, data = wav_of(msg)
    with wave.open(io.BytesIO(data)) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64)
    assert 2.8 <= len(pcm) / 8000 <= 3.6, len(pcm) / 8000  # the 3 s tone; the silence was cut
    assert abs(dominant_freq(pcm[4000:20000]) - 880) < 20
    cdr = [c for c in rig.cdrs(count=1) if c.get("called") == "044555300"][-1]
    assert "mailed to two@example.com" in cdr["service_result"], cdr
    assert "Duration: 0:03" in msg.get_body(("plain",)).get_content()
    rig.assert_idle()
