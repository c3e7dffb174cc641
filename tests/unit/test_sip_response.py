"""Responses built by the transaction layer: the copied headers and RFC 3581 received/rport."""
from __future__ import annotations

import os

from hpbx._fast import sipmsg
from hpbx.sip.transaction import build_response


def test_response_top_via_gets_received_and_rport():
    # the shape nearly every client sends (fast path) and the general one give the same result
    for via, expected in (
            ("SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKa;rport",
             "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKa;rport=40000;received=192.0.2.1"),
            ("SIP/2.0/UDP 10.0.0.1:5060;rport;branch=z9hG4bKa",
             "SIP/2.0/UDP 10.0.0.1:5060;rport=40000;branch=z9hG4bKa;received=192.0.2.1"),
            ("SIP/2.0/UDP h;branch=z9hG4bKa;received=1.1.1.1",
             "SIP/2.0/UDP h;branch=z9hG4bKa;received=192.0.2.1"),
            ("SIP/2.0/UDP h;branch=z9hG4bKa;RECEIVED=1.1.1.1;rport",
             "SIP/2.0/UDP h;branch=z9hG4bKa;rport=40000;received=192.0.2.1")):
        req = sipmsg.parse((f"OPTIONS sip:x SIP/2.0\r\nVia: {via}, SIP/2.0/UDP p;branch=z9hG4bKb\r\n"
                            "From: <sip:a@b>;tag=1\r\nTo: <sip:x>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n"
                            "Content-Length: 0\r\n\r\n").encode())
        resp = sipmsg.parse(build_response(req, 200, None, ("192.0.2.1", 40000), "tt"))
        assert resp.header_values("Via") == [expected, "SIP/2.0/UDP p;branch=z9hG4bKb"]
        assert resp.to_tag == "tt" and resp.from_tag == "1" and resp.cseq_method == "OPTIONS"


def test_response_keeps_folded_and_multiple_values():
    req = sipmsg.parse(b"MESSAGE sip:x SIP/2.0\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1;rport\r\n"
                       b"Via: SIP/2.0/UDP b;branch=z9hG4bK2,\r\n SIP/2.0/UDP c;branch=z9hG4bK3\r\n"
                       b"From: \"A\r\n B\" <sip:a@b>;tag=9\r\nTo: <sip:x>;tag=known\r\n"
                       b"Call-ID: c1\r\nCSeq: 4 MESSAGE\r\nContent-Length: 0\r\n\r\n")
    data = build_response(req, 486, "", ("10.1.1.1", 7), "new", [("Retry-After", "5"), ("Content-Length", "99")],
                          b"xy")
    resp = sipmsg.parse(data)
    assert resp.reason == "Busy Here" and resp.body == b"xy" and resp.content_length == 2
    assert [v.host for v in resp.vias] == ["a", "b", "c"] and resp.vias[0].received == "10.1.1.1"
    assert resp.header("From") == '"A B" <sip:a@b>;tag=9'
    assert resp.to_tag == "known"  # a To that has a tag keeps it
    assert resp.header("Retry-After") == "5" and b"Content-Length: 99" not in data
    # a 100 never gets a To tag
    untagged = sipmsg.parse(data.replace(b"SIP/2.0 486 Busy Here", b"MESSAGE sip:x SIP/2.0")
                            .replace(b";tag=known", b""))
    assert sipmsg.parse(build_response(untagged, 100, None, ("10.1.1.1", 7), "t")).to_tag is None
    assert sipmsg.parse(build_response(untagged, 202, None, ("10.1.1.1", 7), "t")).to_tag == "t"


def test_random_identifiers_are_fresh_after_fork():
    tags = {sipmsg.new_tag() for _ in range(5000)}
    assert len(tags) == 5000 and all(len(t) == 12 for t in tags)
    assert sipmsg.new_branch().startswith("z9hG4bK")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(w, sipmsg.new_tag().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(r, 64).decode()
    assert child != sipmsg.new_tag()  # not the parent's next octets
