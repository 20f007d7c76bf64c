"""Retry budget, the rolling counters under it, and the retry decision."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fulcrum.health.budget import (
    IDEMPOTENT_METHODS,
    RetryBudget,
    RollingCounts,
    check_when,
    retryable,
)


class Clock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# -- rolling counts ---------------------------------------------------------------------------


def test_rolling_counts_sum_the_buckets_in_the_window() -> None:
    counts = RollingCounts(10.0, 10)
    counts.add(0.5, 1, 0)
    counts.add(3.2, 2, 1)
    counts.add(9.9, 1, 1)
    assert (counts.total, counts.marked) == (4, 2)
    counts.advance(10.0)  # bucket [0, 1) leaves
    assert (counts.total, counts.marked) == (3, 2)
    counts.advance(12.99)  # the window is buckets [3, 4) to [12, 13)
    assert (counts.total, counts.marked) == (3, 2)
    counts.advance(13.0)
    assert (counts.total, counts.marked) == (1, 1)
    counts.advance(100.0)  # far ahead: everything gone
    assert (counts.total, counts.marked) == (0, 0)


def test_rolling_counts_put_a_late_time_in_the_newest_bucket() -> None:
    counts = RollingCounts(1.0, 4)
    counts.add(5.0, 1, 0)
    counts.add(4.0, 1, 1)  # earlier than the newest bucket
    assert (counts.total, counts.marked) == (2, 1)
    counts.advance(5.99)
    assert counts.total == 2
    counts.advance(6.0)
    assert counts.total == 0


def test_rolling_counts_copy_is_independent() -> None:
    counts = RollingCounts(1.0, 2)
    counts.add(0.1, 3, 1)
    twin = counts.copy()
    twin.add(0.2, 1, 1)
    assert (counts.total, counts.marked) == (3, 1)
    assert (twin.total, twin.marked) == (4, 2)


def test_rolling_counts_reject_a_bad_window() -> None:
    with pytest.raises(ValueError):
        RollingCounts(0.0, 10)
    with pytest.raises(ValueError):
        RollingCounts(1.0, 0)


@settings(max_examples=200, deadline=None)
@given(
    buckets=st.integers(1, 12),
    events=st.lists(st.tuples(st.floats(0, 3, allow_nan=False), st.integers(0, 3), st.integers(0, 3)), max_size=60),
)
def test_rolling_counts_match_a_brute_force_window(buckets: int, events: list[tuple[float, int, int]]) -> None:
    window = 2.0
    width = window / buckets
    counts = RollingCounts(window, buckets)
    now = 0.0
    seen: list[tuple[int, int, int]] = []  # (slot, total, marked) as counted
    for step, total, marked in events:
        now += step
        counts.add(now, total, marked)
        slot = max(int(now // width), max((s for s, _, _ in seen), default=-(10**9)))
        seen.append((slot, total, marked))
        live = [(t, m) for s, t, m in seen if s > slot - buckets]
        assert counts.total == sum(t for t, _ in live)
        assert counts.marked == sum(m for _, m in live)


# -- retry budget -----------------------------------------------------------------------------


def test_budget_floor_lets_low_traffic_retry() -> None:
    budget = RetryBudget(0.2, min_per_second=0.5, window=10.0, clock=Clock())
    # No traffic at all: the floor alone, 0.5/s over 10 s, is 5 retries.
    assert [budget.can_retry(1.0) for _ in range(6)] == [True] * 5 + [False]


def test_budget_grows_with_traffic_at_its_ratio() -> None:
    budget = RetryBudget(0.2, min_per_second=0.0, window=10.0, clock=Clock())
    assert not budget.can_retry(0.0)
    for _ in range(10):
        budget.record_request(0.0)
    assert [budget.can_retry(0.0) for _ in range(3)] == [True, True, False]
    for _ in range(5):
        budget.record_request(0.5)
    assert budget.can_retry(0.5)  # 15 requests buy 3 retries
    assert not budget.can_retry(0.5)
    assert budget.counts(0.5) == (15, 3)


def test_budget_refills_as_the_window_rolls() -> None:
    clock = Clock()
    budget = RetryBudget(0.5, min_per_second=0.0, window=10.0, clock=clock)
    for _ in range(4):
        budget.record_request(0.0)
    assert budget.can_retry(0.0) and budget.can_retry(0.0)
    assert not budget.can_retry(4.0)
    for _ in range(4):
        budget.record_request(5.0)
    assert budget.can_retry(5.0) and budget.can_retry(5.0)
    assert not budget.can_retry(9.9)
    # At 10 s the first second's requests and retries leave together; the later ones stay.
    clock.now = 10.0
    assert budget.counts() == (4, 2)
    assert budget.available() == 0
    clock.now = 15.0
    assert budget.counts() == (0, 0)


def test_budget_is_exact_where_floats_are_not() -> None:
    budget = RetryBudget(0.29, min_per_second=0.0, window=10.0, clock=Clock())
    for _ in range(100):
        budget.record_request(0.0)
    assert budget.available(0.0) == 29
    assert sum(budget.can_retry(0.0) for _ in range(40)) == 29


def test_budget_of_zero_never_retries() -> None:
    budget = RetryBudget(0.0, min_per_second=0.0, clock=Clock())
    for _ in range(1000):
        budget.record_request(1.0)
    assert not budget.can_retry(1.0)


@pytest.mark.parametrize(
    ("ratio", "floor", "window"), [(-0.1, 3.0, 10.0), (1.5, 3.0, 10.0), (0.2, -1.0, 10.0), (0.2, 3.0, 0.0)]
)
def test_budget_rejects_bad_settings(ratio: float, floor: float, window: float) -> None:
    with pytest.raises(ValueError):
        RetryBudget(ratio, floor, window, clock=Clock())


@dataclass
class RetrySpec:
    max: int = 2
    when: tuple[str, ...] = ("connect_error",)
    budget: float = 0.25
    budget_min_per_second: float = 1.0


def test_budget_from_spec() -> None:
    budget = RetryBudget.from_spec(RetrySpec(), clock=Clock(), window=4.0)
    assert (budget.ratio, budget.min_per_second, budget.window) == (0.25, 1.0, 4.0)
    assert budget.available(0.0) == 4


@settings(max_examples=200, deadline=None)
@given(
    ratio=st.sampled_from([0.0, 0.1, 0.2, 0.29, 0.5, 1.0]),
    floor=st.sampled_from([0.0, 0.1, 0.3, 1.0]),
    buckets=st.integers(1, 10),
    ops=st.lists(st.tuples(st.booleans(), st.floats(0, 1.5, allow_nan=False)), max_size=150),
)
def test_budget_never_passes_its_cap_in_the_window_of_a_grant(
    ratio: float, floor: float, buckets: int, ops: list[tuple[bool, float]]
) -> None:
    window = 5.0
    width = window / buckets
    budget = RetryBudget(ratio, floor, window, clock=Clock(), buckets=buckets)
    now = 0.0
    requests: list[int] = []
    retries: list[int] = []
    for is_retry, step in ops:
        now += step
        slot = int(now // width)
        if not is_retry:
            budget.record_request(now)
            requests.append(slot)
            continue
        low = slot - buckets
        in_requests = sum(1 for s in requests if s > low)
        in_retries = sum(1 for s in retries if s > low)
        cap = ratio * in_requests + (floor * window + 1e-9)
        granted = budget.can_retry(now)
        # Exactly the reference decision, so the retries in a window never pass its cap.
        assert granted == (in_retries + 1 <= cap)
        if granted:
            retries.append(slot)


# -- retry decision ---------------------------------------------------------------------------

WHEN = frozenset({"connect_error", "timeout", "502", "503"})


@pytest.mark.parametrize(
    ("method", "outcome", "status", "when", "sent", "expected"),
    [
        (b"GET", "connect_error", 0, WHEN, False, True),
        (b"POST", "connect_error", 0, WHEN, False, True),  # never left: any method
        (b"POST", "timeout", 0, WHEN, True, False),  # went upstream: idempotent only
        (b"PUT", "timeout", 0, WHEN, True, True),
        (b"GET", "reset", 0, WHEN, True, False),  # not listed
        (b"GET", "5xx", 502, WHEN, True, True),
        (b"GET", "5xx", 500, WHEN, True, False),
        (b"GET", "5xx", 500, frozenset({"5xx"}), True, True),
        (b"DELETE", "5xx", 503, WHEN, True, True),
        (b"PATCH", "5xx", 503, WHEN, True, False),
        (b"HEAD", "4xx", 429, frozenset({"429"}), True, True),
        (b"GET", "success", 200, WHEN, True, False),
        (b"GET", "timeout", 0, frozenset(), True, False),
        (b"get", "timeout", 0, WHEN, True, False),  # methods are case-sensitive
    ],
)
def test_retryable(method: bytes, outcome: str, status: int, when: frozenset[str], sent: bool, expected: bool) -> None:
    assert retryable(method, outcome, status, when, sent) is expected


@given(
    method=st.sampled_from([b"POST", b"PATCH", b"CONNECT", b"PROPFIND"]),
    outcome=st.sampled_from(["connect_error", "reset", "timeout", "5xx", "4xx"]),
    status=st.integers(0, 700),
)
def test_a_sent_non_idempotent_request_is_never_retried(method: bytes, outcome: str, status: int) -> None:
    when = frozenset({"connect_error", "reset", "timeout", "5xx", "4xx", str(status)})
    assert method not in IDEMPOTENT_METHODS
    assert not retryable(method, outcome, status, when, True)
    assert retryable(method, outcome, status, when, False)


def test_check_when() -> None:
    assert check_when(["connect_error", "502", "5xx"]) == frozenset({"connect_error", "502", "5xx"})
    for bad in ("success", "600", "50", "5XX", "abc"):
        with pytest.raises(ValueError, match=repr(bad)):
            check_when([bad])
