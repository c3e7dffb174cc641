"""INVITE with Replaces (RFC 3891): BLF pickup of a ringing phone (the dialog identifiers come
from the BLF NOTIFY, RFC 4235) and call move of an answered call to the same user's other
device (FEATURES 13.1, 13.2). baresip phones are caller and rung/desk phone; the picking or
taking-over device is a plain UDP SIP client in the test that sends a tone the caller must hear."""
from __future__ import annotations

import time
import uuid

import pytest

from clients import Baresip
from harness import header, reserved_pair
from callrig import CallRig, user
from sipdevice import Device
from test_default_config import wait_heard

NAMES = {"pia": "521", "pat": "522", "pam": "523", "pol": "524"}
TENANT = '[tenant]\nname = "repl"\n' + "".join(user(n, i) for n, i in NAMES.items())


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    r = CallRig(tmp_path_factory.mktemp("repl"), TENANT)
    r.start()
    yield r
    r.stop()


def phone(rig, tmp_path, name, answermode="auto", tone=440):
    p = Baresip(tmp_path / name, name, f"{name}-pw", rig.target, sip_port=reserved_pair(),
                answermode=answermode, tone=tone)
    p.wait_event("REGISTER_OK")
    return p


def test_blf_pickup_with_replaces(rig, tmp_path):
    """pol watches pia (BLF) and may pick up her calls: pam calls pia, pia's phone rings, pol
    sends INVITE with Replaces naming the early dialog from the NOTIFY; pol is connected to
    pam (pam hears pol's tone), pia's phone stops ringing. pat, not allowed, gets 403."""
    rig.admin("user.update", username="pol", supervise=["pia"], pickup=["pia"])
    rig.admin("user.update", username="pat", supervise=["pia"])
    pol, pat = Device(rig, "pol"), Device(rig, "pat")
    try:
        with phone(rig, tmp_path, "pia", answermode="manual") as pia, phone(rig, tmp_path, "pam") as pam:
            pol.subscribe(NAMES["pia"])
            pat.subscribe(NAMES["pia"])
            pam.command("dial", f"sip:{NAMES['pia']}@{rig.target}")
            pia.wait_event("CALL_INCOMING")
            early = pol.dialog_state("early")
            refused = pat.invite_replacing(NAMES["pia"], pat.dialog_state("early"))
            assert refused.startswith("SIP/2.0 403"), refused
            bogus = dict(early, **{"call-id": "nope"})
            assert pol.invite_replacing(NAMES["pia"], bogus).startswith("SIP/2.0 481")
            ok = pol.invite_replacing(NAMES["pia"], early, ack_after=1.8)
            assert ok.startswith("SIP/2.0 200"), ok
            # hpbx re-sends its 200 until the picker's ACK (RFC 3261 13.3.1.4), then stops
            assert pol.ok_before_ack >= 1 and pol.ok_after_ack == 0, (pol.ok_before_ack, pol.ok_after_ack)
            pam.wait_event("CALL_ESTABLISHED")
            pia.wait_event("CALL_CLOSED")
            pol.send_tone(900)
            assert abs(wait_heard(pam, 900) - 900) <= 20
            pam.command("hangup")
            assert pol.recv(5, want=lambda m: m.startswith("BYE ")), "no BYE for the picker"
    finally:
        pol.close()
        pat.close()
        rig.admin("user.update", username="pol", supervise=[], pickup=[])
        rig.admin("user.update", username="pat", supervise=[])
    rig.wait_idle()


def test_call_move_to_the_same_users_other_device(rig, tmp_path):
    """pia answers pam's call on her desk phone; her second device (a SIP client registered to
    nothing, authenticating as pia) sends INVITE with Replaces naming that confirmed dialog:
    it takes the call over (pam hears its tone), the desk phone gets BYE; pat trying the same
    is refused with 403."""
    rig.admin("user.update", username="pia", supervise=["pia"])
    rig.admin("user.update", username="pat", supervise=["pia"])
    mobile, pat = Device(rig, "pia"), Device(rig, "pat")
    try:
        with phone(rig, tmp_path, "pia") as desk, phone(rig, tmp_path, "pam") as pam:
            mobile.subscribe(NAMES["pia"])
            pat.subscribe(NAMES["pia"])
            pam.command("dial", f"sip:{NAMES['pia']}@{rig.target}")
            pam.wait_event("CALL_ESTABLISHED")
            desk.wait_event("CALL_ESTABLISHED")
            confirmed = mobile.dialog_state("confirmed")
            refused = pat.invite_replacing(NAMES["pia"], pat.dialog_state("confirmed"))
            assert refused.startswith("SIP/2.0 403"), refused
            ok = mobile.invite_replacing(NAMES["pia"], confirmed)
            assert ok.startswith("SIP/2.0 200"), ok
            desk.wait_event("CALL_CLOSED")
            mobile.send_tone(900)
            assert abs(wait_heard(pam, 900) - 900) <= 20
            assert not [e for e in pam.drain() if e.get("type") == "CALL_CLOSED"]
            pam.command("hangup")
            assert mobile.recv(5, want=lambda m: m.startswith("BYE ")), "no BYE for the new device"
    finally:
        mobile.close()
        pat.close()
        rig.admin("user.update", username="pia", supervise=[])
        rig.admin("user.update", username="pat", supervise=[])
    rig.wait_idle()


def test_blf_subscription_refresh_expiry_and_end(rig):
    """Expires below [sip] min_expires (10 s in tests) is 423; a refresh inside the dialog
    answers 200 and re-NOTIFYs (active); left alone the subscription expires with NOTIFY
    terminated;reason=timeout; Expires 0 ends one at once."""
    rig.admin("user.update", username="pol", supervise=["pia"])
    pol = Device(rig, "pol")
    try:
        too_brief = pol.subscribe(NAMES["pia"], expires=5, expect="SIP/2.0 423")
        assert header(too_brief, "Min-Expires") == ["10"]
        pol.subscribe(NAMES["pia"], expires=10)
        first = len(pol.notifies)
        pol.recv(0.5)
        assert len(pol.notifies) >= first and "active" in header(pol.notifies[-1], "Subscription-State")[0]
        time.sleep(5)
        assert pol.refresh(10).startswith("SIP/2.0 200")
        pol.recv(0.5)
        assert header(pol.notifies[-1], "Subscription-State")[0].startswith("active;expires=")
        t0 = time.monotonic()
        pol.recv(15, want=lambda m: m.startswith("NOTIFY ") and "terminated" in m)
        ended = time.monotonic() - t0
        assert header(pol.notifies[-1], "Subscription-State") == ["terminated;reason=timeout"], pol.notifies[-1]
        assert 8 <= ended <= 12, ended  # the refresh's 10 s, not the first subscription's
        assert pol.refresh(10).startswith("SIP/2.0 481")  # gone
        pol.call_id = uuid.uuid4().hex
        pol.subscribe(NAMES["pia"], expires=60)
        assert pol.refresh(0).startswith("SIP/2.0 200")
        pol.recv(2, want=lambda m: m.startswith("NOTIFY ") and "terminated" in m)
        assert header(pol.notifies[-1], "Subscription-State") == ["terminated;reason=timeout"]
        stats = rig.admin("stats.get", layer="calls")
        assert stats.get("calls", stats)["blf_subscriptions"] == 0
    finally:
        pol.close()
        rig.admin("user.update", username="pol", supervise=[])
