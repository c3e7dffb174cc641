"""CTI call control with real peers: a SIPp phone that takes remote control (NOTIFY Event: talk /
hold) answers, holds and resumes when the CTI client asks; held/resumed/transferred events; the
caller's name from the address books in the phone's INVITE and in the ringing event; a blind
transfer asked over CTI connects the SIPp caller to a colleague's SIPp phone."""
from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest

from harness import have_sipp, reserved_port
from cticlient import CtiClient, CtiError
from ctirig import CtiRig, cti_user, number, trunk

pytestmark = [pytest.mark.sipp,
              pytest.mark.skipif(not have_sipp(), reason="sipp is not installed (sip-tester)")]

CARRIER = reserved_port()
SCEN = Path(__file__).parent / "scenarios"

TENANT = (
    '[tenant]\nname = "acme"\n'
    + trunk("carrier", CARRIER)
    + cti_user("anna", "201", displayed="0441110000")
    + cti_user("carl", "203")
    + number("0441110000", (30, ["user:anna"]))
    + number("0441110003", (30, ["user:carl"]))
)


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    r = CtiRig(tmp_path_factory.mktemp("cticontrol"), TENANT)
    r.start()
    yield r
    r.stop()


def _from_display(result, first_line: str) -> str:
    for text in result.received(first_line):
        m = re.search(r'(?mi)^From:\s*"([^"]*)"', text)
        if m:
            return m.group(1)
    return ""


def test_answer_hold_resume_over_cti_with_the_callers_name_from_the_book(rig):
    csv = "Hans;Muster;ACME;;031 111 22 22;\n".encode()  # the caller, in the global book
    rig.admin("addressbook.import", tenant="acme", csv_base64=base64.b64encode(csv).decode())
    with CtiClient(rig.cti_url, timeout=10) as anna:
        anna.login("anna", "anna-cti")
        mine = anna.call("addressbook.create", first_name="Hansi", last_name="Privat", mobile="+41311112222")
        phone = rig.phone("anna", str(SCEN / "phone_remote.xml"), timeout=20)
        caller = rig.sipp(str(SCEN / "caller_held.xml"), service="0441110000", port=CARRIER, pause_ms=300,
                          timeout=20, name="caller")
        ringing = anna.wait_event("ringing")
        # the called user's personal book wins over the global one, matched on the number's digits
        assert ringing["caller"] == "0311112222" and ringing["caller_name"] == "Hansi Privat", ringing
        call_id = ringing["call_id"]
        assert anna.call("call.answer", call_id=call_id)["phone_status"] == 200
        assert anna.wait_event("answered", call_id=call_id)["answered_by"] == "anna"
        anna.call("call.hold", call_id=call_id)
        held = anna.wait_event("held", call_id=call_id)
        assert held["by"] == "anna", held
        assert not anna.events_of("resumed")
        anna.call("call.resume", call_id=call_id)
        anna.wait_event("resumed", call_id=call_id)
        ended = anna.wait_event("ended", call_id=call_id)
        res, ph = caller.finish(), phone.finish()
        assert res.successful == 1 and ph.successful == 1, res.describe() + ph.describe() + rig.server.log()
        assert ended["reason"] == "caller hung up"
        # the phone showed the book's name (the caller sent none)
        assert _from_display(ph, "INVITE") == "Hansi Privat", ph.messages[:2000]
        anna.call("addressbook.delete", id=mine["id"])
        # with only the global entry, the global name is used
        phone = rig.phone("anna", "call_uas.xml", pause_ms=200)
        res = rig.call("call_uac.xml", "0441110000", port=CARRIER, pause_ms=200)
        ph = phone.finish()
        assert res.successful == 1 and ph.successful == 1, res.describe() + ph.describe()
        assert anna.wait_event("ringing", caller_name="Hans Muster")["caller"] == "0311112222"
        assert _from_display(ph, "INVITE") == "Hans Muster"
    rig.assert_idle()


def test_blind_transfer_over_cti(rig):
    with CtiClient(rig.cti_url, timeout=10) as anna, CtiClient(rig.cti_url, timeout=10) as carl:
        anna.login("anna", "anna-cti")
        carl.login("carl", "carl-cti")
        pa = rig.phone("anna", "call_uas.xml", timeout=20)  # answers; hpbx's BYE ends it
        pc = rig.phone("carl", "call_uas.xml", timeout=20)
        caller = rig.sipp(str(SCEN / "caller_transferred.xml"), service="0441110000", port=CARRIER,
                          pause_ms=400, timeout=20, name="caller")
        answered = anna.wait_event("answered")
        call_id = answered["call_id"]
        with pytest.raises(CtiError) as err:
            anna.call("call.transfer", call_id=call_id, destination="no such number")
        assert err.value.error["data"]["field"] == "destination"
        with pytest.raises(CtiError) as err:
            carl.call("call.transfer", call_id=call_id, destination="203")  # not carl's call
        assert err.value.code == -32001
        got = anna.call("call.transfer", call_id=call_id, destination="203")
        assert got["transferring"] is True
        done = anna.wait_event("transfer_progress", status=200)
        assert done["final"] is True
        moved = anna.wait_event("transferred", call_id=call_id)
        assert (moved["from"], moved["to"]) == ("anna", "carl"), moved
        assert carl.wait_event("answered", call_id=call_id)["answered_by"] == "carl"
        ended = carl.wait_event("ended", call_id=call_id)
        res, ra, rc = caller.finish(), pa.finish(), pc.finish()
        assert res.successful == ra.successful == rc.successful == 1, \
            res.describe() + ra.describe() + rc.describe() + rig.server.log()
        assert ended["reason"] == "caller hung up"
        assert not anna.events_of("ended", call_id=call_id)  # anna left the call by the transfer
    rig.assert_idle()


def test_recording_needs_the_permission(rig):
    with CtiClient(rig.cti_url, timeout=10) as anna:
        anna.login("anna", "anna-cti")
        before = len(rig.admin("recording.list", tenant="acme"))
        phone = rig.phone("anna", "call_uas.xml", timeout=20)
        caller = rig.sipp("call_uac.xml", service="0441110000", port=CARRIER, pause_ms=2500, timeout=20,
                          name="caller")
        call_id = anna.wait_event("answered")["call_id"]
        with pytest.raises(CtiError) as err:  # FEATURES 17: may_record off -> refused, no file
            anna.call("call.record", call_id=call_id, on=True)
        assert err.value.error["data"]["field"] == "user" and "may_record" in err.value.error["message"]
        rig.admin("user.update", username="anna", flags={"may_record": True})
        try:
            assert anna.call("call.record", call_id=call_id, on=True)["recording"] is True
            assert anna.call("call.record", call_id=call_id, on=False)["recording"] is False
            anna.wait_event("ended", call_id=call_id)
            assert caller.finish().successful == 1 and phone.finish().successful == 1
        finally:
            rig.admin("user.update", username="anna", flags={"may_record": False})
        import time
        deadline = time.monotonic() + 5
        while len(rig.admin("recording.list", tenant="acme")) == before and time.monotonic() < deadline:
            time.sleep(0.1)
        kept = rig.admin("recording.list", tenant="acme")
        assert len(kept) == before + 1 and kept[-1]["user"] == "anna", kept
    rig.assert_idle()


def test_hangup_of_an_answered_call(rig):
    with CtiClient(rig.cti_url, timeout=10) as anna:
        anna.login("anna", "anna-cti")
        phone = rig.phone("anna", "call_uas.xml", timeout=20)  # hpbx's BYE ends it
        caller = rig.sipp("call_uac_service.xml", service="0441110000", port=CARRIER, timeout=20, name="caller",
                          extra=["-key", "rtp_port", str(reserved_port())])  # no RTP flows here
        call_id = anna.wait_event("answered")["call_id"]
        assert [c["call_id"] for c in anna.call("call.list")] == [call_id]
        assert anna.call("call.hangup", call_id=call_id)["hung_up"] is True
        ended = anna.wait_event("ended", call_id=call_id)
        assert "anna" in ended["reason"], ended
        assert caller.finish().successful == 1 and phone.finish().successful == 1
    rig.assert_idle()
