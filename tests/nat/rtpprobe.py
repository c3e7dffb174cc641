"""A phone's audio stand-in, run inside a namespace: send RTP from a port to a relay port and
count what comes back. Prints one JSON line {"sent", "received", "sources"}.

    python rtpprobe.py BIND_PORT RELAY_HOST RELAY_PORT PACKETS
"""
import json
import os
import socket
import struct
import sys
import time


def main() -> None:
    bind_port, host, port, count = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", bind_port))
    sock.settimeout(0.005)
    ssrc = struct.unpack("!I", os.urandom(4))[0]
    payload = b"\xd5" * 160  # PCMA silence
    received = 0
    sources = set()
    next_send = time.monotonic()
    sent = 0
    end = None
    while True:
        now = time.monotonic()
        if sent < count and now >= next_send:
            header = struct.pack("!BBHII", 0x80, 8, sent & 0xFFFF, (sent * 160) & 0xFFFFFFFF, ssrc)
            sock.sendto(header + payload, (host, port))
            sent += 1
            next_send += 0.02
            if sent == count:
                end = now + 1.0  # late packets of the other side
        if end is not None and now >= end:
            break
        try:
            data, addr = sock.recvfrom(2048)
        except (socket.timeout, BlockingIOError):
            continue
        if len(data) >= 12 and data[0] >> 6 == 2:
            received += 1
            sources.add(f"{addr[0]}:{addr[1]}")
    print(json.dumps({"sent": sent, "received": received, "sources": sorted(sources)}))


if __name__ == "__main__":
    main()
