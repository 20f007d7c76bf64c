"""Balancing policies: pure, no I/O, one module per policy behind the ``Balancer`` protocol.

The data plane builds a policy with ``make_balancer`` for each set of
eligible servers, feeds response times to ``observe_latency``, extracts hash
keys with ``hash_key_value`` and handles sticky cookies with the ``sticky_*``
functions. ``fulcrum.balancing.simulate`` shows how a policy spreads
synthetic traffic.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence

from fulcrum.balancing.base import EMPTY_CONTEXT, Balancer, Member, PickContext, S
from fulcrum.balancing.consistent_hash import HashRing, IpHash
from fulcrum.balancing.hashing import hash_key_value, parse_hash_key
from fulcrum.balancing.latency import observe_latency
from fulcrum.balancing.least_conn import LeastConn
from fulcrum.balancing.least_time import LeastTime
from fulcrum.balancing.p2c import PowerOfTwoChoices
from fulcrum.balancing.round_robin import RoundRobin, SmoothWeightedRoundRobin
from fulcrum.balancing.slow_start import SlowStartGate
from fulcrum.balancing.sticky import sticky_lookup, sticky_set_cookie, sticky_token
from fulcrum.balancing.weighted_random import WeightedRandom

__all__ = [
    "EMPTY_CONTEXT",
    "HASH_POLICIES",
    "POLICIES",
    "POLICY_NAMES",
    "Balancer",
    "HashRing",
    "IpHash",
    "LeastConn",
    "LeastTime",
    "Member",
    "PickContext",
    "PowerOfTwoChoices",
    "RoundRobin",
    "SmoothWeightedRoundRobin",
    "WeightedRandom",
    "hash_key_value",
    "make_balancer",
    "needs_hash_key",
    "observe_latency",
    "parse_hash_key",
    "sticky_lookup",
    "sticky_set_cookie",
    "sticky_token",
]

#: Every policy name, in the order they are documented and benchmarked.
POLICY_NAMES: tuple[str, ...] = (
    "round_robin",
    "weighted_round_robin",
    "least_conn",
    "random",
    "p2c",
    "least_time",
    "ip_hash",
    "consistent_hash",
)
POLICIES: frozenset[str] = frozenset(POLICY_NAMES)

#: Full re-picks a slow-start gate tries after refusing a warming server, before excluding it.
GATE_REDRAWS = 8

#: Policies that map a request key to a server.
HASH_POLICIES: frozenset[str] = frozenset(("ip_hash", "consistent_hash"))


def needs_hash_key(policy: str) -> bool:
    """Whether ``policy`` needs the request's key (client IP, path, header or cookie) in the context."""
    return policy in HASH_POLICIES


def make_balancer(
    policy: str,
    servers: Sequence[S],
    *,
    hash_key: str = "ip",
    rng: random.Random | None = None,
    clock: Callable[[], float] | None = None,
    slow_start: float = 0.0,
) -> Balancer[S]:
    """Build ``policy`` over ``servers`` (the eligible ones, in a sequence ``pick`` will be handed).

    ``rng`` and ``clock`` default to a fresh ``random.Random`` and
    ``time.monotonic``; ``clock`` must tell the same time as the ``now`` given to
    ``observe_latency`` and as the servers' ``up_since``. ``slow_start``
    (seconds) ramps up servers that just became eligible. Raises
    ``ValueError`` for an unknown policy or hash key.
    """
    rng = rng or random.Random()
    clock = clock or time.monotonic
    if policy == "round_robin":
        return _gated(RoundRobin(servers, rng=rng), servers, clock, slow_start, rng)
    if policy == "weighted_round_robin":
        return SmoothWeightedRoundRobin(servers, clock=clock, slow_start=slow_start)
    if policy == "least_conn":
        return LeastConn(servers, clock=clock, slow_start=slow_start)
    if policy == "random":
        return _gated(WeightedRandom(servers, rng=rng), servers, clock, slow_start, rng)
    if policy == "p2c":
        return _gated(PowerOfTwoChoices(servers, rng=rng, clock=clock), servers, clock, slow_start, rng)
    if policy == "least_time":
        return _gated(LeastTime(servers, rng=rng, clock=clock), servers, clock, slow_start, rng)
    if policy in HASH_POLICIES:
        ring: HashRing[S] = IpHash(servers) if policy == "ip_hash" else HashRing(servers, hash_key=hash_key)
        if slow_start <= 0.0:
            return ring
        return SlowStartGate(ring, servers, clock, slow_start, ring.coin)
    raise ValueError(f"unknown balancing policy {policy!r}; known: {', '.join(sorted(POLICIES))}")


def _gated(
    inner: Balancer[S],
    servers: Sequence[S],
    clock: Callable[[], float],
    slow_start: float,
    rng: random.Random,
) -> Balancer[S]:
    if slow_start <= 0.0:
        return inner
    return SlowStartGate(inner, servers, clock, slow_start, lambda _ctx, _server: rng.random(), redraws=GATE_REDRAWS)
