"""Forwarding to the user's own mailbox (issue 18, FEATURES 13.3: "targets user, external
number, user mailbox"): ``forward.unconditional = "mailbox"`` sends an internal call straight
to the user's mailbox; her registered phone, which would answer at once, is not rung."""
from __future__ import annotations


import numpy as np
import pytest

from mailrig import SCEN, Caller, dominant_freq, wait_answered, wait_beep
from harness import have_sipp
from callrig import SCEN as CALL_SCEN, user

pytestmark = [pytest.mark.sipp,
              pytest.mark.skipif(not have_sipp(), reason="sipp is not installed (sip-tester)")]

TENANT = ('[tenant]\nname = "fwdmbx"\n'
          + user("eva", internal="31")
          + '[users.mailbox]\nenabled = true\ntimeout = 20\nkeep = true\n'
          + '[users.forward]\nunconditional = "mailbox"\n'
          + user("ole", internal="32"))


def test_unconditional_forward_to_the_mailbox_skips_the_phone(rig, sink):
    phone = rig.phone("eva", str(CALL_SCEN / "call_uas.xml"), timeout=6)
    ole = Caller(ssrc=0x6F6C65)
    try:
        call = rig.sipp(str(SCEN / "uac_auth_rtp.xml"), service="31", timeout=30,
                        extra=["-au", "ole", "-ap", "ole-pw", "-key", "rtp_port", str(ole.port)], name="ole31")
        answered = wait_answered(rig, "31", timeout=4)
        port = answered["media"]["a"]["port"]
        wait_beep(ole)  # the greeting is real speech, seconds long; the recorder starts after the beep
        ole.tones(port, [770.0] * 3)
        ole.digit(port, "#")
        assert call.finish().successful == 1, rig.server.log()
    finally:
        ole.close()
    res = phone.finish()
    assert not res.received("INVITE"), "eva's phone was rung despite the unconditional rule"
    [m] = rig.admin("mailbox.list", user="eva")
    assert m["state"] == "new" and m["caller"] == "32"
    got = rig.admin("mailbox.get", user="eva", id=m["id"])
    import base64
    import io
    import wave
    with wave.open(io.BytesIO(base64.b64decode(got["wav_base64"]))) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64)
    assert abs(dominant_freq(pcm) - 770) < 20
    [cdr] = [c for c in rig.cdrs(count=1) if c["called"] == "31"]
    assert cdr["targets_tried"] and "user:eva" in cdr["targets_tried"], cdr
