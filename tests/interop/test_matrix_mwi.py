"""The interop matrix's MWI column (issue 18 x issue 11, RFC 3842): the client subscribes to its
own mailbox (Event: message-summary) and shows what hpbx reports while a message is left,
heard and deleted. The message is real: a baresip caller (its tone file as microphone) calls
the client's internal number, the client does not answer (baresip: answermode manual, so it
rings for the 2 s mailbox timeout; SIPp: not registered, so the mailbox answers at once), the
mailbox records the caller, and the caller hangs up. "Heard" and "deleted" are the admin's
mailbox.mark / mailbox.delete (the DTMF menu is tested in tests/mailbox). Each NOTIFY must come
within 2 s of the change.

baresip 1.0 (module mwi, account mwi=yes) reports each NOTIFY as an MWI_NOTIFY event with the
body; linphone-daemon 5.1 exposes no MWI (no command or event for message-summary); SIPp runs
tests/mailbox/scenarios/mwi_watch.xml, which checks each body. The cells land in the same
table as test_matrix.py's (conftest collects every test with client/feature parameters)."""
from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from callrig import CallRig, user
from clients import Baresip
from harness import have_sipp, reserved_pair, sipp_port

MBX_SCEN = Path(__file__).resolve().parent.parent / "mailbox" / "scenarios"
CLIENTS = ("baresip", "linphone", "sipp")
NUM = {"baresip": "2601", "linphone": "2602", "sipp": "2603"}
MAILBOX = '[users.mailbox]\nenabled = true\ntimeout = 2\nkeep = true\n'
TENANT = ('[tenant]\nname = "mwimx"\n'
          + "".join(user(f"mwi{c[:3]}", NUM[c]) + MAILBOX for c in CLIENTS)
          + user("mwiref", "2699"))


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    r = CallRig(tmp_path_factory.mktemp("mwimatrix"), TENANT)
    r.start()
    yield r
    r.stop()


def _leave_message(rig, tmp: Path, number: str) -> float:
    """A baresip caller reaches ``number``'s mailbox and speaks 3 s; returns when the message
    was left (time.time())."""
    ref = Baresip(tmp / "ref", "mwiref", "mwiref-pw", rig.target, sip_port=reserved_pair(), tone=800)
    try:
        ref.wait_event("REGISTER_OK", timeout=15)
        ref.command("dial", f"sip:{number}@{rig.target}")
        ref.wait_event("CALL_ESTABLISHED", timeout=15)
        deadline = time.monotonic() + 20
        # the greeting plays, then the beep, then the recorder runs
        while rig.admin("stats.get", layer="media")["media"]["recorders"] < 1:
            assert time.monotonic() < deadline, "the mailbox never started recording"
            time.sleep(0.1)
        time.sleep(3.0)
        ref.command("hangup")
        ref.wait_event("CALL_CLOSED", timeout=10)
    finally:
        ref.close()
    owner = f"mwi{[c for c in CLIENTS if NUM[c] == number][0][:3]}"
    deadline = time.monotonic() + 10
    while not (msgs := rig.admin("mailbox.list", user=owner)):
        assert time.monotonic() < deadline, "no message kept"
        time.sleep(0.1)
    [m] = msgs
    assert m["state"] == "new" and m["duration_ms"] >= 2000, m
    return time.time()


def _summary(ev: dict) -> tuple[str, str]:
    body = ev.get("param", "") or ""
    waiting = re.search(r"Messages-Waiting:\s*(\w+)", body, re.I)
    voice = re.search(r"Voice-Message:\s*(\d+/\d+)", body, re.I)
    return (waiting.group(1).lower() if waiting else "", voice.group(1) if voice else "")


def _next_mwi(phone: Baresip, timeout: float = 2.0) -> tuple[tuple[str, str], float]:
    ev = phone.wait_event("MWI_NOTIFY", timeout=timeout)
    return _summary(ev), time.time()


@pytest.mark.parametrize("feature", ["mwi"])
@pytest.mark.parametrize("client", CLIENTS)
def test_interop_mwi(rig, tmp_path, client, feature):
    owner = f"mwi{client[:3]}"
    if client == "linphone":
        pytest.skip("not supported by the client: linphone-daemon 5.1 has no command or event "
                    "for message-summary (MWI)")
    if client == "sipp":
        if not have_sipp():
            pytest.skip("sipp is not installed (sip-tester)")
        watcher = rig.sipp(str(MBX_SCEN / "mwi_watch.xml"), service=NUM[client], port=sipp_port(),
                           timeout=60, extra=["-au", owner, "-ap", f"{owner}-pw", "-key", "watcher", owner],
                           name="mwi-sipp")
        time.sleep(1.0)  # subscribed (a message left earlier would only change the first NOTIFY)
        _leave_message(rig, tmp_path, NUM[client])
        [m] = rig.admin("mailbox.list", user=owner)
        time.sleep(0.5)
        rig.admin("mailbox.mark", user=owner, id=m["id"], state="old")
        time.sleep(0.5)
        rig.admin("mailbox.delete", user=owner, id=m["id"])
        res = watcher.finish()
        assert res.successful == 1, res.describe() + rig.server.log()
        rig.assert_idle()
        return
    phone = Baresip(tmp_path / owner, owner, f"{owner}-pw", rig.target, sip_port=reserved_pair(),
                    answermode="manual", mwi=True)
    try:
        phone.wait_event("REGISTER_OK", timeout=15)
        first, _ = _next_mwi(phone, timeout=10)  # the subscription's first NOTIFY: empty box
        assert first == ("no", "0/0"), first
        left = _leave_message(rig, tmp_path, NUM[client])
        got, at = _next_mwi(phone, timeout=5)
        assert got == ("yes", "1/0") and at - left < 2.0, (got, at - left)
        [m] = rig.admin("mailbox.list", user=owner)
        changed = time.time()
        rig.admin("mailbox.mark", user=owner, id=m["id"], state="old")
        got, at = _next_mwi(phone)
        assert got == ("no", "0/1") and at - changed < 2.0, (got, at - changed)
        changed = time.time()
        rig.admin("mailbox.delete", user=owner, id=m["id"])
        got, at = _next_mwi(phone)
        assert got == ("no", "0/0") and at - changed < 2.0, (got, at - changed)
    finally:
        phone.close()
    rig.assert_idle()
