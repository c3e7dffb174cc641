"""Type stubs for hpbx._fast.sipmsg — the compiled SIP message core.

This is a contract used by hpbx/sip/ (transport, transaction, registrar) and hpbx/pbx/ (B2BUA).
It may be extended; it must not be broken.
"""
from typing import Final

KEEPALIVE_PING: Final[bytes]  # b"\r\n\r\n" (RFC 5626 double-CRLF ping, answer with KEEPALIVE_PONG)
KEEPALIVE_PONG: Final[bytes]  # b"\r\n"
MAGIC_COOKIE: Final[str]  # "z9hG4bK"
MAX_MESSAGE: Final[int]  # largest message accepted (bytes); larger raises SipParseError(413)

class SipUri:
    scheme: str  # "sip", "sips", "tel" or another scheme (opaque)
    user: str | None  # as written (escapes kept)
    password: str | None
    host: str  # IPv6 without brackets
    port: int  # 0 when absent
    params: dict[str, str | None]  # uri-parameters, names lower-cased
    headers: dict[str, str]  # ?h=v
    opaque: str  # for non-sip schemes: everything after "scheme:"
    def __str__(self) -> str: ...  # canonical text (brackets around IPv6)
    @property
    def hostport(self) -> str: ...
    @property
    def aor(self) -> str: ...  # "sip:user@host" without port/params (lower-case host)

def parse_uri(text: str, request: bool = False) -> SipUri: ...
    # raises SipParseError(400); with request=True a scheme other than sip/sips/tel raises 416.
    # user, password, params and headers keep their %HH escapes as written (see unescape).

def unescape(text: str) -> str: ...  # %HH decoded once ("value%2541" -> "value%41")

class NameAddr:
    display: str | None  # display name, quotes removed, quoted-pairs unescaped
    uri: SipUri  # None only for the Contact "*"
    params: dict[str, str | None]  # header parameters (after '>' or after addr-spec), names lower-cased
    @property
    def tag(self) -> str | None: ...
    def __str__(self) -> str: ...

def parse_name_addr(text: str) -> NameAddr: ...

class Contact(NameAddr):
    star: bool  # "Contact: *"
    @property
    def expires(self) -> int | None: ...
    @property
    def q(self) -> float | None: ...

def parse_contacts(value: str) -> list[Contact]: ...  # one header value, comma-separated list

class Via:
    transport: str  # upper-case: "UDP", "TCP", "TLS", ...
    host: str  # IPv6 without brackets
    port: int  # 0 when absent
    params: dict[str, str | None]
    branch: str | None
    received: str | None  # IPv6 without brackets
    rport: int  # -1 absent, 0 present without value, else the value
    @property
    def sent_by(self) -> str: ...  # "host:port" (IPv6 in brackets)
    def __str__(self) -> str: ...

def parse_via(value: str) -> Via: ...  # one via-parm

class SipMessage:
    """A parsed message over its original buffer. Eager: start line + transaction keys;
    every other header is kept as offsets and decoded on first access."""

    is_request: bool
    method: str  # request method; for a response, "" (see cseq_method)
    ruri: str  # request-URI as written; "" for responses
    status: int  # 0 for requests
    reason: str  # reason phrase of a response
    call_id: str
    cseq: int
    cseq_method: str
    from_tag: str | None
    to_tag: str | None
    max_forwards: int  # -1 when absent
    content_length: int  # -1 when absent (stream framing then rejects; datagram: rest is body)
    body: bytes
    raw: bytes  # exactly the bytes of this message (trailing datagram junk excluded)
    # top Via
    via_transport: str
    via_host: str
    via_port: int
    via_branch: str | None
    via_received: str | None
    via_rport: int
    @property
    def request_uri(self) -> SipUri: ...
    @property
    def from_addr(self) -> NameAddr: ...
    @property
    def to_addr(self) -> NameAddr: ...
    @property
    def vias(self) -> list[Via]: ...  # every Via value, top first
    @property
    def contacts(self) -> list[Contact]: ...
    def header(self, name: str) -> str | None: ...  # first field value (compact or long name, any case)
    def header_values(self, name: str) -> list[str]: ...  # all values, comma-split outside quotes/<>
        # (list-valued headers: Via, Contact, Route, Require, Supported, Allow ...; single-valued,
        # credential and unknown headers come back whole, one item per line)
    def header_fields(self, name: str) -> list[str]: ...  # each header line's whole value, unsplit
    def has_header(self, name: str) -> bool: ...
    def headers(self) -> list[tuple[str, str]]: ...  # every (canonical name, value) in order
    def to_bytes(self) -> bytes: ...  # byte-for-byte the original for an unmodified message
    # what a server needs for its own verdicts (420, 415, 416 are not parser decisions)
    @property
    def require(self) -> list[str]: ...  # Require option tags
    @property
    def proxy_require(self) -> list[str]: ...
    @property
    def content_type(self) -> str: ...  # media type, lower-case, without parameters; "" if absent
    @property
    def header_count(self) -> int: ...

def parse(data: bytes, datagram: bool = True) -> SipMessage: ...
    # datagram=True: a missing Content-Length means "rest of the datagram"; extra octets after
    # Content-Length are ignored. Raises SipParseError(reason, status).

def canonical_name(name: str) -> str: ...  # "v" -> "Via", "call-id" -> "Call-ID"

def build_request(
    method: str,
    ruri: str,
    headers: list[tuple[str, str]],
    body: bytes = b"",
) -> bytes: ...  # adds Content-Length (replacing any given one)

def build_response(
    request: SipMessage,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    headers: list[tuple[str, str]] = ...,
    body: bytes = b"",
    top_via: str | None = None,
) -> bytes: ...
    # copies every Via (top_via, e.g. from set_via_received, replaces the first value) (top Via gets received/rport filled in by the caller beforehand, see
    # set_via_received), From, To (+ ;tag=to_tag when the To has none), Call-ID, CSeq; then
    # headers; then Content-Length.

def set_via_received(raw_via_value: str, received: str, rport: int) -> str: ...
    # RFC 3581: adds/replaces ;received= and fills ;rport=N when rport was requested.

REASONS: dict[int, str]  # default reason phrases of build_response

def new_branch() -> str: ...  # "z9hG4bK" + random token
def new_tag() -> str: ...
def new_call_id(host: str = "") -> str: ...

class Framer:
    """Stream framer for TCP/TLS: feed bytes, get whole messages."""

    def __init__(self, max_message: int = ...) -> None: ...
    def feed(self, data: bytes) -> list[bytes]: ...
        # returns complete messages in order; a CRLFCRLF keepalive ping between messages is
        # returned as KEEPALIVE_PING, a lone CRLF pong as KEEPALIVE_PONG. Raises SipParseError
        # (400 missing/bad Content-Length, 413 too large): the connection should then be closed.
    @property
    def buffered(self) -> int: ...
