"""A phone behind a masquerading NAT registers; hpbx stores the NAT's public address and port
and its OPTIONS keepalive reaches the phone through the NAT.

    phone ns (192.168.77.2) -- router ns (192.168.77.1 | 198.51.100.1, MASQUERADE) -- server ns (198.51.100.2)

The namespaces are built with pyroute2, NAT with iptables inside the router namespace; all of
them are removed afterwards. Nothing touches the root namespace.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from harness import HpbxServer, SippRun, have_sipp, run_sipp  # noqa: E402

pyroute2 = pytest.importorskip("pyroute2")
pytestmark = [pytest.mark.netns, pytest.mark.sipp,
              pytest.mark.skipif(not have_sipp(), reason="sipp is not installed (sip-tester)")]

SCEN = Path(__file__).resolve().parent.parent / "sip" / "scenarios"
PHONE_IP, ROUTER_IN = "192.168.77.2", "192.168.77.1"
ROUTER_OUT, SERVER_IP = "198.51.100.1", "198.51.100.2"
PHONE_PORT = 5072


def _veth(ns_a: str, if_a: str, ns_b: str, if_b: str) -> None:
    with pyroute2.NetNS(ns_a) as ns:
        ns.link("add", ifname=if_a, kind="veth", peer=if_b)
        ns.link("set", index=ns.link_lookup(ifname=if_b)[0], net_ns_fd=ns_b)


def _up(ns_name: str, ifname: str, address: str | None = None, gateway: str | None = None) -> None:
    with pyroute2.NetNS(ns_name) as ns:
        idx = ns.link_lookup(ifname=ifname)[0]
        if address:
            ns.addr("add", index=idx, address=address, prefixlen=24)
        ns.link("set", index=idx, state="up")
        if gateway:
            ns.route("add", dst="0.0.0.0/0", gateway=gateway)


def _in_ns(ns_name: str, *cmd: str) -> None:
    subprocess.run(["ip", "netns", "exec", ns_name, *cmd], check=True, capture_output=True)


@pytest.fixture
def nat_topology():
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    if not shutil.which("iptables"):
        pytest.skip("iptables is not installed")
    tag = f"{os.getpid() % 100000}"
    names = {"phone": f"h4phone{tag}", "router": f"h4rtr{tag}", "server": f"h4srv{tag}"}
    made = []
    try:
        for name in names.values():
            pyroute2.netns.create(name)
            made.append(name)
    except Exception as exc:
        for name in made:
            pyroute2.netns.remove(name)
        pytest.skip(f"cannot create network namespaces: {exc}")
    try:
        _veth(names["router"], "rin", names["phone"], "eth0")
        _veth(names["router"], "rout", names["server"], "eth0")
        for name in names.values():
            _up(name, "lo")
        _up(names["phone"], "eth0", PHONE_IP, gateway=ROUTER_IN)
        _up(names["router"], "rin", ROUTER_IN)
        _up(names["router"], "rout", ROUTER_OUT)
        _up(names["server"], "eth0", SERVER_IP)
        _in_ns(names["router"], "sysctl", "-qw", "net.ipv4.ip_forward=1")
        _in_ns(names["router"], "iptables", "-t", "nat", "-A", "POSTROUTING", "-o", "rout",
               "-j", "MASQUERADE")
        yield names
    finally:
        for name in made:
            try:
                pyroute2.netns.remove(name)
            except Exception:
                pass


def test_phone_behind_nat(nat_topology, tmp_path):
    phone_ns = ["ip", "netns", "exec", nat_topology["phone"]]
    srv = HpbxServer(tmp_path / "srv", users=[("natphone", "natphone-pw")], host=SERVER_IP,
                     wrap=["ip", "netns", "exec", nat_topology["server"]],
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
