"""What a reload would change: two configs compared as a reviewer reads them.

Pure functions, no I/O. ``diff_configs`` lists the changes (top-level settings, routes, then
upstream groups with their servers, then TCP services with theirs); ``format_changes`` turns them into lines such as
``+ upstream billing (round_robin, 2 servers)`` or ``~ server app 127.0.0.1:5001: weight 1 → 3``.
Fields are compared generically on ``model_dump(mode="json")``, so a field added to the schema
later shows up here without changes to this module. Secrets (tokens, password hashes, credential
headers, passwords in URLs) are never printed: a change to one reads ``*** → ***``.

``config_from_dump`` reads back the running config as ``GET /api/v1/config`` answers it.
"""

from __future__ import annotations

import json
import re
from bisect import bisect_left
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from fulcrum.config.loader import parse_config
from fulcrum.config.schema import Config, Route, Upstream
from fulcrum.config.tcp import TcpService
from fulcrum.config.units import format_duration, format_size

# Validated durations and sizes are bare numbers in a dump; these key names say how to print them back.
_DURATIONS = frozenset((
    "interval", "timeout", "connect", "read", "total", "idle_timeout", "window", "eject_for", "max_eject_for",
    "open_for", "ttl", "slow_start", "header_timeout", "keepalive_timeout", "shutdown_grace", "max_age", "refresh",
    "idle",
))
_SIZES = frozenset(("max_request_line", "max_header_bytes", "max_body_bytes", "max_body", "min_bytes", "max_bytes"))
# Values under these keys are never printed: password hashes (which also say nothing to a reviewer), and keys
# that say token, secret or password anywhere (plugin options are free-form). The values of credential headers
# are secrets too where they are header values (set, add, match and respond headers), not where they are names.
_SECRETS = frozenset(("users",))
_SECRET_WORDS = ("token", "secret", "password", "passwd", "api_key", "apikey", "api-key")
_CREDENTIAL_HEADERS = frozenset(("authorization", "proxy-authorization", "cookie", "set-cookie"))
_HEADER_MAPS = frozenset(("set", "add", "headers"))
_URL_PASSWORD = re.compile(r"(://[^/@:\s]*):[^/@\s]*@")

Op = Literal["+", "-", "~"]


@dataclass(frozen=True)
class Change:
    """One difference: ``op`` is ``+`` (added), ``-`` (removed) or ``~`` (changed).

    ``subject`` names the thing (``upstream app``, ``server app 127.0.0.1:5001``, ``route api``,
    ``listen``); ``detail`` is a summary for ``+``/``-`` and ``field old → new`` for ``~``.
    """

    op: Op
    subject: str
    detail: str = ""

    def __str__(self) -> str:
        if self.op == "~":
            return f"~ {self.subject}: {self.detail}"
        return f"{self.op} {self.subject} ({self.detail})" if self.detail else f"{self.op} {self.subject}"


def diff_configs(old: Config, new: Config, *, ignore: Collection[str] = ()) -> list[Change]:
    """Every change from ``old`` to ``new``: top-level settings, then routes, then upstream groups.

    ``ignore`` holds dotted top-level setting paths to leave out, such as ``admin.token`` when ``old``
    came from the admin API, which never tells the token.
    """
    changes = list(_setting_changes(old, new, ignore))
    changes += _route_changes(old.routes, new.routes)
    for name in sorted(old.upstreams.keys() | new.upstreams.keys()):
        changes += _upstream_changes(name, old.upstreams.get(name), new.upstreams.get(name))
    for name in sorted(old.tcp_services.keys() | new.tcp_services.keys()):
        changes += _tcp_changes(name, old.tcp_services.get(name), new.tcp_services.get(name))
    return changes


def format_changes(changes: Sequence[Change]) -> list[str]:
    """One line per change, or ``["no changes"]``."""
    return [str(change) for change in changes] or ["no changes"]


# ---------------------------------------------------------------- generic comparison


def _leaves(old: Any, new: Any, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], Any, Any]]:
    """(path, old, new) for each differing value, descending into mappings both sides have.

    Lists are compared whole: a list is one setting (listen addresses, retry causes, methods).
    """
    if old == new:
        return
    if isinstance(old, dict) and isinstance(new, dict) and not _is_address(old) and not _is_address(new):
        for key in [*old, *(k for k in new if k not in old)]:
            yield from _leaves(old.get(key), new.get(key), (*path, str(key)))
    else:
        yield path, old, new


def _is_address(value: object) -> bool:
    """A dumped plain ``Listen``: printed whole as ``host:port``, never as separate host and port changes."""
    return isinstance(value, dict) and {"host", "port"} <= value.keys() \
        and all(v is None for k, v in value.items() if k not in ("host", "port"))


def _show(value: Any, path: tuple[str, ...] = (), inner: bool = False) -> str:
    """A dumped value found at ``path`` as a person would write it in the config: 2s, 16k, 127.0.0.1:9090, [...]."""
    if _secret(path):
        return "none" if value is None else "***"
    key = path[-1] if path else ""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        if key in _DURATIONS:
            return format_duration(value)
        if key in _SIZES:
            return format_size(int(value))
        if key == "rate":
            return f"{value:g}/s"
        return str(value) if isinstance(value, int) else f"{value:g}"
    if isinstance(value, dict):
        if _is_address(value):
            host = f"[{value['host']}]" if ":" in str(value["host"]) else value["host"]
            return _show(f"{host}:{value['port']}", inner=inner)
        items = [f"{k}: {_show(v, (*path, str(k)), True)}" for k, v in value.items() if v not in (None, {}, [])]
        return "{" + ", ".join(items) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_show(v, path, True) for v in value) + "]"
    text = _URL_PASSWORD.sub(r"\1:***@", str(value))
    return json.dumps(text, ensure_ascii=False) if inner or not text else text


def _secret(path: tuple[str, ...]) -> bool:
    """Whether the value at ``path`` (or anything inside it) must not be printed."""
    for i, part in enumerate(path):
        low = part.lower()
        if low in _SECRETS or any(word in low for word in _SECRET_WORDS):
            return True
        if low in _CREDENTIAL_HEADERS and i and path[i - 1] in _HEADER_MAPS:
            return True
    return False


def _field_changes(subject: str, old: dict[str, Any], new: dict[str, Any]) -> Iterator[Change]:
    for path, before, after in _leaves(old, new, ()):
        yield Change("~", subject, f"{'.'.join(path)} {_show(before, path)} → {_show(after, path)}")


def _setting_changes(old: Config, new: Config, ignore: Collection[str]) -> Iterator[Change]:
    skip = {"upstreams", "routes", "tcp_services"}
    before, after = old.model_dump(mode="json", exclude=skip), new.model_dump(mode="json", exclude=skip)
    for path, was, now in _leaves(before, after, ()):
        dotted = ".".join(path)
        if not any(dotted == i or dotted.startswith(i + ".") for i in ignore):
            yield Change("~", dotted, f"{_show(was, path)} → {_show(now, path)}")


def _order_change(subject: str, what: str, old: Collection[str], new: Collection[str]) -> list[Change]:
    """A line when the items both sides have are in another order."""
    before = [k for k in old if k in new]
    after = [k for k in new if k in old]
    return [Change("~", subject, f"{what} {', '.join(before)} → {', '.join(after)}")] if before != after else []


def _in_order(items: Sequence[int]) -> set[int]:
    """Positions in ``items`` of a longest increasing run (patience sorting): what kept its relative order.

    Whatever is outside it is what moved, so moving one route to the top is one move, not N shifts.
    """
    tails: list[int] = []  # tails[k]: smallest last value of an increasing run of length k + 1
    ends: list[int] = []  # ends[k]: the position of that value
    before: list[int] = [-1] * len(items)
    for i, value in enumerate(items):
        k = bisect_left(tails, value)
        if k == len(tails):
            tails.append(value)
            ends.append(i)
        else:
            tails[k], ends[k] = value, i
        before[i] = ends[k - 1] if k else -1
    kept: set[int] = set()
    i = ends[-1] if ends else -1
    while i >= 0:
        kept.add(i)
        i = before[i]
    return kept


# ---------------------------------------------------------------- routes


def _route_keys(routes: Sequence[Route]) -> list[str]:
    """The name, or the match description for unnamed routes; a repeat gets ``#2``, ``#3``.

    Counting repeats (not positions, as the gateway's metric names do) keeps a route's key
    when another route is inserted before it.
    """
    seen: dict[str, int] = {}
    keys = []
    for route in routes:
        base = route.display_name
        seen[base] = seen.get(base, 0) + 1
        keys.append(base if seen[base] == 1 else f"{base} #{seen[base]}")
    return keys


def _route_summary(route: Route, index: int) -> str:
    if route.respond is not None:
        target = f"respond {route.respond.status}"
    elif route.redirect is not None:
        target = f"redirect {route.redirect.status} {route.redirect.url}"
    else:
        target = f"-> {route.upstream}"
    where = f" {route.model_copy(update={'name': None}).display_name}" if route.name else ""
    return f"[{index}]{where} {target}"


def _middleware(route: Route) -> dict[str, Any]:
    """The route's chain keyed by kind (``rate_limit``, ``plugin pkg.mod:factory``; a repeat gets ``#2``), in order,
    so that one changed option reads as one change."""
    middleware: dict[str, Any] = {}
    seen: dict[str, int] = {}
    for entry in route.middleware:
        kind = entry.kind if entry.kind != "plugin" else f"plugin {entry.plugin}"
        seen[kind] = seen.get(kind, 0) + 1
        key = kind if seen[kind] == 1 else f"{kind} #{seen[kind]}"
        middleware[key] = (entry.options or {}) if entry.kind == "plugin" else entry.model_dump(mode="json")[kind]
    return middleware


def _middleware_changes(subject: str, old: dict[str, Any], new: dict[str, Any]) -> list[Change]:
    changes = [Change("-", f"{subject} middleware {kind}") for kind in old if kind not in new]
    changes += [Change("+", f"{subject} middleware {kind}", _show(options)) for kind, options in new.items()
                if kind not in old]
    for kind, options in new.items():
        if kind in old:
            changes += _field_changes(f"{subject} middleware {kind}", old[kind], options)
    # The chain is an onion: its order is behaviour too.
    return changes + _order_change(subject, "middleware order", old, new)


def _route_changes(old: Sequence[Route], new: Sequence[Route]) -> list[Change]:
    old_keys, new_keys = _route_keys(old), _route_keys(new)
    old_at = {key: i for i, key in enumerate(old_keys)}
    new_at = {key: i for i, key in enumerate(new_keys)}
    changes = [Change("-", f"route {k}", _route_summary(old[i], i)) for i, k in enumerate(old_keys) if k not in new_at]
    changes += [Change("+", f"route {k}", _route_summary(new[i], i)) for i, k in enumerate(new_keys) if k not in old_at]
    # First match wins, so a route that moved past another can change what a request gets.
    common = [k for k in new_keys if k in old_at]
    kept = _in_order([old_at[k] for k in common])
    for n, key in enumerate(common):
        i, j = old_at[key], new_at[key]
        subject = f"route {key}"
        changes += _field_changes(subject, old[i].model_dump(mode="json", exclude={"name", "middleware"}),
                                  new[j].model_dump(mode="json", exclude={"name", "middleware"}))
        if n not in kept:
            changes.append(Change("~", subject, f"moved [{i}] → [{j}]"))
        changes += _middleware_changes(subject, _middleware(old[i]), _middleware(new[j]))
    return changes


# ---------------------------------------------------------------- upstream groups and servers


def _upstream_summary(upstream: Upstream) -> str:
    if upstream.servers_from is not None:
        return f"{upstream.balance}, {upstream.servers_from.describe()}"
    count = len(upstream.servers)
    return f"{upstream.balance}, {count} server{'s' if count != 1 else ''}"


def _upstream_changes(name: str, old: Upstream | None, new: Upstream | None) -> list[Change]:
    if old is None or new is None:
        op: Op = "+" if old is None else "-"
        upstream = new if new is not None else old
        return [Change(op, f"upstream {name}", _upstream_summary(upstream))] if upstream is not None else []
    changes = list(_field_changes(f"upstream {name}", old.model_dump(mode="json", exclude={"servers"}),
                                  new.model_dump(mode="json", exclude={"servers"})))
    # A server's id is its host:port (ServerSpec.address, the same id state.Server computes).
    before = {s.address: s for s in old.servers}
    after = {s.address: s for s in new.servers}
    changes += [Change("-", f"server {name} {sid}") for sid in before if sid not in after]
    changes += [Change("+", f"server {name} {sid}", f"weight {s.weight}") for sid, s in after.items()
                if sid not in before]
    for sid, server in after.items():
        if sid in before:
            changes += _field_changes(f"server {name} {sid}", before[sid].model_dump(mode="json", exclude={"url"}),
                                      server.model_dump(mode="json", exclude={"url"}))
    # Order only sets round robin's sequence (hash rings ignore it), but "no changes" should mean none at all.
    changes += _order_change(f"upstream {name}", "server order", before, after)
    return changes


# ---------------------------------------------------------------- TCP services


def _tcp_summary(service: TcpService) -> str:
    count = len(service.servers)
    return f"{service.listen}, {service.balance}, {count} server{'s' if count != 1 else ''}"


def _tcp_changes(name: str, old: TcpService | None, new: TcpService | None) -> list[Change]:
    if old is None or new is None:
        op: Op = "+" if old is None else "-"
        service = new if new is not None else old
        return [Change(op, f"tcp service {name}", _tcp_summary(service))] if service is not None else []
    subject = f"tcp service {name}"
    changes = list(_field_changes(subject, old.model_dump(mode="json", exclude={"servers"}),
                                  new.model_dump(mode="json", exclude={"servers"})))
    before = {s.address: s for s in old.servers}
    after = {s.address: s for s in new.servers}
    changes += [Change("-", f"server tcp {name} {sid}") for sid in before if sid not in after]
    changes += [Change("+", f"server tcp {name} {sid}", f"weight {s.weight}") for sid, s in after.items()
                if sid not in before]
    changes += [Change("~", f"server tcp {name} {sid}", f"weight {before[sid].weight} → {s.weight}")
                for sid, s in after.items() if sid in before and before[sid].weight != s.weight]
    return changes + _order_change(subject, "server order", before, after)


# ---------------------------------------------------------------- the running config, read back

#: Stands in for the admin token the API leaves out, so that a non-loopback admin listener validates again.
TOKEN_LEFT_OUT = "left-out-by-the-admin-api"


def config_from_dump(data: object, source: str) -> Config:
    """The ``Config`` a ``model_dump(mode="json")`` was made from, such as ``GET /api/v1/config``'s answer.

    A dump is config text but for two things: its strings are past ``${VAR}`` interpolation (so a
    ``${`` in them is literal), and the admin API leaves the token out (``TOKEN_LEFT_OUT`` takes its
    place; compare with ``ignore={"admin.token"}``). Raises ``ConfigError`` like ``parse_config``.
    """
    if not isinstance(data, Mapping):
        return parse_config(data, source=source)
    text: dict[str, Any] = _literal(dict(data))
    admin = text.get("admin")
    if isinstance(admin, Mapping) and admin.get("token") is None:
        text["admin"] = {**admin, "token": TOKEN_LEFT_OUT}
    return parse_config(text, source=source)


def _literal(value: Any) -> Any:
    """``value`` with every ``${`` escaped as ``$${``, so interpolation gives it back unchanged."""
    if isinstance(value, str):
        return value.replace("${", "$${")
    if isinstance(value, Mapping):
        return {k: _literal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_literal(v) for v in value]
    return value
