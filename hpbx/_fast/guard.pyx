# cython: language_level=3
"""The ban table of the SIP receive path (see guard_core.h): request density per source,
scanner User-Agents, bans that expire, trusted networks never counted. ``udpio`` asks it for
every datagram before the datagram becomes a Python object; stream transports ask ``check``
per framed message and ``allowed`` per accepted connection. Bans given for other reasons
(failed digests, the operator) are set with ``ban``. Times are wall-clock seconds (bans are
stored across restarts). See guard.pyi for the contract.
"""
from libc.stdint cimport uint8_t, uint64_t
from libc.string cimport memcpy, memset, strlen
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE

import ipaddress
import os

cdef extern from "guard_core.h" nogil:
    int guard_init(guard_table* g, uint32_t capacity, uint64_t k0, uint64_t k1)
    void guard_free(guard_table* g)
    int guard_key_text(const char* host, uint8_t ip[16])
    void guard_key_str(const uint8_t ip[16], char* out, size_t n)
    int guard_is_trusted(const guard_table* g, const uint8_t ip[16])
    guard_entry* guard_slot(guard_table* g, const uint8_t ip[16], double now, int create)
    void guard_ban_entry(guard_table* g, guard_entry* e, int reason, double until, int event)
    int guard_check_key(guard_table* g, const uint8_t ip[16], const char* buf, size_t length,
                        double now)
    double guard_now_precise()

from libc.stdint cimport uint32_t

REASONS = ("", "flood", "scanner", "auth", "admin", "user")


cdef int _reason_code(str reason) except -1:
    try:
        return REASONS.index(reason, 1)
    except ValueError:
        raise ValueError(f"unknown ban reason {reason!r} (known: {', '.join(REASONS[1:])})") from None


cdef int _key(str host, uint8_t* ip) except -1:
    cdef bytes b = host.encode("ascii", "replace")
    if guard_key_text(b, ip) != 0:
        raise ValueError(f"not an IP address: {host!r}")
    return 0


cdef str _text(const uint8_t* ip):
    cdef char out[64]
    guard_key_str(ip, out, sizeof(out))
    return out[:strlen(out)].decode("ascii")


cdef class Guard:
    def __cinit__(self, unsigned int capacity=65536):
        key = os.urandom(16)
        if guard_init(&self.t, capacity, int.from_bytes(key[:8], "little"),
                      int.from_bytes(key[8:], "little")) != 0:
            raise MemoryError()
        self.ready = True

    def __dealloc__(self):
        guard_free(&self.t)

    def configure(self, *, bint enabled=True, double window=2.0, unsigned int threshold=16,
                  double ban_secs=300.0, unsigned int good_factor=8, agents=(), trusted=()):
        """Settings; counters and bans are kept. ``threshold`` 0 turns the density check off,
        ``agents`` are matched case-insensitively inside User-Agent, ``trusted`` are networks
        ("10.0.0.0/8", "2001:db8::/32", a bare address)."""
        cdef int i, n
        cdef uint32_t j
        cdef bytes a
        if window <= 0:
            raise ValueError("window must be positive")
        if ban_secs <= 0:
            raise ValueError("ban_secs must be positive")
        agents = [str(x).lower() for x in agents if str(x)]
        if len(agents) > GUARD_MAX_AGENTS:
            raise ValueError(f"at most {GUARD_MAX_AGENTS} scanner agents")
        nets = []
        for text in trusted:
            try:
                net = ipaddress.ip_network(str(text), strict=False)
            except ValueError:
                raise ValueError(f"not a network: {text!r}") from None
            if net.version == 4:
                nets.append((b"\0" * 10 + b"\xff\xff" + net.network_address.packed,
                             96 + net.prefixlen))
            else:
                nets.append((net.network_address.packed, net.prefixlen))
        if len(nets) > GUARD_MAX_TRUSTED:
            raise ValueError(f"at most {GUARD_MAX_TRUSTED} trusted networks")
        for x in agents:
            if not 0 < len(x.encode()) < GUARD_AGENT_LEN:
                raise ValueError(f"scanner agent too long: {x!r}")
        self.t.enabled = enabled
        self.t.window = window
        self.t.threshold = threshold
        self.t.ban_secs = ban_secs
        self.t.good_factor = good_factor if good_factor > 0 else 1
        self.t.nagents = len(agents)
        for i, x in enumerate(agents):
            a = x.encode()
            n = <int>len(a)
            memcpy(self.t.agents[i], PyBytes_AS_STRING(a), n)
            self.t.agents[i][n] = 0
            self.t.agent_len[i] = n
        self.t.ntrusted = len(nets)
        for i, (packed, bits) in enumerate(nets):
            memcpy(self.t.trusted[i].net, PyBytes_AS_STRING(packed), 16)
            self.t.trusted[i].bits = bits
        for j in range(self.t.mask + 1):
            if self.t.slots[j].used:
                self.t.slots[j].trusted = <uint8_t>guard_is_trusted(&self.t, self.t.slots[j].ip)

    @property
    def enabled(self):
        return bool(self.t.enabled)

    @property
    def ban_secs(self):
        return self.t.ban_secs

    @property
    def capacity(self):
        return self.t.mask + 1

    cdef double _now(self, now):
        return guard_now() if now is None else <double>now

    def check(self, str host, bytes data=None, now=None) -> bool:
        """Count one message from ``host``: True to handle it, False to drop it (banned now)."""
        cdef uint8_t ip[16]
        if guard_key_text(host.encode("ascii", "replace"), ip) != 0:
            return True
        if data is None:
            return guard_check_key(&self.t, ip, NULL, 0, self._now(now)) == GUARD_PASS
        return guard_check_key(&self.t, ip, PyBytes_AS_STRING(data), <size_t>PyBytes_GET_SIZE(data),
                               self._now(now)) == GUARD_PASS

    def allowed(self, str host, now=None) -> bool:
        """Is ``host`` not banned (a new connection from it is accepted)? Counts nothing."""
        cdef uint8_t ip[16]
        cdef guard_entry* e
        if not self.t.enabled or guard_key_text(host.encode("ascii", "replace"), ip) != 0:
            return True
        e = guard_slot(&self.t, ip, self._now(now), 0)
        if e == NULL or e.trusted or e.banned_until <= self._now(now):
            return True
        e.dropped += 1
        self.t.dropped += 1
        return False

    def trusted(self, str host) -> bool:
        cdef uint8_t ip[16]
        _key(host, ip)
        return bool(guard_is_trusted(&self.t, ip))

    def ban(self, str host, double secs, str reason="admin", now=None, bint event=False) -> bool:
        """Ban ``host`` for ``secs`` (a longer ban already in force stays); False for a
        trusted source (never banned). ``event``: report it through ``events()`` too."""
        cdef uint8_t ip[16]
        cdef guard_entry* e
        cdef double t = self._now(now)
        cdef int code = _reason_code(reason)
        _key(host, ip)
        if guard_is_trusted(&self.t, ip):
            return False
        e = guard_slot(&self.t, ip, t, 1)
        if e.banned_until < t + secs:
            guard_ban_entry(&self.t, e, code, t + secs, event)
        return True

    def unban(self, str host) -> bool:
        """Lift the ban of ``host`` and reset its counters; False when it was not banned."""
        cdef uint8_t ip[16]
        cdef guard_entry* e
        cdef double t = guard_now()
        _key(host, ip)
        e = guard_slot(&self.t, ip, t, 0)
        if e == NULL:
            return False
        was = e.banned_until > t
        e.banned_until = 0
        e.reason = 0
        e.count = 0
        e.dropped = 0
        e.window_start = t
        return was

    def banned_until(self, str host, now=None) -> float:
        """When the ban of ``host`` ends (0.0: not banned)."""
        cdef uint8_t ip[16]
        cdef guard_entry* e
        cdef double t = self._now(now)
        _key(host, ip)
        e = guard_slot(&self.t, ip, t, 0)
        if e == NULL or e.banned_until <= t:
            return 0.0
        return e.banned_until

    def mark_good(self, str host, double until) -> None:
        """``host`` authenticated a user: until ``until`` it may send ``good_factor`` times
        more messages per window."""
        cdef uint8_t ip[16]
        cdef guard_entry* e
        if guard_key_text(host.encode("ascii", "replace"), ip) != 0:
            return
        e = guard_slot(&self.t, ip, guard_now(), 1)
        if e.good_until < until:
            e.good_until = until

    def is_good(self, str host, now=None) -> bool:
        cdef uint8_t ip[16]
        cdef guard_entry* e
        if guard_key_text(host.encode("ascii", "replace"), ip) != 0:
            return False
        e = guard_slot(&self.t, ip, self._now(now), 0)
        return e != NULL and e.good_until > self._now(now)

    def bans(self, now=None) -> list:
        """[(host, until, reason, packets dropped during the ban)] of every ban in force."""
        cdef double t = self._now(now)
        cdef uint32_t j
        cdef guard_entry* e
        out = []
        for j in range(self.t.mask + 1):
            e = &self.t.slots[j]
            if e.used and e.banned_until > t:
                out.append((_text(e.ip), e.banned_until, REASONS[e.reason], e.dropped))
        out.sort(key=lambda row: row[1])
        return out

    def events(self) -> list:
        """Bans started by the receive path since the last call: [(host, reason, until)]."""
        cdef guard_event* ev
        out = []
        while self.t.ev_count:
            ev = &self.t.events[self.t.ev_head]
            out.append((_text(ev.ip), REASONS[ev.reason], ev.until))
            self.t.ev_head = (self.t.ev_head + 1) % GUARD_EVENTS
            self.t.ev_count -= 1
        return out

    def cost(self, unsigned int n, unsigned int sources=1, bint banned=False) -> float:
        """Seconds that ``n`` checks of the receive path take in C (no datagram, no Python),
        spread over ``sources`` addresses 198.18.x.y (banned first when ``banned``): what the
        benchmark reports as the price of the check per datagram."""
        cdef uint8_t ip[16]
        cdef unsigned int i, k
        cdef double now = guard_now(), t0, t1
        if sources == 0:
            sources = 1
        memset(ip, 0, 10)
        ip[10] = 0xff
        ip[11] = 0xff
        ip[12] = 198
        ip[13] = 18
        if banned:
            for k in range(sources):
                ip[14] = (k >> 8) & 0xff
                ip[15] = k & 0xff
                guard_ban_entry(&self.t, guard_slot(&self.t, ip, now, 1), GUARD_ADMIN, now + 3600, 0)
        t0 = guard_now_precise()
        with nogil:
            for i in range(n):
                k = i % sources
                ip[14] = (k >> 8) & 0xff
                ip[15] = k & 0xff
                guard_check_key(&self.t, ip, NULL, 0, now)
        t1 = guard_now_precise()
        return t1 - t0

    @property
    def stats(self) -> dict:
        return {"checked": self.t.checked, "dropped": self.t.dropped, "bans": self.t.bans,
                "entries": self.t.used, "evictions": self.t.evictions,
                "events_lost": self.t.ev_lost}
