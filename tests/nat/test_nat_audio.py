"""Audio through NAT (issue 5): two phones, each in its own namespace behind its own
masquerading router, with private addresses in their SDP, call each other through hpbx; the
relay latches onto the routers' public addresses and RTP arrives at both ends.

    phone A 192.168.77.2 -- router A (MASQUERADE) 198.51.100.1 --+
                                                                 +-- hpbx 198.51.100.2 / 203.0.113.2
    phone B 192.168.88.2 -- router B (MASQUERADE) 203.0.113.1 ---+

Each phone is SIPp for the signalling plus ``rtpprobe.py`` (the same namespace, the port its
SDP names) that sends RTP to the relay port from call.list and counts what comes back.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "sip"))
from harness import SippRun, have_sipp, run_sipp  # noqa: E402
from callrig import SCEN, CallRig  # noqa: E402

pyroute2 = pytest.importorskip("pyroute2")
pytestmark = [pytest.mark.netns, pytest.mark.sipp,
              pytest.mark.skipif(not have_sipp(), reason="sipp is not installed (sip-tester)")]

SERVER_A, SERVER_B = "198.51.100.2", "203.0.113.2"
SITES = {  # phone, router inside, router outside, server side
    "a": ("192.168.77.2", "192.168.77.1", "198.51.100.1", SERVER_A),
    "b": ("192.168.88.2", "192.168.88.1", "203.0.113.1", SERVER_B),
}
RTP_PORT = 7078
TENANT = """
[tenant]
name = "natco"

[[users]]
username = "nata"
sip_password = "nata-pw"
internal_number = "301"

[[users]]
username = "natb"
sip_password = "natb-pw"
internal_number = "302"
"""


def _veth(ns_a, if_a, ns_b, if_b):
    with pyroute2.NetNS(ns_a) as ns:
        ns.link("add", ifname=if_a, kind="veth", peer=if_b)
        ns.link("set", index=ns.link_lookup(ifname=if_b)[0], net_ns_fd=ns_b)


def _up(ns_name, ifname, address=None, gateway=None):
    with pyroute2.NetNS(ns_name) as ns:
        idx = ns.link_lookup(ifname=ifname)[0]
        if address:
            ns.addr("add", index=idx, address=address, prefixlen=24)
        ns.link("set", index=idx, state="up")
        if gateway:
            ns.route("add", dst="0.0.0.0/0", gateway=gateway)


def _exec(ns_name):
    return ["ip", "netns", "exec", ns_name]


@pytest.fixture
def two_nats():
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    if not shutil.which("iptables"):
        pytest.skip("iptables is not installed")
    tag = f"{os.getpid() % 100000}"
    names = {"srv": f"h6srv{tag}", "pa": f"h6pa{tag}", "ra": f"h6ra{tag}", "pb": f"h6pb{tag}",
             "rb": f"h6rb{tag}"}
    made = []
    try:
        for name in names.values():
            pyroute2.netns.create(name)
            made.append(name)
        for name in names.values():
            _up(name, "lo")
        for site, server_if in (("a", "eth0"), ("b", "eth1")):
            phone_ip, r_in, r_out, server_ip = SITES[site]
            phone, router = names["p" + site], names["r" + site]
            _veth(router, "rin", phone, "eth0")
            _veth(router, "rout", names["srv"], server_if)
            _up(phone, "eth0", phone_ip, gateway=r_in)
            _up(router, "rin", r_in)
            _up(router, "rout", r_out, gateway=server_ip)
            _up(names["srv"], server_if, server_ip)
            subprocess.run(_exec(router) + ["sysctl", "-qw", "net.ipv4.ip_forward=1"], check=True)
            subprocess.run(_exec(router) + ["iptables", "-t", "nat", "-A", "POSTROUTING", "-o", "rout",
                                            "-j", "MASQUERADE"], check=True)
        yield names
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot build the namespaces: {exc}")
    finally:
        for name in made:
            try:
                pyroute2.netns.remove(name)
            except Exception:
                pass


def test_two_phones_behind_nat_hear_each_other(two_nats, tmp_path):
    rig = CallRig(tmp_path / "srv", TENANT, host=SERVER_A, wrap=_exec(two_nats["srv"]))
    rig.start()
    procs = []
    try:
        target = rig.target
        phone_a, phone_b = SITES["a"][0], SITES["b"][0]
        reg = run_sipp(SCEN / "register_auth.xml", target, tmp_path, inf=[("natb", "natb-pw", "natb", 300)],
                       wrap=_exec(two_nats["pb"]), local_ip=phone_b, local_port=5072)
        assert reg.returncode == 0 and reg.successful == 1, reg.describe()
        callee = SippRun(SCEN / "call_uas_extmedia.xml", target, tmp_path, wrap=_exec(two_nats["pb"]),
                         local_ip=phone_b, local_port=5072, timeout=20, name="natb",
                         extra=["-key", "rtp_port", str(RTP_PORT), "-mi", phone_b, "-d", "100"]).start()
        procs.append(callee)
        time.sleep(0.2)
        caller = SippRun(SCEN / "call_uac_extmedia.xml", target, tmp_path, wrap=_exec(two_nats["pa"]),
                         local_ip=phone_a, local_port=5074, timeout=20, name="nata",
                         extra=["-s", "302", "-au", "nata", "-ap", "nata-pw", "-key", "rtp_port",
                                str(RTP_PORT), "-mi", phone_a, "-d", "5000"]).start()
        procs.append(caller)
        calls = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            calls = [c for c in rig.admin("call.list") if c["state"] == "answered"]
            if calls:
                break
            time.sleep(0.1)
        assert calls, rig.server.log()
        media = calls[0]["media"]
        # the SDP the relay was given names the private addresses
        assert media["a"]["sdp_peer"][0] == phone_a and media["b"]["sdp_peer"][0] == phone_b, media
        probes = {}
        for site, leg in (("a", "a"), ("b", "b")):
            probes[site] = subprocess.Popen(
                _exec(two_nats["p" + site]) + [sys.executable, str(HERE / "rtpprobe.py"), str(RTP_PORT),
                                                SERVER_A, str(media[leg]["port"]), "100"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        got = {}
        for site, proc in probes.items():
            out, err = proc.communicate(timeout=15)
            assert proc.returncode == 0, err.decode()
            got[site] = json.loads(out)
        # each end received most of what the other sent, from the relay's public address
        for site in ("a", "b"):
            assert got[site]["sent"] == 100 and got[site]["received"] >= 80, got
            assert all(s.startswith(SERVER_A + ":") for s in got[site]["sources"]), got
        stats = [c for c in rig.admin("call.list") if c["call_id"] == calls[0]["call_id"]][0]["media"]
        # the relay latched onto the routers' public addresses, not the private SDP ones
        assert stats["a"]["peer"][0] == SITES["a"][2] and stats["a"]["latched"], stats
        assert stats["b"]["peer"][0] == SITES["b"][2] and stats["b"]["latched"], stats
        res_a, res_b = caller.wait(), callee.wait()
        assert res_a.successful == 1 and res_b.successful == 1, res_a.describe() + res_b.describe()
        idle = rig.wait_idle()
        assert idle["calls_active"] == 0 and idle["media_pairs_used"] == 0, idle
    finally:
        for p in procs:
            p.kill()
        rig.stop()
