"""Runtime state of upstream servers, kept apart from config and outliving reloads."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable
from enum import IntFlag
from urllib.parse import urlsplit


class Down(IntFlag):
    """Why a server is not eligible; one flag per cause, eligible when none is set."""

    NONE = 0
    ACTIVE_CHECK = 1  # failed its active health check (or not yet checked)
    PASSIVE = 2  # ejected by outlier detection
    BREAKER = 4  # circuit breaker open
    DRAINING = 8  # takes no new requests
    DISABLED = 16  # switched off by an operator


#: Upper bounds (ms) of the last-minute latency buckets: 0.05 ms to about 65 s, each 25% above the one before,
#: so a percentile read from them is within 25% of the true one. One more bucket holds the rest.
RECENT_BOUNDS: tuple[float, ...] = tuple(0.05 * 1.25 ** i for i in range(64))
#: The window is RECENT_SLOTS slots of RECENT_SLOT_S seconds: the slot being filled and the five before it.
RECENT_SLOT_S = 10.0
RECENT_SLOTS = 6


class Recent:
    """One server's last minute: requests, response bytes, new connections and a latency histogram.

    Kept in time slots that are reset as the clock comes round to them again, so recording is a few
    additions (no allocation) and reading adds up at most six slots.
    """

    __slots__ = ("bytes", "connects", "hist", "requests", "since", "ticks")

    def __init__(self) -> None:
        self.ticks = [-1] * RECENT_SLOTS  # which slot of time each holds
        self.requests = [0] * RECENT_SLOTS
        self.bytes = [0] * RECENT_SLOTS
        self.connects = [0] * RECENT_SLOTS
        self.hist = [[0] * (len(RECENT_BOUNDS) + 1) for _ in range(RECENT_SLOTS)]
        self.since = -1.0  # loop time of the first thing recorded

    def _slot(self, now: float) -> int:
        tick = int(now // RECENT_SLOT_S)
        i = tick % RECENT_SLOTS
        if self.ticks[i] != tick:
            if self.since < 0:
                self.since = now
            self.ticks[i] = tick
            self.requests[i] = 0
            self.bytes[i] = 0
            self.connects[i] = 0
            hist = self.hist[i]
            for j in range(len(hist)):
                hist[j] = 0
        return i

    def record(self, now: float, ms: float, nbytes: int) -> None:
        """A response ended at loop time ``now`` after ``ms``, with ``nbytes`` sent to the client."""
        i = self._slot(now)
        self.requests[i] += 1
        self.bytes[i] += nbytes
        self.hist[i][bisect_left(RECENT_BOUNDS, ms)] += 1

    def connected(self, now: float) -> None:
        """A new upstream connection was opened."""
        self.connects[self._slot(now)] += 1

    def summary(self, now: float) -> tuple[int, float | None, float | None, float, float | None]:
        """(requests, p50 ms, p99 ms, bytes per second, share of requests on a new connection) of the last minute."""
        tick = int(now // RECENT_SLOT_S)
        live = [i for i in range(RECENT_SLOTS) if tick - RECENT_SLOTS < self.ticks[i] <= tick]
        requests = sum(self.requests[i] for i in live)
        start = max(self.since, (tick - RECENT_SLOTS + 1) * RECENT_SLOT_S)
        seconds = now - start if self.since >= 0 else 0.0
        rate = sum(self.bytes[i] for i in live) / seconds if seconds > 0 else 0.0
        if not requests:
            return 0, None, None, rate, None
        hist = [sum(self.hist[i][j] for i in live) for j in range(len(RECENT_BOUNDS) + 1)]
        share = min(1.0, sum(self.connects[i] for i in live) / requests)
        return requests, _percentile(hist, requests, 0.5), _percentile(hist, requests, 0.99), rate, share


def _percentile(hist: list[int], count: int, q: float) -> float:
    """The ``q`` quantile of a RECENT_BOUNDS histogram, interpolated inside its bucket."""
    rank = q * count
    seen = 0
    for j, n in enumerate(hist):
        if n and seen + n >= rank:
            low = RECENT_BOUNDS[j - 1] if j else 0.0
            high = RECENT_BOUNDS[j] if j < len(RECENT_BOUNDS) else RECENT_BOUNDS[-1] * 1.25
            return low + (high - low) * max(0.0, rank - seen) / n
        seen += n
    return RECENT_BOUNDS[-1]


class Server:
    """One upstream server as the data plane sees it.

    ``id`` is ``host:port``, unique within its group. Health checks and the
    admin API write the flags; balancing policies only read. ``active`` counts
    requests in flight through this process; ``ewma_ms`` is the smoothed
    response time.
    """

    __slots__ = (
        "_listeners",
        "active",
        "codes",
        "down",
        "errors",
        "ewma_at",
        "ewma_ms",
        "host",
        "id",
        "port",
        "recent",
        "requests",
        "up_since",
        "url",
        "weight",
    )

    def __init__(self, url: str, weight: int = 1) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"server url must be http://host:port, got {url!r}")
        self.url = url
        self.host: str = parts.hostname
        self.port: int = parts.port or 80
        self.id = f"{self.host}:{self.port}" if ":" not in self.host else f"[{self.host}]:{self.port}"
        self.weight = weight
        self.down = Down.NONE
        self.active = 0
        self.ewma_ms = 0.0
        self.ewma_at = 0.0  # loop time of the last ewma update
        self.up_since = 0.0  # loop time it last became eligible (for slow start)
        self.requests = 0
        self.errors = 0
        self.codes: dict[int, int] = {}  # responses by status code, as the client got them
        self.recent = Recent()
        self._listeners: list[Callable[[Server], None]] = []

    @property
    def healthy(self) -> bool:
        return not self.down & Down.ACTIVE_CHECK

    @property
    def draining(self) -> bool:
        return bool(self.down & Down.DRAINING)

    @property
    def disabled(self) -> bool:
        return bool(self.down & Down.DISABLED)

    @property
    def eligible(self) -> bool:
        return self.down == Down.NONE

    def set_down(self, flag: Down, on: bool) -> None:
        """Set or clear one cause; listeners hear of a change in eligibility causes."""
        new = self.down | flag if on else self.down & ~flag
        if new != self.down:
            self.down = new
            for listener in self._listeners:
                listener(self)

    def subscribe(self, listener: Callable[[Server], None]) -> None:
        self._listeners.append(listener)

    def unsubscribe(self, listener: Callable[[Server], None]) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def __repr__(self) -> str:
        return f"Server({self.id}, weight={self.weight}, down={self.down!r}, active={self.active})"
