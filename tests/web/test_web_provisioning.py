"""Phone provisioning over HTTP with curl (the client phones resemble most): the right
credentials (digest, and basic from loopback) get the rendered file, wrong ones 401 and are
counted, an unknown MAC 404; the Snom file parses as XML and the Yealink file as key=value,
both with the user's SIP username, the registrar and the password; the files follow changes;
the phonebook is the vendor's XML with the tenant's users only."""
from __future__ import annotations

import shutil
import subprocess
import xml.etree.ElementTree as ET

import pytest

SNOM_MAC, YEALINK_MAC = "000413aabb01", "805ec0aabb02"


def curl(*args: str) -> tuple[int, str]:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    out = subprocess.run(["curl", "-s", "-w", "\n%{http_code}", *args], capture_output=True, text=True, timeout=30)
    body, _, code = out.stdout.rpartition("\n")
    return int(code), body


@pytest.fixture(scope="module")
def phones(rig):
    with rig.admin() as a:
        a.call("phone.create", mac="00:04:13:AA:BB:01", tenant="demo", vendor="snom", model="D785",
               accounts=["alice", "bob"], keys=[{"type": "blf", "value": "carol"}, {"type": "pickup", "value": "bob"}],
               http_password="snom-dev-pw", language="de")
        a.call("phone.create", mac=YEALINK_MAC, tenant="demo", vendor="yealink", model="T46U", accounts=["carol"],
               keys=[{"type": "blf", "value": "alice", "label": "Alice"}], http_password="yea-dev-pw", transport="tcp")
    return rig


def parse_cfg(text: str) -> dict:
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    pairs = [ln.split(" = ", 1) for ln in lines]
    assert all(len(p) == 2 and p[0].strip() and " " not in p[0] for p in pairs), text
    return {k: v for k, v in pairs}


def test_snom_with_digest(phones):
    code, body = curl("--digest", "-u", f"{SNOM_MAC}:snom-dev-pw", f"{phones.base}/prov/{SNOM_MAC}.xml")
    assert code == 200, body
    root = ET.fromstring(body)
    ps = root.find("phone-settings")
    get = lambda tag, idx: ps.find(f"{tag}[@idx='{idx}']").text
    assert get("user_name", "1") == "alice" and get("user_pass", "1") == "alice-secret"
    assert get("user_name", "2") == "bob" and get("user_pass", "2") == "bob-secret"
    assert get("user_host", "1") == f"127.0.0.1:{phones.server.port}"
    assert ps.find("language").text == "Deutsch"
    keys = [k.text for k in root.find("functionKeys")]
    assert keys[0] == "blf <sip:carol@127.0.0.1>" and keys[1].startswith("dest <sip:bob@")
    assert ps.find("tbook_xml_url").text == f"{phones.base}/prov/phonebook/{SNOM_MAC}.xml"


def test_yealink_with_basic_and_changes(phones):
    code, body = curl("-u", f"{YEALINK_MAC}:yea-dev-pw", f"{phones.base}/prov/{YEALINK_MAC}.cfg")
    assert code == 200, body
    assert body.startswith("#!version:1.0.0.1")
    cfg = parse_cfg(body)
    assert cfg["account.1.user_name"] == "carol" and cfg["account.1.password"] == "carol-secret"
    assert cfg["account.1.sip_server.1.address"] == "127.0.0.1"
    assert cfg["account.1.sip_server.1.transport_type"] == "1"  # tcp
    assert cfg["linekey.2.type"] == "16" and cfg["linekey.2.value"] == "sip:alice@127.0.0.1"
    with phones.admin() as a:
        a.call("user.update", username="carol", sip_password="carol-new-secret")
        a.call("phone.update", mac=YEALINK_MAC, keys=[{"type": "blf", "value": "dave"}])
    code, body = curl("-u", f"{YEALINK_MAC}:yea-dev-pw", f"{phones.base}/prov/{YEALINK_MAC}.cfg")
    cfg = parse_cfg(body)
    assert cfg["account.1.password"] == "carol-new-secret" and cfg["linekey.2.value"] == "sip:dave@127.0.0.1"


def test_wrong_credentials_unknown_mac(phones):
    with phones.admin() as a:
        before = a.call("stats.get", layer="web")["web"].get("prov_auth_failures", 0)
    code, _ = curl("--digest", "-u", f"{SNOM_MAC}:wrong", f"{phones.base}/prov/{SNOM_MAC}.xml")
    assert code == 401
    code, _ = curl("-u", f"{YEALINK_MAC}:wrong", f"{phones.base}/prov/{YEALINK_MAC}.cfg")
    assert code == 401
    # another phone's right credentials do not open this one
    code, _ = curl("--digest", "-u", f"{YEALINK_MAC}:yea-dev-pw", f"{phones.base}/prov/{SNOM_MAC}.xml")
    assert code == 401
    code, body = curl(f"{phones.base}/prov/{SNOM_MAC}.xml")
    assert code == 401
    code, _ = curl("-u", f"{SNOM_MAC}:snom-dev-pw", f"{phones.base}/prov/001122334455.xml")
    assert code == 404
    code, _ = curl("-u", f"{SNOM_MAC}:snom-dev-pw", f"{phones.base}/prov/{SNOM_MAC}.cfg")
    assert code == 404  # a Snom has no .cfg
    with phones.admin() as a:
        after = a.call("stats.get", layer="web")["web"]["prov_auth_failures"]
    assert after - before == 3  # wrong password twice, wrong device once; no credentials is no failure


def test_headers_challenge(phones):
    out = subprocess.run(["curl", "-s", "-D", "-", "-o", "/dev/null", f"{phones.base}/prov/{SNOM_MAC}.xml"],
                         capture_output=True, text=True, timeout=30).stdout
    assert 'WWW-Authenticate: Digest realm="hpbx-provisioning"' in out and "qop=\"auth\"" in out


def test_phonebook(phones):
    code, body = curl("--digest", "-u", f"{SNOM_MAC}:snom-dev-pw", f"{phones.base}/prov/phonebook/{SNOM_MAC}.xml")
    assert code == 200
    numbers = [i.find("number").text for i in ET.fromstring(body)]
    assert {"100", "101", "102", "103"} <= set(numbers) and "200" not in numbers  # olga is tenant other
    code, body = curl("-u", f"{YEALINK_MAC}:yea-dev-pw", f"{phones.base}/prov/phonebook/{YEALINK_MAC}.xml")
    root = ET.fromstring(body)
    assert root.tag == "YealinkIPPhoneDirectory" and "Alice Demo" in [e.find("Name").text for e in root]


def test_validation_and_tenant_scope(phones):
    bad = phones.basic_rpc("demoadm", "phone.create", {"mac": "zz", "vendor": "snom", "accounts": ["alice"]})
    assert bad["error"]["code"] == -32602 and bad["error"]["data"]["field"] == "mac"
    bad = phones.basic_rpc("demoadm", "phone.create", {"mac": "001122334466", "accounts": ["olga"]})
    assert bad["error"]["data"]["field"] == "accounts[0]"  # olga is not in demo
    assert phones.basic_rpc("otheradm", "phone.get", {"mac": SNOM_MAC})["error"]["code"] == -32001
    assert phones.basic_rpc("otheradm", "phone.list")["result"] == []
    exported = phones.basic_rpc("demoadm", "phone.export", {"tenant": "demo"})["result"]
    assert SNOM_MAC in exported
    with phones.admin() as a:
        a.call("phone.delete", mac=SNOM_MAC)
        assert a.call("phone.import", toml=exported, replace=True) == {"tenant": "demo", "phones": 2, "deleted": 0}
    code, _ = curl("--digest", "-u", f"{SNOM_MAC}:snom-dev-pw", f"{phones.base}/prov/{SNOM_MAC}.xml")
    assert code == 200
