"""DNS discovery end to end: a whole instance, a real DNS server on 127.0.0.1 and real upstreams.

The DNS server's zone is changed while the instance runs; the tests poll (with deadlines far above the
refresh periods) until traffic and the admin API show the change, and never assert on speed.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.admin.harness import RunningInstance, write_config
from tests.support.dnsserver import DnsServer
from tests.support.upstream import UpstreamServer

Make = Callable[..., RunningInstance]
DEADLINE = 30.0
# Timeouts far above what a loaded machine needs on loopback: a check or lookup that timed out would change the set.
HEALTH = {"path": "/health", "interval": "1s", "timeout": "1s"}


def config(server: DnsServer, group: dict[str, Any] | None = None, **source: Any) -> dict[str, Any]:
    servers_from = {"dns": "app.test", "resolver": server.address, "refresh": "1s", "timeout": "2s", **source}
    return {"expose_upstream": True,
            "upstreams": {"app": {"servers_from": servers_from, "health_check": HEALTH, **(group or {})}}}


def served(url: str, n: int = 20) -> Counter[str]:
    """Who answered ``n`` requests (the X-Upstream-Server id, or the status code when Fulcrum answered)."""
    seen: Counter[str] = Counter()
    with httpx.Client(trust_env=False, timeout=10) as client:
        for _ in range(n):
            response = client.get(f"{url}/")
            seen[response.headers.get("x-upstream-server") or str(response.status_code)] += 1
    return seen


def eventually(check: Callable[[], bool], what: str, deadline: float = DEADLINE) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"not within {deadline:g}s: {what}")


def servers(inst: RunningInstance) -> dict[str, dict[str, Any]]:
    group = inst.api.get("/api/v1/upstreams/app").json()
    return {s["id"]: s for s in group["servers"]}


def test_a_records_give_two_servers_before_the_first_request(dns: DnsServer, make_instance: Make,
                                                              same_port_upstreams: Callable[[int], list[UpstreamServer]]
                                                              ) -> None:
    a, b = same_port_upstreams(2)
    dns.zone.set_a("app.test", ["127.0.0.2", "127.0.0.3"], ttl=30)
    inst = make_instance(config(dns, port=a.port))
    # resolved and checked before the listener took its first connection: no 503 at start
    assert served(inst.url, 20) == Counter({a.id: 10, b.id: 10})
    status = inst.api.get("/api/v1/status").json()
    (group,) = status["upstreams"]
    assert group["servers_from"].startswith("servers from DNS A app.test port")
    assert [(s["id"], s["weight"], s["discovered"], s["healthy"]) for s in group["servers"]] == [
        (a.id, 1, True, True), (b.id, 1, True, True)]


def test_the_set_changing_is_followed_and_servers_that_stay_keep_their_state(
        dns: DnsServer, make_instance: Make, same_port_upstreams: Callable[[int], list[UpstreamServer]]) -> None:
    two, three, four = same_port_upstreams(3)
    dns.zone.set_a("app.test", ["127.0.0.2", "127.0.0.3"], ttl=1)
    inst = make_instance(config(dns, port=two.port))
    assert served(inst.url, 10) == Counter({two.id: 5, three.id: 5})
    before = servers(inst)[three.id]["requests"]
    four.healthy = False  # the new server fails its checks: it is listed but takes no traffic
    dns.zone.set_a("app.test", ["127.0.0.3", "127.0.0.4"], ttl=1)
    eventually(lambda: set(servers(inst)) == {three.id, four.id}, "the API lists the new set")
    listed = servers(inst)
    assert listed[four.id]["discovered"] and not listed[four.id]["healthy"]
    assert listed[three.id]["requests"] >= before  # the same server object: its counters were kept
    assert served(inst.url, 10) == Counter({three.id: 10})
    four.healthy = True
    eventually(lambda: four.id in served(inst.url, 4), "traffic reaches the new server once its check passes")
    assert set(served(inst.url, 10)) == {three.id, four.id}


@pytest.mark.parametrize("additional", [False, True], ids=["targets-asked", "targets-in-additional"])
def test_srv_records_give_ports_and_weights(dns: DnsServer, make_instance: Make,
                                            make_upstream: Callable[..., UpstreamServer], additional: bool) -> None:
    heavy, light, fallback = make_upstream("heavy"), make_upstream("light"), make_upstream("fallback")
    dns.zone.additional = additional
    dns.zone.set_srv("_http._tcp.app.test", [
        (10, 3, heavy.port, "a.app.test."),
        (10, 0, light.port, "b.app.test."),  # weight 0 counts as 1
        (20, 50, fallback.port, "c.app.test."),  # a lower priority: not used while priority 10 has servers
    ], ttl=30)
    for name in ("a.app.test", "b.app.test", "c.app.test"):
        dns.zone.set_a(name, ["127.0.0.1"], ttl=30)
    inst = make_instance(config(dns, {"balance": "weighted_round_robin"}, dns="_http._tcp.app.test", type="SRV"))
    assert {sid: s["weight"] for sid, s in servers(inst).items()} == {heavy.id: 3, light.id: 1}
    assert served(inst.url, 40) == Counter({heavy.id: 30, light.id: 10})
    assert fallback.requests == []
    assert (dns.queries("a.app.test", "A") > 0) is not additional  # the additional section spares the question


def test_a_short_ttl_is_followed_before_the_refresh_period(dns: DnsServer, make_instance: Make,
                                                           same_port_upstreams: Callable[[int], list[UpstreamServer]]
                                                           ) -> None:
    two, three = same_port_upstreams(2)
    dns.zone.set_a("app.test", ["127.0.0.2"], ttl=1)
    inst = make_instance(config(dns, port=two.port, refresh="10m"))
    assert served(inst.url, 4) == Counter({two.id: 4})
    dns.zone.set_a("app.test", ["127.0.0.3"], ttl=1)
    # with a 10 minute refresh, only the 1 s TTL can bring this about within the deadline
    eventually(lambda: served(inst.url, 4) == Counter({three.id: 4}), "traffic follows the record after its TTL")
    assert dns.queries("app.test", "A") >= 2


def test_a_silent_dns_server_keeps_the_last_good_set_and_is_logged_once(
        dns: DnsServer, make_instance: Make, same_port_upstreams: Callable[[int], list[UpstreamServer]],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="fulcrum.discovery")
    two, three = same_port_upstreams(2)
    dns.zone.set_a("app.test", ["127.0.0.2", "127.0.0.3"], ttl=1)
    inst = make_instance(config(dns, port=two.port, timeout="1s"))
    dns.silent = True
    eventually(lambda: dns.dropped >= 3, "three lookups went unanswered")
    failures = [r.getMessage() for r in caplog.records if "lookup failed" in r.getMessage()]
    assert failures == ["app: DNS A app.test lookup failed (no answer within 1s); keeping the last 2 server(s) "
                        "until it answers"]
    assert served(inst.url, 10) == Counter({two.id: 5, three.id: 5})
    dns.silent = False
    eventually(lambda: any("answers again" in r.getMessage() for r in caplog.records), "the end of the streak is told")


def test_a_stopped_dns_server_keeps_the_last_good_set(dns: DnsServer, make_instance: Make,
                                                      same_port_upstreams: Callable[[int], list[UpstreamServer]],
                                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="fulcrum.discovery")
    two, three = same_port_upstreams(2)
    dns.zone.set_a("app.test", ["127.0.0.2", "127.0.0.3"], ttl=1)
    inst = make_instance(config(dns, port=two.port, timeout="1s"))
    dns.stop()
    eventually(lambda: any("lookup failed" in r.getMessage() for r in caplog.records), "the failure is logged")
    end = time.monotonic() + 3  # three refresh periods of failed lookups: every request still served
    while time.monotonic() < end:
        assert set(served(inst.url, 2)) == {two.id, three.id}
    assert set(servers(inst)) == {two.id, three.id}


def test_a_name_that_does_not_resolve_at_start_answers_503_then_fills(
        dns: DnsServer, make_instance: Make, same_port_upstreams: Callable[[int], list[UpstreamServer]],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="fulcrum.discovery")
    (two,) = same_port_upstreams(1)
    inst = make_instance(config(dns, port=two.port))
    assert served(inst.url, 2) == Counter({"503": 2})
    assert servers(inst) == {}
    assert any("gave no server (no such name (NXDOMAIN)); the group has no server (503)" in r.getMessage()
               for r in caplog.records)
    dns.zone.set_a("app.test", ["127.0.0.2"], ttl=1)
    eventually(lambda: served(inst.url, 2) == Counter({two.id: 2}), "the group fills once the name resolves")


def test_an_empty_answer_keeps_the_last_good_set(dns: DnsServer, make_instance: Make,
                                                 same_port_upstreams: Callable[[int], list[UpstreamServer]],
                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="fulcrum.discovery")
    (two,) = same_port_upstreams(1)
    dns.zone.set_a("app.test", ["127.0.0.2"], ttl=1)
    inst = make_instance(config(dns, port=two.port))
    dns.zone.remove("app.test")  # NXDOMAIN from now on
    eventually(lambda: any("NXDOMAIN" in r.getMessage() for r in caplog.records), "the empty answer is logged")
    assert served(inst.url, 4) == Counter({two.id: 4})


def test_a_reload_keeps_the_set_and_looks_up_a_changed_source_before_it_goes_in(
        dns: DnsServer, make_instance: Make, same_port_upstreams: Callable[[int], list[UpstreamServer]],
        make_upstream: Callable[..., UpstreamServer]) -> None:
    two, three = same_port_upstreams(2)
    dns.zone.set_a("app.test", ["127.0.0.2", "127.0.0.3"], ttl=30)
    inst = make_instance(config(dns, port=two.port))
    assert inst.api.post("/api/v1/reload").json() == {"status": "reloaded"}
    assert set(servers(inst)) == {two.id, three.id}  # the same file: the discovered set stays, no gap
    srv = make_upstream("srv")
    dns.zone.set_srv("_http._tcp.app.test", [(0, 1, srv.port, "srv.app.test.")], ttl=30)
    dns.zone.set_a("srv.app.test", ["127.0.0.1"], ttl=30)
    write_config(inst.path, config(dns, dns="_http._tcp.app.test", type="SRV"))
    assert inst.api.post("/api/v1/reload").json() == {"status": "reloaded"}
    assert set(servers(inst)) == {srv.id}  # looked up before the new config went in
    assert served(inst.url, 2) == Counter({srv.id: 2})


def test_admin_changes_over_a_discovered_group(dns: DnsServer, make_instance: Make,
                                               same_port_upstreams: Callable[[int], list[UpstreamServer]],
                                               make_upstream: Callable[..., UpstreamServer]) -> None:
    """A server deleted through the API stays out while DNS still lists it; one added stays beside the others."""
    two, three = same_port_upstreams(2)
    dns.zone.set_a("app.test", ["127.0.0.2", "127.0.0.3"], ttl=1)
    inst = make_instance(config(dns, port=two.port))
    assert inst.api.delete(f"/api/v1/upstreams/app/servers/{three.id}").status_code == 202
    eventually(lambda: set(servers(inst)) == {two.id}, "the deleted server leaves")
    extra = make_upstream("extra")
    added = inst.api.post("/api/v1/upstreams/app/servers", json={"url": extra.url, "weight": 2})
    assert added.status_code == 201 and added.json()["discovered"] is False
    asked = dns.queries("app.test", "A")
    eventually(lambda: dns.queries("app.test", "A") >= asked + 2, "two more lookups")
    listed = servers(inst)
    assert set(listed) == {two.id, extra.id}
    assert listed[two.id]["discovered"] and not listed[extra.id]["discovered"]
    eventually(lambda: set(served(inst.url, 6)) == {two.id, extra.id}, "the added server takes traffic once checked")
