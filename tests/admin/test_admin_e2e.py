"""Issue 6 end to end: provision everything through hpbxctl on the running server, register
SIPp phones, call the number, set a special switch, call again: the second call goes where the
switch says, and cdr.list shows both calls. Then a call in progress is listed and hung up."""
from __future__ import annotations

import subprocess
import sys
import threading
import time

import orjson
import pytest

from adminrig import HPBXCTL, REPO
from harness import free_port, have_sipp

sys.path.insert(0, str(REPO / "tests" / "sip"))
from callrig import CallRig  # noqa: E402

pytestmark = [pytest.mark.sipp, pytest.mark.skipif(not have_sipp(), reason="sipp is not installed (sip-tester)")]

# The server starts with an unrelated tenant: everything the test uses comes through hpbxctl.
BOOT = '[tenant]\nname = "boot"\n'


def test_provision_call_switch_call_cdrs(tmp_path):
    carrier = free_port(both=False)
    rig = CallRig(tmp_path, BOOT)
    with rig:
        sock = str(rig.dir / "hpbx.sock")

        def ctl(*args: str):
            out = subprocess.run([str(HPBXCTL), "--socket", sock, "--json", *args],
                                 capture_output=True, text=True, timeout=20)
            assert out.returncode == 0, f"hpbxctl {' '.join(args)}: {out.stderr}"
            return orjson.loads(out.stdout)

        ctl("tenant.create", "name=acme")
        ctl("trunk.create", "tenant=acme", "name=carrier", "host=127.0.0.1", f"port={carrier}")
        ctl("user.create", "tenant=acme", "username=anna", "sip_password=anna-pw", "internal_number=201")
        ctl("user.create", "tenant=acme", "username=beat", "sip_password=beat-pw", "internal_number=202")
        ctl("number.create", "tenant=acme", "number=0441110000", "name=Main")
        every_day = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
        slots = [{"active": True, "name": "Office", "days": every_day,
                  "rows": [{"duration": 30, "targets": ["user:anna"]}]},
                 {"active": False, "name": "Holiday", "days": every_day,
                  "rows": [{"duration": 30, "targets": ["user:beat"]}]}]
        number = ctl("number.set_slots", "number=0441110000", "slots=" + orjson.dumps(slots).decode())
        assert [s["name"] for s in number["slots"][:2]] == ["Office", "Holiday"]
        ctl("switch.create", "tenant=acme", "name=holiday", 'numbers=["0441110000"]', "use_slot=2")

        # call 1: slot 1 rings anna
        anna = rig.phone("anna", "call_uas.xml", pause_ms=200)
        first = rig.call("call_uac.xml", "0441110000", port=carrier, pause_ms=200)
        assert first.returncode == 0 and first.successful == 1, first.describe() + rig.server.log()
        assert anna.finish().successful == 1
        rig.wait_idle()

        # the switch takes effect on the next call, no restart: call 2 rings beat
        assert ctl("switch.set", "tenant=acme", "name=holiday")["on"] is True
        beat = rig.phone("beat", "call_uas.xml", pause_ms=200)
        second = rig.call("call_uac.xml", "0441110000", port=carrier, pause_ms=200)
        assert second.returncode == 0 and second.successful == 1, second.describe() + rig.server.log()
        assert beat.finish().successful == 1
        rig.wait_idle()

        rig.cdrs(count=2, wait=5)  # CDRs are written in batches
        cdrs = ctl("cdr.list", "tenant=acme")
        assert len(cdrs) == 2, cdrs
        newest, oldest = cdrs
        assert (oldest["called"], oldest["slot"], oldest["switch"], oldest["answered_by"]) == (
            "0441110000", 1, "", "anna")
        assert (newest["called"], newest["slot"], newest["switch"], newest["answered_by"]) == (
            "0441110000", 2, "holiday", "beat")
        table = subprocess.run([str(HPBXCTL), "--socket", sock, "cdr.list", "tenant=acme"],
                               capture_output=True, text=True, timeout=20)
        assert table.returncode == 0 and len(table.stdout.splitlines()) == 3

        # call 3 stays up (the caller sends nothing and waits for BYE): listed, then hung up
        beat = rig.phone("beat", "call_uas.xml", pause_ms=100, timeout=15)
        box = {}
        caller = threading.Thread(target=lambda: box.setdefault(
            "res", rig.call("call_uac_silent.xml", "0441110000", port=carrier, timeout=15)))
        caller.start()
        deadline = time.monotonic() + 5
        while not (calls := ctl("call.list", "tenant=acme")) or calls[0]["state"] != "answered":
            assert time.monotonic() < deadline, calls
            time.sleep(0.1)
        assert calls[0]["answered_by"] == "beat" and calls[0]["called"] == "0441110000"
        listing = subprocess.run([str(HPBXCTL), "--socket", sock, "call.list"], capture_output=True, text=True,
                                 timeout=20)
        assert listing.stdout.split()[:4] == ["CALL_ID", "TENANT", "CALLER", "CALLED"]
        assert ctl("call.hangup", f"call_id={calls[0]['call_id']}")["hungup"] is True
        caller.join(20)
        assert box["res"].received("BYE") and beat.finish().received("BYE")
        rig.wait_idle()
        rig.cdrs(count=3, wait=5)
        assert ctl("cdr.list", "tenant=acme", "limit=1")[0]["end_reason"] == "hung up by the administrator"
