"""Outlier detection: exact schedules with an injected clock, and the ejection bound under arbitrary failures."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from fulcrum.health.passive import DEFAULT_ON, OutlierDetector, max_ejected, status_outcome
from fulcrum.state.server import Down, Server


class Clock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Spec:
    max_failures: int = 5
    window: float = 10.0
    eject_for: float = 30.0
    max_eject_for: float = 300.0
    max_ejected_percent: float = 50.0
    on: frozenset[str] = field(default_factory=lambda: DEFAULT_ON)


def servers(n: int) -> list[Server]:
    return [Server(f"http://10.0.0.{i + 1}:80") for i in range(n)]


def make(spec: Spec | None = None, n: int = 2) -> tuple[OutlierDetector, list[Server], Clock]:
    clock = Clock()
    group = servers(n)
    return OutlierDetector(group, spec or Spec(), clock=clock), group, clock


def fail(detector: OutlierDetector, server: Server, now: float, times: int = 5, outcome: str = "5xx") -> None:
    for _ in range(times):
        detector.record(server, outcome, now)


def test_ejected_at_the_fifth_failure_in_the_window() -> None:
    detector, (a, b), _ = make()
    for t in (0.0, 2.5, 5.0, 7.5):
        detector.record(a, "connect_error", t)
    assert a.eligible
    assert detector.status(a.id, 7.5).failures_in_window == 4
    detector.record(a, "timeout", 9.99)
    assert a.down == Down.PASSIVE
    status = detector.status(a.id, 9.99)
    assert (status.ejected, status.until, status.streak, status.ejections) == (True, 39.99, 1, 1)
    assert status.failures_in_window == 0  # an ejection forgets the failures before it
    assert b.eligible and detector.ejected_count() == 1


def test_failures_spread_wider_than_the_window_do_not_eject() -> None:
    detector, (a, _), _ = make()
    for t in (0.0, 2.5, 5.0, 7.5, 10.0):  # the first is exactly window old at the fifth
        detector.record(a, "reset", t)
    assert a.eligible
    detector.record(a, "reset", 12.0)  # 2.5 .. 12.0: five within 10 s
    assert not a.eligible


def test_successes_do_not_clear_failures() -> None:
    detector, (a, _), _ = make()
    for t in range(5):
        detector.record(a, "5xx", float(t))
        detector.record(a, "success", t + 0.5)
    assert a.down == Down.PASSIVE


def test_only_outcomes_listed_in_on_count() -> None:
    detector, (a, b), _ = make(Spec(on=frozenset({"4xx"})))
    fail(detector, a, 0.0, 10, "5xx")
    fail(detector, a, 0.0, 10, "connect_error")
    assert a.eligible
    fail(detector, b, 0.0, 5, "4xx")
    assert not b.eligible


def test_returns_exactly_when_the_ejection_is_over() -> None:
    detector, (a, _), _ = make()
    fail(detector, a, 1.0)
    detector.tick(30.99)
    assert not a.eligible
    detector.tick(31.0)
    assert a.eligible
    status = detector.status(a.id, 31.0)
    assert (status.ejected, status.until, status.returned_at, status.streak) == (False, None, 31.0, 1)


def test_failures_reported_while_out_are_ignored() -> None:
    detector, (a, _), _ = make()
    fail(detector, a, 0.0)
    fail(detector, a, 1.0, 20)
    detector.tick(30.0)
    assert a.eligible
    assert detector.status(a.id, 30.0).failures_in_window == 0
    fail(detector, a, 30.0, 4)
    assert a.eligible


def test_ejection_time_grows_with_ejections_in_a_row_up_to_the_cap() -> None:
    detector, (a, _), _ = make(Spec(eject_for=30.0, max_eject_for=100.0))
    now = 0.0
    lengths = []
    for _ in range(5):
        fail(detector, a, now)
        status = detector.status(a.id, now)
        assert status.until is not None
        lengths.append(status.until - now)
        now = status.until
        detector.tick(now)
        assert a.eligible
        now += 99.0  # back for less than max_eject_for: still in a row
    assert lengths == [30.0, 60.0, 90.0, 100.0, 100.0]
    assert detector.status(a.id, now).ejections == 5


def test_the_streak_starts_over_after_max_eject_for_in_service() -> None:
    detector, (a, _), _ = make(Spec(eject_for=30.0, max_eject_for=100.0))
    fail(detector, a, 0.0)
    detector.tick(30.0)
    fail(detector, a, 40.0)
    detector.tick(100.0)
    assert detector.status(a.id, 100.0).streak == 2
    assert detector.status(a.id, 199.99).streak == 2
    assert detector.status(a.id, 200.0).streak == 0  # back for max_eject_for
    fail(detector, a, 200.0)
    assert detector.status(a.id, 200.0).until == 230.0


@pytest.mark.parametrize(
    ("n", "percent", "limit"),
    [
        (0, 50, 0),
        (1, 50, 0),  # a group of one never ejects
        (1, 100, 0),
        (2, 50, 1),
        (2, 100, 1),  # never all of them
        (3, 10, 1),  # floor is 0: raised to one
        (3, 50, 1),
        (4, 50, 2),
        (10, 30, 3),
        (10, 35, 3),
        (5, 100, 4),
        (5, 0, 0),  # 0% turns ejection off
        (100, 50, 50),
    ],
)
def test_max_ejected(n: int, percent: float, limit: int) -> None:
    assert max_ejected(n, percent) == limit


def test_the_bound_holds_and_a_waiting_server_goes_when_there_is_room() -> None:
    detector, (a, b, c, d), _ = make(n=4)
    assert detector.limit == 2
    fail(detector, a, 0.0)
    fail(detector, b, 0.0)
    fail(detector, c, 25.0)  # a third would pass 50% of four
    assert [s.eligible for s in (a, b, c, d)] == [False, False, True, True]
    assert detector.status(c.id, 25.0).failures_in_window == 5
    detector.tick(30.0)
    assert a.eligible and b.eligible
    detector.record(c, "5xx", 30.0)  # its window is still full: out now
    assert not c.eligible and detector.ejected_count() == 1


def test_a_group_of_one_never_ejects() -> None:
    detector, (a,), _ = make(n=1)
    fail(detector, a, 0.0, 50)
    assert a.eligible


def test_never_ejects_the_last_eligible_server() -> None:
    detector, (a, b, c), _ = make(Spec(max_ejected_percent=100), n=3)
    assert detector.limit == 2
    b.set_down(Down.ACTIVE_CHECK, True)
    c.set_down(Down.DRAINING, True)
    fail(detector, a, 0.0, 20)
    assert a.eligible
    c.set_down(Down.DRAINING, False)
    detector.record(a, "5xx", 0.0)  # now c can carry the traffic
    assert not a.eligible and c.eligible


def test_tick_brings_one_back_early_when_nothing_else_is_eligible() -> None:
    detector, (a, b, c), _ = make(Spec(max_ejected_percent=100), n=3)
    fail(detector, a, 0.0)
    fail(detector, b, 1.0)
    c.set_down(Down.ACTIVE_CHECK, True)  # the last one fails its active check
    detector.tick(2.0)
    assert a.eligible and not b.eligible  # a was due back first
    assert detector.status(a.id, 2.0).returned_at == 2.0
    detector.tick(2.5)
    assert not b.eligible  # one eligible server is enough
    detector.tick(31.0)
    assert b.eligible


def test_tick_does_not_bring_back_a_server_that_would_stay_down() -> None:
    detector, (a, b), _ = make()
    fail(detector, a, 0.0)
    a.set_down(Down.ACTIVE_CHECK, True)
    b.set_down(Down.ACTIVE_CHECK, True)
    detector.tick(1.0)
    assert a.down == Down.PASSIVE | Down.ACTIVE_CHECK


def test_unknown_servers_are_ignored() -> None:
    detector, _, _ = make()
    stranger = Server("http://10.9.9.9:80")
    fail(detector, stranger, 0.0, 10)
    assert stranger.eligible
    with pytest.raises(KeyError):
        detector.status(stranger.id)


def test_add_and_remove_follow_the_group_size() -> None:
    detector, (a, b, c, d), clock = make(n=4)
    fail(detector, a, 0.0)
    fail(detector, b, 0.5)
    assert detector.ejected_count() == 2
    clock.now = 1.0
    assert detector.remove_server(d.id)  # three servers: one may be out
    assert detector.limit == 1
    assert [a.eligible, b.eligible] == [True, False]  # the one due soonest came back
    assert detector.status(a.id).returned_at == 1.0
    assert detector.remove_server(b.id)
    assert b.eligible  # its flag is not left behind
    assert not detector.remove_server(b.id)
    e = Server("http://10.0.0.9:80")
    e.set_down(Down.PASSIVE, True)
    detector.add_server(e)
    assert e.eligible
    with pytest.raises(ValueError):
        detector.add_server(e)
    assert detector.server_ids() == [a.id, c.id, e.id]
    assert detector.limit == 1
    detector.tick(100.0)  # stale return times of removed servers are skipped
    assert detector.ejected_count() == 0


def test_adopt_keeps_state_by_server_id() -> None:
    spec = Spec()
    old, (a, b, c, d), clock = make(spec, 4)
    fail(old, a, 0.0)
    fail(old, c, 2.0)
    fail(old, b, 30.0, 3)
    old.tick(32.0)  # a and c back, streak 1
    fail(old, c, 33.0)  # c out again for 60 s
    a2, b2, c2 = Server(a.url), Server(b.url), Server(c.url)
    clock.now = 33.0
    new = OutlierDetector([a2, b2, c2, d], Spec(max_failures=4), clock=clock, previous=old)
    assert not c2.eligible and new.status(c.id).until == 93.0
    assert new.status(a.id).streak == 1 and new.status(a.id).ejections == 1
    assert new.status(b.id).failures_in_window == 3
    new.record(b2, "5xx", 33.0)  # the fourth: the new spec ejects at four
    assert not b2.eligible
    new.tick(93.0)
    assert c2.eligible


def test_adopt_into_a_smaller_group_respects_the_bound() -> None:
    old, (a, b, _, _), clock = make(n=4)
    fail(old, a, 0.0)
    fail(old, b, 1.0)
    clock.now = 2.0
    new = OutlierDetector([a, b], Spec(), clock=clock, previous=old)
    assert new.limit == 1 and new.ejected_count() == 1
    assert a.eligible and not b.eligible


@pytest.mark.parametrize(
    "spec",
    [
        Spec(max_failures=0),
        Spec(window=0.0),
        Spec(eject_for=0.0),
        Spec(eject_for=60.0, max_eject_for=30.0),
        Spec(max_ejected_percent=101),
        Spec(on=frozenset({"5xx", "success"})),
        Spec(on=frozenset({"503"})),
    ],
)
def test_bad_specs_are_refused(spec: Spec) -> None:
    with pytest.raises(ValueError):
        OutlierDetector(servers(2), spec, clock=Clock())


def test_status_outcome() -> None:
    assert [status_outcome(c) for c in (100, 200, 304, 399, 400, 429, 499, 500, 503, 599, 700)] == [
        "success",
        "success",
        "success",
        "success",
        "4xx",
        "4xx",
        "4xx",
        "5xx",
        "5xx",
        "5xx",
        "5xx",
    ]


# -- the bound under arbitrary interleavings of failures ------------------------------------

OUTCOME = st.sampled_from(["5xx", "5xx", "connect_error", "timeout", "success", "4xx"])
STEP = st.sampled_from([0.0, 0.0, 0.0, 0.5, 2.0, 7.0])
OPS = st.one_of(
    st.tuples(st.just("record"), st.integers(0, 7), OUTCOME, STEP),
    st.tuples(st.just("burst"), st.integers(0, 7), st.just("5xx"), STEP),  # every server fails at once
    st.tuples(st.just("tick"), st.integers(0, 7), st.just(""), st.sampled_from([0.0, 1.0, 30.0, 200.0])),
    st.tuples(st.just("check"), st.integers(0, 7), st.booleans().map(str), STEP),  # active check down / up
)


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(1, 8),
    percent=st.sampled_from([0.0, 10.0, 34.0, 50.0, 100.0]),
    max_failures=st.integers(1, 4),
    ops=st.lists(OPS, min_size=10, max_size=80),
)
def test_never_more_ejected_than_the_bound(
    n: int, percent: float, max_failures: int, ops: list[tuple[str, int, str, float]]
) -> None:
    spec = Spec(max_failures=max_failures, window=5.0, eject_for=10.0, max_eject_for=40.0, max_ejected_percent=percent)
    detector, group, _ = make(spec, n)
    limit = max_ejected(n, percent)
    assert detector.limit == limit
    now = 0.0
    for op, index, arg, step in ops:
        now += step
        server = group[index % n]
        eligible_before = sum(s.eligible for s in group)
        before = detector.status(server.id, now)
        if op == "record":
            detector.record(server, arg, now)
        elif op == "burst":
            for _ in range(max_failures):
                for s in group:
                    detector.record(s, arg, now)
        elif op == "tick":
            detector.tick(now)
        else:
            server.set_down(Down.ACTIVE_CHECK, arg == "True")
        statuses = detector.statuses(now)
        ejected = [s for s in group if statuses[s.id].ejected]
        # The hard bound, and the flags say the same as the detector.
        assert len(ejected) == detector.ejected_count() <= limit
        if ejected and len(ejected) == limit:
            event("bound reached")
        assert ejected == [s for s in group if s.down & Down.PASSIVE]
        for s in ejected:
            status = statuses[s.id]
            assert status.until is not None and status.ejected_at is not None
            assert status.until - status.ejected_at == min(spec.eject_for * status.streak, spec.max_eject_for)
        if op in ("record", "burst"):
            # Failures alone never take the last eligible server out.
            assert sum(s.eligible for s in group) >= min(1, eligible_before)
        if op == "record" and not before.ejected and statuses[server.id].ejected:
            assert arg in DEFAULT_ON and before.failures_in_window + 1 >= max_failures
        if op == "tick":
            assert all((statuses[s.id].until or 0.0) > now for s in ejected)
            if not any(s.eligible for s in group):
                assert not any(s.down == Down.PASSIVE for s in group)
            elif eligible_before == 0:
                event("tick brought one back")
