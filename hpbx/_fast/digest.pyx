"""Digest authentication core (RFC 3261 §22 and §25, RFC 7616, RFC 8760): MD5 and SHA-256, qop=auth.

The credentials value is scanned once over its UTF-8 bytes; ``check`` never builds a dict or a
str per parameter, only the username and (after a valid response) the nonce key.
Nonces are stateless: ``<issue ms hex>.<counter hex>.<SipHash-2-4 tag hex>`` with a per-process
random key, so a challenge costs no memory. The highest nonce-count seen per nonce is kept in two
generations (swapped every nonce lifetime, or early when one holds ``max_tracked_nonces``) to
refuse replays. HA1 is computed once per user, algorithm and password.

The hash functions are written here in C instead of calling hashlib: three hashlib calls cost
more than the whole check is allowed to (about 0.4 µs each), and OpenSSL's headers are not on a
fresh Debian. tests/unit/test_digest.py checks them against hashlib and the SipHash paper's
vectors. See digest.pyi for the contract.
"""

from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t
from libc.stdlib cimport malloc, free
from libc.string cimport memchr, memcpy
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_DecodeUTF8, PyUnicode_DecodeASCII

import os

cdef extern from "Python.h":
    dict _PyDict_NewPresized(Py_ssize_t minused)
    str PyUnicode_New(Py_ssize_t size, Py_UCS4 maxchar)
    bint PyUnicode_IS_COMPACT_ASCII(object o)
    void* PyUnicode_DATA(object o)
    Py_ssize_t PyUnicode_GET_LENGTH(object o)

cdef extern from *:
    """
    /* MD5 (RFC 1321), SHA-256 (FIPS 180-4) and SipHash-2-4 (Aumasson and Bernstein, 2012),
       portable C with no byte-order assumption. */
    #include <stdint.h>
    #include <string.h>

    #define HD_ROTL(x, n) (((x) << (n)) | ((x) >> (32 - (n))))
    #define HD_ROTR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

    typedef struct {
        uint32_t h[8];
        uint64_t total;
        unsigned char buf[64];
        size_t used;
        int alg;            /* 0 = MD5, 1 = SHA-256 */
    } hd_hash;

    static const uint32_t hd_md5_k[64] = {
        0xd76aa478, 0xe8c7b756, 0x242070db, 0xc1bdceee, 0xf57c0faf, 0x4787c62a, 0xa8304613, 0xfd469501,
        0x698098d8, 0x8b44f7af, 0xffff5bb1, 0x895cd7be, 0x6b901122, 0xfd987193, 0xa679438e, 0x49b40821,
        0xf61e2562, 0xc040b340, 0x265e5a51, 0xe9b6c7aa, 0xd62f105d, 0x02441453, 0xd8a1e681, 0xe7d3fbc8,
        0x21e1cde6, 0xc33707d6, 0xf4d50d87, 0x455a14ed, 0xa9e3e905, 0xfcefa3f8, 0x676f02d9, 0x8d2a4c8a,
        0xfffa3942, 0x8771f681, 0x6d9d6122, 0xfde5380c, 0xa4beea44, 0x4bdecfa9, 0xf6bb4b60, 0xbebfbc70,
        0x289b7ec6, 0xeaa127fa, 0xd4ef3085, 0x04881d05, 0xd9d4d039, 0xe6db99e5, 0x1fa27cf8, 0xc4ac5665,
        0xf4292244, 0x432aff97, 0xab9423a7, 0xfc93a039, 0x655b59c3, 0x8f0ccc92, 0xffeff47d, 0x85845dd1,
        0x6fa87e4f, 0xfe2ce6e0, 0xa3014314, 0x4e0811a1, 0xf7537e82, 0xbd3af235, 0x2ad7d2bb, 0xeb86d391,
    };

    static const uint32_t hd_sha256_k[64] = {
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
        0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
        0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
        0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
        0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
        0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
        0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
    };

    static inline uint32_t hd_le32(const unsigned char *p) {
        return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
    }
    static inline uint32_t hd_be32(const unsigned char *p) {
        return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | (uint32_t)p[3];
    }
    static inline uint64_t hd_le64(const unsigned char *p) {
        return (uint64_t)hd_le32(p) | ((uint64_t)hd_le32(p + 4) << 32);
    }

    #define HD_MD5_STEP(f, a, b, c, d, x, k, s) \
        (a) += f((b), (c), (d)) + (x) + (k); (a) = HD_ROTL((a), (s)) + (b);
    #define HD_MD5_F(x, y, z) ((z) ^ ((x) & ((y) ^ (z))))
    #define HD_MD5_G(x, y, z) ((y) ^ ((z) & ((x) ^ (y))))
    #define HD_MD5_H(x, y, z) ((x) ^ (y) ^ (z))
    #define HD_MD5_I(x, y, z) ((y) ^ ((x) | ~(z)))

    static void hd_md5_block(uint32_t *h, const unsigned char *p) {
        uint32_t x[16], a = h[0], b = h[1], c = h[2], d = h[3];
        int i;
        for (i = 0; i < 16; i++) x[i] = hd_le32(p + 4 * i);
        for (i = 0; i < 16; i += 4) {
            HD_MD5_STEP(HD_MD5_F, a, b, c, d, x[i], hd_md5_k[i], 7)
            HD_MD5_STEP(HD_MD5_F, d, a, b, c, x[i + 1], hd_md5_k[i + 1], 12)
            HD_MD5_STEP(HD_MD5_F, c, d, a, b, x[i + 2], hd_md5_k[i + 2], 17)
            HD_MD5_STEP(HD_MD5_F, b, c, d, a, x[i + 3], hd_md5_k[i + 3], 22)
        }
        for (i = 16; i < 32; i += 4) {
            HD_MD5_STEP(HD_MD5_G, a, b, c, d, x[(5 * i + 1) & 15], hd_md5_k[i], 5)
            HD_MD5_STEP(HD_MD5_G, d, a, b, c, x[(5 * i + 6) & 15], hd_md5_k[i + 1], 9)
            HD_MD5_STEP(HD_MD5_G, c, d, a, b, x[(5 * i + 11) & 15], hd_md5_k[i + 2], 14)
            HD_MD5_STEP(HD_MD5_G, b, c, d, a, x[(5 * i + 16) & 15], hd_md5_k[i + 3], 20)
        }
        for (i = 32; i < 48; i += 4) {
            HD_MD5_STEP(HD_MD5_H, a, b, c, d, x[(3 * i + 5) & 15], hd_md5_k[i], 4)
            HD_MD5_STEP(HD_MD5_H, d, a, b, c, x[(3 * i + 8) & 15], hd_md5_k[i + 1], 11)
            HD_MD5_STEP(HD_MD5_H, c, d, a, b, x[(3 * i + 11) & 15], hd_md5_k[i + 2], 16)
            HD_MD5_STEP(HD_MD5_H, b, c, d, a, x[(3 * i + 14) & 15], hd_md5_k[i + 3], 23)
        }
        for (i = 48; i < 64; i += 4) {
            HD_MD5_STEP(HD_MD5_I, a, b, c, d, x[(7 * i) & 15], hd_md5_k[i], 6)
            HD_MD5_STEP(HD_MD5_I, d, a, b, c, x[(7 * i + 7) & 15], hd_md5_k[i + 1], 10)
            HD_MD5_STEP(HD_MD5_I, c, d, a, b, x[(7 * i + 14) & 15], hd_md5_k[i + 2], 15)
            HD_MD5_STEP(HD_MD5_I, b, c, d, a, x[(7 * i + 21) & 15], hd_md5_k[i + 3], 21)
        }
        h[0] += a; h[1] += b; h[2] += c; h[3] += d;
    }

    #define HD_S0(x) (HD_ROTR(x, 2) ^ HD_ROTR(x, 13) ^ HD_ROTR(x, 22))
    #define HD_S1(x) (HD_ROTR(x, 6) ^ HD_ROTR(x, 11) ^ HD_ROTR(x, 25))
    #define HD_G0(x) (HD_ROTR(x, 7) ^ HD_ROTR(x, 18) ^ ((x) >> 3))
    #define HD_G1(x) (HD_ROTR(x, 17) ^ HD_ROTR(x, 19) ^ ((x) >> 10))

    static void hd_sha256_block(uint32_t *h, const unsigned char *p) {
        uint32_t w[64], a, b, c, d, e, f, g, hh, t1, t2;
        int i;
        for (i = 0; i < 16; i++) w[i] = hd_be32(p + 4 * i);
        for (i = 16; i < 64; i++) w[i] = HD_G1(w[i - 2]) + w[i - 7] + HD_G0(w[i - 15]) + w[i - 16];
        a = h[0]; b = h[1]; c = h[2]; d = h[3]; e = h[4]; f = h[5]; g = h[6]; hh = h[7];
        for (i = 0; i < 64; i++) {
            t1 = hh + HD_S1(e) + ((e & f) ^ (~e & g)) + hd_sha256_k[i] + w[i];
            t2 = HD_S0(a) + ((a & b) ^ (a & c) ^ (b & c));
            hh = g; g = f; f = e; e = d + t1; d = c; c = b; b = a; a = t1 + t2;
        }
        h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e; h[5] += f; h[6] += g; h[7] += hh;
    }

    static void hd_hash_init(hd_hash *ctx, int alg) {
        static const uint32_t md5_iv[4] = {0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476};
        static const uint32_t sha_iv[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                           0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
        ctx->alg = alg;
        ctx->total = 0;
        ctx->used = 0;
        if (alg == 0) memcpy(ctx->h, md5_iv, sizeof md5_iv);
        else memcpy(ctx->h, sha_iv, sizeof sha_iv);
    }

    static inline void hd_hash_block(hd_hash *ctx, const unsigned char *p) {
        if (ctx->alg == 0) hd_md5_block(ctx->h, p);
        else hd_sha256_block(ctx->h, p);
    }

    static void hd_hash_update(hd_hash *ctx, const void *data, size_t n) {
        const unsigned char *p = (const unsigned char *)data;
        ctx->total += n;
        if (ctx->used) {
            size_t take = 64 - ctx->used;
            if (take > n) take = n;
            memcpy(ctx->buf + ctx->used, p, take);
            ctx->used += take; p += take; n -= take;
            if (ctx->used < 64) return;
            hd_hash_block(ctx, ctx->buf);
            ctx->used = 0;
        }
        while (n >= 64) { hd_hash_block(ctx, p); p += 64; n -= 64; }
        if (n) { memcpy(ctx->buf, p, n); ctx->used = n; }
    }

    /* Finishes the hash and writes it as lowercase hex; returns the number of hex digits. */
    static int hd_hash_hex(hd_hash *ctx, char *out) {
        static const char hexd[] = "0123456789abcdef";
        uint64_t bits = ctx->total * 8;
        unsigned char byte;
        int i, words;
        ctx->buf[ctx->used++] = 0x80;
        if (ctx->used > 56) {
            memset(ctx->buf + ctx->used, 0, 64 - ctx->used);
            hd_hash_block(ctx, ctx->buf);
            ctx->used = 0;
        }
        memset(ctx->buf + ctx->used, 0, 56 - ctx->used);
        for (i = 0; i < 8; i++)
            ctx->buf[ctx->alg == 0 ? 56 + i : 63 - i] = (unsigned char)(bits >> (8 * i));
        hd_hash_block(ctx, ctx->buf);
        words = ctx->alg == 0 ? 4 : 8;
        for (i = 0; i < 4 * words; i++) {
            if (ctx->alg == 0) byte = (unsigned char)(ctx->h[i / 4] >> (8 * (i % 4)));
            else byte = (unsigned char)(ctx->h[i / 4] >> (24 - 8 * (i % 4)));
            out[2 * i] = hexd[byte >> 4];
            out[2 * i + 1] = hexd[byte & 15];
        }
        return 8 * words;
    }

    #define HD_ROTL64(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
    #define HD_SIPROUND \
        v0 += v1; v1 = HD_ROTL64(v1, 13); v1 ^= v0; v0 = HD_ROTL64(v0, 32); \
        v2 += v3; v3 = HD_ROTL64(v3, 16); v3 ^= v2; \
        v0 += v3; v3 = HD_ROTL64(v3, 21); v3 ^= v0; \
        v2 += v1; v1 = HD_ROTL64(v1, 17); v1 ^= v2; v2 = HD_ROTL64(v2, 32);

    static uint64_t hd_siphash24(uint64_t k0, uint64_t k1, const unsigned char *p, size_t n) {
        uint64_t v0 = k0 ^ 0x736f6d6570736575ULL, v1 = k1 ^ 0x646f72616e646f6dULL;
        uint64_t v2 = k0 ^ 0x6c7967656e657261ULL, v3 = k1 ^ 0x7465646279746573ULL;
        uint64_t m, b = ((uint64_t)n) << 56;
        size_t left = n & 7, i;
        const unsigned char *end = p + n - left;
        for (; p != end; p += 8) {
            m = hd_le64(p);
            v3 ^= m; HD_SIPROUND HD_SIPROUND v0 ^= m;
        }
        for (i = 0; i < left; i++) b |= ((uint64_t)p[i]) << (8 * i);
        v3 ^= b; HD_SIPROUND HD_SIPROUND v0 ^= b;
        v2 ^= 0xff;
        HD_SIPROUND HD_SIPROUND HD_SIPROUND HD_SIPROUND
        return v0 ^ v1 ^ v2 ^ v3;
    }
    """
    ctypedef struct hd_hash:
        pass
    void hd_hash_init(hd_hash* ctx, int alg) noexcept nogil
    void hd_hash_update(hd_hash* ctx, const void* data, size_t n) noexcept nogil
    int hd_hash_hex(hd_hash* ctx, char* out) noexcept nogil
    uint64_t hd_siphash24(uint64_t k0, uint64_t k1, const unsigned char* p, size_t n) noexcept nogil


# Verdicts as small ints; hpbx.sip.auth hands its Verdict members in, in this order.
cdef enum:
    _OK = 0
    _CHALLENGE = 1
    _STALE = 2
    _FORBIDDEN = 3

OK = _OK
CHALLENGE = _CHALLENGE
STALE = _STALE
FORBIDDEN = _FORBIDDEN

ALGORITHMS = ("MD5", "SHA-256")

cdef enum:
    _MD5 = 0
    _SHA256 = 1
    _HEX_MAX = 64           # hex digits of the longest digest (SHA-256)
    _MAX_PARAMS = 48        # more parameters than any real credentials carry: malformed
    _STACK_SCRATCH = 1024
    _SIG_HEX = 16           # the nonce tag: 64-bit SipHash as hex

# Digest parameters that check() reads, by index into its field table.
cdef enum:
    _F_USERNAME = 0
    _F_REALM
    _F_NONCE
    _F_URI
    _F_RESPONSE
    _F_ALGORITHM
    _F_CNONCE
    _F_QOP
    _F_NC
    _F_OPAQUE
    _NFIELDS

# the same names as str, so parse_digest's dict keys for them are shared objects
cdef tuple _FIELD_NAMES = ("username", "realm", "nonce", "uri", "response", "algorithm", "cnonce",
                           "qop", "nc", "opaque")

cdef struct Param:
    const char* name
    Py_ssize_t name_len
    const char* val
    Py_ssize_t val_len

# RFC 3261 §25.1 token characters
cdef bint _TOKEN[256]
cdef int _c
for _c in range(256):
    _TOKEN[_c] = (48 <= _c <= 57) or (65 <= _c <= 90) or (97 <= _c <= 122) or \
        _c in b"-.!%*_+`'~"


cdef inline bint _is_lws(char c) noexcept nogil:
    return c == b' ' or c == b'\t' or c == b'\r' or c == b'\n'


cdef inline char _lower(char c) noexcept nogil:
    if b'A' <= c <= b'Z':
        return c + 32
    return c


cdef inline bint _ieq(const char* p, Py_ssize_t n, const char* lit, Py_ssize_t litn) noexcept nogil:
    """ASCII case-insensitive equality with a lowercase literal."""
    cdef Py_ssize_t i
    if n != litn:
        return False
    for i in range(n):
        if _lower(p[i]) != lit[i]:
            return False
    return True


cdef inline bint _eq(const char* p, Py_ssize_t n, const char* lit, Py_ssize_t litn) noexcept nogil:
    cdef Py_ssize_t i
    if n != litn:
        return False
    for i in range(n):
        if p[i] != lit[i]:
            return False
    return True


cdef Py_ssize_t _scan(const char* s, Py_ssize_t n, Param* out, char* scratch) noexcept nogil:
    """Scan ``Digest name=value, ...`` -> number of parameters, -1 if the scheme is not Digest,
    -2 if malformed. A value with quoted-pairs is unescaped into ``scratch`` (``n`` bytes)."""
    cdef Py_ssize_t i = 0, start, count = 0
    cdef const char* name
    cdef Py_ssize_t name_len
    cdef char* w
    cdef const char* q
    cdef const char* e
    cdef char c
    while i < n and _is_lws(s[i]):
        i += 1
    start = i
    while i < n and _TOKEN[<uint8_t>s[i]]:
        i += 1
    if not _ieq(s + start, i - start, b"digest", 6):
        return -1
    if i < n and not _is_lws(s[i]):
        return -1
    while True:
        while i < n and _is_lws(s[i]):
            i += 1
        if i >= n:
            return count
        if s[i] == b',':
            # empty list elements are allowed (RFC 7230 §7 #rule)
            i += 1
            continue
        start = i
        while i < n and _TOKEN[<uint8_t>s[i]]:
            i += 1
        if i == start:
            return -2
        name = s + start
        name_len = i - start
        while i < n and _is_lws(s[i]):
            i += 1
        if i >= n or s[i] != b'=':
            return -2
        i += 1
        while i < n and _is_lws(s[i]):
            i += 1
        if count == _MAX_PARAMS:
            return -2
        out[count].name = name
        out[count].name_len = name_len
        if i < n and s[i] == b'"':
            i += 1
            start = i
            # memchr is vectorised: find the closing quote, then any escape before it
            q = <const char*>memchr(s + i, b'"', n - i)
            e = <const char*>memchr(s + i, b'\\', (q - s if q != NULL else n) - i)
            if e != NULL:
                i = e - s
            elif q != NULL:
                i = q - s
            else:
                i = n
            if i < n and s[i] == b'\\':
                # quoted-pairs: copy the value unescaped
                w = scratch
                memcpy(w, s + start, i - start)
                w += i - start
                out[count].val = scratch
                while i < n and s[i] != b'"':
                    c = s[i]
                    if c == b'\\':
                        i += 1
                        if i >= n:
                            return -2
                        c = s[i]
                    w[0] = c
                    w += 1
                    i += 1
                out[count].val_len = w - scratch
                scratch = w
            else:
                out[count].val = s + start
                out[count].val_len = i - start
            if i >= n:
                return -2   # no closing quote
            i += 1
        else:
            start = i
            while i < n and not _is_lws(s[i]) and s[i] != b',' and s[i] != b'"':
                i += 1
            out[count].val = s + start
            out[count].val_len = i - start
        count += 1
        while i < n and _is_lws(s[i]):
            i += 1
        if i < n:
            if s[i] != b',':
                return -2
            i += 1


cdef int _field(const char* p, Py_ssize_t n) noexcept nogil:
    """The check() field index of a parameter name (any case), -1 for other names."""
    if n == 8:
        if _ieq(p, n, b"username", 8):
            return _F_USERNAME
        if _ieq(p, n, b"response", 8):
            return _F_RESPONSE
    elif n == 5:
        if _ieq(p, n, b"realm", 5):
            return _F_REALM
        if _ieq(p, n, b"nonce", 5):
            return _F_NONCE
    elif n == 3:
        if _ieq(p, n, b"uri", 3):
            return _F_URI
        if _ieq(p, n, b"qop", 3):
            return _F_QOP
    elif n == 9:
        if _ieq(p, n, b"algorithm", 9):
            return _F_ALGORITHM
    elif n == 6:
        if _ieq(p, n, b"cnonce", 6):
            return _F_CNONCE
        if _ieq(p, n, b"opaque", 6):
            return _F_OPAQUE
    elif n == 2:
        if _ieq(p, n, b"nc", 2):
            return _F_NC
    return -1


cdef inline object _utf8_view(str s, const char** p, Py_ssize_t* n):
    """Point ``p``/``n`` at the UTF-8 bytes of ``s``; returns the object that owns them.
    An ASCII str is its own UTF-8, so the common case copies nothing."""
    if PyUnicode_IS_COMPACT_ASCII(s):
        p[0] = <const char*>PyUnicode_DATA(s)
        n[0] = PyUnicode_GET_LENGTH(s)
        return s
    b = s.encode("utf-8", "surrogateescape")
    p[0] = PyBytes_AS_STRING(b)
    n[0] = PyBytes_GET_SIZE(b)
    return b


cdef inline str _decode(const char* p, Py_ssize_t n):
    return PyUnicode_DecodeUTF8(p, n, "surrogateescape")


cdef inline str _ascii_str(const char* p, Py_ssize_t n):
    """A str of ``n`` bytes known to be ASCII (a slice of an ASCII str): one copy, no decoding."""
    cdef str out = PyUnicode_New(n, 127)
    memcpy(PyUnicode_DATA(out), p, n)
    return out


cdef bytes _to_utf8(object s):
    if not isinstance(s, str):
        raise TypeError(f"expected str, got {type(s).__name__}")
    return (<str>s).encode("utf-8", "surrogateescape")


def parse_digest(value):
    """``Digest username="a", realm="b", nc=00000001, ...`` -> {lowercase name: value};
    None when the value is not a Digest credentials/challenge or is malformed."""
    cdef const char* p
    cdef Py_ssize_t n, count, i
    cdef Param params[_MAX_PARAMS]
    cdef char stack_scratch[_STACK_SCRATCH]
    cdef char* scratch = stack_scratch
    cdef char lname[32]
    cdef int f
    if not isinstance(value, str):
        return None
    cdef bint ascii = PyUnicode_IS_COMPACT_ASCII(value)
    keep = _utf8_view(<str>value, &p, &n)
    if n > _STACK_SCRATCH:
        scratch = <char*>malloc(n)
        if scratch == NULL:
            raise MemoryError()
    try:
        count = _scan(p, n, params, scratch)
        if count < 0:
            return None
        result = _PyDict_NewPresized(count)
        for i in range(count):
            f = _field(params[i].name, params[i].name_len)
            if f >= 0:
                name = _FIELD_NAMES[f]
            elif params[i].name_len <= 32:
                for f in range(params[i].name_len):
                    lname[f] = _lower(params[i].name[f])
                name = PyUnicode_DecodeASCII(lname, params[i].name_len, NULL)
            else:
                name = PyUnicode_DecodeASCII(params[i].name, params[i].name_len, NULL).lower()
            if ascii:
                result[name] = _ascii_str(params[i].val, params[i].val_len)
            else:
                result[name] = _decode(params[i].val, params[i].val_len)
        return result
    finally:
        if scratch != stack_scratch:
            free(scratch)


cdef inline void _hex64(uint64_t v, char* out) noexcept nogil:
    cdef int i
    for i in range(16):
        out[15 - i] = b"0123456789abcdef"[v & 15]
        v >>= 4


cdef inline int _hexval(char c) noexcept nogil:
    if b'0' <= c <= b'9':
        return c - 48
    if b'a' <= c <= b'f':
        return c - 87
    if b'A' <= c <= b'F':
        return c - 55
    return -1


cdef inline Py_ssize_t _put_hex(char* out, uint64_t v) noexcept nogil:
    """Lowercase hex of ``v`` without leading zeros; returns the length."""
    cdef char tmp[16]
    cdef Py_ssize_t k = 0, i
    while True:
        tmp[k] = b"0123456789abcdef"[v & 15]
        k += 1
        v >>= 4
        if v == 0:
            break
    for i in range(k):
        out[i] = tmp[k - 1 - i]
    return k


cdef bint _same_hex(const char* expected, const char* given, Py_ssize_t n) noexcept nogil:
    """Constant-time comparison of lowercase hex ``expected`` with ``given`` in any case."""
    cdef char diff = 0
    cdef Py_ssize_t i
    for i in range(n):
        diff |= expected[i] ^ _lower(given[i])
    return diff == 0


cdef bint _same_bytes(const char* a, const char* b, Py_ssize_t n) noexcept nogil:
    """Constant-time equality of two byte strings of length ``n``."""
    cdef char diff = 0
    cdef Py_ssize_t i
    for i in range(n):
        diff |= a[i] ^ b[i]
    return diff == 0


cdef int _alg_id(str name) except -2:
    if name == "MD5":
        return _MD5
    if name == "SHA-256":
        return _SHA256
    return -1


cdef str _quote(str text):
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


cdef class DigestAuth:
    """Verifies Digest credentials and issues challenges; see the module doc and digest.pyi."""

    cdef public object lookup
    cdef public object clock
    cdef public Py_ssize_t max_tracked_nonces
    cdef tuple _verdicts
    cdef str _realm
    cdef bytes _realm_b
    cdef double _nonce_ttl
    cdef tuple _algorithms
    cdef int _alg_mask
    cdef str _challenge_prefix
    cdef tuple _challenge_suffixes    # per offered algorithm: (plain, with stale=true)
    cdef uint64_t _k0, _k1
    cdef uint64_t _counter
    cdef dict _nc_now, _nc_old
    cdef double _nc_rotated
    cdef double _valid_since
    cdef dict _ha1_md5, _ha1_sha256     # username -> (password, HA1 hex bytes)
    cdef bytes _decoy_ha1               # 64 random hex digits: the HA1 of an unknown user

    def __init__(self, lookup, str realm, nonce_ttl, algorithms=ALGORITHMS, clock=None,
                 verdicts=(OK, CHALLENGE, STALE, FORBIDDEN), Py_ssize_t max_tracked_nonces=200_000):
        import time
        self.lookup = lookup
        self.clock = time.monotonic if clock is None else clock
        self.max_tracked_nonces = max_tracked_nonces
        if len(verdicts) != 4:
            raise ValueError("verdicts must be (ok, challenge, stale, forbidden)")
        self._verdicts = tuple(verdicts)
        key = os.urandom(16)
        self._k0 = int.from_bytes(key[:8], "little")
        self._k1 = int.from_bytes(key[8:], "little")
        self._decoy_ha1 = os.urandom(32).hex().encode("ascii")
        self._counter = 0
        self._nc_now = {}
        self._nc_old = {}
        self._nc_rotated = self.clock()
        self._valid_since = float("-inf")   # nonces issued at or before this are stale
        self._ha1_md5 = {}
        self._ha1_sha256 = {}
        self._realm = None
        self.configure(realm, nonce_ttl, algorithms)

    def configure(self, str realm, nonce_ttl, algorithms):
        cdef int mask = 0, a
        algorithms = tuple(algorithms)
        if not algorithms:
            raise ValueError("at least one digest algorithm is needed")
        for alg in algorithms:
            a = _alg_id(alg) if isinstance(alg, str) else -1
            if a < 0:
                raise ValueError(f"unknown digest algorithm {alg!r} (known: MD5, SHA-256)")
            mask |= 1 << a
        if realm != self._realm:
            self._ha1_md5.clear()
            self._ha1_sha256.clear()
        self._realm = realm
        self._realm_b = _to_utf8(realm)
        self._nonce_ttl = float(nonce_ttl)
        self._algorithms = algorithms
        self._alg_mask = mask
        # everything of a challenge but the nonce is fixed per realm: built once here
        self._challenge_prefix = f"Digest realm={_quote(realm)}, nonce=\""
        self._challenge_suffixes = tuple(
            (f'", qop="auth", algorithm={alg}', f'", qop="auth", algorithm={alg}, stale=true')
            for alg in algorithms)

    @property
    def realm(self):
        return self._realm

    @property
    def nonce_ttl(self):
        return self._nonce_ttl

    @property
    def algorithms(self):
        return self._algorithms

    @property
    def tracked_nonces(self):
        """Nonce-counts remembered now (both generations)."""
        return len(self._nc_now) + len(self._nc_old)

    # ---- nonces
    cdef Py_ssize_t _nonce_body(self, char* out, double now) noexcept:
        cdef int64_t ms = <int64_t>(now * 1000.0)
        cdef Py_ssize_t k
        if ms < 0:
            ms = 0
        self._counter += 1
        k = _put_hex(out, <uint64_t>ms)
        out[k] = b'.'
        k += 1
        k += _put_hex(out + k, self._counter)
        return k

    cpdef str new_nonce(self):
        cdef char buf[64]
        cdef Py_ssize_t k = self._nonce_body(buf, self.clock())
        buf[k] = b'.'
        _hex64(hd_siphash24(self._k0, self._k1, <const unsigned char*>buf, k), buf + k + 1)
        return PyUnicode_DecodeASCII(buf, k + 1 + _SIG_HEX, NULL)

    cdef bint _nonce_issued(self, const char* p, Py_ssize_t n, double* issued) noexcept:
        """Whether ``p`` is a nonce this process signed; sets its issue time (s)."""
        cdef Py_ssize_t body = n - _SIG_HEX - 1, i
        cdef char sig[_SIG_HEX]
        cdef uint64_t ms = 0
        cdef int d
        if body < 3 or p[body] != b'.':
            return False
        _hex64(hd_siphash24(self._k0, self._k1, <const unsigned char*>p, body), sig)
        if not _same_bytes(sig, p + body + 1, _SIG_HEX):
            return False
        for i in range(body):
            if p[i] == b'.':
                break
            if i == 15:
                return False
            d = _hexval(p[i])
            if d < 0:
                return False
            ms = ms * 16 + d
        if i == 0:
            return False
        issued[0] = ms / 1000.0
        return True

    def challenge_headers(self, str header="WWW-Authenticate", bint stale=False, offer=None):
        """[(header, 'Digest realm=..., nonce=..., qop="auth", algorithm=A')] per algorithm,
        all with one fresh nonce: every enabled algorithm in configured order, or those of
        ``offer`` that are enabled, in its order (all enabled ones if none of it is)."""
        cdef str nonce = self.new_nonce()
        cdef str head = self._challenge_prefix + nonce
        cdef list out = []
        cdef tuple pair
        cdef int i
        if offer is not None:
            for alg in offer:
                for i in range(len(self._algorithms)):
                    if self._algorithms[i] == alg:
                        pair = <tuple>self._challenge_suffixes[i]
                        out.append((header, head + <str>pair[1 if stale else 0]))
            if out:
                return out
        for pair in self._challenge_suffixes:
            out.append((header, head + <str>pair[1 if stale else 0]))
        return out

    # ---- HA1
    cdef bytes _ha1_hex(self, user, int alg):
        cdef dict cache = self._ha1_md5 if alg == _MD5 else self._ha1_sha256
        cdef str username = user.username
        password = user.sip_password
        cached = cache.get(username)
        if cached is not None and ((<tuple>cached)[0] is password or (<tuple>cached)[0] == password):
            return <bytes>(<tuple>cached)[1]
        cdef hd_hash ctx
        cdef char hexout[_HEX_MAX]
        cdef bytes ub = _to_utf8(username)
        cdef bytes pb = _to_utf8(password)
        hd_hash_init(&ctx, alg)
        hd_hash_update(&ctx, PyBytes_AS_STRING(ub), PyBytes_GET_SIZE(ub))
        hd_hash_update(&ctx, b":", 1)
        hd_hash_update(&ctx, PyBytes_AS_STRING(self._realm_b), PyBytes_GET_SIZE(self._realm_b))
        hd_hash_update(&ctx, b":", 1)
        hd_hash_update(&ctx, PyBytes_AS_STRING(pb), PyBytes_GET_SIZE(pb))
        digest = PyBytes_FromStringAndSize(hexout, hd_hash_hex(&ctx, hexout))
        cache[username] = (password, digest)
        return digest

    def ha1(self, user, str algorithm):
        """H(username:realm:password) as hex, cached per user and algorithm."""
        cdef int alg = _alg_id(algorithm)
        if alg < 0:
            raise KeyError(algorithm)
        return self._ha1_hex(user, alg).decode("ascii")

    # ---- verification
    cdef bint _nc_fresh(self, const char* nonce, Py_ssize_t nonce_len, uint64_t nc, double now):
        if now - self._nc_rotated > self._nonce_ttl or len(self._nc_now) >= self.max_tracked_nonces:
            # the oldest generation's counters go; a nonce issued before the kept generation
            # could have its counter there, so it is stale from now on (with time-based
            # rotation such a nonce is older than nonce_ttl anyway)
            self._valid_since = self._nc_rotated
            self._nc_old = self._nc_now
            self._nc_now = {}
            self._nc_rotated = now
        key = PyBytes_FromStringAndSize(nonce, nonce_len)
        last = self._nc_now.get(key)
        if last is None:
            last = self._nc_old.get(key, 0)
        if nc <= <uint64_t>last:
            return False
        self._nc_now[key] = nc
        return True

    def check(self, method, authorization):
        """-> (verdict, user or None, username or None); verdicts as handed to __init__."""
        cdef const char* p
        cdef Py_ssize_t n, count, i, hexlen
        cdef Param params[_MAX_PARAMS]
        cdef Param* fld[_NFIELDS]
        cdef char stack_scratch[_STACK_SCRATCH]
        cdef char* scratch = stack_scratch
        cdef int f, alg
        cdef double issued, now
        cdef uint64_t nc
        cdef Param* v
        if not isinstance(authorization, str) or not authorization or not isinstance(method, str):
            return self._verdicts[_CHALLENGE], None, None
        keep = _utf8_view(<str>authorization, &p, &n)
        if n > _STACK_SCRATCH:
            scratch = <char*>malloc(n)
            if scratch == NULL:
                raise MemoryError()
        try:
            count = _scan(p, n, params, scratch)
            if count < 0:
                return self._verdicts[_CHALLENGE], None, None
            for f in range(_NFIELDS):
                fld[f] = NULL
            for i in range(count):
                f = _field(params[i].name, params[i].name_len)
                if f >= 0:
                    fld[f] = &params[i]   # a repeated parameter: the last one counts
            username = None
            if fld[_F_USERNAME] != NULL:
                if PyUnicode_IS_COMPACT_ASCII(authorization):
                    username = _ascii_str(fld[_F_USERNAME].val, fld[_F_USERNAME].val_len)
                else:
                    username = _decode(fld[_F_USERNAME].val, fld[_F_USERNAME].val_len)
            if (fld[_F_USERNAME] == NULL or fld[_F_USERNAME].val_len == 0
                    or fld[_F_NONCE] == NULL or fld[_F_NONCE].val_len == 0
                    or fld[_F_RESPONSE] == NULL or fld[_F_RESPONSE].val_len == 0
                    or fld[_F_URI] == NULL or fld[_F_REALM] == NULL
                    or not _eq(fld[_F_REALM].val, fld[_F_REALM].val_len,
                               PyBytes_AS_STRING(self._realm_b), PyBytes_GET_SIZE(self._realm_b))):
                return self._verdicts[_CHALLENGE], None, username
            v = fld[_F_ALGORITHM]
            if v == NULL or _ieq(v.val, v.val_len, b"md5", 3):
                alg = _MD5
            elif _ieq(v.val, v.val_len, b"sha-256", 7):
                alg = _SHA256
            else:
                return self._verdicts[_CHALLENGE], None, username
            if not (self._alg_mask >> alg) & 1:
                return self._verdicts[_CHALLENGE], None, username
            v = fld[_F_NONCE]
            if not self._nonce_issued(v.val, v.val_len, &issued):
                return self._verdicts[_CHALLENGE], None, username
            now = self.clock()
            if now - issued > self._nonce_ttl or issued <= self._valid_since:
                return self._verdicts[_STALE], None, username
            v = fld[_F_QOP]
            if v == NULL or not _eq(v.val, v.val_len, b"auth", 4):
                return self._verdicts[_CHALLENGE], None, username
            v = fld[_F_NC]
            if v == NULL or v.val_len == 0 or v.val_len > 16:
                return self._verdicts[_CHALLENGE], None, username
            nc = 0
            for i in range(v.val_len):
                f = _hexval(v.val[i])
                if f < 0:
                    return self._verdicts[_CHALLENGE], None, username
                nc = nc * 16 + f
            user = self.lookup(username)
            return self._verify(method, user, username, fld, alg, nc, now)
        finally:
            if scratch != stack_scratch:
                free(scratch)

    cdef tuple _verify(self, str method, user, str username, Param** fld, int alg, uint64_t nc,
                       double now):
        cdef hd_hash ctx
        cdef char ha1[_HEX_MAX]
        cdef char ha2[_HEX_MAX]
        cdef char expected[_HEX_MAX]
        cdef int hexlen
        cdef const char* mp
        cdef Py_ssize_t mn
        cdef bytes known_ha1
        cdef Param* v
        cdef bint password_ok = False
        hd_hash_init(&ctx, alg)
        if user is not None and isinstance(user.sip_password, str):
            known_ha1 = self._ha1_hex(user, alg)
            hexlen = <int>PyBytes_GET_SIZE(known_ha1)
            memcpy(ha1, PyBytes_AS_STRING(known_ha1), hexlen)
            password_ok = True
        else:
            # unknown user (or one without a password): the same answer as a wrong password
            # after the same work as a known user's (whose HA1 is cached): HA2 and the response
            # over a per-process random HA1 that no client can know
            hexlen = 32 if alg == _MD5 else 64
            memcpy(ha1, PyBytes_AS_STRING(self._decoy_ha1), hexlen)
        keep = _utf8_view(method, &mp, &mn)
        hd_hash_update(&ctx, mp, mn)
        hd_hash_update(&ctx, b":", 1)
        v = fld[_F_URI]
        hd_hash_update(&ctx, v.val, v.val_len)
        hd_hash_hex(&ctx, ha2)
        hd_hash_init(&ctx, alg)
        hd_hash_update(&ctx, ha1, hexlen)
        hd_hash_update(&ctx, b":", 1)
        v = fld[_F_NONCE]
        hd_hash_update(&ctx, v.val, v.val_len)
        hd_hash_update(&ctx, b":", 1)
        v = fld[_F_NC]
        hd_hash_update(&ctx, v.val, v.val_len)
        hd_hash_update(&ctx, b":", 1)
        v = fld[_F_CNONCE]
        if v != NULL:
            hd_hash_update(&ctx, v.val, v.val_len)
        hd_hash_update(&ctx, b":auth:", 6)
        hd_hash_update(&ctx, ha2, hexlen)
        hd_hash_hex(&ctx, expected)
        v = fld[_F_RESPONSE]
        if not password_ok or v.val_len != hexlen or not _same_hex(expected, v.val, hexlen):
            return self._verdicts[_FORBIDDEN], None, username
        v = fld[_F_NONCE]
        if not self._nc_fresh(v.val, v.val_len, nc, now):
            # a replayed (or reordered) nonce-count: demand a fresh challenge
            return self._verdicts[_CHALLENGE], None, username
        return self._verdicts[_OK], user, username


def hash_hex(str algorithm, const unsigned char[:] data):
    """The MD5 or SHA-256 digest of ``data`` as lowercase hex (the check's own hash code)."""
    cdef hd_hash ctx
    cdef char out[_HEX_MAX]
    cdef int alg = _alg_id(algorithm)
    if alg < 0:
        raise ValueError(f"unknown digest algorithm {algorithm!r}")
    hd_hash_init(&ctx, alg)
    if data.shape[0]:
        hd_hash_update(&ctx, &data[0], data.shape[0])
    return PyUnicode_DecodeASCII(out, hd_hash_hex(&ctx, out), NULL)


def siphash24(const unsigned char[:] key, const unsigned char[:] data):
    """SipHash-2-4 of ``data`` under a 16-byte ``key`` (the nonce tag), as an int."""
    if key.shape[0] != 16:
        raise ValueError("a SipHash key is 16 bytes")
    k = bytes(key)
    return hd_siphash24(int.from_bytes(k[:8], "little"), int.from_bytes(k[8:], "little"),
                        &data[0] if data.shape[0] else NULL, data.shape[0])
