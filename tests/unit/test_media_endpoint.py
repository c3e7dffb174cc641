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
    e = MediaEngine(LO, 42000, 42999, workers=2, io=io, media_timeout=60, nice=-10)
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
    # a worker stalled a whole ptime (a descheduled vCPU) sends the late slot at once rather
    # than lose it: that and only that may look like a burst
    late = engine.media_stats()["late_slots"]
    assert (gaps < 10.0).sum() <= late, (gaps.min(), late)
    assert np.median(dev) < 0.5, np.median(dev)
    assert np.percentile(dev, 95) < 2.0, np.percentile(dev, 95)
    slope = np.polyfit(np.arange(len(pkts)), [p.t for p in pkts], 1)[0]
    assert abs(slope - 0.020) < 0.00005, slope  # the clock does not drift (a late packet may)
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
    assert [len(p.payload) for p in pkts] == [ptime * 8] * n
    steps = [(b.ts - a.ts) & 0xFFFFFFFF for a, b in zip(pkts, pkts[1:])]
    # a worker stalled 3 ptimes or more skips slots (the timestamps then jump); nothing else
    odd = [st for st in steps if st != ptime * 8]
    assert all(st % (ptime * 8) == 0 for st in odd) and len(odd) <= engine.media_stats()["missed_slots"], steps
    gaps = np.diff([p.t for p in pkts]) * 1000
    assert np.median(gaps) == pytest.approx(ptime, abs=1.0)
    assert [dominant(decode("PCMA", p.payload), (500.0, 1000.0, 2000.0)) for p in pkts] == [1000.0] * n


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


# ------------------------------------------------------------------ record


REC_FREQS = (400.0, 700.0, 1000.0, 1300.0, 1600.0)


def _rec_stream(n, lost=(), swaps=(), ts_jump_after=None, jump=0, codec="PCMA"):
    """n packets, packet i carries 20 ms of REC_FREQS[i % 5]; returns (packets in send order,
    expected samples, expected per-slot frequency or None for silence)."""
    pkts, slots, ts = [], [], 90000
    for i in range(n):
        f = REC_FREQS[i % len(REC_FREQS)]
        pay = encode(codec, sine(f, 20, 6000))
        if i not in lost:
            pkts.append(rtp_packet(500 + i, ts, 0x5EC, pay, pt=8 if codec == "PCMA" else 0))
        slots.append((ts, f if i not in lost else None))
        ts += 160
        if ts_jump_after is not None and i == ts_jump_after:
            slots.append((ts, None))  # a pause of ``jump`` samples (DTX)
            ts += jump
    for a in swaps:
        pkts[a], pkts[a + 1] = pkts[a + 1], pkts[a]
    return pkts, ts - 90000, slots


def wait_rx(engine, key, n, leg="a", timeout=3.0):
    """Until the relay has taken n packets on the leg (a UDP send returns before that)."""
    deadline = time.monotonic() + timeout
    while engine.stats(key)[leg]["packets"] < n and time.monotonic() < deadline:
        time.sleep(0.002)
    assert engine.stats(key)[leg]["packets"] >= n


def _wait_record(ev, n=1, timeout=5):
    ev.wait(lambda g: len(ev.kinds("record_done")) >= n, timeout=timeout)
    done = ev.kinds("record_done")
    assert len(done) >= n, ev.got
    return done[n - 1]


def test_record_reorders_and_fills_loss_exactly(engine, peer, tmp_path):
    port = call(engine, peer)
    ev = Events(engine)
    path = str(tmp_path / "msg.wav")
    engine.record("c1", "a", path, max_ms=60000)
    pkts, total, slots = _rec_stream(60, lost={10, 30, 31}, swaps=(5, 20, 41), ts_jump_after=45, jump=800)
    send_paced(peer, port, pkts)
    wait_rx(engine, "c1", len(pkts))
    engine.stop_record("c1", "a")
    done = _wait_record(ev)
    assert done.data["reason"] == "stopped" and done.data["path"] == path
    rate, x = read_wav(path)
    assert rate == 8000
    assert len(x) == total == 60 * 160 + 800  # the WAV is exactly the elapsed RTP time
    assert done.data["ms"] == total // 8
    for ts, f in slots:
        off = ts - 90000
        seg = x[off:off + 160] if f is not None else x[off:off + (800 if off == 46 * 160 else 160)]
        if f is None:
            assert np.abs(seg).max() == 0, off  # loss and pauses are silence, at their length
        else:
            assert dominant(seg, REC_FREQS) == f, off


def test_record_stops_at_max_exactly(engine, peer, tmp_path):
    port = call(engine, peer)
    ev = Events(engine)
    path = str(tmp_path / "max.wav")
    engine.record("c1", "a", path, max_ms=500)
    pkts, _, _ = _rec_stream(40)
    send_paced(peer, port, pkts)
    done = _wait_record(ev)
    assert done.data["reason"] == "max" and done.data["ms"] == 500
    assert len(read_wav(path)[1]) == 4000


def test_record_stops_on_silence(engine, peer, tmp_path):
    port = call(engine, peer)
    ev = Events(engine)
    path = str(tmp_path / "sil.wav")
    engine.record("c1", "a", path, max_ms=20000, silence_ms=400)
    talk, _, _ = _rec_stream(20)
    quiet = [rtp_packet(520 + i, 90000 + 3200 + 160 * i, 0x5EC, encode("PCMA", np.zeros(160)))
             for i in range(40)]
    send_paced(peer, port, talk + quiet)
    done = _wait_record(ev)
    assert done.data["reason"] == "silence"
    assert done.data["ms"] == 400 + 400  # 20 packets of tone, then 400 ms of silence


def test_record_silence_when_nothing_arrives(engine, peer, tmp_path):
    call(engine, peer)
    ev = Events(engine)
    path = str(tmp_path / "none.wav")
    engine.record("c1", "a", path, max_ms=20000, silence_ms=500)
    done = _wait_record(ev, timeout=3)
    assert done.data["reason"] == "silence" and 500 <= done.data["ms"] <= 800
    assert np.abs(read_wav(path)[1]).max() == 0


@needs_pcaps
def test_record_stops_on_digit_and_hangup(engine, peer, tmp_path):
    port = call(engine, peer)
    ev = Events(engine)
    path = str(tmp_path / "d.wav")
    engine.record("c1", "a", path, max_ms=20000, stop_digits="#")
    pkts, _, _ = _rec_stream(10)
    send_paced(peer, port, pkts)
    send_paced(peer, port, _pcap_digit("pound"), interval=0.004)
    done = _wait_record(ev)
    assert done.data["reason"] == "digit" and done.data["digit"] == "#"
    assert done.data["ms"] >= 200
    wait_rx(engine, "c1", 20)
    # a second recording ends with the call
    path2 = str(tmp_path / "h.wav")
    engine.record("c1", "a", path2, max_ms=20000)
    base = engine.stats("c1")["a"]["packets"]
    send_paced(peer, port, [rtp_packet(900 + i, 500000 + 160 * i, 0x5EC, encode("PCMA", sine(700, 20)))
                            for i in range(10)])
    wait_rx(engine, "c1", base + 10)
    engine.delete("c1")
    done2 = _wait_record(ev, 2)  # the file is finished after the call is gone: still reported
    assert done2.data["reason"] == "hangup" and done2.data["path"] == path2 and done2.key == "c1"
    assert len(read_wav(path2)[1]) == 1600


def test_record_done_after_hangup_reaches_next_event(engine, peer, tmp_path):
    async def flow():
        engine.attach_loop()
        call(engine, peer)
        path = str(tmp_path / "vm.wav")
        engine.record("c1", "a", path, max_ms=10000)
        engine.delete("c1")
        ev = await engine.next_event("c1", "record_done", timeout=3)
        assert ev is not None and ev.data["reason"] == "hangup" and ev.data["path"] == path
        with pytest.raises(NotFoundError):
            await engine.next_event("c1", timeout=0.1)  # now the call is gone entirely
        engine.detach_loop()

    asyncio.run(flow())


def test_record_with_beep(engine, peer, tmp_path):
    port = call(engine, peer)
    ev = Events(engine)
    path = str(tmp_path / "b.wav")
    engine.record("c1", "a", path, max_ms=20000, beep=True)
    beep = peer.recv(12, timeout=2)  # 250 ms of 1 kHz
    assert len(beep) == 12 and beep[0].marker
    assert all(dominant(decode("PCMA", p.payload), (425.0, 1000.0)) == 1000.0 for p in beep)
    ev.wait(lambda g: ev.kinds("tone_done"))
    time.sleep(0.05)  # past the beep's gate: from here what arrives is recorded
    pkts, total, _ = _rec_stream(10)
    send_paced(peer, port, pkts)
    wait_rx(engine, "c1", len(pkts))
    engine.stop_record("c1", "a")
    done = _wait_record(ev)
    assert done.data["ms"] == total // 8


# ------------------------------------------------------------------ in-band DTMF


def _send_audio(engine, peer, port, pcm, codec="PCMA", chunk=160, paced=False, key="c1"):
    """Send PCM as RTP; unpaced streams are sent as fast as the relay takes them (waiting on
    its packet counter, never on a sleep)."""
    pt = 8 if codec == "PCMA" else 0
    base = engine.stats(key)["a"]["packets"]
    pkts = []
    for i in range(0, len(pcm) - chunk + 1, chunk):
        pkts.append(rtp_packet(i // chunk, i, 0x1B, encode(codec, pcm[i:i + chunk]), pt=pt))
    if paced:
        send_paced(peer, port, pkts)
        return
    for i in range(0, len(pkts), 64):  # 64 datagrams fit the relay socket's buffer
        for p in pkts[i:i + 64]:
            peer.send(p, port)
        want = base + min(i + 64, len(pkts))
        seen, still = -1, time.monotonic()
        while True:
            n = engine.stats(key)["a"]["packets"]
            if n >= want:
                break
            if n != seen:
                seen, still = n, time.monotonic()
            elif time.monotonic() - still > 0.2:
                base -= want - n  # lost on the way (a full socket buffer): go on
                break
            time.sleep(0.001)


@pytest.mark.parametrize("codec", ["PCMA", "PCMU"])
def test_inband_dtmf_heard_once_per_digit(engine, peer, codec):
    port = call(engine, peer, codec=codec, pt=8 if codec == "PCMA" else 0, dtmf_pt=None, inband=True)
    ev = Events(engine)
    digits = "1234567890*#ABCD"
    _send_audio(engine, peer, port, dtmf_pcm(digits, 80, 80), codec=codec, paced=True)
    ev.wait(lambda g: len(ev.kinds("digit")) >= len(digits))
    ev.wait(lambda g: False, timeout=0.2)
    got = ev.kinds("digit")
    assert "".join(d.data["digit"] for d in got) == digits
    assert all(d.data["source"] == "inband" and 60 <= d.data["duration_ms"] <= 100 for d in got)


def test_inband_level_and_twist_limits(engine, peer):
    port = call(engine, peer, dtmf_pt=None, inband=True)
    ev = Events(engine)

    def dual(d, lo_amp, hi_amp, ms=100):
        lo, hi = {"5": (770, 1336), "9": (852, 1477), "3": (697, 1477), "7": (852, 1209)}[d]
        return np.concatenate([np.zeros(640), sine(lo, ms, lo_amp) + sine(hi, ms, hi_amp), np.zeros(640)])

    quiet = 22776 * 10 ** (-36 / 20)  # -36 dBm0 per tone: below the -30 dBm0 floor
    ok_low = 22776 * 10 ** (-25 / 20)
    pcm = np.concatenate([
        dual("5", quiet, quiet),                # too quiet: no digit
        dual("9", ok_low, ok_low),              # -25 dBm0: heard
        dual("3", 8000, 8000 * 10 ** (-12 / 20)),  # high group 12 dB down: twist, no digit
        dual("7", 5000, 5000 * 10 ** (3 / 20)),    # high group 3 dB up: within limits, heard
    ])
    _send_audio(engine, peer, port, pcm, paced=True)
    ev.wait(lambda g: len(ev.kinds("digit")) >= 2)
    ev.wait(lambda g: False, timeout=0.2)
    assert [d.data["digit"] for d in ev.kinds("digit")] == ["9", "7"]


PROMPT_CORPUS = sorted(glob.glob("/usr/share/asterisk/sounds/en_US_f_Allison/**/*.wav", recursive=True)
                       + glob.glob("/usr/share/asterisk/moh*/**/*.wav", recursive=True))


@pytest.mark.skipif(not PROMPT_CORPUS, reason="asterisk-core-sounds-en-wav / asterisk-moh-opsound-wav not installed")
def test_speech_and_music_give_no_false_digit(engine, peer):
    port = call(engine, peer, dtmf_pt=None, inband=True)
    ev = Events(engine)
    total = 0
    for f in PROMPT_CORPUS:
        rate, x = read_wav(f)
        if rate != 8000:
            continue
        total += len(x)
        _send_audio(engine, peer, port, x, chunk=480)
    # a real digit after all that is still heard (the detector was listening)
    _send_audio(engine, peer, port, dtmf_pcm("5"), chunk=480)
    ev.wait(lambda g: ev.kinds("digit"))
    assert total > 8000 * 600  # at least 10 minutes of speech and music
    assert [d.data["digit"] for d in ev.kinds("digit")] == ["5"], [d.data for d in ev.kinds("digit")]


# ------------------------------------------------------------------ sending digits and tones


def test_send_dtmf_rfc4733_packets(engine, peer):
    call(engine, peer, dtmf_pt=101)
    engine.send_dtmf("c1", "a", "1#", duration_ms=100)
    pkts = peer.recv(30, timeout=2, idle=0.3)
    ev_pkts = [p for p in pkts if p.pt == 101]
    assert len(ev_pkts) == len(pkts)
    by_ts = {}
    for p in ev_pkts:
        by_ts.setdefault(p.ts, []).append(p)
    assert len(by_ts) == 2  # one RTP timestamp per digit
    for (ts, ps), digit in zip(sorted(by_ts.items()), (1, 11)):
        assert ps[0].marker == 1 and all(not p.marker for p in ps[1:])
        events = [p.payload[0] for p in ps]
        assert events == [digit] * len(ps)
        ends = [p for p in ps if p.payload[1] & 0x80]
        assert len(ends) == 3  # the end is sent three times
        assert all(int.from_bytes(p.payload[2:4], "big") == 800 for p in ends)  # 100 ms
        durs = [int.from_bytes(p.payload[2:4], "big") for p in ps if not p.payload[1] & 0x80]
        assert durs == sorted(durs) and durs[0] == 160
        assert all(p.payload[1] & 0x3F == 10 for p in ps)  # -10 dBm0
    assert all((b.seq - a.seq) & 0xFFFF == 1 for a, b in zip(ev_pkts, ev_pkts[1:]))


def test_send_dtmf_is_heard_by_an_endpoint(engine, peer):
    """Two endpoints back to back: what one sends (RFC 4733, then in-band) the other hears."""
    ms = engine.allocate("c1")
    ev = Events(engine)
    engine.set_peer("c1", "a", LO, ms.port_b)
    engine.set_peer("c1", "b", LO, ms.port_a)
    engine.terminate("c1", "a", dtmf_pt=101)
    engine.terminate("c1", "b", dtmf_pt=101)
    engine.send_dtmf("c1", "a", "159*")
    ev.wait(lambda g: len(ev.kinds("digit")) >= 4)
    assert [(d.leg, d.data["digit"], d.data["source"]) for d in ev.kinds("digit")] == [
        ("b", c, "rfc4733") for c in "159*"]
    engine.terminate("c1", "a", dtmf_pt=None)
    engine.terminate("c1", "b", dtmf_pt=None, inband=True)
    engine.send_dtmf("c1", "a", "0#", duration_ms=120)
    ev.wait(lambda g: len(ev.kinds("digit")) >= 6)
    assert [(d.data["digit"], d.data["source"]) for d in ev.kinds("digit")[4:]] == [
        ("0", "inband"), ("#", "inband")]


def test_tones(engine, peer):
    call(engine, peer)
    ev = Events(engine)
    engine.tone("c1", "a", "ringback")
    pkts = peer.recv(70, timeout=3)
    level = [power(decode("PCMA", p.payload), 425.0) for p in pkts]
    on = [lv > 1e5 for lv in level]
    assert on[:50] == [True] * 50 and on[50:70] == [False] * 20  # 1 s on, then the 4 s off
    assert all(p.marker == 0 for p in pkts[1:])  # one talk spurt: the cadence is continuous
    engine.tone("c1", "a", "busy")
    ev.wait(lambda g: ev.kinds("tone_done"))
    assert ev.kinds("tone_done")[0].data["reason"] == "stopped"
    peer.drain()
    pkts = peer.recv(100, timeout=3)
    on = [power(decode("PCMA", p.payload), 425.0) > 1e5 for p in pkts]
    changes = sum(1 for a, b in zip(on, on[1:]) if a != b)
    assert 3 <= changes <= 5 and 40 <= sum(on) <= 60  # 0.5 s on / 0.5 s off
    engine.tone("c1", "a", "beep", loop=False)
    ev.wait(lambda g: len(ev.kinds("tone_done")) >= 3)
    assert ev.kinds("tone_done")[-1].data["reason"] == "end"


# ------------------------------------------------------------------ rooms


def test_room_members_hear_the_others_not_themselves(engine):
    freqs = {"m1": 500.0, "m2": 1100.0, "m3": 1700.0}
    codecs = {"m1": "PCMA", "m2": "PCMU", "m3": "PCMA"}
    peers = {k: Peer() for k in freqs}
    try:
        room = engine.room_create()
        ports = {}
        for k, p in peers.items():
            ms = engine.allocate(k)
            engine.set_peer(k, "a", LO, p.port)
            engine.terminate(k, "a", codec=codecs[k])
            engine.room_join(room, k, "a")
            ports[k] = ms.port_a
        assert engine.media_stats()["room_members"] == 3

        def talk(n, muted=()):
            t0 = time.monotonic()
            for i in range(n):
                for k, p in peers.items():
                    pcm = sine(freqs[k], 20, 6000, phase=2 * np.pi * freqs[k] * i * 0.02)
                    pt = 8 if codecs[k] == "PCMA" else 0
                    p.send(rtp_packet(i, i * 160, hash(k) & 0xFFFF, encode(codecs[k], pcm), pt=pt), ports[k])
                d = t0 + (i + 1) * 0.02 - time.monotonic()
                if d > 0:
                    time.sleep(d)

        def heard(k, n):
            """The middle n frames of what k heard while the others talked (the room sends
            silence frames before and after)."""
            pkts = p_all = peers[k].recv(None, timeout=1.5, idle=0.15)
            assert all(q.pt == (8 if codecs[k] == "PCMA" else 0) for q in p_all)
            loud = [q for q in pkts if np.abs(decode(codecs[k], q.payload)).max() > 1000]
            assert len(loud) >= n + 10, (k, len(loud), len(pkts))
            mid = len(loud) // 2
            return np.concatenate([decode(codecs[k], q.payload) for q in loud[mid - n // 2:mid + n // 2]])

        talk(75)
        for k, p in peers.items():
            x = heard(k, 24)
            own = power(x, freqs[k])
            for other, f in freqs.items():
                if other != k:
                    assert power(x, f) > 100 * own, (k, other)  # > 20 dB above its own voice
                    assert power(x, f) > 1e5
        engine.room_mute("m2", "a", True)
        for p in peers.values():
            p.drain()
        talk(40)
        x = heard("m1", 14)
        assert power(x, 1700.0) > 1e5 and power(x, 1100.0) < power(x, 1700.0) / 100
        engine.room_leave("m3", "a")
        assert engine.media_stats()["room_members"] == 2
        engine.room_delete(room)
        assert engine.media_stats()["rooms"] == 0
        with pytest.raises(NotFoundError):
            engine.room_delete(room)
    finally:
        for p in peers.values():
            p.close()


# ------------------------------------------------------------------ hostile input


def _rss_kb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def test_flood_and_garbage_stay_bounded(engine, peer):
    """A telephone-event flood, garbage and huge packets on a terminated leg: the relay keeps
    relaying another session, the event queue stays bounded, memory does not grow."""
    port = call(engine, peer, dtmf_pt=101, inband=True)
    engine.record("c1", "a", "/dev/null", max_ms=3600 * 1000)
    ev = Events(engine)
    ms2 = engine.allocate("c2")
    x, y = Peer(), Peer()
    try:
        engine.set_peer("c2", "a", LO, x.port)
        engine.set_peer("c2", "b", LO, y.port)
        rng = np.random.default_rng(7)
        rss0 = None
        relayed = 0
        for rnd in range(10):
            for i in range(1000):
                k = rnd * 1000 + i
                peer.send(rtp_packet(k, k * 7, 0xF100D, bytes([k % 16, 0x80 | 10, 0, 160]), pt=101), port)
                if i % 10 == 0:
                    peer.send(rng.bytes(int(rng.integers(1, 1400))), port)  # garbage
                    peer.send(bytes([0x90, 8, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0xFF, 0xFF]), port)  # bad ext
                    peer.send(rtp_packet(k, k * 2000, 0xB16, bytes(2000), pt=8), port)  # huge ptime
            x.send(rtp_packet(rnd, rnd * 160, 0xC2, b"\xd5" * 160), ms2.port_a)
            got = y.recv(1, timeout=1)
            relayed += len(got)
            ev.wait(lambda g: False, timeout=0.05)
            if rnd == 2:
                rss0 = _rss_kb()
        assert relayed == 10  # the other session was relayed throughout
        assert _rss_kb() - rss0 < 8 * 1024
        digits = ev.kinds("digit")
        # a human cannot dial 10,000 digits in a second: the flood is cut to one per 30 ms
        assert 0 < len(digits) < 2000
        st = engine.stats("c1")
        assert st["a"]["packets"] > 5000  # some overflowed the socket buffer, as they may
    finally:
        x.close()
        y.close()


def test_many_endpoints_share_one_prompt(engine):
    """1,000 players of one prompt: it is held once, each player is small, all are served."""
    engine.add_prompt("moh", pcm_bytes(sine(440, 2000)))
    sink = Peer()
    try:
        rss0 = _rss_kb()
        for i in range(100):
            k = f"k{i}"
            engine.allocate(k)
            engine.set_peer(k, "a", LO, sink.port)
            engine.terminate(k, "a")
            engine.play(k, "a", ["moh"], loop=True, start_ms=i * 20)
        assert engine.media_stats()["players"] == 100
        time.sleep(0.2)  # every player has sent ~10 packets: its state is in use
        grown = _rss_kb() - rss0  # before this test's own 1,000 received packet objects exist
        got = sink.recv(1000, timeout=3)
        assert len(got) == 1000
        assert len({p.ssrc for p in got}) == 100
        assert grown < 100 * 4  # < 4 KB per player beside the sessions
    finally:
        sink.close()


def test_room_mixes_only_the_loudest_three(engine):
    """Five talkers: a listener hears the three loudest others; quieter ones are left out."""
    freqs = [400.0, 700.0, 1000.0, 1300.0, 1600.0]
    amps = [8000, 6000, 4000, 1500, 1000]  # m3 and m4 are the quietest
    keys = [f"r{i}" for i in range(5)]
    listener = Peer()
    talkers = [Peer() for _ in keys]
    try:
        room = engine.room_create()
        ports = []
        for k, p in zip(keys, talkers):
            ms = engine.allocate(k)
            engine.set_peer(k, "a", LO, p.port)
            engine.terminate(k, "a")
            engine.room_join(room, k, "a")
            ports.append(ms.port_a)
        ms = engine.allocate("ear")
        engine.set_peer("ear", "a", LO, listener.port)
        engine.terminate("ear", "a")
        engine.room_join(room, "ear", "a")
        t0 = time.monotonic()
        for i in range(60):
            for j, p in enumerate(talkers):
                pcm = sine(freqs[j], 20, amps[j], phase=2 * np.pi * freqs[j] * i * 0.02)
                p.send(rtp_packet(i, i * 160, 0x700 + j, encode("PCMA", pcm)), ports[j])
            d = t0 + (i + 1) * 0.02 - time.monotonic()
            if d > 0:
                time.sleep(d)
        pkts = listener.recv(None, timeout=1.5, idle=0.15)
        loud = [q for q in pkts if np.abs(decode("PCMA", q.payload)).max() > 1000]
        assert len(loud) > 30
        x = np.concatenate([decode("PCMA", q.payload) for q in loud[10:30]])
        level = [power(x, f) for f in freqs]
        for j in (0, 1, 2):
            assert level[j] > 1e6, (j, level)
        for j in (3, 4):
            assert level[j] < level[2] / 1000, (j, level)  # not mixed at all
    finally:
        listener.close()
        for p in talkers:
            p.close()


# ------------------------------------------------------------------ G.722


def _g722():
    from hpbx._fast.relay import CODECS
    if "G722" not in CODECS:
        pytest.skip("built without spandsp (Debian libspandsp-dev): no G.722")
    from media_peer import G722
    try:
        return G722()
    except OSError as e:
        pytest.skip(str(e))


def test_g722_play_on_the_wire(engine, peer):
    ref = _g722()
    call(engine, peer, codec="G722")
    names = tone_prompts(engine)
    engine.play("c1", "a", names)
    pkts = peer.recv(45, timeout=5)
    assert len(pkts) == 45 and all(p.pt == 9 and len(p.payload) == 160 for p in pkts)
    assert all(((b.ts - a.ts) & 0xFFFFFFFF) == 160 for a, b in zip(pkts, pkts[1:]))  # RTP clock 8000
    assert [i for i, p in enumerate(pkts) if p.marker] == [0, 15, 30]
    heard = [dominant(ref.decode(p.payload), TONE_FREQS) for p in pkts]  # the reference decoder
    assert heard == [500.0] * 15 + [1200.0] * 15 + [2000.0] * 15


def test_g722_record_and_inband_digits(engine, peer, tmp_path):
    ref = _g722()
    port = call(engine, peer, codec="G722", dtmf_pt=None, inband=True)
    ev = Events(engine)
    path = str(tmp_path / "g.wav")
    engine.record("c1", "a", path, max_ms=60000)
    audio = np.concatenate([sine(f, 200, 6000) for f in REC_FREQS] + [dtmf_pcm("73#")])
    enc = ref.encode(audio)
    pkts = [rtp_packet(i, 160 * i, 0x722, enc[160 * i:160 * i + 160], pt=9) for i in range(len(enc) // 160)]
    send_paced(peer, port, pkts)
    wait_rx(engine, "c1", len(pkts))
    engine.stop_record("c1", "a")
    done = _wait_record(ev)
    ev.wait(lambda g: len(ev.kinds("digit")) >= 3)
    assert [d.data["digit"] for d in ev.kinds("digit")] == ["7", "3", "#"]
    rate, x = read_wav(path)
    assert len(x) == 160 * len(pkts) and done.data["ms"] == 20 * len(pkts)
    for k, f in enumerate(REC_FREQS):  # 200 ms each, decoded by hpbx's G.722 decoder
        seg = x[1600 * k + 160:1600 * (k + 1) - 160]
        assert dominant(seg, REC_FREQS) == f


def test_g722_member_in_a_room(engine):
    ref = _g722()
    a, g = Peer(), Peer()
    try:
        room = engine.room_create()
        for k, p, codec in (("pa", a, "PCMA"), ("pg", g, "G722")):
            engine.allocate(k)
            engine.set_peer(k, "a", LO, p.port)
            engine.terminate(k, "a", codec=codec)
            engine.room_join(room, k, "a")
        port_a = engine.get("pa").port_a
        t0 = time.monotonic()
        for i in range(50):
            a.send(rtp_packet(i, 160 * i, 0xA, encode("PCMA", sine(900, 20, 6000, 2 * np.pi * 900 * i * 0.02))),
                   port_a)
            d = t0 + (i + 1) * 0.02 - time.monotonic()
            if d > 0:
                time.sleep(d)
        pkts = g.recv(None, timeout=1.5, idle=0.15)
        assert pkts and all(p.pt == 9 for p in pkts)
        x = np.concatenate([ref.decode(p.payload) for p in pkts])
        assert power(x, 900.0) > 1e5  # the G.722 member hears the PCMA member
    finally:
        a.close()
        g.close()


def test_close_with_everything_running(io, tmp_path):
    """Closing the engine while players, recorders and a room run: no crash, files complete."""
    e = MediaEngine(LO, 42000, 42999, workers=2, io=io)
    e.start()
    sink = Peer()
    try:
        e.add_prompt("p", pcm_bytes(sine(440, 1000)))
        room = e.room_create()
        paths = []
        for i in range(6):
            k = f"k{i}"
            e.allocate(k)
            e.set_peer(k, "a", LO, sink.port)
            e.terminate(k, "a")
            e.play(k, "a", ["p"], loop=True)
            paths.append(str(tmp_path / f"r{i}.wav"))
            e.record(k, "a", paths[-1], max_ms=60000)
            if i % 2:
                e.room_join(room, k, "a")
        assert len(sink.recv(60, timeout=3)) == 60
        time.sleep(0.3)  # the recorders fill silence by the clock
        e.close()
        e.close()  # idempotent
        for p in paths:
            rate, x = read_wav(p)  # a valid WAV header was written at close
            assert rate == 8000 and len(x) > 0
    finally:
        sink.close()
