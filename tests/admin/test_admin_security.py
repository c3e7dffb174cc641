"""The security layer's admin methods (ban.*, toll.*) over the real socket, on real services:
a BanService and a TollPolicy on a SQLite file, and the provisioning service for tenants."""
from __future__ import annotations

import pytest

from adminrig import provisioned_context
from hpbx.admin.protocol import RpcError as RpcClientError
from hpbx.security.bans import BanService
from hpbx.security.toll import TollPolicy
from hpbx.store.bans import BanStore


@pytest.fixture
def sec(start_admin, tmp_path):
    ctx, bindings = provisioned_context(tmp_path)
    store = BanStore(tmp_path / "hpbx.sqlite3")
    ctx.security = BanService(ctx.settings, store)
    ctx.security.start()
    ctx.toll = TollPolicy(ctx.settings, store)
    ctx.provisioning.tenant_create({"name": "acme"})
    yield start_admin(ctx), ctx, store
    bindings.close()
    store.close()


def error_of(call) -> tuple[int, dict]:
    with pytest.raises(RpcClientError) as info:
        call()
    return info.value.code, info.value.data or {}


def test_ban_add_list_remove_and_restore(sec, tmp_path):
    st, ctx, store = sec
    with st.client() as c:
        added = c.call("ban.add", {"host": "192.0.2.7", "secs": 600})
        assert added["host"] == "192.0.2.7"
        rows = c.call("ban.list")
        assert [(r["host"], r["reason"]) for r in rows] == [("192.0.2.7", "admin")]
        assert 590 <= rows[0]["expires_in"] <= 600
        assert error_of(lambda: c.call("ban.add", {"host": "not-an-ip"}))[1]["field"] == "host"
        assert c.call("ban.remove", {"host": "192.0.2.7"})["removed"]
        assert error_of(lambda: c.call("ban.remove", {"host": "192.0.2.7"}))[0] == -32001
        c.call("ban.add", {"host": "2001:db8::9"})
    ctx.security.stop()
    # a new service on the same file: the ban is back
    again = BanService(ctx.settings, BanStore(tmp_path / "hpbx.sqlite3"))
    again.start()
    assert [b["host"] for b in again.ban_list()] == ["2001:db8::9"]


def test_failure_counters_and_trusted_networks(sec):
    st, ctx, _ = sec
    ctx.security.auth_failed("198.51.100.4", 5060, "udp", "REGISTER", "100")
    with st.client() as c:
        kinds = {(r["kind"], r["key"]) for r in c.call("ban.counters")}
        assert {("source", "198.51.100.4"), ("user", "100"), ("pair", "198.51.100.4 100")} <= kinds
        assert c.call("ban.trust", {"network": "203.0.113.0/24", "note": "office"})["network"] == "203.0.113.0/24"
        assert {"network": "203.0.113.0/24", "source": "admin", "note": "office"} in c.call("ban.trusted")
        # trusted: never banned, and the operator is told so
        assert error_of(lambda: c.call("ban.add", {"host": "203.0.113.9"}))[1]["field"] == "host"
        assert error_of(lambda: c.call("ban.trust", {"network": "10.0.0.0/33"}))[1]["field"] == "network"
        assert c.call("ban.untrust", {"network": "203.0.113.0/24"})["removed"]
        assert error_of(lambda: c.call("ban.untrust", {"network": "203.0.113.0/24"}))[0] == -32001
        assert c.call("ban.add", {"host": "203.0.113.9", "secs": 5})["secs"] == 5


def test_toll_get_set_reset(sec):
    st, ctx, store = sec
    with st.client() as c:
        got = c.call("toll.get", {"tenant": "acme"})
        assert got["limits"]["allow_international"] is False and got["overrides"] == {}
        got = c.call("toll.set", {"tenant": "acme", "allow_international": True, "max_outbound_per_user": 4,
                                  "deny_prefixes": ["+44"]})
        assert got["limits"]["max_outbound_per_user"] == 4 and got["limits"]["deny_prefixes"] == ["+44"]
        assert error_of(lambda: c.call("toll.set", {"tenant": "acme", "max_outbound_per_user": -1}))[1]["field"] \
            == "max_outbound_per_user"
        assert error_of(lambda: c.call("toll.set", {"tenant": "acme"}))[1]["field"] == "params"
        assert error_of(lambda: c.call("toll.get", {"tenant": "nosuch"}))[0] == -32001
        # stored: a new policy on the same file sees the override
        assert TollPolicy(ctx.settings, store).limits("acme").max_outbound_per_user == 4
        reset = c.call("toll.reset", {"tenant": "acme"})
        assert reset["reset"] and reset["limits"]["max_outbound_per_user"] == 2


def test_tls_reload_needs_a_running_transport(sec):
    st, ctx, _ = sec
    with st.client() as c:
        assert error_of(lambda: c.call("tls.reload"))[0] == -32002  # no transports in this context
    calls = []
    ctx.reload_tls = lambda: calls.append(1) or {"reloaded": True}
    with st.client() as c:
        assert c.call("tls.reload") == {"reloaded": True} and calls == [1]
