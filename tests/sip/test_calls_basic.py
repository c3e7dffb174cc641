"""Calls end to end, one server for the module: a trunk calls a public number, the B2BUA rings
the registered phones of its dial plan, bridges the answer, and writes the CDR.

Every phone is a SIPp UAS that first REGISTERs as a device of its user from its own port.
"""
from __future__ import annotations

import re

import pytest

from harness import have_sipp, header, reserved_port
from callrig import CallRig, number, trunk, user

pytestmark = [pytest.mark.sipp,
              pytest.mark.skipif(not have_sipp(), reason="sipp is not installed (sip-tester)")]

CARRIER = reserved_port()
GATEWAY = reserved_port()

TENANT = (
    '[tenant]\nname = "acme"\ntrunk = "gateway"\n'
    + trunk("carrier", CARRIER) + trunk("gateway", GATEWAY)
    + user("anna", "201", "0441110000") + user("beat", "202", "0441110000") + user("carl", "203")
    + user("dora", "204") + user("lone", "299")
    + number("0441110001", (30, ["user:beat"]))
    # one phone
    + number("0441110000", (30, ["user:anna"]), alert_info="<http://x/ring2>;info=alert-group")
)


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    r = CallRig(tmp_path_factory.mktemp("calls"), TENANT)
    r.start()
    yield r
    r.stop()


def test_trunk_call_to_one_phone_answer_bye_cdr(rig):
    anna = rig.phone("anna", "call_uas.xml", pause_ms=200)
    res = rig.call("call_uac.xml", "0441110000", port=CARRIER, pause_ms=300)
    phone = anna.finish()
    assert res.returncode == 0 and res.successful == 1, res.describe() + rig.server.log()
    assert phone.returncode == 0 and phone.successful == 1, phone.describe()
    # the callee's INVITE is a new call: own Call-ID, no caller Via/Contact/Record-Route
    invite = phone.received("INVITE")[0]
    caller_invite = res.sent("INVITE")[0]
    assert header(invite, "Call-ID") != header(caller_invite, "Call-ID")
    assert len(header(invite, "Via")) == 1
    assert f":{CARRIER}" not in "\n".join(header(invite, "Via") + header(invite, "Contact"))
    assert not header(invite, "Record-Route")
    assert "caller-proxy.invalid" not in invite
    assert header(invite, "Alert-Info") == ["<http://x/ring2>;info=alert-group"]
    assert re.search(r"(?m)^From:.*sip:0311112222@", invite), invite
    # the caller's 200 names none of the phone's addresses
    ok = res.received("SIP/2.0 200")[0]
    phone_port = phone.cmd[phone.cmd.index("-p") + 1]
    assert f":{phone_port}" not in ok and "callee-proxy.invalid" not in ok
    # SDP anchored: both sides see the relay, never each other's media port
    lo, hi = rig.rtp_ports
    m_invite = int(re.search(r"m=audio (\d+)", invite).group(1))
    m_ok = int(re.search(r"m=audio (\d+)", ok).group(1))
    assert lo <= m_invite <= hi and lo <= m_ok <= hi and m_invite != m_ok
    assert "a=candidate" not in invite and "a=rtpmap:8 PCMA/8000" in invite
    rig.assert_idle()
    cdr = [c for c in rig.cdrs() if c["call_id"] == header(caller_invite, "Call-ID")[0]]
    assert len(cdr) == 1, rig.cdrs()
    c = cdr[0]
    assert (c["caller"], c["called"], c["slot"], c["answered_by"]) == ("0311112222", "0441110000", 1, "anna")
    assert c["targets_tried"] == ["user:anna"] and c["answer"] and c["end"] >= c["answer"] >= c["start"]
    assert c["end_reason"] == "caller hung up"


def test_callee_bye_ends_both_legs(rig):
    beat = rig.phone("beat", "call_uas_bye.xml", pause_ms=300)
    res = rig.call("call_uac_silent.xml", "0441110001", port=CARRIER, timeout=10)
    phone = beat.finish()
    assert res.successful == 1 and phone.successful == 1, res.describe() + phone.describe() + rig.server.log()
    bye = res.received("BYE")[0]
    # the BYE the caller gets is in the caller's dialog: its Call-ID and tags, none of the phone's
    assert header(bye, "Call-ID") == header(res.sent("INVITE")[0], "Call-ID")
    assert header(bye, "Call-ID") != header(phone.received("INVITE")[0], "Call-ID")
    cdr = [c for c in rig.cdrs(count=2) if c["call_id"] == header(bye, "Call-ID")[0]]
    assert cdr and cdr[0]["end_reason"] == "callee hung up", rig.cdrs()
    rig.assert_idle()
