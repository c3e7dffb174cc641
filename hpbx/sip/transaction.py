"""RFC 3261 §17 transactions: INVITE and non-INVITE, server and client (with RFC 6026 fixes).

Timers come from T1/T2/T4 and live on the one ``TimerWheel``; a transaction is a small slotted
object, not a task. Server transactions absorb retransmitted requests (re-sending the last
response), send 100 Trying for INVITE, retransmit non-2xx INVITE finals over UDP until the ACK
(which they absorb), and answer CANCEL. Client transactions retransmit over UDP, time out into a
local 408, and ACK non-2xx INVITE finals themselves.

API used by the registrar and the B2BUA:
  * server side: a request handler receives a ``ServerTransaction`` and calls
    ``tx.respond(status, reason=None, headers=(), body=b"", to_tag=None)``;
    for INVITE, ``tx.on_cancel`` is called when a matching CANCEL arrives (default: 487).
  * client side: ``layer.send_request(method, ruri, headers, target, on_response, body=b"")``
    returns a ``ClientTransaction``; ``on_response(tx, status, msg)`` is called for every
    response (``msg`` None for a local 408 timeout or 503 transport failure);
    ``tx.cancel()`` sends a CANCEL for a pending INVITE.
"""
from __future__ import annotations

import collections
import enum
import logging
from dataclasses import dataclass

from hpbx._fast import sipmsg

log = logging.getLogger("hpbx.sip.transaction")

# One reason-phrase table for the parser's build_response and ours; re-exported for callers.
REASONS = sipmsg.REASONS


class State(enum.Enum):
    TRYING = "trying"
    CALLING = "calling"
    PROCEEDING = "proceeding"
    COMPLETED = "completed"
    CONFIRMED = "confirmed"
    ACCEPTED = "accepted"
    TERMINATED = "terminated"


@dataclass(frozen=True, slots=True)
class Target:
    """Where a request goes: transport kind, address, and the stream connection to reuse."""

    kind: str
    host: str
    port: int
    conn_id: int = 0


def build_response(msg, status: int, reason: str | None, source_addr, to_tag: str | None = None,
                   headers=(), body: bytes = b"") -> bytes:
    """A response to ``msg``: Vias (the top one with received/rport for ``source_addr``), From,
    To (+tag, never on a 100), Call-ID, CSeq, ``headers``, Content-Length and ``body``."""
    return sipmsg.build_response(msg, status, reason or None, to_tag=(to_tag or None) if status != 100 else None,
                                 headers=headers, body=body, source=source_addr)


def build_request(method: str, ruri: str, headers, body: bytes = b"") -> bytes:
    lines = [f"{method} {ruri} SIP/2.0"]
    for name, value in headers:
        if name.lower() not in ("content-length", "l"):
            lines.append(f"{name}: {value}")
    lines.append(f"Content-Length: {len(body)}")
    lines.append("")
    lines.append("")
    data = "\r\n".join(lines).encode("utf-8", "surrogateescape")
    return data + body if body else data


def reply_address(msg, channel, addr):
    """RFC 3261 §18.2.2 + RFC 3581: the source address with the source port when rport was
    asked for (or over a connection), else the Via port. A Via maddr is never used."""
    if channel.reliable or msg.via_rport >= 0:
        return addr
    return (addr[0], msg.via_port or 5060) + tuple(addr[2:])


def server_key(msg) -> tuple:
    """RFC 3261 §17.2.3 matching key; ACK and CANCEL match their INVITE by their own method
    mapping (ACK -> INVITE; CANCEL keeps its own key, looked up with method INVITE separately)."""
    method = msg.method
    if method == "ACK":
        method = "INVITE"
    branch = msg.via_branch
    if branch and branch.startswith("z9hG4bK"):
        return (branch, msg.via_host, msg.via_port, method)
    # RFC 2543 peers: no magic cookie, match on the dialog-ish identifiers instead
    return ("2543", msg.call_id, msg.cseq, msg.from_tag, msg.via_host, msg.via_port, method)


class _Timed:
    """What server and client transactions share: their timers and how they end."""

    __slots__ = ()

    def _cancel_timers(self) -> None:
        for timer in self.timers:
            timer.cancel()
        self.timers.clear()

    def _end(self, table: dict, key) -> None:
        self.state = State.TERMINATED
        self._cancel_timers()
        if table.get(key) is self:
            del table[key]


class ServerTransaction(_Timed):
    __slots__ = ("layer", "key", "msg", "channel", "addr", "reply_addr", "invite", "state", "last",
                 "timers", "interval", "to_tag", "on_cancel", "on_ack_timeout", "user")

    def __init__(self, layer, key, msg, channel, addr):
        self.layer = layer
        self.key = key
        self.msg = msg
        self.channel = channel
        self.addr = addr  # where the request came from
        self.reply_addr = reply_address(msg, channel, addr)
        self.invite = msg.method == "INVITE"
        self.state = State.PROCEEDING if self.invite else State.TRYING
        self.last: bytes | None = None
        self.timers: list = []
        self.interval = 0.0
        self.to_tag: str | None = None
        self.on_cancel = None
        self.on_ack_timeout = None
        self.user = None  # free slot for the transaction user (B2BUA leg, ...)

    @property
    def call_id(self) -> str:
        return self.msg.call_id if self.msg is not None else ""

    def respond(self, status: int, reason: str | None = None, headers=(), body: bytes = b"",
                to_tag: str | None = None) -> bytes | None:
        if self.state in (State.COMPLETED, State.CONFIRMED, State.TERMINATED):
            return None  # a final response was already sent
        if self.state is State.ACCEPTED and not (200 <= status < 300):
            return None
        if to_tag is None and status > 100:
            if self.to_tag is None:
                self.to_tag = sipmsg.new_tag()
            to_tag = self.to_tag
        data = build_response(self.msg, status, reason, self.addr, to_tag, headers, body)
        self.send(data)
        if status < 200:
            if self.state is State.TRYING:
                self.state = State.PROCEEDING
            return data
        layer = self.layer
        if self.invite:
            if status < 300:
                # RFC 6026 Accepted: absorb INVITE retransmissions, let the TU resend the 2xx
                self.state = State.ACCEPTED
                self.last = None
                self.timers.append(layer.wheel.call_later(layer.t1 * 64, self._terminate))
            else:
                self.state = State.COMPLETED
                if not self.channel.reliable:
                    self.interval = layer.t1
                    self.timers.append(layer.wheel.call_later(self.interval, self._timer_g))
                self.timers.append(layer.wheel.call_later(layer.t1 * 64, self._timer_h))
        else:
            self.state = State.COMPLETED
            # only the response bytes are needed to answer retransmissions (timer J keeps the
            # transaction 64*T1 over UDP): let the parsed request go now
            self.msg = None
            if self.channel.reliable:
                self._terminate()
            else:
                layer.complete(self, data)
        return data

    def send(self, data: bytes) -> None:
        self.last = data
        self.channel.send(data, self.reply_addr)

    def retransmitted(self, msg) -> None:
        """The same request again (or the ACK of our non-2xx final)."""
        if msg.method == "ACK":
            if self.state is State.COMPLETED:
                self.state = State.CONFIRMED
                self._cancel_timers()
                delay = 0 if self.channel.reliable else self.layer.t4
                self.timers.append(self.layer.wheel.call_later(delay, self._terminate))
            return
        if self.last is not None and self.state is not State.ACCEPTED:
            self.channel.send(self.last, self.reply_addr)

    def _timer_g(self) -> None:
        if self.state is not State.COMPLETED:
            return
        self.channel.send(self.last, self.reply_addr)
        self.interval = min(self.interval * 2, self.layer.t2)
        self.timers.append(self.layer.wheel.call_later(self.interval, self._timer_g))

    def _timer_h(self) -> None:
        if self.state is State.COMPLETED:
            log.info("[%s] no ACK for %s final response (timer H)", self.msg.call_id, self.msg.method)
            if self.on_ack_timeout is not None:
                self.on_ack_timeout(self)
        self._terminate()

    def _terminate(self) -> None:
        self._end(self.layer.server, self.key)


class ClientTransaction(_Timed):
    __slots__ = ("layer", "method", "ruri", "headers", "body", "data", "target", "channel",
                 "branch", "invite", "state", "on_response", "timers", "interval", "cancel_pending",
                 "call_id", "cseq", "via", "user")

    def __init__(self, layer, method, ruri, headers, body, target, channel, on_response):
        self.layer = layer
        self.method = method
        self.ruri = ruri
        self.headers = headers
        self.body = body
        self.target = target
        self.channel = channel
        self.on_response = on_response
        self.invite = method == "INVITE"
        self.state = State.CALLING if self.invite else State.TRYING
        self.timers: list = []
        self.interval = layer.t1
        self.cancel_pending = False
        self.user = None
        self.branch = ""
        self.via = ""
        self.data = b""
        self.call_id = ""
        self.cseq = 0

    @property
    def addr(self):
        return (self.target.host, self.target.port)

    def start(self) -> None:
        layer = self.layer
        self.channel.send(self.data, self.addr)
        if not self.channel.reliable:
            self.timers.append(layer.wheel.call_later(self.interval, self._retransmit))
        self.timers.append(layer.wheel.call_later(layer.t1 * 64, self._timeout))

    def _retransmit(self) -> None:
        if self.state not in (State.CALLING, State.TRYING, State.PROCEEDING):
            return
        if self.invite and self.state is State.PROCEEDING:
            return  # timer A stops with the first provisional
        self.channel.send(self.data, self.addr)
        if self.state is State.PROCEEDING:
            self.interval = self.layer.t2  # timer E in Proceeding fires every T2
        elif self.invite:
            self.interval = self.interval * 2  # timer A doubles without a cap
        else:
            self.interval = min(self.interval * 2, self.layer.t2)
        self.timers.append(self.layer.wheel.call_later(self.interval, self._retransmit))

    def _timeout(self) -> None:
        if self.state in (State.CALLING, State.TRYING, State.PROCEEDING):
            log.info("[%s] %s to %s:%s timed out", self.call_id, self.method, self.target.host,
                     self.target.port)
            self._terminate()
            self._deliver(408, None)
        elif self.state is State.ACCEPTED:
            self._terminate()

    def _deliver(self, status: int, msg) -> None:
        if self.on_response is not None:
            try:
                self.on_response(self, status, msg)
            except Exception:
                log.exception("[%s] response handler failed", self.call_id)

    def received(self, msg) -> None:
        status = msg.status
        state = self.state
        if status < 200:
            if state in (State.CALLING, State.TRYING):
                self.state = State.PROCEEDING
                if self.cancel_pending:
                    self._send_cancel()
            if state in (State.CALLING, State.TRYING, State.PROCEEDING):
                self._deliver(status, msg)
            return
        if self.invite:
            if status < 300:
                if state in (State.CALLING, State.PROCEEDING):
                    # RFC 6026 Accepted: further 2xx (other forks, retransmissions) go to the TU
                    self.state = State.ACCEPTED
                    self._cancel_timers()
                    self.timers.append(self.layer.wheel.call_later(self.layer.t1 * 64, self._timeout))
                    self._deliver(status, msg)
                elif state is State.ACCEPTED:
                    self._deliver(status, msg)
                return
            if state in (State.CALLING, State.PROCEEDING):
                self.state = State.COMPLETED
                self._cancel_timers()
                self._send_ack(msg)
                delay = 0 if self.channel.reliable else 32.0
                self.timers.append(self.layer.wheel.call_later(delay, self._terminate))
                self._deliver(status, msg)
            elif state is State.COMPLETED:
                self._send_ack(msg)  # our ACK was lost: the final came again
            return
        if state in (State.TRYING, State.PROCEEDING):
            self.state = State.COMPLETED
            self._cancel_timers()
            delay = 0 if self.channel.reliable else self.layer.t4
            self.timers.append(self.layer.wheel.call_later(delay, self._terminate))
            self._deliver(status, msg)

    def _send_ack(self, response) -> None:
        """RFC 3261 §17.1.1.3: ACK for a non-2xx final, inside the transaction."""
        to = response.header("To") or ""
        headers = [("Via", self.via)]
        for name, value in self.headers:
            lname = name.lower()
            if lname in ("from", "call-id", "route", "max-forwards"):
                headers.append((name, value))
        headers.append(("To", to))
        headers.append(("CSeq", f"{self.cseq} ACK"))
        self.channel.send(build_request("ACK", self.ruri, headers), self.addr)

    def cancel(self) -> None:
        """Cancel a pending INVITE (RFC 3261 §9.1): now if a provisional came, else once one does."""
        if not self.invite or self.state not in (State.CALLING, State.PROCEEDING):
            return
        if self.state is State.CALLING:
            self.cancel_pending = True
        else:
            self._send_cancel()

    def _send_cancel(self) -> None:
        self.cancel_pending = False
        headers = []
        for name, value in self.headers:
            lname = name.lower()
            if lname in ("from", "to", "call-id", "route", "max-forwards"):
                headers.append((name, value))
        headers.append(("CSeq", f"{self.cseq} CANCEL"))
        self.layer.send_request("CANCEL", self.ruri, headers, self.target, None,
                                branch=self.branch, via=self.via)

    def _terminate(self) -> None:
        self._end(self.layer.client, (self.branch, self.method))


class TransactionLayer:
    """The tables of live transactions and the timer values they share."""

    def __init__(self, wheel, transports, t1: float, t2: float, t4: float, user_agent: str = "hpbx"):
        self.wheel = wheel
        self.transports = transports
        self.user_agent = user_agent
        self.set_timers(t1, t2, t4)
        self.server: dict[tuple, ServerTransaction] = {}
        self.client: dict[tuple, ClientTransaction] = {}
        # Completed non-INVITE server transactions over UDP (timer J, 64*T1): only what answers
        # a retransmission is kept: key -> (response, reply address, UDP channel index), plain
        # values the collector stops tracking, since a registrar holds 64*T1 x REGISTER rate
        # of them. All have the same duration, so they end in the order they completed, from
        # one queue and one timer.
        self.completed: dict[tuple, tuple[bytes, tuple, int]] = {}
        self._timer_j: collections.deque = collections.deque()
        self._timer_j_handle = None

    def set_timers(self, t1: float, t2: float, t4: float) -> None:
        self.t1 = t1
        self.t2 = t2
        self.t4 = t4

    # ---- server side
    def complete(self, tx: ServerTransaction, data: bytes) -> None:
        """Timer J starts: the transaction object goes, its response stays for 64*T1."""
        key = tx.key
        if self.server.get(key) is tx:
            del self.server[key]
        self.completed[key] = (data, tx.reply_addr, tx.channel.index)
        self._timer_j.append((self.wheel.now() + self.t1 * 64, key))
        if self._timer_j_handle is None:
            self._timer_j_handle = self.wheel.call_later(self.t1 * 64, self._end_completed)

    def _end_completed(self) -> None:
        queue = self._timer_j
        completed = self.completed
        now = self.wheel.now()
        while queue and queue[0][0] <= now:
            completed.pop(queue.popleft()[1], None)
        # the next check when the oldest one is due (a shorter T1 after a reload is caught
        # a little late, never early)
        self._timer_j_handle = (self.wheel.call_later(max(queue[0][0] - now, 0.0), self._end_completed)
                                if queue else None)

    def close(self) -> None:
        self._timer_j.clear()
        self.completed.clear()
        if self._timer_j_handle is not None:
            self._timer_j_handle.cancel()
            self._timer_j_handle = None

    def match_request(self, msg, channel, addr) -> ServerTransaction | None:
        """Absorb a retransmission and return None, or create and return a new transaction.

        ACK for a non-2xx final is absorbed too; an ACK without a transaction (2xx ACK) returns
        None with ``msg`` untouched, and the caller passes it to the dialog layer.
        """
        key = server_key(msg)
        tx = self.server.get(key)
        if tx is not None:
            if msg.method == "ACK" and tx.state in (State.ACCEPTED, State.TERMINATED):
                return None  # ACK for a 2xx: a transaction of its own (dialog layer)
            tx.retransmitted(msg)
            return None
        done = self.completed.get(key)
        if done is not None:
            self.transports.udp[done[2]].send(done[0], done[1])
            return None
        if msg.method == "ACK":
            return None
        tx = ServerTransaction(self, key, msg, channel, addr)
        self.server[key] = tx
        if tx.invite:
            tx.respond(100)
        return tx

    def ack_is_absorbed(self, msg) -> bool:
        tx = self.server.get(server_key(msg))
        return tx is not None and tx.state in (State.COMPLETED, State.CONFIRMED)

    def find_invite(self, cancel) -> ServerTransaction | None:
        """The INVITE server transaction a CANCEL refers to (same branch and sent-by)."""
        key = server_key(cancel)
        key = key[:-1] + ("INVITE",)
        return self.server.get(key)

    # ---- client side
    def send_request(self, method: str, ruri: str, headers, target: Target, on_response,
                     body: bytes = b"", *, branch: str | None = None,
                     via: str | None = None) -> ClientTransaction | None:
        """Send a request in a new client transaction. ``headers`` excludes Via and
        Content-Length; Max-Forwards is added when absent."""
        channel = self.transports.channel_for(target.kind, target.host, target.port, target.conn_id)
        if channel is None:
            if on_response is not None:
                on_response(None, 503, None)
            return None
        tx = ClientTransaction(self, method, ruri, list(headers), body, target, channel, on_response)
        if via is None:
            branch = branch or sipmsg.new_branch()
            host, port = self.transports.local_address(target.kind, target.host)
            if ":" in host:
                host = f"[{host}]"
            via = f"SIP/2.0/{target.kind.upper()} {host}:{port};branch={branch};rport"
        tx.branch = branch
        tx.via = via
        call_id = ""
        cseq = 0
        has_mf = False
        for name, value in tx.headers:
            lname = name.lower()
            if lname in ("call-id", "i"):
                call_id = value
            elif lname == "cseq":
                cseq = int(value.split()[0])
            elif lname == "max-forwards":
                has_mf = True
        tx.call_id = call_id
        tx.cseq = cseq
        wire_headers = [("Via", via)]
        if not has_mf:
            wire_headers.append(("Max-Forwards", "70"))
        wire_headers.extend(tx.headers)
        tx.data = build_request(method, ruri, wire_headers, body)
        if not has_mf:
            tx.headers.insert(0, ("Max-Forwards", "70"))
        self.client[(branch, method)] = tx
        tx.start()
        return tx

    def match_response(self, msg) -> bool:
        tx = self.client.get((msg.via_branch, msg.cseq_method))
        if tx is None:
            return False
        tx.received(msg)
        return True

    def stats(self) -> dict:
        return {"server_transactions": len(self.server), "client_transactions": len(self.client),
                "completed_transactions": len(self.completed)}
