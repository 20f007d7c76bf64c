"""What a policy does with synthetic traffic: per-server counts and, for hash policies, key moves.

Pure and seeded: the same arguments give the same numbers. ``simulate`` takes
plain values (a policy name, a hash key spec, ``(id, weight)`` pairs) and
returns dataclasses; ``format_report`` turns them into text, and
``simulate_config`` does both for every group of a loaded configuration.

The load model (``LoadModel``), used for every policy so that the ones that
look at load (least_conn, p2c, least_time) see some:

- requests arrive as a Poisson stream on a virtual clock, at a rate that
  keeps on average ``IN_FLIGHT_PER_SERVER`` requests in flight per server;
- each server answers in a time drawn from an exponential distribution with
  mean ``SERVICE_MS``, whatever its load (servers are never saturated), and
  optionally scaled per server to model a slow one;
- a pick adds one to the server's ``active``; the answer takes it off and
  feeds the response time to ``observe_latency``, as the data plane does.

Requests carry synthetic keys: request ``i`` belongs to client ``k`` drawn
uniformly from ``keys`` clients, with IP ``10.a.b.c`` derived from ``k``,
path ``/items/k``, and ``k``-derived values for any header or cookie key.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from fulcrum.balancing import HASH_POLICIES, POLICIES, make_balancer
from fulcrum.balancing.base import EMPTY_CONTEXT, Balancer, PickContext
from fulcrum.balancing.hashing import hash_key_value, parse_hash_key
from fulcrum.balancing.latency import DEFAULT_DECAY_S, observe_latency

#: Mean response time of a synthetic server.
SERVICE_MS = 20.0
#: Mean requests in flight per server in the load model.
IN_FLIGHT_PER_SERVER = 2.0


@dataclass(slots=True, eq=False)
class SimMember:
    """A synthetic server with the fields policies read."""

    id: str
    weight: int = 1
    active: int = 0
    ewma_ms: float = 0.0
    ewma_at: float = 0.0
    up_since: float = 0.0


class VirtualClock:
    """A clock that only moves when told to."""

    __slots__ = ("now",)

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


#: Response time in seconds of one request to a server.
ServiceTime = Callable[[SimMember, random.Random], float]


def exponential_service(mean_ms: float = SERVICE_MS, slow: Mapping[str, float] | None = None) -> ServiceTime:
    """Exponential response times with mean ``mean_ms``, multiplied by ``slow[id]`` for slow servers."""
    factors = dict(slow or {})

    def service(member: SimMember, rng: random.Random) -> float:
        return rng.expovariate(1000.0 / mean_ms) * factors.get(member.id, 1.0)

    return service


class LoadModel:
    """Requests in flight on a virtual clock (see the module docstring for the model).

    ``run`` may be called several times; requests still in flight carry over,
    and ``service`` may be swapped between runs (a server turning slow).
    """

    def __init__(
        self,
        balancer: Balancer[SimMember],
        members: Sequence[SimMember],
        clock: VirtualClock,
        *,
        rate: float,
        service: ServiceTime,
        rng: random.Random,
        decay_s: float = DEFAULT_DECAY_S,
    ) -> None:
        self.balancer = balancer
        self.members = members
        self.clock = clock
        self.rate = rate
        self.service = service
        self.rng = rng
        self.decay_s = decay_s
        self._pending: list[tuple[float, int, SimMember, float]] = []
        self._seq = itertools.count()

    def _complete_until(self, t: float) -> None:
        pending = self._pending
        while pending and pending[0][0] <= t:
            done, _, member, started = heapq.heappop(pending)
            self.clock.now = done
            member.active -= 1
            observe_latency(member, (done - started) * 1000.0, done, self.decay_s)

    def run(self, requests: int, context: Callable[[int], PickContext] | None = None) -> dict[str, int]:
        """Send ``requests`` requests; per-server counts (unanswered ones are not counted under any id)."""
        counts = dict.fromkeys((m.id for m in self.members), 0)
        clock = self.clock
        rng = self.rng
        for i in range(requests):
            arrival = clock.now + rng.expovariate(self.rate)
            self._complete_until(arrival)
            clock.now = arrival
            member = self.balancer.pick(context(i) if context else EMPTY_CONTEXT, self.members)
            if member is None:
                continue
            counts[member.id] += 1
            member.active += 1
            done = arrival + self.service(member, rng)
            heapq.heappush(self._pending, (done, next(self._seq), member, arrival))
        return counts

    def drain(self) -> None:
        """Let every request in flight finish."""
        self._complete_until(float("inf"))


@dataclass(frozen=True, slots=True)
class ServerShare:
    """How much of the traffic one server got, against its weight's share."""

    id: str
    weight: int
    count: int
    share: float
    expected: float


@dataclass(frozen=True, slots=True)
class KeyMoves:
    """What removing one server does to the key mapping of a hash policy.

    ``moved`` keys change server; ``owned`` of them were on the removed server
    (the least any policy must move).
    """

    removed: str
    keys: int
    moved: int
    owned: int


@dataclass(frozen=True, slots=True)
class Simulation:
    """The outcome of ``simulate`` for one group."""

    name: str
    policy: str
    hash_key: str
    requests: int
    keys: int
    seed: int
    servers: tuple[ServerShare, ...]
    moves: tuple[KeyMoves, ...]


def synthetic_context(k: int, hash_key: str, *, exclude: frozenset[str] = frozenset()) -> PickContext:
    """The request context of synthetic client ``k`` for a policy hashing on ``hash_key``."""
    ip = f"10.{(k >> 16) & 255}.{(k >> 8) & 255}.{k & 255}"
    path = f"/items/{k}"
    kind, name = parse_hash_key(hash_key)
    headers = {name.lower(): f"user-{k}"} if kind == "header" else {}
    cookies = {name: f"session-{k}"} if kind == "cookie" else {}
    key = hash_key_value(hash_key, ip, path, headers, cookies)
    return PickContext(client_ip=ip, path=path, headers=headers, hash_key=key, exclude=exclude)


def key_moves(policy: str, members: Sequence[SimMember], keys: int, hash_key: str = "ip") -> tuple[KeyMoves, ...]:
    """For each server in turn: how many of ``keys`` synthetic keys change server when it is removed."""
    contexts = [synthetic_context(k, hash_key) for k in range(keys)]
    full = make_balancer(policy, members, hash_key=hash_key, rng=random.Random(0))
    before = [full.pick(ctx, members) for ctx in contexts]
    out = []
    for gone in members:
        rest = [m for m in members if m is not gone]
        smaller = make_balancer(policy, rest, hash_key=hash_key, rng=random.Random(0))
        moved = owned = 0
        for ctx, was in zip(contexts, before, strict=True):
            if was is gone:
                owned += 1
            if smaller.pick(ctx, rest) is not was:
                moved += 1
        out.append(KeyMoves(removed=gone.id, keys=keys, moved=moved, owned=owned))
    return tuple(out)


def simulate(
    policy: str,
    servers: Sequence[tuple[str, int]],
    *,
    requests: int = 10_000,
    keys: int = 10_000,
    hash_key: str = "ip",
    seed: int = 1,
    name: str = "",
    slow: Mapping[str, float] | None = None,
) -> Simulation:
    """Send ``requests`` synthetic requests through ``policy`` over ``servers`` (``(id, weight)`` pairs).

    Requests come from ``keys`` synthetic clients; for hash policies also
    measure, over ``keys`` keys, the moves caused by removing each server
    (skipped when ``keys`` is 0). ``slow`` multiplies some servers' response
    times in the load model.
    """
    if policy not in POLICIES:
        raise ValueError(f"unknown balancing policy {policy!r}")
    parse_hash_key(hash_key)
    members = [SimMember(id=sid, weight=weight) for sid, weight in servers]
    clock = VirtualClock()
    balancer = make_balancer(policy, members, hash_key=hash_key, rng=random.Random(seed), clock=clock)
    n = max(len(members), 1)
    model = LoadModel(
        balancer,
        members,
        clock,
        rate=IN_FLIGHT_PER_SERVER * n / (SERVICE_MS / 1000.0),
        service=exponential_service(SERVICE_MS, slow),
        rng=random.Random(seed + 1),
    )
    clients = keys if keys > 0 else max(requests, 1)
    draw = random.Random(seed + 2)
    needs_key = policy in HASH_POLICIES

    def context(_i: int) -> PickContext:
        return synthetic_context(draw.randrange(clients), hash_key)

    counts = model.run(requests, context if needs_key else None)
    total_weight = sum(max(w, 0) for _, w in servers)
    shares = tuple(
        ServerShare(
            id=m.id,
            weight=m.weight,
            count=counts[m.id],
            share=counts[m.id] / requests if requests else 0.0,
            expected=(1.0 / n if policy == "round_robin" else max(m.weight, 0) / total_weight if total_weight else 0.0),
        )
        for m in members
    )
    moves = key_moves(policy, members, keys, hash_key) if needs_key and keys > 0 and len(members) > 1 else ()
    return Simulation(
        name=name,
        policy=policy,
        hash_key=hash_key if policy == "consistent_hash" else "",
        requests=requests,
        keys=keys,
        seed=seed,
        servers=shares,
        moves=moves,
    )


def format_report(simulations: Simulation | Sequence[Simulation]) -> str:
    """A plain-text report: per-server counts and shares, and key moves for hash policies."""
    sims = [simulations] if isinstance(simulations, Simulation) else list(simulations)
    lines: list[str] = []
    for sim in sims:
        title = f"{sim.name}: " if sim.name else ""
        key = f", hash_key {sim.hash_key}" if sim.hash_key else ""
        lines.append(f"{title}{sim.policy}{key}; {sim.requests} requests, seed {sim.seed}")
        if not sim.servers:
            lines.append("  no servers")
            lines.append("")
            continue
        width = max(len("server"), *(len(s.id) for s in sim.servers))
        lines.append(f"  {'server':<{width}}  weight  requests   share  expected")
        for s in sim.servers:
            lines.append(
                f"  {s.id:<{width}}  {s.weight:>6}  {s.count:>8}  {s.share:>6.1%}  {s.expected:>8.1%}"
            )
        if sim.moves:
            lines.append(
                f"  removing each server in turn, {sim.keys} keys: keys that change server "
                f"(at least the keys it held)"
            )
            lines.append(f"  {'removed':<{width}}  moved keys   moved  held by it")
            for m in sim.moves:
                lines.append(f"  {m.removed:<{width}}  {m.moved:>10}  {m.moved / m.keys:>6.1%}  {m.owned:>10}")
        lines.append("")
    lines.append(
        f"Load model: Poisson arrivals keeping about {IN_FLIGHT_PER_SERVER:g} requests in flight per server; "
        f"each server answers in an exponential time of mean {SERVICE_MS:g} ms whatever its load."
    )
    return "\n".join(lines)


def server_id(url: str) -> str:
    """The id Fulcrum gives the server at ``url`` (``host:port``, IPv6 hosts in brackets)."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    host = parts.hostname or url
    port = parts.port or 80
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def simulate_config(config: Any, *, requests: int = 10_000, keys: int = 10_000, seed: int = 1) -> str:
    """Simulate every upstream group of a loaded configuration and return the report.

    Reads ``config.upstreams`` (name -> group with ``balance``, ``hash_key`` and
    ``servers`` of ``url``/``weight``). Groups whose servers are discovered at
    run time are listed as such.
    """
    sims: list[Simulation] = []
    notes: list[str] = []
    for name, group in config.upstreams.items():
        servers = [(server_id(s.url), int(getattr(s, "weight", 1))) for s in (getattr(group, "servers", None) or ())]
        if not servers:
            notes.append(f"{name}: no static servers (discovered at run time); nothing to simulate")
            continue
        policy = group.balance
        hash_key = getattr(group, "hash_key", None) or "ip"
        sims.append(simulate(policy, servers, requests=requests, keys=keys, hash_key=hash_key, seed=seed, name=name))
    report = format_report(sims) if sims else ""
    return "\n".join([*notes, report]) if notes else report
