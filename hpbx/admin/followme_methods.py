"""Admin methods of FollowMe numbers and callthrough (``followme.*``, ``callthrough.*``, issue 12),
added to the one method table. They reach ``hpbx.pbx.followme.FollowMe`` and
``hpbx.pbx.callthrough.Callthrough`` through ``ctx.followme`` / ``ctx.callthrough``."""
from __future__ import annotations

from hpbx.admin.context import AdminContext
from hpbx.admin.methods import Param, _add, _need
from hpbx.errors import NotFoundError, ValidationError


def _number(ctx: AdminContext, p: dict):
    n = ctx.provisioning.directory.number(p["number"])
    if n is None:
        raise NotFoundError("number", p["number"])
    if n.usage != "followme" or not n.followme:
        raise ValidationError("number", f"{n.number} is not a bound FollowMe number")
    return n


def _state(ctx: AdminContext, p: dict) -> dict:
    fm = _need(ctx, "followme", "followme")
    n = _number(ctx, p)
    on, target = fm.state(n)
    return {"number": n.number, "followme": n.followme, "on": on, "target": target,
            "authorised": fm.authorised(n), "pin": bool(n.pin)}


_add("followme.state", _state,
     "What a FollowMe number re-programs and its current state (on, target), as its menu's 3 reads it.",
     Param("number", "str", required=True, help="the FollowMe number"))
def _set(ctx: AdminContext, p: dict, target: str) -> dict:
    fm = _need(ctx, "followme", "followme")
    fm.set_target(_number(ctx, p), target)
    return _state(ctx, p)


_add("followme.set", lambda ctx, p: _set(ctx, p, p["target"]),
     "Set the target of what a FollowMe number re-programs, as its menu's 1 does (checked the same way).",
     Param("number", "str", required=True, help="the FollowMe number"),
     Param("target", "str", required=True, help="external number (0...), or internal for a forwarding rule"))
_add("followme.clear", lambda ctx, p: _set(ctx, p, ""),
     "Clear it, as the menu's 2 does (switch off, rule cleared, slot deactivated).",
     Param("number", "str", required=True, help="the FollowMe number"))
_add("callthrough.prepare",
     lambda ctx, p: _need(ctx, "callthrough", "callthrough").prepare(p["username"], p["destination"]),
     "Set the destination of the user's next callthrough call (within 60 s): the access number "
     "then calls it without asking for digits (the mobile app's way).",
     Param("username", "str", required=True, help="the user whose callthrough rule is used"),
     Param("destination", "str", required=True, help="external number to call (0...)"))
