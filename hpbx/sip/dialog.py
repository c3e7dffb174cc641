"""SIP dialogs (RFC 3261 §12): the state one side of a B2BUA keeps to speak inside a call.

A ``Dialog`` holds Call-ID, local and remote tags and URIs, the remote target (the peer's
Contact), the route set and both CSeq counters, and builds in-dialog requests from them.

Where requests go: a dialog sends to a fixed transport ``Target`` — the address the peer's
signalling came from (caller) or the one its INVITE was sent to (a registered device's flow or
a trunk) — not to a fresh resolution of its Contact. Phones behind NAT are only reachable that
way, and a trunk's Contact names hosts we should not look up. Route headers are still written
from the route set so that loose routers on the path keep working.

Also here: the 2xx ACK (a request outside any transaction, RFC 3261 §13.2.2.4) and the CANCEL
of a client INVITE with a ``Reason`` header (RFC 3326), which the transaction layer's own
``cancel()`` has no room for.
"""
from __future__ import annotations

import itertools
import random

from hpbx._fast import sipmsg
from hpbx.sip.transaction import State, Target, build_request


class Dialog:
    __slots__ = ("call_id", "local_tag", "remote_tag", "local_uri", "remote_uri", "remote_target",
                 "route_set", "local_cseq", "remote_cseq", "target", "contact", "pinned_route")

    def __init__(self, call_id: str, local_tag: str, remote_tag: str | None, local_uri: str,
                 remote_uri: str, remote_target: str, route_set: list[str], target: Target,
                 contact: str, local_cseq: int = 0, remote_cseq: int = -1):
        self.call_id = call_id
        self.local_tag = local_tag
        self.remote_tag = remote_tag
        self.local_uri = local_uri  # name-addr without tag, e.g. "<sip:100@pbx>"
        self.remote_uri = remote_uri
        self.remote_target = remote_target
        self.route_set = route_set
        self.local_cseq = local_cseq or random.randint(1, 1 << 20)
        self.remote_cseq = remote_cseq
        self.target = target  # where our in-dialog requests are sent
        self.contact = contact  # our Contact header value
        # a Route sent first on every request whatever the route set (the hop through the
        # node holding the peer's flow, hpbx.sip.edge)
        self.pinned_route: str | None = None

    # ---- construction
    @classmethod
    def uas(cls, msg, local_tag: str, target: Target, contact: str) -> "Dialog":
        """The dialog a received INVITE creates once we answer it (we are the UAS)."""
        remote = msg.from_addr
        local = msg.to_addr
        contacts = msg.contacts
        remote_target = str(contacts[0].uri) if contacts else str(remote.uri)
        routes = [v for v in msg.header_values("Record-Route")]
        return cls(msg.call_id, local_tag, msg.from_tag, _bare(local), _bare(remote), remote_target,
                   routes, target, contact, remote_cseq=msg.cseq)

    @classmethod
    def uac(cls, call_id: str, local_tag: str, local_uri: str, remote_uri: str, ruri: str,
            cseq: int, target: Target, contact: str) -> "Dialog":
        """The (not yet established) dialog of an INVITE we send; ``update_from_response``
        fills remote tag, target and route set."""
        return cls(call_id, local_tag, None, local_uri, remote_uri, ruri, [], target, contact,
                   local_cseq=cseq)

    def update_from_response(self, msg) -> None:
        """A 1xx with a tag or the 2xx of our INVITE: remote tag, target and (reversed) route set."""
        if msg.to_tag:
            self.remote_tag = msg.to_tag
        contacts = msg.contacts
        if contacts:
            self.remote_target = str(contacts[0].uri)
        routes = msg.header_values("Record-Route")
        if routes:
            self.route_set = list(reversed(routes))

    # ---- in-dialog requests
    def accept_remote_cseq(self, cseq: int) -> bool:
        """RFC 3261 §12.2.2: a lower CSeq than seen before is out of order (answer 500)."""
        if self.remote_cseq >= 0 and cseq < self.remote_cseq:
            return False
        self.remote_cseq = cseq
        return True

    def next_cseq(self) -> int:
        self.local_cseq += 1
        return self.local_cseq

    def headers(self, method: str, cseq: int | None = None) -> list[tuple[str, str]]:
        """From/To/Call-ID/CSeq/Route (+Contact for target-refreshing requests)."""
        if cseq is None:
            cseq = self.next_cseq()
        out = [("From", f"{self.local_uri};tag={self.local_tag}"),
               ("To", self.remote_uri + (f";tag={self.remote_tag}" if self.remote_tag else "")),
               ("Call-ID", self.call_id), ("CSeq", f"{cseq} {method}")]
        if self.pinned_route is not None:
            out.append(("Route", self.pinned_route))
        for route in self.route_set:
            out.append(("Route", route))
        if method in ("INVITE", "UPDATE", "SUBSCRIBE", "NOTIFY", "REFER"):
            out.append(("Contact", self.contact))
        return out

    def send_ack(self, transports, cseq: int, body: bytes = b"", extra=()) -> None:
        """ACK for a 2xx of our INVITE: a new branch, sent straight to the dialog's target."""
        target = self.target
        channel = transports.channel_for(target.kind, target.host, target.port, target.conn_id)
        if channel is None:
            return
        host, port = transports.local_address(target.kind, target.host)
        if ":" in host:
            host = f"[{host}]"
        headers = [("Via", f"SIP/2.0/{target.kind.upper()} {host}:{port};branch={sipmsg.new_branch()};rport"),
                   ("Max-Forwards", "70")]
        headers += self.headers("ACK", cseq)
        headers += list(extra)
        channel.send(build_request("ACK", self.remote_target, headers, body), (target.host, target.port))


def _bare(addr) -> str:
    """A name-addr without its tag (display name and URI kept)."""
    text = f"<{addr.uri}>"
    if addr.display:
        display = addr.display.replace("\\", "\\\\").replace('"', '\\"')
        text = f'"{display}" {text}'
    return text


def cancel_with_reason(tx, reason: str) -> bool:
    """CANCEL a client INVITE transaction with a Reason header (RFC 3326).

    Returns False when no CANCEL can be sent yet (no provisional response received: RFC 3261
    §9.1 says wait for one) or any more (final response received); the caller then sends it
    when the first provisional arrives, or not at all.
    """
    if tx is None or not tx.invite or tx.state is not State.PROCEEDING:
        return False
    headers = [(name, value) for name, value in tx.headers
               if name.lower() in ("from", "to", "call-id", "route", "max-forwards")]
    headers.append(("CSeq", f"{tx.cseq} CANCEL"))
    if reason:
        headers.append(("Reason", reason))
    tx.layer.send_request("CANCEL", tx.ruri, headers, tx.target, None, branch=tx.branch, via=tx.via)
    return True


_ids = itertools.count(1)


def new_leg_id() -> int:
    """A small process-unique integer naming one leg (the fork engine's branch key)."""
    return next(_ids)


class OkResender:
    """Our 2xx to an INVITE, re-sent over UDP at T1, 2·T1, … capped at T2 until the ACK
    (RFC 3261 §13.3.1.4); ``on_timeout()`` runs once 64·T1 passed without one. Over a reliable
    transport (or with no data) nothing is re-sent. ``cancel()`` on the ACK or when the call ends.
    One class for the B2BUA's caller leg, media channels and picking / call-moving devices."""

    __slots__ = ("_wheel", "_loop", "_tx", "_data", "_t2", "_deadline", "_interval", "_timer",
                 "_on_timeout")

    def __init__(self, wheel, loop, transactions, tx, data: bytes | None, on_timeout) -> None:
        self._timer = None
        if data is None or tx.channel.reliable:
            return
        self._wheel, self._loop, self._tx, self._data = wheel, loop, tx, data
        self._t2 = transactions.t2
        self._deadline = loop.time() + 64 * transactions.t1
        self._interval = transactions.t1
        self._on_timeout = on_timeout
        self._timer = wheel.call_later(self._interval, self._again)

    @property
    def pending(self) -> bool:
        return self._timer is not None

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _again(self) -> None:
        self._timer = None
        if self._loop.time() >= self._deadline:
            self._on_timeout()
            return
        self._tx.channel.send(self._data, self._tx.reply_addr)
        self._interval = min(self._interval * 2, self._t2)
        self._timer = self._wheel.call_later(self._interval, self._again)
