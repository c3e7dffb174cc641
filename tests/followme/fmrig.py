"""Helpers of the FollowMe and callthrough tests: a SIPp caller from a given number whose media is
the test's own RTP socket (tests/conference/phone.py: PCMA tones, RFC 4733 digits)."""
from __future__ import annotations

import time
from pathlib import Path

from phone import Phone

SCEN = Path(__file__).resolve().parent / "scenarios"


class Caller:
    """One SIPp caller (signalling, From ``number``) plus a Phone (media), answered by hpbx."""

    def __init__(self, rig, dialled: str, number: str, port: int, ssrc: int, timeout: float = 40):
        self.rig = rig
        self.phone = Phone(ssrc)
        before = {c["call_id"] for c in rig.admin("call.list")}
        self.sipp = rig.sipp(str(SCEN / "caller.xml"), service=dialled, port=port, timeout=timeout,
                             extra=["-key", "rtp_port", str(self.phone.port), "-key", "caller", number],
                             name=f"caller-{ssrc:x}")
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            new = [c for c in rig.admin("call.list")
                   if c["call_id"] not in before and c.get("state") == "answered" and c.get("media")]
            if new:
                self.call_id = new[0]["call_id"]
                self.phone.start(new[0]["media"]["a"]["port"])
                return
            if self.sipp.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError("call not answered: " + self.sipp.kill().describe() + rig.server.log())

    def finish(self, timeout: float | None = None):
        try:
            return self.sipp.finish(timeout)
        finally:
            self.phone.stop()


def refused(rig, dialled: str, number: str, port: int):
    """A caller from ``number`` that expects 403 before any answer (the SIPp result)."""
    return rig.sipp(str(SCEN / "refused.xml"), service=dialled, port=port, timeout=10,
                    extra=["-key", "caller", number], name="refused").finish()


def wait_for(pred, timeout=5.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"{what} not reached in {timeout}s")


def cdr_of(rig, call_id: str, wait: float = 3.0) -> dict:
    deadline = time.monotonic() + wait
    while True:
        found = [c for c in rig.cdrs(wait=0.2) if c.get("call_id") == call_id]
        if found or time.monotonic() > deadline:
            assert found, f"no CDR of {call_id}"
            return found[-1]
        time.sleep(0.1)
