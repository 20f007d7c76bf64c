"""Retry decisions: which failures may be retried, and a budget that caps retries at a share of traffic.

Pure: no I/O, no timers. Every time-based call takes ``now`` (seconds on a
monotonic clock, the same one for every call on one object).

A :class:`RetryBudget` is one per upstream group. The data plane calls
:meth:`RetryBudget.record_request` for every first try (never for a retry)
and asks :meth:`RetryBudget.can_retry` before each retry. A retry is granted
only when, counting it, the rolling window that ends at that moment holds::

    retries <= ratio * first_tries + min_per_second * window

The floor lets low traffic still retry; the ratio keeps retries from
multiplying load when an upstream is failing everywhere (a budget of 20%
adds at most a fifth on top of live traffic, however high ``max`` is).
A later window may hold more retries than its cap when the first tries that
paid for them have already left it: the check is made when a retry is spent,
as in Finagle's and Linkerd's budgets.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Protocol

#: Methods a retry may repeat once bytes of the request went upstream (RFC 9110 §9.2.2, as Fulcrum retries them).
IDEMPOTENT_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE"})

#: The failures ``retries.when`` may name besides status codes ("502") and classes ("5xx").
RETRY_FAILURES = frozenset({"connect_error", "reset", "timeout"})

# Status codes as text, made once so a retry decision formats nothing.
_STATUS_TEXT = tuple(str(code) for code in range(600))
_STATUS_CLASS = tuple(f"{code // 100}xx" for code in range(600))
_NO_SLOT = -(2**62)  # before any time: the first advance starts the window afresh
_EPSILON = 1e-9  # float slack, so 0.29 * 100 requests still buys 29 retries


def retryable(method: bytes, outcome: str, status: int, when: frozenset[str], sent_any_byte: bool) -> bool:
    """Whether a failed try may be retried, as far as the method and the failure go.

    ``outcome`` is ``connect_error``, ``reset``, ``timeout`` or, for a
    response, anything else with its ``status`` (0 when there was none).
    The failure must be listed in ``when``: by name, by status code
    (``"503"``) or by class (``"5xx"``). Once a byte of the request was
    written upstream, only idempotent methods are retried; a request that
    never left (``sent_any_byte`` false) may be retried whatever its method.
    The attempt count, the budget and "never the same server twice" are the
    caller's.
    """
    if sent_any_byte and method not in IDEMPOTENT_METHODS:
        return False
    if outcome in when:
        return True
    if 0 < status < 600:
        return _STATUS_TEXT[status] in when or _STATUS_CLASS[status] in when
    return False


def check_when(when: Collection[str]) -> frozenset[str]:
    """``retries.when`` as a set; ValueError naming the first entry that is no failure name, code or class."""
    for item in when:
        if item in RETRY_FAILURES:
            continue
        if len(item) == 3 and item[0] in "12345" and (item[1:] == "xx" or item[1:].isdigit()):
            continue
        raise ValueError(f"retry condition must be connect_error, reset, timeout, a status like 503 or 5xx: {item!r}")
    return frozenset(when)


class RollingCounts:
    """Two counters over a rolling time window cut into equal buckets; O(1) amortised per call.

    ``total`` and ``marked`` hold the sums over the last ``buckets`` buckets
    (the one ``now`` falls in and those before it), so the window covers
    between ``window * (buckets - 1) / buckets`` and ``window`` seconds of
    history. A time earlier than the newest bucket seen counts in that bucket.
    """

    __slots__ = ("_head", "_marked", "_size", "_totals", "_width", "marked", "total")

    def __init__(self, window: float, buckets: int = 10) -> None:
        if window <= 0 or buckets < 1:
            raise ValueError("a rolling window needs a positive length and at least one bucket")
        self._width = window / buckets
        self._size = buckets
        self._totals = [0] * buckets
        self._marked = [0] * buckets
        self._head = _NO_SLOT
        self.total = 0
        self.marked = 0

    def advance(self, now: float) -> None:
        """Drop the buckets that have left the window by ``now``."""
        slot = int(now // self._width)
        head = self._head
        if slot <= head:
            return
        size = self._size
        if slot - head >= size:
            self.clear()
        else:
            totals, marked = self._totals, self._marked
            for k in range(head + 1, slot + 1):
                i = k % size
                self.total -= totals[i]
                self.marked -= marked[i]
                totals[i] = 0
                marked[i] = 0
        self._head = slot

    def add(self, now: float, total: int, marked: int) -> None:
        """Count ``total`` and ``marked`` at ``now``."""
        self.advance(now)
        i = self._head % self._size
        self._totals[i] += total
        self._marked[i] += marked
        self.total += total
        self.marked += marked

    def clear(self) -> None:
        """Forget every count (the window keeps its position)."""
        for i in range(self._size):
            self._totals[i] = 0
            self._marked[i] = 0
        self.total = 0
        self.marked = 0

    def copy(self) -> RollingCounts:
        twin = RollingCounts.__new__(RollingCounts)
        twin._width = self._width
        twin._size = self._size
        twin._totals = list(self._totals)
        twin._marked = list(self._marked)
        twin._head = self._head
        twin.total = self.total
        twin.marked = self.marked
        return twin


class RetrySpec(Protocol):
    """What the retry logic reads from an upstream group's ``retries`` config; ``budget`` is a fraction."""

    @property
    def max(self) -> int: ...
    @property
    def when(self) -> Collection[str]: ...
    @property
    def budget(self) -> float: ...
    @property
    def budget_min_per_second(self) -> float: ...


class RetryBudget:
    """Caps the retries of one upstream group at ``ratio`` of its first tries plus a small floor.

    ``record_request(now)`` counts a first try; ``can_retry(now)`` answers
    whether one more retry fits and, when it does, spends it. The window
    rolls in ``buckets`` steps (see :class:`RollingCounts`).
    """

    __slots__ = ("_clock", "_counts", "_floor", "min_per_second", "ratio", "window")

    def __init__(
        self,
        ratio: float,
        min_per_second: float = 3.0,
        window: float = 10.0,
        *,
        clock: Callable[[], float],
        buckets: int = 10,
    ) -> None:
        if not 0 <= ratio <= 1:
            raise ValueError(f"retry budget ratio must be from 0 to 1, got {ratio}")
        if min_per_second < 0:
            raise ValueError(f"retry budget floor must not be negative, got {min_per_second}")
        if window <= 0:
            raise ValueError(f"retry budget window must be positive, got {window}")
        self.ratio = ratio
        self.min_per_second = min_per_second
        self.window = window
        self._floor = min_per_second * window + _EPSILON
        self._clock = clock
        self._counts = RollingCounts(window, buckets)

    @classmethod
    def from_spec(cls, spec: RetrySpec, *, clock: Callable[[], float], window: float = 10.0) -> RetryBudget:
        return cls(spec.budget, spec.budget_min_per_second, window, clock=clock)

    def record_request(self, now: float) -> None:
        """Count one first try (not a retry)."""
        self._counts.add(now, 1, 0)

    def can_retry(self, now: float) -> bool:
        """True, and one retry spent, when a retry still fits in the budget; False otherwise."""
        counts = self._counts
        counts.advance(now)
        if counts.marked + 1 > self.ratio * counts.total + self._floor:
            return False
        counts.add(now, 0, 1)
        return True

    def available(self, now: float | None = None) -> int:
        """How many retries the budget would grant now (for metrics and the status page)."""
        counts = self._counts
        counts.advance(self._clock() if now is None else now)
        return max(0, int(self.ratio * counts.total + self._floor) - counts.marked)

    def counts(self, now: float | None = None) -> tuple[int, int]:
        """First tries and retries in the window: ``(requests, retries)``."""
        counts = self._counts
        counts.advance(self._clock() if now is None else now)
        return counts.total, counts.marked
