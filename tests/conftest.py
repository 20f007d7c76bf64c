"""Fixtures shared by the whole suite."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from ssl import SSLContext
from typing import Any

import pytest

from fulcrum.build import stale_compiled_modules
from tests.proxy.harness import RunningProxy
from tests.support.certs import Pki
from tests.support.upstream import RefusingPort, UpstreamServer, refusing_port


def pytest_configure(config: pytest.Config) -> None:
    """Refuse to test a module compiled by mypyc (setup.py) that is older than its source: the tests
    would run yesterday's code."""
    for built, source in stale_compiled_modules():
        pytest.exit(f"{built.name} is older than {source.name}: rebuild with `make test` (or `pip install "
                    "-e .`), or delete the .so files to test the pure-Python modules", returncode=3)


@pytest.fixture
def make_proxy() -> Iterator[Callable[[dict[str, Any]], RunningProxy]]:
    """Start in-process proxies from config dicts (``make_proxy({...})``); all are stopped after the test."""
    started: list[RunningProxy] = []

    def make(config: dict[str, Any]) -> RunningProxy:
        proxy = RunningProxy(config).start()
        started.append(proxy)
        return proxy

    yield make
    for proxy in started:
        proxy.stop()


@pytest.fixture
def make_upstream() -> Iterator[Callable[..., UpstreamServer]]:
    """Start upstream servers on demand (``make_upstream(name="a")``, ``ssl=`` for TLS); all are stopped after the
    test."""
    started: list[UpstreamServer] = []

    def make(name: str | None = None, ssl: SSLContext | None = None) -> UpstreamServer:
        server = UpstreamServer(name=name, ssl=ssl).start()
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


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    """A throwaway CA whose certificates are written under the test's directory."""
    return Pki(tmp_path)
