"""Least connections: fewest active requests per unit of weight, ties in weighted turn."""

from __future__ import annotations

from fractions import Fraction

from balancing_fakes import count_picks, members, weight_lists
from hypothesis import given, settings
from hypothesis import strategies as st

from fulcrum.balancing.base import PickContext
from fulcrum.balancing.least_conn import LeastConn


@given(st.data())
def test_picks_a_least_loaded_allowed_server(data: st.DataObject) -> None:
    weights = data.draw(weight_lists)
    servers = members(weights)
    for s in servers:
        s.active = data.draw(st.integers(min_value=0, max_value=50))
    ids = [s.id for s in servers]
    exclude = frozenset(data.draw(st.lists(st.sampled_from(ids), unique=True)))
    picked = LeastConn(servers).pick(PickContext(exclude=exclude), servers)
    allowed = [s for s in servers if s.id not in exclude]
    if not allowed:
        assert picked is None
        return
    assert picked is not None and picked.id not in exclude
    best = min(Fraction(s.active, s.weight) for s in allowed)
    assert Fraction(picked.active, picked.weight) == best


@settings(max_examples=40)
@given(weight_lists)
def test_idle_servers_share_by_weight_exactly(weights: list[int]) -> None:
    # Tolerance: none. With every server idle the ties go in smooth weighted round robin order,
    # so over one cycle (sum of weights) each server is picked exactly weight times.
    servers = members(weights)
    balancer = LeastConn(servers)
    counts = count_picks(balancer, servers, sum(weights) * 2)
    assert all(counts[s.id] == 2 * s.weight for s in servers)


def test_equal_ties_rotate_evenly() -> None:
    servers = members([1, 1, 1, 1])
    for s in servers:
        s.active = 3
    servers[2].active = 9
    balancer = LeastConn(servers)
    counts = count_picks(balancer, servers, 300)
    assert counts == {"s0": 100, "s1": 100, "s3": 100}


def test_follows_load_as_it_changes() -> None:
    servers = members([1, 1, 2])
    balancer = LeastConn(servers)
    for _ in range(40):  # every pick holds its server: in-flight counts stay balanced per weight
        picked = balancer.pick(PickContext(), servers)
        assert picked is not None
        picked.active += 1
    assert [s.active for s in servers] == [10, 10, 20]


def test_weight_zero_and_empty() -> None:
    servers = members([0, 0])
    assert LeastConn(servers).pick(PickContext(), servers) is None
    assert LeastConn([]).pick(PickContext(), []) is None
