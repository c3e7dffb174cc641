"""Call features end to end with real phones (issue 18): DND (star codes and admin), busy
handling ("signal busy if more than N calls", call waiting otherwise), forwarding rules
(unconditional, busy, no answer after N s, unavailable; to a user or an external number with
Diversion), set by star code or admin. baresip phones make and take the calls; SIPp is the trunk
where what the network receives is asserted."""
from __future__ import annotations

import re
from pathlib import Path
import time

import pytest

from clients import Baresip
from harness import HpbxServer, have_sipp, header, reserved_pair, reserved_port, wait_bound, write_config
from callrig import SCEN, CallRig, trunk, user
from test_default_config import wait_heard

GATEWAY = reserved_port()
NAMES = {  # username: internal number
    "ann": "501", "ben": "502", "cid": "503", "dan": "504", "eve": "505", "fay": "506",
    "gus": "507", "hal": "508", "ivy": "509", "jon": "510", "kim": "511", "lou": "512",
}
TENANT = ('[tenant]\nname = "feat"\ntrunk = "gateway"\ndefault_number = "0445550000"\n'
          + trunk("gateway", GATEWAY)
          + "".join(user(n, i) for n, i in NAMES.items())
          + '\n[[numbers]]\nnumber = "0445550000"\n')


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    r = CallRig(tmp_path_factory.mktemp("feat"), TENANT)
    r.start()
    yield r
    r.stop()


def phone(rig, tmp_path, name, answermode="auto", tone=440):
    p = Baresip(tmp_path / name, name, f"{name}-pw", rig.target, sip_port=reserved_pair(),
                answermode=answermode, tone=tone)
    p.wait_event("REGISTER_OK")
    return p


def dial(p, number, rig):
    p.command("dial", f"sip:{number}@{rig.target}")


def closed_reason(p, timeout=10.0) -> str:
    return p.wait_event("CALL_CLOSED", timeout=timeout).get("param", "")


def hangup(p) -> None:
    p.command("hangup")
    closed_reason(p)


def never(p, kind, wait=1.0) -> bool:
    time.sleep(wait)
    return not [e for e in p.drain() if e.get("type") == kind and not e.get("_used")]


def user_get(rig, name):
    return rig.admin("user.get", username=name)


# ---------------------------------------------------------------- DND
def test_dnd_by_star_code_and_admin(rig, tmp_path):
    with phone(rig, tmp_path, "ann", answermode="manual") as ann, phone(rig, tmp_path, "ben") as ben:
        dial(ann, "*78", rig)
        assert "603 Do Not Disturb On" in closed_reason(ann)
        assert user_get(rig, "ann")["flags"]["dnd"] is True
        dial(ben, NAMES["ann"], rig)
        assert "486" in closed_reason(ben)
        assert never(ann, "CALL_INCOMING")
        dial(ann, "*79", rig)
        assert "603 Do Not Disturb Off" in closed_reason(ann)
        assert user_get(rig, "ann")["flags"]["dnd"] is False
        dial(ben, NAMES["ann"], rig)
        ann.wait_event("CALL_INCOMING")
        hangup(ben)
        closed_reason(ann)
        rig.admin("user.update", username="ann", flags={"dnd": True})  # the admin way
        dial(ben, NAMES["ann"], rig)
        assert "486" in closed_reason(ben)
        rig.admin("user.update", username="ann", flags={"dnd": False})


# ---------------------------------------------------------------- busy handling
def test_busy_beyond_max_calls_and_call_waiting_otherwise(rig, tmp_path):
    rig.admin("user.update", username="cid", max_calls=1)
    with phone(rig, tmp_path, "cid", answermode="manual") as cid, \
            phone(rig, tmp_path, "dan") as dan, phone(rig, tmp_path, "eve") as eve:
        dial(dan, NAMES["cid"], rig)
        cid.wait_event("CALL_INCOMING")
        cid.command("accept")
        dan.wait_event("CALL_ESTABLISHED")
        dial(eve, NAMES["cid"], rig)  # one call already: busy
        assert "486" in closed_reason(eve)
        assert never(cid, "CALL_INCOMING")
        rig.admin("user.update", username="cid", max_calls=0)  # call waiting
        dial(eve, NAMES["cid"], rig)
        cid.wait_event("CALL_INCOMING")
        hangup(eve)
        hangup(dan)
    rig.wait_idle()


# ---------------------------------------------------------------- forwarding
def test_unconditional_forward_by_star_code_to_a_user(rig, tmp_path):
    with phone(rig, tmp_path, "fay", answermode="manual") as fay, phone(rig, tmp_path, "gus") as gus, \
            phone(rig, tmp_path, "hal", tone=1000) as hal:
        dial(fay, f"*72{NAMES['hal']}", rig)
        assert f"603 Forward unconditional To {NAMES['hal']}" in closed_reason(fay)
        assert user_get(rig, "fay")["forward"]["unconditional"] == NAMES["hal"]
        dial(gus, NAMES["fay"], rig)
        hal.wait_event("CALL_ESTABLISHED")
        gus.wait_event("CALL_ESTABLISHED")
        assert never(fay, "CALL_INCOMING", 0.5)
        hangup(gus)
        closed_reason(hal)
        dial(fay, "*73", rig)
        assert "603 Forward unconditional Off" in closed_reason(fay)
        dial(gus, NAMES["fay"], rig)
        fay.wait_event("CALL_INCOMING")
        hangup(gus)
    rig.wait_idle()


def test_no_answer_forward_after_n_seconds(rig, tmp_path):
    rig.admin("user.update", username="ivy", forward={"no_answer": NAMES["jon"], "no_answer_after": 2})
    with phone(rig, tmp_path, "ivy", answermode="manual") as ivy, phone(rig, tmp_path, "kim") as kim, \
            phone(rig, tmp_path, "jon") as jon:
        dial(kim, NAMES["ivy"], rig)
        t0 = time.monotonic()
        ivy.wait_event("CALL_INCOMING")
        jon.wait_event("CALL_ESTABLISHED", timeout=10)
        took = time.monotonic() - t0
        assert 1.5 <= took <= 6, took
        assert "CALL_CLOSED" in [e["type"] for e in ivy.drain()] or closed_reason(ivy)
        hangup(kim)
    rig.admin("user.update", username="ivy", forward={"no_answer": ""})
    rig.wait_idle()


def test_unavailable_forward_to_a_user(rig, tmp_path):
    rig.admin("user.update", username="lou", forward={"unavailable": NAMES["jon"]})  # lou: no phone
    with phone(rig, tmp_path, "kim") as kim, phone(rig, tmp_path, "jon") as jon:
        dial(kim, NAMES["lou"], rig)
        jon.wait_event("CALL_ESTABLISHED")
        hangup(kim)
    rig.admin("user.update", username="lou", forward={"unavailable": ""})
    rig.wait_idle()


@pytest.mark.skipif(not have_sipp(), reason="sipp is not installed (sip-tester)")
def test_busy_forward_to_an_external_number_carries_diversion(rig, tmp_path):
    """ann is on DND (busy) and forwards on busy to 0791112233: the trunk (SIPp) gets the call
    with Diversion naming the tenant's public number (never an internal one), reason user-busy,
    and the caller's network identity."""
    rig.admin("user.update", username="ann", flags={"dnd": True}, forward={"busy": "0791112233"})
    gw = rig.sipp("call_uas.xml", port=GATEWAY, pause_ms=500, name="gateway")
    assert wait_bound(GATEWAY)
    try:
        with phone(rig, tmp_path, "ben") as ben:
            dial(ben, NAMES["ann"], rig)
            ben.wait_event("CALL_ESTABLISHED")
            hangup(ben)
        g = gw.finish()
        assert g.successful == 1, g.describe() + rig.server.log()
        invite = g.received("INVITE")[0]
        assert invite.startswith("INVITE sip:0791112233@"), invite
        assert header(invite, "Diversion") == [
            "<sip:0445550000@127.0.0.1>;reason=user-busy;counter=1"], invite
        assert re.match(r"<sip:0445550000@", header(invite, "From")[0]), invite
        assert "501" not in "".join(header(invite, "Diversion") + header(invite, "From"))
    finally:
        rig.admin("user.update", username="ann", flags={"dnd": False}, forward={"busy": ""})
    rig.wait_idle()


# ---------------------------------------------------------------- blind transfer
def test_blind_transfer_by_the_callee_connects_caller_and_target(rig, tmp_path):
    """kim calls gus; gus transfers (REFER) to hal: kim and hal hear each other, gus is
    released (hpbx's final NOTIFY said 200, then its BYE), the CDR ends with hal as the
    answering party after gus."""
    with phone(rig, tmp_path, "kim", tone=660) as kim, phone(rig, tmp_path, "gus", tone=440) as gus, \
            phone(rig, tmp_path, "hal", tone=1000) as hal:
        dial(kim, NAMES["gus"], rig)
        kim.wait_event("CALL_ESTABLISHED")
        gus.wait_event("CALL_ESTABLISHED")
        assert abs(wait_heard(kim, 440) - 440) <= 20
        gus.command("transfer", f"sip:{NAMES['hal']}@{rig.target}")
        established = hal.wait_event("CALL_ESTABLISHED")
        assert f"sip:{NAMES['kim']}@" in established.get("peeruri", ""), established  # the transferee
        closed_reason(gus)
        assert abs(wait_heard(kim, 1000) - 1000) <= 20, kim.received_wavs()
        assert abs(wait_heard(hal, 660) - 660) <= 20, hal.received_wavs()
        assert not [e for e in kim.drain() if e.get("type") == "CALL_CLOSED"]
        hangup(kim)
        closed_reason(hal)
    rig.wait_idle()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        cdrs = [c for c in rig.cdrs() if c["called"] == NAMES["gus"] and c["answered_by"] == "hal"]
        if cdrs:
            break
        time.sleep(0.1)
    assert cdrs and cdrs[-1]["targets_tried"] == ["user:gus", "user:hal"], rig.cdrs()


@pytest.mark.skipif(not have_sipp(), reason="sipp is not installed (sip-tester)")
def test_blind_transfer_to_an_external_number(rig, tmp_path):
    """kim calls gus; gus transfers kim (REFER) to 0791112299 through the trunk (SIPp): the
    network gets the transferee's network identity (the tenant's default number) and no
    internal number anywhere (From, P-Asserted-Identity, Diversion); kim then talks to the
    trunk party until it hangs up."""
    gw = rig.sipp("call_uas.xml", port=GATEWAY, pause_ms=300, name="gateway")
    assert wait_bound(GATEWAY)
    with phone(rig, tmp_path, "kim", tone=660) as kim, phone(rig, tmp_path, "gus", tone=440) as gus:
        dial(kim, NAMES["gus"], rig)
        kim.wait_event("CALL_ESTABLISHED")
        gus.wait_event("CALL_ESTABLISHED")
        gus.command("transfer", "sip:0791112299@" + rig.target)
        closed_reason(gus)
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            calls = rig.admin("call.list")
            if calls and calls[0]["answered_by"] == "0791112299":
                break
            time.sleep(0.1)
        assert calls and calls[0]["answered_by"] == "0791112299", calls
        assert not [e for e in kim.drain() if e.get("type") == "CALL_CLOSED"]
        hangup(kim)
    g = gw.finish()
    assert g.successful == 1, g.describe() + rig.server.log()
    invite = g.received("INVITE")[0]
    assert invite.startswith("INVITE sip:0791112299@"), invite
    assert re.match(r"<sip:0445550000@", header(invite, "From")[0]), invite
    shown = "".join(header(invite, "From") + header(invite, "P-Asserted-Identity") + header(invite, "Diversion"))
    assert not re.search(r"sip:5\d\d@", shown), invite  # no internal number towards the network
    rig.wait_idle()


@pytest.mark.skipif(not have_sipp(), reason="sipp is not installed (sip-tester)")
def test_transfer_progress_is_notified_with_sipfrag(rig, tmp_path):
    """SIPp as the transferor asserts what it gets: 202, NOTIFY Event: refer with sipfrag
    "SIP/2.0 100 Trying" (active), then "SIP/2.0 200 OK" (terminated) once the target answered,
    then hpbx's BYE; the caller (baresip) stays in the call, now with the target."""
    scen = Path(__file__).parent / "scenarios" / "uas_refer.xml"
    with phone(rig, tmp_path, "kim", tone=660) as kim, phone(rig, tmp_path, "hal", tone=1000) as hal:
        sipp = rig.phone("eve", str(scen), extra=["-key", "refer_to", NAMES["hal"]])
        dial(kim, NAMES["eve"], rig)
        kim.wait_event("CALL_ESTABLISHED")
        hal.wait_event("CALL_ESTABLISHED", timeout=15)
        res = sipp.finish()
        assert res.successful == 1, res.describe() + rig.server.log()
        final = res.received("NOTIFY")[-1]
        assert header(final, "Content-Type") == ["message/sipfrag;version=2.0"], final
        assert abs(wait_heard(kim, 1000) - 1000) <= 20
        hangup(kim)
        closed_reason(hal)
    rig.wait_idle()


def test_bad_refers_are_refused(rig, tmp_path):
    """An unparseable Refer-To is 400, a target that is no number of the tenant 404, and the
    call stays as it was."""
    scen = Path(__file__).parent / "scenarios" / "uas_refer_bad.xml"
    with phone(rig, tmp_path, "kim") as kim:
        sipp = rig.phone("eve", str(scen))
        dial(kim, NAMES["eve"], rig)
        kim.wait_event("CALL_ESTABLISHED")
        res = sipp.finish()
        assert res.successful == 1, res.describe() + rig.server.log()
        assert [m.split("\n")[0].strip() for m in res.received("SIP/2.0 4")] == [
            "SIP/2.0 400 Refer-To is not a SIP URI", "SIP/2.0 404 999999 is not an internal number"]
        closed_reason(kim)  # the SIPp callee hung up at the end: the call was never broken
    rig.wait_idle()


# ---------------------------------------------------------------- pickup
def test_directed_and_group_pickup_by_star_code(rig, tmp_path):
    """fay rings (manual answer) for kim's call; jon, allowed to pick up fay's calls, dials
    **506: kim and jon are connected and hear each other, fay's phone stops ringing. Group pickup
    *8 does the same for the longest-ringing call; gus without permission gets 403."""
    rig.admin("user.update", username="jon", pickup=["fay"])
    with phone(rig, tmp_path, "fay", answermode="manual") as fay, \
            phone(rig, tmp_path, "kim", tone=660) as kim, phone(rig, tmp_path, "jon", tone=1000) as jon, \
            phone(rig, tmp_path, "gus") as gus:
        for code in (f"**{NAMES['fay']}", "*8"):
            dial(kim, NAMES["fay"], rig)
            fay.wait_event("CALL_INCOMING")
            dial(gus, code, rig)
            assert "403" in closed_reason(gus)
            dial(jon, code, rig)
            jon.wait_event("CALL_ESTABLISHED")
            kim.wait_event("CALL_ESTABLISHED")
            closed_reason(fay)
            assert abs(wait_heard(kim, 1000) - 1000) <= 20, code
            assert abs(wait_heard(jon, 660) - 660) <= 20, code
            hangup(kim)
            closed_reason(jon)
            rig.wait_idle()
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                cdrs = [c for c in rig.cdrs() if c["called"] == NAMES["fay"] and c["answered_by"] == "jon"]
                if len(cdrs) >= (1 if code.startswith("**") else 2):
                    break
                time.sleep(0.1)
            assert cdrs and cdrs[-1]["targets_tried"][-1] == "pickup:jon", rig.cdrs()
        dial(jon, "*8", rig)  # nothing ringing
        assert "480" in closed_reason(jon)
    rig.admin("user.update", username="jon", pickup=[])


# ---------------------------------------------------------------- BLF
def notify_times(result) -> list[float]:
    """Arrival times (epoch s) of the NOTIFYs SIPp received, from its message trace."""
    out = []
    for block in re.split(r"(?m)^-{5,} ", result.messages):
        m = re.match(r"(\d{4}-\d\d-\d\d\s+\d\d:\d\d:\d\d\.\d+)", block)
        if m and "received" in block[:200] and "\n\nNOTIFY " in block.replace("\r", "")[:400]:
            out.append(time.mktime(time.strptime(m.group(1)[:19], "%Y-%m-%d %H:%M:%S"))
                       + float("0." + m.group(1).split(".")[1]))
    return out


@pytest.mark.skipif(not have_sipp(), reason="sipp is not installed (sip-tester)")
def test_blf_watcher_sees_early_confirmed_terminated_within_2s(rig, tmp_path):
    """dan supervises cid: dan's SIPp watcher SUBSCRIBEs Event: dialog to cid (501-style internal
    number) and gets NOTIFYs with early (cid's phone rings), confirmed (answered), terminated
    (hung up), each within 2 s of the change the phones reported."""
    rig.admin("user.update", username="dan", supervise=["cid"])
    scen = Path(__file__).parent / "scenarios" / "blf_watch.xml"
    run = rig.sipp(str(scen), service=NAMES["cid"], name="watcher", timeout=30,
                   extra=["-au", "dan", "-ap", "dan-pw", "-inf", str(_inf(tmp_path, "dan"))])
    try:
        with phone(rig, tmp_path, "cid", answermode="manual") as cid, phone(rig, tmp_path, "kim") as kim:
            deadline = time.monotonic() + 5
            while rig_subscriptions(rig) < 1 and time.monotonic() < deadline:
                time.sleep(0.1)
            dial(kim, NAMES["cid"], rig)
            cid.wait_event("CALL_INCOMING")
            t_ring = time.time()
            time.sleep(0.5)
            cid.command("accept")
            cid.wait_event("CALL_ESTABLISHED")
            t_answer = time.time()
            time.sleep(0.5)
            hangup(kim)
            closed_reason(cid)
            t_end = time.time()
        res = run.finish()
    finally:
        rig.admin("user.update", username="dan", supervise=[])
    assert res.successful == 1, res.describe() + rig.server.log()
    times = notify_times(res)
    assert len(times) == 5, times
    for t_event, t_notify in ((t_ring, times[1]), (t_answer, times[2]), (t_end, times[3])):
        assert t_notify - t_event < 2.0, (t_event, t_notify)


def _inf(tmp_path, user):
    path = tmp_path / f"{user}.csv"
    path.write_text(f"SEQUENTIAL\n{user};\n")
    return path


def rig_subscriptions(rig) -> int:
    stats = rig.admin("stats.get", layer="calls")
    return stats.get("calls", stats).get("blf_subscriptions", 0)


def test_blf_refuses_non_supervisors_and_other_event_packages(rig):
    from harness import RawPhone, digest_authorization
    target = f"sip:{NAMES['cid']}@{rig.target}"
    with RawPhone("127.0.0.1", rig.server.port) as p:
        def subscribe(event, auth=None):
            extra = [f"Event: {event}", "Expires: 600", f"Contact: <sip:eve@127.0.0.1:{p.port}>"]
            if auth:
                extra.append(f"Proxy-Authorization: {auth}")
            p.request("SUBSCRIBE", target, extra, from_user="eve")
            return p.recv_until(lambda m: m.startswith("SIP/2.0") and " 100 " not in m[:12])
        bad = subscribe("presence.winfo")
        assert bad.startswith("SIP/2.0 489"), bad
        assert header(bad, "Allow-Events") == ["dialog, presence, message-summary"]
        challenge = subscribe("dialog")
        assert challenge.startswith("SIP/2.0 407"), challenge
        auth = digest_authorization(header(challenge, "Proxy-Authenticate")[0], "eve", "eve-pw",
                                    "SUBSCRIBE", target)
        refused = subscribe("dialog", auth)
        assert refused.startswith(f"SIP/2.0 403 Not a supervisor of {NAMES['cid']}"), refused
    assert rig_subscriptions(rig) == 0
