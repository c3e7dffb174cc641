# The branch set of one call (see fork.pyi for the contract).

cdef class Action:
    cdef readonly int kind
    cdef readonly object branch
    cdef readonly object target
    cdef readonly int status
    cdef readonly int row
    cdef readonly str reason


cdef class _Target:
    cdef object key
    cdef list branches      # live and finished _Branch objects of the current attempt
    cdef bint pending       # RING emitted, no branch added and no failure reported yet
    cdef bint failed
    cdef bint in_row

    cdef bint alive(self)


cdef class _Branch:
    cdef object key
    cdef _Target target
    cdef int status         # last response status, 0 = none yet
    cdef bint done          # final response received, or cancelled by us


cdef class Fork:
    cdef list _rows         # [(duration seconds, tuple of target keys)]
    cdef int _row
    cdef double _deadline
    cdef int _state
    cdef dict _targets      # target key -> _Target
    cdef dict _branches     # branch key -> _Branch
    cdef list _current      # _Target of the current row, in ring order
    cdef list _finals       # [(status, branch key or None, target key)] in arrival order
    cdef object _winner
    cdef int _final_status

    cdef void _start_row(self, int index, double now, list out) except *
    cdef void _advance(self, double now, list out) except *
    cdef void _give_up(self, list out) except *
    cdef void _cancel_target(self, _Target t, str reason, list out) except *
    cdef void _target_result(self, _Target t, double now, list out) except *
    cdef int _best(self, list out_branch)
