"""Validation of the provisioned objects: every error names its field."""
import dataclasses

import pytest

from hpbx.errors import ValidationError
from hpbx.pbx.model import (
    EMPTY_PLAN, Announcement, Cdr, Group, PublicNumber, SpecialSwitch, Tenant, TenantObjects,
    Trunk, User, check_references, number_keys, references_to,
)


def err(fn, *args, **kw) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        fn(*args, **kw)
    return info.value


def user(**kw):
    d = {"tenant": "acme", "username": "anna", "sip_password": "secret1"}
    d.update(kw)
    return User.from_dict(d)


def num(slots=(), **kw):
    d = {"tenant": "acme", "number": "0441234567", "slots": list(slots)}
    d.update(kw)
    return PublicNumber.from_dict(d)


def test_tenant_defaults_and_bad_timezone():
    t = Tenant.from_dict({"name": "acme"})
    assert (t.timezone, t.domain, t.trunk) == ("Europe/Zurich", "", "")
    e = err(Tenant.from_dict, {"name": "acme", "timezone": "Mars/Olympus"})
    assert e.field == "timezone" and "Mars/Olympus" in e.reason
    assert err(Tenant.from_dict, {"name": "Bad Name"}).field == "name"
    assert err(Tenant.from_dict, {}).field == "name"
    assert err(Tenant.from_dict, {"name": "acme", "colour": "red"}).field == "colour"


def test_objects_are_frozen_and_slotted():
    u = user()
    with pytest.raises(dataclasses.FrozenInstanceError):
        u.username = "x"
    assert not hasattr(u, "__dict__")


def test_user_round_trip_and_defaults():
    u = user(internal_number="100", details={"first_name": "Anna", "email": "anna@example.ch"},
             flags={"behind_nat": True, "busy_on_active_call": True})
    assert u.flags.behind_nat and not u.flags.hide_user
    assert User.from_dict(u.to_dict()) == u
    assert User.from_dict(u.to_dict(compact=True)) == u
    assert u.to_dict(compact=True)["flags"] == {"busy_on_active_call": True, "behind_nat": True}
    assert u.id == "anna"


@pytest.mark.parametrize("value", ["705", "700", "720", "801", "900", "902"])
def test_reserved_internal_numbers_are_rejected(value):
    e = err(user, internal_number=value)
    assert str(e) == f"internal_number: {value} is reserved (700-720, 801, 900-902)"


@pytest.mark.parametrize("value", ["0100", "1", "1234567", "12a"])
def test_malformed_internal_numbers_are_rejected(value):
    assert err(user, internal_number=value).field == "internal_number"


def test_user_field_errors():
    assert err(user, username="bad name").field == "username"
    assert err(user, sip_password="x").field == "sip_password"
    assert err(user, sip_password='a"bcdef').field == "sip_password"
    assert err(user, details={"email": "nope"}).field == "details.email"
    assert err(user, flags={"behind_nat": "yes"}).field == "flags.behind_nat"
    assert err(user, flags={"teleport": True}).field == "flags.teleport"
    assert err(user, displayed_number_diversion="whatever").field == "displayed_number_diversion"
    assert err(user, displayed_number="abc").field == "displayed_number"
    assert err(User.from_dict, {"tenant": "acme", "username": "anna"}).field == "sip_password"


def test_group_rules():
    g = Group.from_dict({"tenant": "acme", "name": "sales", "internal_number": "200",
                         "members": ["anna", "ben"], "logged_out": ["ben"]})
    assert g.members == ("anna", "ben") and g.logged_out == ("ben",)
    e = err(Group.from_dict, {"tenant": "acme", "name": "allusers"})
    assert e.field == "name" and "built-in" in e.reason
    e = err(Group.from_dict, {"tenant": "acme", "name": "g", "members": ["anna"], "logged_out": ["carl"]})
    assert e.field == "logged_out[0]"
    assert err(Group.from_dict, {"tenant": "acme", "name": "g", "members": ["a", "a"]}).field == "members[1]"
    assert err(Group.from_dict, {"tenant": "acme", "name": ""}).field == "name"


def test_trunk_rules():
    t = Trunk.from_dict({"tenant": "acme", "name": "gw", "host": "127.0.0.1", "port": 5090})
    assert (t.transport, t.port) == ("udp", 5090)
    assert err(Trunk.from_dict, {"tenant": "acme", "name": "gw", "host": "h", "port": 70000}).field == "port"
    assert err(Trunk.from_dict, {"tenant": "acme", "name": "gw", "host": "h", "transport": "sctp"}).field == "transport"
    assert err(Trunk.from_dict, {"tenant": "acme", "name": "gw", "host": "h", "password": "p"}).field == "username"
    assert err(Trunk.from_dict, {"tenant": "acme", "name": "gw", "host": "h", "port": True}).field == "port"


def test_number_has_exactly_ten_slots():
    n = num()
    assert len(n.slots) == 10 and all(s == EMPTY_PLAN for s in n.slots)
    n = num([{"active": True, "days": ["mon"]}])
    assert len(n.slots) == 10 and n.slots[0].active
    e = err(num, [{}] * 11)
    assert e.field == "slots[10]" and "eleventh" in e.reason


def test_slot_field_errors():
    e = err(num, [{}, {}, {"time_start": "25:00"}])
    assert str(e) == "slots[2].time_start: 25:00 is not a valid time (HH:MM, 00:00-23:59)"
    assert err(num, [{"time_end": "12:60"}]).field == "slots[0].time_end"
    assert err(num, [{"time_end": "9:00"}]).field == "slots[0].time_end"
    assert err(num, [{"days": ["mon", "xyz"]}]).field == "slots[0].days[1]"
    assert err(num, [{"active": True, "days": []}]).field == "slots[0].days"
    assert err(num, [{"mode": "monthly"}]).field == "slots[0].mode"
    assert err(num, [{"mode": "date", "date_from": "2026-02-30"}]).field == "slots[0].date_from"
    e = err(num, [{"mode": "date", "date_from": "2026-05-02", "date_to": "2026-05-01"}])
    assert e.field == "slots[0].date_to"
    assert err(num, [{"mode": "date", "active": True}]).field == "slots[0].date_from"
    assert err(num, [{"voice2mail": "x"}]).field == "slots[0].voice2mail"
    assert err(num, [{"mood": 1}]).field == "slots[0].mood"


def test_row_field_errors():
    def rows(*r):
        return [{"rows": list(r)}]

    e = err(num, rows({"mode": 2, "duration": 10, "targets": ["user:anna"]}))
    assert e.field == "slots[0].rows[0].mode" and "unknown row mode 2" in e.reason
    assert err(num, rows({"duration": 0, "targets": ["user:a"]})).field == "slots[0].rows[0].duration"
    assert err(num, rows({"duration": 601, "targets": ["user:a"]})).field == "slots[0].rows[0].duration"
    assert err(num, rows({"duration": 10, "targets": []})).field == "slots[0].rows[0].targets"
    assert err(num, rows({"duration": 10})).field == "slots[0].rows[0].targets"
    e = err(num, rows({"duration": 10, "targets": ["user:a", "phone:1"]}))
    assert e.field == "slots[0].rows[0].targets[1]"
    assert err(num, rows({"duration": 10, "targets": ["external:abc"]})).field == "slots[0].rows[0].targets[0]"
    assert err(num, rows({"duration": 10, "targets": ["user:a", "user:a"]})).field == "slots[0].rows[0].targets[1]"
    ok = num(rows({"duration": 600, "targets": ["user:a", "group:ALLUSERS", "external:0791234567", "link:0442"]}))
    assert [str(t) for t in ok.slots[0].rows[0].targets] == [
        "user:a", "group:ALLUSERS", "external:0791234567", "link:0442"]


def test_number_usage_and_alert_info():
    assert num(usage="conference").usage == "conference"
    assert err(num, usage="modem").field == "usage"
    assert err(num, alert_info="a\r\nX-Evil: 1").field == "alert_info"
    assert err(num, number="04412x").field == "number"


def test_number_round_trip_compact():
    n = num([{}, {"active": True, "name": "day", "days": ["mon", "fri"], "time_start": "08:00",
                  "rows": [{"duration": 10, "targets": ["user:anna"]}]}])
    assert PublicNumber.from_dict(n.to_dict()) == n
    compact = n.to_dict(compact=True)
    assert len(compact["slots"]) == 2 and compact["slots"][0] == {}
    assert PublicNumber.from_dict(compact) == n
    # Days come back in week order whatever order they were given in.
    assert num([{"days": ["fri", "mon"]}]).slots[0].days == ("mon", "fri")


def test_switch_and_announcement_and_cdr():
    sw = SpecialSwitch.from_dict({"tenant": "acme", "name": "Closed", "numbers": ["0441234567"],
                                  "use_slot": 5, "on": True, "switched_on_at": "2026-11-23T08:00:00+01:00"})
    assert SpecialSwitch.from_dict(sw.to_dict()) == sw
    assert err(SpecialSwitch.from_dict, {"tenant": "a", "name": "x", "use_slot": 11}).field == "use_slot"
    e = err(SpecialSwitch.from_dict, {"tenant": "a", "name": "x", "switched_on_at": "2026-11-23T08:00"})
    assert e.field == "switched_on_at" and "UTC offset" in e.reason
    assert err(SpecialSwitch.from_dict, {"tenant": "a", "name": "x", "plan": {"time_end": "24:00"}}).field == "plan.time_end"
    a = Announcement.from_dict({"tenant": "acme", "id": 12, "name": "closed", "file": "closed.wav"})
    assert a.kind == "announcement"
    assert err(Announcement.from_dict, {"tenant": "acme", "id": 0}).field == "id"
    assert err(Announcement.from_dict, {"tenant": "acme", "id": 1, "file": "../x.wav"}).field == "file"
    c = Cdr.from_dict({"tenant": "acme", "caller": "0311112222", "called": "0441234567", "slot": 1,
                       "targets_tried": ["user:anna"], "start": "2026-11-23T08:00:00+00:00"})
    assert Cdr.from_dict(c.to_dict()) == c
    assert err(Cdr.from_dict, {"tenant": "acme", "slot": 11}).field == "slot"


def test_number_keys_spellings():
    assert number_keys("0441234567") == ("0441234567", "+41441234567", "0041441234567")
    assert number_keys("+41441234567") == ("+41441234567", "0441234567", "0041441234567")
    assert number_keys("0041441234567")[:2] == ("0041441234567", "0441234567")
    assert number_keys("+49301234567") == ("+49301234567", "0049301234567")
    assert number_keys("100") == ("100",)


def _objects():
    objs = TenantObjects(Tenant("acme", trunk="gw"))
    objs.trunks["gw"] = Trunk("acme", "gw", "127.0.0.1")
    for u in (user(internal_number="100"), user(username="ben", internal_number="101")):
        objs.users[u.username] = u
    objs.groups["sales"] = Group("acme", "sales", "200", ("anna",))
    for n in ("0441", "0442", "0443"):
        objs.numbers[n] = num(number=n)
    objs.announcements[12] = Announcement("acme", 12, "closed")
    return objs


def test_references_internal_number_unique_across_users_and_groups():
    objs = _objects()
    carl = user(username="carl", internal_number="200")
    objs.users["carl"] = carl
    e = err(check_references, carl, objs)
    assert str(e) == "internal_number: 200 is already used by group sales"
    same = user(internal_number="100")
    objs.users["anna"] = same
    check_references(same, objs)  # a user keeps its own number on update


def test_references_displayed_number_must_be_own_public_number():
    objs = _objects()
    u = user(displayed_number="0449999999")
    e = err(check_references, u, objs)
    assert e.field == "displayed_number" and "public numbers" in e.reason
    check_references(user(displayed_number="0441"), objs)


def test_references_targets_must_exist():
    objs = _objects()

    def plan(*targets):
        return num([{"rows": [{"duration": 5, "targets": list(targets)}]}], number="0441")

    check_references(plan("user:anna", "group:sales", "group:ALLUSERS", "external:0791", "link:0442"), objs)
    assert err(check_references, plan("user:zoe"), objs).field == "slots[0].rows[0].targets[0]"
    assert err(check_references, plan("user:anna", "group:x"), objs).field == "slots[0].rows[0].targets[1]"
    assert err(check_references, plan("link:0999"), objs).field == "slots[0].rows[0].targets[0]"
    n = num([{"announcement_after": 13}], number="0441")
    assert err(check_references, n, objs).field == "slots[0].announcement_after"
    g = Group("acme", "g", "", ("anna", "zoe"))
    assert err(check_references, g, objs).field == "members[1]"
    assert err(check_references, Tenant("acme", trunk="nope"), objs).field == "trunk"


def test_link_loop_is_rejected_with_the_cycle():
    objs = _objects()
    objs.numbers["0442"] = num([{"rows": [{"duration": 5, "targets": ["link:0441"]}]}], number="0442")
    n1 = num([{}, {"rows": [{"duration": 5, "targets": ["user:anna"]}, {"duration": 5, "targets": ["link:0442"]}]}],
             number="0441")
    objs.numbers["0441"] = n1
    e = err(check_references, n1, objs)
    assert str(e) == "slots[1].rows[1].targets[0]: LINK loop 0441->0442->0441"
    self_loop = num([{"rows": [{"duration": 5, "targets": ["link:0443"]}]}], number="0443")
    objs.numbers["0443"] = self_loop
    assert "LINK loop 0443->0443" in str(err(check_references, self_loop, objs))


def test_references_to_lists_users_of_an_object():
    objs = _objects()
    objs.numbers["0441"] = num([{"announcement_before": 12, "rows": [{"duration": 5, "targets": ["user:anna"]}]}],
                               number="0441")
    assert references_to("user", "anna", objs) == ["number 0441 slot 1 row 1", "group sales"]
    assert references_to("announcement", 12, objs) == ["number 0441 slot 1"]
    assert references_to("user", "ben", objs) == []
    assert references_to("trunk", "gw", objs) == ["tenant acme"]
