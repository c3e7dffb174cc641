"""Fax entries of the admin method table (``hpbx.admin.methods`` imports this at its end):
``fax.send``, ``fax.status``, ``fax.list`` (hpbx.fax.send)."""
from __future__ import annotations

from hpbx.admin import methods as M
from hpbx.errors import ValidationError


def _sender():
    from hpbx.fax import send
    s = send.current()
    if s is None:
        raise ValidationError("fax", "this server has no fax sending (spandsp missing)")
    return s


async def fax_send(ctx, p):
    return _sender().submit(p)


async def fax_status(ctx, p):
    return _sender().status(p["id"])


async def fax_list(ctx, p):
    return M._page(_sender().list(p.get("tenant")), p)


M._add("fax.send", fax_send,
       "Send a fax: the PDF (base64, or a path under the media directory) is rendered to fax pages, "
       "the number is dialled through the tenant's trunk and the pages are sent over T.38 when the "
       "far end switches to it, G.711 otherwise; busy/failed attempts are retried. Returns the job.",
       M.Param("tenant", "str", required=True, help="tenant name"),
       M.Param("to", "str", required=True, help="the number to fax (0... or +...)"),
       M.Param("from", "str", help="the number presented (and sent as our fax id)"),
       M.Param("pdf", "str", help="the document, PDF as base64"),
       M.Param("path", "str", help="or a PDF under the media directory"),
       M.Param("header", "str", help="header line printed on top of each page (ASCII, max 50)"),
       M.Param("retries", "int", help="further attempts after a failure (default 2)", min=0, max=10),
       M.Param("retry_delay", "int", help="seconds between attempts (default 60)", min=1, max=3600),
       M.Param("mail", "str", help="where the report goes (default: the from-number's fax_mail)"))
M._add("fax.status", fax_status, "A fax job's state (queued, dialling, sending, retry_wait, sent, failed).",
       M.Param("id", "str", required=True, help="the job id fax.send returned"))
M._add("fax.list", fax_list, "The fax jobs since the start.", M.Param("tenant", "str", help="only this tenant"),
       *M.PAGE, columns=("id", "tenant", "to", "state", "pages", "pages_sent", "attempts", "result"))

from hpbx.admin import scope as _scope  # noqa: E402

for _m in ("fax.send", "fax.list"):  # a tenant admin faxes for its own tenant (fax.status: operators)
    _scope.RULES.setdefault(_m, "tenant")
