"""``[server] workers = 2``: two signalling processes on one SIP port (SO_REUSEPORT), messages
forwarded to the worker owning their Call-ID, bindings, provisioning changes and bans shared
(hpbx/cluster/workers.py). Real SIPp phones and trunk; the admin socket is the primary's.
"""
from __future__ import annotations

import re
import socket
import time

import pytest

from harness import have_sipp, reserved_port, run_sipp, sip_options
from callrig import SCEN, CallRig, number, trunk, user

pytestmark = [pytest.mark.sipp,
              pytest.mark.skipif(not have_sipp(), reason="sipp is not installed (sip-tester)")]

CARRIER = reserved_port()
USERS = [f"u{i:02d}" for i in range(24)]

TENANT = (
    '[tenant]\nname = "acme"\n'
    + trunk("carrier", CARRIER)
    + "".join(user(u, f"3{i:02d}") for i, u in enumerate(USERS))
    + number("0447770000", (30, ["user:u00"]))
)


@pytest.fixture(scope="module", params=["source", "random"])
def rig(tmp_path_factory, request):
    """Both ways of spreading datagrams: the kernel's hash of the source ("source": all of one
    socket's datagrams reach one worker, which forwards those of the other's Call-IDs) and
    the group's BPF program ("random")."""
    r = CallRig(tmp_path_factory.mktemp("workers"), TENANT)
    r.spread = request.param
    with open(r.server.config, "a") as f:
        f.write(f'\n[server]\nworkers = 2\nspread = "{request.param}"\n')
    r.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the primary starts the second worker once it is ready
        w = r.admin("stats.get", layer="workers")
        if w["workers"]["up"] == 2:
            break
        time.sleep(0.2)
    yield r
    r.stop()


def workers(rig) -> list[dict]:
    w = rig.admin("stats.get", layer="workers")["workers"]
    assert w["count"] == 2 and w["up"] == 2, w
    return w["workers"]


def test_two_processes_share_the_port(rig):
    rows = workers(rig)
    assert len({r["pid"] for r in rows}) == 2 and [r["worker"] for r in rows] == [0, 1]
    # OPTIONS from many source ports (the kernel spreads them) and Call-IDs: all answered
    assert all(sip_options(rig.host, rig.server.port, 1.0) for _ in range(20))


def test_datagrams_from_one_socket_reach_both_workers(rig):
    """A trunk sends everything from one address and port: with "random" the group's BPF
    program spreads its datagrams over the workers (the kernel's hash gives all to one), and
    either way each is answered, by the owner of its Call-ID."""
    before = {r["worker"]: r["received"] for r in workers(rig)}
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((rig.host, 0))
    s.settimeout(2)
    port = s.getsockname()[1]
    n = 60
    try:
        for i in range(n):
            s.sendto((f"OPTIONS sip:{rig.host}:{rig.server.port} SIP/2.0\r\n"
                      f"Via: SIP/2.0/UDP {rig.host}:{port};branch=z9hG4bK-spread-{i};rport\r\n"
                      f"Max-Forwards: 70\r\nFrom: <sip:t@{rig.host}>;tag={i}\r\n"
                      f"To: <sip:{rig.host}>\r\nCall-ID: spread-{i}@test\r\nCSeq: 1 OPTIONS\r\n"
                      f"Content-Length: 0\r\n\r\n").encode(), (rig.host, rig.server.port))
        answers = set()
        while len(answers) < n:
            data = s.recv(4096).decode()
            answers.add(re.search(r"(?mi)^Call-ID: (\S+)", data).group(1))
    finally:
        s.close()
    assert answers == {f"spread-{i}@test" for i in range(n)}
    rows = workers(rig)
    got = {r["worker"]: r["received"] - before[r["worker"]] for r in rows}
    assert sum(got.values()) >= n, got
    if rig.spread == "random":
        assert all(v >= n // 6 for v in got.values()), got
    else:  # one source, one worker: it forwarded the other's share, which answered it
        assert sorted(got.values())[0] <= 2 and all(r["forwarded"] > 0 for r in rows), (got, rows)


def test_registrations_spread_over_workers_all_seen_by_admin(rig):
    before = {r["worker"]: r["register_ok"] for r in workers(rig)}
    res = run_sipp(SCEN / "register_auth.xml", rig.target, rig.dir / "sipp", transport="un",
                   calls=len(USERS), rate=50, inf=[(u, f"{u}-pw", u, 300) for u in USERS],
                   name="reg-many")
    assert res.returncode == 0 and res.successful == len(USERS), res.describe() + rig.server.log()
    rows = workers(rig)
    done = {r["worker"]: r["register_ok"] - before[r["worker"]] for r in rows}
    assert sum(done.values()) == len(USERS) and all(n > 0 for n in done.values()), done
    regs = rig.admin("registration.list", tenant="acme")
    listed = regs["registrations"] if isinstance(regs, dict) else regs
    assert {r["user"] if "user" in r else r["username"] for r in listed} >= set(USERS), listed
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline and not all(r["bindings"] >= len(USERS) for r in rows):
        time.sleep(0.05)
        rows = workers(rig)
    assert all(r["bindings"] >= len(USERS) for r in rows), rows  # every worker can route to all


def test_trunk_calls_spread_over_workers_all_answered(rig):
    calls = 40
    before = {r["worker"]: r["calls_started"] for r in workers(rig)}
    phone = rig.phone("u00", "call_uas.xml", pause_ms=100, timeout=40,
                      extra=["-m", str(calls)])
    res = rig.sipp("call_uac.xml", port=CARRIER, service="0447770000", calls=calls, rate=20,
                   pause_ms=200, timeout=40, name="trunk").finish()
    ph = phone.finish()
    assert res.returncode == 0 and res.successful == calls, res.describe() + rig.server.log()
    assert ph.successful == calls, ph.describe()
    rows = workers(rig)
    took = {r["worker"]: r["calls_started"] - before[r["worker"]] for r in rows}
    assert sum(took.values()) == calls and all(n > 0 for n in took.values()), took
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(r["calls"] for r in rows):
        time.sleep(0.1)
        rows = workers(rig)
    assert not any(r["calls"] for r in rows), rows
    assert len([c for c in rig.cdrs(count=calls) if c["called"] == "0447770000"]) >= calls


def test_admin_change_is_live_on_every_worker(rig):
    rig.admin("user.create", tenant="acme", username="late", sip_password="late-pw-123",
              internal_number="399")
    time.sleep(0.2)
    rows = workers(rig)
    assert rows[1]["tenants_reloaded"] >= 1, rows
    # six registrations of the new user, with six Call-IDs: both workers must know it
    res = run_sipp(SCEN / "register_auth.xml", rig.target, rig.dir / "sipp", transport="un",
                   calls=6, rate=50, inf=[("late", "late-pw-123", f"late{i}", 300) for i in range(6)],
                   name="reg-late")
    assert res.returncode == 0 and res.successful == 6, res.describe() + rig.server.log()


def test_call_list_sees_calls_of_every_worker(rig):
    calls = 8
    phone = rig.phone("u00", "call_uas.xml", pause_ms=3000, timeout=40, extra=["-m", str(calls)])
    trunk_run = rig.sipp("call_uac.xml", port=CARRIER, service="0447770000", calls=calls, rate=50,
                         pause_ms=3000, timeout=40, name="trunk-long")
    deadline = time.monotonic() + 10
    listed = []
    while time.monotonic() < deadline:
        listed = rig.admin("call.list")
        listed = listed["calls"] if isinstance(listed, dict) else listed
        rows = workers(rig)
        if len(listed) == calls and all(r["calls"] > 0 for r in rows):
            break
        time.sleep(0.1)
    assert len(listed) == calls, listed
    assert all(r["calls"] > 0 for r in rows), rows
    res = trunk_run.finish()
    phone.finish()
    assert res.successful == calls, res.describe()


def options_from(rig, source: str, n: int, timeout: float = 0.5) -> int:
    """OPTIONS from ``n`` fresh sockets on ``source`` (so on every worker): how many answered."""
    answered = 0
    for i in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((source, 0))
        s.settimeout(timeout)
        port = s.getsockname()[1]
        try:
            s.sendto((f"OPTIONS sip:{rig.host}:{rig.server.port} SIP/2.0\r\n"
                      f"Via: SIP/2.0/UDP {source}:{port};branch=z9hG4bK-ban-{i}-{time.time_ns()};rport\r\n"
                      f"Max-Forwards: 70\r\nFrom: <sip:t@{source}>;tag={i}\r\nTo: <sip:{rig.host}>\r\n"
                      f"Call-ID: ban-{i}-{time.time_ns()}@test\r\nCSeq: 1 OPTIONS\r\n"
                      f"Content-Length: 0\r\n\r\n").encode(), (rig.host, rig.server.port))
            s.recv(4096)
            answered += 1
        except socket.timeout:
            pass
        finally:
            s.close()
    return answered


def test_a_ban_holds_on_every_worker(rig):
    banned = "127.0.0.23"
    assert options_from(rig, banned, 8) == 8
    rig.admin("ban.add", host=banned, secs=60)
    try:
        time.sleep(0.2)
        # from sockets the kernel spreads over both workers: none answered, others are
        assert options_from(rig, banned, 12, timeout=0.3) == 0
        assert options_from(rig, "127.0.0.1", 4) == 4
    finally:
        rig.admin("ban.remove", host=banned)
    time.sleep(0.2)
    assert options_from(rig, banned, 8) == 8
