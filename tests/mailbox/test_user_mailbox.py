"""User mailbox end to end (issue 11, FEATURES 8.2) with real peers: anna's mailbox (timeout
2 s, PIN) and her MWI subscription (a SIPp subscriber); bob's internal call rings anna's SIPp
phone, is not answered within the timeout, and leaves a message (the test's RTP tones): it is
kept on the server and mailed (aiosmtpd), and the subscriber gets "Messages-Waiting: yes,
1/0" within 2 s. anna dials *97 and hears bob's tone played back; the message is then old
(NOTIFY 0/1). carl dials *98 + anna's number + PIN and deletes it by DTMF (NOTIFY 0/0). A call
that reaches anna through a public number's dial plan never reaches her mailbox."""
from __future__ import annotations

import re
import time
from datetime import datetime

import numpy as np
import pytest

from mailrig import wait_beep, SCEN, Caller, dominant_freq, wait_answered, wav_of
from harness import have_sipp, reserved_port, sipp_port
from callrig import number, trunk, user
from media_peer import decode

pytestmark = [pytest.mark.sipp,
              pytest.mark.skipif(not have_sipp(), reason="sipp is not installed (sip-tester)")]

CARRIER = reserved_port()
TENANT = ('[tenant]\nname = "mbx"\n' + trunk("carrier", CARRIER)
          + user("anna", internal="21")
          + '[users.mailbox]\nenabled = true\ntimeout = 2\npin = "4321"\nemail = "anna@example.com"\n'
          + user("bob", internal="22") + user("carl", internal="23")
          + user("dora", internal="24", flags=("dnd",))
          + '[users.mailbox]\nenabled = true\nmwi_unsolicited = true\nkeep = true\n'
          + user("eve", internal="25") + '[users.mailbox]\nenabled = true\nkeep = true\n'
          + number("044555400", (2, ["user:anna"])))



def _heard(caller: Caller, seconds: float) -> np.ndarray:
    pkts = [p for p in caller.peer.recv(timeout=seconds) if p.pt == 8]
    return np.concatenate([decode("PCMA", p.payload) for p in pkts]) if pkts else np.zeros(0)


def _wait_for_tone(caller: Caller, freq: float, timeout: float = 25.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pcm = _heard(caller, 0.4)
        if len(pcm) >= 1600 and np.sqrt(np.mean(pcm ** 2)) > 1000 and abs(dominant_freq(pcm) - freq) < 20:
            return
    raise AssertionError(f"{freq} Hz never reached the caller")


def _notify_times(log_text: str, body_re: str) -> list[float]:
    """Wall-clock times SIPp logged for received NOTIFYs whose text matches ``body_re``."""
    out = []
    for block in re.split(r"\n-{10,} ", log_text):
        m = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+)\s+\S+ message received", block)
        if m and "\nNOTIFY sip:" in block and re.search(body_re, block):
            out.append(datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f").timestamp())
    return out


def test_internal_call_not_answered_leaves_a_message_mwi_listen_and_delete_by_dtmf(rig, sink):
    watcher_port = sipp_port()
    watcher = rig.sipp(str(SCEN / "mwi_watch.xml"), service="21", port=watcher_port, timeout=60,
                       extra=["-au", "anna", "-ap", "anna-pw", "-key", "watcher", "anna"], name="mwi")
    phone = rig.phone("anna", "call_uas_ring.xml", timeout=30)
    bob = Caller()
    try:
        # bob calls anna's internal number: her phone rings 2 s (the mailbox timeout), then the mailbox
        call = rig.sipp(str(SCEN / "uac_auth_rtp.xml"), service="21", timeout=30,
                        extra=["-au", "bob", "-ap", "bob-pw", "-key", "rtp_port", str(bob.port)], name="bob")
        t0 = time.monotonic()
        info = wait_answered(rig, "21")
        assert info["service"] == "mailbox" and time.monotonic() - t0 >= 1.8, info
        assert phone.finish().received("CANCEL"), "anna's phone rang and was cancelled"
        port = info["media"]["a"]["port"]
        wait_beep(bob)
        bob.tones(port, [700.0] * 3)
        bob.digit(port, "#")
        left_at = time.time()
        assert call.finish().successful == 1, rig.server.log()
    finally:
        bob.close()
    # kept and mailed
    [msg] = sink.wait_count(1)
    assert msg["X-Envelope-To"] == "anna@example.com" and "mailbox 21" in msg["Subject"], msg["Subject"]
    assert wav_of(msg)[1][:4] == b"RIFF"
    deadline = time.monotonic() + 5
    while not (kept := rig.admin("mailbox.list", user="anna")) and time.monotonic() < deadline:
        time.sleep(0.1)
    [m] = kept
    assert m["state"] == "new" and m["caller"] == "22" and 2800 <= m["duration_ms"] <= 3600, m
    assert rig.admin("mailbox.counts", user="anna") == {"username": "anna", "new": 1, "old": 0}

    # anna listens from her own phone: the message is bob's tone; '#' ends; it is old now
    anna = Caller(ssrc=0x414E4E41)
    try:
        own = rig.sipp(str(SCEN / "uac_auth_rtp.xml"), service="*97", timeout=30,
                       extra=["-au", "anna", "-ap", "anna-pw", "-key", "rtp_port", str(anna.port)], name="anna97")
        port = wait_answered(rig, "*97")["media"]["a"]["port"]
        _wait_for_tone(anna, 700.0)
        heard_at = time.time()
        anna.digit(port, "#")
        assert own.finish().successful == 1, rig.server.log()
    finally:
        anna.close()
    assert rig.admin("mailbox.counts", user="anna") == {"username": "anna", "new": 0, "old": 1}

    # carl logs into anna's mailbox with her PIN and deletes the message with 7
    carl = Caller(ssrc=0x4341524C)
    try:
        other = rig.sipp(str(SCEN / "uac_auth_rtp.xml"), service="*9821", timeout=30,
                         extra=["-au", "carl", "-ap", "carl-pw", "-key", "rtp_port", str(carl.port)], name="carl98")
        port = wait_answered(rig, "*9821")["media"]["a"]["port"]
        time.sleep(0.3)
        for d in "4321#":
            carl.digit(port, d)
        _wait_for_tone(carl, 700.0)
        deleted_at = time.time()
        carl.digit(port, "7")
        assert other.finish().successful == 1, rig.server.log()
    finally:
        carl.close()
    assert rig.admin("mailbox.list", user="anna") == []

    res = watcher.finish()
    assert res.successful == 1, res.describe() + rig.server.log()
    log_text = res.messages
    for body, since in (("Voice-Message: 1/0", left_at), ("Voice-Message: 0/1", heard_at),
                        ("Messages-Waiting: no.*\\s.*\\s*Voice-Message: 0/0", deleted_at)):
        times = [t for t in _notify_times(log_text, body) if t >= since - 0.5]
        assert times and times[0] - since < 2.0, (body, since, _notify_times(log_text, body))
    rig.assert_idle()


def test_dial_plan_call_to_the_user_never_reaches_her_mailbox(rig, sink):
    before = len(sink.messages())
    res = rig.call("call_uac_fail.xml", "044555400", port=CARRIER, timeout=20)
    assert res.successful == 1 and res.received("SIP/2.0 480"), res.describe()
    cdr = rig.cdrs(count=1)[-1]
    assert cdr["called"] == "044555400" and not cdr.get("service") and not cdr["answer"], cdr
    time.sleep(1.0)
    assert rig.admin("mailbox.list", user="anna") == [] and len(sink.messages()) == before
    rig.assert_idle()


def test_mailbox_login_with_a_wrong_pin_is_refused(rig):
    carl = Caller(ssrc=0x43)
    try:
        other = rig.sipp(str(SCEN / "uac_auth_rtp.xml"), service="*9821", timeout=40,
                         extra=["-au", "carl", "-ap", "carl-pw", "-key", "rtp_port", str(carl.port)], name="carlbad")
        info = wait_answered(rig, "*9821")
        port = info["media"]["a"]["port"]
        time.sleep(0.3)
        for _ in range(3):
            for d in "1111#":
                carl.digit(port, d)
            time.sleep(2.0)  # the congestion tone after a wrong PIN
            if other.proc.poll() is not None:
                break
        assert other.finish().successful == 1, rig.server.log()
    finally:
        carl.close()
    deadline = time.monotonic() + 5  # CDRs are written in batches
    while not (mine := [c for c in rig.cdrs() if c["call_id"] == info["call_id"]]):
        assert time.monotonic() < deadline, "no CDR of the call"
        time.sleep(0.2)
    assert mine[-1]["service_result"] == "wrong mailbox or PIN", mine


def test_busy_user_mailbox_and_unsolicited_mwi_to_her_registered_phone(rig, sink):
    """dora has DND (busy at once) and unsolicited MWI: bob's call goes straight to her mailbox
    (no e-mail address: kept only), and her registered phone gets a NOTIFY without SUBSCRIBE."""
    before = len(sink.messages())
    phone = rig.phone("dora", str(SCEN / "uas_mwi_unsolicited.xml"), timeout=30)
    bob = Caller(ssrc=0x626F62)
    try:
        call = rig.sipp(str(SCEN / "uac_auth_rtp.xml"), service="24", timeout=30,
                        extra=["-au", "bob", "-ap", "bob-pw", "-key", "rtp_port", str(bob.port)], name="bob24")
        port = wait_answered(rig, "24")["media"]["a"]["port"]
        wait_beep(bob)
        bob.tones(port, [550.0] * 3)
        bob.digit(port, "#")
        left_at = time.monotonic()
        assert call.finish().successful == 1, rig.server.log()
    finally:
        bob.close()
    res = phone.finish()
    assert res.successful == 1, res.describe() + rig.server.log()
    assert time.monotonic() - left_at < 5
    [m] = rig.admin("mailbox.list", user="dora")
    assert m["state"] == "new" and m["caller"] == "22"
    got = rig.admin("mailbox.get", user="dora", id=m["id"])
    import base64
    import io
    import wave
    with wave.open(io.BytesIO(base64.b64decode(got["wav_base64"]))) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64)
    assert abs(dominant_freq(pcm) - 550) < 20
    time.sleep(1.0)
    assert len(sink.messages()) == before, "no address: nothing mailed"
    assert rig.admin("stats.get", layer="voicemail")["voicemail"]["unsolicited_sent"] >= 1
    rig.assert_idle()


def _leave(rig, who: str, to: str, freq: float) -> None:
    """``who`` calls ``to`` (no device online: the mailbox answers at once) and leaves 2.5 s
    of ``freq``."""
    c = Caller(ssrc=hash(who) & 0xFFFF)
    try:
        call = rig.sipp(str(SCEN / "uac_auth_rtp.xml"), service=to, timeout=40,
                        extra=["-au", who, "-ap", f"{who}-pw", "-key", "rtp_port", str(c.port)], name=f"{who}-{to}")
        port = wait_answered(rig, to)["media"]["a"]["port"]
        wait_beep(c)
        c.tones(port, [freq] * 2)
        c.tones(port, [freq], seg_ms=500)
        c.digit(port, "#")
        assert call.finish().successful == 1, rig.server.log()
    finally:
        c.close()


def _wait_without(caller: Caller, freq: float, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pcm = _heard(caller, 0.4)
        if len(pcm) < 1600 or np.sqrt(np.mean(pcm ** 2)) < 300 or abs(dominant_freq(pcm) - freq) > 20:
            return
    raise AssertionError(f"{freq} Hz never stopped")


def test_menu_next_previous_repeat_save_delete_by_dtmf(rig):
    """eve has two new messages (bob 700 Hz, then carl 900 Hz). From her phone (*97): the
    first is bob's; 6 next (carl's), 4 previous (bob's), 5 repeat (bob's again, after its
    envelope), 9 save (then carl's), 7 delete. Left: bob's, old."""
    import base64
    import io
    import wave
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:  # a short greeting, so that leaving the messages is quick
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes((np.sin(2 * np.pi * 400 * np.arange(2400) / 8000) * 8000).astype("<i2").tobytes())
    ann = rig.admin("announcement.create", tenant="mbx", name="eve's greeting",
                    audio=base64.b64encode(buf.getvalue()).decode())
    rig.admin("user.update", username="eve", mailbox={"enabled": True, "keep": True, "greeting": ann["id"]})
    _leave(rig, "bob", "25", 700.0)
    _leave(rig, "carl", "25", 900.0)
    deadline = time.monotonic() + 5
    while len(rig.admin("mailbox.list", user="eve")) < 2:
        assert time.monotonic() < deadline, rig.admin("mailbox.list", user="eve")
        time.sleep(0.1)
    assert rig.admin("mailbox.counts", user="eve") == {"username": "eve", "new": 2, "old": 0}
    eve = Caller(ssrc=0x455645)
    try:
        own = rig.sipp(str(SCEN / "uac_auth_rtp.xml"), service="*97", timeout=90,
                       extra=["-au", "eve", "-ap", "eve-pw", "-key", "rtp_port", str(eve.port)], name="eve97")
        port = wait_answered(rig, "*97")["media"]["a"]["port"]
        for want, key in ((700.0, "6"), (900.0, "4"), (700.0, "5"), (700.0, "9"), (900.0, "7")):
            _wait_for_tone(eve, want)
            eve.digit(port, key)
            eve.peer.drain()
            _wait_without(eve, want)  # the message stopped at the key (barge-in)
        res = own.finish()
        assert res.successful == 1, res.describe() + rig.server.log()
    finally:
        eve.close()
    [kept] = rig.admin("mailbox.list", user="eve")
    assert kept["caller"] == "22" and kept["state"] == "old", kept
    assert rig.admin("mailbox.counts", user="eve") == {"username": "eve", "new": 0, "old": 1}
    rig.assert_idle()
