"""Dialled string → plan: numbers, groups, LINK, internal calls, tenant isolation."""
from datetime import datetime, timezone

import pytest

from hpbx.pbx.directory import Directory
from hpbx.pbx.model import PublicNumber, Tenant, TenantObjects, User
from hpbx.pbx.provisioning import Provisioning
from hpbx.pbx.router import find_unused, linked_users, route_inbound, route_internal, search_numbers
from hpbx.store import Store

MON_0900 = datetime(2026, 11, 23, 8, 0, tzinfo=timezone.utc)  # Monday 09:00 in Zurich
MON_2000 = datetime(2026, 11, 23, 19, 0, tzinfo=timezone.utc)  # Monday 20:00 in Zurich
ALL = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


def slot(*rows, **kw):
    d = {"active": True, "days": ALL, "rows": [{"duration": r[0], "targets": list(r[1:])} for r in rows]}
    d.update(kw)
    return d


@pytest.fixture
def prov():
    store = Store(":memory:")
    p = Provisioning(store)
    for t in ("acme", "beta"):
        p.tenant_create({"name": t})
        p.trunk_create({"tenant": t, "name": "gw", "host": "127.0.0.1", "port": 5090})
        p.tenant_update(t, {"trunk": "gw"})
    for name, num, flags in (("u1", "101", {}), ("u2", "102", {}), ("u3", "103", {"not_in_allusers": True}),
                             ("u4", "104", {"hide_user": True}), ("lonely", "109", {})):
        p.user_create({"tenant": "acme", "username": name, "sip_password": "pass", "internal_number": num,
                       "flags": flags})
    p.user_create({"tenant": "beta", "username": "b1", "sip_password": "pass", "internal_number": "150"})
    p.group_create({"tenant": "acme", "name": "sales", "internal_number": "200", "members": ["u1", "u2"],
                    "logged_out": ["u2"]})
    for n in ("0441000001", "0441000002", "0441000003"):
        p.number_create({"tenant": "acme", "number": n})
    p.number_create({"tenant": "beta", "number": "0312000001"})
    p.number_create({"tenant": "acme", "number": "0441000009", "usage": "conference"})
    yield p
    store.close()


def users_of(row):
    return [t.value for t in row.targets]


def test_unknown_number_from_outside_is_404(prov):
    plan = route_inbound(prov.directory, "0449999999", MON_0900)
    assert (plan.kind, plan.status) == ("reject", 404)


def test_number_with_no_matching_slot_is_480(prov):
    prov.number_set_slots("0441000001", [slot((10, "user:u1"), days=["sun"])])
    plan = route_inbound(prov.directory, "0441000001", MON_0900)
    assert (plan.status, plan.slot, plan.rows) == (480, 0, ())


def test_rows_slot_and_alert_info(prov):
    prov.number_update("0441000001", {"alert_info": "<http://x/ring2>;info=alert-group"})
    prov.number_set_slots("0441000001", [slot((10, "user:u1"), (15, "user:u1", "user:u2"), name="Day",
                                              announcement_after=0, voice2mail="day@acme.ch")])
    plan = route_inbound(prov.directory, "+41441000001", MON_0900)
    assert (plan.kind, plan.status, plan.slot, plan.slot_name) == ("dialplan", 0, 1, "Day")
    assert [(r.duration, users_of(r)) for r in plan.rows] == [(10, ["u1"]), (15, ["u1", "u2"])]
    assert plan.alert_info == "<http://x/ring2>;info=alert-group"
    assert plan.voice2mail == "day@acme.ch" and plan.number.number == "0441000001"
    assert plan.rows[0].targets[0].user.username == "u1" and plan.rows[0].targets[0].key == "user:u1"
    assert [t.key for t in plan.targets()] == ["user:u1", "user:u2"]


def test_one_user_rings_for_several_numbers(prov):
    # FEATURES 1.1: U is a target of N1 and N2.
    prov.number_set_slots("0441000001", [slot((10, "user:u1"))])
    prov.number_set_slots("0441000002", [slot((10, "user:u2", "user:u1"))])
    for n in ("0441000001", "0441000002"):
        assert "u1" in users_of(route_inbound(prov.directory, n, MON_0900).rows[0])


def test_groups_logged_out_and_allusers(prov):
    prov.number_set_slots("0441000001", [slot((10, "group:sales"), (10, "group:ALLUSERS"))])
    plan = route_inbound(prov.directory, "0441000001", MON_0900)
    assert users_of(plan.rows[0]) == ["u1"]  # u2 logged out of sales
    assert users_of(plan.rows[1]) == ["u1", "u2", "lonely"]  # u3 not in ALLUSERS, u4 hidden
    assert plan.rows[0].targets[0].via == "group:sales"


def test_external_targets_ring_through_the_tenant_trunk(prov):
    # FEATURES 2.9: the night slot rings an on-call mobile.
    prov.number_set_slots("0441000001", [slot((10, "user:u1"), time_start="08:00", time_end="16:59"),
                                         slot((30, "external:0791234567"), time_start="17:00", time_end="23:59")])
    plan = route_inbound(prov.directory, "0441000001", MON_2000)
    (target,) = plan.rows[0].targets
    assert (plan.slot, target.kind, target.value, target.trunk.port) == (2, "external", "0791234567", 5090)
    prov.tenant_update("acme", {"trunk": ""})
    plan = route_inbound(prov.directory, "0441000001", MON_2000)
    assert plan.rows == ()  # no trunk: the external target gives no target


def test_link_hands_over_to_the_other_numbers_plan(prov):
    # FEATURES 2.8: N1 row 2 is LINK N2; N2's slot rings V; N1's Voice2Mail is not used.
    prov.number_set_slots("0441000002", [slot((20, "user:u2"), voice2mail="n2@acme.ch", announcement_after=0)])
    prov.number_set_slots("0441000001", [slot((10, "user:u1"), (10, "link:0441000002", "external:0790000000"),
                                              (10, "user:lonely"), voice2mail="n1@acme.ch")])
    plan = route_inbound(prov.directory, "0441000001", MON_0900)
    assert [users_of(r) for r in plan.rows] == [["u1"], ["0790000000"], ["u2"]]
    assert plan.voice2mail == "n2@acme.ch" and plan.links == ("0441000001", "0441000002")
    assert plan.handled_by.number == "0441000002" and plan.number.number == "0441000001"
    assert "lonely" not in [t.value for t in plan.targets()]  # rows after a LINK are not used


def test_link_to_a_number_with_no_matching_slot_is_cut(prov):
    prov.number_set_slots("0441000002", [slot((20, "user:u2"), days=["sun"])])
    prov.number_set_slots("0441000001", [slot((10, "link:0441000002"), (10, "user:u1"))])
    plan = route_inbound(prov.directory, "0441000001", MON_0900)
    assert [users_of(r) for r in plan.rows] == [["u1"]]


def _raw_directory(links: dict[str, str]) -> Directory:
    """A directory with LINK chains that validation would refuse (as a corrupted store might hold)."""
    objs = TenantObjects(Tenant("t"))
    objs.users["v"] = User("t", "v", "pass")
    for n, target in links.items():
        rows = [{"duration": 5, "targets": [f"link:{target}"]}] if target else [{"duration": 5, "targets": ["user:v"]}]
        objs.numbers[n] = PublicNumber.from_dict(
            {"tenant": "t", "number": n, "slots": [{"active": True, "days": ALL, "rows": rows}]})
    return Directory.build([objs])


def test_link_loops_and_long_chains_are_cut_at_run_time():
    d = _raw_directory({"0441": "0442", "0442": "0441"})
    plan = route_inbound(d, "0441", MON_0900)
    assert plan.rows == () and plan.status == 0
    chain = {f"04{i}": f"04{i + 1}" for i in range(10, 16)}
    chain["0416"] = ""
    d = _raw_directory(chain)
    assert route_inbound(d, "0411", MON_0900).rows[0].targets[0].value == "v"  # 5 hops: followed
    assert route_inbound(d, "0410", MON_0900).rows == ()  # 6 hops: cut


def test_special_usage_number_rings_no_dial_plan(prov):
    prov.number_set_slots("0441000009", [slot((10, "user:u1"))])
    plan = route_inbound(prov.directory, "0441000009", MON_0900)
    assert (plan.kind, plan.rows) == ("conference", ())


def test_internal_calls(prov):
    d = prov.directory
    u1 = d.user("u1")
    plan = route_internal(d, u1, "109", MON_0900)
    assert (plan.kind, users_of(plan.rows[0])) == ("internal", ["lonely"])
    plan = route_internal(d, u1, "200", MON_0900)
    assert users_of(plan.rows[0]) == ["u1"]
    plan = route_internal(d, u1, "0791234567", MON_0900)
    assert (plan.kind, plan.external, plan.trunk.name) == ("external", "0791234567", "gw")
    prov.number_set_slots("0441000001", [slot((10, "user:u2"))])
    plan = route_internal(prov.directory, u1, "0441000001", MON_0900)
    assert (plan.kind, users_of(plan.rows[0])) == ("dialplan", ["u2"])
    assert route_internal(d, u1, "555", MON_0900).status == 404
    prov.tenant_update("acme", {"trunk": ""})
    assert route_internal(prov.directory, u1, "0791234567", MON_0900).status == 403


def test_tenants_are_isolated(prov):
    # FEATURES 1.4: a user of A dials B's internal number → unknown in A.
    d = prov.directory
    u1 = d.user("u1")
    assert route_internal(d, u1, "150", MON_0900).status == 404
    # B's public number dialled from A leaves through A's trunk like any external number.
    plan = route_internal(d, u1, "0312000001", MON_0900)
    assert (plan.kind, plan.tenant) == ("external", "acme")
    # A row of A naming B's user expands to nothing.
    objs = d.objects("acme").copy()
    objs.numbers["0441000003"] = PublicNumber.from_dict(
        {"tenant": "acme", "number": "0441000003", "slots": [slot((10, "user:b1", "user:u1"))]})
    d2 = d.replace_tenant(d.objects("acme"), objs, users=())
    assert users_of(route_inbound(d2, "0441000003", MON_0900).rows[0]) == ["u1"]


def test_unlinked_user_is_never_reached_from_outside(prov):
    # FEATURES 1.2: "lonely" is in no dial plan.
    prov.number_set_slots("0441000001", [slot((10, "user:u1"), (10, "group:sales"))])
    prov.number_set_slots("0441000002", [slot((10, "link:0441000001"))])
    prov.number_set_slots("0441000003", [slot((10, "external:0790000000"))])
    d = prov.directory
    for n in ("0441000001", "0441000002", "0441000003", "0441000009"):
        for when in (MON_0900, MON_2000):
            assert "lonely" not in [t.value for t in route_inbound(d, n, when).targets()]
    assert "lonely" not in linked_users(d, "acme") and "u1" in linked_users(d, "acme")
    assert route_internal(d, d.user("u2"), "109", MON_0900).rows[0].targets[0].value == "lonely"


def test_find_unused_and_search_helpers(prov):
    d = prov.directory
    assert [n.number for n in find_unused(d, "acme", MON_0900)] == ["0441000001", "0441000002", "0441000003"]
    prov.number_set_slots("0441000002", [{}, {}, slot((5, "group:sales"))])
    d = prov.directory
    assert [n.number for n in find_unused(d, "acme", MON_0900)] == ["0441000001", "0441000003"]
    assert [n.number for n in search_numbers(d, "acme", "SALES")] == ["0441000002"]
    assert find_unused(d, "nope", MON_0900) == [] and search_numbers(d, "acme", "") == []
