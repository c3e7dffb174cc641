"""The core of the SIP server: every received message passes here once.

Responses go to their client transaction (stray ones are dropped). Requests are checked in the
order of RFC 3261 §8.2 (parse, Max-Forwards, URI scheme, Require), matched to a server
transaction (retransmissions absorbed), then answered here (OPTIONS, CANCEL) or handed to the
registrar or to ``request_handlers[method](tx)``: the B2BUA registers INVITE, BYE, UPDATE, INFO,
... there. ACK for a 2xx (no transaction) goes to ``request_handlers["ACK"](msg, channel, addr)``.
A message the parser refuses is answered with the parser's status and reason when a response
can be addressed (Via, From, To, Call-ID and CSeq found), otherwise dropped.
"""
from __future__ import annotations

import logging

from hpbx._fast import sipmsg
from hpbx.errors import SipParseError
from hpbx.sip.edge import BRANCH_MAGIC
from hpbx.sip.transaction import (
    REASONS, State, build_response, reply_address, server_key,
)

log = logging.getLogger("hpbx.sip.dispatcher")

URI_SCHEMES = frozenset(("sip", "sips", "tel"))
# extensions this server implements (Require tags it accepts)
SUPPORTED = ("path", "outbound")

_COMPACT = {b"v": b"via", b"f": b"from", b"t": b"to", b"i": b"call-id"}


def _salvage_headers(data: bytes) -> dict[bytes, list[bytes]] | None:
    """The headers a response copies, read leniently from a message the parser refused.
    None when it is no request or has no Via to address a response to."""
    head = data.split(b"\r\n\r\n", 1)[0]
    lines = head.replace(b"\r\n ", b" ").replace(b"\r\n\t", b" ").split(b"\r\n")
    start = lines[0]
    if start.startswith(b"SIP/") or b" " not in start:
        return None  # a response, or garbage
    found: dict[bytes, list[bytes]] = {b"__method__": [start.split(b" ", 1)[0]]}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        name = name.strip().lower()
        name = _COMPACT.get(name, name)
        if name in (b"via", b"from", b"to", b"call-id", b"cseq"):
            found.setdefault(name, []).append(value.strip())
    if b"via" not in found:
        return None
    return found


def _printable(text: str, limit: int = 120) -> str:
    return "".join(c if 32 <= ord(c) < 127 else "?" for c in text)[:limit]


class Dispatcher:
    def __init__(self, transactions, registrar, user_agent: str = "hpbx"):
        self.transactions = transactions
        self.registrar = registrar
        self.user_agent = user_agent
        self.request_handlers: dict[str, object] = {}
        self.edge = None  # cluster: the EdgeRelay for other nodes' requests to our flows
        self.stats = {"rx": 0, "rx_bad": 0, "stray_responses": 0}

    def allow(self) -> str:
        methods = ["OPTIONS", "REGISTER"]
        for method in self.request_handlers:
            if method not in methods:
                methods.append(method)
        if "INVITE" in self.request_handlers and "CANCEL" not in methods:
            methods.append("CANCEL")
        return ", ".join(methods)

    # ---- entry point (the transports' sink)
    def on_message(self, data: bytes, channel, addr) -> None:
        self.stats["rx"] += 1
        try:
            msg = sipmsg.parse(data, not channel.reliable)
        except SipParseError as exc:
            self.stats["rx_bad"] += 1
            self._reject(data, exc, channel, addr)
            return
        try:
            edge = self.edge
            if edge is not None:
                if msg.is_request:
                    if edge.wants(data) and edge.request(data, msg, addr):
                        return
                elif (msg.via_branch or "").startswith(BRANCH_MAGIC):
                    edge.response(data)
                    return
            if msg.is_request:
                self._request(msg, channel, addr)
            elif not self.transactions.match_response(msg):
                self.stats["stray_responses"] += 1
        except SipParseError as exc:
            # a header decoded lazily turned out malformed
            self.stats["rx_bad"] += 1
            if msg.is_request and msg.method != "ACK":
                self._reply_stateless(msg, channel, addr, exc.status, _printable(exc.reason))
        except Exception:
            log.exception("[%s] failed to handle %s", getattr(msg, "call_id", "?"),
                          msg.method or msg.status)

    def _request(self, msg, channel, addr) -> None:
        method = msg.method
        layer = self.transactions
        if method == "ACK":
            tx = layer.server.get(server_key(msg))
            if tx is not None and tx.state in (State.COMPLETED, State.CONFIRMED):
                tx.retransmitted(msg)
                return
            handler = self.request_handlers.get("ACK")
            if handler is not None:
                handler(msg, channel, addr)
            return
        refusal = self._refusal(msg, method)
        if refusal is None and method == "REGISTER" and not msg.has_header("Authorization"):
            # RFC 3261 §8.2.7: the challenge of an unauthenticated request is answered
            # statelessly; no transaction is kept for it (a retransmission is challenged again)
            self.registrar.challenge(msg, channel, addr)
            return
        tx = layer.match_request(msg, channel, addr)
        if tx is None:
            return  # a retransmission, absorbed
        if refusal is not None:
            tx.respond(*refusal)
            return
        if method == "REGISTER":
            self.registrar.handle(tx)
        elif method == "OPTIONS":
            tx.respond(200, None, [("Allow", self.allow()), ("Accept", "application/sdp"),
                                   ("Supported", ", ".join(SUPPORTED)),
                                   ("Server", self.user_agent)])
        elif method == "CANCEL":
            self._cancel(tx)
        else:
            handler = self.request_handlers.get(method)
            if handler is not None:
                handler(tx)
            else:
                tx.respond(405, None, [("Allow", self.allow())])

    @staticmethod
    def _refusal(msg, method: str):
        """(status, reason, headers) when the request is refused before its method is looked
        at (RFC 3261 §8.2: missing headers, Max-Forwards, URI scheme, Require), else None."""
        if not msg.call_id or not msg.has_header("From") or not msg.has_header("To"):
            # RFC 3261 §8.1.1: every request carries these; without them no dialog can be matched
            missing = [name for name, ok in (("Call-ID", msg.call_id), ("From", msg.has_header("From")),
                                             ("To", msg.has_header("To"))) if not ok]
            return 400, f"Missing {', '.join(missing)} header", ()
        if msg.max_forwards == 0:
            return 483, None, ()
        # the parser has checked the Request-URI's syntax; its scheme is what precedes ":"
        if msg.ruri.partition(":")[0].lower() not in URI_SCHEMES:
            return 416, None, ()
        if method != "CANCEL":
            required = msg.header_values("Require")
            if required:
                unsupported = [tag.strip() for tag in required if tag.strip().lower() not in SUPPORTED]
                if unsupported:
                    return 420, None, [("Unsupported", ", ".join(unsupported))]
        return None

    def _cancel(self, tx) -> None:
        invite = self.transactions.find_invite(tx.msg)
        if invite is None:
            tx.respond(481)
            return
        tx.respond(200)
        if invite.state is State.PROCEEDING:
            if invite.on_cancel is not None:
                invite.on_cancel(invite)
            else:
                invite.respond(487)

    # ---- refused messages
    def _reject(self, data: bytes, exc: SipParseError, channel, addr) -> None:
        found = _salvage_headers(data)
        if found is None or found[b"__method__"][0] == b"ACK":
            log.debug("dropped unparseable message from %s: %s", addr, exc.reason)
            return
        try:
            vias = b",".join(found[b"via"]).decode("utf-8", "replace").split(",")
            reason = _printable(exc.reason) or REASONS.get(exc.status, "Bad Request")
            try:
                top = sipmsg.set_via_received(vias[0].strip(), addr[0], addr[1])
            except SipParseError:
                # a Via the parser cannot read (often the reason for the 400): still say where
                # the request came from
                top = f"{vias[0].strip()};received={addr[0]}"
            lines = [f"SIP/2.0 {exc.status} {reason}", "Via: " + top]
            lines += ["Via: " + v.strip() for v in vias[1:]]
            # copy what exists; a request missing From/To/Call-ID still learns why it failed
            for name, label in ((b"from", "From"), (b"to", "To"), (b"call-id", "Call-ID"), (b"cseq", "CSeq")):
                if name in found:
                    lines.append(f"{label}: " + found[name][0].decode("utf-8", "replace"))
            lines += ["Content-Length: 0", "", ""]
        except (IndexError, ValueError):
            return
        call_id = found[b"call-id"][0].decode("utf-8", "replace") if b"call-id" in found else "-"
        log.info("[%s] refused from %s:%s: %d %s", _printable(call_id), addr[0], addr[1],
                 exc.status, exc.reason)
        channel.send("\r\n".join(lines).encode("utf-8", "replace"), addr)

    def _reply_stateless(self, msg, channel, addr, status: int, reason: str) -> None:
        tx = self.transactions.server.get(server_key(msg))
        if tx is not None:
            tx.respond(status, reason)
            return
        channel.send(build_response(msg, status, reason, addr), reply_address(msg, channel, addr))
