"""Runtime state of upstream servers, kept apart from config and outliving reloads."""

from __future__ import annotations

import math
from collections.abc import Callable
from enum import IntFlag
from typing import Final
from urllib.parse import urlsplit


class Down(IntFlag):
    """Why a server is not eligible; one flag per cause, eligible when none is set."""

    NONE = 0
    ACTIVE_CHECK = 1  # failed its active health check (or not yet checked)
    PASSIVE = 2  # ejected by outlier detection
    BREAKER = 4  # circuit breaker open
    DRAINING = 8  # takes no new requests
    DISABLED = 16  # switched off by an operator


#: The last-minute latency buckets: bucket 0 holds up to RECENT_MIN_MS, bucket j up to RECENT_MIN_MS * 1.25**j
#: (0.05 ms to about 65 s), so a percentile read from them is within 25% of the true one. The last holds the rest.
RECENT_MIN_MS: Final = 0.05
RECENT_GROWTH: Final = 1.25
RECENT_BUCKETS: Final = 65
_LOG_GROWTH: Final = math.log(RECENT_GROWTH)
#: The window is RECENT_SLOTS slots of RECENT_SLOT_S seconds: the slot being filled and the five before it.
RECENT_SLOT_S: Final = 10.0
RECENT_SLOTS: Final = 6


def recent_bound(j: int) -> float:
    """The upper bound (ms) of last-minute bucket ``j``."""
    return RECENT_MIN_MS * RECENT_GROWTH ** j


def recent_bucket(ms: float) -> int:
    """The bucket of a response time: computed, not searched (one logarithm, no loop, no allocation)."""
    if ms <= RECENT_MIN_MS:
        return 0
    j = math.ceil(math.log(ms / RECENT_MIN_MS) / _LOG_GROWTH)
    return j if j < RECENT_BUCKETS - 1 else RECENT_BUCKETS - 1


class RecentSlot:
    """RECENT_SLOT_S seconds of one server: counters as native ints, so recording allocates nothing."""

    __slots__ = ("bytes", "connects", "hist", "requests", "tick")

    def __init__(self) -> None:
        self.tick = -1  # which slot of time it holds
        self.requests = 0
        self.bytes = 0
        self.connects = 0
        self.hist = [0] * RECENT_BUCKETS

    def reset(self, tick: int) -> None:
        self.tick = tick
        self.requests = 0
        self.bytes = 0
        self.connects = 0
        hist = self.hist
        for j in range(RECENT_BUCKETS):
            hist[j] = 0


class Recent:
    """One server's last minute: requests, response bytes, new connections and a latency histogram.

    Kept in time slots that are reset as the clock comes round to them again: recording is a few
    additions to the current slot, and reading adds up at most six slots.
    """

    __slots__ = ("current", "since", "slots")

    def __init__(self) -> None:
        self.slots = [RecentSlot() for _ in range(RECENT_SLOTS)]
        self.current = self.slots[0]
        self.since = -1.0  # loop time of the first thing recorded

    def _slot(self, now: float) -> RecentSlot:
        tick = int(now // RECENT_SLOT_S)
        slot = self.current
        if slot.tick != tick:
            if self.since < 0:
                self.since = now
            slot = self.current = self.slots[tick % RECENT_SLOTS]
            slot.reset(tick)
        return slot

    def record(self, now: float, ms: float, nbytes: int) -> None:
        """A response ended at loop time ``now`` after ``ms``, with ``nbytes`` sent to the client."""
        slot = self._slot(now)
        slot.requests += 1
        slot.bytes += nbytes
        slot.hist[recent_bucket(ms)] += 1

    def connected(self, now: float) -> None:
        """A new upstream connection was opened."""
        self._slot(now).connects += 1

    def summary(self, now: float) -> tuple[int, float | None, float | None, float, float | None]:
        """(requests, p50 ms, p99 ms, bytes per second, share of requests on a new connection) of the last minute."""
        tick = int(now // RECENT_SLOT_S)
        live = [slot for slot in self.slots if tick - RECENT_SLOTS < slot.tick <= tick]
        requests = sum(slot.requests for slot in live)
        start = max(self.since, (tick - RECENT_SLOTS + 1) * RECENT_SLOT_S)
        seconds = now - start if self.since >= 0 else 0.0
        rate = sum(slot.bytes for slot in live) / seconds if seconds > 0 else 0.0
        if not requests:
            return 0, None, None, rate, None
        hist = [sum(slot.hist[j] for slot in live) for j in range(RECENT_BUCKETS)]
        share = min(1.0, sum(slot.connects for slot in live) / requests)
        return requests, _percentile(hist, requests, 0.5), _percentile(hist, requests, 0.99), rate, share


def _percentile(hist: list[int], count: int, q: float) -> float:
    """The ``q`` quantile of a last-minute histogram, interpolated inside its bucket."""
    rank = q * count
    seen = 0
    for j, n in enumerate(hist):
        if n and seen + n >= rank:
            low = recent_bound(j - 1) if j else 0.0
            high = recent_bound(j)
            return low + (high - low) * max(0.0, rank - seen) / n
        seen += n
    return recent_bound(RECENT_BUCKETS - 1)


class Server:
    """One upstream server as the data plane sees it.

    ``id`` is ``host:port``, unique within its group; ``tls`` marks an https server. Health checks and the
    admin API write the flags; balancing policies only read. ``active`` counts
    requests in flight through this process; ``requests`` counts the attempts sent to it and
    ``errors`` those that failed (connect error, reset, timeout, a broken response) or were answered
    with a 5xx; ``ewma_ms`` is the smoothed response time.
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
        "tls",
        "up_since",
        "url",
        "weight",
    )

    def __init__(self, url: str, weight: int = 1) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"server url must be http://host:port or https://host:port, got {url!r}")
        self.url = url
        self.tls = parts.scheme == "https"
        self.host: str = parts.hostname
        self.port: int = parts.port or (443 if self.tls else 80)
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
