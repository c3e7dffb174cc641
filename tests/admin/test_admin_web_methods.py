"""The web face's methods over the admin socket (real services on SQLite, both event loops):
admin accounts, the audit log, number.simulate with registration state, phone records and
their TOML, the dashboard."""
from __future__ import annotations

import time

import pytest

from adminrig import provisioned_context
from hpbx.admin.accounts import AccountService, AuditLog, verify_password
from hpbx.admin.protocol import INVALID_PARAMS, NOT_FOUND, RpcError
from hpbx.pbx.phones import PhoneService
from hpbx.store.admins import AdminStore
from hpbx.store.phones import PhoneStore
from hpbx.store.registrations import Binding


@pytest.fixture
def web(start_admin, tmp_path):
    ctx, bindings = provisioned_context(tmp_path)
    store = AdminStore(tmp_path / "hpbx.sqlite3")
    ctx.accounts = AccountService(store, lambda t: ctx.provisioning.directory.objects(t) is not None)
    ctx.audit = AuditLog(store)
    phones = PhoneStore(tmp_path / "hpbx.sqlite3")
    ctx.phones = PhoneService(phones, ctx.provisioning)
    st = start_admin(ctx)
    with st.client() as c:
        c.call("tenant.create", {"name": "acme"})
        c.call("user.create", {"tenant": "acme", "username": "anna", "sip_password": "anna-pw", "internal_number": "201"})
        c.call("user.create", {"tenant": "acme", "username": "ben", "sip_password": "ben-pw1"})
        c.call("number.create", {"tenant": "acme", "number": "0445081111", "slots": [
            {"active": True, "days": ["mon", "tue", "wed", "thu", "fri"], "time_start": "08:00", "time_end": "17:59",
             "rows": [{"duration": 10, "targets": ["user:anna"]}, {"duration": 20, "targets": ["user:anna", "user:ben"]}]},
            {"active": True, "days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
             "rows": [{"duration": 30, "targets": ["user:ben"]}]}]})
    yield st, bindings, store
    bindings.close()
    store.close()
    phones.close()


def err(c, method, params):
    with pytest.raises(RpcError) as e:
        c.call(method, params)
    return e.value


def test_admin_accounts(web):
    st, _, store = web
    with st.client() as c:
        assert c.call("admin.create", {"username": "op", "password": "op-password", "role": "operator"}) == \
            {"username": "op", "role": "operator", "tenant": ""}
        c.call("admin.create", {"username": "ta", "password": "ta-password", "role": "tenant_admin", "tenant": "acme"})
        assert err(c, "admin.create", {"username": "tb", "password": "tb-password", "role": "tenant_admin"}).data["field"] == "tenant"
        assert err(c, "admin.create", {"username": "tb", "password": "short", "role": "operator"}).data["field"] == "password"
        assert err(c, "admin.create", {"username": "tb", "password": "tb-password", "role": "tenant_admin",
                                       "tenant": "nope"}).data["field"] == "tenant"
        assert err(c, "admin.create", {"username": "op", "password": "op-password", "role": "operator"}).code == INVALID_PARAMS
        assert [a["username"] for a in c.call("admin.list", {})] == ["op", "ta"]
        c.call("admin.update", {"username": "ta", "password": "ta-new-password"})
        assert c.call("admin.delete", {"username": "op"}) == {"username": "op", "deleted": True}
        assert err(c, "admin.delete", {"username": "op"}).code == NOT_FOUND
    row = store.account_get("ta")
    assert row["pwhash"].startswith("scrypt$") and "ta-new-password" not in row["pwhash"]
    assert verify_password("ta-new-password", row["pwhash"]) and not verify_password("ta-password", row["pwhash"])


def test_audit_log_of_socket_changes(web):
    st, _, _ = web
    with st.client() as c:
        c.call("user.update", {"username": "ben", "sip_password": "ben-new-pw"})
        log = c.call("audit.list", {"tenant": "acme"})
        assert [r["method"] for r in log][:2] == ["user.update", "number.create"]
        assert log[0]["who"].startswith("uid:") and log[0]["params"]["sip_password"] == "***"
        assert log[0]["at"].endswith("+00:00")
        assert c.call("audit.list", {"method": "user.update", "limit": 1})[0]["params"]["username"] == "ben"
        c.call("user.list", {})
        assert c.call("audit.list", {"method": "user.list"}) == []


def test_simulate_with_time_and_registrations(web):
    st, bindings, _ = web
    now = time.time()
    bindings.write_batch([Binding("anna", "sip:anna@127.0.0.1:5099", "acme", None, None, None, now + 300, now,
                                  "127.0.0.1", 5099, "udp", 0, "test-phone", None, "c1", 1, False)], [])
    with st.client() as c:
        work = c.call("number.simulate", {"number": "0445081111", "at": "2026-12-07T09:00:00+01:00"})  # a Monday
        assert (work["slot"], work["source"]) == (1, "weekday")
        assert [[t["target"] for t in r["targets"]] for r in work["rows"]] == [["user:anna"], ["user:anna", "user:ben"]]
        assert [r["starts_after"] for r in work["rows"]] == [0, 10]
        anna = work["rows"][0]["targets"][0]
        assert anna["registered"] and anna["devices"][0]["source"] == "127.0.0.1:5099"
        assert work["rows"][1]["targets"][1]["registered"] is False and work["rows"][1]["reachable"] == 1
        night = c.call("number.simulate", {"number": "+41445081111", "at": "2026-12-07T20:00:00+01:00"})
        assert night["slot"] == 2 and night["rows"][0]["targets"][0]["target"] == "user:ben"
        assert err(c, "number.simulate", {"number": "0445081111", "at": "2026-12-07T20:00"}).data["field"] == "at"
        assert err(c, "number.simulate", {"number": "0999"}).code == NOT_FOUND


def test_phone_records(web):
    st, _, _ = web
    with st.client() as c:
        made = c.call("phone.create", {"mac": "00:15:65:AA:BB:CC", "tenant": "acme", "vendor": "yealink",
                                       "accounts": ["anna"], "keys": [{"type": "blf", "value": "ben"}]})
        assert made["mac"] == "001565aabbcc" and made["http_user"] == "001565aabbcc" and len(made["http_password"]) >= 12
        assert err(c, "phone.create", {"mac": "001565aabbcc", "tenant": "acme", "accounts": ["anna"]}).data["field"] == "mac"
        e = err(c, "phone.create", {"mac": "001565aabbcd", "tenant": "acme", "accounts": ["anna"],
                                    "keys": [{"type": "switch", "value": "nope"}]})
        assert e.data["field"] == "keys[0].value"
        assert err(c, "phone.update", {"mac": "001565aabbcc", "language": "xx"}).data["field"] == "language"
        assert c.call("phone.update", {"mac": "001565AABBCC", "transport": "tls"})["transport"] == "tls"
        assert c.call("phone.get", {"mac": "001565aabbcc"})["keys"] == [{"type": "blf", "value": "ben", "label": ""}]
        text = c.call("phone.export", {"tenant": "acme"})
        assert "001565aabbcc" in text and "[[phones]]" in text
        assert [p["mac"] for p in c.call("phone.list", {"tenant": "acme"})] == ["001565aabbcc"]
        c.call("phone.delete", {"mac": "001565aabbcc"})
        assert err(c, "phone.get", {"mac": "001565aabbcc"}).code == NOT_FOUND
        assert c.call("phone.import", {"toml": text}) == {"tenant": "acme", "phones": 1, "deleted": 0}
        assert c.call("phone.get", {"mac": "001565aabbcc"})["transport"] == "tls"
        bad = text.replace('"anna"', '"nobody"')
        assert err(c, "phone.import", {"toml": bad, "replace": True}).data["field"] == "phones[0].accounts[0]"
        c.call("tenant.delete", {"name": "acme"})
        assert c.call("phone.list", {}) == []  # a tenant's phones go with it


def test_dashboard(web):
    st, _, _ = web
    with st.client() as c:
        d = c.call("dashboard.get", {"tenant": "acme", "hours": 6})
    t = d["tenants"][0]
    assert d["hours"] == 6 and len(t["per_hour"]) == 6
    assert (t["tenant"], t["users"], t["registrations"], t["calls"], t["answer_rate"]) == ("acme", 2, 0, 0, None)
