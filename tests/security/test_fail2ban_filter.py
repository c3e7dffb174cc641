"""The fail2ban filter in config/fail2ban matches the security events the server writes, with
the source address as the host, and nothing else (fail2ban's <HOST> as a regex group)."""
from __future__ import annotations

import configparser
import logging
import re
import shutil
import subprocess
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
