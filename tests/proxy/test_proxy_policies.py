"""Every balancing policy through the real proxy, on live upstream servers."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable

import httpx

from tests.proxy.harness import RunningProxy
from tests.support.upstream import UpstreamServer


def group(upstreams: list[UpstreamServer], balance: str, **extra: object) -> dict[str, object]:
    return {"upstreams": {"app": {"balance": balance, "servers": [u.url for u in upstreams], **extra}}}


def spread(proxy: RunningProxy, n: int, **kw: object) -> Counter[str]:
    with httpx.Client(base_url=proxy.url, trust_env=False, timeout=10, **kw) as c:  # type: ignore[arg-type]
        return Counter(c.get("/").headers["x-upstream-name"] for _ in range(n))


def concurrent_spread(proxy: RunningProxy, threads: int, each: int) -> Counter[str]:
    counts: Counter[str] = Counter()
    lock = threading.Lock()

    def run() -> None:
        got = spread(proxy, each)
        with lock:
            counts.update(got)

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(30)
    return counts


def test_random_spreads_evenly(make_proxy: Callable[..., RunningProxy], upstreams: list[UpstreamServer]) -> None:
    counts = spread(make_proxy(group(upstreams, "random")), 300)
    # equal servers, 300 draws: each share within a wide band around 100
    assert sorted(counts) == ["u1", "u2", "u3"]
    assert all(50 <= c <= 160 for c in counts.values()), counts


def test_latency_aware_policies_use_every_server_under_concurrent_load(
    make_proxy: Callable[..., RunningProxy], upstreams: list[UpstreamServer]
) -> None:
    # p2c and least_time prefer the server answering fastest, so equal servers need not get equal
    # shares; concurrent requests must still reach all of them, and none may take everything
    for balance in ("p2c", "least_time"):
        counts = concurrent_spread(make_proxy(group(upstreams, balance)), threads=6, each=50)
        assert sum(counts.values()) == 300
        assert sorted(counts) == ["u1", "u2", "u3"], (balance, counts)
        assert max(counts.values()) < 250, (balance, counts)


def test_least_conn_avoids_the_busy_server(
    make_proxy: Callable[..., RunningProxy], upstreams: list[UpstreamServer]
) -> None:
    a, b, _ = upstreams
    proxy = make_proxy(group([a, b], "least_conn"))
    busy: list[str] = []

    def slow() -> None:
        with httpx.Client(base_url=proxy.url, trust_env=False, timeout=10) as c:
            busy.append(c.get("/slow-head/1500").headers["x-upstream-name"])

    t = threading.Thread(target=slow)
    t.start()
    deadline = time.monotonic() + 5
    while not (a.requests or b.requests) and time.monotonic() < deadline:
        time.sleep(0.01)
    counts = spread(proxy, 6)
    t.join()
    (held,) = busy
    assert held not in counts  # every quick request went to the idle server
    assert sum(counts.values()) == 6


def test_ip_hash_keeps_each_client_address_on_one_server(
    make_proxy: Callable[..., RunningProxy], upstreams: list[UpstreamServer]
) -> None:
    proxy = make_proxy(group(upstreams, "ip_hash"))
    seen: dict[str, str] = {}
    for i in range(2, 22):
        ip = f"127.0.0.{i}"
        counts = spread(proxy, 3, transport=httpx.HTTPTransport(local_address=ip))
        assert len(counts) == 1, (ip, counts)  # stable for one address
        seen[ip] = next(iter(counts))
    assert len(set(seen.values())) >= 2  # and different addresses spread


def test_consistent_hash_on_a_header(make_proxy: Callable[..., RunningProxy], upstreams: list[UpstreamServer]) -> None:
    proxy = make_proxy(group(upstreams, "consistent_hash", hash_key="header:X-User-Id"))
    placed: dict[str, str] = {}
    with httpx.Client(base_url=proxy.url, trust_env=False, timeout=10) as c:
        for user in range(30):
            names = {c.get("/", headers={"X-User-Id": f"user-{user}"}).headers["x-upstream-name"] for _ in range(3)}
            assert len(names) == 1
            placed[f"user-{user}"] = names.pop()
    assert len(set(placed.values())) == 3


def test_sticky_cookie_pins_a_client_and_is_replaced_when_its_server_goes(
    make_proxy: Callable[..., RunningProxy], upstreams: list[UpstreamServer]
) -> None:
    a, b, _ = upstreams
    proxy = make_proxy(group([a, b], "round_robin", sticky={"cookie": "FULCRUM_SRV"},
                             health_check={"path": "/health", "interval": "50ms", "timeout": "40ms",
                                           "rise": 1, "fall": 1}))
    with httpx.Client(base_url=proxy.url, trust_env=False, timeout=10) as c:
        first = c.get("/")
        cookie = first.cookies["FULCRUM_SRV"]
        assert a.id not in cookie and b.id not in cookie  # opaque, not the address
        pinned = first.headers["x-upstream-name"]
        assert {c.get("/").headers["x-upstream-name"] for _ in range(6)} == {pinned}
        down = a if pinned == "u1" else b
        down.healthy = False
        deadline = time.monotonic() + 5
        while True:
            r = c.get("/")
            if r.headers["x-upstream-name"] != pinned:
                break
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert r.cookies["FULCRUM_SRV"] != cookie  # re-balanced, and the cookie replaced
