"""The hop through the node that holds a phone's flow (a cluster of nodes; RFC 5626's edge
proxy, reduced to what hpbx needs).

A phone behind NAT (or on a TCP/TLS connection) is reachable only through the address and
connection its REGISTER came in on, which belong to the node that took the REGISTER. When
another node rings it, that node sends its INVITE to the flow's node with a first Route
``<sip:NODE;lr;hpbx-flow=TRANSPORT~HOST~PORT~CONNECTION>`` (``flow_route``), and keeps that
Route on every request of the dialog. The flow's node forwards such a request statelessly
(RFC 3261 §16.11): it pops its Route, adds a Via whose branch is derived from the incoming one
(so retransmissions, the CANCEL and the non-2xx ACK take the same branch), and sends it on the
flow; responses to that Via lose it and go to the next Via. Only requests from the cluster's
own nodes are relayed (``is_peer``): for anyone else the Route is ignored, so the relay is
never an open one. The phone's own requests in the dialog go to the calling node's Contact
directly (a NAT lets outgoing packets through).
"""
from __future__ import annotations

import hashlib
import logging

log = logging.getLogger("hpbx.sip.edge")

FLOW_PARAM = "hpbx-flow"
BRANCH_MAGIC = "z9hG4bK-edge-"
_FLOW_MARK = f";{FLOW_PARAM}=".encode()


def _uri_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def flow_route(node_host: str, node_port: int, binding) -> str:
    token = f"{binding.transport}~{binding.source_host}~{binding.source_port}~{binding.connection_id}"
    return f"<sip:{_uri_host(node_host)}:{node_port};lr;{FLOW_PARAM}={token}>"


def parse_flow(route: str) -> tuple[str, str, int, int] | None:
    """(transport, host, port, connection id) of a flow Route, else None."""
    _, sep, rest = route.partition(f";{FLOW_PARAM}=")
    if not sep:
        return None
    token = rest.split(">", 1)[0].split(";", 1)[0]
    parts = token.split("~")
    if len(parts) != 4 or parts[0] not in ("udp", "tcp", "tls"):
        return None
    try:
        return parts[0], parts[1], int(parts[2]), int(parts[3])
    except ValueError:
        return None


def _split_values(value: bytes) -> list[bytes]:
    """A header's comma-separated values (commas inside <> or quotes kept)."""
    out, depth, quoted, start = [], 0, False, 0
    for i, c in enumerate(value):
        if c == 0x22:
            quoted = not quoted
        elif not quoted and c == 0x3C:
            depth += 1
        elif not quoted and c == 0x3E:
            depth -= 1
        elif c == 0x2C and not quoted and depth == 0:
            out.append(value[start:i].strip())
            start = i + 1
    out.append(value[start:].strip())
    return [v for v in out if v]


def _lines(data: bytes) -> tuple[list[bytes], bytes]:
    head, sep, body = data.partition(b"\r\n\r\n")
    head = head.replace(b"\r\n ", b" ").replace(b"\r\n\t", b" ")
    return head.split(b"\r\n"), body


def _name(line: bytes) -> bytes:
    return line.split(b":", 1)[0].strip().lower()


def _via_address(via: bytes) -> tuple[str, int] | None:
    """Where a response goes by this Via: received/rport when present, else its sent-by."""
    try:
        text = via.decode("ascii")
        _proto, rest = text.split(None, 1)
    except (UnicodeDecodeError, ValueError):
        return None
    sent_by, *params = rest.split(";")
    sent_by = sent_by.strip()
    if sent_by.startswith("["):
        host, _, port = sent_by[1:].partition("]")
        port = port.lstrip(":")
    else:
        host, _, port = sent_by.partition(":")
    values = dict(p.strip().partition("=")[::2] for p in params)
    host = values.get("received") or host
    port = values.get("rport") or port or "5060"
    try:
        return host, int(port)
    except ValueError:
        return None


class EdgeRelay:
    def __init__(self, transports, is_peer):
        self.transports = transports
        self.is_peer = is_peer  # (host) -> bool: is this address one of the cluster's nodes?
        self.stats = {"edge_requests": 0, "edge_responses": 0, "edge_refused": 0}

    @staticmethod
    def wants(data: bytes) -> bool:
        return _FLOW_MARK in data

    def request(self, data: bytes, msg, addr) -> bool:
        """Relay a request whose first Route is a flow of ours, sent by a peer node. True when
        the request was taken (relayed or dropped)."""
        routes = msg.header_values("Route")
        flow = parse_flow(routes[0]) if routes else None
        if flow is None:
            return False
        if not self.is_peer(addr[0]):
            self.stats["edge_refused"] += 1
            return False
        kind, host, port, conn_id = flow
        lines, body = _lines(data)
        out = [lines[0]]
        route_done = False
        for line in lines[1:]:
            name = _name(line)
            if not route_done and name == b"route":
                route_done = True
                values = _split_values(line.split(b":", 1)[1])[1:]
                if values:
                    out.append(b"Route: " + b", ".join(values))
                continue
            if name == b"max-forwards":
                try:
                    left = int(line.split(b":", 1)[1]) - 1
                except ValueError:
                    left = 69
                if left < 0:
                    return True  # looped: dropped (the sender's timer ends it)
                line = b"Max-Forwards: %d" % left
            out.append(line)
        local_host, local_port = self.transports.local_address(kind, host)
        branch = BRANCH_MAGIC + hashlib.blake2s(
            f"{msg.via_branch}|{msg.via_host}|{msg.via_port}".encode("utf-8", "surrogateescape"),
            digest_size=8).hexdigest()
        via = f"Via: SIP/2.0/{kind.upper()} {_uri_host(local_host)}:{local_port};branch={branch};rport"
        out.insert(1, via.encode())
        channel = self.transports.channel_for(kind, host, port, conn_id)
        if channel is None:
            return True
        self.stats["edge_requests"] += 1
        channel.send(b"\r\n".join(out) + b"\r\n\r\n" + body, (host, port))
        return True

    def response(self, data: bytes) -> None:
        """A response to one of our relayed requests: our Via off, on to the next one."""
        lines, body = _lines(data)
        out, next_via, removed = [], None, False
        for line in lines:
            if _name(line) in (b"via", b"v") and (not removed or next_via is None):
                values = _split_values(line.split(b":", 1)[1])
                if not removed:
                    removed = True
                    values = values[1:]
                    if not values:
                        continue
                    line = b"Via: " + b", ".join(values)
                if next_via is None:
                    next_via = values[0]
            out.append(line)
        target = _via_address(next_via) if next_via is not None else None
        if target is None:
            return
        channel = self.transports.channel_for("udp", target[0], target[1])
        if channel is not None:
            self.stats["edge_responses"] += 1
            channel.send(b"\r\n".join(out) + b"\r\n\r\n" + body, target)
