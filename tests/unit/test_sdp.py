"""SDP parse and rewrite for media anchoring."""
import pytest

from hpbx._fast import sdp
from hpbx.errors import SdpError

OFFER = (
    "v=0\r\n"
    "o=alice 2890844526 2890844527 IN IP4 192.168.1.20\r\n"
    "s=Talk \u00e9\r\n"
    "c=IN IP4 192.168.1.20\r\n"
    "t=0 0\r\n"
    "a=ice-ufrag:F7gI\r\n"
    "a=ice-pwd:x9cml/YzichV2+XlhiMu8g\r\n"
    "m=audio 49170 RTP/AVP 0 8 101\r\n"
    "a=rtpmap:0 PCMU/8000\r\n"
    "a=rtpmap:8 PCMA/8000\r\n"
    "a=rtpmap:101 telephone-event/8000\r\n"
    "a=fmtp:101 0-16\r\n"
    "a=rtcp:49175 IN IP4 192.168.1.20\r\n"
    "a=candidate:1 1 UDP 2130706431 192.168.1.20 49170 typ host\r\n"
    "a=candidate:2 1 UDP 1694498815 203.0.113.7 40000 typ srflx raddr 192.168.1.20 rport 49170\r\n"
    "a=sendonly\r\n"
    "m=video 0 RTP/AVP 31\r\n"
    "m=video 51372 RTP/AVPF 96\r\n"
    "c=IN IP6 2001:db8::20\r\n"
    "a=rtpmap:96 H264/90000\r\n"
    "a=rtcp-mux\r\n"
).encode()


def test_parse_sections():
    s = sdp.parse(OFFER)
    assert (s.origin_user, s.session_id, s.session_version) == ("alice", "2890844526", "2890844527")
    assert s.session_name == "Talk \u00e9" and s.connection == "192.168.1.20" and s.addrtype == "IP4"
    assert len(s.media) == 3
    a, dead, v = s.media
    assert (a.kind, a.port, a.proto, a.payload_types) == ("audio", 49170, "RTP/AVP", [0, 8, 101])
    assert a.connection == "192.168.1.20" and a.rtcp_port == 49175 and a.rtcp_address == "192.168.1.20"
    assert a.direction == "sendonly" and not a.rtcp_mux
    assert a.rtpmap == {0: "PCMU/8000", 8: "PCMA/8000", 101: "telephone-event/8000"}
    assert a.fmtp == {101: "0-16"} and a.clock_rate == 8000
    assert len(a.candidates) == 2 and a.ice_ufrag == "F7gI" and a.ice_pwd.startswith("x9cml")
    assert dead.port == 0 and dead.rtcp_port == 0
    assert (v.connection, v.addrtype, v.rtcp_mux, v.rtcp_port) == ("2001:db8::20", "IP6", True, 51372)
    assert v.direction == "sendrecv" and v.clock_rate == 90000


def test_rewrite_anchors_every_address_and_port():
    out = sdp.rewrite(OFFER, "203.0.113.1", [(30000, 30001), (30002, 30003), (30004, 30004)])
    s = sdp.parse(out)
    assert s.connection == "203.0.113.1" and s.origin_address == "203.0.113.1"
    a, dead, v = s.media
    assert (a.port, a.rtcp_port, a.connection) == (30000, 30001, "203.0.113.1")
    assert a.rtcp_address == "203.0.113.1"
    assert dead.port == 0  # a rejected stream stays rejected
    assert (v.port, v.connection, v.addrtype, v.rtcp_mux) == (30004, "203.0.113.1", "IP4", True)
    assert b"candidate" not in out and b"ice-" not in out
    assert a.direction == "sendonly"  # kept when no direction is given
    assert a.rtpmap == sdp.parse(OFFER).media[0].rtpmap
    assert out.endswith(b"\r\n") and b"\n" not in out.replace(b"\r\n", b"")
    # the session name's UTF-8 octets are untouched
    assert "s=Talk \u00e9\r\n".encode() in out


def test_rewrite_direction_and_keep_ice_and_rtcp_added():
    body = b"v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\na=sendrecv\r\n" \
           b"m=audio 4000 RTP/AVP 0\r\na=candidate:1 1 UDP 1 10.0.0.1 4000 typ host\r\na=recvonly\r\n"
    out = sdp.rewrite(body, "2001:db8::1", [(5000, 5003)], drop_ice=False, direction="inactive")
    s = sdp.parse(out)
    m = s.media[0]
    assert m.direction == "inactive" and s.direction == "sendrecv" and out.count(b"a=inactive") == 1
    assert b"a=recvonly" not in out and b"a=sendrecv" not in out
    assert m.candidates and m.addrtype == "IP6" and m.connection == "2001:db8::1"
    assert m.rtcp_port == 5003 and b"a=rtcp:5003\r\n" in out


def test_lf_only_body_is_accepted():
    body = b"v=0\no=- 1 1 IN IP4 10.0.0.1\ns=-\nc=IN IP4 10.0.0.1\nt=0 0\nm=audio 4000 RTP/AVP 0\n"
    assert sdp.parse(body).media[0].port == 4000


def test_hold_address_is_kept():
    body = b"v=0\r\no=- 1 2 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"
    assert sdp.parse(body).media[0].connection == "0.0.0.0"


BASE = "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"


@pytest.mark.parametrize("body,reason", [
    (b"", "empty SDP body"),
    (b"x" * 70000, "SDP body too large"),
    (b"v=1\r\n", "line 1: must be v=0"),
    (b"v=0\r\nhello\r\n", "line 2: not a <type>=<value> line: 'hello'"),
    (BASE.replace("c=IN IP4 10.0.0.1", "c=IN IP4 255.255.255.255").encode(),
     "line 4 (c=): '255.255.255.255' is not a unicast address"),
    (BASE.replace("c=IN IP4 10.0.0.1", "c=IN IP4 224.2.1.1/127").encode(),
     "line 4 (c=): multicast TTL/count is not supported"),
    (BASE.replace("c=IN IP4 10.0.0.1", "c=IN IP4 0.10.10.0").encode(),
     "line 4 (c=): '0.10.10.0' is not a unicast address"),
    (BASE.replace("c=IN IP4 10.0.0.1", "c=IN IP4 10.10.10.256").encode(),
     "line 4 (c=): '10.10.10.256' is not an IP address"),
    (BASE.replace("c=IN IP4 10.0.0.1", "c=IN IP4 239.1.1.1").encode(),
     "line 4 (c=): '239.1.1.1' is not a unicast address"),
    (BASE.replace("c=IN IP4 10.0.0.1", "c=IN IP4 host.example.com").encode(),
     "line 4 (c=): 'host.example.com' is not an IP address"),
    (BASE.replace("c=IN IP4 10.0.0.1", "c=IN IP4 2001:db8::1").encode(),
     "line 4 (c=): '2001:db8::1' is not an IPv4 address"),
    (BASE.replace("c=IN IP4 10.0.0.1", "c=XX IP4 10.0.0.1").encode(), "line 4 (c=): network type 'XX' is not IN"),
    (BASE.replace("c=IN IP4 10.0.0.1", "c=IN IP4").encode(), "line 4 (c=): expected 'IN IP4|IP6 <address>'"),
    (BASE.replace("c=IN IP4 10.0.0.1\r\n", "").encode(), "media 0 (audio): no connection address (c=)"),
    (BASE.replace("4000", "65536").encode(), "line 6 (m=): invalid port '65536'"),
    (BASE.replace("4000", "-1").encode(), "line 6 (m=): invalid port '-1'"),
    (BASE.replace("RTP/AVP 0", "RTP/AVP 128").encode(), "line 6 (m=): invalid payload type '128'"),
    (BASE.replace("RTP/AVP 0", "RTP/AVP").encode(), "line 6 (m=): expected '<media> <port> <proto> <fmt> ...'"),
    ((BASE + "a=rtpmap:0 PCMU/0\r\n").encode(), "line 7 (a=): invalid rtpmap encoding or clock rate"),
    ((BASE + "a=rtpmap:x PCMU/8000\r\n").encode(), "line 7 (a=): expected 'rtpmap:<pt> <encoding>/<rate>'"),
    ((BASE + "a=rtcp:0\r\n").encode(), "line 7 (a=): invalid port '0'"),
    (BASE.replace("o=- 1 1", "o=- x 1").encode(), "line 2 (o=): session id and version must be numbers"),
    (BASE.replace("o=- 1 1 IN IP4 10.0.0.1\r\n", "").encode(), "missing o= line"),
    (BASE.replace("s=-\r\n", "").encode(), "missing s= line"),
    (BASE.replace("t=0 0", "t=0").encode(), "line 5 (t=): expected '<start> <stop>'"),
    ((BASE + "a=x\x01y\r\n").encode(), "line 7: control character"),
    ((BASE + "\r\na=late\r\n").encode(), "line 7: empty line"),
])
def test_garbage_is_refused(body, reason):
    with pytest.raises(SdpError) as ei:
        sdp.parse(body)
    assert str(ei.value) == reason


@pytest.mark.parametrize("address,ports,kw,reason", [
    ("255.255.255.255", [(1, 2)], {}, "anchor address '255.255.255.255' is not a unicast address"),
    ("0.0.0.0", [(1, 2)], {}, "anchor address '0.0.0.0' is not a unicast address"),
    ("pbx", [(1, 2)], {}, "anchor address 'pbx' is not an IP address"),
    ("10.0.0.9", [], {}, "1 media sections but 0 port pairs"),
    ("10.0.0.9", [(0, 1)], {}, "invalid port pair (0, 1)"),
    ("10.0.0.9", [(1, 2)], {"direction": "sideways"},
     "direction must be one of sendrecv, sendonly, recvonly, inactive"),
])
def test_rewrite_refuses_bad_targets(address, ports, kw, reason):
    with pytest.raises(SdpError) as ei:
        sdp.rewrite(BASE.encode(), address, ports, **kw)
    assert str(ei.value) == reason


def test_rfc5118_sdp_bodies(shared_testdata):
    wire = shared_testdata / "rfc5118" / "wire"
    body = (wire / "ipv6-in-sdp.dat").read_bytes().split(b"\r\n\r\n", 1)[1]
    assert sdp.parse(body).media[0].connection == "2001:db8::20"
    body = (wire / "mult-ip-in-sdp.dat").read_bytes().split(b"\r\n\r\n", 1)[1]
    s = sdp.parse(body)
    assert s.connection is None
    assert [(m.connection, m.addrtype) for m in s.media] == [("192.0.2.1", "IP4"), ("2001:db8::1", "IP6")]
    body = (wire / "ipv4-mapped-ipv6.dat").read_bytes().split(b"\r\n\r\n", 1)[1]
    assert sdp.parse(body).media[0].connection == "::ffff:192.0.2.2"
