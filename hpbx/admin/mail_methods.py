"""Admin methods of the outgoing mail spool (``mail.*``), added to the one method table.

They reach the running server's ``hpbx.mail.spool.MailSpool`` through ``ctx.mail``.
"""
from __future__ import annotations

from hpbx.admin.context import AdminContext
from hpbx.admin.methods import PAGE, Param, _add, _need, _page
from hpbx.mail.spool import STATES


def _spool(ctx: AdminContext):
    return _need(ctx, "mail", "mail")


def mail_queue(ctx: AdminContext, p: dict) -> list:
    return _page(_spool(ctx).queue(p.get("tenant"), p.get("state")), p)


def mail_retry(ctx: AdminContext, p: dict) -> dict:
    return {"queued": _spool(ctx).retry(p.get("id"), p.get("tenant"))}


def mail_delete(ctx: AdminContext, p: dict) -> dict:
    _spool(ctx).delete(p["id"])
    return {"id": p["id"], "deleted": True}


def mail_send(ctx: AdminContext, p: dict) -> dict:
    mail_id = _spool(ctx).submit(to=[p["to"]], subject=p.get("subject", "hpbx test mail"),
                                 body=p.get("body", "This is a test mail from hpbx.\n"),
                                 tenant=p.get("tenant", ""), kind="test")
    return {"id": mail_id}


_ID = Param("id", "str", help="spool id (as mail.queue lists it)")
_add("mail.queue", mail_queue,
     "Mail waiting in the spool and why: queued (next attempt, last error), bounced (5xx) or failed (given up).",
     Param("tenant", "str", help="only this tenant's mail"),
     Param("state", "str", help="only this state", choices=STATES), *PAGE,
     columns=("id", "tenant", "kind", "to", "subject", "state", "attempts", "next_at", "last_error"))
_add("mail.retry", mail_retry, "Try again now: one message (id), a tenant's, or every message in the spool.",
     _ID, Param("tenant", "str", help="only this tenant's mail"))
_add("mail.delete", mail_delete, "Remove a message from the spool without sending it.",
     Param(_ID.name, _ID.type, True, _ID.help))
_add("mail.send", mail_send, "Spool a test mail (checks the [smtp] settings end to end).",
     Param("to", "str", required=True, help="recipient address"),
     Param("subject", "str", help="subject"), Param("body", "str", help="text"),
     Param("tenant", "str", help="counted against this tenant's spool quota"))
