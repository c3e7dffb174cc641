"""Attended transfer (RFC 5589 §7: REFER whose Refer-To carries ``?Replaces=``, RFC 3891) of two
answered calls of one user, the transferor B: "connect the far party of this call with the far
party of the call the Replaces names". B may send the REFER in either call and may be caller or
callee in either.

hpbx terminates the REFER as a B2BUA (no INVITE with Replaces goes to any phone): of the two
calls, the one whose far party is its caller (its "a" side) is kept (the host); the other call's
far party C moves into it as the answered party. C gets a re-INVITE on its existing dialog with
the host's relay port (offer: the host caller's SDP, ``P-Asserted-Identity`` of the host's
caller); once C answers, the host caller gets a re-INVITE with C's SDP (which also takes it off
the hold B put it on) and ``P-Asserted-Identity`` of C. B gets NOTIFY ``message/sipfrag``
(100 Trying, then C's final status) and BYE on both of its dialogs. The other call ends with the
reason ``attended transfer``; both CDRs name each other in ``linked_call``.

B called both far parties (neither is a caller): the REFER's call is kept and the other
call's far party C takes B's caller seat in it (hpbx.pbx.seat): C is re-INVITEd on its dialog
towards the kept call's relay port "a" with the kept answered party's SDP, and once it answers
that party is re-INVITEd with C's SDP. A Replaces that names no dialog, a dialog of another
user or tenant, or a call not answered: the REFER is accepted (202, as RFC 5589 expects a
transferee to be) and its NOTIFY reports ``SIP/2.0 481 Call/Transaction Does Not Exist``;
nothing changes.
"""
from __future__ import annotations

import logging
from urllib.parse import unquote

from hpbx.errors import HpbxError
from hpbx.pbx import anchor, replaces, router, seat

log = logging.getLogger("hpbx.pbx.attended")


def replaces_of(refer_to: str) -> str | None:
    """The (unescaped) Replaces header value embedded in a Refer-To URI; None if there is none."""
    inner = refer_to.strip()
    if inner.startswith("<") and ">" in inner:
        inner = inner[1:inner.index(">")]
    _, q, headers = inner.partition("?")
    if not q:
        return None
    for part in headers.split("&"):
        name, _, value = part.partition("=")
        if name.strip().lower() == "replaces":
            return unquote(value)
    return None


def _notify(call, side, sipfrag: str, final: bool) -> None:
    dialog = call.a_dialog if side == "a" else side.dialog
    if dialog is None:
        return
    headers = dialog.headers("NOTIFY") + [
        ("Event", "refer"),
        ("Subscription-State", "terminated;reason=noresource" if final else "active;expires=60"),
        ("Content-Type", "message/sipfrag;version=2.0")]
    call.service.transactions.send_request("NOTIFY", dialog.remote_target, headers, dialog.target,
                                           None, sipfrag.encode())


def _user_of(call, side) -> str:
    if side == "a":
        return call.caller_user.username if call.caller_user is not None else ""
    return side.user or ""


def _find(call, side, value: str):
    """(other call, B's side in it) for the Replaces value, or None (no such dialog of B's)."""
    from hpbx.pbx.call import ANSWERED
    wanted = replaces.parse(value)
    if wanted is None:
        return None
    call_id, tags = wanted
    found = call.service.legs.get(call_id)
    if found is None:
        return None
    other, other_side = found
    if other is call or other.tenant != call.tenant or other.state != ANSWERED:
        return None
    if other_side == "a":
        dialog = other.a_dialog
        if dialog is None:
            return None
        known = {dialog.local_tag, dialog.remote_tag}
    else:
        if other_side is not other.winner or other_side.dialog is None:
            return None
        known = {other_side.tag, other_side.dialog.remote_tag}
    if tags != known:
        return None
    me = _user_of(call, side)
    if not me or _user_of(other, other_side) != me:
        return None
    return other, other_side


def handle(call, side, tx, replaces_value: str) -> None:
    """A REFER with Replaces inside the answered call ``call`` from ``side``."""
    found = _find(call, side, replaces_value)
    if found is None:
        tx.respond(202)
        _notify(call, side, "SIP/2.0 481 Call/Transaction Does Not Exist", final=True)
        log.info("[%s] attended transfer refused: Replaces %r names no dialog of the transferor",
                 call.id, replaces_value[:80])
        return
    other, other_side = found
    far_here = call.winner if side == "a" else "a"
    far_there = other.winner if other_side == "a" else "a"
    if far_here == "a":
        host, host_b, mover, mover_b, mover_far = call, side, other, other_side, far_there
    elif far_there == "a":
        host, host_b, mover, mover_b, mover_far = other, other_side, call, side, far_here
    else:
        # B called both: the REFER's call is kept, the other's far party takes B's caller seat
        host, host_b, mover, mover_b, mover_far = call, side, other, other_side, far_there
    if host.media is None or mover.transfer is not None or host.transfer is not None:
        tx.respond(491 if host.media is not None else 488, "Transfer not possible now")
        return
    tx.respond(202)
    _notify(call, side, "SIP/2.0 100 Trying", final=False)
    job = AttendedTransfer(call, side, host, host_b, mover, mover_b, mover_far)
    host.transfer = mover.transfer = job
    call.guarded(job.start)


class AttendedTransfer:
    def __init__(self, refer_call, refer_side, host, host_b, mover, mover_b, mover_far):
        self.refer_call, self.refer_side = refer_call, refer_side
        self.host, self.host_b = host, host_b  # host_b: B's BLeg in the host call (its winner)
        self.mover, self.mover_b = mover, mover_b  # mover_b: B's side in the other call
        self.mover_far = mover_far  # C: the other call's winner BLeg, or "a" (its caller)
        # B is the caller of both calls: C takes B's seat (leg a) of the host call (hpbx.pbx.seat)
        self.seat = host_b == "a"
        self.done = False

    def _c(self):
        """(dialog, target) of C, the far party of the moving call."""
        m = self.mover
        if self.mover_far == "a":
            return m.a_dialog, m.a_target
        return self.mover_far.dialog, self.mover_far.target

    def _identity(self, call, side) -> str:
        return identity(call, side)

    def finish(self, sipfrag: str) -> None:
        self.done = True
        for c in (self.host, self.mover):
            if c.transfer is self:
                c.transfer = None
        _notify(self.refer_call, self.refer_side, sipfrag, final=True)

    def start(self) -> None:
        host = self.host
        svc = host.service
        dialog, target = self._c()
        ms = host.media
        if self.seat:  # C takes B's caller seat: offered the host's answered party on port a
            winner = host.winner
            source = winner.last.body if winner is not None and winner.last is not None else b""
            try:
                offer = anchor.rewrite(source, ms.address_for(target.host), ms.port_a) if source else b""
            except HpbxError:
                offer = b""
        else:
            source = host.a_msg.body or b""
            try:
                offer = anchor.rewrite(source, ms.address_for(target.host), ms.port_b) if source else host.b_offer
            except HpbxError:
                offer = host.b_offer
        if not offer:
            self.finish("SIP/2.0 488 Not Acceptable Here")
            return
        cseq = dialog.next_cseq()
        headers = dialog.headers("INVITE", cseq) + [
            ("P-Asserted-Identity", self._identity(host, host.winner if self.seat else "a")),
            ("Content-Type", "application/sdp")]
        svc.transactions.send_request(
            "INVITE", dialog.remote_target, headers, dialog.target,
            lambda tx, status, resp: host.guarded(self._c_answered, dialog, cseq, status, resp), offer)

    def _c_answered(self, dialog, cseq: int, status: int, resp) -> None:
        from hpbx.pbx.call import ANSWERED, BLeg
        if status < 200:
            return
        host, mover = self.host, self.mover
        svc = host.service
        if 200 <= status < 300 and resp is not None:
            dialog.update_from_response(resp)
            dialog.send_ack(svc.transports, cseq)
        if status >= 300 or resp is None:
            self.finish(f"SIP/2.0 {status} {resp.reason if resp is not None else 'Failed'}")
            return
        if host.state != ANSWERED or mover.state != ANSWERED or self.done:
            # one of the calls ended meanwhile: C's new offer is moot; the ending call cleans up
            self.finish("SIP/2.0 487 Request Terminated")
            return
        leg_name = "a" if self.seat else "b"
        try:
            peer = anchor.peer(resp.body)
            svc.media.set_peer(host.id, leg_name, peer.host, peer.port, rtcp_port=peer.rtcp_port,
                               rtcp_mux=peer.rtcp_mux)
            svc.media.switch(host.id, leg_name)
            svc.media.set_hold(host.id, False)
            if mover.media is not None:  # C goes on hearing one stream (before mover's ends)
                svc.media.adopt_stream(host.id, leg_name, mover.id, "a" if self.mover_far == "a" else "b")
        except HpbxError as exc:
            log.info("[%s] transfer target's SDP not usable: %s", host.id, exc)
            self.finish("SIP/2.0 488 Not Acceptable Here")
            return
        by = _user_of(host, self.host_b)
        if self.seat:
            self._seat_c(dialog, resp, by)
            return
        # C leaves the other call: that call ends (its CDR says why), C's dialog is kept
        if self.mover_far == "a":
            c_user = mover.caller_user
            ring = router.Ring("user" if c_user else "external", c_user.username if c_user else mover.caller,
                               user=c_user, via=f"attended:{by}")
            leg = BLeg(host, ring, None, mover.a_target, "")
            leg.call_id, leg.tag, leg.dialog = mover.id, dialog.local_tag, dialog
            leg.answered, leg.live = True, False
            mover.a_dialog = None  # no BYE to C when the other call ends
        else:
            leg = self.mover_far
            mover.legs.pop(leg.id, None)
            if mover.winner is leg:
                mover.winner = None
            leg.call = host
        mover_b_dialog = mover.a_dialog if self.mover_b == "a" else self.mover_b.dialog
        host.links.append(mover.id)
        mover.links.append(host.id)
        mover.transfer = None
        mover._end(f"attended transfer by {by}")
        old = self.host_b
        # C's count of active calls moves with it unless its call's end just took it off
        for user, delta in ((old.user, -1), (leg.user, +1 if self.mover_far == "a" else 0)):
            if user and delta:
                svc.count_active(user, delta)
        host.legs[leg.id] = leg
        host.winner = leg
        svc.legs[leg.call_id] = (host, leg)
        svc.legs.pop(old.call_id, None)
        host.targets_tried.append(leg.ring.key if leg.ring.kind == "user" else f"external:{leg.ring.value}")
        self.finish("SIP/2.0 200 OK")
        host._send_bye(old.dialog, None)
        host._send_bye(mover_b_dialog, None)
        reoffer_caller(host, resp.body, self._identity(host, leg), relatch=True)
        svc.dialog_changed(host)
        log.info("[%s] attended transfer by %s: %s joined from call %s", host.id, by, leg.label, mover.id)

    def _seat_c(self, dialog, resp, by: str) -> None:
        """C answered (B had called both): C leaves the other call and takes B's caller seat of
        the host call; the host's answered party learns C's SDP."""
        host, mover, leg = self.host, self.mover, self.mover_far
        svc = host.service
        mover.legs.pop(leg.id, None)
        if mover.winner is leg:
            mover.winner = None  # C's count of active calls moves with it (mover's end skips it)
        leg.call = host
        host.links.append(mover.id)
        mover.links.append(host.id)
        mover.transfer = None
        mover._end(f"attended transfer by {by}")
        self.finish("SIP/2.0 200 OK")  # in B's dialog, before the seat changes hands
        host._send_bye(host.a_dialog, None)
        host._send_bye(mover.a_dialog, None)
        directory = svc.provisioning.directory
        seat.seat_caller(host, dialog, leg.target, directory.auth_user(leg.user) if leg.user else None,
                         counted=True)
        host.targets_tried.append(f"caller:{leg.ring.key}")
        seat.reoffer_callee(host, resp.body, identity(host, "a"))
        svc.dialog_changed(host)
        log.info("[%s] attended transfer by %s: %s took the caller's seat from call %s",
                 host.id, by, leg.label, mover.id)


def identity(call, side) -> str:
    """A P-Asserted-Identity value for the far party ``side`` ("a" or a BLeg) of ``call``."""
    if side == "a":
        user = call.caller_user
        number = (user.internal_number or user.username) if user is not None else call.caller
    else:
        user = call.service.provisioning.directory.auth_user(side.user) if side.user else None
        number = (user.internal_number or user.username) if user is not None else side.ring.value
    dialog = call.a_dialog
    host = dialog.local_uri.split("@", 1)[1].rstrip(">") if dialog and "@" in dialog.local_uri else "hpbx"
    return f"<sip:{number}@{host}>"


def reoffer_caller(call, sdp: bytes, identity: str = "", relatch: bool = False) -> None:
    """A re-INVITE to ``call``'s caller with the SDP of the party it now talks to, rewritten to
    the relay's address and port (unchanged), so it learns that party's codec; ``identity``
    goes out as P-Asserted-Identity. The caller's answer becomes the relay's peer of leg "a"
    (``relatch``: latch again onto where its packets come from). Blind and attended transfer."""
    dialog = call.a_dialog
    ms = call.media
    if dialog is None or ms is None or not sdp:
        return
    from hpbx.pbx import moh
    moh.stop(call)  # a held caller that is moved hears its new party, not the music
    try:
        body = anchor.rewrite(sdp, ms.address_for(call.a_target.host), ms.port_a)
    except HpbxError:
        return
    svc = call.service
    cseq = dialog.next_cseq()
    headers = dialog.headers("INVITE", cseq)
    if identity:
        headers.append(("P-Asserted-Identity", identity))
    headers.append(("Content-Type", "application/sdp"))

    def answered(tx, status, resp):
        if 200 <= status < 300 and resp is not None:
            dialog.send_ack(svc.transports, cseq)
            if resp.body:
                try:
                    peer = anchor.peer(resp.body)
                    svc.media.offer(call.id, peer.host, peer.port, rtcp_port=peer.rtcp_port,
                                    rtcp_mux=peer.rtcp_mux)
                    if relatch:
                        svc.media.relatch(call.id, "a")
                except HpbxError as exc:
                    log.info("[%s] caller's answer after transfer not usable: %s", call.id, exc)

    svc.transactions.send_request("INVITE", dialog.remote_target, headers, dialog.target,
                                  lambda tx, status, resp: call.guarded(answered, tx, status, resp),
                                  body)
