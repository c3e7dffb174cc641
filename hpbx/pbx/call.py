"""One call through the B2BUA: the caller's leg (A), the branches rung for it (B), the fork
engine deciding between them, and the media session anchoring its audio.

Each B branch is a new UAC: its own Call-ID, tags and Via branch, a Contact of ours, headers
built from scratch. Nothing of one side's Via, Contact, Record-Route or Call-ID reaches the
other side; only the SDP body crosses, rewritten onto the relay (``anchor``).

The fork (``hpbx._fast.fork``) decides; this module carries its actions out:
RING sends INVITEs to every registered device of a user (or one to the trunk), PROVISIONAL
relays 180/183 (early-media SDP anchored), ANSWER bridges the winner and the fork follows with
CANCELs carrying ``Reason: SIP;cause=200;text="Call completed elsewhere"``, BYE hangs up a
late 2xx, FINAL answers the caller with the best response. Once answered, BYE from either
side ends both, re-INVITE/UPDATE/INFO are passed to the other side.
"""
from __future__ import annotations

import hashlib
import logging
import os
import time
from datetime import datetime, timezone

from hpbx._fast import fork as F
from hpbx._fast import sipmsg
from hpbx.errors import HpbxError, SdpError
from hpbx.fax import t38sdp
from hpbx.pbx import anchor, callerid, media_channel, moh, router, transfer
from hpbx.sip.auth import parse_digest
from hpbx.sip.dialog import Dialog, OkResender, cancel_with_reason, new_leg_id
from hpbx.sip.transaction import REASONS, Target

log = logging.getLogger("hpbx.pbx.call")

RINGING, ANSWERED, ENDED = "ringing", "answered", "ended"
ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, INFO, REFER"


def iso_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _uri_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _quote(display: str) -> str:
    return '"' + display.replace("\\", "\\\\").replace('"', '\\"') + '"'


class BLeg:
    """One INVITE branch towards a device or the trunk."""

    __slots__ = ("id", "call", "ring", "binding", "target", "ruri", "call_id", "tag", "cseq",
                 "headers", "tx", "dialog", "last", "cancel_reason", "auth_tried", "live", "answered",
                 "user", "route")

    def __init__(self, call: "Call", ring, binding, target: Target, ruri: str):
        self.id = new_leg_id()
        self.call = call
        self.ring = ring
        self.binding = binding
        self.target = target
        self.ruri = ruri
        self.call_id = sipmsg.new_call_id()
        self.tag = sipmsg.new_tag()
        self.cseq = 1
        self.headers: list = []
        self.tx = None
        self.dialog: Dialog | None = None
        self.last = None  # the last response that mattered (for the fork's actions)
        self.cancel_reason: str | None = None  # set: CANCEL wanted (sent at the first 1xx)
        self.auth_tried = False
        self.live = True  # INVITE transaction not finished yet
        self.answered = False
        self.user = ring.value if ring.kind == "user" else ""
        self.route: str | None = None  # through the node holding the device's flow (cluster)

    @property
    def label(self) -> str:
        return f"{self.ring.key}@{self.target.host}:{self.target.port}"


class Call:
    def __init__(self, service, tx, plan, caller: str, caller_user=None, from_trunk=None):
        self.service = service
        self.id = tx.msg.call_id  # the caller's Call-ID names the call in call.list / hangup
        self.a_tx = tx
        self.a_msg = tx.msg
        self.a_target = Target(tx.channel.kind, tx.addr[0], tx.addr[1], tx.channel.id)
        self.a_dialog: Dialog | None = None
        self.plan = plan
        self.tenant = plan.tenant
        self.caller = caller
        self.caller_user = caller_user
        self.from_trunk = from_trunk
        self.state = RINGING
        self.legs: dict[int, BLeg] = {}
        self.winner: BLeg | None = None
        self.rings = {}
        self.targets_tried: list[str] = []
        self.failures: dict[str, int] = {}  # user target key -> final status (forwarding rules)
        self.transfer = None  # a blind transfer under way (hpbx.pbx.transfer)
        self.links: list[str] = []  # calls joined with this one by attended transfer (hpbx.pbx.attended)
        self.fork = None
        self.timer = None
        self.deadline: float | None = None
        self.a_ok: OkResender | None = None  # our 2xx to the caller, re-sent until the ACK
        self.media = None  # MediaSession
        self.start_iso = iso_now()
        self.start_time = time.time()
        self.answer_iso = ""
        self.end_iso = ""
        self.end_reason = ""
        self.b_offer = b""
        self.b_ack_pending = False  # late offer: the callee's ACK waits for the caller's answer
        self.max_timer = None  # ends an answered trunk call at its maximum duration
        self.early_codec = None  # the caller has early media from hpbx (hpbx.pbx.moh: ring-back)
        self.moh = None  # music on hold in progress (hpbx.pbx.moh)
        a_host, a_port = service.transports.local_address(tx.channel.kind, tx.addr[0])
        transport = "" if tx.channel.kind == "udp" else f";transport={tx.channel.kind}"
        user = plan.dialled or "hpbx"
        self.a_contact = f"<sip:{user}@{_uri_host(a_host)}:{a_port}{transport}>"

    # ------------------------------------------------------------------ start
    def start(self) -> None:
        svc = self.service
        msg = self.a_msg
        body = msg.body
        if body:
            try:
                peer = anchor.peer(body)
            except SdpError as exc:
                self._reject(488, None, f"bad SDP: {exc}")
                return
            try:
                # a media channel handing its caller over (hpbx.pbx.media_channel) brings its session
                self.media = self.media or svc.media.allocate(self.id)
            except HpbxError as exc:
                log.warning("[%s] no media ports: %s", self.id, exc)
                self._reject(503, "No Media Ports", "no media ports")
                return
            try:
                svc.media.offer(self.id, peer.host, peer.port, rtcp_port=peer.rtcp_port,
                                rtcp_mux=peer.rtcp_mux)
                if peer.hold:
                    svc.media.set_hold(self.id, True)
            except HpbxError as exc:
                self._reject(488, None, f"unusable media address: {exc}")
                return
            self.b_offer = anchor.rewrite(body, self.media.address, self.media.port_b)  # IPv4 callees
        self._make_fork()
        self.a_tx.on_cancel = lambda tx: self.guarded(self._caller_cancel, tx)
        self.run(self.fork.start(self.now()))

    def _make_fork(self) -> None:
        """The fork of the plan's rows (native hpbx._fast.fork), its targets known by key."""
        rows = []
        for row in self.plan.rows:
            keys = []
            for ring in row.targets:
                self.rings[ring.key] = ring
                keys.append(ring.key)
            rows.append((float(row.duration), keys))
        self.fork = F.Fork(rows)

    def guarded(self, method, *args) -> None:
        """Run an event handler; a bug in it ends this call (ports and CDR included) instead of
        leaving it half-alive with its relay session leaked."""
        try:
            method(*args)
        except Exception:
            log.exception("[%s] call failed in %s", self.id, method.__name__)
            if self.state != ENDED:
                try:
                    self.hangup("internal error")
                except Exception:
                    log.exception("[%s] hangup after failure failed", self.id)
                    self._end("internal error")

    def now(self) -> float:
        return self.service.loop.time()

    # ------------------------------------------------------------------ fork actions
    def run(self, actions) -> None:
        for a in actions:
            kind = a.kind
            if kind == F.RING:
                self._ring(a.target)
            elif kind == F.PROVISIONAL:
                self._provisional(self.legs[a.branch], a.status)
            elif kind == F.ANSWER:
                self._answer(self.legs[a.branch])
            elif kind == F.CANCEL:
                self._cancel_leg(self.legs[a.branch], a.reason)
            elif kind == F.BYE:
                self._late_answer(self.legs[a.branch])
            elif kind == F.FINAL:
                self._final(a.status, self.legs.get(a.branch) if a.branch is not None else None)
        self._arm()

    def _arm(self) -> None:
        if self.fork is None or self.state == ENDED:
            return
        deadline = self.fork.next_deadline()
        if deadline == self.deadline:
            return
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.deadline = deadline
        if deadline is not None:
            self.timer = self.service.wheel.call_later(max(0.0, deadline - self.now()), self.guarded,
                                                       self._step)

    def _step(self) -> None:
        self.timer = None
        self.deadline = None
        if self.state == RINGING:
            self.run(self.fork.step(self.now()))

    def _ring(self, key) -> None:
        svc = self.service
        ring = self.rings[key]
        now = self.now()
        if key not in self.targets_tried:
            self.targets_tried.append(key)
        if ring.when and not router.forward_applies(ring.when, self.failures):
            self.run(self.fork.target_failed(key, 480, now))  # a forwarding rule that did not fire
            return
        if ring.kind == "user":
            user = ring.user
            name = user.username
            busy = user.flags.dnd or (user.max_calls and svc.active.get(name, 0) >= user.max_calls)
            if busy or (user.flags.busy_on_active_call and svc.active.get(name, 0) > 0):
                self.failures[key] = 486
                self.run(self.fork.target_failed(key, 486, now))
                return
            if user.flags.busy_while_ringing and svc.ringing.get(name, 0) > 0:
                self.failures[key] = 486
                self.run(self.fork.target_failed(key, 486, now))
                return
            bindings = [b for b in svc.registrar.lookup(name) if b.online][:svc.max_devices]
            if not bindings:
                self.failures[key] = 480
                self.run(self.fork.target_failed(key, 480, now))
                return
            legs = [BLeg(self, ring, b, svc.registrar.target(b), b.contact) for b in bindings]
            for leg in legs:
                leg.route = svc.registrar.relay_route(leg.binding)
        else:
            trunk = ring.trunk
            if trunk is None:
                self.run(self.fork.target_failed(key, 480, now))
                return
            toll = svc.toll
            if toll is not None and toll.admit(self.id, self.tenant, getattr(self.caller_user, "username", None),
                                               ring.value, (self.a_target.host, self.a_target.port)) is not None:
                self.run(self.fork.target_failed(key, 403, now))
                return
            target = Target(trunk.transport, trunk.host, trunk.port)
            ruri = f"sip:{ring.value}@{_uri_host(trunk.host)}:{trunk.port}"
            legs = [BLeg(self, ring, None, target, ruri)]
        # every branch of the target is known to the fork before any response can arrive
        for leg in legs:
            self.legs[leg.id] = leg
            self.fork.add_branch(leg.id, key)
        for leg in legs:
            if leg.user:
                svc.ringing[leg.user] = svc.ringing.get(leg.user, 0) + 1
            svc.legs[leg.call_id] = (self, leg)
            self._send_invite(leg)

    def _identity(self, leg: BLeg) -> tuple[str, str, list]:
        """(From display, From user, extra headers) presented on one branch."""
        plan = self.plan
        extra = []
        caller_user = self.caller_user
        if leg.ring.kind == "external":
            if caller_user is not None:
                # a user's call (own, or diverted by a plan): never the internal number
                ident = callerid.network_identity(
                    self.service.provisioning.directory.tenant(caller_user.tenant), caller_user)
                if leg.ring.reason:
                    if leg.ring.diverted_by:
                        extra.append(("Diversion", f"<sip:{leg.ring.diverted_by}@{self._trunk_domain(leg)}>"
                                                   f";reason={leg.ring.reason};counter=1"))
                elif plan.kind == "dialplan":  # not a transfer of an internal call: no internal number
                    extra.append(("Diversion", f"<sip:{plan.dialled}@{self._trunk_domain(leg)}>"
                                               ";reason=unconditional;counter=1"))
                if ident.asserted:
                    extra.append(("P-Asserted-Identity",
                                  f"<sip:{ident.asserted}@{self._trunk_domain(leg)}>"))
                if ident.withheld:
                    extra.append(("Privacy", "id"))
                    return callerid.ANONYMOUS_FROM[0], ident.from_user, extra
                return "", ident.from_user, extra
            # a diversion from a public number's plan: the original caller and who diverted
            number = self.caller or "anonymous"
            extra.append(("Diversion", f"<sip:{plan.dialled}@{self._trunk_domain(leg)}>"
                                       ";reason=unconditional;counter=1"))
            extra.append(("P-Asserted-Identity", f"<sip:{number}@{self._trunk_domain(leg)}>"))
            return "", number, extra
        if leg.ring.reason:  # a forwarding rule's target user: who diverted and why
            extra.append(("Diversion", f"<sip:{leg.ring.diverted_by}@{_uri_host(leg.target.host)}>"
                                       f";reason={leg.ring.reason};counter=1"))
        if caller_user is not None:
            u = caller_user
            if u.flags.show_internal_number_internally and u.internal_number:
                number = u.internal_number
            else:
                number = u.displayed_number or u.internal_number or u.username
            return u.details.full_name(), number, extra
        display = self.a_msg.from_addr.display or ""
        lookup = self.service.caller_name_lookup  # the called user's address books (FEATURES 16)
        if lookup is not None and leg.user and self.caller:
            display = lookup(self.tenant, leg.user, self.caller) or display
        return display, self.caller or "anonymous", extra

    @staticmethod
    def _trunk_domain(leg: BLeg) -> str:
        trunk = leg.ring.trunk
        if trunk is None:
            return leg.target.host
        return _uri_host(trunk.from_domain or trunk.host)

    def _send_invite(self, leg: BLeg, auth: tuple[str, str] | None = None, on_response=None) -> None:
        svc = self.service
        target = leg.target
        host, port = svc.transports.local_address(target.kind, target.host)
        display, from_user, extra = self._identity(leg)
        transport = "" if target.kind == "udp" else f";transport={target.kind}"
        contact = f"<sip:hpbx@{_uri_host(host)}:{port}{transport}>"
        if leg.ring.kind == "external":
            from_host = (callerid.ANONYMOUS_FROM[2] if ("Privacy", "id") in extra
                         else self._trunk_domain(leg))
            to_uri = f"<sip:{leg.ring.value}@{_uri_host(leg.ring.trunk.host)}>"
        else:
            from_host = _uri_host(host)
            to_uri = f"<sip:{leg.ring.value}@{_uri_host(host)}>"
        from_uri = f"<sip:{from_user}@{from_host}>"
        if display:
            from_uri = f"{_quote(display)} {from_uri}"
        mf = self.a_msg.max_forwards
        headers = [("Max-Forwards", str(max(1, (mf if mf > 0 else 70) - 1))),
                   ("From", f"{from_uri};tag={leg.tag}"), ("To", to_uri),
                   ("Call-ID", leg.call_id), ("CSeq", f"{leg.cseq} INVITE"),
                   ("Contact", contact), ("Allow", ALLOW), ("User-Agent", svc.user_agent)]
        headers += extra
        if leg.ring.kind == "user" and self.plan.alert_info:
            headers.append(("Alert-Info", self.plan.alert_info))
        if auth is not None:
            headers.append(auth)
        if leg.route is not None:
            headers.append(("Route", leg.route))
        body = self.b_offer if self.b_offer else self.a_msg.body
        if self.b_offer and self.media.address6 and ":" in target.host:
            body = anchor.rewrite(self.a_msg.body, self.media.address6, self.media.port_b)
        if body:
            headers.append(("Content-Type", "application/sdp"))
        if leg.dialog is None:
            leg.dialog = Dialog.uac(leg.call_id, leg.tag, from_uri, to_uri, leg.ruri, leg.cseq,
                                    target, contact)
            leg.dialog.pinned_route = leg.route
        else:
            leg.dialog.local_cseq = leg.cseq
        leg.headers = headers
        leg.tx = svc.transactions.send_request(
            "INVITE", leg.ruri, headers, target, on_response or (
                lambda tx, status, msg, leg=leg: self.guarded(self._b_response, leg, tx, status, msg)),
            body)

    # ------------------------------------------------------------------ branch responses
    def _b_response(self, leg: BLeg, tx, status: int, msg) -> None:
        if tx is not None and tx is not leg.tx:
            return  # the challenged INVITE's transaction: superseded by the authenticated one
        if status < 200:
            if leg.cancel_reason is not None:
                cancel_with_reason(leg.tx, leg.cancel_reason)
                return
            if status == 100 or self.state != RINGING:
                return
            if msg is not None and msg.to_tag:
                tagged = leg.dialog.remote_tag is None
                leg.dialog.update_from_response(msg)
                if tagged:  # an early dialog now exists, with its identifiers (BLF, Replaces)
                    self.service.dialog_changed(self)
            leg.last = msg
            self.run(self.fork.on_response(leg.id, status, self.now()))
            return
        if status < 300:
            if leg.answered:
                if not self.b_ack_pending:
                    leg.dialog.send_ack(self.service.transports, leg.cseq)  # our ACK was lost
                return
            leg.dialog.update_from_response(msg)
            leg.last = msg
            self._leg_done(leg)
            if self.fork is None or self.state == ENDED:
                self._late_answer(leg)
                return
            self.run(self.fork.on_response(leg.id, status, self.now()))
            return
        if status in (401, 407) and self._retry_with_auth(leg, status, msg):
            return
        if leg.user and status != 487:
            self.failures[leg.ring.key] = status
        leg.last = msg
        self._leg_done(leg)
        if self.state == RINGING:
            self.run(self.fork.on_response(leg.id, status, self.now()))

    def _leg_done(self, leg: BLeg) -> None:
        if not leg.live:
            return
        leg.live = False
        if leg.user:
            svc = self.service
            left = svc.ringing.get(leg.user, 0) - 1
            if left > 0:
                svc.ringing[leg.user] = left
            else:
                svc.ringing.pop(leg.user, None)
        if leg is not self.winner:
            self.service.legs.pop(leg.call_id, None)

    def _retry_with_auth(self, leg: BLeg, status: int, msg) -> bool:
        """Digest to the trunk (RFC 3261 §22.2): once per branch, when the trunk has credentials."""
        trunk = leg.ring.trunk
        if leg.auth_tried or trunk is None or not trunk.username or msg is None or self.state != RINGING:
            return False
        header = "WWW-Authenticate" if status == 401 else "Proxy-Authenticate"
        challenge = parse_digest(msg.header(header) or "")
        if challenge is None or "nonce" not in challenge:
            return False
        algorithm = challenge.get("algorithm", "MD5").upper()
        hfunc = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}.get(algorithm)
        if hfunc is None:
            return False
        realm = challenge.get("realm", "")
        nonce = challenge["nonce"]
        ha1 = hfunc(f"{trunk.username}:{realm}:{trunk.password}".encode()).hexdigest()
        ha2 = hfunc(f"INVITE:{leg.ruri}".encode()).hexdigest()
        value = (f'Digest username="{trunk.username}", realm="{realm}", nonce="{nonce}", '
                 f'uri="{leg.ruri}", algorithm={algorithm}')
        if "auth" in challenge.get("qop", "").split(","):
            cnonce = os.urandom(8).hex()
            response = hfunc(f"{ha1}:{nonce}:00000001:{cnonce}:auth:{ha2}".encode()).hexdigest()
            value += f', qop=auth, nc=00000001, cnonce="{cnonce}", response="{response}"'
        else:
            response = hfunc(f"{ha1}:{nonce}:{ha2}".encode()).hexdigest()
            value += f', response="{response}"'
        if "opaque" in challenge:
            value += f', opaque="{challenge["opaque"]}"'
        leg.auth_tried = True
        leg.cseq += 1
        self._send_invite(leg, ("Authorization" if status == 401 else "Proxy-Authorization", value))
        return True

    # ------------------------------------------------------------------ actions carried out
    def _anchor_answer(self, body: bytes) -> bytes:
        """The callee's SDP: tell the relay where leg b is, and rewrite it for the caller."""
        if not body or self.media is None:
            return body
        media = self.service.media
        try:
            peer = anchor.peer(body)
            media.answer(self.id, peer.host, peer.port, rtcp_port=peer.rtcp_port,
                         rtcp_mux=peer.rtcp_mux)
        except HpbxError as exc:
            log.info("[%s] callee SDP not usable for the relay: %s", self.id, exc)
            return b""
        return anchor.rewrite(body, self.media.address_for(self.a_target.host), self.media.port_a)

    def _provisional(self, leg: BLeg, status: int) -> None:
        msg = leg.last
        body = self._anchor_answer(msg.body) if msg is not None and msg.body else b""
        headers = [("Contact", self.a_contact), ("Allow", ALLOW)]
        if body:
            headers.append(("Content-Type", "application/sdp"))
        reason = msg.reason if msg is not None and msg.reason else None
        moh.ringback(self, body)  # a caller with hpbx's early media hears ring-back meanwhile
        self.a_tx.respond(status, reason, headers, body)

    def _answer(self, leg: BLeg) -> None:
        svc = self.service
        self.state = ANSWERED
        self.winner = leg
        leg.answered = True
        self.answer_iso = iso_now()
        msg = leg.last
        if self.a_msg.body or not msg.body:
            leg.dialog.send_ack(svc.transports, leg.cseq)
            body = self._anchor_answer(msg.body) if msg.body else b""
        else:
            # late offer (RFC 3261 §13.2.1): the callee offered in its 200; the caller answers
            # in its ACK, which the callee's ACK must carry — so that ACK waits for the caller's
            body = self._anchor_late_offer(msg.body)
            self.b_ack_pending = True
        self._answer_caller(leg, body)

    def _answer_caller(self, leg: BLeg, body: bytes) -> None:
        """The caller's 200 for the winning leg (also a pickup's, hpbx.pbx.pickup)."""
        svc = self.service
        moh.stop_ringback(self)
        headers = [("Contact", self.a_contact), ("Allow", ALLOW)]
        if body:
            headers.append(("Content-Type", "application/sdp"))
        data = self.a_tx.respond(200, None, headers, body)
        self.a_dialog = Dialog.uas(self.a_msg, self.a_tx.to_tag, self.a_target, self.a_contact)
        for user in self._users_in_call():
            svc.count_active(user, +1)
        svc.legs[self.id] = (self, "a")
        svc.legs[leg.call_id] = (self, leg)
        if svc.owners is not None:
            svc.owners.changed(self)
        self.a_ok = OkResender(svc.wheel, svc.loop, svc.transactions, self.a_tx, data, self._no_ack)
        svc.dialog_changed(self)
        log.info("[%s] answered by %s", self.id, leg.label)
        limit = svc.toll.max_call_secs(self.tenant, self.id) if svc.toll is not None and leg.ring.kind == "external" else 0
        if limit:  # toll fraud: a call through the trunk ends at the tenant's maximum
            self.max_timer = svc.wheel.call_later(limit, self.guarded, self.hangup, "maximum call duration")

    def _users_in_call(self) -> list[str]:
        users = []
        if self.caller_user is not None:
            users.append(self.caller_user.username)
        if self.winner is not None and self.winner.user and self.winner.user not in users:
            users.append(self.winner.user)
        return users

    def _no_ack(self) -> None:
        if self.state == ANSWERED:
            log.info("[%s] no ACK for our 200: hanging up", self.id)
            self.guarded(self.hangup, "no ACK from caller")

    def on_ack(self, msg) -> None:
        if msg.cseq != self.a_msg.cseq:
            return
        if self.a_ok is not None:
            self.a_ok.cancel()
            self.a_ok = None
        if self.b_ack_pending and self.state == ANSWERED:
            self.b_ack_pending = False
            body = msg.body
            extra = ()
            if body and self.media is not None:
                body = self._reanchor("a", body, towards_b=True)
                extra = (("Content-Type", "application/sdp"),)
            self.winner.dialog.send_ack(self.service.transports, self.winner.cseq, body, extra)

    def _anchor_late_offer(self, body: bytes) -> bytes:
        """The callee's offer in its 200 (the caller sent none): a relay session starts now."""
        media = self.service.media
        try:
            peer = anchor.peer(body)
            self.media = media.allocate(self.id)
            media.answer(self.id, peer.host, peer.port, rtcp_port=peer.rtcp_port,
                         rtcp_mux=peer.rtcp_mux)
        except HpbxError as exc:
            log.info("[%s] late offer not anchored: %s", self.id, exc)
            return body
        return anchor.rewrite(body, self.media.address_for(self.a_target.host), self.media.port_a)

    def _cancel_leg(self, leg: BLeg, reason: str) -> None:
        leg.cancel_reason = reason
        cancel_with_reason(leg.tx, reason)

    def _late_answer(self, leg: BLeg) -> None:
        """A 2xx after the call was decided: ACK it, then BYE (RFC 3261 §16.7 item 9 / FEATURES 3.2)."""
        svc = self.service
        if leg.dialog is None or leg.answered:
            return
        leg.dialog.update_from_response(leg.last)
        leg.dialog.send_ack(svc.transports, leg.cseq)
        self._send_bye(leg.dialog, None)
        svc.legs.pop(leg.call_id, None)

    def _final(self, status: int, leg: BLeg | None) -> None:
        if status != 487 and (media_channel.after_rows(self, status)
                              or media_channel.after_step(self, "announcement_after")):
            return  # Voice2Mail / the mailbox, or the slot's after-announcement answered the caller
        reason = None
        if leg is not None and leg.last is not None and leg.last.status == status:
            reason = leg.last.reason or None
        self.a_tx.respond(status, reason, [("Allow", ALLOW)] if status == 405 else ())
        self._end(self.end_reason or f"{status} {reason or REASONS.get(status, '')}".strip())

    def _reject(self, status: int, reason: str | None, why: str) -> None:
        self.a_tx.respond(status, reason)
        self._end(f"{status} {why}")

    def _caller_cancel(self, tx) -> None:
        if self.state != RINGING:
            return
        self.end_reason = "caller cancelled"  # the fork's FINAL 487 keeps this reason
        if self.fork is not None:
            self.run(self.fork.cancel(self.now()))
        self.a_tx.respond(487)
        self._end("caller cancelled")

    # ------------------------------------------------------------------ in-dialog requests
    def in_dialog(self, side, tx) -> None:
        """A request inside the established call from side "a" or the winning BLeg."""
        msg = tx.msg
        method = msg.method
        if self.state != ANSWERED:
            tx.respond(481 if self.state == ENDED else 491)
            return
        mine = self.a_dialog if side == "a" else self.winner.dialog
        if mine is None or not mine.accept_remote_cseq(msg.cseq):
            tx.respond(500, "CSeq Out of Order")
            return
        other = self.winner.dialog if side == "a" else self.a_dialog
        if method == "REFER":
            transfer.handle_refer(self, side, tx)
            return
        if method == "BYE":
            tx.respond(200)
            if transfer.transferor_left(self, side):
                return  # a blind transferor may leave after its 202: the call waits for the target
            self._send_bye(other, None)
            self._end("caller hung up" if side == "a" else "callee hung up")
            return
        body = msg.body
        ctype = msg.header("Content-Type")
        if body and method in ("INVITE", "UPDATE") and self.media is not None:
            body = moh.offer(self, side, msg.body, self._reanchor(side, body, towards_b=side == "a"))
        if msg.contacts:
            mine.remote_target = str(msg.contacts[0].uri)
        headers = other.headers(method)
        if ctype and body:
            headers.append(("Content-Type", ctype))
        for name in ("Event", "Info-Package"):
            value = msg.header(name)
            if value is not None:
                headers.append((name, value))
        cseq = other.local_cseq
        svc = self.service
        svc.transactions.send_request(
            method, other.remote_target, headers, other.target,
            lambda ctx, status, resp: self._forwarded_response(tx, side, other, cseq, status, resp),
            body)

    def _reanchor(self, side, body: bytes, towards_b: bool) -> bytes:
        """New SDP from one side: its new address on its relay leg, hold, relatch; rewritten
        for the other side (the relay port facing it)."""
        media = self.service.media
        leg = "a" if side == "a" else "b"
        try:
            t38 = t38sdp.reanchor(media, self.id, leg, body, *self._facing(towards_b))  # issue 15
            if t38 is not None:
                return t38
            peer = anchor.peer(body)
            media.set_peer(self.id, leg, peer.host, peer.port, rtcp_port=peer.rtcp_port,
                           rtcp_mux=peer.rtcp_mux)
            media.relatch(self.id, leg)
            media.set_hold(self.id, peer.hold)
            for observe in self.service.hold_observers:
                observe(self, side, peer.hold)
        except HpbxError as exc:
            log.info("[%s] re-offer SDP not usable: %s", self.id, exc)
            return body
        address, port = self._facing(towards_b)
        return anchor.rewrite(body, address, port)

    def _facing(self, towards_b: bool) -> tuple[str, int]:
        """The relay address and port facing the side a body is sent to."""
        port = self.media.port_b if towards_b else self.media.port_a
        facing = self.winner.target.host if towards_b and self.winner else self.a_target.host
        return self.media.address_for(facing), port

    def _forwarded_response(self, stx, side, other: Dialog, cseq: int, status: int, resp) -> None:
        if status < 200:
            return
        method = stx.msg.method
        if method == "INVITE" and 200 <= status < 300 and resp is not None:
            other.update_from_response(resp)
            other.send_ack(self.service.transports, cseq)
        body = b""
        headers = []
        if resp is not None:
            if resp.body:
                body = resp.body
                if method in ("INVITE", "UPDATE") and self.media is not None and status < 300:
                    back = "b" if side == "a" else "a"
                    body = moh.answer(self, side, resp.body, self._reanchor(back, body, towards_b=back == "a"))
                ctype = resp.header("Content-Type")
                if ctype:
                    headers.append(("Content-Type", ctype))
        if method in ("INVITE", "UPDATE") and status < 300:
            headers.append(("Contact", (self.a_dialog if side == "a" else self.winner.dialog).contact))
        stx.respond(status, resp.reason if resp is not None else None, headers, body)
        if status in (408, 481) and self.state == ANSWERED:
            # the other side is gone (RFC 5057): end the call on both sides
            self.hangup(f"{status} on in-dialog {method}")

    # ------------------------------------------------------------------ ending
    def _send_bye(self, dialog: Dialog | None, reason: str | None) -> None:
        if dialog is None:
            return
        headers = dialog.headers("BYE")
        if reason:
            headers.append(("Reason", reason))
        self.service.transactions.send_request("BYE", dialog.remote_target, headers, dialog.target,
                                               None)

    def hangup(self, why: str) -> None:
        """End the call from here (admin, media timeout, missing ACK): BYE or CANCEL everyone."""
        if self.state == ENDED:
            return
        if self.state == ANSWERED:
            self._send_bye(self.a_dialog, None)
            self._send_bye(self.winner.dialog, None)
        else:
            self.end_reason = why
            if self.fork is not None and self.fork.state == F.RINGING:
                self.run(self.fork.cancel(self.now()))
            self.a_tx.respond(480 if "timeout" not in why else 408)
        self._end(why)

    def _end(self, why: str) -> None:
        if self.state == ENDED:
            return
        svc = self.service
        was_answered = self.state == ANSWERED
        self.state = ENDED
        if self.max_timer is not None:
            self.max_timer.cancel()
            self.max_timer = None
        self.end_iso = iso_now()
        self.end_reason = why
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.a_ok is not None:
            self.a_ok.cancel()
        if was_answered:
            for user in self._users_in_call():
                svc.count_active(user, -1)
        for leg in self.legs.values():
            if leg.live and not leg.answered and leg.cancel_reason is None:
                self._cancel_leg(leg, "")
            svc.legs.pop(leg.call_id, None)
        svc.legs.pop(self.id, None)
        if self.a_dialog is not None:  # a caller seat that changed hands (hpbx.pbx.seat)
            svc.legs.pop(self.a_dialog.call_id, None)
        rtp = ""
        if self.media is not None:
            final = svc.media.delete(self.id)
            if final:
                rtp = f" (rtp packets a={final['a']['packets']} b={final['b']['packets']})"
        svc.call_ended(self)
        log.info("[%s] ended: %s%s", self.id, why, rtp)

    # ------------------------------------------------------------------ views
    def answered_by(self) -> str:
        leg = self.winner
        if leg is None:
            return ""
        return leg.ring.value

    def as_dict(self) -> dict:
        d = {
            "call_id": self.id, "tenant": self.tenant, "caller": self.caller,
            "called": self.plan.dialled, "state": self.state, "slot": self.plan.slot,
            "trunk": self.from_trunk.name if self.from_trunk is not None else "",
            "targets_tried": list(self.targets_tried), "answered_by": self.answered_by(),
            "started_at": self.start_time, "start": self.start_iso, "answer": self.answer_iso,
            "ringing": [leg.label for leg in self.legs.values() if leg.live and not leg.answered],
        }
        if self.media is not None:
            try:
                d["media"] = self.service.media.stats(self.id)
            except HpbxError:
                d["media"] = None
        return d

    def cdr(self) -> dict:
        plan = self.plan
        return {"tenant": self.tenant, "call_id": self.id, "caller": self.caller,
                "called": plan.dialled, "slot": plan.slot, "switch": plan.switch,
                "targets_tried": list(self.targets_tried), "answered_by": self.answered_by(),
                "start": self.start_iso, "answer": self.answer_iso, "end": self.end_iso,
                "end_reason": self.end_reason, "linked_call": ",".join(self.links)}
