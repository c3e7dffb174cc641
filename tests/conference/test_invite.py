"""conference.invite end to end (issue 12, FEATURES.md §10.3): hpbx calls a registered SIPp phone
and an external number at a SIPp carrier behind the trunk (media_channel.dial) and joins them to a
room without a PIN; the dial-in caller and both invited parties hear the two others and not
themselves; the invitation is listed as "calling" while it rings; a busy target drops out; bad
targets are JSON-RPC errors naming the field."""
from __future__ import annotations

import time

import pytest

from harness import have_sipp, reserved_port
from callrig import CallRig, number, trunk, user
from phone import Phone, level

pytestmark = [pytest.mark.sipp,
              pytest.mark.skipif(not have_sipp(), reason="sipp is not installed (sip-tester)")]

GW, CARRIER = reserved_port(), reserved_port()
ROOM = "044666300"
TENANT = ('[tenant]\nname = "inv"\ntrunk = "gw"\n' + trunk("gw", GW) + trunk("carrier", CARRIER)
          + user("kurt", internal="401") + user("lena", internal="402")
          + number(ROOM, usage="conference", pin="4711"))
TONES = {"dialin": 300.0, "kurt": 1150.0, "outside": 1800.0}


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    r = CallRig(tmp_path_factory.mktemp("invite"), TENANT)
    r.start()
    yield r
    r.stop()


def wait_for(pred, timeout=8.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"{what} not reached in {timeout}s")


def relay_port(rig, call_id: str) -> int:
    return wait_for(lambda: next((c["media"]["a"]["port"] for c in rig.admin("call.list")
                                  if c["call_id"] == call_id and c.get("media")), 0), 5, "media of the call")


def members(rig):
    try:
        return rig.admin("conference.participants", tenant="inv", room=ROOM)
    except Exception:
        return []


def test_invited_phone_and_external_number_join_without_pin_and_are_mixed(rig):
    # the dial-in participant, with the PIN
    phones = {name: Phone(0x5000 + i) for i, name in enumerate(TONES)}
    before = {c["call_id"] for c in rig.admin("call.list")}
    dialin = rig.sipp("call_uac_service.xml", service=ROOM, port=CARRIER, timeout=40,
                      extra=["-key", "rtp_port", str(phones["dialin"].port)], name="dialin")
    cid = wait_for(lambda: next((c["call_id"] for c in rig.admin("call.list")
                                 if c["call_id"] not in before and c.get("state") == "answered"), ""),
                   8, "dial-in answered")
    phones["dialin"].start(relay_port(rig, cid))
    phones["dialin"].dial("4711#")
    wait_for(lambda: len(members(rig)) == 1, 8, "dial-in in the room")

    # hpbx calls the user's phone and an external number through the trunk
    kurt = rig.phone("kurt", "call_uas_extmedia.xml", pause_ms=800, timeout=40,
                     extra=["-key", "rtp_port", str(phones["kurt"].port)])
    carrier = rig.sipp("call_uas_extmedia.xml", port=GW, pause_ms=300, timeout=40,
                       extra=["-key", "rtp_port", str(phones["outside"].port)], name="gw")
    time.sleep(0.3)
    inv_kurt = rig.admin("conference.invite", tenant="inv", room=ROOM, target="user:kurt")
    assert inv_kurt["state"] == "calling"
    ringing = [p for p in members(rig) if p["call_id"] == inv_kurt["call_id"]]
    assert ringing and ringing[0]["state"] == "calling" and ringing[0]["invited"], members(rig)
    inv_out = rig.admin("conference.invite", tenant="inv", room=ROOM, target="0447001122")
    for name, inv in (("kurt", inv_kurt), ("outside", inv_out)):
        phones[name].start(relay_port(rig, inv["call_id"]))
    wait_for(lambda: sum(p["state"] == "connected" for p in members(rig)) == 3, 10, "three in the room")
    assert {p["call_id"]: p["invited"] for p in members(rig)} == {
        cid: False, inv_kurt["call_id"]: True, inv_out["call_id"]: True}, members(rig)

    for name, ph in phones.items():
        ph.freq = TONES[name]
    time.sleep(1.8)
    t = time.monotonic()
    for name, ph in phones.items():
        x = ph.heard(t - 1.0, t)
        assert len(x) >= 6000, (name, len(x))
        others = [TONES[o] for o in TONES if o != name]
        for f in others:
            assert level(x, f) > 20 * level(x, TONES[name]), (name, f, [level(x, g) for g in TONES.values()])

    out = rig.admin("conference.end", tenant="inv", room=ROOM)
    assert out["ended"] == 3, out
    results = [dialin.finish(), kurt.finish(), carrier.finish()]
    for ph in phones.values():
        ph.stop()
    for res in results:
        assert res.returncode == 0, res.describe()
    invite = results[2].messages[results[2].messages.index("INVITE sip:"):]
    assert invite.startswith("INVITE sip:0447001122@"), invite[:300]
    assert f"From: <sip:{ROOM}@" in invite, invite[:600]
    cdrs = {c["call_id"]: c for c in rig.cdrs(count=3, wait=3)}
    assert cdrs[inv_out["call_id"]]["service"] == "conference-invite", cdrs
    assert cdrs[inv_out["call_id"]]["service_result"] == "conference ended", cdrs
    assert cdrs[inv_kurt["call_id"]]["answer"] and cdrs[inv_kurt["call_id"]]["called"] == "user:kurt", cdrs
    rig.assert_idle()


def test_busy_target_drops_out_and_bad_targets_name_the_field(rig):
    from hpbx.admin.client import RpcError
    busy = rig.sipp("call_uas_busy.xml", port=GW, timeout=20, name="gw-busy")
    time.sleep(0.3)
    inv = rig.admin("conference.invite", tenant="inv", room=ROOM, target="0447001133")
    res = busy.finish()
    assert res.returncode == 0, res.describe()
    wait_for(lambda: inv["call_id"] not in {c["call_id"] for c in rig.admin("call.list")}, 5, "invite ended")
    assert members(rig) == []
    cdr = wait_for(lambda: [c for c in rig.cdrs(wait=0.2) if c["call_id"] == inv["call_id"]], 3, "CDR")[0]
    assert cdr["end_reason"].startswith("486"), cdr
    for target, why in (("user:lena", "no registered device"), ("user:nobody", "no user"),
                        ("12ab", "not a number"), ("0901234567", "Premium")):
        with pytest.raises(RpcError) as err:
            rig.admin("conference.invite", tenant="inv", room=ROOM, target=target)
        assert "target" in str(err.value) and why in str(err.value), err.value
    with pytest.raises(RpcError) as err:
        rig.admin("conference.invite", tenant="inv", room="044000000", target="0447001122")
    assert "044000000" in str(err.value)
    rig.assert_idle()
