"""Fixtures of the state-backend tests: a real redis-server for the session, and instances sharing it."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.admin.harness import RunningInstance, write_config
from tests.support.redisserver import RedisServer, find_redis_server

_prefixes = itertools.count()


@pytest.fixture(scope="session")
def redis_binary() -> str:
    """The redis-server program (installed with apt-get when missing); the test is skipped when there is none."""
    binary, why = find_redis_server()
    if binary is None:
        pytest.skip(f"needs a real Redis: {why}")
    return binary


@pytest.fixture(scope="session")
def redis_server(redis_binary: str) -> Iterator[RedisServer]:
    """One redis-server for the session (tests keep apart by key prefix), stopped at the end."""
    server = RedisServer(redis_binary).start()
    yield server
    server.close()


@pytest.fixture
def own_redis(redis_binary: str) -> Iterator[RedisServer]:
    """A redis-server of this test alone, for tests that stop and restart it."""
    server = RedisServer(redis_binary).start()
    yield server
    server.close()


@pytest.fixture
def prefix() -> str:
    """A key prefix no other test uses, so tests sharing the session's Redis never see each other's state."""
    return f"test{next(_prefixes)}"


def redis_state(server: RedisServer, prefix: str) -> dict[str, Any]:
    return {"backend": "redis", "url": server.url, "prefix": prefix}


@pytest.fixture
def make_instance(tmp_path: Path) -> Iterator[Callable[..., RunningInstance]]:
    """Start whole instances (proxy, control plane, admin listener) from config dicts; stopped after the test."""
    started: list[RunningInstance] = []

    def make(config: dict[str, Any]) -> RunningInstance:
        inst = RunningInstance(write_config(tmp_path / f"fulcrum{len(started)}.json", config)).start()
        started.append(inst)
        return inst

    yield make
    for inst in started:
        inst.stop()
