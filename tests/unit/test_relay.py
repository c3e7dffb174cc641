"""The compiled relay with real UDP sockets on loopback: relaying, latching, stats, pool, threads."""
import os
import socket
import struct
import time

import pytest

from hpbx._fast.relay import Relay
from hpbx.errors import RelayError

LO = "127.0.0.1"
# A range of its own, away from the server's default 20000-29999.
PORT_MIN, PORT_MAX = 41000, 41199


def _uring_usable():
    try:
        Relay(LO, PORT_MIN, PORT_MAX, workers=1, io="uring").close()
        return ""
    except RelayError as e:
        return str(e)


_NO_URING = _uring_usable()


@pytest.fixture(params=["uring", "epoll"])
def io(request):
    """Both packet loops run every behaviour test; io_uring is skipped (with the kernel's
    reason) where it cannot be set up, e.g. under a seccomp filter that blocks it."""
    if request.param == "uring" and _NO_URING:
        pytest.skip(f"io_uring unusable here: {_NO_URING}")
    return request.param


def rtp(seq, ts, ssrc=0x1234, pt=0, payload=b"\xff" * 160, marker=0):
    return struct.pack("!BBHII", 0x80, (marker << 7) | pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc) + payload


def rtcp_sr(ssrc=0x1234):
    # RTCP sender report header (PT 200), length 6 words, then 24 bytes of sender info
    return struct.pack("!BBHI", 0x80, 200, 6, ssrc) + bytes(20)


class Peer:
    """A phone end: an RTP socket and an RTCP socket (RTP + 1 when free) on loopback."""

    def __init__(self, host=LO):
        self.rtp = self._sock(host, 0)
        self.rtcp = self._sock(host, 0)

    @staticmethod
    def _sock(host, port):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((host, port))
        s.settimeout(1.0)
        return s

    @property
    def addr(self):
        return self.rtp.getsockname()

    @property
    def rtcp_port(self):
        return self.rtcp.getsockname()[1]

    def close(self):
        self.rtp.close()
        self.rtcp.close()


def recv(sock, timeout=1.0):
    sock.settimeout(timeout)
    return sock.recvfrom(4096)


def nothing(sock, wait=0.15):
    sock.settimeout(wait)
    try:
        data, src = sock.recvfrom(4096)
    except socket.timeout:
        return True
    raise AssertionError(f"unexpected datagram from {src}: {data[:16]!r}")


def wait_for(pred, timeout=2.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.01)
    return pred()


@pytest.fixture
def peers():
    made = []

    def make(host=LO):
        p = Peer(host)
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()


@pytest.fixture
def relay(io):
    r = Relay(LO, PORT_MIN, PORT_MAX, workers=2, silence=2.0, io=io)
    r.start()
    total = r.total_pairs()
    yield r
    if not r.closed:
        # every test leaves the pool full again
        for h in r.sessions():
            r.delete(h)
        assert r.free_pairs() == total
        assert r.used_pairs() == 0
        r.close()


def call(relay, a, b, a_sdp=None):
    """A session whose leg A expects peer a (or the given SDP address) and leg B peer b."""
    h = relay.allocate()
    host, port = a_sdp or a.addr
    relay.set_peer(h, "a", host, port, rtcp_port=a.rtcp_port if a_sdp is None else 0)
    relay.set_peer(h, "b", *b.addr, rtcp_port=b.rtcp_port)
    pa, pb = relay.ports(h)
    return h, pa, pb


def test_allocate_gives_even_rtp_ports_from_the_pool(relay):
    total = relay.total_pairs()
    assert total == (PORT_MAX - PORT_MIN + 1) // 2
    h = relay.allocate()
    pa, pb = relay.ports(h)
    assert pa % 2 == 0 and pb % 2 == 0 and pa != pb
    assert PORT_MIN <= pa < PORT_MAX and PORT_MIN <= pb < PORT_MAX
    st = relay.stats(h)
    assert st["a"]["rtcp_port"] == pa + 1 and st["b"]["rtcp_port"] == pb + 1
    assert relay.free_pairs() == total - 2 and relay.used_pairs() == 2
    # the ports are really bound by the relay
    with pytest.raises(OSError):
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM).bind((LO, pa + 1))
    relay.delete(h)
    assert relay.free_pairs() == total


def test_relays_both_ways_and_payload_unchanged(relay, peers):
    a, b = peers(), peers()
    h, pa, pb = call(relay, a, b)
    pkts = [rtp(i, i * 160, payload=os.urandom(160)) for i in range(5)]
    for p in pkts:
        a.rtp.sendto(p, (LO, pa))
    got = [recv(b.rtp) for _ in pkts]
    assert [d for d, _ in got] == pkts
    assert all(src == (LO, pb) for _, src in got)  # B sees the relay's B-leg port
    back = rtp(7, 1120, ssrc=0x9999)
    b.rtp.sendto(back, (LO, pb))
    data, src = recv(a.rtp)
    assert data == back and src == (LO, pa)
    st = relay.stats(h)
    assert st["a"]["packets"] == 5 and st["a"]["bytes"] == 5 * 172
    assert st["b"]["packets"] == 1 and st["b"]["ssrc"] == 0x9999


def test_rfc4733_telephone_events_pass_through_unchanged(relay, peers):
    a, b = peers(), peers()
    h, pa, pb = call(relay, a, b)
    # DTMF "5": event 5, end bit on the last three, volume 10, duration growing; same timestamp
    events = [rtp(100 + i, 8000, pt=101, marker=int(i == 0),
                  payload=struct.pack("!BBH", 5, (0x80 if i >= 3 else 0) | 10, 160 * (i + 1)))
              for i in range(6)]
    for e in events:
        a.rtp.sendto(e, (LO, pa))
    assert [recv(b.rtp)[0] for _ in events] == events


def test_latching_sends_to_the_real_source_not_the_private_sdp_address(relay, peers):
    a, b = peers(), peers()
    # A's SDP names an address it cannot be reached at (its private address behind NAT);
    # 127.0.0.2 stands in for it and nothing listens there
    h, pa, pb = call(relay, a, b, a_sdp=("127.0.0.2", 40000))
    assert relay.stats(h)["a"]["peer"] == ("127.0.0.2", 40000)
    a.rtp.sendto(rtp(1, 160), (LO, pa))
    recv(b.rtp)
    st = relay.stats(h)["a"]
    assert st["latched"] and st["peer"] == a.addr and st["sdp_peer"] == ("127.0.0.2", 40000)
    b.rtp.sendto(rtp(1, 160, ssrc=7), (LO, pb))
    data, src = recv(a.rtp)
    assert src == (LO, pa) and data[8:12] == struct.pack("!I", 7)


def test_second_source_is_ignored_until_relatch(relay, peers):
    a, b, attacker = peers(), peers(), peers()
    h, pa, pb = call(relay, a, b)
    a.rtp.sendto(rtp(1, 160), (LO, pa))
    recv(b.rtp)
    attacker.rtp.sendto(rtp(99, 0, ssrc=0xBAD), (LO, pa))
    assert nothing(b.rtp)
    b.rtp.sendto(rtp(1, 160, ssrc=2), (LO, pb))
    recv(a.rtp)  # B's media still goes to A ...
    assert nothing(attacker.rtp)  # ... and not to the attacker
    assert relay.stats(h)["a"]["dropped_source"] == 1
    # a re-INVITE: the phone moved, the next source is the new peer
    relay.relatch(h, "a")
    attacker.rtp.sendto(rtp(100, 160, ssrc=0xBAD), (LO, pa))
    recv(b.rtp)
    b.rtp.sendto(rtp(2, 320, ssrc=2), (LO, pb))
    recv(attacker.rtp)
    assert nothing(a.rtp)
    st = relay.stats(h)["a"]
    assert st["peer"] == attacker.addr and st["relatched"] == 0  # relatch by command, not silence


def test_new_source_accepted_after_the_old_one_fell_silent(peers, io):
    a, b, moved = peers(), peers(), peers()
    with Relay(LO, PORT_MIN, PORT_MAX, workers=1, silence=0.6, io=io) as r:
        h, pa, pb = call(r, a, b)
        a.rtp.sendto(rtp(1, 160), (LO, pa))
        recv(b.rtp)
        moved.rtp.sendto(rtp(2, 320), (LO, pa))
        assert nothing(b.rtp, 0.1)  # still talking: hijack refused
        time.sleep(0.65)
        moved.rtp.sendto(rtp(3, 480), (LO, pa))
        recv(b.rtp)
        st = r.stats(h)["a"]
        assert st["peer"] == moved.addr and st["relatched"] == 1 and st["dropped_source"] == 1
        r.delete(h)


def test_strict_latching_accepts_only_the_sdp_address(peers, io):
    a, b, other = peers(), peers(), peers()
    with Relay(LO, PORT_MIN, PORT_MAX, workers=1, strict_latching=True, silence=0.0, io=io) as r:
        h = r.allocate()
        pa, pb = r.ports(h)
        r.set_peer(h, "b", *b.addr, rtcp_port=b.rtcp_port)
        a.rtp.sendto(rtp(1, 160), (LO, pa))
        assert nothing(b.rtp)  # no SDP address for A yet: nothing is accepted
        r.set_peer(h, "a", *a.addr, rtcp_port=a.rtcp_port)
        other.rtp.sendto(rtp(2, 320), (LO, pa))
        assert nothing(b.rtp)  # not even after silence (silence = 0)
        a.rtp.sendto(rtp(3, 480), (LO, pa))
        assert recv(b.rtp)[0][2:4] == b"\x00\x03"
        st = r.stats(h)["a"]
        assert st["dropped_source"] == 2 and st["packets"] == 1
        r.delete(h)
        assert r.free_pairs() == r.total_pairs()


def test_loss_is_counted_from_a_sequence_gap(relay, peers):
    a, b = peers(), peers()
    h, pa, pb = call(relay, a, b)
    seqs = [s for s in range(65530, 65530 + 30) if not (65538 <= s < 65543)]  # wraps, 5 missing
    for s in seqs:
        a.rtp.sendto(rtp(s, s * 160), (LO, pa))
    for _ in seqs:
        recv(b.rtp)
    st = relay.stats(h)["a"]
    assert st["packets"] == 25
    assert st["expected"] == 30 and st["lost"] == 5


def test_jitter_from_a_known_timing_pattern(relay, peers):
    a, b = peers(), peers()
    h, pa, pb = call(relay, a, b)
    # 40 packets sent back to back whose timestamps claim 20 ms spacing: every transit
    # difference is 160 units, so J converges to 160 * (1 - (15/16)**39) ~ 147 (RFC 3550 A.8)
    for i in range(40):
        a.rtp.sendto(rtp(i, i * 160), (LO, pa))
    for _ in range(40):
        recv(b.rtp)
    st = relay.stats(h)["a"]
    assert 135 <= st["jitter"] <= 160, st["jitter"]
    assert st["jitter_ms"] == pytest.approx(st["jitter"] / 8, abs=0.2)
    # paced packets whose timestamps match their real spacing: low jitter (a new SSRC restarts it)
    for i in range(15):
        b.rtp.sendto(rtp(i, i * 80, ssrc=0x77), (LO, pb))
        time.sleep(0.01)
    for _ in range(15):
        recv(a.rtp)
    sb = relay.stats(h)["b"]
    assert sb["jitter"] < 60, sb["jitter"]  # < 7.5 ms: only the sleeps' scheduling noise
    assert sb["lost"] == 0 and sb["expected"] == 15


def test_last_packet_time_and_media_timeout_unless_on_hold(relay, peers):
    a, b = peers(), peers()
    h, pa, pb = call(relay, a, b)
    h2, _, _ = call(relay, a, b)
    t0 = time.monotonic()
    a.rtp.sendto(rtp(1, 160), (LO, pa))
    recv(b.rtp)
    last = relay.stats(h)["a"]["last_packet"]
    assert t0 <= last <= time.monotonic()
    assert relay.stats(h)["b"]["last_packet"] is None
    assert relay.timed_out(0.5) == []
    time.sleep(0.55)
    assert sorted(relay.timed_out(0.5)) == sorted([h, h2])
    relay.set_hold(h, True)
    assert relay.timed_out(0.5) == [h2]
    relay.set_hold(h, False)
    b.rtp.sendto(rtp(1, 160), (LO, pb))  # media again: no longer timed out
    recv(a.rtp)
    assert relay.timed_out(0.5) == [h2]


def test_rtcp_is_relayed_between_rtcp_ports(relay, peers):
    a, b = peers(), peers()
    h, pa, pb = call(relay, a, b)
    sr = rtcp_sr()
    a.rtcp.sendto(sr, (LO, pa + 1))
    data, src = recv(b.rtcp)
    assert data == sr and src == (LO, pb + 1)
    b.rtcp.sendto(rtcp_sr(0x55), (LO, pb + 1))
    data, src = recv(a.rtcp)
    assert src == (LO, pa + 1)
    st = relay.stats(h)
    assert st["a"]["rtcp_packets"] == 1 and st["a"]["packets"] == 0
    assert st["b"]["rtcp_packets"] == 1


def test_rtcp_mux(relay, peers):
    a, b = peers(), peers()
    h = relay.allocate()
    pa, pb = relay.ports(h)
    relay.set_peer(h, "a", *a.addr, rtcp_mux=True)
    relay.set_peer(h, "b", *b.addr, rtcp_port=b.rtcp_port)
    assert relay.stats(h)["a"]["rtcp_port"] == pa
    # A muxes: RTCP arrives on A's RTP port and leaves B's RTCP port for B's RTCP address
    a.rtp.sendto(rtp(1, 160), (LO, pa))
    a.rtp.sendto(rtcp_sr(), (LO, pa))
    assert recv(b.rtp)[1] == (LO, pb)
    data, src = recv(b.rtcp)
    assert data == rtcp_sr() and src == (LO, pb + 1)
    # B's RTCP goes to A's RTP address, out of A's RTP port
    b.rtcp.sendto(rtcp_sr(0x42), (LO, pb + 1))
    data, src = recv(a.rtp)
    assert data == rtcp_sr(0x42) and src == (LO, pa)
    st = relay.stats(h)["a"]
    assert st["packets"] == 1 and st["rtcp_packets"] == 1


def test_no_packets_before_the_other_side_has_an_address(relay, peers):
    a = peers()
    h = relay.allocate()
    pa, _ = relay.ports(h)
    a.rtp.sendto(rtp(1, 160), (LO, pa))
    assert wait_for(lambda: relay.stats(h)["a"]["dropped_nopeer"] == 1)


@pytest.mark.parametrize("host,port,why", [
    ("224.0.0.1", 4000, "multicast"),
    ("255.255.255.255", 4000, "broadcast"),
    ("127.0.0.1", 0, "port"),
    ("127.0.0.1", 70000, "port"),
    ("phone.example", 4000, "not a numeric IP"),
    ("0.0.0.0", 4000, "unspecified"),
    ("::1", 4000, "family"),
])
def test_garbage_peers_are_refused(relay, host, port, why):
    h = relay.allocate()
    with pytest.raises(RelayError, match=why):
        relay.set_peer(h, "a", host, port)
    assert relay.stats(h)["a"]["peer"] is None


def test_unknown_and_deleted_sessions_are_refused(relay):
    h = relay.allocate()
    relay.delete(h)
    with pytest.raises(RelayError, match="unknown relay session"):
        relay.stats(h)
    with pytest.raises(RelayError, match="unknown relay session"):
        relay.delete(h)
    with pytest.raises(RelayError, match="leg must be"):
        relay.relatch(relay.allocate(), "c")


def test_delete_frees_ports_and_pool_runs_out_cleanly(io):
    with Relay(LO, 41300, 41311, workers=1, io=io) as r:  # 6 pairs = 3 sessions
        assert r.total_pairs() == 6
        hs = [r.allocate() for _ in range(3)]
        assert r.free_pairs() == 0
        with pytest.raises(RelayError, match="no free RTP port pair in 41300-41311"):
            r.allocate()
        used = {p for h in hs for p in r.ports(h)}
        for h in hs:
            r.delete(h)
        assert r.free_pairs() == 6 and r.used_pairs() == 0
        for p in used:  # really closed: the ports can be bound again
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((LO, p))
            s.close()
        # freed pairs go to the back of the queue, so late packets of an ended call do not
        # reach the next one
        first = r.allocate()
        first_ports = set(r.ports(first))
        r.delete(first)
        second = r.allocate()
        assert first_ports.isdisjoint(r.ports(second))
        r.delete(second)


def test_ports_held_by_another_program_are_skipped():
    squatter = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    squatter.bind((LO, 41401))  # RTCP port of the first pair
    try:
        with Relay(LO, 41400, 41409, workers=1) as r:
            h = r.allocate()
            assert 41400 not in r.ports(h)
            r.delete(h)
            assert r.free_pairs() == r.total_pairs() == 5
    finally:
        squatter.close()


def threads_gone(tids, timeout: float = 2.0) -> bool:
    """The joined threads' /proc/self/task entries are gone. pthread_join returns once the
    kernel has cleared the thread's tid (CLONE_CHILD_CLEARTID, in its exit path); the task
    entry itself goes a moment later, when the exiting thread is released — so poll briefly."""
    deadline = time.monotonic() + timeout
    while any(os.path.exists(f"/proc/self/task/{t}") for t in tids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def test_close_joins_threads_and_closes_sockets(peers, io):
    r = Relay(LO, PORT_MIN, PORT_MAX, workers=3, io=io)
    r.start()
    tids = r.thread_ids()
    assert len(tids) == 3
    assert all(os.path.exists(f"/proc/self/task/{t}") for t in tids)
    h = r.allocate()
    pa, pb = r.ports(h)
    r.close()
    assert r.closed
    assert threads_gone(tids)
    for p in (pa, pa + 1, pb, pb + 1):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((LO, p))
        s.close()
    with pytest.raises(RelayError, match="closed"):
        r.allocate()
    r.close()  # twice is harmless


def test_bad_construction_is_refused():
    with pytest.raises(RelayError, match="port range"):
        Relay(LO, 5000, 70000)
    with pytest.raises(RelayError, match="holds no session"):
        Relay(LO, 41500, 41502)
    with pytest.raises(RelayError, match="cannot create relay"):
        Relay("not-an-ip", 41500, 41599)


def test_ipv6_relay_both_ways(io):
    try:
        a = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        a.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback in this environment")
    b = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    b.bind(("::1", 0))
    a.settimeout(1.0)
    b.settimeout(1.0)
    try:
        with Relay("::1", 41900, 41919, workers=1, io=io) as r:
            h = r.allocate()
            pa, pb = r.ports(h)
            r.set_peer(h, "a", "::1", a.getsockname()[1])
            r.set_peer(h, "b", "::1", b.getsockname()[1])
            with pytest.raises(RelayError, match="family"):
                r.set_peer(h, "a", "127.0.0.1", 4000)
            with pytest.raises(RelayError, match="multicast"):
                r.set_peer(h, "a", "ff02::1", 4000)
            a.sendto(rtp(1, 160), ("::1", pa))
            assert b.recvfrom(2048)[1][:2] == ("::1", pb)
            b.sendto(rtp(1, 160, ssrc=9), ("::1", pb))
            assert a.recvfrom(2048)[1][:2] == ("::1", pa)
            assert r.stats(h)["b"]["peer"] == ("::1", b.getsockname()[1])
            r.delete(h)
    finally:
        a.close()
        b.close()


def test_a_burst_is_relayed_completely(peers, io):
    # more datagrams than one wakeup reads (RL_ROUNDS x RL_BATCH = 128): the edge-triggered
    # socket must be re-armed, or the rest would wait for the next packet
    a, b = peers(), peers()
    b.rtp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    with Relay(LO, PORT_MIN, PORT_MAX, workers=1, rcvbuf=4 << 20, io=io) as r:
        h, pa, pb = call(r, a, b)
        n = 600
        for i in range(n):
            a.rtp.sendto(rtp(i, i * 160), (LO, pa))
        got = 0
        while got < n:
            recv(b.rtp, 2.0)
            got += 1
        st = r.stats(h)["a"]
        assert st["packets"] == n and st["lost"] == 0
        r.delete(h)


def test_a_queue_larger_than_the_receive_buffers_is_relayed_completely(peers, io):
    # 1500 datagrams wait in the socket before the workers start: io_uring's multishot receive
    # runs out of its 1024 ring buffers on the first read and must be re-armed once sends
    # have given buffers back; epoll must report the data already queued when it is added
    a, b = peers(), peers()
    b.rtp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    r = Relay(LO, PORT_MIN, PORT_MAX, workers=1, rcvbuf=4 << 20, io=io)
    try:
        h, pa, pb = call(r, a, b)
        n = 1500
        for i in range(n):
            a.rtp.sendto(rtp(i, i * 160), (LO, pa))
        r.start()
        seqs = []
        while len(seqs) < n:
            data, src = recv(b.rtp, 2.0)
            assert src == (LO, pb)
            seqs.append(struct.unpack("!H", data[2:4])[0])
        assert seqs == list(range(n))  # complete and in order
        st = r.stats(h)["a"]
        assert st["packets"] == n and st["lost"] == 0 and st["send_errors"] == 0
        r.delete(h)
    finally:
        r.close()


def test_delete_under_traffic_frees_the_ports_at_once(io):
    # with io_uring the kernel holds each socket in a receive until the worker cancels it:
    # delete must wait for that, or the port would still be bound when it returns
    with Relay(LO, 41300, 41311, workers=2, io=io) as r:
        sessions = _drive(r, 3)
        for seq in range(20):
            for _, a, b, pa, pb in sessions:
                a.sendto(rtp(seq, seq * 160), (LO, pa))
                b.sendto(rtp(seq, seq * 160), (LO, pb))
        assert wait_for(lambda: all(r.stats(h)["a"]["packets"] > 0 for h, *_ in sessions))
        for h, a, b, pa, pb in sessions:
            for seq in range(20, 30):
                a.sendto(rtp(seq, seq * 160), (LO, pa))  # still arriving during the delete
            r.delete(h)
            for p in (pa, pa + 1, pb, pb + 1):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.bind((LO, p))
                s.close()
            a.close()
            b.close()
        assert r.free_pairs() == r.total_pairs()
        assert len({r.allocate() for _ in range(3)}) == 3  # the pool serves them again


def test_io_mode_choice():
    with pytest.raises(RelayError, match="io must be one of auto, epoll, uring"):
        Relay(LO, PORT_MIN, PORT_MAX, io="poll")
    r = Relay(LO, PORT_MIN, PORT_MAX, io="epoll")
    assert r.io == "epoll"
    r.close()
    r = Relay(LO, PORT_MIN, PORT_MAX)
    assert r.io == ("epoll" if _NO_URING else "uring")  # auto prefers io_uring
    r.close()


def test_worker_priority():
    with pytest.raises(RelayError, match="nice"):
        Relay(LO, PORT_MIN, PORT_MAX, nice=-21)
    r = Relay(LO, PORT_MIN, PORT_MAX, workers=2, nice=-3)
    try:
        r.start()
    except RelayError as e:
        r.close()
        assert "nice -3" in str(e)
        pytest.skip(f"no CAP_SYS_NICE here: {e}")
    try:
        tids = r.thread_ids()
        assert len(tids) == 2
        assert all(os.getpriority(os.PRIO_PROCESS, t) == -3 for t in tids)
        assert os.getpriority(os.PRIO_PROCESS, 0) != -3  # the caller keeps its own
    finally:
        r.close()


def _drive(relay, n_sessions):
    """Sessions with both legs' peers set, and a sender for each side."""
    out = []
    for _ in range(n_sessions):
        h = relay.allocate()
        a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for s in (a, b):
            s.bind((LO, 0))
            s.setblocking(False)
        relay.set_peer(h, "a", *a.getsockname())
        relay.set_peer(h, "b", *b.getsockname())
        pa, pb = relay.ports(h)
        out.append((h, a, b, pa, pb))
    return out


def test_close_while_traffic_flows_and_other_threads_issue_commands(io):
    """Regression: close racing the workers and commands from other threads (SIGTERM segfault).

    Each cycle closes a relay while media flows through live sessions and two threads keep
    calling stats/delete/timed_out/set_hold/sessions: those may only ever get RelayError, close
    returns with every worker joined and every port free, and after it every command says
    "relay closed".
    """
    import threading

    for cycle in range(12):
        r = Relay(LO, PORT_MIN, PORT_MAX, workers=2, io=io)
        r.start()
        tids = r.thread_ids()
        sessions = _drive(r, 6)
        ports = [p for _, _, _, pa, pb in sessions for p in (pa, pa + 1, pb, pb + 1)]
        stop = threading.Event()
        unexpected = []
        sent = [0]

        def traffic():
            seq = 0
            while not stop.is_set():
                for _, a, b, pa, pb in sessions:
                    try:
                        a.sendto(rtp(seq, seq * 160), (LO, pa))
                        b.sendto(rtp(seq, seq * 160), (LO, pb))
                        sent[0] += 2
                    except OSError:
                        pass  # ICMP unreachable after close: the ports are gone, as they should be
                seq += 1

        def commands(deleter):
            while not stop.is_set():
                for h, *_ in sessions:
                    try:
                        r.stats(h)
                        r.timed_out(0.0)
                        r.set_hold(h, False)
                        r.sessions()
                        if deleter and h == sessions[cycle % len(sessions)][0]:
                            r.delete(h)
                    except RelayError as e:
                        if "closed" not in str(e) and "unknown relay session" not in str(e):
                            unexpected.append(repr(e))
                    except Exception as e:  # anything else is a bug
                        unexpected.append(repr(e))

        threads = [threading.Thread(target=traffic), threading.Thread(target=commands, args=(True,)),
                   threading.Thread(target=commands, args=(False,))]
        for t in threads:
            t.start()
        try:
            assert wait_for(lambda: sent[0] > 50, 2.0)
            closer = threading.Thread(target=r.close)  # a second close races the first
            closer.start()
            r.close()
            assert r.closed
            closer.join(5)
            assert not closer.is_alive()
            assert threads_gone(tids)
        finally:
            stop.set()
            for t in threads:
                t.join(5)
            for _, a, b, _, _ in sessions:
                a.close()
                b.close()
        assert unexpected == []
        for p in ports:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((LO, p))  # every socket of the relay is closed
            s.close()
    h = sessions[1][0]
    for method, args in (("allocate", ()), ("stats", (h,)), ("delete", (h,)), ("timed_out", (1.0,)),
                         ("sessions", ()), ("set_hold", (h, True)), ("relatch", (h, "a")),
                         ("set_peer", (h, "a", LO, 4000)), ("free_pairs", ()), ("thread_ids", ()),
                         ("set_clock_rate", (h, "a", 8000)), ("start", ())):
        with pytest.raises(RelayError, match="relay closed"):
            getattr(r, method)(*args)


def test_workers_block_signals(io):
    """SIGTERM must reach a Python thread, never interrupt a packet loop."""
    with Relay(LO, PORT_MIN, PORT_MAX, workers=2, io=io) as r:
        for tid in r.thread_ids():
            with open(f"/proc/self/task/{tid}/status") as f:
                blocked = next(line.split()[1] for line in f if line.startswith("SigBlk:"))
            assert int(blocked, 16) & (1 << (15 - 1)), f"SIGTERM not blocked in worker {tid}"


def test_dual_stack_relay_bridges_an_ipv6_leg_to_an_ipv4_leg(io):
    """``address6`` beside an IPv4 address (issue 18): leg a's peer is IPv6, leg b's IPv4; RTP
    and RTCP cross both ways, each arriving from the relay port of its leg's family, and the
    stats show the IPv4 peer as a plain IPv4 address (not v4-mapped)."""
    try:
        a = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        a.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback in this environment")
    a_rtcp = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    a_rtcp.bind(("::1", 0))
    b = Peer()
    for s in (a, a_rtcp):
        s.settimeout(1.0)
    try:
        with Relay(LO, 41920, 41939, workers=1, io=io, address6="::1") as r:
            assert r.address6 == "::1"
            h = r.allocate()
            pa, pb = r.ports(h)
            r.set_peer(h, "a", "::1", a.getsockname()[1], a_rtcp.getsockname()[1])
            r.set_peer(h, "b", LO, b.addr[1], b.rtcp_port)
            with pytest.raises(RelayError, match="multicast"):
                r.set_peer(h, "a", "ff02::1", 4000)
            with pytest.raises(RelayError, match="multicast"):
                r.set_peer(h, "b", "224.0.0.1", 4000)
            for i in range(3):
                a.sendto(rtp(i, i * 160), ("::1", pa))
                data, src = b.rtp.recvfrom(2048)
                assert src == (LO, pb) and data == rtp(i, i * 160)
                b.rtp.sendto(rtp(i, i * 160, ssrc=9), (LO, pb))
                data, src = a.recvfrom(2048)
                assert src[:2] == ("::1", pa) and data == rtp(i, i * 160, ssrc=9)
            b.rtcp.sendto(rtcp_sr(9), (LO, pb + 1))
            assert a_rtcp.recvfrom(2048)[1][:2] == ("::1", pa + 1)
            st = r.stats(h)
            assert st["b"]["peer"] == (LO, b.addr[1]) and st["a"]["peer"] == ("::1", a.getsockname()[1])
            assert st["a"]["packets"] == 3 and st["b"]["packets"] == 3
            r.delete(h)
    finally:
        a.close()
        a_rtcp.close()
        b.close()


def test_dual_stack_needs_an_ipv4_address_beside_the_ipv6_one():
    with pytest.raises(RelayError, match="cannot create relay"):
        Relay("::1", 41940, 41959, address6="::1")
    with pytest.raises(RelayError, match="cannot create relay"):
        Relay(LO, 41940, 41959, address6="127.0.0.2")


def test_delete_without_wait_ports_come_back_for_the_next_allocate(io):
    """The call path deletes without waiting for the worker to close the sockets: with the
    pool exhausted, the next allocate still gets the freed pair (it waits for the close)."""
    with Relay(LO, 41320, 41327, workers=1, io=io) as r:  # 4 pairs = 2 sessions
        for _ in range(50):
            hs = [r.allocate(), r.allocate()]
            with pytest.raises(RelayError, match="no free RTP port pair"):
                r.allocate()
            r.delete(hs[0], False)
            hs[0] = r.allocate()
            for h in hs:
                r.delete(h, False)
        assert r.free_pairs() == 4 and r.used_pairs() == 0


def test_delete_without_wait_under_traffic_never_crosses_sessions(io):
    """Calls end (delete without waiting) while their peers still send, and new calls start
    at once on a pool only three sessions deep, on two workers: every new call gets ports
    (the deleted sockets are closed and given back by the worker before they are bound
    again), relays its own media to its own peer, and nothing of an old call reaches it."""
    a, b = Peer(), Peer()
    with Relay(LO, 41330, 41341, workers=2, io=io) as r:  # 6 pairs = 3 sessions
        live = []
        for i in range(120):
            h = r.allocate()
            r.set_peer(h, "a", *a.addr, rtcp_port=a.rtcp_port)
            r.set_peer(h, "b", *b.addr, rtcp_port=b.rtcp_port)
            pa, pb = r.ports(h)
            mark = struct.pack("!I", i)
            a.rtp.sendto(rtp(i, i * 160, payload=mark * 40), (LO, pa))
            data, src = recv(b.rtp)
            while data[12:16] != mark:  # a late datagram of an earlier call: not this one's
                assert struct.unpack("!I", data[12:16])[0] < i
                data, src = recv(b.rtp)
            assert src == (LO, pb)
            live.append((h, pa))
            if len(live) == 3:
                h0, pa0 = live.pop(0)
                for k in range(5):  # still in flight as the call ends
                    a.rtp.sendto(rtp(k, 0, payload=b"\0" * 160), (LO, pa0))
                r.delete(h0, False)
        for h, _ in live:
            r.delete(h, False)
        deadline = time.monotonic() + 2
        while r.free_pairs() != 6 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert r.free_pairs() == 6 and r.used_pairs() == 0
        assert len({r.allocate() for _ in range(3)}) == 3  # every pair bindable again
    a.close()
    b.close()
