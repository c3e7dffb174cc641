"""Conference rooms (FEATURES.md §10, issue 12): a media service on the media channel.

A number of usage ``conference`` answers its callers at hpbx (``hpbx.pbx.media_channel``),
asks for the PIN when the number has one (digits, ``#`` ends; ``[conference] pin_attempts``
wrong entries or entries that never end release the call), and puts the caller into the
number's room, mixed in the relay's native threads (``MediaEngine.room_*``: each member hears
the three loudest others, never itself; PCMA and PCMU members share a room).

- A lone participant hears the tenant's music on hold; when the second arrives the music
  stops and everybody hears the join tone; each departure plays the leave tone to those who
  stay, and the last one alone hears the music again.
- ``personal_rooms = true`` on a conference number makes it the one dial-in of every user's
  personal room (§10.2): the PIN typed picks the room of the user whose ``conference_pin`` it
  is (the user needs the ``personal_conference_room`` flag), or a scheduled conference whose
  window is open.
- Scheduled conferences (§10.3): ``conference.schedule`` generates a PIN valid from start − N
  minutes to start + duration and mails the invitations (the mail spool, with an iCalendar
  REQUEST attached). They are kept in the store folder's ``conferences.sqlite`` and survive a
  restart.
- Limits: ``[conference] max_participants`` per room (a number's ``max_participants``
  overrides it) and ``max_rooms`` open rooms per tenant; a full room plays a refusal and
  releases.

Rooms exist while somebody is in them. Prompts are system prompts (hpbx.media.prompts:
``conf-enter-pin``, ``conf-invalid-pin``, ``conf-locked``, ``goodbye``) in the tenant's
language; a missing prompt is skipped (logged by the library), and the tones (beep, congestion)
still tell the caller what happened.
"""
from __future__ import annotations

import asyncio
import logging
import secrets
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import orjson

from hpbx.errors import NotFoundError, ValidationError
from hpbx.pbx import media_channel

log = logging.getLogger("hpbx.pbx.conference")

HOLD_PROMPT = "conference-hold"  # fallback music when the tenant has none (built here, once)
PROMPT_PIN, PROMPT_BAD_PIN, PROMPT_FULL, PROMPT_BYE = "conf-enter-pin", "conf-invalid-pin", "conf-locked", "goodbye"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS scheduled (
    id TEXT PRIMARY KEY, tenant TEXT NOT NULL, pin TEXT NOT NULL,
    opens REAL NOT NULL, closes REAL NOT NULL, doc TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS scheduled_pin ON scheduled (tenant, pin);
"""


@dataclass
class Member:
    ch: object
    joined: float
    invited: bool = False
    muted: bool = False


@dataclass
class Room:
    tenant: str
    name: str  # the number, "user:<username>" or "scheduled:<id>"
    title: str
    engine_id: int
    created: float = field(default_factory=time.time)
    members: dict[str, Member] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"tenant": self.tenant, "room": self.name, "title": self.title,
                "participants": len(self.members), "created": self.created}


def _hold_pcm() -> bytes:
    """A calm four-note loop (F A C A, 400 ms each, about -20 dBm0) for rooms whose tenant has
    no music on hold of its own."""
    parts = []
    for f in (349.23, 440.0, 523.25, 440.0):
        t = np.arange(3200) / 8000.0
        env = np.minimum(1.0, np.minimum(t, 0.4 - t) / 0.02)
        parts.append(2300 * env * np.sin(2 * np.pi * f * t))
    return np.concatenate(parts).astype("<i2").tobytes()


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")


def _instant(value, name: str) -> float:
    if not isinstance(value, str):
        raise ValidationError(name, "must be an ISO 8601 timestamp with offset")
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        raise ValidationError(name, f"{value!r} is not an ISO 8601 timestamp") from None
    if dt.tzinfo is None:
        raise ValidationError(name, f"{value!r} needs a UTC offset (e.g. +01:00)")
    return dt.timestamp()


class Conferences:
    """The rooms of every tenant, the service callers run, and the admin operations."""

    def __init__(self, svc, settings, store_path: str = ""):
        self.svc = svc
        self.engine = svc.media
        self.settings = settings.conference
        self.rooms: dict[tuple[str, str], Room] = {}
        self.mail = None  # hpbx.mail.spool.MailSpool, set by the server (invitations)
        self.clock = time.time
        self.db = None
        if store_path:
            from hpbx.store.sqlite import connect
            path = ":memory:" if store_path == ":memory:" else str(Path(store_path).parent / "conferences.sqlite")
            self.db = connect(path, _SCHEMA)
        self.stats = {"joined": 0, "pin_refused": 0, "room_full": 0, "invitations": 0,
                      "invited": 0, "invite_failed": 0}
        self.invites: dict[str, dict] = {}  # call id -> {tenant, room, target, since}: being called

    def configure(self, settings) -> None:
        self.settings = settings.conference

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None

    # ------------------------------------------------------------------ the service
    async def service(self, ch) -> None:
        number = ch.plan.handled_by
        directory = self.svc.provisioning.directory
        if number.personal_rooms:
            found = await self._ask_pin(ch, lambda pin: self._personal_room(directory, ch.tenant, pin))
            if found is None:
                return
            name, title = found
        else:
            if number.pin:
                ok = await self._ask_pin(ch, lambda pin: True if pin == number.pin else None)
                if ok is None:
                    return
            name, title = number.number, number.name or number.number
        await self.attend(ch, name, title, limit=number.max_participants)

    async def _ask_pin(self, ch, check):
        """Up to pin_attempts entries; check(pin) -> a result or None. None: released."""
        s = self.settings
        for attempt in range(s.pin_attempts):
            prompt = PROMPT_PIN if attempt == 0 else [PROMPT_BAD_PIN, PROMPT_PIN]
            await ch.play(self._say(ch, prompt), barge_in="0123456789")
            await ch.tone("beep")
            pin, ended = await self._read_pin(ch, s.pin_timeout)
            result = check(pin) if pin and ended else None
            if result is not None:
                return result
            self.stats["pin_refused"] += 1
            log.info("[%s] conference PIN refused (attempt %d%s)", ch.id, attempt + 1,
                     "" if ended else ", no #")
        ch.result = "PIN refused"
        await ch.play(self._say(ch, [PROMPT_BAD_PIN, PROMPT_BYE]))
        await ch.tone("congestion")
        return None

    def _say(self, ch, names) -> list[str]:
        """Engine names of system prompts ``names`` in the caller's language (the names are
        PROMPTS keys, not engine names: played raw they were never loaded, so never heard)."""
        lib = getattr(self.svc, "prompts", None)
        names = [names] if isinstance(names, str) else names
        return lib.say(ch.language, names) if lib is not None else []

    @staticmethod
    async def _read_pin(ch, timeout: float) -> tuple[str, bool]:
        """Digits up to ``#``: (digits, True); (digits so far, False) when the caller stopped."""
        got = ""
        while len(got) < 17:
            ev = await ch.next_event("digit", timeout)
            if ev is None:
                return got, False
            d = ev.data["digit"]
            if d == "#":
                return got, True
            got += d
        return got, False

    def _personal_room(self, directory, tenant: str, pin: str):
        objs = directory.objects(tenant)
        if objs is not None:
            for u in objs.users.values():
                if u.conference_pin == pin and u.flags.personal_conference_room:
                    return f"user:{u.username}", u.details.full_name() or u.username
        row = self._scheduled_by_pin(tenant, pin, self.clock())
        if row is not None:
            return f"scheduled:{row['id']}", row["title"]
        return None

    async def attend(self, ch, name: str, title: str, *, limit: int = 0, invited: bool = False) -> None:
        """Put ``ch`` into room ``name`` of its tenant until it leaves (hang-up, kick, end)."""
        key = (ch.tenant, name)
        room = self.rooms.get(key)
        limit = limit or self.settings.max_participants
        if room is None:
            if sum(1 for t, _ in self.rooms if t == ch.tenant) >= self.settings.max_rooms:
                return await self._refuse_full(ch, "too many rooms")
            room = Room(ch.tenant, name, title, self.engine.room_create())
            self.rooms[key] = room
            log.info("conference %s/%s opened (engine room %d)", ch.tenant, name, room.engine_id)
        elif len(room.members) >= limit:
            return await self._refuse_full(ch, "room full")
        others = list(room.members.values())
        ch.join_room(room.engine_id)
        room.members[ch.id] = Member(ch, time.time(), invited)
        self.stats["joined"] += 1
        ch.result = f"joined {name}"
        if not others:
            self._hold(ch)
        else:
            if len(others) == 1:
                self._stop(others[0].ch)
            for m in others + [room.members[ch.id]]:
                self._tone(m.ch, "join")
        try:
            while True:  # the caller talks; digits and other events are not used (yet)
                await ch.next_event(None, None)
        finally:
            self._left(room, ch)

    async def _refuse_full(self, ch, why: str) -> None:
        self.stats["room_full"] += 1
        ch.result = why
        await ch.play(self._say(ch, [PROMPT_FULL, PROMPT_BYE]))
        await ch.tone("congestion")

    def _left(self, room: Room, ch) -> None:
        room.members.pop(ch.id, None)
        try:
            if ch.state != "ended":
                ch.leave_room()
        except Exception:  # the session may be gone with the call
            pass
        key = (room.tenant, room.name)
        if not room.members:
            if self.rooms.get(key) is room:
                del self.rooms[key]
            try:
                self.engine.room_delete(room.engine_id)
            except NotFoundError:
                pass
            log.info("conference %s/%s closed", room.tenant, room.name)
            return
        rest = list(room.members.values())
        if len(rest) == 1:
            self._hold(rest[0].ch)
        else:
            for m in rest:
                self._tone(m.ch, "leave")

    def _hold_prompt(self, tenant: str) -> list[str]:
        """The tenant's music on hold (hpbx.pbx.moh), else a built-in loop."""
        from hpbx.pbx import moh
        try:
            names = [n for n in moh.music_for(self.svc, tenant) if self.engine.has_prompt(n)]
            if names:
                return names
        except Exception:
            log.exception("music on hold of %s unavailable", tenant)
        if not self.engine.has_prompt(HOLD_PROMPT):
            self.engine.add_prompt(HOLD_PROMPT, _hold_pcm())
        return [HOLD_PROMPT]

    def _hold(self, ch) -> None:
        try:
            ch.play_start(self._hold_prompt(ch.tenant), loop=True)
        except Exception:
            log.exception("[%s] music for a lone participant failed", ch.id)

    def _stop(self, ch) -> None:
        try:
            ch.stop_play()
        except Exception:
            pass

    def _tone(self, ch, name: str) -> None:
        try:
            self.engine.tone(ch.id, "a", name, loop=False)
        except Exception:
            log.debug("[%s] %s tone not played", ch.id, name)

    # ------------------------------------------------------------------ admin operations
    def _room(self, tenant: str, room: str) -> Room:
        found = self.rooms.get((tenant, room))
        if found is None:
            raise NotFoundError("open conference", room)
        return found

    def list(self, tenant: str | None = None) -> list[dict]:
        return [r.as_dict() for r in self.rooms.values() if tenant is None or r.tenant == tenant]

    def participants(self, tenant: str, room: str) -> list[dict]:
        calling = [{"call_id": cid, "caller": i["target"], "joined": 0, "muted": False, "invited": True,
                    "state": "calling"} for cid, i in self.invites.items()
                   if (i["tenant"], i["room"]) == (tenant, room)]
        if calling and (tenant, room) not in self.rooms:
            return calling
        r = self._room(tenant, room)
        return [{"call_id": cid, "caller": m.ch.caller, "joined": m.joined, "muted": m.muted,
                 "invited": m.invited, "state": "connected"} for cid, m in r.members.items()] + calling

    def invite(self, tenant: str, room: str, target: str) -> dict:
        """hpbx calls ``target`` (user:<name>, internal or external number) and, when it
        answers, puts it into ``room`` without a PIN (FEATURES 10.3 "invite participant")."""
        found = self.rooms.get((tenant, room))
        number = self.svc.provisioning.directory.number(room)
        if found is not None:
            title = found.title
        elif number is not None and number.tenant == tenant and number.usage == "conference" \
                and not number.personal_rooms:
            title = number.name or number.number
        else:
            raise NotFoundError("open conference or conference number", room)
        if number is not None and number.usage == "conference":
            caller, limit = number.number, number.max_participants
        else:
            try:
                caller = self.dial_in(tenant)
            except ValidationError:
                caller = ""
            limit = 0

        async def joined(ch) -> None:
            self.invites.pop(ch.id, None)
            await self.attend(ch, room, title, limit=limit, invited=True)

        def failed(ch, status: int) -> None:
            self.invites.pop(ch.id, None)
            self.stats["invite_failed"] += 1
            log.info("conference %s/%s: invitation of %s failed (%s)", tenant, room, target, status)

        ch = media_channel.dial(self.svc, target, tenant, caller, joined, name="conference-invite",
                                on_failed=failed)
        self.invites[ch.id] = {"tenant": tenant, "room": room, "target": target, "since": time.time()}
        self.stats["invited"] += 1
        return {"call_id": ch.id, "room": room, "target": target, "state": "calling"}

    def _member(self, tenant: str, room: str, call_id: str) -> Member:
        m = self._room(tenant, room).members.get(call_id)
        if m is None:
            raise NotFoundError(f"participant of conference {room!r}", call_id)
        return m

    def kick(self, tenant: str, room: str, call_id: str) -> dict:
        invite = self.invites.get(call_id)
        if invite is not None and (invite["tenant"], invite["room"]) == (tenant, room):
            ch = self.svc.calls.get(call_id)
            if ch is not None:
                ch.hangup_now("invitation withdrawn by the administrator")
            self.invites.pop(call_id, None)
            return {"call_id": call_id, "kicked": True}
        m = self._member(tenant, room, call_id)
        m.ch.result = "kicked"
        m.ch.hangup_now("kicked by the administrator")
        return {"call_id": call_id, "kicked": True}

    def mute(self, tenant: str, room: str, call_id: str, muted: bool) -> dict:
        m = self._member(tenant, room, call_id)
        m.ch.mute(muted)
        m.muted = muted
        return {"call_id": call_id, "muted": muted}

    def end(self, tenant: str, room: str) -> dict:
        r = self._room(tenant, room)
        members = list(r.members.values())
        for m in members:
            m.ch.result = "conference ended"
            m.ch.hangup_now("conference ended by the administrator")
        return {"room": room, "ended": len(members)}

    # ------------------------------------------------------------------ scheduled conferences
    def dial_in(self, tenant: str) -> str:
        objs = self.svc.provisioning.directory.objects(tenant)
        if objs is None:
            raise NotFoundError("tenant", tenant)
        for n in objs.numbers.values():
            if n.usage == "conference" and n.personal_rooms:
                return n.number
        raise ValidationError("tenant", f"tenant {tenant!r} has no conference number with "
                                        "personal_rooms = true to dial in to scheduled conferences")

    def schedule(self, tenant: str, title: str, start: str, duration: int, *, description: str = "",
                 lead: int = 10, reply_to: str = "", invitees=(), location: str = "",
                 sender: str = "") -> dict:
        if self.db is None:
            raise ValidationError("tenant", "scheduled conferences need the store")
        if not title.strip():
            raise ValidationError("title", "must not be empty")
        t0 = _instant(start, "start")
        if not 1 <= duration <= 24 * 60:
            raise ValidationError("duration", "must be 1-1440 minutes (the end must come after the start)")
        if not 0 <= lead <= 24 * 60:
            raise ValidationError("lead", "must be 0-1440 minutes")
        invitees = list(invitees)
        from hpbx.mail import valid_address
        for i, addr in enumerate(invitees):
            if not isinstance(addr, str) or not valid_address(addr):
                raise ValidationError(f"invitees[{i}]", f"not an e-mail address: {addr!r}")
        if reply_to and not valid_address(reply_to):
            raise ValidationError("reply_to", f"not an e-mail address: {reply_to!r}")
        if invitees and self.mail is None:
            raise ValidationError("invitees", "the server has no mail spool to send invitations")
        number = self.dial_in(tenant)
        opens, closes = t0 - lead * 60, t0 + duration * 60
        pin = self._new_pin(tenant, opens, closes)
        cid = uuid.uuid4().hex[:12]
        doc = {"id": cid, "tenant": tenant, "title": title, "description": description,
               "location": location, "start": _iso(t0), "duration": duration, "lead": lead,
               "reply_to": reply_to, "invitees": invitees, "number": number, "pin": pin,
               "opens": _iso(opens), "closes": _iso(closes)}
        self.db.execute("INSERT INTO scheduled (id, tenant, pin, opens, closes, doc) VALUES (?,?,?,?,?,?)",
                        (cid, tenant, pin, opens, closes, orjson.dumps(doc).decode()))
        mails = []
        if invitees:
            mails = [self._invite(doc, t0, addr, sender) for addr in invitees]
        return {**doc, "mails": mails}

    def _new_pin(self, tenant: str, opens: float, closes: float) -> str:
        objs = self.svc.provisioning.directory.objects(tenant)
        taken = {u.conference_pin for u in objs.users.values()} if objs is not None else set()
        for _ in range(100):
            pin = f"{secrets.randbelow(900000) + 100000}"
            if pin in taken:
                continue
            clash = self.db.execute("SELECT 1 FROM scheduled WHERE tenant = ? AND pin = ? AND opens < ? "
                                    "AND closes > ?", (tenant, pin, closes, opens)).fetchone()
            if clash is None:
                return pin
        raise ValidationError("start", "no free PIN for that time")

    def _invite(self, doc: dict, t0: float, addr: str, sender: str) -> str:
        import icalendar

        from hpbx.mail.spool import Attachment
        body = (doc["description"] or "Conference <number>, PIN <pin>").replace(
            "<number>", doc["number"]).replace("<pin>", doc["pin"])
        cal = icalendar.Calendar()
        cal.add("prodid", "-//hpbx//conference//EN")
        cal.add("version", "2.0")
        cal.add("method", "REQUEST")
        ev = icalendar.Event()
        ev.add("uid", f"{doc['id']}@hpbx")
        ev.add("dtstamp", datetime.now(timezone.utc))
        ev.add("dtstart", datetime.fromtimestamp(t0, timezone.utc))
        ev.add("dtend", datetime.fromtimestamp(t0, timezone.utc) + timedelta(minutes=doc["duration"]))
        ev.add("summary", doc["title"])
        ev.add("description", body)
        ev.add("location", doc["location"] or f"Tel. {doc['number']}, PIN {doc['pin']}")
        if doc["reply_to"]:
            ev.add("organizer", f"mailto:{doc['reply_to']}")
        ev.add("attendee", f"mailto:{addr}")
        cal.add_component(ev)
        self.stats["invitations"] += 1
        return self.mail.submit(to=addr, subject=doc["title"], body=body, tenant=doc["tenant"],
                                kind="conference", reply_to=doc["reply_to"], sender=sender,
                                attachments=[Attachment("invite.ics", "text/calendar",
                                                        cal.to_ical())])

    def _scheduled_by_pin(self, tenant: str, pin: str, now: float):
        if self.db is None:
            return None
        row = self.db.execute("SELECT doc FROM scheduled WHERE tenant = ? AND pin = ? AND opens <= ? "
                              "AND closes >= ?", (tenant, pin, now, now)).fetchone()
        return orjson.loads(row[0]) if row else None

    def scheduled(self, tenant: str | None = None) -> list[dict]:
        if self.db is None:
            return []
        q = "SELECT doc FROM scheduled" + (" WHERE tenant = ?" if tenant else "") + " ORDER BY opens"
        return [orjson.loads(r[0]) for r in self.db.execute(q, (tenant,) if tenant else ())]

    def cancel(self, tenant: str, cid: str) -> dict:
        cur = self.db.execute("DELETE FROM scheduled WHERE tenant = ? AND id = ?", (tenant, cid))
        if not cur.rowcount:
            raise NotFoundError(f"scheduled conference of tenant {tenant!r}", cid)
        return {"id": cid, "deleted": True}


def install(svc, settings) -> Conferences:
    """Answer numbers of usage ``conference`` with rooms (called once by the server)."""
    conf = Conferences(svc, settings, settings.store.path if settings.store.path else "")
    svc.conferences = conf
    media_channel.register_service("conference", conf.service, name="conference")
    return conf
