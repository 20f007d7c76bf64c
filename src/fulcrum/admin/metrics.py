"""Prometheus metrics, read from the data plane's counters at scrape time (nothing is kept twice).

The data plane only adds to plain integers (per route and status code, per server and status code,
a duration histogram per route); this collector turns them into metric families when scraped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from fulcrum.admin.views import Stats
from fulcrum.state.server import Down
from fulcrum.state.snapshot import Snapshot
from fulcrum.state.tcp import TcpGroup

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class RouteCounters(Protocol):
    route: str
    upstream: str
    codes: dict[int, int]
    buckets: list[int]
    seconds: float


class Counters(Protocol):
    """What the data plane counts per route and group (``fulcrum.proxy.context.Metrics``)."""

    @property
    def kept(self) -> Mapping[tuple[str, str], Any]: ...
    @property
    def retries(self) -> Mapping[str, int]: ...
    @property
    def bounds(self) -> tuple[float, ...]: ...  # upper bounds of the duration buckets


class FulcrumCollector:
    """A prometheus_client collector over one process's snapshot and counters."""

    def __init__(
        self,
        snapshot: Callable[[], Snapshot],
        stats: Callable[[], Stats],
        counters: Callable[[], Counters],
        tcp: Callable[[], Mapping[str, TcpGroup]] | None = None,
        extra: Callable[[], Iterator[Metric]] | None = None,
    ) -> None:
        self._snapshot = snapshot
        self._stats = stats
        self._counters = counters
        self._tcp = tcp
        self._extra = extra  # more families (the worker processes' own)

    def collect(self) -> Iterator[Metric]:
        snapshot = self._snapshot()
        stats = self._stats()
        counters = self._counters()
        requests = CounterMetricFamily("fulcrum_requests", "Client requests by route, upstream and status code.",
                                       labels=("route", "upstream", "code"))
        durations = HistogramMetricFamily("fulcrum_request_duration_seconds",
                                          "Time from a complete request head to the end of the response.",
                                          labels=("route", "upstream"))
        for c in counters.kept.values():
            for code, n in sorted(c.codes.items()):
                requests.add_metric((c.route, c.upstream, str(code)), n)
            if sum(c.buckets):
                running = 0
                buckets = []
                for bound, n in zip((*counters.bounds, float("inf")), c.buckets, strict=True):
                    running += n
                    buckets.append(("+Inf" if bound == float("inf") else repr(bound), running))
                durations.add_metric((c.route, c.upstream), buckets, c.seconds)
        yield requests
        yield durations
        up = GaugeMetricFamily("fulcrum_upstream_server_up", "1 when the server takes requests (eligible), else 0.",
                               labels=("upstream", "server"))
        healthy = GaugeMetricFamily("fulcrum_upstream_server_healthy", "1 when the server passes its health checks.",
                                    labels=("upstream", "server"))
        active = GaugeMetricFamily("fulcrum_upstream_active_requests", "Requests in flight to the server.",
                                   labels=("upstream", "server"))
        weight = GaugeMetricFamily("fulcrum_upstream_server_weight", "The server's weight.",
                                   labels=("upstream", "server"))
        circuit = GaugeMetricFamily("fulcrum_circuit_open", "1 while the server's circuit breaker is open.",
                                    labels=("upstream", "server"))
        by_code = CounterMetricFamily("fulcrum_upstream_requests", "Responses from each server by status code.",
                                      labels=("upstream", "server", "code"))
        for name, group in snapshot.groups.items():
            for s in group.servers:
                labels = (name, s.id)
                up.add_metric(labels, 1 if s.eligible else 0)
                healthy.add_metric(labels, 1 if s.healthy else 0)
                active.add_metric(labels, s.active)
                weight.add_metric(labels, s.weight)
                circuit.add_metric(labels, 1 if s.down & Down.BREAKER else 0)
                for code, n in sorted(s.codes.items()):
                    by_code.add_metric((*labels, str(code)), n)
        yield from (up, healthy, active, weight, circuit, by_code)
        retries = CounterMetricFamily("fulcrum_retries", "Requests sent again to another server.", labels=("upstream",))
        for name in snapshot.groups:
            retries.add_metric((name,), counters.retries.get(name, 0))
        yield retries
        yield GaugeMetricFamily("fulcrum_connections_active", "Open client connections.",
                                value=stats.connections_active)
        yield CounterMetricFamily("fulcrum_connections", "Client connections accepted.",
                                  value=stats.connections_total)
        yield GaugeMetricFamily("fulcrum_tunnels_active", "Upgraded connections (WebSocket and others) open now.",
                                value=stats.tunnels_active)
        yield CounterMetricFamily("fulcrum_tunnels", "Upgraded connections opened (101 Switching Protocols).",
                                  value=stats.tunnels_total)
        if self._tcp is not None:
            yield from tcp_metrics(self._tcp())
        if self._extra is not None:
            yield from self._extra()


def tcp_metrics(groups: Mapping[str, TcpGroup]) -> Iterator[Metric]:
    """The TCP services' families: client connections per service; connections, health and bytes per server."""
    service_active = GaugeMetricFamily("fulcrum_tcp_service_connections_active",
                                       "Open client connections of the TCP service.", labels=("service",))
    service_total = CounterMetricFamily("fulcrum_tcp_service_connections",
                                        "Client connections the TCP service accepted.", labels=("service",))
    unserved = CounterMetricFamily("fulcrum_tcp_service_unserved",
                                   "Client connections closed because no server could be connected.",
                                   labels=("service",))
    labels = ("service", "server")
    active = GaugeMetricFamily("fulcrum_tcp_connections_active",
                               "Connections open (or being opened) through the server.", labels=labels)
    total = CounterMetricFamily("fulcrum_tcp_connections", "Connections established to the server.", labels=labels)
    failures = CounterMetricFamily("fulcrum_tcp_connect_failures",
                                   "Connects to the server refused or timed out.", labels=labels)
    up = GaugeMetricFamily("fulcrum_tcp_server_up", "1 when the server takes new connections (eligible), else 0.",
                           labels=labels)
    moved = CounterMetricFamily("fulcrum_tcp_bytes", "Bytes forwarded, by direction (to_server, to_client).",
                                labels=(*labels, "direction"))
    for name, group in groups.items():
        counters = group.counters
        service_active.add_metric((name,), counters.active)
        service_total.add_metric((name,), counters.total)
        unserved.add_metric((name,), counters.unserved)
        for s in group.servers:
            active.add_metric((name, s.id), s.active)
            total.add_metric((name, s.id), s.connections)
            failures.add_metric((name, s.id), s.connect_failures)
            up.add_metric((name, s.id), 1 if s.eligible else 0)
            moved.add_metric((name, s.id, "to_server"), s.bytes_to_server)
            moved.add_metric((name, s.id, "to_client"), s.bytes_to_client)
    yield from (service_active, service_total, unserved, active, total, failures, up, moved)


def metrics_text(collector: FulcrumCollector) -> bytes:
    """The Prometheus text exposition of ``collector`` (and of nothing else: no process-global registry)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    ProcessCollector(registry=registry)  # cpu seconds, resident memory, open files of this process
    return generate_latest(registry)
