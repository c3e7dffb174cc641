"""Star codes a phone dials to change its user's settings (FEATURES 4.8, 13.3, 21).

FEATURES 21 documents only *200 and *201 (announcements, handled elsewhere); these are hpbx's
own, after common PBX practice:

    *78            do not disturb on            *79            off
    *72<number>    forward unconditional to     *73            off
    *90<number>    forward on busy to           *91            off
    *92<number>    forward on no answer to      *93            off
    *94<number>    forward when unavailable to  *95            off
    **<internal>   pick up the call ringing that user (directed pickup)
    *8             pick up the longest-ringing call of the users one may pick up (group)

A <number> is an internal or external number. ``parse`` gives the change to apply to the
user's settings (a ``user.update``), or None for a string that is none of these codes;
``pickup`` tells a pickup code (``hpbx.pbx.pickup``).
"""
from __future__ import annotations

from dataclasses import dataclass

_FORWARD = {"*72": "unconditional", "*90": "busy", "*92": "no_answer", "*94": "unavailable"}
_FORWARD_OFF = {"*73": "unconditional", "*91": "busy", "*93": "no_answer", "*95": "unavailable"}


@dataclass(frozen=True, slots=True)
class StarCode:
    code: str
    changes: dict  # for Provisioning.user_update
    result: str  # said back to the phone (reason phrase)


def parse(dialled: str) -> StarCode | None:
    if dialled == "*78":
        return StarCode(dialled, {"flags": {"dnd": True}}, "Do Not Disturb On")
    if dialled == "*79":
        return StarCode(dialled, {"flags": {"dnd": False}}, "Do Not Disturb Off")
    if dialled in _FORWARD_OFF:
        kind = _FORWARD_OFF[dialled]
        return StarCode(dialled, {"forward": {kind: ""}}, f"Forward {kind.replace('_', ' ')} Off")
    prefix, number = dialled[:3], dialled[3:]
    if prefix in _FORWARD and number:
        kind = _FORWARD[prefix]
        return StarCode(prefix, {"forward": {kind: number}},
                        f"Forward {kind.replace('_', ' ')} To {number}")
    return None


def pickup(dialled: str) -> tuple[str, str] | None:
    """("directed", internal number) for **<number>, ("group", "") for *8, else None."""
    if dialled == "*8":
        return ("group", "")
    if dialled.startswith("**") and dialled[2:].isdigit():
        return ("directed", dialled[2:])
    return None
