"""The simulation module behind ``fulcrum simulate``."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from fulcrum.balancing import POLICIES
from fulcrum.balancing.simulate import format_report, server_id, simulate, simulate_config

SERVERS = [("a:80", 3), ("b:80", 1), ("c:80", 1)]


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_counts_add_up_and_repeat_with_the_seed(policy: str) -> None:
    sim = simulate(policy, SERVERS, requests=2000, keys=300, hash_key="cookie:sid", seed=7)
    assert sum(s.count for s in sim.servers) == 2000
    assert [s.id for s in sim.servers] == ["a:80", "b:80", "c:80"]
    assert sim == simulate(policy, SERVERS, requests=2000, keys=300, hash_key="cookie:sid", seed=7)
    if policy in ("ip_hash", "consistent_hash"):
        assert [m.removed for m in sim.moves] == ["a:80", "b:80", "c:80"]
        for m in sim.moves:
            assert m.keys == 300 and m.moved == m.owned  # a ring moves exactly the removed server's keys
        assert sum(m.owned for m in sim.moves) == 300
    else:
        assert sim.moves == ()


def test_shares_against_expectations() -> None:
    # Tolerance: exact for weighted round robin (10,000 is not a whole number of cycles: within 0.1 point);
    # within 3 points of the weight share for random over 10,000 requests.
    wrr = simulate("weighted_round_robin", SERVERS, requests=10_000)
    assert all(abs(s.share - s.expected) < 0.001 for s in wrr.servers)
    rnd = simulate("random", SERVERS, requests=10_000, seed=3)
    assert all(abs(s.share - s.expected) < 0.03 for s in rnd.servers)
    rr = simulate("round_robin", SERVERS, requests=9999)
    assert [s.expected for s in rr.servers] == [pytest.approx(1 / 3)] * 3
    assert {s.count for s in rr.servers} == {3333}


def test_load_aware_policies_see_load_and_shun_a_slow_server() -> None:
    for policy in ("least_conn", "p2c", "least_time"):
        sim = simulate(policy, [("a:80", 1), ("b:80", 1), ("c:80", 1)], requests=6000, slow={"a:80": 10.0})
        shares = {s.id: s.share for s in sim.servers}
        assert shares["a:80"] < 0.2, (policy, shares)


def test_report_text() -> None:
    sims = [
        simulate("consistent_hash", SERVERS, requests=1000, keys=200, hash_key="header:X-User", name="api"),
        simulate("least_conn", SERVERS, requests=1000, name="web"),
    ]
    text = format_report(sims)
    assert "api: consistent_hash, hash_key header:X-User; 1000 requests, seed 1" in text
    assert "web: least_conn; 1000 requests" in text
    assert "removing each server in turn, 200 keys" in text
    assert "Load model:" in text
    for s in sims[0].servers:
        assert s.id in text
    assert format_report(sims[1]).startswith("web: least_conn; 1000 requests")
    assert "no servers" in format_report(simulate("random", [], requests=10))


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="policy"):
        simulate("fastest", SERVERS)
    with pytest.raises(ValueError, match="hash_key"):
        simulate("consistent_hash", SERVERS, hash_key="query:x")


def test_server_ids_match_the_data_plane() -> None:
    assert server_id("http://127.0.0.1:5001") == "127.0.0.1:5001"
    assert server_id("http://app.internal") == "app.internal:80"
    assert server_id("http://[::1]:8080") == "[::1]:8080"
    assert server_id("10.0.0.1:81") == "10.0.0.1:81"


@dataclass
class _Server:
    url: str
    weight: int = 1


@dataclass
class _Group:
    balance: str
    servers: list[_Server] = field(default_factory=list)
    hash_key: str = "ip"


@dataclass
class _Config:
    upstreams: dict[str, _Group]


def test_simulate_config_reads_every_group() -> None:
    config = _Config(
        upstreams={
            "app": _Group("weighted_round_robin", [_Server("http://127.0.0.1:5001", 2), _Server("http://127.0.0.1:5002")]),
            "users": _Group(
                "consistent_hash", [_Server("http://10.0.0.1:80"), _Server("http://10.0.0.2:80")], hash_key="cookie:uid"
            ),
            "dns": _Group("round_robin", []),
        }
    )
    text = simulate_config(config, requests=300, keys=100, seed=2)
    assert "app: weighted_round_robin; 300 requests, seed 2" in text
    assert "127.0.0.1:5001       2       200" in text
    assert "users: consistent_hash, hash_key cookie:uid" in text
    assert "dns: no static servers" in text
