"""Tenant isolation through /rpc, tried with crafted requests of the demo tenant's admin: every
way to reach tenant "other" through a reference (a switch over its number, a group or dial plan
naming its user, a phone keyed on its user, an import smuggling its objects, a key field
rewritten by an update) is refused with the field named, and afterwards everything of "other"
is byte-for-byte what it was. The other direction (other's admin on demo) is tried too."""
from __future__ import annotations

import json

import pytest

SLOT = {"active": True, "days": ["mon"], "rows": [{"duration": 10, "targets": ["user:olga"]}]}


def snapshot(rig, tenant: str) -> str:
    with rig.admin() as a:
        return a.call("tenant.export", name=tenant) + json.dumps(a.call("phone.list", tenant=tenant), sort_keys=True)


@pytest.fixture(scope="module")
def other_before(rig):
    with rig.admin() as a:
        a.call("phone.create", mac="00:04:13:00:00:99", tenant="other", vendor="snom", accounts=["olga"],
               http_password="olga-phone-pw")
        a.call("group.create", tenant="other", name="ogroup", members=["olga"])
        a.call("announcement.create", tenant="other", id=7, name="other welcome")
    return snapshot(rig, "other")


# (method, params, field the error must name or None for "not found"/"denied" without field)
REFERENCES = [
    ("switch.create", {"name": "steal", "numbers": ["0449990000"]}),
    ("switch.create", {"name": "steal2", "numbers": ["0441234500"], "plan": SLOT}),
    ("group.create", {"name": "g-evil", "members": ["olga"]}),
    ("number.set_slots", {"number": "0441234500", "slots": [SLOT]}),
    ("number.set_slots", {"number": "0441234500",
                          "slots": [{"active": True, "days": ["mon"], "rows": [{"duration": 10, "targets": ["group:ogroup"]}]}]}),
    ("number.set_slots", {"number": "0441234500",
                          "slots": [{"active": True, "days": ["mon"], "rows": [{"duration": 10, "targets": ["number:0449990000"]}]}]}),
    ("number.create", {"number": "0449990000", "name": "taken"}),
    ("user.update", {"username": "alice", "displayed_number": "0449990000"}),
    ("user.update", {"username": "alice", "tenant": "other"}),
    ("user.create", {"username": "evil3", "sip_password": "evil-secret", "internal_number": "105",
                     "displayed_number": "0449990000"}),
    ("phone.create", {"mac": "001122330001", "vendor": "snom", "accounts": ["alice"],
                      "keys": [{"type": "blf", "value": "olga"}]}),
    ("phone.create", {"mac": "001122330002", "vendor": "snom", "accounts": ["alice"],
                      "keys": [{"type": "pickup", "value": "olga"}]}),
    ("phone.create", {"mac": "001122330003", "vendor": "snom", "accounts": ["alice"],
                      "keys": [{"type": "switch", "value": "other-closed"}]}),
    ("phone.create", {"mac": "00:04:13:00:00:99", "vendor": "snom", "accounts": ["alice"]}),
    ("announcement.get", {"id": 7}),
    ("announcement.update", {"id": 7, "name": "mine now"}),
    ("announcement.delete", {"id": 7}),
    ("group.get", {"name": "ogroup"}),
    ("group.update", {"name": "ogroup", "members": []}),
    ("group.delete", {"name": "ogroup"}),
    ("switch.get", {"name": "other-closed"}),
    ("switch.set", {"name": "other-closed"}),
    ("switch.delete", {"name": "other-closed"}),
    ("phone.get", {"mac": "00:04:13:00:00:99"}),
    ("phone.update", {"mac": "00:04:13:00:00:99", "http_password": "hijacked-pw"}),
    ("phone.update", {"mac": "00:04:13:00:00:99", "tenant": "demo"}),
    ("phone.delete", {"mac": "00:04:13:00:00:99"}),
    ("tenant.update", {"name": "other", "timezone": "UTC"}),
    ("number.update", {"number": "0449990000", "name": "mine"}),
    ("number.delete", {"number": "0449990000"}),
    ("number.search", {"text": "olga"}),
    ("call.hangup", {"call_id": "no-such-call"}),
]


def test_references_to_the_other_tenant_are_refused(rig, other_before):
    s = rig.session("demoadm")
    accepted = []
    for method, params in REFERENCES:
        answer = s.rpc(method, params)
        if "error" not in answer and not (method == "number.search" and answer["result"] == []):
            accepted.append((method, params, answer.get("result")))
    assert accepted == [], accepted
    assert snapshot(rig, "other") == other_before
    with rig.admin() as a:
        demo = a.call("tenant.export", name="demo")
    assert "olga" not in demo and "0449990000" not in demo


def test_imports_cannot_smuggle_the_other_tenants_objects(rig, other_before):
    s = rig.session("demoadm")
    with rig.admin() as a:
        demo_before = a.call("tenant.export", name="demo")
    # its own tenant, replaced, but with the other tenant's user name and number inside
    for extra in ('[[users]]\nusername = "olga"\nsip_password = "stolen-secret"\n',
                  '[[numbers]]\nnumber = "0449990000"\nname = "stolen"\n'):
        answer = s.rpc("tenant.import", {"toml": demo_before + "\n" + extra, "replace": True})
        assert answer["error"]["code"] == -32602, answer
    # a tenant table naming another tenant in another spelling
    for toml in ('tenant = "other"\n', '[tenant]\nname = "other"\n', '[tenant]\nname = "brandnew"\n'):
        answer = s.rpc("tenant.import", {"toml": toml, "replace": True})
        assert answer["error"]["code"] in (-32004, -32602), (toml, answer)
    # phones: a phones file of its tenant naming the other tenant's user, or a phone of "other"
    for toml in ('tenant = "demo"\n[[phones]]\nmac = "001122330009"\nvendor = "snom"\naccounts = ["olga"]\n',
                 'tenant = "demo"\n[[phones]]\nmac = "00:04:13:00:00:99"\nvendor = "snom"\naccounts = ["alice"]\n',
                 'tenant = "other"\n[[phones]]\nmac = "001122330008"\nvendor = "snom"\naccounts = ["olga"]\n',
                 '[[phones]]\nmac = "001122330007"\nvendor = "snom"\naccounts = ["olga"]\n'):
        answer = s.rpc("phone.import", {"toml": toml, "replace": True})
        assert "error" in answer, (toml, answer)
    assert snapshot(rig, "other") == other_before
    with rig.admin() as a:
        assert a.call("tenant.export", name="demo") == demo_before


def test_lists_and_filters_stop_at_the_own_tenant(rig, other_before):
    s = rig.session("demoadm")
    for method in ("user.list", "number.list", "group.list", "switch.list", "announcement.list", "trunk.list",
                   "phone.list", "registration.list", "call.list", "cdr.list", "audit.list", "number.find_unused",
                   "mail.queue"):
        answer = s.rpc(method, {})
        assert "result" in answer, (method, answer)
        rows = answer["result"]
        assert all(r.get("tenant", "demo") == "demo" for r in rows if isinstance(r, dict)), (method, rows)
        assert "olga" not in json.dumps(rows) and "0449990000" not in json.dumps(rows), method
    dash = s.rpc("dashboard.get", {})["result"]
    assert [t["tenant"] for t in dash["tenants"]] == ["demo"]
    assert s.rpc("cdr.export", {})["result"]["rows"] >= 0
    # the other direction
    o = rig.session("otheradm")
    assert {u["username"] for u in o.rpc("user.list")["result"]} == {"olga"}
    assert o.rpc("user.get", {"username": "alice"})["error"]["code"] == -32001
    assert o.rpc("switch.list", {"tenant": "demo"})["error"]["code"] == -32004


def test_metrics_and_provisioning_are_not_a_side_door(rig, other_before):
    s = rig.session("demoadm")
    # a tenant admin's session does not open the other tenant's phone files
    status, _, _ = rig.request("GET", "/prov/000413000099.xml", headers={}, opener=s.opener)
    assert status == 401
    # an operator is not a tenant admin: a tenant admin's account is refused on operator methods
    assert s.rpc("admin.update", {"username": "otheradm", "password": "taken-over-1"})["error"]["code"] == -32004
    assert rig.session("otheradm").status == 200
