"""What every connection of one proxy process shares: the loop, the snapshot, pools, timers, counters."""

from __future__ import annotations

import asyncio
import sys
import time
from typing import TYPE_CHECKING, Protocol

from fulcrum.http.headers import RequestIds
from fulcrum.proxy.upstream import Pool

if TYPE_CHECKING:
    from fulcrum.state.server import Server
    from fulcrum.state.snapshot import Snapshot


class Timed(Protocol):
    """A connection with a deadline (0 = none); the sweeper calls ``on_timeout`` once it has passed."""

    deadline: float

    def on_timeout(self, now: float) -> None: ...


class Stats:
    """Process-wide counters (the metrics endpoint reads these later)."""

    __slots__ = ("connections_active", "connections_total", "requests_total", "responses_5xx")

    def __init__(self) -> None:
        self.connections_active = 0
        self.connections_total = 0
        self.requests_total = 0
        self.responses_5xx = 0


class AccessLog:
    """One line per request, buffered in memory and written on the sweeper's tick, off the hot path."""

    __slots__ = ("_lines", "_out")

    def __init__(self, out: object = None) -> None:
        self._lines: list[str] = []
        self._out = out if out is not None else sys.stdout

    def write(self, line: str) -> None:
        self._lines.append(line)

    def flush(self) -> None:
        if self._lines:
            lines, self._lines = self._lines, []
            out = self._out
            out.write("\n".join(lines) + "\n")  # type: ignore[attr-defined]
            out.flush()  # type: ignore[attr-defined]


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
        self.pools: dict[tuple[str, str], Pool] = {}
        self.access_log = AccessLog()
        self.draining = False
        self.timing = False  # measure request durations (access log, latency-aware policies)
        self.started_wall = time.time()
        self.connect_tasks: set[asyncio.Task[None]] = set()

    def pool_for(self, group: str, server: Server) -> Pool:
        key = (group, server.id)
        pool = self.pools.get(key)
        if pool is None:
            pool = Pool(self, server)
            spec = self.snapshot.groups[group].spec
            pool.configure(spec, self.snapshot.max_header_bytes)
            self.pools[key] = pool
        return pool

    def apply_snapshot(self, snapshot: Snapshot) -> None:
        """Swap in a new snapshot; pools of servers that left are closed, the others reconfigured."""
        old = self.snapshot
        self.snapshot = snapshot
        live = {(g.name, s.id) for g in snapshot.groups.values() for s in g.servers}
        for key, pool in list(self.pools.items()):
            if key not in live:
                pool.close()
                del self.pools[key]
            else:
                pool.configure(snapshot.groups[key[0]].spec, snapshot.max_header_bytes)
        if old is not snapshot:
            old.close()

    def sweep(self) -> None:
        """Fire every passed deadline; called on a short periodic tick."""
        now = self.now = self.loop.time()
        for item in [t for t in self.timed if t.deadline and t.deadline <= now]:
            if item.deadline and item.deadline <= now:
                item.on_timeout(now)
        self.access_log.flush()
