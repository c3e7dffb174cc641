"""Call recording (FEATURES 17): a user with ``may_record`` records their own answered call.

``call.record call_id= user= action=start|stop`` (admin). Starting ends both legs of the
call's relay session at media endpoints joined in a two-member engine room, so each party
still hears the other (through the mixer: decoded and encoded again, same codec), and records
what each leg receives; stopping (or the call's end) takes the legs back to plain relaying
(each leg keeps its outgoing RTP identity) and mixes the two files sample by sample into one
8 kHz mono WAV (both started at the same instant). The WAV is kept under
``recordings/<tenant>/`` for download (``recording.list``, ``recording.get``) and mailed to the
user's address (details.email, else the mailbox address) through the spool. A user without the
flag, or not a party of the call, is refused and nothing is recorded. Recordings are capped at
``MAX_MS``.

In-call code: ``*1`` (``TOGGLE_CODE``) pressed by a party during an answered call starts the
recording, pressed again stops it. The parties' legs keep relaying meanwhile: the relay's
worker watches their digits (``engine.watch_digits``: RFC 4733 of both sides' payload types,
in-band only when neither side offered telephone-event) and hands them here; while recording
the legs are media endpoints and their digit events come through ``next_event``. A party
without ``may_record`` is refused the same way as over the admin socket (counted, logged, no
file). The tenant's ``recording_notice`` ("" none, "prompt" = the system prompt
``call-recorded``, "announcement:<id>") plays to both parties when the recording starts.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from hpbx.errors import HpbxError, NotFoundError, ValidationError
from hpbx.pbx.voicemail import _fsync_write, _new_id, read_pcm, write_wav

log = logging.getLogger("hpbx.pbx.recording")

MAX_MS = 2 * 3600 * 1000
TOGGLE_CODE = "*1"        # in-call: start / stop recording (document it: README)
CODE_GAP_S = 3.0          # the digits of the code follow each other within this


class CallRecorder:
    def __init__(self, svc, mail, root: Path):
        self.svc = svc
        self.mail = mail
        self.root = Path(root)
        self.active: dict[str, dict] = {}  # call id -> recording state
        self._tasks: set[asyncio.Task] = set()
        self.stats = {"recordings_started": 0, "recordings_done": 0, "recordings_refused": 0,
                      "recording_codes": 0}
        self.watching: dict[str, dict[str, str]] = {}  # call id -> {leg: username} watched
        self._typed: dict[tuple[str, str], tuple[str, float]] = {}  # (call, leg) -> digits, time

    # ------------------------------------------------------------------ in-call code
    def observe(self, call, ended: bool) -> None:
        """CallService observer: the parties' legs of an answered call are watched for *1."""
        if ended:
            self.watching.pop(call.id, None)
            for leg in ("a", "b"):
                self._typed.pop((call.id, leg), None)
            return
        from hpbx.pbx.call import ANSWERED, Call
        if not isinstance(call, Call) or call.state != ANSWERED or call.media is None or call.winner is None:
            return
        want = {}
        if call.caller_user is not None:
            want["a"] = call.caller_user.username
        if call.winner.user:
            want["b"] = call.winner.user
        if not want or self.watching.get(call.id) == want:
            return
        from hpbx.pbx.media_channel import parse_offer
        sides = []
        for body in (call.a_msg.body, call.winner.last.body if call.winner.last is not None else b""):
            try:
                sides.append(parse_offer(body) if body else None)
            except HpbxError:
                sides.append(None)
        pts = tuple(dict.fromkeys(c["dtmf_pt"] for c in sides if c and c["dtmf_pt"] is not None))
        audio = next((c for c in sides if c), {"codec": "PCMA", "pt": 8})
        engine = self.svc.media
        for leg in ("a", "b"):
            try:
                if leg in want:
                    engine.watch_digits(call.id, leg, self._relayed_digit, dtmf_pts=pts[:2],
                                        inband=not pts, codec=audio["codec"], pt=audio["pt"])
                else:
                    engine.unwatch_digits(call.id, leg)
            except HpbxError as exc:
                log.info("[%s] digits of leg %s not watched: %s", call.id, leg, exc)
                want.pop(leg, None)
        self.watching[call.id] = want

    def _relayed_digit(self, ev) -> None:
        self.digit(ev.key, ev.leg, ev.data["digit"], ev.time)

    def digit(self, call_id: str, leg: str, digit: str, t: float) -> None:
        """A digit a party pressed during the call (relayed or, while recording, at the endpoint)."""
        typed, last = self._typed.get((call_id, leg), ("", 0.0))
        if t - last > CODE_GAP_S:
            typed = ""
        typed = (typed + digit)[-len(TOGGLE_CODE):]
        if typed != TOGGLE_CODE:
            self._typed[(call_id, leg)] = (typed, t)
            return
        self._typed.pop((call_id, leg), None)
        user = self.watching.get(call_id, {}).get(leg)
        if not user:
            return
        self.stats["recording_codes"] += 1
        try:
            if call_id in self.active:
                self.stop(call_id, user)
            else:
                self.start(call_id, user)
        except HpbxError as exc:
            log.info("[%s] %s by %s (in-call code) refused: %s", call_id, TOGGLE_CODE, user, exc)

    async def _digits_while_recording(self, key: str) -> None:
        engine = self.svc.media
        while key in self.active:
            try:
                ev = await engine.next_event(key, "digit")
            except HpbxError:
                return
            if ev is None:
                return
            self.digit(key, ev.leg, ev.data["digit"], ev.time)

    def _notice(self, call) -> None:
        """The tenant's "this call is recorded" notice to both parties (while it plays they
        hear it instead of each other; the file holds what the phones sent)."""
        tenant = self.svc.provisioning.directory.tenant(call.tenant)
        what = getattr(tenant, "recording_notice", "") if tenant is not None else ""
        lib = getattr(self.svc, "prompts", None)
        if not what or lib is None:
            return
        name = ""
        if what == "prompt":
            name = lib.system(tenant.language, "call-recorded")
        elif what.startswith("announcement:"):
            ann = self.svc.provisioning.directory.announcement(call.tenant, int(what.partition(":")[2]))
            name = lib.announcement(call.tenant, ann) if ann is not None else ""
        if not name:
            log.warning("[%s] recording notice %r has no audio", call.id, what)
            return
        for leg in ("a", "b"):
            try:
                self.svc.media.play(call.id, leg, [name])
            except HpbxError as exc:
                log.info("[%s] recording notice not played on %s: %s", call.id, leg, exc)

    def _call(self, call_id: str):
        from hpbx.pbx.call import ANSWERED, Call
        call = self.svc.calls.get(call_id)
        if call is None:
            raise NotFoundError("call", call_id)
        if not isinstance(call, Call) or call.state != ANSWERED or call.winner is None or call.media is None:
            raise ValidationError("call_id", f"call {call_id} is not an answered call with media")
        return call

    def start(self, call_id: str, username: str) -> dict:
        call = self._call(call_id)
        user = self.svc.provisioning.directory.user(username)
        parties = {u for u in (call.caller_user.username if call.caller_user else "", call.winner.user) if u}
        if user is None or username not in parties:
            self.stats["recordings_refused"] += 1
            raise ValidationError("user", f"{username} is not a party of call {call_id}")
        if not user.flags.may_record:
            self.stats["recordings_refused"] += 1
            raise ValidationError("user", f"{username} may not record calls (flag may_record is off)")
        if call_id in self.active:
            raise ValidationError("call_id", f"call {call_id} is already being recorded")
        from hpbx.pbx.media_channel import parse_offer
        answer = call.winner.last.body if call.winner.last is not None else b""
        try:
            codec = parse_offer(answer or call.a_msg.body)
        except HpbxError as exc:
            raise ValidationError("call_id", f"call {call_id}: media not recordable ({exc})") from None
        engine = self.svc.media
        rec_id = _new_id()
        d = self.root / call.tenant
        d.mkdir(parents=True, exist_ok=True)
        paths = {leg: d / f"{rec_id}.{leg}.part.wav" for leg in ("a", "b")}
        key = call.id
        room = engine.room_create()
        try:
            for leg in ("a", "b"):
                # no telephone-event negotiated: the stop code comes in-band
                engine.terminate(key, leg, codec=codec["codec"], pt=codec["pt"], ptime_ms=codec["ptime"],
                                 dtmf_pt=codec["dtmf_pt"], inband=codec["dtmf_pt"] is None)
                engine.room_join(room, key, leg)
            waits = [asyncio.ensure_future(engine.next_event(key, "record_done")) for _ in ("a", "b")]
            for leg in ("a", "b"):
                engine.record(key, leg, str(paths[leg]), max_ms=MAX_MS)
        except HpbxError:
            self._restore(key, room)
            raise
        state = {"id": rec_id, "call_id": key, "tenant": call.tenant, "user": username,
                 "room": room, "paths": paths, "started_at": time.time(), "caller": call.caller,
                 "callee": call.winner.ring.value}
        self.active[key] = state
        task = self.svc.loop.create_task(self._finish(state, waits))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        digits = self.svc.loop.create_task(self._digits_while_recording(key))
        state["digits"] = digits
        self._tasks.add(digits)
        digits.add_done_callback(self._tasks.discard)
        self._notice(call)
        self.stats["recordings_started"] += 1
        log.info("[%s] recording %s started by %s", key, rec_id, username)
        return {"id": rec_id, "call_id": key, "recording": True}

    def stop(self, call_id: str, username: str) -> dict:
        state = self.active.get(call_id)
        if state is None:
            raise ValidationError("call_id", f"call {call_id} is not being recorded")
        if username != state["user"]:
            user = self.svc.provisioning.directory.user(username)
            if user is None or not user.flags.may_record:
                raise ValidationError("user", f"{username} may not stop this recording")
        engine = self.svc.media
        for leg in ("a", "b"):
            try:
                engine.stop_record(call_id, leg)
            except HpbxError:
                pass
        return {"id": state["id"], "call_id": call_id, "recording": False}

    def _restore(self, key: str, room: int) -> None:
        engine = self.svc.media
        for leg in ("a", "b"):
            try:
                engine.room_leave(key, leg)
            except HpbxError:
                pass
        try:
            engine.bridge(key)
        except HpbxError:
            pass
        try:
            engine.room_delete(room)
        except HpbxError:
            pass

    async def _finish(self, state: dict, waits) -> None:
        try:
            await asyncio.gather(*waits, return_exceptions=True)
        finally:
            self.active.pop(state["call_id"], None)
            if state.get("digits") is not None:
                state["digits"].cancel()
            self._restore(state["call_id"], state["room"])
        try:
            meta = await asyncio.to_thread(self._mix, state)
        except Exception:
            log.exception("recording %s not finished", state["id"])
            return
        self.stats["recordings_done"] += 1
        log.info("recording %s: %d ms, %s", state["id"], meta["duration_ms"], meta.get("mail", ""))

    def _mix(self, state: dict) -> dict:
        parts = []
        for leg in ("a", "b"):
            p = state["paths"][leg]
            try:
                parts.append(read_pcm(p).astype(np.int32))
            except (OSError, EOFError, Exception):
                parts.append(np.zeros(0, dtype=np.int32))
        n = max(len(x) for x in parts)
        mixed = np.zeros(n, dtype=np.int32)
        for x in parts:
            mixed[:len(x)] += x
        mixed = np.clip(mixed, -32768, 32767).astype("<i2")
        d = self.root / state["tenant"]
        out = d / f"{state['id']}.wav"
        write_wav(out, mixed)
        for p in state["paths"].values():
            p.unlink(missing_ok=True)
        started = datetime.fromtimestamp(state["started_at"], timezone.utc)
        meta = {"id": state["id"], "tenant": state["tenant"], "user": state["user"],
                "call_id": state["call_id"], "caller": state["caller"], "callee": state["callee"],
                "started_at": started.isoformat(timespec="seconds"), "duration_ms": n // 8}
        user = self.svc.provisioning.directory.user(state["user"])
        to = (user.details.email or user.mailbox.email) if user is not None else ""
        if to and n:
            from hpbx.mail.spool import Attachment
            try:
                self.mail.submit(
                    to=[to], subject=f"Call recording {state['caller']} - {state['callee']}",
                    body=(f"Recording of the call between {state['caller']} and {state['callee']}, "
                          f"started {started:%Y-%m-%d %H:%M:%S} UTC, {n // 8} ms.\n"),
                    attachments=[Attachment(f"recording-{state['id']}.wav", "audio/wav", out.read_bytes())],
                    tenant=state["tenant"], kind="recording")
                meta["mail"] = f"mailed to {to}"
            except HpbxError as exc:
                meta["mail"] = f"not mailed: {exc}"
        _fsync_write(d / f"{state['id']}.json", json.dumps(meta).encode())
        return meta

    # ------------------------------------------------------------------ admin
    def list(self, tenant: str | None = None) -> list[dict]:
        out = []
        dirs = [self.root / tenant] if tenant else [p for p in self.root.glob("*") if p.is_dir()]
        for d in dirs:
            for p in d.glob("*.json"):
                try:
                    out.append(json.loads(p.read_bytes()))
                except (OSError, ValueError):
                    continue
        return sorted(out, key=lambda m: (m["started_at"], m["id"]))

    def get(self, rec_id: str) -> tuple[dict, bytes]:
        for m in self.list():
            if m["id"] == rec_id:
                return m, (self.root / m["tenant"] / f"{rec_id}.wav").read_bytes()
        raise NotFoundError("recording", rec_id)


def install(svc, mail, settings) -> CallRecorder:
    rec = CallRecorder(svc, mail, Path(settings.store.path).parent / "recordings")
    svc.recorder = rec
    svc.observers.append(rec.observe)
    return rec
