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
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "sip"))
from harness import SippRun, have_sipp, run_sipp  # noqa: E402
from callrig import SCEN, CallRig  # noqa: E402
from netns import exec_in, masquerade, namespaces, require_root_and_iptables, up, veth  # noqa: E402
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


@pytest.fixture
def two_nats():
    require_root_and_iptables()
    tag = f"{os.getpid() % 100000}"
    names = {"srv": f"h6srv{tag}", "pa": f"h6pa{tag}", "ra": f"h6ra{tag}", "pb": f"h6pb{tag}",
             "rb": f"h6rb{tag}"}
    with namespaces(names.values()):
        try:
            for site, server_if in (("a", "eth0"), ("b", "eth1")):
                phone_ip, r_in, r_out, server_ip = SITES[site]
                phone, router = names["p" + site], names["r" + site]
                veth(router, "rin", phone, "eth0")
                veth(router, "rout", names["srv"], server_if)
                up(phone, "eth0", phone_ip, gateway=r_in)
                up(router, "rin", r_in)
                up(router, "rout", r_out, gateway=server_ip)
                up(names["srv"], server_if, server_ip)
                masquerade(router, "rout")
        except (OSError, subprocess.CalledProcessError) as exc:
            pytest.skip(f"cannot build the namespaces: {exc}")
        yield names


def test_two_phones_behind_nat_hear_each_other(two_nats, tmp_path):
    rig = CallRig(tmp_path / "srv", TENANT, host=SERVER_A, wrap=exec_in(two_nats["srv"]))
    rig.start()
    procs = []
    try:
        target = rig.target
        phone_a, phone_b = SITES["a"][0], SITES["b"][0]
        reg = run_sipp(SCEN / "register_auth.xml", target, tmp_path, inf=[("natb", "natb-pw", "natb", 300)],
                       wrap=exec_in(two_nats["pb"]), local_ip=phone_b, local_port=5072)
        assert reg.returncode == 0 and reg.successful == 1, reg.describe()
        callee = SippRun(SCEN / "call_uas_extmedia.xml", target, tmp_path, wrap=exec_in(two_nats["pb"]),
                         local_ip=phone_b, local_port=5072, timeout=20, name="natb",
                         extra=["-key", "rtp_port", str(RTP_PORT), "-mi", phone_b, "-d", "100"]).start()
        procs.append(callee)
        time.sleep(0.2)
        caller = SippRun(SCEN / "call_uac_extmedia.xml", target, tmp_path, wrap=exec_in(two_nats["pa"]),
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
                exec_in(two_nats["p" + site]) + [sys.executable, str(HERE / "rtpprobe.py"), str(RTP_PORT),
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
        rig.assert_idle()
    finally:
        for p in procs:
            p.kill()
        rig.stop()
