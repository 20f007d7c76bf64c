"""Built-in middleware that decide who gets in and what is recorded: request_id, access_log, rate_limit,
ip_filter, basic_auth and cors, through the real proxy."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bcrypt
import httpx
import pytest
from tests.proxy.harness import RunningProxy, client, echo
from tests.proxy.harness import header_values as values
from tests.support.upstream import UpstreamServer

MakeProxy = Callable[[dict[str, Any]], RunningProxy]
TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-01")


#: A second loopback address: requests from it come from another client address than 127.0.0.1.
OTHER_IP = "127.0.0.2"


def one_route(upstream: UpstreamServer, *middleware: dict[str, Any], **route: Any) -> dict[str, Any]:
    return {
        "upstreams": {"app": {"servers": [upstream.url]}},
        "routes": [{"match": {"path_prefix": "/"}, "upstream": "app", "middleware": list(middleware), **route}],
    }


def wait_for_line(path: Path, needle: str, timeout: float = 5.0) -> str:
    """The first line of ``path`` holding ``needle``, polling until ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        if path.exists():
            for line in path.read_text().splitlines():
                if needle in line:
                    return line
        if time.monotonic() > deadline:
            content = path.read_text() if path.exists() else "(no file)"
            raise AssertionError(f"no line with {needle!r} in {path} within {timeout}s: {content!r}")
        time.sleep(0.02)


# ------------------------------------------------------------------------------------------ request_id


def test_request_id_makes_keeps_and_replaces_traceparent(
    make_proxy: MakeProxy, upstream_server: UpstreamServer
) -> None:
    proxy = make_proxy(one_route(upstream_server, {"request_id": {}}))
    valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    with client(proxy) as c:
        made = c.get("/echo")
        kept = c.get("/echo", headers={"traceparent": valid})
        broken = c.get("/echo", headers={"traceparent": "00-nothex-00f067aa0ba902b7-01"})
        own_id = c.get("/echo", headers={"X-Request-ID": "client-id-1"})
    rid = made.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", rid)
    (created,) = values(echo(made), "traceparent")
    m = TRACEPARENT.fullmatch(created)
    assert m is not None and m.group(1) == rid  # the trace id is Fulcrum's request id
    assert values(echo(kept), "traceparent") == [valid]
    (replaced,) = values(echo(broken), "traceparent")
    m = TRACEPARENT.fullmatch(replaced)
    assert m is not None and m.group(1) == broken.headers["x-request-id"]
    (other,) = values(echo(own_id), "traceparent")
    m = TRACEPARENT.fullmatch(other)
    assert m is not None and m.group(1).strip("0")  # a random, valid trace id: "client-id-1" is not one


# ------------------------------------------------------------------------------------------ access_log


def test_access_log_json_lines(make_proxy: MakeProxy, upstream_server: UpstreamServer, tmp_path: Path) -> None:
    log = tmp_path / "access.json"
    proxy = make_proxy(one_route(upstream_server, {"access_log": {"format": "json", "path": str(log)}},
                                 name="logged"))
    with client(proxy) as c:
        r = c.get("/bytes/1234?x=1", headers={"X-Request-ID": "rid-json-1", "User-Agent": "gw-test/1"})
        missing = c.get("/status/404", headers={"X-Request-ID": "rid-json-2"})
    assert r.status_code == 200 and missing.status_code == 404
    entry = json.loads(wait_for_line(log, "rid-json-1"))
    assert entry["status"] == 200
    assert entry["upstream"] == upstream_server.id
    assert entry["request_id"] == "rid-json-1"
    assert entry["route"] == "logged"
    assert entry["bytes_sent"] == 1234
    assert entry["method"] == "GET" and entry["target"] == "/bytes/1234?x=1"
    assert entry["user_agent"] == "gw-test/1"
    assert entry["duration_ms"] >= 0
    second = json.loads(wait_for_line(log, "rid-json-2"))
    assert second["status"] == 404 and second["bytes_sent"] == len("status 404\n")


def test_access_log_combined_line(make_proxy: MakeProxy, upstream_server: UpstreamServer, tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    proxy = make_proxy(one_route(upstream_server, {"access_log": {"format": "combined", "path": str(log)}}))
    with client(proxy) as c:
        r = c.get("/bytes/77", headers={"X-Request-ID": "rid-combined", "Referer": "https://ref.test/"})
    assert r.status_code == 200
    line = wait_for_line(log, "rid-combined")
    assert re.fullmatch(
        r'127\.0\.0\.1 - - \[[^]]+\] "GET /bytes/77 HTTP/1\.1" 200 77 "https://ref\.test/" "python-httpx/[^"]+" '
        rf"upstream={re.escape(upstream_server.id)} duration_ms=\d+\.\d{{3}} request_id=rid-combined",
        line,
    ), line


def test_access_log_lines_are_written_when_the_proxy_stops(
    make_proxy: MakeProxy, upstream_server: UpstreamServer, tmp_path: Path
) -> None:
    log = tmp_path / "access.log"
    proxy = make_proxy(one_route(upstream_server, {"access_log": {"format": "combined", "path": str(log)}}))
    server = proxy.server
    assert server is not None
    # Without the periodic tick only the shutdown can hand the lines over: the test does not race the tick.
    proxy.call(lambda: server._timer.cancel() if server._timer is not None else None)
    with client(proxy) as c:
        assert c.get("/", headers={"X-Request-ID": "rid-at-stop"}).status_code == 200
    proxy.stop()
    assert "request_id=rid-at-stop" in wait_for_line(log, "rid-at-stop", timeout=0.5)


def test_access_log_records_answers_of_fulcrum_and_middleware(
    make_proxy: MakeProxy, upstream_server: UpstreamServer, tmp_path: Path
) -> None:
    log = tmp_path / "access.json"
    proxy = make_proxy({
        "upstreams": {"app": {"servers": [upstream_server.url]}},
        "routes": [
            {"name": "limited", "match": {"path_prefix": "/"}, "upstream": "app",
             "middleware": [{"access_log": {"format": "json", "path": str(log)}},
                            {"rate_limit": {"rate": "1/min", "burst": 1}}]},
        ],
    })
    with client(proxy) as c:
        c.get("/", headers={"X-Request-ID": "rid-ok"})
        c.get("/", headers={"X-Request-ID": "rid-429"})
    limited = json.loads(wait_for_line(log, "rid-429"))
    assert limited["status"] == 429 and limited["upstream"] is None and limited["route"] == "limited"
    assert json.loads(wait_for_line(log, "rid-ok"))["status"] == 200


# ------------------------------------------------------------------------------------------ rate_limit


@pytest.fixture
def limited(make_proxy: MakeProxy, upstream_server: UpstreamServer) -> RunningProxy:
    return make_proxy({
        "upstreams": {"app": {"servers": [upstream_server.url]}},
        "forwarding": {"trusted_proxies": ["127.0.0.1/32"]},
        "routes": [
            {"match": {"path_prefix": "/ip/"}, "upstream": "app",
             "middleware": [{"rate_limit": {"rate": "1/min", "burst": 3}}]},
            {"match": {"path_prefix": "/user/"}, "upstream": "app",
             "middleware": [{"rate_limit": {"rate": "1/min", "burst": 2, "key": "header:X-User"}}]},
            {"match": {"path_prefix": "/route/"}, "upstream": "app",
             "middleware": [{"rate_limit": {"rate": "1/min", "burst": 2, "key": "route"}}]},
        ],
    })


def test_rate_limit_burst_then_429_with_retry_after(limited: RunningProxy, upstream_server: UpstreamServer) -> None:
    with client(limited) as c:
        codes = [c.get("/ip/a").status_code for _ in range(3)]
        over = c.get("/ip/a")
        other_route = c.get("/user/a", headers={"X-User": "z"})
    assert codes == [200, 200, 200]
    assert over.status_code == 429
    assert int(over.headers["retry-after"]) >= 1
    assert over.headers["x-request-id"]
    assert other_route.status_code == 200  # each route has its own buckets
    assert [r.target for r in upstream_server.requests] == ["/ip/a"] * 3 + ["/user/a"]


def test_rate_limit_by_header_keeps_separate_buckets(limited: RunningProxy) -> None:
    with client(limited) as c:
        alice = [c.get("/user/x", headers={"X-User": "alice"}).status_code for _ in range(3)]
        bob = [c.get("/user/x", headers={"X-User": "bob"}).status_code for _ in range(2)]
        alice_again = c.get("/user/x", headers={"X-User": "alice"})
        nobody = [c.get("/user/x").status_code for _ in range(3)]  # no header: one bucket of its own
    assert alice == [200, 200, 429]
    assert bob == [200, 200]
    assert alice_again.status_code == 429
    assert nobody == [200, 200, 429]


def test_rate_limit_by_ip_and_by_route(limited: RunningProxy) -> None:
    with client(limited) as one, client(limited, OTHER_IP) as other:
        first = [one.get("/ip/y").status_code for _ in range(4)]
        second = other.get("/ip/y")  # another client address: a full bucket
        by_route = [one.get("/route/z", headers={"X-User": "1"}).status_code,
                    other.get("/route/z", headers={"X-User": "2"}).status_code,
                    other.get("/route/z").status_code]
    assert first == [200, 200, 200, 429]
    assert second.status_code == 200
    assert by_route == [200, 200, 429]  # key route: one bucket for every client


def test_rate_limit_by_ip_through_a_trusted_proxy(limited: RunningProxy) -> None:
    with client(limited) as c:
        first = [c.get("/ip/f", headers={"X-Forwarded-For": "10.0.0.1"}).status_code for _ in range(4)]
        second = c.get("/ip/f", headers={"X-Forwarded-For": "10.0.0.2"})
    assert first == [200, 200, 200, 429]
    assert second.status_code == 200  # 127.0.0.1 is trusted: the forwarded address is the key


# ------------------------------------------------------------------------------------------ ip_filter


@pytest.fixture
def filtered(make_proxy: MakeProxy, upstream_server: UpstreamServer) -> RunningProxy:
    return make_proxy({
        "upstreams": {"app": {"servers": [upstream_server.url]}},
        "routes": [
            {"match": {"path_prefix": "/deny/"}, "upstream": "app",
             "middleware": [{"ip_filter": {"deny": ["127.0.0.1/32"]}}]},
            {"match": {"path_prefix": "/allow/"}, "upstream": "app",
             "middleware": [{"ip_filter": {"allow": ["10.0.0.0/8"]}}]},
            {"match": {"path_prefix": "/loop2/"}, "upstream": "app",
             "middleware": [{"ip_filter": {"allow": ["127.0.0.0/8"], "deny": ["127.0.0.2/32"]}}]},
            {"match": {"path_prefix": "/behind/"}, "upstream": "app",
             "forwarding": {"trusted_proxies": ["127.0.0.1/32"]},
             "middleware": [{"ip_filter": {"allow": ["10.0.0.0/8"], "deny": ["10.6.6.0/24"]}}]},
            {"match": {"path_prefix": "/"}, "upstream": "app"},
        ],
    })


def test_ip_filter_allow_and_deny(filtered: RunningProxy, upstream_server: UpstreamServer) -> None:
    with client(filtered) as c, client(filtered, OTHER_IP) as other:
        denied = c.get("/deny/x")
        other_passes = other.get("/deny/x")
        not_allowed = c.get("/allow/x")
        spoofed = c.get("/allow/x", headers={"X-Forwarded-For": "10.1.2.3"})  # 127.0.0.1 is not trusted here
        deny_wins = other.get("/loop2/x")
        allowed = c.get("/loop2/x")
        direct = c.get("/behind/x")
        free = c.get("/free")
    for r in (denied, not_allowed, spoofed, deny_wins, direct):
        assert r.status_code == 403, r.request.url
    assert "127.0.0.1" in denied.text and "127.0.0.2" in deny_wins.text
    assert other_passes.status_code == 200 and allowed.status_code == 200 and free.status_code == 200
    assert [r.target for r in upstream_server.requests] == ["/deny/x", "/loop2/x", "/free"]


def test_ip_filter_judges_the_address_a_trusted_proxy_forwards(filtered: RunningProxy) -> None:
    with client(filtered) as c:
        passed = c.get("/behind/x", headers={"X-Forwarded-For": "10.1.2.3"})
        chained = c.get("/behind/x", headers={"X-Forwarded-For": "10.1.2.3, 127.0.0.1"})
        refused = c.get("/behind/x", headers={"X-Forwarded-For": "10.6.6.6"})
        outside = c.get("/behind/x", headers={"X-Forwarded-For": "8.8.8.8"})
    assert refused.status_code == 403 and "10.6.6.6" in refused.text
    assert outside.status_code == 403 and "8.8.8.8" in outside.text
    assert passed.status_code == 200
    assert chained.status_code == 200


# ------------------------------------------------------------------------------------------ basic_auth


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_basic_auth(make_proxy: MakeProxy, upstream_server: UpstreamServer) -> None:
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()
    proxy = make_proxy(one_route(upstream_server, {"basic_auth": {"realm": "Gate", "users": {"alice": hashed}}}))
    with client(proxy) as c:
        none = c.get("/echo")
        wrong = c.get("/echo", headers=basic("alice", "guess"))
        nobody = c.get("/echo", headers=basic("mallory", "s3cret"))
        garbage = c.get("/echo", headers={"Authorization": "Basic !!!"})
        right = c.get("/echo", headers=basic("alice", "s3cret"))
        cached = c.get("/echo", headers=basic("alice", "s3cret"))
        wrong_again = c.get("/echo", headers=basic("alice", "guess"))
    for r in (none, wrong, nobody, garbage, wrong_again):
        assert r.status_code == 401
        assert r.headers["www-authenticate"] == 'Basic realm="Gate", charset="UTF-8"'
    assert right.status_code == 200 and cached.status_code == 200
    assert len(upstream_server.requests) == 2


def test_basic_auth_keeps_the_upstream_connection_usable(
    make_proxy: MakeProxy, upstream_server: UpstreamServer
) -> None:
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()
    config = one_route(upstream_server, {"basic_auth": {"users": {"alice": hashed}}})
    config["upstreams"]["app"]["timeouts"] = {"read": "1s"}
    proxy = make_proxy(config)
    with httpx.Client(base_url=proxy.url, trust_env=False, timeout=3) as c:
        first = c.get("/echo", headers=basic("alice", "s3cret"))
        second = c.get("/echo", headers=basic("alice", "s3cret"))  # cached check, pooled upstream connection
    assert first.status_code == 200
    assert second.status_code == 200
    assert first.json()["conn"] == second.json()["conn"] == 1


def test_basic_auth_with_curl(make_proxy: MakeProxy, upstream_server: UpstreamServer, curl: str) -> None:
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode()
    proxy = make_proxy(one_route(upstream_server, {"basic_auth": {"users": {"bob": hashed}}}))

    def status(*args: str) -> bytes:
        out = subprocess.run([curl, "-s", "-o", "/dev/null", "-w", "%{http_code}", *args, f"{proxy.url}/"],
                             capture_output=True, timeout=10, check=True)
        return out.stdout

    assert status() == b"401"
    assert status("-u", "bob:nope") == b"401"
    assert status("-u", "bob:pw") == b"200"


# ------------------------------------------------------------------------------------------ cors


@pytest.fixture
def cors(make_proxy: MakeProxy, upstream_server: UpstreamServer) -> RunningProxy:
    return make_proxy(one_route(upstream_server, {"cors": {
        "allow_origins": ["https://app.example.com"], "allow_methods": ["GET", "POST"],
        "allow_headers": ["X-Token"], "max_age": 300, "allow_credentials": True,
    }}))


def preflight(c: httpx.Client, origin: str, method: str = "POST", headers: str | None = "X-Token") -> httpx.Response:
    h = {"Origin": origin, "Access-Control-Request-Method": method}
    if headers is not None:
        h["Access-Control-Request-Headers"] = headers
    return c.options("/echo", headers=h)


def test_cors_preflight(cors: RunningProxy, upstream_server: UpstreamServer) -> None:
    with client(cors) as c:
        ok = preflight(c, "https://app.example.com")
        bad_origin = preflight(c, "https://evil.example.com")
        bad_method = preflight(c, "https://app.example.com", "DELETE")
        bad_header = preflight(c, "https://app.example.com", "POST", "X-Other")
    assert ok.status_code == 204
    assert ok.headers["access-control-allow-origin"] == "https://app.example.com"
    assert "POST" in ok.headers["access-control-allow-methods"]
    assert ok.headers["access-control-allow-headers"].lower() == "x-token"
    assert ok.headers["access-control-max-age"] == "300"
    assert ok.headers["access-control-allow-credentials"] == "true"
    assert "origin" in ok.headers["vary"].lower()
    for r in (bad_origin, bad_method, bad_header):
        assert r.status_code == 403
        assert "access-control-allow-origin" not in r.headers
    assert upstream_server.requests == []  # preflights are answered by Fulcrum


def test_cors_actual_requests(cors: RunningProxy, upstream_server: UpstreamServer) -> None:
    with client(cors) as c:
        allowed = c.get("/echo", headers={"Origin": "https://app.example.com"})
        refused = c.get("/echo", headers={"Origin": "https://evil.example.com"})
        without = c.get("/echo")
        plain_options = c.options("/echo", headers={"Origin": "https://app.example.com"})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://app.example.com"
    assert allowed.headers["access-control-allow-credentials"] == "true"
    assert "origin" in allowed.headers["vary"].lower()
    assert refused.status_code == 200 and "access-control-allow-origin" not in refused.headers
    assert not [k for k in without.headers if k.lower().startswith("access-control-")]
    assert "vary" not in without.headers
    # OPTIONS without Access-Control-Request-Method is not a preflight: it goes upstream
    assert plain_options.status_code == 200 and plain_options.json()["method"] == "OPTIONS"
    assert len(upstream_server.requests) == 4
