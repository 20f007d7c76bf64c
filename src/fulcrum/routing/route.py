"""One compiled route: what it matches, what it changes, and where it sends the request.

Built once per snapshot from the config's ``routes`` entry; the data plane only reads it.
Everything is bytes as httptools hands it over: names lower-cased, hosts without port.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class HeaderMatch:
    """A request header condition: ``value`` compared exactly (after trimming), or ``regex`` searched."""

    name: bytes  # lower-case
    value: bytes | None = None
    regex: re.Pattern[bytes] | None = None


@dataclass(frozen=True, slots=True)
class HeaderEdits:
    """``set`` / ``add`` / ``remove`` on a header block, ready to apply in one pass.

    ``cut`` holds the lower-case names whose lines go (every ``remove`` name and every ``set`` name);
    ``append`` the lines that follow (``set`` first, then ``add``), each ``b"Name: value"``;
    ``pattern`` finds the lines to cut in a raw head (``\r\nName: value``), case-insensitively.
    """

    cut: frozenset[bytes] = frozenset()
    append: tuple[bytes, ...] = ()
    pattern: re.Pattern[bytes] | None = None
    raw_append: bytes = b""  # ``append`` as it joins a raw head: b"\r\nName: value..."
    keys: tuple[bytes, ...] = ()  # b"\r\nname:" of each cut name, to skip ``pattern`` when none is there

    @property
    def empty(self) -> bool:
        return not self.cut and not self.append


@dataclass(frozen=True, slots=True)
class PathRewrite:
    """How the path is changed before the request goes upstream; the query string is always kept."""

    strip_prefix: bytes | None = None
    add_prefix: bytes | None = None
    regex: re.Pattern[bytes] | None = None
    replacement: bytes = b""


@dataclass(frozen=True, slots=True)
class Answer:
    """A route answered by Fulcrum itself: ``respond`` (fixed status, body, headers) or ``redirect``.

    For a redirect, ``location`` may hold ``{host}``, ``{path}``, ``{query}`` and ``{uri}`` (path and
    query as the client sent them), filled in per request.
    """

    status: int
    body: bytes = b""
    headers: tuple[bytes, ...] = ()  # b"Name: value" lines
    location: str | None = None
    location_has_fields: bool = False


@dataclass(frozen=True, eq=False, slots=True)
class Route:
    """A compiled route; ``index`` is its position in the config, ``name`` its name (given or derived)."""

    index: int
    name: str
    upstream: str | None = None  # None when ``answer`` is set
    # -- match: every condition set must hold; None / empty means "any"
    host: bytes | None = None  # lower-case; b"*.example.com" matches subdomains, not the apex
    path: bytes | None = None  # exact
    path_prefix: bytes | None = None
    path_regex: re.Pattern[bytes] | None = None  # searched in the path (without the query)
    methods: frozenset[bytes] | None = None  # upper-case
    headers: tuple[HeaderMatch, ...] = ()
    query: tuple[tuple[str, str], ...] = ()  # name=value pairs, compared after percent-decoding
    # -- what it does
    rewrite: PathRewrite | None = None
    request_headers: HeaderEdits | None = None
    response_headers: HeaderEdits | None = None
    upstream_host: bytes | None = None
    answer: Answer | None = None
    forward_style: str | None = None  # None: the config's forwarding.style
    trusted_proxies: tuple[Any, ...] | None = None  # None: the config's forwarding.trusted_proxies
    expose_upstream: bool | None = None  # None: the config's expose_upstream
    chain: Any = None  # fulcrum.middleware.Chain, or None for a route without middleware

    @property
    def catch_all(self) -> bool:
        """Matches every request (no condition, or only the prefix ``/``)."""
        return (
            self.host is None
            and self.path is None
            and (self.path_prefix is None or self.path_prefix == b"/")
            and self.path_regex is None
            and self.methods is None
            and not self.headers
            and not self.query
        )
