"""Stream framing for TCP/TLS: whole messages by Content-Length, keep-alives, limits."""
import pytest

from hpbx._fast import sipmsg
from hpbx.errors import SipParseError


def msg(n, body=b""):
    head = (f"OPTIONS sip:b@example.com SIP/2.0\r\nVia: SIP/2.0/TCP 10.0.0.1;branch=z9hG4bK{n}\r\n"
            f"From: <sip:a@x>;tag=1\r\nTo: <sip:b@x>\r\nCall-ID: c{n}\r\nCSeq: {n} OPTIONS\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


def test_whole_messages_in_one_feed():
    f = sipmsg.Framer()
    data = msg(1) + msg(2, b"body\r\n\r\nwith blank line") + msg(3)
    out = f.feed(data)
    assert out == [msg(1), msg(2, b"body\r\n\r\nwith blank line"), msg(3)]
    assert f.buffered == 0
    assert [sipmsg.parse(m, datagram=False).call_id for m in out] == ["c1", "c2", "c3"]


def test_byte_by_byte_feed():
    f = sipmsg.Framer()
    data = msg(1, b"0123456789\r\n\r\n") + b"\r\n\r\n" + msg(2)
    out = []
    for i in range(len(data)):
        out.extend(f.feed(data[i:i + 1]))
    # the ping split over four one-octet feeds is seen as two pongs: each CRLF is reported as
    # soon as it arrives so that a pong is never held back
    assert out == [msg(1, b"0123456789\r\n\r\n"), b"\r\n", b"\r\n", msg(2)]
    assert f.buffered == 0


def test_body_containing_header_end_is_not_reframed():
    body = b"\r\n\r\nINVITE sip:x SIP/2.0\r\n\r\n"
    f = sipmsg.Framer()
    assert f.feed(msg(1, body)[:-5]) == []
    assert f.buffered == len(msg(1, body)) - 5
    assert f.feed(msg(1, body)[-5:]) == [msg(1, body)]


def test_keepalive_ping_and_pong():
    f = sipmsg.Framer()
    assert f.feed(b"\r\n\r\n") == [sipmsg.KEEPALIVE_PING]
    assert f.feed(b"\r\n") == [sipmsg.KEEPALIVE_PONG]
    assert f.feed(b"\r\n\r\n" + msg(5) + b"\r\n\r\n") == [sipmsg.KEEPALIVE_PING, msg(5), sipmsg.KEEPALIVE_PING]
    assert f.feed(b"\r") == [] and f.buffered == 1
    assert f.feed(b"\n") == [sipmsg.KEEPALIVE_PONG]


def test_compact_content_length():
    data = msg(1, b"abc").replace(b"Content-Length: 3", b"l :  3")
    assert sipmsg.Framer().feed(data + msg(2)) == [data, msg(2)]


@pytest.mark.parametrize("data,reason,status", [
    (msg(1).replace(b"Content-Length: 0\r\n", b""), "missing Content-Length on a stream transport", 400),
    (msg(1).replace(b"Content-Length: 0", b"Content-Length: -5"), "invalid Content-Length header", 400),
    (msg(1).replace(b"Content-Length: 0", b"Content-Length: 0\r\nl: 4"), "invalid Content-Length header", 400),
    (msg(1).replace(b"Content-Length: 0", b"Content-Length: 99999999"), "message too large", 413),
])
def test_framing_errors(data, reason, status):
    with pytest.raises(SipParseError) as ei:
        sipmsg.Framer().feed(data)
    assert (ei.value.reason, ei.value.status) == (reason, status)


def test_endless_header_section_is_refused():
    f = sipmsg.Framer(max_message=4096)
    f.feed(b"INVITE sip:x SIP/2.0\r\n")
    with pytest.raises(SipParseError) as ei:
        for _ in range(1000):
            f.feed(b"X-Pad: " + b"a" * 100 + b"\r\n")
    assert ei.value.status == 413 and f.buffered <= 4096 + 200


def test_conflicting_duplicate_content_length_equal_values_pass():
    data = msg(1).replace(b"Content-Length: 0", b"Content-Length: 0\r\nl: 0")
    assert sipmsg.Framer().feed(data) == [data]
