"""The JSON shapes of the admin API (DESIGN 4, "Admin API"), made from the running snapshot and counters."""

from __future__ import annotations

import asyncio
import os
import resource
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from fulcrum import __version__
from fulcrum.state.changes import State
from fulcrum.state.group import Group
from fulcrum.state.server import Down, Server
from fulcrum.state.snapshot import Snapshot
from fulcrum.state.tcp import TcpGroup, TcpServer

#: Why a server is not eligible, by flag, as the API names it.
DOWN_REASONS = (
    (Down.ACTIVE_CHECK, "active_check"),
    (Down.PASSIVE, "passive"),
    (Down.BREAKER, "breaker"),
    (Down.DRAINING, "draining"),
    (Down.DISABLED, "disabled"),
)


class Stats(Protocol):
    """The process-wide counters the data plane keeps."""

    connections_active: int
    connections_total: int
    requests_total: int
    responses_5xx: int
    retries_total: int
    tunnels_active: int
    tunnels_total: int


def down_reasons(server: Server | TcpServer) -> list[str]:
    return [name for flag, name in DOWN_REASONS if server.down & flag]


def server_view(server: Server, state: State, discovered: bool = False) -> dict[str, Any]:
    """One server as the API shows it (``ServerOut`` in ``fulcrum.admin.app``)."""
    return {
        "id": server.id,
        "url": server.url,
        "weight": server.weight,
        "state": state,
        "discovered": discovered,
        "healthy": server.healthy,
        "eligible": server.eligible,
        "down": down_reasons(server),
        "active": server.active,
        "requests": server.requests,
        "errors": server.errors,
        **recent_view(server),
    }


def loop_now() -> float:
    """The data plane's clock (the running loop's time; the same monotonic clock outside a loop)."""
    try:
        return asyncio.get_running_loop().time()
    except RuntimeError:
        return time.monotonic()


def recent_view(server: Server) -> dict[str, Any]:
    """The server's last minute: latency percentiles, bytes per second, connection reuse."""
    requests, p50, p99, rate, share = server.recent.summary(loop_now())
    return {
        "recent_requests": requests,
        "p50_ms": None if p50 is None else round(p50, 3),
        "p99_ms": None if p99 is None else round(p99, 3),
        "bytes_per_s": round(rate, 1),
        "new_connection_share": None if share is None else round(share, 4),
    }


#: The ids of a group's servers found by DNS discovery (``Control.discovered_ids``).
DiscoveredOf = Callable[[str], frozenset[str]]


def _none_discovered(group: str) -> frozenset[str]:
    return frozenset()


def group_view(group: Group, state_of: Callable[[str, Server], State],
               discovered_of: DiscoveredOf = _none_discovered) -> dict[str, Any]:
    source = getattr(group.spec, "servers_from", None)
    found = discovered_of(group.name) if source is not None else frozenset()
    return {
        "name": group.name,
        "balance": group.policy,
        "servers_from": source.describe() if source is not None else None,
        "servers": [server_view(s, state_of(group.name, s), s.id in found) for s in group.servers],
    }


def upstreams_view(snapshot: Snapshot, state_of: Callable[[str, Server], State],
                   discovered_of: DiscoveredOf = _none_discovered) -> list[dict[str, Any]]:
    return [group_view(g, state_of, discovered_of) for g in snapshot.groups.values()]


def tcp_server_view(server: TcpServer) -> dict[str, Any]:
    """One server of a TCP service (``TcpServerOut`` in ``fulcrum.admin.app``)."""
    return {
        "id": server.id,
        "weight": server.weight,
        "healthy": server.healthy,
        "eligible": server.eligible,
        "down": down_reasons(server),
        "active": server.active,
        "connections": server.connections,
        "connect_failures": server.connect_failures,
        "bytes_to_server": server.bytes_to_server,
        "bytes_to_client": server.bytes_to_client,
    }


def tcp_services_view(groups: Mapping[str, TcpGroup]) -> list[dict[str, Any]]:
    """Every TCP service: its address, policy, client connections and servers."""
    return [
        {
            "name": name,
            "listen": group.listen,
            "balance": group.spec.balance,
            "connections_active": group.counters.active,
            "connections_total": group.counters.total,
            "unserved": group.counters.unserved,
            "servers": [tcp_server_view(s) for s in group.servers],
        }
        for name, group in groups.items()
    ]


def memory_bytes() -> int:
    """Resident memory of this process (peak resident memory where /proc is missing)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def status_view(
    snapshot: Snapshot,
    stats: Stats,
    started: float,
    state_of: Callable[[str, Server], State],
    workers: int = 1,
    tcp: Mapping[str, TcpGroup] | None = None,
    discovered_of: DiscoveredOf = _none_discovered,
) -> dict[str, Any]:
    """Totals and every group: the shape of ``GET /api/v1/status``."""
    total = stats.requests_total
    return {
        "version": __version__,
        "uptime_s": round(time.time() - started, 3),
        "requests_total": total,
        "success_rate": 1.0 - stats.responses_5xx / total if total else 1.0,
        "responses_5xx": stats.responses_5xx,
        "retries_total": stats.retries_total,
        "connections_active": stats.connections_active,
        "connections_total": stats.connections_total,
        "tunnels_active": stats.tunnels_active,
        "tunnels_total": stats.tunnels_total,
        "memory_bytes": memory_bytes(),
        "workers": workers,
        "upstreams": upstreams_view(snapshot, state_of, discovered_of),
        "tcp_services": tcp_services_view(tcp or {}),
    }
