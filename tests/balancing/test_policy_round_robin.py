"""Round robin (weights ignored) and smooth weighted round robin."""

from __future__ import annotations

import random

import pytest
from balancing_fakes import count_picks, members, weight_lists
from hypothesis import given, settings
from hypothesis import strategies as st

from fulcrum.balancing import round_robin
from fulcrum.balancing.base import PickContext
from fulcrum.balancing.round_robin import RoundRobin, SmoothWeightedRoundRobin
from fulcrum.balancing.simulate import SimMember


def _nginx_reference(weights: list[int], steps: int) -> list[int]:
    """The smooth algorithm written out plainly, to check the recorded schedule against."""
    current = [0] * len(weights)
    out = []
    for _ in range(steps):
        for i, w in enumerate(weights):
            current[i] += w
        best = max(range(len(weights)), key=lambda i: (current[i], -i))
        current[best] -= sum(weights)
        out.append(best)
    return out


def test_swrr_gives_nginx_sequence_for_5_1_1() -> None:
    servers = members([5, 1, 1])
    names = {"s0": "a", "s1": "b", "s2": "c"}
    balancer = SmoothWeightedRoundRobin(servers)
    seq = [names[balancer.pick(PickContext(), servers).id] for _ in range(14)]  # type: ignore[union-attr]
    assert seq == list("aabacaa") * 2


@given(weight_lists, st.integers(min_value=1, max_value=3))
def test_swrr_is_exact_over_whole_cycles(weights: list[int], cycles: int) -> None:
    # Tolerance: none. Over whole cycles each server gets exactly its weight's share.
    servers = members(weights)
    balancer = SmoothWeightedRoundRobin(servers)
    counts = count_picks(balancer, servers, sum(weights) * cycles)
    assert all(counts[s.id] == s.weight * cycles for s in servers)


@settings(max_examples=25)
@given(weight_lists)
def test_swrr_within_2_percent_over_10000_picks(weights: list[int]) -> None:
    # Tolerance: each server's share within 2 points of weight / total over 10,000 picks.
    servers = members(weights)
    balancer = SmoothWeightedRoundRobin(servers)
    counts = count_picks(balancer, servers, 10_000)
    total = sum(weights)
    assert all(abs(counts[s.id] / 10_000 - s.weight / total) <= 0.02 for s in servers)


@given(weight_lists, st.integers(min_value=1, max_value=60))
def test_swrr_replay_matches_the_algorithm(weights: list[int], steps: int) -> None:
    servers = members(weights)
    balancer = SmoothWeightedRoundRobin(servers)
    picked = [servers.index(balancer.pick(PickContext(), servers)) for _ in range(steps * 3)]  # type: ignore[arg-type]
    assert picked == _nginx_reference(weights, steps * 3)


def test_swrr_long_cycles_run_without_a_schedule(monkeypatch: pytest.MonkeyPatch) -> None:
    weights = [7, 3, 2]
    servers = members(weights)
    monkeypatch.setattr(round_robin, "SCHEDULE_LIMIT", 4)
    balancer = SmoothWeightedRoundRobin(servers)
    picked = [servers.index(balancer.pick(PickContext(), servers)) for _ in range(36)]  # type: ignore[arg-type]
    assert picked == _nginx_reference(weights, 36)


@given(weight_lists, st.data())
def test_swrr_respects_exclude(weights: list[int], data: st.DataObject) -> None:
    servers = members(weights)
    ids = [s.id for s in servers]
    exclude = frozenset(data.draw(st.lists(st.sampled_from(ids), unique=True)))
    balancer = SmoothWeightedRoundRobin(servers)
    ctx = PickContext(exclude=exclude)
    for _ in range(2 * sum(weights)):
        picked = balancer.pick(ctx, servers)
        if exclude == set(ids):
            assert picked is None
        else:
            assert picked is not None and picked.id not in exclude


def test_swrr_exclude_keeps_weights_among_the_rest() -> None:
    # Tolerance: among the allowed servers the shares stay within 2 points of their weights over 6,000 picks.
    servers = members([3, 2, 1])
    balancer = SmoothWeightedRoundRobin(servers)
    counts = count_picks(balancer, servers, 6000, PickContext(exclude=frozenset({"s0"})))
    assert counts["s0"] == 0
    assert abs(counts["s1"] / 6000 - 2 / 3) <= 0.02


def test_swrr_never_picks_weight_zero_and_none_when_nothing_left() -> None:
    servers = members([0, 2, 0])
    balancer = SmoothWeightedRoundRobin(servers)
    assert count_picks(balancer, servers, 10) == {"s1": 10}
    assert balancer.pick(PickContext(exclude=frozenset({"s1"})), servers) is None
    empty: SmoothWeightedRoundRobin[SimMember] = SmoothWeightedRoundRobin([])
    assert empty.pick(PickContext(), []) is None


def test_swrr_rebuilds_for_another_sequence() -> None:
    servers = members([1, 1])
    balancer = SmoothWeightedRoundRobin(servers)
    other = members([2, 1], prefix="t")
    counts = count_picks(balancer, other, 30)
    assert counts == {"t0": 20, "t1": 10}


@given(weight_lists, st.integers(min_value=0, max_value=2**32))
def test_round_robin_ignores_weights(weights: list[int], seed: int) -> None:
    # Tolerance: none. Over whole rounds every server gets exactly the same count, whatever its weight.
    servers = members(weights)
    balancer = RoundRobin(servers, rng=random.Random(seed))
    counts = count_picks(balancer, servers, len(servers) * 5)
    assert all(counts[s.id] == 5 for s in servers)


@given(weight_lists, st.data())
def test_round_robin_respects_exclude(weights: list[int], data: st.DataObject) -> None:
    servers = members(weights)
    ids = [s.id for s in servers]
    exclude = frozenset(data.draw(st.lists(st.sampled_from(ids), unique=True)))
    balancer = RoundRobin(servers, rng=random.Random(data.draw(st.integers(0, 1000))))
    counts = count_picks(balancer, servers, 4 * len(servers), PickContext(exclude=exclude))
    allowed = [i for i in ids if i not in exclude]
    if not allowed:
        assert counts == {"": 4 * len(servers)}
    else:
        assert set(counts) == set(allowed)
        assert max(counts.values()) - min(counts.values()) <= 1 + len(exclude)


def test_round_robin_start_is_seeded_and_spread() -> None:
    servers = members([1] * 10)
    firsts = {RoundRobin(servers, rng=random.Random(seed)).pick(PickContext(), servers) for seed in range(60)}
    assert len(firsts) > 5
    a = RoundRobin(servers, rng=random.Random(7))
    b = RoundRobin(servers, rng=random.Random(7))
    assert [a.pick(PickContext(), servers) for _ in range(20)] == [b.pick(PickContext(), servers) for _ in range(20)]


def test_round_robin_empty() -> None:
    assert RoundRobin([]).pick(PickContext(), []) is None
