"""Counters across workers: the sums the main process shows, and totals that never go back when a worker dies."""

from __future__ import annotations

import asyncio

from fulcrum.config import parse_config
from fulcrum.proxy.server import ProxyServer
from fulcrum.state.server import Down
from fulcrum.supervisor.tally import Tally, down_map, report

CONFIG = {"upstreams": {"app": {"servers": ["http://127.0.0.1:5001", "http://127.0.0.1:5002"]}}}


def busy_worker(loop: asyncio.AbstractEventLoop, requests: int, active: int, ms: float) -> ProxyServer:
    """A worker's proxy (not serving) with ``requests`` counted everywhere a request is counted."""
    server = ProxyServer(parse_config(CONFIG, env={}), loop, checks=False)
    ctx = server.ctx
    ctx.stats.requests_total = ctx.stats.connections_total = requests
    ctx.stats.connections_active = active
    route = ctx.metrics.by_route["*/"]
    first = server.snapshot.groups["app"].servers[0]
    for _ in range(requests):
        route.record(200, ms / 1000)
        first.recent.record(loop.time(), ms, 100)
    first.requests = requests
    first.codes[200] = requests
    first.active = active
    ctx.metrics.retries["app"] = 1
    return server


async def test_the_main_process_shows_the_sums_and_keeps_a_dead_workers_counts() -> None:
    loop = asyncio.get_running_loop()
    main = ProxyServer(parse_config(CONFIG, env={}), loop)
    tally = Tally()
    tally.update(0, report(busy_worker(loop, 10, 2, 1.0)))
    tally.update(1, report(busy_worker(loop, 30, 1, 100.0)))
    tally.apply(main.ctx.stats, main.ctx.metrics, main.snapshot)
    stats, metrics = main.ctx.stats, main.ctx.metrics
    first = main.snapshot.groups["app"].servers[0]
    assert (stats.requests_total, stats.connections_total, stats.connections_active) == (40, 40, 3)
    assert metrics.kept[("*/", "app")].codes == {200: 40} and sum(metrics.kept[("*/", "app")].buckets) == 40
    assert metrics.retries == {"app": 2}
    assert (first.requests, first.codes, first.active) == (40, {200: 40}, 3)
    requests, p50, p99, _, _ = first.recent.summary(loop.time())
    assert requests == 40 and p50 is not None and p99 is not None and p50 > 50 and p99 > 75  # most took 100 ms
    # worker 1 dies; its replacement has served 5 so far: counters keep worker 1's 30, gauges lose its 1
    tally.retire(1)
    tally.update(1, report(busy_worker(loop, 5, 0, 1.0)))
    tally.apply(stats, metrics, main.snapshot)
    assert (stats.requests_total, stats.connections_active) == (45, 2)
    assert metrics.kept[("*/", "app")].codes == {200: 45} and metrics.retries == {"app": 3}
    assert (first.requests, first.codes, first.active) == (45, {200: 45}, 2)
    assert first.recent.summary(loop.time())[0] == 15  # the last minute is the live workers'


async def test_a_worker_reports_the_servers_it_does_not_send_to_and_why() -> None:
    worker = ProxyServer(parse_config(CONFIG, env={}), asyncio.get_running_loop(), checks=False)
    a, b = worker.snapshot.groups["app"].servers
    a.set_down(Down.PASSIVE, True)
    b.set_down(Down.ACTIVE_CHECK, True)
    b.set_down(Down.DRAINING, True)
    found = report(worker)
    assert down_map(found) == {f"app/{a.id}": ["passive"], f"app/{b.id}": ["active_check", "draining"]}
    assert found["health_checks"] == 0


async def test_a_server_ejected_by_any_worker_shows_so_in_the_totals() -> None:
    loop = asyncio.get_running_loop()
    main = ProxyServer(parse_config(CONFIG, env={}), loop)
    one, two = busy_worker(loop, 1, 0, 1.0), busy_worker(loop, 1, 0, 1.0)
    two.snapshot.groups["app"].servers[0].set_down(Down.BREAKER, True)
    tally = Tally()
    tally.update(0, report(one))
    tally.update(1, report(two))
    tally.apply(main.ctx.stats, main.ctx.metrics, main.snapshot)
    first, second = main.snapshot.groups["app"].servers
    assert first.down & Down.BREAKER and not second.down & (Down.BREAKER | Down.PASSIVE)
    two.snapshot.groups["app"].servers[0].set_down(Down.BREAKER, False)  # closed again
    tally.update(1, report(two))
    tally.apply(main.ctx.stats, main.ctx.metrics, main.snapshot)
    assert not first.down & Down.BREAKER
