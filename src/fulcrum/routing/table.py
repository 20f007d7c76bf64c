"""Matching requests to routes by host and path prefix; first match in order wins."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Route:
    """One route: what it matches and the upstream group that serves it.

    ``host`` is lower-cased without port; ``*.example.com`` matches subdomains
    of example.com but not the apex. ``None`` matches any host.
    """

    upstream: str
    path_prefix: bytes = b"/"
    host: bytes | None = None
    index: int = 0

    def matches(self, host: bytes, path: bytes) -> bool:
        pattern = self.host
        if pattern is not None:
            if pattern.startswith(b"*."):
                if not (host.endswith(pattern[1:]) and len(host) > len(pattern) - 1):
                    return False
            elif host != pattern:
                return False
        return path.startswith(self.path_prefix)

    @property
    def name(self) -> str:
        host = self.host.decode() if self.host else "*"
        return f"{host}{self.path_prefix.decode()}"


class RouteTable:
    """Routes tried in order.

    ``catch_all`` is the first route when it matches every request: callers can skip working out
    the host and path then.
    """

    __slots__ = ("catch_all", "routes", "uses_host")

    def __init__(self, routes: Sequence[Route]) -> None:
        self.routes = tuple(routes)
        first = self.routes[0] if self.routes else None
        self.uses_host = any(r.host is not None for r in self.routes)
        self.catch_all = first if first is not None and first.host is None and first.path_prefix == b"/" else None

    def match(self, host: bytes, path: bytes) -> Route | None:
        if self.catch_all is not None:
            return self.catch_all
        for route in self.routes:
            if route.matches(host, path):
                return route
        return None


def target_path(target: bytes) -> bytes:
    """The path of a request target (origin-form or absolute-form), without the query."""
    if target[:1] != b"/":
        scheme = target.find(b"://")
        if scheme > 0:
            slash = target.find(b"/", scheme + 3)
            target = target[slash:] if slash >= 0 else b"/"
        elif target == b"*":
            return b"*"
    q = target.find(b"?")
    return target[:q] if q >= 0 else target
