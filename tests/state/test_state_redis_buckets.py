"""Shared token buckets in a real Redis: one bucket for every client of it, expiring keys, the memory fallback."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import pytest

from fulcrum.middleware.policy.ratelimit import TokenBuckets
from fulcrum.middleware.shared import StoreBuckets
from fulcrum.state.redis import RedisBuckets
from tests.support.redisserver import RedisServer
from tests.support.upstream import RefusingPort


async def poll(check: Callable[[], Awaitable[bool]], timeout: float = 15.0) -> None:
    """Await ``check()`` until it is true."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


async def test_two_clients_take_from_one_bucket(redis_server: RedisServer, prefix: str) -> None:
    one, two = RedisBuckets(redis_server.url, prefix), RedisBuckets(redis_server.url, prefix)
    try:
        a, b = StoreBuckets(one, 1.0, 3, "api#0"), StoreBuckets(two, 1.0, 3, "api#0")
        waits = [await bucket.take_shared("10.0.0.1", 0.0) for bucket in (a, b, a, b)]
        assert waits[:3] == [0.0, 0.0, 0.0]
        assert 0.0 < waits[3] <= 1.0  # a token a second: at most a second until the next
        assert await b.take_shared("10.0.0.2", 0.0) == 0.0  # another key, another bucket
        # the memory buckets were not used while Redis answered
        assert len(a.local) == 0 and len(b.local) == 0
        ttl = int(redis_server.command("PTTL", f"{prefix}:rl:api#0:10.0.0.1").strip(b":\r\n"))
        assert 0 < ttl <= 3 * 1000 + 1000
    finally:
        await one.close()
        await two.close()


async def test_a_refused_take_does_not_spend_a_token(redis_server: RedisServer, prefix: str) -> None:
    store = RedisBuckets(redis_server.url, prefix)
    try:
        bucket = StoreBuckets(store, 1 / 3600, 1, "r#0")  # one an hour: no refill during the test
        assert await bucket.take_shared("k", 0.0) == 0.0
        first = await bucket.take_shared("k", 0.0)
        for _ in range(5):
            again = await bucket.take_shared("k", 0.0)
            assert 0 < again <= first  # the wait only shrinks as time passes: refusals took nothing
    finally:
        await store.close()


async def test_unreachable_redis_falls_back_to_memory_and_logs_once(
        dead_port: RefusingPort, caplog: pytest.LogCaptureFixture) -> None:
    store = RedisBuckets(f"redis://127.0.0.1:{dead_port.port}/0", "x")
    try:
        bucket = StoreBuckets(store, 1 / 3600, 2, "r#0")
        with caplog.at_level(logging.WARNING, logger="fulcrum.state"):
            waits = [await bucket.take_shared("k", 100.0) for _ in range(5)]
        assert waits[:2] == [0.0, 0.0] and all(w > 0 for w in waits[2:])  # the memory bucket's answers
        assert not store.up
        lost = [r for r in caplog.records if "unreachable" in r.getMessage()]
        assert len(lost) == 1 and str(dead_port.port) in lost[0].getMessage()
        assert isinstance(bucket.local, TokenBuckets) and len(bucket.local) == 1
    finally:
        await store.close()


async def test_buckets_go_back_to_redis_when_it_returns(own_redis: RedisServer, prefix: str,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    store = RedisBuckets(own_redis.url, prefix)
    try:
        bucket = StoreBuckets(store, 1 / 3600, 1, "r#0")
        assert await bucket.take_shared("k", 0.0) == 0.0  # from Redis
        own_redis.stop()
        assert await bucket.take_shared("k", 0.0) == 0.0  # Redis gone: the memory bucket is still full
        assert await bucket.take_shared("k", 0.0) > 0.0
        own_redis.start()  # empty again: the Redis bucket is full
        with caplog.at_level(logging.INFO, logger="fulcrum.state"):
            async def back() -> bool:
                return store.up
            await poll(back)
        assert await bucket.take_shared("k", 0.0) == 0.0
        assert any("reachable again" in r.getMessage() for r in caplog.records)
    finally:
        await store.close()


async def test_takes_made_together_go_in_one_call_and_still_count_one_by_one(
        redis_server: RedisServer, prefix: str) -> None:
    one, two = RedisBuckets(redis_server.url, prefix), RedisBuckets(redis_server.url, prefix)
    try:
        a, b = StoreBuckets(one, 1 / 3600, 10, "r#0"), StoreBuckets(two, 1 / 3600, 10, "r#0")
        waits = await asyncio.gather(*(bucket.take_shared(key, 0.0) for _ in range(15) for bucket in (a, b)
                                       for key in ("k1", "k2")))
        by_key = {key: [w for i, w in enumerate(waits) if i % 2 == n] for n, key in enumerate(("k1", "k2"))}
        for key, answers in by_key.items():
            assert answers.count(0.0) == 10, key  # 30 takes of one key at once: exactly the burst passes
            assert all(w > 0 for w in answers if w != 0.0)
    finally:
        await one.close()
        await two.close()
