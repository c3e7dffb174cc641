"""Voice2Mail (a dial-plan slot's mailbox, FEATURES 8.1) and user mailboxes (8.2), as media
services on the media channel (hpbx.pbx.media_channel).

When a call's rows end unanswered (``media_channel.register_after_rows``):

* a public number's call (plan kind ``dialplan``) whose slot has a Voice2Mail address: the
  caller hears the slot's after-announcement as greeting (else the default prompt), a beep,
  and is recorded until hang-up, ``#``, 5 s of silence or 3 min. The WAV (8 kHz mono) is
  mailed to the address of the slot that was active when the call arrived (a LINK's target
  slot when the LINK was followed: router.py). Nothing goes to the user mailboxes: a call
  that came through a dial plan never reaches one.
* an internal call to a user (plan kind ``internal``, the user rung directly) whose mailbox is
  enabled: the user's greeting (an announcement, else the default prompts with the user's
  number and "unavailable"/"on the phone"), a beep, the same recording; the message is kept
  on the server (``keep``) and/or mailed to the mailbox address, and the user's phones get an
  MWI NOTIFY (hpbx.pbx.mwi).

A recording shorter than 2 s (after the trailing silence that stopped it is cut) or without
audio (RMS below ``SILENT_RMS``: all silence, or no RTP at all) is discarded. Before the
recording starts its metadata is written next to it in ``pending/`` (fsync'd); the mail is
built and spooled (hpbx.mail.spool, fsync'd) once the recording is complete, and only then
are the pending files removed: a crash in between leaves both, and the next start finishes
them (``recover``). A tenant whose spool quota is used up gets no further mail (the message
is still kept in a user's mailbox).

Mailbox access (star codes, phones' "voicemail" key): ``*97`` from one's own phone (no PIN),
``*98`` from any phone of the tenant: mailbox (internal number) then PIN, each ended by ``#``
(``*98`` + number dials the mailbox straight away). The menu: new and old counts, then each
message (new first, oldest first) with its date, time and caller read out; a message played
is old. During or after a message: ``5`` repeat, ``6`` next, ``4`` previous, ``7`` delete,
``9`` save (keep it, old), ``#`` end. Prompts are engine prompt names (the Asterisk sound set's
names: vm-intro, vm-youhave, digits/5, ...); a prompt not loaded is skipped (the beep and the
menu still work).
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import time
import wave
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np

from hpbx.errors import HpbxError, NotFoundError, ValidationError
from hpbx.pbx import media_channel

log = logging.getLogger("hpbx.pbx.voicemail")

MAX_MS = 180_000  # 3 min
SILENCE_MS = 5_000
MIN_MS = 2_000
SILENT_RMS = 30.0  # s16 RMS below this (about -60 dBov) is "no audio"
OWN_CODE, OTHER_CODE = "*97", "*98"
PIN_TRIES = 3
MENU_DIGITS = "0123456789*#"


def _fsync_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_pcm(path: Path) -> np.ndarray:
    with wave.open(str(path), "rb") as w:
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")


def write_wav(path: Path, pcm: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with wave.open(str(tmp), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(pcm.astype("<i2").tobytes())
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def repair_wav(path: Path) -> None:
    """A recording cut by a crash has a zero header (the engine writes it at the end)."""
    size = path.stat().st_size
    n = max(0, (size - 44) // 2)
    with open(path, "rb") as f:
        f.seek(44)
        data = f.read(n * 2)
    write_wav(path, np.frombuffer(data, dtype="<i2"))


def to_mp3(wav: bytes) -> bytes:
    """8 kHz mono WAV -> MP3 (LAME through lameenc, 32 kbit/s: 240 kB a minute)."""
    import io

    import lameenc
    with wave.open(io.BytesIO(wav), "rb") as w:
        pcm = w.readframes(w.getnframes())
    enc = lameenc.Encoder()
    enc.set_bit_rate(32)
    enc.set_in_sample_rate(8000)
    enc.set_channels(1)
    enc.set_quality(2)
    return bytes(enc.encode(pcm) + enc.flush())


def number_prompts(n: int) -> list[str]:
    """Asterisk digit prompts for 0..99, digit by digit above."""
    if n < 0:
        return []
    if n <= 20:
        return [f"digits/{n}"]
    if n < 100:
        tens, ones = divmod(n, 10)
        return [f"digits/{tens * 10}"] + ([f"digits/{ones}"] if ones else [])
    return [f"digits/{d}" for d in str(n)]


def digit_prompts(text: str) -> list[str]:
    return [f"digits/{c}" for c in text if c.isdigit()]


# the Asterisk names this module plays -> the system prompt (hpbx.media.prompts.PROMPTS) that
# holds that recording (in the tenant's language); names not listed are PROMPTS keys themselves
PROMPT_ALIASES = {"vm-intro": "leave-message", "vm-youhave": "you-have", "vm-INBOX": "new",
                  "vm-messages": "messages", "vm-message": "message", "vm-deleted": "deleted",
                  "vm-msgsaved": "message-saved", "vm-goodbye": "goodbye", "vm-login": "mailbox-number",
                  "vm-password": "enter-pin", "vm-advopts": "mailbox-options"}


def spoken_number(n: int, language: str) -> list[str]:
    """number_prompts in the word order of ``language`` (German: "ein und zwanzig")."""
    if language.startswith("de") and 20 < n < 100 and n % 10:
        return [f"digits/{n % 10}", "vm-and", f"digits/{n - n % 10}"]
    return number_prompts(n)


@dataclass
class Recording:
    """What is known of a message before it is recorded (written to pending/ as JSON)."""

    id: str
    kind: str  # "voice2mail" or "mailbox"
    tenant: str
    caller: str
    caller_name: str
    dialled: str
    slot: int = 0
    slot_name: str = ""
    linked: str = ""  # after a LINK: the number whose slot took the message (slot is its slot)
    to: str = ""  # e-mail address ("" = not mailed)
    owner: str = ""  # mailbox: the username
    keep: bool = False
    started_at: float = 0.0

    @classmethod
    def from_dict(cls, d: dict) -> "Recording":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


class MailboxStore:
    """Messages kept on the server: ``ROOT/<username>/<id>.wav`` + ``<id>.json``
    {id, caller, caller_name, received_at, duration_ms, state new|old}."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def _dir(self, username: str) -> Path:
        return self.root / username

    def add(self, username: str, wav: Path, meta: dict) -> dict:
        d = self._dir(username)
        d.mkdir(parents=True, exist_ok=True)
        os.replace(wav, d / f"{meta['id']}.wav")
        _fsync_write(d / f"{meta['id']}.json", json.dumps(meta).encode())
        _fsync_dir(d)
        return meta

    def list(self, username: str) -> list[dict]:
        d = self._dir(username)
        if not d.is_dir():
            return []
        out = []
        for p in d.glob("*.json"):
            try:
                out.append(json.loads(p.read_bytes()))
            except (OSError, ValueError):
                log.warning("mailbox %s: unreadable message %s skipped", username, p.name)
        out.sort(key=lambda m: (m["state"] != "new", m["received_at"], m["id"]))
        return out

    def counts(self, username: str) -> tuple[int, int]:
        msgs = self.list(username)
        new = sum(1 for m in msgs if m["state"] == "new")
        return new, len(msgs) - new

    def get(self, username: str, msg_id: str) -> dict:
        p = self._dir(username) / f"{msg_id}.json"
        if not p.exists():
            raise NotFoundError("message", msg_id)
        return json.loads(p.read_bytes())

    def wav_path(self, username: str, msg_id: str) -> Path:
        return self._dir(username) / f"{msg_id}.wav"

    def mark(self, username: str, msg_id: str, state: str) -> dict:
        if state not in ("new", "old"):
            raise ValidationError("state", "must be new or old")
        meta = self.get(username, msg_id)
        if meta["state"] != state:
            meta["state"] = state
            _fsync_write(self._dir(username) / f"{msg_id}.json", json.dumps(meta).encode())
        return meta

    def delete(self, username: str, msg_id: str) -> None:
        d = self._dir(username)
        if not (d / f"{msg_id}.json").exists():
            raise NotFoundError("message", msg_id)
        (d / f"{msg_id}.json").unlink()
        (d / f"{msg_id}.wav").unlink(missing_ok=True)


class Voicemail:
    """The running voicemail: recordings, the mailbox store, mail, MWI (``svc.voicemail``)."""

    def __init__(self, svc, mail, root: Path):
        self.svc = svc
        self.mail = mail
        self.root = Path(root)
        self.pending = self.root / "pending"
        self.pending.mkdir(parents=True, exist_ok=True)
        self.store = MailboxStore(self.root / "mailboxes")
        self.mwi = None  # hpbx.pbx.mwi.Mwi
        self._tasks: set[asyncio.Task] = set()
        self.stats = {"voicemail_recorded": 0, "voicemail_mailed": 0, "voicemail_discarded": 0,
                      "voicemail_kept": 0, "voicemail_mail_refused": 0}

    # ------------------------------------------------------------------ call flow
    def after_rows(self, call, status: int):
        """media_channel's after-rows factory: (name, service) or None."""
        plan = call.plan
        if plan.kind == "dialplan":
            if not plan.voice2mail:
                return None
            return "voice2mail", lambda ch: self._leave(ch, self._voice2mail(ch), self._v2m_greeting(ch))
        if plan.kind == "internal" and plan.rows and plan.rows[0].targets:
            ring = plan.rows[0].targets[0]
            if ring.kind != "user" or not ring.via.startswith("user:"):
                return None  # a group, or an unconditional forward
            owner = self.svc.provisioning.directory.user(ring.value)
            if owner is None or not owner.mailbox.enabled:
                return None
            return "mailbox", lambda ch: self._leave(ch, self._mailbox(ch, owner),
                                                     self._user_greeting(ch, owner, status))
        return None

    def transfer_failed(self, call, transferor, plan, status: int) -> bool:
        """transfer.target_failed: a blind transfer's target is busy or unreachable; True when
        the target's mailbox took the caller (the transferor then gets NOTIFY 200 and a BYE)."""
        if not plan.rows or not plan.rows[0].targets:
            return False
        ring = plan.rows[0].targets[0]
        owner = self.svc.provisioning.directory.user(ring.value) if ring.kind == "user" else None
        if owner is None or not owner.mailbox.enabled or call.media is None:
            return False
        media_channel.take_over_answered(
            call, lambda ch: self._leave(ch, self._mailbox(ch, owner), self._user_greeting(ch, owner, status)),
            name="mailbox", plan=plan)
        return True

    def _caller_name(self, ch) -> str:
        if ch.caller_user is not None:
            return ch.caller_user.details.full_name()
        return (ch.a_msg.from_addr.display or "").strip('"')

    def _voice2mail(self, ch) -> Recording:
        plan = ch.plan
        # after a LINK the linked number's slot took the call (its address, its name in the mail)
        linked = len(plan.links) > 1 and bool(getattr(plan, "voice2mail_slot", 0))
        return Recording(id=_new_id(), kind="voice2mail", tenant=ch.tenant, caller=ch.caller,
                         caller_name=self._caller_name(ch), dialled=plan.dialled,
                         slot=plan.voice2mail_slot if linked else plan.slot,
                         slot_name=plan.voice2mail_slot_name if linked else plan.slot_name,
                         linked=plan.links[-1] if linked else "", to=plan.voice2mail,
                         started_at=time.time())

    def _mailbox(self, ch, owner) -> Recording:
        box = owner.mailbox
        return Recording(id=_new_id(), kind="mailbox", tenant=ch.tenant, caller=ch.caller,
                         caller_name=self._caller_name(ch), dialled=ch.plan.dialled,
                         to=box.email or owner.details.email, owner=owner.username, keep=box.keep,
                         started_at=time.time())

    def _say(self, ch, names: list[str]) -> list[str]:
        """Engine prompt names for ``names`` (Asterisk names, PROMPTS keys, or engine names
        already loaded: a message, an announcement), in the tenant's language; a prompt found
        nowhere is left out (logged once by the library)."""
        engine = ch.engine
        lib = getattr(self.svc, "prompts", None)
        out = []
        for n in names:
            if engine.has_prompt(n):
                out.append(n)
            elif lib is not None:
                got = lib.system(ch.language, PROMPT_ALIASES.get(n, n))
                if got:
                    out.append(got)
        return out

    def _v2m_greeting(self, ch) -> list[str]:
        ann = self.announcement_prompt(ch.tenant, ch.plan.announcement_after)
        return [ann] if ann else ["vm-intro"]

    def _user_greeting(self, ch, owner, status: int) -> list[str]:
        ann = self.announcement_prompt(ch.tenant, owner.mailbox.greeting)
        if ann:
            return [ann]
        return (["vm-theperson", *digit_prompts(owner.internal_number or owner.username),
                 "vm-isonphone" if status in (486, 600) else "vm-isunavail", "vm-intro"])

    def announcement_prompt(self, tenant: str, ann_id: int) -> str:
        """The engine prompt of a tenant's announcement, loaded from its file if need be."""
        if not ann_id:
            return ""
        name = f"announcement:{tenant}:{ann_id}"
        engine = self.svc.media
        if engine.has_prompt(name):
            return name
        objs = self.svc.provisioning.directory.objects(tenant)
        ann = objs.announcements.get(ann_id) if objs is not None else None
        if ann is None or not ann.file:
            return ""
        lib = getattr(self.svc, "prompts", None)
        if lib is not None:  # the stored file, relative to the media folder (issue 10)
            got = lib.announcement(tenant, ann)
            if got:
                return got
        try:
            with wave.open(ann.file, "rb") as w:
                if (w.getframerate(), w.getnchannels(), w.getsampwidth()) != (8000, 1, 2):
                    log.warning("announcement %s/%s: not 8 kHz 16-bit mono, not used", tenant, ann_id)
                    return ""
                engine.add_prompt(name, w.readframes(w.getnframes()))
        except (OSError, wave.Error, HpbxError) as exc:
            log.warning("announcement %s/%s not loaded: %s", tenant, ann_id, exc)
            return ""
        return name

    async def _leave(self, ch, rec: Recording, greeting: list[str]) -> None:
        """Greeting, beep, record; the message is finished (mailed/kept) even if the caller
        hangs up during the recording (the task below outlives the channel)."""
        ch.result = rec.kind
        await ch.play(self._say(ch, greeting))
        ch.clear_digits()
        wav = self.pending / f"{rec.id}.wav"
        _fsync_write(self.pending / f"{rec.id}.json", json.dumps(rec.__dict__).encode())
        engine = ch.engine
        ch._check()
        try:
            engine.record(ch.id, "a", str(wav), max_ms=MAX_MS, silence_ms=SILENCE_MS,
                          stop_digits="#", beep=True)
        except HpbxError:
            (self.pending / f"{rec.id}.json").unlink(missing_ok=True)
            wav.unlink(missing_ok=True)
            raise
        ch.result = f"{rec.kind}: recording"  # what the CDR says when the caller hangs up
        done = asyncio.ensure_future(engine.next_event(ch.id, "record_done", MAX_MS / 1000 + 30))
        task = asyncio.get_running_loop().create_task(self._finish_after(done, rec, ch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        result = await asyncio.shield(task)
        ch.result = f"{rec.kind}: {result}"

    async def _finish_after(self, done, rec: Recording, ch) -> str:
        ev = await done
        reason = ev.data.get("reason", "") if ev is not None else "timeout"
        if ev is None:
            try:
                ch.engine.stop_record(ch.id, "a")
            except HpbxError:
                pass
        result = await asyncio.to_thread(self.finish, rec, reason)
        ch.result = f"{rec.kind}: {result}"
        return result

    # ------------------------------------------------------------------ finishing a message
    def finish(self, rec: Recording, reason: str) -> str:
        """The recording is complete: discard, mail and/or keep it; the pending files go."""
        wav = self.pending / f"{rec.id}.wav"
        meta = self.pending / f"{rec.id}.json"
        try:
            pcm = read_pcm(wav) if wav.exists() else np.zeros(0, dtype="<i2")
        except (OSError, wave.Error, EOFError):
            pcm = np.zeros(0, dtype="<i2")
        if reason == "silence":
            pcm = pcm[:max(0, len(pcm) - SILENCE_MS * 8)]
        ms = len(pcm) // 8
        rms = float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2))) if len(pcm) else 0.0
        if ms < MIN_MS or rms < SILENT_RMS:
            self.stats["voicemail_discarded"] += 1
            wav.unlink(missing_ok=True)
            meta.unlink(missing_ok=True)
            why = "too short" if ms < MIN_MS else "no audio"
            log.info("%s %s discarded: %s (%d ms, rms %.1f)", rec.kind, rec.id, why, ms, rms)
            return f"discarded ({why})"
        self.stats["voicemail_recorded"] += 1
        if reason == "silence":
            write_wav(wav, pcm)
        data = wav.read_bytes()
        received = datetime.fromtimestamp(rec.started_at or time.time(), timezone.utc)
        outcome = []
        if rec.to:
            try:
                self._mail(rec, data, ms, received)
                outcome.append(f"mailed to {rec.to}")
                self.stats["voicemail_mailed"] += 1
            except HpbxError as exc:  # quota used up, bad address
                self.stats["voicemail_mail_refused"] += 1
                log.warning("%s %s not mailed: %s", rec.kind, rec.id, exc)
                outcome.append(f"not mailed: {exc}")
        if rec.kind == "mailbox" and (rec.keep or not rec.to):
            self.store.add(rec.owner, wav, {
                "id": rec.id, "caller": rec.caller, "caller_name": rec.caller_name,
                "received_at": received.isoformat(timespec="seconds"), "duration_ms": ms,
                "state": "new"})
            self.stats["voicemail_kept"] += 1
            outcome.append("kept")
        wav.unlink(missing_ok=True)
        meta.unlink(missing_ok=True)
        if rec.kind == "mailbox" and self.mwi is not None:
            self.svc.loop.call_soon_threadsafe(self.mwi.mailbox_changed, rec.owner)
        log.info("%s %s from %s (%d ms): %s", rec.kind, rec.id, rec.caller, ms, ", ".join(outcome))
        return f"{ms} ms, " + ", ".join(outcome)

    def _zone(self, tenant: str):
        t = self.svc.provisioning.directory.tenant(tenant)
        try:
            return ZoneInfo(t.timezone if t is not None else "Europe/Zurich")
        except (ValueError, KeyError):
            return timezone.utc

    def _mail(self, rec: Recording, data: bytes, ms: int, received: datetime) -> str:
        from hpbx.mail.spool import Attachment
        zone = self._zone(rec.tenant)
        local = received.astimezone(zone)
        who = f"{rec.caller_name} <{rec.caller}>" if rec.caller_name else rec.caller
        secs = round(ms / 1000)
        if rec.kind == "voice2mail":
            subject = f"Voice message from {who} for {rec.dialled}"
            where = [f"Dialled number: {rec.dialled}",
                     (f"Dial plan: {rec.linked} (LINK from {rec.dialled}) slot {rec.slot}" if rec.linked
                      else f"Dial plan: slot {rec.slot}")
                     + (f" \"{rec.slot_name}\"" if rec.slot_name else "")]
        else:
            subject = f"Voice message from {who} in mailbox {rec.dialled}"
            where = [f"Mailbox: {rec.owner} ({rec.dialled})"]
        body = "\n".join([
            "You have a new voice message.", "",
            f"Caller: {rec.caller}" + (f" ({rec.caller_name})" if rec.caller_name else ""),
            *where,
            f"Received: {local:%Y-%m-%d %H:%M:%S} {local.tzname()} ({zone})",
            f"Duration: {secs // 60}:{secs % 60:02d} ({ms} ms)", ""])
        name = f"voicemail-{local:%Y%m%d-%H%M%S}-{''.join(c for c in rec.caller if c.isalnum())[:20]}"
        tenant = self.svc.provisioning.directory.tenant(rec.tenant)
        if getattr(tenant, "voicemail_format", "wav") == "mp3":
            att = Attachment(name + ".mp3", "audio/mpeg", to_mp3(data))
        else:
            att = Attachment(name + ".wav", "audio/wav", data)
        return self.mail.submit(to=[rec.to], subject=subject, body=body, attachments=[att],
                                tenant=rec.tenant, kind=rec.kind, timezone_name=str(zone))

    def recover(self) -> int:
        """Messages a crash left in pending/: finished now (their WAV header repaired)."""
        n = 0
        for meta in sorted(self.pending.glob("*.json")):
            try:
                rec = Recording.from_dict(json.loads(meta.read_bytes()))
            except (OSError, ValueError, TypeError):
                log.error("voicemail: unreadable pending %s kept aside as .bad", meta.name)
                meta.rename(meta.with_suffix(".bad"))
                continue
            wav = self.pending / f"{rec.id}.wav"
            if wav.exists():
                try:
                    repair_wav(wav)
                except OSError as exc:
                    log.error("voicemail %s: recording unreadable: %s", rec.id, exc)
            self.finish(rec, "recovered")
            n += 1
        for tmp in self.pending.glob("*.tmp"):
            tmp.unlink(missing_ok=True)
        if n:
            log.info("voicemail: %d messages left by an earlier run finished", n)
        return n

    # ------------------------------------------------------------------ mailbox access
    def user_for_mailbox(self, tenant: str, number: str):
        directory = self.svc.provisioning.directory
        user = directory.user_by_internal(tenant, number)
        if user is None:
            other = directory.user(number)
            user = other if other is not None and other.tenant == tenant else None
        return user if user is not None and user.mailbox.enabled else None

    async def own_mailbox(self, ch) -> None:
        owner = ch.caller_user
        if owner is None or not owner.mailbox.enabled:
            ch.result = "no mailbox"
            await ch.play(self._say(ch, ["vm-nobox"]))
            await ch.tone("congestion")
            return
        await self._menu(ch, owner)

    async def other_mailbox(self, ch) -> None:
        owner = None
        number = ch.star_arg
        for _ in range(PIN_TRIES):
            if not number:
                await ch.play(self._say(ch, ["vm-login"]), barge_in=MENU_DIGITS)
                number = await ch.collect_digits(max=6, timeout=5, first_timeout=8)
            owner = self.user_for_mailbox(ch.tenant, number) if number else None
            if owner is not None and owner.mailbox.pin:
                await ch.play(self._say(ch, ["vm-password"]), barge_in=MENU_DIGITS)
                pin = await ch.collect_digits(max=12, timeout=5, first_timeout=8)
                if secrets.compare_digest(pin, owner.mailbox.pin):
                    break
            owner, number = None, ""
            ch.result = "wrong mailbox or PIN"
            await ch.play(self._say(ch, ["vm-incorrect"]))
            await ch.tone("congestion")
        if owner is None:
            await ch.play(self._say(ch, ["vm-goodbye"]))
            return
        await self._menu(ch, owner)

    async def _menu(self, ch, owner) -> None:
        name = owner.username
        store = self.store
        new, old = store.counts(name)
        ch.result = f"mailbox {name}: {new} new, {old} old"
        lang = ch.language
        await ch.play(self._say(ch, ["vm-youhave", *spoken_number(new, lang), "vm-INBOX", "vm-and",
                                     *spoken_number(old, lang), "vm-Old", "vm-messages"]),
                      barge_in=MENU_DIGITS)
        msgs = store.list(name)
        if not msgs:
            await ch.play(self._say(ch, ["vm-nomore"]))
            await ch.tone("beep")
            return
        zone = self._zone(owner.tenant)
        i, heard, deleted = 0, 0, 0
        while 0 <= i < len(msgs):
            m = msgs[i]
            digit = await self._play_message(ch, owner, m, zone)
            if m["state"] == "new":
                m = msgs[i] = store.mark(name, m["id"], "old")
                heard += 1
                self._changed(name)
            if not digit:
                await ch.play(self._say(ch, ["vm-advopts"]), barge_in=MENU_DIGITS)
                digit = await ch.collect_digits(max=1, timeout=8, terminator="")
            if digit == "5":
                continue
            if digit == "4":
                i = max(0, i - 1)
            elif digit == "7":
                store.delete(name, m["id"])
                deleted += 1
                self._changed(name)
                del msgs[i]
                await ch.play(self._say(ch, ["vm-deleted"]))
            elif digit == "9":
                await ch.play(self._say(ch, ["vm-msgsaved"]))
                i += 1
            elif digit == "#":
                break
            else:  # "6", a timeout, anything else: the next message
                i += 1
            ch.result = f"mailbox {name}: heard {heard}, deleted {deleted}"
        await ch.play(self._say(ch, ["vm-nomore" if i >= len(msgs) else "vm-goodbye"]))
        await ch.tone("beep")

    async def _play_message(self, ch, owner, m: dict, zone) -> str:
        """The envelope (date, time, caller) and the message; the digit that stopped it or ""."""
        ch.clear_digits()
        t = datetime.fromisoformat(m["received_at"]).astimezone(zone)
        lang = ch.language
        # Asterisk's day-0 is Sunday (Python's weekday 0 is Monday)
        envelope = ["vm-received", f"digits/day-{(t.weekday() + 1) % 7}", *spoken_number(t.day, lang),
                    f"digits/mon-{t.month - 1}", *spoken_number(t.hour, lang), *spoken_number(t.minute, lang),
                    "vm-from-phonenumber", *digit_prompts(m["caller"])]
        digit = await ch.play(self._say(ch, envelope), barge_in=MENU_DIGITS)
        if digit:
            return await self._take_digit(ch)
        prompt = f"message:{owner.username}:{m['id']}"
        engine = ch.engine
        try:
            if not engine.has_prompt(prompt):
                engine.add_prompt(prompt, read_pcm(self.store.wav_path(owner.username, m["id"])).tobytes())
        except (OSError, wave.Error, EOFError, HpbxError) as exc:
            log.warning("mailbox %s: message %s not playable: %s", owner.username, m["id"], exc)
            return ""
        try:
            digit = await ch.play([prompt], barge_in=MENU_DIGITS)
        finally:
            try:
                engine.remove_prompt(prompt)
            except HpbxError:
                pass
        return await self._take_digit(ch) if digit else ""

    async def _take_digit(self, ch) -> str:
        return await ch.collect_digits(max=1, timeout=0.5, terminator="")

    def _changed(self, username: str) -> None:
        if self.mwi is not None:
            self.mwi.mailbox_changed(username)

    # ------------------------------------------------------------------ admin
    def list_messages(self, username: str) -> list[dict]:
        self._owner(username)
        return self.store.list(username)

    def counts(self, username: str) -> dict:
        self._owner(username)
        new, old = self.store.counts(username)
        return {"username": username, "new": new, "old": old}

    def delete_message(self, username: str, msg_id: str) -> dict:
        self._owner(username)
        self.store.delete(username, msg_id)
        self._changed(username)
        return {"username": username, "id": msg_id, "deleted": True}

    def mark_message(self, username: str, msg_id: str, state: str) -> dict:
        self._owner(username)
        meta = self.store.mark(username, msg_id, state)
        self._changed(username)
        return meta

    def message_audio(self, username: str, msg_id: str) -> bytes:
        self._owner(username)
        self.store.get(username, msg_id)
        return self.store.wav_path(username, msg_id).read_bytes()

    def _owner(self, username: str):
        user = self.svc.provisioning.directory.user(username)
        if user is None:
            raise NotFoundError("user", username)
        return user


def _new_id() -> str:
    return f"{time.time_ns() // 1000:016d}-{secrets.token_hex(3)}"


def install(svc, mail, dispatcher, settings) -> Voicemail:
    """Wire Voicemail into the running server (app.py): after-rows step, star codes, MWI."""
    from hpbx.pbx import mwi
    root = Path(settings.store.path).parent / "voicemail"
    vm = Voicemail(svc, mail, root)
    svc.voicemail = vm
    vm.recover()
    media_channel.register_after_rows(vm.after_rows)
    from hpbx.pbx import transfer
    transfer.target_failed = vm.transfer_failed
    media_channel.register_star_code(OWN_CODE, vm.own_mailbox, name="mailbox")
    media_channel.register_star_code(OTHER_CODE, vm.other_mailbox, name="mailbox-login")
    vm.mwi = mwi.install(svc, vm, dispatcher, settings)
    from hpbx.pbx import missed
    vm.missed = missed.install(svc, mail)
    from hpbx.pbx import recording
    vm.recorder = recording.install(svc, mail, settings)
    from hpbx.pbx import push
    vm.push = push.install(svc)
    return vm
