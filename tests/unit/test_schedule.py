"""Slot selection (FEATURES 2.4, 2.5, 2.10, 6): which dial plan handles a call at an instant."""
from datetime import datetime, timedelta, timezone

import pytest

from hpbx.pbx.model import PublicNumber, SpecialSwitch
from hpbx.pbx.schedule import plan_matches, select, zone

ZRH = zone("Europe/Zurich")
ALL = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


def at(text: str) -> datetime:
    """Local Zurich wall-clock time → aware datetime."""
    return datetime.fromisoformat(text).replace(tzinfo=ZRH)


def number(*slots, num="0441234567") -> PublicNumber:
    return PublicNumber.from_dict({"tenant": "t", "number": num, "slots": list(slots)})


def slot(days=ALL, start="00:00", end="23:59", active=True, **kw):
    d = {"active": active, "days": days, "time_start": start, "time_end": end}
    d.update(kw)
    return d


def chosen(n, when, switches=()):
    s = select(n, when, "Europe/Zurich", switches)
    return None if s is None else s.slot


# 2026-11-23 is a Monday.
MON = "2026-11-23"


def test_left_most_wins_among_matching_weekday_slots():
    n = number(slot(["mon"], "08:00", "12:00"), {}, slot(["mon"]))
    assert chosen(n, at(f"{MON}T09:00")) == 1
    assert chosen(n, at(f"{MON}T13:00")) == 3


def test_date_slot_beats_weekday_slot_further_left():
    n = number(slot(["mon", "tue", "wed", "thu", "fri"]), {}, {}, {}, {}, {},
               {"active": True, "mode": "date", "date_from": MON})
    assert chosen(n, at(f"{MON}T10:00")) == 7
    assert chosen(n, at("2026-11-24T10:00")) == 1


def test_date_range_inclusive_and_time_window_combined():
    n = number({"active": True, "mode": "date", "date_from": "2026-12-24", "date_to": "2026-12-26",
                "time_start": "12:00", "time_end": "18:00"}, slot())
    assert chosen(n, at("2026-12-24T12:00")) == 1
    assert chosen(n, at("2026-12-26T18:00:59")) == 1
    assert chosen(n, at("2026-12-26T18:01")) == 2
    assert chosen(n, at("2026-12-27T13:00")) == 2
    assert chosen(n, at("2026-12-23T13:00")) == 2


def test_inactive_slot_is_skipped():
    n = number(slot(active=False), slot())
    assert chosen(n, at(f"{MON}T09:00")) == 2


def test_nothing_matches_gives_none():
    n = number(slot(["mon"], "08:00", "12:00"))
    assert chosen(n, at(f"{MON}T12:01")) is None
    assert chosen(n, at("2026-11-24T09:00")) is None
    assert select(number(), at(f"{MON}T09:00")) is None


def test_minute_resolution_inclusive_ends():
    # FEATURES 2.5 acceptance: 12:00:30 → slot 1, 12:01:00 → slot 5.
    n = number(slot(["mon"], "08:00", "12:00"), {}, {}, {}, slot())
    assert chosen(n, at(f"{MON}T12:00:30")) == 1
    assert chosen(n, at(f"{MON}T12:01:00")) == 5
    assert chosen(n, at(f"{MON}T08:00:00")) == 1
    assert chosen(n, at(f"{MON}T07:59:59")) == 5


def test_whole_day_covers_last_second():
    n = number(slot(["mon"]))
    assert chosen(n, at(f"{MON}T23:59:59.999")) == 1
    assert chosen(n, at(f"{MON}T00:00")) == 1


def test_midnight_wrap_belongs_to_the_listed_day_and_its_next_morning():
    n = number(slot(["fri"], "22:00", "06:00"))
    assert chosen(n, at("2026-11-27T22:00")) == 1  # Friday evening
    assert chosen(n, at("2026-11-28T05:59")) == 1  # Saturday morning, after a listed Friday
    assert chosen(n, at("2026-11-28T06:00:59")) == 1
    assert chosen(n, at("2026-11-28T06:01")) is None
    assert chosen(n, at("2026-11-27T05:00")) is None  # Friday morning: Thursday is not listed
    assert chosen(n, at("2026-11-28T22:30")) is None  # Saturday evening is not listed
    assert chosen(n, at("2026-11-27T12:00")) is None


def test_midnight_wrap_of_a_date_slot():
    n = number({"active": True, "mode": "date", "date_from": "2026-12-31", "time_start": "20:00",
                "time_end": "02:00"})
    assert chosen(n, at("2026-12-31T23:00")) == 1
    assert chosen(n, at("2027-01-01T01:30")) == 1
    assert chosen(n, at("2027-01-01T20:30")) is None
    assert chosen(n, at("2026-12-31T01:00")) is None


def test_instant_in_another_zone_is_converted_to_tenant_time():
    n = number(slot(["mon"], "08:00", "12:00"))
    assert chosen(n, datetime(2026, 11, 23, 7, 30, tzinfo=timezone.utc)) == 1  # 08:30 CET
    assert chosen(n, datetime(2026, 11, 23, 6, 30, tzinfo=timezone.utc)) is None  # 07:30 CET
    assert select(n, datetime(2026, 11, 23, 7, 30, tzinfo=timezone.utc), "America/New_York") is None


def test_naive_datetime_is_refused():
    with pytest.raises(ValueError, match="aware"):
        select(number(slot()), datetime(2026, 11, 23, 9, 0))


def test_dst_spring_forward_2026_03_29():
    # Sunday 2026-03-29: 02:00 CET jumps to 03:00 CEST.
    n = number(slot(["sun"], "08:00", "12:00"))
    utc = timezone.utc
    assert chosen(n, datetime(2026, 3, 29, 6, 0, tzinfo=utc)) == 1  # 08:00 CEST
    assert chosen(n, datetime(2026, 3, 29, 10, 0, tzinfo=utc)) == 1  # 12:00 CEST
    assert chosen(n, datetime(2026, 3, 29, 10, 1, tzinfo=utc)) is None  # 12:01 CEST (11:01 in CET!)
    assert chosen(n, datetime(2026, 3, 22, 7, 0, tzinfo=utc)) == 1  # the Sunday before, 08:00 CET
    assert chosen(n, datetime(2026, 3, 22, 6, 0, tzinfo=utc)) is None  # 07:00 CET
    # A window inside the skipped hour never matches that night; the minute after the gap is 03:00.
    gap = number(slot(["sun"], "02:00", "02:59"), slot(["sun"], "03:00", "03:00"))
    assert chosen(gap, datetime(2026, 3, 29, 0, 59, tzinfo=utc)) is None  # 01:59 CET
    assert chosen(gap, datetime(2026, 3, 29, 1, 0, tzinfo=utc)) == 2  # 03:00 CEST


def test_dst_fall_back_2026_10_25():
    # Sunday 2026-10-25: 03:00 CEST falls back to 02:00 CET; 02:xx happens twice.
    n = number(slot(["sun"], "02:00", "02:30"))
    utc = timezone.utc
    assert chosen(n, datetime(2026, 10, 25, 0, 15, tzinfo=utc)) == 1  # 02:15 CEST
    assert chosen(n, datetime(2026, 10, 25, 1, 15, tzinfo=utc)) == 1  # 02:15 CET, again
    assert chosen(n, datetime(2026, 10, 25, 0, 45, tzinfo=utc)) is None  # 02:45 CEST
    day = number(slot(["sun"], "08:00", "17:00"))
    assert chosen(day, datetime(2026, 10, 25, 7, 0, tzinfo=utc)) == 1  # 08:00 CET
    assert chosen(day, datetime(2026, 10, 25, 6, 59, tzinfo=utc)) is None  # 07:59 CET
    assert chosen(day, datetime(2026, 10, 25, 16, 0, tzinfo=utc)) == 1  # 17:00 CET
    assert chosen(day, datetime(2026, 10, 25, 16, 1, tzinfo=utc)) is None


def test_plan_matches_on_local_wall_clock():
    n = number(slot(["tue"], "23:00", "01:00"))
    assert plan_matches(n.slots[0], at("2026-11-25T00:30"))  # Wednesday 00:30 after listed Tuesday
    assert not plan_matches(n.slots[0], at("2026-11-25T01:01"))


def _switch(name, nums, **kw):
    d = {"tenant": "t", "name": name, "numbers": nums}
    d.update(kw)
    return SpecialSwitch.from_dict(d)


def test_switch_overrides_date_and_weekday_slots():
    n = number({"active": True, "mode": "date", "date_from": MON}, slot(), {}, {},
               {"active": False, "name": "closed", "rows": [{"duration": 5, "targets": ["external:0790000000"]}]})
    sw = _switch("Closed", ["0441234567"], on=True, switched_on_at=f"{MON}T07:00:00+01:00", use_slot=5)
    s = select(n, at(f"{MON}T09:00"), switches=[sw])
    assert (s.slot, s.source, s.switch, s.plan.name) == (5, "switch", "Closed", "closed")
    # Switched off → the normal plan again.
    off = _switch("Closed", ["0441234567"], on=False, use_slot=5)
    assert select(n, at(f"{MON}T09:00"), switches=[off]).slot == 1
    # A switch for other numbers does not apply.
    other = _switch("Other", ["0449999999"], on=True, use_slot=5)
    assert select(n, at(f"{MON}T09:00"), switches=[other]).slot == 1


def test_switch_with_its_own_plan_and_latest_switch_wins():
    n = number(slot())
    early = _switch("Holiday", ["0441234567"], on=True, switched_on_at="2026-11-23T07:00:00+00:00",
                    plan={"name": "holiday", "announcement_after": 3})
    late = _switch("Meeting", ["0441234567"], on=True, switched_on_at="2026-11-23T08:00:00+00:00",
                   plan={"name": "meeting"})
    for order in ([early, late], [late, early]):
        s = select(n, at(f"{MON}T10:00"), switches=order)
        assert (s.slot, s.switch, s.plan.name) == (0, "Meeting", "meeting")


def test_switch_auto_off_time():
    n = number(slot())
    sw = _switch("Lunch", ["0441234567"], on=True, switched_on_at="2026-11-23T11:00:00+00:00",
                 auto_off_at="2026-11-23T12:00:00+00:00", plan={"name": "lunch"})
    assert select(n, datetime(2026, 11, 23, 11, 59, tzinfo=timezone.utc), switches=[sw]).switch == "Lunch"
    assert select(n, datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc), switches=[sw]).slot == 1


# FEATURES 2.10: the reference scenario of the manual ("Example 1").
def _reference():
    weekdays_a, weekdays_b = ["mon", "wed"], ["tue", "thu", "fri"]

    def rows(first):
        others = [x for x in ("weber", "froehlich", "brenner") if x != first]
        return [{"mode": 1, "duration": 10, "targets": [f"user:{first}"]},
                {"mode": 1, "duration": 15, "targets": [f"user:{first}"] + [f"user:{o}" for o in others]}]

    return number(
        slot(weekdays_a, "08:00", "12:00", name="MoWe morning", rows=rows("weber"), announcement_after=1),
        slot(weekdays_b, "08:00", "12:00", name="TuThFr morning", rows=rows("froehlich"), announcement_after=1),
        slot(weekdays_a, "13:00", "17:00", name="MoWe afternoon", rows=rows("weber"), announcement_after=1),
        slot(weekdays_b, "13:00", "17:00", name="TuThFr afternoon", rows=rows("froehlich"), announcement_after=1),
        slot(ALL, name="Rest", announcement_after=2),
    )


@pytest.mark.parametrize("when, expected", [
    ("2026-11-23T09:00", 1),  # Mon 09:00
    ("2026-11-26T14:00", 4),  # Thu 14:00
    ("2026-11-23T12:30", 5),  # Mon 12:30
    ("2026-11-28T10:00", 5),  # Sat 10:00
    ("2026-11-24T18:00", 5),  # Tue 18:00
    ("2026-11-25T16:59", 3),  # Wed afternoon
    ("2026-11-27T08:00", 2),  # Fri morning
])
def test_reference_scenario_slot(when, expected):
    assert chosen(_reference(), at(when)) == expected


def test_reference_scenario_rows_and_braun_never_rings():
    n = _reference()
    s = select(n, at("2026-11-23T09:00"))
    assert [(r.duration, [str(t) for t in r.targets]) for r in s.plan.rows] == [
        (10, ["user:weber"]), (15, ["user:weber", "user:froehlich", "user:brenner"])]
    assert s.plan.announcement_after == 1
    rest = select(n, at("2026-11-28T10:00"))
    assert rest.plan.rows == () and rest.plan.announcement_after == 2
    every_minute_of_a_week = (at("2026-11-23T00:00") + timedelta(minutes=37 * i) for i in range(273))
    for when in every_minute_of_a_week:
        plan = select(n, when).plan
        assert all(t.value != "braun" for r in plan.rows for t in r.targets)
