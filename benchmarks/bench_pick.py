"""Micro-benchmark of Balancer.pick for every policy at 3, 30 and 300 servers.

Prints nanoseconds per pick (best of several repeats, each long enough to
time reliably). Servers carry a few requests in flight and measured response
times, and hash policies see a different client per pick, so no policy runs
only its fastest path.

    python benchmarks/bench_pick.py [--sizes 3,30,300] [--repeat 5] [--min-time 0.05]
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Sequence

from fulcrum.balancing import POLICIES, POLICY_NAMES, make_balancer
from fulcrum.balancing.base import PickContext
from fulcrum.balancing.hashing import hash_key_value
from fulcrum.state.server import Server

ORDER = POLICY_NAMES
CONTEXTS = 1024


def make_servers(n: int, rng: random.Random) -> tuple[Server, ...]:
    servers = []
    for i in range(n):
        server = Server(f"http://10.{i // 65536}.{i // 256 % 256}.{i % 256}:8080", weight=rng.choice((1, 1, 2, 3)))
        server.active = rng.randrange(4)
        server.ewma_ms = rng.uniform(5.0, 50.0)
        server.ewma_at = 0.0
        servers.append(server)
    return tuple(servers)


def make_contexts(rng: random.Random) -> list[PickContext]:
    out = []
    for _ in range(CONTEXTS):
        ip = f"198.51.{rng.randrange(256)}.{rng.randrange(256)}"
        out.append(PickContext(client_ip=ip, hash_key=hash_key_value("ip", ip, "/", {}, {})))
    return out


def ns_per_pick(
    policy: str, servers: Sequence[Server], contexts: list[PickContext], repeat: int, min_time: float
) -> float:
    """Best time per pick over ``repeat`` timed runs of one calibrated length."""
    balancer = make_balancer(policy, servers, rng=random.Random(1), clock=lambda: 1.0)
    pick = balancer.pick
    ctxs = contexts
    loops = 1
    while True:  # calibrate: enough picks for one repeat to last min_time
        start = time.perf_counter_ns()
        for i in range(loops):
            pick(ctxs[i & (CONTEXTS - 1)], servers)
        elapsed = time.perf_counter_ns() - start
        if elapsed >= min_time * 1e9:
            break
        loops *= 2
    best = elapsed / loops
    for _ in range(repeat - 1):
        start = time.perf_counter_ns()
        for i in range(loops):
            pick(ctxs[i & (CONTEXTS - 1)], servers)
        best = min(best, (time.perf_counter_ns() - start) / loops)
    return best


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="3,30,300", help="comma-separated server counts (default 3,30,300)")
    parser.add_argument("--repeat", type=int, default=5, help="timed repeats, the best is kept (default 5)")
    parser.add_argument("--min-time", type=float, default=0.05, help="seconds per repeat at least (default 0.05)")
    parser.add_argument("--policy", action="append", choices=sorted(POLICIES), help="only this policy (repeat)")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    policies = [p for p in ORDER if not args.policy or p in args.policy]
    rng = random.Random(7)
    contexts = make_contexts(rng)
    groups = {n: make_servers(n, rng) for n in sizes}
    print(f"ns per pick (best of {args.repeat})")
    print(f"{'policy':<22}" + "".join(f"{f'{n} servers':>14}" for n in sizes))
    for policy in policies:
        row = [ns_per_pick(policy, groups[n], contexts, args.repeat, args.min_time) for n in sizes]
        print(f"{policy:<22}" + "".join(f"{ns:>14,.0f}" for ns in row), flush=True)


if __name__ == "__main__":
    main()
