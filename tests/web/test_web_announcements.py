"""Announcement audio over the web face: a WAV (16 kHz stereo) and an MP3 are uploaded as the
page does (multipart, session cookie + CSRF token), converted to 8 kHz mono 16-bit WAV with
their real length stored, and played back; what is not audio, too long or for another tenant
is refused with the field named and nothing is kept; a tenant admin cannot point an
announcement at another tenant's audio, directly or through an import."""
from __future__ import annotations

import io
import json
import shutil
import subprocess
import uuid
import wave
from pathlib import Path

import pytest


def need(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed")


def make_wav(path: Path, seconds: float, rate: int = 16000, channels: int = 2) -> Path:
    need("sox")
    subprocess.run(["sox", "-n", "-r", str(rate), "-c", str(channels), "-b", "16", str(path), "synth", str(seconds),
                    "sine", "440"], check=True, timeout=60)
    return path


def make_mp3(path: Path, seconds: float) -> Path:
    need("lame")
    wav = make_wav(path.with_suffix(".src.wav"), seconds, 44100, 1)
    subprocess.run(["lame", "--quiet", str(wav), str(path)], check=True, timeout=60)
    return path


def upload(rig, session, fields: dict, audio: bytes | None, filename: str = "a.wav", csrf: str | None = None) -> dict:
    boundary = uuid.uuid4().hex
    body = io.BytesIO()
    for k, v in fields.items():
        body.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode())
    if audio is not None:
        body.write(f'--{boundary}\r\nContent-Disposition: form-data; name="audio"; filename="{filename}"\r\n'
                   f'Content-Type: application/octet-stream\r\n\r\n'.encode() + audio + b"\r\n")
    body.write(f"--{boundary}--\r\n".encode())
    status, _, data = rig.request("POST", "/api/announcements", body.getvalue(), {
        "Content-Type": f"multipart/form-data; boundary={boundary}",
        "X-CSRF-Token": session.csrf if csrf is None else csrf}, session.opener)
    answer = json.loads(data)
    answer["_status"] = status
    return answer


def media_files(rig) -> set[str]:
    root = rig.server.dir / "media" / "announcements"
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()} if root.exists() else set()


def test_upload_convert_play_replace(rig, tmp_path):
    s = rig.session("demoadm")
    wav = make_wav(tmp_path / "hello.wav", 2.5)
    a = upload(rig, s, {"name": "Hello", "kind": "announcement"}, wav.read_bytes())
    assert a["_status"] == 200, a
    ann = a["result"]
    assert ann["tenant"] == "demo" and ann["name"] == "Hello" and ann["file"].startswith("announcements/demo/")
    assert 2400 <= ann["duration_ms"] <= 2600
    status, headers, audio = rig.request("GET", f"/api/announcements/demo/{ann['id']}.wav", opener=s.opener)
    assert status == 200 and headers["Content-Type"] == "audio/wav"
    with wave.open(io.BytesIO(audio)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (8000, 1, 2)
        assert 19000 <= w.getnframes() <= 21000
    # the same id with an MP3: the audio is replaced, the old file goes
    mp3 = make_mp3(tmp_path / "music.mp3", 4)
    b = upload(rig, s, {"id": str(ann["id"]), "kind": "music"}, mp3.read_bytes(), "music.mp3")
    assert b["_status"] == 200, b
    assert b["result"]["id"] == ann["id"] and b["result"]["kind"] == "music" and b["result"]["name"] == "Hello"
    assert 3900 <= b["result"]["duration_ms"] <= 4200 and b["result"]["file"] != ann["file"]
    assert media_files(rig) == {b["result"]["file"].removeprefix("announcements/")}
    with rig.admin() as adm:
        assert adm.call("announcement.get", tenant="demo", id=ann["id"])["file"] == b["result"]["file"]
        audit = adm.call("audit.list", {"who": "web:demoadm", "method": "announcement.update", "limit": 1})
    assert audit and audit[0]["params"]["file"] == b["result"]["file"]


def test_bad_uploads_keep_nothing(rig, tmp_path):
    s = rig.session("demoadm")
    before = media_files(rig)
    with rig.admin() as adm:
        count = len(adm.call("announcement.list", tenant="demo"))
    not_audio = upload(rig, s, {"name": "x"}, b"this is a text file, not audio\n" * 10, "x.wav")
    assert not_audio["error"]["data"]["field"] == "audio" and "neither" in not_audio["error"]["data"]["reason"]
    broken = upload(rig, s, {"name": "x"}, b"RIFF\x00\x00\x00\x00WAVEfmt garbage", "x.wav")
    assert broken["error"]["data"]["field"] == "audio"
    long = upload(rig, s, {"name": "long"}, make_wav(tmp_path / "long.wav", 181, 8000, 1).read_bytes())
    assert long["error"]["data"]["field"] == "audio" and "at most 180 s" in long["error"]["data"]["reason"]
    wav = make_wav(tmp_path / "ok.wav", 0.5).read_bytes()
    assert upload(rig, s, {"name": "x"}, None)["error"]["data"]["field"] == "audio"
    assert upload(rig, s, {"name": "x", "kind": "jingle"}, wav)["error"]["data"]["field"] == "kind"
    assert upload(rig, s, {"tenant": "other", "name": "x"}, wav)["error"]["code"] == -32004
    assert upload(rig, s, {"name": "x"}, wav, csrf="forged")["_status"] == 403
    assert media_files(rig) == before
    with rig.admin() as adm:
        assert len(adm.call("announcement.list", tenant="demo")) == count


def test_other_tenants_audio_stays_out_of_reach(rig, tmp_path):
    s, o = rig.session("demoadm"), rig.session("otheradm")
    wav = make_wav(tmp_path / "o.wav", 0.5).read_bytes()
    theirs = upload(rig, o, {"name": "other's"}, wav)["result"]
    assert theirs["tenant"] == "other"
    # play: as if it did not exist; with no session at all: 401
    assert rig.request("GET", f"/api/announcements/other/{theirs['id']}.wav", opener=s.opener)[0] == 404
    assert rig.request("GET", f"/api/announcements/other/{theirs['id']}.wav")[0] == 401
    assert rig.request("GET", f"/api/announcements/other/{theirs['id']}.wav", opener=o.opener)[0] == 200
    # point an own announcement at their file, or outside the media folders
    for file in (theirs["file"], "../hpbx.sqlite3", "announcements/other/x.wav", "welcome.wav"):
        answer = s.rpc("announcement.create", {"name": "steal", "file": file})
        assert answer["error"]["code"] == -32004 and answer["error"]["data"]["field"] == "file", (file, answer)
    with rig.admin() as adm:
        demo = adm.call("tenant.export", name="demo")
    toml = demo + f'\n[[announcements]]\nid = 900\nname = "steal"\nfile = "{theirs["file"]}"\n'
    answer = s.rpc("tenant.import", {"toml": toml, "replace": True})
    assert answer["error"]["data"]["field"] == "announcements[0].file" or \
        answer["error"]["data"]["field"].endswith(".file"), answer
    with rig.admin() as adm:
        assert adm.call("tenant.export", name="demo") == demo
    # its own export imports again unchanged
    assert s.rpc("tenant.import", {"toml": demo, "replace": True})["result"]["tenant"] == "demo"
    # an operator may point at any file of the media directory
    with rig.admin() as adm:
        assert adm.call("announcement.create", tenant="demo", name="shared", file="shared/moh.wav")["file"] == "shared/moh.wav"
