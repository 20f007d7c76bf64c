"""Config routes to the compiled route table: matchers, rewrites, answers and middleware chains.

Runs whenever a snapshot is built (start, reload) and in ``fulcrum check``; user plugins are imported
and their factories called here, so a broken plugin is a config error with its key path, found before
anything is swapped in.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from fulcrum.config.errors import ConfigError, ConfigIssue, format_path
from fulcrum.config.gateway import REDIRECT_FIELDS, MiddlewareEntry
from fulcrum.config.gateway import Route as RouteSpec
from fulcrum.config.schema import Config
from fulcrum.middleware.api import Middleware
from fulcrum.middleware.builtins import (
    AccessLog,
    BasicAuthMiddleware,
    Compress,
    Cors,
    HeadersMiddleware,
    IpFilterMiddleware,
    MaxBody,
    RateLimit,
    RequestId,
)
from fulcrum.middleware.chain import Chain
from fulcrum.middleware.policy.accesslog import LogWriter, open_check
from fulcrum.middleware.policy.cors import CorsPolicy
from fulcrum.middleware.policy.ratelimit import BucketsFactory, memory_buckets
from fulcrum.middleware.shared import shared_rate_limit
from fulcrum.routing import RouteTable
from fulcrum.routing.rewrite import header_edits
from fulcrum.routing.route import Answer, HeaderMatch, PathRewrite, Route

Loc = tuple[str | int, ...]


@dataclass
class Gateway:
    """What a snapshot gets: the route table and the log writers its middleware write to."""

    table: RouteTable
    writers: dict[str, LogWriter] = field(default_factory=dict)

    def flush(self) -> None:
        for writer in self.writers.values():
            writer.flush()

    def close(self) -> None:
        for route in self.table.routes:
            if route.chain is not None:
                route.chain.close()
        for writer in self.writers.values():
            writer.close()


class _Problems:
    def __init__(self) -> None:
        self.items: list[tuple[Loc, str]] = []

    def add(self, loc: Loc, message: str) -> None:
        self.items.append((loc, message))


def build_gateway(config: Config, source: str = "config", shared_buckets: BucketsFactory | None = None) -> Gateway:
    """The compiled routes of ``config``; ``ConfigError`` with every problem (plugins, log files) at once.

    ``shared_buckets`` makes the buckets of ``rate_limit`` entries with ``shared: true`` (a state backend
    shared by several instances); without it they live in this process like the others.
    """
    problems = _Problems()
    writers: dict[str, LogWriter] = {}
    names = _route_names(config.routes, problems)
    routes = []
    for i, spec in enumerate(config.routes):
        chain = _chain(config, spec, i, names[i], writers, problems, shared_buckets)
        routes.append(_route(config, spec, i, names[i], chain))
    if problems.items:
        for writer in writers.values():
            writer.close()
        raise ConfigError([ConfigIssue(source, format_path(loc), msg) for loc, msg in problems.items])
    return Gateway(RouteTable(routes), writers)


def _route_names(specs: Sequence[RouteSpec], problems: _Problems) -> list[str]:
    given: dict[str, int] = {}
    for i, spec in enumerate(specs):
        if spec.name is not None:
            first = given.setdefault(spec.name, i)
            if first != i:
                problems.add(("routes", i, "name"), f"route name {spec.name!r} is already used by routes[{first}]")
    names: list[str] = []
    seen: set[str] = set(given)
    for i, spec in enumerate(specs):
        name = spec.display_name
        if spec.name is None and (name in seen or name in names):
            name = f"{name}#{i}"
        seen.add(name)
        names.append(name)
    return names


def _b(text: str | None) -> bytes | None:
    return None if text is None else text.encode("latin-1")


def _route(config: Config, spec: RouteSpec, index: int, name: str, chain: Chain | None) -> Route:
    m = spec.match
    rewrite = None
    if spec.strip_prefix is not None or spec.add_prefix is not None or spec.rewrite is not None:
        rewrite = PathRewrite(
            strip_prefix=_b(spec.strip_prefix),
            add_prefix=_b(spec.add_prefix),
            regex=spec.rewrite.regex if spec.rewrite is not None else None,
            replacement=spec.rewrite.replacement.encode("utf-8") if spec.rewrite is not None else b"",
        )
    req_edits = spec.request_headers
    resp_edits = spec.response_headers
    answer = None
    if spec.respond is not None:
        r = spec.respond
        lines = [f"{k}: {v}".encode("latin-1") for k, v in r.headers.items()]
        if r.body and not any(k.lower() == "content-type" for k in r.headers):
            lines.insert(0, b"Content-Type: text/plain; charset=utf-8")
        answer = Answer(status=r.status, body=r.body.encode("utf-8"), headers=tuple(lines))
    elif spec.redirect is not None:
        url = spec.redirect.url
        answer = Answer(status=spec.redirect.status, location=url,
                        location_has_fields=any(f in url for f in REDIRECT_FIELDS))
    fwd = spec.forwarding
    return Route(
        index=index,
        name=name,
        upstream=spec.upstream,
        host=_b(m.host),
        path=_b(m.path),
        path_prefix=_b(m.path_prefix),
        path_regex=m.path_regex,
        methods=frozenset(x.encode("ascii") for x in m.methods) if m.methods is not None else None,
        headers=tuple(
            HeaderMatch(n.lower().encode("latin-1"), value=v.encode("latin-1"))
            if isinstance(v, str)
            else HeaderMatch(n.lower().encode("latin-1"), regex=v.regex)
            for n, v in m.headers.items()
        ),
        query=tuple(m.query.items()),
        rewrite=rewrite,
        request_headers=header_edits(req_edits.set, req_edits.add, req_edits.remove) if req_edits else None,
        response_headers=header_edits(resp_edits.set, resp_edits.add, resp_edits.remove) if resp_edits else None,
        upstream_host=_b(spec.upstream_host),
        answer=answer,
        forward_style=fwd.style if fwd is not None else None,
        trusted_proxies=tuple(fwd.trusted_proxies) if fwd is not None and fwd.trusted_proxies is not None else None,
        expose_upstream=spec.expose_upstream,
        chain=chain,
    )


def _chain(config: Config, spec: RouteSpec, index: int, name: str, writers: dict[str, LogWriter],
           problems: _Problems, shared_buckets: BucketsFactory | None) -> Chain | None:
    if not spec.middleware:
        return None
    trusted = tuple(config.forwarding.trusted_proxies)
    if spec.forwarding is not None and spec.forwarding.trusted_proxies is not None:
        trusted = tuple(spec.forwarding.trusted_proxies)
    items: list[Middleware] = []
    labels: list[str] = []
    for j, entry in enumerate(spec.middleware):
        loc: Loc = ("routes", index, "middleware", j)
        mw = _one(entry, loc, name, trusted, writers, problems, shared_buckets)
        if mw is not None:
            items.append(mw)
            labels.append(entry.plugin if entry.plugin is not None else getattr(mw, "describe", lambda: "?")())
    return Chain(items, labels) if items else None


def _one(entry: MiddlewareEntry, loc: Loc, route: str, trusted: tuple[Any, ...], writers: dict[str, LogWriter],
         problems: _Problems, shared_buckets: BucketsFactory | None) -> Middleware | None:
    kind = entry.kind
    o = entry.spec
    if kind == "request_id":
        return RequestId(o.traceparent)
    if kind == "access_log":
        writer = writers.get(o.path)
        if writer is None:
            error = open_check(o.path) if o.path != "-" else None
            if error is not None:
                problems.add((*loc, "access_log", "path"), error)
                return None
            writer = writers[o.path] = LogWriter(o.path)
        return AccessLog(o.format, writer)
    if kind == "rate_limit":
        # shared: true asks the state backend for buckets every instance sees (Redis: an async round trip per
        # request, fulcrum.middleware.shared); with the memory backend, this process's memory, exact for one
        factory = shared_buckets if o.shared and shared_buckets is not None else memory_buckets
        return shared_rate_limit(RateLimit(o.rate, o.capacity, o.key, route, trusted,
                                           buckets=factory(o.rate, o.capacity, f"{route}#{loc[3]}")))
    if kind == "ip_filter":
        return IpFilterMiddleware(o.allow, o.deny, trusted)
    if kind == "basic_auth":
        return BasicAuthMiddleware(o.realm, o.users)
    if kind == "cors":
        return Cors(CorsPolicy(o.allow_origins, o.allow_methods, o.allow_headers, o.allow_credentials, o.max_age,
                               o.expose_headers))
    if kind == "compress":
        return Compress(o.types, o.min_bytes, o.encodings)
    if kind == "max_body":
        return MaxBody(o.max_bytes)
    if kind == "headers":
        return HeadersMiddleware(o.preset, o.set, o.remove)
    assert entry.plugin is not None
    return load_plugin(entry.plugin, o, (*loc, "plugin"), problems)


def load_plugin(ref: str, options: dict[str, Any], loc: Loc, problems: _Problems) -> Middleware | None:
    """Import ``module:factory`` and call ``factory(options)``; every failure is a problem at ``loc``."""
    module_name, _, attr = ref.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        problems.add(loc, f"cannot import plugin module {module_name!r} ({err}); is it on the Python path?")
        return None
    except Exception as err:  # the plugin's own import-time error
        problems.add(loc, f"importing plugin module {module_name!r} failed: {type(err).__name__}: {err}")
        return None
    factory = getattr(module, attr, None)
    if factory is None:
        problems.add(loc, f"plugin module {module_name!r} has no attribute {attr!r}")
        return None
    if not callable(factory):
        problems.add(loc, f"{ref} is not callable (a plugin factory takes the options dict)")
        return None
    try:
        mw = factory(dict(options))
    except Exception as err:
        problems.add(loc, f"plugin factory {ref} raised {type(err).__name__}: {err}")
        return None
    if not (inspect.iscoroutinefunction(mw) or inspect.iscoroutinefunction(type(mw).__call__)):
        problems.add(loc, f"plugin factory {ref} returned {type(mw).__name__}, not an async function "
                          "mw(req, call_next)")
        return None
    result: Middleware = mw
    return result


def _conditions(route: Route) -> str:
    parts = []
    if route.host is not None:
        parts.append(f"host {route.host.decode()}")
    if route.path is not None:
        parts.append(f"path = {route.path.decode()}")
    if route.path_prefix is not None:
        parts.append(f"path {route.path_prefix.decode()}*")
    if route.path_regex is not None:
        parts.append(f"path ~ {route.path_regex.pattern.decode()}")
    if route.methods is not None:
        parts.append("method " + "|".join(sorted(m.decode() for m in route.methods)))
    for h in route.headers:
        regex = h.regex.pattern.decode() if h.regex is not None else ""
        shown = h.value.decode("latin-1") if h.value is not None else "~" + regex
        parts.append(f"header {h.name.decode()}: {shown}")
    for name, value in route.query:
        parts.append(f"query {name}={value}")
    return ", ".join(parts) or "every request"


def _action(route: Route) -> str:
    answer = route.answer
    if answer is not None:
        if answer.location is not None:
            return f"redirect {answer.status} {answer.location}"
        return f"respond {answer.status} ({len(answer.body)} bytes)"
    text = f"-> {route.upstream}"
    rw = route.rewrite
    if rw is not None:
        if rw.strip_prefix is not None:
            text += f", strip {rw.strip_prefix.decode()}"
        if rw.regex is not None:
            text += f", rewrite {rw.regex.pattern.decode()} => {rw.replacement.decode()}"
        if rw.add_prefix is not None:
            text += f", add {rw.add_prefix.decode()}"
    if route.upstream_host is not None:
        text += f", Host {route.upstream_host.decode()}"
    return text


def describe_routes(table: RouteTable) -> str:
    """The compiled route table as ``fulcrum check`` prints it: one block per route, in match order."""
    lines = []
    for route in table.routes:
        lines.append(f"  [{route.index}] {route.name}: {_conditions(route)}  {_action(route)}")
        extras = []
        if route.request_headers is not None:
            extras.append(f"request headers: -{len(route.request_headers.cut)} +{len(route.request_headers.append)}")
        if route.response_headers is not None:
            extras.append(f"response headers: -{len(route.response_headers.cut)} "
                          f"+{len(route.response_headers.append)}")
        if route.chain is not None:
            mode = "hooks" if route.chain.sync else "async"
            extras.append(f"middleware ({mode}): {' > '.join(route.chain.describe())}")
        lines += [f"      {e}" for e in extras]
    if table.catch_all is not None and len(table.routes) > 1:
        lines.append("  note: route [0] matches every request; the routes after it are never used")
    return "\n".join(lines)
