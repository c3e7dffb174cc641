"""The compiled SIP message core: parse, lazy headers, URIs, Via, Contact, errors, serialize."""
import pytest

from hpbx._fast import sipmsg
from hpbx.errors import SipParseError

SDP = (b"v=0\r\no=alice 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n"
       b"m=audio 49170 RTP/AVP 0\r\n")


def req(method="INVITE", ruri="sip:bob@example.com", extra=(), body=b"", cl=True,
        cseq_method=None, via="SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKabc;rport"):
    lines = [f"{method} {ruri} SIP/2.0",
             f"Via: {via}",
             "Max-Forwards: 70",
             'From: "Alice" <sip:alice@example.com>;tag=ft1',
             "To: <sip:bob@example.com>",
             "Call-ID: cid-1@192.0.2.10",
             f"CSeq: 7 {cseq_method or method}",
             *extra]
    if cl:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def raises(data, reason, status=400, datagram=True):
    with pytest.raises(SipParseError) as ei:
        sipmsg.parse(data, datagram)
    assert ei.value.reason == reason
    assert ei.value.status == status


# ---------------------------------------------------------------- start line and eager fields
def test_request_eager_fields():
    m = sipmsg.parse(req(body=SDP, extra=["Content-Type: application/sdp"]))
    assert m.is_request and m.method == "INVITE" and m.ruri == "sip:bob@example.com"
    assert m.status == 0 and m.reason == ""
    assert m.call_id == "cid-1@192.0.2.10"
    assert (m.cseq, m.cseq_method) == (7, "INVITE")
    assert (m.from_tag, m.to_tag) == ("ft1", None)
    assert m.max_forwards == 70
    assert m.content_length == len(SDP) and m.body == SDP
    assert (m.via_transport, m.via_host, m.via_port) == ("UDP", "192.0.2.10", 5060)
    assert m.via_branch == "z9hG4bKabc" and m.via_received is None and m.via_rport == 0


def test_response_status_line_and_reason():
    data = (b"SIP/2.0 486 Busy Here\r\nVia: SIP/2.0/TCP h.example.com;branch=z9hG4bK1;received=192.0.2.7;rport=5070\r\n"
            b"From: <sip:a@x>;tag=1\r\nTo: <sip:b@x>;tag=2\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n")
    m = sipmsg.parse(data)
    assert not m.is_request and m.status == 486 and m.reason == "Busy Here" and m.method == ""
    assert m.ruri == "" and m.request_uri is None
    assert (m.via_transport, m.via_port, m.via_received, m.via_rport) == ("TCP", 0, "192.0.2.7", 5070)
    assert m.to_tag == "2" and m.max_forwards == -1


def test_unicode_reason_phrase():
    data = ("SIP/2.0 200 Хорошо\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@x>;tag=1\r\n"
            "To: <sip:b@x>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n").encode()
    assert sipmsg.parse(data).reason == "Хорошо"


def test_compact_forms_and_case_insensitive_names():
    data = (b"OPTIONS sip:x@example.com SIP/2.0\r\nv: SIP/2.0/UDP h:5062;branch=z9hG4bK2\r\n"
            b"f: <sip:a@x>;tag=9\r\nT: sip:b@x\r\ni: compact-cid\r\ncSeQ: 3 OPTIONS\r\n"
            b"m: <sip:a@192.0.2.1>\r\nc: application/sdp\r\ns: hello\r\nk: timer\r\no: presence\r\n"
            b"u: dialog\r\nx: 1800\r\ne: gzip\r\nr: <sip:c@x>\r\nb: <sip:d@x>\r\ny: abc\r\nl: 0\r\n\r\n")
    m = sipmsg.parse(data)
    assert m.call_id == "compact-cid" and m.via_port == 5062 and m.from_tag == "9"
    assert m.header("Contact") == "<sip:a@192.0.2.1>"
    assert m.header("content-type") == "application/sdp" and m.content_type == "application/sdp"
    assert m.header("Subject") == "hello" and m.header("SUPPORTED") == "timer"
    assert m.header("Event") == "presence" and m.header("Allow-Events") == "dialog"
    assert m.header("Session-Expires") == "1800" and m.header("Content-Encoding") == "gzip"
    assert m.header("Refer-To") == "<sip:c@x>" and m.header("Referred-By") == "<sip:d@x>"
    assert m.header("Identity") == "abc" and m.content_length == 0
    names = [n for n, _ in m.headers()]
    assert names[:6] == ["Via", "From", "To", "Call-ID", "CSeq", "Contact"]


@pytest.mark.parametrize("name,canon", [
    ("v", "Via"), ("call-id", "Call-ID"), ("CSEQ", "CSeq"), ("www-authenticate", "WWW-Authenticate"),
    ("l", "Content-Length"), ("X-Custom", "X-Custom"), ("max-forwards", "Max-Forwards"),
])
def test_canonical_name(name, canon):
    assert sipmsg.canonical_name(name) == canon


def test_folded_lines_unfold_to_single_space():
    data = req(extra=["Subject: first\r\n  second\r\n\tthird", "X-Fold:\r\n value"])
    m = sipmsg.parse(data)
    assert m.header("Subject") == "first second third"
    assert m.header("x-fold") == "value"


def test_folded_cseq_and_via_are_read_eagerly():
    data = (b"INVITE sip:b@x SIP/2.0\r\nVia  : SIP  /  2.0\r\n /UDP\r\n   h.example.com;branch=z9hG4bKq\r\n"
            b"From: <sip:a@x>\r\n  ;tag=ab\r\nTo: <sip:b@x>\r\nCall-ID: c\r\ncseq: 0009\r\n  INVITE\r\n"
            b"MaX-fOrWaRdS: 0068\r\nContent-Length: 0\r\n\r\n")
    m = sipmsg.parse(data)
    assert (m.cseq, m.cseq_method, m.max_forwards) == (9, "INVITE", 68)
    assert (m.via_host, m.via_branch, m.from_tag) == ("h.example.com", "z9hG4bKq", "ab")


def test_multi_value_headers_split_outside_quotes_and_angles():
    data = req(extra=['Route: <sip:p1@x;lr>, <sip:p2@x;lr>', 'Route: "a,b" <sip:p3@x>',
                      "Require: 100rel, timer", "Supported: replaces",
                      "Authorization: Digest username=\"a\", realm=\"r\", nonce=\"n\"",
                      "X-List: a, b"])
    m = sipmsg.parse(data)
    assert m.header_values("Route") == ["<sip:p1@x;lr>", "<sip:p2@x;lr>", '"a,b" <sip:p3@x>']
    assert m.header_fields("route") == ["<sip:p1@x;lr>, <sip:p2@x;lr>", '"a,b" <sip:p3@x>']
    assert m.require == ["100rel", "timer"] and m.proxy_require == []
    # credentials and unknown headers are never split
    assert len(m.header_values("Authorization")) == 1
    assert m.header_values("X-List") == ["a, b"]
    assert m.has_header("x-list") and not m.has_header("X-Absent") and m.header("X-Absent") is None


def test_many_headers_grow_the_index():
    extra = [f"X-H{i}: v{i}" for i in range(100)]
    m = sipmsg.parse(req(extra=extra))
    assert m.header_count == 107
    assert m.header("X-H99") == "v99" and m.header("x-h0") == "v0"


def test_body_by_content_length_and_trailing_datagram_octets_ignored():
    data = req(body=SDP) + b"JUNK AFTER"
    m = sipmsg.parse(data)
    assert m.body == SDP
    assert m.raw == data[:-10] and m.to_bytes() == data[:-10]


def test_missing_content_length_datagram_takes_rest():
    data = req(cl=False) + b"abc"
    m = sipmsg.parse(data)
    assert m.content_length == -1 and m.body == b"abc"


def test_round_trip_is_byte_exact():
    data = req(body=SDP, extra=["X-Weird:   spaced   ", "Subject: a\r\n b"])
    m = sipmsg.parse(data)
    assert m.to_bytes() is data or m.to_bytes() == data


def test_leading_crlf_before_start_line_is_skipped():
    data = req()
    m = sipmsg.parse(b"\r\n\r\n" + data)
    assert m.method == "INVITE" and m.raw == data


def test_binary_body_with_nul_is_kept():
    body = b"\x00\x01\r\n\x00binary\n"
    m = sipmsg.parse(req(body=body, method="MESSAGE"))
    assert m.body == body


def test_bare_cr_in_a_header_value_is_refused_when_read():
    m = sipmsg.parse(req(extra=["X-Bad: a\rb", "X-Good: ok"]))
    assert m.header("X-Good") == "ok"
    with pytest.raises(SipParseError) as ei:
        m.header("X-Bad")
    assert (ei.value.reason, ei.value.status) == ("bare CR in a header value", 400)
    raises(req(extra=["X-Bad: a\nb"]), "line not terminated by CRLF")
    raises(req().replace(b"Call-ID: cid-1", b"Call-ID: ci\rd-1"),
           "invalid Call-ID header: whitespace or control character")


def test_raw_nul_inside_quoted_display_name():
    data = req().replace(b'"Alice"', b'"A\\\x00\x07lice"')
    m = sipmsg.parse(data)
    assert m.from_addr.display == "A\x00\x07lice"


# ---------------------------------------------------------------- errors with exact messages
@pytest.mark.parametrize("data,reason,status", [
    (b"", "empty message", 400),
    (b"\r\n\r\n", "empty message", 400),
    (b"INVITE sip:b@x SIP/2.0", "start line not terminated by CRLF", 400),
    (b"INVITE sip:b@x SIP/2.0\nVia: x\n\n", "line not terminated by CRLF", 400),
    (b"INVITE sip:b@x SIP/3.0\r\n\r\n", "unsupported SIP version", 505),
    (b"SIP/3.0 200 OK\r\n\r\n", "unsupported SIP version", 505),
    (b"INVITE sip:b@x\r\n\r\n", "malformed request line", 400),
    (b"INVITE  sip:b@x SIP/2.0\r\n\r\n", "malformed request line", 400),
    (b"INVITE sip:b@x SIP/2.0 \r\n\r\n", "malformed request line", 400),
    (b"INV(ITE sip:b@x SIP/2.0\r\n\r\n", "invalid method", 400),
    (b"INVITE <sip:b@x> SIP/2.0\r\n\r\n", "invalid Request-URI: missing or invalid URI scheme", 400),
    (b"INVITE sip:2001:db8::1 SIP/2.0\r\n\r\n", "invalid Request-URI: invalid host", 400),
    (b"INVITE sip:b@x?Route=%3Csip:y%3E SIP/2.0\r\n\r\n", "invalid Request-URI: headers are not allowed", 400),
    (b"INVITE sip:b@ SIP/2.0\r\n\r\n", "invalid Request-URI: invalid host", 400),
    (b"INVITE sip:b@[::1 SIP/2.0\r\n\r\n", "invalid Request-URI: invalid IPv6 reference", 400),
    (b"INVITE b@x SIP/2.0\r\n\r\n", "invalid Request-URI: missing or invalid URI scheme", 400),
    (b"SIP/2.0 2000 OK\r\n\r\n", "invalid status code", 400),
    (b"SIP/2.0 099 Low\r\n\r\n", "invalid status code", 400),
    (b"SIP/2.0 200 OK\r\n", "header section not terminated by an empty line", 400),
    (b"SIP/2.0 200 OK\r\n folded\r\n\r\n", "continuation line without a header", 400),
    (b"SIP/2.0 200 OK\r\nNoColon\r\n\r\n", "header line without colon", 400),
    (b"SIP/2.0 200 OK\r\n: empty\r\n\r\n", "invalid header name", 400),
])
def test_start_line_and_framing_errors(data, reason, status):
    raises(data, reason, status)


def test_message_too_large():
    raises(req(body=b"x" * 70000), "message too large", 413)


@pytest.mark.parametrize("mutate,reason", [
    (lambda d: d.replace(b"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKabc;rport\r\n", b""),
     "missing Via header"),
    (lambda d: d.replace(b"To: <sip:bob@example.com>\r\n", b""), "missing To header"),
    (lambda d: d.replace(b"Call-ID: cid-1@192.0.2.10\r\n", b""), "missing Call-ID header"),
    (lambda d: d.replace(b"CSeq: 7 INVITE\r\n", b""), "missing CSeq header"),
    (lambda d: d.replace(b"CSeq: 7 INVITE", b"CSeq: 7 BYE"), "CSeq method does not match the request method"),
    (lambda d: d.replace(b"CSeq: 7", b"CSeq: 2147483648"), "invalid CSeq header: bad sequence number"),
    (lambda d: d.replace(b"CSeq: 7", b"CSeq: -7"), "invalid CSeq header: bad sequence number"),
    (lambda d: d.replace(b"CSeq: 7 INVITE", b"CSeq: 7"), "invalid CSeq header: missing method"),
    (lambda d: d.replace(b"Max-Forwards: 70", b"Max-Forwards: 256"), "invalid Max-Forwards header"),
    (lambda d: d.replace(b"Content-Length: 0", b"Content-Length: -1"), "invalid Content-Length header"),
    (lambda d: d.replace(b"Content-Length: 0", b"Content-Length: 5"), "Content-Length larger than the message"),
    (lambda d: d.replace(b"Content-Length: 0", b"Content-Length: 0\r\nl: 0"), "duplicate Content-Length header"),
    (lambda d: d.replace(b"Call-ID: cid-1@192.0.2.10", b"Call-ID: a b"),
     "invalid Call-ID header: whitespace or control character"),
    (lambda d: d.replace(b"Call-ID: cid-1@192.0.2.10", b"Call-ID: a\r\ni: b"), "duplicate Call-ID header"),
    (lambda d: d.replace(b"To: <sip:bob@example.com>", b"To: <sip:bob@example.com>\r\nt: <sip:c@x>"),
     "duplicate To header"),
    (lambda d: d.replace(b'"Alice"', b'"Alice'), "invalid From header: unterminated quoted string"),
    (lambda d: d.replace(b"To: <sip:bob@example.com>", b"To: <sip:bob@example.com"),
     "invalid To header: unterminated <URI>"),
    (lambda d: d.replace(b'"Alice" <', b'Bell, Alexander <'), "invalid From header: invalid character in display name"),
    (lambda d: d.replace(b";tag=ft1", b";;tag=ft1"), "invalid From header: invalid header parameter"),
    (lambda d: d.replace(b"SIP/2.0/UDP", b"SIP/3.0/UDP"), "invalid Via header: unsupported SIP version"),
    (lambda d: d.replace(b"SIP/2.0/UDP", b"HTTP/2.0/UDP"), "invalid Via header: malformed sent-protocol"),
    (lambda d: d.replace(b"192.0.2.10:5060;", b"192.0.2.10:65536;"), "invalid Via header: invalid sent-by port"),
    (lambda d: d.replace(b"192.0.2.10:5060;", b"192.0.2.10:0;"), "invalid Via header: invalid sent-by port"),
    (lambda d: d.replace(b"192.0.2.10:5060;", b"%%%;"), "invalid Via header: invalid sent-by host"),
    (lambda d: d.replace(b"192.0.2.10:5060;", b"10.10.10.256;"), "invalid Via header: invalid sent-by host"),
    (lambda d: d.replace(b"192.0.2.10:5060;", b"a..b;"), "invalid Via header: invalid sent-by host"),
    (lambda d: d.replace(b"192.0.2.10:5060;", b"-a.b;"), "invalid Via header: invalid sent-by host"),
    (lambda d: d.replace(b"branch=z9hG4bKabc", b"branch="), "invalid Via header: invalid header parameter"),
])
def test_header_errors(mutate, reason):
    raises(mutate(req()), reason)


def test_stream_parse_requires_content_length():
    raises(req(cl=False), "missing Content-Length on a stream transport", datagram=False)
    assert sipmsg.parse(req(), datagram=False).content_length == 0


def test_error_is_pickleable_with_status():
    import pickle
    e = pickle.loads(pickle.dumps(SipParseError("x", 413)))
    assert (e.reason, e.status) == ("x", 413)


# ---------------------------------------------------------------- URIs
def test_sip_uri_parts():
    u = sipmsg.parse_uri("sips:alice:secret@Example.COM:5061;transport=tls;lr;Maddr=10.0.0.1?subject=hi&x=y")
    assert (u.scheme, u.user, u.password, u.host, u.port) == ("sips", "alice", "secret", "Example.COM", 5061)
    assert u.params == {"transport": "tls", "lr": None, "maddr": "10.0.0.1"}
    assert u.headers == {"subject": "hi", "x": "y"}
    assert u.hostport == "Example.COM:5061" and u.aor == "sips:alice@example.com"
    assert str(u) == "sips:alice:secret@Example.COM:5061;transport=tls;lr;maddr=10.0.0.1?subject=hi&x=y"


def test_ipv6_reference_and_escapes():
    u = sipmsg.parse_uri("sip:%61lice@[2001:db8::10]:5070;user=phone")
    assert (u.user, u.host, u.port) == ("%61lice", "2001:db8::10", 5070)
    assert sipmsg.unescape(u.user) == "alice"
    assert u.hostport == "[2001:db8::10]:5070" and str(u).startswith("sip:%61lice@[2001:db8::10]:5070")
    assert sipmsg.parse_uri("sip:[2001:db8::10:5070]").port == 0
    # escapes are decoded exactly once
    assert sipmsg.unescape("v%61lue%25%34%31") == "value%41"
    assert sipmsg.unescape("%zz%4") == "%zz%4"


def test_user_part_with_semicolon_and_question_mark():
    u = sipmsg.parse_uri("sip:user;par=u%40example.net@example.com")
    assert (u.user, u.host, u.params) == ("user;par=u%40example.net", "example.com", {})
    u = sipmsg.parse_uri("sip:odd?user@example.com")
    assert (u.user, u.host, u.headers) == ("odd?user", "example.com", {})
    u = sipmsg.parse_uri("sip:example.com?h=a@b")
    assert (u.user, u.host, u.headers) == (None, "example.com", {"h": "a@b"})


@pytest.mark.parametrize("host", ["example.com", "example.com.", "a-b.c_d.example", "192.0.2.1", "h1", "0.0.0.0"])
def test_valid_hosts(host):
    assert sipmsg.parse_uri(f"sip:u@{host}").host == host
    assert sipmsg.parse_via(f"SIP/2.0/UDP {host}").host == host


def test_tel_and_other_schemes():
    t = sipmsg.parse_uri("tel:+1-201-555-0123;phone-context=example.com")
    assert t.scheme == "tel" and t.opaque == "+1-201-555-0123;phone-context=example.com"
    assert t.aor == "tel:+1-201-555-0123" and str(t) == "tel:+1-201-555-0123;phone-context=example.com"
    o = sipmsg.parse_uri("nobodyKnowsThisScheme:totallyopaquecontent")
    assert o.scheme == "nobodyknowsthisscheme" and o.opaque == "totallyopaquecontent" and o.host == ""
    with pytest.raises(SipParseError) as ei:
        sipmsg.parse_uri("soap.beep://192.0.2.103:3002", request=True)
    assert ei.value.status == 416 and ei.value.reason == "unsupported URI scheme: soap.beep"
    assert sipmsg.parse_uri("tel:123", request=True).scheme == "tel"


@pytest.mark.parametrize("text,reason", [
    ("", "invalid URI: empty value"),
    ("sip:", "invalid URI: empty value"),
    ("sip:a b@x", "invalid URI: invalid user part"),
    ("sip:a@b c", "invalid URI: invalid host"),
    ("tel:12 34", "invalid URI: invalid character in URI"),
    ("urn:x<y", "invalid URI: invalid character in URI"),
    ("sip:@x", "invalid URI: invalid user part"),
    ("sip:x:99999", "invalid URI: invalid port"),
    ("sip:x;;lr", "invalid URI: invalid URI parameter"),
    ("sip:x?", "invalid URI: invalid URI headers"),
    ("sip:[zz::1]", "invalid URI: invalid IPv6 reference"),
    ("sip:[1.2.3.4]", "invalid URI: invalid IPv6 reference"),
    ("1sip:x", "invalid URI: missing or invalid URI scheme"),
    ("sip:1.2.3", "invalid URI: invalid host"),
    ("sip:a@1.2.3.4.5", "invalid URI: invalid host"),
    ("sip:a@host-.example.com", "invalid URI: invalid host"),
])
def test_uri_errors(text, reason):
    with pytest.raises(SipParseError) as ei:
        sipmsg.parse_uri(text)
    assert (ei.value.reason, ei.value.status) == (reason, 400)


def test_request_uri_property():
    m = sipmsg.parse(req(ruri="sip:bob@[2001:db8::1]:5080;transport=tcp"))
    u = m.request_uri
    assert (u.user, u.host, u.port, u.params) == ("bob", "2001:db8::1", 5080, {"transport": "tcp"})
    assert m.request_uri is u  # cached


# ---------------------------------------------------------------- name-addr, From/To, Contact
def test_name_addr_forms():
    na = sipmsg.parse_name_addr('"J Rosenberg \\\\\\"" <sip:jdrosen@example.com> ; tag = 98asjd8')
    assert na.display == 'J Rosenberg \\"' and na.tag == "98asjd8" and na.uri.user == "jdrosen"
    na = sipmsg.parse_name_addr("sip:+19725552222@gw1.example.net;unknownparam")
    assert na.display is None and na.params == {"unknownparam": None}
    assert na.uri.params == {} and na.uri.user == "+19725552222"
    na = sipmsg.parse_name_addr("<sip:+19725552222@gw1.example.net;unknownparam>")
    assert na.params == {} and na.uri.params == {"unknownparam": None}
    na = sipmsg.parse_name_addr("caller<sip:caller@example.com>;tag=323")
    assert na.display == "caller" and na.tag == "323"
    na = sipmsg.parse_name_addr("Bob  Smith <sip:bob@x>")
    assert na.display == "Bob Smith"
    assert str(sipmsg.parse_name_addr('"A \\"q\\"" <sip:a@x>;tag=1')) == '"A \\"q\\"" <sip:a@x>;tag=1'


@pytest.mark.parametrize("text,reason", [
    ('"unterminated <sip:a@x>', "invalid name-addr: unterminated quoted string"),
    ('"quoted" sip:a@x', "invalid name-addr: display name without <URI>"),
    ("sip:a@x?Route=%3Csip:b%3E", "invalid name-addr: URI with headers must be enclosed in <>"),
    ("<sip:a@x> junk", "invalid name-addr: unexpected text after URI"),
    ("<sip:a@x>;tag=", "invalid name-addr: invalid header parameter"),
    ("   ", "invalid name-addr: empty value"),
])
def test_name_addr_errors(text, reason):
    with pytest.raises(SipParseError) as ei:
        sipmsg.parse_name_addr(text)
    assert ei.value.reason == reason


def test_from_to_addr_properties():
    m = sipmsg.parse(req())
    assert m.from_addr.display == "Alice" and m.from_addr.uri.aor == "sip:alice@example.com"
    assert m.from_addr.tag == "ft1" and m.to_addr.tag is None
    assert m.from_addr is m.from_addr


def test_contact_lists_star_expires_q():
    cs = sipmsg.parse_contacts('"Mr. X" <sip:x@192.0.2.1;transport=tcp>;q=0.7;expires=3600, '
                               '<sip:y@192.0.2.2>;expires=abc, sip:z@192.0.2.3;q=2')
    assert [c.uri.user for c in cs] == ["x", "y", "z"]
    assert [c.expires for c in cs] == [3600, None, None]
    assert [c.q for c in cs] == [0.7, None, None]
    assert cs[0].display == "Mr. X" and not cs[0].star
    star = sipmsg.parse_contacts(" * ")
    assert len(star) == 1 and star[0].star and str(star[0]) == "*"
    with pytest.raises(SipParseError) as ei:
        sipmsg.parse_contacts("*, <sip:a@x>")
    assert ei.value.reason == "invalid Contact header: '*' mixed with addresses"


def test_message_contacts_across_lines():
    m = sipmsg.parse(req(method="REGISTER", extra=["Contact: <sip:a@192.0.2.1>;expires=60",
                                                    "m: <sip:b@192.0.2.2>, <sip:c@192.0.2.3>;q=0.1"]))
    cs = m.contacts
    assert [c.uri.user for c in cs] == ["a", "b", "c"] and cs[0].expires == 60 and cs[2].q == 0.1
    m = sipmsg.parse(req(method="REGISTER", extra=["Contact: sip:u@x?Route=%3Csip:y%3E"]))
    with pytest.raises(SipParseError) as ei:
        m.contacts
    assert ei.value.reason == "invalid Contact header: URI with headers must be enclosed in <>"


# ---------------------------------------------------------------- Via
def test_via_list_and_params():
    m = sipmsg.parse(req(extra=["v: SIP/2.0/TCP [2001:db8::9:1]:6050;branch=z9hG4bK2;received=[2001:db8::9:255], "
                                "SIP / 2.0 / tls host.example.com ; branch = z9hG4bK3 ; maddr=224.2.0.1"]))
    vs = m.vias
    assert [v.transport for v in vs] == ["UDP", "TCP", "TLS"]
    assert vs[1].host == "2001:db8::9:1" and vs[1].port == 6050 and vs[1].received == "2001:db8::9:255"
    assert vs[1].sent_by == "[2001:db8::9:1]:6050"
    assert vs[2].branch == "z9hG4bK3" and vs[2].params["maddr"] == "224.2.0.1" and vs[2].rport == -1
    assert vs[0].rport == 0 and str(vs[0]) == "SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKabc;rport"


def test_parse_via_function():
    v = sipmsg.parse_via("SIP/2.0/UDP 10.0.0.1;rport=5070;received=192.0.2.1;branch=z9hG4bKx")
    assert (v.host, v.port, v.rport, v.received, v.branch) == ("10.0.0.1", 0, 5070, "192.0.2.1", "z9hG4bKx")
    with pytest.raises(SipParseError) as ei:
        sipmsg.parse_via("SIP/2.0/UDP 10.0.0.1;;")
    assert ei.value.reason == "invalid Via header: invalid header parameter"


# ---------------------------------------------------------------- serialize
def test_build_request_sets_content_length():
    data = sipmsg.build_request("OPTIONS", "sip:b@example.com", [
        ("Via", f"SIP/2.0/UDP 10.0.0.1:5060;branch={sipmsg.new_branch()}"),
        ("From", "<sip:a@example.com>;tag=1"), ("To", "<sip:b@example.com>"),
        ("Call-ID", "x"), ("CSeq", "1 OPTIONS"), ("Content-Length", "999"), ("l", "5"),
    ], b"hello")
    assert data.count(b"Content-Length") == 1 and b"\r\nl:" not in data
    m = sipmsg.parse(data, datagram=False)
    assert m.body == b"hello" and m.content_length == 5 and m.method == "OPTIONS"
    assert m.via_branch.startswith(sipmsg.MAGIC_COOKIE)
    with pytest.raises(ValueError):
        sipmsg.build_request("OPTIONS", "sip:b@x", [("X", "a\r\nInjected: 1")])


def test_build_response_copies_transaction_headers():
    r = sipmsg.parse(req(extra=["v: SIP/2.0/UDP proxy.example.com;branch=z9hG4bKp"]))
    top = sipmsg.set_via_received(r.header_values("Via")[0], "203.0.113.5", 40000)
    data = sipmsg.build_response(r, 180, to_tag="tt9", headers=[("Contact", "<sip:b@10.0.0.2>")],
                                 top_via=top)
    m = sipmsg.parse(data)
    assert (m.status, m.reason) == (180, "Ringing")
    assert [v.received for v in m.vias] == ["203.0.113.5", None]
    assert m.via_rport == 40000 and m.vias[1].host == "proxy.example.com"
    assert (m.call_id, m.cseq, m.cseq_method) == (r.call_id, 7, "INVITE")
    assert (m.from_tag, m.to_tag) == ("ft1", "tt9") and m.header("Contact") == "<sip:b@10.0.0.2>"
    assert m.content_length == 0
    # a To that already has a tag keeps it
    r2 = sipmsg.parse(data.replace(b"SIP/2.0 180 Ringing", b"BYE sip:b@x SIP/2.0").replace(
        b"CSeq: 7 INVITE", b"CSeq: 7 BYE"))
    again = sipmsg.parse(sipmsg.build_response(r2, 200, "Fine", to_tag="other"))
    assert again.to_tag == "tt9" and again.reason == "Fine"


def test_set_via_received_rport_rules():
    assert sipmsg.set_via_received("SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1", "192.0.2.1", 5099) == \
        "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1;received=192.0.2.1"
    assert sipmsg.set_via_received("SIP/2.0/UDP 10.0.0.1;rport;branch=z9hG4bK1;received=1.1.1.1",
                                   "192.0.2.1", 5099) == \
        "SIP/2.0/UDP 10.0.0.1;rport=5099;branch=z9hG4bK1;received=192.0.2.1"
    assert sipmsg.set_via_received("SIP/2.0/TCP [::1];branch=z9hG4bK1", "[2001:db8::1]", 1) == \
        "SIP/2.0/TCP [::1];branch=z9hG4bK1;received=2001:db8::1"


def test_random_identifiers():
    branches = {sipmsg.new_branch() for _ in range(200)}
    assert len(branches) == 200 and all(b.startswith("z9hG4bK") and len(b) > 16 for b in branches)
    assert len({sipmsg.new_tag() for _ in range(200)}) == 200
    assert sipmsg.new_call_id("pbx.example.com").endswith("@pbx.example.com")
    assert "@" not in sipmsg.new_call_id()
    assert sipmsg.KEEPALIVE_PING == b"\r\n\r\n" and sipmsg.KEEPALIVE_PONG == b"\r\n"


def test_message_cannot_be_built_directly():
    with pytest.raises(TypeError):
        sipmsg.SipMessage()
