"""Cookie stickiness over any policy: server id <-> opaque token, and the Set-Cookie value.

The token is a short blake2b digest of the server id, so it does not reveal
the server's address and every instance with the same servers reads it the
same way. A token that names no eligible server is simply not found, and the
request is balanced as usual (and gets a new cookie).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Sequence
from functools import lru_cache
from typing import cast

from fulcrum.balancing.base import S

#: Cookie names are RFC 6265 tokens.
_COOKIE_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")

#: Remembered lookup tables, keyed by the identity of the server sequence (kept alive by the entry).
_LOOKUP_CACHE_SIZE = 64
_lookups: dict[int, tuple[Sequence[object], dict[str, object]]] = {}


@lru_cache(maxsize=4096)
def sticky_token(server_id: str) -> str:
    """The cookie value naming ``server_id``: 16 hex digits, the same on every instance."""
    return hashlib.blake2b(server_id.encode(), digest_size=8, person=b"fulcrum-sticky").hexdigest()


def sticky_lookup(token: str, servers: Sequence[S]) -> S | None:
    """The server of ``servers`` that ``token`` names, or ``None``.

    O(1) for a sequence seen recently (the table is built once per sequence,
    and groups hand the same tuple until their eligible set changes).
    """
    entry = _lookups.get(id(servers))
    if entry is None or entry[0] is not servers:
        table: dict[str, object] = {sticky_token(s.id): s for s in servers}
        if len(_lookups) >= _LOOKUP_CACHE_SIZE:
            del _lookups[next(iter(_lookups))]
        _lookups[id(servers)] = entry = (servers, table)
    return cast("S | None", entry[1].get(token))


def sticky_set_cookie(name: str, token: str, ttl: float | None) -> str:
    """The Set-Cookie header value: ``NAME=TOKEN; Path=/; HttpOnly`` and ``Max-Age`` when ``ttl`` > 0.

    Without a ttl the cookie lasts for the browser session. Max-Age is in whole
    seconds, rounded up.
    """
    if not _COOKIE_NAME.fullmatch(name):
        raise ValueError(f"not a valid cookie name: {name!r}")
    value = f"{name}={token}; Path=/; HttpOnly"
    if ttl is not None and ttl > 0:
        value += f"; Max-Age={math.ceil(ttl)}"
    return value
