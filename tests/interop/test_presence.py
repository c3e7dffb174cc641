"""Presence (RFC 3856, PIDF/RPID) end to end: a watcher device SUBSCRIBEs ``Event: presence``
and checks every PIDF NOTIFY; the watched user is a baresip phone that registers, is set to DND
(admin), takes a call from another baresip phone and unregisters. Visibility: same presence
group only (the default group for users with none), hidden users are 404 like unknown ones,
unknown packages 489 (FEATURES 14.1, 14.3)."""
from __future__ import annotations

import re
import time
import xml.etree.ElementTree as ET

import pytest

from clients import Baresip
from harness import header, reserved_pair
from callrig import CallRig, user
from sipdevice import Device

NAMES = {"pia": "541", "pat": "542", "pam": "543", "hid": "544", "dee": "545", "dan": "546"}
TENANT = ('[tenant]\nname = "pres"\n' + "".join(user(n, i) for n, i in NAMES.items()))
PIDF = "{urn:ietf:params:xml:ns:pidf}"
RPID = "{urn:ietf:params:xml:ns:pidf:rpid}"
DM = "{urn:ietf:params:xml:ns:pidf:data-model}"


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    r = CallRig(tmp_path_factory.mktemp("pres"), TENANT)
    r.start()
    for name, groups in (("pia", ["sales"]), ("pat", ["sales"]), ("pam", ["support"]),
                         ("hid", ["sales"])):
        r.admin("user.update", username=name, presence_groups=groups)
    r.admin("user.update", username="hid", flags={"hide_user": True})
    yield r
    r.stop()


def subscribe(dev, number, event="presence"):
    return dev.authed("SUBSCRIBE", f"sip:{number}@{dev.rig.target}",
                      [f"Event: {event}", "Accept: application/pidf+xml", "Expires: 600"])


def pidf(notify: str) -> dict:
    root = ET.fromstring(notify.split("\r\n\r\n", 1)[1])
    person = root.find(f"{DM}person")
    acts = person.find(f"{RPID}activities") if person is not None else None
    return {"entity": root.get("entity"),
            "basic": root.find(f"{PIDF}tuple/{PIDF}status/{PIDF}basic").text,
            "note": root.find(f"{PIDF}tuple/{PIDF}note").text,
            "activities": sorted(a.tag.replace(RPID, "") for a in acts) if acts is not None else []}


def wait_state(dev, note, since: float, timeout=4.0) -> dict:
    """The first presence NOTIFY with ``note`` that arrived after ``since`` (and how soon)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        while dev.notifies:  # those that came in while a response was awaited
            dev.stamped.append((time.monotonic(), dev.notifies.pop(0)))
        for at, n in dev.stamped:
            if at >= since and header(n, "Event") == ["presence"] and pidf(n)["note"] == note:
                return dict(pidf(n), after=at - since, raw=n)
        dev.recv(0.2, want=lambda m: m.startswith("NOTIFY "))
    raise AssertionError(f"no NOTIFY with {note!r}: {[pidf(n)['note'] for _, n in dev.stamped]}")


def test_presence_follows_registration_dnd_and_calls(rig, tmp_path):
    pia = Device(rig, "pia")
    pia.stamped = []
    try:
        t0 = time.monotonic()
        resp = subscribe(pia, NAMES["pat"])
        assert resp.startswith("SIP/2.0 200"), resp
        first = wait_state(pia, "Offline", t0)
        assert first["basic"] == "closed" and first["entity"] == f"sip:{NAMES['pat']}@127.0.0.1"
        assert header(first["raw"], "Content-Type") == ["application/pidf+xml"]
        assert header(first["raw"], "Subscription-State")[0].startswith("active;expires=")
        t = time.monotonic()
        pat = Baresip(tmp_path / "pat", "pat", "pat-pw", rig.target, sip_port=reserved_pair())
        try:
            pat.wait_event("REGISTER_OK")
            up = wait_state(pia, "Available", t)
            assert up["basic"] == "open" and up["activities"] == [] and up["after"] < 2.0, up
            t = time.monotonic()
            rig.admin("user.update", username="pat", flags={"dnd": True})
            dnd = wait_state(pia, "Do not disturb", t)
            assert dnd["activities"] == ["busy"] and dnd["after"] < 2.0, dnd
            rig.admin("user.update", username="pat", flags={"dnd": False})
            wait_state(pia, "Available", t)
            with Baresip(tmp_path / "dee", "dee", "dee-pw", rig.target, sip_port=reserved_pair()) as dee:
                dee.wait_event("REGISTER_OK")
                t = time.monotonic()
                dee.command("dial", f"sip:{NAMES['pat']}@{rig.target}")
                pat.wait_event("CALL_ESTABLISHED")
                busy = wait_state(pia, "On the phone", t)
                assert busy["activities"] == ["busy", "on-the-phone"] and busy["basic"] == "open", busy
                assert busy["after"] < 2.0, busy
                t = time.monotonic()
                dee.command("hangup")
                pat.wait_event("CALL_CLOSED")
                wait_state(pia, "Available", t)
            t = time.monotonic()
        finally:
            pat.close()
        gone = wait_state(pia, "Offline", t, timeout=6.0)  # baresip unregisters when it quits
        assert gone["basic"] == "closed"
    finally:
        pia.close()


def test_presence_visibility_groups_hidden_and_unknown_packages(rig):
    pia, dee = Device(rig, "pia"), Device(rig, "dee")

    def subscriptions():
        stats = rig.admin("stats.get", layer="calls")
        return stats.get("calls", stats)["presence_subscriptions"]
    before = subscriptions()
    try:
        assert subscribe(pia, NAMES["pam"]).startswith(f"SIP/2.0 403 Not in a presence group of {NAMES['pam']}")
        assert subscribe(pia, NAMES["dee"]).startswith("SIP/2.0 403")  # default group vs "sales"
        hidden = subscribe(pia, NAMES["hid"])
        unknown = subscribe(pia, "599")
        assert hidden.startswith("SIP/2.0 404 No such user") and unknown.startswith("SIP/2.0 404 No such user")
        assert subscribe(dee, NAMES["dan"]).startswith("SIP/2.0 200")  # both in the default group
        bad = subscribe(pia, NAMES["pat"], event="message-summary.x")
        assert bad.startswith("SIP/2.0 489") and header(bad, "Allow-Events") == ["dialog, presence, message-summary"], bad
        assert subscriptions() == before + 1  # dee's only
        assert not [n for n in pia.notifies if f"sip:{NAMES['hid']}@" in n]
    finally:
        pia.close()
        dee.close()


def test_baresip_watches_presence(rig, tmp_path):
    """baresip's presence module (contacts with presence=p2p) subscribes to pat and shows what
    hpbx NOTIFYs: Offline, Online once pat's phone registers, Busy during pat's call."""
    uri = f"sip:{NAMES['pat']}@{rig.target}"
    with Baresip(tmp_path / "pia", "pia", "pia-pw", rig.target, sip_port=reserved_pair(),
                 presence_of=(uri,)) as watcher:
        watcher.wait_event("REGISTER_OK")

        def shows(word, timeout=8.0):
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                data = re.sub(r"\x1b\[[0-9;]*m", "", watcher.command("contacts").get("data", ""))
                line = [ln for ln in data.splitlines() if NAMES["pat"] in ln]
                if line and word in line[0]:
                    return line[0]
                time.sleep(0.3)
            raise AssertionError(f"baresip never showed {word}: {data!r}\n{watcher.output()[-2000:]}")
        shows("Offline")
        with Baresip(tmp_path / "pat", "pat", "pat-pw", rig.target, sip_port=reserved_pair()) as pat:
            pat.wait_event("REGISTER_OK")
            shows("Online")
            with Baresip(tmp_path / "dee", "dee", "dee-pw", rig.target, sip_port=reserved_pair()) as dee:
                dee.wait_event("REGISTER_OK")
                dee.command("dial", uri)
                pat.wait_event("CALL_ESTABLISHED")
                shows("Busy")
                dee.command("hangup")
                pat.wait_event("CALL_CLOSED")
            shows("Online")
