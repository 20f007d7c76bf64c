"""Peak-EWMA response time: jumps up at once on a slow response, decays slowly.

The data plane calls ``observe_latency`` after each response; the
latency-aware policies read ``latency_estimate``. Both are pure functions of
the server's ``ewma_ms``/``ewma_at`` fields and the clock time passed in.

The estimate follows the shape Finagle and Linkerd use for their peak-EWMA
balancers, written here from the idea, not their code:

- a response slower than the estimate replaces it at once (the "peak"), so a
  server that turns slow loses traffic on its first slow answer;
- a faster response pulls the estimate down with a weight that grows with the
  time since the last update (``1 - exp(-dt / decay_s)``), so the estimate
  forgets a spike over ``decay_s`` seconds whatever the request rate;
- between updates the estimate read by a policy fades toward zero with the
  same time constant, so a server that got no traffic because it looked slow
  is tried again after a while instead of being starved forever.
"""

from __future__ import annotations

import math
from typing import Protocol

#: Seconds over which the estimate forgets (both the pull toward faster responses and the idle fade).
DEFAULT_DECAY_S = 10.0


class LatencyState(Protocol):
    """The two fields ``observe_latency`` updates (``fulcrum.state.Server`` has them)."""

    ewma_ms: float
    ewma_at: float


def observe_latency(server: LatencyState, rtt_ms: float, now: float, decay_s: float = DEFAULT_DECAY_S) -> None:
    """Fold one response time (milliseconds, seen at clock time ``now``) into the server's estimate."""
    rtt_ms = max(rtt_ms, 0.0)
    previous = server.ewma_ms
    if previous <= 0.0 or rtt_ms >= previous:
        server.ewma_ms = rtt_ms
    else:
        dt = now - server.ewma_at
        w = math.exp(-dt / decay_s) if dt > 0.0 else 1.0
        server.ewma_ms = previous * w + rtt_ms * (1.0 - w)
    server.ewma_at = now


def latency_estimate(ewma_ms: float, ewma_at: float, now: float, decay_s: float = DEFAULT_DECAY_S) -> float:
    """The estimate at ``now``: the stored one, faded toward zero for the time since its update."""
    dt = now - ewma_at
    if dt <= 0.0 or ewma_ms <= 0.0:
        return ewma_ms
    return ewma_ms * math.exp(-dt / decay_s)
