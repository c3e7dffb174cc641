"""Type stubs for hpbx._fast.fork — the branch set of one call, a pure state machine.

Contract for the B2BUA (hpbx/pbx/call.py). The fork does no I/O and reads no clock: every
input carries ``now`` (seconds, any monotonic time base) and returns a list of ``Action`` to
carry out in order.

Driving it::

    fork = Fork([(10, ("user:weber",)), (15, ("user:weber", "user:froehlich"))])
    run(fork.start(now))                  # ROW 0, RING user:weber
    # on RING: send one INVITE per registered device, then for each
    fork.add_branch(branch_id, "user:weber")
    # or, if the target has nothing to ring (not registered: 480, busy by its flags: 486)
    run(fork.target_failed("user:weber", 480, now))
    run(fork.on_response(branch_id, 180, now))   # PROVISIONAL -> relay 180 to the caller
    run(fork.step(now))                   # whenever now >= fork.next_deadline()
    run(fork.cancel(now))                 # the caller sent CANCEL / hung up

Actions:
- ``ROW``(row): a row starts (for CDR / logging). Always precedes its RINGs.
- ``RING``(target, row): send INVITEs to the target's devices, then ``add_branch`` each (all of a
  target's branches before feeding any response) or ``target_failed``. A target that is still
  ringing from the previous row is NOT rung again (FEATURES 3.5): no RING for it.
- ``PROVISIONAL``(branch, target, status): a 101-199 to relay upstream (100 is never relayed).
- ``ANSWER``(branch, target, status): this branch won; bridge it. Followed by CANCEL of every other
  live branch with ``reason == COMPLETED_ELSEWHERE`` (put it in a ``Reason:`` header).
- ``CANCEL``(branch, target, reason): send CANCEL on this branch (reason "" = no Reason header):
  row over, caller gave up, or another branch answered.
- ``BYE``(branch, target, status): a 2xx arrived after the call was decided: ACK it, then BYE.
- ``FINAL``(status, branch or None): no branch answered; answer the caller with ``status``
  (after-announcement / Voice2Mail handling is the caller's business). ``branch`` is the branch
  whose response was chosen (None for a target_failed status or no response at all).

Rules: a row lasts its duration; when every target of the row has failed (all its branches got a
final non-2xx, or target_failed) the next row starts at once (FEATURES 3.4); empty rows are
skipped. Targets of a finished row that are not in the next row are cancelled. When the rows are
exhausted, the best final response (RFC 3261 16.7) is chosen: any 6xx; else the 4xx class, busy
486 first, then 415/420/484, then others, 408/487 last; else 5xx; ties go to the first received.
503 is sent as 500; 3xx and 401/407 (a B2BUA neither forwards a downstream redirect nor a
downstream challenge) as 480; no final response at all (rows timed out) gives 480.
A 6xx does not stop the other targets of the row (a person declining on one phone should not
hang up on colleagues); it only wins the choice at the end. Responses to branches the fork
already cancelled are ignored (the 487 to our CANCEL) except a 2xx, which gives BYE.
"""
from typing import Final, Hashable, Iterable, Sequence

RING: Final[int]
PROVISIONAL: Final[int]
ANSWER: Final[int]
CANCEL: Final[int]
FINAL: Final[int]
BYE: Final[int]
ROW: Final[int]
KIND_NAMES: Final[dict[int, str]]

IDLE: Final[int]
RINGING: Final[int]
ANSWERED: Final[int]
FAILED: Final[int]
CANCELLED: Final[int]
STATE_NAMES: Final[dict[int, str]]

COMPLETED_ELSEWHERE: Final[str]  # 'SIP;cause=200;text="Call completed elsewhere"'
NO_ANSWER_STATUS: Final[int]  # 480
MAX_ROWS: Final[int]
MAX_DURATION: Final[float]

class Action:
    kind: int  # RING, PROVISIONAL, ANSWER, CANCEL, FINAL, BYE, ROW
    branch: Hashable | None
    target: Hashable | None
    status: int  # 0 when not used
    row: int  # -1 when not used
    reason: str  # "" when not used
    @property
    def name(self) -> str: ...  # "RING", ...

class Fork:
    def __init__(self, rows: Iterable[tuple[float, Sequence[Hashable]]]) -> None: ...
    # raises ValueError for a duration outside (0, 86400] or more than MAX_ROWS rows
    @property
    def state(self) -> int: ...  # IDLE, RINGING, ANSWERED, FAILED, CANCELLED
    @property
    def state_name(self) -> str: ...
    @property
    def row(self) -> int: ...  # current row index, -1 before start
    @property
    def winner(self) -> Hashable | None: ...
    @property
    def final_status(self) -> int: ...  # 2xx of the winner, the FINAL status, 487 after cancel; 0 while ringing
    @property
    def done(self) -> bool: ...
    def next_deadline(self) -> float | None: ...
    def ringing_targets(self) -> list[Hashable]: ...
    def live_branches(self) -> list[Hashable]: ...
    def start(self, now: float) -> list[Action]: ...  # RuntimeError if started twice
    def add_branch(self, branch: Hashable, target: Hashable) -> None: ...
    # ValueError: target not RING-ed in the current row / duplicate branch; RuntimeError: fork not ringing
    def target_failed(self, target: Hashable, status: int, now: float) -> list[Action]: ...
    def on_response(self, branch: Hashable, status: int, now: float) -> list[Action]: ...  # KeyError: unknown branch
    def step(self, now: float) -> list[Action]: ...
    def cancel(self, now: float) -> list[Action]: ...
    def best_response(self) -> tuple[int, Hashable | None]: ...
