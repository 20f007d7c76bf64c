"""Token buckets per key and the Retry-After value."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fulcrum.middleware.policy.ratelimit import TokenBuckets, retry_after_header


def test_new_key_starts_full_then_is_refused() -> None:
    buckets = TokenBuckets(rate=1.0, burst=3)
    assert [buckets.take("a", 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a", 0.0) == pytest.approx(1.0)
    assert buckets.take("b", 0.0) == 0.0  # keys are independent


def test_burst_of_one() -> None:
    buckets = TokenBuckets(rate=2.0, burst=1)
    assert buckets.take("a", 10.0) == 0.0
    assert buckets.take("a", 10.1) == pytest.approx(0.4)
    assert buckets.take("a", 10.5) == 0.0


def test_refills_at_rate_up_to_burst() -> None:
    buckets = TokenBuckets(rate=10.0, burst=5)
    for _ in range(5):
        assert buckets.take("a", 0.0) == 0.0
    assert buckets.take("a", 0.0) == pytest.approx(0.1)
    assert buckets.take("a", 0.25) == 0.0  # 2.5 tokens back
    assert buckets.take("a", 0.25) == 0.0
    assert buckets.take("a", 0.25) == pytest.approx(0.05)
    # A long idle spell refills to burst, not beyond.
    allowed = sum(buckets.take("a", 1000.0) == 0.0 for _ in range(20))
    assert allowed == 5


def test_refused_takes_cost_nothing() -> None:
    buckets = TokenBuckets(rate=1.0, burst=1)
    assert buckets.take("a", 0.0) == 0.0
    for _ in range(100):
        assert buckets.take("a", 0.5) == pytest.approx(0.5)
    assert buckets.take("a", 1.0) == 0.0


def test_clock_going_back_refills_nothing() -> None:
    buckets = TokenBuckets(rate=1.0, burst=1)
    assert buckets.take("a", 5.0) == 0.0
    assert buckets.take("a", 4.0) == pytest.approx(2.0)
    assert buckets.take("a", 6.0) == 0.0


@settings(max_examples=200)
@given(
    rate=st.floats(min_value=0.01, max_value=1000),
    burst=st.integers(min_value=1, max_value=50),
    steps=st.lists(st.floats(min_value=0, max_value=5), min_size=1, max_size=200),
)
def test_never_more_than_burst_plus_refill(rate: float, burst: int, steps: list[float]) -> None:
    buckets = TokenBuckets(rate=rate, burst=burst)
    start = now = 1000.0
    allowed = 0
    for step in steps:
        now += step
        if buckets.take("k", now) == 0.0:
            allowed += 1
        assert allowed <= burst + rate * (now - start) + 0.01


@settings(max_examples=200)
@given(
    rate=st.floats(min_value=0.01, max_value=1000),
    burst=st.integers(min_value=1, max_value=20),
    start=st.floats(min_value=0, max_value=1e7),
    extra=st.integers(min_value=0, max_value=30),
)
def test_waiting_the_advertised_time_is_enough(rate: float, burst: int, start: float, extra: int) -> None:
    buckets = TokenBuckets(rate=rate, burst=burst)
    for _ in range(burst):
        assert buckets.take("k", start) == 0.0
    now = start
    for _ in range(extra + 1):
        wait = buckets.take("k", now)
        assert 0 < wait <= 1 / rate + 1e-6
        now += wait
        assert buckets.take("k", now) == 0.0


def test_memory_is_bounded_and_full_buckets_go_first() -> None:
    buckets = TokenBuckets(rate=1.0, burst=2, max_keys=10)
    buckets.take("busy", 0.0)
    buckets.take("busy", 0.0)  # empty: refills completely at t=2
    for i in range(9):
        buckets.take(f"idle{i}", 0.0)  # one token left: full again at t=1
    assert len(buckets) == 10
    assert buckets.take("new", 1.5) == 0.0  # the idle ones are full by now and dropped, the busy one kept
    assert len(buckets) == 2
    assert buckets.take("busy", 1.5) == 0.0  # 1.5 tokens back: a new bucket would have 2
    assert buckets.take("busy", 1.5) == pytest.approx(0.5)


def test_memory_bound_drops_least_recently_used_when_none_is_full() -> None:
    buckets = TokenBuckets(rate=0.001, burst=1, max_keys=16)
    for i in range(16):
        buckets.take(f"k{i}", 0.0)
    buckets.take("k0", 0.0)  # touched again: now the most recent
    buckets.take("new", 0.0)
    assert len(buckets) <= 16
    assert buckets.take("k0", 0.0) > 0  # kept, still empty
    assert buckets.take("k1", 0.0) == 0.0  # dropped, so back as a new, full bucket


@given(st.lists(st.integers(min_value=0, max_value=200), max_size=500), st.integers(min_value=1, max_value=40))
def test_never_more_keys_than_max(keys: list[int], max_keys: int) -> None:
    buckets = TokenBuckets(rate=1.0, burst=1, max_keys=max_keys)
    for i, key in enumerate(keys):
        buckets.take(str(key), i * 0.01)
        assert len(buckets) <= max_keys


def test_prune_is_amortized() -> None:
    buckets = TokenBuckets(rate=0.001, burst=1, max_keys=800)
    sweeps = 0
    for i in range(8000):
        before = len(buckets)
        buckets.take(str(i), 0.0)
        sweeps += len(buckets) < before
    assert sweeps <= 8000 // 100 + 1  # one sweep per max_keys // 8 new keys


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rate": 0.0, "burst": 1}, "rate must be"),
        ({"rate": -1.0, "burst": 1}, "rate must be"),
        ({"rate": float("nan"), "burst": 1}, "rate must be"),
        ({"rate": float("inf"), "burst": 1}, "rate must be"),
        ({"rate": 1.0, "burst": 0}, "burst must be at least 1"),
        ({"rate": 1.0, "burst": 1, "max_keys": 0}, "max_keys must be at least 1"),
    ],
)
def test_rejects_bad_settings(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TokenBuckets(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("seconds", "header"),
    [(0.0, "1"), (0.001, "1"), (1.0, "1"), (1.0001, "2"), (2.5, "3"), (59.0, "59"), (float("nan"), "1"),
     (float("inf"), "1000000000")],
)
def test_retry_after_header(seconds: float, header: str) -> None:
    assert retry_after_header(seconds) == header
