"""Fixtures shared by the whole suite."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import fulcrum.proxy
from tests.support.upstream import RefusingPort, UpstreamServer, refusing_port

#: Modules that setup.py compiles with mypyc (in fulcrum.proxy).
COMPILED_MODULES = ("downstream", "exchange", "upstream")


def pytest_configure(config: pytest.Config) -> None:
    """Refuse to test a compiled module older than its source: the tests would run yesterday's code."""
    package = Path(fulcrum.proxy.__file__).parent
    for name in COMPILED_MODULES:
        source = package / f"{name}.py"
        for built in package.glob(f"{name}.*.so"):  # imported in preference to the .py beside it
            if source.stat().st_mtime > built.stat().st_mtime:
                pytest.exit(f"{built.name} is older than {source.name}: rebuild with `make test` (or `pip install "
                            "-e .`), or delete the .so files to test the pure-Python modules", returncode=3)


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
