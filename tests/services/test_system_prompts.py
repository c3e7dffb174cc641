"""System prompts as callers hear them (issue 10): a SIPp caller's own RTP socket receives the
refusal of ``*201`` ("not permitted", then "goodbye"), and the test finds in it, byte for byte,
the A-law of the prompt file the lookup should have chosen (encoded here by CPython's own G.711),
frame by frame:

* the tenant's language picks the folder: German (the espeak-ng set ``make build`` wrote) by
  default, English (Debian's recordings) after ``tenant.update language=en``;
* an operator's drop-in ``<media>/prompts/<lang>/<name>.wav`` replaces one prompt, file by file
  (the other prompt still comes from the built set), without a restart;
* a language folder only the operator provides (``fr``, with one file) is used where it has
  the file, English elsewhere.
"""
from __future__ import annotations

import io
import time
import wave
from pathlib import Path

import numpy as np
import pytest

from harness import have_sipp, reserved_port
from callrig import CallRig, trunk, user
from media_peer import Peer, encode, pcm_bytes, sine

pytestmark = [pytest.mark.sipp,
              pytest.mark.skipif(not have_sipp(), reason="sipp is not installed (sip-tester)")]

SCEN = Path(__file__).parent / "scenarios"
BUILT = Path(__file__).resolve().parents[2] / "build" / "prompts"
TENANT = ('[tenant]\nname = "sp"\n' + trunk("carrier", reserved_port()) + user("plain", internal="32"))


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    for lang in ("de", "en"):
        for name in ("not-permitted", "goodbye"):
            if not (BUILT / lang / f"{name}.wav").exists():
                pytest.skip(f"{BUILT}/{lang}/{name}.wav missing: run make build")
    r = CallRig(tmp_path_factory.mktemp("prompts"), TENANT)
    r.start()
    yield r
    r.stop()


def alaw_of(path: Path) -> bytes:
    """The A-law a player sends for a 8 kHz 16-bit mono WAV, whole 20 ms frames only."""
    with wave.open(str(path), "rb") as w:
        assert (w.getframerate(), w.getsampwidth(), w.getnchannels()) == (8000, 2, 1), path
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64)
    data = encode("PCMA", pcm)
    return data[:len(data) // 160 * 160]


def tone_wav(path: Path, freq: float, ms: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(pcm_bytes(sine(freq, ms, 6000)))
    path.write_bytes(out.getvalue())
    return path


def refusal_heard(rig, name: str) -> bytes:
    """What user "plain" hears after dialling *201 1 # (not permitted): the A-law payloads in
    arrival order, until the service hangs up."""
    peer = Peer()
    try:
        caller = rig.sipp(str(SCEN / "uac_auth_rtp.xml"), service="*2011%23", port=reserved_port(),
                          timeout=20, name=name,
                          extra=["-au", "plain", "-ap", "plain-pw", "-key", "rtp_port", str(peer.port)])
        pkts = peer.recv(n=2000, timeout=15, idle=1.5)
        res = caller.finish()
    finally:
        peer.close()
    assert res.successful == 1, res.describe() + rig.server.log()
    pkts = sorted((p for p in pkts if p.pt == 8), key=lambda p: p.seq)
    return b"".join(p.payload for p in pkts)


def frames_heard(heard: bytes, f: Path) -> list[int]:
    """Where each 20 ms frame of ``f`` that is not (near) silence was found in ``heard`` (-1:
    not found). Frame by frame, so that a slot the engine skipped under a loaded box (a stall
    of 3 ptimes skips audio, README "Media engine") costs one frame, not the whole match."""
    want = alaw_of(f)
    frames = [want[i:i + 160] for i in range(0, len(want), 160)]
    return [heard.find(c) for c in frames if len(set(c)) > 8]


def assert_heard_in_order(heard: bytes, *files: Path) -> None:
    """Each file heard (at least 90 % of its frames, byte for byte), in this order."""
    last = -1
    for f in files:
        pos = frames_heard(heard, f)
        found = sorted(p for p in pos if p >= 0)
        assert pos and len(found) >= 0.9 * len(pos), f"{f}: {len(found)} of {len(pos)} frames heard"
        middle = found[len(found) // 2]
        assert middle > last, f"{f} heard before the file that should come first"
        last = middle


def assert_not_heard(heard: bytes, f: Path) -> None:
    pos = frames_heard(heard, f)
    assert sum(p >= 0 for p in pos) < 0.1 * len(pos), f"{f} was heard"


def test_tenant_language_drop_in_and_operator_language(rig):
    custom = rig.dir / "media" / "prompts"

    # the tenant's language: German by default (the espeak-ng set), then English
    heard = refusal_heard(rig, "de")
    assert_heard_in_order(heard, BUILT / "de" / "not-permitted.wav", BUILT / "de" / "goodbye.wav")
    assert_not_heard(heard, BUILT / "en" / "not-permitted.wav")
    rig.admin("tenant.update", name="sp", language="en")
    heard = refusal_heard(rig, "en")
    assert_heard_in_order(heard, BUILT / "en" / "not-permitted.wav", BUILT / "en" / "goodbye.wav")
    assert_not_heard(heard, BUILT / "de" / "not-permitted.wav")

    # an operator's recording replaces one prompt; the other still comes from the built set
    own = tone_wav(custom / "en" / "not-permitted.wav", 1234, 1000)
    heard = refusal_heard(rig, "en-drop-in")
    assert_heard_in_order(heard, own, BUILT / "en" / "goodbye.wav")
    assert_not_heard(heard, BUILT / "en" / "not-permitted.wav")

    # a language of the operator's own: its file where it has one, English elsewhere
    fr = tone_wav(custom / "fr" / "goodbye.wav", 777, 600)
    rig.admin("tenant.update", name="sp", language="fr")
    heard = refusal_heard(rig, "fr")
    assert_heard_in_order(heard, own, fr)

    # the drop-in replaced again (new mtime) is heard at once, without a restart
    time.sleep(0.01)
    again = tone_wav(custom / "en" / "not-permitted.wav", 555, 800)
    heard = refusal_heard(rig, "fr-again")
    assert_heard_in_order(heard, again, fr)
    rig.assert_idle()
