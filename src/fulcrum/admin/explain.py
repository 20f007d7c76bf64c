"""Why would this request go to that server? Answered from the running snapshot, sending nothing.

The route is found by the reference check of each route (``RouteTable.explain``), so the answer
also says why each earlier route did not match. The server is picked on a copy of the group's
balancer: the round-robin position, counters and random state of the running one do not move.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

from fulcrum.balancing.base import PickContext
from fulcrum.balancing.hashing import hash_key_value
from fulcrum.balancing.sticky import sticky_lookup
from fulcrum.routing.rewrite import rewrite_target, split_target
from fulcrum.routing.table import target_path
from fulcrum.state.changes import State
from fulcrum.state.group import Group
from fulcrum.state.server import Down, Server
from fulcrum.state.snapshot import Snapshot

_WHY_NOT = (
    (Down.ACTIVE_CHECK, "unhealthy: its active health check fails (or has not passed yet)"),
    (Down.PASSIVE, "ejected by passive outlier detection"),
    (Down.BREAKER, "circuit breaker open"),
    (Down.DRAINING, "draining: takes no new requests"),
    (Down.DISABLED, "disabled by an operator"),
)


class ExplainError(ValueError):
    """A question that cannot be asked: a malformed header or host."""


def explain(
    snapshot: Snapshot,
    state_of: Callable[[str, Server], State],
    *,
    method: str = "GET",
    path: str = "/",
    host: str = "",
    headers: Sequence[str] = (),
    client_ip: str = "127.0.0.1",
) -> dict[str, Any]:
    """The route, middleware, group, each server's eligibility and the server the policy would pick."""
    lines = []
    named: dict[str, str] = {}
    for item in headers:
        name, colon, value = item.partition(":")
        name = name.strip()
        if not colon or not name:
            raise ExplainError(f"header {item!r} must be Name:value")
        lines.append(f"{name}:{value.strip()}".encode("latin-1"))
        named.setdefault(name.lower(), value.strip())
    target = path.encode("latin-1")
    route_path, query = split_target(target)
    host_key = host.lower().rsplit(":", 1)[0] if host and not host.endswith("]") else host.lower()
    tried = snapshot.routes.explain(host_key.encode("latin-1"), target_path(target), method.upper().encode("latin-1"),
                                    lines, query)
    out: dict[str, Any] = {
        "request": {"method": method.upper(), "path": path, "host": host or None, "headers": list(headers),
                    "client_ip": client_ip},
        "routes": [{"index": r.index, "name": r.name, "matched": reason is None, "why_not": reason}
                   for r, reason in tried],
        "route": None,
        "middleware": [],
        "upstream": None,
        "servers": [],
        "pick": None,
        "outcome": "404: no route matches this request",
    }
    route = tried[-1][0] if tried and tried[-1][1] is None else None
    if route is None:
        return out
    out["route"] = route.name
    out["middleware"] = route.chain.describe() if route.chain is not None else []
    out["upstream_path"] = rewrite_target(target, route.rewrite).decode("latin-1") if route.rewrite is not None \
        else path
    if route.answer is not None:
        kind = "redirect" if route.answer.location is not None else "respond"
        out["outcome"] = f"{route.answer.status}: answered by Fulcrum ({kind}), nothing goes upstream"
        return out
    group = snapshot.groups[route.upstream or ""]
    out["upstream"] = group.name
    out["balance"] = group.policy
    out["servers"] = [_server(group, s, state_of(group.name, s)) for s in group.servers]
    pick, how = _pick(group, route_path.decode("latin-1"), named, client_ip)
    out["pick"] = pick.id if pick is not None else None
    out["pick_by"] = how
    out["outcome"] = f"forwarded to {pick.id} ({how})" if pick is not None else \
        f"503: no eligible server in upstream {group.name!r}"
    return out


def _server(group: Group, server: Server, state: State) -> dict[str, Any]:
    why_not = [text for flag, text in _WHY_NOT if server.down & flag]
    limit = group.spec.pool.max_connections
    full = bool(limit) and server.active >= limit
    return {
        "id": server.id,
        "state": state,
        "eligible": not why_not,
        "why_not": why_not,
        "active": server.active,
        "weight": server.weight,
        # eligible, but a request would wait in the group's queue for a connection slot
        "at_max_connections": full,
    }


def _pick(group: Group, path: str, headers: dict[str, str], client_ip: str) -> tuple[Server | None, str]:
    cookies = _cookies(headers.get("cookie", ""))
    sticky = group.sticky
    if sticky is not None:
        token = cookies.get(sticky.cookie)
        if token is not None:
            found = sticky_lookup(token, group.eligible)
            if found is not None:
                return found, f"sticky cookie {sticky.cookie}"
    ctx = PickContext()
    if group.needs_key:
        key = hash_key_value(group.hash_key, client_ip, path, headers, cookies)
        ctx = PickContext(client_ip=client_ip, path=path, headers=headers, hash_key=key)
    # a copy of the balancer (sharing the servers) answers; the running one does not move
    balancer = copy.deepcopy(group.balancer, {id(s): s for s in group.servers})
    server = balancer.pick(ctx, group.eligible)
    how = group.policy if not group.needs_key else f"{group.policy} on {group.hash_key}"
    return server, how


def _cookies(header: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in header.split(";"):
        name, eq, value = part.strip().partition("=")
        if eq:
            out.setdefault(name, value)
    return out
