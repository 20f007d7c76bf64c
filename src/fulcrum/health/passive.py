"""Passive health: outlier detection from the outcomes of real requests.

One :class:`OutlierDetector` per upstream group. The data plane reports the
outcome of every try (:meth:`OutlierDetector.record`); the detector writes
one thing, the ``Down.PASSIVE`` flag of each server. Pure: no I/O, no
timers; every decision takes ``now`` (seconds on a monotonic clock), and
:meth:`OutlierDetector.tick` brings servers back when their time is up.

Rules:

- A failure is an outcome listed in ``on`` (default: connect_error, reset,
  timeout, 5xx). A server is ejected at its ``max_failures``-th failure
  within ``window`` seconds (failures less than ``window`` old). Successes
  do not clear the count: failures leave it by ageing out of the window.
  An ejection forgets the failures counted before it, and outcomes reported
  while a server is out (of requests sent before) are ignored.
- An ejection lasts ``eject_for * n`` seconds, n counting the ejections in a
  row, this one included; never longer than ``max_eject_for``. A server that
  stays in service for ``max_eject_for`` seconds after it comes back starts
  again at n = 1.
- A hard bound: at most :func:`max_ejected` (N, ``max_ejected_percent``) of
  the group's N servers are out at once, that is floor(N * percent / 100),
  raised to 1 when that is 0 and the percentage above 0 (so a small group
  can still eject one server), and never more than N - 1 (so a group of one
  never ejects). A failure that would pass the bound ejects nothing; the
  server is ejected at a later failure once there is room.
- Ejection alone never leaves a group without an eligible server: a server
  is not ejected when no other server of the group is eligible, and when
  nothing in the group is eligible (active checks took the others down, say)
  ``tick`` brings back early the ejected server due soonest whose only flag
  is ``PASSIVE``.
- A group that shrinks (remove, or adopt into a smaller group) brings back
  early those due soonest until it is within the bound again.
"""

from __future__ import annotations

import heapq
import logging
from collections import deque
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Protocol

from fulcrum.state.server import Down, Server

logger = logging.getLogger("fulcrum.health")

#: Outcomes the data plane reports; all but ``success`` may be listed in ``passive.on``.
OUTCOMES = frozenset({"success", "connect_error", "reset", "timeout", "5xx", "4xx"})
FAILURE_OUTCOMES = OUTCOMES - {"success"}
DEFAULT_ON = frozenset({"connect_error", "reset", "timeout", "5xx"})

# The outcome of a response by status, made once so reporting one formats nothing.
_STATUS_OUTCOME = tuple("5xx" if code >= 500 else "4xx" if code >= 400 else "success" for code in range(600))


def status_outcome(status: int) -> str:
    """The outcome of a response: ``5xx``, ``4xx``, or ``success`` for anything below 400."""
    return _STATUS_OUTCOME[status] if 0 <= status < 600 else "5xx"


def max_ejected(servers: int, percent: float) -> int:
    """How many of a group of ``servers`` may be ejected at once (see the module's rules)."""
    if servers < 2 or percent <= 0:
        return 0
    bound = int(servers * percent // 100)
    return min(servers - 1, max(1, bound))


class PassiveSpec(Protocol):
    """What the detector reads from an upstream group's ``passive`` config; times in seconds."""

    @property
    def max_failures(self) -> int: ...
    @property
    def window(self) -> float: ...
    @property
    def eject_for(self) -> float: ...
    @property
    def max_eject_for(self) -> float: ...
    @property
    def max_ejected_percent(self) -> float: ...
    @property
    def on(self) -> Collection[str]: ...


@dataclass(frozen=True, slots=True)
class EjectionStatus:
    """A snapshot of one server's outlier state, for the admin API and metrics.

    ``streak`` counts the ejections in a row (what the next ejection's length
    grows from); ``ejections`` counts them all.
    """

    server_id: str
    ejected: bool
    until: float | None
    streak: int
    ejections: int
    failures_in_window: int
    ejected_at: float | None
    returned_at: float | None


class _Record:
    __slots__ = ("ejected", "ejected_at", "ejections", "failures", "returned_at", "server", "streak", "until")

    def __init__(self, server: Server, max_failures: int) -> None:
        self.server = server
        self.failures: deque[float] = deque(maxlen=max_failures)
        self.ejected = False
        self.until = 0.0
        self.streak = 0
        self.ejections = 0
        self.ejected_at: float | None = None
        self.returned_at: float | None = None


def check_spec(spec: PassiveSpec) -> frozenset[str]:
    """The outcomes that count as failures; ValueError when the config cannot work."""
    if spec.max_failures < 1:
        raise ValueError(f"passive max_failures must be at least 1, got {spec.max_failures}")
    if spec.window <= 0 or spec.eject_for <= 0:
        raise ValueError("passive window and eject_for must be positive")
    if spec.max_eject_for < spec.eject_for:
        raise ValueError(f"passive max_eject_for ({spec.max_eject_for}s) is shorter than eject_for ({spec.eject_for}s)")
    if not 0 <= spec.max_ejected_percent <= 100:
        raise ValueError(f"passive max_ejected_percent must be from 0 to 100, got {spec.max_ejected_percent}")
    on = frozenset(spec.on)
    unknown = sorted(on - FAILURE_OUTCOMES)
    if unknown:
        known = ", ".join(sorted(FAILURE_OUTCOMES))
        raise ValueError(f"passive on: {', '.join(unknown)} is not an outcome ({known})")
    return on


class OutlierDetector:
    """Ejects the servers of one upstream group that fail too often, and brings them back.

    To carry state across a reload, build the new detector with
    ``previous=old`` (or call :meth:`adopt`): servers with the same id keep
    their ejection, streak and recent failures.
    """

    def __init__(
        self,
        servers: Sequence[Server],
        spec: PassiveSpec,
        *,
        clock: Callable[[], float],
        previous: OutlierDetector | None = None,
    ) -> None:
        self._on = check_spec(spec)
        self.spec = spec
        self._clock = clock
        self._max_failures = spec.max_failures
        self._window = spec.window
        self._eject_for = spec.eject_for
        self._max_eject_for = spec.max_eject_for
        self._percent = spec.max_ejected_percent
        self._records: dict[str, _Record] = {}
        self._returns: list[tuple[float, str]] = []  # heap of (until, id); stale entries skipped
        self._ejected = 0
        self._limit = 0
        for server in servers:
            self._add(server)
        self._limit = max_ejected(len(self._records), self._percent)
        if previous is not None:
            self.adopt(previous)

    # -- the data plane's calls -------------------------------------------------

    def record(self, server: Server, outcome: str, now: float) -> None:
        """Report the outcome of one try on ``server`` (see :data:`OUTCOMES`, :func:`status_outcome`)."""
        if outcome not in self._on:
            return
        record = self._records.get(server.id)
        if record is None or record.ejected:
            return
        failures = record.failures
        failures.append(now)
        if len(failures) < self._max_failures or now - failures[0] >= self._window:
            return
        if self._ejected >= self._limit or not self._others_eligible(record):
            return
        self._eject(record, now)

    def tick(self, now: float) -> None:
        """Bring back the servers whose ejection is over (and one early if nothing else is eligible)."""
        returns = self._returns
        while returns and returns[0][0] <= now:
            until, server_id = heapq.heappop(returns)
            record = self._records.get(server_id)
            if record is not None and record.ejected and record.until == until:
                self._return(record, now, "ejection over")
        if self._ejected and not any(record.server.eligible for record in self._records.values()):
            due = [r for r in self._records.values() if r.ejected and r.server.down == Down.PASSIVE]
            if due:
                self._return(min(due, key=_until), now, "no other server eligible")

    # -- transitions ------------------------------------------------------------------

    def _others_eligible(self, record: _Record) -> bool:
        return any(other.server.eligible for other in self._records.values() if other is not record)

    def _eject(self, record: _Record, now: float) -> None:
        if record.returned_at is not None and now - record.returned_at >= self._max_eject_for:
            record.streak = 0
        record.streak += 1
        duration = min(self._eject_for * record.streak, self._max_eject_for)
        record.ejected = True
        record.until = now + duration
        record.ejected_at = now
        record.ejections += 1
        record.failures.clear()
        self._ejected += 1
        heapq.heappush(self._returns, (record.until, record.server.id))
        record.server.set_down(Down.PASSIVE, True)
        logger.info(
            "%s ejected for %gs: %d failures in %gs (ejection %d in a row)",
            record.server.id,
            duration,
            self._max_failures,
            self._window,
            record.streak,
        )

    def _return(self, record: _Record, now: float, why: str) -> None:
        record.ejected = False
        record.returned_at = now
        record.failures.clear()
        self._ejected -= 1
        record.server.set_down(Down.PASSIVE, False)
        logger.info("%s back from ejection: %s", record.server.id, why)

    def _within_bound(self, now: float) -> None:
        self._limit = max_ejected(len(self._records), self._percent)
        if self._ejected <= self._limit:
            return
        out = sorted((r for r in self._records.values() if r.ejected), key=_until)
        for record in out[: self._ejected - self._limit]:
            self._return(record, now, "group too small for so many ejections")

    # -- membership and state -------------------------------------------------------

    def server_ids(self) -> list[str]:
        return list(self._records)

    def add_server(self, server: Server) -> None:
        """Watch one more server, starting in service with no failures (its ``PASSIVE`` flag is cleared)."""
        self._add(server)
        self._limit = max_ejected(len(self._records), self._percent)

    def remove_server(self, server_id: str) -> bool:
        """Stop watching a server and clear its ``PASSIVE`` flag; False when it was not watched here."""
        record = self._records.pop(server_id, None)
        if record is None:
            return False
        if record.ejected:
            record.ejected = False
            self._ejected -= 1
            record.server.set_down(Down.PASSIVE, False)
        self._within_bound(self._clock())
        return True

    def adopt(self, previous: OutlierDetector) -> None:
        """Take over ejections, streaks and recent failures of servers ``previous`` watched under the same id.

        An ejection keeps its end time; if the group is now too small for as
        many ejections, those due soonest come back at once.
        """
        for server_id, record in self._records.items():
            old = previous._records.get(server_id)
            if old is None:
                continue
            if record.ejected:
                self._ejected -= 1
            record.failures = deque(old.failures, maxlen=self._max_failures)
            record.ejected = old.ejected
            record.until = old.until
            record.streak = old.streak
            record.ejections = old.ejections
            record.ejected_at = old.ejected_at
            record.returned_at = old.returned_at
            if record.ejected:
                self._ejected += 1
                heapq.heappush(self._returns, (record.until, server_id))
            record.server.set_down(Down.PASSIVE, record.ejected)
        self._within_bound(self._clock())

    def ejected_count(self) -> int:
        """How many servers are out now."""
        return self._ejected

    @property
    def limit(self) -> int:
        """How many servers may be out at once in this group as it is now."""
        return self._limit

    def status(self, server_id: str, now: float | None = None) -> EjectionStatus:
        """The outlier state of one server; KeyError when it is not watched here."""
        record = self._records[server_id]
        at = self._clock() if now is None else now
        streak = record.streak
        if not record.ejected and record.returned_at is not None and at - record.returned_at >= self._max_eject_for:
            streak = 0
        return EjectionStatus(
            server_id=server_id,
            ejected=record.ejected,
            until=record.until if record.ejected else None,
            streak=streak,
            ejections=record.ejections,
            failures_in_window=sum(1 for t in record.failures if at - t < self._window),
            ejected_at=record.ejected_at,
            returned_at=record.returned_at,
        )

    def statuses(self, now: float | None = None) -> dict[str, EjectionStatus]:
        """Every server's outlier state, by id, in the group's order."""
        at = self._clock() if now is None else now
        return {server_id: self.status(server_id, at) for server_id in self._records}

    def _add(self, server: Server) -> None:
        if server.id in self._records:
            raise ValueError(f"server {server.id} is already watched here")
        self._records[server.id] = _Record(server, self._max_failures)
        server.set_down(Down.PASSIVE, False)


def _until(record: _Record) -> float:
    return record.until
