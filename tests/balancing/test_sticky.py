"""Sticky cookies: opaque tokens, lookup among eligible servers, Set-Cookie values."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fulcrum.balancing import sticky_lookup, sticky_set_cookie, sticky_token
from fulcrum.balancing.simulate import SimMember


@given(st.text(min_size=1, max_size=40))
def test_token_is_short_hex_stable_and_opaque(server_id: str) -> None:
    token = sticky_token(server_id)
    assert re.fullmatch(r"[0-9a-f]{16}", token)
    assert sticky_token(server_id) == token
    if len(server_id) > 2:
        assert server_id not in token


def test_token_is_fixed_across_instances() -> None:
    # A recorded value: any change would break every cookie already handed out.
    assert sticky_token("10.0.0.1:8080") == "42e602d3f0fdf2ae"
    assert sticky_token("10.0.0.1:8080") != sticky_token("10.0.0.2:8080")
    assert "10.0.0.1" not in sticky_token("10.0.0.1:8080")


def test_lookup_finds_only_eligible_servers() -> None:
    servers = tuple(SimMember(id=f"10.0.0.{i}:80") for i in range(1, 5))
    for s in servers:
        assert sticky_lookup(sticky_token(s.id), servers) is s
    without_first = servers[1:]
    assert sticky_lookup(sticky_token(servers[0].id), without_first) is None
    assert sticky_lookup("not-a-token", servers) is None
    assert sticky_lookup("", ()) is None


def test_lookup_sees_a_new_sequence_with_the_same_contents() -> None:
    a = [SimMember(id="x:1"), SimMember(id="y:1")]
    b = [SimMember(id="x:1"), SimMember(id="y:1")]  # rebuilt servers: same ids, new objects
    assert sticky_lookup(sticky_token("y:1"), a) is a[1]
    assert sticky_lookup(sticky_token("y:1"), b) is b[1]


def test_lookup_cache_stays_bounded() -> None:
    for i in range(200):
        servers = (SimMember(id=f"h{i}:80"),)
        assert sticky_lookup(sticky_token(f"h{i}:80"), servers) is servers[0]


def test_set_cookie_values() -> None:
    token = sticky_token("10.0.0.1:80")
    assert sticky_set_cookie("FULCRUM_SRV", token, None) == f"FULCRUM_SRV={token}; Path=/; HttpOnly"
    assert sticky_set_cookie("srv", token, 3600) == f"srv={token}; Path=/; HttpOnly; Max-Age=3600"
    assert sticky_set_cookie("srv", token, 0.5) == f"srv={token}; Path=/; HttpOnly; Max-Age=1"
    assert sticky_set_cookie("srv", token, 0) == f"srv={token}; Path=/; HttpOnly"


@pytest.mark.parametrize("name", ["", "a b", "a;b", "a=b", "é"])
def test_bad_cookie_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="cookie name"):
        sticky_set_cookie(name, "00", None)
