"""Which dial plan handles a call to a number at a given instant (FEATURES 2.4, 2.5, 6).

Order: an active special switch affecting the number (the one switched on most recently wins),
then active date slots, then active weekday slots; left-most wins among each kind. Windows are
evaluated at minute resolution in the tenant's local time (DST-aware, wall clock), both ends
inclusive; a window whose start is after its end wraps midnight: it matches on a listed day from
start to 23:59 and on the following day from 00:00 to end. Nothing matches → ``None``
(the caller gets 480).
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import lru_cache
from typing import Iterable
from zoneinfo import ZoneInfo

from hpbx.pbx.model import DAYS, DialPlan, PublicNumber, SpecialSwitch, parse_hhmm


@dataclass(frozen=True, slots=True)
class Selection:
    """The dial plan chosen for one call."""

    plan: DialPlan
    slot: int  # slot number 1..10; 0 when a switch's own plan is used
    source: str  # "switch", "date" or "weekday"
    switch: str = ""  # name of the switch that decided, if any


@lru_cache(maxsize=256)
def zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


@lru_cache(maxsize=4096)
def _minutes(text: str) -> int:
    return parse_hhmm(text)


def _day_listed(plan: DialPlan, day: date) -> bool:
    if plan.mode == "date":
        iso = day.isoformat()  # ISO dates compare correctly as strings
        return plan.date_from <= iso <= (plan.date_to or plan.date_from)
    return DAYS[day.weekday()] in plan.days


def plan_matches(plan: DialPlan, local: datetime) -> bool:
    """Does the slot's day/date condition and time window hold at this local wall-clock time?"""
    minute = local.hour * 60 + local.minute
    start, end = _minutes(plan.time_start), _minutes(plan.time_end)
    today = local.date()
    if start <= end:
        return start <= minute <= end and _day_listed(plan, today)
    # Wrapping window: the evening part belongs to the listed day, the morning part to its next day.
    if minute >= start:
        return _day_listed(plan, today)
    if minute <= end:
        return _day_listed(plan, today - timedelta(days=1))
    return False


def deciding_switch(number: str, switches: Iterable[SpecialSwitch], now: datetime) -> SpecialSwitch | None:
    """The active switch that overrides ``number``: the one switched on most recently."""
    best: SpecialSwitch | None = None
    best_at: datetime | None = None
    for sw in switches:
        if number not in sw.numbers or not sw.active_at(now):
            continue
        at = datetime.fromisoformat(sw.switched_on_at) if sw.switched_on_at else None
        if best is None or (at is not None and (best_at is None or at > best_at)):
            best, best_at = sw, at
    return best


def select(number: PublicNumber, now: datetime, timezone: str = "Europe/Zurich",
           switches: Iterable[SpecialSwitch] = ()) -> Selection | None:
    """The dial plan handling a call to ``number`` arriving at the aware instant ``now``."""
    if now.tzinfo is None:
        raise ValueError("select() needs an aware datetime")
    sw = deciding_switch(number.number, switches, now)
    if sw is not None:
        if sw.use_slot:
            return Selection(number.slots[sw.use_slot - 1], sw.use_slot, "switch", sw.name)
        return Selection(sw.plan, 0, "switch", sw.name)
    local = now.astimezone(zone(timezone))
    for source in ("date", "weekday"):
        for index, plan in enumerate(number.slots):
            if plan.active and plan.mode == source and plan_matches(plan, local):
                return Selection(plan, index + 1, source)
    return None
