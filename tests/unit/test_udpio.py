"""Batched UDP I/O (hpbx._fast.udpio) with real sockets on loopback."""
from __future__ import annotations

import socket
import time

import pytest

from hpbx._fast import udpio


def bound(family=socket.AF_INET, host="127.0.0.1"):
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.bind((host, 0))
    s.setblocking(False)
    return s


def recv_all(io, want, timeout=2.0):
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        got += io.recv()
        if len(got) < want:
            time.sleep(0.005)
    return got


def test_one_recv_returns_every_waiting_datagram_with_its_source():
    server, a, b = bound(), bound(), bound()
    try:
        io = udpio.DatagramIO(server.fileno(), socket.AF_INET)
        assert io.recv() == []
        target = server.getsockname()
        for i in range(5):
            a.sendto(b"from-a-%d" % i, target)
        b.sendto(b"x" * 60000, target)  # the largest datagrams are not truncated
        time.sleep(0.05)
        got = io.recv()
        assert [d for d, _ in got] == [b"from-a-%d" % i for i in range(5)] + [b"x" * 60000]
        assert {addr for _, addr in got} == {a.getsockname(), b.getsockname()}
        # more than one batch waiting: the first recv returns a full batch
        for i in range(udpio.BATCH + 10):
            a.sendto(b"%d" % i, target)
        time.sleep(0.05)
        first = io.recv()
        assert len(first) == udpio.BATCH
        assert len(first) + len(recv_all(io, 10)) == udpio.BATCH + 10
    finally:
        for s in (server, a, b):
            s.close()


def test_queue_and_flush_send_to_many_peers_in_order():
    server, a, b = bound(), bound(), bound()
    try:
        io = udpio.DatagramIO(server.fileno(), socket.AF_INET)
        for i in range(100):  # more than a batch
            assert io.queue(b"m%d" % i, a.getsockname() if i % 2 else b.getsockname()) == i + 1
        assert io.pending == 100
        assert io.flush() == 0 and io.pending == 0
        ra = udpio.DatagramIO(a.fileno(), socket.AF_INET)
        rb = udpio.DatagramIO(b.fileno(), socket.AF_INET)
        got_a = [d for d, _ in recv_all(ra, 50)]
        got_b = [d for d, _ in recv_all(rb, 50)]
        assert got_a == [b"m%d" % i for i in range(1, 100, 2)]
        assert got_b == [b"m%d" % i for i in range(0, 100, 2)]
        assert io.send_errors == 0 and io.dropped == 0
    finally:
        for s in (server, a, b):
            s.close()


def test_refused_datagram_is_counted_and_the_rest_still_go():
    server, a = bound(), bound()
    try:
        io = udpio.DatagramIO(server.fileno(), socket.AF_INET)
        io.queue(b"one", a.getsockname())
        io.queue(b"bad", ("255.255.255.255", 5060))  # broadcast without SO_BROADCAST: EACCES
        io.queue(b"two", a.getsockname())
        assert io.flush() == 0
        assert io.send_errors == 1
        ra = udpio.DatagramIO(a.fileno(), socket.AF_INET)
        assert [d for d, _ in recv_all(ra, 2)] == [b"one", b"two"]
        with pytest.raises(ValueError):
            io.queue(b"x", ("pbx.example.com", 5060))
    finally:
        server.close()
        a.close()


def test_ipv6_addresses_and_v4_mapped_peers():
    try:
        server = bound(socket.AF_INET6, "::1")
    except OSError:
        pytest.skip("no IPv6 loopback here")
    peer = bound(socket.AF_INET6, "::1")
    try:
        io = udpio.DatagramIO(server.fileno(), socket.AF_INET6)
        peer.sendto(b"hello", server.getsockname()[:2])
        (data, addr), = recv_all(io, 1)
        assert data == b"hello" and addr[:2] == peer.getsockname()[:2] and len(addr) == 4
        io.queue(b"back", addr)
        assert io.flush() == 0
        rp = udpio.DatagramIO(peer.fileno(), socket.AF_INET6)
        assert [(d, a[:2]) for d, a in recv_all(rp, 1)] == [(b"back", server.getsockname()[:2])]
    finally:
        server.close()
        peer.close()


def test_sender_thread_sends_every_batch_in_order_and_notifies():
    import os
    import select
    server, peer = bound(), bound()
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    efd = os.eventfd(0, os.EFD_NONBLOCK)
    try:
        io = udpio.DatagramIO(server.fileno(), socket.AF_INET)
        io.queue(b"before", peer.getsockname())  # queued before the thread: sent first
        io.start_sender(efd)
        assert io.threaded
        total = 5 * udpio.SEND_BATCH + 7
        sent = 0
        deadline = time.monotonic() + 5
        while sent < total and time.monotonic() < deadline:
            for _ in range(min(100, total - sent)):
                io.queue(b"n%d" % sent, peer.getsockname())
                sent += 1
            if io.flush():
                # the thread is busy with the previous batch: it says when it is done
                assert select.select([efd], [], [], 2.0)[0], "no notification from the sender"
                os.eventfd_read(efd)
        while io.flush() and time.monotonic() < deadline:
            select.select([efd], [], [], 0.5)
        rp = udpio.DatagramIO(peer.fileno(), socket.AF_INET)
        got = [d for d, _ in recv_all(rp, total + 1, timeout=5)]
        assert got == [b"before"] + [b"n%d" % i for i in range(total)]
        io.queue(b"last", peer.getsockname())
        io.stop_sender()  # later sends go from the caller again
        assert not io.threaded and io.flush() == 0
        assert [d for d, _ in recv_all(rp, 1)] == [b"last"]
        assert io.send_errors == 0 and io.dropped == 0
    finally:
        os.close(efd)
        server.close()
        peer.close()
