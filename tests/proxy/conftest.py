"""Fixtures for data-plane tests: real upstream servers and an in-process proxy in front of them."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.proxy.harness import RunningProxy, upstream_config
from tests.support.upstream import UpstreamServer


@pytest.fixture
def upstreams() -> Iterator[list[UpstreamServer]]:
    servers = [UpstreamServer(name=f"u{i}") for i in range(1, 4)]
    for s in servers:
        s.start()
    yield servers
    for s in servers:
        s.stop()


@pytest.fixture
def upstream(upstreams: list[UpstreamServer]) -> UpstreamServer:
    return upstreams[0]


@pytest.fixture
def proxy(make_proxy: Callable[..., RunningProxy], upstream: UpstreamServer) -> RunningProxy:
    """One upstream behind a proxy with short timeouts (so fault tests stay fast)."""
    return make_proxy(
        upstream_config(upstream.url, timeouts={"connect": "1s", "read": "1s"})
        | {"limits": {"header_timeout": "1s", "keepalive_timeout": "2s"}}
    )
