"""The admin page in a real browser (headless Chromium through Selenium and the Debian
chromedriver): log in as the demo tenant's admin, create a user (a field-named error first,
shown next to its field), watch a SIPp phone of that user come online in the user table, set a
number's slot by dragging on the weekly timeline, simulate a call, switch a special switch on
with one click, and see nothing of the other tenant. Screenshots of every page are kept under
tmp/artefacts/web/ (not in git)."""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from harness import REPO, SippRun

pytestmark = pytest.mark.browser

CHROMEDRIVER = "/usr/bin/chromedriver"
ARTEFACTS = REPO / "tmp" / "artefacts" / "web"
SCEN = REPO / "tests" / "sip" / "scenarios"


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMEDRIVER) or not (shutil.which("chromium") or os.path.exists("/usr/lib/chromium/chromium")):
        pytest.skip("chromium and chromium-driver (Debian) are not installed")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager has nothing to fetch
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/lib/chromium/chromium" if os.path.exists("/usr/lib/chromium/chromium") else shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,900",
                "--disable-dev-shm-usage", "--no-first-run"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(30)
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()


def wait(driver, what, timeout: float = 15.0):
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait
    # the page redraws what it polls: an element can be replaced between finding and reading it
    return WebDriverWait(driver, timeout, poll_frequency=0.1,
                         ignored_exceptions=(StaleElementReferenceException, NoSuchElementException)).until(what)


def css(driver, selector: str):
    from selenium.webdriver.common.by import By
    return driver.find_element(By.CSS_SELECTOR, selector)


def shot(driver, name: str) -> None:
    driver.save_screenshot(str(ARTEFACTS / f"{name}.png"))


def go(driver, view: str) -> None:
    css(driver, f'#menu a[data-view="{view}"]').click()


def test_admin_page_end_to_end(rig, browser, tmp_path):
    d = browser
    with rig.admin() as a:
        a.call("switch.create", tenant="demo", name="holiday", numbers=["0441234500"],
               plan={"active": True, "days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
                     "rows": [{"duration": 20, "targets": ["user:carol"]}]})
    d.get(rig.base + "/")
    wait(d, lambda d: css(d, "#ready").get_attribute("textContent") == "ready")
    shot(d, "01-login")
    css(d, "#login-user").send_keys("demoadm")
    css(d, "#login-pass").send_keys("wrong-password")
    css(d, "#login-btn").click()
    wait(d, lambda d: "wrong" in css(d, "#login-error").text)
    css(d, "#login-pass").clear()
    css(d, "#login-pass").send_keys("demoadm-secret")
    css(d, "#login-btn").click()
    wait(d, lambda d: d.find_elements("css selector", '.card[data-tenant="demo"] svg'))
    assert not d.find_elements("css selector", '.card[data-tenant="other"]')
    assert css(d, "#tenant-select").get_attribute("disabled") is not None
    shot(d, "02-dashboard")

    # users: a field-named error first, then the user is created
    go(d, "users")
    wait(d, lambda d: d.find_elements("css selector", '#user-table tr[data-user="alice"]'))
    assert not d.find_elements("css selector", '#user-table tr[data-user="olga"]')
    css(d, "#new-user").click()
    wait(d, lambda d: css(d, '#user-form [data-field="username"]'))
    css(d, '#user-form [data-field="username"]').send_keys("erin")
    css(d, '#user-form [data-field="sip_password"]').send_keys("erin-secret")
    css(d, '#user-form [data-field="details.first_name"]').send_keys("Erin")
    css(d, '#user-form [data-field="internal_number"]').send_keys("705")
    css(d, '#user-form [data-flag="behind_nat"]').click()
    css(d, "#user-save").click()
    err = wait(d, lambda d: d.find_elements("css selector", '.field-error[data-for="internal_number"]'))[0]
    assert "reserved" in err.text
    assert "bad" in css(d, '#user-form [data-field="internal_number"]').get_attribute("class")
    shot(d, "03-user-field-error")
    with rig.admin() as a:
        assert all(u["username"] != "erin" for u in a.call("user.list"))  # nothing half-applied
    field = css(d, '#user-form [data-field="internal_number"]')
    field.clear()
    field.send_keys("104")
    css(d, "#user-save").click()
    wait(d, lambda d: d.find_elements("css selector", '#user-table tr[data-user="erin"]'))
    with rig.admin() as a:
        erin = a.call("user.get", username="erin")
    assert erin["internal_number"] == "104" and erin["details"]["first_name"] == "Erin" and erin["flags"]["behind_nat"]

    # a SIPp phone of erin registers: the table shows it online with its address
    row = '#user-table tr[data-user="erin"]'
    assert css(d, f"{row} td.status").text == "offline"
    sipp = SippRun(SCEN / "register_auth.xml", rig.server.sip_target, tmp_path,
                   inf=[("erin", "erin-secret", "erin", 300)]).start()
    result = sipp.wait()
    assert result.successful == 1, result.describe()
    wait(d, lambda d: css(d, f"{row} td.status").text == "online", 10)
    assert css(d, f"{row} td.ip").text.startswith("127.0.0.1:")
    css(d, row).click()
    wait(d, lambda d: css(d, "#phone-status").text.startswith("online"))
    tabs = [b.text for b in d.find_elements("css selector", "#user-form .tabs button")]
    assert tabs == ["Settings", "Mailbox", "CTI", "Callthrough", "Pickup", "Rules", "Supervisor"]
    shot(d, "04-user-online")

    # numbers: drag 06:00-12:00 on Saturday of slot 2, rows in the text box, save
    go(d, "numbers")
    wait(d, lambda d: d.find_elements("css selector", '#number-table tr[data-key="0441234500"]'))
    assert not d.find_elements("css selector", '#number-table tr[data-key="0449990000"]')
    css(d, '#number-table tr[data-key="0441234500"]').click()
    wait(d, lambda d: d.find_elements("css selector", '#slot-buttons [data-slot="2"]'))
    css(d, '#slot-buttons [data-slot="2"]').click()
    from selenium.webdriver.common.action_chains import ActionChains
    day = css(d, '.tl-day[data-day="sat"]')
    width = day.size["width"]
    (ActionChains(d).move_to_element_with_offset(day, int(-width / 2 + width * 0.25) + 1, 0).click_and_hold()
     .move_to_element_with_offset(day, int(-width / 2 + width * 0.5) + 1, 0).release().perform())
    wait(d, lambda d: css(d, "#slot-start").get_attribute("value") == "06:00")
    assert css(d, "#slot-end").get_attribute("value") == "11:59"
    assert d.find_elements("css selector", '.tl-day[data-day="sat"] .tl-bar[data-slot="2"]')
    css(d, "#slot-name").send_keys("Saturday morning")
    rows = css(d, "#slot-rows")
    rows.send_keys("15: user:nobody")
    css(d, "#slot-name").click()  # change event of the rows box
    css(d, "#slots-save").click()
    err = wait(d, lambda d: d.find_elements("css selector", '.field-error[data-for="slots[1].rows"]'))[0]
    assert "nobody" in err.text
    shot(d, "05-timeline-error")
    with rig.admin() as a:
        assert a.call("number.get", number="0441234500")["slots"][1]["rows"] == []
    rows.clear()
    rows.send_keys("15: user:erin, user:bob")
    css(d, "#slot-name").click()
    css(d, "#slots-save").click()
    wait(d, lambda d: css(d, "#slots-saved").text.startswith("saved"))
    with rig.admin() as a:
        slot = a.call("number.get", number="0441234500")["slots"][1]
    assert slot["active"] and slot["name"] == "Saturday morning" and slot["days"] == ["sat"]
    assert (slot["time_start"], slot["time_end"]) == ("06:00", "11:59")
    assert slot["rows"] == [{"mode": 1, "duration": 15, "targets": ["user:erin", "user:bob"]}]
    css(d, "#sim-run").click()
    wait(d, lambda d: "Slot 1" in css(d, "#sim-result").text)
    assert "user:alice" in css(d, "#sim-result").text and "not registered" in css(d, "#sim-result").text
    shot(d, "06-numbers-timeline")

    # special switch: one click on, one click off
    go(d, "switches")
    toggle = wait(d, lambda d: d.find_elements("css selector", 'button[data-switch="holiday"]'))[0]
    assert toggle.text == "off" and not d.find_elements("css selector", 'button[data-switch="other-closed"]')
    toggle.click()
    wait(d, lambda d: css(d, 'button[data-switch="holiday"]').text == "on")
    with rig.admin() as a:
        assert a.call("switch.get", tenant="demo", name="holiday")["on"]
        sim = a.call("number.simulate", number="0441234500")
    assert sim["switch"] == "holiday" and sim["rows"][0]["targets"][0]["target"] == "user:carol"
    shot(d, "07-switch-on")

    for view in ("groups", "announcements", "phones", "cdrs", "audit", "system", "dashboard"):
        go(d, view)
        wait(d, lambda d: not d.find_elements("css selector", "#view p.muted") or
             css(d, "#view p.muted").text != "loading…")
        time.sleep(0.2)
        shot(d, f"08-{view}")
    go(d, "audit")
    wait(d, lambda d: "user.create" in css(d, "#view").text)
    assert "web:demoadm" in css(d, "#view").text
    go(d, "system")
    wait(d, lambda d: d.find_elements("css selector", "#sys-lic"))
    assert css(d, "#sysline").text.startswith("Lic: ")


def test_announcement_upload_and_play_and_crafted_requests(rig, browser, tmp_path):
    """Logged in as the demo admin (the module's first test left the session): upload a WAV
    through the file input, play it in the page's <audio> player (it decodes and runs), and
    from the page's own session try the other tenant with crafted fetches and a forged tenant
    selector: refused, nothing of "other" shows."""
    import subprocess
    if not shutil.which("sox"):
        pytest.skip("sox is not installed")
    d = browser
    wav = tmp_path / "browser.wav"
    subprocess.run(["sox", "-n", "-r", "8000", "-c", "1", "-b", "16", str(wav), "synth", "1.5", "sine", "440"],
                   check=True, timeout=60)
    go(d, "announcements")
    wait(d, lambda d: d.find_elements("css selector", "#ann-form"))
    css(d, "#ann-name").send_keys("Browser hello")
    css(d, "#ann-upload").click()
    err = wait(d, lambda d: d.find_elements("css selector", '.field-error[data-for="audio"]'))[0]
    assert "no file" in err.text
    css(d, "#ann-file").send_keys(str(wav))
    css(d, "#ann-upload").click()
    player = wait(d, lambda d: d.find_elements("css selector", "#ann-table audio"))[0]
    wait(d, lambda d: d.execute_script("return arguments[0].readyState >= 1 && arguments[0].duration > 1.4", player))
    d.execute_script("arguments[0].muted = true; arguments[0].play();", player)
    wait(d, lambda d: d.execute_script("return arguments[0].currentTime > 0.2", player), 10)
    shot(d, "09-announcement-uploaded")
    with rig.admin() as a:
        anns = a.call("announcement.list", tenant="demo")
    assert [x["name"] for x in anns if x["file"].startswith("announcements/demo/")] == ["Browser hello"]

    # crafted requests from the page's own session (its cookie and CSRF token)
    answers = d.execute_async_script("""
        const done = arguments[arguments.length - 1];
        const calls = [["user.list", {tenant: "other"}], ["user.get", {username: "olga"}],
                       ["switch.set", {tenant: "other", name: "other-closed"}], ["tenant.delete", {name: "other"}]];
        Promise.all(calls.map(([m, p]) => rpc(m, p).then(r => ({ok: r}), e => ({code: e.code}))))
          .then(done, e => done(String(e)));""")
    assert [a.get("code") for a in answers] == [-32004, -32001, -32004, -32004], answers
    # a forged tenant selector: the page asks for "other", the server answers with a refusal
    d.execute_script("""const s = document.querySelector('#tenant-select'); s.disabled = false;
        s.append(new Option('other', 'other')); s.value = 'other';
        s.dispatchEvent(new Event('change'));""")
    go(d, "users")
    wait(d, lambda d: "not your tenant" in css(d, "#view").text or "permission denied" in css(d, "#view").text)
    assert "olga" not in css(d, "#view").text
    shot(d, "10-forged-tenant-refused")
    with rig.admin() as a:
        assert not a.call("switch.get", tenant="other", name="other-closed")["on"]
        assert [t["name"] for t in a.call("tenant.list")] == ["demo", "other"]
