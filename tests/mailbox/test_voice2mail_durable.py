"""Voice2Mail messages are never lost (issue 11, "Nothing is lost"): the SMTP server is down
while a message is recorded and comes back later (the message arrives once); hpbx is killed
with SIGKILL in the middle of a recording (after the restart, what was recorded is mailed)."""
from __future__ import annotations

import io
import time
import wave

import numpy as np
import pytest

from mailrig import wait_beep, Caller, SmtpSink, dominant_freq, mail_rig, wait_answered, wav_of
from harness import have_sipp, reserved_port
from callrig import trunk

pytestmark = [pytest.mark.sipp,
              pytest.mark.skipif(not have_sipp(), reason="sipp is not installed (sip-tester)")]

CARRIER = reserved_port()
TENANT = ('[tenant]\nname = "vmd"\n' + trunk("carrier", CARRIER)
          + '\n[[numbers]]\nnumber = "044555500"\n[[numbers.slots]]\nactive = true\nname = "All"\n'
          + 'days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]\nvoice2mail = "desk@example.com"\n')


def wait_until(pred, timeout=20.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.1)
    raise AssertionError(f"{what} not reached within {timeout}s")


def _leave(rig, tones, end_with_hash=True):
    caller = Caller()
    sipp = rig.sipp("call_uac_service.xml", service="044555500", port=CARRIER, timeout=30,
                    extra=["-key", "rtp_port", str(caller.port)], name="vmd")
    port = wait_answered(rig, "044555500")["media"]["a"]["port"]
    wait_beep(caller)
    caller.tones(port, tones)
    if end_with_hash:
        caller.digit(port, "#")
    return caller, sipp


def test_smtp_down_during_the_recording_then_back_the_mail_arrives_once(tmp_path):
    sink = SmtpSink(tmp_path / "inbox")  # not started: connections to its port are refused
    rig = mail_rig(tmp_path / "srv", TENANT, sink.port)
    rig.start()
    try:
        caller, sipp = _leave(rig, [650.0] * 3)
        assert sipp.finish().successful == 1, rig.server.log()
        caller.close()
        [row] = wait_until(lambda: [r for r in rig.admin("mail.queue") if r["last_error"]],
                           what="a deferred voice2mail message")
        assert row["kind"] == "voice2mail" and "desk@example.com" in row["to"], row
        sink.start()
        [msg] = sink.wait_count(1, timeout=20)
        wait_until(lambda: rig.admin("mail.queue") == [], what="an empty spool")
        time.sleep(2.5)  # a duplicate would come within the retry interval
        assert len(sink.messages()) == 1
        assert msg["X-Envelope-To"] == "desk@example.com"
    finally:
        sink.stop()
        rig.stop()


def test_hpbx_killed_mid_recording_the_message_is_mailed_after_the_restart(tmp_path):
    sink = SmtpSink(tmp_path / "inbox").start()
    rig = mail_rig(tmp_path / "srv", TENANT, sink.port)
    rig.start()
    try:
        caller, sipp = _leave(rig, [850.0] * 4, end_with_hash=False)
        time.sleep(1.5)  # the recorder's writer has the tones on disk (1 s buffers)
        rig.server.kill()
        sipp.kill()
        caller.close()
        assert sink.messages() == []
        rig.server.start()
        [msg] = sink.wait_count(1, timeout=20)
        assert msg["X-Envelope-To"] == "desk@example.com"
        _, data = wav_of(msg)
        with wave.open(io.BytesIO(data)) as w:
            pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64)
        assert len(pcm) >= 2 * 8000, len(pcm)
        loud = np.flatnonzero(np.abs(pcm) > 2000)
        assert len(loud) > 2 * 8000 and abs(dominant_freq(pcm[loud[0]:loud[0] + 8000]) - 850) < 20
        assert "voicemail: 1 messages left by an earlier run finished" in rig.server.log()
    finally:
        sink.stop()
        rig.stop()
