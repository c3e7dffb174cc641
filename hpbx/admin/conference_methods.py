"""Admin methods of the conference rooms (``conference.*``), added to the one method table.

They reach the running server's ``hpbx.pbx.conference.Conferences`` through ``ctx.conferences``.
"""
from __future__ import annotations

from hpbx.admin.context import AdminContext
from hpbx.admin.methods import PAGE, TENANT, Param, _add, _need, _page


def _conf(ctx: AdminContext):
    return _need(ctx, "conferences", "conference")


_ROOM = Param("room", "str", required=True,
              help="the room as conference.list shows it: a number, user:<username> or scheduled:<id>")
_CALL = Param("call_id", "str", required=True, help="the participant's call id (conference.participants)")

_add("conference.list", lambda ctx, p: _page(_conf(ctx).list(p.get("tenant")), p),
     "The open conference rooms and how many are in each.",
     Param("tenant", "str", help="only this tenant"), *PAGE,
     columns=("tenant", "room", "title", "participants"))
_add("conference.participants", lambda ctx, p: _conf(ctx).participants(p["tenant"], p["room"]),
     "Who is in a room: call id, caller, since when, muted, invited.", TENANT, _ROOM,
     columns=("call_id", "caller", "state", "joined", "muted", "invited"))
_add("conference.kick", lambda ctx, p: _conf(ctx).kick(p["tenant"], p["room"], p["call_id"]),
     "Hang up one participant (they may dial in again with the PIN).", TENANT, _ROOM, _CALL)
_add("conference.mute", lambda ctx, p: _conf(ctx).mute(p["tenant"], p["room"], p["call_id"], p.get("muted", True)),
     "Mute (or, with muted=false, unmute) one participant: the others no longer hear them.",
     TENANT, _ROOM, _CALL, Param("muted", "bool", help="true (default) mutes, false unmutes"))
_add("conference.invite", lambda ctx, p: _conf(ctx).invite(p["tenant"], p["room"], p["target"]),
     "The PBX calls a participant (a user, an internal or an external number through the tenant's "
     "trunk) and puts them into the room when they answer, without a PIN.",
     TENANT, Param("room", "str", required=True,
                   help="an open room (conference.list) or a conference number of the tenant"),
     Param("target", "str", required=True, help="user:<username>, an internal number or 0.../+..."))
_add("conference.end", lambda ctx, p: _conf(ctx).end(p["tenant"], p["room"]),
     "End a conference: every participant is hung up.", TENANT, _ROOM)
_add("conference.schedule",
     lambda ctx, p: _conf(ctx).schedule(
         p["tenant"], p["title"], p["start"], p["duration"], description=p.get("description", ""),
         lead=p.get("lead", 10), reply_to=p.get("reply_to", ""), invitees=p.get("invitees", []),
         location=p.get("location", ""), sender=p.get("sender", "")),
     "Schedule a conference on the tenant's personal-rooms dial-in: a PIN valid from start - lead "
     "to start + duration, invitations mailed with an iCalendar part.",
     TENANT, Param("title", "str", required=True, help="mail subject and calendar title"),
     Param("start", "str", required=True, help="ISO 8601 with offset, e.g. 2026-12-03T14:00:00+01:00"),
     Param("duration", "int", required=True, help="minutes"),
     Param("lead", "int", help="dial in possible this many minutes before the start (default 10)"),
     Param("description", "str", help="mail body; <number> and <pin> are filled in"),
     Param("location", "str", help="calendar location"),
     Param("reply_to", "str", help="Reply-To of the invitations"),
     Param("sender", "str", help="From of the invitations (default [smtp] sender)"),
     Param("invitees", "array", help="e-mail addresses that get an invitation"))
_add("conference.scheduled", lambda ctx, p: _page(_conf(ctx).scheduled(p.get("tenant")), p),
     "Scheduled conferences with their PIN and window.", Param("tenant", "str", help="only this tenant"),
     *PAGE, columns=("id", "tenant", "title", "start", "duration", "pin", "number"))
_add("conference.cancel", lambda ctx, p: _conf(ctx).cancel(p["tenant"], p["id"]),
     "Delete a scheduled conference (its PIN stops working).", TENANT,
     Param("id", "str", required=True, help="as conference.scheduled lists it"))
