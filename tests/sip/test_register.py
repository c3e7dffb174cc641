"""The registrar end to end: the real server, SIPp over UDP and TCP."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from harness import HpbxServer, free_port, have_sipp, header, run_sipp

pytestmark = [pytest.mark.sipp,
              pytest.mark.skipif(not have_sipp(), reason="sipp is not installed (sip-tester)")]

SCEN = Path(__file__).parent / "scenarios"
USERS = [("alice", "alice-pw"), ("bob", "bob-pw"), ("carol", "carol-pw")]
TRANSPORTS = {"udp": "u1", "tcp": "t1"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = HpbxServer(tmp_path_factory.mktemp("reg"), users=USERS)
    srv.start()
    yield srv
    srv.stop()


def contacts_of(message: str) -> list[str]:
    return re.findall(r"(?im)^(?:Contact|m)\s*:\s*(.*)$", message)


def user_bindings(server, user):
    return [b for b in server.bindings() if b["username"] == user]


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_register_with_digest_challenge(server, tmp_path, transport):
    res = run_sipp(SCEN / "register_auth.xml", server.sip_target, tmp_path,
                   inf=[("alice", "alice-pw", f"alice-{transport}", 300)],
                   transport=TRANSPORTS[transport])
    assert res.returncode == 0 and res.successful == 1, res.describe()
    challenge = res.received("SIP/2.0 401")[0]
    assert re.search(r'(?im)^WWW-Authenticate: Digest realm="[^"]+", nonce="[^"]+", qop="auth", '
                     r'algorithm=MD5', challenge), challenge
    ok = res.received("SIP/2.0 200")[0]
    own = [c for c in contacts_of(ok) if f"alice-{transport}@" in c]
    assert own and re.search(r"expires=(29\d|300)\b", own[0]), ok
    rows = [b for b in user_bindings(server, "alice") if b["contact"].startswith(f"sip:alice-{transport}@")]
    assert len(rows) == 1, server.bindings()
    assert rows[0]["transport"] == transport
    assert rows[0]["source_host"] == "127.0.0.1" and rows[0]["source_port"] > 0


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_wrong_password_is_403_after_challenge(server, tmp_path, transport):
    res = run_sipp(SCEN / "register_wrong.xml", server.sip_target, tmp_path,
                   inf=[("bob", "not-bobs-password", "bob-x", 300)], transport=TRANSPORTS[transport])
    assert res.returncode == 0 and res.successful == 1, res.describe()
    assert res.received("SIP/2.0 401") and res.received("SIP/2.0 403"), res.describe()
    assert user_bindings(server, "bob") == []


def test_unknown_user_looks_like_wrong_password(server, tmp_path):
    res = run_sipp(SCEN / "register_wrong.xml", server.sip_target, tmp_path,
                   inf=[("mallory", "whatever", "mallory", 300)])
    assert res.returncode == 0 and res.successful == 1, res.describe()
    challenge = res.received("SIP/2.0 401")[0]
    assert 'realm="' in challenge and "qop=\"auth\"" in challenge
    assert res.received("SIP/2.0 403")


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_reregister_refreshes_one_binding(server, tmp_path, transport):
    contact = f"carol-re-{transport}"
    for expires in (100, 200):
        res = run_sipp(SCEN / "register_auth.xml", server.sip_target, tmp_path,
                       inf=[("carol", "carol-pw", contact, expires)], transport=TRANSPORTS[transport],
                       local_port=None)
        assert res.returncode == 0 and res.successful == 1, res.describe()
    rows = [b for b in user_bindings(server, "carol") if b["contact"].startswith(f"sip:{contact}@")]
    # sipp picks a new local port per run: the contact URI differs, so match on the user part
    assert rows, server.bindings()
    ok = res.received("SIP/2.0 200")[0]
    assert any(re.search(r"expires=(19\d|200)\b", c) for c in contacts_of(ok) if contact in c), ok


def test_refresh_from_the_same_device_is_stored(server, tmp_path):
    # the same contact from the same address: the row is updated in place (expiry, Call-ID,
    # CSeq), and what is stored is what the 200 said
    port = free_port(both=False)
    stored = []
    for expires in (100, 3000):
        res = run_sipp(SCEN / "register_auth.xml", server.sip_target, tmp_path,
                       inf=[("alice", "alice-pw", "alice-refresh", expires)], local_port=port)
        assert res.returncode == 0 and res.successful == 1, res.describe()
        rows = [b for b in user_bindings(server, "alice") if b["contact"].startswith("sip:alice-refresh@")]
        assert len(rows) == 1, rows
        stored.append(rows[0])
    first, second = stored
    assert second["expires_at"] - second["registered_at"] == pytest.approx(3000, abs=1)
    assert second["registered_at"] >= first["registered_at"]
    assert second["call_id"] != first["call_id"] and second["source_port"] == port
    ok = res.received("SIP/2.0 200")[0]
    assert any(re.search(r"expires=(299\d|3000)\b", c) for c in contacts_of(ok) if "alice-refresh" in c), ok


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_unregister_expires_zero_and_star(server, tmp_path, transport):
    # two bindings, then Expires: 0 for one of them, then Contact: * for the rest
    res = run_sipp(SCEN / "register_auth.xml", server.sip_target, tmp_path,
                   inf=[("bob", "bob-pw", "bob-a", 300), ("bob", "bob-pw", "bob-b", 300),
                        ("bob", "bob-pw", "bob-a", 0)],
                   transport=TRANSPORTS[transport], calls=3, rate=5, extra=["-l", "1"])
    assert res.returncode == 0 and res.successful == 3, res.describe()
    left = [b["contact"] for b in user_bindings(server, "bob")]
    assert len(left) == 1 and left[0].startswith("sip:bob-b@"), left
    last_ok = res.received("SIP/2.0 200")[-1]
    assert [c for c in contacts_of(last_ok)] and all("bob-b@" in c for c in contacts_of(last_ok))
    res = run_sipp(SCEN / "unregister_all.xml", server.sip_target, tmp_path,
                   inf=[("bob", "bob-pw")], transport=TRANSPORTS[transport])
    assert res.returncode == 0 and res.successful == 1, res.describe()
    assert contacts_of(res.received("SIP/2.0 200")[0]) == []
    assert user_bindings(server, "bob") == []


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_fourth_device_replaces_the_oldest(server, tmp_path, transport):
    rows = [("alice", "alice-pw", f"dev{i}-{transport}", 600) for i in range(1, 5)]
    res = run_sipp(SCEN / "register_auth.xml", server.sip_target, tmp_path, inf=rows,
                   transport=TRANSPORTS[transport], calls=4, rate=5, extra=["-l", "1"])
    assert res.returncode == 0 and res.successful == 4, res.describe()
    last_ok = res.received("SIP/2.0 200")[-1]
    listed = contacts_of(last_ok)
    assert len(listed) == 3, last_ok
    assert not any(f"dev1-{transport}@" in c for c in listed), listed
    assert all(re.search(r";expires=\d+", c) for c in listed)
    stored = sorted(b["contact"].split("@")[0] for b in user_bindings(server, "alice"))
    assert stored == [f"sip:dev{i}-{transport}" for i in (2, 3, 4)], stored


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_options_answered_200(server, tmp_path, transport):
    res = run_sipp(SCEN / "options.xml", server.sip_target, tmp_path, transport=TRANSPORTS[transport])
    assert res.returncode == 0 and res.successful == 1, res.describe()
    ok = res.received("SIP/2.0 200")[0]
    assert re.search(r"(?im)^Allow:.*\bREGISTER\b", ok)
    top_via = header(ok, "Via")[0]
    assert ";received=127.0.0.1" in top_via and re.search(r";rport=\d+", top_via), ok


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_core_rejects(server, tmp_path, transport):
    res = run_sipp(SCEN / "rejects.xml", server.sip_target, tmp_path, transport=TRANSPORTS[transport])
    assert res.returncode == 0 and res.successful == 1, res.describe()
    assert re.search(r"(?im)^Allow:.*\bOPTIONS\b", res.received("SIP/2.0 405")[0])
    assert re.search(r"(?im)^Unsupported:\s*hpbx-no-such-extension", res.received("SIP/2.0 420")[0])
    bad = res.received("SIP/2.0 400")[0]
    assert "max-forwards" in bad.splitlines()[0].lower(), bad
    assert res.received("SIP/2.0 483") and res.received("SIP/2.0 416")
