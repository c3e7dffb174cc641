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
from harness import HpbxServer, REPO, reserved_pair, reserved_port


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
        with Baresip(tmp_path / "alice", "alice", "alice-secret", target, sip_port=reserved_pair(),
                     tone=440) as alice, \
             Baresip(tmp_path / "bob", "bob", "bob-secret", target, sip_port=reserved_pair(),
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


def test_two_baresip_phones_meet_in_a_conference_room_on_the_shipped_defaults(tmp_path):
    """A conference number added over the admin socket to the shipped demo tenant: alice and bob
    (baresip 1.0) dial it, type the PIN as RFC 4733 digits (baresip's sndcode), join the room
    and hear each other mixed; the room lists both; hanging up empties it."""
    srv = HpbxServer(tmp_path / "srv")
    sip_port = srv.port
    srv.config, _ = shipped_config(srv.dir, sip_port, 10000 + (sip_port % 90) * 100)
    with srv:
        from hpbx.admin.client import AdminClient
        with AdminClient(str(srv.dir / "hpbx.sock"), timeout=5) as admin:
            admin.call("number.create", {"tenant": "demo", "number": "0441234599", "usage": "conference",
                                         "pin": "4711"})
        target = srv.sip_target

        def participants():
            with AdminClient(str(srv.dir / "hpbx.sock"), timeout=5) as admin:
                try:
                    return admin.call("conference.participants", {"tenant": "demo", "room": "0441234599"})
                except Exception:
                    return []

        with Baresip(tmp_path / "alice", "alice", "alice-secret", target, sip_port=reserved_pair(),
                     tone=440) as alice, \
             Baresip(tmp_path / "bob", "bob", "bob-secret", target, sip_port=reserved_pair(),
                     tone=1000) as bob:
            for phone, count in ((alice, 1), (bob, 2)):
                assert phone.wait_event("REGISTER_OK")["param"].startswith("200")
                phone.command("dial", f"sip:0441234599@{target}")
                phone.wait_event("CALL_ESTABLISHED", timeout=10)
                time.sleep(1.0)  # the PIN prompt and beep
                for d in "4711#":
                    phone.command("sndcode", d)
                    time.sleep(0.25)
                deadline = time.monotonic() + 8
                while len(participants()) < count and time.monotonic() < deadline:
                    time.sleep(0.2)
                assert len(participants()) == count, (participants(), srv.log())
            assert abs(wait_heard(alice, 1000) - 1000) <= 20, alice.received_wavs()
            assert abs(wait_heard(bob, 440) - 440) <= 20, bob.received_wavs()
            alice.command("hangup")
            bob.command("hangup")
            deadline = time.monotonic() + 5
            while participants() and time.monotonic() < deadline:
                time.sleep(0.2)
            assert participants() == []
