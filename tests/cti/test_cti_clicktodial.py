"""Click-to-dial over a real CTI WebSocket: hpbx rings the user's SIPp phone, then a SIPp
destination (a colleague's phone, or the trunk), and bridges them; failures reach the client."""
from __future__ import annotations

import re
import time

import pytest

from harness import have_sipp, header, reserved_port
from cticlient import CtiClient, CtiError
from ctirig import CtiRig, cti_user, number, trunk
from pathlib import Path

pytestmark = [pytest.mark.sipp,
              pytest.mark.skipif(not have_sipp(), reason="sipp is not installed (sip-tester)")]

SCEN = Path(__file__).parent / "scenarios"
GATEWAY = reserved_port()

TENANT = (
    '[tenant]\nname = "acme"\ntrunk = "gateway"\n'
    + trunk("gateway", GATEWAY)
    + cti_user("anna", "201", displayed="0441110000")
    + cti_user("carl", "203")
    + cti_user("dora", "204")
    + cti_user("eva", "205")
    + number("0441110000", (30, ["user:anna"]))
)


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    r = CtiRig(tmp_path_factory.mktemp("ctd"), TENANT)
    r.start()
    yield r
    r.stop()


def _phone(rig, name: str, pause_ms: int):
    return rig.phone(name, str(SCEN / "ctd_phone.xml"), pause_ms=pause_ms)


def test_click_to_dial_rings_phone_then_colleague_and_bridges_audio(rig):
    with CtiClient(rig.cti_url) as cti:
        cti.login("anna", "anna-cti")
        phone = _phone(rig, "anna", 2500)
        carl = rig.phone("carl", "call_uas.xml", pause_ms=300, extra=["-rtp_echo"])
        started = cti.call("call.dial", destination="203")
        cid = started["call_id"]
        assert cti.wait_event("dialing", call_id=cid)["destination"] == "203"
        cti.wait_event("phone_answered", call_id=cid)
        ringing = cti.wait_event("ringing", call_id=cid)
        assert ringing["direction"] == "out" and ringing["dialled"] == "203"
        cti.wait_event("answered", call_id=cid, timeout=5)
        # the relay carries the phone's RTP to carl and carl's echo back to the phone
        deadline = time.monotonic() + 4
        media = {}
        while time.monotonic() < deadline:
            calls = rig.admin("call.list")
            mine = [c for c in calls if c["call_id"] == cid]
            media = (mine[0].get("media") or {}) if mine else media
            if media and all(media.get(leg, {}).get("packets", 0) >= 20 for leg in "ab"):
                break
            time.sleep(0.2)
        assert media["a"]["packets"] >= 20 and media["b"]["packets"] >= 20, media
        ended = cti.wait_event("ended", call_id=cid, timeout=8)
        assert ended["reason"] == "caller hung up" and ended["duration"] > 1
        ph, ca = phone.finish(), carl.finish()
        assert ph.successful == 1 and ca.successful == 1, ph.describe() + ca.describe() + rig.server.log()
    # the phone was called first and its display named the destination; hpbx made the offer
    to_phone = ph.received("INVITE")[0]
    assert re.search(r'(?m)^From: "203" <sip:203@', to_phone), to_phone
    assert "m=audio" in to_phone and "a=rtpmap:8 PCMA/8000" in to_phone
    # carl saw anna calling: her displayed number, her name; only the codec her phone chose
    to_carl = ca.received("INVITE")[0]
    assert re.search(r"(?m)^From: .*<sip:0441110000@", to_carl), to_carl
    assert re.search(r"(?m)^m=audio \d+ RTP/AVP 8 101\r?$", to_carl), to_carl
    assert header(to_carl, "Call-ID") != header(to_phone, "Call-ID")
    rig.assert_idle()
    cdr = [c for c in rig.cdrs(count=1) if c["call_id"] == cid]
    assert cdr and cdr[0]["caller"] == "201" and cdr[0]["called"] == "203" and cdr[0]["answered_by"] == "carl"


def test_click_to_dial_external_presents_displayed_number(rig):
    with CtiClient(rig.cti_url) as cti:
        cti.login("anna", "anna-cti")
        phone = _phone(rig, "anna", 800)
        gw = rig.sipp("call_uas.xml", port=GATEWAY, pause_ms=200, name="gateway")
        time.sleep(0.2)
        cid = cti.call("call.dial", destination="0791234567")["call_id"]
        cti.wait_event("answered", call_id=cid, timeout=5)
        cti.wait_event("ended", call_id=cid, timeout=5)
        g, ph = gw.finish(), phone.finish()
        assert g.successful == 1 and ph.successful == 1, g.describe() + ph.describe() + rig.server.log()
    invite = g.received("INVITE")[0]
    assert invite.startswith("INVITE sip:0791234567@"), invite
    assert re.search(r"(?m)^From: .*<sip:0441110000@", invite), invite
    rig.assert_idle()


def test_click_to_dial_busy_destination_hangs_up_the_phone(rig):
    with CtiClient(rig.cti_url) as cti:
        cti.login("anna", "anna-cti")
        phone = rig.phone("anna", "call_uas.xml", pause_ms=100)  # answers, then waits for hpbx's BYE
        dora = rig.phone("dora", "call_uas_busy.xml")
        cid = cti.call("call.dial", destination="204")["call_id"]
        failed = cti.wait_event("dial_failed", call_id=cid, timeout=5)
        assert failed["status"] == 486, failed
        ph = phone.finish()
        dora.finish()
        assert ph.successful == 1 and ph.received("BYE"), ph.describe() + rig.server.log()
        assert not cti.events_of("answered", call_id=cid)
    rig.assert_idle()


def test_click_to_dial_refusals_name_the_field(rig):
    with CtiClient(rig.cti_url) as cti:
        cti.login("eva", "eva-cti")  # eva never registered a phone
        with pytest.raises(CtiError) as err:
            cti.call("call.dial", destination="201")
        assert err.value.error["data"]["field"] == "device", err.value.error
        for bad in ("", "20 1", "<sip:x@y>", "x" * 65):
            with pytest.raises(CtiError) as err:
                cti.call("call.dial", destination=bad)
            assert err.value.error["data"]["field"] == "destination", (bad, err.value.error)
        with pytest.raises(CtiError) as err:
            cti.call("call.dial")
        assert err.value.error["data"]["field"] == "destination"
        # a call id of nobody's call cannot be hung up
        with pytest.raises(CtiError) as err:
            cti.call("call.hangup", call_id="nope")
        assert err.value.code == -32001
    rig.assert_idle()
