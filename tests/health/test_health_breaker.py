"""Circuit breakers: exact schedules with an injected clock, and the state machine under arbitrary traffic."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from fulcrum.health.breaker import CLOSED, HALF_OPEN, OPEN, TRANSITIONS, BreakerState, CircuitBreakers
from fulcrum.state.server import Down, Server


class Clock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Spec:
    failure_ratio: float = 0.5
    min_requests: int = 20
    window: float = 10.0
    open_for: float = 10.0
    half_open_max: int = 1


def servers(n: int) -> list[Server]:
    return [Server(f"http://10.0.0.{i + 1}:80") for i in range(n)]


def make(spec: Spec | None = None, n: int = 1) -> tuple[CircuitBreakers, list[Server], Clock]:
    clock = Clock()
    group = servers(n)
    return CircuitBreakers(group, spec or Spec(), clock=clock), group, clock


def trip(breakers: CircuitBreakers, server: Server, now: float, spec: Spec) -> None:
    for _ in range(spec.min_requests):
        breakers.record(server, False, now)
    assert breakers.state(server.id) == OPEN


def test_opens_at_the_request_that_reaches_the_ratio() -> None:
    breakers, (a,), _ = make()
    for i in range(10):
        breakers.record(a, True, i * 0.1)
    for i in range(9):
        breakers.record(a, False, 1.0 + i * 0.1)
    assert breakers.state(a.id) == CLOSED  # 19 requests: below min_requests
    assert a.eligible and breakers.allow(a, 2.0)
    breakers.record(a, False, 2.0)  # 10 of 20 failed
    assert breakers.state(a.id) == OPEN
    assert a.down == Down.BREAKER
    assert not breakers.allow(a, 2.0)
    status = breakers.status(a.id, 2.0)
    assert (status.until, status.times_opened, status.changed_at) == (12.0, 1, 2.0)


def test_ratio_is_judged_at_each_failure_only() -> None:
    breakers, (a,), _ = make()
    for i in range(19):
        breakers.record(a, False, i * 0.01)
    breakers.record(a, True, 0.5)  # 19 of 20 failed, but a success never opens
    assert breakers.state(a.id) == CLOSED
    breakers.record(a, False, 0.6)
    assert breakers.state(a.id) == OPEN


def test_below_the_ratio_stays_closed() -> None:
    breakers, (a,), _ = make(Spec(failure_ratio=0.3, min_requests=10))
    for i in range(100):
        breakers.record(a, i % 4 != 3, i * 0.05)  # every fourth fails
    assert breakers.state(a.id) == CLOSED
    status = breakers.status(a.id, 4.95)
    assert status.failures * 4 == status.requests


def test_failures_leave_with_the_window() -> None:
    breakers, (a,), clock = make(Spec(min_requests=4))
    for t in (0.0, 0.1, 0.2):
        breakers.record(a, False, t)
    clock.now = 10.0  # the bucket of 0-1 s leaves the 10 s window
    assert breakers.status(a.id).requests == 0
    breakers.record(a, False, 10.0)
    assert breakers.state(a.id) == CLOSED  # one failure in the window, not four
    for t in (10.1, 10.2, 10.3):
        breakers.record(a, False, t)
    assert breakers.state(a.id) == OPEN


def test_half_opens_exactly_at_open_for() -> None:
    spec = Spec()
    breakers, (a,), _ = make(spec)
    trip(breakers, a, 3.0, spec)
    breakers.tick(12.999)
    assert breakers.state(a.id) == OPEN and not a.eligible
    breakers.tick(13.0)
    assert breakers.state(a.id) == HALF_OPEN
    assert a.eligible  # can be picked again, for a probe


def test_allow_half_opens_when_the_time_is_up_without_a_tick() -> None:
    spec = Spec()
    breakers, (a,), _ = make(spec)
    trip(breakers, a, 0.0, spec)
    assert not breakers.allow(a, 9.99)
    assert breakers.allow(a, 10.0)  # the probe
    assert breakers.state(a.id) == HALF_OPEN
    assert not breakers.allow(a, 10.0)  # one probe at a time


def test_probe_success_closes_with_an_empty_window() -> None:
    spec = Spec()
    breakers, (a,), _ = make(spec)
    trip(breakers, a, 0.0, spec)
    breakers.tick(10.0)
    assert breakers.allow(a, 10.0)
    breakers.record(a, True, 10.5)
    assert breakers.state(a.id) == CLOSED
    status = breakers.status(a.id, 10.5)
    assert (status.requests, status.failures, status.changed_at) == (0, 0, 10.5)
    assert breakers.allow(a, 10.6) and breakers.allow(a, 10.6)


def test_probe_failure_reopens_for_open_for_again() -> None:
    spec = Spec()
    breakers, (a,), _ = make(spec)
    trip(breakers, a, 0.0, spec)
    breakers.tick(10.0)
    assert breakers.allow(a, 10.0)
    breakers.record(a, False, 11.0)
    assert breakers.state(a.id) == OPEN and a.down == Down.BREAKER
    assert breakers.status(a.id, 11.0).until == 21.0
    assert breakers.status(a.id, 11.0).times_opened == 2
    breakers.tick(20.9)
    assert breakers.state(a.id) == OPEN
    breakers.tick(21.0)
    assert breakers.state(a.id) == HALF_OPEN


def test_several_probes_must_all_succeed() -> None:
    spec = Spec(half_open_max=3)
    breakers, (a,), _ = make(spec)
    trip(breakers, a, 0.0, spec)
    breakers.tick(10.0)
    assert [breakers.allow(a, 10.0) for _ in range(4)] == [True, True, True, False]
    breakers.record(a, True, 10.1)
    assert breakers.state(a.id) == HALF_OPEN
    assert breakers.allow(a, 10.1)  # a place came free
    breakers.record(a, True, 10.2)
    assert breakers.state(a.id) == HALF_OPEN
    assert breakers.status(a.id, 10.2).probes_succeeded == 2
    breakers.record(a, True, 10.3)
    assert breakers.state(a.id) == CLOSED


def test_outcomes_while_open_are_ignored() -> None:
    spec = Spec()
    breakers, (a,), _ = make(spec)
    trip(breakers, a, 0.0, spec)
    breakers.record(a, True, 1.0)
    breakers.record(a, False, 1.0)
    assert breakers.state(a.id) == OPEN
    assert breakers.status(a.id, 1.0).until == 10.0


def test_lost_probe_places_come_back() -> None:
    spec = Spec()
    breakers, (a,), _ = make(spec)
    trip(breakers, a, 0.0, spec)
    breakers.tick(10.0)
    assert breakers.allow(a, 10.0)
    breakers.release(a)  # the client went away
    assert breakers.allow(a, 10.5)
    breakers.tick(20.4)  # held for less than open_for
    assert not breakers.allow(a, 20.4)
    breakers.tick(20.5)  # held for open_for: freed
    assert breakers.allow(a, 20.5)


def test_breakers_are_per_server() -> None:
    spec = Spec(min_requests=2)
    breakers, (a, b), _ = make(spec, 2)
    breakers.record(a, False, 0.0)
    breakers.record(a, False, 0.0)
    assert breakers.state(a.id) == OPEN
    assert breakers.state(b.id) == CLOSED and b.eligible
    assert breakers.statuses(0.0)[b.id].state == CLOSED


def test_unknown_servers_pass() -> None:
    breakers, _, _ = make()
    stranger = Server("http://10.9.9.9:80")
    assert breakers.allow(stranger, 0.0)
    breakers.record(stranger, False, 0.0)
    breakers.release(stranger)
    with pytest.raises(KeyError):
        breakers.state(stranger.id)


def test_membership() -> None:
    spec = Spec(min_requests=1)
    breakers, (a,), _ = make(spec)
    b = Server("http://10.0.0.9:80")
    b.set_down(Down.BREAKER, True)
    breakers.add_server(b)
    assert b.eligible  # a new breaker starts closed
    with pytest.raises(ValueError):
        breakers.add_server(b)
    breakers.record(a, False, 0.0)
    assert not a.eligible
    assert breakers.remove_server(a.id)
    assert a.eligible  # nothing would ever clear it otherwise
    assert not breakers.remove_server(a.id)
    assert breakers.server_ids() == [b.id]
    breakers.tick(100.0)  # the removed breaker is not ticked


def test_adopt_keeps_state_by_server_id() -> None:
    spec = Spec(min_requests=3)
    old, (a, b, c), clock = make(spec, 3)
    trip(old, a, 0.0, spec)
    old.tick(10.0)
    assert old.allow(a, 10.0)
    old.record(b, False, 1.0)
    old.record(b, False, 1.0)
    trip(old, c, 2.0, spec)
    # The new group has fresh objects for a and b, keeps c, and drops nothing else.
    a2, b2 = Server(a.url), Server(b.url)
    new = CircuitBreakers([a2, b2, c], spec, clock=clock, previous=old)
    assert new.state(a.id) == HALF_OPEN and a2.eligible
    assert new.allow(a2, 10.0)  # the old probe in flight stays with the old object
    assert new.status(b.id, 1.5).failures == 2
    new.record(b2, False, 1.5)
    assert new.state(b.id) == OPEN and not b2.eligible
    assert new.state(c.id) == OPEN and not c.eligible
    new.tick(12.0)
    assert new.state(c.id) == HALF_OPEN and c.eligible
    # Another window length: the counts start over.
    other = CircuitBreakers([Server(b.url)], Spec(min_requests=3, window=5.0), clock=clock, previous=old)
    assert other.status(b.id, 1.5).requests == 0


@pytest.mark.parametrize(
    "spec",
    [
        Spec(failure_ratio=0.0),
        Spec(failure_ratio=1.5),
        Spec(min_requests=0),
        Spec(window=0.0),
        Spec(open_for=0.0),
        Spec(half_open_max=0),
    ],
)
def test_bad_specs_are_refused(spec: Spec) -> None:
    with pytest.raises(ValueError):
        CircuitBreakers(servers(1), spec, clock=Clock())


# -- the state machine under arbitrary traffic ----------------------------------------------

OPS = st.tuples(
    st.sampled_from(["allow", "allow", "ok", "ok", "fail", "fail", "tick", "release"]),
    st.integers(0, 1),
    st.sampled_from([0.0, 0.0, 0.3, 1.0, 2.5, 6.0]),
)


@settings(max_examples=200, deadline=None)
@given(
    ratio=st.sampled_from([0.1, 0.5, 1.0]),
    min_requests=st.integers(1, 6),
    half_open_max=st.integers(1, 3),
    ops=st.lists(OPS, min_size=10, max_size=80),
)
def test_transitions_follow_the_allowed_edges(
    ratio: float, min_requests: int, half_open_max: int, ops: list[tuple[str, int, float]]
) -> None:
    spec = Spec(failure_ratio=ratio, min_requests=min_requests, window=4.0, open_for=5.0, half_open_max=half_open_max)
    breakers, group, _ = make(spec, 2)
    now = 0.0
    for op, index, step in ops:
        now += step
        server = group[index]
        before = breakers.status(server.id, now)
        others = [breakers.state(s.id) for s in group if s is not server]
        if op == "allow":
            allowed = breakers.allow(server, now)
            if before.state == CLOSED:
                assert allowed
            elif before.state == OPEN and now < (before.until or 0.0):
                assert not allowed
        elif op in ("ok", "fail"):
            breakers.record(server, op == "ok", now)
        elif op == "tick":
            breakers.tick(now)
        else:
            breakers.release(server)
        after = breakers.state(server.id)
        if after != before.state:
            assert (before.state, after) in TRANSITIONS
            expected = _expected_cause(before.state, after)
            assert op in expected, (op, before.state, after)
            event(f"{before.state} -> {after}")
        if before.state == CLOSED and after == OPEN:
            # It opened exactly when the window, with this failure, reached both thresholds.
            assert before.requests + 1 >= min_requests
            assert (before.failures + 1) / (before.requests + 1) >= ratio
        if before.state == CLOSED and op == "fail" and after == CLOSED:
            total = before.requests + 1
            assert total < min_requests or (before.failures + 1) / total < ratio
        if op != "tick":  # one server's call never moves another's breaker
            assert [breakers.state(s.id) for s in group if s is not server] == others
        for s in group:
            status = breakers.status(s.id, now)
            assert bool(s.down & Down.BREAKER) == (status.state == OPEN)
            assert 0 <= status.probes_in_flight <= half_open_max
            assert status.state == HALF_OPEN or status.probes_in_flight == 0


def _expected_cause(before: BreakerState, after: BreakerState) -> tuple[str, ...]:
    return {
        (CLOSED, OPEN): ("fail",),
        (OPEN, HALF_OPEN): ("tick", "allow"),
        (HALF_OPEN, OPEN): ("fail",),
        (HALF_OPEN, CLOSED): ("ok",),
    }[(before, after)]
