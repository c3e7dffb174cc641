"""Toll-fraud limits: the policy with a controlled clock, then end to end with a SIPp gateway
that counts what reaches the trunk (destination policy, unauthenticated INVITEs, concurrent
calls per user, attempts per hour, overrides over admin)."""
from __future__ import annotations

import re
import sys
import time
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "sip"))

from harness import RawPhone, digest_authorization, have_sipp, header, reserved_port  # noqa: E402
from callrig import CallRig, number, trunk, user  # noqa: E402

from hpbx import settings as settings_mod  # noqa: E402
from hpbx.security.toll import TollPolicy, normalise  # noqa: E402


# ---------------------------------------------------------------------- the policy alone
class Clock:
    def __init__(self):
        self.now = 1_000_000.0

    def __call__(self):
        return self.now


def policy(toll: dict | None = None) -> tuple[TollPolicy, Clock]:
    clock = Clock()
    s = settings_mod.from_dict({"security": {"toll": toll or {}}})
    return TollPolicy(s, clock=clock), clock


def test_numbers_are_normalised_and_classified():
    assert normalise("0041 44 123 45 67", "41") == "+41441234567"
    assert normalise("0441234567", "41") == "+41441234567"
    assert normalise("+49-30-1234", "41") == "+49301234"
    assert normalise("112", "41") == "112"
    p, _ = policy()
    assert p.classify("0791234567") == ("+41791234567", "national")
    assert p.classify("004930123456")[1] == "international"
    assert p.classify("+4930123456")[1] == "international"
    for premium in ("0900123456", "0901123456", "0906123456", "+41901123", "0088212345", "+88112345"):
        assert p.classify(premium)[1] == "premium", premium


def test_destination_policy_with_allow_and_deny_prefixes():
    p, _ = policy({"tenants": {"open": {"allow_international": True, "deny_prefixes": ["+44"]},
                               "de": {"allow_prefixes": ["+49"]}}})
    assert p.admit("c1", "closed", "u", "004930123").rule == "international"
    assert p.admit("c2", "closed", "u", "0901123456").rule == "premium"
    assert p.admit("c3", "closed", "u", "0791234567") is None
    assert p.admit("c4", "open", "u", "004930123") is None
    assert p.admit("c5", "open", "u", "00442071234").rule == "deny_prefix"
    assert p.admit("c6", "open", "u", "0901123456").rule == "premium"  # premium stays off
    assert p.admit("c7", "de", "u", "+4930123") is None
    assert p.admit("c8", "de", "u", "+3312345").rule == "international"


def test_concurrency_per_user_and_tenant_at_the_boundary():
    p, _ = policy({"max_outbound_per_user": 2, "max_outbound_per_tenant": 3})
    assert p.admit("a1", "t", "anna", "0791") is None
    assert p.admit("a2", "t", "anna", "0791") is None
    r = p.admit("a3", "t", "anna", "0791")
    assert (r.status, r.rule) == (403, "max_outbound_per_user")
    assert p.admit("a1", "t", "anna", "0792") is None  # a second target of a held call
    assert p.admit("b1", "t", "bert", "0791") is None  # the tenant's third
    assert p.admit("b2", "t", "bert", "0791").rule == "max_outbound_per_tenant"
    assert p.admit("d1", "t", None, "0791").rule == "max_outbound_per_tenant"  # a diversion
    p.release("a1")
    p.release("a1")  # twice: no double count
    assert p.admit("a4", "t", "anna", "0791") is None
    assert p.get("t")["outbound_calls"] == 3


def test_attempts_per_hour_at_the_boundary_and_the_window_slides():
    p, clock = policy({"calls_per_hour_user": 3, "calls_per_hour_tenant": 5,
                       "max_outbound_per_user": 0, "max_outbound_per_tenant": 0})
    for i in range(3):
        assert p.admit(f"a{i}", "t", "anna", "0791") is None
        p.release(f"a{i}")
        clock.now += 60
    assert p.admit("a9", "t", "anna", "0791").rule == "calls_per_hour_user"
    assert p.admit("b1", "t", "bert", "0791") is None
    assert p.admit("b2", "t", "bert", "0791") is None
    assert p.admit("b3", "t", "bert", "0791").rule == "calls_per_hour_tenant"
    clock.now += 3600 - 120 + 1  # anna's first attempt is now more than an hour old
    assert p.admit("a10", "t", "anna", "0791") is None


def test_overrides_win_over_the_file():
    p, _ = policy({"tenants": {"t": {"max_outbound_per_user": 1}}})
    assert p.limits("t").max_outbound_per_user == 1
    p.set("t", {"max_outbound_per_user": 4, "allow_prefixes": ["+49"]})
    assert p.limits("t").max_outbound_per_user == 4
    assert p.limits("t").allow_prefixes == ("+49",)
    assert p.reset("t") and p.limits("t").max_outbound_per_user == 1


def test_toll_settings_are_validated():
    with pytest.raises(Exception, match=r"security\.toll\.tenants\.x\.deny_prefixes: entries must be digit"):
        settings_mod.from_dict({"security": {"toll": {"tenants": {"x": {"deny_prefixes": ["4a"]}}}}})
    with pytest.raises(Exception, match=r"security\.toll\.max_outbound_per_user: must be between"):
        settings_mod.from_dict({"security": {"toll": {"max_outbound_per_user": -1}}})


# ---------------------------------------------------------------------- end to end
GATEWAY = reserved_port()
TENANT = ('[tenant]\nname = "toll"\ntrunk = "gateway"\n' + trunk("gateway", GATEWAY)
          + user("t1", "401") + user("t2", "402") + user("t3", "403")
          + number("0441110403", (30, ["user:t3"])) + number("0441110499", (30, ["external:004930123456"])))
sipp = pytest.mark.skipif(not have_sipp(), reason="sipp is not installed (sip-tester)")


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    if not have_sipp():
        pytest.skip("sipp is not installed (sip-tester)")
    r = CallRig(tmp_path_factory.mktemp("toll"), TENANT)
    with r:
        yield r


def refused(rig, username: str | None, dialled: str, host: str = "127.0.0.1") -> str:
    """The final answer to an INVITE (authenticated as ``username`` when given)."""
    srv = rig.server
    ruri = f"sip:{dialled}@{srv.host}:{srv.port}"
    with RawPhone(srv.host, srv.port, host=host) as phone:
        def send(extra=()):
            phone.call_id = uuid.uuid4().hex
            text = phone.request("INVITE", ruri, list(extra), from_user=username or "anon")
            resp = phone.recv_until(lambda m: m.startswith("SIP/2.0") and not m.startswith("SIP/2.0 1"), 3)
            branch = re.search(r"branch=([^;\s]+)", text).group(1)
            phone.request("ACK", ruri, branch=branch, cseq=phone.cseq, from_user=username or "anon")
            return resp
        first = send()
        if username is None or not first.startswith("SIP/2.0 407"):
            return first.split("\r\n")[0]
        auth = digest_authorization(header(first, "Proxy-Authenticate")[0], username,
                                    f"{username}-pw", "INVITE", ruri)
        return send([f"Proxy-Authorization: {auth}"]).split("\r\n")[0]


def gateway(rig, calls: int, pause_ms: int = 100, timeout: float = 15):
    g = rig.sipp("call_uas.xml", port=GATEWAY, pause_ms=pause_ms, calls=calls, timeout=timeout,
                 name="gateway")
    time.sleep(0.2)
    return g


@pytest.mark.sipp
def test_destinations_refused_with_a_reason_and_only_national_reaches_the_trunk(rig):
    g = gateway(rig, 1)
    answers = {n: refused(rig, "t2", n) for n in
               ("004930123456", "+4930123456", "0901123456", "0906123456", "0900123456", "+88212345678")}
    ok = rig.call("call_uac_auth.xml", "0791110001", pause_ms=100, extra=["-au", "t2", "-ap", "t2-pw"])
    seen = g.finish()
    for n, status in answers.items():
        want = "Premium destinations not allowed" if n.startswith(("09", "+88")) else "International calls not allowed"
        assert status == f"SIP/2.0 403 {want}", (n, status)
    assert ok.successful == 1, ok.describe() + rig.server.log()
    invites = seen.received("INVITE")
    assert [i.split()[1].split("@")[0] for i in invites] == ["sip:0791110001"]
    assert re.findall(r"SECURITY event=toll_refused [^\n]*rule=premium", rig.server.log())
    rig.assert_idle()


@pytest.mark.sipp
def test_unauthenticated_invites_to_expensive_numbers_never_reach_the_trunk(rig):
    g = gateway(rig, 1, timeout=4)
    statuses = [refused(rig, None, n, host="127.0.0.2")
                for n in ("004930123456", "+88212345678", "0901123456", "0791110002") * 5]
    seen = g.finish()
    assert set(statuses) == {"SIP/2.0 407 Proxy Authentication Required"}, statuses
    assert seen.received("INVITE") == []


@pytest.mark.sipp
def test_concurrent_outbound_calls_of_a_user_are_capped(rig):
    g = gateway(rig, 3, pause_ms=100, timeout=20)
    three = rig.sipp("call_uac_auth.xml", service="0791110003", calls=3, rate=100, pause_ms=2500,
                     extra=["-au", "t1", "-ap", "t1-pw", "-l", "3"], name="three")
    res = three.finish()
    assert res.successful == 2, res.describe() + rig.server.log()
    assert any(m.startswith("SIP/2.0 403 Too many outbound calls of this user") for m in res.received("SIP/2.0 403"))
    # once they have ended, the next call passes
    again = rig.call("call_uac_auth.xml", "0791110004", pause_ms=100, extra=["-au", "t1", "-ap", "t1-pw"])
    seen = g.finish()
    assert again.successful == 1, again.describe()
    assert len(seen.received("INVITE")) == 3
    rig.assert_idle()


@pytest.mark.sipp
def test_attempts_per_hour_and_overrides_over_admin(rig):
    rig.admin("toll.set", tenant="toll", calls_per_hour_user=2, allow_international=True)
    got = rig.admin("toll.get", tenant="toll")
    assert got["limits"]["calls_per_hour_user"] == 2 and got["limits"]["allow_international"] is True
    g = gateway(rig, 2)
    first = rig.call("call_uac_auth.xml", "004930123456", pause_ms=100, extra=["-au", "t3", "-ap", "t3-pw"])
    second = rig.call("call_uac_auth.xml", "0791110005", pause_ms=100, extra=["-au", "t3", "-ap", "t3-pw"])
    third = refused(rig, "t3", "0791110006")
    seen = g.finish()
    assert first.successful == 1 and second.successful == 1, first.describe() + second.describe()
    assert third == "SIP/2.0 403 Outbound call rate of this user exceeded"
    assert len(seen.received("INVITE")) == 2
    with pytest.raises(Exception, match="allow_prefixes"):
        rig.admin("toll.set", tenant="toll", allow_prefixes=["49x"])
    with pytest.raises(Exception, match="not found"):
        rig.admin("toll.get", tenant="nosuch")
    reset = rig.admin("toll.reset", tenant="toll")
    assert reset["reset"] and reset["limits"]["allow_international"] is False
    rig.assert_idle()


@pytest.mark.sipp
def test_an_answered_trunk_call_ends_at_its_maximum_duration(rig):
    rig.admin("toll.set", tenant="toll", max_call_secs=2)
    try:
        g = gateway(rig, 1, pause_ms=100, timeout=20)
        t0 = time.monotonic()
        caller = rig.sipp(str(Path(__file__).resolve().parent / "scenarios" / "call_uac_auth_wait_bye.xml"),
                          service="0791110007", extra=["-au", "t2", "-ap", "t2-pw"], timeout=20,
                          name="long").finish()
        took = time.monotonic() - t0
        seen = g.finish()
    finally:
        rig.admin("toll.reset", tenant="toll")
    # both legs got a BYE from the server (each scenario ends only on a received BYE)
    assert caller.successful == 1, caller.describe() + rig.server.log()
    assert seen.successful == 1 and seen.received("BYE"), seen.describe()
    assert 2.0 <= took < 4.5, took
    assert rig.cdrs(count=1)[-1]["end_reason"] == "maximum call duration"
    rig.assert_idle()


@pytest.mark.sipp
def test_a_transfer_to_the_trunk_is_held_to_the_limits(rig):
    """t2 calls t1; t1 (SIPp) transfers the caller to an international number its tenant may
    not call: the final NOTIFY says 403 with the reason, the trunk sees nothing, the call goes on."""
    scen = Path(__file__).resolve().parent / "scenarios" / "uas_refer_refused.xml"
    g = gateway(rig, 1, timeout=6)
    t1 = rig.phone("t1", str(scen), extra=["-key", "refer_to", "004930123456"], timeout=15)
    caller = rig.call("call_uac_auth.xml", "401", pause_ms=2500, extra=["-au", "t2", "-ap", "t2-pw"])
    res = t1.finish()
    seen = g.finish()
    assert caller.successful == 1, caller.describe() + rig.server.log()
    assert res.successful == 1, res.describe() + rig.server.log()
    assert seen.received("INVITE") == []
    assert re.search(r"SECURITY event=toll_refused [^\n]*dialled=004930123456 rule=international",
                     rig.server.log())
    rig.assert_idle()


def test_rate_exceeded_with_block_stops_the_tenant_until_an_operator_lifts_it():
    p, _ = policy({"calls_per_hour_tenant": 2, "on_rate_exceeded": "block",
                   "max_outbound_per_user": 0, "max_outbound_per_tenant": 0})
    blocked = []
    p.on_block = blocked.append
    assert p.admit("a1", "t", "anna", "0791") is None
    assert p.admit("a2", "t", "bert", "0791") is None
    r = p.admit("a3", "t", "anna", "0791")
    assert (r.rule, r.reason) == ("calls_per_hour_tenant", "Outbound calls of this tenant are blocked")
    assert blocked == ["t"] and p.holds("a1") and not p.holds("a3")
    assert p.admit("a1", "t", "anna", "0792").rule == "blocked"  # even a held call's next target
    assert p.admit("x1", "other", "olga", "0791") is None  # other tenants go on
    p.set("t", {"blocked": False, "calls_per_hour_tenant": 10})
    assert p.admit("a4", "t", "anna", "0791") is None


@pytest.mark.sipp
def test_block_hangs_up_the_tenants_trunk_calls(rig):
    used = rig.admin("toll.get", tenant="toll")["attempts_last_hour"]
    rig.admin("toll.set", tenant="toll", calls_per_hour_tenant=used + 1, on_rate_exceeded="block")
    try:
        g = gateway(rig, 1, pause_ms=100, timeout=20)
        scen = str(Path(__file__).resolve().parent / "scenarios" / "call_uac_auth_wait_bye.xml")
        long_call = rig.sipp(scen, service="0791110008", extra=["-au", "t1", "-ap", "t1-pw"],
                             timeout=20, name="long")
        deadline = time.monotonic() + 5
        while not rig.admin("toll.get", tenant="toll")["outbound_calls"] and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # answered by now
        t0 = time.monotonic()
        over = refused(rig, "t3", "0791110009")
        ended = long_call.finish()
        took = time.monotonic() - t0
        after = refused(rig, "t3", "0791110010")
        g.finish()
        state = rig.admin("toll.get", tenant="toll")
    finally:
        rig.admin("toll.reset", tenant="toll")
    assert over == "SIP/2.0 403 Outbound calls of this tenant are blocked"
    assert ended.successful == 1 and took < 2.0, (took, ended.describe(), rig.server.log())
    assert after == "SIP/2.0 403 Outbound calls of this tenant are blocked"
    assert state["limits"]["blocked"] is True and state["outbound_calls"] == 0
    assert re.search(r"SECURITY event=toll_blocked tenant=toll ", rig.server.log())
    assert "toll fraud block" in [c.get("end_reason") for c in rig.cdrs(count=1)]
    rig.assert_idle()


def inbound(rig, dialled: str, host: str = "127.0.0.1", port: int = 0) -> tuple[str, list[str]]:
    """An INVITE without credentials as a carrier sends it, from ``host``:``port``: (status line
    of the final answer, requests the server sent to that address meanwhile)."""
    srv = rig.server
    ruri = f"sip:{dialled}@{srv.host}:{srv.port}"
    with RawPhone(srv.host, srv.port, host=host, port=port) as phone:
        phone.call_id = uuid.uuid4().hex
        text = phone.request("INVITE", ruri, [f"Contact: <sip:carrier@{host}:{phone.port}>"],
                             from_user="0311112222")
        seen: list[str] = []

        def final(m):
            if not m.startswith("SIP/2.0"):
                seen.append(m.split("\r\n")[0])
            return m.startswith("SIP/2.0") and not m.startswith("SIP/2.0 1")
        resp = phone.recv_until(final, 5)
        assert resp is not None, rig.server.log()
        branch = re.search(r"branch=([^;\s]+)", text).group(1)
        phone.request("ACK", ruri, branch=branch, cseq=phone.cseq, from_user="0311112222")
        return resp.split("\r\n")[0], seen


@pytest.mark.sipp
def test_calls_from_a_trunk_are_taken_only_from_the_trunks_address(rig):
    """The gateway is 127.0.0.1:GATEWAY. The same INVITE from another address or another port
    is a stranger's: challenged, never routed; from the gateway it rings the user. A trusted
    trunk's call that a dial plan sends out again is still held to the tenant's destination
    policy (international here: refused, nothing goes back to the trunk)."""
    spoof_addr = inbound(rig, "0441110403", host="127.0.0.2", port=GATEWAY)
    spoof_port = inbound(rig, "0441110403", host="127.0.0.1")
    assert spoof_addr == ("SIP/2.0 407 Proxy Authentication Required", []), spoof_addr
    assert spoof_port == ("SIP/2.0 407 Proxy Authentication Required", []), spoof_port
    t3 = rig.phone("t3", "call_uas.xml", pause_ms=100, timeout=10)
    real = rig.call("call_uac.xml", "0441110403", port=GATEWAY, pause_ms=100)
    assert real.successful == 1, real.describe() + rig.server.log()
    assert len(t3.finish().received("INVITE")) == 1
    status, sent_back = inbound(rig, "0441110499", port=GATEWAY)
    print(f"hairpin to an international number from the trusted trunk: {status}")
    assert status.startswith("SIP/2.0 403"), status
    assert [r for r in sent_back if r.startswith("INVITE")] == [], sent_back
    assert re.search(r"SECURITY event=toll_refused src=127\.0\.0\.1 tenant=toll user=\"\" "
                     r"dialled=004930123456 rule=international", rig.server.log())
    rig.assert_idle()


def _window_around_now(zone: str, minutes: int = 60) -> str:
    from datetime import datetime, timedelta
    from zoneinfo import ZoneInfo

    now = datetime.now(ZoneInfo(zone))
    return f"{now - timedelta(minutes=minutes):%H:%M}-{now + timedelta(minutes=minutes):%H:%M}"


@pytest.mark.sipp
def test_night_hours_on_the_servers_clock_in_the_tenants_zone(rig):
    """The running server's own clock, no test clock: night hours set over admin to the two
    hours around "now" in Tokyo. With the tenant in Asia/Tokyo it is night there: an
    international call is refused (403 with the reason, nothing reaches the trunk) while a
    national one goes out. Moved to Europe/Zurich (8 hours behind Tokyo in winter, 7 in summer)
    the same window is daytime there, and the same international number reaches the trunk."""
    window = _window_around_now("Asia/Tokyo")
    rig.admin("tenant.update", name="toll", timezone="Asia/Tokyo")
    rig.admin("toll.set", tenant="toll", allow_international=True, night_hours=window)
    try:
        g = gateway(rig, 2)
        night = rig.admin("toll.get", tenant="toll")
        at_night = refused(rig, "t2", "004930123456")
        national = rig.call("call_uac_auth.xml", "0791110011", pause_ms=100, extra=["-au", "t2", "-ap", "t2-pw"])
        rig.admin("tenant.update", name="toll", timezone="Europe/Zurich")
        day = rig.admin("toll.get", tenant="toll")
        by_day = rig.call("call_uac_auth.xml", "004930123456", pause_ms=100, extra=["-au", "t2", "-ap", "t2-pw"])
        seen = g.finish()
    finally:
        rig.admin("toll.reset", tenant="toll")
        rig.admin("tenant.update", name="toll", timezone="Europe/Zurich")
    assert night["limits"]["night_hours"] == window and night["night"] is True, night
    assert at_night == "SIP/2.0 403 Only national calls at night", at_night
    assert national.successful == 1, national.describe() + rig.server.log()
    assert day["night"] is False, day
    assert by_day.successful == 1, by_day.describe() + rig.server.log()
    invites = [i.split()[1].split("@")[0] for i in seen.received("INVITE")]
    assert invites == ["sip:0791110011", "sip:004930123456"], invites
    assert re.search(r"SECURITY event=toll_refused [^\n]*dialled=004930123456 rule=night_hours",
                     rig.server.log())
    rig.assert_idle()


@pytest.mark.sipp
def test_toll_counters_survive_a_kill_of_the_server(rig):
    """kill -9 of the server while t2's trunk call is up, then a new start on the same store:
    t2's attempt of the hour is still counted and so is the talk time up to the restart (a
    restart must not give a fraudster a fresh hour or day)."""
    def t2():
        return rig.admin("toll.get", tenant="toll")["users"].get("t2", {})

    before = t2()
    g = gateway(rig, 1, pause_ms=100, timeout=30)
    caller = rig.sipp(str(Path(__file__).resolve().parent / "scenarios" / "call_uac_auth_wait_bye.xml"),
                      service="0791110012", extra=["-au", "t2", "-ap", "t2-pw"], timeout=30, name="killed")
    deadline = time.monotonic() + 5
    while t2().get("outbound_calls", 0) < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(5.0)  # talking through the trunk
    up = t2()
    rig.server.kill()
    caller.kill()
    g.kill()
    rig.server.start()
    after = t2()
    assert up["outbound_calls"] == 1 and up["minutes_last_day"] > before.get("minutes_last_day", 0), up
    assert after["attempts_last_hour"] == before.get("attempts_last_hour", 0) + 1, (before, after)
    assert after["outbound_calls"] == 0, after  # the call died with the server
    assert after["minutes_last_day"] >= up["minutes_last_day"] > 0, (up, after)
    assert re.search(r"toll counters restored: \d+ trunk calls", rig.server.log())
