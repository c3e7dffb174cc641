"""Every provisioning and live-state method over the real socket, on real SQLite."""
from __future__ import annotations

import subprocess
import time

import pytest

from adminrig import HPBXCTL, REPO
from hpbx.admin.methods import METHODS
from hpbx.admin.protocol import INTERNAL_ERROR, INVALID_PARAMS, NOT_FOUND, RpcError
from hpbx.store.registrations import Binding

ALWAYS = {"active": True, "name": "Always", "days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
          "rows": [{"duration": 20, "targets": ["user:anna"]}]}
NIGHT = {"active": True, "name": "Night", "days": ["mon", "tue", "wed", "thu", "fri"], "time_start": "18:00",
         "time_end": "07:59", "rows": [{"duration": 15, "targets": ["user:anna"]},
                                       {"duration": 30, "targets": ["user:anna", "group:sales"]}]}


def rpc_error(c, method, params=None):
    with pytest.raises(RpcError) as err:
        c.call(method, params or {})
    return err.value


def provision_acme(c):
    c.call("tenant.create", {"name": "acme", "domain": "acme.example"})
    c.call("trunk.create", {"tenant": "acme", "name": "gw", "host": "127.0.0.1", "port": 5090})
    c.call("tenant.update", {"name": "acme", "trunk": "gw"})
    c.call("user.create", {"tenant": "acme", "username": "anna", "sip_password": "anna-pw", "internal_number": "201",
                           "details": {"first_name": "Anna", "name": "Muster", "email": "anna@acme.example"},
                           "flags": {"cti_access": True}})
    c.call("user.create", {"tenant": "acme", "username": "ben", "sip_password": "ben-pw", "internal_number": "202"})
    c.call("group.create", {"tenant": "acme", "name": "sales", "internal_number": "250", "members": ["anna", "ben"]})
    c.call("number.create", {"tenant": "acme", "number": "0445081111", "name": "Main"})
    c.call("number.create", {"tenant": "acme", "number": "0445082222", "name": "Spare"})
    c.call("number.set_slots", {"number": "0445081111", "slots": [ALWAYS, NIGHT]})


def test_tenant_and_user_lifecycle(prov):
    st, _ = prov
    with st.client() as c:
        provision_acme(c)
        tenant = c.call("tenant.get", {"name": "acme"})
        assert {k: tenant[k] for k in ("name", "domain", "timezone", "trunk")} == {
            "name": "acme", "domain": "acme.example", "timezone": "Europe/Zurich", "trunk": "gw"}
        assert [t["name"] for t in c.call("tenant.list")] == ["acme"]
        anna = c.call("user.get", {"username": "anna"})
        assert anna["internal_number"] == "201" and anna["details"]["first_name"] == "Anna"
        updated = c.call("user.update", {"username": "anna", "details": {"mobile": "0791234567"}})
        assert updated["details"]["mobile"] == "0791234567" and updated["details"]["first_name"] == "Anna"
        assert [u["username"] for u in c.call("user.list", {"tenant": "acme"})] == ["anna", "ben"]
        assert [u["username"] for u in c.call("user.list", {"tenant": "acme", "offset": 1, "limit": 5})] == ["ben"]
        info = c.call("system.info")
        assert info["licences"] == {"users": 2, "cti_users": 1}
        c.call("user.create", {"tenant": "acme", "username": "carl", "sip_password": "carl-pw"})
        assert c.call("user.delete", {"username": "carl"}) == {"username": "carl", "deleted": True}
        assert rpc_error(c, "user.get", {"username": "carl"}).code == NOT_FOUND


def test_domain_validation_names_the_field_and_changes_nothing(prov):
    st, _ = prov
    with st.client() as c:
        provision_acme(c)
        err = rpc_error(c, "user.create", {"tenant": "acme", "username": "zed", "sip_password": "zed-pw",
                                           "internal_number": "705"})
        assert err.code == INVALID_PARAMS
        assert err.data == {"field": "internal_number", "reason": "705 is reserved (700-720, 801, 900-902)"}
        assert rpc_error(c, "user.get", {"username": "zed"}).code == NOT_FOUND
        err = rpc_error(c, "number.set_slots", {"number": "0445081111",
                                                "slots": [ALWAYS, {**NIGHT, "time_start": "25:00"}]})
        assert err.code == INVALID_PARAMS and err.data["field"] == "slots[1].time_start"
        # the failed change left both slots as they were
        slots = c.call("number.get", {"number": "0445081111"})["slots"]
        assert slots[1]["time_start"] == "18:00" and slots[0]["name"] == "Always"
        err = rpc_error(c, "user.create", {"tenant": "nope", "username": "x1", "sip_password": "pw12"})
        assert err.code == INVALID_PARAMS and err.data["field"] == "tenant"
        err = rpc_error(c, "user.update", {"username": "anna"})
        assert err.code == INVALID_PARAMS and err.data["field"] == "params"
        err = rpc_error(c, "user.update", {"username": "anna", "flags": {"fly": True}})
        assert err.code == INVALID_PARAMS and err.data["field"] == "flags.fly"
        err = rpc_error(c, "user.delete", {"username": "anna"})  # still in a dial plan
        assert err.code == INVALID_PARAMS and "still used" in err.data["reason"]
        assert rpc_error(c, "number.get", {"number": "0449999999"}).data == {"kind": "number", "key": "0449999999"}


def test_groups_trunks_numbers_switches_announcements(prov):
    st, _ = prov
    with st.client() as c:
        provision_acme(c)
        assert c.call("group.get", {"tenant": "acme", "name": "sales"})["members"] == ["anna", "ben"]
        assert c.call("group.update", {"tenant": "acme", "name": "sales", "logged_out": ["ben"]})["logged_out"] == ["ben"]
        assert [g["name"] for g in c.call("group.list", {"tenant": "acme"})] == ["sales"]
        assert c.call("trunk.update", {"tenant": "acme", "name": "gw", "transport": "tcp"})["transport"] == "tcp"
        assert c.call("trunk.get", {"tenant": "acme", "name": "gw"})["port"] == 5090
        assert [t["name"] for t in c.call("trunk.list")] == ["gw"]
        c.call("trunk.create", {"tenant": "acme", "name": "spare", "host": "127.0.0.2"})
        assert rpc_error(c, "trunk.delete", {"tenant": "acme", "name": "gw"}).code == INVALID_PARAMS  # in use
        c.call("trunk.delete", {"tenant": "acme", "name": "spare"})
        assert [t["name"] for t in c.call("trunk.list", {"tenant": "acme"})] == ["gw"]
        assert [n["number"] for n in c.call("number.list", {"tenant": "acme", "filter": "5082"})] == ["0445082222"]
        assert [n["number"] for n in c.call("number.find_unused", {"tenant": "acme"})] == ["0445082222"]
        assert [n["number"] for n in c.call("number.search", {"tenant": "acme", "text": "sales"})] == ["0445081111"]
        assert c.call("number.update", {"number": "0445082222", "usage": "conference"})["usage"] == "conference"
        assert c.call("number.find_unused", {"tenant": "acme"}) == []

        c.call("switch.create", {"tenant": "acme", "name": "holiday", "numbers": ["0445081111"], "use_slot": 2})
        assert c.call("switch.get", {"tenant": "acme", "name": "holiday"})["on"] is False
        assert c.call("switch.set", {"tenant": "acme", "name": "holiday"})["on"] is True
        assert [s["on"] for s in c.call("switch.list", {"tenant": "acme"})] == [True]
        assert c.call("switch.clear", {"tenant": "acme", "name": "holiday"})["on"] is False
        assert c.call("switch.update", {"tenant": "acme", "name": "holiday", "use_slot": 1})["use_slot"] == 1
        assert rpc_error(c, "switch.update", {"tenant": "acme", "name": "holiday", "use_slot": 11}).data["field"] == "use_slot"
        c.call("switch.delete", {"tenant": "acme", "name": "holiday"})
        assert c.call("switch.list", {"tenant": "acme"}) == []

        a = c.call("announcement.create", {"tenant": "acme", "name": "closed", "file": "closed.wav"})
        assert a["id"] == 1
        assert c.call("announcement.update", {"tenant": "acme", "id": 1, "duration_ms": 4200})["duration_ms"] == 4200
        assert c.call("announcement.get", {"tenant": "acme", "id": 1})["name"] == "closed"
        assert [x["id"] for x in c.call("announcement.list", {"tenant": "acme"})] == [1]
        c.call("announcement.delete", {"tenant": "acme", "id": 1})
        assert rpc_error(c, "announcement.get", {"tenant": "acme", "id": 1}).code == NOT_FOUND

        c.call("number.delete", {"number": "0445082222"})
        c.call("group.create", {"tenant": "acme", "name": "temp", "members": ["ben"]})
        assert c.call("group.delete", {"tenant": "acme", "name": "temp"})["deleted"] is True
        assert rpc_error(c, "group.get", {"tenant": "acme", "name": "temp"}).code == NOT_FOUND
        assert c.call("tenant.delete", {"name": "acme"}) == {"name": "acme", "deleted": True}
        assert c.call("tenant.list") == [] and c.call("user.list") == []


def test_cdr_list(prov):
    st, _ = prov
    with st.client() as c:
        provision_acme(c)
        for i in range(3):
            st.ctx.provisioning.cdr_add({"tenant": "acme", "call_id": f"c{i}", "caller": "0791112233",
                                         "called": "0445081111", "slot": 1, "start": f"2026-11-25T10:0{i}:00+00:00"})
        rows = c.call("cdr.list", {"tenant": "acme"})
        assert [r["call_id"] for r in rows] == ["c2", "c1", "c0"]
        assert [r["call_id"] for r in c.call("cdr.list", {"tenant": "acme", "limit": 1, "offset": 1})] == ["c1"]
        assert [r["call_id"] for r in c.call("cdr.list", {"since": "2026-11-25T10:01:00+00:00"})] == ["c2", "c1"]


def test_registration_list(prov):
    st, bindings = prov
    now = time.time()

    def binding(user, contact, host, port, transport, nat, ttl):
        return Binding(user, contact, "acme", None, None, None, now + ttl, now, host, port, transport, 0,
                       "SIPp/3.7", None, "cid", 1, nat)

    bindings.write_batch([binding("anna", "sip:anna@10.0.0.5:5062", "198.51.100.9", 40000, "udp", True, 300),
                          binding("anna", "sip:anna@127.0.0.1:5070;transport=tcp", "127.0.0.1", 5070, "tcp", False, 60),
                          binding("ben", "sip:ben@127.0.0.1:5071", "127.0.0.1", 5071, "udp", False, 3600)], [])
    with st.client() as c:
        rows = c.call("registration.list", {"user": "anna"})
        assert len(rows) == 2
        natted = next(r for r in rows if r["behind_nat"])
        assert natted["source"] == "198.51.100.9:40000" and natted["transport"] == "udp"
        assert natted["user_agent"] == "SIPp/3.7" and 295 <= natted["expires_in"] <= 300
        assert len(c.call("registration.list", {"tenant": "acme"})) == 3
        assert len(c.call("registration.list", {"limit": 2})) == 2
        assert c.call("registration.list", {"tenant": "other"}) == []
    out = subprocess.run([str(HPBXCTL), "--socket", st.path, "registration.list", "user=ben"],
                         capture_output=True, text=True, timeout=20)
    head, row = out.stdout.splitlines()
    assert head.split()[:4] == ["USER", "CONTACT", "SOURCE", "TRANSPORT"]
    assert row.split()[:5] == ["ben", "sip:ben@127.0.0.1:5071", "127.0.0.1:5071", "udp", "SIPp/3.7"]


def test_export_delete_import_gives_the_same_tenant(prov, tmp_path):
    st, _ = prov
    with st.client() as c:
        provision_acme(c)
        c.call("switch.create", {"tenant": "acme", "name": "holiday", "numbers": ["0445081111"], "use_slot": 2})
        before = c.call("tenant.export", {"name": "acme"})
        assert 'name = "acme"' in before and "0445081111" in before
    # hpbxctl and hpbx export/import through the socket, as an operator would
    ctl = [str(HPBXCTL), "--socket", st.path]
    assert subprocess.run([*ctl, "tenant.delete", "name=acme"], capture_output=True, timeout=20).returncode == 0
    cfg = tmp_path / "cli.toml"
    cfg.write_text(f'[admin]\nsocket = "{st.path}"\n[store]\npath = "{tmp_path / "unused.sqlite3"}"\n')
    exported = tmp_path / "acme.toml"
    exported.write_text(before)
    hpbx = [str(REPO / ".venv" / "bin" / "hpbx")]
    out = subprocess.run([*hpbx, "import", str(exported), "--config", str(cfg)], capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("imported tenant acme")
    again = subprocess.run([*hpbx, "export", "acme", "--config", str(cfg)], capture_output=True, text=True, timeout=20)
    assert again.returncode == 0 and again.stdout == before
    by_ctl = subprocess.run([*ctl, "tenant.export", "name=acme"], capture_output=True, text=True, timeout=20)
    assert by_ctl.returncode == 0 and by_ctl.stdout == before
    # importing it once more is refused, naming the field; --replace is the explicit way
    out = subprocess.run([*hpbx, "import", str(exported), "--config", str(cfg)], capture_output=True, text=True, timeout=20)
    assert out.returncode == 1 and "tenant.name: tenant 'acme' already exists" in out.stderr
    with st.client() as c:
        assert c.call("tenant.import", {"toml": before, "replace": True})["tenant"] == "acme"
        err = rpc_error(c, "tenant.import", {"toml": "[tenant\nname="})
        assert err.code == INVALID_PARAMS and err.data["field"] == "toml"
        assert not (tmp_path / "unused.sqlite3").exists()  # the server's store was used, not a second file


def test_changes_survive_a_restart(start_admin, tmp_path):
    from adminrig import provisioned_context

    ctx, bindings = provisioned_context(tmp_path)
    st = start_admin(ctx)
    with st.client() as c:
        provision_acme(c)
    st.stop()
    ctx.provisioning.store.close()
    bindings.close()
    ctx2, bindings2 = provisioned_context(tmp_path)
    st2 = start_admin(ctx2)
    with st2.client() as c:
        assert c.call("user.get", {"username": "anna"})["internal_number"] == "201"
        assert len(c.call("number.get", {"number": "0445081111"})["slots"]) == 10
    bindings2.close()


def test_every_method_is_exercised_here():
    """Keeps the suite honest as the table grows: each method name appears in a test (the admin
    tests here, or a feature's own tests, e.g. tests/fax for fax.*)."""
    import pathlib

    text = "".join(p.read_text() for p in pathlib.Path(__file__).parents[1].rglob("test_*.py"))
    missing = [m for m in METHODS if f'"{m}"' not in text]
    assert missing == []


def test_internal_error_is_answered_and_the_server_keeps_serving(prov):
    st, bindings = prov
    with st.client() as c:
        assert c.call("stats.get", {"layer": "store"})["store"]["bindings"] == 0
        bindings.close()  # the store's stats source now fails inside the server
        err = rpc_error(c, "stats.get", {"layer": "store"})
        assert err.code == INTERNAL_ERROR and err.message == "internal error in stats.get (see the server log)"
        assert c.call("stats.get", {"layer": "admin"})["admin"]["error.-32603"] == 1
        err = rpc_error(c, "cdr.list", {"limit": 2**40})  # bounded at 2**31
        assert err.code == INVALID_PARAMS and err.data["field"] == "limit"
