"""Type stubs for hpbx._fast.relay — the native RTP/RTCP relay (contract used by hpbx.media)."""
from typing import Any, Literal

LEG_A: int  # 0
LEG_B: int  # 1

Leg = Literal[0, 1, "a", "b", "A", "B"]

class Relay:
    address: str
    address6: str  # "" or IPv6 beside an IPv4 address: dual-stack sockets on [::], both families
    port_min: int
    port_max: int
    workers: int  # worker threads (0 at construction = one per usable core)
    strict_latching: bool
    nice: int
    io: Literal["uring", "epoll"]  # the packet loop the workers run
    silence: float  # seconds a latched source must be silent before another is accepted
    closed: bool
    def __init__(
        self,
        address: str,
        port_min: int,
        port_max: int,
        workers: int = 0,
        strict_latching: bool = False,
        silence: float = 2.0,
        rcvbuf: int = 0,
        nice: int = 0,  # worker threads' nice value; < 0 needs CAP_SYS_NICE
        io: Literal["auto", "uring", "epoll"] = "auto",  # auto: io_uring where the kernel allows it
        address6: str = "",  # with an IPv4 address: also IPv6 peers (sockets bound to [::])
    ) -> None: ...
    def start(self) -> None: ...
    def close(self) -> None: ...  # joins the threads, closes every socket
    def __enter__(self) -> Relay: ...
    def __exit__(self, *exc: object) -> None: ...
    def allocate(self) -> int: ...  # session handle; RelayError when no port pair is free
    def delete(self, session: int) -> None: ...
    def set_peer(
        self, session: int, leg: Leg, host: str, port: int, rtcp_port: int = 0, rtcp_mux: bool = False
    ) -> None: ...  # RelayError for multicast/broadcast/unspecified/port 0/non-numeric
    def relatch(self, session: int, leg: Leg) -> None: ...
    def set_hold(self, session: int, hold: bool) -> None: ...
    def set_clock_rate(self, session: int, leg: Leg, rate: int) -> None: ...
    def ports(self, session: int) -> tuple[int, int]: ...  # RTP ports of leg A and leg B
    # {"session", "hold", "created", "a": LegStats, "b": LegStats}; LegStats keys: port,
    # rtcp_port, rtcp_mux, latched, peer, sdp_peer, clock_rate, ssrc, packets, bytes,
    # rtcp_packets, rtcp_bytes, expected, lost, jitter (timestamp units), jitter_ms,
    # last_packet, last_rtcp (time.monotonic() seconds or None), dropped_source,
    # dropped_nopeer, dropped_bad, send_errors, relatched
    def stats(self, session: int) -> dict[str, Any]: ...
    def timed_out(self, timeout: float) -> list[int]: ...
    def sessions(self) -> list[int]: ...
    def free_pairs(self) -> int: ...
    def used_pairs(self) -> int: ...
    def total_pairs(self) -> int: ...
    def thread_ids(self) -> list[int]: ...
