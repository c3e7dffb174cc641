"""A phone behind a real masquerading NAT registers through node A; a call arriving at node B
reaches it through A, the only address its NAT lets in (Linux conntrack drops B's packets to
the mapping: it filters on the whole address pair).

    phone ns (192.168.77.2) -- router ns (MASQUERADE, 198.51.100.1) -- nodes ns:
        node A 198.51.100.2, node B 198.51.100.3, carrier (SIPp) 198.51.100.4
    PostgreSQL and Redis on Unix sockets (the file system is shared by every namespace)
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "nat"))

from harness import SippRun, have_sipp, header, run_sipp  # noqa: E402
from callrig import SCEN, media_port, number, trunk, user  # noqa: E402
from netns import exec_in, masquerade, namespaces, require_root_and_iptables, up, veth  # noqa: E402
from nodes import Node, wait_for  # noqa: E402

pytestmark = [pytest.mark.netns, pytest.mark.sipp, pytest.mark.cluster,
              pytest.mark.skipif(not have_sipp(), reason="sipp is not installed (sip-tester)")]

PHONE_IP, ROUTER_IN = "192.168.77.2", "192.168.77.1"
ROUTER_OUT, A_IP, B_IP, CARRIER_IP = "198.51.100.1", "198.51.100.2", "198.51.100.3", "198.51.100.4"
PHONE_PORT, CARRIER_PORT = 5072, 5090

TENANT = ('[tenant]\nname = "acme"\n' + trunk("carrier", CARRIER_PORT, host=CARRIER_IP)
          + user("nina", "203") + number("0441110002", (30, ["user:nina"])))


@pytest.fixture
def topology():
    require_root_and_iptables()
    import pyroute2
    tag = f"{os.getpid() % 100000}"
    names = {"phone": f"h4cph{tag}", "router": f"h4crt{tag}", "nodes": f"h4cnd{tag}"}
    with namespaces(names.values()):
        veth(names["router"], "rin", names["phone"], "eth0")
        veth(names["router"], "rout", names["nodes"], "eth0")
        up(names["phone"], "eth0", PHONE_IP, gateway=ROUTER_IN)
        up(names["router"], "rin", ROUTER_IN)
        up(names["router"], "rout", ROUTER_OUT)
        up(names["nodes"], "eth0", A_IP)
        with pyroute2.NetNS(names["nodes"]) as ns:
            idx = ns.link_lookup(ifname="eth0")[0]
            for extra in (B_IP, CARRIER_IP):
                ns.addr("add", index=idx, address=extra, prefixlen=24)
        masquerade(names["router"], "rout")
        yield names


def test_call_at_b_reaches_a_phone_behind_nat_through_a(topology, tmp_path, postgres, redis_server):
    postgres.psql("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
    redis_server.client().flushall()
    in_nodes, in_phone = exec_in(topology["nodes"]), exec_in(topology["phone"])
    a = Node(tmp_path / "a", TENANT, name="a", host=A_IP, dsn=postgres.dsn, redis_url=redis_server.url,
             wrap=in_nodes)
    a.start()
    b = Node(tmp_path / "b", TENANT, name="b", host=B_IP, dsn=postgres.dsn, redis_url=redis_server.url,
             wrap=in_nodes)
    b.start()
    phone = None
    try:
        reg = run_sipp(SCEN / "register_auth.xml", a.target, tmp_path / "reg", wrap=in_phone,
                       inf=[("nina", "nina-pw", "nina", 300)], local_ip=PHONE_IP, local_port=PHONE_PORT)
        assert reg.successful == 1, reg.describe()
        seen = wait_for(lambda: b.admin("registration.list", user="nina"), 1.0)
        assert seen and seen[0]["source"].startswith(f"{ROUTER_OUT}:") and seen[0]["behind_nat"], seen
        assert wait_for(lambda: b.admin("stats.get", layer="cluster")["cluster"]["peers"] == 1, 3)
        assert wait_for(lambda: a.admin("stats.get", layer="cluster")["cluster"]["peers"] == 1, 3)
        phone = SippRun(SCEN / "call_uas.xml", "", tmp_path / "phone", wrap=in_phone, local_ip=PHONE_IP,
                        local_port=PHONE_PORT, timeout=15, name="nina",
                        extra=["-mi", PHONE_IP, "-mp", str(media_port()), "-d", "200"]).start()
        caller = SippRun(SCEN / "call_uac.xml", b.target, tmp_path / "caller", wrap=in_nodes,
                         local_ip=CARRIER_IP, local_port=CARRIER_PORT, timeout=15, name="carrier",
                         extra=["-s", "0441110002", "-mi", CARRIER_IP, "-mp", str(media_port()),
                                "-d", "300"]).start()
        res = caller.wait()
        got = phone.wait()
        assert res.successful == 1, res.describe() + b.server.log() + a.server.log()
        assert got.successful == 1, got.describe()
        vias = header(got.received("INVITE")[0], "Via")
        assert vias[0].startswith(f"SIP/2.0/UDP {A_IP}:5060;branch=z9hG4bK-edge-") and B_IP in vias[1], vias
        assert a.admin("stats.get", layer="cluster")["cluster"]["edge_requests"] >= 3
        call_id = header(res.sent("INVITE")[0], "Call-ID")[0]
        cdr = wait_for(lambda: [c for c in b.cdrs(wait=0) if c["call_id"] == call_id], 3)
        assert cdr and cdr[0]["answered_by"] == "nina", cdr
    finally:
        b.stop()
        a.stop()
