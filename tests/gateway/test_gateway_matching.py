"""Route matching through the real proxy: host, path, regex, methods, headers, query, order, and answers of its own."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from tests.proxy.harness import RunningProxy, client
from tests.support.rawhttp import read_response
from tests.support.upstream import UpstreamServer

MakeProxy = Callable[[dict[str, Any]], RunningProxy]


def said(name: str) -> dict[str, Any]:
    """A route answered by Fulcrum with the body ``name``: which route matched is plain in the response."""
    return {"respond": {"status": 200, "body": name}}


def gateway(upstream: UpstreamServer, *routes: dict[str, Any]) -> dict[str, Any]:
    return {"upstreams": {"app": {"servers": [upstream.url]}}, "routes": list(routes)}


@pytest.fixture
def matching(make_proxy: MakeProxy, upstream_server: UpstreamServer) -> RunningProxy:
    return make_proxy(gateway(
        upstream_server,
        {"match": {"host": "api.example.com", "path_prefix": "/"}, **said("exact-host")},
        {"match": {"host": "*.example.com"}, **said("wild-host")},
        {"match": {"path": "/exact"}, **said("exact-path")},
        {"match": {"path_prefix": "/pre/"}, **said("prefix")},
        {"match": {"path_regex": r"^/items/\d+\.json$"}, **said("regex")},
        {"match": {"path": "/m", "methods": ["POST", "put"]}, **said("m-post")},
        {"match": {"path": "/m"}, **said("m-any")},
        {"match": {"path": "/h", "headers": {"X-Canary": "1"}}, **said("h-exact")},
        {"match": {"path": "/h", "headers": {"X-Build": {"regex": "^beta-[0-9]+$"}}}, **said("h-regex")},
        {"match": {"path": "/q", "query": {"v": "2"}}, **said("q-v2")},
        {"match": {"host": "shop.test", "path_prefix": "/combo/", "methods": ["GET"],
                   "headers": {"X-Tier": "gold"}, "query": {"a": "1"}}, **said("combo")},
        {"match": {"path": "/first"}, **said("first")},
        {"match": {"path": "/first"}, **said("second")},
        {"match": {"path_prefix": "/up/"}, "upstream": "app"},
    ))


def which(c: httpx.Client, method: str, url: str, **kw: Any) -> str | int:
    r = c.request(method, url, **kw)
    return r.text if r.status_code == 200 else r.status_code


def test_host_exact_and_wildcard(matching: RunningProxy) -> None:
    with client(matching) as c:
        assert which(c, "GET", "/x", headers={"Host": "api.example.com"}) == "exact-host"
        assert which(c, "GET", "/x", headers={"Host": "API.Example.COM:8443"}) == "exact-host"
        assert which(c, "GET", "/x", headers={"Host": "a.example.com"}) == "wild-host"
        assert which(c, "GET", "/x", headers={"Host": "deep.b.EXAMPLE.com:81"}) == "wild-host"
        assert which(c, "GET", "/x", headers={"Host": "example.com"}) == 404  # the apex is not a subdomain
        assert which(c, "GET", "/x", headers={"Host": "notexample.com"}) == 404
        assert which(c, "GET", "/x", headers={"Host": "a.example.com.evil"}) == 404


def test_path_exact_prefix_and_regex(matching: RunningProxy) -> None:
    with client(matching) as c:
        assert which(c, "GET", "/exact") == "exact-path"
        assert which(c, "GET", "/exact?with=query") == "exact-path"
        assert which(c, "GET", "/exact/more") == 404
        assert which(c, "GET", "/pre/a/b") == "prefix"
        assert which(c, "GET", "/pre") == 404
        assert which(c, "GET", "/items/42.json") == "regex"
        # the regex sees the path only: a query cannot make it match, nor stop it from matching
        assert which(c, "GET", "/items/42.json?x=y") == "regex"
        assert which(c, "GET", "/items/x?p=/items/1.json") == 404
        assert which(c, "GET", "/items/42.jsonx") == 404


def test_method_mismatch_falls_through(matching: RunningProxy) -> None:
    with client(matching) as c:
        assert which(c, "POST", "/m") == "m-post"
        assert which(c, "PUT", "/m") == "m-post"  # methods are upper-cased in config
        assert which(c, "GET", "/m") == "m-any"
        assert which(c, "DELETE", "/m") == "m-any"


def test_header_exact_and_regex(matching: RunningProxy) -> None:
    with client(matching) as c:
        assert which(c, "GET", "/h", headers={"X-Canary": "1"}) == "h-exact"
        assert which(c, "GET", "/h", headers={"x-canary": "1"}) == "h-exact"
        assert which(c, "GET", "/h", headers={"X-Canary": "10"}) == 404
        assert which(c, "GET", "/h", headers={"X-Build": "beta-17"}) == "h-regex"
        assert which(c, "GET", "/h", headers={"X-Build": "beta-17x"}) == 404
        assert which(c, "GET", "/h") == 404


def test_query_condition(matching: RunningProxy) -> None:
    with client(matching) as c:
        assert which(c, "GET", "/q?v=2") == "q-v2"
        assert which(c, "GET", "/q?a=1&v=2&b=") == "q-v2"
        assert which(c, "GET", "/q?v=3") == 404
        assert which(c, "GET", "/q?vv=2") == 404
        assert which(c, "GET", "/q") == 404


def test_every_condition_of_a_combination_must_hold(matching: RunningProxy) -> None:
    good = {"Host": "shop.test", "X-Tier": "gold"}
    with client(matching) as c:
        assert which(c, "GET", "/combo/x?a=1", headers=good) == "combo"
        assert which(c, "POST", "/combo/x?a=1", headers=good) == 404
        assert which(c, "GET", "/combo/x?a=2", headers=good) == 404
        assert which(c, "GET", "/combo/x?a=1", headers={"Host": "shop.test", "X-Tier": "silver"}) == 404
        assert which(c, "GET", "/combo/x?a=1", headers={"Host": "other.test", "X-Tier": "gold"}) == 404
        assert which(c, "GET", "/combx?a=1", headers=good) == 404


def test_first_match_wins(matching: RunningProxy) -> None:
    with client(matching) as c:
        assert which(c, "GET", "/first") == "first"
        # an earlier, broader route beats a later exact one: api.example.com takes /exact too
        assert which(c, "GET", "/exact", headers={"Host": "api.example.com"}) == "exact-host"


def test_no_match_is_404_and_the_connection_stays_usable(
    matching: RunningProxy, upstream_server: UpstreamServer
) -> None:
    with socket.create_connection(("127.0.0.1", matching.port), timeout=5) as sock:
        sock.sendall(b"GET /nowhere HTTP/1.1\r\nHost: t\r\n\r\n")
        miss = read_response(sock)
        sock.sendall(b"GET /up/echo HTTP/1.1\r\nHost: t\r\n\r\n")
        hit = read_response(sock)
        sock.sendall(b"GET /exact HTTP/1.1\r\nHost: t\r\n\r\n")
        answered = read_response(sock)
    assert miss.status == 404
    assert miss.header("connection") != "close"
    assert miss.header("x-request-id")
    assert hit.status == 200 and hit.body == b"ok up\n"
    assert answered.status == 200 and answered.body == b"exact-path"
    assert [r.target for r in upstream_server.requests] == ["/up/echo"]  # the 404 went nowhere


def test_respond_and_redirect_routes_need_no_upstream(make_proxy: MakeProxy, dead_port: Any) -> None:
    proxy = make_proxy({
        "upstreams": {"app": {"servers": [dead_port.url]}},
        "routes": [
            {"match": {"path": "/teapot"},
             "respond": {"status": 418, "body": "short and stout\n", "headers": {"X-Pot": "tea"}}},
            {"match": {"path": "/json"},
             "respond": {"status": 200, "body": "{}", "headers": {"Content-Type": "application/json"}}},
            {"match": {"path": "/empty"}, "respond": {"status": 204}},
            {"match": {"path_prefix": "/go/"}, "redirect": {"url": "https://{host}/new{path}?{query}"}},
            {"match": {"path_prefix": "/uri/"}, "redirect": {"url": "https://elsewhere.test{uri}", "status": 301}},
            {"match": {"path": "/fixed"}, "redirect": {"url": "https://fixed.test/", "status": 308}},
            {"match": {"path_prefix": "/"}, "upstream": "app"},
        ],
    })
    with client(proxy) as c:
        teapot = c.get("/teapot")
        as_json = c.get("/json")
        empty = c.get("/empty")
        go = c.get("/go/a/b?x=1&y=2", headers={"Host": "shop.test:8080"})
        uri = c.get("/uri/p?q=1")
        uri_bare = c.get("/uri/p")
        fixed = c.post("/fixed", content=b"ignored")
        upstream_down = c.get("/other")
    assert teapot.status_code == 418 and teapot.text == "short and stout\n"
    assert teapot.headers["x-pot"] == "tea"
    assert teapot.headers["content-type"].startswith("text/plain")
    assert teapot.headers["content-length"] == str(len("short and stout\n"))
    assert as_json.headers.get_list("content-type") == ["application/json"]
    assert empty.status_code == 204 and empty.content == b"" and "content-length" not in empty.headers
    assert go.status_code == 302  # the default
    assert go.headers["location"] == "https://shop.test:8080/new/go/a/b?x=1&y=2"
    assert uri.status_code == 301 and uri.headers["location"] == "https://elsewhere.test/uri/p?q=1"
    assert uri_bare.headers["location"] == "https://elsewhere.test/uri/p"
    assert fixed.status_code == 308 and fixed.headers["location"] == "https://fixed.test/"
    assert upstream_down.status_code == 502  # the catch-all really did need the dead upstream


def test_host_routing_with_curl(matching: RunningProxy, curl: str) -> None:
    out = subprocess.run(
        [curl, "-s", "-H", "Host: Z.Example.Com", f"{matching.url}/anything"],
        capture_output=True, timeout=10, check=True,
    )
    assert out.stdout == b"wild-host"
    miss = subprocess.run(
        [curl, "-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", "Host: example.com", f"{matching.url}/x"],
        capture_output=True, timeout=10, check=True,
    )
    assert miss.stdout == b"404"
