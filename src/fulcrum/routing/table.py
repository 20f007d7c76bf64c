"""Matching requests to compiled routes; the first route in config order whose conditions all hold wins.

The table is built once per snapshot. Routes are indexed by host (exact name, wildcard suffix, or none)
and, under each host key, by path (exact path, or prefix), so a request looks up a handful of buckets
whatever the number of routes. Conditions the index cannot answer (path regex, methods, headers, query)
are checked on the candidates only, lowest index first.

Semantics, shared by the index and by :func:`mismatch`, the naive reference check of one route:

- ``host`` ``b"api.example.com"`` is compared exactly; ``b"*.example.com"`` matches any host ending in
  ``b".example.com"`` with at least one character before it, never the apex ``b"example.com"``.
- ``path`` is compared exactly; ``path_prefix`` is a plain bytes prefix (``b"/api"`` matches ``b"/apix"``,
  as in nginx). A prefix of ``b"/"`` or ``b""`` matches every path, ``*`` included, as ``Route.catch_all`` says.
- ``path_regex`` is searched in the path; ``methods`` holds the upper-case methods allowed.
- each ``HeaderMatch`` holds if some request line with that name (any case) has a trimmed value equal to
  ``value`` or in which ``regex`` is found (either, when both are set; mere presence, when neither is).
- each ``query`` pair must occur in the query string as parsed by ``urllib.parse.parse_qsl``.
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import parse_qsl

from fulcrum.routing.route import HeaderMatch, Route

__all__ = ["Route", "RouteTable", "mismatch", "target_path"]

COLON = 58  # ord(":")
NO_INDEX = 1 << 62  # above any route index


class _Request:
    """The parts of one request the residual conditions read; the query is parsed on first use."""

    __slots__ = ("headers", "method", "pairs", "path", "query")

    def __init__(self, path: bytes, method: bytes, headers: Sequence[bytes], query: bytes) -> None:
        self.path = path
        self.method = method
        self.headers = headers
        self.query = query
        self.pairs: list[tuple[str, str]] | None = None

    def query_pairs(self) -> list[tuple[str, str]]:
        pairs = self.pairs
        if pairs is None:
            pairs = self.pairs = parse_qsl(self.query.decode("latin-1"), keep_blank_values=True)
        return pairs


class _Entry:
    """One route in a bucket, with the conditions its bucket does not already guarantee."""

    __slots__ = ("headers", "index", "methods", "query", "regex", "residual", "route")

    def __init__(self, index: int, route: Route) -> None:
        self.index = index
        self.route = route
        self.regex = route.path_regex
        self.methods = route.methods or None
        self.headers = route.headers
        self.query = route.query
        self.residual = self.regex is not None or self.methods is not None or bool(self.headers) or bool(self.query)

    def passes(self, req: _Request) -> bool:
        """Whether the request meets the conditions the index left to check (cheapest first)."""
        methods = self.methods
        if methods is not None and req.method not in methods:
            return False
        regex = self.regex
        if regex is not None and regex.search(req.path) is None:
            return False
        for header in self.headers:
            if not _header_matches(header, req.headers):
                return False
        if self.query:
            pairs = req.query_pairs()
            for pair in self.query:
                if pair not in pairs:
                    return False
        return True


def _first(candidates: tuple[_Entry, ...], req: _Request | None, best: _Entry | None) -> _Entry | None:
    """The lowest-index candidate that passes, if lower than ``best``; else ``best``.

    Candidates are sorted by index, so the scan stops at the first that passes or at ``best``.
    """
    limit = best.index if best is not None else NO_INDEX
    for entry in candidates:
        if entry.index >= limit:
            break
        if not entry.residual:
            return entry
        if req is not None and entry.passes(req):
            return entry
    return best


class _PathIndex:
    """The routes under one host key, by exact path and by prefix.

    Prefixes form a flattened trie: one dict per distinct prefix length, so a path of n bytes costs one
    slice and one dict lookup per distinct length up to n. A node-per-byte trie would cost a lookup per
    byte of the path in interpreted or mypyc code; configs use few distinct prefix lengths, and the
    lookups never depend on the number of routes.
    """

    __slots__ = ("any_path", "exact", "first", "prefixes")

    def __init__(self) -> None:
        self.exact: dict[bytes, tuple[_Entry, ...]] = {}
        self.any_path: tuple[_Entry, ...] = ()  # no path condition, or a prefix matching every path
        self.prefixes: list[tuple[int, dict[bytes, tuple[_Entry, ...]]]] = []  # by length, ascending
        self.first = NO_INDEX  # the lowest index held

    def add(self, entry: _Entry) -> None:
        route = entry.route
        prefix = route.path_prefix
        if prefix == b"/":
            prefix = None
        if route.path is not None and prefix is not None and not route.path.startswith(prefix):
            return  # the path and the prefix contradict each other: the route never matches
        self.first = min(self.first, entry.index)
        if route.path is not None:
            self.exact[route.path] = (*self.exact.get(route.path, ()), entry)
        elif prefix:
            for length, table in self.prefixes:
                if length == len(prefix):
                    table[prefix] = (*table.get(prefix, ()), entry)
                    break
            else:
                self.prefixes.append((len(prefix), {prefix: (entry,)}))
                self.prefixes.sort(key=_length_key)
        else:
            self.any_path = (*self.any_path, entry)

    def scan(self, path: bytes, req: _Request | None, best: _Entry | None) -> _Entry | None:
        """The best of ``best`` and the candidates here that pass."""
        if best is not None and best.index < self.first:
            return best
        if self.exact:
            candidates = self.exact.get(path)
            if candidates is not None:
                best = _first(candidates, req, best)
        if self.any_path:
            best = _first(self.any_path, req, best)
        size = len(path)
        for length, table in self.prefixes:
            if length > size:
                break
            candidates = table.get(path[:length])
            if candidates is not None:
                best = _first(candidates, req, best)
        return best


def _length_key(item: tuple[int, dict[bytes, tuple[_Entry, ...]]]) -> int:
    return item[0]


class RouteTable:
    """Routes tried in config order, compiled into an index once.

    ``catch_all`` is the first route when it matches every request: callers then skip all matching work.
    ``uses_host`` says whether any route has a host condition: callers skip working out the host otherwise;
    ``uses_headers`` whether any has a header condition: callers pass the header lines only then.
    """

    __slots__ = ("_any_host", "_exact_host", "_residual", "_wild_host", "catch_all", "routes", "uses_headers",
                 "uses_host")

    def __init__(self, routes: Sequence[Route]) -> None:
        self.routes: tuple[Route, ...] = tuple(routes)
        first = self.routes[0] if self.routes else None
        self.catch_all: Route | None = first if first is not None and first.catch_all else None
        self.uses_host = any(r.host is not None for r in self.routes)
        self.uses_headers = any(r.headers for r in self.routes)
        self._exact_host: dict[bytes, _PathIndex] = {}
        self._wild_host: dict[bytes, _PathIndex] = {}  # keyed by the suffix, dot included: b".example.com"
        self._any_host = _PathIndex()
        self._residual = False  # some route has a condition the index leaves to check
        for position, route in enumerate(self.routes):
            entry = _Entry(position, route)
            self._residual = self._residual or entry.residual
            host = route.host
            if host is None:
                paths = self._any_host
            elif host[:2] == b"*.":
                paths = self._wild_host.setdefault(host[1:], _PathIndex())
            else:
                paths = self._exact_host.setdefault(host, _PathIndex())
            paths.add(entry)

    def match(self, host: bytes, path: bytes, method: bytes, headers: Sequence[bytes], query: bytes) -> Route | None:
        """The first route that matches the request, or None.

        ``host`` lower-case without port; ``path`` without the query; ``headers`` the raw header lines;
        ``query`` the raw query string without ``?``.
        """
        if self.catch_all is not None:
            return self.catch_all
        req = _Request(path, method, headers, query) if self._residual else None
        best: _Entry | None = None
        if self._exact_host:
            paths = self._exact_host.get(host)
            if paths is not None:
                best = paths.scan(path, req, best)
        wild = self._wild_host
        if wild:
            # Each dot-suffix of the host with at least one character before it: b".b.example.com", ...
            dot = host.find(b".", 1)
            while dot >= 0:
                paths = wild.get(host[dot:])
                if paths is not None:
                    best = paths.scan(path, req, best)
                dot = host.find(b".", dot + 1)
        best = self._any_host.scan(path, req, best)
        return best.route if best is not None else None

    def explain(
        self, host: bytes, path: bytes, method: bytes, headers: Sequence[bytes], query: bytes
    ) -> list[tuple[Route, str | None]]:
        """Each route up to and including the match, with why it does not match (None for the match).

        All routes when none matches. Checks every route naively, for the admin side and for tests.
        """
        out: list[tuple[Route, str | None]] = []
        for route in self.routes:
            reason = mismatch(route, host, path, method, headers, query)
            out.append((route, reason))
            if reason is None:
                break
        return out


def mismatch(
    route: Route, host: bytes, path: bytes, method: bytes, headers: Sequence[bytes], query: bytes
) -> str | None:
    """None if ``route`` matches the request, else why not, naming the first condition that fails.

    The reference check of one route, without any index.
    """
    pattern = route.host
    if pattern is not None:
        if pattern[:2] == b"*.":
            suffix = pattern[1:]
            if not (len(host) > len(suffix) and host.endswith(suffix)):
                return f"host {_host_text(host)} does not match {_text(pattern)}"
        elif host != pattern:
            return f"host {_host_text(host)} != {_text(pattern)}"
    if route.path is not None and path != route.path:
        return f"path {_text(path)} != {_text(route.path)}"
    prefix = route.path_prefix
    if prefix is not None and prefix != b"/" and not path.startswith(prefix):
        return f"path does not start with {_text(prefix)}"
    regex = route.path_regex
    if regex is not None and regex.search(path) is None:
        return f"path does not match {_text(regex.pattern)}"
    if route.methods and method not in route.methods:
        allowed = ", ".join(sorted(_text(m) for m in route.methods))
        return f"method {_text(method)} not in {allowed}"
    for header in route.headers:
        values = _header_values(header.name, headers)
        name = _text(header.name.title())
        if not values:
            return f"header {name} missing"
        if not any(_value_matches(header, v) for v in values):
            got = ", ".join(_text(v) for v in values)
            if header.value is not None:
                return f"header {name} {got} != {_text(header.value)}"
            assert header.regex is not None
            return f"header {name} {got} does not match {_text(header.regex.pattern)}"
    if route.query:
        pairs = parse_qsl(query.decode("latin-1"), keep_blank_values=True)
        for name_value in route.query:
            if name_value not in pairs:
                return f"query {name_value[0]}={name_value[1]} missing"
    return None


def _header_matches(header: HeaderMatch, lines: Sequence[bytes]) -> bool:
    """Whether some line named ``header.name`` (any case) has a value ``header`` accepts."""
    name = header.name
    size = len(name)
    for line in lines:
        if (
            len(line) > size
            and line[size] == COLON
            and line[:size].lower() == name
            and _value_matches(header, line[size + 1 :].strip())
        ):
            return True
    return False


def _header_values(name: bytes, lines: Sequence[bytes]) -> list[bytes]:
    """The trimmed values of the lines named ``name`` (lower-case), in order."""
    size = len(name)
    return [
        line[size + 1 :].strip()
        for line in lines
        if len(line) > size and line[size] == COLON and line[:size].lower() == name
    ]


def _value_matches(header: HeaderMatch, value: bytes) -> bool:
    if header.value is None and header.regex is None:
        return True  # a presence check
    if header.value is not None and value == header.value:
        return True
    return header.regex is not None and header.regex.search(value) is not None


def _text(data: bytes) -> str:
    return data.decode("ascii", "backslashreplace")


def _host_text(host: bytes) -> str:
    return _text(host) if host else "(none)"


def target_path(target: bytes) -> bytes:
    """The path of a request target (origin-form or absolute-form), without the query."""
    if target[:1] != b"/":
        scheme = target.find(b"://")
        if scheme > 0:
            slash = target.find(b"/", scheme + 3)
            target = target[slash:] if slash >= 0 else b"/"
        elif target == b"*":
            return b"*"
    q = target.find(b"?")
    return target[:q] if q >= 0 else target
