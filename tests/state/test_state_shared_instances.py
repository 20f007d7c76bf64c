"""Two whole Fulcrum instances (each with its own admin API) sharing one real Redis (``state: redis``)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from fulcrum.state.redis import REPLY_TIMEOUT
from tests.admin.harness import TOKEN, RunningInstance, write_config
from tests.state.conftest import redis_state
from tests.support.redisserver import RedisServer
from tests.support.upstream import UpstreamServer

Make = Callable[..., RunningInstance]
MakeUpstream = Callable[..., UpstreamServer]
#: How long a change may take to show on another instance before the test fails (a loaded machine is slow).
PROPAGATION = 15.0


def wait_until(check: Callable[[], bool], timeout: float = PROPAGATION, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached in {timeout:g}s")
        time.sleep(0.05)


def names(proxy_url: str, n: int) -> list[str]:
    with httpx.Client(trust_env=False, timeout=10) as c:
        return [c.get(f"{proxy_url}/").headers["x-upstream-name"] for _ in range(n)]


def config(state: dict[str, Any], *servers: str, **group: Any) -> dict[str, Any]:
    return {"upstreams": {"app": {"servers": list(servers), **group}}, "state": state}


def failures(inst: RunningInstance) -> int:
    """How many attempts of ``inst`` to reach Redis failed so far."""
    shared = inst.instance.control.shared if inst.instance is not None else None
    assert shared is not None
    return inst.call(lambda: shared.failures)


def weight_of(inst: RunningInstance, sid: str) -> int:
    return next(int(s["weight"]) for s in inst.api.get("/api/v1/upstreams/app").json()["servers"] if s["id"] == sid)


def server_ids(inst: RunningInstance) -> list[str]:
    return [s["id"] for s in inst.api.get("/api/v1/upstreams/app").json()["servers"]]


def test_a_server_added_on_one_instance_takes_traffic_through_the_other(
        redis_server: RedisServer, prefix: str, make_instance: Make, make_upstream: MakeUpstream) -> None:
    a, b = make_upstream(name="a"), make_upstream(name="b")
    state = redis_state(redis_server, prefix)
    one, two = make_instance(config(state, a.url)), make_instance(config(state, a.url))
    assert set(names(two.url, 3)) == {"a"}
    r = one.api.post("/api/v1/upstreams/app/servers", json={"url": b.url, "weight": 1})
    assert r.status_code == 201
    wait_until(lambda: "b" in names(two.url, 4), what="instance two sending to the added server")
    assert set(names(two.url, 6)) == {"a", "b"}
    assert two.api.get("/api/v1/changes").json()["added"] == [
        {"upstream": "app", "id": b.id, "url": b.url, "weight": 1}]


def test_weight_drain_and_removal_propagate_both_ways(
        redis_server: RedisServer, prefix: str, make_instance: Make, make_upstream: MakeUpstream) -> None:
    a, b = make_upstream(name="a"), make_upstream(name="b")
    state = redis_state(redis_server, prefix)
    one = make_instance(config(state, a.url, b.url, balance="weighted_round_robin"))
    two = make_instance(config(state, a.url, b.url, balance="weighted_round_robin"))
    assert one.api.patch(f"/api/v1/upstreams/app/servers/{b.id}", json={"weight": 3}).status_code == 200
    wait_until(lambda: names(two.url, 8).count("b") == 6, what="the new weight on instance two")
    assert two.api.patch(f"/api/v1/upstreams/app/servers/{b.id}", json={"state": "draining"}).status_code == 200
    wait_until(lambda: set(names(one.url, 6)) == {"a"}, what="the drain on instance one")
    server = next(s for s in one.api.get("/api/v1/upstreams/app").json()["servers"] if s["id"] == b.id)
    assert server["state"] == "draining" and server["weight"] == 3
    assert one.api.delete(f"/api/v1/upstreams/app/servers/{a.id}").status_code == 202
    wait_until(lambda: server_ids(two) == [b.id], what="the removal on instance two")
    wait_until(lambda: server_ids(one) == [b.id], what="the removal on instance one")


def test_an_instance_started_later_loads_the_current_state(
        redis_server: RedisServer, prefix: str, make_instance: Make, make_upstream: MakeUpstream) -> None:
    a, b = make_upstream(name="a"), make_upstream(name="b")
    state = redis_state(redis_server, prefix)
    one = make_instance(config(state, a.url))
    assert one.api.post("/api/v1/upstreams/app/servers", json={"url": b.url}).status_code == 201
    assert one.api.patch(f"/api/v1/upstreams/app/servers/{a.id}", json={"state": "disabled"}).status_code == 200
    later = make_instance(config(state, a.url))
    # loaded before it took traffic: its very first requests already follow the changes
    assert set(names(later.url, 4)) == {"b"}
    theirs, ours = later.api.get("/api/v1/changes").json(), one.api.get("/api/v1/changes").json()
    assert theirs == ours
    assert theirs["shared"] == {"backend": "redis", "version": 2, "connected": True}  # two changes: version 2


def test_a_shared_rate_limit_holds_across_instances(
        redis_server: RedisServer, prefix: str, make_instance: Make, make_upstream: MakeUpstream) -> None:
    up = make_upstream(name="up")
    state = redis_state(redis_server, prefix)
    limited = {**config(state, up.url), "routes": [{"name": "api", "match": {"path_prefix": "/"}, "upstream": "app",
                                                    "middleware": [{"rate_limit": {"rate": "1/h", "burst": 5,
                                                                                   "shared": True}}]}]}
    one, two = make_instance(limited), make_instance(limited)
    allowed = {one.url: 0, two.url: 0}
    refused = {one.url: 0, two.url: 0}
    with httpx.Client(trust_env=False, timeout=10) as c:
        for _ in range(8):
            for inst in (one, two):
                r = c.get(f"{inst.url}/")
                if r.status_code == 200:
                    allowed[inst.url] += 1
                else:
                    assert r.status_code == 429 and int(r.headers["retry-after"]) > 0
                    refused[inst.url] += 1
    # one bucket of 5 for both (each alone would let 5 through: 10 in all)
    assert sum(allowed.values()) == 5
    assert all(allowed.values()) and all(refused.values())
    ttl = int(redis_server.command("PTTL", f"{prefix}:rl:api#0:127.0.0.1").strip(b":\r\n"))  # key: ip
    assert 0 < ttl <= 5 * 3600 * 1000 + 1000  # the bucket's key expires once it would be full again


def test_both_keep_serving_without_redis_and_converge_when_it_returns(
        own_redis: RedisServer, prefix: str, make_instance: Make, make_upstream: MakeUpstream,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="fulcrum.state")
    a, b, c = make_upstream(name="a"), make_upstream(name="b"), make_upstream(name="c")
    state = redis_state(own_redis, prefix)
    limited = {**config(state, a.url), "routes": [{"match": {"path_prefix": "/"}, "upstream": "app", "middleware": [
        {"rate_limit": {"rate": "1000/s", "burst": 1000, "key": "route", "shared": True}}]}]}
    one, two = make_instance(limited), make_instance(limited)
    assert one.api.post("/api/v1/upstreams/app/servers", json={"url": b.url}).status_code == 201
    wait_until(lambda: "b" in names(two.url, 4), what="the added server on instance two")

    own_redis.stop()
    for inst in (one, two):  # the shared limit falls back to memory; the last state stays in force
        assert set(names(inst.url, 6)) == {"a", "b"}
    wait_until(lambda: all(failures(inst) >= 3 for inst in (one, two)), what="three reconnect attempts each")
    assert len([r for r in caplog.records if "serving with the last state" in r.getMessage()]) == 2  # one each
    assert len([r for r in caplog.records if "count in each instance's memory" in r.getMessage()]) == 2

    own_redis.start()  # same port, empty: it kept nothing
    # each instance catches up and writes its state back; then a change made now reaches both
    wait_until(lambda: b"added" in own_redis.command("HGETALL", f"{prefix}:overlay"), what="the state written back")

    def change_reaches_both() -> bool:
        one.api.post("/api/v1/upstreams/app/servers", json={"url": c.url})
        return all(c.id in server_ids(inst) for inst in (one, two))

    wait_until(change_reaches_both, what="a change after the restart on both instances")
    for inst in (one, two):
        assert set(names(inst.url, 9)) == {"a", "b", "c"}


def test_a_change_made_while_redis_is_down_is_written_when_it_returns(
        own_redis: RedisServer, prefix: str, make_instance: Make, make_upstream: MakeUpstream) -> None:
    a, b = make_upstream(name="a"), make_upstream(name="b")
    state = redis_state(own_redis, prefix)
    one, two = make_instance(config(state, a.url)), make_instance(config(state, a.url))
    own_redis.stop()
    r = one.api.post("/api/v1/upstreams/app/servers", json={"url": b.url})
    assert r.status_code == 201  # applied here at once
    assert set(names(one.url, 4)) == {"a", "b"}
    assert set(names(two.url, 4)) == {"a"}  # the other cannot hear of it yet
    own_redis.start()
    wait_until(lambda: b.id in server_ids(two), what="the change made meanwhile reaching instance two")
    assert set(names(two.url, 4)) == {"a", "b"}


def test_an_instance_started_while_redis_is_down_catches_up_when_it_answers(
        own_redis: RedisServer, prefix: str, make_instance: Make, make_upstream: MakeUpstream) -> None:
    a, b = make_upstream(name="a"), make_upstream(name="b")
    state = redis_state(own_redis, prefix)
    own_redis.stop()
    lonely = make_instance(config(state, a.url))  # starts on its file's config, without waiting for Redis
    assert set(names(lonely.url, 3)) == {"a"}
    own_redis.start()
    other = make_instance(config(state, a.url))
    assert other.api.post("/api/v1/upstreams/app/servers", json={"url": b.url}).status_code == 201
    wait_until(lambda: b.id in server_ids(lonely), what="the first instance hearing of the change")


def test_stored_changes_that_cannot_be_read_are_left_out(
        redis_server: RedisServer, prefix: str, make_instance: Make, make_upstream: MakeUpstream) -> None:
    a, b, c = make_upstream(name="a"), make_upstream(name="b"), make_upstream(name="c")
    state = redis_state(redis_server, prefix)
    redis_server.command("HSET", f"{prefix}:overlay", "app/10.9.9.9:80", "not json")
    redis_server.command("HSET", f"{prefix}:overlay", f"app/{b.id}", json.dumps({"added": [b.url, 1]}))
    redis_server.command("SET", f"{prefix}:overlay:version", "1")
    one = make_instance(config(state, a.url))
    assert server_ids(one) == [a.id, b.id]  # the readable entry is used, the other left out
    redis_server.command("PUBLISH", f"{prefix}:changes", '{"version": 99, "origin": "x", "entries": 7}')
    redis_server.command("PUBLISH", f"{prefix}:changes", "not json either")
    two = make_instance(config(state, a.url))
    assert two.api.post("/api/v1/upstreams/app/servers", json={"url": c.url}).status_code == 201
    wait_until(lambda: c.id in server_ids(one), what="a good change after the bad ones")
    assert sorted(server_ids(one)) == sorted(server_ids(two)) == sorted([a.id, b.id, c.id])


def test_a_quiet_channel_is_not_taken_for_a_lost_redis(
        redis_server: RedisServer, prefix: str, make_instance: Make, make_upstream: MakeUpstream,
        caplog: pytest.LogCaptureFixture) -> None:
    a, b = make_upstream(name="a"), make_upstream(name="b")
    state = redis_state(redis_server, prefix)
    with caplog.at_level(logging.INFO, logger="fulcrum.state"):
        one, two = make_instance(config(state, a.url)), make_instance(config(state, a.url))
        time.sleep(REPLY_TIMEOUT * 2)  # nothing published for longer than a reply may take
        assert one.api.post("/api/v1/upstreams/app/servers", json={"url": b.url}).status_code == 201
        wait_until(lambda: b.id in server_ids(two), what="the change on instance two")
    assert not [r for r in caplog.records if "unreachable" in r.getMessage()]


def test_a_reload_keeps_the_shared_changes_and_the_backend_in_use(
        redis_server: RedisServer, prefix: str, make_instance: Make, make_upstream: MakeUpstream,
        caplog: pytest.LogCaptureFixture) -> None:
    a, b, c = make_upstream(name="a"), make_upstream(name="b"), make_upstream(name="c")
    state = redis_state(redis_server, prefix)
    one, two = make_instance(config(state, a.url)), make_instance(config(state, a.url))
    assert one.api.post("/api/v1/upstreams/app/servers", json={"url": b.url}).status_code == 201
    wait_until(lambda: b.id in server_ids(two), what="the added server on instance two")
    # instance two's file now names another backend: refused for now, said in the log, sharing goes on
    write_config(two.path, {"admin": {"listen": "127.0.0.1:0", "token": TOKEN}, **config({"backend": "memory"}, a.url)})
    with caplog.at_level(logging.WARNING, logger="fulcrum"):
        assert two.api.post("/api/v1/reload").status_code == 200
    assert any("takes effect at the next start" in r.getMessage() for r in caplog.records)
    assert server_ids(two) == [a.id, b.id]  # the runtime change outlives the reload
    assert one.api.post("/api/v1/upstreams/app/servers", json={"url": c.url}).status_code == 201
    wait_until(lambda: c.id in server_ids(two), what="a change after the reload on instance two")


def test_changes_to_different_servers_made_apart_are_all_kept(
        own_redis: RedisServer, prefix: str, make_instance: Make, make_upstream: MakeUpstream) -> None:
    a, b, c = make_upstream(name="a"), make_upstream(name="b"), make_upstream(name="c")
    state = redis_state(own_redis, prefix)
    one, two = make_instance(config(state, a.url, b.url)), make_instance(config(state, a.url, b.url))
    assert one.api.patch(f"/api/v1/upstreams/app/servers/{a.id}", json={"weight": 5}).status_code == 200
    wait_until(lambda: weight_of(two, a.id) == 5, what="the first change on instance two")
    own_redis.stop()
    # cut off from each other, each changes a server of its own; and both change b
    assert one.api.post("/api/v1/upstreams/app/servers", json={"url": c.url}).status_code == 201
    assert one.api.patch(f"/api/v1/upstreams/app/servers/{b.id}", json={"weight": 2}).status_code == 200
    assert two.api.patch(f"/api/v1/upstreams/app/servers/{a.id}", json={"state": "disabled"}).status_code == 200
    assert two.api.patch(f"/api/v1/upstreams/app/servers/{b.id}", json={"weight": 3}).status_code == 200
    own_redis.start()

    def converged() -> bool:
        return one.api.get("/api/v1/changes").json() == two.api.get("/api/v1/changes").json()

    wait_until(converged, what="both instances with the same changes")
    changes = one.api.get("/api/v1/changes").json()
    assert changes["added"] == [{"upstream": "app", "id": c.id, "url": c.url, "weight": 1}]  # one's
    assert changes["states"] == [{"upstream": "app", "id": a.id, "state": "disabled"}]  # two's
    weights = {w["id"]: w["weight"] for w in changes["weights"]}
    assert weights[a.id] == 5  # from before the outage
    assert weights[b.id] in (2, 3)  # both changed b: the one written last wins
    assert set(names(one.url, 6)) == set(names(two.url, 6)) == {"b", "c"}
