"""The compiled fork state machine: rows, parallel branches, first answer wins, best response."""
import pytest

from hpbx._fast import fork as F
from hpbx._fast.fork import Fork


def kinds(actions):
    """Actions as compact tuples, easy to compare."""
    out = []
    for a in actions:
        if a.kind == F.ROW:
            out.append(("ROW", a.row))
        elif a.kind == F.RING:
            out.append(("RING", a.target))
        elif a.kind == F.CANCEL:
            out.append(("CANCEL", a.branch, a.reason))
        elif a.kind == F.FINAL:
            out.append(("FINAL", a.status, a.branch))
        else:
            out.append((a.name, a.branch, a.status))
    return out


def ring(fork, now, actions, contacts):
    """Plays the B2BUA: for every RING, add the target's branches (or report it failed)."""
    out = []
    for a in actions:
        if a.kind == F.RING:
            branches = contacts.get(a.target, [])
            for b in branches:
                fork.add_branch(b, a.target)
            if not branches:
                out += fork.target_failed(a.target, 480, now)
    return out


def test_parallel_ring_first_answer_wins_and_others_cancelled_completed_elsewhere():
    f = Fork([(30, ("user:u1", "user:u2"))])
    acts = f.start(0.0)
    assert kinds(acts) == [("ROW", 0), ("RING", "user:u1"), ("RING", "user:u2")]
    assert ring(f, 0.0, acts, {"user:u1": ["b1", "b1b"], "user:u2": ["b2"]}) == []
    assert kinds(f.on_response("b1", 100, 0.1)) == []
    assert kinds(f.on_response("b1", 180, 0.2)) == [("PROVISIONAL", "b1", 180)]
    assert kinds(f.on_response("b2", 183, 0.3)) == [("PROVISIONAL", "b2", 183)]
    acts = f.on_response("b2", 200, 3.0)
    assert kinds(acts) == [("ANSWER", "b2", 200), ("CANCEL", "b1", F.COMPLETED_ELSEWHERE),
                           ("CANCEL", "b1b", F.COMPLETED_ELSEWHERE)]
    assert F.COMPLETED_ELSEWHERE == 'SIP;cause=200;text="Call completed elsewhere"'
    assert (f.state, f.winner, f.final_status, f.done) == (F.ANSWERED, "b2", 200, True)
    assert f.next_deadline() is None and f.live_branches() == []
    # The cancelled branches answer 487: nothing to do. A late 200 is ACKed and hung up.
    assert f.on_response("b1", 487, 3.1) == []
    assert kinds(f.on_response("b1b", 200, 3.2)) == [("BYE", "b1b", 200)]
    assert f.step(100.0) == [] and f.cancel(100.0) == []


def test_sequential_rows_on_timeout():
    f = Fork([(5, ("u1",)), (5, ("u2",)), (5, ("u3",))])
    ring(f, 0, f.start(0.0), {"u1": ["a"], "u2": ["b"], "u3": ["c"]})
    assert f.next_deadline() == 5.0 and f.step(4.999) == []
    acts = f.step(5.0)
    assert kinds(acts) == [("CANCEL", "a", ""), ("ROW", 1), ("RING", "u2")]
    ring(f, 5, acts, {"u2": ["b"]})
    assert f.ringing_targets() == ["u2"]
    acts = f.step(10.0)
    assert kinds(acts) == [("CANCEL", "b", ""), ("ROW", 2), ("RING", "u3")]
    ring(f, 10, acts, {"u3": ["c"]})
    assert kinds(f.step(15.0)) == [("CANCEL", "c", ""), ("FINAL", 480, None)]
    assert (f.state, f.final_status) == (F.FAILED, 480)


def test_all_busy_row_skips_to_the_next_at_once():
    # FEATURES 3.4: row 1 (30 s, U1, U2), row 2 (10 s, U3); U1 and U2 reject with 486.
    f = Fork([(30, ("u1", "u2")), (10, ("u3",))])
    ring(f, 0, f.start(0.0), {"u1": ["b1"], "u2": ["b2"]})
    assert f.on_response("b1", 486, 1.0) == []  # one busy: the other keeps ringing
    acts = f.on_response("b2", 486, 1.5)
    assert kinds(acts) == [("ROW", 1), ("RING", "u3")]
    assert f.next_deadline() == 11.5  # the new row runs its full duration from now
    ring(f, 1.5, acts, {"u3": ["b3"]})
    assert kinds(f.on_response("b3", 603, 2.0)) == [("FINAL", 603, "b3")]


def test_unregistered_targets_count_as_unavailable_for_the_skip():
    f = Fork([(30, ("u1", "u2")), (10, ("u3",))])
    acts = f.start(0.0)
    assert kinds(f.target_failed("u1", 480, 0.0)) == []
    assert kinds(f.target_failed("u2", 486, 0.0)) == [("ROW", 1), ("RING", "u3")]
    assert kinds(f.target_failed("u3", 480, 0.0)) == [("FINAL", 486, None)]  # busy beats unavailable


def test_target_in_consecutive_rows_keeps_ringing():
    # FEATURES 3.5: rows (10 s, U1) and (15 s, U1+U2): U1 gets one INVITE for 25 s.
    f = Fork([(10, ("u1",)), (15, ("u1", "u2"))])
    ring(f, 0, f.start(0.0), {"u1": ["a"]})
    f.on_response("a", 180, 0.5)
    acts = f.step(10.0)
    assert kinds(acts) == [("ROW", 1), ("RING", "u2")]  # no CANCEL, no second RING for u1
    ring(f, 10, acts, {"u2": ["b"]})
    assert f.live_branches() == ["a", "b"]
    assert kinds(f.step(25.0)) == [("CANCEL", "a", ""), ("CANCEL", "b", ""), ("FINAL", 480, None)]


def test_failed_target_is_rung_again_in_the_next_row():
    f = Fork([(10, ("u1",)), (10, ("u1", "u2"))])
    ring(f, 0, f.start(0.0), {"u1": ["a"]})
    acts = f.on_response("a", 486, 1.0)
    assert kinds(acts) == [("ROW", 1), ("RING", "u1"), ("RING", "u2")]
    ring(f, 1, acts, {"u1": ["a2"], "u2": ["b"]})
    assert kinds(f.on_response("a2", 200, 2.0)) == [("ANSWER", "a2", 200), ("CANCEL", "b", F.COMPLETED_ELSEWHERE)]


def test_target_with_several_devices_fails_only_when_all_failed():
    f = Fork([(30, ("u1",)), (10, ("u2",))])
    ring(f, 0, f.start(0.0), {"u1": ["d1", "d2", "d3"]})
    assert f.on_response("d1", 486, 1.0) == [] and f.on_response("d2", 408, 1.0) == []
    assert kinds(f.on_response("d3", 480, 1.0)) == [("ROW", 1), ("RING", "u2")]


def test_caller_cancel_cancels_everything():
    f = Fork([(30, ("u1", "u2")), (10, ("u3",))])
    ring(f, 0, f.start(0.0), {"u1": ["b1"], "u2": ["b2"]})
    f.on_response("b1", 180, 0.2)
    acts = f.cancel(4.0)
    assert kinds(acts) == [("CANCEL", "b1", ""), ("CANCEL", "b2", ""), ("FINAL", 487, None)]
    assert (f.state, f.state_name, f.final_status) == (F.CANCELLED, "cancelled", 487)
    assert f.step(100.0) == [] and f.on_response("b1", 487, 4.1) == []
    assert kinds(f.on_response("b2", 200, 4.2)) == [("BYE", "b2", 200)]  # crossed our CANCEL
    assert f.on_response("b1", 180, 4.3) == []


@pytest.mark.parametrize("statuses, expected", [
    ([486, 603, 404], 603),  # 6xx wins
    ([404, 486, 480], 486),  # busy preferred inside 4xx
    ([480, 404], 480),  # first received among equals
    ([500, 404], 404),  # lowest class
    ([503, 502], 500),  # 503 is never forwarded as such
    ([503], 500),
    ([302, 500], 500),  # a downstream redirect is not forwarded
    ([302], 480),
    ([401, 500], 500),  # neither is a downstream challenge
    ([407], 480),
    ([408, 480], 480),
    ([484, 404], 484),
])
def test_best_final_response(statuses, expected):
    targets = tuple(f"u{i}" for i in range(len(statuses)))
    f = Fork([(30, targets)])
    ring(f, 0, f.start(0.0), {t: [f"b{i}"] for i, t in enumerate(targets)})
    acts = []
    for i, s in enumerate(statuses):
        acts = f.on_response(f"b{i}", s, 1.0)
    assert acts[-1].kind == F.FINAL and acts[-1].status == expected
    assert f.final_status == expected


def test_no_rows_or_only_empty_rows_give_up_at_once():
    assert kinds(Fork([]).start(0.0)) == [("FINAL", 480, None)]
    f = Fork([(10, ()), (5, ("u1",)), (5, ())])
    acts = f.start(0.0)
    assert kinds(acts) == [("ROW", 1), ("RING", "u1")]
    ring(f, 0, acts, {"u1": ["a"]})
    assert kinds(f.step(5.0)) == [("CANCEL", "a", ""), ("FINAL", 480, None)]


def test_duplicate_targets_in_a_row_ring_once():
    f = Fork([(10, ("u1", "u1", "u2"))])
    assert kinds(f.start(0.0)) == [("ROW", 0), ("RING", "u1"), ("RING", "u2")]


def test_misuse_is_reported():
    with pytest.raises(ValueError):
        Fork([(0, ("u1",))])
    with pytest.raises(ValueError):
        Fork([(90000, ("u1",))])
    f = Fork([(10, ("u1",)), (10, ("u2",))])
    with pytest.raises(RuntimeError, match="idle"):
        f.add_branch("x", "u1")  # not started
    f.start(0.0)
    with pytest.raises(RuntimeError):
        f.start(0.0)
    with pytest.raises(ValueError, match="not ringing"):
        f.add_branch("x", "u2")
    f.add_branch("a", "u1")
    with pytest.raises(ValueError, match="already exists"):
        f.add_branch("a", "u1")
    with pytest.raises(KeyError):
        f.on_response("zzz", 200, 0.0)
    with pytest.raises(ValueError):
        f.on_response("a", 99, 0.0)
    with pytest.raises(ValueError):
        f.target_failed("u1", 200, 0.0)
    f.on_response("a", 200, 1.0)
    with pytest.raises(RuntimeError):
        f.add_branch("b", "u1")


def test_late_provisional_and_retransmitted_final_are_ignored():
    f = Fork([(10, ("u1", "u2"))])
    ring(f, 0, f.start(0.0), {"u1": ["a"], "u2": ["b"]})
    f.on_response("a", 486, 1.0)
    assert f.on_response("a", 486, 1.1) == []  # retransmission
    assert f.on_response("a", 180, 1.2) == []  # after the final
    assert f.best_response() == (486, "a")
    assert repr(f.on_response("b", 180, 1.3)[0]) == "Action(PROVISIONAL, target='u2', branch='b', status=180)"


def test_many_calls_are_independent_and_fast_enough_to_drive_in_python():
    forks = [Fork([(10, (f"u{i}", f"v{i}"))]) for i in range(2000)]
    for i, f in enumerate(forks):
        ring(f, 0, f.start(0.0), {f"u{i}": [(i, 0)], f"v{i}": [(i, 1)]})
    for i, f in enumerate(forks):
        assert f.on_response((i, i % 2), 200, 1.0)[0].kind == F.ANSWER
    assert {f.winner[1] for f in forks} == {0, 1}


# -- invariants over random call histories (hypothesis drives the B2BUA side)

from hypothesis import given, settings, strategies as st  # noqa: E402

STATUSES = [180, 183, 200, 302, 404, 408, 480, 486, 487, 500, 503, 603]


@st.composite
def histories(draw):
    rows = draw(st.lists(st.tuples(st.integers(1, 30), st.lists(st.sampled_from("abcde"), max_size=4)),
                         max_size=4))
    devices = draw(st.dictionaries(st.sampled_from("abcde"), st.integers(0, 3)))
    events = draw(st.lists(st.one_of(
        st.tuples(st.just("resp"), st.integers(0, 50), st.sampled_from(STATUSES)),
        st.tuples(st.just("step"), st.integers(0, 40)),
        st.tuples(st.just("cancel"),)), max_size=30))
    return rows, devices, events


@settings(max_examples=300, deadline=None)
@given(histories())
def test_fork_invariants(history):
    rows, devices, events = history
    f = Fork(rows)
    now = 0.0
    seen = []  # every action, in order
    finals: dict = {}  # branch -> final status fed
    branches: list = []
    cancelled: set = set()
    current_row = [-1]

    def run(actions):
        for a in actions:
            seen.append(a)
            if a.kind == F.ROW:
                assert a.row > current_row[0]
                current_row[0] = a.row
            elif a.kind == F.RING:
                assert a.target in rows[current_row[0]][1]
                n = devices.get(a.target, 0)
                for i in range(n):
                    b = f"{a.target}{len(branches)}"
                    branches.append(b)
                    f.add_branch(b, a.target)
                if n == 0:
                    run(f.target_failed(a.target, 480, now))
            elif a.kind == F.CANCEL:
                assert a.branch not in cancelled, "cancelled twice"
                assert a.branch not in finals, "cancelled after its final response"
                cancelled.add(a.branch)

    run(f.start(now))
    for ev in events:
        if f.done and ev[0] != "resp":
            continue
        if ev[0] == "resp" and branches:
            b = branches[ev[1] % len(branches)]
            before_done = f.done
            acts = f.on_response(b, ev[2], now)
            if ev[2] >= 200:
                if ev[2] < 300 or b not in cancelled:
                    finals.setdefault(b, ev[2])
            if before_done:
                assert all(a.kind == F.BYE for a in acts)
            run(acts)
        elif ev[0] == "step":
            now += ev[1]
            run(f.step(now))
        elif ev[0] == "cancel":
            run(f.cancel(now))
    while not f.done:  # let the rows run out
        now = f.next_deadline()
        run(f.step(now))
    answers = [a for a in seen if a.kind == F.ANSWER]
    final = [a for a in seen if a.kind == F.FINAL]
    assert len(answers) + len(final) == 1
    assert f.live_branches() == []
    if answers:
        assert f.winner == answers[0].branch and f.state == F.ANSWERED
        after = seen[seen.index(answers[0]) + 1:]
        assert all(a.kind in (F.CANCEL, F.BYE) for a in after)
        assert all(a.reason == F.COMPLETED_ELSEWHERE for a in after if a.kind == F.CANCEL)
    else:
        assert final[0].status == f.final_status and 300 <= final[0].status <= 699
        assert final[0].status not in (503, 401, 407) and final[0].status // 100 != 3
