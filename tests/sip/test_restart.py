"""Registrations survive kill -9: every binding acknowledged with 200 is known after a restart."""
from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from harness import HpbxServer, RawPhone, SippRun, digest_authorization, have_sipp, header, run_sipp

pytestmark = [pytest.mark.sipp,
              pytest.mark.skipif(not have_sipp(), reason="sipp is not installed (sip-tester)")]

SCEN = Path(__file__).parent / "scenarios"
N = 1000
USERS = [(f"{200000 + i}", f"pw{200000 + i}") for i in range(2 * N)]


def query_contacts(server, user, password) -> list[str]:
    """A REGISTER without Contact (RFC 3261 §10.2.3): the 200 lists the bindings in force."""
    ruri = f"sip:{server.host}:{server.port}"
    with RawPhone(server.host, server.port) as phone:
        def send(extra=()):
            phone.request("REGISTER", ruri, list(extra), to_uri=f"sip:{user}@{server.host}",
                          from_user=user)
            return phone.recv_until(lambda m: m.startswith("SIP/2.0") and " 100 " not in m[:12], 2.0)

        challenge = header(send(), "WWW-Authenticate")[0]
        ok = send([f"Authorization: {digest_authorization(challenge, user, password, 'REGISTER', ruri)}"])
    assert ok and ok.startswith("SIP/2.0 200"), ok
    return header(ok, "Contact")


def acknowledged_users(result) -> set[str]:
    return {re.search(r"(?m)^To: <sip:(\d+)@", m).group(1) for m in result.received("SIP/2.0 200")}


def test_kill_9_after_load_keeps_every_binding(tmp_path):
    srv = HpbxServer(tmp_path / "srv", users=USERS)
    srv.start()
    try:
        rows = [(u, p, f"c{u}", 3600) for u, p in USERS[:N]]
        res = run_sipp(SCEN / "register_auth.xml", srv.sip_target, tmp_path, inf=rows, calls=N,
                       rate=500, timeout=40)
        assert res.successful == N, res.describe()
        srv.kill()
        srv.start()
        stored = {b["username"]: b for b in srv.bindings()}
        assert set(stored) == {u for u, _ in USERS[:N]}
        for user, password in (USERS[0], USERS[N // 2], USERS[N - 1]):
            contacts = query_contacts(srv, user, password)
            assert len(contacts) == 1 and f"sip:c{user}@127.0.0.1:" in contacts[0], contacts
    finally:
        srv.stop()


def test_kill_9_during_load_keeps_every_acknowledged_binding(tmp_path):
    srv = HpbxServer(tmp_path / "srv", users=USERS)
    srv.start()
    try:
        rows = [(u, p, f"d{u}", 3600) for u, p in USERS[N:]]
        run = SippRun(SCEN / "register_auth.xml", srv.sip_target, tmp_path, inf=rows, calls=N,
                      rate=400, timeout=6).start()
        time.sleep(1.3)
        srv.kill()
        res = run.wait()
        acked = acknowledged_users(res)
        assert 100 < len(acked) < N, f"{len(acked)} acknowledged; the kill must fall inside the load"
        srv.start()
        stored = {b["username"] for b in srv.bindings()}
        assert acked <= stored, sorted(acked - stored)[:10]
        user = sorted(acked)[-1]
        contacts = query_contacts(srv, user, f"pw{user}")
        assert any(f"sip:d{user}@" in c for c in contacts), contacts
    finally:
        srv.stop()
