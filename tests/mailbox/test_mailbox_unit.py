"""The mailbox settings on the user (validation, TOML round trip), a bad Voice2Mail address
refused naming slot and field, the message store, and the judging of a finished recording
(too short, silent, trailing silence cut) — without a server."""
from __future__ import annotations

import email
import email.policy
import json
import shutil
import subprocess
import types

import numpy as np
import pytest

from hpbx.errors import NotFoundError, ValidationError
from hpbx.mail.spool import MailSpool
from hpbx.settings import SmtpSettings
from hpbx.pbx.model import PublicNumber, User
from hpbx.pbx.stored import rebuild
from hpbx.pbx.voicemail import MailboxStore, Recording, Voicemail, number_prompts, read_pcm, write_wav


def _user(**mailbox):
    return User.from_dict({"tenant": "t", "username": "anna", "sip_password": "secret",
                           "internal_number": "21", "mailbox": mailbox})


def test_mailbox_settings_defaults_round_trip_and_errors():
    u = _user()
    assert (u.mailbox.enabled, u.mailbox.timeout, u.mailbox.keep, u.mailbox.pin) == (False, 20, True, "")
    assert "mailbox" not in u.to_dict(compact=True)
    u = _user(enabled=True, pin="0042", email="a@example.com", timeout=15, keep=False, greeting=3)
    assert User.from_dict(u.to_dict()) == u == rebuild(User, u.to_dict())
    assert u.to_dict(compact=True)["mailbox"] == {"enabled": True, "pin": "0042", "email": "a@example.com",
                                                  "timeout": 15, "keep": False, "greeting": 3}
    for bad, field in (({"pin": "12a4"}, "mailbox.pin"), ({"email": "nope"}, "mailbox.email"),
                       ({"timeout": 0}, "mailbox.timeout"), ({"colour": 1}, "mailbox.colour")):
        with pytest.raises(ValidationError) as err:
            _user(**bad)
        assert err.value.field == field, err.value


def test_a_voice2mail_address_that_is_no_address_names_slot_and_field():
    with pytest.raises(ValidationError) as err:
        PublicNumber.from_dict({"tenant": "t", "number": "0441234567",
                                "slots": [{}, {}, {"voice2mail": "sales at acme"}]})
    assert err.value.field == "slots[2].voice2mail" and "e-mail address" in str(err.value)


def test_message_store(tmp_path):
    store = MailboxStore(tmp_path)
    for i, t in enumerate(("2026-12-03T10:00:00+00:00", "2026-12-03T09:00:00+00:00")):
        wav = tmp_path / f"m{i}.wav"
        write_wav(wav, np.zeros(800, dtype="<i2"))
        store.add("anna", wav, {"id": f"m{i}", "caller": "22", "caller_name": "", "received_at": t,
                                "duration_ms": 100, "state": "new"})
    assert [m["id"] for m in store.list("anna")] == ["m1", "m0"]  # oldest first
    store.mark("anna", "m1", "old")
    assert store.counts("anna") == (1, 1)
    assert [m["id"] for m in store.list("anna")] == ["m0", "m1"]  # new before old
    store.delete("anna", "m0")
    assert store.counts("anna") == (0, 1) and not (tmp_path / "anna" / "m0.wav").exists()
    with pytest.raises(NotFoundError):
        store.delete("anna", "m0")
    with pytest.raises(ValidationError):
        store.mark("anna", "m1", "urgent")


def _vm(tmp_path, fmt="wav"):
    tenant = types.SimpleNamespace(timezone="Europe/Zurich", voicemail_format=fmt)
    directory = types.SimpleNamespace(tenant=lambda name: tenant)
    svc = types.SimpleNamespace(provisioning=types.SimpleNamespace(directory=directory))
    spool = MailSpool(SmtpSettings(sender="pbx@example.com"), tmp_path / "spool")
    spool.open()  # the real spool, its sender not started: submitted mail stays on disk
    return Voicemail(svc, spool, tmp_path)


def _spooled(vm) -> list:
    return [email.message_from_bytes(p.read_bytes(), policy=email.policy.default)
            for p in sorted(vm.mail.dir.glob("*.eml"))]


def _rec(vm, pcm, **kw):
    r = Recording(id="r1", kind="voice2mail", tenant="t", caller="0311112222", caller_name="",
                  dialled="044", slot=3, slot_name="Day", to="a@example.com", started_at=1e9, **kw)
    write_wav(vm.pending / "r1.wav", pcm)
    (vm.pending / "r1.json").write_text(json.dumps(r.__dict__))
    return r


def tone(secs, amp=8000.0):
    t = np.arange(int(secs * 8000)) / 8000
    return (amp * np.sin(2 * np.pi * 700 * t)).astype("<i2")


def test_too_short_and_silent_recordings_are_discarded(tmp_path):
    vm = _vm(tmp_path)
    assert vm.finish(_rec(vm, tone(1.5)), "hangup") == "discarded (too short)"
    assert vm.finish(_rec(vm, np.zeros(8000 * 5, dtype="<i2")), "hangup") == "discarded (no audio)"
    assert _spooled(vm) == [] and list(vm.pending.iterdir()) == []


def test_silence_that_stopped_the_recording_is_cut_and_the_mail_says_it_all(tmp_path):
    vm = _vm(tmp_path)
    pcm = np.concatenate([tone(3), np.zeros(5 * 8000, dtype="<i2")])
    assert vm.finish(_rec(vm, pcm), "silence").startswith("3000 ms, mailed to a@example.com")
    [mail] = _spooled(vm)
    assert mail["To"] == "a@example.com" and vm.mail.queue()[0]["kind"] == "voice2mail"
    body = mail.get_body(("plain",)).get_content()
    assert 'slot 3 "Day"' in body and "Duration: 0:03" in body, body
    [att] = list(mail.iter_attachments())
    assert att.get_content_type() == "audio/wav"
    wav = tmp_path / "out.wav"
    wav.write_bytes(att.get_content())
    assert len(read_pcm(wav)) == 3 * 8000
    assert list(vm.pending.iterdir()) == []


def test_number_prompts():
    assert number_prompts(0) == ["digits/0"] and number_prompts(20) == ["digits/20"]
    assert number_prompts(42) == ["digits/40", "digits/2"] and number_prompts(30) == ["digits/30"]
    assert number_prompts(123) == ["digits/1", "digits/2", "digits/3"]


@pytest.mark.skipif(shutil.which("mpg123") is None, reason="mpg123 is not installed (the MP3 check decodes with it)")
def test_mp3_attachment_for_a_tenant_that_chose_mp3_decodes_to_the_tone(tmp_path):
    vm = _vm(tmp_path, "mp3")
    assert "mailed to a@example.com" in vm.finish(_rec(vm, tone(3)), "digit")
    [mail] = _spooled(vm)
    [att] = list(mail.iter_attachments())
    assert att.get_content_type() == "audio/mpeg" and att.get_filename().endswith(".mp3")
    mp3 = tmp_path / "m.mp3"
    mp3.write_bytes(att.get_content())
    raw = subprocess.run(["mpg123", "-q", "-s", "-m", "-r", "8000", str(mp3)], capture_output=True,
                         check=True).stdout
    pcm = np.frombuffer(raw, dtype="<i2").astype(np.float64)
    assert 2.9 <= len(pcm) / 8000 <= 3.3, len(pcm)
    spec = np.abs(np.fft.rfft(pcm[4000:20000]))
    assert abs(np.fft.rfftfreq(16000, 1 / 8000)[int(np.argmax(spec))] - 700) < 10


def test_tenant_recording_notice_round_trip_and_errors():
    from hpbx.pbx.model import Tenant
    t = Tenant.from_dict({"name": "t", "recording_notice": "announcement:7"})
    assert t.recording_notice == "announcement:7" and Tenant.from_dict(t.to_dict()) == t
    assert "recording_notice" not in Tenant.from_dict({"name": "t"}).to_dict(compact=True)
    assert Tenant.from_dict({"name": "t", "recording_notice": "prompt"}).recording_notice == "prompt"
    for bad in ("announcement:0", "loud", "announcement:x"):
        with pytest.raises(ValidationError) as err:
            Tenant.from_dict({"name": "t", "recording_notice": bad})
        assert err.value.field == "recording_notice", err.value


def test_spoken_numbers_and_prompts_exist_for_every_name_the_mailbox_plays():
    """Every prompt name voicemail.py plays is a system prompt (else callers hear nothing)."""
    import re
    from pathlib import Path
    from hpbx.media.prompts import PROMPTS
    from hpbx.pbx import voicemail
    from hpbx.pbx.voicemail import PROMPT_ALIASES, spoken_number
    src = Path(voicemail.__file__).read_text()
    names = set(re.findall(r'"(vm-[A-Za-z-]+)"', src))
    names |= {n for k in (0, 9, 13, 20, 21, 45, 59) for n in spoken_number(k, "de") + spoken_number(k, "en")}
    names |= {f"digits/day-{i}" for i in range(7)} | {f"digits/mon-{i}" for i in range(12)}
    missing = sorted(n for n in names if PROMPT_ALIASES.get(n, n) not in PROMPTS)
    assert not missing, missing
    assert spoken_number(21, "de") == ["digits/1", "vm-and", "digits/20"]
    assert spoken_number(21, "en") == ["digits/20", "digits/1"] and spoken_number(20, "de") == ["digits/20"]
