"""The contract every balancing policy follows.

A policy is built for one set of eligible servers (its constructor takes
them) and is rebuilt, never mutated, when that set changes. ``pick`` does no I/O, never
blocks, and costs O(1) or O(log n) where the algorithm allows it (each policy
states its cost). Policies read servers through the small ``Member``
protocol, so this package imports nothing of the rest of Fulcrum.

``pick`` is handed the same sequence the policy was built with; handing it
another one makes the policy rebuild its tables for that sequence first.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar


class Member(Protocol):
    """What a policy may read of a server (``fulcrum.state.Server`` satisfies it).

    ``ewma_ms``/``ewma_at`` are the smoothed response time and the clock time of
    its last update; ``up_since`` is the clock time the server last became
    eligible (for slow start).
    """

    @property
    def id(self) -> str: ...

    @property
    def weight(self) -> int: ...

    @property
    def active(self) -> int: ...

    @property
    def ewma_ms(self) -> float: ...

    @property
    def ewma_at(self) -> float: ...

    @property
    def up_since(self) -> float: ...


S = TypeVar("S", bound=Member)


@dataclass(slots=True)
class PickContext:
    """Per-request facts a policy may use.

    ``exclude`` holds the ids of servers already tried for this request; a
    policy never returns one of them. ``hash_key`` is the request's key for hash
    policies (already extracted by the data plane), or ``None``.
    """

    client_ip: str = ""
    path: str = "/"
    headers: Mapping[str, str] = field(default_factory=dict)
    hash_key: bytes | None = None
    exclude: frozenset[str] = frozenset()


#: A context for callers with nothing to say (round robin needs nothing).
EMPTY_CONTEXT = PickContext()


class Balancer(Protocol[S]):
    """Chooses one of the eligible servers, or ``None`` when none is left."""

    def pick(self, ctx: PickContext, servers: Sequence[S]) -> S | None: ...


#: Builds a policy for one set of eligible servers.
BalancerFactory = Callable[[Sequence[S]], Balancer[S]]
