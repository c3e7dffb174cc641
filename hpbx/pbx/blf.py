"""BLF: the dialog event package (RFC 4235 over RFC 6665 subscriptions), FEATURES 14.2.

A phone SUBSCRIBEs ``Event: dialog`` to a user (Request-URI: internal number or username of
its tenant). The subscriber authenticates (407 like an INVITE) and must have the user on its
Supervisor list (``supervise``), else 403; another event package is 489. Each subscription is
a dialog; its NOTIFYs carry the user's dialogs as ``application/dialog-info+xml`` (always
``state="full"``, ``version`` counting up per subscription): ``early`` once a phone of the user
answered a call's INVITE with a tagged 1xx (or the user's own call got one), ``confirmed`` once
answered, ``terminated`` once after
it ended, with the call-id and tags of the user's leg (what a BLF pickup needs) and the other
party's identity. A change is NOTIFYed in the same loop iteration it happens in.

Subscriptions end on Expires 0, when they expire, and when a NOTIFY gets 481/408. With a
SQLite store they survive a restart (``persist_to``): each is written (batched, at most once a
second and at stop) and, after the next start, resumed with a NOTIFY of the current state
(CSeq and version moved on by ``RESUME_MARGIN``, in case the last writes before a crash were
lost). With Redis (several nodes) they live in memory, and phones resubscribe.
"""
from __future__ import annotations

import logging
import time
from typing import Any
from dataclasses import dataclass, field
from xml.sax.saxutils import quoteattr, escape

from hpbx.sip.auth import Verdict
from hpbx.sip.dialog import Dialog
from hpbx.sip.transaction import Target

log = logging.getLogger("hpbx.pbx.blf")

MAX_EXPIRES, DEFAULT_EXPIRES = 3600, 3600  # the shortest is [sip] min_expires (as for REGISTER)
ALLOW_EVENTS = "dialog, presence, message-summary"  # the packages hpbx's notifiers serve (presence.py, mwi.py)
RESUME_MARGIN = 100  # CSeq and version steps skipped at a resume (writes lost in a crash)
MAX_PER_USER = 50  # subscriptions one user may hold (a flood of SUBSCRIBEs stays bounded)


@dataclass(eq=False)
class Subscription:
    subscriber: str  # username
    watched: str  # username
    entity: str  # sip:<number>@<domain>
    domain: str
    dialog: Dialog
    expires_at: float
    version: int = 0
    timer: object = None
    ended: list = field(default_factory=list)  # terminated dialogs not yet notified


class DialogEvents:
    EVENT = "dialog"
    CONTENT_TYPE = "application/dialog-info+xml"

    def __init__(self, service):
        self.svc = service
        self.by_dialog: dict[tuple[str, str], Subscription] = {}
        self.by_watched: dict[str, list[Subscription]] = {}
        self._pending: set[str] = set()
        self.stats = {"subscriptions": 0, "notify_sent": 0}
        self.store: Any = None  # hpbx.store.subscriptions.SubscriptionStore, or None (memory only)
        self._dirty: dict[tuple[str, str], Subscription | None] = {}
        self._flush_timer = None

    # ---------------------------------------------------------------- SUBSCRIBE
    def on_subscribe(self, tx) -> None:
        msg = tx.msg
        if msg.to_tag:
            self._refresh(tx)
            return
        event = (msg.header("Event") or "").split(";")[0].strip().lower()
        if event != self.EVENT:
            tx.respond(489, None, [("Allow-Events", ALLOW_EVENTS)])
            return
        svc = self.svc
        verdict, user, _ = svc.auth.check("SUBSCRIBE", msg.header("Proxy-Authorization"))
        if verdict is Verdict.FORBIDDEN:
            tx.respond(403, "Forbidden")
            return
        if verdict is not Verdict.OK:
            tx.respond(407, None, svc.auth.challenge_for(msg.from_addr.uri.user, "Proxy-Authenticate",
                                                         stale=verdict is Verdict.STALE))
            return
        directory = svc.provisioning.directory
        wanted = msg.request_uri.user or ""
        watched = directory.user_by_internal(user.tenant, wanted)
        if watched is None:
            other = directory.auth_user(wanted)
            watched = other if other is not None and other.tenant == user.tenant else None
        refusal = self.refusal(user, watched, wanted)
        if refusal is not None:
            tx.respond(*refusal)
            return
        expires = self._expires(msg)
        if expires is None:
            tx.respond(400, "Bad Expires header")
            return
        shortest = self.svc.registrar.min_expires
        if 0 < expires < shortest:
            tx.respond(423, "Interval Too Brief", [("Min-Expires", str(shortest))])
            return
        mine = sum(1 for subs in self.by_watched.values() for s in subs if s.subscriber == user.username)
        if expires and mine >= MAX_PER_USER:
            tx.respond(503, "Too many subscriptions", [("Retry-After", "60")])
            return
        target = Target(tx.channel.kind, tx.addr[0], tx.addr[1], tx.channel.id)
        host, port = svc.transports.local_address(tx.channel.kind, tx.addr[0])
        hostpart = f"[{host}]" if ":" in host else host
        transport = "" if tx.channel.kind == "udp" else f";transport={tx.channel.kind}"
        contact = f"<sip:hpbx@{hostpart}:{port}{transport}>"
        tx.respond(200, None, [("Expires", str(expires)), ("Contact", contact)])
        domain = msg.request_uri.host or hostpart
        sub = Subscription(user.username, watched.username,
                           f"sip:{watched.internal_number or watched.username}@{domain}", domain,
                           Dialog.uas(msg, tx.to_tag, target, contact), time.monotonic() + expires)
        if not expires:  # a fetch (RFC 6665 §4.4.3): one NOTIFY, then nothing
            self._notify(sub, final="timeout")
            return
        self.by_dialog[(msg.call_id, tx.to_tag)] = sub
        self.by_watched.setdefault(watched.username, []).append(sub)
        self.stats["subscriptions"] += 1
        self._arm(sub, expires)
        self.started(sub)
        self._notify(sub)

    def refusal(self, user, watched, wanted: str):
        """(status, reason) if ``user`` may not watch ``watched`` (None: not found), else None."""
        if watched is None:
            return 404, "No such user"
        if watched.username not in user.supervise:
            return 403, f"Not a supervisor of {wanted}"[:100]
        return None

    def started(self, sub: Subscription) -> None:
        """A subscription was stored (its first NOTIFY follows)."""

    def _expires(self, msg):
        value = msg.header("Expires")
        if value is None:
            return DEFAULT_EXPIRES
        try:
            expires = int(value.strip())
        except ValueError:
            return None
        return None if expires < 0 else min(expires, MAX_EXPIRES)

    def _refresh(self, tx) -> None:
        msg = tx.msg
        sub = self.by_dialog.get((msg.call_id, msg.to_tag))
        if sub is None or not sub.dialog.accept_remote_cseq(msg.cseq):
            tx.respond(481)
            return
        expires = self._expires(msg)
        if expires is None:
            tx.respond(400, "Bad Expires header")
            return
        if 0 < expires < self.svc.registrar.min_expires:
            tx.respond(423, "Interval Too Brief", [("Min-Expires", str(self.svc.registrar.min_expires))])
            return
        tx.respond(200, None, [("Expires", str(expires))])
        if not expires:
            self._drop(sub)
            self._notify(sub, final="timeout")
            return
        sub.expires_at = time.monotonic() + expires
        self._arm(sub, expires)
        self._notify(sub)

    # ---------------------------------------------------------------- persistence
    def persist_to(self, path: str) -> int:
        """Keep subscriptions in the SQLite file ``path``; resume those stored. Their count."""
        from hpbx.store.subscriptions import SubscriptionStore
        self.store = SubscriptionStore(path)
        resumed = 0
        now_wall, now = time.time(), time.monotonic()
        for doc in self.store.load(now_wall):
            if doc.get("package") != self.EVENT:
                continue
            d = doc["dialog"]
            dialog = Dialog(d["call_id"], d["local_tag"], d["remote_tag"], d["local_uri"], d["remote_uri"],
                            d["remote_target"], list(d["route_set"]), Target(*d["target"][:3]), d["contact"],
                            local_cseq=d["local_cseq"] + RESUME_MARGIN, remote_cseq=d["remote_cseq"])
            sub = Subscription(doc["subscriber"], doc["watched"], doc["entity"], doc["domain"], dialog,
                               now + (doc["expires_at"] - now_wall), version=doc["version"] + RESUME_MARGIN)
            self.by_dialog[(dialog.call_id, dialog.local_tag)] = sub
            self.by_watched.setdefault(sub.watched, []).append(sub)
            self._arm(sub, max(1, int(doc["expires_at"] - now_wall)))
            self.started(sub)
            self.svc.loop.call_soon(self._notify, sub)
            resumed += 1
        if resumed:
            log.info("%s subscriptions resumed from the store: %d", self.EVENT, resumed)
        return resumed

    def _mark(self, sub: Subscription, gone: bool = False) -> None:
        if self.store is None:
            return
        self._dirty[(sub.dialog.call_id, sub.dialog.local_tag)] = None if gone else sub
        if self._flush_timer is None:
            self._flush_timer = self.svc.wheel.call_later(1.0, self.flush)

    def flush(self) -> None:
        self._flush_timer = None
        if self.store is None or not self._dirty:
            return
        dirty, self._dirty = self._dirty, {}
        now_wall, now = time.time(), time.monotonic()
        upserts, deletes = [], []
        for key, sub in dirty.items():
            if sub is None:
                deletes.append(key)
                continue
            d = sub.dialog
            upserts.append({
                "package": self.EVENT, "call_id": d.call_id, "local_tag": d.local_tag,
                "expires_at": now_wall + (sub.expires_at - now), "subscriber": sub.subscriber,
                "watched": sub.watched, "entity": sub.entity, "domain": sub.domain, "version": sub.version,
                "dialog": {"call_id": d.call_id, "local_tag": d.local_tag, "remote_tag": d.remote_tag,
                           "local_uri": d.local_uri, "remote_uri": d.remote_uri,
                           "remote_target": d.remote_target, "route_set": list(d.route_set),
                           "target": [d.target.kind, d.target.host, d.target.port], "contact": d.contact,
                           "local_cseq": d.local_cseq, "remote_cseq": d.remote_cseq}})
        try:
            self.store.write_batch(upserts, deletes)
        except Exception:
            log.exception("%s subscriptions not stored", self.EVENT)

    def _arm(self, sub: Subscription, expires: int) -> None:
        if sub.timer is not None:
            sub.timer.cancel()
        sub.timer = self.svc.wheel.call_later(expires, self._expired, sub)

    def _expired(self, sub: Subscription) -> None:
        sub.timer = None
        if time.monotonic() >= sub.expires_at - 0.5:
            self._drop(sub)
            self._notify(sub, final="timeout")

    def _drop(self, sub: Subscription, forget: bool = True) -> None:
        if forget and (sub.dialog.call_id, sub.dialog.local_tag) in self.by_dialog:
            self._mark(sub, gone=True)
        if sub.timer is not None:
            sub.timer.cancel()
            sub.timer = None
        self.by_dialog.pop((sub.dialog.call_id, sub.dialog.local_tag), None)
        subs = self.by_watched.get(sub.watched)
        if subs and sub in subs:
            subs.remove(sub)
            if not subs:
                del self.by_watched[sub.watched]

    def close(self) -> None:
        """At stop: the stored subscriptions stay stored (they resume at the next start)."""
        if self._flush_timer is not None:
            self._flush_timer.cancel()
        self.flush()
        for subs in list(self.by_watched.values()):
            for sub in list(subs):
                self._drop(sub, forget=False)
        if self.store is not None:
            self.store.close()
            self.store = None

    # ---------------------------------------------------------------- call state changes
    def changed(self, call, ended: bool = False) -> None:
        """A call's state changed (rings, answered, ended): NOTIFY the watchers of its users."""
        for username in self._users(call):
            subs = self.by_watched.get(username)
            if not subs:
                continue
            if ended:
                entry = self._entry(call, username, "terminated")
                if entry is not None:
                    for sub in subs:
                        sub.ended.append(entry)
            if username not in self._pending:
                self._pending.add(username)
                self.svc.loop.call_soon(self._flush, username)

    def _flush(self, username: str) -> None:
        self._pending.discard(username)
        for sub in list(self.by_watched.get(username, ())):
            self._notify(sub)

    @staticmethod
    def _users(call) -> list[str]:
        users = []
        if call.caller_user is not None:
            users.append(call.caller_user.username)
        for leg in call.legs.values():
            if leg.user and leg.user not in users:
                users.append(leg.user)
        return users

    def _entry(self, call, username: str, state: str | None = None):
        """(dialog id, call-id, local-tag, remote-tag, direction, state, remote identity)."""
        from hpbx.pbx.call import ANSWERED, RINGING
        if call.caller_user is not None and call.caller_user.username == username:
            st = state or ("confirmed" if call.state == ANSWERED else "early" if call.state == RINGING else None)
            if st is None:
                return None
            dialled = call.plan.dialled
            return (call.id, call.id, call.a_msg.from_tag or "",
                    call.a_dialog.local_tag if call.a_dialog else "", "initiator", st, dialled)
        legs = [leg for leg in call.legs.values() if leg.user == username]
        if not legs:
            return None
        winner = call.winner if call.winner in legs else None
        if state is None:
            if winner is not None and call.state == ANSWERED:
                state = "confirmed"
            elif call.state == RINGING:
                # early: a phone answered 1xx with a tag (RFC 4235: before that, no dialog)
                legs = [leg for leg in legs if leg.live and leg.dialog is not None and leg.dialog.remote_tag]
                if not legs:
                    return None
                state = "early"
            else:
                return None
        leg = winner or legs[0]
        remote_tag = leg.dialog.remote_tag if leg.dialog is not None and leg.dialog.remote_tag else ""
        return (leg.call_id, leg.call_id, remote_tag, leg.tag, "recipient", state, call.caller)

    def body(self, sub: Subscription) -> str:
        entries = []
        for call in list(self.svc.calls.values()):
            e = self._entry(call, sub.watched)
            if e is not None:
                entries.append(e)
        entries += sub.ended
        sub.ended = []
        sub.version += 1
        out = ['<?xml version="1.0" encoding="UTF-8"?>',
               f'<dialog-info xmlns="urn:ietf:params:xml:ns:dialog-info" version="{sub.version - 1}" '
               f'state="full" entity={quoteattr(sub.entity)}>']
        for did, call_id, local, remote, direction, state, other in entries:
            attrs = (f"id={quoteattr(did)} call-id={quoteattr(call_id)}"
                     + (f" local-tag={quoteattr(local)}" if local else "")
                     + (f" remote-tag={quoteattr(remote)}" if remote else "")
                     + f" direction={quoteattr(direction)}")
            out += [f"  <dialog {attrs}>", f"    <state>{state}</state>",
                    f"    <remote><identity>sip:{escape(other)}@{escape(sub.domain)}</identity></remote>",
                    "  </dialog>"]
        out.append("</dialog-info>")
        return "\n".join(out) + "\n"

    def _notify(self, sub: Subscription, final: str | None = None) -> None:
        left = max(0, int(sub.expires_at - time.monotonic()))
        state = f"terminated;reason={final}" if final else f"active;expires={left}"
        dialog = sub.dialog
        headers = dialog.headers("NOTIFY") + [
            ("Event", self.EVENT), ("Subscription-State", state),
            ("Content-Type", self.CONTENT_TYPE)]
        self.stats["notify_sent"] += 1
        if not final:
            self._mark(sub)  # its CSeq and version moved on

        def answered(tx, status, resp, sub=sub):
            if status in (408, 481):
                self._drop(sub)

        self.svc.transactions.send_request("NOTIFY", dialog.remote_target, headers, dialog.target,
                                           answered, self.body(sub).encode())
