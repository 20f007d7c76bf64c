"""Fixtures of the DNS discovery tests: a DNS server on 127.0.0.1, upstreams sharing a port, whole instances."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.admin.harness import RunningInstance, write_config
from tests.support.dnsserver import DnsServer
from tests.support.upstream import UpstreamServer


@pytest.fixture
def dns() -> Iterator[DnsServer]:
    """A started DNS server with an empty zone (every name NXDOMAIN until the test adds it)."""
    server = DnsServer().start()
    yield server
    server.stop()


@pytest.fixture
def make_instance(tmp_path: Path) -> Iterator[Callable[..., RunningInstance]]:
    """Whole instances (proxy, control plane with discovery, admin API) from config dicts; stopped after the test."""
    started: list[RunningInstance] = []

    def make(config: dict[str, Any], name: str = "fulcrum.json") -> RunningInstance:
        inst = RunningInstance(write_config(tmp_path / name, config)).start()
        started.append(inst)
        return inst

    yield make
    for inst in started:
        inst.stop()


@pytest.fixture
def same_port_upstreams() -> Iterator[Callable[[int], list[UpstreamServer]]]:
    """``make(n)``: n upstreams on 127.0.0.2, 127.0.0.3, ... all on one port, as the servers behind A records are."""
    started: list[UpstreamServer] = []

    def make(n: int) -> list[UpstreamServer]:
        for _ in range(5):  # the port the first one got may be taken on another loopback address: try another
            group = [UpstreamServer(name="up-2", host="127.0.0.2").start()]
            port = group[0].port
            try:
                for i in range(3, n + 2):
                    group.append(UpstreamServer(name=f"up-{i}", host=f"127.0.0.{i}", port=port).start())
            except OSError:
                for server in group:
                    server.stop()
                continue
            started.extend(group)
            return group
        raise RuntimeError("no port free on every loopback address")

    yield make
    for server in started:
        server.stop()
