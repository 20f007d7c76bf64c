"""Slow start: a server that just became eligible ramps up to its full weight.

A group's ``slow_start`` (seconds) makes a server whose ``up_since`` is recent
count for a fraction of its weight: linear from ``MIN_RAMP`` at the moment it
became eligible to 1 after ``slow_start`` seconds. The fraction never drops to
zero, so a lone warming server still takes traffic.

Policies that weigh every server on every pick (smooth weighted round robin,
least connections) multiply the weight by the ramp. The others (round robin,
random, p2c, least time, the hash policies) are wrapped in ``SlowStartGate``:
a warming server that the inner policy picks is kept with probability equal to
its ramp, else the pick is redone. For hash policies the "coin" is a stable
hash of the request key and the server, so each key moves onto the warming
server once, at a fixed point of its ramp, and stays.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Generic

from fulcrum.balancing.base import Balancer, Member, PickContext, S

#: The share of its weight a server counts for the moment it becomes eligible.
MIN_RAMP = 0.1

#: A number in [0, 1) for one (request, server) pair; lower means "let it through".
Coin = Callable[[PickContext, S], float]


def ramp(server: Member, now: float, slow_start: float) -> float:
    """The fraction of its weight ``server`` counts for at ``now`` (``MIN_RAMP``..1)."""
    if slow_start <= 0.0:
        return 1.0
    f = (now - server.up_since) / slow_start
    if f >= 1.0:
        return 1.0
    return MIN_RAMP if f <= MIN_RAMP else f


def ramp_ends(servers: Sequence[Member], slow_start: float) -> float:
    """The clock time after which no server of ``servers`` is still warming."""
    if slow_start <= 0.0 or not servers:
        return -math.inf
    return max(s.up_since for s in servers) + slow_start


class SlowStartGate(Generic[S]):
    """Slow start for a policy that does not weigh servers itself.

    A warming server the inner policy picks is kept if the coin falls below
    its ramp. Otherwise the pick is redone: first ``redraws`` times as it was
    (for random policies this is plain rejection sampling, so a warming
    server gets exactly its ramped weight's share), then without the refused
    servers. Hash policies use ``redraws=0``: their pick for a key is fixed,
    so the key goes on to its next server.

    Costs one clock read per pick once every server is warm.
    """

    __slots__ = ("_clock", "_coin", "_inner", "_redraws", "_slow_start", "_until")

    def __init__(
        self,
        inner: Balancer[S],
        servers: Sequence[S],
        clock: Callable[[], float],
        slow_start: float,
        coin: Coin[S],
        *,
        redraws: int = 0,
    ) -> None:
        self._inner = inner
        self._clock = clock
        self._slow_start = slow_start
        self._coin = coin
        self._redraws = redraws
        self._until = ramp_ends(servers, slow_start)

    def pick(self, ctx: PickContext, servers: Sequence[S]) -> S | None:
        now = self._clock()
        if now >= self._until:
            return self._inner.pick(ctx, servers)
        redraws = self._redraws
        first: S | None = None
        # Once redraws run out each refusal excludes one more server, so this ends within the bound.
        for _ in range(redraws + len(servers) + 1):
            server = self._inner.pick(ctx, servers)
            if server is None:
                break
            f = ramp(server, now, self._slow_start)
            if f >= 1.0 or self._coin(ctx, server) < f:
                return server
            if first is None:
                first = server
            if redraws > 0:
                redraws -= 1
            else:
                ctx = dataclasses.replace(ctx, exclude=ctx.exclude | {server.id})
        # Every candidate is warming and refused: the first one still beats no server.
        return first
