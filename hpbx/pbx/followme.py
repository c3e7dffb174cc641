"""FollowMe access numbers (FEATURES.md §11, issue 12): re-program call forwarding by phone.

A number of usage ``followme`` is bound (``followme`` field) to what it re-programs:

* ``switch:<name>``: a special switch's external target. 1 puts the number in the switch's
  plan (the first external target of its rows, or a new first row of 60 s) and switches it on;
  2 switches it off (the target stays in the plan, so a later 1 only changes the number).
* ``forward:<username>[:<rule>]``: one of the user's forwarding rules (FEATURES 13.3;
  ``unconditional`` unless named). 1 sets the rule's target, 2 clears it.
* ``slot:<number>:<k>``: the on-call slot k of a telephone number (FEATURES 2.9). 1 makes row 1's
  first external target the number and activates the slot (a slot without days gets every day);
  2 deactivates the slot.

Who may call: the number's ``authorised`` calling numbers, plus the bound user's mobile
(``details.mobile``) for a ``forward:`` binding, compared after normalisation (0041.., +41..,
0..). Anyone else is refused with 403 before anything is answered. With a ``pin`` the caller is
asked for it too (3 attempts, ``#`` ends); a number with neither authorised callers nor a PIN
refuses every caller (it would otherwise be open to anybody).

The menu (prompts from the system set, digits spoken one by one): 1 = set the target (digits +
``#``), 2 = clear it, 3 = read back the current state ("call forwarding is set to 0 7 9 ..." or
"call forwarding de-activated"). A change is stored through provisioning, exactly like an admin
change (it survives a restart and takes effect for the next call); the caller hears the new
state and the call is released. Targets are checked like a dialled number: external numbers
(starting with 0) need the tenant's trunk and pass the toll-fraud destination policy
(``[security.toll]``: premium, international, deny prefixes); a forwarding rule also takes an
internal number of the tenant. Digits that never end with ``#`` time out after
``DIGIT_TIMEOUT`` seconds: "I'm sorry", goodbye, released.
"""
from __future__ import annotations

import logging

from hpbx.media import prompts as P
from hpbx.pbx import media_channel
from hpbx.pbx.model import DAYS
from hpbx.security.toll import normalise

log = logging.getLogger("hpbx.pbx.followme")

DIGIT_TIMEOUT = 5.0  # seconds for the first digit and between digits
ATTEMPTS = 3  # wrong PINs, invalid targets, menu timeouts
MENU = ["call-forwarding", "press", "digits/1", "to-enter-number", "press", "digits/2", "to-cancel",
        "press", "digits/3", "to-listen"]
SWITCH_ROW_SECS = 60


def country_code(svc) -> str:
    toll = getattr(svc, "toll", None)
    return getattr(getattr(toll, "settings", None), "country_code", "41") if toll is not None else "41"


def same_number(a: str, b: str, cc: str) -> bool:
    """Two ways of writing one number (0791112233, +41791112233, 0041791112233)."""
    return bool(a) and bool(b) and normalise(a, cc) == normalise(b, cc)


async def read_digits(ch, timeout: float = DIGIT_TIMEOUT, limit: int = 24) -> tuple[str, bool]:
    """Digits up to ``#``: (digits, True); (digits so far, False) when the caller stopped typing."""
    got = ""
    while len(got) < limit:
        ev = await ch.next_event("digit", timeout)
        if ev is None:
            return got, False
        d = ev.data["digit"]
        if d == "#":
            return got, True
        got += d
    return got, False


def queued_digit(ch) -> str:
    """A digit the caller typed ahead and nobody read yet ("" if none)."""
    q = ch.engine._backlog.get(ch.id) or ()
    return next((e.data["digit"] for e in q if e.kind == "digit"), "")


async def say(ch, names, barge_in: str = "") -> str:
    """System prompts ``names`` in the caller's language (missing ones skipped). With
    ``barge_in``, a digit typed ahead skips them (a caller who knows the menu need not wait)."""
    if barge_in and queued_digit(ch) in barge_in and queued_digit(ch):
        return queued_digit(ch)
    found = ch.service.prompts.say(ch.language, names) if getattr(ch.service, "prompts", None) else []
    if not found:
        return ""
    return await ch.play(found, barge_in=barge_in)


async def ask_pin(ch, pin: str) -> bool:
    """Up to ATTEMPTS entries of ``pin`` (``#`` ends); False (after goodbye) when none matched."""
    for attempt in range(ATTEMPTS):
        await say(ch, ["enter-pin"] if attempt == 0 else ["pin-incorrect"], barge_in="0123456789#")
        got, ended = await read_digits(ch)
        if ended and got == pin:
            return True
        log.info("[%s] PIN refused (attempt %d%s)", ch.id, attempt + 1, "" if ended else ", no #")
    ch.result = "PIN refused"
    await say(ch, ["pin-incorrect", "goodbye"])
    return False


class FollowMe:
    def __init__(self, svc):
        self.svc = svc
        self.stats = {"followme_calls": 0, "followme_refused": 0, "followme_changes": 0}

    # ------------------------------------------------------------------ who may call
    def authorised(self, number) -> list[str]:
        allowed = list(number.authorised)
        kind, _, rest = number.followme.partition(":")
        if kind == "forward":
            user = self.svc.provisioning.directory.user(rest.split(":")[0])
            if user is not None and user.details.mobile:
                allowed.append(user.details.mobile)
        return allowed

    def screen(self, svc, plan, caller: str, caller_user):
        n = plan.handled_by
        if n is None or not n.followme:
            return (480, "FollowMe number not bound")
        allowed = self.authorised(n)
        cc = country_code(svc)
        if allowed and not any(same_number(caller, a, cc) for a in allowed):
            self.stats["followme_refused"] += 1
            log.warning("FollowMe %s: caller %s is not authorised", n.number, caller)
            return (403, "Caller Not Authorised")
        if not allowed and not n.pin:
            self.stats["followme_refused"] += 1
            return (403, "FollowMe Number Has No Authorised Callers Or PIN")
        return None

    # ------------------------------------------------------------------ the call
    async def service(self, ch) -> None:
        n = ch.plan.handled_by
        self.stats["followme_calls"] += 1
        if not self.bound(n):  # e.g. its switch was deleted since
            ch.result = f"followme: {n.followme} does not exist"
            await say(ch, ["not-in-service", "goodbye"])
            return
        if n.pin and not await ask_pin(ch, n.pin):
            return
        silent = 0
        while True:
            await say(ch, MENU, barge_in="0123456789*#")
            digit, _ = await read_digits(ch, limit=1)  # a barge-in digit is still queued
            if digit == "1":
                await self._set(ch, n)
                return
            if digit == "2":
                self._apply(n, "")
                ch.result = "followme cleared"
                await self._read_back(ch, n)
                await say(ch, ["goodbye"])
                return
            if digit == "3":
                await self._read_back(ch, n)
                continue
            silent += 1
            if silent >= ATTEMPTS:
                ch.result = ch.result or "no choice"
                await say(ch, ["goodbye"])
                return
            if digit:
                await say(ch, ["invalid-option"])

    async def _set(self, ch, n) -> None:
        for attempt in range(ATTEMPTS):
            await say(ch, ["enter-number-to-call"], barge_in="0123456789#")
            got, ended = await read_digits(ch)
            if not ended:
                ch.result = "followme: number not ended with #"
                await say(ch, ["im-sorry", "goodbye"])
                return
            why = self.check_target(n, got)
            if why is None:
                self._apply(n, got)
                ch.result = f"followme set {got}"
                await self._read_back(ch, n)
                await say(ch, ["goodbye"])
                return
            log.info("[%s] FollowMe target %r refused: %s", ch.id, got, why)
            await say(ch, ["invalid"] if attempt < ATTEMPTS - 1 else ["invalid", "goodbye"])
        ch.result = "followme: no valid number"

    async def _read_back(self, ch, n) -> None:
        on, target = self.state(n)
        if on and target:
            await say(ch, ["call-forwarding", "is-set-to", *P.digits(target)])
        else:
            await say(ch, ["call-forwarding", "de-activated"])

    # ------------------------------------------------------------------ what is re-programmed
    def bound(self, n) -> bool:
        directory = self.svc.provisioning.directory
        kind, _, rest = n.followme.partition(":")
        if kind == "switch":
            objs = directory.objects(n.tenant)
            return objs is not None and rest in objs.switches
        if kind == "forward":
            return directory.user(rest.split(":")[0]) is not None
        if kind == "slot":
            return directory.number(rest.rpartition(":")[0]) is not None
        return False

    def check_target(self, n, digits: str) -> str | None:
        """None when ``digits`` may become the target of FollowMe number ``n``, else why not."""
        directory = self.svc.provisioning.directory
        kind = n.followme.partition(":")[0]
        if not digits.isdigit() or not 2 <= len(digits) <= 20:
            return "not a number"
        if digits.startswith("0"):
            if directory.trunk(n.tenant) is None:
                return "the tenant has no trunk"
            toll = getattr(self.svc, "toll", None)
            if toll is not None:
                norm, what = toll.classify(digits)
                refusal = toll._destination(toll.limits(n.tenant), norm, what)
                if refusal is not None:
                    return refusal.reason
            if len(digits) < 4:
                return "too short for an external number"
            return None
        if kind != "forward":
            return "a switch or on-call slot takes an external number (0...)"
        if directory.internal(n.tenant, digits) is None:
            return f"{digits} is not an internal number"
        return None

    def set_target(self, n, target: str) -> None:
        """The admin's (or CTI's) way to do what 1 / 2 do by phone; ValidationError("target")."""
        from hpbx.errors import ValidationError
        if not self.bound(n):
            raise ValidationError("number", f"{n.followme} of {n.number} does not exist")
        if target:
            why = self.check_target(n, target) if isinstance(target, str) else "must be a string of digits"
            if why is not None:
                raise ValidationError("target", f"{target!r} cannot be a FollowMe target: {why}")
        self._apply(n, target)

    def state(self, n) -> tuple[bool, str]:
        """(on, target) of what ``n`` re-programs."""
        directory = self.svc.provisioning.directory
        kind, _, rest = n.followme.partition(":")
        if kind == "forward":
            name, _, rule = rest.partition(":")
            user = directory.user(name)
            target = getattr(user.forward, rule or "unconditional") if user is not None else ""
            return bool(target), target
        if kind == "switch":
            sw = directory.objects(n.tenant).switches.get(rest)
            if sw is None:
                return False, ""
            return sw.on, _first_external(sw.plan)
        if kind == "slot":
            num, _, k = rest.rpartition(":")
            target = directory.number(num)
            if target is None:
                return False, ""
            plan = target.slots[int(k) - 1]
            return plan.active, _first_external(plan)
        return False, ""

    def _apply(self, n, target: str) -> None:
        """Store the change (provisioning: validated, written, live for the next call)."""
        prov = self.svc.provisioning
        kind, _, rest = n.followme.partition(":")
        if kind == "forward":
            name, _, rule = rest.partition(":")
            prov.user_update(name, {"forward": {rule or "unconditional": target}})
        elif kind == "switch":
            if target:
                sw = prov.directory.objects(n.tenant).switches[rest]
                prov.switch_update(n.tenant, rest, {"plan": _with_external(sw.plan.to_dict(), target)})
                prov.switch_set(n.tenant, rest)
            else:
                prov.switch_clear(n.tenant, rest)
        elif kind == "slot":
            num, _, k = rest.rpartition(":")
            current = prov.directory.number(num)
            slots = [p.to_dict() for p in current.slots]
            i = int(k) - 1
            if target:
                slot = _with_external(slots[i], target)
                slot["active"] = True
                if slot.get("mode", "weekday") == "weekday" and not slot.get("days"):
                    slot["days"] = list(DAYS)
                slots[i] = slot
            else:
                slots[i] = {**slots[i], "active": False}
            prov.number_update(num, {"slots": slots})
        self.stats["followme_changes"] += 1
        log.info("FollowMe %s: %s %s", n.number, n.followme, f"set to {target}" if target else "cleared")


def _first_external(plan) -> str:
    for row in plan.rows:
        for t in row.targets:
            if t.kind == "external":
                return t.value
    return ""


def _with_external(plan: dict, target: str) -> dict:
    """A plan dict whose first external target is ``target`` (a new first row if it had none)."""
    rows = [dict(r) for r in plan.get("rows", [])]
    for row in rows:
        targets = list(row.get("targets", []))
        for i, t in enumerate(targets):
            if str(t).startswith("external:"):
                targets[i] = f"external:{target}"
                row["targets"] = [x for j, x in enumerate(targets) if j == i or x != targets[i]]
                return {**plan, "rows": rows}
    rows.insert(0, {"duration": SWITCH_ROW_SECS, "targets": [f"external:{target}"]})
    return {**plan, "rows": rows}


def install(svc) -> FollowMe:
    """Answer numbers of usage ``followme`` (called once by the server)."""
    fm = FollowMe(svc)
    svc.followme = fm
    media_channel.register_service("followme", fm.service, name="followme", screen=fm.screen)
    return fm

