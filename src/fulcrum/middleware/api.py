"""What a middleware sees: ``Request``, ``Response`` and the ``Middleware`` protocol.

A middleware is ``async def mw(req: Request, call_next) -> Response``. ``call_next(req)`` sends the
request on (to the next middleware, and finally upstream) and returns the upstream's response as soon
as its head has arrived; the body streams to the client after the outermost middleware returns. A
middleware may change the request before calling on (``req.path``, ``req.query``, ``req.headers``), change
the response it got back (``resp.status``, ``resp.headers``), or not call on at all and return its own
``Response(status, body, headers)``.

``Request.headers`` and ``Response.headers`` are case-insensitive multi-value mappings
(``multidict.CIMultiDict``): ``headers["X-A"]`` is the first value, ``headers.getall("X-A")`` all of them,
``headers["X-A"] = v`` replaces every line of that name, ``headers.add("X-A", v)`` appends one more.
They are built only when a middleware asks for them; the built-ins read single values with
``req.header(name)``, which scans the raw lines.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from multidict import CIMultiDict

from fulcrum.http.status import REASONS
from fulcrum.routing.rewrite import split_target

if TYPE_CHECKING:
    from fulcrum.middleware.policy.compress import Encoder

Headers = CIMultiDict[str]
HeadersInit = Mapping[str, str] | Iterable[tuple[str, str]] | None

_FRAMING = frozenset(("content-length", "transfer-encoding", "connection"))


_KEYS: dict[str, bytes] = {}  # header names asked for, as the lower-case b"name:" a line begins with


def _key(name: str) -> bytes:
    key = name.lower().encode("latin-1") + b":"
    if len(_KEYS) < 1024:  # the names the built-ins and plugins ask for: a few
        _KEYS[name] = key
    return key


def _lines_to_headers(lines: Iterable[bytes]) -> Headers:
    headers: Headers = CIMultiDict()
    for line in lines:
        name, _, value = line.partition(b":")
        headers.add(name.strip().decode("latin-1"), value.strip().decode("latin-1"))
    return headers


class Request:
    """One request as middleware sees it: method, path, query, headers, client address, route name."""

    __slots__ = ("_headers", "_lines", "_path", "_query", "_state", "_target", "body_limit", "client_ip",
                 "content_length", "forwarded_for", "method", "own_id", "request_id", "route",
                 "target_changed")

    def __init__(self, method: str, target: bytes, lines: list[bytes], client_ip: str, route: str,
                 request_id: str) -> None:
        self.method = method
        self.client_ip = client_ip
        self.route = route
        self.request_id = request_id
        self._target = target
        self._lines = lines
        self._path: str | None = None
        self._query: str | None = None
        self._headers: Headers | None = None
        self.target_changed = False
        self._state: dict[str, Any] | None = None
        #: the request id as bytes when Fulcrum made it (32 lowercase hex digits), else None
        self.own_id: bytes | None = None
        #: the X-Forwarded-For the client sent (all lines joined), or None; Fulcrum writes its own upstream
        self.forwarded_for: str | None = None
        #: the request body's Content-Length, -1 when chunked or absent
        self.content_length = -1
        #: set by ``max_body``: the largest request body to accept (0 = no limit of the route's own)
        self.body_limit = 0

    @property
    def state(self) -> dict[str, Any]:
        """Free for middleware to pass things to each other within one request."""
        if self._state is None:
            self._state = {}
        return self._state

    # -- path and query -----------------------------------------------------------

    def _split(self) -> None:
        path, query = split_target(self._target)
        self._path = path.decode("latin-1")
        self._query = query.decode("latin-1")

    @property
    def path(self) -> str:
        """The path, without the query string, as the client sent it (percent-encoding kept)."""
        if self._path is None:
            self._split()
        assert self._path is not None
        return self._path

    @path.setter
    def path(self, value: str) -> None:
        if not value.startswith("/") or any(c in value for c in " \r\n\x00?"):
            raise ValueError(f"a request path must start with / and hold no spaces, controls or '?': {value!r}")
        if self._path is None:
            self._split()
        self._path = value
        self.target_changed = True

    @property
    def query(self) -> str:
        """The query string without its ``?`` (empty when there is none)."""
        if self._query is None:
            self._split()
        assert self._query is not None
        return self._query

    @query.setter
    def query(self, value: str) -> None:
        if any(c in value for c in " \r\n\x00#"):
            raise ValueError(f"a query string holds no spaces, controls or '#': {value!r}")
        if self._path is None:
            self._split()
        self._query = value.removeprefix("?")
        self.target_changed = True

    @property
    def target(self) -> bytes:
        """The request target to send on: path and query."""
        if not self.target_changed:
            return self._target
        query = self.query
        return (self.path + "?" + query if query else self.path).encode("latin-1")

    # -- headers ------------------------------------------------------------------

    @property
    def headers(self) -> Headers:
        """The request headers (hop-by-hop and framing headers are not among them)."""
        if self._headers is None:
            self._headers = _lines_to_headers(self._lines)
        return self._headers

    @property
    def headers_changed(self) -> bool:
        return self._headers is not None

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (any case), or None; cheap, no mapping is built."""
        if self._headers is not None:
            return self._headers.get(name)
        key = _KEYS.get(name)
        if key is None:
            key = _key(name)
        n = len(key)
        c = key[0] | 0x20
        for line in self._lines:
            # the first letter, lower-cased, rules most lines out without a slice
            if len(line) > n and line[0] | 0x20 == c and line[:n].lower() == key:
                return line[n:].strip().decode("latin-1")
        return None

    def header_pair(self, first: str, second: str) -> tuple[str | None, str | None]:
        """The first values of two headers in one pass over the raw lines (the access log's referer and agent)."""
        if self._headers is not None:
            return self._headers.get(first), self._headers.get(second)
        key1 = _KEYS.get(first)
        if key1 is None:
            key1 = _key(first)
        key2 = _KEYS.get(second)
        if key2 is None:
            key2 = _key(second)
        n1 = len(key1)
        n2 = len(key2)
        c1 = key1[0] | 0x20
        c2 = key2[0] | 0x20
        one: str | None = None
        two: str | None = None
        for line in self._lines:
            if not line:
                continue
            c = line[0] | 0x20  # the first letter, lower-cased: most lines are ruled out without a slice
            if c == c1 and one is None and line[:n1].lower() == key1:
                one = line[n1:].strip().decode("latin-1")
            elif c == c2 and two is None and line[:n2].lower() == key2:
                two = line[n2:].strip().decode("latin-1")
        return one, two

    def add_header(self, name: str, value: str) -> None:
        """Append one header line (cheap: no mapping is built)."""
        if self._headers is not None:
            self._headers.add(name, value)
        else:
            self._lines.append(f"{name}: {value}\r\n".encode("latin-1"))

    def add_line(self, line: bytes) -> None:
        """Append a ready ``b"Name: value\\r\\n"`` line (the built-ins' cheapest edit)."""
        if self._headers is not None:
            name, _, value = line.partition(b":")
            self._headers.add(name.decode("latin-1"), value.strip().decode("latin-1"))
        else:
            self._lines.append(line)

    def header_lines(self) -> list[bytes]:
        """The lines to forward (``b"Name: value\\r\\n"``), from the mapping when a middleware built it."""
        headers = self._headers
        if headers is None:
            return self._lines
        out = []
        for name, value in headers.items():
            if name.lower() in _FRAMING:
                continue
            if "\r" in value or "\n" in value or "\x00" in value:
                raise ValueError(f"header {name} holds a line break or NUL")
            out.append(f"{name}: {value}\r\n".encode("latin-1"))
        return out

    @property
    def host(self) -> str:
        """The Host header as sent (with its port, if any); empty when absent."""
        return self.header("host") or ""

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.target.decode('latin-1')} route={self.route}>"


class Response:
    """A response as middleware sees it.

    Built by a middleware (``Response(403, b"no")``) or handed back by ``call_next`` from the upstream's
    head. ``body`` is used only for responses made in middleware; an upstream's body streams past.
    """

    __slots__ = ("_head", "_headers", "_low", "_status", "body", "body_filter", "from_upstream", "status_changed")

    def __init__(self, status: int = 200, body: bytes | str = b"", headers: HeadersInit = None,
                 upstream_head: bytes | None = None) -> None:
        if not 100 <= status <= 599:
            raise ValueError(f"status must be 100-599, got {status}")
        self._status = status
        self.body = body.encode("utf-8") if isinstance(body, str) else body
        self._head: bytes | None = upstream_head
        self._headers: Headers | None = None if upstream_head is not None else CIMultiDict(headers or ())
        self._low: bytes | None = None
        self.from_upstream = upstream_head is not None
        self.status_changed = False
        self.body_filter: Encoder | None = None

    @staticmethod
    def upstream(status: int, head: bytes) -> Response:
        """A view of an upstream's response head (status line and lines, no final blank line)."""
        return Response(status, b"", None, head)

    @property
    def status(self) -> int:
        return self._status

    @status.setter
    def status(self, value: int) -> None:
        if not 100 <= value <= 599:
            raise ValueError(f"status must be 100-599, got {value}")
        self._status = value
        self.status_changed = True

    @property
    def headers(self) -> Headers:
        headers = self._headers
        if headers is None:
            head = self._head or b""
            lines = head.split(b"\r\n")[1:]
            headers = self._headers = _lines_to_headers(lines)
        return headers

    def header(self, name: str) -> str | None:
        """The first value of header ``name``, or None; cheap on an upstream head."""
        if self._headers is not None:
            return self._headers.get(name)
        head = self._head or b""
        low = self._low
        if low is None:
            low = self._low = head.lower()
        key = b"\r\n" + name.lower().encode("latin-1") + b":"
        at = low.find(key)
        if at < 0:
            return None
        start = at + len(key)
        end = head.find(b"\r\n", start)
        return head[start : end if end >= 0 else len(head)].strip().decode("latin-1")

    def set_header(self, name: str, value: str) -> None:
        """Replace every line of ``name`` with one line."""
        if self._headers is None and self._head is not None:
            self._head = _cut(self._head, name) + f"\r\n{name}: {value}".encode("latin-1")
            self._low = None
        else:
            self.headers[name] = value

    def add_header(self, name: str, value: str) -> None:
        if self._headers is None and self._head is not None:
            self._head = self._head + f"\r\n{name}: {value}".encode("latin-1")
            self._low = None
        else:
            self.headers.add(name, value)

    def remove_header(self, name: str) -> None:
        if self._headers is None and self._head is not None:
            self._head = _cut(self._head, name)
            self._low = None
        else:
            self.headers.popall(name, None)

    def raw_head(self) -> bytes | None:
        """The raw head (status line and lines, no final blank line), or None once the mapping was built."""
        return self._head if self._headers is None else None

    def replace_raw(self, head: bytes) -> None:
        """Put ``head`` (from ``raw_head``, edited) in place of the raw head."""
        self._head = head
        self._low = None

    def edit_raw(self, pattern: re.Pattern[bytes] | None, append: bytes, keys: tuple[bytes, ...] = ()) -> None:
        """Cut the lines ``pattern`` finds and append ``append`` (``b"\\r\\nName: value..."``): the built-ins'
        one-pass edit; falls back to the mapping once a middleware built it. ``keys`` (``b"\\r\\nname:"``,
        lower-case) are what ``pattern`` looks for: when the head holds none of them the regex is skipped."""
        if self._headers is None and self._head is not None:
            head = self._head
            if pattern is not None and keys:
                low = self._low
                if low is None:
                    low = self._low = head.lower()
                found = False
                for key in keys:
                    if low.find(key) >= 0:
                        found = True
                        break
                if not found:
                    pattern = None
            if pattern is not None:
                head = pattern.sub(b"", head)
            self._head = head + append if append else head
            self._low = None
            return
        headers = self.headers
        if pattern is not None:
            for name in list(headers):
                if pattern.match(b"\r\n" + name.encode("latin-1") + b":"):
                    headers.popall(name, None)
        for line in append.split(b"\r\n"):
            if line:
                raw_name, _, raw_value = line.partition(b":")
                headers.add(raw_name.decode("latin-1"), raw_value.strip().decode("latin-1"))

    def head_bytes(self) -> bytes:
        """Status line and header lines, without the final blank line (framing headers left to Fulcrum)."""
        headers = self._headers
        if headers is None and self._head is not None:
            head = self._head
            if self.status_changed:
                head = _status_line(self._status) + head[head.find(b"\r\n") :] if b"\r\n" in head else \
                    _status_line(self._status)
            return head
        parts = [_status_line(self._status)]
        for name, value in (headers or {}).items():
            if "\r" in value or "\n" in value or "\x00" in value:
                raise ValueError(f"header {name} holds a line break or NUL")
            if not self.from_upstream and name.lower() in _FRAMING:
                continue
            parts.append(f"{name}: {value}".encode("latin-1"))
        return b"\r\n".join(parts)

    def __repr__(self) -> str:
        return f"<Response {self._status}>"


def _status_line(status: int) -> bytes:
    return b"HTTP/1.1 %d %s" % (status, REASONS.get(status, b""))


def _cut(head: bytes, name: str) -> bytes:
    key = b"\r\n" + name.lower().encode("latin-1") + b":"
    low = head.lower()
    at = low.find(key)
    while at >= 0:
        end = head.find(b"\r\n", at + 2)
        end = len(head) if end < 0 else end
        head = head[:at] + head[end:]
        low = low[:at] + low[end:]
        at = low.find(key, at)
    return head


CallNext = Callable[[Request], Awaitable[Response]]


class Middleware(Protocol):
    """``async def mw(req, call_next) -> Response``: what a plugin's factory returns."""

    def __call__(self, req: Request, call_next: CallNext) -> Awaitable[Response]: ...
