"""Header policy: hop-by-hop removal, forwarding headers, request ids.

Names are compared lower-cased as bytes, as httptools hands them over.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Iterable
from typing import Final

#: Removed in both directions (RFC 9110 7.6.1), plus what Connection names.
HOP_BY_HOP = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade")
)

_REQUEST_ID: Final = re.compile(rb"[\x21-\x7e]{1,200}")


def valid_request_id(value: bytes) -> bool:
    """1-200 visible ASCII characters (DESIGN 4: kept when valid, else replaced)."""
    return _REQUEST_ID.fullmatch(value) is not None


class RequestIds:
    """Generates unique request ids cheaply: a random per-process prefix and a counter, as 32 hex digits.

    The counter's hex digits but the last two are formatted once per 256 ids; each id is then two joins.
    """

    __slots__ = ("block", "n", "prefix")

    def __init__(self) -> None:
        self.prefix = os.urandom(8).hex().encode("ascii")
        self.n = 0
        self.block = b""  # the prefix and the counter's hex digits but the last two

    def next(self) -> bytes:
        n = self.n + 1
        self.n = n
        low = n & 255
        if low == 0 or not self.block:
            self.block = self.prefix + b"%014x" % (n >> 8)
        return self.block + _HEX2[low]


_HEX2: Final = tuple(b"%02x" % i for i in range(256))


def connection_tokens(value: bytes) -> set[bytes]:
    """The lower-cased option names in a Connection header value."""
    return {t.strip().lower() for t in value.split(b",") if t.strip()}


def split_host(value: bytes) -> bytes:
    """The host of a Host header value, lower-cased, without port (IPv6 literals keep their brackets)."""
    host = value.strip().lower()
    if host.startswith(b"["):
        end = host.find(b"]")
        return host[: end + 1] if end > 0 else host
    colon = host.rfind(b":")
    return host[:colon] if colon >= 0 else host


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def is_trusted(client_ip: str, trusted: Iterable[Network]) -> bool:
    """Whether a client address lies in one of the trusted proxy networks."""
    try:
        addr = ipaddress.ip_address(client_ip)
    except ValueError:
        return False
    return any(addr in net for net in trusted)


def forwarded_node(ip: str) -> bytes:
    """An RFC 7239 node: IPv6 addresses quoted and bracketed."""
    if ":" in ip:
        return b'"[' + ip.encode("ascii") + b']"'
    return ip.encode("ascii")
