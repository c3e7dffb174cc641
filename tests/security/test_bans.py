"""The ban service's accounting with a controlled clock: digest failures per source, per
(source, user) for sources with authenticated phones, per user name from anywhere; bans,
counters and trusted networks stored and restored."""
from __future__ import annotations

import pytest

from hpbx import settings as settings_mod
from hpbx.security.bans import BanService
from hpbx.sip.auth import Verdict
from hpbx.store.bans import BanStore


class Clock:
    def __init__(self):
        import time
        self.now = time.time()

    def __call__(self):
        return self.now


def service(store=None, **sec):
    clock = Clock()
    s = settings_mod.from_dict({"security": {"auth_failures": 5, "user_failures": 8, **sec}})
    svc = BanService(s, store, clock=clock)
    svc.start()
    return svc, clock


def fail(svc, host, user, n=1):
    for _ in range(n):
        svc.judge(Verdict.FORBIDDEN, user, (host, 5060), "udp", "REGISTER")


def test_unknown_users_and_wrong_passwords_count_alike_and_ban_at_the_limit():
    svc, _ = service()
    fail(svc, "192.0.2.1", "100", 2)
    fail(svc, "192.0.2.1", "nosuchuser", 2)
    assert svc.guard.banned_until("192.0.2.1") == 0.0
    fail(svc, "192.0.2.1", "100")  # the fifth failure of this source
    assert svc.guard.banned_until("192.0.2.1") > 0
    assert svc.ban_list()[0]["reason"] == "auth"


def test_a_source_with_authenticated_phones_loses_only_the_failing_pair():
    svc, _ = service()
    assert svc.judge(Verdict.OK, "101", ("203.0.113.5", 5060), "udp", "REGISTER") is Verdict.OK
    fail(svc, "203.0.113.5", "102", 5)  # one phone of the office with a wrong password
    assert svc.guard.banned_until("203.0.113.5") == 0.0
    # the pair is refused without a check, even with the right password now
    assert svc.judge(Verdict.OK, "102", ("203.0.113.5", 5060), "udp", "REGISTER") is Verdict.FORBIDDEN
    # the office's other phones go on
    assert svc.judge(Verdict.OK, "101", ("203.0.113.5", 5060), "udp", "REGISTER") is Verdict.OK
    # guessing other users' passwords from there: banned at good_factor (8) x the limit in all
    # (a blocked pair is refused before its check, so those no longer count)
    for i in range(35):
        assert svc.guard.banned_until("203.0.113.5") == 0.0, i
        fail(svc, "203.0.113.5", f"2{i // 4:02d}")
    assert svc.guard.banned_until("203.0.113.5") > 0


def test_a_distributed_guess_of_one_user_bans_each_further_source_at_once():
    svc, _ = service(auth_failures=100)
    for i in range(8):
        fail(svc, f"198.51.100.{i}", "100")
    assert svc.ban_list() == []
    fail(svc, "198.51.100.50", "100")
    assert [(b["host"], b["reason"]) for b in svc.ban_list()] == [("198.51.100.50", "user")]


def test_trusted_sources_are_never_banned_and_windows_expire():
    svc, clock = service(trusted=["10.0.0.0/8"])
    fail(svc, "10.1.1.1", "100", 50)
    assert svc.ban_list() == []
    fail(svc, "192.0.2.9", "100", 4)
    clock.now += 61  # auth_window passed: counting starts again
    fail(svc, "192.0.2.9", "100", 4)
    assert svc.guard.banned_until("192.0.2.9", clock.now) == 0.0


def test_bans_counters_and_trusted_networks_survive_a_restart(tmp_path):
    store = BanStore(tmp_path / "db.sqlite3")
    svc, _ = service(store)
    fail(svc, "192.0.2.1", "100", 5)
    fail(svc, "192.0.2.2", "100", 3)
    svc.trust("192.0.2.128/25", "office")
    svc.stop()
    store.close()
    store = BanStore(tmp_path / "db.sqlite3")
    again, _ = service(store)
    assert [b["host"] for b in again.ban_list()] == ["192.0.2.1"]
    counts = {(c["kind"], c["key"]): c["count"] for c in again.counters()}
    assert counts[("source", "192.0.2.2")] == 3 and counts[("user", "100")] == 8
    assert again.guard.trusted("192.0.2.200")
    fail(again, "192.0.2.2", "100", 2)  # the stored counter goes on: 3 + 2 = 5
    assert again.guard.banned_until("192.0.2.2") > 0
    store.close()


def test_admin_errors():
    svc, _ = service(trusted=["10.0.0.0/8"])
    with pytest.raises(ValueError, match="not an IP address"):
        svc.ban_add("nope")
    with pytest.raises(ValueError, match="trusted"):
        svc.ban_add("10.2.3.4")
    with pytest.raises(ValueError, match="not a network"):
        svc.trust("10.0.0.0/99")
