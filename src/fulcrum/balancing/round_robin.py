"""Round robin and nginx's smooth weighted round robin."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Generic

from fulcrum.balancing.base import PickContext, S


class RoundRobin(Generic[S]):
    """Each eligible server in turn; skips excluded ones."""

    __slots__ = ("_next",)

    def __init__(self, servers: Sequence[S]) -> None:
        self._next = 0

    def pick(self, ctx: PickContext, servers: Sequence[S]) -> S | None:
        n = len(servers)
        if n == 0:
            return None
        i = self._next % n
        exclude = ctx.exclude
        if not exclude:
            self._next = i + 1
            return servers[i]
        for _ in range(n):
            server = servers[i]
            i = (i + 1) % n
            if server.id not in exclude:
                self._next = i
                return server
        return None


class SmoothWeightedRoundRobin(Generic[S]):
    """nginx's smooth weighted round robin: weights 5,1,1 give a a b a c a a.

    Each pick adds every server's weight to its current value, takes the
    largest, and subtracts the total from the winner. O(n) per pick, with n
    the number of servers in the group (groups are small; the order
    interleaves, unlike a bursty expanded list).
    """

    __slots__ = ("_current", "_index")

    def __init__(self, servers: Sequence[S]) -> None:
        self._current = [0] * len(servers)
        self._index = {s.id: i for i, s in enumerate(servers)}

    def pick(self, ctx: PickContext, servers: Sequence[S]) -> S | None:
        current = self._current
        if len(current) != len(servers):  # built for another set: start over for this one
            self._current = current = [0] * len(servers)
            self._index = {s.id: i for i, s in enumerate(servers)}
        exclude = ctx.exclude
        total = 0
        best = -1
        best_value = 0
        for i, server in enumerate(servers):
            if exclude and server.id in exclude:
                continue
            w = server.weight
            if w <= 0:
                continue
            value = current[i] + w
            current[i] = value
            total += w
            if best < 0 or value > best_value:
                best = i
                best_value = value
        if best < 0:
            return None
        current[best] -= total
        return servers[best]
