"""POST /rpc against the real server: the same methods as the socket, sessions with CSRF,
HTTP Basic, roles enforced server-side (crafted requests of a tenant admin towards another
tenant), the audit log, the login limit, number.simulate over hpbxctl, and /metrics."""
from __future__ import annotations

import json
import re
import subprocess
import sys

from harness import REPO


def test_rpc_answers_like_the_socket(rig):
    with rig.admin() as a:
        socket_users = a.call("user.list", tenant="demo")
    answer = rig.basic_rpc("op", "user.list", {"tenant": "demo"})
    assert answer["_status"] == 200 and answer["result"] == socket_users
    bad = rig.basic_rpc("op", "user.create", {"tenant": "demo", "username": "x1", "sip_password": "secret1",
                                              "internal_number": "705"})
    assert bad["error"]["code"] == -32602 and bad["error"]["data"]["field"] == "internal_number"
    assert "reserved" in bad["error"]["data"]["reason"]
    with rig.admin() as a:
        assert all(u["username"] != "x1" for u in a.call("user.list"))  # nothing half-applied


def test_session_cookie_and_csrf(rig):
    s = rig.session("demoadm")
    assert s.status == 200 and s.answer["account"] == {"username": "demoadm", "role": "tenant_admin", "tenant": "demo"}
    cookie = s.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "hpbx_session=" in cookie
    assert s.rpc("user.get", {"username": "alice"})["result"]["username"] == "alice"
    no_csrf = s.rpc("user.get", {"username": "alice"}, csrf="")
    assert no_csrf["_status"] == 403 and no_csrf["error"]["code"] == -32004
    wrong = s.rpc("user.get", {"username": "alice"}, csrf="forged-token")
    assert wrong["_status"] == 403
    status, _, _ = rig.request("POST", "/rpc", b'{"jsonrpc":"2.0","method":"user.list","id":1}')
    assert status == 401


def test_deleted_account_loses_its_session_and_basic(rig):
    from webrig import ACCOUNTS
    with rig.admin() as a:
        a.call("admin.create", username="tmpadm", password="tmpadm-secret", role="tenant_admin", tenant="demo")
    ACCOUNTS["tmpadm"] = ("tmpadm-secret", "tenant_admin", "demo")
    s = rig.session("tmpadm")
    assert s.rpc("user.get", {"username": "alice"})["result"]
    assert rig.basic_rpc("tmpadm", "user.get", {"username": "alice"})["result"]  # now cached
    with rig.admin() as a:
        a.call("admin.delete", username="tmpadm")
    assert s.rpc("user.get", {"username": "alice"})["_status"] == 401
    assert rig.basic_rpc("tmpadm", "user.get", {"username": "alice"})["_status"] == 401
    del ACCOUNTS["tmpadm"]


def test_wrong_password_refused(rig):
    s = rig.session("demoadm", "not-the-password")
    assert s.status == 401 and "csrf" not in s.answer


def test_tenant_admin_sees_and_changes_only_its_tenant(rig):
    s = rig.session("demoadm")
    users = s.rpc("user.list")["result"]
    assert users and {u["tenant"] for u in users} == {"demo"}
    assert [t["name"] for t in s.rpc("tenant.list")["result"]] == ["demo"]
    # crafted requests naming the other tenant or its objects
    for method, params in [
        ("user.list", {"tenant": "other"}),
        ("user.create", {"tenant": "other", "username": "evil", "sip_password": "evil-secret"}),
        ("registration.list", {"tenant": "other"}),
        ("cdr.list", {"tenant": "other"}),
        ("cdr.export", {"tenant": "other"}),
        ("switch.set", {"tenant": "other", "name": "other-closed"}),
        ("number.list", {"tenant": "other"}),
        ("audit.list", {"tenant": "other"}),
        ("phone.list", {"tenant": "other"}),
    ]:
        answer = s.rpc(method, params)
        assert answer["error"]["code"] == -32004, (method, answer)
    for method, params in [
        ("user.get", {"username": "olga"}),
        ("user.update", {"username": "olga", "sip_password": "hijacked1"}),
        ("user.delete", {"username": "olga"}),
        ("number.get", {"number": "0449990000"}),
        ("number.set_slots", {"number": "0449990000", "slots": []}),
        ("number.simulate", {"number": "0449990000"}),
        ("tenant.get", {"name": "other"}),
        ("tenant.export", {"name": "other"}),
    ]:
        answer = s.rpc(method, params)
        assert answer["error"]["code"] == -32001, (method, answer)  # as if it did not exist
    # an import that names another tenant, operator-only methods
    toml = '[tenant]\nname = "other"\n[[users]]\nusername = "evil2"\nsip_password = "evil-secret"\n'
    assert s.rpc("tenant.import", {"toml": toml, "replace": True})["error"]["code"] == -32004
    for method, params in [("tenant.delete", {"name": "other"}), ("tenant.create", {"name": "x"}),
                           ("config.reload", {}), ("stats.get", {}), ("cdr.purge", {"before": "2030-01-01T00:00:00Z"}),
                           ("ban.list", {}),
                           ("admin.create", {"username": "me2", "password": "password1", "role": "operator"}),
                           ("admin.list", {})]:
        assert s.rpc(method, params)["error"]["code"] == -32004, method
    # a batch cannot smuggle one either
    batch = [{"jsonrpc": "2.0", "method": "user.get", "params": {"username": "alice"}, "id": 1},
             {"jsonrpc": "2.0", "method": "user.get", "params": {"username": "olga"}, "id": 2}]
    status, _, data = rig.request("POST", "/rpc", json.dumps(batch).encode(),
                                  {"X-CSRF-Token": s.csrf, "Content-Type": "application/json"}, s.opener)
    answers = {a["id"]: a for a in json.loads(data)}
    assert answers[1]["result"]["username"] == "alice" and answers[2]["error"]["code"] == -32001
    with rig.admin() as a:
        olga = a.call("user.get", username="olga")
        assert olga["sip_password"] == "olga-secret"
        assert not a.call("switch.get", tenant="other", name="other-closed")["on"]
        assert all(u["username"] not in ("evil", "evil2") for u in a.call("user.list"))
        denied = a.call("audit.list", who="web:demoadm")
        assert any(r["outcome"] == "denied" and r["method"] == "tenant.delete" for r in denied)


def test_changes_are_audited_with_who_and_tenant(rig):
    s = rig.session("demoadm")
    assert s.rpc("user.update", {"username": "dave", "details": {"nickname": "dd"}})["result"]["details"]["nickname"] == "dd"
    with rig.admin() as a:
        rows = a.call("audit.list", {"method": "user.update", "limit": 5})
    row = rows[0]
    assert row["who"] == "web:demoadm" and row["tenant"] == "demo" and row["params"]["username"] == "dave"
    assert s.rpc("user.update", {"username": "dave", "sip_password": "newsecret1"})["result"]
    with rig.admin() as a:
        row = a.call("audit.list", {"method": "user.update", "limit": 1})[0]
    assert row["params"]["sip_password"] == "***"
    mine = s.rpc("audit.list")["result"]
    assert mine and {r["tenant"] for r in mine} == {"demo"}
    assert s.rpc("user.list")["result"]  # reads are not audited
    with rig.admin() as a:
        listed = a.call("audit.list", {"method": "user.list"})
        assert listed and all(r["outcome"] == "denied" for r in listed)  # only the refused attempt


def test_simulate_over_hpbxctl(rig):
    out = subprocess.run([sys.executable, "-m", "hpbx.admin.client", "--socket", str(rig.server.dir / "hpbx.sock"),
                          "--json", "number.simulate", "number=0441234500", "at=2026-12-07T10:00:00+01:00"],
                         cwd=REPO, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    sim = json.loads(out.stdout)
    assert sim["slot"] == 1 and sim["kind"] == "dialplan"
    targets = [t["target"] for row in sim["rows"] for t in row["targets"]]
    assert "user:alice" in targets and all(t["registered"] is False for row in sim["rows"] for t in row["targets"])
    bad = subprocess.run([sys.executable, "-m", "hpbx.admin.client", "--socket", str(rig.server.dir / "hpbx.sock"),
                          "number.simulate", "number=0441234500", "at=tomorrow"], cwd=REPO,
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode == 1 and "at" in bad.stderr


def test_metrics(rig):
    status, headers, body = rig.request("GET", "/metrics")
    text = body.decode()
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    assert 'hpbx_active_calls{tenant="demo"} 0' in text and 'hpbx_active_calls{tenant="other"} 0' in text
    for name in ("hpbx_registrations", "hpbx_calls_total", "hpbx_relay_streams", "hpbx_relay_packets",
                 "hpbx_relay_packets_lost"):
        assert f"# TYPE {name} " in text


def test_security_headers_and_page(rig):
    status, headers, body = rig.request("GET", "/")
    assert status == 200 and b"/static/app.js" in body
    assert "default-src 'self'" in headers["Content-Security-Policy"] and headers["X-Frame-Options"] == "DENY"


def test_login_rate_limit(rig):
    # the last test of the module: it locks 127.0.0.1 out of logins for the window
    limit = 5
    statuses = [rig.session("op", f"wrong-{i}").status for i in range(limit)]
    assert statuses == [401] * limit
    locked = rig.session("op")  # even the right password is refused while locked
    assert locked.status == 429 and int(locked.headers["Retry-After"]) > 0
    with rig.admin() as a:
        web = a.call("stats.get", layer="web")["web"]
    assert web["login_failures"] >= limit and web["login_locked"] >= 1


def test_grafana_dashboard_uses_only_metrics_the_server_exports(rig):
    """config/grafana/hpbx-dashboard.json imports into Grafana (valid dashboard JSON) and every
    series its panels query is one /metrics really exposes."""
    dash = json.loads((REPO / "config" / "grafana" / "hpbx-dashboard.json").read_text())
    assert dash["uid"] and dash["panels"]
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = set(re.findall(r"\bhpbx_[a-z_]+", " ".join(exprs)))
    assert len(used) >= 10
    text = rig.request("GET", "/metrics")[2].decode()
    exported = set(re.findall(r"^# TYPE (hpbx_[a-z_]+) ", text, re.M))
    assert used <= exported, sorted(used - exported)
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
