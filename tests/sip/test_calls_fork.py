"""Call distribution end to end (FEATURES 1.2, 3.2-3.4, 3.6, 3.9, 4.2, 4.8.8): parallel ring with
one answer and "completed elsewhere" CANCELs, rows one after another, all-busy skip, caller
CANCEL, an external target through the trunk with Diversion, internal and outgoing calls of a
registered user, and a user linked to no number who is never rung from outside.

Each test uses its own users (a phone's binding outlives its SIPp process).
"""
from __future__ import annotations

import re
import time
from datetime import datetime

import pytest

from harness import free_port, have_sipp, header, reserved_port, wait_bound
from callrig import CallRig, number, trunk, user

pytestmark = [pytest.mark.sipp,
              pytest.mark.skipif(not have_sipp(), reason="sipp is not installed (sip-tester)")]

CARRIER = reserved_port()
GATEWAY = reserved_port()
CARRIER2 = reserved_port()
REASON = 'SIP;cause=200;text="Call completed elsewhere"'
USERS = {  # username: (internal number, displayed number, flags)
    "p1": ("211", "0442220001", {}), "p2": ("212", "", {}),
    "s1": ("221", "", {}), "s2": ("222", "", {}),
    "b1": ("231", "", {}), "b2": ("232", "", {}), "b3": ("233", "", {}),
    "c1": ("241", "", {}), "c2": ("242", "", {}),
    "i1": ("251", "0442220001", {}), "i2": ("252", "", {}),
    "o1": ("261", "0442220005", {}),
    "lone": ("299", "", {}), "l1": ("271", "", {}),
    "busy1": ("281", "", {"busy_on_active_call": True}), "busy2": ("282", "", {}),
    "busy3": ("283", "", {}),
    "o2": ("262", "0442220005", {}),
    "br1": ("291", "", {"busy_while_ringing": True}),
    "dead": ("292", "", {}),
    "w1": ("293", "", {}), "w2": ("294", "", {}),
    "k1": ("301", "", {}), "k2": ("302", "", {}),
    "n1": ("311", "", {}), "n2": ("312", "", {}),
    "x1": ("321", "", {}), "x2": ("322", "", {}),
}

TENANT = (
    '[tenant]\nname = "fork"\ntrunk = "gateway"\n'
    + trunk("carrier", CARRIER) + trunk("carrier2", CARRIER2)
    + trunk("gateway", GATEWAY, username="trunkuser", password="trunk-secret")
    + "".join(user(u, n, d, flags) for u, (n, d, flags) in USERS.items())
    + number("0442220001", (30, ["user:p1", "user:p2"]))
    + number("0442220002", (1, ["user:s1"]), (10, ["user:s2"]))
    + number("0442220003", (30, ["user:b1", "user:b2"]), (30, ["user:b3"]))
    + number("0442220004", (30, ["user:c1", "user:c2"]))
    + number("0442220005", (30, ["external:0791234567"]))
    + number("0442220006", (30, ["user:l1"]))
    + number("0442220007", (30, ["user:busy1"]))
    + number("0442220008", (30, ["user:br1"]))
    + number("0442220009", (30, ["user:dead"]))
    + number("0442220010", (30, ["user:w1", "user:w2"]))
    + number("0442220011", (1, ["user:k1"]), (10, ["user:k1", "user:k2"]))
    + number("0442220012", (1, ["user:n1"]), (10, ["link:0442220013"]))
    + number("0442220013", (10, ["user:n2"]))
    + number("0442220014", (3, ["user:x1", "user:x2"]))
    + '\n[[numbers]]\nnumber = "0442220015"\n'  # ten empty slots: nothing matches
)


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    r = CallRig(tmp_path_factory.mktemp("fork"), TENANT)
    r.start()
    yield r
    r.stop()


def stamps(result, first_line: str) -> list[float]:
    """Arrival times (epoch s) of the messages SIPp received that start with ``first_line``."""
    out = []
    for block in re.split(r"(?m)^-{5,} ", result.messages):
        m = re.match(r"(\d{4}-\d\d-\d\d\s+\d\d:\d\d:\d\d\.\d+)", block)
        if m and "received" in block[:200] and f"\n\n{first_line}" in block.replace("\r", "")[:400]:
            out.append(datetime.strptime(m.group(1).replace("\t", " "), "%Y-%m-%d %H:%M:%S.%f").timestamp())
    return out


def cdr_of(rig, result) -> dict:
    call_id = header(result.sent("INVITE")[0], "Call-ID")[0]
    deadline = time.monotonic() + 3
    while True:
        found = [c for c in rig.cdrs() if c["call_id"] == call_id]
        if found or time.monotonic() > deadline:
            assert len(found) == 1, rig.cdrs()
            return found[0]
        time.sleep(0.1)


def test_parallel_ring_first_answer_wins_other_gets_completed_elsewhere(rig):
    p1 = rig.phone("p1", "call_uas_ring.xml")
    p2 = rig.phone("p2", "call_uas.xml", pause_ms=800)
    res = rig.call("call_uac.xml", "0442220001", port=CARRIER, pause_ms=200)
    r1, r2 = p1.finish(), p2.finish()
    assert res.successful == 1, res.describe() + rig.server.log()
    assert r2.successful == 1, r2.describe()
    assert r1.successful == 1, r1.describe()
    cancel = r1.received("CANCEL")[0]
    assert header(cancel, "Reason") == [REASON]
    # the CANCEL went out right after the answer (within 1 s)
    assert stamps(r1, "CANCEL")[0] - stamps(res, "SIP/2.0 200")[0] < 1.0
    # both phones saw the same caller, each its own Call-ID, none the caller's
    caller_cid = header(res.sent("INVITE")[0], "Call-ID")[0]
    cids = {header(r.received("INVITE")[0], "Call-ID")[0] for r in (r1, r2)}
    assert len(cids) == 2 and caller_cid not in cids
    c = cdr_of(rig, res)
    assert c["answered_by"] == "p2" and c["targets_tried"] == ["user:p1", "user:p2"]
    rig.assert_idle()


def test_rows_ring_one_after_another(rig):
    s1 = rig.phone("s1", "call_uas_ring.xml")
    s2 = rig.phone("s2", "call_uas.xml", pause_ms=300)
    t0 = time.time()
    res = rig.call("call_uac.xml", "0442220002", port=CARRIER, pause_ms=200)
    r1, r2 = s1.finish(), s2.finish()
    assert res.successful == 1 and r1.successful == 1 and r2.successful == 1, (
        res.describe() + r1.describe() + r2.describe())
    inv1, inv2 = stamps(r1, "INVITE")[0], stamps(r2, "INVITE")[0]
    cancel1 = stamps(r1, "CANCEL")[0]
    # row 1 lasts 1 s: s1 is cancelled (no Reason: the row ran out) and then s2 rings
    assert 0.8 <= inv2 - inv1 <= 1.8, (inv1, inv2)
    assert cancel1 <= inv2 + 0.2 and inv1 >= t0 - 1
    assert header(r1.received("CANCEL")[0], "Reason") == []
    assert cdr_of(rig, res)["answered_by"] == "s2"
    rig.assert_idle()


def test_all_busy_row_is_skipped_at_once(rig):
    b1 = rig.phone("b1", "call_uas_busy.xml")
    b2 = rig.phone("b2", "call_uas_busy.xml")
    b3 = rig.phone("b3", "call_uas.xml", pause_ms=100)
    res = rig.call("call_uac.xml", "0442220003", port=CARRIER, pause_ms=100)
    rs = [p.finish() for p in (b1, b2, b3)]
    assert res.successful == 1, res.describe() + rig.server.log()
    assert all(r.successful == 1 for r in rs), [r.describe() for r in rs]
    # row 1 (30 s) ends as soon as both phones said 486: b3 rings within a second
    busy_last = max(stamps(rs[0], "ACK")[0], stamps(rs[1], "ACK")[0])
    assert stamps(rs[2], "INVITE")[0] - busy_last < 1.0
    assert cdr_of(rig, res)["targets_tried"] == ["user:b1", "user:b2", "user:b3"]
    rig.assert_idle()


def test_caller_cancel_cancels_every_branch(rig):
    c1 = rig.phone("c1", "call_uas_ring.xml")
    c2 = rig.phone("c2", "call_uas_ring.xml")
    res = rig.call("call_uac_cancel.xml", "0442220004", port=CARRIER, pause_ms=600)
    r1, r2 = c1.finish(), c2.finish()
    assert res.successful == 1, res.describe() + rig.server.log()
    assert r1.successful == 1 and r2.successful == 1, r1.describe() + r2.describe()
    assert res.received("SIP/2.0 487")
    for r in (r1, r2):
        assert header(r.received("CANCEL")[0], "Reason") == []
    c = cdr_of(rig, res)
    assert c["end_reason"] == "caller cancelled" and c["answered_by"] == "" and not c["answer"]
    rig.assert_idle()


def test_external_target_through_trunk_carries_diversion(rig):
    gw = rig.sipp("call_uas.xml", port=GATEWAY, pause_ms=100, name="gateway")
    assert wait_bound(GATEWAY)
    res = rig.call("call_uac.xml", "0442220005", port=CARRIER, pause_ms=100)
    g = gw.finish()
    assert res.successful == 1 and g.successful == 1, res.describe() + g.describe() + rig.server.log()
    invite = g.received("INVITE")[0]
    assert invite.startswith("INVITE sip:0791234567@127.0.0.1"), invite
    assert header(invite, "Diversion") and "sip:0442220005@" in header(invite, "Diversion")[0]
    assert re.search(r"(?m)^From:.*sip:0311112222@", invite)
    assert cdr_of(rig, res)["answered_by"] == "0791234567"
    rig.assert_idle()


def test_internal_call_by_internal_number_presents_the_callers_number(rig):
    i2 = rig.phone("i2", "call_uas.xml", pause_ms=100)
    res = rig.call("call_uac_auth.xml", "252", pause_ms=100, extra=["-au", "i1", "-ap", "i1-pw"])
    r2 = i2.finish()
    assert res.successful == 1 and r2.successful == 1, res.describe() + r2.describe() + rig.server.log()
    assert res.received("SIP/2.0 407")
    invite = r2.received("INVITE")[0]
    assert re.search(r"(?m)^From:.*sip:0442220001@", invite), invite
    c = cdr_of(rig, res)
    assert (c["caller"], c["called"], c["answered_by"]) == ("251", "252", "i2")
    rig.assert_idle()


def test_outgoing_call_of_a_user_leaves_through_the_trunk_with_displayed_number(rig):
    gw = rig.sipp("call_uas.xml", port=GATEWAY, pause_ms=100, name="gateway")
    assert wait_bound(GATEWAY)
    res = rig.call("call_uac_auth.xml", "0799998877", pause_ms=100, extra=["-au", "o1", "-ap", "o1-pw"])
    g = gw.finish()
    assert res.successful == 1 and g.successful == 1, res.describe() + g.describe() + rig.server.log()
    invite = g.received("INVITE")[0]
    assert invite.startswith("INVITE sip:0799998877@127.0.0.1")
    assert re.search(r"(?m)^From:\s*<sip:0442220005@", invite), invite
    assert "sip:0442220005@" in header(invite, "P-Asserted-Identity")[0]
    rig.assert_idle()


def test_wrong_password_on_invite_is_403(rig):
    res = rig.call("call_uac_auth.xml", "252", extra=["-au", "i1", "-ap", "nope"], timeout=5)
    assert res.received("SIP/2.0 403"), res.describe()


def test_unlinked_user_is_never_rung_from_outside(rig):
    lone = rig.phone("lone", "call_uas.xml", timeout=4)
    l1 = rig.phone("l1", "call_uas.xml", pause_ms=100)
    res = rig.call("call_uac.xml", "0442220006", port=CARRIER, pause_ms=100)
    fail = rig.call("call_uac_fail.xml", "299", port=CARRIER)  # lone's internal number, from outside
    assert res.successful == 1 and l1.finish().successful == 1, res.describe()
    assert fail.received("SIP/2.0 404"), fail.describe()
    assert lone.finish().received("INVITE") == []
    rig.assert_idle()


def test_busy_on_active_call_gives_486_without_ringing(rig):
    busy1 = rig.phone("busy1", "call_uas.xml", pause_ms=100, timeout=10)
    first = rig.sipp("call_uac.xml", service="0442220007", port=CARRIER, pause_ms=2000, name="first")
    time.sleep(1.0)
    second = rig.call("call_uac_fail.xml", "0442220007", port=CARRIER2)
    first_res, phone = first.finish(), busy1.finish()
    assert first_res.successful == 1 and phone.successful == 1, first_res.describe() + phone.describe()
    assert second.received("SIP/2.0 486"), second.describe() + rig.server.log()
    assert len(phone.received("INVITE")) == 1
    rig.assert_idle()


def test_trunk_challenge_is_answered_with_digest(rig):
    import hashlib
    gw = rig.sipp("call_uas_challenge.xml", port=GATEWAY, name="gateway")
    assert wait_bound(GATEWAY)
    res = rig.call("call_uac_auth.xml", "0791112233", pause_ms=100, extra=["-au", "o2", "-ap", "o2-pw"])
    g = gw.finish()
    assert res.successful == 1 and g.successful == 1, res.describe() + g.describe() + rig.server.log()
    first, second = g.received("INVITE")
    assert header(first, "Call-ID") == header(second, "Call-ID")
    assert int(header(second, "CSeq")[0].split()[0]) == int(header(first, "CSeq")[0].split()[0]) + 1
    auth = dict(re.findall(r'(\w+)="?([^",]+)"?', header(second, "Proxy-Authorization")[0]))
    assert (auth["username"], auth["realm"], auth["nonce"], auth["qop"]) == ("trunkuser", "gw", "abc123", "auth")
    ha1 = hashlib.md5(b"trunkuser:gw:trunk-secret").hexdigest()
    ha2 = hashlib.md5(f"INVITE:{auth['uri']}".encode()).hexdigest()
    expected = hashlib.md5(f"{ha1}:abc123:{auth['nc']}:{auth['cnonce']}:auth:{ha2}".encode()).hexdigest()
    assert auth["response"] == expected
    rig.assert_idle()


def test_busy_while_ringing_gives_486_to_the_second_call(rig):
    br1 = rig.phone("br1", "call_uas_ring.xml", timeout=10)
    first = rig.sipp("call_uac_cancel.xml", service="0442220008", port=CARRIER, pause_ms=1500, name="first")
    time.sleep(0.7)
    second = rig.call("call_uac_fail.xml", "0442220008", port=CARRIER2)
    first_res, phone = first.finish(), br1.finish()
    assert first_res.successful == 1 and phone.successful == 1, first_res.describe() + phone.describe()
    assert second.received("SIP/2.0 486"), second.describe() + rig.server.log()
    assert len(phone.received("INVITE")) == 1
    rig.assert_idle()


def test_device_that_never_answers_is_ended_by_timeout(rig):
    rig.register("dead", "dead-pw", free_port(both=False))  # nobody listens there afterwards
    t0 = time.monotonic()
    res = rig.call("call_uac_fail.xml", "0442220009", port=CARRIER, timeout=15)
    took = time.monotonic() - t0
    final = [m for m in res.message_blocks() if m[0] == "received" and re.match(r"SIP/2.0 [4-6]", m[1])]
    assert final and re.match(r"SIP/2.0 (408|480)", final[0][1]), res.describe() + rig.server.log()
    assert 5 < took < 12, took  # Timer B: 64 x T1 (100 ms in tests)
    assert cdr_of(rig, res)["targets_tried"] == ["user:dead"]
    rig.assert_idle()


def test_late_second_answer_is_acked_and_hung_up(rig):
    w1 = rig.phone("w1", "call_uas.xml")  # rings and answers at once: wins
    w2 = rig.phone("w2", "call_uas_no180.xml", pause_ms=60)  # no 1xx, so no CANCEL: answers late
    res = rig.call("call_uac.xml", "0442220010", port=CARRIER, pause_ms=600)
    r1, r2 = w1.finish(), w2.finish()
    assert res.successful == 1 and r1.successful == 1 and r2.successful == 1, (
        res.describe() + r1.describe() + r2.describe() + rig.server.log())
    # the late 200 was ACKed and hung up at once, long before the caller's BYE ends the winner
    assert r2.received("ACK") and r2.received("BYE")
    assert stamps(r2, "BYE")[0] < stamps(r1, "BYE")[0] - 0.3
    assert cdr_of(rig, res)["answered_by"] == "w1"
    rig.assert_idle()


def test_target_in_consecutive_rows_keeps_ringing(rig):
    k1 = rig.phone("k1", "call_uas_ring.xml")
    k2 = rig.phone("k2", "call_uas.xml", pause_ms=400)
    res = rig.call("call_uac.xml", "0442220011", port=CARRIER, pause_ms=100)
    r1, r2 = k1.finish(), k2.finish()
    assert res.successful == 1 and r1.successful == 1 and r2.successful == 1, (
        res.describe() + r1.describe() + r2.describe() + rig.server.log())
    # k1 got one INVITE and rang through both rows until k2 answered (FEATURES 3.5)
    assert len(r1.received("INVITE")) == 1
    assert 0.8 <= stamps(r2, "INVITE")[0] - stamps(r1, "INVITE")[0] <= 1.8
    assert header(r1.received("CANCEL")[0], "Reason") == [REASON]
    rig.assert_idle()


def test_link_hands_the_call_to_another_numbers_plan(rig):
    n1 = rig.phone("n1", "call_uas_ring.xml")
    n2 = rig.phone("n2", "call_uas.xml", pause_ms=100)
    res = rig.call("call_uac.xml", "0442220012", port=CARRIER, pause_ms=100)
    r1, r2 = n1.finish(), n2.finish()
    assert res.successful == 1 and r1.successful == 1 and r2.successful == 1, (
        res.describe() + r1.describe() + r2.describe() + rig.server.log())
    assert stamps(r2, "INVITE")[0] - stamps(r1, "INVITE")[0] >= 0.8
    c = cdr_of(rig, res)
    assert (c["called"], c["answered_by"], c["targets_tried"]) == ("0442220012", "n2", ["user:n1", "user:n2"])
    rig.assert_idle()


def test_exhausted_rows_give_the_best_final_response(rig):
    x1 = rig.phone("x1", "call_uas_busy.xml")
    x2 = rig.phone("x2", "call_uas_ring.xml", timeout=15)  # rings until its row ends
    res = rig.call("call_uac_fail.xml", "0442220014", port=CARRIER, timeout=20)
    r1, r2 = x1.finish(), x2.finish()
    assert r1.successful == 1 and r2.successful == 1, r1.describe() + r2.describe()
    # 486 from x1 beats the 487 of x2's cancelled branch (RFC 3261 16.7)
    assert res.received("SIP/2.0 486"), res.describe() + rig.server.log()
    assert cdr_of(rig, res)["end_reason"].startswith("486")
    rig.assert_idle()


def test_no_matching_slot_is_480(rig):
    res = rig.call("call_uac_fail.xml", "0442220015", port=CARRIER, timeout=5)
    assert res.received("SIP/2.0 480"), res.describe()
    assert cdr_of(rig, res)["end_reason"].startswith("480")
