"""Servers discovered in DNS (``servers_from``): from records to server sets, and the last good set of each group.

Pure: the lookups are ``fulcrum.state.resolve``, the schedule is ``fulcrum.supervisor.discovery``. The rules:

- A and AAAA: one server per address, on the configured port, weight 1.
- SRV: only the records of the lowest priority are used (RFC 2782: the others are fallbacks, and a
  balancer that spread traffic over them would defeat that); each address of a record's target is a
  server on the record's port, with the record's weight. Fulcrum's weights are 1 to 1000: an SRV
  weight of 0 counts as 1 (RFC 2782 gives such a record "a very small chance", not none) and one
  above 1000 as 1000. A target of ``.`` ("no such service here") gives no server.
- Servers are sorted by address, so a DNS server that rotates its records does not look like a change.
- A lookup that fails (timeout, SERVFAIL, refused, no resolver) or finds nothing (NXDOMAIN, no
  records, no target address) keeps the last good set: a DNS outage or a zone being edited never
  empties a group that has servers. A group that never had a good answer has no servers (503).
  Each failure streak is told once, and its end once.
- The next lookup is due after ``refresh``, or after the answer's smallest TTL when that is shorter,
  but never sooner than ``MIN_REFRESH`` (1 s): a TTL of 0 is not a busy loop. After a failure,
  ``refresh``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from fulcrum.config import Config
from fulcrum.config.discovery import MIN_REFRESH, ServersFrom
from fulcrum.config.schema import ServerSpec

MAX_WEIGHT = 1000

Target = tuple[str, str, int | None, str, str | None]  # ServersFrom.target


@dataclass(frozen=True, slots=True)
class SrvRecord:
    """One SRV record: ``target``'s addresses serve on ``port``."""

    priority: int
    weight: int
    port: int
    target: str


@dataclass(frozen=True, slots=True)
class Lookup:
    """What one lookup found: ``found`` with servers and the smallest TTL, or ``empty`` / ``failed`` and why."""

    kind: Literal["found", "empty", "failed"]
    servers: tuple[ServerSpec, ...] = ()
    ttl: float | None = None
    reason: str = ""


def found(servers: tuple[ServerSpec, ...], ttl: float | None, reason: str = "no records") -> Lookup:
    """``found``, or ``empty`` (with ``reason``) when there is no server."""
    return Lookup("found", servers, ttl) if servers else Lookup("empty", reason=reason)


def srv_weight(weight: int) -> int:
    """An SRV weight (0-65535) as a Fulcrum weight (1-1000): 0 counts as 1, above 1000 as 1000."""
    return max(1, min(MAX_WEIGHT, weight))


def _spec(scheme: str, address: str, port: int, weight: int) -> ServerSpec:
    host = f"[{address}]" if ":" in address else address
    return ServerSpec(url=f"{scheme}://{host}:{port}", weight=weight)


def _ordered(servers: dict[str, ServerSpec]) -> tuple[ServerSpec, ...]:
    return tuple(servers[k] for k in sorted(servers))


def from_addresses(addresses: Iterable[str], port: int, scheme: str = "http") -> tuple[ServerSpec, ...]:
    """A and AAAA records: one server per distinct address, weight 1, sorted."""
    servers: dict[str, ServerSpec] = {}
    for address in addresses:
        spec = _spec(scheme, address, port, 1)
        servers[spec.address] = spec
    return _ordered(servers)


def from_srv(records: Iterable[SrvRecord], addresses: Mapping[str, Sequence[str]],
             scheme: str = "http") -> tuple[ServerSpec, ...]:
    """SRV records of the lowest priority, each target's ``addresses`` (by target name) as servers, sorted.

    Two records that come to the same address and port make one server with the larger weight.
    """
    usable = [r for r in records if r.target.rstrip(".")]
    if not usable:
        return ()
    best = min(r.priority for r in usable)
    servers: dict[str, ServerSpec] = {}
    for record in usable:
        if record.priority != best:
            continue
        for address in addresses.get(normal_name(record.target), ()):
            spec = _spec(scheme, address, record.port, srv_weight(record.weight))
            seen = servers.get(spec.address)
            if seen is None or seen.weight < spec.weight:
                servers[spec.address] = spec
    return _ordered(servers)


def normal_name(name: str) -> str:
    """A DNS name as compared here: lower case, no trailing dot."""
    return name.rstrip(".").lower()


def next_lookup(spec: ServersFrom, lookup: Lookup) -> float:
    """Seconds until the next lookup: ``min(refresh, ttl)``, at least ``MIN_REFRESH``; ``refresh`` after a failure."""
    if lookup.kind != "found" or lookup.ttl is None:
        return spec.refresh
    return max(MIN_REFRESH, min(spec.refresh, lookup.ttl))


@dataclass(frozen=True, slots=True)
class Outcome:
    """What recording a lookup did: whether the group's servers changed, and a line to log (or None)."""

    changed: bool
    message: str | None = None
    problem: bool = False  # the message is a warning


class Discovered:
    """The last good server set of every discovered group, keyed by the group and its lookup target.

    ``fill`` puts them into a config; a group whose ``servers_from`` asks something else (another name,
    type, port, scheme or resolver) has no servers until its first good answer for that. ``retain``
    forgets what the running config no longer asks (only once a new config is in force, so a refused
    reload loses nothing).
    """

    def __init__(self) -> None:
        self._sets: dict[tuple[str, Target], tuple[ServerSpec, ...]] = {}
        self._failing: dict[tuple[str, Target], str] = {}  # the kind of the failure streak being told

    def servers(self, group: str, spec: ServersFrom) -> tuple[ServerSpec, ...]:
        """The group's last good set for ``spec``'s target (empty when there is none)."""
        return self._sets.get((group, spec.target), ())

    def known(self, group: str, spec: ServersFrom) -> bool:
        """Whether the group has had a good answer for ``spec``'s target."""
        return (group, spec.target) in self._sets

    def ids(self, group: str, spec: ServersFrom) -> frozenset[str]:
        """The ids (``host:port``) of the servers discovered for ``group``."""
        return frozenset(s.address for s in self.servers(group, spec))

    def record(self, group: str, spec: ServersFrom, lookup: Lookup) -> Outcome:
        """Take a lookup's result: a good answer replaces the set, anything else keeps the last good one."""
        key = (group, spec.target)
        name = f"{group}: DNS {spec.type} {spec.dns}"
        if lookup.kind == "found":
            known = key in self._sets
            before = self._sets.get(key, ())
            self._sets[key] = lookup.servers
            streak = self._failing.pop(key, None)
            changed = lookup.servers != before
            if not changed and streak is None:
                return Outcome(False)
            listed = ", ".join(f"{s.address} (weight {s.weight})" for s in lookup.servers)
            if not changed:
                return Outcome(False, f"{name} answers again; servers unchanged: {listed}")
            verb = "now" if known else "found"
            return Outcome(True, f"{name} {verb} {len(lookup.servers)} server(s): {listed}")
        if self._failing.get(key) == lookup.kind:
            return Outcome(False)  # told once per streak
        self._failing[key] = lookup.kind
        kept = self._sets.get(key, ())
        what = "lookup failed" if lookup.kind == "failed" else "gave no server"
        keeping = (f"keeping the last {len(kept)} server(s) until it answers" if kept
                   else "the group has no server (503) until it answers")
        return Outcome(False, f"{name} {what} ({lookup.reason}); {keeping}", problem=True)

    def fill(self, config: Config) -> Config:
        """``config`` with each discovered group's servers put in."""
        discovered = {name: spec.servers_from for name, spec in config.upstreams.items()
                      if spec.servers_from is not None}
        if not discovered:
            return config
        upstreams = dict(config.upstreams)
        for name, source in discovered.items():
            upstreams[name] = upstreams[name].model_copy(update={"servers": self.servers(name, source)})
        return config.model_copy(update={"upstreams": upstreams})

    def retain(self, config: Config) -> None:
        """Forget the sets and streaks of what ``config`` (now in force) does not look up."""
        wanted = {(name, spec.servers_from.target) for name, spec in config.upstreams.items()
                  if spec.servers_from is not None}
        for table in (self._sets, self._failing):
            for key in [k for k in table if k not in wanted]:
                del table[key]
