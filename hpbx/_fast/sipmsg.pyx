# cython: language_level=3
"""The compiled SIP message core: one-pass parse, lazy header decoding, serialization, TCP framing.

Parsing walks the ``bytes`` once with memchr over a ``const unsigned char*``; every header line
becomes an entry (id, name offset/length, value offset/length) in a small C array. The fields a
transaction layer needs for matching (top Via, tags, Call-ID, CSeq, Max-Forwards,
Content-Length) are validated in that pass and kept as offsets; Python strings are only made
when an attribute is read, and then cached. Every index is checked against the buffer length
explicitly (no global boundscheck=False is needed because all access goes through raw pointers
guarded by those checks).
"""
cimport cython
from libc.string cimport memchr, memcmp, memcpy, strlen
from libc.stdint cimport int16_t, uint64_t
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.mem cimport PyMem_Malloc, PyMem_Realloc, PyMem_Free
from cpython.unicode cimport PyUnicode_DecodeUTF8

import os

cdef extern from "Python.h":
    object PyUnicode_New(Py_ssize_t size, Py_UCS4 maxchar)
    void* PyUnicode_DATA(object o)
    bint PyUnicode_IS_ASCII(object o)
    Py_ssize_t PyUnicode_GET_LENGTH(object o)
    object PyBytes_FromStringAndSize(const char* v, Py_ssize_t n)

from hpbx.errors import SipParseError


KEEPALIVE_PING = b"\r\n\r\n"
KEEPALIVE_PONG = b"\r\n"
MAGIC_COOKIE = "z9hG4bK"
# A UDP datagram cannot exceed 65,535 octets; a stream message larger than that is refused too
# (413) so that a peer cannot make the framer buffer without bound.
cdef enum:
    C_MAX_MESSAGE = 65536
MAX_MESSAGE = C_MAX_MESSAGE

# ---------------------------------------------------------------- character classes
cdef enum:
    C_TOKEN = 1     # RFC 3261 token
    C_HOST = 2      # hostname / IPv4 characters
    C_DIGIT = 4
    C_V6 = 8        # inside an IPv6 reference
    C_URIP = 16     # uri-parameter characters (paramchar, escapes kept)
    C_USER = 32     # userinfo characters (user-unreserved, escapes kept)
    C_PVAL = 64     # header-parameter values: token / host (IPv6 reference)
    C_HNAME = 128   # host characters other than digits and '.' (a name, not an IPv4 address)

cdef unsigned char CT[256]
cdef unsigned char LOWER[256]   # ASCII lower-casing (the libc compare is locale-aware and slow)


cdef void _init_classes():
    cdef int c
    for c in range(256):
        CT[c] = 0
        LOWER[c] = c + 32 if 65 <= c <= 90 else c
    for c in range(256):
        if (48 <= c <= 57) or (65 <= c <= 90) or (97 <= c <= 122):
            CT[c] |= C_TOKEN | C_HOST | C_URIP | C_USER | C_PVAL
        if 48 <= c <= 57:
            CT[c] |= C_DIGIT | C_V6
        if (65 <= c <= 70) or (97 <= c <= 102):
            CT[c] |= C_V6
    for c in b"-.!%*_+`'~":
        CT[c] |= C_TOKEN | C_PVAL
    for c in b"-._":
        CT[c] |= C_HOST
    for c in range(256):
        if (CT[c] & C_HOST) and not (CT[c] & C_DIGIT) and c != 46:
            CT[c] |= C_HNAME
    for c in b":.":
        CT[c] |= C_V6
    for c in b"-_.!~*'()%[]/:&+$":
        CT[c] |= C_URIP
    for c in b"-_.!~*'()%&=+$,;?/":
        CT[c] |= C_USER
    for c in b"[]:":
        CT[c] |= C_PVAL


_init_classes()


cdef inline bint _ieq(const unsigned char* a, const char* lower, Py_ssize_t n) noexcept nogil:
    """a[:n] equals the lower-case ASCII literal, ignoring case."""
    cdef Py_ssize_t i
    for i in range(n):
        if LOWER[a[i]] != <unsigned char>lower[i]:
            return False
    return True


cdef inline bint _lws(unsigned char c) noexcept nogil:
    # inside a header value CR and LF only occur as part of a fold (checked by the line scan)
    return c == 32 or c == 9 or c == 13 or c == 10


cdef inline Py_ssize_t _skip_lws(const unsigned char* b, Py_ssize_t i, Py_ssize_t e) noexcept nogil:
    while i < e and _lws(b[i]):
        i += 1
    return i


cdef inline Py_ssize_t _rtrim(const unsigned char* b, Py_ssize_t s, Py_ssize_t e) noexcept nogil:
    while e > s and _lws(b[e - 1]):
        e -= 1
    return e


cdef inline Py_ssize_t _find(const unsigned char* b, Py_ssize_t i, Py_ssize_t e, unsigned char c) noexcept nogil:
    cdef const void* p
    if i >= e:
        return -1
    p = memchr(b + i, c, <size_t>(e - i))
    if p == NULL:
        return -1
    return <const unsigned char*>p - b


cdef Py_ssize_t _skip_quoted(const unsigned char* b, Py_ssize_t i, Py_ssize_t e) noexcept nogil:
    """b[i] is '"'; index after the closing quote, or -1 when unterminated."""
    i += 1
    while i < e:
        if b[i] == 34:
            return i + 1
        if b[i] == 92:
            i += 2
        else:
            i += 1
    return -1


cdef Py_ssize_t _next_comma(const unsigned char* b, Py_ssize_t i, Py_ssize_t e) noexcept nogil:
    """Index of the next comma outside quotes and <>, e when none, -1 on an open quote."""
    cdef bint angle = False
    cdef unsigned char c
    while i < e:
        c = b[i]
        if c == 34:
            i = _skip_quoted(b, i, e)
            if i < 0:
                return -1
            continue
        if c == 60:
            angle = True
        elif c == 62:
            angle = False
        elif c == 44 and not angle:
            return i
        i += 1
    return e


cdef inline str _dec(const unsigned char* b, Py_ssize_t o, Py_ssize_t l):
    return PyUnicode_DecodeUTF8(<const char*>(b + o), l, "surrogateescape")


cdef str _astr(const unsigned char* b, Py_ssize_t o, Py_ssize_t l):
    """A str of an octet range: ASCII is copied straight into a compact str (the common case
    for Call-IDs, tags and branches), anything else is decoded as UTF-8."""
    cdef Py_ssize_t i
    cdef unsigned char acc = 0
    cdef object r
    for i in range(o, o + l):
        acc |= b[i]
    if acc & 0x80:
        return _dec(b, o, l)
    r = PyUnicode_New(l, 127)
    memcpy(PyUnicode_DATA(r), b + o, <size_t>l)
    return <str>r


cdef str _dec_unfold(const unsigned char* b, Py_ssize_t o, Py_ssize_t l):
    """Decode a value; every fold (WS* CRLF WS+) becomes one SP (RFC 3261 7.3.1)."""
    cdef Py_ssize_t i, e = o + l, k
    if l <= 0:
        return ""
    if memchr(b + o, 13, <size_t>l) == NULL:
        return _dec(b, o, l)
    out = bytearray()
    i = o
    while i < e:
        if b[i] == 13 and not (i + 1 < e and b[i + 1] == 10):
            raise SipParseError("bare CR in a header value", 400)
        if b[i] == 13:
            while len(out) and out[-1] in (32, 9):
                out.pop()
            k = i + 2
            while k < e and (b[k] == 32 or b[k] == 9):
                k += 1
            out.append(32)
            i = k
        else:
            out.append(b[i])
            i += 1
    return bytes(out).decode("utf-8", "surrogateescape")


cdef long _digits(const unsigned char* b, Py_ssize_t s, Py_ssize_t e, long cap) noexcept nogil:
    """Value of the all-digit range [s, e); -1 when empty, not digits, or above cap."""
    cdef long v = 0
    if s >= e:
        return -1
    while s < e:
        if not (CT[b[s]] & C_DIGIT):
            return -1
        v = v * 10 + (b[s] - 48)
        if v > cap:
            return -1
        s += 1
    return v


# ---------------------------------------------------------------- errors of the sub-scanners
cdef enum:
    E_OK = 0
    E_SCHEME = 1
    E_EMPTY = 2
    E_HOST = 3
    E_IPV6 = 4
    E_PORT = 5
    E_USER = 6
    E_PARAM = 7
    E_HDRS = 8
    E_CHAR = 9
    E_QUOTE = 10
    E_NOANGLE = 11
    E_ANGLE = 12
    E_DISP = 13
    E_HPARAM = 14
    E_ADDRHDR = 15
    E_AFTER = 16
    E_VIA = 17
    E_VIAVER = 18
    E_VIAHOST = 19
    E_VIAPORT = 20

ERRORS = (
    "ok",
    "missing or invalid URI scheme",
    "empty value",
    "invalid host",
    "invalid IPv6 reference",
    "invalid port",
    "invalid user part",
    "invalid URI parameter",
    "invalid URI headers",
    "invalid character in URI",
    "unterminated quoted string",
    "display name without <URI>",
    "unterminated <URI>",
    "invalid character in display name",
    "invalid header parameter",
    "URI with headers must be enclosed in <>",
    "unexpected text after URI",
    "malformed sent-protocol",
    "unsupported SIP version",
    "invalid sent-by host",
    "invalid sent-by port",
)


cdef object _err(str what, int code, int status=400):
    return SipParseError(f"invalid {what}: {ERRORS[code]}", status)


cdef bint _host_ok(const unsigned char* b, Py_ssize_t o, Py_ssize_t l) noexcept nogil:
    """A hostname (labels not empty, not starting or ending in '-') or a dotted IPv4 address
    with four parts of at most 255: "10.10.10.256" is neither. The caller has checked that
    every octet is a host character. One short loop, no calls: hosts are a few octets."""
    cdef Py_ssize_t i, e = o + l
    cdef unsigned char acc = 0, c, prev = 46
    cdef int parts = 0, nd = 0, v = 0
    if l <= 0 or l > 255:
        return False
    for i in range(o, e):
        c = b[i]
        acc |= CT[c]
        if c == 46:
            if prev == 46 or prev == 45:
                return False
        elif c == 45 and prev == 46:
            return False
        prev = c
    if acc & C_HNAME:
        return prev != 45
    for i in range(o, e):
        c = b[i]
        if c == 46:
            if nd == 0:
                return False
            parts += 1
            nd = 0
            v = 0
        else:
            v = v * 10 + (c - 48)
            nd += 1
            if nd > 3 or v > 255:
                return False
    return parts == 3 and nd > 0


# ---------------------------------------------------------------- URI scanner
cdef enum:
    K_OTHER = 0
    K_SIP = 1
    K_SIPS = 2
    K_TEL = 3

cdef struct UriParts:
    int kind
    Py_ssize_t sch_o, sch_l
    Py_ssize_t user_o, user_l, pw_o, pw_l, host_o, host_l
    long port
    Py_ssize_t par_o, par_l, hdr_o, hdr_l, opq_o, opq_l


cdef int _scan_params_uri(const unsigned char* b, Py_ssize_t s, Py_ssize_t e) noexcept nogil:
    """;name[=value] list of uri-parameters, [s, e) after the first ';'."""
    cdef Py_ssize_t i = s, n0
    while True:
        n0 = i
        while i < e and (CT[b[i]] & C_URIP) and b[i] != 61:
            i += 1
        if i == n0:
            return E_PARAM
        if i < e and b[i] == 61:
            i += 1
            n0 = i
            while i < e and (CT[b[i]] & C_URIP):
                i += 1
            if i == n0:
                return E_PARAM
        if i >= e:
            return E_OK
        if b[i] != 59:
            return E_PARAM
        i += 1


cdef int _scan_sip_rest(const unsigned char* b, Py_ssize_t colon, Py_ssize_t e, Py_ssize_t at,
                        UriParts* u) noexcept nogil:
    cdef Py_ssize_t i, q, h, close, k
    cdef bint has_colon, has_eq
    u.user_l = u.pw_l = u.par_l = u.hdr_l = -1
    u.host_l = 0
    u.port = 0
    h = colon + 1
    if at >= 0:
        k = _find(b, colon + 1, at, 58)
        if k < 0:
            k = at
        else:
            u.pw_o = k + 1
            u.pw_l = at - k - 1
            for i in range(k + 1, at):
                if not (CT[b[i]] & C_USER):
                    return E_USER
        u.user_o = colon + 1
        u.user_l = k - colon - 1
        if u.user_l <= 0:
            return E_USER
        for i in range(colon + 1, k):
            if not (CT[b[i]] & C_USER):
                return E_USER
        h = at + 1
    q = _find(b, h, e, 63)
    if q < 0:
        q = e
    if h >= q:
        return E_HOST
    if b[h] == 91:
        close = _find(b, h, q, 93)
        if close < 0 or close == h + 1:
            return E_IPV6
        has_colon = False
        for i in range(h + 1, close):
            if not (CT[b[i]] & C_V6):
                return E_IPV6
            if b[i] == 58:
                has_colon = True
        if not has_colon:
            return E_IPV6
        u.host_o = h + 1
        u.host_l = close - h - 1
        i = close + 1
    else:
        i = h
        while i < q and (CT[b[i]] & C_HOST):
            i += 1
        if i == h or not _host_ok(b, h, i - h):
            return E_HOST
        u.host_o = h
        u.host_l = i - h
    if i < q and b[i] == 58:
        k = i + 1
        while k < q and (CT[b[k]] & C_DIGIT):
            k += 1
        u.port = _digits(b, i + 1, k, 65535)
        if u.port <= 0:
            return E_PORT
        i = k
    if i < q:
        if b[i] != 59:
            return E_HOST
        if _scan_params_uri(b, i + 1, q) != E_OK:
            return E_PARAM
        u.par_o = i + 1
        u.par_l = q - i - 1
    if q < e:
        u.hdr_o = q + 1
        u.hdr_l = e - q - 1
        if u.hdr_l <= 0:
            return E_HDRS
        # hname "=" hvalue *( "&" hname "=" hvalue ); a raw "@" is common in the Replaces of
        # a Refer-To (RFC 3891) though not in the ABNF
        has_eq = False
        for i in range(q + 1, e):
            if b[i] == 38:
                if not has_eq:
                    return E_HDRS
                has_eq = False
            elif b[i] == 61:
                has_eq = True
            elif not (CT[b[i]] & C_URIP) and b[i] != 63 and b[i] != 64:
                return E_HDRS
        if not has_eq:
            return E_HDRS
    return E_OK


cdef int _scan_uri(const unsigned char* b, Py_ssize_t s, Py_ssize_t e, UriParts* u) noexcept nogil:
    cdef Py_ssize_t i, q, at, colon
    cdef unsigned char c
    cdef int rc
    u.kind = K_OTHER
    u.user_o = u.pw_o = u.host_o = u.par_o = u.hdr_o = u.opq_o = 0
    u.user_l = u.pw_l = u.par_l = u.hdr_l = -1
    u.host_l = 0
    u.opq_l = 0
    u.port = 0
    if s >= e:
        return E_EMPTY
    c = b[s]
    if not ((65 <= c <= 90) or (97 <= c <= 122)):
        return E_SCHEME
    i = s + 1
    while i < e and ((CT[b[i]] & C_HOST and b[i] != 95) or b[i] == 43):
        i += 1
    if i >= e or b[i] != 58:
        return E_SCHEME
    u.sch_o = s
    u.sch_l = i - s
    colon = i
    if u.sch_l == 3 and _ieq(b + s, "sip", 3):
        u.kind = K_SIP
    elif u.sch_l == 4 and _ieq(b + s, "sips", 4):
        u.kind = K_SIPS
    elif u.sch_l == 3 and _ieq(b + s, "tel", 3):
        u.kind = K_TEL
    u.opq_o = colon + 1
    u.opq_l = e - colon - 1
    if u.opq_l <= 0:
        return E_EMPTY
    if u.kind == K_OTHER or u.kind == K_TEL:
        # opaque: printable ASCII without the delimiters of the enclosing header
        for i in range(colon + 1, e):
            c = b[i]
            if c <= 32 or c >= 127 or c == 60 or c == 62 or c == 34:
                return E_CHAR
        return E_OK
    # sip/sips: every octet after the scheme is checked against its part's character class
    # by _scan_sip_rest
    # sip / sips: [userinfo "@"] hostport uri-parameters [headers]. '?' is legal inside a
    # user part (RFC 4475 3.1.1.2) and '@' inside escaped headers: when a '?' comes before
    # the first '@', the reading without userinfo wins if it is well-formed.
    at = _find(b, colon + 1, e, 64)
    if at >= 0 and _find(b, colon + 1, at, 63) >= 0:
        if _scan_sip_rest(b, colon, e, -1, u) == E_OK:
            return E_OK
    return _scan_sip_rest(b, colon, e, at, u)


# ---------------------------------------------------------------- header parameters
cdef struct ParamHits:
    Py_ssize_t tag_o, tag_l, br_o, br_l, rc_o, rc_l, rp_o, rp_l


cdef inline void _hits_clear(ParamHits* ph) noexcept nogil:
    ph.tag_l = ph.br_l = ph.rc_l = ph.rp_l = -1
    ph.tag_o = ph.br_o = ph.rc_o = ph.rp_o = 0


cdef int _scan_hparams(const unsigned char* b, Py_ssize_t i, Py_ssize_t e, ParamHits* ph) noexcept nogil:
    """*( LWS ';' LWS name [ LWS '=' LWS (token / host / quoted-string) ] ) up to e."""
    cdef Py_ssize_t n0, nl, v0, vl
    while True:
        i = _skip_lws(b, i, e)
        if i >= e:
            return E_OK
        if b[i] != 59:
            return E_AFTER
        i = _skip_lws(b, i + 1, e)
        n0 = i
        while i < e and (CT[b[i]] & C_TOKEN):
            i += 1
        nl = i - n0
        if nl == 0:
            return E_HPARAM
        i = _skip_lws(b, i, e)
        v0 = 0
        vl = -1
        if i < e and b[i] == 61:
            i = _skip_lws(b, i + 1, e)
            if i < e and b[i] == 34:
                v0 = i
                i = _skip_quoted(b, i, e)
                if i < 0:
                    return E_QUOTE
                v0 += 1
                vl = i - v0 - 1
            else:
                v0 = i
                while i < e and (CT[b[i]] & C_PVAL):
                    i += 1
                vl = i - v0
                if vl == 0:
                    return E_HPARAM
        if nl == 3 and _ieq(b + n0, "tag", 3):
            ph.tag_o = v0
            ph.tag_l = vl if vl >= 0 else 0
        elif nl == 6 and _ieq(b + n0, "branch", 6):
            if vl < 0:
                return E_HPARAM
            ph.br_o = v0
            ph.br_l = vl
        elif nl == 8 and _ieq(b + n0, "received", 8):
            if vl <= 0:
                return E_HPARAM
            ph.rc_o = v0
            ph.rc_l = vl
        elif nl == 5 and _ieq(b + n0, "rport", 5):
            ph.rp_o = v0
            ph.rp_l = vl if vl >= 0 else 0


# ---------------------------------------------------------------- name-addr / addr-spec
cdef struct NAParts:
    Py_ssize_t disp_o, disp_l
    int quoted, angle
    Py_ssize_t uri_o, uri_l, par_o, par_e


cdef int _scan_na(const unsigned char* b, Py_ssize_t s, Py_ssize_t e, NAParts* r, UriParts* u,
                  ParamHits* ph) noexcept nogil:
    cdef Py_ssize_t i, j, lt, gt, ue
    cdef int rc
    _hits_clear(ph)
    r.disp_o = 0
    r.disp_l = -1
    r.quoted = 0
    r.angle = 0
    e = _rtrim(b, s, e)
    i = _skip_lws(b, s, e)
    if i >= e:
        return E_EMPTY
    if b[i] == 34:
        j = _skip_quoted(b, i, e)
        if j < 0:
            return E_QUOTE
        r.disp_o = i + 1
        r.disp_l = j - i - 2
        r.quoted = 1
        i = _skip_lws(b, j, e)
        if i >= e or b[i] != 60:
            return E_NOANGLE
        lt = i
    else:
        lt = _find(b, i, e, 60)
        if lt >= 0:
            j = _rtrim(b, i, lt)
            if j > i:
                r.disp_o = i
                r.disp_l = j - i
                while i < j:
                    if not (CT[b[i]] & C_TOKEN) and not _lws(b[i]):
                        return E_DISP
                    i += 1
    if lt >= 0:
        gt = _find(b, lt + 1, e, 62)
        if gt < 0:
            return E_ANGLE
        r.angle = 1
        i = _skip_lws(b, lt + 1, gt)
        r.uri_o = i
        r.uri_l = _rtrim(b, i, gt) - i
        r.par_o = gt + 1
    else:
        ue = _find(b, i, e, 59)
        if ue < 0:
            ue = e
        r.uri_o = i
        r.uri_l = _rtrim(b, i, ue) - i
        if _find(b, i, i + r.uri_l, 63) >= 0:
            return E_ADDRHDR
        r.par_o = ue
    r.par_e = e
    rc = _scan_uri(b, r.uri_o, r.uri_o + r.uri_l, u)
    if rc != E_OK:
        return rc
    return _scan_hparams(b, r.par_o, e, ph)


# ---------------------------------------------------------------- Via
cdef struct ViaParts:
    Py_ssize_t tr_o, tr_l, host_o, host_l
    long port
    Py_ssize_t par_o, par_e


cdef int _scan_via(const unsigned char* b, Py_ssize_t s, Py_ssize_t e, ViaParts* v, ParamHits* ph) noexcept nogil:
    """One via-parm in [s, e): SIP / 2.0 / transport LWS sent-by *(;param)."""
    cdef Py_ssize_t i, k, close
    _hits_clear(ph)
    e = _rtrim(b, s, e)
    i = _skip_lws(b, s, e)
    if i + 3 > e or not _ieq(b + i, "sip", 3):
        return E_VIA
    i = _skip_lws(b, i + 3, e)
    if i >= e or b[i] != 47:
        return E_VIA
    i = _skip_lws(b, i + 1, e)
    k = i
    while k < e and (CT[b[k]] & C_TOKEN):
        k += 1
    if k - i != 3 or memcmp(b + i, b"2.0", 3) != 0:
        return E_VIAVER if k > i else E_VIA
    i = _skip_lws(b, k, e)
    if i >= e or b[i] != 47:
        return E_VIA
    i = _skip_lws(b, i + 1, e)
    k = i
    while k < e and (CT[b[k]] & C_TOKEN):
        k += 1
    if k == i:
        return E_VIA
    v.tr_o = i
    v.tr_l = k - i
    i = _skip_lws(b, k, e)
    if i == k or i >= e:
        return E_VIAHOST
    if b[i] == 91:
        close = _find(b, i, e, 93)
        if close < 0 or close == i + 1:
            return E_VIAHOST
        for k in range(i + 1, close):
            if not (CT[b[k]] & C_V6):
                return E_VIAHOST
        v.host_o = i + 1
        v.host_l = close - i - 1
        i = close + 1
    else:
        k = i
        while k < e and (CT[b[k]] & C_HOST):
            k += 1
        if k == i or not _host_ok(b, i, k - i):
            return E_VIAHOST
        v.host_o = i
        v.host_l = k - i
        i = k
    v.port = 0
    k = _skip_lws(b, i, e)
    if k < e and b[k] == 58:
        i = _skip_lws(b, k + 1, e)
        k = i
        while k < e and (CT[b[k]] & C_DIGIT):
            k += 1
        v.port = _digits(b, i, k, 65535)
        if v.port <= 0:
            return E_VIAPORT
        i = k
    elif k < e and b[k] != 59:
        return E_VIAHOST
    v.par_o = i
    v.par_e = e
    k = _scan_hparams(b, i, e, ph)
    if k != E_OK:
        return k
    if ph.rp_l > 0 and _digits(b, ph.rp_o, ph.rp_o + ph.rp_l, 65535) <= 0:
        return E_VIAPORT
    return E_OK


# ---------------------------------------------------------------- header names
cdef enum:
    H_OTHER = 0
    H_VIA = 1
    H_FROM = 2
    H_TO = 3
    H_CALL_ID = 4
    H_CSEQ = 5
    H_MAX_FORWARDS = 6
    H_CONTENT_LENGTH = 7
    H_CONTACT = 8
    H_CONTENT_TYPE = 9
    H_SUBJECT = 10
    H_ROUTE = 11
    H_RECORD_ROUTE = 12
    H_REQUIRE = 13
    H_SUPPORTED = 14
    H_PROXY_REQUIRE = 15
    H_EXPIRES = 16
    H_CONTENT_ENCODING = 17
    H_EVENT = 18
    H_REFER_TO = 19
    H_REFERRED_BY = 20
    H_ALLOW_EVENTS = 21
    H_SESSION_EXPIRES = 22
    H_IDENTITY = 23
    H_ACCEPT_CONTACT = 24
    H_REJECT_CONTACT = 25
    H_REQUEST_DISPOSITION = 26

# (canonical name, compact letter or "", split into comma-separated values in header_values)
_KNOWN = (
    ("", "", False),
    ("Via", "v", True),
    ("From", "f", False),
    ("To", "t", False),
    ("Call-ID", "i", False),
    ("CSeq", "", False),
    ("Max-Forwards", "", False),
    ("Content-Length", "l", False),
    ("Contact", "m", True),
    ("Content-Type", "c", False),
    ("Subject", "s", False),
    ("Route", "", True),
    ("Record-Route", "", True),
    ("Require", "", True),
    ("Supported", "k", True),
    ("Proxy-Require", "", True),
    ("Expires", "", False),
    ("Content-Encoding", "e", True),
    ("Event", "o", False),
    ("Refer-To", "r", False),
    ("Referred-By", "b", False),
    ("Allow-Events", "u", True),
    ("Session-Expires", "x", False),
    ("Identity", "y", False),
    ("Accept-Contact", "a", True),
    ("Reject-Contact", "j", True),
    ("Request-Disposition", "d", True),
    # no eager handling below this line; ids are assigned in order
    ("Allow", "", True),
    ("Accept", "", True),
    ("Accept-Encoding", "", True),
    ("Accept-Language", "", True),
    ("Alert-Info", "", True),
    ("Call-Info", "", True),
    ("Error-Info", "", True),
    ("Authorization", "", False),
    ("WWW-Authenticate", "", False),
    ("Proxy-Authenticate", "", False),
    ("Proxy-Authorization", "", False),
    ("Authentication-Info", "", False),
    ("User-Agent", "", False),
    ("Server", "", False),
    ("Unsupported", "", True),
    ("Min-Expires", "", False),
    ("Retry-After", "", False),
    ("Warning", "", True),
    ("Date", "", False),
    ("Timestamp", "", False),
    ("Content-Disposition", "", False),
    ("Content-Language", "", True),
    ("In-Reply-To", "", True),
    ("MIME-Version", "", False),
    ("Min-SE", "", False),
    ("Organization", "", False),
    ("Priority", "", False),
    ("Reply-To", "", False),
    ("Path", "", True),
    ("Service-Route", "", True),
    ("RSeq", "", False),
    ("RAck", "", False),
    ("P-Asserted-Identity", "", True),
    ("P-Preferred-Identity", "", True),
    ("Privacy", "", False),
    ("Subscription-State", "", False),
    ("Reason", "", True),
    ("Replaces", "", False),
    ("Diversion", "", True),
    ("Target-Dialog", "", False),
)
cdef enum:
    NKNOWN = 67
    HT_SIZE = 2048

CANON = [k[0] for k in _KNOWN]
cdef list _LOWER = [k[0].lower().encode() for k in _KNOWN]
cdef int HLEN[NKNOWN]
cdef const char* HNAME[NKNOWN]
cdef bint HSPLIT[NKNOWN]
cdef int16_t HTAB[HT_SIZE]
cdef int16_t COMPACT[26]


cdef inline unsigned int _hh(const unsigned char* p, Py_ssize_t n) noexcept nogil:
    # sparse table and a mix of length, first, second and last octet: the known names do
    # not collide, and an unknown name usually ends at an empty slot on the first probe
    return (<unsigned int>n * 2654435761u ^ LOWER[p[0]] * 40503u ^ LOWER[p[1]] * 131u
            ^ LOWER[p[n - 1]]) & (HT_SIZE - 1)


cdef void _init_names():
    cdef int i
    cdef unsigned int h
    cdef bytes low
    assert len(_KNOWN) == NKNOWN
    for i in range(HT_SIZE):
        HTAB[i] = 0
    for i in range(26):
        COMPACT[i] = 0
    for i in range(1, NKNOWN):
        low = _LOWER[i]
        HNAME[i] = low
        HLEN[i] = len(low)
        HSPLIT[i] = _KNOWN[i][2]
        h = _hh(<const unsigned char*>HNAME[i], HLEN[i])
        while HTAB[h] != 0:
            h = (h + 1) & (HT_SIZE - 1)
        HTAB[h] = i
        if _KNOWN[i][1]:
            COMPACT[ord(_KNOWN[i][1]) - 97] = i
    HSPLIT[0] = False


_init_names()


cdef inline bint _name_eq(const unsigned char* p, const char* lower, Py_ssize_t n) noexcept nogil:
    """Header name p (token characters only) equals a lower-case known name. OR-ing 0x20
    folds A-Z onto a-z and maps no other token character onto a letter or '-', so eight
    octets are compared at a time."""
    cdef uint64_t x, y
    cdef Py_ssize_t i = 0
    while i + 8 <= n:
        memcpy(&x, p + i, 8)
        memcpy(&y, lower + i, 8)
        if (x | 0x2020202020202020ULL) != y:
            return False
        i += 8
    while i < n:
        if (p[i] | 0x20) != <unsigned char>lower[i]:
            return False
        i += 1
    return True


cdef inline int _hdr_id(const unsigned char* p, Py_ssize_t n) noexcept nogil:
    cdef unsigned int h
    cdef int i
    cdef unsigned char c
    if n == 1:
        c = p[0] | 0x20
        if 97 <= c <= 122:
            return COMPACT[c - 97]
        return H_OTHER
    if n <= 0 or n > 24:
        return H_OTHER
    h = _hh(p, n)
    while HTAB[h] != 0:
        i = HTAB[h]
        if HLEN[i] == n and _name_eq(p, HNAME[i], n):
            return i
        h = (h + 1) & (HT_SIZE - 1)
    return H_OTHER


cdef int _user_hdr_id(bytes nb):
    """Header id of a name given through the API (any text: non-token names are unknown)."""
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(nb)
    cdef Py_ssize_t i, n = PyBytes_GET_SIZE(nb)
    for i in range(n):
        if not (CT[p[i]] & C_TOKEN):
            return H_OTHER
    return _hdr_id(p, n)


def canonical_name(str name) -> str:
    """"v" -> "Via", "call-id" -> "Call-ID"; unknown names are returned as written."""
    cdef bytes nb = name.strip().encode("utf-8", "surrogateescape")
    cdef int hid = _user_hdr_id(nb)
    if hid == H_OTHER:
        return name.strip()
    return CANON[hid]


# ---------------------------------------------------------------- interned common tokens
# Method and transport tokens seen on every message come back as shared str objects: a C
# comparison against a short list, no bytes object or dict lookup per message.
cdef tuple _TOKENS = ("INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "PRACK",
                      "SUBSCRIBE", "NOTIFY", "PUBLISH", "INFO", "REFER", "MESSAGE", "UPDATE",
                      "UDP", "TCP", "TLS", "SCTP", "WS", "WSS")
cdef list _TOKEN_BYTES = [t.encode() for t in _TOKENS]
cdef enum:
    N_METHODS = 14
    N_TOKENS = 20
cdef const char* TOKEN_P[N_TOKENS]
cdef Py_ssize_t TOKEN_L[N_TOKENS]


cdef void _init_tokens():
    cdef int i
    for i in range(N_TOKENS):
        TOKEN_P[i] = <bytes>_TOKEN_BYTES[i]
        TOKEN_L[i] = len(_TOKEN_BYTES[i])


_init_tokens()


cdef str _token_str(const unsigned char* b, Py_ssize_t o, Py_ssize_t l, int first, int last):
    cdef int i
    for i in range(first, last):
        if TOKEN_L[i] == l and memcmp(b + o, TOKEN_P[i], <size_t>l) == 0:
            return <str>_TOKENS[i]
    return _dec(b, o, l)


cdef str _unescape_quoted(str s):
    if "\\" not in s:
        return s
    out = []
    it = iter(s)
    for ch in it:
        if ch == "\\":
            out.append(next(it, ""))
        else:
            out.append(ch)
    return "".join(out)


def unescape(str text) -> str:
    """%HH escapes of a URI part decoded once (invalid escapes are left as written)."""
    if "%" not in text:
        return text
    raw = text.encode("utf-8", "surrogateescape")
    out = bytearray()
    i = 0
    n = len(raw)
    while i < n:
        c = raw[i]
        if c == 37 and i + 2 < n:
            h = raw[i + 1:i + 3]
            try:
                out.append(int(h, 16))
                i += 3
                continue
            except ValueError:
                pass
        out.append(c)
        i += 1
    return bytes(out).decode("utf-8", "surrogateescape")


# ---------------------------------------------------------------- decoded value objects
cdef dict _param_dict(const unsigned char* b, Py_ssize_t s, Py_ssize_t e, unsigned char sep):
    """name[=value] items separated by sep (already validated); names lower-cased."""
    cdef dict d = {}
    cdef Py_ssize_t i = s, k, eq, ve
    if s < 0 or e <= s:
        return d
    while i < e:
        # split on sep outside quotes
        k = i
        while k < e and b[k] != sep:
            if b[k] == 34:
                k = _skip_quoted(b, k, e)
                if k < 0:
                    k = e
                    break
                continue
            k += 1
        ve = _rtrim(b, i, k)
        i = _skip_lws(b, i, ve)
        eq = _find(b, i, ve, 61)
        if eq < 0:
            if ve > i:
                d[_dec_unfold(b, i, ve - i).lower()] = None
        else:
            name = _dec_unfold(b, i, _rtrim(b, i, eq) - i).lower()
            eq = _skip_lws(b, eq + 1, ve)
            d[name] = _dec_unfold(b, eq, ve - eq)
        i = k + 1
    return d


cdef class SipUri:
    """A URI. sip/sips are decomposed; tel and other schemes keep ``opaque``."""
    cdef public str scheme
    cdef public object user
    cdef public object password
    cdef public str host
    cdef public int port
    cdef public dict params
    cdef public dict headers
    cdef public str opaque

    def __init__(self, scheme="sip", user=None, host="", port=0, params=None, headers=None,
                 password=None, opaque=""):
        self.scheme = scheme
        self.user = user
        self.password = password
        self.host = host
        self.port = port
        self.params = dict(params or {})
        self.headers = dict(headers or {})
        self.opaque = opaque

    @property
    def hostport(self):
        h = f"[{self.host}]" if ":" in self.host else self.host
        return f"{h}:{self.port}" if self.port else h

    @property
    def aor(self):
        if self.scheme not in ("sip", "sips"):
            return f"{self.scheme}:{self.opaque.split(';', 1)[0]}"
        h = self.host.lower()
        if ":" in h:
            h = f"[{h}]"
        return f"{self.scheme}:{self.user}@{h}" if self.user is not None else f"{self.scheme}:{h}"

    def __str__(self):
        if self.scheme not in ("sip", "sips"):
            return f"{self.scheme}:{self.opaque}"
        out = [self.scheme, ":"]
        if self.user is not None:
            out.append(self.user)
            if self.password is not None:
                out.append(":" + self.password)
            out.append("@")
        out.append(self.hostport)
        for k, v in self.params.items():
            out.append(f";{k}" if v is None else f";{k}={v}")
        if self.headers:
            out.append("?" + "&".join(f"{k}={v}" for k, v in self.headers.items()))
        return "".join(out)

    def __repr__(self):
        return f"SipUri({str(self)!r})"

    def __eq__(self, other):
        return isinstance(other, SipUri) and str(self) == str(other)

    def __hash__(self):
        return hash(str(self))


cdef SipUri _make_uri(const unsigned char* b, UriParts* u):
    cdef SipUri r = SipUri.__new__(SipUri)
    r.scheme = _dec(b, u.sch_o, u.sch_l).lower()
    r.opaque = _dec(b, u.opq_o, u.opq_l)
    r.user = None
    r.password = None
    r.host = ""
    r.port = 0
    r.headers = {}
    if u.kind == K_SIP or u.kind == K_SIPS:
        if u.user_l >= 0:
            r.user = _dec(b, u.user_o, u.user_l)
        if u.pw_l >= 0:
            r.password = _dec(b, u.pw_o, u.pw_l)
        r.host = _dec(b, u.host_o, u.host_l)
        r.port = u.port
        r.params = _param_dict(b, u.par_o, u.par_o + u.par_l, 59) if u.par_l > 0 else {}
        if u.hdr_l > 0:
            for item in _dec(b, u.hdr_o, u.hdr_l).split("&"):
                k, _, v = item.partition("=")
                r.headers[k] = v
    else:
        r.params = {}
    return r


def parse_uri(str text, bint request=False) -> SipUri:
    """Parse one URI. SipParseError(400) when malformed; with request=True an unsupported
    scheme (not sip, sips or tel) raises SipParseError(416)."""
    cdef UriParts u
    cdef bytes data = text.strip().encode("utf-8", "surrogateescape")
    cdef const unsigned char* b = <const unsigned char*>PyBytes_AS_STRING(data)
    cdef int rc = _scan_uri(b, 0, PyBytes_GET_SIZE(data), &u)
    if rc != E_OK:
        raise _err("URI", rc)
    if request and u.kind == K_OTHER:
        raise SipParseError(f"unsupported URI scheme: {_dec(b, u.sch_o, u.sch_l).lower()}", 416)
    return _make_uri(b, &u)


cdef class NameAddr:
    cdef public object display
    cdef public SipUri uri
    cdef public dict params

    def __init__(self, uri=None, display=None, params=None):
        self.uri = parse_uri(uri) if isinstance(uri, str) else uri
        self.display = display
        self.params = dict(params or {})

    @property
    def tag(self):
        return self.params.get("tag")

    def _params_str(self):
        return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in self.params.items())

    def __str__(self):
        d = ""
        if self.display is not None:
            d = '"' + self.display.replace("\\", "\\\\").replace('"', '\\"') + '" '
        return f"{d}<{self.uri}>{self._params_str()}"

    def __repr__(self):
        return f"{type(self).__name__}({str(self)!r})"


cdef class Contact(NameAddr):
    cdef public bint star

    def __init__(self, uri=None, display=None, params=None, star=False):
        NameAddr.__init__(self, uri, display, params)
        self.star = star

    @property
    def expires(self):
        """The expires parameter, or None when absent or not a number (RFC 3261 10.3 says
        such a value is treated as absent)."""
        v = self.params.get("expires")
        if v is None or not v.isdigit() or len(v) > 10:
            return None
        return min(int(v), 0xFFFFFFFF)

    @property
    def q(self):
        v = self.params.get("q")
        if v is None:
            return None
        try:
            f = float(v)
        except ValueError:
            return None
        return f if 0.0 <= f <= 1.0 else None

    def __str__(self):
        if self.star:
            return "*"
        return NameAddr.__str__(self)


cdef object _make_na(const unsigned char* b, NAParts* r, UriParts* u, type cls):
    cdef NameAddr na = cls.__new__(cls)
    if r.disp_l >= 0:
        d = _dec_unfold(b, r.disp_o, r.disp_l)
        na.display = _unescape_quoted(d) if r.quoted else " ".join(d.split())
    else:
        na.display = None
    na.uri = _make_uri(b, u)
    na.params = _param_dict(b, r.par_o, r.par_e, 59)
    return na


cdef object _na_from(const unsigned char* b, Py_ssize_t s, Py_ssize_t e, str what, type cls):
    cdef NAParts r
    cdef UriParts u
    cdef ParamHits ph
    cdef int rc = _scan_na(b, s, e, &r, &u, &ph)
    if rc != E_OK:
        raise _err(what, rc)
    # the "params" region starts at the first ';' (after a leading one)
    s = _skip_lws(b, r.par_o, r.par_e)
    if s < r.par_e and b[s] == 59:
        r.par_o = s + 1
    else:
        r.par_o = r.par_e
    return _make_na(b, &r, &u, cls)


def parse_name_addr(str text) -> NameAddr:
    cdef bytes data = text.encode("utf-8", "surrogateescape")
    return _na_from(<const unsigned char*>PyBytes_AS_STRING(data), 0, PyBytes_GET_SIZE(data),
                    "name-addr", NameAddr)


cdef list _contacts_from(const unsigned char* b, Py_ssize_t s, Py_ssize_t e):
    cdef list out = []
    cdef Py_ssize_t k, a, z
    cdef Contact c
    while s <= e:
        k = _next_comma(b, s, e)
        if k < 0:
            raise _err("Contact header", E_QUOTE)
        a = _skip_lws(b, s, k)
        z = _rtrim(b, a, k)
        if z == a:
            raise _err("Contact header", E_EMPTY)
        if z - a == 1 and b[a] == 42:
            c = Contact.__new__(Contact)
            c.star = True
            c.params = {}
            c.display = None
            c.uri = None
            out.append(c)
        else:
            c = _na_from(b, a, z, "Contact header", Contact)
            c.star = False
            out.append(c)
        s = k + 1
    if len(out) > 1 and any((<Contact>x).star for x in out):
        raise SipParseError("invalid Contact header: '*' mixed with addresses", 400)
    return out


def parse_contacts(str value) -> list:
    cdef bytes data = value.encode("utf-8", "surrogateescape")
    return _contacts_from(<const unsigned char*>PyBytes_AS_STRING(data), 0, PyBytes_GET_SIZE(data))


cdef class Via:
    cdef public str transport
    cdef public str host
    cdef public int port
    cdef public dict params

    def __init__(self, transport="UDP", host="", port=0, params=None):
        self.transport = transport.upper()
        self.host = host
        self.port = port
        self.params = dict(params or {})

    @property
    def branch(self):
        return self.params.get("branch")

    @property
    def received(self):
        r = self.params.get("received")
        return r[1:-1] if r and r[0] == "[" and r[-1] == "]" else r

    @property
    def rport(self):
        if "rport" not in self.params:
            return -1
        v = self.params["rport"]
        return int(v) if v else 0

    @property
    def sent_by(self):
        h = f"[{self.host}]" if ":" in self.host else self.host
        return f"{h}:{self.port}" if self.port else h

    def __str__(self):
        ps = "".join(f";{k}" if v is None else f";{k}={v}" for k, v in self.params.items())
        return f"SIP/2.0/{self.transport} {self.sent_by}{ps}"

    def __repr__(self):
        return f"Via({str(self)!r})"


cdef Via _via_obj(const unsigned char* b, Py_ssize_t s, Py_ssize_t e):
    cdef ViaParts v
    cdef ParamHits ph
    cdef Py_ssize_t p
    cdef int rc = _scan_via(b, s, e, &v, &ph)
    if rc != E_OK:
        raise _err("Via header", rc)
    cdef Via r = Via.__new__(Via)
    r.transport = _dec(b, v.tr_o, v.tr_l).upper()
    r.host = _dec(b, v.host_o, v.host_l)
    r.port = v.port
    p = _skip_lws(b, v.par_o, v.par_e)
    r.params = _param_dict(b, p + 1, v.par_e, 59) if p < v.par_e else {}
    return r


def parse_via(str value) -> Via:
    """One via-parm (not a comma-separated list)."""
    cdef bytes data = value.encode("utf-8", "surrogateescape")
    return _via_obj(<const unsigned char*>PyBytes_AS_STRING(data), 0, PyBytes_GET_SIZE(data))


# ---------------------------------------------------------------- the message
cdef inline Py_ssize_t _lf_end(const unsigned char* b, Py_ssize_t pos, Py_ssize_t n) noexcept nogil:
    """Like _line_end without the search for a bare CR inside the line (see SipMessage._value)."""
    cdef const void* p
    cdef Py_ssize_t k
    if pos >= n:
        return -1
    p = memchr(b + pos, 10, <size_t>(n - pos))
    if p == NULL:
        return -1
    k = <const unsigned char*>p - b
    if k == pos or b[k - 1] != 13:
        return -2
    return k - 1


cdef inline Py_ssize_t _line_end(const unsigned char* b, Py_ssize_t pos, Py_ssize_t n) noexcept nogil:
    """Index of the CR of the CRLF ending the line at pos; -1 when none, -2 on a bare CR/LF."""
    cdef Py_ssize_t cr = _lf_end(b, pos, n)
    if cr > pos and memchr(b + pos, 13, <size_t>(cr - pos)) != NULL:
        return -2
    return cr


cdef enum:
    # slots of SipMessage._lazy: values decoded on first access and rarely read on the hot
    # path share one list, made on demand, so that a message costs fewer fields to set up
    L_RURI = 0
    L_REASON = 1
    L_BODY = 2
    L_RAW = 3
    L_RURI_OBJ = 4
    L_FROM = 5
    L_TO = 6
    L_VIAS = 7
    L_CONTACTS = 8
    L_SLOTS = 9


# no_gc: a message only refers to its bytes, strings and decoded value objects, none of which
# can refer back to it, so it can never be part of a cycle; leaving it out of the collector
# saves the tracking on every parse and the young-generation collections it would trigger.
@cython.no_gc
@cython.freelist(64)
cdef class SipMessage:
    """A parsed message over its original buffer (see the module docstring)."""

    def __dealloc__(self):
        if self._hdrs != self._inline and self._hdrs != NULL:
            PyMem_Free(self._hdrs)
        self._hdrs = NULL

    def __init__(self, *args, **kwargs):
        raise TypeError("use sipmsg.parse(data)")

    cdef int _add_hdr(self, int hid, Py_ssize_t no, Py_ssize_t nl, Py_ssize_t vo, Py_ssize_t vl,
                      bint folded) except -1:
        cdef HdrEntry* nh
        cdef int i
        if self._nhdrs == self._caphdrs:
            if self._hdrs == self._inline:
                nh = <HdrEntry*>PyMem_Malloc(sizeof(HdrEntry) * self._caphdrs * 2)
                if nh == NULL:
                    raise MemoryError()
                for i in range(self._nhdrs):
                    nh[i] = self._inline[i]
            else:
                nh = <HdrEntry*>PyMem_Realloc(self._hdrs, sizeof(HdrEntry) * self._caphdrs * 2)
                if nh == NULL:
                    raise MemoryError()
            self._hdrs = nh
            self._caphdrs *= 2
        nh = &self._hdrs[self._nhdrs]
        nh.id = hid
        nh.folded = folded
        nh.name_off = no
        nh.name_len = nl
        nh.val_off = vo
        nh.val_len = vl
        self._nhdrs += 1
        return 0

    cdef object _lget(self, int i):
        if self._lazy is None:
            return None
        return self._lazy[i]

    cdef int _lset(self, int i, object v) except -1:
        if self._lazy is None:
            self._lazy = [None] * L_SLOTS
        self._lazy[i] = v
        return 0

    cdef str _sub(self, Py_ssize_t o, Py_ssize_t l):
        return _astr(<const unsigned char*>PyBytes_AS_STRING(self._buf), o, l)

    cdef str _value(self, HdrEntry* h):
        # header lines are split at LF only (one memchr per line); a CR that is not part of
        # a CRLF is refused here, when the value is read
        cdef const unsigned char* b = <const unsigned char*>PyBytes_AS_STRING(self._buf)
        if h.folded or (h.val_len > 0 and memchr(b + h.val_off, 13, <size_t>h.val_len) != NULL):
            return _dec_unfold(b, h.val_off, h.val_len)
        return _dec(b, h.val_off, h.val_len)

    cdef int _find(self, int hid) noexcept:
        cdef int i
        for i in range(self._nhdrs):
            if self._hdrs[i].id == hid:
                return i
        return -1

    # ---- eager fields, decoded on first read
    @property
    def method(self):
        if self._method is None:
            if self._meth_l <= 0:
                self._method = ""
            else:
                self._method = _token_str(<const unsigned char*>PyBytes_AS_STRING(self._buf),
                                          self._meth_o, self._meth_l, 0, N_METHODS)
        return self._method

    @property
    def ruri(self):
        if self._lget(L_RURI) is None:
            self._lset(L_RURI, self._sub(self._ruri_o, self._ruri_l) if self._ruri_l > 0 else "")
        return self._lget(L_RURI)

    @property
    def reason(self):
        if self._lget(L_REASON) is None:
            self._lset(L_REASON, self._sub(self._reason_o, self._reason_l) if self._reason_l > 0 else "")
        return self._lget(L_REASON)

    @property
    def call_id(self):
        if self._call_id is None:
            self._call_id = self._sub(self._cid_o, self._cid_l)
        return self._call_id

    @property
    def cseq_method(self):
        if self._cseq_method is None:
            self._cseq_method = _token_str(<const unsigned char*>PyBytes_AS_STRING(self._buf),
                                           self._cseqm_o, self._cseqm_l, 0, N_METHODS)
        return self._cseq_method

    @property
    def from_tag(self):
        if self._ftag_l < 0:
            return None
        if self._from_tag is None:
            self._from_tag = self._sub(self._ftag_o, self._ftag_l)
        return self._from_tag

    @property
    def to_tag(self):
        if self._ttag_l < 0:
            return None
        if self._to_tag is None:
            self._to_tag = self._sub(self._ttag_o, self._ttag_l)
        return self._to_tag

    @property
    def via_transport(self):
        if self._via_transport is None:
            s = _token_str(<const unsigned char*>PyBytes_AS_STRING(self._buf),
                           self._vtr_o, self._vtr_l, N_METHODS, N_TOKENS)
            self._via_transport = s if s.isupper() else s.upper()
        return self._via_transport

    @property
    def via_host(self):
        if self._via_host is None:
            self._via_host = self._sub(self._vhost_o, self._vhost_l)
        return self._via_host

    @property
    def via_branch(self):
        if self._vbr_l < 0:
            return None
        if self._via_branch is None:
            self._via_branch = self._sub(self._vbr_o, self._vbr_l)
        return self._via_branch

    @property
    def via_received(self):
        if self._vrc_l < 0:
            return None
        if self._via_received is None:
            r = self._sub(self._vrc_o, self._vrc_l)
            if len(r) > 2 and r[0] == "[" and r[-1] == "]":
                r = r[1:-1]
            self._via_received = r
        return self._via_received

    @property
    def body(self):
        if self._lget(L_BODY) is None:
            self._lset(L_BODY, self._buf[self._body_off:self._end])
        return self._lget(L_BODY)

    @property
    def raw(self):
        if self._lget(L_RAW) is None:
            if self._start == 0 and self._end == PyBytes_GET_SIZE(self._buf):
                self._lset(L_RAW, self._buf)
            else:
                self._lset(L_RAW, self._buf[self._start:self._end])
        return self._lget(L_RAW)

    def to_bytes(self):
        return self.raw

    # ---- lazily decoded structures
    @property
    def request_uri(self):
        cdef UriParts u
        cdef const unsigned char* b
        if not self.is_request:
            return None
        if self._lget(L_RURI_OBJ) is None:
            b = <const unsigned char*>PyBytes_AS_STRING(self._buf)
            if _scan_uri(b, self._ruri_o, self._ruri_o + self._ruri_l, &u) != E_OK:
                raise SipParseError("invalid Request-URI", 400)
            self._lset(L_RURI_OBJ, _make_uri(b, &u))
        return self._lget(L_RURI_OBJ)

    cdef object _na(self, int hid, str what):
        cdef int i = self._find(hid)
        cdef HdrEntry* h
        if i < 0:
            raise SipParseError(f"missing {what} header", 400)
        h = &self._hdrs[i]
        return _na_from(<const unsigned char*>PyBytes_AS_STRING(self._buf), h.val_off,
                        h.val_off + h.val_len, what + " header", NameAddr)

    @property
    def from_addr(self):
        if self._lget(L_FROM) is None:
            self._lset(L_FROM, self._na(H_FROM, "From"))
        return self._lget(L_FROM)

    @property
    def to_addr(self):
        if self._lget(L_TO) is None:
            self._lset(L_TO, self._na(H_TO, "To"))
        return self._lget(L_TO)

    @property
    def vias(self):
        cdef const unsigned char* b
        cdef Py_ssize_t s, e, k, a, z
        cdef int i
        if self._lget(L_VIAS) is None:
            b = <const unsigned char*>PyBytes_AS_STRING(self._buf)
            out = []
            for i in range(self._nhdrs):
                if self._hdrs[i].id != H_VIA:
                    continue
                s = self._hdrs[i].val_off
                e = s + self._hdrs[i].val_len
                while s <= e:
                    k = _next_comma(b, s, e)
                    if k < 0:
                        raise _err("Via header", E_QUOTE)
                    a = _skip_lws(b, s, k)
                    z = _rtrim(b, a, k)
                    if z == a:
                        raise _err("Via header", E_EMPTY)
                    out.append(_via_obj(b, a, z))
                    s = k + 1
            self._lset(L_VIAS, out)
        return list(self._lget(L_VIAS))

    @property
    def contacts(self):
        cdef const unsigned char* b
        cdef int i
        if self._lget(L_CONTACTS) is None:
            b = <const unsigned char*>PyBytes_AS_STRING(self._buf)
            out = []
            for i in range(self._nhdrs):
                if self._hdrs[i].id == H_CONTACT:
                    out.extend(_contacts_from(b, self._hdrs[i].val_off,
                                              self._hdrs[i].val_off + self._hdrs[i].val_len))
            if any((<Contact>c).star for c in out) and len(out) > 1:
                raise SipParseError("invalid Contact header: '*' mixed with addresses", 400)
            self._lset(L_CONTACTS, out)
        return list(self._lget(L_CONTACTS))

    # ---- generic header access
    cdef int _match(self, int i, int hid, bytes lname) noexcept:
        cdef HdrEntry* h = &self._hdrs[i]
        if hid != H_OTHER:
            return h.id == hid
        return (h.id == H_OTHER and h.name_len == PyBytes_GET_SIZE(lname)
                and _ieq(<const unsigned char*>PyBytes_AS_STRING(self._buf) + h.name_off,
                         PyBytes_AS_STRING(lname), h.name_len))

    def header(self, str name):
        """The first field value of a header (compact or long name, any case), or None."""
        cdef bytes ln = name.strip().lower().encode("utf-8", "surrogateescape")
        cdef int hid = _user_hdr_id(ln)
        cdef int i
        for i in range(self._nhdrs):
            if self._match(i, hid, ln):
                return self._value(&self._hdrs[i])
        return None

    def has_header(self, str name):
        cdef bytes ln = name.strip().lower().encode("utf-8", "surrogateescape")
        cdef int hid = _user_hdr_id(ln)
        cdef int i
        for i in range(self._nhdrs):
            if self._match(i, hid, ln):
                return True
        return False

    def header_fields(self, str name):
        """Each header line's whole value (folds unfolded), in order."""
        cdef bytes ln = name.strip().lower().encode("utf-8", "surrogateescape")
        cdef int hid = _user_hdr_id(ln)
        cdef int i
        return [self._value(&self._hdrs[i]) for i in range(self._nhdrs) if self._match(i, hid, ln)]

    def header_values(self, str name):
        """All values: list-valued headers (Via, Contact, Route, Require, Allow ...) are split
        on commas outside quotes and <>; single-valued and unknown headers are whole."""
        cdef bytes ln = name.strip().lower().encode("utf-8", "surrogateescape")
        cdef int hid = _user_hdr_id(ln)
        cdef const unsigned char* b = <const unsigned char*>PyBytes_AS_STRING(self._buf)
        cdef int i
        cdef Py_ssize_t s, e, k, a, z
        cdef list out = []
        for i in range(self._nhdrs):
            if not self._match(i, hid, ln):
                continue
            if not HSPLIT[hid]:
                out.append(self._value(&self._hdrs[i]))
                continue
            s = self._hdrs[i].val_off
            e = s + self._hdrs[i].val_len
            while s <= e:
                k = _next_comma(b, s, e)
                if k < 0:
                    raise SipParseError(f"invalid {CANON[hid]} header: unterminated quoted string", 400)
                a = _skip_lws(b, s, k)
                z = _rtrim(b, a, k)
                if z > a:
                    out.append(_dec_unfold(b, a, z - a))
                s = k + 1
        return out

    def headers(self):
        """Every (canonical name, value) in order; unknown names as written."""
        cdef int i
        cdef HdrEntry* h
        out = []
        for i in range(self._nhdrs):
            h = &self._hdrs[i]
            name = CANON[h.id] if h.id != H_OTHER else self._sub(h.name_off, h.name_len)
            out.append((name, self._value(h)))
        return out

    # ---- accessors for decisions the server takes (RFC 3261 8.2.2.3, 8.2.3, 16.3)
    @property
    def require(self):
        return self.header_values("Require")

    @property
    def proxy_require(self):
        return self.header_values("Proxy-Require")

    @property
    def content_type(self):
        """Content-Type media type, lower-case, without parameters ("" when absent)."""
        v = self.header("Content-Type")
        return v.split(";", 1)[0].strip().lower() if v else ""

    @property
    def header_count(self):
        return self._nhdrs

    def __repr__(self):
        if self.is_request:
            return f"<SipMessage {self.method} {self.ruri} call-id={self.call_id!r}>"
        return f"<SipMessage {self.status} {self.reason} call-id={self.call_id!r}>"


cdef inline object _bad(str reason, int status=400):
    return SipParseError(reason, status)


cdef int _parse_into(SipMessage m, bytes data, bint datagram) except -1:
    cdef const unsigned char* b = <const unsigned char*>PyBytes_AS_STRING(data)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    cdef Py_ssize_t pos = 0, le, sp1, sp2, i, j, vs, ve, t, k, a
    cdef Py_ssize_t nm_l
    cdef int hid, rc, nvia = 0
    cdef bint folded, seen_from = False, seen_to = False, seen_cid = False, seen_cseq = False
    cdef bint seen_mf = False, seen_cl = False
    cdef long v
    cdef UriParts u
    cdef NAParts na
    cdef ParamHits ph
    cdef ViaParts vp

    if n > C_MAX_MESSAGE:
        raise _bad("message too large", 413)
    # the header index starts in the object's inline array (no __cinit__: objects come
    # zeroed from the freelist and a pointer assignment here is cheaper than the call)
    m._hdrs = m._inline
    m._caphdrs = INLINE_HDRS
    m._nhdrs = 0
    m._buf = data
    m.max_forwards = -1
    m.content_length = -1
    m.via_rport = -1
    m._ftag_l = m._ttag_l = m._vbr_l = m._vrc_l = -1
    m._meth_l = m._ruri_l = m._reason_l = 0
    # CRLFs before a start line are keep-alive residue (RFC 3261 7.5)
    while pos + 1 < n and b[pos] == 13 and b[pos + 1] == 10:
        pos += 2
    if pos >= n:
        raise _bad("empty message")
    m._start = pos
    le = _line_end(b, pos, n)
    if le == -2:
        raise _bad("line not terminated by CRLF")
    if le < 0:
        raise _bad("start line not terminated by CRLF")
    if le - pos >= 4 and memcmp(b + pos, b"SIP/", 4) == 0:
        m.is_request = False
        sp1 = _find(b, pos, le, 32)
        if sp1 < 0:
            raise _bad("malformed status line")
        if sp1 - pos != 7 or memcmp(b + pos, b"SIP/2.0", 7) != 0:
            raise _bad("unsupported SIP version", 505)
        i = sp1 + 1
        if le - i < 3 or (le - i > 3 and b[i + 3] != 32):
            raise _bad("invalid status code")
        v = _digits(b, i, i + 3, 999)
        if v < 100 or v > 699:
            raise _bad("invalid status code")
        m.status = v
        if le - i > 3:
            m._reason_o = i + 4
            m._reason_l = le - i - 4
    else:
        m.is_request = True
        sp1 = _find(b, pos, le, 32)
        if sp1 < 0:
            raise _bad("malformed request line")
        if sp1 == pos:
            raise _bad("malformed request line")
        for i in range(pos, sp1):
            if not (CT[b[i]] & C_TOKEN):
                raise _bad("invalid method")
        m._meth_o = pos
        m._meth_l = sp1 - pos
        sp2 = _find(b, sp1 + 1, le, 32)
        if sp2 < 0 or sp2 == sp1 + 1:
            raise _bad("malformed request line")
        i = sp2 + 1
        if le - i != 7 or memcmp(b + i, b"SIP/2.0", 7) != 0:
            if le - i >= 7 and memcmp(b + i, b"SIP/2.0", 7) == 0:
                raise _bad("malformed request line")
            if le - i >= 4 and memcmp(b + i, b"SIP/", 4) == 0 and _find(b, i, le, 32) < 0:
                raise _bad("unsupported SIP version", 505)
            raise _bad("malformed request line")
        m._ruri_o = sp1 + 1
        m._ruri_l = sp2 - sp1 - 1
        rc = _scan_uri(b, m._ruri_o, sp2, &u)
        if rc != E_OK:
            raise _err("Request-URI", rc)
        if u.kind != K_OTHER and u.hdr_l >= 0:
            raise _bad("invalid Request-URI: headers are not allowed")

    pos = le + 2
    while True:
        if pos + 1 < n and b[pos] == 13 and b[pos + 1] == 10:
            pos += 2
            break
        if pos >= n:
            raise _bad("header section not terminated by an empty line")
        if b[pos] == 32 or b[pos] == 9:
            raise _bad("continuation line without a header")
        le = _lf_end(b, pos, n)
        if le == -2:
            raise _bad("line not terminated by CRLF")
        if le < 0:
            raise _bad("header section not terminated by an empty line")
        i = pos
        while i < le and (CT[b[i]] & C_TOKEN):
            i += 1
        nm_l = i - pos
        if nm_l == 0:
            raise _bad("invalid header name")
        j = i
        while j < le and (b[j] == 32 or b[j] == 9):
            j += 1
        if j >= le or b[j] != 58:
            raise _bad("header line without colon")
        vs = j + 1
        ve = le
        folded = False
        while ve + 2 < n and (b[ve + 2] == 32 or b[ve + 2] == 9):
            k = _lf_end(b, ve + 2, n)
            if k == -2:
                raise _bad("line not terminated by CRLF")
            if k < 0:
                raise _bad("header section not terminated by an empty line")
            folded = True
            ve = k
        vs = _skip_lws(b, vs, ve)
        t = _rtrim(b, vs, ve)
        if folded:
            folded = t > vs and memchr(b + vs, 13, <size_t>(t - vs)) != NULL
        hid = _hdr_id(b + pos, nm_l)
        m._add_hdr(hid, pos, nm_l, vs, t - vs, folded)
        pos = ve + 2
        if hid == H_OTHER or hid > H_CONTENT_LENGTH:
            continue
        if hid == H_VIA:
            nvia += 1
            if nvia == 1:
                # one via-parm per line is the common case: only scan quotes when a comma exists
                k = _find(b, vs, t, 44)
                k = t if k < 0 else _next_comma(b, vs, t)
                if k < 0:
                    raise _err("Via header", E_QUOTE)
                rc = _scan_via(b, vs, k, &vp, &ph)
                if rc != E_OK:
                    raise _err("Via header", rc)
                m._vtr_o = vp.tr_o
                m._vtr_l = vp.tr_l
                m._vhost_o = vp.host_o
                m._vhost_l = vp.host_l
                m.via_port = vp.port
                m._vbr_o = ph.br_o
                m._vbr_l = ph.br_l
                m._vrc_o = ph.rc_o
                m._vrc_l = ph.rc_l
                if ph.rp_l < 0:
                    m.via_rport = -1
                elif ph.rp_l == 0:
                    m.via_rport = 0
                else:
                    m.via_rport = _digits(b, ph.rp_o, ph.rp_o + ph.rp_l, 65535)
        elif hid == H_FROM or hid == H_TO:
            if hid == H_FROM:
                if seen_from:
                    raise _bad("duplicate From header")
                seen_from = True
            else:
                if seen_to:
                    raise _bad("duplicate To header")
                seen_to = True
            rc = _scan_na(b, vs, t, &na, &u, &ph)
            if rc != E_OK:
                raise _err("From header" if hid == H_FROM else "To header", rc)
            if hid == H_FROM:
                m._ftag_o = ph.tag_o
                m._ftag_l = ph.tag_l
            else:
                m._ttag_o = ph.tag_o
                m._ttag_l = ph.tag_l
        elif hid == H_CALL_ID:
            if seen_cid:
                raise _bad("duplicate Call-ID header")
            seen_cid = True
            if t == vs:
                raise _bad("invalid Call-ID header: empty value")
            for i in range(vs, t):
                if b[i] <= 32 or b[i] == 127:
                    raise _bad("invalid Call-ID header: whitespace or control character")
            m._cid_o = vs
            m._cid_l = t - vs
        elif hid == H_CSEQ:
            if seen_cseq:
                raise _bad("duplicate CSeq header")
            seen_cseq = True
            i = vs
            while i < t and (CT[b[i]] & C_DIGIT):
                i += 1
            # RFC 3261 8.1.1.5: the sequence number is below 2**31
            v = _digits(b, vs, i, 0x7FFFFFFF)
            if v < 0:
                raise _bad("invalid CSeq header: bad sequence number")
            j = _skip_lws(b, i, t)
            if j == i or j >= t:
                raise _bad("invalid CSeq header: missing method")
            for k in range(j, t):
                if not (CT[b[k]] & C_TOKEN):
                    raise _bad("invalid CSeq header: bad method")
            m.cseq = v
            m._cseqm_o = j
            m._cseqm_l = t - j
        elif hid == H_MAX_FORWARDS:
            if seen_mf:
                raise _bad("duplicate Max-Forwards header")
            seen_mf = True
            v = _digits(b, vs, t, 255)
            if v < 0:
                raise _bad("invalid Max-Forwards header")
            m.max_forwards = v
        elif hid == H_CONTENT_LENGTH:
            if seen_cl:
                raise _bad("duplicate Content-Length header")
            seen_cl = True
            v = _digits(b, vs, t, 0x7FFFFFFF)
            if v < 0:
                raise _bad("invalid Content-Length header")
            m.content_length = v

    m._body_off = pos
    if nvia == 0:
        raise _bad("missing Via header")
    if not seen_from:
        raise _bad("missing From header")
    if not seen_to:
        raise _bad("missing To header")
    if not seen_cid:
        raise _bad("missing Call-ID header")
    if not seen_cseq:
        raise _bad("missing CSeq header")
    if m.is_request and (m._cseqm_l != m._meth_l or memcmp(b + m._cseqm_o, b + m._meth_o, m._meth_l) != 0):
        raise _bad("CSeq method does not match the request method")
    if m.content_length >= 0:
        if pos + m.content_length > n:
            raise _bad("Content-Length larger than the message")
        m._end = pos + m.content_length
    else:
        if not datagram:
            raise _bad("missing Content-Length on a stream transport")
        m._end = n
    return 0


cpdef SipMessage parse(bytes data, bint datagram=True):
    """Parse one SIP message. datagram=True: a missing Content-Length means "rest of the
    datagram"; octets after Content-Length are ignored. Raises SipParseError(reason, status)."""
    cdef SipMessage m = SipMessage.__new__(SipMessage)
    _parse_into(m, data, datagram)
    return m


# ---------------------------------------------------------------- serialization
REASONS = {
    100: "Trying", 180: "Ringing", 181: "Call Is Being Forwarded", 182: "Queued",
    183: "Session Progress", 199: "Early Dialog Terminated", 200: "OK", 202: "Accepted",
    204: "No Notification", 300: "Multiple Choices", 301: "Moved Permanently",
    302: "Moved Temporarily", 305: "Use Proxy", 380: "Alternative Service", 400: "Bad Request",
    401: "Unauthorized", 402: "Payment Required", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 406: "Not Acceptable", 407: "Proxy Authentication Required",
    408: "Request Timeout", 410: "Gone", 413: "Request Entity Too Large",
    414: "Request-URI Too Long", 415: "Unsupported Media Type", 416: "Unsupported URI Scheme",
    420: "Bad Extension", 421: "Extension Required", 423: "Interval Too Brief",
    480: "Temporarily Unavailable", 481: "Call/Transaction Does Not Exist", 482: "Loop Detected",
    483: "Too Many Hops", 484: "Address Incomplete", 485: "Ambiguous", 486: "Busy Here",
    487: "Request Terminated", 488: "Not Acceptable Here", 489: "Bad Event",
    491: "Request Pending", 493: "Undecipherable", 500: "Server Internal Error",
    501: "Not Implemented", 502: "Bad Gateway", 503: "Service Unavailable",
    504: "Server Time-out", 505: "Version Not Supported", 513: "Message Too Large",
    600: "Busy Everywhere", 603: "Decline", 604: "Does Not Exist Anywhere",
    606: "Not Acceptable",
}


cdef inline bytes _enc(str s):
    return s.encode("utf-8", "surrogateescape")


cdef void _check_line(str s, str what) except *:
    if "\r" in s or "\n" in s:
        raise ValueError(f"{what} contains CR or LF")


cdef bint _is_clen(str name):
    cdef bytes nb = _enc(name.strip())
    return _user_hdr_id(nb) == H_CONTENT_LENGTH


# ---------------------------------------------------------------- serialization
# Messages are written into one growing C buffer and become bytes once: a response costs one
# allocation for its octets instead of a list of pieces and a join.
cdef struct Out:
    char* p
    Py_ssize_t n
    Py_ssize_t cap


cdef int _out_init(Out* o, Py_ssize_t cap) except -1:
    o.p = <char*>PyMem_Malloc(cap)
    if o.p == NULL:
        raise MemoryError()
    o.n = 0
    o.cap = cap
    return 0


cdef int _put(Out* o, const char* s, Py_ssize_t n) except -1:
    cdef Py_ssize_t cap
    cdef char* p
    if o.n + n > o.cap:
        cap = o.cap * 2
        while cap < o.n + n:
            cap *= 2
        p = <char*>PyMem_Realloc(o.p, cap)
        if p == NULL:
            raise MemoryError()
        o.p = p
        o.cap = cap
    memcpy(o.p + o.n, s, <size_t>n)
    o.n += n
    return 0


cdef inline int _put_c(Out* o, const char* s) except -1:
    return _put(o, s, <Py_ssize_t>strlen(s))


cdef int _put_bytes(Out* o, bytes v) except -1:
    return _put(o, PyBytes_AS_STRING(v), PyBytes_GET_SIZE(v))


cdef int _put_str(Out* o, str v) except -1:
    """UTF-8 (surrogateescape: octets the parser kept undecoded go back as they came)."""
    if PyUnicode_IS_ASCII(v):
        return _put(o, <const char*>PyUnicode_DATA(v), PyUnicode_GET_LENGTH(v))
    return _put_bytes(o, _enc(v))


cdef int _put_line(Out* o, str v, str what) except -1:
    """A value that must stay on its line (header injection is refused)."""
    _check_line(v, what)
    return _put_str(o, v)


cdef int _put_int(Out* o, long v) except -1:
    cdef char tmp[24]
    cdef int i = 24
    cdef bint neg = v < 0
    cdef unsigned long u = <unsigned long>(-v if neg else v)
    while True:
        i -= 1
        tmp[i] = <char>(48 + u % 10)
        u //= 10
        if u == 0:
            break
    if neg:
        i -= 1
        tmp[i] = 45
    return _put(o, tmp + i, 24 - i)


cdef int _put_value(Out* o, const unsigned char* b, Py_ssize_t a, Py_ssize_t z) except -1:
    """Octets a..z of a header value as a copied header carries them: folds become one SP (a
    bare CR is refused, as when the value is read)."""
    if z > a and memchr(b + a, 13, <size_t>(z - a)) != NULL:
        return _put_str(o, _dec_unfold(b, a, z - a))
    return _put(o, <const char*>(b + a), z - a)


cdef bint _ifind(const unsigned char* b, Py_ssize_t a, Py_ssize_t z, const char* lower, Py_ssize_t n) noexcept:
    cdef Py_ssize_t i
    for i in range(a, z - n + 1):
        if _ieq(b + i, lower, n):
            return True
    return False


cdef int _put_top_via(Out* o, const unsigned char* b, Py_ssize_t a, Py_ssize_t z, str host,
                      int port) except -1:
    """set_via_received on the top via-parm. The shape nearly every client sends (one bare
    ;rport at the end, no received) is written straight from the octets."""
    if (z - a > 6 and _ieq(b + z - 6, ";rport", 6) and not _ifind(b, a, z - 6, "rport", 5)
            and not _ifind(b, a, z, "received", 8) and memchr(b + a, 13, <size_t>(z - a)) == NULL):
        _put(o, <const char*>(b + a), z - a)
        _put_c(o, "=")
        _put_int(o, port)
        _put_c(o, ";received=")
        return _put_line(o, host, "received")
    return _put_line(o, set_via_received(_dec_unfold(b, a, z - a), host, port), "Via")


cdef bytes _tail(Out* o, headers, bytes body):
    """``headers`` (a given Content-Length is dropped), Content-Length, the body; the bytes.
    The caller frees the buffer."""
    for name, value in headers:
        if _is_clen(name):
            continue
        _put_line(o, name, "header name")
        _put_c(o, ": ")
        _put_line(o, value, "header value")
        _put_c(o, "\r\n")
    _put_c(o, "Content-Length: ")
    _put_int(o, PyBytes_GET_SIZE(body))
    _put_c(o, "\r\n\r\n")
    _put_bytes(o, body)
    return PyBytes_FromStringAndSize(o.p, o.n)


def build_request(str method, str ruri, list headers, bytes body=b"") -> bytes:
    """A request; Content-Length is added (any given one is replaced)."""
    cdef Out o
    _out_init(&o, 512 + PyBytes_GET_SIZE(body))
    try:
        _put_line(&o, method, "method")
        _put_c(&o, " ")
        _put_line(&o, ruri, "Request-URI")
        _put_c(&o, " SIP/2.0\r\n")
        return _tail(&o, headers, body)
    finally:
        PyMem_Free(o.p)


def build_response(SipMessage request, int status, reason=None, *, to_tag=None, headers=(),
                   bytes body=b"", top_via=None, source=None) -> bytes:
    """A response to ``request``: every Via (``top_via`` replaces the first value; with
    ``source=(host, port)`` the first value gets received/rport as set_via_received makes
    them), From, To (+;tag=to_tag when it has none), Call-ID, CSeq, then ``headers``, then
    Content-Length. The copied headers are the request's own octets."""
    cdef const unsigned char* b = <const unsigned char*>PyBytes_AS_STRING(request._buf)
    cdef HdrEntry* h
    cdef Py_ssize_t s, e, k, a, z
    cdef int i
    cdef bint first = True
    cdef Out o
    if reason is None:
        reason = REASONS.get(status, "Unknown")
    _out_init(&o, 512 + PyBytes_GET_SIZE(body))
    try:
        _put_c(&o, "SIP/2.0 ")
        _put_int(&o, status)
        _put_c(&o, " ")
        _put_line(&o, reason, "reason")
        _put_c(&o, "\r\n")
        if top_via is not None:
            _put_c(&o, "Via: ")
            _put_line(&o, top_via, "Via")
            _put_c(&o, "\r\n")
        for i in range(request._nhdrs):
            h = &request._hdrs[i]
            if h.id != H_VIA:
                continue
            s = h.val_off
            e = s + h.val_len
            while s <= e:
                k = _next_comma(b, s, e)
                if k < 0:
                    raise SipParseError("invalid Via header: unterminated quoted string", 400)
                a = _skip_lws(b, s, k)
                z = _rtrim(b, a, k)
                s = k + 1
                if z <= a:
                    continue
                if first:
                    first = False
                    if top_via is not None:
                        continue
                    if source is not None:
                        _put_c(&o, "Via: ")
                        _put_top_via(&o, b, a, z, source[0], source[1])
                        _put_c(&o, "\r\n")
                        continue
                _put_c(&o, "Via: ")
                _put_value(&o, b, a, z)
                _put_c(&o, "\r\n")
        _put_c(&o, "From: ")
        i = request._find(H_FROM)
        if i >= 0:
            _put_value(&o, b, request._hdrs[i].val_off, request._hdrs[i].val_off + request._hdrs[i].val_len)
        _put_c(&o, "\r\nTo: ")
        i = request._find(H_TO)
        if i >= 0:
            _put_value(&o, b, request._hdrs[i].val_off, request._hdrs[i].val_off + request._hdrs[i].val_len)
        if to_tag is not None and request._ttag_l < 0:
            _put_c(&o, ";tag=")
            _put_line(&o, to_tag, "to_tag")
        _put_c(&o, "\r\nCall-ID: ")
        _put(&o, <const char*>(b + request._cid_o), request._cid_l)
        _put_c(&o, "\r\nCSeq: ")
        _put_int(&o, request.cseq)
        _put_c(&o, " ")
        _put(&o, <const char*>(b + request._cseqm_o), request._cseqm_l)
        _put_c(&o, "\r\n")
        return _tail(&o, headers, body)
    finally:
        PyMem_Free(o.p)


def set_via_received(str raw_via_value, str received, int rport) -> str:
    """RFC 3581: ;received= added or replaced; ;rport filled with the source port when the
    client asked for it (a bare ;rport). Other parameters keep their text and order."""
    cdef bytes data = _enc(raw_via_value)
    cdef const unsigned char* b = <const unsigned char*>PyBytes_AS_STRING(data)
    cdef ViaParts v
    cdef ParamHits ph
    cdef Py_ssize_t e = PyBytes_GET_SIZE(data), k
    cdef int rc
    _check_line(received, "received")
    k = _next_comma(b, 0, e)
    if k < 0:
        k = e
    rc = _scan_via(b, 0, k, &v, &ph)
    if rc != E_OK:
        raise _err("Via header", rc)
    head = _dec(b, 0, v.par_o).strip()
    out = [head]
    pstart = _skip_lws(b, v.par_o, v.par_e)
    if pstart < v.par_e:
        for item in _dec_unfold(b, pstart + 1, v.par_e - pstart - 1).split(";"):
            name = item.split("=", 1)[0].strip().lower()
            if name == "received":
                continue
            if name == "rport":
                out.append(f"rport={rport}")
                continue
            out.append(item.strip())
    rc_val = received[1:-1] if received.startswith("[") else received
    out.append(f"received={rc_val}")
    return ";".join(out)


# Tags, branches and Call-IDs are cryptographically random (RFC 3261 19.3): os.urandom, but
# read 4 KiB at a time, since one getrandom call per response cost more than the rest of
# building it. A forked child starts with a fresh pool, never with its parent's octets.
cdef enum:
    RAND_POOL = 4096
cdef bytes _pool = b""
cdef Py_ssize_t _pool_pos = 0
cdef const char* _HEX = b"0123456789abcdef"


cdef void _pool_reset() noexcept:
    global _pool, _pool_pos
    _pool = b""
    _pool_pos = 0


cdef str _rand_hex(Py_ssize_t n):
    """2n lower-case hex digits from n random octets."""
    global _pool, _pool_pos
    cdef const unsigned char* p
    cdef char* out
    cdef Py_ssize_t i
    if _pool_pos + n > PyBytes_GET_SIZE(_pool):
        _pool = os.urandom(RAND_POOL)
        _pool_pos = 0
    p = <const unsigned char*>PyBytes_AS_STRING(_pool) + _pool_pos
    _pool_pos += n
    r = PyUnicode_New(2 * n, 127)
    out = <char*>PyUnicode_DATA(r)
    for i in range(n):
        out[2 * i] = _HEX[p[i] >> 4]
        out[2 * i + 1] = _HEX[p[i] & 15]
    return <str>r


os.register_at_fork(after_in_child=lambda: _pool_reset())


def new_branch() -> str:
    return MAGIC_COOKIE + _rand_hex(10)


def new_tag() -> str:
    return _rand_hex(6)


def new_call_id(str host="") -> str:
    cid = _rand_hex(12)
    return f"{cid}@{host}" if host else cid


# ---------------------------------------------------------------- stream framing
cdef class Framer:
    """Stream framer for TCP/TLS: feed bytes, get whole messages (framed by Content-Length)."""
    cdef bytearray _buf
    cdef Py_ssize_t _max
    cdef Py_ssize_t _scan   # where to resume looking for the end of the header section
    cdef Py_ssize_t _hend   # end of the current message's header section, 0 while unknown
    cdef Py_ssize_t _total  # size of the current message once _hend is known

    def __init__(self, Py_ssize_t max_message=MAX_MESSAGE):
        self._buf = bytearray()
        self._max = max_message
        self._scan = self._hend = self._total = 0

    @property
    def buffered(self):
        return len(self._buf)

    def feed(self, bytes data) -> list:
        """Complete messages in order; KEEPALIVE_PING / KEEPALIVE_PONG for keep-alives. Raises
        SipParseError (400 bad/missing Content-Length, 413 too large): close the connection."""
        cdef list out = []
        cdef Py_ssize_t n, hend, cl
        cdef const unsigned char* b
        self._buf += data
        while True:
            n = PyByteArray_GET_SIZE(self._buf)
            if n == 0:
                break
            b = <const unsigned char*>PyByteArray_AS_STRING(self._buf)
            if self._hend == 0:
                if self._scan == 0 and b[0] == 13:
                    # keep-alives between messages (RFC 5626 4.4.1)
                    if n >= 4 and b[1] == 10 and b[2] == 13 and b[3] == 10:
                        out.append(KEEPALIVE_PING)
                        del self._buf[:4]
                        continue
                    if n >= 2 and b[1] == 10:
                        # a lone CRLF is reported at once: waiting to see whether a second
                        # one follows would stall a client waiting for its pong
                        out.append(KEEPALIVE_PONG)
                        del self._buf[:2]
                        continue
                    if n == 1:
                        break
                hend = self._buf.find(b"\r\n\r\n", max(self._scan - 3, 0))
                if hend < 0:
                    self._scan = n
                    if n > self._max:
                        raise SipParseError("message too large", 413)
                    break
                hend += 4
                cl = _stream_clen(b, hend)
                if cl < 0:
                    raise SipParseError("missing Content-Length on a stream transport" if cl == -1
                                        else "invalid Content-Length header", 400)
                if hend + cl > self._max:
                    raise SipParseError("message too large", 413)
                self._hend = hend
                self._total = hend + cl
            if n < self._total:
                break
            out.append(bytes(self._buf[:self._total]))
            del self._buf[:self._total]
            self._scan = self._hend = self._total = 0
        return out


cdef Py_ssize_t _stream_clen(const unsigned char* b, Py_ssize_t hend) noexcept:
    """Content-Length of the header section [0, hend): -1 absent, -2 invalid or conflicting."""
    cdef Py_ssize_t pos = 0, le, i, j, vs, t
    cdef const void* p
    cdef long v, found = -1
    while pos < hend - 2:
        p = memchr(b + pos, 10, <size_t>(hend - pos))
        if p == NULL:
            break
        le = <const unsigned char*>p - b
        if pos > 0 and b[pos] != 32 and b[pos] != 9:
            i = pos
            while i < le and (CT[b[i]] & C_TOKEN):
                i += 1
            j = i
            while j < le and (b[j] == 32 or b[j] == 9):
                j += 1
            if i > pos and j < le and b[j] == 58 and _hdr_id(b + pos, i - pos) == H_CONTENT_LENGTH:
                vs = _skip_lws(b, j + 1, le)
                t = _rtrim(b, vs, le)
                v = _digits(b, vs, t, 0x7FFFFFFF)
                if v < 0 or (found >= 0 and v != found):
                    return -2
                found = v
        pos = le + 1
    return found
