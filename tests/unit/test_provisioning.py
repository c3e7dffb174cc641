"""The provisioning service over a real SQLite file: validate, apply in one transaction, swap."""
import sqlite3
from pathlib import Path
from datetime import datetime, timezone

import pytest

from hpbx.errors import NotFoundError, ValidationError
from hpbx.pbx.provisioning import Provisioning
from hpbx.pbx.router import route_inbound
from hpbx.store import Store

DEMO = str(Path(__file__).resolve().parents[2] / "config" / "demo.toml")
NOW = datetime(2026, 11, 23, 9, 0, tzinfo=timezone.utc)  # a Monday


class Clock:
    def __init__(self):
        self.now = NOW

    def __call__(self):
        return self.now


@pytest.fixture
def path(tmp_path):
    return tmp_path / "hpbx.sqlite3"


@pytest.fixture
def prov(path):
    store = Store(path)
    p = Provisioning(store, clock=Clock())
    yield p
    store.close()


def err(fn, *args, **kw) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        fn(*args, **kw)
    return info.value


def ring_all(*targets, duration=10):
    return {"active": True, "days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
            "rows": [{"duration": duration, "targets": list(targets)}]}


def setup_acme(p: Provisioning):
    p.tenant_create({"name": "acme"})
    p.trunk_create({"tenant": "acme", "name": "gw", "host": "127.0.0.1", "port": 5090})
    p.tenant_update("acme", {"trunk": "gw"})
    p.number_create({"tenant": "acme", "number": "0441234567"})
    p.user_create({"tenant": "acme", "username": "anna", "sip_password": "secret1", "internal_number": "100",
                   "displayed_number": "0441234567", "details": {"first_name": "Anna", "name": "Muster"}})
    p.user_create({"tenant": "acme", "username": "ben", "sip_password": "secret2", "internal_number": "101"})


def test_crud_round_trip_and_directory_swap(prov):
    setup_acme(prov)
    before = prov.directory
    assert before.auth_user("anna").sip_password == "secret1"
    u = prov.user_update("anna", {"sip_password": "newpass", "flags": {"behind_nat": True},
                                  "details": {"email": "anna@acme.ch"}})
    assert u["details"] == {"first_name": "Anna", "name": "Muster", "company": "", "mobile": "",
                            "nickname": "", "email": "anna@acme.ch"}
    assert prov.directory is not before and prov.directory.generation > before.generation
    assert before.auth_user("anna").sip_password == "secret1"  # the old snapshot is untouched
    now_user = prov.directory.auth_user("anna")
    assert (now_user.sip_password, now_user.flags.behind_nat, now_user.tenant) == ("newpass", True, "acme")
    assert prov.directory.user_by_internal("acme", "100").username == "anna"
    assert prov.directory.number("+41441234567").number == "0441234567"
    assert [x["username"] for x in prov.user_list("acme")] == ["anna", "ben"]
    assert prov.tenant_get("acme")["users"] == 2
    assert prov.user_get("ben")["internal_number"] == "101"
    prov.user_update("ben", {"internal_number": "102"})
    assert prov.directory.user_by_internal("acme", "101") is None
    assert prov.directory.user_by_internal("acme", "102").username == "ben"
    prov.user_delete("ben")
    assert prov.directory.auth_user("ben") is None
    with pytest.raises(NotFoundError):
        prov.user_get("ben")
    assert prov.licence_counts() == {"users": 1, "cti_users": 0}


def test_restart_keeps_everything(path):
    store = Store(path)
    p = Provisioning(store)
    setup_acme(p)
    p.group_create({"tenant": "acme", "name": "sales", "internal_number": "200", "members": ["anna", "ben"]})
    p.announcement_create({"tenant": "acme", "name": "closed", "file": "closed.wav"})
    p.number_set_slots("0441234567", [ring_all("group:sales")])
    p.switch_create({"tenant": "acme", "name": "Closed", "numbers": ["0441234567"],
                     "plan": {"announcement_after": 1}})
    p.cdr_add({"tenant": "acme", "caller": "0311112222", "called": "0441234567"})
    exported = p.export_tenant("acme")
    store.close()
    store = Store(path)
    p2 = Provisioning(store)
    assert p2.export_tenant("acme") == exported
    assert p2.directory.internal("acme", "200").name == "sales"
    assert p2.cdr_list("acme")[0]["caller"] == "0311112222"
    store.close()


def test_username_unique_server_wide(prov):
    setup_acme(prov)
    prov.tenant_create({"name": "other"})
    e = err(prov.user_create, {"tenant": "other", "username": "anna", "sip_password": "xxxx"})
    assert e.field == "username" and "taken" in e.reason
    # Same internal number in another tenant is fine.
    prov.user_create({"tenant": "other", "username": "otto", "sip_password": "xxxx", "internal_number": "100"})
    assert prov.directory.user_by_internal("other", "100").username == "otto"
    assert prov.directory.user_by_internal("acme", "100").username == "anna"


def test_validation_errors_name_the_field_and_change_nothing(prov):
    setup_acme(prov)
    gen = prov.directory.generation
    cases = [
        (prov.user_create, ({"tenant": "acme", "username": "carl", "sip_password": "xxxx",
                             "internal_number": "705"},), "internal_number"),
        (prov.user_create, ({"tenant": "acme", "username": "carl", "sip_password": "xxxx",
                             "internal_number": "100"},), "internal_number"),
        (prov.user_create, ({"tenant": "acme", "username": "carl", "sip_password": "xxxx",
                             "displayed_number": "0449999999"},), "displayed_number"),
        (prov.user_create, ({"tenant": "nope", "username": "carl", "sip_password": "xxxx"},), "tenant"),
        (prov.user_create, ({"username": "carl", "sip_password": "xxxx"},), "tenant"),
        (prov.user_update, ("anna", {"username": "anna2"}), "username"),
        (prov.user_update, ("anna", {"flags": {"behind_nat": 1}}), "flags.behind_nat"),
        (prov.number_set_slots, ("0441234567", [{}] * 11), "slots[10]"),
        (prov.number_set_slots, ("0441234567", [{}, {"time_start": "25:00"}]), "slots[1].time_start"),
        (prov.number_set_slots, ("0441234567", [ring_all("user:zoe")]), "slots[0].rows[0].targets[0]"),
        (prov.number_create, ({"tenant": "acme", "number": "+41441234567"},), "number"),
        (prov.group_create, ({"tenant": "acme", "name": "g", "members": ["zoe"]},), "members[0]"),
        (prov.group_create, ({"tenant": "acme", "name": "g", "internal_number": "101"},), "internal_number"),
        (prov.tenant_update, ("acme", {"trunk": "missing"}), "trunk"),
        (prov.tenant_create, ({"name": "acme"},), "name"),
    ]
    for fn, args, field in cases:
        e = err(fn, *args)
        assert e.field == field, (fn.__name__, args, e)
    assert prov.directory.generation == gen
    assert prov.directory.auth_user("carl") is None
    assert prov.number_get("0441234567")["slots"][0]["rows"] == []


def test_link_loop_rejected_on_set_slots(prov):
    setup_acme(prov)
    prov.number_create({"tenant": "acme", "number": "0441234568"})
    prov.number_set_slots("0441234568", [ring_all("link:0441234567")])
    e = err(prov.number_set_slots, "0441234567", [ring_all("user:anna"), {"rows": [
        {"duration": 5, "targets": ["user:ben"]}, {"duration": 5, "targets": ["link:0441234568"]}]}])
    assert str(e) == "slots[1].rows[1].targets[0]: LINK loop 0441234567->0441234568->0441234567"


def test_delete_refused_while_referenced(prov):
    setup_acme(prov)
    a = prov.announcement_create({"tenant": "acme", "name": "closed", "file": "closed.wav"})
    assert a["id"] == 1
    prov.number_set_slots("0441234567", [dict(ring_all("user:ben"), announcement_before=1)])
    e = err(prov.announcement_delete, "acme", 1)
    assert e.field == "id" and "number 0441234567 slot 1" in e.reason
    e = err(prov.user_delete, "ben")
    assert "number 0441234567 slot 1 row 1" in e.reason
    e = err(prov.number_delete, "0441234567")
    assert "user anna (displayed number)" in e.reason
    e = err(prov.trunk_delete, "acme", "gw")
    assert "tenant acme" in e.reason
    assert prov.directory.auth_user("ben") is not None
    prov.number_set_slots("0441234567", [])
    prov.announcement_delete("acme", 1)
    prov.user_delete("ben")
    assert prov.announcement_list("acme") == []


def test_tenant_delete_removes_everything_it_owns(prov, path):
    setup_acme(prov)
    prov.group_create({"tenant": "acme", "name": "sales", "internal_number": "200", "members": ["anna"]})
    prov.tenant_delete("acme")
    d = prov.directory
    assert d.auth_user("anna") is None and d.number("0441234567") is None and d.internal("acme", "200") is None
    assert prov.tenant_list() == []
    db = sqlite3.connect(path)
    assert db.execute("SELECT COUNT(*) FROM users").fetchone()[0] == 0
    db.close()
    with pytest.raises(NotFoundError):
        prov.tenant_get("acme")


def test_switch_set_takes_effect_on_the_next_call(prov):
    setup_acme(prov)
    prov.number_set_slots("0441234567", [ring_all("user:anna")])
    prov.switch_create({"tenant": "acme", "name": "Meeting", "numbers": ["0441234567"],
                        "plan": {"rows": [{"duration": 5, "targets": ["user:ben"]}]}})
    assert [t.value for t in route_inbound(prov.directory, "0441234567", NOW).rows[0].targets] == ["anna"]
    sw = prov.switch_set("acme", "Meeting")
    assert sw["on"] and sw["switched_on_at"] == NOW.isoformat()
    plan = route_inbound(prov.directory, "0441234567", NOW)
    assert (plan.switch, [t.value for t in plan.rows[0].targets]) == ("Meeting", ["ben"])
    prov.switch_clear("acme", "Meeting")
    assert route_inbound(prov.directory, "0441234567", NOW).switch == ""
    assert [s["name"] for s in prov.switch_list("acme")] == ["Meeting"]


def test_number_filter_find_unused_and_search(prov):
    # FEATURES 2.1 acceptance statements.
    setup_acme(prov)
    prov.number_create({"tenant": "acme", "number": "0445081111"})
    prov.number_create({"tenant": "acme", "number": "0449990000"})
    prov.number_create({"tenant": "acme", "number": "0449990001", "usage": "fax"})
    assert [n["number"] for n in prov.number_list("acme", filter="508")] == ["0445081111"]
    unused = [n["number"] for n in prov.number_find_unused("acme")]
    assert unused == ["0441234567", "0445081111", "0449990000"]
    prov.number_set_slots("0449990000", [{}, {}, {"rows": [{"duration": 5, "targets": ["external:0791234567"]}]}])
    assert "0449990000" not in [n["number"] for n in prov.number_find_unused("acme")]
    prov.switch_create({"tenant": "acme", "name": "Holiday", "numbers": ["0445081111"]})
    assert "0445081111" in [n["number"] for n in prov.number_find_unused("acme")]
    prov.switch_set("acme", "Holiday")
    assert [n["number"] for n in prov.number_find_unused("acme")] == ["0441234567"]
    prov.number_set_slots("0441234567", [ring_all("user:anna")])
    assert [n["number"] for n in prov.number_search("acme", "muster")] == ["0441234567"]
    assert [n["number"] for n in prov.number_search("acme", "079123")] == ["0449990000"]
    assert prov.number_search("acme", "ben") == []


def test_failure_inside_the_transaction_leaves_nothing(prov, path):
    """A real SQLite error in the middle of an import: no row, no directory change."""
    setup_acme(prov)
    db = sqlite3.connect(path)
    db.execute("CREATE TRIGGER refuse BEFORE INSERT ON numbers WHEN NEW.number = '0310000002' "
               "BEGIN SELECT RAISE(ABORT, 'disk on fire'); END")
    db.commit()
    db.close()
    text = """
[tenant]
name = "beta"
[[users]]
username = "zed"
sip_password = "zzzz"
[[numbers]]
number = "0310000001"
[[numbers]]
number = "0310000002"
"""
    gen = prov.directory.generation
    with pytest.raises(sqlite3.IntegrityError, match="disk on fire"):
        prov.import_tenant(text)
    assert prov.directory.generation == gen and prov.directory.tenant("beta") is None
    assert prov.store.count("tenant") == 1 and prov.store.count("user") == 2
    assert prov.store.count("number") == 1
    # The same failure on a single update keeps the old state too.
    with pytest.raises(sqlite3.IntegrityError):
        prov.number_create({"tenant": "acme", "number": "0310000002"})
    assert prov.directory.number("0310000002") is None


def test_import_validation_names_the_path(prov):
    setup_acme(prov)
    e = err(prov.import_tenant, '[tenant]\nname = "beta"\n[[users]]\nusername = "u1"\nsip_password = "xxxx"\n'
                                '[[users]]\nusername = "u2"\nsip_password = "xxxx"\ninternal_number = "705"\n')
    assert e.field == "users[1].internal_number"
    e = err(prov.import_tenant, '[tenant]\nname = "beta"\n[[users]]\nusername = "anna"\nsip_password = "xxxx"\n')
    assert e.field == "users[0].username"
    e = err(prov.import_tenant, '[tenant]\nname = "beta"\n[[numbers]]\nnumber = "0441"\n[[numbers.slots]]\n'
                                '[[numbers.slots.rows]]\nduration = 5\ntargets = ["link:0441"]\n')
    assert e.field == "numbers[0].slots[0].rows[0].targets[0]" and "LINK loop 0441->0441" in e.reason
    assert err(prov.import_tenant, "[tenant\n").field == "toml"
    assert err(prov.import_tenant, '[tenant]\nname = "acme"\n').field == "tenant.name"
    assert err(prov.import_tenant, '[tenant]\nname = "beta"\n[extra]\n').field == "extra"
    assert prov.directory.tenant("beta") is None


def test_cdr_add_and_list(prov):
    setup_acme(prov)
    c = prov.cdr_add({"tenant": "acme", "call_id": "abc", "caller": "0311112222", "called": "0441234567",
                      "slot": 1, "targets_tried": ["user:anna", "user:ben"], "answered_by": "user:ben",
                      "start": "2026-11-23T09:00:00+00:00", "answer": "2026-11-23T09:00:05+00:00",
                      "end": "2026-11-23T09:01:00+00:00", "end_reason": "bye"})
    assert c["id"] > 0
    listed = prov.cdr_list("acme")
    assert listed == [c]
    assert err(prov.cdr_add, {"tenant": "acme", "start": "yesterday"}).field == "start"
    # Times are kept in UTC: a record written with a +01:00 offset sorts and filters correctly.
    local = prov.cdr_add({"tenant": "acme", "call_id": "local", "start": "2026-11-23T10:30:00+01:00"})
    assert local["start"] == "2026-11-23T09:30:00+00:00"
    since = [c["call_id"] for c in prov.cdr_list("acme", since="2026-11-23T10:15:00+01:00")]
    assert since == ["local"]
    until = [c["call_id"] for c in prov.cdr_list("acme", until="2026-11-23T10:15:00+01:00")]
    assert until == ["abc"]
    assert err(prov.cdr_list, "acme", since="2026-11-23").field == "since"


def test_cdr_add_many_is_one_batch_and_all_or_nothing(prov):
    setup_acme(prov)
    docs = prov.cdr_add_many([{"tenant": "acme", "call_id": f"b{i}", "start": "2026-11-23T10:30:00+01:00"}
                              for i in range(3)])
    ids = [d["id"] for d in docs]
    assert ids == sorted(ids) and len(set(ids)) == 3 and docs[0]["start"] == "2026-11-23T09:30:00+00:00"
    assert [c["call_id"] for c in prov.cdr_list("acme")] == ["b2", "b1", "b0"]
    assert prov.cdr_list("acme")[0] == docs[2]
    # one record that does not validate: nothing of the batch is written
    assert err(prov.cdr_add_many, [{"tenant": "acme", "call_id": "ok"},
                                   {"tenant": "acme", "start": "yesterday"}]).field == "start"
    assert [c["call_id"] for c in prov.cdr_list("acme")] == ["b2", "b1", "b0"]


def test_provision_if_empty_imports_demo_once(prov):
    assert prov.provision_if_empty([DEMO]) == ["demo"]
    assert prov.provision_if_empty([DEMO]) == []
    d = prov.directory
    assert {u.internal_number for u in d.users_of("demo")} == {"100", "101", "102", "103"}
    assert d.trunk("demo").port == 5090
    plan = route_inbound(d, "0441234500", NOW)
    assert [[t.value for t in r.targets] for r in plan.rows] == [["alice", "bob"]]
    plan = route_inbound(d, "+41441234501", NOW)
    assert [(r.duration, [t.value for t in r.targets]) for r in plan.rows] == [
        (10, ["carol"]), (20, ["carol", "dave"])]


def test_listeners_learn_which_users_a_change_removed(prov):
    seen = []
    prov.subscribe(lambda directory, removed: seen.append(set(removed)))
    prov.tenant_create({"name": "acme"})
    for i in range(200):  # enough users to fill every shard of the users mapping
        prov.user_create({"tenant": "acme", "username": f"u{i:03d}", "sip_password": "secret1",
                          "internal_number": str(100 + i)})
    assert all(s == set() for s in seen)
    seen.clear()
    prov.user_delete("u042")
    prov.user_update("u043", {"sip_password": "changed1"})
    assert seen[0] == {"u042"} and all(s == set() for s in seen[1:])
    seen.clear()
    prov.tenant_delete("acme")
    assert seen == [{f"u{i:03d}" for i in range(200) if i != 42}]


def test_registrar_drops_the_bindings_of_deleted_users_only(prov, tmp_path):
    import asyncio

    from hpbx import settings as settings_mod
    from hpbx.sip.registrar import Registrar
    from hpbx.sip.timers import TimerWheel
    from hpbx.store.registrations import Binding, RegistrationStore

    prov.tenant_create({"name": "acme"})
    for name, number in (("anna", "100"), ("ben", "101")):
        prov.user_create({"tenant": "acme", "username": name, "sip_password": "secret1",
                          "internal_number": number})
    store = RegistrationStore(tmp_path / "reg.sqlite3")
    far = 4_000_000_000.0
    store.write_batch([Binding(u, f"sip:{u}@10.0.0.1", "acme", None, None, None, far, 1.0,
                               "10.0.0.1", 5060, "udp", 0, None, None, "cid", 1, False)
                       for u in ("anna", "ben")], [])

    async def main():
        loop = asyncio.get_running_loop()
        wheel = TimerWheel(loop)
        reg = Registrar(loop, wheel, store, None, settings_mod.from_dict({}))
        reg.start()
        prov.subscribe(reg.drop_unknown)
        prov.user_delete("anna")
        await asyncio.sleep(0.05)  # the removal is committed with the next batch
        reg.stop()
        wheel.close()
        return sorted(reg.bindings)

    assert asyncio.run(main()) == ["ben"]
    assert [r[0] for r in store.all()] == ["ben"]
    store.close()
