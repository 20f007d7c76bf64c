"""The rules of ``Upgrade`` (RFC 9110 7.8) and of the WebSocket handshake (RFC 6455 4), as pure functions.

The client connection asks ``tunnel_protocols`` which protocols a request may be tunnelled to (``h2c``
is never passed on, DESIGN 5) and whether its WebSocket handshake is good; the upstream connection
asks ``switch_protocol`` and ``offered`` whether a ``101`` switches to a protocol the client asked for.
"""

from __future__ import annotations

import re

from fulcrum.http.headers import connection_tokens

#: A WebSocket key is 16 random bytes in base64 (RFC 6455 4.1).
_WS_KEY_FORM = re.compile(rb"[A-Za-z0-9+/]{22}==")
_WS_VERSION_HEADER = b"Sec-WebSocket-Version: 13\r\n"


class UpgradeRefused(Exception):
    """A handshake to refuse before anything goes upstream: ``status``, ``detail``, ``extra`` header lines."""

    def __init__(self, status: int, detail: str, extra: bytes = b"") -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.extra = extra


def _name(token: bytes) -> bytes:
    return token.split(b"/", 1)[0].strip().lower()


def tunnel_protocols(value: bytes, method: bytes, ws_key: bytes | None, ws_version: bytes | None) -> bytes | None:
    """The Upgrade value to ask the upstream for (None: nothing to tunnel, serve the request as HTTP/1.1),
    for an HTTP/1.1 request whose Connection names ``upgrade``. Raises ``UpgradeRefused``."""
    kept = [t.strip() for t in value.split(b",") if t.strip() and _name(t) != b"h2c"]
    if not kept:
        return None
    if any(_name(t) == b"websocket" for t in kept):
        if method != b"GET":
            raise UpgradeRefused(400, "a WebSocket handshake must be a GET request")
        if ws_key is None or not _WS_KEY_FORM.fullmatch(ws_key.strip()):
            raise UpgradeRefused(400, "a WebSocket handshake needs one Sec-WebSocket-Key of 16 bytes in base64")
        if ws_version is None or ws_version.strip() != b"13":
            raise UpgradeRefused(426, "this WebSocket version is not supported (only 13)", _WS_VERSION_HEADER)
    return b", ".join(kept)


_UPGRADE_LINE = re.compile(rb"\r\nupgrade:[ \t]*([^\r]*?)[ \t]*(?=\r|$)")
_CONNECTION_LINE = re.compile(rb"\r\nconnection:([^\r]*)")


def switch_protocol(head: bytes) -> bytes | None:
    """The protocol a ``101`` head switches to (its Upgrade value), or None when it names none or its
    Connection does not list ``upgrade``."""
    low = head.lower()
    found = _UPGRADE_LINE.search(low)
    if found is None or not found.group(1):
        return None
    if not any(b"upgrade" in connection_tokens(m.group(1)) for m in _CONNECTION_LINE.finditer(low)):
        return None
    start, end = found.span(1)
    return head[start:end]


def offered(protocol: bytes, asked: bytes) -> bool:
    """Whether a 101's protocol is one the client asked for (by name; a version may differ in form)."""
    name = _name(protocol)
    return any(_name(t) == name for t in asked.split(b","))
