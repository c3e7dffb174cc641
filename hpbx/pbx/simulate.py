"""The dial-plan simulator: what happens if someone calls this number now, or at time T.

Routes the number exactly as an inbound call would be (``router.route_inbound``), without SIP:
the chosen slot and why (switch, date or weekday), the announcements, the rows in order with
their targets, and for every user target whether a device is registered (``registered`` gives
a username's bindings), so an administrator sees who would really ring.
"""
from __future__ import annotations

from datetime import datetime
from typing import Callable, Iterable

from hpbx.pbx import router
from hpbx.pbx.directory import Directory
from hpbx.pbx.schedule import select


def simulate(directory: Directory, number: str, at: datetime,
             registered: Callable[[str], Iterable[dict]]) -> dict:
    plan = router.route_inbound(directory, number, at)
    n = plan.number
    tenant = directory.tenant(n.tenant) if n is not None else None
    tz = tenant.timezone if tenant is not None else "Europe/Zurich"
    out = {"number": number, "at": at.isoformat(), "timezone": tz,
           "local_time": at.astimezone(directory.zone(n.tenant)).isoformat() if n is not None else "",
           "kind": plan.kind, "status": plan.status, "reason": plan.reason, "slot": plan.slot,
           "slot_name": plan.slot_name, "switch": plan.switch, "source": "",
           "announcement_before": plan.announcement_before, "announcement_after": plan.announcement_after,
           "voice2mail": plan.voice2mail, "links": list(plan.links), "rows": []}
    if n is not None and plan.kind == "dialplan":
        selection = select(n, at, tz, directory.switches_for(n.number))
        out["source"] = selection.source if selection is not None else ""
        if plan.handled_by is not None and plan.handled_by.number != n.number:
            out["source"] = f"{out['source']} via LINK to {plan.handled_by.number}"
    elapsed = 0
    for i, row in enumerate(plan.rows):
        targets = []
        for ring in row.targets:
            t = {"target": ring.key, "via": ring.via, "kind": ring.kind}
            if ring.kind == "user":
                devices = [{"contact": b.get("contact"), "source": b.get("source"),
                            "user_agent": b.get("user_agent")} for b in registered(ring.value)
                           if b.get("online", True)]
                t.update(registered=bool(devices), devices=devices,
                         name=ring.user.details.full_name() if ring.user else "")
            else:
                t.update(registered=ring.trunk is not None, trunk=ring.trunk.name if ring.trunk else "")
            targets.append(t)
        out["rows"].append({"row": i + 1, "starts_after": elapsed, "duration": row.duration,
                            "targets": targets,
                            "reachable": sum(1 for t in targets if t["registered"])})
        elapsed += row.duration
    return out
