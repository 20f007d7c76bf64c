"""Allow/deny lists and the client address behind trusted proxies."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fulcrum.middleware.policy.ipfilter import IpFilter, Network, NetworkSet, client_address, parse_address


def nets(*texts: str) -> list[Network]:
    return [ipaddress.ip_network(t) for t in texts]


def test_empty_lists_allow_every_address_but_garbage() -> None:
    f = IpFilter([], [])
    assert f.allowed("1.2.3.4")
    assert f.allowed("2001:db8::1")
    for bad in ("", "nope", "1.2.3", "1.2.3.4.5", "256.1.1.1", "1.2.3.4:80", "[::1]", " 1.2.3.4"):
        assert not f.allowed(bad), bad


def test_allow_list_must_contain_the_address() -> None:
    f = IpFilter(nets("10.0.0.0/8", "192.168.1.7/32", "2001:db8::/32"), [])
    assert f.allowed("10.255.0.1")
    assert f.allowed("192.168.1.7")
    assert not f.allowed("192.168.1.8")
    assert f.allowed("2001:db8:1::5")
    assert not f.allowed("2001:db9::1")
    assert not f.allowed("11.0.0.1")


def test_deny_wins_over_allow() -> None:
    f = IpFilter(nets("10.0.0.0/8"), nets("10.1.0.0/16", "::/0"))
    assert f.allowed("10.2.3.4")
    assert not f.allowed("10.1.3.4")
    assert not f.allowed("2001:db8::1")


def test_deny_only() -> None:
    f = IpFilter([], nets("203.0.113.0/24"))
    assert not f.allowed("203.0.113.9")
    assert f.allowed("203.0.114.9")


def test_ipv4_mapped_addresses_are_judged_as_ipv4() -> None:
    f = IpFilter(nets("10.0.0.0/8"), nets("10.9.0.0/16"))
    assert f.allowed("::ffff:10.1.2.3")
    assert not f.allowed("::ffff:10.9.2.3")
    assert not f.allowed("::ffff:11.1.2.3")
    assert parse_address("::ffff:10.1.2.3") == ipaddress.IPv4Address("10.1.2.3")


def test_ipv4_mapped_networks_are_judged_as_ipv4() -> None:
    f = IpFilter(nets("::ffff:10.0.0.0/104"), [])
    assert f.allowed("10.1.2.3")
    assert f.allowed("::ffff:10.1.2.3")
    assert not f.allowed("11.1.2.3")


def test_host_and_all_networks() -> None:
    f = IpFilter(nets("0.0.0.0/0"), nets("8.8.8.8/32"))
    assert f.allowed("1.1.1.1")
    assert not f.allowed("8.8.8.8")
    assert not f.allowed("::1")  # an IPv4 allow list says nothing for IPv6


def test_network_set_is_a_sequence() -> None:
    listed = nets("10.0.0.0/8", "::1/128")
    s = NetworkSet(listed)
    assert list(s) == listed and len(s) == 2 and s[1] == listed[1]
    assert s.contains(ipaddress.IPv6Address("::1"))
    assert not NetworkSet().contains(ipaddress.IPv4Address("10.0.0.1"))


v4_networks = st.builds(
    lambda a, p: ipaddress.IPv4Network((a, p), strict=False),
    st.integers(0, 2**32 - 1),
    st.integers(0, 32),
)
v6_networks = st.builds(
    lambda a, p: ipaddress.IPv6Network((a, p), strict=False),
    st.integers(0, 2**128 - 1),
    st.integers(0, 128),
).filter(lambda n: not (n.prefixlen >= 96 and n.subnet_of(ipaddress.IPv6Network("::ffff:0:0/96"))))
networks = st.lists(st.one_of(v4_networks, v6_networks), max_size=8)


def address_near(data: st.DataObject, pool: list[Network]) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    # Half the time an address inside a listed network, so both answers get exercised.
    if len(pool) > 0 and data.draw(st.booleans()):
        net = data.draw(st.sampled_from(pool))
        return net[data.draw(st.integers(0, min(net.num_addresses - 1, 2**64)))]
    if data.draw(st.booleans()):
        return ipaddress.IPv4Address(data.draw(st.integers(0, 2**32 - 1)))
    address = ipaddress.IPv6Address(data.draw(st.integers(0, 2**128 - 1)))
    return address if address.ipv4_mapped is None else address.ipv4_mapped


@given(allow=networks, deny=networks, data=st.data())
def test_agrees_with_naive_membership(allow: list[Network], deny: list[Network], data: st.DataObject) -> None:
    address = address_near(data, allow + deny)
    naive = not any(address in n for n in deny if n.version == address.version) and (
        not allow or any(address in n for n in allow if n.version == address.version)
    )
    assert IpFilter(allow, deny).allowed(str(address)) is naive


TRUSTED = nets("10.0.0.0/8", "fd00::/8")


@pytest.mark.parametrize(
    ("peer", "xff", "expected"),
    [
        ("1.2.3.4", "5.6.7.8", "1.2.3.4"),  # the peer is not a proxy we trust: its header means nothing
        ("10.0.0.1", None, "10.0.0.1"),
        ("10.0.0.1", "", "10.0.0.1"),
        ("10.0.0.1", "5.6.7.8", "5.6.7.8"),
        ("10.0.0.1", "9.9.9.9, 5.6.7.8", "5.6.7.8"),  # the leftmost could be forged by the client
        ("10.0.0.1", "9.9.9.9, 5.6.7.8, 10.0.0.2", "5.6.7.8"),
        ("10.0.0.1", "9.9.9.9,5.6.7.8,10.0.0.2,10.0.0.3", "5.6.7.8"),
        ("10.0.0.1", "10.0.0.7, 10.0.0.2", "10.0.0.7"),  # all trusted: the leftmost
        ("10.0.0.1", "garbage, 10.0.0.2", "10.0.0.2"),  # garbage stops the walk at the last trusted
        ("10.0.0.1", "5.6.7.8, garbage", "10.0.0.1"),
        ("10.0.0.1", "5.6.7.8, 1.2.3.4 5.6.7.8", "10.0.0.1"),
        ("10.0.0.1", "unknown", "10.0.0.1"),
        ("10.0.0.1", "5.6.7.8, , ", "5.6.7.8"),  # empty elements are ignored
        ("10.0.0.1", "5.6.7.8:4711", "5.6.7.8"),
        ("10.0.0.1", "[2001:db8::1]:443, 10.0.0.2", "2001:db8::1"),
        ("10.0.0.1", "[2001:DB8::1]", "2001:db8::1"),
        ("10.0.0.1", "2001:db8::1", "2001:db8::1"),
        ("10.0.0.1", "::ffff:5.6.7.8", "5.6.7.8"),
        ("10.0.0.1", "5.6.7.8:http", "10.0.0.1"),
        ("10.0.0.1", "[2001:db8::1]443", "10.0.0.1"),
        ("10.0.0.1", "[5.6.7.8]", "10.0.0.1"),
        ("10.0.0.1", "[2001:db8::1", "10.0.0.1"),
        ("fd00::5", "5.6.7.8", "5.6.7.8"),
        ("::ffff:10.0.0.1", "5.6.7.8", "5.6.7.8"),  # a dual-stack socket's view of a trusted IPv4 proxy
        ("not-an-ip", "5.6.7.8", "not-an-ip"),
    ],
)
def test_client_address(peer: str, xff: str | None, expected: str) -> None:
    assert client_address(peer, xff, TRUSTED) == expected
    assert client_address(peer, xff, NetworkSet(TRUSTED)) == expected


def test_client_address_trusting_nobody_is_the_peer() -> None:
    assert client_address("10.0.0.1", "5.6.7.8", []) == "10.0.0.1"


@given(st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=10), st.integers(0, 2**32 - 1))
def test_client_address_is_the_rightmost_untrusted(chain: list[int], peer: int) -> None:
    trusted = nets("10.0.0.0/8")
    entries = [str(ipaddress.IPv4Address(a)) for a in chain]
    peer_text = str(ipaddress.IPv4Address(peer))
    result = client_address(peer_text, ", ".join(entries), trusted)
    if ipaddress.IPv4Address(peer) not in trusted[0]:
        assert result == peer_text
        return
    untrusted = [e for e in entries if ipaddress.IPv4Address(e) not in trusted[0]]
    assert result == (untrusted[-1] if untrusted else entries[0])
