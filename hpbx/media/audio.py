"""Audio files in, 8 kHz 16-bit mono PCM out: what announcements and prompts are stored as.

``decode(data)`` takes the bytes of a WAV (any rate, 8/16/24/32-bit integer or float, any
channel count, also WAVE_FORMAT_EXTENSIBLE and RF64) or an MP3, checks it, and returns the
PCM the media engine plays (``engine.add_prompt``) with its real duration. The decoders are
libsndfile (through ``soundfile``; it reads MP3 with libmpg123) and libsoxr for the rate
conversion, both long-kept libraries; nothing here parses audio by hand except the WAV chunk
walk that tells a truncated file from a whole one (libsndfile reads a truncated data chunk
without complaint).

Bad input raises ``ValidationError`` naming the field: not audio, truncated, empty, too long.
"""
from __future__ import annotations

import io
import struct
import wave
from dataclasses import dataclass

import numpy as np

from hpbx.errors import ValidationError

RATE = 8000
MAX_INPUT_BYTES = 200 << 20  # a 10 min 48 kHz 24-bit stereo WAV is 173 MB


@dataclass(frozen=True, slots=True)
class Decoded:
    pcm: bytes  # 8 kHz s16le mono
    ms: int
    source: str  # "wav 44100 Hz 16-bit 2 ch" / "mp3 44100 Hz 2 ch"


def sniff(data: bytes) -> str:
    """"wav", "mp3" or "" (not a format hpbx takes)."""
    if len(data) >= 12 and data[:4] in (b"RIFF", b"RF64") and data[8:12] == b"WAVE":
        return "wav"
    if data[:3] == b"ID3":
        return "mp3"
    if len(data) >= 4 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0 and data[1] & 0x06:
        return "mp3"  # an MPEG audio frame sync (layer bits set)
    return ""


def _check_wav_chunks(data: bytes, field: str) -> None:
    """fmt before data, and a data chunk as long as its header says (RIFF; RF64 sizes live in
    ds64, trusted to libsndfile)."""
    if data[:4] == b"RF64":
        return
    pos, fmt_seen = 12, False
    while pos + 8 <= len(data):
        cid, size = data[pos:pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        if cid == b"fmt ":
            fmt_seen = True
        elif cid == b"data":
            if not fmt_seen:
                raise ValidationError(field, "WAV data chunk comes before its fmt chunk")
            have = len(data) - pos - 8
            if size != 0xFFFFFFFF and have < size:
                raise ValidationError(field, f"WAV file is truncated: data chunk holds {have} of "
                                             f"{size} bytes")
            return
        pos += 8 + size + (size & 1)
    raise ValidationError(field, "WAV file has no data chunk (truncated?)")


def decode(data: bytes, *, field: str = "audio", max_ms: int | None = None,
           what: str = "audio") -> Decoded:
    """Decode and convert to 8 kHz s16 mono; ``max_ms`` bounds the duration (error names it)."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ValidationError(field, "must be bytes")
    data = bytes(data)
    if not data:
        raise ValidationError(field, "is empty")
    if len(data) > MAX_INPUT_BYTES:
        raise ValidationError(field, f"is {len(data)} bytes; at most {MAX_INPUT_BYTES} are taken")
    kind = sniff(data)
    if not kind:
        raise ValidationError(field, "is not a WAV or MP3 file")
    if kind == "wav":
        _check_wav_chunks(data, field)
    import soundfile

    try:
        with soundfile.SoundFile(io.BytesIO(data)) as f:
            rate, channels = f.samplerate, f.channels
            if f.frames > 0 and max_ms is not None and f.frames * 1000 // rate > max_ms:
                raise ValidationError(field, _too_long(f.frames * 1000 // rate, max_ms, what))
            subtype = f.subtype
            x = f.read(dtype="float32", always_2d=True)
    except ValidationError:
        raise
    except (RuntimeError, soundfile.LibsndfileError, ValueError, EOFError) as exc:
        raise ValidationError(field, f"is not readable {kind.upper()} audio: {exc}") from None
    if x.shape[0] == 0:
        raise ValidationError(field, f"{kind.upper()} file holds no audio")
    ms = x.shape[0] * 1000 // rate
    if max_ms is not None and ms > max_ms:
        raise ValidationError(field, _too_long(ms, max_ms, what))
    if ms < 20:
        raise ValidationError(field, f"is {ms} ms long; at least 20 ms are needed")
    mono = x.mean(axis=1) if channels > 1 else x[:, 0]
    pcm = to_pcm8k(mono, rate)
    width = {"PCM_U8": "8-bit", "PCM_16": "16-bit", "PCM_24": "24-bit", "PCM_32": "32-bit",
             "FLOAT": "float", "DOUBLE": "double"}.get(subtype, subtype.lower())
    source = (f"wav {rate} Hz {width} {channels} ch" if kind == "wav"
              else f"mp3 {rate} Hz {channels} ch")
    return Decoded(pcm, len(pcm) // 16, source)


def _too_long(ms: int, max_ms: int, what: str) -> str:
    return f"is {_mmss(ms)} long; {what} may be at most {_mmss(max_ms)}"


def _mmss(ms: int) -> str:
    s = ms // 1000
    return f"{s // 60}:{s % 60:02d}"


def to_pcm8k(mono: np.ndarray, rate: int) -> bytes:
    """Float samples (-1..1) at ``rate`` -> 8 kHz s16le bytes (libsoxr, high quality)."""
    x = np.asarray(mono, dtype=np.float32)
    if rate != RATE:
        import soxr

        x = soxr.resample(x, rate, RATE, quality="HQ")
    return (np.clip(x, -1.0, 32767 / 32768) * 32768).astype("<i2").tobytes()


def wav_bytes(pcm: bytes, rate: int = RATE) -> bytes:
    """A 16-bit mono WAV file of ``pcm``."""
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)
    return out.getvalue()


def read_pcm8k(path: str) -> bytes:
    """The 8 kHz s16 mono PCM of a WAV file hpbx wrote or an operator dropped in (any WAV:
    converted when it is not already 8 kHz 16-bit mono)."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        with wave.open(io.BytesIO(data)) as w:
            if (w.getframerate(), w.getsampwidth(), w.getnchannels(), w.getcomptype()) == (RATE, 2, 1, "NONE"):
                return w.readframes(w.getnframes())
    except (wave.Error, EOFError):
        pass
    return decode(data, field=path).pcm
