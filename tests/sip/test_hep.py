"""HEP v3 mirroring: with [hep] collector set, a Homer-style collector (a UDP socket here)
receives every SIP message the server receives and sends, over UDP and TCP, with the right
addresses, ports, protocol and capture id; a bad collector setting is refused at start; an
unreachable collector costs nothing but the copy."""
from __future__ import annotations

import ipaddress
import socket
import struct
import time
import uuid

import pytest

from harness import HpbxServer, free_port
from hpbx import settings as settings_mod
from hpbx.errors import ConfigError
from hpbx.sip import hep


def options(port: int, local: tuple[str, int], transport: str = "UDP") -> bytes:
    branch = "z9hG4bK" + uuid.uuid4().hex[:12]
    return (f"OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/{transport} {local[0]}:{local[1]};branch={branch};rport\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:hep-probe@127.0.0.1>;tag={uuid.uuid4().hex[:8]}\r\n"
            f"To: <sip:127.0.0.1:{port}>\r\n"
            f"Call-ID: {uuid.uuid4().hex}@hep\r\n"
            "CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n").encode()


def collect(sock: socket.socket, want: int, timeout: float = 5.0) -> list[dict]:
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            data, _ = sock.recvfrom(65535)
        except (socket.timeout, TimeoutError):
            break
        got.append(hep.decode(data))
    return got


def test_encode_decode_round_trip_and_layout():
    pkt = hep.encode(b"OPTIONS sip:x SIP/2.0\r\n\r\n", ("10.1.2.3", 5060), ("10.9.8.7", 5070),
                     reliable=False, capture_id=77, password="secret", now=1700000000.25)
    assert pkt[:4] == b"HEP3" and struct.unpack("!H", pkt[4:6])[0] == len(pkt)
    c = hep.decode(pkt)
    assert c[1] == b"\x02" and c[2] == bytes([17]) and c[11] == b"\x01"
    assert c[3] == ipaddress.ip_address("10.1.2.3").packed
    assert c[4] == ipaddress.ip_address("10.9.8.7").packed
    assert struct.unpack("!H", c[7])[0] == 5060 and struct.unpack("!H", c[8])[0] == 5070
    assert struct.unpack("!I", c[9])[0] == 1700000000 and struct.unpack("!I", c[10])[0] == 250000
    assert struct.unpack("!I", c[12])[0] == 77 and c[14] == b"secret"
    assert c[15] == b"OPTIONS sip:x SIP/2.0\r\n\r\n"
    v6 = hep.decode(hep.encode(b"x", ("::1", 1), ("127.0.0.1", 2), reliable=True, capture_id=1))
    assert v6[1] == bytes([10]) and v6[2] == bytes([6]) and len(v6[5]) == 16 and len(v6[6]) == 16
    with pytest.raises(ValueError):
        hep.decode(b"HEP2\x00\x06")
    with pytest.raises(ValueError):
        hep.decode(pkt[:-1])


@pytest.mark.parametrize("text", ["tcp:127.0.0.1:9060", "udp:collector:9060", "udp:127.0.0.1",
                                  "udp:127.0.0.1:0"])
def test_bad_collector_is_refused_naming_the_key(text):
    with pytest.raises(ConfigError, match="hep.collector"):
        settings_mod.from_dict({"hep": {"collector": text}})


def test_unknown_hep_key_is_refused():
    with pytest.raises(ConfigError, match="hep.colector"):
        settings_mod.from_dict({"hep": {"colector": "udp:127.0.0.1:9060"}})


def test_every_message_of_udp_and_tcp_reaches_the_collector(tmp_path):
    coll = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    coll.bind(("127.0.0.1", 0))
    cport = coll.getsockname()[1]
    port = free_port()
    extra = f'[hep]\ncollector = "udp:127.0.0.1:{cport}"\ncapture_id = 4242\npassword = "k"\n'
    with HpbxServer(tmp_path, port=port, extra_toml=extra) as srv:
        # UDP: the OPTIONS and its 200
        phone = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        phone.bind(("127.0.0.1", 0))
        local = phone.getsockname()
        coll.settimeout(0.2)
        while True:  # the readiness probe's own copies
            try:
                coll.recvfrom(65535)
            except (socket.timeout, TimeoutError):
                break
        req = options(port, local)
        phone.sendto(req, ("127.0.0.1", port))
        phone.settimeout(5)
        answer = phone.recvfrom(65535)[0]
        assert answer.startswith(b"SIP/2.0 200")
        got = collect(coll, 2)
        assert [c[15] for c in got] == [req, answer]
        rx, tx = got
        for c in got:
            assert c[2] == bytes([17]) and c[11] == b"\x01"
            assert struct.unpack("!I", c[12])[0] == 4242 and c[14] == b"k"
        assert struct.unpack("!H", rx[7])[0] == local[1] and struct.unpack("!H", rx[8])[0] == port
        assert struct.unpack("!H", tx[7])[0] == port and struct.unpack("!H", tx[8])[0] == local[1]
        # TCP: same, IP protocol 6
        tcp = socket.create_connection(("127.0.0.1", port), timeout=5)
        tlocal = tcp.getsockname()
        req = options(port, tlocal, "TCP")
        tcp.sendall(req)
        data = b""
        while b"\r\n\r\n" not in data:
            data += tcp.recv(65535)
        assert data.startswith(b"SIP/2.0 200")
        got = collect(coll, 2)
        assert [c[2] for c in got] == [bytes([6]), bytes([6])]
        assert got[0][15] == req and got[1][15].startswith(b"SIP/2.0 200")
        assert struct.unpack("!H", got[0][7])[0] == tlocal[1]
        tcp.close()
        phone.close()
    coll.close()


def test_a_collector_that_is_gone_does_not_cost_the_answer(tmp_path):
    gone = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    gone.bind(("127.0.0.1", 0))
    cport = gone.getsockname()[1]
    gone.close()  # ICMP port unreachable for every copy
    port = free_port()
    with HpbxServer(tmp_path, port=port, extra_toml=f'[hep]\ncollector = "udp:127.0.0.1:{cport}"\n'):
        phone = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        phone.bind(("127.0.0.1", 0))
        phone.settimeout(5)
        for _ in range(20):
            phone.sendto(options(port, phone.getsockname()), ("127.0.0.1", port))
            assert phone.recvfrom(65535)[0].startswith(b"SIP/2.0 200")
        phone.close()
