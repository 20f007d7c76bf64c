"""Fixtures for the TCP (L4) service tests: real TCP servers and a proxy with TCP services in front of them."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.admin.harness import RunningInstance, write_config
from tests.proxy.harness import RunningProxy
from tests.support.tcpserver import Mode, TcpServer

#: Every proxy in these tests has an HTTP side too (the schema wants an upstream group); nothing is sent to it.
HTTP_SIDE: dict[str, Any] = {"upstreams": {"web": {"servers": ["http://127.0.0.1:9"]}}}


@pytest.fixture
def make_tcp_server() -> Iterator[Callable[..., TcpServer]]:
    """Start TCP servers on demand (``make_tcp_server("a", mode="greet")``); all are stopped after the test."""
    started: list[TcpServer] = []

    def make(name: str = "tcp", mode: Mode = "echo", flood_bytes: int = 0) -> TcpServer:
        server = TcpServer(name, mode, flood_bytes).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


def tcp_config(services: dict[str, dict[str, Any]], **top: Any) -> dict[str, Any]:
    """A proxy config with these TCP services, each listening on an ephemeral loopback port unless given."""
    return {**HTTP_SIDE, **top,
            "tcp_services": {name: {"listen": "127.0.0.1:0", **spec} for name, spec in services.items()}}


def tcp_port(proxy: RunningProxy, service: str) -> int:
    assert proxy.server is not None
    return proxy.call(lambda: proxy.server.tcp.ports[service])  # type: ignore[union-attr]


def connect(port: int, source: str | None = None, timeout: float = 5) -> socket.socket:
    """A client connection to 127.0.0.1:port (from the loopback address ``source`` when given)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                    source_address=(source, 0) if source else None)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_line(sock: socket.socket) -> bytes:
    """Bytes up to and including the next newline (raises at end of input before one)."""
    out = bytearray()
    while not out.endswith(b"\n"):
        data = sock.recv(1)
        if not data:
            raise ConnectionError(f"end of input after {bytes(out)!r}")
        out += data
    return bytes(out)


def read_all(sock: socket.socket) -> bytes:
    """Everything up to the end of input."""
    out = bytearray()
    while data := sock.recv(65536):
        out += data
    return bytes(out)


def closed_by_peer(sock: socket.socket) -> bool:
    """Whether the peer has closed (end of input or reset), waiting up to the socket's timeout."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


@pytest.fixture
def make_instance(tmp_path: Path) -> Iterator[Callable[..., RunningInstance]]:
    """Whole instances (proxy, control plane, admin listener) from config dicts written to a file."""
    started: list[RunningInstance] = []

    def make(config: dict[str, Any]) -> RunningInstance:
        inst = RunningInstance(write_config(tmp_path / "fulcrum.json", config)).start()
        started.append(inst)
        return inst

    yield make
    for inst in started:
        inst.stop()
