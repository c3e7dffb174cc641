# relay_fax.pxi: the fax endpoint's commands (included by relay.pyx; C core in media_fax.h).
#
# A fax runs on a leg already terminated at a media endpoint (PCMA/PCMU): spandsp's T.30 over
# G.711 in the relay's worker thread. Python starts it, then gets a fax_done event (kind 5)
# carrying the fax id; fax_info(id) gives the outcome.

cdef extern from "relay_engine.h" nogil:
    ctypedef struct me_fax_result:
        uint32_t id
        int used, done, status, pages, bit_rate, ecm, x_res, y_res, width, length, bad_rows, encoding
        char phase
        int64_t start_ns, end_ns
        char remote_ident[24]
        char path[512]
        uint64_t lost_packets, late_packets, fillin_samples
        int t38
        uint64_t udptl_rx, udptl_bad, udptl_recovered
    int me_fax_start(rl_relay *r, uint64_t h, int li, const char *path, int send, const char *ident,
                     const char *header, int ecm, int t38, uint32_t *id_out)
    ctypedef struct udptl_pkt:
        uint16_t seq
        const uint8_t *ifp
        int ifp_len
        int fec
        int nsec
        const uint8_t *sec[16]
        int sec_len[16]
    int udptl_decode(const uint8_t *b, int len, udptl_pkt *u)
    int udptl_encode(uint8_t *b, int cap, uint16_t seq, const uint8_t *ifp, int ifp_len,
                     const uint8_t *const *sec, const int *sec_len, int nsec)
    int me_fax_stop(rl_relay *r, uint64_t h, int li)
    int me_fax_info(uint32_t id, me_fax_result *out)
    const char *me_fax_status_str(int code)
    int ME_EV_FAX_DONE
    int EINVAL, ENOSYS
    int HPBX_FAX_BUILT

EVENT_KINDS[ME_EV_FAX_DONE] = "fax_done"
FAX = bool(HPBX_FAX_BUILT)  # the build found spandsp


cdef class FaxCore:
    """The fax commands of one relay's media engine (see hpbx.media.engine)."""
    cdef MediaCore media

    def __init__(self, MediaCore media):
        self.media = media

    def start(self, uint64_t h, leg, str path, bint send=False, str ident="", str header="",
              bint ecm=True, bint t38=False):
        cdef int li = _leg(leg)
        cdef bytes p = os.fsencode(path)
        cdef bytes i = ident.encode("ascii", "replace")[:20]
        cdef bytes hd = header.encode("ascii", "replace")[:50]
        if len(p) >= 512:
            raise RelayError("fax path too long")
        cdef uint32_t fid = 0
        cdef int e = me_fax_start(self.media._r(), h, li, p, send, i, hd, ecm, t38, &fid)
        if e == EBUSY:
            raise RelayError("a fax already runs on that leg")
        if e == EINVAL:
            raise RelayError("fax needs a PCMA or PCMU endpoint")
        if e == ENOSYS:
            raise RelayError("fax is not built (spandsp missing)")
        if e:
            raise _media_error(e, h, li)
        return fid

    def stop(self, uint64_t h, leg):
        cdef int li = _leg(leg)
        cdef int e = me_fax_stop(self.media._r(), h, li)
        if e:
            raise _media_error(e, h, li)

    @staticmethod
    def status_str(int code):
        return me_fax_status_str(code).decode("ascii", "replace")

    @staticmethod
    def info(uint32_t fid):
        """The outcome of fax fid as a dict (None when it is no longer known)."""
        cdef me_fax_result res
        if me_fax_info(fid, &res):
            return None
        return {
            "id": res.id, "done": bool(res.done), "status": res.status,
            "reason": me_fax_status_str(res.status).decode("ascii", "replace"),
            "pages": res.pages, "bit_rate": res.bit_rate, "ecm": bool(res.ecm),
            "x_resolution": res.x_res, "y_resolution": res.y_res, "width": res.width,
            "length": res.length, "bad_rows": res.bad_rows, "encoding": res.encoding,
            "phase": chr(res.phase) if res.phase else "A",
            "transfer_ms": (res.end_ns - res.start_ns) // 1000000 if res.end_ns else 0,
            "remote_ident": res.remote_ident.decode("ascii", "replace").strip(),
            "path": os.fsdecode(res.path),
            "lost_packets": res.lost_packets, "late_packets": res.late_packets,
            "fillin_samples": res.fillin_samples, "t38": bool(res.t38),
            "udptl_rx": res.udptl_rx, "udptl_bad": res.udptl_bad,
            "udptl_recovered": res.udptl_recovered,
        }


def udptl_decode_packet(bytes data):
    """hpbx's UDPTL decoder (udptl.h) on one datagram: (seq, primary IFP, [secondaries, newest
    first]) or None when it is malformed. For tests (fuzzing) and diagnostics."""
    cdef udptl_pkt u
    cdef const uint8_t *b = data
    if udptl_decode(b, len(data), &u):
        return None
    return (u.seq, (<const char *>u.ifp)[:u.ifp_len],
            [(<const char *>u.sec[i])[:u.sec_len[i]] for i in range(u.nsec)])


def udptl_encode_packet(int seq, bytes ifp, list secondaries=None, int cap=1500):
    """A UDPTL datagram (udptl.h encoder); None when the IFP is empty or too long."""
    cdef uint8_t out[1500]
    cdef const uint8_t *sec[16]
    cdef int sl[16]
    secs = [bytes(x) for x in (secondaries or [])][:16]
    for i, x in enumerate(secs):
        sec[i] = <const uint8_t *>(<const char *>x)
        sl[i] = len(x)
    if cap > 1500:
        cap = 1500
    cdef int n = udptl_encode(out, cap, seq & 0xffff, ifp, len(ifp), sec, sl, len(secs))
    if n < 0:
        return None
    return (<const char *>out)[:n]
