"""Call pickup by star code (FEATURES 13.1): ``**<internal number>`` picks up the call ringing
that user, ``*8`` the longest-ringing call of all users one may pick up (the user's ``pickup``
list, the Pickup tab). The picker's own INVITE becomes the call's answer: it gets a 200 with
the relay port that faced the rung phones, the caller gets its 200, and every ringing branch is
cancelled with "Call completed elsewhere" (so a call through a dial plan counts as answered).
Not permitted: 403; nothing ringing that may be picked up: 480.
"""
from __future__ import annotations

import logging

from hpbx.errors import HpbxError
from hpbx.pbx import anchor, router
from hpbx.sip.dialog import Dialog, OkResender
from hpbx.sip.transaction import Target

log = logging.getLogger("hpbx.pbx.pickup")

COMPLETED_ELSEWHERE = 'SIP;cause=200;text="Call completed elsewhere"'


def _rung(call, usernames: set[str]) -> bool:
    return any(leg.live and not leg.answered and leg.user in usernames for leg in call.legs.values())


def handle(svc, tx, user, kind: str, number: str) -> None:
    """``user`` dialled a pickup code (``kind`` "directed" with ``number``, or "group")."""
    from hpbx.pbx.call import RINGING
    allowed = set(user.pickup)
    if kind == "directed":
        target = svc.provisioning.directory.user_by_internal(user.tenant, number)
        if target is None:
            tx.respond(404, f"{number} is not an internal number")
            return
        if target.username not in allowed:
            tx.respond(403, f"Not allowed to pick up {number}")
            return
        allowed = {target.username}
    elif not allowed:
        tx.respond(403, "No pickup permission")
        return
    ringing = [c for c in svc.calls.values()
               if c.state == RINGING and c.tenant == user.tenant and _rung(c, allowed)]
    if not ringing:
        tx.respond(480, "No call to pick up")
        return
    call = min(ringing, key=lambda c: c.start_time)
    call.guarded(pick_up, call, tx, user)


def pick_up(call, tx, user) -> None:
    from hpbx.pbx.call import ANSWERED, ALLOW, BLeg, _uri_host, iso_now
    svc = call.service
    msg = tx.msg
    if call.media is None or not msg.body:
        tx.respond(488, "Pickup needs an SDP offer")
        return
    target = Target(tx.channel.kind, tx.addr[0], tx.addr[1], tx.channel.id)
    try:
        peer = anchor.peer(msg.body)
        svc.media.answer(call.id, peer.host, peer.port, rtcp_port=peer.rtcp_port,
                         rtcp_mux=peer.rtcp_mux)
    except HpbxError as exc:
        tx.respond(488, f"unusable SDP: {exc}"[:100])
        return
    ms = call.media
    to_picker = anchor.rewrite(call.a_msg.body, ms.address_for(target.host), ms.port_b)
    to_caller = anchor.rewrite(msg.body, ms.address_for(call.a_target.host), ms.port_a)
    host, port = svc.transports.local_address(tx.channel.kind, tx.addr[0])
    transport = "" if tx.channel.kind == "udp" else f";transport={tx.channel.kind}"
    contact = f"<sip:hpbx@{_uri_host(host)}:{port}{transport}>"
    ring = router.Ring("user", user.username, user=user, via=f"pickup:{user.username}")
    leg = BLeg(call, ring, None, target, str(msg.contacts[0].uri) if msg.contacts else "")
    leg.call_id = msg.call_id
    data = tx.respond(200, None, [("Contact", contact), ("Allow", ALLOW), ("Content-Type", "application/sdp")],
                      to_picker)
    resend_ok_until_ack(call, tx, data)
    leg.tag = tx.to_tag
    leg.dialog = Dialog.uas(msg, tx.to_tag, target, contact)
    leg.answered = True
    leg.live = False
    for other in call.legs.values():
        if other.live and not other.answered:
            call._cancel_leg(other, COMPLETED_ELSEWHERE)
    call.legs[leg.id] = leg
    call.fork = None  # decided: later answers of cancelled branches are released (late answer)
    if call.timer is not None:
        call.timer.cancel()
        call.timer = None
    call.state = ANSWERED
    call.winner = leg
    call.answer_iso = iso_now()
    call.targets_tried.append(f"pickup:{user.username}")
    call._answer_caller(leg, to_caller)
    log.info("[%s] picked up by %s", call.id, user.username)


# ---- the 200 to a picking (or call-moving) device: re-sent until its ACK (RFC 3261 §13.3.1.4)
_UNACKED: dict[str, OkResender] = {}  # Call-ID of the device's INVITE -> its 200's re-sender


def resend_ok_until_ack(call, tx, data) -> None:
    """Re-send ``data`` (our 200) until ``acked``; after 64·T1 without an ACK the call is hung
    up (as for a caller's missing ACK)."""
    from hpbx.pbx.call import ENDED
    svc = call.service
    call_id = tx.msg.call_id

    def no_ack() -> None:
        _UNACKED.pop(call_id, None)
        if call.state != ENDED:
            call.guarded(call.hangup, "no ACK from the picking device")

    resender = OkResender(svc.wheel, svc.loop, svc.transactions, tx, data, no_ack)
    if resender.pending:
        _UNACKED[call_id] = resender


def acked(call_id: str) -> None:
    resender = _UNACKED.pop(call_id, None)
    if resender is not None:
        resender.cancel()
