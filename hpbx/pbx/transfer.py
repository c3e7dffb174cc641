"""Blind transfer (RFC 3515 REFER, RFC 3420 sipfrag progress) of an answered call, asked by
the callee side: "put my caller through to Refer-To".

The caller's leg and its relay port stay as they are: hpbx calls the transfer target with the
relay's port facing the callee side (as the original callee was called), and when the target
answers, that relay leg's peer becomes the target, the transferor gets a final NOTIFY (``SIP/2.0
200 OK``) and a BYE, and the caller gets a re-INVITE with the target's SDP (same relay address
and port; the target may have chosen another codec than the transferor). A target that cannot
be reached leaves the call as it was, with the failure reported in the NOTIFY (or goes to the
``target_failed`` hook, for the target's mailbox).

Asked by the caller ("put the party I called through to Refer-To"), the answered party stays:
the target is called on its behalf (its identity, its SDP on the relay port that faced the
caller), and when it answers it takes the caller's seat of the call (hpbx.pbx.seat), the
transferor gets the final NOTIFY and a BYE, and the answered party a re-INVITE with the target's
SDP. A Refer-To with ``?Replaces=`` is an attended transfer (hpbx.pbx.attended), from either side.
"""
from __future__ import annotations

import logging
import re
from datetime import datetime, timezone

from hpbx.errors import HpbxError
from hpbx.pbx import anchor, attended, router, seat

log = logging.getLogger("hpbx.pbx.transfer")

_URI = re.compile(r"^\s*<?\s*(sips?):([^@<>;?\s]+)@([^<>;?\s]+)")


def refer_target(value: str | None) -> str | None:
    """The user part of a Refer-To SIP URI (with or without <>); None if it is not one."""
    if not value:
        return None
    m = _URI.match(value)
    return m.group(2) if m else None


def foreign_domain(call, refer_to: str) -> str:
    """Why a Refer-To names a host that is not this PBX's (the tenant's domain or the address
    the transferor reached hpbx at); "" when it is ours or not a SIP URI (refused later)."""
    m = _URI.match(refer_to)
    if not m:
        return ""
    host = m.group(3)
    host = host[1:host.index("]")] if host.startswith("[") and "]" in host else host.rsplit(":", 1)[0]
    ours = {"localhost"}
    tenant = call.service.provisioning.directory.tenant(call.tenant)
    if tenant is not None and tenant.domain:
        ours.add(tenant.domain.lower())
    for dialog in (call.a_dialog, call.winner.dialog if call.winner is not None else None):
        if dialog is not None and "@" in dialog.local_uri:
            ours.add(dialog.local_uri.split("@", 1)[1].split(";")[0].rstrip(">").rsplit(":", 1)[0].strip("[]").lower())
    transports = call.service.transports
    ours.update(c.local_host.lower() for c in transports.udp)
    ours.update(h.lower() for _, h, _ in transports.stream_listeners)
    if transports.settings.sip.advertise:
        ours.add(transports.settings.sip.advertise.lower())
    if call.a_msg.request_uri.host:
        ours.add(call.a_msg.request_uri.host.strip("[]").lower())
    return "" if host.lower() in ours else f"Refer-To names a foreign domain {host}"


# The mailbox hook (FEATURES 8.2, branch ``mailbox``): called as ``(call, transferor_leg, plan,
# status)`` when a blind transfer's target is busy (486/600) or unreachable (480/408/no
# device); returning True means it took the call over (e.g. answered it with the target's
# mailbox), and the transferor's NOTIFY then says 200. None: the failure is reported as is.
target_failed = None


class BlindTransfer:
    def __init__(self, call, transferor, refer_tx, plan):
        self.call = call
        self.a_dialog = call.a_dialog  # the caller's dialog when the REFER came (it may change hands)
        self.transferor = transferor  # the answered BLeg that sent the REFER, or "a" (the caller)
        self.refer_tx = refer_tx
        self.plan = plan
        self.legs = []
        self.done = False
        self.transferor_gone = False  # it sent BYE after the 202 (RFC 5589 §6.1 allows it)

    # ---- the subscription the REFER created (RFC 3515 §2.4.4): its NOTIFYs
    def notify(self, sipfrag: str, final: bool) -> None:
        call = self.call
        dialog = self.dialog
        if dialog is None or self.transferor_gone:
            return
        headers = dialog.headers("NOTIFY")
        headers += [("Event", "refer"),
                    ("Subscription-State", "terminated;reason=noresource" if final else "active;expires=60"),
                    ("Content-Type", "message/sipfrag;version=2.0")]
        call.service.transactions.send_request("NOTIFY", dialog.remote_target, headers, dialog.target,
                                               None, sipfrag.encode())

    @property
    def by_caller(self) -> bool:
        return self.transferor == "a"

    @property
    def dialog(self):
        """The transferor's dialog (where the REFER came and its NOTIFYs go)."""
        return self.a_dialog if self.by_caller else self.transferor.dialog

    @property
    def transferor_user(self) -> str:
        if self.by_caller:
            user = self.call.caller_user
            return user.username if user is not None else ""
        return self.transferor.user or ""

    def start(self) -> None:
        from hpbx.pbx.call import BLeg  # the call module uses this one
        call = self.call
        svc = call.service
        self.refer_tx.respond(202)
        self.notify("SIP/2.0 100 Trying", final=False)
        rings = self.plan.rows[0].targets if self.plan.rows else ()
        toll = svc.toll  # toll fraud: a transfer to the trunk is held to the transferor's limits
        for ring in rings:
            refusal = toll.admit(call.id, call.tenant, self.transferor_user or None, ring.value,
                                 (call.a_target.host, call.a_target.port)) \
                if toll is not None and ring.trunk is not None else None
            if refusal is not None:
                self.finish(f"SIP/2.0 {refusal.status} {refusal.reason}")
                return
        for ring in rings:
            if ring.kind == "user":
                for b in [b for b in svc.registrar.lookup(ring.value) if b.online][:svc.max_devices]:
                    self.legs.append(BLeg(call, ring, b, svc.registrar.target(b), b.contact))
                    self.legs[-1].route = svc.registrar.relay_route(b)  # cluster: via its node
            elif ring.trunk is not None:
                from hpbx.sip.transaction import Target
                t = ring.trunk
                self.legs.append(BLeg(call, ring, None, Target(t.transport, t.host, t.port),
                                      f"sip:{ring.value}@{t.host}:{t.port}"))
        if not self.legs:
            if not self._to_mailbox(480):
                self.finish("SIP/2.0 480 Temporarily Unavailable")
            return
        for leg in self.legs:
            call.legs[leg.id] = leg
            svc.legs[leg.call_id] = (call, leg)
            on_response = (lambda tx, status, msg, leg=leg: call.guarded(self._response, leg, status, msg))
            if self.by_caller:
                seat.invite_for_caller_seat(call, leg, on_response)
            else:
                call._send_invite(leg, on_response=on_response)

    def _to_mailbox(self, status: int) -> bool:
        if target_failed is None or self.by_caller or status not in (408, 480, 486, 600):
            return False
        if not target_failed(self.call, self.transferor, self.plan, status):
            return False
        self.finish("SIP/2.0 200 OK")
        return True

    def finish(self, sipfrag: str) -> None:
        self.done = True
        self.notify(sipfrag, final=True)
        if self.call.transfer is self:
            self.call.transfer = None
        if self.transferor_gone and not sipfrag.startswith("SIP/2.0 200"):
            # the target failed and the transferor is gone: the party left alone is hung up
            from hpbx.pbx.call import ANSWERED
            if self.call.state == ANSWERED:
                stays = self.call.winner.dialog if self.by_caller else self.call.a_dialog
                self.call._send_bye(stays, None)
                self.call._end(f"transfer failed ({sipfrag[8:]}) after the transferor left")

    def _response(self, leg, status: int, msg) -> None:
        call = self.call
        if status < 200:
            if msg is not None and msg.to_tag:
                leg.dialog.update_from_response(msg)
            return
        leg.live = False
        if status >= 300:
            call.service.legs.pop(leg.call_id, None)
            if not self.done and all(not other.live for other in self.legs):
                if not self._to_mailbox(status):
                    self.finish(f"SIP/2.0 {status} {msg.reason if msg is not None else 'Failed'}")
            return
        leg.dialog.update_from_response(msg)
        gone = call.a_dialog is not self.a_dialog if self.by_caller else call.winner is not self.transferor
        if self.done or gone or call.state != "answered":
            # a second answer, or the call ended meanwhile: ACK and release it
            leg.dialog.send_ack(call.service.transports, leg.cseq)
            call._send_bye(leg.dialog, None)
            call.service.legs.pop(leg.call_id, None)
            return
        leg.dialog.send_ack(call.service.transports, leg.cseq)
        leg.answered = True
        if self.by_caller:
            self._caller_replaced(leg, msg)
            return
        try:
            peer = anchor.peer(msg.body)
            media = call.service.media
            media.answer(call.id, peer.host, peer.port, rtcp_port=peer.rtcp_port, rtcp_mux=peer.rtcp_mux)
            media.switch(call.id, "b")  # the transferor may talk until its BYE
        except HpbxError as exc:
            log.info("[%s] transfer target's SDP not usable: %s", call.id, exc)
        for other in self.legs:
            if other is not leg and other.live:
                call._cancel_leg(other, 'SIP;cause=200;text="Call completed elsewhere"')
        old = self.transferor
        svc = call.service
        for user, delta in ((old.user, -1), (leg.user, +1)):
            if user:
                svc.count_active(user, delta)
        call.winner = leg
        self.finish("SIP/2.0 200 OK")
        if not self.transferor_gone:
            call._send_bye(old.dialog, None)
        # the target answered the caller's original offer and may have picked another codec
        attended.reoffer_caller(call, msg.body, attended.identity(call, leg))  # the caller sees whom it talks to
        svc.legs.pop(old.call_id, None)
        call.targets_tried.append(leg.ring.key)
        svc.dialog_changed(call)
        log.info("[%s] transferred by %s to %s", call.id, old.label, leg.label)


    def _caller_replaced(self, leg, msg) -> None:
        """The target answered a transfer asked by the caller: it takes the caller's seat."""
        call = self.call
        svc = call.service
        try:
            peer = anchor.peer(msg.body)
            svc.media.offer(call.id, peer.host, peer.port, rtcp_port=peer.rtcp_port, rtcp_mux=peer.rtcp_mux)
            svc.media.switch(call.id, "a")  # the transferor may talk until its BYE
        except HpbxError as exc:
            log.info("[%s] transfer target's SDP not usable: %s", call.id, exc)
        for other in self.legs:
            if other is not leg and other.live:
                call._cancel_leg(other, 'SIP;cause=200;text="Call completed elsewhere"')
        for other in self.legs:
            call.legs.pop(other.id, None)
        svc.legs.pop(leg.call_id, None)
        old = self.a_dialog
        label = self.transferor_user or call.caller
        self.finish("SIP/2.0 200 OK")
        if not self.transferor_gone:
            call._send_bye(old, None)
        directory = svc.provisioning.directory
        seat.seat_caller(call, leg.dialog, leg.target, directory.auth_user(leg.user) if leg.user else None)
        call.targets_tried.append(f"caller:{leg.ring.key}")
        seat.reoffer_callee(call, msg.body, attended.identity(call, leg))
        svc.dialog_changed(call)
        log.info("[%s] transferred by the caller %s to %s", call.id, label, leg.label)


def transferor_left(call, side) -> bool:
    """call.py: a BYE from ``side`` of an answered call. While that side's blind transfer runs
    (after its 202, before the target answered) the transferor may leave (RFC 5589 §6.1, as
    many phones do at once): the call stays for the party being transferred, the target is
    still connected, and no NOTIFY or BYE goes to the transferor any more. True = handled."""
    job = call.transfer
    if not isinstance(job, BlindTransfer) or job.done or job.transferor_gone:
        return False
    if (side == "a") != job.by_caller or (side != "a" and side is not job.transferor):
        return False
    job.transferor_gone = True
    log.info("[%s] the transferor left during its transfer; the call waits for the target", call.id)
    return True


def handle_refer(call, side, tx) -> None:
    """A REFER inside the answered call ``call`` from ``side`` ("a" or the winning BLeg)."""
    refer_to = tx.msg.header("Refer-To") or ""
    if call.transfer is not None:
        tx.respond(491, "A transfer is already in progress")
        return
    problem = foreign_domain(call, refer_to)
    if problem:
        tx.respond(403, problem[:100])
        return
    replacing = attended.replaces_of(refer_to)
    if replacing is not None:
        attended.handle(call, side, tx, replacing)
        return
    number = refer_target(tx.msg.header("Refer-To"))
    if number is None:
        tx.respond(400, "Refer-To is not a SIP URI")
        return
    username = (call.caller_user.username if call.caller_user is not None else "") if side == "a" else side.user
    transferor = call.service.provisioning.directory.auth_user(username) if username else None
    if transferor is None:
        tx.respond(403, "Only a user's phone may transfer")
        return
    plan = router.route_internal(call.service.provisioning.directory, transferor, number,
                                 datetime.now(timezone.utc))
    if plan.kind == "external":
        plan = router.Plan(kind="external", tenant=plan.tenant, dialled=plan.dialled, rows=(
            router.Row(60, (router.Ring("external", plan.external, trunk=plan.trunk,
                                        via=f"transfer:{transferor.username}"),)),))
    if plan.status or not plan.rows:
        tx.respond(plan.status or 404, (plan.reason or "No transfer target")[:100])
        return
    call.transfer = BlindTransfer(call, side, tx, plan)
    call.transfer.start()
