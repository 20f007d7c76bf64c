"""The immutable view of config and servers that the data plane reads, swapped whole on change."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fulcrum.config import Config
from fulcrum.gateway import Gateway, build_gateway
from fulcrum.routing import RouteTable
from fulcrum.state.group import Group
from fulcrum.state.server import Down, Server


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Routes, groups and the limits a request is served under, from one config."""

    config: Config
    routes: RouteTable
    gateway: Gateway
    groups: Mapping[str, Group]
    # flattened for the hot path
    max_request_line: int
    max_header_bytes: int
    max_body_bytes: int
    header_timeout: float
    keepalive_timeout: float
    expose_upstream: bool
    access_log: bool
    trusted_proxies: tuple[Any, ...]
    forward_style: str

    def close(self, keep: Gateway | None = None) -> None:
        """Release what this snapshot holds; ``keep`` is a gateway the next snapshot took over."""
        for group in self.groups.values():
            group.close()
        if self.gateway is not keep:
            self.gateway.close()


class ServerRegistry:
    """Runtime server state keyed by (group, server id), outliving snapshots and reloads."""

    def __init__(self) -> None:
        self._servers: dict[tuple[str, str], Server] = {}

    def get_or_create(self, group: str, url: str, weight: int, unchecked: bool = False) -> Server:
        """The server of ``group`` at ``url``; a new one is down until checked when ``unchecked`` is set."""
        fresh = Server(url, weight)
        key = (group, fresh.id)
        existing = self._servers.get(key)
        if existing is not None:
            existing.weight = weight
            return existing
        if unchecked:
            fresh.down = Down.ACTIVE_CHECK
        self._servers[key] = fresh
        return fresh

    def get(self, group: str, server_id: str) -> Server | None:
        return self._servers.get((group, server_id))

    def retain(self, keys: set[tuple[str, str]]) -> None:
        for key in list(self._servers):
            if key not in keys:
                del self._servers[key]


def build_snapshot(
    config: Config,
    registry: ServerRegistry,
    clock: Callable[[], float],
    source: str = "config",
    gateway: Gateway | None = None,
) -> Snapshot:
    """A snapshot for ``config``, reusing the runtime state of servers that were already known.

    Raises ``ConfigError`` when the routes cannot be built (a plugin that fails to load, a log file
    that cannot be opened), before any runtime state is touched. ``gateway``, when given, is the routes
    of a snapshot whose config had the same routes (a runtime change of servers): kept, not rebuilt.
    """
    if gateway is None:
        gateway = build_gateway(config, source)
    groups: dict[str, Group] = {}
    keep: set[tuple[str, str]] = set()
    for name, spec in config.upstreams.items():
        servers = []
        # a server new to this process takes no traffic before its first health check passes
        unchecked = spec.health_check is not None and spec.health_check.initial != "healthy"
        for s in spec.servers:
            server = registry.get_or_create(name, s.url, s.weight, unchecked)
            keep.add((name, server.id))
            servers.append(server)
        groups[name] = Group(name, spec, servers, clock)
    registry.retain(keep)
    limits = config.limits
    return Snapshot(
        config=config,
        routes=gateway.table,
        gateway=gateway,
        groups=groups,
        max_request_line=limits.max_request_line,
        max_header_bytes=limits.max_header_bytes,
        max_body_bytes=limits.max_body_bytes,
        header_timeout=limits.header_timeout,
        keepalive_timeout=limits.keepalive_timeout,
        expose_upstream=config.expose_upstream,
        access_log=config.access_log,
        trusted_proxies=tuple(config.forwarding.trusted_proxies),
        forward_style=config.forwarding.style,
    )
