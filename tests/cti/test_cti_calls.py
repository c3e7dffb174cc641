"""CTI call events and presence with real peers: SIPp calls a user's SIPp phone through a trunk
while real WebSocket CTI clients are logged in; events are timed against SIPp's own trace."""
from __future__ import annotations

import pytest

from harness import have_sipp, reserved_port
from cticlient import CtiClient, CtiError
from ctirig import CtiRig, cti_user, message_times, number, trunk

pytestmark = [pytest.mark.sipp,
              pytest.mark.skipif(not have_sipp(), reason="sipp is not installed (sip-tester)")]

CARRIER = reserved_port()

TENANT = (
    '[tenant]\nname = "acme"\n'
    + trunk("carrier", CARRIER)
    + cti_user("anna", "201", displayed="0441110000", groups=("sales",), cti_groups=("Front",))
    + cti_user("carl", "203", groups=("sales",), cti_groups=("Back",))
    + cti_user("beat", "202", groups=("support",))
    + cti_user("hide", "204", groups=("sales",), flags=("cti_access", "hide_user"))
    + number("0441110000", (30, ["user:anna"]))
    + number("0441110009", (30, ["user:anna", "user:carl"]))
)


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    r = CtiRig(tmp_path_factory.mktemp("cticalls"), TENANT)
    r.start()
    yield r
    r.stop()


def _latency(ev: dict, sip_time: float) -> float:
    return ev["_at"] - sip_time


def test_ringing_answered_ended_within_500ms_of_the_sip_message(rig):
    with CtiClient(rig.cti_url) as anna, CtiClient(rig.cti_url) as carl, CtiClient(rig.cti_url) as beat:
        anna.login("anna", "anna-cti")
        carl.login("carl", "carl-cti")
        beat.login("beat", "beat-cti")
        phone = rig.phone("anna", "call_uas.xml", pause_ms=600)
        res = rig.call("call_uac.xml", "0441110000", port=CARRIER, pause_ms=400)
        ph = phone.finish()
        assert res.successful == 1 and ph.successful == 1, res.describe() + ph.describe() + rig.server.log()
        ringing = anna.wait_event("ringing")
        answered = anna.wait_event("answered")
        ended = anna.wait_event("ended")
        assert ringing["call_id"] == answered["call_id"] == ended["call_id"]
        assert (ringing["caller"], ringing["dialled"], ringing["slot"], ringing["direction"]) == \
            ("0311112222", "0441110000", 1, "in")
        assert ringing["ring_class"] == "direct", ringing  # anna's own displayed number was dialled
        assert answered["answered_by"] == "anna"
        assert 0.3 < ended["duration"] < 3, ended
        assert ended["reason"] == "caller hung up"
        # timed against the SIP message that made each event: the phone's 180 and 200, the BYE
        t180, = message_times(ph, "SIP/2.0 180")
        t200 = message_times(ph, "SIP/2.0 200")[0]
        tbye, = message_times(res, "BYE")
        for ev, t in ((ringing, t180), (answered, t200), (ended, tbye)):
            assert -0.005 < _latency(ev, t) < 0.5, (ev["type"], _latency(ev, t))
        # presence: carl (same presence group) saw anna ring and talk; beat saw nothing of anna
        states = [e["call_state"] for e in carl.events_of("presence", username="anna")]
        assert "ringing" in states and "busy" in states and states[-1] == "idle", states
        assert beat.events_of("presence", username="anna") == []
        assert carl.events_of("ringing") == [] and beat.events_of("ringing") == []
        assert not anna.events_of("missed")
        rig.assert_idle()


def test_parallel_ringing_answered_elsewhere_is_missed(rig):
    with CtiClient(rig.cti_url) as anna, CtiClient(rig.cti_url) as carl:
        anna.login("anna", "anna-cti")
        carl.login("carl", "carl-cti")
        pa = rig.phone("anna", "call_uas_ring.xml", timeout=8)
        pc = rig.phone("carl", "call_uas.xml", pause_ms=500)
        res = rig.call("call_uac.xml", "0441110009", port=CARRIER, pause_ms=300)
        pc.finish()
        pa.kill()
        assert res.successful == 1, res.describe() + rig.server.log()
        ring_a = anna.wait_event("ringing")
        assert ring_a["ring_class"] == "group", ring_a  # not anna's own number
        missed = anna.wait_event("missed")
        assert missed["call_id"] == ring_a["call_id"]
        assert carl.wait_event("answered")["answered_by"] == "carl"
        carl.wait_event("ended")
        assert not anna.events_of("answered")
        rig.assert_idle()


def test_colleague_list_by_presence_and_cti_groups(rig):
    with CtiClient(rig.cti_url) as anna, CtiClient(rig.cti_url) as beat:
        anna.login("anna", "anna-cti")
        beat.login("beat", "beat-cti")
        sections = anna.call("colleague.list")
        names = {g["cti_group"]: [u["username"] for u in g["users"]] for g in sections}
        assert names == {"Back": ["carl"]}, sections  # hidden and other-group users never appear
        assert beat.call("colleague.list") == []
        # a call id of another user's call, or nonsense, is "not found" with the field named
        with pytest.raises(CtiError) as err:
            anna.call("call.hangup", call_id="no-such-call")
        assert err.value.error["data"]["field"] == "call_id"


def test_parallel_sessions_flag(rig):
    with CtiClient(rig.cti_url) as first, CtiClient(rig.cti_url) as second:
        first.login("beat", "beat-cti")
        second.login("beat", "beat-cti")
        assert first.wait_event("session_ended")["reason"] == "logged in elsewhere"
        assert first.wait_closed() == 4002
        assert second.call("whoami")["sessions"] == 1
    rig.admin("user.update", username="carl", flags={"parallel_softphone_sessions": True})
    with CtiClient(rig.cti_url) as first, CtiClient(rig.cti_url) as second:
        first.login("carl", "carl-cti")
        assert second.login("carl", "carl-cti")["sessions"] == 2
        assert first.call("whoami")["sessions"] == 2
        status = rig.admin("user.get", username="carl")
        assert status["cti_online"] is True and status["cti_sessions"] == 2
    rig.admin("user.update", username="carl", flags={"parallel_softphone_sessions": False})
