"""Weighted random choice."""

from __future__ import annotations

import random

from balancing_fakes import count_picks, members, weight_lists
from hypothesis import given, settings
from hypothesis import strategies as st

from fulcrum.balancing.base import PickContext
from fulcrum.balancing.weighted_random import CumulativeWeights, WeightedRandom


@settings(max_examples=30)
@given(weight_lists, st.integers(min_value=0, max_value=2**32))
def test_shares_follow_weights(weights: list[int], seed: int) -> None:
    # Tolerance: each share within 2.5 points of weight / total over 20,000 picks
    # (more than 6 standard deviations of a binomial share at n = 20,000).
    servers = members(weights)
    balancer = WeightedRandom(servers, rng=random.Random(seed))
    counts = count_picks(balancer, servers, 20_000)
    total = sum(weights)
    assert all(abs(counts[s.id] / 20_000 - s.weight / total) <= 0.025 for s in servers)


@given(weight_lists, st.data())
def test_respects_exclude(weights: list[int], data: st.DataObject) -> None:
    servers = members(weights)
    ids = [s.id for s in servers]
    exclude = frozenset(data.draw(st.lists(st.sampled_from(ids), unique=True)))
    balancer = WeightedRandom(servers, rng=random.Random(data.draw(st.integers(0, 1000))))
    counts = count_picks(balancer, servers, 50, PickContext(exclude=exclude))
    if exclude == set(ids):
        assert counts == {"": 50}
    else:
        assert not exclude & set(counts) and "" not in counts


def test_exclude_keeps_proportions_among_the_rest() -> None:
    # Tolerance: within 2.5 points over 20,000 picks; s0 (weight 90) is excluded, so redraws run out often.
    servers = members([90, 3, 1])
    balancer = WeightedRandom(servers, rng=random.Random(3))
    counts = count_picks(balancer, servers, 20_000, PickContext(exclude=frozenset({"s0"})))
    assert counts["s0"] == 0
    assert abs(counts["s1"] / 20_000 - 0.75) <= 0.025


def test_same_seed_same_picks() -> None:
    servers = members([3, 1, 2])
    a = WeightedRandom(servers, rng=random.Random(42))
    b = WeightedRandom(servers, rng=random.Random(42))
    assert [a.pick(PickContext(), servers) for _ in range(100)] == [b.pick(PickContext(), servers) for _ in range(100)]


def test_weight_zero_never_drawn_and_empty() -> None:
    servers = members([0, 4, 0, 1])
    counts = count_picks(WeightedRandom(servers, rng=random.Random(1)), servers, 2000)
    assert set(counts) == {"s1", "s3"}
    assert WeightedRandom([]).pick(PickContext(), []) is None
    zero = members([0])
    assert WeightedRandom(zero).pick(PickContext(), zero) is None


class _EdgeRandom(random.Random):
    """Always draws the largest float below 1."""

    def random(self) -> float:
        return 1.0 - 2.0**-53


@given(st.lists(st.integers(min_value=0, max_value=10**12), min_size=2, max_size=8).filter(
    lambda ws: sum(1 for w in ws if w > 0) >= 2))
def test_draws_stay_on_servers_with_weight_even_at_the_edge(weights: list[int]) -> None:
    cw = CumulativeWeights(weights)
    for rng in (_EdgeRandom(), random.Random(0)):
        first = cw.draw(rng)
        assert weights[first] > 0
        other = cw.draw_other(rng, first)
        assert other != first and weights[other] > 0


@settings(max_examples=30)
@given(weight_lists.filter(lambda ws: len(ws) >= 2), st.integers(min_value=0, max_value=2**32))
def test_draw_other_follows_the_remaining_weights(weights: list[int], seed: int) -> None:
    # Tolerance: within 3 points of w / (total - w_first) over 10,000 draws.
    cw = CumulativeWeights(weights)
    rng = random.Random(seed)
    counts = [0] * len(weights)
    for _ in range(10_000):
        counts[cw.draw_other(rng, 0)] += 1
    rest = sum(weights) - weights[0]
    assert counts[0] == 0
    assert all(abs(counts[i] / 10_000 - weights[i] / rest) <= 0.03 for i in range(1, len(weights)))
