# cython: language_level=3
from libc.stdint cimport uint8_t, uint32_t, uint64_t

cdef extern from "guard_core.h" nogil:
    enum: GUARD_PROBE, GUARD_MAX_AGENTS, GUARD_AGENT_LEN, GUARD_MAX_TRUSTED, GUARD_EVENTS
    enum: GUARD_NONE, GUARD_FLOOD, GUARD_SCANNER, GUARD_AUTH, GUARD_ADMIN, GUARD_USER, GUARD_REASONS
    enum: GUARD_PASS, GUARD_DROP
    ctypedef struct guard_entry:
        uint8_t ip[16]
        uint8_t used
        uint8_t trusted
        uint8_t reason
        uint32_t count
        double window_start
        double banned_until
        double good_until
        double last_seen
        uint64_t dropped
    ctypedef struct guard_event:
        uint8_t ip[16]
        uint8_t reason
        double until
    ctypedef struct guard_net:
        uint8_t net[16]
        int bits
    ctypedef struct guard_table:
        guard_entry* slots
        uint32_t mask
        uint32_t used
        int enabled
        double window
        uint32_t threshold
        double ban_secs
        uint32_t good_factor
        int nagents
        char agents[GUARD_MAX_AGENTS][GUARD_AGENT_LEN]
        int agent_len[GUARD_MAX_AGENTS]
        int ntrusted
        guard_net trusted[GUARD_MAX_TRUSTED]
        guard_event events[GUARD_EVENTS]
        uint32_t ev_head, ev_count
        uint64_t ev_lost
        uint64_t checked, dropped, bans, evictions
    double guard_now()
    int guard_check_raw(guard_table* g, const void* sa, const char* buf, size_t length, double now)


cdef class Guard:
    cdef guard_table t
    cdef readonly bint ready
    cdef double _now(self, now)
