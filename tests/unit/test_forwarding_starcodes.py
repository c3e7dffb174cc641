"""Forwarding rules as plan rows and when a conditional target rings; the star codes."""
from datetime import datetime, timezone

from hpbx.pbx import router, starcodes
from hpbx.pbx.directory import Directory
from hpbx.pbx.model import TenantObjects, Trunk, User, Tenant

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
