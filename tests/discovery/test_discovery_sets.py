"""The pure part of DNS discovery: records to server sets, the next lookup's time, the last good set."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from fulcrum.config import parse_config
from fulcrum.config.discovery import MIN_REFRESH, ServersFrom
from fulcrum.config.schema import ServerSpec
from fulcrum.state.discovery import (
    Discovered,
    Lookup,
    SrvRecord,
    found,
    from_addresses,
    from_srv,
    next_lookup,
    srv_weight,
)

A_SPEC = ServersFrom(dns="app.test", port=8080, refresh=10)
SRV_SPEC = ServersFrom(dns="_http._tcp.app.test", type="SRV", refresh=10)


def urls(servers: tuple[ServerSpec, ...]) -> list[tuple[str, int]]:
    return [(s.url, s.weight) for s in servers]


def test_addresses_become_servers_on_the_port_sorted_and_distinct() -> None:
    servers = from_addresses(["10.0.0.3", "10.0.0.2", "10.0.0.3", "fd00::1"], 8080)
    assert urls(servers) == [("http://10.0.0.2:8080", 1), ("http://10.0.0.3:8080", 1), ("http://[fd00::1]:8080", 1)]
    assert [s.address for s in from_addresses(["10.0.0.2"], 443, "https")] == ["10.0.0.2:443"]
    assert from_addresses(["10.0.0.2"], 443, "https")[0].tls


def test_srv_uses_the_lowest_priority_with_ports_and_weights() -> None:
    records = [
        SrvRecord(10, 3, 8001, "a.app.test."),
        SrvRecord(10, 1, 8002, "b.app.test."),
        SrvRecord(20, 50, 9000, "c.app.test."),  # a fallback: not used while priority 10 has servers
    ]
    addresses = {"a.app.test": ["10.0.0.1"], "b.app.test": ["10.0.0.2", "10.0.0.3"], "c.app.test": ["10.0.0.9"]}
    assert urls(from_srv(records, addresses)) == [
        ("http://10.0.0.1:8001", 3), ("http://10.0.0.2:8002", 1), ("http://10.0.0.3:8002", 1)]


def test_srv_weight_zero_counts_as_one_and_large_weights_are_capped() -> None:
    assert [srv_weight(w) for w in (0, 1, 7, 1000, 1001, 65535)] == [1, 1, 7, 1000, 1000, 1000]
    records = [SrvRecord(0, 0, 80, "a.test"), SrvRecord(0, 65535, 81, "a.test")]
    assert urls(from_srv(records, {"a.test": ["10.0.0.1"]})) == [
        ("http://10.0.0.1:80", 1), ("http://10.0.0.1:81", 1000)]


def test_srv_dot_target_and_targets_without_addresses_give_no_server() -> None:
    assert from_srv([SrvRecord(0, 5, 80, ".")], {}) == ()
    assert from_srv([SrvRecord(0, 5, 80, "gone.test")], {"gone.test": []}) == ()
    # the same address and port twice: one server, the larger weight
    twice = [SrvRecord(0, 2, 80, "a.test"), SrvRecord(0, 9, 80, "b.test")]
    assert urls(from_srv(twice, {"a.test": ["10.0.0.1"], "b.test": ["10.0.0.1"]})) == [("http://10.0.0.1:80", 9)]


@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 65535), st.integers(1, 65535), st.sampled_from("abc")),
                min_size=1, max_size=12))
def test_srv_servers_are_of_the_lowest_priority_with_valid_weights(raw: list[tuple[int, int, int, str]]) -> None:
    records = [SrvRecord(p, w, port, f"{t}.test") for p, w, port, t in raw]
    addresses = {"a.test": ["10.0.0.1"], "b.test": ["10.0.0.2"], "c.test": ["10.0.0.3"]}
    servers = from_srv(records, addresses)
    best = min(p for p, *_ in raw)
    allowed = {(addresses[f"{t}.test"][0], port) for p, _, port, t in raw if p == best}
    assert {(s.host, s.port) for s in servers} == allowed
    assert all(1 <= s.weight <= 1000 for s in servers)
    assert [s.address for s in servers] == sorted(s.address for s in servers)


def test_next_lookup_is_the_shorter_of_refresh_and_ttl_never_under_the_floor() -> None:
    servers = from_addresses(["10.0.0.1"], 80)
    assert next_lookup(A_SPEC, found(servers, 3.0)) == 3.0
    assert next_lookup(A_SPEC, found(servers, 300.0)) == 10.0
    assert next_lookup(A_SPEC, found(servers, 0.0)) == MIN_REFRESH == 1.0
    assert next_lookup(A_SPEC, Lookup("failed", reason="timeout")) == 10.0
    assert next_lookup(A_SPEC, Lookup("empty", reason="NXDOMAIN")) == 10.0


def test_a_good_answer_replaces_the_set_and_a_repeat_changes_nothing() -> None:
    sets = Discovered()
    first = sets.record("app", A_SPEC, found(from_addresses(["10.0.0.1", "10.0.0.2"], 8080), 5))
    assert first.changed and first.message is not None and "found 2 server(s)" in first.message
    assert sets.record("app", A_SPEC, found(from_addresses(["10.0.0.2", "10.0.0.1"], 8080), 5)).changed is False
    moved = sets.record("app", A_SPEC, found(from_addresses(["10.0.0.2", "10.0.0.3"], 8080), 5))
    assert moved.changed and moved.message is not None and "now 2 server(s)" in moved.message
    assert sets.ids("app", A_SPEC) == {"10.0.0.2:8080", "10.0.0.3:8080"}


def test_failures_and_empty_answers_keep_the_last_good_set_told_once_per_streak() -> None:
    sets = Discovered()
    sets.record("app", A_SPEC, found(from_addresses(["10.0.0.1"], 8080), 5))
    failed = sets.record("app", A_SPEC, Lookup("failed", reason="no answer within 2s"))
    assert not failed.changed and failed.problem
    assert failed.message is not None and "keeping the last 1 server(s)" in failed.message
    assert sets.record("app", A_SPEC, Lookup("failed", reason="no answer within 2s")).message is None
    assert sets.record("app", A_SPEC, Lookup("failed", reason="refused")).message is None
    empty = sets.record("app", A_SPEC, Lookup("empty", reason="no such name (NXDOMAIN)"))
    assert not empty.changed and empty.message is not None and "NXDOMAIN" in empty.message
    assert [s.address for s in sets.servers("app", A_SPEC)] == ["10.0.0.1:8080"]
    back = sets.record("app", A_SPEC, found(from_addresses(["10.0.0.1"], 8080), 5))
    assert not back.changed and back.message is not None and "answers again" in back.message
    assert sets.record("app", A_SPEC, Lookup("failed", reason="timeout")).message is not None  # a new streak


def test_a_group_never_answered_has_no_server() -> None:
    sets = Discovered()
    outcome = sets.record("app", A_SPEC, Lookup("empty", reason="no such name (NXDOMAIN)"))
    assert outcome.message is not None and "no server (503)" in outcome.message
    assert sets.servers("app", A_SPEC) == ()


def test_fill_puts_the_sets_into_the_config_and_retain_forgets_old_targets() -> None:
    config = parse_config({"upstreams": {
        "app": {"servers_from": A_SPEC.model_dump()},
        "web": {"servers": ["http://127.0.0.1:5001"]},
    }, "routes": [{"match": {"path_prefix": "/"}, "upstream": "app"}]})
    sets = Discovered()
    assert sets.fill(config).upstreams["app"].servers == ()
    sets.record("app", A_SPEC, found(from_addresses(["10.0.0.1"], 8080), 5))
    filled = sets.fill(config)
    assert [s.url for s in filled.upstreams["app"].servers] == ["http://10.0.0.1:8080"]
    assert filled.upstreams["web"] is config.upstreams["web"]
    assert config.upstreams["app"].servers == ()  # the file's config is left as it is
    # another port is another target: no servers until it answers; the old set stays until retain
    other = A_SPEC.model_copy(update={"port": 9090})
    assert sets.servers("app", other) == ()
    assert sets.known("app", A_SPEC)
    # a change of refresh keeps the target
    assert sets.servers("app", A_SPEC.model_copy(update={"refresh": 60.0})) != ()
    sets.retain(parse_config({"upstreams": {"app": {"servers_from": other.model_dump()}}}))
    assert not sets.known("app", A_SPEC)
