"""The address-book and licence methods over the real socket (addressbook.*, licence.get), on
real SQLite: every method, its field-named errors, and "not available" without the books."""
from __future__ import annotations

import base64

import pytest

from hpbx.admin.protocol import INVALID_PARAMS, NOT_AVAILABLE, NOT_FOUND, RpcError


def rpc_error(c, method, params=None):
    with pytest.raises(RpcError) as err:
        c.call(method, params or {})
    return err.value


def test_every_addressbook_method(prov, tmp_path):
    from hpbx.pbx.addressbook import AddressBooks
    st, _ = prov
    with st.client() as c:
        assert rpc_error(c, "addressbook.list", {"tenant": "acme"}).code in (NOT_AVAILABLE, NOT_FOUND)
    st.ctx.addressbooks = AddressBooks(tmp_path / "books.sqlite3", lambda: st.ctx.provisioning.directory)
    st.ctx.provisioning.subscribe(st.ctx.addressbooks.directory_changed)
    with st.client() as c:
        c.call("tenant.create", {"name": "acme", "licence_users": 2, "licence_cti_users": 1})
        c.call("user.create", {"tenant": "acme", "username": "anna", "sip_password": "pw-long", "flags": {"cti_access": True}})
        e = c.call("addressbook.create", {"tenant": "acme", "first_name": "Hans", "last_name": "Muster",
                                          "office": "0441234567"})
        assert c.call("addressbook.get", {"tenant": "acme", "id": e["id"]})["office"] == "0441234567"
        assert c.call("addressbook.update", {"tenant": "acme", "id": e["id"], "company": "ACME"})["company"] == "ACME"
        assert [h["id"] for h in c.call("addressbook.search", {"tenant": "acme", "prefix": "Hans M"})] == [e["id"]]
        p = c.call("addressbook.create", {"tenant": "acme", "user": "anna", "last_name": "Privat", "mobile": "079"})
        assert c.call("addressbook.list", {"tenant": "acme", "user": "anna"})["total"] == 1
        assert [h["book"] for h in c.call("addressbook.search", {"tenant": "acme", "prefix": "privat"})] == []
        assert [h["book"] for h in c.call("addressbook.search", {"tenant": "acme", "prefix": "privat",
                                                                  "user": "anna"})] == ["personal"]
        assert rpc_error(c, "addressbook.get", {"tenant": "acme", "id": p["id"]}).code == NOT_FOUND  # not global
        err = rpc_error(c, "addressbook.create", {"tenant": "acme", "office": "abc"})
        assert err.code == INVALID_PARAMS and err.data["field"] == "office"
        out = c.call("addressbook.export", {"tenant": "acme"})
        assert out["csv"].splitlines()[1] == "Hans;Muster;ACME;;0441234567;" and out["entries"] == 1
        data = base64.b64decode(out["csv_base64"])
        assert c.call("addressbook.import", {"tenant": "acme", "csv": data.decode()})["imported"] == 1
        assert base64.b64decode(c.call("addressbook.export", {"tenant": "acme"})["csv_base64"]) == data
        assert c.call("addressbook.delete", {"tenant": "acme", "id": p["id"], "user": "anna"})["deleted"] is True
        lic = c.call("licence.get", {"tenant": "acme"})
        assert lic["tenants"]["acme"]["users"]["text"] == "1/2" and lic["line"] == "Lic: 1/2, CTI 1/1"
        err = rpc_error(c, "user.create", {"tenant": "acme", "username": "ben", "sip_password": "pw-long",
                                           "flags": {"cti_access": True}})
        assert err.code == INVALID_PARAMS and err.data["field"] == "flags.cti_access", err.data
        assert rpc_error(c, "licence.get", {"tenant": "nope"}).code == NOT_FOUND
        # deleting a user drops its personal book
        c.call("addressbook.create", {"tenant": "acme", "user": "anna", "last_name": "Gone"})
        c.call("user.delete", {"username": "anna"})
        assert st.ctx.addressbooks.counts("acme")["personal_entries"] == 0
    st.ctx.addressbooks.close()
