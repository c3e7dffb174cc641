# Declarations of the compiled SIP message core, for other hpbx._fast modules to cimport.
from libc.stdint cimport int32_t, int16_t, uint8_t

cdef enum:
    INLINE_HDRS = 32

cdef struct HdrEntry:
    int16_t id          # header id (H_OTHER for unknown names)
    uint8_t folded      # value spans continuation lines (decode unfolds)
    int32_t name_off
    int32_t name_len
    int32_t val_off
    int32_t val_len


cdef class SipMessage:
    cdef bytes _buf
    cdef Py_ssize_t _start, _end, _body_off
    cdef HdrEntry _inline[INLINE_HDRS]
    cdef HdrEntry* _hdrs
    cdef int _nhdrs, _caphdrs
    cdef readonly bint is_request
    cdef readonly int status
    cdef readonly long cseq
    cdef readonly int max_forwards
    cdef readonly long content_length
    cdef readonly int via_port
    cdef readonly int via_rport
    # offsets (absolute in _buf) of lazily decoded strings; length -1 means absent
    cdef Py_ssize_t _meth_o, _meth_l, _ruri_o, _ruri_l, _reason_o, _reason_l
    cdef Py_ssize_t _cid_o, _cid_l, _cseqm_o, _cseqm_l, _ftag_o, _ftag_l, _ttag_o, _ttag_l
    cdef Py_ssize_t _vtr_o, _vtr_l, _vhost_o, _vhost_l, _vbr_o, _vbr_l, _vrc_o, _vrc_l
    cdef object _method, _call_id, _cseq_method, _from_tag, _to_tag
    cdef object _via_transport, _via_host, _via_branch, _via_received
    cdef list _lazy

    cdef int _add_hdr(self, int hid, Py_ssize_t no, Py_ssize_t nl, Py_ssize_t vo, Py_ssize_t vl,
                      bint folded) except -1
    cdef object _lget(self, int i)
    cdef int _lset(self, int i, object v) except -1
    cdef str _sub(self, Py_ssize_t o, Py_ssize_t l)
    cdef str _value(self, HdrEntry* h)
    cdef int _find(self, int hid) noexcept
    cdef object _na(self, int hid, str what)
    cdef int _match(self, int i, int hid, bytes lname) noexcept


cpdef SipMessage parse(bytes data, bint datagram=*)
