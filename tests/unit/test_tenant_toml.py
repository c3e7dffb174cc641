"""A tenant as TOML: export, delete, import gives the same export; the demo file is that format."""
import tomllib
from pathlib import Path

import pytest

from hpbx.errors import ValidationError
from hpbx.pbx.provisioning import Provisioning
from hpbx.store import Store

DEMO = Path(__file__).resolve().parents[2] / "config" / "demo.toml"
ALL = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


@pytest.fixture
def prov(tmp_path):
    store = Store(tmp_path / "hpbx.sqlite3")
    yield Provisioning(store)
    store.close()


def full_tenant(p: Provisioning) -> None:
    """A tenant using every kind of object and most fields."""
    p.tenant_create({"name": "acme", "timezone": "Europe/Zurich", "domain": "acme.example"})
    p.trunk_create({"tenant": "acme", "name": "gw", "host": "127.0.0.1", "port": 5090, "transport": "tcp",
                    "username": "acme", "password": "trunkpw", "from_domain": "sip.acme.example"})
    p.tenant_update("acme", {"trunk": "gw"})
    p.number_create({"tenant": "acme", "number": "0441234567", "name": "Main", "alert_info": "<urn:x>;info=a"})
    p.number_create({"tenant": "acme", "number": "0441234568", "usage": "telephone"})
    p.number_create({"tenant": "acme", "number": "0441234569", "usage": "fax"})
    p.user_create({"tenant": "acme", "username": "weber", "sip_password": "pw-weber", "internal_number": "100",
                   "displayed_number": "0441234567", "displayed_number_diversion": "original_caller",
                   "cti_password": "cti", "details": {"first_name": "Hans", "name": "Weber", "company": "Acme",
                                                      "mobile": "0791112233", "nickname": "hw",
                                                      "email": "weber@acme.example"},
                   "flags": {"busy_on_active_call": True, "behind_nat": True, "cti_access": True}})
    p.user_create({"tenant": "acme", "username": "froehlich", "sip_password": "pw-fr", "internal_number": "101",
                   "details": {"name": "Fröhlich"}})
    p.user_create({"tenant": "acme", "username": "brenner", "sip_password": "pw-br", "internal_number": "102",
                   "flags": {"not_in_allusers": True}})
    p.group_create({"tenant": "acme", "name": "office", "internal_number": "200",
                    "members": ["weber", "froehlich"], "logged_out": ["froehlich"]})
    p.announcement_create({"tenant": "acme", "id": 7, "name": "all busy", "file": "busy.wav", "duration_ms": 4000})
    p.announcement_create({"tenant": "acme", "name": "hold", "file": "moh.wav", "kind": "music"})
    p.number_set_slots("0441234568", [{"active": True, "days": ALL, "rows": [
        {"duration": 20, "targets": ["user:brenner"]}]}])
    p.number_set_slots("0441234567", [
        {"active": True, "name": "MoWe morning", "days": ["mon", "wed"], "time_start": "08:00",
         "time_end": "12:00", "announcement_after": 7, "voice2mail": "office@acme.example",
         "rows": [{"mode": 1, "duration": 10, "targets": ["user:weber"]},
                  {"mode": 1, "duration": 15, "targets": ["user:weber", "user:froehlich", "group:office",
                                                          "external:0791234567"]}]},
        {},
        {"active": True, "mode": "date", "date_from": "2026-12-24", "date_to": "2026-12-26",
         "time_start": "22:00", "time_end": "06:00", "rows": [{"duration": 30, "targets": ["link:0441234568"]}]},
        {"active": False, "name": "spare", "days": ["sat"]},
    ])
    p.switch_create({"tenant": "acme", "name": "Closed", "numbers": ["0441234567"], "use_slot": 4})
    p.switch_create({"tenant": "acme", "name": "Holiday", "numbers": ["0441234567", "0441234568"], "on": True,
                     "switched_on_at": "2026-12-20T08:00:00+01:00", "auto_off_at": "2027-01-03T00:00:00+01:00",
                     "plan": {"name": "closed", "announcement_after": 7, "voice2mail": "x@acme.example"}})


def test_export_delete_import_gives_the_same_export(prov):
    full_tenant(prov)
    first = prov.export_tenant("acme")
    before = {k: prov.user_get(k) for k in ("weber", "froehlich", "brenner")}
    prov.tenant_delete("acme")
    assert prov.directory.tenant("acme") is None
    summary = prov.import_tenant(first)
    assert summary == {"tenant": "acme", "trunks": 1, "users": 3, "groups": 1, "announcements": 2,
                       "numbers": 3, "switches": 2}
    assert prov.export_tenant("acme") == first
    assert {k: prov.user_get(k) for k in before} == before
    assert prov.directory.switches_for("0441234568")[0].name == "Holiday"


def test_export_is_readable_toml_without_defaults(prov):
    full_tenant(prov)
    doc = tomllib.loads(prov.export_tenant("acme"))
    assert doc["tenant"] == {"name": "acme", "domain": "acme.example", "trunk": "gw"}
    brenner = next(u for u in doc["users"] if u["username"] == "brenner")
    assert brenner == {"username": "brenner", "sip_password": "pw-br", "internal_number": "102",
                       "flags": {"not_in_allusers": True}}
    main = next(n for n in doc["numbers"] if n["number"] == "0441234567")
    assert len(main["slots"]) == 4 and main["slots"][1] == {}
    assert main["slots"][0]["rows"][1]["targets"][-1] == "external:0791234567"
    assert "tenant" not in doc["numbers"][0]


def test_import_replace_swaps_the_tenant_in_one_go(prov):
    full_tenant(prov)
    text = prov.export_tenant("acme")
    prov.user_create({"tenant": "acme", "username": "extra", "sip_password": "pass"})
    with pytest.raises(ValidationError) as info:
        prov.import_tenant(text)
    assert info.value.field == "tenant.name"
    prov.import_tenant(text, replace=True)
    assert prov.directory.auth_user("extra") is None
    assert prov.export_tenant("acme") == text


def test_demo_file_imports_and_round_trips(prov):
    prov.import_file(DEMO)
    d = prov.directory
    assert sorted(u.internal_number for u in d.users_of("demo")) == ["100", "101", "102", "103"]
    assert all(d.auth_user(u.username).sip_password for u in d.users_of("demo"))
    assert d.trunk("demo").host == "127.0.0.1" and d.trunk("demo").port == 5090
    numbers = d.objects("demo").numbers
    assert any(len(n.slots[0].rows) == 2 for n in numbers.values())
    always = next(n for n in numbers.values() if len(n.slots[0].rows) == 1)
    assert (always.slots[0].time_start, always.slots[0].time_end, len(always.slots[0].days)) == ("00:00", "23:59", 7)
    text = prov.export_tenant("demo")
    prov.tenant_delete("demo")
    prov.import_tenant(text)
    assert prov.export_tenant("demo") == text
