"""Blind transfer asked by a CTI client (``call.transfer``): hpbx's own blind transfer
(``hpbx.pbx.transfer.BlindTransfer``, the one a phone's REFER starts) with no REFER behind it:
its progress, which would be NOTIFYs to the transferor's phone, goes to the user's CTI sessions
as ``transfer_progress`` / ``transfer_failed`` events. On success the other party is connected to
the destination and the user's phone gets a BYE; the ``transferred`` event comes from the call
changing hands (``hpbx.cti.service``)."""
from __future__ import annotations

import time

from hpbx.pbx.transfer import BlindTransfer


class _NoRefer:
    """Stands for the REFER's server transaction: nothing to answer."""

    def respond(self, *args, **kw) -> None:
        return None


class CtiBlindTransfer(BlindTransfer):
    def __init__(self, cti, session, call, transferor, plan):
        super().__init__(call, transferor, _NoRefer(), plan)
        self.cti = cti
        self.username = session.username

    def notify(self, sipfrag: str, final: bool) -> None:
        status = int(sipfrag.split(" ", 2)[1]) if sipfrag.startswith("SIP/2.0 ") else 0
        kind = "transfer_progress" if not final or 200 <= status < 300 else "transfer_failed"
        doc = {"jsonrpc": "2.0", "method": "event",
               "params": {"type": kind, "call_id": self.call.id, "status": status,
                          "sipfrag": sipfrag, "final": final, "time": time.time()}}
        for s in self.cti.sessions.get(self.username, ()):
            s.push(doc)
