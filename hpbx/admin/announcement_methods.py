"""``announcement.create`` / ``announcement.update`` with the audio itself, and
``announcement.delete`` that also removes the stored audio (replacing the metadata-only
entries of the one method table).

The audio comes as ``audio`` (base64 of the file's bytes, over the socket or /rpc) or ``path``
(a file on the server's machine, read by the server: what ``hpbxctl announcement.create
path=greeting.mp3`` sends; only local socket peers may name a path). WAV of any rate, width and
channel count, or MP3; converted to 8 kHz 16-bit mono (hpbx/media/audio.py) and stored under
the media directory with its real duration. At most 3 min for an announcement, 10 min for
music. Any error names the field and nothing is stored.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import os

from hpbx.admin.context import AdminContext
from hpbx.admin.methods import METHODS, Method, Param, _need
from hpbx.admin.protocol import invalid_params
from hpbx.errors import ValidationError
from hpbx.media import audio
from hpbx.pbx.announcements import LIMIT_MS, new_file, remove_old, write_wav

MAX_PATH_BYTES = audio.MAX_INPUT_BYTES


def _media_dir(ctx: AdminContext) -> str:
    return ctx.settings.media.media_dir(ctx.settings.store.path)


def _raw_audio(p: dict) -> tuple[bytes, str] | None:
    if "audio" in p and "path" in p:
        raise ValidationError("audio", "give audio or path, not both")
    if "audio" in p:
        try:
            return base64.b64decode(p["audio"], validate=True), "audio"
        except (binascii.Error, ValueError):
            raise ValidationError("audio", "is not valid base64") from None
    if "path" in p:
        path = p["path"]
        try:
            st = os.stat(path)
        except OSError as exc:
            raise ValidationError("path", f"cannot read {path!r}: {exc.strerror}") from None
        if not os.path.isfile(path):
            raise ValidationError("path", f"{path!r} is not a regular file")
        if st.st_size > MAX_PATH_BYTES:
            raise ValidationError("path", f"{path!r} is {st.st_size} bytes; at most {MAX_PATH_BYTES} are taken")
        try:
            with open(path, "rb") as f:
                return f.read(), "path"
        except OSError as exc:
            raise ValidationError("path", f"cannot read {path!r}: {exc.strerror}") from None
    return None


async def _decode(p: dict, kind: str) -> audio.Decoded | None:
    raw = _raw_audio(p)
    if raw is None:
        return None
    data, field = raw
    what = "music" if kind == "music" else "an announcement"
    return await asyncio.to_thread(audio.decode, data, field=field, max_ms=LIMIT_MS[kind], what=what)


def _meta(p: dict) -> dict:
    return {k: v for k, v in p.items() if k not in ("audio", "path")}


async def announcement_create(ctx: AdminContext, p: dict) -> dict:
    prov = _need(ctx, "provisioning", "provisioning")
    kind = p.get("kind", "announcement")
    existing = prov.announcement_list(p["tenant"])  # unknown tenant: not found, nothing stored
    decoded = await _decode(p, kind)
    data = _meta(p)
    if decoded is None:
        return prov.announcement_create(data)
    if data.get("id") is None:
        data["id"] = max((a["id"] for a in prov.announcement_list(p["tenant"])), default=0) + 1
    elif any(a["id"] == data["id"] for a in existing):
        raise ValidationError("id", f"announcement {data['id']} already exists in tenant {p['tenant']!r}")
    rel, path = new_file(_media_dir(ctx), p["tenant"], data["id"])
    write_wav(path, decoded.pcm)
    try:
        out = prov.announcement_create({**data, "file": rel, "duration_ms": decoded.ms})
    except Exception:
        path.unlink(missing_ok=True)
        raise
    return {**out, "source": decoded.source}


async def announcement_update(ctx: AdminContext, p: dict) -> dict:
    prov = _need(ctx, "provisioning", "provisioning")
    old = prov.announcement_get(p["tenant"], p["id"])
    kind = p.get("kind", old["kind"])
    decoded = await _decode(p, kind)
    changes = {k: v for k, v in _meta(p).items() if k not in ("tenant", "id")}
    if decoded is None:
        if not changes:
            raise invalid_params("params", "announcement.update needs at least one field to change")
        if kind != old["kind"] and old["duration_ms"] > LIMIT_MS[kind]:
            raise ValidationError("kind", f"the audio is {old['duration_ms'] // 1000} s long; "
                                          f"{kind} may be at most {LIMIT_MS[kind] // 1000} s")
        return prov.announcement_update(p["tenant"], p["id"], changes)
    media_dir = _media_dir(ctx)
    rel, path = new_file(media_dir, p["tenant"], p["id"])
    write_wav(path, decoded.pcm)
    try:
        out = prov.announcement_update(p["tenant"], p["id"], {**changes, "file": rel,
                                                              "duration_ms": decoded.ms})
    except Exception:
        path.unlink(missing_ok=True)
        raise
    remove_old(media_dir, old["file"])
    return {**out, "source": decoded.source}


def announcement_delete(ctx: AdminContext, p: dict) -> dict:
    prov = _need(ctx, "provisioning", "provisioning")
    old = prov.announcement_get(p["tenant"], p["id"])
    out = prov.announcement_delete(p["tenant"], p["id"])  # refused while numbers or slots use it
    remove_old(_media_dir(ctx), old["file"])
    return out


_AUDIO = (Param("audio", "str", help="the audio file (WAV or MP3), base64"),
          Param("path", "str", help="or: an audio file on the server's machine (hpbxctl), read by the server"))


def _replace(name: str, handler, extra: tuple = (), help_suffix: str = "") -> None:
    old = METHODS[name]
    METHODS[name] = Method(name, handler, old.params + extra, old.help + help_suffix, old.columns)


_replace("announcement.create", announcement_create, _AUDIO,
         " With audio or path: WAV (any rate, width, channels) or MP3, converted to 8 kHz and "
         "stored with its real duration (announcement at most 3 min, music 10 min).")
_replace("announcement.update", announcement_update, _AUDIO, " audio or path replaces the audio.")
_replace("announcement.delete", announcement_delete, (),
         " Refused while a number's slot, a switch or the tenant's music on hold uses it.")
