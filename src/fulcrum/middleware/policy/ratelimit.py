"""Token buckets per key (client address, API key...), with bounded memory.

Each bucket is kept as one float, its "theoretical arrival time" (GCRA): the
moment it will be full again. Taking a token pushes that moment one interval
(``1 / rate``) later; a request is allowed while the moment is at most
``burst`` intervals ahead of now. This is exactly a bucket of ``burst``
tokens refilled at ``rate`` per second, and a bucket whose moment has passed
is full, the same as a key never seen.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from itertools import islice
from typing import Protocol

# A thousandth of a token, to absorb float rounding: a client that waits exactly the advertised time is let in.
_SLACK = 1e-3


class Buckets(Protocol):
    """Where a rate limit keeps its buckets: this process's memory (``TokenBuckets``), or, for
    ``shared: true``, a store shared by several instances (the Redis state backend)."""

    def take(self, key: str, now: float) -> float: ...


#: Makes the buckets of one ``rate_limit`` (rate, burst, a name unique to that limit).
BucketsFactory = Callable[[float, int, str], Buckets]


def memory_buckets(rate: float, burst: int, name: str) -> Buckets:
    """The memory backend: buckets in this process."""
    return TokenBuckets(rate, burst)


class TokenBuckets:
    """Buckets of ``burst`` tokens refilled at ``rate`` tokens per second, one per key; new keys start full.

    ``take`` is O(1) amortized. At most ``max_keys`` buckets are kept: when a
    new key would exceed that, the full buckets are dropped (they are the same
    as new ones), then the least recently used, until an eighth of the room is
    free again, so the sweep happens once per many new keys. Dropping a bucket
    that is not full forgets a debt: a cap on memory, not on rate, under a
    flood of distinct keys. The caller supplies ``now`` (``time.monotonic()``).
    """

    __slots__ = ("_buckets", "_burst_s", "_interval", "_low_water", "_slack_s", "burst", "max_keys", "rate")

    def __init__(self, rate: float, burst: int, max_keys: int = 100_000) -> None:
        if not (math.isfinite(rate) and rate > 0):
            raise ValueError(f"rate must be a positive number of tokens per second, got {rate!r}")
        if burst < 1:
            raise ValueError(f"burst must be at least 1, got {burst!r}")
        if max_keys < 1:
            raise ValueError(f"max_keys must be at least 1, got {max_keys!r}")
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._interval = 1.0 / rate
        self._burst_s = burst * self._interval
        self._slack_s = _SLACK * self._interval
        self._low_water = max_keys - max(1, max_keys // 8)
        # key -> moment the bucket is full again; insertion order is the order of last use.
        self._buckets: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str, now: float) -> float:
        """Take one token from ``key``'s bucket: 0.0 when allowed, else the seconds until a token is there (> 0)."""
        buckets = self._buckets
        full_at = buckets.pop(key, None)
        if full_at is None:
            if len(buckets) >= self.max_keys:
                buckets = self._prune(now)
            full_at = now
        elif full_at < now:
            full_at = now
        after = full_at + self._interval
        wait = after - now - self._burst_s
        if wait > self._slack_s:
            buckets[key] = full_at
            return wait
        buckets[key] = after
        return 0.0

    def _prune(self, now: float) -> dict[str, float]:
        buckets = {key: full_at for key, full_at in self._buckets.items() if full_at > now}
        excess = len(buckets) - self._low_water
        if excess > 0:
            for key in list(islice(buckets, excess)):
                del buckets[key]
        self._buckets = buckets
        return buckets


def retry_after_header(seconds: float) -> str:
    """A ``Retry-After`` value for a wait: whole seconds rounded up, at least ``"1"``."""
    if not seconds > 1:  # also NaN
        return "1"
    return str(math.ceil(min(seconds, 1e9)))  # min: a wait of inf must not raise
