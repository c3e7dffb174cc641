"""Type stubs for hpbx._fast.sdp — SDP (RFC 4566) parse and rewrite for media anchoring."""
from typing import Final

DIRECTIONS: Final[tuple[str, ...]]  # ("sendrecv", "sendonly", "recvonly", "inactive")
MAX_BODY: Final[int]

class Media:
    kind: str  # "audio", "video", ...
    port: int  # 0 = rejected stream
    nports: int
    proto: str  # "RTP/AVP", ...
    formats: list[str]
    payload_types: list[int]  # for RTP profiles
    connection: str | None  # effective address: media-level c=, else session-level
    addrtype: str  # "IP4" / "IP6"
    rtcp_port: int  # a=rtcp, else port+1 (port itself with rtcp-mux), 0 for a rejected stream
    rtcp_address: str | None
    rtcp_mux: bool
    direction: str  # media attribute, else session attribute, else "sendrecv"
    rtpmap: dict[int, str]  # {0: "PCMU/8000"}
    fmtp: dict[int, str]
    candidates: list[str]
    ice_ufrag: str | None
    ice_pwd: str | None
    attributes: list[str]  # every a= value of the section
    @property
    def clock_rate(self) -> int: ...

class SessionDescription:
    version: int
    origin_user: str
    session_id: str
    session_version: str
    origin_address: str
    session_name: str
    connection: str | None
    addrtype: str | None
    direction: str
    media: list[Media]
    ice_ufrag: str | None
    ice_pwd: str | None

def parse(body: bytes) -> SessionDescription: ...
    # raises hpbx.errors.SdpError naming the line; c= must be a unicast or unspecified IP

def rewrite(
    body: bytes,
    address: str,
    ports: list[tuple[int, int]],
    drop_ice: bool = True,
    direction: str | None = None,
) -> bytes: ...
    # every c= (and o= address) -> address; media i -> ports[i] = (rtp, rtcp); port-0 streams
    # stay rejected; a=rtcp rewritten (added when rtcp != rtp+1); ICE lines dropped; direction
    # replaces every direction attribute. CRLF line endings. SdpError on garbage.
