"""The branch set of one call as a pure state machine (no I/O, no clock of its own).

Rows ring one after another; the targets of a row ring in parallel; the first 2xx wins and
every other branch is cancelled "completed elsewhere"; a row whose targets have all failed ends
at once; a target in consecutive rows keeps ringing; when the rows are exhausted the caller gets
the best final response (RFC 3261 section 16.7). The caller of this class owns the transactions
and the timers: it feeds responses and the current time, and carries out the returned actions.
See fork.pyi for the contract.
"""

cdef enum:
    # Action kinds
    _RING = 1
    _PROVISIONAL = 2
    _ANSWER = 3
    _CANCEL = 4
    _FINAL = 5
    _BYE = 6
    _ROW = 7
    # Fork states
    _IDLE = 0
    _RINGING = 1
    _ANSWERED = 2
    _FAILED = 3
    _CANCELLED = 4

RING = _RING
PROVISIONAL = _PROVISIONAL
ANSWER = _ANSWER
CANCEL = _CANCEL
FINAL = _FINAL
BYE = _BYE
ROW = _ROW
KIND_NAMES = {_RING: "RING", _PROVISIONAL: "PROVISIONAL", _ANSWER: "ANSWER", _CANCEL: "CANCEL",
              _FINAL: "FINAL", _BYE: "BYE", _ROW: "ROW"}

IDLE = _IDLE
RINGING = _RINGING
ANSWERED = _ANSWERED
FAILED = _FAILED
CANCELLED = _CANCELLED
STATE_NAMES = {_IDLE: "idle", _RINGING: "ringing", _ANSWERED: "answered", _FAILED: "failed",
               _CANCELLED: "cancelled"}

cdef str _COMPLETED = 'SIP;cause=200;text="Call completed elsewhere"'
COMPLETED_ELSEWHERE = _COMPLETED
NO_ANSWER_STATUS = 480  # rows exhausted without any final response: Temporarily Unavailable
MAX_ROWS = 1000
MAX_DURATION = 86400.0


cdef Action _action(int kind, object branch, object target, int status, int row, str reason):
    cdef Action a = Action.__new__(Action)
    a.kind = kind
    a.branch = branch
    a.target = target
    a.status = status
    a.row = row
    a.reason = reason
    return a


cdef class Action:
    """One thing the owner of the fork must do now (fields not used by a kind are None/0/-1/"")."""

    def __repr__(self):
        parts = [KIND_NAMES.get(self.kind, str(self.kind))]
        if self.row >= 0:
            parts.append(f"row={self.row}")
        if self.target is not None:
            parts.append(f"target={self.target!r}")
        if self.branch is not None:
            parts.append(f"branch={self.branch!r}")
        if self.status:
            parts.append(f"status={self.status}")
        if self.reason:
            parts.append(f"reason={self.reason!r}")
        return f"Action({', '.join(parts)})"

    def __eq__(self, other):
        if not isinstance(other, Action):
            return NotImplemented
        cdef Action o = other
        return (self.kind == o.kind and self.branch == o.branch and self.target == o.target
                and self.status == o.status and self.row == o.row and self.reason == o.reason)

    def __hash__(self):
        return hash((self.kind, self.branch, self.target, self.status, self.row, self.reason))

    @property
    def name(self):
        return KIND_NAMES.get(self.kind, str(self.kind))


cdef class _Target:
    def __cinit__(self, key):
        self.key = key
        self.branches = []
        self.pending = False
        self.failed = False
        self.in_row = False

    cdef bint alive(self):
        cdef _Branch b
        if self.pending:
            return True
        for b in self.branches:
            if not b.done:
                return True
        return False


cdef class _Branch:
    def __cinit__(self, key, _Target target):
        self.key = key
        self.target = target
        self.status = 0
        self.done = False


cdef int _class_rank(int status):
    """Lower is better when choosing the final response to send upstream."""
    cdef int cls = status // 100
    if cls == 6:
        return 0
    if cls == 4 and status != 401 and status != 407:
        return 1
    if cls == 5:
        return 2
    return 3  # 3xx and 401/407: never forwarded as such by a B2BUA


cdef int _preference(int status):
    """Inside the 4xx class: busy first (the caller should hear busy), then the responses that
    tell the caller how to retry (RFC 3261 16.7: 415, 420, 484), then the others."""
    if status == 486:
        return 0
    if status == 415 or status == 420 or status == 484:
        return 1
    if status == 408 or status == 487:
        return 3
    return 2


cdef int _score(int status):
    return _class_rank(status) * 10000 + (status // 100) * 100 + _preference(status)


cdef int _upstream(int status):
    """The status sent to the caller for a chosen response."""
    if status == 503:
        return 500  # RFC 3261 16.7: a 503 from downstream must not make the caller's server look overloaded
    if status // 100 == 3 or status == 401 or status == 407:
        return NO_ANSWER_STATUS
    return status


cdef class Fork:
    """The branch set of one call. ``rows``: a sequence of ``(duration_seconds, targets)`` with
    targets any hashable keys (``"user:anna"``, ``"external:0791234567"``)."""

    def __init__(self, rows):
        cdef list parsed = []
        cdef list seen
        for entry in rows:
            duration, targets = entry
            duration = float(duration)
            if not 0 < duration <= MAX_DURATION:
                raise ValueError(f"row duration must be in (0, {MAX_DURATION:.0f}] seconds, got {duration}")
            seen = []
            for t in targets:
                hash(t)
                if t not in seen:
                    seen.append(t)
            parsed.append((duration, tuple(seen)))
        if len(parsed) > MAX_ROWS:
            raise ValueError(f"at most {MAX_ROWS} rows")
        self._rows = parsed
        self._row = -1
        self._deadline = 0.0
        self._state = _IDLE
        self._targets = {}
        self._branches = {}
        self._current = []
        self._finals = []
        self._winner = None
        self._final_status = 0

    # -- read-only view

    @property
    def state(self):
        return self._state

    @property
    def state_name(self):
        return STATE_NAMES[self._state]

    @property
    def row(self):
        return self._row

    @property
    def winner(self):
        return self._winner

    @property
    def final_status(self):
        return self._final_status

    @property
    def done(self):
        return self._state >= _ANSWERED

    def next_deadline(self):
        """When ``step`` must be called next (same time base as ``now``), or None."""
        return self._deadline if self._state == _RINGING else None

    def ringing_targets(self):
        """Targets of the current row that still have a live or pending branch."""
        cdef _Target t
        return [t.key for t in self._current if t.alive()]

    def live_branches(self):
        cdef _Branch b
        return [b.key for b in self._branches.values() if not b.done]

    # -- inputs

    def start(self, double now):
        """Start row 0. Returns the actions (ROW, then RING per target; FINAL 480 if no row rings)."""
        if self._state != _IDLE:
            raise RuntimeError("fork already started")
        cdef list out = []
        self._state = _RINGING
        self._start_row(0, now, out)
        return out

    def add_branch(self, branch, target):
        """Register one INVITE branch (one device) sent for a RING-ed target. Add every branch of a
        target before feeding responses for any of them."""
        cdef _Target t = self._targets.get(target)
        if self._state != _RINGING:
            raise RuntimeError(f"cannot add a branch: the fork is {STATE_NAMES[self._state]}")
        if t is None or not t.in_row:
            raise ValueError(f"target {target!r} is not ringing in the current row")
        if branch in self._branches:
            raise ValueError(f"branch {branch!r} already exists")
        cdef _Branch b = _Branch(branch, t)
        self._branches[branch] = b
        t.branches.append(b)
        t.pending = False

    def target_failed(self, target, int status, double now):
        """A RING-ed target has no branch to send (not registered: 480; busy by its flags: 486)."""
        cdef list out = []
        cdef _Target t = self._targets.get(target)
        if t is None or not t.in_row:
            raise ValueError(f"target {target!r} is not ringing in the current row")
        if status < 300 or status > 699:
            raise ValueError(f"a failure status is 300-699, got {status}")
        if self._state != _RINGING or not t.pending:
            return out
        t.pending = False
        self._finals.append((status, None, target))
        self._target_result(t, now, out)
        return out

    def on_response(self, branch, int status, double now):
        """A response on a branch. Returns the actions it causes."""
        cdef list out = []
        cdef _Branch b = self._branches.get(branch)
        cdef _Branch other
        if b is None:
            raise KeyError(branch)
        if status < 100 or status > 699:
            raise ValueError(f"status must be 100-699, got {status}")
        if status < 200:
            if self._state == _RINGING and not b.done:
                b.status = status
                if status > 100:
                    out.append(_action(_PROVISIONAL, branch, b.target.key, status, -1, ""))
            return out
        if status < 300:
            if self._state == _RINGING and not b.done:
                b.status = status
                b.done = True
                self._state = _ANSWERED
                self._winner = branch
                self._final_status = status
                out.append(_action(_ANSWER, branch, b.target.key, status, -1, ""))
                for other in self._branches.values():
                    if not other.done:
                        other.done = True
                        out.append(_action(_CANCEL, other.key, other.target.key, 0, -1, _COMPLETED))
                self._deadline = 0.0
            else:
                # A 2xx after the call was decided (or after our CANCEL crossed it): ACK and BYE it.
                b.done = True
                out.append(_action(_BYE, branch, b.target.key, status, -1, ""))
            return out
        if b.done:
            return out  # the answer to our CANCEL (487) or a retransmission
        b.status = status
        b.done = True
        self._finals.append((status, branch, b.target.key))
        if self._state == _RINGING and not b.target.alive():
            self._target_result(b.target, now, out)
        return out

    def step(self, double now):
        """Timer: ends the current row when its duration is over."""
        cdef list out = []
        if self._state == _RINGING and now >= self._deadline:
            self._advance(now, out)
        return out

    def cancel(self, double now):
        """The caller gave up (CANCEL or BYE before answer): cancel every branch, answer 487."""
        cdef list out = []
        cdef _Branch b
        if self._state != _RINGING:
            return out
        for b in self._branches.values():
            if not b.done:
                b.done = True
                out.append(_action(_CANCEL, b.key, b.target.key, 0, -1, ""))
        self._state = _CANCELLED
        self._final_status = 487
        self._deadline = 0.0
        out.append(_action(_FINAL, None, None, 487, -1, ""))
        return out

    def best_response(self):
        """(status to send upstream, branch or None) the fork would give up with now."""
        cdef list holder = [None]
        cdef int status = self._best(holder)
        return status, holder[0]

    # -- internals

    cdef void _target_result(self, _Target t, double now, list out) except *:
        """A target of the current row has nothing left ringing: if no target of the row has,
        the row is over at once (FEATURES 3.4)."""
        cdef _Target other
        t.failed = True
        for other in self._current:
            if other.alive():
                return
        self._advance(now, out)

    cdef void _advance(self, double now, list out) except *:
        """End the current row and start the next one that has targets, or give up."""
        cdef int index = self._row + 1
        cdef set keep = set()
        cdef _Target t
        while index < len(self._rows) and not self._rows[index][1]:
            index += 1
        if index < len(self._rows):
            keep = set(self._rows[index][1])
        for t in self._current:
            if t.key not in keep:
                self._cancel_target(t, "", out)
                t.in_row = False
        if index >= len(self._rows):
            self._give_up(out)
            return
        self._start_row(index, now, out)

    cdef void _start_row(self, int index, double now, list out) except *:
        cdef _Target t
        cdef list current = []
        while index < len(self._rows) and not self._rows[index][1]:
            index += 1
        if index >= len(self._rows):
            self._give_up(out)
            return
        duration, targets = self._rows[index]
        self._row = index
        self._deadline = now + duration
        out.append(_action(_ROW, None, None, 0, index, ""))
        for key in targets:
            t = self._targets.get(key)
            if t is None:
                t = _Target(key)
                self._targets[key] = t
            t.in_row = True
            current.append(t)
            if t.alive():
                continue  # FEATURES 3.5: keeps ringing, no new INVITE
            t.branches = []
            t.failed = False
            t.pending = True
            out.append(_action(_RING, None, key, 0, index, ""))
        self._current = current

    cdef void _cancel_target(self, _Target t, str reason, list out) except *:
        cdef _Branch b
        for b in t.branches:
            if not b.done:
                b.done = True
                out.append(_action(_CANCEL, b.key, t.key, 0, -1, reason))
        t.pending = False

    cdef void _give_up(self, list out) except *:
        cdef _Branch b
        cdef list holder = [None]
        for b in self._branches.values():
            if not b.done:
                b.done = True
                out.append(_action(_CANCEL, b.key, b.target.key, 0, -1, ""))
        self._state = _FAILED
        self._deadline = 0.0
        self._final_status = self._best(holder)
        out.append(_action(_FINAL, holder[0], None, self._final_status, -1, ""))

    cdef int _best(self, list out_branch):
        cdef int best = 0
        cdef int status
        cdef object best_branch = None
        for entry in self._finals:
            status = entry[0]
            if best == 0 or _score(status) < _score(best):  # ties: the first received wins
                best = status
                best_branch = entry[1]
        out_branch[0] = best_branch
        if best == 0:
            return NO_ANSWER_STATUS
        return _upstream(best)
