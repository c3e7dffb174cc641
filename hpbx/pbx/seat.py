"""The caller's seat of a call changes hands: a transfer asked by the caller side (issue 18).

A Call keeps its caller on "leg a" (``a_dialog``, ``a_target``, relay port ``port_a``) and the
answered party on its winning BLeg (relay port ``port_b``). When the caller side transfers
(a blind REFER from the caller, or an attended transfer where the transferor called both far
parties) the party that stays is the answered one, and the party that joins takes the caller's
seat: its dialog becomes ``a_dialog`` (a dialog hpbx started as UAC is as good as the one a
received INVITE made: in-dialog requests only need our local tag, the peer's target and the
CSeq counters), its address ``a_target``, its user the one counted as in the call. The call
keeps its id (the first caller's Call-ID: the relay session, ``call.list``, the CDR), its
``caller`` (who placed it) and its winner.

Here too: the INVITE a blind transfer by the caller sends to its target (offering the relay
port that faced the caller, with the SDP and the identity of the party that stays), and the
re-INVITE that tells the answered party about the new party's codec (``reoffer_callee``, the
mirror of ``attended.reoffer_caller``).
"""
from __future__ import annotations

import logging

from hpbx.errors import HpbxError
from hpbx.pbx import anchor, callerid
from hpbx.sip.dialog import Dialog

log = logging.getLogger("hpbx.pbx.seat")


def seat_caller(call, dialog: Dialog, target, user, *, counted: bool = False) -> None:
    """``dialog`` (towards ``target``, the party of ``user`` or an external one) is the call's
    caller side from now on; the previous caller's dialog is forgotten (the caller of this
    ends it with a BYE of its own). ``counted``: the joining user's active-call count already
    includes this call (it moves from a call whose end did not count it off)."""
    svc = call.service
    old = call.a_dialog
    svc.legs.pop(old.call_id if old is not None else call.id, None)
    if call.a_ok is not None:
        call.a_ok.cancel()
        call.a_ok = None
    before = call.caller_user.username if call.caller_user is not None else ""
    after = user.username if user is not None else ""
    if before != after:
        if before and before != (call.winner.user if call.winner is not None else ""):
            svc.count_active(before, -1)
        if after and not counted and after != (call.winner.user if call.winner is not None else ""):
            svc.count_active(after, +1)
    call.caller_user = user
    call.a_dialog = dialog
    call.a_target = target
    call.a_contact = dialog.contact
    svc.legs[dialog.call_id] = (call, "a")


def identity_of_winner(call, leg) -> tuple[str, str, list]:
    """(From display, From user, extra headers) that a blind-transfer target called on behalf
    of ``call``'s answered party sees: that party (a user's number, towards the trunk its
    network identity, never an internal number; an external party: its number)."""
    svc = call.service
    winner = call.winner
    user = svc.provisioning.directory.auth_user(winner.user) if winner is not None and winner.user else None
    if leg.ring.kind == "external":
        if user is None:
            return "", winner.ring.value if winner is not None else "anonymous", []
        ident = callerid.network_identity(svc.provisioning.directory.tenant(user.tenant), user)
        extra = []
        domain = call._trunk_domain(leg)
        if ident.asserted:
            extra.append(("P-Asserted-Identity", f"<sip:{ident.asserted}@{domain}>"))
        if ident.withheld:
            extra.append(("Privacy", "id"))
            return callerid.ANONYMOUS_FROM[0], ident.from_user, extra
        return "", ident.from_user, extra
    if user is None:
        return "", winner.ring.value if winner is not None else "anonymous", []
    number = user.displayed_number or user.internal_number or user.username
    if user.flags.show_internal_number_internally and user.internal_number:
        number = user.internal_number
    return user.details.full_name(), number, []


def invite_for_caller_seat(call, leg, on_response) -> None:
    """INVITE ``leg`` (a blind-transfer target of the caller side) offering the answered
    party's SDP on the relay port that faced the caller."""
    from hpbx.pbx.call import ALLOW, _quote, _uri_host
    svc = call.service
    target = leg.target
    host, port = svc.transports.local_address(target.kind, target.host)
    display, from_user, extra = identity_of_winner(call, leg)
    transport = "" if target.kind == "udp" else f";transport={target.kind}"
    contact = f"<sip:hpbx@{_uri_host(host)}:{port}{transport}>"
    if leg.ring.kind == "external":
        from_host = (callerid.ANONYMOUS_FROM[2] if ("Privacy", "id") in extra else call._trunk_domain(leg))
        to_uri = f"<sip:{leg.ring.value}@{_uri_host(leg.ring.trunk.host)}>"
    else:
        from_host = _uri_host(host)
        to_uri = f"<sip:{leg.ring.value}@{_uri_host(host)}>"
    from_uri = f"<sip:{from_user}@{from_host}>"
    if display:
        from_uri = f"{_quote(display)} {from_uri}"
    ms = call.media
    source = call.winner.last.body if call.winner is not None and call.winner.last is not None else b""
    body = anchor.rewrite(source, ms.address_for(target.host), ms.port_a) if source and ms else b""
    headers = [("Max-Forwards", "70"), ("From", f"{from_uri};tag={leg.tag}"), ("To", to_uri),
               ("Call-ID", leg.call_id), ("CSeq", f"{leg.cseq} INVITE"), ("Contact", contact),
               ("Allow", ALLOW), ("User-Agent", svc.user_agent)] + extra
    if leg.route is not None:
        headers.append(("Route", leg.route))
    if body:
        headers.append(("Content-Type", "application/sdp"))
    leg.dialog = Dialog.uac(leg.call_id, leg.tag, from_uri, to_uri, leg.ruri, leg.cseq, target, contact)
    leg.dialog.pinned_route = leg.route
    leg.headers = headers
    leg.tx = svc.transactions.send_request("INVITE", leg.ruri, headers, target, on_response, body)


def reoffer_callee(call, sdp: bytes, identity: str = "") -> None:
    """A re-INVITE to ``call``'s answered party with the SDP of the party now in the caller's
    seat, on the relay port facing it (unchanged); its answer is the relay's peer of leg "b".
    This also takes it off a hold the transferor put it on."""
    winner = call.winner
    ms = call.media
    if winner is None or winner.dialog is None or ms is None or not sdp:
        return
    dialog = winner.dialog
    from hpbx.pbx import moh
    moh.stop(call)  # a held answered party that is moved hears its new party, not the music
    try:
        body = anchor.rewrite(sdp, ms.address_for(winner.target.host), ms.port_b)
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
            dialog.update_from_response(resp)
            dialog.send_ack(svc.transports, cseq)
            if resp.body and call.media is not None:
                try:
                    peer = anchor.peer(resp.body)
                    svc.media.answer(call.id, peer.host, peer.port, rtcp_port=peer.rtcp_port,
                                     rtcp_mux=peer.rtcp_mux)
                    svc.media.relatch(call.id, "b")
                    svc.media.set_hold(call.id, peer.hold)
                except HpbxError as exc:
                    log.info("[%s] callee's answer after transfer not usable: %s", call.id, exc)

    svc.transactions.send_request("INVITE", dialog.remote_target, headers, dialog.target,
                                  lambda tx, status, resp: call.guarded(answered, tx, status, resp),
                                  body)
