"""Least time over a peak-EWMA latency estimate."""

from __future__ import annotations

import math
import random

from balancing_fakes import count_picks, members, weight_lists
from hypothesis import given, settings
from hypothesis import strategies as st

from fulcrum.balancing.base import PickContext
from fulcrum.balancing.latency import latency_estimate, observe_latency
from fulcrum.balancing.least_time import UNKNOWN_PENALTY, LeastTime, server_cost
from fulcrum.balancing.p2c import PowerOfTwoChoices
from fulcrum.balancing.simulate import LoadModel, SimMember, VirtualClock, exponential_service


def test_peak_jumps_up_at_once_and_comes_down_slowly() -> None:
    s = SimMember(id="a")
    observe_latency(s, 10.0, now=1.0)
    assert (s.ewma_ms, s.ewma_at) == (10.0, 1.0)
    observe_latency(s, 200.0, now=1.1)
    assert s.ewma_ms == 200.0  # the slow answer counts in full at once
    observe_latency(s, 10.0, now=1.2, decay_s=10.0)
    assert 190.0 < s.ewma_ms < 200.0  # a fast answer 0.1 s later barely moves it
    observe_latency(s, 10.0, now=31.2, decay_s=10.0)
    assert 10.0 < s.ewma_ms < 20.0  # 30 s (3 decay times) later a fast answer mostly replaces it
    before = s.ewma_ms
    observe_latency(s, 10.0, now=31.2, decay_s=10.0)
    assert s.ewma_ms == before  # no time passed: no weight for the new sample


def test_estimate_fades_while_idle() -> None:
    assert latency_estimate(100.0, 5.0, 5.0, 10.0) == 100.0
    assert math.isclose(latency_estimate(100.0, 5.0, 15.0, 10.0), 100.0 / math.e)
    assert latency_estimate(100.0, 5.0, 4.0, 10.0) == 100.0  # a clock behind the sample does not inflate it
    assert latency_estimate(0.0, 0.0, 50.0, 10.0) == 0.0


def test_unmeasured_server_takes_one_probe_at_a_time() -> None:
    assert server_cost(0.0, 0.0, 0, 1.0, 10.0, 10.0) == 0.0
    assert server_cost(0.0, 0.0, 1, 1.0, 10.0, 10.0) >= UNKNOWN_PENALTY
    assert server_cost(20.0, 10.0, 2, 2.0, 10.0, 10.0) == 30.0


def _cost(s: SimMember, now: float = 100.0) -> float:
    return server_cost(s.ewma_ms, s.ewma_at, s.active, float(s.weight), now, 10.0)


@settings(max_examples=60)
@given(st.data())
def test_respects_exclude_and_never_picks_the_single_costliest(data: st.DataObject) -> None:
    clock = VirtualClock(100.0)
    weights = data.draw(weight_lists)
    servers = members(weights)
    for s in servers:
        s.active = data.draw(st.integers(min_value=0, max_value=20))
        s.ewma_ms = data.draw(st.sampled_from([0.0, 1.0, 5.0, 20.0, 300.0]))
        s.ewma_at = data.draw(st.floats(min_value=0.0, max_value=100.0))
    ids = [s.id for s in servers]
    exclude = frozenset(data.draw(st.lists(st.sampled_from(ids), unique=True)))
    balancer = LeastTime(servers, clock=clock, rng=random.Random(data.draw(st.integers(0, 1000))))
    counts = count_picks(balancer, servers, 30, PickContext(exclude=exclude))
    allowed = [s for s in servers if s.id not in exclude]
    if not allowed:
        assert counts == {"": 30}
        return
    assert not exclude & set(counts) and "" not in counts
    costs = {s.id: _cost(s) for s in allowed}
    worst = max(costs.values())
    if len(allowed) >= 2 and list(costs.values()).count(worst) == 1:
        assert all(costs[i] < worst for i in counts)


def test_of_two_servers_always_the_cheaper() -> None:
    clock = VirtualClock(100.0)
    servers = members([1, 2])
    servers[0].ewma_ms, servers[0].ewma_at, servers[0].active = 10.0, 100.0, 3  # cost 40
    servers[1].ewma_ms, servers[1].ewma_at, servers[1].active = 30.0, 100.0, 2  # cost 90 / 2 = 45
    balancer = LeastTime(servers, clock=clock, rng=random.Random(3))
    assert count_picks(balancer, servers, 100) == {"s0": 100}
    servers[1].active = 1  # cost 60 / 2 = 30
    assert count_picks(balancer, servers, 100) == {"s1": 100}


@settings(max_examples=15)
@given(weight_lists, st.integers(min_value=0, max_value=2**32))
def test_idle_unmeasured_servers_share_by_weight(weights: list[int], seed: int) -> None:
    # Tolerance: all costs tie at zero, so the first drawn wins: within 2.5 points of weight / total
    # over 20,000 picks, as for weighted random.
    servers = members(weights)
    balancer = LeastTime(servers, clock=VirtualClock(), rng=random.Random(seed))
    counts = count_picks(balancer, servers, 20_000)
    total = sum(weights)
    assert all(abs(counts[s.id] / 20_000 - s.weight / total) <= 0.025 for s in servers)


def _phases(balancer_for: str) -> list[float]:
    """Share of s0 in six windows of 10 virtual seconds: normal, 10x slower (three windows), recovered (two)."""
    decay = 1.0  # seconds; the production default is 10 s, the behaviour scales with it
    servers = members([1, 1, 1])
    clock = VirtualClock()
    if balancer_for == "least_time":
        balancer: PowerOfTwoChoices[SimMember] = LeastTime(servers, clock=clock, decay_s=decay, rng=random.Random(1))
    else:
        balancer = PowerOfTwoChoices(servers, clock=clock, decay_s=decay, rng=random.Random(1))
    model = LoadModel(
        balancer,
        servers,
        clock,
        rate=300.0,  # about 2 requests in flight per server at 20 ms
        service=exponential_service(20.0),
        rng=random.Random(2),
        decay_s=decay,
    )
    shares = []
    for phase in ("normal", "slow", "slow", "slow", "recovered", "recovered"):
        model.service = exponential_service(20.0, {"s0": 10.0} if phase == "slow" else None)
        counts = model.run(3000)
        shares.append(counts["s0"] / 3000)
    return shares


def test_least_time_drains_a_slow_server_and_gives_it_back() -> None:
    # s0 turns 10x slower for 30 s then recovers. Fair share is 1/3.
    normal, slow1, slow2, slow3, back1, back2 = _phases("least_time")
    assert normal > 0.28
    assert slow1 < 0.1  # the first slow answers cut its share at once
    assert slow2 < 0.05 and slow3 < 0.05  # a small share while slow...
    assert slow2 > 0 and slow3 > 0  # ...but never starved: it is probed as its estimate fades
    assert back1 > 0.2 and back2 > 0.28  # and wins its share back once it answers fast again


def test_p2c_also_avoids_a_slow_server() -> None:
    normal, _slow1, slow2, slow3, _back1, back2 = _phases("p2c")
    assert normal > 0.28
    assert 0 < slow2 < 0.15 and 0 < slow3 < 0.15
    assert back2 > 0.28
