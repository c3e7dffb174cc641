"""Forwarding rules as plan rows and when a conditional target rings; the star codes."""
from datetime import datetime, timezone

import pytest

from hpbx.pbx import router, starcodes
from hpbx.pbx.directory import Directory
from hpbx.errors import ValidationError
from hpbx.pbx.model import TenantObjects, Trunk, User, Tenant, UserForwarding

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=timezone.utc)


def directory(**forward):
    tenant = Tenant("t", trunk="gw")
    users = {
        "a": User.from_dict({"tenant": "t", "username": "a", "sip_password": "a-pw",
                             "internal_number": "101", "forward": forward}),
        "b": User.from_dict({"tenant": "t", "username": "b", "sip_password": "b-pw",
                             "internal_number": "102"}),
    }
    objs = TenantObjects(tenant, users, {}, {"gw": Trunk("t", "gw", "127.0.0.1")}, {}, {}, {})
    return Directory.build([objs]), users


def test_no_rules_rings_the_user_alone():
    d, users = directory()
    plan = router.route_internal(d, users["b"], "101", NOW)
    assert [[r.key for r in row.targets] for row in plan.rows] == [["user:a"]]


def test_unconditional_rings_only_the_target_with_its_reason():
    d, users = directory(unconditional="0791112233")
    [row] = router.route_internal(d, users["b"], "101", NOW).rows
    [ring] = row.targets
    assert (ring.key, ring.reason, ring.when) == ("external:0791112233", "unconditional", frozenset())


def test_conditional_rules_follow_the_user_and_fire_by_outcome():
    d, users = directory(busy="102", no_answer="102", no_answer_after=5, unavailable="0791")
    first, second = router.route_internal(d, users["b"], "101", NOW).rows
    assert first.duration == 5 and [r.key for r in first.targets] == ["user:a"]
    by_key = {r.key: r for r in second.targets}
    assert by_key["user:b"].when == frozenset({"busy", "no_answer"})
    assert by_key["external:0791"].when == frozenset({"unavailable"})
    applies = router.forward_applies
    assert applies(frozenset({"busy"}), {"user:a": 486}) and not applies(frozenset({"busy"}), {})
    assert applies(frozenset({"no_answer"}), {}) and not applies(frozenset({"no_answer"}), {"user:a": 486})
    assert applies(frozenset({"unavailable"}), {"user:a": 480})
    assert not applies(frozenset({"unavailable"}), {"user:a": 486})


def test_star_codes():
    assert starcodes.parse("*78").changes == {"flags": {"dnd": True}}
    assert starcodes.parse("*79").changes == {"flags": {"dnd": False}}
    assert starcodes.parse("*72105").changes == {"forward": {"unconditional": "105"}}
    assert starcodes.parse("*900791112233").changes == {"forward": {"busy": "0791112233"}}
    assert starcodes.parse("*93").changes == {"forward": {"no_answer": ""}}
    assert starcodes.parse("*95").changes == {"forward": {"unavailable": ""}}
    for other in ("*200", "*201", "*72", "101", "*7"):
        assert starcodes.parse(other) is None, other


def test_pickup_codes():
    assert starcodes.pickup("**101") == ("directed", "101")
    assert starcodes.pickup("*8") == ("group", "")
    for other in ("**", "**1a", "*81", "*78"):
        assert starcodes.pickup(other) is None, other


def test_replaces_header_parse():
    from hpbx.pbx import replaces
    assert replaces.parse("abc@h;to-tag=1;from-tag=2") == ("abc@h", {"1", "2"})
    assert replaces.parse("abc ; from-tag=2 ; to-tag=1;early-only") == ("abc", {"1", "2"})
    for bad in ("", "abc", "abc;to-tag=1", ";to-tag=1;from-tag=2"):
        assert replaces.parse(bad) is None, bad


def test_a_rule_with_a_time_window_counts_only_inside_it():
    # 2026-12-02 is a Wednesday; the tenant's zone is Europe/Zurich (UTC+1 in December)
    d, users = directory(unconditional="0791112233",
                         windows={"unconditional": {"days": ["wed"], "time_start": "12:00",
                                                    "time_end": "13:59"}})
    inside = datetime(2026, 12, 2, 12, 30, tzinfo=timezone.utc)  # 13:30 local
    outside = datetime(2026, 12, 2, 13, 30, tzinfo=timezone.utc)  # 14:30 local
    assert [r.key for r in router.route_internal(d, users["b"], "101", inside).rows[0].targets] == [
        "external:0791112233"]
    assert [r.key for r in router.route_internal(d, users["b"], "101", outside).rows[0].targets] == [
        "user:a"]
    a = users["a"]
    assert User.from_dict(a.to_dict()) == a and "windows" in a.to_dict(compact=True)["forward"]


def test_bad_windows_name_the_field():
    import pytest
    from hpbx.errors import ValidationError
    for bad, field in (({"sometimes": {"days": ["mon"]}}, "forward.windows.sometimes"),
                       ({"busy": {"days": ["xyz"]}}, "forward.windows.busy.days[0]"),
                       ({"busy": {"hours": 3}}, "forward.windows.busy")):
        with pytest.raises(ValidationError) as err:
            User.from_dict({"tenant": "t", "username": "a", "sip_password": "a-pw", "forward": {"windows": bad}})
        assert err.value.field == field, (bad, err.value.field)


def test_mailbox_targets():
    """"mailbox" as a target: unconditional skips the user's branch at once (a condition that
    never holds, so the rows end and the user's mailbox answers them); a conditional rule adds
    no forwarding target (the mailbox answers after the rows), and no_answer_after still
    shortens the ringing. Not a number nor "mailbox": refused naming the field."""
    d, users = directory(unconditional="mailbox")
    [row] = router.route_internal(d, users["b"], "101", NOW).rows
    [ring] = row.targets
    assert row.duration == 1 and ring.key == "user:a" and ring.via.startswith("user:")
    assert ring.when == frozenset({"mailbox"}) and not router.forward_applies(ring.when, {})
    assert not router.forward_applies(ring.when, {"user:a": 486})
    d, users = directory(busy="mailbox", no_answer="mailbox", no_answer_after=4, unavailable="102")
    first, second = router.route_internal(d, users["b"], "101", NOW).rows
    assert first.duration == 4 and [r.key for r in first.targets] == ["user:a"]
    assert [(r.key, r.when) for r in second.targets] == [("user:b", frozenset({"unavailable"}))]
    with pytest.raises(ValidationError, match="forward.busy"):
        UserForwarding.from_dict({"busy": "voicemail"}, "forward")
