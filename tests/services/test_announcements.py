"""Announcements with their audio (issue 10): upload over the admin socket as base64 and as a
path (WAV of other rates/widths/channels, MP3 made by lame), the errors that store nothing,
the delete refusal naming number and slot; a slot of only an announcement answers a SIPp caller
whose own RTP socket hears the uploaded tone."""
from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
import time
import wave
from pathlib import Path

import numpy as np
import pytest

from harness import have_sipp, reserved_port
from callrig import CallRig, trunk, user, ALLDAYS
from media_peer import Peer, decode, dominant, encode, power, read_pcap_udp, read_wav, rtp_packet, send_paced, sine
from hpbx.admin.client import RpcError

SCEN = Path(__file__).parent / "scenarios"
pytestmark = [pytest.mark.sipp,
              pytest.mark.skipif(not have_sipp(), reason="sipp is not installed (sip-tester)")]

CARRIER = reserved_port()
TENANT = ('[tenant]\nname = "ann"\n' + trunk("carrier", CARRIER)
          + user("mgr", internal="31", flags=("may_manage_announcements",)) + user("plain", internal="32")
          + f'\n[[numbers]]\nnumber = "044777100"\n[[numbers.slots]]\nactive = true\ndays = {ALLDAYS}\n')


def tone_wav(freq, seconds, rate=8000, width=2, channels=1) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    x = 0.3 * np.sin(2 * np.pi * freq * t)
    if width == 1:
        data = ((x * 127) + 128).astype(np.uint8)
    elif width == 2:
        data = (x * 32767).astype("<i2")
    else:
        v = (x * 8388607).astype("<i4")
        data = np.frombuffer(v.tobytes(), np.uint8).reshape(-1, 4)[:, :3].copy()
    frames = np.repeat(data.reshape(len(t), -1), channels, axis=0).tobytes() if channels > 1 else data.tobytes()
    if channels > 1:
        frames = np.repeat(data.reshape(len(t), -1), channels, axis=1).tobytes()
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(frames)
    return out.getvalue()


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    d = tmp_path_factory.mktemp("ann")
    r = CallRig(d, TENANT)
    r.start()
    yield r
    r.stop()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_upload_wav_of_any_format_and_mp3_stored_with_real_duration(rig, tmp_path):
    a = rig.admin("announcement.create", tenant="ann", name="stereo 24-bit 44.1k",
                  audio=b64(tone_wav(700, 1.5, rate=44100, width=3, channels=2)))
    assert a["duration_ms"] == 1500 and a["file"].startswith("announcements/ann/"), a
    assert a["source"] == "wav 44100 Hz 24-bit 2 ch", a
    b = rig.admin("announcement.create", tenant="ann", name="8-bit 16k",
                  audio=b64(tone_wav(700, 2.0, rate=16000, width=1)))
    assert b["duration_ms"] == 2000, b
    if shutil.which("lame") is None:
        pytest.skip("lame is not installed: no MP3 to upload")
    src = tmp_path / "t.wav"
    src.write_bytes(tone_wav(1300, 3.0, rate=44100))
    subprocess.run(["lame", "--quiet", "-b", "64", str(src), str(tmp_path / "t.mp3")], check=True)
    m = rig.admin("announcement.create", tenant="ann", name="mp3", kind="music", path=str(tmp_path / "t.mp3"))
    assert m["source"].startswith("mp3 44100 Hz") and abs(m["duration_ms"] - 3000) < 100, m
    got = {x["id"]: x for x in rig.admin("announcement.list", tenant="ann")}
    assert got[m["id"]]["kind"] == "music" and got[m["id"]]["duration_ms"] == m["duration_ms"]


@pytest.mark.parametrize("params,field,words", [
    ({"audio": b64(b"this is not audio at all, just text")}, "audio", "not a WAV or MP3"),
    ({"audio": b64(tone_wav(700, 1.0)[:4000])}, "audio", "truncated"),
    ({"audio": "not base64!!"}, "audio", "base64"),
    ({"path": "LONG"}, "path", "is 3:01 long; an announcement may be at most 3:00"),
    ({"path": "/nonexistent/x.wav"}, "path", "cannot read"),
])
def test_bad_audio_is_refused_naming_the_field_and_nothing_is_stored(rig, tmp_path, params, field, words):
    if params.get("path") == "LONG":  # too big for one admin line as base64: given as a path
        (tmp_path / "long.wav").write_bytes(tone_wav(700, 181))
        params = {"path": str(tmp_path / "long.wav")}
    before = rig.admin("announcement.list", tenant="ann")
    files = sorted(p.name for p in rig.dir.rglob("announcements/ann/*"))
    with pytest.raises(RpcError) as err:
        rig.admin("announcement.create", tenant="ann", name="bad", **params)
    assert err.value.code == -32602 and err.value.data["field"] == field, err.value
    assert words in err.value.message, err.value.message
    assert rig.admin("announcement.list", tenant="ann") == before
    assert sorted(p.name for p in rig.dir.rglob("announcements/ann/*")) == files


def test_music_may_be_longer_than_an_announcement(rig, tmp_path):
    (tmp_path / "music.wav").write_bytes(tone_wav(500, 200))
    m = rig.admin("announcement.create", tenant="ann", name="long music", kind="music",
                  path=str(tmp_path / "music.wav"))
    assert m["duration_ms"] == 200_000
    with pytest.raises(RpcError) as err:
        rig.admin("announcement.update", tenant="ann", id=m["id"], kind="announcement")
    assert err.value.data["field"] == "kind"
    rig.admin("announcement.delete", tenant="ann", id=m["id"])
    assert not list(rig.dir.rglob(m["file"].split("/")[-1])), "the stored audio went with it"


def test_referenced_announcement_cannot_be_deleted(rig):
    a = rig.admin("announcement.create", tenant="ann", name="closed", audio=b64(tone_wav(1300, 1.0)))
    rig.admin("number.set_slots", number="044777100",
              slots=[{"active": True, "days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
                      "announcement_after": a["id"]}])
    with pytest.raises(RpcError) as err:
        rig.admin("announcement.delete", tenant="ann", id=a["id"])
    assert "number 044777100 slot 1" in err.value.message, err.value.message
    assert any(x["id"] == a["id"] for x in rig.admin("announcement.list", tenant="ann"))
    assert list(rig.dir.rglob(a["file"].split("/")[-1]))


def cdrs_of(rig, service, n=1, wait=3.0):
    """The CDRs of ``service`` once there are at least ``n`` (they are written in batches)."""
    deadline = time.monotonic() + wait
    while True:
        got = [c for c in rig.cdrs(wait=0) if c.get("service") == service]
        if len(got) >= n or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


def frames_of(packets):
    return [decode("PCMA", p.payload) for p in packets if p.pt == 8]


def test_slot_with_only_an_announcement_plays_it_and_hangs_up(rig):
    a = rig.admin("announcement.create", tenant="ann", name="opening hours", audio=b64(tone_wav(1300, 1.2)))
    rig.admin("number.set_slots", number="044777100",
              slots=[{"active": True, "days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
                      "announcement_after": a["id"]}])
    peer = Peer()
    try:
        caller = rig.sipp("call_uac_service.xml", service="044777100", port=CARRIER, timeout=15,
                          extra=["-key", "rtp_port", str(peer.port)], name="only")
        pkts = peer.recv(n=50, timeout=4)
        res = caller.finish()
        assert res.successful == 1, res.describe() + rig.server.log()
    finally:
        peer.close()
    pcm = np.concatenate(frames_of(pkts[5:50]))
    assert dominant(pcm, (425, 700, 1300)) == 1300 and power(pcm, 1300) > 1e5
    cdr = cdrs_of(rig, "announcement")[-1]
    assert cdr["answer"] and cdr["service_result"] == f"played {a['id']}", cdr
    rig.assert_idle()


def test_star_201_plays_for_a_permitted_user_and_refuses_others(rig):
    a = rig.admin("announcement.create", tenant="ann", name="star", audio=b64(tone_wav(700, 1.0)))
    for n, (who, expect) in enumerate((("mgr", f"played {a['id']}"),
                                       ("plain", "refused: may not manage announcements")), 1):
        peer = Peer()
        try:
            caller = rig.sipp(str(SCEN / "uac_auth_rtp.xml"), service=f"*201{a['id']}%23",
                              port=reserved_port(), timeout=15, name=f"star-{who}",
                              extra=["-au", who, "-ap", f"{who}-pw", "-key", "rtp_port", str(peer.port)])
            pkts = peer.recv(n=40, timeout=4)
            res = caller.finish()
            assert res.successful == 1, res.describe() + rig.server.log()
        finally:
            peer.close()
        cdr = cdrs_of(rig, "announcement-listen", n)[-1]
        assert cdr["service_result"] == expect, cdr
        pcm = np.concatenate(frames_of(pkts[5:40]))
        if who == "mgr":
            assert dominant(pcm, (425, 700, 1300)) == 700 and power(pcm, 700) > 1e5
        else:  # the "not permitted" prompt (speech), not the announcement's steady tone
            assert power(pcm, 700) < 1e5 and np.abs(pcm).max() > 500
    rig.assert_idle()


def classify(pcm_frames, freqs=(425, 700, 1300)):
    """Per 20 ms frame: the dominant one of ``freqs``, or 0 for silence."""
    out = []
    for f in pcm_frames:
        if np.abs(f).max() < 300:
            out.append(0)
        else:
            out.append(dominant(f, freqs))
    return out


def runs(labels, min_len=5):
    """The sequence of labels that last at least ``min_len`` frames, silence left out."""
    seq, cur, n = [], None, 0
    for x in labels + [None]:
        if x == cur:
            n += 1
            continue
        if cur and n >= min_len and (not seq or seq[-1] != cur):
            seq.append(cur)
        cur, n = x, 1
    return seq


def test_before_announcement_then_ringing_then_after_announcement(rig):
    before = rig.admin("announcement.create", tenant="ann", name="welcome", audio=b64(tone_wav(700, 1.5)))
    after = rig.admin("announcement.create", tenant="ann", name="all busy", audio=b64(tone_wav(1300, 1.0)))
    rig.admin("number.set_slots", number="044777100",
              slots=[{"active": True, "days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
                      "announcement_before": before["id"], "announcement_after": after["id"],
                      "rows": [{"duration": 3, "targets": ["user:mgr"]}]}])
    phone = rig.phone("mgr", "call_uas_ring.xml", timeout=15)
    peer = Peer()
    try:
        t0 = time.monotonic()
        caller = rig.sipp(str(SCEN / "uac_early_rtp.xml"), service="044777100", port=CARRIER, timeout=20,
                          extra=["-key", "rtp_port", str(peer.port)], name="before-after")
        pkts = peer.recv(n=400, timeout=8)
        res = caller.finish()
        ph = phone.finish()
    finally:
        peer.close()
    assert res.successful == 1, res.describe() + rig.server.log()
    assert res.received("SIP/2.0 183"), "the before-announcement is early media (183)"
    assert ph.received("INVITE") and ph.received("CANCEL"), ph.describe()
    labels = classify(frames_of(pkts))
    assert runs(labels) == [700, 425, 1300], (runs(labels), labels)
    # the phone rang only after the announcement: at least 1.5 s of 700 Hz came first
    assert labels.index(425) >= 70, labels.index(425)
    rig.assert_idle()


PCAP_POUND = "/usr/share/sip-tester/dtmf_2833_pound.pcap"


def answered_call(rig, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for c in rig.admin("call.list"):
            if c.get("state") == "answered" and c.get("media"):
                return c
        time.sleep(0.05)
    raise AssertionError(f"no answered service call: {rig.admin('call.list')}")


def is_beep(pcm) -> bool:
    """A 20 ms frame of the 1 kHz beep: nearly all its energy at 1 kHz."""
    ms = float(np.mean(pcm * pcm))
    return ms > 1e5 and power(pcm, 1000) > 0.7 * ms


def hear_until_beep_ends(peer, timeout=12.0):
    """Packets of the prompt and the beep, returned once the beep (>= 5 frames) has ended."""
    got, beeps = [], 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pkts = peer.recv(n=1, timeout=0.1)
        if not pkts:
            if beeps >= 5:
                return got  # the endpoint went quiet after the beep: recording
            continue
        got.append(pkts[0])
        if pkts[0].pt != 8:
            continue
        if is_beep(decode("PCMA", pkts[0].payload)):
            beeps += 1
        elif beeps >= 5:
            return got
    raise AssertionError(f"no beep heard ({len(got)} packets, {beeps} beep frames)")


def star_200(rig, who, ann_id, tone_hz, name):
    """``who`` dials *200<ann_id>#; after the beep its phone sends ``tone_hz`` for 1.2 s and
    SIPp's RFC 4733 "#" pcap; returns (SIPp result, packets heard before the beep ended or
    [] if no beep came, packets after)."""
    peer = Peer()
    heard, after = [], []
    try:
        caller = rig.sipp(str(SCEN / "uac_auth_rtp.xml"), service=f"*200{ann_id}%23",
                          port=reserved_port(), timeout=25, name=name,
                          extra=["-au", who, "-ap", f"{who}-pw", "-key", "rtp_port", str(peer.port)])
        call = answered_call(rig)
        port = call["media"]["a"]["port"]
        try:
            heard = hear_until_beep_ends(peer)
        except AssertionError:
            heard = None
        if heard is not None:
            time.sleep(0.05)
            pkts = []
            for i in range(60):
                pcm = sine(tone_hz, 20, 6000, phase=2 * np.pi * tone_hz * i * 0.02)
                pkts.append(rtp_packet(7000 + i, 160000 + 160 * i, 0x5EED, encode("PCMA", pcm)))
            send_paced(peer, port, pkts)
            send_paced(peer, port, [data for _, data in read_pcap_udp(PCAP_POUND)])
            after = peer.recv(n=400, timeout=8, idle=1.5)
        res = caller.finish()
    finally:
        peer.close()
    return res, heard, after


def test_star_200_records_an_announcement_anew_live_for_the_next_call(rig):
    """*200 + ID + #: "record after the tone", beep, the phone's audio until its RFC 4733 "#"
    (SIPp's own pcap), then "saved, goodbye" and BYE; the next caller of the slot hears the new
    audio. A user without the flag is refused and the audio stays as it was."""
    a = rig.admin("announcement.create", tenant="ann", name="to re-record", audio=b64(tone_wav(1300, 1.0)))
    old_file = rig.admin("announcement.get", tenant="ann", id=a["id"])["file"]

    # without the flag: the "not permitted" prompt, no beep, nothing recorded
    res, heard, _ = star_200(rig, "plain", a["id"], 500, "rec-plain")
    assert res.successful == 1, res.describe() + rig.server.log()
    assert heard is None, "a user without the flag heard the beep"
    cdr = cdrs_of(rig, "announcement-record")[-1]
    assert cdr["service_result"] == "refused: may not manage announcements", cdr
    assert rig.admin("announcement.get", tenant="ann", id=a["id"])["file"] == old_file

    # with the flag: recorded after the beep until "#"
    res, heard, after = star_200(rig, "mgr", a["id"], 900, "rec-mgr")
    assert res.successful == 1, res.describe() + rig.server.log()
    assert heard and len(heard) > 100, "the intro prompt (record after the tone) came first"
    intro = np.concatenate(frames_of(heard[:100]))
    assert np.abs(intro).max() > 500 and power(intro, 1000) < 0.5 * np.mean(intro * intro)
    assert len(after) > 50, "after #: 'saved, goodbye' is played before the BYE"
    cdr = cdrs_of(rig, "announcement-record", 2)[-1]
    m = re.fullmatch(rf"recorded {a['id']}: (\d+) ms", cdr["service_result"])
    assert m and 1000 <= int(m.group(1)) <= 3000, cdr  # 1.2 s of tone, then "#" (slack: a loaded box)
    rec = rig.admin("announcement.get", tenant="ann", id=a["id"])
    assert rec["file"] != old_file and rec["duration_ms"] == int(m.group(1)), rec
    assert not (rig.dir / "media" / old_file).exists(), "the old audio file was removed"
    rate, audio = read_wav(str(rig.dir / "media" / rec["file"]))
    assert rate == 8000 and power(audio, 900) > 100 * power(audio, 1300)

    # live for the next call: a slot of only this announcement plays the new 900 Hz
    rig.admin("number.set_slots", number="044777100",
              slots=[{"active": True, "days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
                      "announcement_after": a["id"]}])
    peer = Peer()
    try:
        caller = rig.sipp("call_uac_service.xml", service="044777100", port=CARRIER, timeout=15,
                          extra=["-key", "rtp_port", str(peer.port)], name="rec-next")
        pkts = peer.recv(n=50, timeout=4)
        res = caller.finish()
    finally:
        peer.close()
    assert res.successful == 1, res.describe() + rig.server.log()
    pcm = np.concatenate(frames_of(pkts[5:50]))
    assert dominant(pcm, (500, 900, 1300)) == 900 and power(pcm, 900) > 1e5
    rig.assert_idle()


def test_unknown_announcement_in_a_slot_is_refused_naming_the_field(rig):
    before = rig.admin("number.get", number="044777100")
    with pytest.raises(RpcError) as err:
        rig.admin("number.set_slots", number="044777100",
                  slots=[{"active": True, "days": ["mon"], "announcement_before": 99999}])
    assert err.value.code == -32602 and err.value.data["field"].endswith("announcement_before"), err.value
    assert "announcement 99999 does not exist" in err.value.message
    with pytest.raises(RpcError) as err:
        rig.admin("announcement.get", tenant="ann", id=99999)
    assert "not found" in err.value.message.lower(), err.value
    assert rig.admin("number.get", number="044777100") == before


def test_an_announcement_whose_audio_is_gone_is_skipped_and_the_call_goes_on(rig):
    """The audio file of a slot's before-announcement vanished from disk (an operator's
    clean-up): the step is skipped and logged, the rows ring and the callee answers."""
    a = rig.admin("announcement.create", tenant="ann", name="vanishing", audio=b64(tone_wav(700, 1.0)))
    (rig.dir / "media" / rig.admin("announcement.get", tenant="ann", id=a["id"])["file"]).unlink()
    rig.admin("number.set_slots", number="044777100",
              slots=[{"active": True, "days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
                      "announcement_before": a["id"], "rows": [{"duration": 10, "targets": ["user:mgr"]}]}])
    phone = rig.phone("mgr", "call_uas.xml", pause_ms=200, timeout=15)
    res = rig.call("call_uac.xml", "044777100", port=CARRIER, pause_ms=500, timeout=15)
    ph = phone.finish()
    assert res.successful == 1, res.describe() + rig.server.log()
    assert ph.successful == 1 and ph.received("INVITE"), ph.describe()
    cid = re.search(r"(?im)^Call-ID:\s*(\S+)", res.messages).group(1)
    deadline, cdr = time.monotonic() + 3, []
    while not cdr and time.monotonic() < deadline:  # CDRs are written in batches
        cdr = [c for c in rig.cdrs(wait=0) if c["call_id"] == cid]
        time.sleep(0.1)
    assert cdr and cdr[-1]["answered_by"] == "mgr" and cdr[-1]["answer"], cdr
    assert re.search(rf"announcement ann/{a['id']}: audio file .* missing or unreadable: skipped",
                     rig.server.log()), rig.server.log()[-3000:]
    rig.assert_idle()
