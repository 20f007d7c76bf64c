"""Power of two random choices."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from typing import Generic

from fulcrum.balancing.base import PickContext, S
from fulcrum.balancing.latency import DEFAULT_DECAY_S, latency_estimate
from fulcrum.balancing.weighted_random import CumulativeWeights, allowed


class PowerOfTwoChoices(Generic[S]):
    """Draw two different servers at random (in proportion to weight), keep the less loaded.

    "Less loaded" compares active requests per unit of weight, then the
    latency estimate (peak EWMA, faded while idle, see
    ``fulcrum.balancing.latency``); on a full tie the first drawn wins, so idle
    servers share in proportion to weight. Two random choices avoid the herd
    that "always the least loaded" causes when many pickers see the same
    stale counts, at O(log n) per pick. With exclusions the two are drawn
    among the allowed servers (O(n)). Servers with weight <= 0 are never
    chosen.
    """

    __slots__ = ("_clock", "_decay_s", "_rng", "_servers", "_weights")

    def __init__(
        self,
        servers: Sequence[S],
        *,
        rng: random.Random | None = None,
        clock: Callable[[], float] | None = None,
        decay_s: float = DEFAULT_DECAY_S,
    ) -> None:
        self._rng = rng or random.Random()
        self._clock = clock or time.monotonic
        self._decay_s = decay_s
        self._adopt(servers)

    def _adopt(self, servers: Sequence[S]) -> None:
        self._servers = servers
        self._weights = CumulativeWeights([s.weight for s in servers])

    def pick(self, ctx: PickContext, servers: Sequence[S]) -> S | None:
        if servers is not self._servers:
            self._adopt(servers)
        weights = self._weights
        exclude = ctx.exclude
        rng = self._rng
        if exclude:
            left = allowed(servers, weights.weights, exclude)
            if len(left) <= 1:
                return servers[left[0]] if left else None
            sub = CumulativeWeights([weights.weights[i] for i in left])
            a = sub.draw(rng)
            return self._better(servers[left[a]], servers[left[sub.draw_other(rng, a)]])
        if weights.total <= 0:
            return None
        a = weights.draw(rng)
        if weights.weights[a] == weights.total:  # a single server with weight
            return servers[a]
        return self._better(servers[a], servers[weights.draw_other(rng, a)])

    def _better(self, first: S, second: S) -> S:
        # Cross-multiplied to compare active/weight exactly.
        lhs = second.active * first.weight
        rhs = first.active * second.weight
        if lhs != rhs:
            return second if lhs < rhs else first
        now = self._clock()
        if latency_estimate(second.ewma_ms, second.ewma_at, now, self._decay_s) < latency_estimate(
            first.ewma_ms, first.ewma_at, now, self._decay_s
        ):
            return second
        return first
