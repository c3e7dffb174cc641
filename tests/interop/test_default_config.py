"""The shipped configuration works with a real phone (issue 18): a server started on
config/hpbx.toml as shipped (only its ports, socket and store paths moved so that the test runs
beside anything else) and its demo tenant; two baresip 1.0 phones (Debian baresip-core, which
gives up on a 401 offering MD5 and SHA-256 together) register as alice and bob, alice calls
bob's internal number, and each hears the other's tone through the relay."""
from __future__ import annotations

import time
import tomllib

import tomli_w

from clients import Baresip
from harness import REPO, HpbxServer, reserved_port


def shipped_config(directory, sip_port: int, rtp_base: int):
    """config/hpbx.toml with ports and paths moved; every other setting as shipped."""
    cfg = tomllib.loads((REPO / "config" / "hpbx.toml").read_text())
    cfg["sip"]["listen"] = [item.rsplit(":", 1)[0] + f":{sip_port}" for item in cfg["sip"]["listen"]]
    cfg["rtp"]["ports"] = f"{rtp_base}-{rtp_base + 99}"
    cfg["admin"]["socket"] = str(directory / "hpbx.sock")
    cfg["store"]["path"] = str(directory / "hpbx.sqlite3")
    cfg["provision"]["files"] = [str(REPO / f) for f in cfg["provision"]["files"]]
    path = directory / "hpbx.toml"
    path.write_text(tomli_w.dumps(cfg))
    return path, cfg


def wait_heard(phone, freq, timeout=8.0):
    deadline = time.monotonic() + timeout
    heard = 0.0
    while time.monotonic() < deadline:
        heard = phone.heard()
        if abs(heard - freq) <= 20:
            return heard
        time.sleep(0.3)
    return heard


def test_baresip_registers_and_calls_on_the_shipped_defaults(tmp_path):
    srv = HpbxServer(tmp_path / "srv")
    sip_port = srv.port
    srv.config, cfg = shipped_config(srv.dir, sip_port, 10000 + (sip_port % 90) * 100)
    assert "digest_algorithms" not in cfg["sip"], "the shipped file must rely on the default"
    with srv:
        target = srv.sip_target
        with Baresip(tmp_path / "alice", "alice", "alice-secret", target, sip_port=reserved_port(),
                     tone=440) as alice, \
             Baresip(tmp_path / "bob", "bob", "bob-secret", target, sip_port=reserved_port(),
                     tone=1000) as bob:
            assert alice.wait_event("REGISTER_OK")["param"].startswith("200")
            assert bob.wait_event("REGISTER_OK")["param"].startswith("200")
            alice.command("dial", f"sip:101@{target}")
            alice.wait_event("CALL_ESTABLISHED", timeout=10)
            bob.wait_event("CALL_ESTABLISHED")
            assert abs(wait_heard(alice, 1000) - 1000) <= 20, alice.received_wavs()
            assert abs(wait_heard(bob, 440) - 440) <= 20, bob.received_wavs()
            alice.command("hangup")
            bob.wait_event("CALL_CLOSED")
            alice.wait_event("CALL_CLOSED")
