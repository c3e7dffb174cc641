"""Conference rooms end to end (issue 12, FEATURES.md §10): SIPp callers whose media are the
test's own RTP sockets (tests/conference/phone.py) type the PIN as RFC 4733 digits, talk with
distinct tones, and are mixed in the relay: each hears the two others and not itself; the first
heard the hold music while alone and the join tone when the others came; mute, kick and end
over the admin socket; three wrong PINs release; personal rooms on one dial-in are picked by
the PIN; a scheduled conference's PIN works only inside its window and its invitation arrives
at a real SMTP server with an iCalendar part."""
from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from harness import have_sipp, reserved_port
from callrig import CallRig, number, trunk, user
from mailsink import SmtpSink
from phone import Phone, level
from media_peer import BUILT, assert_heard_in_order, encode

pytestmark = [pytest.mark.sipp,
              pytest.mark.skipif(not have_sipp(), reason="sipp is not installed (sip-tester)")]

CARRIERS = [reserved_port() for _ in range(3)]  # simultaneous callers come through their own trunk
SMTP_PORT = reserved_port()
ROOM, DIALIN = "044666100", "044666200"
TENANT = ('[tenant]\nname = "conf"\n' + "".join(trunk(f"carrier{i}", p) for i, p in enumerate(CARRIERS))
          + user("pa", flags=("personal_conference_room",)).replace(
              "[users.flags]", 'conference_pin = "1111"\n[users.flags]')
          + user("pb", flags=("personal_conference_room",)).replace(
              "[users.flags]", 'conference_pin = "2222"\n[users.flags]')
          + number(ROOM, usage="conference", pin="4711")
          + '\n[[numbers]]\nnumber = "044666200"\nusage = "conference"\npersonal_rooms = true\n')
TONES = {"p1": 300.0, "p2": 1150.0, "p3": 1800.0}


@pytest.fixture(scope="module")
def sink(tmp_path_factory):
    s = SmtpSink(tmp_path_factory.mktemp("inbox"), port=SMTP_PORT).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def rig(tmp_path_factory, sink):
    r = CallRig(tmp_path_factory.mktemp("conference"), TENANT)
    with open(r.server.config, "a") as f:
        f.write(f'\n[smtp]\nhost = "127.0.0.1"\nport = {SMTP_PORT}\nsender = "pbx@example.com"\n'
                "retry_min = 1\n\n[conference]\npin_timeout = 3\n")
    r.start()
    yield r
    r.stop()


class Caller:
    """One SIPp caller (signalling) plus a Phone (media)."""

    _next = 0

    def __init__(self, rig, dialled: str, ssrc: int):
        self.rig = rig
        port = CARRIERS[Caller._next % len(CARRIERS)]
        Caller._next += 1
        self.phone = Phone(ssrc)
        before = {c["call_id"] for c in rig.admin("call.list")}
        self.sipp = rig.sipp("call_uac_service.xml", service=dialled, port=port, timeout=40,
                             extra=["-key", "rtp_port", str(self.phone.port)], name=f"conf-{ssrc}")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            new = [c for c in rig.admin("call.list")
                   if c["call_id"] not in before and c.get("state") == "answered" and c.get("media")]
            if new:
                self.call_id = new[0]["call_id"]
                self.phone.start(new[0]["media"]["a"]["port"])
                return
            time.sleep(0.05)
        raise AssertionError("call not answered: " + self.sipp.kill().describe() + rig.server.log())

    def finish(self):
        res = self.sipp.finish()
        self.phone.stop()
        return res


def wait_for(pred, timeout=5.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"{what} not reached in {timeout}s")


def participants(rig, room=ROOM):
    try:
        return rig.admin("conference.participants", tenant="conf", room=room)
    except Exception:
        return []


def dominant_of(x: np.ndarray, freqs) -> float:
    return max(freqs, key=lambda f: level(x, f))


def test_three_callers_hear_each_other_not_themselves_music_join_tone_mute_kick_end(rig):
    c1 = Caller(rig, ROOM, 0x1001)
    c1.phone.dial("4711#")
    wait_for(lambda: len(participants(rig)) == 1, 8, "first participant in the room")
    t_alone = time.monotonic()
    time.sleep(1.8)
    alone = c1.phone.heard(t_alone)
    assert len(alone) >= 8000, len(alone)
    # music (the tenant's class), not silence and not a tone of ours
    assert np.sqrt(np.mean(alone ** 2)) > 100, np.sqrt(np.mean(alone ** 2))
    assert level(alone, 660) + level(alone, 880) < 0.5 * np.mean(alone ** 2)
    c1.phone.freq = TONES["p1"]

    c2 = Caller(rig, ROOM, 0x1002)
    c2.phone.dial("4711#")
    wait_for(lambda: len(participants(rig)) == 2, 8, "second participant")
    t_two = time.monotonic()
    c2.phone.freq = TONES["p2"]
    time.sleep(0.6)
    # c1: the join tone (660 then 880 Hz) came, and the music stopped
    first = c1.phone.heard(t_two - 0.3, t_two + 0.6)
    assert level(first, 660) > 1e4 and level(first, 880) > 1e4, (level(first, 660), level(first, 880))

    c3 = Caller(rig, ROOM, 0x1003)
    c3.phone.dial("4711#")
    wait_for(lambda: len(participants(rig)) == 3, 8, "third participant")
    c3.phone.freq = TONES["p3"]
    time.sleep(1.5)
    t = time.monotonic()
    callers = {"p1": c1, "p2": c2, "p3": c3}
    for name, c in callers.items():
        x = c.phone.heard(t - 1.0, t)
        others = [TONES[o] for o in TONES if o != name]
        own = TONES[name]
        assert len(x) >= 6000, (name, len(x))
        for f in others:
            assert level(x, f) > 1e4, (name, f, {g: level(x, g) for g in TONES.values()})
            assert level(x, own) < level(x, f) / 100, (name, "hears itself", level(x, own), level(x, f))
        # the two others' tones are nearly all of it: no music left under the mix
        assert sum(level(x, f) for f in others) > 0.8 * np.mean(x ** 2), (name, "music still plays")

    listed = rig.admin("conference.list", tenant="conf")
    assert [(r["room"], r["participants"]) for r in listed] == [(ROOM, 3)], listed
    # mute p3: the others stop hearing 1800 Hz
    rig.admin("conference.mute", tenant="conf", room=ROOM, call_id=c3.call_id)
    time.sleep(0.6)
    t = time.monotonic()
    x = c1.phone.heard(t - 0.4, t)
    assert level(x, TONES["p3"]) < level(x, TONES["p2"]) / 100, "p3 is muted"
    assert [p["muted"] for p in participants(rig) if p["call_id"] == c3.call_id] == [True]

    rig.admin("conference.kick", tenant="conf", room=ROOM, call_id=c2.call_id)
    res2 = c2.finish()
    assert res2.successful == 1, res2.describe()  # the BYE from hpbx ended its scenario
    wait_for(lambda: len(participants(rig)) == 2, 5, "p2 gone")
    out = rig.admin("conference.end", tenant="conf", room=ROOM)
    assert out["ended"] == 2, out
    for c in (c1, c3):
        res = c.finish()
        assert res.successful == 1, res.describe()
    assert rig.admin("conference.list", tenant="conf") == []
    cdrs = [c for c in rig.cdrs(count=3) if c.get("service") == "conference"]
    assert {c["call_id"] for c in cdrs} >= {c1.call_id, c2.call_id, c3.call_id}, cdrs
    assert {c["service_result"] for c in cdrs if c["call_id"] == c2.call_id} == {"kicked"}
    rig.assert_idle()


def test_three_wrong_pins_release_the_call(rig):
    c = Caller(rig, ROOM, 0x2001)
    c.phone.dial("1234#")
    c.phone.dial("9#")
    c.phone.dial("47110#")
    res = c.finish()  # hpbx hangs up
    assert res.successful == 1, res.describe() + rig.server.log()
    # the refusal is spoken, in the tenant's language (German by default): "invalid PIN", then
    # "goodbye" — the A-law of the built prompt files, frame by frame, in that order
    assert_heard_in_order(encode("PCMA", c.phone.heard(0)), BUILT / "de" / "conf-invalid-pin.wav",
                          BUILT / "de" / "goodbye.wav")
    cdr = [x for x in rig.cdrs(count=4) if x["call_id"] == c.call_id][-1]
    assert cdr["service_result"] == "PIN refused", cdr
    rig.assert_idle()


def test_a_pin_that_never_ends_times_out_and_releases(rig):
    c = Caller(rig, ROOM, 0x2002)
    c.phone.dial("47")  # no "#", three times over (pin_timeout = 3 s)
    t0 = time.monotonic()
    res = c.finish()
    assert res.successful == 1, res.describe()
    assert time.monotonic() - t0 < 30
    cdr = [x for x in rig.cdrs(count=5) if x["call_id"] == c.call_id][-1]
    assert cdr["service_result"] == "PIN refused", cdr
    rig.assert_idle()


def test_personal_rooms_are_picked_by_the_pin(rig):
    a = Caller(rig, DIALIN, 0x3001)
    a.phone.dial("1111#")
    b = Caller(rig, DIALIN, 0x3002)
    b.phone.dial("2222#")
    wait_for(lambda: len(rig.admin("conference.list", tenant="conf")) == 2, 8, "two personal rooms")
    rooms = {r["room"]: r["participants"] for r in rig.admin("conference.list", tenant="conf")}
    assert rooms == {"user:pa": 1, "user:pb": 1}, rooms
    assert [p["call_id"] for p in participants(rig, "user:pb")] == [b.call_id]
    for room in rooms:
        rig.admin("conference.end", tenant="conf", room=room)
    for c in (a, b):
        assert c.finish().successful == 1
    rig.assert_idle()


def test_scheduled_conference_pin_window_and_invitation_mail(rig, sink):
    import icalendar

    now = datetime.now(timezone.utc).replace(microsecond=0)
    later = rig.admin("conference.schedule", tenant="conf", title="Board", duration=60, lead=10,
                      start=(now + timedelta(minutes=15)).isoformat(),
                      description="Dial <number>, PIN <pin>", reply_to="boss@example.com",
                      invitees=["anna@example.com"])
    soon = rig.admin("conference.schedule", tenant="conf", title="Standup", duration=15, lead=10,
                     start=(now + timedelta(minutes=5)).isoformat())
    assert later["number"] == DIALIN and later["pin"].isdigit() and later["pin"] != soon["pin"]
    # 15 minutes before its start (lead 10): refused three times, released
    c = Caller(rig, DIALIN, 0x4001)
    c.phone.dial(later["pin"] + "#")
    c.phone.dial(later["pin"] + "#")
    c.phone.dial(later["pin"] + "#")
    assert c.finish().successful == 1
    assert [x for x in rig.cdrs(count=8) if x["call_id"] == c.call_id][-1]["service_result"] == "PIN refused"
    # 5 minutes before its start: admitted into the scheduled room
    c = Caller(rig, DIALIN, 0x4002)
    c.phone.dial(soon["pin"] + "#")
    room = f"scheduled:{soon['id']}"
    wait_for(lambda: len(participants(rig, room)) == 1, 8, "admitted 5 min before")
    rig.admin("conference.end", tenant="conf", room=room)
    assert c.finish().successful == 1
    # the invitation: subject, body with number and PIN, Reply-To, a valid iCalendar REQUEST
    msg = sink.wait_count(1)[0]
    assert msg["Subject"] == "Board" and msg["To"] == "anna@example.com"
    assert msg["Reply-To"] == "boss@example.com"
    body = msg.get_body(("plain",)).get_content()
    assert f"Dial {DIALIN}, PIN {later['pin']}" in body
    ics = [p for p in msg.iter_attachments() if p.get_content_type() == "text/calendar"]
    assert len(ics) == 1
    cal = icalendar.Calendar.from_ical(ics[0].get_payload(decode=True))
    assert str(cal["method"]) == "REQUEST"
    ev = next(iter(cal.walk("VEVENT")))
    assert ev.decoded("dtstart") == now + timedelta(minutes=15)
    assert ev.decoded("dtend") - ev.decoded("dtstart") == timedelta(minutes=60)
    assert str(ev["summary"]) == "Board"
    rig.assert_idle()


@pytest.mark.parametrize("params,field", [
    ({"start": "2026-12-03T14:00:00+01:00", "duration": 0}, "duration"),
    ({"start": "tomorrow", "duration": 30}, "start"),
    ({"start": "2026-12-03T14:00:00", "duration": 30}, "start"),
    ({"start": "2026-12-03T14:00:00+01:00", "duration": 30, "invitees": ["not a mail"]}, "invitees[0]"),
])
def test_bad_schedules_name_the_field_and_store_nothing(rig, params, field):
    from hpbx.admin.protocol import RpcError as AdminError
    before = rig.admin("conference.scheduled", tenant="conf")
    with pytest.raises(AdminError) as exc:
        rig.admin("conference.schedule", tenant="conf", title="x", **params)
    assert exc.value.data.get("field") == field or field in str(exc.value), (exc.value, exc.value.data)
    assert rig.admin("conference.scheduled", tenant="conf") == before


def test_a_pin_of_letters_is_refused_naming_the_field(rig):
    from hpbx.admin.protocol import RpcError as AdminError
    with pytest.raises(AdminError) as exc:
        rig.admin("number.update", tenant="conf", number=ROOM, pin="12ab")
    assert "pin" in str(exc.value)
    assert [n["pin"] for n in rig.admin("number.list", tenant="conf") if n["number"] == ROOM] == ["4711"]
