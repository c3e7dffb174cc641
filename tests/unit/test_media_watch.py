"""Digits heard on RELAYED legs (engine.watch_digits): the relay keeps forwarding every packet
unchanged while its native worker reports RFC 4733 (and, when asked, in-band) digits to the
leg's listener; real UDP peers on 127.0.0.1, both I/O loops. This is what in-call star codes
(call recording's *1) stand on."""
import glob
import time

import pytest

from hpbx.errors import ValidationError
from media_peer import LO, Peer, dtmf_pcm, encode, read_pcap_udp, rtp_packet, send_paced, sine
from test_media_endpoint import Events, engine, io, peer  # noqa: F401  (fixtures)

PCAPS = "/usr/share/sip-tester"
needs_pcaps = pytest.mark.skipif(not glob.glob(f"{PCAPS}/dtmf_2833_*.pcap"),
                                 reason="SIPp's RFC 4733 pcaps (Debian sip-tester) are not installed")


def _pcap_digit(name):
    return [p for _, p in read_pcap_udp(f"{PCAPS}/dtmf_2833_{name}.pcap")]


class Heard:
    def __init__(self):
        self.got = []

    def __call__(self, ev):
        self.got.append(ev)

    def digits(self):
        return "".join(e.data["digit"] for e in self.got)


def _bridged(engine, peer, other):
    ms = engine.allocate("c1")
    engine.set_peer("c1", "a", LO, peer.port)
    engine.set_peer("c1", "b", LO, other.port)
    return ms


def _wait(ev, pred, timeout=5.0):
    ev.wait(lambda g: pred(), timeout=timeout)


@pytest.fixture
def other():
    p = Peer()
    yield p
    p.close()


@needs_pcaps
def test_rfc4733_on_a_relayed_leg_is_reported_and_still_relayed(engine, peer, other):
    ms = _bridged(engine, peer, other)
    ev = Events(engine)
    heard = Heard()
    engine.watch_digits("c1", "a", heard, dtmf_pts=(101,))
    assert engine.is_watched("c1", "a") and not engine.is_terminated("c1", "a")
    sent = []
    for name in ("star", "1", "9", "pound"):
        pkts = _pcap_digit(name)
        sent += pkts
        send_paced(peer, ms.port_a, pkts, interval=0.004)
        # apart by more than a worker stall on this shared box: two digit ends read in one
        # batch would be within the 30 ms flood limit of each other
        time.sleep(0.25)
    _wait(ev, lambda: len(heard.got) >= 4)
    ev.wait(lambda g: False, timeout=0.4)  # end retransmissions are not new digits
    assert heard.digits() == "*19#"
    assert all(e.leg == "a" and e.key == "c1" and e.data["relayed"] and e.data["source"] == "rfc4733"
               for e in heard.got)
    assert all(e.data["duration_ms"] == 280 for e in heard.got)
    # nothing of it reached the normal event stream (a later menu must not see typed-ahead *1)
    assert not ev.kinds("digit")
    # every packet went on to the other party, byte for byte (the relay did not stop)
    got = other.recv(len(sent), timeout=3)
    assert len(got) == len(sent)
    assert [g.payload for g in got] == [p[12:] for p in sent]
    assert engine.stats("c1")["a"]["packets"] == len(sent)


@needs_pcaps
def test_second_payload_type_and_missing_end_closed_by_the_next_packet(engine, peer, other):
    ms = _bridged(engine, peer, other)
    ev = Events(engine)
    heard = Heard()
    engine.watch_digits("c1", "a", heard, dtmf_pts=(96, 101))
    nine = _pcap_digit("9")
    send_paced(peer, ms.port_a, nine[:5], interval=0.004)  # the end packets are lost
    time.sleep(0.4)
    assert heard.got == []  # no clock on a relayed leg: the next packet closes it
    pay = encode("PCMA", sine(300, 20))
    send_paced(peer, ms.port_a, [rtp_packet(500 + i, 9000 + 160 * i, 0xA1, pay) for i in range(3)])
    _wait(ev, lambda: len(heard.got) >= 1)
    # pt 96 (the other side's telephone-event type) is heard too
    five = [p[:1] + bytes([(p[1] & 0x80) | 96]) + p[2:] for p in _pcap_digit("5")]
    send_paced(peer, ms.port_a, five, interval=0.004)
    _wait(ev, lambda: len(heard.got) >= 2)
    assert heard.digits() == "95"
    assert len(other.recv(5 + 3 + len(five), timeout=3)) == 5 + 3 + len(five)


def test_inband_digits_on_a_relayed_leg(engine, peer, other):
    ms = _bridged(engine, peer, other)
    ev = Events(engine)
    heard = Heard()
    engine.watch_digits("c1", "a", heard, dtmf_pts=(), inband=True, codec="PCMU")
    pcm = dtmf_pcm("*1#", 80, 80)
    pkts = [rtp_packet(i // 160, i, 0x1B, encode("PCMU", pcm[i:i + 160]), pt=0)
            for i in range(0, len(pcm) - 159, 160)]
    pkts += [rtp_packet(len(pkts) + i, 160 * (len(pkts) + i), 0x1B, encode("PCMU", sine(0, 20)), pt=0)
             for i in range(10)]  # quiet after the last digit
    send_paced(peer, ms.port_a, pkts)
    _wait(ev, lambda: len(heard.got) >= 3)
    assert heard.digits() == "*1#"
    assert all(e.data["source"] == "inband" for e in heard.got)
    got = other.recv(len(pkts), timeout=3)
    assert [g.payload for g in got] == [p[12:] for p in pkts]


@needs_pcaps
def test_watch_pauses_while_terminated_resumes_after_bridge_and_ends(engine, peer, other):
    ms = _bridged(engine, peer, other)
    ev = Events(engine)
    heard = Heard()
    engine.watch_digits("c1", "a", heard)
    engine.terminate("c1", "a")  # e.g. recording: the endpoint hears the digits now
    send_paced(peer, ms.port_a, _pcap_digit("7"), interval=0.004)
    _wait(ev, lambda: ev.kinds("digit"))
    assert [d.data["digit"] for d in ev.kinds("digit")] == ["7"] and "relayed" not in ev.kinds("digit")[0].data
    assert heard.got == []
    engine.bridge("c1", "a")
    send_paced(peer, ms.port_a, _pcap_digit("3"), interval=0.004)
    _wait(ev, lambda: heard.got)
    assert heard.digits() == "3" and len(ev.kinds("digit")) == 1
    engine.unwatch_digits("c1", "a")
    assert not engine.is_watched("c1", "a")
    send_paced(peer, ms.port_a, _pcap_digit("4"), interval=0.004)
    ev.wait(lambda g: False, timeout=0.4)
    assert heard.digits() == "3" and len(ev.kinds("digit")) == 1
    # watched again, then the call ends with the watch on: freed with the session
    engine.watch_digits("c1", "b", heard)
    engine.delete("c1")
    assert not engine.is_watched("c1", "b")


def test_watch_bad_input(engine, peer, other):
    _bridged(engine, peer, other)
    with pytest.raises(ValidationError) as e:
        engine.watch_digits("c1", "a", print, dtmf_pts=(101, 102, 103))
    assert e.value.field == "dtmf_pts"
    with pytest.raises(ValidationError) as e:
        engine.watch_digits("c1", "a", print, dtmf_pts=(), inband=False)
    assert e.value.field == "dtmf_pts"
    with pytest.raises(ValidationError) as e:
        engine.watch_digits("c1", "a", "not callable")
    assert e.value.field == "on_digit"
    with pytest.raises(ValidationError) as e:
        engine.watch_digits("c1", "a", print, dtmf_pts=(8,), codec="PCMA", pt=8)
    assert e.value.field == "pt"
    with pytest.raises(ValidationError):
        engine.watch_digits("c1", "x", print)
