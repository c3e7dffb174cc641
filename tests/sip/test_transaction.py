"""RFC 3261 §17 timers and matching, observed from outside the real server with short timers
(T1 = 50 ms, T2 = 200 ms, so timer H/F = 64*T1 = 3.2 s)."""
from __future__ import annotations

import re
import time

import pytest

from harness import HpbxServer, RawPhone, digest_authorization, header

T1, T2 = 0.05, 0.2


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = HpbxServer(tmp_path_factory.mktemp("tx"), users=[("nat", "nat-pw")],
                     flags={"nat": {"behind_nat": True}},
                     sip_extra={"t1_ms": 50, "t2_ms": 200, "t4_ms": 200, "min_expires": 1,
                                "keepalive_interval": 1, "keepalive_grace": 2})
    srv.start()
    yield srv
    srv.stop()


def arrivals(phone, predicate, window: float) -> list[tuple[float, str]]:
    out = []
    deadline = time.monotonic() + window
    while (left := deadline - time.monotonic()) > 0:
        msg = phone.recv(left)
        if msg is None:
            break
        if predicate(msg):
            out.append((time.monotonic(), msg))
    return out


def assert_backoff(times: list[float], expected: list[float]) -> None:
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert len(gaps) >= len(expected), gaps
    for gap, want in zip(gaps, expected):
        # never early; late by at most the timer resolution plus scheduling noise
        assert want * 0.9 <= gap <= want + 0.08, (gaps, expected)


def test_invite_final_retransmitted_until_ack(server):
    with RawPhone(server.host, server.port) as phone:
        ruri = f"sip:someone@{server.host}:{server.port}"
        sent_at = time.monotonic()
        phone.request("INVITE", ruri, branch="z9hG4bKinv-timer-g", cseq=1)
        got = arrivals(phone, lambda m: True, 1.0)
        lines = [m.split("\r\n", 1)[0] for _, m in got]
        assert lines[0] == "SIP/2.0 100 Trying", lines
        # no credentials: the INVITE gets a non-2xx final (407 from the B2BUA, or 405 without one)
        finals = [t for t, m in got if re.match(r"SIP/2\.0 4\d\d ", m)]
        final_line = next(m for _, m in got if re.match(r"SIP/2\.0 4\d\d ", m)).split("\r\n", 1)[0]
        # timer G: T1, 2*T1, then capped at T2
        assert finals[0] - sent_at < 0.1
        assert_backoff(finals, [T1, 2 * T1, T2, T2])
        # a retransmitted INVITE is absorbed: it gets the same final again, no new 100 Trying
        phone.request("INVITE", ruri, branch="z9hG4bKinv-timer-g", cseq=1)
        again = phone.recv_until(lambda m: m.startswith("SIP/2.0"), 0.5)
        assert again.startswith(final_line), again
        to = header(got[-1][1], "To")[0]
        phone.send(f"ACK {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{phone.port};branch=z9hG4bKinv-timer-g;rport\r\n"
                   f"Max-Forwards: 70\r\nFrom: {header(got[-1][1], 'From')[0]}\r\nTo: {to}\r\n"
                   f"Call-ID: {phone.call_id}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n")
        arrivals(phone, lambda m: True, 0.1)  # one may have crossed the ACK
        assert arrivals(phone, lambda m: True, 0.8) == [], "final still retransmitted after the ACK"


def test_invite_final_given_up_after_timer_h(server):
    with RawPhone(server.host, server.port) as phone:
        ruri = f"sip:someone@{server.host}:{server.port}"
        start = time.monotonic()
        phone.request("INVITE", ruri, branch="z9hG4bKinv-timer-h", cseq=1)
        got = arrivals(phone, lambda m: re.match(r"SIP/2\.0 4\d\d ", m) is not None, 64 * T1 + 1.0)
        last = got[-1][0] - start
        # the last retransmission comes before timer H (64*T1), none after it
        assert 64 * T1 - T2 - 0.1 <= last <= 64 * T1 + 0.1, [round(t - start, 3) for t, _ in got]
        assert 14 <= len(got) <= 20, len(got)


def test_non_invite_retransmission_absorbed_until_timer_j(server):
    with RawPhone(server.host, server.port) as phone:
        ruri = f"sip:{server.host}:{server.port}"
        text = phone.request("OPTIONS", ruri, branch="z9hG4bKopt-timer-j", cseq=5)
        first = phone.recv_until(lambda m: m.startswith("SIP/2.0 200"), 1.0)
        assert first is not None
        started = time.monotonic()
        # within 64*T1 the same request is a retransmission: the same response, byte for byte
        # (the To tag a new transaction would draw shows it)
        time.sleep(32 * T1)
        phone.send(text)
        again = phone.recv_until(lambda m: m.startswith("SIP/2.0 200"), 1.0)
        assert again == first
        # after timer J (64*T1 after the response) it starts a new transaction
        time.sleep(max(0.0, 64 * T1 + 0.3 - (time.monotonic() - started)))
        phone.send(text)
        fresh = phone.recv_until(lambda m: m.startswith("SIP/2.0 200"), 1.0)
        assert fresh is not None and header(fresh, "To") != header(first, "To")


def test_cancel_without_invite_is_481(server):
    with RawPhone(server.host, server.port) as phone:
        phone.request("CANCEL", f"sip:someone@{server.host}:{server.port}", cseq=1)
        reply = phone.recv_until(lambda m: m.startswith("SIP/2.0"), 1.0)
        assert reply.startswith("SIP/2.0 481"), reply


def test_client_transaction_retransmits_then_times_out(server):
    """The OPTIONS keepalive towards a NAT'd binding is a client transaction: timer E backs off
    T1, 2*T1, T2, ...; the phone never answers, so timer F ends it with a local 408, the
    binding goes offline and is removed after the grace period."""
    with RawPhone(server.host, server.port) as phone:
        ruri = f"sip:{server.host}:{server.port}"

        def register(extra=()):
            phone.request("REGISTER", ruri, [f"Contact: <sip:nat@10.0.0.7:5060>", "Expires: 60", *extra],
                          to_uri=f"sip:nat@{server.host}", from_user="nat")
            return phone.recv_until(lambda m: m.startswith("SIP/2.0") and " 100 " not in m[:12], 2.0)

        challenge = header(register(), "WWW-Authenticate")[0]
        reply = register([f"Authorization: {digest_authorization(challenge, 'nat', 'nat-pw', 'REGISTER', ruri)}"])
        assert reply.startswith("SIP/2.0 200"), reply
        row = [b for b in server.bindings() if b["username"] == "nat"]
        assert row and row[0]["behind_nat"] == 1 and row[0]["source_port"] == phone.port
        got = arrivals(phone, lambda m: m.startswith("OPTIONS "), 2.5)
        assert got, "no keepalive OPTIONS reached the phone's source address"
        first_branch = header(got[0][1], "Via")[0].split("branch=")[1].split(";")[0]
        same = [t for t, m in got if first_branch in header(m, "Via")[0]]
        assert_backoff(same, [T1, 2 * T1, T2, T2])
        assert header(got[0][1], "Via")[0].count("branch=") == 1
        # grace 2 s after the last answer (the REGISTER): removed, in memory and in the store
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline and [b for b in server.bindings() if b["username"] == "nat"]:
            time.sleep(0.2)
        assert not [b for b in server.bindings() if b["username"] == "nat"]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and "timed out" not in server.log():
        time.sleep(0.2)
    assert "OPTIONS to 127.0.0.1" in server.log() and "timed out" in server.log()
