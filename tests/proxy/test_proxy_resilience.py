"""Passive outlier ejection and circuit breakers, fed by real responses through the proxy."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx

from tests.proxy.harness import RunningProxy
from tests.proxy.test_proxy_faults import wait_until
from tests.support.upstream import UpstreamServer, refusing_port


def statuses(proxy: RunningProxy, n: int, path: str = "/") -> list[int]:
    with httpx.Client(base_url=proxy.url, trust_env=False, timeout=10) as c:
        return [c.get(path).status_code for _ in range(n)]


def test_dead_server_is_ejected_after_max_failures_and_returns(
    make_proxy: Callable[..., RunningProxy], upstream: UpstreamServer
) -> None:
    dead = refusing_port()
    proxy = make_proxy({"upstreams": {"app": {
        "servers": [upstream.url, f"http://127.0.0.1:{dead.port}"],
        "passive": {"max_failures": 2, "window": "10s", "eject_for": "600ms"},
    }}})
    got = statuses(proxy, 12)
    assert got.count(502) == 2  # the 2nd failure ejects it; everything after goes to the live server
    assert got[-6:] == [200] * 6
    dead_id = f"127.0.0.1:{dead.port}"
    assert proxy.call(lambda: not proxy.server.snapshot.groups["app"].by_id[dead_id].eligible)  # type: ignore[union-attr]
    t0 = time.monotonic()
    wait_until(lambda: proxy.call(lambda: proxy.server.snapshot.groups["app"].by_id[dead_id].eligible))  # type: ignore[union-attr]
    assert time.monotonic() - t0 > 0.3  # not before eject_for (600 ms from the ejection)
    again = statuses(proxy, 4)
    assert 502 in again  # back in rotation, and still dead


def test_ejection_never_takes_the_last_server(make_proxy: Callable[..., RunningProxy]) -> None:
    dead = refusing_port()
    proxy = make_proxy({"upstreams": {"app": {
        "servers": [f"http://127.0.0.1:{dead.port}"],
        "passive": {"max_failures": 1, "eject_for": "10s"},
    }}})
    assert statuses(proxy, 3) == [502, 502, 502]  # still tried: 502, not 503


def test_circuit_breaker_opens_then_half_opens_and_closes(
    make_proxy: Callable[..., RunningProxy], upstream: UpstreamServer
) -> None:
    proxy = make_proxy({"upstreams": {"app": {
        "servers": [upstream.url],
        "circuit_breaker": {"failure_ratio": 0.5, "min_requests": 4, "open_for": "500ms"},
    }}})
    assert statuses(proxy, 4, "/status/503") == [503] * 4  # the upstream's own 503s
    before = len(upstream.requests)
    t0 = time.monotonic()
    with httpx.Client(base_url=proxy.url, trust_env=False, timeout=10) as c:
        r = c.get("/")
    assert r.status_code == 503 and "no healthy server" in r.text  # open: answered by Fulcrum at once
    assert time.monotonic() - t0 < 0.4
    assert len(upstream.requests) == before
    deadline = time.monotonic() + 5
    while statuses(proxy, 1) != [200]:  # half-open after open_for: a probe goes through and closes it
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert statuses(proxy, 5) == [200] * 5
