# cython: language_level=3
"""SDP (RFC 4566) parse and rewrite for media anchoring.

``parse`` returns the session and media sections with what the relay needs (address, ports,
RTCP, mux, direction, codecs, ICE). ``rewrite`` builds a new body in which every connection
address and media port points at the anchor, and ICE attributes are dropped (the relay is the
only path). Lines are handled as latin-1 text so that the rewrite leaves every untouched octet
exactly as it was; free-text fields are decoded as UTF-8 for display only.

Garbage is refused with SdpError naming the line; connection addresses must be unicast (or
the unspecified hold address) so media is never sent to a broadcast, multicast or garbage
destination.
"""
import re
import socket

from hpbx.errors import SdpError

DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
_ICE_ATTRS = frozenset((
    "candidate", "ice-ufrag", "ice-pwd", "ice-options", "ice-lite", "ice-mismatch",
    "end-of-candidates", "remote-candidates", "ice-pacing",
))
# RTP profiles whose formats are payload type numbers (RFC 3551, 3711, 4585, 5124)
_RTP_PROTOS = frozenset(("RTP/AVP", "RTP/SAVP", "RTP/AVPF", "RTP/SAVPF",
                         "UDP/TLS/RTP/SAVP", "UDP/TLS/RTP/SAVPF"))
MAX_BODY = 65536
_CTRL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


cdef class Media:
    """One m= section."""
    cdef public str kind
    cdef public int port
    cdef public int nports
    cdef public str proto
    cdef public list formats
    cdef public list payload_types
    cdef public object connection      # effective address: media-level c=, else session c=
    cdef public str addrtype          # "IP4" / "IP6" of the effective connection
    cdef public int rtcp_port         # a=rtcp port, else port + 1 (0 when port is 0)
    cdef public object rtcp_address   # a=rtcp address when given
    cdef public bint rtcp_mux
    cdef public str direction         # media-level attribute, else session-level, else sendrecv
    cdef public dict rtpmap           # {pt: "PCMU/8000"}
    cdef public dict fmtp             # {pt: "0-16"}
    cdef public list candidates       # a=candidate values
    cdef public object ice_ufrag
    cdef public object ice_pwd
    cdef public list attributes       # every a= line value of the section ("name[:value]")

    @property
    def clock_rate(self):
        """Clock rate of the first payload type (8000 when unknown)."""
        if self.payload_types:
            enc = self.rtpmap.get(self.payload_types[0])
            if enc:
                parts = enc.split("/")
                if len(parts) > 1 and parts[1].isdigit():
                    return int(parts[1])
            if self.payload_types[0] == 9:
                return 8000  # G.722 (RFC 3551 names 8000 for historical reasons)
        return 8000

    def __repr__(self):
        return (f"Media({self.kind} {self.connection}:{self.port} {self.proto} "
                f"{' '.join(self.formats)} rtcp={self.rtcp_port} mux={self.rtcp_mux} {self.direction})")


cdef class SessionDescription:
    cdef public int version
    cdef public str origin_user
    cdef public str session_id
    cdef public str session_version
    cdef public str origin_address
    cdef public str session_name
    cdef public object connection     # session-level c= address or None
    cdef public object addrtype
    cdef public str direction         # session-level direction attribute, sendrecv by default
    cdef public list media
    cdef public object ice_ufrag
    cdef public object ice_pwd

    def __repr__(self):
        return f"SessionDescription(o={self.origin_address} c={self.connection} media={self.media!r})"


cdef list _lines(bytes body):
    if len(body) > MAX_BODY:
        raise SdpError("SDP body too large")
    if not body.strip():
        raise SdpError("empty SDP body")
    text = body.decode("latin-1")
    bad = _CTRL.search(text)
    if bad is not None:
        raise SdpError(f"line {text.count(chr(10), 0, bad.start()) + 1}: control character")
    lines = text.split("\n")
    out = []
    for n, line in enumerate(lines, 1):
        if line.endswith("\r"):
            line = line[:-1]
        if not line:
            if n == len(lines) or all(not x.strip("\r") for x in lines[n:]):
                continue
            raise SdpError(f"line {n}: empty line")
        if len(line) < 2 or line[1] != "=" or not ("a" <= line[0] <= "z"):
            raise SdpError(f"line {n}: not a <type>=<value> line: {line[:40]!r}")
        if "\r" in line:
            raise SdpError(f"line {n}: bare CR")
        out.append(line)
    return out


class _Bad(Exception):
    """A malformed line; parse() names the line when it turns this into SdpError (building
    the line label only on failure keeps the per-line cost down)."""


_PROTO = re.compile(r"[A-Za-z0-9/_.\-]+\Z")
_KIND = re.compile(r"[A-Za-z0-9\-]+\Z")


cdef int _ip_version(str addr):
    """4 or 6 for a literal IP address (strict: no leading zeros, no zone), else 0.
    inet_pton is an order of magnitude cheaper than building address objects."""
    try:
        socket.inet_pton(socket.AF_INET, addr)
        return 4
    except (OSError, ValueError):
        pass
    try:
        socket.inet_pton(socket.AF_INET6, addr)
        return 6
    except (OSError, ValueError):
        return 0


cdef bint _unicast(str addr, int version, bint allow_unspecified):
    """Not multicast, broadcast, reserved (240/4) or "this network" (0/8); the unspecified
    address (RFC 2543 hold) only where allowed."""
    cdef bytes packed
    if version == 4:
        packed = socket.inet_pton(socket.AF_INET, addr)
        if packed == b"\0\0\0\0":
            return allow_unspecified
        return 0 < packed[0] < 224
    packed = socket.inet_pton(socket.AF_INET6, addr)
    if packed == bytes(16):
        return allow_unspecified
    return packed[0] != 0xFF


cdef str _check_addr(str nettype, str addrtype, str addr):
    """The address of a c= line, validated as a unicast (or unspecified) IP address."""
    cdef int version
    if nettype != "IN":
        raise _Bad(f"network type {nettype[:20]!r} is not IN")
    if "/" in addr:
        raise _Bad(f"multicast TTL/count is not supported")
    version = _ip_version(addr)
    if version == 0:
        raise _Bad(f"{addr[:64]!r} is not an IP address")
    if addrtype == "IP4":
        if version != 4:
            raise _Bad(f"{addr!r} is not an IPv4 address")
    elif addrtype == "IP6":
        if version != 6:
            raise _Bad(f"{addr!r} is not an IPv6 address")
    else:
        raise _Bad(f"address type {addrtype[:20]!r} is not IP4 or IP6")
    if not _unicast(addr, version, True):
        raise _Bad(f"{addr!r} is not a unicast address")
    return addr


cdef tuple _conn(str value):
    parts = value.split()
    if len(parts) != 3:
        raise _Bad(f"expected 'IN IP4|IP6 <address>'")
    return parts[1], _check_addr(parts[0], parts[1], parts[2])


cdef int _port(str s, int lo=0) except -1:
    if not s.isdigit() or len(s) > 5 or not (lo <= int(s) <= 65535):
        raise _Bad(f"invalid port {s[:20]!r}")
    return int(s)


cdef str _text(str latin):
    return latin.encode("latin-1").decode("utf-8", "replace")


# The last body parsed, its lines and its description: anchoring parses a body and then
# rewrites the same body (the caller's offer, the callee's answer), and the rewrite reads
# the description only, so the second parse is skipped (``rewrite`` checks the bytes are equal).
cdef bytes _last_body = None
cdef list _last_lines = None
cdef SessionDescription _last_sd = None


def parse(bytes body) -> SessionDescription:
    """Parse an SDP body; SdpError on anything malformed."""
    global _last_body, _last_lines, _last_sd
    cdef list lines = _lines(body)
    cdef SessionDescription sd = _parse(lines)
    _last_body, _last_lines, _last_sd = body, lines, sd
    return sd


cdef SessionDescription _parse(list lines):
    cdef SessionDescription sd = SessionDescription.__new__(SessionDescription)
    cdef Media m = None
    cdef int idx = 0
    if not lines or lines[0] != "v=0":
        raise SdpError("line 1: must be v=0")
    sd.version = 0
    sd.media = []
    sd.connection = None
    sd.addrtype = None
    sd.direction = "sendrecv"
    sd.session_name = ""
    sd.ice_ufrag = sd.ice_pwd = None
    have_o = False
    have_s = False
    for n, line in enumerate(lines[1:], 2):
        t = line[0]
        try:
            v = line[2:]
            if t == "m":
                parts = v.split()
                if len(parts) < 4:
                    raise _Bad(f"expected '<media> <port> <proto> <fmt> ...'")
                m = Media.__new__(Media)
                m.kind = parts[0]
                if _KIND.match(m.kind) is None:
                    raise _Bad(f"invalid media type")
                port, _, count = parts[1].partition("/")
                m.port = _port(port)
                m.nports = 1
                if count:
                    if not count.isdigit() or not (1 <= int(count) <= 64):
                        raise _Bad(f"invalid port count")
                    m.nports = int(count)
                m.proto = parts[2]
                if _PROTO.match(m.proto) is None:
                    raise _Bad(f"invalid transport protocol")
                m.formats = parts[3:]
                m.payload_types = []
                if m.proto.upper() in _RTP_PROTOS:
                    for f in m.formats:
                        if not f.isdigit() or len(f) > 3 or int(f) > 127:
                            raise _Bad(f"invalid payload type {f[:20]!r}")
                        m.payload_types.append(int(f))
                m.connection = None
                m.addrtype = ""
                m.rtcp_port = 0
                m.rtcp_address = None
                m.rtcp_mux = False
                m.direction = ""
                m.rtpmap = {}
                m.fmtp = {}
                m.candidates = []
                m.ice_ufrag = m.ice_pwd = None
                m.attributes = []
                sd.media.append(m)
            elif t == "o":
                parts = v.split()
                if len(parts) != 6:
                    raise _Bad(f"expected 6 fields")
                if not parts[1].isdigit() or not parts[2].isdigit() or len(parts[1]) > 20 or len(parts[2]) > 20:
                    raise _Bad(f"session id and version must be numbers")
                if parts[3] != "IN" or parts[4] not in ("IP4", "IP6"):
                    raise _Bad(f"expected 'IN IP4|IP6'")
                sd.origin_user, sd.session_id, sd.session_version = parts[0], parts[1], parts[2]
                sd.origin_address = parts[5]
                have_o = True
            elif t == "s":
                sd.session_name = _text(v)
                have_s = True
            elif t == "c":
                addrtype, addr = _conn(v)
                if m is None:
                    sd.connection, sd.addrtype = addr, addrtype
                else:
                    m.connection, m.addrtype = addr, addrtype
            elif t == "t":
                parts = v.split()
                if len(parts) != 2 or not all(p.isdigit() and len(p) <= 20 for p in parts):
                    raise _Bad(f"expected '<start> <stop>'")
            elif t == "a":
                name, _, value = v.partition(":")
                if not name:
                    raise _Bad(f"empty attribute name")
                if m is None:
                    if name in DIRECTIONS:
                        sd.direction = name
                    elif name == "ice-ufrag":
                        sd.ice_ufrag = value
                    elif name == "ice-pwd":
                        sd.ice_pwd = value
                    continue
                m.attributes.append(v)
                if name in DIRECTIONS:
                    m.direction = name
                elif name == "rtpmap":
                    pt, _, enc = value.partition(" ")
                    if not pt.isdigit() or int(pt) > 127 or "/" not in enc:
                        raise _Bad(f"expected 'rtpmap:<pt> <encoding>/<rate>'")
                    ename, _, rate = enc.partition("/")
                    rate = rate.split("/")[0]
                    if not ename or not rate.isdigit() or not (0 < int(rate) <= 10000000):
                        raise _Bad(f"invalid rtpmap encoding or clock rate")
                    m.rtpmap[int(pt)] = enc.strip()
                elif name == "fmtp":
                    pt, _, params = value.partition(" ")
                    if pt.isdigit():
                        m.fmtp[int(pt)] = params.strip()
                elif name == "rtcp":
                    parts = value.split()
                    if not parts:
                        raise _Bad(f"a=rtcp without a port")
                    m.rtcp_port = _port(parts[0], 1)
                    if len(parts) >= 4:
                        m.rtcp_address = _check_addr(parts[1], parts[2], parts[3])
                elif name == "rtcp-mux":
                    m.rtcp_mux = True
                elif name == "candidate":
                    m.candidates.append(value)
                elif name == "ice-ufrag":
                    m.ice_ufrag = value
                elif name == "ice-pwd":
                    m.ice_pwd = value

        except _Bad as e:
            raise SdpError(f"line {n} ({t}=): {e.args[0]}") from None
    if not have_o:
        raise SdpError("missing o= line")
    if not have_s:
        raise SdpError("missing s= line")
    for idx, m in enumerate(sd.media):
        if m.connection is None:
            if sd.connection is None and m.port != 0:
                raise SdpError(f"media {idx} ({m.kind}): no connection address (c=)")
            m.connection, m.addrtype = sd.connection, sd.addrtype or ""
        if not m.direction:
            m.direction = sd.direction
        if m.rtcp_port == 0 and m.port != 0:
            m.rtcp_port = m.port if m.rtcp_mux else m.port + 1
        if m.ice_ufrag is None:
            m.ice_ufrag = sd.ice_ufrag
        if m.ice_pwd is None:
            m.ice_pwd = sd.ice_pwd
    return sd


def rewrite(bytes body, str address, list ports, bint drop_ice=True, direction=None) -> bytes:
    """A new body whose connection (and origin) address is ``address`` and whose media i uses
    ports[i] = (rtp, rtcp). Rejected streams (port 0) stay rejected. ``direction`` replaces
    every direction attribute; ``drop_ice`` removes ICE candidates and credentials."""
    cdef list lines
    cdef SessionDescription sd
    if _last_body is not None and body == _last_body:
        lines, sd = _last_lines, _last_sd  # parsed just before (read only here)
    else:
        lines = _lines(body)
        sd = _parse(lines)
    cdef int version = _ip_version(address)
    mi = -1
    if version == 0:
        raise SdpError(f"anchor address {address[:64]!r} is not an IP address")
    if not _unicast(address, version, False):
        raise SdpError(f"anchor address {address!r} is not a unicast address")
    addrtype = "IP6" if version == 6 else "IP4"
    if direction is not None and direction not in DIRECTIONS:
        raise SdpError(f"direction must be one of {', '.join(DIRECTIONS)}")
    if len(ports) < len(sd.media):
        raise SdpError(f"{len(sd.media)} media sections but {len(ports)} port pairs")
    for pair in ports[:len(sd.media)]:
        if len(pair) != 2 or not all(isinstance(p, int) and 0 < p <= 65535 for p in pair):
            raise SdpError(f"invalid port pair {pair!r}")
    out = []
    media_port = 0
    rtcp_port = 0
    had_rtcp = False

    def close_media():
        # a=rtcp when RTCP is not on the next port and the section had none to rewrite
        if mi >= 0 and media_port and not had_rtcp and not sd.media[mi].rtcp_mux \
                and rtcp_port != media_port + 1:
            out.append(f"a=rtcp:{rtcp_port}")
        if mi >= 0 and direction is not None:
            out.append(f"a={direction}")

    for line in lines:
        t = line[0]
        v = line[2:]
        if t == "m":
            close_media()
            mi += 1
            parts = v.split()
            port, _, count = parts[1].partition("/")
            if port == "0":
                media_port = 0
            else:
                media_port, rtcp_port = ports[mi]
                parts[1] = f"{media_port}/{count}" if count else str(media_port)
            had_rtcp = False
            out.append("m=" + " ".join(parts))
            continue
        if t == "o":
            parts = v.split()
            parts[4] = addrtype
            parts[5] = address
            out.append("o=" + " ".join(parts))
            continue
        if t == "c":
            out.append(f"c=IN {addrtype} {address}")
            continue
        if t == "a":
            name, _, value = v.partition(":")
            if drop_ice and name in _ICE_ATTRS:
                continue
            if direction is not None and name in DIRECTIONS:
                continue
            if name == "rtcp" and mi >= 0:
                had_rtcp = True
                if media_port:
                    rest = value.split()
                    out.append(f"a=rtcp:{rtcp_port} IN {addrtype} {address}" if len(rest) >= 4
                               else f"a=rtcp:{rtcp_port}")
                else:
                    out.append(line)
                continue
        out.append(line)
    close_media()
    return ("\r\n".join(out) + "\r\n").encode("latin-1")
