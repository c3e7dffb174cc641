"""Call recording (issue 11, FEATURES 17) with real peers: a trunk caller (the test's RTP
socket, 500 Hz) talks to a user's SIPp phone (its SDP names a second test socket, 1300 Hz).
A party without may_record is refused over call.record and no file appears; with the flag the
recording runs while both parties keep hearing each other, and the one WAV (kept for
recording.get, mailed to the user through aiosmtpd) holds both parties' tones."""
from __future__ import annotations

import base64
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

from hpbx.admin.protocol import RpcError

pytestmark = [pytest.mark.sipp,
              pytest.mark.skipif(not have_sipp(), reason="sipp is not installed (sip-tester)")]

CARRIER = reserved_port()
TENANT = ('[tenant]\nname = "rec"\n' + trunk("carrier", CARRIER)
          + user("plain", internal="31")
          + '\n[[users]]\nusername = "rita"\nsip_password = "rita-pw"\ninternal_number = "32"\n'
          + '[users.details]\nemail = "rita@example.com"\n[users.flags]\nmay_record = true\n'
          + number("044555700", (10, ["user:plain"])) + number("044555701", (10, ["user:rita"])))



def _talk(rig, who: str, called: str, seconds: int):
    a, b = Caller(ssrc=0xA), Caller(ssrc=0xB)
    phone = rig.phone(who, str(SCEN / "uas_answer_rtp.xml"), pause_ms=100, timeout=30,
                      extra=["-key", "rtp_port", str(b.port)])
    caller = rig.sipp(str(SCEN / "uac_hangup.xml"), service=called, port=CARRIER, timeout=30,
                      pause_ms=seconds * 1000 + 1500, extra=["-key", "rtp_port", str(a.port)], name="rec")
    call = wait_answered(rig, called)
    pa, pb = call["media"]["a"]["port"], call["media"]["b"]["port"]
    threads = [threading.Thread(target=a.tones, args=(pa, [500.0] * seconds)),
               threading.Thread(target=b.tones, args=(pb, [1300.0] * seconds))]
    for t in threads:
        t.start()
    return call, (a, b), phone, caller, threads


def _end(parts):
    call, peers, phone, caller, threads = parts
    for t in threads:
        t.join()
    res = caller.finish()
    assert res.successful == 1, res.describe()
    assert phone.finish().successful == 1
    for p in peers:
        p.close()


def test_without_the_flag_the_request_is_refused_and_no_file_is_made(rig):
    parts = _talk(rig, "plain", "044555700", 2)
    try:
        with pytest.raises(RpcError) as err:
            rig.admin("call.record", call_id=parts[0]["call_id"], user="plain", action="start")
        assert err.value.data["field"] == "user" and "may_record" in err.value.message
        with pytest.raises(RpcError) as err:
            rig.admin("call.record", call_id=parts[0]["call_id"], user="rita", action="start")
        assert "not a party" in err.value.message
    finally:
        _end(parts)
    assert rig.admin("recording.list") == []
    assert not list((rig.dir / "recordings").glob("*/*.wav"))
    rig.assert_idle()


def test_recording_holds_both_parties_and_they_keep_hearing_each_other(rig, sink):
    parts = _talk(rig, "rita", "044555701", 5)
    call, (a, b) = parts[0], parts[1]
    try:
        time.sleep(1.0)
        started = rig.admin("call.record", call_id=call["call_id"], user="rita", action="start")
        assert started["recording"] is True
        # during the recording the callee still hears the caller's 500 Hz (through the room)
        heard = [p for p in b.peer.recv(timeout=1.5) if p.pt == 8]
        pcm = np.concatenate([decode("PCMA", p.payload) for p in heard[-40:]])
        assert power(pcm, 500) > 50 * power(pcm, 1300), "callee hears the caller during recording"
        time.sleep(1.0)
        assert rig.admin("call.record", call_id=call["call_id"], user="rita", action="stop")["recording"] is False
        b.peer.drain()
        heard = [p for p in b.peer.recv(timeout=0.8) if p.pt == 8]
        pcm = np.concatenate([decode("PCMA", p.payload) for p in heard[-20:]])
        assert power(pcm, 500) > 50 * power(pcm, 1300), "relayed again after the recording"
    finally:
        _end(parts)
    deadline = time.monotonic() + 10
    while not (recs := rig.admin("recording.list")) and time.monotonic() < deadline:
        time.sleep(0.2)
    [meta] = recs
    assert meta["user"] == "rita" and meta["call_id"] == call["call_id"], meta
    got = rig.admin("recording.get", id=meta["id"])
    with wave.open(io.BytesIO(base64.b64decode(got["wav_base64"]))) as w:
        assert (w.getframerate(), w.getnchannels()) == (8000, 1)
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64)
    assert 2.0 <= len(pcm) / 8000 <= 3.5, len(pcm) / 8000
    p500, p1300, p900 = power(pcm, 500), power(pcm, 1300), power(pcm, 900)
    assert p500 > 100 * p900 and p1300 > 100 * p900, (p500, p1300, p900)
    [msg] = sink.wait_count(1)
    assert msg["X-Envelope-To"] == "rita@example.com" and wav_of(msg)[1][:4] == b"RIFF"
    rig.assert_idle()
