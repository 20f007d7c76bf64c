"""Counters across worker processes: what a worker reports, and the totals the main process shows.

Each worker sends a report of its own counters (``report``) every ``REPORT_INTERVAL``; the main
process keeps the last one of each worker and writes the sums into its own ``Stats``, ``Metrics`` and
servers (``Tally.apply``), where the admin API and ``/metrics`` read them as they would in one process.
A server's passive-ejection and breaker flags there are set while any worker has them set.

Counters must never go back: when a worker dies, its last report's counts are kept as "retired" and
added to every later total (gauges, such as requests in flight, are not: they died with it). What a
worker counted after its last report is lost with it.
"""

from __future__ import annotations

from typing import Any

from fulcrum.admin.views import DOWN_REASONS, memory_bytes
from fulcrum.proxy.context import Metrics, RouteCounters, Stats
from fulcrum.proxy.server import ProxyServer
from fulcrum.state.server import RECENT_BUCKETS, Down, Recent, Server
from fulcrum.state.snapshot import Snapshot

#: Seconds between two reports of a worker (the admin API's figures are at most this old).
REPORT_INTERVAL = 0.5
#: Stats fields that only grow, and those that go up and down.
COUNTERS = ("connections_total", "requests_total", "responses_5xx", "retries_total", "tunnels_total")
GAUGES = ("connections_active", "tunnels_active")
#: Server flags a worker sets itself (the main process sets the others and sends them).
WORKER_FLAGS = Down.PASSIVE | Down.BREAKER
MAIN_FLAGS = Down.ACTIVE_CHECK | Down.DRAINING | Down.DISABLED

Report = dict[str, Any]
ServerKey = tuple[str, str]


# -- in a worker --------------------------------------------------------------------


def _recent(recent: Recent) -> list[Any]:
    slots = [[slot.tick, slot.requests, slot.bytes, slot.connects, [[j, n] for j, n in enumerate(slot.hist) if n]]
             for slot in recent.slots if slot.tick >= 0]
    return [recent.since, slots]


def report(server: ProxyServer) -> Report:
    """One worker's counters as plain data: totals, per route, per group and per server."""
    ctx = server.ctx
    stats = ctx.stats
    servers = []
    for name, group in server.snapshot.groups.items():
        for s in group.servers:
            servers.append([name, s.id, s.active, s.requests, s.errors, {str(k): v for k, v in s.codes.items()},
                            int(s.down), _recent(s.recent)])
    return {
        "stats": {field: getattr(stats, field) for field in (*COUNTERS, *GAUGES)},
        "routes": [[c.route, c.upstream, {str(k): v for k, v in c.codes.items()}, list(c.buckets), c.seconds]
                   for c in ctx.metrics.kept.values()],
        "retries": dict(ctx.metrics.retries),
        "servers": servers,
        "health_checks": len(server.checkers),
        "memory_bytes": memory_bytes(),
    }


def down_map(report: Report) -> dict[str, list[str]]:
    """The servers a worker does not send to, as ``{"group/server": [reasons]}`` (from its report)."""
    out: dict[str, list[str]] = {}
    for name, sid, *_, down, _recent_data in report.get("servers", ()):
        if down:
            out[f"{name}/{sid}"] = [reason for flag, reason in DOWN_REASONS if down & flag]
    return out


# -- in the main process ---------------------------------------------------------------


class Retired:
    """The counts of workers that died, kept so that totals never go back."""

    def __init__(self) -> None:
        self.stats: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self.routes: dict[tuple[str, str], tuple[dict[int, int], list[int], float]] = {}
        self.retries: dict[str, int] = {}
        self.servers: dict[ServerKey, tuple[int, int, dict[int, int]]] = {}

    def add(self, report: Report) -> None:
        for field in COUNTERS:
            self.stats[field] += int(report["stats"].get(field, 0))
        for route, upstream, codes, buckets, seconds in report["routes"]:
            old_codes, old_buckets, old_seconds = self.routes.get((route, upstream), ({}, [0] * len(buckets), 0.0))
            merged = dict(old_codes)
            for code, n in codes.items():
                merged[int(code)] = merged.get(int(code), 0) + n
            self.routes[(route, upstream)] = (merged, [a + b for a, b in zip(old_buckets, buckets, strict=True)],
                                              old_seconds + seconds)
        for name, n in report["retries"].items():
            self.retries[name] = self.retries.get(name, 0) + n
        for name, sid, _active, requests, errors, codes, _down, _recent_data in report["servers"]:
            old_requests, old_errors, old_codes = self.servers.get((name, sid), (0, 0, {}))
            merged = dict(old_codes)
            for code, n in codes.items():
                merged[int(code)] = merged.get(int(code), 0) + n
            self.servers[(name, sid)] = (old_requests + requests, old_errors + errors, merged)


class Tally:
    """The last report of every live worker and the retired counts; ``apply`` writes the totals."""

    def __init__(self) -> None:
        self.live: dict[int, Report] = {}
        self.retired = Retired()

    def update(self, slot: int, report: Report) -> None:
        self.live[slot] = report

    def retire(self, slot: int) -> None:
        """Worker ``slot`` died: its last counts become retired ones."""
        last = self.live.pop(slot, None)
        if last is not None:
            self.retired.add(last)

    def apply(self, stats: Stats, metrics: Metrics, snapshot: Snapshot) -> None:
        """Write the totals into the main process's counters and the servers of its snapshot."""
        reports = list(self.live.values())
        retired = self.retired
        for field in COUNTERS:
            setattr(stats, field, retired.stats[field] + sum(int(r["stats"].get(field, 0)) for r in reports))
        for field in GAUGES:
            setattr(stats, field, sum(int(r["stats"].get(field, 0)) for r in reports))
        self._routes(metrics, reports)
        retries = dict(retired.retries)
        for r in reports:
            for name, n in r["retries"].items():
                retries[name] = retries.get(name, 0) + n
        metrics.retries.clear()
        metrics.retries.update(retries)
        self._servers(snapshot, reports)

    def _routes(self, metrics: Metrics, reports: list[Report]) -> None:
        totals: dict[tuple[str, str], tuple[dict[int, int], list[int], float]] = {
            key: (dict(codes), list(buckets), seconds)
            for key, (codes, buckets, seconds) in self.retired.routes.items()}
        for r in reports:
            for route, upstream, codes, buckets, seconds in r["routes"]:
                key = (route, upstream)
                total = totals.get(key)
                if total is None:
                    total = totals[key] = ({}, [0] * len(buckets), 0.0)
                merged, sums, spent = total
                for code, n in codes.items():
                    merged[int(code)] = merged.get(int(code), 0) + n
                totals[key] = (merged, [a + b for a, b in zip(sums, buckets, strict=True)], spent + seconds)
        for key, (codes, buckets, seconds) in totals.items():
            counters = metrics.kept.get(key)
            if counters is None:
                counters = metrics.kept[key] = RouteCounters(*key)
            counters.codes = codes
            counters.buckets = buckets
            counters.seconds = seconds

    def _servers(self, snapshot: Snapshot, reports: list[Report]) -> None:
        rows: dict[ServerKey, list[list[Any]]] = {}
        for r in reports:
            for row in r["servers"]:
                rows.setdefault((row[0], row[1]), []).append(row)
        for name, group in snapshot.groups.items():
            for server in group.servers:
                key = (name, server.id)
                requests, errors, codes = self.retired.servers.get(key, (0, 0, {}))
                merged = dict(codes)
                active = 0
                recents = []
                down = 0
                for _, _, a, n, e, by_code, flags, recent_data in rows.get(key, ()):
                    down |= flags
                    active += a
                    requests += n
                    errors += e
                    for code, count in by_code.items():
                        merged[int(code)] = merged.get(int(code), 0) + count
                    recents.append(recent_data)
                server.active = active
                server.requests = requests
                server.errors = errors
                server.codes = merged
                server.recent = merged_recent(recents)
                # ejected or broken open in any worker: shown so (worker_processes[].down says where)
                for flag in (Down.PASSIVE, Down.BREAKER):
                    server.set_down(flag, bool(down & flag))


def merged_recent(recents: list[list[Any]]) -> Recent:
    """One last minute out of several workers' (their loop clocks are the same monotonic clock)."""
    out = Recent()
    since = [s for s, _ in recents if s >= 0]
    out.since = min(since) if since else -1.0
    latest: dict[int, int] = {}  # slot index -> the newest tick any worker has in it
    for _, slots in recents:
        for tick, *_ in slots:
            k = tick % len(out.slots)
            latest[k] = max(latest.get(k, -1), tick)
    for k, tick in latest.items():
        out.slots[k].reset(tick)
    for _, slots in recents:
        for tick, requests, nbytes, connects, hist in slots:
            slot = out.slots[tick % len(out.slots)]
            if slot.tick != tick:
                continue  # an older minute than another worker's: out of the window anyway
            slot.requests += requests
            slot.bytes += nbytes
            slot.connects += connects
            for j, n in hist:
                if 0 <= j < RECENT_BUCKETS:
                    slot.hist[j] += n
    newest = max(latest.values(), default=-1)
    if newest >= 0:
        out.current = out.slots[newest % len(out.slots)]
    return out


def set_main_flags(server: Server, down: int) -> None:
    """Apply the flags the main process decides (health, disabled, draining) to a worker's server."""
    for flag in (Down.ACTIVE_CHECK, Down.DRAINING, Down.DISABLED):
        server.set_down(flag, bool(down & flag))
