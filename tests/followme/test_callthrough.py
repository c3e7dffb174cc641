"""Callthrough end to end (issue 12, FEATURES.md §12): the authorised mobile calls the access
number from a SIPp carrier, types the destination as RFC 4733 digits (or it was set just before
over the admin socket), and a SIPp carrier behind the trunk receives the call presenting the
user's displayed number; the two RTP sockets of the test hear each other through the relay. A
foreign caller gets 403; the user's toll-fraud limits apply and the call counts against them."""
from __future__ import annotations

import re
import time

import pytest

from harness import have_sipp, reserved_port
from callrig import CallRig, number, trunk, user
from fmrig import SCEN, Caller, cdr_of, refused, wait_for
from phone import Phone, level

pytestmark = [pytest.mark.sipp,
              pytest.mark.skipif(not have_sipp(), reason="sipp is not installed (sip-tester)")]

GW = reserved_port()
CARRIERS = [reserved_port() for _ in range(2)]
ACCESS, DISPLAYED, OTHER = "044888100", "044888000", "044888001"
MOBILE, MOBILE2 = "0791112233", "0792223344"

TENANT = ('[tenant]\nname = "ct"\ntrunk = "gw"\n' + trunk("gw", GW)
          + "".join(trunk(f"carrier{i}", p) for i, p in enumerate(CARRIERS))
          + number(DISPLAYED) + number(OTHER)
          + f'\n[[numbers]]\nnumber = "{ACCESS}"\nusage = "callthrough"\n'
          + user("anna", internal="301", displayed=DISPLAYED)
          + f'[[users.callthrough]]\nauthorised = "{MOBILE}"\naccess = "{ACCESS}"\n'
          + f'[[users.callthrough]]\nauthorised = "+41792223344"\naccess = "{ACCESS}"\npresented = "{OTHER}"\n')


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    r = CallRig(tmp_path_factory.mktemp("callthrough"), TENANT)
    r.start()
    yield r
    r.stop()


def header(messages: str, name: str) -> list[str]:
    invite = messages[messages.index("INVITE sip:"):]
    return re.findall(rf"(?mi)^{name}:\s*(.*)$", invite.split("\n\n")[0].replace("\r", ""))


def carrier(rig, far: Phone, hold_ms: int = 3000):
    proc = rig.sipp(str(SCEN / "trunk_uas.xml"), port=GW, pause_ms=hold_ms, timeout=30,
                    extra=["-key", "rtp_port", str(far.port)], name="gw")
    time.sleep(0.3)
    return proc


def test_dtmf_destination_bridged_through_the_trunk_with_the_users_number(rig):
    """FEATURES §12 acceptance: 0791112233 calls A and dials 0449998877#: an outbound call to
    0449998877 presenting U's displayed number is bridged; both sides hear each other."""
    far = Phone(0x3101)
    gw = carrier(rig, far, hold_ms=4000)
    c = Caller(rig, ACCESS, MOBILE, CARRIERS[0], 0x3001)
    c.phone.freq = 700.0
    c.phone.dial("0449998877#")
    # the carrier answers at once; its media goes to the relay port facing it (leg b)
    port = wait_for(lambda: next((x["media"]["b"]["port"] for x in rig.admin("call.list")
                                  if x["call_id"] == c.call_id and x.get("answered_by") == "0449998877"
                                  and x.get("media")), 0),
                    10, "the callthrough call answered")
    far.freq = 1300.0
    far.start(port)
    t0 = time.monotonic()
    time.sleep(2.0)
    near_heard, far_heard = c.phone.heard(t0 + 0.5), far.heard(t0 + 0.5)
    got = c.finish()
    seen = gw.finish()
    far.stop()
    assert got.returncode == 0, got.describe()
    assert seen.returncode == 0, seen.describe()
    assert "INVITE sip:0449998877@" in seen.messages
    assert header(seen.messages, "From")[0].startswith(f"<sip:{DISPLAYED}@"), header(seen.messages, "From")
    # audio crossed the relay both ways: each side hears the other's tone, not only silence
    assert len(near_heard) > 8000 and len(far_heard) > 8000, (len(near_heard), len(far_heard))
    assert level(near_heard, 1300) > 10 * level(near_heard, 700), (level(near_heard, 1300), level(near_heard, 700))
    assert level(far_heard, 700) > 10 * level(far_heard, 1300), (level(far_heard, 700), level(far_heard, 1300))
    cdr = cdr_of(rig, c.call_id)
    assert cdr["service"] == "callthrough" and cdr["answered_by"] == "0449998877", cdr
    assert cdr["service_result"] == f"via {ACCESS} for anna to 0449998877", cdr
    assert cdr["caller"] == MOBILE and cdr["answer"], cdr
    rig.assert_idle()


def test_prepared_destination_and_the_rules_presented_number(rig):
    """The app's way: callthrough.prepare just before; no digits; the second rule (authorised
    written +41...) presents its own number."""
    rig.admin("callthrough.prepare", username="anna", destination="0445556677")
    far = Phone(0x3102)
    gw = carrier(rig, far, hold_ms=1000)
    c = Caller(rig, ACCESS, MOBILE2, CARRIERS[1], 0x3002)
    got = c.finish()
    seen = gw.finish()
    far.peer.close()
    assert got.returncode == 0 and seen.returncode == 0, seen.describe()
    assert "INVITE sip:0445556677@" in seen.messages
    assert header(seen.messages, "From")[0].startswith(f"<sip:{OTHER}@"), header(seen.messages, "From")


def test_foreign_caller_rejected(rig):
    res = refused(rig, ACCESS, "0799999999", CARRIERS[0])
    assert res.returncode == 0, res.describe()
    assert "403 Caller Not Authorised" in res.messages
    rows = wait_for(lambda: [r for r in rig.cdrs(wait=0.2) if r.get("caller") == "0799999999"], 3, "CDR")
    assert rows and rows[-1]["end_reason"].startswith("403"), rows


def test_garbage_and_premium_never_reach_the_trunk(rig):
    """Digits that are no external number (internal, star, too short) and a premium number
    (toll-fraud destination policy) are refused with a prompt; nothing is tried on the trunk."""
    before = rig.admin("toll.get", tenant="ct")["attempts_last_hour"]
    c = Caller(rig, ACCESS, MOBILE, CARRIERS[0], 0x3003)
    c.phone.dial("301#")
    c.phone.dial("*97#")
    c.phone.dial("0901234567#")
    got = c.finish()
    assert got.returncode == 0, got.describe()
    cdr = cdr_of(rig, c.call_id)
    assert cdr["service_result"] == "callthrough: no valid number", cdr
    assert rig.admin("toll.get", tenant="ct")["attempts_last_hour"] == before


def test_digits_without_hash_time_out(rig):
    c = Caller(rig, ACCESS, MOBILE, CARRIERS[0], 0x3004)
    t0 = time.monotonic()
    c.phone.dial("04499")
    assert c.finish().returncode == 0
    assert time.monotonic() - t0 < 20
    assert cdr_of(rig, c.call_id)["service_result"] == "callthrough: number not ended with #"


def test_users_toll_limit_counts_the_callthrough_call(rig):
    """The callthrough call is one of the user's outbound trunk calls (once, not twice): with
    one concurrent call allowed, a second callthrough while the first talks is refused before
    anything rings (a prompt, then released)."""
    rig.admin("toll.set", tenant="ct", max_outbound_per_user=1)
    try:
        attempts = rig.admin("toll.get", tenant="ct")["users"].get("anna", {}).get("attempts_last_hour", 0)
        far = Phone(0x3105)
        gw = carrier(rig, far, hold_ms=6000)
        first = Caller(rig, ACCESS, MOBILE, CARRIERS[0], 0x3005)
        first.phone.dial("0447770000#")
        wait_for(lambda: any(x["call_id"] == first.call_id and x.get("answered_by") == "0447770000"
                             for x in rig.admin("call.list")), 10, "first callthrough answered")
        anna = rig.admin("toll.get", tenant="ct")["users"]["anna"]
        assert anna["outbound_calls"] == 1 and anna["attempts_last_hour"] == attempts + 1, anna

        second = Caller(rig, ACCESS, MOBILE2, CARRIERS[1], 0x3006)
        second.phone.dial("0447770001#")
        assert second.finish().returncode == 0
        cdr = cdr_of(rig, second.call_id)
        assert cdr["service_result"] == "callthrough refused: Too many outbound calls of this user", cdr
        assert first.finish().returncode == 0
        seen = gw.finish()
        far.peer.close()
        assert seen.messages.count("INVITE sip:") == 1, seen.messages
        assert rig.admin("toll.get", tenant="ct")["users"]["anna"]["outbound_calls"] == 0
    finally:
        rig.admin("toll.reset", tenant="ct")


def test_bad_rules_name_the_field(rig):
    from hpbx.admin.client import RpcError
    before = rig.admin("user.get", username="anna")
    for rules, field in (([{"authorised": "abc", "access": ACCESS}], "callthrough[0].authorised"),
                         ([{"authorised": MOBILE, "access": DISPLAYED}], "callthrough[0].access"),
                         ([{"authorised": MOBILE, "access": ACCESS, "presented": "0449999999"}],
                          "callthrough[0].presented")):
        with pytest.raises(RpcError) as err:
            rig.admin("user.update", username="anna", callthrough=rules)
        assert field in str(err.value), err.value
    with pytest.raises(RpcError) as err:
        rig.admin("callthrough.prepare", username="anna", destination="0901234567")
    assert "destination" in str(err.value)
    assert rig.admin("user.get", username="anna") == before
