"""Message waiting indication: the ``message-summary`` event package (RFC 3842 over RFC 6665).

A phone SUBSCRIBEs ``Event: message-summary`` to its own mailbox (Request-URI: the user's
internal number or username), authenticated like BLF (407); another user's mailbox is 403, a
user without a mailbox 404. Each NOTIFY carries ``application/simple-message-summary``::

    Messages-Waiting: yes
    Message-Account: sip:21@pbx.example.com
    Voice-Message: 1/2 (0/0)

(new/old, urgent new/old: hpbx has no urgent messages). A message left, heard, deleted or
marked (hpbx.pbx.voicemail, admin ``mailbox.*``) NOTIFYs every subscription of that mailbox in
the same loop iteration, and, for a user whose mailbox says ``mwi_unsolicited``, sends an
out-of-dialog NOTIFY to each registered device (the phones configured for unsolicited MWI, as
Asterisk's ``unsolicited`` mode does). Subscriptions refresh, expire, end and survive a
restart like the dialog package's (hpbx.pbx.blf).
"""
from __future__ import annotations

import logging

from hpbx._fast import sipmsg
from hpbx.pbx.blf import DialogEvents, Subscription

log = logging.getLogger("hpbx.pbx.mwi")

EVENT = "message-summary"
CONTENT_TYPE = "application/simple-message-summary"


def summary(new: int, old: int, account: str) -> str:
    return (f"Messages-Waiting: {'yes' if new else 'no'}\r\nMessage-Account: {account}\r\n"
            f"Voice-Message: {new}/{old} (0/0)\r\n")


class Mwi(DialogEvents):
    EVENT = EVENT
    CONTENT_TYPE = CONTENT_TYPE

    def __init__(self, service, voicemail):
        super().__init__(service)
        self.vm = voicemail
        self.stats["unsolicited_sent"] = 0

    def refusal(self, user, watched, wanted: str):
        if watched is None or not watched.mailbox.enabled:
            return 404, "No such mailbox"
        if watched.username != user.username:
            return 403, f"Not your mailbox: {wanted}"[:100]
        return None

    def changed(self, call, ended: bool = False) -> None:
        """Calls do not change a mailbox."""

    def body(self, sub: Subscription) -> str:
        new, old = self.vm.store.counts(sub.watched)
        sub.version += 1
        return summary(new, old, sub.entity)

    def mailbox_changed(self, username: str) -> None:
        for sub in list(self.by_watched.get(username, ())):
            self._notify(sub)
        user = self.svc.provisioning.directory.user(username)
        if user is not None and user.mailbox.enabled and user.mailbox.mwi_unsolicited:
            self.unsolicited(user)

    def unsolicited(self, user) -> int:
        """An out-of-dialog NOTIFY to each online device of ``user``; how many were sent."""
        svc = self.svc
        new, old = self.vm.store.counts(user.username)
        sent = 0
        for b in svc.registrar.lookup(user.username):
            if not b.online:
                continue
            target = svc.registrar.target(b)
            host, port = svc.transports.local_address(target.kind, target.host)
            hostpart = f"[{host}]" if ":" in host else host
            transport = "" if target.kind == "udp" else f";transport={target.kind}"
            account = f"sip:{user.internal_number or user.username}@{hostpart}"
            headers = [("Max-Forwards", "70"),
                       ("From", f"<sip:{user.internal_number or user.username}@{hostpart}>;tag={sipmsg.new_tag()}"),
                       ("To", f"<sip:{user.username}@{hostpart}>"), ("Call-ID", sipmsg.new_call_id()),
                       ("CSeq", "1 NOTIFY"), ("Contact", f"<sip:hpbx@{hostpart}:{port}{transport}>"),
                       ("Event", EVENT), ("Subscription-State", "active"),
                       ("Content-Type", CONTENT_TYPE)]
            route = svc.registrar.relay_route(b)
            if route is not None:
                headers.append(("Route", route))
            svc.transactions.send_request("NOTIFY", b.contact, headers, target, None,
                                          summary(new, old, account).encode())
            sent += 1
        self.stats["unsolicited_sent"] += sent
        self.stats["notify_sent"] += sent
        return sent


def install(svc, voicemail, dispatcher, settings) -> Mwi:
    """The notifier, SUBSCRIBE routing (message-summary here, other packages as before) and,
    with a SQLite store, subscriptions that survive a restart."""
    mwi = Mwi(svc, voicemail)
    svc.mwi = mwi
    previous = dispatcher.request_handlers["SUBSCRIBE"]

    def on_subscribe(tx) -> None:
        msg = tx.msg
        if msg.to_tag:
            if (msg.call_id, msg.to_tag) in mwi.by_dialog:
                mwi.on_subscribe(tx)
            else:
                previous(tx)
            return
        event = (msg.header("Event") or "").split(";")[0].strip().lower()
        if event == EVENT:
            mwi.on_subscribe(tx)
        else:
            previous(tx)

    dispatcher.request_handlers["SUBSCRIBE"] = on_subscribe
    if not settings.store.redis:
        mwi.persist_to(settings.store.path)
    return mwi
