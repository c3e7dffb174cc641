"""SDP anchoring of a call: what the relay is told, and the body each side receives."""
import pytest

from hpbx.errors import SdpError
from hpbx.pbx import anchor

OFFER = (b"v=0\r\no=alice 1 1 IN IP4 192.168.1.10\r\ns=-\r\nc=IN IP4 192.168.1.10\r\nt=0 0\r\n"
         b"m=audio 7078 RTP/AVP 8 0 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:0 PCMU/8000\r\n"
         b"a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\n"
         b"a=candidate:1 1 UDP 2130706431 192.168.1.10 7078 typ host\r\n"
         b"a=candidate:2 1 UDP 1694498815 203.0.113.5 40000 typ srflx\r\n"
         b"a=ice-ufrag:abcd\r\na=ice-pwd:0123456789abcdef0123\r\na=sendrecv\r\n")


def test_peer_reads_the_audio_stream():
    p = anchor.peer(OFFER)
    assert (p.host, p.port, p.rtcp_port, p.rtcp_mux, p.direction, p.hold) == (
        "192.168.1.10", 7078, 7079, False, "sendrecv", False)


@pytest.mark.parametrize("change, hold", [
    ((b"a=sendrecv", b"a=sendonly"), True),
    ((b"a=sendrecv", b"a=inactive"), True),
    ((b"a=sendrecv", b"a=recvonly"), True),  # the answer to a hold
    ((b"c=IN IP4 192.168.1.10", b"c=IN IP4 0.0.0.0"), True),
])
def test_hold_is_recognised(change, hold):
    assert anchor.peer(OFFER.replace(*change)).hold is hold


def test_rewrite_points_at_the_relay_keeps_codecs_drops_ice():
    out = anchor.rewrite(OFFER, "198.51.100.2", 30000).decode()
    assert "c=IN IP4 198.51.100.2" in out and "192.168.1.10" not in out
    assert "m=audio 30000 RTP/AVP 8 0 101" in out
    assert "a=rtpmap:8 PCMA/8000" in out and "a=fmtp:101 0-15" in out
    assert "candidate" not in out and "ice-" not in out
    assert anchor.peer(out.encode()).port == 30000


def test_second_stream_is_rejected_in_place():
    body = OFFER.replace(b"m=audio", b"m=video 9000 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\nm=audio", 1)
    out = anchor.rewrite(body, "127.0.0.1", 30010).decode()
    lines = [ln for ln in out.split("\r\n") if ln.startswith("m=")]
    assert lines == ["m=video 0 RTP/AVP 96", "m=audio 30010 RTP/AVP 8 0 101"]
    assert "H264" not in out


@pytest.mark.parametrize("body", [b"", b"hello", b"v=0\r\ns=-\r\nm=video 9000 RTP/AVP 96\r\n",
                                  OFFER.replace(b"m=audio 7078", b"m=audio 0")])
def test_unusable_sdp_is_a_clear_error(body):
    with pytest.raises(SdpError):
        anchor.peer(body)


def test_parse_once_per_body_never_mixes_bodies():
    """peer then rewrite of one body parse it once; a different body is never answered from
    the remembered one (same length, one digit apart)."""
    other = OFFER.replace(b"7078 RTP", b"7080 RTP")
    assert len(other) == len(OFFER)
    assert anchor.peer(OFFER).port == 7078
    assert anchor.peer(other).port == 7080
    rewritten = anchor.rewrite(OFFER, "10.0.0.1", 30000)
    assert b"m=audio 30000 RTP/AVP 8 0 101" in rewritten and b"192.168.1.10" not in rewritten
    assert anchor.peer(OFFER).port == 7078 and anchor.peer(rewritten).port == 30000
    assert anchor.rewrite(bytes(bytearray(other)), "10.0.0.2", 31000).count(b"10.0.0.2") == 2
