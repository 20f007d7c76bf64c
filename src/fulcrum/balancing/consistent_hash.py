"""Hash policies on a ring of virtual nodes: ``consistent_hash`` and ``ip_hash``."""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Sequence
from functools import lru_cache
from typing import Generic

from fulcrum.balancing.base import PickContext, S
from fulcrum.balancing.hashing import hash64, hash_key_value, normalize_ip, parse_hash_key, unit_hash

#: Ring points per unit of weight (nginx uses the same count per weight unit for its consistent hash).
POINTS_PER_WEIGHT = 160
#: Most points on one ring; groups of very large total weight get fewer points per unit of weight.
MAX_RING_POINTS = 1 << 18


@lru_cache(maxsize=4096)
def server_points(server_id: str, count: int) -> tuple[int, ...]:
    """The first ``count`` ring positions of one server: stable 64-bit points from its id.

    A server's points depend on its id alone (a count is a prefix of the same
    stream), so it keeps them whatever else joins or leaves; cached because
    rebuilds are frequent and servers few.
    """
    out: list[int] = []
    for k in range((count + 3) // 4):
        digest = hashlib.blake2b(f"{server_id}#{k}".encode(), digest_size=32).digest()
        out.extend(int.from_bytes(digest[j : j + 8], "big") for j in (0, 8, 16, 24))
    return tuple(out[:count])


def points_per_weight(total_weight: int) -> int:
    """Points per unit of weight: ``POINTS_PER_WEIGHT``, fewer only when the ring would pass ``MAX_RING_POINTS``."""
    if total_weight * POINTS_PER_WEIGHT <= MAX_RING_POINTS:
        return POINTS_PER_WEIGHT
    return max(MAX_RING_POINTS // total_weight, 1)


class HashRing(Generic[S]):
    """Consistent hashing on a ring of virtual nodes weighted by server weight.

    Each server owns ``POINTS_PER_WEIGHT x weight`` points on a 64-bit ring; a
    key goes to the owner of the first point at or after its hash. So removing
    a server moves only the keys it owned (about 1/N of them) and adding one
    moves keys only onto the newcomer. Points depend only on server ids and
    weights (blake2b), so instances with the same servers agree on every key,
    whatever the order of the list. Servers with weight <= 0 own no points.

    A group whose total weight passes ``MAX_RING_POINTS / POINTS_PER_WEIGHT``
    (1638) gets fewer points per unit of weight, to keep the ring small; there
    a change of total weight that crosses the limit also moves a few keys
    between the servers that stay.

    O(log n) per pick (a bisect over the points); excluded servers are passed
    over by walking on along the ring. Building costs O(p log p) for p points,
    with each server's points cached.

    The key is the context's ``hash_key``, else it is derived from the context
    per ``hash_key`` (cookies are not in the context: they fall back to the IP).
    """

    __slots__ = ("_hash_key", "_ids", "_owner", "_points", "_servers")

    def __init__(self, servers: Sequence[S], *, hash_key: str = "ip") -> None:
        parse_hash_key(hash_key)
        self._hash_key = hash_key
        self._adopt(servers)

    def _adopt(self, servers: Sequence[S]) -> None:
        self._servers = servers
        owner: dict[int, int] = {}
        per_weight = points_per_weight(sum(s.weight for s in servers if s.weight > 0))
        # Smallest id last, so it wins a (2^-64-rare) shared point on every instance whatever the order.
        for i in sorted(range(len(servers)), key=lambda i: servers[i].id, reverse=True):
            weight = servers[i].weight
            if weight > 0:
                owner.update(dict.fromkeys(server_points(servers[i].id, per_weight * weight), i))
        self._owner = owner
        self._points = sorted(owner)
        self._ids = frozenset(s.id for s in servers if s.weight > 0)

    def key(self, ctx: PickContext) -> bytes:
        """The bytes this request hashes on."""
        if ctx.hash_key is not None:
            return ctx.hash_key
        return hash_key_value(self._hash_key, ctx.client_ip, ctx.path, ctx.headers, {})

    def coin(self, ctx: PickContext, server: S) -> float:
        """A stable number in [0, 1) for this key and server (slow start lets the key through below the ramp)."""
        return unit_hash(self.key(ctx) + b"\x00" + server.id.encode())

    def pick(self, ctx: PickContext, servers: Sequence[S]) -> S | None:
        if servers is not self._servers:
            self._adopt(servers)
        points = self._points
        if not points:
            return None
        k = bisect.bisect_left(points, hash64(self.key(ctx)))
        if k == len(points):
            k = 0
        exclude = ctx.exclude
        server = servers[self._owner[points[k]]]
        if not exclude or server.id not in exclude:
            return server
        if self._ids <= exclude:
            return None
        owner = self._owner
        n = len(points)
        while True:  # ends: some server with points is not excluded
            k = k + 1 if k + 1 < n else 0
            server = servers[owner[points[k]]]
            if server.id not in exclude:
                return server


class IpHash(HashRing[S]):
    """Client IP (the whole address, IPv4 or IPv6) to a server, on the same ring as ``HashRing``.

    The mapping is stable while the server set is stable, and when it changes
    only the keys of the servers that left (or onto those that joined) move, so
    a server going unhealthy for a moment does not reshuffle every client.
    IPv4-mapped IPv6 addresses count as their IPv4 address. O(log n) per pick.
    """

    __slots__ = ()

    def __init__(self, servers: Sequence[S]) -> None:
        super().__init__(servers, hash_key="ip")

    def key(self, ctx: PickContext) -> bytes:
        if ctx.client_ip:
            return normalize_ip(ctx.client_ip)
        return ctx.hash_key or b""
