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
    assert time.monotonic() - t0 < 1.0
    assert len(upstream.requests) == before
    deadline = time.monotonic() + 5
    while statuses(proxy, 1) != [200]:  # half-open after open_for: a probe goes through and closes it
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert statuses(proxy, 5) == [200] * 5


def test_retry_on_connect_error_hides_a_dead_server(
    make_proxy: Callable[..., RunningProxy], upstream: UpstreamServer
) -> None:
    dead = refusing_port()
    proxy = make_proxy({"upstreams": {"app": {
        "servers": [f"http://127.0.0.1:{dead.port}", upstream.url],
        "retries": {"max": 1, "when": ["connect_error"]},
    }}})
    assert statuses(proxy, 10) == [200] * 10
    # a POST that failed before any byte was sent is retried too, with its body
    with httpx.Client(base_url=proxy.url, trust_env=False, timeout=10) as c:
        for _ in range(2):
            r = c.post("/echo", content=b"x" * 1000)
            assert r.status_code == 200 and r.json()["body_len"] == 1000
    assert proxy.call(lambda: proxy.server.ctx.stats.retries_total) >= 5  # type: ignore[union-attr]


def test_retry_on_status_never_the_same_server_twice(
    make_proxy: Callable[..., RunningProxy], upstreams: list[UpstreamServer]
) -> None:
    proxy = make_proxy({"upstreams": {"app": {
        "servers": [u.url for u in upstreams],
        "retries": {"max": 5, "when": ["503"], "budget": 1.0},
    }}})
    with httpx.Client(base_url=proxy.url, trust_env=False, timeout=10) as c:
        r = c.get("/status/503")
    assert r.status_code == 503  # every server said 503: the last answer goes to the client
    served = [u.name for u in upstreams for q in u.requests if q.target == "/status/503"]
    assert sorted(served) == ["u1", "u2", "u3"]  # each tried once: 3 tries, not 6


def test_post_is_not_retried_after_it_was_sent(
    make_proxy: Callable[..., RunningProxy], upstreams: list[UpstreamServer]
) -> None:
    proxy = make_proxy({"upstreams": {"app": {
        "servers": [u.url for u in upstreams],
        "retries": {"max": 2, "when": ["503", "reset"]},
    }}})
    with httpx.Client(base_url=proxy.url, trust_env=False, timeout=10) as c:
        assert c.post("/status/503", content=b"abc").status_code == 503
        assert c.post("/reset", content=b"abc").status_code == 502
    assert sum(1 for u in upstreams for q in u.requests if q.method == "POST") == 2


def test_body_too_big_to_replay_is_not_retried(
    make_proxy: Callable[..., RunningProxy], upstreams: list[UpstreamServer]
) -> None:
    proxy = make_proxy({"upstreams": {"app": {
        "servers": [u.url for u in upstreams],
        "retries": {"max": 2, "when": ["503"], "max_body": "1k"},
    }}})
    with httpx.Client(base_url=proxy.url, trust_env=False, timeout=10) as c:
        assert c.put("/status/503", content=b"x" * 5000).status_code == 503
        assert c.put("/status/503", content=b"x" * 500).status_code == 503
    puts = [q for u in upstreams for q in u.requests if q.method == "PUT"]
    assert len(puts) == 1 + 3  # the big one once; the small one on every server


def errors_while_killing_a_server(make_proxy: Callable[..., RunningProxy], retries: dict[str, object] | None) -> int:
    a = UpstreamServer(name="a").start()
    b = UpstreamServer(name="b").start()
    try:
        group: dict[str, object] = {"servers": [a.url, b.url], "passive": {"max_failures": 3}}
        if retries is not None:
            group["retries"] = retries
        proxy = make_proxy({"upstreams": {"app": group}})
        errors = 0
        with httpx.Client(base_url=proxy.url, trust_env=False, timeout=10) as c:
            for i in range(400):  # steady sequential load; b dies a quarter of the way in
                if i == 100:
                    b.stop()
                errors += c.get("/").status_code != 200
        return errors
    finally:
        a.stop()
        b.stop()


def test_killing_a_server_under_load_costs_no_errors_with_retries(
    make_proxy: Callable[..., RunningProxy],
) -> None:
    without = errors_while_killing_a_server(make_proxy, None)
    with_retries = errors_while_killing_a_server(make_proxy, {"max": 1, "when": ["connect_error"]})
    print(f"client errors after killing 1 of 2 servers, 300 requests, passive ejection after 3 failures: "
          f"{without} without retries, {with_retries} with retries on connect_error")
    assert without == 3  # the failures it took to eject the dead server
    assert with_retries == 0  # each of those was retried on the live one


def test_draining_server_finishes_in_flight_requests_and_takes_no_new_ones(
    make_proxy: Callable[..., RunningProxy], upstreams: list[UpstreamServer]
) -> None:
    import threading

    from fulcrum.state.server import Down

    a, b, _ = upstreams
    proxy = make_proxy({"upstreams": {"app": {"servers": [a.url, b.url]}}})
    assert proxy.server is not None
    group = proxy.server.snapshot.groups["app"]
    result: dict[str, int] = {}

    def slow() -> None:
        with httpx.Client(base_url=proxy.url, trust_env=False, timeout=10) as c:
            result["status"] = c.get("/slow-head/600", headers={"X-Which": "slow"}).status_code

    # send the slow request to a, by draining b meanwhile
    proxy.call(lambda: group.by_id[b.id].set_down(Down.DRAINING, True))
    t = threading.Thread(target=slow)
    t.start()
    a.wait_for_requests(1, timeout=5)
    proxy.call(lambda: group.by_id[b.id].set_down(Down.DRAINING, False))
    proxy.call(lambda: group.by_id[a.id].set_down(Down.DRAINING, True))  # a drains with a request in flight
    assert proxy.call(lambda: group.by_id[a.id].active) == 1
    with httpx.Client(base_url=proxy.url, trust_env=False, timeout=10) as c:
        names = {c.get("/").headers["x-upstream-name"] for _ in range(4)}
    assert names == {"u2"}  # nothing new goes to the draining server
    t.join(10)
    assert result["status"] == 200  # and what it had in flight finished
    assert proxy.call(lambda: group.by_id[a.id].active) == 0


def test_hanging_and_garbage_servers_are_answered_and_ejected(
    make_proxy: Callable[..., RunningProxy], upstreams: list[UpstreamServer]
) -> None:
    a, b, _ = upstreams
    for path, status in (("/hang", 504), ("/garbage", 502)):
        proxy = make_proxy({"upstreams": {"app": {
            "servers": [a.url, b.url],
            "timeouts": {"read": "300ms"},
            "passive": {"max_failures": 1, "eject_for": "30s"},
        }}})
        assert proxy.server is not None
        group = proxy.server.snapshot.groups["app"]
        t0 = time.monotonic()
        with httpx.Client(base_url=proxy.url, trust_env=False, timeout=10) as c:
            r = c.get(path)
        assert r.status_code == status
        assert time.monotonic() - t0 < 2
        down = [s.id for s in proxy.call(lambda g=group: [s for s in g.servers if not s.eligible])]
        assert len(down) == 1, path  # the server that failed is out of rotation
        with httpx.Client(base_url=proxy.url, trust_env=False, timeout=10) as c:
            names = {c.get("/").headers["x-upstream-name"] for _ in range(4)}
        expected = {"u1", "u2"} - {"u1" if down[0] == a.id else "u2"}
        assert names == expected, path


def _concurrent_gets(
    proxy: RunningProxy, paths: list[str], started: list[Callable[[], bool]]
) -> list[tuple[int, str, float]]:
    """GET each path on its own thread; before the next one starts, ``started[i]()`` must hold."""
    import threading

    results: list[tuple[int, str, float]] = [(0, "", 0.0)] * len(paths)
    t0 = time.monotonic()

    def one(i: int, path: str) -> None:
        with httpx.Client(base_url=proxy.url, trust_env=False, timeout=10) as c:
            r = c.get(path)
            results[i] = (r.status_code, r.text, time.monotonic() - t0)

    threads = []
    for i, path in enumerate(paths):
        t = threading.Thread(target=one, args=(i, path))
        t.start()
        threads.append(t)
        if i < len(started):
            wait_until(started[i])  # so that they arrive in a known order
    for t in threads:
        t.join(15)
    return results


def test_max_connections_queues_then_refuses(make_proxy: Callable[..., RunningProxy], upstream: UpstreamServer) -> None:
    proxy = make_proxy({"upstreams": {"app": {
        "servers": [upstream.url],
        "pool": {"max_connections": 1},
        "queue": {"size": 1, "timeout": "5s"},
    }}})
    def waiting() -> int:
        assert proxy.server is not None
        return sum(len(p.waiters) for p in proxy.server.ctx.pools.values())

    (s1, _, t1), (s2, _, t2), (s3, text3, t3) = _concurrent_gets(
        proxy, ["/slow-head/600"] * 3, [lambda: len(upstream.requests) == 1, lambda: proxy.call(waiting) == 1]
    )
    assert (s1, s2) == (200, 200)
    assert t2 > t1  # the second waited for the first
    assert s3 == 503 and "queue full" in text3
    assert t3 < t1  # refused at once, not after waiting


def test_queue_timeout_is_503(make_proxy: Callable[..., RunningProxy], upstream: UpstreamServer) -> None:
    proxy = make_proxy({"upstreams": {"app": {
        "servers": [upstream.url],
        "pool": {"max_connections": 1},
        "queue": {"size": 5, "timeout": "300ms"},
    }}})
    (s1, _, _), (s2, text2, t2) = _concurrent_gets(
        proxy, ["/slow-head/1500", "/"], [lambda: len(upstream.requests) == 1]
    )
    assert s1 == 200
    assert s2 == 503 and "waited 0.3s" in text2
    assert t2 < 1.4


def test_reload_keeps_health_state_and_new_servers_wait_for_their_first_check(
    make_proxy: Callable[..., RunningProxy], upstreams: list[UpstreamServer]
) -> None:
    from fulcrum.config import parse_config

    a, b, c = upstreams
    check = {"path": "/health", "interval": "50ms", "timeout": "40ms", "rise": 1, "fall": 1}
    proxy = make_proxy({"upstreams": {"app": {"servers": [a.url, b.url], "health_check": check}}})
    assert proxy.server is not None
    server = proxy.server
    b.healthy = False
    wait_until(lambda: proxy.call(lambda: not server.snapshot.groups["app"].by_id[b.id].healthy))
    c.healthy = False
    new = parse_config({"listen": ["127.0.0.1:0"], "upstreams": {"app": {
        "servers": [a.url, b.url, c.url], "health_check": {**check, "interval": "60ms"}}}})
    proxy.run(server.apply(new))
    group = server.snapshot.groups["app"]
    # b is still known to be down right after the reload, and c waits for a first passing check
    assert proxy.call(lambda: [s.id for s in group.servers if s.eligible]) == [a.id]
    assert {httpx.get(proxy.url, trust_env=False).headers["x-upstream-name"] for _ in range(4)} == {"u1"}
    c.healthy = True
    wait_until(lambda: proxy.call(lambda: group.by_id[c.id].eligible))
