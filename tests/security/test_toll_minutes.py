"""Toll fraud, the caps beyond attempts: talk minutes per hour and per day (user and tenant,
at their boundaries, and an answered call cut when the budget is spent), the night-time
restriction in the tenant's zone, and the alert of a reached cap by webhook (a real HTTP
server on loopback) and by mail (the server's mail spool delivering to a real SMTP server,
aiosmtpd)."""
from __future__ import annotations

import asyncio
import http.server
import json
import re
import socket
import threading
import time
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from aiosmtpd.controller import Controller

from hpbx import settings as settings_mod
from hpbx.mail.spool import MailSpool
from hpbx.security.toll import TollPolicy

NO_OTHER = {"max_outbound_per_user": 0, "max_outbound_per_tenant": 0, "calls_per_hour_user": 0,
            "calls_per_hour_tenant": 0, "minutes_per_day_user": 0, "minutes_per_day_tenant": 0}


class Clock:
    def __init__(self, now=1_000_000.0):
        self.now = now

    def __call__(self):
        return self.now


def policy(toll: dict, extra: dict | None = None, now=1_000_000.0):
    clock = Clock(now)
    s = settings_mod.from_dict({"security": {"toll": {**NO_OTHER, **toll}}, **(extra or {})})
    return TollPolicy(s, clock=clock), clock


def talk(p, clock, call_id, user, secs, tenant="t"):
    assert p.admit(call_id, tenant, user, "0791234567") is None
    limit = p.max_call_secs(tenant, call_id)
    clock.now += secs
    p.release(call_id)
    return limit


def test_minutes_per_hour_of_a_user_at_the_boundary_and_the_window_slides():
    p, clock = policy({"minutes_per_hour_user": 10, "max_call_secs": 0})
    assert talk(p, clock, "a1", "anna", 300) == 600  # the whole budget is the cut
    assert talk(p, clock, "a2", "anna", 299) == 300
    r = p.get("t")
    assert r["users"]["anna"]["minutes_last_hour"] == pytest.approx(599 / 60, abs=0.1)
    # 1 s left: admitted, and cut after that second
    assert talk(p, clock, "a3", "anna", 1) == 1
    refusal = p.admit("a4", "t", "anna", "0791234567")
    assert refusal is not None and refusal.rule == "minutes_per_hour_user"
    assert refusal.reason == "Outbound minutes of this user exceeded"
    assert p.admit("b1", "t", "bert", "0791234567") is None  # another user is not held
    p.release("b1")
    clock.now += 3600 - 600 + 1  # the first call's minutes slide out of the hour
    assert p.admit("a5", "t", "anna", "0791234567") is None


def test_minutes_per_day_of_the_tenant_count_live_calls_and_the_cut_is_the_smaller_limit():
    p, clock = policy({"minutes_per_day_tenant": 60, "max_call_secs": 3000})
    assert talk(p, clock, "a1", "anna", 1500) == 3000  # max_call_secs is smaller than the 3600 s budget
    assert p.admit("b1", "t", "bert", "0791") is None
    assert p.max_call_secs("t", "b1") == 2100  # 60 min - 25 min talked
    clock.now += 2100  # bert is still talking: his live minutes count
    refusal = p.admit("c1", "t", "carl", "0791")
    assert refusal is not None and refusal.rule == "minutes_per_day_tenant"
    assert refusal.reason == "Outbound minutes of this tenant exceeded"
    p.release("b1")
    assert p.get("t")["minutes_last_day"] == 60.0
    clock.now += 86400 - 3600 + 1
    assert p.admit("c2", "t", "carl", "0791") is None
    # an unanswered call costs no minutes
    p.release("c2")
    clock.now += 1500  # anna's call has left the 24 hours, bert's 35 minutes remain
    assert p.get("t")["minutes_last_day"] == 35.0


def test_minutes_with_block_blocks_the_tenant():
    p, clock = policy({"minutes_per_hour_tenant": 1, "on_rate_exceeded": "block"})
    blocked = []
    p.on_block = blocked.append
    talk(p, clock, "a1", "anna", 60)
    assert p.admit("a2", "t", "anna", "0791").rule == "minutes_per_hour_tenant"
    assert blocked == ["t"] and p.limits("t").blocked
    clock.now += 7200
    assert p.admit("a3", "t", "anna", "0791").rule == "blocked"  # until an operator lifts it


class Timers:
    """call_later of the policy, recorded (the test fires them by hand with its own clock)."""

    def __init__(self):
        self.armed: list = []

    def __call__(self, delay, fn, *args):
        timer = self.Timer(delay, fn, args)
        self.armed.append(timer)
        return timer

    class Timer:
        def __init__(self, delay, fn, args):
            self.delay, self.fn, self.args, self.cancelled = delay, fn, args, False

        def cancel(self):
            self.cancelled = True

    def live(self):
        return [t for t in self.armed if not t.cancelled]


def test_concurrent_calls_share_the_budget_and_are_cut_together_when_it_is_spent():
    """Four calls answered at once with 4 minutes left: each may not take the 4 minutes for
    itself (that would be 16); all four are cut after 60 s, and the timer follows each change."""
    p, clock = policy({"minutes_per_hour_tenant": 5, "max_call_secs": 0})
    timers, cut = Timers(), []
    p.call_later = timers
    p.on_cut = lambda cid, why: cut.append((cid, why))
    talk(p, clock, "old", "anna", 60)  # 1 of 5 minutes spent
    for i in range(4):
        assert p.admit(f"c{i}", "t", f"u{i}", "0791") is None
        assert p.max_call_secs("t", f"c{i}") == 240 - 0  # alone, each could have it all
    [timer] = [t for t in timers.live() if t.args == (("t", "t"),)]
    assert timer.delay == pytest.approx(60.05)  # 240 s left, spent by 4 at once
    clock.now += 30
    p.release("c3")  # one hangs up: 3 share the 240 - 120 = 120 s left
    [timer] = [t for t in timers.live() if t.args == (("t", "t"),)]
    assert timer.delay == pytest.approx(40.05)
    clock.now += 39
    assert p.cut_due() == [] and cut == []
    clock.now += 1
    timer.fn(*timer.args)  # the timer fires
    assert sorted(c for c, _ in cut) == ["c0", "c1", "c2"]
    assert {why for _, why in cut} == {"outbound minutes exceeded"}
    for cid in ("c0", "c1", "c2"):
        p.release(cid)
    assert p.get("t")["minutes_last_hour"] == 5.0
    assert p.admit("c9", "t", "u9", "0791").rule == "minutes_per_hour_tenant"
    assert p.cut_due() == []  # nothing up, nothing cut twice


def test_a_users_budget_cuts_only_that_users_calls():
    p, clock = policy({"minutes_per_hour_user": 1, "max_call_secs": 0})
    cut = []
    p.on_cut = lambda cid, why: cut.append(cid)
    for cid, who in (("a1", "anna"), ("a2", "anna"), ("b1", "bert")):
        assert p.admit(cid, "t", who, "0791") is None
        p.max_call_secs("t", cid)
    clock.now += 29
    assert p.cut_due() == []
    clock.now += 1
    assert sorted(p.cut_due()) == ["a1", "a2"] and sorted(cut) == ["a1", "a2"]
    clock.now += 30
    assert p.cut_due() == ["b1"]


def at(zone: str, text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(zone)).timestamp()


def test_night_hours_in_the_tenants_zone_allow_only_national_numbers():
    p, clock = policy({"night_hours": "22:00-06:00", "allow_international": True,
                       "allow_premium": True, "allow_prefixes": ["+49"]},
                      now=at("Europe/Zurich", "2026-12-07T21:59:00"))
    p.zone_of = lambda tenant: "Europe/Zurich"
    assert p.admit("d1", "t", "anna", "0033123456789") is None  # 21:59: still day
    p.release("d1")
    clock.now = at("Europe/Zurich", "2026-12-07T22:00:00")
    assert p.is_night("t")
    r = p.admit("n1", "t", "anna", "0033123456789")
    assert r is not None and r.rule == "night_hours" and r.reason == "Only national calls at night"
    assert p.admit("n2", "t", "anna", "0901123456").rule == "night_hours"
    assert p.admit("n3", "t", "anna", "0441234567") is None  # national
    assert p.admit("n4", "t", "anna", "004930123456") is None  # an allowed prefix
    clock.now = at("Europe/Zurich", "2026-12-08T05:59:00")
    assert p.admit("n5", "t", "anna", "0033123456789").rule == "night_hours"
    clock.now = at("Europe/Zurich", "2026-12-08T06:00:00")
    assert p.admit("n6", "t", "anna", "0033123456789") is None
    # the same instant is still night in New York's zone (00:00 there)
    p.zone_of = lambda tenant: "America/New_York"
    assert p.admit("n7", "t", "anna", "0033123456789").rule == "night_hours"


def test_minutes_and_night_settings_are_validated():
    with pytest.raises(Exception, match=r"security\.toll\.night_hours: must be \"HH:MM-HH:MM\""):
        settings_mod.from_dict({"security": {"toll": {"night_hours": "22-6"}}})
    with pytest.raises(Exception, match=r"security\.toll\.minutes_per_day_user: must be between"):
        settings_mod.from_dict({"security": {"toll": {"minutes_per_day_user": -5}}})
    with pytest.raises(Exception, match=r"security\.toll\.alert_webhook: must be an http"):
        settings_mod.from_dict({"security": {"toll": {"alert_webhook": "ftp://x"}}})
    with pytest.raises(Exception, match=r"security\.toll\.alert_mail: must be one mail address"):
        settings_mod.from_dict({"security": {"toll": {"alert_mail": "a@b, c@d"}}})


# ---------------------------------------------------------------------- alerts, real servers
class Hook(http.server.BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Hook.received.append((self.path, self.headers["Content-Type"], json.loads(body)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


class Mailbox:
    def __init__(self):
        self.messages = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802
        self.messages.append((envelope.rcpt_tos, envelope.content.decode()))
        return "250 OK"


@pytest.fixture
def receivers(tmp_path):
    Hook.received = []
    web = http.server.HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    box = Mailbox()
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    smtp = Controller(box, hostname="127.0.0.1", port=port)
    smtp.start()
    # the spool the server would use, its sender running in an event loop of its own
    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_forever, daemon=True)
    runner.start()
    conf = settings_mod.from_dict({"smtp": {"host": "127.0.0.1", "port": port, "sender": "pbx@example.net",
                                            "retry_min": 1, "retry_max": 1}}).smtp
    spool = MailSpool(conf, tmp_path / "spool")
    spool.open()
    asyncio.run_coroutine_threadsafe(spool.start(), loop).result(10)
    try:
        yield web.server_address[1], spool, box
    finally:
        asyncio.run_coroutine_threadsafe(spool.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        runner.join(5)
        web.shutdown()
        smtp.stop()


def test_a_reached_cap_alerts_by_webhook_and_mail_once_per_hour(receivers):
    web_port, spool, box = receivers
    p, clock = policy({"calls_per_hour_tenant": 2, "alert_webhook": f"http://127.0.0.1:{web_port}/hook",
                       "alert_mail": "noc@example.net"})
    p.mail = spool
    for i in range(2):
        assert p.admit(f"a{i}", "acme", "anna", "0791") is None
        p.release(f"a{i}")
    assert Hook.received == [] and box.messages == []  # below the cap: nothing
    assert p.admit("a2", "acme", "anna", "0791").rule == "calls_per_hour_tenant"
    assert p.admit("a3", "acme", "anna", "0791").rule == "calls_per_hour_tenant"
    deadline = time.monotonic() + 10
    while (not Hook.received or not box.messages) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(Hook.received) == 1, Hook.received  # the second refusal within the hour: no alert
    path, ctype, event = Hook.received[0]
    assert path == "/hook" and ctype == "application/json"
    assert event["tenant"] == "acme" and event["rule"] == "calls_per_hour_tenant"
    assert event["user"] == "anna" and event["limits"]["calls_per_hour_tenant"] == 2
    assert len(box.messages) == 1
    rcpt, text = box.messages[0]
    assert rcpt == ["noc@example.net"] and "Subject: hpbx toll-fraud limit: acme calls_per_hour_tenant" in text
    assert "From: pbx@example.net" in text
    assert p.counts()["toll_alerts_sent"] == 2 and p.counts()["toll_alerts_failed"] == 0
    clock.now += 3601
    for i in range(2):
        assert p.admit(f"b{i}", "acme", "anna", "0791") is None
        p.release(f"b{i}")
    assert p.admit("b2", "acme", "anna", "0791") is not None
    deadline = time.monotonic() + 10
    while len(box.messages) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(Hook.received) == 2 and len(box.messages) == 2  # an hour later: alerted again
    assert spool.counts()["sent"] == 2 and spool.queue() == []


def test_an_alert_mail_waits_in_the_spool_while_the_smtp_server_is_down(tmp_path):
    conf = settings_mod.from_dict({"smtp": {"host": "127.0.0.1", "port": 9, "retry_min": 1}}).smtp
    spool = MailSpool(conf, tmp_path / "spool")
    spool.open()  # not started: nothing is sent, the message must be on disk
    p, _ = policy({"calls_per_hour_user": 1, "alert_mail": "noc@example.net"})
    p.mail = spool
    assert p.admit("a1", "t", "anna", "0791") is None
    assert p.admit("a2", "t", "anna", "0791").rule == "calls_per_hour_user"
    [row] = spool.queue()
    assert row["state"] == "queued" and row["to"] == "noc@example.net" and row["tenant"] == "t", row
    assert list((tmp_path / "spool").glob("*.eml"))


def test_an_unreachable_webhook_is_counted_and_the_refusal_stands():
    p, _ = policy({"calls_per_hour_user": 1, "alert_webhook": "http://127.0.0.1:9/hook"})
    assert p.admit("a1", "t", "anna", "0791") is None
    assert p.admit("a2", "t", "anna", "0791").rule == "calls_per_hour_user"
    assert p.counts()["toll_alerts_failed"] == 1 and p.counts()["toll_alerts_sent"] == 0


# ---------------------------------------------------------------------- end to end
@pytest.mark.sipp
def test_the_running_server_cuts_calls_that_spent_the_budget_and_alerts(tmp_path, receivers):
    """The real server, a SIPp gateway as the trunk, 10 trunk calls up at once against a
    tenant budget of 1 minute: all 10 get BYE after ~6 s (60 s shared by 10), the CDRs say
    why, the next call is refused, and the alert arrives by webhook and, through the
    server's own mail spool, at the SMTP server."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "sip"))
    from harness import have_sipp, reserved_port
    from callrig import CallRig, trunk, user
    if not have_sipp():
        pytest.skip("sipp is not installed (sip-tester)")
    web_port, spool, box = receivers  # the test's own spool stays unused: the server has one
    smtp_port = spool.settings.port
    gw = reserved_port()
    rig = CallRig(tmp_path / "rig", '[tenant]\nname = "mins"\ntrunk = "gateway"\n' + trunk("gateway", gw)
                  + user("m1", "501") + user("m2", "502"))
    with open(rig.server.config, "a") as f:
        f.write(f'\n[smtp]\nhost = "127.0.0.1"\nport = {smtp_port}\nsender = "pbx@example.net"\n'
                f"retry_min = 1\n\n[security.toll]\nmax_outbound_per_user = 0\nmax_outbound_per_tenant = 0\n"
                f"minutes_per_hour_tenant = 1\nalert_webhook = \"http://127.0.0.1:{web_port}/toll\"\n"
                f'alert_mail = "noc@example.net"\n')
    scen = str(Path(__file__).resolve().parent / "scenarios" / "call_uac_auth_wait_bye.xml")
    with rig:
        g = rig.sipp("call_uas.xml", port=gw, pause_ms=100, calls=10, timeout=25, name="gateway")
        time.sleep(0.2)
        t0 = time.monotonic()
        callers = rig.sipp(scen, service="0791110001", calls=10, rate=100, timeout=25,
                           extra=["-au", "m1", "-ap", "m1-pw", "-l", "10"], name="ten").finish()
        took = time.monotonic() - t0
        seen = g.finish()
        state = rig.admin("toll.get", tenant="mins")
        from test_toll import refused  # noqa: E402 - the raw INVITE helper of the toll tests
        after = refused(rig, "m2", "0791110002")
        deadline = time.monotonic() + 15
        while (not Hook.received or not box.messages) and time.monotonic() < deadline:
            time.sleep(0.05)
        log = rig.server.log()
        cdrs = rig.cdrs(count=10)
        rig.assert_idle()
    assert callers.successful == 10, callers.describe() + log
    assert seen.successful == 10 and len(seen.received("BYE")) == 10, seen.describe()
    print(f"10 trunk calls, 1 minute of budget: all cut after {took:.1f} s")
    assert 5.5 <= took < 10, took  # 60 s of budget spent by 10 calls at once: ~6 s, not 60
    assert [c["end_reason"] for c in cdrs].count("outbound minutes exceeded") == 10, cdrs
    assert 0.95 <= state["minutes_last_hour"] <= 1.1, state
    assert after == "SIP/2.0 403 Outbound minutes of this tenant exceeded"
    assert re.search(r'SECURITY event=toll_cut tenant=mins user="" rule=minutes_per_hour_tenant calls=10', log), log[-3000:]
    [(path, ctype, event)] = Hook.received
    assert path == "/toll" and event["tenant"] == "mins" and event["rule"] == "minutes_per_hour_tenant"
    [(rcpt, text)] = box.messages
    assert rcpt == ["noc@example.net"] and "hpbx toll-fraud limit: mins minutes_per_hour_tenant" in text
    assert "X-Hpbx-Mail-Id" in text  # it went through the server's spool


def test_counters_survive_a_restart_and_a_call_up_at_a_crash_counts_until_the_restart(tmp_path):
    """The counters are in the store (hpbx.store.bans): a policy made anew on the same file
    (the server restarted, here after a kill: one call never ended) goes on counting the
    attempts of the hour and the talk time of the day."""
    from hpbx.store.bans import BanStore

    s = settings_mod.from_dict({"security": {"toll": {**NO_OTHER, "calls_per_hour_user": 3,
                                                      "minutes_per_day_user": 10, "max_call_secs": 600}}})
    clock = Clock()
    store = BanStore(tmp_path / "db.sqlite3")
    p = TollPolicy(s, store, clock=clock)
    talk(p, clock, "c1", "anna", 240)  # 4 minutes, ended
    assert p.admit("c2", "t", "anna", "0791234567") is None
    p.max_call_secs("t", "c2")  # answered; up when the server dies
    clock.now += 120
    store.close()
    clock.now += 30  # restarted 30 s later: c2 counts 150 s
    store = BanStore(tmp_path / "db.sqlite3")
    again = TollPolicy(s, store, clock=clock)
    anna = again.get("t")["users"]["anna"]
    assert anna["attempts_last_hour"] == 2 and anna["outbound_calls"] == 0, anna
    assert anna["minutes_last_day"] == round((240 + 150) / 60, 1), anna
    assert again.admit("c3", "t", "anna", "0791234567") is None  # the third of the hour
    assert again.max_call_secs("t", "c3") == 600 - 390  # what is left of the day's 10 minutes
    clock.now += 10
    again.release("c3")
    assert again.admit("c4", "t", "anna", "0791234567").rule == "calls_per_hour_user"
    store.close()
    # an hour later, restarted again: the attempts slid out of their hour, the minutes stay
    clock.now += 3600
    store = BanStore(tmp_path / "db.sqlite3")
    third = TollPolicy(s, store, clock=clock)
    anna = third.get("t")["users"].get("anna", {})
    assert anna.get("attempts_last_hour", 0) == 0, anna
    assert third.minutes_used("t", "anna")["minutes_last_day"] == 6.7
    assert third.admit("c5", "t", "anna", "0791234567") is None
    assert third.max_call_secs("t", "c5") == 600 - 400
    clock.now += 10
    third.release("c5")
    store.close()
    # a day later nothing is left of them, in memory or in the file
    clock.now += 86400
    store = BanStore(tmp_path / "db.sqlite3")
    fourth = TollPolicy(s, store, clock=clock)
    assert fourth.minutes_used("t", "anna") == {"minutes_last_hour": 0.0, "minutes_last_day": 0.0}
    assert store.toll_usage() == []
    store.close()
