"""``cdr.list number=...`` (issue 17: call records filtered by number): the call records whose
caller, called number or answering user contains the given digits (or equals the given
username), newest first. The store's list is read page by page and filtered here, at most
``SCAN`` records deep, so the stores need no new query; ``limit``/``offset`` count matches."""
from __future__ import annotations

import dataclasses

from hpbx.admin import methods as M
from hpbx.admin.protocol import INVALID_PARAMS, RpcError

SCAN = 200_000  # records looked at, at most, for one filtered list
PAGE_ROWS = 2000


def _digits(s: str) -> str:
    return "".join(c for c in s if c.isdigit())


def matches(cdr: dict, number: str, digits: str) -> bool:
    if number in (cdr.get("answered_by"), cdr.get("caller"), cdr.get("called")):
        return True
    if not digits:
        return False
    return any(digits in _digits(str(cdr.get(k) or "")) for k in ("caller", "called"))


_plain = M.METHODS["cdr.list"]


def cdr_list(ctx, p):
    number = p.pop("number", None)
    if number is None:
        return _plain.handler(ctx, p)
    number = number.strip()
    if not number or len(number) > 64:
        raise RpcError(INVALID_PARAMS, "number: give 1-64 characters (digits of a number, or a username)",
                       {"field": "number", "reason": "empty or too long"})
    digits = _digits(number)
    want, skip = p.pop("limit", 100), p.pop("offset", 0)
    out, offset = [], 0
    while len(out) < want and offset < SCAN:
        page = M._service(ctx, "cdr_list")(**{**p, "limit": PAGE_ROWS, "offset": offset})
        if not page:
            break
        offset += len(page)
        for c in page:
            if matches(c, number, digits):
                if skip:
                    skip -= 1
                    continue
                out.append(c)
                if len(out) >= want:
                    break
    return out


M.METHODS["cdr.list"] = dataclasses.replace(
    _plain, handler=cdr_list, params=_plain.params + (
        M.Param("number", "str", help="only calls whose caller or called number contains these digits "
                                      "(or answered by this username)"),),
    help=_plain.help + " number= filters by caller/called number.")
