"""Hash policies: consistent hashing on a weighted ring, ip_hash, and request keys."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections import Counter

import pytest
from balancing_fakes import members
from hypothesis import given, settings
from hypothesis import strategies as st

from fulcrum.balancing import make_balancer
from fulcrum.balancing.base import PickContext
from fulcrum.balancing.consistent_hash import MAX_RING_POINTS, POINTS_PER_WEIGHT, HashRing, IpHash, points_per_weight
from fulcrum.balancing.hashing import hash_key_value, normalize_ip, parse_hash_key
from fulcrum.balancing.simulate import SimMember, synthetic_context

KEYS = [synthetic_context(k, "header:X-User") for k in range(10_000)]


def _servers(n: int) -> list[SimMember]:
    return [SimMember(id=f"10.0.0.{i + 1}:8080") for i in range(n)]


def _mapping(ring: HashRing[SimMember], servers: list[SimMember], keys: list[PickContext]) -> list[str]:
    return [ring.pick(ctx, servers).id for ctx in keys]  # type: ignore[union-attr]


@pytest.mark.parametrize("n", [3, 5, 8, 10])
def test_removing_one_of_n_moves_at_most_1_2_over_n(n: int) -> None:
    # Tolerance: each removal moves at most 1.2/N of 10,000 keys (ideal: about 1/N).
    servers = _servers(n)
    before = _mapping(HashRing(servers), servers, KEYS)
    for gone in servers:
        rest = [s for s in servers if s is not gone]
        after = _mapping(HashRing(rest), rest, KEYS)
        moved = sum(1 for a, b in zip(before, after, strict=True) if a != b)
        assert moved <= 1.2 * len(KEYS) / n
        assert all(a == b for a, b in zip(before, after, strict=True) if a != gone.id)


ids_strategy = st.lists(
    st.text(alphabet="abcdefghij0123456789.:", min_size=1, max_size=12), min_size=2, max_size=8, unique=True
)


@settings(max_examples=30)
@given(ids_strategy, st.data())
def test_only_the_removed_servers_keys_move(ids: list[str], data: st.DataObject) -> None:
    servers = [SimMember(id=i, weight=data.draw(st.integers(1, 3))) for i in ids]
    keys = KEYS[:500]
    before = _mapping(HashRing(servers), servers, keys)
    gone = data.draw(st.sampled_from(ids))
    rest = [s for s in servers if s.id != gone]
    after = _mapping(HashRing(rest), rest, keys)
    for was, now in zip(before, after, strict=True):
        assert was in (now, gone)


@settings(max_examples=30)
@given(ids_strategy, st.data())
def test_adding_a_server_moves_keys_only_to_it(ids: list[str], data: st.DataObject) -> None:
    servers = [SimMember(id=i) for i in ids]
    new = data.draw(st.sampled_from(ids))
    old = [s for s in servers if s.id != new]
    keys = KEYS[:500]
    before = _mapping(HashRing(old), old, keys)
    after = _mapping(HashRing(servers), servers, keys)
    for was, now in zip(before, after, strict=True):
        assert now in (was, new)


def test_same_servers_in_any_order_map_keys_alike() -> None:
    servers = _servers(6)
    shuffled = [servers[i] for i in (3, 0, 5, 1, 4, 2)]
    assert _mapping(HashRing(servers), servers, KEYS[:2000]) == _mapping(HashRing(shuffled), shuffled, KEYS[:2000])


_OTHER_PROCESS = """
import hashlib
from fulcrum.balancing.consistent_hash import HashRing
from fulcrum.balancing.simulate import SimMember, synthetic_context
servers = [SimMember(id=f"10.0.0.{i + 1}:8080") for i in range(5)]
ring = HashRing(servers)
ids = ",".join(ring.pick(synthetic_context(k, "header:X-User"), servers).id for k in range(2000))
print(hashlib.sha256(ids.encode()).hexdigest())
"""


def test_another_process_with_another_hash_seed_agrees() -> None:
    servers = _servers(5)
    mine = hashlib.sha256(",".join(_mapping(HashRing(servers), servers, KEYS[:2000])).encode()).hexdigest()
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", _OTHER_PROCESS], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == mine


def test_ring_share_follows_weight() -> None:
    # Tolerance: each server's share of 10,000 keys within 15% (relative) of its weight's share.
    servers = [SimMember(id=f"app-{i}.internal:80", weight=w) for i, w in enumerate([1, 2, 3, 4])]
    counts = Counter(_mapping(HashRing(servers), servers, KEYS))
    for s in servers:
        assert abs(counts[s.id] / len(KEYS) / (s.weight / 10) - 1) <= 0.15


@given(st.data())
def test_exclude_walks_on_along_the_ring(data: st.DataObject) -> None:
    servers = _servers(data.draw(st.integers(1, 6)))
    ids = [s.id for s in servers]
    exclude = frozenset(data.draw(st.lists(st.sampled_from(ids), unique=True)))
    ring = HashRing(servers)
    for ctx in KEYS[:50]:
        retry = PickContext(hash_key=ctx.hash_key, exclude=exclude)
        picked = ring.pick(retry, servers)
        if exclude == set(ids):
            assert picked is None
        else:
            assert picked is not None and picked.id not in exclude
            assert ring.pick(retry, servers) is picked  # a retry of the same key goes to the same next server
            first = ring.pick(PickContext(hash_key=ctx.hash_key), servers)
            assert first is not None
            if first.id not in exclude:
                assert picked is first


def test_weight_zero_owns_nothing_and_empty_ring() -> None:
    servers = members([0, 1])
    assert {s.id for s in map(lambda c: HashRing(servers).pick(c, servers), KEYS[:200]) if s} == {"s1"}
    assert HashRing(servers).pick(PickContext(hash_key=b"k", exclude=frozenset({"s1"})), servers) is None
    assert HashRing([]).pick(PickContext(hash_key=b"k"), []) is None


def test_key_from_the_context_when_not_extracted() -> None:
    servers = _servers(4)
    ring = HashRing(servers, hash_key="path")
    for k in range(50):
        path = f"/p/{k}"
        assert ring.pick(PickContext(path=path), servers) is ring.pick(PickContext(hash_key=path.encode()), servers)


def test_hash_key_value_specs() -> None:
    headers = {"x-user": "alice", "host": "h"}
    cookies = {"sid": "c1", "SID": "c2"}
    assert hash_key_value("ip", "10.1.2.3", "/a", headers, cookies) == b"10.1.2.3"
    assert hash_key_value("path", "10.1.2.3", "/a", headers, cookies) == b"/a"
    assert hash_key_value("header:X-User", "10.1.2.3", "/a", headers, cookies) == b"alice"
    assert hash_key_value("header:X-USER", "10.1.2.3", "/a", {"X-User": "bob"}, cookies) == b"bob"
    assert hash_key_value("cookie:sid", "10.1.2.3", "/a", headers, cookies) == b"c1"
    assert hash_key_value("cookie:SID", "10.1.2.3", "/a", headers, cookies) == b"c2"
    # Missing or empty key: the client IP.
    assert hash_key_value("header:X-Missing", "10.1.2.3", "/a", headers, cookies) == b"10.1.2.3"
    assert hash_key_value("header:X-User", "10.1.2.3", "/a", {"x-user": ""}, cookies) == b"10.1.2.3"
    assert hash_key_value("cookie:nope", "::1", "/a", headers, cookies) == b"::1"


@pytest.mark.parametrize("spec", ["", "ip:x", "header", "header:", "cookie: ", "query:a", "path:x"])
def test_bad_hash_key_specs_are_refused(spec: str) -> None:
    with pytest.raises(ValueError, match="hash_key"):
        parse_hash_key(spec)
    with pytest.raises(ValueError, match="hash_key"):
        make_balancer("consistent_hash", [], hash_key=spec)


def test_ip_normalization() -> None:
    assert normalize_ip("192.0.2.7") == b"192.0.2.7"
    assert normalize_ip("2001:DB8:0:0:0:0:0:1") == normalize_ip("2001:db8::1") == b"2001:db8::1"
    assert normalize_ip("[2001:db8::1]") == b"2001:db8::1"
    assert normalize_ip("::ffff:192.0.2.7") == b"192.0.2.7"
    assert normalize_ip("not:an-ip") == b"not:an-ip"


def test_ip_hash_is_stable_per_address_and_spreads() -> None:
    # Tolerance: 3,000 distinct IPv4 clients over 3 equal servers, each share within 20% (relative) of 1/3.
    servers = _servers(3)
    policy = IpHash(servers)
    other = IpHash(list(reversed(servers)))
    counts: Counter[str] = Counter()
    for k in range(3000):
        ip = f"198.{k // 256 % 256}.{k % 256}.{(k * 7) % 256}"
        picked = policy.pick(PickContext(client_ip=ip, hash_key=b"ignored"), servers)
        assert picked is not None
        assert policy.pick(PickContext(client_ip=ip), servers) is picked
        assert other.pick(PickContext(client_ip=ip), list(reversed(servers))) is picked
        counts[picked.id] += 1
    assert all(abs(c / 3000 - 1 / 3) <= 1 / 15 for c in counts.values())


def test_ip_hash_treats_ipv6_spellings_and_mapped_ipv4_alike() -> None:
    servers = _servers(5)
    policy = IpHash(servers)

    def pick(ip: str) -> SimMember | None:
        return policy.pick(PickContext(client_ip=ip), servers)

    for k in range(200):
        assert pick(f"2001:db8::{k:x}") is pick(f"2001:0db8:0000:0000:0000:0000:0000:{k:04x}")
        assert pick(f"::ffff:10.0.0.{k}") is pick(f"10.0.0.{k}")
    assert len({pick(f"2001:db8::{k:x}") for k in range(200)}) == 5  # the whole /128 counts, not a prefix
    assert policy.pick(PickContext(hash_key=b"fallback"), servers) is not None


def test_heavy_groups_keep_the_ring_bounded_and_weighted() -> None:
    # Tolerance: shares within 15% (relative) of weight shares over 10,000 keys.
    servers = [SimMember(id=f"big-{i}:80", weight=w) for i, w in enumerate([1000, 500, 500])]
    ring = HashRing(servers)
    assert points_per_weight(2000) * 2000 <= MAX_RING_POINTS
    counts = Counter(_mapping(ring, servers, KEYS))
    for s in servers:
        assert abs(counts[s.id] / len(KEYS) / (s.weight / 2000) - 1) <= 0.15
    assert points_per_weight(10) == POINTS_PER_WEIGHT
    assert points_per_weight(10**9) == 1
