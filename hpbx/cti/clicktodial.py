"""Click-to-dial (FEATURES 15, issue 14): hpbx calls the user's phone, then the destination.

1. hpbx INVITEs the user's registered device (the most recent online binding, or the one whose
   address the client names) with an SDP offer of its own: the relay's leg ``a`` port, PCMA,
   PCMU and telephone-event. The From shows the destination, so the phone's display says whom
   it is about to call; ``auto_answer`` adds ``Call-Info: answer-after=0`` and
   ``Alert-Info: info=alert-autoanswer`` (Snom, Yealink, Grandstream, baresip honour one of them).
2. When the phone answers, the 200 is ACKed at once (no 200 left waiting, whatever the
   destination does), leg ``a`` is ended at a media endpoint playing ringback in the phone's
   codec, and the destination is called as if the user had dialled it: an ordinary B2BUA
   ``Call`` (routing, forwarding, trunk, toll limits, the user's displayed number on external
   calls, CDR, BLF and CTI events), whose "caller" is the phone's dialog instead of a received
   INVITE. The destination is offered only the codec the phone chose, so the relay needs no
   transcoding.
3. The destination answers: ringback stops and the relay bridges the two legs. If it fails
   (busy, no answer, rejected) the phone gets a BYE and the client a ``dial_failed`` event with
   the status. A BYE from the phone while the destination rings cancels the destination.

The call's id (``call_id`` in events, ``call.list``, CDR) is the Call-ID of the phone's leg.
"""
from __future__ import annotations

import logging
from datetime import datetime, timezone

from hpbx._fast import sdp as fast_sdp
from hpbx._fast import sipmsg
from hpbx.admin.protocol import INVALID_PARAMS, RpcError
from hpbx.errors import HpbxError
from hpbx.pbx import anchor, router
from hpbx.pbx.call import ALLOW, ANSWERED, ENDED, RINGING, Call, _quote, _uri_host
from hpbx.sip.dialog import Dialog, cancel_with_reason
from hpbx.sip.transaction import build_request

log = logging.getLogger("hpbx.cti.clicktodial")

PHONE_RING_SECS = 30.0  # the user's phone must answer within this
_CODECS = {0: "PCMU", 8: "PCMA"}


class _PhoneSide:
    """Stands where a Call keeps the caller's server transaction: the answers the Call would
    send the caller become actions on the phone's dialog (only finals matter)."""

    def __init__(self, click: "ClickToDial", msg, kind: str, addr: tuple, conn_id):
        self.click = click
        self.msg = msg
        self.channel = _Channel(kind, conn_id)
        self.addr = addr
        self.reply_addr = addr
        self.to_tag = click.tag
        self.on_cancel = None

    def respond(self, status: int, reason=None, headers=(), body: bytes = b""):
        if status >= 300:
            self.click.destination_failed(status, reason)
        return None


class _Channel:
    __slots__ = ("kind", "id", "reliable")

    def __init__(self, kind: str, conn_id):
        self.kind = kind
        self.id = conn_id
        self.reliable = True  # nothing is sent through it: no 200 to re-send


class ClickCall(Call):
    """The destination half: a Call whose caller leg is the phone hpbx already connected."""

    early_caller_dialog = True  # calls.on_in_dialog: the phone's BYE counts before an answer

    def __init__(self, click: "ClickToDial", tx, plan, caller: str, user):
        super().__init__(click.svc, tx, plan, caller, user)
        self.click = click
        self.a_dialog = click.dialog

    def start(self) -> None:
        self.media = self.click.media
        self.b_offer = anchor.rewrite(self.a_msg.body, self.media.address, self.media.port_b)
        self._make_fork()
        self.run(self.fork.start(self.now()))

    def _answer_caller(self, leg, body: bytes) -> None:
        try:
            self.service.media.bridge(self.id, "a")  # ringback off, the relay joins the legs
        except HpbxError as exc:
            log.info("[%s] bridge: %s", self.id, exc)
        super()._answer_caller(leg, body)
        self.a_dialog = self.click.dialog

    def in_dialog(self, side, tx) -> None:
        if self.state == RINGING and side == "a":
            if tx.msg.method == "BYE":
                tx.respond(200)
                self.click.phone_gone = True
                self.hangup("caller hung up")
            else:
                tx.respond(491)
            return
        super().in_dialog(side, tx)


class ClickToDial:
    def __init__(self, cti, session, user, destination: str, binding, auto_answer: bool):
        self.cti = cti
        self.svc = cti.calls
        self.session = session
        self.user = user
        self.destination = destination
        self.binding = binding
        self.auto_answer = auto_answer
        self.call_id = sipmsg.new_call_id()
        self.tag = sipmsg.new_tag()
        self.media = None
        self.dialog: Dialog | None = None
        self.tx = None
        self.timer = None
        self.acked: bytes | None = None
        self.call: ClickCall | None = None
        self.phone_gone = False
        self.done = False
        self.plan = None

    # ---- 1. the user's phone
    def start(self) -> dict:
        svc = self.svc
        self.plan = self._plan()
        self.media = svc.media.allocate(self.call_id)
        b = self.binding
        target = svc.registrar.target(b)
        host, port = svc.transports.local_address(target.kind, target.host)
        transport = "" if target.kind == "udp" else f";transport={target.kind}"
        contact = f"<sip:hpbx@{_uri_host(host)}:{port}{transport}>"
        to_uri = f"<sip:{self.user.username}@{_uri_host(host)}>"
        from_uri = f"{_quote(self.destination)} <sip:{self.destination}@{_uri_host(host)}>"
        self.dialog = Dialog.uac(self.call_id, self.tag, from_uri, to_uri, b.contact, 1, target, contact)
        route = svc.registrar.relay_route(b)
        self.dialog.pinned_route = route
        address = self.media.address_for(target.host)
        ip = "IP6" if ":" in address else "IP4"
        offer = (f"v=0\r\no=hpbx {id(self) & 0xffffff} 1 IN {ip} {address}\r\ns=hpbx\r\n"
                 f"c=IN {ip} {address}\r\nt=0 0\r\nm=audio {self.media.port_a} RTP/AVP 8 0 101\r\n"
                 "a=rtpmap:8 PCMA/8000\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
                 "a=fmtp:101 0-15\r\na=ptime:20\r\na=sendrecv\r\n").encode()
        headers = [("Max-Forwards", "70"), ("From", f"{from_uri};tag={self.tag}"), ("To", to_uri),
                   ("Call-ID", self.call_id), ("CSeq", "1 INVITE"), ("Contact", contact), ("Allow", ALLOW),
                   ("User-Agent", svc.user_agent), ("Subject", f"Click-to-dial {self.destination}")]
        if self.auto_answer:
            headers += [("Call-Info", f"<sip:{_uri_host(host)}>;answer-after=0"),
                        ("Alert-Info", f"<http://{_uri_host(host)}>;info=alert-autoanswer")]
        if route is not None:
            headers.append(("Route", route))
        headers.append(("Content-Type", "application/sdp"))
        self.offer = offer
        self.tx = svc.transactions.send_request("INVITE", b.contact, headers, target, self._phone_response, offer)
        self.timer = svc.wheel.call_later(PHONE_RING_SECS, self._phone_timeout)
        self.cti.clicks[self.call_id] = self
        self._event("dialing", status=0)
        return {"call_id": self.call_id, "destination": self.destination, "device": b.contact}

    def _plan(self):
        """What the user's dialling of the destination would do; refused now, before any ring."""
        from hpbx.pbx.calls import _external_plan
        svc = self.svc
        plan = router.route_internal(svc.provisioning.directory, self.user, self.destination,
                                     datetime.now(timezone.utc))
        if plan.kind == "external":
            plan = _external_plan(plan)
            if svc.toll is not None:
                refusal = svc.toll.admit(f"ctd-{self.call_id}", plan.tenant, self.user.username,
                                         plan.external, ("127.0.0.1", 0))
                svc.toll.release(f"ctd-{self.call_id}")
                if refusal is not None:
                    raise RpcError(INVALID_PARAMS, f"destination: {refusal.reason}",
                                   {"field": "destination", "reason": refusal.reason})
        if plan.kind == "reject" or plan.status or not plan.rows or \
                plan.kind not in ("dialplan", "internal", "external"):
            why = plan.reason or (f"number usage {plan.kind} not available" if plan.rows else "no target")
            raise RpcError(INVALID_PARAMS, f"destination: {self.destination} cannot be called: {why}",
                           {"field": "destination", "reason": why})
        return plan

    def _phone_timeout(self) -> None:
        self.timer = None
        if self.acked is None and not self.done:
            cancel_with_reason(self.tx, "")
            self._fail(408, "your phone did not answer")

    def _phone_response(self, tx, status: int, msg) -> None:
        try:
            self._phone_response_(status, msg)
        except Exception:
            log.exception("[%s] click-to-dial failed", self.call_id)
            self._fail(500, "internal error")

    def _phone_response_(self, status: int, msg) -> None:
        svc = self.svc
        if status < 200:
            if msg is not None and msg.to_tag:
                self.dialog.update_from_response(msg)
            return
        if status >= 300:
            self._fail(status, f"your phone answered {status}")
            return
        if self.acked is not None:  # our ACK was lost: the 200 came again
            self.dialog.send_ack(svc.transports, 1)
            return
        if self.done:  # answered after we gave up: ACK, then BYE
            self.dialog.update_from_response(msg)
            self.dialog.send_ack(svc.transports, 1)
            self._bye_phone()
            return
        self.dialog.update_from_response(msg)
        self.dialog.send_ack(svc.transports, 1)
        self.acked = msg.body or b""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        try:
            peer = anchor.peer(msg.body)
            pt = _chosen_pt(msg.body)
        except HpbxError as exc:
            self._fail(488, f"your phone's SDP is not usable: {exc}")
            return
        svc.media.offer(self.call_id, peer.host, peer.port, rtcp_port=peer.rtcp_port, rtcp_mux=peer.rtcp_mux)
        svc.media.terminate(self.call_id, "a", codec=_CODECS[pt], pt=pt)
        svc.media.tone(self.call_id, "a", "ringback")
        self._event("phone_answered", status=200)
        self._call_destination(msg.body, pt)

    # ---- 2. the destination
    def _call_destination(self, phone_sdp: bytes, pt: int) -> None:
        svc = self.svc
        b = self.binding
        target = svc.registrar.target(b)
        # what the Call reads of "the caller's INVITE": the phone's answer, cut to its codec
        body = _only_codec(phone_sdp, pt)
        text = build_request("INVITE", f"sip:{self.destination}@{_uri_host(target.host)}", [
            ("Via", f"SIP/2.0/{target.kind.upper()} {_uri_host(target.host)}:{target.port};branch={sipmsg.new_branch()}"),
            ("Max-Forwards", "70"), ("From", f"<sip:{self.user.username}@{_uri_host(target.host)}>;tag={self.tag}"),
            ("To", f"<sip:{self.destination}@{_uri_host(target.host)}>"), ("Call-ID", self.call_id),
            ("CSeq", "1 INVITE"), ("Contact", f"<{b.contact}>"), ("Content-Type", "application/sdp")], body)
        msg = sipmsg.parse(text)
        side = _PhoneSide(self, msg, target.kind, (target.host, target.port), target.conn_id)
        caller = self.user.internal_number or self.user.username
        call = ClickCall(self, side, self.plan, caller, self.user)
        self.call = call
        svc.calls[call.id] = call
        svc.legs[call.id] = (call, "a")
        svc.stats["calls_started"] += 1
        if svc.owners is not None:
            svc.owners.started(call)
        call.guarded(call.start)

    def destination_failed(self, status: int, reason) -> None:
        """The destination's final failure (the Call answers its "caller" with it)."""
        why = f"{status} {reason or ''}".strip()
        if not self.phone_gone:
            self._bye_phone()
        self.done = True
        self.cti.clicks.pop(self.call_id, None)
        self._event("dial_failed", status=status, reason=why)

    # ---- endings
    def _fail(self, status: int, why: str) -> None:
        if self.done:
            return
        self.done = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.acked is not None:
            self._bye_phone()
        if self.call is None:
            self.svc.media.delete(self.call_id)
        self.cti.clicks.pop(self.call_id, None)
        self._event("dial_failed", status=status, reason=why)

    def _bye_phone(self) -> None:
        d = self.dialog
        self.svc.transactions.send_request("BYE", d.remote_target, d.headers("BYE"), d.target, None)

    def cancel(self) -> None:
        """The client hung up before the phone answered."""
        if self.acked is None and not self.done:
            cancel_with_reason(self.tx, "")
            self._fail(487, "cancelled by the client")
        elif self.call is not None and self.call.state != ENDED:
            self.call.guarded(self.call.hangup, "hung up by the client")

    def _event(self, kind: str, **extra) -> None:
        doc = {"jsonrpc": "2.0", "method": "event",
               "params": {"type": kind, "call_id": self.call_id, "destination": self.destination, **extra}}
        for s in self.cti.sessions.get(self.user.username, ()):
            s.push(doc)

    @property
    def state(self) -> str:
        if self.call is not None:
            return "answered" if self.call.state == ANSWERED else self.call.state
        return "calling your phone"


def _chosen_pt(body: bytes) -> int:
    """The first payload type of the phone's answer that the relay endpoint can play (ringback)."""
    desc = fast_sdp.parse(body)
    for m in desc.media:
        if m.kind == "audio" and m.port:
            for pt in m.payload_types:
                if pt in _CODECS:
                    return pt
    raise HpbxError("no PCMA or PCMU in the answer")


def _only_codec(body: bytes, pt: int) -> bytes:
    """The answer with the audio m= line cut to ``pt`` (and telephone-event, if offered)."""
    out = []
    keep = {str(pt)}
    lines = body.decode("utf-8", "replace").replace("\r\n", "\n").split("\n")
    for line in lines:
        if line.startswith("a=rtpmap:") and "telephone-event" in line:
            keep.add(line[9:].split(" ", 1)[0])
    for line in lines:
        if not line:
            continue
        if line.startswith("m=audio "):
            parts = line.split(" ")
            line = " ".join(parts[:3] + [p for p in parts[3:] if p in keep])
        elif line.startswith(("a=rtpmap:", "a=fmtp:")):
            if line.split(":", 1)[1].split(" ", 1)[0] not in keep:
                continue
        out.append(line)
    return ("\r\n".join(out) + "\r\n").encode()
