"""INVITE with Replaces (RFC 3891) naming a dialog of hpbx's leg to a phone:

* an early dialog (the phone rings): BLF pickup (FEATURES 13.1) — allowed when the rung user is
  on the caller's Pickup list; the call is answered by this INVITE (``pickup.pick_up``);
* a confirmed dialog of the same user: call move (FEATURES 13.2) — the user's other device
  takes over: it gets the relay port that faced the old device, the caller a re-INVITE is not
  needed (its side does not change), and the old device gets BYE. Another user's call: 403.

The dialog is found by Call-ID with its two tags taken as a pair (the phone's tag and hpbx's),
so both readings of RFC 3891's to-tag/from-tag match; none found: 481. Another tenant's
dialog is never found.
"""
from __future__ import annotations

import logging

from hpbx.errors import HpbxError
from hpbx.pbx import anchor, pickup, router
from hpbx.sip.dialog import Dialog
from hpbx.sip.transaction import Target

log = logging.getLogger("hpbx.pbx.replaces")


def parse(value: str) -> tuple[str, set[str]] | None:
    """(call-id, {to-tag, from-tag}) of a Replaces header value; None if malformed."""
    parts = [p.strip() for p in value.split(";")]
    call_id = parts[0]
    tags = {}
    for p in parts[1:]:
        k, _, v = p.partition("=")
        tags[k.strip().lower()] = v.strip()
    if not call_id or "to-tag" not in tags or "from-tag" not in tags:
        return None
    return call_id, {tags["to-tag"], tags["from-tag"]}


def handle(svc, tx, user, value: str) -> None:
    from hpbx.pbx.call import ANSWERED, RINGING
    wanted = parse(value)
    if wanted is None:
        tx.respond(400, "Bad Replaces header")
        return
    call_id, tags = wanted
    found = svc.legs.get(call_id)
    if found is None or found[1] == "a":
        # also the caller's own leg: hpbx does not hand a caller's dialog to another device
        tx.respond(481, "No such dialog")
        return
    call, leg = found
    phone_tag = leg.dialog.remote_tag if leg.dialog is not None else None
    known = {leg.tag, phone_tag} if phone_tag else {leg.tag}
    if call.tenant != user.tenant or not (tags <= known | {""} and leg.tag in tags):
        tx.respond(481, "No such dialog")
        return
    if call.state == RINGING and leg.live and not leg.answered:
        if leg.user not in user.pickup:
            tx.respond(403, f"Not allowed to pick up {leg.user}"[:100])
            return
        call.guarded(pickup.pick_up, call, tx, user)
        return
    if call.state == ANSWERED and leg is call.winner:
        if leg.user != user.username:
            tx.respond(403, "Not your call")
            return
        call.guarded(move, call, tx, user)
        return
    tx.respond(481, "No such dialog")


def move(call, tx, user) -> None:
    """The user's other device (this INVITE) takes the answered call over from its desk leg."""
    from hpbx.pbx.call import ALLOW, BLeg, _uri_host
    svc = call.service
    msg = tx.msg
    if call.media is None or not msg.body:
        tx.respond(488, "Call move needs an SDP offer")
        return
    ms = call.media
    target = Target(tx.channel.kind, tx.addr[0], tx.addr[1], tx.channel.id)
    try:
        peer = anchor.peer(msg.body)
        to_device = anchor.rewrite(call.a_msg.body, ms.address_for(target.host), ms.port_b)
        svc.media.answer(call.id, peer.host, peer.port, rtcp_port=peer.rtcp_port, rtcp_mux=peer.rtcp_mux)
        svc.media.switch(call.id, "b")  # the desk phone talks until its BYE
    except HpbxError as exc:
        tx.respond(488, f"unusable SDP: {exc}"[:100])
        return
    host, port = svc.transports.local_address(tx.channel.kind, tx.addr[0])
    transport = "" if tx.channel.kind == "udp" else f";transport={tx.channel.kind}"
    contact = f"<sip:hpbx@{_uri_host(host)}:{port}{transport}>"
    ring = router.Ring("user", user.username, user=user, via=f"move:{user.username}")
    leg = BLeg(call, ring, None, target, str(msg.contacts[0].uri) if msg.contacts else "")
    leg.call_id = msg.call_id
    data = tx.respond(200, None, [("Contact", contact), ("Allow", ALLOW), ("Content-Type", "application/sdp")],
                      to_device)
    pickup.resend_ok_until_ack(call, tx, data)
    leg.tag = tx.to_tag
    leg.dialog = Dialog.uas(msg, tx.to_tag, target, contact)
    leg.answered = True
    leg.live = False
    old = call.winner
    call.legs[leg.id] = leg
    call.winner = leg
    svc.legs.pop(old.call_id, None)
    svc.legs[leg.call_id] = (call, leg)
    call._send_bye(old.dialog, None)
    svc.dialog_changed(call)
    log.info("[%s] moved by %s from %s to %s:%s", call.id, user.username, old.label, *tx.addr[:2])
