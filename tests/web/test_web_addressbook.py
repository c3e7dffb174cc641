"""Issue 17's pages that depend on issue 14, in a real browser (headless Chromium, Selenium):
the address book page (a bad CSV's error shown, nothing replaced; 1500 entries imported, 1000
rows shown with the counter at 1500; export byte-identical), the CTI column of the user table
going online when a real CTI WebSocket client logs in, a group created on the page, and the
call records filtered by number (records of two real SIPp calls). Screenshots under
tmp/artefacts/web/."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from harness import REPO, SippRun
from test_web_browser import browser, css, go, shot, wait  # noqa: F401 (the browser fixture)

sys.path.insert(0, str(REPO / "tests" / "cti"))
from cticlient import CtiClient  # noqa: E402

pytestmark = pytest.mark.browser
SCEN = REPO / "tests" / "sip" / "scenarios"
HEADER = "First name;Last name;Company;Number private;Number office;Number mobile"


def login(d, rig):
    d.get(rig.base + "/")
    wait(d, lambda d: css(d, "#ready").get_attribute("textContent") == "ready")
    if not d.find_elements("css selector", "#login-user") or not css(d, "#login-user").is_displayed():
        return
    css(d, "#login-user").send_keys("demoadm")
    css(d, "#login-pass").send_keys("demoadm-secret")
    css(d, "#login-btn").click()
    wait(d, lambda d: d.find_elements("css selector", '.card[data-tenant="demo"]'))


def test_address_book_page(rig, browser, tmp_path):
    d = browser
    login(d, rig)
    go(d, "addressbook")
    wait(d, lambda d: css(d, "#ab-total").text == "0")
    bad = tmp_path / "bad.csv"
    bad.write_bytes((HEADER + "\r\nHans;Muster;ACME;;0441234567;\r\nErika;Meier;;;07x9;\r\n").encode())
    css(d, "#ab-file").send_keys(str(bad))
    css(d, "#ab-import").click()
    err = wait(d, lambda d: css(d, "#ab-error").text)
    assert "line 3, column 5 (Number office)" in err, err
    shot(d, "ab-01-csv-error")
    with rig.admin() as a:
        assert a.call("addressbook.list", tenant="demo")["total"] == 0  # nothing half-imported
    good = tmp_path / "good.csv"
    rows = [f"Vor{i};Nach{i};Firma {i % 7};;0{i:09d};" for i in range(1500)]
    good.write_bytes(("\r\n".join([HEADER] + rows) + "\r\n").encode())
    css(d, "#ab-file").send_keys(str(good))
    css(d, "#ab-import").click()
    wait(d, lambda d: css(d, "#ab-total").text == "1500", 20)
    assert len(d.find_elements("css selector", "#ab-table tbody tr")) == 1000  # FEATURES 16
    assert "first 1000" in css(d, "#view").text
    first = d.find_elements("css selector", "#ab-table tbody tr")[0].text
    assert "0000000000" in first, first  # the leading zeros survive
    shot(d, "ab-02-imported")
    css(d, "#ab-export").click()
    wait(d, lambda d: css(d, "#ab-download").get_attribute("data-bytes"))
    assert int(css(d, "#ab-download").get_attribute("data-bytes")) == good.stat().st_size
    # the page's download is the file's bytes (read back through the blob URL in the page)
    same = d.execute_async_script(
        "const done = arguments[1]; window.abLastExport.arrayBuffer()"
        ".then(b => done(Array.from(new Uint8Array(b)).join(',')));", None)
    assert bytes(int(x) for x in same.split(",")) == good.read_bytes()


def test_cti_column_group_create_and_cdr_number_filter(rig, browser, tmp_path):
    d = browser
    with rig.admin() as a:
        a.call("user.update", username="alice", cti_password="alice-cti", flags={"cti_access": True})
    login(d, rig)
    go(d, "users")
    cell = '#user-table tr[data-user="alice"] td.cti'
    wait(d, lambda d: css(d, cell).text == "offline")
    css(d, '#user-table tr[data-user="alice"]').click()
    wait(d, lambda d: css(d, "#cti-status").get_attribute("textContent") == "offline")
    url = rig.base.replace("http://", "ws://") + "/cti"
    with CtiClient(url) as cti:
        cti.login("alice", "alice-cti")
        wait(d, lambda d: css(d, cell).text == "online", 10)
        wait(d, lambda d: css(d, "#cti-status").get_attribute("textContent").startswith("online"), 10)
        shot(d, "ab-03-cti-online")
    wait(d, lambda d: css(d, cell).text == "offline", 10)

    # groups: create one on the page (a field-named error first)
    go(d, "groups")
    wait(d, lambda d: css(d, "#new-group"))
    css(d, "#new-group").click()
    wait(d, lambda d: css(d, '#group-form [data-field="name"]'))
    css(d, '#group-form [data-field="name"]').send_keys("helpdesk")
    css(d, '#group-form [data-field="internal_number"]').send_keys("270")
    css(d, '#group-form [data-field="members"]').send_keys("alice, nobody")
    css(d, "#group-save").click()
    wait(d, lambda d: "nobody" in css(d, "#group-form").text)
    with rig.admin() as a:
        assert all(g["name"] != "helpdesk" for g in a.call("group.list", tenant="demo"))
    members = css(d, '#group-form [data-field="members"]')
    members.clear()
    members.send_keys("alice, bob")
    css(d, "#group-save").click()
    wait(d, lambda d: d.find_elements("css selector", '#group-table tr[data-key="helpdesk"]'))
    with rig.admin() as a:
        g = a.call("group.get", tenant="demo", name="helpdesk")
    assert g["members"] == ["alice", "bob"] and g["internal_number"] == "270"
    shot(d, "ab-04-group-created")

    # two real calls from the trunk's address (nobody registered: both fail, both leave a CDR)
    for called in ("0441234500", "0441234501"):
        run = SippRun(SCEN / "call_uac_fail.xml", rig.server.sip_target, tmp_path, local_port=5090,
                      extra=["-s", called]).start()
        assert run.wait().successful == 1
    with rig.admin() as a:
        for _ in range(50):
            if len(a.call("cdr.list", tenant="demo")) >= 2:
                break
            import time
            time.sleep(0.1)
    go(d, "cdrs")
    wait(d, lambda d: d.find_elements("css selector", "#cdr-count"))
    css(d, "#cdr-number").send_keys("4501")
    css(d, "#cdr-filter").click()
    wait(d, lambda d: css(d, "#cdr-count").text == "1 call records")
    assert "0441234501" in css(d, "#view").text and "0441234500" not in css(d, "#view").text
    shot(d, "ab-05-cdr-by-number")
    with rig.admin() as a:
        assert [c["called"] for c in a.call("cdr.list", tenant="demo", number="0311112222")][:2] == \
            ["0441234501", "0441234500"]


def test_phonebook_url_serves_the_address_book(rig, tmp_path):
    import subprocess
    import xml.etree.ElementTree as ET
    csv = (HEADER + "\nHans;Muster;ACME;;0441234567;0791234567\n;;Bäckerei Zürcher;031 999 00 11;;\n").encode()
    import base64
    with rig.admin() as a:
        a.call("addressbook.import", tenant="demo", csv_base64=base64.b64encode(csv).decode())
        a.call("phone.create", mac="001565aabbdd", tenant="demo", vendor="snom", accounts=["carol"],
               http_password="pb-dev-pw")
    out = subprocess.run(["curl", "-s", "--digest", "-u", "001565aabbdd:pb-dev-pw",
                          f"{rig.base}/prov/phonebook/001565aabbdd.xml"], capture_output=True, timeout=30)
    items = [(i.find("name").text, i.find("number").text) for i in ET.fromstring(out.stdout)]
    assert ("Hans Muster", "0441234567") in items and ("Hans Muster", "0791234567") in items, items
    assert ("Bäckerei Zürcher", "031 999 00 11") in items and ("Carol Demo", "102") in items, items
