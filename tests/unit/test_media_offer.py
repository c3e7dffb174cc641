"""The codec a media channel answers with (hpbx.pbx.media_channel.parse_offer): the caller's
first common codec, its telephone-event type, and its ptime only when the engine can send it
(10, 20 or 30 ms): a huge or odd a=ptime falls back to 20 ms instead of reaching the engine."""
import pytest

from hpbx.pbx.media_channel import SdpError, parse_offer


def offer(formats: str, *extra: str) -> bytes:
    lines = ["v=0", "o=- 1 1 IN IP4 127.0.0.1", "s=-", "c=IN IP4 127.0.0.1", "t=0 0",
             f"m=audio 4000 RTP/AVP {formats}", *extra]
    return ("\r\n".join(lines) + "\r\n").encode()


@pytest.mark.parametrize("ptime,want", [(None, 20), (10, 10), (20, 20), (30, 30), (1000, 20), (40, 20), (1, 20)])
def test_ptime_is_one_the_engine_sends_or_20(ptime, want):
    extra = ["a=rtpmap:8 PCMA/8000"] + ([f"a=ptime:{ptime}"] if ptime else [])
    assert parse_offer(offer("8", *extra))["ptime"] == want


def test_first_common_codec_and_telephone_event():
    got = parse_offer(offer("18 0 8 101", "a=rtpmap:18 G729/8000", "a=rtpmap:101 telephone-event/8000"))
    assert got == {"codec": "PCMU", "pt": 0, "dtmf_pt": 101, "ptime": 20}


def test_no_audio_or_no_common_codec_is_an_sdp_error():
    with pytest.raises(SdpError, match="no audio"):
        parse_offer(b"v=0\r\nm=video 4000 RTP/AVP 96\r\n")
    with pytest.raises(SdpError, match="no common codec"):
        parse_offer(offer("18", "a=rtpmap:18 G729/8000"))


def test_g722_when_the_phone_prefers_it_and_the_build_has_it():
    from hpbx._fast.relay import CODECS

    got = parse_offer(offer("9 8 101", "a=rtpmap:9 G722/8000", "a=rtpmap:101 telephone-event/8000"))
    if "G722" in CODECS:  # built with libspandsp-dev
        assert (got["codec"], got["pt"]) == ("G722", 9)
    else:
        assert (got["codec"], got["pt"]) == ("PCMA", 8)
