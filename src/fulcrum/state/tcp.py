"""Runtime state of TCP services: their servers (health, connections, bytes) and the policy that picks one.

A TCP server is kept apart from the HTTP ``Server``: it has an address, not a URL, and none of the
per-request state (status codes, response times, the last minute's histogram) an HTTP server
carries; and the admin API's groups, runtime changes and explain stay about HTTP upstreams. Like
``Server`` it uses the ``Down`` flags (one per cause) and satisfies the balancing ``Member``
protocol, so the same pure policies pick among TCP servers. State is keyed by (service, address)
in ``TcpRegistry`` and outlives reloads.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from fulcrum.balancing import make_balancer
from fulcrum.balancing.base import Balancer, PickContext
from fulcrum.config.tcp import TcpService
from fulcrum.state.server import Down


class TcpServer:
    """One server of a TCP service.

    ``active`` counts connections open through this process (a connect in progress counts, so
    ``least_conn`` sees it), ``connections`` those established since start, ``connect_failures``
    the connects that were refused or timed out; bytes are counted both ways.
    """

    __slots__ = (
        "_listeners",
        "active",
        "bytes_to_client",
        "bytes_to_server",
        "connect_failures",
        "connections",
        "down",
        "ewma_at",
        "ewma_ms",
        "host",
        "id",
        "port",
        "up_since",
        "weight",
    )

    def __init__(self, address: str, host: str, port: int, weight: int = 1) -> None:
        self.id = address
        self.host = host
        self.port = port
        self.weight = weight
        self.down = Down.NONE
        self.active = 0
        self.connections = 0
        self.connect_failures = 0
        self.bytes_to_server = 0
        self.bytes_to_client = 0
        self.ewma_ms = 0.0  # not measured for TCP: policies that read it are not offered
        self.ewma_at = 0.0
        self.up_since = 0.0
        self._listeners: list[Callable[[TcpServer], None]] = []

    @property
    def healthy(self) -> bool:
        return not self.down & Down.ACTIVE_CHECK

    @property
    def eligible(self) -> bool:
        return self.down == Down.NONE

    def set_down(self, flag: Down, on: bool) -> None:
        """Set or clear one cause; listeners hear of a change."""
        new = self.down | flag if on else self.down & ~flag
        if new != self.down:
            self.down = new
            for listener in self._listeners:
                listener(self)

    def subscribe(self, listener: Callable[[TcpServer], None]) -> None:
        self._listeners.append(listener)

    def unsubscribe(self, listener: Callable[[TcpServer], None]) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def __repr__(self) -> str:
        return f"TcpServer({self.id}, weight={self.weight}, down={self.down!r}, active={self.active})"


class TcpCounters:
    """Client connections of one service: open, accepted, and closed unserved (no server could be reached)."""

    __slots__ = ("active", "total", "unserved")

    def __init__(self) -> None:
        self.active = 0
        self.total = 0
        self.unserved = 0


class TcpGroup:
    """One TCP service as a config describes it, over the runtime state of its servers.

    ``eligible`` and ``balancer`` are rebuilt (never mutated) when a server's eligibility changes,
    as ``fulcrum.state.group.Group`` does for HTTP upstreams.
    """

    __slots__ = ("balancer", "clock", "counters", "eligible", "listen", "name", "servers", "spec")

    def __init__(
        self,
        name: str,
        spec: TcpService,
        servers: Sequence[TcpServer],
        counters: TcpCounters,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.spec = spec
        self.servers = tuple(servers)
        self.counters = counters
        self.clock = clock
        self.listen = str(spec.listen)  # the address bound (the real port when the config says 0)
        self.eligible: tuple[TcpServer, ...] = ()
        self.balancer: Balancer[TcpServer] = make_balancer(spec.balance, ())
        for server in self.servers:
            server.subscribe(self._on_server_change)
        self.refresh()

    def refresh(self) -> None:
        eligible = tuple(s for s in self.servers if s.eligible)
        self.balancer = make_balancer(self.spec.balance, eligible, clock=self.clock)
        self.eligible = eligible

    def pick(self, client_ip: str, tried: frozenset[str]) -> TcpServer | None:
        """The server for a new connection from ``client_ip``, never one of ``tried``."""
        return self.balancer.pick(PickContext(client_ip=client_ip, exclude=tried), self.eligible)

    def _on_server_change(self, server: TcpServer) -> None:
        if server.eligible:
            server.up_since = self.clock()
        self.refresh()

    def close(self) -> None:
        """Stop listening to servers (a reload replaced this group)."""
        for server in self.servers:
            server.unsubscribe(self._on_server_change)


class TcpRegistry:
    """Server state and counters of TCP services, keyed by service and server address, outliving reloads."""

    def __init__(self) -> None:
        self._servers: dict[tuple[str, str], TcpServer] = {}
        self._counters: dict[str, TcpCounters] = {}

    def build(self, services: dict[str, TcpService], clock: Callable[[], float]) -> dict[str, TcpGroup]:
        """Groups for ``services``, reusing the state of servers already known; forgets the others.

        A server new to this process is down until its first health check passes (``initial: healthy``
        or no health check: up at once).
        """
        groups: dict[str, TcpGroup] = {}
        keep: set[tuple[str, str]] = set()
        for name, spec in services.items():
            unchecked = spec.health_check is not None and spec.health_check.initial != "healthy"
            servers = []
            for s in spec.servers:
                key = (name, s.address)
                server = self._servers.get(key)
                if server is None:
                    server = self._servers[key] = TcpServer(s.address, s.host, s.port, s.weight)
                    if unchecked:
                        server.down = Down.ACTIVE_CHECK
                server.weight = s.weight
                keep.add(key)
                servers.append(server)
            counters = self._counters.setdefault(name, TcpCounters())
            groups[name] = TcpGroup(name, spec, servers, counters, clock)
        for key in [k for k in self._servers if k not in keep]:
            del self._servers[key]
        for name in [n for n in self._counters if n not in services]:
            del self._counters[name]
        return groups
