"""The ports the harness hands to SIPp lie outside the kernel's ephemeral range, so no socket
bound to port 0 can take one between the probe and SIPp's bind (SIPp exits 254 on EADDRINUSE:
the flaky test_link_hands_the_call_to_another_numbers_plan, issue 18), and a port is handed
out again only after the rest of its pool was."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from harness import _PortCycle, sipp_media_port, sipp_port  # noqa: E402


def ephemeral_range():
    low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    return int(low), int(high)


def test_sipp_ports_are_below_the_ephemeral_range_and_media_blocks_are_even():
    low, _ = ephemeral_range()
    sip = [sipp_port() for _ in range(50)]
    media = [sipp_media_port() for _ in range(50)]
    assert all(p < low for p in sip) and all(p + 3 < low for p in media)
    assert all(p % 2 == 0 for p in media)
    assert len(set(sip)) == 50 and len(set(media)) == 50


def test_a_port_in_use_is_skipped_and_the_cycle_wraps():
    import socket
    cycle = _PortCycle(31990, 31999)
    first = [cycle.take() for _ in range(10)]
    assert sorted(first) == list(range(31990, 32000))
    busy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    busy.bind(("127.0.0.1", first[0]))
    try:
        again = [cycle.take() for _ in range(9)]
        assert first[0] not in again and sorted(again) == sorted(first[1:])
    finally:
        busy.close()
