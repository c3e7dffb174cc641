"""Call recording by the in-call code *1 (issue 11, FEATURES 17) with real peers: a trunk
caller (the test's RTP socket, 500 Hz) talks to a user's SIPp phone (its SDP names a second
test socket, 1300 Hz, which also sends the RFC 4733 digits). The relay keeps relaying while its
worker hears the digits: rita (may_record) presses *1, both parties hear the tenant's notice
("this call is recorded": here an operator's drop-in prompt, a 700 Hz tone), then each other,
*1 again stops; the WAV holds both parties. plain (no flag) pressing *1 is refused: no file."""
from __future__ import annotations

import io
import threading
import time
import wave

import numpy as np
import pytest

from mailrig import SCEN, Caller, wait_answered, wav_of
from harness import have_sipp, reserved_port
from callrig import number, trunk, user
from media_peer import decode, power

pytestmark = [pytest.mark.sipp,
              pytest.mark.skipif(not have_sipp(), reason="sipp is not installed (sip-tester)")]

CARRIER = reserved_port()
TENANT = ('[tenant]\nname = "recd"\nlanguage = "en"\nrecording_notice = "prompt"\n' + trunk("carrier", CARRIER)
          + user("plain", internal="31")
          + '\n[[users]]\nusername = "rita"\nsip_password = "rita-pw"\ninternal_number = "32"\n'
          + '[users.details]\nemail = "rita@example.com"\n[users.flags]\nmay_record = true\n'
          + number("044555710", (10, ["user:plain"])) + number("044555711", (10, ["user:rita"])))

NOTICE_HZ = 700.0


@pytest.fixture(scope="module", autouse=True)
def notice_prompt(rig):
    """The operator's drop-in for the system prompt call-recorded: 1 s of 700 Hz."""
    d = rig.dir / "media" / "prompts" / "en"
    d.mkdir(parents=True, exist_ok=True)
    t = np.arange(8000) / 8000
    with wave.open(str(d / "call-recorded.wav"), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes((np.sin(2 * np.pi * NOTICE_HZ * t) * 8000).astype("<i2").tobytes())


def _stats(rig) -> dict:
    return rig.admin("stats.get", layer="voicemail")["voicemail"]


def _press(peer: Caller, port: int, code: str = "*1") -> None:
    for d in code:
        peer.digit(port, d)


def _frames(pkts, freqs):
    """The dominant one of ``freqs`` in each PCMA packet received."""
    out = []
    for p in pkts:
        if p.pt != 8:
            continue
        x = decode("PCMA", p.payload)
        pw = [power(x, f) for f in freqs]
        out.append(freqs[int(np.argmax(pw))] if max(pw) > 1e3 else 0.0)
    return out


def _runs(seq):
    """[(value, length)] of consecutive equal values."""
    runs = []
    for v in seq:
        if runs and runs[-1][0] == v:
            runs[-1][1] += 1
        else:
            runs.append([v, 1])
    return [tuple(r) for r in runs]


def _call(rig, who, called, seconds, inband=False):
    a, b = Caller(ssrc=0xA), Caller(ssrc=0xB)
    sfx = "_inband" if inband else ""
    phone = rig.phone(who, str(SCEN / f"uas_answer_rtp{sfx}.xml"), pause_ms=100, timeout=40,
                      extra=["-key", "rtp_port", str(b.port)])
    caller = rig.sipp(str(SCEN / f"uac_hangup{sfx}.xml"), service=called, port=CARRIER, timeout=40,
                      pause_ms=seconds * 1000 + 1500, extra=["-key", "rtp_port", str(a.port)], name="recd")
    call = wait_answered(rig, called)
    pa, pb = call["media"]["a"]["port"], call["media"]["b"]["port"]
    talk_a = threading.Thread(target=a.tones, args=(pa, [500.0] * seconds))
    talk_a.start()
    return call, a, b, pa, pb, phone, caller, talk_a


def _end(a, b, phone, caller, talk_a):
    talk_a.join()
    res = caller.finish()
    assert res.successful == 1, res.describe()
    assert phone.finish().successful == 1
    a.close()
    b.close()


def test_star1_starts_with_the_notice_to_both_and_star1_stops(rig, sink):
    before = _stats(rig)
    call, a, b, pa, pb, phone, caller, talk_a = _call(rig, "rita", "044555711", 9)
    try:
        b.tones(pb, [1300.0] * 2)
        assert rig.admin("recording.list") == []
        _press(b, pb)  # relayed on to the caller AND heard by the relay's worker
        b.tones(pb, [1300.0] * 4)
        _press(b, pb)  # now at the recording's endpoint
        b.tones(pb, [1300.0] * 2)
        heard_b = b.peer.recv(timeout=0.5, idle=0.3)
        heard_a = a.peer.recv(timeout=0.5, idle=0.3)
    finally:
        _end(a, b, phone, caller, talk_a)
    # the callee heard the caller, then the notice, then the caller again
    runs_b = [r for r in _runs(_frames(heard_b, [500.0, NOTICE_HZ, 1300.0])) if r[1] >= 10]
    assert [v for v, _ in runs_b][:3] == [500.0, NOTICE_HZ, 500.0], runs_b
    assert 40 <= runs_b[1][1] <= 55, runs_b  # the whole 1 s notice, once
    # so did the caller: rita's 1300 Hz, the notice, 1300 Hz
    runs_a = [r for r in _runs(_frames(heard_a, [1300.0, NOTICE_HZ, 500.0])) if r[1] >= 10]
    assert [v for v, _ in runs_a][:3] == [1300.0, NOTICE_HZ, 1300.0], runs_a
    # the first *1 was relayed to the caller (the relay did not stop for the watch)
    events = [p.payload[0] for p in heard_a if p.pt == 101]
    assert 10 in events and 1 in events, events
    deadline = time.monotonic() + 10
    while not (recs := rig.admin("recording.list")) and time.monotonic() < deadline:
        time.sleep(0.2)
    [meta] = recs
    assert meta["user"] == "rita" and meta["call_id"] == call["call_id"], meta
    assert 3000 <= meta["duration_ms"] <= 5500, meta
    [msg] = sink.wait_count(1)
    assert msg["X-Envelope-To"] == "rita@example.com"
    with wave.open(io.BytesIO(wav_of(msg)[1])) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64)
    p500, p1300, p900 = power(pcm, 500), power(pcm, 1300), power(pcm, 900)
    assert p500 > 100 * p900 and p1300 > 100 * p900, (p500, p1300, p900)
    after = _stats(rig)
    assert after["recording_codes"] - before["recording_codes"] == 2, after
    assert after["recordings_started"] - before["recordings_started"] == 1, after
    rig.assert_idle()


def test_star1_without_the_flag_is_refused_and_no_file_is_made(rig):
    before = _stats(rig)
    n_recs = len(rig.admin("recording.list"))
    call, a, b, pa, pb, phone, caller, talk_a = _call(rig, "plain", "044555710", 4)
    try:
        b.tones(pb, [1300.0])
        _press(b, pb)
        b.tones(pb, [1300.0] * 2)
        heard_a = a.peer.recv(timeout=0.5, idle=0.3)
    finally:
        _end(a, b, phone, caller, talk_a)
    after = _stats(rig)
    assert after["recording_codes"] - before["recording_codes"] == 1, after
    assert after["recordings_refused"] - before["recordings_refused"] == 1, after
    assert after["recordings_started"] == before["recordings_started"], after
    # no notice, nothing but plain's own 1300 Hz reached the caller; no file
    runs_a = [r for r in _runs(_frames(heard_a, [1300.0, NOTICE_HZ, 500.0])) if r[1] >= 5]
    assert [v for v, _ in runs_a] == [1300.0], runs_a
    time.sleep(1.0)
    assert len(rig.admin("recording.list")) == n_recs
    assert len(list((rig.dir / "recordings").glob("*/*.wav"))) == n_recs  # no part file either
    rig.assert_idle()


def test_star1_in_band_when_no_telephone_event_was_negotiated(rig, sink):
    """Neither side offered telephone-event: the relay's worker runs the in-band detector on
    rita's relayed leg, so *1 as DTMF tones in her audio starts the recording; *1 again (now at
    the recording's endpoint, in-band too) stops it."""
    from media_peer import dtmf_pcm
    n_recs = len(rig.admin("recording.list"))
    n_mail = len(sink.messages())
    call, a, b, pa, pb, phone, caller, talk_a = _call(rig, "rita", "044555711", 8, inband=True)
    try:
        b.tones(pb, [1300.0])
        b.pcm(pb, dtmf_pcm("*1", 120, 120))
        b.tones(pb, [1300.0] * 3)
        b.pcm(pb, dtmf_pcm("*1", 120, 120))
        b.tones(pb, [1300.0] * 2)
    finally:
        _end(a, b, phone, caller, talk_a)
    deadline = time.monotonic() + 10
    while len(recs := rig.admin("recording.list")) == n_recs and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(recs) == n_recs + 1, recs
    meta = recs[-1]
    assert meta["user"] == "rita" and meta["call_id"] == call["call_id"], meta
    assert 2500 <= meta["duration_ms"] <= 5000, meta  # from the first *1 to the second
    [msg] = sink.wait_count(n_mail + 1)[n_mail:]
    with wave.open(io.BytesIO(wav_of(msg)[1])) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64)
    assert power(pcm, 500) > 100 * power(pcm, 900) and power(pcm, 1300) > 100 * power(pcm, 900)
    rig.assert_idle()
