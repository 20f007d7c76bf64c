"""Circuit breakers: one per server, stopping traffic to a server that fails too large a share of requests.

One :class:`CircuitBreakers` per upstream group. Pure: no I/O, no timers;
every decision takes ``now`` (seconds on a monotonic clock) and
:meth:`CircuitBreakers.tick` moves breakers on when their time is up. It
writes one thing to the data plane, the ``Down.BREAKER`` flag of each server.

The data plane asks :meth:`~CircuitBreakers.allow` before it sends to the
server it picked and reports every outcome with :meth:`~CircuitBreakers.record`.

The states and the only edges between them:

- ``closed`` → ``open`` when, over the rolling ``window``, at least
  ``min_requests`` outcomes were recorded and the share of failures among them
  is ``failure_ratio`` or more. Checked on each failure. The server gets the
  ``BREAKER`` flag, so balancing skips it, and ``allow`` answers False.
- ``open`` → ``half_open`` once ``open_for`` seconds have passed (at the first
  ``tick`` or ``allow`` at or after that time). The flag is cleared so the
  server can be picked, but ``allow`` grants at most ``half_open_max``
  probes in flight at once.
- ``half_open`` → ``closed`` once ``half_open_max`` probes have succeeded
  (with the default of 1: the first probe). The window starts empty.
- ``half_open`` → ``open`` at the first probe that fails, for ``open_for``
  again.

Outcomes recorded while open come from requests sent before it opened and
are ignored. ``allow`` cannot tell a probe from a request let through
before the breaker opened, so any outcome while half-open counts as a probe.
A probe whose outcome never comes (the client went away) gives its place
back through :meth:`~CircuitBreakers.release`; failing that, ``tick`` frees
probe places held for longer than ``open_for``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from fulcrum.health.budget import RollingCounts
from fulcrum.state.server import Down, Server

logger = logging.getLogger("fulcrum.health")

BreakerState = Literal["closed", "open", "half_open"]
CLOSED: BreakerState = "closed"
OPEN: BreakerState = "open"
HALF_OPEN: BreakerState = "half_open"

#: The edges a breaker may take (staying put is always allowed).
TRANSITIONS: frozenset[tuple[BreakerState, BreakerState]] = frozenset(
    {(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, OPEN), (HALF_OPEN, CLOSED)}
)


class BreakerSpec(Protocol):
    """What the breakers read from an upstream group's ``circuit_breaker`` config; times in seconds."""

    @property
    def failure_ratio(self) -> float: ...
    @property
    def min_requests(self) -> int: ...
    @property
    def window(self) -> float: ...
    @property
    def open_for(self) -> float: ...
    @property
    def half_open_max(self) -> int: ...


@dataclass(frozen=True, slots=True)
class BreakerStatus:
    """A snapshot of one server's breaker, for the admin API and metrics.

    ``requests`` and ``failures`` are the counts in the rolling window (only
    kept while closed); ``until`` is when an open breaker half-opens.
    """

    server_id: str
    state: BreakerState
    requests: int
    failures: int
    until: float | None
    probes_in_flight: int
    probes_succeeded: int
    times_opened: int
    changed_at: float | None


class _Breaker:
    __slots__ = ("changed_at", "counts", "granted_at", "in_flight", "opened", "server", "state", "succeeded", "until")

    def __init__(self, server: Server, counts: RollingCounts) -> None:
        self.server = server
        self.state: BreakerState = CLOSED
        self.counts = counts
        self.until = 0.0
        self.in_flight = 0
        self.succeeded = 0
        self.granted_at = 0.0
        self.opened = 0
        self.changed_at: float | None = None

    def copy(self, server: Server) -> _Breaker:
        twin = _Breaker(server, self.counts.copy())
        twin.state = self.state
        twin.until = self.until
        twin.succeeded = self.succeeded
        twin.opened = self.opened
        twin.changed_at = self.changed_at
        return twin  # probes in flight stay with the old object: their outcomes are reported there


def check_spec(spec: BreakerSpec) -> None:
    """ValueError when the breaker config cannot work."""
    if not 0 < spec.failure_ratio <= 1:
        raise ValueError(f"circuit breaker failure_ratio must be above 0 and at most 1, got {spec.failure_ratio}")
    if spec.min_requests < 1:
        raise ValueError(f"circuit breaker min_requests must be at least 1, got {spec.min_requests}")
    if spec.window <= 0 or spec.open_for <= 0:
        raise ValueError("circuit breaker window and open_for must be positive")
    if spec.half_open_max < 1:
        raise ValueError(f"circuit breaker half_open_max must be at least 1, got {spec.half_open_max}")


class CircuitBreakers:
    """The breakers of the servers of one upstream group, kept by server id.

    To carry state across a reload, build the new object with
    ``previous=old`` (or call :meth:`adopt`): servers with the same id keep
    their breaker state and window.
    """

    def __init__(
        self,
        servers: Sequence[Server],
        spec: BreakerSpec,
        *,
        clock: Callable[[], float],
        buckets: int = 10,
        previous: CircuitBreakers | None = None,
    ) -> None:
        check_spec(spec)
        if buckets < 1:
            raise ValueError("a breaker window needs at least one bucket")
        self.spec = spec
        self._clock = clock
        self._buckets = buckets
        self._ratio = spec.failure_ratio
        self._min_requests = spec.min_requests
        self._open_for = spec.open_for
        self._half_open_max = spec.half_open_max
        self._breakers: dict[str, _Breaker] = {}
        self._tripped: set[str] = set()  # ids of breakers open or half-open, for tick
        for server in servers:
            self.add_server(server)
        if previous is not None:
            self.adopt(previous)

    # -- the data plane's calls -------------------------------------------------

    def allow(self, server: Server, now: float) -> bool:
        """Whether a request may go to ``server`` now; a True in half-open takes one probe place."""
        breaker = self._breakers.get(server.id)
        if breaker is None or breaker.state == CLOSED:
            return True
        if breaker.state == OPEN:
            if now < breaker.until:
                return False
            self._half_open(breaker, now)
        if breaker.in_flight >= self._half_open_max:
            return False
        breaker.in_flight += 1
        breaker.granted_at = now
        return True

    def record(self, server: Server, success: bool, now: float) -> None:
        """Report the outcome of one request sent to ``server``."""
        breaker = self._breakers.get(server.id)
        if breaker is None:
            return
        state = breaker.state
        if state == CLOSED:
            counts = breaker.counts
            if success:
                counts.add(now, 1, 0)
                return
            counts.add(now, 1, 1)
            total = counts.total
            if total >= self._min_requests and counts.marked / total >= self._ratio:
                self._open(breaker, now)
        elif state == HALF_OPEN:
            if breaker.in_flight:
                breaker.in_flight -= 1
            if not success:
                self._open(breaker, now)
                return
            breaker.succeeded += 1
            if breaker.succeeded >= self._half_open_max:
                self._close(breaker, now)
        # OPEN: the outcome of a request sent before the breaker opened.

    def release(self, server: Server) -> None:
        """Give back a probe place granted by ``allow`` whose request ended without an outcome to report."""
        breaker = self._breakers.get(server.id)
        if breaker is not None and breaker.state == HALF_OPEN and breaker.in_flight:
            breaker.in_flight -= 1

    def tick(self, now: float) -> None:
        """Half-open the breakers whose ``open_for`` is over; free probe places held past ``open_for``."""
        if not self._tripped:
            return
        for server_id in list(self._tripped):
            breaker = self._breakers[server_id]
            if breaker.state == OPEN:
                if now >= breaker.until:
                    self._half_open(breaker, now)
            elif breaker.in_flight and now - breaker.granted_at >= self._open_for:
                breaker.in_flight = 0

    # -- transitions ------------------------------------------------------------------

    def _open(self, breaker: _Breaker, now: float) -> None:
        failures, total = breaker.counts.marked, breaker.counts.total
        was = breaker.state
        breaker.state = OPEN
        breaker.until = now + self._open_for
        breaker.in_flight = 0
        breaker.succeeded = 0
        breaker.opened += 1
        breaker.changed_at = now
        breaker.counts.clear()
        self._tripped.add(breaker.server.id)
        breaker.server.set_down(Down.BREAKER, True)
        if was == CLOSED:
            logger.info("%s breaker open: %d of %d requests failed", breaker.server.id, failures, total)
        else:
            logger.info("%s breaker open again: a probe failed", breaker.server.id)

    def _half_open(self, breaker: _Breaker, now: float) -> None:
        breaker.state = HALF_OPEN
        breaker.in_flight = 0
        breaker.succeeded = 0
        breaker.changed_at = now
        breaker.server.set_down(Down.BREAKER, False)
        logger.debug("%s breaker half-open", breaker.server.id)

    def _close(self, breaker: _Breaker, now: float) -> None:
        breaker.state = CLOSED
        breaker.in_flight = 0
        breaker.succeeded = 0
        breaker.changed_at = now
        breaker.counts.clear()
        self._tripped.discard(breaker.server.id)
        logger.info("%s breaker closed", breaker.server.id)

    # -- membership and state -------------------------------------------------------

    def server_ids(self) -> list[str]:
        return list(self._breakers)

    def add_server(self, server: Server) -> None:
        """Give one more server a closed breaker (its ``BREAKER`` flag is cleared)."""
        if server.id in self._breakers:
            raise ValueError(f"server {server.id} already has a breaker here")
        self._breakers[server.id] = _Breaker(server, RollingCounts(self.spec.window, self._buckets))
        server.set_down(Down.BREAKER, False)

    def remove_server(self, server_id: str) -> bool:
        """Drop a server's breaker and clear its ``BREAKER`` flag; False when it had none here."""
        breaker = self._breakers.pop(server_id, None)
        if breaker is None:
            return False
        self._tripped.discard(server_id)
        breaker.server.set_down(Down.BREAKER, False)
        return True

    def adopt(self, previous: CircuitBreakers) -> None:
        """Take over the breakers of servers that ``previous`` held under the same id.

        The window keeps its counts when the window length is unchanged (it
        starts empty otherwise); probes in flight stay counted by ``previous``.
        """
        same_window = previous.spec.window == self.spec.window and previous._buckets == self._buckets
        for server_id, breaker in self._breakers.items():
            old = previous._breakers.get(server_id)
            if old is None:
                continue
            twin = old.copy(breaker.server)
            if not same_window:
                twin.counts = RollingCounts(self.spec.window, self._buckets)
            self._breakers[server_id] = twin
            if twin.state == CLOSED:
                self._tripped.discard(server_id)
            else:
                self._tripped.add(server_id)
            breaker.server.set_down(Down.BREAKER, twin.state == OPEN)

    def state(self, server_id: str) -> BreakerState:
        """``closed``, ``open`` or ``half_open``; KeyError when the server has no breaker here."""
        return self._breakers[server_id].state

    def status(self, server_id: str, now: float | None = None) -> BreakerStatus:
        """The breaker of one server; KeyError when it has none here."""
        breaker = self._breakers[server_id]
        counts = breaker.counts
        counts.advance(self._clock() if now is None else now)
        return BreakerStatus(
            server_id=server_id,
            state=breaker.state,
            requests=counts.total,
            failures=counts.marked,
            until=breaker.until if breaker.state == OPEN else None,
            probes_in_flight=breaker.in_flight,
            probes_succeeded=breaker.succeeded,
            times_opened=breaker.opened,
            changed_at=breaker.changed_at,
        )

    def statuses(self, now: float | None = None) -> dict[str, BreakerStatus]:
        """Every breaker, by server id, in the group's order."""
        at = self._clock() if now is None else now
        return {server_id: self.status(server_id, at) for server_id in self._breakers}
