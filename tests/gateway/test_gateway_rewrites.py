"""What a route changes on the way: the path, request and response headers, Host, and forwarding headers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from tests.proxy.harness import RunningProxy, client, echo
from tests.proxy.harness import header_values as values
from tests.support.upstream import UpstreamServer

MakeProxy = Callable[[dict[str, Any]], RunningProxy]


@pytest.fixture
def rewriting(make_proxy: MakeProxy, upstream_server: UpstreamServer) -> RunningProxy:
    return make_proxy({
        "upstreams": {"app": {"servers": [upstream_server.url]}},
        "routes": [
            {"match": {"path_prefix": "/api/"}, "upstream": "app", "strip_prefix": "/api"},
            {"match": {"path_prefix": "/v2/"}, "upstream": "app", "add_prefix": "/internal"},
            {"match": {"path_prefix": "/both/"}, "upstream": "app", "strip_prefix": "/both", "add_prefix": "/x/"},
            {"match": {"path_regex": "^/old/"}, "upstream": "app",
             "rewrite": {"regex": r"^/old/(\w+)/(\w+)$", "replacement": r"/\2/\1"}},
            {"match": {"path_prefix": "/hdr/"}, "upstream": "app", "strip_prefix": "/hdr",
             "request_headers": {"set": {"X-Env": "prod"}, "add": {"X-Extra": "from-route"},
                                 "remove": ["X-Debug", "x-secret"]},
             "response_headers": {"set": {"Content-Type": "text/x-fulcrum", "X-Frame-Options": "DENY"},
                                  "add": {"X-Added": "yes"}, "remove": ["X-Upstream-Name"]}},
            {"match": {"path_prefix": "/vhost/"}, "upstream": "app", "strip_prefix": "/vhost",
             "upstream_host": "internal.svc:8080"},
        ],
    })


def test_strip_and_add_prefix_keep_the_query(rewriting: RunningProxy, upstream_server: UpstreamServer) -> None:
    with client(rewriting) as c:
        stripped = echo(c.get("/api/echo?x=1&y=%20z"))
        c.get("/v2/items?page=3")
        c.get("/both/thing?k=v")
        c.get("/api/")
    assert stripped["path"] == "/echo?x=1&y=%20z"
    targets = [r.target for r in upstream_server.requests]
    assert targets[1:] == ["/internal/v2/items?page=3", "/x/thing?k=v", "/"]


def test_regex_rewrite_with_groups(rewriting: RunningProxy, upstream_server: UpstreamServer) -> None:
    with client(rewriting) as c:
        c.get("/old/alpha/beta?keep=1")
        c.get("/old/unchanged/a/b")  # the regex does not match the whole path: left as it is
    assert [r.target for r in upstream_server.requests] == ["/beta/alpha?keep=1", "/old/unchanged/a/b"]


def test_request_header_edits_reach_the_upstream(rewriting: RunningProxy) -> None:
    with client(rewriting) as c:
        doc = echo(c.get("/hdr/echo", headers=[("X-Env", "dev"), ("X-Extra", "from-client"), ("X-Debug", "1"),
                                               ("X-Secret", "s"), ("X-Kept", "k")]))
    assert values(doc, "X-Env") == ["prod"]
    assert values(doc, "X-Extra") == ["from-client", "from-route"]
    assert values(doc, "X-Debug") == [] and values(doc, "X-Secret") == []
    assert values(doc, "X-Kept") == ["k"]


def test_response_header_edits_reach_the_client(rewriting: RunningProxy) -> None:
    with client(rewriting) as c:
        r = c.get("/hdr/echo")
        plain = c.get("/api/echo")
    assert r.status_code == 200
    assert r.headers.get_list("content-type") == ["text/x-fulcrum"]
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["x-added"] == "yes"
    assert "x-upstream-name" not in r.headers
    assert r.json()["server"] == "up"  # the body is untouched
    assert plain.headers["x-upstream-name"] == "up" and "x-added" not in plain.headers


def test_upstream_host_replaces_host_and_forwarded_host_keeps_the_original(rewriting: RunningProxy) -> None:
    with client(rewriting) as c:
        doc = echo(c.get("/vhost/echo", headers={"Host": "public.example:9000"}))
    assert values(doc, "Host") == ["internal.svc:8080"]
    assert values(doc, "X-Forwarded-Host") == ["public.example:9000"]
    assert doc["path"] == "/echo"


@pytest.fixture
def forwarding(make_proxy: MakeProxy, upstream_server: UpstreamServer) -> RunningProxy:
    return make_proxy({
        "upstreams": {"app": {"servers": [upstream_server.url]}},
        "routes": [
            {"match": {"path_prefix": "/rfc/"}, "upstream": "app", "strip_prefix": "/rfc",
             "forwarding": {"trusted_proxies": ["127.0.0.1/32"], "style": "rfc7239"}},
            {"match": {"path_prefix": "/trusted/"}, "upstream": "app", "strip_prefix": "/trusted",
             "forwarding": {"trusted_proxies": ["127.0.0.1/32"]}},
            {"match": {"path_prefix": "/"}, "upstream": "app"},
        ],
    })


SPOOF = {"X-Forwarded-For": "10.1.2.3", "X-Forwarded-Host": "orig.example", "X-Forwarded-Proto": "https",
         "Forwarded": "for=10.1.2.3;proto=https"}


def test_forwarding_per_route(forwarding: RunningProxy) -> None:
    with client(forwarding) as c:
        default = echo(c.get("/echo", headers={**SPOOF, "Host": "front.test"}))
        trusted = echo(c.get("/trusted/echo", headers={**SPOOF, "Host": "front.test"}))
        rfc = echo(c.get("/rfc/echo", headers={**SPOOF, "Host": "front.test"}))
    # the default trusts no one: the client's claims are replaced
    assert values(default, "X-Forwarded-For") == ["127.0.0.1"]
    assert values(default, "X-Forwarded-Proto") == ["http"]
    assert values(default, "X-Forwarded-Host") == ["front.test"]
    assert values(default, "Forwarded") == []
    # a route trusting 127.0.0.1 extends them
    assert values(trusted, "X-Forwarded-For") == ["10.1.2.3, 127.0.0.1"]
    assert values(trusted, "X-Forwarded-Proto") == ["https"]
    assert values(trusted, "X-Forwarded-Host") == ["orig.example"]
    # rfc7239 style: Forwarded extended, no X-Forwarded-* made by Fulcrum
    assert values(rfc, "Forwarded") == ['for=10.1.2.3;proto=https, for=127.0.0.1;host="front.test";proto=http']
    assert values(rfc, "X-Forwarded-Proto") == [] and values(rfc, "X-Forwarded-Host") == []


def test_forwarded_from_an_untrusted_client_is_replaced_on_an_rfc7239_route(
    make_proxy: MakeProxy, upstream_server: UpstreamServer
) -> None:
    proxy = make_proxy({
        "upstreams": {"app": {"servers": [upstream_server.url]}},
        "routes": [{"match": {"path_prefix": "/"}, "upstream": "app",
                    "forwarding": {"trusted_proxies": ["192.0.2.0/24"], "style": "both"}}],
    })
    with client(proxy) as c:
        doc = echo(c.get("/echo", headers={**SPOOF, "Host": "front.test"}))
    assert values(doc, "Forwarded") == ['for=127.0.0.1;host="front.test";proto=http']
    assert values(doc, "X-Forwarded-For") == ["127.0.0.1"]


def test_expose_upstream_per_route(make_proxy: MakeProxy, upstream_server: UpstreamServer) -> None:
    proxy = make_proxy({
        "upstreams": {"app": {"servers": [upstream_server.url]}},
        "routes": [
            {"match": {"path_prefix": "/shown/"}, "upstream": "app", "expose_upstream": True},
            {"match": {"path_prefix": "/"}, "upstream": "app"},
        ],
    })
    with client(proxy) as c:
        shown = c.get("/shown/x")
        hidden = c.get("/x")
    assert shown.headers["x-upstream-server"] == upstream_server.id
    assert "x-upstream-server" not in hidden.headers
