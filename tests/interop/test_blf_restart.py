"""BLF subscriptions survive a restart of hpbx (issue 18, FEATURES 14.2): after SIGTERM, and
after SIGKILL once the subscription was written (batched, within a second), the watcher gets a
NOTIFY on its same subscription dialog soon after the start (higher CSeq and version), its
refresh inside that dialog is accepted, and the next call to the watched user is NOTIFYed."""
from __future__ import annotations

import re
import time

import pytest

from clients import Baresip
from harness import header, reserved_pair
from callrig import CallRig, user
from sipdevice import Device

NAMES = {"ria": "551", "rob": "552", "rex": "553"}
TENANT = '[tenant]\nname = "rst"\n' + "".join(user(n, i) for n, i in NAMES.items())


@pytest.fixture()
def rig(tmp_path):
    r = CallRig(tmp_path / "rst", TENANT)
    r.start()
    r.admin("user.update", username="rob", supervise=["ria"])
    yield r
    r.stop()


def cseq_of(msg: str) -> int:
    return int(header(msg, "CSeq")[0].split()[0])


def version_of(msg: str) -> int:
    return int(re.search(r'<dialog-info [^>]*version="(\d+)"', msg).group(1))


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_blf_subscription_is_resumed_after_a_restart(rig, tmp_path, how):
    rob = Device(rig, "rob")
    try:
        rob.subscribe(NAMES["ria"])
        deadline = time.monotonic() + 3
        while not rob.notifies and time.monotonic() < deadline:
            rob.recv(0.2)
        assert rob.notifies, "no first NOTIFY"
        before = rob.notifies[-1]
        time.sleep(1.5)  # the batched write has happened
        if how == "stop":
            rig.server.stop()
        else:
            rig.server.kill()
        rob.notifies.clear()
        rig.server.start()
        deadline = time.monotonic() + 5
        while not rob.notifies and time.monotonic() < deadline:
            rob.recv(0.2)
        assert rob.notifies, "no NOTIFY after the restart:\n" + rig.server.log()
        after = rob.notifies[0]
        assert header(after, "Call-ID") == header(before, "Call-ID")
        assert f"tag={rob.sub_to_tag}" in header(after, "From")[0], after
        assert header(after, "Subscription-State")[0].startswith("active;expires="), after
        assert cseq_of(after) > cseq_of(before) and version_of(after) > version_of(before)
        stats = rig.admin("stats.get", layer="calls")
        assert stats.get("calls", stats)["blf_subscriptions"] == 1
        assert rob.refresh(600).startswith("SIP/2.0 200")
        with Baresip(tmp_path / "ria", "ria", "ria-pw", rig.target, sip_port=reserved_pair(),
                     answermode="manual") as ria, \
                Baresip(tmp_path / "rex", "rex", "rex-pw", rig.target, sip_port=reserved_pair()) as rex:
            ria.wait_event("REGISTER_OK")
            rex.wait_event("REGISTER_OK")
            rex.command("dial", f"sip:{NAMES['ria']}@{rig.target}")
            ria.wait_event("CALL_INCOMING")
            early = rob.dialog_state("early")
            assert early["direction"] == "recipient", early
            rex.command("hangup")
            ria.wait_event("CALL_CLOSED")
        assert rob.refresh(0).startswith("SIP/2.0 200")
        time.sleep(1.5)
        rig.server.stop()
        rig.server.start()  # an ended subscription is not resumed
        stats = rig.admin("stats.get", layer="calls")
        assert stats.get("calls", stats)["blf_subscriptions"] == 0
    finally:
        rob.close()
