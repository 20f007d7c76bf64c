"""What every connection of one proxy process shares: the loop, the snapshot, pools, timers, counters."""

from __future__ import annotations

import asyncio
import sys
import time
from typing import TYPE_CHECKING, Final, Protocol, TextIO

from fulcrum.http.headers import RequestIds
from fulcrum.proxy.upstream import Pool

if TYPE_CHECKING:
    from fulcrum.proxy.downstream import ParserRelay
    from fulcrum.state.group import Group
    from fulcrum.state.server import Server
    from fulcrum.state.snapshot import Snapshot


class Timed(Protocol):
    """A connection with a deadline (0 = none); the sweeper calls ``on_timeout`` once it has passed."""

    deadline: float

    def on_timeout(self, now: float) -> None: ...


class Stats:
    """Process-wide counters (the metrics endpoint reads these later)."""

    __slots__ = (
        "connections_active",
        "connections_total",
        "requests_total",
        "responses_5xx",
        "retries_total",
        "tunnels_active",
        "tunnels_total",
    )

    def __init__(self) -> None:
        self.connections_active = 0
        self.connections_total = 0
        self.requests_total = 0
        self.responses_5xx = 0
        self.retries_total = 0
        self.tunnels_active = 0  # upgraded connections (WebSocket and others) open now
        self.tunnels_total = 0


#: Upper bounds (seconds) of the request duration histogram's buckets; one more bucket holds the rest.
#: (Typed as a variable-length tuple: mypyc would otherwise keep it unboxed and box it again on every use.)
DURATION_BOUNDS: Final[tuple[float, ...]] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0
)


class RouteCounters:
    """Requests of one route and upstream: count per status code and a duration histogram.

    Kept by ``Metrics`` across snapshots, so a reload does not reset what Prometheus has seen.
    ``buckets[i]`` counts durations in (DURATION_BOUNDS[i-1], DURATION_BOUNDS[i]]; the scrape adds them up.
    """

    __slots__ = ("buckets", "codes", "route", "seconds", "upstream")

    def __init__(self, route: str, upstream: str) -> None:
        self.route = route
        self.upstream = upstream
        self.codes: dict[int, int] = {}
        self.buckets = [0] * (len(DURATION_BOUNDS) + 1)
        self.seconds = 0.0

    def record(self, status: int, seconds: float) -> None:
        codes = self.codes
        codes[status] = codes.get(status, 0) + 1
        i = 0  # most requests end in the first few buckets: a short native loop beats a call to bisect
        for bound in DURATION_BOUNDS:
            if seconds <= bound:
                break
            i += 1
        self.buckets[i] += 1
        self.seconds += seconds


class Metrics:
    """Counters per route and per group that outlive snapshots; ``by_route`` is what the hot path reads."""

    __slots__ = ("bounds", "by_route", "kept", "retries")

    def __init__(self) -> None:
        self.bounds = DURATION_BOUNDS
        self.kept: dict[tuple[str, str], RouteCounters] = {}
        self.by_route: dict[str, RouteCounters] = {}
        self.retries: dict[str, int] = {}
        self.use([])

    def use(self, routes: list[tuple[str, str]]) -> None:
        """Point the hot path at the counters of these (route, upstream) pairs, and of requests no route took."""
        by_route: dict[str, RouteCounters] = {}
        for name, upstream in [("-", "-"), *routes]:
            counters = self.kept.get((name, upstream))
            if counters is None:
                counters = self.kept[(name, upstream)] = RouteCounters(name, upstream)
            by_route[name] = counters
        self.by_route = by_route


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
        self.metrics = Metrics()
        self.now = loop.time()
        self.timed: set[Timed] = set()
        self.clients: set[object] = set()
        self.pools: dict[Server, Pool] = {}  # a Server belongs to one group, so it keys its pool
        self.access_log = AccessLog()
        self.draining = False
        self.started_wall = time.time()
        self.connect_tasks: set[asyncio.Task[None]] = set()
        self.relay: ParserRelay | None = None  # the client side's pooled parsers (made by the first connection)
        #: Forwarding header blocks made before, by (style, client address, scheme, host): Exchange._upstream_head.
        self.forward_blocks: dict[tuple[str, bytes, bytes, bytes], bytes] = {}

    def new_pool(self, group: Group, server: Server) -> Pool:
        pool = self.pools[server] = Pool(self, server)
        pool.configure(group.spec, self.snapshot.max_header_bytes, group.tls)
        return pool

    def apply_snapshot(self, snapshot: Snapshot) -> None:
        """Swap in a new snapshot; pools of servers that left are closed, the others reconfigured."""
        old = self.snapshot
        self.metrics.use([(r.name, r.upstream or "-") for r in snapshot.routes.routes])
        self.snapshot = snapshot
        live = {s: g for g in snapshot.groups.values() for s in g.servers}
        for server, pool in list(self.pools.items()):
            group = live.get(server)
            if group is None:
                pool.close()
                del self.pools[server]
            else:
                pool.configure(group.spec, snapshot.max_header_bytes, group.tls)
        if old is not snapshot:
            old.close(keep=snapshot.gateway)

    def sweep(self) -> None:
        """Fire every passed deadline; called on a short periodic tick."""
        now = self.now = self.loop.time()
        for item in [t for t in self.timed if t.deadline and t.deadline <= now]:
            if item.deadline and item.deadline <= now:
                item.on_timeout(now)
        self.access_log.flush()
        if self.snapshot.gateway.writers:
            self.snapshot.gateway.flush()
