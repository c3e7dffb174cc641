"""A phone behind a masquerading NAT registers; hpbx stores the NAT's public address and port
and its OPTIONS keepalive reaches the phone through the NAT.

    phone ns (192.168.77.2) -- router ns (192.168.77.1 | 198.51.100.1, MASQUERADE) -- server ns (198.51.100.2)

The namespaces are built with pyroute2, NAT with iptables inside the router namespace; all of
them are removed afterwards. Nothing touches the root namespace.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from harness import HpbxServer, SippRun, have_sipp, run_sipp  # noqa: E402
from netns import exec_in, masquerade, namespaces, require_root_and_iptables, up, veth  # noqa: E402
pytestmark = [pytest.mark.netns, pytest.mark.sipp,
              pytest.mark.skipif(not have_sipp(), reason="sipp is not installed (sip-tester)")]

SCEN = Path(__file__).resolve().parent.parent / "sip" / "scenarios"
PHONE_IP, ROUTER_IN = "192.168.77.2", "192.168.77.1"
ROUTER_OUT, SERVER_IP = "198.51.100.1", "198.51.100.2"
PHONE_PORT = 5072


@pytest.fixture
def nat_topology():
    require_root_and_iptables()
    tag = f"{os.getpid() % 100000}"
    names = {"phone": f"h4phone{tag}", "router": f"h4rtr{tag}", "server": f"h4srv{tag}"}
    with namespaces(names.values()):
        veth(names["router"], "rin", names["phone"], "eth0")
        veth(names["router"], "rout", names["server"], "eth0")
        up(names["phone"], "eth0", PHONE_IP, gateway=ROUTER_IN)
        up(names["router"], "rin", ROUTER_IN)
        up(names["router"], "rout", ROUTER_OUT)
        up(names["server"], "eth0", SERVER_IP)
        masquerade(names["router"], "rout")
        yield names


def test_phone_behind_nat(nat_topology, tmp_path):
    phone_ns = exec_in(nat_topology["phone"])
    srv = HpbxServer(tmp_path / "srv", users=[("natphone", "natphone-pw")], host=SERVER_IP,
                     wrap=exec_in(nat_topology["server"]),
                     sip_extra={"keepalive_interval": 1, "keepalive_grace": 60})
    srv.start()
    try:
        res = run_sipp(SCEN / "register_auth.xml", srv.sip_target, tmp_path,
                       inf=[("natphone", "natphone-pw", "natphone", 300)], wrap=phone_ns,
                       local_ip=PHONE_IP, local_port=PHONE_PORT)
        assert res.returncode == 0 and res.successful == 1, res.describe()
        [binding] = srv.bindings()
        # the registration record holds the NAT's public address, not the phone's own
        assert binding["source_host"] == ROUTER_OUT, binding
        assert binding["source_port"] > 0
        assert binding["contact"].startswith(f"sip:natphone@{PHONE_IP}:{PHONE_PORT}")
        assert binding["behind_nat"] == 1
        # the server's keepalive comes back through the NAT mapping to the phone's socket
        uas = SippRun(SCEN / "keepalive_uas.xml", "", tmp_path, wrap=phone_ns, local_ip=PHONE_IP,
                      local_port=PHONE_PORT, timeout=8, name="uas").start()
        got = uas.wait()
        assert got.returncode == 0 and got.successful == 1, got.describe()
        options = got.received("OPTIONS ")[0]
        assert options.startswith(f"OPTIONS sip:natphone@{PHONE_IP}:{PHONE_PORT}"), options
        assert f"SIP/2.0/UDP {SERVER_IP}:5060" in options
    finally:
        srv.stop()
