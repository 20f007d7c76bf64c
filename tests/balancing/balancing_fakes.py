"""Servers and helpers shared by the balancing tests."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from hypothesis import strategies as st

from fulcrum.balancing.base import Balancer, PickContext
from fulcrum.balancing.simulate import SimMember


def members(weights: Sequence[int], prefix: str = "s") -> list[SimMember]:
    """One synthetic server per weight, ids ``s0``, ``s1``..."""
    return [SimMember(id=f"{prefix}{i}", weight=w) for i, w in enumerate(weights)]


def count_picks(
    balancer: Balancer[SimMember], servers: Sequence[SimMember], picks: int, ctx: PickContext | None = None
) -> Counter[str]:
    """How often each server id is picked over ``picks`` picks (``None`` counted under "")."""
    ctx = ctx or PickContext()
    out: Counter[str] = Counter()
    for _ in range(picks):
        server = balancer.pick(ctx, servers)
        out[server.id if server is not None else ""] += 1
    return out


weight_lists = st.lists(st.integers(min_value=1, max_value=10), min_size=1, max_size=12)
