"""The HTTP-to-HTTPS redirect listener: every request is answered with a redirect to the same URL over https.

Nothing goes upstream. The Location keeps the request's host (its port replaced by the https
one), path and query, as ``https://host[:port]/path?query``. Each connection gets one answer and
is closed: a client follows the redirect to the https listener anyway. A request without a usable
Host, or one that is malformed, too large or too slow, gets a 400 / 431 or is closed, like on
the proxy's own listeners.
"""

from __future__ import annotations

import asyncio
import re
from typing import TYPE_CHECKING

import httptools

from fulcrum.config.tls import RedirectToHttps
from fulcrum.http.headers import split_host
from fulcrum.http.status import STATUS_LINES, error_response

if TYPE_CHECKING:
    from fulcrum.proxy.context import ProxyContext

# A host name, an IPv4 address or a bracketed IPv6 one (what split_host leaves of a Host value).
_HOST = re.compile(rb"[a-z0-9_]([a-z0-9_.-]*[a-z0-9_])?\.?|\[[0-9a-f:.]+\]")


def location(redirect: RedirectToHttps, host_header: bytes | None, target: bytes) -> bytes | None:
    """The https URL a request goes to, or None when its Host or target cannot make one."""
    if host_header is None:
        return None
    host = split_host(host_header)
    if not _HOST.fullmatch(host):
        return None
    if target.startswith(b"/"):
        path = target
    elif target[:7].lower() == b"http://":  # absolute form: what follows the authority
        slash = target.find(b"/", 7)
        path = target[slash:] if slash > 0 else b"/"
    else:  # "*" (OPTIONS) or an authority (CONNECT): nothing to redirect to
        return None
    port = b"" if redirect.port == 443 else b":%d" % redirect.port
    return b"https://" + host + port + path


class RedirectConnection(asyncio.Protocol):
    """One client connection to a redirect listener: one request, one redirect, closed."""

    __slots__ = ("ctx", "deadline", "host", "hosts", "parser", "received", "redirect", "target", "transport")

    def __init__(self, ctx: ProxyContext, redirect: RedirectToHttps) -> None:
        self.ctx = ctx
        self.redirect = redirect
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.deadline = 0.0
        self.target = b""
        self.host: bytes | None = None
        self.hosts = 0
        self.received = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not subclasses
        ctx = self.ctx
        self.deadline = ctx.now + ctx.snapshot.header_timeout
        ctx.timed.add(self)
        ctx.clients.add(self)
        ctx.stats.connections_active += 1
        ctx.stats.connections_total += 1

    def connection_lost(self, exc: Exception | None) -> None:
        ctx = self.ctx
        self.transport = None
        ctx.timed.discard(self)
        ctx.clients.discard(self)
        ctx.stats.connections_active -= 1

    def on_timeout(self, now: float) -> None:
        self.deadline = 0.0
        self.close()

    def data_received(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        snap = self.ctx.snapshot
        self.received += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # the head is complete and answered: an upgrade is never followed here
        except httptools.HttpParserError:
            self._error(400, "malformed request")
            return
        if self.transport is not None and not self.transport.is_closing() \
                and self.received > snap.max_request_line + snap.max_header_bytes:
            self._error(431, "request header block too large")

    def on_url(self, url: bytes) -> None:
        self.target += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"host":
            self.hosts += 1
            self.host = value

    def on_headers_complete(self) -> None:
        to = location(self.redirect, self.host, self.target) if self.hosts <= 1 else None
        if to is None:
            self._error(400, "no host to redirect to (Host missing, repeated or not a host name)")
            return
        transport = self.transport
        if transport is None:
            return
        transport.write(STATUS_LINES[self.redirect.status] + b"Location: " + to
                        + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        self.close()

    def _error(self, status: int, detail: str) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(error_response(status, detail, self.ctx.ids.next(), close=True))
        self.close()

    def close(self) -> None:
        transport = self.transport
        if transport is not None:
            transport.close()

    def abort(self) -> None:
        transport = self.transport
        if transport is not None:
            transport.abort()
