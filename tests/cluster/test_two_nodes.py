"""Two hpbx nodes (127.0.0.1 and 127.0.0.2) over one PostgreSQL and one Redis, both started by
the tests: any node answers any phone, admin changes travel, in-dialog requests reach the node
that holds the call. Phones and the carrier are SIPp."""
from __future__ import annotations

import re
import time

import psycopg
import pytest

from harness import have_sipp, header, reserved_port
from callrig import number, trunk, user
from nodes import Node, TcpPhone, wait_for

pytestmark = [pytest.mark.sipp, pytest.mark.cluster,
              pytest.mark.skipif(not have_sipp(), reason="sipp is not installed (sip-tester)")]

A_HOST, B_HOST = "127.0.0.1", "127.0.0.2"
CARRIER = reserved_port()

TENANT = (
    '[tenant]\nname = "acme"\n'
    + trunk("carrier-a", CARRIER, host=A_HOST) + trunk("carrier-b", CARRIER, host=B_HOST)
    + user("anna", "201") + user("beat", "202") + user("nina", "203", flags=("behind_nat",))
    + number("0441110000", (30, ["user:anna"]))
    + number("0441110001", (30, ["user:beat"]))
    + number("0441110002", (30, ["user:nina"]))
    + user("tess", "205") + number("0441110005", (30, ["user:tess"]))
)


@pytest.fixture(scope="module")
def nodes(tmp_path_factory, postgres, redis_server):
    postgres.psql("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
    redis_server.client().flushall()
    base = tmp_path_factory.mktemp("cluster")
    a = Node(base / "a", TENANT, name="a", host=A_HOST, dsn=postgres.dsn, redis_url=redis_server.url)
    a.start()  # imports the tenant into the empty database
    b = Node(base / "b", TENANT, name="b", host=B_HOST, dsn=postgres.dsn, redis_url=redis_server.url)
    b.start()
    yield a, b
    b.stop()
    a.stop()


def registered_on(node, username: str) -> list[dict]:
    return node.admin("registration.list", user=username)


def test_binding_stored_before_200_and_seen_by_the_other_node(nodes, redis_server):
    a, b = nodes
    port = reserved_port(A_HOST)
    a.register("anna", "anna-pw", port)
    # SIPp has its 200: the binding is in Redis already, with the node holding its flow
    stored = redis_server.client().hgetall("hpbx:bindings")
    rows = [v for k, v in stored.items() if k.startswith(b"anna\x00")]
    assert len(rows) == 1 and rows[0].endswith(b',"a"]') and f":{port}".encode() in rows[0], stored
    seen = wait_for(lambda: registered_on(b, "anna"), timeout=1.0)
    assert seen and seen[0]["source"] == f"{A_HOST}:{port}", seen


def test_call_arriving_at_b_rings_the_phone_registered_through_a(nodes):
    a, b = nodes
    phone = a.phone("anna", "call_uas.xml", pause_ms=200)
    assert wait_for(lambda: registered_on(b, "anna"), timeout=1.0)
    res = b.call("call_uac.xml", "0441110000", port=CARRIER, pause_ms=300)
    got = phone.finish()
    assert res.returncode == 0 and res.successful == 1, res.describe() + b.server.log()
    assert got.successful == 1, got.describe()
    invite = got.received("INVITE")[0]
    # B rang it: its Via and Contact name node B, and the call is in B's CDRs
    assert header(invite, "Via")[0].split()[1].startswith(f"{B_HOST}:"), invite
    assert f"@{B_HOST}:" in header(invite, "Contact")[0]
    call_id = header(res.sent("INVITE")[0], "Call-ID")[0]
    cdr = [c for c in b.cdrs() if c["call_id"] == call_id]
    assert len(cdr) == 1 and cdr[0]["answered_by"] == "anna" and cdr[0]["end_reason"] == "caller hung up", cdr
    b.assert_idle()
    assert a.call_stats()["calls"]["calls_started"] == 0  # node A never saw the call
    # the CDR any node writes is exported by every node (one PostgreSQL)
    exported = a.admin("cdr.export", format="jsonl")
    assert call_id in exported["text"] and exported["rows"] >= 1


def test_in_dialog_bye_from_the_phone_reaches_the_node_holding_the_call(nodes):
    """The phone registered through A; the call is held by B. B's Contact names B, so the
    phone's BYE goes to B, which ends both legs."""
    a, b = nodes
    phone = a.phone("beat", "call_uas_bye.xml", pause_ms=300)
    assert wait_for(lambda: registered_on(b, "beat"), timeout=1.0)
    res = b.call("call_uac_silent.xml", "0441110001", port=CARRIER, timeout=10)
    got = phone.finish()
    assert res.successful == 1 and got.successful == 1, res.describe() + got.describe() + b.server.log()
    bye = got.sent("BYE")[0]
    assert re.match(rf"BYE sip:[^ ]*@{re.escape(B_HOST)}:{b.server.port}", bye), bye
    assert res.received("BYE"), res.describe()
    call_id = header(res.sent("INVITE")[0], "Call-ID")[0]
    cdr = wait_for(lambda: [c for c in b.cdrs() if c["call_id"] == call_id])
    assert cdr and cdr[0]["end_reason"] == "callee hung up", cdr
    b.assert_idle()


def test_phone_behind_nat_is_reached_through_the_node_holding_its_flow(nodes):
    """nina is behind NAT (flag): only the address her REGISTER came from, on node A, reaches
    her. A call arriving at B goes to her through A (A's Via on top of B's, from A's
    address); the 200 goes back through A; the ACK and the caller's BYE take the same hop."""
    a, b = nodes
    assert wait_for(lambda: a.admin("stats.get", layer="cluster")["cluster"]["peers"] == 1, 3)
    phone = a.phone("nina", "call_uas.xml", pause_ms=200)
    assert wait_for(lambda: registered_on(b, "nina"), timeout=1.0)
    before = a.admin("stats.get", layer="cluster")["cluster"]["edge_requests"]
    res = b.call("call_uac.xml", "0441110002", port=CARRIER, pause_ms=300)
    got = phone.finish()
    assert res.returncode == 0 and res.successful == 1, res.describe() + b.server.log() + a.server.log()
    assert got.successful == 1, got.describe()
    invite = got.received("INVITE")[0]
    vias = header(invite, "Via")
    assert len(vias) == 2, vias
    assert vias[0].startswith(f"SIP/2.0/UDP {A_HOST}:{a.server.port};branch=z9hG4bK-edge-"), vias
    assert vias[1].startswith(f"SIP/2.0/UDP {B_HOST}:{b.server.port};"), vias
    assert not [r for r in header(invite, "Route") if "hpbx-flow" in r], "A pops its own Route"
    bye = got.received("BYE")[0]
    assert header(bye, "Via")[0].startswith(f"SIP/2.0/UDP {A_HOST}:"), bye
    # INVITE, ACK and BYE relayed by A
    assert a.admin("stats.get", layer="cluster")["cluster"]["edge_requests"] - before >= 3
    b.assert_idle()
    assert a.call_stats()["calls"]["calls_started"] == 0


def test_phone_on_a_tcp_connection_to_a_is_reached_from_b_over_that_connection(nodes):
    """tess keeps one TCP connection to A (her only way in). B's INVITE goes to A, which
    sends it down that connection; her 200 and BYE answer come back through A to B."""
    from concurrent.futures import ThreadPoolExecutor
    a, b = nodes
    assert wait_for(lambda: a.admin("stats.get", layer="cluster")["cluster"]["peers"] == 1, 3)
    phone = TcpPhone((A_HOST, a.server.port), "tess", "tess-pw", A_HOST)
    try:
        assert phone.register().startswith("SIP/2.0 200")
        seen = wait_for(lambda: registered_on(b, "tess"), timeout=1.0)
        assert seen and seen[0]["transport"] == "tcp", seen
        with ThreadPoolExecutor(1) as pool:
            answering = pool.submit(phone.answer_call)
            res = b.call("call_uac.xml", "0441110005", port=CARRIER, pause_ms=300)
            invite, bye = answering.result(20)
        assert res.successful == 1, res.describe() + b.server.log() + a.server.log()
        vias = header(invite, "Via")
        assert vias[0].startswith(f"SIP/2.0/TCP {A_HOST}:{a.server.port};branch=z9hG4bK-edge-"), vias
        assert vias[1].startswith(f"SIP/2.0/UDP {B_HOST}:"), vias
        assert header(bye, "Via")[0].startswith(f"SIP/2.0/TCP {A_HOST}:"), bye
        b.assert_idle()
    finally:
        phone.close()


def test_flow_route_from_a_stranger_is_not_relayed(nodes):
    """Only the cluster's nodes may use a node as a hop: anyone else's request naming a flow
    is handled as if the Route were not there (here: an OPTIONS answered by A itself)."""
    a, b = nodes
    from harness import RawPhone
    before = a.admin("stats.get", layer="cluster")["cluster"]
    with RawPhone(a.server.host, a.server.port, host="127.0.0.3") as raw:
        raw.request("OPTIONS", f"sip:x@127.0.0.9:5999",
                    [f"Route: <sip:{A_HOST}:{a.server.port};lr;hpbx-flow=udp~127.0.0.9~5999~0>"])
        answer = raw.recv_until(lambda m: m.startswith("SIP/2.0"), 2)
    assert answer and answer.startswith("SIP/2.0 200"), answer
    after = a.admin("stats.get", layer="cluster")["cluster"]
    assert after["edge_refused"] == before["edge_refused"] + 1
    assert after["edge_requests"] == before["edge_requests"]


def test_admin_change_on_a_is_live_on_b_within_a_second(nodes):
    a, b = nodes
    t0 = time.monotonic()
    a.admin("user.update", username="anna", details={"first_name": "Anna-Maria"})
    changed = wait_for(lambda: b.admin("user.get", username="anna")["details"].get("first_name")
                       == "Anna-Maria", timeout=1.0, step=0.01)
    elapsed = time.monotonic() - t0
    assert changed, f"not on B after {elapsed:.3f} s"
    print(f"admin change made on A live on B after {elapsed * 1000:.0f} ms")
    # a new user created on B can register through A at once (within the second)
    b.admin("user.create", tenant="acme", username="cleo", sip_password="cleo-pw", internal_number="204")
    assert wait_for(lambda: any(u["username"] == "cleo" for u in a.admin("user.list", tenant="acme")),
                    timeout=1.0, step=0.01)
    a.register("cleo", "cleo-pw", reserved_port(A_HOST))
    # a user deleted on A loses its bindings on B too
    a.admin("user.delete", username="cleo")
    assert wait_for(lambda: not registered_on(b, "cleo") and
                    not any(u["username"] == "cleo" for u in b.admin("user.list", tenant="acme")),
                    timeout=1.0, step=0.01)


def test_postgres_restart_nodes_reconnect_and_catch_up(nodes, postgres):
    """PostgreSQL restarts under both nodes: the next admin change on A is stored (A connects
    again), and B's listener reconnects and reads every tenant again, so the change is live
    on B too."""
    a, b = nodes
    postgres.restart()
    a.admin("user.update", username="beat", details={"first_name": "After"})
    assert wait_for(lambda: b.admin("user.get", username="beat")["details"].get("first_name") == "After",
                    timeout=5.0, step=0.05), b.server.log()
    assert b.admin("stats.get", layer="cluster")["cluster"]  # B is still a cluster node
    with psycopg.connect(postgres.dsn) as db:
        doc = db.execute("SELECT doc FROM users WHERE username = 'beat'").fetchone()[0]
    assert '"After"' in doc
