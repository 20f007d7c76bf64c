"""A server's last minute (``state.server.Recent``): slots expire, percentiles, throughput, connection reuse."""

from __future__ import annotations

import random

import pytest

from fulcrum.state.server import RECENT_BUCKETS, Recent, recent_bound, recent_bucket


def test_a_bucket_holds_what_its_bounds_say() -> None:
    rng = random.Random(7)
    for ms in [0.0, 0.01, 0.05, 0.0501, 1.0, 12.5, 999.0, 60_000.0] + [rng.uniform(0, 70_000) for _ in range(500)]:
        j = recent_bucket(ms)
        assert 0 <= j < RECENT_BUCKETS
        if j < RECENT_BUCKETS - 1:
            assert ms <= recent_bound(j) * (1 + 1e-9)
        if j:
            assert ms > recent_bound(j - 1) * (1 - 1e-9)
    assert recent_bucket(10**9) == RECENT_BUCKETS - 1


def test_nothing_recorded_reads_as_no_figures() -> None:
    assert Recent().summary(100.0) == (0, None, None, 0.0, None)


def test_percentiles_are_within_a_bucket_of_the_truth() -> None:
    recent = Recent()
    samples = [float(ms) for ms in range(1, 1001)]  # 1 .. 1000 ms
    random.Random(3).shuffle(samples)
    for ms in samples:
        recent.record(1000.0, ms, 100)
    requests, p50, p99, _, _ = recent.summary(1000.5)
    assert requests == 1000
    assert p50 is not None and p99 is not None
    assert 500 / 1.25 <= p50 <= 500 * 1.25
    assert 990 / 1.25 <= p99 <= 990 * 1.25


def test_the_window_forgets_what_is_older_than_a_minute() -> None:
    recent = Recent()
    for _ in range(10):
        recent.record(1000.0, 5.0, 1000)  # slot of 1000..1010 s
    recent.connected(1000.0)
    for _ in range(30):
        recent.record(1031.0, 50.0, 1000)
    requests, p50, _, rate, share = recent.summary(1035.0)
    assert requests == 40
    assert share == pytest.approx(1 / 40)
    assert rate == pytest.approx(40_000 / 35.0)  # since the first record, 35 s ago
    assert p50 is not None and 40 <= p50 <= 62.5
    # At 1065 s the window is 1010..1065: the first slot is gone.
    requests, p50, _, rate, share = recent.summary(1065.0)
    assert requests == 30 and share == 0.0
    assert rate == pytest.approx(30_000 / 55.0)
    # The clock comes round to the first slot's place again: it starts from zero.
    recent.record(1062.0, 1.0, 10)
    assert recent.summary(1062.0)[0] == 31
    assert recent.summary(2000.0) == (0, None, None, 0.0, None)


def test_more_connections_than_requests_read_as_all_new() -> None:
    recent = Recent()
    recent.connected(10.0)
    recent.connected(10.0)
    recent.record(10.0, 1.0, 0)
    assert recent.summary(11.0)[4] == 1.0
