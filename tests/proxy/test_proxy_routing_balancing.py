"""Routing by host and path prefix, and round robin / smooth weighted round robin on live upstreams."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from tests.proxy.harness import RunningProxy
from tests.support.upstream import UpstreamServer


def names(proxy: RunningProxy, n: int, path: str = "/", host: str | None = None) -> list[str]:
    headers = {"Host": host} if host else {}
    with httpx.Client(base_url=proxy.url, trust_env=False, timeout=10) as c:
        return [c.get(path, headers=headers).headers["x-upstream-name"] for _ in range(n)]


def test_round_robin_takes_turns(make_proxy: Callable[..., RunningProxy], upstreams: list[UpstreamServer]) -> None:
    proxy = make_proxy({"upstreams": {"app": {"servers": [u.url for u in upstreams]}}})
    got = names(proxy, 9)
    assert sorted(got[:3]) == ["u1", "u2", "u3"]  # the rotation may start anywhere
    assert got == got[:3] * 3


def test_round_robin_ignores_weights(make_proxy: Callable[..., RunningProxy], upstreams: list[UpstreamServer]) -> None:
    a, b, _ = upstreams
    proxy = make_proxy({"upstreams": {"app": {"servers": [{"url": a.url, "weight": 5}, b.url]}}})
    got = names(proxy, 6)
    assert sorted(got[:2]) == ["u1", "u2"]
    assert got == got[:2] * 3


def test_smooth_weighted_round_robin_order(
    make_proxy: Callable[..., RunningProxy], upstreams: list[UpstreamServer]
) -> None:
    a, b, c = upstreams
    proxy = make_proxy(
        {
            "upstreams": {
                "app": {
                    "balance": "weighted_round_robin",
                    "servers": [{"url": a.url, "weight": 5}, {"url": b.url, "weight": 1}, {"url": c.url, "weight": 1}],
                }
            }
        }
    )
    # nginx's smooth algorithm: a a b a c a a, then again
    assert names(proxy, 14) == ["u1", "u1", "u2", "u1", "u3", "u1", "u1"] * 2


def test_routes_by_host_and_path_prefix(
    make_proxy: Callable[..., RunningProxy], upstreams: list[UpstreamServer]
) -> None:
    a, b, c = upstreams
    proxy = make_proxy(
        {
            "upstreams": {"api": {"servers": [a.url]}, "wild": {"servers": [b.url]}, "web": {"servers": [c.url]}},
            "routes": [
                {"match": {"host": "api.example.com", "path_prefix": "/v1/"}, "upstream": "api"},
                {"match": {"host": "*.example.com"}, "upstream": "wild"},
                {"match": {"path_prefix": "/"}, "upstream": "web"},
            ],
        }
    )
    assert names(proxy, 1, "/v1/users", "API.Example.com:8080") == ["u1"]
    assert names(proxy, 1, "/v2/users", "api.example.com") == ["u2"]
    assert names(proxy, 1, "/", "shop.example.com") == ["u2"]
    assert names(proxy, 1, "/", "example.com") == ["u3"]  # a wildcard does not match the apex
    assert names(proxy, 1, "/v1/users", "other.org") == ["u3"]


def test_no_route_is_404(make_proxy: Callable[..., RunningProxy], upstreams: list[UpstreamServer]) -> None:
    a = upstreams[0]
    proxy = make_proxy(
        {
            "upstreams": {"api": {"servers": [a.url]}},
            "routes": [{"match": {"path_prefix": "/api/"}, "upstream": "api"}],
        }
    )
    with httpx.Client(base_url=proxy.url, trust_env=False) as c:
        r = c.get("/other")
        assert r.status_code == 404
        assert r.headers["x-request-id"] in r.text
        assert c.get("/api/x").status_code == 200
    assert [r.target for r in a.requests] == ["/api/x"]
