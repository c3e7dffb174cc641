"""Callthrough (FEATURES.md §12, issue 12): call out through the PBX from a mobile phone.

A user's callthrough rule (``users.callthrough``: authorised calling number, access number,
presented number) lets that calling number use the access number (a public number of usage
``callthrough``). Any other caller gets 403 before anything is answered. The authorised caller
is answered and enters the destination (digits + ``#``), unless one was set for the user just
before over the admin socket or CTI (``callthrough.prepare``, valid ``PREPARED_SECS``): then it
is called straight away. The destination must be an external number of the tenant's dialling
rules (starting with 0, the tenant's trunk): internal numbers, star codes and garbage are
refused with a prompt (three tries). The user's toll-fraud limits (``hpbx.security.toll``:
destinations, night hours, concurrent calls and attempts, talk minutes, maximum duration) apply
exactly as if the user had dialled from their own phone: the call is checked before it rings
and counts against them while it lasts.

The outbound leg is an ordinary B2BUA call (``hpbx.pbx.call.Call``) whose caller side is the
answered channel (the same shape as click-to-dial's phone leg, hpbx.cti.clicktodial): it is
offered the codec the caller talks, presents the rule's ``presented`` number (else the user's
displayed number, else the tenant's fallback) and is bridged in the relay when it answers; the
caller hears ring-back meanwhile. If the destination fails the caller is hung up. The CDR is the
outbound call's, with ``service = "callthrough"`` and ``service_result`` naming the access number,
the user and the destination.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from datetime import datetime, timezone

from hpbx._fast import sipmsg
from hpbx.cti.clicktodial import ClickCall, _only_codec, _PhoneSide
from hpbx.errors import HpbxError, NotFoundError, ValidationError
from hpbx.pbx import media_channel, router
from hpbx.pbx.followme import ATTEMPTS, read_digits, same_number, say, country_code
from hpbx.pbx.call import _uri_host
from hpbx.sip.transaction import build_request

log = logging.getLogger("hpbx.pbx.callthrough")

PREPARED_SECS = 60.0


class CallthroughCall(ClickCall):
    """The destination half of a callthrough: its CDR says so."""

    def cdr(self) -> dict:
        doc = super().cdr()
        doc["service"] = "callthrough"
        doc["service_result"] = self.click.result
        return doc


class _Answered:
    """What ClickCall expects of its phone side, made of the answered media channel."""

    def __init__(self, ch, result: str):
        self.ch = ch
        self.svc = ch.service
        self.dialog = ch.a_dialog
        self.media = ch.media
        self.tag = ch.to_tag
        self.phone_gone = False
        self.result = result

    def destination_failed(self, status: int, reason) -> None:
        log.info("[%s] callthrough destination failed: %s %s", self.ch.id, status, reason or "")
        if not self.phone_gone:
            d = self.dialog
            self.svc.transactions.send_request("BYE", d.remote_target, d.headers("BYE"), d.target, None)


class Callthrough:
    def __init__(self, svc):
        self.svc = svc
        self.prepared: dict[str, tuple[str, float]] = {}  # username -> (destination, expiry)
        self.clock = time.monotonic
        self.stats = {"callthrough_calls": 0, "callthrough_refused": 0, "callthrough_connected": 0}

    # ------------------------------------------------------------------ who may call
    def rule_for(self, tenant: str, access: str, caller: str):
        """(user, rule) whose rule lets ``caller`` use ``access``, or None."""
        cc = country_code(self.svc)
        for user in self.svc.provisioning.directory.users_of(tenant):
            for rule in user.callthrough:
                if rule.access == access and same_number(caller, rule.authorised, cc):
                    return user, rule
        return None

    def screen(self, svc, plan, caller: str, caller_user):
        n = plan.handled_by
        if n is None or self.rule_for(n.tenant, n.number, caller) is None:
            self.stats["callthrough_refused"] += 1
            log.warning("callthrough %s: caller %s has no rule", n.number if n else "?", caller)
            return (403, "Caller Not Authorised")
        return None

    # ------------------------------------------------------------------ admin / CTI
    def prepare(self, username: str, destination: str) -> dict:
        """The user's next callthrough call goes to ``destination`` without asking."""
        user = self.svc.provisioning.directory.user(username)
        if user is None:
            raise NotFoundError("user", username)
        if not user.callthrough:
            raise ValidationError("username", f"user {username!r} has no callthrough rule")
        why = self.check_destination(user, destination)
        if why is not None:
            raise ValidationError("destination", why)
        self.prepared[username] = (destination, self.clock() + PREPARED_SECS)
        return {"username": username, "destination": destination, "valid_secs": PREPARED_SECS}

    def _take_prepared(self, username: str) -> str:
        found = self.prepared.pop(username, None)
        if found is None or found[1] < self.clock():
            return ""
        return found[0]

    def check_destination(self, user, digits: str) -> str | None:
        """None when ``user`` may call ``digits`` through the trunk, else why not."""
        if not digits.isdigit() or not 4 <= len(digits) <= 20 or not digits.startswith("0"):
            return f"{digits!r} is not an external number (0 and 3-19 more digits)"
        plan = router.route_internal(self.svc.provisioning.directory, user, digits,
                                     datetime.now(timezone.utc))
        if plan.kind != "external":
            return plan.reason or f"{digits} is not an external number"
        toll = self.svc.toll
        if toll is not None:
            norm, kind = toll.classify(digits)
            refusal = toll._destination(toll.limits(user.tenant), norm, kind)
            if refusal is not None:
                return refusal.reason
        return None

    # ------------------------------------------------------------------ the call
    async def service(self, ch) -> None:
        n = ch.plan.handled_by
        found = self.rule_for(n.tenant, n.number, ch.caller)
        if found is None:  # the rule went away since the screen
            ch.result = "callthrough: no rule"
            return
        user, rule = found
        self.stats["callthrough_calls"] += 1
        if not ch.a_msg.body:
            ch.result = "callthrough: the caller made no SDP offer"
            return
        destination = self._take_prepared(user.username)
        if not destination:
            destination = await self._ask(ch, user)
            if not destination:
                return
        svc = self.svc
        if svc.toll is not None:
            # the user's limits now, before anything rings; admitted under the call's id, the
            # outbound Call (same id) holds this slot and is not counted a second time
            refusal = svc.toll.admit(ch.id, user.tenant, user.username, destination,
                                     (ch.a_target.host, ch.a_target.port))
            if refusal is not None:
                ch.result = f"callthrough refused: {refusal.reason}"
                await say(ch, ["not-permitted", "goodbye"])
                return
        self._connect(ch, user, rule, destination)

    async def _ask(self, ch, user) -> str:
        for attempt in range(ATTEMPTS):
            await say(ch, ["enter-number-to-call"], barge_in="0123456789*#")
            got, ended = await read_digits(ch)
            if not ended:
                ch.result = "callthrough: number not ended with #"
                await say(ch, ["im-sorry", "goodbye"])
                return ""
            why = self.check_destination(user, got)
            if why is None:
                return got
            log.info("[%s] callthrough destination %r refused: %s", ch.id, got, why)
            await say(ch, ["invalid"] if attempt < ATTEMPTS - 1 else ["invalid", "goodbye"])
        ch.result = "callthrough: no valid number"
        return ""

    def _connect(self, ch, user, rule, destination: str) -> None:
        """Hand the answered caller to an outbound Call to ``destination`` (see the module doc)."""
        svc = self.svc
        plan = router.route_internal(svc.provisioning.directory, user, destination, datetime.now(timezone.utc))
        from hpbx.pbx.calls import _external_plan
        plan = _external_plan(plan)
        presenting = dataclasses.replace(user, displayed_number=rule.presented) if rule.presented else user
        side = _Answered(ch, f"via {ch.dialled} for {user.username} to {destination}")
        target = ch.a_target
        body = _only_codec(ch.a_msg.body, ch.codec["pt"])
        text = build_request("INVITE", f"sip:{destination}@{_uri_host(target.host)}", [
            ("Via", f"SIP/2.0/{target.kind.upper()} {_uri_host(target.host)}:{target.port};"
                    f"branch={sipmsg.new_branch()}"),
            ("Max-Forwards", "70"), ("From", f"<sip:{ch.caller}@{_uri_host(target.host)}>;tag={ch.to_tag}"),
            ("To", f"<sip:{destination}@{_uri_host(target.host)}>"), ("Call-ID", ch.id),
            ("CSeq", "1 INVITE"), ("Contact", f"<sip:{ch.caller}@{_uri_host(target.host)}:{target.port}>"),
            ("Content-Type", "application/sdp")], body)
        msg = sipmsg.parse(text)
        call = CallthroughCall(side, _PhoneSide(side, msg, target.kind, (target.host, target.port),
                                                target.conn_id), plan, ch.caller, presenting)
        call.start_iso, call.start_time = ch.start_iso, ch.start_time
        # the channel is done without a BYE or a CDR of its own; the Call carries the caller on
        ch.result = f"callthrough to {destination}"
        ch.handed_to = call
        ch.state = media_channel.ENDED
        for t in (ch._ok, ch._se_timer):
            if t is not None:
                t.cancel()
        ch._ok = ch._se_timer = None
        if ch.caller_user is not None:
            svc.count_active(ch.caller_user.username, -1)
        try:
            svc.media.tone(ch.id, "a", "ringback")
        except HpbxError as exc:
            log.info("[%s] ring-back: %s", ch.id, exc)
        svc.calls[call.id] = call
        svc.legs[call.id] = (call, "a")
        svc.stats["calls_started"] += 1
        if svc.owners is not None:
            svc.owners.started(call)
        self.stats["callthrough_connected"] += 1
        log.info("[%s] callthrough of %s to %s (presenting %s)", ch.id, user.username, destination,
                 presenting.displayed_number or "the tenant's fallback")
        call.guarded(call.start)


def install(svc) -> Callthrough:
    """Answer numbers of usage ``callthrough`` (called once by the server)."""
    ct = Callthrough(svc)
    svc.callthrough = ct
    media_channel.register_service("callthrough", ct.service, name="callthrough", screen=ct.screen)
    return ct
