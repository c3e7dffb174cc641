"""HEP v3 (Homer Encapsulation Protocol) mirroring of SIP traffic to a capture server.

With ``[hep] collector = "udp:10.0.0.9:9060"`` every SIP message the server receives or sends
(UDP, TCP and TLS, after decryption) is copied, as one HEP v3 datagram, to the collector: a
Homer/heplify-server or anything else speaking HEP v3. The copy is sent from its own
non-blocking UDP socket; a full socket buffer or an unreachable collector drops the copy
(counted in ``stats``), never the SIP message. Off (nothing is built, no cost) when
``collector`` is empty.

Format (HEP v3, as Kamailio's siptrace and heplify write it): ``HEP3``, total length (16 bit),
then chunks of vendor id 0x0000, type, length (16 bit each, the length including the 6 bytes of
the chunk header) and value:

    1 IP family (2 = IPv4, 10 = IPv6)      7 source port       11 protocol type (1 = SIP)
    2 IP protocol (17 UDP, 6 TCP/TLS)      8 destination port  12 capture agent id (32 bit)
    3/4 IPv4 source/destination            9 timestamp (s)     14 authentication key (password)
    5/6 IPv6 source/destination            10 timestamp (µs)   15 payload (the SIP message)
"""
from __future__ import annotations

import ipaddress
import logging
import socket
import struct
import time

log = logging.getLogger("hpbx.sip.hep")

CHUNK = struct.Struct("!HHH")
PROTO_SIP = 1
IPPROTO_UDP = 17
IPPROTO_TCP = 6


def _chunk(kind: int, value: bytes) -> bytes:
    return CHUNK.pack(0, kind, len(value) + 6) + value


def encode(payload: bytes, src: tuple[str, int], dst: tuple[str, int], *, reliable: bool,
           capture_id: int, password: str = "", now: float | None = None) -> bytes:
    """One HEP v3 packet carrying ``payload`` sent from ``src`` to ``dst``."""
    if now is None:
        now = time.time()
    src_ip = ipaddress.ip_address(src[0])
    dst_ip = ipaddress.ip_address(dst[0])
    if src_ip.version != dst_ip.version:  # an IPv4-mapped peer on an IPv6 socket
        src_ip = _as_v6(src_ip)
        dst_ip = _as_v6(dst_ip)
    v6 = src_ip.version == 6
    secs = int(now)
    parts = [
        _chunk(1, bytes((10 if v6 else 2,))),
        _chunk(2, bytes((IPPROTO_TCP if reliable else IPPROTO_UDP,))),
        _chunk(5 if v6 else 3, src_ip.packed),
        _chunk(6 if v6 else 4, dst_ip.packed),
        _chunk(7, struct.pack("!H", src[1] & 0xFFFF)),
        _chunk(8, struct.pack("!H", dst[1] & 0xFFFF)),
        _chunk(9, struct.pack("!I", secs & 0xFFFFFFFF)),
        _chunk(10, struct.pack("!I", int((now - secs) * 1_000_000) % 1_000_000)),
        _chunk(11, bytes((PROTO_SIP,))),
        _chunk(12, struct.pack("!I", capture_id & 0xFFFFFFFF)),
    ]
    if password:
        parts.append(_chunk(14, password.encode()))
    parts.append(_chunk(15, payload))
    body = b"".join(parts)
    return b"HEP3" + struct.pack("!H", len(body) + 6) + body


def _as_v6(ip):
    return ip if ip.version == 6 else ipaddress.IPv6Address("::ffff:" + str(ip))


def decode(packet: bytes) -> dict:
    """The chunks of one HEP v3 packet by type (values as bytes); raises ValueError when the
    packet is not HEP v3. Used by the tests and by anyone checking a capture."""
    if len(packet) < 6 or packet[:4] != b"HEP3":
        raise ValueError("not a HEP v3 packet")
    total = struct.unpack_from("!H", packet, 4)[0]
    if total != len(packet):
        raise ValueError(f"HEP length {total} but {len(packet)} bytes")
    chunks: dict[int, bytes] = {}
    pos = 6
    while pos < total:
        if pos + 6 > total:
            raise ValueError("truncated chunk header")
        vendor, kind, length = CHUNK.unpack_from(packet, pos)
        if length < 6 or pos + length > total:
            raise ValueError(f"chunk {kind}: bad length {length}")
        if vendor == 0:
            chunks[kind] = packet[pos + 6:pos + length]
        pos += length
    return chunks


def parse_collector(text: str) -> tuple[str, int]:
    """``udp:HOST:PORT`` (HOST an IP address, IPv6 in brackets)."""
    scheme, sep, rest = text.partition(":")
    if scheme != "udp" or not sep:
        raise ValueError(f"expected udp:HOST:PORT, got {text!r}")
    if rest.startswith("["):
        host, sep, port = rest[1:].partition("]:")
    else:
        host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected udp:HOST:PORT, got {text!r}")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"not an IP address: {host!r}") from None
    return host, int(port)


class HepMirror:
    """Copies SIP messages to one collector. ``received``/``sent`` are called by the transports
    with the message, the channel it came in or leaves on, and the peer's address."""

    def __init__(self, collector: tuple[str, int], capture_id: int = 2001, password: str = ""):
        self.collector = collector
        self.capture_id = capture_id
        self.password = password
        family = socket.AF_INET6 if ":" in collector[0] else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.stats = {"sent": 0, "dropped": 0}

    def _send(self, data: bytes, src, dst, reliable: bool) -> None:
        try:
            packet = encode(data, (src[0], src[1]), (dst[0], dst[1]), reliable=reliable,
                            capture_id=self.capture_id, password=self.password)
            self.sock.sendto(packet, self.collector)
        except (OSError, ValueError) as exc:
            self.stats["dropped"] += 1
            if self.stats["dropped"] in (1, 1000):
                log.warning("HEP copy to %s:%d dropped: %s", *self.collector, exc)
            return
        self.stats["sent"] += 1

    def received(self, data: bytes, channel, addr) -> None:
        self._send(data, addr, (channel.local_host, channel.local_port), channel.reliable)

    def sent(self, data: bytes, channel, addr) -> None:
        if addr is None:
            addr = getattr(channel, "peer", None)
            if addr is None:
                return
        self._send(data, (channel.local_host, channel.local_port), addr, channel.reliable)

    def wrap_sink(self, sink):
        received = self.received

        def mirrored(data, channel, addr):
            received(data, channel, addr)
            sink(data, channel, addr)

        return mirrored

    def close(self) -> None:
        self.sock.close()
