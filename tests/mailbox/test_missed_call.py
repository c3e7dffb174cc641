"""Missed-call e-mail (issue 11, FEATURES 4.8.13) with real peers: anna (flag on) rings on her
SIPp phone and the caller hangs up: exactly one mail reaches her address (aiosmtpd); when eve
answers the same kind of call in parallel, anna gets no mail."""
from __future__ import annotations

import time

import pytest

from harness import have_sipp, reserved_port
from callrig import number, trunk

pytestmark = [pytest.mark.sipp,
              pytest.mark.skipif(not have_sipp(), reason="sipp is not installed (sip-tester)")]

CARRIER = reserved_port()
TENANT = ('[tenant]\nname = "miss"\n' + trunk("carrier", CARRIER)
          + '\n[[users]]\nusername = "anna"\nsip_password = "anna-pw"\ninternal_number = "21"\n'
          + '[users.details]\nemail = "anna@example.com"\nfirst_name = "Anna"\n'
          + '[users.flags]\nmissed_call_mail = true\n'
          + '\n[[users]]\nusername = "eve"\nsip_password = "eve-pw"\ninternal_number = "25"\n'
          + number("044555600", (10, ["user:anna"])) + number("044555601", (10, ["user:anna", "user:eve"])))



def test_caller_hangs_up_while_anna_rings_one_mail(rig, sink):
    phone = rig.phone("anna", "call_uas_ring.xml")
    res = rig.call("call_uac_cancel.xml", "044555600", port=CARRIER, pause_ms=800)
    assert res.successful == 1, res.describe() + rig.server.log()
    assert phone.finish().received("CANCEL")
    [msg] = sink.wait_count(1)
    time.sleep(1.0)
    assert len(sink.messages()) == 1, "exactly one mail"
    assert msg["X-Envelope-To"] == "anna@example.com"
    assert msg["Subject"] == "Missed call from 0311112222", msg["Subject"]
    body = msg.get_body(("plain",)).get_content()
    assert "Dialled: 044555600 (slot 1" in body and "Europe/Zurich" in body, body
    rig.assert_idle()


def test_answered_by_a_colleague_is_not_missed(rig, sink):
    before = len(sink.messages())
    anna = rig.phone("anna", "call_uas_ring.xml")
    eve = rig.phone("eve", "call_uas.xml", pause_ms=300)
    res = rig.call("call_uac.xml", "044555601", port=CARRIER, pause_ms=300)
    assert res.successful == 1, res.describe() + rig.server.log()
    assert eve.finish().successful == 1 and anna.finish().received("CANCEL")
    time.sleep(1.5)
    assert len(sink.messages()) == before
    assert rig.admin("stats.get", layer="voicemail")["voicemail"]["missed_call_mail"] == 1
    rig.assert_idle()
