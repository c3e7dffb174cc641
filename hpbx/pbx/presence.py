"""Presence (RFC 3856 over RFC 6665, PIDF RFC 3863 with RPID RFC 4480), FEATURES 14.1/14.3.

A phone SUBSCRIBEs ``Event: presence`` to a user of its tenant (Request-URI: internal number or
username), authenticated like BLF. It may watch users who share a presence group with it
(``presence_groups``; users with none are in the tenant's default group, so they see each
other and nobody in a named group); others are 403. A hidden user (``hide_user``) is 404, the
same answer as a user that does not exist: he never appears. Each NOTIFY carries one PIDF
document:

* ``<basic>open</basic>`` while the user has an online registration, else ``closed``;
* RPID activities: ``on-the-phone`` and ``busy`` during an answered call, ``busy`` with DND,
  none otherwise; a ``<note>`` says ``Offline``, ``Ringing``, ``On the phone``,
  ``Do not disturb`` or ``Available``.

The state of every watched user is compared every ``POLL_SECS`` with what its watchers last got,
and NOTIFYed when it differs (registration, DND set by star code or admin, calls: one source of
truth, no hook in each), so a change reaches the watcher within 2 s. Subscriptions refresh,
expire and end like the dialog package's (hpbx.pbx.blf), and are in memory only.
"""
from __future__ import annotations

import logging
from xml.sax.saxutils import escape, quoteattr

from hpbx.pbx.blf import ALLOW_EVENTS, DialogEvents, Subscription

log = logging.getLogger("hpbx.pbx.presence")

POLL_SECS = 0.5


def dispatch(svc, tx) -> None:
    """SUBSCRIBE: to the notifier of its event package (in a dialog: to the one that owns it)."""
    msg = tx.msg
    if msg.to_tag:
        if (msg.call_id, msg.to_tag) in svc.presence.by_dialog:
            svc.presence.on_subscribe(tx)
        else:
            svc.blf.on_subscribe(tx)
        return
    event = (msg.header("Event") or "").split(";")[0].strip().lower()
    if event == "presence":
        svc.presence.on_subscribe(tx)
    elif event == "dialog":
        svc.blf.on_subscribe(tx)
    else:
        tx.respond(489, None, [("Allow-Events", ALLOW_EVENTS)])


def refuse_notify(tx) -> None:
    """NOTIFY: hpbx is a notifier only (it terminates REFER and subscribes to nothing), so no
    NOTIFY can belong to a subscription of ours (RFC 6665 §4.1.3: 481), inside a call's dialog
    or not; nothing is forwarded to the other party of a call and no state changes. A storm of
    them is the ban engine's (flood threshold per source)."""
    tx.respond(481, "Subscription does not exist")


def groups_of(user) -> set[str]:
    return set(user.presence_groups) or {""}


class Presence(DialogEvents):
    EVENT = "presence"
    CONTENT_TYPE = "application/pidf+xml"

    def __init__(self, service):
        super().__init__(service)
        self._ticker = None

    def refusal(self, user, watched, wanted: str):
        if watched is None or watched.flags.hide_user:
            return 404, "No such user"
        if watched.username != user.username and not groups_of(user) & groups_of(watched):
            return 403, f"Not in a presence group of {wanted}"[:100]
        return None

    def started(self, sub: Subscription) -> None:
        if self._ticker is None:
            self._ticker = self.svc.wheel.call_later(POLL_SECS, self._tick)

    def changed(self, call, ended: bool = False) -> None:
        """Calls are seen by the poll; nothing to do at once."""

    def close(self) -> None:
        super().close()
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None

    def _tick(self) -> None:
        self._ticker = None
        for username, subs in list(self.by_watched.items()):
            state = self.state(username)
            for sub in list(subs):
                if getattr(sub, "last", None) != state:
                    self._notify(sub)
        if self.by_watched:
            self._ticker = self.svc.wheel.call_later(POLL_SECS, self._tick)

    def state(self, username: str) -> tuple[bool, str]:
        """(registered, one of offline / ringing / on-the-phone / dnd / available)."""
        from hpbx.pbx.call import RINGING
        svc = self.svc
        user = svc.provisioning.directory.auth_user(username)
        online = any(b.online for b in svc.registrar.lookup(username))
        if svc.active.get(username, 0) > 0:
            return online, "on-the-phone"
        if user is not None and user.flags.dnd:
            return online, "dnd"
        for call in list(svc.calls.values()):
            if call.state == RINGING and any(leg.user == username and leg.live and not leg.answered
                                             for leg in call.legs.values()):
                return online, "ringing"
        return online, "available" if online else "offline"

    def body(self, sub: Subscription) -> str:
        online, what = self.state(sub.watched)
        sub.last = (online, what)
        sub.version += 1
        activities = {"on-the-phone": "<rpid:on-the-phone/><rpid:busy/>", "dnd": "<rpid:busy/>"}.get(what, "")
        note = {"offline": "Offline", "ringing": "Ringing", "on-the-phone": "On the phone",
                "dnd": "Do not disturb", "available": "Available"}[what]
        entity = quoteattr(sub.entity)
        return "\n".join([
            '<?xml version="1.0" encoding="UTF-8"?>',
            '<presence xmlns="urn:ietf:params:xml:ns:pidf" '
            'xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model" '
            f'xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid" entity={entity}>',
            f'  <tuple id="{escape(sub.watched)}">',
            f"    <status><basic>{'open' if online else 'closed'}</basic></status>",
            f"    <contact>{escape(sub.entity)}</contact>",
            f"    <note>{note}</note>",
            "  </tuple>",
            f'  <dm:person id="p-{escape(sub.watched)}">',
            *([f"    <rpid:activities>{activities}</rpid:activities>"] if activities else []),
            f"    <dm:note>{note}</dm:note>",
            "  </dm:person>",
            "</presence>", ""])
