"""GET /api/v1/explain on a real instance: routes and why not, middleware, eligibility, the pick, no side effects."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.admin.harness import RunningInstance
from tests.support.upstream import UpstreamServer

Make = Callable[..., RunningInstance]



def explain(inst: RunningInstance, **params: Any) -> dict[str, Any]:
    r = inst.api.get("/api/v1/explain", params=params)
    assert r.status_code == 200, r.text
    answer: dict[str, Any] = r.json()
    return answer


def wait_until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def test_explain_names_the_route_and_why_each_earlier_one_did_not_match(
        make_instance: Make, upstream_server: UpstreamServer) -> None:
    inst = make_instance({
        "upstreams": {"app": {"servers": [upstream_server.url]}},
        "routes": [
            {"name": "api-host", "match": {"host": "api.example.com"}, "upstream": "app"},
            {"name": "admin-post", "match": {"path_prefix": "/admin", "methods": ["POST"]}, "upstream": "app"},
            {"name": "canary", "match": {"headers": {"X-Env": "canary"}}, "upstream": "app"},
            {"name": "old", "match": {"path": "/old"}, "redirect": {"url": "https://example.com/new"}},
            {"name": "site", "match": {"path_prefix": "/admin"}, "upstream": "app", "strip_prefix": "/admin",
             "middleware": [{"request_id": {}}, {"rate_limit": {"rate": "10/s"}}]},
        ],
    })
    out = explain(inst, method="GET", path="/admin/users?x=1", host="www.example.com", header="X-Env: prod")
    assert out["route"] == "site" and out["upstream"] == "app"
    assert [(r["name"], r["matched"]) for r in out["routes"]] == [
        ("api-host", False), ("admin-post", False), ("canary", False), ("old", False), ("site", True)]
    why = {r["name"]: r["why_not"] for r in out["routes"]}
    assert "host" in why["api-host"] and "www.example.com" in why["api-host"]
    assert "method" in why["admin-post"] and "GET" in why["admin-post"]
    assert "X-Env" in why["canary"] or "x-env" in why["canary"]
    assert "/old" in why["old"]
    assert why["site"] is None
    assert [m.split(" ")[0].split("(")[0] for m in out["middleware"]] == ["request_id", "rate_limit"]
    assert out["upstream_path"] == "/users?x=1"
    assert out["pick"] == upstream_server.id and out["outcome"].startswith("forwarded to")

    # The header the canary route wants, given twice in other case: that route matches now.
    assert explain(inst, path="/", header="x-env: canary")["route"] == "canary"
    redirect = explain(inst, path="/old")
    assert redirect["route"] == "old" and redirect["upstream"] is None and redirect["outcome"].startswith("302")
    nothing = explain(inst, path="/elsewhere")
    assert nothing["route"] is None and nothing["outcome"].startswith("404") and len(nothing["routes"]) == 5
    bad = inst.api.get("/api/v1/explain", params={"path": "/", "header": "no colon"})
    assert bad.status_code == 400 and bad.json()["field"] == "header"
    assert upstream_server.requests == []  # explain sent nothing upstream


def test_explain_gives_each_server_its_reasons(make_instance: Make,
                                               make_upstream: Callable[..., UpstreamServer]) -> None:
    ok, off, drain, sick, brk, ej1, ej2, full = (make_upstream(name=n) for n in
                                                 ("ok", "off", "drain", "sick", "brk", "ej1", "ej2", "full"))
    sick.healthy = False
    inst = make_instance({
        "upstreams": {
            "app": {"servers": [ok.url, off.url, drain.url, sick.url],
                    "health_check": {"path": "/health", "interval": "1h"}},
            "brk": {"servers": [brk.url], "circuit_breaker": {"min_requests": 2, "failure_ratio": 0.5,
                                                              "open_for": "1h"}},
            "ej": {"servers": [ej1.url, ej2.url], "balance": "round_robin",
                   "passive": {"max_failures": 2, "eject_for": "1h", "max_eject_for": "1h"}},
            "full": {"servers": [full.url], "pool": {"max_connections": 1}},
        },
        "routes": [{"match": {"path_prefix": f"/{g}/"}, "upstream": g, "strip_prefix": f"/{g}"}
                   for g in ("brk", "ej", "full")] + [{"match": {"path_prefix": "/"}, "upstream": "app"}],
    })
    api = inst.api
    assert api.patch(f"/api/v1/upstreams/app/servers/{off.id}", json={"state": "disabled"}).status_code == 200
    assert api.patch(f"/api/v1/upstreams/app/servers/{drain.id}", json={"state": "draining"}).status_code == 200
    app = explain(inst, path="/")
    servers = {s["id"]: s for s in app["servers"]}
    assert servers[ok.id]["eligible"] and servers[ok.id]["why_not"] == []
    assert servers[off.id]["state"] == "disabled" and any("disabled" in w for w in servers[off.id]["why_not"])
    assert servers[drain.id]["state"] == "draining" and any("draining" in w for w in servers[drain.id]["why_not"])
    assert any("unhealthy" in w for w in servers[sick.id]["why_not"]) and not servers[sick.id]["eligible"]
    assert app["pick"] == ok.id

    with httpx.Client(trust_env=False) as client:
        for _ in range(2):  # two 500s in two requests: the breaker opens
            assert client.get(f"{inst.url}/brk/status/500").status_code == 500
        for _ in range(4):  # two failures each; at most half the group is ejected
            client.get(f"{inst.url}/ej/status/500")
    out = explain(inst, path="/brk/x")
    (server,) = out["servers"]
    assert any("breaker" in w for w in server["why_not"]) and out["pick"] is None
    assert out["outcome"].startswith("503")
    ej = explain(inst, path="/ej/x")["servers"]
    assert sorted(bool(any("ejected" in w for w in s["why_not"])) for s in ej) == [False, True]

    # One request in flight at max_connections 1: eligible, but the next one would wait.
    slow = threading.Thread(target=lambda: httpx.get(f"{inst.url}/full/slow-head/1500", trust_env=False, timeout=10))
    slow.start()
    try:
        wait_until(lambda: explain(inst, path="/full/x")["servers"][0]["active"] == 1)
        (server,) = explain(inst, path="/full/x")["servers"]
        assert server["eligible"] and server["at_max_connections"]
    finally:
        slow.join(10)
    assert not explain(inst, path="/full/x")["servers"][0]["at_max_connections"]


@pytest.mark.parametrize("balance", ["round_robin", "weighted_round_robin"])
def test_explain_moves_no_balancer_state_and_predicts_the_next_pick(
        balance: str, make_instance: Make, make_upstream: Callable[..., UpstreamServer]) -> None:
    a, b, c = (make_upstream(name=n) for n in "abc")
    inst = make_instance({"upstreams": {"app": {"servers": [a.url, {"url": b.url, "weight": 2}, c.url],
                                                "balance": balance}}})
    by_id = {a.id: "a", b.id: "b", c.id: "c"}
    with httpx.Client(trust_env=False) as client:
        served = [client.get(f"{inst.url}/").headers["x-upstream-name"] for _ in range(5)]
        before = inst.api.get("/api/v1/status").json()
        picks = [explain(inst, path="/")["pick"] for _ in range(10)]
        after = inst.api.get("/api/v1/status").json()
        # The same answer every time: explain did not advance the position ...
        assert len(set(picks)) == 1
        # ... and it is what the next real request gets, and so on for the rest of the cycle.
        for _ in range(6):
            predicted = by_id[explain(inst, path="/")["pick"]]
            assert client.get(f"{inst.url}/").headers["x-upstream-name"] == predicted
    assert len(served) == 5
    # Counters did not move either: no request counted, no upstream connection opened.
    assert after["requests_total"] == before["requests_total"] == 5
    assert [s["requests"] for s in after["upstreams"][0]["servers"]] == \
        [s["requests"] for s in before["upstreams"][0]["servers"]]
    assert sum(s.connections_accepted for s in (a, b, c)) == 3
    assert sum(len(s.requests) for s in (a, b, c)) == 11


def test_explain_follows_the_hash_key_and_the_sticky_cookie(make_instance: Make,
                                                            make_upstream: Callable[..., UpstreamServer]) -> None:
    a, b, c = (make_upstream(name=n) for n in "abc")
    by_id = {a.id: "a", b.id: "b", c.id: "c"}
    inst = make_instance({"upstreams": {
        "ring": {"servers": [a.url, b.url, c.url], "balance": "consistent_hash", "hash_key": "header:X-User"},
        "stick": {"servers": [a.url, b.url, c.url], "sticky": {"cookie": "lb"}}},
        "routes": [{"match": {"path_prefix": "/s/"}, "upstream": "stick"},
                   {"match": {"path_prefix": "/"}, "upstream": "ring"}]})
    with httpx.Client(trust_env=False) as client:
        for user in ("alice", "bob", "carol", "dave", "erin"):
            out = explain(inst, path="/", header=f"X-User: {user}")
            assert "header:X-User" in out["pick_by"]
            got = client.get(f"{inst.url}/", headers={"X-User": user}).headers["x-upstream-name"]
            assert got == by_id[out["pick"]]
        first = client.get(f"{inst.url}/s/")
        cookie = first.headers["set-cookie"].split(";")[0]
        out = explain(inst, path="/s/", header=f"Cookie: {cookie}")
        assert out["pick_by"] == "sticky cookie lb" and by_id[out["pick"]] == first.headers["x-upstream-name"]
