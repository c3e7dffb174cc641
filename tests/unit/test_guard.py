"""The ban table of the receive path (hpbx._fast.guard), and udpio dropping what it bans."""
from __future__ import annotations

import socket
import time

import pytest

from hpbx._fast import guard, udpio

REG = (b"REGISTER sip:x SIP/2.0\r\nVia: SIP/2.0/UDP 1.2.3.4;branch=z9hG4bKx\r\n"
       b"User-Agent: %s\r\nContent-Length: 0\r\n\r\n")


def table(**kw):
    g = guard.Guard(1024)
    g.configure(**kw)
    return g


def test_density_bans_after_threshold_in_window_and_ban_expires():
    g = table(window=2.0, threshold=16, ban_secs=300.0)
    t = 1000.0
    assert all(g.check("192.0.2.1", None, t + i * 0.01) for i in range(16))
    assert not g.check("192.0.2.1", None, t + 0.2)  # the 17th within 2 s
    assert g.banned_until("192.0.2.1", t + 1) == pytest.approx(t + 0.2 + 300)
    assert g.bans(t + 1) == [("192.0.2.1", pytest.approx(t + 300.2), "flood", 1)]
    assert g.events() == [("192.0.2.1", "flood", pytest.approx(t + 300.2))]
    assert g.events() == []
    assert not g.check("192.0.2.1", None, t + 299)  # still banned, counted as dropped
    assert g.bans(t + 299)[0][3] == 2
    assert g.check("192.0.2.1", None, t + 301)  # expired
    # another source is not affected
    assert g.check("192.0.2.2", None, t + 0.3)


def test_slow_source_is_never_banned():
    g = table(window=2.0, threshold=16)
    assert all(g.check("198.51.100.7", None, 1000.0 + i * 0.2) for i in range(500))
    assert g.bans(1100.0) == []


def test_good_source_may_send_more_and_trusted_is_never_counted():
    g = table(window=2.0, threshold=4, good_factor=8, trusted=["10.1.0.0/16", "2001:db8::/32"])
    g.mark_good("203.0.113.5", time.time() + 3600)
    now = time.time()
    assert all(g.check("203.0.113.5", None, now) for _ in range(32))
    assert not g.check("203.0.113.5", None, now)
    assert all(g.check("10.1.2.3", None, now) for _ in range(1000))
    assert all(g.check("2001:db8::1", None, now) for _ in range(1000))
    assert not g.ban("10.1.9.9", 60)  # trusted: never banned
    assert g.trusted("10.1.9.9") and not g.trusted("10.2.0.1")


def test_scanner_user_agent_is_dropped_and_banned_case_insensitively():
    g = table(agents=["friendly-scanner", "sipvicious"], threshold=0)
    assert g.check("192.0.2.9", REG % b"Linphone/5.1", 10.0)
    assert not g.check("192.0.2.9", REG % b"Friendly-Scanner", 10.0)
    assert g.events() == [("192.0.2.9", "scanner", pytest.approx(310.0))]
    # only the User-Agent header counts, not a From display name
    body = (b"OPTIONS sip:x SIP/2.0\r\nFrom: \"sipvicious\" <sip:a@b>\r\n"
            b"User-Agent: ok\r\n\r\n")
    assert g.check("192.0.2.10", body, 10.0)
    assert g.check("192.0.2.11", b"garbage without headers", 10.0)


def test_admin_ban_unban_and_ipv6():
    g = table()
    assert g.ban("2001:db8:1::5", 60, "admin")
    assert not g.allowed("2001:db8:1::5")
    assert g.bans()[0][0] == "2001:db8:1::5"
    assert g.unban("2001:db8:1::5")
    assert g.allowed("2001:db8:1::5")
    assert not g.unban("2001:db8:1::5")
    with pytest.raises(ValueError, match="not an IP address"):
        g.ban("example.com", 60)
    with pytest.raises(ValueError, match="unknown ban reason"):
        g.ban("192.0.2.1", 60, "because")


def test_memory_stays_bounded_under_a_spoofed_flood():
    g = guard.Guard(1024)
    g.configure(threshold=1, window=60)
    now = 1000.0
    for i in range(50_000):
        g.check(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", None, now)
        g.check(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", None, now)  # banned
    assert g.stats["entries"] <= g.capacity
    assert g.stats["evictions"] > 0
    assert len(g.bans(now)) <= g.capacity


def test_udpio_drops_banned_sources_before_they_become_bytes():
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.setblocking(False)
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    a.bind(("127.0.0.1", 0))
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b.bind(("127.0.0.2", 0))
    try:
        io = udpio.DatagramIO(server.fileno(), socket.AF_INET)
        g = guard.Guard(1024)
        g.configure(threshold=5, window=60)
        io.guard = g
        for i in range(20):
            a.sendto(b"a%d" % i, server.getsockname())
        for i in range(3):
            b.sendto(b"b%d" % i, server.getsockname())
        got = []
        deadline = time.monotonic() + 2
        while len(got) < 8 and time.monotonic() < deadline:
            got += io.recv()
            time.sleep(0.01)
        time.sleep(0.05)
        got += io.recv()
        assert [d for d, _ in got] == [b"a%d" % i for i in range(5)] + [b"b0", b"b1", b"b2"]
        assert io.filtered == 15
        assert g.bans()[0][:3:2] == ("127.0.0.1", "flood")
    finally:
        for s in (server, a, b):
            s.close()
