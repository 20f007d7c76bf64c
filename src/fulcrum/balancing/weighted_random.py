"""Random choice in proportion to weight."""

from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import Sequence
from typing import Generic

from fulcrum.balancing.base import PickContext, S

#: Redraws tried before an exclusion is handled by filtering the servers.
REDRAWS = 4


class CumulativeWeights:
    """Cumulative weights of a server list, for O(log n) weighted draws."""

    __slots__ = ("cumulative", "last", "total", "weights")

    def __init__(self, weights: Sequence[int]) -> None:
        self.weights = [max(w, 0) for w in weights]
        self.cumulative = list(itertools.accumulate(self.weights))
        self.total = self.cumulative[-1] if self.cumulative else 0
        # Last index with weight > 0 (a float draw may round up to the total).
        self.last = max((i for i, w in enumerate(self.weights) if w > 0), default=-1)

    def draw(self, rng: random.Random) -> int:
        """An index with probability weight / total (total must be > 0)."""
        i = bisect.bisect_right(self.cumulative, rng.random() * self.total)
        return i if i <= self.last else self.last

    def draw_other(self, rng: random.Random, first: int) -> int:
        """An index other than ``first``, with probability weight / (total - weight of first)."""
        w = self.weights[first]
        r = rng.random() * (self.total - w)
        if r >= self.cumulative[first] - w:
            r += w
        i = bisect.bisect_right(self.cumulative, r)
        if i > self.last:
            i = self.last
        if i == first:  # only float rounding lands here: take the nearest other server with weight
            i = next(j for j in itertools.chain(range(first - 1, -1, -1), range(first + 1, self.last + 1))
                     if self.weights[j] > 0)
        return i


def allowed(servers: Sequence[S], weights: Sequence[int], exclude: frozenset[str]) -> list[int]:
    """Indexes of the servers with weight > 0 that are not excluded."""
    return [i for i, s in enumerate(servers) if weights[i] > 0 and s.id not in exclude]


class WeightedRandom(Generic[S]):
    """A random server, each with probability weight / total weight.

    O(log n) per pick (a bisect over cumulative weights). An excluded draw is
    redrawn a few times, then the policy draws among the allowed servers in
    O(n). Servers with weight <= 0 are never chosen.
    """

    __slots__ = ("_rng", "_servers", "_weights")

    def __init__(self, servers: Sequence[S], *, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()
        self._adopt(servers)

    def _adopt(self, servers: Sequence[S]) -> None:
        self._servers = servers
        self._weights = CumulativeWeights([s.weight for s in servers])

    def pick(self, ctx: PickContext, servers: Sequence[S]) -> S | None:
        if servers is not self._servers:
            self._adopt(servers)
        weights = self._weights
        if weights.total <= 0:
            return None
        rng = self._rng
        exclude = ctx.exclude
        if not exclude:
            return servers[weights.draw(rng)]
        for _ in range(REDRAWS):
            server = servers[weights.draw(rng)]
            if server.id not in exclude:
                return server
        left = allowed(servers, weights.weights, exclude)
        if not left:
            return None
        sub = CumulativeWeights([weights.weights[i] for i in left])
        return servers[left[sub.draw(rng)]]
