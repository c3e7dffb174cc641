"""Address books (FEATURES 16, 15.3) and licences (FEATURES 20) against the real server: the admin
socket (the method table hpbxctl and /rpc use) and real CTI WebSocket clients."""
from __future__ import annotations

import base64
import time

import pytest

from harness import HpbxServer, free_port
from cticlient import CtiClient, CtiError
from hpbx.admin.client import AdminClient
from hpbx.admin.protocol import RpcError as AdminError

HEADER = "First name;Last name;Company;Number private;Number office;Number mobile"

TENANT = """
[tenant]
name = "acme"
licence_cti_users = 3

[[users]]
username = "anna"
sip_password = "anna-pw"
internal_number = "201"
cti_password = "anna-cti"
[users.flags]
cti_access = true

[[users]]
username = "bert"
sip_password = "bert-pw"
internal_number = "202"
cti_password = "bert-cti"
[users.flags]
cti_access = true
may_manage_public_addressbook = true

[[users]]
username = "cora"
sip_password = "cora-pw"
internal_number = "203"
cti_password = "cora-cti"
"""

OTHER = """
[tenant]
name = "other"
licence_users = 1

[[users]]
username = "olga"
sip_password = "olga-pw"
internal_number = "201"
cti_password = "olga-cti"
[users.flags]
cti_access = true
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    d = tmp_path_factory.mktemp("addressbook")
    (d / "acme.toml").write_text(TENANT)
    (d / "other.toml").write_text(OTHER)
    port = free_port()
    s = HpbxServer(d, provision_files=(d / "acme.toml", d / "other.toml"),
                   extra_toml=f'[http]\nlisten = ["http:127.0.0.1:{port}"]\n')
    s.start()
    s.cti_url = f"http://127.0.0.1:{port}/cti"
    s.sock = str(d / "hpbx.sock")
    yield s
    s.stop()


def admin(server, method, **params):
    with AdminClient(server.sock, timeout=60) as c:
        return c.call(method, params or None)


def admin_error(server, method, **params) -> dict:
    with pytest.raises(AdminError) as err:
        admin(server, method, **params)
    return {"message": str(err.value), "data": getattr(err.value, "data", None)}


def csv_import(server, data: bytes, tenant="acme"):
    return admin(server, "addressbook.import", tenant=tenant, csv_base64=base64.b64encode(data).decode())


def test_import_replaces_the_global_book_and_exports_byte_identical(server):
    fifty = "\r\n".join(f"F{i};L{i};;;0{i:09d};" for i in range(50)).encode() + b"\r\n"
    assert csv_import(server, fifty)["imported"] == 50
    admin(server, "addressbook.create", tenant="acme", user="anna", first_name="Own", office="099")
    three = (HEADER + "\r\nHans;Muster;ACME;;0441234567;\r\n"
             + '"Meier; Sohn";Grün;;+41 44 555 66 77;;079 123 45 67\r\nErika;;;;;0791112233\r\n').encode()
    got = csv_import(server, three)
    assert got["imported"] == 3 and got["replaced"] == 50 and got["encoding"] == "utf-8", got
    book = admin(server, "addressbook.list", tenant="acme")
    assert book["total"] == 3 and len(book["entries"]) == 3, book
    hans = book["entries"][0]
    assert (hans["first_name"], hans["office"], hans["private"]) == ("Hans", "0441234567", ""), hans
    out = admin(server, "addressbook.export", tenant="acme")
    assert base64.b64decode(out["csv_base64"]) == three  # quoting, header, CRLF, leading zeros
    assert "Hans;Muster;ACME;;0441234567;" in out["csv"].splitlines()
    # the personal book was not touched by the import
    assert admin(server, "addressbook.list", tenant="acme", user="anna")["total"] == 1
    # ISO-8859-1, LF, no header, no final newline: detected, and written back the same way
    latin = "Jörg;Zürcher;Bäckerei;;031 999 00 11;".encode("iso-8859-1")
    assert csv_import(server, latin)["encoding"] == "iso-8859-1"
    assert admin(server, "addressbook.search", tenant="acme", prefix="zür")[0]["last_name"] == "Zürcher"
    assert base64.b64decode(admin(server, "addressbook.export", tenant="acme")["csv_base64"]) == latin


def test_a_bad_file_names_line_and_column_and_changes_nothing(server):
    good = (HEADER + "\nA;B;;;01;\nC;D;;;02;\n").encode()
    csv_import(server, good)
    for data, where in (
        (b"A;B;;;01;\nC;D;;;02\n", "line 2, column 6"),  # a missing column
        ("A;B;;;01;\nC;D;;;0x2;\n".encode(), "line 2, column 5 (Number office)"),  # not a number
        (b"A;B;;;01;\nC;\x81D;;;02;\n", "line 2, column 2 (Last name)"),  # neither UTF-8 nor Latin-1 text
        (b"First name;Last name;Firm;Number private;Number office;Number mobile\nA;B;;;01;\n", "line 1, column 3"),
        (b'A;"B;;;01;\n', "line 1, column 2"),  # a quote never closed
    ):
        err = admin_error(server, "addressbook.import", tenant="acme", csv_base64=base64.b64encode(data).decode())
        assert where in err["message"], (where, err)
        assert base64.b64decode(admin(server, "addressbook.export", tenant="acme")["csv_base64"]) == good
    err = admin_error(server, "addressbook.import", tenant="acme", csv="x", csv_base64="eA==")
    assert "csv" in err["message"]


def test_web_table_limit_and_search_on_100000_entries(server, tmp_path):
    rows = "\n".join(f"Vor{i};Nach{i};Firma{i % 977};;0{i:09d};07{i:08d}" for i in range(100_000)).encode() + b"\n"
    (tmp_path / "big.csv").write_bytes(rows)  # 5 MB: larger than one admin line, read by path
    assert admin(server, "addressbook.import", tenant="acme", path=str(tmp_path / "big.csv"))["imported"] == 100_000
    page = admin(server, "addressbook.list", tenant="acme")
    assert page["total"] == 100_000 and len(page["entries"]) == 1000  # FEATURES 16: 1000 shown, counter says all
    t0 = time.perf_counter()
    for i in range(20):
        hits = admin(server, "addressbook.search", tenant="acme", prefix=f"Nach{i * 4999}", limit=5)
        assert hits and hits[0]["last_name"].startswith(f"Nach{i * 4999}"), hits
    per = (time.perf_counter() - t0) / 20
    assert per < 0.05, f"search took {per * 1000:.1f} ms over the admin socket"
    by_number = admin(server, "addressbook.search", tenant="acme", prefix="0000012345")
    assert [h["first_name"] for h in by_number] == ["Vor12345"], by_number


def test_cti_search_and_personal_contacts(server):
    csv_import(server, (HEADER + "\nHans;Muster;ACME;031 111 22 22;0441234567;079 000 11 22\n").encode())
    with CtiClient(server.cti_url) as anna, CtiClient(server.cti_url) as bert:
        anna.login("anna", "anna-cti")
        bert.login("bert", "bert-cti")
        # FEATURES 15.3: "Mus" finds the global contact with all its numbers
        hit, = anna.call("addressbook.search", prefix="Mus")
        assert (hit["book"], hit["private"], hit["office"], hit["mobile"]) == \
            ("global", "031 111 22 22", "0441234567", "079 000 11 22"), hit
        before = anna.call("addressbook.list")["total"]
        mine = anna.call("addressbook.create", first_name="Muster", last_name="Privat", mobile="0790001234")
        assert mine["book"] == "personal" and mine["owner"] == "anna"
        assert [h["book"] for h in anna.call("addressbook.search", prefix="mus")] == ["personal", "global"]
        # bert does not see anna's personal contact, nor change it
        assert [h["book"] for h in bert.call("addressbook.search", prefix="mus")] == ["global"]
        with pytest.raises(CtiError) as err:
            bert.call("addressbook.delete", id=mine["id"])
        assert err.value.code == -32001, err.value.error
        # the global book: only with "may manage public address book"
        with pytest.raises(CtiError) as err:
            anna.call("addressbook.create", book="global", last_name="Nope")
        assert err.value.code == -32004 and err.value.error["data"]["field"] == "book"
        g = bert.call("addressbook.create", book="global", company="Bert AG", office="0445556677")
        assert g["book"] == "global"
        assert anna.call("addressbook.search", prefix="bert ag")[0]["company"] == "Bert AG"
        with pytest.raises(CtiError) as err:
            anna.call("addressbook.create", first_name="x", mobile="not a number")
        assert err.value.error["data"]["field"] == "mobile", err.value.error
        assert anna.call("addressbook.update", id=mine["id"], last_name="Neu")["last_name"] == "Neu"
        assert anna.call("addressbook.delete", id=mine["id"])["deleted"] is True
        assert anna.call("addressbook.list")["total"] == before


def test_another_tenants_book_is_out_of_reach(server):
    entry = admin(server, "addressbook.create", tenant="acme", last_name="Secret", office="0440000000")
    err = admin_error(server, "addressbook.get", tenant="other", id=entry["id"])
    assert "not found" in err["message"]
    err = admin_error(server, "addressbook.delete", tenant="other", id=entry["id"])
    assert "not found" in err["message"]
    assert admin(server, "addressbook.search", tenant="other", prefix="Secret") == []
    err = admin_error(server, "addressbook.list", tenant="other", user="anna")  # anna is acme's
    assert "not found" in err["message"]
    assert admin(server, "addressbook.get", tenant="acme", id=entry["id"])["last_name"] == "Secret"


def test_licences_refuse_beyond_the_limit(server):
    # acme: CTI licence 3; anna and bert have CTI access: one more may, a second one not
    admin(server, "user.create", tenant="acme", username="dora", sip_password="dora-pw", internal_number="204",
          flags={"cti_access": True})
    err = admin_error(server, "user.update", username="cora", flags={"cti_access": True})
    assert "CTI licence of tenant acme" in err["message"] and "3" in err["message"], err
    assert admin(server, "user.get", username="cora")["flags"]["cti_access"] is False
    # other: licensed for 1 user, which it has
    err = admin_error(server, "user.create", tenant="other", username="otto", sip_password="otto-pw",
                      internal_number="202")
    assert "user licence of tenant other" in err["message"], err
    lic = admin(server, "licence.get", tenant="acme")
    assert lic["tenants"]["acme"]["cti_users"] == {"used": 3, "total": 3, "text": "3/3"}, lic
    assert lic["line"] == "Lic: 4/-, CTI 3/3", lic
    info = admin(server, "system.info")
    assert info["licence"]["users"]["used"] == 5 and info["licence"]["line"].startswith("Lic: 5/"), info["licence"]
    # the licence lowered below what is enabled: logins beyond it are refused
    admin(server, "tenant.update", name="acme", licence_cti_users=1)
    with CtiClient(server.cti_url) as anna, CtiClient(server.cti_url) as bert:
        anna.login("anna", "anna-cti")
        with pytest.raises(CtiError) as e:
            bert.login("bert", "bert-cti")
        assert "CTI licence of tenant acme" in e.value.error["message"], e.value.error
    admin(server, "tenant.update", name="acme", licence_cti_users=3)
    admin(server, "user.delete", username="dora")


def test_cti_forwarding_and_special_switches(server):
    admin(server, "number.create", tenant="acme", number="0445550000", name="Main")
    admin(server, "switch.create", tenant="acme", name="holiday", numbers=["0445550000"])
    with CtiClient(server.cti_url) as anna:
        anna.login("anna", "anna-cti")
        got = anna.call("forward.set", unconditional="0791112233", no_answer_after=15)
        assert got["forward"]["unconditional"] == "0791112233" and got["forward"]["no_answer_after"] == 15
        assert admin(server, "user.get", username="anna")["forward"]["unconditional"] == "0791112233"
        with pytest.raises(CtiError) as err:
            anna.call("forward.set", busy="not-a-number")
        assert err.value.error["data"]["field"].endswith("busy"), err.value.error
        anna.call("forward.set", unconditional="")
        assert admin(server, "user.get", username="anna")["forward"]["unconditional"] == ""
        assert anna.call("switch.list") == [{"name": "holiday", "on": False, "auto_off_at": ""}]
        assert anna.call("switch.set", name="holiday", on=True)["on"] is True
        assert admin(server, "switch.get", tenant="acme", name="holiday")["on"] is True
        anna.call("switch.set", name="holiday", on=False)
        assert admin(server, "switch.get", tenant="acme", name="holiday")["on"] is False
        with pytest.raises(CtiError) as err:
            anna.call("switch.set", name="nope", on=True)
        assert err.value.code == -32001
