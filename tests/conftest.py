"""Fixtures shared by the whole suite."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.support.upstream import RefusingPort, UpstreamServer, refusing_port


@pytest.fixture
def make_upstream() -> Iterator[Callable[..., UpstreamServer]]:
    """Start upstream servers on demand (``make_upstream(name="a")``); all are stopped after the test."""
    started: list[UpstreamServer] = []

    def make(name: str | None = None) -> UpstreamServer:
        server = UpstreamServer(name=name).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def upstream_server(make_upstream: Callable[..., UpstreamServer]) -> UpstreamServer:
    """One started upstream server named "up"."""
    return make_upstream(name="up")


@pytest.fixture
def dead_port() -> Iterator[RefusingPort]:
    """A port on 127.0.0.1 that refuses connections for the whole test."""
    with refusing_port() as port:
        yield port
