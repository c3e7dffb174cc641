"""Media anchoring end to end (issue 5 "Calls"): RTP in both directions through the relay with
the call's stats listed, early media (183) anchored, hold by re-INVITE passed to the other leg,
a call without RTP ended by the media timeout, an administrator's hang-up — and after every
call the relay's port pool is full again.
"""
from __future__ import annotations

import re
import threading
import time

import pytest

from harness import have_sipp, header, reserved_port
from callrig import CallRig, number, trunk, user

pytestmark = [pytest.mark.sipp,
              pytest.mark.skipif(not have_sipp(), reason="sipp is not installed (sip-tester)")]

CARRIER = reserved_port()
USERS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7")

TENANT = ('[tenant]\nname = "media"\n' + trunk("carrier", CARRIER) + "".join(map(user, USERS))
          + "".join(number(f"04433300{i}", (30, [f"user:{u}"])) for i, u in enumerate(USERS, 1)))


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    r = CallRig(tmp_path_factory.mktemp("media"), TENANT, media_timeout=2)
    r.start()
    yield r
    r.stop()


def sdp_port(message: str) -> int:
    return int(re.search(r"(?m)^m=audio (\d+)", message).group(1))


def assert_pool_full(rig):
    idle = rig.assert_idle()
    assert idle["media_pairs_free"] == (rig.rtp_ports[1] - rig.rtp_ports[0] + 1) // 2


def poll_calls(rig, until, timeout=4.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        calls = rig.admin("call.list")
        if until(calls):
            return calls
        time.sleep(0.2)
    return rig.admin("call.list")


def test_rtp_both_directions_through_the_relay_and_stats_listed(rig):
    phone = rig.phone("m1", "call_uas.xml", pause_ms=100, extra=["-rtp_echo"])
    # the phone's media port is the -mp given by the rig; -rtp_echo answers to the sender
    caller = rig.sipp("call_uac.xml", service="044333001", port=CARRIER, pause_ms=3000, name="rtp")
    seen = poll_calls(rig, lambda calls: calls and all(
        (c.get("media") or {}).get(leg, {}).get("packets", 0) >= 20 for c in calls for leg in "ab"))
    res, ph = caller.finish(), phone.finish()
    assert res.successful == 1 and ph.successful == 1, res.describe() + ph.describe() + rig.server.log()
    assert len(seen) == 1, seen
    media = seen[0]["media"]
    # leg a: packets from the caller; leg b: the phone's echo of them, relayed back to the caller
    assert media["a"]["packets"] >= 20 and media["b"]["packets"] >= 20, media
    assert media["a"]["port"] == sdp_port(res.received("SIP/2.0 200")[0])
    assert media["b"]["port"] == sdp_port(ph.received("INVITE")[0])
    assert media["a"]["latched"] and media["b"]["latched"], media
    assert_pool_full(rig)


def test_early_media_183_is_anchored(rig):
    phone = rig.phone("m2", "call_uas_early.xml", pause_ms=300)
    res = rig.call("call_uac.xml", "044333002", port=CARRIER, pause_ms=100)
    ph = phone.finish()
    assert res.successful == 1 and ph.successful == 1, res.describe() + ph.describe() + rig.server.log()
    early = res.received("SIP/2.0 183")[0]
    lo, hi = rig.rtp_ports
    assert lo <= sdp_port(early) <= hi and "a=candidate" not in early and "192.168.77.7" not in early
    assert sdp_port(early) == sdp_port(res.received("SIP/2.0 200")[0])
    assert_pool_full(rig)


def test_hold_reinvite_passes_to_the_other_leg(rig):
    phone = rig.phone("m3", "call_uas_reinvite.xml", pause_ms=100)
    res = rig.call("call_uac_hold.xml", "044333003", port=CARRIER, pause_ms=500)
    ph = phone.finish()
    assert res.successful == 1 and ph.successful == 1, res.describe() + ph.describe() + rig.server.log()
    invites = ph.received("INVITE")
    assert len(invites) == 2
    reinvite = invites[1]
    assert "a=sendonly" in reinvite and sdp_port(reinvite) == sdp_port(invites[0])
    assert header(reinvite, "Call-ID") == header(invites[0], "Call-ID")
    assert header(reinvite, "CSeq")[0].endswith("INVITE") and header(reinvite, "CSeq") != header(invites[0], "CSeq")
    oks = res.received("SIP/2.0 200")
    hold_ok = [m for m in oks if "CSeq: 2 INVITE" in m][0]
    assert "a=recvonly" in hold_ok and sdp_port(hold_ok) == sdp_port(oks[0])
    assert_pool_full(rig)


def test_call_without_rtp_ends_on_media_timeout(rig):
    phone = rig.phone("m4", "call_uas.xml", pause_ms=100, timeout=15)
    t0 = time.monotonic()
    res = rig.call("call_uac_silent.xml", "044333004", port=CARRIER, timeout=15)
    ph = phone.finish()
    took = time.monotonic() - t0
    assert res.successful == 1 and ph.successful == 1, res.describe() + ph.describe() + rig.server.log()
    assert res.received("BYE") and ph.received("BYE")
    assert 1.5 < took < 8, took
    call_id = header(res.sent("INVITE")[0], "Call-ID")[0]
    cdr = [c for c in rig.cdrs(count=1) if c["call_id"] == call_id]
    assert cdr and cdr[0]["end_reason"] == "media timeout", rig.cdrs()
    assert_pool_full(rig)


def test_admin_hangup_ends_both_legs(rig):
    phone = rig.phone("m5", "call_uas.xml", pause_ms=100, timeout=15)
    box = {}
    caller = threading.Thread(target=lambda: box.setdefault(
        "res", rig.call("call_uac_silent.xml", "044333005", port=CARRIER, timeout=15)))
    caller.start()
    calls = poll_calls(rig, lambda calls: any(c["state"] == "answered" for c in calls), timeout=3)
    assert calls and calls[0]["answered_by"] == "m5", calls
    assert rig.admin("call.hangup", call_id=calls[0]["call_id"]) == {"call_id": calls[0]["call_id"],
                                                                       "hungup": True}
    caller.join(20)
    res, ph = box["res"], phone.finish()
    assert res.successful == 1 and ph.successful == 1, res.describe() + ph.describe()
    cdr = [c for c in rig.cdrs(count=1) if c["call_id"] == calls[0]["call_id"]]
    assert cdr and cdr[0]["end_reason"] == "hung up by the administrator"
    assert_pool_full(rig)


def test_late_offer_is_anchored_through_the_ack(rig):
    phone = rig.phone("m6", "call_uas.xml", pause_ms=100)
    res = rig.call("call_uac_lateoffer.xml", "044333006", port=CARRIER, pause_ms=300)
    ph = phone.finish()
    assert res.successful == 1 and ph.successful == 1, res.describe() + ph.describe() + rig.server.log()
    invite = ph.received("INVITE")[0]
    assert "m=audio" not in invite
    lo, hi = rig.rtp_ports
    offer = res.received("SIP/2.0 200")[0]
    ack = ph.received("ACK")[0]
    # the phone's offer reaches the caller on the relay, the caller's answer reaches the phone
    # in the ACK, on the relay's other port
    assert lo <= sdp_port(offer) <= hi and lo <= sdp_port(ack) <= hi and sdp_port(offer) != sdp_port(ack)
    assert header(ack, "Content-Type") == ["application/sdp"]
    assert_pool_full(rig)


def test_update_and_info_pass_to_the_other_leg(rig):
    phone = rig.phone("m7", "call_uas_update.xml", pause_ms=100)
    res = rig.call("call_uac_update.xml", "044333007", port=CARRIER, pause_ms=300)
    ph = phone.finish()
    assert res.successful == 1 and ph.successful == 1, res.describe() + ph.describe() + rig.server.log()
    update = ph.received("UPDATE")[0]
    invite = ph.received("INVITE")[0]
    assert "a=sendonly" in update and sdp_port(update) == sdp_port(invite)
    assert header(update, "Call-ID") == header(invite, "Call-ID")
    info = ph.received("INFO")[0]
    assert header(info, "Content-Type") == ["application/dtmf-relay"] and "Signal=5" in info
    ok = [m for m in res.received("SIP/2.0 200") if "UPDATE" in header(m, "CSeq")[0]][0]
    assert "a=recvonly" in ok and sdp_port(ok) == sdp_port(res.received("SIP/2.0 200")[0])
    assert_pool_full(rig)
