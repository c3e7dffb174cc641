# relay_media.pxi: the media engine's commands (included by relay.pyx; C core in media_engine.h).
#
# A leg of a relay session can be terminated at a media endpoint that plays prompts, records,
# hears and sends digits and joins a mixing room; all of it runs in the relay's worker threads.
# Python only sends commands here and drains events; it never sees a frame. Every call holds
# the GIL throughout (see Relay's lifecycle comment): the C side takes the owning worker's
# mutex for a few microseconds.

from libc.stdint cimport int16_t, uint8_t, uint16_t

cdef extern from "relay_engine.h" nogil:
    ctypedef struct me_prompt:
        uint32_t n
    ctypedef struct me_plist:
        uint16_t n
    ctypedef struct me_event:
        uint64_t handle
        int64_t t_ns
        uint32_t value
        uint32_t id
        uint8_t kind
        uint8_t leg
        uint8_t reason
        uint8_t source
        char digit
    ctypedef struct me_stats_t:
        int64_t players, recorders, endpoints, rooms, room_members
        uint64_t late_ticks, missed_slots, late_slots, sent, send_errors, ticks, events_dropped
        uint64_t write_drops, write_errors
        double jitter_p50_ms, jitter_p99_ms, jitter_max_ms

    me_prompt *me_prompt_new(const int16_t *pcm, uint32_t n)
    void me_prompt_unref(me_prompt *p)
    me_plist *me_plist_new(int n)
    void me_plist_set(me_plist *l, int i, me_prompt *p)
    void me_plist_free(me_plist *l)
    int me_attach(rl_relay *r)
    int me_event_fd(rl_relay *r)
    int me_events_take(rl_relay *r, me_event *out, int mx)
    int me_terminate(rl_relay *r, uint64_t h, int li, int codec, int pt, int ptime_ms, int dtmf_pt,
                     int inband)
    int me_bridge(rl_relay *r, uint64_t h, int li)
    int me_watch(rl_relay *r, uint64_t h, int li, int dtmf_pt, int dtmf_alt, int inband, int codec, int pt)
    int me_play(rl_relay *r, uint64_t h, int li, me_plist *lst, int loop, uint16_t barge, int kind,
                uint32_t start)
    int me_stop_play(rl_relay *r, uint64_t h, int li)
    int me_record(rl_relay *r, uint64_t h, int li, int fd, uint32_t max_ms, uint32_t silence_ms,
                  uint16_t stop_mask, uint32_t gate_ms, uint32_t *id_out)
    int me_stop_record(rl_relay *r, uint64_t h, int li)
    int me_send_dtmf(rl_relay *r, uint64_t h, int li, const char *digits, int n, int duration_ms)
    int me_room_create(rl_relay *r, uint32_t *id)
    int me_room_join(rl_relay *r, uint32_t id, uint64_t h, int li)
    int me_room_leave(rl_relay *r, uint64_t h, int li)
    int me_room_mute(rl_relay *r, uint64_t h, int li, int muted)
    int me_room_delete(rl_relay *r, uint32_t id)
    void me_stats(rl_relay *r, me_stats_t *o)
    void me_stats_reset(rl_relay *r)
    int ME_EV_DIGIT, ME_EV_PLAY_DONE, ME_EV_RECORD_DONE, ME_EV_TONE_DONE
    int ENODEV, ENOMEM, EMFILE, EBUSY, ENOSPC, ESRCH
    int ME_NCODECS

# G.722 when the build found spandsp (setup.py defines HPBX_G722)
CODECS = {"PCMA": 0, "PCMU": 1, "G722": 2} if ME_NCODECS > 2 else {"PCMA": 0, "PCMU": 1}
EVENT_KINDS = {1: "digit", 2: "play_done", 3: "record_done", 4: "tone_done"}
PLAY_REASONS = ("end", "barge_in", "stopped")
RECORD_REASONS = ("digit", "silence", "max", "stopped", "hangup", "error")
DIGIT_SOURCES = ("rfc4733", "inband")
DIGITS = "0123456789*#ABCD"  # RFC 4733 event codes 0-15


def digit_mask(str digits):
    """Bit mask over RFC 4733 event codes for a string of digits ("0123456789*#ABCD")."""
    cdef int m = 0
    for c in digits.upper():
        i = DIGITS.find(c)
        if i < 0:
            raise RelayError(f"{c!r} is not a DTMF digit (0-9, *, #, A-D)")
        m |= 1 << i
    return m


cdef class Prompt:
    """8 kHz s16 PCM encoded once to PCMA and PCMU, shared read-only by every player.

    Freed when the last player holding it finishes and this object is gone.
    """
    cdef me_prompt *_p
    cdef readonly uint32_t samples

    def __cinit__(self, bytes pcm):
        cdef Py_ssize_t n = len(pcm) // 2
        cdef const unsigned char[:] view = pcm
        if n < 1:
            raise RelayError("a prompt needs at least one sample")
        if n > 8000 * 3600:
            raise RelayError("a prompt is at most one hour long")
        self._p = me_prompt_new(<const int16_t *>&view[0], <uint32_t>n)
        if self._p == NULL:
            raise MemoryError()
        self.samples = <uint32_t>n

    def __dealloc__(self):
        if self._p != NULL:
            me_prompt_unref(self._p)
            self._p = NULL

    @property
    def duration_ms(self):
        return self.samples // 8


cdef _media_error(int e, uint64_t h, int li):
    if e == ENOENT:
        return RelayError(f"unknown relay session {h}")
    if e == ENODEV:
        return RelayError(f"leg {'ab'[li]} of session {h} is not a media endpoint")
    if e == ESRCH:
        return RelayError("unknown room (or the leg is in no room)")
    if e == EMFILE:
        return RelayError("too many recordings at once")
    if e == EBUSY:
        return RelayError("the leg is already recording")
    if e == ENOSPC:
        return RelayError("no room for that (digit queue or room full)")
    return RelayError(os.strerror(e))


cdef class MediaCore:
    """The media commands of one Relay (created once per relay; see hpbx.media.engine)."""
    cdef Relay relay

    def __init__(self, Relay relay):
        self.relay = relay
        cdef int e = me_attach(relay._live())
        if e:
            raise RelayError(f"cannot start the media engine: {os.strerror(e)}")

    cdef rl_relay *_r(self) except NULL:
        return self.relay._live()

    def fileno(self):
        """An eventfd that becomes readable when events wait (for loop.add_reader)."""
        return me_event_fd(self._r())

    def events(self, int mx=256):
        """Take waiting events: tuples (kind, handle, leg, time, digit, source, value, id, reason)."""
        cdef me_event buf[256]
        cdef int i, n
        if mx > 256:
            mx = 256
        n = me_events_take(self._r(), buf, mx)
        out = []
        for i in range(n):
            e = &buf[i]
            out.append((EVENT_KINDS.get(e.kind, "?"), e.handle, e.leg, e.t_ns / 1e9,
                        chr(e.digit) if e.digit else "", e.source, e.value, e.id, e.reason))
        return out

    def terminate(self, uint64_t h, leg, str codec="PCMA", int pt=8, int ptime_ms=20,
                  int dtmf_pt=101, bint inband=False):
        cdef int li = _leg(leg)
        if codec not in CODECS:
            raise RelayError(f"codec must be one of {', '.join(CODECS)}, not {codec!r}")
        if ptime_ms not in (10, 20, 30):
            raise RelayError(f"ptime must be 10, 20 or 30 ms, not {ptime_ms}")
        if not 0 <= pt <= 127 or not -1 <= dtmf_pt <= 127:
            raise RelayError("payload types are 0-127")
        cdef int e = me_terminate(self._r(), h, li, CODECS[codec], pt, ptime_ms, dtmf_pt, inband)
        if e:
            raise _media_error(e, h, li)

    def watch(self, uint64_t h, leg, int dtmf_pt=101, int dtmf_alt=-1, bint inband=False,
              str codec="PCMA", int pt=8):
        """Report the digits of a relayed leg (digit events with reason 1) without stopping the
        relay; dtmf_pt = dtmf_alt = -1 and inband False ends the watch."""
        cdef int li = _leg(leg)
        if codec not in CODECS:
            raise RelayError(f"codec must be one of {', '.join(CODECS)}, not {codec!r}")
        if not 0 <= pt <= 127 or not -1 <= dtmf_pt <= 127 or not -1 <= dtmf_alt <= 127:
            raise RelayError("payload types are 0-127")
        cdef int e = me_watch(self._r(), h, li, dtmf_pt, dtmf_alt, inband, CODECS[codec], pt)
        if e:
            raise _media_error(e, h, li)

    def bridge(self, uint64_t h, leg):
        cdef int li = _leg(leg)
        cdef int e = me_bridge(self._r(), h, li)
        if e:
            raise _media_error(e, h, li)

    def play(self, uint64_t h, leg, list prompts, bint loop=False, int barge=0, bint tone=False,
             int start_samples=0):
        cdef int li = _leg(leg)
        cdef int i, n = len(prompts)
        cdef Prompt p
        if n < 1 or n > 1000:
            raise RelayError("play needs 1-1000 prompts")
        for p in prompts:  # type check before anything is allocated
            pass
        cdef rl_relay *r = self._r()
        cdef me_plist *lst = me_plist_new(n)
        if lst == NULL:
            raise MemoryError()
        for i in range(n):
            p = prompts[i]
            me_plist_set(lst, i, p._p)
        cdef int e = me_play(r, h, li, lst, loop, <uint16_t>barge,
                             ME_EV_TONE_DONE if tone else ME_EV_PLAY_DONE, <uint32_t>start_samples)
        if e:
            raise _media_error(e, h, li)

    def stop_play(self, uint64_t h, leg):
        cdef int li = _leg(leg)
        cdef int e = me_stop_play(self._r(), h, li)
        if e:
            raise _media_error(e, h, li)

    def record(self, uint64_t h, leg, int fd, uint32_t max_ms, uint32_t silence_ms=0, int stop_mask=0,
               uint32_t gate_ms=0):
        """Record into fd (a file with room for its 44-byte WAV header; owned from here on)."""
        cdef int li = _leg(leg)
        cdef uint32_t rid = 0
        cdef int e = me_record(self._r(), h, li, fd, max_ms, silence_ms, <uint16_t>stop_mask, gate_ms,
                               &rid)
        if e:
            raise _media_error(e, h, li)
        return rid

    def stop_record(self, uint64_t h, leg):
        cdef int li = _leg(leg)
        cdef int e = me_stop_record(self._r(), h, li)
        if e:
            raise _media_error(e, h, li)

    def send_dtmf(self, uint64_t h, leg, str digits, int duration_ms=100):
        cdef int li = _leg(leg)
        cdef bytes b = digits.upper().encode("ascii")
        digit_mask(digits)
        if not 40 <= duration_ms <= 2000:
            raise RelayError("duration_ms must be 40-2000")
        cdef int e = me_send_dtmf(self._r(), h, li, b, len(b), duration_ms)
        if e:
            raise _media_error(e, h, li)

    def room_create(self):
        cdef uint32_t rid = 0
        cdef int e = me_room_create(self._r(), &rid)
        if e:
            raise _media_error(e, 0, 0)
        return rid

    def room_join(self, uint32_t room, uint64_t h, leg):
        cdef int li = _leg(leg)
        cdef int e = me_room_join(self._r(), room, h, li)
        if e:
            raise _media_error(e, h, li)

    def room_leave(self, uint64_t h, leg):
        cdef int li = _leg(leg)
        cdef int e = me_room_leave(self._r(), h, li)
        if e:
            raise _media_error(e, h, li)

    def room_mute(self, uint64_t h, leg, bint muted):
        cdef int li = _leg(leg)
        cdef int e = me_room_mute(self._r(), h, li, muted)
        if e:
            raise _media_error(e, h, li)

    def room_delete(self, uint32_t room):
        cdef int e = me_room_delete(self._r(), room)
        if e:
            raise _media_error(e, 0, 0)

    def stats(self):
        cdef me_stats_t s
        me_stats(self._r(), &s)
        return {
            "players": s.players, "recorders": s.recorders, "endpoints": s.endpoints,
            "rooms": s.rooms, "room_members": s.room_members, "late_ticks": s.late_ticks,
            "missed_slots": s.missed_slots, "late_slots": s.late_slots, "packets_sent": s.sent, "send_errors": s.send_errors,
            "ticks": s.ticks, "events_dropped": s.events_dropped, "write_drops": s.write_drops,
            "write_errors": s.write_errors, "send_jitter_p50_ms": s.jitter_p50_ms,
            "send_jitter_p99_ms": s.jitter_p99_ms, "send_jitter_max_ms": s.jitter_max_ms,
        }

    def stats_reset(self):
        me_stats_reset(self._r())
