"""Music on hold with real peers (issue 10): a SIPp caller holds (a=sendonly, a=inactive, or the
c=0.0.0.0 of RFC 2543 phones) and resumes; the held SIPp phone's own RTP socket hears the
caller's 600 Hz, then the tenant's music class (a drop-in class of an 850 Hz tone), then the
caller again after resume."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from harness import have_sipp, reserved_port
from callrig import ALLDAYS, CallRig, trunk, user
from media_peer import Peer, encode, sine
from test_announcements import classify, frames_of, runs, tone_wav

SCEN = Path(__file__).parent / "scenarios"
CARRIER = reserved_port()
TENANT = ('[tenant]\nname = "moh"\nmusic_on_hold = "testmusic"\n' + trunk("carrier", CARRIER)
          + user("held", internal="41")
          + f'\n[[numbers]]\nnumber = "044888100"\n[[numbers.slots]]\nactive = true\ndays = {ALLDAYS}\n'
          + '[[numbers.slots.rows]]\nduration = 20\ntargets = ["user:held"]\n')

pytestmark = [pytest.mark.sipp,
              pytest.mark.skipif(not have_sipp(), reason="sipp is not installed (sip-tester)")]


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    d = tmp_path_factory.mktemp("moh")
    r = CallRig(d, TENANT)
    r.start()
    music = Path(r.server.db_path).resolve().parent / "media" / "prompts" / "moh" / "testmusic"
    music.mkdir(parents=True)
    (music / "a.wav").write_bytes(tone_wav(850, 2.0))
    yield r
    r.stop()


def caller_port(rig, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        calls = rig.admin("call.list")
        if calls and calls[0].get("state") == "answered" and calls[0].get("media"):
            return calls[0]["media"]["a"]["port"]
        time.sleep(0.05)
    raise AssertionError(f"no answered call: {rig.admin('call.list')}")


@pytest.mark.parametrize("hold_ip,hold_dir", [("127.0.0.1", "sendonly"), ("127.0.0.1", "inactive"),
                                              ("0.0.0.0", "sendrecv")])
def test_held_party_hears_music_until_resume(rig, hold_ip, hold_dir):
    held, caller = Peer(), Peer()
    stop = threading.Event()
    try:
        phone = rig.phone("held", str(SCEN / "uas_hold_resume_rtp.xml"), timeout=20,
                          extra=["-key", "rtp_port", str(held.port)])
        sipp = rig.sipp(str(SCEN / "uac_hold_resume_rtp.xml"), service="044888100", port=CARRIER,
                        pause_ms=1500, timeout=20, name="holder",
                        extra=["-key", "rtp_port", str(caller.port), "-key", "hold_ip", hold_ip,
                               "-key", "hold_dir", hold_dir])
        port = caller_port(rig)

        def talk():
            seq, ts, i = 1, 0, 0
            while not stop.is_set() and i < 400:
                frame = encode("PCMA", sine(600, 20, 6000, phase=2 * np.pi * 600 * i * 0.02))
                caller.send(bytes([0x80, 8]) + seq.to_bytes(2, "big") + ts.to_bytes(4, "big")
                            + (0x4242).to_bytes(4, "big") + frame, port)
                seq, ts, i = seq + 1, ts + 160, i + 1
                time.sleep(0.02)

        t = threading.Thread(target=talk)
        t.start()
        pkts = held.recv(n=300, timeout=6)
        stop.set()
        t.join()
        res, ph = sipp.finish(), phone.finish()
    finally:
        stop.set()
        held.close()
        caller.close()
    assert res.successful == 1 and ph.successful == 1, res.describe() + ph.describe() + rig.server.log()
    hold_ok = [m for m in res.received("SIP/2.0 200") if "CSeq: 2 INVITE" in m][0]
    want = "a=inactive" if hold_dir == "inactive" else "a=recvonly"
    assert want in hold_ok, hold_ok
    assert "a=sendonly" in ph.received("INVITE")[1], "the held party is told hpbx sends (music)"
    labels = classify(frames_of(pkts), freqs=(600, 850))
    assert runs(labels) == [600, 850, 600], (runs(labels), labels)
    assert len({p.ssrc for p in pkts}) == 1, "one RTP identity towards the held party"
    rig.assert_idle()
