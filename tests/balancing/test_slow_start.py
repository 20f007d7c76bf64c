"""Slow start: a server that just became eligible ramps up to its weight."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from balancing_fakes import count_picks, members

from fulcrum.balancing import make_balancer
from fulcrum.balancing.base import PickContext
from fulcrum.balancing.simulate import SimMember, VirtualClock, synthetic_context
from fulcrum.balancing.slow_start import MIN_RAMP, ramp, ramp_ends

SLOW_START = 30.0


def test_ramp_is_linear_from_the_floor_to_one() -> None:
    s = SimMember(id="a", up_since=100.0)
    assert ramp(s, 100.0, SLOW_START) == MIN_RAMP
    assert ramp(s, 99.0, SLOW_START) == MIN_RAMP  # a clock behind up_since stays at the floor
    assert ramp(s, 115.0, SLOW_START) == pytest.approx(0.5)
    assert ramp(s, 130.0, SLOW_START) == 1.0
    assert ramp(s, 100.0, 0.0) == 1.0
    assert ramp_ends([s, SimMember(id="b", up_since=110.0)], SLOW_START) == 140.0


def _warming_group(clock: VirtualClock) -> list[SimMember]:
    servers = members([1, 1, 1])
    for s in servers:
        s.up_since = -1000.0  # long warm
    servers[0].up_since = clock.now  # s0 just came back
    return servers


@pytest.mark.parametrize("policy", ["round_robin", "weighted_round_robin", "least_conn", "random", "p2c", "least_time"])
def test_a_returning_server_ramps_up_over_slow_start(policy: str) -> None:
    # Tolerance: over 3,000 idle picks per instant, s0's share at time t is within 3 points of
    # r / (r + 2) with r its ramp: MIN_RAMP at once, 0.5 half way, 1 after slow_start.
    clock = VirtualClock(1000.0)
    servers = _warming_group(clock)
    balancer = make_balancer(policy, servers, rng=random.Random(4), clock=clock, slow_start=SLOW_START)
    for elapsed in (0.0, 15.0, 30.0, 60.0):
        clock.now = 1000.0 + elapsed
        r = ramp(servers[0], clock.now, SLOW_START)
        share = count_picks(balancer, servers, 3000)["s0"] / 3000
        expected = r / (r + 2)
        assert abs(share - expected) <= 0.03, (elapsed, share, expected)


def test_least_conn_ramps_concurrency() -> None:
    # Under load, a warming server holds fewer requests in flight: ramp x weight per unit of load.
    clock = VirtualClock(0.0)
    servers = _warming_group(clock)
    clock.now = 15.0  # half way: s0 counts for half its weight
    balancer = make_balancer("least_conn", servers, clock=clock, slow_start=SLOW_START)
    for _ in range(50):
        picked = balancer.pick(PickContext(), servers)
        assert picked is not None
        picked.active += 1
    assert servers[0].active == 10 and servers[1].active == servers[2].active == 20


@pytest.mark.parametrize("policy", ["ip_hash", "consistent_hash"])
def test_hash_keys_move_onto_a_warming_server_once_and_stay(policy: str) -> None:
    clock = VirtualClock(0.0)
    servers = _warming_group(clock)
    warm = make_balancer(policy, servers)
    ramping = make_balancer(policy, servers, clock=clock, slow_start=SLOW_START)
    keys = [synthetic_context(k, "ip") for k in range(3000)]
    home = [warm.pick(ctx, servers) for ctx in keys]
    on_s0: set[int] = set()
    for elapsed in (0.0, 7.5, 15.0, 22.5, 30.0):
        clock.now = elapsed
        now_on = set()
        for k, ctx in enumerate(keys):
            picked = ramping.pick(ctx, servers)
            assert picked is not None
            if picked is servers[0]:
                now_on.add(k)
                assert home[k] is servers[0]  # only keys that belong to s0 go there
            else:
                assert home[k] is picked or home[k] is servers[0]  # others stay home or wait on the fallback
        assert on_s0 <= now_on  # a key that moved onto s0 stays there as the ramp grows
        on_s0 = now_on
        owned = sum(1 for h in home if h is servers[0])
        assert abs(len(now_on) / owned - ramp(servers[0], elapsed, SLOW_START)) <= 0.08


def test_a_lone_warming_server_still_takes_traffic() -> None:
    clock = VirtualClock(0.0)
    servers = members([1])
    servers[0].up_since = 0.0
    for policy in ("round_robin", "weighted_round_robin", "least_conn", "random", "p2c", "least_time", "ip_hash"):
        balancer = make_balancer(policy, servers, rng=random.Random(1), clock=clock, slow_start=SLOW_START)
        assert count_picks(balancer, servers, 20, synthetic_context(1, "ip")) == Counter({"s0": 20})


def test_warming_respects_exclude() -> None:
    clock = VirtualClock(0.0)
    servers = _warming_group(clock)
    for policy in ("round_robin", "weighted_round_robin", "random", "consistent_hash"):
        balancer = make_balancer(policy, servers, rng=random.Random(1), clock=clock, slow_start=SLOW_START)
        ctx = PickContext(hash_key=b"k", exclude=frozenset({"s1", "s2"}))
        assert count_picks(balancer, servers, 20, ctx) == Counter({"s0": 20})
        everything = PickContext(hash_key=b"k", exclude=frozenset({"s0", "s1", "s2"}))
        assert balancer.pick(everything, servers) is None
