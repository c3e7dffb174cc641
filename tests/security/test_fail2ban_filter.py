"""The fail2ban filter in config/fail2ban matches the security events the server writes, with
the source address as the host, and nothing else (fail2ban's <HOST> as a regex group)."""
from __future__ import annotations

import configparser
import logging
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from hpbx import settings as settings_mod
from hpbx.security.bans import BanService
from hpbx.security.toll import TollPolicy

REPO = Path(__file__).resolve().parents[2]
FILTER = REPO / "config" / "fail2ban" / "filter.d" / "hpbx.conf"


def failregex() -> re.Pattern:
    cp = configparser.ConfigParser(interpolation=None)
    cp.read(FILTER)
    text = cp["Definition"]["failregex"]
    return re.compile(text.replace("<HOST>", r"(?P<host>[0-9A-Fa-f:.]+)"))


@pytest.fixture
def lines(tmp_path):
    """Security events as the server's handler formats them."""
    path = tmp_path / "hpbx.log"
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("hpbx.security")
    logger.addHandler(handler)
    old = logger.level
    logger.setLevel(logging.INFO)
    try:
        s = settings_mod.from_dict({"security": {"auth_failures": 2}})
        bans = BanService(s)
        bans.auth_failed("192.0.2.7", 5060, "udp", "REGISTER", 'evil" user\nSECURITY src=1.1.1.1')
        bans.auth_failed("2001:db8::7", 5060, "tcp", "INVITE", "100")
        bans.auth_failed("192.0.2.7", 5060, "udp", "REGISTER", "100")  # banned now
        TollPolicy(s).admit("c1", "acme", "anna", "0901123456", ("198.51.100.9", 5060))
        logging.getLogger("hpbx.sip.registrar").warning("not a security event src=203.0.113.1")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)
        handler.close()
    return path


def test_filter_matches_every_security_event_with_its_source(lines):
    rx = failregex()
    # fail2ban cuts the time stamp (datepattern) off before it applies failregex
    text = [re.sub(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+", "", line)
            for line in lines.read_text().splitlines()]
    hosts = [m.group("host") for m in map(rx.search, text) if m]
    assert hosts == ["192.0.2.7", "2001:db8::7", "192.0.2.7", "192.0.2.7", "198.51.100.9"], text
    # a hostile user name cannot forge a second source on the line
    assert all("\n" not in line and "1.1.1.1" not in (rx.search(line) or re.match("", "")).group(0)
               for line in text if "evil" in line)


@pytest.mark.skipif(shutil.which("fail2ban-regex") is None, reason="fail2ban is not installed")
def test_fail2ban_regex_agrees(lines):
    out = subprocess.run(["fail2ban-regex", str(lines), str(FILTER)], capture_output=True,
                         text=True, timeout=60).stdout
    assert re.search(r"Failregex: 5 total", out), out


@pytest.mark.skipif(shutil.which("fail2ban-regex") is None, reason="fail2ban is not installed")
def test_fail2ban_regex_on_the_running_servers_own_log(tmp_path):
    """The lines are not rebuilt here: the real server is guessed at (wrong passwords and an
    unknown user from 127.0.0.1) until it bans, and fail2ban-regex reads its log file as
    written, finding the attacker's address in every security event and nowhere else."""
    import uuid
    from harness import HpbxServer, RawPhone, digest_authorization, header

    srv = HpbxServer(tmp_path, users=[("100", "right-password")],
                     security={"auth_failures": 3, "flood_threshold": 0})
    with srv:
        with RawPhone(srv.host, srv.port) as phone:
            for user in ("100", "999", "100"):
                phone.call_id = uuid.uuid4().hex
                phone.request("REGISTER", f"sip:{srv.host}", ["Expires: 60"], from_user=user)
                challenge = phone.recv_until(lambda m: m.startswith("SIP/2.0 401"), 3)
                assert challenge, srv.log()
                auth = digest_authorization(header(challenge, "WWW-Authenticate")[0], user, "guess",
                                            "REGISTER", f"sip:{srv.host}")
                phone.request("REGISTER", f"sip:{srv.host}", ["Expires: 60", f"Authorization: {auth}"],
                              from_user=user)
                assert phone.recv_until(lambda m: m.startswith("SIP/2.0 403"), 3), srv.log()
        deadline = time.monotonic() + 5
        while "event=banned" not in srv.log() and time.monotonic() < deadline:
            time.sleep(0.05)
    text = srv.log_path.read_text()
    assert text.count("SECURITY event=auth_failed") == 3 and "SECURITY event=banned" in text, text[-3000:]
    out = subprocess.run(["fail2ban-regex", "-o", "ip", str(srv.log_path), str(FILTER)],
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["127.0.0.1"] * 4, out.stdout + out.stderr
    summary = subprocess.run(["fail2ban-regex", str(srv.log_path), str(FILTER)], capture_output=True,
                             text=True, timeout=60).stdout
    assert re.search(r"Failregex: 4 total", summary), summary
