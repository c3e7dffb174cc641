"""Dialled string → call plan: who rings, in which rows, for how long (FEATURES 1, 2, 3).

``route_inbound`` handles a call from a trunk to a public number; ``route_internal`` a call a
user of a tenant places. A plan names users (the B2BUA forks to their registered devices) and
external numbers (rung through the tenant's trunk). Everything is looked up inside one tenant:
a user of tenant A never reaches a user or internal number of tenant B.

LINK is a terminal action of a row: the row's other targets ring for the row's duration, then
the linked number's selected rows follow as if the caller had dialled it (its after-announcement
and Voice2Mail address replace the first number's); the rows after the LINK are not used. A
loop, a chain longer than five hops, a link to a number of another usage, or a linked number
with no matching slot is cut and gives no target.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Iterable

from hpbx.pbx.directory import Directory
from hpbx.pbx.model import (
    ALLUSERS, MAX_LINK_HOPS, DialStep, Group, PublicNumber, Target, Trunk, User,
)
from hpbx.pbx.schedule import Selection, plan_matches, select

INTERNAL_RING_SECONDS = 60  # how long an internal call rings a user or group before 480


@dataclass(frozen=True, slots=True)
class Ring:
    """One target of a row after expansion: a user (all registered devices) or an external number."""

    kind: str  # "user" or "external"
    value: str  # username or external number
    user: User | None = None
    trunk: Trunk | None = None  # for external numbers
    via: str = ""  # the row target it came from: "group:sales", "link:0442", "user:anna", ...
    # a forwarding rule's target: rung only if the forwarding user's branch ended in one of these
    # ("busy", "unavailable", "no_answer"; empty = always), with Diversion (RFC 5806) naming
    # ``diverted_by`` (a number) and ``reason``
    when: frozenset = frozenset()
    diverted_by: str = ""
    reason: str = ""

    @property
    def key(self) -> str:
        """Stable id of the target inside one call (the fork engine's target key)."""
        return f"{self.kind}:{self.value}"


@dataclass(frozen=True, slots=True)
class Row:
    duration: int  # seconds
    targets: tuple[Ring, ...]
    mode: int = 1


@dataclass(frozen=True, slots=True)
class Plan:
    """What to do with one call. ``status`` non-zero: reject the call with that SIP status."""

    kind: str  # "dialplan", "internal", "external", "fax", "conference", "followme", "reject"
    tenant: str = ""
    dialled: str = ""
    number: PublicNumber | None = None  # the public number dialled
    handled_by: PublicNumber | None = None  # the number whose slot decided (last of a LINK chain)
    slot: int = 0  # 1..10; 0 = none or a switch's own plan
    slot_name: str = ""
    switch: str = ""
    rows: tuple[Row, ...] = ()
    announcement_before: int = 0
    announcement_after: int = 0
    voice2mail: str = ""
    alert_info: str = ""
    links: tuple[str, ...] = ()  # the LINK chain followed, dialled number first
    # the slot whose after-handling (announcement, Voice2Mail) applies: after a LINK the linked
    # number's (handled_by), else ``slot``/``slot_name`` (hpbx.pbx.voicemail names it in the mail)
    voice2mail_slot: int = 0
    voice2mail_slot_name: str = ""
    external: str = ""  # kind "external": the number to dial through ``trunk``
    trunk: Trunk | None = None
    status: int = 0
    reason: str = ""

    def targets(self) -> list[Ring]:
        """Every distinct target of every row, in order of first appearance."""
        seen: dict[str, Ring] = {}
        for row in self.rows:
            for t in row.targets:
                seen.setdefault(t.key, t)
        return list(seen.values())


def _reject(status: int, reason: str, **kw) -> Plan:
    return Plan(kind="reject", status=status, reason=reason, **kw)


# ---------------------------------------------------------------- expansion


def group_members(directory: Directory, tenant: str, name: str) -> list[User]:
    """The users a group rings now: ALLUSERS = every user not flagged not_in_allusers or
    hide_user (by internal number, then username); other groups: members not logged out."""
    if name == ALLUSERS:
        users = [u for u in directory.users_of(tenant)
                 if not (u.flags.not_in_allusers or u.flags.hide_user)]
        users.sort(key=lambda u: (u.internal_number == "", u.internal_number.zfill(6), u.username))
        return users
    group = directory.group(tenant, name)
    if group is None:
        return []
    out = []
    for m in group.members:
        u = directory.user(m)
        if u is not None and u.tenant == tenant and m not in group.logged_out:
            out.append(u)
    return out


def _expand(directory: Directory, tenant: str, target: Target) -> list[Ring]:
    if target.kind == "user":
        u = directory.user(target.value)
        return [Ring("user", u.username, user=u, via=str(target))] if u is not None and u.tenant == tenant else []
    if target.kind == "group":
        return [Ring("user", u.username, user=u, via=str(target))
                for u in group_members(directory, tenant, target.value)]
    if target.kind == "external":
        trunk = directory.trunk(tenant)
        return [Ring("external", target.value, trunk=trunk, via=str(target))] if trunk is not None else []
    return []


def _row(directory: Directory, tenant: str, step: DialStep, targets: Iterable[Target]) -> Row:
    rings: dict[str, Ring] = {}
    for t in targets:
        for ring in _expand(directory, tenant, t):
            rings.setdefault(ring.key, ring)
    return Row(step.duration, tuple(rings.values()), step.mode)


@dataclass(slots=True)
class _Resolved:
    selection: Selection | None
    rows: list[Row] = field(default_factory=list)
    after: int = 0
    voice2mail: str = ""
    chain: tuple[str, ...] = ()
    last: Selection | None = None  # the selection whose after-handling applies (after LINKs)


def _resolve(directory: Directory, number: PublicNumber, now: datetime, chain: tuple[str, ...]) -> _Resolved:
    tenant = directory.tenant(number.tenant)
    selection = select(number, now, tenant.timezone if tenant else "Europe/Zurich",
                       directory.switches_for(number.number))
    chain = chain + (number.number,)
    if selection is None:
        return _Resolved(None, chain=chain)
    plan = selection.plan
    out = _Resolved(selection, after=plan.announcement_after, voice2mail=plan.voice2mail, chain=chain,
                    last=selection)
    for step in plan.rows:
        links = [t for t in step.targets if t.kind == "link"]
        row = _row(directory, number.tenant, step, (t for t in step.targets if t.kind != "link"))
        if row.targets:
            out.rows.append(row)
        linked = _follow(directory, number.tenant, links, now, chain)
        if linked is not None:
            # LINK hands the call over: the linked number's rows and after-handling follow.
            out.rows.extend(linked.rows)
            out.after, out.voice2mail, out.chain = linked.after, linked.voice2mail, linked.chain
            out.last = linked.last
            break
    return out


def _follow(directory: Directory, tenant: str, links: list[Target], now: datetime,
            chain: tuple[str, ...]) -> _Resolved | None:
    for link in links:
        target = directory.number(link.value)
        if (target is None or target.tenant != tenant or target.usage != "telephone"
                or target.number in chain or len(chain) > MAX_LINK_HOPS):
            continue  # cut: no target
        resolved = _resolve(directory, target, now, chain)
        if resolved.selection is not None:
            return resolved
    return None


def _dialplan(directory: Directory, number: PublicNumber, dialled: str, now: datetime) -> Plan:
    common = dict(tenant=number.tenant, dialled=dialled, number=number, alert_info=number.alert_info)
    if number.usage != "telephone":
        return Plan(kind=number.usage, handled_by=number, **common)
    r = _resolve(directory, number, now, ())
    if r.selection is None:
        return _reject(480, "no dial plan matches now", handled_by=number, links=r.chain, **common)
    handled = directory.number(r.chain[-1]) or number
    s = r.selection
    return Plan(kind="dialplan", handled_by=handled, slot=s.slot, slot_name=s.plan.name, switch=s.switch,
                rows=tuple(r.rows), announcement_before=s.plan.announcement_before,
                announcement_after=r.after, voice2mail=r.voice2mail, links=r.chain,
                voice2mail_slot=r.last.slot, voice2mail_slot_name=r.last.plan.name, **common)


# ---------------------------------------------------------------- entry points


def route_inbound(directory: Directory, called: str, now: datetime) -> Plan:
    """A call from outside (a trunk) to ``called``: only public numbers are reachable."""
    number = directory.number(called)
    if number is None:
        return _reject(404, f"{called} is not a provisioned number", dialled=called)
    return _dialplan(directory, number, called, now)


def route_internal(directory: Directory, caller: User, dialled: str, now: datetime,
                   ring_seconds: int = INTERNAL_RING_SECONDS) -> Plan:
    """A call placed by a user of a tenant: internal number, own public number, or external."""
    tenant = caller.tenant
    found = directory.internal(tenant, dialled)
    if isinstance(found, User):
        ring = Ring("user", found.username, user=found, via=f"user:{found.username}")
        return Plan(kind="internal", tenant=tenant, dialled=dialled,
                    rows=forwarded_rows(directory, found, ring, ring_seconds, now))
    if isinstance(found, Group):
        rings = tuple(Ring("user", u.username, user=u, via=f"group:{found.name}")
                      for u in group_members(directory, tenant, found.name))
        if not rings:
            return _reject(480, f"group {found.name} has no member logged in", tenant=tenant, dialled=dialled)
        return Plan(kind="internal", tenant=tenant, dialled=dialled, rows=(Row(ring_seconds, rings),))
    number = directory.number(dialled)
    if number is not None and number.tenant == tenant:
        return _dialplan(directory, number, dialled, now)
    if dialled[:1] in ("0", "+"):
        trunk = directory.trunk(tenant)
        if trunk is None:
            return _reject(403, "the tenant has no trunk for external calls", tenant=tenant, dialled=dialled)
        return Plan(kind="external", tenant=tenant, dialled=dialled, external=dialled, trunk=trunk)
    return _reject(404, f"{dialled} is not an internal number", tenant=tenant, dialled=dialled)


# ---------------------------------------------------------------- forwarding rules (FEATURES 13.3)
# RFC 5806 Diversion reasons of the rules
_REASONS = {"unconditional": "unconditional", "busy": "user-busy", "no_answer": "no-answer",
            "unavailable": "unavailable"}


def _forward_ring(directory: Directory, callee: User, target: str, when: frozenset,
                  reason: str) -> Ring | None:
    tenant = callee.tenant
    tenant_obj = directory.tenant(tenant)
    # towards the network only a public number may name the diverting user
    public = callee.displayed_number or (tenant_obj.default_number if tenant_obj else "")
    if target[:1] in ("0", "+"):
        trunk = directory.trunk(tenant)
        if trunk is None:
            return None
        return Ring("external", target, trunk=trunk, via=f"forward:{callee.username}", when=when,
                    diverted_by=public, reason=reason)
    user = directory.user_by_internal(tenant, target)
    if user is None or user.username == callee.username:
        return None
    return Ring("user", user.username, user=user, via=f"forward:{callee.username}", when=when,
                diverted_by=callee.internal_number or callee.username, reason=reason)


def forwarded_rows(directory: Directory, callee: User, ring: Ring, ring_seconds: int,
                   now: datetime | None = None) -> tuple[Row, ...]:
    """The rows of a call addressed to ``callee`` directly, with its forwarding rules: an
    unconditional rule rings only its target; otherwise the user rings (``no_answer_after`` s
    when a no-answer rule is set), then the busy / no-answer / unavailable targets, each only
    if the user's branch ended that way (``forward_applies``). Rules are followed one hop: a
    forwarding target's own rules do not apply. A rule with a time window counts only inside
    it (the tenant's wall-clock time at ``now``)."""
    fw = callee.forward
    local = now.astimezone(directory.zone(callee.tenant)) if now is not None else None

    def rule(kind: str) -> str:
        target = getattr(fw, kind)
        window = fw.window(kind)
        if target and window is not None and local is not None and not plan_matches(window, local):
            return ""
        return target

    if rule("unconditional"):
        target = _forward_ring(directory, callee, rule("unconditional"), frozenset(), "unconditional")
        return (Row(ring_seconds, (target,)),) if target is not None else ()
    conditions: dict[str, set[str]] = {}
    for kind in ("busy", "no_answer", "unavailable"):
        if rule(kind):
            conditions.setdefault(rule(kind), set()).add(kind)
    # an enabled mailbox answers after its timeout (hpbx.pbx.voicemail), unless a rule forwards first
    alone = callee.mailbox.timeout if callee.mailbox.enabled else ring_seconds
    first = Row(fw.no_answer_after if rule("no_answer") else alone, (ring,))
    second = []
    for target, kinds in conditions.items():
        reason = _REASONS[sorted(kinds)[0]] if len(kinds) == 1 else "unknown"
        r = _forward_ring(directory, callee, target, frozenset(kinds), reason)
        if r is not None:
            second.append(r)
    return (first, Row(ring_seconds, tuple(second))) if second else (first,)


def forward_applies(when: frozenset, failures: dict[str, int]) -> bool:
    """Did the forwarding user's branch end as ``when`` asks? ``failures``: final statuses of
    the call's user branches (486/600/603 busy, 480 nobody registered; none: not answered)."""
    statuses = set(failures.values())
    if "busy" in when and statuses & {486, 600, 603}:
        return True
    if "unavailable" in when and statuses and statuses <= {480}:
        return True
    return "no_answer" in when and not statuses


# ---------------------------------------------------------------- number list helpers (FEATURES 2.1)


def linked_users(directory: Directory, tenant: str, now: datetime | None = None) -> set[str]:
    """Usernames reachable from outside: a target of some dial plan (or switch plan) of a
    public number, directly, through a group or through a LINK chain. Independent of time."""
    objs = directory.objects(tenant)
    if objs is None:
        return set()
    found: set[str] = set()
    plans = [p for n in objs.numbers.values() if n.usage == "telephone" for p in n.slots]
    plans += [s.plan for s in objs.switches.values()]
    for plan in plans:
        for row in plan.rows:
            for t in row.targets:
                if t.kind == "user":
                    found.add(t.value)
                elif t.kind == "group":
                    found.update(u.username for u in group_members(directory, tenant, t.value))
    return found


def find_unused(directory: Directory, tenant: str, now: datetime) -> list[PublicNumber]:
    """Free numbers: usage telephone, not overridden by an active switch, ten empty slots."""
    objs = directory.objects(tenant)
    if objs is None:
        return []
    out = []
    for n in sorted(objs.numbers.values(), key=lambda n: n.number):
        if n.usage != "telephone" or not all(p.is_empty() for p in n.slots):
            continue
        if any(sw.active_at(now) for sw in directory.switches_for(n.number)):
            continue
        out.append(n)
    return out


def filter_numbers(numbers: Iterable[PublicNumber], text: str) -> list[PublicNumber]:
    """Numbers whose digits contain ``text`` (the list filter: ``508`` finds 0445081111)."""
    return [n for n in numbers if text in n.number]


def search_numbers(directory: Directory, tenant: str, text: str) -> list[PublicNumber]:
    """Numbers whose dial plans name a participant matching ``text``: a user's username,
    first name, name, nickname, a group name, or (digits) an external or linked number."""
    objs = directory.objects(tenant)
    if objs is None or not text:
        return []
    needle = text.casefold()

    def matches(t: Target) -> bool:
        if t.kind in ("external", "link"):
            return text in t.value
        if t.kind == "group":
            return needle in t.value.casefold()
        u = objs.users.get(t.value)
        names = [t.value] + ([u.details.first_name, u.details.name, u.details.nickname, u.details.full_name()]
                             if u else [])
        return any(needle in n.casefold() for n in names if n)

    out = []
    for n in sorted(objs.numbers.values(), key=lambda n: n.number):
        if any(matches(t) for p in n.slots for row in p.rows for t in row.targets):
            out.append(n)
    return out
