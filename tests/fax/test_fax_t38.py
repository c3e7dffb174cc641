"""T.38 in the native fax endpoint: spandsp's t38_terminal over hpbx's own UDPTL framing
(hpbx/_fast/udptl.h) in the relay's workers. Two endpoints of one engine exchange a real 2-page
fax as UDPTL datagrams on loopback (pages compared bit for bit), through a lossy proxy (the
redundancy recovers the lost IFPs), with garbage datagrams injected from the latched source (the
terminal survives, the fax still passes), a switch from audio to T.38 mid-call; the UDPTL codec
is fuzzed."""
import random
import select
import socket
import threading
import time

import pytest

from faxpages import fax_engine, wait_events, fax_page, make_tiff, read_tiff, similarity
from hpbx._fast.relay import udptl_decode_packet, udptl_encode_packet

LO = "127.0.0.1"
pytestmark = pytest.mark.fax


@pytest.fixture
def engine():
    yield from fax_engine(43200, 43399)


class Proxy:
    """UDP between the two endpoints: rx <-> socket A, socket B <-> tx. Drops every ``drop``-th
    datagram each way and sends ``garbage`` random datagrams after each forwarded one (from
    socket A, the source rx has latched). Bounded by ``seconds``."""

    def __init__(self, rx_port, tx_port, drop=0, garbage=0, seconds=150, mode="frame"):
        self.a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.a.bind((LO, 0))
        self.b.bind((LO, 0))
        self.rx, self.tx = (LO, rx_port), (LO, tx_port)
        self.drop, self.garbage, self.seconds, self.mode = drop, garbage, seconds, mode
        self.to_rx = self.dropped = self.junk = self.to_tx = self.dropped_to_tx = 0
        self.low_byte_rtcp_range = 0  # forwarded datagrams whose second byte is 64-95
        self.stop = False
        self.rng = random.Random(15)
        self.t = threading.Thread(target=self.run, daemon=True)

    def run(self):
        end = time.monotonic() + self.seconds
        while not self.stop and time.monotonic() < end:
            r, _, _ = select.select([self.a, self.b], [], [], 0.2)
            for s in r:
                data, _ = s.recvfrom(2048)
                if s is self.a:
                    self.to_tx += 1
                    if self.drop and self.to_tx % self.drop == 0:
                        self.dropped_to_tx += 1
                        continue
                    self.b.sendto(data, self.tx)
                    continue
                self.to_rx += 1
                if self.drop and self.to_rx % self.drop == 0:
                    self.dropped += 1
                    continue
                if len(data) >= 2 and 64 <= (data[1] & 0x7f) <= 95:
                    self.low_byte_rtcp_range += 1
                self.a.sendto(data, self.rx)
                for _ in range(self.garbage):
                    self.a.sendto(self.junk_datagram(data), self.rx)
                    self.junk += 1

    def junk_datagram(self, data):
        """mode "frame": datagrams hpbx's UDPTL decoder must refuse (random bytes, or the real
        sequence number followed by a broken body). mode "ifp": well-framed UDPTL whose IFP
        is random, at random sequence numbers (reaches spandsp's T.38 core)."""
        rng = self.rng
        while True:
            if self.mode == "ifp":
                return udptl_encode_packet(rng.randrange(65536),
                                           bytes(rng.randrange(256) for _ in range(rng.randrange(1, 60))))
            n = rng.randrange(0, 300)
            junk = bytes(rng.randrange(256) for _ in range(n))
            if n > 4 and rng.random() < 0.5:
                junk = data[:2] + junk[2:]
            if udptl_decode_packet(junk) is None:
                return junk

    def close(self):
        self.stop = True
        self.t.join(5)
        self.a.close()
        self.b.close()


def t38_pair(engine, proxy_kw=None):
    rx, tx = engine.allocate("rx"), engine.allocate("tx")
    proxy = None
    if proxy_kw is not None:
        proxy = Proxy(rx.port_a, tx.port_a, **proxy_kw)
        engine.set_peer("rx", "a", LO, proxy.a.getsockname()[1])
        engine.set_peer("tx", "a", LO, proxy.b.getsockname()[1])
        proxy.t.start()
    else:
        engine.set_peer("rx", "a", LO, tx.port_a)
        engine.set_peer("tx", "a", LO, rx.port_a)
    engine.terminate("rx", "a", codec="PCMA", dtmf_pt=None)
    engine.terminate("tx", "a", codec="PCMA", dtmf_pt=None)
    return proxy


def run_fax(engine, tmp_path, *, proxy_kw=None, switch=False, ecm=True):
    pages = [fax_page(7), fax_page(8)]
    src = make_tiff(tmp_path, pages)
    got = []
    engine.on_event = got.append
    proxy = t38_pair(engine, proxy_kw)
    out = str(tmp_path / "rx.tif")
    try:
        if switch:
            engine.fax_receive("rx", "a", out, ident="+41 44 555 3000", ecm=ecm)  # audio first
            time.sleep(0.5)
        rid = engine.fax_receive("rx", "a", out, ident="+41 44 555 3000", ecm=ecm, t38=True)
        engine.fax_send("tx", "a", src, ident="+41 31 111 2222", ecm=ecm, t38=True)
        wait_events(engine, got, lambda g: len([e for e in g if e.kind == "fax_done"]) >= 2, 150)
    finally:
        if proxy:
            proxy.close()
    done = [e for e in got if e.kind == "fax_done"]
    assert sorted(e.key for e in done) == ["rx", "tx"], got  # one each: the switch posts none
    r = next(e.data for e in done if e.key == "rx")
    s = next(e.data for e in done if e.key == "tx")
    assert r["ok"] and s["ok"], (r, s)
    assert r["id"] == rid and r["t38"] and s["t38"]
    assert r["pages"] == 2 and s["pages"] == 2
    assert r["remote_ident"] == "+41 31 111 2222" and s["remote_ident"] == "+41 44 555 3000"
    assert r["bit_rate"] == 14400 and r["ecm"] == ecm
    recv = read_tiff(out, tmp_path)
    assert len(recv) == 2
    for sent, page in zip(pages, recv):
        assert similarity(sent, page["bits"]) > 0.999
    assert similarity(pages[0], recv[1]["bits"]) < 0.99
    return r, s, proxy


def test_two_pages_over_t38(engine, tmp_path):
    r, s, _ = run_fax(engine, tmp_path)
    # sequence numbers 64-95 (second byte in RTCP's range, which the RTP/RTCP demultiplexing
    # test dropped) were among them, all decoded, none lost
    assert r["udptl_rx"] > 100, r
    assert r["udptl_bad"] == 0 and r["udptl_recovered"] == 0
    assert engine.stats("rx")["a"]["udptl"]


def test_t38_through_loss_recovers_from_redundancy(engine, tmp_path):
    r, s, proxy = run_fax(engine, tmp_path, proxy_kw={"drop": 10})  # 10 % loss each way
    assert proxy.dropped >= 15 and proxy.dropped_to_tx >= 3, (proxy.dropped, proxy.dropped_to_tx)
    assert s["udptl_recovered"] >= 1
    # (a datagram lost at the very end, after which nothing came, cannot be recovered)
    assert r["udptl_recovered"] >= proxy.dropped * 0.5, (r, proxy.dropped)
    assert proxy.low_byte_rtcp_range > 0


def test_t38_garbage_framing_is_refused_and_the_fax_passes(engine, tmp_path):
    r, _, proxy = run_fax(engine, tmp_path, proxy_kw={"garbage": 2}, ecm=False)
    assert proxy.junk > 300
    # (junk arriving after the receiver ended is not looked at)
    assert r["udptl_bad"] >= proxy.junk * 0.9, (r["udptl_bad"], proxy.junk)


def test_t38_garbage_ifps_do_not_crash_the_terminal(engine, tmp_path):
    """Well-framed UDPTL with random IFPs from the peer reaches spandsp's T.38 core: the fax may
    fail, but both terminals end (fax_done) and the engine then carries a clean T.38 fax."""
    src = make_tiff(tmp_path, [fax_page(9)])
    got = []
    engine.on_event = got.append
    proxy = t38_pair(engine, {"garbage": 3, "mode": "ifp", "seconds": 12})
    try:
        engine.fax_receive("rx", "a", str(tmp_path / "g.tif"), t38=True)
        engine.fax_send("tx", "a", src, t38=True)
        time.sleep(10)
    finally:
        proxy.close()
    assert proxy.junk > 100
    for key in ("rx", "tx"):
        if not any(e.kind == "fax_done" and e.key == key for e in got):
            engine.fax_stop(key, "a")
    wait_events(engine, got, lambda g: len([e for e in g if e.kind == "fax_done"]) >= 2, 10)
    assert sorted(e.key for e in got if e.kind == "fax_done") == ["rx", "tx"]
    engine.delete("rx")
    engine.delete("tx")
    run_fax(engine, tmp_path)  # the same engine, its workers unharmed


def test_audio_fax_switches_to_t38(engine, tmp_path):
    r, _, _ = run_fax(engine, tmp_path, switch=True)
    assert r["t38"]


def test_udptl_codec_round_trip_and_fuzz():
    rng = random.Random(1515)
    for i in range(3000):
        ifp = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400)))
        secs = [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
                for _ in range(rng.randrange(0, 4))]
        pkt = udptl_encode_packet(i, ifp, secs)
        seq, got, gsecs = udptl_decode_packet(pkt)
        assert seq == i and got == ifp and gsecs == secs
        # every truncation is refused; mutations never crash and decode within the datagram
        cut = rng.randrange(0, len(pkt))
        assert udptl_decode_packet(pkt[:cut]) is None
        m = bytearray(pkt)
        for _ in range(rng.randrange(1, 6)):
            m[rng.randrange(len(m))] = rng.randrange(256)
        res = udptl_decode_packet(bytes(m))
        if res is not None:
            assert len(res[1]) + sum(map(len, res[2])) <= len(m)
    for _ in range(20000):
        udptl_decode_packet(bytes(rng.randrange(256) for _ in range(rng.randrange(0, 64))))
    assert udptl_encode_packet(1, b"") is None and udptl_encode_packet(1, b"x" * 513) is None
    # too many secondaries for the room: the oldest are left out, the packet stays valid
    pkt = udptl_encode_packet(9, b"p" * 100, [b"a" * 100, b"b" * 100, b"c" * 100], cap=272)
    assert len(pkt) <= 272 and udptl_decode_packet(pkt) == (9, b"p" * 100, [b"a" * 100])
    # a known datagram (seq 0x1234, IFP 02 01, two secondaries) in T.38's aligned PER
    assert udptl_encode_packet(0x1234, b"\x02\x01", [b"\x03", b"\x04\x05"]).hex() == "123402020100020103020405"
