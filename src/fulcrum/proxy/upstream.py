"""Upstream side: one keep-alive connection to a server, and the pool of idle ones.

A connection serves one exchange at a time. It goes back to its pool only
after a cleanly framed response with nothing after it; any error, timeout,
``Connection: close`` or stray byte closes it instead (DESIGN 5).
"""

from __future__ import annotations

import asyncio
import socket
from typing import TYPE_CHECKING

import httptools

from fulcrum.http.headers import HOP_BY_HOP, connection_tokens
from fulcrum.http.status import NO_BODY_STATUSES

if TYPE_CHECKING:
    from fulcrum.proxy.context import ProxyContext
    from fulcrum.proxy.exchange import Exchange
    from fulcrum.state.server import Server

# How a response body is framed.
NO_BODY, LENGTH, CHUNKED, UNTIL_CLOSE = 0, 1, 2, 3

# Why an upstream exchange failed; the exchange turns these into 502/504.
CONNECT_ERROR = "connect_error"
CONNECT_TIMEOUT = "connect_timeout"
RESET = "reset"
READ_TIMEOUT = "timeout"
TOTAL_TIMEOUT = "total_timeout"
INVALID = "invalid_response"


class UpstreamConnection(asyncio.Protocol):
    """The protocol of one connection to an upstream server."""

    __slots__ = (
        "_conn_close",
        "_header_bytes",
        "_interim",
        "_parser_dirty",
        "_reason",
        "_resp_headers",
        "_saw_cl",
        "_saw_te",
        "deadline",
        "done",
        "exchange",
        "got_bytes",
        "parser",
        "pool",
        "reusable",
        "transport",
        "uses",
        "write_paused",
    )

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.exchange: Exchange | None = None
        self.deadline = 0.0
        self.uses = 0
        self.write_paused = False
        self._parser_dirty = False
        self._reset_response()

    def _reset_response(self) -> None:
        self._resp_headers: list[bytes] = []
        self._reason = b""
        self._header_bytes = 0
        self._saw_cl = False
        self._saw_te = False
        self._conn_close = False
        self._interim = False
        self.got_bytes = False
        self.done = False
        self.reusable = True

    # -- lifecycle ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not subclasses
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        self.pool.ctx.timed.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.pool.ctx.timed.discard(self)
        self.pool.forget(self)
        self.transport = None
        exchange = self.exchange
        if exchange is not None:
            self.exchange = None
            exchange.upstream_lost(self)

    def pause_writing(self) -> None:
        self.write_paused = True
        exchange = self.exchange
        if exchange is not None:
            exchange.client.pause_reading_for_upstream()

    def resume_writing(self) -> None:
        self.write_paused = False
        exchange = self.exchange
        if exchange is not None:
            exchange.client.resume_reading_for_upstream()

    def start(self, exchange: Exchange) -> None:
        """Take on an exchange: reset the response state; the caller then writes the request."""
        self.exchange = exchange
        self.uses += 1
        self.deadline = 0.0
        if self._parser_dirty:
            self.parser = httptools.HttpResponseParser(self)
            self._parser_dirty = False
        self._reset_response()

    def close(self) -> None:
        transport = self.transport
        if transport is not None:
            transport.close()

    def abort(self) -> None:
        """Drop the connection at once (the exchange it served failed or was abandoned)."""
        self.exchange = None
        transport = self.transport
        if transport is not None:
            transport.abort()

    def on_timeout(self, now: float) -> None:
        exchange = self.exchange
        if exchange is None:  # idle in the pool too long
            self.deadline = 0.0
            self.pool.forget(self)
            self.close()
            return
        self.deadline = 0.0
        self.exchange = None
        self.abort()
        exchange.upstream_failed(READ_TIMEOUT)

    # -- response parsing (httptools callbacks) ------------------------------

    def data_received(self, data: bytes) -> None:
        exchange = self.exchange
        if exchange is None:  # bytes on an idle connection: it cannot be trusted any more
            self.pool.forget(self)
            self.close()
            return
        if self.deadline:
            self.deadline = self.pool.ctx.now + self.pool.read_timeout
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            # After a complete response, an error only means stray bytes followed it:
            # the response stands, the connection is not reused.
            if not self.done:
                self.exchange = None
                self.abort()
                exchange.upstream_failed(INVALID)
                return
            self.reusable = False
            self._parser_dirty = True
        if self.done:
            self._finish(exchange)
        elif exchange.out:
            exchange.flush()

    def on_message_begin(self) -> None:
        if self.done:  # bytes after a complete response
            self.reusable = False
            raise _StrayBytes

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > self.pool.max_header_bytes:
            raise _HeadTooLarge
        lname = name.lower()
        if lname in HOP_BY_HOP:
            if lname == b"transfer-encoding":
                self._saw_te = True
            elif lname == b"connection":
                tokens = connection_tokens(value)
                if b"close" in tokens:
                    self._conn_close = True
                tokens.discard(b"close")
                tokens.discard(b"keep-alive")
                if tokens:  # headers named by Connection are hop-by-hop too
                    self._drop_named(tokens)
            return
        if lname == b"content-length":
            self._saw_cl = True
        self._resp_headers.append(name + b": " + value + b"\r\n")

    def _drop_named(self, tokens: set[bytes]) -> None:
        exchange = self.exchange
        if exchange is not None:
            exchange.resp_drop = tokens if exchange.resp_drop is None else exchange.resp_drop | tokens

    def on_headers_complete(self) -> None:
        exchange = self.exchange
        assert exchange is not None
        status = self.parser.get_status_code()
        if 100 <= status < 200:
            self._interim = True
            if status == 101:
                raise _Unexpected101
            exchange.response_interim(status, self._reason, self._resp_headers)
            return
        if exchange.method_head or status in NO_BODY_STATUSES:
            mode = NO_BODY
        elif self._saw_te:
            mode = CHUNKED
        elif self._saw_cl:
            mode = LENGTH
        else:
            mode = UNTIL_CLOSE
        if mode == UNTIL_CLOSE or self._conn_close or self.parser.get_http_version() != "1.1":
            self.reusable = False
        exchange.response_head(status, self._reason, self._resp_headers, mode)
        if mode == NO_BODY and exchange.method_head:
            # llhttp cannot skip the body of a response to HEAD: it is complete here, and
            # this connection gets a fresh parser before its next use.
            self.done = True
            self._parser_dirty = True

    def on_body(self, body: bytes) -> None:
        if self.done:  # a body after the head of a HEAD response: the connection lies
            self.reusable = False
            return
        exchange = self.exchange
        if exchange is not None:
            exchange.response_body(body)

    def on_message_complete(self) -> None:
        if self._interim:
            self._reset_response()
            return
        self.done = True

    def _finish(self, exchange: Exchange) -> None:
        self.exchange = None
        self.deadline = 0.0
        exchange.response_complete(self)


class _StrayBytes(Exception):
    """Bytes after a complete response: the connection is closed, the response stands."""


class _HeadTooLarge(Exception):
    pass


class _Unexpected101(Exception):
    pass


class Pool:
    """Idle keep-alive connections to one server (LIFO, so warm ones are reused first)."""

    __slots__ = (
        "connect_timeout",
        "ctx",
        "idle",
        "idle_timeout",
        "max_header_bytes",
        "max_idle",
        "opened",
        "read_timeout",
        "server",
    )

    def __init__(self, ctx: ProxyContext, server: Server) -> None:
        self.ctx = ctx
        self.server = server
        self.idle: list[UpstreamConnection] = []
        self.opened = 0
        self.max_idle = 64
        self.idle_timeout = 60.0
        self.connect_timeout = 2.0
        self.read_timeout = 30.0
        self.max_header_bytes = 32 * 1024

    def configure(self, spec: object, max_header_bytes: int) -> None:
        """Apply a group's pool and timeout settings (on every new snapshot)."""
        pool = spec.pool  # type: ignore[attr-defined]
        timeouts = spec.timeouts  # type: ignore[attr-defined]
        self.max_idle = pool.max_idle
        self.idle_timeout = pool.idle_timeout
        self.connect_timeout = timeouts.connect
        self.read_timeout = timeouts.read
        self.max_header_bytes = max_header_bytes
        while len(self.idle) > self.max_idle:
            self.idle.pop(0).close()

    def acquire(self) -> UpstreamConnection | None:
        idle = self.idle
        while idle:
            conn = idle.pop()
            transport = conn.transport
            if transport is not None and not transport.is_closing():
                return conn
        return None

    def release(self, conn: UpstreamConnection) -> None:
        transport = conn.transport
        if transport is None or transport.is_closing():
            return
        if len(self.idle) >= self.max_idle:
            conn.close()
            return
        conn.deadline = self.ctx.now + self.idle_timeout
        self.idle.append(conn)

    def forget(self, conn: UpstreamConnection) -> None:
        try:
            self.idle.remove(conn)
        except ValueError:
            pass

    async def connect(self) -> UpstreamConnection:
        """A new connection, bounded by the connect timeout (raises OSError or TimeoutError)."""
        server = self.server
        loop = self.ctx.loop
        _, conn = await asyncio.wait_for(
            loop.create_connection(lambda: UpstreamConnection(self), server.host, server.port),
            self.connect_timeout,
        )
        self.opened += 1
        return conn

    def close(self) -> None:
        idle, self.idle = self.idle, []
        for conn in idle:
            conn.close()
