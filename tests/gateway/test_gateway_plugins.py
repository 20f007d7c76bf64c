"""Middleware order (the onion) and plugins through the real proxy: the example plugin and plugins written here."""

from __future__ import annotations

import gzip
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.proxy.harness import RunningProxy, client
from tests.proxy.harness import header_values as values
from tests.support.upstream import RefusingPort, UpstreamServer, pattern_bytes

from fulcrum.config import parse_config
from fulcrum.config.errors import ConfigError

MakeProxy = Callable[[dict[str, Any]], RunningProxy]
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "plugins"
SECURE = "x-content-type-options"

PLUGINS = '''
"""Plugins for tests/gateway: each factory returns an ``async def mw(req, call_next)``."""

import asyncio

from fulcrum.middleware import Response


def teapot(options):
    async def mw(req, call_next):
        return Response(418, "short and stout\\n", {"X-Short": "1", "Content-Type": "text/plain"})
    return mw


def move(options):
    async def mw(req, call_next):
        req.state["asked"] = req.path + "?" + req.query
        req.path = options["path"]
        req.query = options["query"]
        resp = await call_next(req)
        resp.headers["X-Asked"] = req.state["asked"]
        return resp
    return mw


def explode(options):
    async def mw(req, call_next):
        if req.path.startswith("/boom"):
            raise RuntimeError("plugin exploded on purpose")
        if req.path.startswith("/after"):
            await call_next(req)
            raise RuntimeError("plugin exploded after the upstream answered")
        if req.path.startswith("/nonsense"):
            return "not a response"
        return await call_next(req)
    return mw


def restatus(options):
    async def mw(req, call_next):
        resp = await call_next(req)
        resp.headers["X-Original-Status"] = str(resp.status)
        resp.status = options["status"]
        return resp
    return mw


def observe(options):
    async def mw(req, call_next):
        resp = await call_next(req)
        resp.headers["X-Seen-Status"] = str(resp.status)
        resp.headers["X-Seen-From-Upstream"] = str(resp.from_upstream)
        return resp
    return mw


def trail(options):
    """Appends its name to X-Trail on the way in and on the way out: the order shows the onion."""
    name = options["name"]

    async def mw(req, call_next):
        req.headers.add("X-Trail", name)
        if req.state.get("user"):
            req.headers["X-Auth-User"] = req.state["user"]
        if req.header("traceparent"):
            req.headers["X-Saw-Traceparent"] = name
        await asyncio.sleep(0)  # a real await: the onion runs as a task
        resp = await call_next(req)
        resp.headers.add("X-Trail", name)
        return resp
    return mw


def noop(options):
    async def mw(req, call_next):
        return await call_next(req)
    return mw
'''


def group(url: str, **extra: Any) -> dict[str, Any]:
    """An upstream group of one server; connections are pooled, so most requests reuse one after middleware."""
    return {"servers": [url], **extra}


@pytest.fixture
def plugins(plugin_module: Callable[[str, str], str]) -> str:
    plugin_module("gw_test_plugins", PLUGINS)
    return "gw_test_plugins"


def plugin(factory: str, /, **options: Any) -> dict[str, Any]:
    return {"plugin": f"gw_test_plugins:{factory}", "options": options}


# ------------------------------------------------------------------------------------------ order


def order_config(upstream: UpstreamServer, *, async_mode: bool) -> dict[str, Any]:
    lead = [plugin("noop")] if async_mode else []
    limit = {"rate_limit": {"rate": "1/min", "burst": 1}}
    secure = {"headers": {"preset": "secure"}}
    cors = {"cors": {"allow_origins": ["https://app.example.com"]}}
    return {
        "upstreams": {"app": group(upstream.url)},
        "routes": [
            {"match": {"path_prefix": "/outside/"}, "upstream": "app", "middleware": [*lead, cors, secure, limit]},
            {"match": {"path_prefix": "/inside/"}, "upstream": "app", "middleware": [*lead, limit, secure, cors]},
        ],
    }


@pytest.mark.parametrize("async_mode", [False, True], ids=["hooks", "async"])
def test_middleware_order_is_an_onion(
    make_proxy: MakeProxy, upstream_server: UpstreamServer, plugins: str, async_mode: bool
) -> None:
    proxy = make_proxy(order_config(upstream_server, async_mode=async_mode))
    origin = {"Origin": "https://app.example.com"}
    with client(proxy) as c:
        outside_ok = c.get("/outside/", headers=origin)
        outside_429 = c.get("/outside/", headers=origin)
        inside_ok = c.get("/inside/", headers=origin)
        inside_429 = c.get("/inside/", headers=origin)
    assert (outside_ok.status_code, outside_429.status_code) == (200, 429)
    assert (inside_ok.status_code, inside_429.status_code) == (200, 429)
    # headers and cors outside rate_limit see its 429 on the way out
    assert outside_429.headers[SECURE] == "nosniff"
    assert outside_429.headers["access-control-allow-origin"] == "https://app.example.com"
    # inside it, they never run for a request rate_limit answered
    assert SECURE not in inside_429.headers and "access-control-allow-origin" not in inside_429.headers
    assert inside_ok.headers[SECURE] == "nosniff" and outside_ok.headers[SECURE] == "nosniff"
    assert inside_ok.headers["access-control-allow-origin"] == "https://app.example.com"
    assert len(upstream_server.requests) == 2


def test_plugins_nest_in_config_order(make_proxy: MakeProxy, upstream_server: UpstreamServer, plugins: str) -> None:
    proxy = make_proxy({
        "upstreams": {"app": group(upstream_server.url)},
        "routes": [{"match": {"path_prefix": "/"}, "upstream": "app",
                    "middleware": [plugin("trail", name="outer"), plugin("trail", name="inner")]}],
    })
    with client(proxy) as c:
        r = c.get("/echo")
    assert r.status_code == 200
    assert values(r.json(), "X-Trail") == ["outer", "inner"]  # in: outside first
    assert r.headers.get_list("x-trail") == ["inner", "outer"]  # out: inside first


# ------------------------------------------------------------------------------------------ the example plugin


def test_example_api_key_plugin(
    make_proxy: MakeProxy, upstream_server: UpstreamServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLES))
    proxy = make_proxy({
        "upstreams": {"app": group(upstream_server.url)},
        "routes": [{"match": {"path_prefix": "/"}, "upstream": "app", "middleware": [
            {"plugin": "api_key:factory", "options": {"keys": {"k-123": "billing", "k-456": "reports"}}}]}],
    })
    with client(proxy) as c:
        missing = c.get("/echo")
        unknown = c.get("/echo", headers={"X-API-Key": "k-999"})
        known = c.get("/echo", headers={"X-API-Key": "k-123"})
        other = c.get("/echo", headers={"x-api-key": "k-456"})
    assert missing.status_code == 401 and unknown.status_code == 401
    assert "API key" in missing.text
    assert known.status_code == 200
    doc = known.json()
    assert values(doc, "X-API-Key") == []
    assert values(doc, "X-Client") == ["billing"]
    assert known.headers["x-client"] == "billing"
    assert float(known.headers["x-upstream-time-ms"]) >= 0
    assert other.status_code == 200 and other.headers["x-client"] == "reports"
    assert len(upstream_server.requests) == 2


def test_example_api_key_plugin_refuses_a_config_without_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLES))
    proxy = RunningProxy({
        "upstreams": {"app": {"servers": ["http://127.0.0.1:9"]}},
        "routes": [{"match": {"path_prefix": "/"}, "upstream": "app", "middleware": [{"plugin": "api_key:factory"}]}],
    })
    with pytest.raises(ConfigError) as err:
        proxy.start()
    proxy.loop.close()
    assert "routes[0].middleware[0].plugin" in str(err.value)
    assert "options.keys" in str(err.value)


# ------------------------------------------------------------------------------------------ plugins written here


def test_plugin_answers_by_itself(make_proxy: MakeProxy, upstream_server: UpstreamServer, plugins: str) -> None:
    proxy = make_proxy({
        "upstreams": {"app": group(upstream_server.url)},
        "routes": [{"match": {"path_prefix": "/"}, "upstream": "app",
                    "middleware": [{"headers": {"preset": "secure"}}, plugin("teapot")]}],
    })
    with client(proxy) as c:
        r = c.post("/anything", content=b"body the upstream never sees")
        again = c.get("/anything")
    assert r.status_code == 418 and r.text == "short and stout\n"
    assert r.headers["x-short"] == "1" and r.headers["content-length"] == str(len(r.text))
    assert r.headers[SECURE] == "nosniff"  # the built-in outside it still sees the answer
    assert r.headers["x-request-id"]
    assert again.status_code == 418
    assert upstream_server.connections_accepted == 0


def test_plugin_changes_path_and_query(make_proxy: MakeProxy, upstream_server: UpstreamServer, plugins: str) -> None:
    proxy = make_proxy({
        "upstreams": {"app": group(upstream_server.url)},
        "routes": [{"match": {"path_prefix": "/api/"}, "upstream": "app", "strip_prefix": "/api",
                    "middleware": [plugin("move", path="/api/echo", query="moved=1&b=%20")]}],
    })
    with client(proxy) as c:
        r = c.get("/api/original?x=1")
    assert r.status_code == 200
    assert r.json()["path"] == "/echo?moved=1&b=%20"  # the plugin ran first, the route's strip_prefix after it
    assert r.headers["x-asked"] == "/api/original?x=1"


def test_plugin_that_raises_is_a_500_and_the_proxy_keeps_serving(
    make_proxy: MakeProxy, upstream_server: UpstreamServer, plugins: str
) -> None:
    proxy = make_proxy({
        "upstreams": {"app": group(upstream_server.url)},
        "routes": [{"match": {"path_prefix": "/"}, "upstream": "app", "middleware": [plugin("explode")]}],
    })
    with client(proxy) as c:
        boom = c.get("/boom")
        fine = c.get("/fine")
        after = c.get("/after")
        nonsense = c.get("/nonsense")
        still = c.get("/still")
    for r in (boom, after, nonsense):
        assert r.status_code == 500, r.request.url
        assert r.headers["x-request-id"] in r.text
    assert fine.status_code == 200 and fine.text == "ok up\n"
    assert still.status_code == 200
    assert [r.target for r in upstream_server.requests] == ["/fine", "/after", "/still"]


def test_plugin_changes_the_status(make_proxy: MakeProxy, upstream_server: UpstreamServer, plugins: str) -> None:
    proxy = make_proxy({
        "upstreams": {"app": group(upstream_server.url)},
        "routes": [{"match": {"path_prefix": "/"}, "upstream": "app", "middleware": [plugin("restatus", status=203)]}],
    })
    with client(proxy) as c:
        r = c.get("/bytes/300000")  # larger than one read: the body streams after the changed head
        small = c.get("/status/404")
    assert r.status_code == 203 and r.headers["x-original-status"] == "200"
    assert r.content == pattern_bytes(300000)
    assert small.status_code == 203 and small.headers["x-original-status"] == "404"
    assert small.text == "status 404\n"


def test_plugin_sees_an_upstream_failure_as_a_502(make_proxy: MakeProxy, dead_port: RefusingPort, plugins: str) -> None:
    proxy = make_proxy({
        "upstreams": {"dead": group(dead_port.url)},
        "routes": [{"match": {"path_prefix": "/"}, "upstream": "dead", "middleware": [plugin("observe")]}],
    })
    with client(proxy) as c:
        r = c.get("/")
    assert r.status_code == 502
    assert r.headers["x-seen-status"] == "502"
    assert r.headers["x-seen-from-upstream"] == "False"
    assert dead_port.id in r.text


def test_plugins_mixed_with_builtins(make_proxy: MakeProxy, upstream_server: UpstreamServer, plugins: str) -> None:
    import bcrypt

    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode()
    proxy = make_proxy({
        "upstreams": {"app": group(upstream_server.url)},
        "routes": [{"match": {"path_prefix": "/"}, "upstream": "app", "middleware": [
            {"request_id": {}},
            {"headers": {"preset": "secure"}},
            {"basic_auth": {"users": {"carol": hashed}}},
            plugin("trail", name="mixed"),
            {"compress": {"types": ["application/octet-stream", "application/json"], "min_bytes": 100}},
        ]}],
    })
    auth = httpx.BasicAuth("carol", "pw")
    with client(proxy) as c:
        refused = c.get("/echo")
        doc_resp = c.get("/echo", auth=auth)
        req = c.build_request("GET", "/bytes/60000", headers={"Accept-Encoding": "gzip"})
        big = c.send(req, stream=True, auth=auth)
        raw = b"".join(big.iter_raw())
        big.close()
    assert refused.status_code == 401 and refused.headers[SECURE] == "nosniff"
    assert "x-trail" not in refused.headers  # basic_auth answered before the plugin ran
    assert doc_resp.status_code == 200
    doc = doc_resp.json()
    assert values(doc, "X-Trail") == ["mixed"]
    assert values(doc, "X-Auth-User") == ["carol"]  # what basic_auth put in req.state
    assert values(doc, "X-Saw-Traceparent") == ["mixed"]  # request_id ran before it
    assert len(values(doc, "traceparent")) == 1
    assert doc_resp.headers[SECURE] == "nosniff" and doc_resp.headers["x-trail"] == "mixed"
    assert big.status_code == 200 and big.headers["content-encoding"] == "gzip"
    assert gzip.decompress(raw) == pattern_bytes(60000)
    assert big.headers["x-trail"] == "mixed" and big.headers[SECURE] == "nosniff"


def test_async_middleware_leaves_the_upstream_connection_reusable(
    make_proxy: MakeProxy, upstream_server: UpstreamServer, plugins: str
) -> None:
    proxy = make_proxy({
        "upstreams": {"app": {"servers": [upstream_server.url], "timeouts": {"read": "1s"}}},
        "routes": [
            {"match": {"path_prefix": "/plain/"}, "upstream": "app"},
            {"match": {"path_prefix": "/"}, "upstream": "app", "middleware": [plugin("noop")]},
        ],
    })
    # A whole small response arrives while the onion still holds its head (the upstream connection paused):
    # the connection must go back to the pool reading again, or the next request on it hangs.
    with httpx.Client(base_url=proxy.url, trust_env=False, timeout=5) as c:
        codes = [c.get(path).status_code for path in ("/a", "/plain/b", "/c", "/d", "/plain/e")]
    assert codes == [200] * 5
    assert [r.conn for r in upstream_server.requests] == [1] * 5


# ------------------------------------------------------------------------------------------ snapshots


def test_a_reload_whose_plugin_factory_raises_keeps_the_running_routes(
    make_proxy: MakeProxy, upstream_server: UpstreamServer, plugin_module: Callable[[str, str], str]
) -> None:
    plugin_module("gw_test_bad_factory", "def factory(options):\n    raise RuntimeError('refusing: ' + "
                                         "str(options['why']))\n")
    routes = [{"match": {"path_prefix": "/"}, "respond": {"status": 200, "body": "old routes"}}]
    proxy = make_proxy({"upstreams": {"app": {"servers": [upstream_server.url]}}, "routes": routes})
    bad = parse_config({
        "listen": ["127.0.0.1:0"],
        "upstreams": {"app": {"servers": [upstream_server.url]}},
        "routes": [{"match": {"path_prefix": "/"}, "upstream": "app",
                    "middleware": [{"plugin": "gw_test_bad_factory:factory", "options": {"why": "test"}}]}],
    }, source="reload.yaml")
    server = proxy.server
    assert server is not None
    with pytest.raises(ConfigError) as err:
        proxy.run(server.apply(bad))
    text = str(err.value)
    assert "routes[0].middleware[0].plugin" in text and "refusing: test" in text
    with client(proxy) as c:
        r = c.get("/")
    assert r.status_code == 200 and r.text == "old routes"
    assert upstream_server.requests == []


def test_large_bodies_stream_through_async_middleware(
    make_proxy: MakeProxy, upstream_server: UpstreamServer, plugins: str
) -> None:
    proxy = make_proxy({
        "upstreams": {"app": group(upstream_server.url)},
        "routes": [{"match": {"path_prefix": "/"}, "upstream": "app",
                    "middleware": [plugin("trail", name="t"), {"max_body": {"max_bytes": "8m"}}]}],
    })
    body = bytes(range(256)) * 12_000  # 3 MB: many reads while the onion runs as a task
    with client(proxy) as c:
        fixed = c.post("/echo", content=body)
        chunked = c.post("/echo", content=iter([body[i : i + 100_000] for i in range(0, len(body), 100_000)]))
        down = c.get("/bytes/2000000")
    for r in (fixed, chunked):
        assert r.status_code == 200 and r.json()["body_len"] == len(body)
    assert down.content == pattern_bytes(2_000_000)


def test_builtins_see_the_errors_fulcrum_makes(make_proxy: MakeProxy, dead_port: RefusingPort, plugins: str) -> None:
    secure_cors = [{"headers": {"preset": "secure"}}, {"cors": {}}]
    proxy = make_proxy({
        "upstreams": {"dead": {"servers": [dead_port.url]}},
        "routes": [
            {"match": {"path_prefix": "/hooks/"}, "upstream": "dead", "middleware": secure_cors},
            {"match": {"path_prefix": "/async/"}, "upstream": "dead", "middleware": [plugin("noop"), *secure_cors]},
        ],
    })
    with client(proxy) as c:
        responses = [c.get(f"/{mode}/x", headers={"Origin": "https://a.test"}) for mode in ("hooks", "async")]
    for r in responses:
        assert r.status_code == 502
        assert r.headers[SECURE] == "nosniff"
        assert r.headers["access-control-allow-origin"] == "*"
        assert r.headers["x-request-id"] in r.text
