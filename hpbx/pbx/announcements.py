"""Announcements on calls: a slot's announcement before and after its rows, slots of
announcements only, and the star codes ``*201`` + ID + ``#`` (listen) and ``*200`` + ID + ``#``
(record anew). Built on the media channel (hpbx/pbx/media_channel.py); ``install`` registers
them when the server starts (app.py) together with the prompt library.

How a call goes (README "Announcements"):

* before-announcement and rows: early media — 183 with hpbx's SDP, the announcement plays to
  its end (not interruptible), then the rows ring (``ch.ring``) and the caller hears ring-back
  from hpbx until a callee's early media or answer. The caller is not billed for it.
* rows exhausted (no answer, all busy, ...) and an after-announcement: the caller is answered
  (200) and hears it, then BYE (the slot's Voice2Mail, issue 11, may follow it).
* no rows: answered, before- then after-announcement, BYE.
* an announcement whose audio is missing is skipped (logged); the call goes on.

Storage: the converted audio lives in ``<media dir>/announcements/<tenant>/<id>-<stamp>.wav``;
the announcement's ``file`` names it. A new upload or recording gets a new file name, the
record is switched to it in one provisioning change, then the old file is removed: a call
playing the old audio finishes it, the next call hears the new one.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from hpbx.media import audio
from hpbx.media.prompts import PromptLibrary
from hpbx.pbx import media_channel

log = logging.getLogger("hpbx.pbx.announcements")

LIMIT_MS = {"announcement": 3 * 60 * 1000, "music": 10 * 60 * 1000}


# ---------------------------------------------------------------------- storage
def new_file(media_dir: str, tenant: str, ann_id: int) -> tuple[str, Path]:
    """(relative name, absolute path) for a new audio file of announcement ``ann_id``."""
    rel = f"announcements/{tenant}/{ann_id}-{time.time_ns() // 1000}.wav"
    path = Path(media_dir) / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    return rel, path


def write_wav(path: Path, pcm: bytes) -> None:
    """Written whole and fsync'd before anything refers to it."""
    tmp = path.with_suffix(".part")
    with open(tmp, "wb") as f:
        f.write(audio.wav_bytes(pcm))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def remove_old(media_dir: str, rel: str) -> None:
    """Delete a replaced audio file, only if hpbx stored it (under announcements/)."""
    if rel and rel.startswith("announcements/") and ".." not in rel.split("/"):
        try:
            (Path(media_dir) / rel).unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("old announcement file %s not removed: %s", rel, exc)


# ---------------------------------------------------------------------- call flow
def _lookup(svc, tenant: str, ann_id: int):
    try:
        return svc.provisioning.directory.objects(tenant).announcements.get(ann_id)
    except Exception:
        return None


def _prompt_of(ch, ann_id: int) -> str:
    lib = ch.service.prompts
    ann = _lookup(ch.service, ch.tenant, ann_id)
    if ann is None:
        log.warning("[%s] announcement %s of tenant %s missing: skipped", ch.id, ann_id, ch.tenant)
        return ""
    return lib.announcement(ch.tenant, ann)


async def _play_announcement(ch, ann_id: int) -> bool:
    name = _prompt_of(ch, ann_id) if ann_id else ""
    if not name:
        return False
    await ch.play(name)
    return True


async def before_then_ring(ch) -> None:
    played = await _play_announcement(ch, ch.plan.announcement_before)
    ch.result = f"before={ch.plan.announcement_before}" + ("" if played else " (missing)")
    await ch.ring(ch.plan.rows)


async def announcements_only(ch) -> None:
    done = []
    for ann_id in (ch.plan.announcement_before, ch.plan.announcement_after):
        if ann_id and await _play_announcement(ch, ann_id):
            done.append(str(ann_id))
    ch.result = "played " + ",".join(done) if done else "no announcement audio"


async def after(ch) -> None:
    played = await _play_announcement(ch, ch.plan.announcement_after)
    ch.result = f"after={ch.plan.announcement_after}" + ("" if played else " (missing)")


def slot_step(svc, plan):
    """Step "slot": what the call does before any row rings (None: ring the rows as usual)."""
    if getattr(svc, "prompts", None) is None or plan.kind != "dialplan":
        return None
    if not plan.rows:
        if plan.voice2mail:
            return None  # Voice2Mail answers (its greeting is the after-announcement)
        if plan.announcement_before or plan.announcement_after:
            return announcements_only, "answered", "announcement"
        return None
    if plan.announcement_before:
        return before_then_ring, "early", "announcement"
    return None


def after_step(svc, plan):
    """Step "announcement_after": the rows are exhausted."""
    if getattr(svc, "prompts", None) is None or not plan.announcement_after:
        return None
    return after, "answered", "announcement"


# ---------------------------------------------------------------------- star codes
async def _refuse(ch, prompt: str, result: str) -> None:
    ch.result = result
    names = ch.service.prompts.say(ch.language, [prompt, "goodbye"])
    if names:
        await ch.play(names)
    else:
        await ch.tone("congestion")


def _permitted(ch) -> bool:
    user = ch.caller_user
    return user is not None and bool(user.flags.may_manage_announcements)


async def star_listen(ch) -> None:
    """``*201`` + ID + ``#``: the announcement exactly as callers hear it."""
    if not _permitted(ch):
        await _refuse(ch, "not-permitted", "refused: may not manage announcements")
        return
    ann = _lookup(ch.service, ch.tenant, int(ch.star_arg)) if ch.star_arg.isdigit() else None
    name = ch.service.prompts.announcement(ch.tenant, ann) if ann is not None else ""
    if not name:
        await _refuse(ch, "invalid", f"unknown announcement {ch.star_arg!r}")
        return
    ch.result = f"played {ann.id}"
    await ch.play(name)


async def star_record(ch) -> None:
    """``*200`` + ID + ``#``: prompt, beep, record until ``#`` (or the length limit); the new
    audio is live for the next call. Hanging up before ``#`` keeps the old audio."""
    if not _permitted(ch):
        await _refuse(ch, "not-permitted", "refused: may not manage announcements")
        return
    svc = ch.service
    ann = _lookup(svc, ch.tenant, int(ch.star_arg)) if ch.star_arg.isdigit() else None
    if ann is None:
        await _refuse(ch, "invalid", f"unknown announcement {ch.star_arg!r}")
        return
    lib = svc.prompts
    intro = lib.say(ch.language, ["record-after-tone"])
    if intro:
        await ch.play(intro)
    ch.clear_digits()
    rel, path = new_file(str(lib.media_dir), ch.tenant, ann.id)
    tmp = path.with_suffix(".rec")
    rec = await ch.record(str(tmp), max_ms=LIMIT_MS[ann.kind], stop_digits="#", beep=True)
    if rec.get("reason") not in ("digit", "max", "silence") or rec.get("ms", 0) < 500:
        tmp.unlink(missing_ok=True)
        await _refuse(ch, "please-try-again", f"not recorded ({rec.get('reason')}, {rec.get('ms')} ms)")
        return
    os.replace(tmp, path)
    old = ann.file
    try:
        svc.provisioning.announcement_update(ch.tenant, ann.id, {"file": rel, "duration_ms": rec["ms"]})
    except Exception:
        path.unlink(missing_ok=True)
        raise
    remove_old(str(lib.media_dir), old)
    ch.result = f"recorded {ann.id}: {rec['ms']} ms"
    log.info("[%s] announcement %s/%s recorded anew by %s (%s ms)", ch.id, ch.tenant, ann.id,
             ch.caller_user.username, rec["ms"])
    saved = lib.say(ch.language, ["message-saved", "goodbye"])
    if saved:
        await ch.play(saved)


# ---------------------------------------------------------------------- wiring
def install(call_service, settings) -> PromptLibrary:
    """The prompt library of this server (``call_service.prompts``) and the announcement
    steps and star codes."""
    lib = PromptLibrary.from_settings(call_service.media, settings)
    call_service.prompts = lib
    media_channel.register_step("slot", slot_step)
    media_channel.register_step("announcement_after", after_step)
    media_channel.register_star_code("*201", star_listen, name="announcement-listen")
    media_channel.register_star_code("*200", star_record, name="announcement-record")
    return lib
