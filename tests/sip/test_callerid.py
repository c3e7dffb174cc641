"""Caller ID towards the network (issue 18): a user with no displayed number who calls out
through the trunk presents the tenant's default public number, or is withheld (From anonymous,
P-Asserted-Identity with Privacy: id, RFC 3325), as the tenant chooses; never an internal number.
SIPp is the trunk and asserts what it received."""
from __future__ import annotations

import re

import pytest

from harness import have_sipp, header, reserved_port, wait_bound
from callrig import CallRig, number, trunk, user

pytestmark = [pytest.mark.sipp,
              pytest.mark.skipif(not have_sipp(), reason="sipp is not installed (sip-tester)")]

GATEWAY = reserved_port()
TENANT = (
    '[tenant]\nname = "cid"\ntrunk = "gateway"\ndefault_number = "0443330000"\n'
    + trunk("gateway", GATEWAY)
    + user("cu1", "401") + user("cu2", "402", "0443330001")
    + number("0443330000", (30, ["user:cu2"])) + number("0443330001", (30, ["user:cu2"]))
)


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    r = CallRig(tmp_path_factory.mktemp("cid"), TENANT)
    r.start()
    yield r
    r.stop()


def call_out(rig, username: str, dialled: str = "0799990001") -> str:
    """``username`` calls an external number; the INVITE the trunk received."""
    gw = rig.sipp("call_uas.xml", port=GATEWAY, pause_ms=100, name="gateway")
    assert wait_bound(GATEWAY)
    res = rig.call("call_uac_auth.xml", dialled, pause_ms=100,
                   extra=["-au", username, "-ap", f"{username}-pw"])
    g = gw.finish()
    assert res.successful == 1 and g.successful == 1, res.describe() + g.describe() + rig.server.log()
    rig.assert_idle()
    return g.received("INVITE")[0]


def identity_headers(invite: str) -> str:
    return "\n".join(header(invite, "From") + header(invite, "P-Asserted-Identity")
                     + header(invite, "Privacy"))


def test_no_displayed_number_presents_the_tenants_default_number(rig):
    invite = call_out(rig, "cu1")
    assert re.match(r"<sip:0443330000@127\.0\.0\.1>;tag=", header(invite, "From")[0]), invite
    assert header(invite, "P-Asserted-Identity") == ["<sip:0443330000@127.0.0.1>"]
    assert header(invite, "Privacy") == []
    assert "401" not in identity_headers(invite) and "cu1" not in identity_headers(invite)


def test_withheld_sends_anonymous_with_asserted_identity_and_privacy_id(rig):
    rig.admin("tenant.update", name="cid", caller_id_fallback="withheld")
    try:
        assert 'caller_id_fallback = "withheld"' in rig.admin("tenant.export", name="cid")
        invite = call_out(rig, "cu1")
        assert re.match(r'"Anonymous" <sip:anonymous@anonymous\.invalid>;tag=',
                        header(invite, "From")[0]), invite
        assert header(invite, "P-Asserted-Identity") == ["<sip:0443330000@127.0.0.1>"]
        assert header(invite, "Privacy") == ["id"]
        assert "401" not in identity_headers(invite)
        # a user with a displayed number still presents it
        invite = call_out(rig, "cu2")
        assert re.match(r"<sip:0443330001@127\.0\.0\.1>;tag=", header(invite, "From")[0]), invite
        assert header(invite, "Privacy") == []
    finally:
        rig.admin("tenant.update", name="cid", caller_id_fallback="default_number")


def test_no_default_number_is_withheld_without_an_asserted_number(rig):
    rig.admin("tenant.update", name="cid", default_number="")
    try:
        invite = call_out(rig, "cu1")
        assert re.match(r'"Anonymous" <sip:anonymous@anonymous\.invalid>;tag=',
                        header(invite, "From")[0]), invite
        assert header(invite, "P-Asserted-Identity") == []
        assert header(invite, "Privacy") == ["id"]
        assert "401" not in identity_headers(invite)
    finally:
        rig.admin("tenant.update", name="cid", default_number="0443330000")


def test_default_number_must_be_the_tenants_and_cannot_be_deleted_while_used(rig):
    from hpbx.admin.protocol import RpcError as AdminError
    with pytest.raises(AdminError) as bad:
        rig.admin("tenant.update", name="cid", default_number="0449999999")
    assert bad.value.code == -32602 and bad.value.data["field"] == "default_number", bad.value
    with pytest.raises(AdminError) as bad:
        rig.admin("tenant.update", name="cid", caller_id_fallback="internal")
    assert bad.value.code == -32602 and bad.value.data["field"] == "caller_id_fallback"
    with pytest.raises(AdminError) as used:
        rig.admin("number.delete", number="0443330000")
    assert "default number" in str(used.value), used.value
    assert rig.admin("tenant.get", name="cid")["default_number"] == "0443330000"
