"""Missed-call e-mail (FEATURES 4.8.13): a user with ``missed_call_mail`` who was offered a call
(a row reached them: rung, busy, or no device online) that ended unanswered (the caller hung
up, the rows ran out, every device refused) gets one e-mail per call at ``details.email`` (else the mailbox address): caller number and name, the
number dialled (and its slot), the time in the tenant's zone. A call answered by anyone
(parallel ringing, pickup) is not missed for anybody; a call a mailbox or Voice2Mail took over
is not either: its voice-message mail says more. Mail goes through the spool (never lost)."""
from __future__ import annotations

import logging
from datetime import datetime
from zoneinfo import ZoneInfo

from hpbx.errors import HpbxError

log = logging.getLogger("hpbx.pbx.missed")


def offered(call) -> list[str]:
    """Usernames the call was offered to: every user target its rows reached (rung, busy, or
    with no device online), in order."""
    return [key.split(":", 1)[1] for key in getattr(call, "targets_tried", ()) if key.startswith("user:")]


class MissedCalls:
    def __init__(self, svc, mail):
        self.svc = svc
        self.mail = mail
        self.stats = {"missed_call_mail": 0}

    def call_ended(self, call) -> None:
        if call.answer_iso or not hasattr(call, "targets_tried") or getattr(call, "handed_to", None):
            return
        rung = offered(call)
        if not rung:
            return
        directory = self.svc.provisioning.directory
        for name in rung:
            user = directory.user(name)
            if user is None or not user.flags.missed_call_mail:
                continue
            to = user.details.email or user.mailbox.email
            if not to:
                continue
            try:
                self._mail(call, user, to)
                self.stats["missed_call_mail"] += 1
            except HpbxError as exc:
                log.warning("[%s] missed-call mail to %s not sent: %s", call.id, to, exc)

    def _mail(self, call, user, to: str) -> None:
        tenant = self.svc.provisioning.directory.tenant(call.tenant)
        zone_name = tenant.timezone if tenant is not None else "Europe/Zurich"
        local = datetime.fromisoformat(call.start_iso).astimezone(ZoneInfo(zone_name))
        name = ""
        if call.caller_user is not None:
            name = call.caller_user.details.full_name()
        else:
            name = (call.a_msg.from_addr.display or "").strip('"')
        who = f"{name} <{call.caller}>" if name else call.caller
        plan = call.plan
        lines = ["You missed a call.", "", f"Caller: {call.caller}" + (f" ({name})" if name else ""),
                 f"Dialled: {plan.dialled}" + (f" (slot {plan.slot} \"{plan.slot_name}\")" if plan.slot else ""),
                 f"Time: {local:%Y-%m-%d %H:%M:%S} {local.tzname()} ({zone_name})",
                 f"Ended: {call.end_reason}", ""]
        self.mail.submit(to=[to], subject=f"Missed call from {who}", body="\n".join(lines),
                         tenant=call.tenant, kind="missed_call", timezone_name=zone_name)


def install(svc, mail) -> MissedCalls:
    missed = MissedCalls(svc, mail)
    svc.ended_hooks.append(missed.call_ended)
    return missed
