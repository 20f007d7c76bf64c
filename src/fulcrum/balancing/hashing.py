"""Stable hashing and request keys for the hash policies.

Every hash here is blake2b from ``hashlib``, never Python's ``hash()`` (salted
per process), so two Fulcrum instances, or a worker and its restart, with the
same server list send every key to the same server.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Mapping

#: Hash key specs: "ip", "path", "header:NAME", "cookie:NAME".
HASH_KEY_KINDS = ("ip", "path", "header", "cookie")

_SPACE = float(1 << 64)


def hash64(data: bytes) -> int:
    """A stable, well-mixed 64-bit hash of ``data``."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def unit_hash(data: bytes) -> float:
    """A stable hash of ``data`` mapped to [0, 1)."""
    return hash64(data) / _SPACE


def parse_hash_key(spec: str) -> tuple[str, str]:
    """Split and check a hash key spec: ``("ip", "")``, ``("header", "X-User")``...

    Raises ``ValueError`` for anything else, so configuration can reject it early.
    """
    kind, sep, name = spec.partition(":")
    kind = kind.strip().lower()
    name = name.strip()
    if kind in ("ip", "path") and not sep:
        return kind, ""
    if kind in ("header", "cookie") and name:
        return kind, name
    raise ValueError(f"hash_key must be ip, path, header:NAME or cookie:NAME, got {spec!r}")


def hash_key_value(
    spec: str,
    client_ip: str,
    path: str,
    headers: Mapping[str, str],
    cookies: Mapping[str, str],
) -> bytes:
    """The bytes a request hashes on, per ``spec``; the client IP when that key is missing or empty.

    Header names match case-insensitively; cookie names exactly.
    """
    if spec == "ip":
        return client_ip.encode("utf-8", "surrogateescape")
    kind, name = parse_hash_key(spec)
    value: str | None = None
    if kind == "path":
        value = path
    elif kind == "header":
        value = headers.get(name)
        if value is None:
            value = headers.get(name.lower())
        if value is None:
            lowered = name.lower()
            value = next((v for k, v in headers.items() if k.lower() == lowered), None)
    elif kind == "cookie":
        value = cookies.get(name)
    if not value:
        return client_ip.encode("utf-8", "surrogateescape")
    return value.encode("utf-8", "surrogateescape")


def normalize_ip(ip: str) -> bytes:
    """One spelling per address: IPv4 as dotted quad (also when IPv4-mapped IPv6), IPv6 compressed.

    The whole address counts (/32 for IPv4, /128 for IPv6). Something that is
    not an address is used as it is.
    """
    if ":" not in ip:
        return ip.encode("utf-8", "surrogateescape")
    try:
        address = ipaddress.ip_address(ip.strip("[]"))
    except ValueError:
        return ip.encode("utf-8", "surrogateescape")
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.compressed.encode("ascii")
