# cython: language_level=3, boundscheck=False, wraparound=False
"""Which signalling worker owns a SIP message: FNV-1a of its Call-ID value, modulo the number
of workers (hpbx/cluster/workers.py). Read straight from the datagram's bytes, without
parsing the message: the worker the kernel handed it to forwards it (2-3 us) or keeps it."""

from libc.stdint cimport uint64_t


cdef inline unsigned char _lower(unsigned char c) noexcept nogil:
    return c + 32 if 65 <= c <= 90 else c


cdef inline uint64_t _fnv(const unsigned char *p, Py_ssize_t n) noexcept nogil:
    cdef uint64_t h = 1469598103934665603ULL
    cdef Py_ssize_t i
    for i in range(n):
        h ^= p[i]
        h *= 1099511628211ULL
    return h


cdef Py_ssize_t _call_id(const unsigned char *b, Py_ssize_t n, Py_ssize_t *start) noexcept nogil:
    """Length of the Call-ID value (offset in start), or -1 when the header is missing."""
    cdef Py_ssize_t i = 0, j, k, e
    cdef const char *name = b"call-id"
    # skip the start line
    while i < n and b[i] != 10:
        i += 1
    i += 1
    while i < n:
        if b[i] == 13 or b[i] == 10:
            return -1  # the blank line: end of the headers
        j = i
        if n - i >= 7:
            k = 0
            while k < 7 and _lower(b[i + k]) == <unsigned char>name[k]:
                k += 1
            if k == 7:
                j = i + 7
        if j == i and _lower(b[i]) == 105:  # compact form "i"
            j = i + 1
        if j != i:
            while j < n and (b[j] == 32 or b[j] == 9):
                j += 1
            if j < n and b[j] == 58:  # ':'
                j += 1
                while j < n and (b[j] == 32 or b[j] == 9):
                    j += 1
                e = j
                while e < n and b[e] != 13 and b[e] != 10:
                    e += 1
                while e > j and (b[e - 1] == 32 or b[e - 1] == 9):
                    e -= 1
                start[0] = j
                return e - j
        while i < n and b[i] != 10:
            i += 1
        i += 1
    return -1


def owner(const unsigned char[::1] data, int workers) -> int:
    """The index of the worker that owns this message, or -1 when it names no Call-ID."""
    cdef Py_ssize_t start = 0
    cdef Py_ssize_t n = _call_id(&data[0], data.shape[0], &start) if data.shape[0] else -1
    if n <= 0 or workers <= 0:
        return -1
    return <int>(_fnv(&data[start], n) % <uint64_t>workers)


def owner_of(str call_id, int workers) -> int:
    """The owner of a Call-ID value (what ``owner`` finds in a message carrying it)."""
    cdef bytes v = call_id.encode("utf-8", "surrogateescape")
    if not v or workers <= 0:
        return -1
    return <int>(_fnv(<const unsigned char *>v, len(v)) % <uint64_t>workers)
