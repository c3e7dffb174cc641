"""Announcement audio of the web face: upload (WAV or MP3, converted to what the media engine
plays: 8 kHz mono 16-bit PCM WAV) and playback in the browser.

Files live in the media directory (``[http] media_dir``; "" = ``media`` beside the store file)
under ``announcements/<tenant>/<random>.wav``; an announcement's ``file`` field names that path
relative to the media directory. A tenant admin may only point ``file`` at its own tenant's
folder (hpbx.admin.scope), so neither the page nor a phone can be made to play another
tenant's audio. Limits (FEATURES §7): announcements 3 min, music on hold 10 min, uploads 25 MB.
"""
from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import wave
from pathlib import Path, PurePosixPath

from hpbx.errors import ValidationError

MAX_UPLOAD = 25 << 20
MAX_SECONDS = {"announcement": 180, "music": 600}
FOLDER = "announcements"


def media_dir(settings) -> Path:
    configured = getattr(settings.http, "media_dir", "")
    return Path(configured) if configured else Path(settings.store.path).parent / "media"


def tenant_folder(tenant: str) -> str:
    return f"{FOLDER}/{tenant}/"


def own_file(tenant: str, file: str) -> bool:
    """``file`` (relative to the media directory) lies in the tenant's own folder."""
    parts = PurePosixPath(file).parts
    return len(parts) == 3 and parts[0] == FOLDER and parts[1] == tenant and parts[2] not in ("", ".", "..")


def resolve(settings, file: str) -> Path | None:
    """The file on disk, or None when it is not a plain file inside the media directory."""
    if not file or file.startswith("/") or ".." in file.split("/"):
        return None
    root = media_dir(settings).resolve()
    path = (root / file).resolve()
    if root not in path.parents or not path.is_file():
        return None
    return path


def _kind_of(head: bytes) -> str:
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "wav"
    if head[:3] == b"ID3" or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):
        return "mp3"
    return ""


async def _run(*argv: str) -> tuple[int, bytes]:
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 120)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        return -1, b"timed out"
    return proc.returncode, out


async def convert(upload: Path, target: Path, kind: str) -> int:
    """Convert an uploaded WAV or MP3 to 8 kHz mono 16-bit WAV at ``target``; its length in ms.
    Raises ValidationError("file", ...) for what is not audio or too long; nothing is left
    behind then."""
    with open(upload, "rb") as fh:
        head = fh.read(16)
    fmt = _kind_of(head)
    if not fmt:
        raise ValidationError("file", "is neither a WAV nor an MP3 file")
    if shutil.which("sox") is None:
        raise ValidationError("file", "cannot be converted: sox is not installed on the server")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".part.wav")
    src = str(upload)
    decoded = None
    try:
        if fmt == "mp3":
            # mpg123 decodes every MP3 sox's build may not (no libsox-fmt-mp3 needed)
            decoded = upload.with_suffix(".dec.wav")
            rc, out = await _run("mpg123", "-q", "-w", str(decoded), src)
            if rc != 0 or not decoded.exists():
                raise ValidationError("file", "is not a readable MP3 file")
            src = str(decoded)
        rc, out = await _run("sox", "-V1", src, "-r", "8000", "-c", "1", "-b", "16", "-e", "signed-integer",
                             str(tmp))
        if rc != 0:
            raise ValidationError("file", f"is not a readable {fmt.upper()} file: {out.decode(errors='replace').strip()[:200]}")
        with wave.open(str(tmp), "rb") as w:
            ms = w.getnframes() * 1000 // w.getframerate()
        limit = MAX_SECONDS.get(kind, 180)
        if ms == 0:
            raise ValidationError("file", "holds no audio")
        if ms > limit * 1000:
            raise ValidationError("file", f"is {ms / 1000:.0f} s long; at most {limit} s for {kind}")
        os.replace(tmp, target)
        return ms
    finally:
        for p in (tmp, decoded):
            if p is not None:
                try:
                    p.unlink()
                except FileNotFoundError:
                    pass


def new_name(tenant: str) -> str:
    return f"{tenant_folder(tenant)}{secrets.token_hex(8)}.wav"
