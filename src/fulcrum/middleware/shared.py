"""``rate_limit`` with ``shared: true`` over a store several instances share (the Redis state backend).

Every request on such a route waits for the store's answer: only that answer holds across
instances, and a local guess (a lease of tokens, a counter synced now and then) would let the sum
of instances go over the limit. The store may carry the takes of many requests in one round trip
(``RedisBuckets`` does), never answer one without asking. So such a route runs its chain as async
middleware, and only such a route: ``shared: false`` limits stay plain hooks on the instance's memory.

While the store cannot be reached, each bucket falls back to a memory bucket of the same rate and
burst in this instance (the store logs that once), and goes back to the store when it answers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from fulcrum.middleware.api import CallNext, Request, Response
from fulcrum.middleware.builtins import RateLimit
from fulcrum.middleware.policy.ipfilter import client_address
from fulcrum.middleware.policy.ratelimit import _SLACK, Buckets, TokenBuckets, retry_after_header

_TEXT = "text/plain; charset=utf-8"


class BucketStore(Protocol):
    """Buckets shared by instances (``fulcrum.state.redis.RedisBuckets``): seconds to wait, or None when the
    store cannot answer now."""

    async def take(self, key: str, interval_us: float, burst_us: float, slack_us: float) -> float | None: ...


class StoreBuckets:
    """The buckets of one ``rate_limit`` in a shared store, named ``name`` there, with a memory fallback:
    ``take_shared`` asks the store (the memory bucket answers while the store cannot), ``take`` is the memory
    bucket alone."""

    def __init__(self, store: BucketStore, rate: float, burst: int, name: str) -> None:
        self.local = TokenBuckets(rate, burst)  # validates rate and burst
        self.store = store
        self.prefix = name + ":"
        interval_us = 1e6 / rate
        self.args = (interval_us, burst * interval_us, _SLACK * interval_us)

    def take(self, key: str, now: float) -> float:
        return self.local.take(key, now)

    async def take_shared(self, key: str, now: float) -> float:
        interval_us, burst_us, slack_us = self.args
        wait = await self.store.take(self.prefix + key, interval_us, burst_us, slack_us)
        return self.local.take(key, now) if wait is None else wait


def store_buckets(store: BucketStore) -> Callable[[float, int, str], Buckets]:
    """The ``BucketsFactory`` of ``shared: true`` limits over ``store``."""

    def make(rate: float, burst: int, name: str) -> Buckets:
        return StoreBuckets(store, rate, burst, name)

    return make


class SharedRateLimit:
    """The async form of ``RateLimit`` (same key, same 429 and Retry-After) over ``StoreBuckets``."""

    def __init__(self, limit: RateLimit, buckets: StoreBuckets) -> None:
        self.limit = limit
        self.buckets = buckets
        self.take = buckets.take_shared

    async def __call__(self, req: Request, call_next: CallNext) -> Response:
        limit = self.limit
        key = limit.key
        if key == "ip":
            value = client_address(req.client_ip, req.forwarded_for, limit.trusted) if limit.trusted \
                else req.client_ip
        elif key == "route":
            value = limit.route
        else:
            value = req.header(limit.header) or ""
        wait = await self.take(value, limit.clock())
        if wait <= 0.0:
            return await call_next(req)
        return Response(429, "429 Too Many Requests: rate limit exceeded\n",
                        [("Content-Type", _TEXT), ("Retry-After", retry_after_header(wait))])

    def describe(self) -> str:
        return self.limit.describe() + ", shared"

    def close(self) -> None:
        return None


def shared_rate_limit(limit: RateLimit) -> RateLimit | SharedRateLimit:
    """``limit`` itself, or its async form when its buckets are in a shared store."""
    buckets = limit.buckets
    if isinstance(buckets, StoreBuckets):
        return SharedRateLimit(limit, buckets)
    return limit
