"""Least connections: fewest requests in flight per unit of weight."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Generic

from fulcrum.balancing.base import PickContext, S
from fulcrum.balancing.slow_start import ramp, ramp_ends
from fulcrum.balancing.smooth import SmoothTies


class LeastConn(Generic[S]):
    """The server with the fewest active requests per unit of weight (``active / weight``).

    Ties go in smooth weighted round robin order (nginx's rule), so equal idle
    servers share evenly and idle weighted servers share by weight. Servers
    with weight <= 0 are never chosen; a warming server (slow start) counts
    for its ramped weight.

    O(n) per pick: ``active`` changes under the policy on every request start
    and end, and the data plane does not report those changes, so there is no
    index to keep (nginx scans its peers the same way; HAProxy keeps a tree
    that every connection change must update). For large groups ``p2c`` gives
    nearly the same spread in O(log n).
    """

    __slots__ = ("_candidates", "_clock", "_servers", "_slow_start", "_ties", "_until", "_weights")

    def __init__(
        self,
        servers: Sequence[S],
        *,
        clock: Callable[[], float] | None = None,
        slow_start: float = 0.0,
    ) -> None:
        self._clock = clock or time.monotonic
        self._slow_start = slow_start
        self._adopt(servers)

    def _adopt(self, servers: Sequence[S]) -> None:
        self._servers = servers
        self._candidates = [s for s in servers if s.weight > 0]
        self._weights = [float(s.weight) for s in self._candidates]
        self._ties = SmoothTies(len(self._candidates))
        self._until = ramp_ends(self._candidates, self._slow_start)

    def pick(self, ctx: PickContext, servers: Sequence[S]) -> S | None:
        if servers is not self._servers:
            self._adopt(servers)
        candidates = self._candidates
        if not candidates:
            return None
        now = self._clock() if self._until > -math.inf else 0.0
        if ctx.exclude or now < self._until:
            return self._pick_slow(ctx.exclude, now)
        weights = self._weights
        scores = [s.active / w for s, w in zip(candidates, weights, strict=True)]
        best = min(scores)
        if scores.count(best) == 1:
            return candidates[scores.index(best)]
        tied = [i for i, score in enumerate(scores) if score == best]
        return candidates[self._ties.choose(tied, [weights[i] for i in tied])]

    def _pick_slow(self, exclude: frozenset[str], now: float) -> S | None:
        """The same choice, skipping excluded servers and ramping warming ones."""
        candidates = self._candidates
        warming = now < self._until
        best = math.inf
        tied: list[int] = []
        tied_weights: list[float] = []
        for i, w in enumerate(self._weights):
            server = candidates[i]
            if exclude and server.id in exclude:
                continue
            if warming:
                w *= ramp(server, now, self._slow_start)
            score = server.active / w
            if score < best:
                best = score
                tied = [i]
                tied_weights = [w]
            elif score == best:
                tied.append(i)
                tied_weights.append(w)
        if not tied:
            return None
        if len(tied) == 1:
            return candidates[tied[0]]
        return candidates[self._ties.choose(tied, tied_weights)]
