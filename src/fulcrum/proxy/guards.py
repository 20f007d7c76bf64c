"""What protects one upstream group, fed by the data plane: outlier ejection, breakers, retry budget."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from fulcrum.health.breaker import CircuitBreakers
from fulcrum.health.budget import RetryBudget
from fulcrum.health.passive import OutlierDetector, status_outcome
from fulcrum.proxy.upstream import CONNECT_ERROR, CONNECT_TIMEOUT, INVALID, READ_TIMEOUT, RESET, TOTAL_TIMEOUT

if TYPE_CHECKING:
    from fulcrum.state.group import Group
    from fulcrum.state.server import Server

#: How the data plane's failure kinds count for outlier detection. An invalid response counts as
#: a reset: the connection was unusable, as with a reset.
FAILURE_OUTCOME = {
    CONNECT_ERROR: "connect_error",
    CONNECT_TIMEOUT: "timeout",
    RESET: "reset",
    INVALID: "reset",
    READ_TIMEOUT: "timeout",
    TOTAL_TIMEOUT: "timeout",
}


class Guards:
    """What judges a group's servers by the answers they give: either part may be off (None).

    Built for each snapshot; state is taken over from the group's previous guards by server id.
    """

    __slots__ = ("breakers", "budget", "outliers", "retries", "when")

    def __init__(self, group: Group, previous: Guards | None, clock: Callable[[], float]) -> None:
        spec = group.spec
        self.outliers: OutlierDetector | None
        self.breakers: CircuitBreakers | None
        self.outliers = (
            OutlierDetector(group.servers, spec.passive, clock=clock,
                            previous=previous.outliers if previous is not None else None)
            if spec.passive is not None
            else None
        )
        self.breakers = (
            CircuitBreakers(group.servers, spec.circuit_breaker, clock=clock,
                            previous=previous.breakers if previous is not None else None)
            if spec.circuit_breaker is not None
            else None
        )

        self.retries = spec.retries
        self.when: frozenset[str] = frozenset(spec.retries.when) if spec.retries is not None else frozenset()
        self.budget = RetryBudget.from_spec(spec.retries, clock=clock) if spec.retries is not None else None

    @property
    def active(self) -> bool:
        return self.outliers is not None or self.breakers is not None or self.retries is not None

    def allow(self, server: Server, now: float) -> bool:
        """Whether the breaker lets a request go to ``server`` (a half-open one lets a few probes)."""
        breakers = self.breakers
        return breakers is None or breakers.allow(server, now)

    def finish(self, server: Server, outcome: str | None, now: float) -> None:
        """Report how a request to ``server`` ended: a status class, a failure kind, or None (abandoned)."""
        breakers = self.breakers
        if outcome is None:
            if breakers is not None:
                breakers.release(server)
            return
        if self.outliers is not None:
            self.outliers.record(server, outcome, now)
        if breakers is not None:
            breakers.record(server, outcome in ("success", "4xx"), now)

    def tick(self, now: float) -> None:
        if self.outliers is not None:
            self.outliers.tick(now)
        if self.breakers is not None:
            self.breakers.tick(now)


__all__ = ["FAILURE_OUTCOME", "Guards", "status_outcome"]
