# cython: boundscheck=False, wraparound=False
"""WebSocket framing (RFC 6455 §5) for SIP over WebSocket (RFC 7118), server side.

``Deframer(max_message).feed(data)`` takes the bytes a connection received and returns the
complete messages in them as ``(opcode, payload)`` pairs: text (1) and binary (2) messages with
their fragments joined and unmasked, control frames (8 close, 9 ping, 10 pong) as they come
(they may arrive between the fragments of a message). A protocol violation raises
``WsProtocolError(code, reason)`` with the close code to send: 1002 for an unmasked client
frame, a reserved bit or opcode, a fragmented or oversized control frame, a continuation
without a start; 1009 when a message (joined fragments) exceeds ``max_message`` octets, found
from the frame header before the payload is buffered.

``frame(opcode, payload)`` builds one unmasked, final server frame.
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy

OP_CONT = 0
OP_TEXT = 1
OP_BINARY = 2
OP_CLOSE = 8
OP_PING = 9
OP_PONG = 10


class WsProtocolError(Exception):
    """A frame the peer should not have sent; ``code`` is the close code to answer."""

    def __init__(self, int code, str reason):
        super().__init__(reason)
        self.code = code
        self.reason = reason


cdef void _unmask(uint8_t* out, const uint8_t* src, Py_ssize_t n, const uint8_t* mask) noexcept nogil:
    cdef Py_ssize_t i = 0
    cdef uint32_t m32
    cdef uint64_t m64
    memcpy(&m32, mask, 4)
    m64 = (<uint64_t>m32) | ((<uint64_t>m32) << 32)
    cdef uint64_t w
    while i + 8 <= n:
        memcpy(&w, src + i, 8)
        w ^= m64
        memcpy(out + i, &w, 8)
        i += 8
    while i < n:
        out[i] = src[i] ^ mask[i & 3]
        i += 1


cdef class Deframer:
    cdef bytearray buf
    cdef Py_ssize_t max_message
    cdef int frag_op           # opcode of the message being reassembled, -1 when none
    cdef list frags
    cdef Py_ssize_t frag_len

    def __cinit__(self, Py_ssize_t max_message=65536):
        self.buf = bytearray()
        self.max_message = max_message
        self.frag_op = -1
        self.frags = []
        self.frag_len = 0

    @property
    def buffered(self):
        return len(self.buf) + self.frag_len

    def feed(self, bytes data):
        cdef list out = []
        cdef bytearray buf = self.buf
        buf += data
        cdef Py_ssize_t n, pos = 0, hdr, plen
        cdef const uint8_t* p
        cdef uint8_t b0, b1
        cdef int op
        cdef bint fin
        cdef uint64_t l64
        cdef bytes payload
        cdef int i
        while True:
            n = len(buf) - pos
            if n < 2:
                break
            p = <const uint8_t*>(<char*>buf) + pos
            b0 = p[0]
            b1 = p[1]
            fin = (b0 & 0x80) != 0
            op = b0 & 0x0F
            if b0 & 0x70:
                raise WsProtocolError(1002, "reserved bit set (no extension was negotiated)")
            if not (b1 & 0x80):
                raise WsProtocolError(1002, "client frame not masked")
            if op not in (0, 1, 2, 8, 9, 10):
                raise WsProtocolError(1002, f"reserved opcode {op}")
            l64 = b1 & 0x7F
            hdr = 2
            if l64 == 126:
                if n < 4:
                    break
                l64 = (<uint64_t>p[2] << 8) | p[3]
                hdr = 4
            elif l64 == 127:
                if n < 10:
                    break
                l64 = 0
                for i in range(8):
                    l64 = (l64 << 8) | p[2 + i]
                hdr = 10
            if op >= 8:
                if not fin:
                    raise WsProtocolError(1002, "fragmented control frame")
                if l64 > 125:
                    raise WsProtocolError(1002, "control frame longer than 125 octets")
            else:
                if op == 0 and self.frag_op < 0:
                    raise WsProtocolError(1002, "continuation frame without a message")
                if op != 0 and self.frag_op >= 0:
                    raise WsProtocolError(1002, "new message inside a fragmented one")
                if l64 > <uint64_t>self.max_message or \
                        <uint64_t>self.frag_len + l64 > <uint64_t>self.max_message:
                    raise WsProtocolError(1009, f"message larger than {self.max_message} octets")
            plen = <Py_ssize_t>l64
            if n < hdr + 4 + plen:
                break
            payload = PyBytes_FromStringAndSize(NULL, plen)
            _unmask(<uint8_t*>PyBytes_AS_STRING(payload), p + hdr + 4, plen, p + hdr)
            pos += hdr + 4 + plen
            if op >= 8:
                out.append((op, payload))
            elif fin and op != 0:
                out.append((op, payload))
            elif op != 0:
                self.frag_op = op
                self.frags = [payload]
                self.frag_len = plen
            else:
                self.frags.append(payload)
                self.frag_len += plen
                if fin:
                    out.append((self.frag_op, b"".join(self.frags)))
                    self.frag_op = -1
                    self.frags = []
                    self.frag_len = 0
        if pos:
            del buf[:pos]
        return out


def frame(int opcode, bytes payload) -> bytes:
    """One final, unmasked frame (what a server sends)."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(payload)
    cdef Py_ssize_t hdr = 2 if n < 126 else (4 if n < 65536 else 10)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, hdr + n)
    cdef uint8_t* o = <uint8_t*>PyBytes_AS_STRING(out)
    cdef int i
    o[0] = 0x80 | (opcode & 0x0F)
    if n < 126:
        o[1] = <uint8_t>n
    elif n < 65536:
        o[1] = 126
        o[2] = <uint8_t>(n >> 8)
        o[3] = <uint8_t>n
    else:
        o[1] = 127
        for i in range(8):
            o[2 + i] = <uint8_t>((<uint64_t>n) >> (56 - 8 * i))
    memcpy(o + hdr, PyBytes_AS_STRING(payload), n)
    return out
