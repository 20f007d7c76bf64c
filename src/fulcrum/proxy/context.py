"""What every connection of one proxy process shares: the loop, the snapshot, pools, timers, counters."""

from __future__ import annotations

import asyncio
import sys
import time
from typing import TYPE_CHECKING, Protocol, TextIO

from fulcrum.http.headers import RequestIds
from fulcrum.proxy.upstream import Pool

if TYPE_CHECKING:
    from fulcrum.state.group import Group
    from fulcrum.state.server import Server
    from fulcrum.state.snapshot import Snapshot


class Timed(Protocol):
    """A connection with a deadline (0 = none); the sweeper calls ``on_timeout`` once it has passed."""

    deadline: float

    def on_timeout(self, now: float) -> None: ...


class Stats:
    """Process-wide counters (the metrics endpoint reads these later)."""

    __slots__ = ("connections_active", "connections_total", "requests_total", "responses_5xx", "retries_total")

    def __init__(self) -> None:
        self.connections_active = 0
        self.connections_total = 0
        self.requests_total = 0
        self.responses_5xx = 0
        self.retries_total = 0


class AccessLog:
    """One line per request, buffered in memory and written on the sweeper's tick, off the hot path."""

    __slots__ = ("_lines", "_out")

    def __init__(self, out: TextIO | None = None) -> None:
        self._lines: list[str] = []
        self._out = out if out is not None else sys.stdout

    def write(self, line: str) -> None:
        self._lines.append(line)

    def flush(self) -> None:
        if self._lines:
            lines, self._lines = self._lines, []
            out = self._out
            out.write("\n".join(lines) + "\n")
            out.flush()


class ProxyContext:
    """Shared state of one proxy process's data plane."""

    def __init__(self, loop: asyncio.AbstractEventLoop, snapshot: Snapshot) -> None:
        self.loop = loop
        self.snapshot = snapshot
        self.ids = RequestIds()
        self.stats = Stats()
        self.now = loop.time()
        self.timed: set[Timed] = set()
        self.clients: set[object] = set()
        self.pools: dict[Server, Pool] = {}  # a Server belongs to one group, so it keys its pool
        self.access_log = AccessLog()
        self.draining = False
        self.timing = False  # measure request durations (access log, latency-aware policies)
        self.started_wall = time.time()
        self.connect_tasks: set[asyncio.Task[None]] = set()

    def new_pool(self, group: Group, server: Server) -> Pool:
        pool = self.pools[server] = Pool(self, server)
        pool.configure(group.spec, self.snapshot.max_header_bytes)
        return pool

    def apply_snapshot(self, snapshot: Snapshot) -> None:
        """Swap in a new snapshot; pools of servers that left are closed, the others reconfigured."""
        old = self.snapshot
        self.snapshot = snapshot
        live = {s: g for g in snapshot.groups.values() for s in g.servers}
        for server, pool in list(self.pools.items()):
            group = live.get(server)
            if group is None:
                pool.close()
                del self.pools[server]
            else:
                pool.configure(group.spec, snapshot.max_header_bytes)
        if old is not snapshot:
            old.close()

    def sweep(self) -> None:
        """Fire every passed deadline; called on a short periodic tick."""
        now = self.now = self.loop.time()
        for item in [t for t in self.timed if t.deadline and t.deadline <= now]:
            if item.deadline and item.deadline <= now:
                item.on_timeout(now)
        self.access_log.flush()
        if self.snapshot.gateway.writers:
            self.snapshot.gateway.flush()
