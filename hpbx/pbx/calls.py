"""The call service: takes INVITEs from the dispatcher, decides who is calling, routes the
call, runs it (``call.Call``), keeps the registry of live calls, and writes a CDR for each.

Who is calling (kept simple on purpose):
  * a request whose source address and port are a trunk's gateway (``host``:``port`` of any
    tenant's trunk) comes from that trunk: the Request-URI user is a dialled public number
    (``router.route_inbound``; only numbers are reachable from outside, so a user linked to no
    number is never rung);
  * anything else must be a registered user of ours: the INVITE is challenged with 407 and
    the digest checked with the registrar's authenticator; the Request-URI user is what the
    user dialled (``router.route_internal``: internal number, own public number, or an
    external number through the tenant's trunk).

In-dialog requests (BYE, re-INVITE, UPDATE, INFO) and ACKs find their call by Call-ID: the
caller's Call-ID for the A leg, the branch's own Call-ID for a B leg.
"""
from __future__ import annotations

import ipaddress
import logging
from datetime import datetime, timezone

from hpbx.errors import HpbxError, ValidationError
from hpbx.pbx import blf, media_channel, pickup, presence, replaces, router, starcodes
from hpbx.pbx.call import Call
from hpbx.sip.auth import Verdict

log = logging.getLogger("hpbx.pbx.calls")

CDR_FLUSH_SECS = 0.2


def _ip_key(host: str) -> str:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host.lower()


class CallService:
    def __init__(self, loop, wheel, transactions, transports, registrar, auth, provisioning, media,
                 settings):
        self.loop = loop
        self.wheel = wheel
        self.transactions = transactions
        self.transports = transports
        self.registrar = registrar
        self.auth = auth
        self.provisioning = provisioning
        self.media = media
        self.configure(settings)
        self.calls: dict[str, Call] = {}
        self.legs: dict[str, tuple] = {}  # Call-ID -> (call, "a" or BLeg)
        self.active: dict[str, int] = {}  # username -> answered calls it is in
        self.ringing: dict[str, int] = {}  # username -> branches ringing it
        self._trunks: dict[tuple[str, int], object] = {}
        self._trunks_directory = None
        self._cdrs: list[dict] = []
        self._cdr_timer = None
        self.owners = None  # cluster: the call ownership (started / changed / ended)
        self.security = None  # hpbx.security.bans.BanService: judges and counts digest results
        self.toll = None  # hpbx.security.toll.TollPolicy: admits (or refuses) trunk calls
        self.stats = {"calls_started": 0, "calls_answered": 0, "calls_failed": 0,
                      "calls_rejected": 0, "invite_407": 0, "cdr_errors": 0}
        self.ended_hooks: list = []  # each called with every ended call (hpbx.pbx.missed, push)
        self.started_hooks: list = []  # each called with every call that starts ringing (push)
        self.blf = blf.DialogEvents(self)
        self.presence = presence.Presence(self)
        # callables (call, ended) told of every dialog change and end, after BLF (hpbx.cti)
        self.observers: list = []
        # (tenant, called username, caller number) -> name from the address books, or "" (hpbx.pbx.addressbook)
        self.caller_name_lookup = None
        # (call, side, held) on every re-offer that holds or resumes (hpbx.cti: held events)
        self.hold_observers: list = []

    def count_active(self, user: str, delta: int) -> None:
        """Add ``delta`` to the answered calls ``user`` is in (busy handling, presence)."""
        left = self.active.get(user, 0) + delta
        if left > 0:
            self.active[user] = left
        else:
            self.active.pop(user, None)

    def configure(self, settings) -> None:
        self.max_devices = settings.sip.max_devices
        self.user_agent = settings.sip.user_agent

    def install(self, dispatcher) -> None:
        """Register the handlers of call-related requests with the dispatcher's hook."""
        handlers = dispatcher.request_handlers
        handlers["INVITE"] = self.on_invite
        handlers["ACK"] = self.on_ack
        for method in ("BYE", "UPDATE", "INFO", "REFER"):
            handlers[method] = self.on_in_dialog
        handlers["SUBSCRIBE"] = lambda tx: presence.dispatch(self, tx)
        handlers["NOTIFY"] = presence.refuse_notify  # issue 18: no subscription of ours (481)

    # ------------------------------------------------------------------ who is calling
    def trunk_for(self, host: str, port: int):
        directory = self.provisioning.directory
        if directory is not self._trunks_directory:
            table = {}
            for tenant in directory.tenants():
                objs = directory.objects(tenant.name)
                for trunk in objs.trunks.values():
                    table[(_ip_key(trunk.host), trunk.port)] = trunk
            self._trunks = table
            self._trunks_directory = directory
        # source addresses come from the socket, already in canonical form
        return self._trunks.get((host, port))

    # ------------------------------------------------------------------ INVITE
    def on_invite(self, tx) -> None:
        msg = tx.msg
        if msg.to_tag:
            self.on_in_dialog(tx)
            return
        try:
            self._new_call(tx, msg)
        except HpbxError as exc:
            log.warning("[%s] INVITE refused: %s", msg.call_id, exc)
            self.stats["calls_rejected"] += 1
            tx.respond(400, str(exc)[:100])

    def _new_call(self, tx, msg) -> None:
        if msg.call_id in self.calls:
            tx.respond(482, "Loop Detected")
            return
        directory = self.provisioning.directory
        dialled = msg.request_uri.user or ""
        now = datetime.now(timezone.utc)
        trunk = self.trunk_for(tx.addr[0], tx.addr[1])
        caller_user = None
        if trunk is not None:
            plan = router.route_inbound(directory, dialled, now)
            if plan.tenant and plan.tenant != trunk.tenant:
                plan = router.Plan(kind="reject", status=404, reason="not a number of this trunk",
                                   dialled=dialled)
            caller = msg.from_addr.uri.user or "anonymous"
        else:
            verdict, user, name = self.auth.check("INVITE", msg.header("Proxy-Authorization"))
            if self.security is not None:
                verdict = self.security.judge(verdict, name, tx.addr, tx.channel.kind, "INVITE")
            if verdict is Verdict.FORBIDDEN:
                self.stats["calls_rejected"] += 1
                tx.respond(403, "Forbidden")
                return
            if verdict is not Verdict.OK:
                self.stats["invite_407"] += 1
                tx.respond(407, None, self.auth.challenge_for(msg.from_addr.uri.user,
                                                              "Proxy-Authenticate",
                                                              stale=verdict is Verdict.STALE))
                return
            caller_user = user
            if media_channel.dispatch_star(self, tx, user, dialled, lambda: router.Plan(
                    kind="starcode", tenant=user.tenant, dialled=dialled)):
                return
            code = starcodes.parse(dialled)
            if code is not None:
                self._star_code(tx, user, code)
                return
            wanted = starcodes.pickup(dialled)
            if wanted is not None:
                pickup.handle(self, tx, user, *wanted)
                return
            replacing = msg.header("Replaces")
            if replacing is not None:
                replaces.handle(self, tx, user, replacing)
                return
            plan = router.route_internal(directory, user, dialled, now)
            caller = user.internal_number or user.username
        if plan.kind == "external":
            plan = _external_plan(plan)
            refusal = self.toll.admit(msg.call_id, plan.tenant, caller_user.username if caller_user
                                      else None, plan.external, tx.addr) if self.toll else None
            if refusal is not None:
                plan = router.Plan(kind="reject", tenant=plan.tenant, status=refusal.status,
                                   reason=refusal.reason, dialled=dialled)
        if plan.kind == "reject" or plan.status:
            self.stats["calls_rejected"] += 1
            tx.respond(plan.status or 480, plan.reason[:100] or None)
            self._write_cdr({"tenant": plan.tenant or (trunk.tenant if trunk else ""), "call_id": msg.call_id,
                             "caller": caller, "called": dialled, "start": _iso(), "end": _iso(),
                             "end_reason": f"{plan.status} {plan.reason}"})
            return
        if plan.kind != "dialplan" and plan.kind not in ("internal", "external"):
            # fax, conference and FollowMe numbers: the media service registered for the usage
            if media_channel.dispatch_usage(self, tx, plan, caller, caller_user, trunk):
                return
            self.stats["calls_rejected"] += 1
            tx.respond(480, f"number usage {plan.kind} not available")
            return
        # an announcement before the rows, or a slot of announcements only (hpbx.pbx.announcements)
        if media_channel.run_step("slot", self, tx, plan, caller, caller_user, trunk):
            return
        if not plan.rows and not plan.voice2mail:  # a Voice2Mail slot answers without rows
            self.stats["calls_rejected"] += 1
            tx.respond(480, "no target in the dial plan")
            self._write_cdr({"tenant": plan.tenant, "call_id": msg.call_id, "caller": caller,
                             "called": dialled, "slot": plan.slot, "start": _iso(), "end": _iso(),
                             "end_reason": "480 no target"})
            return
        call = Call(self, tx, plan, caller, caller_user, trunk)
        self.calls[call.id] = call
        self.stats["calls_started"] += 1
        if self.owners is not None:
            self.owners.started(call)
        call.guarded(call.start)
        for hook in self.started_hooks:
            try:
                hook(call)
            except Exception:
                log.exception("[%s] call-started hook failed", call.id)

    def _star_code(self, tx, user, code) -> None:
        """Apply a star code to the caller's own settings; the final response says the result
        (603: nothing is to be connected, and the phone should not retry elsewhere)."""
        try:
            self.provisioning.user_update(user.username, code.changes)
        except ValidationError as exc:
            self.stats["calls_rejected"] += 1
            tx.respond(484, f"{code.code}: {exc}"[:100])
            return
        log.info("[%s] %s dialled %s: %s", tx.msg.call_id, user.username, code.code, code.result)
        tx.respond(603, code.result)

    # ------------------------------------------------------------------ in dialog
    def on_in_dialog(self, tx) -> None:
        msg = tx.msg
        found = self.legs.get(msg.call_id)
        if found is None:
            tx.respond(481)
            return
        call, side = found
        if side == "a":
            ok = msg.to_tag == (call.a_dialog.local_tag if call.a_dialog else None)
        else:
            ok = msg.to_tag == side.tag
        # a caller leg hpbx itself connected (click-to-dial, hpbx.cti) may hang up before an answer
        early = side == "a" and call.winner is None and getattr(call, "early_caller_dialog", False)
        if not ok or (call.winner is None and not early) or (side != "a" and side is not call.winner):
            tx.respond(481)
            return
        call.guarded(call.in_dialog, side, tx)

    def on_ack(self, msg, channel, addr) -> None:
        found = self.legs.get(msg.call_id)
        if found is not None and found[1] == "a":
            found[0].guarded(found[0].on_ack, msg)
        elif found is not None:
            pickup.acked(msg.call_id)  # a picking or call-moving device's ACK

    # ------------------------------------------------------------------ registry
    def dialog_changed(self, call: Call) -> None:
        """A call rings, is answered or changed hands: its users' BLF watchers hear of it."""
        self.blf.changed(call)
        self._observe(call, False)

    def _observe(self, call: Call, ended: bool) -> None:
        """Tell the observers (CTI events); one's fault costs neither the call nor its CDR."""
        for observe in self.observers:
            try:
                observe(call, ended)
            except Exception:
                log.exception("[%s] call observer %r failed", call.id, observe)

    def call_ended(self, call: Call) -> None:
        self.calls.pop(call.id, None)
        if self.owners is not None:
            self.owners.ended(call)
        self.blf.changed(call, ended=True)
        self._observe(call, True)
        if self.toll is not None:
            self.toll.release(call.id)
        if call.answer_iso:
            self.stats["calls_answered"] += 1
        else:
            self.stats["calls_failed"] += 1
        self._write_cdr(call.cdr())
        for hook in self.ended_hooks:
            try:
                hook(call)
            except Exception:
                log.exception("[%s] call-ended hook failed", call.id)

    def hangup_trunk_calls(self, tenant: str) -> int:
        """Hang up every call of ``tenant`` that rings or talks through the trunk (a toll-fraud
        block); the number of calls."""
        doomed = [c for c in self.calls.values()
                  if c.tenant == tenant and self.toll is not None and self.toll.holds(c.id)]
        for call in doomed:
            call.guarded(call.hangup, "toll fraud block")
        return len(doomed)

    def list_calls(self) -> list[dict]:
        return [call.as_dict() for call in list(self.calls.values())]

    def hangup(self, call_id: str) -> bool:
        call = self.calls.get(call_id)
        if call is None:
            return False
        call.hangup("hung up by the administrator")
        return True

    def media_timeout(self, key: str) -> None:
        call = self.calls.get(key)
        if call is not None:
            call.hangup("media timeout")

    def close(self) -> None:
        for call in list(self.calls.values()):
            call.hangup("server stopping")
        self.blf.close()
        self.presence.close()
        self.flush_cdrs()

    def counters(self) -> dict:
        out = {**self.stats, "calls_active": len(self.calls),
               "blf_subscriptions": len(self.blf.by_dialog), "blf_notify_sent": self.blf.stats["notify_sent"],
               "presence_subscriptions": len(self.presence.by_dialog),
               "presence_notify_sent": self.presence.stats["notify_sent"],
               "users_in_calls": sum(self.active.values())}  # busy handling's counts (issue 18)
        if self.media is not None:
            out.update(media_sessions=len(self.media), media_pairs_used=self.media.used_pairs(),
                       media_pairs_free=self.media.free_pairs())
        return out

    # ------------------------------------------------------------------ CDRs
    def _write_cdr(self, doc: dict) -> None:
        """Queued and written ``CDR_FLUSH_SECS`` later, so a final response never waits for disk."""
        self._cdrs.append(doc)
        if self._cdr_timer is None:
            self._cdr_timer = self.wheel.call_later(CDR_FLUSH_SECS, self.flush_cdrs)

    def flush_cdrs(self) -> None:
        self._cdr_timer = None
        batch, self._cdrs = self._cdrs, []
        try:
            self.provisioning.cdr_add_many(batch)  # one commit for the batch
            return
        except HpbxError:
            pass  # one record does not validate (or the store refused): each on its own
        for doc in batch:
            try:
                self.provisioning.cdr_add(doc)
            except HpbxError as exc:
                self.stats["cdr_errors"] += 1
                log.warning("[%s] CDR not stored: %s", doc.get("call_id"), exc)


def _iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _external_plan(plan):
    """A user's call to an external number: one row ringing the number through the trunk."""
    ring = router.Ring("external", plan.external, trunk=plan.trunk, via=f"external:{plan.external}")
    return router.Plan(kind="external", tenant=plan.tenant, dialled=plan.dialled,
                       rows=(router.Row(router.INTERNAL_RING_SECONDS, (ring,)),),
                       external=plan.external, trunk=plan.trunk)
