"""Allow and deny lists of networks, and which address a request is judged by behind trusted proxies.

IPv4-mapped IPv6 addresses (``::ffff:1.2.3.4``, what a dual-stack socket
reports for an IPv4 peer) are judged as the IPv4 address, and a mapped
network such as ``::ffff:10.0.0.0/104`` as ``10.0.0.0/8``, so one IPv4 list
covers both.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def parse_address(text: str) -> Address | None:
    """The address in ``text``, IPv4-mapped IPv6 turned into IPv4; None when it is not an IP address."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _plain(network: Network) -> Network:
    if isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= 96 and network.subnet_of(_MAPPED):
        mapped = int(network.network_address) & 0xFFFFFFFF
        return ipaddress.IPv4Network((mapped, network.prefixlen - 96))
    return network


class NetworkSet(tuple[Network, ...]):
    """An immutable sequence of networks that answers "is this address in one of them" quickly.

    Networks are grouped by prefix length, so a lookup costs one set probe per
    distinct prefix length in the list, however long the list. Build one when
    the config is loaded and pass it where a ``Sequence[Network]`` is expected.
    """

    _v4: tuple[tuple[int, frozenset[int]], ...]
    _v6: tuple[tuple[int, frozenset[int]], ...]

    def __new__(cls, networks: Iterable[Network] = ()) -> NetworkSet:
        self = super().__new__(cls, networks)
        by_version: dict[int, dict[int, set[int]]] = {4: {}, 6: {}}
        for network in self:
            plain = _plain(network)
            by_version[plain.version].setdefault(int(plain.netmask), set()).add(int(plain.network_address))
        self._v4 = tuple((mask, frozenset(nets)) for mask, nets in by_version[4].items())
        self._v6 = tuple((mask, frozenset(nets)) for mask, nets in by_version[6].items())
        return self

    def contains(self, address: Address) -> bool:
        """Whether ``address`` (as returned by ``parse_address``) is in one of the networks."""
        value = int(address)
        return any(value & mask in nets for mask, nets in (self._v4 if address.version == 4 else self._v6))


def network_set(networks: Sequence[Network]) -> NetworkSet:
    """``networks`` as a ``NetworkSet``, built only when it is not one already."""
    return networks if isinstance(networks, NetworkSet) else NetworkSet(networks)


class IpFilter:
    """Decide whether a client address may pass: deny wins; a non-empty allow list must contain the address.

    An address that does not parse is never allowed.
    """

    __slots__ = ("_allow", "_allow_all", "_deny")

    def __init__(self, allow: Sequence[Network], deny: Sequence[Network]) -> None:
        self._allow = network_set(allow)
        self._deny = network_set(deny)
        self._allow_all = not self._allow

    def allowed(self, ip: str) -> bool:
        """Whether a request from ``ip`` may pass."""
        address = parse_address(ip)
        if address is None or self._deny.contains(address):
            return False
        return self._allow_all or self._allow.contains(address)


def _is_port(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _forwarded_entry(text: str) -> Address | None:
    # Some proxies append a port: "1.2.3.4:5678", "[2001:db8::1]:443", "[2001:db8::1]".
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or not (end == len(text) - 1 or (text[end + 1] == ":" and _is_port(text[end + 2 :]))):
            return None
        address = parse_address(text[1:end])
        return address if address is None or address.version == 6 else None
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        if not _is_port(port):
            return None
        address = parse_address(host)
        return address if address is None or address.version == 4 else None
    return parse_address(text)


def client_address(peer: str, forwarded_for: str | None, trusted: Sequence[Network]) -> str:
    """The address to judge a request by: the peer, or when the peer is a trusted proxy, the X-Forwarded-For
    entry it vouches for.

    The list is walked from the right (the entry the nearest proxy added),
    skipping trusted addresses; the first untrusted one is the client. An
    entry that is not an address stops the walk at the last trusted address
    seen, since what lies left of it cannot be believed. When every entry is
    trusted, the leftmost is returned. The peer is returned as given, an entry
    in its normal form (no port or brackets, IPv4-mapped as IPv4, IPv6
    compressed). Empty entries (from joining empty headers) are skipped.
    """
    if not forwarded_for:
        return peer
    trusted_set = network_set(trusted)
    address = parse_address(peer)
    if address is None or not trusted_set.contains(address):
        return peer
    last_trusted = peer
    for entry in reversed(forwarded_for.split(",")):
        entry = entry.strip()
        if not entry:
            continue
        address = _forwarded_entry(entry)
        if address is None:
            return last_trusted
        if not trusted_set.contains(address):
            return str(address)
        last_trusted = str(address)
    return last_trusted
