"""The admin API through a real admin listener: auth, shapes, runtime changes, bad input, metrics, OpenAPI."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from fulcrum.config import parse_config
from tests.admin.harness import TOKEN, RunningInstance, write_config
from tests.support.upstream import UpstreamServer

SERVER_KEYS = {"id", "url", "weight", "state", "discovered", "healthy", "eligible", "down", "active", "requests",
               "errors", "recent_requests", "p50_ms", "p99_ms", "bytes_per_s", "new_connection_share"}
#: Figures that move with the clock between two calls (a rate over the last minute).
MOVING = {"bytes_per_s"}
Make = Callable[..., RunningInstance]



def group(*servers: str, **spec: Any) -> dict[str, Any]:
    return {"upstreams": {"app": {"servers": list(servers), **spec}}}


def wait_until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


def steady(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Groups without the figures that change as time passes, to compare two answers."""
    return [{**g, "servers": [{k: v for k, v in s.items() if k not in MOVING} for s in g["servers"]]} for g in groups]


def names(proxy_url: str, n: int) -> list[str]:
    with httpx.Client(trust_env=False) as c:
        return [c.get(f"{proxy_url}/").headers["x-upstream-name"] for _ in range(n)]


# -- auth -------------------------------------------------------------------------------


def test_every_path_but_healthz_and_the_page_needs_the_token(make_instance: Make,
                                                             upstream_server: UpstreamServer) -> None:
    inst = make_instance(group(upstream_server.url))
    with httpx.Client(base_url=inst.admin_url, trust_env=False) as anon:
        assert anon.get("/healthz").json() == {"status": "ok"}
        for method, path in [("GET", "/api/v1/status"), ("GET", "/api/v1/upstreams"), ("GET", "/metrics"),
                             ("GET", "/api/v1/openapi.json"), ("GET", "/api/v1/explain"), ("POST", "/api/v1/reload"),
                             ("GET", "/api/v1/no-such-path"), ("DELETE", "/api/v1/upstreams/app/servers/x:1"),
                             ("POST", "/healthz")]:
            r = anon.request(method, path)
            assert r.status_code == 401, (method, path)
            assert r.headers["www-authenticate"].startswith("Bearer")
            assert "bearer token is required" in r.json()["error"]
        wrong = anon.get("/api/v1/status", headers={"Authorization": "Bearer " + TOKEN[:-1] + "x"})
        assert wrong.status_code == 401 and "wrong" in wrong.json()["error"]
        basic = anon.get("/api/v1/status", headers={"Authorization": f"Basic {TOKEN}"})
        assert basic.status_code == 401
    assert inst.api.get("/api/v1/status").status_code == 200


def test_without_a_token_a_loopback_listener_is_open(make_instance: Make, upstream_server: UpstreamServer) -> None:
    inst = make_instance({**group(upstream_server.url), "admin": {"listen": "127.0.0.1:0"}})
    with httpx.Client(base_url=inst.admin_url, trust_env=False) as anon:
        assert anon.get("/api/v1/status").status_code == 200


# -- shapes -----------------------------------------------------------------------------


def test_status_and_upstreams_have_the_documented_shapes(make_instance: Make,
                                                         make_upstream: Callable[..., UpstreamServer]) -> None:
    a, b = make_upstream(name="a"), make_upstream(name="b")
    inst = make_instance(group(a.url, {"url": b.url, "weight": 3}, balance="weighted_round_robin"))
    assert len(names(inst.url, 8)) == 8
    status = inst.api.get("/api/v1/status").json()
    assert {"uptime_s", "requests_total", "success_rate", "connections_active", "memory_bytes", "workers",
            "upstreams"} <= set(status)
    assert status["requests_total"] == 8 and status["success_rate"] == 1.0 and status["workers"] == 1
    assert status["memory_bytes"] > 1_000_000
    ups = inst.api.get("/api/v1/upstreams").json()
    assert steady(ups["upstreams"]) == steady(status["upstreams"])
    (app,) = ups["upstreams"]
    assert app["name"] == "app" and app["balance"] == "weighted_round_robin"
    by_id = {s["id"]: s for s in app["servers"]}
    assert set(by_id) == {a.id, b.id}
    for s in app["servers"]:
        assert set(s) == SERVER_KEYS
        assert s["state"] == "enabled" and s["healthy"] and s["eligible"] and s["down"] == [] and s["active"] == 0
    assert by_id[b.id]["weight"] == 3 and by_id[b.id]["url"] == b.url
    assert by_id[a.id]["requests"] + by_id[b.id]["requests"] == 8 and by_id[b.id]["requests"] == 6
    assert steady([inst.api.get("/api/v1/upstreams/app").json()]) == steady([app])
    missing = inst.api.get("/api/v1/upstreams/nope")
    assert missing.status_code == 404 and missing.json()["field"] == "group"


def test_status_shows_the_last_minute_latency_throughput_and_connection_reuse(
        make_instance: Make, make_upstream: Callable[..., UpstreamServer]) -> None:
    fast, slow = make_upstream(name="fast"), make_upstream(name="slow")
    inst = make_instance({"upstreams": {"fast": {"servers": [fast.url]}, "slow": {"servers": [slow.url]}},
                          "routes": [{"match": {"path_prefix": "/slow-head"}, "upstream": "slow"},
                                     {"match": {"path_prefix": "/"}, "upstream": "fast"}]})
    idle = {s["id"]: s for g in inst.api.get("/api/v1/status").json()["upstreams"] for s in g["servers"]}
    assert idle[fast.id]["recent_requests"] == 0 and idle[fast.id]["p50_ms"] is None
    assert idle[fast.id]["new_connection_share"] is None and idle[fast.id]["bytes_per_s"] == 0
    with httpx.Client(trust_env=False) as c:  # one client connection: the proxy reuses its upstream connection
        for _ in range(10):
            assert c.get(f"{inst.url}/bytes/10000").status_code == 200
        for _ in range(4):
            assert c.get(f"{inst.url}/slow-head/80").status_code == 200
    with httpx.Client(trust_env=False) as c:
        assert c.get(f"{inst.url}/bytes/10000", headers={"Connection": "close"}).status_code == 200
    servers = {s["id"]: s for g in inst.api.get("/api/v1/status").json()["upstreams"] for s in g["servers"]}
    f, s = servers[fast.id], servers[slow.id]
    assert f["recent_requests"] == 11 and s["recent_requests"] == 4
    # Upstream connections are kept after the client's close, so 11 requests opened one connection.
    assert f["new_connection_share"] == round(fast.connections_accepted / 11, 4) == round(1 / 11, 4)
    assert s["new_connection_share"] == 0.25
    # Buckets are 25% wide: the slow server's median is 80 ms and more, within a bucket's width.
    assert 80 <= s["p50_ms"] <= 80 * 1.25 + 20 and s["p50_ms"] <= s["p99_ms"]
    assert f["p50_ms"] < 80 and f["p99_ms"] >= f["p50_ms"]
    assert f["bytes_per_s"] > 0 and s["bytes_per_s"] > 0


def test_openapi_document_lists_every_endpoint(make_instance: Make, upstream_server: UpstreamServer) -> None:
    doc = make_instance(group(upstream_server.url)).api.get("/api/v1/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    paths = doc["paths"]
    for path, methods in {
        "/api/v1/status": {"get"}, "/api/v1/upstreams": {"get"}, "/api/v1/upstreams/{group}": {"get"},
        "/api/v1/upstreams/{group}/servers": {"post"},
        "/api/v1/upstreams/{group}/servers/{server_id}": {"patch", "delete"},
        "/api/v1/reload": {"post"}, "/api/v1/explain": {"get"}, "/healthz": {"get"}, "/metrics": {"get"},
        "/api/v1/config": {"get"},
    }.items():
        assert methods <= set(paths[path]), path
    assert "ServerOut" in doc["components"]["schemas"]


def test_config_is_the_loaded_file_as_config_text_that_reads_back(make_instance: Make,
                                                                   upstream_server: UpstreamServer) -> None:
    config = {
        "upstreams": {"app": {"servers": [upstream_server.url], "health_check": {"path": "/health"}}},
        "routes": [{"name": "api", "match": {"path_prefix": "/api/"}, "upstream": "app",
                    "middleware": ["request_id", {"rate_limit": {"rate": "10/min", "burst": 5}},
                                   {"headers": {"preset": "secure"}}]},
                   {"match": {"path_prefix": "/"}, "upstream": "app"}],
    }
    inst = make_instance(config)
    dumped = inst.api.get("/api/v1/config").json()
    assert dumped["admin"]["token"] is None  # never told
    entries = dumped["routes"][0]["middleware"]
    assert [list(e) for e in entries] == [["request_id"], ["rate_limit"], ["headers"]]  # only its own kind
    assert entries[1]["rate_limit"]["rate"] == "0.16666666666666666/s"
    dumped["admin"]["token"] = TOKEN
    again = parse_config(dumped, source="api")
    assert again == inst.config


# -- runtime changes ----------------------------------------------------------------------


def test_added_server_waits_for_its_first_health_check(make_instance: Make,
                                                       make_upstream: Callable[..., UpstreamServer]) -> None:
    a, b = make_upstream(name="a"), make_upstream(name="b")
    b.healthy = False
    inst = make_instance(group(a.url, health_check={"path": "/health", "interval": "100ms", "timeout": "100ms"}))
    r = inst.api.post("/api/v1/upstreams/app/servers", json={"url": b.url, "weight": 2})
    assert r.status_code == 201
    body = r.json()
    assert set(body) == SERVER_KEYS
    assert body["id"] == b.id and body["weight"] == 2 and not body["healthy"] and body["down"] == ["active_check"]
    assert set(names(inst.url, 6)) == {"a"}  # failing its checks: no traffic
    b.healthy = True
    wait_until(lambda: inst.api.get("/api/v1/upstreams/app").json()["servers"][1]["eligible"])
    assert set(names(inst.url, 6)) == {"a", "b"}


def test_added_server_with_initial_healthy_takes_traffic_at_once(make_instance: Make,
                                                                 make_upstream: Callable[..., UpstreamServer]) -> None:
    a, b = make_upstream(name="a"), make_upstream(name="b")
    inst = make_instance(group(a.url, health_check={"path": "/health", "interval": "30s", "initial": "healthy"}))
    assert inst.api.post("/api/v1/upstreams/app/servers", json={"url": b.url}).json()["eligible"]
    assert set(names(inst.url, 4)) == {"a", "b"}


def test_a_group_without_health_checks_uses_an_added_server_at_once(
        make_instance: Make, make_upstream: Callable[..., UpstreamServer]) -> None:
    a, b = make_upstream(name="a"), make_upstream(name="b")
    inst = make_instance(group(a.url))
    assert inst.api.post("/api/v1/upstreams/app/servers", json={"url": b.url}).status_code == 201
    assert sorted(names(inst.url, 4)) == ["a", "a", "b", "b"]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "field", "message"),
    [
        ("POST", "/api/v1/upstreams/nope/servers", {"url": "http://127.0.0.1:1"}, 404, "group", "no upstream group"),
        ("POST", "/api/v1/upstreams/app/servers", {"url": "ftp://x"}, 400, "url", "must be a URL like"),
        ("POST", "/api/v1/upstreams/app/servers", {"url": "http://127.0.0.1:9", "weight": 0}, 400, "weight",
         "greater than or equal to 1"),
        ("POST", "/api/v1/upstreams/app/servers", {"url": "http://127.0.0.1:9", "weight": -3}, 400, "weight", ""),
        ("POST", "/api/v1/upstreams/app/servers", {"weight": 2}, 400, "url", "is required"),
        ("POST", "/api/v1/upstreams/app/servers", {"url": "http://127.0.0.1:9", "wieght": 2}, 400, "wieght",
         "unknown field"),
        ("POST", "/api/v1/upstreams/app/servers", b'{"url": ', 400, "body", "malformed JSON"),
        ("POST", "/api/v1/upstreams/app/servers", [1, 2], 400, None, "valid dictionary"),
        ("PATCH", "/api/v1/upstreams/app/servers/{id}", {"state": "sleeping"}, 400, "state",
         "'enabled', 'disabled' or 'draining'"),
        ("PATCH", "/api/v1/upstreams/app/servers/{id}", {"weight": 0}, 400, "weight", ""),
        ("PATCH", "/api/v1/upstreams/app/servers/{id}", {}, 400, None, "give weight or state"),
        ("PATCH", "/api/v1/upstreams/app/servers/10.9.9.9:1", {"weight": 2}, 404, "id", "no server"),
        ("PATCH", "/api/v1/upstreams/nope/servers/{id}", {"weight": 2}, 404, "group", "no upstream group"),
        ("DELETE", "/api/v1/upstreams/app/servers/10.9.9.9:1", None, 404, "id", "no server"),
        ("POST", "/api/v1/upstreams/app/servers", {"url": "{url}"}, 409, "url", "already in upstream group"),
    ],
)
def test_bad_changes_are_refused_and_change_nothing(
        make_instance: Make, upstream_server: UpstreamServer, method: str, path: str, body: Any, status: int,
        field: str | None, message: str) -> None:
    inst = make_instance(group(upstream_server.url))
    before = inst.api.get("/api/v1/upstreams").json()
    path = path.replace("{id}", upstream_server.id)
    if isinstance(body, dict) and body.get("url") == "{url}":
        body = {"url": upstream_server.url}
    kwargs: dict[str, Any] = {"content": body} if isinstance(body, bytes) else {"json": body} if body is not None \
        else {}
    r = inst.api.request(method, path, **kwargs)
    assert r.status_code == status, r.text
    answer = r.json()
    assert answer["field"] == field and message in answer["error"]
    assert inst.api.get("/api/v1/upstreams").json() == before
    assert inst.api.get("/api/v1/changes").json()["added"] == []


def test_a_form_encoded_body_is_read_as_json(make_instance: Make, make_upstream: Callable[..., UpstreamServer]) -> None:
    a, b = make_upstream(name="a"), make_upstream(name="b")
    inst = make_instance(group(a.url))
    r = inst.api.post("/api/v1/upstreams/app/servers", content=f'{{"url": "{b.url}"}}',
                      headers={"Content-Type": "application/x-www-form-urlencoded"})  # what curl -d sends
    assert r.status_code == 201


def test_weight_and_state_take_effect_on_the_next_request(make_instance: Make,
                                                          make_upstream: Callable[..., UpstreamServer]) -> None:
    a, b = make_upstream(name="a"), make_upstream(name="b")
    inst = make_instance(group(a.url, b.url, balance="weighted_round_robin"))
    assert sorted(names(inst.url, 4)) == ["a", "a", "b", "b"]
    r = inst.api.patch(f"/api/v1/upstreams/app/servers/{b.id}", json={"weight": 3})
    assert r.status_code == 200 and r.json()["weight"] == 3
    assert names(inst.url, 8).count("b") == 6
    for state, expect in [("disabled", {"a"}), ("enabled", {"a", "b"}), ("draining", {"a"})]:
        r = inst.api.patch(f"/api/v1/upstreams/app/servers/{b.id}", json={"state": state})
        assert r.status_code == 200 and r.json()["state"] == state
        assert r.json()["eligible"] == (state == "enabled")
        assert set(names(inst.url, 8)) == expect, state
    servers = inst.api.get("/api/v1/upstreams/app").json()["servers"]
    assert servers[1]["state"] == "draining" and servers[1]["down"] == ["draining"]


def test_delete_drains_then_removes_after_the_request_in_flight(
        make_instance: Make, make_upstream: Callable[..., UpstreamServer]) -> None:
    a, b = make_upstream(name="a"), make_upstream(name="b")
    inst = make_instance(group(a.url, b.url))
    first, second = names(inst.url, 2)  # the rotation may start at either; the next request goes to first
    gone, kept = (a, b) if first == "a" else (b, a)
    result: dict[str, Any] = {}

    def slow() -> None:
        with httpx.Client(trust_env=False, timeout=10) as c:
            r = c.get(f"{inst.url}/slow-head/800")
            result["status"], result["name"] = r.status_code, r.headers["x-upstream-name"]

    t = threading.Thread(target=slow)
    t.start()
    wait_until(lambda: inst.api.get("/api/v1/upstreams/app").json()["servers"][first == "b"]["active"] == 1)
    r = inst.api.delete(f"/api/v1/upstreams/app/servers/{gone.id}")
    assert r.status_code == 202
    assert r.json()["state"] == "draining" and r.json()["active"] == 1
    assert set(names(inst.url, 4)) == {second}  # no new requests while it drains
    assert [s["id"] for s in inst.api.get("/api/v1/upstreams/app").json()["servers"]] == [a.id, b.id]
    t.join(10)
    assert result == {"status": 200, "name": first}
    wait_until(lambda: [s["id"] for s in inst.api.get("/api/v1/upstreams/app").json()["servers"]] == [kept.id])
    assert inst.api.get("/api/v1/changes").json()["removed"] == [{"upstream": "app", "id": gone.id}]
    assert set(names(inst.url, 3)) == {second}


# -- metrics ----------------------------------------------------------------------------------


def test_metrics_count_requests_by_route_upstream_and_code(make_instance: Make,
                                                           upstream_server: UpstreamServer) -> None:
    inst = make_instance({
        "upstreams": {"app": {"servers": [upstream_server.url]}},
        "routes": [{"name": "api", "match": {"path_prefix": "/api/"}, "upstream": "app", "strip_prefix": "/api"}],
    })
    with httpx.Client(trust_env=False) as c:
        assert c.get(f"{inst.url}/api/x").status_code == 200
        assert c.get(f"{inst.url}/api/status/503").status_code == 503
        assert c.get(f"{inst.url}/other").status_code == 404
    r = inst.api.get("/metrics")
    assert r.headers["content-type"].startswith("text/plain")
    text = r.text
    sid = upstream_server.id
    (server,) = inst.api.get("/api/v1/upstreams/app").json()["servers"]
    assert server["requests"] == 2 and server["errors"] == 1  # the 503 answer is an error of the server
    for line in [
        'fulcrum_requests_total{code="200",route="api",upstream="app"} 1.0',
        'fulcrum_requests_total{code="503",route="api",upstream="app"} 1.0',
        'fulcrum_requests_total{code="404",route="-",upstream="-"} 1.0',
        'fulcrum_request_duration_seconds_count{route="api",upstream="app"} 2.0',
        f'fulcrum_upstream_server_up{{server="{sid}",upstream="app"}} 1.0',
        f'fulcrum_upstream_active_requests{{server="{sid}",upstream="app"}} 0.0',
        f'fulcrum_upstream_requests_total{{code="503",server="{sid}",upstream="app"}} 1.0',
        'fulcrum_retries_total{upstream="app"} 0.0',
        f'fulcrum_circuit_open{{server="{sid}",upstream="app"}} 0.0',
    ]:
        assert line in text, line
    assert "fulcrum_connections_active " in text
    assert 'fulcrum_request_duration_seconds_bucket{le="+Inf",route="api",upstream="app"} 2.0' in text
    # Buckets from 0.5 ms to 10 s, cumulative: a slow request lands above 0.25 s, and so in every bucket after.
    with httpx.Client(trust_env=False) as c:
        assert c.get(f"{inst.url}/api/slow-head/300").status_code == 200
    text = inst.api.get("/metrics").text
    bucket = r'fulcrum_request_duration_seconds_bucket\{le="([^"]+)",route="api",upstream="app"\} (\S+)'
    found = re.findall(bucket, text)
    les = [le for le, _ in found]
    assert les[0] == "0.0005" and les[-2:] == ["10.0", "+Inf"] and len(les) == 15
    counts = {le: float(n) for le, n in found}
    assert counts["0.25"] == 2.0 and counts["0.5"] == 3.0 and counts["+Inf"] == 3.0
    assert all(a <= b for a, b in zip(list(counts.values()), list(counts.values())[1:], strict=False))
    total = float(re.search(r'fulcrum_request_duration_seconds_sum\{route="api",upstream="app"\} (\S+)', text)[1])
    assert 0.3 <= total < 1.0
    assert "process_resident_memory_bytes" in text


def test_metrics_survive_a_reload(make_instance: Make, upstream_server: UpstreamServer, tmp_path: Path) -> None:
    config = {"upstreams": {"app": {"servers": [upstream_server.url]}},
              "routes": [{"name": "all", "match": {"path_prefix": "/"}, "upstream": "app"}]}
    inst = make_instance(config)
    names(inst.url, 3)
    write_config(inst.path, {**config, "admin": inst.config.admin.model_dump(mode="json"),
                             "limits": {"header_timeout": "5s"}})
    assert inst.api.post("/api/v1/reload").status_code == 200
    names(inst.url, 2)
    assert 'fulcrum_requests_total{code="200",route="all",upstream="app"} 5.0' in inst.api.get("/metrics").text
