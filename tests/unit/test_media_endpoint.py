"""Media endpoints in the relay's workers, against real UDP peers on 127.0.0.1, on both loops:
play (RTP on the wire, pacing, tone order), RFC 4733 and in-band digits, barge-in, events,
relay <-> endpoint switching with one RTP identity, recording, tones, send_dtmf, rooms, and
hostile input."""
import asyncio
import glob
import os
import select
import time

import numpy as np
import pytest

from hpbx._fast.relay import Relay
from hpbx.errors import NotFoundError, ValidationError
from hpbx.media import MediaEngine
from media_peer import (LO, Peer, decode, dominant, dtmf_pcm, encode, pcm_bytes, power, read_pcap_udp,
                        read_wav, rtp_packet, send_paced, sine)

PCAPS = "/usr/share/sip-tester"


def _uring_usable():
    try:
        Relay(LO, 42000, 42099, workers=1, io="uring").close()
    except Exception as e:  # the kernel or a seccomp policy refuses io_uring
        return str(e)
    return ""


_NO_URING = _uring_usable()


@pytest.fixture(params=["uring", "epoll"])
def io(request):
    if request.param == "uring" and _NO_URING:
        pytest.skip(f"io_uring unusable here: {_NO_URING}")
    return request.param


class Events:
    """Collects engine events; waits on the engine's eventfd (no sleeps)."""

    def __init__(self, engine):
        self.engine = engine
        self.got = []
        engine.on_event = self.got.append

    def wait(self, pred, timeout=5.0):
        deadline = time.monotonic() + timeout
        while True:
            self.engine.drain_events()
            if pred(self.got):
                return self.got
            left = deadline - time.monotonic()
            if left <= 0:
                return self.got
            select.select([self.engine.media.fileno()], [], [], left)

    def kinds(self, kind):
        return [e for e in self.got if e.kind == kind]


@pytest.fixture
def engine(io):
    # nice -10 as a media server is run: this 2-core box is shared, and a worker at normal
    # priority waits behind whatever else runs when its 10 ms tick comes
    e = MediaEngine(LO, 42000, 42199, workers=2, io=io, media_timeout=60, nice=-10)
    e.start()
    yield e
    e.close()


@pytest.fixture
def peer():
    p = Peer()
    yield p
    p.close()


def call(engine, peer, key="c1", leg="a", **kw):
    ms = engine.allocate(key)
    engine.set_peer(key, leg, LO, peer.port)
    engine.terminate(key, leg, **kw)
    return ms.port(leg)


TONE_FREQS = (500.0, 1200.0, 2000.0)


def tone_prompts(engine, ms=300):
    for i, f in enumerate(TONE_FREQS):
        engine.add_prompt(f"t{i}", pcm_bytes(sine(f, ms)))
    return [f"t{i}" for i in range(len(TONE_FREQS))]


# ------------------------------------------------------------------ play


def test_play_list_on_the_wire(engine, peer):
    call(engine, peer, codec="PCMA")
    ev = Events(engine)
    names = tone_prompts(engine)
    engine.play("c1", "a", names)
    pkts = peer.recv(45, timeout=5)
    assert len(pkts) == 45
    assert len({p.ssrc for p in pkts}) == 1
    assert all(p.pt == 8 and len(p.payload) == 160 for p in pkts)
    for a, b in zip(pkts, pkts[1:]):
        assert (b.seq - a.seq) & 0xFFFF == 1
        assert (b.ts - a.ts) & 0xFFFFFFFF == 160
    # the marker bit starts each prompt (a talk spurt each)
    assert [i for i, p in enumerate(pkts) if p.marker] == [0, 15, 30]
    # each prompt's tone, in order, found by Goertzel in what was decoded
    heard = [dominant(decode("PCMA", p.payload), TONE_FREQS) for p in pkts]
    assert heard == [500.0] * 15 + [1200.0] * 15 + [2000.0] * 15
    got = ev.wait(lambda g: ev.kinds("play_done"))
    done = ev.kinds("play_done")
    assert len(done) == 1 and done[0].data == {"reason": "end"} and done[0].key == "c1"
    assert done[0].leg == "a"
    assert peer.recv(1, timeout=0.3) == []  # nothing after the end
    assert got


def test_play_paced_without_bursts(engine, peer):
    call(engine, peer, codec="PCMU")
    engine.add_prompt("long", pcm_bytes(sine(440, 3000)))
    engine.play("c1", "a", ["long"])
    pkts = peer.recv(150, timeout=6)
    assert len(pkts) == 150 and all(p.pt == 0 for p in pkts)
    gaps = np.diff([p.t for p in pkts]) * 1000
    dev = np.abs(gaps - 20.0)
    # paced on the worker's absolute-deadline clock: no drift, no bursts. (p99 is reported by
    # bench_media: on this shared VM a vCPU is sometimes descheduled for several ms, even a
    # SCHED_FIFO thread, so a single 3 s stream cannot assert p99 without flaking.)
    assert gaps.min() > 10.0, gaps.min()
    assert np.median(dev) < 0.5, np.median(dev)
    assert np.percentile(dev, 95) < 2.0, np.percentile(dev, 95)
    total = pkts[-1].t - pkts[0].t
    assert abs(total - 149 * 0.020) < 0.010  # the clock does not drift
    stats = engine.media_stats()
    assert stats["packets_sent"] >= 150 and stats["send_jitter_p99_ms"] > 0


@pytest.mark.parametrize("ptime", [10, 30])
def test_play_ptime(engine, peer, ptime):
    call(engine, peer, codec="PCMA", ptime_ms=ptime)
    engine.add_prompt("p", pcm_bytes(sine(1000, 600)))
    engine.play("c1", "a", ["p"])
    n = 600 // ptime
    pkts = peer.recv(n, timeout=4)
    assert len(pkts) == n
    assert all(len(p.payload) == ptime * 8 for p in pkts)
    assert all(((b.ts - a.ts) & 0xFFFFFFFF) == ptime * 8 for a, b in zip(pkts, pkts[1:]))
    gaps = np.diff([p.t for p in pkts]) * 1000
    assert np.median(gaps) == pytest.approx(ptime, abs=1.0)
    assert all(dominant(decode("PCMA", p.payload), (500.0, 1000.0, 2000.0)) == 1000.0 for p in pkts)


def test_loop_continues_identity_and_stop(engine, peer):
    call(engine, peer)
    ev = Events(engine)
    engine.add_prompt("m", pcm_bytes(sine(700, 100)))
    engine.play("c1", "a", ["m"], loop=True)
    pkts = peer.recv(20, timeout=3)
    assert len(pkts) == 20
    assert all((b.seq - a.seq) & 0xFFFF == 1 for a, b in zip(pkts, pkts[1:]))
    engine.stop_play("c1", "a")
    ev.wait(lambda g: ev.kinds("play_done"))
    assert ev.kinds("play_done")[0].data["reason"] == "stopped"
    peer.drain()
    assert peer.recv(1, timeout=0.2) == []
    # a new play: same SSRC, sequence continues, timestamps advanced by the elapsed time
    engine.play("c1", "a", ["m"])
    more = peer.recv(5, timeout=2)
    assert more[0].ssrc == pkts[0].ssrc and more[0].marker == 1
    gap_seq = (more[0].seq - pkts[-1].seq) & 0xFFFF
    assert 1 <= gap_seq <= 3
    elapsed = (more[0].ts - pkts[-1].ts) & 0xFFFFFFFF
    assert elapsed >= 160 * 10  # at least the silent 200 ms


def test_replacing_a_prompt_lets_players_finish(engine, peer):
    call(engine, peer)
    engine.add_prompt("x", pcm_bytes(sine(500, 400)))
    engine.play("c1", "a", ["x"])
    engine.add_prompt("x", pcm_bytes(sine(2000, 400)))  # atomic swap while it plays
    first = peer.recv(20, timeout=3)
    assert [dominant(decode("PCMA", p.payload), (500.0, 2000.0)) for p in first] == [500.0] * 20
    engine.play("c1", "a", ["x"])
    second = peer.recv(20, timeout=3)
    assert [dominant(decode("PCMA", p.payload), (500.0, 2000.0)) for p in second] == [2000.0] * 20
    engine.remove_prompt("x")
    assert not engine.has_prompt("x")


# ------------------------------------------------------------------ relay <-> endpoint


def test_switch_keeps_the_legs_rtp_identity(engine, peer):
    ms = engine.allocate("c1")
    other = Peer()
    try:
        engine.set_peer("c1", "a", LO, peer.port)
        engine.set_peer("c1", "b", LO, other.port)
        # B talks: relayed to A as is
        pay = encode("PCMA", sine(300, 20))
        send_paced(other, ms.port_b, [rtp_packet(1000 + i, 5000 + 160 * i, 0xB0B, pay) for i in range(10)])
        relayed = peer.recv(10, timeout=2)
        assert [p.ssrc for p in relayed] == [0xB0B] * 10
        # an announcement on A: the same stream continues
        engine.terminate("c1", "a")
        engine.add_prompt("ann", pcm_bytes(sine(1200, 200)))
        engine.play("c1", "a", ["ann"])
        ann = peer.recv(10, timeout=2)
        assert [p.ssrc for p in ann] == [0xB0B] * 10
        assert ann[0].seq == 1010 and ann[0].marker
        assert ((ann[0].ts - relayed[-1].ts) & 0xFFFFFFFF) >= 160
        assert [p.seq for p in ann] == list(range(1010, 1020))
        # back to relaying: B's new packets are rewritten into A's identity
        engine.bridge("c1", "a")
        send_paced(other, ms.port_b, [rtp_packet(77 + i, 999 + 160 * i, 0xCAFE, pay) for i in range(10)])
        back = peer.recv(10, timeout=2)
        assert [p.ssrc for p in back] == [0xB0B] * 10
        assert [p.seq for p in back] == list(range(1020, 1030))
        assert back[0].marker == 1 and all(not p.marker for p in back[1:])
        assert all(((b.ts - a.ts) & 0xFFFFFFFF) == 160 for a, b in zip(back, back[1:]))
        assert ((back[0].ts - ann[-1].ts) & 0xFFFFFFFF) >= 160
    finally:
        other.close()


def test_terminated_leg_does_not_relay(engine, peer):
    ms = engine.allocate("c1")
    other = Peer()
    try:
        engine.set_peer("c1", "a", LO, peer.port)
        engine.set_peer("c1", "b", LO, other.port)
        engine.terminate("c1", "a")
        pay = encode("PCMA", sine(300, 20))
        for i in range(5):
            peer.send(rtp_packet(i, 160 * i, 0xA, pay), ms.port_a)  # consumed by the endpoint
            other.send(rtp_packet(i, 160 * i, 0xB, pay), ms.port_b)  # A's output is the endpoint's
        assert other.recv(1, timeout=0.3) == []
        assert peer.recv(1, timeout=0.3) == []
        st = engine.stats("c1")
        assert st["a"]["packets"] == 5 and st["b"]["packets"] == 5  # still counted (media timeout)
    finally:
        other.close()


# ------------------------------------------------------------------ RFC 4733


def _pcap_digit(name):
    pkts = read_pcap_udp(f"{PCAPS}/dtmf_2833_{name}.pcap")
    return [p for _, p in pkts]


needs_pcaps = pytest.mark.skipif(not glob.glob(f"{PCAPS}/dtmf_2833_*.pcap"),
                                 reason="SIPp's RFC 4733 pcaps (Debian sip-tester) are not installed")


@needs_pcaps
def test_rfc4733_pcaps_heard_once_each(engine, peer):
    port = call(engine, peer)
    ev = Events(engine)
    order = ["1", "2", "3", "4", "5", "6", "7", "8", "9", "0", "star", "pound"]
    for name in order:
        send_paced(peer, port, _pcap_digit(name), interval=0.004)
        time.sleep(0.03)
    want = [{"star": "*", "pound": "#"}.get(n, n) for n in order]
    ev.wait(lambda g: len(ev.kinds("digit")) >= len(want))
    # a retransmitted end or a late packet would show as a second event: give them time
    ev.wait(lambda g: False, timeout=0.4)
    digits = ev.kinds("digit")
    assert [d.data["digit"] for d in digits] == want
    assert all(d.data["source"] == "rfc4733" and d.data["duration_ms"] == 280 for d in digits)
    assert all(d.leg == "a" and d.key == "c1" for d in digits)
    assert all(a.time <= b.time for a, b in zip(digits, digits[1:]))


@needs_pcaps
def test_rfc4733_missing_start_and_missing_end(engine, peer):
    port = call(engine, peer)
    ev = Events(engine)
    five = _pcap_digit("5")
    send_paced(peer, port, five[4:], interval=0.004)  # no start packets
    ev.wait(lambda g: len(ev.kinds("digit")) >= 1)
    nine = _pcap_digit("9")
    send_paced(peer, port, nine[:5], interval=0.004)  # the end packets are lost
    ev.wait(lambda g: len(ev.kinds("digit")) >= 2)
    assert [d.data["digit"] for d in ev.kinds("digit")] == ["5", "9"]
    # the whole 9 arriving late (retransmission of the same event) is not a new digit
    send_paced(peer, port, nine, interval=0.004)
    ev.wait(lambda g: False, timeout=0.5)
    assert [d.data["digit"] for d in ev.kinds("digit")] == ["5", "9"]


@needs_pcaps
def test_barge_in_stops_the_prompt(engine, peer):
    port = call(engine, peer)
    ev = Events(engine)
    engine.add_prompt("menu", pcm_bytes(sine(600, 5000)))
    engine.play("c1", "a", ["menu"], barge_in="0123456789")
    assert len(peer.recv(10, timeout=2)) == 10
    send_paced(peer, port, _pcap_digit("star"), interval=0.004)  # not a barge-in digit
    ev.wait(lambda g: ev.kinds("digit"))
    assert not ev.kinds("play_done")
    send_paced(peer, port, _pcap_digit("7"), interval=0.004)
    ev.wait(lambda g: ev.kinds("play_done"))
    assert ev.kinds("play_done")[0].data == {"reason": "barge_in"}
    peer.drain()
    assert peer.recv(1, timeout=0.2) == []
    ev.wait(lambda g: len(ev.kinds("digit")) >= 2)
    assert [d.data["digit"] for d in ev.kinds("digit")] == ["*", "7"]


def test_next_event_async(engine, peer):
    async def flow():
        engine.attach_loop()
        call(engine, peer)
        engine.add_prompt("hello", pcm_bytes(sine(800, 200)))
        engine.play("c1", "a", ["hello"])
        done = await engine.next_event("c1", "play_done", timeout=3)
        assert done is not None and done.data["reason"] == "end"
        none = await engine.next_event("c1", "digit", timeout=0.1)
        assert none is None
        engine.play("c1", "a", ["hello"])
        engine.stop_play("c1", "a")
        ev = await engine.next_event("c1", timeout=3)
        assert ev.kind == "play_done" and ev.data["reason"] == "stopped"
        engine.detach_loop()

    asyncio.run(flow())


# ------------------------------------------------------------------ bad input


def test_bad_input_names_the_field(engine, peer):
    engine.allocate("c1")
    with pytest.raises(ValidationError) as e:
        engine.play("c1", "a", ["x"])
    assert e.value.field == "leg"  # not terminated
    with pytest.raises(ValidationError) as e:
        engine.terminate("c1", "a", codec="G729")
    assert e.value.field == "codec"
    with pytest.raises(ValidationError) as e:
        engine.terminate("c1", "a", ptime_ms=40)
    assert e.value.field == "ptime_ms"
    with pytest.raises(ValidationError) as e:
        engine.terminate("c1", "a", pt=200)
    assert e.value.field == "pt"
    with pytest.raises(ValidationError) as e:
        engine.terminate("c1", "c")
    assert e.value.field == "leg"
    with pytest.raises(NotFoundError):
        engine.terminate("nope", "a")
    engine.terminate("c1", "a")
    with pytest.raises(NotFoundError):
        engine.play("c1", "a", ["missing"])
    with pytest.raises(ValidationError) as e:
        engine.play("c1", "a", [])
    assert e.value.field == "prompts"
    engine.add_prompt("p", b"\x00\x00" * 80)
    with pytest.raises(ValidationError) as e:
        engine.play("c1", "a", ["p"], barge_in="5x")
    assert e.value.field == "barge_in"
    with pytest.raises(ValidationError) as e:
        engine.add_prompt("q", b"\x00")
    assert e.value.field == "pcm"
    with pytest.raises(ValidationError) as e:
        engine.add_prompt("", b"\x00\x00")
    assert e.value.field == "name"
    with pytest.raises(NotFoundError):
        engine.remove_prompt("never")
    with pytest.raises(NotFoundError):
        engine.tone("c1", "a", "siren")
    with pytest.raises(ValidationError) as e:
        engine.send_dtmf("c1", "a", "12x")
    assert e.value.field == "digits"
    with pytest.raises(ValidationError) as e:
        engine.record("c1", "a", "/nonexistent/dir/x.wav", max_ms=1000)
    assert e.value.field == "path"
    with pytest.raises(ValidationError) as e:
        engine.record("c1", "a", "/tmp/x.wav", max_ms=0)
    assert e.value.field == "max_ms"
    with pytest.raises(NotFoundError):
        engine.room_join(12345, "c1", "a")
    # the engine still works after all that
    assert engine.prompt_ms("p") == 10
    assert os.path.exists("/nonexistent") is False
