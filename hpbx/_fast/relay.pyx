"""The RTP/RTCP relay: native worker threads that move media between the two legs of a session.

The packets never reach Python. The C core (``relay_engine.h``) runs one epoll loop per worker
thread, without the GIL, and keeps per-stream counters in C structs; this module is the command
interface (allocate, set peer, relatch, hold, delete, stats). The worker threads run no Python
code at all, so no Python exception can unwind into them.

A session has two legs, 0 (A) and 1 (B); each leg has an RTP socket on an even port and an
RTCP socket on the next port. What arrives on leg A's sockets leaves through leg B's sockets to
leg B's peer, and the other way round.
"""
import os

from libc.stdint cimport int64_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc
from posix.unistd cimport usleep

from hpbx.errors import RelayError

cdef extern from "relay_engine.h" nogil:
    ctypedef struct rl_leg_info:
        int port
        int rtcp_port
        int rtcp_mux
        int latched
        int udptl
        char peer_host[46]
        int peer_port
        char sdp_host[46]
        int sdp_port
        uint32_t clock_rate
        uint32_t ssrc
        uint64_t packets
        uint64_t bytes
        uint64_t rtcp_packets
        uint64_t rtcp_bytes
        uint64_t dropped_source
        uint64_t dropped_nopeer
        uint64_t dropped_bad
        uint64_t send_errors
        uint64_t relatched
        int64_t expected
        int64_t lost
        uint32_t jitter
        double jitter_ms
        int64_t last_ns
        int64_t last_rtcp_ns

    rl_relay *rl_new(const char *address, int port_min, int port_max, int nworkers, int strict,
                     int64_t silence_ns, int io_mode, const char *address6)
    int rl_start(rl_relay *r)
    void rl_free(rl_relay *r)
    int rl_allocate(rl_relay *r, uint64_t *out)
    int rl_delete(rl_relay *r, uint64_t h, int wait)
    int rl_set_peer(rl_relay *r, uint64_t h, int li, const char *host, int port, int rtcp_port, int mux)
    int rl_relatch(rl_relay *r, uint64_t h, int li)
    int rl_switch(rl_relay *r, uint64_t h, int li)
    int rl_adopt_tx(rl_relay *r, uint64_t h, int li, uint64_t src, int fli)
    int rl_set_hold(rl_relay *r, uint64_t h, int hold)
    int rl_set_clock_rate(rl_relay *r, uint64_t h, int li, uint32_t rate)
    int rl_set_udptl(rl_relay *r, uint64_t h, int li, int on)
    int rl_query(rl_relay *r, uint64_t h, rl_leg_info *a, rl_leg_info *b, int *hold, int64_t *created_ns)
    int rl_timed_out(rl_relay *r, int64_t timeout_ns, uint64_t *out, int mx)
    int rl_list(rl_relay *r, uint64_t *out, int mx)
    int rl_free_pairs(rl_relay *r)
    int rl_worker_tid(rl_relay *r, int i)
    int ENOENT
    int EADDRINUSE

LEG_A = 0
LEG_B = 1

# how the workers move packets: "auto" = io_uring where the kernel allows it, else epoll
_IO_MODES = {"auto": 0, "epoll": 1, "uring": 2}

_PEER_ERRORS = {
    -1: "is not a numeric IP address",
    -2: "port must be 1-65535",
    -3: "is the unspecified address",
    -4: "is a multicast address",
    -5: "is a broadcast or reserved address",
    -6: "is not of the relay's address family",
}


cdef int _leg(object leg) except -1:
    if leg == 0 or leg == "a" or leg == "A":
        return 0
    if leg == 1 or leg == "b" or leg == "B":
        return 1
    raise RelayError(f"leg must be 0/'a' or 1/'b', not {leg!r}")


cdef dict _leg_dict(rl_leg_info *i):
    return {
        "port": i.port,
        "rtcp_port": i.rtcp_port,
        "rtcp_mux": bool(i.rtcp_mux),
        "udptl": bool(i.udptl),
        "latched": bool(i.latched),
        "peer": (i.peer_host.decode("ascii"), i.peer_port) if i.peer_port else None,
        "sdp_peer": (i.sdp_host.decode("ascii"), i.sdp_port) if i.sdp_port else None,
        "clock_rate": i.clock_rate,
        "ssrc": i.ssrc,
        "packets": i.packets,
        "bytes": i.bytes,
        "rtcp_packets": i.rtcp_packets,
        "rtcp_bytes": i.rtcp_bytes,
        "expected": i.expected,
        "lost": i.lost,
        "jitter": i.jitter,
        "jitter_ms": i.jitter_ms,
        "last_packet": i.last_ns / 1e9 if i.last_ns else None,
        "last_rtcp": i.last_rtcp_ns / 1e9 if i.last_rtcp_ns else None,
        "dropped_source": i.dropped_source,
        "dropped_nopeer": i.dropped_nopeer,
        "dropped_bad": i.dropped_bad,
        "send_errors": i.send_errors,
        "relatched": i.relatched,
    }


cdef class Relay:
    """RTP relay over ``address`` and the ports ``port_min``..``port_max``.

    ``workers`` = 0 starts one thread per usable core. ``strict_latching`` accepts media only
    from the SDP address of each leg; otherwise a leg latches onto the first source and takes a
    new one only after ``relatch()`` or when the old source was silent for ``silence`` seconds.
    ``nice`` < 0 lets the workers preempt other work on their CPU (lower latency under load;
    needs CAP_SYS_NICE). ``io`` picks the packet loop: "uring" (multishot receives and batched
    sends, one syscall per wakeup; Linux 6.1+), "epoll" (recvmmsg/sendto per ready socket), or
    "auto" (io_uring when the kernel allows it); the ``io`` attribute then says which runs.
    ``last_packet`` times in stats are ``time.monotonic()`` seconds. ``address6`` beside an
    IPv4 ``address`` makes the relay dual-stack: its sockets are IPv6 sockets bound to ``[::]``
    with IPV6_V6ONLY off, so a leg's peer may be of either family and an IPv6 leg is bridged to
    an IPv4 one (the SDP names ``address`` or ``address6`` by the peer's family).
    """
    # Lifecycle safety: every command runs entirely under the GIL (none releases it between
    # ``_live()`` and its C call), and only ``close`` releases the GIL, after marking the relay
    # closing. So a command from another thread either completes before close begins or sees
    # "relay closed"; it can never use the C struct while rl_free tears it down.

    def __cinit__(self):
        self._r = NULL
        self._closing = False

    def __init__(self, str address, int port_min, int port_max, int workers=0,
                 bint strict_latching=False, double silence=2.0, int rcvbuf=0, int nice=0,
                 str io="auto", str address6=""):
        if not (1 <= port_min <= port_max <= 65535):
            raise RelayError(f"port range {port_min}-{port_max} is not within 1-65535")
        if workers < 0 or workers > 256:
            raise RelayError(f"workers must be 0-256, not {workers}")
        if silence < 0:
            raise RelayError("silence must be >= 0 seconds")
        if not -20 <= nice <= 19:
            raise RelayError(f"nice must be -20..19, not {nice}")
        if io not in _IO_MODES:
            raise RelayError(f"io must be one of {', '.join(_IO_MODES)}, not {io!r}")
        if workers == 0:
            workers = max(1, len(os.sched_getaffinity(0)))
        b = address.encode("ascii", "replace")
        b6 = address6.encode("ascii", "replace")
        self._r = rl_new(b, port_min, port_max, workers, strict_latching, <int64_t>(silence * 1e9),
                         _IO_MODES[io], b6)
        if self._r == NULL:
            why = os.strerror(_errno())
            if address6:
                address = f"{address} + {address6}"
            if io == "uring":
                raise RelayError(f"cannot create an io_uring relay on {address!r}: {why}")
            raise RelayError(f"cannot create relay on {address!r}: {why}")
        if self._r.nsess < 1:
            rl_free(self._r)
            self._r = NULL
            raise RelayError(f"port range {port_min}-{port_max} holds no session (needs 2 even/odd pairs)")
        self._r.rcvbuf = rcvbuf
        self._r.nice = nice
        self.nice = nice
        self.io = "uring" if self._r.uring else "epoll"
        self.address = address
        self.address6 = address6
        self.port_min = port_min
        self.port_max = port_max
        self.workers = workers
        self.strict_latching = strict_latching
        self.silence = silence
        self._started = False

    def __dealloc__(self):
        # the GIL stays held: a dealloc may run inside a GC pass, and no other Python code
        # should run in the middle of one (joining the workers needs no GIL)
        if self._r != NULL:
            rl_free(self._r)
            self._r = NULL

    cdef rl_relay *_live(self) except NULL:
        if self._r == NULL or self._closing:
            raise RelayError("relay closed")
        return self._r

    def start(self):
        """Start the worker threads (idempotent)."""
        cdef rl_relay *r = self._live()
        cdef int e
        if self._started:
            return
        # with the GIL held (see the class comment); the workers never take it, and rl_start
        # waits only for them to publish their thread ids
        e = rl_start(r)
        if e:
            raise RelayError(f"cannot start relay threads (nice {self.nice}): {os.strerror(e)}")
        self._started = True

    def close(self):
        """Stop and join the worker threads, close every socket, free every session.

        Idempotent and thread-safe: commands issued during or after close raise
        RelayError("relay closed"); a second close waits until the first has finished.
        """
        cdef rl_relay *r = self._r
        if r == NULL:
            return
        if self._closing:
            while self._r != NULL:
                with nogil:
                    usleep(1000)
            return
        self._closing = True
        self._started = False
        try:
            with nogil:
                rl_free(r)  # stop flag, wake and join every worker, then free
        finally:
            self._r = NULL
            self._closing = False

    @property
    def closed(self):
        return self._r == NULL or self._closing

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.close()

    def allocate(self):
        """Create a session with two legs; returns its handle. RelayError when ports run out."""
        cdef rl_relay *r = self._live()
        cdef uint64_t h = 0
        cdef int e = rl_allocate(r, &h)
        if e == EADDRINUSE:
            raise RelayError(f"no free RTP port pair in {self.port_min}-{self.port_max}")
        if e:
            raise RelayError(f"cannot allocate relay ports: {os.strerror(e)}")
        return h

    def delete(self, uint64_t session, bint wait=True):
        """Close the session's sockets and give its ports back to the pool. With ``wait``
        False (io_uring), the worker closes the sockets just after this returns: the call path
        does not wait for it (an ``allocate`` that finds no bindable pair waits for it)."""
        cdef int e = rl_delete(self._live(), session, wait)
        if e:
            raise RelayError(f"unknown relay session {session}")

    def set_peer(self, uint64_t session, leg, str host, int port, int rtcp_port=0, bint rtcp_mux=False):
        """Set a leg's SDP address: the first send target, and with strict latching the only
        accepted source. ``rtcp_port`` 0 means ``port + 1``."""
        cdef int li = _leg(leg)
        cdef bytes b = host.encode("ascii", "replace")
        cdef int e = rl_set_peer(self._live(), session, li, b, port, rtcp_port, rtcp_mux)
        if e == ENOENT:
            raise RelayError(f"unknown relay session {session}")
        if e:
            bad_port = rtcp_port if e == -2 and 1 <= port <= 65535 else port
            what = f"port {bad_port}" if e == -2 else f"address {host!r}"
            raise RelayError(f"peer {what} {_PEER_ERRORS.get(e, 'is invalid')}")

    def relatch(self, uint64_t session, leg):
        """Accept the next source of this leg as its new peer (after a re-INVITE)."""
        cdef int li = _leg(leg)  # before _live(): comparing ``leg`` may run Python code
        if rl_relatch(self._live(), session, li):
            raise RelayError(f"unknown relay session {session}")

    def switch(self, uint64_t session, leg):
        """The leg's party changes (a transfer, pickup, call move): send to its SDP address now
        and latch its first packet; the old party's packets are relayed until then but cannot
        latch (for at most ``silence`` seconds)."""
        cdef int li = _leg(leg)
        if rl_switch(self._live(), session, li):
            raise RelayError(f"unknown relay session {session}")

    def adopt_stream(self, uint64_t session, leg, uint64_t source, source_leg):
        """A party moved here from ``source`` (``source_leg`` faced it; ``leg`` does now): what
        ``leg`` sends continues the stream the party received from ``source`` (same SSRC,
        sequence and timestamp going on)."""
        cdef int li = _leg(leg)
        cdef int fli = _leg(source_leg)
        if rl_adopt_tx(self._live(), session, li, source, fli):
            raise RelayError(f"unknown relay session {session} or {source}")

    def set_hold(self, uint64_t session, bint hold):
        """A held session is never reported by ``timed_out``."""
        if rl_set_hold(self._live(), session, hold):
            raise RelayError(f"unknown relay session {session}")

    def set_udptl(self, uint64_t session, leg, bint on=True):
        """The leg carries T.38 UDPTL (m=image udptl t38) instead of RTP: no RTCP demultiplexing
        by the second byte, no RTP statistics, no header rewriting when relayed."""
        cdef int li = _leg(leg)  # before _live(): comparing ``leg`` may run Python code
        if rl_set_udptl(self._live(), session, li, on):
            raise RelayError(f"unknown relay session {session}")

    def set_clock_rate(self, uint64_t session, leg, int rate):
        """RTP clock rate of the media arriving on ``leg`` (jitter units); default 8000."""
        if rate < 1000 or rate > 192000:
            raise RelayError(f"clock rate {rate} is not within 1000-192000")
        cdef int li = _leg(leg)  # before _live(): comparing ``leg`` may run Python code
        if rl_set_clock_rate(self._live(), session, li, <uint32_t>rate):
            raise RelayError(f"unknown relay session {session}")

    def ports(self, uint64_t session):
        """(RTP port of leg A, RTP port of leg B)."""
        s = self.stats(session)
        return s["a"]["port"], s["b"]["port"]

    def stats(self, uint64_t session):
        """Both legs' state and counters; leg "a" counts what arrived from A's peer."""
        cdef rl_leg_info a, b
        cdef int hold = 0
        cdef int64_t created = 0
        if rl_query(self._live(), session, &a, &b, &hold, &created):
            raise RelayError(f"unknown relay session {session}")
        return {"session": session, "hold": bool(hold), "created": created / 1e9,
                "a": _leg_dict(&a), "b": _leg_dict(&b)}

    def timed_out(self, double timeout):
        """Handles of sessions not on hold with no RTP either way for ``timeout`` seconds."""
        cdef rl_relay *r = self._live()
        cdef int n, mx = r.nsess
        cdef uint64_t *buf = <uint64_t *>malloc(sizeof(uint64_t) * mx)
        if buf == NULL:
            raise MemoryError()
        try:
            n = rl_timed_out(r, <int64_t>(timeout * 1e9), buf, mx)
            return [buf[i] for i in range(n)]
        finally:
            free(buf)

    def sessions(self):
        """Handles of all live sessions."""
        cdef rl_relay *r = self._live()
        cdef int n, mx = r.nsess
        cdef uint64_t *buf = <uint64_t *>malloc(sizeof(uint64_t) * mx)
        if buf == NULL:
            raise MemoryError()
        try:
            n = rl_list(r, buf, mx)
            return [buf[i] for i in range(n)]
        finally:
            free(buf)

    def free_pairs(self):
        """Port pairs (RTP+RTCP) not in use by a session."""
        cdef rl_relay *r = self._live()
        return rl_free_pairs(r)

    def used_pairs(self):
        cdef rl_relay *r = self._live()
        return r.npairs - rl_free_pairs(r)

    def total_pairs(self):
        return self._live().npairs

    def thread_ids(self):
        """Native thread ids of the running workers (for /proc/self/task/TID/stat)."""
        cdef rl_relay *r = self._live()
        cdef int i, n = r.nworkers
        cdef int *tids = <int *>malloc(sizeof(int) * n)
        if tids == NULL:
            raise MemoryError()
        try:
            # read into C first: building Python ints may run a GC pass (and other threads)
            for i in range(n):
                tids[i] = rl_worker_tid(r, i)
            return [tids[i] for i in range(n) if tids[i]]
        finally:
            free(tids)


cdef extern from "errno.h":
    int errno


cdef int _errno():
    return errno


# The media engine's command interface (media endpoints, prompts, rooms, events).
include "relay_media.pxi"
include "relay_fax.pxi"
