"""SIP message core bench: hpbx._fast.sipmsg / sdp against the Python SIP stack sippy, same run.

Measured (each op: parse from bytes and read the transaction keys a server needs first —
top Via branch, CSeq, Call-ID, From tag, To tag):
  * INVITE (750 octets with SDP)  — hpbx and sippy (``SipRequest(buf=...)`` + getHFBody reads)
  * 200 OK with SDP, REGISTER     — hpbx
  * parse only (no field read), build_response (180 with a To tag), SDP parse, SDP rewrite

Prints a table of µs per op (pytest-benchmark medians) and the sippy/hpbx ratio. The issue's
target is < 1 µs for the INVITE and >= 30x sippy; figures only, nothing passes or fails on time.

    .venv/bin/python -m pytest -q -s bench/bench_parser.py     # (make bench runs every bench)
    .venv/bin/python bench/bench_parser.py                      # the same figures via timeit
"""
from __future__ import annotations

import os
import sys
import timeit

import pytest

from hpbx._fast import sdp, sipmsg

SDP_BODY = (
    b"v=0\r\n"
    b"o=alice 2890844526 2890844526 IN IP4 192.168.1.20\r\n"
    b"s=-\r\n"
    b"c=IN IP4 192.168.1.20\r\n"
    b"t=0 0\r\n"
    b"m=audio 49170 RTP/AVP 0 8 101\r\n"
    b"a=rtpmap:0 PCMU/8000\r\n"
    b"a=rtpmap:8 PCMA/8000\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\n"
    b"a=fmtp:101 0-16\r\n"
    b"a=ptime:20\r\n"
    b"a=sendrecv\r\n"
)


def _msg(start: str, headers: list[str], body: bytes = b"") -> bytes:
    head = start + "\r\n" + "".join(h + "\r\n" for h in headers) + f"Content-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


INVITE = _msg("INVITE sip:1002@pbx.example.com SIP/2.0", [
    "Via: SIP/2.0/UDP 192.168.1.20:5060;branch=z9hG4bK776asdhds;rport",
    "Max-Forwards: 70",
    'To: "Bob" <sip:1002@pbx.example.com>',
    'From: "Alice" <sip:1001@pbx.example.com>;tag=1928301774',
    "Call-ID: a84b4c76e66710@192.168.1.20",
    "CSeq: 314159 INVITE",
    "Contact: <sip:1001@192.168.1.20:5060;transport=udp>",
    "User-Agent: Softphone 1.2.3",
    "Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, REFER, NOTIFY",
    "Supported: replaces, timer",
    "Content-Type: application/sdp",
], SDP_BODY)

OK_SDP = _msg("SIP/2.0 200 OK", [
    "Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK776asdhds;received=203.0.113.9;rport=5060",
    'To: "Bob" <sip:1002@pbx.example.com>;tag=a6c85cf',
    'From: "Alice" <sip:1001@pbx.example.com>;tag=1928301774',
    "Call-ID: a84b4c76e66710@192.168.1.20",
    "CSeq: 314159 INVITE",
    "Contact: <sip:1002@192.168.1.30:5060>",
    "Content-Type: application/sdp",
], SDP_BODY.replace(b"192.168.1.20", b"192.168.1.30"))

REGISTER = _msg("REGISTER sip:pbx.example.com SIP/2.0", [
    "Via: SIP/2.0/UDP 192.168.1.20:5060;branch=z9hG4bKnashds7;rport",
    "Max-Forwards: 70",
    "To: <sip:1001@pbx.example.com>",
    "From: <sip:1001@pbx.example.com>;tag=456248",
    "Call-ID: 843817637684230@998sdasdh09",
    "CSeq: 1826 REGISTER",
    "Contact: <sip:1001@192.168.1.20:5060>;expires=3600",
    "Expires: 7200",
    "User-Agent: Softphone 1.2.3",
])


def hpbx_invite(data=INVITE, parse=sipmsg.parse):
    m = parse(data)
    return m.via_branch, m.cseq, m.call_id, m.from_tag, m.to_tag


def hpbx_parse_only(data=INVITE, parse=sipmsg.parse):
    return parse(data)


def hpbx_response(data=OK_SDP, parse=sipmsg.parse):
    m = parse(data)
    return m.via_branch, m.cseq, m.call_id, m.from_tag, m.to_tag, m.status


def hpbx_register(data=REGISTER, parse=sipmsg.parse):
    m = parse(data)
    return m.via_branch, m.cseq, m.call_id, m.from_tag, m.to_tag


_REQ = sipmsg.parse(INVITE)


def hpbx_build_response():
    return sipmsg.build_response(_REQ, 180, to_tag="a6c85cf")


def hpbx_sdp_parse():
    return sdp.parse(SDP_BODY)


def hpbx_sdp_rewrite():
    return sdp.rewrite(SDP_BODY, "203.0.113.1", [(30000, 30001)])


try:
    from sippy.SipRequest import SipRequest
except ImportError:  # sippy is a bench extra
    SipRequest = None

INVITE_STR = INVITE.decode()


def sippy_invite(buf=INVITE_STR):
    r = SipRequest(buf=buf)
    return (r.getHFBody("via").getBranch(), r.getHFBody("cseq").getCSeqNum(),
            str(r.getHFBody("call-id")), r.getHFBody("from").getTag(), r.getHFBody("to").getTag())


CASES = [
    ("hpbx INVITE parse + 5 fields", hpbx_invite, len(INVITE)),
    ("hpbx INVITE parse only", hpbx_parse_only, len(INVITE)),
    ("hpbx 200 OK with SDP + fields", hpbx_response, len(OK_SDP)),
    ("hpbx REGISTER + fields", hpbx_register, len(REGISTER)),
    ("hpbx build_response 180", hpbx_build_response, 0),
    ("hpbx SDP parse", hpbx_sdp_parse, len(SDP_BODY)),
    ("hpbx SDP rewrite", hpbx_sdp_rewrite, len(SDP_BODY)),
    ("sippy INVITE parse + 5 fields", sippy_invite, len(INVITE)),
]

_results: dict[str, float] = {}  # name -> µs per op (median)


def _check_same_answers():
    """Both stacks must read the same values, else the comparison is meaningless."""
    ours = hpbx_invite()
    assert ours == ("z9hG4bK776asdhds", 314159, "a84b4c76e66710@192.168.1.20", "1928301774", None)
    if SipRequest is not None:
        assert sippy_invite() == ours


def table(results: dict[str, float]) -> str:
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    lines = ["", f"SIP message core (µs per op, median; load average {load} on {os.cpu_count()} cores)",
             f"{'op':36} {'octets':>6} {'µs/op':>9}"]
    for name, _, size in CASES:
        if name in results:
            lines.append(f"{name:36} {size or '':>6} {results[name]:9.3f}")
    ours = results.get("hpbx INVITE parse + 5 fields")
    theirs = results.get("sippy INVITE parse + 5 fields")
    if ours and theirs:
        lines.append(f"ratio sippy/hpbx for the INVITE: {theirs / ours:.1f}x "
                     f"(target: hpbx < 1 µs, ratio >= 30x)")
    return "\n".join(lines)


@pytest.mark.parametrize("name,fn,size", CASES, ids=[c[0] for c in CASES])
def test_bench(benchmark, name, fn, size):
    if fn is sippy_invite and SipRequest is None:
        pytest.skip("sippy is not installed (pip install '.[bench]')")
    _check_same_answers()
    benchmark.group = "sipmsg"
    benchmark(fn)
    _results[name] = benchmark.stats.stats.median * 1e6


def test_print_table():
    if not _results:
        pytest.skip("no figures (benchmarks disabled?)")
    print(table(_results))


def main() -> int:
    _check_same_answers()
    results = {}
    for name, fn, _ in CASES:
        if fn is sippy_invite and SipRequest is None:
            continue
        number = 200 if fn is sippy_invite else 20000
        runs = timeit.repeat(fn, number=number, repeat=7)
        runs.sort()
        results[name] = runs[len(runs) // 2] / number * 1e6
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
