"""A blind transfer to an unreachable user with a mailbox (issue 11, FEATURES 8.2): tara's SIPp
phone answers a trunk call and REFERs it to uma (no device online); the transferor gets NOTIFY
"100 Trying", NOTIFY "200 OK" and a BYE, the caller (the test's RTP socket) hears the beep of
uma's mailbox in the same dialog and leaves a message that is kept and mailed (aiosmtpd). The
same when uma's phone is online but answers 486 Busy Here."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from mailrig import wait_beep, Caller, SmtpSink, mail_rig, wait_answered
from harness import have_sipp, reserved_port
from callrig import number, trunk, user

pytestmark = [pytest.mark.sipp,
              pytest.mark.skipif(not have_sipp(), reason="sipp is not installed (sip-tester)")]

CARRIER = reserved_port()
REFER = Path(__file__).parent.parent / "interop" / "scenarios" / "uas_refer.xml"
TENANT = ('[tenant]\nname = "xfer"\n' + trunk("carrier", CARRIER) + user("tara", internal="27")
          + user("uma", internal="26")
          + '[users.mailbox]\nenabled = true\nemail = "uma@example.com"\n'
          + number("044555900", (10, ["user:tara"])))


@pytest.mark.parametrize("target", ["unreachable", "busy"])
def test_transfer_to_an_unreachable_or_busy_user_reaches_her_mailbox(tmp_path, target):
    sink = SmtpSink(tmp_path / "inbox").start()
    rig = mail_rig(tmp_path / "srv", TENANT, sink.port)
    rig.start()
    caller = Caller()
    try:
        # busy: uma's SIPp phone is registered and answers the transfer's INVITE 486
        uma = rig.phone("uma", "call_uas_busy.xml", timeout=30) if target == "busy" else None
        tara = rig.phone("tara", str(REFER), extra=["-key", "refer_to", "26"], timeout=30)
        sipp = rig.sipp("call_uac_service.xml", service="044555900", port=CARRIER, timeout=30,
                        extra=["-key", "rtp_port", str(caller.port)], name="xfer")
        res = tara.finish()
        assert res.successful == 1, res.describe() + rig.server.log()  # NOTIFY 100, NOTIFY 200, BYE
        call = wait_answered(rig, "26")
        assert call["service"] == "mailbox", call
        if uma is not None:
            busy = uma.finish()
            assert busy.successful == 1 and busy.received("INVITE sip:uma"), busy.describe()
        port = call["media"]["a"]["port"]
        wait_beep(caller)
        caller.tones(port, [750.0] * 3)
        caller.digit(port, "#")
        assert sipp.finish().successful == 1, rig.server.log()
        [msg] = sink.wait_count(1)
        assert msg["X-Envelope-To"] == "uma@example.com"
        deadline = time.monotonic() + 5
        while not (kept := rig.admin("mailbox.list", user="uma")) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(kept) == 1 and kept[0]["caller"] == "0311112222", kept
        cdrs = [c for c in rig.cdrs(count=2) if c["call_id"] == call["call_id"]]
        assert [c.get("service", "") for c in cdrs] == ["", "mailbox"], cdrs
        assert cdrs[0]["answered_by"] == "tara", cdrs
        rig.assert_idle()
    finally:
        caller.close()
        sink.stop()
        rig.stop()
