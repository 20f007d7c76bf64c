"""Round robin (weights ignored) and nginx's smooth weighted round robin."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from typing import Generic

from fulcrum.balancing.base import PickContext, S
from fulcrum.balancing.slow_start import ramp, ramp_ends

#: Longest weighted cycle (sum of weights / their gcd) kept as a precomputed schedule.
SCHEDULE_LIMIT = 1 << 16


class RoundRobin(Generic[S]):
    """Each eligible server in turn; weights are ignored.

    Fulcrum lists ``round_robin`` and ``weighted_round_robin`` as two policies,
    so this one gives every server the same share whatever its weight (use
    ``SmoothWeightedRoundRobin`` for weights). The rotation starts at a random
    server so that workers and rebuilt policies do not all start on the first
    one. O(1) per pick; O(k) when the next k servers are excluded.
    """

    __slots__ = ("_next",)

    def __init__(self, servers: Sequence[S], *, rng: random.Random | None = None) -> None:
        n = len(servers)
        self._next = (rng or random.Random()).randrange(n) if n > 1 else 0

    def __deepcopy__(self, memo: dict[int, object]) -> RoundRobin[S]:
        """A copy that moves on its own from the same position."""
        twin: RoundRobin[S] = RoundRobin(())
        twin._next = self._next
        return twin

    def pick(self, ctx: PickContext, servers: Sequence[S]) -> S | None:
        n = len(servers)
        if n == 0:
            return None
        i = self._next
        if i >= n:
            i %= n
        exclude = ctx.exclude
        if not exclude:
            self._next = i + 1
            return servers[i]
        for _ in range(n):
            server = servers[i]
            i = i + 1 if i + 1 < n else 0
            if server.id not in exclude:
                self._next = i
                return server
        return None


class SmoothWeightedRoundRobin(Generic[S]):
    """nginx's smooth weighted round robin: weights 5,1,1 give a a b a c a a.

    Each step adds every server's weight to its current value, takes the
    largest (the first on a tie) and subtracts the total from the winner; over
    one cycle of ``sum(weights) / gcd(weights)`` picks each server is chosen
    exactly in proportion to its weight, interleaved rather than in bursts.

    A step costs O(n), but the sequence is periodic, so the first cycle is
    recorded as it is produced and later picks replay it in O(1) (cycles
    longer than ``SCHEDULE_LIMIT`` are not recorded and stay O(n)). An
    excluded server's turns are skipped in schedule order. Servers with
    weight <= 0 are never chosen. While a server warms up (slow start) the
    steps use each server's ramped weight and are not recorded.
    """

    __slots__ = (
        "_clock",
        "_current",
        "_period",
        "_pos",
        "_ramp_current",
        "_schedule",
        "_servers",
        "_slow_start",
        "_until",
        "_weights",
    )

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

    def __deepcopy__(self, memo: dict[int, object]) -> SmoothWeightedRoundRobin[S]:
        """A copy that moves on its own from the same position (servers shared, not copied)."""
        twin: SmoothWeightedRoundRobin[S] = SmoothWeightedRoundRobin((), clock=self._clock,
                                                                      slow_start=self._slow_start)
        twin._servers = self._servers
        twin._weights = self._weights
        twin._period = self._period
        twin._current = list(self._current)
        twin._ramp_current = list(self._ramp_current)
        twin._schedule = list(self._schedule)  # grown as picks need it
        twin._pos = self._pos
        twin._until = self._until
        return twin

    def _adopt(self, servers: Sequence[S]) -> None:
        self._servers = servers
        weights = [max(s.weight, 0) for s in servers]
        g = math.gcd(*weights) if weights else 0
        self._weights = [w // g for w in weights] if g else weights
        self._period = sum(self._weights)
        self._current = [0] * len(servers)
        self._ramp_current = [0.0] * len(servers)
        self._schedule: list[int] = []
        self._pos = 0
        self._until = ramp_ends(servers, self._slow_start)

    def _step(self, exclude: frozenset[str]) -> int:
        """One step of the smooth algorithm over the integer weights; -1 when nothing can be chosen."""
        current = self._current
        servers = self._servers
        total = 0
        best = -1
        best_value = 0
        for i, w in enumerate(self._weights):
            if w <= 0 or (exclude and servers[i].id in exclude):
                continue
            value = current[i] + w
            current[i] = value
            total += w
            if best < 0 or value > best_value:
                best = i
                best_value = value
        if best >= 0:
            current[best] -= total
        return best

    def _ramp_step(self, exclude: frozenset[str], now: float) -> int:
        """One smooth step over ramped (float) weights, kept apart from the recorded cycle."""
        current = self._ramp_current
        slow_start = self._slow_start
        total = 0.0
        best = -1
        best_value = 0.0
        for i, server in enumerate(self._servers):
            w = self._weights[i]
            if w <= 0 or (exclude and server.id in exclude):
                continue
            ew = w * ramp(server, now, slow_start)
            value = current[i] + ew
            current[i] = value
            total += ew
            if best < 0 or value > best_value:
                best = i
                best_value = value
        if best >= 0:
            current[best] -= total
        return best

    def _entry(self, pos: int) -> int:
        """Index of the server at ``pos`` of the cycle, producing the recorded schedule as needed."""
        schedule = self._schedule
        while len(schedule) <= pos:
            schedule.append(self._step(frozenset()))
        return schedule[pos]

    def pick(self, ctx: PickContext, servers: Sequence[S]) -> S | None:
        if servers is not self._servers:
            self._adopt(servers)
        period = self._period
        if period == 0:
            return None
        exclude = ctx.exclude
        if self._until > -math.inf:
            now = self._clock()
            if now < self._until:
                i = self._ramp_step(exclude, now)
                return servers[i] if i >= 0 else None
        if period > SCHEDULE_LIMIT:
            i = self._step(exclude)
            return servers[i] if i >= 0 else None
        pos = self._pos
        if not exclude:
            i = self._entry(pos)
            self._pos = pos + 1 if pos + 1 < period else 0
            return servers[i]
        if all(s.id in exclude or w <= 0 for s, w in zip(servers, self._weights, strict=True)):
            return None
        while True:  # ends within one cycle: every server with weight > 0 appears in it
            i = self._entry(pos)
            pos = pos + 1 if pos + 1 < period else 0
            if servers[i].id not in exclude:
                self._pos = pos
                return servers[i]
