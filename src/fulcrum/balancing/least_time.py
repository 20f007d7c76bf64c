"""Least time: the lower of two random servers' latency estimate x (requests in flight + 1)."""

from __future__ import annotations

from fulcrum.balancing.base import S
from fulcrum.balancing.latency import latency_estimate
from fulcrum.balancing.p2c import PowerOfTwoChoices

#: Cost of a server with requests in flight but no response time yet: only one probe at a time.
UNKNOWN_PENALTY = 1e9


def server_cost(ewma_ms: float, ewma_at: float, active: int, weight: float, now: float, decay_s: float) -> float:
    """Expected wait on one server: latency estimate x (active + 1), per unit of weight.

    The estimate is the peak EWMA faded toward zero for the time since its
    last update (see ``fulcrum.balancing.latency``). A server with no estimate
    (new, or idle for very long) costs nothing while idle, so it gets a
    request, and costs ``UNKNOWN_PENALTY`` while that request is in flight, so
    it does not get all the others before its first answer.
    """
    estimate = latency_estimate(ewma_ms, ewma_at, now, decay_s)
    if estimate <= 0.0:
        return 0.0 if active <= 0 else (UNKNOWN_PENALTY + active) / weight
    return estimate * (active + 1) / weight


class LeastTime(PowerOfTwoChoices[S]):
    """Peak-EWMA balancing as Finagle and Linkerd do it: the cheaper of two random servers.

    A server's cost is its latency estimate times (active requests + 1), per
    unit of weight (``server_cost``). The estimate jumps up at once on a slow
    response, so a server that turns slow loses its share on its first slow
    answer; it fades while the server gets nothing, so the server is probed
    again later and wins its share back once it answers fast.

    Like Finagle's and Linkerd's peak-EWMA balancers it compares two servers
    drawn at random (in proportion to weight) rather than scanning them all:
    O(log n) per pick, and the worst server of the group never wins. On a tie
    (for example both idle and unmeasured) the first drawn wins, so idle
    servers share in proportion to weight. Servers with weight <= 0 are never
    chosen.
    """

    __slots__ = ()

    def _better(self, first: S, second: S) -> S:
        now = self._clock()
        decay_s = self._decay_s
        a = server_cost(first.ewma_ms, first.ewma_at, first.active, first.weight, now, decay_s)
        b = server_cost(second.ewma_ms, second.ewma_at, second.active, second.weight, now, decay_s)
        return second if b < a else first
