"""An upstream group: its servers, the eligible subset and the policy built over it."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from fulcrum.balancing import make_balancer, needs_hash_key
from fulcrum.balancing.base import Balancer
from fulcrum.state.server import Server

LATENCY_POLICIES = frozenset(("p2c", "least_time"))


class Group:
    """Servers of one upstream group.

    Selection reads ``eligible`` and ``balancer``; both are rebuilt (never
    mutated) whenever a server's eligibility changes, so a pick costs what the
    policy costs and nothing more.
    """

    __slots__ = (
        "balancer",
        "by_id",
        "clock",
        "eligible",
        "guards",
        "hash_key",
        "name",
        "needs_key",
        "policy",
        "servers",
        "slow_start",
        "spec",
        "sticky",
        "tls",
        "total_timeout",
        "track_latency",
    )

    def __init__(
        self,
        name: str,
        spec: Any,
        servers: Sequence[Server],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.spec = spec
        self.servers = tuple(servers)
        self.by_id = {s.id: s for s in self.servers}
        self.policy: str = spec.balance
        self.hash_key: str = spec.hash_key
        self.slow_start: float = spec.slow_start
        self.sticky: Any = spec.sticky
        self.total_timeout: float = spec.timeouts.total
        self.needs_key = needs_hash_key(self.policy)
        self.track_latency = self.policy in LATENCY_POLICIES
        self.clock = clock
        self.eligible: tuple[Server, ...] = ()
        self.guards: Any = None  # the data plane's passive checks and breakers for this group, if any
        self.tls: Any = None  # the data plane's client TLS for this group's https servers, if it has any
        self.balancer: Balancer[Server] = make_balancer(self.policy, ())
        for server in self.servers:
            server.subscribe(self._on_server_change)
        self.refresh()

    def refresh(self) -> None:
        eligible = tuple(s for s in self.servers if s.eligible)
        self.balancer = make_balancer(
            self.policy, eligible, hash_key=self.hash_key, clock=self.clock, slow_start=self.slow_start
        )
        self.eligible = eligible

    def _on_server_change(self, server: Server) -> None:
        if server.eligible:
            server.up_since = self.clock()
        self.refresh()

    def close(self) -> None:
        """Stop listening to servers (the group was replaced by a new snapshot)."""
        for server in self.servers:
            server.unsubscribe(self._on_server_change)
